//! `cargo xtask test-kernels`: the kernel matrix. Boots Debian's 5.10, 6.1
//! and 6.12 kernels under qemu, each in its own VM, and runs the selected
//! integration tests of lbpath-tests inside every guest, so the eBPF side is
//! checked against the verifiers and BTF of kernels other than the host's.
//!
//! The guests share the host's / read-only as their root, so they run the
//! host's tools and the binaries built here; nothing lab-specific lives in
//! this harness: which tests run is [`selection::KERNEL_TESTS`].
//!
//! Layout under target/kernels/: `apt/` (private apt state), `debs/`,
//! `<package>/` (unpacked kernels), `runs/bin/` (the binaries the guests
//! run, copied so a rebuild during the run cannot change them) and
//! `runs/<series>/` (initramfs, guest script, console.log, qemu.log, out/
//! with one log per test).

mod cpio;
mod debian;
mod fetch;
mod guest;
mod initramfs;
mod libtest;
mod qemu;
mod report;
mod selection;

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use self::{
    fetch::Kernel,
    guest::GuestTest,
    qemu::{Accel, Vm},
    report::{KernelResult, TestResult},
    selection::Selector,
};
use crate::{packages, run, tasks, workspace::Workspace};

pub use self::debian::DEFAULT_SERIES;

pub const DEFAULT_JOBS: u16 = 2;
/// Per kernel, for the whole list: ~20 tests at 20–45 s each under TCG.
pub const DEFAULT_TIMEOUT_SECS: u64 = 1500;
/// Console lines shown for a guest that did not come up.
const CONSOLE_TAIL: usize = 30;

pub struct Options {
    /// Series such as "6.1"; empty: [`DEFAULT_SERIES`].
    pub series: Vec<String>,
    /// VMs at once.
    pub jobs: usize,
    /// Per kernel, from qemu's start.
    pub timeout: Duration,
    /// `binary::test` selectors replacing [`selection::KERNEL_TESTS`].
    pub selectors: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            series: Vec::new(),
            jobs: DEFAULT_JOBS.into(),
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            selectors: Vec::new(),
        }
    }
}

/// A test binary of lbpath-tests, as cargo built it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TestBinary {
    exe: PathBuf,
    /// Its package's directory: `cargo test` runs tests there.
    cwd: PathBuf,
}

/// A kernel ready to boot: its run directory holds the initramfs and script.
struct Plan {
    kernel: Kernel,
    dir: PathBuf,
    initrd: PathBuf,
    script: PathBuf,
}

pub fn run(ws: &Workspace, opts: &Options) -> Result<()> {
    let start = Instant::now();
    let selectors = selection::selected(&opts.selectors)?;
    let series: Vec<String> = if opts.series.is_empty() {
        DEFAULT_SERIES.iter().map(|s| s.to_string()).collect()
    } else {
        opts.series.clone()
    };
    if let Some(bad) = series.iter().find(|s| !debian::is_series(s)) {
        bail!("kernel series {bad:?} is not major.minor (e.g. 6.1)");
    }
    let root = ws.target.join("kernels");
    let runs = root.join("runs");

    let lbpath = tasks::build(ws)?;
    let binaries = test_binaries(ws)?;
    let (lbpath, tests) = stage(&runs.join("bin"), &lbpath, &binaries, &selectors)?;

    let kernels = fetch::Store::new(&root).prepare(&series);
    let modprobe = fetch::modprobe()?;
    let busybox = packages::static_busybox()?;
    let mut results: Vec<(usize, KernelResult)> = Vec::new();
    let mut plans: Vec<(usize, Plan)> = Vec::new();
    for (i, (s, kernel)) in series.iter().zip(kernels).enumerate() {
        let failed = |kernel: Option<&Kernel>, e: anyhow::Error| KernelResult {
            series: s.clone(),
            kernel: kernel.map(Kernel::title),
            warning: kernel.and_then(|k| k.warning.clone()),
            error: Some(format!("{e:#}")),
            ..Default::default()
        };
        match kernel {
            Err(e) => results.push((i, failed(None, e))),
            Ok(k) => {
                if let Some(w) = &k.warning {
                    eprintln!("xtask: warning: kernel {s}: {w}");
                }
                let dir = runs.join(s);
                match plan(k.clone(), &dir, &modprobe, &busybox, &lbpath, &tests) {
                    Ok(p) => plans.push((i, p)),
                    Err(e) => results.push((i, failed(Some(&k), e))),
                }
            }
        }
    }

    let accel = match plans.first() {
        Some((_, p)) => {
            let (accel, why) = qemu::choose_accel(
                &p.kernel.vmlinuz(),
                &p.initrd,
                &busybox,
                &runs.join("accel-probe"),
                &ws.root,
            )?;
            eprintln!("kernels: accelerator {} ({why})", accel.name());
            accel
        }
        None => Accel::Tcg,
    };
    let jobs = opts.jobs.max(1).min(plans.len().max(1));
    eprintln!(
        "kernels: running {} test(s) on {} kernel(s), {jobs} VM(s) at once, {} s timeout each",
        selectors.len(),
        plans.len(),
        opts.timeout.as_secs()
    );
    let next = AtomicUsize::new(0);
    let done = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some((i, p)) = plans.get(n) else { break };
                    let r = run_plan(p, accel, opts.timeout, &selectors, &ws.root);
                    done.lock().unwrap().push((*i, r));
                }
            });
        }
    });
    results.extend(done.into_inner().unwrap());
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<KernelResult> = results.into_iter().map(|(_, r)| r).collect();

    println!();
    for r in &results {
        println!("{}", report::block(r));
    }
    print!("{}", report::summary(&results, start.elapsed()));
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.series.as_str())
        .collect();
    ensure!(
        failed.is_empty(),
        "kernel matrix failed on {} (logs under {})",
        failed.join(", "),
        runs.display()
    );
    Ok(())
}

