//! Live progress on stderr: on a terminal, one redrawn line per step with a bar
//! (filled by elapsed/limit for waits and timeouts, a moving marker otherwise);
//! elsewhere (CI logs), one line when a step ends.

use super::report::{seconds, Outcome, StepRecord};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Width of the bar in characters.
const BAR: usize = 24;

/// The progress display.
pub struct Progress {
    tty: bool,
    label: String,
    started: Instant,
    last_draw: Option<Instant>,
}

impl Progress {
    /// A display on stderr; animated only when stderr is a terminal.
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            label: String::new(),
            started: Instant::now(),
            last_draw: None,
        }
    }

    /// A step begins.
    pub fn begin(&mut self, label: String) {
        self.label = label;
        self.started = Instant::now();
        self.last_draw = None;
        self.tick(Some(0.0), "");
    }

    /// Redraws the bar (at most every 100 ms). `fraction` is how far along the step is,
    /// if known.
    pub fn tick(&mut self, fraction: Option<f64>, note: &str) {
        if !self.tty {
            return;
        }
        if self
            .last_draw
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last_draw = Some(Instant::now());
        let bar = bar(fraction, self.started.elapsed());
        let line = format!(
            "  [{bar}] {} {:>6.1} s {note}",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
        let width = terminal_width();
        let line: String = line.chars().take(width.saturating_sub(1)).collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    }

    /// A step ended: its final line.
    pub fn end(&mut self, record: &StepRecord) {
        let mark = match record.outcome {
            Outcome::Passed => "ok  ",
            Outcome::Failed => "FAIL",
            Outcome::Error => "ERR ",
            Outcome::Skipped => "skip",
        };
        let mut line = format!(
            "{mark} {:<16} {} ({})",
            record.place(),
            record.description,
            seconds(record.duration_ms)
        );
        if !record.detail.is_empty() {
            line.push_str(&format!(": {}", record.detail));
        }
        for f in &record.failures {
            line.push_str(&format!("\n     ✗ {f}"));
        }
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{line}");
    }

    /// A free-form line (lab built, reports written…).
    pub fn say(&mut self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{text}");
    }
}

/// The bar's characters: filled to `fraction`, or a marker bouncing with time.
pub fn bar(fraction: Option<f64>, elapsed: Duration) -> String {
    match fraction {
        Some(f) => {
            let filled = ((f.clamp(0.0, 1.0) * BAR as f64).round() as usize).min(BAR);
            format!("{}{}", "#".repeat(filled), ".".repeat(BAR - filled))
        }
        None => {
            let step = (elapsed.as_millis() / 100) as usize % (2 * (BAR - 3));
            let pos = if step < BAR - 3 {
                step
            } else {
                2 * (BAR - 3) - step
            };
            format!("{}<=>{}", ".".repeat(pos), ".".repeat(BAR - 3 - pos))
        }
    }
}

fn terminal_width() -> usize {
    crossterm::terminal::size().map_or(100, |(w, _)| usize::from(w).max(20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars() {
        assert_eq!(
            bar(Some(0.5), Duration::ZERO),
            format!("{}{}", "#".repeat(12), ".".repeat(12))
        );
        assert_eq!(bar(Some(2.0), Duration::ZERO), "#".repeat(24));
        assert_eq!(bar(None, Duration::ZERO), format!("<=>{}", ".".repeat(21)));
        assert_eq!(bar(None, Duration::from_millis(2100)).len(), 24);
    }
}
