//! ARP evidence for one LoadBalancer IPv4 address (MetalLB L2 mode): does
//! this node answer for it, do requests arrive unanswered, or do two MACs
//! claim it.
//!
//! What a node sees: requests are broadcast, so every node on the segment
//! sees them; replies are unicast to the requester, so a node normally sees
//! only its own; gratuitous ARPs (sent by the MetalLB leader on takeover)
//! are broadcast again. A foreign MAC therefore shows up only through
//! gratuitous ARPs, replies to this node's own requests, or flooding.
//!
//! This node's own frames are told by direction and MAC: what it sends is
//! `Tx`; a frame arriving with one of its MACs (or one it was seen sending
//! from) is its own frame received back, on another of its interfaces when
//! two share a segment. That is never "sent" on the receiving interface and
//! never another host.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

use serde::{Serialize, Serializer};

pub const OP_REQUEST: u16 = 1;
pub const OP_REPLY: u16 = 2;

/// Claims by different MACs closer together than this are taken as
/// simultaneous (both answering the same request), not as a leader handover.
pub const SAME_TIME_NS: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Seen from this node: `Tx` was sent by it, `Rx` received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    Rx,
    Tx,
}

/// One ARP packet at one of the node's interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpObservation {
    pub ts_ns: u64,
    pub dir: Dir,
    pub ifname: String,
    /// [`OP_REQUEST`] or [`OP_REPLY`].
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: Ipv4Addr,
    pub tha: [u8; 6],
    pub tpa: Ipv4Addr,
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
}

/// A host that asked for the LB IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Requester {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub requests: u64,
    /// Replies this node sent to that IP.
    pub answered: u64,
    pub first_ts_ns: u64,
}

/// Another MAC answering or announcing the LB IP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ForeignClaim {
    pub mac: Mac,
    pub count: u64,
    pub replies: u64,
    pub gratuitous: u64,
    /// ARP requests with the LB IP as sender address: they update the
    /// neighbours' caches just as a reply does.
    pub requests_from_lb_ip: u64,
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InterfaceArp {
    pub ifname: String,
    /// This node's MAC on the interface, when given.
    pub own_mac: Option<Mac>,
    pub requests_received: u64,
    pub requesters: Vec<Requester>,
    /// Requests for the LB IP sent by this node itself.
    pub requests_sent: u64,
    pub replies_sent: u64,
    /// Sender MACs in this node's replies and gratuitous ARPs.
    pub reply_macs: Vec<Mac>,
    pub gratuitous_sent: u64,
    /// Requests this node sent with the LB IP as sender address.
    pub requests_from_lb_ip_sent: u64,
    pub others: Vec<ForeignClaim>,
    /// This node's own frames about the LB IP received here (sent from
    /// another of its interfaces on the same segment, or reflected).
    pub own_received: Vec<OwnEcho>,
}

/// This node's frames from one of its interfaces, received on another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OwnEcho {
    /// The interface whose MAC the frames carry.
    pub from_ifname: String,
    pub mac: Mac,
    pub count: u64,
}

