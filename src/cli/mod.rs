//! Command line: `storfs serve` runs the daemon; every other subcommand is a
//! client of its control socket.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::{Config, Size, default_socket};
use storfs::control::{self, Request};

/// storfs: EFS-like file systems and EBS-like volumes on local disks or S3.
#[derive(Debug, Parser)]
#[command(name = "storfs", version, about)]
pub struct Cli {
    /// Control socket of the daemon (default: control.socket of --config, else the built-in default).
    #[arg(long, global = true, env = "STORFS_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Configuration file (TOML). Without it, built-in defaults apply.
    #[arg(long, global = true, env = "STORFS_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground.
    Serve {
        /// Only load and validate the configuration, print it is valid, and exit.
        #[arg(long)]
        check: bool,
    },
    /// Print the default configuration.
    Init,
    /// Manage file systems.
    Fs {
        /// What to do with file systems.
        #[command(subcommand)]
        cmd: FsCommand,
    },
    /// Manage block volumes (exported over NBD).
    Volume {
        /// What to do with volumes.
        #[command(subcommand)]
        cmd: VolumeCommand,
    },
    /// Snapshots of volumes and file systems (instant, incremental).
    Snapshot {
        /// What to do with snapshots.
        #[command(subcommand)]
        cmd: SnapshotCommand,
    },
    /// Lifecycle tiering between Standard and Infrequent Access.
    Tier {
        /// What to do.
        #[command(subcommand)]
        cmd: TierCommand,
    },
    /// This month's storage bill so far and projected, from the price table.
    Cost {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Mount a file system locally (served by the daemon through FUSE).
    Mount {
        /// Directory to mount on.
        mountpoint: PathBuf,
        /// File system to mount.
        #[arg(long, default_value = crate::daemon::DEFAULT_FS)]
        fs: String,
        /// Let the kernel's page cache gather writes (FUSE writeback cache):
        /// small random writes cost no round trip each; sizes changed
        /// elsewhere show only when they grow (docs/SEMANTICS.md). Default:
        /// `[fuse] writeback_cache`.
        #[arg(long, conflicts_with = "no_writeback_cache")]
        writeback_cache: bool,
        /// Write through even if `[fuse] writeback_cache` is on.
        #[arg(long)]
        no_writeback_cache: bool,
    },
    /// Unmount a file system mounted with `storfs mount`.
    Umount {
        /// Mountpoint.
        mountpoint: PathBuf,
        /// Detach now even if files are open.
        #[arg(long)]
        lazy: bool,
    },
    /// Show dirty data, packs, stored and logical bytes, counters.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Flush dirty data into packs now.
    Flush,
    /// Byte-range locks: FUSE `fcntl` locks and NFS clients' (NLM) locks.
    Locks {
        /// What to do.
        #[command(subcommand)]
        cmd: LocksCommand,
    },
    /// Run garbage collection now.
    Gc,
    /// Encryption keys.
    Key {
        /// What to do.
        #[command(subcommand)]
        cmd: KeyCommand,
    },
    /// Rewrite every pack and metadata object not sealed with the current
    /// key (the first in the key file), so older keys can be retired.
    Rekey {
        /// No progress lines, only the result.
        #[arg(long)]
        quiet: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check metadata and data consistency; exits 1 on any problem.
    Fsck {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the state directory of an S3-backed daemon from its bucket
    /// (the daemon must not be running; the state directory must be empty).
    Recover {
        /// Read the newest metadata snapshot and the log after it from the bucket.
        #[arg(long, required = true)]
        from_bucket: bool,
    },
}

/// Key subcommands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a new random key (64 hex digits) for `storage.encryption_key_file`
    /// or `STORFS_ENCRYPTION_KEY`: `storfs key generate > /etc/storfs/storfs.key`.
    Generate,
}

/// Lock subcommands.
#[derive(Debug, Subcommand)]
pub enum LocksCommand {
    /// Every lock held and waited for, and the NFS clients kept for lock
    /// recovery after a restart.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Release every lock of a client: an NFS client that is gone for good
    /// (its name or address), or a FUSE mount (`mount:N`).
    Release {
        /// The client.
        #[arg(long)]
        client: String,
    },
}

/// Tiering subcommands.
#[derive(Debug, Subcommand)]
pub enum TierCommand {
    /// Run a tiering pass now.
    Run {
        /// Only say what would move.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Bytes per class per file system and volume, and what the next pass would move.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Which volume or file system a snapshot command is about.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct SourceArgs {
    /// A block volume.
    #[arg(long)]
    volume: Option<String>,
    /// A file system.
    #[arg(long)]
    fs: Option<String>,
}

/// Snapshot subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot (instant; holds every write acknowledged before it).
    Create {
        /// Of which volume or file system.
        #[command(flatten)]
        source: SourceArgs,
        /// Snapshot name.
        name: String,
    },
    /// List snapshots, with what deleting each would free.
    List {
        /// Only this volume's.
        #[arg(long, conflicts_with = "fs")]
        volume: Option<String>,
        /// Only this file system's.
        #[arg(long)]
        fs: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (its space is reclaimed in the background).
    Delete {
        /// Of which volume or file system.
        #[command(flatten)]
        source: SourceArgs,
        /// Snapshot name.
        name: String,
    },
    /// The byte ranges of a volume that changed between two snapshots, or
    /// between a snapshot and the live volume.
    Diff {
        /// The volume.
        #[arg(long)]
        volume: String,
        /// The earlier snapshot.
        from: String,
        /// The later snapshot (default: the live volume).
        to: Option<String>,
        /// Print JSON: [{"offset": bytes, "length": bytes}, ...].
        #[arg(long)]
        json: bool,
    },
    /// Write a volume snapshot (or what changed since --from) to stdout.
    Export {
        /// The volume.
        #[arg(long)]
        volume: String,
        /// Snapshot name.
        name: String,
        /// An earlier snapshot: write only the blocks changed since it.
        #[arg(long)]
        from: Option<String>,
    },
    /// Recreate a snapshot from a stream on stdin: a full stream makes a new
    /// volume; an incremental one applies to the volume holding its base.
    Import {
        /// The volume to create (or to apply an incremental stream to).
        #[arg(long)]
        volume: String,
    },
}

/// File system subcommands.
#[derive(Debug, Subcommand)]
pub enum FsCommand {
    /// Create a file system.
    Create {
        /// Name.
        name: String,
        /// Make it a clone of a snapshot: FS@SNAPSHOT (instant, writable, independent).
        #[arg(long)]
        from_snapshot: Option<String>,
    },
    /// List file systems.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a file system and everything in it.
    Delete {
        /// Name.
        name: String,
    },
}

/// Volume subcommands.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a thin-provisioned volume.
    Create {
        /// Name.
        name: String,
        /// Size, e.g. 20GiB (with --from-snapshot: grow the clone to it).
        #[arg(long, required_unless_present = "from_snapshot")]
        size: Option<Size>,
        /// Make it a clone of a snapshot: VOLUME@SNAPSHOT (instant, writable, independent).
        #[arg(long)]
        from_snapshot: Option<String>,
        /// Block size: the unit of dedup and of the block map.
        #[arg(long, default_value = "256KiB")]
        block_size: Size,
        /// Let several hosts attach it read-write at once.
        #[arg(long)]
        multi_attach: bool,
    },
    /// List volumes.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume and its data.
    Delete {
        /// Name.
        name: String,
    },
    /// Detach a volume from the host that has it attached: its NBD
    /// connections are closed (for a host that stopped answering).
    Detach {
        /// Name.
        name: String,
    },
    /// Grow a volume.
    Resize {
        /// Name.
        name: String,
        /// New size, e.g. 40GiB.
        #[arg(long)]
        size: Size,
    },
}

/// Formats a byte count with binary units.
fn print_tier_status(v: &Value) {
    let b = |x: &Value| human(x.as_u64().unwrap_or(0));
    println!(
        "{:<8} {:<20} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}",
        "KIND", "NAME", "STANDARD", "IA", "SNAP-STD", "SNAP-IA", "NEXT→IA", "NEXT→STD"
    );
    for s in v["scopes"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:<20} {:>10} {:>10} {:>12} {:>12} {:>10} {:>10}",
            s["kind"].as_str().unwrap_or(""),
            s["name"].as_str().unwrap_or(""),
            b(&s["live"]["standard"]),
            b(&s["live"]["infrequent"]),
            b(&s["snapshot_only"]["standard"]),
            b(&s["snapshot_only"]["infrequent"]),
            b(&s["next_to_ia"]),
            b(&s["next_to_standard"])
        );
    }
    println!(
        "total: {} standard, {} infrequent access; next pass: {} to IA, {} back to standard",
        b(&v["total"]["standard"]),
        b(&v["total"]["infrequent"]),
        b(&v["next_to_ia_bytes"]),
        b(&v["next_to_standard_bytes"])
    );
}

