//! What a session counts, for the totals `watch` prints on exit and the
//! metrics `watch --metrics` serves: flows by LB IP, Service and verdict,
//! drops by hop and reason, ARP answers by MAC. The one place that counts;
//! [`crate::metrics`] only renders a [`Snapshot`] of it.
//!
//! Label values never hold a client's address or port, and every map is
//! capped: past the cap an observation is counted under "other" and in
//! `folded`, so a scan or a flood cannot grow a scrape without bound.

use std::{collections::BTreeMap, net::IpAddr};

use crate::{
    bgp::SessionState,
    escape::visible,
    model::{FlowReport, HopKind, VerdictKind},
    wire::BgpTracker,
};

/// Series kept per map: far above what one node's Services, drop places
/// and ARP speakers make, far below what would trouble a scrape.
pub const MAX_FLOW_SERIES: usize = 500;
pub const MAX_DROP_SERIES: usize = 200;
pub const MAX_ARP_SERIES: usize = 64;
pub const MAX_BGP_PEERS: usize = 64;

/// The label value observations past a cap are counted under.
pub const OTHER: &str = "other";

/// A (LB IP, Service, verdict) series; the Service is "" without one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowLabels {
    pub lb: String,
    pub service: String,
    pub verdict: VerdictKind,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Flows reported per verdict, exact (never folded).
    pub per_verdict: BTreeMap<VerdictKind, u64>,
    pub flows: BTreeMap<FlowLabels, u64>,
    /// (where, kernel drop reason).
    pub drops: BTreeMap<(String, String), u64>,
    /// (LB IP, MAC that answered for it).
    pub arp_answers: BTreeMap<(String, String), u64>,
    /// Observations counted under "other", per metric.
    pub folded: BTreeMap<&'static str, u64>,
}

/// Adds one to `key`'s count, or to `other`'s when the map is full.
fn bump<K: Ord>(
    map: &mut BTreeMap<K, u64>,
    cap: usize,
    key: K,
    other: impl FnOnce() -> K,
    folded: &mut u64,
) {
    if let Some(n) = map.get_mut(&key) {
        *n += 1;
    } else if map.len() < cap {
        map.insert(key, 1);
    } else {
        *folded += 1;
        *map.entry(other()).or_insert(0) += 1;
    }
}

impl Tally {
    /// A flow report: a new flow (counted with its verdict) or an update of
    /// one already reported (only its drops count).
    pub fn report(&mut self, r: &FlowReport) {
        if !r.update {
            *self.per_verdict.entry(r.verdict.kind).or_insert(0) += 1;
            let labels = FlowLabels {
                lb: r.flow.lb.ip().to_string(),
                service: r
                    .service
                    .as_ref()
                    .map(|s| visible(&s.name).into_owned())
                    .unwrap_or_default(),
                verdict: r.verdict.kind,
            };
            let verdict = labels.verdict;
            bump(
                &mut self.flows,
                MAX_FLOW_SERIES,
                labels,
                || FlowLabels {
                    lb: OTHER.into(),
                    service: OTHER.into(),
                    verdict,
                },
                self.folded.entry("flows").or_insert(0),
            );
        }
        for h in &r.hops {
            if let HopKind::Dropped { at, reason, .. } = &h.kind {
                let reason = visible(reason).into_owned();
                let r2 = reason.clone();
                bump(
                    &mut self.drops,
                    MAX_DROP_SERIES,
                    (visible(at).into_owned(), reason),
                    || (OTHER.into(), r2),
                    self.folded.entry("drops").or_insert(0),
                );
            }
        }
    }

    /// An ARP reply or announcement for a watched LB IP, by sender MAC.
    pub fn arp_answer(&mut self, lb: IpAddr, mac: &str) {
        bump(
            &mut self.arp_answers,
            MAX_ARP_SERIES,
            (lb.to_string(), visible(mac).into_owned()),
            || (OTHER.into(), OTHER.into()),
            self.folded.entry("arp_answers").or_insert(0),
        );
    }

    pub fn flows(&self) -> u64 {
        self.per_verdict.values().sum()
    }
}

/// A BGP peer's latest session, as a metric shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpPeer {
    pub peer: String,
    pub state: &'static str,
    pub up: bool,
}

/// Every state [`bgp_state_name`] can return, for enum-style series.
pub const BGP_STATES: &[&str] = &[
    "idle",
    "syn_sent",
    "reset",
    "closed",
    "established",
    "open_sent",
    "open_confirm",
    "up",
    "notified",
];

pub fn bgp_state_name(s: &SessionState) -> &'static str {
    match s {
        SessionState::Idle => "idle",
        SessionState::SynSent { .. } => "syn_sent",
        SessionState::Reset { .. } => "reset",
        SessionState::Closed { .. } => "closed",
        SessionState::Established => "established",
        SessionState::OpenSent { .. } => "open_sent",
        SessionState::OpenConfirm => "open_confirm",
        SessionState::Up => "up",
        SessionState::Notified { .. } => "notified",
    }
}

