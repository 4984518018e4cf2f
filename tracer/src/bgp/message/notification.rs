//! NOTIFICATION messages (RFC 4271 §4.5): the error that ended a session,
//! named from the RFC tables so neither the report nor JSON readers need
//! them.

use std::fmt::Write as _;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

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
                    // From the wire: quoted, hazardous characters escaped.
                    let _ = write!(s, ": \"{}\"", crate::escape::visible(&text));
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

#[cfg(test)]
mod tests {
    use crate::bgp::message::Message;
    use crate::bgp::testutil::*;

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
}
