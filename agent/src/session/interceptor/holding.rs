//! Holding outbound packets until the backup has them (design §3), sans-IO.
//!
//! [`Holding`] numbers the records the tracker yields and keeps the packets that
//! wait for the backup's acknowledgement, in arrival order. A packet requires the
//! record current when it was seen (the last one numbered); it leaves when the backup
//! has acknowledged that record **and** every packet held before it has left, so
//! output order never changes. With holding off (async mode, a lone master serving
//! unreplicated) packets pass at once. `P` is the packet's handle (the queue's message
//! in the agent, a plain number in tests); no queue, socket or clock in here.

use std::collections::VecDeque;

/// What to do with an outbound packet now.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<P> {
    /// Let it through now.
    Pass(P),
    /// Kept until acknowledged ([`Holding::poll_released`]).
    Held,
    /// The hold is full: drop it (TCP retransmits).
    Overflow(P),
}

/// Record numbering, acknowledgements and the held packets.
#[derive(Debug)]
pub struct Holding<P> {
    next_seq: u64,
    acked: u64,
    on: bool,
    held: VecDeque<(u64, usize, P)>,
    limit: usize,
    /// Bytes held now, and at most.
    bytes: usize,
    byte_limit: usize,
}

impl<P> Holding<P> {
    /// Numbers records from `first_seq`; holds at most `limit` packets; off at first.
    pub fn new(first_seq: u64, limit: usize) -> Holding<P> {
        Holding {
            next_seq: first_seq,
            acked: first_seq.saturating_sub(1),
            on: false,
            held: VecDeque::new(),
            limit,
            bytes: 0,
            byte_limit: usize::MAX,
        }
    }

    /// Holds at most `bytes` bytes of packets at once (beyond: [`Offer::Overflow`]).
    pub fn set_byte_limit(&mut self, bytes: usize) {
        self.byte_limit = bytes;
    }

