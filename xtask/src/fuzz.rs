//! The fuzz targets of tracer/fuzz: the parsers that read what lbpath does
//! not control (BGP segments, `iptables-save` and `nft -j` output, ARP
//! records), fed hostile input by libFuzzer. `cargo xtask test` runs each
//! for [`TEST_SECONDS`]; `cargo xtask fuzz` for longer.
//!
//! cargo-fuzz (bootstrap installs it into the tools directory) builds the
//! targets with the pinned nightly: release with debug assertions (overflow
//! checks), no sanitizer (the targets and the parsers are safe Rust, so a
//! panic, a hang or memory growth is what there is to find, and without
//! ASan they run about twice as fast). Each target binary then runs alone
//! under a time limit. Everything a run makes is under `target/fuzz/`:
//!
//! - `build/`: cargo's target directory for the fuzz crate;
//! - `seeds/<target>/`: the seed corpus, written anew each run from the real
//!   captures in tracer/src/kubeproxy/testdata (whole, and one seed per
//!   table, which mutate faster);
//! - `corpus/<target>/`: what libFuzzer found interesting in `cargo xtask
//!   fuzz` runs, kept between them (delete it to start over);
//! - `test-corpus/<target>/`: the same for `cargo xtask test`, emptied first
//!   so that a test run starts from the seeds alone, as on CI's fresh clone,
//!   and does not spend its seconds replaying a corpus grown by long runs;
//! - `artifacts/<target>/`: crashing, hanging or memory-hungry inputs;
//! - `logs/<target>.log`: libFuzzer's output of the last run.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo_fuzz, run, toolchain::TOOLCHAIN, workspace::Workspace};

/// Seconds each target runs in `cargo xtask test`.
pub const TEST_SECONDS: u64 = 20;
/// Seconds each target runs in `cargo xtask fuzz` without `--seconds`.
pub const DEFAULT_SECONDS: u64 = 60;
/// One input running longer than this is a hang (libFuzzer's `-timeout`).
const INPUT_TIMEOUT_SECS: u64 = 10;
/// Memory beyond this is a failure (libFuzzer's `-rss_limit_mb`).
const RSS_LIMIT_MB: u64 = 2048;
/// Log lines shown for a failed target.
const LOG_TAIL: usize = 40;

const FUZZ_DIR: &str = "tracer/fuzz";
const TESTDATA: &str = "tracer/src/kubeproxy/testdata";

/// Where a target's seeds come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seeds {
    /// None: libFuzzer starts from an empty input.
    None,
    /// `iptables-save` files of testdata, whole and per table.
    IptablesSave(&'static [&'static str]),
    /// `nft -j list ruleset` files of testdata, whole and per table.
    NftJson(&'static [&'static str]),
}

#[derive(Debug)]
pub struct Target {
    /// The `[[bin]]` of tracer/fuzz/Cargo.toml, `fuzz_targets/<name>.rs`.
    pub name: &'static str,
    seeds: Seeds,
    /// A libFuzzer dictionary in tracer/fuzz/dicts/.
    dict: Option<&'static str>,
}

pub const TARGETS: [Target; 4] = [
    Target {
        name: "bgp_decode",
        seeds: Seeds::None,
        dict: None,
    },
    Target {
        name: "iptables_save",
        seeds: Seeds::IptablesSave(&[
            "iptables-nft.save",
            "iptables-nft-before.save",
            "nftables.iptables-nft.save",
            "lab-iptables.rules",
        ]),
        dict: Some("iptables.dict"),
    },
    Target {
        name: "nft_json",
        seeds: Seeds::NftJson(&[
            "nftables.json",
            "nftables-before.json",
            "iptables-nft.nft.json",
        ]),
        dict: Some("nft.dict"),
    },
    Target {
        name: "arp",
        seeds: Seeds::None,
        dict: None,
    },
];

pub fn target_names() -> Vec<&'static str> {
    TARGETS.iter().map(|t| t.name).collect()
}

/// Where one run keeps its files (see the module documentation).
struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn new(ws: &Workspace) -> Self {
        Self {
            root: ws.target.join("fuzz"),
        }
    }

    fn build(&self) -> PathBuf {
        self.root.join("build")
    }

    fn binary(&self, target: &str) -> PathBuf {
        self.build()
            .join("x86_64-unknown-linux-gnu/release")
            .join(target)
    }

    fn seeds(&self, target: &str) -> PathBuf {
        self.root.join("seeds").join(target)
    }

    fn corpus(&self, target: &str, purpose: Purpose) -> PathBuf {
        let dir = match purpose {
            Purpose::Test => "test-corpus",
            Purpose::Explore => "corpus",
        };
        self.root.join(dir).join(target)
    }

    fn artifacts(&self, target: &str) -> PathBuf {
        self.root.join("artifacts").join(target)
    }

    fn log(&self, target: &str) -> PathBuf {
        self.root.join("logs").join(format!("{target}.log"))
    }
}

