//! Section 2: 10,000 Services × 10 endpoints from files: the agent's time until they are in the
//! maps, the maps' kernel memory, and the same Services' rule sync for the kube-proxy peers.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use xdp_ingress_tests::netns::{run, Netns};

use super::{
    kube_proxy::load_rules,
    kube_proxy_cluster::{ipt_full, nft_full, Services},
    report::{median, Report},
    Settings, ENDPOINTS, SCALE_SERVICES, SERVICE_PORT, VIP,
};

/// The agent's flags for SNAT and affinity tables of 1 M flows each.
pub(crate) const BIG_TABLES: &[&str] = &[
    "--max-snat-flows",
    "1048576",
    "--max-affinity-entries",
    "1048576",
];

/// VIP and port of scale Service `i`: 100 VIPs × 100 ports.
pub(crate) fn scale_frontend(i: usize) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::new(203, 0, 113, 1 + (i / 100) as u8),
        1000 + (i % 100) as u16,
    )
}

pub(crate) fn endpoint_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 11 + i as u8)
}

/// Writes `count` UDP LoadBalancer Services with `ENDPOINTS` ready endpoints each (port 5000).
pub(crate) fn write_manifests(dir: &Path, count: usize, one_vip: bool) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut text = String::new();
    let endpoints: Vec<Ipv4Addr> = (0..ENDPOINTS).map(endpoint_addr).collect();
    for i in 0..count {
        let frontend = if one_vip {
            (VIP, SERVICE_PORT)
        } else {
            scale_frontend(i)
        };
        service_manifest(&mut text, i, frontend, &endpoints, None);
    }
    std::fs::write(dir.join("services.yaml"), text)?;
    Ok(())
}

/// Appends Service `svc-{i}` (UDP LoadBalancer at `frontend`) and its EndpointSlice (ready
/// `endpoints`, port 5000, on node `node` if given) to `text`.
pub(crate) fn service_manifest(
    text: &mut String,
    i: usize,
    (vip, port): (Ipv4Addr, u16),
    endpoints: &[Ipv4Addr],
    node: Option<&str>,
) {
    let _ = write!(
        text,
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\n\
         spec:\n  type: LoadBalancer\n  ports: [{{name: p, protocol: UDP, port: {port}}}]\n\
         status: {{loadBalancer: {{ingress: [{{ip: {vip}}}]}}}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: svc-{i}-x, namespace: bench, labels: {{kubernetes.io/service-name: svc-{i}}}}}\n\
         addressType: IPv4\nports: [{{name: p, protocol: UDP, port: {SERVICE_PORT}}}]\nendpoints:\n"
    );
    let node = node.map(|n| format!(", nodeName: {n}")).unwrap_or_default();
    for endpoint in endpoints {
        let _ = writeln!(
            text,
            "- {{addresses: [{endpoint}], conditions: {{ready: true}}{node}}}"
        );
    }
}

/// A running agent; killed on drop.
pub(crate) struct Agent {
    pub(crate) child: Child,
    pub(crate) lines: mpsc::Receiver<String>,
}

impl Agent {
    pub(crate) fn start(
        settings: &Settings,
        ns: &Netns,
        manifests: &Path,
        interfaces: &[&str],
    ) -> Result<(Self, Instant)> {
        Self::start_with(settings, ns, manifests, interfaces, &[])
    }

