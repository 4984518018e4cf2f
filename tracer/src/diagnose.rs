//! `lbpath diagnose`: static checks, a bounded live watch (traffic, ARP,
//! BGP), and one verdict naming the failing layer, as MetalLB's
//! troubleshooting guide splits it: is the IP announced, does traffic reach
//! the node, does the node get it to a pod that answers.
//!
//! Exit codes: 0 healthy traffic seen, 1 a problem found, 3 no traffic seen
//! in the window, 2 bad input or cannot run.

use std::{
    fmt::Write as _,
    io::{IsTerminal, Write},
    net::IpAddr,
};

use anyhow::Result;
use serde::Serialize;

use crate::{
    arp::{self, ArpReport, ArpVerdict},
    assembler::Timing,
    bgp::{LbBgpSummary, RouteStatus, SessionState},
    checks::{self, Finding, Level, Sysctls},
    cli::DiagnoseArgs,
    engine::Output,
    hints::Hint,
    model::{FlowReport, VerdictKind},
    render::{self, Style},
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

fn is_problem(k: VerdictKind) -> bool {
    !matches!(
        k,
        VerdictKind::Answered | VerdictKind::Local | VerdictKind::Incomplete
    )
}

/// The verdict from everything gathered, most telling layer first. Pure.
pub fn decide(lb: IpAddr, findings: &[Finding], flows: &[FlowReport], wire: &Wire) -> Diagnosis {
    if let Some(d) = split_brain(lb, wire) {
        return d;
    }
    if !flows.is_empty() {
        return from_flows(flows);
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

/// Traffic was seen: the worst flow decides.
fn from_flows(flows: &[FlowReport]) -> Diagnosis {
    let evidence = flows
        .iter()
        .take(8)
        .map(|f| format!("{} → {}: {}", f.flow.client, f.flow.lb, f.verdict.summary))
        .collect();
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
    let (layer, what) = match p.verdict.kind {
        VerdictKind::Refused | VerdictKind::NoAnswer => (
            Layer::PodNotAnswering,
            "DNATed, but the pod does not answer",
        ),
        _ => (Layer::DroppedOnNode, "traffic reaches this node but"),
    };
    Diagnosis {
        layer,
        summary: format!("{what}: {}", p.verdict.summary),
        evidence,
        next_step: p.verdict.hint.clone(),
        exit_code: 1,
    }
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
        VerdictKind::Dropped | VerdictKind::NoRule => 5,
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
                s.engine.totals.values().sum::<u64>(),
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
    let verdict = decide(
        lb,
        &checks,
        &flows,
        &Wire {
            arp: arp.as_ref(),
            bgp: &bgp,
        },
    );
    IpReport {
        lb,
        checks,
        arp,
        bgp,
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
    for f in flows {
        o.push_str(&indent(&render::flow_text(f, s)));
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
    o
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
            &[flow(VerdictKind::Refused, "refused")],
            &Wire {
                arp: None,
                bgp: &bgp,
            },
        );
        assert_eq!((d.layer, d.exit_code), (Layer::PodNotAnswering, 1));
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