/// One of this node's interfaces answering for the IP, with its MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OwnAnswer {
    pub ifname: String,
    pub mac: Mac,
    /// Replies and announcements sent from it.
    pub claims: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Host {
    pub ip: Ipv4Addr,
    pub mac: Mac,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum ArpVerdict {
    AnsweredByThisNode {
        mac: Mac,
        ifname: String,
    },
    /// Requests arrived, nobody was seen answering: this node is not the
    /// speaker announcing the IP.
    NotAnswered {
        requests: u64,
        requesters: Vec<Host>,
    },
    /// Another node announces the IP: normal for L2 mode on a non-leader.
    AnsweredElsewhere {
        macs: Vec<Mac>,
    },
    /// This node answers from two or more of its interfaces on one
    /// segment, each with its own MAC (ARP flux): clients cache whichever
    /// answer came last.
    ArpFlux {
        answers: Vec<OwnAnswer>,
    },
    /// Two or more MACs claim the IP at the same time: split brain or a
    /// duplicate IP. `this_node` is this node's MAC among them, if any.
    Conflict {
        macs: Vec<Mac>,
        this_node: Option<Mac>,
    },
    NoArpSeen,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArpReport {
    pub lb_ip: Ipv4Addr,
    pub interfaces: Vec<InterfaceArp>,
    pub verdict: ArpVerdict,
    /// Claimants that stopped before the current one took over (leader
    /// changes during the capture), oldest first.
    pub earlier_claimants: Vec<Mac>,
    /// The verdict in one sentence.
    pub text: String,
    /// Further findings worth a line each.
    pub notes: Vec<String>,
}

/// Who answered for the IP; this node counts once, whichever MAC it used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Claimant {
    ThisNode,
    Foreign(Mac),
}

#[derive(Clone, Copy, Debug)]
struct Span {
    first: u64,
    last: u64,
}

impl Span {
    fn add(span: &mut Option<Span>, ts: u64) {
        let s = span.get_or_insert(Span {
            first: ts,
            last: ts,
        });
        s.first = s.first.min(ts);
        s.last = s.last.max(ts);
    }
}

/// Interface accumulator; `BTreeMap`s keep the output order stable.
#[derive(Default)]
struct Acc {
    requests_received: u64,
    requesters: BTreeMap<Host, Requester>,
    requests_sent: u64,
    replies_sent: u64,
    reply_macs: BTreeMap<Mac, u64>,
    gratuitous_sent: u64,
    requests_from_lb_ip_sent: u64,
    others: BTreeMap<Mac, ForeignClaim>,
    /// Requester IPs this node replied to, with counts.
    answered: BTreeMap<Ipv4Addr, u64>,
    /// This node's own frames received here, by (sending interface, MAC).
    own_received: BTreeMap<(String, Mac), u64>,
}

/// Where an observed frame comes from, seen from this node.
#[derive(Clone, Copy)]
enum Origin<'a> {
    /// Sent by this node on the interface it was seen on.
    Sent,
    /// This node's frame (from the interface owning its MAC) received back.
    Echo { from: &'a str },
    /// Another host's.
    Foreign,
}

enum Kind {
    /// Someone asks who has the LB IP.
    Request,
    /// Someone claims the LB IP: a reply, a gratuitous ARP, or a request
    /// sent from the LB IP.
    Claim(ClaimKind),
}

#[derive(Clone, Copy)]
enum ClaimKind {
    Reply,
    Gratuitous,
    RequestFromLbIp,
}

fn classify(o: &ArpObservation, lb: Ipv4Addr) -> Option<Kind> {
    let gratuitous = o.spa == lb && o.tpa == lb;
    match o.op {
        _ if gratuitous => Some(Kind::Claim(ClaimKind::Gratuitous)),
        OP_REPLY if o.spa == lb => Some(Kind::Claim(ClaimKind::Reply)),
        OP_REQUEST if o.spa == lb => Some(Kind::Claim(ClaimKind::RequestFromLbIp)),
        OP_REQUEST if o.tpa == lb => Some(Kind::Request),
        // Replies *to* the LB IP, other opcodes (RARP, InARP): not about
        // who owns the address.
        _ => None,
    }
}

/// What the observations add up to, before any conclusion.
#[derive(Default)]
struct Gathered<'a> {
    ifs: BTreeMap<&'a str, Acc>,
    claims: BTreeMap<Claimant, Option<Span>>,
    /// This node's claims per (interface, MAC), to name the one it uses most.
    own_use: BTreeMap<(&'a str, Mac), u64>,
    /// The claims of those it was seen sending (not received back).
    sent: BTreeMap<(&'a str, Mac), u64>,
    probes: BTreeMap<Mac, u64>,
    /// Pairs of this node's interfaces seen on one segment: one received
    /// the other's frame, or both received the same host's request.
    segments: BTreeSet<(&'a str, &'a str)>,
}

impl<'a> Gathered<'a> {
    fn add(&mut self, o: &'a ArpObservation, kind: Kind, origin: Origin<'a>) {
        let acc = self.ifs.entry(o.ifname.as_str()).or_default();
        let sha = Mac(o.sha);
        if let Origin::Echo { from } = origin {
            *acc.own_received.entry((from.to_string(), sha)).or_default() += 1;
            if from != o.ifname {
                self.segments.insert(pair(from, &o.ifname));
            }
            // Still this node's claim, made on the interface it came from.
            if let Kind::Claim(_) = kind {
                *self.own_use.entry((from, sha)).or_default() += 1;
                Span::add(self.claims.entry(Claimant::ThisNode).or_default(), o.ts_ns);
            }
            return;
        }
        let own = matches!(origin, Origin::Sent);
        match kind {
            Kind::Request if own => acc.requests_sent += 1,
            Kind::Request => {
                acc.requests_received += 1;
                if o.spa.is_unspecified() {
                    // RFC 5227 probe: someone checks whether the IP is free.
                    *self.probes.entry(sha).or_default() += 1;
                }
                let host = Host {
                    ip: o.spa,
                    mac: sha,
                };
                let r = acc.requesters.entry(host).or_insert(Requester {
                    ip: o.spa,
                    mac: sha,
                    requests: 0,
                    answered: 0,
                    first_ts_ns: o.ts_ns,
                });
                r.requests += 1;
                r.first_ts_ns = r.first_ts_ns.min(o.ts_ns);
            }
            Kind::Claim(k) if own => {
                match k {
                    ClaimKind::Reply => {
                        acc.replies_sent += 1;
                        *acc.answered.entry(o.tpa).or_default() += 1;
                    }
                    ClaimKind::Gratuitous => acc.gratuitous_sent += 1,
                    ClaimKind::RequestFromLbIp => acc.requests_from_lb_ip_sent += 1,
                }
                *acc.reply_macs.entry(sha).or_default() += 1;
                *self.own_use.entry((o.ifname.as_str(), sha)).or_default() += 1;
                *self.sent.entry((o.ifname.as_str(), sha)).or_default() += 1;
                Span::add(self.claims.entry(Claimant::ThisNode).or_default(), o.ts_ns);
            }
            Kind::Claim(k) => {
                let c = match acc.others.entry(sha) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => e.insert(ForeignClaim {
                        mac: sha,
                        count: 0,
                        replies: 0,
                        gratuitous: 0,
                        requests_from_lb_ip: 0,
                        first_ts_ns: o.ts_ns,
                        last_ts_ns: o.ts_ns,
                    }),
                };
                c.count += 1;
                match k {
                    ClaimKind::Reply => c.replies += 1,
                    ClaimKind::Gratuitous => c.gratuitous += 1,
                    ClaimKind::RequestFromLbIp => c.requests_from_lb_ip += 1,
                }
                c.first_ts_ns = c.first_ts_ns.min(o.ts_ns);
                c.last_ts_ns = c.last_ts_ns.max(o.ts_ns);
                Span::add(
                    self.claims.entry(Claimant::Foreign(sha)).or_default(),
                    o.ts_ns,
                );
            }
        }
    }
}

/// The pair of interface names in a stable order.
fn pair<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b { (a, b) } else { (b, a) }
}

