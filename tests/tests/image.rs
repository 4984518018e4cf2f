//! The debug image (`target/dist/lbpath-image.tar`, from `cargo xtask dist`)
//! works with no host binaries: its layer is unpacked into a root, and the
//! image's entrypoint runs there under chroot in the lab's node namespace,
//! as in a container: its own mount namespace with /proc, a read-only
//! /sys, /sys/kernel/btf bound read-only and /dev; the root read-only; no
//! new privileges and only the capabilities `deploy/lbpath.yaml` grants.
//! lbpath must read the lab's kube-proxy rules with the image's own
//! iptables-nft-save and nft, name the Service and show the DNAT to the pod.
//!
//! `cargo xtask test` builds the image and passes it in `LBPATH_IMAGE`; when
//! that is set the archive must exist. Run outside xtask without it, the
//! tests say they are skipped and pass.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use lbpath_tests::{lab::*, netns, run::json_lines};
use serde_json::Value;

const IMAGE_ENV: &str = "LBPATH_IMAGE";
const T: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(30);

/// Sets up the root as a container runtime would, then runs `$@` in it.
/// Everything happens in a private mount namespace (`unshare --mount`,
/// started below), so the mounts vanish with the process, however it ends.
const CONTAINER_SH: &str = r#"set -eu
root=$1; caps=$2; shift 2
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount --bind -o ro /sys/kernel/btf "$root/sys/kernel/btf"
mount --bind /dev "$root/dev"
exec setpriv --no-new-privs --inh-caps=-all --bounding-set="-all,$caps" -- chroot "$root" "$@"
"#;

/// The image's archive, or None (with a note) when not run by xtask.
fn image_archive() -> Option<PathBuf> {
    let Some(path) = std::env::var_os(IMAGE_ENV) else {
        eprintln!(
            "skipped: {IMAGE_ENV} is not set (`cargo xtask test` builds the image and sets it)"
        );
        return None;
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{IMAGE_ENV}={} does not exist: run `cargo xtask dist`",
        path.display()
    );
    Some(path)
}

/// A directory removed on drop, unless something is still mounted below it
/// (never expected: the mounts live in the child's own mount namespace).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("lbpath-image-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.0.to_string_lossy();
        if mounts.lines().any(|l| l.contains(dir.as_ref())) {
            eprintln!("not removing {dir}: something is mounted below it");
            return;
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// The blob a descriptor points at, in an unpacked OCI layout.
fn blob(layout: &Path, descriptor: &Value) -> PathBuf {
    let digest = descriptor["digest"].as_str().unwrap();
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    layout.join("blobs/sha256").join(hex)
}

/// Unpacks the oci-archive (index.json → manifest → config and layers) into
/// `scratch/root`; returns the root and the config's entrypoint.
fn unpack(archive: &Path, scratch: &Path) -> (PathBuf, Vec<String>) {
    let layout = scratch.join("layout");
    let root = scratch.join("root");
    fs::create_dir_all(&layout).unwrap();
    fs::create_dir_all(&root).unwrap();
    sh(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&layout));
    assert_eq!(
        read_json(&layout.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    let index = read_json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    let manifest = read_json(&blob(&layout, &manifests[0]));
    let config = read_json(&blob(&layout, &manifest["config"]));
    for layer in manifest["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        sh(Command::new("tar")
            .arg("-xzf")
            .arg(blob(&layout, layer))
            .arg("-C")
            .arg(&root));
    }
    let entrypoint: Vec<String> =
        serde_json::from_value(config["config"]["Entrypoint"].clone()).unwrap();
    assert_eq!(entrypoint, ["/usr/local/bin/lbpath"]);
    (root, entrypoint)
}

/// The capabilities deploy/lbpath.yaml adds (its one `add: [...]` line), as
/// setpriv's list, plus sys_chroot, which the chroot itself needs.
fn daemonset_caps() -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/lbpath.yaml");
    let text = fs::read_to_string(&manifest).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("add: ["))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one `add: [...]` line in {}",
        manifest.display()
    );
    let list = lines[0]
        .trim_start_matches("add: [")
        .split(']')
        .next()
        .unwrap();
    let mut caps: Vec<String> = list
        .split(',')
        .map(|c| format!("+{}", c.trim().to_ascii_lowercase()))
        .collect();
    assert!(caps.iter().any(|c| c == "+bpf"), "{caps:?}");
    caps.push("+sys_chroot".into());
    caps.join(",")
}

/// `args` run in the image's root inside namespace `ns`, as in a container.
fn in_container(ns: &str, root: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        ns,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
    ])
    .args(["sh", "-c", CONTAINER_SH, "sh"])
    .arg(root)
    .arg(daemonset_caps())
    .args(args)
    .env("NO_COLOR", "1")
    .stdin(Stdio::null());
    cmd
}

/// A process whose output is collected as it comes; killed on drop.
struct Running {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let pump = |r: Box<dyn std::io::Read + Send>| {
            let buf = Arc::new(Mutex::new(String::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    let mut b = b.lock().unwrap();
                    b.push_str(&line);
                    b.push('\n');
                }
            });
            buf
        };
        let stdout = pump(Box::new(child.stdout.take().unwrap()));
        let stderr = pump(Box::new(child.stderr.take().unwrap()));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Ctrl-C (every exec keeps the pid: ip, unshare, sh, setpriv, chroot
    /// and lbpath), then wait for the end of its output.
    fn stop(mut self) -> (String, String) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let exited = netns::wait_for(Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten()
        });
        assert!(exited.is_some(), "lbpath did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(200));
        (self.stdout(), self.stderr())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn hops<'a>(flow: &'a Value, kind: &str) -> Vec<&'a Value> {
    flow["hops"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["hop"] == kind)
        .collect()
}

