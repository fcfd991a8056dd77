//! The shipped drills (scripts/drills/) run by `nonstop-console drill` on real labs,
//! each built by the drill itself with the `t` name prefix (so `scripts/test`'s sweep
//! finds leftovers) and removed at its end. Also: a drill whose expectation is wrong
//! must fail with a clear message and a non-zero exit, and a malformed drill file
//! must be rejected, with line and field, before anything runs.
//!
//! Needs root (network namespaces), like every lab test; CI runs as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn require_root() -> bool {
    nonstop_lab::require_root("drill tests")
}

/// A report directory of its own for one test.
fn report_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nonstop-drill-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Runs `nonstop-console drill FILE ARGS…` with a fresh lab named `t…`.
fn drill(file: &Path, reports: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nonstop-console"))
        .arg("drill")
        .arg(file)
        .arg("--lab-prefix")
        .arg("t")
        .arg("--report-dir")
        .arg(reports)
        .args(args)
        .output()
        .expect("run nonstop-console drill")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a shipped drill and checks that it passed and wrote all three reports;
/// returns what it printed.
fn shipped(name: &str, args: &[&str]) -> String {
    if !require_root() {
        return String::new();
    }
    let file = repo().join("scripts/drills").join(format!("{name}.toml"));
    let reports = report_dir(name);
    let out = drill(&file, &reports, args);
    let all = text(&out);
    assert!(out.status.success(), "drill {name} failed:\n{all}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reports.join(format!("{name}.json"))).expect("json report"),
    )
    .expect("json report parses");
    assert_eq!(json["passed"], true, "{all}");
    let groups = json["groups"].as_array().expect("groups");
    assert!(!groups.is_empty(), "{all}");
    for g in groups {
        assert_eq!(g["broken"], 0, "{all}");
        assert_eq!(g["lost_bytes"], 0, "{all}");
        assert!(g["bytes_verified"].as_u64().unwrap_or(0) > 0, "{all}");
    }
    let junit = std::fs::read_to_string(reports.join(format!("{name}.junit.xml"))).expect("junit");
    assert!(junit.contains("failures=\"0\" errors=\"0\""), "{junit}");
    assert!(reports.join(format!("{name}.md")).exists());
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    let _ = std::fs::remove_dir_all(&reports);
    all
}

/// Runs a shipped drill once with both agents in hot mode (issue 14: every shipped
/// drill also passes with a hot replica).
fn shipped_hot(name: &str) {
    let all = shipped(name, &["--replica", "hot", "--rounds", "1"]);
    if require_root() {
        assert!(all.contains("hot replica"), "not run in hot mode:\n{all}");
    }
}

#[test]
fn every_failover_drill_passes_in_hot_mode() {
    for name in [
        "switchover",
        "master-crash",
        "agent-crash",
        "app-crash",
        "sync-partition",
        "flap",
    ] {
        shipped_hot(name);
    }
}

#[test]
fn switchover_drill_passes() {
    shipped("switchover", &[]);
}

#[test]
fn master_crash_drill_passes() {
    shipped("master-crash", &[]);
}

#[test]
fn agent_crash_drill_passes() {
    shipped("agent-crash", &[]);
}

#[test]
fn app_crash_drill_passes() {
    shipped("app-crash", &[]);
}

#[test]
fn sync_partition_drill_passes() {
    shipped("sync-partition", &[]);
}

#[test]
fn flap_drill_passes() {
    shipped("flap", &[]);
}

#[test]
fn soak_drill_passes_a_few_rounds() {
    shipped("soak", &["--rounds", "2"]);
}

#[test]
fn a_wrong_expectation_fails_clearly() {
    if !require_root() {
        return;
    }
    // A planned switchover certainly moves the master: expecting it unchanged is wrong.
    let reports = report_dir("wrong");
    let file = reports.join("wrong.toml");
    std::fs::create_dir_all(&reports).expect("dir");
    std::fs::write(
        &file,
        r#"name = "wrong expectation"
[[setup]]
do = "open"
group = "echo"
workload = "echo"
sessions = 8
[[step]]
do = "switchover"
quiesce = true
[[step]]
do = "expect"
master = "unchanged"
within_ms = 1000
broken = 0
"#,
    )
    .expect("write drill");
    let out = drill(&file, &reports, &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FAIL round 1 step 2")
            && stderr.contains("expected master as the single master within 1000 ms, but"),
        "{all}"
    );
    assert!(stderr.contains("FAILED wrong expectation"), "{all}");
    let junit = std::fs::read_to_string(reports.join("wrong.junit.xml")).expect("junit");
    assert!(
        junit.contains("<failure message=\"expected master as the single master"),
        "{junit}"
    );
    let _ = std::fs::remove_dir_all(&reports);
}

#[test]
fn a_malformed_drill_is_rejected_before_anything_runs() {
    // No root needed: nothing may run. A lab would show up as nonstop-t* namespaces.
    let reports = report_dir("bad");
    std::fs::create_dir_all(&reports).expect("dir");
    let file = reports.join("bad.toml");
    std::fs::write(
        &file,
        "name = \"bad\"\n[[setup]]\ndo = \"open\"\ngroup = \"g\"\nworkload = \"echo\"\nsessions = -3\n[[step]]\ndo = \"expect\"\nbroken = 0\ngroup = \"nope\"\n",
    )
    .expect("write drill");
    let started = std::time::Instant::now();
    let out = drill(&file, &reports, &[]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = file.display().to_string();
    assert!(
        stderr.contains("rejected (2 errors), nothing was run"),
        "{all}"
    );
    assert!(
        stderr.contains(&format!(
            "{path}:6:12: setup 1 (do = \"open\"), field sessions: must be between 1 and 4096, got -3"
        )),
        "{all}"
    );
    assert!(
        stderr.contains(&format!(
            "{path}:10:9: step 1 (do = \"expect\"), field group: no session group \"nope\""
        )),
        "{all}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{all}"
    );
    assert!(!reports.join("bad.json").exists(), "no report: nothing ran");
    // A syntax error too.
    std::fs::write(&file, "name = \"bad\"\n[[step]\n").expect("write");
    let out = drill(&file, &reports, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("{path}:2:")),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir_all(&reports);
}

#[test]
fn echo_soak_drill_passes_a_few_rounds() {
    shipped("soak-echo", &["--rounds", "2"]);
}
