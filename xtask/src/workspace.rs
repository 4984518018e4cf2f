//! Where things are: the workspace, cargo's target directory, the tools
//! directory, and the `cargo` every task runs.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

/// Overrides the tools directory, e.g. to try a fresh bootstrap without
/// touching the one the workspace builds with.
pub const TOOLS_DIR_ENV: &str = "LBPATH_TOOLS_DIR";

#[derive(Debug, Clone)]
pub struct Workspace {
    /// The workspace root (where the top Cargo.toml is).
    pub root: PathBuf,
    /// cargo's target directory, absolute.
    pub target: PathBuf,
    /// Where bootstrap installs bpf-linker (`bin/`) and its LLVM links (`llvm/lib/`).
    pub tools: PathBuf,
}

impl Workspace {
    pub fn discover() -> Result<Self> {
        // xtask is always built from this workspace, so its manifest's parent
        // is the root wherever `cargo xtask` is called from.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask's manifest has no parent directory")?
            .to_path_buf();
        let cwd = env::current_dir().context("cannot read the current directory")?;
        // cargo resolves a relative target dir against the directory it was
        // started in, which is also ours (`cargo run` keeps it).
        let target = resolve_dir(
            env::var_os("CARGO_TARGET_DIR").or_else(|| env::var_os("CARGO_BUILD_TARGET_DIR")),
            &cwd,
            root.join("target"),
        );
        // tracer/build.rs looks in <root>/target/lbpath-tools/bin whatever the
        // target dir is, so the default does not follow CARGO_TARGET_DIR.
        let tools = resolve_dir(
            env::var_os(TOOLS_DIR_ENV),
            &cwd,
            root.join("target/lbpath-tools"),
        );
        Ok(Self {
            root,
            target,
            tools,
        })
    }

    pub fn tools_bin(&self) -> PathBuf {
        self.tools.join("bin")
    }

    /// The release binary `cargo build --release -p tracer` produces.
    pub fn lbpath_bin(&self) -> PathBuf {
        self.target.join("release/lbpath")
    }

    /// `cargo` in the workspace root, with the tools on PATH so the eBPF
    /// build (tracer's build script, via aya-build) finds bpf-linker.
    pub fn cargo(&self) -> Result<Command> {
        let mut cmd = Command::new(cargo_program());
        cmd.current_dir(&self.root).env(
            "PATH",
            prepend_path(&self.tools_bin(), env::var_os("PATH"))?,
        );
        Ok(cmd)
    }
}

/// The cargo that runs us (cargo sets $CARGO for `cargo run`), so children
/// use the same toolchain; plain `cargo` when started some other way.
pub fn cargo_program() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn resolve_dir(value: Option<OsString>, cwd: &Path, default: PathBuf) -> PathBuf {
    match value {
        Some(v) if !v.is_empty() => cwd.join(v),
        _ => default,
    }
}

fn prepend_path(dir: &Path, path: Option<OsString>) -> Result<OsString> {
    let rest = path.unwrap_or_default();
    // An empty PATH splits into one empty entry, which would mean ".".
    let rest = (!rest.is_empty()).then_some(rest);
    let dirs = std::iter::once(dir.to_path_buf()).chain(
        rest.iter()
            .flat_map(|r| env::split_paths(r).collect::<Vec<_>>()),
    );
    env::join_paths(dirs).with_context(|| format!("cannot put {} on PATH", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_dirs_resolve_against_cwd_and_absolute_ones_stay() {
        let cwd = Path::new("/home/u/lbpath");
        let def = PathBuf::from("/default");
        assert_eq!(resolve_dir(None, cwd, def.clone()), def);
        assert_eq!(resolve_dir(Some("".into()), cwd, def.clone()), def);
        assert_eq!(
            resolve_dir(Some("t".into()), cwd, def.clone()),
            Path::new("/home/u/lbpath/t")
        );
        assert_eq!(
            resolve_dir(Some("/tmp/t".into()), cwd, def),
            Path::new("/tmp/t")
        );
    }

    #[test]
    fn tools_bin_goes_first_on_path() {
        let p = prepend_path(Path::new("/tools/bin"), Some("/usr/bin:/bin".into())).unwrap();
        assert_eq!(p, "/tools/bin:/usr/bin:/bin");
        let p = prepend_path(Path::new("/tools/bin"), None).unwrap();
        assert_eq!(p, "/tools/bin");
    }

    #[test]
    fn discovered_root_is_this_workspace() {
        let ws = Workspace::discover().unwrap();
        assert!(ws.root.join("xtask/Cargo.toml").is_file());
        assert!(ws.lbpath_bin().ends_with("release/lbpath"));
        assert!(ws.tools_bin().ends_with("bin"));
    }
}
