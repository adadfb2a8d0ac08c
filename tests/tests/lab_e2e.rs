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

    /// Starts the agent pinning under `pins` (a directory on a bpffs the test mounted).
    fn start_pinned_agent(&mut self, pins: &Path) -> Result<()> {
        let pins = pins.to_str().context("pin path")?;
        let mut agent = AgentProcess::start_with(
            &self.binary,
            self.lab.node(),
            self.manifests.path(),
            &self.lab.node_interfaces(),
            // The admin listener on every address, as the DaemonSet has it (probes).
            &["--bpffs", pins, "--admin-listen", "0.0.0.0:9900"],
        )?;
        agent.wait_running(START_TIMEOUT)?;
        self.agent = Some(agent);
        Ok(())
    }

    /// `xdp-ingress <args>` inside the node's namespace (where the agent's admin listener is).
    fn agent_command(&self, args: &[&str]) -> Result<String> {
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
    fn xdp_attached(&self) -> Result<bool> {
        for interface in self.lab.node_interfaces() {
            let output = self.lab.node().ip(&["link", "show", "dev", &interface])?;
            if !String::from_utf8_lossy(&output.stdout).contains("prog/xdp") {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// How many syncs the agent has logged so far.
    fn syncs(&mut self) -> Result<usize> {
        Ok(self
            .agent()?
            .output()
            .iter()
            .filter(|line| line.contains(" synced"))
            .count())
    }

    /// Waits (10 s at most) until the agent has logged more than `before` syncs; returns the
    /// time since `since`.
    fn wait_for_sync(&mut self, before: usize, since: std::time::Instant) -> Result<Duration> {
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

    /// Connections to VIP:80 held open until at least two reach every backend.
    fn hold_connections_to_every_backend(&self) -> Result<Vec<HeldConnection>> {
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
    fn vip_answers_tcp(&self) -> Result<bool> {
        self.lab
            .client()
            .run_inside(|| Ok(lab::tcp_ask(lab::vip_tcp(), ANSWER_TIMEOUT).is_ok()))
    }

    /// Asks VIP:53 once from each of `n` UDP sockets open at the same time (so from `n` distinct
    /// ports); every answer must come from the VIP.
    fn udp_answers_from_distinct_ports(&self, n: usize) -> Result<Vec<String>> {
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
    let mut held = scenario.hold_connections_to_every_backend()?;
    let remaining: Vec<Ipv4Addr> = scenario
        .lab
        .backends()
        .iter()
        .filter(|b| b.name != removed)
        .map(|b| b.addr)
        .collect();
    // The promise under test: within a second of the change, no new flow reaches it. Waited
    // for as an event (the agent's sync), and the bound checked on what was measured.
    let before = scenario.syncs()?;
    let written = std::time::Instant::now();
    scenario
        .manifests
        .write("slice.yaml", &slice_yaml(&remaining))?;
    let took = scenario.wait_for_sync(before, written)?;
    ensure!(
        took < Duration::from_secs(1),
        "the agent applied the removal of {removed} {took:?} after the change"
    );
    let kept: Vec<String> = names.iter().filter(|n| **n != removed).cloned().collect();
    let counts = scenario.tcp_spread(150)?;
    println!("after removing {removed} (applied in {took:?}): {counts:?}");
    ensure!(
        !counts.contains_key(&removed),
        "new connections still reach {removed} after the sync that removed it ({took:?} after \
         the change): {counts:?}"
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
    let before = scenario.syncs()?;
    let written = std::time::Instant::now();
    scenario.manifests.remove("service.yaml")?;
    let took = scenario.wait_for_sync(before, written)?;
    ensure!(
        took < Duration::from_secs(1),
        "the agent applied the Service's removal {took:?} after it"
    );
    for _ in 0..5 {
        ensure!(
            !scenario.vip_answers_tcp()?,
            "the VIP still answers after the sync that removed its Service ({took:?} after it)"
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
    // From 30 sockets held open together: 30 distinct source ports, so 30 flows (a port freed
    // and taken again would make two questions one flow).
    let answers = scenario.udp_answers_from_distinct_ports(30)?;
    for name in &answers {
        ensure!(names.contains(name), "unexpected UDP answer {name:?}");
    }
    let output = scenario.stop_agent()?;
    // The per-Service counters printed on exit count exactly this traffic: one flow per TCP
    // connection, one flow and one packet per UDP question (a new socket each), each backend's
    // UDP packets those it answered.
    let table = CounterTable::parse(&output)?;
    let tcp = table.frontend("203.0.113.10:80/TCP")?;
    ensure!(
        tcp.flows == SPREAD_CONNECTIONS as u64,
        "TCP flows {}, not {SPREAD_CONNECTIONS}",
        tcp.flows
    );
    let udp = table.frontend("203.0.113.10:53/UDP")?;
    ensure!(
        (udp.flows, udp.packets) == (answers.len() as u64, answers.len() as u64),
        "UDP: {} flows and {} packets for {} questions",
        udp.flows,
        udp.packets,
        answers.len()
    );
    for backend in scenario.lab.backends() {
        let answered = answers.iter().filter(|n| **n == backend.name).count() as u64;
        let counted = udp
            .backends
            .get(&format!("{}:{}", backend.addr, lab::UDP_PORT))
            .copied()
            .unwrap_or(0);
        ensure!(
            counted == answered,
            "{} answered {answered} UDP questions, its counter says {counted}",
            backend.name
        );
    }
    let tcp_backend_packets: u64 = tcp.backends.values().sum();
    ensure!(
        tcp_backend_packets == tcp.packets,
        "TCP backends' packets add up to {tcp_backend_packets}, the Service's to {}",
        tcp.packets
    );
    Ok(())
}

/// One frontend's row of the counters the agent prints when it stops, with its backends'.
#[derive(Debug, Default)]
struct FrontendCounters {
    packets: u64,
    flows: u64,
    /// Backend `addr:port` → packets.
    backends: BTreeMap<String, u64>,
}

/// The counter table the agent prints on exit (`runner::print_counters`).
#[derive(Debug, Default)]
struct CounterTable(BTreeMap<String, FrontendCounters>);

impl CounterTable {
    fn parse(output: &[String]) -> Result<Self> {
        let mut table = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in output {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["->", backend, packets, "packets", ..] => {
                    let frontend = current
                        .as_ref()
                        .context("a backend row before a frontend")?;
                    let row: &mut FrontendCounters =
                        table.get_mut(frontend).context("frontend row")?;
                    row.backends
                        .insert(backend.to_string(), packets.parse().context("packets")?);
                }
                // FRONTEND SERVICE PACKETS BYTES FLOWS NO-BACKEND
                [frontend, _service, packets, _bytes, flows, _no_backend]
                    if frontend.contains('/') && frontend.contains(':') =>
                {
                    table.insert(
                        frontend.to_string(),
                        FrontendCounters {
                            packets: packets.parse().context("packets")?,
                            flows: flows.parse().context("flows")?,
                            backends: BTreeMap::new(),
                        },
                    );
                    current = Some(frontend.to_string());
                }
                _ => {}
            }
        }
        ensure!(
            !table.is_empty(),
            "no counter table in the agent's output:\n{}",
            output.join("\n")
        );
        Ok(Self(table))
    }

    fn frontend(&self, frontend: &str) -> Result<&FrontendCounters> {
        self.0
            .get(frontend)
            .with_context(|| format!("no counters for {frontend}: {:?}", self.0))
    }
}

/// The kernel's view of a pinned XDP link: its id and the program in it (`bpftool`).
fn pinned_link(pins: &Path, interface: &str) -> Result<(u64, u64)> {
    let path = pins.join("links").join(format!("xdp-{interface}"));
    let output = std::process::Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(&path)
        .output()
        .context("running bpftool")?;
    ensure!(
        output.status.success(),
        "bpftool link show pinned {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let link: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let id = |key: &str| {
        link[key]
            .as_u64()
            .with_context(|| format!("{key} in {link}"))
    };
    Ok((id("id")?, id("prog_id")?))
}

/// A bpffs mounted for one test, so the agent can pin where `ip netns exec` still sees it (that
/// command remounts /sys, hiding the host's /sys/fs/bpf). Unmounted on drop, also after a
/// failure: that drops every pin under it, so nothing stays attached.
struct Bpffs {
    dir: PathBuf,
}

impl Bpffs {
    fn mount(tag: &str) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("xdp-ingress-bpffs-{tag}-{}", std::process::id()));
        let _ = std::process::Command::new("umount").arg(&dir).output();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .context("running mount")?;
        ensure!(
            status.success(),
            "mount -t bpf bpf {}: {status}",
            dir.display()
        );
        Ok(Self { dir })
    }

    /// The agent's `--bpffs`.
    fn pins(&self) -> PathBuf {
        self.dir.join("xdp-ingress")
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).output();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// The value of the one sample of `name` whose labels contain every one of `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Result<f64> {
    let mut found = metrics.lines().filter(|line| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            && labels.iter().all(|label| line.contains(label))
    });
    let line = found
        .next()
        .with_context(|| format!("no sample {name} {labels:?} in:\n{metrics}"))?;
    ensure!(found.next().is_none(), "several samples {name} {labels:?}");
    let value = line.rsplit(' ').next().unwrap_or_default();
    value
        .parse()
        .with_context(|| format!("sample value in {line:?}"))
}

/// What the probes running through a restart saw.
#[derive(Default)]
struct Probes {
    /// New TCP connections: each one's local address, and who answered (None: it failed).
    tcp: Vec<(std::net::SocketAddr, Option<String>)>,
    /// Longest time without a successful new connection.
    tcp_gap: Duration,
    /// UDP questions on one socket (one flow): the answers, None for a lost one.
    udp: Vec<Option<String>>,
}

/// Runs new TCP connections and a UDP flow from the client until `stop` is set.
fn probe(client: &str, stop: &std::sync::atomic::AtomicBool) -> Result<Probes> {
    use std::{io::BufRead as _, net::TcpStream, net::UdpSocket, sync::atomic::Ordering};
    use xdp_ingress_tests::netns::enter_named;
    std::thread::scope(|scope| {
        let tcp = scope.spawn(|| -> Result<_> {
            enter_named(client)?;
            let mut seen = Vec::new();
            let mut last_ok = std::time::Instant::now();
            let mut gap = Duration::ZERO;
            while !stop.load(Ordering::SeqCst) {
                let attempt = (|| -> Result<(std::net::SocketAddr, Option<String>)> {
                    let stream = TcpStream::connect_timeout(&lab::vip_tcp(), ANSWER_TIMEOUT)?;
                    let local = stream.local_addr()?;
                    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
                    let mut line = String::new();
                    std::io::BufReader::new(stream).read_line(&mut line).ok();
                    let name = line.trim().to_string();
                    Ok((local, (!name.is_empty()).then_some(name)))
                })();
                match attempt {
                    Ok((local, name)) => {
                        if name.is_some() {
                            gap = gap.max(last_ok.elapsed());
                            last_ok = std::time::Instant::now();
                        }
                        seen.push((local, name));
                    }
                    // A connect that failed has no local address worth keeping; count it.
                    Err(_) => seen.push((std::net::SocketAddr::from(([0, 0, 0, 0], 0)), None)),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok((seen, gap.max(last_ok.elapsed())))
        });
        let udp = scope.spawn(|| -> Result<_> {
            enter_named(client)?;
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.connect(lab::vip_udp())?;
            socket.set_read_timeout(Some(Duration::from_millis(500)))?;
            let mut answers = Vec::new();
            let mut buffer = [0u8; 512];
            while !stop.load(Ordering::SeqCst) {
                socket.send(b"who?\n")?;
                answers.push(
                    socket
                        .recv(&mut buffer)
                        .ok()
                        .map(|len| String::from_utf8_lossy(&buffer[..len]).trim().to_string()),
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(answers)
        });
        let (tcp, tcp_gap) = tcp
            .join()
            .map_err(|_| anyhow::anyhow!("TCP probe panicked"))??;
        let udp = udp
            .join()
            .map_err(|_| anyhow::anyhow!("UDP probe panicked"))??;
        Ok(Probes { tcp, tcp_gap, udp })
    })
}

#[test]
fn killed_agent_leaves_forwarding_running_and_its_successor_adopts_every_flow() -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut scenario = Scenario::new("xe-rs", BackendLink::Shared)?;
    let bpffs = Bpffs::mount("xe-rs")?;
    let pins = bpffs.pins();
    let pins_arg = pins.to_str().context("pin path")?.to_string();
    scenario.start_pinned_agent(&pins)?;
    let links_before: Vec<(u64, u64)> = scenario
        .lab
        .node_interfaces()
        .iter()
        .map(|interface| pinned_link(&pins, interface))
        .collect::<Result<_>>()?;

    // Established connections to every backend, held across the restart.
    let mut held = scenario.hold_connections_to_every_backend()?;

    // New connections and a UDP flow keep running while the agent is killed and restarted.
    let stop = AtomicBool::new(false);
    let client = scenario.lab.client().name().to_string();
    let (probes, restart) = std::thread::scope(|scope| -> Result<_> {
        let probes = scope.spawn(|| probe(&client, &stop));
        let restart = (|| -> Result<Duration> {
            std::thread::sleep(Duration::from_millis(500));
            let killed_at = std::time::Instant::now();
            let agent = scenario.agent.take().context("the agent is not running")?;
            agent.kill()?;
            // The agent is gone; the pinned program still forwards.
            ensure!(
                scenario.xdp_attached()?,
                "XDP detached when the agent was killed"
            );
            std::thread::sleep(Duration::from_secs(1));
            scenario.start_pinned_agent(&pins)?;
            let down = killed_at.elapsed();
            std::thread::sleep(Duration::from_millis(500));
            Ok(down)
        })();
        stop.store(true, Ordering::SeqCst);
        let probes = probes
            .join()
            .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
        Ok((probes, restart?))
    })?;
    let adopted = scenario
        .agent()?
        .output()
        .into_iter()
        .find(|line| line.contains("adopted the pinned datapath"))
        .context("the new agent did not adopt the pinned maps")?;
    println!("restart: agent down for {restart:?}; {adopted}");
    ensure!(
        adopted.contains("frontends=2") && adopted.contains("orphans=0"),
        "{adopted}"
    );
    // The new program went into the pinned links (an atomic swap), not a detach and re-attach:
    // as the kernel sees them, the same links now hold another program.
    for (interface, (link, program)) in scenario.lab.node_interfaces().iter().zip(&links_before) {
        let (link_now, program_now) = pinned_link(&pins, interface)?;
        ensure!(
            link_now == *link && program_now != *program,
            "{interface}: link {link} with program {program} before, link {link_now} with \
             program {program_now} after the restart"
        );
    }

    // Zero established connections broken: each still answered by the backend it had.
    for connection in &mut held {
        let greeting = connection.greeting().to_string();
        let answer = connection
            .ask()
            .with_context(|| format!("a connection held to {greeting} across the restart"))?;
        ensure!(
            answer == greeting,
            "a connection held to {greeting} is now answered by {answer}"
        );
    }
    // New connections succeeded throughout (the datapath never stopped).
    let failed = probes.tcp.iter().filter(|(_, name)| name.is_none()).count();
    println!(
        "during the restart: {} new TCP connections, {failed} failed, longest gap {:?}; {} UDP \
         questions on one flow, {} unanswered",
        probes.tcp.len(),
        probes.tcp_gap,
        probes.udp.len(),
        probes.udp.iter().filter(|a| a.is_none()).count()
    );
    ensure!(
        failed == 0,
        "{failed} of {} new connections failed",
        probes.tcp.len()
    );
    // The probes ran through the whole restart (one every 20 ms or so) ...
    ensure!(
        probes.tcp.len() >= 60,
        "too few probes: {} in {restart:?} down",
        probes.tcp.len()
    );
    // ... and none had to retransmit its SYN (the first retransmission waits 1 s).
    ensure!(
        probes.tcp_gap < Duration::from_millis(500),
        "a {:?} gap between answered new connections",
        probes.tcp_gap
    );
    // The UDP flow kept its backend and lost nothing.
    let udp_backends: std::collections::BTreeSet<_> = probes.udp.iter().collect();
    ensure!(
        udp_backends.len() == 1 && !udp_backends.contains(&None),
        "the UDP flow was answered by {udp_backends:?}"
    );

    // inspect reads the pinned maps: every held connection's flow names its backend.
    let flows: serde_json::Value = serde_json::from_str(
        &scenario.agent_command(&["inspect", "flows", "--json", "--bpffs", &pins_arg])?,
    )?;
    let flows = flows.as_array().context("flows is not a list")?;
    for connection in &held {
        let client = connection.local_addr()?.to_string();
        let flow = flows
            .iter()
            .find(|f| f["client"] == client.as_str() && f["protocol"] == "TCP")
            .with_context(|| format!("no flow for {client} in inspect flows"))?;
        let backend = scenario
            .lab
            .backend_named(connection.greeting())
            .context("greeting names no backend")?;
        ensure!(
            flow["backend"] == format!("{}:{}", backend.addr, lab::TCP_PORT).as_str(),
            "inspect shows {client} -> {}, but {} answers it",
            flow["backend"],
            connection.greeting()
        );
    }
    let services: serde_json::Value = serde_json::from_str(
        &scenario.agent_command(&["inspect", "services", "--json", "--bpffs", &pins_arg])?,
    )?;
    let tcp_service = services
        .as_array()
        .and_then(|s| s.iter().find(|s| s["frontend"] == "203.0.113.10:80/TCP"))
        .context("inspect services has no 203.0.113.10:80/TCP")?;
    ensure!(tcp_service["service"] == "demo/web", "{tcp_service}");
    let mut programmed: Vec<String> = tcp_service["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["address"].as_str().map(String::from))
        .collect();
    programmed.sort();
    let mut expected: Vec<String> = scenario
        .lab
        .backends()
        .iter()
        .map(|b| format!("{}:{}", b.addr, lab::TCP_PORT))
        .collect();
    expected.sort();
    ensure!(
        programmed == expected,
        "inspect services: {programmed:?}, not {expected:?}"
    );

    // The counters survived the restart and count exactly the flows made.
    let metrics = scenario
        .lab
        .node()
        .exec(&["curl", "-sf", "http://127.0.0.1:9900/metrics"])?;
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let tcp_flows: std::collections::BTreeSet<_> = held
        .iter()
        .map(|c| c.local_addr())
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .chain(probes.tcp.iter().map(|(local, _)| *local))
        .collect();
    let tcp_label = r#"frontend="203.0.113.10:80/TCP""#;
    let udp_label = r#"frontend="203.0.113.10:53/UDP""#;
    let new_tcp = sample(
        &metrics,
        "xdp_ingress_service_new_flows_total",
        &[tcp_label],
    )?;
    let new_udp = sample(
        &metrics,
        "xdp_ingress_service_new_flows_total",
        &[udp_label],
    )?;
    ensure!(
        new_tcp == tcp_flows.len() as f64 && new_udp == 1.0,
        "new flows: TCP {new_tcp} (made {}), UDP {new_udp} (made 1)",
        tcp_flows.len()
    );
    let tcp_packets = sample(&metrics, "xdp_ingress_service_packets_total", &[tcp_label])?;
    let per_backend: f64 = scenario
        .lab
        .backends()
        .iter()
        .map(|b| {
            let backend = format!(r#"backend="{}:{}""#, b.addr, lab::TCP_PORT);
            sample(
                &metrics,
                "xdp_ingress_backend_packets_total",
                &[tcp_label, &backend],
            )
        })
        .sum::<Result<f64>>()?;
    ensure!(
        tcp_packets > 0.0 && tcp_packets == per_backend,
        "TCP packets {tcp_packets}, summed over backends {per_backend}"
    );
    let conntrack = sample(&metrics, "xdp_ingress_conntrack_entries", &[])?;
    ensure!(
        conntrack == flows.len() as f64,
        "conntrack gauge {conntrack}, inspect flows {}",
        flows.len()
    );

    // The probe port answers from outside the node; the /debug views only on loopback.
    let from_client = |path: &str| -> Result<String> {
        let url = format!("http://{}:9900{path}", lab::NODE_CLIENT_ADDR);
        let output = scenario.lab.client().exec(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ])?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    ensure!(from_client("/readyz")? == "200", "readyz from the client");
    ensure!(
        from_client("/debug/routes")? == "403",
        "/debug/routes answered a client off the node"
    );

    // SIGTERM: the agent exits, the datapath stays; `cleanup` removes it.
    scenario.stop_agent()?;
    ensure!(
        scenario.xdp_attached()?,
        "XDP detached on SIGTERM although pinned"
    );
    ensure!(
        scenario.vip_answers_tcp()?,
        "the VIP stopped answering after SIGTERM"
    );
    let cleanup = std::process::Command::new(&scenario.binary)
        .args(["cleanup", "--bpffs", &pins_arg])
        .output()?;
    ensure!(cleanup.status.success(), "cleanup: {cleanup:?}");
    ensure!(
        !scenario.xdp_attached()?,
        "XDP still attached after cleanup"
    );
    ensure!(
        !pins.exists(),
        "{} still exists after cleanup",
        pins.display()
    );
    ensure!(
        !scenario.vip_answers_tcp()?,
        "the VIP still answers after cleanup"
    );
    drop(held);
    Ok(())
}

#[test]
fn pinned_maps_are_reused_only_when_their_layout_matches() -> Result<()> {
    use xdp_ingress::datapath::{Datapath, MapSizes, PinDir, PinnedState};
    // SAFETY: plain FFI call without arguments.
    ensure!(unsafe { libc::geteuid() } == 0, "needs root (BPF, mount)");
    let bpffs = Bpffs::mount("xe-pm")?;
    let pins = PinDir::new(bpffs.pins());
    let sizes = MapSizes {
        services: 64,
        backends: 256,
        maglev_slots: 1 << 16,
        flows: 1024,
    };
    let load = |sizes: &MapSizes| -> Result<PinnedState> {
        let (datapath, state) = Datapath::load_pinned(sizes, Some(&pins))?;
        drop(datapath);
        Ok(state)
    };
    ensure!(
        load(&sizes)? == PinnedState::Fresh,
        "nothing was pinned yet"
    );
    ensure!(
        load(&sizes)? == PinnedState::Adopted,
        "same build, same sizes"
    );
    // A different flow table size: the state maps are adopted, FLOWS is made anew.
    let more_flows = MapSizes {
        flows: 2048,
        ..sizes
    };
    ensure!(
        load(&more_flows)? == PinnedState::Adopted,
        "only FLOWS differs"
    );
    // A different Service capacity changes state maps: everything starts empty.
    let more_services = MapSizes {
        services: 128,
        ..more_flows
    };
    ensure!(
        load(&more_services)? == PinnedState::Fresh,
        "state maps differ"
    );
    ensure!(
        load(&more_services)? == PinnedState::Adopted,
        "pinned again"
    );
    let removed = pins.remove_all()?;
    ensure!(removed.len() >= 13, "cleanup removed {removed:?}");
    ensure!(!bpffs.pins().exists(), "pin directory left behind");
    Ok(())
}
