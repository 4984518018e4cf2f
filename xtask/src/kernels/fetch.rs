//! Getting Debian's kernels: a private apt configuration under
//! target/kernels/apt (the machine's own sources are never read or changed),
//! `apt-get download` of the chosen image, `dpkg-deb -x` into
//! target/kernels/<package>/ and `depmod` there.
//!
//! Everything is kept: a kernel already unpacked is used as is, so a second
//! run downloads nothing. When the registry cannot be reached, the newest
//! kernel of the series already unpacked is used, with a warning.
//!
//! The unpacked trees live under target/, not /tmp: the guests see the host's
//! / as their root but mount a tmpfs over /tmp.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use super::debian;
use crate::run;

/// Debian's suites that carry the default series: bullseye (5.10, and 6.1
/// backports), bookworm (6.1) and bookworm-backports (6.12), with security.
const SOURCES: &[(&str, &str)] = &[
    ("debian", "bullseye"),
    ("debian-security", "bullseye-security"),
    ("debian", "bookworm"),
    ("debian", "bookworm-backports"),
    ("debian-security", "bookworm-security"),
];
const MIRROR: &str = "http://deb.debian.org";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Written last into an unpacked tree: "<package> <version>".
const STAMP: &str = ".xtask-kernel";

/// An unpacked kernel, ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub series: String,
    /// linux-image-6.1.0-56-amd64
    pub package: String,
    /// The package's version, e.g. 6.1.158-1.
    pub version: String,
    /// `uname -r`, e.g. 6.1.0-56-amd64.
    pub release: String,
    /// The unpacked tree: boot/vmlinuz-<release>, lib/modules/<release>.
    pub dir: PathBuf,
    /// Said when this may not be the newest (registry unreachable).
    pub warning: Option<String>,
}

impl Kernel {
    /// "linux-image-6.1.0-56-amd64 6.1.158-1 (6.1.0-56-amd64)"
    pub fn title(&self) -> String {
        format!("{} {} ({})", self.package, self.version, self.release)
    }

    pub fn vmlinuz(&self) -> PathBuf {
        self.dir
            .join("boot")
            .join(format!("vmlinuz-{}", self.release))
    }
}

