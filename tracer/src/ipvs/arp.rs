//! The ARP sysctls that decide whether a node answers ARP for addresses it
//! holds on another interface — kube-ipvs0 holds every LoadBalancer IP in
//! IPVS mode, so without "strictARP" (kube-proxy's `ipvs.strictARP`, which
//! sets arp_ignore=1 and arp_announce=2 on "all") every node answers for
//! every LB IP and fights the MetalLB speaker.
//!
//! The kernel applies both as the maximum of `all` and the interface
//! (`IN_DEV_ARP_IGNORE` / `IN_DEV_ARP_ANNOUNCE` are `IN_DEV_MAXCONF`,
//! include/linux/inetdevice.h). Read in the calling thread's network
//! namespace.

use serde::Serialize;

use crate::netinfo::sysctl;

/// One knob: its `all` value, the interface's, and what the kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Knob {
    pub all: i64,
    pub iface: i64,
    pub effective: i64,
}

impl Knob {
    pub fn new(all: i64, iface: i64) -> Self {
        Self {
            all,
            iface,
            effective: all.max(iface),
        }
    }
}

/// arp_ignore and arp_announce of one interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArpConf {
    pub iface: String,
    pub arp_ignore: Knob,
    pub arp_announce: Knob,
}

impl ArpConf {
    /// Reads them; None when the interface has no IPv4 configuration here.
    pub fn read(iface: &str) -> Option<Self> {
        let get = |dev: &str, knob: &str| sysctl(&format!("ipv4/conf/{dev}/{knob}"));
        Some(Self::from_values(
            iface,
            (get("all", "arp_ignore")?, get(iface, "arp_ignore")?),
            (get("all", "arp_announce")?, get(iface, "arp_announce")?),
        ))
    }

    /// From (all, interface) pairs.
    pub fn from_values(iface: &str, ignore: (i64, i64), announce: (i64, i64)) -> Self {
        Self {
            iface: iface.to_string(),
            arp_ignore: Knob::new(ignore.0, ignore.1),
            arp_announce: Knob::new(announce.0, announce.1),
        }
    }

    /// Whether a request arriving on this interface is answered for an
    /// address held by another interface (an LB IP on kube-ipvs0): yes with
    /// arp_ignore 0 (any local address) and 3 (any but scope host); 1 and
    /// 2 want the address on the receiving interface, 8 never answers, 4–7
    /// are reserved and answer nothing (arp_ignore() in net/ipv4/arp.c).
    pub fn answers_for_other_interfaces(&self) -> bool {
        matches!(self.arp_ignore.effective, 0 | 3)
    }

    /// kube-proxy's strictARP in effect here: arp_ignore ≥ 1 and
    /// arp_announce = 2 (announce only addresses of the outgoing interface).
    pub fn strict(&self) -> bool {
        !self.answers_for_other_interfaces() && self.arp_announce.effective >= 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_larger_value_applies() {
        let off = ArpConf::from_values("eth0", (0, 0), (0, 0));
        assert!(off.answers_for_other_interfaces() && !off.strict());
        // strictARP as kube-proxy sets it: on "all".
        let strict = ArpConf::from_values("eth0", (1, 0), (2, 0));
        assert_eq!(strict.arp_ignore.effective, 1);
        assert!(!strict.answers_for_other_interfaces() && strict.strict());
        // The interface alone can make it strict too.
        let dev = ArpConf::from_values("eth0", (0, 1), (0, 2));
        assert!(dev.strict());
        // 3 still answers for global addresses on other interfaces.
        assert!(ArpConf::from_values("eth0", (3, 0), (2, 2)).answers_for_other_interfaces());
        assert!(!ArpConf::from_values("eth0", (0, 8), (0, 0)).answers_for_other_interfaces());
    }

    #[test]
    fn reads_this_namespace() {
        // lo always has an IPv4 configuration.
        let c = ArpConf::read("lo").expect("lo's sysctls");
        assert_eq!(
            c.arp_ignore.effective,
            c.arp_ignore.all.max(c.arp_ignore.iface)
        );
        assert!(ArpConf::read("no-such-iface-lbpath").is_none());
    }
}
