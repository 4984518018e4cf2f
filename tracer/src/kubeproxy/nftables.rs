//! `nft -j list ruleset` into services, drop/reject rules and base chains.
//!
//! kube-proxy in nftables mode keeps everything in table `ip kube-proxy`
//! (and `ip6 kube-proxy`); services are map elements, not rules:
//!
//! ```text
//! services                  ip daddr . meta l4proto . th dport vmap @service-ips
//!                           fib daddr type local … meta l4proto . th dport vmap @service-nodeports
//!   @service-ips            IP . tcp . P   : goto service-H-ns/svc/tcp/p   (ClusterIP)
//!                           LB . tcp . P   : goto external-H-ns/svc/tcp/p  (LoadBalancer, externalIP)
//!   external-…              goto service-… / local-…   (plus short-circuits)
//!   service-… / local-…     numgen random mod N vmap { 0 : goto endpoint-H-ns/svc/tcp/p__IP/PORT, … }
//!   endpoint-…              meta l4proto tcp dnat to IP:PORT
//! service-endpoints-check   … vmap @no-endpoint-services   (IP . tcp . P : goto reject-chain | drop)
//! firewall-check            … vmap @firewall-ips -> firewall-…: ip saddr != { ranges } drop
//! ```
//!
//! iptables-nft's tables (`ip filter`, `ip nat`, …) show up here too, with
//! opaque `xt` expressions: their base chains and drop/reject rules are
//! collected, but services in them are read from iptables-save instead.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use serde_json::Value;

use super::{
    AddressKind, BaseChain, FilterRule, Mode, NoEndpoints, ParseError, Proto, Ruleset, ServicePort,
    dedup_endpoints, unspecified,
};

/// Parses `nft -j list ruleset` output.
pub fn parse_nft_json(json: &str) -> Result<Ruleset, ParseError> {
    let doc: Value = serde_json::from_str(json).map_err(|e| {
        let line = (e.line() > 0).then_some(e.line());
        ParseError::new(line, format!("not valid JSON: {e}"))
    })?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ParseError::new(
                None,
                "not `nft -j list ruleset` output: expected an object with an \"nftables\" array",
            )
        })?;
    let model = Model::read(items)?;
    Ok(model.build())
}

// --- the JSON document ------------------------------------------------------

struct Chain<'a> {
    family: &'a str,
    table: &'a str,
    name: &'a str,
    hook: Option<&'a str>,
    priority: Option<i32>,
    policy: Option<&'a str>,
}

struct Rule<'a> {
    family: &'a str,
    table: &'a str,
    chain: &'a str,
    handle: Option<u64>,
    expr: &'a [Value],
    comment: Option<&'a str>,
}

struct Elem<'a> {
    key: &'a Value,
    /// The value of a map element.
    data: Option<&'a Value>,
    comment: Option<&'a str>,
}

struct Set<'a> {
    family: &'a str,
    table: &'a str,
    name: &'a str,
    elems: Vec<Elem<'a>>,
}

#[derive(Default)]
struct Model<'a> {
    chains: Vec<Chain<'a>>,
    rules: Vec<Rule<'a>>,
    sets: Vec<Set<'a>>,
}

fn field<'a>(body: &'a Value, key: &str, what: &str, i: usize) -> Result<&'a str, ParseError> {
    body.get(key).and_then(Value::as_str).ok_or_else(|| {
        ParseError::new(
            None,
            format!("nftables[{i}]: {what} without a string \"{key}\""),
        )
    })
}

