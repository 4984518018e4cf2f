//! Reader layer: kube-proxy's semantics read off the model. Base chains and
//! every drop/reject of any table, and from table `kube-proxy` the Service
//! addresses (map elements of @service-ips / @service-nodeports), the
//! endpoints their chains DNAT to, the rejects and drops for lack of
//! endpoints and the loadBalancerSourceRanges firewall.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::model::{Elem, Model, Rule, Stmt, VmapData};
use crate::kubeproxy::{
    AddressKind, BaseChain, ChainRef, FilterRule, Mode, NoEndpoints, Proto, Ruleset, ServicePort,
    dedup_endpoints, unspecified,
};

/// kube-proxy's table (one per family) in nftables mode.
const KUBE_PROXY_TABLE: &str = "kube-proxy";

/// An empty model for [`build`]: only kube-proxy's tables are walked.
pub(super) fn model() -> Model {
    Model::new(|table| table == KUBE_PROXY_TABLE)
}

/// What the model holds: base chains, every drop and reject of any table,
/// and the Services of each kube-proxy table.
pub(super) fn build(model: &Model) -> Ruleset {
    let mut rs = Ruleset::empty(Mode::Nftables);
    hooked_chains(model, &mut rs);
    drop_and_reject_rules(model, &mut rs.filter_rules);
    let mut tables: Vec<(&str, &str)> = Vec::new();
    for c in &model.chains {
        let t = (c.family.as_str(), c.table.as_str());
        if c.table == KUBE_PROXY_TABLE && !tables.contains(&t) {
            tables.push(t);
        }
    }
    for (family, table) in tables {
        KubeProxy::new(model, family, table).services(&mut rs.services);
    }
    rs
}

/// Base chains, and the policy of those that drop, which counts as a
/// filter rule.
fn hooked_chains(model: &Model, rs: &mut Ruleset) {
    for c in &model.chains {
        let (Some(hook), Some(priority)) = (c.hook.as_deref(), c.priority) else {
            continue;
        };
        if matches!(c.family.as_str(), "ip" | "ip6" | "inet")
            && matches!(
                hook,
                "prerouting" | "input" | "forward" | "output" | "postrouting"
            )
        {
            rs.base_chains.push(BaseChain {
                family: c.family.clone(),
                table: c.table.clone(),
                chain: c.name.clone(),
                hook: hook.into(),
                priority,
                policy: c.policy.as_deref().map(str::to_ascii_lowercase),
            });
        }
        if c.policy.as_deref() == Some("drop") {
            rs.filter_rules.push(FilterRule {
                family: c.family.clone(),
                table: c.table.clone(),
                chain: c.name.clone(),
                rule: "policy drop".into(),
                verdict: "DROP".into(),
                comment: None,
                packets: None,
                bytes: None,
                handle: None,
            });
        }
    }
}

/// Every rule that can drop or reject, with its counter when it has one.
fn drop_and_reject_rules(model: &Model, out: &mut Vec<FilterRule>) {
    for r in &model.rules {
        if let Some(verdict) = verdict(model, r) {
            out.push(FilterRule {
                family: r.family.clone(),
                table: r.table.clone(),
                chain: r.chain.clone(),
                rule: r.text.clone().unwrap_or_default(),
                verdict: verdict.into(),
                comment: r.comment.clone(),
                packets: r.counter.and_then(|c| c.0),
                bytes: r.counter.and_then(|c| c.1),
                handle: r.handle,
            });
        }
    }
}

/// "DROP" / "REJECT" when the rule can drop or reject the packet itself.
fn verdict(model: &Model, r: &Rule) -> Option<&'static str> {
    let mut out = None;
    for s in &r.stmts {
        match s {
            Stmt::Drop => out = Some("DROP"),
            Stmt::Reject => out = Some("REJECT"),
            Stmt::XtTarget(name) if name == "DROP" => out = Some("DROP"),
            Stmt::XtTarget(name) if name == "REJECT" => out = Some("REJECT"),
            // A verdict map drops when one of its values is drop.
            Stmt::Vmap(VmapData::Named(name))
                if model.set(&r.family, &r.table, name).is_some_and(|s| {
                    s.elems
                        .iter()
                        .any(|e| e.data.as_ref().is_some_and(|d| d.drop))
                }) =>
            {
                out = Some("DROP");
            }
            Stmt::Vmap(VmapData::Inline(values)) if values.iter().any(|v| v.drop) => {
                out = Some("DROP");
            }
            _ => {}
        }
    }
    out
}

// --- kube-proxy's table ------------------------------------------------------

const SERVICE_PREFIXES: [&str; 4] = ["service-", "local-", "external-", "firewall-"];

fn parse_proto(s: &str) -> Option<Proto> {
    s.parse().ok()
}

