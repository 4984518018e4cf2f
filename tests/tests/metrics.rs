//! `lbpath watch --metrics`: real traffic in the lab, then a scrape from
//! inside the node's namespace (where lbpath listens), checked series by
//! series and by `promtool check metrics`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use lbpath_tests::{
    lab::*,
    netns::{self, in_ns},
    run::{Running, run_once},
};

const T: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(20);
/// Inside the lab's node namespace: no clash with the host or other labs.
const METRICS: &str = "127.0.0.1:19464";

/// GET `path` from `addr` inside `ns`: status line and body.
fn get(ns: &str, addr: &str, path: &str) -> Result<(String, String)> {
    let addr: SocketAddr = addr.parse()?;
    let path = path.to_string();
    netns::run_in(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, T).context("connecting")?;
        s.set_read_timeout(Some(T))?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let (head, body) = out.split_once("\r\n\r\n").context("no header end")?;
        Ok((
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        ))
    })
}

/// The value of the series written exactly as `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn promtool_check(text: &str) -> Result<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("promtool (Debian package prometheus; cargo xtask bootstrap installs it)")?;
    child.stdin.take().unwrap().write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(out.status.success(), "promtool check metrics: {said}");
    Ok(said)
}

#[test]
fn metrics_count_real_flows_drops_and_arp() {
    // Requests from the remote network arrive on eth0 but are routed back
    // out eth1: strict rp_filter drops them. The client's are answered.
    let lab = Lab::new(
        "met",
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
            "203.0.113.1",
            "dev",
            "eth1",
        ],
    )
    .unwrap();
    lab.sysctl(&node, "net.ipv4.conf.all.rp_filter=1").unwrap();
    lab.sysctl(&node, "net.ipv4.conf.eth0.rp_filter=1").unwrap();
    let w = Running::watch(&node, &[&LB.to_string(), "--json", "--metrics", METRICS])
        .expect("lbpath attaches");
    for _ in 0..2 {
        let body = netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
        assert!(body.contains("hello from pod"), "{body}");
    }
    assert!(netns::http_get(&lab.remote(), lab.lb_addr(), T).is_err());
    netns::wait_for(WAIT, || (w.flows().len() >= 3).then_some(())).expect("three flows");
    // The slot is refreshed every 100 ms.
    let text = netns::wait_for(WAIT, || {
        let (_, body) = get(&node, METRICS, "/metrics").ok()?;
        let answered = value(
            &body,
            "lbpath_flows_total{lb=\"192.0.2.240\",service=\"default/web:http\",verdict=\"answered\"}",
        )?;
        (answered >= 2.0).then_some(body)
    });
    let (status, last) = get(&node, METRICS, "/metrics").unwrap();
    let out = w.stop().unwrap();
    let text = text.unwrap_or_else(|| panic!("no answered flows in:\n{last}\n{}", out.stderr));
    println!("{text}");
    assert!(status.contains("200"), "{status}");
    assert!(
        out.stderr
            .contains("metrics on http://127.0.0.1:19464/metrics"),
        "{}",
        out.stderr
    );
    assert_eq!(
        value(
            &text,
            "lbpath_flows_total{lb=\"192.0.2.240\",service=\"default/web:http\",verdict=\"answered\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "lbpath_flows_total{lb=\"192.0.2.240\",service=\"default/web:http\",verdict=\"dropped\"}"
        ),
        Some(1.0),
        "{text}"
    );
    // One drop, named by place and reason (the reason's name depends on
    // the kernel: its drop reasons, or the function that freed it).
    let drops: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("lbpath_drops_total{"))
        .collect();
    assert_eq!(drops.len(), 1, "{text}");
    assert!(
        drops[0].contains("hop=\"in the routing decision") && drops[0].ends_with("} 1"),
        "{}",
        drops[0]
    );
    // The client asked who has the LB IP; the node's eth0 answered.
    let mac = lab.mac(&node, "eth0").unwrap();
    let mac = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let arp = value(
        &text,
        &format!("lbpath_arp_answers_total{{lb=\"192.0.2.240\",mac=\"{mac}\"}}"),
    );
    assert!(arp.is_some_and(|n| n >= 1.0), "{mac}: {text}");
    assert_eq!(
        value(&text, "lbpath_events_lost_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(value(&text, "lbpath_events_cut_total"), Some(0.0), "{text}");
    // No client address or port is a label.
    for client in ["192.0.2.10", "198.51.100.10"] {
        assert!(!text.contains(client), "{client} in:\n{text}");
    }
    promtool_check(&text).unwrap();
}

#[test]
fn metrics_other_paths_and_bad_addresses() {
    let lab = Lab::new("metb", LabSpec::default()).unwrap();
    let node = lab.node();
    for (bad, says) in [
        ("9464", "'9464' is not a listen address"),
        ("localhost:9464", "is not a listen address"),
        (":0", "is not a listen address"),
    ] {
        let out = run_once(&node, &["watch", "192.0.2.240", "--metrics", bad], T).unwrap();
        assert_eq!(out.code, Some(2), "{bad}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{bad}: {}", out.stderr);
        assert!(out.stderr.contains(says), "{bad}: {}", out.stderr);
    }
    // A port already taken: one line, exit 2, before anything is loaded.
    let w = Running::watch(&node, &[&LB.to_string(), "--json", "--metrics", METRICS])
        .expect("lbpath attaches");
    let out = run_once(&node, &["watch", "192.0.2.240", "--metrics", METRICS], T).unwrap();
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("--metrics 127.0.0.1:19464: cannot listen there"),
        "{}",
        out.stderr
    );
    let (status, body) = get(&node, METRICS, "/nope").unwrap();
    assert!(status.contains("404"), "{status} {body}");
    let (status, body) = get(&node, METRICS, "/metrics").unwrap();
    assert!(status.contains("200"), "{status}");
    // Before any traffic: no flow series yet, the loss counters at 0.
    assert!(!body.contains("lbpath_flows_total{"), "{body}");
    assert!(
        body.contains("# TYPE lbpath_events_lost_total counter"),
        "{body}"
    );
    assert_eq!(
        value(&body, "lbpath_events_lost_total"),
        Some(0.0),
        "{body}"
    );
    promtool_check(&body).unwrap();
    w.stop().unwrap();
}

