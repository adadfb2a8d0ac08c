//! End to end in the two-node cluster lab (`xdp_ingress_tests::lab::cluster`): a router, two
//! nodes with pods behind veths at the kernel's defaults, external clients; one real
//! `xdp-ingress` per node, both reading one manifest directory, XDP on each node's uplink only.
//!
//! `routing` checks the lab itself and that agents leave traffic that is not theirs alone;
//! `basic`, `remote` and `new_pods` check the Service datapath across nodes: local pods reached
//! through the stack with their replies restored at TC egress, remote pods through SNAT, pods
//! created after the agents started.
//! `node_port`, `reject`, `source_ranges`, `affinity`, `local_policy` and `labels` check the
//! Service features of issue 13 end to end, as kube-proxy's e2e suite checks them: nodePorts
//! and externalIPs, REJECT without endpoints, loadBalancerSourceRanges, ClientIP affinity,
//! externalTrafficPolicy Local with its health check, and the labels that leave a Service to
//! another proxy. `multiport`, `same_port`, `udp_replacement` and `rolling` check how Service
//! and endpoint changes land: named targetPorts resolved per slice, one protocol of a port
//! removed while the other keeps its connections, a fixed-port UDP client following its
//! replaced backend, and a rolling update under a stream of new connections without a failure.
//! `bad_input` checks that bad Services are named (`validate`, the agents' log) and skipped
//! while everything else forwards.
//! Each test builds its own lab under unique names and removes it also when it fails.

use std::{
    collections::BTreeSet,
    io::{self, BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use serde_json::Value;
use xdp_ingress_tests::{
    agent::{self, AgentProcess},
    lab::{
        self,
        cluster::{web_service, Cluster, Endpoint, NodeId},
    },
    netns::Netns,
    proxy::manifests::Manifests,
};

mod affinity;
mod bad_input;
mod basic;
mod labels;
mod local_policy;
mod multiport;
mod new_pods;
mod node_port;
mod reject;
mod remote;
mod rolling;
mod routing;
mod same_port;
mod source_ranges;
mod terminating;
mod udp_replacement;

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
/// The nodePort the tests give the Service's TCP port (80).
const NODE_PORT_TCP: u16 = 30080;
/// The nodePort the tests give the Service's UDP port (53).
const NODE_PORT_UDP: u16 = 30053;

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

/// Service `web` on [`VIP`] (LoadBalancer, TCP 80 and UDP 53) and its slice with `endpoints`;
/// the fields of `spec` replace the Service's (a `null` removes one).
fn web_with(endpoints: &[Endpoint], spec: Value) -> Vec<Value> {
    let mut documents = web_service("web", VIP, endpoints);
    merge(&mut documents[0]["spec"], spec);
    documents
}

/// Puts the fields of `extra` into the object `target`, removing those that are `null`.
fn merge(target: &mut Value, extra: Value) {
    if let (Some(target), Value::Object(extra)) = (target.as_object_mut(), extra) {
        for (key, value) in extra {
            if value.is_null() {
                target.remove(&key);
            } else {
                target.insert(key, value);
            }
        }
    }
}

/// Gives the first document's (a Service from [`web_service`]) ports the tests' nodePorts.
fn with_node_ports(mut documents: Vec<Value>) -> Vec<Value> {
    let ports = &mut documents[0]["spec"]["ports"];
    ports[0]["nodePort"] = NODE_PORT_TCP.into();
    ports[1]["nodePort"] = NODE_PORT_UDP.into();
    documents
}

/// What became of one connect or question.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Answered by this server.
    Answered(String),
    /// Refused (a TCP RST or an ICMP port unreachable came back).
    Refused,
    /// Nothing came back within [`ANSWER_TIMEOUT`].
    Silent,
}

impl Outcome {
    /// `Refused` or `Silent` for these errors, else the error.
    fn of_error(error: io::Error) -> io::Result<Self> {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => Ok(Self::Refused),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Ok(Self::Silent),
            _ => Err(error),
        }
    }
}

/// Connects to `addr` (inside the current thread's namespace) and reads the greeting.
fn tcp_outcome(addr: SocketAddr) -> Result<Outcome> {
    let stream = match TcpStream::connect_timeout(&addr, ANSWER_TIMEOUT) {
        Ok(stream) => stream,
        Err(error) => {
            return Outcome::of_error(error).with_context(|| format!("connecting to {addr}"))
        }
    };
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut greeting = String::new();
    BufReader::new(stream)
        .read_line(&mut greeting)
        .with_context(|| format!("the greeting from {addr}"))?;
    Ok(Outcome::Answered(greeting.trim().to_string()))
}

/// Sends a question to `addr` from a connected UDP socket (so only an answer from `addr`
/// itself counts, and an ICMP error is reported) and waits for the answer.
fn udp_outcome(addr: SocketAddr) -> Result<Outcome> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.connect(addr)?;
    socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    socket.send(b"who?\n")?;
    let mut buffer = [0u8; 512];
    match socket.recv(&mut buffer) {
        Ok(len) => Ok(Outcome::Answered(
            String::from_utf8_lossy(&buffer[..len]).trim().to_string(),
        )),
        Err(error) => Outcome::of_error(error).with_context(|| format!("asking {addr}")),
    }
}

/// `n` TCP connections and `n` UDP questions from `client` (the lab's first or second client)
/// to `tcp` and `udp`: who answered; every one must be answered.
fn answers(client: &Netns, tcp: SocketAddr, udp: SocketAddr, n: usize) -> Result<BTreeSet<String>> {
    client.run_inside(move || {
        let mut names = BTreeSet::new();
        for i in 0..n {
            for (protocol, outcome) in [("TCP", tcp_outcome(tcp)?), ("UDP", udp_outcome(udp)?)] {
                let Outcome::Answered(name) = outcome else {
                    anyhow::bail!("{protocol} attempt {i} of {n} (to {tcp}/{udp}): {outcome:?}");
                };
                names.insert(name);
            }
        }
        Ok(names)
    })
}

/// Whether neither a TCP connect to `tcp` nor a UDP question to `udp` from `client` gets any
/// answer, not even a refusal.
fn silent(client: &Netns, tcp: SocketAddr, udp: SocketAddr) -> Result<bool> {
    client.run_inside(move || {
        Ok(tcp_outcome(tcp)? == Outcome::Silent && udp_outcome(udp)? == Outcome::Silent)
    })
}

/// The VIP's TCP and UDP frontends.
fn vip_ports() -> (SocketAddr, SocketAddr) {
    (SocketAddr::from((VIP, 80)), SocketAddr::from((VIP, 53)))
}

/// `node`'s address with the tests' TCP and UDP nodePorts.
fn node_ports(node: NodeId) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::from((node.addr(), NODE_PORT_TCP)),
        SocketAddr::from((node.addr(), NODE_PORT_UDP)),
    )
}
