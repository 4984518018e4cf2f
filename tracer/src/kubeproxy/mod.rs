//! kube-proxy's rules on this node, read without changing anything.
//!
//! lbpath sees a packet to a LoadBalancer IP get DNATed to a pod, or vanish;
//! this module says which Service and which kube-proxy rule did it. It reads
//! what the node's own tools print (`iptables-save -c` in both variants,
//! `nft -j list ruleset`), and turns it into:
//!
//! - [`ServicePort`]s: every address kube-proxy captures (ClusterIP,
//!   externalIP, LoadBalancer IP, NodePort), the chain it enters and the
//!   endpoints reachable from there, or the rule that rejects or drops it
//!   for lack of (local) endpoints;
//! - [`FilterRule`]s: every DROP / REJECT of the node, kube-proxy's or not,
//!   with counters where the rule has them, so a drop can be pinned on the
//!   rule whose counter moved ([`counter_deltas`]);
//! - [`BaseChain`]s: where each table hooks into netfilter, and at which
//!   priority.
//!
//! Only kube-proxy's naming is relied on (KUBE-* chains and their comments in
//! iptables mode; table `kube-proxy` and its maps in nftables mode), never
//! one cluster's layout, and several kube-proxy generations are understood.

mod iptables;
mod nftables;

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

pub use iptables::parse_iptables_save;
pub use nftables::{parse_nft_json, read_nft_json};

/// Where a ruleset came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// iptables rules held by nf_tables (`iptables-nft-save`).
    IptablesNft,
    /// iptables rules held by the legacy x_tables (`iptables-legacy-save`).
    IptablesLegacy,
    /// Native nftables (`nft -j list ruleset`), kube-proxy's nftables mode.
    Nftables,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::IptablesNft => "iptables-nft",
            Mode::IptablesLegacy => "iptables-legacy",
            Mode::Nftables => "nftables",
        })
    }
}

/// The protocols a Service port can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// From the IP header's protocol number; `None` for anything a Service
    /// cannot carry.
    pub fn from_ip_proto(number: u8) -> Option<Proto> {
        match number {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            132 => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub fn ip_proto(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = ParseError;

    /// "tcp", "udp", "sctp" in any case (as iptables and nft print them),
    /// or the protocol number.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" | "6" => Ok(Proto::Tcp),
            "udp" | "17" => Ok(Proto::Udp),
            "sctp" | "132" => Ok(Proto::Sctp),
            _ => Err(ParseError::new(
                None,
                format!("unknown protocol {s:?} (expected tcp, udp or sctp)"),
            )),
        }
    }
}

/// How a Service address is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressKind {
    LoadBalancer,
    ExternalIp,
    /// A LoadBalancer IP or an externalIP: kube-proxy's nftables rules
    /// capture both alike, and only loadBalancerSourceRanges (which apply
    /// to LoadBalancer IPs alone) tell them apart.
    External,
    ClusterIp,
    /// Any local address of the node, at the node port.
    NodePort,
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // kube-proxy's own words in its rule comments.
        f.write_str(match self {
            AddressKind::LoadBalancer => "loadbalancer IP",
            AddressKind::ExternalIp => "external IP",
            AddressKind::External => "loadbalancer or external IP",
            AddressKind::ClusterIp => "cluster IP",
            AddressKind::NodePort => "nodePort",
        })
    }
}

/// One ruleset as one tool printed it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ruleset {
    pub mode: Mode,
    pub services: Vec<ServicePort>,
    pub filter_rules: Vec<FilterRule>,
    pub base_chains: Vec<BaseChain>,
}

/// One address of one Service port, as kube-proxy set it up on this node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePort {
    /// "ns/name:portname", or "ns/name" when the port is unnamed.
    pub service: String,
    /// For NodePort: unspecified (0.0.0.0 / ::), as it matches every local address.
    pub address: IpAddr,
    pub port: u16,
    pub proto: Proto,
    /// iptables mode names the kind in its comments; nftables mode
    /// captures LoadBalancer IPs and externalIPs alike, and tells them
    /// apart only through loadBalancerSourceRanges (see
    /// [`AddressKind::External`]).
    pub kind: AddressKind,
    /// The chain the address jumps to (KUBE-EXT-…, KUBE-FW-…, KUBE-SVC-…,
    /// external-…, service-…). For an address kube-proxy only rejects or
    /// drops, the chain holding that rule (filter KUBE-SERVICES /
    /// KUBE-EXTERNAL-SERVICES, or service-endpoints-check /
    /// nodeport-endpoints-check).
    pub entry_chain: String,
    /// Every endpoint reachable from the entry chain, including the ones only
    /// pod and host traffic may reach when externalTrafficPolicy is Local.
    pub endpoints: Vec<Endpoint>,
    /// Only endpoints on this node serve this address for outside clients
    /// (externalTrafficPolicy=Local, or internalTrafficPolicy=Local for a
    /// ClusterIP): KUBE-SVL / local-… chains, or a "no local endpoints" drop.
    pub local_only: bool,
    /// Set when kube-proxy rejects/drops this address for lack of (local) endpoints.
    pub no_endpoints: Option<NoEndpoints>,
    /// loadBalancerSourceRanges in force for this address (KUBE-FW-… /
    /// firewall-…); empty when there is none.
    pub source_ranges: Vec<String>,
    /// The rule that drops sources outside [`Self::source_ranges`].
    pub firewall_rule: Option<String>,
    /// The base chains whose traffic meets that rule (iptables' filter
    /// INPUT/FORWARD/OUTPUT, nftables' filter-*-pre-dnat): a drop in their
    /// band may be the firewall's.
    pub firewall_chains: Vec<ChainRef>,
}

