//! Fuzz targets: every decoder that reads bytes from outside, as plain functions.
//!
//! The `fuzz/` cargo-fuzz crate (nightly, libFuzzer) calls these for long local runs
//! (`scripts/fuzz`); the tests at the bottom call the same functions with a few
//! thousand random and mutated inputs on stable, as part of `cargo test`. Each target
//! must never panic, and checks what must hold for any input that decodes (e.g. a
//! decoded record re-encodes to a frame that decodes to the same record).

use crate::replication::wire::Message;
use crate::session::tracker::{Tracker, TrackerLimits};
use nonstop_shared::auth::{HeartbeatAuth, Key};
use nonstop_shared::config::AgentConfig;
use nonstop_shared::control::{Reply, Request};
use nonstop_shared::heartbeat::Heartbeat;
use nonstop_shared::record::{decode_record, encode_record};
use std::net::Ipv4Addr;

/// A fuzz target: any bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// The targets by name, for `scripts/fuzz` and the stable pass.
pub const TARGETS: [(&str, Target); 6] = [
    ("tracker", tracker),
    ("record", record),
    ("heartbeat", heartbeat),
    ("control", control),
    ("config", config),
    ("replication", replication),
];

/// A cursor over fuzz input that yields zeros once exhausted.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 100);
const PORT: u16 = 7000;

/// The packet tracker: a sequence of packets (mostly well-formed TCP segments between
/// a few peers and VIP:7000, with fuzzed flags, numbers, options and payloads; some
/// raw bytes), interleaved with expiry and snapshots. Checks the session limit and
/// that every record the tracker emits survives the record codec.
pub fn tracker(data: &[u8]) {
    let limits = TrackerLimits {
        max_sessions: 4,
        max_unacked_bytes: 4096,
    };
    let mut tracker = Tracker::new(VIP, &[PORT], limits);
    let mut input = Input { data };
    let mut now = 0u64;
    while !input.is_empty() {
        let op = input.u8();
        now += u64::from(input.u8());
        let packet = match op % 16 {
            0 => {
                let len = usize::from(input.u8());
                input.bytes(len).to_vec()
            }
            1 => {
                let _ = tracker.expire(now, 50, 500);
                continue;
            }
            2 => {
                for record in tracker.snapshot() {
                    check_record_round_trip(&record);
                }
                continue;
            }
            _ => segment(op, &mut input),
        };
        if let Ok(outcome) = tracker.on_packet(&packet, now) {
            for record in &outcome.records {
                check_record_round_trip(record);
            }
        }
        assert!(tracker.len() <= limits.max_sessions, "session limit broken");
    }
}

/// A TCP segment from fuzz input (valid IPv4 and TCP headers and checksums).
fn segment(op: u8, input: &mut Input<'_>) -> Vec<u8> {
    let inbound = op & 0x10 != 0;
    let peer = (
        Ipv4Addr::new(198, 18, 1, 10 + (op >> 6)),
        40_000 + u16::from(op >> 6),
    );
    let flags = input.u8();
    let seq = input.u32();
    let ack = input.u32();
    let win = input.u16();
    let option_len = usize::from(input.u8() % 11) * 4;
    let mut options = input.bytes(option_len).to_vec();
    options.resize(option_len, 0);
    let payload_len = usize::from(input.u8());
    let payload = input.bytes(payload_len).to_vec();
    let (src, dst) = if inbound {
        (peer, (VIP, PORT))
    } else {
        ((VIP, PORT), peer)
    };
    let mut builder = etherparse::PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 64)
        .tcp(src.1, dst.1, seq, win);
    if flags & 0x02 != 0 {
        builder = builder.syn();
    }
    if flags & 0x01 != 0 {
        builder = builder.fin();
    }
    if flags & 0x04 != 0 {
        builder = builder.rst();
    }
    if flags & 0x10 != 0 {
        builder = builder.ack(ack);
    }
    if flags & 0x08 != 0 {
        builder = builder.psh();
    }
    if !options.is_empty() {
        builder = match builder.options_raw(&options) {
            Ok(b) => b,
            Err(_) => return Vec::new(),
        };
    }
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    if builder.write(&mut out, &payload).is_err() {
        return Vec::new();
    }
    out
}

fn check_record_round_trip(record: &nonstop_shared::session::Record) {
    let mut frame = Vec::new();
    encode_record(7, record, &mut frame);
    match decode_record(&frame) {
        Ok((seq, decoded, used)) => {
            assert_eq!(seq, 7);
            assert_eq!(&decoded, record, "record changed through the codec");
            assert_eq!(used, frame.len());
        }
        Err(e) => panic!("a tracker record does not decode: {e}"),
    }
}

