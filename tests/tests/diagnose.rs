//! `lbpath diagnose` on the lab: each case asserts the layer named, the
//! evidence and the exit code (0 healthy, 1 problem, 3 no traffic, 4
//! inconclusive).

use std::{net::SocketAddr, time::Duration};

use lbpath_tests::{
    lab::*,
    netns::{self, in_ns},
    run::{Finished, Running},
};
use serde_json::Value;

const T: Duration = Duration::from_secs(2);

fn start(lab: &Lab, ip: &str, secs: u32) -> Running {
    let d = format!("{secs}s");
    Running::diagnose(&lab.node(), &[ip, "--json", "--duration", &d]).expect("diagnose starts")
}

fn finish(r: Running) -> (Finished, Value) {
    let out = r.wait(Duration::from_secs(60)).unwrap();
    let v: Value = out
        .stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report: {}\n{}", out.stdout, out.stderr));
    (out, v)
}

fn verdict(v: &Value) -> (String, String) {
    (
        v["verdict"]["layer"].as_str().unwrap().to_string(),
        format!(
            "{} | {}",
            v["verdict"]["summary"], v["verdict"]["next_step"]
        ),
    )
}

#[test]
fn healthy() {
    let lab = Lab::new("dok", LabSpec::default()).unwrap();
    let r = start(&lab, "192.0.2.240", 4);
    netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    let (out, v) = finish(r);
    let (layer, s) = verdict(&v);
    assert_eq!(layer, "healthy", "{s}");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        v["arp"]["verdict"]
            .to_string()
            .contains("answered_by_this_node"),
        "{}",
        v["arp"]
    );
    assert!(
        v["arp"]["text"].as_str().unwrap().contains("this node"),
        "{}",
        v["arp"]
    );
    let checks = v["checks"].as_array().unwrap();
    assert!(
        checks.iter().any(|c| c["check"] == "kube-proxy rules"
            && c["level"] == "ok"
            && c["text"].as_str().unwrap().contains("default/web:http")),
        "{checks:?}"
    );
    assert_eq!(v["flows"].as_array().unwrap().len(), 1);
}

#[test]
fn no_kube_proxy_rule() {
    let lab = Lab::new(
        "dnor",
        LabSpec {
            kube_proxy: KubeProxy::None,
            ..Default::default()
        },
    )
    .unwrap();
    let r = start(&lab, "192.0.2.240", 4);
    let _ = netns::http_get(&lab.client(), lab.lb_addr(), T);
    let (out, v) = finish(r);
    let (layer, s) = verdict(&v);
    assert_eq!(out.code, Some(1), "{s}");
    assert_eq!(layer, "dropped_on_node", "{s}");
    assert!(s.contains("no kube-proxy rule for 192.0.2.240:80"), "{s}");
    let checks = v["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["check"] == "kube-proxy rules" && c["level"] == "problem")
    );
}

/// A directory of rule tools that refuse, as they do without privilege
/// or under a restrictive profile; removed on drop.
struct RefusingTools(std::path::PathBuf);

