//! The matrix's results: read from a guest's out directory, then printed as
//! one block per kernel and a one-line-per-kernel summary. A kernel counts
//! as passed only when it booted, finished in time and every selected test
//! passed (having run at least one test).

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use super::libtest::{self, Summary};

/// Lines of a failing test's log shown in the report.
const TAIL_LINES: usize = 40;
/// What in a log points at the verifier or missing privileges; such lines
/// are shown even when they are not in the tail.
const VERIFIER_PATTERNS: &[&str] = &[
    "Verifier output",
    "combined stack size",
    "Permission denied (os error 13)",
];
const MAX_VERIFIER_LINES: usize = 20;

#[derive(Debug)]
pub struct TestResult {
    /// "watch::healthy_iptables_nft"
    pub name: String,
    pub log: PathBuf,
    /// Ok, or why it failed; never Ok without at least one test run.
    pub verdict: Result<Summary, String>,
    pub time: Option<Duration>,
    /// Whether it started at all (a log exists).
    pub started: bool,
}

impl TestResult {
    /// Reads `<id>.log`, `<id>.rc` and `<id>.ms` from a guest's out dir.
    pub fn read(out: &Path, id: &str, name: &str) -> Self {
        let log = out.join(format!("{id}.log"));
        let text = fs::read(&log).map(|b| String::from_utf8_lossy(&b).into_owned());
        let number = |ext: &str| -> Option<i64> {
            fs::read_to_string(out.join(format!("{id}.{ext}")))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let rc = number("rc").map(|c| c as i32);
        let started = text.is_ok();
        let verdict = match (&text, rc) {
            (Err(_), _) => Err("not run".to_string()),
            (Ok(t), rc) => libtest::verdict(rc, t),
        };
        Self {
            name: name.to_string(),
            log,
            verdict,
            time: number("ms").map(|ms| Duration::from_millis(ms.max(0) as u64)),
            started,
        }
    }

    pub fn passed(&self) -> bool {
        self.verdict.is_ok()
    }
}

#[derive(Debug, Default)]
pub struct KernelResult {
    pub series: String,
    /// "linux-image-6.1.0-56-amd64 6.1.158-1 (6.1.0-56-amd64)", once known.
    pub kernel: Option<String>,
    pub warning: Option<String>,
    /// Why the kernel could not be prepared or booted at all.
    pub error: Option<String>,
    pub accel: Option<&'static str>,
    pub booted: Option<Duration>,
    pub timed_out: Option<Duration>,
    pub elapsed: Duration,
    pub run_dir: PathBuf,
    /// The end of the serial console, shown when it did not boot.
    pub console_tail: Vec<String>,
    pub tests: Vec<TestResult>,
}

impl KernelResult {
    pub fn passed_count(&self) -> usize {
        self.tests.iter().filter(|t| t.passed()).count()
    }

    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.booted.is_some()
            && self.timed_out.is_none()
            && !self.tests.is_empty()
            && self.passed_count() == self.tests.len()
    }

    /// One word or phrase for the summary table.
    fn state(&self) -> String {
        if self.kernel.is_none() {
            return "NOT RUN (no kernel)".into();
        }
        if self.accel.is_none() {
            return "NOT RUN (setup failed)".into();
        }
        if self.booted.is_none() {
            return match self.timed_out {
                Some(t) => format!("DID NOT BOOT (timed out, {} s)", t.as_secs()),
                None => "DID NOT BOOT".into(),
            };
        }
        if let Some(t) = self.timed_out {
            return format!("TIMED OUT ({} s)", t.as_secs());
        }
        if self.passed() {
            "ok".into()
        } else {
            "FAILED".into()
        }
    }
}

