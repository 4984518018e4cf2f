//! Maps and the load-time configuration. Every map is bounded; the per-flow
//! ones are LRU so a flood of flows evicts old ones instead of failing.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{CFG_EMPTY, Config, FlowState, STAT_COUNT, Tuple};

use crate::scratch::{SCRATCH_SLOTS, Scratch};

/// Written by userspace before load (frozen, so the verifier sees constants).
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config {
    lb_addr: [0; 16],
    lb_family: 0,
    proto: 0,
    port: 0,
    node_netns: 0,
    trace_packets: 0,
    drop_events: 0,
    window_jiffies: 0,
    nf_last_pos: [0xff; 8],
    flags: 0,
    conn_idle_secs: 0,
    new_flows_per_sec: 0,
    hz: 0,
    new_flows_burst: 0,
    refill_jiffies: 0,
    layout: tracer_common::Layout {
        skb_head: 0,
        skb_data: 0,
        skb_len: 0,
        skb_network_header: 0,
        skb_transport_header: 0,
        skb_mac_header: 0,
        skb_dev: 0,
        skb_nfct: 0,
        skb_protocol: 0,
        dev_ifindex: 0,
        dev_name: 0,
        dev_nd_net: 0,
        dev_mtu: 0,
        net_inum: 0,
        ct_tuple_orig: 0,
        ct_tuple_reply: 0,
        ct_status: 0,
        tuple_src_u3: 0,
        tuple_src_u: 0,
        tuple_dst_u3: 0,
        tuple_dst_u: 0,
        tuple_dst_protonum: 0,
        state_hook: 0,
        state_in: 0,
        state_out: 0,
        fl4_oif: 0,
        fl4_iif: 0,
        fl4_saddr: 0,
        fl4_daddr: 0,
        fl4_proto: 0,
        nhc_dev: 0,
        nhc_gw: 0,
        nhc_gw_family: 0,
        skb_data_len: 0,
    },
};

/// Reads one configuration field. Volatile so the compiler does not fold the
/// zero initializer; the verifier then sees the value userspace wrote.
macro_rules! conf {
    ($($f:ident).+) => {
        {
            #[allow(unused_unsafe)]
            let v = unsafe { core::ptr::read_volatile(&raw const $crate::maps::CONFIG.$($f).+) };
            v
        }
    };
}
pub(crate) use conf;

/// Loaded as the bench's empty program (`CFG_EMPTY`): each entry point
/// checks this first. The value is frozen, so the verifier keeps only one
/// of the two paths.
#[inline(always)]
pub fn empty() -> bool {
    conf!(flags) & CFG_EMPTY != 0
}

/// Offset of a kernel struct field (from BTF), as u64 for address arithmetic.
macro_rules! off {
    ($f:ident) => {{
        #[allow(unused_unsafe)]
        let v = unsafe { core::ptr::read_volatile(&raw const $crate::maps::CONFIG.layout.$f) };
        v as u64
    }};
}
pub(crate) use off;

/// The watched LB IPs and ranges when there are several (`CFG_LB_SET`):
/// key data is the family, 3 zero bytes, then the address (IPv4 in the
/// first 4 bytes); the prefix counts 32 bits of family and padding.
#[map]
pub static LB_SET: LpmTrie<[u8; 20], u8> = LpmTrie::with_max_entries(tracer_common::LB_SET_MAX, 0);

/// Path events, ARP and BGP records for userspace.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// The jiffy in which each CPU last woke the reader (see `emit::wake`).
#[map]
pub static WOKE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Counters (`STAT_*`), per CPU: no atomics on this target.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Each CPU's allowance of new connections to trace: a token bucket in
/// 1/HZ tokens, refilled by `new_flows_per_sec` every jiffy, holding
/// `new_flows_burst` tokens.
#[repr(C)]
pub struct Bucket {
    pub units: u64,
    pub jiffies: u64,
}

#[map]
pub static BUCKET: PerCpuArray<Bucket> = PerCpuArray::with_max_entries(1, 0);

/// The current connection of each flow tuple (client → LB IP): its trace
/// budget and totals. Packets past the budget cost this one lookup.
#[map]
pub static FLOWS: LruHashMap<Tuple, FlowState> = LruHashMap::with_max_entries(16384, 0);

/// Packets being traced, keyed by `struct sk_buff` address.
#[map]
pub static TRACKED: LruHashMap<u64, Track> = LruHashMap::with_max_entries(16384, 0);

/// Conntrack entry (`struct nf_conn` address) → flow: finds replies and
/// packets the kernel re-allocated.
#[map]
pub static CT_FLOWS: LruHashMap<u64, FlowRef> = LruHashMap::with_max_entries(16384, 0);

