//! The README, run as a newcomer runs it. Every `sh` block is executed line
//! by line, in README order, against the daemon the README itself starts;
//! every `toml` block is validated with `storfs serve --check`. When a README
//! line changes, this test runs the new line; when a documented command
//! fails, it fails and names the line.
//!
//! What is adapted, and only that:
//! - The commands run in a network namespace and a private mount namespace,
//!   with scratch directories bound over the built-in defaults
//!   (`/var/lib/storfs`, `/run/storfs`, `/etc/storfs`) and a tmpfs over `/mnt`, so the
//!   README's default paths and ports are the real defaults without
//!   colliding with anything on the test machine.
//! - `storfs` is the binary built by this checkout, first on `PATH`.
//! - In a block that talks to the daemon from a client machine (one with
//!   `nbd-client`, `nfs-ls` or `mount -t nfs`), every line not starting with
//!   `storfs` runs on a client machine: a VM from `../shared/vm`, which
//!   reaches the daemon's host as 10.0.2.2, so `HOST` and `127.0.0.1` in
//!   those lines become 10.0.2.2. Like a Debian NFS client, the machine
//!   runs rpcbind and rpc.statd (NFS locking needs them) before the lines.
//! - After a line that starts the daemon in the background, the script waits
//!   until it answers `storfs status`, as a person would before typing on.
//! - The first block's second command (`scripts/test.sh`) is what is running
//!   this test; it is checked to be what `.ci/run` runs instead.
//!
//! A block preceded by `<!-- readme-test: skip REASON -->` is not run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A fenced block of README.md.
#[derive(Debug)]
struct Block {
    lang: String,
    /// Line number (1-based) of the first line inside the fence.
    first_line: usize,
    lines: Vec<String>,
    skip: bool,
}

fn blocks(md: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut cur: Option<Block> = None;
    let mut skip_next = false;
    for (i, line) in md.lines().enumerate() {
        if let Some(b) = cur.as_mut() {
            if line.trim_start().starts_with("```") {
                out.push(cur.take().expect("open block"));
            } else {
                b.lines.push(line.to_string());
            }
            continue;
        }
        if let Some(lang) = line.strip_prefix("```") {
            cur = Some(Block { lang: lang.trim().to_string(), first_line: i + 2, lines: Vec::new(), skip: skip_next });
            skip_next = false;
        } else if line.trim_start().starts_with("<!-- readme-test: skip") {
            skip_next = true;
        } else if !line.trim().is_empty() {
            skip_next = false;
        }
    }
    assert!(cur.is_none(), "README.md has an unclosed code block");
    out
}

/// The command part of a shell line: everything before a `#` comment that
/// is outside quotes, trimmed.
fn command_part(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let bytes = line.as_bytes();
    for (i, &c) in bytes.iter().enumerate() {
        match c {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || bytes[i - 1].is_ascii_whitespace()) => {
                return line[..i].trim();
            }
            _ => {}
        }
    }
    line.trim()
}

/// Single-quotes `s` for a shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn is_client_command(cmd: &str) -> bool {
    let first = cmd.split_whitespace().next().unwrap_or("");
    first == "nbd-client" || first == "nfs-ls" || cmd.starts_with("mount -t nfs")
}

/// Shell text that runs README line `no` in its own `SHELL -ec` (so every
/// command of `a; b` and `a && b` counts) and fails the script naming it.
fn checked(shell: &str, no: usize, cmd: &str) -> String {
    let q = quote(cmd);
    format!("echo {}\n{shell} -ec {q} || fail {no} {q}\n", quote(&format!("+ {cmd}")))
}

const PRELUDE: &str = r#"set -euo pipefail
fail() { echo "README.md line $1 failed: $2" >&2; exit 1; }
# wait_ready PID SECONDS: until the daemon answers, as a person would wait.
wait_ready() {
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    storfs status >/dev/null 2>&1 && return 0
    kill -0 "$1" 2>/dev/null || { echo "the daemon exited during startup" >&2; return 1; }
    sleep 0.2
  done
  echo "the daemon did not answer storfs status within $2 s" >&2; return 1
}
# stop PID: SIGTERM, and the daemon must exit cleanly.
stop() { kill -TERM "$1"; wait "$1" || { echo "the daemon exited with status $? after SIGTERM" >&2; return 1; }; }
"#;

