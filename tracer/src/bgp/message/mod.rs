//! The message layer: one BGP message from the start of a byte slice
//! ([`decode`]). This module frames messages (marker, length, type); each
//! body type has its own submodule.

mod notification;
mod open;
mod prefix;
mod update;

use std::fmt;

use serde::Serialize;

use open::parse_open;
use update::parse_update;

pub use notification::Notification;
pub use open::{AS_TRANS, AddPathFamily, Capability, Open};
pub use prefix::Prefix;
pub use update::{Community, MpReach, MpUnreach, Update};

/// Marker, length and type.
pub const HEADER_LEN: usize = 19;
/// RFC 4271 upper bound. Framed decoding also takes RFC 8654 extended
/// messages (up to 65535 bytes); only resynchronisation insists on this, to
/// avoid locking onto a run of 0xff bytes inside some other message.
pub const MAX_MESSAGE_LEN: usize = 4096;

pub const MSG_OPEN: u8 = 1;
pub const MSG_UPDATE: u8 = 2;
pub const MSG_NOTIFICATION: u8 = 3;
pub const MSG_KEEPALIVE: u8 = 4;
pub const MSG_ROUTE_REFRESH: u8 = 5;

pub const AFI_IPV4: u16 = 1;
pub const AFI_IPV6: u16 = 2;
pub const SAFI_UNICAST: u8 = 1;
pub const SAFI_MULTICAST: u8 = 2;

/// Shared with the stream layer, which searches for it to resynchronise.
pub(super) const MARKER: [u8; 16] = [0xff; 16];

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh {
        afi: u16,
        safi: u8,
    },
    /// A type this decoder does not know; its bytes were skipped.
    Unknown {
        msg_type: u8,
    },
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::Open(_) => "OPEN",
            Message::Update(_) => "UPDATE",
            Message::Notification(_) => "NOTIFICATION",
            Message::Keepalive => "KEEPALIVE",
            Message::RouteRefresh { .. } => "ROUTE-REFRESH",
            Message::Unknown { .. } => "unknown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// More bytes are needed for the header or the whole message.
    Incomplete,
    /// The 16-byte marker is not all ones: framing is lost.
    BadMarker,
    /// The header's length is below the 19-byte minimum: framing is lost.
    BadLength(u16),
    /// The header was sound, so the message's `len` bytes can be skipped,
    /// but its body does not parse.
    Malformed {
        msg_type: u8,
        len: usize,
        reason: &'static str,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Incomplete => f.write_str("incomplete BGP message"),
            DecodeError::BadMarker => f.write_str("BGP marker is not all ones"),
            DecodeError::BadLength(n) => write!(f, "BGP message length {n} below 19"),
            DecodeError::Malformed {
                msg_type,
                len,
                reason,
            } => write!(
                f,
                "malformed BGP message (type {msg_type}, {len} bytes): {reason}"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Context that the bytes of one message do not carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Whether both OPENs carried the 4-octet AS capability, which makes
    /// AS_PATH hold 4-octet ASNs. `None`: guess from the attribute's layout
    /// (4-octet first, as every current speaker negotiates it).
    pub four_octet_as: Option<bool>,
}

/// One message from the start of `buf`, and the bytes it took.
///
/// # Errors
/// [`DecodeError::Incomplete`] when `buf` ends before the message does;
/// `BadMarker`/`BadLength` when `buf` does not start with a header (framing
/// lost); `Malformed` when the header is sound but the body is not.
pub fn decode(buf: &[u8]) -> Result<(Message, usize), DecodeError> {
    decode_with(buf, DecodeOptions::default())
}

/// [`decode`] with context from the session (see [`DecodeOptions`]).
///
/// # Errors
/// As [`decode`].
pub fn decode_with(buf: &[u8], opts: DecodeOptions) -> Result<(Message, usize), DecodeError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        // A wrong marker is already detectable in a short prefix.
        return if buf.iter().zip(MARKER).all(|(b, m)| *b == m) {
            Err(DecodeError::Incomplete)
        } else {
            Err(DecodeError::BadMarker)
        };
    };
    if header[..16] != MARKER {
        return Err(DecodeError::BadMarker);
    }
    let len16 = u16::from_be_bytes([header[16], header[17]]);
    let len = usize::from(len16);
    if len < HEADER_LEN {
        return Err(DecodeError::BadLength(len16));
    }
    let msg_type = header[18];
    let body = buf.get(HEADER_LEN..len).ok_or(DecodeError::Incomplete)?;
    let malformed = |reason| DecodeError::Malformed {
        msg_type,
        len,
        reason,
    };
    let msg = match msg_type {
        MSG_OPEN => Message::Open(parse_open(body).map_err(malformed)?),
        MSG_UPDATE => Message::Update(parse_update(body, opts).map_err(malformed)?),
        MSG_NOTIFICATION => {
            let [code, subcode, data @ ..] = body else {
                return Err(malformed("NOTIFICATION shorter than 21 bytes"));
            };
            Message::Notification(Notification {
                code: *code,
                subcode: *subcode,
                data: data.to_vec(),
            })
        }
        MSG_KEEPALIVE if body.is_empty() => Message::Keepalive,
        MSG_KEEPALIVE => return Err(malformed("KEEPALIVE longer than 19 bytes")),
        MSG_ROUTE_REFRESH => {
            // RFC 7313 reuses the third byte as a subtype; AFI and SAFI stay put.
            let &[a, b, _, safi] = body else {
                return Err(malformed("ROUTE-REFRESH is not 23 bytes"));
            };
            Message::RouteRefresh {
                afi: u16::from_be_bytes([a, b]),
                safi,
            }
        }
        other => Message::Unknown { msg_type: other },
    };
    Ok((msg, len))
}