/// A chain as the netfilter plan names base chains: table "family name"
/// ("ip filter", "ip kube-proxy") and chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ChainRef {
    pub table: String,
    pub chain: String,
}

/// A pod (or other backend) a Service address can be DNATed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// The chain holding the DNAT rule (KUBE-SEP-…, endpoint-…).
    pub chain: String,
    /// Whether the endpoint runs on this node, when the rules tell: they do
    /// only for services with a Local traffic policy.
    pub local: Option<bool>,
}

/// Why kube-proxy turns traffic to an address away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "verdict")]
pub enum NoEndpoints {
    /// The Service has no endpoints at all: REJECT ("has no endpoints").
    Reject { rule: String },
    /// Traffic policy Local and no endpoint on this node: DROP ("has no
    /// local endpoints"). Pod and host traffic may still get through.
    DropNoLocal { rule: String },
}

impl NoEndpoints {
    pub fn rule(&self) -> &str {
        match self {
            NoEndpoints::Reject { rule } | NoEndpoints::DropNoLocal { rule } => rule,
        }
    }
}

/// A DROP or REJECT of the node (any table, kube-proxy's or not). A chain
/// policy of drop is one too, with rule text "-P CHAIN DROP" (iptables) or
/// "policy drop" (nftables).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct FilterRule {
    /// "ip", "ip6", "inet", …
    pub family: String,
    pub table: String,
    pub chain: String,
    /// As a user would see it: the iptables-save line (without counters) or
    /// the nft rule text (without counter values).
    pub rule: String,
    /// "DROP" or "REJECT".
    pub verdict: String,
    pub comment: Option<String>,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    /// nft rule handle, when known (stable identity across reads).
    pub handle: Option<u64>,
}

/// A chain attached to a netfilter hook.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct BaseChain {
    pub family: String,
    pub table: String,
    pub chain: String,
    /// prerouting | input | forward | output | postrouting
    pub hook: String,
    pub priority: i32,
    /// "accept" / "drop" (lower case whatever the tool printed).
    pub policy: Option<String>,
}

/// Input a parser could not understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line of the input, when it is known.
    pub line: Option<usize>,
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(line: Option<usize>, message: impl Into<String>) -> Self {
        ParseError {
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever the message held.
        let msg = self.message.replace(['\n', '\r'], " ");
        match self.line {
            Some(line) => write!(f, "line {line}: {msg}"),
            None => f.write_str(&msg),
        }
    }
}

impl std::error::Error for ParseError {}

impl Ruleset {
    pub(crate) fn empty(mode: Mode) -> Self {
        Ruleset {
            mode,
            services: Vec::new(),
            filter_rules: Vec::new(),
            base_chains: Vec::new(),
        }
    }

    /// The Service addresses a packet to `ip:port` can hit: exact address
    /// matches first, then NodePorts at that port, which match any address of
    /// the family (kube-proxy applies them to every local address, and which
    /// addresses are local is not in the rules). Port 0 means any port; it
    /// brings NodePorts in only when `ip` is unspecified (0.0.0.0 / ::).
    pub fn services_for(&self, ip: IpAddr, port: u16, proto: Proto) -> Vec<&ServicePort> {
        let mut out: Vec<&ServicePort> = self
            .services
            .iter()
            .filter(|s| s.proto == proto && s.kind != AddressKind::NodePort && s.address == ip)
            .filter(|s| port == 0 || s.port == port)
            .collect();
        out.extend(self.services.iter().filter(|s| {
            s.proto == proto
                && s.kind == AddressKind::NodePort
                && same_family(s.address, ip)
                && (s.port == port || (port == 0 && ip.is_unspecified()))
        }));
        out
    }

    /// Every Service address that can DNAT to `ip:port` (port 0: any port).
    /// Several addresses of one Service share endpoints; LoadBalancer entries
    /// come first, then externalIP, NodePort and ClusterIP ones.
    pub fn endpoint_owners(
        &self,
        ip: IpAddr,
        port: u16,
        proto: Proto,
    ) -> Vec<(&ServicePort, &Endpoint)> {
        let mut out: Vec<(&ServicePort, &Endpoint)> = self
            .services
            .iter()
            .filter(|s| s.proto == proto)
            .flat_map(|s| {
                s.endpoints
                    .iter()
                    .filter(move |e| e.ip == ip && (port == 0 || e.port == port))
                    .map(move |e| (s, e))
            })
            .collect();
        // Stable: the rules' order is kept within a kind.
        out.sort_by_key(|(s, _)| kind_rank(s.kind));
        out
    }

    /// The Service address most likely to have DNATed a packet to `ip:port`;
    /// see [`Ruleset::endpoint_owners`].
    pub fn endpoint_owner(
        &self,
        ip: IpAddr,
        port: u16,
        proto: Proto,
    ) -> Option<(&ServicePort, &Endpoint)> {
        self.endpoint_owners(ip, port, proto).into_iter().next()
    }
}

