//! Loading and attaching lbpath's kernel programs: tp_btf through aya, the
//! netfilter programs through `netfilter`. Everything is attached with links
//! (file descriptors): when lbpath exits or is killed, nothing stays behind.

pub mod netfilter;

use std::{
    net::IpAddr,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions},
};
use tracer_common::{
    AF_INET, AF_INET6, CFG_ARP, CFG_BGP, Config, FlowCounters, Layout, STAT_FLOWS,
    STAT_LOST_EVENTS, STAT_TRACKED, Tuple,
};

use crate::{UsageError, nfplan::NfPlan};

/// The kernel programs, built by build.rs and embedded: one file to copy.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// Size of the eBPF object embedded in this binary.
pub fn object_size() -> usize {
    OBJECT.len()
}

/// tp_btf programs and the tracepoints they attach to. The last ones are
/// enrichment: a kernel without them still traces the path.
const TRACEPOINTS: &[(&str, &str, bool)] = &[
    ("lbp_receive", "netif_receive_skb", true),
    ("lbp_xmit", "net_dev_start_xmit", true),
    ("lbp_kfree", "kfree_skb", true),
    ("lbp_consume", "consume_skb", true),
    ("lbp_fib", "fib_table_lookup", false),
    ("lbp_tcp_reset", "tcp_send_reset", false),
];

pub struct LoadOptions {
    pub lb: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub trace_packets: u32,
    pub drop_events: u32,
    pub arp: bool,
    pub bgp: bool,
    /// Interfaces to capture BGP segments on (TC, tcx links).
    pub tc_ifaces: Vec<String>,
    pub plan: NfPlan,
}

pub struct Tracer {
    ebpf: Ebpf,
    _nf_links: Vec<OwnedFd>,
    pub node_netns: u32,
    pub plan: NfPlan,
    /// Degraded capabilities worth one line each (missing hooks on this kernel).
    pub notices: Vec<String>,
}

pub fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, AF_INET)
        }
        IpAddr::V6(v6) => (v6.octets(), AF_INET6),
    }
}

/// The kernel's tick rate (CONFIG_HZ), from its config when readable
/// (/proc/config.gz or /boot). An unknown rate counts as 1000: the window
/// then lasts at least as long as meant (a longer one only costs lookups).
pub fn kernel_hz() -> u64 {
    use std::io::Read;
    let mut config = String::new();
    if let Ok(f) = std::fs::File::open("/proc/config.gz") {
        let _ = flate2::read::GzDecoder::new(f).read_to_string(&mut config);
    }
    if config.is_empty() {
        let release = crate::cli::kernel_release();
        config = std::fs::read_to_string(format!("/boot/config-{release}")).unwrap_or_default();
    }
    hz_from_config(&config).unwrap_or(1000)
}

fn hz_from_config(config: &str) -> Option<u64> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
}

/// Inode number of this process's network namespace: the node lbpath observes.
pub fn own_netns() -> Result<u32> {
    let meta = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    Ok(meta.ino() as u32)
}

/// One clear line for the usual reason a load fails.
fn permission_hint(e: &(dyn std::error::Error + 'static)) -> Option<UsageError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            // EPERM only: the verifier rejects with EACCES, which is a bug, not privilege.
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return Some(UsageError(
                "lbpath needs root, or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (run it with sudo)".into(),
            ));
        }
        cur = err.source();
    }
    None
}

