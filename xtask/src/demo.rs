//! `cargo xtask demo`: setup, build, the lab with a shared backend link, the agent forwarding
//! `deploy/examples` in the node namespace; then TCP connections and UDP requests from the
//! client to the VIP, each with the backend that answered, and the agent's per-Service counters
//! after SIGTERM. The lab goes away at the end, also when something fails (everything here
//! cleans up on drop).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{ensure, Context as _, Result};
use xdp_ingress_tests::{
    agent::AgentProcess,
    lab::{self, BackendLink, HeldConnection, Lab},
};

use crate::{build, cmd, setup};

const TCP_CONNECTIONS: usize = 12;
const UDP_REQUESTS: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the demo.
pub fn run() -> Result<()> {
    ensure!(cmd::is_root(), "the demo needs root (namespaces, XDP)");
    setup::run(&setup::SetupArgs { dry_run: false })?;
    let binary = build::agent()?;

    let leftovers = Lab::down(crate::lab::PREFIX)?;
    if !leftovers.is_empty() {
        eprintln!("demo: removed a lab left running ({})", leftovers.join(" "));
    }
    let mut lab = Lab::up(&crate::lab::config(BackendLink::Shared, 3))?;
    lab.start_servers()?;
    lab.check_backends(TIMEOUT)?;
    let namespaces: Vec<&str> = lab.namespaces().iter().map(|ns| ns.name()).collect();
    println!("lab up: {}", namespaces.join(" "));

    let manifests = cmd::workspace_root().join("deploy").join("examples");
    let mut agent = AgentProcess::start(&binary, lab.node(), &manifests, &lab.node_interfaces())?;
    println!("$ {}", agent.command_line());
    agent.wait_running(Duration::from_secs(30))?;
    for line in agent.output() {
        println!("  agent| {line}");
    }

    let addr_by_name: BTreeMap<String, String> = lab
        .backends()
        .iter()
        .map(|backend| (backend.name.clone(), backend.addr.to_string()))
        .collect();
    let describe = |name: &str| match addr_by_name.get(name) {
        Some(addr) => format!("{name} ({addr})"),
        None => format!("{name} (not a lab backend!)"),
    };

    println!();
    println!(
        "{TCP_CONNECTIONS} TCP connections from the client to {}:",
        lab::vip_tcp()
    );
    let answers = lab.client().run_inside(|| {
        (0..TCP_CONNECTIONS)
            .map(|_| {
                let connection = HeldConnection::open(lab::vip_tcp(), TIMEOUT)?;
                Ok((connection.local_addr()?, connection.greeting().to_string()))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for (from, name) in &answers {
        println!(
            "  tcp {from} -> {}  answered by {}",
            lab::vip_tcp(),
            describe(name)
        );
        *tally.entry(name.clone()).or_default() += 1;
    }

    println!("{UDP_REQUESTS} UDP requests to {}:", lab::vip_udp());
    let answers = lab.client().run_inside(|| {
        (0..UDP_REQUESTS)
            .map(|_| lab::udp_ask(lab::vip_udp(), TIMEOUT))
            .collect::<Result<Vec<_>>>()
    })?;
    for (name, from) in &answers {
        println!("  udp answer from {from}: {}", describe(name));
    }
    let spread: Vec<String> = tally
        .iter()
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    println!("TCP connections per backend: {}", spread.join(" "));

    println!();
    println!("stopping the agent (SIGTERM); its counters:");
    let seen = agent.output().len();
    let (status, output) = agent
        .terminate(Duration::from_secs(30))
        .context("stopping the agent")?;
    for line in output.iter().skip(seen) {
        println!("  agent| {line}");
    }
    ensure!(status.success(), "the agent exited with {status}");
    drop(lab);
    println!("agent exited ({status}); lab removed");
    Ok(())
}