/// target/kernels: the apt state, the .debs and the unpacked trees.
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    fn apt_dir(&self) -> PathBuf {
        self.dir.join("apt")
    }

    fn debs_dir(&self) -> PathBuf {
        self.dir.join("debs")
    }

    /// Resolves every series to an unpacked kernel, downloading what is
    /// missing. One result per series, in order: a series that cannot be had
    /// fails alone.
    pub fn prepare(&self, series: &[String]) -> Vec<Result<Kernel>> {
        let listed = self.refresh_lists();
        // Lists from an earlier run still name what may be unpacked already.
        let names = self.pkgnames().unwrap_or_default();
        let unreachable = listed
            .as_ref()
            .err()
            .map(|e| format!("cannot refresh Debian's package lists ({e:#})"));
        series
            .iter()
            .map(|s| self.prepare_one(s, &names, unreachable.as_deref()))
            .collect()
    }

    fn prepare_one(
        &self,
        series: &str,
        names: &[String],
        unreachable: Option<&str>,
    ) -> Result<Kernel> {
        let chosen = debian::newest(series, names.iter().map(String::as_str));
        let got = match chosen {
            Some(package) => self.ensure_unpacked(series, package),
            None => Err(anyhow::anyhow!(
                "no package linux-image-{series}.*-amd64 in Debian's lists"
            )),
        };
        match (got, unreachable) {
            (Ok(mut k), Some(why)) => {
                k.warning = Some(format!(
                    "{why}; using {}, chosen from an earlier run's lists (may not be the newest)",
                    k.package
                ));
                Ok(k)
            }
            (Ok(k), None) => Ok(k),
            (Err(err), _) => {
                let Some(mut k) = self.newest_unpacked(series) else {
                    bail!(
                        "cannot get a {series} kernel ({err:#}), and none is unpacked in {}",
                        self.dir.display()
                    );
                };
                k.warning = Some(format!(
                    "{}; using the kernel already unpacked, {}",
                    unreachable.map_or_else(|| format!("{err:#}"), str::to_string),
                    k.package
                ));
                Ok(k)
            }
        }
    }

    /// The private apt configuration's options, for apt-get and apt-cache.
    fn apt(&self, program: &str) -> Command {
        let apt = self.apt_dir();
        let mut cmd = Command::new(program);
        cmd.arg("-q")
            .arg("-o")
            .arg(format!(
                "Dir::Etc::SourceList={}",
                apt.join("sources.list").display()
            ))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", apt.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt.join("cache").display()))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null());
        cmd
    }

    fn refresh_lists(&self) -> Result<()> {
        let apt = self.apt_dir();
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(apt.join(d))
                .with_context(|| format!("cannot create {}", apt.join(d).display()))?;
        }
        fs::write(apt.join("sources.list"), sources_list())?;
        eprintln!(
            "kernels: refreshing Debian's package lists in {}",
            apt.display()
        );
        // Without Error-Mode=any, apt-get update exits 0 when nothing could
        // be fetched.
        let mut cmd = self.apt("apt-get");
        cmd.args(["-o", "APT::Update::Error-Mode=any", "update"]);
        let out = cmd
            .output()
            .with_context(|| format!("cannot start `{}`", run::display(&cmd)))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .find(|l| l.starts_with("E:"))
                .or_else(|| stderr.lines().find(|l| !l.trim().is_empty()))
                .unwrap_or("no message");
            bail!("apt-get update failed ({}): {}", out.status, why.trim());
        }
        Ok(())
    }

    fn pkgnames(&self) -> Result<Vec<String>> {
        let out = run::capture(self.apt("apt-cache").args(["pkgnames", "linux-image-"]))?;
        Ok(out.lines().map(str::to_string).collect())
    }

    /// target/kernels/<package>, unpacked and depmod'ed unless it already is.
    fn ensure_unpacked(&self, series: &str, package: &str) -> Result<Kernel> {
        let dir = self.dir.join(package);
        if let Some(k) = read_unpacked(series, &dir) {
            return Ok(k);
        }
        let deb = self.download(package)?;
        let version = run::capture(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?
            .trim()
            .to_string();
        let release = debian::release(package);
        eprintln!(
            "kernels: unpacking {} into {}",
            deb.display(),
            dir.display()
        );
        let partial = self.dir.join(format!("{package}.partial"));
        if partial.exists() {
            fs::remove_dir_all(&partial)
                .with_context(|| format!("cannot remove {}", partial.display()))?;
        }
        run::capture(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
        link_usr_lib(&partial)?;
        ensure!(
            partial.join("lib/modules").join(release).is_dir(),
            "{} holds no lib/modules/{release}",
            deb.display()
        );
        run::capture(Command::new(depmod()).arg("-b").arg(&partial).arg(release))?;
        fs::write(partial.join(STAMP), format!("{package} {version}\n"))?;
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        fs::rename(&partial, &dir)
            .with_context(|| format!("cannot rename {} to {}", partial.display(), dir.display()))?;
        read_unpacked(series, &dir).with_context(|| format!("{} is incomplete", dir.display()))
    }

    /// The package's .deb in target/kernels/debs, downloaded unless there.
    fn download(&self, package: &str) -> Result<PathBuf> {
        let debs = self.debs_dir();
        fs::create_dir_all(&debs)?;
        if let Some(deb) = find_deb(&debs, package) {
            return Ok(deb);
        }
        eprintln!("kernels: downloading {package} into {}", debs.display());
        run::capture(
            self.apt("apt-get")
                .args(["download", package])
                .current_dir(&debs),
        )?;
        find_deb(&debs, package).with_context(|| {
            format!(
                "apt-get download {package} left no .deb in {}",
                debs.display()
            )
        })
    }

    /// The newest complete kernel of `series` unpacked here, if any.
    fn newest_unpacked(&self, series: &str) -> Option<Kernel> {
        let names: Vec<String> = fs::read_dir(&self.dir)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| self.dir.join(n).join(STAMP).is_file())
            .collect();
        let newest = debian::newest(series, names.iter().map(String::as_str))?;
        read_unpacked(series, &self.dir.join(newest))
    }
}

