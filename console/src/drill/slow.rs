//! The `slow` workload's pieces: the stream every slow session writes, the thread that
//! writes it (only as far as the group's round allows), and the connection with a
//! small receive buffer. The reading and checking is in the group's thread
//! ([`super::workload`]), which reads 1 KiB per session every `interval_ms`, so the
//! echo service's output waits in its kernel (unsent) and its input waits unread —
//! what a failover must hand over exactly, or reset cleanly, never continue with a
//! hole (issue 13).

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Bytes per read of a slow reader.
pub const CHUNK: usize = 1024;
/// A slow reader's receive buffer (`SO_RCVBUF`, set before connecting).
pub const RCVBUF: usize = 8 * 1024;
/// Bytes per write of the writer thread.
const WRITE_CHUNK: usize = 16 * 1024;
/// The writer's write timeout (it checks for stop between tries).
const WRITE_TICK: Duration = Duration::from_millis(100);

/// Byte `i` of every slow session's stream (not periodic at any small length).
pub fn stream_byte(i: u64) -> u8 {
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// Offset of the first byte of `got` that is not the stream at `offset`.
pub fn first_wrong(offset: u64, got: &[u8]) -> Option<usize> {
    got.iter()
        .enumerate()
        .position(|(k, &b)| b != stream_byte(offset + k as u64))
}

/// Connects from `ns` to `addr` with a small receive buffer.
pub fn connect(ns: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    nonstop_lab::run_in_netns(ns, move || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_recv_buffer_size(RCVBUF)?;
        socket.connect_timeout(&addr.into(), Duration::from_secs(3))?;
        Ok(socket.into())
    })
}

/// What the writer thread and the reader share.
#[derive(Debug, Default)]
struct Shared {
    /// Write up to this stream offset.
    allowed: AtomicU64,
    /// Bytes written so far.
    written: AtomicU64,
    stop: AtomicBool,
    error: Mutex<Option<String>>,
}

/// The thread that writes one slow session's stream.
pub struct Writer {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts writing on a clone of `stream` (nothing until [`Writer::allow`]).
    pub fn start(stream: &TcpStream) -> std::io::Result<Writer> {
        let mut out = stream.try_clone()?;
        out.set_write_timeout(Some(WRITE_TICK))?;
        let shared = Arc::new(Shared::default());
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("drill-slow-writer".into())
            .spawn(move || {
                let mut chunk = Vec::with_capacity(WRITE_CHUNK);
                while !s.stop.load(Ordering::SeqCst) {
                    let written = s.written.load(Ordering::SeqCst);
                    let allowed = s.allowed.load(Ordering::SeqCst);
                    if written >= allowed {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    let n = (allowed - written).min(WRITE_CHUNK as u64);
                    chunk.clear();
                    chunk.extend((written..written + n).map(stream_byte));
                    match out.write(&chunk) {
                        Ok(0) => {
                            *lock(&s.error) = Some("write returned 0".into());
                            return;
                        }
                        Ok(k) => {
                            s.written.fetch_add(k as u64, Ordering::SeqCst);
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                ErrorKind::WouldBlock
                                    | ErrorKind::TimedOut
                                    | ErrorKind::Interrupted
                            ) => {}
                        Err(e) => {
                            *lock(&s.error) = Some(format!("write: {e}"));
                            return;
                        }
                    }
                }
            })?;
        Ok(Writer {
            shared,
            thread: Some(thread),
        })
    }

    /// Lets the writer go on up to stream offset `offset`.
    pub fn allow(&self, offset: u64) {
        self.shared.allowed.store(offset, Ordering::SeqCst);
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::SeqCst)
    }

    /// Why the writer gave up, if it did.
    pub fn error(&self) -> Option<String> {
        lock(&self.shared.error).clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a read or write error is the connection being reset or closed (as
/// opposed to a timeout).
pub fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_not_periodic_and_holes_are_found() {
        let bytes: Vec<u8> = (0..4096).map(stream_byte).collect();
        for period in 1..1024 {
            assert!(
                (0..bytes.len() - period).any(|i| bytes[i] != bytes[i + period]),
                "period {period}"
            );
        }
        let got: Vec<u8> = (100..200).map(stream_byte).collect();
        assert_eq!(first_wrong(100, &got), None);
        // A hole: bytes 150..160 missing, the stream goes on.
        let holed: Vec<u8> = (100..150).chain(160..200).map(stream_byte).collect();
        assert_eq!(first_wrong(100, &holed), Some(50));
    }

    #[test]
    fn the_writer_writes_only_what_it_is_allowed() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        let writer = Writer::start(&client).expect("writer");
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(writer.written(), 0);
        writer.allow(5000);
        let mut got = vec![0u8; 5000];
        std::io::Read::read_exact(&mut server, &mut got).expect("read");
        assert_eq!(first_wrong(0, &got), None);
        let t0 = std::time::Instant::now();
        while writer.written() < 5000 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(writer.written(), 5000);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(writer.written(), 5000, "not a byte beyond what is allowed");
        assert_eq!(writer.error(), None);
    }
}
