//! A tracing session, shared by `watch` and `diagnose`: the input checks,
//! what lbpath knows about the node (interfaces, kube-proxy rules, the
//! netfilter plan), the loaded programs, and the loop that turns kernel
//! records into outputs. The commands are front ends ([`FrontEnd`]): they
//! decide what to show and when to stop.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    time::Instant,
};

use crate::{
    UsageError,
    assembler::{Timing, monotonic_ns},
    btf::{BtfError, KernelBtf, KernelFacts},
    cli::{self, CommonArgs},
    drops::DropNames,
    engine::{Engine, Filters, Node, Output, occupants},
    events::{self, Record},
    kubeproxy,
    loader::{self, LoadOptions, Stats, Tracer},
    netinfo::NetInfo,
    nfplan::NfPlan,
    rules::{self, RuleWatcher},
    targets::Targets,
    timeline::Timeline,
};

/// What a front end asks of the session.
pub struct SessionOptions {
    /// Report ARP about the LB IP.
    pub arp: bool,
    /// Capture BGP segments.
    pub bgp: bool,
    pub timing: Timing,
    /// Path events carry the packets' headers (`watch --write`).
    pub capture: bool,
}

pub struct Session {
    rules: RuleWatcher,
    /// Readiness of the programs' log (`--debug-bpf`), whose descriptor the
    /// tracer owns: declared first so it is deregistered before that closes.
    bpf_log: Option<AsyncFd<std::os::fd::RawFd>>,
    pub tracer: Tracer,
    pub engine: Engine,
    ring: AsyncFd<RingBuf<MapData>>,
}

/// What a front end does with the session's outputs.
pub trait FrontEnd {
    /// New outputs; true stops the session.
    fn show(&mut self, s: &Session, outs: Vec<Output>) -> bool;
    /// Called every 100 ms.
    fn tick(&mut self, _s: &Session) {}
}

fn btf_usage(e: BtfError) -> anyhow::Error {
    anyhow!(UsageError(e.to_string()))
}

/// What lbpath needs from the kernel's BTF, after checking that the kernel
/// can run it at all. The parsed BTF is dropped on return.
fn kernel_facts() -> Result<KernelFacts> {
    let btf = KernelBtf::open_vmlinux().map_err(btf_usage)?;
    cli::check_kernel(|e, m| btf.has_enum_member(e, m))?;
    KernelFacts::read(&btf, &loader::tracepoint_names()).map_err(btf_usage)
}

