//! kube-proxy's IPVS mode on this node, read without changing anything.
//!
//! In IPVS mode a LoadBalancer IP is not DNATed by iptables: it sits on the
//! dummy interface kube-ipvs0, and the kernel's IP Virtual Server forwards
//! connections to it to the pods (its "real servers"). This module reads:
//!
//! - the virtual services and their real servers from the kernel, over
//!   generic netlink ([`netlink`]; only `IPVS_CMD_GET_*` dumps);
//! - kube-proxy's ipsets (`ipset save`, [`ipset`]) and the nat rules around
//!   them (`iptables-save`, [`layout`]), which tell a LoadBalancer IP from a
//!   ClusterIP, externalTrafficPolicy Local, and whether the client address
//!   is masqueraded;
//! - the ARP sysctls that decide whether the node answers ARP for the IPs
//!   on kube-ipvs0 ([`arp`], strictARP).
//!
//! Everything is read in the calling thread's network namespace. A kernel
//! without IPVS (module not loaded, not built) is a state, not an error:
//! [`IpvsState::not_in_use`] says why.

pub mod arp;
pub mod ipset;
pub mod layout;
pub mod netlink;

use std::{
    fmt,
    io::Read,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::kubeproxy::{AddressKind, Proto};

pub use self::{arp::ArpConf, ipset::IpSet, layout::NatLayout};

/// The node's IPVS state and kube-proxy's naming of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IpvsState {
    /// Why IPVS is not in use here (one sentence), or None when it is.
    pub not_in_use: Option<String>,
    pub services: Vec<VirtualService>,
    /// kube-proxy's sets (KUBE-*), empty when ipset is missing or unused.
    pub ipsets: Vec<IpSet>,
    /// kube-proxy's nat rules around the sets.
    pub nat: NatLayout,
    /// What could not be read, one sentence each.
    pub problems: Vec<String>,
    /// Of [`Self::problems`], those that leave the virtual services
    /// themselves incomplete: then "no virtual service for X" cannot be
    /// known (the others only lose names and kinds).
    pub services_unread: Vec<String>,
}

/// One IPVS virtual service (`ipvsadm -A`) with its real servers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VirtualService {
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    /// None for a firewall-mark service.
    pub addr: Option<IpAddr>,
    pub port: u16,
    /// None when the protocol is not TCP, UDP or SCTP (fwmark services).
    pub proto: Option<Proto>,
    /// The raw protocol number.
    pub ip_proto: u16,
    /// Non-zero for a firewall-mark service (`ipvsadm -f`).
    pub fwmark: u32,
    /// "rr", "wrr", "lc", "sh", "mh", ...
    pub scheduler: String,
    pub flags: ServiceFlags,
    /// Persistence timeout in seconds (session affinity ClientIP); only
    /// meaningful when [`Self::persistent`].
    pub timeout: u32,
    /// Persistence netmask (a prefix mask for IPv4, a prefix length for IPv6).
    pub netmask: u32,
    /// Persistence engine ("sip"), rarely set.
    pub pe_name: Option<String>,
    pub stats: Stats,
    pub reals: Vec<RealServer>,
    /// What kube-proxy's sets make of this address:port; None when it is in
    /// none of them (not kube-proxy's, or ipset unreadable).
    pub kind: Option<AddressKind>,
    /// The Service, "namespace/name:port", when an ipset entry comment
    /// names it. kube-proxy itself never writes one (see [`ipset`]).
    pub service_name: Option<String>,
    /// externalTrafficPolicy Local: KUBE-LOAD-BALANCER-LOCAL (or
    /// KUBE-EXTERNAL-IP-LOCAL) holds this address:port.
    pub local_only: bool,
    /// Whether clients are masqueraded on the way to the pods, per
    /// kube-proxy's sets and nat rules; None when they do not tell.
    pub masquerade: Option<bool>,
    /// loadBalancerSourceRanges (KUBE-LOAD-BALANCER-FW with
    /// KUBE-LOAD-BALANCER-SOURCE-CIDR entries), empty when unrestricted.
    pub source_ranges: Vec<String>,
}

