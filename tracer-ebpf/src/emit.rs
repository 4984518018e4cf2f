//! Events for userspace: one function writes every path event straight into
//! ring-buffer memory (nothing big on the BPF stack); a full ring buffer is
//! counted, never silent.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_probe_read_kernel as gen_read,
};
use aya_log_ebpf::debug;
use tracer_common::{
    AF_INET, CAP_BYTES, CAP_ETHERNET, CAP_NONE, CAP_RAW_IP, CFG_CAPTURE, Capture, EV_POD_NS, Event,
    EventCap, Kind, NO_HOOK, STAT_LOST_EVENTS,
};

use crate::{
    kernel::*,
    maps::{EVENTS, Track, WOKE, conf, off},
    mem::zero,
    parse::v4,
    scratch::Scratch,
};

/// What an event adds to the packet and its tracking state.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Extra {
    /// Device the event happened on (0: none).
    pub dev: u64,
    /// Drop / Consume: freeing function.
    pub location: u64,
    /// Netfilter: `skb->_nfct`, and the hook's devices.
    pub nfct: u64,
    pub dev_in: u64,
    pub dev_out: u64,
    /// Fib: the looked-up `struct flowi4` and the resulting `struct fib_nh_common`.
    pub fl: u64,
    pub nhc: u64,
    /// Drop: `enum skb_drop_reason`; Reset: `enum sk_rst_reason`.
    pub reason: u32,
    pub fib_table: u32,
    pub fib_err: i32,
    pub hook: u8,
    pub pos: u8,
    pub flags: u8,
    pub _pad: u8,
}

impl Extra {
    /// Only the device; everything else empty.
    #[inline(always)]
    pub fn reset(&mut self, dev: u64) {
        unsafe { zero(self) };
        self.dev = dev;
        self.hook = NO_HOOK;
    }
}

/// Emits one event of `kind` for traced packet `skb` (tracking state `tr`),
/// with the packet's headers and details from `s`; with [`CFG_CAPTURE`]
/// (`watch --write`) the record also carries the packet's first bytes.
/// The flag is frozen configuration: the verifier walks one branch only.
/// Arrivals and transmits take their namespace from `tr`, which their
/// program has just set to the device's.
#[inline(never)]
pub fn emit(kind: u8, skb: u64, tr: *const Track, s: &Scratch) {
    if conf!(flags) & CFG_CAPTURE != 0 {
        let Some(mut e) = EVENTS.reserve::<EventCap>(0) else {
            lost(kind);
            return;
        };
        let p = e.as_mut_ptr();
        unsafe {
            fill(&mut (*p).ev, kind, skb, tr, s);
            capture(&mut (*p).cap, kind, skb);
        }
        e.submit(wake());
        return;
    }
    let Some(mut e) = EVENTS.reserve::<Event>(0) else {
        lost(kind);
        return;
    };
    fill(unsafe { &mut *e.as_mut_ptr() }, kind, skb, tr, s);
    e.submit(wake());
}

/// Submit flags: wake the reader at most once a jiffy on each CPU. A
/// wakeup is an irq_work, a self-IPI (a VM exit under a hypervisor): paid
/// per record it cost a flood of traced flows more than the programs did.
/// Userspace drains the ring on a short timer as well, so a record left
/// without a wakeup waits for that, not for the next record.
#[inline(always)]
pub fn wake() -> u64 {
    let j = jiffies();
    match WOKE.get_ptr_mut(0) {
        Some(w) if unsafe { *w } == j => BPF_RB_NO_WAKEUP as u64,
        Some(w) => {
            unsafe { *w = j };
            BPF_RB_FORCE_WAKEUP as u64
        }
        None => 0,
    }
}

#[inline(always)]
fn lost(kind: u8) {
    stat_inc(STAT_LOST_EVENTS);
    debug!(&(), "ring buffer full: an event of kind {} lost", kind);
}

