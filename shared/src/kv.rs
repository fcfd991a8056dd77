//! The line protocol of `nonstop-kv`, the project's stateful test service, as a
//! sans-IO core: [`Session`] takes one request line and returns the reply; [`Lines`]
//! splits a byte stream into bounded lines. The service (`agent/src/bin/nonstop-kv.rs`)
//! drives them over TCP; drills and tests run a [`Session`] of their own next to each
//! connection as the oracle of what every reply must be ([`check`]).
//!
//! Every reply is a pure function of the connection's own input (except `TIME`), so a
//! hot replica that receives the same bytes answers the same, and a replica that lost
//! the connection's state answers differently (the counter starts again, the login
//! and the namespace are gone) — which a client can see.
//!
//! | request            | reply                              | needs login |
//! |--------------------|------------------------------------|-------------|
//! | `PING`             | `PONG`                             | no          |
//! | `LOGIN name`       | `OK name`                          | no          |
//! | `USE ns`           | `OK ns`                            | yes         |
//! | `WHO`              | `login=NAME ns=NS` (`login=-` before `LOGIN`) | no |
//! | `INCR key`         | the key's new value (`1` first)    | yes         |
//! | `SET key value…`   | `OK`                               | yes         |
//! | `GET key`          | `VALUE value…` or `NIL`            | yes         |
//! | `DEL key`          | `1` (was there) or `0`             | yes         |
//! | `TIME`             | unix time in ms (nondeterministic) | no          |
//! | `SLOW ms`          | `OK slow ms` (then read slowly)    | no          |
//! | `QUIT`             | `BYE`, then the service closes     | no          |
//!
//! Keys and values live per namespace, per connection (the namespace `default` until
//! `USE`), at most [`MAX_KEYS`] keys and [`MAX_SESSION_BYTES`] bytes per connection.
//! Names, namespaces and keys are 1–64 of `[A-Za-z0-9_.:-]`. Anything wrong is
//! answered with one line `ERR reason`, never by closing the connection; a line
//! longer than [`MAX_LINE`] is answered `ERR line too long` once and skipped.

use std::collections::BTreeMap;

pub mod check;

/// Longest request line, without its newline.
pub const MAX_LINE: usize = 4096;
/// Longest name, namespace or key.
pub const MAX_NAME: usize = 64;
/// Longest value of `SET`.
pub const MAX_VALUE: usize = 1024;
/// Most keys one connection may hold, over all its namespaces.
pub const MAX_KEYS: usize = 1024;
/// Most bytes (namespaces, keys and values) one connection may hold.
pub const MAX_SESSION_BYTES: usize = 64 * 1024;
/// Longest `SLOW` pause, milliseconds.
pub const MAX_SLOW_MS: u64 = 10_000;
/// The namespace before any `USE`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What the service does with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply line, without its newline.
    pub line: String,
    /// Close the connection after sending it (`QUIT`).
    pub close: bool,
}

impl Reply {
    fn line(line: impl Into<String>) -> Reply {
        Reply {
            line: line.into(),
            close: false,
        }
    }

    fn err(reason: impl std::fmt::Display) -> Reply {
        Reply::line(format!("ERR {reason}"))
    }
}

/// One connection's state: its login, its namespace, its keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    login: Option<String>,
    namespace: Option<String>,
    /// (namespace, key) → value.
    data: BTreeMap<(String, String), String>,
    /// Bytes held in `data` (namespaces, keys and values).
    used: usize,
    slow_ms: u64,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

impl Session {
    /// A fresh connection: not logged in, namespace `default`, no keys.
    pub fn new() -> Session {
        Session::default()
    }

    /// The login, if any.
    pub fn login(&self) -> Option<&str> {
        self.login.as_deref()
    }

    /// The selected namespace.
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The pause after each request the service should make (`SLOW`), milliseconds.
    pub fn slow_ms(&self) -> u64 {
        self.slow_ms
    }

