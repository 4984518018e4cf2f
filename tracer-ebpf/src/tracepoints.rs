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

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{
    AF_INET, DIR_REPLY, DIR_REQUEST, EV_UNTRACED, Event, Kind, NO_HOOK, STAT_LOST_EVENTS,
};

use crate::{
    maps::{CT_FLOWS, CURRENT, EVENTS, FLOWS, POD_IFS, T_FOLLOW, Track, conf, off},
    skb::*,
    wire,
};

/// How long a routing lookup may follow the packet it is attributed to: the
/// same or the next jiffy (it comes right after, on the same CPU).
const FIB_MAX_DELAY_JIFFIES: u64 = 1;

#[btf_tracepoint(function = "netif_receive_skb")]
pub fn lbp_receive(ctx: BtfTracePointContext) -> i32 {
    on_receive(ctx.arg::<u64>(0));
    0
}

#[inline(always)]
fn on_receive(skb: u64) {
    let now = jiffies();
    let proto = skb_protocol(skb);
    // On receive the MAC header is already pulled: data is the L3 header.
    let l3 = skb_data(skb);
    let open = window_open(now);
    let mut p = Parsed::default();
    let mut x = Extra::default();
    if open && let Some(tr) = tracked(skb) {
        // A traced packet arriving again: bridge, veth into the pod ...
        x.dev = skb_dev(skb);
        let netns = dev_netns(x.dev);
        let parsed = parse_ip(l3, proto, &mut p);
        let pp = if parsed {
            &p as *const Parsed
        } else {
            core::ptr::null()
        };
        if verify(skb, tr, pp) {
            unsafe { (*tr).netns = netns };
            if in_scope(tr, netns) {
                if parsed {
                    set_current(skb, &p.t, now);
                }
                emit(Kind::Arrive as u8, skb, tr, pp, &x);
            }
            return;
        }
        // A stale entry (reused skb address): treat the packet as new.
    }
    if proto == ETH_P_ARP {
        wire::arp(skb, skb_mac(skb), l3, 0);
        return;
    }
    // The cheap compare every unrelated packet pays.
    let Some(daddr) = peek_daddr(l3, proto) else {
        return;
    };
    let lb = is_lb(&daddr);
    if !lb && !open {
        return;
    }
    x.dev = skb_dev(skb);
    let netns = dev_netns(x.dev);
    if netns != conf!(node_netns) || !parse_ip(l3, proto, &mut p) {
        return;
    }
    let traced = if lb {
        request_seen(skb, &p)
    } else {
        open && reply_seen(skb, &p)
    };
    if traced && let Some(tr) = tracked(skb) {
        set_current(skb, &p.t, now);
        emit(Kind::Arrive as u8, skb, tr, &p, &x);
    }
}

