//! The iptables rules kube-proxy's IPVS mode writes around its ipsets, as
//! far as they decide whether a LoadBalancer IP's traffic is masqueraded.
//!
//! From kubernetes/pkg/proxy/ipvs/proxier.go (`ipsetWithIptablesChain`,
//! `writeIptablesRules`, `iptablesJumpChain`), nat table:
//!
//! ```text
//! -A PREROUTING  -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
//! -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
//! -A KUBE-SERVICES -m comment --comment "Kubernetes service lb portal" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER
//! -A KUBE-LOAD-BALANCER -m comment --comment "Kubernetes service load balancer ip + port with externalTrafficPolicy=local" -m set --match-set KUBE-LOAD-BALANCER-LOCAL dst,dst -j RETURN
//! -A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
//! -A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for masquerade and filter purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst -j KUBE-MARK-MASQ
//! -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
//! -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
//! -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
//! -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
//! ```
//!
//! So a LoadBalancer IP:port in KUBE-LOAD-BALANCER is marked, and
//! masqueraded on its way to the pod, unless it is also in
//! KUBE-LOAD-BALANCER-LOCAL (externalTrafficPolicy: Local keeps the
//! client's address). None of these rules names a Service.

use serde::Serialize;

use super::ipset::kube;

/// What the nat table holds of that layout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NatLayout {
    /// KUBE-SERVICES is entered from PREROUTING.
    pub services_hooked: bool,
    /// KUBE-SERVICES sends KUBE-LOAD-BALANCER members to the
    /// KUBE-LOAD-BALANCER chain.
    pub lb_chain: bool,
    /// KUBE-LOAD-BALANCER returns for KUBE-LOAD-BALANCER-LOCAL members
    /// before marking.
    pub lb_local_return: bool,
    /// KUBE-LOAD-BALANCER jumps to KUBE-MARK-MASQ for the rest.
    pub lb_marks: bool,
    /// KUBE-SERVICES marks KUBE-EXTERNAL-IP members.
    pub external_ip_marks: bool,
    /// The mark KUBE-MARK-MASQ sets, as iptables-save prints it
    /// ("0x4000/0x4000").
    pub masq_mark: Option<String>,
    /// KUBE-POSTROUTING (entered from POSTROUTING) masquerades marked packets.
    pub postrouting_masquerade: bool,
}

impl NatLayout {
    /// Whether kube-proxy's IPVS-mode rules are there at all.
    pub fn present(&self) -> bool {
        self.lb_chain || self.postrouting_masquerade || self.masq_mark.is_some()
    }

    /// Whether traffic to a LoadBalancer IP:port is masqueraded, given its
    /// membership of KUBE-LOAD-BALANCER(-LOCAL); None when the rules do not
    /// capture it at all.
    pub fn lb_masqueraded(&self, in_lb_set: bool, in_local_set: bool) -> Option<bool> {
        if !(in_lb_set && self.lb_chain && self.services_hooked) {
            return None;
        }
        let marked = self.lb_marks && !(in_local_set && self.lb_local_return);
        Some(marked && self.masq_mark.is_some() && self.postrouting_masquerade)
    }

    /// The same for an externalIP (KUBE-EXTERNAL-IP is masqueraded,
    /// KUBE-EXTERNAL-IP-LOCAL is not).
    pub fn external_masqueraded(&self, in_masq_set: bool) -> Option<bool> {
        self.services_hooked.then_some(
            in_masq_set
                && self.external_ip_marks
                && self.masq_mark.is_some()
                && self.postrouting_masquerade,
        )
    }
}

