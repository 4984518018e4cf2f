//! The MetalLB layers as the kernel reports them: ARP records to `arp`
//! observations, BGP segments to `bgp` sessions, and the one-line live
//! messages `watch` prints for them.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
};

use tracer_common::{ArpEvent, SegEvent};

use crate::{
    arp::{self, ArpObservation},
    bgp::{self, RouteAction, SessionKey, SessionState, Sessions},
    events::ifname,
    events::{dst, src},
    model::mac,
    netinfo::NetInfo,
    targets::Targets,
};

pub fn arp_observation(e: &ArpEvent) -> ArpObservation {
    ArpObservation {
        ts_ns: e.ts,
        dir: if e.dir == 1 {
            arp::Dir::Tx
        } else {
            arp::Dir::Rx
        },
        ifname: ifname(&e.ifname),
        op: e.op,
        sha: e.sha,
        spa: Ipv4Addr::from(e.spa),
        tha: e.tha,
        tpa: Ipv4Addr::from(e.tpa),
        eth_src: e.eth_src,
        eth_dst: e.eth_dst,
    }
}

/// Who sent an ARP frame, seen from this node: this node when it left by
/// one of its interfaces; its own frame received back when it arrives with
/// one of its MACs (from another of its interfaces on the segment);
/// otherwise another host.
fn sender(o: &ArpObservation, net: &NetInfo) -> String {
    if o.dir == arp::Dir::Tx {
        return "this node".into();
    }
    // The interface the IP layer uses first (a bridge shares its port's MAC).
    let mut owners: Vec<&crate::netinfo::Iface> = net
        .ifaces
        .values()
        .filter(|i| i.mac == Some(o.sha) && !i.loopback)
        .collect();
    owners.sort_by_key(|i| !net.is_l3(i.index));
    match owners.first() {
        Some(i) if i.name == o.ifname => "this node's own frame, received back".into(),
        Some(i) => format!("this node's {}, received on {}", i.name, o.ifname),
        None => "another host".into(),
    }
}

/// "eth0 ← who-has 192.0.2.240 tell 192.0.2.10 (02:…)" and friends.
pub fn arp_line(o: &ArpObservation, targets: &Targets, net: &NetInfo) -> String {
    let arrow = if o.dir == arp::Dir::Tx { "→" } else { "←" };
    let who = sender(o, net);
    match o.op {
        1 if o.spa == o.tpa => format!(
            "{} {arrow} probe/announcement for {} from {} ({who})",
            o.ifname,
            o.tpa,
            mac(o.sha)
        ),
        1 if targets.contains(IpAddr::V4(o.spa)) => format!(
            "{} {arrow} who-has {} tell {} ({}): a request sent from the LB IP ({who})",
            o.ifname,
            o.tpa,
            o.spa,
            mac(o.sha)
        ),
        1 => format!(
            "{} {arrow} who-has {} tell {} ({})",
            o.ifname,
            o.tpa,
            o.spa,
            mac(o.sha)
        ),
        2 if o.spa == o.tpa => format!(
            "{} {arrow} gratuitous ARP: {} is-at {} ({who})",
            o.ifname,
            o.spa,
            mac(o.sha)
        ),
        2 => format!(
            "{} {arrow} {} is-at {} ({who}) to {}",
            o.ifname,
            o.spa,
            mac(o.sha),
            o.tpa
        ),
        op => format!("{} {arrow} ARP op {op} {} → {}", o.ifname, o.spa, o.tpa),
    }
}

/// BGP sessions seen so far, reporting what changed.
#[derive(Default)]
pub struct BgpTracker {
    pub sessions: Sessions,
    states: HashMap<SessionKey, SessionState>,
    routes: HashMap<SessionKey, usize>,
}

