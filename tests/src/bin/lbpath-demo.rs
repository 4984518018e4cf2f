//! `cargo xtask demo`: lbpath on the built-in lab, for a newcomer without a
//! cluster. Builds the lab, watches the LB IP while a healthy request and
//! broken ones go through, shows lbpath's output, tears everything down.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use lbpath_tests::{
    lab::{self, Lab, LabSpec},
    netns::{self, in_ns},
};

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e:#}");
        std::process::exit(1);
    }
}

fn step(title: &str) {
    println!("\n\x1b[1m━━ {title}\x1b[0m");
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--lbpath" {
            let p = PathBuf::from(args.next().context("--lbpath needs a path")?);
            // SAFETY: single-threaded at this point.
            unsafe { std::env::set_var("LBPATH_BIN", p) };
        }
    }
    lab::remove_stale("lbt-demo-");
    step(
        "building the lab: client, node (kube-proxy iptables-nft rules), pod, router, remote client",
    );
    let lab = Lab::new(
        "demo",
        LabSpec {
            second_uplink: true,
            ..Default::default()
        },
    )?;
    println!(
        "LoadBalancer IP {}:{} → Service default/web:http → pod {}:{} on this node",
        lab::LB,
        lab::LB_PORT,
        lab::POD,
        lab::POD_PORT
    );
    let bin = lbpath_tests::run::lbpath_bin();
    step(&format!(
        "sudo lbpath watch {}   (running on the node)",
        lab::LB
    ));
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.node()])
        .arg(&bin)
        .args(["watch", &lab::LB.to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    // Show lbpath's stderr as it comes, and send traffic only once it says
    // every hook is in place (attaching takes seconds on a slow machine).
    let (attached, ready) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().context("piped stderr")?;
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("{line}");
            if line.starts_with("lbpath: watching") {
                let _ = attached.send(());
            }
        }
    });
    ready
        .recv_timeout(Duration::from_secs(60))
        .context("lbpath did not start watching within 60 s")?;

    step("1. a client on the LAN asks http://192.0.2.240/");
    let r = netns::http_get(&lab.client(), lab.lb_addr(), Duration::from_secs(3));
    println!(
        "client got: {}",
        r.as_ref()
            .map(|b| b.lines().last().unwrap_or("").to_string())
            .unwrap_or_else(|e| e.to_string())
    );
    std::thread::sleep(Duration::from_secs(2));

    step("2. a NetworkPolicy-like rule drops traffic to the pod (iptables FORWARD DROP)");
    in_ns(
        &lab.node(),
        &[
            "iptables-nft",
            "-I",
            "FORWARD",
            "-d",
            "10.244.1.5/32",
            "-p",
            "tcp",
            "--dport",
            "8080",
            "-j",
            "DROP",
        ],
    )?;
    let r = netns::http_get(&lab.client(), lab.lb_addr(), Duration::from_secs(2));
    println!(
        "client got: {}",
        r.map(|_| "an answer".to_string())
            .unwrap_or_else(|e| format!("{e:#}"))
    );
    in_ns(
        &lab.node(),
        &[
            "iptables-nft",
            "-D",
            "FORWARD",
            "-d",
            "10.244.1.5/32",
            "-p",
            "tcp",
            "--dport",
            "8080",
            "-j",
            "DROP",
        ],
    )?;
    std::thread::sleep(Duration::from_secs(2));

    step(
        "3. a client on another network, while the node routes that network out another interface (rp_filter strict)",
    );
    in_ns(
        &lab.node(),
        &[
            "ip",
            "route",
            "add",
            "198.51.100.0/24",
            "via",
            "203.0.113.1",
            "dev",
            "eth1",
        ],
    )?;
    lab.sysctl(&lab.node(), "net.ipv4.conf.all.rp_filter=1")?;
    let r = netns::http_get(&lab.remote(), lab.lb_addr(), Duration::from_secs(2));
    println!(
        "remote client got: {}",
        r.map(|_| "an answer".to_string())
            .unwrap_or_else(|e| format!("{e:#}"))
    );
    std::thread::sleep(Duration::from_secs(3));

    step("stopping lbpath (Ctrl-C)");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    drop(lab);
    step("lab removed");
    Ok(())
}
