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
//! 4. Incremental sync at 10,000 Services: one endpoint of one Service changes; ours against
//!    kube-proxy's nftables transaction and iptables restores for that change.
//! 5. The SNAT path (endpoints on another node): node core time per round trip for ours,
//!    kube-proxy's nftables DNAT + masquerade and the bare redirect both ways, steady and with
//!    every packet a new flow.
//!
//! Prints ratios and rewrites the L4 section of docs/benchmarks.md. Needs root. Arguments:
//! `--quick` (shorter runs, for trying the harness), `--skip-lab` (sections 1, 2 and 4 only),
//! `--only SECTION[,SECTION]` (per-packet, scale, incremental, forwarding, snat: run those and
//! print them, without rewriting the docs).

use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{bail, Context as _, Result};

mod forwarding;
mod incremental;
mod kube_proxy;
mod kube_proxy_cluster;
mod per_packet;
mod report;
mod rig;
mod scale;
mod snat;

use forwarding::forwarding_cost;
use incremental::incremental;
use per_packet::per_packet_cost;
use report::Report;
use scale::scale;
use snat::snat_cost;

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
    let only: Option<Vec<String>> = args.iter().position(|a| a == "--only").map(|i| {
        args.get(i + 1)
            .map(|list| list.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    });
    let run = |section: &str| only.as_ref().is_none_or(|s| s.iter().any(|o| o == section));
    if let Some(sections) = &only {
        const KNOWN: [&str; 5] = ["per-packet", "scale", "incremental", "forwarding", "snat"];
        if let Some(unknown) = sections.iter().find(|s| !KNOWN.contains(&s.as_str())) {
            bail!("--only {unknown}: the sections are {}", KNOWN.join(", "));
        }
    }
    if run("per-packet") {
        per_packet_cost(&settings, &mut report).context("per-packet cost")?;
    }
    if args.iter().any(|a| a == "--per-packet-only") {
        return Ok(());
    }
    let peers = if run("scale") {
        Some(scale(&settings, &mut report).context("10,000 Services")?)
    } else if run("incremental") {
        Some(scale::load_peers().context("loading the peers' rules")?.0)
    } else {
        None
    };
    if let (true, Some(peers)) = (run("incremental"), &peers) {
        incremental(&settings, &mut report, peers).context("incremental sync")?;
    }
    drop(peers);
    if !settings.skip_lab && run("forwarding") {
        forwarding_cost(&settings, &mut report, false).context("forwarding cost")?;
    }
    if !settings.skip_lab && run("snat") {
        snat_cost(&settings, &mut report).context("SNAT path")?;
    }
    if only.is_some() {
        // A part of the run: printed, not recorded.
        return Ok(());
    }
    report.finish(&settings)
}
