//! Pacing of restores into the local service (design §4), sans-IO.
//!
//! A session to restore is first **parked** (its peer's packets noted and dropped)
//! until the service listens, then **queued**, then **in flight**: a forged SYN was
//! sent and the service kernel's SYN-ACK is awaited. At most [`MAX_HANDSHAKES`] are in
//! flight at once (the service's SYN queue is small and an overflow would turn on SYN
//! cookies); an unanswered SYN is sent again after [`HANDSHAKE_RETRY`], and the
//! restore is given up after [`HANDSHAKE_TRIES`] SYNs. [`Restores::pump`] takes the
//! caller's `now` and returns the SYNs to inject; no socket or clock in here.

use crate::recovery::forge::forged_syn;
use nonstop_shared::session::{SessionKey, SessionState};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Forged handshakes in flight at once: the app kernel's SYN queue is small (128 by
/// default in a fresh namespace) and an overflow would turn on SYN cookies.
pub const MAX_HANDSHAKES: usize = 32;
/// A forged SYN unanswered this long is sent again.
pub const HANDSHAKE_RETRY: Duration = Duration::from_millis(300);
/// Forged SYNs per session before the restore is given up.
pub const HANDSHAKE_TRIES: u32 = 10;

/// A forged handshake in flight.
#[derive(Debug)]
pub struct InFlight {
    /// The session being restored.
    pub state: SessionState,
    /// First forged SYN.
    pub started: Instant,
    /// Latest forged SYN.
    sent_at: Instant,
    tries: u32,
}

/// What one [`Restores::pump`] did.
#[derive(Debug, Default)]
pub struct Pumped {
    /// Forged SYNs to inject, in order.
    pub syns: Vec<Vec<u8>>,
    /// Handshakes started (first SYN).
    pub started: u64,
    /// Restores given up (no SYN-ACK after [`HANDSHAKE_TRIES`] SYNs).
    pub given_up: Vec<SessionKey>,
}

/// Sessions parked, queued and in flight.
#[derive(Debug, Default)]
pub struct Restores {
    in_flight: HashMap<SessionKey, InFlight>,
    queue: VecDeque<SessionKey>,
    queued: HashMap<SessionKey, SessionState>,
    parked: Vec<SessionKey>,
}

impl Restores {
    /// Parks `state` until [`Restores::unpark`].
    pub fn park(&mut self, state: SessionState) {
        self.in_flight.remove(&state.key);
        self.parked.push(state.key);
        self.queued.insert(state.key, state);
    }

    /// The service listens: queues every parked session that still exists, with the
    /// latest state `latest` knows of it. Returns how many were queued.
    pub fn unpark(&mut self, latest: impl Fn(&SessionKey) -> Option<SessionState>) -> usize {
        let mut count = 0;
        for key in std::mem::take(&mut self.parked) {
            if !self.queued.contains_key(&key) {
                continue; // ended meanwhile (the peer reset it)
            }
            if let Some(state) = latest(&key) {
                self.queued.insert(key, state);
            }
            self.queue.push_back(key);
            count += 1;
        }
        count
    }

