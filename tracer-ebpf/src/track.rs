//! Which packets are traced, and following them from hook to hook.
//!
//! Tracking identity: a traced packet is keyed by its `struct sk_buff`
//! address from the moment it is first seen until it is freed (kfree_skb /
//! consume_skb remove the entry). The address survives NAT, bridging and veth
//! crossings. Packets the kernel re-allocates, and the pod's replies, are
//! found again through their conntrack entry (CT_FLOWS) or the tuple the reply
//! will carry (REPLIES).

use core::mem::MaybeUninit;

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_RING_SIZE};
use aya_log_ebpf::debug;
use tracer_common::{
    DIR_REPLY, DIR_REQUEST, FlowState, NO_HOOK, STAT_FLOWS, STAT_OVER_RATE, STAT_SHED,
    STAT_TRACKED, Tuple,
};

use crate::{
    kernel::{BTF, PROBE, ctinfo_is_related, jiffies, now, rd, skb_head, skb_len, stat_inc},
    maps::{
        BUCKET, CT_FLOWS, CURRENT, EVENTS, FLOWS, FlowRef, IN_FLIGHT, PASSED, REPLIES, T_CT_SEEN,
        T_FOLLOW, TRACKED, Track, WINDOW, conf, off,
    },
    mem::{zero, zeroed_in},
    parse::{IPPROTO_TCP, Parsed, parse_ip, tuple_sum},
    scratch::Scratch,
};

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

