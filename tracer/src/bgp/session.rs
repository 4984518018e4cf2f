//! The session layer: both directions of one TCP 4-tuple, from captured
//! segments to a session state, the OPENs, NOTIFICATIONs and route events.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::message::{DecodeOptions, Message, Notification, Open, Prefix, Update};
use super::stream::{Stream, StreamStats};

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Seen from this node: `Tx` was sent by it, `Rx` received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    Rx,
    Tx,
}

/// One TCP connection's 4-tuple, oriented from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SessionKey {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl SessionKey {
    /// Orients a packet's addresses: a sent packet's source is local.
    pub fn from_packet(dir: Dir, src: SocketAddr, dst: SocketAddr) -> Self {
        match dir {
            Dir::Tx => SessionKey {
                local: src,
                peer: dst,
            },
            Dir::Rx => SessionKey {
                local: dst,
                peer: src,
            },
        }
    }
}

/// One captured TCP segment of a session.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub ts_ns: u64,
    pub dir: Dir,
    /// TCP flags byte ([`TCP_SYN`], [`TCP_ACK`], ...).
    pub tcp_flags: u8,
    pub seq: u32,
    /// Captured payload bytes.
    pub payload: &'a [u8],
    /// Real payload length; more than `payload.len()` when truncated.
    pub full_len: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SessionState {
    /// Nothing observed yet.
    Idle,
    /// SYN without answer.
    SynSent {
        by_peer: bool,
        attempts: u32,
    },
    Reset {
        by_peer: bool,
    },
    /// FIN without a NOTIFICATION first.
    Closed {
        by_peer: bool,
    },
    /// TCP is up, no OPEN seen.
    Established,
    /// One side's OPEN seen.
    OpenSent {
        by_peer: bool,
    },
    /// Both OPENs seen, KEEPALIVEs not yet both ways.
    OpenConfirm,
    /// KEEPALIVE (or UPDATE) both ways, after the OPENs when they were seen.
    Up,
    Notified {
        sent_by_peer: bool,
        notification: Notification,
    },
}

impl SessionState {
    /// Whether routes learnt on the connection are gone (RFC 4271: closing a
    /// session withdraws everything it announced).
    pub fn is_down(&self) -> bool {
        matches!(
            self,
            SessionState::Idle
                | SessionState::SynSent { .. }
                | SessionState::Reset { .. }
                | SessionState::Closed { .. }
                | SessionState::Notified { .. }
        )
    }

