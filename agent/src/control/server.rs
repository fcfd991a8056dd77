//! Listener and per-connection loop of the control API.
//!
//! Every connection starts with the challenge–response handshake of
//! `nonstop_shared::auth`: the agent sends a fresh nonce, the console answers with an
//! HMAC over both nonces under the control subkey, the agent proves the key in turn.
//! Until then no request is served; a connection that fails is counted
//! (`control_rejected`) and closed. At most [`MAX_CONNECTIONS`] are served at once.

use crate::events::EventLog;
use crate::shutdown::Shutdown;
use crate::switchover;
use anyhow::Context;
use nonstop_shared::auth::{self, Key, NONCE_LEN};
use nonstop_shared::control::{NodeStatus, Reply, Request, MAX_LINE_LEN};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};

/// Most control connections served at once; more are refused with an error line.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a new connection has to authenticate.
pub const AUTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A request the control API forwards to the failover driver.
#[derive(Debug)]
pub enum ControlCommand {
    /// Report the node's status.
    Status(oneshot::Sender<NodeStatus>),
    /// Start a planned switchover; the reply says what happens or why not.
    Switchover(oneshot::Sender<Result<String, String>>),
    /// The service's health check verdict (carried in heartbeats).
    SetHealth(bool),
}

/// What every connection task shares.
#[derive(Clone)]
pub struct ControlHandle {
    /// Channel to the failover driver.
    pub commands: mpsc::Sender<ControlCommand>,
    /// The event log to stream from.
    pub events: Arc<EventLog>,
    /// The pre-shared key.
    pub key: Key,
    /// Every manager's part of the status (and the control API's own counters:
    /// malformed lines, rejected connections).
    pub status: crate::status::StatusSources,
    /// Fault injection on this host.
    pub injector: crate::inject::Injector,
    /// Notify hook counters.
    pub hooks: Arc<crate::host::hooks::HookStats>,
    /// The health check's view (`None` inside when none is configured).
    pub check: Option<tokio::sync::watch::Receiver<Option<nonstop_shared::control::CheckView>>>,
    /// The effective settings `settings` reports.
    pub settings: Arc<nonstop_shared::settings::Settings>,
}

/// A planned switchover ([`crate::switchover::run`]) as a reply. Used by the
/// `switchover` request and by the health check's handover.
pub async fn switchover(handle: &ControlHandle) -> Reply {
    match switchover::run(&handle.commands, handle.status.sessions.as_ref()).await {
        Ok(message) => Reply::Ack { message },
        Err(message) => Reply::Error { message },
    }
}

/// Listens on every address and serves connections until shutdown.
pub async fn serve(
    addrs: &[SocketAddr],
    handle: ControlHandle,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    for addr in addrs {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("control API cannot listen on {addr}"))?;
        tracing::info!(%addr, "control API listening");
        listeners.push(listener);
    }
    let mut tasks = tokio::task::JoinSet::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    for listener in listeners {
        let handle = handle.clone();
        let mut shutdown = shutdown.clone();
        let slots = Arc::clone(&slots);
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((mut stream, from)) => {
                            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                                handle.status.control_rejected.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(%from, "too many control connections; refused");
                                let message = format!("too many control connections (limit {MAX_CONNECTIONS})");
                                let _ = stream.write_all(Reply::Error { message }.to_line().as_bytes()).await;
                                continue;
                            };
                            let handle = handle.clone();
                            let shutdown = shutdown.clone();
                            tokio::spawn(async move {
                                if let Err(e) = serve_connection(stream, handle, shutdown).await {
                                    tracing::debug!(%from, error = %e, "control connection ended");
                                }
                                drop(slot);
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "control accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One line read under a length limit.
#[derive(Debug, PartialEq, Eq)]
enum LineRead {
    /// A complete line, without its newline.
    Line(String),
    /// A line longer than the limit; its bytes were discarded up to the newline.
    TooLong,
    /// Invalid UTF-8.
    NotUtf8,
    /// The peer closed the connection.
    Eof,
}

/// Reads one newline-terminated line of at most `max` bytes. Over-long lines are
/// skipped to their end without buffering them, so a hostile client cannot make the
/// agent allocate more than `max` bytes per connection.
async fn read_bounded_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<LineRead> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            // EOF: a final unterminated line still counts.
            return Ok(if too_long {
                LineRead::TooLong
            } else if line.is_empty() {
                LineRead::Eof
            } else {
                to_line(line)
            });
        }
        let (part, found) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if !too_long && line.len() + part.len() <= max {
            line.extend_from_slice(part);
        } else {
            too_long = true;
            line.clear();
        }
        let consumed = found.unwrap_or(chunk.len());
        reader.consume(consumed);
        if found.is_some() {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                to_line(line)
            });
        }
    }
}

