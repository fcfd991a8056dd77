//! The sync loop's hops, measured (issue 15): for sampled records, the time from the
//! packet thread issuing a record to the replication task having written it to the
//! backup (`issue → sent`: one thread hop), from there to the backup's acknowledgement
//! arriving (`sent → acked`: the sync link both ways and the backup), and from there to
//! the packet thread acting on it (`acked → applied`: the hop back). Lock-free slots
//! indexed by record number; the medians of the last samples go to `status`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Slots (records in flight that can be followed at once).
const SLOTS: usize = 1024;
/// Samples kept per hop for the medians.
const SAMPLES: usize = 512;

/// One record's timestamps (ns since [`Hops`] was made; 0 = not yet).
#[derive(Default)]
struct Slot {
    seq: AtomicU64,
    issued: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
}

/// The sync loop's clock.
pub struct Hops {
    epoch: Instant,
    slots: Vec<Slot>,
    samples: Mutex<[Vec<u32>; 3]>,
}

impl Default for Hops {
    fn default() -> Self {
        Hops {
            epoch: Instant::now(),
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            samples: Mutex::new([Vec::new(), Vec::new(), Vec::new()]),
        }
    }
}

impl std::fmt::Debug for Hops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hops")
            .field("p50_us", &self.p50_us())
            .finish()
    }
}

impl Hops {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn slot(&self, seq: u64) -> &Slot {
        &self.slots[(seq as usize) % SLOTS]
    }

    /// The packet thread issued record `seq`.
    pub fn issued(&self, seq: u64) {
        let s = self.slot(seq);
        s.seq.store(seq, Ordering::Relaxed);
        s.sent.store(0, Ordering::Relaxed);
        s.acked.store(0, Ordering::Relaxed);
        s.issued.store(self.now(), Ordering::Relaxed);
    }

    /// Records up to `seq` were written to the backup.
    pub fn sent(&self, seq: u64) {
        let s = self.slot(seq);
        if s.seq.load(Ordering::Relaxed) == seq && s.sent.load(Ordering::Relaxed) == 0 {
            s.sent.store(self.now(), Ordering::Relaxed);
        }
    }

    /// The backup acknowledged records up to `seq`.
    pub fn acked(&self, seq: u64) {
        let s = self.slot(seq);
        if s.seq.load(Ordering::Relaxed) != seq {
            return;
        }
        let (issued, sent) = (
            s.issued.load(Ordering::Relaxed),
            s.sent.load(Ordering::Relaxed),
        );
        if sent == 0 || s.acked.load(Ordering::Relaxed) != 0 {
            return;
        }
        let now = self.now();
        s.acked.store(now, Ordering::Relaxed);
        self.sample(0, sent.saturating_sub(issued));
        self.sample(1, now.saturating_sub(sent));
    }

    /// The packet thread acted on the acknowledgement of `seq`.
    pub fn applied(&self, seq: u64) {
        let s = self.slot(seq);
        if s.seq.load(Ordering::Relaxed) != seq {
            return;
        }
        let acked = s.acked.load(Ordering::Relaxed);
        if acked != 0 {
            self.sample(2, self.now().saturating_sub(acked));
        }
    }

    fn sample(&self, hop: usize, ns: u64) {
        if let Ok(mut samples) = self.samples.lock() {
            let v = &mut samples[hop];
            if v.len() >= SAMPLES {
                v.remove(0);
            }
            v.push(u32::try_from(ns / 1000).unwrap_or(u32::MAX));
        }
    }

    /// Medians of the last samples, µs: [issue → sent, sent → acked, acked → applied].
    pub fn p50_us(&self) -> [u64; 3] {
        let Ok(samples) = self.samples.lock() else {
            return [0; 3];
        };
        let median = |v: &Vec<u32>| {
            let mut v = v.clone();
            v.sort_unstable();
            v.get(v.len() / 2).map_or(0, |&x| u64::from(x))
        };
        [
            median(&samples[0]),
            median(&samples[1]),
            median(&samples[2]),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_hop_is_measured_once_per_followed_record() {
        let h = Hops::default();
        h.issued(7);
        std::thread::sleep(std::time::Duration::from_millis(2));
        h.sent(7);
        h.acked(7);
        h.acked(7);
        h.applied(7);
        let p = h.p50_us();
        assert!(p[0] >= 2000, "{p:?}");
        // A record not followed (its slot reused) is ignored.
        h.acked(7 + SLOTS as u64);
        assert_eq!(h.samples.lock().map(|s| s[1].len()).unwrap_or(0), 1);
    }
}