/// lbpath from the image watches the LB IP while the client sends a
/// request; the flow names the Service and the DNAT by `chain_word`.
fn watch_from_image(tag: &str, mode: KubeProxy, chain_word: &str) {
    let Some(archive) = image_archive() else {
        return;
    };
    let scratch = Scratch::new(tag);
    let (root, entrypoint) = unpack(&archive, &scratch.0);
    let lab = Lab::new(
        tag,
        LabSpec {
            kube_proxy: mode,
            ..Default::default()
        },
    )
    .unwrap();
    let mut args: Vec<&str> = entrypoint.iter().map(String::as_str).collect();
    let lb = LB.to_string();
    args.extend(["watch", &lb, "--json", "-v"]);
    let w = Running::start(in_container(&lab.node(), &root, &args));
    let attached = netns::wait_for(WAIT, || {
        w.stderr().contains("lbpath: watching").then_some(())
    });
    assert!(attached.is_some(), "lbpath did not attach: {}", w.stderr());

    let body = netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    assert!(body.contains("hello from pod"), "{body}");
    let flow = netns::wait_for(WAIT, || {
        json_lines(&w.stdout())
            .into_iter()
            .find(|v| v.get("flow").is_some())
    });
    let (stdout, stderr) = w.stop();
    let flow = flow.unwrap_or_else(|| panic!("no flow reported:\n{stdout}\n{stderr}"));
    println!("flow: {flow}\nstderr: {stderr}");

    // The rules were read with the image's tools, and nothing was missing.
    for line in stderr.lines().filter(|l| l.contains("rules:")) {
        assert!(
            !["not found", "cannot", "failed", "could not"]
                .iter()
                .any(|w| line.contains(w)),
            "{line}"
        );
    }
    assert!(
        stderr.contains("default/web:http"),
        "the watching line names the Service: {stderr}"
    );
    assert_eq!(flow["service"]["name"], "default/web:http", "{flow}");
    assert_eq!(flow["verdict"]["kind"], "answered", "{flow}");
    let dnat = hops(&flow, "dnat");
    let request = dnat
        .iter()
        .find(|h| h["dir"] == "request")
        .unwrap_or_else(|| panic!("no DNAT: {flow}"));
    assert_eq!(request["from"], "192.0.2.240:80");
    assert_eq!(request["to"], "10.244.1.5:8080");
    let by = request["by"].as_str().unwrap_or_default();
    assert!(
        by.contains(chain_word) && by.contains("default/web:http"),
        "{by}"
    );
    assert_eq!(hops(&flow, "in_pod")[0]["addr"], "10.244.1.5:8080");
}

#[test]
fn watch_with_the_image_iptables_nft() {
    watch_from_image("imgi", KubeProxy::IptablesNft, "KUBE-SEP-");
}

#[test]
fn watch_with_the_image_nftables_mode() {
    watch_from_image("imgn", KubeProxy::Nftables, "endpoint-");
}

/// Each rule reader in the image runs there, on its own libraries, and
/// prints what lbpath parses.
#[test]
fn every_rule_reader_runs_in_the_image() {
    let Some(archive) = image_archive() else {
        return;
    };
    let scratch = Scratch::new("imgt");
    let (root, _) = unpack(&archive, &scratch.0);
    let lab = Lab::new("imgt", LabSpec::default()).unwrap();
    let run = |args: &[&str]| sh(&mut in_container(&lab.node(), &root, args));

    let saved = run(&["/usr/sbin/iptables-nft-save", "-c"]);
    assert!(
        saved.contains("-A KUBE-SERVICES") && saved.contains("--comment \"default/web:http"),
        "{saved}"
    );
    // kube-proxy's matches and targets print through the image's extensions.
    for ext in [
        "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT",
        "-m mark ! --mark",
        "-m tcp --dport 80",
        "-j MARK --set-xmark",
        "-j MASQUERADE",
        "-j DNAT --to-destination 10.244.1.5:8080",
    ] {
        assert!(saved.contains(ext), "{ext}: {saved}");
    }
    run(&["/usr/sbin/ip6tables-nft-save", "-c"]);
    // Legacy tables: none in the lab, but the tool runs and says so cleanly.
    run(&["/usr/sbin/iptables-legacy-save", "-c"]);
    run(&["/usr/sbin/ip6tables-legacy-save", "-c"]);
    let nft: Value = serde_json::from_str(&run(&["/usr/sbin/nft", "-j", "list", "ruleset"]))
        .expect("nft -j prints JSON");
    let items = nft["nftables"].as_array().unwrap();
    assert!(
        items.iter().any(|i| i.get("rule").is_some()),
        "nft lists the rules: {nft}"
    );
    // No shell or other host program is in the image.
    for absent in ["bin/sh", "usr/bin/env", "sbin/iptables"] {
        assert!(!root.join(absent).exists(), "{absent} is in the image");
    }
}
