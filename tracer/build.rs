//! Builds the kernel programs (tracer-ebpf) for the BPF target and leaves the
//! object in OUT_DIR, where the loader embeds it.

use std::{env, path::PathBuf};

/// The pinned nightly the eBPF programs are built with (`rust-toolchain-ebpf`
/// at the workspace root, which xtask's bootstrap installs and builds
/// bpf-linker against). Included rather than read so that changing it
/// rebuilds this script, and so the object.
const EBPF_TOOLCHAIN: &str = include_str!("../rust-toolchain-ebpf").trim_ascii();

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest.parent().expect("tracer sits in the workspace");
    // The xtask installs bpf-linker here; a plain `cargo build` finds it too.
    let tools = workspace.join("target/lbpath-tools/bin");
    println!(
        "cargo:rerun-if-changed={}",
        tools.join("bpf-linker").display()
    );
    if tools.join("bpf-linker").exists() {
        let path = env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![tools];
        dirs.extend(env::split_paths(&path));
        // SAFETY: build scripts are single-threaded here.
        unsafe { env::set_var("PATH", env::join_paths(dirs)?) };
    }
    // aya-build watches the eBPF crate; the schema it shares lives here.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("tracer-common").display()
    );
    let ebpf_dir = workspace.join("tracer-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir.to_str().expect("utf-8 path"),
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
