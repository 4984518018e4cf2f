//! UPDATE messages (RFC 4271 §4.3): withdrawn and announced prefixes and
//! the path attributes lbpath reports, with MP_REACH/MP_UNREACH (RFC 4760)
//! for IPv6 and 4-octet AS paths (RFC 6793).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Serialize, Serializer};

use super::prefix::{Prefix, parse_prefixes};
use super::{AFI_IPV4, AFI_IPV6, DecodeOptions, Reader, SAFI_MULTICAST, SAFI_UNICAST};

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

pub(super) fn parse_update(body: &[u8], opts: DecodeOptions) -> Result<Update, &'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::message::{MSG_UPDATE, Message, decode_with};
    use crate::bgp::testutil::*;

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
}
