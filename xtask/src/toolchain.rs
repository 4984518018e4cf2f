//! The pinned nightly toolchain the eBPF build uses (aya-build runs
//! `rustup run <toolchain> cargo build -Z build-std=core`), with rust-src,
//! which build-std compiles `core` from.
//!
//! The toolchain is a dated nightly, named in one place: the one-line file
//! `rust-toolchain-ebpf` at the workspace root. xtask and tracer/build.rs
//! both compile it in with `include_str!`, so neither can drift from the
//! other, and changing it rebuilds the build script (and so the eBPF object).
//! It is not a `rust-toolchain.toml`, which rustup would apply to the whole
//! workspace: the host crates build with the stable toolchain.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::run;

/// The file naming the toolchain, relative to the workspace root.
pub const TOOLCHAIN_FILE: &str = "rust-toolchain-ebpf";

/// The toolchain the eBPF programs are built and linted with, e.g.
/// `nightly-2026-05-20` (rustup's name for the nightly built that day from
/// the previous day's commit).
pub const TOOLCHAIN: &str = include_str!("../../rust-toolchain-ebpf").trim_ascii();

/// What the rest of bootstrap needs to know about the pinned toolchain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nightly {
    /// rustup's name for it ([`TOOLCHAIN`]).
    pub name: &'static str,
    /// `rustc -vV` verbatim: bpf-linker must be rebuilt whenever it changes.
    pub version: String,
    /// LLVM's major version, which selects bpf-linker's `llvm-NN` feature.
    pub llvm_major: u32,
    pub sysroot: PathBuf,
}

/// Makes sure the pinned toolchain and its rust-src are installed; installs
/// what is not.
pub fn ensure() -> Result<Nightly> {
    let pin_date = pin_date(TOOLCHAIN)?;
    if run::find_program("rustup", &[]).is_none() {
        bail!(
            "rustup is not on PATH: install Rust with rustup (https://rustup.rs); \
             lbpath's eBPF build needs the {TOOLCHAIN} toolchain"
        );
    }
    let version = match rustc(&["-vV"]) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("bootstrap: installing the {TOOLCHAIN} toolchain");
            run::run(Command::new("rustup").args(install_args()))
                .with_context(|| format!("cannot install the {TOOLCHAIN} toolchain"))?;
            rustc(&["-vV"])?
        }
    };
    check_build(&version, pin_date)?;
    let llvm_major = llvm_major(&version)?;
    let sysroot = PathBuf::from(rustc(&["--print", "sysroot"])?.trim());
    if !has_rust_src(&sysroot) {
        add_component("bootstrap", "rust-src")?;
    }
    Ok(Nightly {
        name: TOOLCHAIN,
        version,
        llvm_major,
        sysroot,
    })
}

/// Adds the pinned toolchain's clippy unless it is there (bootstrap installs
/// the minimal profile, which has none; only `cargo xtask lint` needs it).
pub fn ensure_clippy() -> Result<()> {
    let has = run::capture(
        Command::new("rustup")
            .args(["run", TOOLCHAIN, "cargo-clippy", "--version"])
            .env("RUSTUP_AUTO_INSTALL", "0"),
    )
    .is_ok();
    if has {
        Ok(())
    } else {
        add_component("lint", "clippy")
    }
}

fn add_component(task: &str, component: &str) -> Result<()> {
    eprintln!("{task}: adding {component} to the {TOOLCHAIN} toolchain");
    run::run(Command::new("rustup").args(["component", "add", component, "--toolchain", TOOLCHAIN]))
        .with_context(|| format!("cannot add {component} to the {TOOLCHAIN} toolchain"))
}

/// `rustup toolchain install …`: the minimal profile and rust-src, nothing
/// else (not whatever rustup's default profile is).
fn install_args() -> [&'static str; 7] {
    [
        "toolchain",
        "install",
        TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]
}

/// Runs the pinned toolchain's rustc. Automatic installs are off so that a
/// missing toolchain shows up as an error here, and is installed with the
/// minimal profile rather than whatever rustup's default profile is.
fn rustc(args: &[&str]) -> Result<String> {
    run::capture(
        Command::new("rustup")
            .args(["run", TOOLCHAIN, "rustc"])
            .args(args)
            .env("RUSTUP_AUTO_INSTALL", "0"),
    )
}

/// The date of a pin, which must be a dated nightly: `nightly-YYYY-MM-DD`.
/// (`nightly` alone would follow the day; beta and stable refuse `-Z build-std`.)
pub fn pin_date(name: &str) -> Result<&str> {
    let bad = || {
        format!(
            "{TOOLCHAIN_FILE} names {name:?}: it must hold one dated nightly, \
             nightly-YYYY-MM-DD (rustup's name for a nightly build)"
        )
    };
    let date = name.strip_prefix("nightly-").with_context(bad)?;
    let fields: Vec<&str> = date.split('-').collect();
    let [y, m, d] = fields.as_slice() else {
        bail!(bad());
    };
    let number = |s: &str, len: usize, range: std::ops::RangeInclusive<u32>| {
        s.len() == len
            && s.bytes().all(|b| b.is_ascii_digit())
            && s.parse().is_ok_and(|n| range.contains(&n))
    };
    ensure!(
        number(y, 4, 2015..=9999) && number(m, 2, 1..=12) && number(d, 2, 1..=31),
        bad()
    );
    Ok(date)
}

