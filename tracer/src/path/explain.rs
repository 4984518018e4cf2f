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
    kubeproxy::{NoEndpoints, ServicePort},
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
            // The IP layer's input device: a bridged or bonded NIC's master.
            let arrived = ctx
                .net
                .l3_name(out.arrived_on.as_deref().unwrap_or(dev.as_str()));
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
            let iif = ctx
                .net
                .l3_name(out.arrived_on.as_deref().unwrap_or(dev.as_str()));
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
        _ if hairpin_off(ctx, flow, out, &dev) => (
            format!(
                "a pod reaching its own Service: the bridge would have to send it back out {dev}, the port it came in on, and {dev} has hairpin mode off"
            ),
            Hint::HairpinOff { port: &dev }.text(),
        ),
        r => match ctx.drops.function(e) {
            Some(f) => (format!("dropped in the kernel function {f} ({r})"), None),
            None => (format!("dropped: {r}"), None),
        },
    }
}

/// A drop on the bridge port the packet came in on, after a DNAT back to
/// its own client's address (a pod reaching itself through its Service),
/// where that port has hairpin mode off: the bridge does not send a frame
/// back out the port it came in on.
fn hairpin_off(ctx: &Context, flow: &Tuple, out: &Outcome, dev: &str) -> bool {
    let Some(to) = out.dnat_to else {
        return false;
    };
    to.ip() == src(flow).ip()
        && out.arrived_on.as_deref() == Some(dev)
        && ctx
            .net
            .by_name(dev)
            .is_some_and(|port| port.hairpin == Some(false))
}

