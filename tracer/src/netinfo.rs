//! What the node's network looks like (interfaces, addresses, routes,
//! sysctls), read over rtnetlink and /proc/sys in lbpath's own namespace.
//! Used to name interfaces, tell a pod veth from an uplink, and explain
//! rp_filter and forwarding.
//!
//! Roles come from the topology, never from one kind of device alone: an
//! interface faces the network when routes to other networks leave by it
//! (the default route, or any route through a gateway), when a VLAN or
//! macvlan is stacked on it, or when it is a NIC, bond or VLAN; a bridge
//! facing the network makes its ports uplinks too (a NIC bridged on a VM
//! host), a bridge that does not is a pod bridge and its veths lead to pods.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::{Context, Result};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::{
    address::AddressAttribute,
    link::{LinkAttribute, LinkInfo},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Iface {
    pub index: u32,
    pub name: String,
    /// rtnetlink kind: "veth", "bridge", "vxlan", "dummy" ...; empty for a
    /// physical NIC (or loopback).
    pub kind: String,
    /// Bridge (or bond) this interface is a port of.
    pub master: Option<u32>,
    /// The device a VLAN, macvlan or ipvlan is stacked on (in this namespace).
    pub lower: Option<u32>,
    pub loopback: bool,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub addrs: Vec<(IpAddr, u8)>,
    pub up: bool,
    /// A bridge port's hairpin mode (may a frame leave by the port it came
    /// in on?); None when not a bridge port or unreadable.
    pub hairpin: Option<bool>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Route {
    pub dst: IpAddr,
    pub prefix: u8,
    pub oif: Option<u32>,
    pub gw: Option<IpAddr>,
    pub table: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NetInfo {
    pub ifaces: BTreeMap<u32, Iface>,
    /// IPv4 unicast routes of the main table.
    pub routes: Vec<Route>,
}

/// How an interface relates to the traced path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IfRole {
    /// A veth leading into a pod's namespace.
    PodVeth,
    /// A bridge pods hang off (cni0, cbr0, docker0 ...).
    Bridge,
    /// An overlay tunnel device (VXLAN, Geneve, IPIP ...).
    Overlay,
    /// Anything else: a NIC or VLAN towards the network, other nodes, clients.
    Uplink,
    Loopback,
}

impl NetInfo {
    pub async fn read() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        let task = tokio::spawn(conn);
        let mut info = NetInfo::default();
        let mut links = handle.link().get().execute();
        while let Some(msg) = links.try_next().await.context("listing interfaces")? {
            use rtnetlink::packet_route::link::LinkFlags;
            let mut i = Iface {
                index: msg.header.index,
                up: msg.header.flags.contains(LinkFlags::Up),
                loopback: msg.header.flags.contains(LinkFlags::Loopback),
                ..Default::default()
            };
            let (mut link, mut link_netns) = (None, false);
            for a in msg.attributes {
                match a {
                    LinkAttribute::IfName(n) => i.name = crate::escape::visible(&n).into_owned(),
                    LinkAttribute::Mtu(m) => i.mtu = m,
                    LinkAttribute::Controller(m) => i.master = Some(m),
                    LinkAttribute::Link(l) => link = Some(l),
                    LinkAttribute::LinkNetNsId(_) => link_netns = true,
                    LinkAttribute::Address(mac) if mac.len() == 6 => {
                        i.mac = Some(mac.try_into().expect("length checked"))
                    }
                    LinkAttribute::LinkInfo(infos) => {
                        for li in infos {
                            if let LinkInfo::Kind(k) = li {
                                i.kind = k.to_string();
                            }
                        }
                    }
                    _ => {}
                }
            }
            // IFLA_LINK is a stacked device's lower device only for these
            // kinds (a veth's is its peer), and only without a netns id.
            if !link_netns && is_stacked(&i.kind) {
                i.lower = link;
            }
            info.ifaces.insert(i.index, i);
        }
        let bridges: Vec<u32> = info
            .ifaces
            .values()
            .filter(|i| i.kind == "bridge")
            .map(|i| i.index)
            .collect();
        for i in info.ifaces.values_mut() {
            if i.master.is_some_and(|m| bridges.contains(&m)) {
                // rtnetlink gives it only in an AF_BRIDGE dump; sysfs is this
                // namespace's when lbpath runs in it.
                let path = format!("/sys/class/net/{}/brport/hairpin_mode", i.name);
                i.hairpin = std::fs::read_to_string(path).ok().map(|v| v.trim() == "1");
            }
        }
        let mut addrs = handle.address().get().execute();
        while let Some(msg) = addrs.try_next().await.context("listing addresses")? {
            let prefix = msg.header.prefix_len;
            let index = msg.header.index;
            let mut addr = None;
            for a in msg.attributes {
                match a {
                    // IFA_LOCAL is the interface's own address on point-to-point links.
                    AddressAttribute::Local(ip) => addr = Some(ip),
                    AddressAttribute::Address(ip) if addr.is_none() => addr = Some(ip),
                    _ => {}
                }
            }
            if let (Some(ip), Some(i)) = (addr, info.ifaces.get_mut(&index)) {
                i.addrs.push((ip, prefix));
            }
        }
        let req = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = handle.route().get(req).execute();
        while let Some(msg) = routes.try_next().await.context("listing routes")? {
            if let Some(r) = route_of(&msg) {
                info.routes.push(r);
            }
        }
        task.abort();
        Ok(info)
    }

    pub fn name(&self, index: u32) -> String {
        match self.ifaces.get(&index) {
            Some(i) => i.name.clone(),
            None if index == 0 => "-".into(),
            None => format!("if{index}"),
        }
    }

    pub fn by_name(&self, name: &str) -> Option<&Iface> {
        self.ifaces.values().find(|i| i.name == name)
    }

    /// Interfaces holding a default route.
    pub fn default_route_ifaces(&self) -> Vec<u32> {
        self.routes
            .iter()
            .filter(|r| r.prefix == 0 && r.table == 254)
            .filter_map(|r| r.oif)
            .collect()
    }

    pub fn role(&self, index: u32) -> IfRole {
        let Some(i) = self.ifaces.get(&index) else {
            return IfRole::Uplink;
        };
        if i.loopback || i.name == "lo" {
            return IfRole::Loopback;
        }
        match i.kind.as_str() {
            "veth" | "netkit" => self.veth_role(i),
            "bridge" if self.faces_network(i) => IfRole::Uplink,
            "bridge" if self.ports(index).any(|p| is_veth(&p.kind)) => IfRole::Bridge,
            "vxlan" | "geneve" | "ipip" | "gre" | "sit" | "wireguard" | "ip6tnl" => IfRole::Overlay,
            // NICs, bonds, VLANs, macvlans, taps of VMs ...
            _ => IfRole::Uplink,
        }
    }

    /// A veth (or netkit) leads into a pod unless something says it faces
    /// the network: a bridge or bond that does, or its own addresses and
    /// routes. A pod veth carries no address of its own on the node side (it
    /// is a pod bridge's port, or routed with a /32 as Calico does).
    fn veth_role(&self, i: &Iface) -> IfRole {
        match i.master.and_then(|m| self.ifaces.get(&m)) {
            Some(m) if m.kind == "bridge" => {
                return if self.faces_network(m) {
                    IfRole::Uplink
                } else {
                    IfRole::PodVeth
                };
            }
            Some(m) if matches!(m.kind.as_str(), "bond" | "team") => return IfRole::Uplink,
            _ => {}
        }
        if i.addrs.iter().any(|(ip, _)| is_global(ip)) || self.faces_network(i) {
            IfRole::Uplink
        } else {
            IfRole::PodVeth
        }
    }

    /// Whether an interface (a bridge, a veth) leads to the network rather
    /// than to pods: routes to other networks leave by it, a VLAN or
    /// macvlan is stacked on it, or (a bridge) one of its ports is a NIC,
    /// bond or VLAN.
    fn faces_network(&self, i: &Iface) -> bool {
        let routed = self
            .routes
            .iter()
            .any(|r| r.oif == Some(i.index) && (r.prefix == 0 || r.gw.is_some()));
        let stacked_on = self.ifaces.values().any(|s| s.lower == Some(i.index));
        let nic_port = i.kind == "bridge"
            && self
                .ports(i.index)
                .any(|p| !p.loopback && is_nic_like(&p.kind));
        routed || stacked_on || nic_port
    }

    fn ports(&self, master: u32) -> impl Iterator<Item = &Iface> {
        self.ifaces
            .values()
            .filter(move |p| p.master == Some(master))
    }

    /// The interface the IP layer sees a frame arriving on `name` come in
    /// by: the bridge or bond it is a port of, else itself.
    pub fn l3_name(&self, name: &str) -> String {
        self.by_name(name)
            .and_then(|i| i.master)
            .and_then(|m| self.ifaces.get(&m))
            .filter(|m| matches!(m.kind.as_str(), "bridge" | "bond" | "team"))
            .map(|m| m.name.clone())
            .unwrap_or_else(|| name.to_string())
    }

    /// Whether the IP layer uses this interface itself (it is not a port of
    /// a bridge or bond, which receives and sends in its place).
    pub fn is_l3(&self, index: u32) -> bool {
        self.ifaces
            .get(&index)
            .and_then(|i| i.master)
            .and_then(|m| self.ifaces.get(&m))
            .is_none_or(|m| !matches!(m.kind.as_str(), "bridge" | "bond" | "team"))
    }

    /// The node-side interfaces leading into pods, for the kernel's POD_IFS.
    pub fn pod_ifaces(&self) -> Vec<u32> {
        self.ifaces
            .keys()
            .copied()
            .filter(|&i| self.role(i) == IfRole::PodVeth)
            .collect()
    }

    /// Where BGP sessions run: the node's Ethernet uplinks the IP layer
    /// uses (a bridge or bond, not its ports, so no segment is seen twice).
    pub fn bgp_ifaces(&self) -> Vec<String> {
        self.ifaces
            .values()
            .filter(|i| {
                i.up && i.mac.is_some()
                    && self.role(i.index) == IfRole::Uplink
                    && self.is_l3(i.index)
            })
            .map(|i| i.name.clone())
            .collect()
    }

    pub fn is_local(&self, ip: IpAddr) -> bool {
        self.ifaces
            .values()
            .any(|i| i.addrs.iter().any(|(a, _)| *a == ip))
    }

    /// Longest-prefix match in the main table (for hints; the kernel's own
    /// decision comes from the fib tracepoint).
    pub fn route_to(&self, ip: IpAddr) -> Option<&Route> {
        self.routes
            .iter()
            .filter(|r| r.table == 254 && prefix_contains(r.dst, r.prefix, ip))
            .max_by_key(|r| r.prefix)
    }
}

