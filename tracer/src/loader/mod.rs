//! Loading and attaching lbpath's kernel programs: tp_btf through aya, the
//! netfilter programs through `netfilter`. Everything is attached with links
//! (file descriptors): when lbpath exits or is killed, nothing stays behind.

pub mod netfilter;
pub mod packet;
#[cfg(test)]
mod stack_check;

use std::{
    collections::HashMap,
    net::IpAddr,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
};

use anyhow::{Context, Result, anyhow};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{
        HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, RingBuf, lpm_trie::Key as LpmKey,
    },
    programs::{BtfTracePoint, LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions},
};
use tracer_common::{
    AF_INET, AF_INET6, CFG_ARP, CFG_BGP, CFG_CAPTURE, CFG_EMPTY, CFG_LB_SET, Config, FlowState,
    LB_KEY_BITS, LB_SET_MAX, STAT_FLOWS, STAT_LOST_EVENTS, STAT_NESTED, STAT_OVER_RATE, STAT_SHED,
    STAT_TRACKED, Tuple,
};

use ipnet::IpNet;

use crate::{UsageError, btf::KernelFacts, nfplan::NfPlan, targets::Targets, timeline::Timeline};

/// The kernel programs, built by build.rs and embedded: one file to copy.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// Size of the eBPF object embedded in this binary.
pub fn object_size() -> usize {
    OBJECT.len()
}

/// A tracepoint lbpath attaches to, with one program per argument list the
/// kernel may give it (newest first).
struct TracepointHook {
    tracepoint: &'static str,
    /// (program, arguments it reads): the first whose arguments the kernel
    /// provides is loaded.
    variants: &'static [(&'static str, usize)],
    /// Without it nothing useful can be traced.
    required: bool,
    /// What is lost without it, for the notice.
    without: &'static str,
}

const TRACEPOINTS: &[TracepointHook] = &[
    TracepointHook {
        tracepoint: "netif_receive_skb",
        variants: &[("lbp_receive", 1)],
        required: true,
        without: "packets arriving",
    },
    TracepointHook {
        tracepoint: "net_dev_start_xmit",
        variants: &[("lbp_xmit", 2)],
        required: false,
        without: "packets leaving an interface (left hops and replies sent) are not seen",
    },
    TracepointHook {
        tracepoint: "kfree_skb",
        variants: &[("lbp_kfree", 3), ("lbp_kfree_noreason", 2)],
        required: false,
        without: "drops are not seen",
    },
    TracepointHook {
        tracepoint: "consume_skb",
        variants: &[("lbp_consume", 2), ("lbp_consume_noloc", 1)],
        required: false,
        without: "delivery to a socket is not seen",
    },
    TracepointHook {
        tracepoint: "fib_table_lookup",
        variants: &[("lbp_fib", 4)],
        required: false,
        without: "routing decisions are inferred from where packets leave",
    },
    TracepointHook {
        tracepoint: "tcp_send_reset",
        variants: &[("lbp_tcp_reset", 3), ("lbp_tcp_reset_noreason", 2)],
        required: false,
        without: "TCP resets are seen only as RST packets",
    },
];

/// The tracepoints lbpath may attach to, for reading their signatures.
pub fn tracepoint_names() -> Vec<&'static str> {
    TRACEPOINTS.iter().map(|h| h.tracepoint).collect()
}

/// The program variant for a tracepoint that passes `available` arguments.
fn pick_variant(hook: &TracepointHook, available: usize) -> Option<&'static str> {
    hook.variants
        .iter()
        .find(|(_, needs)| *needs <= available)
        .map(|(p, _)| *p)
}

/// What this kernel let lbpath attach, for the path logic and the notices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// BPF netfilter links (6.4+): NAT and netfilter drops are observed, not inferred.
    pub netfilter_links: bool,
    /// `kfree_skb` carries `enum skb_drop_reason` (5.17+); else drops are
    /// named after the freeing function.
    pub drop_reasons: bool,
    /// Routing lookups are observed (`fib_table_lookup`).
    pub fib: bool,
    /// tcx links (6.6+): BGP segments are captured.
    pub tcx: bool,
}