/// Evidence about `lb_ip` from `observations`, given this node's MAC per
/// interface (`own_macs`).
pub fn analyze<S: AsRef<str>>(
    lb_ip: Ipv4Addr,
    own_macs: &[(S, [u8; 6])],
    observations: &[ArpObservation],
) -> ArpReport {
    let own_by_if: BTreeMap<&str, Mac> = own_macs
        .iter()
        .map(|(name, mac)| (name.as_ref(), Mac(*mac)))
        .collect();
    // Which interface a MAC of this node belongs to: its own interfaces'
    // MACs, then any MAC this node was seen sending ARP from (a speaker may
    // use another MAC than the interface's).
    let mut owner: BTreeMap<Mac, &str> = BTreeMap::new();
    for (name, mac) in &own_by_if {
        // A bridge shares its port's MAC: the port (listed first by index
        // or name) must not hide the bridge, so keep the first one seen.
        owner.entry(*mac).or_insert(name);
    }
    for o in observations.iter().filter(|o| o.dir == Dir::Tx) {
        owner.entry(Mac(o.sha)).or_insert(o.ifname.as_str());
    }
    let mut g = Gathered::default();
    for o in observations {
        let Some(kind) = classify(o, lb_ip) else {
            continue;
        };
        let origin = match (o.dir, owner.get(&Mac(o.sha))) {
            (Dir::Tx, _) => Origin::Sent,
            (Dir::Rx, Some(from)) => Origin::Echo { from },
            (Dir::Rx, None) => Origin::Foreign,
        };
        g.add(o, kind, origin);
    }
    // Two interfaces that received the same host's request share its segment.
    let mut heard: BTreeMap<Host, BTreeSet<&str>> = BTreeMap::new();
    for (ifname, acc) in &g.ifs {
        for h in acc.requesters.keys() {
            heard.entry(*h).or_default().insert(ifname);
        }
    }
    for ifs in heard.values() {
        let v: Vec<&str> = ifs.iter().copied().collect();
        for (i, a) in v.iter().enumerate() {
            for b in &v[i + 1..] {
                g.segments.insert(pair(a, b));
            }
        }
    }
    let probes = std::mem::take(&mut g.probes);
    let interfaces = interfaces(std::mem::take(&mut g.ifs), &own_by_if);
    let (verdict, earlier_claimants) = decide(&g, &interfaces);
    let mut report = ArpReport {
        lb_ip,
        interfaces,
        verdict,
        earlier_claimants,
        text: String::new(),
        notes: Vec::new(),
    };
    report.text = report.describe();
    report.notes = report.findings(&probes);
    report
}

