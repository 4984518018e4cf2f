//! lbpath's one event schema and its load-time configuration.
//!
//! Everything here is `#[repr(C)]` and shared byte for byte between the eBPF
//! programs (`tracer-ebpf`) and userspace (`tracer`). Records in the ring buffer
//! all start with a `kind` byte ([`Kind`]) so userspace can tell them apart:
//! [`Event`] for the packet path, [`ArpEvent`] for ARP about the LB IP and
//! [`SegEvent`] for BGP segments.
#![no_std]

/// `Tuple::family` for IPv4.
pub const AF_INET: u8 = 2;
/// `Tuple::family` for IPv6.
pub const AF_INET6: u8 = 10;

/// Interface name length in the kernel.
pub const IFNAMSIZ: usize = 16;

/// Netfilter hooks, as numbered by the kernel (`enum nf_inet_hooks`).
pub const NF_INET_PRE_ROUTING: u8 = 0;
pub const NF_INET_LOCAL_IN: u8 = 1;
pub const NF_INET_FORWARD: u8 = 2;
pub const NF_INET_LOCAL_OUT: u8 = 3;
pub const NF_INET_POST_ROUTING: u8 = 4;
pub const NF_HOOKS: usize = 5;
/// Observation points per netfilter hook (one eBPF program per index).
pub const MAX_NF_POS: usize = 12;
/// `Event::hook` when the event is not from a netfilter hook.
pub const NO_HOOK: u8 = 0xff;

/// What a ring-buffer record is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The packet was received on an interface (`net:netif_receive_skb`).
    Arrive = 1,
    /// The packet is being transmitted on an interface (`net:net_dev_start_xmit`).
    Xmit = 2,
    /// The packet passed a netfilter observation point (BPF netfilter link).
    Nf = 3,
    /// The packet was freed as a drop (`skb:kfree_skb`).
    Drop = 4,
    /// The packet was freed normally (`skb:consume_skb`): delivered or sent.
    Consume = 5,
    /// A routing table lookup made for the packet (`fib:fib_table_lookup`).
    Fib = 6,
    /// TCP answered the packet with a reset (`tcp:tcp_send_reset`).
    Reset = 7,
    /// An ARP packet about the LB IP ([`ArpEvent`]).
    Arp = 8,
    /// A TCP segment to or from port 179 ([`SegEvent`]).
    Bgp = 9,
}

impl Kind {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Arrive,
            2 => Self::Xmit,
            3 => Self::Nf,
            4 => Self::Drop,
            5 => Self::Consume,
            6 => Self::Fib,
            7 => Self::Reset,
            8 => Self::Arp,
            9 => Self::Bgp,
            _ => return None,
        })
    }
}

/// `Event::dir`: the packet goes from the client towards the LB IP / the pod.
pub const DIR_REQUEST: u8 = 0;
/// `Event::dir`: the packet is the pod's answer going back to the client.
pub const DIR_REPLY: u8 = 1;

/// An L3/L4 five-tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tuple {
    /// Source address: IPv4 in the first 4 bytes (network order, rest zero) or IPv6.
    pub saddr: [u8; 16],
    /// Destination address, same encoding.
    pub daddr: [u8; 16],
    /// Source port, host order (ICMP echo: identifier).
    pub sport: u16,
    /// Destination port, host order (ICMP: type << 8 | code).
    pub dport: u16,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6).
    pub proto: u8,
    /// [`AF_INET`] or [`AF_INET6`]; 0 means "no tuple".
    pub family: u8,
    pub _pad: [u8; 2],
}