    /// Bytes of the packets held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The number of a new record.
    pub fn number(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The last record numbered (what a snapshot taken now is current at).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The highest record the backup acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Holding is on.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Packets held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Turns holding on or off; returns whether it changed. Turning it off does not
    /// release anything by itself: take the held packets with [`Holding::take_all`].
    pub fn set_on(&mut self, on: bool) -> bool {
        std::mem::replace(&mut self.on, on) != on
    }

    /// An outbound packet that exposes the state of the last record numbered.
    #[cfg(test)]
    pub fn offer(&mut self, packet: P) -> Offer<P> {
        self.offer_sized(packet, 0)
    }

    /// [`Holding::offer`] for a packet of `size` bytes (counted against the byte
    /// limit while held).
    pub fn offer_sized(&mut self, packet: P, size: usize) -> Offer<P> {
        let required = self.last_seq();
        if !self.on || (required <= self.acked && self.held.is_empty()) {
            return Offer::Pass(packet);
        }
        if self.held.len() >= self.limit || self.bytes.saturating_add(size) > self.byte_limit {
            return Offer::Overflow(packet);
        }
        self.bytes += size;
        self.held.push_back((required, size, packet));
        Offer::Held
    }

    /// The backup applied every record up to `seq` (acknowledgements never go back).
    pub fn handle_ack(&mut self, seq: u64) {
        self.acked = self.acked.max(seq);
    }

    /// The next held packet the acknowledgements cover, in order.
    pub fn poll_released(&mut self) -> Option<P> {
        if self
            .held
            .front()
            .is_some_and(|(required, _, _)| *required <= self.acked)
        {
            return self.held.pop_front().map(|(_, size, packet)| {
                self.bytes -= size;
                packet
            });
        }
        None
    }

    /// Every held packet, in order (to release when holding goes off, or to drop when
    /// this node stops serving).
    pub fn take_all(&mut self) -> impl Iterator<Item = P> {
        self.bytes = 0;
        std::mem::take(&mut self.held)
            .into_iter()
            .map(|(_, _, packet)| packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(h: &mut Holding<u32>) -> Vec<u32> {
        std::iter::from_fn(|| h.poll_released()).collect()
    }

    #[test]
    fn held_packets_leave_in_order_under_out_of_order_acks() {
        let mut h = Holding::new(1, 100);
        h.set_on(true);
        h.number(); // record 1
        assert_eq!(h.offer(10), Offer::Held);
        h.number(); // record 2
        h.number(); // record 3
        assert_eq!(h.offer(11), Offer::Held);
        assert_eq!(h.offer(12), Offer::Held);
        h.number(); // record 4
        assert_eq!(h.offer(13), Offer::Held);
        // The ack for 3 overtakes the one for 1: 10, 11 and 12 leave, in order.
        h.handle_ack(3);
        assert_eq!(released(&mut h), vec![10, 11, 12]);
        // A late, lower ack changes nothing.
        h.handle_ack(1);
        assert_eq!((h.acked(), released(&mut h)), (3, Vec::<u32>::new()));
        h.handle_ack(4);
        assert_eq!(released(&mut h), vec![13]);
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn a_packet_whose_record_is_acked_still_waits_behind_held_ones() {
        let mut h = Holding::new(1, 100);
        h.set_on(true);
        h.number(); // record 1
        assert_eq!(h.offer(1), Offer::Held);
        // No new record: packet 2 requires record 1 too, and must not overtake 1.
        h.handle_ack(0);
        assert_eq!(h.offer(2), Offer::Held);
        h.handle_ack(1);
        assert_eq!(released(&mut h), vec![1, 2]);
        // Nothing held and its record acknowledged: straight through.
        assert_eq!(h.offer(3), Offer::Pass(3));
    }

    #[test]
    fn async_mode_passes_everything_at_once() {
        let mut h = Holding::new(7, 100);
        assert!(!h.is_on());
        assert_eq!(h.number(), 7);
        assert_eq!(h.offer(1), Offer::Pass(1));
        assert_eq!(h.last_seq(), 7);
        assert_eq!(h.acked(), 6);
    }

    #[test]
    fn turning_holding_off_hands_back_every_held_packet_in_order() {
        let mut h = Holding::new(1, 100);
        assert!(h.set_on(true));
        assert!(!h.set_on(true));
        for packet in 0..5 {
            h.number();
            assert_eq!(h.offer(packet), Offer::Held);
        }
        assert!(h.set_on(false));
        assert_eq!(h.take_all().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        h.number();
        assert_eq!(h.offer(5), Offer::Pass(5));
    }

    #[test]
    fn a_full_hold_drops_new_packets_and_keeps_the_old_ones() {
        let mut h = Holding::new(1, 2);
        h.set_on(true);
        h.number();
        assert_eq!(h.offer(1), Offer::Held);
        assert_eq!(h.offer(2), Offer::Held);
        assert_eq!(h.offer(3), Offer::Overflow(3));
        assert_eq!(h.len(), 2);
        h.handle_ack(1);
        assert_eq!(released(&mut h), vec![1, 2]);
    }

    #[test]
    fn a_demoted_node_drops_what_it_held() {
        let mut h = Holding::new(1, 100);
        h.set_on(true);
        h.number();
        assert_eq!(h.offer(1), Offer::Held);
        // The caller drops what take_all hands back (never acknowledged by the backup).
        let dropped: Vec<u32> = h.take_all().collect();
        assert_eq!(dropped, vec![1]);
        h.handle_ack(1);
        assert_eq!(released(&mut h), Vec::<u32>::new());
    }

    #[test]
    fn the_byte_limit_overflows_and_frees_as_packets_leave() {
        let mut h = Holding::new(1, 100);
        h.set_byte_limit(1000);
        h.set_on(true);
        h.number();
        assert_eq!(h.offer_sized(1, 600), Offer::Held);
        assert_eq!(h.offer_sized(2, 600), Offer::Overflow(2));
        assert_eq!(h.offer_sized(3, 400), Offer::Held);
        assert_eq!(h.bytes(), 1000);
        h.handle_ack(1);
        assert_eq!(h.poll_released(), Some(1));
        assert_eq!(h.bytes(), 400);
        h.number();
        assert_eq!(h.offer_sized(4, 600), Offer::Held);
        assert_eq!(h.take_all().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(h.bytes(), 0);
    }
}