/// Writes the event into ring-buffer memory `ev`. Out of line: both record
/// shapes share one copy of it.
#[inline(never)]
fn fill(ev: &mut Event, kind: u8, skb: u64, tr: *const Track, s: &Scratch) {
    let x = &s.x;
    let dev = x.dev;
    let node = conf!(node_netns);
    unsafe { zero(ev) };
    ev.kind = kind;
    ev.ts = now();
    ev.skb = skb;
    unsafe {
        ev.dir = (*tr).dir;
        ev.seq = (*tr).seq;
        ev.flow = (*tr).flow;
        ev.conn = (*tr).conn;
    }
    ev.hook = x.hook;
    ev.pos = x.pos;
    ev.reason = x.reason;
    ev.location = x.location;
    ev.flags = x.flags;
    // Arrivals and transmits noted the device's namespace in the track
    // just before (read there with plain loads).
    ev.netns = if kind == Kind::Nf as u8 {
        node
    } else if kind == Kind::Arrive as u8
        || kind == Kind::Xmit as u8
        || (kind == Kind::Fib as u8 && dev == 0)
    {
        unsafe { (*tr).netns }
    } else {
        dev_netns::<PROBE>(dev)
    };
    if ev.netns != 0 && ev.netns != node {
        ev.flags |= EV_POD_NS;
    }
    if dev != 0 {
        ev.ifindex = dev_ifindex(dev);
        ev.mtu = dev_mtu(dev);
        dev_name(dev, &mut ev.ifname);
    }
    if kind == Kind::Fib as u8 {
        fib_detail(ev, x);
    } else {
        if s.p.ok != 0 {
            ev.pkt = s.p.t;
            ev.tcp_flags = s.p.tcp_flags;
        }
        ev.len = skb_len::<PROBE>(skb);
    }
    if kind == Kind::Arrive as u8 {
        let mac = skb_mac(skb);
        if mac != 0 {
            rd_into(mac + 6, &mut ev.mac_src);
        }
    }
    if kind == Kind::Nf as u8 {
        let nfct = x.nfct;
        ev.ct = if nfct != 0 { (nfct & 7) as u8 + 1 } else { 0 };
        // One of them is the event's device, read above.
        ev.in_ifindex = if x.dev_in == dev {
            ev.ifindex
        } else {
            dev_ifindex(x.dev_in)
        };
        ev.out_ifindex = if x.dev_out == dev {
            ev.ifindex
        } else {
            dev_ifindex(x.dev_out)
        };
        let ct = nfct & !7;
        if ct != 0 && (nfct & 7) != 7 {
            ct_tuple(ct + off!(ct_tuple_reply), ev.pkt.family, &mut ev.ct_reply);
            ev.ct_status = rd::<u32>(ct + off!(ct_status)).unwrap_or(0);
        }
    } else if kind != Kind::Fib as u8 {
        // The conntrack state is also where netfilter cannot be observed
        // (before 6.4): the packet carries it past the hooks.
        let nfct = skb_nfct::<PROBE>(skb);
        ev.ct = if nfct != 0 { (nfct & 7) as u8 + 1 } else { 0 };
    }
}

const ETH_HLEN: u64 = 14;

/// The packet's first bytes as this event sees it, straight into
/// ring-buffer memory: from the Ethernet header where the skb has one in
/// front of the IP header (arrival, transmit), else from the IP header
/// (netfilter, routing and frees see L3; devices without a MAC header).
/// Only the linear part is read: headers are there, payload may not be.
#[inline(always)]
fn capture(c: &mut Capture, kind: u8, skb: u64) {
    c.link = CAP_NONE;
    c._pad = 0;
    c.caplen = 0;
    c.origlen = 0;
    let data = skb_data::<PROBE>(skb);
    let (start, link) = if kind == Kind::Arrive as u8 {
        // On receive the MAC header is pulled: data is the IP header.
        let mac = skb_mac(skb);
        if mac != 0 && data.wrapping_sub(mac) == ETH_HLEN {
            (mac, CAP_ETHERNET)
        } else {
            (data, CAP_RAW_IP)
        }
    } else {
        // On transmit data is the MAC header, if the device has one.
        let l3 = skb_network::<PROBE>(skb);
        if kind == Kind::Xmit as u8 && l3.wrapping_sub(data) == ETH_HLEN {
            (data, CAP_ETHERNET)
        } else {
            (l3, CAP_RAW_IP)
        }
    };
    let len = skb_len::<PROBE>(skb) as u64;
    let data_len = rd::<u32>(skb + off!(skb_data_len)).unwrap_or(0) as u64;
    if start == 0 || data == 0 || data_len > len {
        return;
    }
    // Header offsets a stale or odd skb gives: nothing rather than garbage.
    if start < data && data - start > 64 {
        return;
    }
    let linear_end = data + (len - data_len);
    if start >= linear_end {
        return;
    }
    c.origlen = (data + len - start) as u32;
    let avail = linear_end - start;
    let n = if avail < CAP_BYTES as u64 {
        avail
    } else {
        CAP_BYTES as u64
    };
    // A size the verifier can bound by itself: 1..=CAP_BYTES.
    let n = ((n - 1) & (CAP_BYTES as u64 - 1)) + 1;
    let dst = c.data.as_mut_ptr() as *mut core::ffi::c_void;
    if unsafe { gen_read(dst, n as u32, start as *const core::ffi::c_void) } == 0 {
        c.caplen = n as u16;
        c.link = link;
    }
}

/// The routing lookup: the looked-up flow (in `pkt`) and its result.
#[inline(always)]
fn fib_detail(ev: &mut Event, x: &Extra) {
    let fl = x.fl;
    ev.pkt.family = AF_INET;
    ev.pkt.saddr = v4(rd::<[u8; 4]>(fl + off!(fl4_saddr)).unwrap_or([0; 4]));
    ev.pkt.daddr = v4(rd::<[u8; 4]>(fl + off!(fl4_daddr)).unwrap_or([0; 4]));
    ev.pkt.proto = rd::<u8>(fl + off!(fl4_proto)).unwrap_or(0);
    ev.fib.table = x.fib_table;
    ev.fib.err = x.fib_err;
    ev.fib.flow_iif = rd::<u32>(fl + off!(fl4_iif)).unwrap_or(0);
    ev.fib.flow_oif = rd::<u32>(fl + off!(fl4_oif)).unwrap_or(0);
    if x.dev != 0 && x.nhc != 0 {
        let fam = rd::<u8>(x.nhc + off!(nhc_gw_family)).unwrap_or(0);
        ev.fib.gw_family = fam;
        if fam == AF_INET {
            rd_into(x.nhc + off!(nhc_gw), &mut ev.fib.gw[..4]);
        } else if fam != 0 {
            rd_into(x.nhc + off!(nhc_gw), &mut ev.fib.gw);
        }
    }
}
