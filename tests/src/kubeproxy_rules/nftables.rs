//! nftables mode: table `ip kube-proxy` as kube-proxy's nftables proxier
//! writes it, as an `nft -f -` script. The fixed part (maps, base chains and
//! their rules) comes first, then, per service port, one function per group
//! the proxier writes (chains, their rules, map elements), in its order.

use std::fmt::Write as _;

use super::{
    CLUSTER_CIDR, ChainKind, EpSpec, MASQUERADE_MARK, Plan, SERVICE_CIDR, SvcSpec, nft_chain,
    nft_endpoint_chain,
};

/// The table every line of the script is about.
const T: &str = "ip kube-proxy";

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
    let mut s = String::new();
    table_and_maps(&mut s);
    fixed_chains(&mut s);
    fixed_rules(&mut s);
    for svc in services {
        let p = ServicePort::new(svc);
        let _ = writeln!(s, "\n# {}", p.plan.name);
        // Chains first: map elements may only point at existing chains.
        p.declare_chains(&mut s);
        p.service_chains(&mut s, masquerade_all);
        p.external_chain(&mut s);
        p.firewall_chain(&mut s);
        p.endpoint_chains(&mut s);
        p.cluster_ip(&mut s);
        p.external_ips(&mut s);
        p.load_balancer(&mut s);
        p.node_port(&mut s);
    }
    s
}

/// The table (replacing any previous one), the set of ClusterIPs and the
/// verdict maps services are elements of.
fn table_and_maps(s: &mut String) {
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
    *s += &verdict_map(
        "firewall-ips",
        "ipv4_addr . inet_proto . inet_service",
        "destinations that are subject to LoadBalancerSourceRanges",
    );
    *s += &verdict_map(
        "no-endpoint-nodeports",
        "inet_proto . inet_service",
        "vmap to drop or reject packets to service nodeports with no endpoints",
    );
    *s += &verdict_map(
        "no-endpoint-services",
        "ipv4_addr . inet_proto . inet_service",
        "vmap to drop or reject packets to services with no endpoints",
    );
    *s += &verdict_map(
        "service-ips",
        "ipv4_addr . inet_proto . inet_service",
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
    );
    *s += &verdict_map(
        "service-nodeports",
        "inet_proto . inet_service",
        "NodePort traffic",
    );
    s.push('\n');
}

/// kube-proxy's fixed chains: the base chains (filter and nat hooks) and
/// the regular chains they jump to.
fn fixed_chains(s: &mut String) {
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
}

/// The rules of the fixed chains: filter checks, masquerading, and the
/// lookups in the service maps.
fn fixed_rules(s: &mut String) {
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
}

/// One service port with the names of its chains and the decisions made
/// for it.
struct ServicePort<'a> {
    svc: &'a SvcSpec,
    plan: Plan<'a>,
    /// service-…: all endpoints.
    svc_chain: String,
    /// local-…: local endpoints only.
    local_chain: String,
    /// external-…: entry for LoadBalancer IP and NodePort traffic.
    ext_chain: String,
    /// firewall-…: loadBalancerSourceRanges.
    fw_chain: String,
    /// Unlike iptables mode, the firewall chain does not depend on endpoints.
    uses_fw: bool,
}

impl<'a> ServicePort<'a> {
    fn new(svc: &'a SvcSpec) -> Self {
        ServicePort {
            svc,
            plan: Plan::new(svc),
            svc_chain: nft_chain(svc, ChainKind::Cluster),
            local_chain: nft_chain(svc, ChainKind::Local),
            ext_chain: nft_chain(svc, ChainKind::External),
            fw_chain: nft_chain(svc, ChainKind::Firewall),
            uses_fw: svc.has_lb() && !svc.source_ranges.is_empty(),
        }
    }

