//! Freezing peers with a zero window for a planned switchover's drain.

use super::*;
use crate::recovery::freeze::{freeze_ack, zero_window};
use crate::tcp::wire::{self, Layout};

#[test]
fn the_freeze_ack_is_a_valid_pure_ack_with_a_zero_window() {
    let s = state();
    let packet = freeze_ack(&s);
    let v = view(&packet);
    assert_eq!(v.window, 0);
    assert_eq!(v.seq, SND_NXT);
    assert_eq!(v.ack, Some(RCV_NXT));
    assert!(v.payload.is_empty());
    assert!(options_of(&v).timestamps.is_some());
    let l = Layout::of(&packet).expect("layout");
    assert_eq!(
        wire::checksum_state(&packet, &l),
        wire::ChecksumState::Valid
    );
}

#[test]
fn zero_window_keeps_everything_else_and_fixes_the_checksum() {
    let s = state();
    let mut segments = crate::recovery::translate::retransmit_segments(&s, 1460, None);
    let mut packet = segments.remove(0);
    let before = view(&packet);
    zero_window(&mut packet).expect("rewrite");
    let after = view(&packet);
    assert_eq!(after.window, 0);
    assert_eq!(
        (after.seq, after.ack, &after.payload),
        (before.seq, before.ack, &before.payload)
    );
    let l = Layout::of(&packet).expect("layout");
    assert_eq!(
        wire::checksum_state(&packet, &l),
        wire::ChecksumState::Valid
    );
}

#[test]
fn garbage_is_refused_untouched() {
    let mut junk = vec![0x45, 0, 0];
    assert!(zero_window(&mut junk).is_err());
    assert_eq!(junk, vec![0x45, 0, 0]);
}
