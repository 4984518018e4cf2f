//! Path assembly: pure functions from one flow's kernel events (plus what we
//! know about the node) to its hops and verdict. No I/O here, so every case
//! is unit-tested without root.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tracer_common::{
    AF_INET6, DIR_REPLY, EV_POD_NS, EV_UNTRACED, Event, Kind, NF_INET_FORWARD, NF_INET_LOCAL_IN,
    NF_INET_LOCAL_OUT, NF_INET_PRE_ROUTING, NO_HOOK, Tuple,
};

use crate::{
    drops::DropNames,
    events::ifname,
    model::*,
    netinfo::{IfRole, NetInfo, rp_filter_name},
    nfplan::{NfPlan, hook_name},
};

/// A kube-proxy service port for the LB IP, as path assembly needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceView {
    pub service: String,
    pub kind: String,
    pub port: u16,
    pub proto: u8,
    pub entry_chain: String,
    pub endpoints: Vec<EndpointView>,
    pub local_only: bool,
    pub no_endpoints: Option<NoEndpointsView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointView {
    pub addr: SocketAddr,
    pub chain: String,
    pub local: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoEndpointsView {
    Reject(String),
    DropNoLocal(String),
}

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
    /// kube-proxy service ports for the LB IP (all ports).
    pub services: &'a [ServiceView],
    /// Whether any kube-proxy ruleset was found on the node.
    pub kube_proxy_found: bool,
    pub rule_hits: &'a [RuleHit],
    /// rp_filter values by interface name: (all, interface, effective).
    pub rp_filter: &'a dyn Fn(&str) -> (i64, i64, i64),
    /// Whether netfilter hooks were observed directly (else NAT is inferred).
    pub netfilter_links: bool,
}

pub fn ip(addr: &[u8; 16], family: u8) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    }
}

pub fn src(t: &Tuple) -> SocketAddr {
    SocketAddr::new(ip(&t.saddr, t.family), t.sport)
}

pub fn dst(t: &Tuple) -> SocketAddr {
    SocketAddr::new(ip(&t.daddr, t.family), t.dport)
}

pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => format!("proto {n}"),
    }
}

/// Drop reasons that are a TCP endpoint's normal housekeeping, not a broken path.
fn benign(reason: &str) -> bool {
    matches!(
        reason,
        "QUEUE_PURGE"
            | "SOCKET_CLOSE"
            | "TCP_CLOSE"
            | "TCP_RESET"
            | "TCP_OLD_DATA"
            | "TCP_OFOMERGE"
            | "TCP_OLD_ACK"
            | "TCP_TOO_OLD_ACK"
            | "TCP_OLD_SEQUENCE"
            | "TCP_ACK_UNSENT_DATA"
            | "TCP_RFC7323_PAWS"
            | "TCP_RFC7323_PAWS_ACK"
            | "TCP_RFC7323_TW_PAWS"
            | "TCP_RFC7323_TSECR"
            | "TCP_ZEROWINDOW"
            | "TCP_OFO_QUEUE_PRUNE"
            | "TCP_OFO_DROP"
            | "SKB_CONSUMED"
            | "SKB_NOT_DROPPED_YET"
            | "SOCKET_FILTER"
    )
}

/// What happened to one packet, for the verdict.
#[derive(Debug, Default, Clone)]
struct Outcome {
    arrived_on: Option<String>,
    dnat_to: Option<SocketAddr>,
    /// Last interface it was sent on in the node's namespace (not a bridge), with its role.
    left: Option<(String, IfRole, Option<IpAddr>)>,
    in_pod: bool,
    delivered_pod: bool,
    delivered_node: bool,
    reset: bool,
    drop: Option<DropSeen>,
}

#[derive(Debug, Clone)]
struct DropSeen {
    ts: u64,
    tcp_flags: u8,
    reason: String,
    in_pod: bool,
    summary: String,
    hint: Option<String>,
}

fn ct_state(ct: u8) -> &'static str {
    // Event::ct is enum ip_conntrack_info + 1.
    match ct {
        1 => "established",
        2 => "related",
        3 => "new",
        4 => "established (reply)",
        5 => "related (reply)",
        8 => "untracked (NOTRACK)",
        _ => "unknown",
    }
}

struct Walk<'c, 'a> {
    ctx: &'c Context<'a>,
    t0: u64,
    hops: Vec<Hop>,
    dir: Dir,
    packet: u16,
}

impl Walk<'_, '_> {
    fn push(&mut self, ts: u64, kind: HopKind, inferred: bool) {
        self.hops.push(Hop {
            t_ms: ts.saturating_sub(self.t0) as f64 / 1e6,
            dir: self.dir,
            packet: self.packet,
            kind,
            inferred,
        });
    }
}

fn in_pod(e: &Event, ctx: &Context) -> bool {
    e.flags & EV_POD_NS != 0 || (e.netns != 0 && e.netns != ctx.node_netns)
}

