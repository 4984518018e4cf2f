//! Test fixtures shared by the layers' tests: hand-built messages, a
//! deterministic RNG and mutator, and a segment feeder for streams.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::message::{
    HEADER_LEN, MSG_KEEPALIVE, MSG_NOTIFICATION, MSG_OPEN, MSG_ROUTE_REFRESH, MSG_UPDATE, Message,
    Prefix, decode,
};
use super::stream::{Stream, StreamStats};

pub const LB: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 240));

/// Marker, length and type in front of a body.
pub fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0xff; 16];
    v.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    v.push(ty);
    v.extend_from_slice(body);
    v
}

pub fn keepalive() -> Vec<u8> {
    msg(MSG_KEEPALIVE, &[])
}

/// OPEN from AS 4200000001 (AS_TRANS in the 2-octet field), hold 90,
/// id 10.0.0.1, with MP IPv4 unicast, route refresh, 4-octet AS and
/// hostname "leaf.lab".
pub fn open_4octet() -> Vec<u8> {
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
pub fn open_asn(asn: u16) -> Vec<u8> {
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
pub fn update_v4() -> Vec<u8> {
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
pub fn withdraw_v4() -> Vec<u8> {
    msg(MSG_UPDATE, &[0, 5, 32, 203, 0, 113, 240, 0, 0])
}

/// UPDATE with MP_REACH (extended length) for 2001:db8:ffff::10/128 and
/// 2001:db8:1:2::/64, next hops 2001:db8::1 and fe80::1.
pub fn update_v6() -> Vec<u8> {
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

pub fn withdraw_v6() -> Vec<u8> {
    let mut b = vec![0, 0, 0, 23, 0x80, 15, 20, 0, 2, 1, 128];
    b.extend(Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x10).octets());
    msg(MSG_UPDATE, &b)
}

pub fn notification(code: u8, sub: u8, data: &[u8]) -> Vec<u8> {
    let mut b = vec![code, sub];
    b.extend_from_slice(data);
    msg(MSG_NOTIFICATION, &b)
}

pub fn shutdown() -> Vec<u8> {
    let mut d = vec![11];
    d.extend_from_slice(b"maintenance");
    notification(6, 2, &d)
}

pub fn one(buf: &[u8]) -> Message {
    let (m, n) = decode(buf).unwrap();
    assert_eq!(n, buf.len());
    m
}

pub fn pfx(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
}

pub fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// UPDATE from this node: 203.0.113.240/32 via 10.0.0.5, path [64512].
pub fn announce_lb() -> Vec<u8> {
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

/// xorshift64*: deterministic, so a failure reproduces.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

pub fn corpus() -> Vec<Vec<u8>> {
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

pub fn mutate(rng: &mut Rng, m: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let len = m.len();
        match rng.below(7) {
            0 if len > 0 => m[rng.below(len)] ^= 1 << rng.below(8),
            1 if len > 0 => m[rng.below(len)] = rng.next() as u8,
            2 => m.truncate(rng.below(len + 1)),
            3 => m.insert(rng.below(len + 1), rng.next() as u8),
            // Lengths are what parsers trust: hit them specifically.
            4 if len > 18 => m[16 + rng.below(2)] = rng.next() as u8,
            5 if len > 22 => m[19 + rng.below(len - 19)] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)],
            _ => m.extend((0..rng.below(8)).map(|_| rng.next() as u8)),
        }
    }
}

/// Feeds `stream` as segments with retransmissions, reordering and, if
/// `truncate`, capture truncation. Returns what it decoded.
pub fn feed(rng: &mut Rng, bytes: &[u8], isn: u32, truncate: bool) -> (Vec<Message>, StreamStats) {
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
