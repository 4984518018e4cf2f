//! `cargo xtask lint`: clippy on the host crates, clippy on the eBPF crate
//! for the BPF target with the pinned nightly, and rustfmt's check.
//!
//! Every part runs even when an earlier one failed, with its output streamed
//! as it comes; a summary at the end says which parts failed and in which
//! files.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, IsTerminal, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{run, toolchain, workspace::Workspace};

/// The eBPF crate: no_std, built only for the BPF target (by tracer's build
/// script through aya-build), so the host lint leaves it out.
pub const EBPF_PKG: &str = "tracer-ebpf";

/// What a part found, for the summary.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Why it failed, with the files concerned when they could be told.
    Failed(String),
}

/// A part of the lint: runs its command and says how it went.
type Part = fn(&Workspace) -> Result<Outcome>;

pub fn run(ws: &Workspace) -> Result<()> {
    let ebpf_target = bpf_target(cfg!(target_endian = "little"));
    let parts: [(String, Part); 3] = [
        ("clippy, host crates".into(), host_clippy),
        (
            format!(
                "clippy, {EBPF_PKG} ({ebpf_target}, {})",
                toolchain::TOOLCHAIN
            ),
            ebpf_clippy,
        ),
        ("rustfmt --check, all crates".into(), fmt),
    ];
    let mut lines = Vec::new();
    let mut failed = Vec::new();
    for (name, part) in parts {
        eprintln!("lint: {name}");
        let outcome = part(ws).unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")));
        match &outcome {
            Outcome::Ok => lines.push(format!("lint: {name}: ok")),
            Outcome::Failed(why) => {
                lines.push(format!("lint: {name}: FAILED: {why}"));
                failed.push(name);
            }
        }
    }
    for line in &lines {
        eprintln!("{line}");
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join("; "));
    }
    Ok(())
}

/// `cargo clippy` on every crate but the eBPF one, all targets (tests,
/// benches, build scripts), warnings denied; `--keep-going` so that a crate
/// with findings does not hide those of the crates after it.
fn host_clippy(ws: &Workspace) -> Result<Outcome> {
    ensure_host_component(ws, "clippy", "clippy")?;
    let mut cmd = ws.cargo()?;
    cmd.args(host_clippy_args(color_arg()));
    clippy_outcome(&ws.root, &mut cmd)
}

fn host_clippy_args(color: Option<&'static str>) -> Vec<&'static str> {
    [
        "clippy",
        "--workspace",
        "--exclude",
        EBPF_PKG,
        "--all-targets",
        "--keep-going",
    ]
    .into_iter()
    .chain(color)
    .chain(DENY_WARNINGS)
    .collect()
}

const DENY_WARNINGS: [&str; 3] = ["--", "-D", "warnings"];

/// clippy on the eBPF crate as aya-build compiles it: the pinned nightly,
/// `--release` for the BPF target with `-Z build-std=core`, and its
/// rustflags; in a target directory of its own (the flags differ from the
/// host build's, which would otherwise be rebuilt each time).
fn ebpf_clippy(ws: &Workspace) -> Result<Outcome> {
    toolchain::ensure_clippy()?;
    // aya-build takes the architecture from the build script's target, the
    // host's when tracer is built for it.
    let mut cmd = ebpf_clippy_command(
        &ws.root,
        &ws.target.join("lint-ebpf"),
        bpf_target(cfg!(target_endian = "little")),
        std::env::consts::ARCH,
        color_arg(),
    );
    clippy_outcome(&ws.root, &mut cmd)
}

fn ebpf_clippy_command(
    root: &Path,
    target_dir: &Path,
    target: &str,
    arch: &str,
    color: Option<&str>,
) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root)
        .args(["run", toolchain::TOOLCHAIN, "cargo", "clippy"])
        .args([
            "--package",
            EBPF_PKG,
            "--bins",
            "--release",
            "--target",
            target,
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(target_dir)
        .args(color)
        .args(DENY_WARNINGS)
        .env("CARGO_ENCODED_RUSTFLAGS", ebpf_rustflags(arch))
        .env("RUSTUP_AUTO_INSTALL", "0")
        // As aya-build does: the toolchain's own rustc, not one a caller set.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    cmd
}

/// aya-build's target: `bpfel-unknown-none` on little-endian hosts.
fn bpf_target(little_endian: bool) -> &'static str {
    if little_endian {
        "bpfel-unknown-none"
    } else {
        "bpfeb-unknown-none"
    }
}

