//! Listener and per-connection loop of the control API.

use crate::events::EventLog;
use crate::shutdown::Shutdown;
use anyhow::Context;
use futures::{SinkExt, StreamExt};
use nonstop_shared::control::{NodeStatus, Reply, Request, MAX_LINE_LEN};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};

/// A request the control API forwards to the failover driver.
#[derive(Debug)]
pub enum ControlCommand {
    /// Report the node's status.
    Status(oneshot::Sender<NodeStatus>),
    /// Start a planned switchover; the reply says what happens or why not.
    Switchover(oneshot::Sender<Result<String, String>>),
}

/// What every connection task shares.
#[derive(Debug, Clone)]
pub struct ControlHandle {
    /// Channel to the failover driver.
    pub commands: mpsc::Sender<ControlCommand>,
    /// The event log to stream from.
    pub events: Arc<EventLog>,
    /// Lines that could not be parsed, across all connections.
    pub malformed_lines: Arc<AtomicU64>,
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
    for listener in listeners {
        let handle = handle.clone();
        let mut shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, from)) => {
                            let handle = handle.clone();
                            let shutdown = shutdown.clone();
                            tokio::spawn(async move {
                                if let Err(e) = serve_connection(stream, handle, shutdown).await {
                                    tracing::debug!(%from, error = %e, "control connection ended");
                                }
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

async fn serve_connection(
    stream: TcpStream,
    handle: ControlHandle,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut framed = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE_LEN));
    loop {
        let line = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            line = framed.next() => line,
        };
        let line = match line {
            None => return Ok(()),
            Some(Ok(line)) => line,
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                handle.malformed_lines.fetch_add(1, Ordering::Relaxed);
                let message = format!("request line longer than {MAX_LINE_LEN} bytes");
                framed.send(reply_line(&Reply::Error { message })).await?;
                continue;
            }
            Some(Err(LinesCodecError::Io(e))) => return Err(e.into()),
        };
        if line.trim().is_empty() {
            continue;
        }
        let request = match Request::parse_line(&line) {
            Ok(request) => request,
            Err(message) => {
                handle.malformed_lines.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%message, "malformed control line");
                framed.send(reply_line(&Reply::Error { message })).await?;
                continue;
            }
        };
        match request {
            Request::Status => {
                let (tx, rx) = oneshot::channel();
                let reply = match ask(&handle, ControlCommand::Status(tx), rx).await {
                    Ok(status) => Reply::Status(status),
                    Err(message) => Reply::Error { message },
                };
                framed.send(reply_line(&reply)).await?;
            }
            Request::Switchover => {
                let (tx, rx) = oneshot::channel();
                let reply = match ask(&handle, ControlCommand::Switchover(tx), rx).await {
                    Ok(Ok(message)) => Reply::Ack { message },
                    Ok(Err(message)) | Err(message) => Reply::Error { message },
                };
                framed.send(reply_line(&reply)).await?;
            }
            Request::Events => return stream_events(framed, &handle, shutdown).await,
        }
    }
}

async fn ask<T>(
    handle: &ControlHandle,
    command: ControlCommand,
    rx: oneshot::Receiver<T>,
) -> Result<T, String> {
    handle
        .commands
        .send(command)
        .await
        .map_err(|_| "agent is shutting down".to_owned())?;
    rx.await.map_err(|_| "agent is shutting down".to_owned())
}

async fn stream_events(
    mut framed: Framed<TcpStream, LinesCodec>,
    handle: &ControlHandle,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let (history, mut live) = handle.events.subscribe();
    for event in history {
        framed.send(reply_line(&Reply::Event(event))).await?;
    }
    loop {
        tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            // The client may close; reading also notices that.
            incoming = framed.next() => if incoming.is_none() { return Ok(()) },
            event = live.recv() => match event {
                Ok(event) => framed.send(reply_line(&Reply::Event(event))).await?,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let message = format!("event stream lagged: {missed} events dropped");
                    framed.send(reply_line(&Reply::Error { message })).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
        }
    }
}

/// A reply as a line for [`LinesCodec`] (which adds the newline itself).
fn reply_line(reply: &Reply) -> String {
    let mut line = reply.to_line();
    line.pop();
    line
}
