//! kube-proxy's IPVS mode in the lab ([`lbpath_tests::ipvs_lab`]): real
//! traffic through the kernel's virtual server, and what lbpath's readers
//! (`lbpath::ipvs`, `lbpath::netinfo`) make of the node.
//!
//! These need a kernel with IP_VS (and 8021q, bonding for the uplink
//! tests). Where it is missing they are skipped with the reason printed —
//! the development host's kernel has none of them — except in the kernel
//! matrix (LBPATH_KERNEL_MATRIX=1, set by its guest script), where a
//! missing feature fails the test.

use std::{net::IpAddr, time::Duration};

use lbpath::{
    ipvs::{ArpConf, Forward, IpvsState, VirtualService},
    kubeproxy::{AddressKind, Proto},
    netinfo::{IfRole, NetInfo},
};
use lbpath_tests::{
    ipvs_lab::{self, IpvsLab, IpvsSpec, Reals},
    lab::{KubeProxy, LB, LB_PORT, Lab, LabSpec, POD, POD_PORT},
    netns::{self, in_ns},
};

const T: Duration = Duration::from_secs(3);
/// The kernel folds IPVS counters every 2 s; TCG guests are slow.
const COUNTERS: Duration = Duration::from_secs(12);

/// Whether the kernel can run the IPVS lab; prints why not and returns
/// false on a kernel without IP_VS, panics instead in the kernel matrix.
fn ipvs_or_skip(test: &str) -> bool {
    match ipvs_lab::ipvs_available() {
        Ok(()) => true,
        Err(why) if ipvs_lab::in_kernel_matrix() => {
            panic!("{test}: IPVS is required in the kernel matrix: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

fn lb() -> IpAddr {
    IpAddr::V4(LB)
}

/// lbpath's IPVS reader, run in `ns`.
fn read_ipvs(ns: &str) -> IpvsState {
    netns::run_in(ns, || Ok(IpvsState::read())).expect("reading IPVS in the lab")
}

fn netinfo(ns: &str) -> NetInfo {
    netns::run_in(ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(NetInfo::read())
    })
    .expect("reading interfaces in the lab")
}

fn arp_conf(ns: &str, iface: &str) -> ArpConf {
    let iface = iface.to_string();
    netns::run_in(ns, move || {
        ArpConf::read(&iface).ok_or_else(|| anyhow::anyhow!("no sysctls for {iface}"))
    })
    .unwrap()
}

fn lb_service(st: &IpvsState) -> &VirtualService {
    st.lookup(lb(), LB_PORT, Proto::Tcp)
        .unwrap_or_else(|| panic!("no virtual service for the LB IP in {st:#?}"))
}

/// Waits until the LB service's first real server has scheduled more than
/// `before` connections; that state.
fn counters_past(ns: &str, before: u64) -> IpvsState {
    netns::wait_for(COUNTERS, || {
        let st = read_ipvs(ns);
        let moved = lb_service(&st).reals.first()?.stats.conns > before;
        moved.then_some(st)
    })
    .unwrap_or_else(|| panic!("IPVS counters did not move: {:#?}", read_ipvs(ns)))
}

#[test]
fn healthy() {
    if !ipvs_or_skip("healthy") {
        return;
    }
    let lab = IpvsLab::new(
        "ipvsok",
        IpvsSpec {
            name_comments: true,
            ..Default::default()
        },
    )
    .unwrap();
    let node = lab.node();
    let st = read_ipvs(&node);
    assert!(st.in_use(), "{:?}", st.not_in_use);
    assert!(st.problems.is_empty(), "{:?}", st.problems);
    let vs = lb_service(&st);
    assert_eq!(vs.scheduler, ipvs_lab::SCHEDULER);
    assert!(!vs.persistent());
    assert_eq!(vs.reals.len(), 1, "{vs:#?}");
    let real = &vs.reals[0];
    assert_eq!((real.addr, real.port), (IpAddr::V4(POD), POD_PORT));
    assert_eq!((real.forward, real.weight), (Forward::Masq, 1));
    // kube-proxy's sets and rules: a cluster-wide LoadBalancer, masqueraded,
    // named by the entry comment the lab added.
    assert_eq!(vs.kind, Some(AddressKind::LoadBalancer));
    assert_eq!(vs.service_name.as_deref(), Some("default/web:http"));
    assert!(!vs.local_only);
    assert_eq!(vs.masquerade, Some(true), "{:#?}", st.nat);
    assert_eq!(st.nat.masq_mark.as_deref(), Some("0x4000/0x4000"));
    let cluster = st
        .lookup("10.96.0.10".parse().unwrap(), LB_PORT, Proto::Tcp)
        .expect("the ClusterIP's virtual service");
    assert_eq!(cluster.kind, Some(AddressKind::ClusterIp));
    assert_eq!(st.services.len(), 2);
    let conns_before = real.stats.conns;

    let body = netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    assert!(body.contains("hello from pod"), "{body}");

    let st = counters_past(&node, conns_before);
    let real = &lb_service(&st).reals[0];
    assert!(
        real.active_conns + real.inactive_conns >= 1,
        "the connection is counted on the real server: {real:#?}"
    );
    assert!(
        real.stats.in_packets > 0 && real.stats.out_packets > 0,
        "{real:#?}"
    );
    // The other engineer's starting point: what netinfo makes of kube-ipvs0.
    let info = netinfo(&node);
    let dummy = info.by_name(ipvs_lab::DUMMY).expect("kube-ipvs0");
    eprintln!(
        "netinfo: {} kind {:?} up {} role {:?}",
        dummy.name,
        dummy.kind,
        dummy.up,
        info.role(dummy.index)
    );
}

#[test]
fn no_real_servers() {
    if !ipvs_or_skip("no_real_servers") {
        return;
    }
    let lab = IpvsLab::new(
        "ipvsnone",
        IpvsSpec {
            reals: Reals::None,
            ..Default::default()
        },
    )
    .unwrap();
    let st = read_ipvs(&lab.node());
    let vs = lb_service(&st);
    assert!(vs.reals.is_empty(), "{vs:#?}");
    assert_eq!(vs.usable_reals().count(), 0);
    // Exactly kube-proxy's layout: the sets name no Service.
    assert_eq!(vs.kind, Some(AddressKind::LoadBalancer));
    assert_eq!(vs.service_name, None);
    assert_eq!(vs.masquerade, Some(true));
    // IPVS has nowhere to send the connection: it answers port unreachable.
    let err = netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap_err();
    eprintln!("client: {err:#}");
    let st = read_ipvs(&lab.node());
    assert!(lb_service(&st).reals.is_empty());
}

#[test]
fn refusing_real_server() {
    if !ipvs_or_skip("refusing_real_server") {
        return;
    }
    let lab = IpvsLab::new(
        "ipvsrst",
        IpvsSpec {
            reals: Reals::Refusing,
            ..Default::default()
        },
    )
    .unwrap();
    let node = lab.node();
    let st = read_ipvs(&node);
    let vs = lb_service(&st);
    assert_eq!(vs.reals.len(), 1);
    assert_eq!(vs.usable_reals().count(), 1);
    let before = vs.reals[0].stats.conns;
    let err = netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("refused"),
        "the pod's RST reaches the client: {msg}"
    );
    // IPVS scheduled the connection to the pod all the same.
    let st = counters_past(&node, before);
    let real = &lb_service(&st).reals[0];
    assert_eq!(real.active_conns, 0, "{real:#?}");
}

#[test]
fn strict_arp_on_and_off() {
    if !ipvs_or_skip("strict_arp_on_and_off") {
        return;
    }
    // No speaker: only the node's kernel can answer ARP for the LB IP.
    let lab = IpvsLab::new(
        "ipvsarp",
        IpvsSpec {
            strict_arp: false,
            speaker: false,
            ..Default::default()
        },
    )
    .unwrap();
    let (node, client) = (lab.node(), lab.client());
    let off = arp_conf(&node, "eth0");
    assert!(
        !off.strict() && off.answers_for_other_interfaces(),
        "{off:?}"
    );
    // The kernel answers for the IP on kube-ipvs0 on eth0.
    let body = netns::http_get(&client, lab.lb_addr(), T).unwrap();
    assert!(body.contains("hello from pod"), "{body}");

    lab.set_strict_arp(true).unwrap();
    in_ns(&client, &["ip", "neigh", "flush", "all"]).unwrap();
    let on = arp_conf(&node, "eth0");
    assert_eq!((on.arp_ignore.all, on.arp_ignore.effective), (1, 1));
    assert_eq!(on.arp_announce.effective, 2);
    assert!(on.strict() && !on.answers_for_other_interfaces(), "{on:?}");
    // Now nobody answers: the LB IP is unreachable without a speaker.
    let err = netns::http_get(&client, lab.lb_addr(), T).unwrap_err();
    eprintln!("client with strictARP and no speaker: {err:#}");
    let neigh = in_ns(&client, &["ip", "neigh", "show", &LB.to_string()]).unwrap();
    assert!(!neigh.contains("lladdr"), "nobody should answer: {neigh}");

    // The interface's own value counts too: the kernel takes the larger.
    lab.set_strict_arp(false).unwrap();
    lab.lab
        .sysctl(&node, "net.ipv4.conf.eth0.arp_ignore=1")
        .unwrap();
    let dev = arp_conf(&node, "eth0");
    assert_eq!(
        (
            dev.arp_ignore.all,
            dev.arp_ignore.iface,
            dev.arp_ignore.effective
        ),
        (0, 1, 1)
    );
    assert!(!dev.answers_for_other_interfaces());
}

/// A plain lab (no kube-proxy) for the interface-role tests.
fn plain_lab(name: &str) -> Lab {
    Lab::new(
        name,
        LabSpec {
            kube_proxy: KubeProxy::None,
            services: vec![],
            speaker: false,
            pod_server: false,
            ..Default::default()
        },
    )
    .unwrap()
}

/// Builds an uplink with `add`; false (skipped, reason printed) when the
/// kernel lacks the link type outside the kernel matrix.
fn uplink_or_skip(test: &str, lab: &Lab, add: fn(&Lab) -> anyhow::Result<()>) -> bool {
    match add(lab) {
        Ok(()) => true,
        Err(e) if ipvs_lab::is_missing_link_kind(&e) && !ipvs_lab::in_kernel_matrix() => {
            eprintln!("SKIPPED {test}: {e:#}");
            false
        }
        Err(e) => panic!("{test}: {e:#}"),
    }
}

fn roles(info: &NetInfo) -> Vec<(String, String, IfRole)> {
    info.ifaces
        .values()
        .map(|i| (i.name.clone(), i.kind.clone(), info.role(i.index)))
        .collect()
}

fn role_of(info: &NetInfo, name: &str) -> IfRole {
    let i = info
        .by_name(name)
        .unwrap_or_else(|| panic!("no {name}: {:?}", roles(info)));
    info.role(i.index)
}

#[test]
fn vlan_is_an_uplink() {
    let lab = plain_lab("vlan");
    if !uplink_or_skip("vlan_is_an_uplink", &lab, ipvs_lab::add_vlan_uplink) {
        return;
    }
    let info = netinfo(&lab.node());
    eprintln!("roles: {:?}", roles(&info));
    assert_eq!(info.by_name("eth0.100").unwrap().kind, "vlan");
    assert_eq!(role_of(&info, "eth0.100"), IfRole::Uplink);
    assert_eq!(role_of(&info, "eth0"), IfRole::Uplink);
}

#[test]
fn bond_is_an_uplink() {
    let lab = plain_lab("bond");
    if !uplink_or_skip("bond_is_an_uplink", &lab, ipvs_lab::add_bond_uplink) {
        return;
    }
    let info = netinfo(&lab.node());
    eprintln!("roles: {:?}", roles(&info));
    let slave = info.by_name("eth2").expect("eth2");
    let bond = info.by_name("bond0").expect("bond0");
    assert_eq!(
        (bond.kind.as_str(), slave.master),
        ("bond", Some(bond.index))
    );
    assert_eq!(role_of(&info, "bond0"), IfRole::Uplink);
    // The slave stands in for a NIC; how netinfo classifies it is reported,
    // not asserted (a veth without address reads as a pod veth today).
    eprintln!("bond slave eth2 (veth): {:?}", role_of(&info, "eth2"));
}
