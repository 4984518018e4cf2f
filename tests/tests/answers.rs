//! Right answers on real failure modes (issue 11), each on the lab with real
//! traffic: a NIC bridged on the node, ARP from two interfaces on one
//! segment, one endpoint of three refusing, and kube-proxy's
//! loadBalancerSourceRanges firewall in both modes. Each asserts the verdict,
//! the hop and the hint lbpath gives.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use lbpath_tests::{
    kubeproxy_rules::EpSpec,
    lab::*,
    netns::{self, in_ns},
    run::{Finished, Running, json_lines},
};
use serde_json::Value;

const T: Duration = Duration::from_secs(2);

fn diagnose(lab: &Lab, ips: &[&str], secs: u32) -> Running {
    let d = format!("{secs}s");
    let mut args: Vec<&str> = ips.to_vec();
    args.extend(["--json", "--duration", &d]);
    Running::diagnose(&lab.node(), &args).expect("diagnose starts")
}

fn finish(r: Running) -> (Finished, Value) {
    let out = r.wait(Duration::from_secs(90)).unwrap();
    let v: Value = out
        .stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report: {}\n{}", out.stdout, out.stderr));
    // Shown only when the test fails.
    println!(
        "diagnose: {}",
        serde_json::to_string_pretty(&v).unwrap_or_default()
    );
    (out, v)
}