/// "ns/svc:port" from "service-HASH-ns/svc/tcp/port" (or local-, external-,
/// firewall-, endpoint-…__ip/port); None for a name cut short ("...").
fn service_from_chain(chain: &str) -> Option<String> {
    let rest = SERVICE_PREFIXES
        .iter()
        .chain(&["endpoint-"])
        .find_map(|p| chain.strip_prefix(p))?;
    let (hash, rest) = rest.split_once('-')?;
    if hash.len() != 8 || rest.ends_with("...") {
        return None;
    }
    let rest = rest.split("__").next()?;
    let parts: Vec<&str> = rest.splitn(4, '/').collect();
    let [ns, name, _proto, port] = parts[..] else {
        return None;
    };
    Some(if port.is_empty() {
        format!("{ns}/{name}")
    } else {
        format!("{ns}/{name}:{port}")
    })
}

/// The part of a service chain name shared by all chains of the port.
fn chain_base(chain: &str) -> Option<&str> {
    SERVICE_PREFIXES.iter().find_map(|p| chain.strip_prefix(p))
}

/// One kube-proxy table (`ip` or `ip6`), with the rules of each chain.
struct KubeProxy<'m> {
    model: &'m Model,
    family: &'m str,
    table: &'m str,
    chains: HashMap<&'m str, Vec<&'m Rule>>,
}

/// What a walk from an entry chain reached.
struct Walk {
    /// (ip, port, chain, reached through a local-endpoint chain)
    endpoints: Vec<(IpAddr, u16, String, bool)>,
    visited_local: bool,
}

/// (address, port, protocol, is a node port): one Service address.
type AddressKey = (IpAddr, u16, Proto, bool);

/// The Service addresses found so far, each once: a capture and a reject of
/// the same address are one entry.
#[derive(Default)]
struct Found {
    ports: Vec<ServicePort>,
    index: HashMap<AddressKey, usize>,
}

impl Found {
    fn contains(&self, key: &AddressKey) -> bool {
        self.index.contains_key(key)
    }

    fn get_mut(&mut self, key: &AddressKey) -> Option<&mut ServicePort> {
        self.index.get(key).map(|&i| &mut self.ports[i])
    }

    fn push(&mut self, key: AddressKey, port: ServicePort) {
        self.index.insert(key, self.ports.len());
        self.ports.push(port);
    }
}

impl<'m> KubeProxy<'m> {
    fn new(model: &'m Model, family: &'m str, table: &'m str) -> Self {
        let mut chains: HashMap<&str, Vec<&Rule>> = HashMap::new();
        for c in model
            .chains
            .iter()
            .filter(|c| c.family == family && c.table == table)
        {
            chains.entry(&c.name).or_default();
        }
        for r in model
            .rules
            .iter()
            .filter(|r| r.family == family && r.table == table)
        {
            chains.entry(&r.chain).or_default().push(r);
        }
        KubeProxy {
            model,
            family,
            table,
            chains,
        }
    }

