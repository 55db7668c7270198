//! The NBD server of a real `storfs serve`, from this host: libnbd's
//! nbdinfo and nbdcopy, qemu-io and qemu-img, fio's nbd engine, and raw
//! clients for attachment rules and malformed input.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::nbd::*;
use common::*;
use storfs::nbd::proto as p;

fn uri(port: u16, vol: &str) -> String {
    format!("nbd://127.0.0.1:{port}/{vol}")
}

/// Runs a tool; panics with its output unless it succeeds.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

fn qemu_io(port: u16, vol: &str, cmds: &[&str]) -> String {
    let mut c = Command::new(require_tool("qemu-io"));
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let text = run(c.arg(uri(port, vol)));
    assert!(!text.contains("fail") && !text.contains("Pattern verification"), "qemu-io {cmds:?}:\n{text}");
    text
}

#[test]
fn nbd_clients_interoperate() {
    let s = Scratch::new("nbdhost");
    let d = Daemon::start(&s.path, "");
    d.cli(&["volume", "create", "vol1", "--size", "256MiB"]);
    let port = nbd_port(&d);

    let info: serde_json::Value =
        serde_json::from_str(&run(Command::new(require_tool("nbdinfo")).arg("--json").arg(uri(port, "vol1"))))
            .expect("nbdinfo json");
    let e = &info["exports"][0];
    assert_eq!(e["export-size"].as_u64(), Some(256 << 20), "{info}");
    for flag in ["can_flush", "can_fua", "can_multi_conn", "can_trim", "can_zero", "can_fast_zero", "can_cache"] {
        assert_eq!(e[flag].as_bool(), Some(true), "{flag}: {info}");
    }
    assert_eq!(e["is_read_only"].as_bool(), Some(false));
    assert_eq!(e["block_size_minimum"].as_u64(), Some(1));
    assert_eq!(e["block_size_preferred"].as_u64(), Some(4096));
    assert_eq!(e["block_size_maximum"].as_u64(), Some(32 << 20));
    assert!(info["protocol"].as_str().is_some_and(|s| s.contains("newstyle-fixed")), "{info}");
    let list = run(Command::new(require_tool("nbdinfo")).arg("--list").arg(format!("nbd://127.0.0.1:{port}")));
    assert!(list.contains("export=\"vol1\""), "{list}");
    // base:allocation: an untouched volume is one hole that reads as zeros.
    let map = run(Command::new(require_tool("nbdinfo")).arg("--map").arg(uri(port, "vol1")));
    assert_eq!(map.split_whitespace().collect::<Vec<_>>(), ["0", "268435456", "3", "hole,zero"], "{map}");

    // Patterns written, read back, discarded and zeroed, at both ends.
    let end = (256u64 << 20) - 4096;
    qemu_io(
        port,
        "vol1",
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd 1M 64k",
            "write -P 0x11 -f 2M 4k",
            &format!("write -P 0x22 {end} 4k"),
            "read -P 0xab 0 1M",
            "read -P 0xcd 1M 64k",
            "read -P 0x11 2M 4k",
            &format!("read -P 0x22 {end} 4k"),
            "discard 0 512k",
            "read -P 0 0 512k",
            "read -P 0xab 512k 512k",
            "write -z 1M 4k",
            "read -P 0 1M 4k",
            "read -P 0xcd 1052672 61440",
            "flush",
        ],
    );
    // Past the end is refused, not served.
    let past = Command::new(require_tool("qemu-io"))
        .args(["-f", "raw", "-c", &format!("read {end} 8k"), &uri(port, "vol1")])
        .output()
        .expect("qemu-io");
    let text = String::from_utf8_lossy(&past.stdout).into_owned() + &String::from_utf8_lossy(&past.stderr);
    assert!(text.contains("failed") || !past.status.success(), "read past the end: {text}");

    // nbdcopy with 4 connections into a fresh volume, out again, compared
    // with qemu-img.
    d.cli(&["volume", "create", "copy", "--size", "48MiB"]);
    let src = s.path.join("src.raw");
    let mut data = vec![0u8; 48 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    data[8 << 20..16 << 20].fill(0); // a hole in the middle
    std::fs::write(&src, &data).expect("src");
    run(Command::new(require_tool("nbdcopy")).args(["--connections=4", "--flush"]).arg(&src).arg(uri(port, "copy")));
    let back = s.path.join("back.raw");
    run(Command::new(require_tool("nbdcopy")).arg(uri(port, "copy")).arg(&back));
    run(Command::new(require_tool("qemu-img")).args(["compare", "-f", "raw", "-F", "raw"]).arg(&src).arg(&back));

    // fio's nbd engine: 4 jobs × 32 in flight, each verifying its own region.
    let fio = run(Command::new(require_tool("fio")).args([
        "--name=nbd",
        "--ioengine=nbd",
        &format!("--uri={}", uri(port, "vol1")),
        "--rw=randwrite",
        "--bs=4k",
        "--size=32M",
        "--offset_increment=32M",
        "--numjobs=4",
        "--iodepth=32",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--verify_state_save=0", // no state file in the working directory (the checkout)
    ]));
    assert!(!fio.contains("verify failed"), "{fio}");
    assert!(fio.lines().filter(|l| l.contains("err=")).all(|l| l.contains("err= 0")), "{fio}");
    assert_eq!(fio.matches("err= 0").count(), 4, "four jobs: {fio}");
    assert_eq!(d.status()["nbd_listen"].as_str().map(|_| ()), Some(()), "daemon alive");
}

