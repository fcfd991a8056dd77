//! The fault injection menu: first choose the node, then the fault (with its
//! seconds, percent or milliseconds). Destructive faults go through a
//! [`ConfirmDialog`]; "heal all" is sent at once.

use super::confirm::ConfirmDialog;
use super::nodes::{mode_color, UNREACHABLE};
use super::popup_area;
use crate::tui::action::{Action, NodeCommand};
use crate::tui::model::Model;
use nonstop_shared::control::{Fault, LinkName};
use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use ratatui::Frame;

/// One entry of the fault list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultChoice {
    /// SIGKILL the managed service.
    KillApp,
    /// SIGKILL the agent.
    KillAgent,
    /// SIGSTOP the agent for some seconds.
    FreezeAgent,
    /// Every link of the host down for some seconds.
    LinksDown,
    /// Drop everything on the sync link.
    CutSync,
    /// Random loss on the sync link.
    LossSync,
    /// Random loss on the service link.
    LossService,
    /// Delay on the sync link.
    DelaySync,
    /// Delay on the service link.
    DelayService,
    /// Remove every fault on the node.
    HealAll,
}

impl FaultChoice {
    /// The list, in menu order (keys 1-9, 0).
    pub const ALL: [FaultChoice; 10] = [
        FaultChoice::KillApp,
        FaultChoice::KillAgent,
        FaultChoice::FreezeAgent,
        FaultChoice::LinksDown,
        FaultChoice::CutSync,
        FaultChoice::LossSync,
        FaultChoice::LossService,
        FaultChoice::DelaySync,
        FaultChoice::DelayService,
        FaultChoice::HealAll,
    ];

    /// The fault with the menu's parameters.
    pub fn fault(self, p: &FaultParams) -> Fault {
        match self {
            FaultChoice::KillApp => Fault::KillApp,
            FaultChoice::KillAgent => Fault::KillAgent,
            FaultChoice::FreezeAgent => Fault::FreezeAgent { seconds: p.seconds },
            FaultChoice::LinksDown => Fault::LinksDown { seconds: p.seconds },
            FaultChoice::CutSync => Fault::CutSync,
            FaultChoice::LossSync => Fault::Loss {
                link: LinkName::Sync,
                percent: p.percent,
            },
            FaultChoice::LossService => Fault::Loss {
                link: LinkName::Service,
                percent: p.percent,
            },
            FaultChoice::DelaySync => Fault::Delay {
                link: LinkName::Sync,
                ms: p.ms,
            },
            FaultChoice::DelayService => Fault::Delay {
                link: LinkName::Service,
                ms: p.ms,
            },
            FaultChoice::HealAll => Fault::HealAll,
        }
    }

    /// Whether it breaks something (and so needs a confirmation).
    pub fn destructive(self) -> bool {
        self != FaultChoice::HealAll
    }

    fn adjust(self, p: &mut FaultParams, steps: i64) {
        match self {
            FaultChoice::FreezeAgent | FaultChoice::LinksDown => {
                p.seconds = step(SECONDS, p.seconds, steps);
            }
            FaultChoice::LossSync | FaultChoice::LossService => {
                p.percent = step(PERCENT, u64::from(p.percent), steps) as u8;
            }
            FaultChoice::DelaySync | FaultChoice::DelayService => p.ms = step(MS, p.ms, steps),
            _ => {}
        }
    }

    fn has_parameter(self) -> bool {
        !matches!(
            self,
            FaultChoice::KillApp
                | FaultChoice::KillAgent
                | FaultChoice::CutSync
                | FaultChoice::HealAll
        )
    }
}

const SECONDS: &[u64] = &[1, 2, 3, 5, 10, 15, 20, 30, 60, 120, 300];
const PERCENT: &[u64] = &[1, 2, 5, 10, 20, 30, 50, 75, 100];
const MS: &[u64] = &[1, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

fn step(values: &[u64], current: u64, steps: i64) -> u64 {
    let i = values
        .iter()
        .position(|&v| v >= current)
        .unwrap_or(values.len() - 1) as i64;
    let j = (i + steps).clamp(0, values.len() as i64 - 1) as usize;
    values[j]
}

/// The numbers the parameterised faults use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultParams {
    /// Freeze / links-down duration.
    pub seconds: u64,
    /// Loss percentage.
    pub percent: u8,
    /// Delay in milliseconds.
    pub ms: u64,
}

impl Default for FaultParams {
    fn default() -> Self {
        FaultParams {
            seconds: 5,
            percent: 10,
            ms: 100,
        }
    }
}

/// Which step the menu is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Choosing the node.
    Node,
    /// Choosing the fault for this node.
    Fault(usize),
}