pub struct LoadOptions {
    pub targets: Targets,
    pub port: u16,
    pub proto: u8,
    pub trace_packets: u32,
    pub drop_events: u32,
    /// New connections traced per second and CPU at most, after a burst
    /// of `new_flows_burst`.
    pub new_flows_per_sec: u32,
    pub new_flows_burst: u32,
    pub arp: bool,
    pub bgp: bool,
    /// Interfaces to capture BGP segments on (TC, tcx links).
    pub tc_ifaces: Vec<String>,
    pub plan: NfPlan,
    /// Let the programs log their decisions (`--debug-bpf`).
    pub debug_bpf: bool,
    /// Programs that return at once (`--empty-programs`, for the bench).
    pub empty: bool,
    /// Path events carry the packet's headers (`watch --write`).
    pub capture: bool,
}

pub struct Tracer {
    ebpf: Ebpf,
    _nf_links: Vec<OwnedFd>,
    pub node_netns: u32,
    pub plan: NfPlan,
    pub caps: Capabilities,
    /// Degraded capabilities worth one line each (missing hooks on this kernel).
    pub notices: Vec<String>,
    /// What is attached, for `-v` and bug reports: "tracepoint kfree_skb (lbp_kfree)" …
    pub attached: Vec<String>,
    /// BGP segments read from packet sockets (kernels without tcx).
    pub packets: Option<packet::PacketCapture>,
    /// The programs' own log (`--debug-bpf`).
    pub bpf_log: Option<BpfLog>,
}

/// The programs' decisions for traced packets, as aya-log records, written
/// to stderr (escaped) for debugging lbpath itself and for bug reports.
pub struct BpfLog(aya_log::EbpfLogger<StderrLog>);

impl BpfLog {
    /// Prints what the programs logged since last time.
    pub fn flush(&mut self) {
        self.0.flush();
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }
}

/// aya-log hands records to a `log::Log`; this one prints them.
pub struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let text = record.args().to_string();
        let clean: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        eprintln!("lbpath: bpf: {clean}");
    }

    fn flush(&self) {}
}

/// LB_SET's key for an address or range: family, padding, address.
fn lb_key(net: &IpNet) -> LpmKey<[u8; 20]> {
    let (addr, family) = addr_bytes(net.addr());
    let mut data = [0u8; 20];
    data[0] = family;
    data[4..].copy_from_slice(&addr);
    LpmKey::new(LB_KEY_BITS + net.prefix_len() as u32, data)
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
        let release = crate::netinfo::kernel_release();
        config = std::fs::read_to_string(format!("/boot/config-{release}")).unwrap_or_default();
    }
    hz_from_config(&config).unwrap_or(1000)
}

/// Jiffies that fill an empty bucket of `burst` connections at `rate` a
/// second (rounded up, at least one): the programs count a longer gap as
/// this long.
fn refill_jiffies(burst: u32, rate: u32, hz: u64) -> u32 {
    let j = (u64::from(burst) * hz).div_ceil(u64::from(rate.max(1)));
    u32::try_from(j.max(1)).unwrap_or(u32::MAX)
}

/// How long conntrack keeps an idle, unanswered UDP entry: a flow idle
/// longer is a new connection when it sends again (30 s when unreadable,
/// the kernel's default).
fn conntrack_udp_timeout_secs() -> u32 {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_udp_timeout")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(30)
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

/// A load error with the verifier's log cut to its last lines, which say
/// why (the whole log can run to thousands of lines); all of it with -vv.
fn verifier_tail(text: &str) -> String {
    let keep = if tracing::enabled!(tracing::Level::DEBUG) {
        usize::MAX
    } else {
        12
    };
    match text.split_once("Verifier output:") {
        Some((head, log)) => {
            let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = &lines[lines.len().saturating_sub(keep)..];
            format!(
                "{head}Verifier output ({} of {} lines):\n  {}",
                tail.len(),
                lines.len(),
                tail.join("\n  ")
            )
        }
        None => text.to_string(),
    }
}

/// One clear line for the usual reason a load fails.
fn permission_hint(e: &(dyn std::error::Error + 'static)) -> Option<UsageError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            // EPERM only: the verifier rejects with EACCES, which is a bug, not privilege.
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return Some(match crate::cli::check_privileges() {
                Err(no_caps) => no_caps,
                // The privilege is there: something else stands between
                // lbpath and bpf(), and "run it with sudo" would not help.
                Ok(()) => UsageError(blocked_bpf(
                    &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
                    &std::fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default(),
                )),
            });
        }
        cur = err.source();
    }
    None
}

