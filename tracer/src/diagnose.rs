//! `lbpath diagnose`: static checks, a bounded live watch (traffic, ARP,
//! BGP), and one verdict naming the failing layer, as MetalLB's
//! troubleshooting guide splits it: is the IP announced, does traffic reach
//! the node, does the node get it to a pod that answers.
//!
//! Exit codes: 0 healthy traffic seen, 1 a problem found, 3 no traffic seen
//! in the window, 2 bad input or cannot run.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{IsTerminal, Write},
    net::{IpAddr, SocketAddr},
};

use anyhow::Result;
use serde::Serialize;

use crate::{
    arp::{self, ArpReport, ArpVerdict},
    assembler::Timing,
    bgp::{LbBgpSummary, RouteStatus, SessionState},
    checks::{self, ArpConf, Finding, Level, Sysctls},
    cli::DiagnoseArgs,
    engine::Output,
    hints::Hint,
    model::{Dir, FlowReport, HopKind, VerdictKind},
    render::{self, Style},
    render_wrap::{hanging, wrap_lines},
    session::{FrontEnd, Session, SessionOptions},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// The IP is not announced (no ARP answer, BGP session down / no route).
    NotAnnounced,
    /// Announced, but the traffic does not come to this node.
    NotReachingNode,
    /// Traffic reaches the node and is dropped (or not DNATed) here.
    DroppedOnNode,
    /// DNATed to a pod that refuses or does not answer.
    PodNotAnswering,
    /// Traffic reaches a pod and the answers go back.
    Healthy,
    /// Nothing seen, nothing wrong found.
    NoTraffic,
    /// Traffic seen, but not enough of it (events lost, rules unreadable)
    /// to say whether it worked.
    Inconclusive,
    /// This node answers ARP for the IP from two interfaces on one segment.
    ArpFlux,
    /// kube-proxy IPVS mode without strictARP: this node's kernel answers
    /// ARP for the LB IP on kube-ipvs0, elected or not.
    StrictArpOff,
}

#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    pub layer: Layer,
    pub summary: String,
    pub evidence: Vec<String>,
    pub next_step: Option<String>,
    pub exit_code: u8,
}

/// The MetalLB layers seen on the wire, for the verdict.
pub struct Wire<'a> {
    pub arp: Option<&'a ArpReport>,
    pub bgp: &'a LbBgpSummary,
}

/// What the node's state adds to the verdict.
#[derive(Default)]
pub struct Facts<'a> {
    /// The Service's endpoints as kube-proxy's rules list them.
    pub endpoints: &'a [SocketAddr],
    /// The LB IP is assigned to an interface here (the kernel answers ARP
    /// for it, not the speaker).
    pub lb_local: bool,
    /// ARP sysctls of the uplinks.
    pub arp_conf: &'a [ArpConf],
    /// The LB IP is on kube-ipvs0 (kube-proxy IPVS mode).
    pub on_kube_ipvs0: bool,
}

fn is_problem(k: VerdictKind) -> bool {
    !matches!(
        k,
        VerdictKind::Answered | VerdictKind::Local | VerdictKind::Incomplete
    )
}

/// The verdict from everything gathered, most telling layer first. Pure.
pub fn decide(lb: IpAddr, findings: &[Finding], flows: &[FlowReport], wire: &Wire) -> Diagnosis {
    decide_with(lb, findings, flows, wire, &Facts::default())
}

/// [`decide`], with what the node's state tells.
pub fn decide_with(
    lb: IpAddr,
    findings: &[Finding],
    flows: &[FlowReport],
    wire: &Wire,
    facts: &Facts,
) -> Diagnosis {
    if let Some(d) = split_brain(lb, wire) {
        return d;
    }
    if let Some(d) = arp_flux(lb, wire, flows, facts) {
        return d;
    }
    if let Some(d) = kernel_answers_arp(lb, wire, facts) {
        return d;
    }
    if !flows.is_empty() {
        return from_flows(flows, facts.endpoints);
    }
    let mut evidence = Vec::new();
    if let Some(d) = from_arp(lb, wire, &mut evidence) {
        return d;
    }
    if let Some(d) = from_bgp(wire, &mut evidence) {
        return d;
    }
    if let Some(p) = findings.iter().find(|f| f.level == Level::Problem) {
        return Diagnosis {
            layer: Layer::DroppedOnNode,
            summary: format!("no traffic seen, but {}", p.text),
            evidence,
            next_step: p.next_step.clone(),
            exit_code: 1,
        };
    }
    no_traffic(lb, wire, evidence)
}

/// Split brain on L2 is a problem whatever the traffic does.
fn split_brain(lb: IpAddr, wire: &Wire) -> Option<Diagnosis> {
    let Some(ArpReport {
        verdict: ArpVerdict::Conflict { macs, .. },
        ..
    }) = wire.arp
    else {
        return None;
    };
    let list: Vec<String> = macs.iter().map(|m| m.to_string()).collect();
    Some(Diagnosis {
        layer: Layer::NotAnnounced,
        summary: format!(
            "two or more MACs answer ARP for {lb}: {} (split brain or duplicate IP)",
            list.join(" and ")
        ),
        evidence: wire.arp.map(|a| vec![a.text.clone()]).unwrap_or_default(),
        next_step: Hint::SplitBrain { lb }.text(),
        exit_code: 1,
    })
}