fn kind_rank(kind: AddressKind) -> u8 {
    match kind {
        AddressKind::LoadBalancer => 0,
        AddressKind::External => 1,
        AddressKind::ExternalIp => 1,
        AddressKind::NodePort => 2,
        AddressKind::ClusterIp => 3,
    }
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

pub(crate) fn unspecified(ipv6: bool) -> IpAddr {
    if ipv6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

/// What [`read_node`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeRules {
    pub rulesets: Vec<Ruleset>,
    /// What looks wrong or is missing, when it matters for tracing.
    pub problems: Vec<String>,
    /// Why the rules above may be incomplete (a tool failed, its output
    /// could not be parsed, lines were left out). While this is not empty,
    /// "no rule for X" is not something lbpath can know.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub degraded: Vec<String>,
    /// kube-proxy's IPVS mode: the kernel's virtual services and the sets
    /// naming them (empty when IPVS is not in use).
    pub ipvs: crate::ipvs::IpvsState,
}

impl NodeRules {
    /// One line saying why the rules may be incomplete, if they may be.
    pub fn degraded_reason(&self) -> Option<String> {
        match self.degraded.as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            [first, rest @ ..] => Some(format!("{first} (and {} more)", rest.len())),
        }
    }
}

/// Reads the rules of the caller's network namespace (of the calling
/// thread, so it works after `setns`), never changing anything:
/// `iptables-nft-save -c` (or `iptables-save -c` when that is the nf_tables
/// variant), `iptables-legacy-save -c` (only when legacy tables exist, so no
/// kernel module gets loaded), the same for ip6tables, and
/// `nft -j list ruleset`. Missing tools and empty rulesets are not errors.
///
/// Each rule and base chain is reported once: iptables-nft's tables are
/// visible to both tools, so their rules come from iptables-nft-save
/// (readable, with counters) and their base chains from nft (what the kernel
/// really has; iptables-nft-save also lists built-in chains never created).
pub async fn read_node() -> NodeRules {
    let mut problems = Vec::new();
    let mut degraded = Vec::new();
    let mut iptables = Vec::new();
    let mut iptables_nft_found = false;

    for (family, prefix) in [("ip", "iptables"), ("ip6", "ip6tables")] {
        if let Some(tool) = find_save_tool(prefix, Variant::Nft).await {
            iptables_nft_found = true;
            iptables.extend(read_iptables(&tool, family, Mode::IptablesNft, &mut degraded).await);
        }
        // Legacy: only where the kernel already has legacy tables.
        let names = legacy_table_names(family);
        if !names.is_empty() {
            match find_save_tool(prefix, Variant::Legacy).await {
                Some(tool) => iptables.extend(read_iptables(&tool, family, Mode::IptablesLegacy, &mut degraded).await),
                None => degraded.push(format!(
                    "legacy {prefix} tables exist ({}) but no {prefix}-legacy-save was found: their rules were not read",
                    names.join(", ")
                )),
            }
        }
    }

    let nft = match find_tool("nft") {
        // Parsed as nft prints it: on a big node the JSON is tens of MB.
        Some(nft) => match run_tool_reading(&nft, &["-j", "list", "ruleset"], TOOL_LIMIT, |out| {
            read_nft_json(out)
        })
        .await
        {
            Ok(Ok(rs)) => rs,
            Ok(Err(e)) => {
                degraded.push(format!("cannot parse `nft -j list ruleset` output: {e}"));
                None
            }
            Err(e) => {
                degraded.push(format!("nft list ruleset: {e}"));
                None
            }
        },
        None => {
            problems.push("nft not found: nftables rules (kube-proxy's nftables mode, other firewalls) were not read".into());
            if !iptables_nft_found {
                degraded.push(
                    "neither nft nor iptables-nft-save found: nf_tables rules were not read".into(),
                );
            }
            None
        }
    };

    let ipvs = read_ipvs(&mut problems, &mut degraded).await;
    let mut rules = NodeRules {
        rulesets: merge_views(iptables, nft, &mut problems),
        problems,
        degraded,
        ipvs,
    };
    note_mixed_modes(&mut rules);
    sanitize(&mut rules);
    rules
}

/// The IPVS state, when the kernel has IPVS. Virtual services that could
/// not be read make the rules degraded (a missing one is then unknown, not
/// a finding); sets or nat rules that could not be read only lose the
/// Services' names and kinds, a problem.
async fn read_ipvs(
    problems: &mut Vec<String>,
    degraded: &mut Vec<String>,
) -> crate::ipvs::IpvsState {
    // Reading runs `ipset save` and `iptables-save` and waits for them: on
    // a thread of its own, not the event loop's. A new thread starts in
    // its creator's network namespace, so this still reads the caller's.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(crate::ipvs::IpvsState::read());
    });
    let mut st = match rx.await {
        Ok(st) => st,
        Err(_) => {
            degraded.push("IPVS could not be read: the reading thread failed".into());
            return crate::ipvs::IpvsState::default();
        }
    };
    for p in &st.problems {
        if st.services_unread.contains(p) {
            degraded.push(p.clone());
        } else if !st.services.is_empty() {
            problems.push(format!("kube-proxy IPVS mode: {p}"));
        }
    }
    use crate::escape::sanitize as s;
    for svc in &mut st.services {
        if let Some(n) = &mut svc.service_name {
            s(n);
        }
        s(&mut svc.scheduler);
        svc.source_ranges.iter_mut().for_each(s);
    }
    st
}