#[test]
fn readme_commands_run_as_written() {
    require_root_and_fuse();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let md = std::fs::read_to_string(repo.join("README.md")).expect("README.md");
    let all = blocks(&md);
    let s = Scratch::new("readme");
    let ns = NetNs::new("readme");
    let bin = s.path.join("bin");
    for d in ["bin", "state", "run", "etc", "logs"] {
        std::fs::create_dir_all(s.path.join(d)).expect("scratch dirs");
    }
    std::os::unix::fs::symlink(storfs_bin(), bin.join("storfs")).expect("storfs on PATH");

    // The two commands: the first starts the daemon on built-in defaults;
    // the second is the test command .ci/run runs.
    let sh: Vec<&Block> = all.iter().filter(|b| b.lang == "sh").collect();
    let first = sh.first().expect("README.md has no sh block");
    let two: Vec<(usize, &str)> = first
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| (first.first_line + i, command_part(l)))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    assert_eq!(two.len(), 2, "the README's first block must be the two commands: {:?}", first.lines);
    let ci = std::fs::read_to_string(repo.join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == format!("exec {}", two[1].1)),
        ".ci/run must run the README's test command {:?}:\n{ci}",
        two[1].1
    );

    let mut script = String::from(PRELUDE);
    script += &format!(
        "mount --bind {state} /var/lib/storfs\nmount --bind {run} /run/storfs\nmount --bind {etc} /etc/storfs\n\
         mount -t tmpfs readme-mnt /mnt\nexport PATH={bin}:$PATH\ncd {repo}\n",
        state = quote(&s.path.join("state").display().to_string()),
        run = quote(&s.path.join("run").display().to_string()),
        etc = quote(&s.path.join("etc").display().to_string()),
        bin = quote(&bin.display().to_string()),
        repo = quote(&repo.display().to_string()),
    );
    // First command: a build that is already fresh (scripts/test.sh built
    // it), so the wait is the daemon's start; generous in case it is not.
    let (no, serve) = two[0];
    script += &format!(
        "echo {}\n{serve} > {log} 2>&1 &\nfirst=$!\nwait_ready $first 1800 || {{ cat {log}; fail {no} {}; }}\n",
        quote(&format!("+ {serve}")),
        quote(serve),
        log = quote(&s.path.join("logs/first.log").display().to_string()),
    );
    script += &checked("bash", no, "storfs status");
    script += "stop $first\n";

    let tools = vm_tools();
    let mut vms = 0;
    let mut daemon = false;
    for b in sh.iter().skip(1).filter(|b| !b.skip) {
        let cmds: Vec<(usize, &str)> = b
            .lines
            .iter()
            .enumerate()
            .map(|(i, l)| (b.first_line + i, command_part(l)))
            .filter(|(_, c)| !c.is_empty())
            .collect();
        let client_block = cmds.iter().any(|(_, c)| is_client_command(c));
        let mut vm_job = String::new();
        for (no, cmd) in cmds {
            if client_block && !cmd.starts_with("storfs") {
                vm_job += &checked("sh", no, &cmd.replace("HOST", "10.0.2.2").replace("127.0.0.1", "10.0.2.2"));
                continue;
            }
            script += &flush_vm(&mut vm_job, &mut vms, &s.path, &tools);
            if let Some(bg) = cmd.strip_suffix('&') {
                let bg = bg.trim();
                assert!(bg.starts_with("storfs serve"), "README.md line {no}: only the daemon runs in the background");
                script += &format!(
                    "echo {}\n{bg} > {log} 2>&1 &\ndaemon=$!\nwait_ready $daemon 120 || {{ cat {log}; fail {no} {}; }}\n",
                    quote(&format!("+ {cmd}")),
                    quote(cmd),
                    log = quote(&s.path.join("logs/daemon.log").display().to_string()),
                );
                daemon = true;
            } else {
                script += &checked("bash", no, cmd);
            }
        }
        script += &flush_vm(&mut vm_job, &mut vms, &s.path, &tools);
    }
    assert!(daemon, "no README block starts the daemon with `storfs serve &`");
    assert!(vms >= 2, "the README's NFS and volume blocks should each need a client machine; ran {vms}");
    script += "stop $daemon\necho 'README: every command ran'\n";

    let path = s.path.join("readme.sh");
    std::fs::write(&path, &script).expect("script");
    let created: Vec<&str> =
        ["/var/lib/storfs", "/run/storfs", "/etc/storfs"].into_iter().filter(|d| !Path::new(d).exists()).collect();
    for d in &created {
        std::fs::create_dir_all(d).expect("mountpoint for the bind mount");
    }
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "bash"])
        .arg(&path)
        .env_clear()
        .envs(std::env::vars().filter(|(k, _)| {
            ["PATH", "HOME", "TERM", "RUSTUP_HOME", "CARGO_HOME", "RUSTUP_TOOLCHAIN", "USER"].contains(&k.as_str())
        }))
        .output()
        .expect("run the README script");
    for d in &created {
        let _ = std::fs::remove_dir(d); // only if still empty
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(out.status.success(), "a README command failed ({}):\n{text}\nscript:\n{script}", out.status);
    assert!(text.contains("README: every command ran"), "{text}");

    // The configuration snippets are valid configurations.
    let mut snippets = 0;
    for b in all.iter().filter(|b| b.lang == "toml" && !b.skip) {
        let file = s.path.join(format!("readme-{}.toml", b.first_line));
        std::fs::write(&file, b.lines.join("\n")).expect("snippet");
        let out = Command::new(storfs_bin()).arg("--config").arg(&file).args(["serve", "--check"]).output();
        let out = out.expect("storfs serve --check");
        assert!(
            out.status.success(),
            "README.md config at line {} is refused: {}",
            b.first_line,
            String::from_utf8_lossy(&out.stderr)
        );
        snippets += 1;
    }
    assert!(snippets >= 2, "the README's config snippets were not found");
}

