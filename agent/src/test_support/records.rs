//! Session states and records for unit tests.

use nonstop_shared::session::{Negotiated, Phase, SessionKey, SessionState, SessionSync};
use std::net::Ipv4Addr;

/// The session of peer port `port` (peer 198.18.1.10, service 198.18.1.100:7).
pub fn key(port: u16) -> SessionKey {
    SessionKey {
        peer_ip: Ipv4Addr::new(198, 18, 1, 10),
        peer_port: port,
        local_ip: Ipv4Addr::new(198, 18, 1, 100),
        local_port: 7,
    }
}

/// An established session whose next data byte is at `isn + 1`.
pub fn full(port: u16, isn: u32) -> SessionState {
    SessionState {
        key: key(port),
        phase: Phase::Established,
        peer_isn: 500,
        our_isn: isn,
        rcv_nxt: 501,
        peer_seq_max: 501,
        snd_nxt: isn.wrapping_add(1),
        snd_una: isn.wrapping_add(1),
        peer_window: 1000,
        our_window: 2000,
        negotiated: Negotiated::default(),
        peer_tsval: 0,
        our_tsval: 0,
        our_fin: None,
        peer_fin: None,
        unacked: Default::default(),
        unread_input: Vec::new(),
        at_risk: false,
        bytes_in: 0,
        bytes_out: 0,
        last_activity_ms: 1,
    }
}

/// A sync that keeps every field of `s` and carries `data` at `data_seq`.
pub fn sync_of(s: &SessionState, data_seq: u32, data: &[u8]) -> SessionSync {
    SessionSync {
        key: s.key,
        phase: s.phase,
        rcv_nxt: s.rcv_nxt,
        peer_seq_max: s.peer_seq_max,
        snd_nxt: s.snd_nxt,
        snd_una: s.snd_una,
        peer_window: s.peer_window,
        our_window: s.our_window,
        peer_tsval: s.peer_tsval,
        our_tsval: s.our_tsval,
        our_fin: s.our_fin,
        peer_fin: s.peer_fin,
        data_seq,
        data: data.to_vec(),
        input_seq: 0,
        input: Vec::new(),
        bytes_in: s.bytes_in,
        bytes_out: s.bytes_out,
        last_activity_ms: s.last_activity_ms,
    }
}
