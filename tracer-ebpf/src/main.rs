//! lbpath's kernel side: observe packets to and from one LoadBalancer IP.
//!
//! One module per hook family: `tracepoints` (tp_btf: receive, transmit, free,
//! routing, TCP reset), `netfilter` (BPF netfilter links around the
//! built-in priorities) and `tc` (tcx links on uplinks: BGP segments);
//! `wire` reads ARP for the tracepoints. What they share:
//! - `kernel`: reading kernel structs at offsets userspace resolved from BTF;
//! - `parse`: IP and L4 headers;
//! - `track`: which packets are traced and following them between hooks;
//! - `emit`: writing events into the ring buffer;
//! - `scratch`: per-CPU memory for big values (the pre-6.13 verifier allows
//!   512 bytes of stack for a whole call chain);
//! - `maps`: the maps and the load-time configuration;
//! - `mem`: zeroing without memset calls.
//!
//! Nothing here changes a packet: tracepoints cannot, netfilter programs always
//! return NF_ACCEPT.
#![no_std]
#![no_main]
// atomic_xadd: the bpfel target has no 64-bit atomics in core::sync, but
// the instruction (BPF_XADD) exists on every kernel.
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Map keys and values go to the helpers by pointer; taking them by value
// (`TRACKED.insert(skb, s.tr, 0)`, as this lint asks) copies them onto the
// stack first, when big ones live in per-CPU scratch memory precisely to keep
// them off the verifier's 512-byte stack.
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values are passed by reference, not copied to the stack"
)]

mod emit;
mod kernel;
mod maps;
mod mem;
mod netfilter;
mod parse;
mod scratch;
mod tc;
mod tracepoints;
mod track;
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
