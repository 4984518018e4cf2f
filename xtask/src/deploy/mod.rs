//! Checks of `deploy/*.yaml` (run by `cargo xtask test`), and the Python
//! tools they use, which bootstrap installs.
//!
//! Kubernetes resources are validated against Kubernetes' own schemas with
//! PyPI's `kubernetes-validate --strict` (unknown fields are errors), for the
//! oldest and newest Kubernetes releases in [`KUBERNETES_VERSIONS`]. It has
//! no schema for custom resources, and only warns about them: a PodMonitor
//! is checked instead by `check.py` against `podmonitor.schema.json`, a
//! structural subset of the Prometheus Operator's CRD, which also checks it
//! scrapes the DaemonSet's metrics port. A warning about any other kind
//! fails the check (it would not have been validated at all).
//!
//! The tools live in a virtualenv under the tools directory
//! (`target/lbpath-tools/venv`), made with the machine's `python3`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{run, workspace::Workspace};

/// The PyPI requirement, pinned so the schemas do not change under us.
pub const REQUIREMENT: &str = "kubernetes-validate==1.37.0";
/// Validated against both.
pub const KUBERNETES_VERSIONS: &[&str] = &["1.29.0", "1.37.0"];
/// Custom resources that check.py validates (kubernetes-validate cannot).
const CUSTOM_KINDS: &[&str] = &["PodMonitor"];
/// Beside the venv's tools: the requirement it was made for.
const STAMP: &str = "lbpath-requirement.txt";

pub fn venv(tools: &Path) -> PathBuf {
    tools.join("venv")
}

/// Makes the venv with kubernetes-validate unless it is there for
/// [`REQUIREMENT`]; says whether it did. Offline, an existing venv is kept.
pub fn ensure_validator(tools: &Path) -> Result<&'static str> {
    let venv = venv(tools);
    let stamp = venv.join(STAMP);
    let runnable = runnable(&venv);
    let installed = fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == REQUIREMENT) && runnable;
    if installed {
        return Ok("ok");
    }
    eprintln!(
        "bootstrap: installing {REQUIREMENT} into {}",
        venv.display()
    );
    if !runnable || !venv.join("bin/python").is_file() {
        let python = run::find_program("python3", &[]).context(
            "python3 is not on PATH: the deploy/ checks need it (with venv and pip) for kubernetes-validate",
        )?;
        run::run(
            Command::new(python)
                .args(["-m", "venv", "--clear"])
                .arg(&venv),
        )
        .context("cannot make a Python venv (Debian: apt-get install python3-venv)")?;
    }
    run::run(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                REQUIREMENT,
            ])
            .stdin(std::process::Stdio::null()),
    )
    .with_context(|| format!("cannot install {REQUIREMENT} from PyPI"))?;
    fs::write(&stamp, format!("{REQUIREMENT}\n"))?;
    Ok("installed")
}

/// Whether the venv's kubernetes-validate can start: a venv's scripts name
/// their interpreter by the path the venv was made at, so one made at
/// another path (a checkout moved or deleted since) has scripts that
/// cannot run, whatever its stamp says.
fn runnable(venv: &Path) -> bool {
    let Ok(script) = fs::read_to_string(venv.join("bin/kubernetes-validate")) else {
        return false;
    };
    let Some(interpreter) = script.lines().next().and_then(|l| l.strip_prefix("#!")) else {
        return false;
    };
    let interpreter = Path::new(interpreter.trim());
    let (Some(dir), Ok(bin)) = (interpreter.parent(), venv.join("bin").canonicalize()) else {
        return false;
    };
    interpreter.exists() && dir.canonicalize().is_ok_and(|d| d == bin)
}

