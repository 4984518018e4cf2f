//! Model layer: `iptables-save` text read into tables, chain declarations
//! and rules, with the few matches lbpath needs taken out of each rule
//! (the tokenizer follows iptables-save's quoting). Each rule keeps the text
//! iptables-save printed for it, which is also how lbpath shows the rule, so
//! iptables has no render layer of its own. Nothing here knows about
//! kube-proxy.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::kubeproxy::{ParseError, Proto};

/// One `*name` … `COMMIT` block.
pub(super) struct Table {
    pub(super) name: String,
    pub(super) chains: Vec<ChainDecl>,
    /// Names in `chains`, for checking rules against declarations quickly.
    pub(super) declared: HashSet<String>,
    pub(super) rules: Vec<Rule>,
}

/// A ":NAME POLICY [packets:bytes]" line.
pub(super) struct ChainDecl {
    pub(super) name: String,
    /// None for a user chain ("-").
    pub(super) policy: Option<String>,
    pub(super) counters: Option<(u64, u64)>,
}

/// An "-A CHAIN …" line.
pub(super) struct Rule {
    pub(super) chain: String,
    /// "-A CHAIN …" as printed, without the counters.
    pub(super) text: String,
    pub(super) counters: Option<(u64, u64)>,
    pub(super) m: Matches,
}

/// The parts of a rule lbpath needs; other matches are ignored, which is
/// safe because they only narrow what the rule applies to.
#[derive(Default)]
pub(super) struct Matches {
    /// (negated, value)
    pub(super) src: Option<(bool, String)>,
    pub(super) dst: Option<(bool, String)>,
    pub(super) proto: Option<(bool, String)>,
    pub(super) dport: Option<(bool, String)>,
    pub(super) comment: Option<String>,
    /// `-m addrtype --dst-type LOCAL` (true) or `! --dst-type LOCAL` (false).
    pub(super) dst_local: Option<bool>,
    /// -j or -g target.
    pub(super) target: Option<String>,
    pub(super) to_destination: Option<String>,
}

/// What [`parse_tables`] read.
pub(super) struct Parsed {
    pub(super) tables: Vec<Table>,
    /// Lines left out, as "line N: why". One odd rule (a tool of another
    /// version, a comment that breaks the format) must not cost every other
    /// rule of the node.
    pub(super) skipped: Vec<String>,
}

/// Lines a quoted value may run over: iptables-save prints a newline inside
/// a comment as it is, and a comment holds at most 256 bytes.
const MAX_CONTINUATION: usize = 64;

/// Every table of the output, in order. Rule and chain lines that cannot be
/// read are skipped and named; only output that is not iptables-save's at
/// all, or that was cut short, is an error (naming its line).
pub(super) fn parse_tables(text: &str) -> Result<Parsed, ParseError> {
    let mut out = Parsed {
        tables: Vec::new(),
        skipped: Vec::new(),
    };
    let mut current: Option<(Table, usize)> = None;
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let n = i + 1;
        let raw = lines[i];
        i += 1;
        let err = |msg: String| ParseError::new(Some(n), msg);
        let mut line = raw.trim().to_string();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            if let Some((t, _)) = &current {
                return Err(err(format!(
                    "table *{} has no COMMIT before *{name}",
                    t.name
                )));
            }
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(err(format!("bad table name {name:?}")));
            }
            let table = Table {
                name: name.to_string(),
                chains: Vec::new(),
                declared: HashSet::new(),
                rules: Vec::new(),
            };
            current = Some((table, n));
            continue;
        }
        let Some((table, _)) = current.as_mut() else {
            return Err(err(format!(
                "expected a table start like \"*filter\", found {:?}",
                clip(&line)
            )));
        };
        if line == "COMMIT" {
            let (t, _) = current.take().expect("inside a table");
            out.tables.push(t);
            continue;
        }
        let result = if let Some(decl) = line.strip_prefix(':') {
            declare_chain(table, decl, &line)
        } else {
            // A quote still open: the value goes on over the next lines.
            // Taken only when it closes; else this line alone is skipped.
            if let Some((whole, next)) = continued(&line, &lines[i..]) {
                line = whole;
                i += next;
            }
            parse_rule(table, &line).map(|rule| table.rules.push(rule))
        };
        if let Err(why) = result {
            out.skipped.push(format!("line {n}: {why}"));
        }
    }
    if let Some((t, start)) = current {
        return Err(ParseError::new(
            Some(start),
            format!(
                "table *{} is not closed by COMMIT (truncated output?)",
                t.name
            ),
        ));
    }
    Ok(out)
}

