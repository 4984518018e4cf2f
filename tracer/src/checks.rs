//! diagnose's static checks: instant, read-only facts about the node that
//! explain a broken LoadBalancer IP before any packet is seen.

use std::net::IpAddr;

use serde::Serialize;

use crate::{
    hints::Hint,
    kubeproxy::{NoEndpoints, ServicePort},
    netinfo::{IfRole, NetInfo, rp_filter_name},
    path::kind_label,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Info,
    Warn,
    Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: String,
    pub level: Level,
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_step: Option<String>,
}

fn f(check: &str, level: Level, text: String, next: Option<String>) -> Finding {
    Finding {
        check: check.into(),
        level,
        text,
        next_step: next,
    }
}

/// Node facts read from /proc/sys (the caller's namespace), so the checks
/// themselves stay pure.
#[derive(Debug, Clone, Default)]
pub struct Sysctls {
    pub ip_forward: Option<i64>,
    /// (interface, all, interface value) for interfaces that may receive LB traffic.
    pub rp_filter: Vec<(String, i64, i64)>,
    pub conntrack: Option<(u64, u64)>,
    /// arp_ignore / arp_announce of the uplinks the IP layer uses.
    pub arp: Vec<ArpConf>,
}

/// One interface's ARP sysctls, each as (all, interface); the kernel uses
/// the larger of the two.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ArpConf {
    pub iface: String,
    pub arp_ignore: (i64, i64),
    pub arp_announce: (i64, i64),
}

impl ArpConf {
    pub fn ignore(&self) -> i64 {
        self.arp_ignore.0.max(self.arp_ignore.1)
    }
    pub fn announce(&self) -> i64 {
        self.arp_announce.0.max(self.arp_announce.1)
    }
    /// "eth0: arp_ignore=0 (all=0, eth0=0), arp_announce=0 (all=0, eth0=0)".
    pub fn describe(&self) -> String {
        let i = &self.iface;
        format!(
            "{i}: arp_ignore={} (all={}, {i}={}), arp_announce={} (all={}, {i}={})",
            self.ignore(),
            self.arp_ignore.0,
            self.arp_ignore.1,
            self.announce(),
            self.arp_announce.0,
            self.arp_announce.1
        )
    }
}

impl Sysctls {
    pub fn read(net: &NetInfo) -> Self {
        use crate::netinfo::sysctl;
        // Where the IP layer receives: not the ports of a bridge or bond.
        let uplinks: Vec<&crate::netinfo::Iface> = net
            .ifaces
            .values()
            .filter(|i| {
                matches!(net.role(i.index), IfRole::Uplink | IfRole::Overlay) && net.is_l3(i.index)
            })
            .collect();
        let rp_filter = uplinks
            .iter()
            .map(|i| {
                let (all, dev, _) = crate::netinfo::rp_filter(&i.name);
                (i.name.clone(), all, dev)
            })
            .collect();
        let conf = |name: &str, key: &str| {
            (
                sysctl(&format!("ipv4/conf/all/{key}")).unwrap_or(0),
                sysctl(&format!("ipv4/conf/{name}/{key}")).unwrap_or(0),
            )
        };
        let arp = uplinks
            .iter()
            .filter(|i| net.role(i.index) == IfRole::Uplink)
            .map(|i| ArpConf {
                iface: i.name.clone(),
                arp_ignore: conf(&i.name, "arp_ignore"),
                arp_announce: conf(&i.name, "arp_announce"),
            })
            .collect();
        let conntrack = match (
            sysctl("netfilter/nf_conntrack_count"),
            sysctl("netfilter/nf_conntrack_max"),
        ) {
            (Some(c), Some(m)) => Some((c as u64, m as u64)),
            _ => None,
        };
        Self {
            ip_forward: sysctl("ipv4/ip_forward"),
            rp_filter,
            conntrack,
            arp,
        }
    }
}

