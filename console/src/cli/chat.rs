//! `chat`: joins the lab's chat service (VIP:7000) from the peer namespace with an
//! ordinary TCP connection, and shows that connection's local port, since when it
//! is connected and how often it had to reconnect — 0, through any switchover or
//! crash. A small ratatui view on a terminal; plain lines otherwise (`--plain`).
//! `--say-every-ms` makes it a bot that posts a numbered line at that interval.

use crate::tui::format::clock;
use anyhow::Context;
use clap::Args;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui::Frame;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Arguments of `chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Your name in the room.
    #[arg(long, default_value = "guest")]
    pub name: String,
    /// The lab host to connect from (`peer`, `peer2`, …).
    #[arg(long, default_value = "peer")]
    pub host: String,
    /// The chat service's port on the VIP.
    #[arg(long, default_value_t = 7000)]
    pub port: u16,
    /// Post `NAME: tick N` at this interval (a bot that keeps the room moving).
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub say_every_ms: Option<u64>,
    /// Plain lines on stdout instead of the full-screen view.
    #[arg(long)]
    pub plain: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the reader thread reports.
enum Incoming {
    Line(String),
    Closed(String),
}

/// The view's data (plain, drawn by [`draw`]).
#[derive(Debug, Clone, Default)]
pub struct ChatView {
    /// Our name.
    pub name: String,
    /// `peer_ip:port` of the current connection (our side).
    pub local: String,
    /// `vip:port`.
    pub remote: String,
    /// Unix ms when the current connection was made.
    pub connected_since_ms: u64,
    /// Unix ms now (for the "for …" figure).
    pub now_ms: u64,
    /// Times the connection broke and was made again.
    pub reconnects: u64,
    /// Lines heard on this run.
    pub heard: u64,
    /// Lines sent on this run.
    pub said: u64,
    /// The last lines (time, text).
    pub lines: Vec<(u64, String)>,
    /// What is being typed.
    pub input: String,
    /// Why the connection is down, while it is.
    pub down: Option<String>,
}

impl ChatView {
    /// The status line: `carol@198.18.5.10:43122 → 198.18.5.100:7000 · connected
    /// since 12:00:01 UTC (3m 12s) · reconnects 0`.
    pub fn status(&self) -> String {
        let age = self.now_ms.saturating_sub(self.connected_since_ms) / 1000;
        let state = match &self.down {
            Some(why) => format!("DISCONNECTED: {why}"),
            None => format!(
                "connected since {} UTC ({}m {:02}s)",
                clock(self.connected_since_ms),
                age / 60,
                age % 60
            ),
        };
        format!(
            "{}@{} → {} · {state} · reconnects {} · heard {} · said {}",
            self.name, self.local, self.remote, self.reconnects, self.heard, self.said
        )
    }

    fn push(&mut self, at: u64, text: String) {
        self.lines.push((at, text));
        if self.lines.len() > 500 {
            self.lines.drain(..100);
        }
    }
}

/// Draws the view: status on top, the room, the input line.
pub fn draw(frame: &mut Frame, view: &ChatView) {
    let [top, room, input] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(3),
        Constraint::Length(3),
    ])
    .areas(frame.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    frame.render_widget(
        Paragraph::new(view.status().split_once(" · ").map_or_else(
            || vec![Line::from(Span::styled(view.status(), bold))],
            |(who, how)| {
                vec![
                    Line::from(Span::styled(who.to_owned(), bold)),
                    Line::from(Span::styled(how.to_owned(), bold)),
                ]
            },
        ))
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" nonstop chat "),
        ),
        top,
    );
    let height = usize::from(room.height.saturating_sub(2));
    let start = view.lines.len().saturating_sub(height);
    let lines: Vec<Line> = view.lines[start..]
        .iter()
        .map(|(at, text)| Line::from(format!("{} {text}", clock(*at))))
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" room ")),
        room,
    );
    frame.render_widget(
        Paragraph::new(format!("> {}", view.input)).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" type and press Enter · Esc quits "),
        ),
        input,
    );
}

/// One connection: writer half, and a reader thread feeding `tx`.
fn connect(
    lab: &nonstop_lab::Lab,
    host: &str,
    addr: SocketAddr,
    tx: &mpsc::Sender<(u64, Incoming)>,
    generation: u64,
) -> anyhow::Result<TcpStream> {
    let stream = lab
        .connect(host, addr, Duration::from_secs(3))
        .with_context(|| format!("cannot join the chat at {addr} from {host}"))?;
    stream.set_nodelay(true)?;
    let reader = stream.try_clone()?;
    let tx = tx.clone();
    std::thread::Builder::new()
        .name("chat-reader".into())
        .spawn(move || {
            let mut lines = BufReader::new(reader);
            loop {
                let mut line = String::new();
                let what = match lines.read_line(&mut line) {
                    Ok(0) => Incoming::Closed("the service closed the connection".into()),
                    Ok(_) => Incoming::Line(line.trim_end().to_owned()),
                    Err(e) => Incoming::Closed(e.to_string()),
                };
                let closed = matches!(what, Incoming::Closed(_));
                if tx.send((generation, what)).is_err() || closed {
                    return;
                }
            }
        })
        .context("cannot start the reader thread")?;
    Ok(stream)
}

