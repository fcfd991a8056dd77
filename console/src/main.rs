//! `nonstop-console`: the operator's view of a nonstop pair.
//!
//! # Layout
//! - [`cli`]: subcommands (`status`, `sessions`, `switchover`, `events`) with `--json` output.
//! - [`client`]: one control connection to an agent, optionally from inside a lab's
//!   network namespace.
//! - [`pair`]: resolving the two agents from `--agent` or `--lab`, and polling both.

mod cli;
mod client;
mod pair;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nonstop-console: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
