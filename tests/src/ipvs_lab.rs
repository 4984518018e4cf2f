//! The lab with kube-proxy in IPVS mode on the node.
//!
//! The topology is [`crate::lab`]'s (client, node, pod behind cni0,
//! router, remote), built without kube-proxy rules; on top of it the node
//! gets what kube-proxy's IPVS proxier (kubernetes/pkg/proxy/ipvs/
//! proxier.go) sets up for one LoadBalancer Service, default/web:http,
//! 192.0.2.240:80 → pod 10.244.1.5:8080, ClusterIP 10.96.0.10:
//!
//! - the dummy interface kube-ipvs0 (left down, no ARP, as
//!   `EnsureDummyDevice` leaves it) holding the LB IP and the ClusterIP;
//! - virtual services for both with scheduler rr (`ipvsadm -R`) and the pod
//!   as masq real server, weight 1;
//! - kube-proxy's ipsets (KUBE-LOAD-BALANCER, KUBE-LOAD-BALANCER-LOCAL,
//!   KUBE-CLUSTER-IP, KUBE-LOOP-BACK, KUBE-IPVS-IPS) and the nat and filter
//!   rules around them (`writeIptablesRules`), through iptables-nft;
//! - the sysctls the proxier sets: net.ipv4.vs.conntrack=1 (so iptables can
//!   masquerade IPVS connections), conn_reuse_mode=0, expire_nodest_conn=1,
//!   expire_quiescent_template=1, and with strictARP arp_ignore=1 and
//!   arp_announce=2 on "all".
//!
//! Everything lives in the lab's namespaces (IPVS services, ipsets and
//! rules are per namespace), so dropping the lab removes it all.
//! [`ipvs_available`] tells whether the kernel can run this lab at all.

use std::{net::SocketAddr, path::Path, process::Command};

use anyhow::{Context, Result};

use crate::{
    kubeproxy_rules::{CLUSTER_CIDR, MASQUERADE_MARK, SvcSpec},
    lab::{KubeProxy, Lab, LabSpec, POD, POD_PORT, pod_endpoint, web_service},
    netns::{in_ns, in_ns_stdin},
};

/// What the virtual service forwards to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reals {
    /// The pod, serving HTTP on 10.244.1.5:8080.
    Pod,
    /// The pod as real server, but nothing listens there (it refuses).
    Refusing,
    /// No real server at all (a Service without endpoints).
    None,
}

#[derive(Debug, Clone)]
pub struct IpvsSpec {
    pub reals: Reals,
    /// kube-proxy's `ipvs.strictARP`: arp_ignore=1, arp_announce=2 on all.
    pub strict_arp: bool,
    /// A MetalLB-style ARP responder for the LB IP on the node's eth0.
    pub speaker: bool,
    /// externalTrafficPolicy: Local (KUBE-LOAD-BALANCER-LOCAL, no masquerade).
    pub etp_local: bool,
    /// Session affinity ClientIP: persistence timeout in seconds.
    pub persistence: Option<u32>,
    /// Create KUBE-LOAD-BALANCER with ipset's comment extension and name
    /// the Service in its entry ("default/web:http"). kube-proxy itself
    /// never does (its sets carry no per-entry comment); this stands for a
    /// node where something else named the entries.
    pub name_comments: bool,
}

impl Default for IpvsSpec {
    /// The MetalLB setup for IPVS mode: strictARP on, the speaker answers.
    fn default() -> Self {
        Self {
            reals: Reals::Pod,
            strict_arp: true,
            speaker: true,
            etp_local: false,
            persistence: None,
            name_comments: false,
        }
    }
}

pub struct IpvsLab {
    pub lab: Lab,
    pub spec: IpvsSpec,
    pub service: SvcSpec,
}

/// The dummy interface kube-proxy binds service addresses to.
pub const DUMMY: &str = "kube-ipvs0";
pub const SCHEDULER: &str = "rr";

fn ip_vs_loaded() -> bool {
    Path::new("/proc/net/ip_vs").exists()
}

