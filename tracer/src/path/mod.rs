//! Path assembly: pure functions from one flow's kernel events (plus what we
//! know about the node) to its hops and verdict. No I/O here, so every case
//! is unit-tested without root.
//!
//! - `walk`: one packet's events to hops ([`walk::PacketWalk`]);
//! - `explain`: where and why a packet was dropped;
//! - `verdict`: the flow's verdict from all its packets.

mod explain;
mod verdict;
mod walk;

use std::{collections::BTreeMap, net::SocketAddr};

use tracer_common::{DIR_REPLY, EV_POD_NS, EV_UNTRACED, Event, Tuple};

use crate::{
    drops::DropNames,
    events::{dst, proto_name, src},
    kubeproxy::{AddressKind, ServicePort},
    model::*,
    netinfo::NetInfo,
    nfplan::NfPlan,
};
use verdict::{Packets, TCP_FIN, TCP_RST};
use walk::{Outcome, PacketWalk};

/// A DROP/REJECT rule whose counter moved while the flow was being dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHit {
    pub table: String,
    pub chain: String,
    pub rule: String,
    pub packets: u64,
    /// The netfilter hook of its chain, when the chain is a base chain.
    pub hook: Option<u8>,
}

/// Everything about the node that path assembly uses.
pub struct Context<'a> {
    pub node_netns: u32,
    pub net: &'a NetInfo,
    pub plan: &'a NfPlan,
    pub drops: &'a DropNames,
    /// kube-proxy's service ports for the LB IP (all ports).
    pub services: &'a [ServicePort],
    /// Whether any kube-proxy ruleset was found on the node.
    pub kube_proxy_found: bool,
    /// Why the node's rules may be incomplete, if they may be: then a
    /// missing rule is unknown, not a finding.
    pub rules_degraded: Option<&'a str>,
    pub rule_hits: &'a [RuleHit],
    /// rp_filter values by interface name: (all, interface, effective).
    pub rp_filter: &'a dyn Fn(&str) -> (i64, i64, i64),
    /// The node's conntrack figures, counters since watching began.
    pub conntrack: &'a dyn Fn() -> Option<crate::conntrack::CtFigures>,
    /// Whether netfilter hooks were observed directly (else NAT is inferred).
    pub netfilter_links: bool,
}

fn in_pod(e: &Event, ctx: &Context) -> bool {
    e.flags & EV_POD_NS != 0 || (e.netns != 0 && e.netns != ctx.node_netns)
}

/// "kube-proxy KUBE-SEP-XXX (ns/name:port)" for a DNAT target, from the rules.
fn endpoint_rule(ctx: &Context, t: &Tuple) -> Option<String> {
    let to = dst(t);
    ctx.services.iter().find_map(|s| {
        s.endpoints
            .iter()
            .find(|ep| SocketAddr::new(ep.ip, ep.port) == to)
            .map(|ep| format!("kube-proxy {} ({})", ep.chain, s.service))
    })
}

/// The Service ports a flow to `lb` may hit: that address's (several LB
/// IPs may be watched at once, each with its own Service).
fn services_for_port<'a>(ctx: &'a Context, lb: SocketAddr, proto: u8) -> Vec<&'a ServicePort> {
    ctx.services
        .iter()
        .filter(|s| {
            s.address == lb.ip()
                && (s.port == lb.port() || s.port == 0)
                && s.proto.ip_proto() == proto
        })
        .collect()
}

/// How the JSON and text name an address kind.
pub fn kind_label(k: AddressKind) -> &'static str {
    match k {
        AddressKind::LoadBalancer => "LoadBalancer",
        AddressKind::ExternalIp => "ExternalIP",
        AddressKind::External => "LoadBalancer or ExternalIP",
        AddressKind::ClusterIp => "ClusterIP",
        AddressKind::NodePort => "NodePort",
    }
}

fn service_info(s: &ServicePort) -> ServiceInfo {
    ServiceInfo {
        name: s.service.clone(),
        kind: kind_label(s.kind).into(),
        chain: s.entry_chain.clone(),
        endpoints: s.endpoints.len(),
        local_endpoints: s
            .endpoints
            .iter()
            .any(|e| e.local.is_some())
            .then(|| s.endpoints.iter().filter(|e| e.local == Some(true)).count()),
        local_only: s.local_only,
        source_ranges: s.source_ranges.clone(),
    }
}

