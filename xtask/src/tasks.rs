//! The tasks that build and run lbpath: build, test, demo, bench.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result};

use crate::{deploy, dist, fuzz, run, workspace::Workspace};

pub const DEMO_BIN: &str = "lbpath-demo";
pub const BENCH_BIN: &str = "lbpath-bench";
/// The package holding the integration tests and the lab binaries.
pub const TESTS_PKG: &str = "lbpath-tests";
/// Tells the image test (tests/tests/image.rs) where the image is.
pub const IMAGE_ENV: &str = "LBPATH_IMAGE";

/// Builds the release `lbpath` and returns its absolute path.
pub fn build(ws: &Workspace) -> Result<PathBuf> {
    run::run(ws.cargo()?.args(["build", "--release", "-p", "tracer"]))?;
    let bin = ws.lbpath_bin();
    let size = fs::metadata(&bin)
        .with_context(|| format!("the build succeeded but {} is missing", bin.display()))?
        .len();
    println!("lbpath: {} ({})", bin.display(), human_size(size));
    Ok(bin)
}

/// Unit tests, the fuzz targets for a short while, then the integration
/// tests against the release binary.
///
/// Fuzzing comes right after the unit tests: like them it needs no lab and
/// takes under two minutes, and a parser that panics on some input is
/// better named there than found as a confusing failure of an
/// integration test. A fuzzing failure does not stop the integration tests
/// (their result is worth having from the same run); the task fails either way.
/// The same goes for [`deliverables`], which runs just before them.
pub fn test(ws: &Workspace, jobs: u16, args: &[String]) -> Result<()> {
    // tracer-ebpf is no_std and builds only for the BPF target (tracer's
    // build script does that), so it has no host tests to run.
    run::run(ws.cargo()?.args([
        "test",
        "--workspace",
        "--exclude",
        TESTS_PKG,
        "--exclude",
        "tracer-ebpf",
    ]))?;
    let fuzzed = fuzz::run(ws, &[], fuzz::TEST_SECONDS, fuzz::Purpose::Test);
    if let Err(e) = &fuzzed {
        eprintln!("xtask: fuzzing failed ({e:#}); running the integration tests anyway");
    }
    let delivered = deliverables(ws);
    if let Err(e) = &delivered {
        eprintln!(
            "xtask: dist or deploy checks failed ({e:#}); running the integration tests anyway"
        );
    }
    let bin = build(ws)?;
    // Set whether or not dist succeeded: the image test fails, rather than
    // skips, when the archive is missing.
    let integration = run::run(
        ws.cargo()?
            .args(["test", "--release", "-p", TESTS_PKG, "--"])
            .args(libtest_args(jobs, args))
            .env("LBPATH_BIN", &bin)
            .env(IMAGE_ENV, dist::image_path(ws)),
    );
    let result = match (fuzzed, integration) {
        (Ok(()), i) => i,
        (Err(f), Ok(())) => Err(f),
        (Err(f), Err(i)) => Err(f.context(format!("{i:#}"))),
    };
    match (delivered, result) {
        (Ok(()), r) => r,
        (Err(d), Ok(())) => Err(d),
        (Err(d), Err(r)) => Err(d.context(format!("{r:#}"))),
    }
}

/// What users run: `dist`, the image read back with skopeo, umoci and
/// podman, and the deploy/ manifests validated.
fn deliverables(ws: &Workspace) -> Result<()> {
    let image = dist::run(ws)?;
    dist::verify::image(&image, &ws.target.join("dist-check"))?;
    deploy::validate(ws)
}

/// Builds lbpath, then runs one of the lab binaries of lbpath-tests with it.
pub fn lab(ws: &Workspace, lab_bin: &str, args: &[String]) -> Result<()> {
    let bin = build(ws)?;
    run::run(
        ws.cargo()?
            .args([
                "run",
                "--release",
                "-p",
                TESTS_PKG,
                "--bin",
                lab_bin,
                "--",
                "--lbpath",
            ])
            .arg(&bin)
            .args(args)
            .env("LBPATH_BIN", &bin),
    )
}

/// libtest's arguments: our thread count unless the caller gave one
/// (libtest rejects `--test-threads` twice), then the caller's.
fn libtest_args(jobs: u16, extra: &[String]) -> Vec<String> {
    let caller_sets_threads = extra.iter().any(|a| a.starts_with("--test-threads"));
    let ours = (!caller_sets_threads).then(|| format!("--test-threads={jobs}"));
    ours.into_iter().chain(extra.iter().cloned()).collect()
}

fn human_size(bytes: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn thread_count_goes_first_then_the_callers_args() {
        assert_eq!(libtest_args(2, &[]), ["--test-threads=2"]);
        assert_eq!(
            libtest_args(3, &strings(&["bgp", "--nocapture"])),
            ["--test-threads=3", "bgp", "--nocapture"]
        );
    }

    #[test]
    fn callers_thread_count_wins() {
        assert_eq!(
            libtest_args(2, &strings(&["--test-threads=1"])),
            ["--test-threads=1"]
        );
        assert_eq!(
            libtest_args(2, &strings(&["--test-threads", "4"])),
            ["--test-threads", "4"]
        );
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_size(900), "900 bytes");
        assert_eq!(human_size(5 * 1024 * 1024 + 512 * 1024), "5.5 MiB");
    }
}
