//! End to end: the real `xdp-ingress` binary in a lab of namespaces (client, node, backends),
//! driven through its manifest directory, checked with real TCP and UDP clients.
//!
//! Each test builds its own lab under unique names and removes it also when it fails (the lab,
//! the agent process and the temporary manifest directory all clean up on drop). The tests use
//! the same addresses, but in namespaces of their own, so they can run in parallel. They need
//! root and the agent binary: `cargo xtask test` builds it and passes it as XDP_INGRESS_BIN.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use xdp_ingress_tests::{
    agent::{self, AgentProcess},
    lab::{self, BackendLink, HeldConnection, Lab, LabConfig},
};

/// For every single connect or request: the lab is one hop, so anything slower is a failure.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Loading the program and creating its maps (64 MiB of Maglev slots) takes a moment.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections per distribution check: enough that a fair share lands within 20–47 %.
const SPREAD_CONNECTIONS: usize = 300;

/// Scratch manifest directory, removed on drop.
struct ManifestDir {
    path: PathBuf,
}

impl ManifestDir {
    fn new(tag: &str) -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("xdp-ingress-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces `name` atomically (write beside, then rename), as kubelet's volume updates do,
    /// so the agent never reads a half-written file.
    fn write(&self, name: &str, text: &str) -> Result<()> {
        let staging = self.path.join(format!(".{name}.tmp"));
        std::fs::write(&staging, text).with_context(|| format!("writing {}", staging.display()))?;
        std::fs::rename(&staging, self.path.join(name)).with_context(|| format!("renaming {name}"))
    }

    fn remove(&self, name: &str) -> Result<()> {
        std::fs::remove_file(self.path.join(name)).with_context(|| format!("removing {name}"))
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The Service of deploy/examples/web.yaml: VIP 203.0.113.10, TCP 80 -> 8080, UDP 53 -> 8053.
const SERVICE_YAML: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
  creationTimestamp: "2026-01-01T00:00:00Z"
spec:
  type: LoadBalancer
  selector: {app: web}
  ports:
  - {name: http, protocol: TCP, port: 80, targetPort: 8080}
  - {name: dns, protocol: UDP, port: 53, targetPort: 8053}
status:
  loadBalancer:
    ingress:
    - ip: 203.0.113.10
"#;

/// The Service's EndpointSlice with these ready endpoints.
fn slice_yaml(endpoints: &[Ipv4Addr]) -> String {
    let mut yaml = String::from(
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-e2e
  namespace: demo
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- {name: http, protocol: TCP, port: 8080}
- {name: dns, protocol: UDP, port: 8053}
endpoints:
"#,
    );
    for addr in endpoints {
        yaml.push_str(&format!(
            "- addresses: [\"{addr}\"]\n  conditions: {{ready: true}}\n"
        ));
    }
    yaml
}

/// A lab with servers running and the Service and its slice written, agent not started yet.
struct Scenario {
    // Field order is drop order: the agent goes before the lab it is attached to.
    agent: Option<AgentProcess>,
    manifests: ManifestDir,
    lab: Lab,
    binary: PathBuf,
}

impl Scenario {
    fn new(tag: &str, link: BackendLink) -> Result<Self> {
        // SAFETY: plain FFI call without arguments.
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "the lab tests need root (namespaces, XDP): run them as root, e.g. `cargo xtask test`"
        );
        let binary = agent::binary()?;
        let mut lab = Lab::up(&LabConfig::for_test(tag, link))?;
        lab.start_servers()?;
        lab.check_backends(ANSWER_TIMEOUT)?;
        let manifests = ManifestDir::new(tag)?;
        manifests.write("service.yaml", SERVICE_YAML)?;
        let all: Vec<Ipv4Addr> = lab.backends().iter().map(|b| b.addr).collect();
        manifests.write("slice.yaml", &slice_yaml(&all))?;
        Ok(Self {
            agent: None,
            manifests,
            lab,
            binary,
        })
    }

    fn start_agent(&mut self) -> Result<()> {
        let mut agent = AgentProcess::start(
            &self.binary,
            self.lab.node(),
            self.manifests.path(),
            &self.lab.node_interfaces(),
        )?;
        agent.wait_running(START_TIMEOUT)?;
        self.agent = Some(agent);
        Ok(())
    }

    fn agent(&mut self) -> Result<&mut AgentProcess> {
        self.agent.as_mut().context("the agent is not running")
    }

    /// SIGTERM; returns the exit status's success and the agent's output.
    fn stop_agent(&mut self) -> Result<Vec<String>> {
        let agent = self.agent.take().context("the agent is not running")?;
        // Generous: the exit itself is quick, but a loaded machine can stall it for seconds.
        let (status, output) = agent.terminate(Duration::from_secs(30))?;
        ensure!(
            status.success(),
            "the agent exited with {status} after SIGTERM; its output:\n{}",
            output.join("\n")
        );
        Ok(output)
    }

    fn names(&self) -> Vec<String> {
        self.lab.backends().iter().map(|b| b.name.clone()).collect()
    }

    /// `n` fresh TCP connections from the client to VIP:80: who greeted each.
    fn tcp_spread(&self, n: usize) -> Result<BTreeMap<String, usize>> {
        self.lab.client().run_inside(move || {
            let mut counts = BTreeMap::new();
            for i in 0..n {
                let name = lab::tcp_ask(lab::vip_tcp(), ANSWER_TIMEOUT)
                    .with_context(|| format!("connection {i} of {n} to the VIP"))?;
                *counts.entry(name).or_insert(0) += 1;
            }
            Ok(counts)
        })
    }

    /// Whether a single TCP connect from the client to VIP:80 gets an answer.
    fn vip_answers_tcp(&self) -> Result<bool> {
        self.lab
            .client()
            .run_inside(|| Ok(lab::tcp_ask(lab::vip_tcp(), ANSWER_TIMEOUT).is_ok()))
    }

    /// Asks VIP:53 over UDP `n` times; every answer must come from the VIP.
    fn udp_answers(&self, n: usize) -> Result<Vec<String>> {
        self.lab.client().run_inside(move || {
            (0..n)
                .map(|_| {
                    let (name, from) = lab::udp_ask(lab::vip_udp(), ANSWER_TIMEOUT)?;
                    ensure!(
                        from == lab::vip_udp(),
                        "UDP answer {name:?} came from {from}, not from the VIP"
                    );
                    Ok(name)
                })
                .collect()
        })
    }
}

/// Every backend in `names` got between 20 % and 47 % of the connections, and no one else did.
fn assert_fair(counts: &BTreeMap<String, usize>, names: &[String]) -> Result<()> {
    let total: usize = counts.values().sum();
    for (name, count) in counts {
        ensure!(
            names.contains(name),
            "{name} answered {count} of {total} connections but is not a backend now: {counts:?}"
        );
    }
    let share = 1.0 / names.len() as f64;
    for name in names {
        let count = counts.get(name).copied().unwrap_or(0);
        let fraction = count as f64 / total as f64;
        // A fair share within a generous band: 3 backends -> 20 %..47 %.
        ensure!(
            fraction >= share * 0.6 && fraction <= share * 1.41,
            "{name} got {count} of {total} connections ({:.0} %), not a fair share: {counts:?}",
            fraction * 100.0
        );
    }
    Ok(())
}

#[test]
fn shared_link_forwards_and_follows_manifest_changes() -> Result<()> {
    let mut scenario = Scenario::new("xe-sh", BackendLink::Shared)?;
    let names = scenario.names();

    // Nothing on the node answers for the VIP: whatever answers later is the agent's doing.
    ensure!(
        !scenario.vip_answers_tcp()?,
        "the VIP answered before the agent ran"
    );

    scenario.start_agent()?;
    let counts = scenario.tcp_spread(SPREAD_CONNECTIONS)?;
    println!("shared link, {SPREAD_CONNECTIONS} connections: {counts:?}");
    assert_fair(&counts, &names)?;
    for name in scenario.udp_answers(10)? {
        ensure!(names.contains(&name), "unexpected UDP answer {name:?}");
    }

    // Hold connections to every backend, then take the last backend out of the slice.
    let removed = names.last().context("no backends")?.clone();
    let all = names.clone();
    let mut held = scenario.lab.client().run_inside(move || {
        let mut held: Vec<HeldConnection> = Vec::new();
        for _ in 0..100 {
            held.push(HeldConnection::open(lab::vip_tcp(), ANSWER_TIMEOUT)?);
            let per_backend = |name: &str| held.iter().filter(|c| c.greeting() == name).count();
            if all.iter().all(|name| per_backend(name) >= 2) {
                return Ok(held);
            }
        }
        bail!("100 connections did not reach every backend twice")
    })?;
    let remaining: Vec<Ipv4Addr> = scenario
        .lab
        .backends()
        .iter()
        .filter(|b| b.name != removed)
        .map(|b| b.addr)
        .collect();
    scenario
        .manifests
        .write("slice.yaml", &slice_yaml(&remaining))?;
    // The promise under test: within a second of the change, no new flow reaches it.
    std::thread::sleep(Duration::from_secs(1));
    let kept: Vec<String> = names.iter().filter(|n| **n != removed).cloned().collect();
    let counts = scenario.tcp_spread(150)?;
    println!("after removing {removed}: {counts:?}");
    ensure!(
        !counts.contains_key(&removed),
        "new connections still reach {removed} a second after it left the slice: {counts:?}"
    );
    assert_fair(&counts, &kept)?;
    for connection in held.iter_mut().filter(|c| c.greeting() != removed) {
        let greeting = connection.greeting().to_string();
        let answer = connection
            .ask()
            .with_context(|| format!("held connection to {greeting} after the change"))?;
        ensure!(
            answer == greeting,
            "a held connection to {greeting} is now answered by {answer}"
        );
    }
    drop(held);

    // A broken manifest is reported and ignored; what was programmed keeps forwarding.
    scenario.manifests.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [oops\n",
    )?;
    scenario
        .agent()?
        .wait_for_line(|line| line.contains("broken.yaml"), Duration::from_secs(5))
        .context("the agent did not report the broken manifest")?;
    ensure!(
        scenario.agent()?.is_running()?,
        "the agent died on a broken manifest"
    );
    let counts = scenario.tcp_spread(30)?;
    ensure!(
        counts.keys().all(|name| kept.contains(name)),
        "after the broken manifest: {counts:?}"
    );
    scenario.manifests.remove("broken.yaml")?;

    // Without its Service the VIP is no longer forwarded.
    scenario.manifests.remove("service.yaml")?;
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..5 {
        ensure!(
            !scenario.vip_answers_tcp()?,
            "the VIP still answers a second after its Service was removed"
        );
    }

    // SIGTERM is a clean exit, and the same interfaces can be taken again at once.
    scenario.stop_agent()?;
    scenario.manifests.write("service.yaml", SERVICE_YAML)?;
    scenario.start_agent()?;
    let counts = scenario.tcp_spread(30)?;
    ensure!(
        counts.keys().all(|name| kept.contains(name)),
        "after the restart: {counts:?}"
    );
    scenario.stop_agent()?;
    Ok(())
}

#[test]
fn per_backend_links_forward_tcp_and_udp() -> Result<()> {
    let mut scenario = Scenario::new("xe-pb", BackendLink::PerBackend)?;
    let names = scenario.names();
    ensure!(
        !scenario.vip_answers_tcp()?,
        "the VIP answered before the agent ran"
    );
    scenario.start_agent()?;
    let counts = scenario.tcp_spread(SPREAD_CONNECTIONS)?;
    println!("per-backend links, {SPREAD_CONNECTIONS} connections: {counts:?}");
    assert_fair(&counts, &names)?;
    let answers = scenario.udp_answers(30)?;
    for name in &answers {
        ensure!(names.contains(name), "unexpected UDP answer {name:?}");
    }
    let output = scenario.stop_agent()?;
    // The per-Service counters printed on exit saw the traffic.
    ensure!(
        output.iter().any(|line| line.contains("demo/web")),
        "no per-Service counters in the agent's output:\n{}",
        output.join("\n")
    );
    Ok(())
}
