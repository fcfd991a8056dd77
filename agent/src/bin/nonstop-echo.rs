//! `nonstop-echo [--listen ADDR] [--slow-read BYTES:MS]`: the project's echo service,
//! the lab's default service and the workload of tests and benchmarks. Every byte a
//! client sends comes straight back; each connection is logged when it closes. Input
//! is peeked, echoed, and consumed only once its echo is in the send queue, so the
//! service never holds a byte only in its own memory (what a cold switchover could
//! not hand over).
//! `--slow-read` makes it a slow reader (at most BYTES per read, then a pause of MS),
//! so input waits unread in its kernel: what a switchover's drain must cope with.

use std::net::SocketAddr;
use std::time::Duration;

/// Settings from the command line.
struct Args {
    listen: SocketAddr,
    /// (bytes per read, pause after each read).
    slow_read: Option<(usize, Duration)>,
}

const USAGE: &str = "usage: nonstop-echo [--listen ADDR:PORT] [--slow-read BYTES:MS]";
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 7000));
    let mut slow_read = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args.next().ok_or("--listen needs ADDR:PORT")?;
                listen = value
                    .parse()
                    .map_err(|_| format!("`{value}` is not ADDR:PORT"))?;
            }
            "--slow-read" => {
                let value = args.next().ok_or("--slow-read needs BYTES:MS")?;
                let parsed = value
                    .split_once(':')
                    .and_then(|(b, ms)| Some((b.parse::<usize>().ok()?, ms.parse::<u64>().ok()?)))
                    .filter(|(b, _)| *b > 0)
                    .ok_or_else(|| format!("`{value}` is not BYTES:MS (e.g. 64:20)"))?;
                slow_read = Some((parsed.0, Duration::from_millis(parsed.1)));
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args { listen, slow_read })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let Args { listen, slow_read } = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("nonstop-echo: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("nonstop-echo: cannot listen on {listen}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("nonstop-echo: listening on {listen}");
    loop {
        let (mut stream, from) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("nonstop-echo: accept: {e}");
                continue;
            }
        };
        tokio::spawn(async move {
            let (chunk, pause) = slow_read.unwrap_or((64 * 1024, Duration::ZERO));
            let mut buf = vec![0u8; chunk];
            let mut consumed = vec![0u8; chunk];
            let mut total = 0u64;
            // Bytes are only peeked until their echo is in the send queue, then
            // consumed: no byte lives only in this process's memory, so a planned
            // switchover that hands over the socket's queues loses nothing.
            loop {
                let n = match stream.peek(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if stream.writable().await.is_err() {
                    break;
                }
                let written = match stream.try_write(&buf[..n]) {
                    Ok(w) => w,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => break,
                };
                if stream.read_exact(&mut consumed[..written]).await.is_err() {
                    break;
                }
                total += written as u64;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            eprintln!("nonstop-echo: {from} closed after {total} bytes");
        });
    }
}
