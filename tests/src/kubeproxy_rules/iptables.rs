//! iptables mode: the `filter` and `nat` tables kube-proxy's iptables
//! proxier leaves, written as `iptables-restore` input. One function per
//! rule group the proxier writes for a service port (its addresses, the
//! masquerade rule, the external and firewall chains, the endpoint chains),
//! in the proxier's order.

use super::{
    CLUSTER_CIDR, ChainKind, EpSpec, MASQUERADE_MARK, Plan, SvcSpec, iptables_chain,
    iptables_endpoint_chain,
};

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
    let mut t = Tables::new();
    for svc in services {
        let s = ServicePort::new(svc);
        s.cluster_ip(&mut t);
        s.external_ips(&mut t);
        s.load_balancer(&mut t);
        s.node_port(&mut t);
        // A service without endpoints has no nat chains at all.
        if !s.plan.has_endpoints {
            continue;
        }
        s.masquerade(&mut t, masquerade_all);
        s.external_chain(&mut t);
        s.firewall_chain(&mut t);
        s.service_chains(&mut t);
        s.endpoint_chains(&mut t);
    }
    t.finish()
}

/// The built-in chains and kube-proxy's fixed chains of the filter table.
const FILTER_CHAINS: [&str; 9] = [
    ":INPUT ACCEPT [0:0]",
    ":FORWARD ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    ":KUBE-SERVICES - [0:0]",
    ":KUBE-EXTERNAL-SERVICES - [0:0]",
    ":KUBE-FORWARD - [0:0]",
    ":KUBE-NODEPORTS - [0:0]",
    ":KUBE-PROXY-FIREWALL - [0:0]",
    ":KUBE-FIREWALL - [0:0]",
];

/// The jumps from the built-in chains, in the order found on real nodes
/// (kube-proxy prepends them; kubelet appended KUBE-FIREWALL earlier).
const FILTER_JUMPS: [&str; 12] = [
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
];

/// The built-in chains and kube-proxy's fixed chains of the nat table.
const NAT_CHAINS: [&str; 8] = [
    ":PREROUTING ACCEPT [0:0]",
    ":INPUT ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    ":POSTROUTING ACCEPT [0:0]",
    ":KUBE-SERVICES - [0:0]",
    ":KUBE-NODEPORTS - [0:0]",
    ":KUBE-POSTROUTING - [0:0]",
    ":KUBE-MARK-MASQ - [0:0]",
];

/// The mark match of packets to masquerade ("0x4000/0x4000").
fn mark() -> String {
    format!("{MASQUERADE_MARK}/{MASQUERADE_MARK}")
}

/// The two tables being written. Chain declarations and rules are kept
/// apart because iptables-restore wants each table's chains declared before
/// its rules, while kube-proxy decides on both service by service.
struct Tables {
    filter_chains: Vec<String>,
    filter_rules: Vec<String>,
    nat_chains: Vec<String>,
    nat_rules: Vec<String>,
}

