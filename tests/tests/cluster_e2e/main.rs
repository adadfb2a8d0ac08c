//! End to end in the two-node cluster lab (`xdp_ingress_tests::lab::cluster`): a router, two
//! nodes with pods behind veths at the kernel's defaults, external clients; one real
//! `xdp-ingress` per node, both reading one manifest directory, XDP on each node's uplink only.
//!
//! `routing` checks the lab itself and that agents leave traffic that is not theirs alone.
//! Each test builds its own lab under unique names and removes it also when it fails.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context as _, Result};
use xdp_ingress_tests::{
    agent::{self, AgentProcess},
    lab::cluster::{Cluster, NodeId},
    proxy::manifests::Manifests,
};

mod routing;

/// For every single connect or request: a few hops in one machine, so anything slower fails.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Loading the program and creating its maps takes a moment.
const START_TIMEOUT: Duration = Duration::from_secs(30);
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
}
