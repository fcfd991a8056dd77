//! Small text formatters shared by the panels (times are UTC so that what the
//! console shows does not depend on the host's time zone).

/// `HH:MM:SS.mmm` (UTC) of a wall-clock time in ms since the Unix epoch.
pub fn clock_ms(unix_ms: u64) -> String {
    let ms = unix_ms % 1000;
    let secs = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

/// `HH:MM:SS` (UTC) of a wall-clock time in ms since the Unix epoch.
pub fn clock(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

/// A duration in ms as a short human string: `850ms`, `4.2s`, `3m12s`, `2h05m`.
pub fn duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// A count with a metric suffix: `999`, `1.2k`, `34M`.
pub fn si(value: f64) -> String {
    let v = value.max(0.0);
    let (scaled, suffix) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        return format!("{v:.0}");
    };
    if scaled < 10.0 {
        format!("{scaled:.1}{suffix}")
    } else {
        format!("{scaled:.0}{suffix}")
    }
}

/// Heartbeat round trip in µs as milliseconds, or `-`.
pub fn rtt(us: Option<u64>) -> String {
    us.map_or_else(
        || "-".to_owned(),
        |us| format!("{:.2}ms", us as f64 / 1000.0),
    )
}

/// Cuts `text` to at most `width` characters, marking the cut with `…`.
pub fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let mut out: String = text.chars().take(width - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_read_well() {
        assert_eq!(clock_ms(1_700_000_000_123), "22:13:20.123");
        assert_eq!(clock(1_700_000_000_123), "22:13:20");
        assert_eq!(duration_ms(850), "850ms");
        assert_eq!(duration_ms(4_200), "4.2s");
        assert_eq!(duration_ms(192_000), "3m12s");
        assert_eq!(si(999.0), "999");
        assert_eq!(si(1_234.0), "1.2k");
        assert_eq!(si(34_000_000.0), "34M");
        assert_eq!(rtt(Some(210)), "0.21ms");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
