//! The drill report: plain data filled in by the runner, rendered as Markdown for
//! people, JSON for machines and JUnit XML for CI. Pure (no clock, no I/O).

use serde::Serialize;
use std::fmt::Write as _;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done, and every expectation held.
    Passed,
    /// An expectation did not hold.
    Failed,
    /// The step could not be carried out (lab or agent error, interrupted).
    Error,
    /// Not run because an earlier step errored or the drill was interrupted.
    Skipped,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "FAILED",
            Outcome::Error => "ERROR",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One step as it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepRecord {
    /// 0 for setup, 1.. for the rounds.
    pub round: u32,
    /// 1-based position in its list.
    pub index: usize,
    /// The `do` keyword.
    pub kind: String,
    /// The step in words.
    pub description: String,
    /// How long it took, milliseconds.
    pub duration_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// What was measured or done (`switched over in 412 ms`).
    pub detail: String,
    /// Each expectation that failed, or the error.
    pub failures: Vec<String>,
}

impl StepRecord {
    /// `round 3 step 2` or `setup step 1`.
    pub fn place(&self) -> String {
        if self.round == 0 {
            format!("setup step {}", self.index)
        } else {
            format!("round {} step {}", self.round, self.index)
        }
    }
}

/// A session group's totals at the end of the drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSummary {
    /// Group name.
    pub name: String,
    /// Workload.
    pub workload: String,
    /// Sessions opened.
    pub sessions: usize,
    /// Checked rounds completed.
    pub rounds: usize,
    /// Bytes written by all sessions.
    pub bytes_sent: u64,
    /// Bytes read back and found correct.
    pub bytes_verified: u64,
    /// Sessions that broke.
    pub broken: u64,
    /// Bytes lost or corrupted.
    pub lost_bytes: u64,
    /// Replies the protocol forbids (stateful groups).
    pub wrong_replies: u64,
    /// Clean resets after which a session connected again (slow groups).
    pub resets: u64,
    /// Longest time between two completed rounds, milliseconds.
    pub longest_gap_ms: u64,
    /// The first few reasons sessions broke.
    pub broken_reasons: Vec<String>,
    /// The first few wrong replies (what came, what was due).
    pub wrong_examples: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Drill name.
    pub drill: String,
    /// Its description.
    pub description: String,
    /// The drill file.
    pub file: String,
    /// The lab it ran on.
    pub lab: String,
    /// Whether the drill built (and removed) that lab itself.
    pub lab_created: bool,
    /// Rounds asked for.
    pub rounds: u32,
    /// Unix time of the start, milliseconds.
    pub started_unix_ms: u64,
    /// Wall-clock duration, milliseconds.
    pub duration_ms: u64,
    /// Every step that ran (or was skipped).
    pub steps: Vec<StepRecord>,
    /// Session groups.
    pub groups: Vec<GroupSummary>,
    /// A drill-level error (lab could not be built, interrupted), if any.
    pub error: Option<String>,
}

