//! Authentication of every channel with one pre-shared key (sans-IO).
//!
//! The key is read from a file that only its owner may read ([`Key::load`]). Three
//! subkeys are derived from it with HMAC-SHA256 and a label each, so that a tag made
//! for one channel is never valid on another:
//!
//! - **Heartbeats** ([`HeartbeatAuth`]): every datagram is wrapped in an envelope with
//!   the sender's random *boot nonce*, a counter that strictly increases per boot, the
//!   sender's current *challenge*, the receiver's challenge as last heard (the
//!   *echo*), and an HMAC-SHA256 tag. A datagram is accepted if it continues the boot
//!   the receiver already trusts with a higher counter, or if it echoes the
//!   receiver's *current* challenge (so it was made after the receiver last switched
//!   trust: no recording can carry it). The receiver retires its challenge each time
//!   it trusts a new boot.
//! - **Replication** ([`ClientHandshake`], [`ServerHandshake`], [`Channel`]): each TCP
//!   connection starts with fresh 32-byte nonces from both sides and proofs of the key;
//!   a per-connection session key (one per direction) then authenticates every frame
//!   with an explicit counter that must be exactly the next one. A frame replayed in
//!   the same connection has an old counter; replayed into another connection its tag
//!   does not verify under that connection's key.
//! - **Control** ([`control_client_mac`], [`control_server_mac`]): challenge–response
//!   on every console connection before any request is served, mutual (the console
//!   checks the agent's answer too).
//!
//! Tags are compared in constant time (`hmac`'s `verify_slice`). Nothing here panics
//! on input; nothing here does I/O except [`Key::load`] and [`random_bytes`].

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Length of every tag and derived key: HMAC-SHA256 output.
pub const TAG_LEN: usize = 32;
/// Shortest key accepted, in bytes (after trimming surrounding whitespace).
pub const MIN_KEY_LEN: usize = 32;
/// Longest key file accepted, in bytes.
pub const MAX_KEY_FILE_LEN: usize = 4096;

/// A pre-shared key. Its bytes never appear in `Debug` output or logs.
#[derive(Clone)]
pub struct Key {
    bytes: Vec<u8>,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({} bytes, redacted)", self.bytes.len())
    }
}

/// Why a key cannot be used.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Group or others may read or write the file.
    #[error(
        "key file {path} has mode {mode:04o}: group and others must have no access \
         (run `chmod 600 {path}`)"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file.
    #[error("key file {0} is not a regular file")]
    NotAFile(PathBuf),
    /// Too short to be a secret.
    #[error("key in {path} is {len} bytes; at least {MIN_KEY_LEN} are required (e.g. `head -c 32 /dev/urandom | xxd -p -c 64 > KEYFILE`)")]
    TooShort {
        /// The file (or `-` for in-memory keys).
        path: PathBuf,
        /// Its length after trimming.
        len: usize,
    },
    /// Larger than any sensible key.
    #[error("key file {path} is larger than {MAX_KEY_FILE_LEN} bytes")]
    TooLong {
        /// The file.
        path: PathBuf,
    },
}

impl Key {
    /// Reads a key file: a regular file, no access for group or others, at least
    /// [`MIN_KEY_LEN`] bytes once surrounding whitespace is trimmed. The bytes are used
    /// as they are (a hex text key is fine: its characters are the key).
    pub fn load(path: &Path) -> Result<Key, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile(path.to_owned()));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        if meta.len() > MAX_KEY_FILE_LEN as u64 {
            return Err(KeyError::TooLong {
                path: path.to_owned(),
            });
        }
        let bytes = std::fs::read(path).map_err(read_err)?;
        Key::from_bytes_at(&bytes, path)
    }

    /// A key from bytes (trimmed like a file's contents).
    pub fn from_bytes(bytes: &[u8]) -> Result<Key, KeyError> {
        Key::from_bytes_at(bytes, Path::new("-"))
    }

    fn from_bytes_at(bytes: &[u8], path: &Path) -> Result<Key, KeyError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.len() > MAX_KEY_FILE_LEN {
            return Err(KeyError::TooLong {
                path: path.to_owned(),
            });
        }
        if trimmed.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort {
                path: path.to_owned(),
                len: trimmed.len(),
            });
        }
        Ok(Key {
            bytes: trimmed.to_vec(),
        })
    }

    fn derive(&self, label: &[u8]) -> [u8; TAG_LEN] {
        mac(&self.bytes, &[b"nonstop key derivation v1\0", label])
    }

    /// The subkey for heartbeats.
    pub fn heartbeat_key(&self) -> [u8; TAG_LEN] {
        self.derive(b"heartbeat")
    }

    /// The subkey for replication handshakes.
    pub fn replication_key(&self) -> [u8; TAG_LEN] {
        self.derive(b"replication")
    }

    /// The subkey for control handshakes.
    pub fn control_key(&self) -> [u8; TAG_LEN] {
        self.derive(b"control")
    }

    /// A short public name of the key (16 hex digits, derived one-way): two agents
    /// with the same fingerprint hold the same key. Safe to print and compare.
    pub fn fingerprint(&self) -> String {
        self.derive(b"fingerprint")[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
    let mut m = new_mac(key);
    for part in parts {
        m.update(part);
    }
    m.finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC-SHA256 of `parts` under `key` (constant-time compare).
pub fn verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut m = new_mac(key);
    for part in parts {
        m.update(part);
    }
    m.verify_slice(tag).is_ok()
}

fn new_mac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

/// `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out)?;
    Ok(out)
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(raw)
}

