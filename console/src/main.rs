//! `nonstop-console`: the operator's view of a nonstop pair.
//!
//! # Layout
//! - [`cli`]: subcommands (`status`, `sessions`, `switchover`, `events`, `inject`,
//!   `heal`, `check`) with `--json` output; no subcommand (or `tui`) opens the TUI.
//! - [`client`]: one control connection to an agent, optionally from inside a lab's
//!   network namespace.
//! - [`drill`]: switchover drills from TOML files: parse and check, run on a lab,
//!   report (Markdown, JSON, JUnit XML).
//! - [`pair`]: resolving the two agents from `--agent` or `--lab`, and polling both.
//! - [`tui`]: the operator TUI (ratatui): node panels, session table, lag, events,
//!   switchover and fault injection behind confirmations.

mod cli;
mod client;
mod drill;
mod pair;
mod tui;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // `scripts/package` asks for the man pages with NONSTOP_GENERATE_MAN=DIR.
    if let Some(code) =
        nonstop_shared::man::generate_if_asked(<cli::Cli as clap::CommandFactory>::command(), "1")
    {
        return code;
    }
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nonstop-console: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