fn verdict(v: &Value) -> (String, String) {
    (
        v["verdict"]["layer"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        format!(
            "{} | evidence: {} | next: {}",
            v["verdict"]["summary"], v["verdict"]["evidence"], v["verdict"]["next_step"]
        ),
    )
}

fn hops<'a>(flow: &'a Value, kind: &str) -> Vec<&'a Value> {
    flow["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["hop"] == kind)
        .collect()
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The node's NIC is a port of a bridge holding the node's address and
/// default route: it is the uplink, never a pod veth, and traffic answered
/// through it is healthy.
#[test]
fn bridged_uplink_is_the_uplink() {
    let lab = Lab::new(
        "abr",
        LabSpec {
            uplink_bridge: true,
            ..Default::default()
        },
    )
    .unwrap();
    let r = diagnose(&lab, &["192.0.2.240"], 4);
    let body = netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    assert!(body.contains("hello from pod"), "{body}");
    let (out, v) = finish(r);
    let (layer, s) = verdict(&v);
    assert_eq!((layer.as_str(), out.code), ("healthy", Some(0)), "{s}");
    let flows = v["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 1, "{flows:?}");
    let flow = &flows[0];
    assert_eq!(flow["verdict"]["kind"], "answered", "{flow}");
    assert!(flow["verdict"]["hint"].is_null(), "{flow}");
    let arrived = hops(flow, "arrived");
    assert_eq!(
        (&arrived[0]["iface"], &arrived[0]["role"]),
        (&Value::from("eth0"), &Value::from("uplink")),
        "{arrived:?}"
    );
    // The only pod veth on the way is the pod's; the reply leaves by the
    // bridged uplink towards the client.
    let left = hops(flow, "left");
    assert!(
        left.iter()
            .all(|h| (h["role"] == "pod_veth") == (h["iface"] == "vethpod")),
        "{left:?}"
    );
    assert!(
        left.iter().any(|h| h["dir"] == "reply"
            && h["role"] == "uplink"
            && h["towards"].as_str().unwrap().starts_with("client")),
        "{left:?}"
    );
    // The IP layer receives on the bridge: its rp_filter is the one checked.
    let checks = v["checks"].as_array().unwrap();
    let rpf: Vec<&str> = checks
        .iter()
        .filter(|c| c["check"] == "rp_filter")
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert!(
        rpf.iter().any(|t| t.starts_with("br-lan:")) && !rpf.iter().any(|t| t.starts_with("eth0:")),
        "{rpf:?}"
    );
}

/// A second NIC of the node on the LAN segment, the LB IP on the node (as
/// kube-proxy's IPVS mode puts it on kube-ipvs0) and the kernel's default
/// arp_ignore=0: both NICs answer ARP for it, each with its own MAC.
#[test]
fn arp_from_two_interfaces_on_one_segment() {
    let mut lab = Lab::new(
        "aflux",
        LabSpec {
            speaker: false,
            ..Default::default()
        },
    )
    .unwrap();
    lab.add_lan_iface("node", "eth2", "192.0.2.4/24").unwrap();
    let node = lab.node();
    in_ns(&node, &["ip", "addr", "add", "192.0.2.240/32", "dev", "lo"]).unwrap();
    for kv in [
        "net.ipv4.conf.all.arp_ignore=0",
        "net.ipv4.conf.all.arp_announce=0",
    ] {
        lab.sysctl(&node, kv).unwrap();
    }
    let (mac0, mac2) = (
        lab.mac(&node, "eth0").unwrap(),
        lab.mac(&node, "eth2").unwrap(),
    );
    let (mac0, mac2) = (mac_str(mac0), mac_str(mac2));

    let w = Running::watch(&node, &["192.0.2.240", "--json"]).expect("watch attaches");
    let r = diagnose(&lab, &["192.0.2.240"], 5);
    let client_mac = lab.mac(&lab.client(), "eth0").unwrap();
    for _ in 0..2 {
        netns::arp_request(&lab.client(), "eth0", client_mac, CLIENT, LB).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    // The node announces the IP from eth0, as a speaker does on takeover:
    // the broadcast comes back in on eth2.
    netns::gratuitous_arp(&node, "eth0", lab.mac(&node, "eth0").unwrap(), LB).unwrap();
    let _ = netns::http_get(&lab.client(), lab.lb_addr(), T);
    let (out, v) = finish(r);
    let watched = w.stop().unwrap();

    let (layer, s) = verdict(&v);
    assert_eq!((layer.as_str(), out.code), ("arp_flux", Some(1)), "{s}");
    assert!(
        s.contains(&format!("eth0 (MAC {mac0})")) && s.contains(&format!("eth2 (MAC {mac2})")),
        "{s}"
    );
    let next = v["verdict"]["next_step"].as_str().unwrap();
    assert!(
        next.contains("net.ipv4.conf.all.arp_ignore=1")
            && next.contains("net.ipv4.conf.all.arp_announce=2")
            && next.contains("eth0 and eth2"),
        "{next}"
    );
    // The current values are in the evidence.
    assert!(s.contains("eth2: arp_ignore=0"), "{s}");
    // The static check saw the two NICs on one subnet.
    let checks = v["checks"].as_array().unwrap();
    assert!(
        checks.iter().any(|c| c["check"] == "arp"
            && c["level"] == "warn"
            && c["text"]
                .as_str()
                .unwrap()
                .contains("eth0 and eth2 are both on 192.0.2.0/24")),
        "{checks:?}"
    );
    // eth2 received eth0's announcement: its own frame, not one eth2 sent,
    // never another host's.
    let arp = &v["arp"];
    let eth2 = arp["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["ifname"] == "eth2")
        .unwrap_or_else(|| panic!("{arp}"));
    assert_eq!(eth2["gratuitous_sent"], 0, "{eth2}");
    assert!(
        eth2["own_received"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["from_ifname"] == "eth0" && e["mac"] == mac0.as_str()),
        "{eth2}"
    );
    assert!(
        eth2["others"].as_array().unwrap().is_empty(),
        "no foreign claimant: {eth2}"
    );
    let notes = arp["notes"].to_string();
    assert!(!notes.contains("carries MAC"), "{notes}");
    // The live ARP lines: the node's MACs are never another host.
    let lines: Vec<String> = json_lines(&watched.stdout)
        .iter()
        .filter_map(|l| l["arp"].as_str().map(String::from))
        .collect();
    let ours: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(&mac0) || l.contains(&mac2))
        .collect();
    assert!(
        !ours.is_empty() && ours.iter().all(|l| !l.contains("another host")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("eth2 ←") && l.contains("this node's eth0, received on eth2")),
        "{lines:#?}"
    );
}

/// Three endpoints, one with nothing listening: every flow's verdict is
/// right, and the verdict says one of three refuses, not that the Service
/// is down; watch's totals split by endpoint too.
#[test]
fn one_endpoint_of_three_refuses() {
    let ep = |last: u8| EpSpec {
        ip: Ipv4Addr::new(10, 244, 1, last),
        port: POD_PORT,
        local: true,
    };
    let mut lab = Lab::new(
        "apart",
        LabSpec {
            services: vec![web_service(vec![pod_endpoint(), ep(6), ep(7)], false)],
            ..Default::default()
        },
    )
    .unwrap();
    lab.add_pod("pod6", Ipv4Addr::new(10, 244, 1, 6), true)
        .unwrap();
    lab.add_pod("pod7", Ipv4Addr::new(10, 244, 1, 7), false)
        .unwrap();
    let w = Running::watch(&lab.node(), &["192.0.2.240", "--json"]).expect("watch attaches");
    let r = diagnose(&lab, &["192.0.2.240"], 12);
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..24 {
        match netns::http_get(&lab.client(), lab.lb_addr(), T) {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    assert!(ok > 0 && failed > 0, "ok {ok}, failed {failed}");
    let (out, v) = finish(r);
    let watched = w.stop().unwrap();

    let (layer, s) = verdict(&v);
    assert_eq!(
        (layer.as_str(), out.code),
        ("pod_not_answering", Some(1)),
        "{s}"
    );
    let summary = v["verdict"]["summary"].as_str().unwrap();
    assert_eq!(
        summary,
        format!("1 of 3 endpoints refuses: 10.244.1.7:8080; 2 answer; {failed} of 24 flows failed"),
        "{s}"
    );
    // Every flow counted, one evidence line per endpoint, the refusing one first.
    let evidence: Vec<&str> = v["verdict"]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(evidence.len(), 3, "{evidence:?}");
    assert!(
        evidence[0].starts_with(&format!(
            "endpoint 10.244.1.7:8080: {failed} of {failed} flows failed ({failed} refused)"
        )),
        "{evidence:?}"
    );
    assert!(
        evidence[1..]
            .iter()
            .all(|e| e.contains("answered)") && !e.contains("refused")),
        "{evidence:?}"
    );
    let next = v["verdict"]["next_step"].as_str().unwrap();
    assert!(
        next.contains("10.244.1.7:8080") && next.contains("its other endpoints answer"),
        "{next}"
    );
    // Each refused flow says which endpoint refused, at its hop.
    let flows = v["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 24, "{}", out.stderr);
    for f in flows.iter().filter(|f| f["verdict"]["kind"] == "refused") {
        assert_eq!(hops(f, "dnat")[0]["to"], "10.244.1.7:8080", "{f}");
        assert!(
            f["verdict"]["hint"]
                .as_str()
                .unwrap()
                .contains("targetPort"),
            "{f}"
        );
    }
    // watch's totals, by endpoint.
    let totals = json_lines(&watched.stdout)
        .into_iter()
        .find_map(|l| l.get("totals").cloned())
        .unwrap_or_else(|| panic!("{}", watched.stdout));
    let eps = totals["endpoints"].as_array().unwrap();
    let refusing = eps
        .iter()
        .find(|e| e["endpoint"] == "10.244.1.7:8080")
        .unwrap_or_else(|| panic!("{totals}"));
    assert_eq!(refusing["verdicts"]["refused"], failed, "{totals}");
    assert_eq!(eps.len(), 3, "{totals}");
}

/// An externalIP of the Service beside its LoadBalancer IP, on the LAN.
const EXT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 241);

/// loadBalancerSourceRanges allowing only the remote network: the client
/// on the LAN is dropped by kube-proxy's firewall, said as such with the
/// ranges and how to check them; the remote client and the externalIP
/// (which source ranges do not cover) are answered.
fn source_ranges(mode: KubeProxy, name: &str) {
    let mut svc = web_service(vec![pod_endpoint()], false);
    svc.source_ranges = vec!["198.51.100.0/24".into()];
    svc.external_ips = vec![EXT_IP];
    let mut lab = Lab::new(
        name,
        LabSpec {
            kube_proxy: mode,
            services: vec![svc],
            ..Default::default()
        },
    )
    .unwrap();
    let node = lab.node();
    let mac = lab.mac(&node, "eth0").unwrap();
    lab.keep(netns::arp_responder(&node, "eth0", mac, vec![EXT_IP]).unwrap());

    let r = diagnose(&lab, &["192.0.2.240", "192.0.2.241"], 6);
    assert!(
        netns::http_get(&lab.client(), lab.lb_addr(), T).is_err(),
        "the LAN client is outside the ranges"
    );
    let body = netns::http_get(&lab.remote(), lab.lb_addr(), T).unwrap();
    assert!(body.contains("hello from pod"), "{body}");
    let body = netns::http_get(&lab.client(), SocketAddr::from((EXT_IP, LB_PORT)), T).unwrap();
    assert!(body.contains("hello from pod"), "{body}");
    let (out, v) = finish(r);
    assert_eq!(out.code, Some(1), "{}", v["verdict"]);
    let ips = v["ips"].as_array().unwrap();
    let lb = ips.iter().find(|i| i["lb"] == "192.0.2.240").unwrap();
    let ext = ips.iter().find(|i| i["lb"] == "192.0.2.241").unwrap();

    let (layer, s) = verdict(lb);
    assert_eq!(layer, "dropped_on_node", "{s}");
    assert!(
        s.contains("kube-proxy's load-balancer firewall")
            && s.contains(
                "192.0.2.10 is not in default/web:http's loadBalancerSourceRanges (198.51.100.0/24)"
            )
            && !s.contains("NetworkPolicy"),
        "{s}"
    );
    let next = lb["verdict"]["next_step"].as_str().unwrap();
    assert!(
        next.contains(
            "kubectl get svc web -n default -o jsonpath='{.spec.loadBalancerSourceRanges}'"
        ),
        "{next}"
    );
    let flows = lb["flows"].as_array().unwrap();
    let dropped = flows
        .iter()
        .find(|f| {
            f["flow"]["client"]
                .as_str()
                .unwrap()
                .starts_with("192.0.2.10:")
        })
        .unwrap_or_else(|| panic!("{flows:?}"));
    assert_eq!(dropped["verdict"]["kind"], "dropped", "{dropped}");
    let d = hops(dropped, "dropped");
    assert!(
        d[0]["at"].as_str().unwrap().starts_with("netfilter")
            && d[0]["detail"]
                .as_str()
                .unwrap()
                .contains("loadBalancerSourceRanges"),
        "{d:?}"
    );
    assert!(hops(dropped, "dnat").is_empty(), "not DNATed: {dropped}");
    // The Service view shows the ranges, in the flows and the checks.
    assert_eq!(dropped["service"]["source_ranges"][0], "198.51.100.0/24");
    assert_eq!(dropped["service"]["kind"], "LoadBalancer", "{dropped}");
    assert!(
        lb["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["check"] == "kube-proxy rules"
                && c["text"].as_str().unwrap().contains("(LoadBalancer, chain")
                && c["text"]
                    .as_str()
                    .unwrap()
                    .contains("loadBalancerSourceRanges 198.51.100.0/24")),
        "{}",
        lb["checks"]
    );
    let remote = flows
        .iter()
        .find(|f| {
            f["flow"]["client"]
                .as_str()
                .unwrap()
                .starts_with("198.51.100.10:")
        })
        .unwrap_or_else(|| panic!("{flows:?}"));
    assert_eq!(remote["verdict"]["kind"], "answered", "{remote}");

    // The externalIP: its real kind, no ranges, answered.
    let (layer, s) = verdict(ext);
    assert_eq!(layer, "healthy", "{s}");
    let f = &ext["flows"][0];
    assert_eq!(f["service"]["kind"], "ExternalIP", "{f}");
    assert_eq!(f["service"]["source_ranges"], Value::Array(vec![]), "{f}");
}

#[test]
fn source_ranges_iptables() {
    source_ranges(KubeProxy::IptablesNft, "afwi");
}

#[test]
fn source_ranges_nftables() {
    source_ranges(KubeProxy::Nftables, "afwn");
}

/// Sets hairpin mode on the pod's bridge port and bridge netfilter on the
/// node (as kubelet and Kubernetes' CNI plugins do).
fn hairpin(lab: &Lab, on: bool) {
    let v = if on { "1" } else { "0" };
    in_ns(
        &lab.node(),
        &["sh", "-c", &format!("echo {v} > /sys/class/net/vethpod/brport/hairpin_mode && sysctl -qw net.bridge.bridge-nf-call-iptables=1")],
    )
    .unwrap();
}

fn pod_to_own_lb(name: &str, on: bool) -> (Result<String, String>, Finished) {
    let lab = Lab::new(name, LabSpec::default()).unwrap();
    hairpin(&lab, on);
    let w = Running::watch(&lab.node(), &["192.0.2.240", "--json"]).unwrap();
    let got = netns::http_get(&lab.pod(), lab.lb_addr(), T).map_err(|e| format!("{e:#}"));
    std::thread::sleep(Duration::from_secs(2));
    (got, w.stop().unwrap())
}

/// A pod reaching its own Service through the LB IP, hairpin on: the answer
/// goes back into the pod's veth, to the client, and that is an answer.
#[test]
fn hairpin_on_is_answered() {
    let (got, out) = pod_to_own_lb("hpon", true);
    assert!(got.is_ok(), "{got:?}");
    let flows: Vec<Value> = json_lines(&out.stdout)
        .into_iter()
        .filter(|v| v.get("flow").is_some())
        .collect();
    assert_eq!(flows.len(), 1, "{}", out.stdout);
    let f = &flows[0];
    assert_eq!(f["verdict"]["kind"], "answered", "{f}");
    let back = hops(f, "left")
        .into_iter()
        .find(|h| h["dir"] == "reply")
        .unwrap_or_else(|| panic!("no reply left: {f}"));
    assert_eq!(back["iface"], "vethpod", "{f}");
    assert_eq!(back["towards"], "client (a pod on this node)", "{f}");
}

/// The same with hairpin mode off: the bridge drops the frame it would send
/// back out its own port, and lbpath names that port and the fix.
#[test]
fn hairpin_off_is_named() {
    let (got, out) = pod_to_own_lb("hpoff", false);
    assert!(got.is_err(), "{got:?}");
    let f = json_lines(&out.stdout)
        .into_iter()
        .find(|v| v.get("flow").is_some())
        .unwrap_or_else(|| panic!("no flow: {}", out.stdout));
    assert_eq!(f["verdict"]["kind"], "dropped", "{f}");
    let s = f["verdict"]["summary"].as_str().unwrap();
    assert!(
        s.contains("hairpin mode off") && s.contains("vethpod"),
        "{s}"
    );
    let hint = f["verdict"]["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("hairpin on") && hint.contains("bridge-nf-call-iptables"),
        "{hint}"
    );
    assert_eq!(hops(&f, "dropped").len(), 1, "{f}");
}

/// A UDP client that keeps its source port keeps its conntrack entry: after
/// its pod went and the Service moved to another pod, the entry still DNATs
/// to the old one. lbpath shows the established entry's target, says it is
/// no longer an endpoint, and gives the `conntrack -D` that clears it.
#[test]
fn stale_conntrack_after_the_endpoint_moved() {
    const P2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 6);
    let mut spec = LabSpec::default();
    spec.services.push(dns_service());
    let mut lab = Lab::new("stale", spec).unwrap();
    lab.keep(netns::udp_server(&lab.pod(), SocketAddr::from((POD, 5353)), true).unwrap());
    let p2 = lab.add_pod("p2", P2, false).unwrap();
    lab.keep(netns::udp_server(&p2, SocketAddr::from((P2, 5353)), true).unwrap());
    let to = SocketAddr::from((LB, 53));
    let ask = move || {
        let s = std::net::UdpSocket::bind("0.0.0.0:40053")?;
        s.set_read_timeout(Some(T))?;
        s.send_to(b"ping", to)?;
        let mut buf = [0u8; 64];
        Ok(s.recv_from(&mut buf).is_ok())
    };
    assert!(netns::run_in(&lab.client(), ask).unwrap(), "first answer");
    // The pod goes; kube-proxy moves the Service to the other pod.
    in_ns(&lab.node(), &["ip", "link", "del", "vethpod"]).unwrap();
    let svc = lab
        .spec
        .services
        .iter_mut()
        .find(|s| s.name == "dns")
        .unwrap();
    svc.endpoints = vec![EpSpec {
        ip: P2,
        port: 5353,
        local: true,
    }];
    lab.install_rules(&lab.node(), KubeProxy::IptablesNft)
        .unwrap();
    let w = Running::watch(&lab.node(), &["192.0.2.240", "--proto", "udp", "--json"]).unwrap();
    assert!(
        !netns::run_in(&lab.client(), ask).unwrap(),
        "answered by the stale entry"
    );
    std::thread::sleep(Duration::from_secs(3));
    let out = w.stop().unwrap();
    let f = json_lines(&out.stdout)
        .into_iter()
        .find(|v| v.get("flow").is_some())
        .unwrap_or_else(|| panic!("no flow: {}\n{}", out.stdout, out.stderr));
    let s = f["verdict"]["summary"].as_str().unwrap();
    assert!(
        s.starts_with("a stale conntrack entry")
            && s.contains("10.244.1.5:5353")
            && s.contains("no longer an endpoint of default/dns:dns (now 10.244.1.6:5353)"),
        "{f}"
    );
    let ct = hops(&f, "conntrack");
    assert_eq!(ct[0]["state"], "established", "{f}");
    assert_eq!(hops(&f, "dnat")[0]["to"], "10.244.1.5:5353", "{f}");
    let hint = f["verdict"]["hint"].as_str().unwrap();
    assert!(
        hint.contains("conntrack -D -p udp --orig-src 192.0.2.10 --orig-port-src 40053 --orig-dst 192.0.2.240 --orig-port-dst 53"),
        "{hint}"
    );
}

/// SNAT with no free source port: a second connection's conntrack entry
/// clashes with the first's and conntrack drops it at confirm. lbpath names
/// conntrack and the insert_failed figure, not "a netfilter rule".
#[test]
fn snat_without_a_free_port_is_conntrack_not_a_rule() {
    let lab = Lab::new("ctins", LabSpec::default()).unwrap();
    // Every connection to the pod leaves with one source address and port.
    in_ns(
        &lab.node(),
        &[
            "iptables-nft",
            "-t",
            "nat",
            "-I",
            "POSTROUTING",
            "-d",
            "10.244.1.5/32",
            "-p",
            "tcp",
            "-j",
            "SNAT",
            "--to-source",
            "10.244.1.1:40000",
        ],
    )
    .unwrap();
    let w = Running::watch(&lab.node(), &["192.0.2.240", "--json"]).unwrap();
    let to = lab.lb_addr();
    let (first, second) = netns::run_in(&lab.client(), move || {
        let a = std::net::TcpStream::connect_timeout(&to, T);
        let b = std::net::TcpStream::connect_timeout(&to, T);
        Ok((a.is_ok(), b.is_ok()))
    })
    .unwrap();
    assert!(first && !second, "{first} {second}");
    std::thread::sleep(Duration::from_secs(2));
    let out = w.stop().unwrap();
    let flows = out.flows();
    let dropped: Vec<&Value> = flows
        .iter()
        .filter(|f| f["verdict"]["kind"] == "dropped")
        .collect();
    assert_eq!(dropped.len(), 1, "{}", out.stdout);
    let s = dropped[0]["verdict"]["summary"].as_str().unwrap();
    assert!(
        s.contains("dropped by conntrack (conntrack confirm)")
            && s.contains("could not be inserted")
            && !s.contains("netfilter rule"),
        "{s}"
    );
    let hint = dropped[0]["verdict"]["hint"].as_str().unwrap();
    assert!(hint.contains("insert_failed"), "{hint}");
}