/// Hops of one packet (events sorted by time, all of the same packet).
fn packet_hops(evs: &[&Event], ctx: &Context, t0: u64, flow: &Tuple) -> (Vec<Hop>, Outcome) {
    let first = evs[0];
    let dir = if first.dir == DIR_REPLY {
        Dir::Reply
    } else {
        Dir::Request
    };
    let mut w = Walk {
        ctx,
        t0,
        hops: Vec::new(),
        dir,
        packet: first.seq,
    };
    let mut out = Outcome::default();
    let mut last_nf: Option<(u8, u8, Tuple)> = None;
    let mut first_tuple: Option<Tuple> = None;
    let mut last_tuple: Option<Tuple> = None;
    let mut ct_done = false;
    let mut route_done = false;
    let mut sent = false;
    // Routing lookups since the last PREROUTING/OUTPUT point, waiting for the decision.
    let mut fibs: Vec<&Event> = Vec::new();
    let mut reverse_route: Option<(String, Option<IpAddr>)> = None;
    let mut route_gw: Option<IpAddr> = None;

    for e in evs {
        let pkt_valid = e.pkt.family != 0;
        if pkt_valid && first_tuple.is_none() && e.kind != Kind::Fib as u8 {
            first_tuple = Some(e.pkt);
        }
        match Kind::from_u8(e.kind) {
            Some(Kind::Arrive) => {
                if in_pod(e, ctx) {
                    if !out.in_pod {
                        out.in_pod = true;
                        w.push(
                            e.ts,
                            HopKind::InPod {
                                iface: ifname(&e.ifname),
                                addr: dst(&e.pkt),
                                netns: e.netns,
                            },
                            false,
                        );
                    }
                } else if out.arrived_on.is_none() {
                    let name = ifname(&e.ifname);
                    out.arrived_on = Some(name.clone());
                    w.push(
                        e.ts,
                        HopKind::Arrived {
                            iface: name,
                            role: ctx.net.role(e.ifindex),
                            from: src(&e.pkt),
                            to: dst(&e.pkt),
                            mac: (e.mac_src != [0; 6]).then(|| mac(e.mac_src)),
                            tcp_flags: (e.pkt.proto == 6).then(|| tcp_flags(e.tcp_flags)),
                            len: e.len,
                        },
                        false,
                    );
                } else if ctx.net.role(e.ifindex) == IfRole::Overlay {
                    w.push(
                        e.ts,
                        HopKind::Arrived {
                            iface: ifname(&e.ifname),
                            role: IfRole::Overlay,
                            from: src(&e.pkt),
                            to: dst(&e.pkt),
                            mac: None,
                            tcp_flags: None,
                            len: e.len,
                        },
                        false,
                    );
                }
                if pkt_valid {
                    last_tuple = Some(e.pkt);
                }
            }
            Some(Kind::Nf) => {
                if out.arrived_on.is_none() && last_nf.is_none() {
                    if e.hook == NF_INET_LOCAL_OUT {
                        w.push(
                            e.ts,
                            HopKind::LocalOut {
                                from: src(&e.pkt),
                                to: dst(&e.pkt),
                            },
                            false,
                        );
                    } else if e.in_ifindex != 0 {
                        // First seen at netfilter (a reply recognised by conntrack).
                        let name = ctx.net.name(e.in_ifindex);
                        out.arrived_on = Some(name.clone());
                        w.push(
                            e.ts,
                            HopKind::Arrived {
                                iface: name,
                                role: ctx.net.role(e.in_ifindex),
                                from: src(&e.pkt),
                                to: dst(&e.pkt),
                                mac: None,
                                tcp_flags: (e.pkt.proto == 6).then(|| tcp_flags(e.tcp_flags)),
                                len: e.len,
                            },
                            false,
                        );
                    }
                }
                let prio = ctx.plan.priority(e.hook, e.pos).unwrap_or(0);
                if !ct_done && e.ct != 0 {
                    ct_done = true;
                    w.push(
                        e.ts,
                        HopKind::Conntrack {
                            state: ct_state(e.ct).into(),
                        },
                        false,
                    );
                } else if !ct_done
                    && e.ct == 0
                    && (e.hook == NF_INET_PRE_ROUTING || e.hook == NF_INET_LOCAL_OUT)
                    && prio > -200
                {
                    ct_done = true;
                    w.push(
                        e.ts,
                        HopKind::Conntrack {
                            state: "invalid (conntrack attached no entry)".into(),
                        },
                        false,
                    );
                }
                // The routing decision shows as the next hook the packet enters.
                if !route_done && (e.hook == NF_INET_FORWARD || e.hook == NF_INET_LOCAL_IN) {
                    route_done = true;
                    let (iface, gw, table) = forward_route(&fibs, e);
                    route_gw = gw;
                    let decision = if e.hook == NF_INET_LOCAL_IN {
                        "deliver locally (this node owns the address)".to_string()
                    } else {
                        "forward".to_string()
                    };
                    let iface = if e.hook == NF_INET_FORWARD {
                        Some(ctx.net.name(e.out_ifindex)).or(iface)
                    } else {
                        None
                    };
                    w.push(
                        e.ts,
                        HopKind::Route {
                            decision,
                            iface,
                            gateway: gw,
                            table,
                        },
                        false,
                    );
                }
                if let (Some(prev), true) = (last_tuple, pkt_valid) {
                    nat_hops(&mut w, e, &prev, last_nf, &mut out);
                }
                if pkt_valid {
                    last_tuple = Some(e.pkt);
                }
                if e.hook == NF_INET_PRE_ROUTING || e.hook == NF_INET_LOCAL_OUT {
                    fibs.clear();
                }
                // Past INPUT's last point: handed to the node's own stack (a
                // socket's consumption is not always traced, e.g. a SYN-ACK).
                if e.hook == NF_INET_LOCAL_IN
                    && ctx.plan.priority(e.hook, e.pos.saturating_add(1)).is_none()
                    && !out.delivered_node
                {
                    out.delivered_node = true;
                    w.push(
                        e.ts,
                        HopKind::Delivered {
                            at: "the node's own stack (passed INPUT)".into(),
                        },
                        false,
                    );
                }
                last_nf = Some((e.hook, e.pos, e.pkt));
            }
            Some(Kind::Fib) => {
                if in_pod(e, ctx) {
                    continue;
                }
                if let Some(cur) = last_tuple {
                    // rp_filter's reverse lookup is for the packet's source.
                    let d = ip(&e.pkt.daddr, e.pkt.family);
                    if d == ip(&cur.saddr, cur.family) && d != ip(&cur.daddr, cur.family) {
                        if e.fib.err == 0 && e.ifindex != 0 && e.fib.table != 255 {
                            let gw = (e.fib.gw_family != 0).then(|| ip(&e.fib.gw, e.fib.gw_family));
                            reverse_route = Some((ifname(&e.ifname), gw));
                        }
                        continue;
                    }
                }
                fibs.push(e);
            }
            Some(Kind::Xmit) => {
                if in_pod(e, ctx) {
                    continue;
                }
                if !ctx.netfilter_links && !ct_done && e.ct != 0 {
                    // No netfilter points: the state the packet leaves with,
                    // attached at its first hook.
                    ct_done = true;
                    w.push(
                        first.ts,
                        HopKind::Conntrack {
                            state: ct_state(e.ct).into(),
                        },
                        true,
                    );
                }
                let role = ctx.net.role(e.ifindex);
                if !route_done && last_nf.is_none() && !fibs.is_empty() {
                    // No netfilter links: the lookup result is the decision.
                    route_done = true;
                    let (iface, gw, table) = forward_route(&fibs, e);
                    route_gw = gw;
                    w.push(
                        e.ts,
                        HopKind::Route {
                            decision: "forward".into(),
                            iface,
                            gateway: gw,
                            table,
                        },
                        true,
                    );
                }
                if last_nf.is_none()
                    && let (Some(a), true) = (first_tuple, pkt_valid)
                {
                    // Without netfilter links, NAT shows as a changed tuple.
                    nat_inferred(&mut w, e, &a, &mut out);
                    first_tuple = Some(e.pkt);
                }
                if role == IfRole::Bridge {
                    continue;
                }
                sent = true;
                let name = ifname(&e.ifname);
                let to = dst(&e.pkt);
                let next_hop = match role {
                    IfRole::PodVeth => None,
                    _ => route_gw.or(Some(to.ip())),
                };
                let towards = match (role, dir) {
                    (IfRole::PodVeth, _) => "pod".to_string(),
                    (IfRole::Overlay, _) => "another node (overlay tunnel)".to_string(),
                    (_, Dir::Reply) => match route_gw {
                        Some(gw) => format!("client via gateway {gw}"),
                        None => "client".to_string(),
                    },
                    (_, Dir::Request) => match route_gw {
                        Some(gw) => format!("another node via {gw}"),
                        None => format!("another node {}", to.ip()),
                    },
                };
                out.left = Some((name.clone(), role, next_hop));
                w.push(
                    e.ts,
                    HopKind::Left {
                        iface: name,
                        role,
                        to,
                        next_hop,
                        towards,
                    },
                    false,
                );
            }
            Some(Kind::Consume) => {
                if in_pod(e, ctx) {
                    if out.in_pod && !out.delivered_pod {
                        out.delivered_pod = true;
                        w.push(
                            e.ts,
                            HopKind::Delivered {
                                at: "a socket in the pod".into(),
                            },
                            false,
                        );
                    }
                } else if !sent && route_done && !out.delivered_node {
                    out.delivered_node = true;
                    w.push(
                        e.ts,
                        HopKind::Delivered {
                            at: "a socket on this node".into(),
                        },
                        false,
                    );
                }
            }
            Some(Kind::Reset) => {
                out.reset = true;
                let at = if in_pod(e, ctx) {
                    "the pod"
                } else {
                    "this node"
                };
                w.push(e.ts, HopKind::Reset { at: at.into() }, false);
            }
            Some(Kind::Drop) => {
                if last_nf.is_none()
                    && !in_pod(e, ctx)
                    && let (Some(a), true) = (first_tuple, pkt_valid)
                {
                    // The dropped packet may show a NAT no later hook saw.
                    nat_inferred(&mut w, e, &a, &mut out);
                    first_tuple = Some(e.pkt);
                }
                let d = explain_drop(e, ctx, flow, &out, reverse_route.as_ref(), route_gw);
                // Without netfilter points, a rule attributed by counters
                // still tells the hook of its chain.
                let (hook, inferred) = if e.hook != NO_HOOK {
                    (Some(hook_name(e.hook).to_string()), false)
                } else if d.1.reason == "NETFILTER_DROP"
                    && let Some(h) = ctx.rule_hits.iter().find_map(|r| r.hook)
                {
                    (Some(hook_name(h).to_string()), true)
                } else {
                    (None, false)
                };
                w.push(
                    e.ts,
                    HopKind::Dropped {
                        at: d.0.clone(),
                        reason: d.1.reason.clone(),
                        hook,
                        detail: d.1.summary.clone(),
                        later_packet: e.flags & EV_UNTRACED != 0,
                    },
                    inferred,
                );
                out.drop = Some(d.1);
            }
            _ => {}
        }
    }
    (w.hops, out)
}