/// This node answering ARP from two interfaces on one segment: clients
/// reach it through either MAC, so traffic comes in by an interface the
/// replies may not leave by (rp_filter, firewalls on the way). A problem
/// whatever the traffic did.
fn arp_flux(lb: IpAddr, wire: &Wire, flows: &[FlowReport], facts: &Facts) -> Option<Diagnosis> {
    let Some(ArpReport {
        verdict: ArpVerdict::ArpFlux { answers },
        text,
        ..
    }) = wire.arp
    else {
        return None;
    };
    let named: Vec<String> = answers
        .iter()
        .map(|a| format!("{} (MAC {})", a.ifname, a.mac))
        .collect();
    let ifaces: Vec<&str> = answers.iter().map(|a| a.ifname.as_str()).collect();
    let mut evidence = vec![text.clone()];
    evidence.extend(
        facts
            .arp_conf
            .iter()
            .filter(|c| ifaces.contains(&c.iface.as_str()))
            .map(ArpConf::describe),
    );
    if let Some(p) = flows
        .iter()
        .filter(|f| is_problem(f.verdict.kind))
        .max_by_key(|f| severity(f.verdict.kind))
    {
        evidence.push(format!(
            "{} → {}: {}",
            p.flow.client, p.flow.lb, p.verdict.summary
        ));
    }
    Some(Diagnosis {
        layer: Layer::ArpFlux,
        summary: format!(
            "this node answers ARP for {lb} from {} on one segment (ARP flux): clients send to whichever MAC they cached last",
            named.join(" and ")
        ),
        evidence,
        next_step: Hint::ArpFlux {
            ifaces: &ifaces,
            speaker: !facts.lb_local,
        }
        .text(),
        exit_code: 1,
    })
}

/// This node answered ARP for an LB IP it holds on kube-ipvs0, from an
/// interface whose sysctls let the kernel answer for addresses of other
/// interfaces (strictARP off): the kernel answers on every node, not only
/// on the one MetalLB elected. A problem whatever the traffic did.
fn kernel_answers_arp(lb: IpAddr, wire: &Wire, facts: &Facts) -> Option<Diagnosis> {
    let Some(ArpReport {
        verdict: ArpVerdict::AnsweredByThisNode { mac, ifname },
        text,
        ..
    }) = wire.arp
    else {
        return None;
    };
    if !facts.on_kube_ipvs0 {
        return None;
    }
    let conf = facts.arp_conf.iter().find(|c| c.iface == *ifname)?;
    if !matches!(conf.ignore(), 0 | 3) {
        return None;
    }
    Some(Diagnosis {
        layer: Layer::StrictArpOff,
        summary: format!(
            "this node's kernel answers ARP for {lb} on {ifname} (MAC {mac}): {lb} is on {} and strictARP is off, so every node in IPVS mode answers for it, not only the one MetalLB elected",
            checks::KUBE_IPVS0
        ),
        evidence: vec![text.clone(), conf.describe()],
        next_step: Hint::StrictArp.text(),
        exit_code: 1,
    })
}

/// How the flows to one endpoint (a DNAT target) went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointFlows {
    pub endpoint: SocketAddr,
    pub flows: u64,
    /// Flows per verdict kind.
    pub verdicts: BTreeMap<VerdictKind, u64>,
    /// The summary of its worst failing flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    #[serde(skip)]
    failure_kind: Option<VerdictKind>,
    #[serde(skip)]
    hint: Option<String>,
}

impl EndpointFlows {
    pub fn failed(&self) -> u64 {
        self.verdicts
            .iter()
            .filter(|(k, _)| is_problem(**k))
            .map(|(_, n)| n)
            .sum()
    }

    fn worst(&self) -> Option<VerdictKind> {
        self.failure_kind
    }

    /// "8 refused", "5 answered, 3 no_answer".
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .verdicts
            .iter()
            .map(|(k, n)| format!("{n} {}", crate::watch::verdict_key(*k)))
            .collect();
        parts.join(", ")
    }
}

/// Flows rolled up by the endpoint they were DNATed to: tells one broken
/// pod among healthy ones from a Service that is down.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rollup {
    /// Every endpoint known (rules) or seen (flows), failing ones first.
    pub endpoints: Vec<EndpointFlows>,
    /// Flows that reached no endpoint (not DNATed, or dropped before).
    pub without_endpoint: u64,
    /// Those of them that failed.
    pub without_endpoint_failed: u64,
}

/// The endpoint a flow was DNATed to, from its request's DNAT hop.
pub fn flow_endpoint(f: &FlowReport) -> Option<SocketAddr> {
    f.hops.iter().find_map(|h| match &h.kind {
        HopKind::Dnat { to, .. } if h.dir == Dir::Request => Some(*to),
        _ => None,
    })
}

