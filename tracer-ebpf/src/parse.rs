//! Header parsing: IPv4/IPv6 and the L4 ports, TCP flags and sequence.

use tracer_common::{AF_INET, AF_INET6, Tuple};

use core::mem::MaybeUninit;

use aya_ebpf::maps::lpm_trie::Key;
use tracer_common::{CFG_LB_SET, LB_KEY_BITS};

use crate::{
    kernel::{rd, rd_into},
    maps::{LB_SET, conf},
    mem::{zero, zeroed_in},
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// A parsed IP packet: its tuple and TCP flags. Lives in per-CPU scratch
/// memory, never on the BPF stack.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Parsed {
    pub t: Tuple,
    /// Start of the L3 header (kernel address).
    pub l3: u64,
    /// Start of the L4 header (kernel address), 0 if not reached.
    pub l4: u64,
    /// Survives NAT, changes between packets: TCP sequence and ack numbers,
    /// else IPv4 id and length (IPv6: payload length).
    pub sig: u32,
    pub tcp_flags: u8,
    /// 1 when `t` holds this packet's tuple.
    pub ok: u8,
    pub _pad: [u8; 2],
    /// The raw headers being read: IP, then the start of L4 (IPv6's are
    /// the longest).
    pub hdr: [u8; 56],
}

#[inline(always)]
pub fn v4(a: [u8; 4]) -> [u8; 16] {
    // Built as two words: a zeroed byte array would be a memset call (see `mem`).
    let lo = u64::from_ne_bytes([a[0], a[1], a[2], a[3], 0, 0, 0, 0]);
    // SAFETY: two u64 are 16 plain bytes, in memory order.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([lo, 0]) }
}

#[inline(always)]
pub fn addr_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let a0 = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let b0 = u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let a1 = u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let b1 = u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    a0 == b0 && a1 == b1
}

/// Is this a watched LB IP? With one IP, the cheap compare every unrelated
/// packet pays; with several IPs or ranges, one lookup in LB_SET.
#[inline(always)]
pub fn is_lb(a: &[u8; 16], family: u8) -> bool {
    if conf!(flags) & CFG_LB_SET == 0 {
        return family == conf!(lb_family) && addr_eq(a, &conf!(lb_addr));
    }
    in_lb_set(a, family)
}

#[inline(never)]
fn in_lb_set(a: &[u8; 16], family: u8) -> bool {
    let mut d = MaybeUninit::uninit();
    // SAFETY: bytes.
    let data: &mut [u8; 20] = unsafe { zeroed_in(&mut d) };
    data[0] = family;
    data[4..].copy_from_slice(a);
    // A lookup matches on all bits; entries carry their own prefix.
    LB_SET.get(Key::new(LB_KEY_BITS + 128, *data)).is_some()
}

/// The address family of an ethertype.
#[inline(always)]
pub fn family_of(proto: u16) -> u8 {
    if proto == ETH_P_IPV6 {
        AF_INET6
    } else {
        AF_INET
    }
}

/// Destination address only: the first-hook test, before any full parse.
#[inline(always)]
pub fn peek_daddr(l3: u64, proto: u16) -> Option<[u8; 16]> {
    match proto {
        ETH_P_IP => rd::<[u8; 4]>(l3 + 16).map(v4),
        ETH_P_IPV6 => rd::<[u8; 16]>(l3 + 24),
        _ => None,
    }
}

/// Source address only.
#[inline(always)]
pub fn peek_saddr(l3: u64, proto: u16) -> Option<[u8; 16]> {
    match proto {
        ETH_P_IP => rd::<[u8; 4]>(l3 + 12).map(v4),
        ETH_P_IPV6 => rd::<[u8; 16]>(l3 + 8),
        _ => None,
    }
}

/// Bytes of L4 header read: TCP's up to its flags.
const L4_READ: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;