// ---------------------------------------------------------------------------------
// Heartbeats
// ---------------------------------------------------------------------------------

/// First four bytes of an authenticated heartbeat envelope.
pub const HB_MAGIC: [u8; 4] = *b"NSHA";
/// Envelope version.
pub const HB_VERSION: u8 = 1;
/// Bytes before the inner heartbeat: magic, version, boot, counter, challenge, echo.
pub const HB_HEADER_LEN: usize = 37;
/// Largest envelope accepted (header, the largest heartbeat, tag).
pub const HB_MAX_LEN: usize =
    HB_HEADER_LEN + crate::heartbeat::FIXED_LEN + crate::heartbeat::MAX_NODE_ID_LEN + TAG_LEN;

/// Why an envelope was dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeartbeatAuthError {
    /// Not an envelope of this version, or of impossible size.
    #[error("unauthenticated or malformed heartbeat envelope ({0})")]
    Malformed(&'static str),
    /// The tag does not verify: forged, damaged, or made with another key.
    #[error("heartbeat tag does not verify (forged or wrong key)")]
    BadTag,
    /// Authentic but old: a counter not above the last one of the trusted boot.
    #[error("replayed heartbeat: counter {counter} not above {last}")]
    Replayed {
        /// The envelope's counter.
        counter: u64,
        /// The last accepted counter of that boot.
        last: u64,
    },
    /// Authentic, from a boot we do not trust yet and not echoing our current
    /// challenge: possibly a recording. Its challenge is echoed back so that a live
    /// peer proves freshness with its next heartbeat.
    #[error("heartbeat from an unconfirmed boot (not yet echoing our challenge)")]
    Unconfirmed,
}

impl HeartbeatAuthError {
    /// Whether this is a replay (authentic but old) rather than a forgery.
    pub fn is_replay(&self) -> bool {
        matches!(
            self,
            HeartbeatAuthError::Replayed { .. } | HeartbeatAuthError::Unconfirmed
        )
    }
}

/// Both directions of heartbeat authentication for one agent process.
///
/// Envelope layout (big-endian):
///
/// | offset | size | field                                                      |
/// |-------:|-----:|------------------------------------------------------------|
/// | 0      | 4    | magic `NSHA`                                               |
/// | 4      | 1    | envelope version (1)                                       |
/// | 5      | 8    | sender's boot nonce (random per agent start)               |
/// | 13     | 8    | counter, strictly increasing per boot                      |
/// | 21     | 8    | sender's current challenge                                 |
/// | 29     | 8    | echo: the receiver's challenge as last heard, or 0         |
/// | 37     | n    | the heartbeat ([`crate::heartbeat`] layout)                |
/// | 37+n   | 32   | HMAC-SHA256(heartbeat subkey, bytes 0..37+n)               |
///
/// A challenge is `HMAC(subkey, "heartbeat challenge" | boot | generation)`, cut to
/// 8 bytes: unpredictable without the key. The receiver moves to the next generation
/// every time it starts trusting another peer boot, so recordings that echo an
/// earlier challenge — everything a dead boot ever sent — can never be accepted
/// again.
#[derive(Debug)]
pub struct HeartbeatAuth {
    key: [u8; TAG_LEN],
    boot: u64,
    counter: u64,
    /// Generation of our challenge (+1 per newly trusted peer boot).
    generation: u64,
    /// Our current challenge.
    challenge: u64,
    /// The peer boot we trust and its last counter.
    trusted: Option<(u64, u64)>,
    /// Challenge of the last authentic envelope (echoed in ours).
    last_seen_challenge: u64,
    /// The last unconfirmed heartbeat: (boot, counter, inner bytes). Delivered once
    /// its boot is confirmed within [`PENDING_WINDOW`] counters, so that what a
    /// restarted peer said first (e.g. "I am master") is not lost to the handshake.
    pending: Option<(u64, u64, Vec<u8>)>,
}

/// How many counters later an unconfirmed heartbeat may still be delivered.
pub const PENDING_WINDOW: u64 = 8;

/// Heartbeats accepted by [`HeartbeatAuth::open`], oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted<'a> {
    /// An earlier heartbeat of a boot just confirmed (authentic, from the same live
    /// boot, at most [`PENDING_WINDOW`] heartbeats older).
    pub earlier: Option<Vec<u8>>,
    /// The heartbeat of this datagram.
    pub heartbeat: &'a [u8],
}

