use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;

use super::*;

fn client(n: u8) -> Client {
    Client::Nfs { name: format!("host{n}"), addr: IpAddr::from([10, 0, 3, n]) }
}

fn owner(c: u8, id: u8) -> Owner {
    Owner { client: client(c), id: vec![id] }
}

fn lock(o: &Owner, start: u64, end: u64, exclusive: bool) -> Lock {
    Lock { owner: o.clone(), pid: 7, start, end, exclusive }
}

/// A grant callback that counts, and the count.
fn counter() -> (Arc<AtomicUsize>, impl Fn() -> Grant) {
    let n = Arc::new(AtomicUsize::new(0));
    let m = n.clone();
    (n, move || {
        let m = m.clone();
        Box::new(move |_: &Lock| {
            m.fetch_add(1, Ordering::SeqCst);
        }) as Grant
    })
}

#[test]
fn shared_locks_coexist_and_exclusive_ones_conflict() {
    let t = LockTable::new(LockLimits::default());
    let (a, b) = (owner(1, 1), owner(2, 1));
    assert_eq!(t.lock(1, lock(&a, 0, 100, false), false, None), Outcome::Granted);
    assert_eq!(t.lock(1, lock(&b, 50, 150, false), false, None), Outcome::Granted, "shared and shared");
    assert!(matches!(t.lock(1, lock(&b, 90, 95, true), false, None), Outcome::Denied(l) if l.owner == a));
    assert_eq!(
        t.lock(1, lock(&b, 100, 200, true), false, None),
        Outcome::Granted,
        "its own shared lock is no conflict"
    );
    assert_eq!(t.lock(2, lock(&b, 0, TO_END, true), false, None), Outcome::Granted, "another file");
    assert_eq!(t.test(1, &lock(&b, 0, 10, true)), Some(lock(&a, 0, 100, false)));
    assert_eq!(t.test(1, &lock(&b, 0, 10, false)), None, "shared test against shared");
}

#[test]
fn ranges_that_do_not_overlap_do_not_conflict() {
    let t = LockTable::new(LockLimits::default());
    let (a, b) = (owner(1, 1), owner(2, 1));
    assert_eq!(t.lock(1, lock(&a, 0, 10, true), false, None), Outcome::Granted);
    assert_eq!(t.lock(1, lock(&b, 10, 20, true), false, None), Outcome::Granted, "[0,10) and [10,20)");
    assert_eq!(t.lock(1, lock(&b, 1 << 62, TO_END, true), false, None), Outcome::Granted, "64-bit offsets");
    assert!(matches!(t.lock(1, lock(&a, u64::MAX - 5, TO_END, true), false, None), Outcome::Denied(_)));
}

#[test]
fn an_owner_replaces_its_own_locks_and_unlocking_splits_them() {
    let t = LockTable::new(LockLimits::default());
    let (a, b) = (owner(1, 1), owner(1, 2));
    t.lock(1, lock(&a, 0, 100, false), false, None);
    assert_eq!(t.lock(1, lock(&a, 20, 30, true), false, None), Outcome::Granted, "upgrade in place");
    let held: Vec<(u64, u64, bool)> = t.list().iter().map(|l| (l.start, l.len.unwrap_or(0), l.exclusive)).collect();
    assert_eq!(held, vec![(0, 20, false), (20, 10, true), (30, 70, false)]);
    t.unlock(1, &a, 40, 60);
    assert_eq!(t.test(1, &lock(&b, 45, 55, true)), None, "the middle is free");
    assert!(t.test(1, &lock(&b, 35, 45, true)).is_some(), "the rest is held");
    // Another owner of the same client is another owner.
    assert!(matches!(t.lock(1, lock(&b, 0, 5, true), false, None), Outcome::Denied(_)));
    t.unlock(1, &b, 0, TO_END);
    assert!(t.test(1, &lock(&b, 0, 5, true)).is_some(), "b cannot release a's lock");
    t.unlock(1, &a, 0, TO_END);
    assert!(t.list().is_empty());
}