pub fn run(
    lb: IpAddr,
    port: u16,
    services: &[ServicePort],
    kube_proxy_found: bool,
    rules_degraded: Option<&str>,
    net: &NetInfo,
    sys: &Sysctls,
) -> Vec<Finding> {
    let mut out = kube_proxy(lb, port, services, kube_proxy_found, rules_degraded);
    out.push(address(lb, net));
    out.extend(ip_forward(sys));
    out.extend(rp_filters(sys));
    out.extend(arp_flux(net, sys));
    out.extend(mtu(net));
    out.extend(conntrack(sys));
    out
}

/// kube-proxy's view of the IP: its Service ports, endpoints, and whether it
/// turns the traffic away.
fn kube_proxy(
    lb: IpAddr,
    port: u16,
    services: &[ServicePort],
    found: bool,
    degraded: Option<&str>,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let svcs: Vec<&ServicePort> = services
        .iter()
        .filter(|s| port == 0 || s.port == port)
        .collect();
    if let Some(why) = degraded {
        // Said whether or not a Service was found: one may be missing.
        out.push(f(
            "kube-proxy rules",
            Level::Warn,
            format!("the node's rules could not all be read: {why}"),
            Hint::RulesUnreadable.text(),
        ));
    }
    if svcs.is_empty() && degraded.is_some() {
        // Not a finding: the rule may be among what could not be read.
    } else if svcs.is_empty() {
        let extra = if found {
            ""
        } else {
            " (no kube-proxy ruleset found on this node at all: is kube-proxy running, or is a kube-proxy replacement in use?)"
        };
        out.push(f(
            "kube-proxy rules",
            Level::Problem,
            format!(
                "no kube-proxy rule for {lb}{}{extra}",
                if port != 0 {
                    format!(":{port}")
                } else {
                    String::new()
                }
            ),
            Hint::NoRule { lb }.text(),
        ));
    }
    for s in &svcs {
        out.push(service(lb, s));
    }
    out
}

fn service(lb: IpAddr, s: &ServicePort) -> Finding {
    let local = s.endpoints.iter().filter(|e| e.local == Some(true)).count();
    let locality = if s.endpoints.iter().any(|e| e.local.is_some()) {
        format!(", {local} on this node")
    } else {
        String::new()
    };
    let ranges = if s.source_ranges.is_empty() {
        String::new()
    } else {
        format!(", loadBalancerSourceRanges {}", s.source_ranges.join(", "))
    };
    let text = format!(
        "{lb}:{} → {} ({}, chain {}): {} endpoint{}{locality}{}{ranges}",
        s.port,
        s.service,
        kind_label(s.kind),
        s.entry_chain,
        s.endpoints.len(),
        if s.endpoints.len() == 1 { "" } else { "s" },
        if s.local_only {
            ", externalTrafficPolicy=Local"
        } else {
            ""
        }
    );
    match &s.no_endpoints {
        Some(NoEndpoints::Reject { rule }) => f(
            "kube-proxy rules",
            Level::Problem,
            format!("{text}: kube-proxy REJECTs it, the Service has no endpoints ({rule})"),
            Hint::NoEndpoints {
                service: &s.service,
            }
            .text(),
        ),
        Some(NoEndpoints::DropNoLocal { rule }) => f(
            "kube-proxy rules",
            Level::Problem,
            format!(
                "{text}: externalTrafficPolicy=Local and no endpoint on this node, kube-proxy DROPs it ({rule})"
            ),
            Hint::NoLocalEndpoint {
                service: &s.service,
            }
            .text(),
        ),
        None if s.local_only && local == 0 && s.endpoints.iter().any(|e| e.local.is_some()) => f(
            "kube-proxy rules",
            Level::Problem,
            format!("{text}: none of them on this node"),
            Hint::NoLocalEndpoint {
                service: &s.service,
            }
            .text(),
        ),
        None => f("kube-proxy rules", Level::Ok, text, None),
    }
}

