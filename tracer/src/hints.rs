//! What to do about each cause lbpath can name: one table, used by the
//! path verdicts, diagnose's static checks and its verdict, so one cause
//! gets the same advice wherever it is found.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
};

/// A cause, with what its advice needs to be concrete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint<'a> {
    /// kube-proxy has no rule for the address.
    NoRule {
        lb: IpAddr,
    },
    /// The node's rules could not all be read.
    RulesUnreadable,
    /// The Service ("ns/name:port") has no ready endpoint at all.
    NoEndpoints {
        service: &'a str,
    },
    /// externalTrafficPolicy: Local and no endpoint on this node.
    NoLocalEndpoint {
        service: &'a str,
    },
    /// kube-proxy's loadBalancerSourceRanges firewall dropped the client.
    SourceRanges {
        service: &'a str,
        client: IpAddr,
    },
    /// A DROP/REJECT rule of the node, found by its counter.
    FirewallRule,
    /// A netfilter drop with no rule pinned on it, at this hook if known.
    Firewall {
        hook: Option<&'a str>,
    },
    /// rp_filter dropped a request whose way back leaves by another interface.
    RpFilter {
        client: IpAddr,
        arrived: &'a str,
        lb: IpAddr,
    },
    /// rp_filter is strict on an interface that may receive LB traffic.
    RpFilterStrict,
    /// The input route lookup refused the packet (no route, martian, rp_filter).
    InputRoute {
        dst: IpAddr,
        src: IpAddr,
        iif: &'a str,
    },
    /// Nobody answered ARP/ND for the next hop.
    NeighbourFailed {
        next_hop: IpAddr,
        dev: &'a str,
        dst: IpAddr,
    },
    /// A packet larger than the MTU of its way.
    Mtu {
        len: u32,
        mtu: u32,
        dev: &'a str,
    },
    /// The pods' path has a smaller MTU than the uplink.
    PodMtuSmaller,
    NoRoute {
        dst: IpAddr,
    },
    /// Nothing listens on the DNAT target in the pod.
    PodNotListening {
        addr: SocketAddr,
    },
    /// The pod refused the connection.
    Refused,
    /// The node itself got the packet: no DNAT happened.
    NodeNotListening,
    /// A pod reaching itself through its Service, dropped by the bridge:
    /// `port` is the bridge port it came in on, without hairpin mode.
    HairpinOff {
        port: &'a str,
    },
    /// conntrack's table is full.
    ConntrackFull {
        count: u64,
        max: u64,
    },
    /// conntrack could not insert an entry (clash, SNAT without a free port).
    ConntrackInsertFailed,
    /// An established conntrack entry DNATs to an address that is no
    /// longer an endpoint.
    StaleConntrack {
        proto: &'a str,
        client: SocketAddr,
        lb: SocketAddr,
        target: SocketAddr,
    },
    /// The pod got the packet and did not answer.
    PodSilent,
    /// Some endpoints of the Service fail every flow while others answer.
    SomeEndpointsFail {
        endpoints: &'a [SocketAddr],
        /// The advice for the failure itself (the failing flows' hint).
        cause: Option<&'a str>,
    },
    /// The reply leaves by another interface than the request came in on.
    Asymmetric {
        client: IpAddr,
        arrived: &'a str,
        lb: IpAddr,
    },
    /// The endpoint is on another node.
    LeftNode {
        towards: &'a str,
        lb: IpAddr,
    },
    IpForwardOff,
    /// This node answers ARP from two interfaces on one segment (ARP flux).
    /// `speaker`: the address is on no interface here, so the MetalLB
    /// speaker (not the kernel) answers.
    ArpFlux {
        ifaces: &'a [&'a str],
        speaker: bool,
    },
    /// Several MACs answer ARP for the IP.
    SplitBrain {
        lb: IpAddr,
    },
    /// ARP requests for the IP go unanswered.
    NotAnnounced {
        lb: IpAddr,
    },
    /// Another node answers ARP for the IP.
    AnnouncedElsewhere {
        lb: IpAddr,
    },
    /// A BGP session of the speaker fails.
    BgpDown,
    /// Nothing reached this node during the window.
    NoTraffic {
        lb: IpAddr,
    },
}

