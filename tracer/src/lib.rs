//! lbpath: the path of packets to a Kubernetes LoadBalancer IP through this
//! node, from eBPF hooks that load on locked-down kernels.
//!
//! - `btf`: kernel struct offsets and enum names from the running kernel;
//! - `loader`: loading and attaching the kernel programs (tp_btf, netfilter);
//! - `nfplan`: where to observe each netfilter hook;
//! - `events`: ring-buffer records;
//! - `drops`: naming drops (kernel reasons, or the freeing function);
//! - `assembler` + `path`: flows from events, hops and verdicts (pure);
//! - `hints`: what to do about each cause, one table for every output;
//! - `kubeproxy`: the node's kube-proxy rules (iptables, nftables), read-only;
//! - `rules`: re-reading them off the event loop when they change;
//! - `targets`: the LB IPs and ranges watched;
//! - `netinfo`: interfaces, routes, sysctls;
//! - `arp`, `bgp`, `wire`: the MetalLB layers (L2 ARP, BGP sessions);
//! - `render`: text and JSON from one model, `render_wrap` fits its lines
//!   to the width; `escape`: untrusted text made visible;
//! - `engine`: the node's view and the live state built from records;
//! - `tally`: what is counted (totals, metrics); `metrics`: the
//!   `--metrics` HTTP endpoint;
//! - `session`: load, attach and the record loop, shared by the commands;
//! - `timeline`: how long each step of the start took (`-v`);
//! - `watch`, `diagnose` (+ `checks`), `cli`: the commands.

pub mod arp;
pub mod assembler;
pub mod bgp;
pub mod btf;
pub mod checks;
pub mod cli;
pub mod conntrack;
pub mod diagnose;
pub mod drops;
pub mod engine;
pub mod escape;
pub mod events;
pub mod hints;
pub mod ipvs;
pub mod kubeproxy;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod netinfo;
pub mod nfplan;
pub mod path;
pub mod pcap;
pub mod render;
pub mod render_wrap;
pub mod rules;
pub mod session;
pub mod tally;
pub mod targets;
pub mod timeline;
pub mod watch;
pub mod wire;

use std::fmt;

/// An error the user can fix (bad input, missing privilege, unsupported
/// kernel): one line, exit code 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
