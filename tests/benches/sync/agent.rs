//! The agent process in its namespace, and reading its `SERVICES` map from the kernel the way any
//! other process can.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use ingress_common::{ServiceEntry, ServiceKey};
use xdp_ingress_tests::netns::Netns;

use super::{objects::vip, Settings, ADMIN, INTERFACE};

/// The agent process; killed on drop.
pub(crate) struct Agent {
    pub(crate) child: Child,
    pub(crate) syncs: Arc<AtomicUsize>,
    /// The agent's latest sync log lines (L4, L7, synced), for the time breakdown.
    pub(crate) last_sync_lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    pub(crate) fn start(settings: &Settings, ns: &Netns, kubeconfig: &Path) -> Result<Self> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(&settings.agent)
            .args(["run", "--kubeconfig"])
            .arg(kubeconfig)
            .args([
                "--bpffs",
                "off",
                "--interface",
                INTERFACE,
                "--xdp-mode",
                "generic",
                "--http-listen",
                "127.0.0.1:0",
                "--https-listen",
                "127.0.0.1:0",
                "--admin-listen",
                ADMIN,
            ])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the agent")?;
        let syncs = Arc::new(AtomicUsize::new(0));
        let last_sync_lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = child.stdout.take().context("agent stdout")?;
        let (counter, lines) = (syncs.clone(), last_sync_lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains(" L4: ") {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                if line.contains(" L4: ") || line.contains(" L7: ") || line.contains(" synced") {
                    if let Ok(mut lines) = lines.lock() {
                        lines.push(line);
                        let excess = lines.len().saturating_sub(3);
                        lines.drain(..excess);
                    }
                }
            }
        });
        Ok(Self {
            child,
            syncs,
            last_sync_lines,
        })
    }

    pub(crate) fn rss_kib(&self) -> Result<u64> {
        // `ip netns exec` execs the agent, so the child's pid is the agent's.
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS")
    }
}

/// GET `/readyz` from inside the namespace.
pub(crate) fn ready(ns: &Netns) -> bool {
    ns.run_inside(|| {
        let addr: SocketAddr = ADMIN.parse()?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        stream.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer.starts_with("HTTP/1.1 200"))
    })
    .unwrap_or(false)
}

/// The agent's SERVICES map (the newest map of that name: the agent just loaded it).
pub(crate) fn services_map() -> Result<BpfHashMap<MapData, ServiceKey, ServiceEntry>> {
    let id = aya::maps::loaded_maps()
        .filter_map(Result::ok)
        .filter(|info| info.name_as_str() == Some("SERVICES"))
        .map(|info| info.id())
        .max()
        .context("no SERVICES map loaded")?;
    let map = Map::from_map_data(MapData::from_id(id)?)?;
    Ok(BpfHashMap::try_from(map)?)
}

pub(crate) fn key(i: usize) -> ServiceKey {
    ServiceKey {
        vip: u32::from(vip(i)).to_be(),
        port: 80u16.to_be(),
        proto: ingress_common::proto::TCP,
        pad: 0,
    }
}

pub(crate) fn entry(
    map: &BpfHashMap<MapData, ServiceKey, ServiceEntry>,
    i: usize,
) -> Option<ServiceEntry> {
    map.get(&key(i), 0).ok()
}