fn sources_list() -> String {
    SOURCES
        .iter()
        .map(|(archive, suite)| {
            format!("deb [signed-by={KEYRING}] {MIRROR}/{archive} {suite} main\n")
        })
        .collect()
}

/// A complete unpacked tree (the stamp is written last).
fn read_unpacked(series: &str, dir: &Path) -> Option<Kernel> {
    let stamp = fs::read_to_string(dir.join(STAMP)).ok()?;
    let (package, version) = stamp.trim().split_once(' ')?;
    let release = debian::release(package).to_string();
    let k = Kernel {
        series: series.to_string(),
        package: package.to_string(),
        version: version.to_string(),
        release,
        dir: dir.to_path_buf(),
        warning: None,
    };
    k.vmlinuz().is_file().then_some(k)
}

/// `<package>_<version>_amd64.deb` in `dir`, the newest if several.
fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    let mut debs: Vec<String> = fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        .collect();
    debs.sort_by(|a, b| debian::compare_versions(a, b));
    debs.pop().map(|n| dir.join(n))
}

/// Kernels packaged for merged-/usr ship usr/lib/modules; modprobe -d and
/// depmod -b look in <dir>/lib/modules.
fn link_usr_lib(root: &Path) -> Result<()> {
    if !root.join("lib").exists() && root.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
    }
    Ok(())
}

fn depmod() -> PathBuf {
    run::find_program("depmod", &["/usr/sbin", "/sbin"]).unwrap_or_else(|| "depmod".into())
}

/// modprobe, which the host uses for module closures and the guests as
/// their module autoloader.
pub fn modprobe() -> Result<PathBuf> {
    match run::find_program("modprobe", &["/usr/sbin", "/sbin"]) {
        Some(p) => Ok(p),
        None => bail!("modprobe not found (Debian package kmod)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_use_debians_keyring_and_main() {
        let list = sources_list();
        assert_eq!(list.lines().count(), 5);
        assert!(list.lines().all(|l| l.starts_with(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian"
        ) && l.ends_with(" main")));
        assert!(list.contains("/debian bookworm-backports main\n"));
        assert!(list.contains("/debian-security bullseye-security main\n"));
    }

    #[test]
    fn unpacked_tree_counts_only_with_stamp_and_kernel() {
        let tmp = crate::scratch::TempDir::new("kernel");
        let dir = tmp.path().join("linux-image-6.1.0-56-amd64");
        fs::create_dir_all(dir.join("boot")).unwrap();
        assert!(read_unpacked("6.1", &dir).is_none());
        fs::write(dir.join(STAMP), "linux-image-6.1.0-56-amd64 6.1.158-1\n").unwrap();
        assert!(read_unpacked("6.1", &dir).is_none());
        fs::write(dir.join("boot/vmlinuz-6.1.0-56-amd64"), "").unwrap();
        let k = read_unpacked("6.1", &dir).unwrap();
        assert_eq!(
            (k.release.as_str(), k.version.as_str()),
            ("6.1.0-56-amd64", "6.1.158-1")
        );
        // The cache finds it as the series' newest.
        let store = Store::new(tmp.path());
        assert_eq!(
            store.newest_unpacked("6.1").unwrap().package,
            "linux-image-6.1.0-56-amd64"
        );
        assert!(store.newest_unpacked("5.10").is_none());
    }

    #[test]
    fn finds_a_downloaded_deb_by_package_name() {
        let tmp = crate::scratch::TempDir::new("debs");
        assert_eq!(find_deb(tmp.path(), "linux-image-6.1.0-56-amd64"), None);
        for n in [
            "linux-image-6.1.0-56-amd64_6.1.158-1_amd64.deb",
            "linux-image-6.1.0-56-amd64-unsigned_6.1.158-1_amd64.deb",
        ] {
            fs::write(tmp.path().join(n), "").unwrap();
        }
        let deb = find_deb(tmp.path(), "linux-image-6.1.0-56-amd64").unwrap();
        assert!(deb.ends_with("linux-image-6.1.0-56-amd64_6.1.158-1_amd64.deb"));
    }
}
