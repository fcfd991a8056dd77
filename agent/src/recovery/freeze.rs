//! Freezing peers for a planned switchover (design §3, "planned switchover drains"):
//! every segment we send announces a zero window, so peers stop sending new data while
//! the old master's app reads what it has and the peers acknowledge what it wrote.
//! The new master's kick ([`super::translate::kick_window`]) opens the window again.
//! Sans-IO.

use super::translate::window_update;
use crate::session::tracker::PacketError;
use crate::tcp::segment::Segment;
use crate::tcp::wire::{self, Layout};
use nonstop_shared::session::SessionState;

/// Rewrites an outbound segment to announce a zero window (fresh TCP checksum).
pub fn zero_window(packet: &mut Vec<u8>) -> Result<(), PacketError> {
    Segment::parse(packet)?;
    let l = Layout::of(packet).ok_or(PacketError::Truncated)?;
    wire::put_u16(packet, l.ip_len + 14, 0);
    packet.truncate(l.total);
    wire::set_tcp_checksum(packet, l.ip_len, l.total);
    Ok(())
}

/// A pure ACK announcing a zero window: sent to every peer when the freeze starts, so
/// none waits for our next segment to learn of it.
pub fn freeze_ack(state: &SessionState) -> Vec<u8> {
    let mut ack = window_update(state);
    // `window_update` builds a well-formed segment, so this cannot fail.
    let _ = zero_window(&mut ack);
    ack
}
