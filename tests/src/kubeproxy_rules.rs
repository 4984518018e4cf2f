//! kube-proxy-style rules for the lab "node" namespace.
//!
//! The lab has no Kubernetes, so the rules kube-proxy would write for a few
//! Services are produced here, as text for `iptables-restore` (iptables mode,
//! fed to the nf_tables variant) and for `nft -f -` (nftables mode). The
//! shapes follow kube-proxy's own `pkg/proxy/iptables/proxier.go` and
//! `pkg/proxy/nftables/proxier.go` (recent releases: KUBE-EXT/KUBE-SVL chains,
//! `filter-*-pre-dnat` base chains), so lbpath is tested on what it will
//! meet on real nodes.
//!
//! Chain names are computed exactly as kube-proxy does (SHA-256, base32,
//! truncated), with a small SHA-256 written here so this crate stays
//! std-only; the unit tests check the names against kube-proxy's own test
//! expectations.
//!
//! What the lab cannot know, and so leaves out: readiness/terminating
//! endpoints, session affinity, health-check node ports, and the "allow from
//! the node's own IP" firewall exception (the generator has no node IP).

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Pod network: the "local traffic detector" kube-proxy is configured with
/// (`--cluster-cidr`); traffic from here is pod traffic.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// ClusterIP range; nftables mode drops traffic to unallocated addresses in it.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// kube-proxy's default masquerade bit 14.
pub const MASQUERADE_MARK: &str = "0x4000";

/// One port of one Service, with the node-local view of its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcSpec {
    pub namespace: String,
    pub name: String,
    /// Empty for an unnamed port (the service is then named "ns/name").
    pub port_name: String,
    /// "tcp", "udp" or "sctp".
    pub proto: &'static str,
    /// The LoadBalancer IP; `Ipv4Addr::UNSPECIFIED` for a Service without one
    /// (a plain ClusterIP or NodePort Service).
    pub lb_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub cluster_ip: Ipv4Addr,
    pub endpoints: Vec<EpSpec>,
    /// externalTrafficPolicy=Local.
    pub etp_local: bool,
    /// loadBalancerSourceRanges (CIDRs).
    pub source_ranges: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpSpec {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The endpoint runs on this node.
    pub local: bool,
}

impl SvcSpec {
    /// kube-proxy's ServicePortName: "ns/name:port", or "ns/name" when the
    /// port is unnamed. It is the comment on the rules and the hash input.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    fn has_lb(&self) -> bool {
        !self.lb_ip.is_unspecified()
    }
}

/// The per-Service chains kube-proxy creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    /// Endpoints for externalTrafficPolicy=Cluster (KUBE-SVC- / service-).
    Cluster,
    /// Local endpoints only (KUBE-SVL- / local-).
    Local,
    /// Entry for LoadBalancer IP and NodePort traffic (KUBE-EXT- / external-).
    External,
    /// loadBalancerSourceRanges filter (KUBE-FW- / firewall-).
    Firewall,
}

/// iptables chain name, as `servicePortPolicyClusterChain` & co. compute it.
pub fn iptables_chain(svc: &SvcSpec, kind: ChainKind) -> String {
    let prefix = match kind {
        ChainKind::Cluster => "KUBE-SVC-",
        ChainKind::Local => "KUBE-SVL-",
        ChainKind::External => "KUBE-EXT-",
        ChainKind::Firewall => "KUBE-FW-",
    };
    let input = format!("{}{}", svc.port_name_string(), svc.proto);
    format!("{prefix}{}", &base32(&sha256(input.as_bytes()))[..16])
}

/// iptables endpoint chain (KUBE-SEP-…).
pub fn iptables_endpoint_chain(svc: &SvcSpec, ep: &EpSpec) -> String {
    let input = format!(
        "{}{}{}:{}",
        svc.port_name_string(),
        svc.proto,
        ep.ip,
        ep.port
    );
    format!("KUBE-SEP-{}", &base32(&sha256(input.as_bytes()))[..16])
}

/// nftables chain name ("service-HASH-ns/name/proto/port" & co.).
pub fn nft_chain(svc: &SvcSpec, kind: ChainKind) -> String {
    let prefix = match kind {
        ChainKind::Cluster => "service-",
        ChainKind::Local => "local-",
        ChainKind::External => "external-",
        ChainKind::Firewall => "firewall-",
    };
    let base = format!(
        "{}/{}/{}/{}",
        svc.namespace, svc.name, svc.proto, svc.port_name
    );
    format!("{prefix}{}", hash_and_truncate(&base))
}

/// nftables endpoint chain ("endpoint-HASH-ns/name/proto/port__ip/port").
pub fn nft_endpoint_chain(svc: &SvcSpec, ep: &EpSpec) -> String {
    let base = format!(
        "{}/{}/{}/{}__{}/{}",
        svc.namespace, svc.name, svc.proto, svc.port_name, ep.ip, ep.port
    );
    format!("endpoint-{}", hash_and_truncate(&base))
}

/// The decisions kube-proxy's sync loop makes for one service port; both
/// backends make the same ones, so they are computed once.
struct Plan<'a> {
    name: String,
    local_eps: Vec<&'a EpSpec>,
    has_endpoints: bool,
    /// Endpoints that external (LB/NodePort) traffic from outside may use.
    has_external_endpoints: bool,
    uses_external_chain: bool,
    uses_local_chain: bool,
}