fn challenge(key: &[u8; TAG_LEN], boot: u64, generation: u64) -> u64 {
    let tag = mac(
        key,
        &[
            b"nonstop heartbeat challenge\0",
            &boot.to_be_bytes(),
            &generation.to_be_bytes(),
        ],
    );
    be_u64(&tag).max(1)
}

impl HeartbeatAuth {
    /// Starts with the given key and a boot nonce (use [`random_bytes`]; never 0).
    pub fn new(key: &Key, boot: u64) -> HeartbeatAuth {
        let key = key.heartbeat_key();
        let boot = boot.max(1);
        HeartbeatAuth {
            challenge: challenge(&key, boot, 0),
            key,
            boot,
            counter: 0,
            generation: 0,
            trusted: None,
            last_seen_challenge: 0,
            pending: None,
        }
    }

    /// This process's boot nonce.
    pub fn boot(&self) -> u64 {
        self.boot
    }

    /// Wraps an encoded heartbeat into an authenticated envelope.
    pub fn seal(&mut self, heartbeat: &[u8]) -> Vec<u8> {
        self.counter += 1;
        let mut out = Vec::with_capacity(HB_HEADER_LEN + heartbeat.len() + TAG_LEN);
        out.extend_from_slice(&HB_MAGIC);
        out.push(HB_VERSION);
        out.extend_from_slice(&self.boot.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&self.challenge.to_be_bytes());
        out.extend_from_slice(&self.last_seen_challenge.to_be_bytes());
        out.extend_from_slice(heartbeat);
        let tag = mac(&self.key, &[&out]);
        out.extend_from_slice(&tag);
        out
    }

    /// Checks an envelope and returns the heartbeat bytes inside (preceded by an
    /// earlier one of a just-confirmed boot), or why it is dropped. Only an `Ok` may
    /// reach the failover machine.
    pub fn open<'a>(&mut self, datagram: &'a [u8]) -> Result<Accepted<'a>, HeartbeatAuthError> {
        if datagram.len() < HB_HEADER_LEN + TAG_LEN {
            return Err(HeartbeatAuthError::Malformed("too short"));
        }
        if datagram.len() > HB_MAX_LEN {
            return Err(HeartbeatAuthError::Malformed("too long"));
        }
        if datagram[0..4] != HB_MAGIC {
            return Err(HeartbeatAuthError::Malformed("bad magic"));
        }
        if datagram[4] != HB_VERSION {
            return Err(HeartbeatAuthError::Malformed("unknown version"));
        }
        let (signed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        if !verify(&self.key, &[signed], tag) {
            return Err(HeartbeatAuthError::BadTag);
        }
        let boot = be_u64(&signed[5..13]);
        let counter = be_u64(&signed[13..21]);
        let their_challenge = be_u64(&signed[21..29]);
        let echo = be_u64(&signed[29..37]);
        self.last_seen_challenge = their_challenge;
        let earlier = match self.trusted {
            Some((trusted, last)) if trusted == boot => {
                if counter <= last {
                    return Err(HeartbeatAuthError::Replayed { counter, last });
                }
                None
            }
            _ => {
                if echo != self.challenge {
                    self.pending = Some((boot, counter, signed[HB_HEADER_LEN..].to_vec()));
                    return Err(HeartbeatAuthError::Unconfirmed);
                }
                // A new peer boot, made after our current challenge: trust it, and
                // retire the challenge so no earlier recording can ever echo it.
                self.generation += 1;
                self.challenge = challenge(&self.key, self.boot, self.generation);
                match self.pending.take() {
                    Some((b, c, bytes))
                        if b == boot && c < counter && counter - c <= PENDING_WINDOW =>
                    {
                        Some(bytes)
                    }
                    _ => None,
                }
            }
        };
        self.trusted = Some((boot, counter));
        Ok(Accepted {
            earlier,
            heartbeat: &signed[HB_HEADER_LEN..],
        })
    }
}

// ---------------------------------------------------------------------------------
// Replication channel
// ---------------------------------------------------------------------------------

/// First four bytes of the replication client hello.
pub const REPL_MAGIC: [u8; 4] = *b"NSRA";
/// Replication handshake version.
pub const REPL_VERSION: u8 = 1;
/// Nonce length of the replication and control handshakes.
pub const NONCE_LEN: usize = 32;
/// Client hello: magic, version, client nonce.
pub const CLIENT_HELLO_LEN: usize = 4 + 1 + NONCE_LEN;
/// Server hello: server nonce, server proof.
pub const SERVER_HELLO_LEN: usize = NONCE_LEN + TAG_LEN;
/// Client finish: client proof.
pub const CLIENT_FINISH_LEN: usize = TAG_LEN;
/// Frame header: body length u32, counter u64.
pub const FRAME_HEADER_LEN: usize = 12;
/// Largest frame body; longer payloads are split over several frames.
pub const MAX_FRAME_BODY: usize = 256 * 1024;