fn is_veth(kind: &str) -> bool {
    matches!(kind, "veth" | "netkit")
}

/// Devices whose IFLA_LINK is the device they are stacked on.
fn is_stacked(kind: &str) -> bool {
    matches!(
        kind,
        "vlan" | "macvlan" | "macvtap" | "ipvlan" | "ipvtap" | "macsec"
    )
}

/// A port that makes a bridge face the network: a NIC (no kind), a bond
/// or team, or a stacked device.
fn is_nic_like(kind: &str) -> bool {
    kind.is_empty() || matches!(kind, "bond" | "team") || is_stacked(kind)
}

fn is_global(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
        IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    }
}

pub fn prefix_contains(net: IpAddr, len: u8, ip: IpAddr) -> bool {
    ipnet::IpNet::new(net, len).is_ok_and(|n| n.contains(&ip))
}

fn route_of(msg: &RouteMessage) -> Option<Route> {
    if msg.header.kind != RouteType::Unicast {
        return None;
    }
    let mut r = Route {
        dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        prefix: msg.header.destination_prefix_length,
        oif: None,
        gw: None,
        table: msg.header.table as u32,
    };
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => r.dst = IpAddr::V4(*ip),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => r.gw = Some(IpAddr::V4(*ip)),
            RouteAttribute::Oif(o) => r.oif = Some(*o),
            RouteAttribute::Table(t) => r.table = *t,
            _ => {}
        }
    }
    Some(r)
}