/// This node sending claims from two or more MACs on interfaces that share
/// a segment: one answer per MAC, named after the interface it left by most.
fn flux(g: &Gathered) -> Option<Vec<OwnAnswer>> {
    // MAC → (interfaces it was sent on, claims).
    let mut by_mac: BTreeMap<Mac, (BTreeSet<&str>, u64)> = BTreeMap::new();
    for ((ifname, mac), n) in &g.sent {
        let e = by_mac.entry(*mac).or_default();
        e.0.insert(ifname);
        e.1 += n;
    }
    let macs: Vec<(&Mac, &(BTreeSet<&str>, u64))> = by_mac.iter().collect();
    let shared = |a: &BTreeSet<&str>, b: &BTreeSet<&str>| {
        a.iter()
            .any(|x| b.iter().any(|y| x == y || g.segments.contains(&pair(x, y))))
    };
    let mut flux: BTreeSet<usize> = BTreeSet::new();
    for i in 0..macs.len() {
        for j in i + 1..macs.len() {
            if shared(&macs[i].1.0, &macs[j].1.0) {
                flux.insert(i);
                flux.insert(j);
            }
        }
    }
    if flux.len() < 2 {
        return None;
    }
    let mut answers: Vec<OwnAnswer> = flux
        .into_iter()
        .map(|i| {
            let (mac, (ifs, claims)) = macs[i];
            // Named after the interface it left by most.
            let ifname = ifs
                .iter()
                .max_by_key(|i| g.sent.get(&(**i, *mac)).copied().unwrap_or(0))
                .copied()
                .unwrap_or_default();
            OwnAnswer {
                ifname: ifname.to_string(),
                mac: *mac,
                claims: *claims,
            }
        })
        .collect();
    answers.sort_by(|a, b| a.ifname.cmp(&b.ifname));
    Some(answers)
}

fn interfaces(ifs: BTreeMap<&str, Acc>, own_by_if: &BTreeMap<&str, Mac>) -> Vec<InterfaceArp> {
    ifs.into_iter()
        .map(|(name, mut acc)| {
            for r in acc.requesters.values_mut() {
                r.answered = acc.answered.get(&r.ip).copied().unwrap_or(0);
            }
            let mut requesters: Vec<Requester> = acc.requesters.into_values().collect();
            requesters.sort_by_key(|r| r.first_ts_ns);
            let mut others: Vec<ForeignClaim> = acc.others.into_values().collect();
            others.sort_by_key(|c| c.first_ts_ns);
            let own_received = acc
                .own_received
                .into_iter()
                .map(|((from_ifname, mac), count)| OwnEcho {
                    from_ifname,
                    mac,
                    count,
                })
                .collect();
            InterfaceArp {
                ifname: name.to_string(),
                own_mac: own_by_if.get(name).copied(),
                requests_received: acc.requests_received,
                requesters,
                requests_sent: acc.requests_sent,
                replies_sent: acc.replies_sent,
                reply_macs: acc.reply_macs.into_keys().collect(),
                gratuitous_sent: acc.gratuitous_sent,
                requests_from_lb_ip_sent: acc.requests_from_lb_ip_sent,
                others,
                own_received,
            }
        })
        .collect()
}

/// Who answers for the IP now, and who did before; or that nobody answers.
fn decide(g: &Gathered, interfaces: &[InterfaceArp]) -> (ArpVerdict, Vec<Mac>) {
    let mut spans: Vec<(Claimant, Span)> = g
        .claims
        .iter()
        .filter_map(|(c, s)| s.map(|s| (*c, s)))
        .collect();
    spans.sort_by_key(|(c, s)| (s.first, *c));
    // Split brain: some claimant starts before another one has stopped.
    // Claims strictly one after another are leader handovers.
    let simultaneous = spans.iter().enumerate().any(|(i, (_, a))| {
        spans[i + 1..]
            .iter()
            .any(|(_, b)| b.first <= a.last.saturating_add(SAME_TIME_NS))
    });
    let own_main = g
        .own_use
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|((ifname, mac), _)| (ifname.to_string(), *mac));
    if simultaneous {
        let this_node = own_main.as_ref().map(|(_, m)| *m);
        // This node's MACs first, then the others in order of appearance.
        let own = g.own_use.keys().map(|(_, m)| *m);
        let foreign = spans.iter().filter_map(|(c, _)| match c {
            Claimant::Foreign(m) => Some(*m),
            Claimant::ThisNode => None,
        });
        let mut macs: Vec<Mac> = Vec::new();
        for m in own.chain(foreign) {
            if !macs.contains(&m) {
                macs.push(m);
            }
        }
        return (ArpVerdict::Conflict { macs, this_node }, Vec::new());
    }
    if let Some(((current, _), before)) = spans.split_last() {
        let earlier = before
            .iter()
            .map(|(c, _)| match c {
                Claimant::ThisNode => own_main.as_ref().map(|(_, m)| *m).unwrap_or_default(),
                Claimant::Foreign(m) => *m,
            })
            .collect();
        let verdict = match (current, own_main, flux(g)) {
            (Claimant::ThisNode, Some(_), Some(answers)) => ArpVerdict::ArpFlux { answers },
            (Claimant::ThisNode, Some((ifname, mac)), None) => {
                ArpVerdict::AnsweredByThisNode { mac, ifname }
            }
            (Claimant::Foreign(m), _, _) => ArpVerdict::AnsweredElsewhere { macs: vec![*m] },
            // A ThisNode span always comes with an `own_use` entry.
            (Claimant::ThisNode, None, _) => ArpVerdict::NoArpSeen,
        };
        return (verdict, earlier);
    }
    let requests: u64 = interfaces.iter().map(|i| i.requests_received).sum();
    if requests == 0 {
        return (ArpVerdict::NoArpSeen, Vec::new());
    }
    let mut requesters: Vec<Host> = interfaces
        .iter()
        .flat_map(|i| &i.requesters)
        .map(|r| Host {
            ip: r.ip,
            mac: r.mac,
        })
        .collect();
    requesters.sort();
    requesters.dedup();
    (
        ArpVerdict::NotAnswered {
            requests,
            requesters,
        },
        Vec::new(),
    )
}

