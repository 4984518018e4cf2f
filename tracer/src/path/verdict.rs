//! A flow's verdict from what happened to its packets, most telling first:
//! an MTU drop, a refusal, an answer (and how it left), a drop, silence in
//! the pod, no kube-proxy rule, another node, local delivery.

use std::net::{IpAddr, SocketAddr};

use tracer_common::Tuple;

use super::{
    Context,
    explain::{benign, is_mtu},
    walk::{DropSeen, Outcome},
};
use crate::{
    events::{dst, ip, proto_name},
    hints::Hint,
    kubeproxy::ServicePort,
    model::{Verdict, VerdictKind},
    netinfo::IfRole,
};

pub(super) const TCP_FIN: u8 = 0x01;
pub(super) const TCP_RST: u8 = 0x04;

fn v(kind: VerdictKind, summary: String, hint: Option<String>) -> Verdict {
    Verdict {
        kind,
        summary,
        hint,
    }
}

/// A drop that says the path is broken: not housekeeping, and not the
/// pod's own refusal (that is its own verdict).
fn bad(o: &Outcome) -> Option<DropSeen> {
    o.drop
        .as_ref()
        .filter(|d| !benign(&d.reason) && (!d.in_pod || d.reason != "NO_SOCKET"))
        .cloned()
}

fn d_at(d: &DropSeen) -> &'static str {
    if d.in_pod {
        "in the pod"
    } else {
        "on this node"
    }
}

/// The packets of one flow, per direction, and what the verdict needs of the flow.
pub(super) struct Packets<'a> {
    pub req: &'a [Outcome],
    pub rep: &'a [Outcome],
    /// Drops of packets past the trace budget.
    pub later: &'a [Outcome],
    /// When the connection started closing: drops after that are aftermath
    /// (conntrack calls late packets INVALID), not why it failed.
    pub closing: Option<u64>,
}