/// Tuple a reply will carry when it reaches the node → flow.
#[map]
pub static REPLIES: LruHashMap<Tuple, FlowRef> = LruHashMap::with_max_entries(16384, 0);

/// [0]: packets in TRACKED not yet freed, an upper bound (an entry the LRU
/// evicts, or whose free went unseen, stays counted). While it is 0 no hook
/// looks a packet up there: under a flood of new connections, most of them
/// not traced, the window below stays open but the packets in flight are
/// none of ours most of the time.
#[map]
pub static IN_FLIGHT: Array<u64> = Array::with_max_entries(1, 0);

/// [0]: jiffies of the last traced packet. Hooks that only follow packets
/// skip all lookups when it is older than `window_jiffies`: unrelated traffic
/// pays one array read.
#[map]
pub static WINDOW: Array<u64> = Array::with_max_entries(1, 0);

/// The traced packet this CPU is handling now, so routing lookups (which
/// carry no skb) can be tied to it.
#[map]
pub static CURRENT: PerCpuArray<Current> = PerCpuArray::with_max_entries(1, 0);

/// Node-namespace interfaces that lead to pods (ifindex → 1), kept by
/// userspace: a request sent there is followed into the pod's namespace.
#[map]
pub static POD_IFS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Per CPU: the last packet a netfilter point found untraced, with its
/// conntrack word. The points of one hook run back to back on one CPU, so
/// the next points skip the lookups while neither changed.
#[map]
pub static NF_SEEN: PerCpuArray<NfSeen> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the packet its first hook (netif_receive_skb, node namespace)
/// decided not to trace (a request of a flow whose trace budget is spent,
/// or not wanted; a reply whose budget is spent), or an answer already
/// counted at transmit. The hooks it meets next on this CPU (netfilter
/// points, transmit, free) skip their lookups for it. Cleared where a
/// packet of this address cannot be that one any more: any arrival, a
/// free, local delivery, a packet the node sends.
#[map]
pub static PASSED: PerCpuArray<Passed> = PerCpuArray::with_max_entries(1, 0);

/// The packet [`PASSED`], and whether transmit has nothing left to do for
/// it (a request; an answer once counted, so devices stacked on the way
/// out, VLAN or bond or bridge, do not count it again). Else it is an
/// answer, counted when it leaves.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Passed {
    pub skb: u64,
    pub done: u64,
    /// The packet's signature and tuple digest, to know it when it arrives
    /// again one device up (a bridge after its port).
    pub sig: u32,
    pub sum: u32,
}

/// Big per-event values (parsed headers, event details, a track being
/// built) live here, not on the BPF stack: before 6.13 a program's whole
/// call chain gets 512 bytes of stack. One slot per nesting level on a CPU
/// (a softirq may interrupt a program running in process context).
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(SCRATCH_SLOTS, 0);

/// [0]: how many programs on this CPU hold a SCRATCH slot right now.
#[map]
pub static NEST: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// A flow tuple and which of its connections ([`FlowState::conn`]): entries
/// that outlive their connection must not catch the next one's packets.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FlowRef {
    pub flow: Tuple,
    pub conn: u64,
    /// REPLIES: 1 once this connection's reply budget was found spent, so
    /// later replies cost this one lookup. CT_FLOWS: a bit per direction
    /// (1 << dir), that direction's budget spent, so its packets need no
    /// parsing at all.
    pub spent: u8,
    pub _pad: [u8; 7],
}

/// Track flags.
/// The packet was sent towards a pod: follow it into the pod's namespace.
pub const T_FOLLOW: u8 = 0x01;
/// Its conntrack entry is already recorded in CT_FLOWS.
pub const T_CT_SEEN: u8 = 0x02;
/// An answer already counted for its flow on its way out.
pub const T_COUNTED: u8 = 0x04;

/// A traced packet. Its skb address may be reused after a free the kernel
/// does not trace (TCP's `__kfree_skb`), so an entry only counts while the
/// packet still has the same data buffer (`head`) or the same signature.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Track {
    pub flow: Tuple,
    /// The flow's connection ([`FlowState::conn`]).
    pub conn: u64,
    /// First seen (jiffies: read at every hook, and the clock costs a call).
    pub ts: u64,
    /// `skb->head` when last verified.
    pub head: u64,
    /// [`crate::parse::Parsed::sig`] of the packet.
    pub sig: u32,
    /// Namespace the packet was last seen in.
    pub netns: u32,
    pub seq: u16,
    pub dir: u8,
    pub flags: u8,
    pub last_hook: u8,
    pub last_pos: u8,
    pub last_ct: u8,
    pub _pad: u8,
    /// Digest of the packet tuple at the last netfilter point (detects NAT).
    pub last_sum: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct NfSeen {
    pub skb: u64,
    pub nfct: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Current {
    pub skb: u64,
    /// jiffies when set.
    pub ts: u64,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
}
