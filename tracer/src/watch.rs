//! `lbpath watch`: a session's outputs printed as they come (text or JSON
//! lines), flows per verdict on exit.

use std::{collections::BTreeMap, io::Write};

use anyhow::{Result, anyhow};

use crate::{
    UsageError,
    assembler::Timing,
    cli::WatchArgs,
    diagnose,
    engine::{NotTraced, Output},
    metrics,
    model::VerdictKind,
    pcap::PcapWriter,
    render::{self, Style},
    session::{FrontEnd, Session, SessionOptions},
};

struct Printer {
    json: bool,
    style: Style,
    /// Where `--metrics` reads from; refreshed every tick.
    metrics: Option<metrics::Shared>,
    /// `--max-new-flows` and `--flow-burst`, for the line saying
    /// connections went untraced.
    max_new_flows: u32,
    flow_burst: u32,
}

impl FrontEnd for Printer {
    fn show(&mut self, _s: &Session, outs: Vec<Output>) -> bool {
        let mut stdout = std::io::stdout().lock();
        for o in &outs {
            let line = match (o, self.json) {
                (Output::Lost { new, total }, false) => {
                    eprintln!(
                        "lbpath: {} {new} events lost in the last second ({total} in all): the ring buffer was full; flows traced meanwhile are marked incomplete",
                        self.style.yellow("!")
                    );
                    continue;
                }
                (Output::NotTraced { why, new, total }, false) => {
                    let why = match why {
                        NotTraced::Behind => {
                            "lbpath was behind, the ring buffer three quarters full".to_string()
                        }
                        NotTraced::OverRate => format!(
                            "more than --max-new-flows {} a second on a CPU, after a burst of {}",
                            self.max_new_flows, self.flow_burst
                        ),
                    };
                    eprintln!(
                        "lbpath: {} {new} new connections not traced in the last second ({total} in all): {why}; they are counted, not traced",
                        self.style.yellow("!")
                    );
                    continue;
                }
                (Output::NotTraced { why, new, total }, true) => {
                    let why = match why {
                        NotTraced::Behind => "behind",
                        NotTraced::OverRate => "over_rate",
                    };
                    serde_json::json!({ "not_traced": { "why": why, "flows": new, "total": total } })
                        .to_string()
                        + "\n"
                }
                (Output::Lost { new, total }, true) => {
                    serde_json::json!({ "lost": { "events": new, "total": total } }).to_string()
                        + "\n"
                }
                (Output::Rules { degraded }, false) => {
                    match degraded {
                        Some(why) => eprintln!(
                            "lbpath: {} the node's rules could not all be read: {why}; Service names and \"no rule\" verdicts may be missing",
                            self.style.yellow("!")
                        ),
                        None => eprintln!("lbpath: the node's rules were read in full again"),
                    }
                    continue;
                }
                (Output::Rules { degraded }, true) => {
                    serde_json::json!({ "rules": { "degraded": degraded } }).to_string() + "\n"
                }
                (Output::Flow(r), false) => render::flow_text(r, self.style),
                (Output::Flow(r), true) => render::flow_json(r) + "\n",
                (Output::Arp(s), false) => {
                    self.style
                        .fit(&format!("{} {s}", self.style.cyan("arp")), 4)
                        + "\n"
                }
                (Output::Bgp(s), false) => {
                    self.style
                        .fit(&format!("{} {s}", self.style.cyan("bgp")), 4)
                        + "\n"
                }
                (Output::Arp(s), true) => serde_json::json!({ "arp": s }).to_string() + "\n",
                (Output::Bgp(s), true) => serde_json::json!({ "bgp": s }).to_string() + "\n",
            };
            let _ = stdout.write_all(line.as_bytes());
        }
        let _ = stdout.flush();
        false
    }

    fn tick(&mut self, s: &Session) {
        if let Some(m) = &self.metrics
            && let Ok(mut slot) = m.lock()
        {
            *slot = s.engine.snapshot();
        }
    }
}

