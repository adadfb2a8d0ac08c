//! `cargo xtask bench sync`: the control plane in cluster mode, against the fake API server
//! (`tests/fake-apiserver`: the real list/watch protocol on loopback; the agent runs its real kube
//! client through a kubeconfig). Everything runs in a network namespace the bench makes, the agent
//! attached in generic XDP mode to a veth interface there, so its BPF maps are real.
//!
//! 1. Cold start: 10,000 LoadBalancer Services × 10 endpoints (one EndpointSlice each) and 5,000
//!    Ingresses in the server; time from starting the agent binary to `/readyz` answering 200
//!    (everything listed, translated, in the BPF maps and the proxy). Target < 3 s.
//! 2. RSS of the agent at that size. Target < 300 MiB.
//! 3. One endpoint change to visible in the BPF map: an EndpointSlice changed in the server, then
//!    the `SERVICES` entry of its frontend polled (read from the kernel, as any other process can)
//!    until it points at a new table; p50 and p99 over 1,000 changes. Target p99 < 20 ms.
//! 4. A rollout: 1,000 EndpointSlice updates spread over 1 s; how many datapath syncs the agent
//!    made for them, and the largest lag from an update to its frontend's new entry.
//!
//! Addresses are from 198.18.0.0/15 (the benchmarking range, RFC 2544) inside the namespace; no
//! traffic is sent. Prints the figures and rewrites the sync section of docs/benchmarks.md.
//! Needs root. `--quick`: 1,000 Services, 100 changes.