impl Tuple {
    /// The same connection seen from the other side.
    pub const fn reversed(&self) -> Self {
        Self {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

/// The routing-lookup section of an [`Event`] (kind [`Kind::Fib`]).
/// The looked-up flow's addresses are in `Event::pkt`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Fib {
    /// Routing table id (255 local, 254 main, ...).
    pub table: u32,
    /// 0 on success, else a negative errno (-ENETUNREACH, -EAGAIN for "try next rule" ...).
    pub err: i32,
    /// Input interface of the looked-up flow (0 for locally generated lookups).
    pub flow_iif: u32,
    /// Output interface requested by the flow (0 = any).
    pub flow_oif: u32,
    /// Next-hop gateway (zero: directly connected).
    pub gw: [u8; 16],
    /// Family of `gw` (0: no gateway).
    pub gw_family: u8,
    pub _pad: [u8; 3],
}

/// One observation of one packet of a traced flow.
///
/// Which fields are meaningful depends on `kind`; unused ones are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// A [`Kind`] value.
    pub kind: u8,
    /// [`DIR_REQUEST`] or [`DIR_REPLY`].
    pub dir: u8,
    /// Netfilter hook (`NF_INET_*`) for `Nf`; for `Drop`, the last hook the packet passed; else [`NO_HOOK`].
    pub hook: u8,
    /// Observation point index within `hook` (its priority is known to userspace).
    pub pos: u8,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10) when `pkt.proto` is TCP.
    pub tcp_flags: u8,
    /// Conntrack: 0 = no entry attached, else `enum ip_conntrack_info` + 1.
    pub ct: u8,
    /// Packet number of this packet within its flow and direction (1 = first).
    pub seq: u16,
    /// Network namespace inode number of the device (or hook) where this was seen.
    pub netns: u32,
    /// Interface index of `ifname` (in `netns`); 0 when unknown.
    pub ifindex: u32,
    /// Kernel monotonic time (ns).
    pub ts: u64,
    /// Address of the `struct sk_buff` (identity of the packet while it lives).
    pub skb: u64,
    /// The flow: its first packet's tuple, client → LB IP.
    pub flow: Tuple,
    /// The packet's own tuple at this point (after any NAT so far).
    pub pkt: Tuple,
    /// `skb->len`.
    pub len: u32,
    /// MTU of `ifname` (Xmit, Arrive, Drop).
    pub mtu: u32,
    /// Drop: the kernel's `enum skb_drop_reason` value (named by userspace from BTF).
    /// Reset: `enum sk_rst_reason` value.
    pub reason: u32,
    /// Conntrack status bits (`IPS_*`: SRC_NAT 0x10, DST_NAT 0x20, CONFIRMED 0x08 ...).
    pub ct_status: u32,
    /// Drop / Consume: kernel address of the freeing function.
    pub location: u64,
    /// The connection of `flow` this belongs to ([`FlowState::conn`]).
    pub conn: u64,
    /// Interface name (arrival, transmit, drop device, or route result for `Fib`).
    pub ifname: [u8; IFNAMSIZ],
    /// Conntrack reply tuple: where NAT will send answers (e.g. the DNAT target as source).
    pub ct_reply: Tuple,
    /// Netfilter: the hook's input interface index (0 = none).
    pub in_ifindex: u32,
    /// Netfilter: the hook's output interface index (0 = none).
    pub out_ifindex: u32,
    /// Routing lookup details (kind `Fib`).
    pub fib: Fib,
    /// Source MAC of the frame (Arrive on Ethernet devices).
    pub mac_src: [u8; 6],
    /// Flags: [`EV_POD_NS`] ...
    pub flags: u8,
    pub _pad: u8,
}

/// Bytes of a packet's headers kept per event with [`CFG_CAPTURE`]
/// (the pcapng snap length): Ethernet, IPv6 and TCP with options fit.
pub const CAP_BYTES: usize = 128;
/// `Capture::link`: nothing captured (no header offset set, or unreadable).
pub const CAP_NONE: u8 = 0;
/// `Capture::link`: `data` starts with the Ethernet header.
pub const CAP_ETHERNET: u8 = 1;
/// `Capture::link`: `data` starts with the IP header (no MAC header there:
/// netfilter hooks, routing, frees; devices without one).
pub const CAP_RAW_IP: u8 = 2;

/// A packet's headers as one event saw them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Capture {
    /// `CAP_*`.
    pub link: u8,
    pub _pad: u8,
    /// Bytes captured into `data` (at most [`CAP_BYTES`]).
    pub caplen: u16,
    /// The packet's length from where `data` starts.
    pub origlen: u32,
    pub data: [u8; CAP_BYTES],
}

/// An [`Event`] followed by its packet's headers: the record path events
/// take when [`CFG_CAPTURE`] is set. Userspace tells the two apart by the
/// record's length.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventCap {
    pub ev: Event,
    pub cap: Capture,
}

/// `Event::flags`: seen in a namespace other than the node's (the pod's).
pub const EV_POD_NS: u8 = 0x01;
/// `Event::flags`: the packet is past the flow's trace budget (only its drop is reported).
pub const EV_UNTRACED: u8 = 0x02;