/// The readable block for one kernel.
pub fn block(k: &KernelResult) -> String {
    let mut s = String::new();
    let title = k.kernel.as_deref().unwrap_or("(no kernel)");
    s.push_str(&format!("== kernel {}: {title}\n", k.series));
    if let Some(w) = &k.warning {
        s.push_str(&format!("   warning: {w}\n"));
    }
    let boot = match k.booted {
        Some(t) => format!("booted in {:.1} s", t.as_secs_f64()),
        None => "DID NOT BOOT (no GUEST UP marker)".into(),
    };
    if k.accel.is_some() {
        s.push_str(&format!(
            "   accel {}, {boot}, ran {:.0} s\n",
            k.accel.unwrap_or("-"),
            k.elapsed.as_secs_f64()
        ));
    }
    if let Some(e) = &k.error {
        s.push_str(&format!("   error: {e}\n"));
    }
    if let Some(t) = k.timed_out {
        s.push_str(&format!(
            "   TIMED OUT: qemu killed after {} s\n",
            t.as_secs()
        ));
    }
    if k.accel.is_some() && k.booted.is_none() && k.console_tail.is_empty() {
        s.push_str("   console: nothing printed\n");
    }
    if k.booted.is_none() && !k.console_tail.is_empty() {
        s.push_str("   console (last lines):\n");
        for l in &k.console_tail {
            s.push_str(&format!("   | {l}\n"));
        }
    }
    let width = k.tests.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in &k.tests {
        let time = t
            .time
            .map(|d| format!("{:6.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| "     - ".into());
        match &t.verdict {
            Ok(_) => s.push_str(&format!("   PASS  {:width$}  {time}\n", t.name)),
            Err(why) => {
                s.push_str(&format!("   FAIL  {:width$}  {time}  {why}\n", t.name));
                if t.started {
                    s.push_str(&failure_detail(&t.log));
                }
            }
        }
    }
    if !k.run_dir.as_os_str().is_empty() {
        s.push_str(&format!("   artifacts: {}\n", k.run_dir.display()));
    }
    s
}

/// A failing test's log tail, and its verifier lines.
fn failure_detail(log: &Path) -> String {
    let text = fs::read(log)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut s = String::new();
    let verifier = verifier_lines(&lines);
    if !verifier.is_empty() {
        s.push_str("         verifier / permission lines:\n");
        for l in verifier {
            s.push_str(&format!("         ! {l}\n"));
        }
    }
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    s.push_str(&format!(
        "         last {} of {} lines of {}:\n",
        tail.len(),
        lines.len(),
        log.display()
    ));
    for l in tail {
        s.push_str(&format!("         | {l}\n"));
    }
    s
}

pub fn verifier_lines<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let mut found: Vec<&str> = Vec::new();
    for l in lines {
        if VERIFIER_PATTERNS.iter().any(|p| l.contains(p)) && !found.contains(l) {
            found.push(l.trim_end());
            if found.len() == MAX_VERIFIER_LINES {
                break;
            }
        }
    }
    found
}

/// One line per kernel, and the total.
pub fn summary(kernels: &[KernelResult], total: Duration) -> String {
    let mut s = String::from("kernel matrix summary:\n");
    let release = |k: &KernelResult| {
        k.kernel
            .as_deref()
            .and_then(|t| {
                t.rsplit_once('(')
                    .map(|(_, r)| r.trim_end_matches(')').to_string())
            })
            .unwrap_or_else(|| "-".into())
    };
    let rw = kernels
        .iter()
        .map(|k| release(k).len())
        .max()
        .unwrap_or(0)
        .max(7);
    s.push_str(&format!(
        "   {:6}  {:rw$}  {:5}  {:>5}  {:>7}  result\n",
        "kernel", "release", "accel", "tests", "time"
    ));
    for k in kernels {
        s.push_str(&format!(
            "   {:6}  {:rw$}  {:5}  {:>5}  {:>5} s  {}\n",
            k.series,
            release(k),
            k.accel.unwrap_or("-"),
            format!("{}/{}", k.passed_count(), k.tests.len()),
            k.elapsed.as_secs(),
            k.state()
        ));
    }
    let failed = kernels.iter().filter(|k| !k.passed()).count();
    s.push_str(&format!(
        "kernel matrix: {} of {} kernels passed in {}\n",
        kernels.len() - failed,
        kernels.len(),
        minutes(total)
    ));
    s
}

pub fn minutes(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 60 {
        format!("{} min {:02} s", secs / 60, secs % 60)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The last lines of a file (the console, when a guest did not boot).
pub fn file_tail(path: &Path, n: usize) -> Vec<String> {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::TempDir;

    const PASS_LOG: &str = "running 1 test\ntest healthy ... ok\n\
        test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 3 filtered out; finished in 2.00s\n";

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn reads_results_and_shows_failures_with_tail_and_verifier_lines() {
        let tmp = TempDir::new("report");
        let out = tmp.path();
        write(out, "01-a-ok.log", PASS_LOG);
        write(out, "01-a-ok.rc", "0\n");
        write(out, "01-a-ok.ms", "2100\n");
        let mut bad = String::from(
            "Error: loading\nVerifier output: combined stack size of 3 calls is 544. Too large\n",
        );
        for i in 0..60 {
            bad.push_str(&format!("line {i}\n"));
        }
        bad.push_str("test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s\n");
        write(out, "02-a-bad.log", &bad);
        write(out, "02-a-bad.rc", "101\n");
        write(
            out,
            "03-a-none.log",
            "running 0 tests\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 4 filtered out; finished in 0.00s\n",
        );
        write(out, "03-a-none.rc", "0\n");
        write(out, "04-a-hung.log", "running 1 test\n");
        let tests = vec![
            TestResult::read(out, "01-a-ok", "a::ok"),
            TestResult::read(out, "02-a-bad", "a::bad"),
            TestResult::read(out, "03-a-none", "a::none"),
            TestResult::read(out, "04-a-hung", "a::hung"),
            TestResult::read(out, "05-a-never", "a::never"),
        ];
        assert!(tests[0].passed());
        assert_eq!(tests[0].time, Some(Duration::from_millis(2100)));
        assert!(tests[1..].iter().all(|t| !t.passed()));
        assert_eq!(tests[3].verdict.as_ref().unwrap_err(), "did not finish");
        assert_eq!(tests[4].verdict.as_ref().unwrap_err(), "not run");
        let k = KernelResult {
            series: "6.1".into(),
            kernel: Some("linux-image-6.1.0-56-amd64 6.1.158-1 (6.1.0-56-amd64)".into()),
            accel: Some("tcg"),
            booted: Some(Duration::from_secs(4)),
            elapsed: Duration::from_secs(100),
            run_dir: out.to_path_buf(),
            tests,
            ..Default::default()
        };
        assert!(!k.passed());
        let b = block(&k);
        assert!(b.contains("   PASS  a::ok"), "{b}");
        assert!(b.contains("   FAIL  a::bad "), "{b}");
        assert!(b.contains("! Verifier output: combined stack size"), "{b}");
        assert!(b.contains("last 40 of 63 lines"), "{b}");
        assert!(b.contains("| line 59\n"), "{b}");
        assert!(!b.contains("| line 20\n"), "{b}");
        assert!(b.contains("| line 21\n"), "{b}");
        assert!(b.contains("ran 0 tests"), "{b}");
        let s = summary(&[k], Duration::from_secs(125));
        assert!(s.contains("6.1.0-56-amd64  tcg      1/5"), "{s}");
        assert!(s.contains("FAILED"), "{s}");
        assert!(s.ends_with("0 of 1 kernels passed in 2 min 05 s\n"), "{s}");
    }

    #[test]
    fn a_kernel_that_did_not_boot_or_timed_out_never_passes() {
        let tmp = TempDir::new("report-boot");
        write(tmp.path(), "01-a-ok.log", PASS_LOG);
        write(tmp.path(), "01-a-ok.rc", "0");
        let ok = || vec![TestResult::read(tmp.path(), "01-a-ok", "a::ok")];
        let booted = KernelResult {
            series: "5.10".into(),
            kernel: Some("k (5.10.0-46-amd64)".into()),
            accel: Some("tcg"),
            booted: Some(Duration::from_secs(4)),
            tests: ok(),
            ..Default::default()
        };
        assert!(booted.passed());
        let not_booted = KernelResult {
            booted: None,
            console_tail: vec!["Kernel panic".into()],
            tests: ok(),
            ..booted
        };
        assert!(!not_booted.passed());
        assert!(block(&not_booted).contains("DID NOT BOOT"));
        assert!(block(&not_booted).contains("| Kernel panic"));
        let timed_out = KernelResult {
            booted: Some(Duration::from_secs(4)),
            timed_out: Some(Duration::from_secs(600)),
            console_tail: vec![],
            ..not_booted
        };
        assert!(!timed_out.passed());
        assert!(summary(&[timed_out], Duration::ZERO).contains("TIMED OUT (600 s)"));
        let empty = KernelResult {
            series: "6.1".into(),
            booted: Some(Duration::from_secs(4)),
            ..Default::default()
        };
        assert!(!empty.passed());
        let setup_failed = KernelResult {
            series: "6.1".into(),
            kernel: Some("k (6.1.0-56-amd64)".into()),
            error: Some("no module 9p".into()),
            ..Default::default()
        };
        assert!(!setup_failed.passed());
        let s = summary(&[setup_failed], Duration::ZERO);
        assert!(s.contains("NOT RUN (setup failed)"), "{s}");
    }

    #[test]
    fn verifier_lines_are_deduplicated() {
        let lines = [
            "Error: Permission denied (os error 13)",
            "x",
            "Error: Permission denied (os error 13)",
        ];
        assert_eq!(
            verifier_lines(&lines),
            ["Error: Permission denied (os error 13)"]
        );
    }
}