/// The record decoder: any bytes; whatever decodes re-encodes to the same record.
pub fn record(data: &[u8]) {
    if let Ok((seq, record, used)) = decode_record(data) {
        assert!(used <= data.len());
        let mut again = Vec::new();
        encode_record(seq, &record, &mut again);
        let (seq2, record2, used2) = decode_record(&again).expect("re-encoded record decodes");
        assert_eq!((seq2, &record2, used2), (seq, &record, again.len()));
    }
}

/// The heartbeat decoder and the authenticated envelope around it.
pub fn heartbeat(data: &[u8]) {
    if let Ok(hb) = Heartbeat::decode(data) {
        assert_eq!(Heartbeat::decode(&hb.encode()), Ok(hb));
    }
    let key = fuzz_key();
    let mut auth = HeartbeatAuth::new(&key, 2);
    // Random bytes never authenticate.
    assert!(
        auth.open(data).is_err(),
        "unauthenticated envelope accepted"
    );
    // A sealed copy of the input opens to exactly the input once confirmed.
    let mut sender = HeartbeatAuth::new(&key, 1);
    let _ = auth.open(&sender.seal(b"x"));
    let _ = sender.open(&auth.seal(b"y"));
    if data.len() <= nonstop_shared::heartbeat::FIXED_LEN + 64 {
        let sealed = sender.seal(data);
        let opened = auth.open(&sealed).expect("own envelope opens");
        assert_eq!(opened.heartbeat, data);
        assert!(auth.open(&sealed).is_err(), "replay accepted");
    }
}

/// The control protocol: request and reply lines, and the handshake's hex fields.
pub fn control(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(request) = Request::parse_line(&text) {
        let line = request.to_line();
        assert_eq!(Request::parse_line(&line), Ok(request));
    }
    let _ = Reply::parse_line(&text);
    let _ = nonstop_shared::auth::parse_nonce(&text);
    let key = fuzz_key();
    let nonce = [1u8; nonstop_shared::auth::NONCE_LEN];
    assert!(!nonstop_shared::auth::control_verify(
        &key, true, &nonce, &nonce, &text
    ));
}

/// The config loader: any text; whatever validates survives a TOML round trip.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = AgentConfig::from_toml(text) {
        let again = AgentConfig::from_toml(&config.to_toml()).expect("rendered config parses");
        assert_eq!(again, config);
    }
}

/// The replication stream: message framing and the authenticated frame layer.
pub fn replication(data: &[u8]) {
    let mut offset = 0;
    while let Ok(Some((_, used))) = Message::decode(&data[offset..]) {
        assert!(used > 0);
        offset += used;
    }
    let key = fuzz_key();
    let (client, hello) = nonstop_shared::auth::ClientHandshake::start(&key, [1; 32]);
    let Ok((server, reply)) = nonstop_shared::auth::ServerHandshake::respond(&key, &hello, [2; 32])
    else {
        panic!("own hello refused");
    };
    let Ok((finish, mut tx)) = client.finish(&reply) else {
        panic!("own server hello refused");
    };
    let Ok(mut rx) = server.finish(&finish) else {
        panic!("own finish refused");
    };
    assert!(
        !matches!(rx.open(data), Ok(Some(_))),
        "unauthenticated frame accepted"
    );
    let mut wire = Vec::new();
    tx.seal(data, &mut wire);
    let mut got = Vec::new();
    let mut at = 0;
    while let Ok(Some((body, used))) = rx.open(&wire[at..]) {
        got.extend_from_slice(&wire[at..][body]);
        at += used;
    }
    assert_eq!(got, data);
}