/// Bounds-checked big-endian reads; every failure is a malformed body.
struct Reader<'a>(&'a [u8]);

const SHORT: &str = "field runs past the end of the message";

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err(SHORT);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::testutil::*;

    #[test]
    fn keepalive_and_route_refresh() {
        assert_eq!(one(&keepalive()), Message::Keepalive);
        assert_eq!(
            one(&msg(MSG_ROUTE_REFRESH, &[0, 2, 0, 1])),
            Message::RouteRefresh { afi: 2, safi: 1 }
        );
        assert_eq!(one(&msg(9, &[1, 2, 3])), Message::Unknown { msg_type: 9 });
    }

    #[test]
    fn decode_errors() {
        let ka = keepalive();
        assert_eq!(decode(&[]), Err(DecodeError::Incomplete));
        assert_eq!(decode(&ka[..10]), Err(DecodeError::Incomplete));
        assert_eq!(decode(&ka[..18]), Err(DecodeError::Incomplete));
        let u = update_v4();
        assert_eq!(decode(&u[..u.len() - 1]), Err(DecodeError::Incomplete));
        assert_eq!(decode(&[0xff, 0xfe]), Err(DecodeError::BadMarker));
        let mut bad = ka.clone();
        bad[3] = 0;
        assert_eq!(decode(&bad), Err(DecodeError::BadMarker));
        let mut short = ka.clone();
        short[17] = 18;
        assert_eq!(decode(&short), Err(DecodeError::BadLength(18)));
        let malformed = |b: &[u8]| match decode(b) {
            Err(DecodeError::Malformed { len, .. }) => len == b.len(),
            _ => false,
        };
        assert!(malformed(&msg(MSG_KEEPALIVE, &[0])));
        assert!(malformed(&msg(MSG_NOTIFICATION, &[6])));
        assert!(malformed(&msg(MSG_ROUTE_REFRESH, &[0, 1, 0])));
        // Withdrawn length past the body; prefix length 33; NEXT_HOP of 3 bytes.
        assert!(malformed(&msg(MSG_UPDATE, &[0, 9, 0, 0])));
        assert!(malformed(&msg(
            MSG_UPDATE,
            &[0, 0, 0, 0, 33, 1, 2, 3, 4, 5]
        )));
        assert!(malformed(&msg(
            MSG_UPDATE,
            &[0, 0, 0, 6, 0x40, 3, 3, 1, 2, 3]
        )));
        assert!(malformed(&msg(
            MSG_OPEN,
            &[4, 0, 1, 0, 90, 1, 2, 3, 4, 9, 2]
        )));
        // Trailing bytes after one message are left for the next call.
        let mut two = ka.clone();
        two.extend(&ka);
        assert_eq!(decode(&two).unwrap().1, 19);
    }
}
