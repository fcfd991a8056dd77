//! One panel per node: mode (coloured), epoch, priority, VIP, heartbeat health,
//! replication and sessions; "unreachable since …" when the agent does not answer.

use crate::tui::format::{clock, duration_ms, rtt, si};
use crate::tui::model::{Link, Model, NodeModel};
use nonstop_shared::control::NodeStatus;
use nonstop_shared::Mode;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use ratatui::Frame;

/// The colour of a mode: master green, backup blue, fault red, startup yellow.
pub fn mode_color(mode: Mode) -> Color {
    match mode {
        Mode::Master => Color::Green,
        Mode::Backup => Color::Blue,
        Mode::Fault => Color::Red,
        Mode::Startup => Color::Yellow,
    }
}

/// The service's health check in a few characters (` check ok`, ` check FAILING`,
/// ` check ?`), when one is configured.
pub fn check_badge(s: &NodeStatus) -> Option<(String, Color)> {
    let check = s.check.as_ref()?;
    Some(match check.healthy {
        Some(true) => (" check ok".to_owned(), Color::Green),
        Some(false) => (" check FAILING".to_owned(), Color::Red),
        None => (" check ?".to_owned(), Color::Yellow),
    })
}

/// The managed service in a few characters: `app 1234`, `app stopped`, `no app`.
pub fn app_state(s: &NodeStatus) -> String {
    match &s.app {
        None => "no app".to_owned(),
        Some(app) => match app.pid {
            Some(pid) if app.restarts > 0 => format!("app {pid} ({}↻)", app.restarts),
            Some(pid) => format!("app {pid}"),
            None => "app stopped".to_owned(),
        },
    }
}

/// Colour for an unreachable node (and stale figures).
pub const UNREACHABLE: Color = Color::DarkGray;

/// Content lines a node panel uses: 4 when compact, 7 when there is room.
pub fn lines_for(height: u16) -> u16 {
    if height >= 9 {
        7
    } else {
        4
    }
}

/// Draws every node side by side into `area`.
pub fn draw(frame: &mut Frame, area: Rect, model: &Model) {
    let count = model.nodes.len().max(1) as u32;
    let areas = Layout::horizontal((0..count).map(|_| Constraint::Ratio(1, count))).split(area);
    for (node, area) in model.nodes.iter().zip(areas.iter()) {
        draw_node(frame, *area, node, model.now_ms);
    }
}

fn mode_span(mode: Mode) -> Span<'static> {
    Span::styled(
        format!(" {} ", mode.as_str().to_uppercase()),
        Style::new()
            .fg(Color::Black)
            .bg(mode_color(mode))
            .add_modifier(Modifier::BOLD),
    )
}