#[test]
fn waiters_are_granted_in_order_when_the_lock_goes() {
    let t = LockTable::new(LockLimits::default());
    let (a, b, c) = (owner(1, 1), owner(2, 1), owner(3, 1));
    let (granted, grant) = counter();
    t.lock(1, lock(&a, 0, 10, true), false, None);
    assert_eq!(t.lock(1, lock(&b, 5, 6, true), false, Some(grant())), Outcome::Blocked);
    assert_eq!(t.lock(1, lock(&c, 0, 10, false), false, Some(grant())), Outcome::Blocked);
    assert_eq!(granted.load(Ordering::SeqCst), 0);
    t.unlock(1, &a, 0, TO_END);
    assert_eq!(granted.load(Ordering::SeqCst), 1, "b first; c conflicts with it and waits");
    assert_eq!(t.test(1, &lock(&a, 5, 6, false)).map(|l| l.owner), Some(b.clone()));
    t.release_owner(1, &b);
    assert_eq!(granted.load(Ordering::SeqCst), 2, "then c");
    let listed = t.list();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].waiting && !listed[0].exclusive && listed[0].client == client(3));
}

#[test]
fn a_cancelled_waiter_is_never_granted() {
    let t = LockTable::new(LockLimits::default());
    let (a, b) = (owner(1, 1), owner(2, 1));
    let (granted, grant) = counter();
    t.lock(1, lock(&a, 0, 10, true), false, None);
    assert_eq!(t.lock(1, lock(&b, 0, 10, true), false, Some(grant())), Outcome::Blocked);
    assert!(t.cancel(1, &lock(&b, 0, 10, true)));
    assert!(!t.cancel(1, &lock(&b, 0, 10, true)), "only once");
    t.unlock(1, &a, 0, 10);
    assert_eq!(granted.load(Ordering::SeqCst), 0);
    assert!(t.list().is_empty());
}

#[test]
fn a_client_that_goes_takes_its_locks_and_requests_along() {
    let t = LockTable::new(LockLimits::default());
    let (a, a2, b) = (owner(1, 1), owner(1, 2), owner(2, 1));
    let (granted, grant) = counter();
    t.lock(1, lock(&a, 0, 10, true), false, None);
    t.lock(2, lock(&a2, 0, 10, false), false, None);
    assert!(t.share(3, Share { client: client(1), owner: vec![1], access: 1, deny: 2 }));
    assert_eq!(t.lock(1, lock(&b, 0, 1, true), false, Some(grant())), Outcome::Blocked);
    assert_eq!(t.holders(), vec![client(1)]);
    assert_eq!(t.release_clients(|c| c.is("host1")), 3, "two locks and a share");
    assert_eq!(granted.load(Ordering::SeqCst), 1, "b's wait ends");
    assert_eq!(t.holders(), vec![client(2)]);
    assert_eq!(t.release_clients(|c| c.is("10.0.3.2")), 1, "by address too");
    assert!(t.list().is_empty());
}

#[test]
fn only_reclaims_are_granted_in_the_grace_period() {
    let t = LockTable::new(LockLimits::default());
    let (a, b) = (owner(1, 1), owner(2, 1));
    let (granted, grant) = counter();
    t.start_grace(Duration::from_secs(60));
    assert!(t.in_grace());
    assert_eq!(t.lock(1, lock(&b, 0, 10, true), false, None), Outcome::Grace);
    assert_eq!(t.lock(1, lock(&a, 0, 10, true), true, None), Outcome::Granted, "a reclaims");
    assert_eq!(t.lock(2, lock(&b, 0, 10, true), false, Some(grant())), Outcome::Blocked, "waits for the grace's end");
    t.end_grace();
    assert!(!t.in_grace());
    assert_eq!(granted.load(Ordering::SeqCst), 1);
    assert!(matches!(t.lock(1, lock(&b, 0, 10, true), false, None), Outcome::Denied(_)), "a kept its lock");
}

#[test]
fn waiting_in_a_circle_is_a_deadlock() {
    let t = LockTable::new(LockLimits::default());
    let (a, b) = (owner(1, 1), owner(2, 1));
    let (_, grant) = counter();
    t.lock(1, lock(&a, 0, 1, true), false, None);
    t.lock(2, lock(&b, 0, 1, true), false, None);
    assert_eq!(t.lock(2, lock(&a, 0, 1, true), false, Some(grant())), Outcome::Blocked);
    assert_eq!(t.lock(1, lock(&b, 0, 1, true), false, Some(grant())), Outcome::Deadlock);
}

