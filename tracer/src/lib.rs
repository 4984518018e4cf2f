//! lbpath: the path of packets to a Kubernetes LoadBalancer IP through this
//! node, from eBPF hooks that load on locked-down kernels.
//!
//! - `btf`: kernel struct offsets and enum names from the running kernel;
//! - `loader`: loading and attaching the kernel programs (tp_btf, netfilter);
//! - `nfplan`: where to observe each netfilter hook;
//! - `events`: ring-buffer records.

pub mod btf;
pub mod events;
pub mod loader;
pub mod nfplan;

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
