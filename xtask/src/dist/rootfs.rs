//! What goes into the debug image: the static lbpath, and the tools it reads
//! the node's rules with (kubeproxy::read_node), taken from this Debian host
//! with exactly the shared libraries they load, so the image needs nothing
//! from the node it runs on.
//!
//! - `iptables-nft-save`, `ip6tables-nft-save` → xtables-nft-multi, and
//!   `iptables-legacy-save`, `ip6tables-legacy-save` → xtables-legacy-multi,
//!   under the names lbpath looks for first (`find_save_tool`), in
//!   `/usr/sbin`, which it searches whatever PATH says; `nft`; and `ipset`
//!   (`ipset save`: kube-proxy's IPVS-mode sets, which name LB IPs).
//! - The iptables extensions (`libxt_*`, `libipt_*`, `libip6t_*`), which the
//!   save tools `dlopen` from libxtables' compiled-in directory to print
//!   each match and target (kube-proxy's rules load comment, mark, MARK,
//!   statistic, conntrack, addrtype, tcp, udp, sctp, MASQUERADE, REJECT and
//!   standard; other CNIs' set, physdev, socket, …): all of them, as a node
//!   may hold any, at 1.5 MiB unpacked.
//! - The closure of all of those under `ldd`, the dynamic loader included,
//!   each at the path the loader found it.
//! - `/etc`: nsswitch.conf (files only, which glibc has built in), and
//!   netbase's protocols and services, which nft reads to name protocols.

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use super::oci::Tree;
use crate::run;

/// Where lbpath is in the image (the entrypoint).
pub const LBPATH: &str = "/usr/local/bin/lbpath";
/// Where the tools go: a directory lbpath searches even without PATH.
const SBIN: &str = "/usr/sbin";
/// The save tools, by the names lbpath tries first.
const SAVE_TOOLS: &[&str] = &[
    "iptables-nft-save",
    "ip6tables-nft-save",
    "iptables-legacy-save",
    "ip6tables-legacy-save",
];
const NFT: &str = "nft";
/// kube-proxy's IPVS mode keeps its addresses in ipsets (`ipvs::read_ipsets`).
const IPSET: &str = "ipset";
/// libxtables' extension directory (XTABLES_LIBDIR) in Debian's iptables.
pub const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";
/// Extensions of iptables/ip6tables (ebtables' and arptables' are not used).
const EXTENSION_PREFIXES: &[&str] = &["libxt_", "libipt_", "libip6t_"];
/// Only the files databases, which glibc 2.34+ has built in (no libnss_*.so).
const NSSWITCH: &str = "\
# lbpath debug image: local files only (nft names protocols and services).
passwd:     files
group:      files
hosts:      files
networks:   files
protocols:  files
services:   files
ethers:     files
rpc:        files
";
/// Host files copied as they are (Debian's netbase).
const ETC_FILES: &[&str] = &["/etc/protocols", "/etc/services"];
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The image's file tree, from the static lbpath at `lbpath` and this
/// host's tools.
pub fn tree(lbpath: &Path) -> Result<Tree> {
    let mut t = Tree::new();
    t.file(LBPATH, fs::read(lbpath)?, 0o755)?;

    // The tools, each a link to the multi-call binary it is on the host.
    let mut elves: BTreeSet<PathBuf> = BTreeSet::new();
    for name in SAVE_TOOLS.iter().chain([&NFT, &IPSET]) {
        let host = run::find_program(name, &["/usr/sbin", "/sbin"]).with_context(|| {
            format!("{name} is not installed here: the image takes it from this host (Debian packages iptables, nftables, ipset)")
        })?;
        let real = fs::canonicalize(&host)?;
        let file_name = real
            .file_name()
            .and_then(|n| n.to_str())
            .context("tool name")?;
        if file_name != *name {
            t.symlink(&format!("{SBIN}/{name}"), file_name)?;
        }
        add_host_file(&mut t, &real, &format!("{SBIN}/{file_name}"))?;
        elves.insert(real);
    }

    let extensions = extensions(Path::new(XTABLES_DIR))?;
    for ext in &extensions {
        add_host_file(&mut t, ext, &ext.to_string_lossy())?;
    }
    elves.extend(extensions);

    for lib in closure(&elves.into_iter().collect::<Vec<_>>())? {
        add_host_file(&mut t, &lib, &lib.to_string_lossy())?;
    }

    t.file("/etc/nsswitch.conf", NSSWITCH.as_bytes().to_vec(), 0o644)?;
    for f in ETC_FILES {
        let data = fs::read(f).with_context(|| {
            format!("cannot read {f}, which nft needs in the image (Debian package netbase)")
        })?;
        t.file(f, data, 0o644)?;
    }
    // Mount points the container runtime (or the test) fills, and a /tmp.
    for d in ["/proc", "/sys", "/dev", "/run"] {
        t.dir(d, 0o755)?;
    }
    t.dir("/tmp", 0o1777)?;
    Ok(t)
}

