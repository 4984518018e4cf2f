//! OPEN messages (RFC 4271 §4.2) and the capabilities they carry (RFC 5492),
//! including RFC 9072 extended optional parameters.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::Reader;

/// 2-octet placeholder ASN used by 4-octet speakers (RFC 6793).
pub const AS_TRANS: u16 = 23456;

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

    pub(crate) fn add_path_modes(&self) -> impl Iterator<Item = &AddPathFamily> {
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
    /// identifiers is not decoded (see [`Session::add_path`](crate::bgp::Session::add_path)).
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

pub(super) fn parse_open(body: &[u8]) -> Result<Open, &'static str> {
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
        hostname: crate::escape::visible(&String::from_utf8_lossy(host)).into_owned(),
        domain: crate::escape::visible(&String::from_utf8_lossy(domain)).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::message::{MSG_OPEN, Message};
    use crate::bgp::testutil::*;

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
}