/// The forward routing lookup among those made since PREROUTING: the first
/// successful one for the packet's (current) destination, outside the local table.
fn forward_route(fibs: &[&Event], at: &Event) -> (Option<String>, Option<IpAddr>, Option<u32>) {
    let dst_ip = ip(&at.pkt.daddr, at.pkt.family);
    let pick = fibs
        .iter()
        .find(|f| f.fib.err == 0 && f.fib.table != 255 && ip(&f.pkt.daddr, f.pkt.family) == dst_ip)
        .or_else(|| {
            fibs.iter()
                .find(|f| f.fib.err == 0 && ip(&f.pkt.daddr, f.pkt.family) == dst_ip)
        });
    match pick {
        Some(f) => (
            (f.ifindex != 0).then(|| ifname(&f.ifname)),
            (f.fib.gw_family != 0).then(|| ip(&f.fib.gw, f.fib.gw_family)),
            Some(f.fib.table),
        ),
        None => (None, None, None),
    }
}

/// NAT between the previous observation and this netfilter point.
fn nat_hops(
    w: &mut Walk,
    e: &Event,
    prev: &Tuple,
    last_nf: Option<(u8, u8, Tuple)>,
    out: &mut Outcome,
) {
    // Every point records the packet, but only changes are reported: the
    // rewrite happened just before the first point that saw it.
    let band = match last_nf {
        Some((h, _, _)) if h == e.hook && e.pos > 0 => {
            w.ctx.plan.band_after(h, e.pos - 1).to_string()
        }
        _ => hook_name(e.hook).to_string(),
    };
    push_nat(w, e, prev, band, false, out);
}

