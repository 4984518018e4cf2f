//! `watch --write FILE.pcapng`: each traced packet as seen at each hop,
//! for Wireshark and tshark.
//!
//! The kernel side copies the first [`CAP_BYTES`] of the packet with each
//! path event (only with `--write`). The verdict is known only once the
//! flow is assembled, so the headers wait here, keyed by their event,
//! until the flow is reported; then each event of the flow becomes an
//! Enhanced Packet Block whose comment names the hop, the flow and the
//! verdict. One Interface Description Block per interface and link type:
//! Ethernet where the packet had its MAC header (arrival, transmit), raw
//! IP where it had none (netfilter hooks, routing, frees).
//!
//! The file is bounded: past `limit` bytes nothing more is written, and
//! lbpath says so once.

use std::{
    borrow::Cow,
    collections::{HashMap, VecDeque},
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            section_header::{SectionHeaderBlock, SectionHeaderOption},
        },
    },
};
use tracer_common::{CAP_BYTES, CAP_ETHERNET, Capture, DIR_REPLY, Event, Kind};

use crate::{
    assembler::monotonic_ns,
    escape,
    events::{dst, ifname, src},
    model::FlowReport,
    nfplan::hook_name,
    render::hop_text,
    watch::verdict_key,
};

/// Headers waiting for their flow's report. Flows filtered out or never
/// reported leave theirs behind: the oldest go first.
const MAX_STASHED: usize = 65_536;
/// Interfaces given a block of their own; packets of more share one.
const MAX_IFACES: usize = 1024;
/// A comment longer than this is cut (hop texts are short; this bounds
/// what untrusted names can add).
const MAX_COMMENT: usize = 2000;

/// An event's identity: its kernel timestamp, packet and kind.
type EventKey = (u64, u64, u8);

fn key(e: &Event) -> EventKey {
    (e.ts, e.skb, e.kind)
}

/// An interface as the file describes it: namespace, index, whether the
/// packets start with the MAC header.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct IfKey {
    netns: u32,
    ifindex: u32,
    ethernet: bool,
}

pub struct PcapWriter {
    path: PathBuf,
    /// None once writing stopped (size limit or error).
    w: Option<PcapNgWriter<BufWriter<File>>>,
    ifaces: HashMap<IfKey, u32>,
    stash: foldhash::HashMap<EventKey, Box<Capture>>,
    order: VecDeque<EventKey>,
    node_netns: u32,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC (ns): events carry the latter.
    realtime_offset: i128,
    limit: u64,
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
    /// Events whose headers could not be read (no block written).
    pub without_headers: u64,
    /// Why writing stopped, if it did.
    pub stopped: Option<String>,
}

fn realtime_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

