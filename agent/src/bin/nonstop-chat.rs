//! `nonstop-chat [--listen ADDR]`: the project's chat service. Every line a client
//! sends is broadcast to every connected client (the sender included), prefixed with
//! nothing: clients put their own name in their lines. Used by tests and the demo.

use std::net::SocketAddr;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

/// Longest line relayed; longer ones are cut off at this length.
const MAX_LINE: usize = 4096;

fn parse_listen() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut listen = SocketAddr::from(([0, 0, 0, 0], 7000));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args.next().ok_or("--listen needs ADDR:PORT")?;
                listen = value
                    .parse()
                    .map_err(|_| format!("`{value}` is not ADDR:PORT"))?;
            }
            "-h" | "--help" => return Err("usage: nonstop-chat [--listen ADDR:PORT]".into()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(listen)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let listen = match parse_listen() {
        Ok(listen) => listen,
        Err(e) => {
            eprintln!("nonstop-chat: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("nonstop-chat: cannot listen on {listen}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("nonstop-chat: listening on {listen}");
    let (room, _) = broadcast::channel::<String>(4096);
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("nonstop-chat: accept: {e}");
                continue;
            }
        };
        let room = room.clone();
        // Subscribed at accept time: a client hears every line said after it joined,
        // even one said before its task first runs.
        let mut inbox = room.subscribe();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            eprintln!("nonstop-chat: {from} joined");
            loop {
                tokio::select! {
                    line = lines.next_line() => match line {
                        Ok(Some(mut line)) => {
                            line.truncate(MAX_LINE);
                            let _ = room.send(line);
                        }
                        _ => break,
                    },
                    said = inbox.recv() => match said {
                        Ok(line) => {
                            if write.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                                break;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            eprintln!("nonstop-chat: {from} too slow, {n} lines dropped");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
            eprintln!("nonstop-chat: {from} left");
        });
    }
}