fn print_cost(v: &Value) {
    let f = |x: &Value| x.as_f64().unwrap_or(0.0);
    for (label, bill) in [("so far", &v["so_far"]), ("projected", &v["projected"])] {
        println!(
            "{} {label:<9} ${:.4}: storage ${:.4} standard ({:.3} GB-months) + ${:.4} IA ({:.3} GB-months), requests ${:.4}, IA retrieval ${:.4}, early deletion ${:.4}",
            v["month"].as_str().unwrap_or(""),
            f(&bill["usd_total"]),
            f(&bill["usd_storage_standard"]),
            f(&bill["gb_months_standard"]),
            f(&bill["usd_storage_infrequent"]),
            f(&bill["gb_months_infrequent"]),
            f(&bill["usd_requests"]),
            f(&bill["usd_ia_retrieval"]),
            f(&bill["usd_early_deletion"])
        );
    }
    println!(
        "a month of today's data: ${:.4} (all standard and uncompressed: ${:.4}; saving ${:.4})",
        f(&v["monthly_usd"]),
        f(&v["all_standard_uncompressed_monthly_usd"]),
        f(&v["saving_monthly_usd"])
    );
    for s in v["scopes"].as_array().into_iter().flatten() {
        println!(
            "  {:<7} {:<20} ${:.4}/month (all standard, uncompressed: ${:.4})",
            s["kind"].as_str().unwrap_or(""),
            s["name"].as_str().unwrap_or(""),
            f(&s["monthly_usd"]),
            f(&s["all_standard_uncompressed_monthly_usd"])
        );
    }
}

fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

impl Cli {
    fn volume(&self, cmd: &VolumeCommand) -> anyhow::Result<()> {
        match cmd {
            VolumeCommand::Create { name, size, from_snapshot, block_size, multi_attach } => {
                let block_size = u32::try_from(block_size.0).map_err(|_| anyhow!("--block-size is too large"))?;
                let req = Request::VolumeCreate {
                    name: name.clone(),
                    size: size.map_or(0, |s| s.0),
                    block_size,
                    multi_attach: *multi_attach,
                    from_snapshot: from_snapshot.clone(),
                };
                let v = self.call(&req)?;
                let size = human(v["size"].as_u64().unwrap_or(0));
                match from_snapshot {
                    Some(f) => println!("created volume {name} ({size}) from snapshot {f}"),
                    None => println!("created volume {name} ({size})"),
                }
            }
            VolumeCommand::List { json } => {
                let v = self.call(&Request::VolumeList)?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    for vol in v.as_array().into_iter().flatten() {
                        let multi = if vol["multi_attach"].as_bool() == Some(true) { "  multi-attach" } else { "" };
                        println!(
                            "{}  {}  block {}{multi}",
                            vol["name"].as_str().unwrap_or("?"),
                            human(vol["size"].as_u64().unwrap_or(0)),
                            human(vol["block_size"].as_u64().unwrap_or(0)),
                        );
                    }
                }
            }
            VolumeCommand::Delete { name } => {
                self.call(&Request::VolumeDelete { name: name.clone() })?;
                println!("deleted volume {name}");
            }
            VolumeCommand::Detach { name } => {
                let v = self.call(&Request::VolumeDetach { name: name.clone() })?;
                match v["connections"].as_u64().unwrap_or(0) {
                    0 => println!("volume {name} was not attached"),
                    n => println!("detached volume {name} ({n} connections closed)"),
                }
            }
            VolumeCommand::Resize { name, size } => {
                self.call(&Request::VolumeResize { name: name.clone(), size: size.0 })?;
                println!("volume {name} is now {}", human(size.0));
            }
        }
        Ok(())
    }

    fn snapshot(&self, cmd: &SnapshotCommand) -> anyhow::Result<()> {
        match cmd {
            SnapshotCommand::Create { source, name } => {
                let v = self.call(&Request::SnapshotCreate {
                    volume: source.volume.clone(),
                    fs: source.fs.clone(),
                    name: name.clone(),
                })?;
                println!(
                    "created snapshot {name} of {} {}",
                    v["kind"].as_str().unwrap_or("?"),
                    v["source"].as_str().unwrap_or("?")
                );
            }
            SnapshotCommand::List { volume, fs, json } => {
                let v = self.call(&Request::SnapshotList { volume: volume.clone(), fs: fs.clone() })?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    for s in v.as_array().into_iter().flatten() {
                        let state = if s["state"] == "ready" {
                            String::new()
                        } else {
                            format!("  ({})", s["state"].as_str().unwrap_or("?"))
                        };
                        println!(
                            "{}@{}  {}  created {}  exclusive {}{}{state}",
                            s["source"].as_str().unwrap_or("?"),
                            s["name"].as_str().unwrap_or("?"),
                            s["kind"].as_str().unwrap_or("?"),
                            s["created"],
                            human(s["exclusive_bytes"].as_u64().unwrap_or(0)),
                            match s["clones"].as_u64().unwrap_or(0) {
                                0 => String::new(),
                                n => format!("  {n} clone(s)"),
                            }
                        );
                    }
                }
            }
            SnapshotCommand::Delete { source, name } => {
                self.call(&Request::SnapshotDelete {
                    volume: source.volume.clone(),
                    fs: source.fs.clone(),
                    name: name.clone(),
                })?;
                println!("deleted snapshot {name}");
            }
            SnapshotCommand::Diff { volume, from, to, json } => {
                let v =
                    self.call(&Request::SnapshotDiff { volume: volume.clone(), from: from.clone(), to: to.clone() })?;
                if *json {
                    println!("{}", serde_json::to_string(&v)?);
                } else {
                    for e in v.as_array().into_iter().flatten() {
                        println!("{} {}", e["offset"], e["length"]);
                    }
                }
            }
            SnapshotCommand::Export { volume, name, from } => {
                let req = Request::SnapshotExport { volume: volume.clone(), name: name.clone(), from: from.clone() };
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::new(stdout.lock());
                let v = control::call_stream_out(&self.socket()?, &req, &mut out).map_err(|e| anyhow!(e))?;
                eprintln!(
                    "exported {} blocks ({}) in a {} stream",
                    v["blocks"],
                    human(v["bytes"].as_u64().unwrap_or(0)),
                    human(v["stream_bytes"].as_u64().unwrap_or(0))
                );
            }
            SnapshotCommand::Import { volume } => {
                let req = Request::SnapshotImport { volume: volume.clone() };
                let stdin = std::io::stdin();
                let mut input = stdin.lock();
                let v = control::call_stream_in(&self.socket()?, &req, &mut input).map_err(|e| anyhow!(e))?;
                println!(
                    "imported snapshot {} into volume {volume}: {} blocks ({}){}",
                    v["snapshot"].as_str().unwrap_or("?"),
                    v["blocks"],
                    human(v["bytes"].as_u64().unwrap_or(0)),
                    if v["incremental"] == true { ", incremental" } else { "" }
                );
            }
        }
        Ok(())
    }

    fn socket(&self) -> anyhow::Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        match &self.config {
            Some(path) => Ok(Config::load(Some(path))?.control.socket),
            None => Ok(default_socket()),
        }
    }

    fn call(&self, req: &Request) -> anyhow::Result<Value> {
        control::call(&self.socket()?, req).map_err(|e| anyhow!(e))
    }

    /// `storfs rekey`: starts the pass and follows it, one line per change
    /// of its progress unless `quiet`; exits 1 if it failed.
    fn rekey(&self, quiet: bool, json: bool) -> anyhow::Result<i32> {
        let mut v = self.call(&Request::Rekey)?;
        let mut last = String::new();
        loop {
            let line = format!(
                "rekey to key {}: {}/{} packs checked, {} under an older key or plain, {} rewritten ({}), {} deleted",
                v["key"].as_str().unwrap_or("?"),
                v["packs_checked"],
                v["packs_total"],
                v["packs_old"],
                v["packs_rewritten"],
                human(v["bytes_rewritten"].as_u64().unwrap_or(0)),
                v["packs_deleted"],
            );
            if !quiet && !json && line != last {
                eprintln!("{line}");
                last = line;
            }
            if v["running"] != Value::Bool(true) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
            v = self.call(&Request::RekeyStatus)?;
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        if let Some(e) = v["error"].as_str() {
            eprintln!("rekey failed: {e}");
            return Ok(1);
        }
        if !json {
            let retired: Vec<&str> =
                v["retired_keys"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            println!(
                "rekey done: everything is sealed with key {}; {} metadata objects; keys no longer needed: {}",
                v["key"].as_str().unwrap_or("?"),
                v["metadata_objects"],
                if retired.is_empty() { "none".to_string() } else { retired.join(", ") }
            );
        }
        Ok(0)
    }

    /// Runs the command; returns the process exit code.
    pub fn run(self) -> anyhow::Result<i32> {
        match &self.cmd {
            Command::Serve { check } => {
                let config = Config::load(self.config.as_deref())?;
                if *check {
                    let from = self.config.as_deref().map_or("built-in defaults".into(), |p| p.display().to_string());
                    println!("configuration is valid ({from})");
                    return Ok(0);
                }
                crate::daemon::serve(config)?;
            }
            Command::Init => print!("{}", Config::template()),
            Command::Key { cmd: KeyCommand::Generate } => {
                let key = storfs::chunk::seal::Key::generate();
                println!(
                    "# storfs encryption key {:08x}; keep a copy apart from the data: without it the data cannot be read",
                    key.id()
                );
                println!("{}", &*key.to_hex());
            }
            Command::Rekey { quiet, json } => return self.rekey(*quiet, *json),
            Command::Recover { .. } => {
                let config = Config::load(self.config.as_deref())?;
                crate::daemon::recover_from_bucket(&config)?;
            }
            Command::Fs { cmd } => match cmd {
                FsCommand::Create { name, from_snapshot } => {
                    self.call(&Request::FsCreate { name: name.clone(), from_snapshot: from_snapshot.clone() })?;
                    match from_snapshot {
                        Some(f) => println!("created file system {name} from snapshot {f}"),
                        None => println!("created file system {name}"),
                    }
                }
                FsCommand::List { json } => {
                    let v = self.call(&Request::FsList)?;
                    if *json {
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        for f in v.as_array().into_iter().flatten() {
                            let at: Vec<&str> =
                                f["mounted_at"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                            let at =
                                if at.is_empty() { String::new() } else { format!("  mounted at {}", at.join(", ")) };
                            println!("{}{at}", f["name"].as_str().unwrap_or("?"));
                        }
                    }
                }
                FsCommand::Delete { name } => {
                    self.call(&Request::FsDelete { name: name.clone() })?;
                    println!("deleted file system {name}");
                }
            },
            Command::Volume { cmd } => self.volume(cmd)?,
            Command::Snapshot { cmd } => self.snapshot(cmd)?,
            Command::Tier { cmd: TierCommand::Run { dry_run, json } } => {
                let v = self.call(&Request::TierRun { dry_run: *dry_run })?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    let n = |k: &str| v[k].as_u64().unwrap_or(0);
                    println!(
                        "tier{}: {} chunks ({}) to infrequent access, {} chunks ({}) back to standard; {} packs written, {} GETs ({}), {} packs deleted, {:.1}s",
                        if *dry_run { " (dry run)" } else { "" },
                        n("to_ia_chunks"),
                        human(n("to_ia_bytes")),
                        n("to_standard_chunks"),
                        human(n("to_standard_bytes")),
                        n("packs_written"),
                        n("gets"),
                        human(n("bytes_read")),
                        n("packs_deleted"),
                        v["seconds"].as_f64().unwrap_or(0.0)
                    );
                }
            }
            Command::Tier { cmd: TierCommand::Status { json } } => {
                let v = self.call(&Request::TierStatus)?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    print_tier_status(&v);
                }
            }
            Command::Cost { json } => {
                let v = self.call(&Request::Cost)?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    print_cost(&v);
                }
            }
            Command::Mount { mountpoint, fs, writeback_cache, no_writeback_cache } => {
                let abs = absolute(mountpoint)?;
                let writeback_cache = choice(*writeback_cache, *no_writeback_cache);
                self.call(&Request::Mount { mountpoint: abs.clone(), fs: fs.clone(), writeback_cache })?;
                println!("mounted {fs} at {}", abs.display());
            }
            Command::Umount { mountpoint, lazy } => {
                let abs = absolute(mountpoint)?;
                self.call(&Request::Umount { mountpoint: abs.clone(), lazy: *lazy })?;
                println!("unmounted {}", abs.display());
            }
            Command::Status { json } => {
                let v = self.call(&Request::Status)?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    print_status(&v);
                }
            }
            Command::Flush => {
                self.call(&Request::Flush)?;
            }
            Command::Locks { cmd: LocksCommand::List { json } } => {
                let v = self.call(&Request::LocksList)?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    print_locks(&v);
                }
            }
            Command::Locks { cmd: LocksCommand::Release { client } } => {
                let v = self.call(&Request::LocksRelease { client: client.clone() })?;
                println!("released {} locks of {client}", v["released"]);
            }
            Command::Gc => {
                let v = self.call(&Request::Gc)?;
                println!(
                    "gc: {} dead packs, {} orphan packs deleted, {} packs repacked into {}, {} freed",
                    v["dead_packs"],
                    v["orphan_packs"],
                    v["repacked_packs"],
                    v["new_packs"],
                    human(v["bytes_freed"].as_u64().unwrap_or(0))
                );
            }
            Command::Fsck { json } => {
                let v = self.call(&Request::Fsck)?;
                let errors: Vec<&str> =
                    v["errors"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
                if *json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!(
                        "fsck: {} inodes, {} entries, {} blocks, {} chunks, {} packs; {} verified",
                        v["inodes"],
                        v["dirents"],
                        v["blocks"],
                        v["chunks"],
                        v["packs"],
                        human(v["bytes_verified"].as_u64().unwrap_or(0))
                    );
                    for n in v["notes"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                        println!("note: {n}");
                    }
                    for e in &errors {
                        println!("error: {e}");
                    }
                    println!(
                        "{}",
                        if errors.is_empty() { "clean".to_string() } else { format!("{} problems", errors.len()) }
                    );
                }
                if !errors.is_empty() {
                    return Ok(1);
                }
            }
        }
        Ok(0)
    }
}