#[test]
fn one_host_attaches_a_volume_and_bad_clients_are_refused() {
    let s = Scratch::new("nbdattach");
    let policy = "[nbd.volumes.readonly]\nro = true\n[nbd.volumes.far]\nclients = [\"10.0.0.0/8\"]\n";
    let d = Daemon::start(&s.path, policy);
    for v in ["solo", "readonly", "far"] {
        d.cli(&["volume", "create", v, "--size", "16MiB"]);
    }
    d.cli(&["volume", "create", "shared", "--size", "16MiB", "--multi-attach"]);
    let port = nbd_port(&d);

    // Per-volume options: a read-only volume refuses writes; a volume for
    // other networks is neither listed nor attachable from here.
    let info = run(Command::new(require_tool("nbdinfo")).arg(format!("nbd://127.0.0.1:{port}/readonly")));
    assert!(info.contains("is_read_only: true"), "{info}");
    let mut r = raw_client(port, "127.0.0.1");
    assert_eq!(go(&mut r, "readonly").0, p::REP_ACK);
    let (e, _) = request(&mut r, p::CMD_WRITE, 0, 1, 0, 4096, &[5u8; 4096]).expect("write");
    assert_eq!(e, p::EPERM, "write to a read-only volume");
    let (e, _) = request(&mut r, p::CMD_TRIM, 0, 2, 0, 4096, &[]).expect("trim");
    assert_eq!(e, p::EPERM, "trim of a read-only volume");
    drop(r);
    let list = run(Command::new(require_tool("nbdinfo")).arg("--list").arg(format!("nbd://127.0.0.1:{port}")));
    assert!(list.contains("\"solo\"") && !list.contains("\"far\""), "{list}");
    let mut f = raw_client(port, "127.0.0.1");
    assert_eq!(go(&mut f, "far").0, p::REP_ERR_UNKNOWN, "outside the volume's networks");

    // An unknown option is refused and the next one still parses.
    let mut a = raw_client(port, "127.0.0.1");
    send_option(&mut a, 99, b"whatever");
    assert_eq!(final_reply(&mut a).0, p::REP_ERR_UNSUP);
    send_option(&mut a, p::OPT_STRUCTURED_REPLY, b"x");
    assert_eq!(final_reply(&mut a).0, p::REP_ERR_INVALID, "STRUCTURED_REPLY with data");
    assert_eq!(go(&mut a, "nope").0, p::REP_ERR_UNKNOWN);
    assert_eq!(go(&mut a, "solo").0, p::REP_ACK, "first host attaches");

    // A second host is refused with a reason; the same host is not.
    let mut b = raw_client(port, "127.0.0.2");
    let (kind, why) = go(&mut b, "solo");
    assert_eq!(kind, p::REP_ERR_POLICY, "{why}");
    assert!(why.contains("attached by 127.0.0.1") && why.contains("--multi-attach"), "{why}");
    let mut a2 = raw_client(port, "127.0.0.1");
    assert_eq!(go(&mut a2, "solo").0, p::REP_ACK, "more connections from the same host");
    let mut m1 = raw_client(port, "127.0.0.1");
    let mut m2 = raw_client(port, "127.0.0.2");
    assert_eq!((go(&mut m1, "shared").0, go(&mut m2, "shared").0), (p::REP_ACK, p::REP_ACK), "multi-attach");
    let err = d.cli_raw(&["volume", "delete", "solo"]);
    assert_clear_error(&err, "attached by 127.0.0.1");

    // Detaching every connection of the first host frees the volume.
    drop((a, a2));
    let mut ok = false;
    for _ in 0..50 {
        let mut b = raw_client(port, "127.0.0.2");
        if go(&mut b, "solo").0 == p::REP_ACK {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "the volume is free once its host detached");
    drop((m1, m2));

    // Garbage: a bad option magic, an absurd option length, a bad request
    // magic after GO, a write larger than any request. Each closes only
    // its own connection.
    let mut g = raw_client(port, "127.0.0.1");
    g.write_all(&[0xffu8; 64]).expect("garbage");
    let mut sink = [0u8; 16];
    assert!(matches!(g.read(&mut sink), Ok(0) | Err(_)), "bad option magic closes");
    let mut g = raw_client(port, "127.0.0.1");
    let mut m = p::IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&p::OPT_GO.to_be_bytes());
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    g.write_all(&m).expect("absurd");
    assert!(matches!(g.read(&mut sink), Ok(0) | Err(_)), "absurd option length closes");
    for bad in [[0u8; 28], {
        let mut r = [0u8; 28];
        r[..4].copy_from_slice(&p::REQUEST_MAGIC.to_be_bytes());
        r[6..8].copy_from_slice(&p::CMD_WRITE.to_be_bytes());
        r[24..].copy_from_slice(&u32::MAX.to_be_bytes());
        r
    }] {
        let mut g = raw_client(port, "127.0.0.1");
        assert_eq!(go(&mut g, "shared").0, p::REP_ACK);
        g.write_all(&bad).expect("bad request");
        assert!(matches!(g.read(&mut sink), Ok(0) | Err(_)), "bad request closes");
    }
    // A read past the end gets EINVAL and the connection goes on.
    let mut g = raw_client(port, "127.0.0.1");
    assert_eq!(go(&mut g, "shared").0, p::REP_ACK);
    for (cookie, offset) in [(1u64, 16u64 << 20), (2, 0)] {
        let mut r = [0u8; 28];
        r[..4].copy_from_slice(&p::REQUEST_MAGIC.to_be_bytes());
        r[8..16].copy_from_slice(&cookie.to_be_bytes());
        r[16..24].copy_from_slice(&offset.to_be_bytes());
        r[24..].copy_from_slice(&512u32.to_be_bytes());
        g.write_all(&r).expect("read");
        let mut h = [0u8; 16];
        g.read_exact(&mut h).expect("reply");
        let error = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        assert_eq!(&h[8..], &cookie.to_be_bytes());
        if cookie == 1 {
            assert_eq!(error, p::EINVAL, "past the end");
        } else {
            assert_eq!(error, 0);
            let mut data = [1u8; 512];
            g.read_exact(&mut data).expect("data");
            assert_eq!(data, [0u8; 512], "a new volume reads as zeros");
        }
    }
    // The server still serves everyone.
    run(Command::new(require_tool("nbdinfo")).arg(uri(port, "shared")));
}