    /// Closed, reset or notified: final for the connection. Messages that
    /// still arrive (e.g. freed by `finish`) are counted and their routes
    /// kept, but do not revive it; only a new SYN does.
    fn settled(&self) -> bool {
        matches!(
            self,
            SessionState::Reset { .. }
                | SessionState::Closed { .. }
                | SessionState::Notified { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteAction {
    Announce,
    Withdraw,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteEvent {
    pub ts_ns: u64,
    /// `Tx`: this node advertised it to the peer; `Rx`: the peer to this node.
    pub dir: Dir,
    pub peer: IpAddr,
    pub action: RouteAction,
    pub prefix: Prefix,
    pub next_hop: Option<IpAddr>,
    pub as_path: Vec<u32>,
    /// Which TCP connection on this 4-tuple (counts SYNs with a new ISN).
    pub connection: u32,
}

/// What became of a prefix on one session, see [`Session::route_status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RouteStatus {
    NotSeen,
    Announced {
        prefix: Prefix,
        next_hop: Option<IpAddr>,
        as_path: Vec<u32>,
        ts_ns: u64,
    },
    Withdrawn {
        prefix: Prefix,
        ts_ns: u64,
    },
    /// Announced, but the session went down since, which withdraws it.
    SessionDown {
        prefix: Prefix,
        next_hop: Option<IpAddr>,
        ts_ns: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NotificationEvent {
    pub ts_ns: u64,
    pub sent_by_peer: bool,
    pub notification: Notification,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MessageCounts {
    pub open: u64,
    pub update: u64,
    pub notification: u64,
    pub keepalive: u64,
    pub route_refresh: u64,
    pub unknown: u64,
}

/// Route events kept per session; a router sending a full table would
/// otherwise grow this without bound.
const MAX_ROUTES: usize = 1 << 16;
/// NOTIFICATIONs kept per session (the latest): one normally ends it, but
/// nothing stops a peer from sending more.
const MAX_NOTIFICATIONS: usize = 16;

/// One BGP session (one TCP 4-tuple) as seen from this node.
#[derive(Debug, Serialize)]
pub struct Session {
    key: SessionKey,
    state: SessionState,
    first_ts_ns: u64,
    last_ts_ns: u64,
    segments: u64,
    connection: u32,
    local_open: Option<Open>,
    peer_open: Option<Open>,
    sent: MessageCounts,
    received: MessageCounts,
    notifications: Vec<NotificationEvent>,
    routes: Vec<RouteEvent>,
    routes_dropped: u64,
    /// ADD-PATH negotiated for some family: its NLRI carry path identifiers
    /// that are not decoded, so prefixes of that family may be wrong.
    add_path: bool,
    tx_capture: StreamStats,
    rx_capture: StreamStats,
    #[serde(skip)]
    tx: Stream,
    #[serde(skip)]
    rx: Stream,
    #[serde(skip)]
    isn: [Option<u32>; 2],
    /// KEEPALIVE or UPDATE seen per direction on this connection.
    #[serde(skip)]
    alive: [bool; 2],
}

/// Index of a direction in the per-direction arrays (`isn`, `alive`).
pub(super) fn idx(d: Dir) -> usize {
    match d {
        Dir::Rx => 0,
        Dir::Tx => 1,
    }
}

impl Session {
    pub fn new(key: SessionKey) -> Self {
        Session {
            key,
            state: SessionState::Idle,
            first_ts_ns: 0,
            last_ts_ns: 0,
            segments: 0,
            connection: 0,
            local_open: None,
            peer_open: None,
            sent: MessageCounts::default(),
            received: MessageCounts::default(),
            notifications: Vec::new(),
            routes: Vec::new(),
            routes_dropped: 0,
            add_path: false,
            tx_capture: StreamStats::default(),
            rx_capture: StreamStats::default(),
            tx: Stream::new(),
            rx: Stream::new(),
            isn: [None; 2],
            alive: [false; 2],
        }
    }

    pub fn key(&self) -> SessionKey {
        self.key
    }

    pub fn state(&self) -> &SessionState {
        &self.state
    }

    pub fn first_ts_ns(&self) -> u64 {
        self.first_ts_ns
    }

    pub fn last_ts_ns(&self) -> u64 {
        self.last_ts_ns
    }

    pub fn local_open(&self) -> Option<&Open> {
        self.local_open.as_ref()
    }

    pub fn peer_open(&self) -> Option<&Open> {
        self.peer_open.as_ref()
    }

    pub fn routes(&self) -> &[RouteEvent] {
        &self.routes
    }

    pub fn notifications(&self) -> &[NotificationEvent] {
        &self.notifications
    }

    /// Messages sent by this node / received from the peer.
    pub fn counts(&self) -> (MessageCounts, MessageCounts) {
        (self.sent, self.received)
    }

    /// Capture quality of the sent / received streams.
    pub fn capture(&self) -> (StreamStats, StreamStats) {
        (self.tx_capture, self.rx_capture)
    }

    pub fn add_path(&self) -> bool {
        self.add_path
    }

    fn stream(&mut self, d: Dir) -> &mut Stream {
        match d {
            Dir::Rx => &mut self.rx,
            Dir::Tx => &mut self.tx,
        }
    }

    /// Feeds one segment; segments should come in capture order.
    pub fn observe(&mut self, seg: &Segment<'_>) {
        if self.segments == 0 {
            self.first_ts_ns = seg.ts_ns;
        }
        self.segments += 1;
        self.last_ts_ns = self.last_ts_ns.max(seg.ts_ns);
        let d = seg.dir;
        let by_peer = d == Dir::Rx;
        let flags = seg.tcp_flags;

        if flags & TCP_RST != 0 {
            if !matches!(self.state, SessionState::Notified { .. }) {
                self.state = SessionState::Reset { by_peer };
            }
            return;
        }
        let mut data_seq = seg.seq;
        if flags & TCP_SYN != 0 {
            // A SYN's payload (TCP Fast Open) starts after the SYN's own number.
            data_seq = seg.seq.wrapping_add(1);
            if flags & TCP_ACK == 0 {
                self.syn(d, seg.seq);
            } else if self.isn[idx(d)] != Some(seg.seq) {
                // SYN-ACK: the answer to an attempt; the answering side's
                // stream starts here.
                self.isn[idx(d)] = Some(seg.seq);
                *self.stream(d) = Stream::starting_at(data_seq);
                if matches!(
                    self.state,
                    SessionState::Idle | SessionState::SynSent { .. }
                ) {
                    self.state = SessionState::Established;
                }
            }
        } else if matches!(
            self.state,
            SessionState::Idle | SessionState::SynSent { .. }
        ) {
            // Any other segment means the connection is open, even if the
            // handshake was not seen (capture started mid-session).
            self.state = SessionState::Established;
        }

        let opts = self.decode_options();
        let stream = self.stream(d);
        stream.set_options(opts);
        stream.push(data_seq, seg.payload, seg.full_len);
        let msgs = stream.messages();
        self.process(seg.ts_ns, d, msgs);

        if flags & TCP_FIN != 0 && !self.state.settled() {
            self.state = SessionState::Closed { by_peer };
        }
    }

    /// Decodes what the end of the capture left waiting for missing segments.
    pub fn finish(&mut self, ts_ns: u64) {
        for d in [Dir::Rx, Dir::Tx] {
            let msgs = self.stream(d).flush();
            self.process(ts_ns, d, msgs);
        }
    }

    fn syn(&mut self, d: Dir, seq: u32) {
        let by_peer = d == Dir::Rx;
        if self.isn[idx(d)] == Some(seq) {
            // Retransmitted SYN: the attempt goes unanswered so far.
            if let SessionState::SynSent { attempts, .. } = &mut self.state {
                *attempts += 1;
            }
            return;
        }
        // A new connection on this 4-tuple: what the old one negotiated and
        // announced no longer holds.
        self.connection += 1;
        self.isn = [None; 2];
        self.isn[idx(d)] = Some(seq);
        self.local_open = None;
        self.peer_open = None;
        self.alive = [false; 2];
        self.add_path = false;
        self.rx = Stream::new();
        self.tx = Stream::new();
        *self.stream(d) = Stream::starting_at(seq.wrapping_add(1));
        self.state = SessionState::SynSent {
            by_peer,
            attempts: 1,
        };
    }

    fn decode_options(&self) -> DecodeOptions {
        match (&self.local_open, &self.peer_open) {
            (Some(l), Some(p)) => DecodeOptions {
                four_octet_as: Some(l.four_octet_as() && p.four_octet_as()),
            },
            _ => DecodeOptions::default(),
        }
    }

    fn process(&mut self, ts_ns: u64, d: Dir, msgs: Vec<Message>) {
        let by_peer = d == Dir::Rx;
        for msg in msgs {
            let counts = if by_peer {
                &mut self.received
            } else {
                &mut self.sent
            };
            match msg {
                Message::Open(open) => {
                    counts.open += 1;
                    self.record_open(by_peer, open);
                }
                Message::Keepalive => {
                    counts.keepalive += 1;
                    self.alive(d);
                }
                Message::Update(u) => {
                    counts.update += 1;
                    self.alive(d);
                    self.record_routes(ts_ns, d, &u);
                }
                Message::Notification(n) => {
                    counts.notification += 1;
                    if self.notifications.len() >= MAX_NOTIFICATIONS {
                        self.notifications.remove(0);
                    }
                    self.notifications.push(NotificationEvent {
                        ts_ns,
                        sent_by_peer: by_peer,
                        notification: n.clone(),
                    });
                    // The most telling end state, even after a RST or FIN
                    // already processed (e.g. its segment was reordered).
                    self.state = SessionState::Notified {
                        sent_by_peer: by_peer,
                        notification: n,
                    };
                }
                Message::RouteRefresh { .. } => counts.route_refresh += 1,
                Message::Unknown { .. } => counts.unknown += 1,
            }
        }
        self.tx_capture = self.tx.stats();
        self.rx_capture = self.rx.stats();
    }

    /// Keeps an OPEN and moves the state on; with both OPENs seen, they
    /// decide the AS_PATH width and whether ADD-PATH was negotiated.
    fn record_open(&mut self, by_peer: bool, open: Open) {
        if by_peer {
            self.peer_open = Some(open);
        } else {
            self.local_open = Some(open);
        }
        self.add_path = self.add_path_negotiated();
        if !self.state.settled() {
            self.state = if self.local_open.is_some() && self.peer_open.is_some() {
                SessionState::OpenConfirm
            } else {
                SessionState::OpenSent { by_peer }
            };
        }
        // For the messages still to come (AS_PATH width).
        let opts = self.decode_options();
        self.rx.set_options(opts);
        self.tx.set_options(opts);
    }

    fn alive(&mut self, d: Dir) {
        self.alive[idx(d)] = true;
        // Each side sends KEEPALIVE only once it accepted the other's OPEN,
        // so KEEPALIVEs both ways mean Established on both ends even if the
        // OPENs themselves were not captured.
        if self.alive == [true, true] && !self.state.settled() {
            self.state = SessionState::Up;
        }
    }

    fn add_path_negotiated(&self) -> bool {
        let (Some(l), Some(p)) = (&self.local_open, &self.peer_open) else {
            return false;
        };
        // Path IDs flow where one side may send (bit 2) and the other receive (bit 1).
        l.add_path_modes().any(|a| {
            p.add_path_modes().any(|b| {
                a.afi == b.afi
                    && a.safi == b.safi
                    && ((a.send_receive & 2 != 0 && b.send_receive & 1 != 0)
                        || (a.send_receive & 1 != 0 && b.send_receive & 2 != 0))
            })
        })
    }

    fn record_routes(&mut self, ts_ns: u64, d: Dir, u: &Update) {
        let peer = self.key.peer.ip();
        let connection = self.connection;
        let withdrawals = u.withdrawals().map(|p| (RouteAction::Withdraw, p, None));
        let announcements = u
            .announcements()
            .map(|(p, nh)| (RouteAction::Announce, p, nh));
        for (action, prefix, next_hop) in withdrawals.chain(announcements) {
            if self.routes.len() >= MAX_ROUTES {
                self.routes_dropped += 1;
                continue;
            }
            self.routes.push(RouteEvent {
                ts_ns,
                dir: d,
                peer,
                action,
                prefix,
                next_hop,
                as_path: if action == RouteAction::Announce {
                    u.as_path.clone()
                } else {
                    Vec::new()
                },
                connection,
            });
        }
    }

    /// What became of the most specific prefix covering `ip` in direction
    /// `dir` (`Tx`: advertised by this node) on this session.
    pub fn route_status(&self, ip: IpAddr, dir: Dir) -> RouteStatus {
        let mut latest: BTreeMap<Prefix, &RouteEvent> = BTreeMap::new();
        for e in self
            .routes
            .iter()
            .filter(|e| e.dir == dir && e.prefix.covers(ip))
        {
            latest.insert(e.prefix, e);
        }
        let announced = latest
            .values()
            .filter(|e| e.action == RouteAction::Announce)
            .max_by_key(|e| (e.prefix.len, e.ts_ns));
        if let Some(e) = announced {
            if self.state.is_down() || e.connection != self.connection {
                return RouteStatus::SessionDown {
                    prefix: e.prefix,
                    next_hop: e.next_hop,
                    ts_ns: e.ts_ns,
                };
            }
            return RouteStatus::Announced {
                prefix: e.prefix,
                next_hop: e.next_hop,
                as_path: e.as_path.clone(),
                ts_ns: e.ts_ns,
            };
        }
        match latest.values().max_by_key(|e| e.ts_ns) {
            Some(e) => RouteStatus::Withdrawn {
                prefix: e.prefix,
                ts_ns: e.ts_ns,
            },
            None => RouteStatus::NotSeen,
        }
    }

    /// One line about the session's outcome.
    pub fn describe(&self) -> String {
        let peer = self.key.peer.ip();
        let side = |by_peer: bool| {
            if by_peer {
                peer.to_string()
            } else {
                "this node".to_string()
            }
        };
        match &self.state {
            SessionState::Idle => format!("no segment seen with {peer}"),
            SessionState::SynSent { by_peer, attempts } => {
                let (from, to) = if *by_peer {
                    (peer.to_string(), format!("this node's {}", self.key.local))
                } else {
                    ("this node".to_string(), self.key.peer.to_string())
                };
                format!("{from} sent SYN to {to} without answer ({attempts} attempt(s))")
            }
            SessionState::Reset { by_peer } => {
                format!(
                    "TCP connection with {peer} reset (RST) by {}",
                    side(*by_peer)
                )
            }
            SessionState::Closed { by_peer } => format!(
                "TCP connection with {peer} closed (FIN) by {} without NOTIFICATION",
                side(*by_peer)
            ),
            SessionState::Established => {
                format!("TCP connected with {peer}, no BGP OPEN seen")
            }
            SessionState::OpenSent { by_peer } => format!(
                "OPEN sent by {} only; no OPEN from {}",
                side(*by_peer),
                side(!*by_peer)
            ),
            SessionState::OpenConfirm => {
                format!(
                    "OPEN exchanged with {peer}{}, KEEPALIVE not yet both ways",
                    self.asns()
                )
            }
            SessionState::Up if self.local_open.is_none() && self.peer_open.is_none() => {
                format!(
                    "BGP session with {peer} up (KEEPALIVE both ways; OPENs before the capture)"
                )
            }
            SessionState::Up => {
                format!(
                    "BGP session with {peer} up (OPEN/KEEPALIVE exchanged{})",
                    self.asns()
                )
            }
            SessionState::Notified {
                sent_by_peer,
                notification,
            } => format!(
                "{} sent NOTIFICATION {}",
                if *sent_by_peer {
                    peer.to_string()
                } else {
                    format!("this node (to {peer})")
                },
                notification.describe()
            ),
        }
    }

    fn asns(&self) -> String {
        match (&self.local_open, &self.peer_open) {
            (Some(l), Some(p)) => format!("; local AS {}, peer AS {}", l.real_asn(), p.real_asn()),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::message::{MSG_OPEN, MSG_UPDATE};
    use crate::bgp::summary::{PeerSummary, Sessions};
    use crate::bgp::testutil::*;

    /// Two ends of one connection, keeping sequence numbers.
    struct Wire {
        sessions: Sessions,
        key: SessionKey,
        seq: [u32; 2],
        ts: u64,
    }

    impl Wire {
        fn new(local_port: u16) -> Self {
            Wire {
                sessions: Sessions::new(),
                key: SessionKey {
                    local: SocketAddr::new("10.0.0.5".parse().unwrap(), local_port),
                    peer: "192.0.2.1:179".parse().unwrap(),
                },
                seq: [70_000, u32::MAX - 40],
                ts: 0,
            }
        }

        fn seg(&mut self, dir: Dir, flags: u8, payload: &[u8], cap: usize) {
            self.ts += 1_000_000;
            let i = idx(dir);
            let seg = Segment {
                ts_ns: self.ts,
                dir,
                tcp_flags: flags,
                seq: self.seq[i],
                payload: &payload[..cap.min(payload.len())],
                full_len: payload.len(),
            };
            self.sessions.observe(self.key, &seg);
            let syn = u32::from(flags & (TCP_SYN | TCP_FIN) != 0);
            self.seq[i] = self.seq[i].wrapping_add(payload.len() as u32 + syn);
        }

        fn send(&mut self, dir: Dir, payload: &[u8]) {
            self.seg(dir, TCP_ACK, payload, usize::MAX);
        }

        fn handshake(&mut self) {
            self.seg(Dir::Tx, TCP_SYN, &[], 0);
            self.seg(Dir::Rx, TCP_SYN | TCP_ACK, &[], 0);
            self.seg(Dir::Tx, TCP_ACK, &[], 0);
        }

        fn up(&mut self) {
            self.handshake();
            self.send(Dir::Tx, &open_asn(64512));
            self.send(Dir::Rx, &open_4octet());
            self.send(Dir::Rx, &keepalive());
            self.send(Dir::Tx, &keepalive());
        }

        fn session(&self) -> &Session {
            self.sessions.get(&self.key).unwrap()
        }

        fn summary(&mut self) -> PeerSummary {
            self.sessions.finish();
            self.sessions.summary(LB).peers.remove(0)
        }
    }

    #[test]
    fn session_up_and_announced() {
        let mut w = Wire::new(40_000);
        w.up();
        assert_eq!(*w.session().state(), SessionState::Up);
        w.send(Dir::Tx, &announce_lb());
        w.send(Dir::Rx, &keepalive());
        let s = w.session();
        assert_eq!(s.routes().len(), 1);
        assert_eq!(s.routes()[0].peer, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert!(s.describe().contains("BGP session with 192.0.2.1 up"));
        assert!(s.describe().contains("peer AS 4200000001"));
        let p = w.summary();
        assert_eq!(p.peer_asn, Some(4_200_000_001));
        assert_eq!(p.local_asn, Some(64512));
        assert_eq!(p.peer_hostname.as_deref(), Some("leaf"));
        let RouteStatus::Announced {
            prefix,
            next_hop,
            as_path,
            ..
        } = &p.advertised
        else {
            panic!("{:?}", p.advertised)
        };
        assert_eq!(prefix.to_string(), "203.0.113.240/32");
        assert_eq!(*next_hop, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(*as_path, [64512]);
        assert_eq!(p.received, RouteStatus::NotSeen);
        let text = w.sessions.summary(LB).describe().join("\n");
        assert!(
            text.contains("UPDATE announces 203.0.113.240/32 to 192.0.2.1 with next hop 10.0.0.5")
        );
    }

    #[test]
    fn session_withdrawn_and_other_prefixes() {
        let mut w = Wire::new(40_001);
        w.up();
        w.send(Dir::Tx, &announce_lb());
        w.send(Dir::Tx, &withdraw_v4());
        // A peer route that does not cover the LB IP changes nothing.
        w.send(Dir::Rx, &update_v4()[..]);
        let p = w.summary();
        assert!(
            matches!(p.advertised, RouteStatus::Withdrawn { ref prefix, .. } if prefix.to_string() == "203.0.113.240/32")
        );
        // update_v4 from the peer announces 203.0.113.240/32 too.
        assert!(matches!(p.received, RouteStatus::Announced { .. }));
    }

    #[test]
    fn session_ipv6_announcement() {
        let mut w = Wire::new(40_002);
        w.up();
        w.send(Dir::Tx, &update_v6());
        w.sessions.finish();
        let ip: IpAddr = "2001:db8:ffff::10".parse().unwrap();
        let sum = w.sessions.summary(ip);
        let RouteStatus::Announced {
            prefix, next_hop, ..
        } = &sum.peers[0].advertised
        else {
            panic!()
        };
        assert_eq!(prefix.to_string(), "2001:db8:ffff::10/128");
        assert_eq!(*next_hop, Some("2001:db8::1".parse().unwrap()));
        w.send(Dir::Tx, &withdraw_v6());
        assert!(matches!(
            w.session().route_status(ip, Dir::Tx),
            RouteStatus::Withdrawn { .. }
        ));
    }

    #[test]
    fn syn_without_answer() {
        let mut w = Wire::new(40_003);
        w.seg(Dir::Tx, TCP_SYN, &[], 0);
        // The same SYN again (same ISN): a retransmission, not a new attempt.
        w.seq[idx(Dir::Tx)] = w.seq[idx(Dir::Tx)].wrapping_sub(1);
        w.seg(Dir::Tx, TCP_SYN, &[], 0);
        assert_eq!(
            *w.session().state(),
            SessionState::SynSent {
                by_peer: false,
                attempts: 2
            }
        );
        assert!(
            w.session()
                .describe()
                .contains("without answer (2 attempt(s))")
        );
        assert_eq!(w.summary().advertised, RouteStatus::NotSeen);
    }

    #[test]
    fn refused_by_peer() {
        let mut w = Wire::new(40_004);
        w.seg(Dir::Tx, TCP_SYN, &[], 0);
        w.seg(Dir::Rx, TCP_RST | TCP_ACK, &[], 0);
        assert_eq!(*w.session().state(), SessionState::Reset { by_peer: true });
        assert!(w.session().describe().contains("reset (RST) by 192.0.2.1"));
    }

    #[test]
    fn notification_bad_peer_as() {
        let mut w = Wire::new(40_005);
        w.handshake();
        w.send(Dir::Tx, &open_asn(64512));
        assert_eq!(
            *w.session().state(),
            SessionState::OpenSent { by_peer: false }
        );
        w.send(Dir::Rx, &notification(2, 2, &[]));
        w.seg(Dir::Rx, TCP_FIN | TCP_ACK, &[], 0);
        w.seg(Dir::Tx, TCP_RST, &[], 0);
        let SessionState::Notified {
            sent_by_peer,
            notification,
        } = w.session().state()
        else {
            panic!()
        };
        assert!(sent_by_peer);
        assert_eq!(notification.describe(), "OPEN Message Error / Bad Peer AS");
        assert_eq!(
            w.session().describe(),
            "192.0.2.1 sent NOTIFICATION OPEN Message Error / Bad Peer AS"
        );
        let p = w.summary();
        assert!(p.last_notification.is_some());
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["state"]["state"], "notified");
        assert_eq!(
            v["state"]["notification"]["description"],
            "OPEN Message Error / Bad Peer AS"
        );
    }

    #[test]
    fn session_down_withdraws_implicitly_and_reconnect_resets() {
        let mut w = Wire::new(40_006);
        w.up();
        w.send(Dir::Tx, &announce_lb());
        w.send(Dir::Tx, &shutdown());
        w.seg(Dir::Tx, TCP_FIN | TCP_ACK, &[], 0);
        assert!(matches!(
            w.session().state(),
            SessionState::Notified {
                sent_by_peer: false,
                ..
            }
        ));
        assert!(matches!(
            w.summary().advertised,
            RouteStatus::SessionDown { .. }
        ));
        // The same 4-tuple again: new ISNs, OPENs, no announcement yet.
        w.seq = [9, 99];
        w.up();
        assert_eq!(*w.session().state(), SessionState::Up);
        assert!(matches!(
            w.summary().advertised,
            RouteStatus::SessionDown { .. }
        ));
        w.send(Dir::Tx, &announce_lb());
        assert!(matches!(
            w.summary().advertised,
            RouteStatus::Announced { .. }
        ));
    }

    #[test]
    fn closed_without_notification() {
        let mut w = Wire::new(40_007);
        w.up();
        w.seg(Dir::Rx, TCP_FIN | TCP_ACK, &[], 0);
        assert_eq!(*w.session().state(), SessionState::Closed { by_peer: true });
    }

    #[test]
    fn truncated_segments_in_a_session() {
        let mut w = Wire::new(40_008);
        w.up();
        // Announcement and a KEEPALIVE in one segment cut after 25 bytes:
        // the UPDATE is lost and counted, the session stays up.
        let both = cat(&[announce_lb(), keepalive()]);
        w.seg(Dir::Tx, TCP_ACK, &both, 25);
        w.send(Dir::Tx, &keepalive());
        let p = w.summary();
        assert_eq!(p.advertised, RouteStatus::NotSeen);
        assert_eq!(p.messages_not_decoded, 1);
        assert_eq!(p.state, SessionState::Up);
        assert!(
            w.sessions
                .summary(LB)
                .describe()
                .join("\n")
                .contains("not decoded")
        );
    }

    #[test]
    fn capture_started_mid_session() {
        let mut w = Wire::new(40_009);
        w.send(Dir::Rx, &keepalive());
        assert_eq!(*w.session().state(), SessionState::Established);
        w.send(Dir::Tx, &announce_lb());
        assert_eq!(*w.session().state(), SessionState::Up);
        assert!(w.session().describe().contains("OPENs before the capture"));
    }

    #[test]
    fn add_path_is_flagged() {
        // Both sides: ADD-PATH IPv4 unicast send/receive.
        let open = msg(
            MSG_OPEN,
            &[4, 0xfc, 0, 0, 90, 1, 1, 1, 1, 8, 2, 6, 69, 4, 0, 1, 1, 3],
        );
        let mut w = Wire::new(40_010);
        w.handshake();
        w.send(Dir::Tx, &open);
        w.send(Dir::Rx, &open);
        assert!(w.session().add_path());
        // NLRI with a path identifier is misread, but does not break anything.
        let mut body = vec![0, 0, 0, 0];
        body.extend([0, 0, 0, 1, 32, 203, 0, 113, 240]);
        w.send(Dir::Tx, &msg(MSG_UPDATE, &body));
        assert!(w.summary().add_path);
    }
}
