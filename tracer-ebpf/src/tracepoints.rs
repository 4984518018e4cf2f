//! tp_btf programs: the kernel's own tracepoints, available on locked-down
//! kernels where kprobes and fentry are not.
//!
//! - `net:netif_receive_skb`: a packet arrives on an interface (first sight of
//!   requests to the LB IP, and of the pod's replies);
//! - `net:net_dev_start_xmit`: a packet leaves on an interface;
//! - `skb:kfree_skb` / `skb:consume_skb`: a packet is dropped (with the reason)
//!   or freed normally;
//! - `fib:fib_table_lookup`: the routing decision made for the packet being
//!   handled on this CPU, including rp_filter's reverse lookup;
//! - `tcp:tcp_send_reset`: TCP refused the packet.
//!
//! Tracepoint arguments differ between kernels, and a tp_btf program may
//! only read the arguments its kernel has: `kfree_skb` gained `reason` in
//! 5.17, `consume_skb` `location` in 6.3, `tcp_send_reset` `reason` in 6.10.
//! Each of those has a variant per signature; userspace loads the one the
//! running kernel's BTF (`btf_trace_<name>`) describes.

use core::mem::MaybeUninit;

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{DIR_REPLY, DIR_REQUEST, EV_UNTRACED, Kind, Tuple};

use crate::{
    emit::emit,
    kernel::*,
    maps::{CT_FLOWS, CURRENT, FLOWS, FlowRef, POD_IFS, T_COUNTED, conf, empty, off},
    mem::{zero, zeroed_in},
    parse::*,
    scratch::{Frame, Scratch},
    track::*,
    wire,
};

/// How long a routing lookup may follow the packet it is attributed to, in
/// jiffies. It comes right after on the same CPU, but netfilter's NAT runs in
/// between, which takes several jiffies on a slow (emulated) machine; the
/// address must match as well.
const FIB_MAX_DELAY_JIFFIES: u64 = 25;

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn lbp_receive(ctx: BtfTracePointContext) -> i32 {
    if empty() {
        return 0;
    }
    on_receive(ctx.arg::<u64>(0));
    0
}

#[inline(always)]
fn on_receive(skb: u64) {
    // Whatever was passed at this address is gone: an arrival is a new
    // packet, or the passed one arriving again one device up, or in another
    // namespace.
    let repeat = take_passed(skb);
    end_current_unless(skb);
    let now = jiffies();
    let proto = skb_protocol::<BTF>(skb);
    // On receive the MAC header is already pulled: data is the L3 header.
    let l3 = skb_data::<BTF>(skb);
    let open = window_open(now);
    if open
        && let Some(tr) = tracked(skb)
        && let Some(f) = Frame::enter()
    {
        // A traced packet arriving again: bridge, veth into the pod ...
        let s = f.get();
        if again(skb, tr, l3, proto, s) {
            let dev = skb_dev::<BTF>(skb);
            let netns = dev_netns::<BTF>(dev);
            unsafe { (*tr).netns = netns };
            if in_scope(tr, netns) {
                if s.p.ok != 0 {
                    set_current(skb, &s.p.t, now);
                }
                s.x.reset(dev);
                emit(Kind::Arrive as u8, skb, tr, s);
            }
            return;
        }
        // A stale entry (reused skb address): the packet is new.
    }
    if proto == ETH_P_ARP {
        wire::arp(skb, skb_mac(skb), l3, 0);
        return;
    }
    // First sights are the node's own: in a pod's namespace a packet only
    // matters once traced (above).
    let dev = skb_dev::<BTF>(skb);
    if dev_netns::<BTF>(dev) != conf!(node_netns) {
        return;
    }
    // The cheap compare every unrelated packet pays.
    let Some(daddr) = peek_daddr(l3, proto) else {
        return;
    };
    // Two calls rather than one with a flag: a flag merged from both paths
    // lets the 6.1 verifier prune the reply path as dead code.
    if is_lb(&daddr, family_of(proto)) {
        first_sight::<false>(skb, dev, l3, proto, repeat);
    } else if open {
        first_sight::<true>(skb, dev, l3, proto, repeat);
    }
}

