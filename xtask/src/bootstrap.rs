//! `cargo xtask bootstrap`: everything a fresh machine needs before lbpath
//! builds and its tests run, each step skipped when already done.

use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{linker, packages, run, toolchain, workspace::Workspace};

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
    let pkgs = ensure_packages(policy)?;
    let elapsed = start.elapsed().as_secs_f64();
    let linker = match linker {
        linker::Outcome::UpToDate => "up to date",
        linker::Outcome::Built => "built",
    };
    eprintln!(
        "bootstrap: {} (LLVM {}) with rust-src ok, bpf-linker {} {linker}, packages {pkgs} [{elapsed:.2}s]",
        nightly.name,
        nightly.llvm_major,
        linker::VERSION,
    );
    Ok(())
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
