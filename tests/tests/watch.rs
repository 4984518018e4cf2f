//! `lbpath watch` on real traffic in the lab: each case asserts the hops and
//! the verdict lbpath reports, not just that it printed something.

use std::{net::SocketAddr, time::Duration};

use lbpath_tests::{
    kernel,
    kubeproxy_rules::EpSpec,
    lab::*,
    netns::{self, in_ns},
    run::Running,
};
use serde_json::Value;

const T: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(20);

fn hops<'a>(flow: &'a Value, kind: &str) -> Vec<&'a Value> {
    flow["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["hop"] == kind)
        .collect()
}

fn verdict(flow: &Value) -> &str {
    flow["verdict"]["kind"].as_str().unwrap()
}

fn summary(flow: &Value) -> String {
    format!(
        "{} | hint: {}",
        flow["verdict"]["summary"], flow["verdict"]["hint"]
    )
}

fn watch(lab: &Lab, extra: &[&str]) -> Running {
    let lb = LB.to_string();
    let mut args = vec![lb.as_str(), "--json"];
    args.extend_from_slice(extra);
    Running::watch(&lab.node(), &args).expect("lbpath attaches")
}

fn healthy(mode: KubeProxy, chain_word: &str) {
    let lab = Lab::new(
        if mode == KubeProxy::Nftables {
            "okn"
        } else {
            "oki"
        },
        LabSpec {
            kube_proxy: mode,
            ..Default::default()
        },
    )
    .unwrap();
    let w = watch(&lab, &[]);
    let body = netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    assert!(body.contains("hello from pod"), "{body}");
    let flow = w.wait_flow(WAIT, |_| true).expect("a flow is reported");
    let out = w.stop().unwrap();
    // Shown only when the test fails.
    println!("flow: {flow}");
    assert_eq!(verdict(&flow), "answered", "{}", summary(&flow));
    assert_eq!(flow["flow"]["lb"], "192.0.2.240:80");
    assert_eq!(flow["service"]["name"], "default/web:http");
    let arrived = hops(&flow, "arrived");
    assert_eq!(arrived[0]["iface"], "eth0");
    assert_eq!(arrived[0]["dir"], "request");
    assert_eq!(arrived[0]["tcp_flags"], "SYN");
    let dnat = hops(&flow, "dnat");
    assert_eq!(dnat[0]["from"], "192.0.2.240:80");
    assert_eq!(dnat[0]["to"], "10.244.1.5:8080");
    let by = dnat[0]["by"].as_str().unwrap();
    assert!(
        by.contains(chain_word) && by.contains("default/web:http"),
        "{by}"
    );
    assert!(dnat[0]["hook"].as_str().unwrap().contains("PREROUTING"));
    // Without BPF netfilter links (before 6.4) the DNAT is inferred, and says so.
    assert_eq!(
        dnat[0]["inferred"].as_bool().unwrap_or(false),
        !kernel::has_netfilter_links(),
        "{dnat:?}"
    );
    let route = hops(&flow, "route");
    assert_eq!(route[0]["decision"], "forward");
    let left: Vec<_> = hops(&flow, "left");
    assert!(
        left.iter()
            .any(|h| h["dir"] == "request" && h["iface"] == "vethpod" && h["role"] == "pod_veth"),
        "{left:?}"
    );
    assert!(
        left.iter()
            .any(|h| h["dir"] == "reply" && h["iface"] == "eth0"),
        "{left:?}"
    );
    assert_eq!(hops(&flow, "in_pod")[0]["addr"], "10.244.1.5:8080");
    // The reply's source is put back to the LB IP.
    assert!(
        dnat.iter()
            .any(|h| h["dir"] == "reply" && h["to"] == "192.0.2.240:80"),
        "{dnat:?}"
    );
    assert_eq!(hops(&flow, "conntrack")[0]["state"], "new");
    // Exactly one flow, and the totals say so: every flow the kernel side
    // traced was reported.
    assert_eq!(out.flows().len(), 1, "{}", out.stdout);
    let totals = lbpath_tests::run::json_lines(&out.stdout)
        .into_iter()
        .find_map(|v| v.get("totals").cloned())
        .unwrap_or_else(|| panic!("no totals: {}", out.stdout));
    assert_eq!(totals["flows"]["answered"], 1, "{totals}");
    assert_eq!(totals["flows_not_reported"], 0, "{totals}");
}

#[test]
fn healthy_iptables_nft() {
    healthy(KubeProxy::IptablesNft, "KUBE-SEP-");
}

#[test]
fn healthy_nftables_mode() {
    healthy(KubeProxy::Nftables, "endpoint-");
}

