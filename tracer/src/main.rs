//! `lbpath`: the path of packets to a LoadBalancer IP through this node.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lbpath::{
    UsageError,
    cli::{CommonArgs, DiagnoseArgs, WatchArgs},
    diagnose, watch,
};

#[derive(Parser)]
#[command(
    name = "lbpath",
    version,
    about = "Trace packets to a Kubernetes LoadBalancer IP through this node: where they arrive, which kube-proxy rule DNATs them, where they go and why they stop.",
    after_help = "Needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) and a kernel with BTF (5.10+; netfilter hooks are observed from 6.4, inferred before).\nExit codes: 0 ok, 1 a problem found (diagnose), 2 bad input or cannot run, 3 no traffic seen (diagnose)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Live path of every new flow to the IP, request and reply, until Ctrl-C.
    Watch(WatchArgs),
    /// One-shot diagnosis: static checks, a bounded live watch, a verdict and a next step.
    Diagnose(DiagnoseArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line, not clap's usage block.
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or("invalid arguments");
            eprintln!(
                "lbpath: {} (see lbpath --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lbpath: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let common: &CommonArgs = match &cli.command {
        Command::Watch(w) => &w.common,
        Command::Diagnose(d) => &d.common,
    };
    init_logging(common.verbose);
    let result = rt.block_on(async {
        match &cli.command {
            Command::Watch(w) => watch::run(w).await,
            Command::Diagnose(d) => diagnose::run(d).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if let Some(u) = e.downcast_ref::<UsageError>() {
                eprintln!("lbpath: {u}");
            } else {
                eprintln!("lbpath: {e:#}");
            }
            ExitCode::from(2)
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LBPATH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
