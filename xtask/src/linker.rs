//! bpf-linker, which links the eBPF program, built against the pinned
//! nightly toolchain's own LLVM so that the bitcode rustc emits and the LLVM
//! that links it are the same version.
//!
//! Layout of the tools directory:
//! - `bin/bpf-linker`, and `bin/bpf-linker.stamp` beside it: what it was
//!   built against (the toolchain's name, its `rustc -vV` and its libLLVM). A
//!   different stamp means the toolchain changed and the linker is rebuilt.
//! - `llvm/lib/`: the LLVM_PREFIX of the build, symlinks to nightly's libLLVM.
//!   bpf-linker's RUNPATH points here, so it must outlive the build.

use std::{
    fs, io,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{run, toolchain::Nightly, workspace};

pub const VERSION: &str = "0.13.0";

pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn linker(&self) -> PathBuf {
        self.dir.join("bin/bpf-linker")
    }

    fn stamp(&self) -> PathBuf {
        self.dir.join("bin/bpf-linker.stamp")
    }

    fn llvm_prefix(&self) -> PathBuf {
        self.dir.join("llvm")
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    UpToDate,
    Built,
}

/// Builds bpf-linker unless the one in `tools` was built for this toolchain.
pub fn ensure(tools: &Path, nightly: &Nightly) -> Result<Outcome> {
    let layout = Layout::new(tools);
    let llvm = find_llvm_dylib(&nightly.sysroot.join("lib"), nightly.llvm_major)?;
    let stamp = stamp_text(nightly, &llvm);
    if is_current(&layout, &stamp) {
        return Ok(Outcome::UpToDate);
    }
    eprintln!(
        "bootstrap: building bpf-linker {VERSION} against {}'s LLVM {} into {} (about a minute)",
        nightly.name,
        nightly.llvm_major,
        layout.dir.display()
    );
    build(&layout, nightly.llvm_major, &llvm, &stamp)?;
    Ok(Outcome::Built)
}

/// The toolchain ships LLVM as one shared library named after its soname,
/// e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`; the exact name changes with
/// every toolchain. (`libLLVM-22-rust-*.so` beside it is a linker script.)
pub fn find_llvm_dylib(lib_dir: &Path, major: u32) -> Result<PathBuf> {
    let prefix = format!("libLLVM.so.{major}.");
    let entries = fs::read_dir(lib_dir)
        .with_context(|| format!("cannot list nightly's {}", lib_dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.contains("-rust-") && path.is_file() {
            found.push(path);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no {prefix}*-rust-* library in {}: this nightly ships no LLVM that bpf-linker can link to",
            lib_dir.display()
        ),
        many => bail!(
            "several LLVM {major} libraries in {}: {many:?}",
            lib_dir.display()
        ),
    }
}

fn stamp_text(nightly: &Nightly, llvm: &Path) -> String {
    format!(
        "bpf-linker {VERSION} --features llvm-{}\ntoolchain: {}\nlibLLVM: {}\n{}",
        nightly.llvm_major,
        nightly.name,
        llvm.display(),
        nightly.version
    )
}

/// Current when the stamp matches and the linker runs: the second check
/// catches a tools directory that was moved (its RUNPATH is absolute) or a
/// libLLVM that vanished under the same name.
fn is_current(layout: &Layout, stamp: &str) -> bool {
    fs::read_to_string(layout.stamp()).is_ok_and(|s| s == stamp) && linker_runs(&layout.linker())
}

fn linker_runs(linker: &Path) -> bool {
    Command::new(linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(VERSION))
}

fn build(layout: &Layout, llvm_major: u32, llvm: &Path, stamp: &str) -> Result<()> {
    // Without the stamp, an interrupted build cannot pass for a current one.
    remove_if_present(&layout.stamp())?;
    link_llvm(&layout.llvm_prefix().join("lib"), llvm)?;
    run::run(&mut install_command(layout, llvm_major)).context("cannot build bpf-linker")?;
    ensure!(
        linker_runs(&layout.linker()),
        "{} was built but `bpf-linker --version` does not run",
        layout.linker().display()
    );
    let tmp = layout.stamp().with_extension("stamp.tmp");
    fs::write(&tmp, stamp).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, layout.stamp())
        .with_context(|| format!("cannot write {}", layout.stamp().display()))
}

/// llvm-sys looks for `lib/libLLVM.so` under LLVM_PREFIX and the built binary
/// asks for the soname, so both names point at nightly's library.
fn link_llvm(lib_dir: &Path, llvm: &Path) -> Result<()> {
    fs::create_dir_all(lib_dir).with_context(|| format!("cannot create {}", lib_dir.display()))?;
    // Links to an older toolchain's library would otherwise pile up here.
    for entry in fs::read_dir(lib_dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM"))
        {
            remove_if_present(&path)?;
        }
    }
    let soname = llvm.file_name().context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = lib_dir.join(name);
        symlink(llvm, &link).with_context(|| format!("cannot link {}", link.display()))?;
    }
    Ok(())
}

fn install_command(layout: &Layout, llvm_major: u32) -> Command {
    let mut cmd = Command::new(workspace::cargo_program());
    cmd.args(["install", "bpf-linker", "--version"])
        .arg(format!("={VERSION}"))
        .args(["--locked", "--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"))
        // cargo install skips a version that is already installed; we only get
        // here when it was built for another toolchain.
        .arg("--force")
        .arg("--root")
        .arg(&layout.dir)
        .env("LLVM_PREFIX", layout.llvm_prefix())
        // Let cargo build in a throwaway directory, not in the workspace's.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    cmd
}

fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::scratch::TempDir;

    /// A sysroot `lib/` as rustup lays it out.
    fn fake_sysroot_lib(dir: &Path) -> PathBuf {
        let lib = dir.join("sysroot/lib");
        fs::create_dir_all(lib.join("rustlib")).unwrap();
        fs::write(lib.join("libLLVM.so.22.1-rust-1.97.0-nightly"), "ELF").unwrap();
        fs::write(
            lib.join("libLLVM-22-rust-1.97.0-nightly.so"),
            "INPUT(libLLVM.so.22.1-rust-1.97.0-nightly)\n",
        )
        .unwrap();
        fs::write(lib.join("librustc_driver-b5a965480ee51f9a.so"), "ELF").unwrap();
        lib
    }

    fn nightly(sysroot: &Path, version: &str) -> Nightly {
        Nightly {
            name: "nightly-2026-05-20",
            version: version.into(),
            llvm_major: 22,
            sysroot: sysroot.into(),
        }
    }

    /// A stand-in bpf-linker that answers `--version` like the real one.
    fn fake_linker(layout: &Layout, version: &str) {
        write_script(&layout.linker(), &format!("echo bpf-linker {version}"));
    }

    fn write_script(path: &Path, body: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
        // A child that another test thread forked while the file was open for
        // writing holds it until its exec, and running it fails meanwhile.
        while let Err(e) = Command::new(path).output() {
            if e.kind() != io::ErrorKind::ExecutableFileBusy {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn finds_the_llvm_library_by_major_not_the_linker_script() {
        let tmp = TempDir::new("llvm");
        let lib = fake_sysroot_lib(tmp.path());
        let found = find_llvm_dylib(&lib, 22).unwrap();
        assert_eq!(found, lib.join("libLLVM.so.22.1-rust-1.97.0-nightly"));
        let err = find_llvm_dylib(&lib, 21).unwrap_err().to_string();
        assert!(err.contains("no libLLVM.so.21.*-rust-*"), "{err}");
        fs::write(lib.join("libLLVM.so.22.2-rust-1.98.0-nightly"), "ELF").unwrap();
        assert!(
            find_llvm_dylib(&lib, 22)
                .unwrap_err()
                .to_string()
                .contains("several")
        );
        assert!(find_llvm_dylib(&tmp.path().join("missing"), 22).is_err());
    }

    #[test]
    fn llvm_links_name_the_library_and_its_soname_and_replace_old_ones() {
        let tmp = TempDir::new("links");
        let lib = fake_sysroot_lib(tmp.path());
        let llvm = lib.join("libLLVM.so.22.1-rust-1.97.0-nightly");
        let prefix_lib = tmp.path().join("tools/llvm/lib");
        fs::create_dir_all(&prefix_lib).unwrap();
        symlink(
            "/gone/libLLVM.so.21.1-rust-1.90.0-nightly",
            prefix_lib.join("libLLVM.so.21.1-rust-1.90.0-nightly"),
        )
        .unwrap();
        symlink("/gone/x", prefix_lib.join("libLLVM.so")).unwrap();

        link_llvm(&prefix_lib, &llvm).unwrap();
        link_llvm(&prefix_lib, &llvm).unwrap(); // again, over its own links

        let mut names: Vec<_> = fs::read_dir(&prefix_lib)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["libLLVM.so", "libLLVM.so.22.1-rust-1.97.0-nightly"]);
        for name in names {
            assert_eq!(fs::read_link(prefix_lib.join(name)).unwrap(), llvm);
        }
    }

    #[test]
    fn current_only_with_matching_stamp_and_a_linker_that_runs() {
        let tmp = TempDir::new("stamp");
        let lib = fake_sysroot_lib(tmp.path());
        let llvm = lib.join("libLLVM.so.22.1-rust-1.97.0-nightly");
        let layout = Layout::new(&tmp.path().join("tools"));
        let n = nightly(
            &tmp.path().join("sysroot"),
            "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\n",
        );
        let stamp = stamp_text(&n, &llvm);
        assert!(
            stamp.contains("llvm-22")
                && stamp.contains("e50aa6fba")
                && stamp.contains(VERSION)
                && stamp.contains("toolchain: nightly-2026-05-20\n")
        );

        // Nothing there yet.
        assert!(!is_current(&layout, &stamp));
        // A linker without a stamp (built by hand) is rebuilt.
        fake_linker(&layout, VERSION);
        assert!(!is_current(&layout, &stamp));
        fs::write(layout.stamp(), &stamp).unwrap();
        assert!(is_current(&layout, &stamp));
        // A new nightly changes the stamp.
        let newer = nightly(
            &tmp.path().join("sysroot"),
            "rustc 1.97.0-nightly (0123456789 2026-05-20)\n",
        );
        assert!(!is_current(&layout, &stamp_text(&newer, &llvm)));
        // So does another pin, even one that resolves to the same build
        // (`nightly` today and `nightly-2026-05-20`).
        let renamed = Nightly {
            name: "nightly",
            ..n.clone()
        };
        assert!(!is_current(&layout, &stamp_text(&renamed, &llvm)));
        assert!(is_current(&layout, &stamp));
        // A linker that no longer runs, or is another version, is not current.
        fake_linker(&layout, "0.9.0");
        assert!(!is_current(&layout, &stamp));
        write_script(&layout.linker(), "exit 127");
        assert!(!is_current(&layout, &stamp));
    }

    #[test]
    fn install_command_pins_the_version_and_the_llvm_feature() {
        let layout = Layout::new(Path::new("/t/tools"));
        let shown = run::display(&install_command(&layout, 22));
        assert!(
            shown.ends_with(
                "install bpf-linker --version =0.13.0 --locked --no-default-features \
                 --features llvm-22 --force --root /t/tools"
            ),
            "{shown}"
        );
        assert!(shown.starts_with("LLVM_PREFIX=/t/tools/llvm "), "{shown}");
    }
}
