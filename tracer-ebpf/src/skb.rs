//! What every hook shares: reading kernel structs at BTF-resolved offsets,
//! parsing headers, deciding which packets are traced, and emitting events.
//!
//! Tracking identity: a traced packet is keyed by its `struct sk_buff`
//! address from the moment it is first seen until it is freed (kfree_skb /
//! consume_skb remove the entry). The address survives NAT, bridging and veth
//! crossings. Packets the kernel re-allocates, and the pod's replies, are
//! found again through their conntrack entry (CT_FLOWS) or the tuple the reply
//! will carry (REPLIES).

use aya_ebpf::helpers::{
    bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};
use tracer_common::{
    AF_INET, AF_INET6, DIR_REPLY, DIR_REQUEST, EV_POD_NS, Event, FlowCounters, IFNAMSIZ, Kind,
    NO_HOOK, STAT_FLOWS, STAT_LOST_EVENTS, STAT_TRACKED, Tuple,
};

use crate::maps::{
    COUNTERS, CT_FLOWS, CURRENT, CtFlow, EVENTS, FLOWS, FlowState, REPLIES, STATS, T_FOLLOW,
    TRACKED, Track, WINDOW, conf, off,
};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

#[inline(always)]
pub fn rd<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// Monotonic ns, for event timestamps.
#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_ns() }
}

/// jiffies: coarse, but a plain memory read where a clock may be costly
/// (notably in VMs). For the hot paths.
#[inline(always)]
pub fn jiffies() -> u64 {
    unsafe { bpf_jiffies64() }
}

#[inline(always)]
pub fn stat_inc(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
}

/// True while some packet was traced recently (`j` is jiffies now): only
/// then do the following hooks pay for map lookups.
#[inline(always)]
pub fn window_open(j: u64) -> bool {
    match WINDOW.get(0) {
        Some(last) => j.wrapping_sub(*last) < conf!(window_jiffies),
        None => false,
    }
}

#[inline(always)]
fn touch_window() {
    if let Some(p) = WINDOW.get_ptr_mut(0) {
        unsafe { *p = jiffies() };
    }
}

// ---- struct sk_buff / net_device ----------------------------------------

#[inline(always)]
pub fn skb_dev(skb: u64) -> u64 {
    rd::<u64>(skb + off!(skb_dev)).unwrap_or(0)
}

#[inline(always)]
pub fn skb_len(skb: u64) -> u32 {
    rd::<u32>(skb + off!(skb_len)).unwrap_or(0)
}

/// `skb->protocol`, host order.
#[inline(always)]
pub fn skb_protocol(skb: u64) -> u16 {
    u16::from_be(rd::<u16>(skb + off!(skb_protocol)).unwrap_or(0))
}

#[inline(always)]
pub fn skb_head(skb: u64) -> u64 {
    rd::<u64>(skb + off!(skb_head)).unwrap_or(0)
}

/// Start of the network header once the stack has set it (netfilter,
/// transmit, free).
#[inline(always)]
pub fn skb_network(skb: u64) -> u64 {
    let nh = rd::<u16>(skb + off!(skb_network_header)).unwrap_or(0xffff);
    if nh == 0xffff {
        return 0;
    }
    skb_head(skb) + nh as u64
}

/// `skb->data`: the network header on receive (the MAC header is pulled).
#[inline(always)]
pub fn skb_data(skb: u64) -> u64 {
    rd::<u64>(skb + off!(skb_data)).unwrap_or(0)
}

#[inline(always)]
pub fn skb_mac(skb: u64) -> u64 {
    let mh = rd::<u16>(skb + off!(skb_mac_header)).unwrap_or(0xffff);
    if mh == 0xffff {
        return 0;
    }
    skb_head(skb) + mh as u64
}

/// `skb->_nfct`: conntrack entry pointer with ctinfo in the low 3 bits.
#[inline(always)]
pub fn skb_nfct(skb: u64) -> u64 {
    rd::<u64>(skb + off!(skb_nfct)).unwrap_or(0)
}

#[inline(always)]
pub fn dev_netns(dev: u64) -> u32 {
    if dev == 0 {
        return 0;
    }
    let Some(net) = rd::<u64>(dev + off!(dev_nd_net)) else {
        return 0;
    };
    rd::<u32>(net + off!(net_inum)).unwrap_or(0)
}

