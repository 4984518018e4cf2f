//! `cargo xtask dist`: what users run, in `target/dist/`.
//!
//! - `lbpath`: static (musl), stripped, with `lbpath.sha256` beside it;
//! - `lbpath.1` and a page per subcommand it refers to (`lbpath-watch.1`, …),
//!   and `completions/` for bash, zsh and fish, all printed by the built
//!   binary itself (`lbpath man`, `lbpath completions SHELL`);
//! - `lbpath-image.tar`: the debug image as an oci-archive ([`rootfs`] says
//!   what is in it, [`oci`] how it is written).
//!
//! The binary is built with `--target x86_64-unknown-linux-musl` into the
//! workspace's own target directory (`target/x86_64-unknown-linux-musl/`),
//! beside the host build and cached with it; the eBPF object is embedded by
//! tracer's build script whatever the host target is.

pub mod oci;
pub mod rootfs;
pub mod verify;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};

use crate::{packages, run, workspace::Workspace};

/// The target the released binary is built for.
pub const MUSL: &str = "x86_64-unknown-linux-musl";
/// The image must stay small enough to pull quickly onto a node in trouble.
pub const IMAGE_LIMIT: u64 = 25 * 1024 * 1024;
/// Completion scripts: shell and file name (as each shell looks for them).
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "lbpath.bash"),
    ("zsh", "_lbpath"),
    ("fish", "lbpath.fish"),
];

/// Adds the musl target to the toolchain cargo uses, unless it has it.
pub fn ensure_musl_target() -> Result<&'static str> {
    // `rustc` runs the toolchain of the cargo that started us (rustup sets
    // RUSTUP_TOOLCHAIN for it), so the check and the install agree.
    let libdir =
        run::capture(Command::new("rustc").args(["--print", "target-libdir", "--target", MUSL]))?;
    if has_std(libdir.trim()) {
        return Ok("ok");
    }
    eprintln!("bootstrap: adding the {MUSL} target");
    run::run(Command::new("rustup").args(["target", "add", MUSL]))
        .with_context(|| format!("cannot add the {MUSL} target (rustup target add {MUSL})"))?;
    Ok("added")
}

/// Whether a target libdir holds a std (its rlib carries a hash in the name).
fn has_std(libdir: &str) -> bool {
    fs::read_dir(libdir).is_ok_and(|d| {
        d.flatten().any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("libstd-") && n.ends_with(".rlib")
        })
    })
}

/// Where `dist` writes the image.
pub fn image_path(ws: &Workspace) -> PathBuf {
    ws.target.join("dist/lbpath-image.tar")
}

/// Writes everything; returns the image's path.
pub fn run(ws: &Workspace) -> Result<PathBuf> {
    let built = build_static(ws)?;
    let dir = ws.target.join("dist");
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("cannot empty {}", dir.display()))?;
    }
    fs::create_dir_all(dir.join("completions"))?;

    let binary = dir.join("lbpath");
    fs::copy(&built, &binary)?;
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o755))?;
    let elf = fs::read(&binary)?;
    check_static(&binary, &elf)?;
    let version = version(&binary)?;
    fs::write(dir.join("lbpath.sha256"), sha256sum_line(&elf, "lbpath"))?;

    let pages = man_pages(&binary, &dir)?;
    for (shell, file) in COMPLETIONS {
        let script = run::capture(Command::new(&binary).args(["completions", shell]))?;
        ensure!(
            script.contains("lbpath"),
            "`lbpath completions {shell}` printed no script"
        );
        fs::write(dir.join("completions").join(file), script)?;
    }

    let image = image_path(ws);
    let tree = rootfs::tree(&binary)?;
    let mtime = source_date(&ws.root);
    let spec = image_spec(&version, mtime);
    let img = oci::Image::new(&tree.layer_tar(mtime)?, &spec)?;
    let archive = img.archive(mtime)?;
    let size = archive.len() as u64;
    ensure!(
        size <= IMAGE_LIMIT,
        "the image is {} (limit {}): see what rootfs.rs puts in it",
        human(size),
        human(IMAGE_LIMIT)
    );
    fs::write(&image, &archive)?;

    println!("dist: {} (lbpath {version})", dir.display());
    println!(
        "  lbpath            {} static, stripped; lbpath.sha256",
        human(elf.len() as u64)
    );
    println!("  man pages         {}", pages.join(", "));
    println!(
        "  completions/      {}",
        COMPLETIONS
            .iter()
            .map(|c| c.1)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  lbpath-image.tar  {} oci-archive ({} unpacked, {} files), {} {}",
        human(size),
        human(tree.content_size()),
        tree.iter()
            .filter(|(_, n)| matches!(n, oci::Node::File { .. }))
            .count(),
        spec.ref_name,
        img.manifest.digest(),
    );
    Ok(image)
}

/// `cargo rustc` passes `-C strip=symbols` to the binary alone, so no
/// dependency is built twice for it.
fn build_static(ws: &Workspace) -> Result<PathBuf> {
    run::run(ws.cargo()?.args([
        "rustc",
        "--release",
        "-p",
        "tracer",
        "--bin",
        "lbpath",
        "--target",
        MUSL,
        "--",
        "-C",
        "strip=symbols",
    ]))?;
    let bin = ws.target.join(MUSL).join("release/lbpath");
    ensure!(
        bin.is_file(),
        "the build succeeded but {} is missing",
        bin.display()
    );
    Ok(bin)
}

