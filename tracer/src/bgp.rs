//! BGP-4 (RFC 4271) messages seen on TCP port 179, reassembled from captured
//! segments, and what they say about a MetalLB speaker's sessions: did the
//! session come up, why did it go down, and was the LoadBalancer IP announced
//! to each peer (with which next hop) or withdrawn.
//!
//! Captures are lossy: the kernel keeps at most a few hundred bytes of each
//! segment, ring-buffer events can be lost, and TCP retransmits and reorders.
//! So everything here decodes what it can, skips what it cannot (counting
//! it), and never panics on any input (see the fuzz tests and
//! `fuzz/fuzz_targets/bgp_decode.rs`).
//!
//! Layers, bottom up:
//! - [`decode`]: one message from a byte slice;
//! - [`Stream`]: one direction of a TCP connection to messages;
//! - [`Session`]: both directions of one 4-tuple to a state and route events;
//! - [`Sessions`] / [`summarize`]: per peer, what happened to the LB IP.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

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

/// 2-octet placeholder ASN used by 4-octet speakers (RFC 6793).
pub const AS_TRANS: u16 = 23456;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const MARKER: [u8; 16] = [0xff; 16];

// ---------------------------------------------------------------------------
// Prefixes

/// An IP prefix as carried in NLRI, host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// `None` when `len` exceeds the address width.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let masked = mask(addr, len)?;
        Some(Prefix { addr: masked, len })
    }

    /// Whether `ip` is inside this prefix (never across address families).
    pub fn covers(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                // Mask both sides: the fields are public, so `addr` may carry
                // host bits if the prefix was not built with `new`.
                mask(ip, self.len).is_some() && mask(ip, self.len) == mask(self.addr, self.len)
            }
            _ => false,
        }
    }
}

fn mask(addr: IpAddr, len: u8) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(a) if len <= 32 => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            Some(IpAddr::V4(Ipv4Addr::from(u32::from(a) & m)))
        }
        IpAddr::V6(a) if len <= 128 => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            Some(IpAddr::V6(Ipv6Addr::from(u128::from(a) & m)))
        }
        _ => None,
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// As its text form, "203.0.113.240/32": what a person greps for.
impl Serialize for Prefix {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A standard community (RFC 1997), shown as "asn:value".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Community(pub u32);

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0 >> 16, self.0 & 0xffff)
    }
}

impl Serialize for Community {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

// ---------------------------------------------------------------------------
// Messages

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Open {
    pub version: u8,
    /// The 2-octet "My Autonomous System" field: [`AS_TRANS`] when the real
    /// ASN needs 4 octets (see [`Open::real_asn`]).
    pub asn: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// The sender's ASN: the 4-octet AS capability when present, since the
    /// 2-octet field then only holds AS_TRANS (or a copy).
    pub fn real_asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs { asn } => Some(*asn),
                _ => None,
            })
            .unwrap_or(u32::from(self.asn))
    }

    pub fn four_octet_as(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs { .. }))
    }

    /// The hostname capability (FRR sends it): names the router or node.
    pub fn hostname(&self) -> Option<&str> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::Fqdn { hostname, .. } => Some(hostname.as_str()),
            _ => None,
        })
    }

    fn add_path_modes(&self) -> impl Iterator<Item = &AddPathFamily> {
        self.capabilities.iter().flat_map(|c| match c {
            Capability::AddPath { families } => families.as_slice(),
            _ => &[],
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "capability", rename_all = "snake_case")]
pub enum Capability {
    /// RFC 4760.
    Multiprotocol {
        afi: u16,
        safi: u8,
    },
    /// RFC 2918.
    RouteRefresh,
    /// RFC 6793.
    FourOctetAs {
        asn: u32,
    },
    /// RFC 7911. Decoded so its presence can be reported; NLRI with path
    /// identifiers is not decoded (see [`Session`]'s `add_path`).
    AddPath {
        families: Vec<AddPathFamily>,
    },
    /// draft-walton-bgp-hostname-capability (FRR, GoBGP).
    Fqdn {
        hostname: String,
        domain: String,
    },
    Other {
        code: u8,
        data: Vec<u8>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AddPathFamily {
    pub afi: u16,
    pub safi: u8,
    /// 1 receive, 2 send, 3 both.
    pub send_receive: u8,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Update {
    /// IPv4 withdrawn routes.
    pub withdrawn: Vec<Prefix>,
    /// IPv4 NLRI.
    pub announced: Vec<Prefix>,
    /// The NEXT_HOP attribute (for `announced`).
    pub next_hop: Option<IpAddr>,
    /// AS_PATH flattened (AS_SETs inline), with AS4_PATH merged in when the
    /// path was sent with 2-octet ASNs.
    pub as_path: Vec<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<Community>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
}

impl Update {
    /// Every announced prefix, IPv4 NLRI and MP_REACH alike, with its next hop.
    pub fn announcements(&self) -> impl Iterator<Item = (Prefix, Option<IpAddr>)> + '_ {
        let v4 = self.announced.iter().map(|p| (*p, self.next_hop));
        let mp = self.mp_reach.iter().flat_map(|r| {
            let nh = r.next_hops.first().copied();
            r.announced.iter().map(move |p| (*p, nh))
        });
        v4.chain(mp)
    }

    /// Every withdrawn prefix, IPv4 and MP_UNREACH alike.
    pub fn withdrawals(&self) -> impl Iterator<Item = Prefix> + '_ {
        let mp = self.mp_unreach.iter().flat_map(|u| u.withdrawn.iter());
        self.withdrawn.iter().chain(mp).copied()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MpReach {
    pub afi: u16,
    pub safi: u8,
    /// Global first, then link-local when the IPv6 next hop carries both.
    pub next_hops: Vec<IpAddr>,
    /// Decoded for unicast and multicast IPv4/IPv6 only; other SAFIs encode
    /// NLRI differently and are left empty.
    pub announced: Vec<Prefix>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MpUnreach {
    pub afi: u16,
    pub safi: u8,
    pub withdrawn: Vec<Prefix>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    /// "OPEN Message Error / Bad Peer AS", "Cease / Administrative Shutdown:
    /// \"maintenance\"": RFC 4271, 4486, 6608, 7313, 8203/9003 names, plus
    /// what the data field says where an RFC defines it.
    pub fn describe(&self) -> String {
        let mut s = match (error_name(self.code), subcode_name(self.code, self.subcode)) {
            (Some(code), Some(sub)) => format!("{code} / {sub}"),
            (Some(code), None) if self.subcode == 0 => code.to_string(),
            (Some(code), None) => format!("{code} / subcode {}", self.subcode),
            (None, _) => format!("error code {} / subcode {}", self.code, self.subcode),
        };
        let d = &self.data;
        match (self.code, self.subcode) {
            (1, 2) if d.len() >= 2 => {
                let _ = write!(s, " (length {})", u16::from_be_bytes([d[0], d[1]]));
            }
            (1, 3) if !d.is_empty() => {
                let _ = write!(s, " (type {})", d[0]);
            }
            (2, 1) if d.len() >= 2 => {
                let _ = write!(
                    s,
                    " (highest supported: {})",
                    u16::from_be_bytes([d[0], d[1]])
                );
            }
            (2, 7) => {
                let codes = capability_codes(d);
                if !codes.is_empty() {
                    let list: Vec<String> = codes.iter().map(u8::to_string).collect();
                    let _ = write!(s, " (capability codes {})", list.join(", "));
                }
            }
            (6, 1) if d.len() >= 7 => {
                let afi = u16::from_be_bytes([d[0], d[1]]);
                let limit = u32::from_be_bytes([d[3], d[4], d[5], d[6]]);
                let _ = write!(s, " (AFI {afi}/SAFI {}, limit {limit})", d[2]);
            }
            // RFC 8203/9003 shutdown communication: length byte, then UTF-8.
            (6, 2 | 4) => {
                if let Some((&n, rest)) = d.split_first()
                    && n > 0
                    && rest.len() >= usize::from(n)
                {
                    let text = String::from_utf8_lossy(&rest[..usize::from(n)]);
                    // Debug-quote: the text comes from the wire, keep it on one line.
                    let _ = write!(s, ": {text:?}");
                }
            }
            _ => {}
        }
        s
    }

    /// What to check next, for the errors a MetalLB setup typically hits.
    pub fn hint(&self) -> Option<&'static str> {
        Some(match (self.code, self.subcode) {
            (2, 2) => {
                "the ASN in the OPEN is not the one the notifying side expects: compare the BGPPeer's myASN/peerASN with the router's neighbor configuration"
            }
            (2, 3) => "the BGP identifier was refused (duplicate or zero router-id)",
            (2, 6) => "the hold time was refused: compare holdTime on both sides",
            (2, 7) => "a required capability is missing on one side",
            (4, _) => {
                "no KEEPALIVE arrived within the hold time: packet loss, a firewall on TCP 179, or an overloaded speaker"
            }
            (6, 1) => "the receiver's maximum-prefix limit was exceeded",
            (6, 2) => "the session was shut down administratively",
            (6, 3) => "the peer no longer has this neighbor configured",
            (6, 5) => {
                "the peer refused the connection: it does not accept this source address as a neighbor"
            }
            (6, 7) => "both sides connected at once; one connection was closed (usually harmless)",
            _ => return None,
        })
    }
}

/// With the names, so JSON readers need no RFC table.
impl Serialize for Notification {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Notification", 4)?;
        st.serialize_field("code", &self.code)?;
        st.serialize_field("subcode", &self.subcode)?;
        st.serialize_field("description", &self.describe())?;
        st.serialize_field("data", &hex(&self.data))?;
        st.end()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn error_name(code: u8) -> Option<&'static str> {
    Some(match code {
        1 => "Message Header Error",
        2 => "OPEN Message Error",
        3 => "UPDATE Message Error",
        4 => "Hold Timer Expired",
        5 => "Finite State Machine Error",
        6 => "Cease",
        7 => "ROUTE-REFRESH Message Error",
        8 => "Send Hold Timer Expired",
        _ => return None,
    })
}

fn subcode_name(code: u8, sub: u8) -> Option<&'static str> {
    Some(match (code, sub) {
        // Codes 4 and 8 have no subcodes; for the others 0 means "Unspecific".
        (1 | 2 | 3 | 5 | 6 | 7, 0) => "Unspecific",
        (1, 1) => "Connection Not Synchronized",
        (1, 2) => "Bad Message Length",
        (1, 3) => "Bad Message Type",
        (2, 1) => "Unsupported Version Number",
        (2, 2) => "Bad Peer AS",
        (2, 3) => "Bad BGP Identifier",
        (2, 4) => "Unsupported Optional Parameter",
        (2, 5) => "Authentication Failure (deprecated)",
        (2, 6) => "Unacceptable Hold Time",
        (2, 7) => "Unsupported Capability",
        (2, 11) => "Role Mismatch",
        (3, 1) => "Malformed Attribute List",
        (3, 2) => "Unrecognized Well-known Attribute",
        (3, 3) => "Missing Well-known Attribute",
        (3, 4) => "Attribute Flags Error",
        (3, 5) => "Attribute Length Error",
        (3, 6) => "Invalid ORIGIN Attribute",
        (3, 7) => "AS Routing Loop (deprecated)",
        (3, 8) => "Invalid NEXT_HOP Attribute",
        (3, 9) => "Optional Attribute Error",
        (3, 10) => "Invalid Network Field",
        (3, 11) => "Malformed AS_PATH",
        (5, 1) => "Receive Unexpected Message in OpenSent State",
        (5, 2) => "Receive Unexpected Message in OpenConfirm State",
        (5, 3) => "Receive Unexpected Message in Established State",
        (6, 1) => "Maximum Number of Prefixes Reached",
        (6, 2) => "Administrative Shutdown",
        (6, 3) => "Peer De-configured",
        (6, 4) => "Administrative Reset",
        (6, 5) => "Connection Rejected",
        (6, 6) => "Other Configuration Change",
        (6, 7) => "Connection Collision Resolution",
        (6, 8) => "Out of Resources",
        (6, 9) => "Hard Reset",
        (6, 10) => "BFD Down",
        (7, 1) => "Invalid Message Length",
        _ => return None,
    })
}

/// Capability codes from a (code, length, value)* list, as far as it parses.
fn capability_codes(mut d: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let [code, len, rest @ ..] = d {
        out.push(*code);
        d = rest.get(usize::from(*len)..).unwrap_or(&[]);
    }
    out
}

// ---------------------------------------------------------------------------
// Decoding

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

fn parse_open(body: &[u8]) -> Result<Open, &'static str> {
    let mut r = Reader(body);
    let version = r.u8()?;
    let asn = r.u16()?;
    let hold_time = r.u16()?;
    let id = r.take(4)?;
    let bgp_id = Ipv4Addr::new(id[0], id[1], id[2], id[3]);
    let opt_len = r.u8()?;
    // RFC 9072: a length of 255 followed by a parameter type of 255 switches
    // to 2-octet lengths, for OPENs whose capabilities exceed 255 bytes.
    let extended = opt_len == 255 && r.0.first() == Some(&255);
    let params = if extended {
        r.u8()?;
        let n = r.u16()?;
        r.take(usize::from(n))?
    } else {
        r.take(usize::from(opt_len))?
    };
    let mut p = Reader(params);
    let mut capabilities = Vec::new();
    while !p.is_empty() {
        let ptype = p.u8()?;
        let plen = if extended {
            p.u16()?
        } else {
            u16::from(p.u8()?)
        };
        let value = p.take(usize::from(plen))?;
        // Type 2 is Capabilities (RFC 5492); type 1 (authentication) is obsolete.
        if ptype == 2 {
            parse_capabilities(value, &mut capabilities)?;
        }
    }
    Ok(Open {
        version,
        asn,
        hold_time,
        bgp_id,
        capabilities,
    })
}

fn parse_capabilities(value: &[u8], out: &mut Vec<Capability>) -> Result<(), &'static str> {
    let mut c = Reader(value);
    while !c.is_empty() {
        let code = c.u8()?;
        let len = c.u8()?;
        let data = c.take(usize::from(len))?;
        // A known code with the wrong length is kept raw rather than
        // refusing the OPEN: the session's outcome is what matters here.
        let cap = match (code, data) {
            (1, &[a, b, _, safi]) => Capability::Multiprotocol {
                afi: u16::from_be_bytes([a, b]),
                safi,
            },
            (2, []) => Capability::RouteRefresh,
            (65, &[a, b, c2, d]) => Capability::FourOctetAs {
                asn: u32::from_be_bytes([a, b, c2, d]),
            },
            (69, d) if d.len() % 4 == 0 => Capability::AddPath {
                families: d
                    .chunks_exact(4)
                    .map(|f| AddPathFamily {
                        afi: u16::from_be_bytes([f[0], f[1]]),
                        safi: f[2],
                        send_receive: f[3],
                    })
                    .collect(),
            },
            (73, d) => fqdn(d).unwrap_or_else(|| Capability::Other {
                code,
                data: d.to_vec(),
            }),
            (code, d) => Capability::Other {
                code,
                data: d.to_vec(),
            },
        };
        out.push(cap);
    }
    Ok(())
}

fn fqdn(d: &[u8]) -> Option<Capability> {
    let (&hl, rest) = d.split_first()?;
    let host = rest.get(..usize::from(hl))?;
    let rest = &rest[usize::from(hl)..];
    let (&dl, rest) = rest.split_first().unwrap_or((&0, &[]));
    let domain = rest.get(..usize::from(dl))?;
    Some(Capability::Fqdn {
        hostname: String::from_utf8_lossy(host).into_owned(),
        domain: String::from_utf8_lossy(domain).into_owned(),
    })
}

fn parse_update(body: &[u8], opts: DecodeOptions) -> Result<Update, &'static str> {
    let mut r = Reader(body);
    let wlen = r.u16()?;
    let withdrawn = parse_prefixes(r.take(usize::from(wlen))?, false)?;
    let alen = r.u16()?;
    let attrs = r.take(usize::from(alen))?;
    let announced = parse_prefixes(r.rest(), false)?;

    let mut u = Update {
        withdrawn,
        announced,
        ..Update::default()
    };
    let mut as_path = None;
    let mut as4_path = None;
    let mut a = Reader(attrs);
    while !a.is_empty() {
        let flags = a.u8()?;
        let code = a.u8()?;
        // Extended Length flag: 2-octet attribute length.
        let len = if flags & 0x10 != 0 {
            usize::from(a.u16()?)
        } else {
            usize::from(a.u8()?)
        };
        let v = a
            .take(len)
            .map_err(|_| "attribute runs past the attribute list")?;
        match code {
            2 => as_path = Some(v),
            3 => {
                let &[a, b, c, d] = v else {
                    return Err("NEXT_HOP is not 4 bytes");
                };
                u.next_hop = Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
            }
            5 => {
                let &[a, b, c, d] = v else {
                    return Err("LOCAL_PREF is not 4 bytes");
                };
                u.local_pref = Some(u32::from_be_bytes([a, b, c, d]));
            }
            8 => {
                if v.len() % 4 != 0 {
                    return Err("COMMUNITIES length is not a multiple of 4");
                }
                u.communities = v
                    .chunks_exact(4)
                    .map(|c| Community(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                    .collect();
            }
            14 => u.mp_reach = Some(parse_mp_reach(v)?),
            15 => u.mp_unreach = Some(parse_mp_unreach(v)?),
            17 => as4_path = Some(v),
            _ => {}
        }
    }
    if let Some(raw) = as_path {
        let (mut path, two_octet) = decode_as_path(raw, opts.four_octet_as);
        // RFC 6793 §4.2.3: a 2-octet path hides 4-octet ASNs behind AS_TRANS;
        // AS4_PATH holds the real tail. Ignored if longer than AS_PATH.
        if two_octet
            && let Some(as4) = as4_path.and_then(|v| as_path_segments(v, 4))
            && as4.len() <= path.len()
        {
            path.truncate(path.len() - as4.len());
            path.extend(as4);
        }
        u.as_path = path;
    }
    Ok(u)
}

/// The path, and whether it was read with 2-octet ASNs. An undecodable path
/// is left empty rather than failing the UPDATE: the prefixes matter more.
fn decode_as_path(v: &[u8], four_octet: Option<bool>) -> (Vec<u32>, bool) {
    let order = if four_octet == Some(false) {
        [2, 4]
    } else {
        [4, 2]
    };
    order
        .into_iter()
        .find_map(|w| as_path_segments(v, w).map(|p| (p, w == 2)))
        .unwrap_or_default()
}

/// AS_PATH segments (type, count, ASNs) flattened, or `None` if `v` does not
/// parse exactly with ASNs of `width` bytes. Requiring a known segment type
/// and a non-zero count makes the wrong width fail almost always.
fn as_path_segments(mut v: &[u8], width: usize) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    while let [t, n, rest @ ..] = v {
        if !(1..=4).contains(t) || *n == 0 {
            return None;
        }
        let bytes = rest.get(..usize::from(*n) * width)?;
        out.extend(bytes.chunks_exact(width).map(|c| match *c {
            [a, b] => u32::from(u16::from_be_bytes([a, b])),
            [a, b, c, d] => u32::from_be_bytes([a, b, c, d]),
            _ => 0,
        }));
        v = &rest[bytes.len()..];
    }
    v.is_empty().then_some(out)
}

fn parse_mp_reach(v: &[u8]) -> Result<MpReach, &'static str> {
    let mut r = Reader(v);
    let afi = r.u16()?;
    let safi = r.u8()?;
    let nh_len = r.u8()?;
    let nh = r.take(usize::from(nh_len))?;
    // Reserved (formerly the SNPA count of RFC 2858).
    r.u8()?;
    let next_hops = next_hops(nh);
    let announced = mp_prefixes(afi, safi, r.rest())?;
    Ok(MpReach {
        afi,
        safi,
        next_hops,
        announced,
    })
}

