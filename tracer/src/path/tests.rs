//! Path assembly on event sequences shaped like the kernel's (the healthy one
//! is the trace of a real DNATed connection on the lab).

use std::net::Ipv4Addr;

use super::*;
use crate::{
    btf::EnumNames,
    kubeproxy::NoEndpoints,
    netinfo::{IfRole, Iface, Route},
    nfplan::builtin_occupants,
};
use tracer_common::{AF_INET, Fib, IFNAMSIZ, Kind, NO_HOOK};

const NODE: u32 = 1000;
const POD: u32 = 2000;

fn t(s: &str, d: &str, proto: u8) -> Tuple {
    let (sa, sp) = s.split_once(':').unwrap();
    let (da, dp) = d.split_once(':').unwrap();
    let mut out = Tuple {
        family: AF_INET,
        proto,
        sport: sp.parse().unwrap(),
        dport: dp.parse().unwrap(),
        ..Tuple::default()
    };
    out.saddr[..4].copy_from_slice(&sa.parse::<Ipv4Addr>().unwrap().octets());
    out.daddr[..4].copy_from_slice(&da.parse::<Ipv4Addr>().unwrap().octets());
    out
}

fn name(n: &str) -> [u8; IFNAMSIZ] {
    let mut o = [0u8; IFNAMSIZ];
    o[..n.len()].copy_from_slice(n.as_bytes());
    o
}

struct B {
    flow: Tuple,
    ts: u64,
    evs: Vec<Event>,
}

impl B {
    fn new(client: &str, lb: &str) -> Self {
        Self {
            flow: t(client, lb, 6),
            ts: 1_000_000,
            evs: Vec::new(),
        }
    }

    fn ev(
        &mut self,
        kind: Kind,
        dir: u8,
        seq: u16,
        pkt: (&str, &str),
        ifname: &str,
        ifindex: u32,
    ) -> &mut Event {
        self.ts += 10_000;
        self.evs.push(Event {
            kind: kind as u8,
            dir,
            hook: NO_HOOK,
            pos: 0,
            tcp_flags: if dir == DIR_REPLY { 0x12 } else { 0x02 },
            ct: 0,
            seq,
            netns: NODE,
            ifindex,
            ts: self.ts,
            skb: 0xffff_0000 + seq as u64 + dir as u64 * 100,
            flow: self.flow,
            pkt: t(pkt.0, pkt.1, 6),
            len: 60,
            mtu: 1500,
            reason: 0,
            ct_status: 0,
            location: 0,
            ifname: name(ifname),
            ct_reply: Tuple::default(),
            in_ifindex: 0,
            out_ifindex: 0,
            fib: Fib::default(),
            mac_src: [0; 6],
            flags: 0,
            _pad: 0,
            conn: 1,
        });
        self.evs.last_mut().unwrap()
    }

    #[allow(clippy::too_many_arguments)]
    fn nf(
        &mut self,
        dir: u8,
        seq: u16,
        pkt: (&str, &str),
        hook: u8,
        pos: u8,
        ct: u8,
        inif: u32,
        outif: u32,
    ) {
        let e = self.ev(Kind::Nf, dir, seq, pkt, "", 0);
        e.hook = hook;
        e.pos = pos;
        e.ct = ct;
        e.in_ifindex = inif;
        e.out_ifindex = outif;
    }