/// The rollup of `flows` over `known` endpoints (those without a flow are
/// listed with none). Pure.
pub fn rollup<'a>(flows: impl IntoIterator<Item = &'a FlowReport>, known: &[SocketAddr]) -> Rollup {
    let mut by: BTreeMap<SocketAddr, EndpointFlows> = known
        .iter()
        .map(|e| {
            (
                *e,
                EndpointFlows {
                    endpoint: *e,
                    flows: 0,
                    verdicts: BTreeMap::new(),
                    failure: None,
                    failure_kind: None,
                    hint: None,
                },
            )
        })
        .collect();
    let (mut without, mut without_failed) = (0, 0);
    for f in flows {
        let Some(ep) = flow_endpoint(f) else {
            without += 1;
            without_failed += u64::from(is_problem(f.verdict.kind));
            continue;
        };
        let e = by.entry(ep).or_insert_with(|| EndpointFlows {
            endpoint: ep,
            flows: 0,
            verdicts: BTreeMap::new(),
            failure: None,
            failure_kind: None,
            hint: None,
        });
        e.flows += 1;
        *e.verdicts.entry(f.verdict.kind).or_default() += 1;
        // Keep the worst failure's words (the first of its kind).
        let k = f.verdict.kind;
        if is_problem(k) && e.failure_kind.is_none_or(|w| severity(k) > severity(w)) {
            e.failure_kind = Some(k);
            e.failure = Some(f.verdict.summary.clone());
            e.hint = f.verdict.hint.clone();
        }
    }
    let mut endpoints: Vec<EndpointFlows> = by.into_values().collect();
    endpoints.sort_by_key(|e| (std::cmp::Reverse(e.failed()), e.endpoint));
    Rollup {
        endpoints,
        without_endpoint: without,
        without_endpoint_failed: without_failed,
    }
}

/// Evidence lines: one per endpoint (failing first), then what reached no
/// endpoint, grouped by verdict; bounded, and saying what was left out.
fn evidence(flows: &[FlowReport], r: &Rollup) -> Vec<String> {
    const MAX_LINES: usize = 12;
    let mut out = Vec::new();
    for e in &r.endpoints {
        let line = match (&e.failure, e.flows) {
            (_, 0) => format!("endpoint {}: no flow in the window", e.endpoint),
            (Some(why), n) => format!(
                "endpoint {}: {} of {n} flow{} failed ({}): {why}",
                e.endpoint,
                e.failed(),
                if n == 1 { "" } else { "s" },
                e.describe()
            ),
            (None, n) => format!(
                "endpoint {}: {n} flow{} ({})",
                e.endpoint,
                if n == 1 { "" } else { "s" },
                e.describe()
            ),
        };
        out.push(line);
    }
    // Flows without an endpoint, grouped by what happened to them.
    let mut groups: Vec<(String, u64)> = Vec::new();
    for f in flows.iter().filter(|f| flow_endpoint(f).is_none()) {
        let text = format!("{}: {}", f.flow.lb, f.verdict.summary);
        match groups.iter_mut().find(|(t, _)| *t == text) {
            Some(g) => g.1 += 1,
            None => groups.push((text, 1)),
        }
    }
    for (text, n) in groups {
        out.push(format!(
            "{n} flow{} to {text}",
            if n == 1 { "" } else { "s" }
        ));
    }
    if out.len() > MAX_LINES {
        let more = out.len() - MAX_LINES;
        out.truncate(MAX_LINES);
        out.push(format!(
            "… and {more} more line(s) of evidence (see the flows)"
        ));
    }
    out
}

/// Traffic was seen: the worst flow decides, rolled up by endpoint so one
/// failing endpoint among answering ones reads as what it is.
fn from_flows(flows: &[FlowReport], known: &[SocketAddr]) -> Diagnosis {
    let roll = rollup(flows, known);
    let evidence = evidence(flows, &roll);
    let failed = flows.iter().filter(|f| is_problem(f.verdict.kind)).count();
    let total = flows.len();
    let of_flows = format!(
        "{failed} of {total} flow{} failed",
        if total == 1 { "" } else { "s" }
    );
    let problem = flows
        .iter()
        .filter(|f| is_problem(f.verdict.kind))
        .max_by_key(|f| severity(f.verdict.kind));
    let Some(p) = problem else {
        let answered = flows
            .iter()
            .filter(|f| f.verdict.kind == VerdictKind::Answered)
            .count();
        if let Some(unsure) = flows
            .iter()
            .find(|f| f.verdict.kind == VerdictKind::Incomplete)
        {
            // An unjudged flow may be a failing one: no "healthy".
            let n = flows
                .iter()
                .filter(|f| f.verdict.kind == VerdictKind::Incomplete)
                .count();
            return Diagnosis {
                layer: Layer::Inconclusive,
                summary: format!(
                    "inconclusive: {n} of {} flow{} could not be judged ({answered} answered): {}",
                    flows.len(),
                    if flows.len() == 1 { "" } else { "s" },
                    unsure.verdict.summary
                ),
                evidence,
                next_step: unsure.verdict.hint.clone(),
                exit_code: 4,
            };
        }
        return Diagnosis {
            layer: Layer::Healthy,
            summary: format!(
                "healthy: {answered} flow{} reached a pod and got an answer",
                if answered == 1 { "" } else { "s" }
            ),
            evidence,
            next_step: None,
            exit_code: 0,
        };
    };
    if let Some(d) = partial_outage(&roll, &of_flows) {
        return Diagnosis { evidence, ..d };
    }
    let (layer, what) = layer_of(p.verdict.kind, flow_endpoint(p).is_some());
    let summary = if total > 1 {
        format!("{what}: {} ({of_flows})", p.verdict.summary)
    } else {
        format!("{what}: {}", p.verdict.summary)
    };
    Diagnosis {
        layer,
        summary,
        evidence,
        next_step: p.verdict.hint.clone(),
        exit_code: 1,
    }
}

/// A refusal or silence is the pod's only once the flow was DNATed to one;
/// before that it is this node's (its own stack refusing a local LB IP).
fn layer_of(k: VerdictKind, dnated: bool) -> (Layer, &'static str) {
    match k {
        VerdictKind::Refused | VerdictKind::NoAnswer if dnated => (
            Layer::PodNotAnswering,
            "DNATed, but the pod does not answer",
        ),
        _ => (Layer::DroppedOnNode, "traffic reaches this node but"),
    }
}

