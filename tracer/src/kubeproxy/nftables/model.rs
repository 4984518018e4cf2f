//! Model layer: the document `nft -j list ruleset` prints, read into plain
//! structures (chains, rules, sets and maps with their elements), plus the
//! small helpers that take its values apart. Nothing here knows about
//! kube-proxy.
//!
//! The document is read one object at a time and each is kept only as what
//! the reader uses: a rule becomes its verdicts, jumps, verdict maps, DNATs,
//! counter and (for a rule that can drop) its text; rules that can do none
//! of that are not kept. A node with thousands of Services prints tens of
//! MB of JSON, whose tree would take hundreds of MiB.

use std::net::IpAddr;

use serde_json::Value;

use super::render::{render_expr, render_rule};
use crate::kubeproxy::ParseError;

/// A chain; hook, priority and policy only for a base chain.
pub(super) struct Chain {
    pub(super) family: String,
    pub(super) table: String,
    pub(super) name: String,
    pub(super) hook: Option<String>,
    pub(super) priority: Option<i32>,
    pub(super) policy: Option<String>,
}

/// A rule, as what it does.
pub(super) struct Rule {
    pub(super) family: String,
    pub(super) table: String,
    pub(super) chain: String,
    pub(super) handle: Option<u64>,
    pub(super) comment: Option<String>,
    /// Its statements that matter here, in order.
    pub(super) stmts: Vec<Stmt>,
    /// Its counter statement's values, when it has a counter object.
    pub(super) counter: Option<(Option<u64>, Option<u64>)>,
    /// As nft prints it, without counter values; for the rules that can
    /// drop or reject (a verdict, an iptables target, a verdict map).
    pub(super) text: Option<String>,
}

/// A statement of a rule the reader acts on.
pub(super) enum Stmt {
    Drop,
    Reject,
    /// An iptables-nft DROP or REJECT target (`xt` of type target).
    XtTarget(String),
    /// `jump` / `goto`: the target chain.
    Jump(String),
    /// `vmap`: a named map (`@name`) or inline elements.
    Vmap(VmapData),
    /// `dnat to addr:port`, when both are plain values.
    Dnat(IpAddr, u16),
    /// `ip saddr != { … }` (or a single value): the values, as nft prints them.
    SaddrNot(Vec<String>),
}

pub(super) enum VmapData {
    Named(String),
    Inline(Vec<Verdict>),
}

/// The value of a verdict map element.
pub(super) struct Verdict {
    /// `jump` / `goto` target.
    pub(super) target: Option<String>,
    pub(super) drop: bool,
    /// As nft prints it.
    pub(super) text: String,
}

/// An element of a named or anonymous set or map.
pub(super) struct Elem {
    /// The key's parts (one, or those of a concatenation), as nft prints them.
    pub(super) key: Vec<String>,
    /// The value of a map element.
    pub(super) data: Option<Verdict>,
    pub(super) comment: Option<String>,
}

/// A named set or map.
pub(super) struct Set {
    pub(super) family: String,
    pub(super) table: String,
    pub(super) name: String,
    pub(super) elems: Vec<Elem>,
}

/// Every object of the ruleset lbpath uses, in the order nft listed them.
pub(super) struct Model {
    pub(super) chains: Vec<Chain>,
    pub(super) rules: Vec<Rule>,
    pub(super) sets: Vec<Set>,
    /// Tables whose chains the reader follows: all their rules that jump,
    /// DNAT or filter are kept; elsewhere only those that can drop or
    /// reject.
    walked: fn(&str) -> bool,
}

fn field(body: &Value, key: &str, what: &str, i: usize) -> Result<String, ParseError> {
    body.get(key)
        .and_then(Value::as_str)
        .map(String::from)
        .ok_or_else(|| {
            ParseError::new(
                None,
                format!("nftables[{i}]: {what} without a string \"{key}\""),
            )
        })
}

fn opt_str(body: &Value, key: &str) -> Option<String> {
    body.get(key).and_then(Value::as_str).map(String::from)
}

impl Model {
    pub(super) fn new(walked: fn(&str) -> bool) -> Self {
        Self {
            chains: Vec::new(),
            rules: Vec::new(),
            sets: Vec::new(),
            walked,
        }
    }