impl<'a> Plan<'a> {
    fn new(svc: &'a SvcSpec) -> Self {
        assert!(
            matches!(svc.proto, "tcp" | "udp" | "sctp"),
            "{}: protocol must be tcp, udp or sctp, not {:?}",
            svc.port_name_string(),
            svc.proto
        );
        let local_eps: Vec<&EpSpec> = svc.endpoints.iter().filter(|e| e.local).collect();
        let has_endpoints = !svc.endpoints.is_empty();
        let has_external_endpoints = if svc.etp_local {
            !local_eps.is_empty()
        } else {
            has_endpoints
        };
        let externally_accessible = svc.has_lb() || svc.node_port.is_some();
        Plan {
            name: svc.port_name_string(),
            uses_local_chain: svc.etp_local && !local_eps.is_empty(),
            local_eps,
            has_endpoints,
            has_external_endpoints,
            // Needed even without external endpoints: it short-circuits pod
            // and host traffic to the cluster-wide endpoints.
            uses_external_chain: has_endpoints && externally_accessible,
        }
    }
}

fn push(lines: &mut Vec<String>, parts: &[&str]) {
    lines.push(parts.join(" "));
}

/// The `filter` and `nat` tables as kube-proxy in iptables mode leaves them
/// (its `iptables-restore` input plus the jump rules it installs into the
/// built-in chains). Feed it to `iptables-restore` (or `iptables-nft-restore`)
/// *without* `--noflush`: both tables are replaced whole, so applying it
/// twice gives the same rules. Rules of other components must be added after.
///
/// `masquerade_all` is kube-proxy's `--masquerade-all`; otherwise traffic to a
/// ClusterIP from outside [`CLUSTER_CIDR`] is masqueraded.
///
/// # Panics
/// If a service's protocol is not tcp, udp or sctp.
pub fn iptables_restore(services: &[SvcSpec], masquerade_all: bool) -> String {
    let filter_chains: Vec<String> = [
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-EXTERNAL-SERVICES - [0:0]",
        ":KUBE-FORWARD - [0:0]",
        ":KUBE-NODEPORTS - [0:0]",
        ":KUBE-PROXY-FIREWALL - [0:0]",
        ":KUBE-FIREWALL - [0:0]",
    ]
    .map(String::from)
    .to_vec();
    // The jumps from the built-in chains, in the order found on real nodes
    // (kube-proxy prepends them; kubelet appended KUBE-FIREWALL earlier).
    let mut filter_rules: Vec<String> = [
        r#"-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL"#,
        r#"-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS"#,
        r#"-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES"#,
        "-A INPUT -j KUBE-FIREWALL",
        r#"-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL"#,
        r#"-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD"#,
        r#"-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#,
        r#"-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES"#,
        r#"-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL"#,
        r#"-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#,
        "-A OUTPUT -j KUBE-FIREWALL",
        // The route_localnet guard kube-proxy writes for localhost NodePorts.
        r#"-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"#,
    ]
    .map(String::from)
    .to_vec();

    let mut nat_chains: Vec<String> = [
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":KUBE-SERVICES - [0:0]",
        ":KUBE-NODEPORTS - [0:0]",
        ":KUBE-POSTROUTING - [0:0]",
        ":KUBE-MARK-MASQ - [0:0]",
    ]
    .map(String::from)
    .to_vec();
    let mark = format!("{MASQUERADE_MARK}/{MASQUERADE_MARK}");
    let mut nat_rules: Vec<String> = vec![
        r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#.into(),
        r#"-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#.into(),
        r#"-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING"#.into(),
        format!("-A KUBE-POSTROUTING -m mark ! --mark {mark} -j RETURN"),
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQUERADE_MARK}"),
        r#"-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully"#.into(),
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQUERADE_MARK}"),
    ];

    for svc in services {
        let p = Plan::new(svc);
        let proto = svc.proto;
        let name = &p.name;
        let svc_chain = iptables_chain(svc, ChainKind::Cluster);
        let svl_chain = iptables_chain(svc, ChainKind::Local);
        let ext_chain = iptables_chain(svc, ChainKind::External);
        let fw_chain = iptables_chain(svc, ChainKind::Firewall);
        let cip = svc.cluster_ip.to_string();
        let port = svc.port.to_string();
        let lb = svc.lb_ip.to_string();
        let uses_fw = p.has_endpoints && svc.has_lb() && !svc.source_ranges.is_empty();
        // Internal policy is always Cluster here, so internal endpoints exist
        // exactly when any endpoint does.
        let (ext_target, ext_comment) = if p.has_endpoints {
            ("DROP", format!("\"{name} has no local endpoints\""))
        } else {
            ("REJECT", format!("\"{name} has no endpoints\""))
        };

        // ClusterIP.
        if p.has_endpoints {
            let c = format!("\"{name} cluster IP\"");
            push(
                &mut nat_rules,
                &[
                    "-A KUBE-SERVICES -m comment --comment",
                    &c,
                    "-m",
                    proto,
                    "-p",
                    proto,
                    "-d",
                    &cip,
                    "--dport",
                    &port,
                    "-j",
                    &svc_chain,
                ],
            );
        } else {
            let c = format!("\"{name} has no endpoints\"");
            push(
                &mut filter_rules,
                &[
                    "-A KUBE-SERVICES -m comment --comment",
                    &c,
                    "-m",
                    proto,
                    "-p",
                    proto,
                    "-d",
                    &cip,
                    "--dport",
                    &port,
                    "-j REJECT",
                ],
            );
        }
        // LoadBalancer IP.
        if svc.has_lb() {
            if p.has_endpoints {
                let c = format!("\"{name} loadbalancer IP\"");
                let target = if uses_fw { &fw_chain } else { &ext_chain };
                push(
                    &mut nat_rules,
                    &[
                        "-A KUBE-SERVICES -m comment --comment",
                        &c,
                        "-m",
                        proto,
                        "-p",
                        proto,
                        "-d",
                        &lb,
                        "--dport",
                        &port,
                        "-j",
                        target,
                    ],
                );
            }
            if uses_fw {
                let c = format!("\"{name} traffic not accepted by {fw_chain}\"");
                push(
                    &mut filter_rules,
                    &[
                        "-A KUBE-PROXY-FIREWALL -m comment --comment",
                        &c,
                        "-m",
                        proto,
                        "-p",
                        proto,
                        "-d",
                        &lb,
                        "--dport",
                        &port,
                        "-j DROP",
                    ],
                );
            }
            if !p.has_external_endpoints {
                push(
                    &mut filter_rules,
                    &[
                        "-A KUBE-EXTERNAL-SERVICES -m comment --comment",
                        &ext_comment,
                        "-m",
                        proto,
                        "-p",
                        proto,
                        "-d",
                        &lb,
                        "--dport",
                        &port,
                        "-j",
                        ext_target,
                    ],
                );
            }
        }
        // NodePort.
        if let Some(np) = svc.node_port {
            let np = np.to_string();
            if p.has_endpoints {
                push(
                    &mut nat_rules,
                    &[
                        "-A KUBE-NODEPORTS -m comment --comment",
                        name,
                        "-m",
                        proto,
                        "-p",
                        proto,
                        "--dport",
                        &np,
                        "-j",
                        &ext_chain,
                    ],
                );
            }
            if !p.has_external_endpoints {
                push(
                    &mut filter_rules,
                    &[
                        "-A KUBE-EXTERNAL-SERVICES -m comment --comment",
                        &ext_comment,
                        "-m addrtype --dst-type LOCAL -m",
                        proto,
                        "-p",
                        proto,
                        "--dport",
                        &np,
                        "-j",
                        ext_target,
                    ],
                );
            }
        }

        if !p.has_endpoints {
            continue;
        }
        // Masquerade off-cluster (or, with --masquerade-all, all) traffic to the ClusterIP.
        let c = format!("\"{name} cluster IP\"");
        let masq_src = if masquerade_all {
            String::new()
        } else {
            format!("! -s {CLUSTER_CIDR}")
        };
        let mut masq = vec![
            "-A",
            svc_chain.as_str(),
            "-m comment --comment",
            c.as_str(),
            "-m",
            proto,
            "-p",
            proto,
            "-d",
            cip.as_str(),
            "--dport",
            port.as_str(),
        ];
        if !masquerade_all {
            masq.push(&masq_src);
        }
        masq.push("-j KUBE-MARK-MASQ");
        push(&mut nat_rules, &masq);

        if p.uses_external_chain {
            nat_chains.push(format!(":{ext_chain} - [0:0]"));
            if !svc.etp_local {
                let c = format!("\"masquerade traffic for {name} external destinations\"");
                push(
                    &mut nat_rules,
                    &[
                        "-A",
                        &ext_chain,
                        "-m comment --comment",
                        &c,
                        "-j KUBE-MARK-MASQ",
                    ],
                );
            } else {
                let c = format!("\"pod traffic for {name} external destinations\"");
                push(
                    &mut nat_rules,
                    &[
                        "-A",
                        &ext_chain,
                        "-m comment --comment",
                        &c,
                        "-s",
                        CLUSTER_CIDR,
                        "-j",
                        &svc_chain,
                    ],
                );
                let c = format!("\"masquerade LOCAL traffic for {name} external destinations\"");
                push(
                    &mut nat_rules,
                    &[
                        "-A",
                        &ext_chain,
                        "-m comment --comment",
                        &c,
                        "-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
                    ],
                );
                let c = format!("\"route LOCAL traffic for {name} external destinations\"");
                push(
                    &mut nat_rules,
                    &[
                        "-A",
                        &ext_chain,
                        "-m comment --comment",
                        &c,
                        "-m addrtype --src-type LOCAL -j",
                        &svc_chain,
                    ],
                );
            }
            if p.has_external_endpoints {
                let policy = if svc.etp_local {
                    &svl_chain
                } else {
                    &svc_chain
                };
                push(&mut nat_rules, &["-A", &ext_chain, "-j", policy]);
            }
        }
        if uses_fw {
            nat_chains.push(format!(":{fw_chain} - [0:0]"));
            let c = format!("\"{name} loadbalancer IP\"");
            for cidr in &svc.source_ranges {
                push(
                    &mut nat_rules,
                    &[
                        "-A",
                        &fw_chain,
                        "-m comment --comment",
                        &c,
                        "-s",
                        cidr,
                        "-j",
                        &ext_chain,
                    ],
                );
            }
            // A rule without target: it only counts; what falls through here
            // was not DNATed and meets the KUBE-PROXY-FIREWALL drop.
            let c = format!("\"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL\"");
            push(
                &mut nat_rules,
                &["-A", &fw_chain, "-m comment --comment", &c],
            );
        }
        nat_chains.push(format!(":{svc_chain} - [0:0]"));
        let all: Vec<&EpSpec> = svc.endpoints.iter().collect();
        ipt_endpoint_dispatch(&mut nat_rules, svc, &svc_chain, &all);
        if p.uses_local_chain {
            nat_chains.push(format!(":{svl_chain} - [0:0]"));
            ipt_endpoint_dispatch(&mut nat_rules, svc, &svl_chain, &p.local_eps);
        }
        for ep in &svc.endpoints {
            let sep = iptables_endpoint_chain(svc, ep);
            nat_chains.push(format!(":{sep} - [0:0]"));
            let ip = ep.ip.to_string();
            // Hairpin: an endpoint reaching itself through the service is masqueraded.
            push(
                &mut nat_rules,
                &[
                    "-A",
                    &sep,
                    "-m comment --comment",
                    name,
                    "-s",
                    &ip,
                    "-j KUBE-MARK-MASQ",
                ],
            );
            let to = format!("{}:{}", ep.ip, ep.port);
            push(
                &mut nat_rules,
                &[
                    "-A",
                    &sep,
                    "-m comment --comment",
                    name,
                    "-m",
                    proto,
                    "-p",
                    proto,
                    "-j DNAT --to-destination",
                    &to,
                ],
            );
        }
    }

    filter_rules.push("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP".into());
    filter_rules.push(format!(
        r#"-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark} -j ACCEPT"#
    ));
    filter_rules.push(
        r#"-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"#.into(),
    );
    nat_rules.push(
        r#"-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"#.into(),
    );

    let mut out = String::from("*filter\n");
    for l in filter_chains.iter().chain(&filter_rules) {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str("COMMIT\n*nat\n");
    for l in nat_chains.iter().chain(&nat_rules) {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    out
}

/// Random choice among endpoints, as `writeServiceToEndpointRules`: rule i
/// matches with probability 1/(n-i), the last one always.
fn ipt_endpoint_dispatch(rules: &mut Vec<String>, svc: &SvcSpec, chain: &str, eps: &[&EpSpec]) {
    let name = svc.port_name_string();
    for (i, ep) in eps.iter().enumerate() {
        let c = format!("\"{name} -> {}:{}\"", ep.ip, ep.port);
        let sep = iptables_endpoint_chain(svc, ep);
        if i + 1 < eps.len() {
            let prob = format!("{:.10}", 1.0 / (eps.len() - i) as f64);
            push(
                rules,
                &[
                    "-A",
                    chain,
                    "-m comment --comment",
                    &c,
                    "-m statistic --mode random --probability",
                    &prob,
                    "-j",
                    &sep,
                ],
            );
        } else {
            push(
                rules,
                &["-A", chain, "-m comment --comment", &c, "-j", &sep],
            );
        }
    }
}

/// Table `ip kube-proxy` as kube-proxy in nftables mode writes it, as an
/// `nft -f -` script. The script first creates and deletes the table, so it
/// replaces a previous one whole and can be applied any number of times.
/// It touches no other table.
///
/// `masquerade_all` is kube-proxy's `--masquerade-all`; otherwise traffic to a
/// ClusterIP from outside [`CLUSTER_CIDR`] is masqueraded.
///
/// # Panics
/// If a service's protocol is not tcp, udp or sctp.
pub fn nft_script(services: &[SvcSpec], masquerade_all: bool) -> String {
    const T: &str = "ip kube-proxy";
    let mut s = String::new();
    // `add` then `delete`: deleting a table that does not exist would fail.
    let _ = writeln!(s, "add table {T}\ndelete table {T}");
    let _ = writeln!(
        s,
        "add table {T} {{ comment \"rules for kube-proxy\" ; }}\n"
    );

    let verdict_map = |name: &str, key: &str, comment: &str| {
        format!("add map {T} {name} {{ type {key} : verdict ; comment \"{comment}\" ; }}\n")
    };
    let _ = writeln!(
        s,
        "add set {T} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"
    );
    s += &verdict_map(
        "firewall-ips",
        "ipv4_addr . inet_proto . inet_service",
        "destinations that are subject to LoadBalancerSourceRanges",
    );
    s += &verdict_map(
        "no-endpoint-nodeports",
        "inet_proto . inet_service",
        "vmap to drop or reject packets to service nodeports with no endpoints",
    );
    s += &verdict_map(
        "no-endpoint-services",
        "ipv4_addr . inet_proto . inet_service",
        "vmap to drop or reject packets to services with no endpoints",
    );
    s += &verdict_map(
        "service-ips",
        "ipv4_addr . inet_proto . inet_service",
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
    );
    s += &verdict_map(
        "service-nodeports",
        "inet_proto . inet_service",
        "NodePort traffic",
    );
    s.push('\n');

    for (chain, spec) in [
        ("cluster-ips-check", ""),
        // Filter before DNAT sees the service IP (firewall); at priority 0
        // it sees the endpoint.
        (
            "filter-prerouting-pre-dnat",
            "type filter hook prerouting priority -110 ;",
        ),
        (
            "filter-output-pre-dnat",
            "type filter hook output priority -110 ;",
        ),
        ("filter-forward", "type filter hook forward priority 0 ;"),
        ("filter-input", "type filter hook input priority 0 ;"),
        ("filter-output", "type filter hook output priority 0 ;"),
        ("firewall-check", ""),
        ("mark-for-masquerade", ""),
        ("masquerading", ""),
        ("nat-output", "type nat hook output priority -100 ;"),
        (
            "nat-postrouting",
            "type nat hook postrouting priority 100 ;",
        ),
        ("nat-prerouting", "type nat hook prerouting priority -100 ;"),
        ("nodeport-endpoints-check", ""),
        (
            "reject-chain",
            "comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ;",
        ),
        ("services", ""),
        ("service-endpoints-check", ""),
    ] {
        if spec.is_empty() {
            let _ = writeln!(s, "add chain {T} {chain}");
        } else {
            let _ = writeln!(s, "add chain {T} {chain} {{ {spec} }}");
        }
    }
    s.push('\n');
    for rule in [
        "cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\"".to_string(),
        format!("cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\""),
        "filter-prerouting-pre-dnat ct state new jump firewall-check".into(),
        "filter-forward ct state new jump service-endpoints-check".into(),
        "filter-forward ct state new jump cluster-ips-check".into(),
        "filter-input ct state new jump nodeport-endpoints-check".into(),
        "filter-input ct state new jump service-endpoints-check".into(),
        "filter-output ct state new jump service-endpoints-check".into(),
        "filter-output-pre-dnat ct state new jump firewall-check".into(),
        "filter-output ct state new jump cluster-ips-check".into(),
        "firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips".into(),
        format!("mark-for-masquerade mark set mark or {MASQUERADE_MARK}"),
        format!("masquerading mark and {MASQUERADE_MARK} == 0 return"),
        format!("masquerading mark set mark xor {MASQUERADE_MARK}"),
        "masquerading masquerade fully-random".into(),
        "nat-output jump services".into(),
        "nat-postrouting jump masquerading".into(),
        "nat-prerouting jump services".into(),
        "nodeport-endpoints-check ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports".into(),
        "reject-chain reject".into(),
        "services ip daddr . meta l4proto . th dport vmap @service-ips".into(),
        "services fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports".into(),
        "service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services".into(),
    ] {
        let _ = writeln!(s, "add rule {T} {rule}");
    }

    for svc in services {
        let p = Plan::new(svc);
        let name = &p.name;
        let proto = svc.proto;
        let svc_chain = nft_chain(svc, ChainKind::Cluster);
        let local_chain = nft_chain(svc, ChainKind::Local);
        let ext_chain = nft_chain(svc, ChainKind::External);
        let fw_chain = nft_chain(svc, ChainKind::Firewall);
        // Unlike iptables mode, the firewall chain does not depend on endpoints.
        let uses_fw = svc.has_lb() && !svc.source_ranges.is_empty();
        let ext_verdict = if p.has_endpoints {
            "drop"
        } else {
            "goto reject-chain"
        };
        let _ = writeln!(s, "\n# {name}");

        // Chains first: map elements may only point at existing chains.
        for ep in &svc.endpoints {
            let _ = writeln!(s, "add chain {T} {}", nft_endpoint_chain(svc, ep));
        }
        if p.has_endpoints {
            let _ = writeln!(s, "add chain {T} {svc_chain}");
        }
        if p.uses_local_chain {
            let _ = writeln!(s, "add chain {T} {local_chain}");
        }
        if p.uses_external_chain {
            let _ = writeln!(s, "add chain {T} {ext_chain}");
        }
        if uses_fw {
            let _ = writeln!(s, "add chain {T} {fw_chain}");
        }

        if p.has_endpoints {
            if masquerade_all {
                let _ = writeln!(
                    s,
                    "add rule {T} {svc_chain} ip daddr {} jump mark-for-masquerade",
                    svc.cluster_ip
                );
            } else {
                let _ = writeln!(
                    s,
                    "add rule {T} {svc_chain} ip daddr {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
                    svc.cluster_ip
                );
            }
            let all: Vec<&EpSpec> = svc.endpoints.iter().collect();
            nft_endpoint_dispatch(&mut s, svc, &svc_chain, &all);
        }
        if p.uses_local_chain {
            nft_endpoint_dispatch(&mut s, svc, &local_chain, &p.local_eps);
        }
        if p.uses_external_chain {
            if !svc.etp_local {
                let _ = writeln!(s, "add rule {T} {ext_chain} jump mark-for-masquerade");
            } else {
                let _ = writeln!(
                    s,
                    "add rule {T} {ext_chain} ip saddr {CLUSTER_CIDR} goto {svc_chain} comment \"short-circuit pod traffic\""
                );
                let _ = writeln!(
                    s,
                    "add rule {T} {ext_chain} fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\""
                );
                let _ = writeln!(
                    s,
                    "add rule {T} {ext_chain} fib saddr type local goto {svc_chain} comment \"short-circuit local traffic\""
                );
            }
            if p.has_external_endpoints {
                let policy = if svc.etp_local {
                    &local_chain
                } else {
                    &svc_chain
                };
                let _ = writeln!(s, "add rule {T} {ext_chain} goto {policy}");
            }
        }
        if uses_fw {
            let _ = writeln!(
                s,
                "add rule {T} {fw_chain} ip saddr != {{ {} }} drop",
                svc.source_ranges.join(", ")
            );
        }
        for ep in &svc.endpoints {
            let chain = nft_endpoint_chain(svc, ep);
            let _ = writeln!(
                s,
                "add rule {T} {chain} ip saddr {} jump mark-for-masquerade",
                ep.ip
            );
            let _ = writeln!(
                s,
                "add rule {T} {chain} meta l4proto {proto} dnat to {}:{}",
                ep.ip, ep.port
            );
        }

        let cip = svc.cluster_ip;
        let port = svc.port;
        let _ = writeln!(s, "add element {T} cluster-ips {{ {cip} }}");
        if p.has_endpoints {
            let _ = writeln!(
                s,
                "add element {T} service-ips {{ {cip} . {proto} . {port} : goto {svc_chain} }}"
            );
        } else {
            let _ = writeln!(
                s,
                "add element {T} no-endpoint-services {{ {cip} . {proto} . {port} comment \"{name}\" : goto reject-chain }}"
            );
        }
        if svc.has_lb() {
            let lb = svc.lb_ip;
            if p.has_endpoints {
                let _ = writeln!(
                    s,
                    "add element {T} service-ips {{ {lb} . {proto} . {port} : goto {ext_chain} }}"
                );
            }
            if uses_fw {
                let _ = writeln!(
                    s,
                    "add element {T} firewall-ips {{ {lb} . {proto} . {port} : goto {fw_chain} }}"
                );
            }
            if !p.has_external_endpoints {
                let _ = writeln!(
                    s,
                    "add element {T} no-endpoint-services {{ {lb} . {proto} . {port} comment \"{name}\" : {ext_verdict} }}"
                );
            }
        }
        if let Some(np) = svc.node_port {
            if p.has_endpoints {
                let _ = writeln!(
                    s,
                    "add element {T} service-nodeports {{ {proto} . {np} : goto {ext_chain} }}"
                );
            }
            if !p.has_external_endpoints {
                let _ = writeln!(
                    s,
                    "add element {T} no-endpoint-nodeports {{ {proto} . {np} comment \"{name}\" : {ext_verdict} }}"
                );
            }
        }
    }
    s
}

/// `numgen random mod N vmap { 0 : goto …, 1 : goto … }`.
fn nft_endpoint_dispatch(s: &mut String, svc: &SvcSpec, chain: &str, eps: &[&EpSpec]) {
    let arms: Vec<String> = eps
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto {}", nft_endpoint_chain(svc, ep)))
        .collect();
    let _ = writeln!(
        s,
        "add rule ip kube-proxy {chain} numgen random mod {} vmap {{ {} }}",
        eps.len(),
        arms.join(" , ")
    );
}

/// The Services the lbpath fixtures were captured from (see
/// `tracer/src/kubeproxy/testdata/README.md`): one of each case lbpath must
/// explain. The test below pins the generator to the captured inputs.
pub fn fixture_services() -> Vec<SvcSpec> {
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("fixture address");
    let ep = |s: &str, port, local| EpSpec {
        ip: ip(s),
        port,
        local,
    };
    let svc = |name: &str, port_name: &str, proto, lb: &str, port, node_port, cip: &str| SvcSpec {
        namespace: "lab".into(),
        name: name.into(),
        port_name: port_name.into(),
        proto,
        lb_ip: ip(lb),
        port,
        node_port,
        cluster_ip: ip(cip),
        endpoints: vec![],
        etp_local: false,
        source_ranges: vec![],
    };
    vec![
        // LoadBalancer, two endpoints, one on this node.
        SvcSpec {
            endpoints: vec![ep("10.244.1.5", 8080, true), ep("10.244.2.7", 8080, false)],
            ..svc(
                "web",
                "http",
                "tcp",
                "203.0.113.10",
                80,
                Some(30080),
                "10.96.0.10",
            )
        },
        // No endpoints at all: REJECT.
        svc(
            "empty",
            "http",
            "tcp",
            "203.0.113.11",
            80,
            Some(30081),
            "10.96.0.11",
        ),
        // externalTrafficPolicy=Local, endpoint only on another node: DROP.
        SvcSpec {
            endpoints: vec![ep("10.244.2.8", 8080, false)],
            etp_local: true,
            ..svc(
                "local-only",
                "http",
                "tcp",
                "203.0.113.12",
                80,
                Some(30082),
                "10.96.0.12",
            )
        },
        // loadBalancerSourceRanges.
        SvcSpec {
            endpoints: vec![ep("10.244.1.6", 8443, true)],
            source_ranges: vec!["198.51.100.0/24".into()],
            ..svc(
                "restricted",
                "https",
                "tcp",
                "203.0.113.13",
                443,
                Some(30443),
                "10.96.0.13",
            )
        },
        // NodePort only, unnamed port, externalTrafficPolicy=Local with a
        // local and a remote endpoint.
        SvcSpec {
            endpoints: vec![ep("10.244.1.7", 9090, true), ep("10.244.2.9", 9090, false)],
            etp_local: true,
            ..svc(
                "nodeport",
                "",
                "tcp",
                "0.0.0.0",
                9090,
                Some(30090),
                "10.96.0.14",
            )
        },
        // UDP LoadBalancer.
        SvcSpec {
            endpoints: vec![ep("10.244.1.8", 5353, true)],
            ..svc("dns", "dns", "udp", "203.0.113.14", 53, None, "10.96.0.15")
        },
    ]
}

// --- SHA-256 and base32, for kube-proxy's chain names ----------------------

/// kube-proxy's `hashAndTruncate`: an 8-character hash prefix keeps names
/// distinct and readable; names over 240 characters are cut with "...".
fn hash_and_truncate(name: &str) -> String {
    const MAX: usize = 256 - 16;
    let mut s = format!("{}-{name}", &base32(&sha256(name.as_bytes()))[..8]);
    if s.len() > MAX {
        // Chain names are ASCII (namespace, name, IP, digits), so this is a char boundary.
        s.truncate(MAX - 3);
        s.push_str("...");
    }
    s
}

/// RFC 4648 base32 without padding (only a prefix is ever used).
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// FIPS 180-4 SHA-256.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let [a, b, c, d, e, f, g, hh] = v;
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            v = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
        }
        for (x, y) in h.iter_mut().zip(v) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn spec(ns: &str, name: &str, port: &str) -> SvcSpec {
        SvcSpec {
            namespace: ns.into(),
            name: name.into(),
            port_name: port.into(),
            proto: "tcp",
            lb_ip: Ipv4Addr::UNSPECIFIED,
            port: 80,
            node_port: None,
            cluster_ip: Ipv4Addr::new(10, 96, 0, 1),
            endpoints: vec![],
            etp_local: false,
            source_ranges: vec![],
        }
    }

    #[test]
    fn sha256_matches_fips_vectors() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Two blocks: the padding crosses a block boundary.
        assert_eq!(
            hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
    }

    // Expected names are those in kube-proxy's own proxier_test.go files.
    #[test]
    fn iptables_chain_names_match_kube_proxy() {
        let svc2 = spec("ns2", "svc2", "p80");
        assert_eq!(
            iptables_chain(&svc2, ChainKind::Cluster),
            "KUBE-SVC-GNZBNJ2PO5MGZ6GT"
        );
        assert_eq!(
            iptables_chain(&svc2, ChainKind::External),
            "KUBE-EXT-GNZBNJ2PO5MGZ6GT"
        );
        assert_eq!(
            iptables_chain(&spec("ns5", "svc5", "p80"), ChainKind::Firewall),
            "KUBE-FW-NUKIZ6OKUXPJNT4C"
        );
        let ep = EpSpec {
            ip: Ipv4Addr::new(10, 180, 0, 5),
            port: 80,
            local: false,
        };
        assert_eq!(
            iptables_endpoint_chain(&spec("ns4", "svc4", "p80"), &ep),
            "KUBE-SEP-C6EBXVWJJZMIWKLZ"
        );
    }

    #[test]
    fn nft_chain_names_match_kube_proxy() {
        let svc1 = spec("ns1", "svc1", "p80");
        assert_eq!(
            nft_chain(&svc1, ChainKind::Cluster),
            "service-ULMVA6XW-ns1/svc1/tcp/p80"
        );
        assert_eq!(
            nft_chain(&spec("ns5", "svc5", "p80"), ChainKind::Firewall),
            "firewall-HVFWP5L3-ns5/svc5/tcp/p80"
        );
        let ep = EpSpec {
            ip: Ipv4Addr::new(10, 180, 0, 1),
            port: 80,
            local: false,
        };
        assert_eq!(
            nft_endpoint_chain(&svc1, &ep),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn unnamed_port_is_named_after_the_service() {
        let s = spec("lab", "np", "");
        assert_eq!(s.port_name_string(), "lab/np");
        assert!(nft_chain(&s, ChainKind::Cluster).ends_with("-lab/np/tcp/"));
    }

    #[test]
    fn long_names_are_truncated_like_kube_proxy() {
        // Only IPv6 endpoints can make a real name this long; the cut is
        // still part of kube-proxy's naming, so it is checked directly.
        let name = hash_and_truncate(&"x".repeat(300));
        assert_eq!(name.len(), 240);
        assert!(name.ends_with("..."));
        assert_eq!(&name[8..10], "-x");
        let short = hash_and_truncate("ns/svc/tcp/p");
        assert_eq!(short.len(), 8 + 1 + "ns/svc/tcp/p".len());
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn iptables_no_endpoints_rejects_every_address() {
        let svcs = fixture_services();
        let text = iptables_restore(&svcs[1..2], false);
        let l = lines(&text);
        assert!(l.contains(&r#"-A KUBE-SERVICES -m comment --comment "lab/empty:http has no endpoints" -m tcp -p tcp -d 10.96.0.11 --dport 80 -j REJECT"#));
        assert!(l.contains(&r#"-A KUBE-EXTERNAL-SERVICES -m comment --comment "lab/empty:http has no endpoints" -m tcp -p tcp -d 203.0.113.11 --dport 80 -j REJECT"#));
        assert!(l.contains(&r#"-A KUBE-EXTERNAL-SERVICES -m comment --comment "lab/empty:http has no endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30081 -j REJECT"#));
        // No NAT for a service that has nowhere to go.
        assert!(!text.contains("KUBE-SVC-"));
        assert!(!text.contains("KUBE-EXT-"));
    }

    #[test]
    fn iptables_local_policy_without_local_endpoint_drops_external_traffic_only() {
        let svcs = fixture_services();
        let s = &svcs[2];
        let text = iptables_restore(std::slice::from_ref(s), false);
        let l = lines(&text);
        let ext = iptables_chain(s, ChainKind::External);
        let svc = iptables_chain(s, ChainKind::Cluster);
        assert!(l.contains(&r#"-A KUBE-EXTERNAL-SERVICES -m comment --comment "lab/local-only:http has no local endpoints" -m tcp -p tcp -d 203.0.113.12 --dport 80 -j DROP"#));
        // Pod and host traffic still reach the remote endpoint...
        assert!(l.contains(&format!(r#"-A {ext} -m comment --comment "pod traffic for lab/local-only:http external destinations" -s 10.244.0.0/16 -j {svc}"#).as_str()));
        // ...but nothing falls through to a local-endpoint chain.
        assert!(!text.contains("KUBE-SVL-"));
        assert!(!l.contains(&format!("-A {ext} -j {svc}").as_str()));
        // The cluster IP is unaffected by externalTrafficPolicy.
        assert!(text.contains(r#""lab/local-only:http cluster IP" -m tcp -p tcp -d 10.96.0.12 --dport 80 -j KUBE-SVC-"#));
    }

    #[test]
    fn iptables_dispatch_probabilities_split_evenly() {
        let mut s = spec("ns", "three", "p");
        s.endpoints = (1..=3)
            .map(|i| EpSpec {
                ip: Ipv4Addr::new(10, 244, 0, i),
                port: 80,
                local: false,
            })
            .collect();
        let text = iptables_restore(&[s.clone()], false);
        let chain = iptables_chain(&s, ChainKind::Cluster);
        let dispatch: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {chain} ")) && l.contains("-> "))
            .collect();
        assert_eq!(dispatch.len(), 3);
        assert!(dispatch[0].contains("--probability 0.3333333333"));
        assert!(dispatch[1].contains("--probability 0.5000000000"));
        assert!(!dispatch[2].contains("--probability"));
    }

    #[test]
    fn iptables_masquerade_all_drops_the_source_condition() {
        let svcs = fixture_services();
        let with = iptables_restore(&svcs[..1], true);
        let without = iptables_restore(&svcs[..1], false);
        let chain = iptables_chain(&svcs[0], ChainKind::Cluster);
        let masq = |t: &str| {
            t.lines()
                .find(|l| {
                    l.starts_with(&format!("-A {chain} ")) && l.ends_with("-j KUBE-MARK-MASQ")
                })
                .map(String::from)
        };
        assert!(masq(&without).unwrap().contains("! -s 10.244.0.0/16"));
        assert!(!masq(&with).unwrap().contains("! -s"));
    }

    #[test]
    fn iptables_declares_every_chain_it_uses() {
        let text = iptables_restore(&fixture_services(), false);
        let declared: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        for l in text.lines().filter(|l| l.starts_with("-A ")) {
            let words: Vec<&str> = l.split(' ').collect();
            assert!(declared.contains(&words[1]), "undeclared chain in {l}");
            if let Some(i) = words.iter().position(|w| *w == "-j") {
                let t = words[i + 1];
                if t.starts_with("KUBE-") {
                    assert!(declared.contains(&t), "jump to undeclared {t} in {l}");
                }
            }
        }
    }

    #[test]
    fn nft_script_replaces_the_table_and_only_it() {
        let text = nft_script(&fixture_services(), false);
        let mut l = text.lines();
        assert_eq!(l.next(), Some("add table ip kube-proxy"));
        assert_eq!(l.next(), Some("delete table ip kube-proxy"));
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let words: Vec<&str> = line.split(' ').collect();
            assert_eq!(words[2..4], ["ip", "kube-proxy"], "{line}");
        }
    }

    #[test]
    fn nft_no_endpoint_verdicts() {
        let svcs = fixture_services();
        let text = nft_script(&svcs[1..3], false);
        assert!(text.contains(r#"add element ip kube-proxy no-endpoint-services { 10.96.0.11 . tcp . 80 comment "lab/empty:http" : goto reject-chain }"#));
        assert!(text.contains(r#"add element ip kube-proxy no-endpoint-services { 203.0.113.11 . tcp . 80 comment "lab/empty:http" : goto reject-chain }"#));
        assert!(text.contains(r#"add element ip kube-proxy no-endpoint-nodeports { tcp . 30081 comment "lab/empty:http" : goto reject-chain }"#));
        assert!(text.contains(r#"add element ip kube-proxy no-endpoint-services { 203.0.113.12 . tcp . 80 comment "lab/local-only:http" : drop }"#));
        // The local-only service still serves its cluster IP and pod traffic.
        let svc = nft_chain(&svcs[2], ChainKind::Cluster);
        assert!(text.contains(&format!(
            "service-ips {{ 10.96.0.12 . tcp . 80 : goto {svc} }}"
        )));
        assert!(!text.contains("add chain ip kube-proxy local-"));
    }

    #[test]
    fn nft_chains_exist_before_elements_point_at_them() {
        let text = nft_script(&fixture_services(), false);
        let mut declared = vec!["reject-chain".to_string()];
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("add chain ip kube-proxy ") {
                declared.push(rest.split(' ').next().unwrap().to_string());
            }
            for (i, _) in line.match_indices("goto ") {
                let target = line[i + 5..].split([' ', '}']).next().unwrap();
                assert!(
                    declared.iter().any(|d| d == target),
                    "{target} used before declared: {line}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "protocol must be tcp, udp or sctp")]
    fn unknown_protocol_is_refused() {
        let mut s = spec("ns", "icmp", "p");
        s.proto = "icmp";
        iptables_restore(&[s], false);
    }

    #[test]
    fn nft_masquerade_all() {
        let svcs = fixture_services();
        let chain = nft_chain(&svcs[0], ChainKind::Cluster);
        let with = nft_script(&svcs[..1], true);
        assert!(with.contains(&format!(
            "add rule ip kube-proxy {chain} ip daddr 10.96.0.10 jump mark-for-masquerade\n"
        )));
        let without = nft_script(&svcs[..1], false);
        assert!(without.contains(&format!(
            "{chain} ip daddr 10.96.0.10 ip saddr != 10.244.0.0/16 jump mark-for-masquerade\n"
        )));
    }

    // The fixtures in the tracer crate were captured from exactly these
    // inputs; a change here must come with new captures.
    #[test]
    fn generator_matches_the_captured_inputs() {
        let svcs = fixture_services();
        assert_eq!(
            iptables_restore(&svcs, false),
            include_str!("../../tracer/src/kubeproxy/testdata/lab-iptables.rules")
        );
        assert_eq!(
            nft_script(&svcs, false),
            include_str!("../../tracer/src/kubeproxy/testdata/lab-kube-proxy.nft")
        );
    }
}
