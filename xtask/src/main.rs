//! `cargo xtask`: the project's commands, in Rust rather than shell scattered around.
//!
//! * `setup`: Debian packages, rust-src, the musl target, bpf-linker (against the nightly's own LLVM), bpffs;
//! * `build`: the agent binary;
//! * `image`: the agent's OCI image (static musl binary, `FROM scratch`, buildah) as an archive;
//! * `lab up|down`: the namespaces of a node, a client and backends, left running;
//! * `demo`: the agent forwarding a Service in the lab, with who answered what;
//! * `test`: formatting, the workspace's tests (end to end included) and clippy;
//! * `bench l4`: the L4 datapath against nftables, iptables and a bare XDP forwarder;
//! * `bench l7`: the L7 proxy against nginx and HAProxy.

mod bench;
mod build;
mod cmd;
mod demo;
mod image;
mod lab;
mod setup;
mod test;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "xdp-ingress development commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent; quick when everything is there).
    Setup(setup::SetupArgs),
    /// Build the agent binary `xdp-ingress` (debug profile) and print its path.
    Build,
    /// Build the agent's container image (static binary, FROM scratch, buildah) and write it as
    /// an OCI archive to target/image/.
    Image,
    /// Bring the lab of network namespaces up or down.
    Lab(lab::LabArgs),
    /// Run the agent in the lab and show it balancing TCP and UDP over three backends.
    Demo,
    /// Check formatting, run every test (as root), run clippy.
    Test(test::TestArgs),
    /// Benchmarks against the peers named in the issues; results go to docs/benchmarks.md.
    Bench(bench::BenchArgs),
    /// A backend's server inside a lab namespace (started by `lab up`).
    #[command(hide = true)]
    LabServe(lab::ServeArgs),
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The cause chain on one line each; a backtrace (RUST_BACKTRACE) would only show
            // xtask's own call stack.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Setup(args) => setup::run(&args),
        Command::Build => {
            let binary = build::agent()?;
            println!("{}", binary.display());
            Ok(())
        }
        Command::Image => image::run(),
        Command::Lab(args) => lab::run(&args),
        Command::Demo => demo::run(),
        Command::Test(args) => test::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::LabServe(args) => lab::serve(&args),
    }
}
