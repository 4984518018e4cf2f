//! What lbpath reports about a flow: hops in order and a verdict. One model
//! for both outputs (text and `--json`), so they never disagree.
//!
//! JSON schema (one object per flow, stable; new fields may be added):
//! `{"flow": {proto, client, lb}, "service": {name, kind, chain, endpoints,
//! local_endpoints, local_only, source_ranges}|null, "hops": [{"t_ms",
//! "dir", "packet", "hop", ...hop fields, "text"}], "verdict": {"kind",
//! "summary", "hint"}, "counters": {...}|null, "notes": [...]}`.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::netinfo::IfRole;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    Request,
    Reply,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowId {
    pub proto: String,
    pub client: SocketAddr,
    pub lb: SocketAddr,
    /// The connection on this tuple (kernel monotonic ns of its first
    /// packet): a later connection reusing the tuple has another.
    #[serde(skip_serializing_if = "is_zero")]
    pub conn: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceInfo {
    /// "namespace/name:port".
    pub name: String,
    /// "LoadBalancer", "ExternalIP" ...
    pub kind: String,
    /// kube-proxy chain the LB address jumps to.
    pub chain: String,
    pub endpoints: usize,
    pub local_endpoints: Option<usize>,
    /// externalTrafficPolicy=Local.
    pub local_only: bool,
    /// loadBalancerSourceRanges: the only sources kube-proxy lets through
    /// (empty: any).
    pub source_ranges: Vec<String>,
}

/// One step of one packet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hop {
    /// Milliseconds since the flow's first packet was seen.
    pub t_ms: f64,
    pub dir: Dir,
    /// Packet number within the flow and direction (1 = first).
    pub packet: u16,
    #[serde(flatten)]
    pub kind: HopKind,
    /// Derived without a direct observation (e.g. no netfilter links on this kernel).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inferred: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "hop", rename_all = "snake_case")]
pub enum HopKind {
    /// Received on a node interface.
    Arrived {
        iface: String,
        role: IfRole,
        from: SocketAddr,
        to: SocketAddr,
        mac: Option<String>,
        tcp_flags: Option<String>,
        len: u32,
    },
    /// Sent by a process on the node itself.
    LocalOut {
        from: SocketAddr,
        to: SocketAddr,
    },
    Conntrack {
        state: String,
    },
    /// Destination rewritten (kube-proxy DNAT), or on replies the source put back.
    Dnat {
        from: SocketAddr,
        to: SocketAddr,
        hook: String,
        by: Option<String>,
    },
    /// Source rewritten (masquerade/SNAT), or on replies the destination put back.
    Snat {
        from: SocketAddr,
        to: SocketAddr,
        hook: String,
    },
    /// kube-proxy IPVS mode: the virtual service matched at INPUT and its
    /// scheduler chose a real server.
    Ipvs {
        /// As ipvsadm names it: "TCP 192.0.2.240:80 rr".
        virtual_server: String,
        /// "namespace/name:port", when kube-proxy's sets name it.
        service: Option<String>,
        scheduler: String,
        /// Session affinity: the persistence timeout in seconds.
        persistent: Option<u32>,
        real_server: SocketAddr,
        /// "masq" (kube-proxy's), when the real server is still in the table.
        forward: Option<String>,
        weight: Option<u32>,
        /// Real servers of the virtual service.
        real_servers: usize,
    },
    /// The routing decision.
    Route {
        decision: String,
        iface: Option<String>,
        gateway: Option<IpAddr>,
        table: Option<u32>,
    },
    /// Sent on a node interface.
    Left {
        iface: String,
        role: IfRole,
        to: SocketAddr,
        next_hop: Option<IpAddr>,
        towards: String,
    },
    /// Received inside the pod's network namespace.
    InPod {
        iface: String,
        addr: SocketAddr,
        netns: u32,
    },
    /// Taken by a socket (in the pod, or on the node).
    Delivered {
        at: String,
    },
    /// TCP answered with a reset.
    Reset {
        at: String,
    },
    Dropped {
        at: String,
        reason: String,
        hook: Option<String>,
        detail: String,
        /// The packet was past the trace budget: only its drop was seen.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        later_packet: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// Reached the pod and its answer left the node.
    Answered,
    /// Answered, but the reply left by another interface than the request came in on.
    AnsweredAsymmetric,
    /// Reached the pod; no answer seen.
    NoAnswer,
    /// The pod answered with a reset / no socket.
    Refused,
    /// Dropped on the way in (or the reply on the way out).
    Dropped,
    /// Forwarded to another node (pod elsewhere).
    LeftNode,
    /// No kube-proxy rule for the address: nothing DNATed it.
    NoRule,
    /// The Service has nowhere to send it: an IPVS virtual service without
    /// real servers.
    NoEndpoints,
    /// Delivered to a socket on the node itself.
    Local,
    /// Not enough was seen to say.
    Incomplete,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub kind: VerdictKind,
    pub summary: String,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub request_packets: u64,
    pub request_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    pub drops: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowReport {
    pub flow: FlowId,
    pub service: Option<ServiceInfo>,
    pub hops: Vec<Hop>,
    pub verdict: Verdict,
    /// Totals of the connection when this was reported (so far).
    pub counters: Option<Counters>,
    pub notes: Vec<String>,
    /// A later report on a connection already shown (its packets past the
    /// trace budget dropped): the same flow, not a new one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub update: bool,
}

/// TCP flags as tcpdump-like words.
pub fn tcp_flags(f: u8) -> String {
    let names = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x08, "PSH"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x20, "URG"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| f & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join("-")
    }
}

pub fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_macs() {
        assert_eq!(tcp_flags(0x12), "SYN-ACK");
        assert_eq!(tcp_flags(0x02), "SYN");
        assert_eq!(tcp_flags(0), "none");
        assert_eq!(mac([0xf2, 0x7e, 0, 1, 2, 0xff]), "f2:7e:00:01:02:ff");
    }

    #[test]
    fn hop_json_is_flat_and_tagged() {
        let h = Hop {
            t_ms: 0.5,
            dir: Dir::Request,
            packet: 1,
            kind: HopKind::Conntrack {
                state: "new".into(),
            },
            inferred: false,
        };
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(v["hop"], "conntrack");
        assert_eq!(v["state"], "new");
        assert_eq!(v["dir"], "request");
        assert!(v.get("inferred").is_none());
    }
}
