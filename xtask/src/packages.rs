//! Host packages the integration tests, the demo lab and the kernel matrix
//! drive (Debian names).
//!
//! Each is detected by a program it installs rather than by asking dpkg:
//! that is instant, and on a distribution without apt it still tells what
//! is really missing.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::run;

pub struct Package {
    /// Debian/Ubuntu package name.
    pub name: &'static str,
    /// A program the package installs.
    pub program: &'static str,
    /// The program must be statically linked (it runs in an initramfs).
    pub static_binary: bool,
}

pub const PACKAGES: &[Package] = &[
    Package {
        name: "iproute2",
        program: "ip",
        static_binary: false,
    },
    Package {
        name: "iptables",
        program: "iptables",
        static_binary: false,
    },
    Package {
        name: "nftables",
        program: "nft",
        static_binary: false,
    },
    // The BGP tests run their own bgpd, which frr keeps out of PATH.
    Package {
        name: "frr",
        program: "bgpd",
        static_binary: false,
    },
    Package {
        name: "conntrack",
        program: "conntrack",
        static_binary: false,
    },
    Package {
        name: "curl",
        program: "curl",
        static_binary: false,
    },
    // `watch --write` files are read back as users would (tests/tests/pcap.rs).
    Package {
        name: "tshark",
        program: "tshark",
        static_binary: false,
    },
    // kube-proxy's IPVS mode in the lab (tests/src/ipvs_lab.rs): virtual
    // services and the ipsets kube-proxy keeps beside them; lbpath reads the
    // sets with `ipset save`.
    Package {
        name: "ipvsadm",
        program: "ipvsadm",
        static_binary: false,
    },
    Package {
        name: "ipset",
        program: "ipset",
        static_binary: false,
    },
    // `cargo xtask test` reads the debug image back as users would:
    // skopeo inspects and copies it, umoci unpacks it, podman loads it.
    Package {
        name: "skopeo",
        program: "skopeo",
        static_binary: false,
    },
    Package {
        name: "umoci",
        program: "umoci",
        static_binary: false,
    },
    Package {
        name: "podman",
        program: "podman",
        static_binary: false,
    },
    // `promtool check metrics` validates what `watch --metrics` serves
    // (tests/tests/metrics.rs).
    Package {
        name: "prometheus",
        program: "promtool",
        static_binary: false,
    },
    // `cargo xtask bench`: the observers lbpath is measured beside (bpftrace
    // as a second eBPF tracer, tcpdump as a packet socket) and the bulk
    // traffic they watch.
    Package {
        name: "tcpdump",
        program: "tcpdump",
        static_binary: false,
    },
    Package {
        name: "bpftrace",
        program: "bpftrace",
        static_binary: false,
    },
    Package {
        name: "iperf3",
        program: "iperf3",
        static_binary: false,
    },
    // The kernel matrix (`cargo xtask test-kernels`): qemu boots the guests,
    // busybox-static is their initramfs's shell (the plain busybox package
    // installs a dynamic one, useless there), kmod's depmod/modprobe index and
    // resolve the guest kernels' modules, xz unpacks compressed modules.
    Package {
        name: "qemu-system-x86",
        program: "qemu-system-x86_64",
        static_binary: false,
    },
    Package {
        name: "busybox-static",
        program: "busybox",
        static_binary: true,
    },
    Package {
        name: "kmod",
        program: "depmod",
        static_binary: false,
    },
    Package {
        name: "xz-utils",
        program: "xz",
        static_binary: false,
    },
];

/// Where the programs live when PATH lacks them (a user's PATH often has no
/// sbin; frr keeps its daemons in /usr/lib/frr).
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/lib/frr"];

pub fn missing() -> Vec<&'static Package> {
    PACKAGES.iter().filter(|p| find(p).is_none()).collect()
}

fn find(p: &Package) -> Option<PathBuf> {
    let path = run::find_program(p.program, EXTRA_DIRS)?;
    (!p.static_binary || fs::read(&path).is_ok_and(|elf| is_static_elf(&elf))).then_some(path)
}

/// busybox-static's busybox, for the kernel matrix's initramfs.
pub fn static_busybox() -> Result<PathBuf> {
    let p = PACKAGES
        .iter()
        .find(|p| p.name == "busybox-static")
        .expect("busybox-static is listed");
    find(p).context("no statically linked busybox on PATH (Debian package busybox-static)")
}

