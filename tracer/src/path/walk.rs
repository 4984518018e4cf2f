//! One packet's events, in time order, to its hops and what happened to it
//! ([`Outcome`]): a walk with one method per kind of event.

use std::net::{IpAddr, SocketAddr};

use tracer_common::{
    DIR_REPLY, EV_UNTRACED, Event, Kind, NF_INET_FORWARD, NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT,
    NF_INET_PRE_ROUTING, NO_HOOK, Tuple,
};

use super::{Context, explain, in_pod};
use crate::{
    events::{dst, ifname, ip, src},
    model::*,
    netinfo::IfRole,
    nfplan::hook_name,
};

/// What happened to one packet, for the verdict.
#[derive(Debug, Default, Clone)]
pub(super) struct Outcome {
    pub arrived_on: Option<String>,
    pub dnat_to: Option<SocketAddr>,
    /// Last interface it was sent on in the node's namespace (not a bridge), with its role.
    pub left: Option<(String, IfRole, Option<IpAddr>)>,
    pub in_pod: bool,
    pub delivered_pod: bool,
    pub delivered_node: bool,
    pub reset: bool,
    pub drop: Option<DropSeen>,
    /// TCP flags of the packet (as first seen).
    pub tcp_flags: u8,
    /// A reply sent into a pod veth to the flow's own client: the client
    /// is a pod on this node (hairpin, or a pod using the LB IP).
    pub left_to_client_pod: bool,
    /// Its conntrack entry was already established when it arrived: any
    /// DNAT is the entry's, bound when the connection began.
    pub ct_established: bool,
}

