//! UI-only state (what is focused, which overlay is open, how the table is sorted
//! and scrolled), kept apart from the domain [`super::model::Model`].

use super::components::confirm::ConfirmDialog;
use super::components::events::EventsView;
use super::components::inject_menu::InjectMenu;
use super::components::sessions::SessionTable;
use super::keys::KeyContext;

/// The panel that arrows and page keys scroll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Focus {
    /// The session table.
    #[default]
    Sessions,
    /// The event log.
    Events,
}

/// What is drawn on top of the main screen.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Overlay {
    /// Nothing.
    #[default]
    None,
    /// The key overview.
    Help,
    /// The fault injection menu.
    Inject(InjectMenu),
    /// A confirmation dialog.
    Confirm(ConfirmDialog),
}

/// All UI-only state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UiState {
    /// Focused panel.
    pub focus: Focus,
    /// Open overlay.
    pub overlay: Overlay,
    /// Session table state.
    pub sessions: SessionTable,
    /// Event log scroll state.
    pub events: EventsView,
    /// The latest one-line feedback for the footer.
    pub message: Option<String>,
}

impl UiState {
    /// What the keyboard is talking to.
    pub fn key_context(&self) -> KeyContext {
        match self.overlay {
            Overlay::Help => KeyContext::Help,
            Overlay::Inject(_) => KeyContext::Menu,
            Overlay::Confirm(_) => KeyContext::Confirm,
            Overlay::None if self.sessions.editing => KeyContext::Filter,
            Overlay::None => KeyContext::Normal,
        }
    }
}