impl PcapWriter {
    /// Creates `path` (truncating it) and writes the section header.
    pub fn create(path: &Path, limit: u64) -> std::io::Result<Self> {
        let file = File::create(path)?;
        let shb = SectionHeaderBlock {
            options: vec![SectionHeaderOption::UserApplication(Cow::Owned(format!(
                "lbpath {}",
                env!("CARGO_PKG_VERSION")
            )))],
            ..Default::default()
        };
        let w = PcapNgWriter::with_section_header(BufWriter::new(file), shb)
            .map_err(std::io::Error::other)?;
        let mut me = Self {
            path: path.to_path_buf(),
            w: Some(w),
            ifaces: HashMap::new(),
            stash: foldhash::HashMap::default(),
            order: VecDeque::new(),
            node_netns: 0,
            realtime_offset: realtime_ns() - monotonic_ns() as i128,
            limit,
            bytes: 0,
            packets: 0,
            flows: 0,
            without_headers: 0,
            stopped: None,
        };
        me.bytes =
            me.w.as_ref()
                .map_or(0, |w| w.get_ref().buffer().len() as u64);
        me.flush();
        Ok(me)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The node's namespace: interfaces elsewhere are described as a pod's.
    pub fn set_node_netns(&mut self, netns: u32) {
        self.node_netns = netns;
    }

    /// Keeps an event's headers until its flow is reported.
    pub fn stash(&mut self, e: &Event, cap: Box<Capture>) {
        if self.w.is_none() {
            return;
        }
        let k = key(e);
        if self.stash.insert(k, cap).is_none() {
            self.order.push_back(k);
        }
        while self.order.len() > MAX_STASHED {
            if let Some(old) = self.order.pop_front() {
                self.stash.remove(&old);
            }
        }
    }

    /// Writes the packets of a reported flow (its events), in time order,
    /// each with its comment.
    pub fn flow(&mut self, events: &[Event], r: &FlowReport) {
        if self.w.is_none() {
            for e in events {
                self.stash.remove(&key(e));
            }
            return;
        }
        let t0 = events.iter().map(|e| e.ts).min().unwrap_or(0);
        let mut evs: Vec<&Event> = events.iter().collect();
        evs.sort_by_key(|e| e.ts);
        let mut wrote = false;
        for e in evs {
            let Some(cap) = self.stash.remove(&key(e)) else {
                self.without_headers += 1;
                continue;
            };
            let comment = comment(e, r, t0);
            if self.packet(e, &cap, comment) {
                wrote = true;
            } else {
                break;
            }
        }
        if wrote {
            self.flows += 1;
        }
        // Flows are few: flushed each, so the file is readable while lbpath runs.
        self.flush();
    }

    /// One Enhanced Packet Block; false once writing stopped.
    fn packet(&mut self, e: &Event, cap: &Capture, comment: String) -> bool {
        let ethernet = cap.link == CAP_ETHERNET;
        let Some(iface) = self.iface(e, ethernet) else {
            return false;
        };
        let caplen = (cap.caplen as usize).min(CAP_BYTES);
        let ts = (e.ts as i128 + self.realtime_offset).max(0) as u128;
        let epb = EnhancedPacketBlock {
            interface_id: iface,
            timestamp: Duration::new((ts / 1_000_000_000) as u64, (ts % 1_000_000_000) as u32),
            original_len: cap.origlen.max(caplen as u32),
            data: Cow::Borrowed(&cap.data[..caplen]),
            options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment))],
        };
        if self.write(|w| w.write_pcapng_block(epb)) {
            self.packets += 1;
            true
        } else {
            false
        }
    }

    /// The block number of the event's interface, described on first use.
    fn iface(&mut self, e: &Event, ethernet: bool) -> Option<u32> {
        let k = IfKey {
            netns: e.netns,
            ifindex: e.ifindex,
            ethernet,
        };
        if let Some(id) = self.ifaces.get(&k) {
            return Some(*id);
        }
        let (k, name, desc) = if self.ifaces.len() >= MAX_IFACES {
            let k = IfKey {
                netns: 0,
                ifindex: 0,
                ethernet,
            };
            if let Some(id) = self.ifaces.get(&k) {
                return Some(*id);
            }
            (k, "other".to_string(), "further interfaces".to_string())
        } else {
            let name = if e.ifindex == 0 {
                "no device".to_string()
            } else {
                ifname(&e.ifname)
            };
            let whose = if e.netns == 0 || e.netns == self.node_netns {
                "the node".to_string()
            } else {
                format!("a pod (network namespace {})", e.netns)
            };
            let what = if ethernet {
                "Ethernet frames"
            } else {
                "IP packets, no MAC header (netfilter hooks, routing, frees)"
            };
            let desc = if e.ifindex == 0 {
                format!("{what} seen without a device")
            } else {
                format!("{what} on ifindex {} of {whose}", e.ifindex)
            };
            (k, name, desc)
        };
        let idb = InterfaceDescriptionBlock {
            linktype: if ethernet {
                DataLink::ETHERNET
            } else {
                DataLink::RAW
            },
            snaplen: CAP_BYTES as u32,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name)),
                InterfaceDescriptionOption::IfDescription(Cow::Owned(desc)),
                // Timestamps in nanoseconds, as the kernel gives them.
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        };
        if !self.write(|w| w.write_pcapng_block(idb)) {
            return None;
        }
        let id = self.ifaces.len() as u32;
        self.ifaces.insert(k, id);
        Some(id)
    }

    /// Writes a block unless that would pass the size limit; the first
    /// failure stops writing and says why, once.
    fn write(
        &mut self,
        f: impl FnOnce(&mut PcapNgWriter<BufWriter<File>>) -> pcap_file::PcapResult<usize>,
    ) -> bool {
        let Some(w) = self.w.as_mut() else {
            return false;
        };
        // Blocks are small (a few hundred bytes): checked before, so the
        // file never passes the limit by more than nothing.
        if self.bytes + (CAP_BYTES + MAX_COMMENT + 64) as u64 > self.limit {
            let why = format!(
                "{} reached its size limit ({} bytes, --write-limit): later packets are not written",
                self.path.display(),
                self.limit
            );
            self.stop(why);
            return false;
        }
        match f(w) {
            Ok(n) => {
                self.bytes += n as u64;
                true
            }
            Err(e) => {
                let why = format!(
                    "writing {}: {e}; later packets are not written",
                    self.path.display()
                );
                self.stop(why);
                false
            }
        }
    }

    fn stop(&mut self, why: String) {
        eprintln!("lbpath: {why}");
        self.stopped = Some(why);
        self.flush();
        self.w = None;
        self.stash.clear();
        self.order.clear();
    }

    fn flush(&mut self) {
        if let Some(w) = self.w.as_mut()
            && let Err(e) = w.get_mut().flush()
        {
            let why = format!(
                "writing {}: {e}; later packets are not written",
                self.path.display()
            );
            eprintln!("lbpath: {why}");
            self.stopped = Some(why);
            self.w = None;
        }
    }

    /// Flushes; the line watch prints on exit.
    pub fn finish(&mut self) -> String {
        self.flush();
        let mut s = format!(
            "lbpath: wrote {} packet{} of {} flow{} to {} ({} bytes)",
            self.packets,
            if self.packets == 1 { "" } else { "s" },
            self.flows,
            if self.flows == 1 { "" } else { "s" },
            self.path.display(),
            self.bytes
        );
        if self.without_headers > 0 {
            s.push_str(&format!(
                "; {} events had no readable headers",
                self.without_headers
            ));
        }
        if self.stopped.is_some() {
            s.push_str("; stopped early (see above)");
        }
        s
    }
}