/// A packet not traced yet, arriving on the node (on `dev`): a request to
/// the LB IP, or (`REPLY`) perhaps the answer a traced request is waiting
/// for. `repeat`: its address was the packet passed last on this CPU.
#[inline(never)]
fn first_sight<const REPLY: bool>(skb: u64, dev: u64, l3: u64, proto: u16, repeat: bool) {
    let Some(f) = Frame::enter() else {
        return;
    };
    let s = f.get();
    if !parse_ip(l3, proto, &mut s.p) {
        return;
    }
    let outcome = if repeat && same_as_passed(&s.p) {
        // The packet passed a moment ago, arriving again one device up (on
        // a bridge after its port): decided, and counted, already.
        SPENT
    } else if REPLY {
        reply_seen(skb, s)
    } else {
        request_seen(skb, s)
    };
    // A packet arriving on the node that REPLIES does not expect is decided
    // here too: a traced request's reply carries the reverse of the tuple
    // that request left the node with (after its NAT), so netfilter's
    // conntrack lookups would not find it either; they stay for packets
    // never received (the node's own answers) and copies the kernel makes.
    // Under a flood of untraced connections this spares every SYN-ACK a
    // lookup at each netfilter hook and a second look on the bridge.
    if outcome == SPENT || (REPLY && outcome == NOT_STARTED) {
        // The rest of its way on this CPU costs one compare per hook.
        pass(skb, !REPLY, &s.p);
    } else if outcome == STARTED
        && let Some(tr) = tracked(skb)
    {
        set_current(skb, &s.p.t, jiffies());
        s.x.reset(dev);
        emit(Kind::Arrive as u8, skb, tr, s);
    }
}

#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn lbp_xmit(ctx: BtfTracePointContext) -> i32 {
    if empty() {
        return 0;
    }
    on_xmit(ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}

#[inline(always)]
fn on_xmit(skb: u64, dev: u64) {
    // A request decided at its first hook, or an answer already counted on
    // a device above this one: nothing more to tell here.
    if passed_done(skb) {
        return;
    }
    let open = window_open(jiffies());
    let proto = skb_protocol::<BTF>(skb);
    let l3 = skb_network::<BTF>(skb);
    // A passed answer is not tracked, but still counted below.
    if open
        && !passed(skb)
        && let Some(tr) = tracked(skb)
        && let Some(f) = Frame::enter()
    {
        let s = f.get();
        if again(skb, tr, l3, proto, s) {
            let netns = dev_netns::<BTF>(dev);
            unsafe { (*tr).netns = netns };
            if !in_scope(tr, netns) {
                return;
            }
            if netns == conf!(node_netns) {
                if unsafe { (*tr).dir } == DIR_REQUEST {
                    if unsafe { POD_IFS.get(&dev_ifindex(dev)) }.is_some() {
                        follow_into_pod(tr);
                    }
                    if s.p.ok != 0 {
                        expect_reply(tr, &s.p);
                    }
                    // Without netfilter links (before 6.4) nothing else ties
                    // the conntrack entry to the flow, and later, untraced
                    // packets of it are found only through that entry.
                    remember_ct(tr, skb_nfct::<BTF>(skb));
                } else if s.p.ok != 0
                    && is_lb(&s.p.t.saddr, s.p.t.family)
                    && unsafe { (*tr).flags } & T_COUNTED == 0
                {
                    // Traced answers count like the others, once.
                    count_reply(skb, &s.p.t);
                    unsafe { (*tr).flags |= T_COUNTED };
                }
            }
            s.x.reset(dev);
            emit(Kind::Xmit as u8, skb, tr, s);
            return;
        }
    }
    if proto == ETH_P_ARP {
        // On transmit, data is the MAC header.
        let mac = skb_data::<BTF>(skb);
        wire::arp(skb, mac, mac + 14, 1);
        return;
    }
    // Untraced answers leaving the node: count them for their flow.
    if dev_netns::<BTF>(dev) != conf!(node_netns) {
        return;
    }
    let Some(saddr) = peek_saddr(l3, proto) else {
        return;
    };
    if !is_lb(&saddr, family_of(proto)) {
        return;
    }
    let Some(f) = Frame::enter() else {
        return;
    };
    let s = f.get();
    if parse_ip(l3, proto, &mut s.p) {
        count_reply(skb, &s.p.t);
        // Devices it leaves through next (a VLAN's parent, a bond's slave)
        // see the same packet.
        pass(skb, true, &s.p);
    }
}

