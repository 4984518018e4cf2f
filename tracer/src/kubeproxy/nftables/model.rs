//! Model layer: the document `nft -j list ruleset` prints, read into plain
//! structures (chains, rules, sets and maps with their elements) that borrow
//! from the JSON, plus the small helpers that take its values apart. Nothing
//! here knows about kube-proxy.

use serde_json::Value;

use crate::kubeproxy::ParseError;

/// A chain; hook, priority and policy only for a base chain.
pub(super) struct Chain<'a> {
    pub(super) family: &'a str,
    pub(super) table: &'a str,
    pub(super) name: &'a str,
    pub(super) hook: Option<&'a str>,
    pub(super) priority: Option<i32>,
    pub(super) policy: Option<&'a str>,
}

/// A rule: its statements as nft's JSON expressions.
pub(super) struct Rule<'a> {
    pub(super) family: &'a str,
    pub(super) table: &'a str,
    pub(super) chain: &'a str,
    pub(super) handle: Option<u64>,
    pub(super) expr: &'a [Value],
    pub(super) comment: Option<&'a str>,
}

/// An element of a named or anonymous set or map.
pub(super) struct Elem<'a> {
    pub(super) key: &'a Value,
    /// The value of a map element.
    pub(super) data: Option<&'a Value>,
    pub(super) comment: Option<&'a str>,
}

/// A named set or map.
pub(super) struct Set<'a> {
    pub(super) family: &'a str,
    pub(super) table: &'a str,
    pub(super) name: &'a str,
    pub(super) elems: Vec<Elem<'a>>,
}

/// Every object of the ruleset lbpath uses, in the order nft listed them.
#[derive(Default)]
pub(super) struct Model<'a> {
    pub(super) chains: Vec<Chain<'a>>,
    pub(super) rules: Vec<Rule<'a>>,
    pub(super) sets: Vec<Set<'a>>,
}

fn field<'a>(body: &'a Value, key: &str, what: &str, i: usize) -> Result<&'a str, ParseError> {
    body.get(key).and_then(Value::as_str).ok_or_else(|| {
        ParseError::new(
            None,
            format!("nftables[{i}]: {what} without a string \"{key}\""),
        )
    })
}

impl<'a> Model<'a> {
    /// Reads the items of the "nftables" array; a malformed object is an
    /// error, objects lbpath does not use are skipped.
    pub(super) fn read(items: &'a [Value]) -> Result<Self, ParseError> {
        let mut m = Model::default();
        for (i, item) in items.iter().enumerate() {
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
                "chain" => m.chains.push(Chain {
                    family: field(body, "family", "chain", i)?,
                    table: field(body, "table", "chain", i)?,
                    name: field(body, "name", "chain", i)?,
                    hook: body.get("hook").and_then(Value::as_str),
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
                    policy: body.get("policy").and_then(Value::as_str),
                }),
                "rule" => m.rules.push(Rule {
                    family: field(body, "family", "rule", i)?,
                    table: field(body, "table", "rule", i)?,
                    chain: field(body, "chain", "rule", i)?,
                    handle: body.get("handle").and_then(Value::as_u64),
                    expr: body
                        .get("expr")
                        .and_then(Value::as_array)
                        .map(Vec::as_slice)
                        .ok_or_else(|| {
                            ParseError::new(
                                None,
                                format!("nftables[{i}]: rule without an \"expr\" array"),
                            )
                        })?,
                    comment: body.get("comment").and_then(Value::as_str),
                }),
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
                    m.sets.push(Set {
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
        }
        Ok(m)
    }

    /// The named set or map (`name` with or without its "@").
    pub(super) fn set(&self, family: &str, table: &str, name: &str) -> Option<&Set<'a>> {
        let name = name.strip_prefix('@').unwrap_or(name);
        self.sets
            .iter()
            .find(|s| s.family == family && s.table == table && s.name == name)
    }
}

fn elem(v: &Value, is_map: bool) -> Elem<'_> {
    let (key, data) = match v.as_array() {
        Some(pair) if is_map && pair.len() == 2 => (&pair[0], Some(&pair[1])),
        _ => (v, None),
    };
    // {"elem": {"val": …, "comment": …}} wraps keys that carry options.
    match key.get("elem") {
        Some(inner) => Elem {
            key: inner.get("val").unwrap_or(key),
            data,
            comment: inner.get("comment").and_then(Value::as_str),
        },
        None => Elem {
            key,
            data,
            comment: None,
        },
    }
}

/// Elements of an anonymous set/map: `{"set": [...]}` or a bare list.
pub(super) fn inline_elems(v: &Value) -> Vec<Elem<'_>> {
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
pub(super) fn jump_target(v: &Value) -> Option<&str> {
    v.get("goto")
        .or_else(|| v.get("jump"))?
        .get("target")?
        .as_str()
}

/// The (address, protocol, port) or (protocol, port) key of a map element.
pub(super) fn key_parts(key: &Value) -> Vec<String> {
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