/// Why bpf() says EPERM to a process that has the capabilities, from its
/// /proc/self/status and the kernel's lockdown file.
fn blocked_bpf(status: &str, lockdown: &str) -> String {
    let seccomp = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim);
    // The selected mode is the bracketed one: "none [integrity] confidentiality".
    let mode = lockdown
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'));
    if seccomp == Some("2") {
        "the kernel refused bpf() (EPERM) although lbpath has the capabilities it needs: a seccomp filter blocks it (container runtimes' default profile does): run the container privileged or with seccomp unconfined (kubectl debug --profile=sysadmin)".into()
    } else if let Some(m @ ("integrity" | "confidentiality")) = mode {
        format!(
            "the kernel refused bpf() (EPERM) although lbpath has the capabilities it needs: kernel lockdown is in {m} mode, which forbids the tracing programs lbpath loads"
        )
    } else {
        "the kernel refused bpf() (EPERM) although lbpath has the capabilities it needs: a security module (SELinux, AppArmor, BPF LSM) or a sysctl may block it; the audit log names it".into()
    }
}

/// What attaching found, as it goes.
#[derive(Default)]
struct Attached {
    caps: Capabilities,
    notices: Vec<String>,
    what: Vec<String>,
}

/// A refusal by privilege ends the start (one clear line); anything else
/// is the caller's to degrade gracefully.
fn privilege_first(e: anyhow::Error) -> Result<anyhow::Error> {
    match permission_hint(e.as_ref()) {
        Some(u) => Err(anyhow!(u)),
        None => Ok(e),
    }
}