impl ArpReport {
    /// The verdict in one sentence.
    pub fn describe(&self) -> String {
        let ip = self.lb_ip;
        let replies: u64 = self.interfaces.iter().map(|i| i.replies_sent).sum();
        let requests: u64 = self.interfaces.iter().map(|i| i.requests_received).sum();
        match &self.verdict {
            ArpVerdict::AnsweredByThisNode { mac, ifname } => format!(
                "this node answers ARP for {ip} from MAC {mac} on {ifname} ({replies} replies to {requests} requests)"
            ),
            ArpVerdict::NotAnswered {
                requests,
                requesters,
            } => {
                let who: Vec<String> = requesters
                    .iter()
                    .map(|h| format!("{} ({})", h.ip, h.mac))
                    .collect();
                format!(
                    "{requests} ARP request(s) for {ip} arrived from {} but this node did not answer: this node is not announcing {ip} (another speaker may be the leader; check `kubectl describe svc` events)",
                    who.join(", ")
                )
            }
            ArpVerdict::AnsweredElsewhere { macs } => format!(
                "{} announces {ip}: another node is the leader (normal for L2 mode on a non-leader node)",
                join(macs)
            ),
            ArpVerdict::ArpFlux { answers } => {
                let named: Vec<String> = answers
                    .iter()
                    .map(|a| format!("{} (MAC {}, {} sent)", a.ifname, a.mac, a.claims))
                    .collect();
                format!(
                    "this node answers ARP for {ip} from {} of its interfaces on one segment: {}: each with its own MAC, so clients cache whichever answered last (ARP flux)",
                    answers.len(),
                    named.join(" and ")
                )
            }
            ArpVerdict::Conflict { macs, this_node } => {
                // Every MAC this node used is named as this node's.
                let own: BTreeSet<Mac> = self
                    .interfaces
                    .iter()
                    .flat_map(|i| {
                        i.reply_macs
                            .iter()
                            .copied()
                            .chain(i.own_received.iter().map(|e| e.mac))
                    })
                    .chain(*this_node)
                    .collect();
                let named: Vec<String> = macs
                    .iter()
                    .map(|m| {
                        if own.contains(m) {
                            format!("{m} (this node)")
                        } else {
                            m.to_string()
                        }
                    })
                    .collect();
                format!(
                    "{} MACs answer or announce {ip} at the same time: {}: split brain between speakers or a duplicate IP",
                    macs.len(),
                    named.join(" and ")
                )
            }
            ArpVerdict::NoArpSeen => format!(
                "no ARP for {ip} seen (no client asked during the capture; `arping {ip}` from a host on the segment makes one ask)"
            ),
        }
    }

    fn findings(&self, probes: &BTreeMap<Mac, u64>) -> Vec<String> {
        let ip = self.lb_ip;
        let mut notes = Vec::new();
        if !self.earlier_claimants.is_empty() {
            notes.push(format!(
                "{ip} moved during the capture: earlier claimed by {}",
                join(&self.earlier_claimants)
            ));
        }
        for i in &self.interfaces {
            if i.requests_from_lb_ip_sent > 0 {
                notes.push(format!(
                    "this node sent {} ARP request(s) on {} with {ip} as sender address: neighbours then map {ip} to this node (kube-proxy IPVS without strictARP, or arp_announce)",
                    i.requests_from_lb_ip_sent, i.ifname
                ));
            }
            if let Some(own) = i.own_mac {
                let foreign: Vec<Mac> =
                    i.reply_macs.iter().copied().filter(|m| *m != own).collect();
                if !foreign.is_empty() {
                    notes.push(format!(
                        "this node's ARP on {} carries MAC {} instead of the interface's {own} (ARP flux: check arp_ignore/arp_announce)",
                        i.ifname,
                        join(&foreign)
                    ));
                }
            }
            for e in i.own_received.iter().filter(|e| e.from_ifname != i.ifname) {
                notes.push(format!(
                    "{} received {} of this node's own ARP frame(s) for {ip} sent from {} (MAC {}): {} and {} are on one segment",
                    i.ifname, e.count, e.from_ifname, e.mac, e.from_ifname, i.ifname
                ));
            }
            let unanswered: Vec<String> = i
                .requesters
                .iter()
                .filter(|r| r.answered == 0 && i.replies_sent > 0)
                .map(|r| r.ip.to_string())
                .collect();
            if !unanswered.is_empty() {
                notes.push(format!(
                    "on {} this node did not answer {}",
                    i.ifname,
                    unanswered.join(", ")
                ));
            }
        }
        for (mac, n) in probes {
            notes.push(format!(
                "{mac} probed for {ip} {n} time(s) (RFC 5227): a host is about to use {ip} itself?"
            ));
        }
        notes
    }
}

