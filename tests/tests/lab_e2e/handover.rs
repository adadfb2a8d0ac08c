//! A killed agent and its successor: forwarding goes on without the agent, and the new agent
//! adopts every flow and the counters it finds pinned.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{ensure, Context as _, Result};
use xdp_ingress_tests::lab::{self, BackendLink, HeldConnection};

use super::{pinning::Bpffs, scenario::Scenario, ANSWER_TIMEOUT};

/// One frontend's row of the counters the agent prints when it stops, with its backends'.
#[derive(Debug, Default)]
pub(crate) struct FrontendCounters {
    pub(crate) packets: u64,
    pub(crate) flows: u64,
    /// Backend `addr:port` → packets.
    pub(crate) backends: BTreeMap<String, u64>,
}

/// The counter table the agent prints on exit (`runner::print_counters`).
#[derive(Debug, Default)]
pub(crate) struct CounterTable(pub(crate) BTreeMap<String, FrontendCounters>);

impl CounterTable {
    pub(crate) fn parse(output: &[String]) -> Result<Self> {
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

    pub(crate) fn frontend(&self, frontend: &str) -> Result<&FrontendCounters> {
        self.0
            .get(frontend)
            .with_context(|| format!("no counters for {frontend}: {:?}", self.0))
    }
}

/// The kernel's view of a pinned XDP link: its id and the program in it (`bpftool`).
pub(crate) fn pinned_link(pins: &Path, interface: &str) -> Result<(u64, u64)> {
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

/// The value of the one sample of `name` whose labels contain every one of `labels`.
pub(crate) fn sample(metrics: &str, name: &str, labels: &[&str]) -> Result<f64> {
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
pub(crate) struct Probes {
    /// New TCP connections: each one's local address, and who answered (None: it failed).
    pub(crate) tcp: Vec<(std::net::SocketAddr, Option<String>)>,
    /// Longest time without a successful new connection.
    pub(crate) tcp_gap: Duration,
    /// UDP questions on one socket (one flow): the answers, None for a lost one.
    pub(crate) udp: Vec<Option<String>>,
}

/// Runs new TCP connections and a UDP flow from the client until `stop` is set.
pub(crate) fn probe(client: &str, stop: &std::sync::atomic::AtomicBool) -> Result<Probes> {
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
    if !xdp_ingress_tests::root::root_or_skip(
        "killed_agent_leaves_forwarding_running_and_its_successor_adopts_every_flow",
    ) {
        return Ok(());
    }
    let mut scenario = Scenario::new("xe-rs", BackendLink::Shared)?;
    let bpffs = Bpffs::mount("xe-rs")?;
    let pins = bpffs.pins();
    scenario.start_pinned_agent(&pins)?;
    let links_before: Vec<(u64, u64)> = scenario
        .lab
        .node_interfaces()
        .iter()
        .map(|interface| pinned_link(&pins, interface))
        .collect::<Result<_>>()?;
    // Established connections to every backend, held across the restart.
    let mut held = scenario.hold_connections_to_every_backend()?;
    let (probes, restart) = kill_and_restart_while_probing(&mut scenario, &pins)?;
    successor_adopted_the_pinned_maps(&mut scenario, restart)?;
    links_kept_and_given_the_new_program(&scenario, &pins, &links_before)?;
    held_connections_kept_their_backends(&mut held)?;
    new_connections_and_the_udp_flow_never_stopped(&probes, restart)?;
    let flows = inspect_shows_each_held_flow_and_every_backend(&scenario, &pins, &held)?;
    counters_count_exactly_the_flows_made(&scenario, &held, &probes, flows)?;
    probes_answer_off_the_node_debug_views_only_on_it(&scenario)?;
    sigterm_keeps_the_datapath_and_cleanup_removes_it(&mut scenario, &pins)?;
    drop(held);
    Ok(())
}

/// New TCP connections and a UDP flow keep running while the agent is killed with SIGKILL and a
/// successor started on the same pins; returns what they saw and how long the agent was down.
fn kill_and_restart_while_probing(
    scenario: &mut Scenario,
    pins: &Path,
) -> Result<(Probes, Duration)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    let client = scenario.lab.client().name().to_string();
    std::thread::scope(|scope| -> Result<_> {
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
            scenario.start_pinned_agent(pins)?;
            let down = killed_at.elapsed();
            std::thread::sleep(Duration::from_millis(500));
            Ok(down)
        })();
        stop.store(true, Ordering::SeqCst);
        let probes = probes
            .join()
            .map_err(|_| anyhow::anyhow!("probe thread panicked"))??;
        Ok((probes, restart?))
    })
}

