//! A tracing session: what lbpath knows about the node (interfaces, kube-proxy
//! rules, netfilter plan, reason names) and the live state built from kernel
//! records. `watch` prints its outputs as they come; `diagnose` collects them.

use std::{
    collections::VecDeque,
    net::IpAddr,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::Result;
use tracer_common::{DIR_REQUEST, Event, Kind, Tuple};

use crate::{
    arp::ArpObservation,
    assembler::{Assembler, Done, FlowKey, Timing, monotonic_ns},
    drops::DropNames,
    events::{Record, ifname},
    kubeproxy::{AddressKind, BaseChain, NodeRules, ServicePort},
    loader::{Stats, Tracer},
    model::{Counters, FlowReport, HopKind, Verdict, VerdictKind},
    netinfo::{NetInfo, rp_filter},
    nfplan::{NfPlan, Occupant, builtin_occupants},
    path::{self, Context, RuleHit},
    pcap::PcapWriter,
    rules::RuleRead,
    tally::{Snapshot, Tally, bgp_peers},
    targets::Targets,
    wire::{self, BgpTracker},
};

/// User filters applied to flows (the kernel already filters port/proto).
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub client: Option<ipnet::IpNet>,
    pub iface: Option<String>,
}

pub enum Output {
    Flow(Box<FlowReport>),
    /// Events the kernel side could not hand over (ring buffer full) since
    /// the last such line, and in all.
    Lost {
        new: u64,
        total: u64,
    },
    /// New connections counted but not traced, and why, since the last
    /// such line and in all.
    NotTraced {
        why: NotTraced,
        new: u64,
        total: u64,
    },
    /// An ARP line for the LB IP (watch prints it right away).
    Arp(String),
    /// A BGP session change or an UPDATE about the LB IP.
    Bgp(String),
    /// The node's rules became incomplete (why), or complete again (None).
    Rules {
        degraded: Option<String>,
    },
}

pub struct Engine {
    pub targets: Targets,
    pub net: NetInfo,
    pub plan: NfPlan,
    pub drops: Rc<DropNames>,
    pub rules: NodeRules,
    pub services: Vec<ServicePort>,
    pub filters: Filters,
    pub netfilter_links: bool,
    node_netns: u32,
    assembler: Assembler,
    /// Flows dropped by netfilter, waiting for the next rule read to pin
    /// the drop on the rule whose counter moved (bounded).
    waiting: VecDeque<Waiting>,
    /// Set when a flow waits: the session asks the rule watcher for a read.
    pub wants_rules: bool,
    pub arp: Vec<ArpObservation>,
    pub bgp: BgpTracker,
    /// The most recent reports (bounded), for diagnose.
    pub recent: VecDeque<FlowReport>,
    /// What was reported since the start (flows per verdict, the metrics).
    pub tally: Tally,
    pub filtered_out: u64,
    losses: LossLog,
    /// New connections the kernel side left untraced: lbpath was behind,
    /// or over the trace rate.
    shed: u64,
    shed_news: News,
    over_rate: u64,
    over_rate_news: News,
    /// What each reported connection was reported as (bounded): a later
    /// drop of it is shown as an update only when it tells something new.
    reported: foldhash::HashMap<FlowKey, Outcome>,
    reported_order: VecDeque<FlowKey>,
    /// When every hook was in place (CLOCK_MONOTONIC ns): flows that began
    /// earlier were partly unobserved.
    attached_ns: u64,
    /// conntrack's counters when watching began: drops are told by what
    /// moved since.
    ct_base: Option<crate::conntrack::CtFigures>,
    /// `watch --write`: each reported flow's packets go to a pcapng file.
    pub pcap: Option<PcapWriter>,
}

/// A TCP flow whose first request packet seen carries no SYN while
/// conntrack already holds an established entry for it: its connection
/// began before lbpath was watching. (A stray packet conntrack knows
/// nothing of, INVALID, is no such thing.)
fn began_unseen(evs: &[Event]) -> bool {
    const IPPROTO_TCP: u8 = 6;
    const TCP_SYN: u8 = 0x02;
    // Event::ct is enum ip_conntrack_info + 1.
    const CT_ESTABLISHED: u8 = 1;
    let Some(first) = evs
        .iter()
        .filter(|e| e.dir == DIR_REQUEST && e.flow.proto == IPPROTO_TCP)
        .min_by_key(|e| e.ts)
    else {
        return false;
    };
    first.tcp_flags & TCP_SYN == 0
        && evs
            .iter()
            .filter(|e| e.dir == DIR_REQUEST && e.seq == first.seq && e.ct != 0)
            .min_by_key(|e| e.ts)
            .is_some_and(|e| e.ct == CT_ESTABLISHED)
}