/// Without netfilter links, NAT shows as a changed tuple between hooks.
/// Where it happened follows from what it rewrote: destinations are
/// rewritten at PREROUTING (OUTPUT for the node's own packets), sources at
/// POSTROUTING, in both directions.
fn nat_inferred(w: &mut Walk, e: &Event, prev: &Tuple, out: &mut Outcome) {
    let dst_hook = if out.arrived_on.is_some() {
        "PREROUTING"
    } else {
        "OUTPUT"
    };
    if dst(prev) != dst(&e.pkt) {
        let mut only_dst = e.pkt;
        only_dst.saddr = prev.saddr;
        only_dst.sport = prev.sport;
        let mut de = *e;
        de.pkt = only_dst;
        push_nat(w, &de, prev, dst_hook.into(), true, out);
    }
    if src(prev) != src(&e.pkt) {
        let mut only_src = *prev;
        only_src.saddr = e.pkt.saddr;
        only_src.sport = e.pkt.sport;
        let mut se = *e;
        se.pkt = only_src;
        push_nat(w, &se, prev, "POSTROUTING".into(), true, out);
    }
}

/// DNAT/SNAT hops for a tuple that changed from `prev` to `e.pkt` in `band`.
fn push_nat(
    w: &mut Walk,
    e: &Event,
    prev: &Tuple,
    band: String,
    inferred: bool,
    out: &mut Outcome,
) {
    if dst(prev) != dst(&e.pkt) {
        let by = if w.dir == Dir::Request {
            out.dnat_to = Some(dst(&e.pkt));
            endpoint_rule(w.ctx, &e.pkt)
        } else {
            None
        };
        w.push(
            e.ts,
            nat_hop(w.dir, false, dst(prev), dst(&e.pkt), band.clone(), by),
            inferred,
        );
    }
    if src(prev) != src(&e.pkt) {
        w.push(
            e.ts,
            nat_hop(w.dir, true, src(prev), src(&e.pkt), band, None),
            inferred,
        );
    }
}

/// A destination rewrite on a request is DNAT; on a reply, rewriting the
/// source back to the LB IP is that DNAT undone (and vice versa for SNAT).
fn nat_hop(
    dir: Dir,
    source: bool,
    from: SocketAddr,
    to: SocketAddr,
    hook: String,
    by: Option<String>,
) -> HopKind {
    let dnat = (dir == Dir::Request) != source;
    if dnat {
        HopKind::Dnat { from, to, hook, by }
    } else {
        HopKind::Snat { from, to, hook }
    }
}

