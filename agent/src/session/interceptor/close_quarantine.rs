//! Holding the service's closes (FIN, RST) for a moment before they leave.
//!
//! When the service process dies, its kernel closes every socket it had: a FIN (or
//! an RST, if input was unread) goes to each peer *before* the agent learns of the
//! death. Sent, they would end sessions the agent is about to restore into the
//! restarted service. So the first FIN or RST of a session waits [`CLOSE_GRACE`];
//! if the service is reported dead meanwhile, everything waiting is dropped and the
//! sessions are restored; otherwise it leaves as usual, only a little late. Once a
//! session has a packet waiting, its later outbound packets queue behind it, so
//! nothing overtakes the close.
//!
//! Sans-IO: generic over the held item, driven by the caller's clock.

use nonstop_shared::session::SessionKey;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How long a close waits for news of the service's death. The agent hears of an
/// exit through SIGCHLD within milliseconds; this leaves a wide margin on a busy
/// host and costs nothing but a slightly later FIN on a normal close.
pub const CLOSE_GRACE: Duration = Duration::from_millis(250);

/// Closes (and what follows them) waiting per session.
#[derive(Debug)]
pub struct CloseQuarantine<T> {
    grace: Duration,
    waiting: HashMap<SessionKey, (Instant, VecDeque<T>)>,
}

impl<T> CloseQuarantine<T> {
    /// An empty quarantine holding closes for `grace`.
    pub fn new(grace: Duration) -> CloseQuarantine<T> {
        CloseQuarantine {
            grace,
            waiting: HashMap::new(),
        }
    }

    /// Whether `key` has packets waiting (later packets must queue behind them).
    pub fn holds(&self, key: &SessionKey) -> bool {
        self.waiting.contains_key(key)
    }

    /// Holds `item` of `key`: a close starts the clock; anything else joins a queue
    /// already waiting.
    pub fn hold(&mut self, key: SessionKey, item: T, now: Instant) {
        self.waiting
            .entry(key)
            .or_insert_with(|| (now, VecDeque::new()))
            .1
            .push_back(item);
    }

    /// Items whose grace has passed, per session in the order they came.
    pub fn due(&mut self, now: Instant) -> Vec<T> {
        let grace = self.grace;
        let due: Vec<SessionKey> = self
            .waiting
            .iter()
            .filter(|(_, (since, _))| now.saturating_duration_since(*since) >= grace)
            .map(|(key, _)| *key)
            .collect();
        due.into_iter()
            .filter_map(|key| self.waiting.remove(&key))
            .flat_map(|(_, items)| items)
            .collect()
    }

    /// Everything waiting (the service died, or this node stopped being master).
    pub fn take_all(&mut self) -> Vec<T> {
        self.waiting
            .drain()
            .flat_map(|(_, (_, items))| items)
            .collect()
    }

    /// Time until the next item is due, if any waits.
    pub fn next_due(&self, now: Instant) -> Option<Duration> {
        self.waiting
            .values()
            .map(|(since, _)| (*since + self.grace).saturating_duration_since(now))
            .min()
    }

    /// Packets waiting.
    pub fn len(&self) -> usize {
        self.waiting.values().map(|(_, items)| items.len()).sum()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(port: u16) -> SessionKey {
        SessionKey {
            peer_ip: Ipv4Addr::new(198, 18, 0, 10),
            peer_port: port,
            local_ip: Ipv4Addr::new(198, 18, 0, 100),
            local_port: 7000,
        }
    }

    #[test]
    fn a_close_leaves_after_the_grace_with_what_queued_behind_it() {
        let t0 = Instant::now();
        let mut q = CloseQuarantine::new(Duration::from_millis(250));
        q.hold(key(1), "fin", t0);
        assert!(q.holds(&key(1)));
        assert!(!q.holds(&key(2)));
        q.hold(key(1), "ack", t0 + Duration::from_millis(100));
        assert!(q.due(t0 + Duration::from_millis(249)).is_empty());
        assert_eq!(
            q.next_due(t0 + Duration::from_millis(200)),
            Some(Duration::from_millis(50))
        );
        assert_eq!(q.due(t0 + Duration::from_millis(250)), vec!["fin", "ack"]);
        assert!(q.is_empty());
        assert_eq!(q.next_due(t0), None);
    }

    #[test]
    fn sessions_are_timed_separately() {
        let t0 = Instant::now();
        let mut q = CloseQuarantine::new(Duration::from_millis(250));
        q.hold(key(1), 1, t0);
        q.hold(key(2), 2, t0 + Duration::from_millis(200));
        assert_eq!(q.len(), 2);
        assert_eq!(q.due(t0 + Duration::from_millis(300)), vec![1]);
        assert!(q.holds(&key(2)));
        assert_eq!(q.due(t0 + Duration::from_millis(450)), vec![2]);
    }

    #[test]
    fn a_death_takes_everything_waiting() {
        let t0 = Instant::now();
        let mut q = CloseQuarantine::new(Duration::from_millis(250));
        for port in 0..100 {
            q.hold(key(port), port, t0);
        }
        let mut all = q.take_all();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert!(q.is_empty());
        assert!(q.due(t0 + Duration::from_secs(1)).is_empty());
    }
}