/// A report's outcome for comparing an update with it: the verdict and,
/// for drops, why and at which hook. An untraced drop's place is less
/// precise than a traced one's: its place is not compared, its hook only
/// when known.
#[derive(Clone)]
struct Outcome {
    kind: VerdictKind,
    drop: Option<(String, Option<String>)>,
}

impl Outcome {
    /// Whether `later` tells nothing `self` did not.
    fn covers(&self, later: &Outcome) -> bool {
        self.kind == later.kind
            && match (&self.drop, &later.drop) {
                (None, None) => true,
                (Some((r1, h1)), Some((r2, h2))) => {
                    r1 == r2 && (h1.is_none() || h2.is_none() || h1 == h2)
                }
                _ => false,
            }
    }
}

impl Outcome {
    fn of(r: &FlowReport) -> Self {
        Self {
            kind: r.verdict.kind,
            drop: r.hops.iter().find_map(|h| match &h.kind {
                HopKind::Dropped { reason, hook, .. } => Some((reason.clone(), hook.clone())),
                _ => None,
            }),
        }
    }
}

/// Reported connections remembered for updates.
const REPORTED: usize = 16_384;

struct Waiting {
    done: Done,
    since: Instant,
}

/// Lost-event totals over time (CLOCK_MONOTONIC ns, the events' clock),
/// one mark per change, bounded.
#[derive(Default)]
struct LossLog {
    marks: VecDeque<(u64, u64)>,
    total: u64,
    /// The total at the oldest mark dropped by the bound.
    floor: u64,
    news: News,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotTraced {
    /// lbpath was behind: the ring buffer three quarters full.
    Behind,
    /// More new connections than `--max-new-flows` a second.
    OverRate,
}

/// A growing total told at most once a second: (new since told, total).
#[derive(Default)]
struct News {
    shown: u64,
    last_shown: Option<Instant>,
}

impl News {
    fn of(&mut self, total: u64) -> Option<(u64, u64)> {
        if total == self.shown
            || self
                .last_shown
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        let new = total - self.shown;
        self.shown = total;
        self.last_shown = Some(Instant::now());
        Some((new, total))
    }
}

impl LossLog {
    fn note(&mut self, now: u64, total: u64) {
        if total > self.total {
            self.total = total;
            if self.marks.len() >= 4096
                && let Some((_, t)) = self.marks.pop_front()
            {
                self.floor = t;
            }
            self.marks.push_back((now, total));
        }
    }

    /// Events lost after `t`.
    fn since(&self, t: u64) -> u64 {
        let base = self
            .marks
            .iter()
            .rev()
            .find(|(ts, _)| *ts <= t)
            .map(|(_, n)| *n)
            .unwrap_or(self.floor);
        self.total - base
    }

    /// A line's worth of news, at most once a second.
    fn news(&mut self) -> Option<Output> {
        let (new, total) = self.news.of(self.total)?;
        Some(Output::Lost { new, total })
    }
}

/// Reports kept for diagnose's evidence; totals are counted, not kept.
const RECENT: usize = 1000;
/// Flows that may wait for a rule read at once; more are reported unattributed.
const MAX_WAITING: usize = 256;
/// How long a flow waits for a rule read.
const WAIT_FOR_RULES: Duration = Duration::from_secs(3);
/// ARP observations kept as evidence.
const MAX_ARP: usize = 10_000;

/// Netfilter occupants: the node's base chains (nftables, iptables-nft,
/// legacy tables), plus the kernel's built-in registrations where no chain
/// already sits at that hook and priority.
pub fn occupants<'a>(chains: impl IntoIterator<Item = &'a BaseChain>) -> Vec<Occupant> {
    let mut occ = Vec::new();
    for c in chains {
        let Some(hook) = hook_number(&c.hook) else {
            continue;
        };
        if !matches!(c.family.as_str(), "ip" | "inet" | "ip6") {
            continue;
        }
        occ.push(Occupant {
            hook,
            priority: c.priority,
            name: format!("{} {} chain {}", c.family, c.table, c.chain),
            chain: Some((format!("{} {}", c.family, c.table), c.chain.clone())),
        });
    }
    for b in builtin_occupants() {
        if !occ
            .iter()
            .any(|o| o.hook == b.hook && o.priority == b.priority)
        {
            occ.push(b);
        }
    }
    occ
}