#[inline(always)]
pub fn dev_ifindex(dev: u64) -> u32 {
    if dev == 0 {
        return 0;
    }
    rd::<u32>(dev + off!(dev_ifindex)).unwrap_or(0)
}

#[inline(always)]
pub fn dev_name(dev: u64, out: &mut [u8; IFNAMSIZ]) {
    if dev != 0 {
        let _ = unsafe { bpf_probe_read_kernel_buf((dev + off!(dev_name)) as *const u8, out) };
    }
}

#[inline(always)]
pub fn dev_mtu(dev: u64) -> u32 {
    if dev == 0 {
        return 0;
    }
    rd::<u32>(dev + off!(dev_mtu)).unwrap_or(0)
}

// ---- headers -------------------------------------------------------------

/// A parsed IP packet: its tuple and TCP flags.
#[derive(Clone, Copy, Default)]
pub struct Parsed {
    pub t: Tuple,
    pub tcp_flags: u8,
    /// Start of the L3 header (kernel address).
    pub l3: u64,
    /// Start of the L4 header (kernel address), 0 if not reached.
    pub l4: u64,
    /// Survives NAT, changes between packets: TCP sequence and ack numbers,
    /// else IPv4 id and length (IPv6: payload length).
    pub sig: u32,
}

#[inline(always)]
pub fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[0] = a[0];
    o[1] = a[1];
    o[2] = a[2];
    o[3] = a[3];
    o
}

#[inline(always)]
pub fn addr_eq(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let a0 = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let b0 = u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    let a1 = u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let b1 = u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    a0 == b0 && a1 == b1
}