impl Tables {
    /// The fixed part written before any service: the chains, the jumps
    /// into them, and the marking and masquerading of KUBE-POSTROUTING /
    /// KUBE-MARK-MASQ.
    fn new() -> Self {
        let mark = mark();
        Tables {
            filter_chains: FILTER_CHAINS.map(String::from).to_vec(),
            filter_rules: FILTER_JUMPS.map(String::from).to_vec(),
            nat_chains: NAT_CHAINS.map(String::from).to_vec(),
            nat_rules: vec![
                r#"-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#.into(),
                r#"-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#.into(),
                r#"-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING"#.into(),
                format!("-A KUBE-POSTROUTING -m mark ! --mark {mark} -j RETURN"),
                format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQUERADE_MARK}"),
                r#"-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully"#.into(),
                format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQUERADE_MARK}"),
            ],
        }
    }

    fn filter(&mut self, rule: String) {
        self.filter_rules.push(rule);
    }

    fn nat(&mut self, rule: String) {
        self.nat_rules.push(rule);
    }

    fn declare_nat_chain(&mut self, chain: &str) {
        self.nat_chains.push(format!(":{chain} - [0:0]"));
    }

    /// The rules kube-proxy writes after every service's (KUBE-FORWARD, and
    /// the node-port jump that must end KUBE-SERVICES), then both tables as
    /// iptables-restore reads them.
    fn finish(mut self) -> String {
        self.filter("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP".into());
        self.filter(format!(
            r#"-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {} -j ACCEPT"#,
            mark()
        ));
        self.filter(
            r#"-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"#.into(),
        );
        self.nat(
            r#"-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"#.into(),
        );

        let mut out = String::from("*filter\n");
        for l in self.filter_chains.iter().chain(&self.filter_rules) {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("COMMIT\n*nat\n");
        for l in self.nat_chains.iter().chain(&self.nat_rules) {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// One service port with the names of its chains and the decisions made
/// for it.
struct ServicePort<'a> {
    svc: &'a SvcSpec,
    plan: Plan<'a>,
    /// KUBE-SVC-…: all endpoints.
    svc_chain: String,
    /// KUBE-SVL-…: local endpoints only.
    svl_chain: String,
    /// KUBE-EXT-…: entry for LoadBalancer IP and NodePort traffic.
    ext_chain: String,
    /// KUBE-FW-…: loadBalancerSourceRanges.
    fw_chain: String,
    /// In iptables mode the firewall chain exists only for a service with
    /// endpoints (without, the address is rejected before it matters).
    uses_fw: bool,
}

impl<'a> ServicePort<'a> {
    fn new(svc: &'a SvcSpec) -> Self {
        let plan = Plan::new(svc);
        ServicePort {
            uses_fw: plan.has_endpoints && svc.has_lb() && !svc.source_ranges.is_empty(),
            plan,
            svc,
            svc_chain: iptables_chain(svc, ChainKind::Cluster),
            svl_chain: iptables_chain(svc, ChainKind::Local),
            ext_chain: iptables_chain(svc, ChainKind::External),
            fw_chain: iptables_chain(svc, ChainKind::Firewall),
        }
    }

    /// "-m tcp -p tcp -d IP --dport PORT": the match of a service address.
    fn to_address(&self, ip: &str) -> String {
        let proto = self.svc.proto;
        format!("-m {proto} -p {proto} -d {ip} --dport {}", self.svc.port)
    }

    /// What the external addresses (LoadBalancer IP, node port) get when
    /// no endpoint may serve outside traffic. Internal policy is always
    /// Cluster here, so internal endpoints exist exactly when any endpoint
    /// does: with endpoints, only the local ones are missing.
    fn no_external_endpoints(&self) -> (String, &'static str) {
        let name = &self.plan.name;
        if self.plan.has_endpoints {
            (format!("\"{name} has no local endpoints\""), "DROP")
        } else {
            (format!("\"{name} has no endpoints\""), "REJECT")
        }
    }

    /// ClusterIP: into KUBE-SVC-… (nat), or rejected without endpoints
    /// (filter).
    fn cluster_ip(&self, t: &mut Tables) {
        let name = &self.plan.name;
        let dst = self.to_address(&self.svc.cluster_ip.to_string());
        if self.plan.has_endpoints {
            t.nat(format!(
                "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" {dst} -j {}",
                self.svc_chain
            ));
        } else {
            t.filter(format!(
                "-A KUBE-SERVICES -m comment --comment \"{name} has no endpoints\" {dst} -j REJECT"
            ));
        }
    }

    /// externalIPs: into KUBE-EXT-… (nat), or the reject or drop without
    /// (local) endpoints (filter); no firewall applies to them.
    fn external_ips(&self, t: &mut Tables) {
        let name = &self.plan.name;
        for ip in &self.svc.external_ips {
            let dst = self.to_address(&ip.to_string());
            if self.plan.has_endpoints {
                t.nat(format!(
                    "-A KUBE-SERVICES -m comment --comment \"{name} external IP\" {dst} -j {}",
                    self.ext_chain
                ));
            }
            if !self.plan.has_external_endpoints {
                let (comment, target) = self.no_external_endpoints();
                t.filter(format!(
                    "-A KUBE-EXTERNAL-SERVICES -m comment --comment {comment} {dst} -j {target}"
                ));
            }
        }
    }

    /// LoadBalancer IP: into KUBE-FW-… or KUBE-EXT-… (nat), the drop of
    /// sources outside the ranges, and the reject or drop without
    /// (local) endpoints (filter).
    fn load_balancer(&self, t: &mut Tables) {
        if !self.svc.has_lb() {
            return;
        }
        let name = &self.plan.name;
        let dst = self.to_address(&self.svc.lb_ip.to_string());
        if self.plan.has_endpoints {
            let target = if self.uses_fw {
                &self.fw_chain
            } else {
                &self.ext_chain
            };
            t.nat(format!(
                "-A KUBE-SERVICES -m comment --comment \"{name} loadbalancer IP\" {dst} -j {target}"
            ));
        }
        if self.uses_fw {
            t.filter(format!(
                "-A KUBE-PROXY-FIREWALL -m comment --comment \"{name} traffic not accepted by {}\" {dst} -j DROP",
                self.fw_chain
            ));
        }
        if !self.plan.has_external_endpoints {
            let (comment, target) = self.no_external_endpoints();
            t.filter(format!(
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment {comment} {dst} -j {target}"
            ));
        }
    }

    /// NodePort: into KUBE-EXT-… (nat), or the reject or drop without
    /// (local) endpoints (filter).
    fn node_port(&self, t: &mut Tables) {
        let Some(np) = self.svc.node_port else {
            return;
        };
        let name = &self.plan.name;
        let proto = self.svc.proto;
        if self.plan.has_endpoints {
            t.nat(format!(
                "-A KUBE-NODEPORTS -m comment --comment {name} -m {proto} -p {proto} --dport {np} -j {}",
                self.ext_chain
            ));
        }
        if !self.plan.has_external_endpoints {
            let (comment, target) = self.no_external_endpoints();
            t.filter(format!(
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment {comment} -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np} -j {target}"
            ));
        }
    }

    /// Masquerade off-cluster (or, with --masquerade-all, all) traffic to
    /// the ClusterIP.
    fn masquerade(&self, t: &mut Tables, masquerade_all: bool) {
        let name = &self.plan.name;
        let dst = self.to_address(&self.svc.cluster_ip.to_string());
        let src = if masquerade_all {
            String::new()
        } else {
            format!(" ! -s {CLUSTER_CIDR}")
        };
        t.nat(format!(
            "-A {} -m comment --comment \"{name} cluster IP\" {dst}{src} -j KUBE-MARK-MASQ",
            self.svc_chain
        ));
    }

    /// KUBE-EXT-…: masquerade, short-circuits of pod and host traffic under
    /// a Local policy, then the jump to the endpoints outside traffic may
    /// use.
    fn external_chain(&self, t: &mut Tables) {
        if !self.plan.uses_external_chain {
            return;
        }
        let name = &self.plan.name;
        let (ext, svc) = (&self.ext_chain, &self.svc_chain);
        t.declare_nat_chain(ext);
        if !self.svc.etp_local {
            t.nat(format!(
                "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
            ));
        } else {
            t.nat(format!(
                "-A {ext} -m comment --comment \"pod traffic for {name} external destinations\" -s {CLUSTER_CIDR} -j {svc}"
            ));
            t.nat(format!(
                "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
            ));
            t.nat(format!(
                "-A {ext} -m comment --comment \"route LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j {svc}"
            ));
        }
        if self.plan.has_external_endpoints {
            let policy = if self.svc.etp_local {
                &self.svl_chain
            } else {
                svc
            };
            t.nat(format!("-A {ext} -j {policy}"));
        }
    }

    /// KUBE-FW-…: loadBalancerSourceRanges let through to KUBE-EXT-….
    fn firewall_chain(&self, t: &mut Tables) {
        if !self.uses_fw {
            return;
        }
        let name = &self.plan.name;
        let fw = &self.fw_chain;
        t.declare_nat_chain(fw);
        for cidr in &self.svc.source_ranges {
            t.nat(format!(
                "-A {fw} -m comment --comment \"{name} loadbalancer IP\" -s {cidr} -j {}",
                self.ext_chain
            ));
        }
        // A rule without target: it only counts; what falls through here
        // was not DNATed and meets the KUBE-PROXY-FIREWALL drop.
        t.nat(format!(
            "-A {fw} -m comment --comment \"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL\""
        ));
    }

    /// KUBE-SVC-… over all endpoints, and KUBE-SVL-… over the local ones
    /// when a Local policy has some.
    fn service_chains(&self, t: &mut Tables) {
        t.declare_nat_chain(&self.svc_chain);
        let all: Vec<&EpSpec> = self.svc.endpoints.iter().collect();
        self.endpoint_dispatch(t, &self.svc_chain, &all);
        if self.plan.uses_local_chain {
            t.declare_nat_chain(&self.svl_chain);
            self.endpoint_dispatch(t, &self.svl_chain, &self.plan.local_eps);
        }
    }

    /// Random choice among endpoints, as `writeServiceToEndpointRules`: rule i
    /// matches with probability 1/(n-i), the last one always.
    fn endpoint_dispatch(&self, t: &mut Tables, chain: &str, eps: &[&EpSpec]) {
        let name = &self.plan.name;
        for (i, ep) in eps.iter().enumerate() {
            let comment = format!("\"{name} -> {}:{}\"", ep.ip, ep.port);
            let sep = iptables_endpoint_chain(self.svc, ep);
            if i + 1 < eps.len() {
                let prob = format!("{:.10}", 1.0 / (eps.len() - i) as f64);
                t.nat(format!(
                    "-A {chain} -m comment --comment {comment} -m statistic --mode random --probability {prob} -j {sep}"
                ));
            } else {
                t.nat(format!(
                    "-A {chain} -m comment --comment {comment} -j {sep}"
                ));
            }
        }
    }

    /// KUBE-SEP-… per endpoint: the hairpin masquerade and the DNAT.
    fn endpoint_chains(&self, t: &mut Tables) {
        let name = &self.plan.name;
        let proto = self.svc.proto;
        for ep in &self.svc.endpoints {
            let sep = iptables_endpoint_chain(self.svc, ep);
            t.declare_nat_chain(&sep);
            // Hairpin: an endpoint reaching itself through the service is masqueraded.
            t.nat(format!(
                "-A {sep} -m comment --comment {name} -s {} -j KUBE-MARK-MASQ",
                ep.ip
            ));
            t.nat(format!(
                "-A {sep} -m comment --comment {name} -m {proto} -p {proto} -j DNAT --to-destination {}:{}",
                ep.ip, ep.port
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::super::fixture_services;
    use super::super::tests::spec;
    use super::*;

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
}