/// Is the IP bound on this node (IPVS' kube-ipvs0, or someone added it)?
fn address(lb: IpAddr, net: &NetInfo) -> Finding {
    let holders: Vec<&str> = net
        .ifaces
        .values()
        .filter(|i| i.addrs.iter().any(|(a, _)| *a == lb))
        .map(|i| i.name.as_str())
        .collect();
    if holders.is_empty() {
        return f(
            "address",
            Level::Info,
            format!(
                "{lb} is not assigned to an interface here (normal for iptables/nftables kube-proxy with MetalLB)"
            ),
            None,
        );
    }
    let ipvs = holders.contains(&"kube-ipvs0");
    f(
        "address",
        Level::Info,
        format!(
            "{lb} is assigned to {}{}",
            holders.join(", "),
            if ipvs { " (kube-proxy IPVS mode)" } else { "" }
        ),
        None,
    )
}

fn ip_forward(sys: &Sysctls) -> Option<Finding> {
    match sys.ip_forward? {
        0 => Some(f(
            "ip_forward",
            Level::Problem,
            "net.ipv4.ip_forward=0: this node does not forward, DNATed traffic cannot reach pods"
                .into(),
            Hint::IpForwardOff.text(),
        )),
        _ => Some(f(
            "ip_forward",
            Level::Ok,
            "net.ipv4.ip_forward=1".into(),
            None,
        )),
    }
}

fn rp_filters(sys: &Sysctls) -> Vec<Finding> {
    sys.rp_filter
        .iter()
        .map(|(iface, all, dev)| {
            let eff = (*all).max(*dev);
            let level = if eff == 1 { Level::Warn } else { Level::Ok };
            let next = (eff == 1).then(|| Hint::RpFilterStrict.to_string());
            f(
                "rp_filter",
                level,
                format!(
                    "{iface}: rp_filter {} (all={all}, {iface}={dev})",
                    rp_filter_name(eff)
                ),
                next,
            )
        })
        .collect()
}

