//! Drills: failovers rehearsed from a TOML script (`nonstop-console drill FILE`).
//!
//! # Layout
//! - [`spec`]: the drill file format; parsing and validation with line, column and
//!   field for every error, before anything runs (pure).
//! - [`workload`]: session groups from the lab's peer namespace that send numbered
//!   data and check every byte continuously (echo, chat, bulk, slow, stateful).
//! - [`slow`]: the slow readers' stream and writer thread (issue 13).
//! - [`runner`]: the driver — builds or opens the lab, carries out the steps, measures.
//! - [`report`]: the report as data, rendered as Markdown, JSON and JUnit XML (pure).
//! - [`progress`]: live progress on stderr.

pub mod progress;
pub mod report;
pub mod runner;
pub mod slow;
pub mod spec;
pub mod workload;

use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit status when the drill file is rejected.
pub const EXIT_BAD_FILE: u8 = 2;

/// Arguments of `drill`.
#[derive(Debug, Args)]
pub struct DrillArgs {
    /// The drill file (TOML; see scripts/drills/).
    pub file: PathBuf,
    /// Run this many rounds instead of the file's `rounds`.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rounds: Option<u32>,
    /// Where to write `<name>.md`, `<name>.json` and `<name>.junit.xml`.
    #[arg(long, default_value = "drill-reports")]
    pub report_dir: PathBuf,
    /// Name prefix of the lab the drill builds when no --lab is given.
    #[arg(long, default_value = "drill")]
    pub lab_prefix: String,
    /// Run the drill's own lab with this replica instead of the file's `[lab] replica`
    /// (rehearse every shipped drill in hot mode: `--replica hot`).
    #[arg(long, value_enum)]
    pub replica: Option<spec::Replica>,
    /// Only check the file and print the plan; run nothing.
    #[arg(long)]
    pub check: bool,
}

/// Runs `drill FILE`: rejects a bad file (exit 2) before anything runs, otherwise
/// runs the drill and writes the reports; exit 0 only if every expectation held.
pub fn run(args: &DrillArgs, lab: Option<&str>) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read drill file {}", args.file.display()))?;
    let file = args.file.display().to_string();
    let mut drill = match spec::parse(&text) {
        Ok(drill) => drill,
        Err(errors) => {
            eprintln!(
                "{file}: rejected ({} error{}), nothing was run:",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            for e in &errors {
                eprintln!("{file}:{}:{}: {}: {}", e.line, e.column, e.field, e.message);
            }
            return Ok(ExitCode::from(EXIT_BAD_FILE));
        }
    };
    if let Some(rounds) = args.rounds {
        drill.rounds = rounds;
    }
    if let Some(replica) = args.replica {
        if lab.is_some() {
            anyhow::bail!(
                "--replica sets up the drill's own lab; it cannot change the agents of --lab"
            );
        }
        drill.lab.replica = replica;
    }
    if args.check {
        use std::io::Write as _;
        let mut plan = format!("{file}: ok — {} ({} rounds)\n", drill.name, drill.rounds);
        for (i, s) in drill.setup.iter().enumerate() {
            plan.push_str(&format!("  setup {}: {}\n", i + 1, s.describe()));
        }
        for (i, s) in drill.steps.iter().enumerate() {
            plan.push_str(&format!("  step {}: {}\n", i + 1, s.describe()));
        }
        // A closed stdout (`| head`) is not an error worth a panic.
        let _ = std::io::stdout().write_all(plan.as_bytes());
        return Ok(ExitCode::SUCCESS);
    }
    nonstop_lab::naming::validate_name(&format!("{}0000000", args.lab_prefix))
        .context("--lab-prefix must be at most 5 characters of [a-z0-9]")?;
    let target = match lab {
        Some(name) => runner::Target::Existing(name.to_owned()),
        None => runner::Target::Fresh {
            prefix: args.lab_prefix.clone(),
        },
    };
    let report = runner::run(&drill, &file, target);
    let stem = args
        .file
        .file_stem()
        .map_or_else(|| "drill".to_owned(), |s| s.to_string_lossy().into_owned());
    let written = write_reports(&report, &args.report_dir, &stem)?;
    {
        use std::io::Write as _;
        let _ = std::io::stdout().write_all(report.to_markdown().as_bytes());
    }
    eprintln!("reports: {}", written.join(", "));
    eprintln!("{}", report.summary());
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn write_reports(report: &report::Report, dir: &Path, stem: &str) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create report directory {}", dir.display()))?;
    let mut written = Vec::new();
    for (ext, body) in [
        ("md", report.to_markdown()),
        ("json", report.to_json()),
        ("junit.xml", report.to_junit()),
    ] {
        let path = dir.join(format!("{stem}.{ext}"));
        std::fs::write(&path, body).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path.display().to_string());
    }
    Ok(written)
}