/// Checks that `rustc -vV` comes from a nightly build no newer than the pin:
/// a nightly named after day D is built from a commit of D or before, so a
/// later commit date means the name resolved to something else (e.g. a
/// toolchain linked under that name).
fn check_build(version: &str, pin_date: &str) -> Result<()> {
    let field = |key: &str| {
        version
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let release = field("release:").unwrap_or("");
    ensure!(
        release.ends_with("-nightly"),
        "{TOOLCHAIN} is not a nightly build (release {release:?}); \
         the eBPF build needs nightly for -Z build-std"
    );
    let commit_date = field("commit-date:")
        .with_context(|| format!("no commit date in {TOOLCHAIN}'s `rustc -vV`:\n{version}"))?;
    ensure!(
        commit_date <= pin_date,
        "{TOOLCHAIN}'s rustc was built from a commit of {commit_date}, after the pin's date: \
         it is not the nightly of {pin_date}"
    );
    Ok(())
}

/// The major of "LLVM version: 22.1.4" in `rustc -vV`.
pub fn llvm_major(version: &str) -> Result<u32> {
    let llvm = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .with_context(|| format!("no LLVM version in {TOOLCHAIN}'s `rustc -vV`:\n{version}"))?;
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
    fn pins_must_be_dated_nightlies() {
        assert_eq!(pin_date("nightly-2026-05-20").unwrap(), "2026-05-20");
        for bad in [
            "nightly",
            "stable",
            "beta-2026-05-20",
            "1.97.0",
            "nightly-2026-5-20",
            "nightly-2026-13-01",
            "nightly-2026-05-00",
            "nightly-2026-05-20-x86_64-unknown-linux-gnu",
            "nightly-+026-05-20",
            "nightly-2026-05-20 ",
            "",
        ] {
            let err = pin_date(bad).unwrap_err().to_string();
            assert!(err.contains("nightly-YYYY-MM-DD"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn build_must_be_a_nightly_from_no_later_than_the_pin() {
        // The nightly of 2026-05-20 is built from a commit of 2026-05-19.
        check_build(VV, "2026-05-20").unwrap();
        check_build(VV, "2026-05-19").unwrap();
        let err = check_build(VV, "2026-05-18").unwrap_err().to_string();
        assert!(err.contains("commit of 2026-05-19"), "{err}");
        let stable = VV.replace("release: 1.97.0-nightly", "release: 1.95.0");
        assert!(check_build(&stable, "2026-05-20").is_err());
        let undated = VV.replace("commit-date: 2026-05-19\n", "");
        assert!(check_build(&undated, "2026-05-20").is_err());
    }

    #[test]
    fn install_is_minimal_with_rust_src_for_the_pin() {
        assert_eq!(
            install_args().join(" "),
            format!("toolchain install {TOOLCHAIN} --profile minimal --component rust-src")
        );
    }

    /// xtask and tracer/build.rs must build with the same toolchain: both
    /// take it from the pin file, build.rs through `include_str!` too.
    #[test]
    fn the_pin_file_names_one_dated_nightly_that_build_rs_uses_too() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let pin = root.join(TOOLCHAIN_FILE);
        let text = std::fs::read_to_string(&pin).unwrap();
        assert_eq!(text, format!("{TOOLCHAIN}\n"), "one line, the name");
        pin_date(TOOLCHAIN).unwrap();

        let build_rs = std::fs::read_to_string(root.join("tracer/build.rs")).unwrap();
        let included = build_rs_pin(&build_rs).expect("build.rs includes the pin file");
        assert_eq!(
            root.join("tracer").join(included).canonicalize().unwrap(),
            pin.canonicalize().unwrap(),
            "tracer/build.rs includes another file"
        );
        assert!(
            build_rs.contains("aya_build::Toolchain::Custom(EBPF_TOOLCHAIN)"),
            "tracer/build.rs does not build with the pinned toolchain"
        );
        assert!(!build_rs.contains("Toolchain::Nightly"));
    }

    /// The path in build.rs's `const EBPF_TOOLCHAIN: &str = include_str!("…")`.
    fn build_rs_pin(build_rs: &str) -> Option<&str> {
        let rest = build_rs
            .split_once("const EBPF_TOOLCHAIN: &str = include_str!(\"")?
            .1;
        Some(rest.split_once('"')?.0)
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