/// The service flags the kernel reports (IP_VS_SVC_F_* in ip_vs.h).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ServiceFlags {
    pub raw: u32,
    /// IP_VS_SVC_F_PERSISTENT: session affinity.
    pub persistent: bool,
    /// IP_VS_SVC_F_HASHED: the kernel has the service in its tables.
    pub hashed: bool,
    /// IP_VS_SVC_F_ONEPACKET: one-packet scheduling (UDP).
    pub one_packet: bool,
    /// IP_VS_SVC_F_SCHED1..3: scheduler options (sh/mh fallback, port).
    pub sched_flags: u8,
}

impl ServiceFlags {
    pub fn from_raw(raw: u32) -> Self {
        Self {
            raw,
            persistent: raw & 0x0001 != 0,
            hashed: raw & 0x0002 != 0,
            one_packet: raw & 0x0004 != 0,
            sched_flags: ((raw >> 3) & 0x7) as u8,
        }
    }
}

/// One real server (`ipvsadm -a`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RealServer {
    pub addr: IpAddr,
    pub port: u16,
    pub forward: Forward,
    /// 0: quiesced, no new connections.
    pub weight: u32,
    pub upper_threshold: u32,
    pub lower_threshold: u32,
    /// Established connections.
    pub active_conns: u32,
    /// Connections in other states (SYN_RECV, FIN_WAIT, TIME_WAIT, UDP).
    pub inactive_conns: u32,
    /// Persistence templates pointing here.
    pub persistent_conns: u32,
    pub stats: Stats,
}

/// How IPVS forwards to a real server (IP_VS_CONN_F_FWD_MASK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forward {
    /// NAT (`-m`), kube-proxy's only method.
    Masq,
    /// The real server is this node.
    Local,
    /// IP-in-IP (`-i`).
    Tunnel,
    /// Direct routing (`-g`).
    DirectRouting,
    Bypass,
    Other(u32),
}

impl Forward {
    pub fn from_raw(raw: u32) -> Self {
        match raw & 0x7 {
            0 => Forward::Masq,
            1 => Forward::Local,
            2 => Forward::Tunnel,
            3 => Forward::DirectRouting,
            4 => Forward::Bypass,
            _ => Forward::Other(raw),
        }
    }
}

impl fmt::Display for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Forward::Masq => f.write_str("masq"),
            Forward::Local => f.write_str("local"),
            Forward::Tunnel => f.write_str("tunnel"),
            Forward::DirectRouting => f.write_str("route"),
            Forward::Bypass => f.write_str("bypass"),
            Forward::Other(n) => write!(f, "forward method {n}"),
        }
    }
}

/// Counters since the service or real server was added. The kernel's
/// estimator folds the per-CPU counters into these every 2 s, so they lag
/// the traffic by up to that much; the connection counts of
/// [`RealServer`] do not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Connections scheduled.
    pub conns: u64,
    pub in_packets: u64,
    pub out_packets: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

impl VirtualService {
    pub(crate) fn empty() -> Self {
        Self {
            family: 0,
            addr: None,
            port: 0,
            proto: None,
            ip_proto: 0,
            fwmark: 0,
            scheduler: String::new(),
            flags: ServiceFlags::default(),
            timeout: 0,
            netmask: 0,
            pe_name: None,
            stats: Stats::default(),
            reals: Vec::new(),
            kind: None,
            service_name: None,
            local_only: false,
            masquerade: None,
            source_ranges: Vec::new(),
        }
    }

    /// Session affinity: a client sticks to its real server for
    /// [`Self::timeout`] seconds.
    pub fn persistent(&self) -> bool {
        self.flags.persistent
    }

    /// Real servers that can take new connections (weight above 0).
    pub fn usable_reals(&self) -> impl Iterator<Item = &RealServer> {
        self.reals.iter().filter(|r| r.weight > 0)
    }
}

