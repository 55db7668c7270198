//! The `storfs` binary: daemon and command-line client.

mod cli;
mod config;
mod daemon;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    if matches!(cli.cmd, cli::Command::Serve) {
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