/// "KUBE-SEP-XXX (ns/name:port)" for a DNAT target, from the kube-proxy rules.
fn endpoint_rule(ctx: &Context, t: &Tuple) -> Option<String> {
    let to = dst(t);
    ctx.services.iter().find_map(|s| {
        s.endpoints
            .iter()
            .find(|ep| ep.addr == to)
            .map(|ep| format!("kube-proxy {} ({})", ep.chain, s.service))
    })
}

fn services_for_port<'a>(ctx: &'a Context, port: u16, proto: u8) -> Vec<&'a ServiceView> {
    ctx.services
        .iter()
        .filter(|s| (s.port == port || s.port == 0) && (s.proto == proto || s.proto == 0))
        .collect()
}

/// Where and why a packet was dropped, and what to do about it.
fn explain_drop(
    e: &Event,
    ctx: &Context,
    flow: &Tuple,
    out: &Outcome,
    reverse: Option<&(String, Option<IpAddr>)>,
    route_gw: Option<IpAddr>,
) -> (String, DropSeen) {
    let pod = in_pod(e, ctx);
    let dev = ifname(&e.ifname);
    let (reason, out_mtu) = refine_reason(ctx.drops.reason(e), e, ctx, out, reverse);
    // The last netfilter point the packet passed locates netfilter drops;
    // other drops happen in the stack between hooks (routing, neighbours).
    let after = if e.hook != NO_HOOK {
        format!(" after {}", hook_name(e.hook))
    } else {
        String::new()
    };
    let at = if pod {
        format!(
            "in the pod{}",
            if dev.is_empty() {
                String::new()
            } else {
                format!(" ({dev})")
            }
        )
    } else if reason == "NETFILTER_DROP" && e.hook != NO_HOOK {
        format!("netfilter {}", ctx.plan.band_after(e.hook, e.pos))
    } else if reason == "IP_RPFILTER"
        || reason == "IP_ROUTE_INPUT"
        || reason.starts_with("IP_IN")
        || reason.starts_with("IP_INVALID")
        || reason == "IP_LOCAL_SOURCE"
    {
        format!("in the routing decision{after}")
    } else if reason.starts_with("NEIGH_") {
        format!("resolving the next hop on {dev}")
    } else if !dev.is_empty() {
        format!("on {dev}{after}")
    } else {
        format!("on this node{after}")
    };
    let lb = dst(flow);
    let pkt_dst = dst(&e.pkt);
    let mut hint = None;
    let summary = match reason.as_str() {
        "NETFILTER_DROP" => {
            let svcs = services_for_port(ctx, lb.port(), flow.proto);
            let kp = svcs
                .iter()
                .find_map(|s| s.no_endpoints.as_ref().map(|n| (s, n)));
            let by_counter = ctx
                .rule_hits
                .iter()
                .map(|r| {
                    format!(
                        "{} {}: {} (+{} packet{}, attributed by counters)",
                        r.table,
                        r.chain,
                        r.rule,
                        r.packets,
                        if r.packets == 1 { "" } else { "s" }
                    )
                })
                .collect::<Vec<_>>();
            let mut s = match (kp, out.dnat_to) {
                (Some((svc, NoEndpointsView::Reject(rule))), None) => {
                    hint = Some(format!(
                        "the Service {} has no ready endpoints: check `kubectl get endpointslices -n {} -l kubernetes.io/service-name={}` and the pods' readiness",
                        svc.service,
                        svc.service.split('/').next().unwrap_or(""),
                        svc.service
                            .split('/')
                            .nth(1)
                            .and_then(|n| n.split(':').next())
                            .unwrap_or("")
                    ));
                    format!(
                        "REJECT by kube-proxy: {} has no endpoints ({rule})",
                        svc.service
                    )
                }
                (Some((svc, NoEndpointsView::DropNoLocal(rule))), None) => {
                    hint = Some(format!(
                        "{} has externalTrafficPolicy: Local and no endpoint on this node: MetalLB should announce the IP only from nodes running a pod of it (check the speaker on this node and `kubectl get pods -o wide`), or use externalTrafficPolicy: Cluster",
                        svc.service
                    ));
                    format!(
                        "DROP by kube-proxy: {} has no local endpoints ({rule})",
                        svc.service
                    )
                }
                _ => {
                    hint = Some(if by_counter.is_empty() {
                        format!(
                            "a firewall rule there dropped it (NetworkPolicy or host firewall): list DROP/REJECT rules with `iptables-save -c | grep -E 'DROP|REJECT'` or `nft -a list ruleset`{}",
                            if e.hook != NO_HOOK {
                                format!(" ({} hook)", hook_name(e.hook))
                            } else {
                                String::new()
                            }
                        )
                    } else {
                        "the rule above dropped it: a NetworkPolicy or host firewall rule; check why it matches this traffic".to_string()
                    });
                    "dropped by a netfilter rule".to_string()
                }
            };
            if !by_counter.is_empty() {
                s.push_str(&format!("; rule: {}", by_counter.join("; ")));
            }
            s
        }
        "IP_RPFILTER" => {
            let arrived = out.arrived_on.clone().unwrap_or_else(|| dev.clone());
            let (all, ifv, eff) = (ctx.rp_filter)(&arrived);
            let back = match reverse {
                Some((iface, Some(gw))) => format!("goes out {iface} via {gw}"),
                Some((iface, None)) => format!("goes out {iface}"),
                None => "does not go out that interface".to_string(),
            };
            let client = ip(&flow.saddr, flow.family);
            hint = Some(format!(
                "make the return path symmetric: route {client}'s network via {arrived}'s gateway, or source-based routing for traffic from the LB IP (`ip rule add from {} table N` + a default route via {arrived} in table N), or set rp_filter=2 (loose) on {arrived} and all",
                lb.ip()
            ));
            format!(
                "reverse-path filter: arrived on {arrived}, but the route back to {client} {back}; rp_filter is {} (all={all}, {arrived}={ifv})",
                rp_filter_name(eff)
            )
        }
        "NEIGH_FAILED" | "NEIGH_QUEUEFULL" | "NEIGH_DEAD" | "NEIGH_CREATEFAIL" => {
            let nh = route_gw.unwrap_or(pkt_dst.ip());
            hint = Some(format!(
                "check that {nh} is up and reachable on {dev} (`ip neigh show {nh}`, `ip route get {}`): a wrong or asymmetric route sends packets to a next hop nobody answers for",
                pkt_dst.ip()
            ));
            format!("next hop {nh} on {dev} did not answer ARP/ND (neighbour resolution failed)")
        }
        r if is_mtu(r) => {
            let (mtu, mtu_dev) = out_mtu.unwrap_or((e.mtu, dev.clone()));
            hint = Some(format!(
                "packet of {} bytes does not fit the MTU {} of {}: align the pod/overlay MTU with the path, or clamp TCP MSS",
                e.len,
                mtu,
                if mtu_dev.is_empty() {
                    "the next link".into()
                } else {
                    mtu_dev
                }
            ));
            format!(
                "too big for the path MTU ({} bytes, MTU {mtu}, DF set)",
                e.len
            )
        }
        "IP_INNOROUTES" | "IP_OUTNOROUTES" | "IP_INADDRERRORS" | "IP_INVALID_DEST" => {
            hint = Some(format!(
                "no route to {}: check `ip route get {}` on this node",
                pkt_dst.ip(),
                pkt_dst.ip()
            ));
            format!("no route to {}", pkt_dst.ip())
        }
        "NO_SOCKET" if pod => {
            hint = Some(format!(
                "nothing listens on {} in the pod: check the container port and the Service's targetPort",
                pkt_dst
            ));
            format!("no socket listening on {pkt_dst} in the pod")
        }
        "NO_SOCKET" => {
            hint = Some("the node itself received it and nothing listens there: the kube-proxy DNAT did not happen".into());
            format!("no socket on this node for {pkt_dst}")
        }
        "OTHERHOST" => "not addressed to this host's MAC (frame for another host)".to_string(),
        "IP_ROUTE_INPUT" => {
            hint = Some(format!(
                "check `ip route get {} from {} iif {}` on this node: no route, a martian source, or rp_filter",
                pkt_dst.ip(),
                src(&e.pkt).ip(),
                out.arrived_on.clone().unwrap_or_else(|| dev.clone())
            ));
            "the input routing decision refused it".to_string()
        }
        r if benign(r) => format!("{r} (normal TCP housekeeping)"),
        r => match ctx.drops.function(e) {
            Some(f) => format!("dropped in the kernel function {f} ({r})"),
            None => format!("dropped: {r}"),
        },
    };
    (
        at,
        DropSeen {
            ts: e.ts,
            tcp_flags: if e.pkt.proto == 6 { e.tcp_flags } else { 0 },
            reason,
            in_pod: pod,
            summary,
            hint,
        },
    )
}

