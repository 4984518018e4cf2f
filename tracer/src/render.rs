//! Text and JSON views of the same model (`model::FlowReport`).

use std::fmt::Write as _;

use crate::{
    model::*,
    render_wrap::{columns, output_width, wrap},
};

/// ANSI styling, off when not on a terminal or NO_COLOR is set, and the
/// width text lines are fitted to.
#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub color: bool,
    pub width: usize,
}

impl Style {
    pub fn detect() -> Self {
        use std::io::IsTerminal;
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            color: !no_color && std::io::stdout().is_terminal(),
            width: output_width(),
        }
    }

    /// No colour, 80 columns.
    pub fn plain() -> Self {
        Self {
            color: false,
            width: 80,
        }
    }

    /// `line` fitted to the width, continuation lines indented by `indent`.
    pub fn fit(&self, line: &str, indent: usize) -> String {
        wrap(line, self.width, indent)
    }

    fn paint(&self, style: anstyle::Style, s: &str) -> String {
        if self.color {
            format!("{style}{s}{style:#}")
        } else {
            s.to_string()
        }
    }
    fn color(&self, c: anstyle::AnsiColor, s: &str) -> String {
        self.paint(anstyle::Style::new().fg_color(Some(c.into())), s)
    }
    pub fn bold(&self, s: &str) -> String {
        self.paint(anstyle::Style::new().bold(), s)
    }
    pub fn dim(&self, s: &str) -> String {
        self.paint(anstyle::Style::new().dimmed(), s)
    }
    pub fn green(&self, s: &str) -> String {
        self.color(anstyle::AnsiColor::Green, s)
    }
    pub fn red(&self, s: &str) -> String {
        self.color(anstyle::AnsiColor::Red, s)
    }
    pub fn yellow(&self, s: &str) -> String {
        self.color(anstyle::AnsiColor::Yellow, s)
    }
    pub fn cyan(&self, s: &str) -> String {
        self.color(anstyle::AnsiColor::Cyan, s)
    }
}

fn role_name(r: crate::netinfo::IfRole) -> &'static str {
    use crate::netinfo::IfRole::*;
    match r {
        PodVeth => "pod veth",
        Bridge => "bridge",
        Overlay => "overlay",
        Uplink => "uplink",
        Loopback => "loopback",
    }
}

/// (label, detail) of a hop, as one line of text.
pub fn hop_text(h: &Hop) -> (String, String) {
    let reply = h.dir == Dir::Reply;
    match &h.kind {
        HopKind::Arrived {
            iface,
            role,
            from,
            to,
            mac,
            tcp_flags,
            len,
        } => {
            let label = if reply && *role == crate::netinfo::IfRole::PodVeth {
                "from pod"
            } else {
                "arrived"
            };
            let mut d = format!("{iface} ({}) {from} → {to}", role_name(*role));
            if let Some(f) = tcp_flags {
                let _ = write!(d, ", {f}");
            }
            let _ = write!(d, ", {len} B");
            if let Some(m) = mac {
                let _ = write!(d, ", from MAC {m}");
            }
            (label.into(), d)
        }
        HopKind::LocalOut { from, to } => (
            "local".into(),
            format!("sent by a process on this node {from} → {to}"),
        ),
        HopKind::Conntrack { state } => ("conntrack".into(), state.clone()),
        HopKind::Dnat { from, to, hook, by } => {
            let label = if reply { "un-DNAT" } else { "DNAT" };
            let mut d = format!("{from} → {to}");
            if let Some(b) = by {
                let _ = write!(d, " by {b}");
            }
            let _ = write!(d, " [{hook}]");
            (label.into(), d)
        }
        HopKind::Ipvs {
            virtual_server,
            service,
            scheduler,
            persistent,
            real_server,
            forward,
            weight,
            real_servers,
        } => {
            let mut d = format!("virtual server {virtual_server}");
            if let Some(s) = service {
                let _ = write!(d, " ({s})");
            }
            let _ = write!(d, ": scheduler {scheduler} chose real server {real_server}");
            if let Some(t) = persistent {
                let _ = write!(d, " (persistent {t}s)");
            }
            match (forward, weight) {
                (Some(f), Some(w)) => {
                    let _ = write!(d, " [{f}, weight {w}, 1 of {real_servers}]");
                }
                _ => {
                    let _ = write!(d, " [of {real_servers}]");
                }
            }
            ("IPVS".into(), d)
        }
        HopKind::Snat { from, to, hook } => {
            let label = if reply { "un-SNAT" } else { "SNAT" };
            (label.into(), format!("{from} → {to} [{hook}]"))
        }
        HopKind::Route {
            decision,
            iface,
            gateway,
            table,
        } => {
            let mut d = decision.clone();
            if let Some(i) = iface {
                let _ = write!(d, " via {i}");
            }
            match gateway {
                Some(g) => {
                    let _ = write!(d, ", next hop {g}");
                }
                None if iface.is_some() => d.push_str(", directly connected"),
                None => {}
            }
            if let Some(t) = table.filter(|t| *t != 254) {
                let _ = write!(d, " (table {t})");
            }
            ("route".into(), d)
        }
        HopKind::Left {
            iface,
            role,
            to,
            next_hop,
            towards,
        } => {
            let mut d = format!("{iface} ({}) → {towards}", role_name(*role));
            match next_hop {
                Some(n) if n != &to.ip() => {
                    let _ = write!(d, ", {to} via {n}");
                }
                _ => {
                    let _ = write!(d, ", {to}");
                }
            }
            ("left".into(), d)
        }
        HopKind::InPod { iface, addr, .. } => {
            ("in pod".into(), format!("{addr} on the pod's {iface}"))
        }
        HopKind::Delivered { at } => ("delivered".into(), format!("taken by {at}")),
        HopKind::Reset { at } => ("reset".into(), format!("{at} answered with a TCP reset")),
        HopKind::Dropped {
            at,
            reason,
            detail,
            later_packet,
            ..
        } => {
            let pre = if *later_packet {
                "a later packet, "
            } else {
                ""
            };
            ("DROPPED".into(), format!("{pre}{at}: {detail} [{reason}]"))
        }
    }
}

