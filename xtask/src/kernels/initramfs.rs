//! The guests' initramfs: a static busybox, an /init that mounts the host's
//! / read-only over virtio-9p and switch_roots into it, and the modules that
//! mount needs (Debian builds virtio-pci and 9p as modules).
//!
//! Everything else — the host's programs, the workspace, the test binaries —
//! is reached through that 9p root, so the image stays a few MiB.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use super::{cpio, fetch::Kernel};

/// What mounting the 9p root needs, loaded with their dependencies first.
pub const ROOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];

/// The kernel command line parameter naming the script the guest runs.
pub const RUN_PARAM: &str = "lbpath.run";
/// The one naming the workspace, exported on its own ("ws") and mounted at
/// the same path over the tmpfs mounts.
pub const WS_PARAM: &str = "lbpath.ws";

/// /init: mounts the 9p root (host's /, read-only) with tmpfs over /tmp,
/// /run and /var/tmp, the workspace (tagged "ws") again at its own path so a
/// checkout under /tmp stays visible, the host directory tagged "out" on
/// /tmp/out, and runs the script named by lbpath.run= there as the new init.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
cmd=$(sed -n 's/.*lbpath.run=\([^ ]*\).*/\1/p' /proc/cmdline)
for m in /mods/*.ko; do insmod $m 2>/dev/null; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /newroot || { echo MOUNT FAILED; poweroff -f; }
for d in tmp run var/tmp; do mount -t tmpfs tmpfs /newroot/$d; done
ws=$(sed -n 's/.*lbpath.ws=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$ws" ]; then mkdir -p "/newroot$ws" 2>/dev/null; mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose ws "/newroot$ws" || echo WORKSPACE MOUNT FAILED; fi
mkdir -p /newroot/tmp/out; mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out /newroot/tmp/out
mount -o move /proc /newroot/proc; mount -o move /sys /newroot/sys; mount -o move /dev /newroot/dev
exec switch_root /newroot /bin/sh $cmd
"#;

/// Writes the initramfs for `kernel` to `out`; returns the modules in it.
pub fn build(kernel: &Kernel, modprobe: &Path, busybox: &Path, out: &Path) -> Result<Vec<String>> {
    let modules = module_closure(kernel, modprobe)?;
    let busybox_bytes =
        fs::read(busybox).with_context(|| format!("cannot read {}", busybox.display()))?;
    let mut w = cpio::Writer::new(Vec::new());
    for d in ["bin", "dev", "proc", "sys", "newroot", "mods"] {
        w.dir(d)?;
    }
    w.char_device("dev/console", 0o600, 5, 1)?;
    w.file("bin/busybox", 0o755, &busybox_bytes)?;
    w.file("init", 0o755, INIT.as_bytes())?;
    let mut names = Vec::new();
    for (i, path) in modules.iter().enumerate() {
        let name = module_name(path);
        w.file(
            &format!("mods/{i:02}_{name}.ko"),
            0o644,
            &module_bytes(path)?,
        )?;
        names.push(name);
    }
    let image = w.finish()?;
    fs::write(out, image).with_context(|| format!("cannot write {}", out.display()))?;
    Ok(names)
}

/// The module files to load, in load order, without repeats.
fn module_closure(kernel: &Kernel, modprobe: &Path) -> Result<Vec<PathBuf>> {
    let mut all: Vec<PathBuf> = Vec::new();
    for module in ROOT_MODULES {
        let out = crate::run::capture(Command::new(modprobe).arg("-d").arg(&kernel.dir).args([
            "-S",
            &kernel.release,
            "--show-depends",
            module,
        ]))
        .with_context(|| format!("cannot resolve module {module} of {}", kernel.package))?;
        for path in parse_show_depends(&out) {
            // modprobe prints paths under -d; be tolerant of ones without it.
            let path = if path.starts_with(&kernel.dir) {
                path
            } else {
                kernel.dir.join(path.strip_prefix("/").unwrap_or(&path))
            };
            if !all.contains(&path) {
                all.push(path);
            }
        }
    }
    Ok(all)
}

/// The files of `modprobe --show-depends` output ("insmod <path> [opts]"
/// lines, dependencies first); "builtin <name>" lines need nothing.
pub fn parse_show_depends(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("insmod "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(PathBuf::from)
        .collect()
}

/// "9pnet_virtio" of ".../9pnet_virtio.ko.xz".
pub fn module_name(path: &Path) -> String {
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    let base = file.split(".ko").next().unwrap_or(&file);
    base.to_string()
}

/// The module as insmod wants it: busybox's insmod may not read compressed
/// modules, so .ko.xz and .ko.zst are decompressed here.
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else if name.ends_with(".ko") {
        return fs::read(path).with_context(|| format!("cannot read {name}"));
    } else {
        bail!("unknown module format: {name}");
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {tool} -dc {name}"))?;
    ensure!(
        out.status.success(),
        "{tool} -dc {name} failed ({})",
        out.status
    );
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_depends_gives_insmod_paths_in_order_and_skips_builtins() {
        let out = "insmod /k/lib/modules/6.1.0-56-amd64/kernel/drivers/virtio/virtio.ko \n\
                   insmod /k/lib/modules/6.1.0-56-amd64/kernel/drivers/virtio/virtio_ring.ko \n\
                   builtin virtio_pci_modern_dev\n\
                   insmod /k/lib/modules/6.1.0-56-amd64/kernel/drivers/virtio/virtio_pci.ko opt=1\n";
        let paths = parse_show_depends(out);
        let names: Vec<_> = paths.iter().map(|p| module_name(p)).collect();
        assert_eq!(names, ["virtio", "virtio_ring", "virtio_pci"]);
        assert!(paths[2].ends_with("virtio/virtio_pci.ko"));
        assert!(parse_show_depends("builtin virtio_pci\n").is_empty());
    }

    #[test]
    fn module_names_drop_the_compression_suffix() {
        assert_eq!(
            module_name(Path::new("/m/net/9p/9pnet_virtio.ko.xz")),
            "9pnet_virtio"
        );
        assert_eq!(module_name(Path::new("/m/fs/9p/9p.ko.zst")), "9p");
        assert_eq!(module_name(Path::new("9p.ko")), "9p");
    }

    #[test]
    fn init_runs_the_script_named_on_the_command_line() {
        assert!(INIT.starts_with("#!/bin/busybox sh\n"));
        assert!(INIT.contains(&format!("{RUN_PARAM}=")));
        assert!(INIT.contains(" hostroot /newroot "));
        assert!(
            INIT.trim_end()
                .ends_with("exec switch_root /newroot /bin/sh $cmd")
        );
    }

    #[test]
    fn modules_are_read_plain_or_decompressed() {
        let tmp = crate::scratch::TempDir::new("mods");
        let plain = tmp.path().join("a.ko");
        fs::write(&plain, b"\x7fELF").unwrap();
        assert_eq!(module_bytes(&plain).unwrap(), b"\x7fELF");
        assert!(module_bytes(&tmp.path().join("a.txt")).is_err());
        if crate::run::find_program("xz", &[]).is_some() {
            let xz = tmp.path().join("b.ko.xz");
            let st = Command::new("sh")
                .arg("-c")
                .arg(format!("printf hello | xz > {}", xz.display()))
                .status()
                .unwrap();
            assert!(st.success());
            assert_eq!(module_bytes(&xz).unwrap(), b"hello");
        }
    }
}
