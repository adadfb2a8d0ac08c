//! `cargo xtask bench l4`: the L4 datapath against its peers, measured in one run on this machine.
//!
//! 1. Per-packet cost through BPF_PROG_TEST_RUN: established-flow forward, new-flow forward and
//!    non-VIP pass, against a floor program that only parses Ethernet/IPv4 and returns XDP_TX.
//! 2. Scale: 10,000 Services × 10 endpoints from files — time until they are in the maps and the
//!    kernel memory of the maps; the rule-sync time of the same Services as kube-proxy-style
//!    nftables and iptables rules.
//! 3. Forwarding cost through namespaces (../shared/toolchain.md's rig): trafgen pinned to core 0,
//!    the node's receive NAPI threaded and pinned to core 1, a counting XDP sink behind the node.
//!    At a fixed offered rate every mode delivers, core 1's busy time per delivered packet, for
//!    steady state (1,000 flows cycling) and for new flows (every packet a new flow); for ours,
//!    nftables DNAT (verdict map, as kube-proxy's nftables mode), iptables DNAT (chain per
//!    Service, as its iptables mode) and a bare MAC-rewrite-and-redirect XDP program (the ceiling);
//!    with 1 and with 10,000 Services.
//!
//! Prints ratios and rewrites the L4 section of docs/benchmarks.md. Needs root. Arguments:
//! `--quick` (shorter runs, for trying the harness), `--skip-lab` (sections 1 and 2 only).

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{bail, Context as _, Result};

mod forwarding;
mod kube_proxy;
mod per_packet;
mod report;
mod rig;
mod scale;

use forwarding::forwarding_cost;
use per_packet::per_packet_cost;
use report::Report;
use scale::scale;

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const SERVICE_PORT: u16 = 5000;
const SCALE_SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;

struct Settings {
    quick: bool,
    skip_lab: bool,
    agent: PathBuf,
    workspace: PathBuf,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes --bench; ignore what is not ours.
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let agent = std::env::var_os("XDP_INGRESS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/release/xdp-ingress"));
    if !agent.exists() {
        bail!(
            "agent binary {} missing: run `cargo xtask bench l4` (it builds it)",
            agent.display()
        );
    }
    let settings = Settings {
        quick: args.iter().any(|a| a == "--quick"),
        skip_lab: args.iter().any(|a| a == "--skip-lab"),
        agent,
        workspace,
    };
    let mut report = Report::default();
    if args.iter().any(|a| a == "--ours-only") {
        // A check of our own 1- versus 10,000-Service cost, interleaved; nothing is written.
        return forwarding_cost(&settings, &mut report, true);
    }
    per_packet_cost(&settings, &mut report).context("per-packet cost")?;
    if args.iter().any(|a| a == "--per-packet-only") {
        return Ok(());
    }
    scale(&settings, &mut report).context("10,000 Services")?;
    if !settings.skip_lab {
        forwarding_cost(&settings, &mut report, false).context("forwarding cost")?;
    }
    report.finish(&settings)
}