/// A verdict kind as the JSON names it.
pub fn verdict_key(k: VerdictKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

pub async fn run(args: &WatchArgs) -> Result<u8> {
    // Bound first: a port in use fails before anything is loaded (or a
    // --write file created).
    let listener = match args.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    // Created before loading: a path that cannot be written fails before
    // anything is loaded.
    let pcap = match &args.write {
        Some(path) => Some(
            PcapWriter::create(path, args.write_limit.saturating_mul(1 << 20)).map_err(|e| {
                anyhow!(UsageError(format!(
                    "cannot write '{}': {e}",
                    path.display()
                )))
            })?,
        ),
        None => None,
    };
    let started = Session::start(
        &args.common,
        SessionOptions {
            arp: !args.no_arp,
            bgp: args.bgp,
            timing: Timing::default(),
            capture: pcap.is_some(),
        },
    )
    .await;
    let mut s = match started {
        Ok(s) => s,
        Err(e) => {
            // Nothing was traced: no empty capture left behind.
            if let Some(p) = &pcap {
                let _ = std::fs::remove_file(p.path());
            }
            return Err(e);
        }
    };
    if let Some(mut p) = pcap {
        p.set_node_netns(s.tracer.node_netns);
        s.engine.pcap = Some(p);
    }
    let services = if s.engine.services.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = s
            .engine
            .services
            .iter()
            .map(|v| v.service.as_str())
            .collect();
        format!(" (kube-proxy: {})", names.join(", "))
    };
    let netfilter = if s.engine.netfilter_links {
        format!(
            "{} netfilter points",
            s.engine.plan.points.iter().map(Vec::len).sum::<usize>()
        )
    } else {
        "netfilter hops inferred".to_string()
    };
    eprintln!(
        "lbpath: watching {}{services}; {netfilter}; Ctrl-C to stop",
        s.engine.targets.describe(),
    );
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let shared = listener.map(|l| {
        let shared = metrics::Shared::default();
        if let Ok(a) = l.local_addr() {
            eprintln!("lbpath: metrics on http://{a}/metrics");
        }
        tokio::spawn(metrics::serve(l, shared.clone()));
        shared
    });
    let mut printer = Printer {
        json: args.common.json(),
        style: Style::detect(),
        metrics: shared,
        max_new_flows: args.common.max_new_flows,
        flow_burst: args.common.flow_burst,
    };
    s.run(deadline, &mut printer).await?;

    let per: BTreeMap<String, u64> = s
        .engine
        .tally
        .per_verdict
        .iter()
        .map(|(k, n)| (verdict_key(*k), *n))
        .collect();
    if let Some(p) = s.engine.pcap.as_mut() {
        eprintln!("{}", p.finish());
    }
    let (stats, cut) = s.losses()?;
    let lost = stats.lost_events;
    let n: u64 = per.values().sum();
    // Flows the kernel side began to trace that were neither reported nor
    // filtered out here: their events were lost or cut, or said too little
    // to make a path. So every flow is accounted for.
    let unreported = stats.flows.saturating_sub(n + s.engine.filtered_out);
    // By endpoint, from the reports kept (the most recent ones): one pod
    // failing among answering ones shows as such.
    let kept = s.engine.recent.len() as u64;
    let mut roll = diagnose::rollup(&s.engine.recent, &[]);
    roll.endpoints.retain(|e| e.flows > 0);
    if printer.json {
        let endpoints: Vec<serde_json::Value> = roll
            .endpoints
            .iter()
            .map(|e| {
                let verdicts: BTreeMap<String, u64> = e
                    .verdicts
                    .iter()
                    .map(|(k, n)| (verdict_key(*k), *n))
                    .collect();
                serde_json::json!({ "endpoint": e.endpoint, "flows": e.flows, "verdicts": verdicts })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "totals": {
                "flows": per,
                "flows_not_reported": unreported,
                "flows_not_traced": stats.shed_flows + stats.over_rate_flows,
                "flows_not_traced_over_rate": stats.over_rate_flows,
                "endpoints": endpoints,
                "endpoints_of_last": kept,
                "events_lost": lost,
                "events_cut": cut,
            } })
        );
    } else {
        if !roll.endpoints.is_empty() {
            let list: Vec<String> = roll
                .endpoints
                .iter()
                .map(|e| format!("{} {}", e.endpoint, e.describe()))
                .collect();
            let of = if kept < n {
                format!(" (last {kept} flows)")
            } else {
                String::new()
            };
            eprintln!("lbpath: by endpoint{of}: {}", list.join("; "));
        }
        let flows: Vec<String> = per.iter().map(|(k, v)| format!("{v} {k}")).collect();
        eprintln!(
            "lbpath: {n} flow{}{}; not reported: {unreported}{}; events lost (ring buffer full): {lost}; cut (per-flow bound): {cut}",
            if n == 1 { "" } else { "s" },
            if flows.is_empty() {
                String::new()
            } else {
                format!(" ({})", flows.join(", "))
            },
            not_traced_text(&stats)
        );
    }
    Ok(0)
}

/// The untraced part of the flows not reported, and why (empty if none).
fn not_traced_text(stats: &crate::loader::Stats) -> String {
    let mut why = Vec::new();
    if stats.shed_flows > 0 {
        why.push(format!("{} while lbpath was behind", stats.shed_flows));
    }
    if stats.over_rate_flows > 0 {
        why.push(format!("{} over --max-new-flows", stats.over_rate_flows));
    }
    if why.is_empty() {
        String::new()
    } else {
        format!(" (not traced: {})", why.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_keys_are_the_json_names() {
        assert_eq!(
            verdict_key(VerdictKind::AnsweredAsymmetric),
            "answered_asymmetric"
        );
        assert_eq!(verdict_key(VerdictKind::NoRule), "no_rule");
    }
}
