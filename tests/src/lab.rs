//! The lab: a small bare-metal cluster built from network namespaces, used by
//! the integration tests and by `cargo xtask demo`.
//!
//! ```text
//!   client 192.0.2.10 ─┐                      ┌─ remote 198.51.100.10
//!                      │  sw (bridge br0)      │
//!   node  192.0.2.2 ───┼── 192.0.2.0/24 ───────┼─ router 192.0.2.1 / 198.51.100.1
//!    │ cni0 10.244.1.1 │                       │        203.0.113.1 (eth2)
//!    │  └ pod 10.244.1.5:8080                  │
//!    └ eth1 203.0.113.2 ── (optional) ─────────┘
//!   node2 192.0.2.3 ───┘  (optional, pod2 10.244.2.7 via host route or VXLAN)
//! ```
//!
//! The LB IP 192.0.2.240 is on the LAN: the node answers ARP for it like a
//! MetalLB speaker in L2 mode and runs kube-proxy-style rules (iptables-nft or
//! nftables) that DNAT it to the pod. Only documentation and 10.244/16
//! addresses are used, all inside namespaces the lab creates and deletes.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};

use crate::{
    kubeproxy_rules::{self, EpSpec, SvcSpec},
    netns::{self, Background, in_ns, in_ns_stdin, sh},
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const NODE2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 3);
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const LB: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 240);
pub const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const ROUTER_REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const NODE_ETH1: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
pub const ROUTER_ETH2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// An address on the second link nobody answers for.
pub const NOBODY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
pub const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
pub const POD_GW: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
pub const POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
pub const POD_PORT: u16 = 8080;
/// The LB IP announced over BGP (another subnet than the LAN).
pub const BGP_LB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 240);
const BGPD: &str = "/usr/lib/frr/bgpd";

/// bgpd configuration for one side of a session (FRR 8 syntax).
pub fn bgp_config(
    asn: u32,
    router_id: Ipv4Addr,
    peer: Ipv4Addr,
    peer_as: u32,
    announce: Option<&str>,
) -> String {
    let mut c = format!(
        "hostname as{asn}\nrouter bgp {asn}\n bgp router-id {router_id}\n no bgp ebgp-requires-policy\n no bgp network import-check\n neighbor {peer} remote-as {peer_as}\n neighbor {peer} timers connect 1\n neighbor {peer} timers 3 9\n"
    );
    if let Some(p) = announce {
        c.push_str(&format!(
            " address-family ipv4 unicast\n  network {p}\n exit-address-family\n"
        ));
    }
    c
}
pub const LB_PORT: u16 = 80;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeProxy {
    IptablesNft,
    Nftables,
    /// No kube-proxy rules at all.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node2 {
    /// Pod subnet 10.244.2.0/24 routed via 192.0.2.3 (host-gw style).
    HostRoute,
    /// Pod subnets over VXLAN between the nodes (flannel-like).
    Vxlan,
}

#[derive(Debug, Clone)]
pub struct LabSpec {
    pub kube_proxy: KubeProxy,
    pub services: Vec<SvcSpec>,
    /// Second link node eth1 ↔ router eth2 (for asymmetric paths).
    pub second_uplink: bool,
    pub node2: Option<Node2>,
    /// Rules for node2 too (it is another cluster node).
    pub node2_rules: bool,
    /// MTU of the pod's veth pair.
    pub pod_mtu: Option<u32>,
    /// Answer ARP for the LB IP from the node (the MetalLB speaker is leader here).
    pub speaker: bool,
    /// Start the pod's HTTP server.
    pub pod_server: bool,
    /// The node's LAN NIC is a port of a bridge `br-lan` that holds the
    /// node's address and default route (a bridged NIC, as on VM hosts).
    pub uplink_bridge: bool,
}

/// The usual service: LB 192.0.2.240:80 → pod 10.244.1.5:8080.
pub fn web_service(endpoints: Vec<EpSpec>, etp_local: bool) -> SvcSpec {
    SvcSpec {
        namespace: "default".into(),
        name: "web".into(),
        port_name: "http".into(),
        proto: "tcp",
        lb_ip: LB,
        port: LB_PORT,
        node_port: Some(30080),
        cluster_ip: Ipv4Addr::new(10, 96, 0, 10),
        endpoints,
        etp_local,
        source_ranges: vec![],
        external_ips: vec![],
    }
}