/// A replication handshake that failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// Not our protocol or version.
    #[error("replication handshake: not a nonstop client hello (bad magic or version)")]
    BadHello,
    /// The other side does not know the key (or replayed an old handshake).
    #[error("replication handshake: the peer's proof does not verify (wrong key or replay)")]
    BadProof,
}

/// A frame that must not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The announced body is longer than [`MAX_FRAME_BODY`].
    #[error("replication frame of {0} bytes exceeds the limit of {MAX_FRAME_BODY}")]
    TooLong(usize),
    /// The tag does not verify under this connection's key.
    #[error("replication frame tag does not verify (forged, or replayed from another connection)")]
    BadTag,
    /// Authentic but not the next frame: a replay within the connection.
    #[error("replayed replication frame: counter {got}, expected {expected}")]
    Replayed {
        /// The counter expected next.
        expected: u64,
        /// The frame's counter.
        got: u64,
    },
}

fn handshake_parts<'a>(
    label: &'a [u8],
    client: &'a [u8; NONCE_LEN],
    server: &'a [u8; NONCE_LEN],
) -> [&'a [u8]; 3] {
    [label, client, server]
}

const SERVER_PROOF: &[u8] = b"nonstop replication server proof\0";
const CLIENT_PROOF: &[u8] = b"nonstop replication client proof\0";
const SESSION_KEY: &[u8] = b"nonstop replication session key\0";

fn channel_keys(
    repl_key: &[u8; TAG_LEN],
    client: &[u8; NONCE_LEN],
    server: &[u8; NONCE_LEN],
    is_client: bool,
) -> Channel {
    let session = mac(repl_key, &handshake_parts(SESSION_KEY, client, server));
    let to_server = mac(&session, &[b"client to server"]);
    let to_client = mac(&session, &[b"server to client"]);
    let (send, recv) = if is_client {
        (to_server, to_client)
    } else {
        (to_client, to_server)
    };
    Channel {
        send,
        recv,
        sent: 0,
        received: 0,
    }
}

/// The connecting side (the master) of a replication handshake.
#[derive(Debug)]
pub struct ClientHandshake {
    key: [u8; TAG_LEN],
    nonce: [u8; NONCE_LEN],
}

impl ClientHandshake {
    /// Starts a handshake with a fresh nonce; returns the client hello to send.
    pub fn start(key: &Key, nonce: [u8; NONCE_LEN]) -> (ClientHandshake, [u8; CLIENT_HELLO_LEN]) {
        let mut hello = [0u8; CLIENT_HELLO_LEN];
        hello[0..4].copy_from_slice(&REPL_MAGIC);
        hello[4] = REPL_VERSION;
        hello[5..].copy_from_slice(&nonce);
        (
            ClientHandshake {
                key: key.replication_key(),
                nonce,
            },
            hello,
        )
    }

    /// Checks the server hello; returns the client finish to send and the channel.
    pub fn finish(
        self,
        server_hello: &[u8; SERVER_HELLO_LEN],
    ) -> Result<([u8; CLIENT_FINISH_LEN], Channel), HandshakeError> {
        let mut server = [0u8; NONCE_LEN];
        server.copy_from_slice(&server_hello[..NONCE_LEN]);
        if !verify(
            &self.key,
            &handshake_parts(SERVER_PROOF, &self.nonce, &server),
            &server_hello[NONCE_LEN..],
        ) {
            return Err(HandshakeError::BadProof);
        }
        let proof = mac(
            &self.key,
            &handshake_parts(CLIENT_PROOF, &self.nonce, &server),
        );
        Ok((proof, channel_keys(&self.key, &self.nonce, &server, true)))
    }
}

/// The accepting side (the backup) of a replication handshake.
#[derive(Debug)]
pub struct ServerHandshake {
    key: [u8; TAG_LEN],
    client: [u8; NONCE_LEN],
    server: [u8; NONCE_LEN],
}

impl ServerHandshake {
    /// Checks a client hello and answers with a fresh nonce and a proof of the key.
    pub fn respond(
        key: &Key,
        client_hello: &[u8; CLIENT_HELLO_LEN],
        nonce: [u8; NONCE_LEN],
    ) -> Result<(ServerHandshake, [u8; SERVER_HELLO_LEN]), HandshakeError> {
        if client_hello[0..4] != REPL_MAGIC || client_hello[4] != REPL_VERSION {
            return Err(HandshakeError::BadHello);
        }
        let mut client = [0u8; NONCE_LEN];
        client.copy_from_slice(&client_hello[5..]);
        let key = key.replication_key();
        let proof = mac(&key, &handshake_parts(SERVER_PROOF, &client, &nonce));
        let mut hello = [0u8; SERVER_HELLO_LEN];
        hello[..NONCE_LEN].copy_from_slice(&nonce);
        hello[NONCE_LEN..].copy_from_slice(&proof);
        Ok((
            ServerHandshake {
                key,
                client,
                server: nonce,
            },
            hello,
        ))
    }