impl fmt::Display for VirtualService {
    /// As ipvsadm names it: "TCP 192.0.2.240:80 rr" / "FWM 42 sh".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.fwmark != 0 {
            return write!(f, "FWM {} {}", self.fwmark, self.scheduler);
        }
        let proto = self
            .proto
            .map(|p| p.as_str().to_ascii_uppercase())
            .unwrap_or_else(|| format!("proto {}", self.ip_proto));
        let addr = match self.addr {
            Some(IpAddr::V6(a)) => format!("[{a}]"),
            Some(a) => a.to_string(),
            None => "-".into(),
        };
        write!(f, "{proto} {addr}:{} {}", self.port, self.scheduler)?;
        if self.persistent() {
            write!(f, " persistent {}", self.timeout)?;
        }
        Ok(())
    }
}

impl IpvsState {
    /// Reads the state of the calling thread's network namespace. Never
    /// fails: what cannot be read is in [`Self::problems`].
    pub fn read() -> Self {
        let mut st = IpvsState::default();
        match read_services() {
            Ok(read) => {
                for r in read {
                    st.services_unread.extend(r.problem);
                    st.services.extend(r.svc);
                }
            }
            Err(Unread::NotInUse(why)) => st.not_in_use = Some(why),
            Err(Unread::Failed(why)) => st.services_unread.push(why),
        }
        st.problems.clone_from(&st.services_unread);
        st.ipsets = read_ipsets(&mut st.problems);
        st.nat = read_nat(&mut st.problems);
        annotate(&mut st.services, &st.ipsets, &st.nat);
        st
    }

    /// Whether the kernel has IPVS here (it may still have no services).
    pub fn in_use(&self) -> bool {
        self.not_in_use.is_none()
    }

    /// The virtual service a packet to `ip:port` hits: the exact one, else a
    /// port-0 ("all ports", persistent) service of that address.
    pub fn lookup(&self, ip: IpAddr, port: u16, proto: Proto) -> Option<&VirtualService> {
        let on =
            |s: &&VirtualService| s.fwmark == 0 && s.addr == Some(ip) && s.proto == Some(proto);
        self.services
            .iter()
            .filter(on)
            .find(|s| s.port == port)
            .or_else(|| self.services.iter().filter(on).find(|s| s.port == 0))
    }

    /// Whether the virtual services could all be read (IPVS not in use
    /// counts as read: there are none).
    pub fn complete(&self) -> bool {
        self.services_unread.is_empty()
    }

    /// Every virtual service of an address (all ports and protocols).
    pub fn services_of(&self, ip: IpAddr) -> impl Iterator<Item = &VirtualService> {
        self.services.iter().filter(move |s| s.addr == Some(ip))
    }
}

/// Why no service was read.
enum Unread {
    /// For [`IpvsState::not_in_use`].
    NotInUse(String),
    /// IPVS is there but could not be read: a problem.
    Failed(String),
}

/// A service read from the kernel (None when it could not be decoded),
/// with a problem met reading it or its real servers.
struct ReadService {
    svc: Option<VirtualService>,
    problem: Option<String>,
}

/// /proc/net/ip_vs exists, in every namespace, once ip_vs is loaded (or
/// built in). Looking it up first keeps lbpath from loading the module:
/// the generic netlink family lookup would on 5.16+ kernels.
fn ip_vs_loaded() -> bool {
    ["/proc/thread-self/net/ip_vs", "/proc/net/ip_vs"]
        .iter()
        .any(|p| Path::new(p).exists())
}