#[test]
fn metrics_bgp_session_state() {
    let mut svc = web_service(vec![pod_endpoint()], false);
    svc.lb_ip = BGP_LB;
    let mut lab = Lab::new(
        "metg",
        LabSpec {
            services: vec![svc],
            speaker: false,
            ..Default::default()
        },
    )
    .unwrap();
    let node = lab.node();
    let w = Running::watch(
        &node,
        &[&BGP_LB.to_string(), "--bgp", "--json", "--metrics", METRICS],
    )
    .expect("lbpath attaches");
    lab.start_bgpd("router", &bgp_config(64501, ROUTER, NODE, 64500, None))
        .unwrap();
    lab.start_bgpd(
        "node",
        &bgp_config(64500, NODE, ROUTER, 64501, Some("203.0.113.240/32")),
    )
    .unwrap();
    let up = "lbpath_bgp_session_up{peer=\"192.0.2.1\"}";
    let text = netns::wait_for(WAIT, || {
        let (_, body) = get(&node, METRICS, "/metrics").ok()?;
        (value(&body, up) == Some(1.0)).then_some(body)
    });
    let (_, last) = get(&node, METRICS, "/metrics").unwrap_or_default();
    let out = w.stop().unwrap();
    let text = text.unwrap_or_else(|| panic!("session not up in:\n{last}\n{}", out.stderr));
    println!("{text}");
    assert_eq!(
        value(
            &text,
            "lbpath_bgp_session_state{peer=\"192.0.2.1\",state=\"up\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "lbpath_bgp_session_state{peer=\"192.0.2.1\",state=\"syn_sent\"}"
        ),
        Some(0.0),
        "{text}"
    );
    promtool_check(&text).unwrap();
}
