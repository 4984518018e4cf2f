//! `cargo xtask bootstrap`: everything a fresh machine needs before lbpath
//! builds and its tests run, each step skipped when already done.

use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{cargo_fuzz, deploy, dist, linker, packages, run, toolchain, workspace::Workspace};

/// What to do when host packages are missing and cannot be installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packages {
    /// Tests, the demo and the bench use them: fail.
    Require,
    /// Building does not: say so and go on.
    WarnIfMissing,
}

pub fn run(ws: &Workspace, policy: Packages) -> Result<()> {
    let start = Instant::now();
    let nightly = toolchain::ensure()?;
    let linker = linker::ensure(&ws.tools, &nightly)?;
    let fuzz = cargo_fuzz::ensure(&ws.tools)?;
    let pkgs = ensure_packages(policy)?;
    // Only dist and the deploy/ checks (in test) need these.
    let musl = optional(dist::ensure_musl_target(), policy)?;
    let validator = optional(deploy::ensure_validator(&ws.tools), policy)?;
    let elapsed = start.elapsed().as_secs_f64();
    let linker = match linker {
        linker::Outcome::UpToDate => "up to date",
        linker::Outcome::Built => "built",
    };
    let fuzz = match fuzz {
        cargo_fuzz::Outcome::UpToDate => "up to date",
        cargo_fuzz::Outcome::Installed => "installed",
    };
    eprintln!(
        "bootstrap: {} (LLVM {}) with rust-src ok, bpf-linker {} {linker}, cargo-fuzz {} {fuzz}, \
         packages {pkgs}, {} target {musl}, {} {validator} [{elapsed:.2}s]",
        nightly.name,
        nightly.llvm_major,
        linker::VERSION,
        cargo_fuzz::VERSION,
        dist::MUSL,
        deploy::REQUIREMENT,
    );
    Ok(())
}

/// A step only some tasks need: its failure stops the tasks that require
/// everything, and is a warning for the others.
fn optional(step: Result<&'static str>, policy: Packages) -> Result<&'static str> {
    match step {
        Ok(word) => Ok(word),
        Err(e) if policy == Packages::WarnIfMissing => {
            eprintln!("xtask: warning: {e:#}");
            Ok("missing")
        }
        Err(e) => Err(e),
    }
}

/// Returns a word for the summary line.
fn ensure_packages(policy: Packages) -> Result<&'static str> {
    let missing = packages::missing();
    if missing.is_empty() {
        return Ok("ok");
    }
    let has_apt = run::find_program("apt-get", &["/usr/bin", "/bin"]).is_some();
    match packages::install_blocker(run::is_root(), has_apt, &missing) {
        None => {
            packages::install(&missing).context("cannot install the host packages")?;
            Ok("installed")
        }
        Some(line) if policy == Packages::Require => bail!(line),
        Some(line) => {
            eprintln!("xtask: warning: {line}");
            Ok("missing")
        }
    }
}
