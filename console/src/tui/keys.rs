//! Every key binding, in one place: [`action_for`] maps a key to an
//! [`Action`] in the current [`KeyContext`], and [`BINDINGS`] is the same list
//! for people (the `?` overlay draws it).

use super::action::Action;
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// What the keyboard is talking to right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyContext {
    /// The main screen.
    Normal,
    /// Typing a session filter.
    Filter,
    /// The help overlay.
    Help,
    /// The injection menu.
    Menu,
    /// A confirmation dialog.
    Confirm,
}

/// One line of the help overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// The key(s).
    pub keys: &'static str,
    /// Where it applies.
    pub context: &'static str,
    /// What it does.
    pub what: &'static str,
}

const fn b(keys: &'static str, context: &'static str, what: &'static str) -> Binding {
    Binding {
        keys,
        context,
        what,
    }
}

/// Every binding, as the help overlay lists them.
pub const BINDINGS: &[Binding] = &[
    b(
        "w",
        "main",
        "switchover: the VIP moves to the backup (asks)",
    ),
    b("i", "main", "fault injection: choose node, then fault"),
    b("h", "main", "heal all faults on both nodes (asks)"),
    b("tab  shift-tab", "main", "focus the sessions / the events"),
    b("↑ ↓  k j", "main", "scroll the focused panel"),
    b("PgUp PgDn", "main", "scroll a page"),
    b("Home End  g G", "main", "first / last row"),
    b("s  S", "main", "sort by the next column / reverse"),
    b("n", "main", "show the other node's sessions"),
    b("/", "main", "filter sessions by peer or phase"),
    b("Enter  Esc", "filter", "keep the filter / clear it"),
    b("?", "any", "this help (any key closes it)"),
    b("q  ctrl-c", "main", "quit"),
    b("↑ ↓  Enter  1-9 0", "menu", "choose an entry"),
    b("← →  - +", "menu", "change seconds / percent / ms"),
    b("Esc  Backspace", "menu", "back / close"),
    b("y  Enter", "confirm", "do it"),
    b("n  Esc", "confirm", "cancel"),
];

/// The action for `key` in `context`, if any.
pub fn action_for(key: KeyEvent, context: KeyContext) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && key.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    match context {
        KeyContext::Help => Some(Action::Cancel),
        KeyContext::Filter => match key.code {
            KeyCode::Enter => Some(Action::FilterDone),
            KeyCode::Esc => Some(Action::FilterCancel),
            KeyCode::Backspace => Some(Action::FilterBackspace),
            KeyCode::Char(c) if !ctrl => Some(Action::FilterChar(c)),
            _ => None,
        },
        KeyContext::Confirm => match key.code {
            KeyCode::Char('y') | KeyCode::Char('Y') | KeyCode::Enter => Some(Action::Confirm),
            KeyCode::Char('n') | KeyCode::Char('N') | KeyCode::Esc | KeyCode::Char('q') => {
                Some(Action::Cancel)
            }
            _ => None,
        },
        KeyContext::Menu => match key.code {
            KeyCode::Up | KeyCode::Char('k') => Some(Action::MenuUp),
            KeyCode::Down | KeyCode::Char('j') => Some(Action::MenuDown),
            KeyCode::Left | KeyCode::Char('-') => Some(Action::MenuAdjust(-1)),
            KeyCode::Right | KeyCode::Char('+') | KeyCode::Char('=') => Some(Action::MenuAdjust(1)),
            KeyCode::Enter => Some(Action::MenuSelect),
            KeyCode::Char(c @ '0'..='9') => c
                .to_digit(10)
                .map(|d| Action::MenuPick(if d == 0 { 10 } else { d as usize })),
            KeyCode::Esc | KeyCode::Backspace => Some(Action::MenuBack),
            KeyCode::Char('q') => Some(Action::Cancel),
            KeyCode::Char('?') => Some(Action::ToggleHelp),
            _ => None,
        },
        KeyContext::Normal => match key.code {
            KeyCode::Char('q') => Some(Action::Quit),
            KeyCode::Char('?') => Some(Action::ToggleHelp),
            KeyCode::Char('w') => Some(Action::AskSwitchover),
            KeyCode::Char('i') => Some(Action::OpenInjectMenu),
            KeyCode::Char('h') => Some(Action::AskHealAll),
            KeyCode::Tab => Some(Action::FocusNext),
            KeyCode::BackTab => Some(Action::FocusPrev),
            KeyCode::Up | KeyCode::Char('k') => Some(Action::Scroll(-1)),
            KeyCode::Down | KeyCode::Char('j') => Some(Action::Scroll(1)),
            KeyCode::PageUp => Some(Action::Page(-1)),
            KeyCode::PageDown => Some(Action::Page(1)),
            KeyCode::Home | KeyCode::Char('g') => Some(Action::ScrollHome),
            KeyCode::End | KeyCode::Char('G') => Some(Action::ScrollEnd),
            KeyCode::Char('s') => Some(Action::CycleSort),
            KeyCode::Char('S') => Some(Action::ReverseSort),
            KeyCode::Char('n') => Some(Action::SwitchSessionSource),
            KeyCode::Char('/') => Some(Action::StartFilter),
            KeyCode::Esc => Some(Action::FilterCancel),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn main_keys_map_to_actions() {
        let n = KeyContext::Normal;
        assert_eq!(action_for(key(KeyCode::Char('q')), n), Some(Action::Quit));
        assert_eq!(
            action_for(key(KeyCode::Char('w')), n),
            Some(Action::AskSwitchover)
        );
        assert_eq!(
            action_for(key(KeyCode::Char('i')), n),
            Some(Action::OpenInjectMenu)
        );
        assert_eq!(
            action_for(key(KeyCode::Char('h')), n),
            Some(Action::AskHealAll)
        );
        assert_eq!(
            action_for(key(KeyCode::Char('/')), n),
            Some(Action::StartFilter)
        );
        assert_eq!(
            action_for(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL), n),
            Some(Action::Quit)
        );
    }

    #[test]
    fn typing_a_filter_does_not_trigger_commands() {
        let f = KeyContext::Filter;
        assert_eq!(
            action_for(key(KeyCode::Char('w')), f),
            Some(Action::FilterChar('w'))
        );
        assert_eq!(
            action_for(key(KeyCode::Char('q')), f),
            Some(Action::FilterChar('q'))
        );
        assert_eq!(action_for(key(KeyCode::Enter), f), Some(Action::FilterDone));
    }

    #[test]
    fn confirmation_needs_a_yes() {
        let c = KeyContext::Confirm;
        assert_eq!(
            action_for(key(KeyCode::Char('y')), c),
            Some(Action::Confirm)
        );
        assert_eq!(action_for(key(KeyCode::Char('w')), c), None);
        assert_eq!(action_for(key(KeyCode::Esc), c), Some(Action::Cancel));
    }
}
