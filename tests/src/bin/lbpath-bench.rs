//! `cargo xtask bench`: what lbpath costs next to other ways of watching
//! the same traffic, as one table from one run, in the lab.
//!
//! The observers, attached in turn to the lab's node:
//! - nothing (the baseline);
//! - empty: lbpath's own programs on lbpath's hooks (tracepoints, netfilter
//!   points), each returning at its first instruction (`--empty-programs`):
//!   what the hooks cost by themselves;
//! - tcpdump `-i any`, a host filter, `-w /dev/null`;
//! - bpftrace counting `netif_receive_skb` and `kfree_skb` (it needs tracefs:
//!   mounted for it in a mount namespace of its own, gone with it);
//! - lbpath watch.
//!
//! For each: the throughput of an iperf3 bulk stream to the LB IP (DNAT to
//! the pod) and of one to the pod directly through the node (unrelated
//! traffic), each run divided by the mean of the baseline runs just before
//! and after it (observers interleaved with baseline runs, several rounds
//! in rotating order, medians), with the kernel's bpf_stats off; eBPF time
//! per packet from bpf_stats for the observer's own programs (found through
//! its process's descriptors, not by name), over the same two streams run
//! again with them on; attach time (start until it says it is
//! ready); RSS. For lbpath also: a burst of short connections (each flow
//! reported once, none lost), a flood of new flows (each reported or
//! counted as not reported), and its attach time and peak RSS on a node
//! with thousands of Services, in both kube-proxy modes.
//!
//! Prints one table and the goals; exits non-zero when a goal is missed.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use lbpath_tests::{
    bpf,
    kubeproxy_rules::scale_services,
    lab::{self, KubeProxy, Lab, LabSpec},
    netns::{self, Iperf, in_ns},
    run::{Running, json_lines, lbpath_bin},
};

/// Goals (README, "Cost").
const GOAL_RATIO_LB: f64 = 0.98;
const GOAL_RATIO_OTHER: f64 = 0.995;
/// lbpath's eBPF time per packet, at most this many times the empty program's.
const GOAL_NS_FACTOR: f64 = 2.0;
const GOAL_ATTACH: Duration = Duration::from_millis(300);
const GOAL_FLOOD_RATE: f64 = 50_000.0;
const GOAL_RSS_SMALL_MIB: f64 = 30.0;
const GOAL_RSS_SCALE_MIB: f64 = 64.0;

const IPERF_PORT: u16 = 5201;
/// bpf_stats per packet: per MSS-sized segment of payload (GSO and GRO
/// batch them into fewer, bigger skbs, differently on each path).
const MSS: f64 = 1448.0;
/// The flood's own client address (its resets must not meet the burst's sockets).
const FLOOD_SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const BPFTRACE_PROG: &str = "tracepoint:net:netif_receive_skb { @rx = count(); } \
     tracepoint:skb:kfree_skb { @drop = count(); } BEGIN { printf(\"ready\\n\"); }";

struct Args {
    rounds: usize,
    secs: u32,
    burst: usize,
    flood: u16,
    flood_rate: u32,
    scale: usize,
    /// Only these parts (`--only`, repeatable): throughput, burst, flood,
    /// scale. All when empty; the goals of the others are not checked.
    only: Vec<String>,
}

