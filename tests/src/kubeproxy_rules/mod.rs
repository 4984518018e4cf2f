//! kube-proxy-style rules for the lab "node" namespace.
//!
//! The lab has no Kubernetes, so the rules kube-proxy would write for a few
//! Services are produced here, as text for `iptables-restore` (iptables mode,
//! fed to the nf_tables variant) and for `nft -f -` (nftables mode). The
//! shapes follow kube-proxy's own `pkg/proxy/iptables/proxier.go` and
//! `pkg/proxy/nftables/proxier.go` (recent releases: KUBE-EXT/KUBE-SVL chains,
//! `filter-*-pre-dnat` base chains), so lbpath is tested on what it will
//! meet on real nodes.
//!
//! Chain names are computed exactly as kube-proxy does (SHA-256, base32,
//! truncated), with a small SHA-256 written here so this crate stays
//! std-only; the unit tests check the names against kube-proxy's own test
//! expectations.
//!
//! What the lab cannot know, and so leaves out: readiness/terminating
//! endpoints, session affinity, health-check node ports, and the "allow from
//! the node's own IP" firewall exception (the generator has no node IP).
//!
//! This file holds what both modes share: the Service specs, the decisions
//! kube-proxy makes for a service port, chain names and the fixture
//! Services. Each mode's writer is in its own file: [`iptables_restore`] in
//! `iptables.rs`, [`nft_script`] in `nftables.rs`.

mod iptables;
mod nftables;

use std::net::Ipv4Addr;

pub use iptables::iptables_restore;
pub use nftables::nft_script;

/// Pod network: the "local traffic detector" kube-proxy is configured with
/// (`--cluster-cidr`); traffic from here is pod traffic.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// ClusterIP range; nftables mode drops traffic to unallocated addresses in it.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// kube-proxy's default masquerade bit 14.
pub const MASQUERADE_MARK: &str = "0x4000";

/// One port of one Service, with the node-local view of its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcSpec {
    pub namespace: String,
    pub name: String,
    /// Empty for an unnamed port (the service is then named "ns/name").
    pub port_name: String,
    /// "tcp", "udp" or "sctp".
    pub proto: &'static str,
    /// The LoadBalancer IP; `Ipv4Addr::UNSPECIFIED` for a Service without one
    /// (a plain ClusterIP or NodePort Service).
    pub lb_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub cluster_ip: Ipv4Addr,
    pub endpoints: Vec<EpSpec>,
    /// externalTrafficPolicy=Local.
    pub etp_local: bool,
    /// loadBalancerSourceRanges (CIDRs).
    pub source_ranges: Vec<String>,
    /// spec.externalIPs: captured like the LoadBalancer IP, but never
    /// subject to loadBalancerSourceRanges.
    pub external_ips: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpSpec {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The endpoint runs on this node.
    pub local: bool,
}

impl SvcSpec {
    /// kube-proxy's ServicePortName: "ns/name:port", or "ns/name" when the
    /// port is unnamed. It is the comment on the rules and the hash input.
    pub fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }

    fn has_lb(&self) -> bool {
        !self.lb_ip.is_unspecified()
    }

    /// kube-proxy's `ExternallyAccessible`: a node port, an external IP or
    /// a LoadBalancer IP.
    fn externally_accessible(&self) -> bool {
        self.has_lb() || self.node_port.is_some() || !self.external_ips.is_empty()
    }
}

/// The per-Service chains kube-proxy creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    /// Endpoints for externalTrafficPolicy=Cluster (KUBE-SVC- / service-).
    Cluster,
    /// Local endpoints only (KUBE-SVL- / local-).
    Local,
    /// Entry for LoadBalancer IP and NodePort traffic (KUBE-EXT- / external-).
    External,
    /// loadBalancerSourceRanges filter (KUBE-FW- / firewall-).
    Firewall,
}

/// iptables chain name, as `servicePortPolicyClusterChain` & co. compute it.
pub fn iptables_chain(svc: &SvcSpec, kind: ChainKind) -> String {
    let prefix = match kind {
        ChainKind::Cluster => "KUBE-SVC-",
        ChainKind::Local => "KUBE-SVL-",
        ChainKind::External => "KUBE-EXT-",
        ChainKind::Firewall => "KUBE-FW-",
    };
    let input = format!("{}{}", svc.port_name_string(), svc.proto);
    format!("{prefix}{}", &base32(&sha256(input.as_bytes()))[..16])
}

