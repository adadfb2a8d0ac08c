//! Section 3's rig: client ── node ── sink namespaces, the node's NAPI thread pinned to core 1,
//! and the trafgen configuration and CPU accounting the measurements read.

use std::{net::Ipv4Addr, path::Path};

use anyhow::{bail, Context as _, Result};
use aya::maps::PerCpuArray;
use ingress_common::bench as refs;
use xdp_ingress::datapath::{reference::ReferencePrograms, AttachMode};
use xdp_ingress_tests::netns::{run, Netns};

use super::{scale::endpoint_addr, ENDPOINTS};

pub(crate) const NODE_CLIENT_MAC: &str = "02:00:00:00:0a:01";
pub(crate) const CLIENT_MAC: &str = "02:00:00:00:0a:02";
pub(crate) const NODE_SINK_MAC: &str = "02:00:00:00:0b:01";
pub(crate) const SINK_MAC: &str = "02:00:00:00:0b:02";

/// client ── node ── sink; every backend address is the sink (pinned neighbour entries).
pub(crate) struct Rig {
    pub(crate) client: Netns,
    pub(crate) node: Netns,
    pub(crate) _sink: Netns,
    /// The sink's counting XDP program (kept loaded and attached): the sink, or with replies the
    /// reflector.
    pub(crate) sink_program: ReferencePrograms,
    /// With replies: the counting sink on the client's end, where the replies arrive.
    pub(crate) client_program: Option<ReferencePrograms>,
}

pub(crate) fn mac_bytes(mac: &str) -> [u8; 6] {
    let mut bytes = [0u8; 6];
    for (i, part) in mac.split(':').enumerate().take(6) {
        bytes[i] = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    bytes
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = run("sysctl", &["-qw", "kernel.bpf_stats_enabled=0"]);
    }
}

impl Rig {
    pub(crate) fn build() -> Result<Self> {
        Self::build_with(false)
    }

    /// With `replies`, the sink answers every datagram (the reflector) and the client counts
    /// the answers: the SNAT path's round trip, through the node both ways.
    pub(crate) fn build_with(replies: bool) -> Result<Self> {
        // Per-program run time, read back with bpftool; restored by the Rig's drop.
        run("sysctl", &["-qw", "kernel.bpf_stats_enabled=1"])?;
        let client = Netns::new("xib-client")?;
        let node = Netns::new("xib-node")?;
        let sink = Netns::new("xib-sink")?;
        run(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                client.name(),
                "address",
                CLIENT_MAC,
                "type",
                "veth",
                "peer",
                "n-client",
                "netns",
                node.name(),
                "address",
                NODE_CLIENT_MAC,
            ],
        )?;
        run(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                sink.name(),
                "address",
                SINK_MAC,
                "type",
                "veth",
                "peer",
                "n-sink",
                "netns",
                node.name(),
                "address",
                NODE_SINK_MAC,
            ],
        )?;
        for (ns, link) in [
            (&client, "eth0"),
            (&node, "n-client"),
            (&node, "n-sink"),
            (&sink, "eth0"),
        ] {
            ns.ip(&["link", "set", link, "up"])?;
            // Real wires deliver complete checksums.
            ns.exec(&["ethtool", "-K", link, "tx", "off"])?;
        }
        client.ip(&["addr", "add", "192.0.2.2/24", "dev", "eth0"])?;
        client.ip(&["route", "add", "203.0.113.0/24", "via", "192.0.2.1"])?;
        node.ip(&["addr", "add", "192.0.2.1/24", "dev", "n-client"])?;
        node.ip(&["addr", "add", "198.51.100.1/24", "dev", "n-sink"])?;
        sink.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"])?;
        node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        for e in 0..ENDPOINTS {
            node.ip(&[
                "neigh",
                "replace",
                &endpoint_addr(e).to_string(),
                "lladdr",
                SINK_MAC,
                "dev",
                "n-sink",
                "nud",
                "permanent",
            ])?;
        }
        node.ip(&[
            "neigh",
            "replace",
            "192.0.2.2",
            "lladdr",
            CLIENT_MAC,
            "dev",
            "n-client",
            "nud",
            "permanent",
        ])?;
        // NAPI on the node's receiving side (GRO on a veth enables it), threaded, pinned to core 1:
        // all of the node's work then runs on core 1, the generator on core 0.
        node.exec(&["ethtool", "-K", "n-client", "gro", "on"])?;
        node.exec(&["sh", "-c", "echo 1 > /sys/class/net/n-client/threaded"])?;
        let napi_threads = napi_threads("n-client")?;
        if napi_threads.is_empty() {
            bail!("no napi/n-client-* kernel thread after enabling threaded NAPI");
        }
        for pid in napi_threads {
            run("taskset", &["-pc", "1", &pid.to_string()])?;
        }
        let sink_program = sink.run_inside(move || {
            let mut references = ReferencePrograms::load()?;
            // Detached when the object (which owns the link) is dropped.
            references
                .program(if replies { refs::REFLECT } else { refs::SINK })?
                .attach("eth0", AttachMode::Native.into())?;
            Ok(references)
        })?;
        let client_program = if replies {
            // Replies go to every source address the generator uses (192.0.2.2–201).
            for host in 2..=201 {
                node.ip(&[
                    "neigh",
                    "replace",
                    &format!("192.0.2.{host}"),
                    "lladdr",
                    CLIENT_MAC,
                    "dev",
                    "n-client",
                    "nud",
                    "permanent",
                ])?;
            }
            // Replies redirected or forwarded into n-sink's peer need NAPI on the node's end.
            node.exec(&["ethtool", "-K", "n-sink", "gro", "on"])?;
            Some(client.run_inside(|| {
                let mut references = ReferencePrograms::load()?;
                references
                    .program(refs::SINK)?
                    .attach("eth0", AttachMode::Native.into())?;
                Ok(references)
            })?)
        } else {
            None
        };
        Ok(Self {
            client,
            node,
            _sink: sink,
            sink_program,
            client_program,
        })
    }

    pub(crate) fn delivered(&mut self) -> Result<u64> {
        let map = self
            .sink_program
            .ebpf_mut()
            .map(refs::SINK_COUNT_MAP)
            .context("sink count map")?;
        let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(counts.get(&0, 0)?.iter().sum())
    }
}

