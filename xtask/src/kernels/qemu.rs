//! Booting one guest under qemu: the Debian kernel with our initramfs, the
//! host's / shared read-only over virtio-9p as its root, and a writable share
//! ("out") for results. The serial console goes to console.log, qemu's own
//! messages to qemu.log, both in the run directory.
//!
//! KVM is used only when a test boot shows it works: a /dev/kvm may exist
//! and still not boot a stock kernel (nested, paravirtual KVM), so it is
//! tried once and TCG is the fallback.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    guest,
    initramfs::{RUN_PARAM, WS_PARAM},
};

const MEMORY_MB: u32 = 2048;
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }
}

/// One guest to boot. `dir` is its run directory (outside /tmp).
pub struct Vm<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub script: &'a Path,
    pub dir: &'a Path,
    /// The workspace, mounted at its own path in the guest: it may sit under
    /// /tmp, which the guest covers with a tmpfs.
    pub workspace: &'a Path,
    pub accel: Accel,
}

pub fn out_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("out")
}

pub fn console_log(run_dir: &Path) -> PathBuf {
    run_dir.join("console.log")
}

pub fn qemu_log(run_dir: &Path) -> PathBuf {
    run_dir.join("qemu.log")
}

#[derive(Debug)]
pub struct Outcome {
    /// From start to the guest's up marker; None: it never came up.
    pub booted: Option<Duration>,
    pub elapsed: Duration,
    pub timed_out: bool,
    /// qemu's exit status (None when killed at the timeout).
    pub status: Option<ExitStatus>,
}

impl Vm<'_> {
    fn command(&self) -> Result<Command> {
        let script = self.script.to_str().context("script path is not UTF-8")?;
        if script.chars().any(char::is_whitespace) {
            bail!(
                "the guest script's path {script:?} has whitespace: the kernel command line cannot carry it"
            );
        }
        let workspace = self
            .workspace
            .to_str()
            .context("workspace path is not UTF-8")?;
        if workspace.chars().any(|c| c.is_whitespace() || c == ',') {
            bail!(
                "the workspace path {workspace:?} has whitespace or a comma: qemu and the kernel command line cannot carry it"
            );
        }
        let out = out_dir(self.dir);
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(self.accel.args())
            .args(["-m", &MEMORY_MB.to_string(), "-smp", "1"])
            .args([
                "-display",
                "none",
                "-monitor",
                "none",
                "-no-reboot",
                "-net",
                "none",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console_log(self.dir).display()))
            .arg("-kernel")
            .arg(self.vmlinuz)
            .arg("-initrd")
            .arg(self.initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 panic=-1 quiet {RUN_PARAM}={script} {WS_PARAM}={workspace}"
            ))
            .args([
                "-virtfs",
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            ])
            .arg("-virtfs")
            .arg(format!(
                "local,path={workspace},mount_tag=ws,security_model=none,readonly=on,multidevs=remap"
            ))
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=out,security_model=none",
                out.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        Ok(cmd)
    }

    /// Boots the guest and waits until it powers off or `timeout` passes
    /// (then kills it). `on_tick` is called every 200 ms while it runs, with
    /// the boot time once the guest is up.
    pub fn run(
        &self,
        timeout: Duration,
        mut on_tick: impl FnMut(Option<Duration>),
    ) -> Result<Outcome> {
        let out = out_dir(self.dir);
        fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
        let up = out.join(guest::UP_FILE);
        let _ = fs::remove_file(&up);
        let qemu_log = fs::File::create(qemu_log(self.dir))?;
        let mut cmd = self.command()?;
        cmd.stderr(qemu_log);
        fs::write(
            self.dir.join("qemu.cmd"),
            format!("{}\n", crate::run::display(&cmd)),
        )?;
        let start = Instant::now();
        let mut child = cmd.spawn().context("cannot start qemu-system-x86_64")?;
        let mut booted = None;
        loop {
            if booted.is_none() && up.exists() {
                booted = Some(start.elapsed());
            }
            on_tick(booted);
            if let Some(status) = child.try_wait()? {
                if booted.is_none() && up.exists() {
                    booted = Some(start.elapsed());
                }
                return Ok(Outcome {
                    booted,
                    elapsed: start.elapsed(),
                    timed_out: false,
                    status: Some(status),
                });
            }
            if start.elapsed() >= timeout {
                // Our own child, by its handle.
                let _ = child.kill();
                let _ = child.wait();
                return Ok(Outcome {
                    booted,
                    elapsed: start.elapsed(),
                    timed_out: true,
                    status: None,
                });
            }
            thread::sleep(TICK);
        }
    }
}