impl<'a> Model<'a> {
    fn read(items: &'a [Value]) -> Result<Self, ParseError> {
        let mut m = Model::default();
        for (i, item) in items.iter().enumerate() {
            let Some(obj) = item.as_object().filter(|o| o.len() == 1) else {
                return Err(ParseError::new(
                    None,
                    format!("nftables[{i}]: expected an object with one key"),
                ));
            };
            let (kind, body) = obj.iter().next().expect("one key");
            if !body.is_object() && kind != "metainfo" {
                return Err(ParseError::new(
                    None,
                    format!("nftables[{i}]: {kind} is not an object"),
                ));
            }
            match kind.as_str() {
                "chain" => m.chains.push(Chain {
                    family: field(body, "family", "chain", i)?,
                    table: field(body, "table", "chain", i)?,
                    name: field(body, "name", "chain", i)?,
                    hook: body.get("hook").and_then(Value::as_str),
                    priority: match body.get("prio") {
                        None => None,
                        Some(p) => Some(
                            priority(p, body.get("family").and_then(Value::as_str)).ok_or_else(
                                || {
                                    ParseError::new(
                                        None,
                                        format!("nftables[{i}]: chain has an unknown priority {p}"),
                                    )
                                },
                            )?,
                        ),
                    },
                    policy: body.get("policy").and_then(Value::as_str),
                }),
                "rule" => m.rules.push(Rule {
                    family: field(body, "family", "rule", i)?,
                    table: field(body, "table", "rule", i)?,
                    chain: field(body, "chain", "rule", i)?,
                    handle: body.get("handle").and_then(Value::as_u64),
                    expr: body
                        .get("expr")
                        .and_then(Value::as_array)
                        .map(Vec::as_slice)
                        .ok_or_else(|| {
                            ParseError::new(
                                None,
                                format!("nftables[{i}]: rule without an \"expr\" array"),
                            )
                        })?,
                    comment: body.get("comment").and_then(Value::as_str),
                }),
                "set" | "map" => {
                    let is_map = kind == "map" || body.get("map").is_some();
                    let elems = match body.get("elem") {
                        None => Vec::new(),
                        Some(Value::Array(list)) => list.iter().map(|e| elem(e, is_map)).collect(),
                        Some(_) => {
                            return Err(ParseError::new(
                                None,
                                format!("nftables[{i}]: {kind} \"elem\" is not an array"),
                            ));
                        }
                    };
                    m.sets.push(Set {
                        family: field(body, "family", kind, i)?,
                        table: field(body, "table", kind, i)?,
                        name: field(body, "name", kind, i)?,
                        elems,
                    });
                }
                "table" => {
                    field(body, "family", "table", i)?;
                    field(body, "name", "table", i)?;
                }
                // metainfo, and objects lbpath does not use (counters,
                // flowtables, ct helpers, …).
                _ => {}
            }
        }
        Ok(m)
    }

    fn set(&self, family: &str, table: &str, name: &str) -> Option<&Set<'a>> {
        let name = name.strip_prefix('@').unwrap_or(name);
        self.sets
            .iter()
            .find(|s| s.family == family && s.table == table && s.name == name)
    }

    fn build(&self) -> Ruleset {
        let mut rs = Ruleset::empty(Mode::Nftables);
        for c in &self.chains {
            let (Some(hook), Some(priority)) = (c.hook, c.priority) else {
                continue;
            };
            if matches!(c.family, "ip" | "ip6" | "inet")
                && matches!(
                    hook,
                    "prerouting" | "input" | "forward" | "output" | "postrouting"
                )
            {
                rs.base_chains.push(BaseChain {
                    family: c.family.into(),
                    table: c.table.into(),
                    chain: c.name.into(),
                    hook: hook.into(),
                    priority,
                    policy: c.policy.map(str::to_ascii_lowercase),
                });
            }
            if c.policy == Some("drop") {
                rs.filter_rules.push(FilterRule {
                    family: c.family.into(),
                    table: c.table.into(),
                    chain: c.name.into(),
                    rule: "policy drop".into(),
                    verdict: "DROP".into(),
                    comment: None,
                    packets: None,
                    bytes: None,
                    handle: None,
                });
            }
        }
        for r in &self.rules {
            if let Some(verdict) = self.verdict(r) {
                let counter = r
                    .expr
                    .iter()
                    .find_map(|e| e.get("counter"))
                    .filter(|c| c.is_object());
                rs.filter_rules.push(FilterRule {
                    family: r.family.into(),
                    table: r.table.into(),
                    chain: r.chain.into(),
                    rule: render_rule(r.expr, r.comment, false),
                    verdict: verdict.into(),
                    comment: r.comment.map(String::from),
                    packets: counter
                        .and_then(|c| c.get("packets"))
                        .and_then(Value::as_u64),
                    bytes: counter.and_then(|c| c.get("bytes")).and_then(Value::as_u64),
                    handle: r.handle,
                });
            }
        }
        let mut tables: Vec<(&str, &str)> = Vec::new();
        for c in &self.chains {
            if c.table == "kube-proxy" && !tables.contains(&(c.family, c.table)) {
                tables.push((c.family, c.table));
            }
        }
        for (family, table) in tables {
            KubeProxy::new(self, family, table).services(&mut rs.services);
        }
        rs
    }

    /// "DROP" / "REJECT" when the rule can drop or reject the packet itself.
    fn verdict(&self, r: &Rule) -> Option<&'static str> {
        let mut out = None;
        for e in r.expr {
            if e.get("drop").is_some() {
                out = Some("DROP");
            } else if e.get("reject").is_some() {
                out = Some("REJECT");
            } else if let Some(xt) = e
                .get("xt")
                .filter(|x| x.get("type").and_then(Value::as_str) == Some("target"))
            {
                match xt.get("name").and_then(Value::as_str) {
                    Some("DROP") => out = Some("DROP"),
                    Some("REJECT") => out = Some("REJECT"),
                    _ => {}
                }
            } else if let Some(vmap) = e.get("vmap") {
                // A verdict map drops when one of its values is drop.
                let values: Vec<&Value> = match vmap.get("data") {
                    Some(Value::String(name)) => self
                        .set(r.family, r.table, name)
                        .map(|s| s.elems.iter().filter_map(|e| e.data).collect())
                        .unwrap_or_default(),
                    Some(data) => inline_elems(data)
                        .into_iter()
                        .filter_map(|e| e.data)
                        .collect(),
                    None => Vec::new(),
                };
                if values.iter().any(|v| v.get("drop").is_some()) {
                    out = Some("DROP");
                }
            }
        }
        out
    }
}

