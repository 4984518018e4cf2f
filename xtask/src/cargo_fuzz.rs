//! cargo-fuzz, which builds the fuzz targets of tracer/fuzz with libFuzzer's
//! instrumentation and sanitizer flags. Installed from crates.io at a pinned
//! version into the tools directory (`bin/cargo-fuzz`, beside bpf-linker),
//! built with the host toolchain; it drives the pinned nightly's cargo when
//! it runs (see `fuzz.rs`).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};

use crate::{run, workspace};

pub const VERSION: &str = "0.13.2";

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    UpToDate,
    Installed,
}

/// `bin/cargo-fuzz` in the tools directory.
pub fn binary(tools: &Path) -> PathBuf {
    tools.join("bin/cargo-fuzz")
}

/// Installs cargo-fuzz unless the tools directory has this version; costs
/// one `cargo-fuzz --version` when it does.
pub fn ensure(tools: &Path) -> Result<Outcome> {
    let bin = binary(tools);
    if runs(&bin) {
        return Ok(Outcome::UpToDate);
    }
    eprintln!(
        "bootstrap: installing cargo-fuzz {VERSION} into {} (about a minute)",
        tools.display()
    );
    run::run(&mut install_command(tools)).context("cannot install cargo-fuzz")?;
    ensure!(
        runs(&bin),
        "{} was installed but `cargo-fuzz --version` does not print {VERSION}",
        bin.display()
    );
    Ok(Outcome::Installed)
}

/// Whether `bin` runs and is the pinned version ("cargo-fuzz 0.13.2").
fn runs(bin: &Path) -> bool {
    Command::new(bin).arg("--version").output().is_ok_and(|o| {
        o.status.success() && is_version(&String::from_utf8_lossy(&o.stdout), VERSION)
    })
}

fn is_version(output: &str, version: &str) -> bool {
    output.split_whitespace().nth(1) == Some(version)
}

fn install_command(tools: &Path) -> Command {
    let mut cmd = Command::new(workspace::cargo_program());
    cmd.args(["install", "cargo-fuzz", "--version"])
        .arg(format!("={VERSION}"))
        .arg("--locked")
        // Replaces another version; this one is never there when we get here.
        .arg("--force")
        .arg("--root")
        .arg(tools)
        // Let cargo build in a throwaway directory, not in the workspace's.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    cmd
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt};

    use super::*;
    use crate::scratch::TempDir;

    fn fake(bin: &Path, body: &str) {
        fs::create_dir_all(bin.parent().unwrap()).unwrap();
        fs::write(bin, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(bin, fs::Permissions::from_mode(0o755)).unwrap();
        // A child forked by another test thread while the file was open for
        // writing holds it until its exec; wait that out.
        while let Err(e) = Command::new(bin).output() {
            if e.kind() != std::io::ErrorKind::ExecutableFileBusy {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn present_only_when_it_runs_and_is_the_pinned_version() {
        let tmp = TempDir::new("cargo-fuzz");
        let bin = binary(tmp.path());
        assert!(!runs(&bin));
        fake(&bin, &format!("echo cargo-fuzz {VERSION}"));
        assert!(runs(&bin));
        fake(&bin, "echo cargo-fuzz 0.12.0");
        assert!(!runs(&bin));
        fake(&bin, &format!("echo cargo-fuzz {VERSION}; exit 1"));
        assert!(!runs(&bin));
    }

    #[test]
    fn version_is_the_second_word() {
        assert!(is_version("cargo-fuzz 0.13.2\n", "0.13.2"));
        assert!(!is_version("cargo-fuzz 0.13.20\n", "0.13.2"));
        assert!(!is_version("", "0.13.2"));
    }

    #[test]
    fn install_command_pins_the_version_into_the_tools_dir() {
        let shown = run::display(&install_command(Path::new("/t/tools")));
        assert!(
            shown
                .ends_with("install cargo-fuzz --version =0.13.2 --locked --force --root /t/tools"),
            "{shown}"
        );
    }
}