    #[allow(clippy::too_many_arguments)]
    fn fib(
        &mut self,
        dir: u8,
        seq: u16,
        s: &str,
        d: &str,
        ifname: &str,
        ifindex: u32,
        gw: Option<&str>,
    ) {
        let e = self.ev(
            Kind::Fib,
            dir,
            seq,
            (&format!("{s}:0"), &format!("{d}:0")),
            ifname,
            ifindex,
        );
        e.fib.table = 254;
        if let Some(gw) = gw {
            e.fib.gw_family = AF_INET;
            e.fib.gw[..4].copy_from_slice(&gw.parse::<Ipv4Addr>().unwrap().octets());
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn drop_(
        &mut self,
        dir: u8,
        seq: u16,
        pkt: (&str, &str),
        ifname: &str,
        reason: u32,
        hook: u8,
        pos: u8,
    ) {
        let e = self.ev(Kind::Drop, dir, seq, pkt, ifname, 0);
        e.reason = reason;
        e.hook = hook;
        e.pos = pos;
    }
}

/// The lab node: eth0 uplink (2), cni0 bridge (3) with pod veth vethp (4),
/// eth1 second uplink (5), vxlan0 overlay (6).
fn net() -> NetInfo {
    let mut n = NetInfo::default();
    let mk = |index, name: &str, kind: &str, addr: Option<&str>, master| Iface {
        index,
        name: name.into(),
        kind: kind.into(),
        master,
        mtu: 1500,
        mac: None,
        addrs: addr
            .map(|a| vec![(a.parse().unwrap(), 24)])
            .unwrap_or_default(),
        up: true,
        ..Default::default()
    };
    for i in [
        mk(2, "eth0", "veth", Some("192.0.2.2"), None),
        mk(3, "cni0", "bridge", Some("10.244.1.1"), None),
        mk(4, "vethp", "veth", None, Some(3)),
        mk(5, "eth1", "veth", Some("203.0.113.2"), None),
        mk(6, "vxlan0", "vxlan", Some("10.244.1.0"), None),
    ] {
        n.ifaces.insert(i.index, i);
    }
    n.routes.push(Route {
        dst: "0.0.0.0".parse().unwrap(),
        prefix: 0,
        oif: Some(2),
        gw: Some("192.0.2.1".parse().unwrap()),
        table: 254,
    });
    n
}

fn reasons() -> DropNames {
    DropNames::new(Some(EnumNames::from_pairs(&[
        (3, "NO_SOCKET"),
        (12, "NETFILTER_DROP"),
        (16, "IP_RPFILTER"),
        (58, "NEIGH_FAILED"),
        (93, "PKT_TOO_BIG"),
        (104, "QUEUE_PURGE"),
        // What kernels before 5.17 yield, named from the freeing function.
        (200, "IP_ROUTE_INPUT"),
        (201, "IP_FORWARD"),
    ])))
}

fn svc(no_endpoints: Option<NoEndpoints>) -> ServicePort {
    super::web_service(no_endpoints, false, None)
}

fn run(b: &B, services: &[ServicePort], hits: &[RuleHit]) -> FlowReport {
    run_ct(b, services, hits, None)
}

fn run_ct(
    b: &B,
    services: &[ServicePort],
    hits: &[RuleHit],
    ct: Option<crate::conntrack::CtFigures>,
) -> FlowReport {
    let net = net();
    let plan = NfPlan::new(builtin_occupants());
    let reasons = reasons();
    let rp = |_: &str| (0i64, 1i64, 1i64);
    let ctx = Context {
        node_netns: NODE,
        net: &net,
        plan: &plan,
        drops: &reasons,
        services,
        kube_proxy_found: !services.is_empty(),
        rules_degraded: None,
        rule_hits: hits,
        rp_filter: &rp,
        conntrack: &move || ct,
        netfilter_links: true,
    };
    assemble(&b.evs, &ctx, None).unwrap()
}

const C: &str = "192.0.2.10:38494";
const LB: &str = "192.0.2.240:80";
const P: &str = "10.244.1.5:8080";
// PREROUTING points with the built-in plan: 0 entry, 3 after conntrack, 4 before DNAT, 5 after.
const PRE: u8 = 0;
const FWD: u8 = 2;
const POST: u8 = 4;

/// Request in through eth0, DNAT to the pod, out the pod veth.
fn request_to_pod(b: &mut B, seq: u16) {
    b.ev(Kind::Arrive, 0, seq, (C, LB), "eth0", 2).mac_src = [2, 0, 0, 0, 0, 10];
    b.nf(0, seq, (C, LB), PRE, 0, 0, 2, 0);
    b.nf(0, seq, (C, LB), PRE, 3, 3, 2, 0);
    b.nf(0, seq, (C, LB), PRE, 4, 3, 2, 0);
    b.nf(0, seq, (C, P), PRE, 5, 3, 2, 0);
    b.fib(0, seq, "192.0.2.10", "10.244.1.5", "cni0", 3, None);
    b.nf(0, seq, (C, P), FWD, 0, 3, 2, 3);
    b.nf(0, seq, (C, P), POST, 0, 3, 0, 3);
    b.ev(Kind::Xmit, 0, seq, (C, P), "cni0", 3);
    b.ev(Kind::Xmit, 0, seq, (C, P), "vethp", 4);
}

fn pod_side(b: &mut B, seq: u16) {
    let e = b.ev(Kind::Arrive, 0, seq, (C, P), "eth0", 2);
    e.netns = POD;
    e.flags = EV_POD_NS;
}

fn reply_out(b: &mut B, seq: u16, out_if: (&str, u32)) {
    b.ev(Kind::Arrive, 1, seq, (P, C), "vethp", 4);
    b.nf(1, seq, (P, C), PRE, 0, 0, 3, 0);
    b.nf(1, seq, (P, C), PRE, 3, 4, 3, 0);
    b.nf(1, seq, (P, C), FWD, 0, 4, 3, out_if.1);
    b.nf(1, seq, (P, C), POST, 0, 4, 0, out_if.1);
    b.nf(1, seq, (LB, C), POST, 2, 4, 0, out_if.1);
    b.ev(Kind::Xmit, 1, seq, (LB, C), out_if.0, out_if.1);
}

fn kinds(r: &FlowReport) -> Vec<&'static str> {
    r.hops
        .iter()
        .map(|h| match h.kind {
            HopKind::Arrived { .. } => "arrived",
            HopKind::LocalOut { .. } => "local_out",
            HopKind::Conntrack { .. } => "conntrack",
            HopKind::Dnat { .. } => "dnat",
            HopKind::Snat { .. } => "snat",
            HopKind::Route { .. } => "route",
            HopKind::Left { .. } => "left",
            HopKind::InPod { .. } => "in_pod",
            HopKind::Delivered { .. } => "delivered",
            HopKind::Reset { .. } => "reset",
            HopKind::Dropped { .. } => "dropped",
        })
        .collect()
}

#[test]
fn healthy_flow_has_every_hop_and_is_answered() {
    let mut b = B::new(C, LB);
    request_to_pod(&mut b, 1);
    pod_side(&mut b, 1);
    reply_out(&mut b, 1, ("eth0", 2));
    let r = run(&b, &[svc(None)], &[]);
    assert_eq!(
        kinds(&r),
        vec![
            "arrived",
            "conntrack",
            "dnat",
            "route",
            "left",
            "in_pod",
            "arrived",
            "conntrack",
            "route",
            "dnat",
            "left"
        ]
    );
    let HopKind::Dnat { from, to, hook, by } = &r.hops[2].kind else {
        panic!()
    };
    assert_eq!(
        (from.to_string(), to.to_string()),
        (LB.to_string(), P.to_string())
    );
    assert!(hook.contains("nat table (DNAT)"), "{hook}");
    assert_eq!(
        by.as_deref(),
        Some("kube-proxy KUBE-SEP-XYZ (default/web:http)")
    );
    let HopKind::Route {
        decision, iface, ..
    } = &r.hops[3].kind
    else {
        panic!()
    };
    assert_eq!(
        (decision.as_str(), iface.as_deref()),
        ("forward", Some("cni0"))
    );
    let HopKind::Left {
        iface,
        role,
        towards,
        ..
    } = &r.hops[4].kind
    else {
        panic!()
    };
    assert_eq!(
        (iface.as_str(), *role, towards.as_str()),
        ("vethp", IfRole::PodVeth, "pod")
    );
    let HopKind::Conntrack { state } = &r.hops[1].kind else {
        panic!()
    };
    assert_eq!(state, "new");
    assert_eq!(r.verdict.kind, VerdictKind::Answered);
    assert_eq!(r.service.as_ref().unwrap().name, "default/web:http");
    assert!(r.hops.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
}

#[test]
fn reply_by_another_interface_is_flagged() {
    let mut b = B::new(C, LB);
    request_to_pod(&mut b, 1);
    pod_side(&mut b, 1);
    reply_out(&mut b, 1, ("eth1", 5));
    let r = run(&b, &[svc(None)], &[]);
    assert_eq!(r.verdict.kind, VerdictKind::AnsweredAsymmetric);
    assert!(r.verdict.summary.contains("eth1") && r.verdict.summary.contains("eth0"));
}

#[test]
fn reply_next_hop_not_resolving() {
    let mut b = B::new(C, LB);
    request_to_pod(&mut b, 1);
    pod_side(&mut b, 1);
    b.ev(Kind::Arrive, 1, 1, (P, C), "vethp", 4);
    b.nf(1, 1, (P, C), PRE, 0, 0, 3, 0);
    b.fib(
        1,
        1,
        "10.244.1.5",
        "192.0.2.10",
        "eth1",
        5,
        Some("203.0.113.1"),
    );
    b.nf(1, 1, (P, C), FWD, 0, 4, 3, 5);
    b.nf(1, 1, (LB, C), POST, 2, 4, 0, 5);
    b.drop_(1, 1, (LB, C), "eth1", 58, POST, 3);
    let r = run(&b, &[svc(None)], &[]);
    assert_eq!(r.verdict.kind, VerdictKind::Dropped);
    assert!(
        r.verdict.summary.contains("reply was dropped"),
        "{}",
        r.verdict.summary
    );
    assert!(
        r.verdict.summary.contains("203.0.113.1"),
        "{}",
        r.verdict.summary
    );
}

#[test]
fn rp_filter_drop_names_interface_value_and_route_back() {
    let mut b = B::new("198.51.100.10:5555", LB);
    let c = "198.51.100.10:5555";
    b.ev(Kind::Arrive, 0, 1, (c, LB), "eth0", 2);
    b.nf(0, 1, (c, LB), PRE, 0, 0, 2, 0);
    b.nf(0, 1, (c, P), PRE, 5, 3, 2, 0);
    b.fib(0, 1, "198.51.100.10", "10.244.1.5", "cni0", 3, None);
    b.fib(
        0,
        1,
        "10.244.1.5",
        "198.51.100.10",
        "eth1",
        5,
        Some("203.0.113.1"),
    );
    b.drop_(0, 1, (c, P), "eth0", 16, PRE, 5);
    let r = run(&b, &[svc(None)], &[]);
    assert_eq!(r.verdict.kind, VerdictKind::Dropped);
    let s = &r.verdict.summary;
    assert!(s.contains("reverse-path filter"), "{s}");
    assert!(s.contains("arrived on eth0"), "{s}");
    assert!(s.contains("goes out eth1 via 203.0.113.1"), "{s}");
    assert!(s.contains("strict"), "{s}");
    assert!(r.verdict.hint.as_ref().unwrap().contains("rp_filter=2"));
}

#[test]
fn netfilter_drop_in_forward_with_counter_attribution() {
    let mut b = B::new(C, LB);
    b.ev(Kind::Arrive, 0, 1, (C, LB), "eth0", 2);
    b.nf(0, 1, (C, LB), PRE, 0, 0, 2, 0);
    b.nf(0, 1, (C, P), PRE, 5, 3, 2, 0);
    b.nf(0, 1, (C, P), FWD, 0, 3, 2, 3);
    b.nf(0, 1, (C, P), FWD, 1, 3, 2, 3);
    b.drop_(0, 1, (C, P), "eth0", 12, FWD, 1);
    let hits = [RuleHit {
        table: "ip filter".into(),
        chain: "FORWARD".into(),
        rule: "-A FORWARD -d 10.244.1.5/32 -j DROP".into(),
        packets: 1,
        hook: Some(2),
    }];
    let r = run(&b, &[svc(None)], &hits);
    assert_eq!(r.verdict.kind, VerdictKind::Dropped);
    let HopKind::Dropped {
        at,
        reason,
        hook,
        detail,
        ..
    } = &r.hops.last().unwrap().kind
    else {
        panic!()
    };
    assert_eq!(reason, "NETFILTER_DROP");
    assert_eq!(hook.as_deref(), Some("FORWARD"));
    assert!(
        at.contains("FORWARD") && at.contains("filter table"),
        "{at}"
    );
    assert!(
        detail.contains("-A FORWARD -d 10.244.1.5/32 -j DROP") && detail.contains("counters"),
        "{detail}"
    );
}

#[test]
fn no_endpoints_reject_is_named() {
    let mut b = B::new(C, LB);
    b.ev(Kind::Arrive, 0, 1, (C, LB), "eth0", 2);
    b.nf(0, 1, (C, LB), PRE, 0, 0, 2, 0);
    b.nf(0, 1, (C, LB), FWD, 0, 3, 2, 2);
    b.drop_(0, 1, (C, LB), "eth0", 12, FWD, 1);
    let r = run(
        &b,
        &[svc(Some(NoEndpoints::Reject {
            rule: "KUBE-EXTERNAL-SERVICES".into(),
        }))],
        &[],
    );
    assert_eq!(r.verdict.kind, VerdictKind::Dropped);
    assert!(
        r.verdict.summary.contains("has no endpoints"),
        "{}",
        r.verdict.summary
    );
    assert!(r.verdict.hint.as_ref().unwrap().contains("endpointslices"));
}

#[test]
fn no_rule_at_all() {
    let mut b = B::new(C, LB);
    b.ev(Kind::Arrive, 0, 1, (C, LB), "eth0", 2);
    b.nf(0, 1, (C, LB), PRE, 0, 0, 2, 0);
    b.nf(0, 1, (C, LB), PRE, 5, 3, 2, 0);
    b.drop_(0, 1, (C, LB), "eth0", 3, NO_HOOK, 0);
    let r = run(&b, &[], &[]);
    assert_eq!(r.verdict.kind, VerdictKind::NoRule);
    assert!(
        r.verdict
            .summary
            .contains("no kube-proxy rule for 192.0.2.240:80"),
        "{}",
        r.verdict.summary
    );
    assert!(r.notes.iter().any(|n| n.contains("no kube-proxy rules")));
}

#[test]
fn pod_not_listening_is_refused() {
    let mut b = B::new(C, LB);
    request_to_pod(&mut b, 1);
    pod_side(&mut b, 1);
    let e = b.ev(Kind::Reset, 0, 1, (C, P), "eth0", 2);
    e.netns = POD;
    e.flags = EV_POD_NS;
    let e = b.ev(Kind::Drop, 0, 1, (C, P), "eth0", 2);
    e.netns = POD;
    e.flags = EV_POD_NS;
    e.reason = 3;
    let r = run(&b, &[svc(None)], &[]);
    assert_eq!(r.verdict.kind, VerdictKind::Refused, "{:?}", r.verdict);
    assert!(kinds(&r).contains(&"reset"));
}

#[test]
fn pod_silent_is_no_answer() {
    let mut b = B::new(C, LB);
    request_to_pod(&mut b, 1);
    pod_side(&mut b, 1);
    let e = b.ev(Kind::Consume, 0, 1, (C, P), "", 0);
    e.netns = 0;
    e.flags = EV_POD_NS;
    let r = run(&b, &[svc(None)], &[]);
    assert_eq!(r.verdict.kind, VerdictKind::NoAnswer);
    assert!(kinds(&r).contains(&"delivered"));
}

#[test]
fn pod_on_another_node() {
    let mut b = B::new(C, LB);
    let remote = "10.244.2.7:8080";
    b.ev(Kind::Arrive, 0, 1, (C, LB), "eth0", 2);
    b.nf(0, 1, (C, LB), PRE, 0, 0, 2, 0);
    b.nf(0, 1, (C, remote), PRE, 5, 3, 2, 0);
    b.fib(
        0,
        1,
        "192.0.2.10",
        "10.244.2.7",
        "eth0",
        2,
        Some("192.0.2.3"),
    );
    b.nf(0, 1, (C, remote), FWD, 0, 3, 2, 2);
    b.ev(Kind::Xmit, 0, 1, (C, remote), "eth0", 2);
    let r = run(&b, &[svc(None)], &[]);
    assert_eq!(r.verdict.kind, VerdictKind::LeftNode);
    assert!(
        r.verdict.summary.contains("192.0.2.3"),
        "{}",
        r.verdict.summary
    );
    let HopKind::Left { towards, .. } = &r.hops.last().unwrap().kind else {
        panic!()
    };
    assert_eq!(towards, "another node via 192.0.2.3");
}

#[test]
fn mtu_drop_after_the_handshake() {
    let mut b = B::new(C, LB);
    request_to_pod(&mut b, 1);
    pod_side(&mut b, 1);
    reply_out(&mut b, 1, ("eth0", 2));
    let e = b.ev(Kind::Drop, 0, 0, (C, P), "vethp", 4);
    e.reason = 93;
    e.len = 1500;
    e.mtu = 1400;
    e.flags = EV_UNTRACED;
    let r = run(&b, &[svc(None)], &[]);
    assert_eq!(r.verdict.kind, VerdictKind::Dropped);
    assert!(
        r.verdict.summary.contains("too big for the path MTU"),
        "{}",
        r.verdict.summary
    );
    assert!(r.verdict.hint.as_ref().unwrap().contains("MTU 1400"));
}

/// A later packet dropped by netfilter (conntrack INVALID) before the
/// connection closes breaks it; after the FIN it is only aftermath.
#[test]
fn later_drops_count_only_before_the_connection_closes() {
    let build = |fin_first: bool| {
        let mut b = B::new(C, LB);
        request_to_pod(&mut b, 1);
        pod_side(&mut b, 1);
        reply_out(&mut b, 1, ("eth0", 2));
        if fin_first {
            b.ev(Kind::Arrive, 0, 2, (C, LB), "eth0", 2).tcp_flags = 0x11;
        }
        let e = b.ev(Kind::Drop, 0, 0, (C, P), "eth0", 2);
        e.reason = 12;
        e.tcp_flags = 0x10;
        e.flags = EV_UNTRACED;
        run(&b, &[svc(None)], &[])
    };
    let r = build(false);
    assert_eq!(r.verdict.kind, VerdictKind::Dropped);
    assert!(
        r.verdict.summary.contains("later packets"),
        "{}",
        r.verdict.summary
    );
    assert_eq!(build(true).verdict.kind, VerdictKind::Answered);
}

#[test]
fn refusal_is_not_hidden_by_its_aftermath() {
    let mut b = B::new(C, LB);
    request_to_pod(&mut b, 1);
    pod_side(&mut b, 1);
    let e = b.ev(Kind::Reset, 0, 1, (C, P), "eth0", 2);
    e.netns = POD;
    e.flags = EV_POD_NS;
    let e = b.ev(Kind::Drop, 0, 0, (C, P), "eth0", 2);
    e.reason = 12;
    e.flags = EV_UNTRACED;
    let r = run(&b, &[svc(None)], &[]);
    assert_eq!(r.verdict.kind, VerdictKind::Refused, "{:?}", r.verdict);
}

#[test]
fn benign_socket_purges_do_not_fail_a_flow() {
    let mut b = B::new(C, LB);
    request_to_pod(&mut b, 1);
    pod_side(&mut b, 1);
    reply_out(&mut b, 1, ("eth0", 2));
    let e = b.ev(Kind::Drop, 0, 2, (C, P), "", 0);
    e.reason = 104;
    e.netns = POD;
    e.flags = EV_POD_NS;
    let r = run(&b, &[svc(None)], &[]);
    assert_eq!(r.verdict.kind, VerdictKind::Answered);
}

#[test]
fn without_netfilter_links_nat_is_inferred() {
    let mut b = B::new(C, LB);
    b.ev(Kind::Arrive, 0, 1, (C, LB), "eth0", 2);
    b.fib(0, 1, "192.0.2.10", "10.244.1.5", "cni0", 3, None);
    b.ev(Kind::Xmit, 0, 1, (C, P), "vethp", 4);
    let r = run(&b, &[svc(None)], &[]);
    let dnat = r
        .hops
        .iter()
        .find(|h| matches!(h.kind, HopKind::Dnat { .. }))
        .unwrap();
    assert!(dnat.inferred);
    let HopKind::Dnat { hook, by, .. } = &dnat.kind else {
        unreachable!()
    };
    // kube-proxy DNATs arriving packets at PREROUTING, and the Service is named.
    assert_eq!(hook, "PREROUTING");
    assert!(by.as_ref().unwrap().contains("default/web:http"), "{by:?}");
    assert!(
        r.hops
            .iter()
            .any(|h| matches!(h.kind, HopKind::Route { .. }) && h.inferred)
    );
}

/// Kernels before 5.17: a refusal by the input route lookup whose reverse
/// route leaves by another interface is rp_filter.
#[test]
fn input_route_refusal_with_reverse_route_elsewhere_is_rp_filter() {
    let c = "198.51.100.10:5555";
    let mut b = B::new(c, LB);
    b.ev(Kind::Arrive, 0, 1, (c, LB), "eth0", 2);
    b.fib(0, 1, "198.51.100.10", "10.244.1.5", "cni0", 3, None);
    b.fib(
        0,
        1,
        "10.244.1.5",
        "198.51.100.10",
        "eth1",
        5,
        Some("203.0.113.1"),
    );
    b.drop_(0, 1, (c, P), "eth0", 200, NO_HOOK, 0);
    let r = run(&b, &[svc(None)], &[]);
    assert!(
        r.verdict.summary.contains("reverse-path filter"),
        "{}",
        r.verdict.summary
    );
    // Without a reverse route elsewhere it stays a routing refusal.
    let mut b = B::new(c, LB);
    b.ev(Kind::Arrive, 0, 1, (c, LB), "eth0", 2);
    b.drop_(0, 1, (c, P), "eth0", 200, NO_HOOK, 0);
    let r = run(&b, &[svc(None)], &[]);
    assert!(
        r.verdict.summary.contains("input routing decision"),
        "{}",
        r.verdict.summary
    );
}

/// Kernels before 5.17: ip_forward dropping a packet bigger than its way
/// out is an MTU drop, with that interface's MTU.
#[test]
fn forward_drop_of_a_packet_too_big_for_its_way_out_is_mtu() {
    let mut b = B::new(C, LB);
    request_to_pod(&mut b, 1);
    let e = b.ev(Kind::Drop, 0, 0, (C, "198.51.100.7:80"), "eth0", 2);
    e.reason = 201;
    e.len = 1600;
    e.flags = EV_UNTRACED;
    let r = run(&b, &[svc(None)], &[]);
    assert!(
        r.verdict.summary.contains("too big"),
        "{}",
        r.verdict.summary
    );
    assert!(
        r.verdict
            .hint
            .as_ref()
            .unwrap()
            .contains("MTU 1500 of eth0")
    );
}

/// Past the conntrack band with no entry attached: conntrack found the packet
/// INVALID (kube-proxy's KUBE-FORWARD then drops it).
#[test]
fn conntrack_invalid_is_named() {
    let mut b = B::new(C, LB);
    b.ev(Kind::Arrive, 0, 1, (C, LB), "eth0", 2).tcp_flags = 0x10;
    b.nf(0, 1, (C, LB), PRE, 0, 0, 2, 0);
    b.nf(0, 1, (C, LB), PRE, 5, 0, 2, 0);
    b.nf(0, 1, (C, LB), FWD, 0, 0, 2, 2);
    b.drop_(0, 1, (C, LB), "eth0", 12, FWD, 1);
    let r = run(&b, &[svc(None)], &[]);
    let states: Vec<&str> = r
        .hops
        .iter()
        .filter_map(|h| match &h.kind {
            HopKind::Conntrack { state } => Some(state.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(states.len(), 1);
    assert!(states[0].starts_with("invalid"), "{states:?}");
    assert_eq!(r.verdict.kind, VerdictKind::Dropped);
}

/// The LB IP local on the node, nothing DNATing it: the node's own stack
/// answers a SYN with a reset.
fn refused_at_node(b: &mut B) {
    b.ev(Kind::Arrive, 0, 1, (C, LB), "eth0", 2);
    b.nf(0, 1, (C, LB), PRE, 0, 0, 2, 0);
    b.nf(0, 1, (C, LB), PRE, 5, 3, 2, 0);
    b.ev(Kind::Reset, 0, 1, (C, LB), "eth0", 2);
    b.drop_(0, 1, (C, LB), "eth0", 3, NO_HOOK, 0);
}

#[test]
fn node_reset_without_any_rule_says_both() {
    let mut b = B::new(C, LB);
    refused_at_node(&mut b);
    let r = run(&b, &[], &[]);
    assert_eq!(r.verdict.kind, VerdictKind::NoRule, "{:?}", r.verdict);
    assert!(
        r.verdict
            .summary
            .contains("this node refused it with a reset"),
        "{}",
        r.verdict.summary
    );
}

#[test]
fn node_reset_with_a_service_is_the_node_refusing() {
    let mut b = B::new(C, LB);
    refused_at_node(&mut b);
    let r = run(&b, &[svc(None)], &[]);
    assert_eq!(r.verdict.kind, VerdictKind::Refused, "{:?}", r.verdict);
    assert!(
        r.verdict.summary.starts_with("refused by this node"),
        "{}",
        r.verdict.summary
    );
    assert!(r.verdict.hint.is_some());
}

#[test]
fn a_reply_of_resets_only_is_a_refusal_not_an_answer() {
    let mut b = B::new(C, LB);
    request_to_pod(&mut b, 1);
    pod_side(&mut b, 1);
    reply_out(&mut b, 1, ("eth0", 2));
    for e in b.evs.iter_mut().filter(|e| e.dir == DIR_REPLY) {
        e.tcp_flags = 0x14; // RST|ACK
    }
    let r = run(&b, &[svc(None)], &[]);
    assert_eq!(r.verdict.kind, VerdictKind::Refused, "{:?}", r.verdict);
    assert!(
        r.verdict.summary.contains("answered only with a reset"),
        "{}",
        r.verdict.summary
    );
}

#[test]
fn a_drop_at_conntrack_with_the_table_full_is_named_with_figures() {
    let mut b = B::new(C, LB);
    b.ev(Kind::Arrive, 0, 1, (C, LB), "eth0", 2);
    b.nf(0, 1, (C, LB), PRE, 0, 0, 2, 0);
    // Between the point before conntrack (-200) and the one after it.
    b.drop_(0, 1, (C, LB), "eth0", 12, PRE, 2);
    let full = crate::conntrack::CtFigures {
        count: 262_144,
        max: 262_144,
        insert_failed: 0,
        drop: 31,
        early_drop: 0,
    };
    let r = run_ct(&b, &[svc(None)], &[], Some(full));
    assert_eq!(r.verdict.kind, VerdictKind::Dropped, "{:?}", r.verdict);
    assert!(
        r.verdict
            .summary
            .contains("dropped by conntrack (conntrack): the table is full (262144 of 262144 entries; 31 drops"),
        "{}",
        r.verdict.summary
    );
    assert!(
        r.verdict
            .hint
            .as_deref()
            .unwrap_or_default()
            .contains("nf_conntrack_max")
    );
    // The same drop with room in the table and nothing counted is not "full".
    let roomy = crate::conntrack::CtFigures {
        count: 10,
        drop: 0,
        ..full
    };
    let r = run_ct(&b, &[svc(None)], &[], Some(roomy));
    assert!(
        r.verdict.summary.contains("no drop counted"),
        "{}",
        r.verdict.summary
    );
}
