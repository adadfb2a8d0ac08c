//! `cargo xtask lab up|down`: the lab of `tests/lab.rs` under fixed names (prefix `xi`), left
//! running for a person to try things in. Backend servers run as `cargo xtask lab-serve`
//! processes inside the backend namespaces; `lab down` ends every process in the lab's
//! namespaces (servers, an agent someone started) and deletes them.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use xdp_ingress_tests::lab::{BackendLink, BackendServer, Lab, LabConfig, NODE_CLIENT_IF};

use crate::cmd;

/// Name prefix of the lab that `lab up` leaves behind and `lab down` removes.
pub(crate) const PREFIX: &str = "xi";

/// `cargo xtask lab` options.
#[derive(Debug, clap::Args)]
pub(crate) struct LabArgs {
    #[command(subcommand)]
    action: LabAction,
}

#[derive(Debug, clap::Subcommand)]
enum LabAction {
    /// Create the namespaces and links and start the backend servers (replaces a lab already up).
    Up {
        /// How the backends hang off the node: `shared` (one link into a bridge) or
        /// `per-backend` (one veth each, /32 routes, as CNI plugins do).
        #[arg(long, default_value = "shared")]
        link: BackendLink,
        /// Number of backends (198.51.100.11 upwards).
        #[arg(long, default_value_t = 3)]
        backends: usize,
    },
    /// End the lab's processes and delete its namespaces.
    Down,
}

/// `cargo xtask lab-serve` options.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The name to answer with.
    #[arg(long)]
    name: String,
}

/// The lab's configuration under fixed names.
pub(crate) fn config(link: BackendLink, backends: usize) -> LabConfig {
    LabConfig {
        prefix: PREFIX.to_string(),
        backends,
        link,
        fixed_names: true,
    }
}

/// `lab up` / `lab down`.
pub(crate) fn run(args: &LabArgs) -> Result<()> {
    anyhow::ensure!(cmd::is_root(), "the lab needs root (network namespaces)");
    match args.action {
        LabAction::Up { link, backends } => up(link, backends),
        LabAction::Down => {
            let removed = Lab::down(PREFIX)?;
            if removed.is_empty() {
                eprintln!("lab: nothing to remove");
            } else {
                eprintln!("lab: removed {}", removed.join(" "));
            }
            Ok(())
        }
    }
}

fn up(link: BackendLink, backends: usize) -> Result<()> {
    let replaced = Lab::down(PREFIX)?;
    if !replaced.is_empty() {
        eprintln!("lab: removed the previous lab ({})", replaced.join(" "));
    }
    let lab = Lab::up(&config(link, backends))?;
    let xtask = std::env::current_exe().context("locating the xtask binary")?;
    let log_dir = cmd::workspace_root().join("target").join("lab");
    lab.spawn_server_processes(&xtask, &["lab-serve"], &log_dir)?;
    // The servers bind asynchronously; give them a moment before declaring the lab good.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match lab.check_backends(Duration::from_millis(500)) {
            Ok(()) => break,
            Err(error) if Instant::now() >= deadline => {
                return Err(error).with_context(|| {
                    format!(
                        "backend servers not answering (logs in {})",
                        log_dir.display()
                    )
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    print_usage(&lab, &log_dir);
    let names = lab.keep();
    eprintln!(
        "lab: up ({}); `cargo xtask lab down` removes it",
        names.join(" ")
    );
    Ok(())
}

fn print_usage(lab: &Lab, log_dir: &Path) {
    let interfaces: Vec<String> = lab
        .node_interfaces()
        .iter()
        .map(|interface| format!("--interface {interface}"))
        .collect();
    let backends: Vec<String> = lab
        .backends()
        .iter()
        .map(|backend| {
            format!(
                "{} {} ({})",
                backend.name,
                backend.addr,
                backend.netns.name()
            )
        })
        .collect();
    println!("link:      {} ({NODE_CLIENT_IF} to the client)", lab.link());
    println!("backends:  {}", backends.join(", "));
    println!("logs:      {}", log_dir.display());
    println!("agent:     cargo xtask build &&");
    println!(
        "           ip netns exec {} target/debug/xdp-ingress run --bpffs off --manifests deploy/examples {}",
        lab.node().name(),
        interfaces.join(" ")
    );
    println!(
        "try:       ip netns exec {} socat - TCP:203.0.113.10:80      (type lines; the backend answers)",
        lab.client().name()
    );
    println!(
        "           echo hi | ip netns exec {} socat -t1 - UDP:203.0.113.10:53",
        lab.client().name()
    );
}

/// `lab-serve`: one backend's server, until the process is ended.
pub(crate) fn serve(args: &ServeArgs) -> Result<()> {
    let server = BackendServer::start(&args.name)?;
    eprintln!(
        "lab-serve: {} answering on TCP 8080, UDP 8053 and HTTP 8081",
        server.name()
    );
    server.serve_forever();
    Ok(())
}
