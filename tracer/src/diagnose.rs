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
    time::Duration,
};

use anyhow::Result;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    arp::{self, ArpReport, ArpVerdict},
    assembler::Timing,
    bgp::{LbBgpSummary, RouteStatus, SessionState},
    checks::{self, Finding, Level, Sysctls},
    cli::DiagnoseArgs,
    engine::Output,
    model::{FlowReport, VerdictKind},
    render::{self, Style},
    watch,
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

/// The verdict from everything gathered. Pure.
pub fn decide(lb: IpAddr, findings: &[Finding], flows: &[FlowReport], wire: &Wire) -> Diagnosis {
    let mut evidence = Vec::new();
    let static_problems: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.level == Level::Problem)
        .collect();

    // Split brain on L2 is a problem whatever the traffic does.
    if let Some(ArpReport {
        verdict: ArpVerdict::Conflict { macs, .. },
        ..
    }) = wire.arp
    {
        let list: Vec<String> = macs.iter().map(|m| m.to_string()).collect();
        return Diagnosis {
            layer: Layer::NotAnnounced,
            summary: format!(
                "two or more MACs answer ARP for {lb}: {} (split brain or duplicate IP)",
                list.join(" and ")
            ),
            evidence: wire.arp.map(|a| vec![a.text.clone()]).unwrap_or_default(),
            next_step: Some(format!(
                "only the elected speaker may answer for {lb}: check the speakers (`kubectl -n metallb-system logs -l component=speaker`) and that no host has {lb} configured (`arping -D {lb}`)"
            )),
            exit_code: 1,
        };
    }

    if !flows.is_empty() {
        for f in flows.iter().take(8) {
            evidence.push(format!(
                "{} → {}: {}",
                f.flow.client, f.flow.lb, f.verdict.summary
            ));
        }
        let problem = flows
            .iter()
            .filter(|f| is_problem(f.verdict.kind))
            .max_by_key(|f| severity(f.verdict.kind));
        let answered = flows
            .iter()
            .filter(|f| f.verdict.kind == VerdictKind::Answered)
            .count();
        let Some(p) = problem else {
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
        let layer = match p.verdict.kind {
            VerdictKind::Refused | VerdictKind::NoAnswer => Layer::PodNotAnswering,
            _ => Layer::DroppedOnNode,
        };
        let what = match layer {
            Layer::PodNotAnswering => "DNATed, but the pod does not answer",
            _ => "traffic reaches this node but",
        };
        return Diagnosis {
            layer,
            summary: format!("{what}: {}", p.verdict.summary),
            evidence,
            next_step: p.verdict.hint.clone(),
            exit_code: 1,
        };
    }

    // No traffic: what the announcement layers say.
    if let Some(a) = wire.arp {
        evidence.push(a.text.clone());
        match &a.verdict {
            ArpVerdict::NotAnswered { requests, .. } => {
                return Diagnosis {
                    layer: Layer::NotAnnounced,
                    summary: format!(
                        "this node is not announcing {lb}: {requests} ARP request(s) for it arrived and nobody answered"
                    ),
                    evidence,
                    next_step: Some(format!(
                        "another speaker may be the leader, or none is: check `kubectl describe svc` events for {lb}, the IPAddressPool/L2Advertisement, and the speaker pods"
                    )),
                    exit_code: 1,
                };
            }
            ArpVerdict::AnsweredElsewhere { macs } => {
                let list: Vec<String> = macs.iter().map(|m| m.to_string()).collect();
                return Diagnosis {
                    layer: Layer::NotReachingNode,
                    summary: format!(
                        "{lb} is announced by another node ({}): traffic goes there, not here",
                        list.join(", ")
                    ),
                    evidence,
                    next_step: Some(format!(
                        "run `lbpath diagnose {lb}` on the node with that MAC (`ip neigh | grep {lb}` on a client shows it)"
                    )),
                    exit_code: 3,
                };
            }
            _ => {}
        }
    }
    for line in wire.bgp.describe() {
        evidence.push(line);
    }
    let down: Vec<_> = wire
        .bgp
        .peers
        .iter()
        .filter(|p| p.state.is_down())
        .collect();
    if let Some(p) = down.first() {
        let failing = matches!(
            p.state,
            SessionState::Notified { .. }
                | SessionState::Reset { .. }
                | SessionState::SynSent { .. }
        );
        if failing {
            return Diagnosis {
                layer: Layer::NotAnnounced,
                summary: format!("BGP session with {} is not up: {}", p.peer, p.text),
                evidence,
                next_step: Some("check the BGPPeer (peer address, ASNs, password) against the router's configuration, and `kubectl -n metallb-system logs` of the speaker".into()),
                exit_code: 1,
            };
        }
    }
    if let Some(p) = static_problems.first() {
        return Diagnosis {
            layer: Layer::DroppedOnNode,
            summary: format!("no traffic seen, but {}", p.text),
            evidence,
            next_step: p.next_step.clone(),
            exit_code: 1,
        };
    }
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
        next_step: Some(format!(
            "send a request to {lb} while diagnosing (`--duration 30s`); if clients do get no answer, check where {lb} is announced (ARP/BGP) and the routers in between"
        )),
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

#[derive(Serialize)]
struct Report<'a> {
    lb: IpAddr,
    duration_s: f64,
    checks: &'a [Finding],
    arp: Option<&'a ArpReport>,
    bgp: &'a LbBgpSummary,
    flows: &'a [FlowReport],
    verdict: &'a Diagnosis,
}

