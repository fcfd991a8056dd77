//! Helpers for tests: [`LabGuard`] (a lab that is torn down even when the test
//! panics), [`unique_name`] and [`require_root`].

use crate::lab::{Lab, LabSpec};
use anyhow::Result;
use std::ops::Deref;
use std::sync::atomic::{AtomicU32, Ordering};

/// A lab brought up on creation and removed (`Lab::down`) when dropped, including
/// during a panic's unwinding.
#[derive(Debug)]
pub struct LabGuard(pub Lab);

impl LabGuard {
    /// Brings `spec` up and guards it.
    pub fn up(spec: &LabSpec) -> Result<LabGuard> {
        // If `up` fails half-way, remove what it built before reporting.
        match Lab::up(spec) {
            Ok(lab) => Ok(LabGuard(lab)),
            Err(e) => {
                let _ = Lab::down(&spec.name);
                Err(e)
            }
        }
    }

    /// Brings up a default lab (one peer, 100 ms heartbeats) named `name`.
    pub fn new(name: &str) -> Result<LabGuard> {
        LabGuard::up(&LabSpec::new(name))
    }
}

impl Deref for LabGuard {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        &self.0
    }
}

/// Set to a folder, `NONSTOP_LAB_KEEP_LOGS` makes a guarded lab copy its logs there
/// (`<folder>/<lab>/`) before it is torn down — to read after a failed test.
pub const KEEP_LOGS_ENV: &str = "NONSTOP_LAB_KEEP_LOGS";

fn keep_logs(lab: &Lab) {
    let Some(to) = std::env::var_os(KEEP_LOGS_ENV).filter(|v| !v.is_empty()) else {
        return;
    };
    let to = std::path::Path::new(&to).join(&lab.name);
    let Ok(entries) = std::fs::read_dir(lab.dir()) else {
        return;
    };
    if std::fs::create_dir_all(&to).is_err() {
        return;
    }
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            if let Some(name) = path.file_name() {
                let _ = std::fs::copy(&path, to.join(name));
            }
        }
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        keep_logs(&self.0);
        if let Err(e) = Lab::down(&self.0.name) {
            eprintln!(
                "nonstop-lab: tearing down lab `{}` failed: {e:#}",
                self.0.name
            );
        }
    }
}

fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A lab name unique to this process and call: up to 5 characters of `prefix`
/// (`[a-z0-9]`, others dropped), then the pid (5 base-36 digits) and a per-process
/// counter (2 digits). Sweep leftovers with `nonstop-lab down --all-with-prefix <prefix>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let prefix: String = prefix
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .take(5)
        .collect();
    format!(
        "{prefix}{}{}",
        base36(u64::from(std::process::id()), 5),
        base36(u64::from(n), 2)
    )
}

/// For tests that need root: true when running as root. Otherwise returns false (the
/// test should return early, skipped) if `NONSTOP_SKIP_ROOT_TESTS=1`, and panics with
/// an explanation if not.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("NONSTOP_SKIP_ROOT_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("skipping {test}: it needs root (network namespaces)");
        return false;
    }
    panic!(
        "{test} needs root to build network namespaces; run it as root, \
         or set NONSTOP_SKIP_ROOT_TESTS=1 to skip it"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_valid_and_distinct() {
        let a = unique_name("it");
        let b = unique_name("it");
        assert_ne!(a, b);
        for name in [a, b, unique_name("Very-Long-Prefix"), unique_name("")] {
            crate::naming::validate_name(&name).expect(&name);
        }
        assert!(unique_name("e2e").starts_with("e2e"));
    }

    #[test]
    fn base36_is_fixed_width() {
        assert_eq!(base36(0, 2), "00");
        assert_eq!(base36(35, 2), "0z");
        assert_eq!(base36(36, 2), "10");
        assert_eq!(base36(2 * 1296 + 3 * 36 + 4, 3), "234");
        assert_eq!(base36(4_194_304, 5).len(), 5);
    }
}
