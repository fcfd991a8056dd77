//! The `?` overlay: every key binding from [`crate::tui::keys::BINDINGS`].

use super::popup_area;
use crate::tui::keys::BINDINGS;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Row, Table};
use ratatui::Frame;

/// Draws the overlay centred in `area`.
pub fn draw(frame: &mut Frame, area: Rect) {
    let height = BINDINGS.len() as u16 + 3;
    let rect = popup_area(frame, area, 78, height);
    let rows = BINDINGS.iter().map(|b| {
        Row::new(vec![
            Line::from(b.keys).bold(),
            Line::from(b.context).dark_gray(),
            Line::from(b.what),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(17),
            Constraint::Length(7),
            Constraint::Min(10),
        ],
    )
    .header(Row::new(vec!["KEY", "WHERE", "WHAT"]).style(Style::new().add_modifier(Modifier::BOLD)))
    .block(
        Block::bordered()
            .border_style(Style::new().cyan())
            .title(Line::from(" keys · any key closes ").bold()),
    );
    frame.render_widget(table, rect);
}
