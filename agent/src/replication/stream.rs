//! The authenticated byte stream both ends share once the handshake is done: bytes in
//! → frames opened → [`Message`]s out ([`Inbound`]), and messages in → frames sealed →
//! bytes to write out ([`Outbound`]). This is the only place replication frames are
//! opened or sealed; the [`Leader`](super::leader::Leader) and the
//! [`Follower`](super::follower::Follower) each own one of each.
//!
//! Buffers are bounded: [`Inbound`] opens every complete frame as soon as it arrives
//! (a frame is at most [`MAX_FRAME_BODY`] plus header and tag, anything longer is an
//! error) and its owner consumes the messages before pushing more bytes.

use crate::replication::wire::{Message, WireError};
use nonstop_shared::auth::{ChannelReceiver, ChannelSender, FrameError, HandshakeError};
use nonstop_shared::session::Record;
use thiserror::Error;

#[cfg(doc)]
use nonstop_shared::auth::MAX_FRAME_BODY;

/// Why a replication connection must end. Nothing of a frame that fails to open is
/// decoded or applied.
#[derive(Debug, Error)]
pub enum StreamError {
    /// The other side does not know the key, or is not speaking our protocol.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// A frame that is forged, replayed or too long.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// An authentic frame whose content is not a valid message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A valid message that this side must never receive.
    #[error("unexpected replication message: {0}")]
    Unexpected(&'static str),
    /// A snapshot larger than `session.max_sessions`.
    #[error("snapshot of {count} sessions exceeds session.max_sessions ({max})")]
    SnapshotTooLarge {
        /// Sessions announced or received.
        count: u64,
        /// The limit.
        max: usize,
    },
    /// The local copy refused a snapshot or failed to store it.
    #[error("{0:#}")]
    Target(anyhow::Error),
}

impl StreamError {
    /// The frame was authentic but out of order (a replay within the connection).
    pub fn is_replay(&self) -> bool {
        matches!(self, StreamError::Frame(FrameError::Replayed { .. }))
    }

    /// The other side failed authentication (handshake proof or a frame's tag).
    pub fn is_rejection(&self) -> bool {
        matches!(self, StreamError::Handshake(_) | StreamError::Frame(_)) && !self.is_replay()
    }
}

/// Received bytes, opened frame by frame into decoded messages.
#[derive(Debug)]
pub struct Inbound {
    channel: ChannelReceiver,
    /// Bytes of frames not yet complete.
    raw: Vec<u8>,
    /// Opened frame bodies not yet decoded, from `read`.
    plain: Vec<u8>,
    read: usize,
}

impl Inbound {
    /// A stream received over `channel`.
    pub fn new(channel: ChannelReceiver) -> Inbound {
        Inbound {
            channel,
            raw: Vec::with_capacity(4096),
            plain: Vec::with_capacity(4096),
            read: 0,
        }
    }

    /// Takes received bytes and opens every complete frame among them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        self.raw.extend_from_slice(bytes);
        if self.read > 0 {
            self.plain.drain(..self.read);
            self.read = 0;
        }
        let mut opened = 0;
        let result = loop {
            match self.channel.open(&self.raw[opened..]) {
                Ok(Some((body, used))) => {
                    self.plain.extend_from_slice(&self.raw[opened..][body]);
                    opened += used;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            }
        };
        self.raw.drain(..opened);
        result
    }

    /// The next complete message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Message>, StreamError> {
        match Message::decode(&self.plain[self.read..])? {
            Some((message, used)) => {
                self.read += used;
                Ok(Some(message))
            }
            None => Ok(None),
        }
    }
}

/// Messages to send, sealed into frames on [`Outbound::seal`].
#[derive(Debug)]
pub struct Outbound {
    channel: ChannelSender,
    /// Encoded messages not yet sealed.
    plain: Vec<u8>,
    /// Sealed bytes not yet written.
    transmit: Vec<u8>,
}

impl Outbound {
    /// A stream sent over `channel`, after `prefix` (the last handshake bytes, which
    /// travel unframed).
    pub fn new(channel: ChannelSender, prefix: &[u8]) -> Outbound {
        let mut transmit = Vec::with_capacity(4096);
        transmit.extend_from_slice(prefix);
        Outbound {
            channel,
            plain: Vec::with_capacity(4096),
            transmit,
        }
    }

    /// Queues one message.
    pub fn send(&mut self, message: &Message) {
        message.encode(&mut self.plain);
    }

    /// Queues one record without copying it.
    pub fn send_record(&mut self, seq: u64, record: &Record) {
        Message::encode_record(seq, record, &mut self.plain);
    }

    /// Seals everything queued since the last call into frames ready to write.
    pub fn seal(&mut self) {
        if !self.plain.is_empty() {
            self.channel.seal(&self.plain, &mut self.transmit);
            self.plain.clear();
        }
    }

    /// Sealed bytes waiting to be written.
    pub fn transmit(&self) -> &[u8] {
        &self.transmit
    }

    /// The bytes returned by [`Outbound::transmit`] were written.
    pub fn transmitted(&mut self) {
        self.transmit.clear();
    }
}

/// Moves bytes from `input` into `buf` until it holds `N` (a handshake message); then
/// empties `buf` and returns them.
pub(crate) fn fill<const N: usize>(buf: &mut Vec<u8>, input: &mut &[u8]) -> Option<[u8; N]> {
    let take = N.saturating_sub(buf.len()).min(input.len());
    buf.extend_from_slice(&input[..take]);
    *input = &input[take..];
    if buf.len() < N {
        return None;
    }
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[..N]);
    buf.clear();
    Some(out)
}
