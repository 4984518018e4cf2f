//! ARP about the LB IP (MetalLB's L2 mode), as the receive and transmit
//! tracepoints see it; decoding is left to userspace. (BGP segments are
//! captured by the `tc` programs.)

use network_types::arp::ArpHdr;
use tracer_common::{AF_INET, ArpEvent, CFG_ARP, Kind, STAT_LOST_EVENTS};

use crate::{
    kernel::{PROBE, dev_ifindex, dev_name, dev_netns, now, rd, skb_dev, stat_inc},
    maps::{EVENTS, conf},
    mem::zero,
    parse::{is_lb, v4},
};

/// An ARP packet at `arp` (kernel address; `mac` is its Ethernet header):
/// reported when it is about the LB IP.
#[inline(always)]
pub fn arp(skb: u64, mac: u64, arp: u64, dir: u8) {
    if conf!(flags) & CFG_ARP == 0 {
        return;
    }
    let Some(h) = rd::<ArpHdr>(arp) else {
        return;
    };
    // Ethernet / IPv4 only.
    if h.htype != [0, 1] || h.ptype != [8, 0] || h.hlen != 6 || h.plen != 4 {
        return;
    }
    if !is_lb(&v4(h.spa), AF_INET) && !is_lb(&v4(h.tpa), AF_INET) {
        return;
    }
    let dev = skb_dev::<PROBE>(skb);
    let netns = dev_netns::<PROBE>(dev);
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
        zero(ev);
        (*ev).kind = Kind::Arp as u8;
        (*ev).dir = dir;
        (*ev).op = u16::from_be_bytes(h.oper);
        (*ev).netns = netns;
        (*ev).ifindex = dev_ifindex(dev);
        (*ev).ts = now();
        dev_name(dev, &mut (*ev).ifname);
        (*ev).sha = h.sha;
        (*ev).spa = h.spa;
        (*ev).tha = h.tha;
        (*ev).tpa = h.tpa;
        (*ev).eth_dst = [eth[0], eth[1], eth[2], eth[3], eth[4], eth[5]];
        (*ev).eth_src = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]];
    }
    e.submit(crate::emit::wake());
}
