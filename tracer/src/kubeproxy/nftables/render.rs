//! Render layer: a rule's JSON statements back into the text `nft list
//! ruleset` prints, so a user sees the rule as nft shows it (and can find it
//! with `nft -a list ruleset`).

use serde_json::Value;

use super::model::scalar;

/// A rule's statements as `nft list ruleset` shows them, with the rule
/// comment; counter values only when `counters` (they change between reads,
/// and the text identifies the rule).
pub(super) fn render_rule(expr: &[Value], comment: Option<&str>, counters: bool) -> String {
    let mut parts: Vec<String> = expr
        .iter()
        .map(|s| render_stmt(s, counters))
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(c) = comment {
        parts.push(format!("comment {}", quote(c)));
    }
    parts.join(" ")
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Keys nft prints without the "meta" prefix.
const BARE_META: [&str; 16] = [
    "iif",
    "oif",
    "iifname",
    "oifname",
    "iiftype",
    "oiftype",
    "iifgroup",
    "oifgroup",
    "skuid",
    "skgid",
    "nftrace",
    "rtclassid",
    "ibrname",
    "obrname",
    "cgroup",
    "ipsec",
];

fn is_binop(v: &Value) -> bool {
    ["&", "|", "^", "<<", ">>"]
        .iter()
        .any(|op| v.get(op).is_some())
}

/// Marks are shown in hex, as nft does.
fn involves_mark(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.iter().any(|(k, inner)| {
            ((k == "meta" || k == "ct") && inner.get("key").and_then(Value::as_str) == Some("mark"))
                || involves_mark(inner)
        }),
        Value::Array(a) => a.iter().any(involves_mark),
        _ => false,
    }
}

fn render_stmt(s: &Value, counters: bool) -> String {
    let Some((kind, body)) = s.as_object().and_then(|o| o.iter().next()) else {
        return compact(s);
    };
    let get = |k: &str| body.get(k);
    let text = |k: &str| get(k).and_then(Value::as_str);
    match kind.as_str() {
        "match" => {
            let left = get("left").unwrap_or(&Value::Null);
            let hex = involves_mark(left);
            let quote_right = left
                .get("meta")
                .and_then(|m| m.get("key"))
                .and_then(Value::as_str)
                .is_some_and(|k| k.ends_with("name"));
            let mut right = render_expr(get("right").unwrap_or(&Value::Null), hex);
            if quote_right && get("right").is_some_and(Value::is_string) {
                right = quote(&right);
            }
            let op = text("op").unwrap_or("==");
            let l = render_expr(left, hex);
            match op {
                "in" => format!("{l} {right}"),
                "==" if !is_binop(left) => format!("{l} {right}"),
                _ => format!("{l} {op} {right}"),
            }
        }
        "counter" => match body {
            Value::Object(_) if counters => format!(
                "counter packets {} bytes {}",
                get("packets").and_then(Value::as_u64).unwrap_or(0),
                get("bytes").and_then(Value::as_u64).unwrap_or(0)
            ),
            Value::String(name) => format!("counter name {name}"),
            _ => "counter".into(),
        },
        "accept" | "drop" | "continue" | "return" | "notrack" => kind.clone(),
        "jump" | "goto" => format!("{kind} {}", text("target").unwrap_or("?")),
        "reject" => match (text("type"), text("expr")) {
            (None, _) | (Some("icmp" | "icmpx" | "icmpv6"), Some("port-unreachable") | None) => {
                "reject".into()
            }
            (Some("tcp reset"), _) => "reject with tcp reset".into(),
            (Some(t), Some(e)) => format!("reject with {t} {e}"),
            (Some(t), None) => format!("reject with {t}"),
        },
        "dnat" | "snat" => {
            let mut out = kind.clone();
            if let Some(f) = text("family") {
                out = format!("{out} {f}");
            }
            out.push_str(" to ");
            let addr = get("addr")
                .map(|a| render_expr(a, false))
                .unwrap_or_default();
            match get("port") {
                Some(p) if addr.contains(':') => {
                    out.push_str(&format!("[{addr}]:{}", render_expr(p, false)))
                }
                Some(p) => out.push_str(&format!("{addr}:{}", render_expr(p, false))),
                None => out.push_str(&addr),
            }
            out + &flags(get("flags"))
        }
        "masquerade" | "redirect" => {
            let mut out = kind.clone();
            if let Some(p) = get("port") {
                out.push_str(&format!(" to :{}", render_expr(p, false)));
            }
            out + &flags(get("flags"))
        }
        "mangle" => {
            let key = get("key").unwrap_or(&Value::Null);
            let hex = involves_mark(key);
            format!(
                "{} set {}",
                render_expr(key, hex),
                render_expr(get("value").unwrap_or(&Value::Null), hex)
            )
        }
        "vmap" | "map" => format!(
            "{} {kind} {}",
            render_expr(get("key").unwrap_or(&Value::Null), false),
            render_expr(get("data").unwrap_or(&Value::Null), false)
        ),
        "xt" => format!(
            "xt {} {}",
            text("type").unwrap_or("?"),
            quote(text("name").unwrap_or("?"))
        ),
        "log" => {
            let mut out = String::from("log");
            if let Some(p) = text("prefix") {
                out.push_str(&format!(" prefix {}", quote(p)));
            }
            if let Some(l) = text("level") {
                out.push_str(&format!(" level {l}"));
            }
            if let Some(g) = get("group") {
                out.push_str(&format!(" group {g}"));
            }
            out
        }
        "limit" => format!(
            "limit rate {}{}/{}",
            if get("inv").and_then(Value::as_bool) == Some(true) {
                "over "
            } else {
                ""
            },
            get("rate")
                .map(|r| render_expr(r, false))
                .unwrap_or_default(),
            text("per").unwrap_or("second")
        ),
        "set" => format!(
            "{} {} {{ {} }}",
            text("op").unwrap_or("update"),
            text("set").unwrap_or("?"),
            render_expr(get("elem").unwrap_or(&Value::Null), false)
        ),
        _ => compact(s),
    }
}

