//! Command-line arguments and the checks every command makes before it
//! touches the kernel: each failure is one line and exit code 2.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, ValueEnum};
use ipnet::IpNet;

use crate::{UsageError, kubeproxy::Proto};

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// LoadBalancer IPs, or CIDRs (e.g. a MetalLB IPAddressPool's range).
    #[arg(value_name = "LB-IP", value_parser = parse_target, required_unless_present = "all")]
    pub targets: Vec<IpNet>,
    /// Every LoadBalancer and external IP kube-proxy's rules name on this
    /// node, refreshed as the rules change.
    #[arg(long, conflicts_with = "targets")]
    pub all: bool,
    /// Only this LB port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    /// Only this protocol.
    #[arg(long, value_enum)]
    pub proto: Option<ProtoArg>,
    /// Only clients in this CIDR (e.g. 198.51.100.0/24).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub client: Option<IpNet>,
    /// Only flows arriving on this interface.
    #[arg(long, value_name = "NAME")]
    pub iface: Option<String>,
    /// Packets traced hop by hop per flow and direction; later ones are only counted.
    #[arg(long, default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub packets: u32,
    /// New connections traced per second at most, on each CPU, once the
    /// burst (--flow-burst) is spent; more are counted, not traced. Tracing
    /// one costs the node a few dozen events.
    #[arg(long, default_value_t = 200, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_new_flows: u32,
    /// New connections traced at once, on each CPU, before --max-new-flows
    /// applies: a burst this size is traced whole.
    #[arg(long, default_value_t = 2000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub flow_burst: u32,
    /// JSON output (the same as `-o json`).
    #[arg(long)]
    pub json: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, value_name = "FORMAT")]
    pub output: Option<OutputFormat>,
    /// More log output on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Show the kernel programs' decisions about traced packets on stderr
    /// (for debugging lbpath itself and for bug reports).
    #[arg(long)]
    pub debug_bpf: bool,
    /// Load every program on the same hooks as one that returns at once:
    /// what the hooks cost by themselves, the bench's yardstick. Nothing is
    /// traced, so it stays out of --help.
    #[arg(long, hide = true)]
    pub empty_programs: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoArg {
    Tcp,
    Udp,
    Sctp,
}

impl From<ProtoArg> for Proto {
    fn from(p: ProtoArg) -> Self {
        match p {
            ProtoArg::Tcp => Proto::Tcp,
            ProtoArg::Udp => Proto::Udp,
            ProtoArg::Sctp => Proto::Sctp,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

impl CommonArgs {
    pub fn json(&self) -> bool {
        self.json || self.output == Some(OutputFormat::Json)
    }
}

#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Also show BGP sessions (TCP 179) and UPDATEs about the IP.
    #[arg(long)]
    pub bgp: bool,
    /// Do not show ARP for the IP.
    #[arg(long)]
    pub no_arp: bool,
    /// Stop after this long (e.g. 30s, 2m); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Write each traced packet as seen at each hop to this pcapng file
    /// (headers, up to 128 bytes; a comment per packet names the hop, the
    /// flow and the verdict), for Wireshark or tshark.
    #[arg(long, value_name = "FILE.pcapng")]
    pub write: Option<PathBuf>,
    /// Stop writing the --write file once it reaches this size, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 100, requires = "write",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub write_limit: u64,
    /// Serve Prometheus metrics on http://ADDR/metrics (:9464 for every
    /// address, or IP:PORT).
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr)]
    pub metrics: Option<crate::metrics::ListenAddr>,
}

#[derive(Args, Debug, Clone)]
pub struct DiagnoseArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// How long to watch live traffic (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop at the first flow that reaches a verdict.
    #[arg(long)]
    pub until_first: bool,
}

/// Shortest window worth opening: a flow needs time to be seen at all.
const MIN_DURATION: Duration = Duration::from_millis(100);

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .or_else(|_| s.trim().parse::<u64>().map(Duration::from_secs))
        .map_err(|_| format!("'{s}' is not a duration (try 10s, 500ms, 2m)"))?;
    if d < MIN_DURATION || d > Duration::from_secs(7 * 86400) {
        return Err(format!("duration '{s}' out of range (100ms to 7 days)"));
    }
    Ok(d)
}

