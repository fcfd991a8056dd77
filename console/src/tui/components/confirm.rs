//! The confirmation dialog in front of every switchover, destructive injection and
//! heal: it says what will happen and waits for `y`/Enter or `n`/Esc.

use super::popup_area;
use crate::tui::action::NodeCommand;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Wrap};
use ratatui::Frame;

/// A question with the commands to send on "yes".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmDialog {
    /// Short title.
    pub title: String,
    /// What will happen, one line each.
    pub lines: Vec<String>,
    /// `(node index, command)` to send when confirmed.
    pub commands: Vec<(usize, NodeCommand)>,
    /// Drawn in red: it breaks something on purpose.
    pub danger: bool,
}

/// Draws the dialog centred in `area`.
pub fn draw(frame: &mut Frame, area: Rect, dialog: &ConfirmDialog) {
    let color = if dialog.danger {
        Color::Red
    } else {
        Color::Yellow
    };
    let mut lines: Vec<Line> = vec![Line::from("")];
    lines.extend(dialog.lines.iter().map(|l| Line::from(format!(" {l}"))));
    lines.push(Line::from(""));
    lines.push(Line::from(" y / Enter: do it     n / Esc: cancel").bold());
    let height = lines.len() as u16 + 2;
    let rect = popup_area(frame, area, 64, height);
    let block = Block::bordered()
        .border_style(Style::new().fg(color))
        .title(Line::from(format!(" {} ", dialog.title)).bold().fg(color));
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(block),
        rect,
    );
}