/// The mount(8) helper: `storfs storfs:FS MOUNTPOINT -o OPTIONS`. A remount
/// (e.g. `mount -o remount,ro /mnt/efs`) changes the mount flags directly; a
/// new mount (an fstab entry of type fuse.storfs) asks the daemon to mount.
pub fn mount_helper(source: &str, mountpoint: &Path, options: &str) -> anyhow::Result<()> {
    use nix::mount::MsFlags;
    let opts: Vec<&str> = options.split(',').collect();
    if opts.contains(&"remount") {
        let mut flags = MsFlags::MS_REMOUNT;
        for (name, flag) in [
            ("ro", MsFlags::MS_RDONLY),
            ("nosuid", MsFlags::MS_NOSUID),
            ("nodev", MsFlags::MS_NODEV),
            ("noexec", MsFlags::MS_NOEXEC),
            ("noatime", MsFlags::MS_NOATIME),
            ("nodiratime", MsFlags::MS_NODIRATIME),
        ] {
            if opts.contains(&name) {
                flags |= flag;
            }
        }
        nix::mount::mount(None::<&str>, mountpoint, None::<&str>, flags, None::<&str>)
            .with_context(|| format!("cannot remount {}", mountpoint.display()))?;
        return Ok(());
    }
    let fs = source.trim_start_matches("storfs:");
    let socket = std::env::var_os("STORFS_SOCKET").map_or_else(default_socket, PathBuf::from);
    let writeback_cache = choice(opts.contains(&"writeback_cache"), opts.contains(&"no_writeback_cache"));
    let req = Request::Mount { mountpoint: absolute(mountpoint)?, fs: fs.to_string(), writeback_cache };
    control::call(&socket, &req).map_err(|e| anyhow!(e))?;
    Ok(())
}

