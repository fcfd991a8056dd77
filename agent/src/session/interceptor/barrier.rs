//! The restore barrier, sans-IO: no peer's input reaches the service before every
//! session of a restored batch is connected to it, so a service that relays between
//! clients (chat) misses no one.
//!
//! While a batch is being restored (and after it, until the barrier opens) the
//! peers' data for restored sessions is held here, in order. Once the batch is
//! restored ([`Barrier::batch_restored`]) the barrier waits until every forged ACK has
//! gone through and the service's accept queues are empty — looked at no more often
//! than every [`BARRIER_POLL`] (the look reads `/proc/net/tcp`; the caller passes it in
//! as a closure) — or until [`BARRIER_ACCEPT_WAIT`] has passed; then everything held
//! goes on, in order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Longest the barrier waits for the service to accept the restored connections
/// after the last handshake.
pub const BARRIER_ACCEPT_WAIT: Duration = Duration::from_secs(2);

/// How often the barrier looks at the service's accept queue.
pub const BARRIER_POLL: Duration = Duration::from_millis(5);

/// What opened the barrier.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<P> {
    /// The held input, in order.
    pub held: Vec<P>,
    /// The service accepted every connection (false: the wait ran out).
    pub accepted: bool,
}

/// Peers' input held until a restored batch is connected.
#[derive(Debug)]
pub struct Barrier<P> {
    held: VecDeque<P>,
    limit: usize,
    /// The batch is restored; wait at most until then.
    until: Option<Instant>,
    /// When the accept queue was last looked at.
    checked: Option<Instant>,
}

impl<P> Barrier<P> {
    /// A barrier holding at most `limit` packets.
    pub fn new(limit: usize) -> Barrier<P> {
        Barrier {
            held: VecDeque::new(),
            limit,
            until: None,
            checked: None,
        }
    }

    /// The batch is restored: the barrier opens once the service has accepted it, or
    /// at `now + BARRIER_ACCEPT_WAIT`.
    pub fn batch_restored(&mut self, now: Instant) {
        self.until = Some(now + BARRIER_ACCEPT_WAIT);
    }

    /// Waiting for the service to accept the restored batch.
    pub fn is_waiting(&self) -> bool {
        self.until.is_some()
    }

    /// Holds a peer's packet; hands it back if the barrier is full (drop it: the peer
    /// retransmits).
    pub fn hold(&mut self, packet: P) -> Result<(), P> {
        if self.held.len() >= self.limit {
            return Err(packet);
        }
        self.held.push_back(packet);
        Ok(())
    }

    /// Opens the barrier when it is time. `acks_in_flight`: some forged ACK has not
    /// come through the queue yet (an empty accept queue would not mean "all
    /// accepted"). `accept_queue_empty` is called at most every [`BARRIER_POLL`].
    pub fn check(
        &mut self,
        now: Instant,
        acks_in_flight: bool,
        accept_queue_empty: impl FnOnce() -> bool,
    ) -> Option<Opened<P>> {
        let until = self.until?;
        let in_time = now < until;
        if acks_in_flight && in_time {
            return None;
        }
        if in_time
            && self
                .checked
                .is_some_and(|at| now.saturating_duration_since(at) < BARRIER_POLL)
        {
            return None;
        }
        self.checked = Some(now);
        let accepted = accept_queue_empty();
        if !accepted && in_time {
            return None;
        }
        self.until = None;
        self.checked = None;
        Some(Opened {
            held: std::mem::take(&mut self.held).into(),
            accepted,
        })
    }

    /// Everything held, and the barrier forgotten (this node stopped serving).
    pub fn take_all(&mut self) -> impl Iterator<Item = P> {
        self.until = None;
        self.checked = None;
        std::mem::take(&mut self.held).into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_data_waits_until_the_batch_is_restored_and_accepted() {
        let t0 = Instant::now();
        let mut b = Barrier::new(10);
        b.hold(1).expect("room");
        b.hold(2).expect("room");
        // The batch is still being restored: the barrier is not even looking.
        assert_eq!(b.check(t0, false, || panic!("not yet")), None);
        b.batch_restored(t0);
        assert!(b.is_waiting());
        // A forged ACK still in the queue: no look at the accept queue.
        assert_eq!(b.check(t0, true, || panic!("acks first")), None);
        // Not accepted yet.
        assert_eq!(b.check(t0, false, || false), None);
        // Rate-limited: within BARRIER_POLL the accept queue is not read again.
        assert_eq!(
            b.check(t0 + BARRIER_POLL / 2, false, || panic!("too soon")),
            None
        );
        b.hold(3).expect("room");
        let opened = b.check(t0 + BARRIER_POLL, false, || true);
        assert_eq!(
            opened,
            Some(Opened {
                held: vec![1, 2, 3],
                accepted: true
            })
        );
        assert!(!b.is_waiting());
    }

    #[test]
    fn the_barrier_opens_after_the_wait_even_if_the_service_lags() {
        let t0 = Instant::now();
        let mut b = Barrier::new(10);
        b.hold(7).expect("room");
        b.batch_restored(t0);
        assert_eq!(b.check(t0, false, || false), None);
        let late = t0 + BARRIER_ACCEPT_WAIT;
        // Past the deadline even a pending forged ACK does not keep it closed.
        assert_eq!(
            b.check(late, true, || false),
            Some(Opened {
                held: vec![7],
                accepted: false
            })
        );
    }

    #[test]
    fn a_full_barrier_hands_packets_back_and_a_demotion_takes_everything() {
        let mut b = Barrier::new(1);
        b.hold(1).expect("room");
        assert_eq!(b.hold(2), Err(2));
        b.batch_restored(Instant::now());
        assert_eq!(b.take_all().collect::<Vec<_>>(), vec![1]);
        assert!(!b.is_waiting());
    }
}