/// aya-build's rustflags (CARGO_ENCODED_RUSTFLAGS, separated by 0x1f): the
/// host's architecture as `bpf_target_arch`, which aya-ebpf reads, debug
/// info and BTF (the last only matters when linking, which clippy does not).
fn ebpf_rustflags(arch: &str) -> String {
    [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f")
}

/// rustfmt's check on every crate of the workspace (the eBPF one too:
/// formatting needs no target), with the edition each manifest gives.
fn fmt(ws: &Workspace) -> Result<Outcome> {
    ensure_host_component(ws, "fmt", "rustfmt")?;
    let mut cmd = ws.cargo()?;
    cmd.args(FMT_ARGS);
    let (status, stdout) = run_tee(&mut cmd, Tee::Stdout)?;
    if status.success() {
        return Ok(Outcome::Ok);
    }
    let files = fmt_diff_files(&stdout, &ws.root);
    Ok(Outcome::Failed(if files.is_empty() {
        format!("`{}` failed ({status})", run::display(&cmd))
    } else {
        format!("not formatted: {}", files.join(", "))
    }))
}

const FMT_ARGS: [&str; 5] = ["fmt", "--all", "--", "--check", "--color=never"];

/// Runs a clippy command; a failure names the files with findings.
fn clippy_outcome(root: &Path, cmd: &mut Command) -> Result<Outcome> {
    let (status, stderr) = run_tee(cmd, Tee::Stderr)?;
    if status.success() {
        return Ok(Outcome::Ok);
    }
    let files = diagnostic_files(&stderr, root);
    Ok(Outcome::Failed(if files.is_empty() {
        format!("`{}` failed ({status})", run::display(cmd))
    } else {
        let list: Vec<String> = files.iter().map(|(f, n)| format!("{f} ({n})")).collect();
        format!("findings in {}", list.join(", "))
    }))
}

/// Colour when a person watches (cargo turns it off for a pipe, and we read
/// its output through one).
fn color_arg() -> Option<&'static str> {
    std::io::stderr().is_terminal().then_some("--color=always")
}

/// The host toolchain's clippy or rustfmt, added with rustup when missing
/// (rustup's minimal profile has neither).
fn ensure_host_component(ws: &Workspace, subcommand: &str, component: &str) -> Result<()> {
    let mut probe = ws.cargo()?;
    probe.args([subcommand, "--version"]);
    if run::capture(&mut probe).is_ok() {
        return Ok(());
    }
    eprintln!("lint: adding {component} to the host toolchain");
    run::run(
        Command::new("rustup")
            .current_dir(&ws.root)
            .args(["component", "add", component]),
    )
    .with_context(|| format!("`cargo {subcommand}` is missing and rustup cannot add {component}"))
}

#[derive(Clone, Copy)]
enum Tee {
    Stdout,
    Stderr,
}