/// `enum nf_inet_hooks` for a hook as rule listings name it.
fn hook_number(name: &str) -> Option<u8> {
    Some(match name {
        "prerouting" => 0,
        "input" => 1,
        "forward" => 2,
        "output" => 3,
        "postrouting" => 4,
        _ => return None,
    })
}

/// kube-proxy's service ports for the watched addresses.
pub fn services_for(rules: &NodeRules, targets: &Targets) -> Vec<ServicePort> {
    rules
        .rulesets
        .iter()
        .flat_map(|rs| &rs.services)
        .filter(|s| s.kind != AddressKind::NodePort && targets.contains(s.address))
        .cloned()
        .collect()
}

/// What a session knows about the node before any packet.
pub struct Node {
    pub net: NetInfo,
    pub plan: NfPlan,
    pub drops: DropNames,
    pub rules: NodeRules,
    /// Inode of the node's network namespace.
    pub netns: u32,
    /// Whether netfilter hooks are observed directly.
    pub netfilter_links: bool,
    /// When every hook was in place (CLOCK_MONOTONIC ns; the rules may
    /// have been read after).
    pub attached_ns: u64,
}

impl Engine {
    pub fn new(mut targets: Targets, node: Node, filters: Filters, timing: Timing) -> Self {
        let Node {
            net,
            plan,
            drops,
            rules,
            netns: node_netns,
            netfilter_links,
            attached_ns,
        } = node;
        targets.refresh(&rules);
        let services = services_for(&rules, &targets);
        let drops = Rc::new(drops);
        Self {
            targets,
            net,
            plan,
            drops: drops.clone(),
            rules,
            services,
            filters,
            netfilter_links,
            node_netns,
            assembler: Assembler::new(timing, node_netns, drops),
            waiting: VecDeque::new(),
            wants_rules: false,
            arp: Vec::new(),
            bgp: BgpTracker::default(),
            recent: VecDeque::new(),
            losses: LossLog::default(),
            shed: 0,
            shed_news: News::default(),
            over_rate: 0,
            over_rate_news: News::default(),
            tally: Tally::default(),
            filtered_out: 0,
            reported: foldhash::HashMap::default(),
            reported_order: VecDeque::new(),
            attached_ns,
            ct_base: crate::conntrack::CtFigures::read(),
            pcap: None,
        }
    }

    pub fn kube_proxy_found(&self) -> bool {
        self.rules.rulesets.iter().any(|r| !r.services.is_empty())
    }

    /// Takes one ring-buffer record; returns what should be shown now.
    pub fn record(&mut self, rec: Record, tracer: &Tracer) -> Vec<Output> {
        match rec {
            Record::Path(e, cap) => {
                if let (Some(p), Some(cap)) = (self.pcap.as_mut(), cap) {
                    p.stash(&e, cap);
                }
                self.path_event(e, tracer)
            }
            Record::Arp(a) => {
                let obs = wire::arp_observation(&a);
                let line = wire::arp_line(&obs, &self.targets, &self.net);
                if obs.op == crate::arp::OP_REPLY && self.targets.contains(IpAddr::V4(obs.spa)) {
                    self.tally
                        .arp_answer(IpAddr::V4(obs.spa), &crate::model::mac(obs.sha));
                }
                // Bounded: a few thousand ARPs are plenty of evidence.
                if self.arp.len() < MAX_ARP {
                    self.arp.push(obs);
                }
                vec![Output::Arp(line)]
            }
            Record::Seg(s) => self
                .bgp
                .push(&s, &self.targets)
                .into_iter()
                .map(Output::Bgp)
                .collect(),
        }
    }

