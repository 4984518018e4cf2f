//! Reader layer: kube-proxy's semantics read off the parsed tables. Every
//! DROP / REJECT and built-in chain of any table, and from kube-proxy's
//! KUBE-* chains the Service addresses, the endpoints their chains DNAT to,
//! the rejects and drops for lack of endpoints and the
//! loadBalancerSourceRanges firewall.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use super::model::{Rule, Table, host, parse_ip_port, positive, rule_port, rule_proto};
use crate::kubeproxy::{
    AddressKind, BaseChain, ChainRef, FilterRule, Mode, NoEndpoints, Proto, Ruleset, ServicePort,
    dedup_endpoints, unspecified,
};

/// A base chain that iptables-nft created: how its nft view is recognised.
pub(crate) fn is_iptables_nft_chain(family: &str, table: &str, chain: &str) -> bool {
    matches!(family, "ip" | "ip6")
        && matches!(table, "filter" | "nat" | "mangle" | "raw" | "security")
        && matches!(
            chain,
            "PREROUTING" | "INPUT" | "FORWARD" | "OUTPUT" | "POSTROUTING"
        )
}

/// Chains a service's traffic passes through that carry no endpoints.
fn is_helper_chain(name: &str) -> bool {
    name.starts_with("KUBE-MARK-")
        || matches!(
            name,
            "KUBE-NODEPORTS" | "KUBE-POSTROUTING" | "KUBE-SERVICES"
        )
}

/// Chains that hold only this node's endpoints.
fn is_local_chain(name: &str) -> bool {
    name.starts_with("KUBE-SVL-") || name.starts_with("KUBE-XLB-")
}

/// The hash shared by all chains of one service port.
fn service_hash(chain: &str) -> Option<&str> {
    [
        "KUBE-SVC-",
        "KUBE-SVL-",
        "KUBE-EXT-",
        "KUBE-FW-",
        "KUBE-XLB-",
    ]
    .iter()
    .find_map(|p| chain.strip_prefix(p))
}

/// Per service port: the endpoints on this node, when the rules tell.
type LocalSets = HashMap<(String, Proto), Option<HashSet<(IpAddr, u16)>>>;

/// The nat table, where kube-proxy's service and endpoint chains are.
struct Nat<'a> {
    chains: HashMap<&'a str, Vec<&'a Rule>>,
}

/// What a walk from an entry chain reached.
struct Walk {
    /// (ip, port, chain, reached through a local-endpoint chain)
    endpoints: Vec<(IpAddr, u16, String, bool)>,
    visited_local: bool,
    /// Old kube-proxy: "… has no local endpoints" -j KUBE-MARK-DROP in KUBE-XLB.
    drop_no_local: Option<String>,
}

impl<'a> Nat<'a> {
    /// The nat table's chains, each with its rules in order (a declared
    /// chain without rules is there too, empty).
    fn new(tables: &'a [Table]) -> Self {
        let mut nat = Nat {
            chains: HashMap::new(),
        };
        for t in tables.iter().filter(|t| t.name == "nat") {
            for c in &t.chains {
                nat.chains.entry(c.name.as_str()).or_default();
            }
        }
        for r in tables
            .iter()
            .filter(|t| t.name == "nat")
            .flat_map(|t| &t.rules)
        {
            nat.chains.entry(r.chain.as_str()).or_default().push(r);
        }
        nat
    }

    fn has(&self, chain: &str) -> bool {
        self.chains.contains_key(chain)
    }

