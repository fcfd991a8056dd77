//! Everything that can happen in the console, as one enum.
//!
//! Key presses are turned into actions by [`super::keys`]; the network workers in
//! [`super::net`] report what they learn as actions; [`super::app::App::update`] is
//! the only place that reacts to them.

use crossterm::event::KeyEvent;
use nonstop_shared::control::{AgentEvent, Fault, NodeStatus, SessionList};

/// A command the operator sends to one agent (after confirming it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCommand {
    /// Planned switchover (sent to the current master).
    Switchover,
    /// Inject a fault on that node's host.
    Inject(Fault),
}

impl std::fmt::Display for NodeCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeCommand::Switchover => write!(f, "switchover"),
            NodeCommand::Inject(fault) => write!(f, "inject: {fault}"),
        }
    }
}

/// What a network worker learned about its agent (`node` is the agent's index).
#[derive(Debug, Clone, PartialEq)]
pub enum NetUpdate {
    /// A fresh status, fetched at `at_ms` (wall clock, ms since the Unix epoch).
    Status {
        /// The agent's answer.
        status: Box<NodeStatus>,
        /// When it was fetched.
        at_ms: u64,
    },
    /// A fresh session list.
    Sessions {
        /// The agent's answer.
        list: SessionList,
        /// When it was fetched.
        at_ms: u64,
    },
    /// The agent answered `sessions` with an error (e.g. no session manager).
    SessionsUnavailable {
        /// The agent's message.
        message: String,
    },
    /// The agent could not be reached (connect, request or reply failed).
    Unreachable {
        /// Why.
        error: String,
        /// When it was noticed.
        at_ms: u64,
    },
    /// One event from the agent's event stream (history first, then live).
    Event(AgentEvent),
    /// The outcome of a [`NodeCommand`].
    CommandDone {
        /// What was asked.
        command: NodeCommand,
        /// The agent's acknowledgement, or why it failed.
        result: Result<String, String>,
        /// When the answer came.
        at_ms: u64,
    },
}

/// One thing that happened; see the module docs.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A key from the terminal, not yet interpreted.
    Key(KeyEvent),
    /// The terminal changed size.
    Resize(u16, u16),
    /// Time passed (refreshes clocks and "since" counters).
    Tick,
    /// Leave the console.
    Quit,
    /// Show or hide the key overview.
    ToggleHelp,
    /// Move keyboard focus to the next scrollable panel.
    FocusNext,
    /// Move keyboard focus to the previous scrollable panel.
    FocusPrev,
    /// Scroll the focused panel by this many rows (negative: up).
    Scroll(i64),
    /// Scroll the focused panel by a page (negative: up).
    Page(i64),
    /// Jump to the first row of the focused panel.
    ScrollHome,
    /// Jump to the last row of the focused panel.
    ScrollEnd,
    /// Sort the session table by the next column.
    CycleSort,
    /// Reverse the session table's sort order.
    ReverseSort,
    /// Show the other node's session table.
    SwitchSessionSource,
    /// Start typing a session filter.
    StartFilter,
    /// A character typed into the filter.
    FilterChar(char),
    /// Delete the last character of the filter.
    FilterBackspace,
    /// Stop typing and keep the filter.
    FilterDone,
    /// Stop typing and clear the filter.
    FilterCancel,
    /// Ask for a switchover (opens the confirmation).
    AskSwitchover,
    /// Open the fault injection menu.
    OpenInjectMenu,
    /// Ask to heal every fault on both nodes (opens the confirmation).
    AskHealAll,
    /// Move the selection in a menu up.
    MenuUp,
    /// Move the selection in a menu down.
    MenuDown,
    /// Change the selected menu entry's parameter (seconds, percent, ms) by steps.
    MenuAdjust(i64),
    /// Choose the selected menu entry.
    MenuSelect,
    /// Choose the menu entry with this number (1-based, 0 for the tenth).
    MenuPick(usize),
    /// Go one step back in a menu (closes it at the first step).
    MenuBack,
    /// Yes in a confirmation dialog.
    Confirm,
    /// No in a confirmation dialog; also closes any overlay.
    Cancel,
    /// Send commands to agents (the confirmed result of a dialog).
    Send(Vec<(usize, NodeCommand)>),
    /// A network worker reports on agent `node`.
    Net {
        /// Index of the agent.
        node: usize,
        /// What it learned.
        update: NetUpdate,
    },
}
