//! `cargo xtask test`, what CI runs: setup, formatting check, the agent binary, every test in
//! the workspace (unit tests, BPF_PROG_TEST_RUN fixtures, end-to-end lab tests given the agent
//! as XDP_INGRESS_BIN), clippy with warnings as errors, then the container image (`cargo xtask
//! image`: 2 s when nothing changed, 45 s after a change to the agent's library, about 5 min from a
//! cold cache on 2 cores).

use std::process::Command;

use anyhow::{ensure, Result};
use xdp_ingress_tests::agent::BIN_ENV;

use crate::{build, cmd, image, setup};

/// `cargo xtask test` options.
#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// Skip the rustfmt and clippy checks.
    #[arg(long)]
    pub no_lint: bool,
    /// Skip building the container image (the static musl release build and buildah).
    #[arg(long)]
    pub no_image: bool,
    /// Passed to the test binaries (e.g. a test name filter, `--nocapture`).
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// Runs the checks in order; the first failure stops the run.
pub(crate) fn run(args: &TestArgs) -> Result<()> {
    ensure!(
        cmd::is_root(),
        "the tests need root (network namespaces, XDP, BPF_PROG_TEST_RUN)"
    );
    let started = std::time::Instant::now();
    setup::run(&setup::SetupArgs { dry_run: false })?;
    let root = cmd::workspace_root();
    if !args.no_lint {
        // First: seconds, and the most common reason for a red CI.
        cmd::run(
            Command::new("cargo")
                .current_dir(&root)
                .args(["fmt", "--all", "--", "--check"]),
        )?;
    }
    let binary = build::agent()?;
    cmd::run(
        Command::new("cargo")
            .current_dir(&root)
            .env(BIN_ENV, &binary)
            .args(["test", "--workspace", "--"])
            .args(&args.test_args),
    )?;
    if !args.no_lint {
        cmd::run(Command::new("cargo").current_dir(&root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    if !args.no_image {
        image::build()?;
    }
    eprintln!(
        "xtask test: all passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