/// ARP about the LB IP seen at one of the node's interfaces.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ArpEvent {
    /// [`Kind::Arp`].
    pub kind: u8,
    /// 0 = received, 1 = transmitted by this node.
    pub dir: u8,
    /// ARP operation: 1 request, 2 reply.
    pub op: u16,
    pub netns: u32,
    pub ifindex: u32,
    pub _pad: u32,
    pub ts: u64,
    pub ifname: [u8; IFNAMSIZ],
    /// Sender hardware / protocol address.
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    /// Target hardware / protocol address.
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
    /// Ethernet source and destination.
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
}

/// Bytes of TCP payload kept per BGP segment.
pub const SEG_PAYLOAD: usize = 480;

/// A TCP segment to or from port 179 (BGP) at one of the node's interfaces.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SegEvent {
    /// [`Kind::Bgp`].
    pub kind: u8,
    /// 0 = received, 1 = transmitted by this node.
    pub dir: u8,
    pub tcp_flags: u8,
    pub _pad: u8,
    pub netns: u32,
    pub ifindex: u32,
    /// TCP payload length in the packet (may exceed `caplen`).
    pub paylen: u16,
    /// Bytes of payload captured in `payload`.
    pub caplen: u16,
    pub ts: u64,
    pub tuple: Tuple,
    pub seq: u32,
    pub ack: u32,
    pub ifname: [u8; IFNAMSIZ],
    pub payload: [u8; SEG_PAYLOAD],
}

/// One connection of a flow tuple (the `FLOWS` map, keyed by the flow's
/// first tuple): how much of it is traced, and its totals. Shared by the
/// CPUs; the totals are added atomically.
///
/// A tuple is reused by later connections (fixed-port health checkers, a
/// client that closed with a RST): a TCP SYN with another initial sequence
/// number, or a packet after longer than conntrack keeps an idle entry,
/// starts a new connection with a new `conn` and everything else zeroed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowState {
    /// The connection's identity: kernel monotonic ns of its first packet.
    pub conn: u64,
    /// Kernel monotonic ns of its latest request packet (TCP: of its first;
    /// TCP tells connections apart by their SYNs, without the clock).
    pub last_ns: u64,
    pub req_pkts: u64,
    pub req_bytes: u64,
    pub rep_pkts: u64,
    pub rep_bytes: u64,
    /// Packets of the connection dropped (traced or not).
    pub drops: u64,
    /// TCP: [`Event`]-style signature of the SYN that opened it.
    pub isn: u32,
    pub req_traced: u16,
    pub rep_traced: u16,
    pub drop_events: u16,
    /// Bit per direction (1 << dir): that direction's trace budget is spent.
    pub spent: u8,
    pub _pad: [u8; 5],
}

/// Indexes of the per-CPU `STATS` array.
pub const STAT_LOST_EVENTS: u32 = 0;
pub const STAT_FLOWS: u32 = 1;
pub const STAT_TRACKED: u32 = 2;
/// Events skipped because programs nested deeper on one CPU than the
/// kernel side has scratch slots for (lost like ring-buffer overflows).
pub const STAT_NESTED: u32 = 3;
/// New connections not traced because the ring buffer was three quarters
/// full: counted (in [`STAT_FLOWS`] too) instead of traced into a loss.
pub const STAT_SHED: u32 = 4;
/// New connections not traced because more came than
/// [`Config::new_flows_per_sec`] allows: counted (in [`STAT_FLOWS`] too).
pub const STAT_OVER_RATE: u32 = 5;
pub const STAT_COUNT: u32 = 6;

