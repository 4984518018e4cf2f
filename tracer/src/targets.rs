//! What lbpath watches: LoadBalancer IPs and ranges (a MetalLB
//! IPAddressPool), given on the command line or, with `--all`, every
//! LoadBalancer and external IP kube-proxy's rules name on the node,
//! refreshed as the rules change.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::kubeproxy::{AddressKind, NodeRules};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    nets: Vec<IpNet>,
    /// Taken from kube-proxy's rules (`--all`).
    all: bool,
}

impl Targets {
    pub fn new(mut nets: Vec<IpNet>, all: bool) -> Self {
        nets.sort();
        nets.dedup();
        Self { nets, all }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&ip))
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    pub fn all(&self) -> bool {
        self.all
    }

    /// The one address watched, when it is just one.
    pub fn single(&self) -> Option<IpAddr> {
        match self.nets.as_slice() {
            [n] if !self.all && n.prefix_len() == n.max_prefix_len() => Some(n.addr()),
            _ => None,
        }
    }

    /// Whether any IPv4 (IPv6) address is or may be watched.
    pub fn has_v4(&self) -> bool {
        self.all || self.nets.iter().any(|n| n.addr().is_ipv4())
    }

    pub fn has_v6(&self) -> bool {
        self.all || self.nets.iter().any(|n| n.addr().is_ipv6())
    }

    /// With `--all`: the LoadBalancer and external IPs in `rules`. Returns
    /// whether the set changed.
    pub fn refresh(&mut self, rules: &NodeRules) -> bool {
        if !self.all {
            return false;
        }
        let mut nets: Vec<IpNet> = rules
            .rulesets
            .iter()
            .flat_map(|r| &r.services)
            .filter(|s| {
                matches!(
                    s.kind,
                    AddressKind::LoadBalancer | AddressKind::ExternalIp | AddressKind::External
                )
            })
            .map(|s| IpNet::from(s.address))
            .collect();
        nets.sort();
        nets.dedup();
        let changed = nets != self.nets;
        self.nets = nets;
        changed
    }

    /// For messages: "192.0.2.240", "192.0.2.240, 192.0.2.0/28", "every
    /// LoadBalancer IP kube-proxy names (3)".
    pub fn describe(&self) -> String {
        if self.all {
            return format!(
                "every LoadBalancer/external IP kube-proxy names ({} now)",
                self.nets.len()
            );
        }
        self.nets
            .iter()
            .map(|n| {
                if n.prefix_len() == n.max_prefix_len() {
                    n.addr().to_string()
                } else {
                    n.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The watched single addresses (for per-IP checks and ARP analysis).
    /// Ranges are expanded only when small.
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.nets
            .iter()
            .flat_map(|n| {
                let hosts: Vec<IpAddr> = if n.prefix_len() == n.max_prefix_len() {
                    vec![n.addr()]
                } else if n.max_prefix_len() - n.prefix_len() <= 8 {
                    n.hosts().collect()
                } else {
                    Vec::new()
                };
                hosts
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(nets: &[&str]) -> Targets {
        Targets::new(nets.iter().map(|n| n.parse().unwrap()).collect(), false)
    }

    #[test]
    fn membership_and_description() {
        let one = t(&["192.0.2.240/32"]);
        assert_eq!(one.single(), Some("192.0.2.240".parse().unwrap()));
        assert_eq!(one.describe(), "192.0.2.240");
        let pool = t(&["192.0.2.240/32", "192.0.2.0/28"]);
        assert_eq!(pool.single(), None);
        assert!(pool.contains("192.0.2.9".parse().unwrap()));
        assert!(!pool.contains("192.0.2.99".parse().unwrap()));
        assert_eq!(pool.describe(), "192.0.2.0/28, 192.0.2.240");
        assert!(pool.has_v4() && !pool.has_v6());
        assert_eq!(pool.addresses().len(), 15);
        // A /16 is not expanded for per-address checks.
        assert!(t(&["10.0.0.0/16"]).addresses().is_empty());
    }
}