/// Every string of the rules is untrusted (comments, chain and rule text
/// are whoever-wrote-them's): escaped once, here, where they enter.
fn sanitize(rules: &mut NodeRules) {
    use crate::escape::sanitize as s;
    rules
        .problems
        .iter_mut()
        .chain(&mut rules.degraded)
        .for_each(s);
    for rs in &mut rules.rulesets {
        for svc in &mut rs.services {
            s(&mut svc.service);
            s(&mut svc.entry_chain);
            for e in &mut svc.endpoints {
                s(&mut e.chain);
            }
            if let Some(NoEndpoints::Reject { rule } | NoEndpoints::DropNoLocal { rule }) =
                &mut svc.no_endpoints
            {
                s(rule);
            }
            svc.source_ranges.iter_mut().for_each(s);
            if let Some(r) = &mut svc.firewall_rule {
                s(r);
            }
            for c in &mut svc.firewall_chains {
                s(&mut c.table);
                s(&mut c.chain);
            }
        }
        for r in &mut rs.filter_rules {
            for f in [
                &mut r.family,
                &mut r.table,
                &mut r.chain,
                &mut r.rule,
                &mut r.verdict,
            ] {
                s(f);
            }
            if let Some(c) = &mut r.comment {
                s(c);
            }
        }
        rs.base_chains.iter_mut().for_each(sanitize_chain);
    }
}

fn sanitize_chain(c: &mut BaseChain) {
    use crate::escape::sanitize as s;
    for f in [&mut c.family, &mut c.table, &mut c.chain, &mut c.hook] {
        s(f);
    }
    if let Some(p) = &mut c.policy {
        s(p);
    }
}

/// See [`read_node`]: keeps each rule and base chain in one view only.
fn merge_views(
    mut iptables: Vec<Ruleset>,
    nft: Option<Ruleset>,
    problems: &mut Vec<String>,
) -> Vec<Ruleset> {
    if let Some(mut nft) = nft {
        let covered: Vec<(String, String)> = iptables
            .iter()
            .filter(|r| r.mode == Mode::IptablesNft)
            .flat_map(tables_of)
            .collect();
        let missing: Vec<String> = iptables_nft_tables(&nft)
            .into_iter()
            .filter(|t| !covered.contains(t))
            .map(|(f, t)| format!("{f} {t}"))
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "iptables-nft tables ({}) could not be read with iptables-nft-save; \
                 their rules are shown as nft sees them and kube-proxy services in them are not decoded",
                missing.join(", ")
            ));
        }
        drop_covered_filter_rules(&mut nft, &covered);
        for r in iptables.iter_mut().filter(|r| r.mode == Mode::IptablesNft) {
            r.base_chains.clear();
        }
        iptables.push(nft);
    }
    iptables.retain(|rs| {
        !(rs.services.is_empty() && rs.filter_rules.is_empty() && rs.base_chains.is_empty())
    });
    iptables
}