/// Kernel struct offsets, resolved from the running kernel's BTF at load.
/// Rust eBPF has no CO-RE, so none of these is baked into the object.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Layout {
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_len: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub skb_mac_header: u32,
    pub skb_dev: u32,
    pub skb_nfct: u32,
    pub skb_protocol: u32,
    pub dev_ifindex: u32,
    pub dev_name: u32,
    pub dev_nd_net: u32,
    pub dev_mtu: u32,
    /// `struct net` → `ns.inum`.
    pub net_inum: u32,
    /// `struct nf_conn` → `tuplehash[IP_CT_DIR_ORIGINAL].tuple` / `[REPLY].tuple` / `status`.
    pub ct_tuple_orig: u32,
    pub ct_tuple_reply: u32,
    pub ct_status: u32,
    /// `struct nf_conntrack_tuple` → `src.u3`, `src.u`, `dst.u3`, `dst.u`, `dst.protonum`.
    pub tuple_src_u3: u32,
    pub tuple_src_u: u32,
    pub tuple_dst_u3: u32,
    pub tuple_dst_u: u32,
    pub tuple_dst_protonum: u32,
    /// `struct nf_hook_state` → `hook`, `in`, `out`.
    pub state_hook: u32,
    pub state_in: u32,
    pub state_out: u32,
    /// `struct flowi4` → `flowi4_oif`, `flowi4_iif`, `saddr`, `daddr`, `flowi4_proto`.
    pub fl4_oif: u32,
    pub fl4_iif: u32,
    pub fl4_saddr: u32,
    pub fl4_daddr: u32,
    pub fl4_proto: u32,
    /// `struct fib_nh_common` → `nhc_dev`, `nhc_gw`, `nhc_gw_family`.
    pub nhc_dev: u32,
    pub nhc_gw: u32,
    pub nhc_gw_family: u32,
    /// `struct sk_buff` → `data_len` (bytes in page fragments: the linear
    /// part ends `len - data_len` past `data`).
    pub skb_data_len: u32,
}

/// Set by userspace in the object's read-only data before load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// The LB IP (same encoding as [`Tuple::daddr`]).
    pub lb_addr: [u8; 16],
    /// Its family ([`AF_INET`] / [`AF_INET6`]).
    pub lb_family: u8,
    /// Only this IP protocol (0 = any).
    pub proto: u8,
    /// Only this LB port (0 = any).
    pub port: u16,
    /// Inode number of the node's network namespace (where lbpath runs).
    pub node_netns: u32,
    /// Packets traced hop by hop per flow and direction; the rest are only counted.
    pub trace_packets: u32,
    /// Drop events reported per flow for packets past the trace budget.
    pub drop_events: u32,
    /// How long after the last traced packet hooks still look packets up, in
    /// jiffies (reading jiffies is cheaper than a clock on every packet).
    pub window_jiffies: u64,
    /// Per netfilter hook: index of its last observation point (0xff: hook not observed).
    pub nf_last_pos: [u8; 8],
    /// `CFG_*` bits.
    pub flags: u32,
    /// A non-TCP flow idle this long (seconds; conntrack's timeout for
    /// unanswered UDP) starts a new connection with its next packet.
    pub conn_idle_secs: u32,
    /// New connections traced per second at most, on each CPU, once a
    /// burst of [`Config::new_flows_burst`] is spent; the rest are counted,
    /// not traced.
    pub new_flows_per_sec: u32,
    /// The kernel's jiffies per second.
    pub hz: u32,
    /// New connections traced at once, on each CPU, before the rate applies.
    pub new_flows_burst: u32,
    /// Jiffies that refill an empty bucket at `new_flows_per_sec`: the
    /// longest gap worth counting (it bounds the refill arithmetic).
    pub refill_jiffies: u32,
    pub layout: Layout,
}

/// `Config::flags`: report ARP for the LB IP.
pub const CFG_ARP: u32 = 0x1;
/// `Config::flags`: report TCP port 179 segments.
pub const CFG_BGP: u32 = 0x2;
/// `Config::flags`: several LB IPs or ranges, in the LB_SET map (else the
/// one in `Config::lb_addr`).
pub const CFG_LB_SET: u32 = 0x4;
/// `Config::flags`: every program returns at once. Not a user feature: the
/// bench loads lbpath this way to measure what the hooks themselves cost.
pub const CFG_EMPTY: u32 = 0x8;
/// `Config::flags`: each path event carries the packet's headers
/// ([`EventCap`]); only with `watch --write`.
pub const CFG_CAPTURE: u32 = 0x10;
/// Entries of LB_SET: addresses and ranges watched at once.
pub const LB_SET_MAX: u32 = 4096;
/// LB_SET key: the prefix counts these bits of family and padding before
/// the address's own prefix.
pub const LB_KEY_BITS: u32 = 32;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data without pointers; any bit pattern is valid.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Tuple {}
    unsafe impl aya::Pod for super::FlowState {}
}
