//! The session table: one node's sessions, sortable (`s`/`S`), filterable (`/`),
//! scrollable. Only the rows on screen are turned into widgets, so thousands of
//! sessions cost no more to draw than a screenful.

use crate::tui::format::{duration_ms, si};
use crate::tui::model::{Link, Model, SessionRow};
use nonstop_shared::session::Phase;
use ratatui::layout::{Constraint, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use ratatui::Frame;

/// Column the table is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortColumn {
    /// Peer address and port.
    Peer,
    /// Life phase.
    Phase,
    /// Bytes from the peer.
    BytesIn,
    /// Bytes to the peer.
    BytesOut,
    /// Bytes/s from the peer.
    RateIn,
    /// Bytes/s to the peer.
    RateOut,
    /// Record sequence number.
    Record,
    /// Time since the last packet.
    Idle,
}

impl SortColumn {
    /// Every column in the order `s` cycles through them.
    pub const ALL: [SortColumn; 8] = [
        SortColumn::Peer,
        SortColumn::Phase,
        SortColumn::BytesIn,
        SortColumn::BytesOut,
        SortColumn::RateIn,
        SortColumn::RateOut,
        SortColumn::Record,
        SortColumn::Idle,
    ];

    /// The next column in [`SortColumn::ALL`].
    pub fn next(self) -> SortColumn {
        let i = Self::ALL.iter().position(|c| *c == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }

    /// Short name for the title.
    pub fn name(self) -> &'static str {
        match self {
            SortColumn::Peer => "peer",
            SortColumn::Phase => "phase",
            SortColumn::BytesIn => "bytes in",
            SortColumn::BytesOut => "bytes out",
            SortColumn::RateIn => "rate in",
            SortColumn::RateOut => "rate out",
            SortColumn::Record => "record",
            SortColumn::Idle => "idle",
        }
    }
}

/// A session phase in at most 11 characters.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Handshake => "handshake",
        Phase::Established => "established",
        Phase::LocalClosed => "fin-sent",
        Phase::PeerClosed => "fin-rcvd",
        Phase::Closing => "closing",
        Phase::Closed => "closed",
    }
}

type CacheKey = (usize, u64, SortColumn, bool, String, u64);

/// The table's UI state: sort, filter, source node, selection and scroll position.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionTable {
    /// Sort column.
    pub sort: SortColumn,
    /// Largest first.
    pub descending: bool,
    /// Substring filter on peer address or phase (empty: all).
    pub filter: String,
    /// Whether the filter is being typed.
    pub editing: bool,
    /// Which node's sessions (None: the master, or the first node that answers).
    pub source: Option<usize>,
    /// Selected row, as an index into the filtered, sorted rows.
    pub selected: usize,
    /// First row on screen.
    pub offset: usize,
    /// Data rows that fit on screen at the last draw.
    pub page: usize,
    rows: Vec<usize>,
    cache: Option<CacheKey>,
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable {
            sort: SortColumn::Peer,
            descending: false,
            filter: String::new(),
            editing: false,
            source: None,
            selected: 0,
            offset: 0,
            page: 10,
            rows: Vec::new(),
            cache: None,
        }
    }
}

impl SessionTable {
    /// The node whose sessions are shown.
    pub fn source_node(&self, model: &Model) -> usize {
        self.source
            .filter(|&i| i < model.nodes.len())
            .or_else(|| model.master())
            .or_else(|| model.nodes.iter().position(|n| n.is_up()))
            .unwrap_or(0)
    }

    /// Shows the other node's sessions.
    pub fn switch_source(&mut self, model: &Model) {
        let count = model.nodes.len().max(1);
        self.source = Some((self.source_node(model) + 1) % count);
        self.selected = 0;
        self.offset = 0;
    }

    /// Recomputes the filtered, sorted row order if the data, sort or filter changed.
    pub fn refresh(&mut self, model: &Model) {
        let node = self.source_node(model);
        let Some(n) = model.nodes.get(node) else {
            self.rows.clear();
            return;
        };
        // Idle time changes with the clock; only re-sort on it once a second.
        let clock = if self.sort == SortColumn::Idle {
            model.now_ms / 1000
        } else {
            0
        };
        let key = (
            node,
            n.sessions_generation,
            self.sort,
            self.descending,
            self.filter.clone(),
            clock,
        );
        if self.cache.as_ref() == Some(&key) {
            return;
        }
        let filter = self.filter.to_lowercase();
        let sessions = &n.sessions;
        let mut rows: Vec<usize> = (0..sessions.len())
            .filter(|&i| {
                filter.is_empty()
                    || sessions[i].info.peer.contains(&filter)
                    || phase_name(sessions[i].info.phase).contains(&filter)
            })
            .collect();
        let sort = self.sort;
        rows.sort_by(|&a, &b| {
            let (a, b) = (&sessions[a], &sessions[b]);
            compare(sort, a, b).then_with(|| a.peer_key.cmp(&b.peer_key))
        });
        if self.descending {
            rows.reverse();
        }
        self.rows = rows;
        self.cache = Some(key);
        self.clamp();
    }