/// Without kernel drop reasons, the freeing function gives a cause that the
/// packet and the routing then make precise: an input-route refusal whose
/// reverse route leaves by another interface is rp_filter, a forwarded
/// packet larger than its way out's MTU is too big. Returns the reason and,
/// for MTU drops, the MTU and interface of the way out.
fn refine_reason(
    reason: String,
    e: &Event,
    ctx: &Context,
    out: &Outcome,
    reverse: Option<&(String, Option<IpAddr>)>,
) -> (String, Option<(u32, String)>) {
    match reason.as_str() {
        "IP_ROUTE_INPUT" => match (reverse, &out.arrived_on) {
            (Some((back, _)), Some(arrived)) if back != arrived => ("IP_RPFILTER".into(), None),
            _ => (reason, None),
        },
        "IP_FORWARD" | "PKT_TOO_BIG" => {
            let way_out = ctx
                .net
                .route_to(dst(&e.pkt).ip())
                .and_then(|r| r.oif)
                .and_then(|i| ctx.net.ifaces.get(&i));
            match way_out {
                Some(i) if i.mtu != 0 && e.len > i.mtu => {
                    ("PKT_TOO_BIG".into(), Some((i.mtu, i.name.clone())))
                }
                _ => (reason, None),
            }
        }
        _ => (reason, None),
    }
}

