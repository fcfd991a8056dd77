//! The client's check of a `nonstop-kv` session, pure: what one session sends each
//! round and whether each reply is what the protocol says it must be. Used by the
//! drills' `stateful` workload and the lab tests. The oracle is the service's own
//! protocol core ([`Session`]) fed the same requests: every reply is a pure function
//! of the connection's input.
//!
//! A session logs in as `<group>-<n>`, selects namespace `ns-<group>-<n>`, then each
//! round sends `INCR hits` and `WHO`: the counter must go on +1, login and namespace
//! must stay. After a wrong reply the session *resyncs* the next round, as a real
//! client would: `LOGIN`, `USE`, `INCR` (whatever positive count the service has is
//! adopted) and `WHO` — so every later fault is seen again and counted again.

use super::Session;

/// The key every session counts.
pub const KEY: &str = "hits";

/// One request of a round and how its reply is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The line, without its newline.
    pub line: String,
    /// Adopt the service's count (a positive integer) instead of checking it.
    pub adopt: bool,
}

/// One session's expected state.
#[derive(Debug, Clone)]
pub struct KvCheck {
    login: String,
    namespace: String,
    oracle: Session,
    resync: bool,
}

impl KvCheck {
    /// Session `index` of `group`.
    pub fn new(group: &str, index: usize) -> KvCheck {
        KvCheck {
            login: format!("{group}-{index}"),
            namespace: format!("ns-{group}-{index}"),
            oracle: Session::new(),
            resync: false,
        }
    }

    /// The requests that open the session: log in, select the namespace.
    pub fn opening(&self) -> Vec<Request> {
        vec![
            Request {
                line: format!("LOGIN {}", self.login),
                adopt: false,
            },
            Request {
                line: format!("USE {}", self.namespace),
                adopt: false,
            },
        ]
    }

    /// The next round's requests (a resync after a wrong reply).
    pub fn round(&mut self) -> Vec<Request> {
        let plain = |line: String| Request { line, adopt: false };
        if std::mem::take(&mut self.resync) {
            self.oracle = Session::new();
            let mut out = self.opening();
            out.push(Request {
                line: format!("INCR {KEY}"),
                adopt: true,
            });
            out.push(plain("WHO".into()));
            out
        } else {
            vec![plain(format!("INCR {KEY}")), plain("WHO".into())]
        }
    }

    /// Judges the reply (without its newline) to `request`: `Err(expected)` when it
    /// is wrong, after which the next round resyncs.
    pub fn judge(&mut self, request: &Request, reply: &str) -> Result<(), String> {
        if request.adopt {
            if let Some(n) = reply.parse::<i64>().ok().filter(|n| *n >= 1) {
                let _ = self
                    .oracle
                    .handle(format!("SET {KEY} {}", n - 1).as_bytes(), 0);
            }
        }
        let expected = self.oracle.handle(request.line.as_bytes(), 0).line;
        if expected == reply {
            Ok(())
        } else {
            self.resync = true;
            Err(expected)
        }
    }
}

/// The bytes of `requests`, one line each.
pub fn encode(requests: &[Request]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in requests {
        out.extend_from_slice(r.line.as_bytes());
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays a real protocol session as the service: every reply of a session that
    /// keeps its state is right, round after round.
    #[test]
    fn a_service_that_keeps_the_state_is_right_every_round() {
        let mut service = Session::new();
        let mut check = KvCheck::new("web", 7);
        for r in check.opening() {
            let reply = service.handle(r.line.as_bytes(), 0).line;
            assert_eq!(check.judge(&r, &reply), Ok(()));
        }
        for round in 1..=50 {
            let requests = check.round();
            assert_eq!(encode(&requests), b"INCR hits\nWHO\n");
            let replies: Vec<String> = requests
                .iter()
                .map(|r| service.handle(r.line.as_bytes(), 0).line)
                .collect();
            assert_eq!(replies[0], round.to_string());
            assert_eq!(replies[1], "login=web-7 ns=ns-web-7");
            for (r, reply) in requests.iter().zip(&replies) {
                assert_eq!(check.judge(r, reply), Ok(()));
            }
        }
    }

    /// The service restarts (a cold failover): the next round's replies are wrong
    /// (counted), the round after resyncs and is right again, counting on from
    /// whatever the new service has.
    #[test]
    fn a_lost_state_is_caught_then_resynced() {
        let mut service = Session::new();
        let mut check = KvCheck::new("g", 0);
        let play = |service: &mut Session, check: &mut KvCheck| -> usize {
            let requests = check.round();
            requests
                .iter()
                .filter(|r| {
                    let reply = service.handle(r.line.as_bytes(), 0).line;
                    check.judge(r, &reply).is_err()
                })
                .count()
        };
        for r in check.opening() {
            let reply = service.handle(r.line.as_bytes(), 0).line;
            check.judge(&r, &reply).expect("opening");
        }
        assert_eq!(play(&mut service, &mut check), 0);
        assert_eq!(play(&mut service, &mut check), 0);
        let mut fresh = Session::new();
        let wrong = {
            let requests = check.round();
            let mut errors = Vec::new();
            for r in &requests {
                let reply = fresh.handle(r.line.as_bytes(), 0).line;
                if let Err(expected) = check.judge(r, &reply) {
                    errors.push((reply, expected));
                }
            }
            errors
        };
        assert_eq!(
            wrong,
            vec![
                ("ERR login first".to_owned(), "3".to_owned()),
                (
                    "login=- ns=default".to_owned(),
                    "login=g-0 ns=ns-g-0".to_owned()
                ),
            ]
        );
        // Resync: login, namespace, the new service's count adopted, who.
        let requests = check.round();
        assert_eq!(
            encode(&requests),
            b"LOGIN g-0\nUSE ns-g-0\nINCR hits\nWHO\n".to_vec()
        );
        for r in &requests {
            let reply = fresh.handle(r.line.as_bytes(), 0).line;
            assert_eq!(check.judge(r, &reply), Ok(()), "{}", r.line);
        }
        assert_eq!(play(&mut fresh, &mut check), 0);
        // A counter that jumps (someone else's state) is wrong.
        let _ = fresh.handle(b"INCR hits", 0);
        assert_eq!(play(&mut fresh, &mut check), 1);
    }
}
