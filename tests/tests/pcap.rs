//! `lbpath watch --write FILE.pcapng` on real traffic in the lab, the file
//! read back by tshark (Debian's package, as users would): packets at each
//! hop, with their interfaces and comments.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use lbpath_tests::{
    lab::*,
    netns,
    run::{Running, lbpath_bin},
};

const T: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(20);

/// A directory of this test's own, removed even when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("lbpath-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One row per packet: interface name, link type, IP source and
/// destination, comment.
struct Row {
    iface: String,
    linktype: String,
    src: String,
    dst: String,
    comment: String,
}

fn tshark(file: &Path, home: &Path) -> Vec<Row> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(file)
        .args([
            "-T",
            "fields",
            "-E",
            "separator=/t",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.encap_type",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "frame.comment",
        ])
        // Its own profile directory: the kernel matrix's guests mount / read-only.
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("tshark runs (Debian package tshark; cargo xtask bootstrap installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tshark failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let get = |i: usize| f.get(i).copied().unwrap_or("").to_string();
            Row {
                iface: get(0),
                linktype: get(1),
                src: get(2),
                dst: get(3),
                comment: get(4),
            }
        })
        .collect()
}

#[test]
fn write_pcapng_read_by_tshark() {
    let lab = Lab::new("pcp", LabSpec::default()).unwrap();
    let dir = TempDir::new("pcap");
    let file = dir.0.join("lb.pcapng");
    let lb = LB.to_string();
    let w = Running::watch(
        &lab.node(),
        &[&lb, "--json", "--write", file.to_str().unwrap()],
    )
    .expect("lbpath attaches");
    let body = netns::http_get(&lab.client(), lab.lb_addr(), T).unwrap();
    assert!(body.contains("hello from pod"), "{body}");
    let flow = w.wait_flow(WAIT, |_| true).expect("a flow is reported");
    let out = w.stop().unwrap();
    assert_eq!(flow["verdict"]["kind"], "answered", "{flow}");
    assert!(
        out.stderr.contains("packets of 1 flow to"),
        "{}",
        out.stderr
    );
    let size = std::fs::metadata(&file).unwrap().len();
    let rows = tshark(&file, &dir.0);
    // Shown only when the test fails.
    println!("{size} bytes, {} packets:", rows.len());
    for r in &rows {
        println!(
            "{}\t{}\t{} → {}\t{}",
            r.iface, r.linktype, r.src, r.dst, r.comment
        );
    }
    assert!(rows.len() >= 6, "a packet per hop, both ways");
    assert!(size < 64 * 1024, "{size} bytes for one flow");
    // Every packet says where it was and about which flow and verdict.
    for r in &rows {
        assert!(!r.iface.is_empty(), "an interface name for each packet");
        assert!(
            r.comment.contains("tcp ") && r.comment.contains("→ 192.0.2.240:80"),
            "{}",
            r.comment
        );
        assert!(r.comment.contains("| answered: "), "{}", r.comment);
    }
    // The request on the uplink, as a frame with its MAC header.
    assert!(
        rows.iter().any(|r| r.iface == "eth0"
            && r.linktype == "1"
            && r.dst == "192.0.2.240"
            && r.comment.starts_with("request 1: arrived eth0")),
        "no Ethernet frame of the request on eth0"
    );
    // The DNAT named in a comment, with the Service; the rewritten packet
    // carries the pod's address (raw IP at netfilter hooks, a frame on the
    // pod's veth).
    assert!(
        rows.iter().any(
            |r| r.comment.contains("DNAT 192.0.2.240:80 → 10.244.1.5:8080")
                && r.comment.contains("default/web:http")
        ),
        "no DNAT comment"
    );
    assert!(
        rows.iter()
            .any(|r| r.iface == "vethpod" && r.dst == "10.244.1.5"),
        "the DNATed request on vethpod"
    );
    // The reply, back to the client.
    assert!(
        rows.iter()
            .any(|r| r.comment.starts_with("reply 1:") && r.src == "192.0.2.240"),
        "the reply leaving with the LB IP as its source"
    );
}

/// A file that cannot be created: one line naming it, exit 2, nothing loaded.
#[test]
fn unwritable_file_is_one_line_and_exit_2() {
    let out = Command::new(lbpath_bin())
        .args([
            "watch",
            "192.0.2.240",
            "--write",
            "/nonexistent-lbpath-dir/x.pcapng",
        ])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("cannot write '/nonexistent-lbpath-dir/x.pcapng'"),
        "{err}"
    );
}