fn parse_mp_unreach(v: &[u8]) -> Result<MpUnreach, &'static str> {
    let mut r = Reader(v);
    let afi = r.u16()?;
    let safi = r.u8()?;
    let withdrawn = mp_prefixes(afi, safi, r.rest())?;
    Ok(MpUnreach {
        afi,
        safi,
        withdrawn,
    })
}

fn mp_prefixes(afi: u16, safi: u8, nlri: &[u8]) -> Result<Vec<Prefix>, &'static str> {
    match (afi, safi) {
        (AFI_IPV4 | AFI_IPV6, SAFI_UNICAST | SAFI_MULTICAST) => {
            parse_prefixes(nlri, afi == AFI_IPV6)
        }
        _ => Ok(Vec::new()),
    }
}

/// Next hops by length, whatever the AFI: IPv4 routes may have IPv6 next
/// hops (RFC 8950), and VPN next hops carry an 8-byte route distinguisher.
fn next_hops(nh: &[u8]) -> Vec<IpAddr> {
    let v4 = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
    let v6 = |b: &[u8]| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    match nh.len() {
        4 => vec![v4(nh)],
        12 => vec![v4(&nh[8..])],
        16 => vec![v6(nh)],
        24 => vec![v6(&nh[8..])],
        32 => vec![v6(nh), v6(&nh[16..])],
        48 => vec![v6(&nh[8..]), v6(&nh[32..])],
        _ => Vec::new(),
    }
}

fn parse_prefixes(mut b: &[u8], v6: bool) -> Result<Vec<Prefix>, &'static str> {
    let max = if v6 { 128 } else { 32 };
    let mut out = Vec::new();
    while let Some((&len, rest)) = b.split_first() {
        if len > max {
            return Err("prefix length exceeds the address width");
        }
        let n = usize::from(len).div_ceil(8);
        let bytes = rest
            .get(..n)
            .ok_or("prefix runs past the end of its list")?;
        let mut a = [0u8; 16];
        a[..n].copy_from_slice(bytes);
        let addr = if v6 {
            IpAddr::V6(Ipv6Addr::from(a))
        } else {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        };
        out.extend(Prefix::new(addr, len));
        b = &rest[n..];
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Stream reassembly

/// Segments further ahead than this are not reordering: events were lost in
/// bulk or the connection was replaced. The stream restarts there.
const MAX_AHEAD: i64 = 1 << 20;
/// Out-of-order segments held while waiting for a gap to fill. Past this the
/// gap is taken as lost (e.g. a ring-buffer overflow dropped it).
const MAX_PENDING: usize = 16;
/// No real segment is larger (64 KiB GSO, 512 KiB BIG TCP); bounds arithmetic.
const MAX_SEGMENT: usize = 1 << 24;

/// Reassembles one direction of a TCP connection into BGP messages.
///
/// Positions are kept as u64 offsets from the first sequence number, so
/// 32-bit sequence wrap is handled once, where a segment's `seq` is turned
/// into an offset relative to the in-order end.
#[derive(Debug, Default)]
pub struct Stream {
    /// Sequence number of offset 0; set by the first data segment.
    base: Option<u32>,
    /// End of the in-order byte range (captured or not).
    end: u64,
    /// Next byte to parse; may pass `end` when a message known to be
    /// damaged is skipped before all of it has arrived.
    head: u64,
    /// `head` is at a message boundary.
    synced: bool,
    /// Captured bytes in [head, end) as maximal contiguous runs; what lies
    /// between runs was not captured.
    runs: VecDeque<Run>,
    /// Segments beyond `end`, by offset, waiting for the gap before them.
    pending: BTreeMap<u64, Pending>,
    /// Decoded before a restart, not yet handed out.
    ready: Vec<Message>,
    opts: DecodeOptions,
    stats: StreamStats,
}

#[derive(Debug)]
struct Run {
    off: u64,
    data: Vec<u8>,
}

impl Run {
    fn end(&self) -> u64 {
        self.off + self.data.len() as u64
    }
}

#[derive(Debug)]
struct Pending {
    data: Vec<u8>,
    full: usize,
}

/// What a stream could and could not use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StreamStats {
    pub segments: u64,
    /// Segments that brought no new bytes.
    pub retransmitted: u64,
    pub out_of_order: u64,
    /// Payload bytes that were not captured (truncated or lost segments).
    pub bytes_not_captured: u64,
    pub messages: u64,
    /// Messages skipped because part of them was not captured.
    pub skipped: u64,
    pub malformed: u64,
    /// Times framing was lost and the next marker searched for.
    pub resyncs: u64,
    /// Times the stream started over at a far-away sequence number.
    pub restarts: u64,
}

