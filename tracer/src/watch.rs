//! `lbpath watch`: set up a session, print each flow as it completes, totals
//! on exit. `start` is shared with `diagnose`.

use std::{collections::BTreeMap, io::Write, time::Duration};

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    UsageError,
    assembler::Timing,
    btf::{BtfError, EnumNames, KernelBtf},
    drops::DropNames,
    cli::{self, CommonArgs, WatchArgs},
    engine::{Engine, Filters, Node, Output, occupants},
    events, kubeproxy,
    loader::{LoadOptions, Tracer},
    model::VerdictKind,
    netinfo::NetInfo,
    nfplan::NfPlan,
    render::{self, Style},
};

pub struct Session {
    pub tracer: Tracer,
    pub engine: Engine,
    pub ring: AsyncFd<RingBuf<MapData>>,
    pub json: bool,
    pub style: Style,
}

fn btf_usage(e: BtfError) -> anyhow::Error {
    anyhow!(UsageError(e.to_string()))
}

/// Everything up to attached programs: input checks, kernel layout, the
/// node's interfaces and rules, loading.
pub async fn start(common: &CommonArgs, arp: bool, bgp: bool, timing: Timing) -> Result<Session> {
    let target = cli::target(common)?;
    cli::check_privileges()?;
    let btf = KernelBtf::open_vmlinux().map_err(btf_usage)?;
    cli::check_kernel(|e, m| btf.has_enum_member(e, m))?;
    let layout = btf.layout().map_err(btf_usage)?;

    let net = NetInfo::read()
        .await
        .context("reading the node's interfaces")?;
    if let Some(i) = &common.iface
        && net.by_name(i).is_none()
    {
        return Err(anyhow!(UsageError(format!(
            "unknown interface '{i}' (not in this network namespace)"
        ))));
    }
    let rules = kubeproxy::read_node();
    for p in &rules.problems {
        tracing::info!("rules: {p}");
    }
    let plan = NfPlan::new(occupants(&rules));
    let mut tracer = Tracer::load(
        &LoadOptions {
            lb: target.ip,
            port: target.port,
            proto: target.proto,
            trace_packets: common.packets,
            drop_events: 8,
            arp,
            bgp,
            tc_ifaces: net.bgp_ifaces(),
            plan: plan.clone(),
        },
        layout,
        &btf,
    )?;
    tracer.set_pod_ifs(&net.pod_ifaces())?;
    let netfilter_links = tracer.caps.netfilter_links;
    for n in &tracer.notices {
        eprintln!("lbpath: notice: {n}");
    }
    tracing::info!("attached: {}", tracer.attached.join("; "));
    let ring = tracer.take_events()?;
    // SAFETY: the ring buffer owns its fd for as long as AsyncFd holds it.
    let ring =
        unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow!("polling the ring buffer: {e}"))?;
    let engine = Engine::new(
        target.ip,
        Node {
            net,
            plan,
            drops: DropNames::new(tracer.caps.drop_reasons.then(|| {
                EnumNames::from_btf(&btf, "skb_drop_reason", "SKB_DROP_REASON_")
            })),
            rules,
            netns: tracer.node_netns,
            netfilter_links,
        },
        Filters {
            client: target.client,
            iface: common.iface.clone(),
        },
        timing,
    );
    Ok(Session {
        tracer,
        engine,
        ring,
        json: common.json,
        style: Style::detect(),
    })
}

impl Session {
    /// Waits until the kernel has written records (or a packet socket has
    /// a BGP segment), then takes them all.
    pub async fn next_events(&mut self) -> Result<Vec<Output>> {
        let mut out = Vec::new();
        match &mut self.tracer.packets {
            Some(p) => {
                tokio::select! {
                    guard = self.ring.readable_mut() => guard?.clear_ready(),
                    seg = p.rx.recv() => if let Some(seg) = seg {
                        out.extend(self.engine.record(events::Record::Seg(Box::new(seg)), &self.tracer));
                    },
                }
            }
            None => self.ring.readable_mut().await?.clear_ready(),
        }
        out.extend(self.drain());
        Ok(out)
    }