impl Report {
    /// Whether every step passed and there was no drill-level error.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.steps.iter().all(|s| s.outcome == Outcome::Passed)
    }

    /// Steps whose expectations failed.
    pub fn failed(&self) -> usize {
        self.count(Outcome::Failed)
    }

    /// Steps that could not be carried out.
    pub fn errors(&self) -> usize {
        self.count(Outcome::Error)
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.steps.iter().filter(|s| s.outcome == outcome).count()
    }

    /// One line: `PASSED planned switchover: 8 steps in 12.3 s, 64 sessions, 0 broken, 0 lost bytes`.
    pub fn summary(&self) -> String {
        let sessions: usize = self.groups.iter().map(|g| g.sessions).sum();
        let broken: u64 = self.groups.iter().map(|g| g.broken).sum();
        let lost: u64 = self.groups.iter().map(|g| g.lost_bytes).sum();
        let wrong: u64 = self.groups.iter().map(|g| g.wrong_replies).sum();
        let resets: u64 = self.groups.iter().map(|g| g.resets).sum();
        let mut extra = String::new();
        if wrong > 0 {
            extra.push_str(&format!(", {wrong} wrong replies"));
        }
        if resets > 0 {
            extra.push_str(&format!(", {resets} clean resets"));
        }
        format!(
            "{} {}: {} steps in {}, {sessions} sessions, {broken} broken, {lost} lost bytes{extra}{}",
            if self.passed() { "PASSED" } else { "FAILED" },
            self.drill,
            self.steps
                .iter()
                .filter(|s| s.outcome != Outcome::Skipped)
                .count(),
            seconds(self.duration_ms),
            match (self.failed(), self.errors()) {
                (0, 0) => String::new(),
                (f, e) => format!(" ({f} failed, {e} errors)"),
            }
        )
    }

    /// The report as pretty JSON (with `passed` at the top).
    pub fn to_json(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("passed".into(), self.passed().into());
        }
        serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
    }

    /// The report for people.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed() { "passed" } else { "FAILED" };
        let _ = writeln!(out, "# Drill: {} — {verdict}\n", self.drill);
        if !self.description.is_empty() {
            let _ = writeln!(out, "{}\n", self.description.trim());
        }
        let _ = writeln!(
            out,
            "- file: `{}`\n- lab: `{}`{}\n- rounds: {}\n- duration: {}\n",
            self.file,
            self.lab,
            if self.lab_created {
                " (built for this drill, removed after)"
            } else {
                " (existing)"
            },
            self.rounds,
            seconds(self.duration_ms)
        );
        if let Some(e) = &self.error {
            let _ = writeln!(out, "**Drill error:** {}\n", cell(e));
        }
        let _ = writeln!(out, "## Steps\n");
        let _ = writeln!(out, "| where | step | result | time | detail |");
        let _ = writeln!(out, "|---|---|---|---:|---|");
        for s in &self.steps {
            let mut detail = s.detail.clone();
            for f in &s.failures {
                if !detail.is_empty() {
                    detail.push_str("; ");
                }
                detail.push_str(f);
            }
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                s.place(),
                cell(&s.description),
                s.outcome.word(),
                seconds(s.duration_ms),
                cell(&detail)
            );
        }
        if !self.groups.is_empty() {
            let _ = writeln!(out, "\n## Sessions\n");
            let _ = writeln!(
                out,
                "| group | workload | sessions | rounds | sent | verified | broken | lost bytes | wrong replies | resets | longest gap |"
            );
            let _ = writeln!(
                out,
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for g in &self.groups {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ms |",
                    cell(&g.name),
                    g.workload,
                    g.sessions,
                    g.rounds,
                    g.bytes_sent,
                    g.bytes_verified,
                    g.broken,
                    g.lost_bytes,
                    g.wrong_replies,
                    g.resets,
                    g.longest_gap_ms,
                );
            }
            for g in &self.groups {
                for r in &g.broken_reasons {
                    let _ = writeln!(out, "\n- {}: {}", cell(&g.name), cell(r));
                }
                for w in &g.wrong_examples {
                    let _ = writeln!(out, "\n- {}: wrong reply: {}", cell(&g.name), cell(w));
                }
            }
        }
        let failures: Vec<&StepRecord> = self
            .steps
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Failed | Outcome::Error))
            .collect();
        if !failures.is_empty() {
            let _ = writeln!(out, "\n## Failures\n");
            for s in failures {
                for f in &s.failures {
                    let _ = writeln!(out, "- {} ({}): {}", s.place(), s.description, f);
                }
            }
        }
        let _ = writeln!(out, "\n{}", self.summary());
        out
    }

    /// The report as JUnit XML: one test suite, one test case per step.
    pub fn to_junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let tests = self.steps.len() + usize::from(self.error.is_some());
        let errors = self.errors() + usize::from(self.error.is_some());
        let skipped = self.count(Outcome::Skipped);
        let time = seconds_plain(self.duration_ms);
        let _ = writeln!(
            out,
            "<testsuites name=\"nonstop drills\" tests=\"{tests}\" failures=\"{}\" errors=\"{errors}\" time=\"{time}\">",
            self.failed()
        );
        let _ = writeln!(
            out,
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{time}\">",
            xml(&self.drill),
            self.failed()
        );
        let _ = writeln!(out, "    <properties>");
        for (k, v) in [
            ("file", self.file.clone()),
            ("lab", self.lab.clone()),
            ("rounds", self.rounds.to_string()),
        ] {
            let _ = writeln!(out, "      <property name=\"{k}\" value=\"{}\"/>", xml(&v));
        }
        for g in &self.groups {
            let _ = writeln!(
                out,
                "      <property name=\"group {}\" value=\"{} sessions={} broken={} lost_bytes={} wrong_replies={} resets={}\"/>",
                xml(&g.name),
                xml(&g.workload),
                g.sessions,
                g.broken,
                g.lost_bytes,
                g.wrong_replies,
                g.resets
            );
        }
        let _ = writeln!(out, "    </properties>");
        let class = format!("drill.{}", self.drill.replace(' ', "_"));
        if let Some(e) = &self.error {
            let _ = writeln!(
                out,
                "    <testcase classname=\"{}\" name=\"drill\" time=\"0.000\">\n      <error message=\"{}\"/>\n    </testcase>",
                xml(&class),
                xml(e)
            );
        }
        for s in &self.steps {
            let name = format!("{}: {}", s.place(), s.description);
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"{}\" time=\"{}\">",
                xml(&class),
                xml(&name),
                seconds_plain(s.duration_ms)
            );
            let message = s.failures.join("; ");
            match s.outcome {
                Outcome::Passed => {
                    if s.detail.is_empty() {
                        out.push_str("</testcase>\n");
                    } else {
                        let _ = writeln!(
                            out,
                            "\n      <system-out>{}</system-out>\n    </testcase>",
                            xml(&s.detail)
                        );
                    }
                }
                Outcome::Failed | Outcome::Error => {
                    let tag = if s.outcome == Outcome::Failed {
                        "failure"
                    } else {
                        "error"
                    };
                    let _ = writeln!(
                        out,
                        "\n      <{tag} message=\"{}\">{}</{tag}>\n    </testcase>",
                        xml(&message),
                        xml(&s.detail)
                    );
                }
                Outcome::Skipped => {
                    out.push_str("\n      <skipped/>\n    </testcase>\n");
                }
            }
        }
        out.push_str("  </testsuite>\n</testsuites>\n");
        out
    }
}