pub fn flow_text(r: &FlowReport, s: Style) -> String {
    let mut out = String::new();
    let svc = match &r.service {
        Some(svc) => format!(
            "   service {} ({}, {} endpoint{}{}{})",
            svc.name,
            svc.kind,
            svc.endpoints,
            if svc.endpoints == 1 { "" } else { "s" },
            if svc.local_only {
                ", externalTrafficPolicy=Local"
            } else {
                ""
            },
            if svc.source_ranges.is_empty() {
                String::new()
            } else {
                format!(
                    ", loadBalancerSourceRanges {}",
                    svc.source_ranges.join(", ")
                )
            }
        ),
        None => String::new(),
    };
    let again = if r.update {
        s.dim("   (same connection, later packets)")
    } else {
        String::new()
    };
    let head = format!(
        "{} {} {} → {}{}{again}",
        s.bold(if r.update { "↻" } else { "●" }),
        r.flow.proto,
        s.bold(&r.flow.client.to_string()),
        s.bold(&r.flow.lb.to_string()),
        s.dim(&svc)
    );
    let _ = writeln!(out, "{}", s.fit(&head, 4));
    for h in &r.hops {
        let (label, detail) = hop_text(h);
        let arrow = if h.dir == Dir::Reply { "←" } else { "→" };
        let label = format!("{label:<10}");
        let label = match h.kind {
            HopKind::Dropped { .. } => s.red(&label),
            HopKind::Dnat { .. } | HopKind::Snat { .. } | HopKind::Ipvs { .. } => s.cyan(&label),
            _ => label,
        };
        let inferred = if h.inferred {
            s.dim(" (inferred)")
        } else {
            String::new()
        };
        let pkt = if h.packet > 1 {
            s.dim(&format!(" #{}", h.packet))
        } else {
            String::new()
        };
        let prefix = format!("  {:>9}  {arrow} {label} ", format!("+{:.3}ms", h.t_ms));
        // Continuation lines line up under the detail.
        let line = format!("{prefix}{detail}{inferred}{pkt}");
        let _ = writeln!(out, "{}", s.fit(&line, columns(&prefix)));
    }
    let (mark, painted) = match r.verdict.kind {
        VerdictKind::Answered | VerdictKind::Local => ("✔", s.green(&r.verdict.summary)),
        VerdictKind::LeftNode
        | VerdictKind::Incomplete
        | VerdictKind::AnsweredAsymmetric
        | VerdictKind::NoAnswer => ("●", s.yellow(&r.verdict.summary)),
        _ => ("✘", s.red(&r.verdict.summary)),
    };
    let _ = writeln!(out, "{}", s.fit(&format!("  {mark} {painted}"), 4));
    if let Some(h) = &r.verdict.hint {
        let _ = writeln!(out, "{}", s.fit(&format!("    hint: {h}"), 10));
    }
    if let Some(c) = &r.counters {
        let line = format!(
            "    {}",
            s.dim(&format!(
                "counted so far: → {} {} B, ← {} {} B, {} dropped",
                plural(c.request_packets, "packet"),
                c.request_bytes,
                plural(c.reply_packets, "packet"),
                c.reply_bytes,
                c.drops
            ))
        );
        let _ = writeln!(out, "{}", s.fit(&line, 6));
    }
    for n in &r.notes {
        let line = format!("    {}", s.dim(&format!("note: {n}")));
        let _ = writeln!(out, "{}", s.fit(&line, 10));
    }
    out
}

