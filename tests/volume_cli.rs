//! `storfs volume` against a real daemon: create, list, grow, delete, the
//! errors a user gets, and volumes kept across a restart.

mod common;

use common::*;

fn volumes(d: &Daemon) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&d.cli(&["volume", "list", "--json"])).expect("json");
    v.as_array().expect("array").clone()
}

#[test]
fn volume_commands() {
    let s = Scratch::new("volcli");
    let mut d = Daemon::start(&s.path, "");
    d.cli(&["volume", "create", "vol1", "--size", "20GiB"]);
    d.cli(&["volume", "create", "db", "--size", "1GiB", "--block-size", "64KiB", "--multi-attach"]);
    let list = volumes(&d);
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!((list[0]["name"].as_str(), list[0]["size"].as_u64()), (Some("db"), Some(1 << 30)));
    assert_eq!((list[0]["block_size"].as_u64(), list[0]["multi_attach"].as_bool()), (Some(64 << 10), Some(true)));
    assert_eq!((list[1]["name"].as_str(), list[1]["block_size"].as_u64()), (Some("vol1"), Some(256 << 10)));
    assert_eq!(list[1]["multi_attach"].as_bool(), Some(false));
    // Volumes are not file systems.
    assert_eq!(d.cli(&["fs", "list"]).trim(), "default");

    assert_clear_error(&d.cli_raw(&["volume", "create", "vol1", "--size", "1GiB"]), "already exists");
    assert_clear_error(
        &d.cli_raw(&["volume", "create", "x", "--size", "1GiB", "--block-size", "3KiB"]),
        "power of two",
    );
    assert_clear_error(&d.cli_raw(&["volume", "create", "x/y", "--size", "1GiB"]), "volume names");
    assert_clear_error(&d.cli_raw(&["volume", "create", "x", "--size", "100"]), "multiple of 4 KiB");
    assert_clear_error(&d.cli_raw(&["volume", "resize", "vol1", "--size", "1GiB"]), "only grow");
    assert_clear_error(&d.cli_raw(&["volume", "delete", "nope"]), "not found");
    assert_clear_error(&d.cli_raw(&["mount", "--fs", ".volumes", "/tmp"]), "no file system named");
    let bad = d.cli_raw(&["volume", "create", "x", "--size", "12x"]);
    assert!(!bad.status.success() && stderr(&bad).contains("invalid size"), "{}", stderr(&bad));

    d.cli(&["volume", "resize", "vol1", "--size", "40GiB"]);
    d.cli(&["volume", "delete", "db"]);
    d.restart();
    let list = volumes(&d);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!((list[0]["name"].as_str(), list[0]["size"].as_u64()), (Some("vol1"), Some(40 << 30)));
}
