//! Issue 14, acceptance 1: a stateful service's per-connection state through every
//! kind of failover. `nonstop-kv` runs under both agents; 256 sessions each log in,
//! select their own namespace and count (`INCR`, `WHO` every 20 ms), every reply
//! judged against the protocol; a switchover, the way back, a crash of the master
//! host, its rejoin and another failover ([`failover_scenario`]).
//!
//! In cold mode (today's default) the sockets survive every step but the state does
//! not: each failover lands the sessions in a service that never saw their `LOGIN`,
//! so the replies after it are wrong — asserted here, so that the hot version of the
//! same scenario (`failover_scenario(.., Replica::Hot, ..)` then
//! `assert_state_survived()`) cannot pass vacuously.
//!
//! Needs root (network namespaces), like every lab test.

use nonstop_e2e::kv::{failover_scenario, Replica, PHASES};
use nonstop_e2e::require_root;

const SESSIONS: usize = 256;

#[test]
fn cold_mode_keeps_the_sockets_but_loses_the_state_at_every_failover() {
    if !require_root() {
        return;
    }
    let s = failover_scenario("kvcold", Replica::Cold, SESSIONS);
    eprintln!("{}", s.describe());
    let f = &s.figures;
    // The check itself is sound: before any fault every reply is right.
    assert_eq!(f.wrong.first().copied(), Some(0), "{}", s.describe());
    assert!(f.right > 0);
    // The sockets survive (the part cold mode does give).
    s.assert_sessions_unbroken();
    // Each failover loses every session's login, namespace and counter, and the
    // client sees it; the rejoin of a backup changes nothing for the sessions.
    for (p, name) in PHASES.iter().enumerate().skip(1) {
        let wrong_sessions = f.wrong_sessions.get(p).map_or(0, |s| s.len());
        if p == 4 {
            assert_eq!(
                wrong_sessions,
                0,
                "{name}: no failover, no loss\n{}",
                s.describe()
            );
        } else {
            assert_eq!(
                wrong_sessions,
                SESSIONS,
                "{name}: every session must see its state lost\n{}",
                s.describe()
            );
        }
    }
    // What the loss looks like: the new service does not know the login.
    assert!(
        f.examples
            .iter()
            .any(|(p, _, what)| *p == 1 && what.contains("answered \"ERR login first\"")),
        "{}",
        s.describe()
    );
}
