//! Host packages the integration tests and the demo lab drive (Debian names).
//!
//! Each is detected by a program it installs rather than by asking dpkg:
//! that is instant, and on a distribution without apt it still tells what
//! is really missing.

use std::process::Command;

use anyhow::{Result, bail};

use crate::run;

pub struct Package {
    /// Debian/Ubuntu package name.
    pub name: &'static str,
    /// A program the package installs.
    pub program: &'static str,
}

pub const PACKAGES: &[Package] = &[
    Package {
        name: "iproute2",
        program: "ip",
    },
    Package {
        name: "iptables",
        program: "iptables",
    },
    Package {
        name: "nftables",
        program: "nft",
    },
    // The BGP tests run their own bgpd, which frr keeps out of PATH.
    Package {
        name: "frr",
        program: "bgpd",
    },
    Package {
        name: "conntrack",
        program: "conntrack",
    },
    Package {
        name: "curl",
        program: "curl",
    },
];

/// Where the programs live when PATH lacks them (a user's PATH often has no
/// sbin; frr keeps its daemons in /usr/lib/frr).
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/lib/frr"];

pub fn missing() -> Vec<&'static Package> {
    PACKAGES
        .iter()
        .filter(|p| run::find_program(p.program, EXTRA_DIRS).is_none())
        .collect()
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

    #[test]
    fn every_package_names_a_program() {
        assert_eq!(PACKAGES.len(), 6);
        assert!(
            PACKAGES
                .iter()
                .all(|p| !p.program.is_empty() && !p.program.contains('/'))
        );
    }
}