/// A UDP service: LB 192.0.2.240:53 → the pod's :5353 (default/dns:dns).
pub fn dns_service() -> SvcSpec {
    let mut dns = web_service(
        vec![EpSpec {
            port: 5353,
            ..pod_endpoint()
        }],
        false,
    );
    dns.name = "dns".into();
    dns.port_name = "dns".into();
    dns.proto = "udp";
    dns.port = 53;
    dns.node_port = Some(30053);
    dns
}

pub fn pod_endpoint() -> EpSpec {
    EpSpec {
        ip: POD,
        port: POD_PORT,
        local: true,
    }
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            kube_proxy: KubeProxy::IptablesNft,
            services: vec![web_service(vec![pod_endpoint()], false)],
            second_uplink: false,
            node2: None,
            node2_rules: false,
            pod_mtu: None,
            speaker: true,
            pod_server: true,
            uplink_bridge: false,
        }
    }
}

pub struct Lab {
    pub prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    background: Vec<Background>,
    pub spec: LabSpec,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Removes namespaces left by runs that were killed (names start with
/// `prefix` and carry the pid of a process that no longer exists).
pub fn remove_stale(prefix: &str) {
    let Ok(list) = sh(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let pid: Option<u32> = rest
            .split('-')
            .find_map(|p| p.strip_prefix('p'))
            .and_then(|p| p.parse().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = sh(&["ip", "netns", "del", name]);
        }
    }
}

impl Lab {
    /// Builds the lab; `name` keeps namespaces of parallel tests apart.
    pub fn new(name: &str, spec: LabSpec) -> Result<Self> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("the lab needs root (network namespaces)");
        }
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("lbt-{name}-p{}-{n}", std::process::id());
        let mut lab = Self {
            prefix,
            namespaces: Vec::new(),
            children: Vec::new(),
            background: Vec::new(),
            spec,
        };
        // On error, Drop removes whatever was built.
        lab.build()
            .with_context(|| format!("building lab {}", lab.prefix))?;
        Ok(lab)
    }

    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }
    pub fn node(&self) -> String {
        self.ns("node")
    }
    pub fn client(&self) -> String {
        self.ns("client")
    }
    pub fn pod(&self) -> String {
        self.ns("pod")
    }
    pub fn router(&self) -> String {
        self.ns("router")
    }
    pub fn remote(&self) -> String {
        self.ns("remote")
    }
    pub fn node2(&self) -> String {
        self.ns("node2")
    }
    pub fn pod2(&self) -> String {
        self.ns("pod2")
    }

    fn add_ns(&mut self, role: &str) -> Result<String> {
        let ns = self.ns(role);
        sh(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        in_ns(&ns, &["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A veth pair between two namespaces.
    fn link(&self, a: &str, a_if: &str, b: &str, b_if: &str) -> Result<()> {
        sh(&[
            "ip", "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ])?;
        Ok(())
    }

    fn addr(&self, ns: &str, iface: &str, cidr: &str) -> Result<()> {
        in_ns(ns, &["ip", "addr", "add", cidr, "dev", iface])?;
        in_ns(ns, &["ip", "link", "set", iface, "up"])?;
        Ok(())
    }

    pub fn sysctl(&self, ns: &str, kv: &str) -> Result<()> {
        in_ns(ns, &["sysctl", "-qw", kv])?;
        Ok(())
    }

    fn lan_port(&self, sw: &str, ns: &str, port: &str) -> Result<()> {
        self.link(ns, "eth0", sw, port)?;
        in_ns(sw, &["ip", "link", "set", port, "master", "br0", "up"])?;
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.add_ns("sw")?;
        in_ns(&sw, &["ip", "link", "add", "br0", "type", "bridge"])?;
        in_ns(&sw, &["ip", "link", "set", "br0", "up"])?;
        let (client, node, pod, router, remote) = (
            self.add_ns("client")?,
            self.add_ns("node")?,
            self.add_ns("pod")?,
            self.add_ns("router")?,
            self.add_ns("remote")?,
        );
        self.lan_port(&sw, &client, "client")?;
        self.lan_port(&sw, &node, "node")?;
        self.lan_port(&sw, &router, "router")?;
        self.addr(&client, "eth0", "192.0.2.10/24")?;
        in_ns(
            &client,
            &["ip", "route", "add", "default", "via", "192.0.2.1"],
        )?;
        if self.spec.uplink_bridge {
            in_ns(&node, &["ip", "link", "add", "br-lan", "type", "bridge"])?;
            in_ns(
                &node,
                &["ip", "link", "set", "eth0", "master", "br-lan", "up"],
            )?;
        }
        let lan = self.lan_iface();
        self.addr(&node, lan, "192.0.2.2/24")?;
        in_ns(
            &node,
            &["ip", "route", "add", "default", "via", "192.0.2.1"],
        )?;
        self.addr(&router, "eth0", "192.0.2.1/24")?;
        self.link(&router, "eth1", &remote, "eth0")?;
        self.addr(&router, "eth1", "198.51.100.1/24")?;
        self.addr(&remote, "eth0", "198.51.100.10/24")?;
        in_ns(
            &remote,
            &["ip", "route", "add", "default", "via", "198.51.100.1"],
        )?;
        self.sysctl(&router, "net.ipv4.ip_forward=1")?;

        // The node: forwarding on, pods behind a bridge.
        self.sysctl(&node, "net.ipv4.ip_forward=1")?;
        in_ns(&node, &["ip", "link", "add", "cni0", "type", "bridge"])?;
        self.addr(&node, "cni0", "10.244.1.1/24")?;
        self.link(&node, "vethpod", &pod, "eth0")?;
        if let Some(mtu) = self.spec.pod_mtu {
            let m = mtu.to_string();
            in_ns(&node, &["ip", "link", "set", "vethpod", "mtu", &m])?;
            in_ns(&pod, &["ip", "link", "set", "eth0", "mtu", &m])?;
        }
        in_ns(
            &node,
            &["ip", "link", "set", "vethpod", "master", "cni0", "up"],
        )?;
        self.addr(&pod, "eth0", "10.244.1.5/24")?;
        in_ns(
            &pod,
            &["ip", "route", "add", "default", "via", "10.244.1.1"],
        )?;

        if self.spec.second_uplink {
            self.link(&node, "eth1", &router, "eth2")?;
            self.addr(&node, "eth1", "203.0.113.2/28")?;
            self.addr(&router, "eth2", "203.0.113.1/28")?;
        }
        if let Some(kind) = self.spec.node2 {
            self.build_node2(&sw, kind)?;
        }
        let rules = self.spec.kube_proxy;
        self.install_rules(&node, rules)?;
        if self.spec.node2.is_some() && self.spec.node2_rules {
            let n2 = self.node2();
            self.install_rules(&n2, rules)?;
        }
        if self.spec.speaker {
            self.start_speaker("node")?;
        }
        if self.spec.pod_server {
            let b = netns::http_server(&pod, SocketAddr::from((POD, POD_PORT)), "hello from pod")?;
            self.background.push(b);
        }
        Ok(())
    }

    fn build_node2(&mut self, sw: &str, kind: Node2) -> Result<()> {
        let node = self.node();
        let (n2, p2) = (self.add_ns("node2")?, self.add_ns("pod2")?);
        self.lan_port(sw, &n2, "node2")?;
        self.addr(&n2, "eth0", "192.0.2.3/24")?;
        in_ns(&n2, &["ip", "route", "add", "default", "via", "192.0.2.1"])?;
        self.sysctl(&n2, "net.ipv4.ip_forward=1")?;
        in_ns(&n2, &["ip", "link", "add", "cni0", "type", "bridge"])?;
        self.addr(&n2, "cni0", "10.244.2.1/24")?;
        self.link(&n2, "vethpod", &p2, "eth0")?;
        in_ns(
            &n2,
            &["ip", "link", "set", "vethpod", "master", "cni0", "up"],
        )?;
        self.addr(&p2, "eth0", "10.244.2.7/24")?;
        in_ns(&p2, &["ip", "route", "add", "default", "via", "10.244.2.1"])?;
        match kind {
            Node2::HostRoute => {
                in_ns(
                    &node,
                    &["ip", "route", "add", "10.244.2.0/24", "via", "192.0.2.3"],
                )?;
                in_ns(
                    &n2,
                    &["ip", "route", "add", "10.244.1.0/24", "via", "192.0.2.2"],
                )?;
            }
            Node2::Vxlan => {
                // As flannel's vxlan backend does: a VTEP per node holding the
                // subnet's .0, the other subnet routed onlink via the remote
                // VTEP's .0, whose MAC is a permanent neighbour entry.
                let vteps = [
                    (
                        &node,
                        "192.0.2.2",
                        "192.0.2.3",
                        "10.244.1.0",
                        "02:00:0a:f4:01:00",
                        "10.244.2.0",
                        "02:00:0a:f4:02:00",
                    ),
                    (
                        &n2,
                        "192.0.2.3",
                        "192.0.2.2",
                        "10.244.2.0",
                        "02:00:0a:f4:02:00",
                        "10.244.1.0",
                        "02:00:0a:f4:01:00",
                    ),
                ];
                for (ns, local, remote, own, own_mac, peer, peer_mac) in vteps {
                    in_ns(
                        ns,
                        &[
                            "ip",
                            "link",
                            "add",
                            "vxlan0",
                            "address",
                            own_mac,
                            "type",
                            "vxlan",
                            "id",
                            "1",
                            "local",
                            local,
                            "dstport",
                            "8472",
                            "dev",
                            "eth0",
                            "nolearning",
                        ],
                    )?;
                    in_ns(
                        ns,
                        &["ip", "addr", "add", &format!("{own}/32"), "dev", "vxlan0"],
                    )?;
                    in_ns(ns, &["ip", "link", "set", "vxlan0", "up"])?;
                    in_ns(
                        ns,
                        &[
                            "ip",
                            "neigh",
                            "add",
                            peer,
                            "lladdr",
                            peer_mac,
                            "dev",
                            "vxlan0",
                            "nud",
                            "permanent",
                        ],
                    )?;
                    in_ns(
                        ns,
                        &[
                            "bridge", "fdb", "append", peer_mac, "dev", "vxlan0", "dst", remote,
                        ],
                    )?;
                    in_ns(
                        ns,
                        &[
                            "ip",
                            "route",
                            "add",
                            &format!("{}/24", peer),
                            "via",
                            peer,
                            "dev",
                            "vxlan0",
                            "onlink",
                        ],
                    )?;
                }
            }
        }
        let b = netns::http_server(&p2, SocketAddr::from((POD2, POD_PORT)), "hello from pod2")?;
        self.background.push(b);
        Ok(())
    }

    /// kube-proxy's rules for the lab's services, as kube-proxy writes them.
    pub fn install_rules(&self, ns: &str, mode: KubeProxy) -> Result<()> {
        match mode {
            KubeProxy::IptablesNft => {
                let text = kubeproxy_rules::iptables_restore(&self.spec.services, false);
                in_ns_stdin(ns, &["iptables-nft-restore"], &text)
                    .context("iptables-nft-restore")?;
            }
            KubeProxy::Nftables => {
                let text = kubeproxy_rules::nft_script(&self.spec.services, false);
                in_ns_stdin(ns, &["nft", "-f", "-"], &text).context("nft -f")?;
            }
            KubeProxy::None => {}
        }
        Ok(())
    }

    pub fn mac(&self, ns: &str, iface: &str) -> Result<[u8; 6]> {
        let out = in_ns(ns, &["cat", &format!("/sys/class/net/{iface}/address")])
            .or_else(|_| in_ns(ns, &["ip", "-br", "link", "show", iface]))?;
        parse_mac(&out).with_context(|| format!("no MAC for {iface} in {ns}: {out}"))
    }

    /// The node's interface holding its LAN address: eth0, or the bridge
    /// it is a port of.
    pub fn lan_iface(&self) -> &'static str {
        if self.spec.uplink_bridge {
            "br-lan"
        } else {
            "eth0"
        }
    }

    /// Makes `role`'s LAN interface answer ARP for the LB IP (the L2 leader).
    pub fn start_speaker(&mut self, role: &str) -> Result<()> {
        let iface = if role == "node" {
            self.lan_iface()
        } else {
            "eth0"
        };
        self.start_speaker_on(role, iface)
    }

    /// Makes `role`'s `iface` answer ARP for the LB IP with its MAC.
    pub fn start_speaker_on(&mut self, role: &str, iface: &str) -> Result<()> {
        let ns = self.ns(role);
        let mac = self.mac(&ns, iface)?;
        let b = netns::arp_responder(&ns, iface, mac, vec![LB])?;
        self.background.push(b);
        Ok(())
    }

    /// Another interface `iface` of `role` on the LAN switch, with `cidr`
    /// (a second NIC on the same segment).
    pub fn add_lan_iface(&mut self, role: &str, iface: &str, cidr: &str) -> Result<()> {
        let (sw, ns) = (self.ns("sw"), self.ns(role));
        let port = format!("{}-{iface}", &role[..role.len().min(6)]);
        self.link(&ns, iface, &sw, &port)?;
        in_ns(&sw, &["ip", "link", "set", &port, "master", "br0", "up"])?;
        self.addr(&ns, iface, cidr)?;
        Ok(())
    }

    /// Another pod on the node's pod bridge, at `ip` (in 10.244.1.0/24),
    /// answering HTTP on [`POD_PORT`] when `server` is set.
    pub fn add_pod(&mut self, name: &str, ip: Ipv4Addr, server: bool) -> Result<String> {
        let node = self.node();
        let ns = self.add_ns(name)?;
        let veth = format!("veth{name}");
        self.link(&node, &veth, &ns, "eth0")?;
        in_ns(&node, &["ip", "link", "set", &veth, "master", "cni0", "up"])?;
        self.addr(&ns, "eth0", &format!("{ip}/24"))?;
        in_ns(&ns, &["ip", "route", "add", "default", "via", "10.244.1.1"])?;
        if server {
            let b = netns::http_server(
                &ns,
                SocketAddr::from((ip, POD_PORT)),
                &format!("hello from {name}"),
            )?;
            self.background.push(b);
        }
        Ok(ns)
    }

    /// Keeps a background task alive for the lab's lifetime.
    pub fn keep(&mut self, b: Background) {
        self.background.push(b);
    }

    /// A directory for this lab's files (FRR configs ...), removed with it.
    pub fn dir(&self, role: &str) -> Result<std::path::PathBuf> {
        let d = std::env::temp_dir().join(&self.prefix).join(role);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// Runs FRR's bgpd in `role`'s namespace with `config`, standalone (no
    /// zebra, no kernel routes), until the lab goes.
    pub fn start_bgpd(&mut self, role: &str, config: &str) -> Result<()> {
        let dir = self.dir(role)?;
        let conf = dir.join("bgpd.conf");
        std::fs::write(&conf, config)?;
        let ns = self.ns(role);
        let (conf, pid, vty) = (
            conf.display().to_string(),
            dir.join("bgpd.pid").display().to_string(),
            dir.display().to_string(),
        );
        self.spawn(
            &ns,
            &[
                BGPD,
                "-Z",
                "-S",
                "-n",
                "-P",
                "0",
                "-f",
                &conf,
                "-i",
                &pid,
                "--vty_socket",
                &vty,
            ],
        )?;
        Ok(())
    }

    /// A vtysh command against `role`'s bgpd.
    pub fn vtysh(&self, role: &str, cmd: &str) -> Result<String> {
        let vty = self.dir(role)?.display().to_string();
        in_ns(&self.ns(role), &["vtysh", "--vty_socket", &vty, "-c", cmd])
    }

    /// Starts a process inside a namespace, killed when the lab goes.
    pub fn spawn(&mut self, ns: &str, args: &[&str]) -> Result<&mut Child> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", args.join(" ")))?;
        self.children.push(child);
        Ok(self.children.last_mut().expect("just pushed"))
    }

    pub fn lb_addr(&self) -> SocketAddr {
        SocketAddr::from((LB, LB_PORT))
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    s.split_whitespace().find_map(|w| {
        let parts: Vec<u8> = w
            .split(':')
            .filter_map(|p| u8::from_str_radix(p, 16).ok())
            .collect();
        (parts.len() == 6 && w.len() == 17).then(|| parts.try_into().expect("6 bytes"))
    })
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("LBT_KEEP_LAB").is_some() {
            // Debugging aid: leave the namespaces for inspection.
            eprintln!("keeping lab {} (LBT_KEEP_LAB set)", self.prefix);
            return;
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Threads first: they hold sockets inside the namespaces.
        self.background.clear();
        for ns in self.namespaces.iter().rev() {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&self.prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("02:42:ac:11:00:02\n"),
            Some([2, 0x42, 0xac, 0x11, 0, 2])
        );
        assert_eq!(
            parse_mac("eth0 UP 02:42:ac:11:00:02 <BROADCAST>"),
            Some([2, 0x42, 0xac, 0x11, 0, 2])
        );
        assert_eq!(parse_mac("nothing"), None);
    }
}