/// On a node whose rules take seconds to read (thousands of Services), the
/// hooks go in first: a connection made while the rules are still being
/// read is reported in full, with its Service, once they are.
#[test]
fn connection_during_a_slow_rules_read_is_reported() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new("early", LabSpec::default()).unwrap();
    // iptables-nft-save, slowed down as a big ruleset slows it.
    let shims = lab.dir("shims").unwrap();
    let real_path = format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    let shim = shims.join("iptables-nft-save");
    std::fs::write(
        &shim,
        format!("#!/bin/sh\nsleep 4\nPATH='{real_path}' exec iptables-nft-save \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &lab.node()])
        .arg(lbpath_tests::run::lbpath_bin())
        .args(["watch", &LB.to_string(), "--json", "-v"])
        .env("PATH", format!("{}:{real_path}", shims.display()))
        .env("NO_COLOR", "1");
    let (w, hooks) = Running::spawn_until(cmd, "hooks in place", Duration::from_secs(30)).unwrap();
    let body = netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    assert!(body.contains("hello from pod"), "{body}");
    assert!(
        !w.stderr().contains("lbpath: watching"),
        "the rules were read before the request (hooks in place after {hooks:?}): {}",
        w.stderr()
    );
    let flow = w.wait_flow(WAIT, |_| true).expect("the flow is reported");
    let out = w.stop().unwrap();
    println!("flow: {flow}");
    assert_eq!(verdict(&flow), "answered", "{}", summary(&flow));
    assert_eq!(flow["service"]["name"], "default/web:http");
    assert_eq!(hops(&flow, "arrived")[0]["tcp_flags"], "SYN");
    let (hooks_at, watching_at) = (
        out.stderr.find("hooks in place").unwrap(),
        out.stderr
            .find("lbpath: watching")
            .expect("watching once the rules are read"),
    );
    assert!(hooks_at < watching_at, "{}", out.stderr);
}

#[test]
fn text_output_reads_at_a_glance() {
    let lab = Lab::new("txt", LabSpec::default()).unwrap();
    let w = Running::watch(&lab.node(), &[&LB.to_string()]).unwrap();
    netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    netns::wait_for(WAIT, || {
        w.stdout().contains("reached the pod").then_some(())
    })
    .expect("verdict line");
    let out = w.stop().unwrap();
    let text = out.stdout;
    let lines: Vec<&str> = text.lines().collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no '{needle}' in:\n{text}"))
    };
    // ARP for the IP comes before the flow it precedes.
    assert!(pos("who-has 192.0.2.240") < pos("● tcp"));
    assert!(pos("is-at") < pos("● tcp") && lines[pos("is-at")].contains("this node"));
    let head = lines[pos("● tcp")];
    assert!(
        head.contains("192.0.2.10:")
            && head.contains("→ 192.0.2.240:80")
            && head.contains("default/web:http"),
        "{text}"
    );
    assert!(pos("● tcp") < pos("arrived"));
    assert!(pos("arrived") < pos("DNAT"));
    // The DNAT hop, with the lines its detail continues on.
    let dnat = text[text.find("→ DNAT").unwrap()..]
        .split("\n   +")
        .next()
        .unwrap();
    assert!(
        dnat.contains("nat chain"),
        "the band names the nat chain: {text}"
    );
    assert!(pos("DNAT") < pos("in pod"));
    assert!(pos("in pod") < pos("✔ reached the pod"));
    assert!(!text.contains('\x1b'), "NO_COLOR respected");
    assert!(out.stderr.contains("1 flow (1 answered)"), "{}", out.stderr);
}

#[test]
fn no_endpoints_reject() {
    let lab = Lab::new(
        "noep",
        LabSpec {
            services: vec![web_service(vec![], false)],
            ..Default::default()
        },
    )
    .unwrap();
    let w = watch(&lab, &[]);
    assert!(netns::http_get(&lab.client(), lab.lb_addr(), T).is_err());
    let flow = w.wait_flow(WAIT, |_| true).unwrap();
    assert_eq!(verdict(&flow), "dropped", "{}", summary(&flow));
    assert!(
        summary(&flow).contains("has no endpoints"),
        "{}",
        summary(&flow)
    );
    let d = hops(&flow, "dropped");
    assert_eq!(d[0]["reason"], "NETFILTER_DROP");
}

#[test]
fn external_traffic_policy_local_without_local_endpoint() {
    let remote_ep = EpSpec {
        ip: POD2,
        port: POD_PORT,
        local: false,
    };
    let lab = Lab::new(
        "etpl",
        LabSpec {
            services: vec![web_service(vec![remote_ep], true)],
            node2: Some(Node2::HostRoute),
            ..Default::default()
        },
    )
    .unwrap();
    let w = watch(&lab, &[]);
    assert!(netns::http_get(&lab.client(), lab.lb_addr(), T).is_err());
    let flow = w.wait_flow(WAIT, |_| true).unwrap();
    assert_eq!(verdict(&flow), "dropped", "{}", summary(&flow));
    assert!(
        summary(&flow).contains("no local endpoints"),
        "{}",
        summary(&flow)
    );
}

/// Requests from the remote network come in on eth0, but the node routes
/// that network out eth1: the asymmetric return path of MetalLB's guide.
fn asymmetric_lab(name: &str, rp_filter: i64, gw: &str) -> Lab {
    let lab = Lab::new(
        name,
        LabSpec {
            second_uplink: true,
            ..Default::default()
        },
    )
    .unwrap();
    let node = lab.node();
    in_ns(
        &node,
        &[
            "ip",
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            gw,
            "dev",
            "eth1",
        ],
    )
    .unwrap();
    lab.sysctl(&node, &format!("net.ipv4.conf.all.rp_filter={rp_filter}"))
        .unwrap();
    lab.sysctl(&node, &format!("net.ipv4.conf.eth0.rp_filter={rp_filter}"))
        .unwrap();
    lab
}