/// (family, table) pairs a ruleset has rules or chains in.
fn tables_of(rs: &Ruleset) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let pairs = rs
        .base_chains
        .iter()
        .map(|c| (&c.family, &c.table))
        .chain(rs.filter_rules.iter().map(|r| (&r.family, &r.table)));
    for (f, t) in pairs {
        let key = (f.clone(), t.clone());
        if !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

/// Tables of an nft ruleset that iptables-nft manages (iptables' table
/// names with its upper-case built-in chains).
fn iptables_nft_tables(rs: &Ruleset) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for c in &rs.base_chains {
        let key = (c.family.clone(), c.table.clone());
        if iptables::is_iptables_nft_chain(&c.family, &c.table, &c.chain) && !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

fn drop_covered_filter_rules(rs: &mut Ruleset, covered: &[(String, String)]) {
    rs.filter_rules
        .retain(|r| !covered.iter().any(|(f, t)| *f == r.family && *t == r.table));
}

/// Rules of two generations side by side usually mean a mode switch left
/// stale rules behind; both are traversed by packets.
fn note_mixed_modes(rules: &mut NodeRules) {
    let with_services: Vec<Mode> = rules
        .rulesets
        .iter()
        .filter(|r| !r.services.is_empty())
        .map(|r| r.mode)
        .collect();
    let mut modes: Vec<Mode> = Vec::new();
    for m in with_services {
        if !modes.contains(&m) {
            modes.push(m);
        }
    }
    if modes.len() > 1 {
        let names: Vec<String> = modes.iter().map(|m| m.to_string()).collect();
        rules.problems.push(format!(
            "kube-proxy service rules found in more than one backend ({}); stale rules from an earlier proxy mode also act on packets",
            names.join(", ")
        ));
    }
}

async fn read_iptables(
    tool: &Path,
    family: &str,
    mode: Mode,
    degraded: &mut Vec<String>,
) -> Option<Ruleset> {
    match run_tool(tool, &["-c"]).await {
        Ok(out) => match iptables::parse_family(&out, mode, family) {
            Ok((rs, skipped)) => {
                if let Some(first) = skipped.first() {
                    degraded.push(format!(
                        "{} line{} of `{} -c` could not be read and {} left out ({first})",
                        skipped.len(),
                        if skipped.len() == 1 { "" } else { "s" },
                        tool.display(),
                        if skipped.len() == 1 { "was" } else { "were" },
                    ));
                }
                Some(rs)
            }
            Err(e) => {
                degraded.push(format!("cannot parse `{} -c` output: {e}", tool.display()));
                None
            }
        },
        Err(e) => {
            degraded.push(format!("{} -c: {e}", tool.display()));
            None
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Nft,
    Legacy,
}

/// `iptables-nft-save` / `iptables-legacy-save`, else the plain
/// `iptables-save` when its `--version` says it is that variant.
async fn find_save_tool(prefix: &str, variant: Variant) -> Option<PathBuf> {
    let suffix = if variant == Variant::Nft {
        "nft"
    } else {
        "legacy"
    };
    if let Some(t) = find_tool(&format!("{prefix}-{suffix}-save")) {
        return Some(t);
    }
    let plain = find_tool(&format!("{prefix}-save"))?;
    let version = run_tool(&plain, &["--version"]).await.ok()?;
    // "iptables-save v1.8.9 (nf_tables)" / "(legacy)"; before 1.8 there was
    // no nf_tables variant and no marker.
    let is_nft = version.contains("nf_tables");
    (is_nft == (variant == Variant::Nft)).then_some(plain)
}

/// Legacy tables present in the calling thread's namespace.
fn legacy_table_names(family: &str) -> Vec<String> {
    let file = if family == "ip6" {
        "ip6_tables_names"
    } else {
        "ip_tables_names"
    };
    for dir in ["/proc/thread-self/net", "/proc/self/net", "/proc/net"] {
        if let Ok(text) = std::fs::read_to_string(format!("{dir}/{file}")) {
            return text.split_whitespace().map(String::from).collect();
        }
    }
    Vec::new()
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // sudo and service managers often leave the sbin directories out.
    let extra = ["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The base chains of the caller's network namespace, alone: `nft -j list
/// chains` answers at once where the whole ruleset takes seconds (thousands
/// of Services), so the hooks, placed around these chains, need not wait
/// for the rest. They are the ones [`read_node`] keeps (nft's view). None
/// when nft is missing or its answer unusable: only the full read tells.
pub async fn read_base_chains() -> Option<Vec<BaseChain>> {
    let nft = find_tool("nft")?;
    let read = run_tool_reading(&nft, &["-j", "list", "chains"], TOOL_LIMIT, read_nft_json);
    let Ok(Ok(rs)) = read.await else {
        return None;
    };
    let mut chains = rs.map(|r| r.base_chains).unwrap_or_default();
    chains.iter_mut().for_each(sanitize_chain);
    Some(chains)
}

/// Runs a read-only tool with a time limit (a wedged tool must not hang
/// lbpath); its output is its stdout.
async fn run_tool(tool: &Path, args: &[&str]) -> Result<String, String> {
    run_tool_within(tool, args, TOOL_LIMIT).await
}

/// How long a read-only tool may take.
const TOOL_LIMIT: Duration = Duration::from_secs(20);

/// Runs a read-only tool like [`run_tool`], but hands its stdout to `read`
/// (on a blocking thread) while it runs instead of collecting it. `read`'s
/// result counts only when the tool succeeds.
async fn run_tool_reading<T: Send + 'static>(
    tool: &Path,
    args: &[&str],
    limit: Duration,
    read: impl FnOnce(std::fs::File) -> T + Send + 'static,
) -> Result<T, String> {
    let mut child = tokio::process::Command::new(tool)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropped at the time limit: killed, so `read` sees the pipe close.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or("no stdout pipe")?
        .into_owned_fd()
        .map_err(|e| format!("its output: {e}"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or("no stderr pipe")?
        .into_owned_fd()
        .map_err(|e| format!("its errors: {e}"))?;
    let reader = tokio::task::spawn_blocking(move || read(std::fs::File::from(stdout)));
    // stderr drained meanwhile, so neither pipe can block the tool.
    let errors = tokio::task::spawn_blocking(move || {
        let mut err = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::fs::File::from(stderr), &mut err);
        err
    });
    let run = async move {
        let status = child.wait().await;
        (status, errors.await.unwrap_or_default(), reader.await)
    };
    let (status, err, value) = tokio::time::timeout(limit, run)
        .await
        .map_err(|_| format!("no answer within {:.1} s", limit.as_secs_f64()))?;
    let status = status.map_err(|e| format!("wait failed: {e}"))?;
    if !status.success() {
        return Err(tool_failed(status, &err));
    }
    value.map_err(|_| "reading its output: the thread panicked".to_string())
}

/// A failed tool's exit status and the first line it wrote to stderr.
fn tool_failed(status: std::process::ExitStatus, stderr: &[u8]) -> String {
    let msg = String::from_utf8_lossy(stderr);
    let first = msg
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    format!(
        "failed ({status}){}{first}",
        if first.is_empty() { "" } else { ": " }
    )
}

async fn run_tool_within(tool: &Path, args: &[&str], limit: Duration) -> Result<String, String> {
    let child = tokio::process::Command::new(tool)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropped at the time limit: killed, never left behind.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run: {e}"))?;
    // output() drains both pipes at once, so a large ruleset cannot block it.
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("wait failed: {e}")),
        Err(_) => return Err(format!("no answer within {:.1} s", limit.as_secs_f64())),
    };
    if !out.status.success() {
        return Err(tool_failed(out.status, &out.stderr));
    }
    // Rule comments may hold any bytes; they are escaped before display.
    // Valid UTF-8 (the usual case) is taken as is: no second copy of what
    // can be megabytes.
    Ok(String::from_utf8(out.stdout)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Rules whose packet counter grew between two reads, with the growth.
///
/// Rules are matched by (family, table, chain) and then by nft handle when
/// both reads have it and the text agrees, else by rule text (the n-th
/// identical rule of a chain matching the n-th). A rule that is new, or
/// whose counter went down (it was replaced), counts from zero.
pub fn counter_deltas(before: &[FilterRule], after: &[FilterRule]) -> Vec<(FilterRule, u64)> {
    type Key<'a> = (&'a str, &'a str, &'a str, &'a str);
    fn key(r: &FilterRule) -> Key<'_> {
        (&r.family, &r.table, &r.chain, &r.rule)
    }
    let mut by_text: HashMap<Key, Vec<&FilterRule>> = HashMap::new();
    for r in before {
        by_text.entry(key(r)).or_default().push(r);
    }
    let mut seen: HashMap<Key, usize> = HashMap::new();
    let mut out = Vec::new();
    for r in after {
        let Some(now) = r.packets else { continue };
        let k = key(r);
        let nth = seen.entry(k).or_default();
        let candidates = by_text.get(&k).map(Vec::as_slice).unwrap_or(&[]);
        let earlier = match r.handle {
            Some(h) => candidates
                .iter()
                .find(|b| b.handle == Some(h))
                .or_else(|| candidates.get(*nth)),
            None => candidates.get(*nth),
        };
        *nth += 1;
        let then = earlier.and_then(|b| b.packets).unwrap_or(0);
        let growth = if now >= then { now - then } else { now };
        if growth > 0 {
            out.push((r.clone(), growth));
        }
    }
    out
}

/// Endpoints reached from an entry chain, once each (a chain can reach the
/// same endpoint through several paths: SVC and SVL, affinity rules).
pub(crate) fn dedup_endpoints(found: &[(IpAddr, u16, String, bool)]) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = Vec::new();
    for (ip, port, chain, _) in found {
        if !out.iter().any(|e| e.ip == *ip && e.port == *port) {
            out.push(Endpoint {
                ip: *ip,
                port: *port,
                chain: chain.clone(),
                local: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn rule(chain: &str, text: &str, packets: Option<u64>, handle: Option<u64>) -> FilterRule {
        FilterRule {
            family: "ip".into(),
            table: "filter".into(),
            chain: chain.into(),
            rule: text.into(),
            verdict: "DROP".into(),
            comment: None,
            packets,
            bytes: packets.map(|p| p * 60),
            handle,
        }
    }

    #[test]
    fn proto_names_and_numbers() {
        assert_eq!("TCP".parse::<Proto>().unwrap(), Proto::Tcp);
        assert_eq!("132".parse::<Proto>().unwrap(), Proto::Sctp);
        assert!("icmp".parse::<Proto>().is_err());
        for p in [Proto::Tcp, Proto::Udp, Proto::Sctp] {
            assert_eq!(Proto::from_ip_proto(p.ip_proto()), Some(p));
            assert_eq!(p.to_string().parse::<Proto>().unwrap(), p);
        }
        assert_eq!(Proto::from_ip_proto(1), None);
    }

    #[test]
    fn parse_error_displays_on_one_line() {
        let e = ParseError::new(Some(3), "bad\nthing");
        assert_eq!(e.to_string(), "line 3: bad thing");
        assert_eq!(ParseError::new(None, "x").to_string(), "x");
    }

    #[test]
    fn deltas_by_text_handle_and_occurrence() {
        let before = vec![
            rule("FORWARD", "-A FORWARD -j DROP", Some(5), None),
            rule("FORWARD", "-A FORWARD -j DROP", Some(7), None),
            rule("X", "drop", Some(10), Some(4)),
            rule("X", "drop", Some(1), Some(9)),
            rule("Y", "-A Y -j DROP", Some(100), None),
        ];
        let after = vec![
            rule("FORWARD", "-A FORWARD -j DROP", Some(5), None), // unchanged
            rule("FORWARD", "-A FORWARD -j DROP", Some(9), None), // second twin grew by 2
            rule("X", "drop", Some(4), Some(9)),                  // matched by handle: +3
            rule("X", "drop", Some(10), Some(4)),                 // unchanged
            rule("Y", "-A Y -j DROP", Some(3), None),             // replaced: counts from zero
            rule("Z", "-A Z -j DROP", Some(2), None),             // new
            rule("Z", "-A Z -j REJECT", None, None),              // no counter
        ];
        let d: Vec<(String, u64)> = counter_deltas(&before, &after)
            .into_iter()
            .map(|(r, n)| (r.chain, n))
            .collect();
        assert_eq!(
            d,
            vec![
                ("FORWARD".into(), 2),
                ("X".into(), 3),
                ("Y".into(), 3),
                ("Z".into(), 2)
            ]
        );
    }

    fn svc(
        service: &str,
        kind: AddressKind,
        address: &str,
        port: u16,
        eps: &[(&str, u16)],
    ) -> ServicePort {
        ServicePort {
            service: service.into(),
            address: address.parse().unwrap(),
            port,
            proto: Proto::Tcp,
            kind,
            entry_chain: "X".into(),
            endpoints: eps
                .iter()
                .map(|(ip, port)| Endpoint {
                    ip: ip.parse().unwrap(),
                    port: *port,
                    chain: "E".into(),
                    local: None,
                })
                .collect(),
            local_only: false,
            no_endpoints: None,
            source_ranges: vec![],
            firewall_rule: None,
            firewall_chains: vec![],
        }
    }

    #[test]
    fn lookups_prefer_exact_addresses_and_load_balancers() {
        let rs = Ruleset {
            mode: Mode::Nftables,
            services: vec![
                svc(
                    "a/b:p",
                    AddressKind::ClusterIp,
                    "10.96.0.1",
                    80,
                    &[("10.244.0.5", 8080)],
                ),
                svc(
                    "a/b:p",
                    AddressKind::NodePort,
                    "0.0.0.0",
                    30080,
                    &[("10.244.0.5", 8080)],
                ),
                svc(
                    "a/b:p",
                    AddressKind::LoadBalancer,
                    "203.0.113.1",
                    80,
                    &[("10.244.0.5", 8080)],
                ),
                svc("c/d", AddressKind::NodePort, "::", 30080, &[]),
            ],
            filter_rules: vec![],
            base_chains: vec![],
        };
        let lb: IpAddr = "203.0.113.1".parse().unwrap();
        assert_eq!(rs.services_for(lb, 80, Proto::Tcp).len(), 1);
        assert!(rs.services_for(lb, 80, Proto::Udp).is_empty());
        assert_eq!(rs.services_for(lb, 0, Proto::Tcp).len(), 1);
        assert_eq!(
            rs.services_for("0.0.0.0".parse().unwrap(), 0, Proto::Tcp)
                .len(),
            1
        );
        assert_eq!(
            rs.services_for("::".parse().unwrap(), 0, Proto::Tcp)[0].service,
            "c/d"
        );
        // A node port matches whatever local address was used, same family only.
        let hits = rs.services_for(lb, 30080, Proto::Tcp);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].kind, AddressKind::NodePort);
        let (owner, ep) = rs
            .endpoint_owner("10.244.0.5".parse().unwrap(), 8080, Proto::Tcp)
            .unwrap();
        assert_eq!(owner.kind, AddressKind::LoadBalancer);
        assert_eq!(ep.port, 8080);
        assert_eq!(
            rs.endpoint_owners("10.244.0.5".parse().unwrap(), 0, Proto::Tcp)
                .len(),
            3
        );
        assert!(
            rs.endpoint_owner("10.244.0.5".parse().unwrap(), 9999, Proto::Tcp)
                .is_none()
        );
    }

    #[test]
    fn covered_tables_drop_their_nft_duplicates() {
        let mut rs = Ruleset::empty(Mode::Nftables);
        rs.filter_rules = vec![rule("FORWARD", "a", None, Some(1)), {
            let mut r = rule("forward", "b", None, Some(2));
            r.family = "inet".into();
            r.table = "policy".into();
            r
        }];
        drop_covered_filter_rules(&mut rs, &[("ip".into(), "filter".into())]);
        assert_eq!(rs.filter_rules.len(), 1);
        assert_eq!(rs.filter_rules[0].table, "policy");
    }

    #[test]
    fn iptables_mode_node_reports_each_rule_once() {
        let ipt = parse_iptables_save(
            include_str!("testdata/iptables-nft.save"),
            Mode::IptablesNft,
        )
        .unwrap();
        let nft = parse_nft_json(include_str!("testdata/iptables-nft.nft.json")).unwrap();
        let mut problems = Vec::new();
        let merged = merge_views(vec![ipt], Some(nft), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(merged.len(), 2);
        let (ipt, nft) = (&merged[0], &merged[1]);
        assert_eq!(
            (ipt.mode, ipt.services.len(), ipt.filter_rules.len()),
            (Mode::IptablesNft, 16, 9)
        );
        assert!(ipt.base_chains.is_empty());
        // The nft view keeps the hooks, and none of the duplicated rules.
        assert_eq!(
            (nft.mode, nft.filter_rules.len(), nft.base_chains.len()),
            (Mode::Nftables, 0, 7)
        );
    }

    #[test]
    fn nftables_mode_node_reports_each_rule_once() {
        let ipt = parse_iptables_save(
            include_str!("testdata/nftables.iptables-nft.save"),
            Mode::IptablesNft,
        )
        .unwrap();
        let nft = parse_nft_json(include_str!("testdata/nftables.json")).unwrap();
        let mut problems = Vec::new();
        let merged = merge_views(vec![ipt], Some(nft), &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let all: Vec<&FilterRule> = merged.iter().flat_map(|r| &r.filter_rules).collect();
        let netpol: Vec<&&FilterRule> = all
            .iter()
            .filter(|r| r.rule.contains("10.244.1.9"))
            .collect();
        assert_eq!(netpol.len(), 1);
        assert!(
            netpol[0].rule.starts_with("-A FORWARD"),
            "the iptables text wins: {}",
            netpol[0].rule
        );
        assert_eq!(all.len(), 8);
        assert_eq!(merged.iter().map(|r| r.services.len()).sum::<usize>(), 16);
        assert_eq!(
            merged.iter().map(|r| r.base_chains.len()).sum::<usize>(),
            10
        );
    }

    #[test]
    fn without_iptables_nft_save_the_gap_is_reported() {
        let nft = parse_nft_json(include_str!("testdata/iptables-nft.nft.json")).unwrap();
        let mut problems = Vec::new();
        let merged = merge_views(Vec::new(), Some(nft), &mut problems);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("(ip filter, ip nat)"),
            "{}",
            problems[0]
        );
        // Its drops are still listed, as nft shows them.
        assert_eq!(merged[0].filter_rules.len(), 9);
    }

    #[tokio::test]
    async fn tools_output_failure_and_time_limit() {
        let sh = Path::new("/bin/sh");
        let limit = Duration::from_secs(10);
        assert_eq!(
            run_tool_within(sh, &["-c", "echo out; echo noise >&2"], limit)
                .await
                .unwrap(),
            "out\n"
        );
        let err = run_tool_within(
            sh,
            &[
                "-c",
                "echo; echo 'Permission denied (you must be root)' >&2; exit 4",
            ],
            limit,
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("exit status: 4")
                && err.ends_with(": Permission denied (you must be root)"),
            "{err}"
        );
        let start = Instant::now();
        let err = run_tool_within(sh, &["-c", "sleep 5"], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.starts_with("no answer within"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(4));
        assert!(
            run_tool_within(Path::new("/nonexistent/tool"), &[], limit)
                .await
                .unwrap_err()
                .starts_with("cannot run")
        );
    }

    #[tokio::test]
    async fn tools_read_as_they_write() {
        use std::io::Read;
        let sh = Path::new("/bin/sh");
        let limit = Duration::from_secs(10);
        let count = |mut f: std::fs::File| {
            let mut s = String::new();
            f.read_to_string(&mut s).map(|_| s.len())
        };
        // Two MB on each pipe: neither blocks the tool.
        let big = "head -c 2000000 /dev/zero; head -c 2000000 /dev/zero >&2";
        let n = run_tool_reading(sh, &["-c", big], limit, count).await;
        assert_eq!(n.unwrap().unwrap(), 2_000_000);
        let err = run_tool_reading(
            sh,
            &["-c", "echo half; echo 'no' >&2; exit 3"],
            limit,
            count,
        )
        .await
        .unwrap_err();
        assert!(
            err.contains("exit status: 3") && err.ends_with(": no"),
            "{err}"
        );
        // Killed at the limit: the reader sees its pipe close and returns.
        let start = Instant::now();
        let err = run_tool_reading(sh, &["-c", "sleep 5"], Duration::from_millis(200), count)
            .await
            .unwrap_err();
        assert!(err.starts_with("no answer within"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(4));
    }

    /// read_node on this machine: whatever it finds, it must not fail, and
    /// it must not leave legacy tables behind where there were none.
    #[tokio::test]
    async fn read_node_is_harmless() {
        let before = legacy_table_names("ip");
        let rules = read_node().await;
        assert_eq!(legacy_table_names("ip"), before);
        for p in &rules.problems {
            assert!(!p.contains('\n'), "{p}");
        }
    }

    /// `nft -j list chains` as nft 1.0.6 prints it: the base chains the
    /// hooks are placed around, read before (and as) the full ruleset.
    #[test]
    fn base_chains_alone_from_nft_list_chains() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "ip", "table": "kube-proxy", "name": "filter-prerouting", "handle": 1, "type": "filter", "hook": "prerouting", "prio": -110, "policy": "accept"}}, {"chain": {"family": "ip", "table": "kube-proxy", "name": "services", "handle": 2}}, {"chain": {"family": "inet", "table": "fw", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "drop"}}, {"chain": {"family": "ip", "table": "nat", "name": "PREROUTING", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}]}"#;
        let rs = parse_nft_json(json).unwrap();
        let got: Vec<_> = rs
            .base_chains
            .iter()
            .map(|c| {
                (
                    c.table.as_str(),
                    c.chain.as_str(),
                    c.hook.as_str(),
                    c.priority,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("kube-proxy", "filter-prerouting", "prerouting", -110),
                ("fw", "input", "input", 0),
                ("nat", "PREROUTING", "prerouting", -100),
            ]
        );
        assert!(rs.services.is_empty());
        // The same occupants as the full read gives: iptables-nft's nat
        // chain stands in for the kernel's DNAT registration.
        let occ = crate::engine::occupants(&rs.base_chains);
        let at = |hook, prio| {
            occ.iter()
                .filter(|o| o.hook == hook && o.priority == prio)
                .count()
        };
        assert_eq!((at(0, -110), at(1, 0), at(0, -100)), (1, 1, 1), "{occ:?}");
    }
}