    /// Takes item `i` of the "nftables" array; a malformed object is an
    /// error, objects lbpath does not use are skipped.
    pub(super) fn add(&mut self, i: usize, item: &Value) -> Result<(), ParseError> {
        let Some(obj) = item.as_object().filter(|o| o.len() == 1) else {
            return Err(ParseError::new(
                None,
                format!("nftables[{i}]: expected an object with one key"),
            ));
        };
        let (kind, body) = obj.iter().next().expect("one key");
        if !body.is_object() && kind != "metainfo" {
            return Err(ParseError::new(
                None,
                format!("nftables[{i}]: {kind} is not an object"),
            ));
        }
        match kind.as_str() {
            "chain" => self.chains.push(Chain {
                family: field(body, "family", "chain", i)?,
                table: field(body, "table", "chain", i)?,
                name: field(body, "name", "chain", i)?,
                hook: opt_str(body, "hook"),
                priority: match body.get("prio") {
                    None => None,
                    Some(p) => Some(
                        priority(p, body.get("family").and_then(Value::as_str)).ok_or_else(
                            || {
                                ParseError::new(
                                    None,
                                    format!("nftables[{i}]: chain has an unknown priority {p}"),
                                )
                            },
                        )?,
                    ),
                },
                policy: opt_str(body, "policy"),
            }),
            "rule" => {
                let family = field(body, "family", "rule", i)?;
                let table = field(body, "table", "rule", i)?;
                let chain = field(body, "chain", "rule", i)?;
                let expr = body.get("expr").and_then(Value::as_array).ok_or_else(|| {
                    ParseError::new(
                        None,
                        format!("nftables[{i}]: rule without an \"expr\" array"),
                    )
                })?;
                let comment = opt_str(body, "comment");
                let stmts: Vec<Stmt> = expr.iter().filter_map(stmt).collect();
                let can_filter = stmts.iter().any(|s| {
                    matches!(
                        s,
                        Stmt::Drop | Stmt::Reject | Stmt::XtTarget(_) | Stmt::Vmap(_)
                    )
                });
                // A rule that neither filters nor leads anywhere nor DNATs
                // (matches, counters, marks, masquerade …) is of no use
                // here, nor one outside the walked tables that cannot filter.
                if stmts.is_empty() || !(can_filter || (self.walked)(&table)) {
                    return Ok(());
                }
                self.rules.push(Rule {
                    handle: body.get("handle").and_then(Value::as_u64),
                    counter: counter(expr),
                    text: can_filter.then(|| render_rule(expr, comment.as_deref(), false)),
                    family,
                    table,
                    chain,
                    comment,
                    stmts,
                });
            }
            "set" | "map" => {
                let is_map = kind == "map" || body.get("map").is_some();
                let elems = match body.get("elem") {
                    None => Vec::new(),
                    Some(Value::Array(list)) => list.iter().map(|e| elem(e, is_map)).collect(),
                    Some(_) => {
                        return Err(ParseError::new(
                            None,
                            format!("nftables[{i}]: {kind} \"elem\" is not an array"),
                        ));
                    }
                };
                self.sets.push(Set {
                    family: field(body, "family", kind, i)?,
                    table: field(body, "table", kind, i)?,
                    name: field(body, "name", kind, i)?,
                    elems,
                });
            }
            "table" => {
                field(body, "family", "table", i)?;
                field(body, "name", "table", i)?;
            }
            // metainfo, and objects lbpath does not use (counters,
            // flowtables, ct helpers, …).
            _ => {}
        }
        Ok(())
    }

    /// The named set or map (`name` with or without its "@").
    pub(super) fn set(&self, family: &str, table: &str, name: &str) -> Option<&Set> {
        let name = name.strip_prefix('@').unwrap_or(name);
        self.sets
            .iter()
            .find(|s| s.family == family && s.table == table && s.name == name)
    }
}