/// A rule line whose quoted value runs over the lines after it (`rest`):
/// the whole rule and how many lines it took from `rest`, once the quote
/// closes before a COMMIT.
fn continued(line: &str, rest: &[&str]) -> Option<(String, usize)> {
    if !open_quote(line) {
        return None;
    }
    let mut whole = line.to_string();
    for (k, next) in rest.iter().take(MAX_CONTINUATION).enumerate() {
        if next.trim() == "COMMIT" {
            return None;
        }
        whole.push('\n');
        whole.push_str(next);
        if !open_quote(&whole) {
            return Some((whole, k + 1));
        }
    }
    None
}

/// Whether a rule line ends inside a double-quoted value.
fn open_quote(line: &str) -> bool {
    matches!(tokenize(line), Err(e) if e.starts_with("unterminated quote"))
}

/// ":NAME POLICY [packets:bytes]", `decl` being the line after the ":".
fn declare_chain(table: &mut Table, decl: &str, line: &str) -> Result<(), String> {
    let mut parts = decl.split_whitespace();
    let (Some(name), Some(policy)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "chain line needs a name and a policy: {:?}",
            clip(line)
        ));
    };
    let counters = parts.next().map(parse_counters).transpose()?;
    if parts.next().is_some() {
        return Err(format!(
            "unexpected text after chain counters: {:?}",
            clip(line)
        ));
    }
    if !table.declared.insert(name.to_string()) {
        return Err(format!(
            "chain {name} declared twice in table {}",
            table.name
        ));
    }
    let policy = (policy != "-").then(|| policy.to_string());
    table.chains.push(ChainDecl {
        name: name.to_string(),
        policy,
        counters,
    });
    Ok(())
}

/// "[packets:bytes] -A CHAIN …" (counters optional), for a chain the table
/// declared.
fn parse_rule(table: &Table, line: &str) -> Result<Rule, String> {
    let (counters, rest) = if line.starts_with('[') {
        let end = line
            .find(']')
            .ok_or_else(|| "unterminated rule counters \"[\"".to_string())?;
        (
            Some(parse_counters(&line[..=end])?),
            line[end + 1..].trim_start(),
        )
    } else {
        (None, line)
    };
    let tokens = tokenize(rest)?;
    if tokens.first().map(String::as_str) != Some("-A") {
        return Err(format!(
            "expected a rule \"-A CHAIN …\", found {:?}",
            clip(rest)
        ));
    }
    let chain = tokens
        .get(1)
        .ok_or_else(|| "rule without a chain name".to_string())?;
    if !table.declared.contains(chain) {
        return Err(format!(
            "rule for chain {chain}, which table {} does not declare",
            table.name
        ));
    }
    let m = parse_matches(&tokens[2..])?;
    Ok(Rule {
        chain: chain.clone(),
        text: rest.to_string(),
        counters,
        m,
    })
}

/// A line cut to a length an error message can quote.
fn clip(s: &str) -> String {
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s.to_string()
    }
}

/// "[packets:bytes]"
fn parse_counters(s: &str) -> Result<(u64, u64), String> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| format!("bad counters {s:?}, expected [packets:bytes]"))?;
    let (p, b) = inner
        .split_once(':')
        .ok_or_else(|| format!("bad counters {s:?}, expected [packets:bytes]"))?;
    match (p.parse(), b.parse()) {
        (Ok(p), Ok(b)) => Ok((p, b)),
        _ => Err(format!("bad counters {s:?}, expected [packets:bytes]")),
    }
}