/// A yes/no flag pair: `Some` when one was given, `None` for the default.
fn choice(yes: bool, no: bool) -> Option<bool> {
    match (yes, no) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir().context("cannot read the current directory")?.join(p))
}

fn print_status(v: &Value) {
    let b = |x: &Value| human(x.as_u64().unwrap_or(0));
    let d = &v["dirty"];
    let s = &v["storage"];
    let a = &v["activity"];
    println!(
        "storfs {}, up {}s, data_dir {}",
        v["version"].as_str().unwrap_or("?"),
        v["uptime_s"],
        v["data_dir"].as_str().unwrap_or("?")
    );
    println!("backend   {}", v["backend"].as_str().unwrap_or("?"));
    let io = &v["backend_io"];
    let r = &io["requests"];
    let q = &io["upload_queue"];
    println!(
        "requests  {} put ({} parts), {} get, {} head, {} list, {} delete; {} up, {} down; {} retries, {} failures",
        r["put"],
        r["part"],
        r["get"],
        r["head"],
        r["list"],
        r["delete"],
        b(&io["bytes_up"]),
        b(&io["bytes_down"]),
        io["retries"],
        io["failures"]
    );
    println!(
        "uploads   {} files dirty; {} metadata shipments queued (oldest {:.1}s), last shipped #{:x}",
        q["dirty_files"],
        q["metadata_shipments"],
        q["oldest_metadata_age_s"].as_f64().unwrap_or(0.0),
        q["metadata_shipped_seq"].as_u64().unwrap_or(0)
    );
    println!(
        "dirty     {} unflushed, oldest {:.1}s; WAL {} in {} segments (limit {})",
        b(&d["dirty_bytes"]),
        d["oldest_dirty_age_s"].as_f64().unwrap_or(0.0),
        b(&d["wal_bytes"]),
        d["wal_segments"],
        b(&d["max_dirty"])
    );
    println!(
        "stored    {} in {} packs ({}: {} standard, {} infrequent access); logical {}, after dedup {}, after compression {}; dedup ratio {:.2}, compression ratio {:.2}; {} inodes",
        b(&s["stored_bytes"]),
        s["packs"],
        b(&s["pack_bytes"]),
        b(&s["standard_bytes"]),
        b(&s["infrequent_bytes"]),
        b(&s["logical_bytes"]),
        b(&s["unique_bytes"]),
        b(&s["stored_bytes"]),
        s["dedup_ratio"].as_f64().unwrap_or(1.0),
        s["compression_ratio"].as_f64().unwrap_or(1.0),
        s["inodes"]
    );
    if let Some(key) = s["encryption_key"].as_str() {
        println!("sealed    new data with {} under key {key}", s["encryption"].as_str().unwrap_or("?"));
    }
    println!(
        "activity  {} packs / {} uploaded ({} retries), {} chunks, {} dedup hits, {} flushes, {} checkpoints, {} writer waits",
        a["packs_written"],
        b(&a["bytes_uploaded"]),
        a["upload_retries"],
        a["chunks_written"],
        a["dedup_hits"],
        a["flush_cycles"],
        a["checkpoints"],
        a["write_waits"]
    );
    println!(
        "reads     {} from memory, {} from disk cache, {} from backend ({}, {} of them read ahead); \
         NBD: {} answered in place, {} handed to the disk",
        a["cache_mem_hits"],
        a["cache_disk_hits"],
        a["backend_reads"],
        b(&a["backend_read_bytes"]),
        a["readahead_fetches"],
        a["reads_in_place"],
        a["reads_handed_off"]
    );
    let sn = &v["snapshots"];
    println!(
        "snapshots {} ({} of volumes), {} held only by them; {} being deleted, {} reclaim jobs",
        sn["count"],
        sn["volume_snapshots"],
        b(&sn["exclusive_bytes"]),
        sn["deleting"],
        sn["reclaim_jobs"]
    );
    if let Some(addr) = v["nfs_listen"].as_str() {
        match v["nfs_portmapper"].as_str() {
            Some(by @ ("own" | "rpcbind")) => {
                println!("nfs       {addr} (mount -t nfs -o vers=3,proto=tcp HOST:/<fs> DIR; port 111: {by})")
            }
            _ => println!(
                "nfs       {addr} (no portmapper on port 111: mount -t nfs -o \
                 vers=3,proto=tcp,nolock,port=P,mountport=P,mountproto=tcp HOST:/<fs> DIR)"
            ),
        }
    }
    for m in v["mounts"].as_array().into_iter().flatten() {
        println!("mount     {} ({})", m[0].as_str().unwrap_or("?"), m[1].as_str().unwrap_or("?"));
    }
}