/// Escapes text for XML attributes and content; drops characters XML 1.0 forbids.
pub fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Text made safe for one Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// `1.234 s`.
pub fn seconds(ms: u64) -> String {
    format!("{} s", seconds_plain(ms))
}

fn seconds_plain(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(fail: bool) -> Report {
        let step = |round, index, kind: &str, description: &str, ms, detail: &str| StepRecord {
            round,
            index,
            kind: kind.into(),
            description: description.into(),
            duration_ms: ms,
            outcome: Outcome::Passed,
            detail: detail.into(),
            failures: vec![],
        };
        let mut steps = vec![
            step(
                0,
                1,
                "open",
                "open 32 echo sessions as \"web\"",
                120,
                "32 sessions from ports 40000–40031",
            ),
            step(
                1,
                1,
                "switchover",
                "planned switchover",
                412,
                "backup is master at epoch 3 after 412 ms",
            ),
            step(
                1,
                2,
                "expect",
                "expect master switched, resumed within 2000 ms, ≤ 0 broken [web]",
                30,
                "master: backup; web resumed in 388 ms; 0 broken; 0 lost",
            ),
        ];
        if fail {
            steps[2].outcome = Outcome::Failed;
            steps[2].failures =
                vec!["web resumed in 388 ms, more than the 100 ms expected <&>".into()];
            steps.push(StepRecord {
                outcome: Outcome::Skipped,
                ..step(2, 1, "switchover", "planned switchover", 0, "")
            });
        }
        Report {
            drill: "planned switchover".into(),
            description: "Sessions survive a planned switchover.".into(),
            file: "scripts/drills/switchover.toml".into(),
            lab: "tdrill1ab2c00".into(),
            lab_created: true,
            rounds: 1,
            started_unix_ms: 1_700_000_000_000,
            duration_ms: 5_321,
            steps,
            groups: vec![
                GroupSummary {
                    name: "web".into(),
                    workload: "echo".into(),
                    sessions: 32,
                    rounds: 41,
                    bytes_sent: 83_968,
                    bytes_verified: 83_968,
                    broken: 0,
                    lost_bytes: 0,
                    wrong_replies: 0,
                    resets: 0,
                    longest_gap_ms: 498,
                    broken_reasons: vec![],
                    wrong_examples: vec![],
                },
                GroupSummary {
                    name: "kv".into(),
                    workload: "stateful".into(),
                    sessions: 4,
                    rounds: 120,
                    bytes_sent: 12_000,
                    bytes_verified: 11_950,
                    broken: 0,
                    lost_bytes: 0,
                    wrong_replies: if fail { 2 } else { 0 },
                    resets: 0,
                    longest_gap_ms: 230,
                    broken_reasons: vec![],
                    wrong_examples: if fail {
                        vec!["session 1 (port 40033): \"INCR hits\" answered \"ERR login first\", expected \"41\"".into()]
                    } else {
                        vec![]
                    },
                },
            ],
            error: None,
        }
    }

    #[test]
    fn markdown_report() {
        insta::assert_snapshot!(sample(false).to_markdown());
    }

    #[test]
    fn markdown_report_of_a_failed_drill() {
        insta::assert_snapshot!(sample(true).to_markdown());
    }

    #[test]
    fn json_report() {
        insta::assert_snapshot!(sample(false).to_json());
    }

    #[test]
    fn junit_report_of_a_failed_drill() {
        insta::assert_snapshot!(sample(true).to_junit());
    }

    #[test]
    fn verdicts() {
        assert!(sample(false).passed());
        let failed = sample(true);
        assert!(!failed.passed());
        assert_eq!(failed.failed(), 1);
        assert!(failed
            .summary()
            .starts_with("FAILED planned switchover: 3 steps in 5.321 s"));
        let mut errored = sample(false);
        errored.error = Some("interrupted".into());
        assert!(!errored.passed());
    }

    #[test]
    fn xml_escaping() {
        assert_eq!(
            xml("a<b & \"c\" 'd'>\n\u{1}"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;&#10;"
        );
    }
}
