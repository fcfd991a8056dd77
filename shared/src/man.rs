//! Man pages generated from a binary's clap definition (feature `man`).
//!
//! `scripts/package` runs each binary with `NONSTOP_GENERATE_MAN=DIR`; the binary
//! writes its page and one per subcommand (`nonstop-console-status.1`, ...) into DIR
//! with `clap_mangen` and exits, so the pages always match the command line.

use std::path::Path;
use std::process::ExitCode;

/// The variable that asks a binary for its man pages.
pub const GENERATE_ENV: &str = "NONSTOP_GENERATE_MAN";

/// Writes the pages of `command` (section `section`) and its subcommands into `dir`.
pub fn generate(command: clap::Command, section: &'static str, dir: &Path) -> std::io::Result<()> {
    fn walk(command: clap::Command, section: &'static str, dir: &Path) -> std::io::Result<()> {
        for sub in command
            .get_subcommands()
            .filter(|s| !s.is_hide_set())
            .cloned()
        {
            walk(sub, section, dir)?;
        }
        clap_mangen::Man::new(command)
            .section(section)
            .generate_to(dir)
            .map(|_| ())
    }
    std::fs::create_dir_all(dir)?;
    let mut command = command.disable_help_subcommand(true);
    command.build();
    walk(command, section, dir)
}

/// If [`GENERATE_ENV`] is set, writes the pages there and returns the exit code the
/// binary should end with; otherwise `None` and the binary runs normally.
pub fn generate_if_asked(command: clap::Command, section: &'static str) -> Option<ExitCode> {
    let dir = std::env::var_os(GENERATE_ENV)?;
    Some(match generate(command, section, Path::new(&dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "cannot write man pages to {}: {e}",
                Path::new(&dir).display()
            );
            ExitCode::FAILURE
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_for_the_command_and_each_subcommand() {
        let command = clap::Command::new("tool")
            .about("does things")
            .arg(clap::Arg::new("config").long("config").help("the file"))
            .subcommand(clap::Command::new("status").about("shows status"));
        let dir = std::env::temp_dir().join(format!("nonstop-man-{}", std::process::id()));
        generate(command, "8", &dir).expect("generate");
        let page = std::fs::read_to_string(dir.join("tool.8")).expect("tool.8");
        assert!(page.contains(".TH tool 8"), "{page}");
        assert!(page.contains("\\-\\-config"), "{page}");
        let sub = std::fs::read_to_string(dir.join("tool-status.8")).expect("sub page");
        assert!(sub.contains("shows status"), "{sub}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