impl Tracer {
    pub fn load(opts: &LoadOptions, layout: Layout) -> Result<Self> {
        let node_netns = own_netns()?;
        let (lb_addr, lb_family) = addr_bytes(opts.lb);
        let mut flags = 0;
        if opts.arp {
            flags |= CFG_ARP;
        }
        if opts.bgp {
            flags |= CFG_BGP;
        }
        let config = Config {
            lb_addr,
            lb_family,
            proto: opts.proto,
            port: opts.port,
            node_netns,
            trace_packets: opts.trace_packets,
            drop_events: opts.drop_events,
            window_jiffies: 5 * kernel_hz(),
            nf_last_pos: opts.plan.last_pos(),
            flags,
            _pad: 0,
            layout,
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .load(OBJECT)
            .map_err(|e| match permission_hint(&e) {
                Some(u) => anyhow!(u),
                None => anyhow!(e).context("loading lbpath's eBPF object"),
            })?;

        let btf = Btf::parse_file(crate::btf::vmlinux_path(), aya::Endianness::default())
            .context("reading the kernel BTF")?;
        let mut notices = Vec::new();
        for (prog, tp, required) in TRACEPOINTS {
            let res = (|| -> Result<()> {
                let p: &mut BtfTracePoint = ebpf
                    .program_mut(prog)
                    .ok_or_else(|| anyhow!("program {prog} missing from the object"))?
                    .try_into()?;
                p.load(tp, &btf)?;
                p.attach()?;
                Ok(())
            })();
            if let Err(e) = res {
                if let Some(u) = permission_hint(e.as_ref()) {
                    return Err(anyhow!(u));
                }
                if *required {
                    return Err(e.context(format!("attaching to tracepoint {tp}")));
                }
                notices.push(format!(
                    "tracepoint {tp} unavailable on this kernel ({e:#}); its detail is left out"
                ));
            }
        }

        if opts.bgp
            && !opts.tc_ifaces.is_empty()
            && let Err(e) = attach_tc(&mut ebpf, &opts.tc_ifaces)
        {
            if let Some(u) = permission_hint(e.as_ref()) {
                return Err(anyhow!(u));
            }
            notices.push(format!(
                "BGP capture unavailable (TC tcx links, kernel 6.6+: {e:#})"
            ));
        }

        let mut nf_links = Vec::new();
        match netfilter::load(OBJECT, &ebpf, "lbp_nf_") {
            Ok(progs) => {
                for (hook, points) in opts.plan.points.iter().enumerate() {
                    for (pos, prio) in points.iter().enumerate() {
                        let name = format!("lbp_nf_{pos}");
                        let pfs: &[u32] = if lb_family == AF_INET {
                            &[netfilter::NFPROTO_IPV4]
                        } else {
                            &[netfilter::NFPROTO_IPV6]
                        };
                        for pf in pfs {
                            nf_links.push(progs.attach(&name, *pf, hook as u32, *prio)?);
                        }
                    }
                }
            }
            Err(e) => {
                if let Some(u) = permission_hint(e.as_ref()) {
                    return Err(anyhow!(u));
                }
                notices.push(format!(
                    "BPF netfilter links unavailable (kernel 6.4+ needed: {e:#}); netfilter hops are inferred from drops"
                ));
            }
        }
        Ok(Self {
            ebpf,
            _nf_links: nf_links,
            node_netns,
            plan: opts.plan.clone(),
            notices,
        })
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| anyhow!("EVENTS map missing"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Events lost for lack of ring-buffer room, flows seen, packets traced.
    pub fn stats(&self) -> Result<Stats> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("STATS")
                .ok_or_else(|| anyhow!("STATS map missing"))?,
        )?;
        let sum = |i: u32| -> Result<u64> { Ok(map.get(&i, 0)?.iter().sum()) };
        Ok(Stats {
            lost_events: sum(STAT_LOST_EVENTS)?,
            flows: sum(STAT_FLOWS)?,
            traced_packets: sum(STAT_TRACKED)?,
        })
    }

    /// A flow's totals across CPUs.
    pub fn counters(&self, flow: &Tuple) -> Option<FlowCounters> {
        let map: PerCpuHashMap<_, Tuple, FlowCounters> =
            PerCpuHashMap::try_from(self.ebpf.map("COUNTERS")?).ok()?;
        let vals = map.get(flow, 0).ok()?;
        let mut out = FlowCounters::default();
        for v in vals.iter() {
            out.req_pkts += v.req_pkts;
            out.req_bytes += v.req_bytes;
            out.rep_pkts += v.rep_pkts;
            out.rep_bytes += v.rep_bytes;
            out.drops += v.drops;
        }
        Some(out)
    }

    /// Replaces the set of node interfaces that lead to pods.
    pub fn set_pod_ifs(&mut self, ifindexes: &[u32]) -> Result<()> {
        let mut map: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("POD_IFS")
                .ok_or_else(|| anyhow!("POD_IFS map missing"))?,
        )?;
        let old: Vec<u32> = map.keys().filter_map(|k| k.ok()).collect();
        for k in old {
            if !ifindexes.contains(&k) {
                let _ = map.remove(&k);
            }
        }
        for i in ifindexes {
            map.insert(i, 1, 0)?;
        }
        Ok(())
    }
}

/// TC programs on each interface, both directions, as tcx links (they leave
/// no qdisc behind and go away with the process).
fn attach_tc(ebpf: &mut Ebpf, ifaces: &[String]) -> Result<()> {
    for (prog, dir) in [
        ("lbp_tc_ingress", TcAttachType::Ingress),
        ("lbp_tc_egress", TcAttachType::Egress),
    ] {
        let p: &mut SchedClassifier = ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("program {prog} missing from the object"))?
            .try_into()?;
        p.load()?;
        for iface in ifaces {
            p.attach_with_options(iface, dir, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .with_context(|| format!("attaching {prog} to {iface}"))?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub lost_events: u64,
    pub flows: u64,
    pub traced_packets: u64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn hz() {
        assert_eq!(
            super::hz_from_config("# x\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(super::hz_from_config("nothing"), None);
    }
}