    fn map(&self, name: &str) -> &'m [Elem] {
        self.model
            .set(self.family, self.table, name)
            .map(|s| s.elems.as_slice())
            .unwrap_or(&[])
    }

    /// The chain whose rule looks packets up in map `name`.
    fn chain_using(&self, name: &str) -> Option<&'m str> {
        let at = format!("@{name}");
        self.model
            .rules
            .iter()
            .filter(|r| r.family == self.family && r.table == self.table)
            .find(|r| {
                r.stmts
                    .iter()
                    .any(|s| matches!(s, Stmt::Vmap(VmapData::Named(n)) if *n == at))
            })
            .map(|r| r.chain.as_str())
    }

    /// Every DNAT reachable from `start`. Only per-service chains are
    /// followed (they, unlike kube-proxy's fixed chains, contain a "/").
    fn walk(&self, start: &str) -> Walk {
        let mut w = Walk {
            endpoints: Vec::new(),
            visited_local: false,
        };
        let mut seen: HashSet<(String, bool)> = HashSet::new();
        let mut stack = vec![(start.to_string(), start.starts_with("local-"))];
        while let Some((chain, local)) = stack.pop() {
            if !seen.insert((chain.clone(), local)) {
                continue;
            }
            w.visited_local |= chain.starts_with("local-");
            let mut next: Vec<(String, bool)> = Vec::new();
            for r in self
                .chains
                .get(chain.as_str())
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                for s in &r.stmts {
                    let targets: Vec<&str> = match s {
                        Stmt::Jump(t) => vec![t.as_str()],
                        Stmt::Vmap(VmapData::Named(name)) => self
                            .map(name)
                            .iter()
                            .filter_map(|x| x.data.as_ref()?.target.as_deref())
                            .collect(),
                        Stmt::Vmap(VmapData::Inline(values)) => {
                            values.iter().filter_map(|v| v.target.as_deref()).collect()
                        }
                        Stmt::Dnat(ip, port) => {
                            let (ip, port) = (*ip, *port);
                            if !w
                                .endpoints
                                .iter()
                                .any(|x| x.0 == ip && x.1 == port && x.3 == local)
                            {
                                w.endpoints.push((ip, port, chain.clone(), local));
                            }
                            Vec::new()
                        }
                        _ => Vec::new(),
                    };
                    for t in targets {
                        if t.contains('/') && self.chains.contains_key(t) {
                            let child_local =
                                t.starts_with("local-") || (local && t.starts_with("endpoint-"));
                            next.push((t.to_string(), child_local));
                        }
                    }
                }
            }
            stack.extend(next.into_iter().rev());
        }
        w
    }

    /// Every Service address of the table: what captures it, the endpoints
    /// it reaches, rejects and drops for lack of endpoints, source ranges,
    /// and which endpoints run here.
    fn services(&self, out: &mut Vec<ServicePort>) {
        let cluster_ips: HashSet<IpAddr> = self
            .map("cluster-ips")
            .iter()
            .filter_map(|e| match e.key.as_slice() {
                [one] => one.parse().ok(),
                _ => None,
            })
            .collect();
        let mut found = Found::default();
        self.captured(&cluster_ips, &mut found);
        self.without_endpoints(&cluster_ips, &mut found);
        self.source_ranges(&mut found);
        self.external_kinds(&mut found.ports);
        self.mark_local_endpoints(&mut found.ports);
        out.extend(found.ports);
    }

    /// Captured addresses: @service-ips and @service-nodeports.
    fn captured(&self, cluster_ips: &HashSet<IpAddr>, found: &mut Found) {
        for (map, nodeport) in [("service-ips", false), ("service-nodeports", true)] {
            for e in self.map(map) {
                let Some(target) = e.data.as_ref().and_then(|d| d.target.as_deref()) else {
                    continue;
                };
                if !self.chains.contains_key(target) {
                    continue;
                }
                let Some((address, proto, port)) = self.address_key(&e.key, nodeport) else {
                    continue;
                };
                let kind = if nodeport {
                    AddressKind::NodePort
                } else if cluster_ips.contains(&address)
                    || target.starts_with("service-")
                    || target.starts_with("local-")
                {
                    AddressKind::ClusterIp
                } else {
                    AddressKind::External
                };
                let key = (address, port, proto, nodeport);
                if found.contains(&key) {
                    continue;
                }
                let w = self.walk(target);
                found.push(
                    key,
                    ServicePort {
                        service: service_from_chain(target).unwrap_or_else(|| target.to_string()),
                        address,
                        port,
                        proto,
                        kind,
                        entry_chain: target.to_string(),
                        endpoints: dedup_endpoints(&w.endpoints),
                        local_only: w.visited_local,
                        no_endpoints: None,
                        source_ranges: Vec::new(),
                        firewall_rule: None,
                        firewall_chains: Vec::new(),
                    },
                );
            }
        }
    }

    /// Reject / drop for lack of (local) endpoints: @no-endpoint-services
    /// and @no-endpoint-nodeports. An address not captured otherwise is
    /// added, named after the element's comment.
    fn without_endpoints(&self, cluster_ips: &HashSet<IpAddr>, found: &mut Found) {
        for (map, nodeport) in [
            ("no-endpoint-services", false),
            ("no-endpoint-nodeports", true),
        ] {
            let entry_chain = self.chain_using(map).unwrap_or(map);
            for e in self.map(map) {
                let Some((address, proto, port)) = self.address_key(&e.key, nodeport) else {
                    continue;
                };
                let Some(verdict) = self.no_endpoints_verdict(map, e) else {
                    continue;
                };
                let key = (address, port, proto, nodeport);
                if let Some(s) = found.get_mut(&key) {
                    if matches!(verdict, NoEndpoints::DropNoLocal { .. }) {
                        s.local_only = true;
                    }
                    s.no_endpoints = Some(verdict);
                    continue;
                }
                let kind = if nodeport {
                    AddressKind::NodePort
                } else if cluster_ips.contains(&address) {
                    AddressKind::ClusterIp
                } else {
                    AddressKind::External
                };
                found.push(
                    key,
                    ServicePort {
                        service: e
                            .comment
                            .clone()
                            .unwrap_or_else(|| format!("{address}:{port}/{proto}")),
                        address,
                        port,
                        proto,
                        kind,
                        entry_chain: entry_chain.to_string(),
                        endpoints: Vec::new(),
                        local_only: matches!(verdict, NoEndpoints::DropNoLocal { .. }),
                        no_endpoints: Some(verdict),
                        source_ranges: Vec::new(),
                        firewall_rule: None,
                        firewall_chains: Vec::new(),
                    },
                );
            }
        }
    }

    /// An element of a no-endpoint map: drop (no local endpoints) or a jump
    /// to the reject chain (no endpoints at all), with the element as nft
    /// prints it, since the element, not a rule, is what turns traffic away.
    fn no_endpoints_verdict(&self, map: &str, e: &Elem) -> Option<NoEndpoints> {
        let data = e.data.as_ref()?;
        let mut text = format!(
            "element {} {} {map} {{ {}",
            self.family,
            self.table,
            e.key.join(" . ")
        );
        if let Some(c) = &e.comment {
            text.push_str(&format!(" comment \"{c}\""));
        }
        text.push_str(&format!(" : {} }}", data.text));
        if data.drop {
            Some(NoEndpoints::DropNoLocal { rule: text })
        } else if data.target.is_some() {
            Some(NoEndpoints::Reject { rule: text })
        } else {
            None
        }
    }

    /// loadBalancerSourceRanges: @firewall-ips -> firewall-… chain, and
    /// the base chains whose traffic is checked against it.
    fn source_ranges(&self, found: &mut Found) {
        let check = self.chain_using("firewall-ips");
        let at = check
            .map(|c| self.base_chains_reaching(c))
            .unwrap_or_default();
        for e in self.map("firewall-ips") {
            let Some(fw) = e.data.as_ref().and_then(|d| d.target.as_deref()) else {
                continue;
            };
            let Some((address, proto, port)) = self.address_key(&e.key, false) else {
                continue;
            };
            let (ranges, rule) = self.firewall(fw);
            if let Some(s) = found.get_mut(&(address, port, proto, false)) {
                s.source_ranges = ranges;
                s.firewall_rule = rule;
                s.firewall_chains = at.clone();
                // Only LoadBalancer IPs are subject to source ranges.
                s.kind = AddressKind::LoadBalancer;
            }
        }
    }

    /// kube-proxy gives every LoadBalancer IP of a service port with
    /// loadBalancerSourceRanges an @firewall-ips element: its other outside
    /// addresses, without one, are externalIPs. Without source ranges the
    /// rules do not tell the two apart (the kind stays External).
    fn external_kinds(&self, ports: &mut [ServicePort]) {
        let firewalled: HashSet<(String, Proto, u16)> = ports
            .iter()
            .filter(|s| s.kind == AddressKind::LoadBalancer && s.firewall_rule.is_some())
            .map(|s| (s.service.clone(), s.proto, s.port))
            .collect();
        for s in ports.iter_mut().filter(|s| s.kind == AddressKind::External) {
            if firewalled.contains(&(s.service.clone(), s.proto, s.port)) {
                s.kind = AddressKind::ExternalIp;
            }
        }
    }

    /// This table's base chains from which `target` is reached by jumps.
    fn base_chains_reaching(&self, target: &str) -> Vec<ChainRef> {
        let mut out = Vec::new();
        for c in self
            .model
            .chains
            .iter()
            .filter(|c| c.family == self.family && c.table == self.table && c.hook.is_some())
        {
            let mut seen: HashSet<&str> = HashSet::new();
            let mut stack = vec![c.name.as_str()];
            while let Some(name) = stack.pop() {
                if name == target {
                    out.push(ChainRef {
                        table: format!("{} {}", self.family, self.table),
                        chain: c.name.to_string(),
                    });
                    break;
                }
                if !seen.insert(name) {
                    continue;
                }
                for r in self.chains.get(name).map(Vec::as_slice).unwrap_or(&[]) {
                    stack.extend(r.stmts.iter().filter_map(|s| match s {
                        Stmt::Jump(t) => Some(t.as_str()),
                        _ => None,
                    }));
                }
            }
        }
        out
    }

    /// Which endpoints run here: those of the service's local-… chain;
    /// with a Local policy and no local endpoints, none.
    fn mark_local_endpoints(&self, found: &mut [ServicePort]) {
        let mut local: HashMap<(String, Proto), HashSet<(IpAddr, u16)>> = HashMap::new();
        for s in found.iter() {
            let base = chain_base(&s.entry_chain);
            let local_chain = base.map(|b| format!("local-{b}"));
            if let Some(lc) = local_chain.filter(|lc| self.chains.contains_key(lc.as_str())) {
                let set = local.entry((s.service.clone(), s.proto)).or_default();
                set.extend(self.walk(&lc).endpoints.iter().map(|e| (e.0, e.1)));
            } else if matches!(s.no_endpoints, Some(NoEndpoints::DropNoLocal { .. })) {
                local.entry((s.service.clone(), s.proto)).or_default();
            }
        }
        for s in found.iter_mut() {
            if let Some(set) = local.get(&(s.service.clone(), s.proto)) {
                for e in s.endpoints.iter_mut() {
                    e.local = Some(set.contains(&(e.ip, e.port)));
                }
            }
        }
    }

    /// Source ranges and the rule dropping other sources, from
    /// `ip saddr != { … } drop` in the service's firewall chain.
    fn firewall(&self, chain: &str) -> (Vec<String>, Option<String>) {
        for r in self.chains.get(chain).map(Vec::as_slice).unwrap_or(&[]) {
            if !r.stmts.iter().any(|s| matches!(s, Stmt::Drop)) {
                continue;
            }
            for s in &r.stmts {
                if let Stmt::SaddrNot(ranges) = s {
                    let text = format!(
                        "rule {} {} {chain} {}",
                        self.family,
                        self.table,
                        r.text.as_deref().unwrap_or_default()
                    );
                    return (ranges.clone(), Some(text));
                }
            }
        }
        (Vec::new(), None)
    }

    /// (address, proto, port) from `IP . proto . port` (or `proto . port`
    /// for node ports, with the unspecified address).
    fn address_key(&self, key: &[String], nodeport: bool) -> Option<(IpAddr, Proto, u16)> {
        match (nodeport, key) {
            (false, [ip, proto, port]) => {
                Some((ip.parse().ok()?, parse_proto(proto)?, port.parse().ok()?))
            }
            (true, [proto, port]) => Some((
                unspecified(self.family == "ip6"),
                parse_proto(proto)?,
                port.parse().ok()?,
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeproxy::parse_nft_json;

    const NFT: &str = include_str!("../testdata/nftables.json");
    const NFT_BEFORE: &str = include_str!("../testdata/nftables-before.json");
    const IPT_NFT_JSON: &str = include_str!("../testdata/iptables-nft.nft.json");

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn parsed() -> Ruleset {
        parse_nft_json(NFT).expect("fixture parses")
    }

    fn find<'a>(rs: &'a Ruleset, service: &str, kind: AddressKind) -> &'a ServicePort {
        rs.services
            .iter()
            .find(|s| s.service == service && s.kind == kind)
            .unwrap_or_else(|| panic!("{service} {kind:?} missing"))
    }

    #[test]
    fn every_captured_address_is_found() {
        let rs = parsed();
        let mut got: Vec<String> = rs
            .services
            .iter()
            .map(|s| {
                format!(
                    "{} {:?} {}:{}/{}",
                    s.service, s.kind, s.address, s.port, s.proto
                )
            })
            .collect();
        got.sort();
        let mut want = vec![
            "lab/web:http ClusterIp 10.96.0.10:80/tcp",
            "lab/web:http External 203.0.113.10:80/tcp",
            "lab/web:http NodePort 0.0.0.0:30080/tcp",
            "lab/empty:http ClusterIp 10.96.0.11:80/tcp",
            "lab/empty:http External 203.0.113.11:80/tcp",
            "lab/empty:http NodePort 0.0.0.0:30081/tcp",
            "lab/local-only:http ClusterIp 10.96.0.12:80/tcp",
            "lab/local-only:http External 203.0.113.12:80/tcp",
            "lab/local-only:http NodePort 0.0.0.0:30082/tcp",
            "lab/restricted:https ClusterIp 10.96.0.13:443/tcp",
            "lab/restricted:https LoadBalancer 203.0.113.13:443/tcp",
            "lab/restricted:https NodePort 0.0.0.0:30443/tcp",
            "lab/nodeport ClusterIp 10.96.0.14:9090/tcp",
            "lab/nodeport NodePort 0.0.0.0:30090/tcp",
            "lab/dns:dns ClusterIp 10.96.0.15:53/udp",
            "lab/dns:dns External 203.0.113.14:53/udp",
        ];
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn load_balancer_with_a_local_and_a_remote_endpoint() {
        let rs = parsed();
        let lb = find(&rs, "lab/web:http", AddressKind::External);
        assert_eq!(lb.entry_chain, "external-URTH2HAX-lab/web/tcp/http");
        assert!(!lb.local_only && lb.no_endpoints.is_none());
        let eps: Vec<(String, &str, Option<bool>)> = lb
            .endpoints
            .iter()
            .map(|e| (format!("{}:{}", e.ip, e.port), e.chain.as_str(), e.local))
            .collect();
        assert_eq!(
            eps,
            vec![
                (
                    "10.244.1.5:8080".into(),
                    "endpoint-CU336BVL-lab/web/tcp/http__10.244.1.5/8080",
                    None
                ),
                (
                    "10.244.2.7:8080".into(),
                    "endpoint-UZSSX4U2-lab/web/tcp/http__10.244.2.7/8080",
                    None
                ),
            ]
        );
        let (owner, _) = rs
            .endpoint_owner(ip("10.244.1.5"), 8080, Proto::Tcp)
            .unwrap();
        assert_eq!(
            (owner.service.as_str(), owner.kind),
            ("lab/web:http", AddressKind::External)
        );
    }

    #[test]
    fn no_endpoints_rejects_through_the_reject_chain() {
        let rs = parsed();
        let lb = find(&rs, "lab/empty:http", AddressKind::External);
        assert_eq!(lb.entry_chain, "service-endpoints-check");
        assert_eq!(
            lb.no_endpoints,
            Some(NoEndpoints::Reject {
                rule: r#"element ip kube-proxy no-endpoint-services { 203.0.113.11 . tcp . 80 comment "lab/empty:http" : goto reject-chain }"#.into()
            })
        );
        // The cluster-ips set tells a rejected ClusterIP from an LB IP.
        assert!(matches!(
            find(&rs, "lab/empty:http", AddressKind::ClusterIp).no_endpoints,
            Some(NoEndpoints::Reject { .. })
        ));
        let np = find(&rs, "lab/empty:http", AddressKind::NodePort);
        assert_eq!(np.entry_chain, "nodeport-endpoints-check");
        assert!(
            np.no_endpoints
                .as_ref()
                .unwrap()
                .rule()
                .contains("no-endpoint-nodeports { tcp . 30081")
        );
    }

    #[test]
    fn local_policy_without_local_endpoint_drops_outside_traffic() {
        let rs = parsed();
        let lb = find(&rs, "lab/local-only:http", AddressKind::External);
        assert!(lb.local_only);
        assert!(
            matches!(&lb.no_endpoints, Some(NoEndpoints::DropNoLocal { rule }) if rule.ends_with(": drop }"))
        );
        assert_eq!(lb.endpoints.len(), 1);
        assert_eq!(lb.endpoints[0].local, Some(false));
        let cip = find(&rs, "lab/local-only:http", AddressKind::ClusterIp);
        assert!(!cip.local_only && cip.no_endpoints.is_none());
    }

    #[test]
    fn local_policy_marks_which_endpoints_are_local() {
        let rs = parsed();
        let np = find(&rs, "lab/nodeport", AddressKind::NodePort);
        assert!(np.local_only);
        let eps: Vec<(String, Option<bool>)> = np
            .endpoints
            .iter()
            .map(|e| (e.ip.to_string(), e.local))
            .collect();
        assert_eq!(
            eps,
            vec![
                ("10.244.1.7".into(), Some(true)),
                ("10.244.2.9".into(), Some(false))
            ]
        );
    }

    #[test]
    fn source_ranges_and_their_drop_rule() {
        let rs = parsed();
        let lb = find(&rs, "lab/restricted:https", AddressKind::LoadBalancer);
        assert_eq!(lb.source_ranges, vec!["198.51.100.0/24".to_string()]);
        assert_eq!(
            lb.firewall_rule.as_deref(),
            Some(
                "rule ip kube-proxy firewall-PB7X3VSP-lab/restricted/tcp/https ip saddr != 198.51.100.0/24 drop"
            )
        );
        assert!(
            find(&rs, "lab/restricted:https", AddressKind::NodePort)
                .source_ranges
                .is_empty()
        );
        // Where the drop happens: the pre-DNAT filter base chains that jump
        // to firewall-check.
        let mut at: Vec<String> = lb
            .firewall_chains
            .iter()
            .map(|c| format!("{} {}", c.table, c.chain))
            .collect();
        at.sort();
        assert_eq!(
            at,
            [
                "ip kube-proxy filter-output-pre-dnat",
                "ip kube-proxy filter-prerouting-pre-dnat"
            ]
        );
    }

    /// kube-proxy captures a LoadBalancer IP and an externalIP alike; only
    /// the LoadBalancer IP gets an @firewall-ips element when the Service
    /// has loadBalancerSourceRanges, which tells the two apart.
    #[test]
    fn external_ips_beside_a_firewalled_load_balancer() {
        let json = r#"{"nftables": [
          {"chain": {"family": "ip", "table": "kube-proxy", "name": "external-AAAAAAAA-ns/s/tcp/p"}},
          {"chain": {"family": "ip", "table": "kube-proxy", "name": "firewall-AAAAAAAA-ns/s/tcp/p"}},
          {"chain": {"family": "ip", "table": "kube-proxy", "name": "external-BBBBBBBB-ns/o/tcp/p"}},
          {"map": {"family": "ip", "name": "service-ips", "table": "kube-proxy", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
                   "elem": [[{"concat": ["203.0.113.5", "tcp", 80]}, {"goto": {"target": "external-AAAAAAAA-ns/s/tcp/p"}}],
                            [{"concat": ["198.51.100.5", "tcp", 80]}, {"goto": {"target": "external-AAAAAAAA-ns/s/tcp/p"}}],
                            [{"concat": ["198.51.100.6", "tcp", 80]}, {"goto": {"target": "external-BBBBBBBB-ns/o/tcp/p"}}]]}},
          {"map": {"family": "ip", "name": "firewall-ips", "table": "kube-proxy", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
                   "elem": [[{"concat": ["203.0.113.5", "tcp", 80]}, {"goto": {"target": "firewall-AAAAAAAA-ns/s/tcp/p"}}]]}},
          {"rule": {"family": "ip", "table": "kube-proxy", "chain": "firewall-AAAAAAAA-ns/s/tcp/p",
                    "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": [{"prefix": {"addr": "192.0.2.0", "len": 24}}]}}}, {"drop": null}]}}
        ]}"#;
        let rs = parse_nft_json(json).unwrap();
        let kind = |a: &str| rs.services_for(ip(a), 80, Proto::Tcp)[0].kind;
        assert_eq!(kind("203.0.113.5"), AddressKind::LoadBalancer);
        assert_eq!(kind("198.51.100.5"), AddressKind::ExternalIp);
        // Another Service without source ranges: the rules cannot tell.
        assert_eq!(kind("198.51.100.6"), AddressKind::External);
    }

    #[test]
    fn drop_and_reject_rules_of_every_table() {
        let rs = parsed();
        let mut got: Vec<String> = rs
            .filter_rules
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} | {} | {:?} {:?}",
                    r.family, r.table, r.chain, r.rule, r.verdict, r.packets
                )
            })
            .collect();
        got.sort();
        let mut want = vec![
            r#"inet lab-netpol forward | ip daddr 10.244.1.10 tcp dport 6379 counter drop comment "netpol lab/deny-cache" | "DROP" Some(3)"#,
            r#"ip filter FORWARD | ip saddr 192.0.2.0/24 ip daddr 10.244.1.9 tcp dport 5432 xt match "comment" counter drop | "DROP" Some(3)"#,
            r#"ip kube-proxy cluster-ips-check | ip daddr 10.96.0.0/12 drop comment "Drop traffic to unallocated ClusterIPs" | "DROP" None"#,
            r#"ip kube-proxy cluster-ips-check | ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs" | "REJECT" None"#,
            r#"ip kube-proxy firewall-PB7X3VSP-lab/restricted/tcp/https | ip saddr != 198.51.100.0/24 drop | "DROP" None"#,
            r#"ip kube-proxy nodeport-endpoints-check | ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports | "DROP" None"#,
            r#"ip kube-proxy reject-chain | reject | "REJECT" None"#,
            r#"ip kube-proxy service-endpoints-check | ip daddr . meta l4proto . th dport vmap @no-endpoint-services | "DROP" None"#,
        ];
        want.sort();
        assert_eq!(got, want);
        assert!(rs.filter_rules.iter().all(|r| r.handle.is_some()));
    }

    #[test]
    fn counters_show_which_drops_the_traffic_hit() {
        let before = parse_nft_json(NFT_BEFORE).unwrap();
        let after = parsed();
        let mut hit: Vec<(String, u64)> =
            crate::kubeproxy::counter_deltas(&before.filter_rules, &after.filter_rules)
                .into_iter()
                .map(|(r, n)| (format!("{} {}", r.table, r.chain), n))
                .collect();
        hit.sort();
        assert_eq!(
            hit,
            vec![
                ("filter FORWARD".to_string(), 3),
                ("lab-netpol forward".into(), 3)
            ]
        );
    }

    #[test]
    fn base_chains_with_hooks_and_priorities() {
        let rs = parsed();
        let mut got: Vec<String> = rs
            .base_chains
            .iter()
            .map(|c| {
                format!(
                    "{} {} {} {} {}",
                    c.family, c.table, c.chain, c.hook, c.priority
                )
            })
            .collect();
        got.sort();
        let mut want = vec![
            "inet lab-netpol forward forward 0",
            // iptables-nft creates only the built-in chains it was asked to use.
            "ip filter FORWARD forward 0",
            "ip kube-proxy filter-forward forward 0",
            "ip kube-proxy filter-input input 0",
            "ip kube-proxy filter-output output 0",
            "ip kube-proxy filter-output-pre-dnat output -110",
            "ip kube-proxy filter-prerouting-pre-dnat prerouting -110",
            "ip kube-proxy nat-output output -100",
            "ip kube-proxy nat-postrouting postrouting 100",
            "ip kube-proxy nat-prerouting prerouting -100",
        ];
        want.sort();
        assert_eq!(got, want);
    }

    /// In iptables mode the nft view holds iptables-nft's tables: base
    /// chains are read, the opaque rules yield no services.
    #[test]
    fn iptables_nft_tables_seen_through_nft() {
        let rs = parse_nft_json(IPT_NFT_JSON).unwrap();
        assert!(rs.services.is_empty());
        assert_eq!(rs.base_chains.len(), 7);
        let pre = rs
            .base_chains
            .iter()
            .find(|c| c.table == "nat" && c.chain == "PREROUTING")
            .unwrap();
        assert_eq!((pre.hook.as_str(), pre.priority), ("prerouting", -100));
        // Drops are still seen, xt targets included.
        let rejects: Vec<&FilterRule> = rs
            .filter_rules
            .iter()
            .filter(|r| r.verdict == "REJECT")
            .collect();
        assert_eq!(rejects.len(), 3);
        assert!(
            rejects
                .iter()
                .all(|r| r.rule.ends_with("xt target \"REJECT\""))
        );
        assert_eq!(rs.filter_rules.len(), 9);
    }

    #[test]
    fn chain_names_give_service_names() {
        assert_eq!(
            service_from_chain("service-ULMVA6XW-ns1/svc1/tcp/p80").as_deref(),
            Some("ns1/svc1:p80")
        );
        assert_eq!(
            service_from_chain("endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80").as_deref(),
            Some("ns1/svc1:p80")
        );
        assert_eq!(
            service_from_chain("local-UTG5BNEW-lab/nodeport/tcp/").as_deref(),
            Some("lab/nodeport")
        );
        assert_eq!(service_from_chain("services"), None);
        assert_eq!(service_from_chain("service-ABCDEFGH-ns/x..."), None);
    }

    /// An IPv6 kube-proxy table, written by hand in nft's JSON shape.
    #[test]
    fn ipv6_table() {
        let json = r#"{"nftables": [
          {"table": {"family": "ip6", "name": "kube-proxy", "handle": 1}},
          {"chain": {"family": "ip6", "table": "kube-proxy", "name": "nat-prerouting", "handle": 2, "type": "nat", "hook": "prerouting", "prio": "dstnat", "policy": "accept"}},
          {"chain": {"family": "ip6", "table": "kube-proxy", "name": "external-AAAAAAAA-ns/v6/tcp/web", "handle": 3}},
          {"chain": {"family": "ip6", "table": "kube-proxy", "name": "endpoint-BBBBBBBB-ns/v6/tcp/web__fd00.244..5/8080", "handle": 4}},
          {"map": {"family": "ip6", "name": "service-ips", "table": "kube-proxy", "type": ["ipv6_addr", "inet_proto", "inet_service"], "handle": 5, "map": "verdict",
                   "elem": [[{"concat": ["2001:db8::10", "tcp", 80]}, {"goto": {"target": "external-AAAAAAAA-ns/v6/tcp/web"}}]]}},
          {"map": {"family": "ip6", "name": "service-nodeports", "table": "kube-proxy", "type": ["inet_proto", "inet_service"], "handle": 6, "map": "verdict",
                   "elem": [[{"concat": ["tcp", 30080]}, {"goto": {"target": "external-AAAAAAAA-ns/v6/tcp/web"}}]]}},
          {"rule": {"family": "ip6", "table": "kube-proxy", "chain": "external-AAAAAAAA-ns/v6/tcp/web", "handle": 7,
                    "expr": [{"goto": {"target": "endpoint-BBBBBBBB-ns/v6/tcp/web__fd00.244..5/8080"}}]}},
          {"rule": {"family": "ip6", "table": "kube-proxy", "chain": "endpoint-BBBBBBBB-ns/v6/tcp/web__fd00.244..5/8080", "handle": 8,
                    "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, {"dnat": {"addr": "fd00:244::5", "port": 8080}}]}}
        ]}"#;
        let rs = parse_nft_json(json).unwrap();
        assert_eq!(rs.base_chains[0].priority, -100);
        let lb = rs.services_for(ip("2001:db8::10"), 80, Proto::Tcp)[0];
        // No source ranges: a LoadBalancer IP or an externalIP alike.
        assert_eq!(
            (lb.kind, lb.service.as_str()),
            (AddressKind::External, "ns/v6:web")
        );
        assert_eq!(lb.endpoints[0].ip, ip("fd00:244::5"));
        let np = rs.services_for(ip("2001:db8::1"), 30080, Proto::Tcp);
        assert_eq!(np.len(), 1);
        assert_eq!(np[0].address, ip("::"));
        // An IPv4 packet does not match an IPv6 node port.
        assert!(
            rs.services_for(ip("192.0.2.1"), 30080, Proto::Tcp)
                .is_empty()
        );
    }

    /// Shapes nft never prints but a broken tool or a future version might:
    /// odd values are skipped, never a panic.
    #[test]
    fn unexpected_values_are_tolerated() {
        let json = r#"{"nftables": [
          {"metainfo": {"version": "9.9"}},
          {"flowtable": {"family": "inet", "name": "f"}},
          {"chain": {"family": "ip", "table": "kube-proxy", "name": "service-XXXXXXXX-a/b/tcp/p"}},
          {"map": {"family": "ip", "name": "service-ips", "table": "kube-proxy", "map": "verdict",
                   "elem": [[{"concat": ["not-an-ip", "tcp", 80]}, {"goto": {"target": "service-XXXXXXXX-a/b/tcp/p"}}],
                            [{"concat": ["10.96.0.1", "icmp", 80]}, {"goto": {"target": "service-XXXXXXXX-a/b/tcp/p"}}],
                            [{"concat": ["10.96.0.1", "tcp", 99999]}, {"goto": {"target": "service-XXXXXXXX-a/b/tcp/p"}}],
                            [{"concat": ["10.96.0.1", "tcp", 80]}, {"goto": {"target": "missing-chain"}}],
                            [{"concat": ["10.96.0.1", "tcp", 80]}, "weird"],
                            "lonely"]}},
          {"rule": {"family": "ip", "table": "kube-proxy", "chain": "service-XXXXXXXX-a/b/tcp/p",
                    "expr": [{"dnat": {"addr": {"map": {}}, "port": "x"}}, {"goto": {"target": "service-XXXXXXXX-a/b/tcp/p"}}, {"mystery": [1, 2]}, 5, {"drop": null}]}}
        ]}"#;
        let rs = parse_nft_json(json).unwrap();
        assert!(rs.services.is_empty());
        assert_eq!(rs.filter_rules.len(), 1);
        assert!(rs.filter_rules[0].rule.contains("{\"mystery\":[1,2]}"));
    }
}
