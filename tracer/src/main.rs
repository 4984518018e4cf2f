//! `lbpath`: the path of packets to a LoadBalancer IP through this node.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
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
    after_help = "Needs root (or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN) and a kernel with BTF (5.10+; netfilter hooks are observed from 6.4, inferred before).\nExit codes: 0 ok, 1 a problem found (diagnose), 2 bad input or cannot run, 3 no traffic seen (diagnose), 4 inconclusive: traffic seen but not all of it could be observed (diagnose)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// As kubectl shows them: a comment saying what, then the command line.
const WATCH_EXAMPLES: &str = "\
Examples:
  # Every new flow to an LB IP, hop by hop, until Ctrl-C
  sudo lbpath watch 192.168.1.240

  # Only port 443 from one network, as JSON lines
  sudo lbpath watch 192.168.1.240 --port 443 --client 10.1.0.0/16 -o json

  # A whole MetalLB pool, with its BGP sessions and UPDATEs
  sudo lbpath watch 192.168.1.240/28 --bgp

  # Every LB IP on the node, Prometheus metrics on :9464 (as the DaemonSet)
  sudo lbpath watch --all --metrics :9464 --json";

const DIAGNOSE_EXAMPLES: &str = "\
Examples:
  # Checks, 10 s of live traffic (send some now), a verdict, an exit code
  sudo lbpath diagnose 192.168.1.240

  # Stop at the first flow that reaches a verdict, or after 30 s
  sudo lbpath diagnose 192.168.1.240 --until-first --duration 30s

  # Every LoadBalancer IP on the node, one JSON object for scripts
  sudo lbpath diagnose --all -o json";

#[derive(Subcommand)]
enum Command {
    /// Live path of every new flow to the IP, request and reply, until Ctrl-C.
    #[command(after_help = WATCH_EXAMPLES)]
    Watch(WatchArgs),
    /// One-shot diagnosis: static checks, a bounded live watch, a verdict and a next step.
    #[command(after_help = DIAGNOSE_EXAMPLES)]
    Diagnose(DiagnoseArgs),
    /// Print a shell completion script to stdout.
    ///
    /// For example `lbpath completions bash > /etc/bash_completion.d/lbpath`,
    /// `lbpath completions zsh > "${fpath[1]}/_lbpath"` or
    /// `lbpath completions fish > ~/.config/fish/completions/lbpath.fish`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: lbpath(1), or lbpath-COMMAND(1).
    /// `cargo xtask dist` writes the pages with it.
    #[command(hide = true)]
    Man {
        /// A subcommand, for its own page.
        #[arg(value_name = "COMMAND")]
        command: Option<String>,
    },
}

fn main() -> ExitCode {
    // Help fits the same width as the output: the terminal's, or 80.
    let cmd = Cli::command().term_width(lbpath::render_wrap::output_width());
    let cli = match cmd
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
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
            eprintln!("lbpath: {} (see lbpath --help)", one_line(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    // These two only print: no runtime, no logging, no privileges.
    match &cli.command {
        Command::Completions { shell } => return completions(*shell),
        Command::Man { command } => return man_page(command.as_deref()),
        Command::Watch(_) | Command::Diagnose(_) => {}
    }
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
        Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
    };
    init_logging(common.verbose);
    let result = rt.block_on(async {
        match &cli.command {
            Command::Watch(w) => watch::run(w).await,
            Command::Diagnose(d) => diagnose::run(d).await,
            Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
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

/// clap's error as one line, not its usage block: the first line, with the
/// indented lines that complete it ("… not provided:\n  <LB-IP>...").
fn one_line(msg: &str) -> String {
    let mut lines = msg.lines();
    let mut out = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    if out.ends_with(':') {
        let rest: Vec<&str> = lines
            .take_while(|l| l.starts_with("  "))
            .map(str::trim)
            .collect();
        if !rest.is_empty() {
            out = format!("{} {}", out, rest.join(", "));
        }
    }
    out
}

fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "lbpath", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// lbpath(1), or the page of one subcommand (`lbpath-watch(1)`), which
/// lbpath(1) refers to for each subcommand's options.
fn man_page(command: Option<&str>) -> ExitCode {
    // `lbpath help` is clap's, and needs no page of its own.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Gives subcommands their full names ("lbpath watch", page lbpath-watch).
    cmd.build();
    let page = match command {
        None => cmd,
        Some(name) => match cmd
            .get_subcommands()
            .find(|s| s.get_name() == name && !s.is_hide_set())
        {
            Some(sub) => sub.clone(),
            None => {
                eprintln!("lbpath: no man page for '{name}' (see lbpath --help)");
                return ExitCode::from(2);
            }
        },
    };
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(page).source(concat!("lbpath ", env!("CARGO_PKG_VERSION")));
    if let Err(e) = man.render(&mut out) {
        eprintln!("lbpath: cannot render the man page: {e}");
        return ExitCode::from(2);
    }
    use std::io::Write;
    match std::io::stdout().write_all(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbpath: cannot write the man page: {e}");
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_argument_is_named_on_one_line() {
        let msg = "error: the following required arguments were not provided:\n  <LB-IP>...\n\nUsage: lbpath watch <LB-IP>...\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::one_line(msg),
            "the following required arguments were not provided: <LB-IP>..."
        );
        assert_eq!(
            super::one_line("error: unexpected argument '--bogus' found\n\nUsage: x\n"),
            "unexpected argument '--bogus' found"
        );
    }

    #[test]
    fn help_has_examples_and_fits_80_columns() {
        use clap::CommandFactory;
        let mut cmd = super::Cli::command().term_width(80);
        cmd.build();
        for (name, first) in [
            ("watch", "sudo lbpath watch 192.168.1.240"),
            ("diagnose", "sudo lbpath diagnose 192.168.1.240"),
        ] {
            let sub = cmd.find_subcommand_mut(name).unwrap();
            let help = sub.render_long_help().to_string();
            let examples = help
                .split_once("Examples:\n")
                .unwrap_or_else(|| panic!("{help}"))
                .1;
            assert!(examples.contains(first), "{examples}");
            // Each example: a comment, then a command line of this command.
            let lines: Vec<&str> = examples.lines().filter(|l| !l.is_empty()).collect();
            assert!(lines.len() >= 6, "{examples}");
            for pair in lines.chunks(2) {
                assert!(pair[0].starts_with("  # "), "{pair:?}");
                assert!(
                    pair[1].starts_with(&format!("  sudo lbpath {name} ")),
                    "{pair:?}"
                );
            }
            for l in help.lines() {
                assert!(l.chars().count() <= 80, "{name}: {l:?}");
            }
        }
    }
}