/// Counts an answer (tuple `t`, from the LB IP) for its flow.
#[inline(never)]
fn count_reply(skb: u64, t: &Tuple) {
    let flow = t.reversed();
    if let Some(fs) = FLOWS.get_ptr_mut(&flow) {
        add(unsafe { &raw mut (*fs).rep_pkts }, 1);
        add(
            unsafe { &raw mut (*fs).rep_bytes },
            skb_len::<BTF>(skb) as u64,
        );
    }
}

/// 5.17+: `kfree_skb(skb, location, reason, ...)`.
#[btf_tracepoint(function = "kfree_skb")]
pub fn lbp_kfree(ctx: BtfTracePointContext) -> i32 {
    if empty() {
        return 0;
    }
    on_kfree(ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u32>(2));
    0
}

/// Before 5.17: `kfree_skb(skb, location)`; userspace names the cause from
/// the freeing function.
#[btf_tracepoint(function = "kfree_skb")]
pub fn lbp_kfree_noreason(ctx: BtfTracePointContext) -> i32 {
    if empty() {
        return 0;
    }
    on_kfree(ctx.arg::<u64>(0), ctx.arg::<u64>(1), 0);
    0
}

#[inline(always)]
fn on_kfree(skb: u64, location: u64, reason: u32) {
    let proto = skb_protocol::<BTF>(skb);
    let was_passed = take_passed(skb);
    let open = window_open(jiffies());
    if open
        && !was_passed
        && let Some(tr) = tracked(skb)
        && let Some(f) = Frame::enter()
    {
        let s = f.get();
        if again(skb, tr, skb_network::<BTF>(skb), proto, s) {
            let dev = skb_dev::<BTF>(skb);
            if in_scope(tr, dev_netns::<BTF>(dev)) {
                s.x.reset(dev);
                s.x.location = location;
                s.x.reason = reason;
                unsafe {
                    s.x.hook = (*tr).last_hook;
                    s.x.pos = (*tr).last_pos;
                    count_drop(&(*tr).flow, (*tr).conn);
                }
                emit(Kind::Drop as u8, skb, tr, s);
            }
            // Deleted only now: the event above read through the entry.
            untrack(skb);
            return;
        }
    }
    if proto == ETH_P_IP || proto == ETH_P_IPV6 {
        untraced_drop(skb, location, reason, proto);
    }
}

/// A dropped packet past its flow's trace budget (say, the first full-size
/// segment hitting a small MTU): found by address or conntrack, counted, and
/// reported a few times per flow. Out of line: its own stack frame.
#[inline(never)]
fn untraced_drop(skb: u64, location: u64, reason: u32, proto: u16) {
    // Only drops on the node are reported; checked first, with plain loads,
    // as a pod's drops (its half-open connections' resets) come by the
    // thousand under a flood of new connections.
    let dev = skb_dev::<BTF>(skb);
    if dev != 0 && dev_netns::<BTF>(dev) != conf!(node_netns) {
        return;
    }
    let l3 = skb_network::<BTF>(skb);
    // Read into zeroed buffers, not returned as Options: the compiler then
    // spilled a register one path never wrote, and 5.10's verifier rejects
    // that read of unwritten stack.
    let (mut d, mut s) = (MaybeUninit::uninit(), MaybeUninit::uninit());
    // SAFETY: bytes.
    let (daddr, saddr): (&mut [u8; 16], &mut [u8; 16]) =
        unsafe { (zeroed_in(&mut d), zeroed_in(&mut s)) };
    let read = match proto {
        ETH_P_IP => rd_into(l3 + 16, &mut daddr[..4]) && rd_into(l3 + 12, &mut saddr[..4]),
        ETH_P_IPV6 => rd_into(l3 + 24, daddr) && rd_into(l3 + 8, saddr),
        _ => false,
    };
    if !read {
        return;
    }
    let proto_reason = (reason as u64) << 16 | proto as u64;
    // Still addressed to the LB IP (the flow's own tuple), from it (an
    // answer), or neither (NATed): then only its conntrack entry tells.
    // One call per case, not a flag (see on_receive).
    let family = family_of(proto);
    if is_lb(daddr, family) {
        untraced_drop_as::<TO_LB>(skb, location, proto_reason, 0, core::ptr::null());
    } else if is_lb(saddr, family) {
        untraced_drop_as::<FROM_LB>(skb, location, proto_reason, 0, core::ptr::null());
    } else {
        let nfct = skb_nfct::<BTF>(skb);
        let ct = nfct & !7;
        if ct == 0 || ctinfo_is_related(nfct & 7) {
            return;
        }
        // A freed entry's memory goes to the next new connection, in any
        // namespace: only while its first tuple is still the flow's.
        if let Some(cf) = CT_FLOWS.get_ptr(&ct)
            && same_conntrack(ct, cf)
        {
            untraced_drop_as::<BY_CT>(skb, location, proto_reason, nfct, cf);
        }
    }
}

