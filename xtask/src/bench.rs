//! `cargo xtask bench l4|l7|sync`: installs what is needed, builds the agent in the release profile and
//! runs the benchmark harness (`tests/benches/{l4,l7,sync}.rs`), which prints
//! ratios against the peers it measures in the same run and rewrites its section of
//! docs/benchmarks.md. Benchmarks are not tests: nothing here asserts a timing.

use std::process::Command;

use anyhow::{bail, Result};

use crate::{build, cmd, setup};

/// Which benchmark.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Suite {
    /// XDP forwarding: per-packet cost, 10,000 Services, forwarding cost against nftables,
    /// iptables and a bare XDP redirect.
    L4,
    /// The L7 proxy against nginx and HAProxy: HTTP/1.1 and HTTP/2 cost per request, full TLS
    /// handshakes, memory with 10,000 idle connections, 10,000 Ingress hosts.
    L7,
    /// The control plane in cluster mode against the fake API server: cold start with 10,000
    /// Services and 5,000 Ingresses, one endpoint change to the BPF map, a rollout, memory.
    Sync,
}

impl Suite {
    fn bench_name(self) -> &'static str {
        match self {
            Suite::L4 => "l4",
            Suite::L7 => "l7",
            Suite::Sync => "sync",
        }
    }
}

/// `cargo xtask bench` options.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// The benchmark to run.
    #[arg(value_enum)]
    pub suite: Suite,
    /// Shorter runs (to try the harness; figures are noisier).
    #[arg(long)]
    pub quick: bool,
    /// l4 only: the per-packet cost and the 10,000-Service sync (no forwarding through the lab).
    #[arg(long)]
    pub skip_lab: bool,
    /// l4 only: run only these sections (comma-separated: per-packet, scale, incremental,
    /// forwarding, snat) and print them without rewriting docs/benchmarks.md.
    #[arg(long)]
    pub only: Option<String>,
}

/// Runs the suite.
pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    if !cmd::is_root() {
        bail!(
            "the benchmarks install packages, load BPF programs, build namespaces and raise \
             file limits: run them as root"
        );
    }
    setup::run(&setup::SetupArgs { dry_run: false })?;
    let agent = build::agent_release()?;
    let mut bench = Command::new("cargo");
    bench
        .current_dir(cmd::workspace_root())
        .args(["bench", "-p", "xdp-ingress-tests", "--bench"])
        .arg(args.suite.bench_name())
        .arg("--")
        .env("XDP_INGRESS_BIN", &agent);
    if args.quick {
        bench.arg("--quick");
    }
    if args.skip_lab {
        if !matches!(args.suite, Suite::L4) {
            bail!("--skip-lab applies to `bench l4` only");
        }
        bench.arg("--skip-lab");
    }
    if let Some(only) = &args.only {
        if !matches!(args.suite, Suite::L4) {
            bail!("--only applies to `bench l4` only");
        }
        bench.args(["--only", only]);
    }
    cmd::run(&mut bench)
}