enum Read<'a> {
    Bytes(&'a [u8]),
    /// Part of the range was not captured.
    Gap,
    /// Not all of the range has arrived yet.
    NotYet,
}

enum Find {
    Found(usize),
    /// A marker starts here but its header is cut off by the end of the data.
    Partial(usize),
    /// Nothing; a marker may still start at this index (trailing 0xff bytes).
    Nothing(usize),
}

impl Stream {
    /// A stream that learns its sequence numbers from the first data and
    /// searches for the first marker (the capture may start mid-message).
    pub fn new() -> Self {
        Self::default()
    }

    /// A stream whose first payload byte has sequence number `seq` (the
    /// ISN + 1 of a SYN), so it starts at a message boundary.
    pub fn starting_at(seq: u32) -> Self {
        Stream {
            base: Some(seq),
            synced: true,
            ..Self::default()
        }
    }

    pub fn set_options(&mut self, opts: DecodeOptions) {
        self.opts = opts;
    }

    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Adds one segment: `payload` holds its captured bytes, `full_len` its
    /// real payload length (larger when the capture was truncated; a smaller
    /// one is taken as `payload.len()`). Segments may repeat or come out of
    /// order; bytes already seen are ignored.
    pub fn push(&mut self, seq: u32, payload: &[u8], full_len: usize) {
        let full = full_len.max(payload.len()).min(MAX_SEGMENT);
        let payload = &payload[..payload.len().min(full)];
        if full == 0 {
            return;
        }
        self.stats.segments += 1;
        let base = *self.base.get_or_insert(seq);
        // Truncation to u32 is the point: sequence space is mod 2^32.
        let end_seq = base.wrapping_add(self.end as u32);
        let delta = i64::from(seq.wrapping_sub(end_seq) as i32);
        if delta > MAX_AHEAD {
            self.restart(seq);
            self.append(0, payload, full);
            return;
        }
        let start = self.end as i64 + delta;
        if delta > 0 {
            self.stats.out_of_order += 1;
            let e = self.pending.entry(start as u64).or_insert(Pending {
                data: Vec::new(),
                full: 0,
            });
            // The same segment again: keep whichever copy has more.
            if full > e.full || payload.len() > e.data.len() {
                *e = Pending {
                    data: payload.to_vec(),
                    full,
                };
            }
            while self.pending.len() > MAX_PENDING {
                self.give_up_gap();
            }
            return;
        }
        if start + full as i64 <= self.end as i64 {
            self.stats.retransmitted += 1;
            return;
        }
        self.append(start, payload, full);
        self.drain_pending();
    }

    /// Complete messages decoded so far, in order.
    pub fn messages(&mut self) -> Vec<Message> {
        let mut out = std::mem::take(&mut self.ready);
        loop {
            if !self.synced && !self.resync() {
                break;
            }
            let len = match self.read(self.head, HEADER_LEN) {
                Read::NotYet => break,
                Read::Gap => {
                    self.lose_sync();
                    continue;
                }
                Read::Bytes(h) => {
                    let len = usize::from(u16::from_be_bytes([h[16], h[17]]));
                    if h[..16] != MARKER || len < HEADER_LEN {
                        self.lose_sync();
                        continue;
                    }
                    len
                }
            };
            match self.read(self.head, len) {
                Read::NotYet => break,
                Read::Gap => {
                    // The header is trustworthy, so the next message starts
                    // right after this one even though this one is lost.
                    self.stats.skipped += 1;
                }
                Read::Bytes(m) => match decode_with(m, self.opts) {
                    Ok((msg, _)) => {
                        self.stats.messages += 1;
                        out.push(msg);
                    }
                    Err(_) => self.stats.malformed += 1,
                },
            }
            self.head += len as u64;
        }
        self.trim();
        out
    }

    /// Takes every gap still waiting for a segment as lost, then decodes what
    /// that frees up: for the end of a capture.
    pub fn flush(&mut self) -> Vec<Message> {
        while !self.pending.is_empty() {
            self.give_up_gap();
        }
        self.messages()
    }

    fn restart(&mut self, seq: u32) {
        let ready = self.flush();
        *self = Stream {
            base: Some(seq),
            ready,
            opts: self.opts,
            stats: self.stats,
            ..Stream::default()
        };
        self.stats.restarts += 1;
    }

    /// Appends a segment starting at `start` (at or before `end`, possibly
    /// before offset 0) and reaching past `end`.
    fn append(&mut self, start: i64, data: &[u8], full: usize) {
        let seg_end = start + full as i64;
        let known_end = start + data.len() as i64;
        // Bytes below `end` are already there; below `head` no longer wanted.
        let from = self.end.max(self.head) as i64;
        if known_end > from {
            let bytes = &data[(from - start) as usize..];
            let from = from as u64;
            match self.runs.back_mut() {
                Some(r) if r.end() == from => r.data.extend_from_slice(bytes),
                _ => self.runs.push_back(Run {
                    off: from,
                    data: bytes.to_vec(),
                }),
            }
        }
        let gap_from = known_end.max(self.end as i64);
        if seg_end > gap_from {
            self.stats.bytes_not_captured += (seg_end - gap_from) as u64;
        }
        self.end = seg_end as u64;
    }

    fn drain_pending(&mut self) {
        while let Some(e) = self.pending.first_entry() {
            if *e.key() > self.end {
                break;
            }
            let (off, p) = e.remove_entry();
            if off + p.full as u64 <= self.end {
                self.stats.retransmitted += 1;
                continue;
            }
            self.append(off as i64, &p.data, p.full);
        }
    }

    /// The bytes up to the first pending segment will not come: count them
    /// as not captured and carry on after them.
    fn give_up_gap(&mut self) {
        if let Some((&off, _)) = self.pending.first_key_value() {
            if off > self.end {
                self.stats.bytes_not_captured += off - self.end;
                self.end = off;
            }
            self.drain_pending();
        }
    }

    fn lose_sync(&mut self) {
        self.synced = false;
        self.head += 1;
        self.stats.resyncs += 1;
    }

    fn read(&self, off: u64, len: usize) -> Read<'_> {
        if off >= self.end {
            return Read::NotYet;
        }
        let want_end = off + len as u64;
        let Some(run) = self.runs.iter().find(|r| r.off <= off && off < r.end()) else {
            return Read::Gap;
        };
        // Runs are maximal, so whatever follows one inside `end` is a gap.
        if run.end() < want_end.min(self.end) {
            return Read::Gap;
        }
        if want_end > self.end {
            return Read::NotYet;
        }
        let lo = (off - run.off) as usize;
        Read::Bytes(&run.data[lo..lo + len])
    }

    /// Moves `head` to the next plausible header; true if found.
    fn resync(&mut self) -> bool {
        for run in &self.runs {
            if run.end() <= self.head {
                continue;
            }
            let start = self.head.max(run.off);
            let s = &run.data[(start - run.off) as usize..];
            // Only the last run can still grow; a gap cuts the others off.
            let open_ended = run.end() == self.end;
            match find_header(s) {
                Find::Found(p) => {
                    self.head = start + p as u64;
                    self.synced = true;
                    return true;
                }
                Find::Partial(p) | Find::Nothing(p) if open_ended => {
                    self.head = start + p as u64;
                    return false;
                }
                _ => {}
            }
        }
        self.head = self.head.max(self.end);
        false
    }

    /// Drops bytes before `head`.
    fn trim(&mut self) {
        while let Some(r) = self.runs.front_mut() {
            if r.end() <= self.head {
                self.runs.pop_front();
            } else {
                if r.off < self.head {
                    r.data.drain(..(self.head - r.off) as usize);
                    r.off = self.head;
                }
                break;
            }
        }
    }
}

fn find_header(s: &[u8]) -> Find {
    let mut ones = 0;
    for (j, &b) in s.iter().enumerate() {
        if b != 0xff {
            ones = 0;
            continue;
        }
        ones += 1;
        if ones >= 16 {
            let p = j + 1 - 16;
            match s.get(p..p + HEADER_LEN) {
                None => return Find::Partial(p),
                Some(h) if plausible(h) => return Find::Found(p),
                Some(_) => {}
            }
        }
    }
    Find::Nothing(s.len() - ones)
}

/// A header worth resynchronising on: marker, a type this decoder knows and
/// a length that type can have.
fn plausible(h: &[u8]) -> bool {
    let len = usize::from(u16::from_be_bytes([h[16], h[17]]));
    let fits = match h[18] {
        MSG_OPEN => len >= 29,
        MSG_UPDATE => len >= 23,
        MSG_NOTIFICATION => len >= 21,
        MSG_KEEPALIVE => len == 19,
        MSG_ROUTE_REFRESH => len == 23,
        _ => false,
    };
    h[..16] == MARKER && fits && len <= MAX_MESSAGE_LEN
}

// ---------------------------------------------------------------------------
// Sessions

/// Seen from this node: `Tx` was sent by it, `Rx` received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    Rx,
    Tx,
}

/// One TCP connection's 4-tuple, oriented from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SessionKey {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl SessionKey {
    /// Orients a packet's addresses: a sent packet's source is local.
    pub fn from_packet(dir: Dir, src: SocketAddr, dst: SocketAddr) -> Self {
        match dir {
            Dir::Tx => SessionKey {
                local: src,
                peer: dst,
            },
            Dir::Rx => SessionKey {
                local: dst,
                peer: src,
            },
        }
    }
}

/// One captured TCP segment of a session.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub ts_ns: u64,
    pub dir: Dir,
    /// TCP flags byte ([`TCP_SYN`], [`TCP_ACK`], ...).
    pub tcp_flags: u8,
    pub seq: u32,
    /// Captured payload bytes.
    pub payload: &'a [u8],
    /// Real payload length; more than `payload.len()` when truncated.
    pub full_len: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SessionState {
    /// Nothing observed yet.
    Idle,
    /// SYN without answer.
    SynSent {
        by_peer: bool,
        attempts: u32,
    },
    Reset {
        by_peer: bool,
    },
    /// FIN without a NOTIFICATION first.
    Closed {
        by_peer: bool,
    },
    /// TCP is up, no OPEN seen.
    Established,
    /// One side's OPEN seen.
    OpenSent {
        by_peer: bool,
    },
    /// Both OPENs seen, KEEPALIVEs not yet both ways.
    OpenConfirm,
    /// KEEPALIVE (or UPDATE) both ways, after the OPENs when they were seen.
    Up,
    Notified {
        sent_by_peer: bool,
        notification: Notification,
    },
}

impl SessionState {
    /// Whether routes learnt on the connection are gone (RFC 4271: closing a
    /// session withdraws everything it announced).
    pub fn is_down(&self) -> bool {
        matches!(
            self,
            SessionState::Idle
                | SessionState::SynSent { .. }
                | SessionState::Reset { .. }
                | SessionState::Closed { .. }
                | SessionState::Notified { .. }
        )
    }