/// The packet's comment: which packet, the hop(s) this event shows, the
/// flow and its verdict, e.g. `request 1: DNAT 192.0.2.240:80 →
/// 10.244.1.5:8080 by … | tcp 198.51.100.10:40000 → 192.0.2.240:80 |
/// answered: …`. Hops are the report's own, found by the time, direction
/// and packet number path assembly gave them; an event that made no hop
/// (a later packet, a netfilter point where nothing changed) is described
/// from the event itself.
pub fn comment(e: &Event, r: &FlowReport, t0: u64) -> String {
    let dir = if e.dir == DIR_REPLY {
        crate::model::Dir::Reply
    } else {
        crate::model::Dir::Request
    };
    // The same arithmetic as path assembly's, so equal floats mean the same event.
    let t_ms = e.ts.saturating_sub(t0) as f64 / 1e6;
    let hops: Vec<String> = r
        .hops
        .iter()
        .filter(|h| h.dir == dir && h.packet == e.seq && h.t_ms == t_ms)
        .map(|h| {
            let (label, detail) = hop_text(h);
            format!("{label} {detail}")
        })
        .collect();
    let hop = if hops.is_empty() {
        describe(e)
    } else {
        hops.join("; ")
    };
    let which = match (e.dir == DIR_REPLY, e.seq) {
        (false, 0) => "request, later packet".to_string(),
        (true, 0) => "reply, later packet".to_string(),
        (false, n) => format!("request {n}"),
        (true, n) => format!("reply {n}"),
    };
    let c = format!(
        "{which}: {hop} | {} {} → {} | {}: {}",
        r.flow.proto,
        r.flow.client,
        r.flow.lb,
        verdict_key(r.verdict.kind),
        r.verdict.summary
    );
    let mut c = escape::visible(&c).into_owned();
    if c.len() > MAX_COMMENT {
        let mut end = MAX_COMMENT;
        while !c.is_char_boundary(end) {
            end -= 1;
        }
        c.truncate(end);
        c.push('…');
    }
    c
}