/// Two uplinks with addresses in one IPv4 subnet, with the kernel answering
/// ARP for any local address on any interface (arp_ignore=0): both answer
/// the same request, each with its own MAC (ARP flux).
fn arp_flux(net: &NetInfo, sys: &Sysctls) -> Option<Finding> {
    let subnet = |c: &ArpConf| -> Vec<ipnet::Ipv4Net> {
        net.by_name(&c.iface)
            .map(|i| {
                i.addrs
                    .iter()
                    .filter_map(|(ip, len)| match ip {
                        IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local() => {
                            ipnet::Ipv4Net::new(*v4, *len).ok().map(|n| n.trunc())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut shared: Vec<(&ArpConf, &ArpConf, ipnet::Ipv4Net)> = Vec::new();
    for (i, a) in sys.arp.iter().enumerate() {
        for b in &sys.arp[i + 1..] {
            let nb = subnet(b);
            if let Some(n) = subnet(a)
                .into_iter()
                .find(|n| nb.iter().any(|m| m.contains(n) || n.contains(m)))
            {
                shared.push((a, b, n));
            }
        }
    }
    let (a, b, n) = shared.first()?;
    let loose = |c: &ArpConf| c.ignore() == 0 || c.announce() == 0;
    let text = format!(
        "{} and {} are both on {n}: {}; {}",
        a.iface,
        b.iface,
        a.describe(),
        b.describe()
    );
    Some(if loose(a) || loose(b) {
        f(
            "arp",
            Level::Warn,
            format!(
                "{text}: the kernel answers ARP for its addresses on both interfaces, each with its own MAC (ARP flux)"
            ),
            Hint::ArpFlux {
                ifaces: &[a.iface.as_str(), b.iface.as_str()],
                speaker: false,
            }
            .text(),
        )
    } else {
        f("arp", Level::Ok, text, None)
    })
}

/// Pod path MTU against the uplink's.
fn mtu(net: &NetInfo) -> Option<Finding> {
    let up = net
        .default_route_ifaces()
        .iter()
        .filter_map(|i| net.ifaces.get(i))
        .map(|i| i.mtu)
        .min()?;
    let (name, pm) = net
        .ifaces
        .values()
        .filter(|i| matches!(net.role(i.index), IfRole::PodVeth | IfRole::Overlay))
        .map(|i| (i.name.clone(), i.mtu))
        .min_by_key(|(_, m)| *m)?;
    Some(if pm < up {
        f(
            "mtu",
            Level::Warn,
            format!(
                "pod path MTU {pm} ({name}) is smaller than the uplink MTU {up}: full-size packets from outside need fragmentation or PMTU discovery"
            ),
            Hint::PodMtuSmaller.text(),
        )
    } else {
        f(
            "mtu",
            Level::Ok,
            format!("pod path MTU {pm} ({name}), uplink MTU {up}"),
            None,
        )
    })
}

fn conntrack(sys: &Sysctls) -> Option<Finding> {
    let (count, max) = sys.conntrack?;
    let pct = (count * 100).checked_div(max).unwrap_or(0);
    let level = if pct >= 90 {
        Level::Problem
    } else if pct >= 75 {
        Level::Warn
    } else {
        Level::Ok
    };
    Some(f(
        "conntrack",
        level,
        format!("conntrack table {count}/{max} ({pct}%)"),
        (pct >= 75).then(|| Hint::ConntrackFull { count, max }.to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netinfo::{Iface, Route};

    fn net(pod_mtu: u32, lb_local: bool) -> NetInfo {
        let mut n = NetInfo::default();
        let mut eth0 = Iface {
            index: 2,
            name: "eth0".into(),
            kind: "".into(),
            mtu: 1500,
            addrs: vec![("192.0.2.2".parse().unwrap(), 24)],
            up: true,
            ..Default::default()
        };
        if lb_local {
            eth0.addrs.push(("192.0.2.240".parse().unwrap(), 32));
        }
        n.ifaces.insert(2, eth0);
        n.ifaces.insert(
            4,
            Iface {
                index: 4,
                name: "vethpod".into(),
                kind: "veth".into(),
                mtu: pod_mtu,
                up: true,
                ..Default::default()
            },
        );
        n.routes.push(Route {
            dst: "0.0.0.0".parse().unwrap(),
            prefix: 0,
            oif: Some(2),
            gw: None,
            table: 254,
        });
        n
    }

    fn svc(no: Option<NoEndpoints>, local_only: bool, local: Option<bool>) -> ServicePort {
        crate::path::web_service(no, local_only, local)
    }

    fn level_of(fs: &[Finding], check: &str) -> Level {
        fs.iter()
            .filter(|f| f.check == check)
            .map(|f| f.level)
            .max()
            .unwrap()
    }

    #[test]
    fn healthy_node() {
        let sys = Sysctls {
            ip_forward: Some(1),
            rp_filter: vec![("eth0".into(), 0, 2)],
            conntrack: Some((10, 1000)),
            ..Default::default()
        };
        let fs = run(
            "192.0.2.240".parse().unwrap(),
            80,
            &[svc(None, false, None)],
            true,
            None,
            &net(1500, false),
            &sys,
        );
        assert!(fs.iter().all(|f| f.level <= Level::Info), "{fs:?}");
        assert!(fs.iter().any(|f| f.text.contains("default/web:http")));
    }

    #[test]
    fn problems_are_named() {
        let sys = Sysctls {
            ip_forward: Some(0),
            rp_filter: vec![("eth0".into(), 1, 0)],
            conntrack: Some((950, 1000)),
            ..Default::default()
        };
        let lb = "192.0.2.240".parse().unwrap();
        let fs = run(lb, 80, &[], false, None, &net(1400, true), &sys);
        assert_eq!(level_of(&fs, "kube-proxy rules"), Level::Problem);
        assert!(fs[0].text.contains("no kube-proxy rule for 192.0.2.240:80"));
        assert_eq!(level_of(&fs, "ip_forward"), Level::Problem);
        assert_eq!(level_of(&fs, "rp_filter"), Level::Warn);
        assert_eq!(level_of(&fs, "mtu"), Level::Warn);
        assert_eq!(level_of(&fs, "conntrack"), Level::Problem);
        assert!(
            fs.iter()
                .any(|f| f.check == "address" && f.text.contains("eth0"))
        );

        let fs = run(
            lb,
            80,
            &[svc(
                Some(NoEndpoints::Reject { rule: "r".into() }),
                false,
                None,
            )],
            true,
            None,
            &net(1500, false),
            &sys,
        );
        assert!(
            fs.iter()
                .any(|f| f.level == Level::Problem && f.text.contains("no endpoints"))
        );
        let fs = run(
            lb,
            80,
            &[svc(None, true, Some(false))],
            true,
            None,
            &net(1500, false),
            &sys,
        );
        assert!(
            fs.iter()
                .any(|f| f.level == Level::Problem && f.text.contains("none of them on this node"))
        );
    }

    /// Two uplinks on one subnet: a warning naming both and the sysctls
    /// while the kernel answers on both, fine once arp_ignore/announce are set.
    #[test]
    fn two_uplinks_on_one_subnet_with_loose_arp() {
        let mut n = net(1500, false);
        n.ifaces.insert(
            5,
            Iface {
                index: 5,
                name: "eth2".into(),
                mtu: 1500,
                addrs: vec![("192.0.2.4".parse().unwrap(), 24)],
                up: true,
                ..Default::default()
            },
        );
        let conf = |iface: &str, ignore, announce| ArpConf {
            iface: iface.into(),
            arp_ignore: (0, ignore),
            arp_announce: (0, announce),
        };
        let mut sys = Sysctls {
            arp: vec![conf("eth0", 0, 0), conf("eth2", 0, 0)],
            ..Default::default()
        };
        let fs = run(
            "192.0.2.240".parse().unwrap(),
            80,
            &[svc(None, false, None)],
            true,
            None,
            &n,
            &sys,
        );
        let a = fs.iter().find(|f| f.check == "arp").expect("arp check");
        assert_eq!(a.level, Level::Warn, "{a:?}");
        assert!(
            a.text.contains("eth0 and eth2 are both on 192.0.2.0/24")
                && a.text.contains("arp_ignore=0 (all=0, eth2=0)"),
            "{a:?}"
        );
        let next = a.next_step.as_deref().unwrap();
        assert!(
            next.contains("net.ipv4.conf.all.arp_ignore=1")
                && next.contains("net.ipv4.conf.all.arp_announce=2"),
            "{next}"
        );
        sys.arp = vec![conf("eth0", 1, 2), conf("eth2", 1, 2)];
        let fs = run(
            "192.0.2.240".parse().unwrap(),
            80,
            &[svc(None, false, None)],
            true,
            None,
            &n,
            &sys,
        );
        let a = fs.iter().find(|f| f.check == "arp").expect("arp check");
        assert_eq!(a.level, Level::Ok, "{a:?}");
        // One uplink per subnet: nothing to say.
        sys.arp.pop();
        let fs = run(
            "192.0.2.240".parse().unwrap(),
            80,
            &[],
            true,
            None,
            &n,
            &sys,
        );
        assert!(!fs.iter().any(|f| f.check == "arp"), "{fs:?}");
    }

    #[test]
    fn unreadable_rules_are_said_not_taken_for_a_missing_rule() {
        let sys = Sysctls {
            ip_forward: Some(1),
            rp_filter: vec![],
            conntrack: None,
            ..Default::default()
        };
        let lb = "192.0.2.240".parse().unwrap();
        let why = "iptables-nft-save -c: failed (exit status: 4): Permission denied";
        let fs = run(lb, 80, &[], false, Some(why), &net(1500, false), &sys);
        let kp: Vec<_> = fs
            .iter()
            .filter(|f| f.check == "kube-proxy rules")
            .collect();
        assert_eq!(kp.len(), 1, "{fs:?}");
        assert_eq!(kp[0].level, Level::Warn);
        assert!(kp[0].text.contains("Permission denied"), "{kp:?}");
        assert!(!kp[0].text.contains("no kube-proxy rule"), "{kp:?}");
    }
}