fn elem(v: &Value, is_map: bool) -> Elem<'_> {
    let (key, data) = match v.as_array() {
        Some(pair) if is_map && pair.len() == 2 => (&pair[0], Some(&pair[1])),
        _ => (v, None),
    };
    // {"elem": {"val": …, "comment": …}} wraps keys that carry options.
    match key.get("elem") {
        Some(inner) => Elem {
            key: inner.get("val").unwrap_or(key),
            data,
            comment: inner.get("comment").and_then(Value::as_str),
        },
        None => Elem {
            key,
            data,
            comment: None,
        },
    }
}

/// Elements of an anonymous set/map: `{"set": [...]}` or a bare list.
fn inline_elems(v: &Value) -> Vec<Elem<'_>> {
    let list = v.get("set").unwrap_or(v);
    list.as_array()
        .map(|l| l.iter().map(|e| elem(e, true)).collect())
        .unwrap_or_default()
}

/// Chain priority, numeric or by name ("dstnat - 10").
fn priority(v: &Value, family: Option<&str>) -> Option<i32> {
    if let Some(n) = v.as_i64() {
        return i32::try_from(n).ok();
    }
    let s = v.as_str()?.replace(' ', "");
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    let split = s.find(['+', '-']).unwrap_or(s.len());
    let (name, offset) = s.split_at(split);
    let offset: i32 = if offset.is_empty() {
        0
    } else {
        offset.parse().ok()?
    };
    let base = if family == Some("bridge") {
        match name {
            "dstnat" => -300,
            "filter" => -200,
            "out" => 100,
            "srcnat" => 300,
            _ => return None,
        }
    } else {
        match name {
            "raw" => -300,
            "mangle" => -150,
            "dstnat" => -100,
            "filter" => 0,
            "security" => 50,
            "srcnat" => 100,
            _ => return None,
        }
    };
    Some(base + offset)
}

// --- kube-proxy's table ------------------------------------------------------

const SERVICE_PREFIXES: [&str; 4] = ["service-", "local-", "external-", "firewall-"];

/// The target of a `goto`/`jump` verdict.
fn jump_target(v: &Value) -> Option<&str> {
    v.get("goto")
        .or_else(|| v.get("jump"))?
        .get("target")?
        .as_str()
}

