//! End to end in the two-node cluster lab (`xdp_ingress_tests::lab::cluster`): a router, two
//! nodes with pods behind veths at the kernel's defaults, external clients; one real
//! `xdp-ingress` per node, both reading one manifest directory, XDP on each node's uplink only.
//!
//! `routing` checks the lab itself and that agents leave traffic that is not theirs alone;
//! `basic`, `remote` and `new_pods` check the Service datapath across nodes: local pods reached
//! through the stack with their replies restored at TC egress, remote pods through SNAT, pods
//! created after the agents started.
//! Each test builds its own lab under unique names and removes it also when it fails.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use serde_json::Value;
use xdp_ingress_tests::{
    agent::{self, AgentProcess},
    lab::{
        self,
        cluster::{Cluster, NodeId},
    },
    proxy::manifests::Manifests,
};

mod basic;
mod new_pods;
mod remote;
mod routing;

/// For every single connect or request: a few hops in one machine, so anything slower fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Loading the program and creating its maps takes a moment.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an agent may take to apply a manifest change (it takes milliseconds).
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// The Service VIP the tests use.
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The manifest file of the tests' Service and its slice.
const SERVICE_FILE: &str = "web.yaml";

/// A cluster lab, its manifest directory and the agents running on its nodes.
struct Scenario {
    // Field order is drop order: agents before the lab they are attached to.
    agents: Vec<(NodeId, AgentProcess)>,
    manifests: Manifests,
    cluster: Cluster,
}

impl Scenario {
    /// `None` (skipped) when not root; else the lab up, no pods, no agents, empty manifests.
    fn new(test: &str, prefix: &str) -> Result<Option<Self>> {
        if !xdp_ingress_tests::root::root_or_skip(test) {
            return Ok(None);
        }
        Ok(Some(Self {
            agents: Vec::new(),
            manifests: Manifests::new()?,
            cluster: Cluster::up(prefix)?,
        }))
    }

    /// Starts the agent of `node` on the shared manifests, uplink only, with `extra` flags,
    /// and waits until it runs.
    fn start_agent(&mut self, node: NodeId, extra: &[&str]) -> Result<()> {
        let mut agent = self
            .cluster
            .agent(node, self.manifests.path())
            .binary(agent::binary()?)
            .args(extra)
            .start()?;
        agent
            .wait_running(START_TIMEOUT)
            .with_context(|| format!("the agent on {}", node.name()))?;
        self.agents.push((node, agent));
        Ok(())
    }

    /// Starts an agent on each node with `--node-name <node>` (issue 13's flag).
    fn start_agents_with_node_names(&mut self) -> Result<()> {
        for node in NodeId::ALL {
            self.start_agent(node, &["--node-name", node.name()])?;
        }
        Ok(())
    }

    /// Writes [`SERVICE_FILE`] and waits until every running agent has synced after it.
    fn write_service(&mut self, documents: &[Value]) -> Result<()> {
        let before: Vec<usize> = self.agents.iter().map(|(_, a)| syncs(a)).collect();
        self.manifests.write(SERVICE_FILE, documents)?;
        let deadline = std::time::Instant::now() + SYNC_TIMEOUT;
        for ((node, agent), before) in self.agents.iter_mut().zip(before) {
            // The agent logs each sync: polled, as lab_e2e does, since the lines are the event.
            while syncs(agent) <= before {
                ensure!(
                    agent.is_running()?,
                    "the agent on {} exited; its output:\n{}",
                    node.name(),
                    agent.output().join("\n")
                );
                ensure!(
                    std::time::Instant::now() < deadline,
                    "the agent on {} did not sync within {SYNC_TIMEOUT:?} of the change",
                    node.name()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }
}

/// How many syncs an agent has logged.
fn syncs(agent: &AgentProcess) -> usize {
    agent
        .output()
        .iter()
        .filter(|line| line.contains(" synced"))
        .count()
}

/// `n` fresh TCP connections and `n` UDP questions (each from a new socket) from the client to
/// the VIP: who answered each. Every one must be answered, UDP answers from the VIP itself.
fn vip_answers(cluster: &Cluster, n: usize) -> Result<BTreeSet<String>> {
    cluster.in_client(move || {
        let mut names = BTreeSet::new();
        for i in 0..n {
            let tcp = SocketAddr::from((VIP, 80));
            names.insert(
                lab::tcp_ask(tcp, ANSWER_TIMEOUT)
                    .with_context(|| format!("TCP connection {i} of {n} to {tcp}"))?,
            );
            let udp = SocketAddr::from((VIP, 53));
            let (name, from) = lab::udp_ask(udp, ANSWER_TIMEOUT)
                .with_context(|| format!("UDP question {i} of {n} to {udp}"))?;
            ensure!(
                from == udp,
                "UDP answer {name:?} from {from}, not from {udp}"
            );
            names.insert(name);
        }
        Ok(names)
    })
}

/// Whether neither a TCP connect nor a UDP question to the VIP gets an answer.
fn vip_silent(cluster: &Cluster) -> Result<bool> {
    cluster.in_client(|| {
        let tcp = lab::tcp_ask(SocketAddr::from((VIP, 80)), ANSWER_TIMEOUT);
        let udp = lab::udp_ask(SocketAddr::from((VIP, 53)), ANSWER_TIMEOUT);
        Ok(tcp.is_err() && udp.is_err())
    })
}
