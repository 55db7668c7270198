//! The NFS server of a real `storfs serve`, from this host: libnfs's
//! command-line clients, and hostile TCP clients (truncated records, absurd
//! lengths, garbage) while a well-behaved client keeps being served.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::rpc::{self, NFS, Reply};
use common::*;
use storfs::nfs::xdr::{Reader, Writer};

#[test]
fn libnfs_clients_interoperate() {
    let nfs_cp = require_tool("nfs-cp");
    let nfs_ls = require_tool("nfs-ls");
    let nfs_cat = require_tool("nfs-cat");
    let s = Scratch::new("libnfs");
    let d = Daemon::start(&s.path, "[nfs]\nlisten = \"127.0.0.1:0\"\n");
    let port = d.nfs_port();
    let src = s.path.join("src.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(&src, &data).expect("write source");
    run(Command::new(&nfs_cp).arg(&src).arg(nfs_url(port, "/copied.bin")));
    std::fs::write(s.path.join("small.txt"), b"hello from libnfs\n").expect("write");
    run(Command::new(&nfs_cp).arg(s.path.join("small.txt")).arg(nfs_url(port, "/small.txt")));
    let back = s.path.join("back.bin");
    run(Command::new(&nfs_cp).arg(nfs_url(port, "/copied.bin")).arg(&back));
    assert!(std::fs::read(&back).expect("read back") == data, "nfs-cp round trip is byte-identical");
    let cat = run(Command::new(&nfs_cat).arg(nfs_url(port, "/small.txt")));
    assert_eq!(cat.stdout, b"hello from libnfs\n");
    let ls = run(Command::new(&nfs_ls).arg(nfs_url(port, "")));
    let listing = String::from_utf8_lossy(&ls.stdout);
    assert!(listing.contains("copied.bin") && listing.contains("small.txt"), "{listing}");
    assert!(listing.contains("3000000"), "nfs-ls shows the size: {listing}");
    d.assert_fsck_clean();
}

/// A NULL call on a fresh connection: the server still answers.
fn ping(port: u16) {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let reply = rpc::roundtrip(&mut sock, &rpc::call(1, NFS, 3, 0, &None, &[])).expect("NULL reply");
    assert!(matches!(rpc::parse_reply(&reply), Reply::Accepted { stat: 0, .. }));
}

#[test]
fn hostile_clients_do_not_disturb_others() {
    let s = Scratch::new("hostile");
    let d = Daemon::start(&s.path, "[nfs]\nlisten = \"127.0.0.1:0\"\n");
    let port = d.nfs_port();
    // A well-behaved client with a mounted root, kept open throughout.
    let mut good = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    good.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut a = Writer::default();
    a.opaque(b"/default");
    let reply =
        rpc::parse_reply(&rpc::roundtrip(&mut good, &rpc::call(2, 100_005, 3, 1, &rpc::root(), &a.buf)).expect("mnt"));
    let mut r = Reader::new(reply.ok_body());
    assert_eq!(r.u32(), Ok(0));
    let root = r.opaque(64).expect("fh").to_vec();
    let mut getattr = Writer::default();
    getattr.opaque(&root);
    let check_good = |good: &mut TcpStream, xid: u32| {
        let reply = rpc::roundtrip(good, &rpc::call(xid, NFS, 3, 1, &rpc::root(), &getattr.buf)).expect("getattr");
        assert_eq!(rpc::parse_reply(&reply).status(), 0, "the good client is still served");
    };
    check_good(&mut good, 3);

    let hostile: Vec<Vec<u8>> = vec![
        // A record header announcing 2 GiB.
        0x7fff_ffffu32.to_be_bytes().to_vec(),
        // Fragments adding up past the limit.
        [0x0010_0000u32.to_be_bytes().to_vec(), vec![0; 0x10_0000], 0x0010_0000u32.to_be_bytes().to_vec()].concat(),
        // A truncated record, then the connection closes.
        [0x8000_0100u32.to_be_bytes().to_vec(), vec![1; 10]].concat(),
        // Random garbage framed as a record.
        rpc_framed((0..500u32).map(|i| (i.wrapping_mul(97) % 251) as u8).collect()),
        // A call with an absurd opaque length inside.
        rpc_framed(rpc::call(9, NFS, 3, 1, &None, &u32::MAX.to_be_bytes())),
        // A reply sent to the server.
        rpc_framed([7u32.to_be_bytes(), 1u32.to_be_bytes(), 0u32.to_be_bytes()].concat()),
    ];
    for (i, bytes) in hostile.iter().enumerate() {
        let mut bad = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _ = bad.write_all(bytes);
        drop(bad);
        check_good(&mut good, 10 + i as u32);
        ping(port);
    }
    // Many garbage connections at once.
    let floods: Vec<_> = (0..32)
        .map(|k| {
            std::thread::spawn(move || {
                if let Ok(mut bad) = TcpStream::connect(("127.0.0.1", port)) {
                    for j in 0..50u32 {
                        let _ = bad.write_all(&rpc_framed(vec![(k * j) as u8; 64]));
                    }
                }
            })
        })
        .collect();
    for f in floods {
        f.join().expect("flood thread");
    }
    check_good(&mut good, 100);
    ping(port);
    assert!(!d.log_text().contains("panicked"), "no panic in the daemon log");
    d.assert_fsck_clean();
}

fn rpc_framed(body: Vec<u8>) -> Vec<u8> {
    storfs::nfs::rpc::frame(&body)
}