/// Packets of one flow: (dir, seq) → its events in time order.
fn packets(events: &[Event]) -> BTreeMap<(u8, u16, bool), Vec<&Event>> {
    let mut m: BTreeMap<(u8, u16, bool), Vec<&Event>> = BTreeMap::new();
    for e in events {
        let untraced = e.flags & EV_UNTRACED != 0;
        // Each untraced drop is its own packet.
        let seq = if untraced { e.ts as u16 } else { e.seq };
        m.entry((e.dir, seq, untraced)).or_default().push(e);
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
    let svcs = services_for_port(ctx, lb.port(), flow.proto);
    let service = svcs.first().map(|s| ServiceInfo {
        name: s.service.clone(),
        kind: s.kind.clone(),
        chain: s.entry_chain.clone(),
        endpoints: s.endpoints.len(),
        local_endpoints: s
            .endpoints
            .iter()
            .any(|e| e.local.is_some())
            .then(|| s.endpoints.iter().filter(|e| e.local == Some(true)).count()),
        local_only: s.local_only,
    });

    let mut hops = Vec::new();
    let mut req: Vec<Outcome> = Vec::new();
    let mut rep: Vec<Outcome> = Vec::new();
    let mut later_drops: Vec<Outcome> = Vec::new();
    let mut shown_req = false;
    let mut shown_rep = false;
    for ((dir, _, untraced), evs) in packets(events) {
        let (h, o) = packet_hops(&evs, ctx, t0, &flow);
        let first_of_dir = if dir == DIR_REPLY {
            !shown_rep
        } else {
            !shown_req
        };
        if untraced {
            hops.extend(h);
            later_drops.push(o);
            continue;
        }
        if first_of_dir {
            hops.extend(h);
        } else {
            // Later packets: only what adds to the first one's path.
            hops.extend(
                h.into_iter()
                    .filter(|h| matches!(h.kind, HopKind::Dropped { .. } | HopKind::Reset { .. })),
            );
        }
        if dir == DIR_REPLY {
            shown_rep = true;
            rep.push(o);
        } else {
            shown_req = true;
            req.push(o);
        }
    }
    hops.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));

    // When the connection started closing: drops after that are aftermath
    // (conntrack calls late packets INVALID), not why it failed.
    let closing = events
        .iter()
        .filter(|e| {
            e.pkt.proto == 6 && e.tcp_flags & (TCP_FIN | TCP_RST) != 0 && e.flags & EV_UNTRACED == 0
        })
        .map(|e| e.ts)
        .min();
    let verdict = verdict(&flow, ctx, &svcs, &req, &rep, &later_drops, closing);
    let mut notes = Vec::new();
    if !ctx.netfilter_links {
        notes.push(
            "netfilter links unavailable on this kernel: NAT and routing hops are inferred".into(),
        );
    }
    if !ctx.kube_proxy_found {
        notes.push("no kube-proxy rules found on this node (iptables or nftables)".into());
    }
    Some(FlowReport {
        flow: FlowId {
            proto: proto_name(flow.proto),
            client: src(&flow),
            lb,
        },
        service,
        hops,
        verdict,
        counters,
        notes,
    })
}

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

