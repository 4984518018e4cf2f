//! Running programs: streamed commands that fail with the command's name,
//! captured queries, PATH look-ups, and the root check.

use std::{
    env, fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

/// Runs `cmd` with our stdin/stdout/stderr, so long builds and test runs
/// stream as they go; a failure names the command and its exit status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    eprintln!("==> {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    ensure!(status.success(), "`{shown}` failed ({status})");
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; a failure carries its stderr.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // rustup's errors come with a backtrace when RUST_BACKTRACE is set:
        // its first line is the message.
        let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        bail!("`{shown}` failed ({}): {}", out.status, first.trim());
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{shown}` printed non-UTF-8"))
}

/// The command as a shell line, with the variables we set (but PATH, which
/// is long and only adds the tools directory).
pub fn display(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(k, v)| {
        let v = v?;
        (k != "PATH").then(|| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
    });
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| w.to_string_lossy().into_owned());
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

/// Finds an executable `name` on PATH or else in `extra_dirs` (sbin and
/// libexec directories are often not on a user's PATH).
pub fn find_program(name: &str, extra_dirs: &[&str]) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(extra_dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| effective_uid(&s))
        == Some(0)
}

/// The effective uid from /proc/self/status ("Uid: real effective saved fs").
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn require_root(what: &str, why: &str) -> Result<()> {
    ensure!(is_root(), "`{what}` needs root ({why}): run it as root");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_field() {
        let status = "Name:\tcargo\nUmask:\t0022\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Uid:\t1000\t1000\t1000\t1000\n"), Some(1000));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn display_shows_set_variables_but_not_path() {
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "--release"])
            .env("PATH", "/x")
            .env("LBPATH_BIN", "/t/lbpath");
        assert_eq!(display(&cmd), "LBPATH_BIN=/t/lbpath cargo test --release");
    }

    #[test]
    fn run_reports_failure_and_capture_returns_stdout() {
        assert!(run(Command::new("true").arg("x")).is_ok());
        let err = run(&mut Command::new("false")).unwrap_err().to_string();
        assert!(err.starts_with("`false` failed"), "{err}");
        assert_eq!(capture(Command::new("echo").arg("hi")).unwrap(), "hi\n");
        let err = capture(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(err.ends_with(": boom"), "{err}");
        assert!(run(&mut Command::new("/nonexistent/prog")).is_err());
    }

    #[test]
    fn find_program_searches_path_then_extra_dirs() {
        assert!(find_program("sh", &[]).is_some());
        assert!(find_program("no-such-program-lbpath", &["/nonexistent"]).is_none());
        let dir = crate::scratch::TempDir::new("find");
        let dir_str = dir.path().to_str().unwrap();
        // Extra dirs are searched too (a non-executable file is skipped).
        let name = "lbpath-xtask-test-program";
        let file = dir.path().join(name);
        fs::write(&file, "").unwrap();
        assert!(find_program(name, &[dir_str]).is_none());
        fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(find_program(name, &[dir_str]), Some(file));
    }
}