impl Tracer {
    /// Creates the maps, verifies the programs this session needs (in
    /// parallel: the verifier runs in the loading thread) and attaches them.
    pub fn load(
        opts: &LoadOptions,
        kernel: &KernelFacts,
        prep: Prepared,
        tl: &Timeline,
    ) -> Result<Self> {
        let node_netns = own_netns()?;
        let Prepared { loader, btf } = prep;
        let mut ebpf = tl.time("maps and object", || {
            load_object(loader, &btf, opts, kernel, node_netns)
        })?;
        let mut a = Attached::default();
        let want = wanted_programs(opts, kernel);
        let nf_object = if want.netfilter.is_empty() {
            None
        } else {
            Some(tl.time("netfilter object relocated", || {
                netfilter::prepare(OBJECT, &ebpf)
            }))
        };
        let mut verified = verify_all(&mut ebpf, &btf, &want, nf_object.as_ref(), tl);
        drop(btf);
        let began = std::time::Instant::now();
        attach_tracepoints(&mut ebpf, &want, &mut verified, &mut a)?;
        let packets = if want.tc {
            attach_bgp(&mut ebpf, opts, &mut verified, &mut a)?
        } else if opts.bgp && !opts.tc_ifaces.is_empty() {
            start_packet_capture(
                opts,
                anyhow!("this kernel has no tcx links (before 6.6)"),
                &mut a,
            )
        } else {
            None
        };
        let nf_links = attach_netfilter(nf_object, verified.nf, opts, kernel, &mut a)?;
        tl.done("links", began);
        let bpf_log = if opts.debug_bpf {
            let l = aya_log::EbpfLogger::init_with_logger(&mut ebpf, StderrLog)
                .map_err(|e| anyhow!("reading the programs' log: {e}"))?;
            Some(BpfLog(l))
        } else {
            None
        };
        Ok(Self {
            ebpf,
            _nf_links: nf_links,
            node_netns,
            plan: opts.plan.clone(),
            caps: a.caps,
            notices: a.notices,
            attached: a.what,
            packets,
            bpf_log,
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
        let packets_lost = self
            .packets
            .as_ref()
            .map_or(0, |p| p.lost.load(std::sync::atomic::Ordering::Relaxed));
        Ok(Stats {
            lost_events: sum(STAT_LOST_EVENTS)? + sum(STAT_NESTED)? + packets_lost,
            flows: sum(STAT_FLOWS)?,
            shed_flows: sum(STAT_SHED)?,
            over_rate_flows: sum(STAT_OVER_RATE)?,
            traced_packets: sum(STAT_TRACKED)?,
        })
    }

    /// The totals of connection `conn` of `flow`, while it is the tuple's
    /// current one (a later connection on the same tuple replaces them).
    pub fn counters(&self, flow: &Tuple, conn: u64) -> Option<FlowState> {
        let map: aya::maps::HashMap<_, Tuple, FlowState> =
            aya::maps::HashMap::try_from(self.ebpf.map("FLOWS")?).ok()?;
        map.get(flow, 0).ok().filter(|s| s.conn == conn)
    }

    /// Replaces the watched addresses and ranges (used when there are
    /// several; a single address is compiled into the configuration).
    pub fn set_targets(&mut self, targets: &Targets) -> Result<()> {
        if targets.single().is_some() {
            return Ok(());
        }
        let mut map: LpmTrie<_, [u8; 20], u8> = LpmTrie::try_from(
            self.ebpf
                .map_mut("LB_SET")
                .ok_or_else(|| anyhow!("LB_SET map missing"))?,
        )?;
        let want: Vec<LpmKey<[u8; 20]>> = targets.nets().iter().map(lb_key).collect();
        let old: Vec<LpmKey<[u8; 20]>> = map.keys().filter_map(|k| k.ok()).collect();
        for k in old {
            let _ = map.remove(&k);
        }
        if want.len() > LB_SET_MAX as usize {
            return Err(anyhow!(
                "{} addresses and ranges to watch: at most {LB_SET_MAX}",
                want.len()
            ));
        }
        for k in &want {
            map.insert(k, 1, 0)?;
        }
        Ok(())
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

/// What loading needs before the node's rules are read (they decide the
/// configuration), made meanwhile: aya's loader, and aya's reading of the
/// kernel's BTF for attaching tp_btf programs.
pub struct Prepared {
    loader: EbpfLoader<'static>,
    btf: Btf,
}

/// Both parse the kernel's BTF (`EbpfLoader::new` reads its own copy, and
/// there is no constructor that takes one), one after the other on a
/// thread of their own while the caller reads the node's rules: the
/// loader's copy (13 MiB or so) is dropped at once, so the two never sit in
/// memory together, nor beside a big ruleset being read.
pub fn prepare(tl: &Timeline) -> Result<Prepared> {
    let mut loader = tl.time("BTF parsed and dropped (aya loader)", EbpfLoader::new);
    loader.btf(None);
    // aya probes the kernel's features on first use: here, meanwhile.
    tl.time("kernel features probed", aya::features);
    let btf = tl.time("BTF parsed (aya, for attaching)", || {
        Btf::parse_file(crate::btf::vmlinux_path(), aya::Endianness::default())
            .context("reading the kernel BTF")
    })?;
    Ok(Prepared { loader, btf })
}

/// The object with this run's configuration, maps created, nothing attached.
fn load_object(
    loader: EbpfLoader<'static>,
    btf: &Btf,
    opts: &LoadOptions,
    kernel: &KernelFacts,
    node_netns: u32,
) -> Result<Ebpf> {
    // One address: compared in place; else looked up in LB_SET.
    let (lb_addr, lb_family) = match opts.targets.single() {
        Some(ip) => addr_bytes(ip),
        None => ([0; 16], 0),
    };
    let mut flags = if opts.targets.single().is_some() {
        0
    } else {
        CFG_LB_SET
    };
    if opts.arp {
        flags |= CFG_ARP;
    }
    if opts.bgp {
        flags |= CFG_BGP;
    }
    if opts.empty {
        flags |= CFG_EMPTY;
    }
    if opts.capture {
        flags |= CFG_CAPTURE;
    }
    let hz = kernel_hz();
    let config = Config {
        lb_addr,
        lb_family,
        proto: opts.proto,
        port: opts.port,
        node_netns,
        trace_packets: opts.trace_packets,
        drop_events: opts.drop_events,
        window_jiffies: 5 * hz,
        nf_last_pos: opts.plan.last_pos(),
        flags,
        conn_idle_secs: conntrack_udp_timeout_secs(),
        new_flows_per_sec: opts.new_flows_per_sec,
        hz: hz as u32,
        new_flows_burst: opts.new_flows_burst,
        refill_jiffies: refill_jiffies(opts.new_flows_burst, opts.new_flows_per_sec, hz),
        layout: kernel.layout,
    };
    // aya-log's level: 0 keeps every log statement out of the verified
    // program (the branch on a frozen constant is pruned), 4 is Debug.
    let log_level: u8 = if opts.debug_bpf { 4 } else { 0 };
    // Borrowing this call's values from here on.
    let mut loader: EbpfLoader<'_> = loader;
    // A smaller ring buffer, for tests that must overflow it (a power of
    // two, in KiB, at least a page).
    if let Some(kib) = std::env::var("LBPATH_RING_KIB")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|k| k.is_power_of_two() && *k >= 4)
    {
        loader.map_max_entries("EVENTS", kib * 1024);
    }
    // The parsed BTF replaces the loader's own copy (freed here): the
    // object has no CO-RE relocations for it, but either would do.
    loader
        .btf(Some(btf))
        .override_global("CONFIG", &config, true)
        .override_global("AYA_LOG_LEVEL", &log_level, true)
        .load(OBJECT)
        .map_err(|e| match permission_hint(&e) {
            Some(u) => anyhow!(u),
            None => anyhow!(e).context("loading lbpath's eBPF object"),
        })
}

/// The programs this session loads: one variant per tracepoint the kernel
/// has, the TC pair only for BGP on a kernel with tcx, and only as many
/// netfilter programs as the plan has points at its busiest hook.
struct Wanted {
    /// (tracepoint, program, required, without)
    tracepoints: Vec<(&'static TracepointHook, Option<&'static str>)>,
    tc: bool,
    netfilter: Vec<String>,
}

fn wanted_programs(opts: &LoadOptions, kernel: &KernelFacts) -> Wanted {
    let tracepoints = TRACEPOINTS
        .iter()
        .map(|h| {
            let available = kernel.tracepoint_args.get(h.tracepoint).copied();
            (h, available.and_then(|n| pick_variant(h, n)))
        })
        .collect();
    let points = opts.plan.points.iter().map(Vec::len).max().unwrap_or(0);
    let netfilter = if kernel.netfilter_links {
        (0..points).map(|p| format!("lbp_nf_{p}")).collect()
    } else {
        Vec::new()
    };
    Wanted {
        tracepoints,
        tc: opts.bgp && !opts.tc_ifaces.is_empty() && kernel.tcx,
        netfilter,
    }
}

/// What the verifier said about each program.
#[derive(Default)]
struct Verified {
    /// aya programs by name: Ok when loaded.
    aya: HashMap<String, Result<()>>,
    /// The netfilter programs, or why they did not load.
    nf: Option<Result<netfilter::NfPrograms>>,
}

/// One program to verify.
enum Job<'a> {
    Tracepoint(&'a str, &'a mut BtfTracePoint, &'static str),
    Tc(&'a str, &'a mut SchedClassifier),
    Netfilter(&'a netfilter::NfObject, &'a str),
}

enum JobResult {
    Aya(String, Result<()>),
    Netfilter(String, Result<OwnedFd>),
}

/// Loads every wanted program, as many at once as there are CPUs.
fn verify_all(
    ebpf: &mut Ebpf,
    btf: &Btf,
    want: &Wanted,
    nf_object: Option<&Result<netfilter::NfObject>>,
    tl: &Timeline,
) -> Verified {
    let tp_names: HashMap<&str, &'static str> = want
        .tracepoints
        .iter()
        .filter_map(|(h, p)| Some(((*p)?, h.tracepoint)))
        .collect();
    let mut jobs: Vec<Job> = Vec::new();
    let mut out = Verified::default();
    for (name, prog) in ebpf.programs_mut() {
        if let Some(tp) = tp_names.get(name) {
            match <&mut BtfTracePoint>::try_from(prog) {
                Ok(p) => jobs.push(Job::Tracepoint(name, p, tp)),
                Err(e) => {
                    out.aya.insert(name.to_string(), Err(e.into()));
                }
            }
        } else if want.tc && name.starts_with("lbp_tc_") {
            match <&mut SchedClassifier>::try_from(prog) {
                Ok(p) => jobs.push(Job::Tc(name, p)),
                Err(e) => {
                    out.aya.insert(name.to_string(), Err(e.into()));
                }
            }
        }
    }
    match nf_object {
        Some(Ok(obj)) => jobs.extend(want.netfilter.iter().map(|n| Job::Netfilter(obj, n))),
        Some(Err(e)) => out.nf = Some(Err(anyhow!("{e:#}"))),
        None => {}
    }
    let queue = std::sync::Mutex::new(jobs.into_iter());
    let results = std::sync::Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let began = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let job = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some(job) = job else { break };
                    let r = run_job(job, btf, tl);
                    results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                }
            });
        }
    });
    tl.done(format!("verifier, {workers} at once"), began);
    let mut nf = HashMap::new();
    let mut nf_err = None;
    for r in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
        match r {
            JobResult::Aya(name, r) => {
                out.aya.insert(name, r);
            }
            JobResult::Netfilter(name, Ok(fd)) => {
                nf.insert(name, fd);
            }
            // The first failure says why; the others are alike.
            JobResult::Netfilter(_, Err(e)) => {
                nf_err.get_or_insert(e);
            }
        }
    }
    if out.nf.is_none() && !want.netfilter.is_empty() {
        out.nf = Some(match nf_err {
            Some(e) => Err(e),
            None => Ok(netfilter::NfPrograms::new(nf)),
        });
    }
    out
}