#[derive(Debug, Clone)]
pub(super) struct DropSeen {
    pub ts: u64,
    pub tcp_flags: u8,
    pub reason: String,
    pub in_pod: bool,
    pub summary: String,
    pub hint: Option<String>,
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

pub(super) struct PacketWalk<'c, 'a> {
    ctx: &'c Context<'a>,
    flow: &'c Tuple,
    t0: u64,
    /// When the packet was first seen (conntrack attaches at the first hook).
    first_ts: u64,
    dir: Dir,
    packet: u16,
    hops: Vec<Hop>,
    out: Outcome,
    /// The last netfilter point that saw it: hook, position, tuple there.
    last_nf: Option<(u8, u8, Tuple)>,
    /// The tuple NAT is measured from when no netfilter point sees it.
    first_tuple: Option<Tuple>,
    last_tuple: Option<Tuple>,
    ct_done: bool,
    route_done: bool,
    sent: bool,
    /// Routing lookups since the last PREROUTING/OUTPUT point, waiting for the decision.
    fibs: Vec<&'c Event>,
    reverse_route: Option<(String, Option<IpAddr>)>,
    route_gw: Option<IpAddr>,
}

impl<'c, 'a> PacketWalk<'c, 'a> {
    /// Hops of one packet (events sorted by time, all of the same packet).
    pub fn run(
        evs: &[&'c Event],
        ctx: &'c Context<'a>,
        t0: u64,
        flow: &'c Tuple,
    ) -> (Vec<Hop>, Outcome) {
        let first = evs[0];
        let mut w = PacketWalk {
            ctx,
            flow,
            t0,
            first_ts: first.ts,
            dir: if first.dir == DIR_REPLY {
                Dir::Reply
            } else {
                Dir::Request
            },
            packet: first.seq,
            hops: Vec::new(),
            out: Outcome::default(),
            last_nf: None,
            first_tuple: None,
            last_tuple: None,
            ct_done: false,
            route_done: false,
            sent: false,
            fibs: Vec::new(),
            reverse_route: None,
            route_gw: None,
        };
        for e in evs {
            w.event(e);
        }
        (w.hops, w.out)
    }

    fn push(&mut self, ts: u64, kind: HopKind, inferred: bool) {
        self.hops.push(Hop {
            t_ms: ts.saturating_sub(self.t0) as f64 / 1e6,
            dir: self.dir,
            packet: self.packet,
            kind,
            inferred,
        });
    }

    fn event(&mut self, e: &'c Event) {
        if e.pkt.family != 0 && self.first_tuple.is_none() && e.kind != Kind::Fib as u8 {
            self.first_tuple = Some(e.pkt);
            self.out.tcp_flags = e.tcp_flags;
        }
        match Kind::from_u8(e.kind) {
            Some(Kind::Arrive) => self.arrive(e),
            Some(Kind::Nf) => self.netfilter(e),
            Some(Kind::Fib) => self.fib(e),
            Some(Kind::Xmit) => self.xmit(e),
            Some(Kind::Consume) => self.consume(e),
            Some(Kind::Reset) => self.reset(e),
            Some(Kind::Drop) => self.drop(e),
            _ => {}
        }
    }

    fn arrive(&mut self, e: &Event) {
        let ctx = self.ctx;
        if in_pod(e, ctx) {
            if !self.out.in_pod {
                self.out.in_pod = true;
                self.push(
                    e.ts,
                    HopKind::InPod {
                        iface: ifname(&e.ifname),
                        addr: dst(&e.pkt),
                        netns: e.netns,
                    },
                    false,
                );
            }
        } else if self.out.arrived_on.is_none() {
            let name = ifname(&e.ifname);
            self.out.arrived_on = Some(name.clone());
            self.push(
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
            self.push(
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
        if e.pkt.family != 0 {
            self.last_tuple = Some(e.pkt);
        }
    }

    fn netfilter(&mut self, e: &Event) {
        if self.out.arrived_on.is_none() && self.last_nf.is_none() {
            self.first_seen_at_netfilter(e);
        }
        self.conntrack_at(e);
        // The routing decision shows as the next hook the packet enters.
        if !self.route_done && (e.hook == NF_INET_FORWARD || e.hook == NF_INET_LOCAL_IN) {
            self.route_decided(e);
        }
        if let (Some(prev), true) = (self.last_tuple, e.pkt.family != 0) {
            self.nat_observed(e, &prev);
        }
        if e.pkt.family != 0 {
            self.last_tuple = Some(e.pkt);
        }
        if e.hook == NF_INET_PRE_ROUTING || e.hook == NF_INET_LOCAL_OUT {
            self.fibs.clear();
        }
        // Past INPUT's last point: handed to the node's own stack (a
        // socket's consumption is not always traced, e.g. a SYN-ACK).
        if e.hook == NF_INET_LOCAL_IN
            && self
                .ctx
                .plan
                .priority(e.hook, e.pos.saturating_add(1))
                .is_none()
            && !self.out.delivered_node
        {
            self.out.delivered_node = true;
            self.push(
                e.ts,
                HopKind::Delivered {
                    at: "the node's own stack (passed INPUT)".into(),
                },
                false,
            );
        }
        self.last_nf = Some((e.hook, e.pos, e.pkt));
    }

    /// First seen at netfilter: sent by the node itself, or a reply
    /// recognised by its conntrack entry.
    fn first_seen_at_netfilter(&mut self, e: &Event) {
        if e.hook == NF_INET_LOCAL_OUT {
            self.push(
                e.ts,
                HopKind::LocalOut {
                    from: src(&e.pkt),
                    to: dst(&e.pkt),
                },
                false,
            );
        } else if e.in_ifindex != 0 {
            let name = self.ctx.net.name(e.in_ifindex);
            self.out.arrived_on = Some(name.clone());
            self.push(
                e.ts,
                HopKind::Arrived {
                    iface: name,
                    role: self.ctx.net.role(e.in_ifindex),
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

    /// The conntrack state, once: as attached, or INVALID when a packet is
    /// past the conntrack band with no entry.
    fn conntrack_at(&mut self, e: &Event) {
        if self.ct_done {
            return;
        }
        let prio = self.ctx.plan.priority(e.hook, e.pos).unwrap_or(0);
        let state = if e.ct != 0 {
            ct_state(e.ct).to_string()
        } else if (e.hook == NF_INET_PRE_ROUTING || e.hook == NF_INET_LOCAL_OUT) && prio > -200 {
            "invalid (conntrack attached no entry)".to_string()
        } else {
            return;
        };
        self.ct_done = true;
        self.out.ct_established = e.ct == 1;
        self.push(e.ts, HopKind::Conntrack { state }, false);
    }

    fn route_decided(&mut self, e: &Event) {
        self.route_done = true;
        let (iface, gw, table) = forward_route(&self.fibs, e);
        self.route_gw = gw;
        let decision = if e.hook == NF_INET_LOCAL_IN {
            "deliver locally (this node owns the address)".to_string()
        } else {
            "forward".to_string()
        };
        let iface = if e.hook == NF_INET_FORWARD {
            Some(self.ctx.net.name(e.out_ifindex)).or(iface)
        } else {
            None
        };
        self.push(
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

    fn fib(&mut self, e: &'c Event) {
        if in_pod(e, self.ctx) {
            return;
        }
        if let Some(cur) = self.last_tuple {
            // rp_filter's reverse lookup is for the packet's source.
            let d = ip(&e.pkt.daddr, e.pkt.family);
            if d == ip(&cur.saddr, cur.family) && d != ip(&cur.daddr, cur.family) {
                if e.fib.err == 0 && e.ifindex != 0 && e.fib.table != 255 {
                    let gw = (e.fib.gw_family != 0).then(|| ip(&e.fib.gw, e.fib.gw_family));
                    self.reverse_route = Some((ifname(&e.ifname), gw));
                }
                return;
            }
        }
        self.fibs.push(e);
    }

    fn xmit(&mut self, e: &Event) {
        if in_pod(e, self.ctx) {
            return;
        }
        if self.last_nf.is_none() {
            self.inferred_before_leaving(e);
        }
        let role = self.ctx.net.role(e.ifindex);
        if role == IfRole::Bridge {
            return;
        }
        self.sent = true;
        let name = ifname(&e.ifname);
        let to = dst(&e.pkt);
        let next_hop = match role {
            IfRole::PodVeth => None,
            _ => self.route_gw.or(Some(to.ip())),
        };
        let to_client = self.dir == Dir::Reply && to == src(self.flow);
        let towards = match (role, self.dir) {
            (IfRole::PodVeth, _) if to_client => "client (a pod on this node)".to_string(),
            (IfRole::PodVeth, _) => "pod".to_string(),
            (IfRole::Overlay, _) => "another node (overlay tunnel)".to_string(),
            (_, Dir::Reply) => match self.route_gw {
                Some(gw) => format!("client via gateway {gw}"),
                None => "client".to_string(),
            },
            (_, Dir::Request) => match self.route_gw {
                Some(gw) => format!("another node via {gw}"),
                None => format!("another node {}", to.ip()),
            },
        };
        self.out.left = Some((name.clone(), role, next_hop));
        self.out.left_to_client_pod = role == IfRole::PodVeth && to_client;
        self.push(
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

    /// No netfilter point saw the packet (no BPF netfilter links): the
    /// conntrack state it carries, the routing lookup's result as the
    /// decision, and NAT as the tuple that changed since it arrived.
    fn inferred_before_leaving(&mut self, e: &Event) {
        if !self.ctx.netfilter_links && !self.ct_done && e.ct != 0 {
            self.ct_done = true;
            self.out.ct_established = e.ct == 1;
            self.push(
                self.first_ts,
                HopKind::Conntrack {
                    state: ct_state(e.ct).into(),
                },
                true,
            );
        }
        if !self.route_done && !self.fibs.is_empty() {
            self.route_done = true;
            let (iface, gw, table) = forward_route(&self.fibs, e);
            self.route_gw = gw;
            self.push(
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
        self.nat_since_arrival(e);
    }

    fn nat_since_arrival(&mut self, e: &Event) {
        if let (Some(a), true) = (self.first_tuple, e.pkt.family != 0) {
            self.nat_inferred(e, &a);
            self.first_tuple = Some(e.pkt);
        }
    }

    fn consume(&mut self, e: &Event) {
        if in_pod(e, self.ctx) {
            if self.out.in_pod && !self.out.delivered_pod {
                self.out.delivered_pod = true;
                self.push(
                    e.ts,
                    HopKind::Delivered {
                        at: "a socket in the pod".into(),
                    },
                    false,
                );
            }
        } else if !self.sent && self.route_done && !self.out.delivered_node {
            self.out.delivered_node = true;
            self.push(
                e.ts,
                HopKind::Delivered {
                    at: "a socket on this node".into(),
                },
                false,
            );
        }
    }

    fn reset(&mut self, e: &Event) {
        self.out.reset = true;
        let at = if in_pod(e, self.ctx) {
            "the pod"
        } else {
            "this node"
        };
        self.push(e.ts, HopKind::Reset { at: at.into() }, false);
    }

    fn drop(&mut self, e: &Event) {
        if self.last_nf.is_none() && !in_pod(e, self.ctx) {
            // The dropped packet may show a NAT no later hook saw.
            self.nat_since_arrival(e);
        }
        let d = explain::drop(
            e,
            self.ctx,
            self.flow,
            &self.out,
            self.reverse_route.as_ref(),
            self.route_gw,
        );
        // Without netfilter points, a rule attributed by counters still
        // tells the hook of its chain.
        let (hook, inferred) = if e.hook != NO_HOOK {
            (Some(hook_name(e.hook).to_string()), false)
        } else if d.1.reason == "NETFILTER_DROP"
            && let Some(h) = self.ctx.rule_hits.iter().find_map(|r| r.hook)
        {
            (Some(hook_name(h).to_string()), true)
        } else {
            (None, false)
        };
        self.push(
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
        self.out.drop = Some(d.1);
    }

    /// NAT between the previous observation and this netfilter point. Every
    /// point records the packet, but only changes are reported: the rewrite
    /// happened just before the first point that saw it.
    fn nat_observed(&mut self, e: &Event, prev: &Tuple) {
        let band = match self.last_nf {
            Some((h, _, _)) if h == e.hook && e.pos > 0 => {
                self.ctx.plan.band_after(h, e.pos - 1).to_string()
            }
            _ => hook_name(e.hook).to_string(),
        };
        self.push_nat(e.ts, prev, &e.pkt, band, false);
    }

    /// Without netfilter links, NAT shows as a changed tuple between hooks.
    /// Where it happened follows from what it rewrote: destinations are
    /// rewritten at PREROUTING (OUTPUT for the node's own packets), sources
    /// at POSTROUTING, in both directions.
    fn nat_inferred(&mut self, e: &Event, prev: &Tuple) {
        let dst_hook = if self.out.arrived_on.is_some() {
            "PREROUTING"
        } else {
            "OUTPUT"
        };
        if dst(prev) != dst(&e.pkt) {
            let mut only_dst = e.pkt;
            only_dst.saddr = prev.saddr;
            only_dst.sport = prev.sport;
            self.push_nat(e.ts, prev, &only_dst, dst_hook.into(), true);
        }
        if src(prev) != src(&e.pkt) {
            let mut only_src = *prev;
            only_src.saddr = e.pkt.saddr;
            only_src.sport = e.pkt.sport;
            self.push_nat(e.ts, prev, &only_src, "POSTROUTING".into(), true);
        }
    }

    /// DNAT/SNAT hops for a tuple that changed from `prev` to `now` in `band`.
    fn push_nat(&mut self, ts: u64, prev: &Tuple, now: &Tuple, band: String, inferred: bool) {
        if dst(prev) != dst(now) {
            let by = if self.dir == Dir::Request {
                self.out.dnat_to = Some(dst(now));
                super::endpoint_rule(self.ctx, now)
            } else {
                None
            };
            let hop = nat_hop(self.dir, false, dst(prev), dst(now), band.clone(), by);
            self.push(ts, hop, inferred);
        }
        if src(prev) != src(now) {
            let hop = nat_hop(self.dir, true, src(prev), src(now), band, None);
            self.push(ts, hop, inferred);
        }
    }
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