    /// Drains the ring buffer into the engine.
    pub fn drain(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            if let Some(rec) = events::decode(&item) {
                out.extend(self.engine.record(rec, &self.tracer));
            }
        }
        out
    }

    pub fn print(&self, outs: &[Output]) {
        let mut stdout = std::io::stdout().lock();
        for o in outs {
            let line = match (o, self.json) {
                (Output::Flow(r), false) => render::flow_text(r, self.style),
                (Output::Flow(r), true) => render::flow_json(r) + "\n",
                (Output::Arp(s), false) => format!("{} {s}\n", self.style.cyan("arp")),
                (Output::Bgp(s), false) => format!("{} {s}\n", self.style.cyan("bgp")),
                (Output::Arp(s), true) => serde_json::json!({ "arp": s }).to_string() + "\n",
                (Output::Bgp(s), true) => serde_json::json!({ "bgp": s }).to_string() + "\n",
            };
            let _ = stdout.write_all(line.as_bytes());
        }
        let _ = stdout.flush();
    }

    /// Flows per verdict and events lost, for the end of a run.
    pub fn totals(&self) -> Result<(BTreeMap<String, usize>, u64, u64)> {
        let mut per = BTreeMap::new();
        for f in &self.engine.flows_reported {
            *per.entry(verdict_key(f.verdict.kind).to_string())
                .or_insert(0) += 1;
        }
        let stats = self.tracer.stats()?;
        Ok((per, stats.lost_events, self.engine.dropped_events()))
    }
}

pub fn verdict_key(k: VerdictKind) -> &'static str {
    match k {
        VerdictKind::Answered => "answered",
        VerdictKind::AnsweredAsymmetric => "answered_asymmetric",
        VerdictKind::NoAnswer => "no_answer",
        VerdictKind::Refused => "refused",
        VerdictKind::Dropped => "dropped",
        VerdictKind::LeftNode => "left_node",
        VerdictKind::NoRule => "no_rule",
        VerdictKind::Local => "local",
        VerdictKind::Incomplete => "incomplete",
    }
}

pub async fn run(args: &WatchArgs) -> Result<u8> {
    let mut s = start(&args.common, !args.no_arp, args.bgp, Timing::default()).await?;
    let port = if s.engine.services.is_empty() {
        String::new()
    } else {
        format!(
            " (kube-proxy: {})",
            s.engine
                .services
                .iter()
                .map(|v| v.service.clone())
                .collect::<Vec<_>>()
                .join(", ")
        )
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
        "lbpath: watching {}{}; {netfilter}; Ctrl-C to stop",
        s.engine.lb, port,
    );
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut refresh = tokio::time::interval(Duration::from_secs(2));
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    loop {
        tokio::select! {
            outs = s.next_events() => s.print(&outs?),
            _ = tick.tick() => {
                let outs = s.engine.tick(&s.tracer);
                s.print(&outs);
            }
            _ = refresh.tick() => {
                // New pods bring new veths.
                if let Ok(ifs) = s.engine.refresh_net().await {
                    let _ = s.tracer.set_pod_ifs(&ifs);
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => break,
        }
    }
    let outs = s.drain();
    s.print(&outs);
    let outs = s.engine.finish(&s.tracer);
    s.print(&outs);
    let (per, lost, cut) = s.totals()?;
    if s.json {
        println!(
            "{}",
            serde_json::json!({ "totals": { "flows": per, "events_lost": lost, "events_cut": cut } })
        );
    } else {
        let flows: Vec<String> = per.iter().map(|(k, v)| format!("{v} {k}")).collect();
        eprintln!(
            "lbpath: {} flow{}{}; events lost (ring buffer full): {lost}; cut (per-flow bound): {cut}",
            s.engine.flows_reported.len(),
            if s.engine.flows_reported.len() == 1 {
                ""
            } else {
                "s"
            },
            if flows.is_empty() {
                String::new()
            } else {
                format!(" ({})", flows.join(", "))
            }
        );
    }
    Ok(0)
}