/// Some endpoints fail every flow while others answer every one, and no
/// failure happened before an endpoint was chosen: the Service works, some
/// of its pods do not. None when the failures are not endpoint-specific.
fn partial_outage(r: &Rollup, of_flows: &str) -> Option<Diagnosis> {
    if r.without_endpoint_failed > 0 {
        return None;
    }
    let tried: Vec<&EndpointFlows> = r.endpoints.iter().filter(|e| e.flows > 0).collect();
    let failing: Vec<&EndpointFlows> = tried
        .iter()
        .copied()
        .filter(|e| e.failed() == e.flows)
        .collect();
    let answering = tried.iter().filter(|e| e.failed() == 0).count();
    let mixed = tried.len() - failing.len() - answering;
    if failing.is_empty() || answering == 0 || mixed > 0 {
        return None;
    }
    let worst = failing
        .iter()
        .filter_map(|e| e.worst())
        .max_by_key(|k| severity(*k))?;
    let verb = match worst {
        VerdictKind::Refused if failing.len() == 1 => "refuses",
        VerdictKind::Refused => "refuse",
        VerdictKind::NoAnswer if failing.len() == 1 => "does not answer",
        VerdictKind::NoAnswer => "do not answer",
        _ if failing.len() == 1 => "fails",
        _ => "fail",
    };
    let list: Vec<String> = failing.iter().map(|e| e.endpoint.to_string()).collect();
    let untried = r.endpoints.len() - tried.len();
    let summary = format!(
        "{} of {} endpoints {verb}: {}; {answering} answer{}{}; {of_flows}",
        failing.len(),
        r.endpoints.len(),
        list.join(", "),
        if answering == 1 { "s" } else { "" },
        if untried > 0 {
            format!("; {untried} got no flow")
        } else {
            String::new()
        }
    );
    let (layer, _) = layer_of(worst, true);
    let addrs: Vec<SocketAddr> = failing.iter().map(|e| e.endpoint).collect();
    let next = Hint::SomeEndpointsFail {
        endpoints: &addrs,
        cause: failing.iter().find_map(|e| e.hint.as_deref()),
    }
    .text();
    Some(Diagnosis {
        layer,
        summary,
        evidence: Vec::new(),
        next_step: next,
        exit_code: 1,
    })
}

/// No traffic: what ARP for the IP says.
fn from_arp(lb: IpAddr, wire: &Wire, evidence: &mut Vec<String>) -> Option<Diagnosis> {
    let a = wire.arp?;
    evidence.push(a.text.clone());
    match &a.verdict {
        ArpVerdict::NotAnswered { requests, .. } => Some(Diagnosis {
            layer: Layer::NotAnnounced,
            summary: format!(
                "this node is not announcing {lb}: {requests} ARP request(s) for it arrived and nobody answered"
            ),
            evidence: evidence.clone(),
            next_step: Hint::NotAnnounced { lb }.text(),
            exit_code: 1,
        }),
        ArpVerdict::AnsweredElsewhere { macs } => {
            let list: Vec<String> = macs.iter().map(|m| m.to_string()).collect();
            Some(Diagnosis {
                layer: Layer::NotReachingNode,
                summary: format!(
                    "{lb} is announced by another node ({}): traffic goes there, not here",
                    list.join(", ")
                ),
                evidence: evidence.clone(),
                next_step: Hint::AnnouncedElsewhere { lb }.text(),
                exit_code: 3,
            })
        }
        _ => None,
    }
}

/// No traffic: a failing BGP session.
fn from_bgp(wire: &Wire, evidence: &mut Vec<String>) -> Option<Diagnosis> {
    evidence.extend(wire.bgp.describe());
    let p = wire.bgp.peers.iter().find(|p| p.state.is_down())?;
    let failing = matches!(
        p.state,
        SessionState::Notified { .. } | SessionState::Reset { .. } | SessionState::SynSent { .. }
    );
    failing.then(|| Diagnosis {
        layer: Layer::NotAnnounced,
        summary: format!("BGP session with {} is not up: {}", p.peer, p.text),
        evidence: evidence.clone(),
        next_step: Hint::BgpDown.text(),
        exit_code: 1,
    })
}

fn no_traffic(lb: IpAddr, wire: &Wire, evidence: Vec<String>) -> Diagnosis {
    let announced = wire.bgp.peers.iter().find_map(|p| match &p.advertised {
        RouteStatus::Announced {
            prefix, next_hop, ..
        } => Some(format!(
            "announced {prefix} to {}{}",
            p.peer,
            next_hop
                .map(|n| format!(" with next hop {n}"))
                .unwrap_or_default()
        )),
        _ => None,
    });
    let summary = match announced {
        Some(a) => format!("no traffic to {lb} reached this node in the window ({a})"),
        None => format!("no traffic to {lb} reached this node in the window"),
    };
    Diagnosis {
        layer: Layer::NoTraffic,
        summary,
        evidence,
        next_step: Hint::NoTraffic { lb }.text(),
        exit_code: 3,
    }
}

