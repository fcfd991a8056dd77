//! A tiny segment builder: real IPv4 + TCP bytes with correct checksums, written by
//! etherparse's `PacketBuilder`. Options are laid out as raw bytes (NOP-aligned the
//! way Linux does) so tests can also write options etherparse does not know.

use etherparse::PacketBuilder;

/// The VIP.
pub const VIP: [u8; 4] = [10, 0, 0, 100];
/// The service port.
pub const PORT: u16 = 80;
/// The default peer.
pub const PEER: [u8; 4] = [192, 0, 2, 7];
/// The default peer port.
pub const PEER_PORT: u16 = 40_000;

/// A segment under construction; `build()` writes it.
#[derive(Debug, Clone)]
pub struct Seg {
    from_peer: bool,
    peer: ([u8; 4], u16),
    local: ([u8; 4], u16),
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    rst: bool,
    win: u16,
    options: Vec<u8>,
    payload: Vec<u8>,
}

/// A new segment: from the peer, no flags, seq 0, window 1024, no options or payload.
pub fn seg() -> Seg {
    Seg {
        from_peer: true,
        peer: (PEER, PEER_PORT),
        local: (VIP, PORT),
        seq: 0,
        ack: None,
        syn: false,
        fin: false,
        rst: false,
        win: 1024,
        options: Vec::new(),
        payload: Vec::new(),
    }
}

// `from_peer()`/`from_us()` read like the traces they write (smoltcp style).
#[allow(clippy::wrong_self_convention)]
impl Seg {
    /// Peer → VIP (the default).
    pub fn from_peer(mut self) -> Seg {
        self.from_peer = true;
        self
    }

    /// VIP → peer.
    pub fn from_us(mut self) -> Seg {
        self.from_peer = false;
        self
    }

    /// Another peer address and port.
    pub fn peer(mut self, ip: [u8; 4], port: u16) -> Seg {
        self.peer = (ip, port);
        self
    }

    /// Another local address and port (for packets that are not the service's).
    pub fn local(mut self, ip: [u8; 4], port: u16) -> Seg {
        self.local = (ip, port);
        self
    }

    /// Sequence number.
    pub fn seq(mut self, seq: u32) -> Seg {
        self.seq = seq;
        self
    }

    /// ACK flag with this acknowledgment number.
    pub fn ack(mut self, ack: u32) -> Seg {
        self.ack = Some(ack);
        self
    }

    /// SYN flag.
    pub fn syn(mut self) -> Seg {
        self.syn = true;
        self
    }

    /// FIN flag.
    pub fn fin(mut self) -> Seg {
        self.fin = true;
        self
    }

    /// RST flag.
    pub fn rst(mut self) -> Seg {
        self.rst = true;
        self
    }

    /// Window field (raw).
    pub fn win(mut self, win: u16) -> Seg {
        self.win = win;
        self
    }

    /// MSS option.
    pub fn mss(mut self, mss: u16) -> Seg {
        self.options.extend_from_slice(&[2, 4]);
        self.options.extend_from_slice(&mss.to_be_bytes());
        self
    }

    /// Window scale option (NOP-aligned).
    pub fn wscale(mut self, shift: u8) -> Seg {
        self.options.extend_from_slice(&[1, 3, 3, shift]);
        self
    }

    /// SACK-permitted option (NOP-aligned).
    pub fn sack_perm(mut self) -> Seg {
        self.options.extend_from_slice(&[1, 1, 4, 2]);
        self
    }

    /// Timestamps option (NOP-aligned).
    pub fn ts(mut self, tsval: u32, tsecr: u32) -> Seg {
        self.options.extend_from_slice(&[1, 1, 8, 10]);
        self.options.extend_from_slice(&tsval.to_be_bytes());
        self.options.extend_from_slice(&tsecr.to_be_bytes());
        self
    }

    /// SACK blocks (NOP-aligned).
    pub fn sack(mut self, blocks: &[(u32, u32)]) -> Seg {
        let len = u8::try_from(2 + 8 * blocks.len()).expect("at most 4 blocks");
        self.options.extend_from_slice(&[1, 1, 5, len]);
        for (left, right) in blocks {
            self.options.extend_from_slice(&left.to_be_bytes());
            self.options.extend_from_slice(&right.to_be_bytes());
        }
        self
    }

    /// Raw option bytes, appended as they are.
    pub fn raw_options(mut self, bytes: &[u8]) -> Seg {
        self.options.extend_from_slice(bytes);
        self
    }

    /// Payload.
    pub fn payload(mut self, bytes: &[u8]) -> Seg {
        self.payload = bytes.to_vec();
        self
    }

    /// The IPv4 packet.
    pub fn build(self) -> Vec<u8> {
        let (src, dst) = if self.from_peer {
            (self.peer, self.local)
        } else {
            (self.local, self.peer)
        };
        let mut b = PacketBuilder::ipv4(src.0, dst.0, 64).tcp(src.1, dst.1, self.seq, self.win);
        if self.syn {
            b = b.syn();
        }
        if self.fin {
            b = b.fin();
        }
        if self.rst {
            b = b.rst();
        }
        if let Some(ack) = self.ack {
            b = b.ack(ack);
        }
        let mut options = self.options;
        options.resize(options.len().div_ceil(4) * 4, 0);
        if !options.is_empty() {
            b = b.options_raw(&options).expect("options fit in 40 bytes");
        }
        let mut out = Vec::with_capacity(b.size(self.payload.len()));
        b.write(&mut out, &self.payload).expect("writes to a Vec");
        out
    }
}

/// `n` payload bytes whose values follow their sequence number (`seq & 0xff`), so a
/// test can tell which bytes ended up where.
pub fn bytes_at(seq: u32, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (seq.wrapping_add(i as u32) & 0xff) as u8)
        .collect()
}

#[test]
fn builder_writes_valid_checksums() {
    let packet = seg().syn().seq(400).mss(1460).wscale(7).ts(100, 0).build();
    let ip = etherparse::Ipv4Slice::from_slice(&packet).expect("IPv4");
    let tcp = etherparse::TcpSlice::from_slice(ip.payload().payload).expect("TCP");
    let header = ip.header().to_header();
    assert_eq!(header.header_checksum, header.calc_header_checksum());
    let sum = tcp
        .calc_checksum_ipv4(ip.header().source(), ip.header().destination())
        .expect("size ok");
    assert_eq!(tcp.checksum(), sum);
    assert_eq!(tcp.options().len(), 20);
}