/// iptables endpoint chain (KUBE-SEP-…).
pub fn iptables_endpoint_chain(svc: &SvcSpec, ep: &EpSpec) -> String {
    let input = format!(
        "{}{}{}:{}",
        svc.port_name_string(),
        svc.proto,
        ep.ip,
        ep.port
    );
    format!("KUBE-SEP-{}", &base32(&sha256(input.as_bytes()))[..16])
}

/// nftables chain name ("service-HASH-ns/name/proto/port" & co.).
pub fn nft_chain(svc: &SvcSpec, kind: ChainKind) -> String {
    let prefix = match kind {
        ChainKind::Cluster => "service-",
        ChainKind::Local => "local-",
        ChainKind::External => "external-",
        ChainKind::Firewall => "firewall-",
    };
    let base = format!(
        "{}/{}/{}/{}",
        svc.namespace, svc.name, svc.proto, svc.port_name
    );
    format!("{prefix}{}", hash_and_truncate(&base))
}

/// nftables endpoint chain ("endpoint-HASH-ns/name/proto/port__ip/port").
pub fn nft_endpoint_chain(svc: &SvcSpec, ep: &EpSpec) -> String {
    let base = format!(
        "{}/{}/{}/{}__{}/{}",
        svc.namespace, svc.name, svc.proto, svc.port_name, ep.ip, ep.port
    );
    format!("endpoint-{}", hash_and_truncate(&base))
}

/// The decisions kube-proxy's sync loop makes for one service port; both
/// backends make the same ones, so they are computed once.
struct Plan<'a> {
    name: String,
    local_eps: Vec<&'a EpSpec>,
    has_endpoints: bool,
    /// Endpoints that external (LB/NodePort) traffic from outside may use.
    has_external_endpoints: bool,
    uses_external_chain: bool,
    uses_local_chain: bool,
}

impl<'a> Plan<'a> {
    fn new(svc: &'a SvcSpec) -> Self {
        assert!(
            matches!(svc.proto, "tcp" | "udp" | "sctp"),
            "{}: protocol must be tcp, udp or sctp, not {:?}",
            svc.port_name_string(),
            svc.proto
        );
        let local_eps: Vec<&EpSpec> = svc.endpoints.iter().filter(|e| e.local).collect();
        let has_endpoints = !svc.endpoints.is_empty();
        let has_external_endpoints = if svc.etp_local {
            !local_eps.is_empty()
        } else {
            has_endpoints
        };
        let externally_accessible = svc.externally_accessible();
        Plan {
            name: svc.port_name_string(),
            uses_local_chain: svc.etp_local && !local_eps.is_empty(),
            local_eps,
            has_endpoints,
            has_external_endpoints,
            // Needed even without external endpoints: it short-circuits pod
            // and host traffic to the cluster-wide endpoints.
            uses_external_chain: has_endpoints && externally_accessible,
        }
    }
}