#[test]
fn rp_filter_strict_drops_asymmetric_requests() {
    let lab = asymmetric_lab("rpf", 1, "203.0.113.1");
    let w = watch(&lab, &[]);
    assert!(netns::http_get(&lab.remote(), lab.lb_addr(), T).is_err());
    let flow = w.wait_flow(WAIT, |_| true).unwrap();
    assert_eq!(verdict(&flow), "dropped", "{}", summary(&flow));
    let s = summary(&flow);
    assert!(
        s.contains("reverse-path filter")
            && s.contains("arrived on eth0")
            && s.contains("eth1")
            && s.contains("strict"),
        "{s}"
    );
    assert!(s.contains("rp_filter=2"), "{s}");
    assert_eq!(hops(&flow, "dropped")[0]["reason"], "IP_RPFILTER");
}

/// Text output on a pipe fits 80 columns: long details (the DNAT's rule,
/// the rp_filter drop, its hint) continue on indented lines, words whole.
#[test]
fn text_lines_fit_80_columns() {
    let lab = asymmetric_lab("wid", 1, "203.0.113.1");
    let w = Running::watch(&lab.node(), &[&LB.to_string()]).unwrap();
    netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    assert!(netns::http_get(&lab.remote(), lab.lb_addr(), T).is_err());
    netns::wait_for(WAIT, || {
        let out = w.stdout();
        (out.contains("reached the pod") && out.contains("✘ dropped")).then_some(())
    })
    .expect("both verdicts");
    let out = w.stop().unwrap();
    let text = out.stdout;
    // Shown only when the test fails.
    println!("{text}");
    for l in text.lines() {
        assert!(
            l.chars().count() <= 80,
            "{} columns: {l:?}",
            l.chars().count()
        );
    }
    // Wrapping happened, onto indented lines, and split no word.
    let continued = text
        .lines()
        .filter(|l| l.starts_with("      ") && !l.trim_start().starts_with('+'))
        .count();
    assert!(continued >= 3, "{text}");
    for word in [
        "KUBE-SEP-",
        "default/web:http",
        "rp_filter=2",
        "198.51.100.10:",
    ] {
        assert!(text.contains(word), "{word} in:\n{text}");
    }
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        joined.contains("reverse-path filter: arrived on eth0"),
        "{joined}"
    );
}

#[test]
fn reply_leaves_another_way_and_its_next_hop_does_not_resolve() {
    let lab = asymmetric_lab("rpoff", 0, &NOBODY.to_string());
    let w = watch(&lab, &[]);
    assert!(netns::http_get(&lab.remote(), lab.lb_addr(), T).is_err());
    let flow = w
        .wait_flow(WAIT, |v| verdict(v) == "dropped")
        .expect("the reply's drop is reported");
    let s = summary(&flow);
    assert!(
        s.contains("reply was dropped")
            && s.contains("203.0.113.9")
            && s.contains("did not answer ARP"),
        "{s}"
    );
    let left_reply: Vec<_> = hops(&flow, "dropped")
        .into_iter()
        .filter(|h| h["dir"] == "reply")
        .collect();
    assert_eq!(left_reply[0]["reason"], "NEIGH_FAILED");
}

#[test]
fn reply_by_another_interface_is_flagged() {
    let lab = asymmetric_lab("asym", 0, "203.0.113.1");
    let w = watch(&lab, &[]);
    let body = netns::http_get(&lab.remote(), lab.lb_addr(), T).unwrap();
    assert!(body.contains("hello from pod"));
    let flow = w.wait_flow(WAIT, |_| true).unwrap();
    assert_eq!(verdict(&flow), "answered_asymmetric", "{}", summary(&flow));
    let s = summary(&flow);
    assert!(
        s.contains("left via eth1") && s.contains("came in on eth0"),
        "{s}"
    );
}

#[test]
fn forward_drop_names_hook_and_rule() {
    let lab = Lab::new("fwd", LabSpec::default()).unwrap();
    in_ns(
        &lab.node(),
        &[
            "iptables-nft",
            "-I",
            "FORWARD",
            "-d",
            "10.244.1.5/32",
            "-p",
            "tcp",
            "--dport",
            "8080",
            "-j",
            "DROP",
        ],
    )
    .unwrap();
    let w = watch(&lab, &[]);
    assert!(netns::http_get(&lab.client(), lab.lb_addr(), T).is_err());
    let flow = w.wait_flow(WAIT, |_| true).unwrap();
    assert_eq!(verdict(&flow), "dropped", "{}", summary(&flow));
    let d = hops(&flow, "dropped")[0];
    assert_eq!(d["reason"], "NETFILTER_DROP");
    assert_eq!(d["hook"], "FORWARD");
    let detail = d["detail"].as_str().unwrap();
    assert!(
        detail.contains("-d 10.244.1.5/32")
            && detail.contains("-j DROP")
            && detail.contains("counters"),
        "{detail}"
    );
    // DNAT happened before the drop.
    assert_eq!(hops(&flow, "dnat")[0]["to"], "10.244.1.5:8080");
}

