//! The summary layer: all sessions by 4-tuple ([`Sessions`]), and per peer
//! what happened to the LoadBalancer IP ([`summarize`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;

use super::message::Open;
use super::session::{
    Dir, NotificationEvent, RouteStatus, Segment, Session, SessionKey, SessionState,
};

/// Everything seen with one peer address, across its TCP connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerSummary {
    pub peer: IpAddr,
    pub local: IpAddr,
    /// 4-tuples seen (each connection attempt usually has its own port).
    pub sessions: usize,
    /// State of the most recent session.
    pub state: SessionState,
    pub text: String,
    pub local_asn: Option<u32>,
    pub peer_asn: Option<u32>,
    pub peer_hostname: Option<String>,
    pub last_notification: Option<NotificationEvent>,
    /// The LB IP as advertised by this node to the peer.
    pub advertised: RouteStatus,
    /// The LB IP as advertised by the peer to this node (e.g. reflected from
    /// another speaker).
    pub received: RouteStatus,
    pub add_path: bool,
    /// Messages lost to truncation or lost events, both directions.
    pub messages_not_decoded: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LbBgpSummary {
    pub lb_ip: IpAddr,
    pub peers: Vec<PeerSummary>,
    /// Connections forgotten to keep memory bounded (the least recently
    /// active first), so attempts counts may be low.
    #[serde(skip_serializing_if = "is_zero")]
    pub forgotten_sessions: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl LbBgpSummary {
    /// One line per finding, for the text report.
    pub fn describe(&self) -> Vec<String> {
        if self.peers.is_empty() {
            return vec!["no BGP traffic (TCP 179) seen on this node".to_string()];
        }
        let mut lines = Vec::new();
        for p in &self.peers {
            p.describe_into(self.lb_ip, &mut lines);
        }
        if self.forgotten_sessions > 0 {
            lines.push(format!(
                "{} older BGP connections were forgotten (more than {MAX_SESSIONS} seen): connection counts are low",
                self.forgotten_sessions
            ));
        }
        lines
    }
}

impl PeerSummary {
    /// This peer's lines of [`LbBgpSummary::describe`] for the LB IP `ip`.
    fn describe_into(&self, ip: IpAddr, lines: &mut Vec<String>) {
        let tries = if self.sessions > 1 {
            format!(" [{} connections]", self.sessions)
        } else {
            String::new()
        };
        lines.push(format!("{}{tries}", self.text));
        if let Some(n) = &self.last_notification
            && !matches!(self.state, SessionState::Notified { .. })
        {
            let by = if n.sent_by_peer {
                self.peer.to_string()
            } else {
                "this node".into()
            };
            lines.push(format!(
                "  earlier: {by} sent NOTIFICATION {}",
                n.notification.describe()
            ));
        }
        if let Some(h) = self
            .last_notification
            .as_ref()
            .and_then(|n| n.notification.hint())
        {
            lines.push(format!("  hint: {h}"));
        }
        let peer = self.peer;
        lines.push(match &self.advertised {
            RouteStatus::NotSeen => format!(
                "  no UPDATE announcing {ip} to {peer} seen (not announced by this node, or announced before the capture)"
            ),
            RouteStatus::Announced {
                prefix, next_hop, ..
            } => format!("  UPDATE announces {prefix} to {peer}{}", via(*next_hop)),
            RouteStatus::Withdrawn { prefix, .. } => {
                format!("  UPDATE withdraws {prefix} from {peer}")
            }
            RouteStatus::SessionDown { prefix, .. } => format!(
                "  {prefix} was announced to {peer}, then the session went down (implicitly withdrawn)"
            ),
        });
        if let RouteStatus::Announced {
            prefix, next_hop, ..
        } = &self.received
        {
            lines.push(format!(
                "  {peer} advertises {prefix}{} to this node",
                via(*next_hop)
            ));
        }
        if self.add_path {
            lines
                .push("  ADD-PATH negotiated: prefixes of those families may be misdecoded".into());
        }
        if self.messages_not_decoded > 0 {
            lines.push(format!(
                "  {} message(s) not decoded (capture truncated or events lost)",
                self.messages_not_decoded
            ));
        }
    }
}

fn via(nh: Option<IpAddr>) -> String {
    nh.map(|n| format!(" with next hop {n}"))
        .unwrap_or_default()
}

/// For the LB IP: per peer, the session outcome and whether a covering
/// prefix was announced, withdrawn, or never seen. Call
/// [`Session::finish`] (or [`Sessions::finish`]) first.
pub fn summarize<'a>(
    sessions: impl IntoIterator<Item = &'a Session>,
    lb_ip: IpAddr,
) -> LbBgpSummary {
    let mut by_peer: BTreeMap<(IpAddr, IpAddr), Vec<&Session>> = BTreeMap::new();
    for s in sessions {
        let key = s.key();
        by_peer
            .entry((key.peer.ip(), key.local.ip()))
            .or_default()
            .push(s);
    }
    let peers = by_peer
        .into_iter()
        .map(|((peer, local), ss)| summarize_peer(peer, local, ss, lb_ip))
        .collect();
    LbBgpSummary {
        lb_ip,
        peers,
        forgotten_sessions: 0,
    }
}