use std::{
    path::PathBuf,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use fake_apiserver::FakeApiServer;
use ingress_common::ServiceEntry;
use serde_json::json;
use xdp_ingress_tests::netns::Netns;

mod agent;
mod objects;
mod report;

use agent::{entry, ready, services_map, Agent};
use objects::{endpoint_slice, ingress, service};
use report::{median, pass, percentile, write_report};

const ENDPOINTS: usize = 10;
const ADMIN: &str = "127.0.0.1:19900";
const INTERFACE: &str = "xi-s0";

struct Settings {
    quick: bool,
    agent: PathBuf,
    workspace: PathBuf,
}

impl Settings {
    fn services(&self) -> usize {
        if self.quick {
            1_000
        } else {
            10_000
        }
    }

    fn ingresses(&self) -> usize {
        self.services() / 2
    }

    fn changes(&self) -> usize {
        if self.quick {
            100
        } else {
            1_000
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `cargo bench` passes --bench; anything else is ours or ignored.
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let agent = match std::env::var_os("XDP_INGRESS_BIN") {
        Some(path) => PathBuf::from(path),
        None => workspace.join("target/release/xdp-ingress"),
    };
    if !agent.is_file() {
        bail!(
            "agent binary {} missing (cargo xtask bench sync builds it)",
            agent.display()
        );
    }
    let settings = Settings {
        quick,
        agent,
        workspace,
    };
    let mut lines = Vec::new();
    run(&settings, &mut lines)?;
    write_report(&settings, &lines)
}

fn run(settings: &Settings, lines: &mut Vec<String>) -> Result<()> {
    let ns = Netns::new("xi-bsync")?;
    ns.ip(&["link", "set", "lo", "up"])?;
    // A veth pair with both ends in the namespace: this kernel may lack the dummy driver.
    ns.ip(&[
        "link", "add", INTERFACE, "type", "veth", "peer", "name", "xi-s1",
    ])?;
    ns.ip(&["link", "set", INTERFACE, "up"])?;
    ns.ip(&["link", "set", "xi-s1", "up"])?;
    let server = ns.run_inside(|| FakeApiServer::start("127.0.0.1:0".parse()?))?;
    let dir = tempdir()?;
    let kubeconfig = dir.join("kubeconfig");
    server.write_kubeconfig(&kubeconfig)?;

    let (services, ingresses) = (settings.services(), settings.ingresses());
    let loading = Instant::now();
    server.apply(&json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": "xdp-ingress"}, "spec": {"controller": "xdp-ingress.dev/controller"}
    }))?;
    for i in 0..services {
        server.apply(&service(i))?;
        server.apply(&endpoint_slice(i, 0))?;
    }
    for i in 0..ingresses {
        server.apply(&ingress(i))?;
    }
    println!(
        "loaded {services} Services × {ENDPOINTS} endpoints and {ingresses} Ingresses into the fake API server in {:.1} s",
        loading.elapsed().as_secs_f64()
    );

    // 1 and 2: cold start and memory, three starts (the last agent stays for 3 and 4).
    let mut starts = Vec::new();
    let mut rss = Vec::new();
    let mut agent = None;
    for _ in 0..3 {
        // The previous agent must be gone (and its XDP detached) before the next starts.
        drop(agent.take());
        let started = Instant::now();
        let started_agent = Agent::start(settings, &ns, &kubeconfig)?;
        while !ready(&ns) {
            if started.elapsed() > Duration::from_secs(120) {
                bail!("the agent was not ready within 120 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        starts.push(started.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(500));
        rss.push(started_agent.rss_kib()? as f64 / 1024.0);
        agent = Some(started_agent);
    }
    let agent = agent.context("no agent")?;
    let (cold_start, rss_mib) = (median(&mut starts), median(&mut rss));
    let map = services_map()?;
    let programmed = (0..services).filter(|&i| entry(&map, i).is_some()).count();
    if programmed != services {
        bail!("ready, but only {programmed} of {services} frontends are in the SERVICES map");
    }
    lines.push(format!(
        "| cold start to ready: {services} Services × {ENDPOINTS} endpoints, {ingresses} Ingresses (median of 3 starts: {}) | {cold_start:.2} s | < 3 s: {} |",
        starts.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", "),
        pass(cold_start < 3.0)
    ));
    lines.push(format!(
        "| agent RSS at that size (median of 3) | {rss_mib:.0} MiB | < 300 MiB: {} |",
        pass(rss_mib < 300.0)
    ));

    // 3: one change at a time.
    let mut latencies = Vec::new();
    for n in 0..settings.changes() {
        let i = (n * 37) % services;
        let before = entry(&map, i).context("frontend missing")?;
        let changed_at = Instant::now();
        server.apply(&endpoint_slice(i, n + 1))?;
        loop {
            match entry(&map, i) {
                Some(now) if now != before => break,
                _ => {}
            }
            if changed_at.elapsed() > Duration::from_secs(10) {
                bail!("change {n} (Service {i}) not in the map after 10 s");
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        latencies.push(changed_at.elapsed().as_secs_f64() * 1e3);
    }
    if let Ok(lines) = agent.last_sync_lines.lock() {
        println!("the agent's last sync:");
        for line in lines.iter() {
            println!("  {line}");
        }
    }
    latencies.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&latencies, 50.0), percentile(&latencies, 99.0));
    lines.push(format!(
        "| one endpoint change to the BPF map, {} changes | p50 {p50:.1} ms, p99 {p99:.1} ms | p99 < 20 ms: {} |",
        latencies.len(),
        pass(p99 < 20.0)
    ));

    // 4: a rollout.
    let rollout = settings.changes();
    let generation = settings.changes() + 10;
    let before: Vec<Option<ServiceEntry>> = (0..rollout).map(|i| entry(&map, i)).collect();
    let syncs_before = agent.syncs.load(Ordering::SeqCst);
    let spacing = Duration::from_secs(1) / rollout as u32;
    let issued_start = Instant::now();
    let mut issued: Vec<Duration> = Vec::with_capacity(rollout);
    let mut visible: Vec<Option<Duration>> = vec![None; rollout];
    let deadline = issued_start + Duration::from_secs(30);
    // Issue the updates on schedule; between them, watch the ones issued so far.
    while issued.len() < rollout || visible.iter().any(Option::is_none) {
        let next = issued.len();
        if next < rollout && Instant::now() >= issued_start + spacing * next as u32 {
            server.apply(&endpoint_slice(next, generation))?;
            issued.push(issued_start.elapsed());
            continue;
        }
        for i in 0..issued.len() {
            if visible[i].is_none() && entry(&map, i) != before[i] {
                visible[i] = Some(issued_start.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!("the rollout's changes were not all in the map after 30 s");
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let spread = issued.last().copied().unwrap_or_default();
    let largest_lag = visible
        .iter()
        .zip(&issued)
        .filter_map(|(seen, at)| seen.map(|s| s.saturating_sub(*at)))
        .max()
        .unwrap_or_default();
    std::thread::sleep(Duration::from_millis(300));
    let syncs = agent.syncs.load(Ordering::SeqCst) - syncs_before;
    lines.push(format!(
        "| rollout: {rollout} EndpointSlice updates over {:.2} s | {syncs} datapath syncs, largest lag {:.0} ms | a handful of syncs, not {rollout} |",
        spread.as_secs_f64(),
        largest_lag.as_secs_f64() * 1e3
    ));
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("xdp-ingress-bench-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