/// Builds the test binaries of lbpath-tests without running them.
fn test_binaries(ws: &Workspace) -> Result<BTreeMap<String, TestBinary>> {
    let mut cmd = ws.cargo()?;
    cmd.args([
        "test",
        "--release",
        "-p",
        tasks::TESTS_PKG,
        "--no-run",
        "--message-format=json",
    ]);
    let shown = run::display(&cmd);
    eprintln!("==> {shown}");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    ensure!(out.status.success(), "`{shown}` failed ({})", out.status);
    let bins = parse_test_artifacts(&String::from_utf8_lossy(&out.stdout));
    ensure!(!bins.is_empty(), "`{shown}` built no test binaries");
    Ok(bins)
}

/// The integration test binaries (target kind "test") in cargo's JSON
/// messages, by target name.
fn parse_test_artifacts(json_lines: &str) -> BTreeMap<String, TestBinary> {
    let mut bins = BTreeMap::new();
    for line in json_lines.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        let (Some(name), Some(exe), Some(manifest)) = (
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
            msg["manifest_path"].as_str(),
        ) else {
            continue;
        };
        if is_test {
            let cwd = Path::new(manifest).parent().unwrap_or(Path::new("/"));
            bins.insert(
                name.to_string(),
                TestBinary {
                    exe: exe.into(),
                    cwd: cwd.into(),
                },
            );
        }
    }
    bins
}