/// Shell text that runs the pending client lines in a fresh VM (and clears them).
fn flush_vm(job: &mut String, vms: &mut usize, dir: &Path, tools: &Path) -> String {
    if job.is_empty() {
        return String::new();
    }
    *vms += 1;
    let file = dir.join(format!("client-{vms}.sh"));
    // What nfs-common starts on a client machine; no name service in the VM,
    // so statd's lookups fail at once instead of timing out.
    let services = ": > /etc/resolv.conf\nmkdir -p /run/rpcbind /var/lib/nfs/sm\nrpcbind -w\nrpc.statd --no-notify\n";
    let text = format!(
        "set -eu\nfail() {{ echo \"README.md line $1 failed on the client: $2\" >&2; exit 1; }}\n{services}{job}"
    );
    std::fs::write(&file, text).expect("client job");
    job.clear();
    format!(
        "echo '== client machine {vms}'\n{run} --timeout 900 --mem 1024 --out {out} {file} || \
         {{ echo 'client machine {vms}: a README line failed there (above)' >&2; exit 1; }}\n",
        run = quote(&tools.join("run-vm").display().to_string()),
        out = quote(&dir.join(format!("client-{vms}-out")).display().to_string()),
        file = quote(&file.display().to_string()),
    )
}

#[test]
fn comments_outside_quotes_are_stripped() {
    assert_eq!(command_part("storfs serve &   # or: systemctl"), "storfs serve &");
    assert_eq!(command_part("nfs-ls 'nfs://h/?a=1&b=2#x'   # libnfs"), "nfs-ls 'nfs://h/?a=1&b=2#x'");
    assert_eq!(command_part("# only a comment"), "");
    assert_eq!(command_part("echo a#b"), "echo a#b");
}