/// The address an IPv4-mapped IPv6 address stands for.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Why an address can never be a LoadBalancer IP, if it cannot.
fn impossible(ip: IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() => Some("the unspecified address"),
        _ if ip.is_loopback() => Some("a loopback address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4 == Ipv4Addr::BROADCAST => Some("the broadcast address"),
        _ => None,
    }
}

/// An LB IP (a /32 or /128) or a CIDR of them.
pub fn parse_target(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(format!("'{s}' is not an IP address or CIDR")),
        },
    };
    let addr = canonical(net.addr());
    let net = match (addr, net) {
        // ::ffff:a.b.c.d/N (N >= 96) is a.b.c.d/(N-96).
        (IpAddr::V4(v4), IpNet::V6(n)) => {
            IpNet::new(IpAddr::V4(v4), n.prefix_len().saturating_sub(96))
                .map_err(|_| format!("'{s}' is not a usable CIDR"))?
        }
        _ => net,
    }
    .trunc();
    if let Some(why) = impossible(net.addr()) {
        return Err(format!(
            "{} cannot be a LoadBalancer IP: it is {why}",
            net.addr()
        ));
    }
    Ok(net)
}

pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("'{s}' is not a CIDR (e.g. 198.51.100.0/24)"))
}

/// Validated filters.
#[derive(Debug, Clone)]
pub struct Target {
    /// What to watch: addresses and ranges (empty with `all`: filled from
    /// the rules).
    pub nets: Vec<IpNet>,
    pub all: bool,
    pub port: u16,
    /// IP protocol number (0: any).
    pub proto: u8,
    pub client: Option<IpNet>,
}

pub fn target(a: &CommonArgs) -> Result<Target, UsageError> {
    if a.targets.is_empty() && !a.all {
        return Err(UsageError(
            "name the LoadBalancer IP(s) to watch, or --all".into(),
        ));
    }
    if let Some(c) = a.client {
        let v4 = c.addr().is_ipv4();
        if !a.all && a.targets.iter().all(|t| t.addr().is_ipv4() != v4) {
            return Err(UsageError(format!(
                "--client {c} can never match: the LB IPs are IPv{}",
                if v4 { 6 } else { 4 }
            )));
        }
    }
    let mut nets = a.targets.clone();
    nets.sort();
    nets.dedup();
    Ok(Target {
        nets,
        all: a.all,
        port: a.port.unwrap_or(0),
        proto: a.proto.map(|p| Proto::from(p).ip_proto()).unwrap_or(0),
        client: a.client,
    })
}

/// The IPv6 unspecified address, for tests and defaults.
pub const NO_ADDR: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Root, or the capabilities loading needs.
pub fn check_privileges() -> Result<(), UsageError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| cap_eff & (1 << bit) != 0;
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON) && has(CAP_NET_ADMIN)) {
        return Ok(());
    }
    Err(UsageError(
        "lbpath needs root, or the capabilities CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (run it with sudo)".into(),
    ))
}

/// What lbpath cannot run without, as the kernel's BTF shows it (never
/// the version number: distributions backport). Each entry: (enum, member,
/// what it is, the release that brought it).
const REQUIRED: &[(&str, &str, &str, &str)] = &[
    (
        "bpf_map_type",
        "BPF_MAP_TYPE_RINGBUF",
        "BPF ring buffers",
        "5.8",
    ),
    (
        "bpf_attach_type",
        "BPF_TRACE_RAW_TP",
        "BTF tracepoints",
        "5.5",
    ),
    (
        "bpf_func_id",
        "BPF_FUNC_probe_read_kernel",
        "bpf_probe_read_kernel",
        "5.5",
    ),
    ("bpf_func_id", "BPF_FUNC_jiffies64", "bpf_jiffies64", "5.5"),
];