    /// Re-sends unanswered SYNs (or gives up), then starts queued handshakes while
    /// fewer than [`MAX_HANDSHAKES`] are in flight and at most `room` new ones: the
    /// connections the service's accept queue can still take (a connection completed
    /// into a full accept queue is dropped by the kernel, our forged ACK with it).
    pub fn pump(&mut self, now: Instant, room: usize) -> Pumped {
        let mut out = Pumped::default();
        let mut retry: Vec<SessionKey> = self
            .in_flight
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.sent_at) >= HANDSHAKE_RETRY)
            .map(|(key, _)| *key)
            .collect();
        retry.sort_unstable();
        for key in retry {
            let Some(r) = self.in_flight.get_mut(&key) else {
                continue;
            };
            if r.tries >= HANDSHAKE_TRIES {
                self.in_flight.remove(&key);
                out.given_up.push(key);
                continue;
            }
            r.tries += 1;
            r.sent_at = now;
            out.syns.push(forged_syn(&r.state));
        }
        let mut room = room;
        while self.in_flight.len() < MAX_HANDSHAKES && room > 0 {
            let Some(key) = self.queue.pop_front() else {
                break;
            };
            let Some(state) = self.queued.remove(&key) else {
                continue;
            };
            out.started += 1;
            room -= 1;
            out.syns.push(forged_syn(&state));
            self.in_flight.insert(
                key,
                InFlight {
                    state,
                    started: now,
                    sent_at: now,
                    tries: 1,
                },
            );
        }
        out
    }

    /// The service answered `key`'s forged SYN: its handshake leaves the flight.
    pub fn answered(&mut self, key: &SessionKey) -> Option<InFlight> {
        self.in_flight.remove(key)
    }

    /// A forged SYN for `key` is in flight.
    pub fn in_flight(&self, key: &SessionKey) -> bool {
        self.in_flight.contains_key(key)
    }

    /// `key` is being restored (queued, parked or in flight).
    pub fn pending_for(&self, key: &SessionKey) -> bool {
        self.in_flight.contains_key(key) || self.queued.contains_key(key)
    }

    /// Sessions queued for a handshake (the service listens; not started yet).
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// Handshakes in flight.
    pub fn flying(&self) -> usize {
        self.in_flight.len()
    }

    /// Restores not finished (queued, parked or in flight).
    pub fn pending(&self) -> usize {
        self.in_flight.len() + self.queued.len()
    }

    /// Forgets `key` (the session ended).
    pub fn forget(&mut self, key: &SessionKey) {
        self.in_flight.remove(key);
        self.queued.remove(key);
    }

    /// Forgets everything (this node stopped serving).
    pub fn clear(&mut self) {
        *self = Restores::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::records::full;

    fn parked(n: u16) -> Restores {
        let mut r = Restores::default();
        for port in 1..=n {
            r.park(full(port, u32::from(port) * 1000));
        }
        r
    }

    #[test]
    fn parked_sessions_wait_for_the_service_then_start_at_most_max_handshakes() {
        let now = Instant::now();
        let mut r = parked(40);
        assert!(
            r.pump(now, usize::MAX).syns.is_empty(),
            "nothing before the service listens"
        );
        assert_eq!(r.pending(), 40);
        assert_eq!(r.unpark(|_| None), 40);
        let first = r.pump(now, usize::MAX);
        assert_eq!((first.syns.len(), first.started), (MAX_HANDSHAKES, 32));
        assert_eq!(r.flying(), MAX_HANDSHAKES);
        // An answer frees a slot for the next queued session, in parking order.
        let done = r.answered(&full(1, 1000).key).expect("in flight");
        assert_eq!(done.state.key.peer_port, 1);
        let next = r.pump(now, usize::MAX);
        assert_eq!(next.started, 1);
        assert!(r.in_flight(&full(33, 33_000).key));
        assert_eq!(r.pending(), 39);
    }

    #[test]
    fn no_more_handshakes_start_than_the_accept_queue_has_room_for() {
        let now = Instant::now();
        let mut r = parked(40);
        r.unpark(|_| None);
        assert_eq!(r.pump(now, 5).started, 5);
        assert_eq!(r.pump(now, 0).started, 0, "a full accept queue: none");
        assert_eq!(r.flying(), 5);
        assert_eq!(r.pending(), 40);
    }

    #[test]
    fn unanswered_syns_are_retried_then_given_up() {
        let t0 = Instant::now();
        let mut r = parked(1);
        r.unpark(|_| None);
        assert_eq!(r.pump(t0, usize::MAX).syns.len(), 1);
        assert!(r.pump(t0 + HANDSHAKE_RETRY / 2, usize::MAX).syns.is_empty());
        let mut at = t0;
        for _ in 1..HANDSHAKE_TRIES {
            at += HANDSHAKE_RETRY;
            let p = r.pump(at, usize::MAX);
            assert_eq!(
                (p.syns.len(), p.started),
                (1, 0),
                "a retry, not a new start"
            );
        }
        at += HANDSHAKE_RETRY;
        let p = r.pump(at, usize::MAX);
        assert_eq!(p.given_up, vec![full(1, 1000).key]);
        assert!(p.syns.is_empty());
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn unpark_takes_the_latest_state_and_skips_sessions_that_ended() {
        let mut r = parked(2);
        r.forget(&full(2, 2000).key);
        let mut latest = full(1, 1000);
        latest.rcv_nxt += 100;
        let expected = latest.clone();
        assert_eq!(r.unpark(|_| Some(latest.clone())), 1);
        let p = r.pump(Instant::now(), usize::MAX);
        assert_eq!(p.syns, vec![forged_syn(&expected)]);
    }
}