/// Copies lbpath and the selected test binaries to `bin_dir` and returns
/// lbpath's copy and the guest's test list.
fn stage(
    bin_dir: &Path,
    lbpath: &Path,
    binaries: &BTreeMap<String, TestBinary>,
    selectors: &[Selector],
) -> Result<(PathBuf, Vec<GuestTest>)> {
    if bin_dir.exists() {
        fs::remove_dir_all(bin_dir)
            .with_context(|| format!("cannot clear {}", bin_dir.display()))?;
    }
    fs::create_dir_all(bin_dir)?;
    let copy = |from: &Path| -> Result<PathBuf> {
        let to = bin_dir.join(from.file_name().context("binary without a file name")?);
        if !to.exists() {
            fs::copy(from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
        }
        Ok(to)
    };
    let lbpath = copy(lbpath)?;
    let mut tests = Vec::new();
    for (i, sel) in selectors.iter().enumerate() {
        let Some(bin) = binaries.get(&sel.binary) else {
            bail!(
                "test selector {sel}: lbpath-tests has no test binary {:?} (it has {})",
                sel.binary,
                binaries.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        tests.push(GuestTest {
            id: sel.id(i),
            exe: copy(&bin.exe)?,
            cwd: bin.cwd.clone(),
            args: sel.libtest_args(),
        });
    }
    Ok((lbpath, tests))
}

/// A fresh run directory for `kernel` with its initramfs and guest script.
fn plan(
    kernel: Kernel,
    dir: &Path,
    modprobe: &Path,
    busybox: &Path,
    lbpath: &Path,
    tests: &[GuestTest],
) -> Result<Plan> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    fs::create_dir_all(qemu::out_dir(dir))?;
    let initrd = dir.join("initramfs.cpio");
    let modules = initramfs::build(&kernel, modprobe, busybox, &initrd)?;
    let script = dir.join("guest.sh");
    fs::write(
        &script,
        guest::script(&guest::Guest {
            modules_root: &kernel.dir,
            modprobe,
            busybox,
            lbpath,
            tests,
        }),
    )?;
    eprintln!(
        "kernels: {} {} ready in {} (initramfs modules: {})",
        kernel.package,
        kernel.version,
        dir.display(),
        modules.join(" ")
    );
    Ok(Plan {
        kernel,
        dir: dir.to_path_buf(),
        initrd,
        script,
    })
}

/// Boots one kernel, runs its tests, and reads the results.
fn run_plan(
    p: &Plan,
    accel: Accel,
    timeout: Duration,
    selectors: &[Selector],
    workspace: &Path,
) -> KernelResult {
    let k = &p.kernel;
    let tag = format!("[{}]", k.series);
    let out = qemu::out_dir(&p.dir);
    let ids: Vec<(String, String)> = selectors
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id(i), s.to_string()))
        .collect();
    eprintln!(
        "{tag} booting {} ({}) with {}",
        k.package,
        k.version,
        accel.name()
    );
    let vmlinuz = k.vmlinuz();
    let vm = Vm {
        vmlinuz: &vmlinuz,
        initrd: &p.initrd,
        script: &p.script,
        dir: &p.dir,
        workspace,
        accel,
    };
    let mut up_seen = false;
    let mut reported = HashSet::new();
    let outcome = vm.run(timeout, |booted| {
        if let (Some(t), false) = (booted, up_seen) {
            up_seen = true;
            eprintln!("{tag} guest up after {:.1} s", t.as_secs_f64());
        }
        for (id, name) in &ids {
            // The guest's `echo $rc > id.rc` may be seen created but not yet
            // written (9p): report a test once its code reads back.
            let rc_written = fs::read_to_string(out.join(format!("{id}.rc")))
                .is_ok_and(|t| t.trim().parse::<i32>().is_ok());
            if !reported.contains(id) && rc_written {
                reported.insert(id.clone());
                let t = TestResult::read(&out, id, name);
                let secs = t.time.map_or(0.0, |d| d.as_secs_f64());
                match &t.verdict {
                    Ok(_) => eprintln!("{tag} PASS {name} ({secs:.1} s)"),
                    Err(why) => eprintln!("{tag} FAIL {name} ({secs:.1} s): {why}"),
                }
            }
        }
    });
    let mut r = KernelResult {
        series: k.series.clone(),
        kernel: Some(k.title()),
        warning: k.warning.clone(),
        accel: Some(accel.name()),
        run_dir: p.dir.clone(),
        ..Default::default()
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            r.error = Some(format!("{e:#}"));
            return r;
        }
    };
    r.booted = outcome.booted;
    r.elapsed = outcome.elapsed;
    r.timed_out = outcome.timed_out.then_some(timeout);
    if outcome.booted.is_none() {
        r.console_tail = report::file_tail(&qemu::console_log(&p.dir), CONSOLE_TAIL);
        let qemu_err = report::file_tail(&qemu::qemu_log(&p.dir), 5);
        if !qemu_err.is_empty() {
            r.error = Some(format!("qemu: {}", qemu_err.join(" / ")));
        }
    }
    r.tests = ids
        .iter()
        .map(|(id, name)| TestResult::read(&out, id, name))
        .collect();
    let verdict = if r.passed() { "passed" } else { "FAILED" };
    eprintln!(
        "{tag} done in {:.0} s: {}/{} tests passed, {verdict}{}",
        r.elapsed.as_secs_f64(),
        r.passed_count(),
        r.tests.len(),
        if outcome.timed_out {
            " (timed out)"
        } else {
            ""
        }
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_artifacts_are_the_test_targets_with_executables() {
        let json = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#lbpath-tests@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"watch","src_path":"/w/tests/tests/watch.rs","test":true},"profile":{"test":true},"features":[],"filenames":["/w/target/release/deps/watch-1a2b"],"executable":"/w/target/release/deps/watch-1a2b","fresh":true}
{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["lib"],"name":"lbpath_tests"},"executable":"/w/target/release/deps/lbpath_tests-9f"}
{"reason":"compiler-artifact","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["bin"],"name":"lbpath-demo"},"executable":"/w/target/release/deps/lbpath_demo-77"}
{"reason":"compiler-artifact","manifest_path":"/w/tracer/Cargo.toml","target":{"kind":["lib"],"name":"tracer"},"executable":null}
{"reason":"build-finished","success":true}
not json
"#;
        let bins = parse_test_artifacts(json);
        assert_eq!(bins.len(), 1);
        assert_eq!(
            bins["watch"],
            TestBinary {
                exe: "/w/target/release/deps/watch-1a2b".into(),
                cwd: "/w/tests".into()
            }
        );
    }

    #[test]
    fn staging_copies_binaries_and_rejects_unknown_ones() {
        let tmp = crate::scratch::TempDir::new("stage");
        let src = tmp.path().join("src");
        fs::create_dir_all(&src).unwrap();
        for n in ["lbpath", "watch-1a2b"] {
            fs::write(src.join(n), n).unwrap();
        }
        let bins = BTreeMap::from([(
            "watch".to_string(),
            TestBinary {
                exe: src.join("watch-1a2b"),
                cwd: "/w/tests".into(),
            },
        )]);
        let bin_dir = tmp.path().join("runs/bin");
        let sel = selection::selected(&["watch::a".into(), "watch::b".into()]).unwrap();
        let (lbpath, tests) = stage(&bin_dir, &src.join("lbpath"), &bins, &sel).unwrap();
        assert_eq!(lbpath, bin_dir.join("lbpath"));
        assert_eq!(fs::read_to_string(&tests[1].exe).unwrap(), "watch-1a2b");
        assert_eq!(tests[1].id, "02-watch-b");
        assert_eq!(tests[0].args[0], "a");
        let bad = selection::selected(&["nope::a".into()]).unwrap();
        let err = stage(&bin_dir, &src.join("lbpath"), &bins, &bad).unwrap_err();
        assert!(
            err.to_string()
                .contains("no test binary \"nope\" (it has watch)"),
            "{err}"
        );
    }
}
