//! Arbitrary bytes (as lossy UTF-8) through `parse_nft_json`: the JSON
//! document, nft's objects (chains with named priorities, rules, sets and
//! maps with their elements), the rule rendering and kube-proxy's reading of
//! its maps and chains.
//!
//! The mutator is structure-aware half of the time: when the input is JSON,
//! it picks a node at random and deletes, duplicates or replaces it, with a
//! subtree, a string or a key of the real captures
//! (tracer/src/kubeproxy/testdata, also the seed corpus), with a number at
//! the edge of a type or a named priority ("srcnat + 10"), or rewrites a
//! string; most inputs so stay valid JSON
//! and reach the reader. The other half is libFuzzer's own byte-level
//! mutation (and an input that is not JSON always gets that).
//!
//! Only "no panic, no hang" is asserted, plus invariants any input keeps: a
//! parse error is one line; a ruleset has no counter growth against itself;
//! every Service address found is found again by its address, and so is
//! every endpoint.
//!
//! Run: `cargo xtask fuzz --target nft_json`.

#![no_main]

use std::sync::OnceLock;

use lbpath::kubeproxy::{Mode, Ruleset, counter_deltas, parse_nft_json};
use lbpath_fuzz::{NFT_CAPTURES, Rng, emit, mutate_piece};
use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};
use serde_json::{Map, Value};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_nft_json(&text) {
        Ok(rs) => {
            assert_eq!(rs.mode, Mode::Nftables);
            check(&rs);
            // Matching against another read: by handle, then by rule text.
            let _ = counter_deltas(&before().filter_rules, &rs.filter_rules);
            let _ = counter_deltas(&rs.filter_rules, &before().filter_rules);
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
});

fn before() -> &'static Ruleset {
    static BEFORE: OnceLock<Ruleset> = OnceLock::new();
    BEFORE.get_or_init(|| parse_nft_json(NFT_CAPTURES[1]).expect("the capture parses"))
}

fn check(rs: &Ruleset) {
    // nft handles may repeat in a hostile input, so only the call is checked.
    let _ = counter_deltas(&rs.filter_rules, &rs.filter_rules);
    for s in &rs.services {
        let found = rs.services_for(s.address, s.port, s.proto);
        assert!(found.iter().any(|f| std::ptr::eq(*f, s)), "{s:?}");
        for e in &s.endpoints {
            let owners = rs.endpoint_owners(e.ip, e.port, s.proto);
            assert!(owners.iter().any(|(o, _)| std::ptr::eq(*o, s)), "{e:?}");
        }
    }
}

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let mut rng = Rng::new(seed);
    if rng.below(2) == 0 {
        return fuzzer_mutate(data, size, max_size);
    }
    let Ok(mut doc) = serde_json::from_slice::<Value>(&data[..size]) else {
        return fuzzer_mutate(data, size, max_size);
    };
    mutate_tree(&mut doc, &mut rng);
    let out = serde_json::to_vec(&doc).expect("a Value serializes");
    emit(data, size, max_size, &out)
});

/// The captures, parsed once, and every string and key in them.
fn donors() -> &'static (Vec<Value>, Vec<String>) {
    static DONORS: OnceLock<(Vec<Value>, Vec<String>)> = OnceLock::new();
    DONORS.get_or_init(|| {
        let docs: Vec<Value> = NFT_CAPTURES
            .iter()
            .map(|c| serde_json::from_str(c).expect("the captures are JSON"))
            .collect();
        let mut strings = Vec::new();
        docs.iter().for_each(|d| collect_strings(d, &mut strings));
        strings.sort();
        strings.dedup();
        (docs, strings)
    })
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            collect_strings(x, out);
        }),
        _ => {}
    }
}

/// Numbers at the edges of the types the reader converts to (u16 ports,
/// i32 priorities, u64 counters and handles) and a few ordinary ones.
const NUMBERS: [&str; 12] = [
    "0",
    "-1",
    "1",
    "65535",
    "65536",
    "2147483647",
    "-2147483648",
    "2147483648",
    "9223372036854775807",
    "18446744073709551615",
    "1e300",
    "0.5",
];

/// A priority as nft writes it by name ("dstnat - 10"), with an offset
/// from [`NUMBERS`]: the string form of a chain's "prio".
fn named_priority(rng: &mut Rng) -> String {
    const NAMES: [&str; 8] = [
        "raw", "mangle", "dstnat", "filter", "security", "srcnat", "out", "bogus",
    ];
    const SIGNS: [&str; 4] = ["+", "-", " + ", " - "];
    let name = rng.pick(&NAMES).expect("names");
    let sign = rng.pick(&SIGNS).expect("signs");
    let number = rng.pick(&NUMBERS).expect("numbers").trim_start_matches('-');
    format!("{name}{sign}{number}")
}

/// A node reached by a random walk down from `v` (each level: stop there
/// one time in four).
fn pick_mut<'v>(mut v: &'v mut Value, rng: &mut Rng) -> &'v mut Value {
    loop {
        let n = match v {
            Value::Array(a) => a.len(),
            Value::Object(o) => o.len(),
            _ => 0,
        };
        if n == 0 || rng.below(4) == 0 {
            return v;
        }
        let i = rng.below(n);
        v = match v {
            Value::Array(a) => &mut a[i],
            Value::Object(o) => o.values_mut().nth(i).expect("i < len"),
            _ => unreachable!("only containers have children"),
        };
    }
}

fn pick<'v>(mut v: &'v Value, rng: &mut Rng) -> &'v Value {
    loop {
        let children: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            Value::Object(o) => o.values().collect(),
            _ => Vec::new(),
        };
        if children.is_empty() || rng.below(4) == 0 {
            return v;
        }
        v = children[rng.below(children.len())];
    }
}

fn mutate_tree(doc: &mut Value, rng: &mut Rng) {
    let (docs, strings) = donors();
    let donor = pick(rng.pick(docs).expect("captures"), rng).clone();
    let string = rng.pick(strings).expect("strings").clone();
    let number: Value =
        serde_json::from_str(rng.pick(&NUMBERS).expect("numbers")).unwrap_or(Value::Null);
    let node = pick_mut(doc, rng);
    match (rng.below(7), node) {
        (0, Value::Array(a)) if !a.is_empty() => {
            let i = rng.below(a.len());
            if rng.below(2) == 0 {
                a.remove(i);
            } else {
                let copy = a[i].clone();
                a.insert(rng.below(a.len() + 1), copy);
            }
        }
        (0, Value::Object(o)) if !o.is_empty() => {
            let key = o.keys().nth(rng.below(o.len())).expect("a key").clone();
            let value = o.remove(&key).expect("present");
            if rng.below(2) == 0 {
                o.insert(string, value); // renamed
            }
        }
        (1, Value::Array(a)) => a.insert(rng.below(a.len() + 1), donor),
        (1, Value::Object(o)) => {
            o.insert(string, donor);
        }
        (2, Value::String(s)) => *s = String::from_utf8_lossy(&mutate_piece(s.as_bytes())).into(),
        (2, node) => *node = number,
        (3, node) => *node = Value::String(string),
        (4, node) => *node = donor,
        (5, node) => *node = Value::String(named_priority(rng)),
        (_, node) => *node = Value::Object(Map::from_iter([(string, donor)])),
    }
}