#[inline(always)]
fn wanted(t: &Tuple) -> bool {
    let port = conf!(port);
    let proto = conf!(proto);
    (port == 0 || t.dport == port) && (proto == 0 || t.proto == proto)
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Adds to a total several CPUs may update at once (BPF_XADD: the
/// result is not used, so every kernel has it).
#[inline(always)]
pub fn add(total: *mut u64, n: u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: `total` points into map memory, 8-byte aligned.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(total, n) };
}

/// Does the packet (headers in `p`, seen at `t` ns) start a new connection
/// on a tuple whose current one is `fs`? TCP: a SYN other than the one
/// that opened it. Other protocols: a packet after longer than conntrack
/// keeps an idle entry.
#[inline(always)]
fn new_connection(fs: *const FlowState, p: &Parsed, t: u64) -> bool {
    unsafe {
        if p.t.proto == IPPROTO_TCP {
            p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && p.sig != (*fs).isn
        } else {
            let idle = conf!(conn_idle_secs) as u64 * 1_000_000_000;
            idle != 0 && t.wrapping_sub((*fs).last_ns) > idle
        }
    }
}

/// Starts `fs` over as a new connection opened by the packet in `p`.
#[inline(always)]
fn restart(fs: *mut FlowState, p: &Parsed, t: u64) {
    unsafe {
        zero(fs);
        (*fs).conn = t;
        (*fs).last_ns = t;
        (*fs).isn = if p.tcp_flags & TCP_SYN != 0 { p.sig } else { 0 };
    }
}

/// A new connection is not traced, only counted with its packets, when
/// userspace is behind (the ring buffer more than three quarters full) or
/// when more new connections come than the configured rate. A traced
/// connection costs the node two dozen events; under a flood of new ones
/// the flows traced stay whole (not traced into a loss) and the node pays
/// one lookup for each of the rest.
/// Returns whether it is traced.
#[inline(never)]
fn shed_if_over(fs: *mut FlowState) -> bool {
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let why = if pending > EVENTS.query(BPF_RB_RING_SIZE as u64) / 4 * 3 {
        STAT_SHED
    } else if !take_token() {
        STAT_OVER_RATE
    } else {
        return true;
    };
    unsafe {
        (*fs).spent = 1 << DIR_REQUEST | 1 << DIR_REPLY;
        // No untraced-drop events either: the flow was never reported.
        (*fs).drop_events = u16::MAX;
    }
    stat_inc(why);
    false
}

/// Takes one new connection's token from this CPU's bucket, if it has one.
/// Counted in 1/HZ tokens: each jiffy adds `new_flows_per_sec`, a
/// connection takes HZ, and the bucket holds `new_flows_burst` connections
/// (full at the start: the first gap counts as long).
#[inline(always)]
fn take_token() -> bool {
    let Some(b) = BUCKET.get_ptr_mut(0) else {
        return true;
    };
    let (rate, hz) = (conf!(new_flows_per_sec) as u64, conf!(hz) as u64);
    let cap = conf!(new_flows_burst) as u64 * hz;
    let now = jiffies();
    unsafe {
        // Longer gaps than a full refill need not be multiplied out.
        let elapsed = now
            .wrapping_sub((*b).jiffies)
            .min(conf!(refill_jiffies) as u64);
        (*b).jiffies = now;
        let units = ((*b).units + elapsed * rate).min(cap);
        if units < hz {
            (*b).units = units;
            return false;
        }
        (*b).units = units - hz;
    }
    true
}

/// The current connection of the flow tuple in `p`, created (or started
/// over) by this request packet (`skb`) when it opens one. `t`: the clock
/// read for the packet, or 0 when a TCP packet did not need it. None when
/// the packet is settled here: it opened a connection not traced, and was
/// counted for it.
#[inline(never)]
fn flow_for_request(skb: u64, p: &Parsed, t: u64) -> Option<*mut FlowState> {
    // A connection's identity is a time: read the clock if not done yet.
    let stamp = || if t != 0 { t } else { now() };
    if let Some(fs) = FLOWS.get_ptr_mut(&p.t) {
        if new_connection(fs, p, t) {
            debug!(&(), "new connection on the tuple from port {}", p.t.sport);
            restart(fs, p, stamp());
            shed_if_over(fs);
            stat_inc(STAT_FLOWS);
        }
        return Some(fs);
    }
    let mut fresh = MaybeUninit::<FlowState>::uninit();
    let fs = fresh.as_mut_ptr();
    restart(fs, p, stamp());
    stat_inc(STAT_FLOWS);
    let traced = shed_if_over(fs);
    if !traced {
        // The bulk of a flood: counted in the entry as it is made, not
        // looked up again.
        unsafe {
            (*fs).req_pkts = 1;
            (*fs).req_bytes = skb_len::<BTF>(skb) as u64;
        }
    }
    // SAFETY: restart wrote all of it.
    let _ = FLOWS.insert(&p.t, unsafe { fresh.assume_init_ref() }, 0);
    if traced {
        FLOWS.get_ptr_mut(&p.t)
    } else {
        None
    }
}

/// The flow's state if `conn` is still its current connection.
#[inline(always)]
pub fn current(flow: &Tuple, conn: u64) -> Option<*mut FlowState> {
    let fs = FLOWS.get_ptr_mut(flow)?;
    (unsafe { (*fs).conn } == conn).then_some(fs)
}

/// Outcome of [`start_track`].
pub const STARTED: u8 = 0;
/// The flow's budget for that direction is spent.
pub const SPENT: u8 = 1;
pub const NOT_STARTED: u8 = 2;

/// Starts tracing `skb` (headers in `s.p`) as the next packet of the
/// connection `fs` of `flow` in direction `dir`, if its budget for that
/// direction allows. The track is built in `s.tr`; `flow` may point into
/// `s.p` or a map, never into `s.tr`.
#[inline(never)]
fn start_track(skb: u64, fs: *mut FlowState, flow: *const Tuple, dir: u8, s: *mut Scratch) -> u8 {
    // SAFETY: all point to live map memory (scratch, flows); `flow` is only read.
    let (flow, s) = unsafe { (&*flow, &mut *s) };
    let budget = conf!(trace_packets) as u16;
    let seq = unsafe {
        let n = if dir == DIR_REQUEST {
            &mut (*fs).req_traced
        } else {
            &mut (*fs).rep_traced
        };
        if *n >= budget {
            (*fs).spent |= 1 << dir;
            debug!(
                &(),
                "flow from port {}: trace budget spent (dir {})", flow.sport, dir
            );
            return SPENT;
        }
        *n += 1;
        *n
    };
    let tr = &mut s.tr;
    // Zeroed first: separate zero stores would merge into a memset call.
    unsafe { zero(tr) };
    // SAFETY: `flow` is never in `s.tr` (above); a plain copy is inlined,
    // where an overlapping one is a byte-loop call.
    unsafe { core::ptr::copy_nonoverlapping(flow, &raw mut tr.flow, 1) };
    tr.conn = unsafe { (*fs).conn };
    tr.ts = jiffies();
    tr.head = skb_head::<PROBE>(skb);
    tr.sig = s.p.sig;
    tr.netns = conf!(node_netns);
    tr.seq = seq;
    tr.dir = dir;
    tr.last_hook = NO_HOOK;
    if TRACKED.insert(&skb, &s.tr, 0).is_err() {
        return NOT_STARTED;
    }
    if let Some(n) = IN_FLIGHT.get_ptr_mut(0) {
        add(n, 1);
    }
    stat_inc(STAT_TRACKED);
    touch_window();
    debug!(
        &(),
        "traced packet {} of the flow from port {} (dir {})", seq, flow.sport, dir
    );
    STARTED
}

/// First sight of a packet to the LB IP (headers in `s.p`) in the node's
/// namespace: count it for its connection, and trace it if the budget
/// allows. Past the budget this is the one lookup a packet costs. SPENT
/// also for a packet not wanted (port, protocol): nothing follows it.
#[inline(never)]
pub fn request_seen(skb: u64, s: &mut Scratch) -> u8 {
    if !wanted(&s.p.t) {
        return SPENT;
    }
    // TCP tells its connections apart by their SYNs; other protocols by
    // idle time, which takes the clock.
    let t = if s.p.t.proto == IPPROTO_TCP { 0 } else { now() };
    let Some(fs) = flow_for_request(skb, &s.p, t) else {
        return SPENT;
    };
    unsafe {
        add(&raw mut (*fs).req_pkts, 1);
        add(&raw mut (*fs).req_bytes, skb_len::<BTF>(skb) as u64);
        if t != 0 {
            (*fs).last_ns = t;
        }
        if (*fs).spent & (1 << DIR_REQUEST) != 0 {
            // The bulk of a connection: counted, nothing more.
            return SPENT;
        }
    }
    start_track(skb, fs, &raw const s.p.t, DIR_REQUEST, s)
}

/// A packet arriving on the node (headers in `s.p`) that carries the tuple
/// of an expected reply of a connection still current.
#[inline(never)]
pub fn reply_seen(skb: u64, s: &mut Scratch) -> u8 {
    let Some(r) = REPLIES.get_ptr_mut(&s.p.t) else {
        return NOT_STARTED;
    };
    if unsafe { (*r).spent } != 0 {
        return SPENT;
    }
    let flow = unsafe { &(*r).flow };
    let Some(fs) = current(flow, unsafe { (*r).conn }) else {
        return NOT_STARTED;
    };
    let outcome = start_track(skb, fs, flow, DIR_REPLY, s);
    if outcome == SPENT {
        // A new connection on the tuple writes a new entry (expect_reply).
        unsafe { (*r).spent = 1 };
    }
    outcome
}

/// Marks `skb` as decided, not traced (see [`PASSED`]): `done` when
/// transmit has nothing left to do for it (a request, an answer counted),
/// else it is an answer to count when it leaves.
#[inline(always)]
pub fn pass(skb: u64, done: bool, parsed: &Parsed) {
    if let Some(p) = PASSED.get_ptr_mut(0) {
        unsafe {
            (*p).skb = skb;
            (*p).done = done as u64;
            (*p).sig = parsed.sig;
            (*p).sum = tuple_sum(&parsed.t);
        }
    }
}

/// Takes `skb` off [`PASSED`], saying whether it was there: it arrives
/// again, or a new packet took its address.
#[inline(always)]
pub fn take_passed(skb: u64) -> bool {
    let Some(p) = PASSED.get_ptr_mut(0) else {
        return false;
    };
    unsafe {
        if (*p).skb != skb {
            return false;
        }
        (*p).skb = 0;
    }
    true
}

/// Is the packet in `parsed` the one last passed on this CPU (same
/// signature and tuple)? Asked after [`take_passed`] found its address.
#[inline(always)]
pub fn same_as_passed(parsed: &Parsed) -> bool {
    PASSED
        .get(0)
        .is_some_and(|p| p.sig == parsed.sig && p.sum == tuple_sum(&parsed.t))
}

/// Was `skb` decided at its first hook on this CPU?
#[inline(always)]
pub fn passed(skb: u64) -> bool {
    PASSED.get(0).is_some_and(|p| p.skb == skb)
}

/// Was `skb` passed with nothing left for transmit?
#[inline(always)]
pub fn passed_done(skb: u64) -> bool {
    PASSED.get(0).is_some_and(|p| p.skb == skb && p.done != 0)
}

/// `skb` is no longer the packet passed (freed, delivered, or a new packet
/// at that address).
#[inline(always)]
pub fn unpass(skb: u64) {
    take_passed(skb);
}

/// The traced flow a conntrack entry belongs to, with the direction of the
/// packet carrying it; None for RELATED packets (ICMP errors about the flow,
/// not its packets), directions whose budget is spent, and entries whose
/// `struct nf_conn` was freed and reused for another connection since.
#[inline(always)]
pub fn ct_flow(nfct: u64) -> Option<(*mut FlowRef, u8)> {
    let ct = nfct & !7;
    if ct == 0 {
        return None;
    }
    let ctinfo = nfct & 7;
    if ctinfo_is_related(ctinfo) {
        return None;
    }
    // enum ip_conntrack_info: IS_REPLY = 3 and up are the reply direction.
    let dir = if ctinfo >= 3 { DIR_REPLY } else { DIR_REQUEST };
    let cf = CT_FLOWS.get_ptr_mut(&ct)?;
    if unsafe { (*cf).spent } & (1 << dir) != 0 || !same_conntrack(ct, cf) {
        return None;
    }
    Some((cf, dir))
}

/// Is the entry at `ct` still the one recorded for `cf`? Its original
/// direction is the flow's first tuple: compare the client's port and
/// address (IPv4 part; enough to tell a reused `nf_conn` apart).
#[inline(never)]
pub fn same_conntrack(ct: u64, cf: *const FlowRef) -> bool {
    let t = ct + off!(ct_tuple_orig);
    let sport = u16::from_be(rd::<u16>(t + off!(tuple_src_u)).unwrap_or(0));
    let saddr = rd::<[u8; 4]>(t + off!(tuple_src_u3)).unwrap_or([0; 4]);
    let flow = unsafe { &(*cf).flow };
    sport == flow.sport && saddr == [flow.saddr[0], flow.saddr[1], flow.saddr[2], flow.saddr[3]]
}

/// A packet (headers in `s.p`) whose conntrack entry belongs to a traced
/// flow (a reply first seen at netfilter, or a packet the kernel copied):
/// trace it if its connection is current and the budget allows.
#[inline(never)]
pub fn ct_seen(skb: u64, cf: *mut FlowRef, dir: u8, s: &mut Scratch) -> bool {
    let flow = unsafe { &(*cf).flow };
    let Some(fs) = current(flow, unsafe { (*cf).conn }) else {
        return false;
    };
    match start_track(skb, fs, flow, dir, s) {
        STARTED => true,
        SPENT => {
            // From now on this direction costs one lookup per packet.
            unsafe { (*cf).spent |= 1 << dir };
            false
        }
        _ => false,
    }
}

/// Counts a dropped packet of connection `conn` of `flow`.
#[inline(never)]
pub fn count_drop(flow: &Tuple, conn: u64) {
    if let Some(fs) = current(flow, conn) {
        add(unsafe { &raw mut (*fs).drops }, 1);
    }
}

/// No traced packet is on its way (see `IN_FLIGHT`): nothing to look up.
#[inline(always)]
pub fn none_in_flight() -> bool {
    IN_FLIGHT.get(0).is_some_and(|n| *n == 0)
}

#[inline(always)]
pub fn tracked(skb: u64) -> Option<*mut Track> {
    if none_in_flight() {
        return None;
    }
    TRACKED.get_ptr_mut(&skb)
}

#[inline(always)]
pub fn untrack(skb: u64) {
    // Only an entry removed here was counted in: never below the truth.
    if TRACKED.remove(&skb).is_ok()
        && let Some(n) = IN_FLIGHT.get_ptr_mut(0)
    {
        add(n, u64::MAX);
    }
}

/// A tracked packet older than this is a leftover of a free we did not see.
const MAX_TRACK_AGE_SECS: u64 = 10;

/// Is `tr` still about this very packet? Drops the entry when not. The
/// kernel recycles an skb together with its data buffer, so neither the
/// address nor `head` alone tells packets apart: when the packet parsed
/// (`p.ok`) its signature must match too; `head` alone only decides for
/// packets we cannot parse.
#[inline(never)]
fn verify(skb: u64, tr: *mut Track, p: &Parsed) -> bool {
    let head = skb_head::<PROBE>(skb);
    unsafe {
        if jiffies().wrapping_sub((*tr).ts) < MAX_TRACK_AGE_SECS * conf!(hz) as u64 {
            if p.ok != 0 {
                if p.sig == (*tr).sig {
                    // Same packet, perhaps in a new buffer (pskb_expand_head).
                    (*tr).head = head;
                    return true;
                }
            } else if head == (*tr).head {
                return true;
            }
        }
    }
    debug!(
        &(),
        "stale track of the flow from port {} dropped (reused skb)",
        unsafe { (*tr).flow.sport }
    );
    untrack(skb);
    false
}

/// The preamble of every hook for a packet found in TRACKED: parse its
/// headers at `l3` into `s.p` and check the entry is still about it.
#[inline(always)]
pub fn again(skb: u64, tr: *mut Track, l3: u64, proto: u16, s: &mut Scratch) -> bool {
    parse_ip(l3, proto, &mut s.p);
    verify(skb, tr, &s.p)
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

/// Another packet arriving on this CPU: the routing of the one remembered
/// (see [`set_current`]) is over, and lookups from now on are not its own
/// (the same addresses may be routed at once for other connections, or in
/// another namespace).
#[inline(always)]
pub fn end_current_unless(skb: u64) {
    if let Some(c) = CURRENT.get_ptr_mut(0) {
        unsafe {
            if (*c).skb != 0 && (*c).skb != skb {
                (*c).skb = 0;
            }
        }
    }
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
    let mut m = MaybeUninit::uninit();
    let _ = REPLIES.insert(&rev, flow_ref(tr, &mut m), 0);
}

/// `tr`'s flow and connection, as REPLIES and CT_FLOWS keep them: built in
/// `m`, zeroed first (nothing spent, padding clean).
#[inline(always)]
fn flow_ref(tr: *const Track, m: &mut MaybeUninit<FlowRef>) -> &mut FlowRef {
    // SAFETY: plain data; `tr` points to live map memory.
    unsafe {
        let r = zeroed_in(m);
        r.flow = (*tr).flow;
        r.conn = (*tr).conn;
        r
    }
}

/// Records the packet's conntrack entry as belonging to its flow, once.
#[inline(never)]
pub fn remember_ct(tr: *mut Track, nfct: u64) {
    let ct = nfct & !7;
    if ct == 0 || unsafe { (*tr).flags } & T_CT_SEEN != 0 {
        return;
    }
    let mut m = MaybeUninit::uninit();
    let _ = CT_FLOWS.insert(&ct, flow_ref(tr, &mut m), 0);
    unsafe { (*tr).flags |= T_CT_SEEN };
}

/// Marks the packet as sent towards a pod: it is followed into the pod.
#[inline(always)]
pub fn follow_into_pod(tr: *mut Track) {
    unsafe { (*tr).flags |= T_FOLLOW };
}