/// What a run is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `cargo xtask test`: from the seeds alone, libFuzzer's output only in
    /// the logs.
    Test,
    /// `cargo xtask fuzz`: on from the corpus of earlier runs, libFuzzer's
    /// output shown as it comes.
    Explore,
}

/// Builds the fuzz targets, then runs those named (all when `only` is
/// empty) for `seconds` each; fails when any found a crash, a hang or
/// memory growth.
pub fn run(ws: &Workspace, only: &[String], seconds: u64, purpose: Purpose) -> Result<()> {
    let targets: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| only.is_empty() || only.iter().any(|o| o == t.name))
        .collect();
    if targets.is_empty() {
        bail!(
            "no fuzz target named {}: there are {}",
            only.join(", "),
            target_names().join(", ")
        );
    }
    let dirs = Dirs::new(ws);
    run::run(&mut build_command(ws, &dirs)).context("cannot build the fuzz targets")?;
    let mut failed = Vec::new();
    for t in targets {
        match run_target(ws, &dirs, t, seconds, purpose) {
            Ok(stats) => eprintln!("fuzz: {} ok: {}", t.name, stats.summary()),
            Err(e) => {
                eprintln!("fuzz: {} FAILED: {e:#}", t.name);
                failed.push(t.name);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzzing found a problem in {} (inputs in {})",
            failed.join(", "),
            dirs.root.join("artifacts").display()
        );
    }
    Ok(())
}

/// `cargo fuzz build` of every target, with the pinned nightly.
fn build_command(ws: &Workspace, dirs: &Dirs) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN])
        .arg(cargo_fuzz::binary(&ws.tools))
        .args(["fuzz", "build", "--fuzz-dir"])
        .arg(ws.root.join(FUZZ_DIR))
        .args([
            "--release",
            "--debug-assertions",
            "--sanitizer",
            "none",
            "--target-dir",
        ])
        .arg(dirs.build())
        .current_dir(&ws.root)
        // The cargo that runs xtask is the stable one; the build wants
        // nightly's, which `rustup run` puts first.
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

