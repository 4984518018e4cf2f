//! Where and why a packet was dropped, in words, with what to do about it.

use std::net::IpAddr;

use tracer_common::{Event, NO_HOOK, Tuple};

use super::{
    Context, in_pod, services_for_port,
    walk::{DropSeen, Outcome},
};
use crate::{
    events::{dst, ifname, ip, src},
    hints::Hint,
    kubeproxy::NoEndpoints,
    netinfo::rp_filter_name,
    nfplan::hook_name,
};

/// Drop reasons that are a TCP endpoint's normal housekeeping, not a broken path.
pub(super) fn benign(reason: &str) -> bool {
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

pub(super) fn is_mtu(reason: &str) -> bool {
    matches!(
        reason,
        "PKT_TOO_BIG" | "FRAG_TOO_FAR" | "FRAG_REASM_TIMEOUT" | "DUP_FRAG"
    )
}

/// Where (the first string) and why a packet was dropped.
pub(super) fn drop(
    e: &Event,
    ctx: &Context,
    flow: &Tuple,
    out: &Outcome,
    reverse: Option<&(String, Option<IpAddr>)>,
    route_gw: Option<IpAddr>,
) -> (String, DropSeen) {
    let (reason, out_mtu) = refine_reason(ctx.drops.reason(e), e, ctx, out, reverse);
    let at = location(e, ctx, &reason);
    let (summary, hint) = cause(e, ctx, flow, out, &reason, reverse, route_gw, out_mtu);
    (
        at,
        DropSeen {
            ts: e.ts,
            tcp_flags: if e.pkt.proto == 6 { e.tcp_flags } else { 0 },
            in_pod: in_pod(e, ctx),
            reason,
            summary,
            hint,
        },
    )
}

/// Where it happened: in the pod, in a netfilter band, in the routing
/// decision, resolving a neighbour, or on an interface. The last netfilter
/// point the packet passed locates netfilter drops; other drops happen in
/// the stack between hooks.
fn location(e: &Event, ctx: &Context, reason: &str) -> String {
    let dev = ifname(&e.ifname);
    let after = if e.hook != NO_HOOK {
        format!(" after {}", hook_name(e.hook))
    } else {
        String::new()
    };
    if in_pod(e, ctx) {
        if dev.is_empty() {
            "in the pod".into()
        } else {
            format!("in the pod ({dev})")
        }
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
    }
}

/// The cause in words, and the advice for it.
#[allow(clippy::too_many_arguments)]
fn cause(
    e: &Event,
    ctx: &Context,
    flow: &Tuple,
    out: &Outcome,
    reason: &str,
    reverse: Option<&(String, Option<IpAddr>)>,
    route_gw: Option<IpAddr>,
    out_mtu: Option<(u32, String)>,
) -> (String, Option<String>) {
    let dev = ifname(&e.ifname);
    let pkt_dst = dst(&e.pkt);
    let pod = in_pod(e, ctx);
    match reason {
        "NETFILTER_DROP" => netfilter(e, ctx, flow, out),
        "IP_RPFILTER" => {
            let arrived = out.arrived_on.clone().unwrap_or_else(|| dev.clone());
            let (all, ifv, eff) = (ctx.rp_filter)(&arrived);
            let back = match reverse {
                Some((iface, Some(gw))) => format!("goes out {iface} via {gw}"),
                Some((iface, None)) => format!("goes out {iface}"),
                None => "does not go out that interface".to_string(),
            };
            let client = ip(&flow.saddr, flow.family);
            let hint = Hint::RpFilter {
                client,
                arrived: &arrived,
                lb: dst(flow).ip(),
            };
            (
                format!(
                    "reverse-path filter: arrived on {arrived}, but the route back to {client} {back}; rp_filter is {} (all={all}, {arrived}={ifv})",
                    rp_filter_name(eff)
                ),
                hint.text(),
            )
        }
        "NEIGH_FAILED" | "NEIGH_QUEUEFULL" | "NEIGH_DEAD" | "NEIGH_CREATEFAIL" => {
            let nh = route_gw.unwrap_or(pkt_dst.ip());
            let hint = Hint::NeighbourFailed {
                next_hop: nh,
                dev: &dev,
                dst: pkt_dst.ip(),
            };
            (
                format!(
                    "next hop {nh} on {dev} did not answer ARP/ND (neighbour resolution failed)"
                ),
                hint.text(),
            )
        }
        r if is_mtu(r) => {
            let (mtu, mtu_dev) = out_mtu.unwrap_or((e.mtu, dev.clone()));
            let hint = Hint::Mtu {
                len: e.len,
                mtu,
                dev: &mtu_dev,
            };
            (
                format!(
                    "too big for the path MTU ({} bytes, MTU {mtu}, DF set)",
                    e.len
                ),
                hint.text(),
            )
        }
        "IP_INNOROUTES" | "IP_OUTNOROUTES" | "IP_INADDRERRORS" | "IP_INVALID_DEST" => (
            format!("no route to {}", pkt_dst.ip()),
            Hint::NoRoute { dst: pkt_dst.ip() }.text(),
        ),
        "NO_SOCKET" if pod => (
            format!("no socket listening on {pkt_dst} in the pod"),
            Hint::PodNotListening { addr: pkt_dst }.text(),
        ),
        "NO_SOCKET" => (
            format!("no socket on this node for {pkt_dst}"),
            Hint::NodeNotListening.text(),
        ),
        "OTHERHOST" => (
            "not addressed to this host's MAC (frame for another host)".to_string(),
            None,
        ),
        "IP_ROUTE_INPUT" => {
            let iif = out.arrived_on.clone().unwrap_or_else(|| dev.clone());
            let hint = Hint::InputRoute {
                dst: pkt_dst.ip(),
                src: src(&e.pkt).ip(),
                iif: &iif,
            };
            (
                "the input routing decision refused it".to_string(),
                hint.text(),
            )
        }
        r if benign(r) => (format!("{r} (normal TCP housekeeping)"), None),
        r => match ctx.drops.function(e) {
            Some(f) => (format!("dropped in the kernel function {f} ({r})"), None),
            None => (format!("dropped: {r}"), None),
        },
    }
}

/// A netfilter drop: kube-proxy turning the Service away, or a firewall
/// rule (named when its counter moved).
fn netfilter(e: &Event, ctx: &Context, flow: &Tuple, out: &Outcome) -> (String, Option<String>) {
    let lb = dst(flow);
    let svcs = services_for_port(ctx, lb.port(), flow.proto);
    let kp = svcs
        .iter()
        .find_map(|s| s.no_endpoints.as_ref().map(|n| (s, n)));
    let by_counter: Vec<String> = ctx
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
        .collect();
    let (mut s, hint) = match (kp, out.dnat_to) {
        (Some((svc, NoEndpoints::Reject { rule })), None) => (
            format!(
                "REJECT by kube-proxy: {} has no endpoints ({rule})",
                svc.service
            ),
            Hint::NoEndpoints {
                service: &svc.service,
            }
            .text(),
        ),
        (Some((svc, NoEndpoints::DropNoLocal { rule })), None) => (
            format!(
                "DROP by kube-proxy: {} has no local endpoints ({rule})",
                svc.service
            ),
            Hint::NoLocalEndpoint {
                service: &svc.service,
            }
            .text(),
        ),
        _ => {
            let hint = if by_counter.is_empty() {
                Hint::Firewall {
                    hook: (e.hook != NO_HOOK).then(|| hook_name(e.hook)),
                }
            } else {
                Hint::FirewallRule
            };
            ("dropped by a netfilter rule".to_string(), hint.text())
        }
    };
    if !by_counter.is_empty() {
        s.push_str(&format!("; rule: {}", by_counter.join("; ")));
    }
    (s, hint)
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