    /// Checks the client's proof; returns the channel.
    pub fn finish(
        self,
        client_finish: &[u8; CLIENT_FINISH_LEN],
    ) -> Result<Channel, HandshakeError> {
        if !verify(
            &self.key,
            &handshake_parts(CLIENT_PROOF, &self.client, &self.server),
            client_finish,
        ) {
            return Err(HandshakeError::BadProof);
        }
        Ok(channel_keys(&self.key, &self.client, &self.server, false))
    }
}

/// One authenticated replication connection after its handshake.
///
/// Frame layout: `len u32 | counter u64 | body[len] | tag[32]` with
/// `tag = HMAC-SHA256(direction key, counter | body)`; the counter starts at 1 and
/// must be exactly the next one.
pub struct Channel {
    send: [u8; TAG_LEN],
    recv: [u8; TAG_LEN],
    sent: u64,
    received: u64,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("sent", &self.sent)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Appends `payload` as one or more frames (split at [`MAX_FRAME_BODY`]).
    pub fn seal(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        seal_frames(&self.send, &mut self.sent, payload, out);
    }

    /// Opens the frame at the front of `buf`: `Ok(None)` if more bytes are needed,
    /// otherwise the body's range within `buf` and the bytes the frame took. An error
    /// ends the connection.
    pub fn open(
        &mut self,
        buf: &[u8],
    ) -> Result<Option<(std::ops::Range<usize>, usize)>, FrameError> {
        open_frame(&self.recv, &mut self.received, buf)
    }

    /// Splits into the sending and the receiving direction (for a writer task and a
    /// reader task).
    pub fn split(self) -> (ChannelSender, ChannelReceiver) {
        (
            ChannelSender {
                key: self.send,
                sent: self.sent,
            },
            ChannelReceiver {
                key: self.recv,
                received: self.received,
            },
        )
    }
}

/// The sending direction of a [`Channel`].
pub struct ChannelSender {
    key: [u8; TAG_LEN],
    sent: u64,
}

impl fmt::Debug for ChannelSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSender")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl ChannelSender {
    /// As [`Channel::seal`].
    pub fn seal(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        seal_frames(&self.key, &mut self.sent, payload, out);
    }
}

/// The receiving direction of a [`Channel`].
pub struct ChannelReceiver {
    key: [u8; TAG_LEN],
    received: u64,
}

impl fmt::Debug for ChannelReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelReceiver")
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl ChannelReceiver {
    /// As [`Channel::open`].
    pub fn open(
        &mut self,
        buf: &[u8],
    ) -> Result<Option<(std::ops::Range<usize>, usize)>, FrameError> {
        open_frame(&self.key, &mut self.received, buf)
    }
}

fn seal_frames(key: &[u8; TAG_LEN], sent: &mut u64, payload: &[u8], out: &mut Vec<u8>) {
    for body in payload.chunks(MAX_FRAME_BODY) {
        *sent += 1;
        let counter = sent.to_be_bytes();
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&counter);
        out.extend_from_slice(body);
        out.extend_from_slice(&mac(key, &[&counter, body]));
    }
}

fn open_frame(
    key: &[u8; TAG_LEN],
    received: &mut u64,
    buf: &[u8],
) -> Result<Option<(std::ops::Range<usize>, usize)>, FrameError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME_BODY {
        return Err(FrameError::TooLong(len));
    }
    let total = FRAME_HEADER_LEN + len + TAG_LEN;
    if buf.len() < total {
        return Ok(None);
    }
    let counter = &buf[4..12];
    let body = FRAME_HEADER_LEN..FRAME_HEADER_LEN + len;
    if !verify(key, &[counter, &buf[body.clone()]], &buf[body.end..total]) {
        return Err(FrameError::BadTag);
    }
    let got = be_u64(counter);
    let expected = *received + 1;
    if got != expected {
        return Err(FrameError::Replayed { expected, got });
    }
    *received = got;
    Ok(Some((body, total)))
}

// ---------------------------------------------------------------------------------
// Control handshake
// ---------------------------------------------------------------------------------

/// Version of the control handshake (in the challenge).
pub const CONTROL_AUTH_VERSION: u8 = 1;
const CONTROL_CLIENT: &[u8] = b"nonstop control client\0";
const CONTROL_SERVER: &[u8] = b"nonstop control server\0";