pub async fn run(args: &DiagnoseArgs) -> Result<u8> {
    let timing = Timing {
        settle_ns: 200_000_000,
        idle_ns: 1_000_000_000,
        max_age_ns: 4_000_000_000,
    };
    let mut s = watch::start(&args.common, true, true, timing).await?;
    let lb = s.engine.lb;
    let port = args.common.port.unwrap_or(0);
    let sys = Sysctls::read(&s.engine.net);
    let findings = checks::run(
        lb,
        port,
        &s.engine.services,
        s.engine.kube_proxy_found(),
        &s.engine.net,
        &sys,
    );
    eprintln!(
        "lbpath: diagnosing {lb} for {}s",
        args.duration.as_secs_f64()
    );

    let countdown = std::io::stderr().is_terminal() && !args.common.json;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let start = tokio::time::Instant::now();
    let deadline = start + args.duration;
    let mut outs: Vec<Output> = Vec::new();
    loop {
        tokio::select! {
            new = s.next_events() => outs.extend(new?),
            _ = tick.tick() => {
                outs.extend(s.engine.tick(&s.tracer));
                if countdown {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs_f64().ceil();
                    eprint!("\r  watching {lb}: {left:>3}s left, {} flows, {} ARP, {} BGP sessions ", s.engine.flows_reported.len(), s.engine.arp.len(), s.engine.bgp.sessions.len());
                    let _ = std::io::stderr().flush();
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        if args.until_first && !s.engine.flows_reported.is_empty() {
            break;
        }
    }
    if countdown {
        eprint!("\r{:80}\r", "");
    }
    outs.extend(s.drain());
    outs.extend(s.engine.finish(&s.tracer));
    s.engine.bgp.sessions.finish();

    let own_macs: Vec<(String, [u8; 6])> = s
        .engine
        .net
        .ifaces
        .values()
        .filter_map(|i| i.mac.map(|m| (i.name.clone(), m)))
        .collect();
    let arp_report = match lb {
        IpAddr::V4(v4) => Some(arp::analyze(v4, &own_macs, &s.engine.arp)),
        IpAddr::V6(_) => None,
    };
    let bgp = s.engine.bgp.sessions.summary(lb);
    let flows = &s.engine.flows_reported;
    let d = decide(
        lb,
        &findings,
        flows,
        &Wire {
            arp: arp_report.as_ref(),
            bgp: &bgp,
        },
    );
    let elapsed = start.elapsed().as_secs_f64();
    if args.common.json {
        let r = Report {
            lb,
            duration_s: elapsed,
            checks: &findings,
            arp: arp_report.as_ref(),
            bgp: &bgp,
            flows,
            verdict: &d,
        };
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!(
            "{}",
            text(
                lb,
                elapsed,
                &findings,
                arp_report.as_ref(),
                &bgp,
                flows,
                &d,
                s.style
            )
        );
    }
    let stats = s.tracer.stats()?;
    if stats.lost_events > 0 || s.engine.dropped_events() > 0 {
        eprintln!(
            "lbpath: events lost (ring buffer full): {}; cut (per-flow bound): {}",
            stats.lost_events,
            s.engine.dropped_events()
        );
    }
    Ok(d.exit_code)
}

#[allow(clippy::too_many_arguments)]
fn text(
    lb: IpAddr,
    secs: f64,
    findings: &[Finding],
    arp: Option<&ArpReport>,
    bgp: &LbBgpSummary,
    flows: &[FlowReport],
    d: &Diagnosis,
    s: Style,
) -> String {
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