/// What the app should do after the menu handled an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuOutcome {
    /// Keep the menu open.
    Stay,
    /// Close the menu.
    Close,
    /// Replace the menu by this confirmation.
    Ask(ConfirmDialog),
    /// Close the menu and send these commands.
    Send(Vec<(usize, NodeCommand)>),
}

/// The menu's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectMenu {
    /// Current step.
    pub stage: Stage,
    /// Highlighted node.
    pub node: usize,
    /// Highlighted fault.
    pub fault: usize,
    /// Parameters.
    pub params: FaultParams,
}

impl Default for InjectMenu {
    fn default() -> Self {
        InjectMenu {
            stage: Stage::Node,
            node: 0,
            fault: 0,
            params: FaultParams::default(),
        }
    }
}

impl InjectMenu {
    /// Handles a menu action.
    pub fn handle(&mut self, action: &Action, model: &Model) -> MenuOutcome {
        let len = match self.stage {
            Stage::Node => model.nodes.len(),
            Stage::Fault(_) => FaultChoice::ALL.len(),
        };
        let cursor = match self.stage {
            Stage::Node => &mut self.node,
            Stage::Fault(_) => &mut self.fault,
        };
        match action {
            Action::MenuUp => *cursor = (*cursor + len.max(1) - 1) % len.max(1),
            Action::MenuDown => *cursor = (*cursor + 1) % len.max(1),
            Action::MenuAdjust(steps) => {
                if let Stage::Fault(_) = self.stage {
                    FaultChoice::ALL[self.fault].adjust(&mut self.params, *steps);
                }
            }
            Action::MenuPick(n) if (1..=len).contains(n) => {
                *cursor = n - 1;
                return self.select(model);
            }
            Action::MenuSelect => return self.select(model),
            Action::MenuBack => match self.stage {
                Stage::Node => return MenuOutcome::Close,
                Stage::Fault(_) => self.stage = Stage::Node,
            },
            Action::Cancel => return MenuOutcome::Close,
            _ => {}
        }
        MenuOutcome::Stay
    }

    fn select(&mut self, model: &Model) -> MenuOutcome {
        match self.stage {
            Stage::Node => {
                if self.node < model.nodes.len() {
                    self.stage = Stage::Fault(self.node);
                }
                MenuOutcome::Stay
            }
            Stage::Fault(node) => {
                let choice = FaultChoice::ALL[self.fault];
                let fault = choice.fault(&self.params);
                let commands = vec![(node, NodeCommand::Inject(fault.clone()))];
                if !choice.destructive() {
                    return MenuOutcome::Send(commands);
                }
                let n = &model.nodes[node];
                let mode = n
                    .live_mode()
                    .map_or_else(|| "unreachable".to_owned(), |m| m.to_string());
                MenuOutcome::Ask(ConfirmDialog {
                    title: "Inject a fault".to_owned(),
                    lines: vec![
                        format!("On {} (now {mode}): {fault}.", n.label),
                        consequence(choice, &self.params),
                    ],
                    commands,
                    danger: true,
                })
            }
        }
    }
}

fn consequence(choice: FaultChoice, p: &FaultParams) -> String {
    match choice {
        FaultChoice::KillApp => "The service process dies; the agent restarts it.".into(),
        FaultChoice::KillAgent => {
            "The agent dies; on the master this should cause a failover.".into()
        }
        FaultChoice::FreezeAgent => format!(
            "The agent stops answering for {} s (SIGSTOP, then SIGCONT).",
            p.seconds
        ),
        FaultChoice::LinksDown => format!(
            "The host drops off both networks for {} s (host crash).",
            p.seconds
        ),
        FaultChoice::CutSync => {
            "Replication and heartbeats on the sync link stop until healed.".into()
        }
        FaultChoice::LossSync | FaultChoice::LossService => {
            "Random drops until healed (h, or the menu's heal all).".into()
        }
        FaultChoice::DelaySync | FaultChoice::DelayService => {
            "Every packet on that link is held until healed.".into()
        }
        FaultChoice::HealAll => "Removes every fault on the node.".into(),
    }
}

fn label(choice: FaultChoice, p: &FaultParams) -> String {
    match choice {
        FaultChoice::KillApp => "kill the app (SIGKILL)".into(),
        FaultChoice::KillAgent => "kill the agent (SIGKILL)".into(),
        FaultChoice::FreezeAgent => format!("freeze the agent  ◂ {} s ▸", p.seconds),
        FaultChoice::LinksDown => format!("all links down    ◂ {} s ▸", p.seconds),
        FaultChoice::CutSync => "cut the sync link".into(),
        FaultChoice::LossSync => format!("loss on sync      ◂ {} % ▸", p.percent),
        FaultChoice::LossService => format!("loss on service   ◂ {} % ▸", p.percent),
        FaultChoice::DelaySync => format!("delay on sync     ◂ {} ms ▸", p.ms),
        FaultChoice::DelayService => format!("delay on service  ◂ {} ms ▸", p.ms),
        FaultChoice::HealAll => "heal all (this node)".into(),
    }
}