    /// [`Agent::start`] with more arguments for `run`.
    pub(crate) fn start_with(
        settings: &Settings,
        ns: &Netns,
        manifests: &Path,
        interfaces: &[&str],
        extra: &[&str],
    ) -> Result<(Self, Instant)> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns.name()])
            .arg(&settings.agent)
            .arg("run");
        command.arg("--manifests").arg(manifests);
        for interface in interfaces {
            command.args(["--interface", interface]);
        }
        command.args(["--bpffs", "off"]).args(extra);
        let started = Instant::now();
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the agent")?;
        let (tx, lines) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Ok((Self { child, lines }, started))
    }

    /// Waits for a line containing `needle`; returns it.
    pub(crate) fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(_) => bail!("agent did not print {needle:?} within {timeout:?}"),
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: FFI call sending SIGTERM to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kernel memory of the maps of the `xdp_ingress` program attached in namespace `ns`, by map
/// name (other agents on the machine load programs of the same name).
pub(crate) fn map_memory(ns: &Netns) -> Result<BTreeMap<String, u64>> {
    let output = ns.exec(&["bpftool", "-j", "net", "show"])?;
    let attached: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let program = attached
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["xdp"].as_array())
        .flatten()
        .filter_map(|link| link["id"].as_u64())
        .next()
        .with_context(|| format!("no XDP program attached in {}", ns.name()))?;
    let output = run(
        "bpftool",
        &["-j", "prog", "show", "id", &program.to_string()],
    )?;
    let program: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    if program["name"].as_str() != Some(ingress_common::XDP_PROGRAM) {
        bail!("the XDP program in {} is {}", ns.name(), program["name"]);
    }
    let ids: Vec<u64> = program["map_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|id| id.as_u64())
        .collect();
    let mut memory = BTreeMap::new();
    for id in ids {
        let output = run("bpftool", &["-j", "map", "show", "id", &id.to_string()])?;
        let text = String::from_utf8_lossy(&output.stdout).to_string();
        let field = |name: &str| -> Option<String> {
            let start = text.find(&format!("\"{name}\":"))? + name.len() + 3;
            let rest = &text[start..];
            let end = rest.find([',', '}'])?;
            Some(rest[..end].trim_matches('"').to_string())
        };
        let name = field("name").unwrap_or_else(|| id.to_string());
        let bytes = field("bytes_memlock")
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        memory.insert(name, bytes);
    }
    Ok(memory)
}

pub(crate) fn scale(settings: &Settings, report: &mut Report) -> Result<Peers> {
    let ns = Netns::new("xib-scale")?;
    ns.ip(&["link", "add", "s0", "type", "veth", "peer", "name", "s1"])?;
    ns.ip(&["link", "set", "s0", "up"])?;
    ns.ip(&["link", "set", "s1", "up"])?;
    let dir = std::env::temp_dir().join(format!("xdp-ingress-bench-{}", std::process::id()));
    let _cleanup = RemoveDir(dir.clone());
    let manifests = dir.join("scale");
    write_manifests(&manifests, SCALE_SERVICES, false)?;
    let rounds = if settings.quick { 1 } else { 3 };
    let (mut start_to_synced, mut reload_ms, mut memory_total) = (Vec::new(), Vec::new(), 0u64);
    let mut memory = BTreeMap::new();
    let mut sized_for_1m = 0u64;
    for _ in 0..rounds {
        let (agent, started) = Agent::start_with(settings, &ns, &manifests, &["s0"], BIG_TABLES)?;
        // The sync logs what it programmed ("L4: ..."), then "synced" with its duration.
        let programmed = agent.wait_for("L4: ", Duration::from_secs(60))?;
        let line = agent.wait_for("synced", Duration::from_secs(60))?;
        start_to_synced.push(started.elapsed().as_secs_f64());
        if !programmed.contains(&format!(
            "L4: {SCALE_SERVICES} Service port(s), {} backend(s)",
            SCALE_SERVICES * ENDPOINTS
        )) {
            bail!("unexpected first sync: {programmed}");
        }
        // Like with like: nft and iptables-restore are timed parsing their rules too, so ours is
        // reading and parsing the files (read_ms) plus translating and writing (elapsed_ms).
        let field = |name: &str| {
            line.split(&format!("{name}="))
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|ms| ms.parse::<f64>().ok())
                .with_context(|| format!("{name} in the sync line {line:?}"))
        };
        reload_ms.push(field("read_ms")? + field("elapsed_ms")?);
        memory = map_memory(&ns)?;
        memory_total = memory.values().sum();
        sized_for_1m = ["REVERSE_FLOWS", "AFFINITY"]
            .iter()
            .filter_map(|name| memory.get(*name))
            .sum();
        drop(agent);
    }
    let mut lines = vec![
        format!("{SCALE_SERVICES} UDP LoadBalancer Services × {ENDPOINTS} ready endpoints in one manifest file; median of {rounds} agent start(s); the SNAT and session-affinity tables sized for 1 M flows (`{}`), the other maps at their defaults.", BIG_TABLES.join(" ")),
        String::new(),
        "| measure | value | target |".into(),
        "| --- | ---: | --- |".into(),
        format!("| agent start → all Services in the maps (process start, BPF load, YAML parse, translate, maps) | {:.2} s | < 2 s |", median(&mut start_to_synced)),
        format!("| of which read and parse the files, translate, write the maps (the agent's read_ms + elapsed_ms) | {:.0} ms | |", median(&mut reload_ms)),
        format!("| kernel memory of all maps (bpftool bytes_memlock), SNAT and affinity tables for 1 M flows | {:.1} MiB | |", memory_total as f64 / 1048576.0),
        format!("| of which the SNAT (REVERSE_FLOWS) and affinity (AFFINITY) tables | {:.1} MiB | |", sized_for_1m as f64 / 1048576.0),
        format!("| all other maps (default sizes) | {:.1} MiB | < 100 MiB |", (memory_total - sized_for_1m) as f64 / 1048576.0),
        String::new(),
        "Map memory: ".to_string() + &memory.iter().map(|(n, b)| format!("{n} {:.1} MiB", *b as f64 / 1048576.0)).collect::<Vec<_>>().join(", "),
        String::new(),
    ];
    // The same Services as kube-proxy writes them; the namespaces stay loaded for the
    // incremental section.
    let (peers, nft_s, ipt_s) = load_peers()?;
    let ours = median(&mut reload_ms) / 1e3;
    lines.push("Rule sync of the same 10,000 Services, from nothing, in kube-proxy's own shape for a LoadBalancer Service with externalTrafficPolicy Cluster (DNAT + masquerade; see kube_proxy_cluster.rs), loaded with one command. Like with like: each figure includes parsing its input (ours: the YAML manifests; nft and iptables-restore: their rule text, timed wall-clock around the command):".into());
    lines.push(String::new());
    lines.push("| mode | sync time | × ours |".into());
    lines.push("| --- | ---: | ---: |".into());
    lines.push(format!(
        "| ours (read + parse YAML, translate, write maps) | {:.0} ms | 1.0 |",
        ours * 1e3
    ));
    lines.push(format!(
        "| nftables (`nft -f`, kube-proxy nftables mode's full sync) | {:.0} ms | {:.1} |",
        nft_s * 1e3,
        nft_s / ours
    ));
    lines.push(format!(
        "| iptables (`iptables-restore`, kube-proxy iptables mode's nat table) | {:.0} ms | {:.1} |",
        ipt_s * 1e3,
        ipt_s / ours
    ));
    report.section("10,000 Services × 10 endpoints", lines);
    Ok(peers)
}

