//! The node's rules, read off the event loop. A background task re-reads
//! them when the nftables generation changes (one netlink query a second;
//! iptables-nft rules live in nftables too), when legacy iptables tables
//! exist every 30 s, and when the engine asks (a netfilter drop to pin on a
//! rule) at most twice a second. Each read goes to the engine with the
//! DROP/REJECT counters that moved since the read before: the ring buffer
//! is never left waiting on `iptables-save` or `nft`, however big the
//! ruleset.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::Arc,
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};

use crate::kubeproxy::{self, FilterRule, NodeRules};

/// How often the nftables generation is checked.
const CHECK: Duration = Duration::from_secs(1);
/// Legacy iptables has no generation to watch: re-read this often.
const LEGACY_REREAD: Duration = Duration::from_secs(30);
/// Reads asked for by the engine are this far apart at least.
const MIN_GAP: Duration = Duration::from_millis(500);

/// One read of the node's rules.
#[derive(Debug)]
pub struct RuleRead {
    pub rules: Arc<NodeRules>,
    /// DROP/REJECT rules whose counters moved since the read before.
    pub moved: Vec<(FilterRule, u64)>,
    /// When the read started: drops seen before it are covered.
    pub started: std::time::Instant,
}

pub struct RuleWatcher {
    ask: mpsc::Sender<()>,
    reads: mpsc::Receiver<RuleRead>,
}

impl RuleWatcher {
    /// Starts watching; `baseline` holds the drop rules of the read made
    /// at start ([`filter_rules`]).
    pub fn start(baseline: Vec<FilterRule>) -> Self {
        let (ask, asks) = mpsc::channel(1);
        // One read waits at most: each can be a big ruleset.
        let (send, reads) = mpsc::channel(1);
        tokio::spawn(watch(asks, send, baseline));
        Self { ask, reads }
    }

    /// Asks for a read soon (several asks before it happens make one).
    pub fn ask(&self) {
        let _ = self.ask.try_send(());
    }

    pub async fn next(&mut self) -> Option<RuleRead> {
        self.reads.recv().await
    }
}

/// Every drop and reject rule of a read, with its counters.
pub fn filter_rules(r: &NodeRules) -> Vec<FilterRule> {
    r.rulesets
        .iter()
        .flat_map(|rs| rs.filter_rules.iter().cloned())
        .collect()
}

async fn watch(
    mut asks: mpsc::Receiver<()>,
    send: mpsc::Sender<RuleRead>,
    mut baseline: Vec<FilterRule>,
) {
    let mut generation = nft_generation();
    let mut last = Instant::now();
    let mut check = tokio::time::interval(CHECK);
    loop {
        let asked = tokio::select! {
            a = asks.recv() => match a {
                Some(()) => true,
                None => return,
            },
            _ = check.tick() => false,
        };
        if asked {
            tokio::time::sleep_until(last + MIN_GAP).await;
        } else {
            let now = nft_generation();
            let legacy_due = has_legacy_tables() && last.elapsed() >= LEGACY_REREAD;
            if now == generation && !legacy_due {
                continue;
            }
            generation = now;
        }
        let started = std::time::Instant::now();
        let rules = kubeproxy::read_node().await;
        last = Instant::now();
        let after = filter_rules(&rules);
        let moved = kubeproxy::counter_deltas(&baseline, &after);
        baseline = after;
        let read = RuleRead {
            rules: Arc::new(rules),
            moved,
            started,
        };
        if send.send(read).await.is_err() {
            return;
        }
    }
}

fn has_legacy_tables() -> bool {
    ["/proc/net/ip_tables_names", "/proc/net/ip6_tables_names"]
        .iter()
        .any(|f| std::fs::read_to_string(f).is_ok_and(|t| !t.trim().is_empty()))
}

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;

/// The nftables ruleset generation of this network namespace: it changes
/// with every ruleset change. None when nf_tables cannot be asked.
pub fn nft_generation() -> Option<u32> {
    // SAFETY: plain socket(2); checked.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if raw < 0 {
        return None;
    }
    // SAFETY: a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: valid option of the right size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            size_of::<libc::timeval>() as u32,
        )
    };
    let req = getgen_request();
    // SAFETY: sending our buffer to the kernel (address: the kernel, 0).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            req.as_ptr() as *const libc::c_void,
            req.len(),
            0,
            &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return None;
    }
    let mut buf = [0u8; 512];
    // SAFETY: receiving into our buffer.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            0,
        )
    };
    if n <= 0 {
        return None;
    }
    parse_generation(&buf[..n as usize])
}

/// nlmsghdr + nfgenmsg for NFT_MSG_GETGEN.
fn getgen_request() -> Vec<u8> {
    let len: u32 = 16 + 4;
    let mut m = Vec::with_capacity(len as usize);
    m.extend(len.to_ne_bytes());
    m.extend(((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    m.extend(NLM_F_REQUEST.to_ne_bytes());
    m.extend(1u32.to_ne_bytes()); // seq
    m.extend(0u32.to_ne_bytes()); // pid
    // nfgenmsg: family AF_UNSPEC, version NFNETLINK_V0, res_id 0.
    m.extend([0u8, 0, 0, 0]);
    m
}

/// NFTA_GEN_ID of a NEWGEN answer (big-endian u32 attribute).
fn parse_generation(msg: &[u8]) -> Option<u32> {
    let len = u32::from_ne_bytes(msg.get(0..4)?.try_into().ok()?) as usize;
    let ty = u16::from_ne_bytes(msg.get(4..6)?.try_into().ok()?);
    if ty == NLMSG_ERROR || len > msg.len() || len < 20 {
        return None;
    }
    let mut at = 20;
    while at + 4 <= len {
        let alen = u16::from_ne_bytes(msg.get(at..at + 2)?.try_into().ok()?) as usize;
        let atype = u16::from_ne_bytes(msg.get(at + 2..at + 4)?.try_into().ok()?) & 0x3fff;
        if alen < 4 {
            return None;
        }
        if atype == NFTA_GEN_ID && alen >= 8 {
            return Some(u32::from_be_bytes(
                msg.get(at + 4..at + 8)?.try_into().ok()?,
            ));
        }
        at += (alen + 3) & !3;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_answers_parse() {
        let mut m = Vec::new();
        m.extend(36u32.to_ne_bytes());
        m.extend(((NFNL_SUBSYS_NFTABLES << 8) | 15).to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend([0u8; 4]);
        // NFTA_GEN_ID = 0x01020304, then another attribute.
        m.extend(8u16.to_ne_bytes());
        m.extend(NFTA_GEN_ID.to_ne_bytes());
        m.extend(0x0102_0304u32.to_be_bytes());
        m.extend(8u16.to_ne_bytes());
        m.extend(2u16.to_ne_bytes());
        m.extend(7u32.to_be_bytes());
        assert_eq!(parse_generation(&m), Some(0x0102_0304));
        assert_eq!(parse_generation(&m[..18]), None);
        let req = getgen_request();
        assert_eq!(req.len(), 20);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 20);
    }
}