fn join(macs: &[Mac]) -> String {
    macs.iter().fold(String::new(), |mut s, m| {
        if !s.is_empty() {
            s.push_str(", ");
        }
        let _ = write!(s, "{m}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 240);
    const NODE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
    const NODE_ETH1: [u8; 6] = [0x02, 0, 0, 0, 1, 0x05];
    const OTHER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x06];
    const THIRD: [u8; 6] = [0x02, 0, 0, 0, 0, 0x07];
    const CLIENT: [u8; 6] = [0x0a, 0, 0, 0, 0, 0x01];
    const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 10, 1);
    const BCAST: [u8; 6] = [0xff; 6];
    const SEC: u64 = 1_000_000_000;

    fn own() -> Vec<(String, [u8; 6])> {
        vec![("eth0".into(), NODE), ("eth1".into(), NODE_ETH1)]
    }

    fn request(ts_ns: u64, from_ip: Ipv4Addr, from: [u8; 6]) -> ArpObservation {
        ArpObservation {
            ts_ns,
            dir: Dir::Rx,
            ifname: "eth0".into(),
            op: OP_REQUEST,
            sha: from,
            spa: from_ip,
            tha: [0; 6],
            tpa: LB,
            eth_src: from,
            eth_dst: BCAST,
        }
    }

    fn reply(ts_ns: u64, dir: Dir, from: [u8; 6]) -> ArpObservation {
        ArpObservation {
            ts_ns,
            dir,
            ifname: "eth0".into(),
            op: OP_REPLY,
            sha: from,
            spa: LB,
            tha: CLIENT,
            tpa: CLIENT_IP,
            eth_src: from,
            eth_dst: CLIENT,
        }
    }

    fn gratuitous(ts_ns: u64, dir: Dir, from: [u8; 6]) -> ArpObservation {
        ArpObservation {
            op: OP_REQUEST,
            tpa: LB,
            tha: [0; 6],
            eth_dst: BCAST,
            ..reply(ts_ns, dir, from)
        }
    }

    #[test]
    fn answered_by_this_node() {
        let obs = [
            request(SEC, CLIENT_IP, CLIENT),
            reply(SEC + 1000, Dir::Tx, NODE),
            request(2 * SEC, CLIENT_IP, CLIENT),
            // Own MAC seen coming back in counts as this node too.
            reply(2 * SEC + 1000, Dir::Rx, NODE),
            // Unrelated ARP is ignored.
            ArpObservation {
                tpa: Ipv4Addr::new(192, 168, 10, 2),
                ..request(3 * SEC, CLIENT_IP, CLIENT)
            },
        ];
        let r = analyze(LB, &own(), &obs);
        assert_eq!(
            r.verdict,
            ArpVerdict::AnsweredByThisNode {
                mac: Mac(NODE),
                ifname: "eth0".into()
            }
        );
        let i = &r.interfaces[0];
        // The reply received back was not sent on eth0 a second time.
        assert_eq!((i.requests_received, i.replies_sent), (2, 1));
        assert_eq!(i.reply_macs, [Mac(NODE)]);
        assert_eq!(i.own_received[0].count, 1);
        assert_eq!(i.requesters.len(), 1);
        assert_eq!((i.requesters[0].requests, i.requesters[0].answered), (2, 1));
        assert_eq!(
            r.text,
            "this node answers ARP for 192.168.10.240 from MAC 02:00:00:00:00:05 on eth0 (1 replies to 2 requests)"
        );
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["verdict"]["verdict"], "answered_by_this_node");
        assert_eq!(v["verdict"]["mac"], "02:00:00:00:00:05");
    }

    #[test]
    fn not_answered() {
        let other_ip = Ipv4Addr::new(192, 168, 10, 7);
        let obs = [
            request(SEC, CLIENT_IP, CLIENT),
            request(2 * SEC, CLIENT_IP, CLIENT),
            request(3 * SEC, other_ip, THIRD),
        ];
        let r = analyze(LB, &own(), &obs);
        assert_eq!(
            r.verdict,
            ArpVerdict::NotAnswered {
                requests: 3,
                requesters: vec![
                    Host {
                        ip: CLIENT_IP,
                        mac: Mac(CLIENT)
                    },
                    Host {
                        ip: other_ip,
                        mac: Mac(THIRD)
                    }
                ]
            }
        );
        assert!(
            r.text
                .contains("this node is not announcing 192.168.10.240")
        );
        assert!(r.text.contains("kubectl describe svc"));
        assert_eq!(r.interfaces[0].requesters[0].requests, 2);
    }

    #[test]
    fn answered_elsewhere() {
        // The leader's gratuitous ARP is broadcast; its replies are not seen.
        let obs = [
            gratuitous(SEC, Dir::Rx, OTHER),
            request(2 * SEC, CLIENT_IP, CLIENT),
        ];
        let r = analyze(LB, &own(), &obs);
        assert_eq!(
            r.verdict,
            ArpVerdict::AnsweredElsewhere {
                macs: vec![Mac(OTHER)]
            }
        );
        let c = &r.interfaces[0].others[0];
        assert_eq!(
            (c.mac, c.count, c.gratuitous, c.first_ts_ns),
            (Mac(OTHER), 1, 1, SEC)
        );
        assert!(r.text.contains("another node is the leader"));
    }

    #[test]
    fn conflict_between_this_node_and_another() {
        let obs = [
            request(SEC, CLIENT_IP, CLIENT),
            reply(SEC + 10, Dir::Tx, NODE),
            reply(SEC + 20, Dir::Rx, OTHER),
        ];
        let r = analyze(LB, &own(), &obs);
        assert_eq!(
            r.verdict,
            ArpVerdict::Conflict {
                macs: vec![Mac(NODE), Mac(OTHER)],
                this_node: Some(Mac(NODE))
            }
        );
        assert!(
            r.text
                .contains("02:00:00:00:00:05 (this node) and 02:00:00:00:00:06")
        );
        assert!(r.text.contains("split brain"));
    }

    #[test]
    fn conflict_between_two_other_macs() {
        let obs = [
            gratuitous(SEC, Dir::Rx, OTHER),
            gratuitous(5 * SEC, Dir::Rx, THIRD),
            gratuitous(6 * SEC, Dir::Rx, OTHER),
        ];
        let r = analyze(LB, &own(), &obs);
        assert_eq!(
            r.verdict,
            ArpVerdict::Conflict {
                macs: vec![Mac(OTHER), Mac(THIRD)],
                this_node: None
            }
        );
    }

    #[test]
    fn handover_is_not_a_conflict() {
        // This node answered, then another node took over 30 s later.
        let obs = [
            reply(SEC, Dir::Tx, NODE),
            gratuitous(31 * SEC, Dir::Rx, OTHER),
            gratuitous(32 * SEC, Dir::Rx, OTHER),
        ];
        let r = analyze(LB, &own(), &obs);
        assert_eq!(
            r.verdict,
            ArpVerdict::AnsweredElsewhere {
                macs: vec![Mac(OTHER)]
            }
        );
        assert_eq!(r.earlier_claimants, [Mac(NODE)]);
        assert!(r.notes[0].contains("moved during the capture"));
    }

    #[test]
    fn no_arp_seen() {
        let unrelated = ArpObservation {
            tpa: Ipv4Addr::new(192, 168, 10, 3),
            ..request(SEC, CLIENT_IP, CLIENT)
        };
        let r = analyze(LB, &own(), &[unrelated]);
        assert_eq!(r.verdict, ArpVerdict::NoArpSeen);
        assert!(r.interfaces.is_empty());
        assert_eq!(analyze::<&str>(LB, &[], &[]).verdict, ArpVerdict::NoArpSeen);
    }

    #[test]
    fn lb_ip_as_sender_and_arp_flux_are_noted() {
        // This node asks for the gateway from the LB IP, with eth1's MAC on eth0.
        let obs = [ArpObservation {
            tpa: Ipv4Addr::new(192, 168, 10, 1),
            ..gratuitous(SEC, Dir::Tx, NODE_ETH1)
        }];
        let r = analyze(LB, &own(), &obs);
        assert_eq!(
            r.verdict,
            ArpVerdict::AnsweredByThisNode {
                mac: Mac(NODE_ETH1),
                ifname: "eth0".into()
            }
        );
        assert_eq!(r.interfaces[0].requests_from_lb_ip_sent, 1);
        assert!(r.notes.iter().any(|n| n.contains("strictARP")));
        assert!(r.notes.iter().any(|n| n.contains("ARP flux")));
    }

    fn on(ifname: &str, o: ArpObservation) -> ArpObservation {
        ArpObservation {
            ifname: ifname.into(),
            ..o
        }
    }

    #[test]
    fn two_interfaces_on_one_segment_answering_is_arp_flux() {
        // A client's request reaches eth0 and eth1; both answer with their MAC.
        let obs = [
            request(SEC, CLIENT_IP, CLIENT),
            on("eth1", request(SEC, CLIENT_IP, CLIENT)),
            reply(SEC + 10, Dir::Tx, NODE),
            on("eth1", reply(SEC + 20, Dir::Tx, NODE_ETH1)),
        ];
        let r = analyze(LB, &own(), &obs);
        let ArpVerdict::ArpFlux { answers } = &r.verdict else {
            panic!("{:?}", r.verdict)
        };
        let got: Vec<(&str, Mac)> = answers.iter().map(|a| (a.ifname.as_str(), a.mac)).collect();
        assert_eq!(got, [("eth0", Mac(NODE)), ("eth1", Mac(NODE_ETH1))]);
        assert!(
            r.text.contains("eth0 (MAC 02:00:00:00:00:05")
                && r.text.contains("eth1 (MAC 02:00:00:00:01:05")
                && r.text.contains("ARP flux"),
            "{}",
            r.text
        );
        // This node is one claimant: never a conflict with itself.
        assert!(!r.text.contains("split brain"));
    }

    #[test]
    fn two_macs_on_separate_segments_are_not_flux() {
        let other_ip = Ipv4Addr::new(192, 168, 20, 1);
        let obs = [
            request(SEC, CLIENT_IP, CLIENT),
            reply(SEC + 10, Dir::Tx, NODE),
            on("eth1", request(SEC, other_ip, THIRD)),
            on("eth1", reply(SEC + 20, Dir::Tx, NODE_ETH1)),
        ];
        let r = analyze(LB, &own(), &obs);
        assert!(
            matches!(r.verdict, ArpVerdict::AnsweredByThisNode { .. }),
            "{:?}",
            r.verdict
        );
    }

    #[test]
    fn own_frame_received_on_another_interface_is_not_sent_there() {
        // eth0 announces the IP; the broadcast comes in on eth1 too.
        let obs = [
            gratuitous(SEC, Dir::Tx, NODE),
            on("eth1", gratuitous(SEC + 5, Dir::Rx, NODE)),
        ];
        let r = analyze(LB, &own(), &obs);
        assert_eq!(
            r.verdict,
            ArpVerdict::AnsweredByThisNode {
                mac: Mac(NODE),
                ifname: "eth0".into()
            }
        );
        let eth1 = r.interfaces.iter().find(|i| i.ifname == "eth1").unwrap();
        assert_eq!(
            (
                eth1.gratuitous_sent,
                eth1.reply_macs.len(),
                eth1.others.len()
            ),
            (0, 0, 0)
        );
        assert_eq!(eth1.own_received[0].from_ifname, "eth0");
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("eth1 received 1 of this node's own")
                    && n.contains("sent from eth0")),
            "{:?}",
            r.notes
        );
        assert!(
            !r.notes.iter().any(|n| n.contains("carries MAC")),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn a_mac_this_node_sends_from_is_never_another_host() {
        // The speaker answers from a MAC not among the interfaces' own; the
        // same MAC comes back in within the second.
        const SPEAKER: [u8; 6] = [0x02, 0, 0, 0, 9, 9];
        let obs = [
            reply(SEC, Dir::Tx, SPEAKER),
            gratuitous(SEC + 100, Dir::Rx, SPEAKER),
        ];
        let r = analyze(LB, &own(), &obs);
        assert_eq!(
            r.verdict,
            ArpVerdict::AnsweredByThisNode {
                mac: Mac(SPEAKER),
                ifname: "eth0".into()
            }
        );
        // A real other claimant is still a conflict of two, each named.
        let obs = [
            reply(SEC, Dir::Tx, SPEAKER),
            gratuitous(SEC + 100, Dir::Rx, SPEAKER),
            gratuitous(SEC + 200, Dir::Rx, OTHER),
        ];
        let r = analyze(LB, &own(), &obs);
        assert_eq!(
            r.verdict,
            ArpVerdict::Conflict {
                macs: vec![Mac(SPEAKER), Mac(OTHER)],
                this_node: Some(Mac(SPEAKER))
            }
        );
        assert!(
            r.text
                .starts_with("2 MACs answer or announce 192.168.10.240 at the same time: 02:00:00:00:09:09 (this node) and 02:00:00:00:00:06"),
            "{}",
            r.text
        );
    }

    #[test]
    fn probes_and_own_requests() {
        let obs = [
            request(SEC, Ipv4Addr::UNSPECIFIED, THIRD),
            ArpObservation {
                dir: Dir::Tx,
                ..request(2 * SEC, Ipv4Addr::new(192, 168, 10, 5), NODE)
            },
        ];
        let r = analyze(LB, &own(), &obs);
        assert_eq!(r.interfaces[0].requests_sent, 1);
        assert_eq!(r.interfaces[0].requests_received, 1);
        assert!(r.notes.iter().any(|n| n.contains("RFC 5227")));
    }
}