const TO_LB: u8 = 0;
const FROM_LB: u8 = 1;
const BY_CT: u8 = 2;

/// The untraced drop of a packet of a flow found as `HOW` says: its flow
/// and direction go into `s.tr` (its own tuple, the reverse of an
/// answer's, or `cf`, the flow of its conntrack entry `nfct`; `cf` is
/// null unless `HOW` is BY_CT).
#[inline(never)]
fn untraced_drop_as<const HOW: u8>(
    skb: u64,
    location: u64,
    proto_reason: u64,
    nfct: u64,
    cf: *const FlowRef,
) {
    let dev = skb_dev::<BTF>(skb);
    let Some(f) = Frame::enter() else {
        return;
    };
    let s = f.get();
    if !parse_ip(skb_network::<BTF>(skb), proto_reason as u16, &mut s.p) {
        return;
    }
    // The stand-in track starts zeroed: fields set one by one to zero would
    // merge into a memset call (see `mem`).
    unsafe { zero(&raw mut s.tr) };
    let t = &s.p.t;
    let flow = &mut s.tr.flow;
    match HOW {
        TO_LB => {
            *flow = *t;
            s.tr.dir = DIR_REQUEST;
        }
        FROM_LB => {
            *flow = t.reversed();
            s.tr.dir = DIR_REPLY;
        }
        _ => {
            // SAFETY: BY_CT's caller passes the entry it just found (never
            // null); map memory and scratch never overlap.
            unsafe { core::ptr::copy_nonoverlapping(&raw const (*cf).flow, flow, 1) };
            s.tr.conn = unsafe { (*cf).conn };
            // enum ip_conntrack_info: IS_REPLY = 3 and up are the reply direction.
            s.tr.dir = if nfct & 7 >= 3 {
                DIR_REPLY
            } else {
                DIR_REQUEST
            };
        }
    }
    s.x.reset(dev);
    s.x.location = location;
    s.x.reason = (proto_reason >> 16) as u32;
    s.x.flags = EV_UNTRACED;
    report_untraced_drop::<HOW>(skb, s);
}

/// Counts the drop (stand-in track in `s.tr`, event details in `s.x`) and
/// reports it while the flow's drop-event budget lasts.
#[inline(never)]
fn report_untraced_drop<const HOW: u8>(skb: u64, s: &mut Scratch) {
    let Some(fs) = FLOWS.get_ptr_mut(&s.tr.flow) else {
        return;
    };
    // Found by its conntrack entry: only if that is still the tuple's
    // current connection. By address: the current one.
    if HOW == BY_CT && unsafe { (*fs).conn } != s.tr.conn {
        return;
    }
    s.tr.conn = unsafe { (*fs).conn };
    add(unsafe { &raw mut (*fs).drops }, 1);
    unsafe {
        if (*fs).drop_events as u32 >= conf!(drop_events) {
            return;
        }
        (*fs).drop_events += 1;
    }
    s.tr.netns = conf!(node_netns);
    emit(Kind::Drop as u8, skb, &raw const s.tr, s);
}