/// A packet of one flow: direction, then its number in the flow, or for a
/// drop past the trace budget (each its own packet) its order among those.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PacketKey {
    dir: u8,
    untraced: bool,
    seq: u32,
}

/// Packets of one flow → their events in time order.
fn packets(events: &[Event]) -> BTreeMap<PacketKey, Vec<&Event>> {
    let mut m: BTreeMap<PacketKey, Vec<&Event>> = BTreeMap::new();
    let mut untraced_n = 0u32;
    for e in events {
        let untraced = e.flags & EV_UNTRACED != 0;
        let seq = if untraced {
            untraced_n += 1;
            untraced_n
        } else {
            e.seq as u32
        };
        m.entry(PacketKey {
            dir: e.dir,
            untraced,
            seq,
        })
        .or_default()
        .push(e);
    }
    for v in m.values_mut() {
        v.sort_by_key(|e| e.ts);
    }
    m
}

/// The whole report for one flow.
pub fn assemble(events: &[Event], ctx: &Context, counters: Option<Counters>) -> Option<FlowReport> {
    let flow = events.first()?.flow;
    let t0 = events.iter().map(|e| e.ts).min()?;
    let lb = dst(&flow);
    let svcs = services_for_port(ctx, lb, flow.proto);

    let mut hops = Vec::new();
    let (mut req, mut rep, mut later): (Vec<Outcome>, Vec<Outcome>, Vec<Outcome>) =
        Default::default();
    for (key, evs) in packets(events) {
        let (h, o) = PacketWalk::run(&evs, ctx, t0, &flow);
        if key.untraced {
            hops.extend(h);
            later.push(o);
            continue;
        }
        let seen = if key.dir == DIR_REPLY {
            &mut rep
        } else {
            &mut req
        };
        if seen.is_empty() {
            hops.extend(h);
        } else {
            // Later packets: only what adds to the first one's path.
            hops.extend(
                h.into_iter()
                    .filter(|h| matches!(h.kind, HopKind::Dropped { .. } | HopKind::Reset { .. })),
            );
        }
        seen.push(o);
    }
    hops.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));

    let closing = events
        .iter()
        .filter(|e| {
            e.pkt.proto == 6 && e.tcp_flags & (TCP_FIN | TCP_RST) != 0 && e.flags & EV_UNTRACED == 0
        })
        .map(|e| e.ts)
        .min();
    let packets = Packets {
        req: &req,
        rep: &rep,
        later: &later,
        closing,
    };
    let verdict = verdict::verdict(&flow, ctx, &svcs, &packets);
    let mut notes = Vec::new();
    if !ctx.netfilter_links {
        notes.push(
            "netfilter links unavailable on this kernel: NAT and routing hops are inferred".into(),
        );
    }
    if let Some(why) = ctx.rules_degraded {
        notes.push(format!("the node's rules may be incomplete: {why}"));
    } else if !ctx.kube_proxy_found {
        notes.push("no kube-proxy rules found on this node (iptables or nftables)".into());
    }
    Some(FlowReport {
        flow: FlowId {
            proto: proto_name(flow.proto),
            client: src(&flow),
            lb,
            conn: 0,
        },
        service: svcs.first().map(|s| service_info(s)),
        hops,
        verdict,
        counters,
        notes,
        update: false,
    })
}

/// The Service port tests use: default/web:http, LB port 80, one endpoint
/// 10.244.1.5:8080 unless kube-proxy turns it away.
#[cfg(test)]
pub(crate) fn web_service(
    no_endpoints: Option<crate::kubeproxy::NoEndpoints>,
    local_only: bool,
    local: Option<bool>,
) -> ServicePort {
    ServicePort {
        service: "default/web:http".into(),
        address: "192.0.2.240".parse().unwrap(),
        port: 80,
        proto: crate::kubeproxy::Proto::Tcp,
        kind: AddressKind::LoadBalancer,
        entry_chain: "KUBE-EXT-ABC".into(),
        endpoints: if no_endpoints.is_some() {
            vec![]
        } else {
            vec![crate::kubeproxy::Endpoint {
                ip: "10.244.1.5".parse().unwrap(),
                port: 8080,
                chain: "KUBE-SEP-XYZ".into(),
                local,
            }]
        },
        local_only,
        no_endpoints,
        source_ranges: vec![],
        firewall_rule: None,
        firewall_chains: vec![],
    }
}

#[cfg(test)]
mod tests;