    /// Number of rows after filtering.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no row passes the filter.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Moves the selection by `delta` rows.
    pub fn scroll(&mut self, delta: i64) {
        let target = self.selected as i64 + delta;
        self.selected = target.max(0) as usize;
        self.clamp();
    }

    /// Moves the selection by `pages` screenfuls.
    pub fn page(&mut self, pages: i64) {
        self.scroll(pages * self.page.max(1) as i64);
    }

    /// Selects the first row.
    pub fn home(&mut self) {
        self.selected = 0;
        self.offset = 0;
    }

    /// Selects the last row.
    pub fn end(&mut self) {
        self.selected = self.rows.len().saturating_sub(1);
    }

    /// Cycles the sort column.
    pub fn cycle_sort(&mut self) {
        self.sort = self.sort.next();
        // Numbers read best largest-first; addresses and phases in order.
        self.descending = !matches!(self.sort, SortColumn::Peer | SortColumn::Phase);
    }

    fn clamp(&mut self) {
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
        if self.selected < self.offset {
            self.offset = self.selected;
        }
        let page = self.page.max(1);
        if self.selected >= self.offset + page {
            self.offset = self.selected + 1 - page;
        }
        self.offset = self.offset.min(self.rows.len().saturating_sub(page));
    }
}

fn compare(sort: SortColumn, a: &SessionRow, b: &SessionRow) -> std::cmp::Ordering {
    match sort {
        SortColumn::Peer => a.peer_key.cmp(&b.peer_key),
        SortColumn::Phase => a.info.phase.code().cmp(&b.info.phase.code()),
        SortColumn::BytesIn => a.info.bytes_in.cmp(&b.info.bytes_in),
        SortColumn::BytesOut => a.info.bytes_out.cmp(&b.info.bytes_out),
        SortColumn::RateIn => a.rate_in.total_cmp(&b.rate_in),
        SortColumn::RateOut => a.rate_out.total_cmp(&b.rate_out),
        SortColumn::Record => a.info.record_seq.cmp(&b.info.record_seq),
        // Idle ascending = most recently active first.
        SortColumn::Idle => b.info.last_activity_ms.cmp(&a.info.last_activity_ms),
    }
}

/// Which columns fit: 0 narrow (80 columns), 1 medium, 2 wide.
fn tier(width: u16) -> usize {
    match width {
        0..=108 => 0,
        109..=152 => 1,
        _ => 2,
    }
}

struct Column {
    title: &'static str,
    width: u16,
    sort: Option<SortColumn>,
    right: bool,
}

const fn col(title: &'static str, width: u16, sort: Option<SortColumn>, right: bool) -> Column {
    Column {
        title,
        width,
        sort,
        right,
    }
}

fn columns(tier: usize, hot: bool) -> Vec<Column> {
    use SortColumn as S;
    let mut cols = vec![col(
        "PEER",
        if tier == 0 { 21 } else { 22 },
        Some(S::Peer),
        false,
    )];
    if tier >= 2 {
        cols.push(col("LOCAL", 21, None, false));
    }
    let num = if tier == 0 { 7 } else { 9 };
    let rate = if tier == 0 { 6 } else { 8 };
    cols.push(col("PHASE", 11, Some(S::Phase), false));
    if hot {
        // Hot replica (design §9): hot, cold, diverged, lagging N B.
        cols.push(col("REPLICA", 11, None, false));
    }
    cols.extend([
        col("IN", num, Some(S::BytesIn), true),
        col("OUT", num, Some(S::BytesOut), true),
        col("IN/s", rate, Some(S::RateIn), true),
        col("OUT/s", rate, Some(S::RateOut), true),
    ]);
    if tier >= 1 {
        cols.push(col("UNACKED", 8, None, true));
    }
    cols.push(col("REC", num, Some(S::Record), true));
    if tier >= 1 {
        cols.push(col("OTHER REC", 9, None, true));
    }
    if tier >= 2 {
        cols.push(col("RCV_NXT", 10, None, true));
        cols.push(col("SND_NXT", 10, None, true));
    }
    cols.push(col(
        "IDLE",
        if tier == 0 { 5 } else { 7 },
        Some(S::Idle),
        true,
    ));
    cols
}

fn cells(tier: usize, row: &SessionRow, now_ms: u64, hot: bool) -> Vec<String> {
    let s = &row.info;
    let mut out = vec![s.peer.clone()];
    if tier >= 2 {
        out.push(s.local.clone());
    }
    out.push(phase_name(s.phase).to_owned());
    if hot {
        // `lagging 20480 B` as `lag 20480B`: the column stays narrow.
        out.push(s.replica.as_deref().map_or("-".into(), |r| {
            r.replacen("lagging ", "lag ", 1).replacen(" B", "B", 1)
        }));
    }
    out.extend([
        si(s.bytes_in as f64),
        si(s.bytes_out as f64),
        si(row.rate_in),
        si(row.rate_out),
    ]);
    if tier >= 1 {
        out.push(si(s.unacked_bytes as f64));
    }
    out.push(s.record_seq.to_string());
    if tier >= 1 {
        out.push(row.other_record_seq.map_or("-".into(), |r| r.to_string()));
    }
    if tier >= 2 {
        out.push(s.rcv_nxt.to_string());
        out.push(s.snd_nxt.to_string());
    }
    out.push(if s.last_activity_ms == 0 {
        "-".into()
    } else {
        duration_ms(now_ms.saturating_sub(s.last_activity_ms))
    });
    out
}

