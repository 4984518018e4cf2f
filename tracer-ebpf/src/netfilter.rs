//! BPF netfilter programs (BPF_PROG_TYPE_NETFILTER, kernel 6.4+).
//!
//! Userspace attaches program `lbp_nf_<i>` at every IPv4/IPv6 hook at the i-th
//! chosen priority, placed between the priorities of the node's own chains and
//! the built-in ones (conntrack -200, mangle -150, DNAT -100, filter 0, SNAT
//! 100 ...). A packet seen at point i and never at point i+1 was stopped by
//! what runs between them; a tuple that differs between two points was
//! rewritten there (DNAT, SNAT). To keep the ring buffer quiet, a point only
//! reports the hook's first and last point and changes (NAT, conntrack
//! state); every point records where the packet was last seen, for drops.
//!
//! aya has no netfilter program type: these sit in "classifier" sections so
//! aya parses the object, and `tracer/src/loader/netfilter.rs` loads them.
//! They always return NF_ACCEPT.

use core::ffi::c_void;

use tracer_common::{Kind, NF_INET_LOCAL_OUT, NF_INET_PRE_ROUTING};

use crate::{
    maps::{NF_SEEN, T_CT_SEEN, conf, off},
    skb::*,
};

const NF_ACCEPT: i32 = 1;

macro_rules! nf_point {
    ($name:ident, $section:literal, $pos:literal) => {
        #[unsafe(no_mangle)]
        #[unsafe(link_section = $section)]
        pub fn $name(ctx: *mut c_void) -> i32 {
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
    let now = jiffies();
    let open = window_open(now);
    // Window closed: only OUTPUT's first point has work (clients on the node).
    if !open && pos != 0 {
        return;
    }
    let hook = rd::<u8>(state + off!(state_hook)).unwrap_or(0xff);
    if !open && hook != NF_INET_LOCAL_OUT {
        return;
    }
    let mut p = Parsed::default();
    let proto = skb_protocol(skb);
    let l3 = skb_network(skb);

    let mut parsed = false;
    let mut tr = None;
    let nfct_now = if open { skb_nfct(skb) } else { 0 };
    if open && let Some(seen) = NF_SEEN.get_ptr_mut(0) {
        // Already found untraced at an earlier point, nothing changed since.
        if unsafe { (*seen).skb == skb && (*seen).nfct == nfct_now } {
            return;
        }
    }
    if open && let Some(t) = tracked(skb) {
        parsed = parse_ip(l3, proto, &mut p);
        let pp = if parsed {
            &p as *const Parsed
        } else {
            core::ptr::null()
        };
        if verify(skb, t, pp) {
            tr = Some(t);
        }
    }
    if tr.is_none() {
        // Locally generated requests (a client on the node itself) are first
        // seen here; replies and copies are recognised by their conntrack entry.
        let first = if hook == NF_INET_LOCAL_OUT && pos == 0 {
            match peek_daddr(l3, proto) {
                Some(d) if is_lb(&d) => {
                    parsed = parse_ip(l3, proto, &mut p);
                    parsed && request_seen(skb, &p)
                }
                _ => false,
            }
        } else if open {
            // One probe read and one lookup; parse only for a flow still being traced.
            match ct_flow(nfct_now) {
                Some((cf, dir)) => {
                    parsed = parse_ip(l3, proto, &mut p);
                    parsed && ct_seen(skb, cf, dir, &p)
                }
                None => false,
            }
        } else {
            false
        };
        if !first {
            if open && let Some(seen) = NF_SEEN.get_ptr_mut(0) {
                unsafe {
                    (*seen).skb = skb;
                    (*seen).nfct = nfct_now;
                }
            }
            return;
        }
        tr = tracked(skb);
    }
    let Some(tr) = tr else {
        return;
    };

    let nfct = skb_nfct(skb);
    let ct = if nfct != 0 { (nfct & 7) as u8 + 1 } else { 0 };
    let sum = if parsed { tuple_sum(&p.t) } else { 0 };
    unsafe { (*tr).netns = conf!(node_netns) };
    let last = conf!(nf_last_pos);
    let last = if (hook as usize) < last.len() {
        last[hook as usize]
    } else {
        0xff
    };
    let report = unsafe {
        let report = pos == 0
            || pos == last
            || (*tr).last_hook != hook
            || sum != (*tr).last_sum
            || ct != (*tr).last_ct;
        (*tr).last_hook = hook;
        (*tr).last_pos = pos;
        (*tr).last_sum = sum;
        (*tr).last_ct = ct;
        if nfct & !7 != 0 && (*tr).flags & T_CT_SEEN == 0 {
            remember_ct(tr, nfct);
            (*tr).flags |= T_CT_SEEN;
        }
        report
    };
    if parsed && (hook == NF_INET_PRE_ROUTING || hook == NF_INET_LOCAL_OUT) {
        // The routing decision comes next on this CPU.
        set_current(skb, &p.t, now);
    }
    if !report {
        return;
    }
    let dev_in = rd::<u64>(state + off!(state_in)).unwrap_or(0);
    let dev_out = rd::<u64>(state + off!(state_out)).unwrap_or(0);
    let x = Extra {
        dev: if dev_out != 0 { dev_out } else { dev_in },
        nfct,
        dev_in,
        dev_out,
        hook,
        pos,
        ..Extra::default()
    };
    let pp = if parsed {
        &p as *const Parsed
    } else {
        core::ptr::null()
    };
    emit(Kind::Nf as u8, skb, tr, pp, &x);
}