/// Each peer's most recent connection (a peer reconnects on a new port),
/// at most [`MAX_BGP_PEERS`] peers; returns the peers left out too.
pub fn bgp_peers(bgp: &BgpTracker) -> (Vec<BgpPeer>, u64) {
    let mut latest: BTreeMap<IpAddr, (u64, &SessionState)> = BTreeMap::new();
    for s in bgp.sessions.iter() {
        let e = latest.entry(s.key().peer.ip()).or_insert((0, s.state()));
        if s.last_ts_ns() >= e.0 {
            *e = (s.last_ts_ns(), s.state());
        }
    }
    let left_out = latest.len().saturating_sub(MAX_BGP_PEERS) as u64;
    let peers = latest
        .into_iter()
        .take(MAX_BGP_PEERS)
        .map(|(ip, (_, st))| BgpPeer {
            peer: ip.to_string(),
            state: bgp_state_name(st),
            up: *st == SessionState::Up,
        })
        .collect();
    (peers, left_out)
}

/// What a scrape renders: plain data, handed from the session's loop to
/// the HTTP task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub tally: Tally,
    pub bgp: Vec<BgpPeer>,
    pub bgp_peers_left_out: u64,
    /// Events the kernel could not hand over (ring buffer full).
    pub events_lost: u64,
    /// Events left out by the per-flow bound.
    pub events_cut: u64,
    /// New connections not traced because lbpath was behind.
    pub flows_shed: u64,
    /// New connections not traced over `--max-new-flows`.
    pub flows_over_rate: u64,
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::model::{Dir, FlowId, Hop, ServiceInfo, Verdict};

    pub fn report(
        client: &str,
        svc: Option<&str>,
        kind: VerdictKind,
        drop: Option<&str>,
    ) -> FlowReport {
        FlowReport {
            flow: FlowId {
                proto: "tcp".into(),
                client: client.parse::<SocketAddr>().unwrap(),
                lb: "192.0.2.240:80".parse().unwrap(),
                conn: 0,
            },
            service: svc.map(|n| ServiceInfo {
                name: n.into(),
                kind: "LoadBalancer".into(),
                chain: String::new(),
                endpoints: 1,
                local_endpoints: None,
                local_only: false,
                source_ranges: vec![],
            }),
            hops: drop
                .map(|at| Hop {
                    t_ms: 0.0,
                    dir: Dir::Request,
                    packet: 1,
                    kind: HopKind::Dropped {
                        at: at.into(),
                        reason: "IP_RPFILTER".into(),
                        hook: None,
                        detail: String::new(),
                        later_packet: false,
                    },
                    inferred: false,
                })
                .into_iter()
                .collect(),
            verdict: Verdict {
                kind,
                summary: String::new(),
                hint: None,
            },
            counters: None,
            notes: vec![],
            update: false,
        }
    }

    #[test]
    fn flows_and_drops_are_counted_without_clients() {
        let mut t = Tally::default();
        for port in 1000..1010 {
            t.report(&report(
                &format!("198.51.100.{}:{port}", port % 3),
                Some("default/web:http"),
                VerdictKind::Answered,
                None,
            ));
        }
        t.report(&report(
            "198.51.100.9:1",
            None,
            VerdictKind::Dropped,
            Some("in the routing decision"),
        ));
        let mut update = report(
            "198.51.100.9:1",
            None,
            VerdictKind::Dropped,
            Some("on eth0"),
        );
        update.update = true;
        t.report(&update);
        assert_eq!(t.flows(), 11);
        assert_eq!(t.flows.len(), 2);
        let answered = FlowLabels {
            lb: "192.0.2.240".into(),
            service: "default/web:http".into(),
            verdict: VerdictKind::Answered,
        };
        assert_eq!(t.flows[&answered], 10);
        assert_eq!(t.drops.len(), 2, "{:?}", t.drops);
        assert_eq!(
            t.drops[&("on eth0".to_string(), "IP_RPFILTER".to_string())],
            1
        );
    }

    #[test]
    fn series_are_capped_and_the_rest_folded() {
        let mut t = Tally::default();
        for i in 0..MAX_FLOW_SERIES + 20 {
            let svc = format!("ns/svc{i}:http");
            t.report(&report(
                "198.51.100.1:1",
                Some(&svc),
                VerdictKind::NoAnswer,
                None,
            ));
        }
        assert_eq!(t.flows.len(), MAX_FLOW_SERIES + 1);
        assert_eq!(t.folded["flows"], 20);
        let other = FlowLabels {
            lb: OTHER.into(),
            service: OTHER.into(),
            verdict: VerdictKind::NoAnswer,
        };
        assert_eq!(t.flows[&other], 20);
        assert_eq!(
            t.per_verdict[&VerdictKind::NoAnswer],
            MAX_FLOW_SERIES as u64 + 20
        );
        let lb: IpAddr = "192.0.2.240".parse().unwrap();
        for i in 0..MAX_ARP_SERIES + 5 {
            t.arp_answer(lb, &format!("02:00:00:00:00:{i:02x}"));
        }
        t.arp_answer(lb, "02:00:00:00:00:00");
        assert_eq!(t.arp_answers.len(), MAX_ARP_SERIES + 1);
        assert_eq!(t.folded["arp_answers"], 5);
        assert_eq!(
            t.arp_answers[&(lb.to_string(), "02:00:00:00:00:00".into())],
            2
        );
    }

    #[test]
    fn untrusted_label_text_is_escaped() {
        let mut t = Tally::default();
        t.report(&report(
            "198.51.100.1:1",
            Some("ns/evil\u{1b}[31m\u{202e}:x"),
            VerdictKind::Answered,
            Some("on eth\n0"),
        ));
        assert!(
            t.flows
                .keys()
                .all(|k| k.service == "ns/evil\\x1b[31m\\u202e:x")
        );
        assert!(t.drops.keys().all(|(at, _)| at == "on eth\\n0"));
    }
}