/// Reads the nat table of `iptables-save` output (any other table is
/// skipped). Unknown rules are ignored: only the layout above matters.
pub fn parse_nat(save: &str) -> NatLayout {
    let mut l = NatLayout::default();
    let mut in_nat = false;
    let mut postrouting_hooked = false;
    let mut postrouting_masq = false;
    for line in save.lines() {
        let line = line.trim();
        if let Some(t) = line.strip_prefix('*') {
            in_nat = t == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        // Counters ("[12:345] -A …") when saved with -c.
        let line = match line.strip_prefix('[') {
            Some(rest) => rest.split_once(']').map_or("", |(_, r)| r.trim_start()),
            None => line,
        };
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let w: Vec<&str> = rule.split_whitespace().collect();
        let Some((&chain, args)) = w.split_first() else {
            continue;
        };
        let target = args
            .iter()
            .position(|a| *a == "-j")
            .and_then(|i| args.get(i + 1))
            .copied()
            .unwrap_or("");
        let match_set = args
            .iter()
            .position(|a| *a == "--match-set")
            .and_then(|i| args.get(i + 1).zip(args.get(i + 2)))
            .map(|(s, dir)| (super::ipset::kube_name(s), *dir));
        let set_is = |name: &str| match_set.as_ref().is_some_and(|(s, _)| s == name);
        match (chain, target) {
            ("PREROUTING", "KUBE-SERVICES") => l.services_hooked = true,
            ("POSTROUTING", "KUBE-POSTROUTING") => postrouting_hooked = true,
            ("KUBE-SERVICES", "KUBE-LOAD-BALANCER") if set_is(kube::LOAD_BALANCER) => {
                l.lb_chain = true
            }
            ("KUBE-SERVICES", "KUBE-MARK-MASQ") if set_is(kube::EXTERNAL_IP) => {
                l.external_ip_marks = true
            }
            ("KUBE-LOAD-BALANCER", "RETURN") if set_is(kube::LOAD_BALANCER_LOCAL) => {
                l.lb_local_return = true
            }
            // Only the unconditional mark: the firewall variants of older
            // releases jump elsewhere first.
            ("KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ") if match_set.is_none() => l.lb_marks = true,
            ("KUBE-MARK-MASQ", "MARK") => {
                l.masq_mark = args
                    .iter()
                    .position(|a| matches!(*a, "--set-xmark" | "--or-mark" | "--set-mark"))
                    .and_then(|i| args.get(i + 1))
                    .map(|m| m.to_string());
            }
            ("KUBE-POSTROUTING", "MASQUERADE") => postrouting_masq = true,
            _ => {}
        }
    }
    l.postrouting_masquerade = postrouting_hooked && postrouting_masq;
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kube-proxy (IPVS mode, v1.30) on a node with one LoadBalancer, as
    /// iptables-nft-save prints it.
    const SAVE: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A KUBE-LOAD-BALANCER -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-LOAD-BALANCER - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-LOAD-BALANCER -m comment --comment "Kubernetes service load balancer ip + port with externalTrafficPolicy=local" -m set --match-set KUBE-LOAD-BALANCER-LOCAL dst,dst -j RETURN
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN
-A KUBE-SERVICES -m comment --comment "Kubernetes service lb portal" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-LOAD-BALANCER dst,dst -j ACCEPT
COMMIT
"#;

    #[test]
    fn reads_the_lb_layout() {
        let l = parse_nat(SAVE);
        assert!(l.present());
        assert!(l.services_hooked && l.lb_chain && l.lb_local_return && l.lb_marks);
        assert!(!l.external_ip_marks);
        assert_eq!(l.masq_mark.as_deref(), Some("0x4000/0x4000"));
        assert!(l.postrouting_masquerade);
        // Cluster-wide LB: masqueraded; Local: the client address is kept.
        assert_eq!(l.lb_masqueraded(true, false), Some(true));
        assert_eq!(l.lb_masqueraded(true, true), Some(false));
        // Not captured by the LB rules at all.
        assert_eq!(l.lb_masqueraded(false, false), None);
        assert_eq!(l.external_masqueraded(true), Some(false));
    }

    #[test]
    fn counters_and_missing_pieces() {
        let with_counters = SAVE.replace("-A KUBE-", "[3:180] -A KUBE-");
        assert_eq!(parse_nat(&with_counters), parse_nat(SAVE));
        // Without the POSTROUTING hook nothing is masqueraded.
        let unhooked = SAVE.replace("-j KUBE-POSTROUTING", "-j ACCEPT");
        assert_eq!(
            parse_nat(&unhooked).lb_masqueraded(true, false),
            Some(false)
        );
        // Rules in the filter table alone are not the nat layout.
        let filter_only = SAVE.split("*nat").next().unwrap();
        assert!(!parse_nat(filter_only).present());
        assert_eq!(parse_nat(""), NatLayout::default());
    }
}