    /// Answers one request line (without its newline; a trailing `\r` is ignored).
    /// `now_unix_ms` is only used by `TIME`.
    pub fn handle(&mut self, line: &[u8], now_unix_ms: u64) -> Reply {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Ok(text) = std::str::from_utf8(line) else {
            return Reply::err("request is not UTF-8");
        };
        let text = text.trim();
        if text.is_empty() {
            return Reply::err("empty request");
        }
        let (command, rest) = match text.split_once(' ') {
            Some((c, r)) => (c, r.trim_start()),
            None => (text, ""),
        };
        let args: Vec<&str> = rest.split_whitespace().collect();
        let command = command.to_ascii_uppercase();
        let needs_login = matches!(command.as_str(), "USE" | "INCR" | "SET" | "GET" | "DEL");
        if needs_login && self.login.is_none() {
            return Reply::err("login first");
        }
        let arity = |n: usize, usage: &str| -> Result<(), Reply> {
            if args.len() == n {
                Ok(())
            } else {
                Err(Reply::err(format!("usage: {usage}")))
            }
        };
        let name = |s: &str, what: &str| -> Result<String, Reply> {
            if valid_name(s) {
                Ok(s.to_owned())
            } else {
                Err(Reply::err(format!(
                    "bad {what}: 1-{MAX_NAME} of A-Z a-z 0-9 _ . : -"
                )))
            }
        };
        let result: Result<Reply, Reply> = (|| match command.as_str() {
            "PING" => {
                arity(0, "PING")?;
                Ok(Reply::line("PONG"))
            }
            "LOGIN" => {
                arity(1, "LOGIN name")?;
                let login = name(args[0], "name")?;
                let reply = Reply::line(format!("OK {login}"));
                self.login = Some(login);
                Ok(reply)
            }
            "USE" => {
                arity(1, "USE namespace")?;
                let ns = name(args[0], "namespace")?;
                let reply = Reply::line(format!("OK {ns}"));
                self.namespace = Some(ns);
                Ok(reply)
            }
            "WHO" => {
                arity(0, "WHO")?;
                Ok(Reply::line(format!(
                    "login={} ns={}",
                    self.login().unwrap_or("-"),
                    self.namespace()
                )))
            }
            "INCR" => {
                arity(1, "INCR key")?;
                let key = self.key(name(args[0], "key")?);
                let next = match self.data.get(&key) {
                    None => 1,
                    Some(v) => v
                        .parse::<i64>()
                        .map_err(|_| Reply::err("value is not an integer"))?
                        .checked_add(1)
                        .ok_or_else(|| Reply::err("counter overflow"))?,
                };
                self.store(key, next.to_string())?;
                Ok(Reply::line(next.to_string()))
            }
            "SET" => {
                let usage = || Reply::err("usage: SET key value");
                let (key, value) = rest.split_once(' ').ok_or_else(usage)?;
                let value = value.trim();
                if value.is_empty() {
                    return Err(usage());
                }
                if value.len() > MAX_VALUE {
                    return Err(Reply::err(format!("value longer than {MAX_VALUE} bytes")));
                }
                let key = self.key(name(key, "key")?);
                self.store(key, value.to_owned())?;
                Ok(Reply::line("OK"))
            }
            "GET" => {
                arity(1, "GET key")?;
                let key = self.key(name(args[0], "key")?);
                Ok(match self.data.get(&key) {
                    Some(v) => Reply::line(format!("VALUE {v}")),
                    None => Reply::line("NIL"),
                })
            }
            "DEL" => {
                arity(1, "DEL key")?;
                let key = self.key(name(args[0], "key")?);
                Ok(Reply::line(match self.data.remove(&key) {
                    Some(old) => {
                        self.used -= key.0.len() + key.1.len() + old.len();
                        "1"
                    }
                    None => "0",
                }))
            }
            "TIME" => {
                arity(0, "TIME")?;
                Ok(Reply::line(now_unix_ms.to_string()))
            }
            "SLOW" => {
                arity(1, "SLOW ms")?;
                let ms = args[0]
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms <= MAX_SLOW_MS)
                    .ok_or_else(|| Reply::err(format!("usage: SLOW ms (0-{MAX_SLOW_MS})")))?;
                self.slow_ms = ms;
                Ok(Reply::line(format!("OK slow {ms}")))
            }
            "QUIT" => {
                arity(0, "QUIT")?;
                Ok(Reply {
                    line: "BYE".into(),
                    close: true,
                })
            }
            _ => Err(Reply::err(format!(
                "unknown command {}",
                command.chars().take(MAX_NAME).collect::<String>()
            ))),
        })();
        result.unwrap_or_else(|e| e)
    }

    fn key(&self, key: String) -> (String, String) {
        (self.namespace().to_owned(), key)
    }

    fn store(&mut self, key: (String, String), value: String) -> Result<(), Reply> {
        let old = self.data.get(&key).map(|v| v.len());
        if old.is_none() && self.data.len() >= MAX_KEYS {
            return Err(Reply::err(format!("more than {MAX_KEYS} keys")));
        }
        let used = match old {
            Some(old) => self.used - old + value.len(),
            None => self.used + key.0.len() + key.1.len() + value.len(),
        };
        if used > MAX_SESSION_BYTES {
            return Err(Reply::err(format!(
                "more than {MAX_SESSION_BYTES} bytes stored"
            )));
        }
        self.used = used;
        self.data.insert(key, value);
        Ok(())
    }
}