/// Decodes a hex nonce of exactly [`NONCE_LEN`] bytes.
pub fn parse_nonce(text: &str) -> Option<[u8; NONCE_LEN]> {
    let mut out = [0u8; NONCE_LEN];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// The console's answer to a challenge: hex HMAC over both nonces.
pub fn control_client_mac(
    key: &Key,
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
) -> String {
    hex::encode(mac(
        &key.control_key(),
        &[CONTROL_CLIENT, server_nonce, client_nonce],
    ))
}

/// The agent's proof back to the console: hex HMAC over both nonces.
pub fn control_server_mac(
    key: &Key,
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
) -> String {
    hex::encode(mac(
        &key.control_key(),
        &[CONTROL_SERVER, server_nonce, client_nonce],
    ))
}

/// Checks a hex tag from [`control_client_mac`] (`client = true`) or
/// [`control_server_mac`] in constant time.
pub fn control_verify(
    key: &Key,
    client: bool,
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
    tag_hex: &str,
) -> bool {
    let mut tag = [0u8; TAG_LEN];
    if hex::decode_to_slice(tag_hex, &mut tag).is_err() {
        return false;
    }
    let label = if client {
        CONTROL_CLIENT
    } else {
        CONTROL_SERVER
    };
    verify(
        &key.control_key(),
        &[label, server_nonce, client_nonce],
        &tag,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> Key {
        Key::from_bytes(b"0123456789abcdef0123456789abcdef").expect("key")
    }

    #[test]
    fn fingerprint_names_the_key_without_revealing_it() {
        let a = key().fingerprint();
        assert_eq!(a.len(), 16);
        assert_eq!(a, key().fingerprint());
        let other = Key::from_bytes(b"0123456789abcdef0123456789abcdeF").expect("key");
        assert_ne!(a, other.fingerprint());
        assert!(!a.contains("3031"), "not the key's own bytes");
    }

    fn other_key() -> Key {
        Key::from_bytes(b"fedcba9876543210fedcba9876543210").expect("key")
    }

    #[test]
    fn key_files_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("nonstop-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("key");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").expect("write");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let err = Key::load(&path).expect_err("loose mode").to_string();
            assert!(err.contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let loaded = Key::load(&path).expect("private key loads");
        assert_eq!(loaded.heartbeat_key(), key().heartbeat_key());
        assert!(!format!("{loaded:?}").contains("0123"));
        std::fs::write(&path, "short\n").expect("write");
        let err = Key::load(&path).expect_err("short").to_string();
        assert!(err.contains("at least 32"), "{err}");
        assert!(matches!(Key::load(&dir), Err(KeyError::NotAFile(_))));
        std::fs::write(&path, "k".repeat(MAX_KEY_FILE_LEN + 1)).expect("write");
        assert!(matches!(Key::load(&path), Err(KeyError::TooLong { .. })));
        assert!(matches!(
            Key::load(&dir.join("missing")),
            Err(KeyError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn subkeys_differ() {
        let k = key();
        assert_ne!(k.heartbeat_key(), k.replication_key());
        assert_ne!(k.heartbeat_key(), k.control_key());
        assert_ne!(k.heartbeat_key(), other_key().heartbeat_key());
    }

    #[test]
    fn heartbeats_need_confirmation_then_a_rising_counter() {
        let mut a = HeartbeatAuth::new(&key(), 11);
        let mut b = HeartbeatAuth::new(&key(), 22);
        // a's first heartbeat does not echo b's boot: b cannot tell it from a replay.
        let first = a.seal(b"hello");
        assert_eq!(b.open(&first), Err(HeartbeatAuthError::Unconfirmed));
        // b now echoes a's boot; a accepts (it echoes a's current boot).
        let reply = b.seal(b"there");
        assert_eq!(a.open(&reply).map(|x| x.heartbeat), Ok(&b"there"[..]));
        // a echoes b's boot: accepted, with the first one (same live boot) before it;
        // from then on the counter rules.
        let second = a.seal(b"again");
        assert_eq!(
            b.open(&second),
            Ok(Accepted {
                earlier: Some(b"hello".to_vec()),
                heartbeat: &b"again"[..]
            })
        );
        let third = a.seal(b"more");
        assert_eq!(
            b.open(&third),
            Ok(Accepted {
                earlier: None,
                heartbeat: &b"more"[..]
            })
        );
        assert!(matches!(
            b.open(&second),
            Err(HeartbeatAuthError::Replayed { .. })
        ));
        assert!(matches!(
            b.open(&third),
            Err(HeartbeatAuthError::Replayed { .. })
        ));
        // A recording from an earlier boot of a is not accepted by b either.
        let mut old_a = HeartbeatAuth::new(&key(), 99);
        let old = old_a.seal(b"old");
        assert_eq!(b.open(&old), Err(HeartbeatAuthError::Unconfirmed));
        // ... and b still accepts a's live heartbeats afterwards.
        let fourth = a.seal(b"live");
        assert_eq!(
            b.open(&fourth),
            Ok(Accepted {
                earlier: None,
                heartbeat: &b"live"[..]
            })
        );
    }

    #[test]
    fn restarted_peer_is_accepted_after_one_exchange() {
        let mut a = HeartbeatAuth::new(&key(), 1);
        let mut b = HeartbeatAuth::new(&key(), 2);
        let _ = b.open(&a.seal(b"x"));
        a.open(&b.seal(b"y")).expect("a trusts b");
        b.open(&a.seal(b"z")).expect("b trusts a");
        // a's last heartbeats echo b's current challenge (recorded by an attacker).
        let recorded = [a.seal(b"old 1"), a.seal(b"old 2")];
        // a restarts with a new boot.
        let mut a2 = HeartbeatAuth::new(&key(), 3);
        assert_eq!(b.open(&a2.seal(b"1")), Err(HeartbeatAuthError::Unconfirmed));
        a2.open(&b.seal(b"2"))
            .expect("b's heartbeat echoes a2's challenge");
        let third = a2.seal(b"3");
        let accepted = b.open(&third).expect("a2 echoes b's challenge");
        assert_eq!(accepted.earlier.as_deref(), Some(&b"1"[..]));
        // The dead boot's recordings, never delivered before, are refused now: b
        // retired the challenge they echo when it trusted a2.
        for old in &recorded {
            assert_eq!(b.open(old), Err(HeartbeatAuthError::Unconfirmed));
        }
        b.open(&a2.seal(b"still live")).expect("a2 still trusted");
        // An unconfirmed heartbeat from long ago is not delivered late.
        let mut a3 = HeartbeatAuth::new(&key(), 4);
        assert!(b.open(&a3.seal(b"old")).is_err());
        for _ in 0..PENDING_WINDOW {
            let _ = a3.seal(b"lost");
        }
        a3.open(&b.seal(b"4")).expect("echo");
        let fifth = a3.seal(b"5");
        let accepted = b.open(&fifth).expect("confirmed");
        assert_eq!(accepted.earlier, None);
    }

    #[test]
    fn forged_and_damaged_heartbeats_are_rejected() {
        let mut a = HeartbeatAuth::new(&key(), 1);
        let mut b = HeartbeatAuth::new(&key(), 2);
        let mut forger = HeartbeatAuth::new(&other_key(), 2);
        assert_eq!(b.open(&forger.seal(b"x")), Err(HeartbeatAuthError::BadTag));
        let good = a.seal(b"payload");
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(b.open(&bad).is_err(), "flip at {i}");
        }
        assert!(matches!(
            b.open(b"NSHB plain"),
            Err(HeartbeatAuthError::Malformed(_))
        ));
    }

    fn connected() -> (Channel, Channel) {
        let (client, hello) = ClientHandshake::start(&key(), [1; NONCE_LEN]);
        let (server, reply) =
            ServerHandshake::respond(&key(), &hello, [2; NONCE_LEN]).expect("hello");
        let (finish, c) = client.finish(&reply).expect("server proof");
        let s = server.finish(&finish).expect("client proof");
        (c, s)
    }

    #[test]
    fn channel_round_trip_and_replay_within_and_across_connections() {
        let (mut c, mut s) = connected();
        let mut wire = Vec::new();
        c.seal(b"batch one", &mut wire);
        let first = wire.clone();
        c.seal(b"batch two", &mut wire);
        let (body, used) = s.open(&wire).expect("valid").expect("complete");
        assert_eq!(&wire[body], b"batch one");
        let (body, used2) = s.open(&wire[used..]).expect("valid").expect("complete");
        assert_eq!(&wire[used..][body], b"batch two");
        assert_eq!(used + used2, wire.len());
        // Replayed in the same connection.
        assert_eq!(
            s.open(&first),
            Err(FrameError::Replayed {
                expected: 3,
                got: 1
            })
        );
        // Replayed into a fresh connection (new nonces, new keys).
        let (client, hello) = ClientHandshake::start(&key(), [3; NONCE_LEN]);
        let (server, reply) =
            ServerHandshake::respond(&key(), &hello, [4; NONCE_LEN]).expect("hello");
        let (finish, _) = client.finish(&reply).expect("proof");
        let mut s2 = server.finish(&finish).expect("proof");
        assert_eq!(s2.open(&first), Err(FrameError::BadTag));
        // The back direction has its own key and counter.
        let mut back = Vec::new();
        s.seal(b"ack", &mut back);
        assert!(c.open(&back).expect("valid").is_some());
        assert_eq!(s.open(&back), Err(FrameError::BadTag));
    }

    #[test]
    fn handshake_rejects_wrong_key_and_replayed_finish() {
        let (client, hello) = ClientHandshake::start(&other_key(), [1; NONCE_LEN]);
        let (server, reply) =
            ServerHandshake::respond(&key(), &hello, [2; NONCE_LEN]).expect("hello");
        assert_eq!(client.finish(&reply).err(), Some(HandshakeError::BadProof));
        assert_eq!(
            server.finish(&[0; CLIENT_FINISH_LEN]).err(),
            Some(HandshakeError::BadProof)
        );
        // A finish recorded from one connection does not open another.
        let (client, hello) = ClientHandshake::start(&key(), [1; NONCE_LEN]);
        let (_, reply) = ServerHandshake::respond(&key(), &hello, [2; NONCE_LEN]).expect("hello");
        let (recorded, _) = client.finish(&reply).expect("proof");
        let (server, _) = ServerHandshake::respond(&key(), &hello, [5; NONCE_LEN]).expect("hello");
        assert_eq!(
            server.finish(&recorded).err(),
            Some(HandshakeError::BadProof)
        );
        let mut bad = hello;
        bad[0] = b'X';
        assert_eq!(
            ServerHandshake::respond(&key(), &bad, [2; NONCE_LEN]).err(),
            Some(HandshakeError::BadHello)
        );
    }

    #[test]
    fn big_payloads_are_split_and_oversized_frames_refused() {
        let (mut c, mut s) = connected();
        let payload = vec![7u8; MAX_FRAME_BODY * 2 + 10];
        let mut wire = Vec::new();
        c.seal(&payload, &mut wire);
        let mut offset = 0;
        let mut got = Vec::new();
        while let Some((body, used)) = s.open(&wire[offset..]).expect("valid") {
            got.extend_from_slice(&wire[offset..][body]);
            offset += used;
        }
        assert_eq!(got, payload);
        let mut huge = ((MAX_FRAME_BODY + 1) as u32).to_be_bytes().to_vec();
        huge.extend_from_slice(&[0; 8]);
        assert_eq!(s.open(&huge), Err(FrameError::TooLong(MAX_FRAME_BODY + 1)));
    }

    #[test]
    fn control_macs_are_mutual_and_bound_to_nonces() {
        let k = key();
        let (sn, cn) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let client = control_client_mac(&k, &sn, &cn);
        assert!(control_verify(&k, true, &sn, &cn, &client));
        assert!(!control_verify(&k, false, &sn, &cn, &client));
        assert!(!control_verify(&k, true, &[3; NONCE_LEN], &cn, &client));
        assert!(!control_verify(&other_key(), true, &sn, &cn, &client));
        assert!(!control_verify(&k, true, &sn, &cn, "zz"));
        let server = control_server_mac(&k, &sn, &cn);
        assert!(control_verify(&k, false, &sn, &cn, &server));
        assert_eq!(parse_nonce(&hex::encode(sn)), Some(sn));
        assert_eq!(parse_nonce("abc"), None);
    }

    proptest! {
        /// Over a lossy, duplicating, reordering link with restarts of the sender,
        /// every payload is delivered at most once, and once a newer boot was accepted
        /// nothing of an older boot is. (A never-delivered heartbeat of the current,
        /// or the not-yet-superseded, boot may still arrive late: that is delay, not
        /// replay.)
        #[test]
        fn a_payload_is_accepted_at_most_once(
            ops in proptest::collection::vec((0u8..6, any::<u16>()), 1..200)
        ) {
            let mut rx = HeartbeatAuth::new(&key(), 1);
            let mut boot = 100u64;
            let mut tx = HeartbeatAuth::new(&key(), boot);
            let mut wire: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut newest_accepted = 0u64;
            let mut n = 0u32;
            for (op, pick) in ops {
                match op {
                    0 | 1 => {
                        n += 1;
                        wire.push((boot, tx.seal(&n.to_be_bytes())));
                    }
                    2 if !wire.is_empty() => {
                        // The receiver answers: the sender learns its boot.
                        let _ = tx.open(&rx.seal(b"ack"));
                    }
                    3 => {
                        boot += 1;
                        tx = HeartbeatAuth::new(&key(), boot);
                    }
                    _ if !wire.is_empty() => {
                        // Deliver any envelope, old or new, possibly again.
                        let (from_boot, bytes) = wire[usize::from(pick) % wire.len()].clone();
                        if let Ok(accepted) = rx.open(&bytes) {
                            prop_assert!(from_boot >= newest_accepted, "an older boot came back");
                            newest_accepted = from_boot;
                            for payload in accepted.earlier.iter().map(Vec::as_slice).chain([accepted.heartbeat]) {
                                prop_assert!(seen.insert(payload.to_vec()), "accepted twice");
                            }
                        }
                    }
                    _ => {}
                }
            }
        }

        #[test]
        fn arbitrary_envelopes_never_panic_nor_pass(bytes in proptest::collection::vec(any::<u8>(), 0..260)) {
            let mut b = HeartbeatAuth::new(&key(), 2);
            prop_assert!(b.open(&bytes).is_err());
        }

        #[test]
        fn arbitrary_frames_never_panic_nor_pass(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (_, mut s) = connected();
            prop_assert!(!matches!(s.open(&bytes), Ok(Some(_))));
        }
    }
}