/// 6.3+: `consume_skb(skb, location)`.
#[btf_tracepoint(function = "consume_skb")]
pub fn lbp_consume(ctx: BtfTracePointContext) -> i32 {
    if empty() {
        return 0;
    }
    on_consume(ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}

/// Before 6.3: `consume_skb(skb)`.
#[btf_tracepoint(function = "consume_skb")]
pub fn lbp_consume_noloc(ctx: BtfTracePointContext) -> i32 {
    if empty() {
        return 0;
    }
    on_consume(ctx.arg::<u64>(0), 0);
    0
}

#[inline(always)]
fn on_consume(skb: u64, location: u64) {
    if take_passed(skb) {
        return;
    }
    if !window_open(jiffies()) {
        return;
    }
    let Some(tr) = tracked(skb) else {
        return;
    };
    let Some(f) = Frame::enter() else {
        return;
    };
    let s = f.get();
    if !again(
        skb,
        tr,
        skb_network::<BTF>(skb),
        skb_protocol::<BTF>(skb),
        s,
    ) {
        return;
    }
    let dev = skb_dev::<BTF>(skb);
    if in_scope(tr, dev_netns::<BTF>(dev)) {
        s.x.reset(dev);
        s.x.location = location;
        emit(Kind::Consume as u8, skb, tr, s);
    }
    untrack(skb);
}

/// 6.10+: `tcp_send_reset(sk, skb, reason)`.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn lbp_tcp_reset(ctx: BtfTracePointContext) -> i32 {
    if empty() {
        return 0;
    }
    on_reset(ctx.arg::<u64>(1), ctx.arg::<u32>(2));
    0
}

/// Before 6.10: `tcp_send_reset(sk, skb)`.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn lbp_tcp_reset_noreason(ctx: BtfTracePointContext) -> i32 {
    if empty() {
        return 0;
    }
    on_reset(ctx.arg::<u64>(1), 0);
    0
}

#[inline(always)]
fn on_reset(skb: u64, reason: u32) {
    if skb == 0 || !window_open(jiffies()) {
        return;
    }
    let Some(tr) = tracked(skb) else {
        return;
    };
    let Some(f) = Frame::enter() else {
        return;
    };
    let s = f.get();
    if !again(
        skb,
        tr,
        skb_network::<BTF>(skb),
        skb_protocol::<BTF>(skb),
        s,
    ) {
        return;
    }
    let dev = skb_dev::<BTF>(skb);
    if !in_scope(tr, dev_netns::<BTF>(dev)) {
        return;
    }
    s.x.reset(dev);
    s.x.reason = reason;
    emit(Kind::Reset as u8, skb, tr, s);
}

/// Whether `addr` is the IPv4 source or destination in `skb`'s header now.
#[inline(never)]
fn lookup_is_for(skb: u64, addr: [u8; 4]) -> bool {
    match rd::<[u8; 8]>(skb_network::<PROBE>(skb) + 12) {
        Some(a) => a[..4] == addr || a[4..] == addr,
        None => false,
    }
}

#[btf_tracepoint(function = "fib_table_lookup")]
pub fn lbp_fib(ctx: BtfTracePointContext) -> i32 {
    if empty() {
        return 0;
    }
    on_fib(
        ctx.arg::<u32>(0),
        ctx.arg::<u64>(1),
        ctx.arg::<u64>(2),
        ctx.arg::<i32>(3),
    );
    0
}

#[inline(always)]
fn on_fib(table: u32, fl: u64, nhc: u64, err: i32) {
    let j = jiffies();
    // Only a traced packet's lookups are reported: with none on its way,
    // the header reads below are not worth their cost.
    if !window_open(j) || none_in_flight() {
        return;
    }
    let Some(cur) = CURRENT.get(0) else {
        return;
    };
    if j.wrapping_sub(cur.ts) > FIB_MAX_DELAY_JIFFIES || cur.skb == 0 {
        return;
    }
    let Some(daddr) = rd::<[u8; 4]>(fl + off!(fl4_daddr)) else {
        return;
    };
    // The forward lookup is for the packet's destination; rp_filter's reverse
    // lookup is for its source. Both as last noted, or (NAT since, and no
    // netfilter point to note it) as its header says now.
    let skb = cur.skb;
    if daddr != cur.daddr && daddr != cur.saddr && !lookup_is_for(skb, daddr) {
        return;
    }
    let Some(tr) = tracked(skb) else {
        return;
    };
    let Some(f) = Frame::enter() else {
        return;
    };
    let s = f.get();
    let dev = if err == 0 && nhc != 0 {
        rd::<u64>(nhc + off!(nhc_dev)).unwrap_or(0)
    } else {
        0
    };
    // A route found in another namespace is another packet's.
    if dev != 0 && dev_netns::<PROBE>(dev) != unsafe { (*tr).netns } {
        return;
    }
    s.p.ok = 0;
    s.x.reset(dev);
    s.x.fl = fl;
    s.x.nhc = nhc;
    s.x.fib_table = table;
    s.x.fib_err = err;
    emit(Kind::Fib as u8, skb, tr, s);
}