    fn rules(&self, chain: &str) -> &[&'a Rule] {
        self.chains.get(chain).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every DNAT reachable from `start`, in rule order, without looping.
    fn walk(&self, start: &str) -> Walk {
        let mut w = Walk {
            endpoints: Vec::new(),
            visited_local: false,
            drop_no_local: None,
        };
        let mut seen: HashSet<(String, bool)> = HashSet::new();
        let mut stack = vec![(start.to_string(), is_local_chain(start))];
        while let Some((chain, local)) = stack.pop() {
            if !seen.insert((chain.clone(), local)) {
                continue;
            }
            w.visited_local |= is_local_chain(&chain);
            let mut next = Vec::new();
            for r in self.rules(&chain) {
                let Some(target) = r.m.target.as_deref() else {
                    continue;
                };
                if target == "DNAT" {
                    if let Some((ip, port)) = r.m.to_destination.as_deref().and_then(parse_ip_port)
                        && !w
                            .endpoints
                            .iter()
                            .any(|e| e.0 == ip && e.1 == port && e.3 == local)
                    {
                        w.endpoints.push((ip, port, chain.clone(), local));
                    }
                } else if target == "KUBE-MARK-DROP"
                    && r.m
                        .comment
                        .as_deref()
                        .is_some_and(|c| c.ends_with(" has no local endpoints"))
                {
                    w.drop_no_local = Some(r.text.clone());
                } else if self.has(target) && !is_helper_chain(target) {
                    // A local chain's endpoint chains are local; a cluster
                    // chain it falls back to (old KUBE-XLB) is not.
                    let child_local =
                        is_local_chain(target) || (local && target.starts_with("KUBE-SEP-"));
                    next.push((target.to_string(), child_local));
                }
            }
            stack.extend(next.into_iter().rev());
        }
        w
    }
}

/// What the tables hold, for one address family: every drop, reject and
/// built-in chain, and the Services kube-proxy set up in them.
pub(super) fn build(tables: &[Table], mode: Mode, family: &str) -> Ruleset {
    let ipv6 = family == "ip6";
    let mut rs = Ruleset::empty(mode);
    for t in tables {
        collect_filter_rules(t, family, &mut rs.filter_rules);
        collect_base_chains(t, family, &mut rs.base_chains);
    }
    let nat = Nat::new(tables);
    let filter_rules: Vec<&Rule> = tables
        .iter()
        .filter(|t| t.name == "filter")
        .flat_map(|t| &t.rules)
        .collect();

    let mut found = Found::default();
    captured_addresses(&nat, ipv6, &mut found);
    // Whether each address's walk went through a local-endpoint chain.
    let mut local_walks = walk_endpoints(&nat, &mut found.ports);
    without_endpoints(&filter_rules, ipv6, &mut found, &mut local_walks);
    mark_local_endpoints(&nat, &mut found.ports, local_walks);
    let builtins: Vec<&str> = tables
        .iter()
        .filter(|t| t.name == "filter")
        .flat_map(|t| &t.chains)
        .filter(|c| c.policy.is_some())
        .map(|c| c.name.as_str())
        .collect();
    let filter = Filter {
        rules: &filter_rules,
        builtins: &builtins,
        family,
    };
    source_ranges(&nat, &filter, &mut found.ports);
    rs.services = found.ports;
    rs
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

/// Addresses kube-proxy captures in the nat table (KUBE-SERVICES,
/// KUBE-NODEPORTS).
fn captured_addresses(nat: &Nat, ipv6: bool, found: &mut Found) {
    for r in nat
        .rules("KUBE-SERVICES")
        .iter()
        .chain(nat.rules("KUBE-NODEPORTS"))
    {
        let Some(target) = r.m.target.as_deref() else {
            continue;
        };
        if !nat.has(target) || is_helper_chain(target) {
            continue;
        }
        let (Some(proto), Some(port)) = (rule_proto(r), rule_port(r)) else {
            continue;
        };
        let (kind, address) = if r.chain == "KUBE-NODEPORTS" {
            (AddressKind::NodePort, unspecified(ipv6))
        } else {
            let Some(address) = positive(&r.m.dst).and_then(host) else {
                continue;
            };
            (entry_kind(r.m.comment.as_deref(), target), address)
        };
        let key = (address, port, proto, kind == AddressKind::NodePort);
        if found.contains(&key) {
            continue; // older kube-proxy wrote several capture rules per address
        }
        let service = match r.m.comment.as_deref() {
            Some(c) => strip_kind_suffix(c).to_string(),
            None => name_from_chains(nat, target).unwrap_or_else(|| target.to_string()),
        };
        found.push(
            key,
            ServicePort {
                service,
                address,
                port,
                proto,
                kind,
                entry_chain: target.to_string(),
                endpoints: Vec::new(),
                local_only: false,
                no_endpoints: None,
                source_ranges: Vec::new(),
                firewall_rule: None,
                firewall_chains: Vec::new(),
            },
        );
    }
}

/// Endpoints, and the old-style "no local endpoints" drop; for each address,
/// whether its walk went through a local-endpoint chain.
fn walk_endpoints(nat: &Nat, services: &mut [ServicePort]) -> Vec<bool> {
    let mut local_walks: Vec<bool> = Vec::new();
    for s in services.iter_mut() {
        let w = nat.walk(&s.entry_chain);
        s.endpoints = dedup_endpoints(&w.endpoints);
        local_walks.push(w.visited_local);
        if let Some(rule) = w.drop_no_local {
            s.no_endpoints = Some(NoEndpoints::DropNoLocal { rule });
        }
    }
    local_walks
}

/// Reject / drop for lack of (local) endpoints, in the filter table. An
/// address not captured otherwise is added, named after the comment.
fn without_endpoints(
    filter_rules: &[&Rule],
    ipv6: bool,
    found: &mut Found,
    local_walks: &mut Vec<bool>,
) {
    for r in filter_rules {
        let Some((name, verdict)) = no_endpoints_verdict(r) else {
            continue;
        };
        let (Some(proto), Some(port)) = (rule_proto(r), rule_port(r)) else {
            continue;
        };
        let (nodeport, address) = match positive(&r.m.dst).and_then(host) {
            Some(a) => (false, a),
            None if r.m.dst_local == Some(true) => (true, unspecified(ipv6)),
            None => continue,
        };
        let key = (address, port, proto, nodeport);
        if let Some(s) = found.get_mut(&key) {
            if s.no_endpoints.is_none() {
                s.no_endpoints = Some(verdict);
            }
            continue;
        }
        let kind = if nodeport {
            AddressKind::NodePort
        } else if r.chain == "KUBE-EXTERNAL-SERVICES" {
            AddressKind::LoadBalancer
        } else {
            AddressKind::ClusterIp
        };
        found.push(
            key,
            ServicePort {
                service: name.to_string(),
                address,
                port,
                proto,
                kind,
                entry_chain: r.chain.clone(),
                endpoints: Vec::new(),
                local_only: false,
                no_endpoints: Some(verdict),
                source_ranges: Vec::new(),
                firewall_rule: None,
                firewall_chains: Vec::new(),
            },
        );
        local_walks.push(false);
    }
}

/// The service name and verdict of a REJECT "… has no endpoints" or a DROP
/// "… has no local endpoints" (kube-proxy's comments tell them apart).
fn no_endpoints_verdict(r: &Rule) -> Option<(&str, NoEndpoints)> {
    let (Some(target), Some(comment)) = (r.m.target.as_deref(), r.m.comment.as_deref()) else {
        return None;
    };
    if target != "REJECT" && target != "DROP" {
        return None;
    }
    if let Some(n) = comment.strip_suffix(" has no local endpoints") {
        Some((
            n,
            NoEndpoints::DropNoLocal {
                rule: r.text.clone(),
            },
        ))
    } else {
        comment.strip_suffix(" has no endpoints").map(|n| {
            (
                n,
                NoEndpoints::Reject {
                    rule: r.text.clone(),
                },
            )
        })
    }
}

/// Which endpoints are on this node: those of the service's local chain.
/// An address is local-only when its walk went through a local chain or
/// kube-proxy drops it for lack of local endpoints.
fn mark_local_endpoints(nat: &Nat, services: &mut [ServicePort], local_walks: Vec<bool>) {
    let mut local_sets: LocalSets = HashMap::new();
    for s in services.iter() {
        let key = (s.service.clone(), s.proto);
        let from_chain = service_hash(&s.entry_chain).and_then(|h| local_set(nat, h));
        let slot = local_sets.entry(key).or_insert(None);
        if let Some(set) = from_chain {
            slot.get_or_insert_with(HashSet::new).extend(set);
        }
    }
    for s in services.iter() {
        // Local policy without local endpoints: every endpoint is remote.
        if matches!(s.no_endpoints, Some(NoEndpoints::DropNoLocal { .. })) {
            local_sets
                .get_mut(&(s.service.clone(), s.proto))
                .expect("inserted above")
                .get_or_insert_with(HashSet::new);
        }
    }
    for (s, walked_local) in services.iter_mut().zip(local_walks) {
        if let Some(Some(set)) = local_sets.get(&(s.service.clone(), s.proto)) {
            for e in s.endpoints.iter_mut() {
                e.local = Some(set.contains(&(e.ip, e.port)));
            }
        }
        s.local_only =
            walked_local || matches!(s.no_endpoints, Some(NoEndpoints::DropNoLocal { .. }));
    }
}

/// The filter table: its rules and built-in chains.
struct Filter<'a> {
    rules: &'a [&'a Rule],
    builtins: &'a [&'a str],
    family: &'a str,
}