impl RefusingTools {
    fn new(name: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("lbpath-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for tool in [
            "iptables-save",
            "iptables-nft-save",
            "iptables-legacy-save",
            "ip6tables-save",
            "ip6tables-nft-save",
            "ip6tables-legacy-save",
            "nft",
        ] {
            let p = dir.join(tool);
            std::fs::write(
                &p,
                "#!/bin/sh\necho \"$(basename \"$0\"): Permission denied (you must be root)\" >&2\nexit 4\n",
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Self(dir)
    }

    fn path(&self) -> String {
        format!(
            "{}:{}",
            self.0.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

impl Drop for RefusingTools {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The rules cannot be read: a missing DNAT is then unknown, never "no
/// kube-proxy rule", and the verdict is not a confident one.
#[test]
fn unreadable_rules_are_said_not_guessed() {
    let lab = Lab::new(
        "dunr",
        LabSpec {
            kube_proxy: KubeProxy::None,
            ..Default::default()
        },
    )
    .unwrap();
    let tools = RefusingTools::new("dunr");
    let path = tools.path();
    let r = Running::diagnose_env(
        &lab.node(),
        &["192.0.2.240", "--json", "--duration", "4s"],
        &[("PATH", &path)],
    )
    .expect("diagnose starts");
    let _ = netns::http_get(&lab.client(), lab.lb_addr(), T);
    let (out, v) = finish(r);
    let (layer, s) = verdict(&v);
    assert_eq!(layer, "inconclusive", "{s}");
    assert_eq!(out.code, Some(4), "{s}");
    assert!(
        s.contains("could not all be read") && s.contains("Permission denied"),
        "{s}"
    );
    assert!(!s.contains("no kube-proxy rule"), "{s}");
    let checks = v["checks"].as_array().unwrap();
    let kp: Vec<&Value> = checks
        .iter()
        .filter(|c| c["check"] == "kube-proxy rules")
        .collect();
    assert!(kp.len() == 1 && kp[0]["level"] == "warn", "{kp:?}");
    assert!(
        out.stderr
            .contains("the node's rules could not all be read"),
        "{}",
        out.stderr
    );
}

#[test]
fn rp_filter_drop() {
    let lab = Lab::new(
        "drpf",
        LabSpec {
            second_uplink: true,
            ..Default::default()
        },
    )
    .unwrap();
    in_ns(
        &lab.node(),
        &[
            "ip",
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "203.0.113.1",
            "dev",
            "eth1",
        ],
    )
    .unwrap();
    lab.sysctl(&lab.node(), "net.ipv4.conf.all.rp_filter=1")
        .unwrap();
    let r = start(&lab, "192.0.2.240", 4);
    let _ = netns::http_get(&lab.remote(), lab.lb_addr(), T);
    let (out, v) = finish(r);
    let (layer, s) = verdict(&v);
    assert_eq!(
        (layer.as_str(), out.code),
        ("dropped_on_node", Some(1)),
        "{s}"
    );
    assert!(
        s.contains("reverse-path filter") && s.contains("eth1"),
        "{s}"
    );
    let checks = v["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["check"] == "rp_filter" && c["level"] == "warn"),
        "{checks:?}"
    );
}

#[test]
fn pod_not_answering() {
    let lab = Lab::new(
        "dpod",
        LabSpec {
            pod_server: false,
            ..Default::default()
        },
    )
    .unwrap();
    let r = start(&lab, "192.0.2.240", 4);
    let _ = netns::http_get(&lab.client(), lab.lb_addr(), T);
    let (out, v) = finish(r);
    let (layer, s) = verdict(&v);
    assert_eq!(
        (layer.as_str(), out.code),
        ("pod_not_answering", Some(1)),
        "{s}\n{v:#}"
    );
    assert!(s.contains("10.244.1.5:8080"), "{s}");
}

#[test]
fn arp_answered_by_this_node_without_traffic() {
    let lab = Lab::new("darp", LabSpec::default()).unwrap();
    let r = start(&lab, "192.0.2.240", 3);
    let mac = lab.mac(&lab.client(), "eth0").unwrap();
    for _ in 0..2 {
        netns::arp_request(&lab.client(), "eth0", mac, CLIENT, LB).unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    let (out, v) = finish(r);
    let (layer, s) = verdict(&v);
    assert_eq!((layer.as_str(), out.code), ("no_traffic", Some(3)), "{s}");
    let node_mac =
        lbpath_tests::netns::in_ns(&lab.node(), &["cat", "/sys/class/net/eth0/address"]).unwrap();
    let text = v["arp"]["text"].as_str().unwrap();
    assert!(text.contains(node_mac.trim()), "{text}");
    assert!(
        s.contains("this node answers")
            || v["verdict"]["evidence"]
                .to_string()
                .contains(node_mac.trim()),
        "{s}"
    );
}

#[test]
fn arp_requested_but_not_answered() {
    let lab = Lab::new(
        "dnoa",
        LabSpec {
            speaker: false,
            ..Default::default()
        },
    )
    .unwrap();
    let r = start(&lab, "192.0.2.240", 4);
    assert!(netns::http_get(&lab.client(), lab.lb_addr(), T).is_err());
    let (out, v) = finish(r);
    let (layer, s) = verdict(&v);
    assert_eq!(
        (layer.as_str(), out.code),
        ("not_announced", Some(1)),
        "{s}"
    );
    assert!(
        s.contains("this node is not announcing 192.0.2.240") && s.contains("kubectl describe svc"),
        "{s}"
    );
}

#[test]
fn two_macs_answer() {
    let lab = Lab::new("dtwo", LabSpec::default()).unwrap();
    let r = start(&lab, "192.0.2.240", 4);
    // Another host claims the IP too (a second speaker, or a duplicate IP).
    let rogue = [0x02, 0xba, 0xd0, 0, 0, 0x01];
    netns::gratuitous_arp(&lab.router(), "eth0", rogue, LB).unwrap();
    let _ = netns::http_get(&lab.client(), lab.lb_addr(), T);
    netns::gratuitous_arp(&lab.router(), "eth0", rogue, LB).unwrap();
    let (out, v) = finish(r);
    let (layer, s) = verdict(&v);
    assert_eq!(
        (layer.as_str(), out.code),
        ("not_announced", Some(1)),
        "{s}"
    );
    let node_mac = in_ns(&lab.node(), &["cat", "/sys/class/net/eth0/address"]).unwrap();
    assert!(
        s.contains("02:ba:d0:00:00:01") && s.contains(node_mac.trim()),
        "{s}"
    );
}

fn bgp_lab(name: &str, router_thinks_node_as: u32) -> (Lab, Running) {
    let mut svc = web_service(vec![pod_endpoint()], false);
    svc.lb_ip = BGP_LB;
    let mut lab = Lab::new(
        name,
        LabSpec {
            services: vec![svc],
            speaker: false,
            ..Default::default()
        },
    )
    .unwrap();
    let r = start(&lab, "203.0.113.240", 8);
    lab.start_bgpd(
        "router",
        &bgp_config(64501, ROUTER, NODE, router_thinks_node_as, None),
    )
    .unwrap();
    lab.start_bgpd(
        "node",
        &bgp_config(64500, NODE, ROUTER, 64501, Some("203.0.113.240/32")),
    )
    .unwrap();
    (lab, r)
}

#[test]
fn bgp_up_and_announced() {
    let (lab, r) = bgp_lab("dbgp", 64500);
    // The router learned the /32 from the node: route traffic there like its FIB would.
    let learned = netns::wait_for(Duration::from_secs(6), || {
        lab.vtysh("router", "show bgp ipv4 unicast 203.0.113.240/32")
            .ok()
            .filter(|o| o.contains("192.0.2.2"))
    });
    assert!(learned.is_some(), "the router did not learn the LB /32");
    in_ns(
        &lab.router(),
        &["ip", "route", "add", "203.0.113.240/32", "via", "192.0.2.2"],
    )
    .unwrap();
    let body = netns::http_get(&lab.remote(), SocketAddr::from((BGP_LB, 80)), T).unwrap();
    assert!(body.contains("hello from pod"));
    let (out, v) = finish(r);
    let (layer, s) = verdict(&v);
    assert_eq!((layer.as_str(), out.code), ("healthy", Some(0)), "{s}");
    let peers = v["bgp"]["peers"].as_array().unwrap();
    let p = peers
        .iter()
        .find(|p| p["peer"] == "192.0.2.1")
        .unwrap_or_else(|| panic!("{peers:?}"));
    assert_eq!(p["state"]["state"], "up", "{p}");
    let adv = &p["advertised"];
    assert!(
        adv.to_string().contains("203.0.113.240/32") && adv.to_string().contains("192.0.2.2"),
        "{adv}"
    );
}

#[test]
fn bgp_notification_decoded() {
    // The router expects another AS from the node: it answers the OPEN with
    // a NOTIFICATION (OPEN Message Error / Bad Peer AS).
    let (_lab, r) = bgp_lab("dnot", 64999);
    let (out, v) = finish(r);
    let (layer, s) = verdict(&v);
    assert_eq!(
        (layer.as_str(), out.code),
        ("not_announced", Some(1)),
        "{s}"
    );
    assert!(s.contains("Bad Peer AS"), "{s}");
    assert!(s.contains("192.0.2.1"), "{s}");
}

#[test]
fn text_report_and_bad_input() {
    let lab = Lab::new("dtxt", LabSpec::default()).unwrap();
    let r = Running::diagnose(&lab.node(), &["192.0.2.240", "--duration", "3s"]).unwrap();
    netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    let out = r.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    for needle in [
        "node checks",
        "L2 (ARP)",
        "BGP",
        "traffic (1 flow)",
        "verdict: healthy",
    ] {
        assert!(
            out.stdout.contains(needle),
            "no '{needle}' in:\n{}",
            out.stdout
        );
    }
    let bad = lbpath_tests::run::run_once(
        &lab.node(),
        &["diagnose", "192.0.2.999"],
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(bad.code, Some(2));
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
    assert!(
        bad.stderr.starts_with("lbpath: ")
            && bad.stderr.contains("'192.0.2.999' is not an IP address"),
        "{}",
        bad.stderr
    );
}

/// The LB IP local on the node (as on kube-ipvs0) with nothing behind the
/// port: the node's own stack answers the SYN with a reset. That is a
/// refusal by this node, never "healthy" or the pod's.
#[test]
fn node_refusing_its_local_lb_ip() {
    let lab = Lab::new("dnref", LabSpec::default()).unwrap();
    in_ns(
        &lab.node(),
        &["ip", "addr", "add", "192.0.2.240/32", "dev", "lo"],
    )
    .unwrap();
    let r = start(&lab, "192.0.2.240", 4);
    let to = SocketAddr::new(lab.lb_addr().ip(), 81);
    let refused = netns::run_in(&lab.client(), move || {
        Ok(std::net::TcpStream::connect_timeout(&to, T)
            .err()
            .map(|e| e.kind()))
    })
    .unwrap();
    assert_eq!(refused, Some(std::io::ErrorKind::ConnectionRefused));
    let (out, v) = finish(r);
    let (layer, s) = verdict(&v);
    // The whole report when it fails: which hops and evidence led there.
    assert_eq!(
        (layer.as_str(), out.code),
        ("dropped_on_node", Some(1)),
        "{s}\n{v:#}"
    );
    assert!(
        s.contains("this node refused it with a reset"),
        "{s}\n{v:#}"
    );
    assert!(s.contains("192.0.2.240:81"), "{s}");
}