/// Is this the LB IP? The cheap compare every unrelated packet pays.
#[inline(always)]
pub fn is_lb(a: &[u8; 16]) -> bool {
    addr_eq(a, &conf!(lb_addr))
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

/// Reads ports (and TCP flags and sequence) at `l4`.
#[inline(always)]
fn parse_l4(p: &mut Parsed, l4: u64) {
    p.l4 = l4;
    match p.t.proto {
        IPPROTO_TCP => {
            if let Some(h) = rd::<[u8; 14]>(l4) {
                p.t.sport = u16::from_be_bytes([h[0], h[1]]);
                p.t.dport = u16::from_be_bytes([h[2], h[3]]);
                // Sequence and acknowledgment: a receiver's pure ACKs share
                // their sequence number, not their ack.
                let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                let ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
                p.sig = seq ^ ack.rotate_left(16);
                p.tcp_flags = h[13];
            }
        }
        IPPROTO_UDP => {
            if let Some(ports) = rd::<[u8; 4]>(l4) {
                p.t.sport = u16::from_be_bytes([ports[0], ports[1]]);
                p.t.dport = u16::from_be_bytes([ports[2], ports[3]]);
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if let Some(h) = rd::<[u8; 6]>(l4) {
                p.t.dport = u16::from_be_bytes([h[0], h[1]]);
                p.t.sport = u16::from_be_bytes([h[4], h[5]]);
            }
        }
        _ => {}
    }
}

/// Parses the IP packet at kernel address `l3` (`proto` is the ethertype)
/// into `p`. Out of line so callers keep one `Parsed` on their stack.
#[inline(never)]
pub fn parse_ip(l3: u64, proto: u16, p: &mut Parsed) -> bool {
    p.t = Tuple::default();
    p.tcp_flags = 0;
    p.l3 = l3;
    p.l4 = 0;
    p.sig = 0;
    if l3 == 0 {
        return false;
    }
    match proto {
        ETH_P_IP => {
            let Some(h) = rd::<Ipv4Hdr>(l3) else {
                return false;
            };
            if h.vihl >> 4 != 4 {
                return false;
            }
            p.t.family = AF_INET;
            p.t.proto = h.proto;
            p.t.saddr = v4(h.src_addr);
            p.t.daddr = v4(h.dst_addr);
            p.sig = (u16::from_be_bytes(h.id) as u32) << 16 | u16::from_be_bytes(h.tot_len) as u32;
            let frag_off = u16::from_be_bytes(h.frags) & 0x1fff;
            if frag_off == 0 {
                parse_l4(p, l3 + ((h.vihl & 0xf) as u64) * 4);
            }
        }
        ETH_P_IPV6 => {
            let Some(h) = rd::<Ipv6Hdr>(l3) else {
                return false;
            };
            if h.vcf[0] >> 4 != 6 {
                return false;
            }
            p.t.family = AF_INET6;
            p.t.proto = h.next_hdr;
            p.t.saddr = h.src_addr;
            p.t.daddr = h.dst_addr;
            p.sig = u16::from_be_bytes(h.payload_len) as u32;
            parse_l4(p, l3 + 40);
        }
        _ => return false,
    }
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

// ---- flow accounting and tracking ----------------------------------------

#[inline(always)]
fn wanted(t: &Tuple) -> bool {
    let port = conf!(port);
    let proto = conf!(proto);
    (port == 0 || t.dport == port) && (proto == 0 || t.proto == proto)
}

#[inline(always)]
pub fn counters(key: &Tuple) -> Option<*mut FlowCounters> {
    if let Some(c) = COUNTERS.get_ptr_mut(key) {
        return Some(c);
    }
    let zero = FlowCounters::default();
    let _ = COUNTERS.insert(key, zero, 0);
    COUNTERS.get_ptr_mut(key)
}

#[inline(always)]
fn flow_state(key: &Tuple, now: u64, create: bool) -> Option<*mut FlowState> {
    if let Some(f) = FLOWS.get_ptr_mut(key) {
        return Some(f);
    }
    if !create {
        return None;
    }
    let fresh = FlowState {
        first_ts: now,
        req_traced: 0,
        rep_traced: 0,
        drop_events: 0,
        _pad: 0,
    };
    let _ = FLOWS.insert(key, fresh, 0);
    stat_inc(STAT_FLOWS);
    FLOWS.get_ptr_mut(key)
}

/// Outcome of [`start_track`].
pub const STARTED: u8 = 0;
/// The flow's budget for that direction is spent.
pub const SPENT: u8 = 1;
pub const NOT_STARTED: u8 = 2;

/// Starts tracing `skb` as the next packet of `flow` in direction `dir`, if
/// the flow's budget for that direction allows.
#[inline(never)]
fn start_track(skb: u64, flow: &Tuple, p: &Parsed, dir: u8, create: bool) -> u8 {
    let now = now();
    let Some(fs) = flow_state(flow, now, create) else {
        return NOT_STARTED;
    };
    let budget = conf!(trace_packets) as u16;
    let seq = unsafe {
        let n = if dir == DIR_REQUEST {
            &mut (*fs).req_traced
        } else {
            &mut (*fs).rep_traced
        };
        if *n >= budget {
            return SPENT;
        }
        *n += 1;
        *n
    };
    let tr = Track {
        flow: *flow,
        ts: now,
        head: skb_head(skb),
        sig: p.sig,
        netns: conf!(node_netns),
        seq,
        dir,
        flags: 0,
        last_hook: NO_HOOK,
        last_pos: 0,
        last_ct: 0,
        _pad: 0,
        last_sum: 0,
    };
    if TRACKED.insert(skb, tr, 0).is_err() {
        return NOT_STARTED;
    }
    stat_inc(STAT_TRACKED);
    touch_window();
    STARTED
}

/// First sight of a packet to the LB IP in the node's namespace: count it,
/// and trace it if its flow's budget allows.
#[inline(never)]
pub fn request_seen(skb: u64, p: &Parsed) -> bool {
    if !wanted(&p.t) {
        return false;
    }
    let c = counters(&p.t);
    if let Some(c) = c {
        unsafe {
            (*c).req_pkts += 1;
            (*c).req_bytes += skb_len(skb) as u64;
            if (*c).spent != 0 {
                // The bulk of a flow: counted, nothing more.
                return false;
            }
        }
    }
    match start_track(skb, &p.t, p, DIR_REQUEST, true) {
        STARTED => true,
        SPENT => {
            if let Some(c) = c {
                unsafe { (*c).spent = 1 };
            }
            false
        }
        _ => false,
    }
}

/// A packet arriving on the node that carries the tuple of an expected reply.
#[inline(never)]
pub fn reply_seen(skb: u64, p: &Parsed) -> bool {
    match unsafe { REPLIES.get(p.t) } {
        Some(flow) => start_track(skb, flow, p, DIR_REPLY, false) == STARTED,
        None => false,
    }
}

/// The traced flow a conntrack entry belongs to, with the direction of the
/// packet carrying it; None for RELATED packets (ICMP errors about the flow,
/// not its packets) and directions whose budget is spent.
#[inline(always)]
pub fn ct_flow(nfct: u64) -> Option<(*mut CtFlow, u8)> {
    let ct = nfct & !7;
    if ct == 0 {
        return None;
    }
    // enum ip_conntrack_info: RELATED = 1, IS_REPLY = 3, RELATED_REPLY = 4, UNTRACKED = 7.
    let ctinfo = nfct & 7;
    if ctinfo == 1 || ctinfo == 4 || ctinfo == 7 {
        return None;
    }
    let dir = if ctinfo >= 3 { DIR_REPLY } else { DIR_REQUEST };
    let cf = CT_FLOWS.get_ptr_mut(ct)?;
    if unsafe { (*cf).spent } & (1 << dir) != 0 {
        return None;
    }
    Some((cf, dir))
}

/// A packet whose conntrack entry belongs to a traced flow (a reply first seen
/// at netfilter, or a packet the kernel copied): trace it if the budget allows.
#[inline(never)]
pub fn ct_seen(skb: u64, cf: *mut CtFlow, dir: u8, p: &Parsed) -> bool {
    let flow = unsafe { (*cf).flow };
    match start_track(skb, &flow, p, dir, false) {
        STARTED => true,
        SPENT => {
            // From now on this direction costs one lookup per packet.
            unsafe { (*cf).spent |= 1 << dir };
            false
        }
        _ => false,
    }
}

#[inline(always)]
pub fn tracked(skb: u64) -> Option<*mut Track> {
    TRACKED.get_ptr_mut(skb)
}

#[inline(always)]
pub fn untrack(skb: u64) {
    let _ = TRACKED.remove(skb);
}

/// A tracked packet older than this is a leftover of a free we did not see.
const MAX_TRACK_AGE_NS: u64 = 10_000_000_000;

/// Is `tr` still about this very packet? Drops the entry when not. The
/// kernel recycles an skb together with its data buffer, so neither the
/// address nor `head` alone tells packets apart: when the packet can be
/// parsed (`p` not null) its signature must match too; `head` alone only
/// decides for packets we cannot parse.
#[inline(never)]
pub fn verify(skb: u64, tr: *mut Track, p: *const Parsed) -> bool {
    let head = skb_head(skb);
    unsafe {
        if now().wrapping_sub((*tr).ts) < MAX_TRACK_AGE_NS {
            if !p.is_null() && (*p).t.family != 0 {
                if (*p).sig == (*tr).sig {
                    // Same packet, perhaps in a new buffer (pskb_expand_head).
                    (*tr).head = head;
                    return true;
                }
            } else if head == (*tr).head {
                return true;
            }
        }
    }
    untrack(skb);
    false
}

/// Should an event in namespace `netns` be reported for this packet? Always in
/// the node's namespace; elsewhere only once it was sent towards a pod. 0
/// (no device any more, e.g. delivered to a socket) means where it was last
/// seen.
#[inline(always)]
pub fn in_scope(tr: *const Track, netns: u32) -> bool {
    let netns = if netns == 0 {
        unsafe { (*tr).netns }
    } else {
        netns
    };
    netns == conf!(node_netns) || unsafe { (*tr).flags } & T_FOLLOW != 0
}

/// Remembers the packet this CPU works on, for routing lookups.
#[inline(always)]
pub fn set_current(skb: u64, t: &Tuple, j: u64) {
    if let Some(c) = CURRENT.get_ptr_mut(0) {
        unsafe {
            (*c).skb = skb;
            (*c).ts = j;
            (*c).saddr = [t.saddr[0], t.saddr[1], t.saddr[2], t.saddr[3]];
            (*c).daddr = [t.daddr[0], t.daddr[1], t.daddr[2], t.daddr[3]];
        }
    }
}

/// Records where the reply to this (request) packet will come from.
#[inline(never)]
pub fn expect_reply(tr: *const Track, p: &Parsed) {
    let rev = p.t.reversed();
    let _ = REPLIES.insert(rev, unsafe { (*tr).flow }, 0);
}

/// Records the packet's conntrack entry as belonging to its flow.
#[inline(always)]
pub fn remember_ct(tr: *const Track, nfct: u64) {
    let ct = nfct & !7;
    if ct != 0 {
        let v = CtFlow {
            flow: unsafe { (*tr).flow },
            spent: 0,
            _pad: [0; 7],
        };
        let _ = CT_FLOWS.insert(ct, v, 0);
    }
}

// ---- events --------------------------------------------------------------

/// What an event adds to the packet and its tracking state.
#[derive(Clone, Copy, Default)]
pub struct Extra {
    /// Device the event happened on (0: none).
    pub dev: u64,
    /// Drop / Consume: freeing function.
    pub location: u64,
    /// Netfilter: `skb->_nfct`, and the hook's devices.
    pub nfct: u64,
    pub dev_in: u64,
    pub dev_out: u64,
    pub reason: u32,
    pub hook: u8,
    pub pos: u8,
    pub flags: u8,
}

/// Conntrack tuple at kernel address `t` (a `struct nf_conntrack_tuple`).
#[inline(always)]
fn ct_tuple(t: u64, family: u8, out: &mut Tuple) {
    out.family = family;
    out.saddr = rd::<[u8; 16]>(t + off!(tuple_src_u3)).unwrap_or([0; 16]);
    out.daddr = rd::<[u8; 16]>(t + off!(tuple_dst_u3)).unwrap_or([0; 16]);
    if family == AF_INET {
        // union nf_inet_addr: only the first 4 bytes are IPv4.
        for i in 4..16 {
            out.saddr[i] = 0;
            out.daddr[i] = 0;
        }
    }
    out.sport = u16::from_be(rd::<u16>(t + off!(tuple_src_u)).unwrap_or(0));
    out.dport = u16::from_be(rd::<u16>(t + off!(tuple_dst_u)).unwrap_or(0));
    out.proto = rd::<u8>(t + off!(tuple_dst_protonum)).unwrap_or(0);
}

/// Emits one event of `kind` for traced packet `skb` (tracking state `tr`,
/// parsed headers `p` if any). Writes straight into ring-buffer memory; a full
/// ring buffer is counted, never silent.
#[inline(never)]
pub fn emit(kind: u8, skb: u64, tr: *const Track, p: *const Parsed, x: &Extra) {
    let Some(mut e) = EVENTS.reserve::<Event>(0) else {
        stat_inc(STAT_LOST_EVENTS);
        return;
    };
    let ev: *mut Event = e.as_mut_ptr();
    let dev = x.dev;
    let netns = if kind == Kind::Nf as u8 {
        conf!(node_netns)
    } else {
        dev_netns(dev)
    };
    unsafe {
        core::ptr::write_bytes(ev, 0, 1);
        (*ev).kind = kind;
        (*ev).ts = now();
        (*ev).skb = skb;
        (*ev).dir = (*tr).dir;
        (*ev).seq = (*tr).seq;
        (*ev).flow = (*tr).flow;
        (*ev).hook = x.hook;
        (*ev).pos = x.pos;
        (*ev).reason = x.reason;
        (*ev).location = x.location;
        (*ev).flags = x.flags;
        if !p.is_null() {
            (*ev).pkt = (*p).t;
            (*ev).tcp_flags = (*p).tcp_flags;
        }
        (*ev).len = skb_len(skb);
        (*ev).netns = netns;
        if netns != 0 && netns != conf!(node_netns) {
            (*ev).flags |= EV_POD_NS;
        }
        if dev != 0 {
            (*ev).ifindex = dev_ifindex(dev);
            (*ev).mtu = dev_mtu(dev);
            dev_name(dev, &mut (*ev).ifname);
        }
        if kind == Kind::Arrive as u8 {
            let mac = skb_mac(skb);
            if mac != 0
                && let Some(src) = rd::<[u8; 6]>(mac + 6)
            {
                (*ev).mac_src = src;
            }
        }
        if kind == Kind::Nf as u8 {
            let nfct = x.nfct;
            (*ev).ct = if nfct != 0 { (nfct & 7) as u8 + 1 } else { 0 };
            (*ev).in_ifindex = dev_ifindex(x.dev_in);
            (*ev).out_ifindex = dev_ifindex(x.dev_out);
            let ct = nfct & !7;
            if ct != 0 && (nfct & 7) != 7 {
                ct_tuple(
                    ct + off!(ct_tuple_reply),
                    (*ev).pkt.family,
                    &mut (*ev).ct_reply,
                );
                (*ev).ct_status = rd::<u32>(ct + off!(ct_status)).unwrap_or(0);
            }
        }
    }
    e.submit(0);
}