#[test]
fn limits_hold_per_client() {
    let t = LockTable::new(LockLimits { held_per_client: 2, waiting_per_client: 1 });
    let (a, b) = (owner(1, 1), owner(2, 1));
    let (_, grant) = counter();
    assert_eq!(t.lock(1, lock(&a, 0, 1, true), false, None), Outcome::Granted);
    assert_eq!(t.lock(1, lock(&a, 2, 3, true), false, None), Outcome::Granted);
    assert_eq!(t.lock(1, lock(&a, 4, 5, true), false, None), Outcome::NoLocks);
    assert_ne!(t.lock(1, lock(&b, 0, 1, true), false, None), Outcome::NoLocks, "other clients are not bound by it");
    assert_eq!(t.lock(1, lock(&b, 0, 1, true), false, Some(grant())), Outcome::Blocked);
    assert_eq!(t.lock(1, lock(&b, 2, 3, true), false, Some(grant())), Outcome::NoLocks);
}

#[test]
fn share_reservations_deny_what_they_say() {
    let t = LockTable::new(LockLimits::default());
    let read_deny_write = Share { client: client(1), owner: vec![1], access: 1, deny: 2 };
    assert!(t.share(1, read_deny_write));
    assert!(!t.share(1, Share { client: client(2), owner: vec![1], access: 2, deny: 0 }), "write denied");
    assert!(t.share(1, Share { client: client(2), owner: vec![1], access: 1, deny: 0 }), "read allowed");
    assert!(!t.share(1, Share { client: client(3), owner: vec![1], access: 1, deny: 1 }), "cannot deny a reader");
    t.unshare(1, &client(1), &[1]);
    assert!(t.share(1, Share { client: client(3), owner: vec![1], access: 2, deny: 0 }));
}

/// Operations of the model test: (owner, start, len, exclusive).
fn ops() -> impl Strategy<Value = Vec<(u8, bool, u64, u64, bool)>> {
    proptest::collection::vec((0u8..3, any::<bool>(), 0u64..24, 1u64..10, any::<bool>()), 1..60)
}

proptest! {
    /// Random locks and unlocks of three owners over 32 bytes, against a
    /// model holding each byte's holders: every request is granted exactly
    /// when no other owner's lock conflicts, and the table then holds
    /// exactly what the model holds.
    #[test]
    fn the_table_agrees_with_a_byte_model(ops in ops()) {
        let t = LockTable::new(LockLimits::default());
        // model[byte][owner] = None | Some(exclusive)
        let mut model = [[None::<bool>; 3]; 32];
        for (o, unlock, start, len, exclusive) in ops {
            let end = (start + len).min(32);
            let who = owner(o, 0);
            if unlock {
                t.unlock(5, &who, start, end);
                for b in &mut model[start as usize..end as usize] { b[o as usize] = None; }
                continue;
            }
            let blocked = (start..end).any(|b| (0..3).any(|p| p != o as usize
                && model[b as usize][p].is_some_and(|x| x || exclusive)));
            let got = t.lock(5, lock(&who, start, end, exclusive), false, None);
            prop_assert_eq!(matches!(got, Outcome::Denied(_)), blocked, "{:?}", got);
            if !blocked {
                for b in &mut model[start as usize..end as usize] { b[o as usize] = Some(exclusive); }
            }
            let mut held = [[None::<bool>; 3]; 32];
            for l in t.list() {
                let Client::Nfs { addr, .. } = &l.client else { unreachable!() };
                let p = match addr { IpAddr::V4(v) => v.octets()[3] as usize, IpAddr::V6(_) => unreachable!() };
                let end = l.len.map_or(32, |n| l.start + n);
                for b in &mut held[l.start as usize..end as usize] {
                    prop_assert!(b[p].is_none(), "an owner's locks overlap");
                    b[p] = Some(l.exclusive);
                }
            }
            prop_assert_eq!(held, model);
        }
    }
}