fn severity(k: VerdictKind) -> u8 {
    match k {
        VerdictKind::Dropped | VerdictKind::NoRule | VerdictKind::NoEndpoints => 5,
        VerdictKind::Refused => 4,
        VerdictKind::NoAnswer => 3,
        VerdictKind::AnsweredAsymmetric => 2,
        VerdictKind::LeftNode => 1,
        _ => 0,
    }
}

/// One IP: the report's fields at the top level (the schema of a single
/// `lbpath diagnose <IP>`).
#[derive(Serialize)]
struct Report<'a> {
    duration_s: f64,
    #[serde(flatten)]
    ip: &'a IpReport,
}

/// The live window: the engine keeps the flows, ARP and BGP it needs; this
/// shows a countdown on a terminal.
struct Window {
    countdown: bool,
    deadline: tokio::time::Instant,
    until_first: bool,
}

impl FrontEnd for Window {
    fn show(&mut self, s: &Session, _outs: Vec<Output>) -> bool {
        self.until_first && !s.engine.recent.is_empty()
    }

    fn tick(&mut self, s: &Session) {
        if self.countdown {
            let left = self
                .deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_secs_f64()
                .ceil();
            let lost = match s.engine.events_lost() {
                0 => String::new(),
                n => format!(", {n} events LOST"),
            };
            eprint!(
                "\r  watching {}: {left:>3}s left, {} flows, {} ARP, {} BGP sessions{lost} ",
                s.engine.targets.describe(),
                s.engine.tally.flows(),
                s.engine.arp.len(),
                s.engine.bgp.sessions.len()
            );
            let _ = std::io::stderr().flush();
        }
    }
}

pub async fn run(args: &DiagnoseArgs) -> Result<u8> {
    let timing = Timing {
        settle_ns: 200_000_000,
        idle_ns: 1_000_000_000,
        max_age_ns: 4_000_000_000,
    };
    let mut s = Session::start(
        &args.common,
        SessionOptions {
            capture: false,
            arp: true,
            bgp: true,
            timing,
        },
    )
    .await?;
    let port = args.common.port.unwrap_or(0);
    let sys = Sysctls::read(&s.engine.net);
    eprintln!(
        "lbpath: diagnosing {} for {}s",
        s.engine.targets.describe(),
        args.duration.as_secs_f64()
    );
    let start = tokio::time::Instant::now();
    let mut window = Window {
        countdown: std::io::stderr().is_terminal() && !args.common.json(),
        deadline: start + args.duration,
        until_first: args.until_first,
    };
    s.run(Some(window.deadline), &mut window).await?;
    if window.countdown {
        eprint!("\r{:80}\r", "");
    }
    s.engine.bgp.sessions.finish();

    let elapsed = start.elapsed().as_secs_f64();
    let reports: Vec<IpReport> = s
        .engine
        .targets
        .addresses()
        .into_iter()
        .map(|lb| ip_report(&s, lb, port, &sys))
        .collect();
    let overall = overall(&reports);
    if args.common.json() {
        let out = match reports.as_slice() {
            [one] => serde_json::to_string(&Report {
                duration_s: elapsed,
                ip: one,
            })?,
            _ => serde_json::to_string(&serde_json::json!({
                "duration_s": elapsed,
                "ips": reports,
                "verdict": overall,
            }))?,
        };
        println!("{out}");
    } else {
        for r in &reports {
            print!("{}", text(r, elapsed, Style::detect()));
        }
        if reports.len() != 1 {
            println!("overall: {}", overall.summary);
        }
    }
    let (stats, cut) = s.losses()?;
    if stats.lost_events > 0 || cut > 0 {
        eprintln!(
            "lbpath: events lost (ring buffer full): {}; cut (per-flow bound): {cut}",
            stats.lost_events,
        );
    }
    if stats.shed_flows > 0 {
        eprintln!(
            "lbpath: {} new connections not traced: lbpath was behind (ring buffer three quarters full)",
            stats.shed_flows,
        );
    }
    if stats.over_rate_flows > 0 {
        eprintln!(
            "lbpath: {} new connections not traced: more than --max-new-flows a second, after --flow-burst",
            stats.over_rate_flows,
        );
    }
    Ok(overall.exit_code)
}

/// Everything found about one LB IP.
#[derive(Serialize)]
struct IpReport {
    lb: IpAddr,
    checks: Vec<Finding>,
    arp: Option<ArpReport>,
    bgp: LbBgpSummary,
    flows: Vec<FlowReport>,
    /// The flows by endpoint (DNAT target).
    endpoints: Rollup,
    verdict: Diagnosis,
}

