use std::{net::IpAddr, process::ExitCode};

use anyhow::Result;
use lbpath::{btf::KernelBtf, events, loader, nfplan};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbpath: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<()> {
    let ip: IpAddr = std::env::args().nth(1).unwrap().parse()?;
    let btf = KernelBtf::open_vmlinux()?;
    let layout = btf.layout()?;
    let plan = nfplan::NfPlan::new(nfplan::builtin_occupants());
    let mut t = loader::Tracer::load(
        &loader::LoadOptions { lb: ip, port: 0, proto: 0, trace_packets: 4, drop_events: 4, arp: true, bgp: false, plan },
        layout,
    )?;
    for n in &t.notices { eprintln!("notice: {n}"); }
    let ring = t.take_events()?;
    // SAFETY: the ring buffer owns its fd for as long as AsyncFd holds it.
    let fd = unsafe { tokio::io::unix::AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut fd = fd;
    eprintln!("attached");
    loop {
        let mut guard = fd.readable_mut().await?;
        let r = guard.get_inner_mut();
        while let Some(item) = r.next() {
            println!("{:?}", events::decode(&item));
        }
        guard.clear_ready();
    }
}
