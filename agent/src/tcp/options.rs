//! A small parser over the raw TCP option bytes.
//!
//! etherparse's option iterator stops at the first kind it does not know (MPTCP, TFO,
//! experimental options, see crates.md), so the tracker reads the options itself: the
//! handshake options (MSS, window scale, SACK-permitted), timestamps and the number of
//! SACK blocks. Unknown kinds are skipped by their length byte; a missing or impossible
//! length, or a known kind with the wrong length, is an error (never a panic).

use super::kind;

/// The timestamps option (kind 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamps {
    /// The sender's timestamp value.
    pub tsval: u32,
    /// The echoed timestamp of the other side.
    pub tsecr: u32,
}

/// The options of one segment that the tracker cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpOptions {
    /// Maximum segment size (kind 2).
    pub mss: Option<u16>,
    /// Window scale shift as sent (kind 3; not clamped to 14 here).
    pub wscale: Option<u8>,
    /// SACK permitted (kind 4).
    pub sack_permitted: bool,
    /// Timestamps (kind 8).
    pub timestamps: Option<Timestamps>,
    /// Number of SACK blocks (kind 5); the blocks themselves are not needed.
    pub sack_blocks: u8,
}

/// Why the option bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// An option other than END/NOP is cut off before its length byte.
    #[error("TCP option kind {kind} at offset {offset} has no length byte")]
    MissingLength {
        /// The option kind.
        kind: u8,
        /// Offset of the option in the option bytes.
        offset: usize,
    },
    /// The length byte is below 2, runs past the option bytes, or does not fit the kind.
    #[error("TCP option kind {kind} at offset {offset} has invalid length {len}")]
    BadLength {
        /// The option kind.
        kind: u8,
        /// Offset of the option in the option bytes.
        offset: usize,
        /// The length byte.
        len: u8,
    },
}

/// Parses the option bytes of a TCP header (everything after the fixed 20 bytes).
pub fn parse(raw: &[u8]) -> Result<TcpOptions, OptionError> {
    let mut options = TcpOptions::default();
    let mut offset = 0;
    while let Some(&kind) = raw.get(offset) {
        match kind {
            kind::END => break,
            kind::NOP => {
                offset += 1;
                continue;
            }
            _ => {}
        }
        let len = *raw
            .get(offset + 1)
            .ok_or(OptionError::MissingLength { kind, offset })?;
        let bad = OptionError::BadLength { kind, offset, len };
        let body = raw
            .get(offset + 2..offset + usize::from(len))
            .filter(|_| len >= 2)
            .ok_or(bad.clone())?;
        match kind {
            kind::MSS => options.mss = Some(u16::from_be_bytes(array(body).ok_or(bad)?)),
            kind::WSCALE => options.wscale = Some(array::<1>(body).ok_or(bad)?[0]),
            kind::SACK_PERMITTED if body.is_empty() => options.sack_permitted = true,
            kind::SACK_PERMITTED => return Err(bad),
            kind::SACK if !body.is_empty() && body.len() % 8 == 0 && body.len() <= 32 => {
                // At most 4 blocks fit into 40 option bytes, so this cannot truncate.
                options.sack_blocks = (body.len() / 8) as u8;
            }
            kind::SACK => return Err(bad),
            kind::TIMESTAMPS => {
                let bytes: [u8; 8] = array(body).ok_or(bad)?;
                let [a, b, c, d, e, f, g, h] = bytes;
                options.timestamps = Some(Timestamps {
                    tsval: u32::from_be_bytes([a, b, c, d]),
                    tsecr: u32::from_be_bytes([e, f, g, h]),
                });
            }
            _ => {}
        }
        offset += usize::from(len);
    }
    Ok(options)
}

/// The body as a fixed-size array, if it has exactly that length.
fn array<const N: usize>(body: &[u8]) -> Option<[u8; N]> {
    body.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_options_with_padding() {
        // MSS 1460, SACK-permitted, TS 100/0, NOP, wscale 7 (Linux SYN layout).
        let raw = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 100, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        assert_eq!(
            parse(&raw),
            Ok(TcpOptions {
                mss: Some(1460),
                wscale: Some(7),
                sack_permitted: true,
                timestamps: Some(Timestamps {
                    tsval: 100,
                    tsecr: 0
                }),
                sack_blocks: 0,
            })
        );
    }

    #[test]
    fn unknown_kinds_are_skipped_by_length() {
        // MPTCP (30, len 4), TFO cookie (34, len 6), then timestamps.
        let raw = [
            30, 4, 0, 0, 34, 6, 1, 2, 3, 4, 8, 10, 0, 0, 1, 0, 0, 0, 0, 9,
        ];
        let options = parse(&raw).expect("valid");
        assert_eq!(
            options.timestamps,
            Some(Timestamps {
                tsval: 256,
                tsecr: 9
            })
        );
    }

    #[test]
    fn end_of_list_stops_parsing() {
        let raw = [0, 2, 4, 5, 0xb4];
        assert_eq!(parse(&raw), Ok(TcpOptions::default()));
    }

    #[test]
    fn sack_blocks_are_counted() {
        let mut raw = vec![1, 1, 5, 18];
        raw.extend_from_slice(&[0; 16]);
        assert_eq!(parse(&raw).map(|o| o.sack_blocks), Ok(2));
    }

    #[test]
    fn malformed_lengths_are_errors() {
        assert_eq!(
            parse(&[2]),
            Err(OptionError::MissingLength { kind: 2, offset: 0 })
        );
        for raw in [
            &[2, 3, 0][..],         // MSS with length 3
            &[30, 1, 0, 0],         // length below 2
            &[30, 0, 0, 0],         // length 0 would loop forever
            &[30, 9, 0, 0],         // runs past the end
            &[3, 4, 7, 0],          // wscale with length 4
            &[4, 3, 0, 0],          // SACK-permitted with a body
            &[5, 6, 0, 0, 0, 0],    // SACK with a partial block
            &[5, 2, 0, 0],          // SACK with no block
            &[8, 9, 0, 0, 0, 0, 0], // timestamps too short
        ] {
            assert!(
                matches!(parse(raw), Err(OptionError::BadLength { .. })),
                "{raw:?}"
            );
        }
    }
}