/// A rule comment holding terminal escapes, C1 controls, a bidi override
/// and a newline (iptables-save prints it raw, breaking its own line
/// format): the rule is still read, the rest of the rules too, and nothing
/// of it reaches the output unescaped.
#[test]
fn hostile_rule_comment_is_read_and_escaped() {
    let lab = Lab::new("hstl", LabSpec::default()).unwrap();
    let comment = "evil\nline\x1b[2J\x1b]0;owned\x07\u{9b}31m\u{202e}gnp.exe";
    in_ns(
        &lab.node(),
        &[
            "iptables-nft",
            "-I",
            "FORWARD",
            "-d",
            "10.244.1.5/32",
            "-p",
            "tcp",
            "--dport",
            "8080",
            "-m",
            "comment",
            "--comment",
            comment,
            "-j",
            "DROP",
        ],
    )
    .unwrap();
    let json = watch(&lab, &[]);
    let text = Running::watch(&lab.node(), &[&LB.to_string()]).expect("lbpath attaches");
    assert!(netns::http_get(&lab.client(), lab.lb_addr(), T).is_err());
    let flow = json.wait_flow(WAIT, |_| true).unwrap();
    assert_eq!(verdict(&flow), "dropped", "{}", summary(&flow));
    // The other rules were read: the Service is named.
    assert_eq!(flow["service"]["name"], "default/web:http", "{flow}");
    let d = hops(&flow, "dropped")[0];
    let detail = d["detail"].as_str().unwrap();
    assert!(
        detail.contains(r"evil\nline\x1b[2J\x1b]0;owned\x07\u009b31m\u202egnp.exe"),
        "{detail}"
    );
    let end = std::time::Instant::now() + WAIT;
    while !text.stdout().contains("gnp.exe") && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (what, out) in [
        ("json", json.stop().unwrap()),
        ("text", text.stop().unwrap()),
    ] {
        let all = out.stdout + &out.stderr;
        assert!(all.contains("gnp.exe"), "{what}: {all}");
        let raw: Vec<char> = all
            .chars()
            .filter(|&c| {
                (c < ' ' && c != '\n') || ('\u{7f}'..='\u{9f}').contains(&c) || c == '\u{202e}'
            })
            .collect();
        assert!(raw.is_empty(), "{what}: raw {raw:?} in {all}");
    }
}

#[test]
fn pod_not_listening_is_refused() {
    let lab = Lab::new(
        "refu",
        LabSpec {
            pod_server: false,
            ..Default::default()
        },
    )
    .unwrap();
    let w = watch(&lab, &[]);
    assert!(netns::http_get(&lab.client(), lab.lb_addr(), T).is_err());
    let flow = w.wait_flow(WAIT, |_| true).unwrap();
    assert_eq!(verdict(&flow), "refused", "{}", summary(&flow));
    assert!(summary(&flow).contains("10.244.1.5:8080"));
    assert!(!hops(&flow, "in_pod").is_empty());
}

fn another_node(kind: Node2, name: &str, towards: &str) {
    let ep = EpSpec {
        ip: POD2,
        port: POD_PORT,
        local: false,
    };
    let lab = Lab::new(
        name,
        LabSpec {
            services: vec![web_service(vec![ep], false)],
            node2: Some(kind),
            ..Default::default()
        },
    )
    .unwrap();
    let w = watch(&lab, &[]);
    let body = netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    assert!(body.contains("hello from pod2"), "{body}");
    let flow = w.wait_flow(WAIT, |_| true).unwrap();
    // The request left towards the other node; its answer came back and left.
    let left: Vec<_> = hops(&flow, "left")
        .into_iter()
        .filter(|h| h["dir"] == "request")
        .collect();
    assert!(
        left.iter()
            .any(|h| h["towards"].as_str().unwrap().contains(towards)),
        "{left:?}"
    );
    assert_eq!(hops(&flow, "dnat")[0]["to"], "10.244.2.7:8080");
    assert_eq!(verdict(&flow), "answered", "{}", summary(&flow));
}

#[test]
fn pod_on_another_node_via_uplink() {
    another_node(Node2::HostRoute, "n2r", "another node via 192.0.2.3");
}

#[test]
fn pod_on_another_node_via_vxlan() {
    another_node(Node2::Vxlan, "n2x", "overlay");
}

#[test]
fn mtu_too_small_on_the_pod_path() {
    let lab = Lab::new(
        "mtu",
        LabSpec {
            pod_mtu: Some(1400),
            ..Default::default()
        },
    )
    .unwrap();
    // Only the node side shrinks: the pod still advertises a 1460-byte MSS.
    in_ns(&lab.pod(), &["ip", "link", "set", "eth0", "mtu", "1500"]).unwrap();
    let w = watch(&lab, &[]);
    let _ = netns::tcp_send(&lab.client(), lab.lb_addr(), 6000, T);
    let flow = w
        .wait_flow(WAIT, |v| verdict(v) == "dropped")
        .expect("the MTU drop is reported");
    let s = summary(&flow);
    assert!(s.contains("MTU 1400") || s.contains("path MTU"), "{s}");
    let d: Vec<_> = hops(&flow, "dropped");
    assert!(d.iter().any(|h| h["reason"] == "PKT_TOO_BIG"), "{d:?}");
}