fn run_target(
    ws: &Workspace,
    dirs: &Dirs,
    t: &Target,
    seconds: u64,
    purpose: Purpose,
) -> Result<Stats> {
    let seeds = dirs.seeds(t.name);
    write_seeds(&ws.root.join(TESTDATA), t.seeds, &seeds)?;
    let (corpus, artifacts, log) = (
        dirs.corpus(t.name, purpose),
        dirs.artifacts(t.name),
        dirs.log(t.name),
    );
    if purpose == Purpose::Test && corpus.exists() {
        fs::remove_dir_all(&corpus)
            .with_context(|| format!("cannot clear {}", corpus.display()))?;
    }
    for dir in [&corpus, &artifacts, &dirs.root.join("logs")] {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let before = list(&artifacts)?;
    let mut cmd = Command::new(dirs.binary(t.name));
    cmd.args(libfuzzer_args(
        &corpus,
        &seeds,
        &artifacts,
        t.dict.map(|d| ws.root.join(FUZZ_DIR).join("dicts").join(d)),
        seconds,
    ));
    eprintln!(
        "==> fuzz {} for {seconds} s ({})",
        t.name,
        relative(&ws.root, &log).display()
    );
    let status = supervise(&mut cmd, &log, seconds, purpose == Purpose::Explore)?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let new: Vec<PathBuf> = list(&artifacts)?.difference(&before).cloned().collect();
    if status.is_some_and(|s| s.success()) && new.is_empty() {
        return Ok(Stats::parse(&text));
    }
    let mut report = String::new();
    match status {
        Some(s) => report.push_str(&format!("libFuzzer exited ({s})")),
        None => report.push_str(&format!(
            "libFuzzer did not stop within {GRACE_SECS} s of its time limit and was killed"
        )),
    }
    if let Some(panic) = panic_message(&text) {
        report.push_str(&format!("; {panic}"));
    }
    eprintln!("---- end of {}:", log.display());
    for line in tail(&text, LOG_TAIL) {
        eprintln!("    {line}");
    }
    for a in &new {
        report.push_str(&format!(
            "; input {} (reproduce: {} {})",
            a.display(),
            dirs.binary(t.name).display(),
            a.display()
        ));
    }
    bail!(report)
}

fn libfuzzer_args(
    corpus: &Path,
    seeds: &Path,
    artifacts: &Path,
    dict: Option<PathBuf>,
    seconds: u64,
) -> Vec<String> {
    // The first corpus directory is where libFuzzer adds what it finds.
    let mut args = vec![
        corpus.display().to_string(),
        seeds.display().to_string(),
        format!("-max_total_time={seconds}"),
        format!("-timeout={INPUT_TIMEOUT_SECS}"),
        format!("-rss_limit_mb={RSS_LIMIT_MB}"),
        format!("-artifact_prefix={}/", artifacts.display()),
        "-print_final_stats=1".into(),
    ];
    if let Some(d) = dict {
        args.push(format!("-dict={}", d.display()));
    }
    args
}

/// Seconds allowed past the time limit (loading a large corpus, writing
/// the final statistics) before a run counts as hung.
const GRACE_SECS: u64 = 60;

/// Runs `cmd` with its output in `log` (and on stderr with `echo`); kills
/// it [`GRACE_SECS`] past its time limit. `None` when it had to be killed.
fn supervise(
    cmd: &mut Command,
    log: &Path,
    seconds: u64,
    echo: bool,
) -> Result<Option<std::process::ExitStatus>> {
    let file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let shown = run::display(cmd);
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    // libFuzzer reports on stderr.
    let copier = thread::spawn(move || {
        let mut file = file;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(file, "{line}");
            if echo {
                eprintln!("{line}");
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(seconds + GRACE_SECS);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let _ = copier.join();
    Ok(status)
}

/// libFuzzer's final statistics.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    runs: u64,
    seconds: u64,
    per_sec: u64,
    new_units: u64,
    peak_rss_mb: u64,
}

impl Stats {
    fn parse(log: &str) -> Self {
        let stat = |key: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        // "Done 23002 runs in 16 second(s)"
        let seconds = log
            .lines()
            .find_map(|l| l.strip_prefix("Done "))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Stats {
            runs: stat("stat::number_of_executed_units:"),
            seconds,
            per_sec: stat("stat::average_exec_per_sec:"),
            new_units: stat("stat::new_units_added:"),
            peak_rss_mb: stat("stat::peak_rss_mb:"),
        }
    }

    fn summary(&self) -> String {
        format!(
            "{} runs in {} s ({}/s), {} new inputs, peak RSS {} MB",
            self.runs, self.seconds, self.per_sec, self.new_units, self.peak_rss_mb
        )
    }
}

/// The panic's location and message ("thread '…' panicked at f.rs:1:2:"
/// and the line after it), or libFuzzer's verdict.
fn panic_message(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.contains(" panicked at ")) {
        let at = lines[i].split(" panicked at ").nth(1).unwrap_or("");
        let msg = lines.get(i + 1).copied().unwrap_or("");
        return Some(format!("panicked at {at} {msg}"));
    }
    lines
        .iter()
        .find(|l| l.starts_with("==") && l.contains("ERROR: libFuzzer:"))
        .map(|l| l.split("ERROR: ").nth(1).unwrap_or(l).to_string())
}

/// The last `n` lines, without the dictionary libFuzzer recommends or the
/// frames of a panic's backtrace (the panic's message is shown apart).
fn tail(log: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("# Uses: ") && !is_backtrace_frame(l))
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// "   3: priority" or "             at ./tracer/src/…:223:10".
fn is_backtrace_frame(line: &str) -> bool {
    let t = line.trim_start();
    t.len() < line.len()
        && (t.starts_with("at ")
            || t.split_once(": ")
                .is_some_and(|(n, _)| n.bytes().all(|b| b.is_ascii_digit())))
}

fn list(dir: &Path) -> Result<BTreeSet<PathBuf>> {
    let mut out = BTreeSet::new();
    for e in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        out.insert(e?.path());
    }
    Ok(out)
}

fn relative<'a>(root: &Path, p: &'a Path) -> &'a Path {
    p.strip_prefix(root).unwrap_or(p)
}

/// Writes the seeds of `seeds` into `dir`, replacing what was there.
fn write_seeds(testdata: &Path, seeds: Seeds, dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = match seeds {
        Seeds::None => return Ok(()),
        Seeds::IptablesSave(files) | Seeds::NftJson(files) => files,
    };
    for name in files {
        let path = testdata.join(name);
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let pieces = match seeds {
            Seeds::NftJson(_) => nft_tables(&text),
            _ => Ok(iptables_tables(&text)),
        }
        .with_context(|| format!("cannot split {}", path.display()))?;
        fs::write(dir.join(name), &text)?;
        for (table, piece) in pieces {
            fs::write(dir.join(format!("{name}.{table}")), piece)?;
        }
    }
    Ok(())
}

