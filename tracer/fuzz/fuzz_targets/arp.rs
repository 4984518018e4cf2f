//! Arbitrary bytes as ring-buffer ARP records: each 72-byte piece of the
//! input is a `tracer_common::ArpEvent` with its `#[repr(C)]` layout (the
//! last one zero-padded), built field by field at the fields' own offsets,
//! so no unsafe code and a crashing input is a record the kernel side could
//! have written. The records go through `wire::arp_observation`, each
//! through `wire::arp_line` (watching the LB IP alone, and a pool around it
//! that the header sizes), and all of them through `arp::analyze`.
//!
//! The LB IP and this node's MACs are taken from the records themselves, as
//! the first 4-byte header directs, so that claims, requests and own MACs
//! match often instead of by chance: byte 0 picks the record (and sender or
//! target address) whose IP is the LB IP, byte 1 is a mask of the first
//! eight records whose (interface, sender MAC) are this node's, bytes 2-3
//! pick an extra own MAC from the Ethernet source of one record, and byte 3
//! the pool's prefix length.
//!
//! Only "no panic, no hang" is asserted, plus what every report keeps: its
//! text is its description, a conflict names its MACs (this node's among
//! them), unanswered requests were counted and their senders named, and
//! interfaces are listed once each, in order.
//!
//! Run: `cargo xtask fuzz --target arp`.

#![no_main]

use std::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv4Addr};

use lbpath::arp::{self, ArpVerdict};
use lbpath::targets::Targets;
use lbpath::wire;
use libfuzzer_sys::fuzz_target;
use tracer_common::{ArpEvent, IFNAMSIZ};

const RECORD: usize = size_of::<ArpEvent>();
// The layout this target reads; a new field must be read below too.
const _: () = assert!(RECORD == 72);
const HEADER: usize = 4;
/// More records add nothing but time.
const MAX_RECORDS: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((header, body)) = data.split_first_chunk::<HEADER>() else {
        return;
    };
    let events: Vec<ArpEvent> = body.chunks(RECORD).take(MAX_RECORDS).map(event).collect();
    let observations: Vec<arp::ArpObservation> = events.iter().map(wire::arp_observation).collect();

    let lb = match observations.get(usize::from(header[0] & 0x7f) % observations.len().max(1)) {
        Some(o) if header[0] & 0x80 != 0 => o.tpa,
        Some(o) => o.spa,
        None => Ipv4Addr::new(192, 0, 2, 240),
    };
    let mut own: Vec<(String, [u8; 6])> = observations
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| header[1] & (1 << i) != 0)
        .map(|(_, o)| (o.ifname.clone(), o.sha))
        .collect();
    if let Some(o) = observations.get(usize::from(header[2]) % observations.len().max(1))
        && header[3] & 1 != 0
    {
        own.push((format!("if{}", header[3] >> 1), o.eth_src));
    }

    let alone = Targets::new(vec![IpAddr::V4(lb).into()], false);
    let pool = format!("{lb}/{}", header[3] % 33)
        .parse()
        .expect("a prefix");
    let pool = Targets::new(vec![pool, "fd00::/8".parse().expect("a prefix")], false);
    // No interfaces known: every frame's MAC is someone else's.
    let net = lbpath::netinfo::NetInfo::default();
    for o in &observations {
        let _ = wire::arp_line(o, &alone, &net);
        let _ = wire::arp_line(o, &pool, &net);
    }
    let report = arp::analyze(lb, &own, &observations);
    assert_eq!(report.text, report.describe());
    assert!(
        report
            .interfaces
            .windows(2)
            .all(|w| w[0].ifname < w[1].ifname)
    );
    match &report.verdict {
        ArpVerdict::Conflict { macs, this_node } => {
            assert!(!macs.is_empty());
            assert!(this_node.is_none_or(|m| macs.contains(&m)));
            assert!(report.earlier_claimants.is_empty());
        }
        ArpVerdict::NotAnswered {
            requests,
            requesters,
        } => {
            let received: u64 = report.interfaces.iter().map(|i| i.requests_received).sum();
            assert!(*requests > 0 && *requests == received);
            assert!(!requesters.is_empty());
        }
        ArpVerdict::AnsweredByThisNode { ifname, .. } => {
            // Seen on that interface, or only as its frame received on
            // another one (an echo names the interface it left by).
            assert!(
                report.interfaces.iter().any(|i| &i.ifname == ifname
                    || i.own_received.iter().any(|e| &e.from_ifname == ifname)),
                "{ifname:?} not among {:?}",
                report.interfaces.iter().map(|i| &i.ifname).collect::<Vec<_>>()
            );
        }
        ArpVerdict::AnsweredElsewhere { macs } => assert!(!macs.is_empty()),
        ArpVerdict::ArpFlux { answers } => assert!(!answers.is_empty()),
        ArpVerdict::NoArpSeen => {}
    }
});

/// One record from up to [`RECORD`] bytes, missing ones zero.
fn event(bytes: &[u8]) -> ArpEvent {
    let mut raw = [0u8; RECORD];
    raw[..bytes.len()].copy_from_slice(bytes);
    let array = |at: usize| -> [u8; 16] {
        let mut out = [0u8; 16];
        let n = (RECORD - at).min(16);
        out[..n].copy_from_slice(&raw[at..at + n]);
        out
    };
    let mac = |at: usize| -> [u8; 6] { array(at)[..6].try_into().expect("6 bytes") };
    let ip = |at: usize| -> [u8; 4] { array(at)[..4].try_into().expect("4 bytes") };
    let u16_at = |at: usize| u16::from_ne_bytes([raw[at], raw[at + 1]]);
    let u32_at = |at: usize| u32::from_ne_bytes(ip(at));
    let u64_at = |at: usize| u64::from_ne_bytes(array(at)[..8].try_into().expect("8 bytes"));
    let ifname: [u8; IFNAMSIZ] = array(offset_of!(ArpEvent, ifname));
    ArpEvent {
        kind: raw[offset_of!(ArpEvent, kind)],
        dir: raw[offset_of!(ArpEvent, dir)],
        op: u16_at(offset_of!(ArpEvent, op)),
        netns: u32_at(offset_of!(ArpEvent, netns)),
        ifindex: u32_at(offset_of!(ArpEvent, ifindex)),
        _pad: u32_at(offset_of!(ArpEvent, _pad)),
        ts: u64_at(offset_of!(ArpEvent, ts)),
        ifname,
        sha: mac(offset_of!(ArpEvent, sha)),
        spa: ip(offset_of!(ArpEvent, spa)),
        tha: mac(offset_of!(ArpEvent, tha)),
        tpa: ip(offset_of!(ArpEvent, tpa)),
        eth_src: mac(offset_of!(ArpEvent, eth_src)),
        eth_dst: mac(offset_of!(ArpEvent, eth_dst)),
    }
}
