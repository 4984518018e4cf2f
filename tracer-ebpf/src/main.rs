//! lbpath's kernel side: observe packets to and from one LoadBalancer IP.
//!
//! One module per hook family: `tracepoints` (tp_btf: receive, transmit, free,
//! routing, TCP reset), `netfilter` (BPF netfilter links around the
//! built-in priorities) and `tc` (tcx links on uplinks: BGP segments);
//! `wire` reads ARP for the tracepoints. `skb` holds what they share: reading kernel structs at
//! offsets resolved from BTF by userspace, header parsing, packet tracking and
//! event emission. `maps` holds the maps and the load-time configuration.
//!
//! Nothing here changes a packet: tracepoints cannot, netfilter programs always
//! return NF_ACCEPT.
#![no_std]
#![no_main]

mod maps;
mod netfilter;
mod skb;
mod tc;
mod tracepoints;
mod wire;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_probe_read_kernel is GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