    fn path_event(&mut self, e: Event, tracer: &Tracer) -> Vec<Output> {
        self.assembler
            .push(e)
            .into_iter()
            .filter_map(|d| self.report(d, tracer))
            .map(|r| Output::Flow(Box::new(r)))
            .collect()
    }

    /// Flows that became ready to report, and flows that waited for a rule
    /// read long enough (reported without the rule).
    pub fn tick(&mut self, tracer: &Tracer) -> Vec<Output> {
        let ready = self.assembler.ready(monotonic_ns());
        let mut out: Vec<Output> = ready
            .into_iter()
            .filter_map(|d| self.report(d, tracer))
            .map(|r| Output::Flow(Box::new(r)))
            .collect();
        while self
            .waiting
            .front()
            .is_some_and(|w| w.since.elapsed() >= WAIT_FOR_RULES)
        {
            let w = self.waiting.pop_front().expect("checked");
            out.extend(self.complete(w.done, tracer, &[]));
        }
        out
    }

    /// Everything pending (on exit), waiting flows without their rule.
    pub fn finish(&mut self, tracer: &Tracer) -> Vec<Output> {
        let rest = self.assembler.drain();
        let mut out: Vec<Output> = rest
            .into_iter()
            .filter_map(|d| self.report(d, tracer))
            .map(|r| Output::Flow(Box::new(r)))
            .collect();
        while let Some(w) = self.waiting.pop_front() {
            out.extend(self.complete(w.done, tracer, &[]));
        }
        out
    }

    /// The kernel side's counters, read every tick: flows traced while
    /// events were lost are reported as incomplete, and a line says so while
    /// it happens, as for new connections counted but not traced.
    pub fn note_losses(&mut self, stats: &Stats) -> Vec<Output> {
        self.losses.note(monotonic_ns(), stats.lost_events);
        self.shed = stats.shed_flows;
        self.over_rate = stats.over_rate_flows;
        let not_traced = |why, news: Option<(u64, u64)>| {
            news.map(|(new, total)| Output::NotTraced { why, new, total })
        };
        let behind = not_traced(NotTraced::Behind, self.shed_news.of(self.shed));
        let rate = not_traced(NotTraced::OverRate, self.over_rate_news.of(self.over_rate));
        self.losses
            .news()
            .into_iter()
            .chain(behind)
            .chain(rate)
            .collect()
    }

    pub fn events_lost(&self) -> u64 {
        self.losses.total
    }

    /// A new read of the node's rules: the Services and (with `--all`) the
    /// watched IPs follow it; flows that waited for it get the rules whose
    /// counters moved. Returns the flows now reported, and whether the
    /// watched addresses changed.
    pub fn rules_read(&mut self, read: RuleRead, tracer: &Tracer) -> (Vec<Output>, bool) {
        let hits: Vec<RuleHit> = read
            .moved
            .iter()
            .map(|(r, n)| RuleHit {
                table: format!("{} {}", r.family, r.table),
                hook: read
                    .rules
                    .rulesets
                    .iter()
                    .flat_map(|rs| &rs.base_chains)
                    .find(|c| c.family == r.family && c.table == r.table && c.chain == r.chain)
                    .and_then(|c| hook_number(&c.hook)),
                chain: r.chain.clone(),
                rule: r.rule.clone(),
                packets: *n,
            })
            .collect();
        let mut out = Vec::new();
        let degraded = read.rules.degraded_reason();
        if degraded != self.rules.degraded_reason() {
            out.push(Output::Rules { degraded });
        }
        // Taken over rather than copied when nothing else holds it: a big
        // ruleset is megabytes, and the old one is still here.
        self.rules = std::sync::Arc::try_unwrap(read.rules).unwrap_or_else(|a| (*a).clone());
        let targets_changed = self.targets.refresh(&self.rules);
        self.services = services_for(&self.rules, &self.targets);
        // Only flows whose drop the read can have counted.
        while self
            .waiting
            .front()
            .is_some_and(|w| w.since <= read.started)
        {
            let w = self.waiting.pop_front().expect("checked");
            out.extend(self.complete(w.done, tracer, &hits));
        }
        self.wants_rules = !self.waiting.is_empty();
        (out, targets_changed)
    }

    pub fn dropped_events(&self) -> u64 {
        self.assembler.dropped_events
    }