    /// Closed, reset or notified: final for the connection. Messages that
    /// still arrive (e.g. freed by `finish`) are counted and their routes
    /// kept, but do not revive it; only a new SYN does.
    fn settled(&self) -> bool {
        matches!(
            self,
            SessionState::Reset { .. }
                | SessionState::Closed { .. }
                | SessionState::Notified { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    Announce,
    Withdraw,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteEvent {
    pub ts_ns: u64,
    /// `Tx`: this node advertised it to the peer; `Rx`: the peer to this node.
    pub dir: Dir,
    pub peer: IpAddr,
    pub action: RouteAction,
    pub prefix: Prefix,
    pub next_hop: Option<IpAddr>,
    pub as_path: Vec<u32>,
    /// Which TCP connection on this 4-tuple (counts SYNs with a new ISN).
    pub connection: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotificationEvent {
    pub ts_ns: u64,
    pub sent_by_peer: bool,
    pub notification: Notification,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MessageCounts {
    pub open: u64,
    pub update: u64,
    pub notification: u64,
    pub keepalive: u64,
    pub route_refresh: u64,
    pub unknown: u64,
}

/// Route events kept per session; a router sending a full table would
/// otherwise grow this without bound.
const MAX_ROUTES: usize = 1 << 16;

/// One BGP session (one TCP 4-tuple) as seen from this node.
#[derive(Debug, Serialize)]
pub struct Session {
    key: SessionKey,
    state: SessionState,
    first_ts_ns: u64,
    last_ts_ns: u64,
    segments: u64,
    connection: u32,
    local_open: Option<Open>,
    peer_open: Option<Open>,
    sent: MessageCounts,
    received: MessageCounts,
    notifications: Vec<NotificationEvent>,
    routes: Vec<RouteEvent>,
    routes_dropped: u64,
    /// ADD-PATH negotiated for some family: its NLRI carry path identifiers
    /// that are not decoded, so prefixes of that family may be wrong.
    add_path: bool,
    tx_capture: StreamStats,
    rx_capture: StreamStats,
    #[serde(skip)]
    tx: Stream,
    #[serde(skip)]
    rx: Stream,
    #[serde(skip)]
    isn: [Option<u32>; 2],
    /// KEEPALIVE or UPDATE seen per direction on this connection.
    #[serde(skip)]
    alive: [bool; 2],
}

fn idx(d: Dir) -> usize {
    match d {
        Dir::Rx => 0,
        Dir::Tx => 1,
    }
}

impl Session {
    pub fn new(key: SessionKey) -> Self {
        Session {
            key,
            state: SessionState::Idle,
            first_ts_ns: 0,
            last_ts_ns: 0,
            segments: 0,
            connection: 0,
            local_open: None,
            peer_open: None,
            sent: MessageCounts::default(),
            received: MessageCounts::default(),
            notifications: Vec::new(),
            routes: Vec::new(),
            routes_dropped: 0,
            add_path: false,
            tx_capture: StreamStats::default(),
            rx_capture: StreamStats::default(),
            tx: Stream::new(),
            rx: Stream::new(),
            isn: [None; 2],
            alive: [false; 2],
        }
    }

    pub fn key(&self) -> SessionKey {
        self.key
    }

    pub fn state(&self) -> &SessionState {
        &self.state
    }

    pub fn first_ts_ns(&self) -> u64 {
        self.first_ts_ns
    }

    pub fn last_ts_ns(&self) -> u64 {
        self.last_ts_ns
    }

    pub fn local_open(&self) -> Option<&Open> {
        self.local_open.as_ref()
    }

    pub fn peer_open(&self) -> Option<&Open> {
        self.peer_open.as_ref()
    }

    pub fn routes(&self) -> &[RouteEvent] {
        &self.routes
    }

    pub fn notifications(&self) -> &[NotificationEvent] {
        &self.notifications
    }

    /// Messages sent by this node / received from the peer.
    pub fn counts(&self) -> (MessageCounts, MessageCounts) {
        (self.sent, self.received)
    }

    /// Capture quality of the sent / received streams.
    pub fn capture(&self) -> (StreamStats, StreamStats) {
        (self.tx_capture, self.rx_capture)
    }

    pub fn add_path(&self) -> bool {
        self.add_path
    }

    fn stream(&mut self, d: Dir) -> &mut Stream {
        match d {
            Dir::Rx => &mut self.rx,
            Dir::Tx => &mut self.tx,
        }
    }

    /// Feeds one segment; segments should come in capture order.
    pub fn observe(&mut self, seg: &Segment<'_>) {
        if self.segments == 0 {
            self.first_ts_ns = seg.ts_ns;
        }
        self.segments += 1;
        self.last_ts_ns = self.last_ts_ns.max(seg.ts_ns);
        let d = seg.dir;
        let by_peer = d == Dir::Rx;
        let flags = seg.tcp_flags;

        if flags & TCP_RST != 0 {
            if !matches!(self.state, SessionState::Notified { .. }) {
                self.state = SessionState::Reset { by_peer };
            }
            return;
        }
        let mut data_seq = seg.seq;
        if flags & TCP_SYN != 0 {
            // A SYN's payload (TCP Fast Open) starts after the SYN's own number.
            data_seq = seg.seq.wrapping_add(1);
            if flags & TCP_ACK == 0 {
                self.syn(d, seg.seq);
            } else if self.isn[idx(d)] != Some(seg.seq) {
                // SYN-ACK: the answer to an attempt; the answering side's
                // stream starts here.
                self.isn[idx(d)] = Some(seg.seq);
                *self.stream(d) = Stream::starting_at(data_seq);
                if matches!(
                    self.state,
                    SessionState::Idle | SessionState::SynSent { .. }
                ) {
                    self.state = SessionState::Established;
                }
            }
        } else if matches!(
            self.state,
            SessionState::Idle | SessionState::SynSent { .. }
        ) {
            // Any other segment means the connection is open, even if the
            // handshake was not seen (capture started mid-session).
            self.state = SessionState::Established;
        }

        let opts = self.decode_options();
        let stream = self.stream(d);
        stream.set_options(opts);
        stream.push(data_seq, seg.payload, seg.full_len);
        let msgs = stream.messages();
        self.process(seg.ts_ns, d, msgs);

        if flags & TCP_FIN != 0 && !self.state.settled() {
            self.state = SessionState::Closed { by_peer };
        }
    }

    /// Decodes what the end of the capture left waiting for missing segments.
    pub fn finish(&mut self, ts_ns: u64) {
        for d in [Dir::Rx, Dir::Tx] {
            let msgs = self.stream(d).flush();
            self.process(ts_ns, d, msgs);
        }
    }

    fn syn(&mut self, d: Dir, seq: u32) {
        let by_peer = d == Dir::Rx;
        if self.isn[idx(d)] == Some(seq) {
            // Retransmitted SYN: the attempt goes unanswered so far.
            if let SessionState::SynSent { attempts, .. } = &mut self.state {
                *attempts += 1;
            }
            return;
        }
        // A new connection on this 4-tuple: what the old one negotiated and
        // announced no longer holds.
        self.connection += 1;
        self.isn = [None; 2];
        self.isn[idx(d)] = Some(seq);
        self.local_open = None;
        self.peer_open = None;
        self.alive = [false; 2];
        self.add_path = false;
        self.rx = Stream::new();
        self.tx = Stream::new();
        *self.stream(d) = Stream::starting_at(seq.wrapping_add(1));
        self.state = SessionState::SynSent {
            by_peer,
            attempts: 1,
        };
    }

    fn decode_options(&self) -> DecodeOptions {
        match (&self.local_open, &self.peer_open) {
            (Some(l), Some(p)) => DecodeOptions {
                four_octet_as: Some(l.four_octet_as() && p.four_octet_as()),
            },
            _ => DecodeOptions::default(),
        }
    }

    fn process(&mut self, ts_ns: u64, d: Dir, msgs: Vec<Message>) {
        let by_peer = d == Dir::Rx;
        for msg in msgs {
            let counts = if by_peer {
                &mut self.received
            } else {
                &mut self.sent
            };
            match msg {
                Message::Open(open) => {
                    counts.open += 1;
                    if by_peer {
                        self.peer_open = Some(open);
                    } else {
                        self.local_open = Some(open);
                    }
                    self.add_path = self.add_path_negotiated();
                    if !self.state.settled() {
                        self.state = if self.local_open.is_some() && self.peer_open.is_some() {
                            SessionState::OpenConfirm
                        } else {
                            SessionState::OpenSent { by_peer }
                        };
                    }
                    // For the messages still to come (AS_PATH width).
                    let opts = self.decode_options();
                    self.rx.set_options(opts);
                    self.tx.set_options(opts);
                }
                Message::Keepalive => {
                    counts.keepalive += 1;
                    self.alive(d);
                }
                Message::Update(u) => {
                    counts.update += 1;
                    self.alive(d);
                    self.record_routes(ts_ns, d, &u);
                }
                Message::Notification(n) => {
                    counts.notification += 1;
                    self.notifications.push(NotificationEvent {
                        ts_ns,
                        sent_by_peer: by_peer,
                        notification: n.clone(),
                    });
                    // The most telling end state, even after a RST or FIN
                    // already processed (e.g. its segment was reordered).
                    self.state = SessionState::Notified {
                        sent_by_peer: by_peer,
                        notification: n,
                    };
                }
                Message::RouteRefresh { .. } => counts.route_refresh += 1,
                Message::Unknown { .. } => counts.unknown += 1,
            }
        }
        self.tx_capture = self.tx.stats();
        self.rx_capture = self.rx.stats();
    }

    fn alive(&mut self, d: Dir) {
        self.alive[idx(d)] = true;
        // Each side sends KEEPALIVE only once it accepted the other's OPEN,
        // so KEEPALIVEs both ways mean Established on both ends even if the
        // OPENs themselves were not captured.
        if self.alive == [true, true] && !self.state.settled() {
            self.state = SessionState::Up;
        }
    }

    fn add_path_negotiated(&self) -> bool {
        let (Some(l), Some(p)) = (&self.local_open, &self.peer_open) else {
            return false;
        };
        // Path IDs flow where one side may send (bit 2) and the other receive (bit 1).
        l.add_path_modes().any(|a| {
            p.add_path_modes().any(|b| {
                a.afi == b.afi
                    && a.safi == b.safi
                    && ((a.send_receive & 2 != 0 && b.send_receive & 1 != 0)
                        || (a.send_receive & 1 != 0 && b.send_receive & 2 != 0))
            })
        })
    }

    fn record_routes(&mut self, ts_ns: u64, d: Dir, u: &Update) {
        let peer = self.key.peer.ip();
        let connection = self.connection;
        let withdrawals = u.withdrawals().map(|p| (RouteAction::Withdraw, p, None));
        let announcements = u
            .announcements()
            .map(|(p, nh)| (RouteAction::Announce, p, nh));
        for (action, prefix, next_hop) in withdrawals.chain(announcements) {
            if self.routes.len() >= MAX_ROUTES {
                self.routes_dropped += 1;
                continue;
            }
            self.routes.push(RouteEvent {
                ts_ns,
                dir: d,
                peer,
                action,
                prefix,
                next_hop,
                as_path: if action == RouteAction::Announce {
                    u.as_path.clone()
                } else {
                    Vec::new()
                },
                connection,
            });
        }
    }

    /// What became of the most specific prefix covering `ip` in direction
    /// `dir` (`Tx`: advertised by this node) on this session.
    pub fn route_status(&self, ip: IpAddr, dir: Dir) -> RouteStatus {
        let mut latest: BTreeMap<Prefix, &RouteEvent> = BTreeMap::new();
        for e in self
            .routes
            .iter()
            .filter(|e| e.dir == dir && e.prefix.covers(ip))
        {
            latest.insert(e.prefix, e);
        }
        let announced = latest
            .values()
            .filter(|e| e.action == RouteAction::Announce)
            .max_by_key(|e| (e.prefix.len, e.ts_ns));
        if let Some(e) = announced {
            if self.state.is_down() || e.connection != self.connection {
                return RouteStatus::SessionDown {
                    prefix: e.prefix,
                    next_hop: e.next_hop,
                    ts_ns: e.ts_ns,
                };
            }
            return RouteStatus::Announced {
                prefix: e.prefix,
                next_hop: e.next_hop,
                as_path: e.as_path.clone(),
                ts_ns: e.ts_ns,
            };
        }
        match latest.values().max_by_key(|e| e.ts_ns) {
            Some(e) => RouteStatus::Withdrawn {
                prefix: e.prefix,
                ts_ns: e.ts_ns,
            },
            None => RouteStatus::NotSeen,
        }
    }

    /// One line about the session's outcome.
    pub fn describe(&self) -> String {
        let peer = self.key.peer.ip();
        let side = |by_peer: bool| {
            if by_peer {
                peer.to_string()
            } else {
                "this node".to_string()
            }
        };
        match &self.state {
            SessionState::Idle => format!("no segment seen with {peer}"),
            SessionState::SynSent { by_peer, attempts } => {
                let (from, to) = if *by_peer {
                    (peer.to_string(), format!("this node's {}", self.key.local))
                } else {
                    ("this node".to_string(), self.key.peer.to_string())
                };
                format!("{from} sent SYN to {to} without answer ({attempts} attempt(s))")
            }
            SessionState::Reset { by_peer } => {
                format!(
                    "TCP connection with {peer} reset (RST) by {}",
                    side(*by_peer)
                )
            }
            SessionState::Closed { by_peer } => format!(
                "TCP connection with {peer} closed (FIN) by {} without NOTIFICATION",
                side(*by_peer)
            ),
            SessionState::Established => {
                format!("TCP connected with {peer}, no BGP OPEN seen")
            }
            SessionState::OpenSent { by_peer } => format!(
                "OPEN sent by {} only; no OPEN from {}",
                side(*by_peer),
                side(!*by_peer)
            ),
            SessionState::OpenConfirm => {
                format!(
                    "OPEN exchanged with {peer}{}, KEEPALIVE not yet both ways",
                    self.asns()
                )
            }
            SessionState::Up if self.local_open.is_none() && self.peer_open.is_none() => {
                format!(
                    "BGP session with {peer} up (KEEPALIVE both ways; OPENs before the capture)"
                )
            }
            SessionState::Up => {
                format!(
                    "BGP session with {peer} up (OPEN/KEEPALIVE exchanged{})",
                    self.asns()
                )
            }
            SessionState::Notified {
                sent_by_peer,
                notification,
            } => format!(
                "{} sent NOTIFICATION {}",
                if *sent_by_peer {
                    peer.to_string()
                } else {
                    format!("this node (to {peer})")
                },
                notification.describe()
            ),
        }
    }

    fn asns(&self) -> String {
        match (&self.local_open, &self.peer_open) {
            (Some(l), Some(p)) => format!("; local AS {}, peer AS {}", l.real_asn(), p.real_asn()),
            _ => String::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Summaries

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RouteStatus {
    NotSeen,
    Announced {
        prefix: Prefix,
        next_hop: Option<IpAddr>,
        as_path: Vec<u32>,
        ts_ns: u64,
    },
    Withdrawn {
        prefix: Prefix,
        ts_ns: u64,
    },
    /// Announced, but the session went down since, which withdraws it.
    SessionDown {
        prefix: Prefix,
        next_hop: Option<IpAddr>,
        ts_ns: u64,
    },
}

/// Everything seen with one peer address, across its TCP connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerSummary {
    pub peer: IpAddr,
    pub local: IpAddr,
    /// 4-tuples seen (each connection attempt usually has its own port).
    pub sessions: usize,
    /// State of the most recent session.
    pub state: SessionState,
    pub text: String,
    pub local_asn: Option<u32>,
    pub peer_asn: Option<u32>,
    pub peer_hostname: Option<String>,
    pub last_notification: Option<NotificationEvent>,
    /// The LB IP as advertised by this node to the peer.
    pub advertised: RouteStatus,
    /// The LB IP as advertised by the peer to this node (e.g. reflected from
    /// another speaker).
    pub received: RouteStatus,
    pub add_path: bool,
    /// Messages lost to truncation or lost events, both directions.
    pub messages_not_decoded: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LbBgpSummary {
    pub lb_ip: IpAddr,
    pub peers: Vec<PeerSummary>,
}

impl LbBgpSummary {
    /// One line per finding, for the text report.
    pub fn describe(&self) -> Vec<String> {
        let ip = self.lb_ip;
        if self.peers.is_empty() {
            return vec!["no BGP traffic (TCP 179) seen on this node".to_string()];
        }
        let mut lines = Vec::new();
        for p in &self.peers {
            let tries = if p.sessions > 1 {
                format!(" [{} connections]", p.sessions)
            } else {
                String::new()
            };
            lines.push(format!("{}{tries}", p.text));
            if let Some(n) = &p.last_notification
                && !matches!(p.state, SessionState::Notified { .. })
            {
                let by = if n.sent_by_peer {
                    p.peer.to_string()
                } else {
                    "this node".into()
                };
                lines.push(format!(
                    "  earlier: {by} sent NOTIFICATION {}",
                    n.notification.describe()
                ));
            }
            if let Some(h) = p
                .last_notification
                .as_ref()
                .and_then(|n| n.notification.hint())
            {
                lines.push(format!("  hint: {h}"));
            }
            let peer = p.peer;
            lines.push(match &p.advertised {
                RouteStatus::NotSeen => format!(
                    "  no UPDATE announcing {ip} to {peer} seen (not announced by this node, or announced before the capture)"
                ),
                RouteStatus::Announced {
                    prefix, next_hop, ..
                } => format!("  UPDATE announces {prefix} to {peer}{}", via(*next_hop)),
                RouteStatus::Withdrawn { prefix, .. } => {
                    format!("  UPDATE withdraws {prefix} from {peer}")
                }
                RouteStatus::SessionDown { prefix, .. } => format!(
                    "  {prefix} was announced to {peer}, then the session went down (implicitly withdrawn)"
                ),
            });
            if let RouteStatus::Announced {
                prefix, next_hop, ..
            } = &p.received
            {
                lines.push(format!(
                    "  {peer} advertises {prefix}{} to this node",
                    via(*next_hop)
                ));
            }
            if p.add_path {
                lines.push(
                    "  ADD-PATH negotiated: prefixes of those families may be misdecoded".into(),
                );
            }
            if p.messages_not_decoded > 0 {
                lines.push(format!(
                    "  {} message(s) not decoded (capture truncated or events lost)",
                    p.messages_not_decoded
                ));
            }
        }
        lines
    }
}

fn via(nh: Option<IpAddr>) -> String {
    nh.map(|n| format!(" with next hop {n}"))
        .unwrap_or_default()
}

/// For the LB IP: per peer, the session outcome and whether a covering
/// prefix was announced, withdrawn, or never seen. Call
/// [`Session::finish`] (or [`Sessions::finish`]) first.
pub fn summarize<'a>(
    sessions: impl IntoIterator<Item = &'a Session>,
    lb_ip: IpAddr,
) -> LbBgpSummary {
    let mut by_peer: BTreeMap<(IpAddr, IpAddr), Vec<&Session>> = BTreeMap::new();
    for s in sessions {
        by_peer
            .entry((s.key.peer.ip(), s.key.local.ip()))
            .or_default()
            .push(s);
    }
    let peers = by_peer
        .into_iter()
        .map(|((peer, local), mut ss)| {
            ss.sort_by_key(|s| (s.first_ts_ns, s.last_ts_ns));
            let latest = ss[ss.len() - 1];
            // The latest session with something to say about the prefix
            // decides: older sessions' routes died with them.
            let status = |dir| {
                ss.iter()
                    .rev()
                    .map(|s| s.route_status(lb_ip, dir))
                    .find(|r| *r != RouteStatus::NotSeen)
                    .unwrap_or(RouteStatus::NotSeen)
            };
            let opens = |f: fn(&Session) -> Option<&Open>| ss.iter().rev().find_map(|s| f(s));
            PeerSummary {
                peer,
                local,
                sessions: ss.len(),
                state: latest.state.clone(),
                text: latest.describe(),
                local_asn: opens(Session::local_open).map(Open::real_asn),
                peer_asn: opens(Session::peer_open).map(Open::real_asn),
                peer_hostname: opens(Session::peer_open)
                    .and_then(Open::hostname)
                    .map(str::to_string),
                last_notification: ss
                    .iter()
                    .flat_map(|s| s.notifications.iter())
                    .max_by_key(|n| n.ts_ns)
                    .cloned(),
                advertised: status(Dir::Tx),
                received: status(Dir::Rx),
                add_path: ss.iter().any(|s| s.add_path),
                messages_not_decoded: ss
                    .iter()
                    .map(|s| {
                        s.tx_capture.skipped
                            + s.tx_capture.malformed
                            + s.rx_capture.skipped
                            + s.rx_capture.malformed
                    })
                    .sum(),
            }
        })
        .collect();
    LbBgpSummary { lb_ip, peers }
}

/// Sessions by 4-tuple.
#[derive(Debug, Default)]
pub struct Sessions {
    map: BTreeMap<SessionKey, Session>,
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn observe(&mut self, key: SessionKey, seg: &Segment<'_>) {
        self.map
            .entry(key)
            .or_insert_with(|| Session::new(key))
            .observe(seg);
    }

    pub fn finish(&mut self) {
        for s in self.map.values_mut() {
            let ts = s.last_ts_ns;
            s.finish(ts);
        }
    }

    pub fn get(&self, key: &SessionKey) -> Option<&Session> {
        self.map.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.map.values()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn summary(&self, lb_ip: IpAddr) -> LbBgpSummary {
        summarize(self.iter(), lb_ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 240));

    /// Marker, length and type in front of a body.
    fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![0xff; 16];
        v.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
        v.push(ty);
        v.extend_from_slice(body);
        v
    }

    fn keepalive() -> Vec<u8> {
        msg(MSG_KEEPALIVE, &[])
    }

    /// OPEN from AS 4200000001 (AS_TRANS in the 2-octet field), hold 90,
    /// id 10.0.0.1, with MP IPv4 unicast, route refresh, 4-octet AS and
    /// hostname "leaf.lab".
    fn open_4octet() -> Vec<u8> {
        #[rustfmt::skip]
        let body = [
            4,                              // version
            0x5b, 0xa0,                     // My AS: 23456 (AS_TRANS)
            0, 90,                          // hold time
            10, 0, 0, 1,                    // BGP identifier
            27,                             // optional parameters length
            2, 25,                          // parameter: capabilities
            1, 4, 0, 1, 0, 1,               //   multiprotocol IPv4 unicast
            2, 0,                           //   route refresh
            65, 4, 0xfa, 0x56, 0xea, 0x01,  //   4-octet AS 4200000001
            73, 9, 4, b'l', b'e', b'a', b'f', 3, b'l', b'a', b'b', // hostname
        ];
        msg(MSG_OPEN, &body)
    }

    /// OPEN from AS 64512 with only the 4-octet AS capability (64512 too).
    fn open_asn(asn: u16) -> Vec<u8> {
        let [hi, lo] = asn.to_be_bytes();
        #[rustfmt::skip]
        let body = [
            4, hi, lo, 0, 90, 10, 0, 0, 5,
            8, 2, 6, 65, 4, 0, 0, hi, lo,
        ];
        msg(MSG_OPEN, &body)
    }

    /// UPDATE withdrawing 198.51.100.0/24 and announcing 203.0.113.240/32
    /// via 192.0.2.10, AS path 64512 (4-octet), community 65000:100.
    fn update_v4() -> Vec<u8> {
        #[rustfmt::skip]
        let body = [
            0, 4,                                 // withdrawn routes length
            24, 198, 51, 100,                     // 198.51.100.0/24
            0, 27,                                // path attributes length
            0x40, 1, 1, 0,                        // ORIGIN IGP
            0x40, 2, 6, 2, 1, 0, 0, 0xfc, 0x00,   // AS_PATH SEQ [64512], 4-octet
            0x40, 3, 4, 192, 0, 2, 10,            // NEXT_HOP 192.0.2.10
            0xc0, 8, 4, 0xfd, 0xe8, 0, 100,       // COMMUNITIES 65000:100
            32, 203, 0, 113, 240,                 // NLRI 203.0.113.240/32
        ];
        msg(MSG_UPDATE, &body)
    }

    /// UPDATE withdrawing 203.0.113.240/32.
    fn withdraw_v4() -> Vec<u8> {
        msg(MSG_UPDATE, &[0, 5, 32, 203, 0, 113, 240, 0, 0])
    }

    /// UPDATE with MP_REACH (extended length) for 2001:db8:ffff::10/128 and
    /// 2001:db8:1:2::/64, next hops 2001:db8::1 and fe80::1.
    fn update_v6() -> Vec<u8> {
        let mut b = vec![0, 0, 0, 74];
        b.extend([0x90, 14, 0, 63, 0, 2, 1, 32]);
        b.extend(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets());
        b.extend(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).octets());
        b.push(0);
        b.push(128);
        b.extend(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x10).octets());
        b.extend([64, 0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2]);
        b.extend([0x40, 1, 1, 0, 0x40, 2, 0]);
        msg(MSG_UPDATE, &b)
    }

    fn withdraw_v6() -> Vec<u8> {
        let mut b = vec![0, 0, 0, 23, 0x80, 15, 20, 0, 2, 1, 128];
        b.extend(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x10).octets());
        msg(MSG_UPDATE, &b)
    }

    fn notification(code: u8, sub: u8, data: &[u8]) -> Vec<u8> {
        let mut b = vec![code, sub];
        b.extend_from_slice(data);
        msg(MSG_NOTIFICATION, &b)
    }

    fn shutdown() -> Vec<u8> {
        let mut d = vec![11];
        d.extend_from_slice(b"maintenance");
        notification(6, 2, &d)
    }

    fn one(buf: &[u8]) -> Message {
        let (m, n) = decode(buf).unwrap();
        assert_eq!(n, buf.len());
        m
    }

    fn pfx(s: &str) -> Prefix {
        let (a, l) = s.split_once('/').unwrap();
        Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
    }

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
    fn open_with_capabilities() {
        let Message::Open(o) = one(&open_4octet()) else {
            panic!()
        };
        assert_eq!((o.version, o.asn, o.hold_time), (4, AS_TRANS, 90));
        assert_eq!(o.bgp_id, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(o.real_asn(), 4_200_000_001);
        assert!(o.four_octet_as());
        assert_eq!(o.hostname(), Some("leaf"));
        assert_eq!(
            o.capabilities[..2],
            [
                Capability::Multiprotocol { afi: 1, safi: 1 },
                Capability::RouteRefresh
            ]
        );
        // Without the capability the 2-octet field is the ASN.
        let Message::Open(o) = one(&msg(MSG_OPEN, &[4, 0xfd, 0xe8, 0, 3, 1, 2, 3, 4, 0])) else {
            panic!()
        };
        assert_eq!(o.real_asn(), 65000);
        assert!(o.capabilities.is_empty());
    }

    #[test]
    fn open_with_extended_optional_parameters() {
        // RFC 9072: 255, 255, 2-octet length, then type + 2-octet length.
        #[rustfmt::skip]
        let body = [
            4, 0xfd, 0xe8, 0, 90, 1, 1, 1, 1,
            255, 255, 0, 9,
            2, 0, 6, 65, 4, 0, 0, 0xfd, 0xe9,
        ];
        let Message::Open(o) = one(&msg(MSG_OPEN, &body)) else {
            panic!()
        };
        assert_eq!(o.real_asn(), 65001);
    }

    #[test]
    fn update_ipv4() {
        let Message::Update(u) = one(&update_v4()) else {
            panic!()
        };
        assert_eq!(u.withdrawn, [pfx("198.51.100.0/24")]);
        assert_eq!(u.announced, [pfx("203.0.113.240/32")]);
        assert_eq!(u.next_hop, Some("192.0.2.10".parse().unwrap()));
        assert_eq!(u.as_path, [64512]);
        assert_eq!(u.communities[0].to_string(), "65000:100");
        assert_eq!(
            u.announcements().collect::<Vec<_>>(),
            [(pfx("203.0.113.240/32"), u.next_hop)]
        );
    }

    #[test]
    fn as_path_widths_and_as4_path() {
        // 2-octet AS_PATH [65001, AS_TRANS] with AS4_PATH [4200000001].
        #[rustfmt::skip]
        let body = [
            0, 0, 0, 18,
            0x40, 2, 6, 2, 2, 0xfd, 0xe9, 0x5b, 0xa0,
            0xc0, 17, 6, 2, 1, 0xfa, 0x56, 0xea, 0x01,
            24, 10, 1, 2,
        ];
        let m = msg(MSG_UPDATE, &body);
        // Guessing: the 4-octet reading fails, so 2-octet, then AS4_PATH.
        let Message::Update(u) = one(&m) else {
            panic!()
        };
        assert_eq!(u.as_path, [65001, 4_200_000_001]);
        let two = DecodeOptions {
            four_octet_as: Some(false),
        };
        let Message::Update(u) = decode_with(&m, two).unwrap().0 else {
            panic!()
        };
        assert_eq!(u.as_path, [65001, 4_200_000_001]);
        assert_eq!(u.announced, [pfx("10.1.2.0/24")]);
    }

    #[test]
    fn update_mp_reach_and_unreach() {
        let Message::Update(u) = one(&update_v6()) else {
            panic!()
        };
        let r = u.mp_reach.as_ref().unwrap();
        assert_eq!((r.afi, r.safi), (AFI_IPV6, SAFI_UNICAST));
        assert_eq!(
            r.next_hops,
            [
                "2001:db8::1".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
        assert_eq!(
            r.announced,
            [pfx("2001:db8:ffff::10/128"), pfx("2001:db8:1:2::/64")]
        );
        assert!(u.as_path.is_empty());
        let Message::Update(u) = one(&withdraw_v6()) else {
            panic!()
        };
        assert_eq!(
            u.withdrawals().collect::<Vec<_>>(),
            [pfx("2001:db8:ffff::10/128")]
        );
    }

    #[test]
    fn notification_names() {
        let n = |c, s, d: &[u8]| match one(&notification(c, s, d)) {
            Message::Notification(n) => n,
            _ => panic!(),
        };
        assert_eq!(n(2, 2, &[]).describe(), "OPEN Message Error / Bad Peer AS");
        assert!(n(2, 2, &[]).hint().unwrap().contains("peerASN"));
        assert_eq!(
            n(1, 3, &[7]).describe(),
            "Message Header Error / Bad Message Type (type 7)"
        );
        assert_eq!(
            n(2, 1, &[0, 4]).describe(),
            "OPEN Message Error / Unsupported Version Number (highest supported: 4)"
        );
        assert_eq!(
            n(2, 7, &[65, 4, 0, 0, 0, 1, 69, 0]).describe(),
            "OPEN Message Error / Unsupported Capability (capability codes 65, 69)"
        );
        assert_eq!(
            n(5, 2, &[]).describe(),
            "Finite State Machine Error / Receive Unexpected Message in OpenConfirm State"
        );
        let Message::Notification(s) = one(&shutdown()) else {
            panic!()
        };
        assert_eq!(
            s.describe(),
            "Cease / Administrative Shutdown: \"maintenance\""
        );
        assert_eq!(n(6, 3, &[]).describe(), "Cease / Peer De-configured");
        assert_eq!(n(6, 0, &[]).describe(), "Cease / Unspecific");
        assert_eq!(n(4, 0, &[]).describe(), "Hold Timer Expired");
        assert_eq!(
            n(6, 1, &[0, 1, 1, 0, 0, 0, 100]).describe(),
            "Cease / Maximum Number of Prefixes Reached (AFI 1/SAFI 1, limit 100)"
        );
        assert_eq!(
            n(1, 2, &[0x10, 0x01]).describe(),
            "Message Header Error / Bad Message Length (length 4097)"
        );
        assert_eq!(n(6, 99, &[]).describe(), "Cease / subcode 99");
        assert_eq!(n(42, 1, &[]).describe(), "error code 42 / subcode 1");
        // A shutdown length byte longer than the data is not trusted.
        assert_eq!(
            n(6, 2, &[50, b'x']).describe(),
            "Cease / Administrative Shutdown"
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v["description"],
            "Cease / Administrative Shutdown: \"maintenance\""
        );
        assert_eq!(v["code"], 6);
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

    #[test]
    fn prefixes() {
        let p = pfx("203.0.113.240/28");
        assert_eq!(p.to_string(), "203.0.113.240/28");
        assert!(p.covers(LB));
        assert!(p.covers("203.0.113.255".parse().unwrap()));
        assert!(!p.covers("203.0.113.239".parse().unwrap()));
        assert!(!p.covers("::1".parse().unwrap()));
        assert!(pfx("0.0.0.0/0").covers(LB));
        assert!(pfx("203.0.113.240/32").covers(LB));
        // Host bits are cleared by `new`, and ignored by `covers` anyway.
        assert_eq!(pfx("10.1.2.3/8").to_string(), "10.0.0.0/8");
        let raw = Prefix {
            addr: "10.1.2.3".parse().unwrap(),
            len: 8,
        };
        assert!(raw.covers("10.9.9.9".parse().unwrap()));
        assert!(Prefix::new(LB, 33).is_none());
        assert!(!Prefix { addr: LB, len: 40 }.covers(LB));
        let v6 = pfx("2001:db8::/32");
        assert!(v6.covers("2001:db8:ffff::10".parse().unwrap()));
        assert!(!v6.covers("2001:db9::1".parse().unwrap()));
        assert_eq!(serde_json::to_value(p).unwrap(), "203.0.113.240/28");
    }

    // -- Stream -------------------------------------------------------------

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    fn names(ms: &[Message]) -> Vec<&'static str> {
        ms.iter().map(Message::name).collect()
    }

    #[test]
    fn stream_several_messages_per_segment_and_split_messages() {
        let bytes = cat(&[open_4octet(), keepalive(), update_v4()]);
        let mut s = Stream::starting_at(100);
        // OPEN + half the KEEPALIVE, then the rest + most of the UPDATE, then its tail.
        let cut1 = open_4octet().len() + 7;
        let cut2 = bytes.len() - 3;
        s.push(100, &bytes[..cut1], cut1);
        assert_eq!(names(&s.messages()), ["OPEN"]);
        s.push(100 + cut1 as u32, &bytes[cut1..cut2], cut2 - cut1);
        assert_eq!(names(&s.messages()), ["KEEPALIVE"]);
        s.push(100 + cut2 as u32, &bytes[cut2..], bytes.len() - cut2);
        let m = s.messages();
        assert_eq!(m, [one(&update_v4())]);
        assert_eq!(s.stats().messages, 3);
    }

    #[test]
    fn stream_retransmission_and_reordering() {
        let bytes = cat(&[keepalive(), update_v4(), keepalive()]);
        let (a, b) = bytes.split_at(30);
        let (b, c) = b.split_at(40);
        let mut s = Stream::starting_at(7);
        s.push(7, a, a.len());
        s.push(7, a, a.len()); // retransmitted
        // c before b.
        s.push(7 + 70, c, c.len());
        assert_eq!(names(&s.messages()), ["KEEPALIVE"]);
        s.push(7 + 30, b, b.len());
        assert_eq!(names(&s.messages()), ["UPDATE", "KEEPALIVE"]);
        // A retransmission overlapping old and new bytes adds only the new.
        let more = keepalive();
        let mut overlap = bytes[bytes.len() - 5..].to_vec();
        overlap.extend(&more);
        s.push(7 + bytes.len() as u32 - 5, &overlap, overlap.len());
        assert_eq!(names(&s.messages()), ["KEEPALIVE"]);
        let st = s.stats();
        assert_eq!((st.retransmitted, st.out_of_order, st.messages), (1, 1, 4));
    }

    #[test]
    fn stream_sequence_wrap() {
        let bytes = cat(&[update_v4(), keepalive()]);
        let isn = u32::MAX - 20;
        let mut s = Stream::starting_at(isn);
        s.push(isn, &bytes[..30], 30);
        s.push(isn.wrapping_add(30), &bytes[30..], bytes.len() - 30);
        assert_eq!(names(&s.messages()), ["UPDATE", "KEEPALIVE"]);
        // Learned from the first segment too.
        let mut s = Stream::new();
        s.push(u32::MAX - 2, &bytes[..10], 10);
        s.push(7, &bytes[10..], bytes.len() - 10);
        assert_eq!(names(&s.messages()), ["UPDATE", "KEEPALIVE"]);
    }

    #[test]
    fn truncated_capture_skips_by_length() {
        // One segment with a KEEPALIVE, an UPDATE and a KEEPALIVE, of which
        // 45 bytes were captured: the UPDATE is lost, but its header says
        // where the last KEEPALIVE starts, so framing holds across the gap
        // and the last KEEPALIVE decodes from the next segment.
        let seg1 = cat(&[keepalive(), update_v4()]);
        let seg2 = cat(&[keepalive(), withdraw_v4()]);
        let mut s = Stream::starting_at(0);
        s.push(0, &seg1[..45], seg1.len());
        assert_eq!(s.messages(), [Message::Keepalive]);
        s.push(seg1.len() as u32, &seg2, seg2.len());
        assert_eq!(s.messages(), [Message::Keepalive, one(&withdraw_v4())]);
        let st = s.stats();
        assert_eq!((st.skipped, st.resyncs), (1, 0));
        assert_eq!(st.bytes_not_captured, (seg1.len() - 45) as u64);
    }

    #[test]
    fn truncated_capture_resynchronises_on_marker() {
        // A message whose header falls into the uncaptured tail: framing is
        // lost until the next marker, which here starts mid-segment because
        // the next segment starts with the end of a long message.
        let big = msg(MSG_UPDATE, &[0; 60]);
        let seg1 = cat(&[keepalive(), big.clone()]);
        let cap = 19 + 10; // KEEPALIVE + 10 bytes of big's header
        let seg2 = cat(&[vec![0xaa; 5], update_v4()]);
        let mut s = Stream::starting_at(1);
        // seg1 truncated, and a lost segment (never seen) before seg2.
        s.push(1, &seg1[..cap], seg1.len());
        s.push(1 + seg1.len() as u32 + 100, &seg2, seg2.len());
        assert_eq!(names(&s.messages()), ["KEEPALIVE"]);
        let m = s.flush();
        assert_eq!(m, [one(&update_v4())]);
        assert!(s.stats().resyncs >= 1);
    }

    #[test]
    fn stream_starting_mid_message() {
        let bytes = cat(&[update_v4(), keepalive(), shutdown()]);
        let mut s = Stream::new();
        // Capture starts 12 bytes into the UPDATE.
        s.push(5000, &bytes[12..40], 28);
        s.push(5028, &bytes[40..], bytes.len() - 40);
        assert_eq!(names(&s.messages()), ["KEEPALIVE", "NOTIFICATION"]);
    }

    #[test]
    fn lost_segment_is_given_up_after_a_window() {
        let mut s = Stream::starting_at(0);
        let ka = keepalive();
        // Segment 0 never arrives; the next ones do.
        for i in 1..=(MAX_PENDING as u32 + 1) {
            s.push(i * 19, &ka, 19);
        }
        assert_eq!(s.messages().len(), MAX_PENDING + 1);
        assert_eq!(s.stats().bytes_not_captured, 19);
    }

    #[test]
    fn far_jump_restarts_the_stream() {
        let mut s = Stream::starting_at(0);
        s.push(0, &keepalive(), 19);
        s.push(3_000_000, &keepalive(), 19);
        assert_eq!(s.messages().len(), 2);
        assert_eq!(s.stats().restarts, 1);
    }

    // -- Sessions -----------------------------------------------------------

    /// Two ends of one connection, keeping sequence numbers.
    struct Wire {
        sessions: Sessions,
        key: SessionKey,
        seq: [u32; 2],
        ts: u64,
    }

    impl Wire {
        fn new(local_port: u16) -> Self {
            Wire {
                sessions: Sessions::new(),
                key: SessionKey {
                    local: SocketAddr::new("10.0.0.5".parse().unwrap(), local_port),
                    peer: "192.0.2.1:179".parse().unwrap(),
                },
                seq: [70_000, u32::MAX - 40],
                ts: 0,
            }
        }

        fn seg(&mut self, dir: Dir, flags: u8, payload: &[u8], cap: usize) {
            self.ts += 1_000_000;
            let i = idx(dir);
            let seg = Segment {
                ts_ns: self.ts,
                dir,
                tcp_flags: flags,
                seq: self.seq[i],
                payload: &payload[..cap.min(payload.len())],
                full_len: payload.len(),
            };
            self.sessions.observe(self.key, &seg);
            let syn = u32::from(flags & (TCP_SYN | TCP_FIN) != 0);
            self.seq[i] = self.seq[i].wrapping_add(payload.len() as u32 + syn);
        }

        fn send(&mut self, dir: Dir, payload: &[u8]) {
            self.seg(dir, TCP_ACK, payload, usize::MAX);
        }

        fn handshake(&mut self) {
            self.seg(Dir::Tx, TCP_SYN, &[], 0);
            self.seg(Dir::Rx, TCP_SYN | TCP_ACK, &[], 0);
            self.seg(Dir::Tx, TCP_ACK, &[], 0);
        }

        fn up(&mut self) {
            self.handshake();
            self.send(Dir::Tx, &open_asn(64512));
            self.send(Dir::Rx, &open_4octet());
            self.send(Dir::Rx, &keepalive());
            self.send(Dir::Tx, &keepalive());
        }

        fn session(&self) -> &Session {
            self.sessions.get(&self.key).unwrap()
        }

        fn summary(&mut self) -> PeerSummary {
            self.sessions.finish();
            self.sessions.summary(LB).peers.remove(0)
        }
    }

    /// UPDATE from this node: 203.0.113.240/32 via 10.0.0.5, path [64512].
    fn announce_lb() -> Vec<u8> {
        #[rustfmt::skip]
        let body = [
            0, 0, 0, 20,
            0x40, 1, 1, 0,
            0x40, 2, 6, 2, 1, 0, 0, 0xfc, 0x00,
            0x40, 3, 4, 10, 0, 0, 5,
            32, 203, 0, 113, 240,
        ];
        msg(MSG_UPDATE, &body)
    }

    #[test]
    fn session_up_and_announced() {
        let mut w = Wire::new(40_000);
        w.up();
        assert_eq!(*w.session().state(), SessionState::Up);
        w.send(Dir::Tx, &announce_lb());
        w.send(Dir::Rx, &keepalive());
        let s = w.session();
        assert_eq!(s.routes().len(), 1);
        assert_eq!(s.routes()[0].peer, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert!(s.describe().contains("BGP session with 192.0.2.1 up"));
        assert!(s.describe().contains("peer AS 4200000001"));
        let p = w.summary();
        assert_eq!(p.peer_asn, Some(4_200_000_001));
        assert_eq!(p.local_asn, Some(64512));
        assert_eq!(p.peer_hostname.as_deref(), Some("leaf"));
        let RouteStatus::Announced {
            prefix,
            next_hop,
            as_path,
            ..
        } = &p.advertised
        else {
            panic!("{:?}", p.advertised)
        };
        assert_eq!(prefix.to_string(), "203.0.113.240/32");
        assert_eq!(*next_hop, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(*as_path, [64512]);
        assert_eq!(p.received, RouteStatus::NotSeen);
        let text = w.sessions.summary(LB).describe().join("\n");
        assert!(
            text.contains("UPDATE announces 203.0.113.240/32 to 192.0.2.1 with next hop 10.0.0.5")
        );
    }

    #[test]
    fn session_withdrawn_and_other_prefixes() {
        let mut w = Wire::new(40_001);
        w.up();
        w.send(Dir::Tx, &announce_lb());
        w.send(Dir::Tx, &withdraw_v4());
        // A peer route that does not cover the LB IP changes nothing.
        w.send(Dir::Rx, &update_v4()[..]);
        let p = w.summary();
        assert!(
            matches!(p.advertised, RouteStatus::Withdrawn { ref prefix, .. } if prefix.to_string() == "203.0.113.240/32")
        );
        // update_v4 from the peer announces 203.0.113.240/32 too.
        assert!(matches!(p.received, RouteStatus::Announced { .. }));
    }

    #[test]
    fn session_ipv6_announcement() {
        let mut w = Wire::new(40_002);
        w.up();
        w.send(Dir::Tx, &update_v6());
        w.sessions.finish();
        let ip: IpAddr = "2001:db8:ffff::10".parse().unwrap();
        let sum = w.sessions.summary(ip);
        let RouteStatus::Announced {
            prefix, next_hop, ..
        } = &sum.peers[0].advertised
        else {
            panic!()
        };
        assert_eq!(prefix.to_string(), "2001:db8:ffff::10/128");
        assert_eq!(*next_hop, Some("2001:db8::1".parse().unwrap()));
        w.send(Dir::Tx, &withdraw_v6());
        assert!(matches!(
            w.session().route_status(ip, Dir::Tx),
            RouteStatus::Withdrawn { .. }
        ));
    }

    #[test]
    fn syn_without_answer() {
        let mut w = Wire::new(40_003);
        w.seg(Dir::Tx, TCP_SYN, &[], 0);
        // The same SYN again (same ISN): a retransmission, not a new attempt.
        w.seq[idx(Dir::Tx)] = w.seq[idx(Dir::Tx)].wrapping_sub(1);
        w.seg(Dir::Tx, TCP_SYN, &[], 0);
        assert_eq!(
            *w.session().state(),
            SessionState::SynSent {
                by_peer: false,
                attempts: 2
            }
        );
        assert!(
            w.session()
                .describe()
                .contains("without answer (2 attempt(s))")
        );
        assert_eq!(w.summary().advertised, RouteStatus::NotSeen);
    }

    #[test]
    fn refused_by_peer() {
        let mut w = Wire::new(40_004);
        w.seg(Dir::Tx, TCP_SYN, &[], 0);
        w.seg(Dir::Rx, TCP_RST | TCP_ACK, &[], 0);
        assert_eq!(*w.session().state(), SessionState::Reset { by_peer: true });
        assert!(w.session().describe().contains("reset (RST) by 192.0.2.1"));
    }

    #[test]
    fn notification_bad_peer_as() {
        let mut w = Wire::new(40_005);
        w.handshake();
        w.send(Dir::Tx, &open_asn(64512));
        assert_eq!(
            *w.session().state(),
            SessionState::OpenSent { by_peer: false }
        );
        w.send(Dir::Rx, &notification(2, 2, &[]));
        w.seg(Dir::Rx, TCP_FIN | TCP_ACK, &[], 0);
        w.seg(Dir::Tx, TCP_RST, &[], 0);
        let SessionState::Notified {
            sent_by_peer,
            notification,
        } = w.session().state()
        else {
            panic!()
        };
        assert!(sent_by_peer);
        assert_eq!(notification.describe(), "OPEN Message Error / Bad Peer AS");
        assert_eq!(
            w.session().describe(),
            "192.0.2.1 sent NOTIFICATION OPEN Message Error / Bad Peer AS"
        );
        let p = w.summary();
        assert!(p.last_notification.is_some());
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["state"]["state"], "notified");
        assert_eq!(
            v["state"]["notification"]["description"],
            "OPEN Message Error / Bad Peer AS"
        );
    }

    #[test]
    fn session_down_withdraws_implicitly_and_reconnect_resets() {
        let mut w = Wire::new(40_006);
        w.up();
        w.send(Dir::Tx, &announce_lb());
        w.send(Dir::Tx, &shutdown());
        w.seg(Dir::Tx, TCP_FIN | TCP_ACK, &[], 0);
        assert!(matches!(
            w.session().state(),
            SessionState::Notified {
                sent_by_peer: false,
                ..
            }
        ));
        assert!(matches!(
            w.summary().advertised,
            RouteStatus::SessionDown { .. }
        ));
        // The same 4-tuple again: new ISNs, OPENs, no announcement yet.
        w.seq = [9, 99];
        w.up();
        assert_eq!(*w.session().state(), SessionState::Up);
        assert!(matches!(
            w.summary().advertised,
            RouteStatus::SessionDown { .. }
        ));
        w.send(Dir::Tx, &announce_lb());
        assert!(matches!(
            w.summary().advertised,
            RouteStatus::Announced { .. }
        ));
    }

    #[test]
    fn closed_without_notification() {
        let mut w = Wire::new(40_007);
        w.up();
        w.seg(Dir::Rx, TCP_FIN | TCP_ACK, &[], 0);
        assert_eq!(*w.session().state(), SessionState::Closed { by_peer: true });
    }

    #[test]
    fn truncated_segments_in_a_session() {
        let mut w = Wire::new(40_008);
        w.up();
        // Announcement and a KEEPALIVE in one segment cut after 25 bytes:
        // the UPDATE is lost and counted, the session stays up.
        let both = cat(&[announce_lb(), keepalive()]);
        w.seg(Dir::Tx, TCP_ACK, &both, 25);
        w.send(Dir::Tx, &keepalive());
        let p = w.summary();
        assert_eq!(p.advertised, RouteStatus::NotSeen);
        assert_eq!(p.messages_not_decoded, 1);
        assert_eq!(p.state, SessionState::Up);
        assert!(
            w.sessions
                .summary(LB)
                .describe()
                .join("\n")
                .contains("not decoded")
        );
    }

    #[test]
    fn capture_started_mid_session() {
        let mut w = Wire::new(40_009);
        w.send(Dir::Rx, &keepalive());
        assert_eq!(*w.session().state(), SessionState::Established);
        w.send(Dir::Tx, &announce_lb());
        assert_eq!(*w.session().state(), SessionState::Up);
        assert!(w.session().describe().contains("OPENs before the capture"));
    }

    #[test]
    fn summary_groups_connection_attempts_per_peer() {
        let mut ss = Sessions::new();
        let peer: SocketAddr = "192.0.2.1:179".parse().unwrap();
        for (i, port) in [50_000u16, 50_001, 50_002].into_iter().enumerate() {
            let local = SocketAddr::new("10.0.0.5".parse().unwrap(), port);
            let key = SessionKey::from_packet(Dir::Tx, local, peer);
            assert_eq!(key, SessionKey::from_packet(Dir::Rx, peer, local));
            let seg = Segment {
                ts_ns: i as u64,
                dir: Dir::Tx,
                tcp_flags: TCP_SYN,
                seq: 1,
                payload: &[],
                full_len: 0,
            };
            ss.observe(key, &seg);
        }
        let sum = ss.summary(LB);
        assert_eq!(sum.peers.len(), 1);
        assert_eq!(sum.peers[0].sessions, 3);
        assert!(sum.describe()[0].contains("[3 connections]"));
        assert!(Sessions::new().summary(LB).describe()[0].contains("no BGP traffic"));
    }

    #[test]
    fn add_path_is_flagged() {
        // Both sides: ADD-PATH IPv4 unicast send/receive.
        let open = msg(
            MSG_OPEN,
            &[4, 0xfc, 0, 0, 90, 1, 1, 1, 1, 8, 2, 6, 69, 4, 0, 1, 1, 3],
        );
        let mut w = Wire::new(40_010);
        w.handshake();
        w.send(Dir::Tx, &open);
        w.send(Dir::Rx, &open);
        assert!(w.session().add_path());
        // NLRI with a path identifier is misread, but does not break anything.
        let mut body = vec![0, 0, 0, 0];
        body.extend([0, 0, 0, 1, 32, 203, 0, 113, 240]);
        w.send(Dir::Tx, &msg(MSG_UPDATE, &body));
        assert!(w.summary().add_path);
    }

    // -- No panics -------------------------------------------------------------

    /// xorshift64*: deterministic, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    fn corpus() -> Vec<Vec<u8>> {
        vec![
            keepalive(),
            open_4octet(),
            open_asn(64512),
            update_v4(),
            withdraw_v4(),
            update_v6(),
            withdraw_v6(),
            shutdown(),
            notification(1, 2, &[0, 5]),
            notification(2, 7, &[65, 4, 0, 0, 0, 1, 69, 0]),
            announce_lb(),
            msg(MSG_ROUTE_REFRESH, &[0, 1, 0, 1]),
        ]
    }

    fn mutate(rng: &mut Rng, m: &mut Vec<u8>) {
        for _ in 0..=rng.below(4) {
            let len = m.len();
            match rng.below(7) {
                0 if len > 0 => m[rng.below(len)] ^= 1 << rng.below(8),
                1 if len > 0 => m[rng.below(len)] = rng.next() as u8,
                2 => m.truncate(rng.below(len + 1)),
                3 => m.insert(rng.below(len + 1), rng.next() as u8),
                // Lengths are what parsers trust: hit them specifically.
                4 if len > 18 => m[16 + rng.below(2)] = rng.next() as u8,
                5 if len > 22 => {
                    m[19 + rng.below(len - 19)] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)]
                }
                _ => m.extend((0..rng.below(8)).map(|_| rng.next() as u8)),
            }
        }
    }

    /// Feeds `stream` as segments with retransmissions, reordering and, if
    /// `truncate`, capture truncation. Returns what it decoded.
    fn feed(rng: &mut Rng, bytes: &[u8], isn: u32, truncate: bool) -> (Vec<Message>, StreamStats) {
        let mut segs = Vec::new();
        let mut off = 0;
        while off < bytes.len() {
            let n = (1 + rng.below(120)).min(bytes.len() - off);
            segs.push((off, n));
            off += n;
        }
        // Swap a few neighbours (reordering) and repeat a few (retransmission).
        for _ in 0..rng.below(3) {
            if segs.len() > 2 {
                let i = rng.below(segs.len() - 1);
                segs.swap(i, i + 1);
            }
        }
        for _ in 0..rng.below(3) {
            if !segs.is_empty() {
                let s = segs[rng.below(segs.len())];
                let at = rng.below(segs.len() + 1);
                segs.insert(at, s);
            }
        }
        let mut s = Stream::starting_at(isn);
        let mut out = Vec::new();
        for (off, n) in segs {
            let cap = if truncate && rng.below(4) == 0 {
                rng.below(n)
            } else {
                n
            };
            s.push(isn.wrapping_add(off as u32), &bytes[off..off + cap], n);
            out.extend(s.messages());
        }
        out.extend(s.flush());
        (out, s.stats())
    }

    #[test]
    fn reassembly_property() {
        let corpus = corpus();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..600 {
            let picks: Vec<&Vec<u8>> = (0..1 + rng.below(8))
                .map(|_| &corpus[rng.below(corpus.len())])
                .collect();
            let bytes: Vec<u8> = picks.iter().flat_map(|m| m.iter().copied()).collect();
            let want: Vec<Message> = picks.iter().map(|m| one(m)).collect();
            // Near the wrap every other round.
            let isn = if round % 2 == 0 {
                u32::MAX - rng.below(300) as u32
            } else {
                rng.next() as u32
            };
            let (got, st) = feed(&mut rng, &bytes, isn, false);
            assert_eq!(got, want, "round {round}");
            assert_eq!(st.bytes_not_captured, 0);
            // Truncated: whatever is decoded is genuine and in order.
            let (got, _) = feed(&mut rng, &bytes, isn, true);
            let mut rest = want.iter();
            for m in &got {
                assert!(rest.any(|w| w == m), "round {round}: {m:?} not in order");
            }
        }
    }

    #[test]
    fn no_panic_on_any_input() {
        let corpus = corpus();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let opts = [
            DecodeOptions::default(),
            DecodeOptions {
                four_octet_as: Some(true),
            },
            DecodeOptions {
                four_octet_as: Some(false),
            },
        ];
        let check = |buf: &[u8], o: DecodeOptions| {
            if let Ok((m, n)) = decode_with(buf, o) {
                assert!((HEADER_LEN..=buf.len()).contains(&n));
                if let Message::Notification(n) = &m {
                    let _ = n.describe();
                }
                let _ = serde_json::to_string(&m).unwrap();
            }
        };
        for i in 0..40_000 {
            let buf = if i % 4 == 0 {
                // Random bytes, behind a valid marker half the time.
                let mut b: Vec<u8> = if i % 8 == 0 {
                    vec![0xff; 16]
                } else {
                    Vec::new()
                };
                b.extend((0..rng.below(64)).map(|_| rng.next() as u8));
                b
            } else {
                let mut m = corpus[rng.below(corpus.len())].clone();
                mutate(&mut rng, &mut m);
                m
            };
            check(&buf, opts[i % 3]);
            let n = Notification {
                code: buf.first().copied().unwrap_or(6),
                subcode: buf.get(1).copied().unwrap_or(2),
                data: buf.get(2..).unwrap_or(&[]).to_vec(),
            };
            let _ = n.describe();
        }
        // Streams and sessions on mutated message sequences and random
        // segment parameters.
        for round in 0..1_500 {
            let mut bytes = Vec::new();
            for _ in 0..1 + rng.below(6) {
                let mut m = corpus[rng.below(corpus.len())].clone();
                if rng.below(3) == 0 {
                    mutate(&mut rng, &mut m);
                }
                bytes.extend(m);
            }
            let isn = rng.next() as u32;
            let _ = feed(&mut rng, &bytes, isn, round % 2 == 0);

            let key = SessionKey {
                local: "10.0.0.5:179".parse().unwrap(),
                peer: "[2001:db8::1]:40000".parse().unwrap(),
            };
            let mut sess = Session::new(key);
            let mut off = 0;
            let mut seqs = [rng.next() as u32, rng.next() as u32];
            while off < bytes.len() {
                let n = (1 + rng.below(100)).min(bytes.len() - off);
                let dir = if rng.below(2) == 0 { Dir::Rx } else { Dir::Tx };
                let flags = if rng.below(6) == 0 {
                    rng.next() as u8
                } else {
                    TCP_ACK
                };
                let i = idx(dir);
                // Mostly in order; sometimes a random jump.
                let seq = if rng.below(10) == 0 {
                    rng.next() as u32
                } else {
                    seqs[i]
                };
                let cap = n - rng.below(n + 1) / 2;
                sess.observe(&Segment {
                    ts_ns: round,
                    dir,
                    tcp_flags: flags,
                    seq,
                    payload: &bytes[off..off + cap],
                    full_len: if rng.below(20) == 0 { usize::MAX } else { n },
                });
                seqs[i] = seqs[i].wrapping_add(n as u32);
                off += n;
            }
            sess.finish(round);
            let _ = sess.describe();
            let _ = serde_json::to_string(&sess).unwrap();
            let sum = summarize([&sess], LB);
            let _ = sum.describe();
        }
    }
}