fn run_job(job: Job, btf: &Btf, tl: &Timeline) -> JobResult {
    let began = std::time::Instant::now();
    let (name, r) = match job {
        Job::Tracepoint(name, p, tp) => (
            name,
            JobResult::Aya(name.into(), p.load(tp, btf).map_err(Into::into)),
        ),
        Job::Tc(name, p) => (
            name,
            JobResult::Aya(name.into(), p.load().map_err(Into::into)),
        ),
        Job::Netfilter(obj, name) => (name, JobResult::Netfilter(name.into(), obj.load(name))),
    };
    tl.done(format!("verifier: {name}"), began);
    r
}

/// Each tracepoint with the variant its kernel signature calls for.
fn attach_tracepoints(
    ebpf: &mut Ebpf,
    want: &Wanted,
    verified: &mut Verified,
    a: &mut Attached,
) -> Result<()> {
    for (hook, prog) in &want.tracepoints {
        let tp = hook.tracepoint;
        let res = match prog {
            Some(prog) => match verified.aya.remove(*prog) {
                Some(Ok(())) => attach_tracepoint(ebpf, prog),
                Some(Err(e)) => Err(e),
                None => Err(anyhow!("program {prog} missing from the object")),
            },
            None => Err(anyhow!("this kernel has no such tracepoint")),
        };
        match (res, prog) {
            (Ok(()), Some(prog)) => {
                a.what.push(format!("tracepoint {tp} ({prog})"));
                match *prog {
                    "lbp_kfree" => a.caps.drop_reasons = true,
                    "lbp_kfree_noreason" => a.notices.push(
                        "this kernel's kfree_skb carries no drop reason (before 5.17): drops are named after the kernel function that freed the packet".into(),
                    ),
                    "lbp_fib" => a.caps.fib = true,
                    _ => {}
                }
            }
            (Ok(()), None) => {}
            (Err(e), _) => {
                let e = privilege_first(e)?;
                let why = verifier_tail(&format!("{e:#}"));
                if hook.required {
                    return Err(anyhow!("attaching to tracepoint {tp}: {why}"));
                }
                a.notices.push(format!(
                    "tracepoint {tp} unavailable ({why}): {}",
                    hook.without
                ));
            }
        }
    }
    Ok(())
}