    /// What `--metrics` serves, as of now.
    pub fn snapshot(&self) -> Snapshot {
        let (bgp, bgp_peers_left_out) = bgp_peers(&self.bgp);
        Snapshot {
            tally: self.tally.clone(),
            bgp,
            bgp_peers_left_out,
            events_lost: self.losses.total,
            flows_shed: self.shed,
            flows_over_rate: self.over_rate,
            events_cut: self.assembler.dropped_events,
        }
    }

    fn passes_filters(&self, flow: &Tuple, evs: &[Event]) -> bool {
        if let Some(net) = self.filters.client
            && !net.contains(&crate::events::ip(&flow.saddr, flow.family))
        {
            return false;
        }
        if let Some(want) = &self.filters.iface {
            let arrived = evs
                .iter()
                .filter(|e| e.kind == Kind::Arrive as u8 && e.dir == 0)
                .min_by_key(|e| e.ts)
                .map(|e| ifname(&e.ifname));
            if arrived.as_deref() != Some(want.as_str()) {
                return false;
            }
        }
        true
    }

    fn report(&mut self, done: Done, tracer: &Tracer) -> Option<FlowReport> {
        let evs = &done.events;
        let flow = evs.first()?.flow;
        if tracing::enabled!(tracing::Level::DEBUG) {
            let mut kinds = std::collections::BTreeMap::new();
            for e in evs {
                *kinds
                    .entry(format!("{:?}", Kind::from_u8(e.kind)))
                    .or_insert(0) += 1;
            }
            tracing::debug!(
                "flow {}: {} events {kinds:?}",
                crate::events::src(&flow),
                evs.len()
            );
        }
        if !self.passes_filters(&flow, evs) {
            self.filtered_out += 1;
            return None;
        }
        let nf_dropped = evs
            .iter()
            .any(|e| e.kind == Kind::Drop as u8 && self.drops.reason(e) == "NETFILTER_DROP");
        if nf_dropped && self.waiting.len() < MAX_WAITING {
            // Reported once a rule read tells which rule dropped it.
            self.waiting.push_back(Waiting {
                done,
                since: Instant::now(),
            });
            self.wants_rules = true;
            return None;
        }
        self.assemble(&done, tracer, &[])
    }

    fn complete(&mut self, done: Done, tracer: &Tracer, hits: &[RuleHit]) -> Option<Output> {
        self.assemble(&done, tracer, hits)
            .map(|r| Output::Flow(Box::new(r)))
    }

    fn assemble(&mut self, done: &Done, tracer: &Tracer, hits: &[RuleHit]) -> Option<FlowReport> {
        let evs = &done.events;
        let key = FlowKey::of(evs.first()?);
        let first_ts = evs.iter().map(|e| e.ts).min().unwrap_or(0);
        let counters = tracer.counters(&key.flow, key.conn).map(|c| Counters {
            request_packets: c.req_pkts,
            request_bytes: c.req_bytes,
            reply_packets: c.rep_pkts,
            reply_bytes: c.rep_bytes,
            drops: c.drops,
        });
        let rp = |iface: &str| rp_filter(iface);
        let ct_base = self.ct_base;
        let ct = move || {
            let now = crate::conntrack::CtFigures::read()?;
            Some(ct_base.map_or(now, |b| now.since(&b)))
        };
        let degraded = self.rules.degraded_reason();
        let ctx = Context {
            node_netns: self.node_netns,
            net: &self.net,
            plan: &self.plan,
            drops: &self.drops,
            services: &self.services,
            kube_proxy_found: self.kube_proxy_found(),
            rules_degraded: degraded.as_deref(),
            rule_hits: hits,
            rp_filter: &rp,
            conntrack: &ct,
            netfilter_links: self.netfilter_links,
            ipvs: &self.rules.ipvs,
        };
        let mut r = path::assemble(evs, &ctx, counters)?;
        r.flow.conn = key.conn;
        // Events of this flow may be missing: no confident verdict.
        let lost = self.losses.since(first_ts.saturating_sub(100_000_000));
        if lost > 0 || done.cut > 0 {
            mark_incomplete(
                &mut r,
                &Missing::Events {
                    lost,
                    cut: done.cut,
                },
            );
        } else if done.early {
            mark_incomplete(&mut r, &Missing::Early);
        } else if !done.update && key.conn < self.attached_ns {
            mark_incomplete(&mut r, &Missing::BeforeAttach);
        } else if !done.update && began_unseen(evs) {
            mark_incomplete(&mut r, &Missing::MidConnection);
        }
        if let Some(p) = self.pcap.as_mut() {
            p.flow(evs, &r);
        }
        if done.update {
            return self.update(key, r);
        }
        self.remember(key, Outcome::of(&r));
        self.tally.report(&r);
        if self.recent.len() >= RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(r.clone());
        Some(r)
    }