#[btf_tracepoint(function = "net_dev_start_xmit")]
pub fn lbp_xmit(ctx: BtfTracePointContext) -> i32 {
    on_xmit(ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}

#[inline(always)]
fn on_xmit(skb: u64, dev: u64) {
    let now = jiffies();
    let proto = skb_protocol(skb);
    let l3 = skb_network(skb);
    let mut p = Parsed::default();
    let x = Extra {
        dev,
        ..Extra::default()
    };
    if window_open(now)
        && let Some(tr) = tracked(skb)
    {
        let netns = dev_netns(dev);
        let parsed = parse_ip(l3, proto, &mut p);
        let pp = if parsed {
            &p as *const Parsed
        } else {
            core::ptr::null()
        };
        if verify(skb, tr, pp) {
            unsafe { (*tr).netns = netns };
            if !in_scope(tr, netns) {
                return;
            }
            if netns == conf!(node_netns) {
                if unsafe { (*tr).dir } == DIR_REQUEST {
                    let ifindex = dev_ifindex(dev);
                    if unsafe { POD_IFS.get(ifindex) }.is_some() {
                        unsafe { (*tr).flags |= T_FOLLOW };
                    }
                    if parsed {
                        expect_reply(tr, &p);
                    }
                } else if parsed && is_lb(&p.t.saddr) {
                    // Traced answers count like the others.
                    count_reply(skb, &p);
                }
            }
            emit(Kind::Xmit as u8, skb, tr, pp, &x);
            return;
        }
    }
    if proto == ETH_P_ARP {
        // On transmit, data is the MAC header.
        let mac = skb_data(skb);
        wire::arp(skb, mac, mac + 14, 1);
        return;
    }
    // Untraced answers leaving the node: count them for their flow.
    let saddr = match proto {
        ETH_P_IP => rd::<[u8; 4]>(l3 + 12).map(v4),
        ETH_P_IPV6 => rd::<[u8; 16]>(l3 + 8),
        _ => None,
    };
    let Some(saddr) = saddr else {
        return;
    };
    if !is_lb(&saddr) || dev_netns(dev) != conf!(node_netns) || !parse_ip(l3, proto, &mut p) {
        return;
    }
    count_reply(skb, &p);
}

#[inline(never)]
fn count_reply(skb: u64, p: &Parsed) {
    let flow = p.t.reversed();
    if let Some(c) = counters(&flow) {
        unsafe {
            (*c).rep_pkts += 1;
            (*c).rep_bytes += skb_len(skb) as u64;
        }
    }
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn lbp_kfree(ctx: BtfTracePointContext) -> i32 {
    on_kfree(ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<u32>(2));
    0
}

#[inline(always)]
fn on_kfree(skb: u64, location: u64, reason: u32) {
    let proto = skb_protocol(skb);
    if window_open(jiffies())
        && let Some(tr) = tracked(skb)
    {
        let mut p = Parsed::default();
        let pp = if parse_ip(skb_network(skb), proto, &mut p) {
            &p as *const Parsed
        } else {
            core::ptr::null()
        };
        if verify(skb, tr, pp) {
            let dev = skb_dev(skb);
            let netns = dev_netns(dev);
            if in_scope(tr, netns) {
                let x = unsafe {
                    Extra {
                        dev,
                        location,
                        reason,
                        hook: (*tr).last_hook,
                        pos: (*tr).last_pos,
                        ..Extra::default()
                    }
                };
                emit(Kind::Drop as u8, skb, tr, pp, &x);
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
    let mut p = Parsed::default();
    if !parse_ip(skb_network(skb), proto, &mut p) {
        return;
    }
    let dev = skb_dev(skb);
    if dev != 0 && dev_netns(dev) != conf!(node_netns) {
        return;
    }
    let mut tr = Track {
        flow: p.t,
        ts: 0,
        head: 0,
        sig: 0,
        netns: conf!(node_netns),
        seq: 0,
        dir: DIR_REQUEST,
        flags: 0,
        last_hook: NO_HOOK,
        last_pos: 0,
        last_ct: 0,
        _pad: 0,
        last_sum: 0,
    };
    if is_lb(&p.t.daddr) {
        // Still addressed to the LB IP: the flow's own tuple.
    } else if is_lb(&p.t.saddr) {
        tr.flow = p.t.reversed();
        tr.dir = DIR_REPLY;
    } else {
        let nfct = skb_nfct(skb);
        let ct = nfct & !7;
        if ct == 0 {
            return;
        }
        let ctinfo = nfct & 7;
        if ctinfo == 1 || ctinfo == 4 {
            // RELATED: an ICMP error about the flow, not one of its packets.
            return;
        }
        match unsafe { CT_FLOWS.get(ct) } {
            Some(f) => tr.flow = f.flow,
            None => return,
        }
        if ctinfo >= 3 {
            tr.dir = DIR_REPLY;
        }
    }
    let Some(fs) = FLOWS.get_ptr_mut(tr.flow) else {
        return;
    };
    if let Some(c) = counters(&tr.flow) {
        unsafe { (*c).drops += 1 };
    }
    unsafe {
        if (*fs).drop_events as u32 >= conf!(drop_events) {
            return;
        }
        (*fs).drop_events += 1;
    }
    let x = Extra {
        dev,
        location,
        reason,
        hook: NO_HOOK,
        flags: EV_UNTRACED,
        ..Extra::default()
    };
    emit(Kind::Drop as u8, skb, &tr, &p, &x);
}

#[btf_tracepoint(function = "consume_skb")]
pub fn lbp_consume(ctx: BtfTracePointContext) -> i32 {
    on_consume(ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    0
}

#[inline(always)]
fn on_consume(skb: u64, location: u64) {
    if !window_open(jiffies()) {
        return;
    }
    let Some(tr) = tracked(skb) else {
        return;
    };
    let mut p = Parsed::default();
    let pp = if parse_ip(skb_network(skb), skb_protocol(skb), &mut p) {
        &p as *const Parsed
    } else {
        core::ptr::null()
    };
    if !verify(skb, tr, pp) {
        return;
    }
    let dev = skb_dev(skb);
    if in_scope(tr, dev_netns(dev)) {
        let x = Extra {
            dev,
            location,
            hook: NO_HOOK,
            ..Extra::default()
        };
        emit(Kind::Consume as u8, skb, tr, pp, &x);
    }
    untrack(skb);
}

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn lbp_tcp_reset(ctx: BtfTracePointContext) -> i32 {
    on_reset(ctx.arg::<u64>(1), ctx.arg::<u32>(2));
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
    let mut p = Parsed::default();
    let pp = if parse_ip(skb_network(skb), skb_protocol(skb), &mut p) {
        &p as *const Parsed
    } else {
        core::ptr::null()
    };
    if !verify(skb, tr, pp) {
        return;
    }
    let dev = skb_dev(skb);
    if !in_scope(tr, dev_netns(dev)) {
        return;
    }
    let x = Extra {
        dev,
        reason,
        hook: NO_HOOK,
        ..Extra::default()
    };
    emit(Kind::Reset as u8, skb, tr, pp, &x);
}

#[btf_tracepoint(function = "fib_table_lookup")]
pub fn lbp_fib(ctx: BtfTracePointContext) -> i32 {
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
    if !window_open(j) {
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
    // lookup is for its source.
    if daddr != cur.daddr && daddr != cur.saddr {
        return;
    }
    let skb = cur.skb;
    let Some(tr) = tracked(skb) else {
        return;
    };
    fib_event(skb, tr, table, fl, nhc, err);
}

#[inline(always)]
fn fib_event(skb: u64, tr: *const Track, table: u32, fl: u64, nhc: u64, err: i32) {
    let Some(mut e) = EVENTS.reserve::<Event>(0) else {
        stat_inc(STAT_LOST_EVENTS);
        return;
    };
    let ev: *mut Event = e.as_mut_ptr();
    let dev = if err == 0 && nhc != 0 {
        rd::<u64>(nhc + off!(nhc_dev)).unwrap_or(0)
    } else {
        0
    };
    unsafe {
        core::ptr::write_bytes(ev, 0, 1);
        (*ev).kind = Kind::Fib as u8;
        (*ev).hook = NO_HOOK;
        (*ev).ts = now();
        (*ev).skb = skb;
        (*ev).dir = (*tr).dir;
        (*ev).seq = (*tr).seq;
        (*ev).flow = (*tr).flow;
        (*ev).netns = if dev != 0 {
            dev_netns(dev)
        } else {
            (*tr).netns
        };
        if (*ev).netns != conf!(node_netns) {
            (*ev).flags |= tracer_common::EV_POD_NS;
        }
        (*ev).pkt.family = AF_INET;
        (*ev).pkt.saddr = v4(rd::<[u8; 4]>(fl + off!(fl4_saddr)).unwrap_or([0; 4]));
        (*ev).pkt.daddr = v4(rd::<[u8; 4]>(fl + off!(fl4_daddr)).unwrap_or([0; 4]));
        (*ev).pkt.proto = rd::<u8>(fl + off!(fl4_proto)).unwrap_or(0);
        (*ev).fib.table = table;
        (*ev).fib.err = err;
        (*ev).fib.flow_iif = rd::<u32>(fl + off!(fl4_iif)).unwrap_or(0);
        (*ev).fib.flow_oif = rd::<u32>(fl + off!(fl4_oif)).unwrap_or(0);
        if dev != 0 {
            (*ev).ifindex = dev_ifindex(dev);
            dev_name(dev, &mut (*ev).ifname);
            let fam = rd::<u8>(nhc + off!(nhc_gw_family)).unwrap_or(0);
            (*ev).fib.gw_family = fam;
            if fam == AF_INET {
                (*ev).fib.gw = v4(rd::<[u8; 4]>(nhc + off!(nhc_gw)).unwrap_or([0; 4]));
            } else if fam != 0 {
                (*ev).fib.gw = rd::<[u8; 16]>(nhc + off!(nhc_gw)).unwrap_or([0; 16]);
            }
        }
    }
    e.submit(0);
}