/// Runs the chat client until Esc / ctrl-c (or end of input in plain mode).
pub fn run(lab_name: Option<&str>, args: &ChatArgs) -> anyhow::Result<ExitCode> {
    let lab_name = lab_name.unwrap_or("demo");
    let lab = nonstop_lab::Lab::open(lab_name).with_context(|| format!("lab `{lab_name}`"))?;
    lab.host(&args.host)?;
    let addr = SocketAddr::from((lab.vip(), args.port));
    let (tx, rx) = mpsc::channel();
    let mut generation = 0;
    let mut stream = connect(&lab, &args.host, addr, &tx, generation)?;
    let mut view = ChatView {
        name: args.name.clone(),
        local: stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        remote: addr.to_string(),
        connected_since_ms: now_ms(),
        now_ms: now_ms(),
        ..ChatView::default()
    };
    let plain = args.plain || !std::io::stdout().is_terminal();
    let mut terminal = if plain {
        println!("{}", view.status());
        None
    } else {
        Some(crate::tui::terminal::TerminalGuard::new()?)
    };
    // Plain mode reads stdin lines on a thread of their own.
    let (in_tx, in_rx) = mpsc::channel::<Option<String>>();
    if plain && args.say_every_ms.is_none() {
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(l) => {
                        if in_tx.send(Some(l)).is_err() {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            let _ = in_tx.send(None);
        });
    }
    let mut next_tick = args
        .say_every_ms
        .map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut tick = 0u64;
    let mut last_status = Instant::now();
    let mut retry_at: Option<Instant> = None;
    loop {
        view.now_ms = now_ms();
        // The room.
        while let Ok((gen, what)) = rx.try_recv() {
            if gen != generation {
                continue;
            }
            match what {
                Incoming::Line(text) => {
                    view.heard += 1;
                    if plain {
                        println!("{} {text}", clock(view.now_ms));
                    }
                    view.push(view.now_ms, text);
                }
                Incoming::Closed(why) => {
                    if plain {
                        println!("!! connection lost: {why}; reconnecting in 1 s");
                    }
                    view.down = Some(why);
                    retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
        if retry_at.is_some_and(|t| Instant::now() >= t) {
            generation += 1;
            match connect(&lab, &args.host, addr, &tx, generation) {
                Ok(s) => {
                    stream = s;
                    view.reconnects += 1;
                    view.down = None;
                    view.connected_since_ms = now_ms();
                    view.local = stream
                        .local_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    retry_at = None;
                    if plain {
                        println!("!! reconnected: {}", view.status());
                    }
                }
                Err(e) => {
                    view.down = Some(format!("{e:#}"));
                    retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
        // What we say.
        let mut outgoing = Vec::new();
        if next_tick.is_some_and(|t| Instant::now() >= t) {
            tick += 1;
            outgoing.push(format!(
                "{}: tick {tick} (connection from port {}, reconnects {})",
                args.name,
                view.local.rsplit(':').next().unwrap_or("?"),
                view.reconnects
            ));
            next_tick = args
                .say_every_ms
                .map(|ms| Instant::now() + Duration::from_millis(ms));
        }
        if plain {
            while let Ok(line) = in_rx.try_recv() {
                match line {
                    Some(text) => outgoing.push(format!("{}: {text}", args.name)),
                    None => return Ok(ExitCode::SUCCESS),
                }
            }
            if last_status.elapsed() >= Duration::from_secs(10) {
                println!("-- {}", view.status());
                last_status = Instant::now();
            }
        }
        if let Some(term) = terminal.as_mut() {
            term.terminal.draw(|f| draw(f, &view))?;
            if event::poll(Duration::from_millis(50))? {
                if let Event::Key(key) = event::read()? {
                    if key.kind != KeyEventKind::Release {
                        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
                        match key.code {
                            KeyCode::Esc => break,
                            KeyCode::Char('c') if ctrl => break,
                            KeyCode::Enter if !view.input.is_empty() => {
                                outgoing.push(format!("{}: {}", args.name, view.input));
                                view.input.clear();
                            }
                            KeyCode::Backspace => {
                                view.input.pop();
                            }
                            KeyCode::Char(ch) if !ctrl => view.input.push(ch),
                            _ => {}
                        }
                    }
                }
            }
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        for line in outgoing {
            if view.down.is_some() {
                break;
            }
            if let Err(e) = stream.write_all(format!("{line}\n").as_bytes()) {
                view.down = Some(format!("write: {e}"));
                retry_at = Some(Instant::now() + Duration::from_secs(1));
            } else {
                view.said += 1;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn view() -> ChatView {
        ChatView {
            name: "carol".into(),
            local: "198.18.7.10:43122".into(),
            remote: "198.18.7.100:7000".into(),
            connected_since_ms: 1_700_000_000_000,
            now_ms: 1_700_000_192_000,
            reconnects: 0,
            heard: 3,
            said: 1,
            lines: vec![
                (
                    1_700_000_190_000,
                    "bot: tick 190 (connection from port 43100, reconnects 0)".into(),
                ),
                (
                    1_700_000_191_000,
                    "carol: still here after the switchover".into(),
                ),
            ],
            input: "hello".into(),
            down: None,
        }
    }

    #[test]
    fn status_shows_port_age_and_reconnects() {
        assert_eq!(
            view().status(),
            "carol@198.18.7.10:43122 → 198.18.7.100:7000 · connected since 22:13:20 UTC (3m 12s) · reconnects 0 · heard 3 · said 1"
        );
        let mut down = view();
        down.down = Some("connection reset by peer".into());
        assert!(down
            .status()
            .contains("DISCONNECTED: connection reset by peer"));
    }

    #[test]
    fn chat_view_80x12() {
        let mut terminal = Terminal::new(TestBackend::new(80, 12)).expect("terminal");
        terminal.draw(|f| draw(f, &view())).expect("draw");
        insta::assert_snapshot!(terminal.backend());
    }
}