impl Filter<'_> {
    /// The built-in chains from which `target` is reached by jumps.
    fn reaching(&self, target: &str) -> Vec<ChainRef> {
        let mut out = Vec::new();
        for b in self.builtins {
            let mut seen: HashSet<&str> = HashSet::new();
            let mut stack = vec![*b];
            while let Some(chain) = stack.pop() {
                if chain == target {
                    out.push(ChainRef {
                        table: format!("{} filter", self.family),
                        chain: b.to_string(),
                    });
                    break;
                }
                if !seen.insert(chain) {
                    continue;
                }
                stack.extend(
                    self.rules
                        .iter()
                        .filter(|r| r.chain == chain)
                        .filter_map(|r| r.m.target.as_deref()),
                );
            }
        }
        out
    }
}

/// loadBalancerSourceRanges: the ranges a KUBE-FW-… chain lets through,
/// the rule dropping the rest (KUBE-PROXY-FIREWALL, or KUBE-MARK-DROP in the
/// chain itself before v1.25), and the built-in chains where that drop
/// happens.
fn source_ranges(nat: &Nat, filter: &Filter, services: &mut [ServicePort]) {
    for s in services
        .iter_mut()
        .filter(|s| s.entry_chain.starts_with("KUBE-FW-"))
    {
        let mut marked = false;
        for r in nat.rules(&s.entry_chain) {
            let target = r.m.target.as_deref().unwrap_or("");
            if let Some(src) = positive(&r.m.src) {
                if nat.has(target) && !is_helper_chain(target) {
                    s.source_ranges.push(src.to_string());
                }
            } else if target == "KUBE-MARK-DROP" {
                s.firewall_rule = Some(r.text.clone()); // before v1.25
                marked = true;
            }
        }
        let drop = filter.rules.iter().find(|r| {
            r.m.target.as_deref() == Some("DROP")
                && (r.chain == "KUBE-PROXY-FIREWALL"
                    || r.m
                        .comment
                        .as_deref()
                        .is_some_and(|c| c.contains("not accepted by")))
                && positive(&r.m.dst).and_then(host) == Some(s.address)
                && rule_port(r) == Some(s.port)
                && rule_proto(r) == Some(s.proto)
        });
        if let Some(r) = drop {
            s.firewall_rule = Some(r.text.clone());
            s.firewall_chains = filter.reaching(&r.chain);
        } else if marked {
            // The marked packet is dropped by kubelet's KUBE-FIREWALL rule.
            let mark_drop = filter.rules.iter().find(|r| {
                r.m.target.as_deref() == Some("DROP")
                    && r.m
                        .comment
                        .as_deref()
                        .is_some_and(|c| c.contains("dropping marked packets"))
            });
            if let Some(r) = mark_drop {
                s.firewall_chains = filter.reaching(&r.chain);
            }
        }
    }
}