/// Whether this kernel has IPVS, loading ip_vs through the kernel's own
/// module loader (/proc/sys/kernel/modprobe, which the kernel matrix
/// points at the guest kernel's modules) when it is not loaded yet; Err
/// says why not, in one line.
pub fn ipvs_available() -> Result<(), String> {
    if ip_vs_loaded() {
        return Ok(());
    }
    let modprobe = std::fs::read_to_string("/proc/sys/kernel/modprobe")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if modprobe.is_empty() {
        return Err(
            "the kernel has no IP_VS (no /proc/net/ip_vs) and cannot load modules".to_string(),
        );
    }
    let out = Command::new(&modprobe)
        .args(["-q", "ip_vs"])
        .output()
        .map_err(|e| format!("the kernel has no IP_VS loaded and `{modprobe}` failed: {e}"))?;
    if ip_vs_loaded() {
        return Ok(());
    }
    Err(format!(
        "the kernel has no IP_VS: `{modprobe} ip_vs` exited with {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Set by the kernel matrix's guest script: there a missing feature is a
/// failure, never a reason to skip.
pub fn in_kernel_matrix() -> bool {
    std::env::var("LBPATH_KERNEL_MATRIX").as_deref() == Ok("1")
}

impl IpvsLab {
    /// Builds the lab; `name` keeps namespaces of parallel tests apart.
    pub fn new(name: &str, spec: IpvsSpec) -> Result<Self> {
        ipvs_available().map_err(anyhow::Error::msg)?;
        let mut service = web_service(vec![pod_endpoint()], spec.etp_local);
        service.node_port = None;
        if spec.reals == Reals::None {
            service.endpoints.clear();
        }
        let lab = Lab::new(
            name,
            LabSpec {
                kube_proxy: KubeProxy::None,
                services: vec![service.clone()],
                speaker: spec.speaker,
                pod_server: spec.reals == Reals::Pod,
                ..Default::default()
            },
        )?;
        let l = Self { lab, spec, service };
        l.build()
            .with_context(|| format!("IPVS setup of lab {}", l.lab.prefix))?;
        Ok(l)
    }

    pub fn node(&self) -> String {
        self.lab.node()
    }
    pub fn client(&self) -> String {
        self.lab.client()
    }
    pub fn pod(&self) -> String {
        self.lab.pod()
    }
    pub fn lb_addr(&self) -> SocketAddr {
        self.lab.lb_addr()
    }

    fn build(&self) -> Result<()> {
        let node = self.node();
        let svc = &self.service;
        in_ns(&node, &["ip", "link", "add", DUMMY, "type", "dummy"])?;
        in_ns(&node, &["ip", "link", "set", DUMMY, "arp", "off"])?;
        for ip in [svc.lb_ip, svc.cluster_ip] {
            in_ns(
                &node,
                &["ip", "addr", "add", &format!("{ip}/32"), "dev", DUMMY],
            )?;
        }
        in_ns_stdin(&node, &["ipvsadm", "-R"], &ipvsadm_rules(&self.spec, svc))
            .context("ipvsadm -R")?;
        for kv in [
            "net.ipv4.vs.conntrack=1",
            "net.ipv4.vs.conn_reuse_mode=0",
            "net.ipv4.vs.expire_nodest_conn=1",
            "net.ipv4.vs.expire_quiescent_template=1",
        ] {
            self.lab.sysctl(&node, kv)?;
        }
        self.set_strict_arp(self.spec.strict_arp)?;
        in_ns_stdin(&node, &["ipset", "restore"], &ipset_script(&self.spec, svc))
            .context("ipset restore")?;
        in_ns_stdin(&node, &["iptables-nft-restore"], &iptables_rules(svc))
            .context("iptables-nft-restore")?;
        Ok(())
    }

    /// kube-proxy's strictARP on the node ("all"), or the kernel defaults.
    pub fn set_strict_arp(&self, on: bool) -> Result<()> {
        let (ignore, announce) = if on { (1, 2) } else { (0, 0) };
        let node = self.node();
        self.lab
            .sysctl(&node, &format!("net.ipv4.conf.all.arp_ignore={ignore}"))?;
        self.lab
            .sysctl(&node, &format!("net.ipv4.conf.all.arp_announce={announce}"))
    }
}

/// `ipvsadm -R` input: the LB IP and the ClusterIP, each to the pod.
pub fn ipvsadm_rules(spec: &IpvsSpec, svc: &SvcSpec) -> String {
    let persist = spec
        .persistence
        .map(|t| format!(" -p {t}"))
        .unwrap_or_default();
    let mut s = String::new();
    for ip in [svc.lb_ip, svc.cluster_ip] {
        let vs = format!("{ip}:{}", svc.port);
        s.push_str(&format!("-A -t {vs} -s {SCHEDULER}{persist}\n"));
        if spec.reals != Reals::None {
            s.push_str(&format!("-a -t {vs} -r {POD}:{POD_PORT} -m -w 1\n"));
        }
    }
    s
}

/// `ipset restore` input: the sets kube-proxy fills for this Service
/// (names, types and entry formats from pkg/proxy/ipvs/ipset.go).
pub fn ipset_script(spec: &IpvsSpec, svc: &SvcSpec) -> String {
    let proto = svc.proto;
    let lb = format!("{},{proto}:{}", svc.lb_ip, svc.port);
    let hash = "family inet hashsize 1024 maxelem 65536";
    let mut s = String::new();
    let lb_comment = if spec.name_comments { " comment" } else { "" };
    s.push_str(&format!(
        "create KUBE-LOAD-BALANCER hash:ip,port {hash}{lb_comment}\n"
    ));
    if spec.name_comments {
        s.push_str(&format!(
            "add KUBE-LOAD-BALANCER {lb} comment \"{}\"\n",
            svc.port_name_string()
        ));
    } else {
        s.push_str(&format!("add KUBE-LOAD-BALANCER {lb}\n"));
    }
    s.push_str(&format!(
        "create KUBE-LOAD-BALANCER-LOCAL hash:ip,port {hash}\n"
    ));
    if svc.etp_local {
        s.push_str(&format!("add KUBE-LOAD-BALANCER-LOCAL {lb}\n"));
    }
    s.push_str(&format!("create KUBE-CLUSTER-IP hash:ip,port {hash}\n"));
    s.push_str(&format!(
        "add KUBE-CLUSTER-IP {},{proto}:{}\n",
        svc.cluster_ip, svc.port
    ));
    s.push_str(&format!("create KUBE-LOOP-BACK hash:ip,port,ip {hash}\n"));
    for ep in &svc.endpoints {
        s.push_str(&format!(
            "add KUBE-LOOP-BACK {},{proto}:{},{}\n",
            ep.ip, ep.port, ep.ip
        ));
    }
    s.push_str(&format!("create KUBE-IPVS-IPS hash:ip {hash}\n"));
    for ip in [svc.lb_ip, svc.cluster_ip] {
        s.push_str(&format!("add KUBE-IPVS-IPS {ip}\n"));
    }
    s
}

/// iptables-restore input: kube-proxy's IPVS-mode nat and filter rules
/// for these sets (writeIptablesRules, createAndLinkKubeChain).
pub fn iptables_rules(svc: &SvcSpec) -> String {
    let m = MASQUERADE_MARK;
    let mut nat = vec![
        "*nat".to_string(),
        ":PREROUTING ACCEPT [0:0]".into(),
        ":INPUT ACCEPT [0:0]".into(),
        ":OUTPUT ACCEPT [0:0]".into(),
        ":POSTROUTING ACCEPT [0:0]".into(),
    ];
    for c in [
        "KUBE-SERVICES",
        "KUBE-POSTROUTING",
        "KUBE-NODE-PORT",
        "KUBE-LOAD-BALANCER",
        "KUBE-MARK-MASQ",
    ] {
        nat.push(format!(":{c} - [0:0]"));
    }
    let c = |s: &str| format!("-m comment --comment \"{s}\"");
    nat.extend([
        format!("-A PREROUTING {} -j KUBE-SERVICES", c("kubernetes service portals")),
        format!("-A OUTPUT {} -j KUBE-SERVICES", c("kubernetes service portals")),
        format!("-A POSTROUTING {} -j KUBE-POSTROUTING", c("kubernetes postrouting rules")),
        "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN".into(),
        format!(
            "-A KUBE-POSTROUTING {} -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE",
            c("Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose")
        ),
        format!(
            "-A KUBE-SERVICES {} -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER",
            c("Kubernetes service lb portal")
        ),
    ]);
    if svc.etp_local {
        nat.push(format!(
            "-A KUBE-LOAD-BALANCER {} -m set --match-set KUBE-LOAD-BALANCER-LOCAL dst,dst -j RETURN",
            c("Kubernetes service load balancer ip + port with externalTrafficPolicy=local")
        ));
    }
    nat.extend([
        format!(
            "-A KUBE-SERVICES {} -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
            c("Kubernetes service cluster ip + port for masquerade purpose")
        ),
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT".into(),
        "-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ".into(),
        "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT".into(),
        "-A KUBE-SERVICES -m set --match-set KUBE-LOAD-BALANCER dst,dst -j ACCEPT".into(),
        format!("-A KUBE-POSTROUTING -m mark ! --mark {m}/{m} -j RETURN"),
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {m}"),
        format!(
            "-A KUBE-POSTROUTING {} -j MASQUERADE --random-fully",
            c("kubernetes service traffic requiring SNAT")
        ),
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {m}"),
        "COMMIT".into(),
    ]);
    let mut filter = vec![
        "*filter".to_string(),
        ":INPUT ACCEPT [0:0]".into(),
        ":FORWARD ACCEPT [0:0]".into(),
        ":OUTPUT ACCEPT [0:0]".into(),
    ];
    for ch in [
        "KUBE-FORWARD",
        "KUBE-NODE-PORT",
        "KUBE-PROXY-FIREWALL",
        "KUBE-SOURCE-RANGES-FIREWALL",
        "KUBE-IPVS-FILTER",
        "KUBE-IPVS-OUT-FILTER",
    ] {
        filter.push(format!(":{ch} - [0:0]"));
    }
    filter.extend([
        format!("-A INPUT {} -j KUBE-NODE-PORT", c("kubernetes health check rules")),
        format!("-A INPUT {} -j KUBE-PROXY-FIREWALL", c("kube-proxy firewall rules")),
        format!("-A INPUT {} -j KUBE-IPVS-FILTER", c("kubernetes ipvs access filter")),
        format!("-A FORWARD {} -j KUBE-FORWARD", c("kubernetes forwarding rules")),
        format!("-A FORWARD {} -j KUBE-PROXY-FIREWALL", c("kube-proxy firewall rules")),
        format!("-A OUTPUT {} -j KUBE-IPVS-OUT-FILTER", c("kubernetes ipvs access filter")),
        "-A KUBE-SOURCE-RANGES-FIREWALL -j DROP".into(),
        format!(
            "-A KUBE-FORWARD {} -m mark --mark {m}/{m} -j ACCEPT",
            c("kubernetes forwarding rules")
        ),
        format!(
            "-A KUBE-FORWARD {} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            c("kubernetes forwarding conntrack rule")
        ),
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN".into(),
        "-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN".into(),
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT --reject-with icmp-port-unreachable".into(),
        "COMMIT".into(),
    ]);
    let mut out = nat.join("\n");
    out.push('\n');
    out.push_str(&filter.join("\n"));
    out.push('\n');
    out
}

/// Second uplinks for the interface-role tests, built on the node of a
/// plain lab: `eth0.100` (VLAN 100 over eth0, 8021q), with the router's
/// `eth0.100` on the other side of the switch.
pub fn add_vlan_uplink(lab: &Lab) -> Result<()> {
    for (ns, addr) in [
        (lab.node(), "203.0.113.130/26"),
        (lab.router(), "203.0.113.129/26"),
    ] {
        in_ns(
            &ns,
            &[
                "ip", "link", "add", "link", "eth0", "name", "eth0.100", "type", "vlan", "id",
                "100",
            ],
        )?;
        in_ns(&ns, &["ip", "addr", "add", addr, "dev", "eth0.100"])?;
        in_ns(&ns, &["ip", "link", "set", "eth0.100", "up"])?;
    }
    Ok(())
}

/// `bond0` (active-backup) on the node with one slave, `eth2`, a veth into
/// the switch (the lab's stand-in for a second NIC).
pub fn add_bond_uplink(lab: &Lab) -> Result<()> {
    let (node, sw) = (lab.node(), lab.ns("sw"));
    in_ns(
        &node,
        &[
            "ip",
            "link",
            "add",
            "bond0",
            "type",
            "bond",
            "mode",
            "active-backup",
        ],
    )?;
    crate::netns::sh(&[
        "ip", "link", "add", "eth2", "netns", &node, "type", "veth", "peer", "name", "nodebond",
        "netns", &sw,
    ])?;
    in_ns(
        &sw,
        &["ip", "link", "set", "nodebond", "master", "br0", "up"],
    )?;
    in_ns(&node, &["ip", "link", "set", "eth2", "down"])?;
    in_ns(&node, &["ip", "link", "set", "eth2", "master", "bond0"])?;
    in_ns(&node, &["ip", "link", "set", "bond0", "up"])?;
    in_ns(
        &node,
        &["ip", "addr", "add", "203.0.113.194/26", "dev", "bond0"],
    )?;
    Ok(())
}

/// Whether an error from building a link means the kernel lacks that link
/// type (the host without 8021q or bonding), rather than a bug.
pub fn is_missing_link_kind(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("Unknown device type") || s.contains("not supported")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: &IpvsSpec) -> SvcSpec {
        let mut s = web_service(vec![pod_endpoint()], spec.etp_local);
        if spec.reals == Reals::None {
            s.endpoints.clear();
        }
        s
    }

    #[test]
    fn rules_follow_kube_proxy() {
        let spec = IpvsSpec::default();
        let svc = service(&spec);
        assert_eq!(
            ipvsadm_rules(&spec, &svc),
            "-A -t 192.0.2.240:80 -s rr\n-a -t 192.0.2.240:80 -r 10.244.1.5:8080 -m -w 1\n\
             -A -t 10.96.0.10:80 -s rr\n-a -t 10.96.0.10:80 -r 10.244.1.5:8080 -m -w 1\n"
        );
        let ipset = ipset_script(&spec, &svc);
        assert!(
            ipset.contains("add KUBE-LOAD-BALANCER 192.0.2.240,tcp:80\n"),
            "{ipset}"
        );
        assert!(!ipset.contains("comment"));
        assert!(!ipset.contains("add KUBE-LOAD-BALANCER-LOCAL"));
        assert!(ipset.contains("add KUBE-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5\n"));
        let ipt = iptables_rules(&svc);
        assert!(ipt.contains(
            "-A KUBE-SERVICES -m comment --comment \"Kubernetes service lb portal\" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER\n"
        ));
        assert!(ipt.contains("-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ\n"));
        assert!(ipt.contains("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n"));
        assert!(!ipt.contains("KUBE-LOAD-BALANCER-LOCAL"));
        assert_eq!(ipt.matches("COMMIT\n").count(), 2);
    }

    #[test]
    fn options_change_the_rules() {
        let spec = IpvsSpec {
            reals: Reals::None,
            etp_local: true,
            persistence: Some(10800),
            name_comments: true,
            ..Default::default()
        };
        let svc = service(&spec);
        assert_eq!(
            ipvsadm_rules(&spec, &svc),
            "-A -t 192.0.2.240:80 -s rr -p 10800\n-A -t 10.96.0.10:80 -s rr -p 10800\n"
        );
        let ipset = ipset_script(&spec, &svc);
        assert!(ipset.contains(
            "create KUBE-LOAD-BALANCER hash:ip,port family inet hashsize 1024 maxelem 65536 comment\n"
        ));
        assert!(
            ipset.contains(
                "add KUBE-LOAD-BALANCER 192.0.2.240,tcp:80 comment \"default/web:http\"\n"
            )
        );
        assert!(ipset.contains("add KUBE-LOAD-BALANCER-LOCAL 192.0.2.240,tcp:80\n"));
        assert!(!ipset.contains("add KUBE-LOOP-BACK"));
        assert!(
            iptables_rules(&svc).contains("--match-set KUBE-LOAD-BALANCER-LOCAL dst,dst -j RETURN")
        );
    }

    #[test]
    fn missing_link_kinds_are_recognised() {
        let e = anyhow::anyhow!("`ip link add` failed: Error: Unknown device type.");
        assert!(is_missing_link_kind(&e));
        assert!(!is_missing_link_kind(&anyhow::anyhow!("File exists")));
    }
}
