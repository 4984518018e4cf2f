//! Command-line arguments and the checks every command makes before it
//! touches the kernel: each failure is one line and exit code 2.

use std::{net::IpAddr, time::Duration};

use clap::Args;

use crate::UsageError;

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// The LoadBalancer IP (IPv4 or IPv6).
    #[arg(value_name = "LB-IP")]
    pub ip: String,
    /// Only this LB port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only this protocol: tcp, udp or sctp.
    #[arg(long)]
    pub proto: Option<String>,
    /// Only clients in this CIDR (e.g. 198.51.100.0/24).
    #[arg(long, value_name = "CIDR")]
    pub client: Option<String>,
    /// Only flows arriving on this interface.
    #[arg(long, value_name = "NAME")]
    pub iface: Option<String>,
    /// Packets traced hop by hop per flow and direction; later ones are only counted.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub packets: u32,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// More log output on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Show the kernel programs' decisions about traced packets on stderr
    /// (for debugging lbpath itself and for bug reports).
    #[arg(long)]
    pub debug_bpf: bool,
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

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a duration (try 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("'{s}' is not a duration (try 10s, 500ms, 2m)")),
    };
    if !(secs > 0.0 && secs < 86400.0 * 7.0) {
        return Err(format!("duration '{s}' out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Validated filters.
#[derive(Debug, Clone)]
pub struct Target {
    pub ip: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub client: Option<(IpAddr, u8)>,
}

pub fn target(a: &CommonArgs) -> Result<Target, UsageError> {
    let ip: IpAddr =
        a.ip.parse()
            .map_err(|_| UsageError(format!("'{}' is not an IP address", a.ip)))?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(UsageError(format!("{ip} cannot be a LoadBalancer IP")));
    }
    let proto = match a.proto.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => 0,
        Some("tcp") => 6,
        Some("udp") => 17,
        Some("sctp") => 132,
        Some(p) => {
            return Err(UsageError(format!(
                "unknown protocol '{p}' (tcp, udp or sctp)"
            )));
        }
    };
    if a.port == Some(0) {
        return Err(UsageError("port 0 is not a service port".into()));
    }
    let client = a.client.as_deref().map(parse_cidr).transpose()?;
    if a.packets == 0 || a.packets > 64 {
        return Err(UsageError("--packets must be between 1 and 64".into()));
    }
    Ok(Target {
        ip,
        port: a.port.unwrap_or(0),
        proto,
        client,
    })
}

pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), UsageError> {
    let bad = || UsageError(format!("'{s}' is not a CIDR (e.g. 198.51.100.0/24)"));
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().map_err(|_| bad())?,
        None => max,
    };
    if len > max {
        return Err(bad());
    }
    Ok((ip, len))
}

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
    use super::*;

    fn args(ip: &str) -> CommonArgs {
        CommonArgs {
            ip: ip.into(),
            port: None,
            proto: None,
            client: None,
            iface: None,
            packets: 4,
            json: false,
            verbose: 0,
            debug_bpf: false,
        }
    }

    #[test]
    fn targets() {
        assert_eq!(
            target(&args("192.0.2.240")).unwrap().ip.to_string(),
            "192.0.2.240"
        );
        assert!(target(&args("2001:db8::1")).is_ok());
        let e = target(&args("300.1.2.3")).unwrap_err();
        assert_eq!(e.0, "'300.1.2.3' is not an IP address");
        assert!(target(&args("0.0.0.0")).is_err());
        let mut a = args("192.0.2.240");
        a.proto = Some("icmp".into());
        assert!(target(&a).unwrap_err().0.contains("unknown protocol"));
        a.proto = Some("UDP".into());
        assert_eq!(target(&a).unwrap().proto, 17);
        a.client = Some("198.51.100.0/33".into());
        assert!(target(&a).is_err());
        a.client = Some("198.51.100.0/24".into());
        assert_eq!(target(&a).unwrap().client.unwrap().1, 24);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
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