/// One peer's sessions (at least one), whatever their order.
/// How much a failed session says about why the peering fails: a peer
/// refusing our OPEN or UPDATE (a configuration mismatch) says most; the
/// FSM errors and collisions of the connections racing around it least.
fn telling(state: &SessionState) -> u8 {
    match state {
        SessionState::Notified { notification, .. } if matches!(notification.code, 2 | 3) => 4,
        SessionState::Notified {
            sent_by_peer: true, ..
        } => 3,
        SessionState::Notified { .. } => 2,
        SessionState::Reset { .. } | SessionState::SynSent { .. } | SessionState::Closed { .. } => {
            1
        }
        _ => 0,
    }
}

/// The session whose state speaks for the peer: one that is up, else the
/// latest one, unless an attempt around it failed more tellingly (the
/// latest of those). `ss` is sorted by time and not empty.
fn decisive<'a>(ss: &[&'a Session]) -> &'a Session {
    // A session still up wins: the connections racing it (a collision's
    // loser, closed or ceased) are noise.
    if let Some(up) = ss
        .iter()
        .rev()
        .find(|s| matches!(s.state(), SessionState::Up))
    {
        return up;
    }
    let latest = ss[ss.len() - 1];
    if !latest.state().is_down() && !matches!(latest.state(), SessionState::Notified { .. }) {
        return latest;
    }
    ss.iter()
        .copied()
        .max_by_key(|s| telling(s.state()))
        .filter(|s| telling(s.state()) > telling(latest.state()))
        .unwrap_or(latest)
}

fn summarize_peer(
    peer: IpAddr,
    local: IpAddr,
    mut ss: Vec<&Session>,
    lb_ip: IpAddr,
) -> PeerSummary {
    ss.sort_by_key(|s| (s.first_ts_ns(), s.last_ts_ns()));
    let latest = decisive(&ss);
    // The latest session with something to say about the prefix
    // decides: older sessions' routes died with them.
    let status = |dir| {
        ss.iter()
            .rev()
            .map(|s| s.route_status(lb_ip, dir))
            .find(|r| *r != RouteStatus::NotSeen)
            .unwrap_or(RouteStatus::NotSeen)
    };
    let opens = |f: fn(&Session) -> Option<&Open>| ss.iter().rev().find_map(|s| f(s));
    PeerSummary {
        peer,
        local,
        sessions: ss.len(),
        state: latest.state().clone(),
        text: latest.describe(),
        local_asn: opens(Session::local_open).map(Open::real_asn),
        peer_asn: opens(Session::peer_open).map(Open::real_asn),
        peer_hostname: opens(Session::peer_open)
            .and_then(Open::hostname)
            .map(str::to_string),
        last_notification: ss
            .iter()
            .flat_map(|s| s.notifications().iter())
            .max_by_key(|n| n.ts_ns)
            .cloned(),
        advertised: status(Dir::Tx),
        received: status(Dir::Rx),
        add_path: ss.iter().any(|s| s.add_path()),
        messages_not_decoded: ss
            .iter()
            .map(|s| {
                let (tx, rx) = s.capture();
                tx.skipped + tx.malformed + rx.skipped + rx.malformed
            })
            .sum(),
    }
}