/// A value under /proc/sys/net (per network namespace: the caller's).
pub fn sysctl(path: &str) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/sys/net/{path}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// rp_filter for an interface: (all, interface, effective). The kernel uses
/// the maximum of the two.
/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn rp_filter(iface: &str) -> (i64, i64, i64) {
    let all = sysctl("ipv4/conf/all/rp_filter").unwrap_or(0);
    let dev = sysctl(&format!("ipv4/conf/{iface}/rp_filter")).unwrap_or(0);
    (all, dev, all.max(dev))
}

pub fn rp_filter_name(v: i64) -> &'static str {
    match v {
        0 => "off",
        1 => "strict",
        _ => "loose",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(index: u32, name: &str, kind: &str, addr: Option<&str>, master: Option<u32>) -> Iface {
        Iface {
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
        }
    }

    fn default_via(n: &mut NetInfo, oif: u32, gw: &str) {
        n.routes.push(Route {
            dst: "0.0.0.0".parse().unwrap(),
            prefix: 0,
            oif: Some(oif),
            gw: Some(gw.parse().unwrap()),
            table: 254,
        });
    }

    fn sample() -> NetInfo {
        let mut n = NetInfo::default();
        for i in [
            iface(1, "lo", "", Some("127.0.0.1"), None),
            iface(2, "eth0", "veth", Some("192.0.2.2"), None),
            iface(3, "cni0", "bridge", Some("10.244.1.1"), None),
            iface(4, "veth1234", "veth", None, Some(3)),
            iface(5, "flannel.1", "vxlan", Some("10.244.1.0"), None),
            iface(6, "cali12", "veth", None, None),
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
        n.routes.push(Route {
            dst: "10.244.1.0".parse().unwrap(),
            prefix: 24,
            oif: Some(3),
            gw: None,
            table: 254,
        });
        n
    }

    #[test]
    fn roles() {
        let n = sample();
        assert_eq!(n.role(2), IfRole::Uplink);
        assert_eq!(n.role(3), IfRole::Bridge);
        assert_eq!(n.role(4), IfRole::PodVeth);
        assert_eq!(n.role(5), IfRole::Overlay);
        assert_eq!(n.role(6), IfRole::PodVeth);
        assert_eq!(n.role(1), IfRole::Loopback);
        assert_eq!(n.pod_ifaces(), vec![4, 6]);
    }

    /// A NIC bridged on a VM host: the bridge holds the node's address and
    /// the default route, the NIC (here a veth without an address, as in a
    /// lab) is its port. Neither is a pod's; the pod bridge beside it is.
    #[test]
    fn bridged_uplink_is_an_uplink() {
        let mut n = NetInfo::default();
        for i in [
            iface(1, "lo", "", Some("127.0.0.1"), None),
            iface(2, "eth0", "veth", None, Some(3)),
            iface(3, "br-lan", "bridge", Some("192.0.2.2"), None),
            iface(4, "vnet0", "tun", None, Some(3)),
            iface(5, "cni0", "bridge", Some("10.244.1.1"), None),
            iface(6, "vethpod", "veth", None, Some(5)),
        ] {
            n.ifaces.insert(i.index, i);
        }
        default_via(&mut n, 3, "192.0.2.1");
        assert_eq!(n.role(3), IfRole::Uplink);
        assert_eq!(n.role(2), IfRole::Uplink);
        assert_eq!(n.role(4), IfRole::Uplink);
        assert_eq!(n.role(5), IfRole::Bridge);
        assert_eq!(n.role(6), IfRole::PodVeth);
        assert_eq!(n.pod_ifaces(), vec![6]);
        // The IP layer sees the bridge, not its port.
        assert_eq!(n.l3_name("eth0"), "br-lan");
        assert_eq!(n.l3_name("br-lan"), "br-lan");
        assert!(!n.is_l3(2) && n.is_l3(3));

        // Without a default route through it, a NIC port still makes the
        // bridge face the network (a second, bridged network).
        let mut n2 = n.clone();
        n2.routes.clear();
        n2.ifaces.get_mut(&2).unwrap().kind = String::new();
        assert_eq!(n2.role(3), IfRole::Uplink);
        assert_eq!(n2.role(2), IfRole::Uplink);
        assert_eq!(n2.role(6), IfRole::PodVeth);
    }

    /// Bonds and VLANs (no bonding/8021q modules in the test kernel, so the
    /// classification is checked on its own): slaves of a bond, the bond,
    /// a VLAN on it and a bridge over it are uplinks; so is an address-less
    /// veth a VLAN is stacked on, or one enslaved to a bond.
    #[test]
    fn bond_and_vlan_uplinks() {
        let mut n = NetInfo::default();
        for mut i in [
            iface(2, "eno1", "", None, Some(4)),
            iface(3, "vethb", "veth", None, Some(4)),
            iface(4, "bond0", "bond", None, None),
            iface(5, "bond0.100", "vlan", Some("192.0.2.2"), None),
            iface(6, "veth-up", "veth", None, None),
            iface(7, "veth-up.200", "vlan", Some("198.51.100.2"), None),
            iface(8, "br0", "bridge", Some("203.0.113.2"), None),
            iface(9, "bond1", "bond", None, Some(8)),
            iface(10, "cali1", "veth", None, None),
        ] {
            i.lower = match i.index {
                5 => Some(4),
                7 => Some(6),
                _ => None,
            };
            n.ifaces.insert(i.index, i);
        }
        default_via(&mut n, 5, "192.0.2.1");
        n.routes.push(Route {
            dst: "10.244.1.9".parse().unwrap(),
            prefix: 32,
            oif: Some(10),
            gw: None,
            table: 254,
        });
        for idx in 2..=9 {
            assert_eq!(n.role(idx), IfRole::Uplink, "{}", n.name(idx));
        }
        assert_eq!(n.role(10), IfRole::PodVeth);
        assert_eq!(n.pod_ifaces(), vec![10]);
        assert_eq!(n.l3_name("eno1"), "bond0");
        assert_eq!(n.l3_name("bond1"), "br0");
    }

    #[test]
    fn routes() {
        let n = sample();
        assert_eq!(
            n.route_to("10.244.1.9".parse().unwrap()).unwrap().oif,
            Some(3)
        );
        assert_eq!(
            n.route_to("198.51.100.7".parse().unwrap()).unwrap().oif,
            Some(2)
        );
        assert!(prefix_contains(
            "10.0.0.0".parse().unwrap(),
            8,
            "10.9.9.9".parse().unwrap()
        ));
        assert!(!prefix_contains(
            "10.0.0.0".parse().unwrap(),
            8,
            "11.0.0.1".parse().unwrap()
        ));
        assert!(prefix_contains(
            "0.0.0.0".parse().unwrap(),
            0,
            "11.0.0.1".parse().unwrap()
        ));
    }
}