fn draw_node(frame: &mut Frame, area: Rect, node: &NodeModel, now_ms: u64) {
    let full = lines_for(area.height) == 7;
    let (color, title) = match (&node.link, &node.status) {
        (Link::Up { .. }, Some(s)) => (mode_color(s.mode), title_of(node, Some(s), full)),
        _ => (UNREACHABLE, title_of(node, node.status.as_ref(), full)),
    };
    let block = Block::bordered()
        .border_style(Style::new().fg(color))
        .title(Line::from(title).bold());
    let lines = match (&node.link, &node.status) {
        (Link::Up { .. }, Some(s)) => healthy_lines(node, s, now_ms, full),
        (Link::Down { since_ms, error }, last) => {
            // The root cause reads best in a narrow panel; the log has the whole chain.
            let cause = error.rsplit_once(": ").map_or(error.as_str(), |(_, c)| c);
            let mut lines = vec![
                Line::from(vec![
                    Span::styled(
                        " UNREACHABLE ",
                        Style::new()
                            .fg(Color::Black)
                            .bg(UNREACHABLE)
                            .add_modifier(Modifier::BOLD),
                    ),
                    Span::raw(format!(
                        " {}, since {}",
                        duration_ms(now_ms.saturating_sub(*since_ms)),
                        clock(*since_ms)
                    )),
                ]),
                Line::from(cause.to_owned()).fg(UNREACHABLE),
            ];
            if let Some(s) = last {
                lines.push(
                    Line::from(format!(
                        "was {}, epoch {}, {}",
                        s.mode,
                        s.epoch,
                        if s.vip_held { "held the VIP" } else { "no VIP" }
                    ))
                    .fg(UNREACHABLE),
                );
            }
            lines.push(Line::from(format!("retrying {}", node.address)).fg(UNREACHABLE));
            if full {
                lines.push(Line::from(""));
                lines.push(Line::from(error.clone()).fg(UNREACHABLE));
            }
            lines
        }
        _ => vec![
            Line::from(Span::styled(
                " CONNECTING ",
                Style::new().fg(Color::Black).bg(UNREACHABLE),
            )),
            Line::from(node.address.clone()).fg(UNREACHABLE),
        ],
    };
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn title_of(node: &NodeModel, status: Option<&NodeStatus>, full: bool) -> String {
    match status {
        Some(s) if s.node_id != node.label => format!(" {} ({}) ", node.label, s.node_id),
        _ if full => format!(" {} · {} ", node.label, node.address),
        _ => format!(" {} ", node.label),
    }
}

fn healthy_lines(node: &NodeModel, s: &NodeStatus, now_ms: u64, full: bool) -> Vec<Line<'static>> {
    let vip = if s.vip_held && full {
        Span::styled(format!("VIP {}", s.vip), Style::new().green().bold())
    } else if s.vip_held {
        Span::styled("holds VIP".to_owned(), Style::new().green().bold())
    } else {
        Span::styled("no VIP".to_owned(), Style::new().dark_gray())
    };
    let misses = if s.missed_heartbeats == 0 {
        Style::new()
    } else {
        Style::new().red().bold()
    };
    let peer = match (&s.peer.node_id, s.peer.mode) {
        (Some(id), Some(mode)) if *id == mode.to_string() => {
            Span::styled(id.clone(), Style::new().fg(mode_color(mode)))
        }
        (Some(id), Some(mode)) => {
            Span::styled(format!("{id}/{mode}"), Style::new().fg(mode_color(mode)))
        }
        _ => Span::styled("peer never heard".to_owned(), Style::new().red()),
    };
    let r = &s.replication;
    let repl_state = if r.mode.is_empty() {
        Span::styled("off".to_owned(), Style::new().dark_gray())
    } else if r.connected {
        Span::styled(format!("{} up", r.mode), Style::new().green())
    } else {
        Span::styled(format!("{} DOWN", r.mode), Style::new().red().bold())
    };
    let lag_style = if r.lag_ms >= 100 {
        Style::new().red().bold()
    } else if r.lag_ms >= 10 {
        Style::new().yellow()
    } else {
        Style::new()
    };
    let mut lines = vec![
        Line::from(vec![
            mode_span(s.mode),
            Span::raw(format!(" epoch {} prio {} ", s.epoch, s.priority)),
            vip,
        ]),
        Line::from(vec![
            Span::raw(format!("hb rtt {} ", rtt(s.peer.rtt_us))),
            Span::styled(format!("miss {}/{}", s.missed_heartbeats, s.misses), misses),
            Span::raw(" peer "),
            peer,
        ]),
        Line::from(vec![
            Span::raw("repl "),
            repl_state,
            Span::raw(format!(" pos {} ", r.position)),
            Span::styled(format!("lag {}r/{}ms", r.lag_records, r.lag_ms), lag_style),
        ]),
        Line::from(vec![
            Span::raw(format!(
                "sess {} held {} {}p/s {}",
                r.sessions,
                r.held_packets,
                si(node.packet_rate),
                app_state(s)
            )),
            // Peer segments refused by the RFC 5961 rules (blind forgeries among them).
            if r.segments_out_of_window > 0 {
                Span::styled(
                    format!(" oow {}", si(r.segments_out_of_window as f64)),
                    Style::new().fg(Color::Yellow),
                )
            } else {
                Span::raw("")
            },
            // Backpressure at a memory bound, and packets refused fail-closed.
            {
                let b = r.bound_drops;
                let bound = b.held + b.unacked + b.backlog;
                let refused = r.dropped_malformed + r.dropped_truncated;
                if bound + refused > 0 {
                    Span::styled(
                        format!(" bound {} bad {}", si(bound as f64), si(refused as f64)),
                        Style::new().fg(Color::Yellow),
                    )
                } else {
                    Span::raw("")
                }
            },
            match check_badge(s) {
                Some((text, color)) => Span::styled(text, Style::new().fg(color)),
                None => Span::raw(""),
            },
        ]),
    ];
    if full {
        let heard = s
            .peer
            .last_heard_ms
            .map_or("never".to_owned(), |ms| format!("{} ago", duration_ms(ms)));
        lines.push(Line::from(format!(
            "peer heard {heard}  acked {}  rec {}/s",
            r.acked,
            si(node.record_rate)
        )));
        if r.restored + r.restore_pending + r.restore_failed + r.sessions_reset > 0 {
            lines.push(Line::from(format!(
                "restored {} pend {} fail {} reset {}  last {}ms p50 {}µs",
                r.restored,
                r.restore_pending,
                r.restore_failed,
                r.sessions_reset,
                r.restore_ms,
                r.restore_session_p50_us
            )));
        }
        if r.replica == "hot" {
            lines.push(Line::from(format!(
                "hot: mirrors {} diverged {} cold {} took {}/{}",
                r.mirrors,
                r.mirrors_diverged,
                r.mirrors_cold,
                r.mirrors_adopted,
                r.mirrors_fallback
            )));
        }
        let c = &s.counters;
        lines.push(
            Line::from(format!(
                "cpu {:.0}% rss {}B  pid {} up {}  hb {}/{}  garp {}  promo {}  err {}",
                s.resources.agent_cpu_percent,
                si(s.resources.agent_rss_kib.saturating_mul(1024) as f64),
                s.pid,
                duration_ms(s.uptime_ms),
                c.heartbeats_sent,
                c.heartbeats_received,
                c.garps_sent,
                c.promotions,
                r.errors
            ))
            .dark_gray(),
        );
        lines.push(match &s.last_transition {
            Some(t) => Line::from(format!(
                "{} {}→{} e{}: {}",
                clock(t.at_unix_ms),
                t.from,
                t.to,
                t.epoch,
                t.cause
            ))
            .dark_gray(),
            None => Line::from(format!(
                "no mode change yet; status {} old",
                duration_ms(now_ms.saturating_sub(node.status_at_ms))
            ))
            .dark_gray(),
        });
    }
    lines
}