/// Connections remembered at once. Each is a 4-tuple to or from port 179,
/// so a scan or a flapping peer would otherwise grow this without bound.
pub const MAX_SESSIONS: usize = 1024;

/// Sessions by 4-tuple, at most [`MAX_SESSIONS`].
#[derive(Debug, Default)]
pub struct Sessions {
    map: BTreeMap<SessionKey, Session>,
    forgotten: u64,
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn observe(&mut self, key: SessionKey, seg: &Segment<'_>) {
        if self.map.len() >= MAX_SESSIONS && !self.map.contains_key(&key) {
            // The least recently active goes; scanned only when full.
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, s)| s.last_ts_ns())
                .map(|(k, _)| *k)
            {
                self.map.remove(&oldest);
                self.forgotten += 1;
            }
        }
        self.map
            .entry(key)
            .or_insert_with(|| Session::new(key))
            .observe(seg);
    }

    pub fn finish(&mut self) {
        for s in self.map.values_mut() {
            let ts = s.last_ts_ns();
            s.finish(ts);
        }
    }

    pub fn get(&self, key: &SessionKey) -> Option<&Session> {
        self.map.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.map.values()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn summary(&self, lb_ip: IpAddr) -> LbBgpSummary {
        LbBgpSummary {
            forgotten_sessions: self.forgotten,
            ..summarize(self.iter(), lb_ip)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::bgp::session::TCP_SYN;
    use crate::bgp::testutil::*;

    #[test]
    fn summary_groups_connection_attempts_per_peer() {
        let mut ss = Sessions::new();
        let peer: SocketAddr = "192.0.2.1:179".parse().unwrap();
        for (i, port) in [50_000u16, 50_001, 50_002].into_iter().enumerate() {
            let local = SocketAddr::new("10.0.0.5".parse().unwrap(), port);
            let key = SessionKey::from_packet(Dir::Tx, local, peer);
            assert_eq!(key, SessionKey::from_packet(Dir::Rx, peer, local));
            let seg = Segment {
                ts_ns: i as u64,
                dir: Dir::Tx,
                tcp_flags: TCP_SYN,
                seq: 1,
                payload: &[],
                full_len: 0,
            };
            ss.observe(key, &seg);
        }
        let sum = ss.summary(LB);
        assert_eq!(sum.peers.len(), 1);
        assert_eq!(sum.peers[0].sessions, 3);
        assert!(sum.describe()[0].contains("[3 connections]"));
        assert!(Sessions::new().summary(LB).describe()[0].contains("no BGP traffic"));
    }

    #[test]
    fn sessions_are_bounded_forgetting_the_least_recent() {
        let mut ss = Sessions::new();
        let peer: SocketAddr = "192.0.2.1:179".parse().unwrap();
        let n = MAX_SESSIONS as u64 + 10;
        for i in 0..n {
            let local = SocketAddr::new("198.51.100.5".parse().unwrap(), 10_000 + i as u16);
            let seg = Segment {
                ts_ns: i + 1,
                dir: Dir::Tx,
                tcp_flags: TCP_SYN,
                seq: 1,
                payload: &[],
                full_len: 0,
            };
            ss.observe(SessionKey::from_packet(Dir::Tx, local, peer), &seg);
        }
        assert_eq!(ss.len(), MAX_SESSIONS);
        // The first ten went, the latest stayed.
        let first = SocketAddr::new("198.51.100.5".parse().unwrap(), 10_000);
        let last = SocketAddr::new("198.51.100.5".parse().unwrap(), 10_000 + n as u16 - 1);
        assert!(
            ss.get(&SessionKey::from_packet(Dir::Tx, first, peer))
                .is_none()
        );
        assert!(
            ss.get(&SessionKey::from_packet(Dir::Tx, last, peer))
                .is_some()
        );
        let sum = ss.summary(LB);
        assert_eq!(sum.forgotten_sessions, 10);
        assert!(
            sum.describe()
                .iter()
                .any(|l| l.contains("10 older BGP connections were forgotten"))
        );
    }

    /// Two connections race: the peer refuses the first OPEN (Bad Peer AS),
    /// this node ends the second with an FSM error. The refusal is the cause.
    #[test]
    fn a_peer_refusal_outweighs_a_later_collision() {
        let mut ss = Sessions::new();
        let peer: SocketAddr = "192.0.2.1:179".parse().unwrap();
        let send = |ss: &mut Sessions, port: u16, ts: u64, dir: Dir, payload: &[u8]| {
            let local = SocketAddr::new("192.0.2.2".parse().unwrap(), port);
            let key = SessionKey::from_packet(Dir::Tx, local, peer);
            let seg = Segment {
                ts_ns: ts,
                dir,
                tcp_flags: 0x18,
                seq: if dir == Dir::Tx { 1 } else { 1000 },
                payload,
                full_len: payload.len(),
            };
            ss.observe(key, &seg);
        };
        let (open, bad_as, fsm) = (
            crate::bgp::testutil::open_asn(64500),
            crate::bgp::testutil::notification(2, 2, &[]),
            crate::bgp::testutil::notification(5, 1, &[]),
        );
        send(&mut ss, 50_000, 1, Dir::Tx, &open);
        send(&mut ss, 50_000, 2, Dir::Rx, &bad_as);
        send(&mut ss, 50_001, 3, Dir::Tx, &fsm);
        let sum = ss.summary(LB);
        assert_eq!(sum.peers[0].sessions, 2);
        assert!(
            sum.peers[0].text.contains("Bad Peer AS"),
            "{}",
            sum.peers[0].text
        );
    }

    /// A collision: the session that came up wins over the connection
    /// started later and closed.
    #[test]
    fn a_session_up_outweighs_a_later_closed_one() {
        let mut ss = Sessions::new();
        let peer: SocketAddr = "192.0.2.1:179".parse().unwrap();
        let mut send = |port: u16, ts: u64, dir: Dir, flags: u8, payload: &[u8], seq: u32| {
            let local = SocketAddr::new("192.0.2.2".parse().unwrap(), port);
            let seg = Segment {
                ts_ns: ts,
                dir,
                tcp_flags: flags,
                seq,
                payload,
                full_len: payload.len(),
            };
            ss.observe(SessionKey::from_packet(Dir::Tx, local, peer), &seg);
        };
        let (open, ka) = (
            crate::bgp::testutil::open_asn(64500),
            crate::bgp::testutil::keepalive(),
        );
        let n = open.len() as u32;
        send(50_000, 1, Dir::Tx, 0x18, &open, 1);
        send(50_000, 2, Dir::Rx, 0x18, &open, 1000);
        send(50_000, 3, Dir::Tx, 0x18, &ka, 1 + n);
        send(50_000, 4, Dir::Rx, 0x18, &ka, 1000 + n);
        send(50_001, 5, Dir::Tx, 0x02, &[], 7);
        send(50_001, 6, Dir::Rx, 0x11, &[], 9);
        let sum = ss.summary(LB);
        assert_eq!(sum.peers[0].sessions, 2);
        assert_eq!(
            sum.peers[0].state,
            SessionState::Up,
            "{}",
            sum.peers[0].text
        );
    }
}