/// "ns/svc:p loadbalancer IP" → LoadBalancer; a comment-less rule (large
/// clusters drop comments only on endpoint rules, but be safe) by its target.
fn entry_kind(comment: Option<&str>, target: &str) -> AddressKind {
    match comment {
        Some(c) if c.ends_with(" loadbalancer IP") => AddressKind::LoadBalancer,
        Some(c) if c.ends_with(" external IP") => AddressKind::ExternalIp,
        Some(c) if c.ends_with(" cluster IP") => AddressKind::ClusterIp,
        _ if target.starts_with("KUBE-FW-") => AddressKind::LoadBalancer,
        _ if target.starts_with("KUBE-SVC-") || target.starts_with("KUBE-SVL-") => {
            AddressKind::ClusterIp
        }
        _ => AddressKind::ExternalIp,
    }
}

fn strip_kind_suffix(comment: &str) -> &str {
    [" loadbalancer IP", " external IP", " cluster IP"]
        .iter()
        .find_map(|s| comment.strip_suffix(s))
        .unwrap_or(comment)
}

/// The service name from the comments on a chain's endpoint rules
/// ("ns/svc:p -> 10.244.1.5:8080" or plain "ns/svc:p").
fn name_from_chains(nat: &Nat, chain: &str) -> Option<String> {
    let mut seen = HashSet::new();
    let mut stack = vec![chain.to_string()];
    while let Some(c) = stack.pop() {
        if !seen.insert(c.clone()) {
            continue;
        }
        for r in nat.rules(&c) {
            if let Some(comment) = r.m.comment.as_deref() {
                let name = comment.split(" -> ").next().unwrap_or(comment);
                if !name.contains(' ') && name.contains('/') {
                    return Some(name.to_string());
                }
            }
            if let Some(t) =
                r.m.target
                    .as_deref()
                    .filter(|t| nat.has(t) && !is_helper_chain(t))
            {
                stack.push(t.to_string());
            }
        }
    }
    None
}

/// Endpoints of the service's local chain (KUBE-SVL-H; for KUBE-XLB-H the
/// endpoint chains it jumps to directly).
fn local_set(nat: &Nat, hash: &str) -> Option<HashSet<(IpAddr, u16)>> {
    let svl = format!("KUBE-SVL-{hash}");
    if nat.has(&svl) {
        return Some(
            nat.walk(&svl)
                .endpoints
                .iter()
                .map(|e| (e.0, e.1))
                .collect(),
        );
    }
    let xlb = format!("KUBE-XLB-{hash}");
    if nat.has(&xlb) {
        return Some(
            nat.rules(&xlb)
                .iter()
                .filter_map(|r| r.m.target.as_deref())
                .filter(|t| t.starts_with("KUBE-SEP-"))
                .flat_map(|t| nat.walk(t).endpoints)
                .map(|e| (e.0, e.1))
                .collect(),
        );
    }
    None
}

fn collect_filter_rules(t: &Table, family: &str, out: &mut Vec<FilterRule>) {
    for c in &t.chains {
        if c.policy.as_deref() == Some("DROP") {
            out.push(FilterRule {
                family: family.into(),
                table: t.name.clone(),
                chain: c.name.clone(),
                rule: format!("-P {} DROP", c.name),
                verdict: "DROP".into(),
                comment: None,
                packets: c.counters.map(|c| c.0),
                bytes: c.counters.map(|c| c.1),
                handle: None,
            });
        }
    }
    for r in &t.rules {
        let Some(verdict @ ("DROP" | "REJECT")) = r.m.target.as_deref() else {
            continue;
        };
        out.push(FilterRule {
            family: family.into(),
            table: t.name.clone(),
            chain: r.chain.clone(),
            rule: r.text.clone(),
            verdict: verdict.into(),
            comment: r.m.comment.clone(),
            packets: r.counters.map(|c| c.0),
            bytes: r.counters.map(|c| c.1),
            handle: None,
        });
    }
}