/// Each `*table` … `COMMIT` block of `iptables-save` output, with its name.
fn iptables_tables(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('*') {
            current = Some((name.trim().to_string(), String::new()));
        }
        if let Some((_, block)) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
        if line.trim() == "COMMIT" {
            out.extend(current.take());
        }
    }
    out
}

/// `nft -j list ruleset` cut into one document per table ("ip-kube-proxy"),
/// each with the metainfo object and the table's objects in their order.
fn nft_tables(text: &str) -> Result<Vec<(String, String)>> {
    let doc: Value = serde_json::from_str(text).context("not JSON")?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .context("no \"nftables\" array")?;
    let mut meta = Vec::new();
    let mut tables: Vec<(String, Vec<Value>)> = Vec::new();
    for item in items {
        let Some((kind, body)) = item.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        let field = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
        let table = if kind == "table" {
            field("name")
        } else {
            field("table")
        };
        if kind == "metainfo" || table.is_empty() {
            meta.push(item.clone());
            continue;
        }
        let key = format!("{}-{table}", field("family"));
        match tables.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(item.clone()),
            None => tables.push((key, vec![item.clone()])),
        }
    }
    Ok(tables
        .into_iter()
        .map(|(key, list)| {
            let items: Vec<Value> = meta.iter().cloned().chain(list).collect();
            (key, serde_json::json!({ "nftables": items }).to_string())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> &'static Path {
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
    }

    /// Every target is a `[[bin]]` of the fuzz crate with its source file,
    /// and every `[[bin]]` is a target here, so none is left out of the runs.
    #[test]
    fn the_targets_are_the_fuzz_crates_binaries() {
        let manifest = fs::read_to_string(root().join(FUZZ_DIR).join("Cargo.toml")).unwrap();
        let bins: BTreeSet<&str> = manifest
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|n| *n != "lbpath-fuzz")
            .collect();
        let ours: BTreeSet<&str> = target_names().into_iter().collect();
        assert_eq!(bins, ours);
        for t in &TARGETS {
            let src = root()
                .join(FUZZ_DIR)
                .join(format!("fuzz_targets/{}.rs", t.name));
            assert!(src.is_file(), "{}", src.display());
            if let Some(d) = t.dict {
                assert!(root().join(FUZZ_DIR).join("dicts").join(d).is_file(), "{d}");
            }
        }
    }

    #[test]
    fn seeds_are_the_captures_whole_and_per_table() {
        let tmp = crate::scratch::TempDir::new("seeds");
        let testdata = root().join(TESTDATA);
        for t in &TARGETS {
            let dir = tmp.path().join(t.name);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("stale"), "x").unwrap();
            write_seeds(&testdata, t.seeds, &dir).unwrap();
            let names: BTreeSet<String> = fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert!(!names.contains("stale"), "{names:?}");
            match t.seeds {
                Seeds::None => assert!(names.is_empty()),
                Seeds::IptablesSave(files) | Seeds::NftJson(files) => {
                    for f in files {
                        assert!(names.contains(*f), "{f}: {names:?}");
                    }
                }
            }
        }
        let ipt: BTreeSet<String> = fs::read_dir(tmp.path().join("iptables_save"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(ipt.contains("iptables-nft.save.nat") && ipt.contains("iptables-nft.save.filter"));
        let nft = tmp.path().join("nft_json/nftables.json.ip-kube-proxy");
        let doc: Value = serde_json::from_str(&fs::read_to_string(nft).unwrap()).unwrap();
        assert!(doc["nftables"][0].get("metainfo").is_some());
    }

    #[test]
    fn iptables_output_splits_into_its_tables() {
        let text = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n\
                    # Completed\n*nat\n-A X -j Y\nCOMMIT\n*raw\n:A - [0:0]\n";
        let tables = iptables_tables(text);
        assert_eq!(
            tables,
            [
                (
                    "filter".into(),
                    "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n".into()
                ),
                ("nat".into(), "*nat\n-A X -j Y\nCOMMIT\n".into()),
            ]
        );
    }

    #[test]
    fn nft_output_splits_into_its_tables() {
        let text = r#"{"nftables": [{"metainfo": {"version": "1"}},
            {"table": {"family": "ip", "name": "kube-proxy"}},
            {"chain": {"family": "ip", "table": "kube-proxy", "name": "c"}},
            {"table": {"family": "inet", "name": "x"}},
            {"rule": {"family": "ip", "table": "kube-proxy", "chain": "c", "expr": []}}]}"#;
        let tables = nft_tables(text).unwrap();
        let keys: Vec<&str> = tables.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["ip-kube-proxy", "inet-x"]);
        let doc: Value = serde_json::from_str(&tables[0].1).unwrap();
        let kinds: Vec<&str> = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_object().unwrap().keys().next().unwrap().as_str())
            .collect();
        assert_eq!(kinds, ["metainfo", "table", "chain", "rule"]);
        assert!(nft_tables("[]").is_err());
        assert!(nft_tables("{").is_err());
    }

    #[test]
    fn libfuzzer_gets_a_time_limit_and_writes_under_target() {
        let args = libfuzzer_args(
            Path::new("/t/fuzz/corpus/arp"),
            Path::new("/t/fuzz/seeds/arp"),
            Path::new("/t/fuzz/artifacts/arp"),
            Some(PathBuf::from("/r/tracer/fuzz/dicts/nft.dict")),
            20,
        );
        assert_eq!(
            args,
            [
                "/t/fuzz/corpus/arp",
                "/t/fuzz/seeds/arp",
                "-max_total_time=20",
                "-timeout=10",
                "-rss_limit_mb=2048",
                "-artifact_prefix=/t/fuzz/artifacts/arp/",
                "-print_final_stats=1",
                "-dict=/r/tracer/fuzz/dicts/nft.dict",
            ]
        );
    }

    #[test]
    fn the_build_uses_the_pinned_nightly_and_its_own_target_dir() {
        let ws = Workspace {
            root: "/r".into(),
            target: "/r/target".into(),
            tools: "/r/target/lbpath-tools".into(),
        };
        let shown = run::display(&build_command(&ws, &Dirs::new(&ws)));
        assert_eq!(
            shown,
            format!(
                "rustup run {TOOLCHAIN} /r/target/lbpath-tools/bin/cargo-fuzz fuzz build \
                 --fuzz-dir /r/tracer/fuzz --release --debug-assertions --sanitizer none \
                 --target-dir /r/target/fuzz/build"
            )
        );
    }

    const LOG: &str = "INFO: Seed: 123\n#2\tINITED\n\"KUBE\" # Uses: 3\nDone 23002 runs in 16 second(s)\n\
        stat::number_of_executed_units: 23002\nstat::average_exec_per_sec:     1437\n\
        stat::new_units_added:          1213\nstat::slowest_unit_time_sec:    0\n\
        stat::peak_rss_mb:              34\n";

    #[test]
    fn final_statistics_are_read_from_the_log() {
        let s = Stats::parse(LOG);
        assert_eq!(
            s,
            Stats {
                runs: 23002,
                seconds: 16,
                per_sec: 1437,
                new_units: 1213,
                peak_rss_mb: 34
            }
        );
        assert_eq!(
            s.summary(),
            "23002 runs in 16 s (1437/s), 1213 new inputs, peak RSS 34 MB"
        );
        assert_eq!(Stats::parse(""), Stats::default());
        assert!(!tail(LOG, 40).iter().any(|l| l.contains("Uses")));
        assert_eq!(tail(LOG, 1), ["stat::peak_rss_mb:              34"]);
        let panic = "panicked at x.rs:1:2:\nboom\nstack backtrace:\n   0: __rustc::rust_begin_unwind\n\
                     \x20            at /rustc/library/std/src/panicking.rs:689:5\n  12: main\n\
                     ==1== ERROR: libFuzzer: deadly signal\n";
        assert_eq!(
            tail(panic, 40),
            [
                "panicked at x.rs:1:2:",
                "boom",
                "stack backtrace:",
                "==1== ERROR: libFuzzer: deadly signal"
            ]
        );
    }

    #[test]
    fn a_failure_is_named_by_its_panic_or_libfuzzers_verdict() {
        let panic = "INFO: Seed: 1\n\nthread '<unnamed>' panicked at /r/tracer/src/x.rs:3:9:\n\
                     attempt to add with overflow\nnote: run with `RUST_BACKTRACE=1`\n\
                     ==1== ERROR: libFuzzer: deadly signal\n";
        assert_eq!(
            panic_message(panic).unwrap(),
            "panicked at /r/tracer/src/x.rs:3:9: attempt to add with overflow"
        );
        let timeout = "==7== ERROR: libFuzzer: timeout after 10 seconds\n";
        assert_eq!(
            panic_message(timeout).unwrap(),
            "libFuzzer: timeout after 10 seconds"
        );
        assert_eq!(panic_message(LOG), None);
    }
}
