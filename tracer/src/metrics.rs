//! `watch --metrics ADDR`: Prometheus metrics over HTTP (`GET /metrics`).
//!
//! The session's loop counts ([`crate::tally`]) and hands a [`Snapshot`] to
//! a shared slot every tick; the HTTP task renders the latest one per
//! scrape, so a slow scraper never holds up tracing. The exposition is
//! Prometheus' text format (0.0.4), encoded by the `prometheus` crate, which
//! escapes label values (`\`, `"`, newline) — the format `promtool check
//! metrics` validates; untrusted text in them was made visible by the tally
//! already.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{
    UsageError,
    tally::{BGP_STATES, Snapshot},
    watch::verdict_key,
};

/// Where to listen: `:PORT` (every address) or `IP:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    Any(u16),
    At(SocketAddr),
}

/// `--metrics`' value parser.
pub fn parse_addr(s: &str) -> Result<ListenAddr, String> {
    let bad = || format!("'{s}' is not a listen address (try :9464 or 127.0.0.1:9464)");
    let port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(n) => Ok(n),
    };
    if let Some(p) = s.strip_prefix(':') {
        return Ok(ListenAddr::Any(port(p)?));
    }
    let (host, p) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = host.parse().map_err(|_| bad())?;
    Ok(ListenAddr::At(SocketAddr::new(ip, port(p)?)))
}

/// Binds before anything is loaded, so a port in use fails at once.
pub async fn bind(addr: ListenAddr) -> Result<TcpListener, UsageError> {
    let r = match addr {
        // Dual-stack where IPv6 is on (v4-mapped), IPv4 alone where not.
        ListenAddr::Any(p) => match TcpListener::bind((Ipv6Addr::UNSPECIFIED, p)).await {
            Ok(l) => Ok(l),
            Err(_) => TcpListener::bind((Ipv4Addr::UNSPECIFIED, p)).await,
        },
        ListenAddr::At(a) => TcpListener::bind(a).await,
    };
    r.map_err(|e| {
        let at = match addr {
            ListenAddr::Any(p) => format!(":{p}"),
            ListenAddr::At(a) => a.to_string(),
        };
        UsageError(format!("--metrics {at}: cannot listen there: {e}"))
    })
}

pub type Shared = Arc<Mutex<Snapshot>>;

/// A counter family with `labels`, registered in `reg`, one series per row.
fn counters<'a>(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    rows: impl IntoIterator<Item = (Vec<&'a str>, u64)>,
) {
    let Ok(family) = IntCounterVec::new(Opts::new(name, help), labels) else {
        return;
    };
    for (values, n) in rows {
        if let Ok(c) = family.get_metric_with_label_values(&values) {
            c.inc_by(n);
        }
    }
    let _ = reg.register(Box::new(family));
}

fn counter(reg: &Registry, name: &str, help: &str, n: u64) {
    counters(reg, name, help, &[], [(vec![], n)]);
}

/// The exposition of one snapshot (Prometheus text format 0.0.4).
pub fn render(s: &Snapshot) -> String {
    // A registry per scrape: the snapshot is the state, this only shows it.
    let reg = Registry::new();
    let verdicts: Vec<(String, u64)> = s
        .tally
        .flows
        .iter()
        .map(|(l, n)| (verdict_key(l.verdict), *n))
        .collect();
    counters(
        &reg,
        "lbpath_flows_total",
        "Flows reported, by LB IP, Service (namespace/name:port, empty without a kube-proxy rule) and verdict.",
        &["lb", "service", "verdict"],
        s.tally
            .flows
            .keys()
            .zip(&verdicts)
            .map(|(l, (v, n))| (vec![l.lb.as_str(), l.service.as_str(), v.as_str()], *n)),
    );
    counters(
        &reg,
        "lbpath_drops_total",
        "Packet drops of reported flows, by where on the node and the kernel's drop reason.",
        &["hop", "reason"],
        s.tally
            .drops
            .iter()
            .map(|((hop, reason), n)| (vec![hop.as_str(), reason.as_str()], *n)),
    );
    counters(
        &reg,
        "lbpath_arp_answers_total",
        "ARP replies and announcements for a watched LB IP, by the MAC that sent them (two MACs for one IP: split brain).",
        &["lb", "mac"],
        s.tally
            .arp_answers
            .iter()
            .map(|((lb, mac), n)| (vec![lb.as_str(), mac.as_str()], *n)),
    );
    if let Ok(up) = IntGaugeVec::new(
        Opts::new(
            "lbpath_bgp_session_up",
            "1 when the BGP session with the peer is established (KEEPALIVEs both ways), by the peer's address (--bgp).",
        ),
        &["peer"],
    ) && let Ok(state) = IntGaugeVec::new(
        Opts::new(
            "lbpath_bgp_session_state",
            "1 for the state of the peer's latest BGP session, 0 for the other states (--bgp).",
        ),
        &["peer", "state"],
    ) {
        for p in &s.bgp {
            if let Ok(g) = up.get_metric_with_label_values(&[&p.peer]) {
                g.set(i64::from(p.up));
            }
            for st in BGP_STATES {
                if let Ok(g) = state.get_metric_with_label_values(&[p.peer.as_str(), st]) {
                    g.set(i64::from(*st == p.state));
                }
            }
        }
        let _ = reg.register(Box::new(up));
        let _ = reg.register(Box::new(state));
    }
    counter(
        &reg,
        "lbpath_events_lost_total",
        "Kernel events lost because the ring buffer was full (flows then reported incomplete).",
        s.events_lost,
    );
    counters(
        &reg,
        "lbpath_flows_not_traced_total",
        "New connections counted but not traced: lbpath was behind (ring buffer three quarters full), or more came than --max-new-flows a second.",
        &["why"],
        [
            (vec!["behind"], s.flows_shed),
            (vec!["over_rate"], s.flows_over_rate),
        ],
    );
    counter(
        &reg,
        "lbpath_events_cut_total",
        "Events left out by the per-flow bound (flows then reported incomplete).",
        s.events_cut,
    );
    let mut folded: Vec<(&str, u64)> = s.tally.folded.iter().map(|(m, n)| (*m, *n)).collect();
    if s.bgp_peers_left_out > 0 {
        folded.push(("bgp_peers", s.bgp_peers_left_out));
    }
    counters(
        &reg,
        "lbpath_series_folded_total",
        "Observations counted under the label value \"other\" (bgp_peers: left out) because the metric reached its series cap.",
        &["metric"],
        folded.into_iter().map(|(m, n)| (vec![m], n)),
    );
    let mut out = String::new();
    // Encoding names and values the registry already checked cannot fail.
    let _ = TextEncoder::new().encode_utf8(&reg.gather(), &mut out);
    out
}

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Scrapes served at once; more wait for their turn.
const MAX_CONNECTIONS: usize = 8;
/// A client that sends no request head within this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers scrapes until the session ends (the task is dropped with the
/// runtime).
pub async fn serve(listener: TcpListener, shared: Shared) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(conn, &shared)).await;
            drop(permit);
        });
    }
}

