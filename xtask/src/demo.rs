//! `cargo xtask demo`: setup, build, the lab with a shared backend link, the agent forwarding
//! `deploy/examples` in the node namespace; then TCP connections and UDP requests from the
//! client to the VIP, each with the backend that answered; then HTTP and HTTPS requests to the
//! Ingress proxy on the node, each with its status, protocol and answering backend; and the
//! agent's per-Service counters after SIGTERM. The lab goes away at the end, also when something
//! fails (everything here cleans up on drop).

use std::{collections::BTreeMap, time::Duration};

use anyhow::{ensure, Context as _, Result};
use xdp_ingress_tests::{
    agent::Agent,
    lab::{self, BackendLink, HeldConnection, Lab},
};

use crate::{build, cmd, setup};

const TCP_CONNECTIONS: usize = 12;
const UDP_REQUESTS: usize = 4;
const TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the demo.
pub(crate) fn run() -> Result<()> {
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
    let mut agent = Agent::manifests(&manifests)
        .binary(&binary)
        .in_netns(lab.node().name())
        .interfaces(&lab.node_interfaces())
        .args(["--bpffs", "off"])
        .start()?;
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
    ingress_requests(&lab)?;

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

/// The Ingress half: HTTP and HTTPS requests from the client to the proxy on the node
/// (`deploy/examples/ingress.yaml`), each with its status, protocol and the backend's answer.
fn ingress_requests(lab: &Lab) -> Result<()> {
    let node = lab::NODE_CLIENT_ADDR;
    println!("HTTP requests from the client to the Ingress proxy on the node ({node}):");
    let http = |host: &str, path: &str| -> Vec<String> {
        vec![
            "-H".into(),
            format!("Host: {host}"),
            format!("http://{node}{path}"),
        ]
    };
    let https = |host: &str, path: &str| -> Vec<String> {
        vec![
            "-k".into(),
            "--resolve".into(),
            format!("{host}:443:{node}"),
            format!("https://{host}{path}"),
        ]
    };
    let requests = [
        http("shop.example", "/"),
        http("shop.example", "/cart"),
        http("SHOP.example:80", "/"),
        http("shop.example", "/api/orders?page=2"),
        http("shop.example", "/healthz"),
        http("shop.example", "/healthz/deep"),
        http("other.example", "/"),
        https("shop.example", "/api"),
        https("shop.example", "/"),
    ];
    lab.client().run_inside(move || {
        for args in &requests {
            let output = std::process::Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "5",
                    "-w",
                    " [%{http_code} HTTP/%{http_version}]",
                ])
                .args(args)
                .output()
                .context("running curl")?;
            ensure!(
                output.status.success(),
                "curl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
            let answer = String::from_utf8_lossy(&output.stdout).replace('\n', " ");
            println!("  curl {:<58} -> {answer}", args.join(" "));
        }
        Ok(())
    })
}
