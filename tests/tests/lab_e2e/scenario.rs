//! One lab scenario: the lab, the agent on a manifest directory of its own, and the checks that
//! every test shares (answers within the timeout, a fair spread over the backends).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use xdp_ingress_tests::{
    agent::{self, Agent, AgentProcess},
    lab::{self, BackendLink, HeldConnection, Lab, LabConfig},
};

use super::{ANSWER_TIMEOUT, START_TIMEOUT};

/// Scratch manifest directory, removed on drop.
pub(crate) struct ManifestDir {
    pub(crate) path: PathBuf,
}

impl ManifestDir {
    pub(crate) fn new(tag: &str) -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("xdp-ingress-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces `name` atomically (write beside, then rename), as kubelet's volume updates do,
    /// so the agent never reads a half-written file.
    pub(crate) fn write(&self, name: &str, text: &str) -> Result<()> {
        let staging = self.path.join(format!(".{name}.tmp"));
        std::fs::write(&staging, text).with_context(|| format!("writing {}", staging.display()))?;
        std::fs::rename(&staging, self.path.join(name)).with_context(|| format!("renaming {name}"))
    }

    pub(crate) fn remove(&self, name: &str) -> Result<()> {
        std::fs::remove_file(self.path.join(name)).with_context(|| format!("removing {name}"))
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The Service of deploy/examples/web.yaml: VIP 203.0.113.10, TCP 80 -> 8080, UDP 53 -> 8053.
pub(crate) const SERVICE_YAML: &str = r#"apiVersion: v1
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
pub(crate) fn slice_yaml(endpoints: &[Ipv4Addr]) -> String {
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
pub(crate) struct Scenario {
    // Field order is drop order: the agent goes before the lab it is attached to.
    pub(crate) agent: Option<AgentProcess>,
    pub(crate) manifests: ManifestDir,
    pub(crate) lab: Lab,
    pub(crate) binary: PathBuf,
}

impl Scenario {
    pub(crate) fn new(tag: &str, link: BackendLink) -> Result<Self> {
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

    /// The agent on the lab's node: its manifests, in the node's namespace, XDP on the node's
    /// interfaces.
    fn agent_builder(&self) -> Agent {
        Agent::manifests(self.manifests.path())
            .binary(&self.binary)
            .in_netns(self.lab.node().name())
            .interfaces(&self.lab.node_interfaces())
    }

    pub(crate) fn start_agent(&mut self) -> Result<()> {
        let mut agent = self.agent_builder().args(["--bpffs", "off"]).start()?;
        agent.wait_running(START_TIMEOUT)?;
        self.agent = Some(agent);
        Ok(())
    }

    /// Starts the agent pinning under `pins` (a directory on a bpffs the test mounted).
    pub(crate) fn start_pinned_agent(&mut self, pins: &Path) -> Result<()> {
        let pins = pins.to_str().context("pin path")?;
        let mut agent = self
            .agent_builder()
            .args(["--bpffs", pins])
            // The admin listener on every address, as the DaemonSet has it (probes).
            .admin_listen("0.0.0.0:9900")
            .start()?;
        agent.wait_running(START_TIMEOUT)?;
        self.agent = Some(agent);
        Ok(())
    }

    /// `xdp-ingress <args>` inside the node's namespace (where the agent's admin listener is).
    pub(crate) fn agent_command(&self, args: &[&str]) -> Result<String> {
        let mut argv = vec![self.binary.to_str().context("binary path")?];
        argv.extend_from_slice(args);
        let output = self.lab.node().exec(&argv)?;
        ensure!(
            output.status.success(),
            "xdp-ingress {}: {}\n{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Whether XDP is attached to every node interface.
    pub(crate) fn xdp_attached(&self) -> Result<bool> {
        for interface in self.lab.node_interfaces() {
            let output = self.lab.node().ip(&["link", "show", "dev", &interface])?;
            if !String::from_utf8_lossy(&output.stdout).contains("prog/xdp") {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// How many syncs the agent has logged so far.
    pub(crate) fn syncs(&mut self) -> Result<usize> {
        Ok(self
            .agent()?
            .output()
            .iter()
            .filter(|line| line.contains(" synced"))
            .count())
    }

    /// Waits (10 s at most) until the agent has logged more than `before` syncs; returns the
    /// time since `since`.
    pub(crate) fn wait_for_sync(
        &mut self,
        before: usize,
        since: std::time::Instant,
    ) -> Result<Duration> {
        let deadline = since + Duration::from_secs(10);
        while self.syncs()? <= before {
            ensure!(
                std::time::Instant::now() < deadline,
                "no sync within 10 s of the change"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(since.elapsed())
    }

    pub(crate) fn agent(&mut self) -> Result<&mut AgentProcess> {
        self.agent.as_mut().context("the agent is not running")
    }

    /// SIGTERM; returns the exit status's success and the agent's output.
    pub(crate) fn stop_agent(&mut self) -> Result<Vec<String>> {
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

    pub(crate) fn names(&self) -> Vec<String> {
        self.lab.backends().iter().map(|b| b.name.clone()).collect()
    }

    /// `n` fresh TCP connections from the client to VIP:80: who greeted each.
    pub(crate) fn tcp_spread(&self, n: usize) -> Result<BTreeMap<String, usize>> {
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

    /// Connections to VIP:80 held open until at least two reach every backend.
    pub(crate) fn hold_connections_to_every_backend(&self) -> Result<Vec<HeldConnection>> {
        let all = self.names();
        self.lab.client().run_inside(move || {
            let mut held: Vec<HeldConnection> = Vec::new();
            for _ in 0..100 {
                held.push(HeldConnection::open(lab::vip_tcp(), ANSWER_TIMEOUT)?);
                let per_backend = |name: &str| held.iter().filter(|c| c.greeting() == name).count();
                if all.iter().all(|name| per_backend(name) >= 2) {
                    return Ok(held);
                }
            }
            bail!("100 connections did not reach every backend twice")
        })
    }

    /// Whether a single TCP connect from the client to VIP:80 gets an answer.
    pub(crate) fn vip_answers_tcp(&self) -> Result<bool> {
        self.lab
            .client()
            .run_inside(|| Ok(lab::tcp_ask(lab::vip_tcp(), ANSWER_TIMEOUT).is_ok()))
    }

    /// Asks VIP:53 once from each of `n` UDP sockets open at the same time (so from `n` distinct
    /// ports); every answer must come from the VIP.
    pub(crate) fn udp_answers_from_distinct_ports(&self, n: usize) -> Result<Vec<String>> {
        self.lab.client().run_inside(move || {
            let sockets = (0..n)
                .map(|_| std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))
                .collect::<std::io::Result<Vec<_>>>()?;
            sockets
                .iter()
                .map(|socket| {
                    socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
                    socket.send_to(b"who?\n", lab::vip_udp())?;
                    let mut buffer = [0u8; 512];
                    let (len, from) = socket
                        .recv_from(&mut buffer)
                        .context("no UDP answer from the VIP")?;
                    ensure!(
                        from == lab::vip_udp(),
                        "UDP answer from {from}, not the VIP"
                    );
                    Ok(String::from_utf8_lossy(&buffer[..len]).trim().to_string())
                })
                .collect()
        })
    }

    /// Asks VIP:53 over UDP `n` times; every answer must come from the VIP.
    pub(crate) fn udp_answers(&self, n: usize) -> Result<Vec<String>> {
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
pub(crate) fn assert_fair(counts: &BTreeMap<String, usize>, names: &[String]) -> Result<()> {
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
