//! Reads the image back with the tools users have, as `cargo xtask test`
//! does before the integration tests (which run lbpath from it):
//! `skopeo inspect`, `skopeo copy` to an OCI directory then `umoci unpack`,
//! and `podman load`.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::rootfs::LBPATH;
use crate::run;

/// Every check, in `scratch` (emptied first and removed after).
pub fn image(archive: &Path, scratch: &Path) -> Result<()> {
    let src = format!("oci-archive:{}", archive.display());
    skopeo_inspect(&src)?;
    if scratch.exists() {
        fs::remove_dir_all(scratch)?;
    }
    fs::create_dir_all(scratch)?;
    let unpacked = skopeo_copy_umoci_unpack(&src, scratch);
    let _ = fs::remove_dir_all(scratch);
    unpacked?;
    podman_load(archive)?;
    println!("image: skopeo inspect, skopeo copy + umoci unpack and podman load ok");
    Ok(())
}

fn json(cmd: &mut Command) -> Result<Value> {
    let out = run::capture(cmd)?;
    serde_json::from_str(&out).with_context(|| format!("`{}` printed no JSON", run::display(cmd)))
}

fn skopeo_inspect(src: &str) -> Result<()> {
    let info = json(Command::new("skopeo").args(["inspect", src]))?;
    ensure!(
        info["Os"] == "linux" && info["Architecture"] == "amd64",
        "skopeo inspect: not a linux/amd64 image: {info}"
    );
    let layers = info["Layers"].as_array().map_or(0, Vec::len);
    ensure!(layers == 1, "skopeo inspect: {layers} layers, expected 1");
    let config = json(Command::new("skopeo").args(["inspect", "--config", src]))?;
    check_entrypoint(&config["config"]["Entrypoint"], "skopeo inspect --config")
}

fn check_entrypoint(v: &Value, who: &str) -> Result<()> {
    ensure!(
        v.as_array().is_some_and(|a| a.len() == 1 && a[0] == LBPATH),
        "{who}: the entrypoint is {v}, not [\"{LBPATH}\"]"
    );
    Ok(())
}

fn skopeo_copy_umoci_unpack(src: &str, scratch: &Path) -> Result<()> {
    let layout = scratch.join("layout");
    let bundle = scratch.join("bundle");
    run::capture(
        Command::new("skopeo")
            .args(["copy", "--quiet", src])
            .arg(format!("oci:{}:lbpath", layout.display())),
    )?;
    run::capture(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:lbpath", layout.display()))
            .arg(&bundle),
    )?;
    let rootfs = bundle.join("rootfs");
    for f in [
        LBPATH,
        "/usr/sbin/nft",
        "/usr/sbin/iptables-nft-save",
        "/lib64/ld-linux-x86-64.so.2",
    ] {
        let p = rootfs.join(f.trim_start_matches('/'));
        ensure!(p.exists(), "umoci unpack: {f} is not in the unpacked image");
    }
    let config: Value = serde_json::from_slice(&fs::read(bundle.join("config.json"))?)?;
    check_entrypoint(&config["process"]["args"], "umoci unpack (config.json)")
}

fn podman_load(archive: &Path) -> Result<()> {
    let images = Command::new("podman")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let out = run::capture(
        Command::new("podman")
            .args(["load", "--quiet", "--input"])
            .arg(archive),
    )?;
    let Some(name) = loaded_name(&out) else {
        bail!("podman load named no image: {out:?}");
    };
    let inspected = run::capture(
        Command::new("podman")
            .args([
                "image",
                "inspect",
                "--format",
                "{{json .Config.Entrypoint}}",
            ])
            .arg(&name),
    );
    // Leave podman's store as it was (an image of that name loaded before
    // stays), whatever the inspection said.
    if !images.lines().any(|l| l.trim() == name) {
        run::capture(Command::new("podman").args(["rmi", "--force"]).arg(&name))?;
    }
    let entrypoint: Value = serde_json::from_str(inspected?.trim())?;
    check_entrypoint(&entrypoint, "podman image inspect")
}

/// The image `podman load` names: "Loaded image: localhost/lbpath:0.1.0"
/// (older podman: "Loaded image(s): …").
fn loaded_name(out: &str) -> Option<String> {
    out.lines().rev().find_map(|l| {
        let (_, name) = l.split_once("Loaded image")?;
        let name = name
            .trim_start_matches("(s)")
            .trim_start_matches(':')
            .trim();
        (!name.is_empty()).then(|| name.split(',').next().unwrap_or(name).trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_load_output_names_the_image() {
        assert_eq!(
            loaded_name("Loaded image: localhost/lbpath:0.1.0\n").as_deref(),
            Some("localhost/lbpath:0.1.0")
        );
        assert_eq!(
            loaded_name(
                "Getting image source signatures\nLoaded image(s): localhost/lbpath:0.1.0\n"
            )
            .as_deref(),
            Some("localhost/lbpath:0.1.0")
        );
        assert_eq!(loaded_name("Error: nothing\n"), None);
    }

    #[test]
    fn entrypoint_must_be_lbpath_alone() {
        assert!(check_entrypoint(&serde_json::json!([LBPATH]), "t").is_ok());
        assert!(check_entrypoint(&serde_json::json!(["/bin/sh", LBPATH]), "t").is_err());
        assert!(check_entrypoint(&Value::Null, "t").is_err());
    }
}
