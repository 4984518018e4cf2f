//! The two MetalLB layers before kube-proxy, as seen on the node's wire: ARP
//! for the LB IP (L2 mode) and TCP port 179 segments (BGP mode). Called from
//! the receive and transmit tracepoints; decoding is left to userspace.

use network_types::arp::ArpHdr;
use tracer_common::{
    AF_INET, ArpEvent, CFG_ARP, IFNAMSIZ, Kind, SEG_PAYLOAD, STAT_LOST_EVENTS, SegEvent,
};

use crate::{
    maps::{EVENTS, conf},
    skb::{IPPROTO_TCP, Parsed, dev_ifindex, dev_name, dev_netns, rd, skb_dev, stat_inc},
};

const BGP_PORT: u16 = 179;

/// An ARP packet at `arp` (kernel address; `mac` is its Ethernet header):
/// reported when it is about the LB IP.
#[inline(always)]
pub fn arp(skb: u64, mac: u64, arp: u64, dir: u8, now: u64) {
    if conf!(flags) & CFG_ARP == 0 || conf!(lb_family) != AF_INET {
        return;
    }
    let Some(h) = rd::<ArpHdr>(arp) else {
        return;
    };
    // Ethernet / IPv4 only.
    if h.htype != [0, 1] || h.ptype != [8, 0] || h.hlen != 6 || h.plen != 4 {
        return;
    }
    let lb = conf!(lb_addr);
    let lb = [lb[0], lb[1], lb[2], lb[3]];
    if h.spa != lb && h.tpa != lb {
        return;
    }
    let dev = skb_dev(skb);
    let netns = dev_netns(dev);
    if netns != conf!(node_netns) {
        return;
    }
    let Some(mut e) = EVENTS.reserve::<ArpEvent>(0) else {
        stat_inc(STAT_LOST_EVENTS);
        return;
    };
    let ev = e.as_mut_ptr();
    let eth = if mac != 0 { rd::<[u8; 12]>(mac) } else { None }.unwrap_or([0; 12]);
    unsafe {
        core::ptr::write_bytes(ev, 0, 1);
        (*ev).kind = Kind::Arp as u8;
        (*ev).dir = dir;
        (*ev).op = u16::from_be_bytes(h.oper);
        (*ev).netns = netns;
        (*ev).ifindex = dev_ifindex(dev);
        (*ev).ts = now;
        dev_name(dev, &mut (*ev).ifname);
        (*ev).sha = h.sha;
        (*ev).spa = h.spa;
        (*ev).tha = h.tha;
        (*ev).tpa = h.tpa;
        (*ev).eth_dst = [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]];
        (*ev).eth_src = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]];
    }
    e.submit(0);
}

/// A TCP segment to or from port 179 with its first bytes of payload: BGP
/// messages are decoded in userspace. Pure ACKs are skipped.
#[inline(always)]
pub fn bgp(p: &Parsed, dev: u64, netns: u32, dir: u8, now: u64) {
    if p.t.proto != IPPROTO_TCP || (p.t.sport != BGP_PORT && p.t.dport != BGP_PORT) || p.l4 == 0 {
        return;
    }
    let Some(hdr) = rd::<[u8; 14]>(p.l4) else {
        return;
    };
    let doff = ((hdr[12] >> 4) as u64) * 4;
    let flags = hdr[13];
    // Total IP length from the header itself: skb->len counts the MAC header on transmit.
    let ip_total = if p.t.family == AF_INET {
        rd::<[u8; 2]>(p.l3 + 2).map(|b| u16::from_be_bytes(b) as u64)
    } else {
        rd::<[u8; 2]>(p.l3 + 4).map(|b| u16::from_be_bytes(b) as u64 + 40)
    }
    .unwrap_or(0);
    let hdrs = (p.l4 - p.l3) + doff;
    let paylen = ip_total.saturating_sub(hdrs);
    // SYN, FIN, RST or data.
    if paylen == 0 && flags & 0x07 == 0 {
        return;
    }
    let Some(mut e) = EVENTS.reserve::<SegEvent>(0) else {
        stat_inc(STAT_LOST_EVENTS);
        return;
    };
    let ev = e.as_mut_ptr();
    let mut caplen = paylen as usize;
    if caplen > SEG_PAYLOAD {
        caplen = SEG_PAYLOAD;
    }
    unsafe {
        (*ev).kind = Kind::Bgp as u8;
        (*ev).dir = dir;
        (*ev).tcp_flags = flags;
        (*ev)._pad = 0;
        (*ev).netns = netns;
        (*ev).ifindex = dev_ifindex(dev);
        (*ev).paylen = paylen as u16;
        (*ev).ts = now;
        (*ev).tuple = p.t;
        (*ev).seq = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        (*ev).ack = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
        (*ev).ifname = [0; IFNAMSIZ];
        dev_name(dev, &mut (*ev).ifname);
        let payload = &mut (*ev).payload;
        let src = (p.l4 + doff) as *const u8;
        if caplen > 0
            && aya_ebpf::helpers::bpf_probe_read_kernel_buf(src, &mut payload[..caplen]).is_err()
        {
            caplen = 0;
        }
        (*ev).caplen = caplen as u16;
    }
    e.submit(0);
}