/// No program interpreter, and ldd agrees.
fn check_static(bin: &Path, elf: &[u8]) -> Result<()> {
    ensure!(
        packages::is_static_elf(elf),
        "{} has a program interpreter: it is not static",
        bin.display()
    );
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        said.contains("statically linked") || said.contains("not a dynamic executable"),
        "ldd says {} is dynamic: {}",
        bin.display(),
        said.trim()
    );
    Ok(())
}

/// "0.1.0" from `lbpath --version` ("lbpath 0.1.0"): it runs.
fn version(bin: &Path) -> Result<String> {
    let out = run::capture(Command::new(bin).arg("--version"))?;
    parse_version(&out).with_context(|| format!("`lbpath --version` printed {out:?}"))
}

fn parse_version(out: &str) -> Option<String> {
    let v = out.trim().strip_prefix("lbpath ")?;
    (!v.is_empty() && !v.contains(char::is_whitespace)).then(|| v.to_string())
}

/// `sha256sum`'s line: hex digest, two spaces, the file name.
fn sha256sum_line(data: &[u8], name: &str) -> String {
    let d = oci::digest(data);
    format!("{}  {name}\n", d.trim_start_matches("sha256:"))
}

/// lbpath.1, then the page of each subcommand it refers to; the file names.
fn man_pages(bin: &Path, dir: &Path) -> Result<Vec<String>> {
    let top = run::capture(Command::new(bin).arg("man"))?;
    ensure!(
        top.contains(".TH lbpath 1"),
        "`lbpath man` printed no man page"
    );
    fs::write(dir.join("lbpath.1"), &top)?;
    let mut names = vec!["lbpath.1".to_string()];
    for sub in referenced_pages(&top) {
        let page = run::capture(Command::new(bin).args(["man", &sub]))?;
        let file = format!("lbpath-{sub}.1");
        fs::write(dir.join(&file), page)?;
        names.push(file);
    }
    Ok(names)
}

/// The subcommands whose pages lbpath(1) names: `lbpath\-watch(1)` → watch.
fn referenced_pages(roff: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in roff.match_indices("lbpath\\-") {
        let rest = &roff[i + "lbpath\\-".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        if !name.is_empty() && rest[name.len()..].starts_with("(1)") && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// The image's time: $SOURCE_DATE_EPOCH, else the last commit's, else 0,
/// so the same commit gives the same image.
fn source_date(root: &Path) -> u64 {
    if let Some(t) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return t;
    }
    run::capture(
        Command::new("git")
            .arg("-C")
            .arg(root)
            .args(["log", "-1", "--format=%ct"]),
    )
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

fn image_spec(version: &str, mtime: u64) -> oci::ImageSpec {
    let labels = BTreeMap::from(
        [
            ("org.opencontainers.image.title", "lbpath"),
            (
                "org.opencontainers.image.description",
                "lbpath: trace packets to a Kubernetes LoadBalancer IP through this node",
            ),
            ("org.opencontainers.image.version", version),
            ("org.opencontainers.image.licenses", "MIT OR Apache-2.0"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    oci::ImageSpec {
        entrypoint: vec![rootfs::LBPATH.to_string()],
        env: vec![rootfs::PATH_ENV.to_string()],
        labels,
        created: Some(oci::rfc3339(mtime)),
        ref_name: format!("lbpath:{version}"),
        created_by: "cargo xtask dist".into(),
    }
}

pub fn human(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_from_the_version_line() {
        assert_eq!(parse_version("lbpath 0.1.0\n").as_deref(), Some("0.1.0"));
        assert_eq!(parse_version("lbpath\n"), None);
        assert_eq!(parse_version("other 1.0"), None);
    }

    #[test]
    fn sha256sum_format() {
        assert_eq!(
            sha256sum_line(b"abc", "lbpath"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  lbpath\n"
        );
    }

    #[test]
    fn subcommand_pages_are_found_in_the_top_page() {
        let roff = ".SH SUBCOMMANDS\n.TP\nlbpath\\-watch(1)\nLive path\n.TP\nlbpath\\-diagnose(1)\nOne\\-shot\n\
                    .TP\nlbpath\\-completions(1)\nPrint\nsee lbpath\\-watch(1) again, lbpath\\-x without a section\n";
        assert_eq!(referenced_pages(roff), ["watch", "diagnose", "completions"]);
        assert!(referenced_pages(".TH lbpath 1\n").is_empty());
    }

    #[test]
    fn image_spec_runs_lbpath_and_names_the_version() {
        let s = image_spec("0.1.0", 0);
        assert_eq!(s.entrypoint, ["/usr/local/bin/lbpath"]);
        assert_eq!(s.ref_name, "lbpath:0.1.0");
        assert_eq!(s.labels["org.opencontainers.image.version"], "0.1.0");
        assert_eq!(
            s.labels["org.opencontainers.image.licenses"],
            "MIT OR Apache-2.0"
        );
        assert!(s.env[0].starts_with("PATH="));
    }

    #[test]
    fn source_date_prefers_the_environment_then_git() {
        // Not set in the test environment, usually: the commit time is.
        if std::env::var_os("SOURCE_DATE_EPOCH").is_none() {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
            let t = source_date(root);
            assert!(t == 0 || t > 1_600_000_000, "{t}");
        }
    }
}
