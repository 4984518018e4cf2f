//! Arbitrary bytes (as lossy UTF-8) through `parse_iptables_save` in both
//! modes: the table/chain/rule structure, the tokenizer (quotes, escapes,
//! comments), the `[packets:bytes]` counters and kube-proxy's reading of the
//! chains.
//!
//! The mutator is structure-aware half of the time: it works on lines,
//! deleting, duplicating, swapping or rewriting one, or splicing in a line
//! or a word from the real captures (tracer/src/kubeproxy/testdata, also the
//! seed corpus), so most inputs stay well-formed enough to reach the reader
//! layer (service chains, endpoints, loops between chains). The other half
//! is libFuzzer's own byte-level mutation.
//!
//! Only "no panic, no hang" is asserted, plus invariants any input keeps: a
//! parse error is one line and names a line of the input; both modes read
//! the same; a ruleset has no counter growth against itself; every Service
//! address found is found again by its address, and so is every endpoint.
//!
//! Run: `cargo xtask fuzz --target iptables_save`.

#![no_main]

use lbpath::kubeproxy::{Mode, Ruleset, counter_deltas, parse_iptables_save};
use lbpath_fuzz::{IPTABLES_CAPTURES, Rng, emit, mutate_piece};
use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let nft = parse_iptables_save(&text, Mode::IptablesNft);
    let legacy = parse_iptables_save(&text, Mode::IptablesLegacy);
    match (nft, legacy) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.mode, Mode::IptablesNft);
            assert!(a.services == b.services && a.filter_rules == b.filter_rules);
            assert_eq!(a.base_chains, b.base_chains);
            check(&a);
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            assert!(!a.to_string().contains('\n'), "{a}");
            if let Some(line) = a.line {
                assert!(line >= 1 && line <= text.lines().count(), "{a}");
            }
        }
        (a, b) => panic!("the modes disagree: {:?} / {:?}", a.err(), b.err()),
    }
});

fn check(rs: &Ruleset) {
    assert!(counter_deltas(&rs.filter_rules, &rs.filter_rules).is_empty());
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
    let text = String::from_utf8_lossy(&data[..size]).into_owned();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    mutate_lines(&mut lines, &mut rng);
    let mut out = lines.join("\n");
    out.push('\n');
    emit(data, size, max_size, out.as_bytes())
});

fn mutate_lines(lines: &mut Vec<String>, rng: &mut Rng) {
    let capture = *rng.pick(&IPTABLES_CAPTURES).expect("captures");
    let donor: Vec<&str> = capture.lines().collect();
    let donor_line = *rng.pick(&donor).expect("capture lines");
    let n = lines.len();
    if n == 0 {
        lines.extend(donor.iter().map(|l| l.to_string()));
        return;
    }
    let i = rng.below(n);
    match rng.below(7) {
        0 => {
            lines.remove(i);
        }
        1 => {
            let line = lines[i].clone();
            lines.insert(rng.below(n + 1), line);
        }
        2 => lines.swap(i, rng.below(n)),
        3 => lines.insert(rng.below(n + 1), donor_line.to_string()),
        4 => lines[i] = donor_line.to_string(),
        5 => {
            // One word of the line for one of a capture's line: chain names,
            // targets, addresses, quoted comments.
            let mut words: Vec<&str> = lines[i].split(' ').collect();
            let theirs: Vec<&str> = donor_line.split(' ').collect();
            let k = rng.below(words.len());
            words[k] = rng.pick(&theirs).expect("a word");
            lines[i] = words.join(" ");
        }
        _ => lines[i] = String::from_utf8_lossy(&mutate_piece(lines[i].as_bytes())).into_owned(),
    }
}
