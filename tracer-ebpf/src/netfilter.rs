//! BPF netfilter programs (BPF_PROG_TYPE_NETFILTER, kernel 6.4+).
//!
//! Userspace attaches program `lbp_nf_<i>` at every IPv4/IPv6 hook at the i-th
//! chosen priority, placed between the priorities of the node's own chains and
//! the built-in ones (conntrack -200, mangle -150, DNAT -100, filter 0, SNAT
//! 100 ...). A packet seen at point i and never at point i+1 was stopped by
//! what runs between them; a tuple that differs between two points was
//! rewritten there (DNAT, SNAT). To keep the ring buffer quiet, a point only
//! reports the hook's first point, changes (NAT, conntrack state), and the
//! last point of PREROUTING and OUTPUT (conntrack attached no entry: INVALID)
//! and INPUT (the node's own stack has the packet); every point records
//! where the packet was last seen, for drops. FORWARD's and POSTROUTING's
//! last points are implied by what follows: the next hook, the transmit, or
//! a drop that names the point it was last seen at.
//!
//! aya has no netfilter program type: these sit in "classifier" sections so
//! aya parses the object, and `tracer/src/loader/netfilter.rs` loads them.
//! They always return NF_ACCEPT.

use core::ffi::c_void;

use tracer_common::{Kind, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT, NF_INET_PRE_ROUTING};

use crate::{
    emit::emit,
    kernel::*,
    maps::{FlowRef, NF_SEEN, Track, conf, empty, off},
    parse::*,
    scratch::{Frame, Scratch},
    track::*,
};

const NF_ACCEPT: i32 = 1;

macro_rules! nf_point {
    ($name:ident, $section:literal, $pos:literal) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = $section)]
        pub fn $name(ctx: *mut c_void) -> i32 {
            if empty() {
                return NF_ACCEPT;
            }
            on_hook(ctx, $pos);
            NF_ACCEPT
        }
    };
}

nf_point!(lbp_nf_0, "classifier/lbp_nf_0", 0);
nf_point!(lbp_nf_1, "classifier/lbp_nf_1", 1);
nf_point!(lbp_nf_2, "classifier/lbp_nf_2", 2);
nf_point!(lbp_nf_3, "classifier/lbp_nf_3", 3);
nf_point!(lbp_nf_4, "classifier/lbp_nf_4", 4);
nf_point!(lbp_nf_5, "classifier/lbp_nf_5", 5);
nf_point!(lbp_nf_6, "classifier/lbp_nf_6", 6);
nf_point!(lbp_nf_7, "classifier/lbp_nf_7", 7);
nf_point!(lbp_nf_8, "classifier/lbp_nf_8", 8);
nf_point!(lbp_nf_9, "classifier/lbp_nf_9", 9);
nf_point!(lbp_nf_10, "classifier/lbp_nf_10", 10);
nf_point!(lbp_nf_11, "classifier/lbp_nf_11", 11);

#[inline(always)]
fn on_hook(ctx: *mut c_void, pos: u8) {
    // struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff *skb; }
    let state = unsafe { *(ctx as *const u64) };
    let skb = unsafe { *(ctx as *const u64).add(1) };
    let hook = field::<u8, BTF>(state, off!(state_hook)).unwrap_or(0xff);
    if passed(skb) {
        // Decided at its first hook. Delivered here, it is freed without a
        // tracepoint; and a packet the node sends is not the one passed
        // (its address reused), so it goes on.
        if hook == NF_INET_LOCAL_IN {
            unpass(skb);
        }
        if hook != NF_INET_LOCAL_OUT {
            return;
        }
        unpass(skb);
    }
    let open = window_open(jiffies());
    // Window closed: only OUTPUT's first point has work (clients on the node).
    if !open && (pos != 0 || hook != NF_INET_LOCAL_OUT) {
        return;
    }
    let l3 = skb_network::<BTF>(skb);
    let at = Point {
        skb,
        dev_in: field::<u64, BTF>(state, off!(state_in)).unwrap_or(0),
        dev_out: field::<u64, BTF>(state, off!(state_out)).unwrap_or(0),
        hook,
        pos,
    };
    // Each case calls its own function instead of setting a flag the cases
    // share afterwards: the 6.1 verifier can prune a path chosen by such a
    // flag as dead code.
    if open {
        let nfct = skb_nfct::<BTF>(skb);
        if let Some(seen) = NF_SEEN.get_ptr(0)
            && unsafe { (*seen).skb == skb && (*seen).nfct == nfct }
        {
            // Already found untraced at an earlier point, nothing changed since.
            return;
        }
        if let Some(tr) = tracked(skb)
            && again_at(&at, tr, l3)
        {
            return;
        }
        // Replies and packets the kernel copied: by their conntrack entry.
        if let Some((cf, dir)) = ct_flow(nfct) {
            if !by_conntrack(&at, l3, cf, dir) {
                remember_untraced(skb, nfct);
            }
            return;
        }
        if hook != NF_INET_LOCAL_OUT || pos != 0 {
            remember_untraced(skb, nfct);
            return;
        }
    }
    // A request sent by a process on the node itself is first seen here.
    let proto = skb_protocol::<BTF>(skb);
    if matches!(peek_daddr(l3, proto), Some(d) if is_lb(&d, family_of(proto))) {
        local_request(&at, l3);
    }
}

