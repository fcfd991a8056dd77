//! The loop: terminal events and network reports arrive as [`Action`]s on one
//! channel; [`App::update`] changes the model and UI state; the screen is redrawn
//! from them. Nothing here waits on the network: commands go to the workers over
//! channels and their outcome comes back as an action.

use super::action::{Action, NetUpdate, NodeCommand};
use super::components;
use super::components::confirm::ConfirmDialog;
use super::components::inject_menu::{InjectMenu, MenuOutcome};
use super::keys;
use super::model::{LogKind, Model};
use super::net::{wall_ms, Workers};
use super::state::{Focus, Overlay, UiState};
use super::terminal::TerminalGuard;
use crate::client::AgentAddr;
use crossterm::event::Event;
use nonstop_shared::control::Fault;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// How often the screen is refreshed when nothing happens.
pub const TICK: Duration = Duration::from_millis(250);

/// The console's state and where its commands go.
pub struct App {
    /// Domain model.
    pub model: Model,
    /// UI-only state.
    pub ui: UiState,
    /// Whether the operator asked to leave.
    pub quit: bool,
    /// Every command handed to the workers, in order (for tests and the log).
    pub sent: Vec<(usize, NodeCommand)>,
    workers: Option<Workers>,
}

impl App {
    /// An app over `model`; without workers, commands fail with "offline".
    pub fn new(model: Model, workers: Option<Workers>) -> App {
        App {
            model,
            ui: UiState::default(),
            quit: false,
            sent: Vec::new(),
            workers,
        }
    }

    /// Handles `action` and every action it leads to.
    pub fn dispatch(&mut self, action: Action) {
        let mut next = Some(action);
        while let Some(action) = next {
            next = self.update(action);
        }
    }

    /// Handles one action; may return a follow-up action.
    pub fn update(&mut self, action: Action) -> Option<Action> {
        match action {
            Action::Key(key) => return keys::action_for(key, self.ui.key_context()),
            Action::Resize(..) | Action::Tick => {}
            Action::Quit => self.quit = true,
            Action::ToggleHelp => {
                self.ui.overlay = match self.ui.overlay {
                    Overlay::Help => Overlay::None,
                    _ => Overlay::Help,
                }
            }
            Action::FocusNext | Action::FocusPrev => {
                self.ui.focus = match self.ui.focus {
                    Focus::Sessions => Focus::Events,
                    Focus::Events => Focus::Sessions,
                }
            }
            Action::Scroll(delta) => self.scroll(delta),
            Action::Page(pages) => match self.ui.focus {
                Focus::Sessions => self.ui.sessions.page(pages),
                Focus::Events => self.scroll(pages * self.ui.events.page.max(1) as i64),
            },
            Action::ScrollHome => match self.ui.focus {
                Focus::Sessions => self.ui.sessions.home(),
                Focus::Events => self.ui.events.back = self.model.events.len(),
            },
            Action::ScrollEnd => match self.ui.focus {
                Focus::Sessions => self.ui.sessions.end(),
                Focus::Events => self.ui.events.back = 0,
            },
            Action::CycleSort => self.ui.sessions.cycle_sort(),
            Action::ReverseSort => self.ui.sessions.descending = !self.ui.sessions.descending,
            Action::SwitchSessionSource => self.ui.sessions.switch_source(&self.model),
            Action::StartFilter => {
                self.ui.focus = Focus::Sessions;
                self.ui.sessions.editing = true;
            }
            Action::FilterChar(c) => {
                self.ui.sessions.filter.push(c);
                self.ui.sessions.home();
            }
            Action::FilterBackspace => {
                self.ui.sessions.filter.pop();
            }
            Action::FilterDone => self.ui.sessions.editing = false,
            Action::FilterCancel => {
                self.ui.sessions.editing = false;
                self.ui.sessions.filter.clear();
            }
            Action::AskSwitchover => self.ask_switchover(),
            Action::OpenInjectMenu => self.ui.overlay = Overlay::Inject(InjectMenu::default()),
            Action::AskHealAll => {
                self.ui.overlay = Overlay::Confirm(ConfirmDialog {
                    title: "Heal all".to_owned(),
                    lines: vec![
                        "Remove every injected fault on both nodes".to_owned(),
                        "(loss, delay, cut sync; frozen agents resume).".to_owned(),
                    ],
                    commands: (0..self.model.nodes.len())
                        .map(|i| (i, NodeCommand::Inject(Fault::HealAll)))
                        .collect(),
                    danger: false,
                })
            }
            Action::MenuUp
            | Action::MenuDown
            | Action::MenuAdjust(_)
            | Action::MenuSelect
            | Action::MenuPick(_)
            | Action::MenuBack => return self.menu(action),
            Action::Confirm => {
                if let Overlay::Confirm(dialog) = std::mem::take(&mut self.ui.overlay) {
                    return Some(Action::Send(dialog.commands));
                }
            }
            Action::Cancel => {
                if matches!(self.ui.overlay, Overlay::Confirm(_)) {
                    self.ui.message = Some("cancelled".to_owned());
                }
                self.ui.overlay = Overlay::None;
            }
            Action::Send(commands) => {
                for (node, command) in commands {
                    self.send(node, command);
                }
            }
            Action::Net { node, update } => {
                if let NetUpdate::CommandDone {
                    command, result, ..
                } = &update
                {
                    let label = self.model.nodes.get(node).map_or("?", |n| n.label.as_str());
                    self.ui.message = Some(match result {
                        Ok(message) => format!("{label}: {command}: {message}"),
                        Err(error) => format!("{label}: {command} FAILED: {error}"),
                    });
                }
                self.model.apply(node, update);
            }
        }
        None
    }

