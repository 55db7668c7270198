//! NBD over TLS (NBD_OPT_STARTTLS) with real clients: qemu-io and qemu-img
//! (GnuTLS) on this machine, the kernel client's nbd-client with
//! certificates in a VM; plaintext refused with `tls = "require"`, a client
//! certificate from another CA (or none) refused with mutual TLS.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::nbd::{final_reply, nbd_port, raw_client, send_option};
use common::*;
use storfs::nbd::proto as p;

/// A CA, a server certificate for 127.0.0.1 and the VMs' view of the host
/// (10.0.2.2), a client certificate from the CA, and an intruder's from
/// another CA; PEM files under `dir`.
fn make_certs(dir: &Path) {
    let openssl = require_tool("openssl");
    let sh = |script: &str| {
        let out = run(Command::new("bash").arg("-c").arg(script).current_dir(dir).env("OPENSSL", &openssl));
        assert!(out.status.success(), "openssl: {}", stderr(&out));
    };
    sh(r#"set -e
ec() { "$OPENSSL" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
ca() { ec $1-key.pem; "$OPENSSL" req -x509 -new -key $1-key.pem -out $1-cert.pem -days 2 -subj "/CN=$1" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign; }
leaf() { ec $1-key.pem; "$OPENSSL" req -new -key $1-key.pem -out $1.csr -subj "/CN=$1"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n%s\n' "$3" > $1.ext
  "$OPENSSL" x509 -req -in $1.csr -CA $2-cert.pem -CAkey $2-key.pem -CAcreateserial -out $1-cert.pem -days 2 -extfile $1.ext; }
ca ca; ca rogue
leaf server ca "$(printf 'subjectAltName=IP:127.0.0.1,IP:10.0.2.2\nextendedKeyUsage=serverAuth')"
leaf client ca extendedKeyUsage=clientAuth
leaf intruder rogue extendedKeyUsage=clientAuth
"#);
}

/// A qemu `tls-creds-x509` directory: `ca` as ca-cert.pem and, if given,
/// `who`'s certificate and key as the client's.
fn qemu_creds(certs: &Path, name: &str, ca: &[&str], who: Option<&str>) -> PathBuf {
    let dir = certs.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let cas: Vec<u8> =
        ca.iter().flat_map(|c| std::fs::read(certs.join(format!("{c}-cert.pem"))).expect("ca")).collect();
    std::fs::write(dir.join("ca-cert.pem"), cas).expect("ca");
    if let Some(w) = who {
        std::fs::copy(certs.join(format!("{w}-cert.pem")), dir.join("client-cert.pem")).expect("cert");
        std::fs::copy(certs.join(format!("{w}-key.pem")), dir.join("client-key.pem")).expect("key");
    }
    dir
}

/// qemu-io with commands `cmds` on volume vol1 over TLS with `creds`.
fn qemu_io(port: u16, creds: &Path, cmds: &[&str]) -> Output {
    let mut c = Command::new(require_tool("qemu-io"));
    c.arg("--object")
        .arg(format!("tls-creds-x509,id=tls0,endpoint=client,dir={}", creds.display()))
        .arg("--image-opts")
        .arg(format!("driver=nbd,host=127.0.0.1,port={port},export=vol1,tls-creds=tls0"));
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    c.output().expect("run qemu-io")
}

fn tls_config(certs: &Path, mode: &str, mutual: bool) -> String {
    let ca =
        if mutual { format!("tls_client_ca = \"{}\"\n", certs.join("ca-cert.pem").display()) } else { String::new() };
    format!(
        "[nbd]\nlisten = \"127.0.0.1:0\"\ntls = \"{mode}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{ca}",
        certs.join("server-cert.pem").display(),
        certs.join("server-key.pem").display()
    )
}

#[test]
fn qemu_attaches_over_tls_and_plaintext_and_strangers_are_refused() {
    require_root_and_fuse();
    let s = Scratch::new("nbdtls");
    let certs = s.path.join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    make_certs(&certs);
    let d = Daemon::start(&s.path.join("require"), &tls_config(&certs, "require", true));
    assert_eq!(d.status()["nbd_tls"], "require");
    d.cli(&["volume", "create", "vol1", "--size", "64MiB"]);
    let port = nbd_port(&d);

    // qemu over TLS with a client certificate from the CA: writes and reads.
    let good = qemu_creds(&certs, "good", &["ca"], Some("client"));
    let out = qemu_io(port, &good, &["write -P 0xab 0 1M", "write -P 0xcd 60M 64k"]);
    assert!(out.status.success(), "qemu-io over TLS: {}", stderr(&out));
    let out = qemu_io(port, &good, &["read -P 0xab 0 1M", "read -P 0xcd 60M 64k", "read -P 0 1M 1M"]);
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed"));
    let info = run(Command::new(require_tool("qemu-img"))
        .arg("info")
        .arg("--object")
        .arg(format!("tls-creds-x509,id=tls0,endpoint=client,dir={}", good.display()))
        .arg("--image-opts")
        .arg(format!("driver=nbd,host=127.0.0.1,port={port},export=vol1,tls-creds=tls0")));
    assert!(info.status.success() && String::from_utf8_lossy(&info.stdout).contains("64 MiB"), "{}", stderr(&info));

    // Plaintext: a real client is refused, and by hand every option but
    // STARTTLS and ABORT answers TLS_REQD; EXPORT_NAME closes.
    let plain =
        Command::new(require_tool("nbdinfo")).arg(format!("nbd://127.0.0.1:{port}/vol1")).output().expect("nbdinfo");
    assert!(!plain.status.success(), "a plaintext client must not attach");
    let mut c = raw_client(port, "127.0.0.1");
    for option in [p::OPT_LIST, p::OPT_STRUCTURED_REPLY, p::OPT_GO, p::OPT_INFO] {
        let data = if option == p::OPT_GO || option == p::OPT_INFO { go_data("vol1") } else { Vec::new() };
        send_option(&mut c, option, &data);
        assert_eq!(final_reply(&mut c).0, p::REP_ERR_TLS_REQD, "option {option}");
    }
    send_option(&mut c, p::OPT_STARTTLS, b"junk");
    assert_eq!(final_reply(&mut c).0, p::REP_ERR_INVALID, "STARTTLS with data");
    send_option(&mut c, p::OPT_EXPORT_NAME, b"vol1");
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut c, &mut rest);
    assert!(rest.is_empty(), "a plaintext EXPORT_NAME gets nothing but the close");

    // Mutual TLS: a certificate from another CA, or none, is refused.
    let rogue = qemu_creds(&certs, "rogue", &["ca", "rogue"], Some("intruder"));
    let out = qemu_io(port, &rogue, &["read 0 4k"]);
    assert!(!out.status.success(), "a client certificate from another CA must be refused");
    let none = qemu_creds(&certs, "none", &["ca"], None);
    assert!(!qemu_io(port, &none, &["read 0 4k"]).status.success(), "no client certificate must be refused");
    assert!(d.log_text().contains("TLS handshake failed"), "the refusals are logged:\n{}", d.log_text());

    // tls = "allow": plaintext and TLS both attach; TLS without a client CA
    // needs no client certificate.
    let a = Daemon::start(&s.path.join("allow"), &tls_config(&certs, "allow", false));
    a.cli(&["volume", "create", "vol1", "--size", "8MiB"]);
    let aport = nbd_port(&a);
    let plain =
        Command::new(require_tool("nbdinfo")).arg(format!("nbd://127.0.0.1:{aport}/vol1")).output().expect("nbdinfo");
    assert!(plain.status.success(), "plaintext with tls = allow: {}", stderr(&plain));
    let out = qemu_io(aport, &none, &["write -P 0x5a 0 64k", "read -P 0x5a 0 64k"]);
    assert!(out.status.success(), "TLS with tls = allow: {}", stderr(&out));

    // Without TLS configured, STARTTLS is unsupported.
    let off = Daemon::start(&s.path.join("off"), "");
    let mut c = raw_client(nbd_port(&off), "127.0.0.1");
    send_option(&mut c, p::OPT_STARTTLS, &[]);
    assert_eq!(final_reply(&mut c).0, p::REP_ERR_UNSUP);
}

/// The data of NBD_OPT_GO / INFO for export `name`, asking for nothing.
fn go_data(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

#[test]
fn the_kernel_client_attaches_over_tls_with_a_client_certificate() {
    require_root_and_fuse();
    let s = Scratch::new("nbdtlsvm");
    let certs = s.path.join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    make_certs(&certs);
    let ns = NetNs::new("nbdtls");
    let config = tls_config(&certs, "require", true).replace("127.0.0.1:0", "127.0.0.1:10809");
    let d = Daemon::start_in(&s.path.join("d"), &config, Some(&ns));
    d.cli(&["volume", "create", "vol1", "--size", "256MiB"]);
    let certs_arg = certs.to_str().expect("utf8");
    let out = finish_vm(spawn_vm(&ns, "nbd-tls.sh", &[certs_arg, "10809"], &s.path.join("out"), 900), "nbd-tls");
    assert!(out.contains("tls: ext4 written, detached, attached again and intact"), "{out}");
    assert!(out.contains("tls: refused without a client certificate"), "{out}");
    d.assert_fsck_clean();
}