fn to_line(bytes: Vec<u8>) -> LineRead {
    match String::from_utf8(bytes) {
        Ok(mut line) => {
            if line.ends_with('\r') {
                line.pop();
            }
            LineRead::Line(line)
        }
        Err(_) => LineRead::NotUtf8,
    }
}

async fn serve_connection(
    stream: TcpStream,
    handle: ControlHandle,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let from = stream.peer_addr().ok();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let authenticated = tokio::select! {
        _ = shutdown.wait() => return Ok(()),
        done = tokio::time::timeout(AUTH_TIMEOUT, authenticate(&mut reader, &mut write, &handle.key)) => match done {
            Ok(result) => result?,
            Err(_) => Err("authentication timed out".to_owned()),
        },
    };
    if let Err(message) = authenticated {
        handle
            .status
            .control_rejected
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(?from, %message, "control connection refused");
        send(&mut write, &Reply::Error { message }).await?;
        return Ok(());
    }
    loop {
        let read = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            read = read_bounded_line(&mut reader, MAX_LINE_LEN) => read?,
        };
        let line = match read {
            LineRead::Eof => return Ok(()),
            LineRead::Line(line) => line,
            LineRead::TooLong | LineRead::NotUtf8 => {
                handle
                    .status
                    .malformed_control_lines
                    .fetch_add(1, Ordering::Relaxed);
                let message = if read == LineRead::TooLong {
                    format!("request line longer than {MAX_LINE_LEN} bytes")
                } else {
                    "request line is not UTF-8".to_owned()
                };
                send(&mut write, &Reply::Error { message }).await?;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let request = match Request::parse_line(&line) {
            Ok(request) => request,
            Err(message) => {
                handle
                    .status
                    .malformed_control_lines
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%message, "malformed control line");
                send(&mut write, &Reply::Error { message }).await?;
                continue;
            }
        };
        match request {
            Request::Status => {
                let reply = match switchover::ask(&handle.commands, ControlCommand::Status).await {
                    Ok(status) => {
                        let mut status = handle.status.assemble(status);
                        status.counters.inject_refused = handle.injector.refused();
                        status.counters.hooks_failed =
                            handle.hooks.failures.load(Ordering::Relaxed);
                        status.check = handle.check.as_ref().and_then(|c| c.borrow().clone());
                        Reply::Status(status)
                    }
                    Err(message) => Reply::Error { message },
                };
                send(&mut write, &reply).await?;
            }
            Request::Switchover => {
                let reply = switchover(&handle).await;
                send(&mut write, &reply).await?;
            }
            Request::Sessions => {
                let reply = match &handle.status.sessions {
                    Some(view) => Reply::Sessions(view.list().await),
                    None => Reply::Error {
                        message: "the session manager is not running".into(),
                    },
                };
                send(&mut write, &reply).await?;
            }
            Request::Inject { fault } => {
                let reply = match handle.injector.inject(&fault).await {
                    Ok(message) => {
                        handle
                            .events
                            .emit(nonstop_shared::control::EventKind::Injected { fault });
                        Reply::Ack { message }
                    }
                    Err(message) => Reply::Error { message },
                };
                send(&mut write, &reply).await?;
            }
            Request::Settings => {
                let reply = Reply::Settings((*handle.settings).clone());
                send(&mut write, &reply).await?;
            }
            Request::Events => return stream_events(reader, write, &handle, shutdown).await,
            Request::Auth { .. } => {
                let message = "already authenticated".to_owned();
                send(&mut write, &Reply::Error { message }).await?;
            }
        }
    }
}

/// The agent's side of the handshake. `Ok(Err(why))` means the client failed it.
async fn authenticate<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    write: &mut OwnedWriteHalf,
    key: &Key,
) -> std::io::Result<Result<(), String>> {
    let server_nonce: [u8; NONCE_LEN] = match auth::random_bytes() {
        Ok(nonce) => nonce,
        Err(e) => return Ok(Err(format!("agent has no random nonce: {e}"))),
    };
    let challenge = Reply::Challenge {
        version: auth::CONTROL_AUTH_VERSION,
        nonce: hex_encode(&server_nonce),
    };
    write.write_all(challenge.to_line().as_bytes()).await?;
    let line = match read_bounded_line(reader, MAX_LINE_LEN).await? {
        LineRead::Line(line) => line,
        LineRead::Eof => return Ok(Err("closed before authenticating".into())),
        LineRead::TooLong | LineRead::NotUtf8 => {
            return Ok(Err("authentication failed: malformed line".into()))
        }
    };
    match check_auth_line(&line, &server_nonce, key) {
        Ok(mac) => {
            write
                .write_all(Reply::Authenticated { mac }.to_line().as_bytes())
                .await?;
            Ok(Ok(()))
        }
        Err(why) => Ok(Err(why)),
    }
}