/// The Services the lbpath fixtures were captured from (see
/// `tracer/src/kubeproxy/testdata/README.md`): one of each case lbpath must
/// explain. The test below pins the generator to the captured inputs.
pub fn fixture_services() -> Vec<SvcSpec> {
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("fixture address");
    let ep = |s: &str, port, local| EpSpec {
        ip: ip(s),
        port,
        local,
    };
    let svc = |name: &str, port_name: &str, proto, lb: &str, port, node_port, cip: &str| SvcSpec {
        namespace: "lab".into(),
        name: name.into(),
        port_name: port_name.into(),
        proto,
        lb_ip: ip(lb),
        port,
        node_port,
        cluster_ip: ip(cip),
        endpoints: vec![],
        etp_local: false,
        source_ranges: vec![],
        external_ips: vec![],
    };
    vec![
        // LoadBalancer, two endpoints, one on this node.
        SvcSpec {
            endpoints: vec![ep("10.244.1.5", 8080, true), ep("10.244.2.7", 8080, false)],
            ..svc(
                "web",
                "http",
                "tcp",
                "203.0.113.10",
                80,
                Some(30080),
                "10.96.0.10",
            )
        },
        // No endpoints at all: REJECT.
        svc(
            "empty",
            "http",
            "tcp",
            "203.0.113.11",
            80,
            Some(30081),
            "10.96.0.11",
        ),
        // externalTrafficPolicy=Local, endpoint only on another node: DROP.
        SvcSpec {
            endpoints: vec![ep("10.244.2.8", 8080, false)],
            etp_local: true,
            ..svc(
                "local-only",
                "http",
                "tcp",
                "203.0.113.12",
                80,
                Some(30082),
                "10.96.0.12",
            )
        },
        // loadBalancerSourceRanges.
        SvcSpec {
            endpoints: vec![ep("10.244.1.6", 8443, true)],
            source_ranges: vec!["198.51.100.0/24".into()],
            ..svc(
                "restricted",
                "https",
                "tcp",
                "203.0.113.13",
                443,
                Some(30443),
                "10.96.0.13",
            )
        },
        // NodePort only, unnamed port, externalTrafficPolicy=Local with a
        // local and a remote endpoint.
        SvcSpec {
            endpoints: vec![ep("10.244.1.7", 9090, true), ep("10.244.2.9", 9090, false)],
            etp_local: true,
            ..svc(
                "nodeport",
                "",
                "tcp",
                "0.0.0.0",
                9090,
                Some(30090),
                "10.96.0.14",
            )
        },
        // UDP LoadBalancer.
        SvcSpec {
            endpoints: vec![ep("10.244.1.8", 5353, true)],
            ..svc("dns", "dns", "udp", "203.0.113.14", 53, None, "10.96.0.15")
        },
    ]
}

/// `n` LoadBalancer Services of a big node (the bench's scale case, up to
/// 5,000): two endpoints each, one on this node; every 10th with
/// externalTrafficPolicy=Local, every 20th with loadBalancerSourceRanges,
/// every 50th without endpoints. LB IPs cycle through 203.0.113.1–250 (eight
/// ports per address for 2,000), ClusterIPs count up from 10.97.0.1, pods
/// from 10.244.16.1, node ports from 30100 (the first 2,600 Services: the
/// lab's own Services use 30080 and 30090).
///
/// # Panics
/// If `n` is over 5,000 (the pod range would overflow 10.244/16).
pub fn scale_services(n: usize) -> Vec<SvcSpec> {
    assert!(n <= 5000, "at most 5000 services");
    let addr = |base: u32, i: usize| Ipv4Addr::from(base + i as u32);
    let pods = u32::from(Ipv4Addr::new(10, 244, 16, 1));
    (0..n)
        .map(|i| SvcSpec {
            namespace: format!("scale-{}", i / 100),
            name: format!("svc-{i}"),
            port_name: "http".into(),
            proto: "tcp",
            lb_ip: Ipv4Addr::new(203, 0, 113, 1 + (i % 250) as u8),
            port: 1000 + (i / 250) as u16,
            node_port: (i < 2600).then(|| 30100 + i as u16),
            cluster_ip: addr(u32::from(Ipv4Addr::new(10, 97, 0, 1)), i),
            endpoints: if i % 50 == 49 {
                Vec::new()
            } else {
                (0..2)
                    .map(|e| EpSpec {
                        ip: addr(pods, 2 * i + e),
                        port: 8080,
                        local: e == 0,
                    })
                    .collect()
            },
            etp_local: i % 10 == 9,
            source_ranges: if i % 20 == 19 {
                vec!["198.51.100.0/24".into()]
            } else {
                Vec::new()
            },
            external_ips: Vec::new(),
        })
        .collect()
}

// --- SHA-256 and base32, for kube-proxy's chain names ----------------------

/// kube-proxy's `hashAndTruncate`: an 8-character hash prefix keeps names
/// distinct and readable; names over 240 characters are cut with "...".
fn hash_and_truncate(name: &str) -> String {
    const MAX: usize = 256 - 16;
    let mut s = format!("{}-{name}", &base32(&sha256(name.as_bytes()))[..8]);
    if s.len() > MAX {
        // Chain names are ASCII (namespace, name, IP, digits), so this is a char boundary.
        s.truncate(MAX - 3);
        s.push_str("...");
    }
    s
}