/// One item of a byte stream split into lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its newline.
    Complete(Vec<u8>),
    /// A line longer than the limit began (its rest is skipped up to its newline).
    TooLong,
}

/// Splits a byte stream into lines of at most `max` bytes, holding at most `max`
/// bytes of an unfinished line.
#[derive(Debug, Clone)]
pub struct Lines {
    max: usize,
    partial: Vec<u8>,
    /// Inside a line that was too long: skip up to its newline.
    skipping: bool,
}

impl Lines {
    /// A splitter for lines of at most `max` bytes.
    pub fn new(max: usize) -> Lines {
        Lines {
            max,
            partial: Vec::new(),
            skipping: false,
        }
    }

    /// Bytes of an unfinished line held.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Feeds bytes; returns the lines they complete, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let (chunk, rest, ends) = match newline {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if self.skipping {
                self.skipping = !ends;
                continue;
            }
            if self.partial.len() + chunk.len() > self.max {
                self.partial.clear();
                self.skipping = !ends;
                out.push(Line::TooLong);
                continue;
            }
            self.partial.extend_from_slice(chunk);
            if ends {
                out.push(Line::Complete(std::mem::take(&mut self.partial)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &mut Session, line: &str) -> String {
        s.handle(line.as_bytes(), 42).line
    }

    #[test]
    fn a_session_keeps_login_namespace_and_counters() {
        let mut s = Session::new();
        assert_eq!(run(&mut s, "WHO"), "login=- ns=default");
        assert_eq!(run(&mut s, "INCR hits"), "ERR login first");
        assert_eq!(run(&mut s, "LOGIN alice"), "OK alice");
        assert_eq!(run(&mut s, "INCR hits"), "1");
        assert_eq!(run(&mut s, "INCR hits"), "2");
        assert_eq!(run(&mut s, "USE shop"), "OK shop");
        assert_eq!(run(&mut s, "WHO"), "login=alice ns=shop");
        assert_eq!(run(&mut s, "INCR hits"), "1", "counters are per namespace");
        assert_eq!(run(&mut s, "use default"), "OK default");
        assert_eq!(run(&mut s, "incr hits\r"), "3");
        assert_eq!(run(&mut s, "SET greeting hello  world"), "OK");
        assert_eq!(run(&mut s, "GET greeting"), "VALUE hello  world");
        assert_eq!(run(&mut s, "INCR greeting"), "ERR value is not an integer");
        assert_eq!(run(&mut s, "DEL greeting"), "1");
        assert_eq!(run(&mut s, "DEL greeting"), "0");
        assert_eq!(run(&mut s, "GET greeting"), "NIL");
        assert_eq!(run(&mut s, "SET n 9223372036854775807"), "OK");
        assert_eq!(run(&mut s, "INCR n"), "ERR counter overflow");
        assert_eq!(s.login(), Some("alice"));
        assert_eq!(s.namespace(), "default");
    }

    #[test]
    fn replies_are_a_function_of_the_input_except_time() {
        let script = ["LOGIN bob", "USE a", "INCR k", "SET v 1", "INCR v", "WHO"];
        let (mut one, mut two) = (Session::new(), Session::new());
        for line in script {
            assert_eq!(
                one.handle(line.as_bytes(), 1),
                two.handle(line.as_bytes(), 2)
            );
        }
        assert_eq!(one, two);
        assert_eq!(run(&mut one, "TIME"), "42");
        assert_ne!(one.handle(b"TIME", 1), two.handle(b"TIME", 2));
    }

    #[test]
    fn bad_requests_get_an_error_line() {
        let mut s = Session::new();
        assert_eq!(run(&mut s, ""), "ERR empty request");
        assert_eq!(run(&mut s, "   "), "ERR empty request");
        assert_eq!(run(&mut s, "FLY away"), "ERR unknown command FLY");
        assert_eq!(run(&mut s, "LOGIN"), "ERR usage: LOGIN name");
        assert_eq!(run(&mut s, "LOGIN a b"), "ERR usage: LOGIN name");
        assert!(run(&mut s, "LOGIN a/b").starts_with("ERR bad name"));
        assert!(run(&mut s, &format!("LOGIN {}", "x".repeat(65))).starts_with("ERR bad name"));
        assert_eq!(run(&mut s, "PING extra"), "ERR usage: PING");
        assert_eq!(s.handle(b"\xff\xfe", 0).line, "ERR request is not UTF-8");
        assert_eq!(run(&mut s, "LOGIN carol"), "OK carol");
        assert_eq!(run(&mut s, "SET k"), "ERR usage: SET key value");
        assert_eq!(
            run(&mut s, &format!("SET k {}", "v".repeat(MAX_VALUE + 1))),
            "ERR value longer than 1024 bytes"
        );
        assert_eq!(run(&mut s, "SLOW 99999"), "ERR usage: SLOW ms (0-10000)");
        assert_eq!(run(&mut s, "SLOW 20"), "OK slow 20");
        assert_eq!(s.slow_ms(), 20);
        assert_eq!(run(&mut s, "PING"), "PONG");
        let bye = s.handle(b"QUIT", 0);
        assert_eq!((bye.line.as_str(), bye.close), ("BYE", true));
    }

    #[test]
    fn keys_are_bounded() {
        let mut s = Session::new();
        run(&mut s, "LOGIN d");
        for i in 0..MAX_KEYS {
            assert_eq!(run(&mut s, &format!("INCR k{i}")), "1");
        }
        assert_eq!(run(&mut s, "INCR another"), "ERR more than 1024 keys");
        assert_eq!(run(&mut s, "INCR k0"), "2", "existing keys still change");
        assert_eq!(run(&mut s, "DEL k0"), "1");
        assert_eq!(run(&mut s, "INCR another"), "1");
        let mut s = Session::new();
        run(&mut s, "LOGIN e");
        let big = "v".repeat(MAX_VALUE);
        let mut stored = 0;
        while run(&mut s, &format!("SET k{stored} {big}")) == "OK" {
            stored += 1;
        }
        assert_eq!(stored, 63, "64 KiB of 1 KiB values with their keys");
        assert_eq!(
            run(&mut s, &format!("SET k{stored} {big}")),
            "ERR more than 65536 bytes stored"
        );
        assert_eq!(run(&mut s, "SET k0 small"), "OK", "a smaller value fits");
        assert_eq!(run(&mut s, "DEL k1"), "1");
        assert_eq!(run(&mut s, &format!("SET k{stored} {big}")), "OK");
    }

    #[test]
    fn lines_are_split_and_bounded() {
        let mut l = Lines::new(8);
        assert_eq!(l.feed(b"PI"), vec![]);
        assert_eq!(l.pending(), 2);
        assert_eq!(
            l.feed(b"NG\nWHO\nIN"),
            vec![
                Line::Complete(b"PING".to_vec()),
                Line::Complete(b"WHO".to_vec())
            ]
        );
        // Too long: reported once, skipped up to its newline, the next line is fine.
        assert_eq!(l.feed(b"CR 12345"), vec![Line::TooLong]);
        assert_eq!(l.pending(), 0);
        assert_eq!(l.feed(b"6789"), vec![]);
        assert_eq!(l.feed(b"0\nPING\n"), vec![Line::Complete(b"PING".to_vec())]);
        assert_eq!(
            l.feed(b"123456789\n\n"),
            vec![Line::TooLong, Line::Complete(vec![])]
        );
        assert_eq!(
            l.feed(b"12345678\n"),
            vec![Line::Complete(b"12345678".to_vec())]
        );
    }
}
