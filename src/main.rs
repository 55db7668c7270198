//! The `storfs` binary: daemon and command-line client.

mod cli;
mod config;
mod daemon;

use clap::Parser;

fn main() {
    // Crash points armed from FAILPOINTS (test builds only).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    // mount(8) → mount.fuse runs `storfs SOURCE MOUNTPOINT -o OPTIONS` for
    // file systems of type fuse.storfs (remounts, fstab entries).
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 5 && args[1].starts_with("storfs:") && args[3] == "-o" {
        if let Err(e) = cli::mount_helper(&args[1], std::path::Path::new(&args[2]), &args[4]) {
            eprintln!("storfs: {e:#}");
            std::process::exit(1);
        }
        return;
    }
    let cli = cli::Cli::parse();
    if matches!(cli.cmd, cli::Command::Serve { check: false }) {
        let filter = tracing_subscriber::EnvFilter::try_from_env("STORFS_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=warn,fuser::mnt=error"));
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    match cli.run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // One line: the error and its causes, no backtrace.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("storfs: {}", chain.join(": "));
            std::process::exit(1);
        }
    }
}