impl BgpTracker {
    /// Takes one segment; returns a line per session state change and per
    /// UPDATE about a prefix covering a watched LB IP.
    pub fn push(&mut self, e: &SegEvent, targets: &Targets) -> Vec<String> {
        let dir = if e.dir == 1 {
            bgp::Dir::Tx
        } else {
            bgp::Dir::Rx
        };
        let key = SessionKey::from_packet(dir, src(&e.tuple), dst(&e.tuple));
        let caplen = (e.caplen as usize).min(e.payload.len());
        let seg = bgp::Segment {
            ts_ns: e.ts,
            dir,
            tcp_flags: e.tcp_flags,
            seq: e.seq,
            payload: &e.payload[..caplen],
            full_len: e.paylen as usize,
        };
        self.sessions.observe(key, &seg);
        // Forget what belonged to sessions the tracker forgot.
        if self.states.len() > bgp::MAX_SESSIONS || self.routes.len() > bgp::MAX_SESSIONS {
            let live = &self.sessions;
            self.states.retain(|k, _| live.get(k).is_some());
            self.routes.retain(|k, _| live.get(k).is_some());
        }
        let mut out = Vec::new();
        let Some(s) = self.sessions.get(&key) else {
            return out;
        };
        if self.states.get(&key) != Some(s.state()) {
            self.states.insert(key, s.state().clone());
            out.push(s.describe());
        }
        let seen = self.routes.entry(key).or_insert(0);
        for r in &s.routes()[*seen..] {
            let about = targets
                .nets()
                .iter()
                .any(|n| r.prefix.covers(n.addr()) || n.contains(&r.prefix.addr));
            if !about {
                continue;
            }
            let (verb, to) = match (r.action, r.dir) {
                (RouteAction::Announce, bgp::Dir::Tx) => ("announces", "to"),
                (RouteAction::Withdraw, bgp::Dir::Tx) => ("withdraws", "to"),
                (RouteAction::Announce, bgp::Dir::Rx) => ("received announcement of", "from"),
                (RouteAction::Withdraw, bgp::Dir::Rx) => ("received withdrawal of", "from"),
            };
            let nh = r
                .next_hop
                .map(|n| format!(" with next hop {n}"))
                .unwrap_or_default();
            out.push(format!("UPDATE {verb} {} {to} {}{nh}", r.prefix, r.peer));
        }
        *seen = s.routes().len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(dir: arp::Dir, op: u16, spa: [u8; 4], tpa: [u8; 4]) -> ArpObservation {
        ArpObservation {
            ts_ns: 0,
            dir,
            ifname: "eth0".into(),
            op,
            sha: [2, 0, 0, 0, 0, 1],
            spa: Ipv4Addr::from(spa),
            tha: [0; 6],
            tpa: Ipv4Addr::from(tpa),
            eth_src: [2, 0, 0, 0, 0, 1],
            eth_dst: [0xff; 6],
        }
    }

    /// The node: eth0 (MAC 02:00:00:00:00:01) and eth2 on one segment.
    fn node() -> NetInfo {
        let mut n = NetInfo::default();
        for (index, name, m) in [(2, "eth0", 1u8), (3, "eth2", 2)] {
            n.ifaces.insert(
                index,
                crate::netinfo::Iface {
                    index,
                    name: name.into(),
                    mac: Some([2, 0, 0, 0, 0, m]),
                    ..Default::default()
                },
            );
        }
        n
    }

    #[test]
    fn arp_lines() {
        let lb = Targets::new(vec!["192.0.2.240/32".parse().unwrap()], false);
        let mut n = node();
        // The test frames carry eth0's MAC; another host's for the first ones.
        n.ifaces.get_mut(&2).unwrap().mac = Some([2, 0, 0, 0, 0, 9]);
        let l = arp_line(
            &obs(arp::Dir::Rx, 1, [192, 0, 2, 10], [192, 0, 2, 240]),
            &lb,
            &n,
        );
        assert_eq!(
            l,
            "eth0 ← who-has 192.0.2.240 tell 192.0.2.10 (02:00:00:00:00:01)"
        );
        let l = arp_line(
            &obs(arp::Dir::Tx, 2, [192, 0, 2, 240], [192, 0, 2, 10]),
            &lb,
            &n,
        );
        assert!(
            l.contains("192.0.2.240 is-at 02:00:00:00:00:01 (this node)"),
            "{l}"
        );
        let l = arp_line(
            &obs(arp::Dir::Rx, 2, [192, 0, 2, 240], [192, 0, 2, 240]),
            &lb,
            &n,
        );
        assert!(
            l.contains("gratuitous") && l.contains("another host"),
            "{l}"
        );
    }

    /// The node's own announcement from eth0, received on eth2: its own,
    /// never another host's, and not sent by eth2.
    #[test]
    fn own_frames_received_are_this_nodes() {
        let lb = Targets::new(vec!["192.0.2.240/32".parse().unwrap()], false);
        let n = node();
        let mut o = obs(arp::Dir::Rx, 2, [192, 0, 2, 240], [192, 0, 2, 240]);
        o.ifname = "eth2".into();
        let l = arp_line(&o, &lb, &n);
        assert_eq!(
            l,
            "eth2 ← gratuitous ARP: 192.0.2.240 is-at 02:00:00:00:00:01 (this node's eth0, received on eth2)"
        );
        o.op = 1;
        let l = arp_line(&o, &lb, &n);
        assert!(
            l.contains("← probe/announcement") && l.contains("this node's eth0"),
            "{l}"
        );
        assert!(!l.contains("another host"), "{l}");
    }
}
