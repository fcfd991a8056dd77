//! Running the host tools the injector drives (`nft`, `iptables`, `ip`), with errors
//! that carry the command line and its stderr.

use std::io::Write;
use std::process::{Command, Stdio};

/// `program args…` as a human would type it (for error texts).
pub fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args…`, feeding `stdin` if given; returns its stdout, or an error
/// naming the command, its exit status and its stderr.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let line = command_line(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{line}`: {e}"))?;
    if let Some(text) = stdin {
        let mut pipe = child
            .stdin
            .take()
            .ok_or_else(|| format!("cannot write to `{line}`: no stdin"))?;
        // A write error shows up again as the command's failure below.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for `{line}`: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let input = stdin
            .map(|s| format!("; input was:\n{}", s.trim_end()))
            .unwrap_or_default();
        return Err(format!(
            "`{line}` failed ({}): {}{input}",
            out.status,
            stderr.trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the command; `true` when it exits 0 (for existence checks like
/// `iptables -C`), `false` otherwise, an error only when it cannot be started.
pub fn succeeds(program: &str, args: &[&str]) -> Result<bool, String> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .map_err(|e| format!("cannot run `{}`: {e}", command_line(program, args)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_the_command_and_its_stderr() {
        let err = run("sh", &["-c", "echo oops >&2; exit 3"], None).expect_err("fails");
        assert!(err.contains("`sh -c echo oops >&2; exit 3`"), "{err}");
        assert!(err.contains("oops"), "{err}");
    }

    #[test]
    fn stdin_is_fed_and_stdout_returned() {
        assert_eq!(run("cat", &[], Some("hello")).expect("cat"), "hello");
        assert!(succeeds("true", &[]).expect("true"));
        assert!(!succeeds("false", &[]).expect("false"));
        assert!(run("/nonexistent/tool", &[], None)
            .expect_err("missing")
            .contains("cannot run"));
    }
}