fn print_locks(v: &Value) {
    if v["grace"].as_bool() == Some(true) {
        println!("grace period: only locks held before the restart are granted");
    }
    let locks = v["locks"].as_array().cloned().unwrap_or_default();
    if locks.is_empty() {
        println!("no locks");
    }
    for l in &locks {
        let c = &l["client"];
        let client = match c["kind"].as_str() {
            Some("mount") => format!("mount:{}", c["id"]),
            _ => format!("{} ({})", c["name"].as_str().unwrap_or("?"), c["addr"].as_str().unwrap_or("?")),
        };
        let len = l["len"].as_u64().map_or("EOF".to_string(), |n| n.to_string());
        println!(
            "inode {:>10}  {:9}  {:8} {}+{}  pid {}  {}",
            l["ino"],
            if l["waiting"].as_bool() == Some(true) { "waiting" } else { "held" },
            if l["exclusive"].as_bool() == Some(true) { "exclusive" } else { "shared" },
            l["start"],
            len,
            l["pid"],
            client
        );
    }
    for c in v["nfs_clients"].as_array().into_iter().flatten() {
        println!(
            "nfs client {} ({}) is told to reclaim its locks after a restart",
            c["name"].as_str().unwrap_or("?"),
            c["addr"].as_str().unwrap_or("?")
        );
    }
}