/// Validates every `deploy/*.yaml`.
pub fn validate(ws: &Workspace) -> Result<()> {
    let venv = venv(&ws.tools);
    let files = manifests(&ws.root.join("deploy"))?;
    let mut cmd = Command::new(venv.join("bin/kubernetes-validate"));
    cmd.arg("--strict");
    for v in KUBERNETES_VERSIONS {
        cmd.args(["--kubernetes-version", v]);
    }
    let out = cmd
        .args(&files)
        .current_dir(&ws.root)
        .output()
        .with_context(|| {
            format!(
                "cannot run kubernetes-validate (bootstrap installs it in {})",
                venv.display()
            )
        })?;
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let problems = problems(&report);
    let passed = report.lines().filter(|l| l.starts_with("INFO ")).count();
    ensure!(
        out.status.success() && problems.is_empty() && passed > 0,
        "kubernetes-validate --strict: {}",
        if problems.is_empty() {
            report.trim().to_string()
        } else {
            problems.join("; ")
        }
    );

    let checked = run::capture(
        Command::new(venv.join("bin/python"))
            .arg(ws.root.join("xtask/src/deploy/check.py"))
            .arg(ws.root.join("xtask/src/deploy/podmonitor.schema.json"))
            .args(&files)
            .current_dir(&ws.root),
    );
    let checked = match checked {
        Ok(out) => out,
        Err(e) => bail!("deploy/ PodMonitor check failed: {e:#}"),
    };
    let monitors = checked.lines().filter(|l| l.starts_with("OK ")).count();
    ensure!(
        monitors > 0,
        "deploy/ has no PodMonitor to check: {checked}"
    );
    println!(
        "deploy: {} resources valid against Kubernetes {} (strict), {monitors} PodMonitor valid and scraping lbpath",
        passed / KUBERNETES_VERSIONS.len(),
        KUBERNETES_VERSIONS.join(" and "),
    );
    Ok(())
}

/// deploy/*.yaml, relative to the workspace root, sorted.
fn manifests(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| Path::new("deploy").join(p.file_name().unwrap()))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no manifests in {}", dir.display());
    Ok(files)
}

/// kubernetes-validate's failures, and its warnings but those about the
/// custom kinds checked separately.
fn problems(report: &str) -> Vec<String> {
    report
        .lines()
        .filter(|l| {
            l.starts_with("ERROR")
                || l.starts_with("FATAL")
                || (l.starts_with("WARN")
                    && !CUSTOM_KINDS
                        .iter()
                        .any(|k| l.contains(&format!("schema for kind {k} "))))
        })
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_venv_made_at_another_path_is_not_runnable() {
        let dir = std::env::temp_dir().join(format!("lbpath-venv-test-{}", std::process::id()));
        let venv = dir.join("venv");
        fs::create_dir_all(venv.join("bin")).unwrap();
        fs::write(venv.join("bin/python3"), "").unwrap();
        let script = |interp: &Path| format!("#!{}\nimport sys\n", interp.display());
        fs::write(
            venv.join("bin/kubernetes-validate"),
            script(&venv.join("bin/python3")),
        )
        .unwrap();
        assert!(runnable(&venv));
        fs::write(
            venv.join("bin/kubernetes-validate"),
            script(Path::new(
                "/nonexistent-checkout/target/lbpath-tools/venv/bin/python3",
            )),
        )
        .unwrap();
        assert!(!runnable(&venv));
        fs::remove_dir_all(&dir).unwrap();
        assert!(!runnable(&venv));
    }

    #[test]
    fn only_custom_kinds_may_lack_a_schema() {
        let report = "\
INFO deploy/lbpath.yaml passed for resource daemonset/lbpath against version 1.37
WARN deploy/podmonitor.yaml Couldn't find schema for kind PodMonitor with api version monitoring.coreos.com/v1 for kubernetes version 1.37
";
        assert!(problems(report).is_empty());
        let report = "\
WARN deploy/x.yaml Couldn't find schema for kind DeamonSet with api version apps/v1 for kubernetes version 1.37
ERROR deploy/lbpath.yaml did not validate for resource daemonset/lbpath against version 1.37: spec.template: Additional properties are not allowed
";
        let p = problems(report);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("DeamonSet"));
    }

    #[test]
    fn deploy_has_manifests_and_the_check_files_exist() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let files = manifests(&root.join("deploy")).unwrap();
        assert!(
            files.iter().any(|f| f.ends_with("lbpath.yaml")),
            "{files:?}"
        );
        assert!(
            files.iter().any(|f| f.ends_with("podmonitor.yaml")),
            "{files:?}"
        );
        let schema: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(root.join("xtask/src/deploy/podmonitor.schema.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(schema["properties"]["kind"]["const"], "PodMonitor");
        assert!(root.join("xtask/src/deploy/check.py").is_file());
    }
}