#[test]
fn traffic_of_other_namespaces_is_ignored() {
    // node2 is another cluster node on the same kernel; it is the L2 leader
    // and serves the IP. lbpath runs on node and must see nothing of it.
    let mut lab = Lab::new(
        "other",
        LabSpec {
            speaker: false,
            node2: Some(Node2::HostRoute),
            node2_rules: true,
            services: vec![web_service(
                vec![EpSpec {
                    ip: POD2,
                    port: POD_PORT,
                    local: true,
                }],
                false,
            )],
            ..Default::default()
        },
    )
    .unwrap();
    lab.start_speaker("node2").unwrap();
    let w = watch(&lab, &[]);
    for _ in 0..3 {
        let body = netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
        assert!(body.contains("hello from pod2"), "{body}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let out = w.stop().unwrap();
    assert!(
        out.flows().is_empty(),
        "flows from another namespace: {}",
        out.stdout
    );
    assert!(out.stdout.contains("\"totals\""));
}

#[test]
fn filters_and_counters() {
    let lab = Lab::new("filt", LabSpec::default()).unwrap();
    // Only clients in 198.51.100.0/24: the LAN client's flow is not shown.
    let w = watch(&lab, &["--client", "198.51.100.0/24", "--port", "80"]);
    netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    netns::http_get(&lab.remote(), lab.lb_addr(), T).unwrap();
    let flow = w.wait_flow(WAIT, |_| true).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let out = w.stop().unwrap();
    assert_eq!(out.flows().len(), 1, "{}", out.stdout);
    assert!(
        flow["flow"]["client"]
            .as_str()
            .unwrap()
            .starts_with("198.51.100.10:")
    );
    let c = &flow["counters"];
    assert!(c["request_packets"].as_u64().unwrap() >= 3, "{c}");
    assert!(c["reply_packets"].as_u64().unwrap() >= 2, "{c}");
    let _: SocketAddr = flow["flow"]["client"].as_str().unwrap().parse().unwrap();
}

#[test]
fn conntrack_invalid_dropped_by_kube_forward() {
    // A stray ACK for no connection: with loose tracking off, conntrack calls
    // it INVALID, nothing DNATs it, and kube-proxy's KUBE-FORWARD drops it.
    let lab = Lab::new("inv", LabSpec::default()).unwrap();
    lab.sysctl(&lab.node(), "net.netfilter.nf_conntrack_tcp_loose=0")
        .unwrap();
    // The client must know the LB IP's MAC first.
    let _ = netns::http_get(&lab.client(), lab.lb_addr(), T);
    let w = watch(&lab, &[]);
    netns::tcp_segment(
        &lab.client(),
        "192.0.2.10:45555".parse().unwrap(),
        lab.lb_addr(),
        0x10,
    )
    .unwrap();
    let flow = w
        .wait_flow(WAIT, |v| v["flow"]["client"] == "192.0.2.10:45555")
        .expect("the stray ACK is reported");
    let ct: Vec<_> = hops(&flow, "conntrack");
    assert!(
        ct[0]["state"].as_str().unwrap().starts_with("invalid"),
        "{ct:?}"
    );
    assert_eq!(verdict(&flow), "dropped", "{}", summary(&flow));
    let d = hops(&flow, "dropped")[0];
    assert_eq!(d["reason"], "NETFILTER_DROP");
    assert!(d["detail"].as_str().unwrap().contains("INVALID"), "{d}");
}

#[test]
fn client_on_the_node_itself() {
    // A process on the node: kube-proxy's OUTPUT chain does the DNAT.
    let lab = Lab::new("local", LabSpec::default()).unwrap();
    let w = watch(&lab, &[]);
    let body = netns::http_get(&lab.node(), lab.lb_addr(), T).unwrap();
    assert!(body.contains("hello from pod"));
    let flow = w.wait_flow(WAIT, |_| true).unwrap();
    assert_eq!(hops(&flow, "local_out").len(), 1, "{flow}");
    let dnat = hops(&flow, "dnat");
    assert_eq!(dnat[0]["to"], "10.244.1.5:8080");
    assert!(
        dnat[0]["hook"].as_str().unwrap().contains("OUTPUT"),
        "{dnat:?}"
    );
    assert_eq!(verdict(&flow), "answered", "{}", summary(&flow));
}

/// `--debug-bpf`: the kernel programs' own decisions for traced packets,
/// for debugging lbpath (in the kernel matrix: logging must pass every
/// verifier too).
#[test]
fn debug_bpf_shows_the_programs_decisions() {
    let lab = Lab::new("dbpf", LabSpec::default()).unwrap();
    let w = watch(&lab, &["--debug-bpf"]);
    netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    w.wait_flow(WAIT, |_| true).expect("a flow is reported");
    let out = w.stop().unwrap();
    assert!(
        out.stderr
            .contains("lbpath: bpf: traced packet 1 of the flow from port"),
        "{}",
        out.stderr
    );
    // Without the switch the programs stay silent.
    let w = watch(&lab, &[]);
    netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    w.wait_flow(WAIT, |_| true).expect("a flow is reported");
    let out = w.stop().unwrap();
    assert!(!out.stderr.contains("lbpath: bpf:"), "{}", out.stderr);
}

/// The bench's yardstick (`--empty-programs`, hidden): the same programs
/// on the same hooks, tracing nothing. And `-v` says how long each step of
/// the start took.
#[test]
fn empty_programs_take_the_same_hooks_and_trace_nothing() {
    let lab = Lab::new("empty", LabSpec::default()).unwrap();
    let attached = |stderr: &str| -> String {
        let line = stderr
            .lines()
            .find(|l| l.contains("attached: "))
            .unwrap_or_else(|| panic!("no attached line: {stderr}"));
        line.split_once("attached: ").unwrap().1.to_string()
    };
    let w = watch(&lab, &["-v"]);
    netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    w.wait_flow(WAIT, |_| true).expect("a flow is reported");
    let out = w.stop().unwrap();
    let full = attached(&out.stderr);
    let mut steps = vec![
        "hooks in place",
        "rules read",
        "BTF parsed",
        "maps and object",
        "verifier: lbp_receive",
        "links",
    ];
    // Netfilter programs only where the kernel has BPF netfilter links (6.4+).
    if full.contains("netfilter links") {
        steps.push("verifier: lbp_nf_0");
    }
    for step in steps {
        assert!(out.stderr.contains(step), "{step}: {}", out.stderr);
    }
    let w = watch(&lab, &["-v", "--empty-programs"]);
    let body = netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    assert!(body.contains("hello from pod"), "{body}");
    std::thread::sleep(Duration::from_secs(2));
    let out = w.stop().unwrap();
    assert_eq!(attached(&out.stderr), full);
    assert!(full.contains("tracepoint netif_receive_skb"), "{full}");
    assert!(out.flows().is_empty(), "{}", out.stdout);
}

/// A MetalLB pool (a CIDR), a v4-mapped address, and `--all` (every
/// LoadBalancer IP kube-proxy names): each flow names its LB IP.
#[test]
fn several_ips_ranges_and_all() {
    let lab = Lab::new("mult", LabSpec::default()).unwrap();
    for sel in [
        vec!["192.0.2.224/27", "203.0.113.240"],
        vec!["::ffff:192.0.2.240"],
        vec!["--all"],
    ] {
        let w = watch_sel(&lab, &sel);
        let body = netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
        assert!(body.contains("hello from pod"), "{body}");
        let flow = w
            .wait_flow(WAIT, |_| true)
            .unwrap_or_else(|| panic!("{sel:?}: no flow"));
        let out = w.stop().unwrap();
        assert_eq!(flow["flow"]["lb"], "192.0.2.240:80", "{sel:?}");
        assert_eq!(verdict(&flow), "answered", "{sel:?}: {}", summary(&flow));
        assert_eq!(flow["service"]["name"], "default/web:http", "{sel:?}");
        assert_eq!(out.flows().len(), 1, "{sel:?}: {}", out.stdout);
    }
}

fn watch_sel(lab: &Lab, sel: &[&str]) -> Running {
    let mut args = sel.to_vec();
    args.push("--json");
    Running::watch(&lab.node(), &args).expect("lbpath attaches")
}

/// `--all` follows the rules: an LB IP kube-proxy adds while lbpath runs is
/// watched from then on (the rules are re-read when nftables' generation
/// moves, off the event loop).
#[test]
fn all_follows_new_lb_ips() {
    let lab = Lab::new("alln", LabSpec::default()).unwrap();
    let w = watch_sel(&lab, &["--all"]);
    let svc = lbpath_tests::lab::web_service(vec![lbpath_tests::lab::pod_endpoint()], false);
    let ext = lbpath_tests::kubeproxy_rules::iptables_chain(
        &svc,
        lbpath_tests::kubeproxy_rules::ChainKind::External,
    );
    let new_lb = "192.0.2.241";
    in_ns(
        &lab.node(),
        &[
            "iptables-nft",
            "-t",
            "nat",
            "-I",
            "KUBE-SERVICES",
            "-d",
            "192.0.2.241/32",
            "-p",
            "tcp",
            "-m",
            "comment",
            "--comment",
            "default/web:http loadbalancer IP",
            "-m",
            "tcp",
            "--dport",
            "80",
            "-j",
            &ext,
        ],
    )
    .unwrap();
    in_ns(
        &lab.client(),
        &["ip", "route", "add", "192.0.2.241/32", "via", "192.0.2.2"],
    )
    .unwrap();
    // The re-read happens within about a second of the change.
    let to: SocketAddr = format!("{new_lb}:80").parse().unwrap();
    let flow = netns::wait_for(WAIT, || {
        let _ = netns::http_get(&lab.client(), to, Duration::from_secs(1));
        w.wait_flow(Duration::from_millis(500), |f| {
            f["flow"]["lb"] == "192.0.2.241:80"
        })
    })
    .expect("the new LB IP is watched");
    let out = w.stop().unwrap();
    assert_eq!(verdict(&flow), "answered", "{}", summary(&flow));
    assert_eq!(
        flow["service"]["name"], "default/web:http",
        "{}",
        out.stdout
    );
}

/// A DaemonSet and a debug session on one node: two lbpath instances side
/// by side (the second one's netfilter points move to free priorities).
#[test]
fn two_instances_side_by_side() {
    let lab = Lab::new("twin", LabSpec::default()).unwrap();
    let a = watch(&lab, &[]);
    let b = watch_sel(&lab, &["--all"]);
    netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    for (name, w) in [("first", a), ("second", b)] {
        let flow = w
            .wait_flow(WAIT, |_| true)
            .unwrap_or_else(|| panic!("{name} instance reported no flow"));
        let out = w.stop().unwrap();
        assert_eq!(verdict(&flow), "answered", "{name}: {}", summary(&flow));
        let dnat = hops(&flow, "dnat");
        assert_eq!(dnat[0]["to"], "10.244.1.5:8080", "{name}: {}", out.stdout);
    }
}

/// A SYN flood overflows the ring buffer (made small for the test): the
/// loss is shown while it happens, and flows traced meanwhile are marked
/// incomplete instead of getting a confident verdict.
#[test]
fn loss_is_shown_live_and_flows_are_incomplete() {
    let lab = Lab::new("flood", LabSpec::default()).unwrap();
    let mut args = vec![LB.to_string(), "--json".to_string()];
    args.push("--packets".into());
    args.push("8".into());
    let w = lbpath_tests::run::Running::watch_env(
        &lab.node(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("LBPATH_RING_KIB", "16")],
    )
    .expect("lbpath attaches");
    let _ = in_ns(
        &lab.client(),
        &[
            "timeout",
            "4",
            "hping3",
            "-q",
            "-S",
            "-p",
            "80",
            "--flood",
            &LB.to_string(),
        ],
    );
    // The loss line comes while lbpath runs, before its totals.
    let live = netns::wait_for(WAIT, || w.stdout().contains("\"lost\"").then_some(()));
    let out = w.stop().unwrap();
    assert!(live.is_some(), "no live loss line: {}", out.stderr);
    let totals = lbpath_tests::run::json_lines(&out.stdout)
        .into_iter()
        .find(|v| v.get("totals").is_some())
        .unwrap();
    assert!(
        totals["totals"]["events_lost"].as_u64().unwrap() > 0,
        "{totals}"
    );
    // Flows whose events were all lost are counted, not forgotten.
    assert!(totals["totals"]["flows_not_reported"].is_u64(), "{totals}");
    let flows = out.flows();
    let incomplete = flows
        .iter()
        .filter(|f| verdict(f) == "incomplete")
        .filter(|f| {
            f["verdict"]["summary"]
                .as_str()
                .unwrap()
                .contains("events were lost")
        })
        .count();
    assert!(
        incomplete > 0,
        "{} flows, none marked incomplete",
        flows.len()
    );
}

/// The lab with `lbpath watch --json <extra>` on its node, and a second
/// client address, for a flood told apart from the client's own traffic.
fn flood_lab(name: &str, extra: &[&str], env: &[(&str, &str)]) -> (Lab, Running, &'static str) {
    let lab = Lab::new(name, LabSpec::default()).unwrap();
    let mut args = vec![LB.to_string(), "--json".to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let w = Running::watch_env(
        &lab.node(),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        env,
    )
    .expect("lbpath attaches");
    let src = "192.0.2.51";
    in_ns(
        &lab.client(),
        &["ip", "addr", "add", &format!("{src}/24"), "dev", "eth0"],
    )
    .unwrap();
    (lab, w, src)
}

/// SYNs to the LB IP's port 80 from `src`, sent as `how` says, for at most
/// `secs` seconds.
fn hping_syns(lab: &Lab, src: &str, secs: u32, how: &[&str]) {
    let secs = secs.to_string();
    let lb = LB.to_string();
    let mut cmd = vec![
        "timeout", &secs, "hping3", "-q", "-S", "-a", src, "-p", "80",
    ];
    cmd.extend_from_slice(how);
    cmd.push(&lb);
    // hping3 exits non-zero when timeout stops it.
    let _ = in_ns(&lab.client(), &cmd);
}

/// The totals line of a stopped watch.
fn totals(out: &str) -> Value {
    lbpath_tests::run::json_lines(out)
        .into_iter()
        .find(|v| v.get("totals").is_some())
        .expect("a totals line")
}

/// A flood of new connections while lbpath is behind: the new ones are
/// counted and left untraced (shown live and in the totals, never
/// reported) rather than traced into a loss; once it has caught up,
/// connections are traced again.
#[test]
fn new_connections_are_shed_while_behind_and_traced_again_after() {
    // No rate cap: only being behind sheds here.
    let (lab, w, src) = flood_lab(
        "shed",
        &["--max-new-flows", "1000000"],
        &[("LBPATH_RING_KIB", "64")],
    );
    hping_syns(&lab, src, 3, &["--flood"]);
    let live = netns::wait_for(WAIT, || {
        w.stdout().contains("\"why\":\"behind\"").then_some(())
    });
    // Then, caught up, one connection from the client's own address.
    std::thread::sleep(Duration::from_secs(2));
    netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    let own = format!("{CLIENT}:");
    let after = w.wait_flow(WAIT, |f| {
        f["flow"]["client"]
            .as_str()
            .is_some_and(|c| c.starts_with(&own))
    });
    let out = w.stop().unwrap();
    assert!(live.is_some(), "no live not-traced line: {}", out.stderr);
    let totals = totals(&out.stdout);
    let t = &totals["totals"];
    let shed = t["flows_not_traced"].as_u64().unwrap();
    assert!(shed > 0, "{totals}");
    assert_eq!(t["flows_not_traced_over_rate"], 0, "{totals}");
    // Shed flows are never reported: they are part of the unreported ones.
    assert!(
        t["flows_not_reported"].as_u64().unwrap() >= shed,
        "{totals}"
    );
    let flow = after.unwrap_or_else(|| {
        panic!(
            "the connection after the flood was not traced: {}",
            out.stderr
        )
    });
    assert_eq!(verdict(&flow), "answered", "{}", summary(&flow));
}

/// More new connections a second than `--max-new-flows`: a burst's worth
/// (`--flow-burst`) are traced, then the rate's; the rest are counted and
/// not traced; all are accounted for.
#[test]
fn new_connections_over_the_rate_are_counted_not_traced() {
    let (lab, w, src) = flood_lab(
        "rate",
        &["--max-new-flows", "10", "--flow-burst", "40"],
        &[],
    );
    // 300 SYNs in 0.75 s, 400 a second.
    hping_syns(&lab, src, 10, &["-i", "u2500", "-c", "300"]);
    let live = netns::wait_for(WAIT, || {
        w.stdout().contains("\"why\":\"over_rate\"").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let out = w.stop().unwrap();
    assert!(live.is_some(), "no live not-traced line: {}", out.stderr);
    let totals = totals(&out.stdout);
    let t = &totals["totals"];
    let reported = out
        .flows()
        .iter()
        .filter(|f| {
            f["update"] != true
                && f["flow"]["client"]
                    .as_str()
                    .is_some_and(|c| c.starts_with(src))
        })
        .count() as u64;
    let over = t["flows_not_traced_over_rate"].as_u64().unwrap();
    let unreported = t["flows_not_reported"].as_u64().unwrap();
    // Each CPU's bucket starts with the burst (40) and refills 10 a second,
    // for at most 3 s here.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(
        reported <= cpus * (40 + 10 * 3),
        "{reported} traced: {totals}"
    );
    // The CPU that took the most SYNs (at least 300 / cpus) had its whole
    // burst: more than a second's worth of the rate.
    assert!(
        reported >= 40.min(300 / cpus) && over >= 300 - cpus * 70,
        "{reported} traced, {over} over the rate: {totals}"
    );
    // Every SYN that opened a connection is reported or counted, once.
    assert_eq!(reported + unreported, 300, "{reported} reported: {totals}");
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap()
        / 1024.0
}

/// 30,000 short connections (each SYN from a new source port): watch keeps
/// totals and a bounded list, so its memory stays flat, and every
/// connection is either reported or counted as lost.
#[test]
fn memory_stays_bounded_under_30k_connections() {
    const N: u64 = 30_000;
    let lab = Lab::new("m30k", LabSpec::default()).unwrap();
    let w = watch(&lab, &["--packets", "4"]);
    let pid = w.pid();
    let before = rss_mib(pid);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut v = vec![];
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            v.push(rss_mib(pid));
            std::thread::sleep(Duration::from_millis(250));
        }
        v
    });
    // hping3's own verdict (replies it matched) is not the point here.
    let _ = in_ns(
        &lab.client(),
        &[
            "hping3",
            "-q",
            "-S",
            "-p",
            "80",
            "-i",
            "u40",
            "-c",
            &N.to_string(),
            &LB.to_string(),
        ],
    );
    // Flows end (RST from the client's kernel) and are reported.
    std::thread::sleep(Duration::from_secs(8));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let peak = samples.iter().copied().fold(before, f64::max);
    let after = rss_mib(pid);
    let out = w.stop().unwrap();
    let totals = lbpath_tests::run::json_lines(&out.stdout)
        .into_iter()
        .find(|v| v.get("totals").is_some())
        .unwrap();
    let t = &totals["totals"];
    eprintln!(
        "RSS {before:.1} MiB at start, {peak:.1} MiB at most, {after:.1} MiB after {N} connections; totals {t}"
    );
    assert!(peak <= 64.0, "RSS {peak:.1} MiB during {N} connections");
    let flows: u64 = t["flows"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    let lost = t["events_lost"].as_u64().unwrap();
    // Under loss every flow may be (rightly) incomplete.
    assert!(
        t["flows"]["answered"].as_u64().unwrap_or(0) > 0 || lost > 0,
        "{t}"
    );
    // Every connection reported, or counted: not traced (over the trace
    // rate, or lbpath behind) or its events lost.
    let not_reported = t["flows_not_reported"].as_u64().unwrap();
    assert!(
        flows + not_reported >= N || lost > 0,
        "{flows} flows reported and {not_reported} counted for {N} connections with no loss counted: {t}"
    );
}