/// Whether `elf` is an ELF executable without a program interpreter
/// (PT_INTERP), i.e. one that runs with no dynamic loader or libc around.
pub fn is_static_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[5] != 1 {
        return false; // not ELF, or not little-endian
    }
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    // ELF64 (class 2) and ELF32 keep the program header table in different places.
    let (phoff, phentsize, phnum) = match elf[4] {
        2 => (u64_at(0x20).map(|o| o as usize), u16_at(0x36), u16_at(0x38)),
        1 => (u32_at(0x1c).map(|o| o as usize), u16_at(0x2a), u16_at(0x2c)),
        _ => return false,
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return false;
    };
    (0..phnum).all(|i| u32_at(phoff + i * phentsize).is_some_and(|t| t != PT_INTERP))
}

/// Why missing packages cannot be installed here, if they cannot.
pub fn install_blocker(is_root: bool, has_apt: bool, missing: &[&Package]) -> Option<String> {
    let what = missing
        .iter()
        .map(|p| format!("{} ({})", p.name, p.program))
        .collect::<Vec<_>>()
        .join(", ");
    let names = missing.iter().map(|p| p.name).collect::<Vec<_>>().join(" ");
    match (has_apt, is_root) {
        (true, true) => None,
        (true, false) => Some(format!(
            "missing packages: {what}; install them as root with \
             `apt-get install -y --no-install-recommends {names}`"
        )),
        (false, _) => Some(format!(
            "missing packages: {what}; apt-get is not available here, \
             install them with the system's package manager"
        )),
    }
}

/// Installs the missing packages with apt-get (root only). The package lists
/// are refreshed only when an install fails, since that is slow and usually
/// not needed.
pub fn install(missing: &[&Package]) -> Result<()> {
    let names: Vec<_> = missing.iter().map(|p| p.name).collect();
    eprintln!("bootstrap: installing {}", names.join(" "));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            // CI has no stdin to answer questions with.
            .stdin(std::process::Stdio::null());
        cmd
    };
    let install = || run::run(apt(&["install", "-y", "--no-install-recommends"]).args(&names));
    if install().is_err() {
        eprintln!("bootstrap: install failed; refreshing the package lists and retrying");
        run::run(&mut apt(&["update"]))?;
        install()?;
    }
    let still: Vec<_> = self::missing().iter().map(|p| p.program).collect();
    if !still.is_empty() {
        bail!(
            "installed {} but still cannot find {}",
            names.join(" "),
            still.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocker_says_what_is_missing_and_how_to_install_it() {
        let missing: Vec<_> = PACKAGES
            .iter()
            .filter(|p| p.name == "frr" || p.name == "curl")
            .collect();
        assert_eq!(install_blocker(true, true, &missing), None);
        let line = install_blocker(false, true, &missing).unwrap();
        assert_eq!(
            line,
            "missing packages: frr (bgpd), curl (curl); install them as root with \
             `apt-get install -y --no-install-recommends frr curl`"
        );
        let line = install_blocker(true, false, &missing).unwrap();
        assert!(line.contains("apt-get is not available"), "{line}");
        assert!(!line.contains('\n'));
    }

    /// A minimal ELF64 header with `types` as its program headers' types.
    fn elf64(types: &[u32]) -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // ELF64
        elf[5] = 1; // little-endian
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            elf.extend(ph);
        }
        elf
    }

    #[test]
    fn static_elf_has_no_interpreter() {
        // PT_PHDR, PT_INTERP, PT_LOAD: dynamic. PT_LOAD, PT_NOTE: static.
        assert!(!is_static_elf(&elf64(&[6, 3, 1])));
        assert!(is_static_elf(&elf64(&[1, 1, 4])));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        // A truncated program header table is not taken for static.
        let mut cut = elf64(&[1, 1]);
        cut.truncate(64 + 56 + 2);
        assert!(!is_static_elf(&cut));
        // The host's /bin/sh is dynamic on Debian.
        if let Ok(sh) = fs::read("/bin/sh") {
            assert!(!is_static_elf(&sh));
        }
    }

    #[test]
    fn every_package_names_a_program() {
        assert_eq!(PACKAGES.len(), 20);
        assert_eq!(PACKAGES.iter().filter(|p| p.static_binary).count(), 1);
        assert!(
            PACKAGES
                .iter()
                .all(|p| !p.program.is_empty() && !p.program.contains('/'))
        );
    }
}