/// RFC 4648 base32 without padding (only a prefix is ever used).
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// FIPS 180-4 SHA-256.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let [a, b, c, d, e, f, g, hh] = v;
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            v = [t1.wrapping_add(t2), a, b, c, d.wrapping_add(t1), e, f, g];
        }
        for (x, y) in h.iter_mut().zip(v) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// A ClusterIP-only tcp service port without endpoints, for the tests of
    /// both modes to build on.
    pub(super) fn spec(ns: &str, name: &str, port: &str) -> SvcSpec {
        SvcSpec {
            namespace: ns.into(),
            name: name.into(),
            port_name: port.into(),
            proto: "tcp",
            lb_ip: Ipv4Addr::UNSPECIFIED,
            port: 80,
            node_port: None,
            cluster_ip: Ipv4Addr::new(10, 96, 0, 1),
            endpoints: vec![],
            etp_local: false,
            source_ranges: vec![],
            external_ips: vec![],
        }
    }

    #[test]
    fn sha256_matches_fips_vectors() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Two blocks: the padding crosses a block boundary.
        assert_eq!(
            hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
    }

    // Expected names are those in kube-proxy's own proxier_test.go files.
    #[test]
    fn iptables_chain_names_match_kube_proxy() {
        let svc2 = spec("ns2", "svc2", "p80");
        assert_eq!(
            iptables_chain(&svc2, ChainKind::Cluster),
            "KUBE-SVC-GNZBNJ2PO5MGZ6GT"
        );
        assert_eq!(
            iptables_chain(&svc2, ChainKind::External),
            "KUBE-EXT-GNZBNJ2PO5MGZ6GT"
        );
        assert_eq!(
            iptables_chain(&spec("ns5", "svc5", "p80"), ChainKind::Firewall),
            "KUBE-FW-NUKIZ6OKUXPJNT4C"
        );
        let ep = EpSpec {
            ip: Ipv4Addr::new(10, 180, 0, 5),
            port: 80,
            local: false,
        };
        assert_eq!(
            iptables_endpoint_chain(&spec("ns4", "svc4", "p80"), &ep),
            "KUBE-SEP-C6EBXVWJJZMIWKLZ"
        );
    }

    #[test]
    fn nft_chain_names_match_kube_proxy() {
        let svc1 = spec("ns1", "svc1", "p80");
        assert_eq!(
            nft_chain(&svc1, ChainKind::Cluster),
            "service-ULMVA6XW-ns1/svc1/tcp/p80"
        );
        assert_eq!(
            nft_chain(&spec("ns5", "svc5", "p80"), ChainKind::Firewall),
            "firewall-HVFWP5L3-ns5/svc5/tcp/p80"
        );
        let ep = EpSpec {
            ip: Ipv4Addr::new(10, 180, 0, 1),
            port: 80,
            local: false,
        };
        assert_eq!(
            nft_endpoint_chain(&svc1, &ep),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn unnamed_port_is_named_after_the_service() {
        let s = spec("lab", "np", "");
        assert_eq!(s.port_name_string(), "lab/np");
        assert!(nft_chain(&s, ChainKind::Cluster).ends_with("-lab/np/tcp/"));
    }

    #[test]
    fn long_names_are_truncated_like_kube_proxy() {
        // Only IPv6 endpoints can make a real name this long; the cut is
        // still part of kube-proxy's naming, so it is checked directly.
        let name = hash_and_truncate(&"x".repeat(300));
        assert_eq!(name.len(), 240);
        assert!(name.ends_with("..."));
        assert_eq!(&name[8..10], "-x");
        let short = hash_and_truncate("ns/svc/tcp/p");
        assert_eq!(short.len(), 8 + 1 + "ns/svc/tcp/p".len());
    }

    #[test]
    #[should_panic(expected = "protocol must be tcp, udp or sctp")]
    fn unknown_protocol_is_refused() {
        let mut s = spec("ns", "icmp", "p");
        s.proto = "icmp";
        iptables_restore(&[s], false);
    }

    // The fixtures in the tracer crate were captured from exactly these
    // inputs; a change here must come with new captures.
    #[test]
    fn generator_matches_the_captured_inputs() {
        let svcs = fixture_services();
        assert_eq!(
            iptables_restore(&svcs, false),
            include_str!("../../../tracer/src/kubeproxy/testdata/lab-iptables.rules")
        );
        assert_eq!(
            nft_script(&svcs, false),
            include_str!("../../../tracer/src/kubeproxy/testdata/lab-kube-proxy.nft")
        );
    }

    /// Cases the fixtures leave out: Local policy with source ranges and a
    /// local endpoint, source ranges without endpoints and without local
    /// endpoints, sctp with a local chain of two, an unnamed udp port, and
    /// three endpoints to choose from.
    fn variant_services() -> Vec<SvcSpec> {
        let f = fixture_services();
        let ep = |last: u8, local: bool| EpSpec {
            ip: Ipv4Addr::new(10, 244, 3, last),
            port: 8000,
            local,
        };
        // Addresses of their own, so the rules could be applied together.
        let variant = |mut s: SvcSpec, name: &str, last: u8| {
            s.namespace = "variant".into();
            s.name = name.into();
            s.cluster_ip = Ipv4Addr::new(10, 96, 1, last);
            if s.has_lb() {
                s.lb_ip = Ipv4Addr::new(203, 0, 113, 100 + last);
            }
            s.node_port = s.node_port.map(|_| 31000 + u16::from(last));
            s
        };
        let ranges = vec!["198.51.100.0/24".to_string(), "192.0.2.0/25".to_string()];
        let mut local_fw = variant(f[0].clone(), "local-fw", 1);
        local_fw.etp_local = true;
        local_fw.source_ranges = ranges.clone();
        let mut empty_fw = variant(f[1].clone(), "empty-fw", 2);
        empty_fw.source_ranges = ranges.clone();
        let mut no_local_fw = variant(f[2].clone(), "no-local-fw", 3);
        no_local_fw.source_ranges = ranges;
        let mut sctp = variant(spec("", "", "assoc"), "sctp", 4);
        sctp.proto = "sctp";
        sctp.node_port = Some(31004);
        sctp.etp_local = true;
        sctp.endpoints = vec![ep(1, false), ep(2, true), ep(3, true)];
        let mut udp = variant(spec("", "", ""), "udp", 5);
        udp.proto = "udp";
        udp.lb_ip = Ipv4Addr::new(203, 0, 113, 105);
        udp.endpoints = vec![ep(4, true), ep(5, false), ep(6, false)];
        // externalIPs: beside a LoadBalancer IP with source ranges (they
        // do not apply to it), on a ClusterIP Service, and without
        // endpoints.
        let mut ext_fw = variant(f[3].clone(), "ext-fw", 6);
        ext_fw.external_ips = vec![Ipv4Addr::new(198, 51, 100, 206)];
        let mut ext_only = variant(spec("", "", "http"), "ext-only", 7);
        ext_only.external_ips = vec![Ipv4Addr::new(198, 51, 100, 207)];
        ext_only.endpoints = vec![ep(7, true)];
        let mut ext_empty = variant(f[1].clone(), "ext-empty", 8);
        ext_empty.external_ips = vec![Ipv4Addr::new(198, 51, 100, 208)];
        vec![
            local_fw,
            empty_fw,
            no_local_fw,
            sctp,
            udp,
            ext_fw,
            ext_only,
            ext_empty,
        ]
    }

    /// Both writers on the fixtures and the variants, with
    /// --masquerade-all, against committed snapshots. An intended change
    /// is taken with `LBPATH_UPDATE_SNAPSHOTS=1 cargo test -p lbpath-tests
    /// --lib snapshots`, then reviewed in the diff.
    #[test]
    fn output_matches_the_snapshots() {
        let mut svcs = fixture_services();
        svcs.extend(variant_services());
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/kubeproxy_rules/testdata");
        for (file, text) in [
            ("variants.rules", iptables_restore(&svcs, true)),
            ("variants.nft", nft_script(&svcs, true)),
        ] {
            let path = format!("{dir}/{file}");
            if std::env::var_os("LBPATH_UPDATE_SNAPSHOTS").is_some() {
                std::fs::write(&path, &text).expect("snapshot written");
            }
            let want = std::fs::read_to_string(&path).expect("snapshot readable");
            assert_eq!(text, want, "{file} differs from the generator's output");
        }
    }
}