/// What a statement does, when the reader cares.
fn stmt(e: &Value) -> Option<Stmt> {
    if e.get("drop").is_some() {
        return Some(Stmt::Drop);
    }
    if e.get("reject").is_some() {
        return Some(Stmt::Reject);
    }
    if let Some(xt) = e
        .get("xt")
        .filter(|x| x.get("type").and_then(Value::as_str) == Some("target"))
    {
        // Other targets (DNAT, MARK, …) are iptables-nft-save's to read.
        return match xt.get("name").and_then(Value::as_str) {
            Some(name @ ("DROP" | "REJECT")) => Some(Stmt::XtTarget(name.into())),
            _ => None,
        };
    }
    if let Some(t) = jump_target(e) {
        return Some(Stmt::Jump(t.into()));
    }
    if let Some(vmap) = e.get("vmap") {
        return match vmap.get("data") {
            Some(Value::String(name)) => Some(Stmt::Vmap(VmapData::Named(name.clone()))),
            Some(data) => Some(Stmt::Vmap(VmapData::Inline(
                inline_elems(data)
                    .into_iter()
                    .filter_map(|e| e.data)
                    .collect(),
            ))),
            None => None,
        };
    }
    if let Some(dnat) = e.get("dnat") {
        let ip = dnat
            .get("addr")
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<IpAddr>().ok());
        let port = dnat
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok());
        return Some(Stmt::Dnat(ip?, port?));
    }
    if let Some(m) = e.get("match") {
        let is_saddr = m
            .get("left")
            .and_then(|l| l.get("payload"))
            .and_then(|p| p.get("field"))
            .and_then(Value::as_str)
            == Some("saddr");
        if is_saddr && m.get("op").and_then(Value::as_str) == Some("!=") {
            let right = m.get("right").unwrap_or(&Value::Null);
            return Some(Stmt::SaddrNot(
                match right.get("set").and_then(Value::as_array) {
                    Some(list) => list.iter().map(|v| render_expr(v, false)).collect(),
                    None => vec![render_expr(right, false)],
                },
            ));
        }
    }
    None
}

/// The first counter statement's values, if it is a counter object (not a
/// named counter).
fn counter(expr: &[Value]) -> Option<(Option<u64>, Option<u64>)> {
    expr.iter()
        .find_map(|e| e.get("counter"))
        .filter(|c| c.is_object())
        .map(|c| {
            (
                c.get("packets").and_then(Value::as_u64),
                c.get("bytes").and_then(Value::as_u64),
            )
        })
}

fn verdict_of(data: &Value) -> Verdict {
    Verdict {
        target: jump_target(data).map(String::from),
        drop: data.get("drop").is_some(),
        text: render_expr(data, false),
    }
}

fn elem(v: &Value, is_map: bool) -> Elem {
    let (key, data) = match v.as_array() {
        Some(pair) if is_map && pair.len() == 2 => (&pair[0], Some(&pair[1])),
        _ => (v, None),
    };
    // {"elem": {"val": …, "comment": …}} wraps keys that carry options.
    let (key, comment) = match key.get("elem") {
        Some(inner) => (
            inner.get("val").unwrap_or(key),
            inner
                .get("comment")
                .and_then(Value::as_str)
                .map(String::from),
        ),
        None => (key, None),
    };
    Elem {
        key: key_parts(key),
        data: data.map(verdict_of),
        comment,
    }
}

/// Elements of an anonymous set/map: `{"set": [...]}` or a bare list.
fn inline_elems(v: &Value) -> Vec<Elem> {
    let list = v.get("set").unwrap_or(v);
    list.as_array()
        .map(|l| l.iter().map(|e| elem(e, true)).collect())
        .unwrap_or_default()
}

/// Chain priority, numeric or by name ("dstnat - 10").
pub(super) fn priority(v: &Value, family: Option<&str>) -> Option<i32> {
    if let Some(n) = v.as_i64() {
        return i32::try_from(n).ok();
    }
    let s = v.as_str()?.replace(' ', "");
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    let split = s.find(['+', '-']).unwrap_or(s.len());
    let (name, offset) = s.split_at(split);
    let offset: i32 = if offset.is_empty() {
        0
    } else {
        offset.parse().ok()?
    };
    let base = if family == Some("bridge") {
        match name {
            "dstnat" => -300,
            "filter" => -200,
            "out" => 100,
            "srcnat" => 300,
            _ => return None,
        }
    } else {
        match name {
            "raw" => -300,
            "mangle" => -150,
            "dstnat" => -100,
            "filter" => 0,
            "security" => 50,
            "srcnat" => 100,
            _ => return None,
        }
    };
    // Out of i32's range ("security + 2147483647"): not a priority nft takes.
    offset.checked_add(base)
}

/// The target of a `goto`/`jump` verdict.
fn jump_target(v: &Value) -> Option<&str> {
    v.get("goto")
        .or_else(|| v.get("jump"))?
        .get("target")?
        .as_str()
}

/// The (address, protocol, port) or (protocol, port) key of a map element.
fn key_parts(key: &Value) -> Vec<String> {
    match key.get("concat").and_then(Value::as_array) {
        Some(parts) => parts.iter().map(scalar).collect(),
        None => vec![scalar(key)],
    }
}

