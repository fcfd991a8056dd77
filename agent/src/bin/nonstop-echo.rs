//! `nonstop-echo [--listen ADDR]`: the project's echo service, the lab's default
//! service and the workload of tests and benchmarks. Every byte a client sends comes
//! straight back; each connection is logged when it opens and closes.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn parse_listen() -> Result<SocketAddr, String> {
    let mut args = std::env::args().skip(1);
    let mut listen: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 7000));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let value = args.next().ok_or("--listen needs ADDR:PORT")?;
                listen = value
                    .parse()
                    .map_err(|_| format!("`{value}` is not ADDR:PORT"))?;
            }
            "-h" | "--help" => return Err("usage: nonstop-echo [--listen ADDR:PORT]".into()),
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
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        total += n as u64;
                    }
                    Err(_) => break,
                }
            }
            eprintln!("nonstop-echo: {from} closed after {total} bytes");
        });
    }
}
