//! Reading the kernel: `struct sk_buff`, `struct net_device` and conntrack
//! fields at the offsets userspace resolved from the running kernel's BTF,
//! clocks and counters. Nothing here keeps state.

use aya_ebpf::helpers::{
    bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
};
use tracer_common::{AF_INET, IFNAMSIZ, Tuple};

use crate::{
    maps::{STATS, off},
    mem::zero,
};

#[inline(always)]
pub fn rd<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// Reads `out.len()` bytes at `addr` straight into `out` (ring-buffer or
/// scratch memory): nothing lands on the BPF stack.
#[inline(always)]
pub fn rd_into(addr: u64, out: &mut [u8]) -> bool {
    unsafe { bpf_probe_read_kernel_buf(addr as *const u8, out).is_ok() }
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

// ---- how a field is read -------------------------------------------------

/// A plain load, for the pointers a hook is handed (tracepoint arguments,
/// the netfilter context) and the struct pointers read through them: the
/// verifier knows their BTF type, checks the offset (a frozen constant)
/// against it and makes the load fault-safe. Several times cheaper than a
/// helper call, so the per-packet paths read this way.
pub const BTF: bool = true;
/// `bpf_probe_read_kernel`, for addresses the verifier sees as numbers:
/// those kept in maps or scratch memory, and anything derived from them.
pub const PROBE: bool = false;

/// Reads a `T` at `base + off`; `base` 0 reads as `None`.
#[inline(always)]
pub fn field<T: Copy, const B: bool>(base: u64, off: u64) -> Option<T> {
    if base == 0 {
        return None;
    }
    if B {
        // SAFETY: a BTF pointer checked by the verifier (see BTF).
        Some(unsafe { core::ptr::read_volatile((base + off) as *const T) })
    } else {
        rd::<T>(base + off)
    }
}

// ---- struct sk_buff -------------------------------------------------------

#[inline(always)]
pub fn skb_dev<const B: bool>(skb: u64) -> u64 {
    field::<u64, B>(skb, off!(skb_dev)).unwrap_or(0)
}

#[inline(always)]
pub fn skb_len<const B: bool>(skb: u64) -> u32 {
    field::<u32, B>(skb, off!(skb_len)).unwrap_or(0)
}

/// `skb->protocol`, host order.
#[inline(always)]
pub fn skb_protocol<const B: bool>(skb: u64) -> u16 {
    u16::from_be(field::<u16, B>(skb, off!(skb_protocol)).unwrap_or(0))
}

#[inline(always)]
pub fn skb_head<const B: bool>(skb: u64) -> u64 {
    field::<u64, B>(skb, off!(skb_head)).unwrap_or(0)
}

/// `skb->data`: the network header on receive (the MAC header is pulled),
/// the MAC header on transmit.
#[inline(always)]
pub fn skb_data<const B: bool>(skb: u64) -> u64 {
    field::<u64, B>(skb, off!(skb_data)).unwrap_or(0)
}

/// `head + offset` for one of the skb's u16 header offsets (0xffff: unset).
#[inline(always)]
fn skb_header<const B: bool>(skb: u64, field_off: u64) -> u64 {
    let h = field::<u16, B>(skb, field_off).unwrap_or(0xffff);
    if h == 0xffff {
        return 0;
    }
    skb_head::<B>(skb) + h as u64
}

/// Start of the network header once the stack has set it (netfilter,
/// transmit, free).
#[inline(always)]
pub fn skb_network<const B: bool>(skb: u64) -> u64 {
    skb_header::<B>(skb, off!(skb_network_header))
}

#[inline(always)]
pub fn skb_mac(skb: u64) -> u64 {
    skb_header::<PROBE>(skb, off!(skb_mac_header))
}

/// `skb->_nfct`: conntrack entry pointer with ctinfo in the low 3 bits.
#[inline(always)]
pub fn skb_nfct<const B: bool>(skb: u64) -> u64 {
    field::<u64, B>(skb, off!(skb_nfct)).unwrap_or(0)
}

// ---- struct net_device ------------------------------------------------------

/// Inode number of the device's network namespace (0: no device).
#[inline(always)]
pub fn dev_netns<const B: bool>(dev: u64) -> u32 {
    let Some(net) = field::<u64, B>(dev, off!(dev_nd_net)) else {
        return 0;
    };
    field::<u32, B>(net, off!(net_inum)).unwrap_or(0)
}

#[inline(always)]
pub fn dev_ifindex(dev: u64) -> u32 {
    field::<u32, PROBE>(dev, off!(dev_ifindex)).unwrap_or(0)
}

#[inline(always)]
pub fn dev_name(dev: u64, out: &mut [u8; IFNAMSIZ]) {
    if dev != 0 {
        rd_into(dev + off!(dev_name), out);
    }
}

#[inline(always)]
pub fn dev_mtu(dev: u64) -> u32 {
    field::<u32, PROBE>(dev, off!(dev_mtu)).unwrap_or(0)
}

// ---- conntrack ----------------------------------------------------------------

/// `enum ip_conntrack_info` values that are not packets of the connection
/// itself: RELATED (1), RELATED_REPLY (4), UNTRACKED (7).
#[inline(always)]
pub fn ctinfo_is_related(ctinfo: u64) -> bool {
    ctinfo == 1 || ctinfo == 4 || ctinfo == 7
}

/// Conntrack tuple at kernel address `t` (a `struct nf_conntrack_tuple`),
/// read into `out` where it lies (ring-buffer memory).
#[inline(always)]
pub fn ct_tuple(t: u64, family: u8, out: &mut Tuple) {
    out.family = family;
    rd_into(t + off!(tuple_src_u3), &mut out.saddr);
    rd_into(t + off!(tuple_dst_u3), &mut out.daddr);
    if family == AF_INET {
        // union nf_inet_addr: only the first 4 bytes are IPv4.
        // SAFETY: 12 bytes of each address (memset-free, see `mem`).
        unsafe {
            zero(out.saddr[4..].as_mut_ptr().cast::<[u8; 12]>());
            zero(out.daddr[4..].as_mut_ptr().cast::<[u8; 12]>());
        }
    }
    out.sport = u16::from_be(rd::<u16>(t + off!(tuple_src_u)).unwrap_or(0));
    out.dport = u16::from_be(rd::<u16>(t + off!(tuple_dst_u)).unwrap_or(0));
    out.proto = rd::<u8>(t + off!(tuple_dst_protonum)).unwrap_or(0);
}