/// One request, one response, then close: all a scraper needs.
async fn answer(mut conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 * 1024 {
            break;
        }
    }
    let (status, ctype, body) = respond(&head, || {
        let snap = shared.lock().map(|s| s.clone()).unwrap_or_default();
        render(&snap)
    });
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(resp.as_bytes()).await?;
    if !head.starts_with(b"HEAD ") {
        conn.write_all(body.as_bytes()).await?;
    }
    conn.shutdown().await
}

/// Status line, content type and body for a request head.
fn respond(head: &[u8], metrics: impl FnOnce() -> String) -> (&'static str, &'static str, String) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    const TEXT: &str = "text/plain; charset=utf-8";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, metrics()),
        ("GET" | "HEAD", "/") => ("200 OK", TEXT, "lbpath: metrics at /metrics\n".into()),
        ("GET" | "HEAD", _) => ("404 Not Found", TEXT, "not found: try /metrics\n".into()),
        _ => ("405 Method Not Allowed", TEXT, "only GET /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::VerdictKind,
        tally::{BgpPeer, FlowLabels as TallyFlow},
    };

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_addr(":9464"), Ok(ListenAddr::Any(9464)));
        assert_eq!(
            parse_addr("127.0.0.1:9464"),
            Ok(ListenAddr::At("127.0.0.1:9464".parse().unwrap()))
        );
        assert_eq!(
            parse_addr("[::1]:9464"),
            Ok(ListenAddr::At("[::1]:9464".parse().unwrap()))
        );
        for bad in [
            "9464",
            ":0",
            ":99999",
            "localhost:9464",
            "1.2.3.4",
            ":",
            "::1:x",
        ] {
            let e = parse_addr(bad).unwrap_err();
            assert!(
                e.contains("is not a listen address") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn exposition_names_and_escapes() {
        let mut s = Snapshot::default();
        s.tally.flows.insert(
            TallyFlow {
                lb: "192.0.2.240".into(),
                service: "default/web:http".into(),
                verdict: VerdictKind::AnsweredAsymmetric,
            },
            3,
        );
        s.tally
            .drops
            .insert(("on \"eth0\" \\".into(), "IP_RPFILTER".into()), 2);
        s.bgp.push(BgpPeer {
            peer: "203.0.113.1".into(),
            state: "up",
            up: true,
        });
        s.events_lost = 7;
        s.flows_shed = 4;
        s.flows_over_rate = 5;
        let text = render(&s);
        assert!(
            text.contains("lbpath_flows_not_traced_total{why=\"behind\"} 4\n")
                && text.contains("lbpath_flows_not_traced_total{why=\"over_rate\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "lbpath_flows_total{lb=\"192.0.2.240\",service=\"default/web:http\",verdict=\"answered_asymmetric\"} 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "lbpath_drops_total{hop=\"on \\\"eth0\\\" \\\\\",reason=\"IP_RPFILTER\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("lbpath_bgp_session_up{peer=\"203.0.113.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lbpath_bgp_session_state{peer=\"203.0.113.1\",state=\"up\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lbpath_bgp_session_state{peer=\"203.0.113.1\",state=\"idle\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("lbpath_events_lost_total 7\n"), "{text}");
        assert!(text.contains("lbpath_events_cut_total 0\n"), "{text}");
        assert!(
            text.contains("# TYPE lbpath_flows_total counter\n"),
            "{text}"
        );
    }

    #[test]
    fn requests() {
        let m = || "x 1\n".to_string();
        assert_eq!(
            respond(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", m).0,
            "200 OK"
        );
        assert_eq!(respond(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", m).2, "x 1\n");
        assert_eq!(
            respond(b"GET /other HTTP/1.1\r\n\r\n", m).0,
            "404 Not Found"
        );
        assert!(
            respond(b"POST /metrics HTTP/1.1\r\n\r\n", m)
                .0
                .starts_with("405")
        );
        assert!(respond(b"", m).0.starts_with("405"));
    }
}