/// BGP segments: tcx programs where the kernel has tcx links, else the
/// same segments through filtered packet sockets.
fn attach_bgp(
    ebpf: &mut Ebpf,
    opts: &LoadOptions,
    verified: &mut Verified,
    a: &mut Attached,
) -> Result<Option<packet::PacketCapture>> {
    let e = match attach_tc(ebpf, verified, &opts.tc_ifaces) {
        Ok(()) => {
            a.caps.tcx = true;
            a.what.push(format!("tcx on {}", opts.tc_ifaces.join(", ")));
            return Ok(None);
        }
        Err(e) => privilege_first(e)?,
    };
    Ok(start_packet_capture(opts, e, a))
}

/// BGP segments through packet sockets, when tcx (`why`) is not to be had.
fn start_packet_capture(
    opts: &LoadOptions,
    why: anyhow::Error,
    a: &mut Attached,
) -> Option<packet::PacketCapture> {
    let ifaces: Vec<(u32, String)> = opts
        .tc_ifaces
        .iter()
        .filter_map(|n| Some((ifindex(n)?, n.clone())))
        .collect();
    match packet::start(&ifaces) {
        Ok(p) => {
            a.what
                .push(format!("packet sockets on {}", opts.tc_ifaces.join(", ")));
            tracing::info!("BGP capture through packet sockets: {why:#}");
            Some(p)
        }
        Err(pe) => {
            a.notices.push(format!(
                "BGP capture unavailable (tcx: {why:#}; packet sockets: {pe:#}); BGP sessions are not shown"
            ));
            None
        }
    }
}