fn phase_style(phase: Phase) -> Style {
    match phase {
        Phase::Established => Style::new(),
        Phase::Handshake => Style::new().yellow(),
        _ => Style::new().dark_gray(),
    }
}

/// Draws the table into `area`.
pub fn draw(frame: &mut Frame, area: Rect, model: &Model, table: &mut SessionTable, focused: bool) {
    table.page = area.height.saturating_sub(3).max(1) as usize;
    table.refresh(model);
    table.clamp();
    let node = table.source_node(model);
    let Some(n) = model.nodes.get(node) else {
        return;
    };
    let total = n.sessions.len();
    let source = n.sessions_source.as_deref().unwrap_or("?");
    let mut title = format!(" sessions on {} ({source}) ", n.label);
    if !n.is_up() && n.sessions_at_ms > 0 {
        title = format!(
            " sessions on {} (stale, {}) ",
            n.label,
            crate::tui::format::clock(n.sessions_at_ms)
        );
    }
    let arrow = if table.descending { "▼" } else { "▲" };
    let mut right = format!(
        " {}/{total} · sort {} {arrow} ",
        table.len(),
        table.sort.name()
    );
    if !table.filter.is_empty() || table.editing {
        right.push_str(&format!("· /{} ", table.filter));
    }
    let border = if focused {
        Style::new().cyan()
    } else {
        Style::new()
    };
    let block = Block::bordered()
        .border_style(border)
        .title(Line::from(title).bold())
        .title(Line::from(right).right_aligned());

    let inner_width = area.width.saturating_sub(2);
    let tier = tier(inner_width);
    let hot = n.sessions.iter().any(|r| r.info.replica.is_some());
    let cols = columns(tier, hot);
    let header = Row::new(cols.iter().map(|c| {
        let mut title = c.title.to_owned();
        if c.sort == Some(table.sort) {
            title.push_str(arrow);
        }
        let cell = if c.right {
            Line::from(title).right_aligned()
        } else {
            Line::from(title)
        };
        Cell::from(cell)
    }))
    .style(Style::new().add_modifier(Modifier::BOLD));

    if table.is_empty() {
        let message = match (&n.link, &n.sessions_error) {
            (_, Some(e)) => format!("no session list: {e}"),
            (Link::Connecting, _) => "waiting for the agent…".to_owned(),
            (Link::Down { .. }, _) if total == 0 => "agent unreachable".to_owned(),
            _ if total > 0 => "no session matches the filter".to_owned(),
            _ => "no sessions".to_owned(),
        };
        frame.render_widget(
            Paragraph::new(vec![Line::from(""), Line::from(message).dark_gray()]).block(block),
            area,
        );
        return;
    }

    let end = (table.offset + table.page).min(table.rows.len());
    let rows = table.rows[table.offset..end]
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            let row = &n.sessions[r];
            let style = if focused && table.offset + i == table.selected {
                Style::new().add_modifier(Modifier::REVERSED)
            } else {
                phase_style(row.info.phase)
            };
            Row::new(
                cells(tier, row, model.now_ms, hot)
                    .into_iter()
                    .zip(&cols)
                    .map(|(text, c)| {
                        if c.right {
                            Cell::from(Line::from(text).right_aligned())
                        } else {
                            Cell::from(text)
                        }
                    }),
            )
            .style(style)
        });
    let widths: Vec<Constraint> = cols.iter().map(|c| Constraint::Length(c.width)).collect();
    let widget = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .block(block);
    frame.render_widget(widget, area);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::fixtures;

    #[test]
    fn sorting_filtering_and_scrolling_work_on_many_rows() {
        let model = fixtures::healthy(5000);
        let mut table = SessionTable::default();
        table.refresh(&model);
        assert_eq!(table.len(), 5000);
        table.sort = SortColumn::BytesIn;
        table.descending = true;
        table.refresh(&model);
        let sessions = &model.nodes[0].sessions;
        let first = sessions[table.rows[0]].info.bytes_in;
        let last = sessions[table.rows[4999]].info.bytes_in;
        assert!(first >= last);
        table.filter = "198.18.7.10:4000".into();
        table.refresh(&model);
        assert!(!table.is_empty() && table.len() < 5000, "{}", table.len());
        table.filter.clear();
        table.refresh(&model);
        table.page = 20;
        table.end();
        table.clamp();
        assert_eq!(table.selected, 4999);
        assert_eq!(table.offset, 4980);
        table.page(-1);
        assert_eq!(table.selected, 4979);
        table.home();
        assert_eq!((table.selected, table.offset), (0, 0));
        table.switch_source(&model);
        assert_eq!(table.source_node(&model), 1);
    }
}