fn verdict(
    flow: &Tuple,
    ctx: &Context,
    svcs: &[&ServiceView],
    req: &[Outcome],
    rep: &[Outcome],
    later: &[Outcome],
    closing: Option<u64>,
) -> Verdict {
    let lb = dst(flow);
    let v = |kind, summary: String, hint: Option<String>| Verdict {
        kind,
        summary,
        hint,
    };
    let reply_dropped = |d: DropSeen| {
        v(
            VerdictKind::Dropped,
            format!(
                "the pod answered, but its reply was dropped {}: {}",
                d_at(&d),
                d.summary
            ),
            d.hint,
        )
    };
    let bad = |o: &Outcome| {
        o.drop
            .as_ref()
            .filter(|d| !benign(&d.reason) && (!d.in_pod || d.reason != "NO_SOCKET"))
            .cloned()
    };
    // A later packet's drop matters unless the connection was already
    // closing, or the packet was itself a FIN/RST.
    let later_bad = later.iter().filter_map(bad).find(|d| {
        is_mtu(&d.reason)
            || (closing.is_none_or(|c| d.ts < c) && d.tcp_flags & (TCP_FIN | TCP_RST) == 0)
    });
    let arrived_on = req.iter().find_map(|o| o.arrived_on.clone());
    let reply_left = rep.iter().find_map(|o| match &o.left {
        Some((iface, role, nh)) if *role != IfRole::PodVeth => Some((iface.clone(), *nh)),
        _ => None,
    });
    // A client on the node itself: the answer ends in a local socket.
    let reply_local = rep.iter().any(|o| o.delivered_node);
    let pod_dnat = req.iter().find_map(|o| o.dnat_to);
    let in_pod = req.iter().any(|o| o.in_pod);

    // Too big for the path: even when TCP recovers through PMTU discovery,
    // the path is misconfigured (and UDP or blocked ICMP will not recover).
    let mtu = |o: &Outcome| bad(o).filter(|d| is_mtu(&d.reason));
    if let Some(d) = req.iter().chain(rep).chain(later).find_map(mtu) {
        return v(
            VerdictKind::Dropped,
            format!("packets of the flow dropped {}: {}", d_at(&d), d.summary),
            d.hint,
        );
    }
    let refused = req
        .iter()
        .any(|o| o.in_pod && (o.reset || o.drop.as_ref().is_some_and(|d| d.reason == "NO_SOCKET")));
    if refused {
        let to = pod_dnat
            .map(|p| p.to_string())
            .unwrap_or_else(|| "the pod".into());
        return v(
            VerdictKind::Refused,
            format!("reached the pod, which refused it: nothing listens on {to}"),
            Some("check the container's listening port and the Service's targetPort".into()),
        );
    }
    if let Some((iface, nh)) = &reply_left {
        if let Some(d) = rep.iter().find_map(bad) {
            return reply_dropped(d);
        }
        if let Some(d) = later_bad {
            return v(
                VerdictKind::Dropped,
                format!(
                    "answered, but later packets of the flow were dropped {}: {}",
                    d_at(&d),
                    d.summary
                ),
                d.hint,
            );
        }
        if let Some(a) = &arrived_on
            && a != iface
        {
            return v(
                VerdictKind::AnsweredAsymmetric,
                format!(
                    "reached the pod and it answered, but the reply left via {iface}{} while the request came in on {a}",
                    nh.map(|n| format!(" towards {n}")).unwrap_or_default()
                ),
                Some(format!(
                    "asymmetric return path: clients, firewalls or rp_filter on the way may drop it. Route {}'s network back via {a} (or use source-based routing for {})",
                    ip(&flow.saddr, flow.family),
                    lb.ip()
                )),
            );
        }
        let to = pod_dnat.map(|p| format!(" ({p})")).unwrap_or_default();
        return v(
            VerdictKind::Answered,
            format!("reached the pod{to} and it answered"),
            None,
        );
    }
    if let Some(d) = rep.iter().find_map(bad) {
        return reply_dropped(d);
    }
    if reply_local {
        let to = pod_dnat.map(|p| format!(" ({p})")).unwrap_or_default();
        return v(
            VerdictKind::Answered,
            format!("reached the pod{to} and its answer reached the client on this node"),
            None,
        );
    }
    if let Some(d) = req.iter().find_map(bad) {
        if pod_dnat.is_none() && svcs.is_empty() && d.reason != "NETFILTER_DROP" {
            return no_rule(flow, ctx);
        }
        return v(
            VerdictKind::Dropped,
            format!("dropped {}: {}", d_at(&d), d.summary),
            d.hint,
        );
    }
    if let Some(d) = later_bad {
        return v(
            VerdictKind::Dropped,
            format!(
                "later packets of the flow dropped {}: {}",
                d_at(&d),
                d.summary
            ),
            d.hint,
        );
    }
    if in_pod {
        let to = pod_dnat.map(|p| format!(" ({p})")).unwrap_or_default();
        return v(
            VerdictKind::NoAnswer,
            format!("reached the pod{to}, no answer seen"),
            Some("the pod received the packet but did not answer: check the application (`kubectl logs`), and the pod's own route back".into()),
        );
    }
    if pod_dnat.is_none() && svcs.is_empty() && !req.is_empty() {
        return no_rule(flow, ctx);
    }
    if let Some((iface, role, nh)) = req.iter().find_map(|o| o.left.clone())
        && role != IfRole::PodVeth
    {
        let towards = nh
            .map(|n| n.to_string())
            .unwrap_or_else(|| "the network".into());
        let what = if role == IfRole::Overlay {
            "an overlay tunnel"
        } else {
            "the uplink"
        };
        return v(
            VerdictKind::LeftNode,
            format!(
                "left this node via {what} {iface} towards {towards}: the endpoint{} is on another node",
                pod_dnat.map(|p| format!(" {p}")).unwrap_or_default()
            ),
            Some(format!(
                "trace it on the node behind {towards} (`lbpath watch {}` there)",
                lb.ip()
            )),
        );
    }
    if req.iter().any(|o| o.delivered_node) {
        return v(
            VerdictKind::Local,
            "delivered to a socket on this node".into(),
            None,
        );
    }
    v(
        VerdictKind::Incomplete,
        if req.is_empty() {
            "only the reply direction was seen".into()
        } else {
            "no drop seen, and no delivery either".into()
        },
        None,
    )
}

fn no_rule(flow: &Tuple, ctx: &Context) -> Verdict {
    let lb = dst(flow);
    let extra = if ctx.kube_proxy_found {
        ""
    } else {
        " (no kube-proxy ruleset found on this node at all)"
    };
    Verdict {
        kind: VerdictKind::NoRule,
        summary: format!(
            "no kube-proxy rule for {lb} ({}){extra}: nothing DNATed it",
            proto_name(flow.proto)
        ),
        hint: Some(format!(
            "is the Service there and does it have endpoints? `kubectl get svc -A -o wide | grep {}`; is kube-proxy running on this node?",
            lb.ip()
        )),
    }
}

fn is_mtu(reason: &str) -> bool {
    matches!(
        reason,
        "PKT_TOO_BIG" | "FRAG_TOO_FAR" | "FRAG_REASM_TIMEOUT" | "DUP_FRAG"
    )
}

fn d_at(d: &DropSeen) -> &'static str {
    if d.in_pod {
        "in the pod"
    } else {
        "on this node"
    }
}

#[cfg(test)]
mod tests;