pub fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// One JSON line per flow.
pub fn flow_json(r: &FlowReport) -> String {
    serde_json::to_string(r).expect("the model always serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netinfo::IfRole;

    fn report() -> FlowReport {
        FlowReport {
            flow: FlowId {
                proto: "tcp".into(),
                client: "192.0.2.10:4000".parse().unwrap(),
                lb: "192.0.2.240:80".parse().unwrap(),
                conn: 0,
            },
            service: Some(ServiceInfo {
                name: "default/web:http".into(),
                kind: "LoadBalancer".into(),
                chain: "KUBE-EXT-X".into(),
                endpoints: 1,
                local_endpoints: None,
                local_only: false,
                source_ranges: vec!["198.51.100.0/24".into(), "192.0.2.0/25".into()],
            }),
            hops: vec![
                Hop {
                    t_ms: 0.0,
                    dir: Dir::Request,
                    packet: 1,
                    kind: HopKind::Arrived {
                        iface: "eth0".into(),
                        role: IfRole::Uplink,
                        from: "192.0.2.10:4000".parse().unwrap(),
                        to: "192.0.2.240:80".parse().unwrap(),
                        mac: None,
                        tcp_flags: Some("SYN".into()),
                        len: 60,
                    },
                    inferred: false,
                },
                Hop {
                    t_ms: 0.1,
                    dir: Dir::Request,
                    packet: 1,
                    kind: HopKind::Dnat {
                        from: "192.0.2.240:80".parse().unwrap(),
                        to: "10.244.1.5:8080".parse().unwrap(),
                        hook: "PREROUTING".into(),
                        by: Some("kube-proxy KUBE-SEP-Y (default/web:http)".into()),
                    },
                    inferred: false,
                },
                Hop {
                    t_ms: 0.2,
                    dir: Dir::Reply,
                    packet: 1,
                    kind: HopKind::Dnat {
                        from: "10.244.1.5:8080".parse().unwrap(),
                        to: "192.0.2.240:80".parse().unwrap(),
                        hook: "POSTROUTING".into(),
                        by: None,
                    },
                    inferred: false,
                },
            ],
            verdict: Verdict {
                kind: VerdictKind::Answered,
                summary: "reached the pod and it answered".into(),
                hint: None,
            },
            counters: Some(Counters::default()),
            notes: vec![],
            update: false,
        }
    }

    #[test]
    fn text_has_one_line_per_hop_and_the_verdict_last() {
        // Wide enough that nothing wraps.
        let wide = Style {
            color: false,
            width: 1000,
        };
        let t = flow_text(&report(), wide);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].contains("192.0.2.10:4000 → 192.0.2.240:80")
                && lines[0].contains("default/web:http")
                && lines[0].contains("loadBalancerSourceRanges 198.51.100.0/24, 192.0.2.0/25)")
        );
        assert!(
            lines[1].contains("→ arrived")
                && lines[1].contains("eth0 (uplink)")
                && lines[1].contains("SYN")
        );
        assert!(
            lines[2].contains("DNAT")
                && lines[2].contains("10.244.1.5:8080 by kube-proxy KUBE-SEP-Y")
        );
        assert!(lines[3].contains("← un-DNAT"));
        assert!(lines[4].contains("✔ reached the pod"));
        assert!(!t.contains('\x1b'));
        assert!(
            flow_text(
                &report(),
                Style {
                    color: true,
                    width: 80
                }
            )
            .contains('\x1b')
        );
    }

    #[test]
    fn text_fits_80_columns_with_continuations_under_their_text() {
        let mut r = report();
        r.verdict.hint = Some(
            "make the return path symmetric: route the client's network via eth0's gateway, or set rp_filter=2 (loose) on eth0 and all".into(),
        );
        let wide = flow_text(
            &r,
            Style {
                color: false,
                width: 1000,
            },
        );
        let t = flow_text(&r, Style::plain());
        assert!(
            wide.lines().any(|l| columns(l) > 80),
            "the case needs wrapping"
        );
        for l in t.lines() {
            assert!(columns(l) <= 80, "{l:?} in:\n{t}");
        }
        // The same words in the same order: only line breaks were added.
        let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(words(&t), words(&wide));
        let lines: Vec<&str> = t.lines().collect();
        // The header continues at 4, a hop's detail under its detail, the
        // hint under its text.
        assert!(
            lines[1].starts_with("    ") && !lines[1].starts_with("     "),
            "{t}"
        );
        let dnat = lines.iter().position(|l| l.contains("→ DNAT")).unwrap();
        let at = lines[dnat].find("192.0.2.240:80").unwrap();
        let col = columns(&lines[dnat][..at]);
        assert!(lines[dnat + 1].starts_with(&" ".repeat(col)), "{t}");
        assert!(!lines[dnat + 1][col..].starts_with(' '), "{t}");
        let hint = lines.iter().position(|l| l.contains("hint: ")).unwrap();
        assert!(lines[hint + 1].starts_with(&" ".repeat(10)), "{t}");
    }

    #[test]
    fn json_is_one_line_with_the_documented_fields() {
        let j = flow_json(&report());
        assert!(!j.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["flow"]["lb"], "192.0.2.240:80");
        assert_eq!(v["hops"][1]["hop"], "dnat");
        assert_eq!(v["hops"][1]["to"], "10.244.1.5:8080");
        assert_eq!(v["verdict"]["kind"], "answered");
        assert_eq!(v["service"]["name"], "default/web:http");
        assert_eq!(v["service"]["source_ranges"][1], "192.0.2.0/25");
    }
}