impl Rig {
    /// Sends `packets` frames from the client's `config` (trafgen) at `rate_pps`, the
    /// generator pinned to core 0 (the node's work is measured on core 1).
    pub(crate) fn send(&self, config: &Path, rate_pps: u64, packets: u64) -> Result<()> {
        self.client.exec(&[
            "taskset",
            "-c",
            "0",
            "trafgen",
            "--dev",
            "eth0",
            "--conf",
            &config.to_string_lossy(),
            "-b",
            &format!("{rate_pps}pps"),
            "-n",
            &packets.to_string(),
            "-P",
            "1",
            "-q",
        ])?;
        Ok(())
    }

    /// Replies counted at the client (0 without replies).
    pub(crate) fn replies(&mut self) -> Result<u64> {
        let Some(program) = self.client_program.as_mut() else {
            return Ok(0);
        };
        let map = program
            .ebpf_mut()
            .map(refs::SINK_COUNT_MAP)
            .context("client count map")?;
        let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
        Ok(counts.get(&0, 0)?.iter().sum())
    }
}

pub(crate) fn napi_threads(interface: &str) -> Result<Vec<u32>> {
    let prefix = format!("napi/{interface}-");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim().starts_with(&prefix) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Busy jiffies of CPU 1 (everything but idle and iowait).
pub(crate) fn cpu1_busy_jiffies() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu1 "))
        .context("cpu1 in /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    Ok(fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum())
}

pub(crate) fn jiffy_ns() -> f64 {
    // SAFETY: FFI call without arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e9 / if hz > 0 { hz as f64 } else { 100.0 }
}

/// trafgen config: UDP to the VIP; `flows` picks steady (1,000 flows cycling) or all-new.
pub(crate) fn trafgen_config(dst: (Ipv4Addr, u16), new_flows: bool) -> String {
    // Steady: source address byte cycles over 8 values and port low byte over 125: lcm = 1,000
    // distinct flows. New: three random bytes (one address byte, the port) per packet, 2^24 tuples.
    if new_flows {
        udp_frames(dst, "drnd()", "drnd(), drnd()")
    } else {
        udp_frames(dst, "dinc(2, 9)", "0x27, dinc(0, 124)")
    }
}

/// trafgen config: 64-byte UDP frames from the client to `dst`, from 192.0.2.`src_byte`, source
/// port `port` (trafgen expressions for the last address byte and the two port bytes).
pub(crate) fn udp_frames(dst: (Ipv4Addr, u16), src_byte: &str, port: &str) -> String {
    let [a, b, c, d] = dst.0.octets();
    let mac = |m: &str| {
        mac_bytes(m)
            .iter()
            .map(|x| format!("0x{x:02x}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{{\n  {}, {}, c16(0x0800),\n  0x45, 0x00, c16(46), c16(0), c16(0), 64, 17, csumip(14, 33),\n  \
         192, 0, 2, {src_byte}, {a}, {b}, {c}, {d},\n  {port}, c16({}), c16(26), c16(0),\n  fill(0x41, 18)\n}}\n",
        mac(NODE_CLIENT_MAC),
        mac(CLIENT_MAC),
        dst.1
    )
}
