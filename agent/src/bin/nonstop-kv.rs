//! `nonstop-kv [--listen ADDR] [--max-connections N]`: the project's stateful test
//! service. Each connection keeps a login, a selected namespace, counters and values
//! in memory and answers a line protocol (`LOGIN`, `USE`, `INCR`, `SET`, `GET`,
//! `WHO`, `TIME`, `SLOW`, …; see `nonstop_shared::kv`, whose sans-IO `Session` is
//! the whole protocol — this file only moves bytes). Answers are a pure function of
//! the connection's own input (except `TIME`), so a hot replica fed the same input
//! answers the same, and a failover that loses the state is visible to the client.
//!
//! `SLOW ms` makes the connection a slow reader: from then on the service reads at
//! most [`SLOW_READ`] bytes at a time and pauses `ms` after each request, so input
//! waits unread in its kernel.

use nonstop_shared::kv::{self, Line, Lines, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Bytes per read once a connection asked for `SLOW`.
const SLOW_READ: usize = 64;
/// Bytes per read otherwise.
const READ: usize = 16 * 1024;

const USAGE: &str = "usage: nonstop-kv [--listen ADDR:PORT] [--max-connections N]";

/// Settings from the command line.
struct Args {
    listen: SocketAddr,
    max_connections: usize,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut args = args.into_iter();
    let mut parsed = Args {
        listen: SocketAddr::from(([0, 0, 0, 0], 7000)),
        max_connections: 8192,
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args.next().ok_or("--listen needs ADDR:PORT")?;
                parsed.listen = value
                    .parse()
                    .map_err(|_| format!("`{value}` is not ADDR:PORT"))?;
            }
            "--max-connections" => {
                let value = args.next().ok_or("--max-connections needs a number")?;
                parsed.max_connections = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or_else(|| format!("`{value}` is not a number of 1 to 1000000"))?;
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(parsed)
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The replies to the lines `bytes` completes, each with its newline; whether the
/// connection must close after them. Pure apart from the clock `TIME` reads.
fn answer(session: &mut Session, lines: &mut Lines, bytes: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut replies = Vec::new();
    for line in lines.feed(bytes) {
        let reply = match line {
            Line::Complete(line) => session.handle(&line, now_unix_ms()),
            Line::TooLong => kv::Reply {
                line: format!("ERR line too long (more than {} bytes)", kv::MAX_LINE),
                close: false,
            },
        };
        let mut out = reply.line.into_bytes();
        out.push(b'\n');
        replies.push(out);
        if reply.close {
            return (replies, true);
        }
    }
    (replies, false)
}

/// Serves one connection until it closes; returns the number of requests answered.
async fn serve(mut stream: TcpStream) -> std::io::Result<u64> {
    let mut session = Session::new();
    let mut lines = Lines::new(kv::MAX_LINE);
    let mut buf = vec![0u8; READ];
    let mut answered = 0u64;
    loop {
        // A slow connection reads a little at a time: the rest waits in the kernel.
        let chunk = if session.slow_ms() > 0 {
            SLOW_READ
        } else {
            READ
        };
        let n = stream.read(&mut buf[..chunk]).await?;
        if n == 0 {
            return Ok(answered);
        }
        let (replies, close) = answer(&mut session, &mut lines, &buf[..n]);
        for reply in replies {
            stream.write_all(&reply).await?;
            answered += 1;
            if session.slow_ms() > 0 {
                tokio::time::sleep(Duration::from_millis(session.slow_ms())).await;
            }
        }
        if close {
            stream.shutdown().await?;
            return Ok(answered);
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("nonstop-kv: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("nonstop-kv: cannot listen on {}: {e}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!("nonstop-kv: listening on {}", args.listen);
    let slots = Arc::new(Semaphore::new(args.max_connections));
    loop {
        let (mut stream, from) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("nonstop-kv: accept: {e}");
                // EMFILE and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = stream.write_all(b"ERR too many connections\n").await;
            });
            eprintln!("nonstop-kv: {from} refused: too many connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            match serve(stream).await {
                Ok(n) => eprintln!("nonstop-kv: {from} closed after {n} requests"),
                Err(e) => eprintln!("nonstop-kv: {from}: {e}"),
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn arguments_are_checked() {
        let a = args(&["--listen", "127.0.0.1:9", "--max-connections", "5"]).expect("valid");
        assert_eq!(a.listen, SocketAddr::from(([127, 0, 0, 1], 9)));
        assert_eq!(a.max_connections, 5);
        assert_eq!(args(&[]).expect("defaults").listen.port(), 7000);
        assert!(args(&["--listen", "nowhere"]).is_err());
        assert!(args(&["--max-connections", "0"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }

    #[test]
    fn replies_follow_the_lines_across_reads_and_stop_at_quit() {
        let mut s = Session::new();
        let mut l = Lines::new(kv::MAX_LINE);
        let (r, close) = answer(&mut s, &mut l, b"LOGIN a\nUSE n");
        assert_eq!((r, close), (vec![b"OK a\n".to_vec()], false));
        let (r, _) = answer(&mut s, &mut l, b"s\nINCR x\nINCR x\n");
        assert_eq!(
            r,
            vec![b"OK ns\n".to_vec(), b"1\n".to_vec(), b"2\n".to_vec()]
        );
        let (r, close) = answer(&mut s, &mut l, b"QUIT\nINCR x\n");
        assert_eq!((r, close), (vec![b"BYE\n".to_vec()], true));
    }

    #[test]
    fn an_overlong_line_gets_one_error_and_the_next_line_an_answer() {
        let mut s = Session::new();
        let mut l = Lines::new(kv::MAX_LINE);
        let long = vec![b'x'; kv::MAX_LINE * 3];
        let (r, _) = answer(&mut s, &mut l, &long);
        assert_eq!(r.len(), 1);
        assert!(r[0].starts_with(b"ERR line too long"));
        let (r, _) = answer(&mut s, &mut l, b"xx\nPING\n");
        assert_eq!(r, vec![b"PONG\n".to_vec()]);
    }

    /// The service over a real loopback connection: state kept per connection.
    #[tokio::test]
    async fn two_connections_keep_their_own_state() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        async fn talk(addr: SocketAddr, script: &str) -> String {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(script.as_bytes()).await.expect("write");
            let mut out = String::new();
            c.read_to_string(&mut out).await.expect("read");
            out
        }
        let a = talk(addr, "LOGIN a\nUSE x\nINCR k\nINCR k\nWHO\nQUIT\n").await;
        let b = talk(addr, "LOGIN b\nINCR k\nWHO\nQUIT\n").await;
        assert_eq!(a, "OK a\nOK x\n1\n2\nlogin=a ns=x\nBYE\n");
        assert_eq!(b, "OK b\n1\nlogin=b ns=default\nBYE\n");
    }
}