/// A string value as is, anything else as JSON (numbers, mostly).
pub(super) fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeproxy::parse_nft_json;

    const NFT: &str = include_str!("../testdata/nftables.json");

    #[test]
    fn read_from_a_pipe_as_from_text() {
        use crate::kubeproxy::read_nft_json;
        let text = parse_nft_json(NFT).unwrap();
        // A reader handing out a few bytes at a time, as a pipe may.
        struct Trickle<'a>(&'a [u8]);
        impl std::io::Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(7);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let piped = read_nft_json(Trickle(format!("\n  {NFT}").as_bytes()))
            .unwrap()
            .unwrap();
        assert_eq!(piped, text);
        assert!(read_nft_json(Trickle(b" \n\t")).unwrap().is_none());
        let cut = &NFT.as_bytes()[..NFT.len() / 2];
        let e = read_nft_json(Trickle(cut)).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn named_priorities() {
        let p = |s: &str| priority(&Value::String(s.into()), Some("ip"));
        assert_eq!(p("dstnat - 10"), Some(-110));
        assert_eq!(p("filter"), Some(0));
        assert_eq!(p("srcnat+5"), Some(105));
        assert_eq!(p("-42"), Some(-42));
        assert_eq!(p("bogus"), None);
        assert_eq!(
            priority(&Value::String("filter".into()), Some("bridge")),
            Some(-200)
        );
    }

    /// Found by the nft_json fuzz target: the offset overflowed the sum.
    #[test]
    fn a_named_priority_beyond_i32_is_an_error_not_an_overflow() {
        let p = |s: &str| priority(&Value::String(s.into()), Some("ip"));
        assert_eq!(p("security + 2147483647"), None);
        assert_eq!(p("raw - 2147483648"), None);
        assert_eq!(p("filter + 2147483647"), Some(i32::MAX));
        let json = r#"{"nftables": [{"chain": {"family": "ip", "table": "kube-proxy",
            "name": "filter-forward", "hook": "forward", "prio": "security + 2147483647"}}]}"#;
        let e = parse_nft_json(json).unwrap_err();
        assert!(e.message.contains("unknown priority"), "{e}");
    }

    #[test]
    fn malformed_input_is_an_error() {
        let cases: &[(&str, &str)] = &[
            ("", "not valid JSON"),
            ("garbage", "not valid JSON"),
            ("{\"nftables\": [", "not valid JSON"),
            ("[]", "expected an object with an \"nftables\" array"),
            (
                "{\"nftables\": {}}",
                "expected an object with an \"nftables\" array",
            ),
            (
                "{\"something\": []}",
                "expected an object with an \"nftables\" array",
            ),
            (
                "{\"nftables\": [42]}",
                "nftables[0]: expected an object with one key",
            ),
            (
                "{\"nftables\": [{\"a\": {}, \"b\": {}}]}",
                "expected an object with one key",
            ),
            (
                "{\"nftables\": [{\"rule\": {\"family\": \"ip\", \"table\": \"t\", \"chain\": \"c\"}}]}",
                "without an \"expr\" array",
            ),
            (
                "{\"nftables\": [{\"rule\": {\"family\": \"ip\", \"table\": \"t\", \"expr\": []}}]}",
                "without a string \"chain\"",
            ),
            ("{\"nftables\": [{\"rule\": 7}]}", "rule is not an object"),
            (
                "{\"nftables\": [{\"chain\": {\"family\": \"ip\", \"table\": \"t\", \"name\": \"c\", \"hook\": \"input\", \"prio\": \"sideways\"}}]}",
                "unknown priority",
            ),
            (
                "{\"nftables\": [{\"map\": {\"family\": \"ip\", \"table\": \"t\", \"name\": \"m\", \"elem\": 3}}]}",
                "\"elem\" is not an array",
            ),
        ];
        for (json, msg) in cases {
            let e = parse_nft_json(json).expect_err(json);
            assert!(e.message.contains(msg), "{json:?}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
        let e = parse_nft_json("{\n\"nftables\": [\n{\"table\": }]}").unwrap_err();
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn every_truncation_of_a_real_capture_is_an_error() {
        for cut in (0..NFT.len() - 2).step_by(211) {
            assert!(parse_nft_json(&NFT[..cut]).is_err(), "cut at {cut}");
        }
    }
}