/// One line when the kernel lacks something lbpath needs. `has(enum, member)`
/// answers from the kernel's BTF.
pub fn check_kernel(has: impl Fn(&str, &str) -> bool) -> Result<(), UsageError> {
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|(e, m, _, _)| !has(e, m))
        .map(|(_, _, what, since)| format!("{what} (Linux {since})"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(UsageError(format!(
        "this kernel ({}) is too old for lbpath: it lacks {}; lbpath runs on 5.10 and newer",
        crate::netinfo::kernel_release(),
        missing.join(", ")
    )))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        c: CommonArgs,
    }

    fn parse(args: &[&str]) -> Result<CommonArgs, String> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .map(|t| t.c)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn addresses_that_can_be_lb_ips() {
        assert_eq!(
            parse_target("192.0.2.240").unwrap().to_string(),
            "192.0.2.240/32"
        );
        assert_eq!(
            parse_target("192.0.2.0/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        // A host address with a prefix names the range.
        assert_eq!(
            parse_target("192.0.2.7/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            parse_target("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        // v4-mapped is IPv4.
        assert_eq!(
            parse_target("::ffff:192.0.2.240").unwrap().to_string(),
            "192.0.2.240/32"
        );
        for bad in [
            "127.0.0.1",
            "::1",
            "255.255.255.255",
            "0.0.0.0",
            "224.0.0.1",
            "ff02::1",
        ] {
            let e = parse_target(bad).unwrap_err();
            assert!(e.contains("cannot be a LoadBalancer IP"), "{bad}: {e}");
        }
        assert_eq!(
            parse_target("300.1.2.3").unwrap_err(),
            "'300.1.2.3' is not an IP address or CIDR"
        );
    }

    #[test]
    fn filters() {
        let a = parse(&[
            "192.0.2.240",
            "--proto",
            "udp",
            "--client",
            "198.51.100.0/24",
        ])
        .unwrap();
        let t = target(&a).unwrap();
        assert_eq!(
            (t.proto, t.client.unwrap().to_string().as_str()),
            (17, "198.51.100.0/24")
        );
        assert!(
            parse(&["192.0.2.240", "--proto", "icmp"])
                .unwrap_err()
                .contains("icmp")
        );
        assert!(parse(&["192.0.2.240", "--client", "198.51.100.0/33"]).is_err());
        assert!(parse(&["192.0.2.240", "--port", "0"]).is_err());
        assert!(parse(&["192.0.2.240", "--packets", "0"]).is_err());
        // A client filter of the other family can never match.
        let a = parse(&["192.0.2.240", "--client", "2001:db8::/64"]).unwrap();
        assert!(target(&a).unwrap_err().0.contains("can never match"));
        // The IP is required, unless --all; not both.
        assert!(parse(&[]).unwrap_err().contains("<LB-IP>"));
        assert!(parse(&["--all"]).is_ok());
        assert!(parse(&["--all", "192.0.2.240"]).is_err());
        // Several IPs and ranges; -o json.
        let a = parse(&["192.0.2.240", "192.0.2.0/28", "-o", "json"]).unwrap();
        assert_eq!(target(&a).unwrap().nets.len(), 2);
        assert!(a.json());
    }

    #[test]
    fn the_empty_programs_switch_is_hidden() {
        use clap::CommandFactory;
        assert!(
            parse(&["192.0.2.240", "--empty-programs"])
                .unwrap()
                .empty_programs
        );
        assert!(!parse(&["192.0.2.240"]).unwrap().empty_programs);
        let help = T::command().render_long_help().to_string();
        assert!(help.contains("--debug-bpf"), "{help}");
        assert!(!help.contains("empty"), "{help}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("0.0001ms").is_err());
    }

    #[test]
    fn kernels() {
        assert!(check_kernel(|_, _| true).is_ok());
        let old = check_kernel(|_, m| m != "BPF_MAP_TYPE_RINGBUF")
            .unwrap_err()
            .0;
        assert!(
            old.contains("too old") && old.contains("BPF ring buffers (Linux 5.8)"),
            "{old}"
        );
        assert!(!old.contains('\n'));
        let older = check_kernel(|_, _| false).unwrap_err().0;
        assert!(older.contains("BTF tracepoints"), "{older}");
    }
}