pub(super) fn verdict(flow: &Tuple, ctx: &Context, svcs: &[&ServicePort], p: &Packets) -> Verdict {
    let pod_dnat = p.req.iter().find_map(|o| o.dnat_to);
    // Too big for the path: even when TCP recovers through PMTU discovery,
    // the path is misconfigured (and UDP or blocked ICMP will not recover).
    let mtu = |o: &Outcome| bad(o).filter(|d| is_mtu(&d.reason));
    if let Some(d) = p.req.iter().chain(p.rep).chain(p.later).find_map(mtu) {
        return v(
            VerdictKind::Dropped,
            format!("packets of the flow dropped {}: {}", d_at(&d), d.summary),
            d.hint,
        );
    }
    let refused = p
        .req
        .iter()
        .any(|o| o.in_pod && (o.reset || o.drop.as_ref().is_some_and(|d| d.reason == "NO_SOCKET")));
    if refused {
        let to = pod_dnat
            .map(|p| p.to_string())
            .unwrap_or_else(|| "the pod".into());
        return v(
            VerdictKind::Refused,
            format!("reached the pod, which refused it: nothing listens on {to}"),
            Hint::Refused.text(),
        );
    }
    // This node's own TCP stack refused it: the LB IP is local and nothing
    // (no DNAT, no IPVS, no socket) took it.
    let node_refused = p.req.iter().any(|o| {
        !o.in_pod && (o.reset || o.drop.as_ref().is_some_and(|d| d.reason == "NO_SOCKET"))
    });
    if node_refused && pod_dnat.is_none() {
        if svcs.is_empty() || ctx.rules_degraded.is_some() {
            let mut r = no_rule(flow, ctx);
            r.summary += ", and this node refused it with a reset (the address is local here)";
            return r;
        }
        return v(
            VerdictKind::Refused,
            format!(
                "refused by this node: {} is local here and nothing takes it, so the node answered with a reset",
                dst(flow)
            ),
            Hint::NodeNotListening.text(),
        );
    }
    if let Some(verdict) = answered(flow, p, pod_dnat) {
        return verdict;
    }
    if let Some(verdict) = stale_conntrack(flow, ctx, svcs, p, pod_dnat) {
        return verdict;
    }
    if let Some(d) = p.req.iter().find_map(bad) {
        if pod_dnat.is_none() && svcs.is_empty() && d.reason != "NETFILTER_DROP" {
            return no_rule(flow, ctx);
        }
        return v(
            VerdictKind::Dropped,
            format!("dropped {}: {}", d_at(&d), d.summary),
            d.hint,
        );
    }
    if let Some(d) = later_bad(p) {
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
    unanswered(flow, ctx, svcs, p, pod_dnat)
}

/// An unanswered flow whose established conntrack entry DNATs it to an
/// address that is no longer an endpoint of its Service (the pod went, the
/// Service moved on, the entry stayed: UDP clients that keep their port).
fn stale_conntrack(
    flow: &Tuple,
    ctx: &Context,
    svcs: &[&ServicePort],
    p: &Packets,
    pod_dnat: Option<SocketAddr>,
) -> Option<Verdict> {
    let to = pod_dnat?;
    if !p.req.iter().any(|o| o.ct_established) || svcs.is_empty() || ctx.rules_degraded.is_some() {
        return None;
    }
    let now: Vec<SocketAddr> = svcs
        .iter()
        .flat_map(|s| s.endpoints.iter().map(|e| SocketAddr::new(e.ip, e.port)))
        .collect();
    if now.contains(&to) {
        return None;
    }
    let list = if now.is_empty() {
        "it has none now".to_string()
    } else {
        let l: Vec<String> = now.iter().map(|a| a.to_string()).collect();
        format!("now {}", l.join(", "))
    };
    let what = match p.req.iter().find_map(bad) {
        Some(d) => format!("dropped {}: {}", d_at(&d), d.summary),
        None => "no answer seen".to_string(),
    };
    Some(v(
        if what.starts_with("dropped") {
            VerdictKind::Dropped
        } else {
            VerdictKind::NoAnswer
        },
        format!(
            "a stale conntrack entry: it DNATs {} to {to}, which is no longer an endpoint of {} ({list}); {what}",
            dst(flow),
            svcs[0].service
        ),
        Hint::StaleConntrack {
            proto: &proto_name(flow.proto),
            client: super::src(flow),
            lb: dst(flow),
            target: to,
        }
        .text(),
    ))
}

/// A later packet's drop matters unless the connection was already
/// closing, or the packet was itself a FIN/RST.
fn later_bad(p: &Packets) -> Option<DropSeen> {
    p.later.iter().filter_map(bad).find(|d| {
        is_mtu(&d.reason)
            || (p.closing.is_none_or(|c| d.ts < c) && d.tcp_flags & (TCP_FIN | TCP_RST) == 0)
    })
}

/// The pod's answer left the node (or reached a client on the node), or
/// its reply was dropped.
fn answered(flow: &Tuple, p: &Packets, pod_dnat: Option<SocketAddr>) -> Option<Verdict> {
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
    let to = pod_dnat.map(|p| format!(" ({p})")).unwrap_or_default();
    let reply_left = p.rep.iter().find_map(|o| match &o.left {
        Some((iface, role, nh)) if *role != IfRole::PodVeth || o.left_to_client_pod => {
            Some((iface.clone(), *nh))
        }
        _ => None,
    });
    let Some((iface, nh)) = reply_left else {
        if let Some(d) = p.rep.iter().find_map(bad) {
            return Some(reply_dropped(d));
        }
        // A client on the node itself: the answer ends in a local socket.
        return p.rep.iter().any(|o| o.delivered_node).then(|| {
            v(
                VerdictKind::Answered,
                format!("reached the pod{to} and its answer reached the client on this node"),
                None,
            )
        });
    };
    if let Some(d) = p.rep.iter().find_map(bad) {
        return Some(reply_dropped(d));
    }
    // A reset is a refusal, not an answer.
    let left: Vec<&Outcome> = p.rep.iter().filter(|o| o.left.is_some()).collect();
    if left.iter().all(|o| o.tcp_flags & TCP_RST != 0) {
        let by = if pod_dnat.is_some() {
            format!("the pod{to}")
        } else {
            "the host behind the address".into()
        };
        return Some(v(
            VerdictKind::Refused,
            format!("refused: {by} answered only with a reset"),
            Hint::Refused.text(),
        ));
    }
    if let Some(d) = later_bad(p) {
        return Some(v(
            VerdictKind::Dropped,
            format!(
                "answered, but later packets of the flow were dropped {}: {}",
                d_at(&d),
                d.summary
            ),
            d.hint,
        ));
    }
    let arrived_on = p.req.iter().find_map(|o| o.arrived_on.clone());
    if let Some(a) = &arrived_on
        && *a != iface
    {
        let lb = dst(flow).ip();
        return Some(v(
            VerdictKind::AnsweredAsymmetric,
            format!(
                "reached the pod and it answered, but the reply left via {iface}{} while the request came in on {a}",
                nh.map(|n| format!(" towards {n}")).unwrap_or_default()
            ),
            Hint::Asymmetric {
                client: ip(&flow.saddr, flow.family),
                arrived: a,
                lb,
            }
            .text(),
        ));
    }
    Some(v(
        VerdictKind::Answered,
        format!("reached the pod{to} and it answered"),
        None,
    ))
}

/// Nothing came back and nothing was dropped: where did it go?
fn unanswered(
    flow: &Tuple,
    ctx: &Context,
    svcs: &[&ServicePort],
    p: &Packets,
    pod_dnat: Option<SocketAddr>,
) -> Verdict {
    let to = pod_dnat.map(|p| format!(" ({p})")).unwrap_or_default();
    if p.req.iter().any(|o| o.in_pod) {
        return v(
            VerdictKind::NoAnswer,
            format!("reached the pod{to}, no answer seen"),
            Hint::PodSilent.text(),
        );
    }
    if pod_dnat.is_none() && svcs.is_empty() && !p.req.is_empty() {
        return no_rule(flow, ctx);
    }
    if let Some((iface, role, nh)) = p.req.iter().find_map(|o| o.left.clone())
        && role != IfRole::PodVeth
    {
        return left_node(flow, &iface, role, nh, pod_dnat);
    }
    if p.req.iter().any(|o| o.delivered_node) {
        return v(
            VerdictKind::Local,
            "delivered to a socket on this node".into(),
            None,
        );
    }
    v(
        VerdictKind::Incomplete,
        if p.req.is_empty() {
            "only the reply direction was seen".into()
        } else {
            "no drop seen, and no delivery either".into()
        },
        None,
    )
}

fn left_node(
    flow: &Tuple,
    iface: &str,
    role: IfRole,
    nh: Option<IpAddr>,
    pod_dnat: Option<SocketAddr>,
) -> Verdict {
    let towards = nh
        .map(|n| n.to_string())
        .unwrap_or_else(|| "the network".into());
    let what = if role == IfRole::Overlay {
        "an overlay tunnel"
    } else {
        "the uplink"
    };
    v(
        VerdictKind::LeftNode,
        format!(
            "left this node via {what} {iface} towards {towards}: the endpoint{} is on another node",
            pod_dnat.map(|p| format!(" {p}")).unwrap_or_default()
        ),
        Hint::LeftNode {
            towards: &towards,
            lb: dst(flow).ip(),
        }
        .text(),
    )
}

pub(super) fn no_rule(flow: &Tuple, ctx: &Context) -> Verdict {
    let lb = dst(flow);
    if let Some(why) = ctx.rules_degraded {
        // Not DNATed, but whether a rule should have done it is unknown.
        return v(
            VerdictKind::Incomplete,
            format!(
                "nothing DNATed {lb} ({}), and the node's rules could not all be read ({why}): whether kube-proxy has a rule for it is unknown",
                proto_name(flow.proto)
            ),
            Hint::RulesUnreadable.text(),
        );
    }
    let extra = if ctx.kube_proxy_found {
        ""
    } else {
        " (no kube-proxy ruleset found on this node at all)"
    };
    v(
        VerdictKind::NoRule,
        format!(
            "no kube-proxy rule for {lb} ({}){extra}: nothing DNATed it",
            proto_name(flow.proto)
        ),
        Hint::NoRule { lb: lb.ip() }.text(),
    )
}