impl Session {
    /// Everything up to attached programs: input checks, kernel layout, the
    /// node's interfaces and rules, loading. The hooks go in before the
    /// rules are read in full, and their records wait for them.
    pub async fn start(common: &CommonArgs, opts: SessionOptions) -> Result<Session> {
        let tl = Timeline::new();
        let target = cli::target(common)?;
        cli::check_privileges()?;
        // What the kernel is (its BTF, parsed by our reader and by aya's),
        // the node's rules (kube-proxy's tools, waited on) and interfaces
        // need nothing from each other: read at once, the parsing on
        // threads of their own.
        let facts = {
            let tl = tl.clone();
            tokio::task::spawn_blocking(move || tl.time("BTF parsed (layout, hooks)", kernel_facts))
        };
        let prepared = {
            let tl = tl.clone();
            tokio::task::spawn_blocking(move || loader::prepare(&tl))
        };
        // The rules are read meanwhile: on a node with thousands of
        // Services that takes seconds, and the hooks need only the base
        // chains (where to place the netfilter points), read on their own.
        let mut rules = {
            let tl = tl.clone();
            tokio::spawn(async move {
                let began = std::time::Instant::now();
                let r = kubeproxy::read_node().await;
                tl.done("rules read", began);
                r
            })
        };
        let chains = async {
            let began = std::time::Instant::now();
            let c = kubeproxy::read_base_chains().await;
            tl.done("base chains read", began);
            c
        };
        let net = async {
            let began = std::time::Instant::now();
            let n = NetInfo::read().await;
            tl.done("interfaces and routes", began);
            n
        };
        let (chains, net) = tokio::join!(chains, net);
        let kernel = facts
            .await
            .map_err(|e| anyhow!("reading the kernel BTF: {e}"))??;
        let prepared = prepared
            .await
            .map_err(|e| anyhow!("reading the kernel BTF: {e}"))?;
        let net = net.context("reading the node's interfaces")?;
        if let Some(i) = &common.iface
            && net.by_name(i).is_none()
        {
            return Err(anyhow!(UsageError(format!(
                "unknown interface '{i}' (not in this network namespace)"
            ))));
        }
        let prepared = prepared?;
        let rules_failed = |e| anyhow!("reading the node's rules: {e}");
        let (plan, read_first) = match chains {
            Some(chains) => (NfPlan::new(occupants(&chains)), None),
            // No nft to ask alone: the full read tells.
            None => {
                let r = (&mut rules).await.map_err(rules_failed)?;
                let chains = r.rulesets.iter().flat_map(|rs| &rs.base_chains);
                (NfPlan::new(occupants(chains)), Some(r))
            }
        };
        let mut tracer = Tracer::load(
            &LoadOptions {
                // With --all, the addresses come with the rules (below).
                targets: Targets::new(target.nets.clone(), target.all),
                port: target.port,
                proto: target.proto,
                trace_packets: common.packets,
                drop_events: 8,
                new_flows_per_sec: common.max_new_flows,
                new_flows_burst: common.flow_burst,
                arp: opts.arp,
                bgp: opts.bgp,
                tc_ifaces: net.bgp_ifaces(),
                plan: plan.clone(),
                debug_bpf: common.debug_bpf,
                empty: common.empty_programs,
                capture: opts.capture,
            },
            &kernel,
            prepared,
            &tl,
        )?;
        tracer.set_pod_ifs(&net.pod_ifaces())?;
        // Every hook is in place: flows that begin from now on are seen whole.
        let attached_ns = monotonic_ns();
        for n in &tracer.notices {
            eprintln!("lbpath: notice: {n}");
        }
        tracing::info!("attached: {}", tracer.attached.join("; "));
        tracing::info!(
            "hooks in place {:.1} ms after the start:{}",
            tl.elapsed().as_secs_f64() * 1000.0,
            tl.report()
        );
        // Else the list above has it.
        let read_after_hooks = !rules.is_finished();
        // Packets from now on wait in the ring buffer for the rules.
        let rules = match read_first {
            Some(r) => r,
            None => {
                let r = rules.await.map_err(rules_failed)?;
                if read_after_hooks {
                    tracing::info!(
                        "rules read {:.1} ms after the start",
                        tl.elapsed().as_secs_f64() * 1000.0
                    );
                }
                r
            }
        };
        for p in &rules.problems {
            tracing::warn!("rules: {p}");
        }
        if let Some(why) = rules.degraded_reason() {
            tracing::warn!(
                "the node's rules could not all be read: {why}; Service names and \"no rule\" verdicts may be missing"
            );
        }
        // What the rule watcher compares the next read with: the drop
        // rules, not a second copy of the whole ruleset.
        let baseline = rules::filter_rules(&rules);
        let ring = tracer.take_events()?;
        // SAFETY: the ring buffer owns its fd for as long as AsyncFd holds it.
        let ring = unsafe { AsyncFd::register(ring) }
            .map_err(|e| anyhow!("polling the ring buffer: {e}"))?;
        let reasons = tracer.caps.drop_reasons.then_some(kernel.drop_reasons);
        // The engine takes the watched addresses from the rules (--all).
        let engine = Engine::new(
            Targets::new(target.nets, target.all),
            Node {
                net,
                plan,
                drops: DropNames::new(reasons),
                rules,
                netns: tracer.node_netns,
                netfilter_links: tracer.caps.netfilter_links,
                attached_ns,
            },
            Filters {
                client: target.client,
                iface: common.iface.clone(),
            },
            opts.timing,
        );
        tracer.set_targets(&engine.targets)?;
        // Loading parsed the kernel's BTF and the object (megabytes, freed
        // by now): so RSS is what the session keeps.
        release_free_memory();
        let bpf_log = match &tracer.bpf_log {
            // SAFETY: the tracer keeps the descriptor open longer than this
            // AsyncFd lives (field order of Session).
            Some(l) => Some(
                unsafe { AsyncFd::register(l.fd()) }
                    .map_err(|e| anyhow!("polling the programs' log: {e}"))?,
            ),
            None => None,
        };
        Ok(Session {
            rules: RuleWatcher::start(baseline),
            tracer,
            engine,
            ring,
            bpf_log,
        })
    }