    /// The verdict of the external addresses (LoadBalancer IP, node port)
    /// when no endpoint may serve outside traffic: with endpoints only the
    /// local ones are missing (drop), without any it is a reject.
    fn no_external_endpoints(&self) -> &'static str {
        if self.plan.has_endpoints {
            "drop"
        } else {
            "goto reject-chain"
        }
    }

    /// Every chain of the service port that has rules.
    fn declare_chains(&self, s: &mut String) {
        for ep in &self.svc.endpoints {
            let _ = writeln!(s, "add chain {T} {}", nft_endpoint_chain(self.svc, ep));
        }
        if self.plan.has_endpoints {
            let _ = writeln!(s, "add chain {T} {}", self.svc_chain);
        }
        if self.plan.uses_local_chain {
            let _ = writeln!(s, "add chain {T} {}", self.local_chain);
        }
        if self.plan.uses_external_chain {
            let _ = writeln!(s, "add chain {T} {}", self.ext_chain);
        }
        if self.uses_fw {
            let _ = writeln!(s, "add chain {T} {}", self.fw_chain);
        }
    }

    /// service-…: masquerade off-cluster (or, with --masquerade-all, all)
    /// traffic to the ClusterIP, then the choice among all endpoints;
    /// local-…: the choice among the local ones.
    fn service_chains(&self, s: &mut String, masquerade_all: bool) {
        let (svc_chain, cip) = (&self.svc_chain, self.svc.cluster_ip);
        if self.plan.has_endpoints {
            if masquerade_all {
                let _ = writeln!(
                    s,
                    "add rule {T} {svc_chain} ip daddr {cip} jump mark-for-masquerade"
                );
            } else {
                let _ = writeln!(
                    s,
                    "add rule {T} {svc_chain} ip daddr {cip} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade"
                );
            }
            let all: Vec<&EpSpec> = self.svc.endpoints.iter().collect();
            self.endpoint_dispatch(s, svc_chain, &all);
        }
        if self.plan.uses_local_chain {
            self.endpoint_dispatch(s, &self.local_chain, &self.plan.local_eps);
        }
    }

    /// `numgen random mod N vmap { 0 : goto …, 1 : goto … }`.
    fn endpoint_dispatch(&self, s: &mut String, chain: &str, eps: &[&EpSpec]) {
        let arms: Vec<String> = eps
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : goto {}", nft_endpoint_chain(self.svc, ep)))
            .collect();
        let _ = writeln!(
            s,
            "add rule {T} {chain} numgen random mod {} vmap {{ {} }}",
            eps.len(),
            arms.join(" , ")
        );
    }

    /// external-…: masquerade, short-circuits of pod and host traffic under
    /// a Local policy, then the jump to the endpoints outside traffic may
    /// use.
    fn external_chain(&self, s: &mut String) {
        if !self.plan.uses_external_chain {
            return;
        }
        let (ext, svc) = (&self.ext_chain, &self.svc_chain);
        if !self.svc.etp_local {
            let _ = writeln!(s, "add rule {T} {ext} jump mark-for-masquerade");
        } else {
            let _ = writeln!(
                s,
                "add rule {T} {ext} ip saddr {CLUSTER_CIDR} goto {svc} comment \"short-circuit pod traffic\""
            );
            let _ = writeln!(
                s,
                "add rule {T} {ext} fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\""
            );
            let _ = writeln!(
                s,
                "add rule {T} {ext} fib saddr type local goto {svc} comment \"short-circuit local traffic\""
            );
        }
        if self.plan.has_external_endpoints {
            let policy = if self.svc.etp_local {
                &self.local_chain
            } else {
                svc
            };
            let _ = writeln!(s, "add rule {T} {ext} goto {policy}");
        }
    }

    /// firewall-…: drop sources outside loadBalancerSourceRanges, listed
    /// as kube-proxy joins them (`knftables.Concat` puts spaces around the
    /// commas).
    fn firewall_chain(&self, s: &mut String) {
        if self.uses_fw {
            let _ = writeln!(
                s,
                "add rule {T} {} ip saddr != {{ {} }} drop",
                self.fw_chain,
                self.svc.source_ranges.join(" , ")
            );
        }
    }

    /// endpoint-… per endpoint: the hairpin masquerade and the DNAT.
    fn endpoint_chains(&self, s: &mut String) {
        let proto = self.svc.proto;
        for ep in &self.svc.endpoints {
            let chain = nft_endpoint_chain(self.svc, ep);
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
    }

    /// The ClusterIP: in @cluster-ips, and in @service-ips, or rejected
    /// through @no-endpoint-services without endpoints.
    fn cluster_ip(&self, s: &mut String) {
        let (name, proto) = (&self.plan.name, self.svc.proto);
        let (cip, port) = (self.svc.cluster_ip, self.svc.port);
        let _ = writeln!(s, "add element {T} cluster-ips {{ {cip} }}");
        if self.plan.has_endpoints {
            let _ = writeln!(
                s,
                "add element {T} service-ips {{ {cip} . {proto} . {port} : goto {} }}",
                self.svc_chain
            );
        } else {
            let _ = writeln!(
                s,
                "add element {T} no-endpoint-services {{ {cip} . {proto} . {port} comment \"{name}\" : goto reject-chain }}"
            );
        }
    }

    /// externalIPs: in @service-ips like the LoadBalancer IP, never in
    /// @firewall-ips; @no-endpoint-services without endpoints for outside
    /// traffic.
    fn external_ips(&self, s: &mut String) {
        let (name, proto, port) = (&self.plan.name, self.svc.proto, self.svc.port);
        for ip in &self.svc.external_ips {
            if self.plan.has_endpoints {
                let _ = writeln!(
                    s,
                    "add element {T} service-ips {{ {ip} . {proto} . {port} : goto {} }}",
                    self.ext_chain
                );
            }
            if !self.plan.has_external_endpoints {
                let _ = writeln!(
                    s,
                    "add element {T} no-endpoint-services {{ {ip} . {proto} . {port} comment \"{name}\" : {} }}",
                    self.no_external_endpoints()
                );
            }
        }
    }

    /// The LoadBalancer IP: in @service-ips, @firewall-ips with source
    /// ranges, @no-endpoint-services without endpoints for outside traffic.
    fn load_balancer(&self, s: &mut String) {
        if !self.svc.has_lb() {
            return;
        }
        let (name, proto) = (&self.plan.name, self.svc.proto);
        let (lb, port) = (self.svc.lb_ip, self.svc.port);
        if self.plan.has_endpoints {
            let _ = writeln!(
                s,
                "add element {T} service-ips {{ {lb} . {proto} . {port} : goto {} }}",
                self.ext_chain
            );
        }
        if self.uses_fw {
            let _ = writeln!(
                s,
                "add element {T} firewall-ips {{ {lb} . {proto} . {port} : goto {} }}",
                self.fw_chain
            );
        }
        if !self.plan.has_external_endpoints {
            let _ = writeln!(
                s,
                "add element {T} no-endpoint-services {{ {lb} . {proto} . {port} comment \"{name}\" : {} }}",
                self.no_external_endpoints()
            );
        }
    }

    /// The node port: in @service-nodeports, or @no-endpoint-nodeports
    /// without endpoints for outside traffic.
    fn node_port(&self, s: &mut String) {
        let Some(np) = self.svc.node_port else {
            return;
        };
        let (name, proto) = (&self.plan.name, self.svc.proto);
        if self.plan.has_endpoints {
            let _ = writeln!(
                s,
                "add element {T} service-nodeports {{ {proto} . {np} : goto {} }}",
                self.ext_chain
            );
        }
        if !self.plan.has_external_endpoints {
            let _ = writeln!(
                s,
                "add element {T} no-endpoint-nodeports {{ {proto} . {np} comment \"{name}\" : {} }}",
                self.no_external_endpoints()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture_services;
    use super::*;

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
}
