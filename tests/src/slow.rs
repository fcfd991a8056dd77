//! A slow-reading echo client: it writes a long, checkable stream and reads the echo
//! back a little at a time through a small receive buffer, so the service's output
//! waits in the service's kernel (unsent) and its input waits unread — the case a
//! failover must hand over or reset, never continue with a hole.

use anyhow::Context;
use nonstop_lab::Lab;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Byte `i` of every client's stream (not periodic at any small length).
pub fn stream_byte(i: usize) -> u8 {
    ((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// How a slow client's transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every byte came back, in order, exact.
    Complete,
    /// The connection was reset (cleanly: the client saw it at once).
    Reset {
        /// Bytes received (all exact) before the reset.
        received: usize,
    },
    /// A byte differs from what was sent: a hole or corruption.
    Wrong {
        /// Stream offset of the first wrong byte.
        at: usize,
    },
    /// Nothing arrived for the stall timeout.
    Stalled {
        /// Bytes received (all exact) before the stall.
        received: usize,
    },
}

/// A slow client running on its own threads.
pub struct SlowClient {
    reader: std::thread::JoinHandle<(Ending, Instant)>,
    /// The client's local port.
    pub port: u16,
}

/// The settings of a slow client.
#[derive(Debug, Clone, Copy)]
pub struct Slowness {
    /// Bytes to send (and expect back).
    pub total: usize,
    /// Bytes per read.
    pub chunk: usize,
    /// Pause after each read.
    pub pause: Duration,
    /// The client's receive buffer (`SO_RCVBUF`, set before connecting).
    pub rcvbuf: usize,
    /// No byte for this long: stalled.
    pub stall: Duration,
}

impl Default for Slowness {
    fn default() -> Slowness {
        Slowness {
            total: 1 << 20,
            chunk: 1024,
            pause: Duration::from_millis(5),
            rcvbuf: 8 * 1024,
            stall: Duration::from_secs(15),
        }
    }
}

/// Connects from the lab's peer namespace to VIP:7000 and starts writing and
/// (slowly) reading.
pub fn spawn(lab: &Lab, s: Slowness) -> anyhow::Result<SlowClient> {
    let vip = SocketAddr::from((lab.vip(), 7000));
    let ns = lab.namespace("peer");
    let rcvbuf = s.rcvbuf;
    let stream: TcpStream = nonstop_lab::run_in_netns(&ns, move || {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_recv_buffer_size(rcvbuf)?;
        socket.connect_timeout(&vip.into(), Duration::from_secs(3))?;
        Ok(socket.into())
    })
    .context("slow client connect")?;
    let port = stream.local_addr()?.port();
    stream.set_read_timeout(Some(s.stall))?;
    let mut writer = stream.try_clone()?;
    std::thread::spawn(move || {
        let data: Vec<u8> = (0..s.total).map(stream_byte).collect();
        // Errors show on the reading side.
        let _ = writer.write_all(&data);
    });
    let mut reader = stream;
    let reader = std::thread::spawn(move || {
        let ending = read_back(&mut reader, s);
        (ending, Instant::now())
    });
    Ok(SlowClient { reader, port })
}

/// Reads the echo back slowly and checks every byte; how the transfer ended.
fn read_back(reader: &mut TcpStream, s: Slowness) -> Ending {
    let mut buf = vec![0u8; s.chunk];
    let mut received = 0;
    while received < s.total {
        let want = s.chunk.min(s.total - received);
        match reader.read(&mut buf[..want]) {
            Ok(0) => return Ending::Reset { received },
            Ok(n) => {
                if let Some(bad) = (0..n).find(|&k| buf[k] != stream_byte(received + k)) {
                    return Ending::Wrong { at: received + bad };
                }
                received += n;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ending::Stalled { received }
            }
            Err(_) => return Ending::Reset { received },
        }
        std::thread::sleep(s.pause);
    }
    Ending::Complete
}

/// `n` slow clients at once (see [`spawn`]).
pub fn spawn_group(lab: &Lab, n: usize, s: Slowness) -> anyhow::Result<Vec<SlowClient>> {
    (0..n).map(|_| spawn(lab, s)).collect()
}

impl SlowClient {
    /// Waits for the end of the transfer.
    pub fn finish(self) -> Ending {
        self.finish_timed().0
    }

    /// Waits for the end of the transfer; also when it ended.
    pub fn finish_timed(self) -> (Ending, Instant) {
        self.reader
            .join()
            .unwrap_or((Ending::Stalled { received: 0 }, Instant::now()))
    }
}

/// Seconds since `t`, for logs.
pub fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}
