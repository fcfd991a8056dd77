//! Replication lag over the last minutes (one bar per second, the worst in that
//! second) and the replication message rate, as sparklines.

use crate::tui::format::si;
use crate::tui::model::Model;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Sparkline};
use ratatui::Frame;

/// Draws the lag panel into `area`.
pub fn draw(frame: &mut Frame, area: Rect, model: &Model) {
    let samples = model.lag.samples();
    let inner_width = area.width.saturating_sub(2) as usize;
    // Bars from the right edge: the newest second last; seconds with no sample
    // (no master answering) are gaps.
    // The newest bar is the latest sample while the master reports (so the current,
    // unfinished second is no gap), else the current second.
    let now = model.now_ms / 1000;
    let newest = match samples.back() {
        Some(s) if s.second + 2 >= now => s.second,
        _ => now,
    };
    let first = newest.saturating_sub(inner_width.saturating_sub(1) as u64);
    let mut lag = vec![0u64; inner_width];
    let mut rate = vec![0u64; inner_width];
    for s in samples
        .iter()
        .filter(|s| s.second >= first && s.second <= newest)
    {
        let i = (s.second - first) as usize;
        if let (Some(l), Some(r)) = (lag.get_mut(i), rate.get_mut(i)) {
            *l = s.lag_ms;
            *r = s.record_rate.round() as u64;
        }
    }
    let shown = samples.iter().filter(|s| s.second >= first).count();
    let title = format!(
        " replication lag · last {}s ",
        inner_width.min(shown.max(1))
    );
    let block = Block::bordered().title(Line::from(title).bold());
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.height == 0 {
        return;
    }
    let (now_lag, now_records, now_rate) = samples
        .back()
        .map_or((0, 0, 0.0), |s| (s.lag_ms, s.lag_records, s.record_rate));
    let max_lag = lag.iter().copied().max().unwrap_or(0);
    let max_rate = rate.iter().copied().max().unwrap_or(0) as f64;
    let lag_text = Line::from(format!("lag {now_lag}ms/{now_records}r  peak {max_lag}ms"));
    let rate_text = Line::from(format!(
        "records {}/s  peak {}/s",
        si(now_rate),
        si(max_rate)
    ));
    if samples.is_empty() {
        let text = vec![lag_text, Line::from("no master reporting yet").dark_gray()];
        frame.render_widget(Paragraph::new(text), inner);
        return;
    }
    let half = inner.height / 2;
    let [lag_label, lag_chart, rate_label, rate_chart] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(half.saturating_sub(1)),
        Constraint::Length(1),
        Constraint::Min(0),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(lag_text), lag_label);
    frame.render_widget(
        Sparkline::default()
            .data(&lag)
            .max(max_lag.max(10))
            .style(Style::new().yellow()),
        lag_chart,
    );
    frame.render_widget(Paragraph::new(rate_text), rate_label);
    frame.render_widget(
        Sparkline::default()
            .data(&rate)
            .max((max_rate.round() as u64).max(1))
            .style(Style::new().cyan()),
        rate_chart,
    );
}