/// The (address, protocol, port) or (protocol, port) key of a map element.
fn key_parts(key: &Value) -> Vec<String> {
    match key.get("concat").and_then(Value::as_array) {
        Some(parts) => parts.iter().map(scalar).collect(),
        None => vec![scalar(key)],
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

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

struct KubeProxy<'m, 'a> {
    model: &'m Model<'a>,
    family: &'a str,
    table: &'a str,
    chains: HashMap<&'a str, Vec<&'m Rule<'a>>>,
}

struct Walk {
    /// (ip, port, chain, reached through a local-endpoint chain)
    endpoints: Vec<(IpAddr, u16, String, bool)>,
    visited_local: bool,
}

impl<'m, 'a> KubeProxy<'m, 'a> {
    fn new(model: &'m Model<'a>, family: &'a str, table: &'a str) -> Self {
        let mut chains: HashMap<&str, Vec<&Rule>> = HashMap::new();
        for c in model
            .chains
            .iter()
            .filter(|c| c.family == family && c.table == table)
        {
            chains.entry(c.name).or_default();
        }
        for r in model
            .rules
            .iter()
            .filter(|r| r.family == family && r.table == table)
        {
            chains.entry(r.chain).or_default().push(r);
        }
        KubeProxy {
            model,
            family,
            table,
            chains,
        }
    }

    fn map(&self, name: &str) -> &[Elem<'a>] {
        self.model
            .set(self.family, self.table, name)
            .map(|s| s.elems.as_slice())
            .unwrap_or(&[])
    }

    /// The chain whose rule looks packets up in map `name`.
    fn chain_using(&self, name: &str) -> Option<&'a str> {
        let at = format!("@{name}");
        self.model
            .rules
            .iter()
            .filter(|r| r.family == self.family && r.table == self.table)
            .find(|r| {
                r.expr.iter().any(|e| {
                    e.get("vmap")
                        .and_then(|v| v.get("data"))
                        .and_then(Value::as_str)
                        == Some(at.as_str())
                })
            })
            .map(|r| r.chain)
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
                for e in r.expr {
                    let mut targets: Vec<&str> = jump_target(e).into_iter().collect();
                    if let Some(vmap) = e.get("vmap") {
                        let elems = match vmap.get("data") {
                            Some(Value::String(name)) => self.map(name).iter().collect::<Vec<_>>(),
                            Some(data) => {
                                targets.extend(
                                    inline_elems(data)
                                        .iter()
                                        .filter_map(|x| x.data.and_then(jump_target)),
                                );
                                Vec::new()
                            }
                            None => Vec::new(),
                        };
                        targets.extend(elems.iter().filter_map(|x| x.data.and_then(jump_target)));
                    }
                    for t in targets {
                        if t.contains('/') && self.chains.contains_key(t) {
                            let child_local =
                                t.starts_with("local-") || (local && t.starts_with("endpoint-"));
                            next.push((t.to_string(), child_local));
                        }
                    }
                    if let Some(dnat) = e.get("dnat") {
                        let ip = dnat
                            .get("addr")
                            .and_then(Value::as_str)
                            .and_then(|a| a.parse::<IpAddr>().ok());
                        let port = dnat
                            .get("port")
                            .and_then(Value::as_u64)
                            .and_then(|p| u16::try_from(p).ok());
                        if let (Some(ip), Some(port)) = (ip, port)
                            && !w
                                .endpoints
                                .iter()
                                .any(|x| x.0 == ip && x.1 == port && x.3 == local)
                        {
                            w.endpoints.push((ip, port, chain.clone(), local));
                        }
                    }
                }
            }
            stack.extend(next.into_iter().rev());
        }
        w
    }

    fn services(&self, out: &mut Vec<ServicePort>) {
        let cluster_ips: HashSet<IpAddr> = self
            .map("cluster-ips")
            .iter()
            .filter_map(|e| scalar(e.key).parse().ok())
            .collect();
        let mut found: Vec<ServicePort> = Vec::new();
        // (address, port, proto, is a node port) -> index in `found`.
        let mut index: HashMap<(IpAddr, u16, Proto, bool), usize> = HashMap::new();

        // Captured addresses: @service-ips and @service-nodeports.
        for (map, nodeport) in [("service-ips", false), ("service-nodeports", true)] {
            for e in self.map(map) {
                let Some(target) = e.data.and_then(jump_target) else {
                    continue;
                };
                if !self.chains.contains_key(target) {
                    continue;
                }
                let Some((address, proto, port)) = self.address_key(e.key, nodeport) else {
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
                    AddressKind::LoadBalancer
                };
                if index.contains_key(&(address, port, proto, nodeport)) {
                    continue;
                }
                index.insert((address, port, proto, nodeport), found.len());
                let w = self.walk(target);
                found.push(ServicePort {
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
                });
            }
        }

        // Reject / drop for lack of (local) endpoints.
        for (map, nodeport) in [
            ("no-endpoint-services", false),
            ("no-endpoint-nodeports", true),
        ] {
            let entry_chain = self.chain_using(map).unwrap_or(map);
            for e in self.map(map) {
                let Some(data) = e.data else { continue };
                let Some((address, proto, port)) = self.address_key(e.key, nodeport) else {
                    continue;
                };
                let mut text = format!(
                    "element {} {} {map} {{ {}",
                    self.family,
                    self.table,
                    key_parts(e.key).join(" . ")
                );
                if let Some(c) = e.comment {
                    text.push_str(&format!(" comment \"{c}\""));
                }
                text.push_str(&format!(" : {} }}", render_expr(data, false)));
                let verdict = if data.get("drop").is_some() {
                    NoEndpoints::DropNoLocal { rule: text }
                } else if jump_target(data).is_some() {
                    NoEndpoints::Reject { rule: text }
                } else {
                    continue;
                };
                match index
                    .get(&(address, port, proto, nodeport))
                    .map(|&i| &mut found[i])
                {
                    Some(s) => {
                        if matches!(verdict, NoEndpoints::DropNoLocal { .. }) {
                            s.local_only = true;
                        }
                        s.no_endpoints = Some(verdict);
                    }
                    None => {
                        let kind = if nodeport {
                            AddressKind::NodePort
                        } else if cluster_ips.contains(&address) {
                            AddressKind::ClusterIp
                        } else {
                            AddressKind::LoadBalancer
                        };
                        index.insert((address, port, proto, nodeport), found.len());
                        found.push(ServicePort {
                            service: e
                                .comment
                                .map(String::from)
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
                        });
                    }
                }
            }
        }

        // loadBalancerSourceRanges: @firewall-ips -> firewall-… chain.
        for e in self.map("firewall-ips") {
            let Some(fw) = e.data.and_then(jump_target) else {
                continue;
            };
            let Some((address, proto, port)) = self.address_key(e.key, false) else {
                continue;
            };
            let (ranges, rule) = self.firewall(fw);
            if let Some(&i) = index.get(&(address, port, proto, false)) {
                found[i].source_ranges = ranges;
                found[i].firewall_rule = rule;
            }
        }

        // Which endpoints run here: those of the service's local-… chain;
        // with a Local policy and no local endpoints, none.
        let mut local: HashMap<(String, Proto), HashSet<(IpAddr, u16)>> = HashMap::new();
        for s in &found {
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
        out.extend(found);
    }

    /// Source ranges and the rule dropping other sources, from
    /// `ip saddr != { … } drop` in the service's firewall chain.
    fn firewall(&self, chain: &str) -> (Vec<String>, Option<String>) {
        for r in self.chains.get(chain).map(Vec::as_slice).unwrap_or(&[]) {
            if !r.expr.iter().any(|e| e.get("drop").is_some()) {
                continue;
            }
            for e in r.expr {
                let Some(m) = e.get("match") else { continue };
                let is_saddr = m
                    .get("left")
                    .and_then(|l| l.get("payload"))
                    .and_then(|p| p.get("field"))
                    .and_then(Value::as_str)
                    == Some("saddr");
                if is_saddr && m.get("op").and_then(Value::as_str) == Some("!=") {
                    let right = m.get("right").unwrap_or(&Value::Null);
                    let ranges = match right.get("set").and_then(Value::as_array) {
                        Some(list) => list.iter().map(|v| render_expr(v, false)).collect(),
                        None => vec![render_expr(right, false)],
                    };
                    let text = format!(
                        "rule {} {} {chain} {}",
                        self.family,
                        self.table,
                        render_rule(r.expr, r.comment, false)
                    );
                    return (ranges, Some(text));
                }
            }
        }
        (Vec::new(), None)
    }

    /// (address, proto, port) from `IP . proto . port` (or `proto . port`
    /// for node ports, with the unspecified address).
    fn address_key(&self, key: &Value, nodeport: bool) -> Option<(IpAddr, Proto, u16)> {
        let parts = key_parts(key);
        match (nodeport, parts.as_slice()) {
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

// --- rendering rules as nft prints them ---------------------------------------

/// A rule's statements as `nft list ruleset` shows them, with the rule
/// comment; counter values only when `counters` (they change between reads,
/// and the text identifies the rule).
fn render_rule(expr: &[Value], comment: Option<&str>, counters: bool) -> String {
    let mut parts: Vec<String> = expr
        .iter()
        .map(|s| render_stmt(s, counters))
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(c) = comment {
        parts.push(format!("comment {}", quote(c)));
    }
    parts.join(" ")
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Keys nft prints without the "meta" prefix.
const BARE_META: [&str; 16] = [
    "iif",
    "oif",
    "iifname",
    "oifname",
    "iiftype",
    "oiftype",
    "iifgroup",
    "oifgroup",
    "skuid",
    "skgid",
    "nftrace",
    "rtclassid",
    "ibrname",
    "obrname",
    "cgroup",
    "ipsec",
];

fn is_binop(v: &Value) -> bool {
    ["&", "|", "^", "<<", ">>"]
        .iter()
        .any(|op| v.get(op).is_some())
}

/// Marks are shown in hex, as nft does.
fn involves_mark(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.iter().any(|(k, inner)| {
            ((k == "meta" || k == "ct") && inner.get("key").and_then(Value::as_str) == Some("mark"))
                || involves_mark(inner)
        }),
        Value::Array(a) => a.iter().any(involves_mark),
        _ => false,
    }
}

fn render_stmt(s: &Value, counters: bool) -> String {
    let Some((kind, body)) = s.as_object().and_then(|o| o.iter().next()) else {
        return compact(s);
    };
    let get = |k: &str| body.get(k);
    let text = |k: &str| get(k).and_then(Value::as_str);
    match kind.as_str() {
        "match" => {
            let left = get("left").unwrap_or(&Value::Null);
            let hex = involves_mark(left);
            let quote_right = left
                .get("meta")
                .and_then(|m| m.get("key"))
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("name"));
            let mut right = render_expr(get("right").unwrap_or(&Value::Null), hex);
            if quote_right && get("right").is_some_and(Value::is_string) {
                right = quote(&right);
            }
            let op = text("op").unwrap_or("==");
            let l = render_expr(left, hex);
            match op {
                "in" => format!("{l} {right}"),
                "==" if !is_binop(left) => format!("{l} {right}"),
                _ => format!("{l} {op} {right}"),
            }
        }
        "counter" => match body {
            Value::Object(_) if counters => format!(
                "counter packets {} bytes {}",
                get("packets").and_then(Value::as_u64).unwrap_or(0),
                get("bytes").and_then(Value::as_u64).unwrap_or(0)
            ),
            Value::String(name) => format!("counter name {name}"),
            _ => "counter".into(),
        },
        "accept" | "drop" | "continue" | "return" | "notrack" => kind.clone(),
        "jump" | "goto" => format!("{kind} {}", text("target").unwrap_or("?")),
        "reject" => match (text("type"), text("expr")) {
            (None, _) | (Some("icmp" | "icmpx" | "icmpv6"), Some("port-unreachable") | None) => {
                "reject".into()
            }
            (Some("tcp reset"), _) => "reject with tcp reset".into(),
            (Some(t), Some(e)) => format!("reject with {t} {e}"),
            (Some(t), None) => format!("reject with {t}"),
        },
        "dnat" | "snat" => {
            let mut out = kind.clone();
            if let Some(f) = text("family") {
                out = format!("{out} {f}");
            }
            out.push_str(" to ");
            let addr = get("addr")
                .map(|a| render_expr(a, false))
                .unwrap_or_default();
            match get("port") {
                Some(p) if addr.contains(':') => {
                    out.push_str(&format!("[{addr}]:{}", render_expr(p, false)))
                }
                Some(p) => out.push_str(&format!("{addr}:{}", render_expr(p, false))),
                None => out.push_str(&addr),
            }
            out + &flags(get("flags"))
        }
        "masquerade" | "redirect" => {
            let mut out = kind.clone();
            if let Some(p) = get("port") {
                out.push_str(&format!(" to :{}", render_expr(p, false)));
            }
            out + &flags(get("flags"))
        }
        "mangle" => {
            let key = get("key").unwrap_or(&Value::Null);
            let hex = involves_mark(key);
            format!(
                "{} set {}",
                render_expr(key, hex),
                render_expr(get("value").unwrap_or(&Value::Null), hex)
            )
        }
        "vmap" | "map" => format!(
            "{} {kind} {}",
            render_expr(get("key").unwrap_or(&Value::Null), false),
            render_expr(get("data").unwrap_or(&Value::Null), false)
        ),
        "xt" => format!(
            "xt {} {}",
            text("type").unwrap_or("?"),
            quote(text("name").unwrap_or("?"))
        ),
        "log" => {
            let mut out = String::from("log");
            if let Some(p) = text("prefix") {
                out.push_str(&format!(" prefix {}", quote(p)));
            }
            if let Some(l) = text("level") {
                out.push_str(&format!(" level {l}"));
            }
            if let Some(g) = get("group") {
                out.push_str(&format!(" group {g}"));
            }
            out
        }
        "limit" => format!(
            "limit rate {}{}/{}",
            if get("inv").and_then(Value::as_bool) == Some(true) {
                "over "
            } else {
                ""
            },
            get("rate")
                .map(|r| render_expr(r, false))
                .unwrap_or_default(),
            text("per").unwrap_or("second")
        ),
        "set" => format!(
            "{} {} {{ {} }}",
            text("op").unwrap_or("update"),
            text("set").unwrap_or("?"),
            render_expr(get("elem").unwrap_or(&Value::Null), false)
        ),
        _ => compact(s),
    }
}

fn flags(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(f)) => format!(" {f}"),
        Some(Value::Array(list)) if !list.is_empty() => {
            format!(" {}", list.iter().map(scalar).collect::<Vec<_>>().join(","))
        }
        _ => String::new(),
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn render_expr(v: &Value, hex: bool) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match (hex, n.as_u64()) {
            (true, Some(x)) => format!("0x{x:08x}"),
            _ => n.to_string(),
        },
        Value::Bool(b) => b.to_string(),
        // Flag lists such as ct state.
        Value::Array(list) => list
            .iter()
            .map(|x| render_expr(x, hex))
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(o) => {
            let Some((kind, body)) = o.iter().next() else {
                return String::new();
            };
            let get = |k: &str| body.get(k);
            let text = |k: &str| get(k).and_then(Value::as_str).unwrap_or("?");
            match kind.as_str() {
                "payload" => match get("protocol") {
                    Some(_) => format!("{} {}", text("protocol"), text("field")),
                    None => format!(
                        "@{},{},{}",
                        text("base"),
                        get("offset").map(|x| x.to_string()).unwrap_or_default(),
                        get("len").map(|x| x.to_string()).unwrap_or_default()
                    ),
                },
                "meta" => {
                    let key = text("key");
                    if BARE_META.contains(&key) {
                        key.to_string()
                    } else {
                        format!("meta {key}")
                    }
                }
                "ct" => match get("dir").and_then(Value::as_str) {
                    Some(dir) => format!("ct {dir} {}", text("key")),
                    None => format!("ct {}", text("key")),
                },
                "fib" => {
                    let flags = match get("flags") {
                        Some(Value::Array(f)) => {
                            f.iter().map(scalar).collect::<Vec<_>>().join(" . ")
                        }
                        Some(f) => scalar(f),
                        None => String::new(),
                    };
                    format!("fib {flags} {}", text("result"))
                }
                "numgen" => {
                    let mut out = format!(
                        "numgen {} mod {}",
                        text("mode"),
                        get("mod").map(|m| m.to_string()).unwrap_or_default()
                    );
                    if let Some(off) = get("offset").and_then(Value::as_u64).filter(|o| *o != 0) {
                        out.push_str(&format!(" offset {off}"));
                    }
                    out
                }
                "concat" => body
                    .as_array()
                    .map(|l| {
                        l.iter()
                            .map(|x| render_expr(x, hex))
                            .collect::<Vec<_>>()
                            .join(" . ")
                    })
                    .unwrap_or_default(),
                "prefix" => format!(
                    "{}/{}",
                    render_expr(get("addr").unwrap_or(&Value::Null), hex),
                    get("len").map(|l| l.to_string()).unwrap_or_default()
                ),
                "range" => match body.as_array().map(Vec::as_slice) {
                    Some([a, b]) => format!("{}-{}", render_expr(a, hex), render_expr(b, hex)),
                    _ => compact(v),
                },
                "set" => {
                    let items: Vec<String> = body
                        .as_array()
                        .map(|l| {
                            l.iter()
                                .map(|e| match e.as_array().map(Vec::as_slice) {
                                    Some([k, d]) => format!(
                                        "{} : {}",
                                        render_expr(k, hex),
                                        render_expr(d, false)
                                    ),
                                    _ => render_expr(e, hex),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    format!("{{ {} }}", items.join(", "))
                }
                "elem" => {
                    let mut out = render_expr(get("val").unwrap_or(&Value::Null), hex);
                    if let Some(c) = get("comment").and_then(Value::as_str) {
                        out.push_str(&format!(" comment {}", quote(c)));
                    }
                    out
                }
                "&" | "|" | "^" | "<<" | ">>" => match body.as_array().map(Vec::as_slice) {
                    Some([a, b]) => {
                        format!("{} {kind} {}", render_expr(a, hex), render_expr(b, hex))
                    }
                    _ => compact(v),
                },
                "map" => format!(
                    "{} map {}",
                    render_expr(get("key").unwrap_or(&Value::Null), hex),
                    render_expr(get("data").unwrap_or(&Value::Null), hex)
                ),
                "accept" | "drop" | "continue" | "return" => kind.clone(),
                "jump" | "goto" => format!("{kind} {}", text("target")),
                _ => compact(v),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFT: &str = include_str!("testdata/nftables.json");
    const NFT_BEFORE: &str = include_str!("testdata/nftables-before.json");
    const NFT_TEXT: &str = include_str!("testdata/nftables.txt");
    const IPT_NFT_JSON: &str = include_str!("testdata/iptables-nft.nft.json");

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
            "lab/web:http LoadBalancer 203.0.113.10:80/tcp",
            "lab/web:http NodePort 0.0.0.0:30080/tcp",
            "lab/empty:http ClusterIp 10.96.0.11:80/tcp",
            "lab/empty:http LoadBalancer 203.0.113.11:80/tcp",
            "lab/empty:http NodePort 0.0.0.0:30081/tcp",
            "lab/local-only:http ClusterIp 10.96.0.12:80/tcp",
            "lab/local-only:http LoadBalancer 203.0.113.12:80/tcp",
            "lab/local-only:http NodePort 0.0.0.0:30082/tcp",
            "lab/restricted:https ClusterIp 10.96.0.13:443/tcp",
            "lab/restricted:https LoadBalancer 203.0.113.13:443/tcp",
            "lab/restricted:https NodePort 0.0.0.0:30443/tcp",
            "lab/nodeport ClusterIp 10.96.0.14:9090/tcp",
            "lab/nodeport NodePort 0.0.0.0:30090/tcp",
            "lab/dns:dns ClusterIp 10.96.0.15:53/udp",
            "lab/dns:dns LoadBalancer 203.0.113.14:53/udp",
        ];
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn load_balancer_with_a_local_and_a_remote_endpoint() {
        let rs = parsed();
        let lb = find(&rs, "lab/web:http", AddressKind::LoadBalancer);
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
            ("lab/web:http", AddressKind::LoadBalancer)
        );
    }

    #[test]
    fn no_endpoints_rejects_through_the_reject_chain() {
        let rs = parsed();
        let lb = find(&rs, "lab/empty:http", AddressKind::LoadBalancer);
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
        let lb = find(&rs, "lab/local-only:http", AddressKind::LoadBalancer);
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
            super::super::counter_deltas(&before.filter_rules, &after.filter_rules)
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

    /// The rendering matches what `nft list ruleset` printed for the same
    /// rules (counter values included), rule by rule, by handle.
    #[test]
    fn rules_render_as_nft_prints_them() {
        let mut printed: HashMap<(String, u64), String> = HashMap::new();
        let mut table = String::new();
        for line in NFT_TEXT.lines() {
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("table ") {
                table = rest.split(" {").next().unwrap().to_string();
            } else if let Some((rule, handle)) = l.rsplit_once(" # handle ")
                && !["chain ", "set ", "map "]
                    .iter()
                    .any(|p| rule.starts_with(p))
            {
                printed.insert((table.clone(), handle.parse().unwrap()), rule.to_string());
            }
        }
        let doc: Value = serde_json::from_str(NFT).unwrap();
        let mut compared = 0;
        for item in doc["nftables"].as_array().unwrap() {
            let Some(r) = item.get("rule") else { continue };
            let table = format!(
                "{} {}",
                r["family"].as_str().unwrap(),
                r["table"].as_str().unwrap()
            );
            if table == "ip filter" {
                continue; // nft prints nothing for xt matches; we name them
            }
            let want = &printed[&(table, r["handle"].as_u64().unwrap())];
            let got = render_rule(
                r["expr"].as_array().unwrap(),
                r.get("comment").and_then(Value::as_str),
                true,
            );
            assert_eq!(&got, want);
            compared += 1;
        }
        assert!(compared > 60, "{compared}");
    }

    #[test]
    fn named_priorities() {
        let p = |s: &str| priority(&Value::String(s.into()), Some("ip"));
        assert_eq!(p("dstnat - 10"), Some(-110));
        assert_eq!(p("filter"), Some(0));
        assert_eq!(p("srcnat+5"), Some(105));
        assert_eq!(p("-42"), Some(-42));
        assert_eq!(p("bogus"), None);
        assert_eq!(
            priority(&Value::String("filter".into()), Some("bridge")),
            Some(-200)
        );
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
        assert_eq!(
            (lb.kind, lb.service.as_str()),
            (AddressKind::LoadBalancer, "ns/v6:web")
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

    #[test]
    fn malformed_input_is_an_error() {
        let cases: &[(&str, &str)] = &[
            ("", "not valid JSON"),
            ("garbage", "not valid JSON"),
            ("{\"nftables\": [", "not valid JSON"),
            ("[]", "expected an object with an \"nftables\" array"),
            (
                "{\"nftables\": {}}",
                "expected an object with an \"nftables\" array",
            ),
            (
                "{\"something\": []}",
                "expected an object with an \"nftables\" array",
            ),
            (
                "{\"nftables\": [42]}",
                "nftables[0]: expected an object with one key",
            ),
            (
                "{\"nftables\": [{\"a\": {}, \"b\": {}}]}",
                "expected an object with one key",
            ),
            (
                "{\"nftables\": [{\"rule\": {\"family\": \"ip\", \"table\": \"t\", \"chain\": \"c\"}}]}",
                "without an \"expr\" array",
            ),
            (
                "{\"nftables\": [{\"rule\": {\"family\": \"ip\", \"table\": \"t\", \"expr\": []}}]}",
                "without a string \"chain\"",
            ),
            ("{\"nftables\": [{\"rule\": 7}]}", "rule is not an object"),
            (
                "{\"nftables\": [{\"chain\": {\"family\": \"ip\", \"table\": \"t\", \"name\": \"c\", \"hook\": \"input\", \"prio\": \"sideways\"}}]}",
                "unknown priority",
            ),
            (
                "{\"nftables\": [{\"map\": {\"family\": \"ip\", \"table\": \"t\", \"name\": \"m\", \"elem\": 3}}]}",
                "\"elem\" is not an array",
            ),
        ];
        for (json, msg) in cases {
            let e = parse_nft_json(json).expect_err(json);
            assert!(e.message.contains(msg), "{json:?}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
        let e = parse_nft_json("{\n\"nftables\": [\n{\"table\": }]}").unwrap_err();
        assert_eq!(e.line, Some(3));
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

    #[test]
    fn every_truncation_of_a_real_capture_is_an_error() {
        for cut in (0..NFT.len() - 2).step_by(211) {
            assert!(parse_nft_json(&NFT[..cut]).is_err(), "cut at {cut}");
        }
    }
}