/// Where a program runs: the packet, the hook's devices (read here, where
/// the hook's state is a typed pointer: plain loads), hook and point.
struct Point {
    skb: u64,
    dev_in: u64,
    dev_out: u64,
    hook: u8,
    pos: u8,
}

/// A packet already traced reaches this point: report it. False when the
/// entry turned out stale (the skb address was reused).
#[inline(never)]
fn again_at(at: &Point, tr: *mut Track, l3: u64) -> bool {
    let Some(f) = Frame::enter() else {
        return true;
    };
    let s = f.get();
    if !again(at.skb, tr, l3, skb_protocol::<PROBE>(at.skb), s) {
        return false;
    }
    observe(at, tr, s);
    true
}

/// A packet whose conntrack entry belongs to a traced flow.
#[inline(never)]
fn by_conntrack(at: &Point, l3: u64, cf: *mut FlowRef, dir: u8) -> bool {
    let Some(f) = Frame::enter() else {
        return true;
    };
    let s = f.get();
    if !parse_ip(l3, skb_protocol::<PROBE>(at.skb), &mut s.p) || !ct_seen(at.skb, cf, dir, s) {
        return false;
    }
    aya_log_ebpf::debug!(
        &(),
        "packet of a traced flow found by its conntrack entry at hook {} point {} (dir {})",
        at.hook,
        at.pos,
        dir
    );
    if let Some(tr) = tracked(at.skb) {
        observe(at, tr, s);
    }
    true
}

/// A request to the LB IP sent from the node itself.
#[inline(never)]
fn local_request(at: &Point, l3: u64) {
    let Some(f) = Frame::enter() else {
        return;
    };
    let s = f.get();
    if parse_ip(l3, skb_protocol::<PROBE>(at.skb), &mut s.p)
        && request_seen(at.skb, s) == STARTED
        && let Some(tr) = tracked(at.skb)
    {
        observe(at, tr, s);
    }
}

/// A traced packet (headers in `s.p`) at this point: note where it was
/// last seen, and report the hook's first point, changes (NAT, conntrack
/// state) and the last points that tell something.
#[inline(never)]
fn observe(at: &Point, tr: *mut Track, s: &mut Scratch) {
    let (skb, hook, pos) = (at.skb, at.hook, at.pos);
    let nfct = skb_nfct::<PROBE>(skb);
    let ct = if nfct != 0 { (nfct & 7) as u8 + 1 } else { 0 };
    let parsed = s.p.ok != 0;
    let sum = if parsed { tuple_sum(&s.p.t) } else { 0 };
    // The last points that tell something: past PREROUTING's and OUTPUT's,
    // conntrack has attached its entry or none (INVALID); past INPUT's, the
    // node's own stack has the packet.
    let last = conf!(nf_last_pos);
    let at_told_last = match hook {
        NF_INET_PRE_ROUTING | NF_INET_LOCAL_IN | NF_INET_LOCAL_OUT => pos == last[hook as usize],
        _ => false,
    };
    let report = unsafe {
        (*tr).netns = conf!(node_netns);
        let report = pos == 0
            || at_told_last
            || (*tr).last_hook != hook
            || sum != (*tr).last_sum
            || ct != (*tr).last_ct;
        (*tr).last_hook = hook;
        (*tr).last_pos = pos;
        (*tr).last_sum = sum;
        (*tr).last_ct = ct;
        report
    };
    remember_ct(tr, nfct);
    if parsed && (hook == NF_INET_PRE_ROUTING || hook == NF_INET_LOCAL_OUT) {
        // The routing decision comes next on this CPU.
        set_current(skb, &s.p.t, jiffies());
    }
    if !report {
        return;
    }
    let (dev_in, dev_out) = (at.dev_in, at.dev_out);
    s.x.reset(if dev_out != 0 { dev_out } else { dev_in });
    s.x.nfct = nfct;
    s.x.dev_in = dev_in;
    s.x.dev_out = dev_out;
    s.x.hook = hook;
    s.x.pos = pos;
    emit(Kind::Nf as u8, skb, tr, s);
}

/// The next points of this hook skip a packet found untraced here, as long
/// as its conntrack word does not change.
#[inline(always)]
fn remember_untraced(skb: u64, nfct: u64) {
    if let Some(seen) = NF_SEEN.get_ptr_mut(0) {
        unsafe {
            (*seen).skb = skb;
            (*seen).nfct = nfct;
        }
    }
}