/// A host file (symlinks followed) at `image_path`, with its permission bits.
fn add_host_file(t: &mut Tree, host: &Path, image_path: &str) -> Result<()> {
    let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
    let mode = fs::metadata(host)?.permissions().mode() & 0o7777;
    t.file(image_path, data, mode)
}

/// The iptables extensions in `dir`, sorted.
fn extensions(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).with_context(|| {
        format!(
            "cannot list {}: the image takes the iptables extensions from Debian's iptables package",
            dir.display()
        )
    })?;
    let mut out = Vec::new();
    for e in entries {
        let path = e?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with(".so") && EXTENSION_PREFIXES.iter().any(|p| name.starts_with(p)) {
            out.push(path);
        }
    }
    out.sort();
    ensure!(
        out.iter().any(|p| p.ends_with("libxt_comment.so")),
        "no libxt_comment.so in {}: the iptables extensions are not where Debian's iptables puts them",
        dir.display()
    );
    Ok(out)
}

/// Every shared library the ELF files load, as `ldd` resolves them on this
/// host (the dynamic loader included), sorted.
pub fn closure(elves: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut libs = BTreeSet::new();
    // One ldd per file: with several, ldd stops at the first static one.
    for elf in elves {
        let out = run::capture(Command::new("ldd").arg(elf))
            .with_context(|| format!("ldd {}", elf.display()))?;
        libs.extend(parse_ldd(&out).with_context(|| format!("ldd {}", elf.display()))?);
    }
    Ok(libs.into_iter().collect())
}

/// The libraries in one file's `ldd` output: `name => /path (0x…)` and the
/// loader's `/path (0x…)`; the vDSO has no file. A library ldd cannot find
/// is an error.
pub fn parse_ldd(out: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") || line.contains("not a dynamic executable") {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("{} is not found", name.trim());
                }
                rest
            }
            None => line,
        };
        let path = target.split(" (0x").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if !(path.is_empty()
            || path.starts_with("linux-vdso")
            || path.starts_with("linux-gate"))
        {
            bail!("unexpected ldd line: {line:?}");
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFT_LDD: &str = "\
\tlinux-vdso.so.1 (0x00007fe907e6e000)
\tlibnftables.so.1 => /lib/x86_64-linux-gnu/libnftables.so.1 (0x00007fe907d7b000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007fe907b5f000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007fe907e70000)
";

    #[test]
    fn ldd_output_gives_paths_and_the_loader() {
        assert_eq!(
            parse_ldd(NFT_LDD).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libnftables.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        assert!(
            parse_ldd("\tnot a dynamic executable\n")
                .unwrap()
                .is_empty()
        );
        let err = parse_ldd("\tlibgmp.so.10 => not found\n").unwrap_err();
        assert_eq!(err.to_string(), "libgmp.so.10 is not found");
        assert!(parse_ldd("\tsomething odd\n").is_err());
    }

    #[test]
    fn host_closure_of_a_dynamic_binary_has_libc_and_the_loader() {
        // Debian's /bin/sh is dynamic.
        let Ok(libs) = closure(&[PathBuf::from("/bin/sh")]) else {
            return;
        };
        assert!(libs.iter().any(|l| l.ends_with("libc.so.6")), "{libs:?}");
        assert!(
            libs.iter()
                .any(|l| l.to_string_lossy().contains("ld-linux")),
            "{libs:?}"
        );
    }

    #[test]
    fn nsswitch_uses_files_only() {
        for line in NSSWITCH.lines().filter(|l| !l.starts_with('#')) {
            let (_, sources) = line.split_once(':').unwrap();
            assert_eq!(sources.trim(), "files", "{line}");
        }
        assert!(NSSWITCH.contains("protocols:") && NSSWITCH.contains("services:"));
    }

    #[test]
    fn tools_go_where_lbpath_looks_for_them() {
        // kubeproxy::find_tool searches PATH, then /usr/sbin, /sbin and
        // /usr/local/sbin: /usr/sbin works with or without the image's PATH.
        assert!(PATH_ENV.contains(":/usr/sbin:"));
        assert_eq!(SBIN, "/usr/sbin");
        assert!(SAVE_TOOLS.iter().all(|t| t.ends_with("-save")));
    }
}