fn flags(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(f)) => format!(" {f}"),
        Some(Value::Array(list)) if !list.is_empty() => {
            format!(" {}", list.iter().map(scalar).collect::<Vec<_>>().join(","))
        }
        _ => String::new(),
    }
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

pub(super) fn render_expr(v: &Value, hex: bool) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match (hex, n.as_u64()) {
            (true, Some(x)) => format!("0x{x:08x}"),
            _ => n.to_string(),
        },
        Value::Bool(b) => b.to_string(),
        // Flag lists such as ct state.
        Value::Array(list) => list
            .iter()
            .map(|x| render_expr(x, hex))
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(o) => {
            let Some((kind, body)) = o.iter().next() else {
                return String::new();
            };
            let get = |k: &str| body.get(k);
            let text = |k: &str| get(k).and_then(Value::as_str).unwrap_or("?");
            match kind.as_str() {
                "payload" => match get("protocol") {
                    Some(_) => format!("{} {}", text("protocol"), text("field")),
                    None => format!(
                        "@{},{},{}",
                        text("base"),
                        get("offset").map(|x| x.to_string()).unwrap_or_default(),
                        get("len").map(|x| x.to_string()).unwrap_or_default()
                    ),
                },
                "meta" => {
                    let key = text("key");
                    if BARE_META.contains(&key) {
                        key.to_string()
                    } else {
                        format!("meta {key}")
                    }
                }
                "ct" => match get("dir").and_then(Value::as_str) {
                    Some(dir) => format!("ct {dir} {}", text("key")),
                    None => format!("ct {}", text("key")),
                },
                "fib" => {
                    let flags = match get("flags") {
                        Some(Value::Array(f)) => {
                            f.iter().map(scalar).collect::<Vec<_>>().join(" . ")
                        }
                        Some(f) => scalar(f),
                        None => String::new(),
                    };
                    format!("fib {flags} {}", text("result"))
                }
                "numgen" => {
                    let mut out = format!(
                        "numgen {} mod {}",
                        text("mode"),
                        get("mod").map(|m| m.to_string()).unwrap_or_default()
                    );
                    if let Some(off) = get("offset").and_then(Value::as_u64).filter(|o| *o != 0) {
                        out.push_str(&format!(" offset {off}"));
                    }
                    out
                }
                "concat" => body
                    .as_array()
                    .map(|l| {
                        l.iter()
                            .map(|x| render_expr(x, hex))
                            .collect::<Vec<_>>()
                            .join(" . ")
                    })
                    .unwrap_or_default(),
                "prefix" => format!(
                    "{}/{}",
                    render_expr(get("addr").unwrap_or(&Value::Null), hex),
                    get("len").map(|l| l.to_string()).unwrap_or_default()
                ),
                "range" => match body.as_array().map(Vec::as_slice) {
                    Some([a, b]) => format!("{}-{}", render_expr(a, hex), render_expr(b, hex)),
                    _ => compact(v),
                },
                "set" => {
                    let items: Vec<String> = body
                        .as_array()
                        .map(|l| {
                            l.iter()
                                .map(|e| match e.as_array().map(Vec::as_slice) {
                                    Some([k, d]) => format!(
                                        "{} : {}",
                                        render_expr(k, hex),
                                        render_expr(d, false)
                                    ),
                                    _ => render_expr(e, hex),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    format!("{{ {} }}", items.join(", "))
                }
                "elem" => {
                    let mut out = render_expr(get("val").unwrap_or(&Value::Null), hex);
                    if let Some(c) = get("comment").and_then(Value::as_str) {
                        out.push_str(&format!(" comment {}", quote(c)));
                    }
                    out
                }
                "&" | "|" | "^" | "<<" | ">>" => match body.as_array().map(Vec::as_slice) {
                    Some([a, b]) => {
                        format!("{} {kind} {}", render_expr(a, hex), render_expr(b, hex))
                    }
                    _ => compact(v),
                },
                "map" => format!(
                    "{} map {}",
                    render_expr(get("key").unwrap_or(&Value::Null), hex),
                    render_expr(get("data").unwrap_or(&Value::Null), hex)
                ),
                "accept" | "drop" | "continue" | "return" => kind.clone(),
                "jump" | "goto" => format!("{kind} {}", text("target")),
                _ => compact(v),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const NFT: &str = include_str!("../testdata/nftables.json");
    const NFT_TEXT: &str = include_str!("../testdata/nftables.txt");

    /// The rendering matches what `nft list ruleset` printed for the same
    /// rules (counter values included), rule by rule, by handle.
    #[test]
    fn rules_render_as_nft_prints_them() {
        let mut printed: HashMap<(String, u64), String> = HashMap::new();
        let mut table = String::new();
        for line in NFT_TEXT.lines() {
            let l = line.trim();
            if let Some(rest) = l.strip_prefix("table ") {
                table = rest.split(" {").next().unwrap().to_string();
            } else if let Some((rule, handle)) = l.rsplit_once(" # handle ")
                && !["chain ", "set ", "map "]
                    .iter()
                    .any(|p| rule.starts_with(p))
            {
                printed.insert((table.clone(), handle.parse().unwrap()), rule.to_string());
            }
        }
        let doc: Value = serde_json::from_str(NFT).unwrap();
        let mut compared = 0;
        for item in doc["nftables"].as_array().unwrap() {
            let Some(r) = item.get("rule") else { continue };
            let table = format!(
                "{} {}",
                r["family"].as_str().unwrap(),
                r["table"].as_str().unwrap()
            );
            if table == "ip filter" {
                continue; // nft prints nothing for xt matches; we name them
            }
            let want = &printed[&(table, r["handle"].as_u64().unwrap())];
            let got = render_rule(
                r["expr"].as_array().unwrap(),
                r.get("comment").and_then(Value::as_str),
                true,
            );
            assert_eq!(&got, want);
            compared += 1;
        }
        assert!(compared > 60, "{compared}");
    }
}
