//! Log output: human-readable text (ANSI colours only when stderr is a terminal, so
//! log files stay clean) or one JSON object per line (`--log-format json`), on
//! stderr; the level comes from `RUST_LOG` or `[log] level` and can be changed at run
//! time ([`LogControl::set_level`], used by the SIGHUP reload).

use std::io::IsTerminal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Text for people.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not a log format (text or json)")),
        }
    }
}

/// Changes the log filter of the running agent.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it wins over the config file.
    from_env: bool,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("from_env", &self.from_env)
            .finish()
    }
}

/// Parses a level or filter directive (`info`, `warn,nonstop_agent=debug`).
pub fn parse_filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|e| format!("`{level}` is not a log level or filter: {e}"))
}

impl LogControl {
    /// Applies `[log] level` from a reloaded config; `Ok(false)` when `RUST_LOG`
    /// overrides it.
    pub fn set_level(&self, level: &str) -> Result<bool, String> {
        if self.from_env {
            return Ok(false);
        }
        let filter = parse_filter(level)?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log level: {e}"))?;
        Ok(true)
    }
}

/// Installs the global subscriber on stderr. Fails on a bad `level` (or `RUST_LOG`).
pub fn init(format: LogFormat, level: &str) -> Result<LogControl, String> {
    let (filter, from_env) = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => (parse_filter(&env)?, true),
        _ => (parse_filter(level)?, false),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    installed.map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(LogControl { handle, from_env })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_levels_parse_or_say_why_not() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert!("xml".parse::<LogFormat>().is_err());
        assert!(parse_filter("info").is_ok());
        assert!(parse_filter("warn,nonstop_agent=debug").is_ok());
        let err = parse_filter("nonstop_agent=loud").expect_err("bad level");
        assert!(err.contains("not a log level"), "{err}");
    }
}