/// The netfilter points of the plan, where the kernel has BPF netfilter links.
fn attach_netfilter(
    object: Option<Result<netfilter::NfObject>>,
    progs: Option<Result<netfilter::NfPrograms>>,
    opts: &LoadOptions,
    kernel: &KernelFacts,
    a: &mut Attached,
) -> Result<Vec<OwnedFd>> {
    if !kernel.netfilter_links {
        a.notices.push(
            "this kernel has no BPF netfilter links (before 6.4): NAT and netfilter hops are inferred from the packets and conntrack, and marked so".into(),
        );
        return Ok(Vec::new());
    }
    // The relocated copy of the object is no longer needed.
    drop(object);
    let progs = match progs {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            let e = privilege_first(e)?;
            a.notices.push(format!(
                "BPF netfilter programs did not load ({e:#}): NAT and netfilter hops are inferred"
            ));
            return Ok(Vec::new());
        }
        // A plan without points: nothing to attach.
        None => return Ok(Vec::new()),
    };
    let mut families = Vec::new();
    if opts.targets.has_v4() {
        families.push(netfilter::NFPROTO_IPV4);
    }
    if opts.targets.has_v6() {
        families.push(netfilter::NFPROTO_IPV6);
    }
    let mut links = Vec::new();
    for pf in families {
        for (hook, points) in opts.plan.points.iter().enumerate() {
            for (pos, prio) in points.iter().enumerate() {
                let name = format!("lbp_nf_{pos}");
                let range = opts.plan.free_range(hook as u8, pos as u8);
                links.push(attach_free(&progs, &name, pf, hook as u8, *prio, range)?);
            }
        }
    }
    a.caps.netfilter_links = true;
    a.what.push(format!("{} netfilter links", links.len()));
    Ok(links)
}

/// Attaches at `prio`, or, when another BPF netfilter program holds it (a
/// second lbpath: the kernel allows one program per priority), at the
/// nearest free priority of the same band.
fn attach_free(
    progs: &netfilter::NfPrograms,
    name: &str,
    pf: u32,
    hook: u8,
    prio: i32,
    (lo, hi): (i32, i32),
) -> Result<OwnedFd> {
    let candidates = (0..64i64).flat_map(|d| [prio as i64 + d, prio as i64 - d - 1]);
    for p in candidates.filter(|&p| p >= lo as i64 && p <= hi as i64) {
        match progs.attach(name, pf, hook as u32, p as i32) {
            Ok(fd) => return Ok(fd),
            Err(e) if is_busy(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(anyhow!(
        "another BPF netfilter program holds priority {prio} at hook {} and the priorities around it: stop the other tracer or retry",
        crate::nfplan::hook_name(hook)
    ))
}

fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EBUSY))
    })
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

fn attach_tracepoint(ebpf: &mut Ebpf, prog: &str) -> Result<()> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| anyhow!("program {prog} missing from the object"))?
        .try_into()?;
    p.attach()?;
    Ok(())
}