fn fuzz_key() -> Key {
    match Key::from_bytes(b"fuzzing key, not a secret, 32+ bytes long") {
        Ok(key) => key,
        Err(e) => panic!("fuzz key: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Seeds that reach deep: a valid handshake and data for the tracker, a valid
    /// record, heartbeat, request and config.
    fn seeds(name: &str) -> Vec<Vec<u8>> {
        match name {
            "tracker" => vec![
                // SYN in, SYN-ACK out, ACK in, data in, data out, ack, FIN.
                [
                    &[0x13u8, 1, 0x02, 0, 0, 1, 0, 0, 0, 0, 0, 0x10, 0, 0, 0][..],
                    &[0x03u8, 1, 0x12, 0, 0, 9, 0, 0, 0, 1, 1, 0x10, 0, 0, 0][..],
                    &[0x13u8, 1, 0x10, 0, 0, 1, 1, 0, 0, 9, 1, 0x10, 0, 0, 0][..],
                    &[0x13u8, 1, 0x18, 0, 0, 1, 1, 0, 0, 9, 1, 0x10, 0, 3, b'a', b'b', b'c'][..],
                    &[0x03u8, 1, 0x18, 0, 0, 9, 1, 0, 0, 1, 4, 0x10, 0, 2, b'x', b'y'][..],
                    &[0x02u8, 1][..],
                    &[0x13u8, 1, 0x11, 0, 0, 1, 4, 0, 0, 9, 3, 0x10, 0, 0, 0][..],
                ]
                .concat(),
            ],
            "heartbeat" => vec![Heartbeat {
                node_id: "master".into(),
                epoch: 3,
                mode: nonstop_shared::Mode::Master,
                priority: 100,
                handover: false,
        unhealthy: false,
                seq: 9,
                sent_us: 1,
                echo_us: 2,
                echo_delay_us: 3,
                repl_pos: 4,
            }
            .encode()],
            "control" => vec![
                b"{\"cmd\":\"inject\",\"fault\":{\"kind\":\"loss\",\"link\":\"sync\",\"percent\":5}}"
                    .to_vec(),
                b"{\"cmd\":\"auth\",\"nonce\":\"00\",\"mac\":\"11\"}".to_vec(),
            ],
            "config" => vec![b"node_id = \"m\"\ndata_dir = \"/d\"\n[service]\ninterface = \"eth0\"\nvip = \"198.18.1.100/24\"\nports = [7000]\n[sync]\naddress = \"198.19.1.1:7701\"\npeer = \"198.19.1.2:7701\"\n[security]\nkey_file = \"/k\"\n".to_vec()],
            "record" | "replication" => {
                let key = nonstop_shared::session::SessionKey {
                    peer_ip: Ipv4Addr::new(198, 18, 1, 10),
                    peer_port: 40000,
                    local_ip: VIP,
                    local_port: PORT,
                };
                let mut frame = Vec::new();
                encode_record(5, &nonstop_shared::session::Record::Delete(key), &mut frame);
                vec![frame]
            }
            _ => Vec::new(),
        }
    }

    fn mutate(seed: &[u8], edits: &[(u16, u8, u8)]) -> Vec<u8> {
        let mut out = seed.to_vec();
        for &(at, value, how) in edits {
            let i = usize::from(at) % (out.len() + 1);
            match how % 4 {
                0 if i < out.len() => out[i] = value,
                1 => out.insert(i, value),
                2 if i < out.len() => {
                    out.remove(i);
                }
                _ => out.truncate(i),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

        /// Short stable pass: random bytes into every target.
        #[test]
        fn targets_survive_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            for (_, target) in TARGETS {
                target(&data);
            }
        }

        /// Short stable pass: mutated valid inputs into every target.
        #[test]
        fn targets_survive_mutated_seeds(
            edits in proptest::collection::vec((any::<u16>(), any::<u8>(), any::<u8>()), 0..8)
        ) {
            for (name, target) in TARGETS {
                for seed in seeds(name) {
                    target(&seed);
                    target(&mutate(&seed, &edits));
                }
            }
        }
    }

    /// Writes the seeds to `$NONSTOP_FUZZ_SEEDS/<target>/seed-N` (used by
    /// `scripts/fuzz` to start libFuzzer's corpus from inputs that reach deep).
    #[test]
    #[ignore = "run by scripts/fuzz"]
    fn write_seeds() {
        let Some(dir) = std::env::var_os("NONSTOP_FUZZ_SEEDS") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        for (name, _) in TARGETS {
            let target_dir = dir.join(name);
            std::fs::create_dir_all(&target_dir).expect("seed dir");
            for (i, seed) in seeds(name).iter().enumerate() {
                std::fs::write(target_dir.join(format!("seed-{i}")), seed).expect("seed");
            }
        }
    }

    #[test]
    fn tracker_seed_reaches_records() {
        // The seed must drive a session through the handshake, or the fuzzer starts
        // from nothing useful.
        let mut tracker = Tracker::new(VIP, &[PORT], TrackerLimits::default());
        let seed = &seeds("tracker")[0];
        let mut input = Input { data: seed };
        let mut records = 0;
        while !input.is_empty() {
            let op = input.u8();
            let _ = input.u8();
            if op % 16 < 3 {
                continue;
            }
            let packet = segment(op, &mut input);
            if let Ok(outcome) = tracker.on_packet(&packet, 1) {
                records += outcome.records.len();
            }
        }
        assert!(records > 0, "the tracker seed produced no records");
    }
}
