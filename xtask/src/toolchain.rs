//! The nightly toolchain the eBPF build uses (aya-build runs
//! `rustup run nightly cargo build -Z build-std=core`), with rust-src, which
//! build-std compiles `core` from.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::run;

pub const TOOLCHAIN: &str = "nightly";

/// What the rest of bootstrap needs to know about the nightly toolchain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nightly {
    /// `rustc -vV` verbatim: bpf-linker must be rebuilt whenever it changes.
    pub version: String,
    /// LLVM's major version, which selects bpf-linker's `llvm-NN` feature.
    pub llvm_major: u32,
    pub sysroot: PathBuf,
}

/// Makes sure nightly and its rust-src are installed; installs what is not.
pub fn ensure() -> Result<Nightly> {
    if run::find_program("rustup", &[]).is_none() {
        bail!(
            "rustup is not on PATH: install Rust with rustup (https://rustup.rs); \
             lbpath's eBPF build needs its nightly toolchain"
        );
    }
    let version = match rustc(&["-vV"]) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("bootstrap: installing the {TOOLCHAIN} toolchain");
            run::run(Command::new("rustup").args([
                "toolchain",
                "install",
                TOOLCHAIN,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))
            .context("cannot install the nightly toolchain")?;
            rustc(&["-vV"])?
        }
    };
    let llvm_major = llvm_major(&version)?;
    let sysroot = PathBuf::from(rustc(&["--print", "sysroot"])?.trim());
    if !has_rust_src(&sysroot) {
        eprintln!("bootstrap: adding rust-src to the {TOOLCHAIN} toolchain");
        run::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            TOOLCHAIN,
        ]))
        .context("cannot add rust-src to the nightly toolchain")?;
    }
    Ok(Nightly {
        version,
        llvm_major,
        sysroot,
    })
}

/// Runs nightly's rustc. Automatic installs are off so that a missing
/// toolchain shows up as an error here, and is installed with the minimal
/// profile rather than whatever rustup's default profile is.
fn rustc(args: &[&str]) -> Result<String> {
    run::capture(
        Command::new("rustup")
            .args(["run", TOOLCHAIN, "rustc"])
            .args(args)
            .env("RUSTUP_AUTO_INSTALL", "0"),
    )
}

/// The major of "LLVM version: 22.1.4" in `rustc -vV`.
pub fn llvm_major(version: &str) -> Result<u32> {
    let llvm = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .with_context(|| format!("no LLVM version in nightly's `rustc -vV`:\n{version}"))?;
    let major = llvm.trim().split('.').next().unwrap_or("");
    major
        .parse()
        .with_context(|| format!("cannot read LLVM's major version from {:?}", llvm.trim()))
}

/// build-std needs the library sources rust-src puts here.
fn has_rust_src(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VV: &str = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\n\
        commit-hash: e50aa6fba4e63ab34c72bf9acfd2c307c1155d1a\ncommit-date: 2026-05-19\n\
        host: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";

    #[test]
    fn llvm_major_comes_from_rustc_vv() {
        assert_eq!(llvm_major(VV).unwrap(), 22);
        assert_eq!(llvm_major("LLVM version: 19.1.0-rust-dev\n").unwrap(), 19);
        assert!(llvm_major("rustc 1.0\n").is_err());
        assert!(llvm_major("LLVM version: x.1\n").is_err());
    }

    #[test]
    fn rust_src_is_detected_by_cores_manifest() {
        let dir = crate::scratch::TempDir::new("src");
        assert!(!has_rust_src(dir.path()));
        let core = dir.path().join("lib/rustlib/src/rust/library/core");
        std::fs::create_dir_all(&core).unwrap();
        std::fs::write(core.join("Cargo.toml"), "").unwrap();
        assert!(has_rust_src(dir.path()));
    }
}
