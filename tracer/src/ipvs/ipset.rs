//! ipsets as `ipset save` prints them (the same text as `ipset list -o
//! save`), and what kube-proxy's IPVS mode keeps in them.
//!
//! Why the tool and not netlink (NFNL_SUBSYS_IPSET): the ipset netlink
//! protocol has a version handshake and per-type nested attributes that
//! change between set types and kernel revisions; the `ipset` tool (which
//! kube-proxy itself drives, pkg/proxy/ipvs/ipset/ipset.go) already speaks
//! every revision, and its save format is stable, line-based and what an
//! operator would paste into a bug report. lbpath reads the node's
//! iptables the same way (`iptables-save`).
//!
//! kube-proxy's set names and purposes are the constants of
//! kubernetes/pkg/proxy/ipvs/ipset.go (`kubeLoadBalancerSet` =
//! "KUBE-LOAD-BALANCER", "Kubernetes service lb portal", ...); IPv6 sets
//! have "KUBE-6-" instead of "KUBE-" (`NewIPSet`). An entry of a
//! hash:ip,port set is "IP,proto:port" (`Entry.String()`). kube-proxy gives
//! the sets a purpose but never names a Service in them: it creates sets
//! without the `comment` extension and adds bare entries (`runner.AddEntry`
//! in ipset/ipset.go). An entry comment is therefore only read as a Service
//! name when someone added one (see [`service_name_of_comment`]).

use std::{fmt, net::IpAddr};

use serde::Serialize;

use crate::kubeproxy::Proto;

/// One set and its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpSet {
    pub name: String,
    /// "hash:ip,port", "bitmap:port", ...
    pub set_type: String,
    /// The rest of the `create` line ("family inet hashsize 1024 ...").
    pub options: Vec<String>,
    pub entries: Vec<IpSetEntry>,
}

/// One member: the element as ipset prints it, and its comment if the set
/// has the comment extension and the entry one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpSetEntry {
    pub elem: String,
    pub comment: Option<String>,
}

/// An `ipset save` line that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for SaveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for SaveError {}

/// Splits a save line into words, honouring double quotes (comments).
fn words(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("unterminated quote".into());
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// Parses `ipset save` output. Lines other than `create` and `add` are
/// ignored (none exist today), an `add` to a set not created first is an
/// error.
pub fn parse_ipset_save(text: &str) -> Result<Vec<IpSet>, SaveError> {
    let mut sets: Vec<IpSet> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |message: String| SaveError {
            line: i + 1,
            message,
        };
        let w = words(line).map_err(err)?;
        match w.first().map(String::as_str) {
            Some("create") => {
                let (Some(name), Some(ty)) = (w.get(1), w.get(2)) else {
                    return Err(err("create without a name and type".into()));
                };
                sets.push(IpSet {
                    name: name.clone(),
                    set_type: ty.clone(),
                    options: w[3..].to_vec(),
                    entries: Vec::new(),
                });
            }
            Some("add") => {
                let (Some(name), Some(elem)) = (w.get(1), w.get(2)) else {
                    return Err(err("add without a set and an element".into()));
                };
                let Some(set) = sets.iter_mut().find(|s| &s.name == name) else {
                    return Err(err(format!("add to {name}, which was not created")));
                };
                let comment = w
                    .iter()
                    .position(|x| x == "comment")
                    .and_then(|p| w.get(p + 1))
                    .cloned();
                set.entries.push(IpSetEntry {
                    elem: elem.clone(),
                    comment,
                });
            }
            _ => {}
        }
    }
    Ok(sets)
}

/// The kube-proxy sets that say something about a LoadBalancer IP, by
/// their IPv4 names (pkg/proxy/ipvs/ipset.go).
pub mod kube {
    /// "Kubernetes service lb portal": every LoadBalancer IP:port.
    pub const LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
    /// LoadBalancer IP:port with externalTrafficPolicy=Local.
    pub const LOAD_BALANCER_LOCAL: &str = "KUBE-LOAD-BALANCER-LOCAL";
    /// LoadBalancer IP:port with loadBalancerSourceRanges.
    pub const LOAD_BALANCER_FW: &str = "KUBE-LOAD-BALANCER-FW";
    /// IP,proto:port,CIDR: the source ranges allowed.
    pub const LOAD_BALANCER_SOURCE_CIDR: &str = "KUBE-LOAD-BALANCER-SOURCE-CIDR";
    /// externalIPs (masqueraded) and their Local variant.
    pub const EXTERNAL_IP: &str = "KUBE-EXTERNAL-IP";
    pub const EXTERNAL_IP_LOCAL: &str = "KUBE-EXTERNAL-IP-LOCAL";
    /// ClusterIP:port.
    pub const CLUSTER_IP: &str = "KUBE-CLUSTER-IP";
    /// Every address on kube-ipvs0 (hash:ip, newer kube-proxy).
    pub const IPVS_IPS: &str = "KUBE-IPVS-IPS";
}

/// The IPv4 name of a kube-proxy set: IPv6 sets are "KUBE-6-…" (cut to 31
/// characters, ipset's limit, as kube-proxy does).
pub fn kube_name(name: &str) -> String {
    match name.strip_prefix("KUBE-6-") {
        Some(rest) => format!("KUBE-{rest}"),
        None => name.to_string(),
    }
}

impl IpSet {
    /// Whether this is kube-proxy's set `base` (an IPv4 name from [`kube`])
    /// in either family.
    pub fn is_kube(&self, base: &str) -> bool {
        if self.name == base {
            return true;
        }
        let v6 = base.replacen("KUBE-", "KUBE-6-", 1);
        self.name == v6 || (v6.len() > 31 && self.name == v6[..31])
    }
}