/// Draws the menu centred in `area`.
pub fn draw(frame: &mut Frame, area: Rect, menu: &InjectMenu, model: &Model) {
    let selected = Style::new().add_modifier(Modifier::REVERSED);
    let mut lines = vec![Line::from("")];
    let title = match menu.stage {
        Stage::Node => {
            lines.push(Line::from(" Which node?").bold());
            for (i, n) in model.nodes.iter().enumerate() {
                let (mode, color) = match n.live_mode() {
                    Some(m) => (m.to_string(), mode_color(m)),
                    None => ("unreachable".to_owned(), UNREACHABLE),
                };
                let text = format!(" {} {:<10}", i + 1, n.label);
                let style = if i == menu.node {
                    selected
                } else {
                    Style::new()
                };
                lines.push(Line::from(vec![
                    Span::styled(text, style),
                    Span::styled(format!(" now {mode}"), Style::new().fg(color)),
                ]));
            }
            lines.push(Line::from(""));
            lines.push(Line::from(" ↑↓ choose  Enter/1-2 next  Esc close").dark_gray());
            " inject a fault · 1/2 node ".to_owned()
        }
        Stage::Fault(node) => {
            let name = model.nodes.get(node).map_or("?", |n| n.label.as_str());
            lines.push(Line::from(format!(" Fault on {name}:")).bold());
            for (i, choice) in FaultChoice::ALL.iter().enumerate() {
                let key = (i + 1) % 10;
                let style = if i == menu.fault {
                    selected
                } else {
                    Style::new()
                };
                let mut spans = vec![Span::styled(
                    format!(" {key} {:<34}", label(*choice, &menu.params)),
                    style,
                )];
                if choice.destructive() {
                    spans.push(Span::styled(" !", Style::new().red()));
                }
                lines.push(Line::from(spans));
            }
            lines.push(Line::from(""));
            let hint = if FaultChoice::ALL[menu.fault].has_parameter() {
                " ↑↓ choose  ←→ change value  Enter pick  Esc back"
            } else {
                " ↑↓ choose  Enter/0-9 pick  Esc back  (! confirms)"
            };
            lines.push(Line::from(hint).dark_gray());
            " inject a fault · 2/2 fault ".to_owned()
        }
    };
    let rect = popup_area(frame, area, 54, lines.len() as u16 + 2);
    let block = Block::bordered()
        .border_style(Style::new().yellow())
        .title(Line::from(title).bold());
    frame.render_widget(Paragraph::new(lines).block(block), rect);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::fixtures;

    #[test]
    fn choosing_a_destructive_fault_asks_first() {
        let model = fixtures::healthy(3);
        let mut menu = InjectMenu::default();
        assert_eq!(menu.handle(&Action::MenuDown, &model), MenuOutcome::Stay);
        assert_eq!(menu.handle(&Action::MenuSelect, &model), MenuOutcome::Stay);
        assert_eq!(menu.stage, Stage::Fault(1));
        menu.handle(&Action::MenuPick(3), &model);
        assert_eq!(menu.fault, 2);
        let mut menu2 = menu.clone();
        menu2.stage = Stage::Fault(1);
        menu2.handle(&Action::MenuAdjust(1), &model);
        assert_eq!(menu2.params.seconds, 10);
        match menu2.handle(&Action::MenuSelect, &model) {
            MenuOutcome::Ask(dialog) => assert_eq!(
                dialog.commands,
                vec![(1, NodeCommand::Inject(Fault::FreezeAgent { seconds: 10 }))]
            ),
            other => panic!("expected a confirmation, got {other:?}"),
        }
        let mut heal = InjectMenu {
            stage: Stage::Fault(0),
            ..InjectMenu::default()
        };
        assert_eq!(
            heal.handle(&Action::MenuPick(10), &model),
            MenuOutcome::Send(vec![(0, NodeCommand::Inject(Fault::HealAll))])
        );
        assert_eq!(heal.handle(&Action::MenuBack, &model), MenuOutcome::Stay);
        assert_eq!(heal.stage, Stage::Node);
        assert_eq!(heal.handle(&Action::MenuBack, &model), MenuOutcome::Close);
    }
}