fn ip_report(s: &Session, lb: IpAddr, port: u16, sys: &Sysctls) -> IpReport {
    let services: Vec<_> = s
        .engine
        .services
        .iter()
        .filter(|p| p.address == lb)
        .cloned()
        .collect();
    let checks = checks::run(
        lb,
        port,
        &services,
        s.engine.kube_proxy_found(),
        s.engine.rules.degraded_reason().as_deref(),
        &s.engine.net,
        sys,
        &s.engine.rules.ipvs,
    );
    let own_macs: Vec<(String, [u8; 6])> = s
        .engine
        .net
        .ifaces
        .values()
        .filter_map(|i| i.mac.map(|m| (i.name.clone(), m)))
        .collect();
    let arp = match lb {
        IpAddr::V4(v4) => Some(arp::analyze(v4, &own_macs, &s.engine.arp)),
        IpAddr::V6(_) => None,
    };
    let bgp = s.engine.bgp.sessions.summary(lb);
    let flows: Vec<FlowReport> = s
        .engine
        .recent
        .iter()
        .filter(|f| f.flow.lb.ip() == lb)
        .cloned()
        .collect();
    let mut endpoints: Vec<SocketAddr> = services
        .iter()
        .filter(|s| port == 0 || s.port == port)
        .flat_map(|s| s.endpoints.iter().map(|e| SocketAddr::new(e.ip, e.port)))
        .collect();
    endpoints.sort();
    endpoints.dedup();
    // In IPVS mode the virtual service's real servers are the endpoints.
    if endpoints.is_empty() {
        endpoints = s
            .engine
            .rules
            .ipvs
            .services_of(lb)
            .filter(|v| port == 0 || v.port == port)
            .flat_map(|v| v.reals.iter().map(|r| SocketAddr::new(r.addr, r.port)))
            .collect();
        endpoints.sort();
        endpoints.dedup();
    }
    let facts = Facts {
        endpoints: &endpoints,
        lb_local: s.engine.net.is_local(lb),
        arp_conf: &sys.arp,
        on_kube_ipvs0: checks::on_kube_ipvs0(&s.engine.net, lb),
    };
    let verdict = decide_with(
        lb,
        &checks,
        &flows,
        &Wire {
            arp: arp.as_ref(),
            bgp: &bgp,
        },
        &facts,
    );
    IpReport {
        lb,
        checks,
        arp,
        bgp,
        endpoints: rollup(&flows, &endpoints),
        flows,
        verdict,
    }
}

/// Several IPs: a problem anywhere is the verdict; else healthy when some
/// IP had healthy traffic, else no traffic.
fn overall(reports: &[IpReport]) -> Diagnosis {
    let pick = reports
        .iter()
        .find(|r| r.verdict.exit_code == 1)
        .or_else(|| reports.iter().find(|r| r.verdict.exit_code == 4))
        .or_else(|| reports.iter().find(|r| r.verdict.exit_code == 0))
        .or_else(|| reports.first());
    match pick {
        Some(r) if reports.len() == 1 => r.verdict.clone(),
        Some(r) => Diagnosis {
            summary: format!("{}: {}", r.lb, r.verdict.summary),
            ..r.verdict.clone()
        },
        None => Diagnosis {
            layer: Layer::NoTraffic,
            summary: "no LoadBalancer IP to diagnose (kube-proxy names none on this node)".into(),
            evidence: Vec::new(),
            next_step: None,
            exit_code: 3,
        },
    }
}