/// The successor adopted the pinned maps: both frontends, no orphans.
fn successor_adopted_the_pinned_maps(scenario: &mut Scenario, restart: Duration) -> Result<()> {
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
    Ok(())
}

/// The new program went into the pinned links (an atomic swap), not a detach and re-attach.
fn links_kept_and_given_the_new_program(
    scenario: &Scenario,
    pins: &Path,
    links_before: &[(u64, u64)],
) -> Result<()> {
    // The new program went into the pinned links (an atomic swap), not a detach and re-attach:
    // as the kernel sees them, the same links now hold another program.
    for (interface, (link, program)) in scenario.lab.node_interfaces().iter().zip(links_before) {
        let (link_now, program_now) = pinned_link(pins, interface)?;
        ensure!(
            link_now == *link && program_now != *program,
            "{interface}: link {link} with program {program} before, link {link_now} with \
             program {program_now} after the restart"
        );
    }

    Ok(())
}

/// Zero established connections broken: each still answered by the backend it had.
fn held_connections_kept_their_backends(held: &mut [HeldConnection]) -> Result<()> {
    // Zero established connections broken: each still answered by the backend it had.
    for connection in held.iter_mut() {
        let greeting = connection.greeting().to_string();
        let answer = connection
            .ask()
            .with_context(|| format!("a connection held to {greeting} across the restart"))?;
        ensure!(
            answer == greeting,
            "a connection held to {greeting} is now answered by {answer}"
        );
    }
    Ok(())
}

/// New connections succeeded throughout, with no SYN retransmitted; the UDP flow kept its backend.
fn new_connections_and_the_udp_flow_never_stopped(
    probes: &Probes,
    restart: Duration,
) -> Result<()> {
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

    Ok(())
}

/// `inspect` reads the pinned maps: every held connection's flow names the backend answering
/// it, and the TCP Service lists every backend. Returns the flows.
fn inspect_shows_each_held_flow_and_every_backend(
    scenario: &Scenario,
    pins: &Path,
    held: &[HeldConnection],
) -> Result<Vec<serde_json::Value>> {
    let pins_arg = pins.to_str().context("pin path")?;
    // inspect reads the pinned maps: every held connection's flow names its backend.
    let flows: serde_json::Value = serde_json::from_str(
        &scenario.agent_command(&["inspect", "flows", "--json", "--bpffs", pins_arg])?,
    )?;
    let flows = flows.as_array().context("flows is not a list")?.clone();
    for connection in held {
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
        &scenario.agent_command(&["inspect", "services", "--json", "--bpffs", pins_arg])?,
    )?;
    let tcp_service = services
        .as_array()
        .and_then(|s| s.iter().find(|s| s["frontend"] == "203.0.113.10:80/TCP"))
        .context("inspect services has no 203.0.113.10:80/TCP")?;
    ensure!(tcp_service["service"] == "demo/web", "{tcp_service}");
    ensure!(
        tcp_service["kind"] == "LoadBalancer"
            && tcp_service["external_traffic_policy"] == "Cluster"
            && tcp_service["backends"].as_array().is_some_and(|b| b
                .iter()
                .all(|b| b["remote"] == false && b["draining"] == false)),
        "kind, policy and endpoint states: {tcp_service}"
    );
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

    Ok(flows)
}

/// The counters survived the restart and count exactly the flows made.
fn counters_count_exactly_the_flows_made(
    scenario: &Scenario,
    held: &[HeldConnection],
    probes: &Probes,
    flows: Vec<serde_json::Value>,
) -> Result<()> {
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

    Ok(())
}

/// The probe port answers from outside the node; the /debug views only on loopback.
fn probes_answer_off_the_node_debug_views_only_on_it(scenario: &Scenario) -> Result<()> {
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

    Ok(())
}

/// SIGTERM: the agent exits, the datapath stays; `cleanup` removes it.
fn sigterm_keeps_the_datapath_and_cleanup_removes_it(
    scenario: &mut Scenario,
    pins: &Path,
) -> Result<()> {
    let pins_arg = pins.to_str().context("pin path")?;
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
        .args(["cleanup", "--bpffs", pins_arg])
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
    Ok(())
}