fn read_services() -> Result<Vec<ReadService>, Unread> {
    if !ip_vs_loaded() {
        return Err(Unread::NotInUse(
            "IPVS is not in use: the ip_vs module is not loaded (no /proc/net/ip_vs)".into(),
        ));
    }
    let mut conn = match netlink::Conn::open() {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(Unread::NotInUse(
                "IPVS is not in use: the kernel has no IPVS generic netlink family".into(),
            ));
        }
        Err(e) => {
            return Err(Unread::Failed(format!(
                "IPVS could not be read: generic netlink: {e} (lbpath needs root or CAP_NET_ADMIN)"
            )));
        }
    };
    let answers = conn
        .dump(netlink::IpvsRequest::get_services())
        .map_err(|e| Unread::Failed(format!("IPVS could not be read: listing services: {e}")))?;
    let mut out = Vec::new();
    for a in answers {
        let mut svc = match netlink::parse_service(a.attrs()) {
            Ok(s) => s,
            Err(e) => {
                out.push(ReadService {
                    svc: None,
                    problem: Some(format!("an IPVS service could not be decoded: {e}")),
                });
                continue;
            }
        };
        let mut problem = None;
        match conn.dump(netlink::IpvsRequest::get_dests(&svc)) {
            Ok(dests) => {
                for d in dests {
                    match netlink::parse_dest(d.attrs(), svc.family) {
                        Ok(r) => svc.reals.push(r),
                        Err(e) => {
                            problem =
                                Some(format!("a real server of {svc} could not be decoded: {e}"))
                        }
                    }
                }
            }
            // The service went away between the two dumps.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
            Err(e) => problem = Some(format!("the real servers of {svc} could not be read: {e}")),
        }
        out.push(ReadService {
            svc: Some(svc),
            problem,
        });
    }
    Ok(out)
}

/// kube-proxy's sets, when the ip_set module is there (so that reading
/// never loads it) and the tool is installed.
fn read_ipsets(problems: &mut Vec<String>) -> Vec<IpSet> {
    if !Path::new("/sys/module/ip_set").exists() {
        return Vec::new();
    }
    let Some(tool) = find_tool("ipset") else {
        problems.push(
            "ipset not found: kube-proxy's IPVS sets (which LB IPs, externalTrafficPolicy Local) were not read"
                .into(),
        );
        return Vec::new();
    };
    match run_tool(&tool, &["save"]) {
        Ok(text) => match ipset::parse_ipset_save(&text) {
            Ok(sets) => sets
                .into_iter()
                .filter(|s| s.name.starts_with("KUBE-") || has_comments(s))
                .collect(),
            Err(e) => {
                problems.push(format!("cannot parse `ipset save` output: {e}"));
                Vec::new()
            }
        },
        Err(e) => {
            problems.push(format!("ipset save: {e}"));
            Vec::new()
        }
    }
}

fn has_comments(s: &IpSet) -> bool {
    s.entries.iter().any(|e| e.comment.is_some())
}