/// TC programs on each interface, both directions, as tcx links (they leave
/// no qdisc behind and go away with the process).
fn attach_tc(ebpf: &mut Ebpf, verified: &mut Verified, ifaces: &[String]) -> Result<()> {
    for (prog, dir) in [
        ("lbp_tc_ingress", TcAttachType::Ingress),
        ("lbp_tc_egress", TcAttachType::Egress),
    ] {
        match verified.aya.remove(prog) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(anyhow!("program {prog} missing from the object")),
        }
        let p: &mut SchedClassifier = ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("program {prog} missing from the object"))?
            .try_into()?;
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
    /// Of `flows`, new connections left untraced while the ring buffer was
    /// three quarters full (counted, not lost).
    pub shed_flows: u64,
    /// Of `flows`, new connections left untraced over the trace rate.
    pub over_rate_flows: u64,
    pub traced_packets: u64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_blocked_bpf_names_what_blocks_it() {
        let seccomp = "Name:\tlbpath\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        let none = "Name:\tlbpath\nSeccomp:\t0\n";
        assert!(super::blocked_bpf(seccomp, "").contains("seccomp filter"));
        let l = super::blocked_bpf(none, "none integrity [confidentiality]\n");
        assert!(l.contains("lockdown is in confidentiality mode"), "{l}");
        let l = super::blocked_bpf(none, "[none] integrity confidentiality\n");
        assert!(l.contains("security module"), "{l}");
        assert!(!l.contains('\n'));
    }

    use super::*;

    #[test]
    fn the_refill_gap_fills_the_bucket_and_no_more() {
        // 2000 at 200 a second: ten seconds; rounded up.
        assert_eq!(refill_jiffies(2000, 200, 250), 2500);
        assert_eq!(refill_jiffies(10, 3, 100), 334);
        // A rate above the burst still waits a jiffy.
        assert_eq!(refill_jiffies(1, 1_000_000, 100), 1);
        // The largest inputs still fit the field.
        assert_eq!(refill_jiffies(1_000_000, 1, 1000), 1_000_000_000);
    }

    #[test]
    fn verifier_logs_are_cut_to_their_end() {
        let log: String = (0..100).map(|i| format!("{i}: insn\n")).collect();
        let t = verifier_tail(&format!(
            "load failed. Verifier output: {log}R4 prohibited\n"
        ));
        assert!(
            t.starts_with("load failed. Verifier output (12 of 101 lines):"),
            "{t}"
        );
        assert!(t.ends_with("R4 prohibited"), "{t}");
        assert!(!t.contains("\n  0: insn"));
        assert_eq!(verifier_tail("plain"), "plain");
    }

    #[test]
    fn variants_follow_the_kernels_arguments() {
        let kfree = TRACEPOINTS
            .iter()
            .find(|h| h.tracepoint == "kfree_skb")
            .unwrap();
        // 6.11+ (reason and receiving socket), 5.17+ (reason), 5.10 (none).
        assert_eq!(pick_variant(kfree, 4), Some("lbp_kfree"));
        assert_eq!(pick_variant(kfree, 3), Some("lbp_kfree"));
        assert_eq!(pick_variant(kfree, 2), Some("lbp_kfree_noreason"));
        assert_eq!(pick_variant(kfree, 1), None);
        let consume = TRACEPOINTS
            .iter()
            .find(|h| h.tracepoint == "consume_skb")
            .unwrap();
        assert_eq!(pick_variant(consume, 1), Some("lbp_consume_noloc"));
        assert_eq!(pick_variant(consume, 2), Some("lbp_consume"));
        let rst = TRACEPOINTS
            .iter()
            .find(|h| h.tracepoint == "tcp_send_reset")
            .unwrap();
        assert_eq!(pick_variant(rst, 2), Some("lbp_tcp_reset_noreason"));
        // Only the receive hook is indispensable.
        assert_eq!(TRACEPOINTS.iter().filter(|h| h.required).count(), 1);
    }

    #[test]
    fn hz() {
        assert_eq!(
            hz_from_config("# x\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(hz_from_config("nothing"), None);
    }
}