/// KVM when /dev/kvm exists and a guest boots with it, else TCG; with the
/// reason, for the report. `dir` receives the probe's script and logs.
///
/// A failing probe costs up to 30 s, so its answer is kept in `dir` for the
/// rest of this host boot (keyed by the boot id, /dev/kvm and the qemu
/// binary); any change of those probes again.
pub fn choose_accel(
    vmlinuz: &Path,
    initrd: &Path,
    busybox: &Path,
    dir: &Path,
    workspace: &Path,
) -> Result<(Accel, String)> {
    if !Path::new("/dev/kvm").exists() {
        return Ok((Accel::Tcg, "no /dev/kvm".into()));
    }
    let cache = dir.join("result");
    let key = probe_key();
    if let Some((accel, why)) = key
        .as_deref()
        .and_then(|k| read_probe_cache(&fs::read_to_string(&cache).unwrap_or_default(), k))
    {
        return Ok((accel, format!("{why}; probed earlier this boot")));
    }
    fs::create_dir_all(dir)?;
    let script = dir.join("probe.sh");
    fs::write(&script, guest::probe_script(busybox))?;
    let vm = Vm {
        vmlinuz,
        initrd,
        script: &script,
        dir,
        workspace,
        accel: Accel::Kvm,
    };
    eprintln!(
        "kernels: /dev/kvm exists; trying a KVM boot (up to {} s)",
        PROBE_TIMEOUT.as_secs()
    );
    let o = vm.run(PROBE_TIMEOUT, |_| {})?;
    let (accel, why) = match o.booted {
        Some(t) => (
            Accel::Kvm,
            format!("KVM test boot came up in {:.1} s", t.as_secs_f64()),
        ),
        None => {
            let why = if o.timed_out {
                format!("no boot within {} s", PROBE_TIMEOUT.as_secs())
            } else {
                let first = fs::read_to_string(qemu_log(dir)).unwrap_or_default();
                let first = first.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                format!(
                    "qemu exited ({}){}",
                    o.status.map(|s| s.to_string()).unwrap_or_default(),
                    if first.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", first.trim())
                    }
                )
            };
            (
                Accel::Tcg,
                format!(
                    "/dev/kvm cannot boot a guest here ({why}); see {}",
                    dir.display()
                ),
            )
        }
    };
    if let Some(k) = key {
        fs::write(&cache, format!("{k}\n{}\n{why}\n", accel.name()))?;
    }
    Ok((accel, why))
}

/// What the probe's answer depends on: this host boot, /dev/kvm, qemu.
fn probe_key() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let kvm = fs::metadata("/dev/kvm").ok()?;
    let qemu = crate::run::find_program("qemu-system-x86_64", &[])?;
    let q = fs::metadata(qemu).ok()?;
    Some(format!(
        "boot {} kvm {:x} qemu {} {}",
        boot.trim(),
        kvm.rdev(),
        q.len(),
        q.mtime()
    ))
}

/// The cached answer ("key\naccel\nreason\n") if it is for `key`.
fn read_probe_cache(text: &str, key: &str) -> Option<(Accel, String)> {
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    let accel = match lines.next()? {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => return None,
    };
    Some((accel, lines.next()?.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_shares_the_root_read_only_and_names_the_script() {
        let vm = Vm {
            vmlinuz: Path::new("/k/boot/vmlinuz-6.1.0-56-amd64"),
            initrd: Path::new("/r/initramfs.cpio"),
            script: Path::new("/r/guest.sh"),
            dir: Path::new("/r"),
            workspace: Path::new("/w"),
            accel: Accel::Tcg,
        };
        let line = crate::run::display(&vm.command().unwrap());
        assert!(
            line.starts_with("qemu-system-x86_64 -accel tcg -cpu max -m 2048 -smp 1 "),
            "{line}"
        );
        assert!(line.contains(" -serial file:/r/console.log "), "{line}");
        assert!(line.contains(
            " -append console=ttyS0 panic=-1 quiet lbpath.run=/r/guest.sh lbpath.ws=/w "
        ));
        assert!(line.contains("path=/w,mount_tag=ws,security_model=none,readonly=on"));
        assert!(line.contains("path=/,mount_tag=hostroot,security_model=none,readonly=on"));
        assert!(line.ends_with(" -virtfs local,path=/r/out,mount_tag=out,security_model=none"));
        let spaced = Vm {
            script: Path::new("/r x/guest.sh"),
            ..vm
        };
        assert!(spaced.command().is_err());
    }

    #[test]
    fn probe_cache_answers_only_for_its_key() {
        let text = "boot b1 kvm a e8 qemu 1 2\ntcg\nno boot within 30 s\n";
        assert_eq!(
            read_probe_cache(text, "boot b1 kvm a e8 qemu 1 2"),
            Some((Accel::Tcg, "no boot within 30 s".into()))
        );
        assert_eq!(read_probe_cache(text, "boot b2 kvm a e8 qemu 1 2"), None);
        assert_eq!(read_probe_cache("", "k"), None);
        assert_eq!(read_probe_cache("k\nfast\nwhy\n", "k"), None);
    }
}