/// A netfilter drop: kube-proxy turning the Service away (no endpoints, or
/// its loadBalancerSourceRanges firewall), or a firewall rule (named when
/// its counter moved).
fn netfilter(e: &Event, ctx: &Context, flow: &Tuple, out: &Outcome) -> (String, Option<String>) {
    let lb = dst(flow);
    let svcs = services_for_port(ctx, lb, flow.proto);
    let kp = svcs
        .iter()
        .find_map(|s| s.no_endpoints.as_ref().map(|n| (s, n)));
    let fw = source_range_drop(e, ctx, flow, out, &svcs);
    let by_counter: Vec<String> = ctx
        .rule_hits
        .iter()
        .filter(|r| fw.is_none_or(|(s, _)| s.firewall_rule.as_deref() != Some(r.rule.as_str())))
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
    let (mut s, hint) = match (kp, out.dnat_to, fw) {
        (_, None, Some((svc, how))) => {
            let client = src(flow).ip();
            // nft's rule text starts with "rule" already.
            let rule = match svc.firewall_rule.as_deref() {
                Some(r) if r.starts_with("rule ") => format!("; {r}"),
                Some(r) => format!("; rule: {r}"),
                None => String::new(),
            };
            (
                format!(
                    "DROP by kube-proxy's load-balancer firewall: {client} is not in {}'s loadBalancerSourceRanges ({}) and was {how}{rule}",
                    svc.service,
                    svc.source_ranges.join(", ")
                ),
                Hint::SourceRanges {
                    service: &svc.service,
                    client,
                }
                .text(),
            )
        }
        (Some((svc, NoEndpoints::Reject { rule })), None, _) => (
            format!(
                "REJECT by kube-proxy: {} has no endpoints ({rule})",
                svc.service
            ),
            Hint::NoEndpoints {
                service: &svc.service,
            }
            .text(),
        ),
        (Some((svc, NoEndpoints::DropNoLocal { rule })), None, _) => (
            format!(
                "DROP by kube-proxy: {} has no local endpoints ({rule})",
                svc.service
            ),
            Hint::NoLocalEndpoint {
                service: &svc.service,
            }
            .text(),
        ),
        _ if by_counter.is_empty()
            && let Some(ct) = conntrack_drop(e, ctx) =>
        {
            ct
        }
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

/// A drop no rule counted, in the band of conntrack or its confirm (or at
/// an unknown point while conntrack says it was full): conntrack's own,
/// named with its figures.
fn conntrack_drop(e: &Event, ctx: &Context) -> Option<(String, Option<String>)> {
    let band = (e.hook != NO_HOOK).then(|| ctx.plan.band_after(e.hook, e.pos));
    let at = band.as_ref().and_then(|b| {
        b.occupants
            .iter()
            .find(|o| o.name.starts_with("conntrack"))
            .map(|o| o.name.clone())
    });
    // The figures (procfs) only where they can matter: conntrack's own
    // band, or a drop at an unknown point.
    if at.is_none() && band.is_some() {
        return None;
    }
    let fig = (ctx.conntrack)();
    let full = fig.is_some_and(|f| f.full());
    if at.is_none() && !full {
        return None;
    }
    let at = at.map(|n| format!(" ({n})")).unwrap_or_default();
    let Some(f) = fig else {
        return Some((
            format!("dropped by conntrack{at}"),
            Hint::ConntrackInsertFailed.text(),
        ));
    };
    let s = |n: u64| if n == 1 { "" } else { "s" };
    Some(if full {
        (
            format!(
                "dropped by conntrack{at}: the table is full ({} of {} entries; {} drop{} counted since lbpath started)",
                f.count,
                f.max,
                f.drop,
                s(f.drop)
            ),
            Hint::ConntrackFull {
                count: f.count,
                max: f.max,
            }
            .text(),
        )
    } else if at.contains("confirm") || f.insert_failed > 0 || f.drop > 0 {
        (
            format!(
                "dropped by conntrack{at}: the connection's entry could not be inserted, it clashed with an existing one ({} insert failure{}, {} drop{} counted since lbpath started)",
                f.insert_failed,
                s(f.insert_failed),
                f.drop,
                s(f.drop)
            ),
            Hint::ConntrackInsertFailed.text(),
        )
    } else {
        (
            format!(
                "dropped by conntrack{at} (table {} of {}, no drop counted)",
                f.count, f.max
            ),
            Hint::ConntrackInsertFailed.text(),
        )
    })
}

/// kube-proxy's loadBalancerSourceRanges firewall, told from the rules'
/// structure (nftables' have no counters): the packet was not DNATed (the
/// firewall lets only the ranges through to the DNAT), its client is
/// outside the ranges of the address it was sent to, and it was dropped in
/// the band of a base chain the firewall's drop hangs off — or the firewall
/// rule's own counter moved. The Service port and how it was placed.
fn source_range_drop<'a>(
    e: &Event,
    ctx: &Context,
    flow: &Tuple,
    out: &Outcome,
    svcs: &[&'a ServicePort],
) -> Option<(&'a ServicePort, &'static str)> {
    if out.dnat_to.is_some() {
        return None;
    }
    let (lb, client) = (dst(flow).ip(), src(flow).ip());
    let svc = *svcs.iter().find(|s| {
        s.address == lb && !s.source_ranges.is_empty() && !in_ranges(client, &s.source_ranges)
    })?;
    let counted = ctx
        .rule_hits
        .iter()
        .any(|r| svc.firewall_rule.as_deref() == Some(r.rule.as_str()));
    let placed = e.hook != NO_HOOK
        && ctx
            .plan
            .band_after(e.hook, e.pos)
            .occupants
            .iter()
            .any(|o| {
                o.chain.as_ref().is_some_and(|(table, chain)| {
                    svc.firewall_chains
                        .iter()
                        .any(|c| &c.table == table && &c.chain == chain)
                })
            });
    match (placed, counted) {
        (true, true) => Some((
            svc,
            "dropped where kube-proxy checks them (its rule's counter moved too)",
        )),
        // Another rule's counter moved: that rule, not the firewall, dropped it.
        (true, false) if ctx.rule_hits.is_empty() => {
            Some((svc, "dropped where kube-proxy checks them"))
        }
        (_, true) => Some((svc, "dropped by that rule (its counter moved)")),
        _ => None,
    }
}

/// Whether `ip` is in one of loadBalancerSourceRanges' CIDRs (a bare
/// address counts as a host).
fn in_ranges(ip: IpAddr, ranges: &[String]) -> bool {
    ranges.iter().any(|r| match r.parse::<ipnet::IpNet>() {
        Ok(n) => n.contains(&ip),
        Err(_) => r.parse::<IpAddr>().is_ok_and(|a| a == ip),
    })
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
            (Some((back, _)), Some(arrived)) if *back != ctx.net.l3_name(arrived) => {
                ("IP_RPFILTER".into(), None)
            }
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

#[cfg(test)]
mod tests {
    use super::in_ranges;

    #[test]
    fn source_ranges_match_cidrs_and_hosts() {
        let ranges = ["198.51.100.0/24".to_string(), "192.0.2.7".to_string()];
        let ip = |s: &str| s.parse().unwrap();
        assert!(in_ranges(ip("198.51.100.10"), &ranges));
        assert!(in_ranges(ip("192.0.2.7"), &ranges));
        assert!(!in_ranges(ip("192.0.2.10"), &ranges));
        assert!(!in_ranges(ip("2001:db8::1"), &ranges));
        assert!(!in_ranges(ip("192.0.2.10"), &["not a range".to_string()]));
    }
}