/// Built-in chains sit at fixed priorities (`enum nf_ip_hook_priorities`).
fn collect_base_chains(t: &Table, family: &str, out: &mut Vec<BaseChain>) {
    for c in &t.chains {
        let Some(policy) = &c.policy else { continue };
        let hook = c.name.to_ascii_lowercase();
        let priority = match (t.name.as_str(), hook.as_str()) {
            ("raw", _) => -300,
            ("mangle", _) => -150,
            ("nat", "prerouting" | "output") => -100,
            ("nat", _) => 100,
            ("filter", _) => 0,
            ("security", _) => 50,
            _ => continue,
        };
        if !matches!(
            hook.as_str(),
            "prerouting" | "input" | "forward" | "output" | "postrouting"
        ) {
            continue;
        }
        out.push(BaseChain {
            family: family.into(),
            table: t.name.clone(),
            chain: c.name.clone(),
            hook,
            priority,
            policy: Some(policy.to_ascii_lowercase()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeproxy::parse_iptables_save;

    const AFTER: &str = include_str!("../testdata/iptables-nft.save");
    const BEFORE: &str = include_str!("../testdata/iptables-nft-before.save");
    const NFT_MODE_IPT: &str = include_str!("../testdata/nftables.iptables-nft.save");

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn parsed() -> Ruleset {
        parse_iptables_save(AFTER, Mode::IptablesNft).expect("fixture parses")
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
        let mut got: Vec<(String, AddressKind, String, u16, Proto)> = rs
            .services
            .iter()
            .map(|s| {
                (
                    s.service.clone(),
                    s.kind,
                    s.address.to_string(),
                    s.port,
                    s.proto,
                )
            })
            .collect();
        got.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        use AddressKind::*;
        let mut want = vec![
            ("lab/web:http", ClusterIp, "10.96.0.10", 80, Proto::Tcp),
            ("lab/web:http", LoadBalancer, "203.0.113.10", 80, Proto::Tcp),
            ("lab/web:http", NodePort, "0.0.0.0", 30080, Proto::Tcp),
            ("lab/empty:http", ClusterIp, "10.96.0.11", 80, Proto::Tcp),
            (
                "lab/empty:http",
                LoadBalancer,
                "203.0.113.11",
                80,
                Proto::Tcp,
            ),
            ("lab/empty:http", NodePort, "0.0.0.0", 30081, Proto::Tcp),
            (
                "lab/local-only:http",
                ClusterIp,
                "10.96.0.12",
                80,
                Proto::Tcp,
            ),
            (
                "lab/local-only:http",
                LoadBalancer,
                "203.0.113.12",
                80,
                Proto::Tcp,
            ),
            (
                "lab/local-only:http",
                NodePort,
                "0.0.0.0",
                30082,
                Proto::Tcp,
            ),
            (
                "lab/restricted:https",
                ClusterIp,
                "10.96.0.13",
                443,
                Proto::Tcp,
            ),
            (
                "lab/restricted:https",
                LoadBalancer,
                "203.0.113.13",
                443,
                Proto::Tcp,
            ),
            (
                "lab/restricted:https",
                NodePort,
                "0.0.0.0",
                30443,
                Proto::Tcp,
            ),
            ("lab/nodeport", ClusterIp, "10.96.0.14", 9090, Proto::Tcp),
            ("lab/nodeport", NodePort, "0.0.0.0", 30090, Proto::Tcp),
            ("lab/dns:dns", ClusterIp, "10.96.0.15", 53, Proto::Udp),
            ("lab/dns:dns", LoadBalancer, "203.0.113.14", 53, Proto::Udp),
        ]
        .into_iter()
        .map(|(a, b, c, d, e)| (a.to_string(), b, c.to_string(), d, e))
        .collect::<Vec<_>>();
        want.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        assert_eq!(got, want);
    }

    #[test]
    fn load_balancer_with_a_local_and_a_remote_endpoint() {
        let rs = parsed();
        let lb = find(&rs, "lab/web:http", AddressKind::LoadBalancer);
        assert_eq!(lb.entry_chain, "KUBE-EXT-NAVV37HDGJLPWY47");
        assert!(!lb.local_only);
        assert_eq!(lb.no_endpoints, None);
        let eps: Vec<(String, u16, &str, Option<bool>)> = lb
            .endpoints
            .iter()
            .map(|e| (e.ip.to_string(), e.port, e.chain.as_str(), e.local))
            .collect();
        // Cluster policy: the rules do not say where endpoints run.
        assert_eq!(
            eps,
            vec![
                ("10.244.1.5".into(), 8080, "KUBE-SEP-AKRFMILQGST46UTI", None),
                ("10.244.2.7".into(), 8080, "KUBE-SEP-MU7Y4LW2QUIZ2C6V", None),
            ]
        );
        let (owner, ep) = rs
            .endpoint_owner(ip("10.244.2.7"), 8080, Proto::Tcp)
            .unwrap();
        assert_eq!(
            (owner.service.as_str(), owner.kind),
            ("lab/web:http", AddressKind::LoadBalancer)
        );
        assert_eq!(ep.chain, "KUBE-SEP-MU7Y4LW2QUIZ2C6V");
        assert_eq!(
            find(&rs, "lab/web:http", AddressKind::ClusterIp).entry_chain,
            "KUBE-SVC-NAVV37HDGJLPWY47"
        );
    }

    #[test]
    fn no_endpoints_is_a_reject_on_every_address() {
        let rs = parsed();
        for kind in [
            AddressKind::ClusterIp,
            AddressKind::LoadBalancer,
            AddressKind::NodePort,
        ] {
            let s = find(&rs, "lab/empty:http", kind);
            assert!(s.endpoints.is_empty());
            let Some(NoEndpoints::Reject { rule }) = &s.no_endpoints else {
                panic!("{kind:?}: {:?}", s.no_endpoints)
            };
            assert!(
                rule.contains("lab/empty:http has no endpoints") && rule.contains("-j REJECT"),
                "{rule}"
            );
        }
        let lb = find(&rs, "lab/empty:http", AddressKind::LoadBalancer);
        assert_eq!(lb.entry_chain, "KUBE-EXTERNAL-SERVICES");
        assert_eq!(
            lb.no_endpoints.as_ref().unwrap().rule(),
            r#"-A KUBE-EXTERNAL-SERVICES -d 203.0.113.11/32 -p tcp -m comment --comment "lab/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable"#
        );
        assert_eq!(
            find(&rs, "lab/empty:http", AddressKind::ClusterIp).entry_chain,
            "KUBE-SERVICES"
        );
    }

    #[test]
    fn local_policy_without_local_endpoint_drops_outside_traffic() {
        let rs = parsed();
        let lb = find(&rs, "lab/local-only:http", AddressKind::LoadBalancer);
        assert!(lb.local_only);
        let Some(NoEndpoints::DropNoLocal { rule }) = &lb.no_endpoints else {
            panic!("{:?}", lb.no_endpoints)
        };
        assert!(
            rule.contains("-d 203.0.113.12/32") && rule.ends_with("-j DROP"),
            "{rule}"
        );
        // Pod and host traffic still short-circuits to the remote endpoint.
        assert_eq!(lb.endpoints.len(), 1);
        assert_eq!(lb.endpoints[0].ip, ip("10.244.2.8"));
        assert_eq!(lb.endpoints[0].local, Some(false));
        let np = find(&rs, "lab/local-only:http", AddressKind::NodePort);
        assert!(matches!(
            np.no_endpoints,
            Some(NoEndpoints::DropNoLocal { .. })
        ));
        // The cluster IP does not care about externalTrafficPolicy.
        let cip = find(&rs, "lab/local-only:http", AddressKind::ClusterIp);
        assert!(!cip.local_only);
        assert_eq!(cip.no_endpoints, None);
    }

    #[test]
    fn local_policy_marks_which_endpoints_are_local() {
        let rs = parsed();
        let np = find(&rs, "lab/nodeport", AddressKind::NodePort);
        assert!(np.local_only);
        assert_eq!(np.address, ip("0.0.0.0"));
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
        // The cluster IP of the same service knows too, from its KUBE-SVL chain.
        let cip = find(&rs, "lab/nodeport", AddressKind::ClusterIp);
        assert!(!cip.local_only);
        assert_eq!(
            cip.endpoints
                .iter()
                .filter(|e| e.local == Some(true))
                .count(),
            1
        );
        let hits = rs.services_for(ip("192.0.2.1"), 30090, Proto::Tcp);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].service, "lab/nodeport");
    }

    #[test]
    fn source_ranges_and_their_drop_rule() {
        let rs = parsed();
        let lb = find(&rs, "lab/restricted:https", AddressKind::LoadBalancer);
        assert_eq!(lb.entry_chain, "KUBE-FW-BZSD5Y6P73CTOQPL");
        assert_eq!(lb.source_ranges, vec!["198.51.100.0/24".to_string()]);
        assert!(
            lb.firewall_rule
                .as_deref()
                .unwrap()
                .starts_with("-A KUBE-PROXY-FIREWALL -d 203.0.113.13/32")
        );
        assert_eq!(lb.endpoints.len(), 1);
        // The built-in chains whose traffic meets that drop.
        let at: Vec<String> = lb
            .firewall_chains
            .iter()
            .map(|c| format!("{} {}", c.table, c.chain))
            .collect();
        assert_eq!(
            at,
            ["ip filter INPUT", "ip filter FORWARD", "ip filter OUTPUT"]
        );
        // The NodePort is not subject to source ranges.
        assert!(
            find(&rs, "lab/restricted:https", AddressKind::NodePort)
                .source_ranges
                .is_empty()
        );
    }

    #[test]
    fn udp_service() {
        let rs = parsed();
        let hits = rs.services_for(ip("203.0.113.14"), 53, Proto::Udp);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].endpoints[0].port, 5353);
        assert!(
            rs.services_for(ip("203.0.113.14"), 53, Proto::Tcp)
                .is_empty()
        );
    }

    #[test]
    fn every_drop_and_reject_with_counters() {
        let rs = parsed();
        let netpol = rs
            .filter_rules
            .iter()
            .find(|r| r.comment.as_deref() == Some("netpol lab/deny-db: ingress from 192.0.2.0/24"))
            .unwrap();
        assert_eq!(
            (
                netpol.table.as_str(),
                netpol.chain.as_str(),
                netpol.verdict.as_str()
            ),
            ("filter", "FORWARD", "DROP")
        );
        assert_eq!((netpol.packets, netpol.bytes), (Some(3), Some(180)));
        assert!(
            netpol
                .rule
                .starts_with("-A FORWARD -s 192.0.2.0/24 -d 10.244.1.9/32")
        );
        let invalid = rs
            .filter_rules
            .iter()
            .find(|r| r.chain == "KUBE-FORWARD")
            .unwrap();
        assert_eq!(
            invalid.rule,
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP"
        );
        let rejects = rs
            .filter_rules
            .iter()
            .filter(|r| r.verdict == "REJECT")
            .count();
        assert_eq!(rejects, 3);
        assert_eq!(rs.filter_rules.len(), 9);
        assert!(
            rs.filter_rules
                .iter()
                .all(|r| r.family == "ip" && r.packets.is_some() && r.handle.is_none())
        );
    }

    #[test]
    fn counters_show_which_drops_the_traffic_hit() {
        let before = parse_iptables_save(BEFORE, Mode::IptablesNft).unwrap();
        let after = parsed();
        let mut hit: Vec<(String, u64)> =
            crate::kubeproxy::counter_deltas(&before.filter_rules, &after.filter_rules)
                .into_iter()
                .map(|(r, n)| (r.comment.unwrap_or(r.rule), n))
                .collect();
        hit.sort();
        assert_eq!(
            hit,
            vec![
                ("lab/empty:http has no endpoints".to_string(), 3),
                ("lab/local-only:http has no local endpoints".into(), 3),
                (
                    "lab/restricted:https traffic not accepted by KUBE-FW-BZSD5Y6P73CTOQPL".into(),
                    3
                ),
                ("netpol lab/deny-db: ingress from 192.0.2.0/24".into(), 3),
            ]
        );
    }

    #[test]
    fn base_chains_at_builtin_priorities() {
        let rs = parsed();
        let mut got: Vec<(String, String, i32)> = rs
            .base_chains
            .iter()
            .map(|c| (c.table.clone(), c.hook.clone(), c.priority))
            .collect();
        got.sort();
        let want: Vec<(String, String, i32)> = [
            ("filter", "forward", 0),
            ("filter", "input", 0),
            ("filter", "output", 0),
            ("nat", "input", 100),
            ("nat", "output", -100),
            ("nat", "postrouting", 100),
            ("nat", "prerouting", -100),
        ]
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
        .collect();
        assert_eq!(got, want);
        assert!(
            rs.base_chains
                .iter()
                .all(|c| c.policy.as_deref() == Some("accept"))
        );
    }

    #[test]
    fn a_node_without_kube_proxy_iptables_rules() {
        let rs = parse_iptables_save(NFT_MODE_IPT, Mode::IptablesNft).unwrap();
        assert!(rs.services.is_empty());
        assert_eq!(rs.filter_rules.len(), 1);
        assert!(
            parse_iptables_save("", Mode::IptablesLegacy)
                .unwrap()
                .filter_rules
                .is_empty()
        );
    }

    #[test]
    fn rules_without_counters_policies_and_ipv6() {
        let text = "# Generated by ip6tables-save v1.8.9 (legacy)\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [12:960]\n\
                    :KUBE-SERVICES - [0:0]\n\
                    -A KUBE-SERVICES -d fd00:96::11/128 -p tcp -m comment --comment \"ns/v6:web has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp6-port-unreachable\n\
                    COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-AAAA - [0:0]\n:KUBE-SEP-BBBB - [0:0]\n\
                    -A KUBE-SERVICES -d fd00:96::10/128 -p tcp -m comment --comment \"ns/v6:web cluster IP\" -m tcp --dport 80 -j KUBE-SVC-AAAA\n\
                    -A KUBE-SVC-AAAA -j KUBE-SEP-BBBB\n\
                    -A KUBE-SEP-BBBB -p tcp -m tcp -j DNAT --to-destination [fd00:244::5]:8080\nCOMMIT\n";
        let rs = parse_iptables_save(text, Mode::IptablesLegacy).unwrap();
        let policy = rs
            .filter_rules
            .iter()
            .find(|r| r.rule == "-P FORWARD DROP")
            .unwrap();
        assert_eq!((policy.packets, policy.family.as_str()), (Some(12), "ip6"));
        let cip = rs.services_for(ip("fd00:96::10"), 80, Proto::Tcp)[0];
        assert_eq!(cip.endpoints[0].ip, ip("fd00:244::5"));
        assert_eq!(cip.endpoints[0].port, 8080);
        let rejected = rs.services_for(ip("fd00:96::11"), 80, Proto::Tcp)[0];
        assert_eq!(rejected.kind, AddressKind::ClusterIp);
        assert!(matches!(
            rejected.no_endpoints,
            Some(NoEndpoints::Reject { .. })
        ));
        assert!(
            rs.filter_rules
                .iter()
                .all(|r| r.packets.is_some() || r.rule.starts_with("-A"))
        );
    }

    /// kube-proxy before v1.25: KUBE-XLB chains, KUBE-MARK-DROP, comments
    /// after the addresses, several capture rules per address, and no
    /// comments on endpoint rules (large-cluster mode).
    #[test]
    fn older_kube_proxy_layout() {
        let text = r#"*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-MARK-DROP - [0:0]
:KUBE-FW-QKNQ - [0:0]
:KUBE-XLB-QKNQ - [0:0]
:KUBE-SVC-QKNQ - [0:0]
:KUBE-SEP-ONE - [0:0]
:KUBE-SEP-TWO - [0:0]
:KUBE-XLB-NOLO - [0:0]
:KUBE-SVC-NOLO - [0:0]
:KUBE-SEP-THREE - [0:0]
-A KUBE-SERVICES ! -s 10.244.0.0/16 -d 10.96.115.88/32 -p tcp -m comment --comment "default/test-svc cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SERVICES -d 10.96.115.88/32 -p tcp -m comment --comment "default/test-svc cluster IP" -m tcp --dport 80 -j KUBE-SVC-QKNQ
-A KUBE-SERVICES -d 192.0.2.50/32 -p tcp -m comment --comment "default/test-svc loadbalancer IP" -m tcp --dport 80 -j KUBE-FW-QKNQ
-A KUBE-SERVICES -d 192.0.2.51/32 -p tcp -m comment --comment "default/nolocal loadbalancer IP" -m tcp --dport 80 -j KUBE-XLB-NOLO
-A KUBE-NODEPORTS -s 127.0.0.0/8 -p tcp -m comment --comment "default/test-svc" -m tcp --dport 32070 -j KUBE-MARK-MASQ
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/test-svc" -m tcp --dport 32070 -j KUBE-XLB-QKNQ
-A KUBE-FW-QKNQ -m comment --comment "default/test-svc loadbalancer IP" -s 198.51.100.0/24 -j KUBE-XLB-QKNQ
-A KUBE-FW-QKNQ -m comment --comment "default/test-svc loadbalancer IP" -j KUBE-MARK-DROP
-A KUBE-XLB-QKNQ -m comment --comment "Redirect pods trying to reach external loadbalancer VIP to clusterIP" -s 10.244.0.0/16 -j KUBE-SVC-QKNQ
-A KUBE-XLB-QKNQ -m comment --comment "Balancing rule 0 for default/test-svc" -j KUBE-SEP-ONE
-A KUBE-SVC-QKNQ -m statistic --mode random --probability 0.5 -j KUBE-SEP-ONE
-A KUBE-SVC-QKNQ -j KUBE-SEP-TWO
-A KUBE-SEP-ONE -s 10.244.1.3/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-ONE -p tcp -m tcp -j DNAT --to-destination 10.244.1.3:80
-A KUBE-SEP-TWO -p tcp -m tcp -j DNAT --to-destination 10.244.2.3:80
-A KUBE-XLB-NOLO -s 10.244.0.0/16 -j KUBE-SVC-NOLO
-A KUBE-XLB-NOLO -m comment --comment "default/nolocal has no local endpoints" -j KUBE-MARK-DROP
-A KUBE-SVC-NOLO -j KUBE-SEP-THREE
-A KUBE-SEP-THREE -p tcp -m tcp -j DNAT --to-destination 10.244.2.9:80
COMMIT
"#;
        let rs = parse_iptables_save(text, Mode::IptablesLegacy).unwrap();
        assert_eq!(rs.services.len(), 4);
        let lb = find(&rs, "default/test-svc", AddressKind::LoadBalancer);
        assert!(lb.local_only);
        assert_eq!(lb.source_ranges, vec!["198.51.100.0/24".to_string()]);
        assert!(
            lb.firewall_rule
                .as_deref()
                .unwrap()
                .ends_with("-j KUBE-MARK-DROP")
        );
        let local: Vec<(String, Option<bool>)> = lb
            .endpoints
            .iter()
            .map(|e| (e.ip.to_string(), e.local))
            .collect();
        assert_eq!(
            local,
            vec![
                ("10.244.1.3".into(), Some(true)),
                ("10.244.2.3".into(), Some(false))
            ]
        );
        let np = find(&rs, "default/test-svc", AddressKind::NodePort);
        assert_eq!((np.port, np.entry_chain.as_str()), (32070, "KUBE-XLB-QKNQ"));
        let nolocal = find(&rs, "default/nolocal", AddressKind::LoadBalancer);
        assert!(nolocal.local_only);
        assert!(matches!(
            nolocal.no_endpoints,
            Some(NoEndpoints::DropNoLocal { .. })
        ));
        assert_eq!(nolocal.endpoints[0].local, Some(false));
    }
}