/// Splits a rule as iptables-save quotes it: double quotes around values
/// with spaces, backslash escaping `"` and `\`.
fn tokenize(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut in_token, mut quoted) = (false, false);
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted || matches!(chars.clone().next(), Some('"' | '\\')) => {
                match chars.next() {
                    Some(e) => cur.push(e),
                    None => return Err("rule ends in a backslash".into()),
                }
            }
            '"' => {
                quoted = !quoted;
                in_token = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            c => {
                cur.push(c);
                in_token = true;
            }
        }
    }
    if quoted {
        return Err("unterminated quote in rule".into());
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

/// The matches and target of a rule, from its tokens after "-A CHAIN".
fn parse_matches(tokens: &[String]) -> Result<Matches, String> {
    let mut m = Matches::default();
    let mut negate = false;
    let mut i = 0;
    while i < tokens.len() {
        let opt = tokens[i].as_str();
        if opt == "!" {
            negate = true;
            i += 1;
            continue;
        }
        let value = || {
            tokens
                .get(i + 1)
                .cloned()
                .ok_or_else(|| format!("option {opt} has no value"))
        };
        let mut takes_value = true;
        match opt {
            "-s" | "--source" | "--src" => m.src = Some((negate, value()?)),
            "-d" | "--destination" | "--dst" => m.dst = Some((negate, value()?)),
            "-p" | "--protocol" => m.proto = Some((negate, value()?.to_ascii_lowercase())),
            "--dport" | "--destination-port" => m.dport = Some((negate, value()?)),
            "--comment" => m.comment = Some(value()?),
            "--dst-type" => m.dst_local = Some((value()? == "LOCAL") != negate),
            "-j" | "--jump" | "-g" | "--goto" => {
                m.target = Some(value()?);
                // Target options follow; only DNAT's destination matters.
                let rest = &tokens[i + 2..];
                if let Some(k) = rest.iter().position(|t| t == "--to-destination") {
                    m.to_destination = Some(
                        rest.get(k + 1)
                            .cloned()
                            .ok_or("option --to-destination has no value")?,
                    );
                }
                if opt.starts_with("-g") || opt == "--goto" {
                    i += 2;
                    negate = false;
                    continue;
                }
                break;
            }
            _ => takes_value = false,
        }
        i += if takes_value { 2 } else { 1 };
        negate = false;
    }
    Ok(m)
}

/// "203.0.113.10" or "203.0.113.10/32" (not a wider prefix).
pub(super) fn host(s: &str) -> Option<IpAddr> {
    match s.split_once('/') {
        None => s.parse().ok(),
        Some((a, len)) => {
            let ip: IpAddr = a.parse().ok()?;
            let full = if ip.is_ipv4() { "32" } else { "128" };
            (len == full).then_some(ip)
        }
    }
}

/// The value of a match that is not negated.
pub(super) fn positive(v: &Option<(bool, String)>) -> Option<&str> {
    v.as_ref().filter(|(neg, _)| !neg).map(|(_, s)| s.as_str())
}

/// The protocol a rule matches (`-p`), when it names one.
pub(super) fn rule_proto(r: &Rule) -> Option<Proto> {
    positive(&r.m.proto)?.parse().ok()
}

/// The destination port a rule matches (`--dport`), when it is one port.
pub(super) fn rule_port(r: &Rule) -> Option<u16> {
    positive(&r.m.dport)?.parse().ok()
}

/// "10.244.1.5:8080" or "[fd00::5]:8080".
pub(super) fn parse_ip_port(s: &str) -> Option<(IpAddr, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, port) = rest.split_once("]:")?;
        return Some((ip.parse().ok()?, port.parse().ok()?));
    }
    let (ip, port) = s.rsplit_once(':')?;
    Some((ip.parse().ok()?, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeproxy::{Mode, parse_iptables_save};

    const AFTER: &str = include_str!("../testdata/iptables-nft.save");

    #[test]
    fn comment_quoting() {
        assert_eq!(
            tokenize(r#"-A X -m comment --comment "a \"b\" c\\d" -j DROP"#).unwrap()[5],
            r#"a "b" c\d"#
        );
        assert_eq!(
            tokenize("-A X --comment ns/svc:p -j DROP").unwrap()[3],
            "ns/svc:p"
        );
        assert_eq!(tokenize(r#"-A X --comment """#).unwrap()[3], "");
    }

    #[test]
    fn output_that_is_not_iptables_save_or_cut_short_is_an_error() {
        let cases: &[(&str, Option<usize>, &str)] = &[
            ("hello world\n", Some(1), "expected a table start"),
            (
                "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\n",
                Some(1),
                "not closed by COMMIT",
            ),
            ("*filter\n*nat\nCOMMIT\n", Some(2), "no COMMIT"),
            ("COMMIT\n", Some(1), "expected a table start"),
            ("{\"nftables\": []}\n", Some(1), "expected a table start"),
        ];
        for (text, line, msg) in cases {
            let e = parse_iptables_save(text, Mode::IptablesNft).expect_err(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.message.contains(msg), "{text:?}: {e}");
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn a_line_that_cannot_be_read_is_skipped_and_named() {
        let cases: &[(&str, &str)] = &[
            (
                "-A OUTPUT -j DROP",
                "line 4: rule for chain OUTPUT, which table filter does not declare",
            ),
            (":FORWARD ACCEPT [x:0]", "line 4: bad counters"),
            (
                "[1:2 -A INPUT -j DROP",
                "line 4: unterminated rule counters",
            ),
            ("-A INPUT -d", "line 4: option -d has no value"),
            (":INPUT ACCEPT [0:0]", "line 4: chain INPUT declared twice"),
            (":OUTPUT", "line 4: chain line needs a name and a policy"),
            ("-I INPUT -j DROP", "line 4: expected a rule"),
            (
                "-A INPUT -m comment --comment \"open",
                "line 4: unterminated quote",
            ),
        ];
        for (bad, why) in cases {
            let text = format!(
                "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -d 192.0.2.1/32 -j ACCEPT\n{bad}\n-A INPUT -d 192.0.2.2/32 -j REJECT\nCOMMIT\n"
            );
            let p = parse_tables(&text).unwrap_or_else(|e| panic!("{bad:?}: {e}"));
            assert_eq!(p.skipped.len(), 1, "{bad:?}: {:?}", p.skipped);
            assert!(p.skipped[0].starts_with(why), "{bad:?}: {:?}", p.skipped);
            // The rules around it are all there.
            let dsts: Vec<_> = p.tables[0]
                .rules
                .iter()
                .filter_map(|r| r.m.dst.as_ref().map(|d| d.1.as_str()))
                .collect();
            assert_eq!(dsts, ["192.0.2.1/32", "192.0.2.2/32"], "{bad:?}");
        }
    }

    #[test]
    fn a_newline_inside_a_comment_continues_the_rule() {
        // As iptables-save prints it: the newline raw, inside the quotes.
        let text = "*filter\n:INPUT ACCEPT [0:0]\n[3:180] -A INPUT -d 192.0.2.1/32 -m comment --comment \"a\nb\\\"c\" -j DROP\n-A INPUT -j ACCEPT\nCOMMIT\n";
        let p = parse_tables(text).unwrap();
        assert!(p.skipped.is_empty(), "{:?}", p.skipped);
        let rules = &p.tables[0].rules;
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].m.comment.as_deref(), Some("a\nb\"c"));
        assert_eq!(rules[0].m.target.as_deref(), Some("DROP"));
        assert_eq!(rules[0].counters, Some((3, 180)));
        // A quote never closed is one skipped line, not the rest of the table.
        let text = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -m comment --comment \"open\n-A INPUT -j ACCEPT\nCOMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";
        let p = parse_tables(text).unwrap();
        assert_eq!(p.skipped.len(), 1, "{:?}", p.skipped);
        assert_eq!(p.tables.len(), 2);
    }

    #[test]
    fn every_truncation_of_a_real_capture_parses_or_errs() {
        // Cut at every line boundary and inside lines: never a panic.
        let mut cuts: Vec<usize> = AFTER.match_indices('\n').map(|(i, _)| i + 1).collect();
        cuts.extend((0..AFTER.len()).step_by(97));
        for cut in cuts {
            if !AFTER.is_char_boundary(cut) {
                continue;
            }
            let head = &AFTER[..cut];
            // Complete exactly when every table opened was committed.
            let opened = head.lines().filter(|l| l.starts_with('*')).count();
            let closed = head.lines().filter(|l| l.trim() == "COMMIT").count();
            match parse_iptables_save(head, Mode::IptablesNft) {
                Ok(_) => assert_eq!(opened, closed, "cut at {cut} parsed"),
                Err(e) => assert!(
                    opened != closed && !e.message.is_empty(),
                    "cut at {cut}: {e}"
                ),
            }
        }
    }
}