/// Runs `cmd`, passing the chosen stream through line by line as it comes
/// and keeping it; the other stream goes straight to ours.
fn run_tee(cmd: &mut Command, tee: Tee) -> Result<(std::process::ExitStatus, String)> {
    let shown = run::display(cmd);
    eprintln!("==> {shown}");
    match tee {
        Tee::Stdout => cmd.stdout(Stdio::piped()),
        Tee::Stderr => cmd.stderr(Stdio::piped()),
    };
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{shown}`"))?;
    let pipe: Box<dyn std::io::Read> = match tee {
        Tee::Stdout => Box::new(child.stdout.take().context("no stdout pipe")?),
        Tee::Stderr => Box::new(child.stderr.take().context("no stderr pipe")?),
    };
    let mut kept = String::new();
    for line in BufReader::new(pipe).split(b'\n') {
        let line = String::from_utf8_lossy(&line?).into_owned();
        match tee {
            Tee::Stdout => writeln!(std::io::stdout(), "{line}")?,
            Tee::Stderr => writeln!(std::io::stderr(), "{line}")?,
        }
        kept.push_str(&line);
        kept.push('\n');
    }
    let status = child
        .wait()
        .with_context(|| format!("cannot wait for `{shown}`"))?;
    Ok((status, kept))
}

/// Files rustc/clippy diagnostics point at (`--> file:line:col`), with how
/// many distinct places in each, relative to the workspace root.
fn diagnostic_files(output: &str, root: &Path) -> BTreeMap<String, usize> {
    let mut places = BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for line in output.lines() {
        let line = strip_ansi(line);
        let Some(place) = line.trim_start().strip_prefix("--> ") else {
            continue;
        };
        let place = place.trim();
        // file:line:col; the file itself may not contain ':' here.
        let file = place.split(':').next().unwrap_or(place);
        places
            .entry(relative(file, root))
            .or_default()
            .insert(place.to_string());
    }
    places.into_iter().map(|(f, p)| (f, p.len())).collect()
}

/// Files rustfmt's `--check` shows a diff for ("Diff in /abs/file.rs:12:"),
/// in order, each once, relative to the workspace root.
fn fmt_diff_files(output: &str, root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for line in output.lines() {
        let line = strip_ansi(line);
        let Some(rest) = line.strip_prefix("Diff in ") else {
            continue;
        };
        // "file:12:" (older rustfmt: "file at line 12:").
        let rest = rest.trim_end().trim_end_matches(':');
        let file = match rest.rsplit_once(" at line ") {
            Some((file, _line)) => file,
            None => rest
                .rsplit_once(':')
                .filter(|(_, n)| n.bytes().all(|b| b.is_ascii_digit()))
                .map_or(rest, |(file, _line)| file),
        };
        let file = relative(file, root);
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files
}

fn relative(file: &str, root: &Path) -> String {
    let path = PathBuf::from(file);
    path.strip_prefix(root)
        .unwrap_or(&path)
        .display()
        .to_string()
}

/// Removes the terminal colour sequences (`ESC [ … m`) cargo adds with
/// `--color=always`.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // Skip to the sequence's final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_clippy_covers_all_targets_but_the_ebpf_crate_and_denies_warnings() {
        assert_eq!(
            host_clippy_args(None).join(" "),
            "clippy --workspace --exclude tracer-ebpf --all-targets --keep-going -- -D warnings"
        );
        // The colour option goes to cargo, not to clippy-driver after `--`.
        assert_eq!(
            host_clippy_args(Some("--color=always")).join(" "),
            "clippy --workspace --exclude tracer-ebpf --all-targets --keep-going --color=always \
             -- -D warnings"
        );
    }

    #[test]
    fn ebpf_clippy_mirrors_aya_build() {
        let cmd = ebpf_clippy_command(
            Path::new("/ws"),
            Path::new("/ws/target/lint-ebpf"),
            "bpfel-unknown-none",
            "x86_64",
            Some("--color=always"),
        );
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(cmd.get_program(), "rustup");
        assert_eq!(
            args.join(" "),
            format!(
                "run {} cargo clippy --package tracer-ebpf --bins --release \
                 --target bpfel-unknown-none -Z build-std=core \
                 --target-dir /ws/target/lint-ebpf --color=always -- -D warnings",
                toolchain::TOOLCHAIN
            )
        );
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/ws")));
        let envs: BTreeMap<_, _> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_str().unwrap(), v.map(|v| v.to_str().unwrap())))
            .collect();
        assert_eq!(
            envs["CARGO_ENCODED_RUSTFLAGS"],
            Some("--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf")
        );
        assert_eq!(envs["RUSTC"], None);
        assert_eq!(envs["RUSTC_WORKSPACE_WRAPPER"], None);
    }

    #[test]
    fn bpf_target_follows_endianness() {
        assert_eq!(bpf_target(true), "bpfel-unknown-none");
        assert_eq!(bpf_target(false), "bpfeb-unknown-none");
        assert_eq!(
            ebpf_rustflags("aarch64").split('\x1f').next(),
            Some("--cfg=bpf_target_arch=\"aarch64\"")
        );
    }

    #[test]
    fn fmt_checks_every_crate() {
        assert_eq!(FMT_ARGS.join(" "), "fmt --all -- --check --color=never");
    }

    #[test]
    fn clippy_findings_are_counted_per_file_and_place() {
        let out = "\
error: this function has too many arguments (8/7)
  --> tracer/src/cli.rs:10:1
   |
error: unused import: `x`
 \x1b[0m\x1b[1m\x1b[38;5;12m--> \x1b[0m\x1b[0mtracer/src/cli.rs:3:5\x1b[0m
error: unused import: `x`
  --> tracer/src/cli.rs:3:5
error: manual implementation of `Option::map`
   --> /ws/tests/src/lab.rs:120:9
    ::: tracer/src/other.rs:1:1
error: could not compile `tracer` (lib) due to 3 previous errors
";
        let files = diagnostic_files(out, Path::new("/ws"));
        assert_eq!(
            files.into_iter().collect::<Vec<_>>(),
            [
                ("tests/src/lab.rs".into(), 1),
                ("tracer/src/cli.rs".into(), 2)
            ]
        );
        assert!(diagnostic_files("    Checking tracer\n", Path::new("/ws")).is_empty());
    }

    #[test]
    fn fmt_diffs_name_each_file_once() {
        let out = "\
Diff in /ws/tracer/src/cli.rs:12:
-    let x=1;
+    let x = 1;
Diff in /ws/tracer/src/cli.rs:40:
Diff in /ws/xtask/src/lint.rs at line 7:
Diff in /elsewhere/a.rs:1:
";
        assert_eq!(
            fmt_diff_files(out, Path::new("/ws")),
            ["tracer/src/cli.rs", "xtask/src/lint.rs", "/elsewhere/a.rs"]
        );
    }

    #[test]
    fn ansi_sequences_are_removed() {
        assert_eq!(strip_ansi("\x1b[1m\x1b[38;5;9merror\x1b[0m: x"), "error: x");
        assert_eq!(strip_ansi("plain"), "plain");
    }
}
