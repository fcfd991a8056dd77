//! The event log: both agents' events (mode changes, VIP, gratuitous ARP, fence,
//! injections, errors) and the console's own (commands, agents lost and found),
//! merged in time order, newest at the bottom.

use crate::tui::format::{clock, clock_ms, truncate};
use crate::tui::model::{LogKind, Model};
use ratatui::layout::Rect;
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use ratatui::Frame;

/// Scroll state of the event log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventsView {
    /// Rows scrolled up from the newest entry (0: follow new events).
    pub back: usize,
    /// Rows that fit at the last draw.
    pub page: usize,
}

impl EventsView {
    /// Scrolls by `delta` rows (negative: towards older entries).
    pub fn scroll(&mut self, delta: i64, len: usize) {
        let back = self.back as i64 - delta;
        self.back = (back.max(0) as usize).min(len.saturating_sub(1));
    }
}

/// Colour of a log entry.
pub fn kind_color(kind: LogKind) -> Color {
    match kind {
        LogKind::Mode => Color::Cyan,
        LogKind::Vip | LogKind::Garp => Color::Green,
        LogKind::Fence => Color::Magenta,
        LogKind::Injected => Color::Yellow,
        LogKind::AgentError | LogKind::CommandError => Color::Red,
        LogKind::Link => Color::DarkGray,
        LogKind::Command => Color::White,
    }
}

/// Draws the log into `area`.
pub fn draw(frame: &mut Frame, area: Rect, model: &Model, view: &mut EventsView, focused: bool) {
    let entries = model.events.entries();
    let height = area.height.saturating_sub(2) as usize;
    view.page = height.max(1);
    view.back = view.back.min(entries.len().saturating_sub(1));
    let end = entries.len().saturating_sub(view.back);
    let start = end.saturating_sub(height);
    let width = area.width.saturating_sub(2) as usize;
    let wide = width >= 70;
    let lines: Vec<Line> = entries
        .range(start..end)
        .map(|e| {
            let time = if wide {
                clock_ms(e.at_ms)
            } else {
                clock(e.at_ms)
            };
            let source = format!(" {:<7.7} ", e.source);
            let used = time.chars().count() + source.chars().count();
            Line::from(vec![
                Span::styled(time, Style::new().dark_gray()),
                Span::styled(source, Style::new().bold()),
                Span::styled(
                    truncate(&e.text, width.saturating_sub(used)),
                    Style::new().fg(kind_color(e.kind)),
                ),
            ])
        })
        .collect();
    let title = if view.back > 0 {
        format!(" events · {} newer below ", view.back)
    } else {
        format!(" events · {} ", entries.len())
    };
    let block = Block::bordered()
        .border_style(if focused {
            Style::new().cyan()
        } else {
            Style::new()
        })
        .title(Line::from(title).bold());
    if model.events.is_empty() {
        frame.render_widget(
            Paragraph::new(Line::from("no events yet").dark_gray()).block(block),
            area,
        );
    } else {
        frame.render_widget(Paragraph::new(lines).block(block), area);
    }
}