    /// Later drops of a reported connection: shown when they tell
    /// something its report did not (a drop elsewhere, or after an answer),
    /// folded into the report diagnose keeps; never a flow of its own.
    fn update(&mut self, key: FlowKey, mut r: FlowReport) -> Option<FlowReport> {
        let outcome = Outcome::of(&r);
        if self.reported.get(&key).is_some_and(|o| o.covers(&outcome)) {
            return None;
        }
        self.remember(key, outcome);
        r.update = true;
        self.tally.report(&r);
        if let Some(earlier) = self.recent.iter_mut().rev().find(|e| e.flow == r.flow) {
            earlier.hops.extend(r.hops.iter().cloned());
            // A connection that worked and then lost packets takes the new
            // verdict; one that already failed keeps why it failed (what
            // follows a refusal or a drop is its aftermath).
            if earlier.verdict.kind == VerdictKind::Answered {
                earlier.verdict = r.verdict.clone();
            }
            earlier.counters = r.counters;
        }
        Some(r)
    }

    fn remember(&mut self, key: FlowKey, outcome: Outcome) {
        if self.reported.insert(key, outcome).is_none() {
            self.reported_order.push_back(key);
            if self.reported_order.len() > REPORTED
                && let Some(old) = self.reported_order.pop_front()
            {
                self.reported.remove(&old);
            }
        }
    }

    /// Re-reads interfaces (new pods) and returns the pod-facing ones.
    pub async fn refresh_net(&mut self) -> Result<Vec<u32>> {
        self.net = NetInfo::read().await?;
        Ok(self.net.pod_ifaces())
    }
}

/// Why part of a flow was not seen.
enum Missing {
    /// Events lost (ring buffer full) or cut (the per-flow bound).
    Events { lost: u64, cut: u64 },
    /// Reported before it settled: too many flows in flight at once.
    Early,
    /// It began before every hook was in place.
    BeforeAttach,
    /// A TCP connection first seen past its SYN: it began before lbpath.
    MidConnection,
}

/// A flow part of which was not seen: what was seen stays, the verdict
/// says it is partial and why.
fn mark_incomplete(r: &mut FlowReport, missing: &Missing) {
    const KEEP_UP: &str = "lbpath could not keep up: trace fewer packets per flow (--packets), narrow the watch (--port, --client, fewer IPs), or look at a quieter moment";
    let (why, hint) = match *missing {
        Missing::Events { lost: 0, cut } => (
            format!("{cut} of its events were left out (per-flow bound)"),
            KEEP_UP,
        ),
        Missing::Events { lost, cut: 0 } => (
            format!("{lost} events were lost while it was traced (ring buffer full)"),
            KEEP_UP,
        ),
        Missing::Events { lost, cut } => (
            format!(
                "{lost} events were lost while it was traced and {cut} of its own were left out"
            ),
            KEEP_UP,
        ),
        Missing::Early => (
            format!(
                "it was reported before it settled (more than {} flows in flight)",
                crate::assembler::MAX_FLOWS
            ),
            KEEP_UP,
        ),
        Missing::MidConnection => (
            "it began before lbpath was watching (its first packet seen is not a SYN), so its setup was not observed"
                .to_string(),
            "open a new connection now that lbpath is watching",
        ),
        Missing::BeforeAttach => (
            "it began while lbpath was still attaching, so its first hops were not all observed"
                .to_string(),
            "send the traffic again now that lbpath is watching",
        ),
    };
    r.notes.push(format!("incomplete: {why}"));
    r.verdict = Verdict {
        kind: VerdictKind::Incomplete,
        summary: format!("incomplete, {why}; as far as seen: {}", r.verdict.summary),
        hint: Some(hint.into()),
    };
}