impl fmt::Display for Hint<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hint::NoRule { lb } => write!(
                f,
                "is the Service there and does it have endpoints? `kubectl get svc -A -o wide | grep {lb}`; is kube-proxy running on this node?"
            ),
            Hint::RulesUnreadable => f.write_str(
                "run lbpath as root in the node's network namespace, with the node's iptables-nft-save, iptables-legacy-save and nft (the lbpath image carries them); `iptables-save -c` and `nft list ruleset` show what failed",
            ),
            Hint::NoEndpoints { service } => {
                let (ns, name) = service_parts(service);
                write!(
                    f,
                    "the Service {service} has no ready endpoints: check its selector and the pods' readiness (`kubectl get endpointslices -n {ns} -l kubernetes.io/service-name={name}`)"
                )
            }
            Hint::NoLocalEndpoint { service } => write!(
                f,
                "{service} has externalTrafficPolicy: Local and no endpoint on this node: MetalLB should announce the IP only from nodes running a ready pod of it (check the speaker on this node and `kubectl get pods -o wide`), or use externalTrafficPolicy: Cluster"
            ),
            Hint::SourceRanges { service, client } => {
                let (ns, name) = service_parts(service);
                write!(
                    f,
                    "{client} is outside the Service's allowed sources: check them with `kubectl get svc {name} -n {ns} -o jsonpath='{{.spec.loadBalancerSourceRanges}}'` and add the client's network (as it arrives here: after any SNAT on the way), or drop the field to allow every source"
                )
            }
            Hint::FirewallRule => f.write_str(
                "the rule above dropped it: a NetworkPolicy or host firewall rule; check why it matches this traffic",
            ),
            Hint::Firewall { hook } => write!(
                f,
                "a firewall rule there dropped it (NetworkPolicy or host firewall): list DROP/REJECT rules with `iptables-save -c | grep -E 'DROP|REJECT'` or `nft -a list ruleset`{}",
                hook.map(|h| format!(" ({h} hook)")).unwrap_or_default()
            ),
            Hint::RpFilter {
                client,
                arrived,
                lb,
            } => write!(
                f,
                "make the return path symmetric: route {client}'s network via {arrived}'s gateway, or source-based routing for traffic from the LB IP (`ip rule add from {lb} table N` + a default route via {arrived} in table N), or set rp_filter=2 (loose) on {arrived} and all"
            ),
            Hint::RpFilterStrict => f.write_str(
                "strict reverse-path filtering drops traffic whose return route uses another interface (clients behind another router, BGP with several uplinks); use rp_filter=2 or keep routes symmetric",
            ),
            Hint::InputRoute { dst, src, iif } => write!(
                f,
                "check `ip route get {dst} from {src} iif {iif}` on this node: no route, a martian source, or rp_filter"
            ),
            Hint::NeighbourFailed { next_hop, dev, dst } => write!(
                f,
                "check that {next_hop} is up and reachable on {dev} (`ip neigh show {next_hop}`, `ip route get {dst}`): a wrong or asymmetric route sends packets to a next hop nobody answers for"
            ),
            Hint::Mtu { len, mtu, dev } => write!(
                f,
                "packet of {len} bytes does not fit the MTU {mtu} of {}: align the pod/overlay MTU with the path, or clamp TCP MSS",
                if dev.is_empty() { "the next link" } else { dev }
            ),
            Hint::PodMtuSmaller => f.write_str(
                "make sure ICMP 'fragmentation needed' reaches clients, or clamp TCP MSS to the pod MTU",
            ),
            Hint::NoRoute { dst } => {
                write!(f, "no route to {dst}: check `ip route get {dst}` on this node")
            }
            Hint::PodNotListening { addr } => write!(
                f,
                "nothing listens on {addr} in the pod: check the container port and the Service's targetPort"
            ),
            Hint::Refused => {
                f.write_str("check the container's listening port and the Service's targetPort")
            }
            Hint::NodeNotListening => f.write_str(
                "the LB IP is local to this node (assigned to an interface such as kube-ipvs0) and nothing takes it: no kube-proxy DNAT or IPVS virtual service for this port (`ipvsadm -Ln`, `kubectl get svc -A -o wide`), and no socket",
            ),
            Hint::HairpinOff { port } => write!(
                f,
                "the pod reaches its own Service: with bridge netfilter on (net.bridge.bridge-nf-call-iptables=1) the bridge must send the frame back out {port}, the port it came in on, which only hairpin mode allows: `ip link set {port} type bridge_slave hairpin on`, or kubelet's --hairpin-mode=hairpin-veth (promiscuous-bridge for kubenet)"
            ),
            Hint::StaleConntrack {
                proto,
                client,
                lb,
                target,
            } => write!(
                f,
                "the connection's conntrack entry still sends it to {target}, bound when it began; new connections get a current endpoint, but this client keeps its port and so its entry. Delete the entry: `conntrack -D -p {proto} --orig-src {} --orig-port-src {} --orig-dst {} --orig-port-dst {}` (or every entry to the old pod: `conntrack -D -p {proto} --reply-src {}`); kube-proxy does this itself for UDP when it sees the endpoint go, so check it is running",
                client.ip(),
                client.port(),
                lb.ip(),
                lb.port(),
                target.ip()
            ),
            Hint::ConntrackFull { count, max } => write!(
                f,
                "the node's conntrack table is full ({count}/{max}): raise net.netfilter.nf_conntrack_max (and nf_conntrack_buckets), or find what fills it: `conntrack -S` for drop/early_drop, `conntrack -L` for the entries"
            ),
            Hint::ConntrackInsertFailed => f.write_str(
                "conntrack could not insert the connection's entry (`conntrack -S`, insert_failed): SNAT found no free source port towards that endpoint (masquerade with --random-fully, more source addresses, fewer connections to one endpoint), or two packets of a new UDP flow raced on two CPUs (DNS)",
            ),
            Hint::PodSilent => f.write_str(
                "the pod received the packet but did not answer: check the application (`kubectl logs`), and the pod's own route back",
            ),
            Hint::SomeEndpointsFail { endpoints, cause } => {
                let list: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
                let ip = endpoints.first().map(|e| e.ip().to_string()).unwrap_or_default();
                write!(
                    f,
                    "the Service and the path work (its other endpoints answer): look at the pod behind {} (`kubectl get pods -A -o wide | grep -F {ip}`){}; a readiness probe failing there would take it out of the endpoints",
                    list.join(", "),
                    cause.map(|c| format!(": {c}")).unwrap_or_default()
                )
            }
            Hint::Asymmetric {
                client,
                arrived,
                lb,
            } => write!(
                f,
                "asymmetric return path: clients, firewalls or rp_filter on the way may drop it. Route {client}'s network back via {arrived} (or use source-based routing for {lb})"
            ),
            Hint::LeftNode { towards, lb } => write!(
                f,
                "trace it on the node behind {towards} (`lbpath watch {lb}` there)"
            ),
            Hint::IpForwardOff => f.write_str("sysctl -w net.ipv4.ip_forward=1"),
            Hint::ArpFlux { ifaces, speaker } => {
                let list = ifaces.join(" and ");
                let sysctls = "`sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2` (and in /etc/sysctl.d/ to keep it): the kernel then answers only on the interface holding the address and announces with it";
                if *speaker {
                    write!(
                        f,
                        "the MetalLB speaker answers on {list}: limit the L2Advertisement to one of them (`spec.interfaces`); for the node's own addresses set {sysctls}"
                    )
                } else {
                    write!(
                        f,
                        "{list} share a segment and the kernel answers on both: set {sysctls}; or take one of them off the segment (or bond them)"
                    )
                }
            }
            Hint::SplitBrain { lb } => write!(
                f,
                "only the elected speaker may answer for {lb}: check the speakers (`kubectl -n metallb-system logs -l component=speaker`) and that no host has {lb} configured (`arping -D {lb}`)"
            ),
            Hint::NotAnnounced { lb } => write!(
                f,
                "another speaker may be the leader, or none is: check `kubectl describe svc` events for {lb}, the IPAddressPool/L2Advertisement, and the speaker pods"
            ),
            Hint::AnnouncedElsewhere { lb } => write!(
                f,
                "run `lbpath diagnose {lb}` on the node with that MAC (`ip neigh | grep {lb}` on a client shows it)"
            ),
            Hint::BgpDown => f.write_str(
                "check the BGPPeer (peer address, ASNs, password) against the router's configuration, and `kubectl -n metallb-system logs` of the speaker",
            ),
            Hint::NoTraffic { lb } => write!(
                f,
                "send a request to {lb} while diagnosing (`--duration 30s`); if clients do get no answer, check where {lb} is announced (ARP/BGP) and the routers in between"
            ),
        }
    }
}

impl Hint<'_> {
    /// The advice as an owned string (verdicts and findings carry one).
    pub fn text(&self) -> Option<String> {
        Some(self.to_string())
    }
}

/// ("ns", "name") of "ns/name:port".
fn service_parts(service: &str) -> (&str, &str) {
    let (ns, rest) = service.split_once('/').unwrap_or(("", service));
    (ns, rest.split(':').next().unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_is_concrete() {
        let h = Hint::NoEndpoints {
            service: "default/web:http",
        }
        .to_string();
        assert!(
            h.contains("-n default -l kubernetes.io/service-name=web`"),
            "{h}"
        );
        let h = Hint::Firewall {
            hook: Some("FORWARD"),
        }
        .to_string();
        assert!(h.ends_with("(FORWARD hook)"), "{h}");
        let h = Hint::ArpFlux {
            ifaces: &["eth0", "eth2"],
            speaker: false,
        }
        .to_string();
        assert!(
            h.starts_with("eth0 and eth2 share a segment")
                && h.contains("net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2"),
            "{h}"
        );
        assert!(
            Hint::Mtu {
                len: 1500,
                mtu: 1400,
                dev: ""
            }
            .to_string()
            .contains("MTU 1400 of the next link")
        );
    }
}