    fn scroll(&mut self, delta: i64) {
        match self.ui.focus {
            Focus::Sessions => self.ui.sessions.scroll(delta),
            Focus::Events => self.ui.events.scroll(delta, self.model.events.len()),
        }
    }

    fn menu(&mut self, action: Action) -> Option<Action> {
        let Overlay::Inject(menu) = &mut self.ui.overlay else {
            return None;
        };
        match menu.handle(&action, &self.model) {
            MenuOutcome::Stay => None,
            MenuOutcome::Close => {
                self.ui.overlay = Overlay::None;
                None
            }
            MenuOutcome::Ask(dialog) => {
                self.ui.overlay = Overlay::Confirm(dialog);
                None
            }
            MenuOutcome::Send(commands) => {
                self.ui.overlay = Overlay::None;
                Some(Action::Send(commands))
            }
        }
    }

    fn ask_switchover(&mut self) {
        let Some(master) = self.model.master() else {
            let text = "switchover needs exactly one reachable master".to_owned();
            self.model.log(
                self.model.now_ms,
                "console",
                LogKind::CommandError,
                text.clone(),
            );
            self.ui.message = Some(text);
            return;
        };
        let from = &self.model.nodes[master];
        let to = self
            .model
            .nodes
            .iter()
            .enumerate()
            .find(|(i, n)| *i != master && n.is_up())
            .map(|(_, n)| n.label.clone());
        let mut lines = vec![format!(
            "{} (now master, epoch {}) hands the VIP and its sessions",
            from.label,
            from.status.as_ref().map_or(0, |s| s.epoch)
        )];
        match to {
            Some(to) => lines.push(format!("to {to}, which becomes master.")),
            None => lines.push("to … no reachable backup! The agent may refuse.".to_owned()),
        }
        self.ui.overlay = Overlay::Confirm(ConfirmDialog {
            title: "Switchover".to_owned(),
            lines,
            commands: vec![(master, NodeCommand::Switchover)],
            danger: false,
        });
    }

    fn send(&mut self, node: usize, command: NodeCommand) {
        self.model.log_sent(node, &command);
        let label = self
            .model
            .nodes
            .get(node)
            .map_or_else(|| format!("agent {node}"), |n| n.label.clone());
        let result = match &self.workers {
            Some(workers) => workers.send(node, command.clone()),
            None => Err("offline".to_owned()),
        };
        match result {
            Ok(()) => self.ui.message = Some(format!("{label}: {command}: sent")),
            Err(error) => {
                let text = format!("{command} not sent: {error}");
                self.model.log(
                    self.model.now_ms,
                    &label,
                    LogKind::CommandError,
                    text.clone(),
                );
                self.ui.message = Some(text);
            }
        }
        self.sent.push((node, command));
    }
}

