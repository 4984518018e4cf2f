//! `cargo xtask`: set a machine up for lbpath, then build, lint, test, fuzz,
//! demo or benchmark it.
//!
//! Every subcommand starts with `bootstrap`, which installs only what is
//! missing and costs well under a second when nothing is, so the one command
//! the README gives is enough on a fresh machine, and CI runs exactly that.

mod bootstrap;
mod cargo_fuzz;
mod deploy;
mod dist;
mod fuzz;
mod kernels;
mod linker;
mod lint;
mod packages;
mod run;
#[cfg(test)]
mod scratch;
mod tasks;
mod toolchain;
mod workspace;

use std::{process::ExitCode, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::{bootstrap::Packages, workspace::Workspace};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set up, build, lint, test, fuzz, demo and benchmark lbpath",
    after_help = "Every subcommand runs `bootstrap` first; it does nothing when all is in place."
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing lbpath needs (idempotent).
    ///
    /// The pinned nightly toolchain (rust-toolchain-ebpf) with rust-src;
    /// bpf-linker built against its LLVM and cargo-fuzz, both into
    /// target/lbpath-tools (or $LBPATH_TOOLS_DIR); and, as root with
    /// apt-get, the host packages the tests and the demo use: iproute2,
    /// iptables, nftables, frr, conntrack, curl, and for the kernel matrix
    /// qemu-system-x86, busybox-static, kmod, xz-utils.
    Bootstrap,
    /// Build the release `lbpath` binary (target/release/lbpath).
    Build,
    /// Build what users run into target/dist: the static `lbpath`, its man
    /// pages and shell completions, and the debug image. No root needed.
    ///
    /// lbpath for x86_64-unknown-linux-musl (in
    /// target/x86_64-unknown-linux-musl/release), stripped, checked static
    /// and run, with lbpath.sha256; lbpath.1 and lbpath-COMMAND.1 from
    /// `lbpath man`; completions/ for bash, zsh and fish from `lbpath
    /// completions`; lbpath-image.tar, an oci-archive (at most 25 MiB) of
    /// lbpath with this Debian host's iptables and nft save tools and exactly
    /// the libraries they load.
    Dist,
    /// Run clippy (host crates, and tracer-ebpf for the BPF target) and
    /// rustfmt's check; all parts run, then a summary names the failed ones.
    ///
    /// `cargo clippy --workspace --exclude tracer-ebpf --all-targets -- -D
    /// warnings`; clippy on tracer-ebpf as aya-build builds it (the pinned
    /// nightly, --release --target bpfel-unknown-none -Z build-std=core, its
    /// rustflags) with -D warnings, in target/lint-ebpf; `cargo fmt --all --
    /// --check`. Adds clippy and rustfmt to the toolchains that lack them.
    Lint,
    /// Run the unit tests, the fuzz targets briefly, the integration tests, then
    /// the kernel matrix. Needs root.
    ///
    /// Runs `cargo test` on the workspace but lbpath-tests, each fuzz target
    /// of tracer/fuzz for 20 s, builds the release `lbpath`, runs lbpath-tests
    /// with LBPATH_BIN set to it (also when fuzzing found a problem), then
    /// `test-kernels` with its defaults (also when the host tests failed).
    /// Before the integration tests it runs `dist`, reads the image back
    /// (skopeo, umoci, podman) and validates deploy/ (kubernetes-validate);
    /// lbpath-tests gets the image in LBPATH_IMAGE.
    Test {
        /// How many integration tests run at once (libtest's --test-threads).
        #[arg(long, short = 'j', default_value_t = 2,
              value_parser = clap::value_parser!(u16).range(1..))]
        jobs: u16,
        /// Skip the kernel matrix (quicker runs while developing).
        #[arg(long)]
        no_kernels: bool,
        /// Passed on to the integration test binaries, e.g. a test name filter.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot Debian's 5.10, 6.1 and 6.12 kernels under qemu and run selected
    /// integration tests in each. Needs root.
    ///
    /// Downloads the newest kernel image of each series from Debian (private
    /// apt configuration, kept in target/kernels), builds lbpath and the
    /// lbpath-tests binaries, boots one VM per kernel with the host's / as a
    /// read-only root and runs each selected test there. Logs are kept in
    /// target/kernels/runs/<series>/.
    TestKernels {
        /// Only these series (repeat or comma-separate), e.g. --kernel 6.1.
        #[arg(long = "kernel", value_name = "SERIES", value_delimiter = ',')]
        kernels: Vec<String>,
        /// How many VMs run at once.
        #[arg(long, short = 'j', default_value_t = kernels::DEFAULT_JOBS,
              value_parser = clap::value_parser!(u16).range(1..))]
        jobs: u16,
        /// Seconds a kernel may take, boot and all tests; then qemu is killed.
        #[arg(long, value_name = "SECS", default_value_t = kernels::DEFAULT_TIMEOUT_SECS,
              value_parser = clap::value_parser!(u64).range(1..))]
        timeout: u64,
        /// Tests to run instead of the built-in list, as binary::test_name
        /// (e.g. watch::healthy_iptables_nft).
        #[arg(last = true, value_name = "SELECTOR")]
        selectors: Vec<String>,
    },
    /// Run the fuzz targets of tracer/fuzz (the parsers of BGP, iptables-save,
    /// nft JSON and ARP records) for longer than `test` does.
    ///
    /// Builds them with cargo-fuzz and the pinned nightly, then runs each
    /// under libFuzzer, its output shown; corpus, crashing inputs and logs
    /// go to target/fuzz/. Fails when an input panics, hangs or eats memory.
    Fuzz {
        /// Only this target (bgp_decode, iptables_save, nft_json, arp).
        #[arg(long, value_name = "NAME",
              value_parser = clap::builder::PossibleValuesParser::new(fuzz::target_names()))]
        target: Option<String>,
        /// Seconds each target runs.
        #[arg(long, value_name = "N", default_value_t = fuzz::DEFAULT_SECONDS,
              value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
    },
    /// Build `lbpath` and run it in the built-in network-namespace lab. Needs root.
    Demo {
        /// Passed on to lbpath-demo.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build `lbpath` and measure it in the lab (lbpath-bench). Needs root.
    Bench {
        /// Passed on to lbpath-bench.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` keeps the whole cause chain on one line.
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(task: Task) -> Result<()> {
    let ws = Workspace::discover()?;
    // Root is checked before bootstrapping so that a run which cannot finish
    // fails at once instead of after minutes of building.
    match task {
        Task::Bootstrap => bootstrap::run(&ws, Packages::Require),
        Task::Build => {
            // Building needs no host packages: a non-root developer gets a
            // warning about them, not a failure.
            bootstrap::run(&ws, Packages::WarnIfMissing)?;
            tasks::build(&ws).map(drop)
        }
        Task::Lint => {
            bootstrap::run(&ws, Packages::WarnIfMissing)?;
            lint::run(&ws)
        }
        Task::Dist => {
            // The image takes iptables and nftables from this host; the
            // build needs no other package, and no root.
            bootstrap::run(&ws, Packages::WarnIfMissing)?;
            dist::run(&ws).map(drop)
        }
        Task::Test {
            jobs,
            no_kernels,
            args,
        } => {
            run::require_root(
                "cargo xtask test",
                "the integration tests create network namespaces and load eBPF programs",
            )?;
            bootstrap::run(&ws, Packages::Require)?;
            let host = tasks::test(&ws, jobs, &args);
            if no_kernels {
                return host;
            }
            if let Err(e) = &host {
                eprintln!("xtask: host tests failed ({e:#}); running the kernel matrix anyway");
            }
            let matrix = kernels::run(&ws, &kernels::Options::default());
            match (host, matrix) {
                (Ok(()), m) => m,
                (Err(h), Ok(())) => Err(h),
                (Err(h), Err(m)) => Err(h.context(format!("{m:#}"))),
            }
        }
        Task::Fuzz { target, seconds } => {
            // Fuzzing needs neither root nor host packages.
            bootstrap::run(&ws, Packages::WarnIfMissing)?;
            let only: Vec<String> = target.into_iter().collect();
            fuzz::run(&ws, &only, seconds, fuzz::Purpose::Explore)
        }
        Task::TestKernels {
            kernels,
            jobs,
            timeout,
            selectors,
        } => {
            run::require_root(
                "cargo xtask test-kernels",
                "it downloads kernels with apt and exports / to the guests",
            )?;
            bootstrap::run(&ws, Packages::Require)?;
            kernels::run(
                &ws,
                &kernels::Options {
                    series: kernels,
                    jobs: jobs.into(),
                    timeout: Duration::from_secs(timeout),
                    selectors,
                },
            )
        }
        Task::Demo { args } => {
            run::require_root(
                "cargo xtask demo",
                "the demo lab creates network namespaces and loads eBPF programs",
            )?;
            bootstrap::run(&ws, Packages::Require)?;
            tasks::lab(&ws, tasks::DEMO_BIN, &args)
        }
        Task::Bench { args } => {
            run::require_root(
                "cargo xtask bench",
                "the benchmark lab creates network namespaces and loads eBPF programs",
            )?;
            bootstrap::run(&ws, Packages::Require)?;
            tasks::lab(&ws, tasks::BENCH_BIN, &args)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Task, clap::Error> {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied())).map(|c| c.task)
    }

    #[test]
    fn test_defaults_to_two_jobs_and_no_args() {
        let Task::Test {
            jobs,
            args,
            no_kernels,
        } = parse(&["test"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(jobs, 2);
        assert!(args.is_empty());
        assert!(!no_kernels);
        let Task::Test { no_kernels, .. } = parse(&["test", "--no-kernels"]).unwrap() else {
            panic!()
        };
        assert!(no_kernels);
    }

    #[test]
    fn test_kernels_takes_series_jobs_timeout_and_selectors() {
        let Task::TestKernels {
            kernels,
            jobs,
            timeout,
            selectors,
        } = parse(&["test-kernels"]).unwrap()
        else {
            panic!()
        };
        assert!(kernels.is_empty() && selectors.is_empty());
        assert_eq!((jobs, timeout), (2, 1500));
        let Task::TestKernels {
            kernels,
            jobs,
            timeout,
            selectors,
        } = parse(&[
            "test-kernels",
            "--kernel",
            "6.1",
            "--kernel",
            "5.10,6.12",
            "-j",
            "1",
            "--timeout",
            "900",
            "--",
            "watch::healthy_iptables_nft",
        ])
        .unwrap()
        else {
            panic!()
        };
        assert_eq!(kernels, ["6.1", "5.10", "6.12"]);
        assert_eq!((jobs, timeout), (1, 900));
        assert_eq!(selectors, ["watch::healthy_iptables_nft"]);
        assert!(parse(&["test-kernels", "--jobs", "0"]).is_err());
        assert!(parse(&["test-kernels", "watch::x"]).is_err());
    }

    #[test]
    fn test_takes_jobs_and_passes_args_after_double_dash() {
        let Task::Test { jobs, args, .. } =
            parse(&["test", "--jobs", "1", "--", "bgp", "--nocapture"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(jobs, 1);
        assert_eq!(args, ["bgp", "--nocapture"]);
        let Task::Test { jobs, .. } = parse(&["test", "-j", "4"]).unwrap() else {
            panic!()
        };
        assert_eq!(jobs, 4);
    }

    #[test]
    fn test_rejects_zero_jobs_and_stray_args() {
        assert!(parse(&["test", "--jobs", "0"]).is_err());
        // A filter must follow `--`, so a typo in a flag is not taken for one.
        assert!(parse(&["test", "bgp"]).is_err());
    }

    #[test]
    fn demo_and_bench_pass_args_on() {
        let Task::Demo { args } = parse(&["demo", "--", "--keep"]).unwrap() else {
            panic!()
        };
        assert_eq!(args, ["--keep"]);
        let Task::Bench { args } = parse(&["bench"]).unwrap() else {
            panic!()
        };
        assert!(args.is_empty());
    }

    #[test]
    fn fuzz_takes_a_known_target_and_seconds() {
        let Task::Fuzz { target, seconds } = parse(&["fuzz"]).unwrap() else {
            panic!()
        };
        assert_eq!((target, seconds), (None, fuzz::DEFAULT_SECONDS));
        let Task::Fuzz { target, seconds } =
            parse(&["fuzz", "--target", "nft_json", "--seconds", "600"]).unwrap()
        else {
            panic!()
        };
        assert_eq!((target.as_deref(), seconds), (Some("nft_json"), 600));
        assert!(parse(&["fuzz", "--target", "nope"]).is_err());
        assert!(parse(&["fuzz", "--seconds", "0"]).is_err());
    }

    #[test]
    fn bootstrap_build_and_lint_take_no_args() {
        assert!(matches!(parse(&["bootstrap"]).unwrap(), Task::Bootstrap));
        assert!(matches!(parse(&["build"]).unwrap(), Task::Build));
        assert!(matches!(parse(&["dist"]).unwrap(), Task::Dist));
        assert!(parse(&["dist", "--", "x"]).is_err());
        assert!(parse(&["build", "--", "x"]).is_err());
        assert!(matches!(parse(&["lint"]).unwrap(), Task::Lint));
        assert!(parse(&["lint", "--fix"]).is_err());
    }
}