/// An event that made no hop of its own, in a few words.
fn describe(e: &Event) -> String {
    let tuple = if e.pkt.family != 0 {
        format!(" {} → {}", src(&e.pkt), dst(&e.pkt))
    } else {
        String::new()
    };
    let on = if e.ifindex != 0 {
        format!(" on {}", ifname(&e.ifname))
    } else {
        String::new()
    };
    match Kind::from_u8(e.kind) {
        Some(Kind::Arrive) => format!("seen arriving{on}:{tuple}"),
        Some(Kind::Xmit) => format!("sent{on}:{tuple}"),
        Some(Kind::Nf) => format!("netfilter {} point {}:{tuple}", hook_name(e.hook), e.pos),
        Some(Kind::Fib) => format!("routing lookup in table {}", e.fib.table),
        Some(Kind::Drop) => format!("dropped{on}:{tuple}"),
        Some(Kind::Consume) => format!("freed (delivered or sent){on}:{tuple}"),
        Some(Kind::Reset) => format!("answered with a TCP reset{on}:{tuple}"),
        _ => format!("event kind {}", e.kind),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use pcap_file::pcapng::{Block, PcapNgReader};
    use tracer_common::{AF_INET, CAP_RAW_IP, IFNAMSIZ};

    use super::*;
    use crate::model::{Dir, FlowId, Hop, HopKind, Verdict, VerdictKind};

    const T0: u64 = 5_000_000_000;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn name(n: &[u8]) -> [u8; IFNAMSIZ] {
        let mut o = [0u8; IFNAMSIZ];
        o[..n.len()].copy_from_slice(n);
        o
    }

    fn event(kind: Kind, ts: u64, ifname: &[u8], ifindex: u32) -> Event {
        // SAFETY: plain old data; all zeroes is a valid (empty) event.
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.kind = kind as u8;
        e.seq = 1;
        e.ts = ts;
        e.skb = 0xffff_8000_0000_1000;
        e.netns = 1000;
        e.ifindex = ifindex;
        e.ifname = name(ifname);
        e.pkt.family = AF_INET;
        e.pkt.proto = 6;
        e.pkt.saddr[..4].copy_from_slice(&[198, 51, 100, 10]);
        e.pkt.daddr[..4].copy_from_slice(&[10, 244, 1, 5]);
        e.pkt.sport = 40000;
        e.pkt.dport = 8080;
        e
    }

    fn report(by: &str) -> FlowReport {
        FlowReport {
            flow: FlowId {
                proto: "tcp".into(),
                client: sa("198.51.100.10:40000"),
                lb: sa("192.0.2.240:80"),
                conn: 0,
            },
            service: None,
            hops: vec![Hop {
                // 20 µs after the flow's first event.
                t_ms: 20_000.0 / 1e6,
                dir: Dir::Request,
                packet: 1,
                kind: HopKind::Dnat {
                    from: sa("192.0.2.240:80"),
                    to: sa("10.244.1.5:8080"),
                    hook: "PREROUTING".into(),
                    by: Some(by.into()),
                },
                inferred: false,
            }],
            verdict: Verdict {
                kind: VerdictKind::Answered,
                summary: "reached the pod (10.244.1.5:8080) and it answered".into(),
                hint: None,
            },
            counters: None,
            notes: vec![],
            update: false,
        }
    }

    fn cap(link: u8, bytes: &[u8], origlen: u32) -> Box<Capture> {
        let mut c = Capture {
            link,
            _pad: 0,
            caplen: bytes.len() as u16,
            origlen,
            data: [0; CAP_BYTES],
        };
        c.data[..bytes.len()].copy_from_slice(bytes);
        Box::new(c)
    }

    #[test]
    fn comment_names_the_hop_the_flow_and_the_verdict() {
        let r = report("default/web:http");
        let e = event(Kind::Nf, T0 + 20_000, b"eth0", 2);
        assert_eq!(
            comment(&e, &r, T0),
            "request 1: DNAT 192.0.2.240:80 → 10.244.1.5:8080 by default/web:http [PREROUTING] \
             | tcp 198.51.100.10:40000 → 192.0.2.240:80 \
             | answered: reached the pod (10.244.1.5:8080) and it answered"
        );
        // Another event of the packet made no hop: described by itself.
        let mut e = event(Kind::Xmit, T0 + 30_000, b"vethpod", 7);
        assert!(
            comment(&e, &r, T0).starts_with(
                "request 1: sent on vethpod: 198.51.100.10:40000 → 10.244.1.5:8080 | tcp "
            ),
            "{}",
            comment(&e, &r, T0)
        );
        e.dir = DIR_REPLY;
        e.seq = 0;
        assert!(comment(&e, &r, T0).starts_with("reply, later packet: sent on vethpod"));
    }

    #[test]
    fn untrusted_text_is_escaped_and_bounded() {
        let r = report("evil\u{202e}rule\x1b[31m");
        let e = event(Kind::Nf, T0 + 20_000, b"eth0", 2);
        let c = comment(&e, &r, T0);
        assert!(c.contains("evil\\u202erule\\x1b[31m"), "{c}");
        let e = event(Kind::Xmit, T0, b"ev\x1b]0;x\x07", 2);
        let c = comment(&e, &r, T0);
        assert!(c.contains("sent on ev\\x1b]0;x\\x07:"), "{c}");
        let long = "x".repeat(10 * MAX_COMMENT);
        let c = comment(
            &event(Kind::Nf, T0 + 20_000, b"eth0", 2),
            &report(&long),
            T0,
        );
        assert!(c.len() <= MAX_COMMENT + '…'.len_utf8(), "{}", c.len());
    }

    struct TempFile(PathBuf);
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    fn temp(name: &str) -> TempFile {
        TempFile(
            std::env::temp_dir().join(format!("lbpath-unit-{name}-{}.pcapng", std::process::id())),
        )
    }

    /// A flow's packets written and read back: one interface block per
    /// interface and link type, packets with their bytes, lengths,
    /// timestamps and comments; headers of events never reported are not.
    #[test]
    fn a_flow_reads_back() {
        let f = temp("flow");
        let mut w = PcapWriter::create(&f.0, 1 << 20).unwrap();
        w.set_node_netns(1000);
        let frame: Vec<u8> = (0..74).collect();
        let ip: Vec<u8> = (0..60).map(|b| 0x45 ^ b).collect();
        let arrive = event(Kind::Arrive, T0, b"eth0", 2);
        let nf = event(Kind::Nf, T0 + 20_000, b"eth0", 2);
        let mut in_pod = event(Kind::Arrive, T0 + 40_000, b"eth0", 3);
        in_pod.netns = 2000;
        let other = event(Kind::Xmit, T0 + 50_000, b"eth1", 9);
        w.stash(&arrive, cap(CAP_ETHERNET, &frame, 74));
        w.stash(&nf, cap(CAP_RAW_IP, &ip, 60));
        w.stash(&in_pod, cap(CAP_ETHERNET, &frame, 1514));
        w.stash(&other, cap(CAP_ETHERNET, &frame, 74));
        // Events in any order; written in time order.
        w.flow(&[nf, in_pod, arrive], &report("default/web:http"));
        assert_eq!((w.packets, w.flows, w.without_headers), (3, 1, 0));
        assert!(w.finish().contains("wrote 3 packets of 1 flow to"));
        let size = std::fs::metadata(&f.0).unwrap().len();
        assert_eq!(size, w.bytes);

        let bytes = std::fs::read(&f.0).unwrap();
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut ifaces = Vec::new();
        let mut packets = Vec::new();
        while let Some(b) = r.next_block() {
            match b.unwrap() {
                Block::InterfaceDescription(i) => ifaces.push(i.into_owned()),
                Block::EnhancedPacket(p) => packets.push(p.into_owned()),
                _ => {}
            }
        }
        assert_eq!(
            ifaces.len(),
            3,
            "node eth0 as frames and as IP, the pod's eth0"
        );
        assert_eq!(ifaces[0].linktype, DataLink::ETHERNET);
        assert_eq!(ifaces[1].linktype, DataLink::RAW);
        assert!(ifaces.iter().all(|i| i.snaplen == CAP_BYTES as u32));
        let opt = |i: &InterfaceDescriptionBlock,
                   f: fn(&InterfaceDescriptionOption) -> Option<String>| {
            i.options.iter().find_map(f).unwrap_or_default()
        };
        let names: Vec<String> = ifaces
            .iter()
            .map(|i| {
                opt(i, |o| match o {
                    InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                    _ => None,
                })
            })
            .collect();
        assert_eq!(names, ["eth0", "eth0", "eth0"]);
        let desc = opt(&ifaces[2], |o| match o {
            InterfaceDescriptionOption::IfDescription(n) => Some(n.to_string()),
            _ => None,
        });
        assert!(desc.contains("a pod (network namespace 2000)"), "{desc}");

        assert_eq!(packets.len(), 3);
        assert_eq!(
            packets.iter().map(|p| p.interface_id).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(&packets[0].data[..], &frame[..]);
        assert_eq!(&packets[1].data[..], &ip[..]);
        assert_eq!(packets[2].original_len, 1514);
        // Monotonic event times become wall-clock times, 20 µs apart.
        assert_eq!(
            packets[1].timestamp - packets[0].timestamp,
            Duration::from_micros(20)
        );
        let comment = |p: &EnhancedPacketBlock| {
            p.options
                .iter()
                .find_map(|o| match o {
                    EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                    _ => None,
                })
                .unwrap()
        };
        assert!(
            comment(&packets[1]).starts_with("request 1: DNAT 192.0.2.240:80 → 10.244.1.5:8080")
        );
        assert!(comment(&packets[2]).contains("| answered: "));
    }

    /// Past the limit nothing more is written, the file stays under it, and
    /// the writer says why.
    #[test]
    fn the_file_is_bounded() {
        let f = temp("bounded");
        let limit = 16 * 1024;
        let mut w = PcapWriter::create(&f.0, limit).unwrap();
        let frame = [0u8; CAP_BYTES];
        for i in 0..1000u64 {
            let e = event(Kind::Arrive, T0 + i * 1000, b"eth0", 2);
            w.stash(&e, cap(CAP_ETHERNET, &frame, 1500));
            w.flow(&[e], &report("default/web:http"));
        }
        let size = std::fs::metadata(&f.0).unwrap().len();
        assert!(size <= limit, "{size}");
        assert!(w.packets > 10 && w.packets < 1000, "{}", w.packets);
        let why = w.stopped.clone().expect("stopped");
        assert!(why.contains("size limit (16384 bytes"), "{why}");
        assert!(w.finish().contains("stopped early"));
        // Headers are no longer kept once writing stopped.
        w.stash(
            &event(Kind::Arrive, 1, b"eth0", 2),
            cap(CAP_ETHERNET, &frame, 60),
        );
        assert!(w.stash.is_empty());
    }
}