/// Runs the TUI against `agents` (named by `labels`) until the operator quits.
pub fn run(agents: &[AgentAddr], labels: &[String], timeout: Duration) -> anyhow::Result<()> {
    let names: Vec<(String, String)> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let label = labels.get(i).cloned().unwrap_or_else(|| a.addr.to_string());
            (label, a.addr.to_string())
        })
        .collect();
    let (tx, rx) = mpsc::channel();
    let workers = Workers::spawn(agents, timeout, &tx);
    let mut app = App::new(Model::new(&names, wall_ms()), Some(workers));
    let mut guard = TerminalGuard::new()?;
    let input = tx.clone();
    std::thread::Builder::new()
        .name("input".to_owned())
        .spawn(move || loop {
            let action = match crossterm::event::read() {
                Ok(Event::Key(key)) => Action::Key(key),
                Ok(Event::Resize(w, h)) => Action::Resize(w, h),
                Ok(_) => continue,
                Err(_) => break,
            };
            if input.send(action).is_err() {
                break;
            }
        })?;
    drop(tx);
    loop {
        app.model.now_ms = wall_ms();
        guard
            .terminal
            .draw(|frame| components::draw(frame, &app.model, &mut app.ui))?;
        if app.quit {
            break;
        }
        match rx.recv_timeout(TICK) {
            Ok(action) => app.dispatch(action),
            Err(RecvTimeoutError::Timeout) => app.dispatch(Action::Tick),
            Err(RecvTimeoutError::Disconnected) => break,
        }
        while let Ok(action) = rx.try_recv() {
            app.dispatch(action);
            if app.quit {
                break;
            }
        }
    }
    drop(guard);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::fixtures;
    use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    fn press(app: &mut App, code: KeyCode) {
        app.dispatch(Action::Key(KeyEvent::new(code, KeyModifiers::NONE)));
    }

    #[test]
    fn switchover_is_sent_to_the_master_only_after_confirmation() {
        let mut app = App::new(fixtures::healthy(3), None);
        press(&mut app, KeyCode::Char('w'));
        assert!(matches!(app.ui.overlay, Overlay::Confirm(_)));
        assert!(app.sent.is_empty());
        press(&mut app, KeyCode::Char('y'));
        assert_eq!(app.sent, vec![(0, NodeCommand::Switchover)]);
        assert_eq!(app.ui.overlay, Overlay::None);
        // Without workers the send fails, and the log says so.
        let last = app.model.events.entries().back().expect("an entry");
        assert_eq!(last.kind, LogKind::CommandError);
    }

    #[test]
    fn cancelling_sends_nothing() {
        let mut app = App::new(fixtures::healthy(3), None);
        press(&mut app, KeyCode::Char('h'));
        press(&mut app, KeyCode::Esc);
        assert!(app.sent.is_empty());
        press(&mut app, KeyCode::Char('i'));
        press(&mut app, KeyCode::Char('1'));
        press(&mut app, KeyCode::Char('2'));
        assert!(matches!(app.ui.overlay, Overlay::Confirm(_)));
        press(&mut app, KeyCode::Char('n'));
        assert!(app.sent.is_empty());
        press(&mut app, KeyCode::Char('i'));
        press(&mut app, KeyCode::Char('2'));
        press(&mut app, KeyCode::Char('2'));
        press(&mut app, KeyCode::Enter);
        assert_eq!(app.sent, vec![(1, NodeCommand::Inject(Fault::KillAgent))]);
    }

    #[test]
    fn filter_typing_and_quit() {
        let mut app = App::new(fixtures::healthy(3), None);
        press(&mut app, KeyCode::Char('/'));
        for c in "q.11".chars() {
            press(&mut app, KeyCode::Char(c));
        }
        assert!(!app.quit, "q while typing a filter is a character");
        assert_eq!(app.ui.sessions.filter, "q.11");
        press(&mut app, KeyCode::Enter);
        press(&mut app, KeyCode::Char('q'));
        assert!(app.quit);
    }

    #[test]
    fn switchover_without_a_master_is_refused_locally() {
        let mut app = App::new(fixtures::handover(), None);
        press(&mut app, KeyCode::Char('w'));
        assert_eq!(app.ui.overlay, Overlay::None);
        assert!(app.sent.is_empty());
    }
}
