//! TC programs (tcx links) on the node's uplinks: BGP segments (TCP 179)
//! with their payload. Tracepoints cannot read a locally built TCP segment's
//! data (it sits in page fragments); `bpf_skb_load_bytes` can. They only
//! read: the verdict is always "continue" (TCX_NEXT).

use core::mem::MaybeUninit;

use aya_ebpf::{helpers::bpf_skb_load_bytes, macros::classifier, programs::TcContext};
use tracer_common::{AF_INET, AF_INET6, Kind, SEG_PAYLOAD, STAT_LOST_EVENTS, SegEvent, Tuple};

use crate::{
    kernel::{now, stat_inc},
    maps::{EVENTS, conf, empty},
    mem::{zero, zeroed_in},
    parse::{ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP},
};

/// tcx: run the next program / continue normally.
const TCX_NEXT: i32 = -1;
const BGP_PORT: u16 = 179;
const ETH_P_8021Q: u16 = 0x8100;

#[classifier]
pub fn lbp_tc_ingress(ctx: TcContext) -> i32 {
    if empty() {
        return TCX_NEXT;
    }
    let _ = capture(&ctx, 0);
    TCX_NEXT
}

#[classifier]
pub fn lbp_tc_egress(ctx: TcContext) -> i32 {
    if empty() {
        return TCX_NEXT;
    }
    let _ = capture(&ctx, 1);
    TCX_NEXT
}

#[inline(always)]
fn be16(ctx: &TcContext, off: usize) -> Option<u16> {
    ctx.load::<[u8; 2]>(off).ok().map(u16::from_be_bytes)
}

#[inline(always)]
fn capture(ctx: &TcContext, dir: u8) -> Option<()> {
    // Ethernet, with at most one VLAN tag.
    let mut l3 = 14usize;
    let mut proto = be16(ctx, 12)?;
    if proto == ETH_P_8021Q {
        proto = be16(ctx, 16)?;
        l3 = 18;
    }
    let mut tm = MaybeUninit::uninit();
    // SAFETY: plain data.
    let t: &mut Tuple = unsafe { zeroed_in(&mut tm) };
    let (l4, ip_total) = match proto {
        ETH_P_IP => {
            let h = ctx.load::<[u8; 20]>(l3).ok()?;
            if h[9] != IPPROTO_TCP || u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                return None;
            }
            t.family = AF_INET;
            t.saddr[..4].copy_from_slice(&h[12..16]);
            t.daddr[..4].copy_from_slice(&h[16..20]);
            (
                l3 + ((h[0] & 0xf) as usize) * 4,
                u16::from_be_bytes([h[2], h[3]]) as usize,
            )
        }
        ETH_P_IPV6 => {
            let h = ctx.load::<[u8; 40]>(l3).ok()?;
            if h[6] != IPPROTO_TCP {
                return None;
            }
            t.family = AF_INET6;
            t.saddr.copy_from_slice(&h[8..24]);
            t.daddr.copy_from_slice(&h[24..40]);
            (l3 + 40, u16::from_be_bytes([h[4], h[5]]) as usize + 40)
        }
        _ => return None,
    };
    let h = ctx.load::<[u8; 14]>(l4).ok()?;
    t.sport = u16::from_be_bytes([h[0], h[1]]);
    t.dport = u16::from_be_bytes([h[2], h[3]]);
    if t.sport != BGP_PORT && t.dport != BGP_PORT {
        return None;
    }
    t.proto = IPPROTO_TCP;
    let flags = h[13];
    let payload_off = l4 + ((h[12] >> 4) as usize) * 4;
    let paylen = ip_total.saturating_sub(payload_off - l3);
    // SYN, FIN, RST or data; pure ACKs say nothing about the session.
    if paylen == 0 && flags & 0x07 == 0 {
        return None;
    }
    let Some(mut e) = EVENTS.reserve::<SegEvent>(0) else {
        stat_inc(STAT_LOST_EVENTS);
        return None;
    };
    let ev = e.as_mut_ptr();
    let mut caplen = paylen.min(SEG_PAYLOAD);
    unsafe {
        (*ev).kind = Kind::Bgp as u8;
        (*ev).dir = dir;
        (*ev).tcp_flags = flags;
        (*ev)._pad = 0;
        (*ev).netns = conf!(node_netns);
        (*ev).ifindex = (*ctx.skb.skb).ifindex;
        (*ev).paylen = paylen as u16;
        (*ev).ts = now();
        (*ev).tuple = *t;
        (*ev).seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        (*ev).ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        zero(&raw mut (*ev).ifname);
        // Never past the packet, and a size the verifier can see is 1..=480.
        let avail = (ctx.len() as usize).saturating_sub(payload_off);
        if caplen > avail {
            caplen = avail;
        }
        if (1..=SEG_PAYLOAD).contains(&caplen) {
            let dst = (*ev).payload.as_mut_ptr() as *mut core::ffi::c_void;
            let n = (caplen & 0x1ff) as u32;
            if n == 0
                || bpf_skb_load_bytes(ctx.skb.skb as *const _, payload_off as u32, dst, n) != 0
            {
                caplen = 0;
            }
        } else {
            caplen = 0;
        }
        (*ev).caplen = caplen as u16;
    }
    e.submit(crate::emit::wake());
    Some(())
}