/// Takes ports (and TCP flags and sequence) from the L4 header at
/// `p.hdr[at..]`, the bytes read at kernel address `l4`.
#[inline(always)]
#[allow(
    clippy::collapsible_match,
    reason = "each protocol's arm reads its header alike; as a match guard, the ICMP read \
              compiles to other code, which the verifiers of every kernel would have to pass again"
)]
fn parse_l4<const AT: usize>(p: &mut Parsed, l4: u64) {
    p.l4 = l4;
    let h = &p.hdr[AT..AT + L4_READ];
    match p.t.proto {
        IPPROTO_TCP => {
            p.t.sport = u16::from_be_bytes([h[0], h[1]]);
            p.t.dport = u16::from_be_bytes([h[2], h[3]]);
            // Sequence and acknowledgment: a receiver's pure ACKs share
            // their sequence number, not their ack.
            let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
            p.sig = seq ^ ack.rotate_left(16);
            p.tcp_flags = h[13];
        }
        IPPROTO_UDP => {
            p.t.sport = u16::from_be_bytes([h[0], h[1]]);
            p.t.dport = u16::from_be_bytes([h[2], h[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            p.t.dport = u16::from_be_bytes([h[0], h[1]]);
            p.t.sport = u16::from_be_bytes([h[4], h[5]]);
        }
        _ => {}
    }
}

/// Reads the IP header at `l3` and the L4 header right after it, of
/// `hlen` bytes, in one helper call where it can (most of the cost of a
/// read is the call): `hdr[..hlen]` is the IP header, `hdr[hlen..]` the
/// L4 one. Returns whether the L4 bytes were read too; reading past a short
/// packet's end stays within its buffer, and a read that faults is retried
/// for the IP header alone.
#[inline(always)]
fn read_l3_l4<const HLEN: usize>(l3: u64, p: &mut Parsed) -> Option<bool> {
    if rd_into(l3, &mut p.hdr[..HLEN + L4_READ]) {
        return Some(true);
    }
    rd_into(l3, &mut p.hdr[..HLEN]).then_some(false)
}

/// The L4 header at `l4` when it was not read with the IP header (IPv4
/// options): read into the bytes after the IP header, then parsed.
#[inline(always)]
fn read_l4<const AT: usize>(p: &mut Parsed, l4: u64) {
    if rd_into(l4, &mut p.hdr[AT..AT + L4_READ]) {
        parse_l4::<AT>(p, l4);
    } else {
        p.l4 = l4;
    }
}

/// Parses the IP packet at kernel address `l3` (`proto` is the ethertype)
/// into `p` and returns whether it is one. Headers are read into `p.hdr`
/// (scratch memory), so the frame stays small.
#[inline(never)]
pub fn parse_ip(l3: u64, proto: u16, p: &mut Parsed) -> bool {
    unsafe { zero(&raw mut p.t) };
    p.tcp_flags = 0;
    p.l3 = l3;
    p.l4 = 0;
    p.sig = 0;
    p.ok = 0;
    if l3 == 0 {
        return false;
    }
    match proto {
        ETH_P_IP => {
            let Some(with_l4) = read_l3_l4::<IPV4_HLEN>(l3, p) else {
                return false;
            };
            let h = &p.hdr;
            if h[0] >> 4 != 4 {
                return false;
            }
            p.t.family = AF_INET;
            p.t.proto = h[9];
            p.t.saddr[..4].copy_from_slice(&h[12..16]);
            p.t.daddr[..4].copy_from_slice(&h[16..20]);
            // id and total length
            p.sig = u32::from_be_bytes([h[4], h[5], h[2], h[3]]);
            let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            let ihl = (h[0] & 0xf) as u64;
            if frag_off == 0 {
                let l4 = l3 + ihl * 4;
                if with_l4 && ihl == 5 {
                    parse_l4::<IPV4_HLEN>(p, l4);
                } else {
                    read_l4::<IPV4_HLEN>(p, l4);
                }
            }
        }
        ETH_P_IPV6 => {
            let Some(with_l4) = read_l3_l4::<IPV6_HLEN>(l3, p) else {
                return false;
            };
            let h = &p.hdr;
            if h[0] >> 4 != 6 {
                return false;
            }
            p.t.family = AF_INET6;
            p.t.proto = h[6];
            p.t.saddr.copy_from_slice(&h[8..24]);
            p.t.daddr.copy_from_slice(&h[24..40]);
            // payload length
            p.sig = u16::from_be_bytes([h[4], h[5]]) as u32;
            if with_l4 {
                parse_l4::<IPV6_HLEN>(p, l3 + 40);
            } else {
                read_l4::<IPV6_HLEN>(p, l3 + 40);
            }
        }
        _ => return false,
    }
    p.ok = 1;
    true
}

/// Cheap digest of a tuple, to notice NAT between netfilter points.
#[inline(always)]
pub fn tuple_sum(t: &Tuple) -> u32 {
    let s = u32::from_ne_bytes([t.saddr[0], t.saddr[1], t.saddr[2], t.saddr[3]]);
    let d = u32::from_ne_bytes([t.daddr[0], t.daddr[1], t.daddr[2], t.daddr[3]]);
    let s2 = u32::from_ne_bytes([t.saddr[12], t.saddr[13], t.saddr[14], t.saddr[15]]);
    let d2 = u32::from_ne_bytes([t.daddr[12], t.daddr[13], t.daddr[14], t.daddr[15]]);
    (s ^ s2).rotate_left(7) ^ (d ^ d2).rotate_left(13) ^ ((t.sport as u32) << 16 | t.dport as u32)
}