fn text(r: &IpReport, secs: f64, s: Style) -> String {
    let (lb, findings, arp, bgp, flows, d) = (
        r.lb,
        &r.checks,
        r.arp.as_ref(),
        &r.bgp,
        &r.flows,
        &r.verdict,
    );
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{}",
        s.bold(&format!("lbpath diagnose {lb} ({secs:.0}s watched)"))
    );
    let _ = writeln!(o, "\n{}", s.bold("node checks"));
    for f in findings {
        let mark = match f.level {
            Level::Ok => s.green("✔"),
            Level::Info => s.dim("•"),
            Level::Warn => s.yellow("!"),
            Level::Problem => s.red("✘"),
        };
        let _ = writeln!(o, "  {mark} {}: {}", f.check, f.text);
        if let Some(n) = &f.next_step
            && f.level >= Level::Warn
        {
            let _ = writeln!(o, "      {}", s.dim(&format!("→ {n}")));
        }
    }
    let _ = writeln!(o, "\n{}", s.bold("L2 (ARP)"));
    match arp {
        Some(a) => {
            let _ = writeln!(o, "  {}", a.text);
            for n in &a.notes {
                let _ = writeln!(o, "  {}", s.dim(n));
            }
        }
        None => {
            let _ = writeln!(o, "  (IPv6: neighbour discovery not analysed)");
        }
    }
    let _ = writeln!(o, "\n{}", s.bold("BGP"));
    for l in bgp.describe() {
        let _ = writeln!(o, "  {l}");
    }
    let _ = writeln!(
        o,
        "\n{}",
        s.bold(&format!(
            "traffic ({} flow{})",
            flows.len(),
            if flows.len() == 1 { "" } else { "s" }
        ))
    );
    // Indented by two: fitted to two columns less.
    let narrower = Style {
        width: s.width.saturating_sub(2),
        ..s
    };
    for f in flows {
        o.push_str(&indent(&render::flow_text(f, narrower)));
    }
    if flows.is_empty() {
        let _ = writeln!(o, "  none");
    }
    let verdict = match d.exit_code {
        0 => s.green(&d.summary),
        3 => s.yellow(&d.summary),
        _ => s.red(&d.summary),
    };
    let _ = writeln!(o, "\n{} {verdict}", s.bold("verdict:"));
    for e in &d.evidence {
        let _ = writeln!(o, "  evidence: {e}");
    }
    if let Some(n) = &d.next_step {
        let _ = writeln!(o, "  next step: {n}");
    }
    // Flows are fitted already (fitting is idempotent); the other lines
    // continue under their text.
    wrap_lines(&o, s.width, |l| {
        hanging(l, &["evidence: ", "next step: ", "→ "], 2)
    })
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        arp::Mac,
        model::{FlowId, Verdict},
    };

    fn flow(kind: VerdictKind, summary: &str) -> FlowReport {
        FlowReport {
            flow: FlowId {
                proto: "tcp".into(),
                client: "192.0.2.10:1000".parse().unwrap(),
                lb: "192.0.2.240:80".parse().unwrap(),
                conn: 0,
            },
            service: None,
            hops: vec![],
            verdict: Verdict {
                kind,
                summary: summary.into(),
                hint: Some("do this".into()),
            },
            counters: None,
            notes: vec![],
            update: false,
        }
    }

    fn arp_report(verdict: ArpVerdict) -> ArpReport {
        ArpReport {
            lb_ip: "192.0.2.240".parse().unwrap(),
            interfaces: vec![],
            verdict,
            earlier_claimants: vec![],
            text: "arp says".into(),
            notes: vec![],
        }
    }

    fn empty_bgp() -> LbBgpSummary {
        LbBgpSummary {
            forgotten_sessions: 0,
            lb_ip: "192.0.2.240".parse().unwrap(),
            peers: vec![],
        }
    }

    const LB: &str = "192.0.2.240";

    /// A flow DNATed to `ep` with verdict `kind`.
    fn to_endpoint(kind: VerdictKind, ep: &str, port: u16) -> FlowReport {
        let mut f = flow(kind, &format!("{kind:?} at {ep}"));
        f.flow.client.set_port(port);
        f.hops.push(crate::model::Hop {
            t_ms: 0.1,
            dir: Dir::Request,
            packet: 1,
            kind: HopKind::Dnat {
                from: f.flow.lb,
                to: ep.parse().unwrap(),
                hook: "PREROUTING".into(),
                by: None,
            },
            inferred: false,
        });
        f
    }

    #[test]
    fn one_endpoint_refusing_among_three_is_a_partial_outage() {
        let bgp = empty_bgp();
        let wire = Wire {
            arp: None,
            bgp: &bgp,
        };
        let eps: Vec<SocketAddr> = ["10.244.1.5:8080", "10.244.1.6:8080", "10.244.1.7:8080"]
            .iter()
            .map(|e| e.parse().unwrap())
            .collect();
        let mut flows = Vec::new();
        for i in 0..12u16 {
            let (kind, ep) = match i % 3 {
                0 => (VerdictKind::Refused, "10.244.1.7:8080"),
                1 => (VerdictKind::Answered, "10.244.1.5:8080"),
                _ => (VerdictKind::Answered, "10.244.1.6:8080"),
            };
            flows.push(to_endpoint(kind, ep, 1000 + i));
        }
        let facts = Facts {
            endpoints: &eps,
            ..Default::default()
        };
        let d = decide_with(LB.parse().unwrap(), &[], &flows, &wire, &facts);
        assert_eq!((d.layer, d.exit_code), (Layer::PodNotAnswering, 1));
        assert_eq!(
            d.summary,
            "1 of 3 endpoints refuses: 10.244.1.7:8080; 2 answer; 4 of 12 flows failed"
        );
        // Every flow is in the evidence, by endpoint, the failing one first.
        assert_eq!(d.evidence.len(), 3, "{:?}", d.evidence);
        assert!(
            d.evidence[0].starts_with("endpoint 10.244.1.7:8080: 4 of 4 flows failed (4 refused)"),
            "{:?}",
            d.evidence
        );
        assert!(
            d.evidence[1].contains("4 flows (4 answered)"),
            "{:?}",
            d.evidence
        );
        let next = d.next_step.unwrap();
        assert!(
            next.contains("10.244.1.7:8080") && next.contains("grep -F 10.244.1.7"),
            "{next}"
        );

        // All endpoints refusing: the Service is down, not partially.
        let all: Vec<FlowReport> = (0..6u16)
            .map(|i| {
                to_endpoint(
                    VerdictKind::Refused,
                    if i % 2 == 0 {
                        "10.244.1.5:8080"
                    } else {
                        "10.244.1.6:8080"
                    },
                    2000 + i,
                )
            })
            .collect();
        let d = decide_with(LB.parse().unwrap(), &[], &all, &wire, &facts);
        assert_eq!(d.layer, Layer::PodNotAnswering);
        assert!(
            d.summary.starts_with("DNATed, but the pod does not answer")
                && d.summary.ends_with("(6 of 6 flows failed)"),
            "{}",
            d.summary
        );
        assert!(
            d.evidence
                .iter()
                .any(|e| e == "endpoint 10.244.1.7:8080: no flow in the window"),
            "{:?}",
            d.evidence
        );
    }

    #[test]
    fn arp_flux_names_both_interfaces_and_the_sysctls() {
        let bgp = empty_bgp();
        let a = arp_report(ArpVerdict::ArpFlux {
            answers: vec![
                crate::arp::OwnAnswer {
                    ifname: "eth0".into(),
                    mac: Mac([2, 0, 0, 0, 0, 1]),
                    claims: 2,
                },
                crate::arp::OwnAnswer {
                    ifname: "eth2".into(),
                    mac: Mac([2, 0, 0, 0, 0, 2]),
                    claims: 2,
                },
            ],
        });
        let conf = [ArpConf {
            iface: "eth2".into(),
            ..Default::default()
        }];
        let facts = Facts {
            lb_local: true,
            arp_conf: &conf,
            ..Default::default()
        };
        let d = decide_with(
            LB.parse().unwrap(),
            &[],
            &[flow(VerdictKind::Answered, "ok")],
            &Wire {
                arp: Some(&a),
                bgp: &bgp,
            },
            &facts,
        );
        assert_eq!((d.layer, d.exit_code), (Layer::ArpFlux, 1));
        assert!(
            d.summary
                .contains("eth0 (MAC 02:00:00:00:00:01) and eth2 (MAC 02:00:00:00:00:02)"),
            "{}",
            d.summary
        );
        assert!(
            d.evidence
                .iter()
                .any(|e| e.starts_with("eth2: arp_ignore=0")),
            "{:?}",
            d.evidence
        );
        let next = d.next_step.unwrap();
        assert!(
            next.contains("net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2"),
            "{next}"
        );
    }

    #[test]
    fn healthy_traffic() {
        let bgp = empty_bgp();
        let d = decide(
            LB.parse().unwrap(),
            &[],
            &[flow(VerdictKind::Answered, "ok")],
            &Wire {
                arp: None,
                bgp: &bgp,
            },
        );
        assert_eq!((d.layer, d.exit_code), (Layer::Healthy, 0));
    }

    #[test]
    fn an_unjudged_flow_is_never_healthy() {
        let bgp = empty_bgp();
        let wire = Wire {
            arp: None,
            bgp: &bgp,
        };
        let flows = [
            flow(VerdictKind::Answered, "ok"),
            flow(VerdictKind::Incomplete, "events were lost"),
        ];
        let d = decide(LB.parse().unwrap(), &[], &flows, &wire);
        assert_eq!((d.layer, d.exit_code), (Layer::Inconclusive, 4));
        assert!(d.summary.contains("1 of 2 flows") && d.summary.contains("events were lost"));
        // A problem flow still outweighs it.
        let flows = [
            flow(VerdictKind::Incomplete, "events were lost"),
            flow(VerdictKind::Dropped, "dropped"),
        ];
        let d = decide(LB.parse().unwrap(), &[], &flows, &wire);
        assert_eq!((d.layer, d.exit_code), (Layer::DroppedOnNode, 1));
    }

    #[test]
    fn dropped_traffic_names_the_drop() {
        let bgp = empty_bgp();
        let flows = [
            flow(VerdictKind::Answered, "ok"),
            flow(
                VerdictKind::Dropped,
                "dropped on this node: reverse-path filter",
            ),
        ];
        let d = decide(
            LB.parse().unwrap(),
            &[],
            &flows,
            &Wire {
                arp: None,
                bgp: &bgp,
            },
        );
        assert_eq!((d.layer, d.exit_code), (Layer::DroppedOnNode, 1));
        assert!(d.summary.contains("reverse-path filter"));
        assert_eq!(d.next_step.as_deref(), Some("do this"));
    }

    #[test]
    fn pod_not_answering() {
        let bgp = empty_bgp();
        let d = decide(
            LB.parse().unwrap(),
            &[],
            &[to_endpoint(VerdictKind::Refused, "10.244.1.5:8080", 1000)],
            &Wire {
                arp: None,
                bgp: &bgp,
            },
        );
        assert_eq!((d.layer, d.exit_code), (Layer::PodNotAnswering, 1));
        // Refused before any DNAT: this node's own stack, not a pod.
        let d = decide(
            LB.parse().unwrap(),
            &[],
            &[flow(VerdictKind::Refused, "refused by this node")],
            &Wire {
                arp: None,
                bgp: &bgp,
            },
        );
        assert_eq!((d.layer, d.exit_code), (Layer::DroppedOnNode, 1));
    }

    #[test]
    fn no_traffic_arp_unanswered() {
        let bgp = empty_bgp();
        let a = arp_report(ArpVerdict::NotAnswered {
            requests: 3,
            requesters: vec![],
        });
        let d = decide(
            LB.parse().unwrap(),
            &[],
            &[],
            &Wire {
                arp: Some(&a),
                bgp: &bgp,
            },
        );
        assert_eq!((d.layer, d.exit_code), (Layer::NotAnnounced, 1));
        assert!(d.summary.contains("not announcing 192.0.2.240"));
        assert!(d.next_step.unwrap().contains("kubectl describe svc"));
    }

    #[test]
    fn split_brain() {
        let bgp = empty_bgp();
        let a = arp_report(ArpVerdict::Conflict {
            macs: vec![Mac([2, 0, 0, 0, 0, 1]), Mac([2, 0, 0, 0, 0, 2])],
            this_node: None,
        });
        let d = decide(
            LB.parse().unwrap(),
            &[],
            &[flow(VerdictKind::Answered, "ok")],
            &Wire {
                arp: Some(&a),
                bgp: &bgp,
            },
        );
        assert_eq!(d.exit_code, 1);
        assert!(
            d.summary
                .contains("02:00:00:00:00:01 and 02:00:00:00:00:02"),
            "{}",
            d.summary
        );
    }

    #[test]
    fn nothing_seen() {
        let bgp = empty_bgp();
        let d = decide(
            LB.parse().unwrap(),
            &[],
            &[],
            &Wire {
                arp: Some(&arp_report(ArpVerdict::NoArpSeen)),
                bgp: &bgp,
            },
        );
        assert_eq!((d.layer, d.exit_code), (Layer::NoTraffic, 3));
        let problem = Finding {
            check: "kube-proxy rules".into(),
            level: Level::Problem,
            text: "no kube-proxy rule for 192.0.2.240".into(),
            next_step: None,
        };
        let d = decide(
            LB.parse().unwrap(),
            &[problem],
            &[],
            &Wire {
                arp: None,
                bgp: &bgp,
            },
        );
        assert_eq!(d.exit_code, 1);
        assert!(d.summary.contains("no kube-proxy rule"));
    }
}