/// The 10,000 Services loaded into nftables and iptables (kube-proxy's full syncs), each in a
/// namespace of its own, kept for the incremental section; with the load times in seconds.
pub(crate) fn load_peers() -> Result<(Peers, f64, f64)> {
    let services = scale_services();
    let nft = nft_full(&services);
    let ipt = ipt_full(&services, true, &[]);
    let peers = Peers {
        nft: Netns::new("xib-nft")?,
        ipt: Netns::new("xib-ipt")?,
        services,
    };
    // One round: loading 10,000 Services into nftables takes minutes.
    eprintln!("loading 10,000 Services into nftables (minutes)...");
    let nft_s = load_rules(&peers.nft, &["nft", "-f", "-"], &nft)?.as_secs_f64();
    eprintln!("loading 10,000 Services into iptables...");
    let ipt_s = load_rules(&peers.ipt, &["iptables-restore"], &ipt)?.as_secs_f64();
    Ok((peers, nft_s, ipt_s))
}

/// The 10,000 Services as the kube-proxy rulesets describe them.
pub(crate) fn scale_services() -> Services {
    Services {
        frontends: (0..SCALE_SERVICES).map(scale_frontend).collect(),
        endpoints: vec![(0..ENDPOINTS).map(endpoint_addr).collect(); SCALE_SERVICES],
    }
}

/// The peers' namespaces with the 10,000 Services loaded.
pub(crate) struct Peers {
    pub(crate) nft: Netns,
    pub(crate) ipt: Netns,
    pub(crate) services: Services,
}

pub(crate) struct RemoveDir(pub(crate) PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