/// kube-proxy's nat rules: iptables-nft's, and legacy ones when the kernel
/// has a legacy nat table (never loading a module to find out).
fn read_nat(problems: &mut Vec<String>) -> NatLayout {
    let mut layouts = Vec::new();
    if let Some(tool) = find_tool("iptables-nft-save").or_else(|| find_tool("iptables-save")) {
        match run_tool(&tool, &[]) {
            Ok(text) => layouts.push(layout::parse_nat(&text)),
            Err(e) => problems.push(format!("{}: {e}", tool.display())),
        }
    }
    let legacy_nat = [
        "/proc/thread-self/net/ip_tables_names",
        "/proc/net/ip_tables_names",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .is_some_and(|t| t.split_whitespace().any(|n| n == "nat"));
    if legacy_nat && let Some(tool) = find_tool("iptables-legacy-save") {
        match run_tool(&tool, &["-t", "nat"]) {
            Ok(text) => layouts.push(layout::parse_nat(&text)),
            Err(e) => problems.push(format!("{}: {e}", tool.display())),
        }
    }
    // The variant that holds kube-proxy's rules.
    layouts
        .into_iter()
        .max_by_key(|l| (l.lb_chain, l.present()))
        .unwrap_or_default()
}

/// Fills kind, name, Local policy, masquerading and source ranges of each
/// service from kube-proxy's sets and rules.
pub fn annotate(services: &mut [VirtualService], sets: &[IpSet], nat: &NatLayout) {
    for svc in services.iter_mut() {
        let (Some(ip), Some(proto)) = (svc.addr, svc.proto) else {
            continue;
        };
        let key = (ip, proto, svc.port);
        let in_set = |base: &str| {
            sets.iter().filter(|s| s.is_kube(base)).any(|s| {
                s.entries
                    .iter()
                    .any(|e| ipset::ip_proto_port(&e.elem) == Some(key))
            })
        };
        let lb = in_set(ipset::kube::LOAD_BALANCER);
        let ext = in_set(ipset::kube::EXTERNAL_IP);
        let ext_local = in_set(ipset::kube::EXTERNAL_IP_LOCAL);
        if lb {
            let local = in_set(ipset::kube::LOAD_BALANCER_LOCAL);
            svc.kind = Some(AddressKind::LoadBalancer);
            svc.local_only = local;
            svc.masquerade = nat.lb_masqueraded(true, local);
            if in_set(ipset::kube::LOAD_BALANCER_FW) {
                svc.source_ranges = sets
                    .iter()
                    .filter(|s| s.is_kube(ipset::kube::LOAD_BALANCER_SOURCE_CIDR))
                    .flat_map(|s| &s.entries)
                    .filter(|e| ipset::ip_proto_port(&e.elem) == Some(key))
                    .filter_map(|e| ipset::third_field(&e.elem).map(str::to_string))
                    .collect();
            }
        } else if ext || ext_local {
            svc.kind = Some(AddressKind::ExternalIp);
            svc.local_only = ext_local && !ext;
            svc.masquerade = nat.external_masqueraded(ext);
        } else if in_set(ipset::kube::CLUSTER_IP) {
            svc.kind = Some(AddressKind::ClusterIp);
        }
        svc.service_name = sets
            .iter()
            .flat_map(|s| &s.entries)
            .filter(|e| ipset::ip_proto_port(&e.elem) == Some(key))
            .find_map(|e| {
                e.comment
                    .as_deref()
                    .and_then(ipset::service_name_of_comment)
            });
    }
}

fn find_tool(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    // sudo and service managers often leave the sbin directories out.
    let extra = ["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs a read-only tool for at most 20 s; its stdout, or why it failed.
fn run_tool(tool: &Path, args: &[&str]) -> Result<String, String> {
    const LIMIT: Duration = Duration::from_secs(20);
    let mut child = Command::new(tool)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {} s", LIMIT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("wait failed: {e}")),
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        let msg = String::from_utf8_lossy(&stderr);
        let first = msg
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        return Err(format!("failed ({status}): {first}"));
    }
    String::from_utf8(stdout).map_err(|_| "output is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ip: &str, port: u16, proto: Proto) -> VirtualService {
        let mut s = VirtualService::empty();
        s.family = 2;
        s.addr = Some(ip.parse().unwrap());
        s.port = port;
        s.proto = Some(proto);
        s.ip_proto = proto.ip_proto() as u16;
        s.scheduler = "rr".into();
        s
    }

    const SETS: &str = r#"create KUBE-LOAD-BALANCER hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-LOAD-BALANCER 192.0.2.240,tcp:80
add KUBE-LOAD-BALANCER 192.0.2.241,tcp:443
create KUBE-LOAD-BALANCER-LOCAL hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-LOAD-BALANCER-LOCAL 192.0.2.241,tcp:443
create KUBE-LOAD-BALANCER-FW hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-LOAD-BALANCER-FW 192.0.2.241,tcp:443
create KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net family inet hashsize 1024 maxelem 65536
add KUBE-LOAD-BALANCER-SOURCE-CIDR 192.0.2.241,tcp:443,198.51.100.0/24
create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-CLUSTER-IP 10.96.0.10,tcp:80
create KUBE-EXTERNAL-IP-LOCAL hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-EXTERNAL-IP-LOCAL 203.0.113.7,udp:53
create LBPATH-NAMES hash:ip,port family inet hashsize 1024 maxelem 65536 comment
add LBPATH-NAMES 192.0.2.240,tcp:80 comment "default/web:http"
"#;

    fn nat() -> NatLayout {
        NatLayout {
            services_hooked: true,
            lb_chain: true,
            lb_local_return: true,
            lb_marks: true,
            external_ip_marks: true,
            masq_mark: Some("0x4000/0x4000".into()),
            postrouting_masquerade: true,
        }
    }

    #[test]
    fn kube_proxy_sets_name_the_addresses() {
        let sets = ipset::parse_ipset_save(SETS).unwrap();
        let mut services = vec![
            svc("192.0.2.240", 80, Proto::Tcp),
            svc("192.0.2.241", 443, Proto::Tcp),
            svc("10.96.0.10", 80, Proto::Tcp),
            svc("203.0.113.7", 53, Proto::Udp),
            svc("192.0.2.240", 80, Proto::Udp),
        ];
        annotate(&mut services, &sets, &nat());
        let [web, local, cluster, ext, udp] = &services[..] else {
            unreachable!()
        };
        assert_eq!(web.kind, Some(AddressKind::LoadBalancer));
        assert_eq!(web.service_name.as_deref(), Some("default/web:http"));
        assert_eq!((web.local_only, web.masquerade), (false, Some(true)));
        assert!(web.source_ranges.is_empty());
        assert_eq!(local.kind, Some(AddressKind::LoadBalancer));
        assert_eq!((local.local_only, local.masquerade), (true, Some(false)));
        assert_eq!(local.source_ranges, ["198.51.100.0/24"]);
        assert_eq!(local.service_name, None);
        assert_eq!(cluster.kind, Some(AddressKind::ClusterIp));
        assert_eq!(cluster.masquerade, None);
        assert_eq!(ext.kind, Some(AddressKind::ExternalIp));
        assert_eq!((ext.local_only, ext.masquerade), (true, Some(false)));
        // Same address and port, other protocol: not in any set.
        assert_eq!((udp.kind, udp.service_name.as_deref()), (None, None));
    }

    #[test]
    fn without_rules_masquerading_is_unknown() {
        let sets = ipset::parse_ipset_save(SETS).unwrap();
        let mut services = vec![svc("192.0.2.240", 80, Proto::Tcp)];
        annotate(&mut services, &sets, &NatLayout::default());
        assert_eq!(services[0].kind, Some(AddressKind::LoadBalancer));
        assert_eq!(services[0].masquerade, None);
    }

    #[test]
    fn lookup_by_address_port_and_protocol() {
        let mut all_ports = svc("192.0.2.9", 0, Proto::Tcp);
        all_ports.flags = ServiceFlags::from_raw(1);
        all_ports.timeout = 10800;
        let st = IpvsState {
            services: vec![
                svc("192.0.2.240", 80, Proto::Tcp),
                svc("192.0.2.240", 80, Proto::Udp),
                all_ports,
            ],
            ..Default::default()
        };
        let ip = "192.0.2.240".parse().unwrap();
        assert_eq!(
            st.lookup(ip, 80, Proto::Udp).unwrap().proto,
            Some(Proto::Udp)
        );
        assert!(st.lookup(ip, 81, Proto::Tcp).is_none());
        assert!(st.lookup(ip, 80, Proto::Sctp).is_none());
        let any = st
            .lookup("192.0.2.9".parse().unwrap(), 8443, Proto::Tcp)
            .unwrap();
        assert_eq!(any.to_string(), "TCP 192.0.2.9:0 rr persistent 10800");
        assert_eq!(st.services_of(ip).count(), 2);
        assert!(st.in_use());
    }

    #[test]
    fn flags_and_forwarding_methods() {
        let f = ServiceFlags::from_raw(0x1 | 0x2 | 0x8);
        assert!(f.persistent && f.hashed && !f.one_packet);
        assert_eq!(f.sched_flags, 1);
        assert_eq!(Forward::from_raw(0).to_string(), "masq");
        assert_eq!(Forward::from_raw(3).to_string(), "route");
        let mut fwm = VirtualService::empty();
        fwm.fwmark = 42;
        fwm.scheduler = "sh".into();
        assert_eq!(fwm.to_string(), "FWM 42 sh");
    }

    #[test]
    fn reading_never_fails() {
        // Whatever this machine has (often no IPVS at all), read() returns
        // a state; without ip_vs it says why in one line.
        let st = IpvsState::read();
        if let Some(why) = &st.not_in_use {
            assert!(why.starts_with("IPVS "), "{why}");
            assert!(!why.contains('\n'));
            assert!(st.services.is_empty());
        }
    }
}
