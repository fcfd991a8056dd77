//! The failover mode of a node.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What a node is doing in the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Just started: listening for a master before deciding.
    Startup,
    /// Standing by: holds no VIP, receives replication, watches the master.
    Backup,
    /// Active: holds the VIP and serves peers.
    Master,
    /// Unable to serve (service link down, VIP or fence failure): never promotes.
    Fault,
}

impl Mode {
    /// Wire code used in heartbeats.
    pub fn code(self) -> u8 {
        match self {
            Mode::Startup => 0,
            Mode::Backup => 1,
            Mode::Master => 2,
            Mode::Fault => 3,
        }
    }

    /// Inverse of [`Mode::code`]; `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<Mode> {
        match code {
            0 => Some(Mode::Startup),
            1 => Some(Mode::Backup),
            2 => Some(Mode::Master),
            3 => Some(Mode::Fault),
            _ => None,
        }
    }

    /// Lower-case name, as shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Startup => "startup",
            Mode::Backup => "backup",
            Mode::Master => "master",
            Mode::Fault => "fault",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_rejected() {
        for mode in [Mode::Startup, Mode::Backup, Mode::Master, Mode::Fault] {
            assert_eq!(Mode::from_code(mode.code()), Some(mode));
        }
        assert_eq!(Mode::from_code(4), None);
        assert_eq!(Mode::from_code(255), None);
    }
}