/// Checks the console's `auth` line against our nonce; returns our proof (hex).
fn check_auth_line(
    line: &str,
    server_nonce: &[u8; NONCE_LEN],
    key: &Key,
) -> Result<String, String> {
    let (nonce, mac) = match Request::parse_line(line) {
        Ok(Request::Auth { nonce, mac }) => (nonce, mac),
        Ok(_) => return Err("authentication required: answer the challenge first".into()),
        Err(_) => return Err("authentication failed: malformed auth line".into()),
    };
    let client_nonce = auth::parse_nonce(&nonce).ok_or("authentication failed: bad nonce")?;
    if client_nonce == *server_nonce {
        return Err("authentication failed: reflected nonce".into());
    }
    if !auth::control_verify(key, true, server_nonce, &client_nonce, &mac) {
        return Err("authentication failed: wrong key".into());
    }
    Ok(auth::control_server_mac(key, server_nonce, &client_nonce))
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn send(write: &mut OwnedWriteHalf, reply: &Reply) -> std::io::Result<()> {
    write.write_all(reply.to_line().as_bytes()).await
}

async fn stream_events<R: AsyncBufRead + Unpin>(
    mut reader: R,
    mut write: OwnedWriteHalf,
    handle: &ControlHandle,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let (history, mut live) = handle.events.subscribe();
    for event in history {
        send(&mut write, &Reply::Event(event)).await?;
    }
    loop {
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            // The client may close; reading also notices that. Anything it sends on a
            // stream is ignored.
            read = read_bounded_line(&mut reader, MAX_LINE_LEN) => {
                if matches!(read, Ok(LineRead::Eof) | Err(_)) {
                    return Ok(());
                }
            }
            event = live.recv() => match event {
                Ok(event) => send(&mut write, &Reply::Event(event)).await?,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let message = format!("event stream lagged: {missed} events dropped");
                    send(&mut write, &Reply::Error { message }).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<LineRead> {
        let mut reader = BufReader::with_capacity(7, input);
        let mut out = Vec::new();
        loop {
            let read = read_bounded_line(&mut reader, max)
                .await
                .expect("in-memory read");
            let eof = read == LineRead::Eof;
            out.push(read);
            if eof {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn bounded_lines_skip_overlong_ones_and_keep_going() {
        let input = b"short\r\nthis one is far too long\nok\n\xff\xfe\nlast";
        assert_eq!(
            lines(input, 10).await,
            [
                LineRead::Line("short".into()),
                LineRead::TooLong,
                LineRead::Line("ok".into()),
                LineRead::NotUtf8,
                LineRead::Line("last".into()),
                LineRead::Eof,
            ]
        );
    }

    fn key() -> Key {
        Key::from_bytes(b"0123456789abcdef0123456789abcdef").expect("key")
    }

    #[test]
    fn auth_line_must_answer_this_challenge_with_this_key() {
        let server = [1u8; NONCE_LEN];
        let client = [2u8; NONCE_LEN];
        let good = Request::Auth {
            nonce: hex_encode(&client),
            mac: auth::control_client_mac(&key(), &server, &client),
        };
        let proof = check_auth_line(good.to_line().trim(), &server, &key()).expect("valid");
        assert!(auth::control_verify(
            &key(),
            false,
            &server,
            &client,
            &proof
        ));
        // Another challenge (a replayed login), another key, no auth, reflection.
        assert!(check_auth_line(good.to_line().trim(), &[3; NONCE_LEN], &key()).is_err());
        let other = Key::from_bytes(b"another key that is long enough!!").expect("key");
        assert!(check_auth_line(good.to_line().trim(), &server, &other)
            .unwrap_err()
            .contains("wrong key"));
        assert!(check_auth_line("{\"cmd\":\"switchover\"}", &server, &key())
            .unwrap_err()
            .contains("authentication required"));
        assert!(check_auth_line("garbage", &server, &key()).is_err());
        let reflected = Request::Auth {
            nonce: hex_encode(&server),
            mac: auth::control_client_mac(&key(), &server, &server),
        };
        assert!(check_auth_line(reflected.to_line().trim(), &server, &key())
            .unwrap_err()
            .contains("reflected"));
        let short = Request::Auth {
            nonce: "abcd".into(),
            mac: "00".into(),
        };
        assert!(check_auth_line(short.to_line().trim(), &server, &key()).is_err());
    }

    #[tokio::test]
    async fn exactly_max_is_accepted() {
        assert_eq!(
            lines(b"abcde\nabcdef\n", 5).await,
            [
                LineRead::Line("abcde".into()),
                LineRead::TooLong,
                LineRead::Eof
            ]
        );
    }
}