impl Args {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

const PARTS: [&str; 4] = ["throughput", "burst", "flood", "scale"];

impl Default for Args {
    fn default() -> Self {
        Self {
            rounds: 5,
            secs: 3,
            burst: 2000,
            flood: 60_000,
            flood_rate: 60_000,
            scale: 2000,
            only: Vec::new(),
        }
    }
}

fn parse_args() -> Result<Args> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--lbpath" => {
                let p = PathBuf::from(val()?);
                // SAFETY: single-threaded here, before anything reads it.
                unsafe { std::env::set_var("LBPATH_BIN", p) };
            }
            "--rounds" => a.rounds = val()?.parse()?,
            "--seconds" => a.secs = val()?.parse()?,
            "--burst" => a.burst = val()?.parse()?,
            "--flood" => a.flood = val()?.parse()?,
            "--flood-rate" => a.flood_rate = val()?.parse()?,
            "--services" => a.scale = val()?.parse()?,
            "--only" => {
                let part = val()?;
                if !PARTS.contains(&part.as_str()) {
                    bail!("--only takes one of {}", PARTS.join(", "));
                }
                a.only.push(part);
            }
            "-h" | "--help" => {
                println!(
                    "lbpath-bench [--lbpath PATH] [--rounds 5] [--seconds 3] [--burst 2000] \
                     [--flood 60000] [--flood-rate 60000] [--services 2000] \
                     [--only throughput|burst|flood|scale]..."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if a.rounds == 0 || a.secs == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    Ok(a)
}

fn main() {
    let outcome = parse_args().and_then(|a| run(&a));
    match outcome {
        Ok(true) => println!("\nall goals met"),
        Ok(false) => {
            eprintln!("\nbench: a goal was missed");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            std::process::exit(1);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Obs {
    Empty,
    Tcpdump,
    Bpftrace,
    Lbpath,
}

const OBSERVERS: [Obs; 4] = [Obs::Empty, Obs::Tcpdump, Obs::Bpftrace, Obs::Lbpath];

impl Obs {
    fn name(self) -> &'static str {
        match self {
            Obs::Empty => "empty program",
            Obs::Tcpdump => "tcpdump",
            Obs::Bpftrace => "bpftrace",
            Obs::Lbpath => "lbpath",
        }
    }

    /// Starts it and waits until it says it is ready: the time that took.
    fn start(self, node: &str) -> Result<(Running, Duration)> {
        let limit = Duration::from_secs(60);
        let lbpath = |extra: &[&str]| {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", node])
                .arg(lbpath_bin())
                .args(["watch", &lab::LB.to_string(), "--json"])
                .args(extra)
                .env("NO_COLOR", "1");
            c
        };
        let (cmd, marker) = match self {
            Obs::Empty => (lbpath(&["--empty-programs"]), "lbpath: watching"),
            Obs::Lbpath => (lbpath(&[]), "lbpath: watching"),
            Obs::Tcpdump => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", node, "tcpdump", "-i", "any", "-n"])
                    .args(["-w", "/dev/null", "host", &lab::LB.to_string()]);
                (c, "listening on")
            }
            Obs::Bpftrace => {
                // tracefs in a private mount namespace: mounted for
                // bpftrace alone, unmounted when it exits.
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg(format!(
                        "mount -t tracefs tracefs /sys/kernel/tracing && exec bpftrace -e '{BPFTRACE_PROG}'"
                    ));
                (c, "ready")
            }
        };
        Running::spawn_until(cmd, marker, limit)
            .with_context(|| format!("starting {}", self.name()))
    }
}

/// A figure read from a sample, when it has one.
type Metric = dyn Fn(&Sample) -> Option<f64>;

/// One observer's run: two streams with it attached.
#[derive(Debug, Clone, Default)]
struct Sample {
    ratio_lb: f64,
    ratio_other: f64,
    ns_lb: Option<f64>,
    ns_other: Option<f64>,
    attach: Duration,
    rss: f64,
    /// The LB stream program by program: where the time per packet goes.
    per_prog_lb: String,
}

struct Streams {
    lb: Iperf,
    other: Iperf,
}

struct Bench {
    lab: Lab,
    lb: SocketAddr,
    other: SocketAddr,
    secs: u32,
}

impl Bench {
    fn new(secs: u32) -> Result<Self> {
        let mut lab = Lab::new("bench", LabSpec::default())?;
        let mut svc = lab::web_service(vec![lab::pod_endpoint()], false);
        svc.name = "bulk".into();
        svc.port_name = "data".into();
        svc.port = IPERF_PORT;
        svc.node_port = Some(30201);
        svc.cluster_ip = Ipv4Addr::new(10, 96, 0, 20);
        svc.endpoints[0].port = IPERF_PORT;
        lab.spec.services.push(svc);
        let (node, pod, client) = (lab.node(), lab.pod(), lab.client());
        lab.install_rules(&node, lab.spec.kube_proxy)?;
        lab.spawn(&pod, &["iperf3", "-s", "-p", &IPERF_PORT.to_string()])?;
        // Unrelated traffic: the same pod, addressed directly, through the
        // node (the client routes the pod network via the node).
        in_ns(
            &client,
            &[
                "ip",
                "route",
                "add",
                "10.244.1.0/24",
                "via",
                &lab::NODE.to_string(),
            ],
        )?;
        in_ns(
            &client,
            &["ip", "addr", "add", "192.0.2.11/24", "dev", "eth0"],
        )?;
        let b = Self {
            lab,
            lb: SocketAddr::from((lab::LB, IPERF_PORT)),
            other: SocketAddr::from((lab::POD, IPERF_PORT)),
            secs,
        };
        // The server takes a moment to listen; ARP and conntrack warm up.
        netns::wait_for(Duration::from_secs(10), || {
            netns::iperf3(&b.lab.client(), b.lb, 1).ok()
        })
        .context("iperf3 to the LB IP never ran")?;
        netns::iperf3(&b.lab.client(), b.other, 1).context("iperf3 to the pod")?;
        Ok(b)
    }

    fn streams(&self) -> Result<Streams> {
        let client = self.lab.client();
        Ok(Streams {
            other: netns::iperf3(&client, self.other, self.secs)?,
            lb: netns::iperf3(&client, self.lb, self.secs)?,
        })
    }

    /// Starts `obs`, runs both streams, reads its cost, stops it.
    fn observe(&self, obs: Obs) -> Result<(Streams, Sample)> {
        let (r, attach) = obs.start(&self.lab.node())?;
        let ids = bpf::prog_ids_of(r.pid());
        let client = self.lab.client();
        // Throughput with the kernel's per-program statistics off: they add
        // two clock reads to every program run, a cost of the measurement
        // that the observer with the most runs per packet would be charged.
        let other = netns::iperf3(&client, self.other, self.secs)?;
        let lb = netns::iperf3(&client, self.lb, self.secs)?;
        // Then the same two streams again, with them on, for the time spent.
        let stats = Stats::set(true)?;
        let s0 = bpf::stats_of(&ids);
        let other_c = netns::iperf3(&client, self.other, self.secs)?;
        let s1 = bpf::stats_of(&ids);
        let p1 = bpf::programs_of(&ids);
        let lb_c = netns::iperf3(&client, self.lb, self.secs)?;
        let s2 = bpf::stats_of(&ids);
        let p2 = bpf::programs_of(&ids);
        drop(stats);
        let rss = proc_mib(r.pid(), "VmRSS").unwrap_or(0.0);
        r.stop()?;
        let per_pkt = |t0: u64, t1: u64, bytes: u64| {
            (!ids.is_empty()).then(|| (t1 - t0) as f64 / (bytes as f64 / MSS).max(1.0))
        };
        let sample = Sample {
            ns_other: per_pkt(s0.0, s1.0, other_c.bytes),
            ns_lb: per_pkt(s1.0, s2.0, lb_c.bytes),
            attach,
            rss,
            per_prog_lb: per_program(&p1, &p2, lb_c.bytes),
            ..Default::default()
        };
        Ok((Streams { lb, other }, sample))
    }
}

/// Each program that ran between two readings: runs and ns per segment
/// (`bytes` / MSS) and ns per run, most expensive first.
fn per_program(before: &[bpf::ProgStats], after: &[bpf::ProgStats], bytes: u64) -> String {
    let segs = (bytes as f64 / MSS).max(1.0);
    let mut rows: Vec<(String, u64, u64)> = after
        .iter()
        .filter_map(|a| {
            let b = before.iter().find(|b| b.id == a.id)?;
            let runs = a.run_cnt.saturating_sub(b.run_cnt);
            (runs > 0).then(|| {
                (
                    a.name.clone(),
                    runs,
                    a.run_time_ns.saturating_sub(b.run_time_ns),
                )
            })
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.2));
    rows.iter()
        .map(|(name, runs, ns)| {
            format!(
                "{name} {:.2} runs/seg {:.0} ns/run {:.1} ns/seg",
                *runs as f64 / segs,
                *ns as f64 / *runs as f64,
                *ns as f64 / segs
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `VmRSS` / `VmHWM` of a process, MiB.
fn proc_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Turns the kernel's per-program statistics on or off, and back to what
/// they were when dropped.
struct Stats(bool);

impl Stats {
    fn set(on: bool) -> Result<Self> {
        Ok(Self(
            bpf::set_stats(on).context("setting kernel.bpf_stats_enabled")?,
        ))
    }
}

impl Drop for Stats {
    fn drop(&mut self) {
        let _ = bpf::set_stats(self.0);
    }
}

/// What lbpath reported for a burst or a flood.
#[derive(Debug, Default)]
struct Accounting {
    /// Connections of the test's client reported (at most one flow per
    /// connection on a client port).
    reported: usize,
    /// Reports beyond one per connection on the same client port.
    doubled: usize,
    not_reported: u64,
    events_lost: u64,
    events_cut: u64,
}

/// `made`: connections the test made on each client port, when it knows
/// (a port the client reused carries a flow per connection); else one.
fn account(
    out: &str,
    client: Ipv4Addr,
    lb_port: u16,
    made: Option<&HashMap<u16, usize>>,
) -> Result<Accounting> {
    let mut per: HashMap<String, usize> = HashMap::new();
    let mut totals = None;
    let lb = format!("{}:{lb_port}", lab::LB);
    let prefix = format!("{client}:");
    for v in json_lines(out) {
        if let Some(t) = v.get("totals") {
            totals = Some(t.clone());
        }
        let Some(f) = v.get("flow") else { continue };
        // An update tells more of a flow already counted (a late straggler).
        if v["update"] == true {
            continue;
        }
        let c = f["client"].as_str().unwrap_or("");
        if f["lb"] == lb.as_str() && c.starts_with(&prefix) {
            *per.entry(c.to_string()).or_default() += 1;
        }
    }
    let t = totals.context("lbpath printed no totals")?;
    let conns = |client: &str| {
        let port = client
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok());
        port.and_then(|p| made?.get(&p).copied()).unwrap_or(1)
    };
    Ok(Accounting {
        reported: per.iter().map(|(c, n)| *n.min(&conns(c))).sum(),
        doubled: per.iter().map(|(c, n)| n.saturating_sub(conns(c))).sum(),
        not_reported: t["flows_not_reported"].as_u64().unwrap_or(0),
        events_lost: t["events_lost"].as_u64().unwrap_or(0),
        events_cut: t["events_cut"].as_u64().unwrap_or(0),
    })
}

/// Counts flow lines in lbpath's output until it stops growing (or `limit`).
fn settle(r: &Running, want: usize, limit: Duration) {
    let end = Instant::now() + limit;
    let mut last = (0, Instant::now());
    while Instant::now() < end {
        let n = r.stdout().matches("{\"flow\"").count();
        if n >= want {
            return;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) && n > 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

struct Burst {
    conns: usize,
    /// Connections on a client port an earlier one of the burst had used
    /// (closed without TIME_WAIT on the client): flows of their own.
    reused: usize,
    failed: usize,
    took: Duration,
    acc: Accounting,
    rss: f64,
    hwm: f64,
}

/// Short connections to the LB IP, as fast as 8 threads make them.
fn burst(b: &Bench, n: usize) -> Result<Burst> {
    let (r, _) = Obs::Lbpath.start(&b.lab.node())?;
    let t = Instant::now();
    let (ports, failed) = netns::connect_burst(&b.lab.client(), b.lab.lb_addr(), n, 8)?;
    let took = t.elapsed();
    settle(&r, ports.len(), Duration::from_secs(60));
    // Freed heap is handed back every 2 s.
    std::thread::sleep(Duration::from_secs(3));
    let rss = proc_mib(r.pid(), "VmRSS").unwrap_or(f64::NAN);
    let hwm = proc_mib(r.pid(), "VmHWM").unwrap_or(f64::NAN);
    let out = r.stop()?;
    let mut made: HashMap<u16, usize> = HashMap::new();
    for p in &ports {
        *made.entry(*p).or_default() += 1;
    }
    let acc = account(&out.stdout, lab::CLIENT, lab::LB_PORT, Some(&made))?;
    if acc.doubled > 0 {
        // Kept to tell a doubled report from a reused port.
        let keep = std::env::temp_dir().join("lbpath-bench-burst.jsonl");
        std::fs::write(&keep, &out.stdout)?;
        eprintln!(
            "bench: the burst's doubled flows: lbpath's output kept in {}",
            keep.display()
        );
    }
    Ok(Burst {
        conns: ports.len(),
        reused: ports.len() - made.len(),
        failed,
        took,
        acc,
        rss,
        hwm,
    })
}

struct Flood {
    sent: u16,
    /// Medians over the rounds: lbpath attached, nothing attached (what
    /// this machine's sender and stack reach by themselves), and the empty
    /// program on the same hooks (what being attached costs).
    rate: f64,
    rate_alone: f64,
    rate_empty: f64,
    /// Each round's lbpath run: every one must account for its flows.
    runs: Vec<FloodRun>,
}

struct FloodRun {
    /// Flows that reached the node's conntrack.
    arrived: u64,
    acc: Accounting,
    hwm: f64,
}

impl FloodRun {
    /// lbpath counts a flow at its first hook, before conntrack: at least
    /// every flow conntrack took, at most every SYN sent.
    fn accounted(&self, sent: u16) -> bool {
        let n = self.acc.reported as u64 + self.acc.not_reported;
        n >= self.arrived && n <= u64::from(sent) && self.acc.doubled == 0
    }
}

impl Flood {
    /// The run to show: the first that failed to account, else the last.
    fn shown(&self) -> &FloodRun {
        let last = self.runs.last().expect("a flood has rounds");
        self.runs
            .iter()
            .find(|r| !r.accounted(self.sent))
            .unwrap_or(last)
    }
}

/// Rounds of the flood, each sent alone, with the empty program and with
/// lbpath one after the other: a single run's rate swings by a tenth on a
/// shared machine, and interleaving cancels the drift.
const FLOOD_ROUNDS: usize = 3;

/// New flows (SYNs the pod answers and the client resets, all in the
/// kernel) at `rate` a second.
fn flood(b: &Bench, n: u16, rate: u32) -> Result<Flood> {
    let node = b.lab.node();
    let send = || -> Result<f64> {
        let took = netns::syn_flood(&b.lab.client(), FLOOD_SRC, 1024, n, b.lab.lb_addr(), rate)?;
        // The same tuples each time must be new connections to conntrack.
        std::thread::sleep(Duration::from_secs(1));
        in_ns(&node, &["conntrack", "-F"])?;
        Ok(f64::from(n) / took.as_secs_f64())
    };
    let (mut alone, mut empty, mut with) = (Vec::new(), Vec::new(), Vec::new());
    let mut runs = Vec::new();
    for _ in 0..FLOOD_ROUNDS {
        alone.push(send()?);
        let (e, _) = Obs::Empty.start(&node)?;
        empty.push(send()?);
        e.stop()?;
        let (r, _) = Obs::Lbpath.start(&node)?;
        // Entries of the flood's flows outlive it (CLOSE, 10 s): the growth
        // is how many reached the node's netfilter.
        let before = netns::conntrack_entries(&node)?;
        let took = netns::syn_flood(&b.lab.client(), FLOOD_SRC, 1024, n, b.lab.lb_addr(), rate)?;
        with.push(f64::from(n) / took.as_secs_f64());
        std::thread::sleep(Duration::from_secs(1));
        let arrived = netns::conntrack_entries(&node)?.saturating_sub(before);
        settle(&r, arrived as usize, Duration::from_secs(90));
        let hwm = proc_mib(r.pid(), "VmHWM").unwrap_or(f64::NAN);
        let out = r.stop()?;
        in_ns(&node, &["conntrack", "-F"])?;
        runs.push(FloodRun {
            arrived,
            acc: account(&out.stdout, FLOOD_SRC, lab::LB_PORT, None)?,
            hwm,
        });
    }
    Ok(Flood {
        sent: n,
        rate: median(with),
        rate_alone: median(alone),
        rate_empty: median(empty),
        runs,
    })
}

struct Scale {
    mode: &'static str,
    attach: Duration,
    rss: f64,
    hwm: f64,
    breakdown: String,
}

/// lbpath on a node with `n` Services (plus the lab's): attach time, and
/// RSS after a rule change made it read them all again.
fn scale(mode: KubeProxy, n: usize) -> Result<Scale> {
    let mut services = vec![lab::web_service(vec![lab::pod_endpoint()], false)];
    services.extend(scale_services(n));
    let lab = Lab::new(
        "bench-scale",
        LabSpec {
            kube_proxy: mode,
            services,
            speaker: false,
            pod_server: false,
            ..Default::default()
        },
    )?;
    let node = lab.node();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node])
        .arg(lbpath_bin())
        .args(["watch", &lab::LB.to_string(), "--json", "-v"])
        .env("NO_COLOR", "1");
    let (r, attach) = Running::spawn_until(cmd, "lbpath: watching", Duration::from_secs(120))?;
    // A rule change: lbpath reads the whole ruleset again (the nftables
    // generation moved), with the first read's results still held.
    in_ns(&node, &["nft", "add", "table", "ip", "lbpath_bench_touch"])?;
    std::thread::sleep(Duration::from_secs(6));
    let rss = proc_mib(r.pid(), "VmRSS").unwrap_or(f64::NAN);
    let hwm = proc_mib(r.pid(), "VmHWM").unwrap_or(f64::NAN);
    let out = r.stop()?;
    let breakdown = out
        .stderr
        .lines()
        .skip_while(|l| !l.contains("hooks in place"))
        .take_while(|l| !l.starts_with("lbpath:"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Scale {
        mode: match mode {
            KubeProxy::Nftables => "nftables",
            _ => "iptables-nft",
        },
        attach,
        rss,
        hwm,
        breakdown,
    })
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn run(a: &Args) -> Result<bool> {
    for p in ["lbt-bench-", "lbt-bench-scale-"] {
        lab::remove_stale(p);
    }
    println!(
        "lbpath bench: {} rounds of {} s iperf3 streams, {} cores, load average {}",
        a.rounds,
        a.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let mut rounds = None;
    let mut burst_r = None;
    let mut flood_r = None;
    if a.wants("throughput") || a.wants("burst") || a.wants("flood") {
        let b = Bench::new(a.secs)?;
        if a.wants("throughput") {
            let _stats = Stats::set(false)?;
            rounds = Some(throughput(&b, a.rounds)?);
        }
        if a.wants("burst") {
            eprintln!("burst of {} connections …", a.burst);
            burst_r = Some(burst(&b, a.burst)?);
        }
        if a.wants("flood") {
            eprintln!("flood of {} new flows …", a.flood);
            flood_r = Some(flood(&b, a.flood, a.flood_rate)?);
        }
    }
    let mut scales = Vec::new();
    if a.wants("scale") {
        for mode in [KubeProxy::IptablesNft, KubeProxy::Nftables] {
            eprintln!("{} Services, {mode:?} …", a.scale);
            scales.push(scale(mode, a.scale)?);
        }
    }
    if let Some(r) = &rounds {
        print_table(r, burst_r.as_ref());
    }
    if let Some(r) = &rounds {
        for o in [Obs::Empty, Obs::Lbpath] {
            if let Some(s) = r.samples.get(&o).and_then(|v| v.last()) {
                println!(
                    "\n{}, LB stream, last round, per program: {}",
                    o.name(),
                    s.per_prog_lb
                );
            }
        }
    }
    print_details(a, burst_r.as_ref(), flood_r.as_ref(), &scales);
    Ok(goals(
        a,
        rounds.as_ref(),
        burst_r.as_ref(),
        flood_r.as_ref(),
        &scales,
    ))
}

/// Every observer's samples, and the baseline's throughput.
struct Rounds {
    base_lb: Vec<f64>,
    base_other: Vec<f64>,
    samples: HashMap<Obs, Vec<Sample>>,
}

impl Rounds {
    fn med(&self, o: Obs, f: &dyn Fn(&Sample) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.samples.get(&o)?.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    }
}

/// Rounds of: baseline, then each observer followed by a baseline, the
/// observers' order rotating from round to round.
fn throughput(b: &Bench, rounds: usize) -> Result<Rounds> {
    let mut r = Rounds {
        base_lb: Vec::new(),
        base_other: Vec::new(),
        samples: HashMap::new(),
    };
    for round in 0..rounds {
        let mut before = b.streams()?;
        r.base_lb.push(before.lb.bits_per_second);
        r.base_other.push(before.other.bits_per_second);
        for k in 0..OBSERVERS.len() {
            let obs = OBSERVERS[(k + round) % OBSERVERS.len()];
            let (with, mut s) = b.observe(obs)?;
            let after = b.streams()?;
            r.base_lb.push(after.lb.bits_per_second);
            r.base_other.push(after.other.bits_per_second);
            let mean = |x: f64, y: f64| (x + y) / 2.0;
            s.ratio_lb =
                with.lb.bits_per_second / mean(before.lb.bits_per_second, after.lb.bits_per_second);
            s.ratio_other = with.other.bits_per_second
                / mean(before.other.bits_per_second, after.other.bits_per_second);
            eprintln!(
                "round {}: {:<13} LB {:.3} unrelated {:.3} attach {:>4.0} ms",
                round + 1,
                obs.name(),
                s.ratio_lb,
                s.ratio_other,
                s.attach.as_secs_f64() * 1000.0
            );
            r.samples.entry(obs).or_default().push(s);
            before = after;
        }
    }
    Ok(r)
}

fn ms(secs: f64) -> String {
    format!("{:.0} ms", secs * 1000.0)
}

fn print_table(r: &Rounds, burst: Option<&Burst>) {
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("—".into(), f);
    let row = |cols: [String; 8]| {
        println!(
            "{:<14} {:>12} {:>12} {:>10} {:>10} {:>9} {:>19} {:>8}",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7]
        )
    };
    println!();
    row([
        "observer",
        "to LB IP",
        "unrelated",
        "ns/pkt LB",
        "ns/pkt un",
        "attach",
        "burst rep/lost/dbl",
        "RSS MiB",
    ]
    .map(String::from));
    let dash = || "—".to_string();
    row([
        "baseline".into(),
        format!("{:.0} Mb/s", median(r.base_lb.clone()) / 1e6),
        format!("{:.0} Mb/s", median(r.base_other.clone()) / 1e6),
        dash(),
        dash(),
        dash(),
        dash(),
        dash(),
    ]);
    for o in OBSERVERS {
        let burst_col = match (o, burst) {
            (Obs::Lbpath, Some(b)) => format!(
                "{}/{}/{}",
                b.acc.reported,
                b.acc.not_reported + b.acc.events_lost,
                b.acc.doubled
            ),
            _ => dash(),
        };
        row([
            o.name().into(),
            opt(r.med(o, &|s| Some(s.ratio_lb)), &|v| format!("{v:.3}")),
            opt(r.med(o, &|s| Some(s.ratio_other)), &|v| format!("{v:.3}")),
            opt(r.med(o, &|s| s.ns_lb), &|v| format!("{v:.1}")),
            opt(r.med(o, &|s| s.ns_other), &|v| format!("{v:.1}")),
            opt(r.med(o, &|s| Some(s.attach.as_secs_f64())), &ms),
            burst_col,
            opt(r.med(o, &|s| Some(s.rss)), &|v| format!("{v:.1}")),
        ]);
    }
    println!(
        "(medians; throughput: ratio to the baseline runs around it; ns/pkt: bpf_stats of the observer's own programs per {MSS}-byte segment; lost: flows not reported + events lost)"
    );
}

fn print_details(a: &Args, burst: Option<&Burst>, flood: Option<&Flood>, scales: &[Scale]) {
    println!();
    if let Some(b) = burst {
        println!(
            "lbpath, {} short connections in {:.2} s ({} failed, {} on a client port reused): {} flows reported, {} not reported, {} events lost, {} cut, {} doubled; RSS {:.1} MiB after (peak {:.1})",
            b.conns,
            b.took.as_secs_f64(),
            b.failed,
            b.reused,
            b.acc.reported,
            b.acc.not_reported,
            b.acc.events_lost,
            b.acc.events_cut,
            b.acc.doubled,
            b.rss,
            b.hwm
        );
    }
    if let Some(f) = flood {
        let r = f.shown();
        println!(
            "lbpath, flood: {} new flows sent at {:.0}/s ({:.0}/s with nothing attached, {:.0}/s with the empty program; medians of {} rounds), {} reached the node's conntrack: {} reported, {} counted as not reported, {} events lost, {} cut, {} doubled; peak RSS {:.1} MiB",
            f.sent,
            f.rate,
            f.rate_alone,
            f.rate_empty,
            f.runs.len(),
            r.arrived,
            r.acc.reported,
            r.acc.not_reported,
            r.acc.events_lost,
            r.acc.events_cut,
            r.acc.doubled,
            r.hwm
        );
    }
    for s in scales {
        let hooks = hooks_in_place(&s.breakdown).map_or("?".into(), |t| format!("{t:.0} ms"));
        println!(
            "lbpath, {} Services ({}): hooks in place after {hooks}, watching (rules read) after {}, RSS {:.1} MiB after a re-read (peak {:.1})",
            a.scale,
            s.mode,
            ms(s.attach.as_secs_f64()),
            s.rss,
            s.hwm
        );
    }
    for s in scales {
        println!(
            "lbpath -v on the {}-Service node ({}):\n{}",
            a.scale, s.mode, s.breakdown
        );
    }
}

/// The "hooks in place N ms after the start" figure of lbpath's `-v` log.
fn hooks_in_place(log: &str) -> Option<f64> {
    let rest = &log[log.find("hooks in place ")? + "hooks in place ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

fn goals(
    a: &Args,
    rounds: Option<&Rounds>,
    burst: Option<&Burst>,
    flood: Option<&Flood>,
    scales: &[Scale],
) -> bool {
    let mut ok = true;
    let mut goal = |what: &str, met: bool, detail: String| {
        println!(
            "  goal {what:<44} {} ({detail})",
            if met { "met" } else { "MISSED" }
        );
        ok &= met;
    };
    println!("\ngoals:");
    if let Some(r) = rounds {
        let lb = r.med(Obs::Lbpath, &|s| Some(s.ratio_lb)).unwrap_or(0.0);
        let other = r.med(Obs::Lbpath, &|s| Some(s.ratio_other)).unwrap_or(0.0);
        goal(
            "throughput to the LB IP with lbpath",
            lb >= GOAL_RATIO_LB,
            format!("{lb:.3} ≥ {GOAL_RATIO_LB}"),
        );
        goal(
            "unrelated throughput with lbpath",
            other >= GOAL_RATIO_OTHER,
            format!("{other:.3} ≥ {GOAL_RATIO_OTHER}"),
        );
        let per_pkt: [(&str, &Metric); 2] = [
            ("eBPF time per packet, LB stream", &|s| s.ns_lb),
            ("eBPF time per packet, unrelated", &|s| s.ns_other),
        ];
        for (what, f) in per_pkt {
            match (r.med(Obs::Lbpath, f), r.med(Obs::Empty, f)) {
                (Some(m), Some(e)) => goal(
                    what,
                    m <= GOAL_NS_FACTOR * e,
                    format!("{m:.1} ns ≤ {GOAL_NS_FACTOR} × {e:.1} ns of the empty program"),
                ),
                _ => goal(what, false, "no bpf_stats for the programs".into()),
            }
        }
        let attach = r
            .med(Obs::Lbpath, &|s| Some(s.attach.as_secs_f64()))
            .unwrap_or(f64::INFINITY);
        goal(
            "attach time",
            attach <= GOAL_ATTACH.as_secs_f64(),
            format!(
                "{} ≤ {} (load average now {})",
                ms(attach),
                ms(GOAL_ATTACH.as_secs_f64()),
                load_average()
            ),
        );
    }
    if let Some(b) = burst {
        let acc = &b.acc;
        goal(
            "burst: every flow reported once, none lost",
            b.failed == 0
                && b.conns == a.burst
                && acc.reported == b.conns
                && acc.doubled == 0
                && acc.not_reported == 0
                && acc.events_lost == 0
                && acc.events_cut == 0,
            format!(
                "{} of {} reported, {} doubled, {} not reported, {} events lost",
                acc.reported, a.burst, acc.doubled, acc.not_reported, acc.events_lost
            ),
        );
        goal(
            "RSS on the small node after the burst",
            b.rss <= GOAL_RSS_SMALL_MIB,
            format!("{:.1} MiB ≤ {GOAL_RSS_SMALL_MIB} MiB", b.rss),
        );
    }
    if let Some(fl) = flood {
        goal(
            "flood: new flows per second",
            fl.rate >= GOAL_FLOOD_RATE,
            format!(
                "{:.0} ≥ {GOAL_FLOOD_RATE}; {:.0}/s with nothing attached, {:.0}/s with the empty program",
                fl.rate, fl.rate_alone, fl.rate_empty
            ),
        );
        let r = fl.shown();
        let f = &r.acc;
        goal(
            "flood: every flow reported or counted",
            fl.runs.iter().all(|r| r.accounted(fl.sent)),
            format!(
                "{} reported + {} not reported = {}, between {} in conntrack and {} sent; {} doubled",
                f.reported,
                f.not_reported,
                f.reported as u64 + f.not_reported,
                r.arrived,
                fl.sent,
                f.doubled
            ),
        );
    }
    for s in scales {
        goal(
            &format!("peak RSS, {} Services ({})", a.scale, s.mode),
            s.hwm <= GOAL_RSS_SCALE_MIB,
            format!("{:.1} MiB ≤ {GOAL_RSS_SCALE_MIB} MiB", s.hwm),
        );
    }
    ok
}