    /// Waits until the kernel has written records (or a packet socket has
    /// a BGP segment, or the programs logged), then takes them all.
    pub async fn next_events(&mut self) -> Result<Vec<Output>> {
        let mut out = Vec::new();
        let packets = self.tracer.packets.as_mut().map(|p| &mut p.rx);
        let has_packets = packets.is_some();
        let mut read = None;
        tokio::select! {
            r = self.rules.next() => read = r,
            guard = self.ring.readable_mut() => guard?.clear_ready(),
            seg = async { packets.unwrap().recv().await }, if has_packets => {
                if let Some(seg) = seg {
                    out.extend(self.engine.record(Record::Seg(Box::new(seg)), &self.tracer));
                }
            }
            guard = async { self.bpf_log.as_ref().unwrap().readable().await }, if self.bpf_log.is_some() => {
                guard?.clear_ready();
            }
        }
        if let Some(log) = &mut self.tracer.bpf_log {
            log.flush();
        }
        if let Some(read) = read {
            let (outs, targets_changed) = self.engine.rules_read(read, &self.tracer);
            out.extend(outs);
            if targets_changed && let Err(e) = self.tracer.set_targets(&self.engine.targets) {
                eprintln!("lbpath: notice: {e:#}");
            }
        }
        out.extend(self.drain());
        Ok(out)
    }

    /// Takes what the ring buffer holds now.
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

    /// Runs until `until`, Ctrl-C or SIGTERM, or the front end stops it;
    /// then reports what is still pending.
    pub async fn run(&mut self, until: Option<Instant>, fe: &mut impl FrontEnd) -> Result<()> {
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut refresh = tokio::time::interval(Duration::from_secs(2));
        // The programs wake this loop at most once a jiffy per CPU (a
        // wakeup is an IPI): records written after one are taken here.
        let mut drain = tokio::time::interval(DRAIN_EVERY);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.engine.wants_rules {
                self.rules.ask();
            }
            tokio::select! {
                outs = self.next_events() => if fe.show(self, outs?) { break },
                _ = drain.tick() => {
                    let outs = self.drain();
                    if fe.show(self, outs) {
                        break;
                    }
                }
                _ = tick.tick() => {
                    let mut outs = self.engine.tick(&self.tracer);
                    if let Ok(stats) = self.tracer.stats() {
                        outs.extend(self.engine.note_losses(&stats));
                    }
                    if fe.show(self, outs) {
                        break;
                    }
                    fe.tick(self);
                }
                _ = refresh.tick() => {
                    // A burst of flows leaves freed heap behind.
                    release_free_memory();
                    // New pods bring new veths.
                    if let Ok(ifs) = self.engine.refresh_net().await {
                        let _ = self.tracer.set_pod_ifs(&ifs);
                    }
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                _ = async { tokio::time::sleep_until(until.unwrap()).await }, if until.is_some() => break,
            }
        }
        let mut outs = self.drain();
        outs.extend(self.engine.finish(&self.tracer));
        fe.show(self, outs);
        Ok(())
    }

    /// Events lost in the kernel (ring buffer full) and cut by the per-flow bound.
    pub fn losses(&self) -> Result<(Stats, u64)> {
        Ok((self.tracer.stats()?, self.engine.dropped_events()))
    }
}

/// How often the ring buffer is read without a wakeup.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Gives freed heap pages back to the kernel. glibc keeps them otherwise
/// (only the top of the heap is trimmed by itself), and a DaemonSet's RSS
/// would stay at its busiest second's.
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the heap.
    unsafe {
        libc::malloc_trim(0);
    }
}