/// "IP,proto:port[,more]" → its address, protocol and port (the first
/// three fields of hash:ip,port, hash:ip,port,ip and hash:ip,port,net).
pub fn ip_proto_port(elem: &str) -> Option<(IpAddr, Proto, u16)> {
    let (ip, rest) = elem.split_once(',')?;
    let pp = rest.split(',').next()?;
    let (proto, port) = match pp.split_once(':') {
        Some((p, port)) => (p.parse().ok()?, port),
        // ipset omits "tcp:" for … nothing today; a bare port is TCP.
        None => (Proto::Tcp, pp),
    };
    Some((ip.parse().ok()?, proto, port.parse().ok()?))
}

/// The third field of a hash:ip,port,net entry (a source range).
pub fn third_field(elem: &str) -> Option<&str> {
    elem.splitn(3, ',').nth(2)
}

/// A Service name carried by an entry comment: "namespace/name" or
/// "namespace/name:port", the form lbpath prints elsewhere. Other comments
/// (free text) are not taken for a name.
pub fn service_name_of_comment(comment: &str) -> Option<String> {
    let c = comment.trim();
    let (ns, rest) = c.split_once('/')?;
    let name = rest.split(':').next()?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-._".contains(ch))
    };
    let port_ok = rest.split_once(':').is_none_or(|(_, p)| ok(p));
    (ok(ns) && ok(name) && port_ok && !rest.contains('/')).then(|| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets as kube-proxy leaves them (ipset 7.x `save`), plus one with the
    /// comment extension.
    const SAVE: &str = r#"create KUBE-LOAD-BALANCER hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x5f1d7b0a
add KUBE-LOAD-BALANCER 192.0.2.240,tcp:80
add KUBE-LOAD-BALANCER 192.0.2.241,udp:53
create KUBE-LOAD-BALANCER-LOCAL hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x2c4f0b11
add KUBE-LOAD-BALANCER-LOCAL 192.0.2.241,udp:53
create KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
add KUBE-LOAD-BALANCER-SOURCE-CIDR 192.0.2.240,tcp:80,198.51.100.0/24
create KUBE-NODE-PORT-TCP bitmap:port range 0-65535
add KUBE-NODE-PORT-TCP 30080
create KUBE-6-LOAD-BALANCER hash:ip,port family inet6 hashsize 1024 maxelem 65536
add KUBE-6-LOAD-BALANCER 2001:db8::f0,tcp:443
create NAMED hash:ip,port family inet hashsize 1024 maxelem 65536 comment
add NAMED 192.0.2.240,tcp:80 comment "default/web:http"
add NAMED 192.0.2.242,sctp:9 comment "not a \"name\""
"#;

    #[test]
    fn parses_sets_entries_and_comments() {
        let sets = parse_ipset_save(SAVE).unwrap();
        assert_eq!(sets.len(), 6);
        let lb = &sets[0];
        assert!(lb.is_kube(kube::LOAD_BALANCER));
        assert!(!lb.is_kube(kube::LOAD_BALANCER_LOCAL));
        assert_eq!(lb.set_type, "hash:ip,port");
        assert_eq!(&lb.options[..2], ["family", "inet"]);
        assert_eq!(lb.entries.len(), 2);
        assert_eq!(lb.entries[0].comment, None);
        assert_eq!(
            ip_proto_port(&lb.entries[1].elem),
            Some(("192.0.2.241".parse().unwrap(), Proto::Udp, 53))
        );
        let cidr = &sets[2].entries[0].elem;
        assert_eq!(third_field(cidr), Some("198.51.100.0/24"));
        assert_eq!(ip_proto_port(cidr).unwrap().2, 80);
        assert_eq!(ip_proto_port(&sets[3].entries[0].elem), None); // bitmap:port
        assert!(sets[4].is_kube(kube::LOAD_BALANCER));
        assert_eq!(kube_name(&sets[4].name), "KUBE-LOAD-BALANCER");
        assert_eq!(
            ip_proto_port(&sets[4].entries[0].elem),
            Some(("2001:db8::f0".parse().unwrap(), Proto::Tcp, 443))
        );
        let named = &sets[5];
        assert_eq!(
            named.entries[0].comment.as_deref(),
            Some("default/web:http")
        );
        assert_eq!(named.entries[1].comment.as_deref(), Some("not a \"name\""));
    }

    #[test]
    fn long_ipv6_names_are_cut_like_kube_proxy_does() {
        // "KUBE-6-LOAD-BALANCER-SOURCE-CIDR" has 32 characters.
        let s = IpSet {
            name: "KUBE-6-LOAD-BALANCER-SOURCE-CID".into(),
            set_type: "hash:ip,port,net".into(),
            options: vec![],
            entries: vec![],
        };
        assert!(s.is_kube(kube::LOAD_BALANCER_SOURCE_CIDR));
    }

    #[test]
    fn bad_lines_are_errors() {
        assert_eq!(parse_ipset_save("add X 1.2.3.4").unwrap_err().line, 1);
        let e = parse_ipset_save("create X hash:ip\nadd X 1.2.3.4 comment \"open").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().contains("quote"), "{e}");
        assert!(parse_ipset_save("").unwrap().is_empty());
    }

    #[test]
    fn only_service_like_comments_name_a_service() {
        assert_eq!(
            service_name_of_comment("default/web:http").as_deref(),
            Some("default/web:http")
        );
        assert_eq!(
            service_name_of_comment("kube-system/kube-dns").as_deref(),
            Some("kube-system/kube-dns")
        );
        for not in [
            "Kubernetes service lb portal",
            "a/b/c",
            "/web",
            "default/",
            "default/web:",
        ] {
            assert_eq!(service_name_of_comment(not), None, "{not}");
        }
    }
}
