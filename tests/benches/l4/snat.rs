//! Section 5: the SNAT path. The Service's endpoints are on another node (their EndpointSlice
//! `nodeName` is not the agent's `--node-name`), reached through the sink, which answers every
//! datagram (the reflector); so the node DNATs and SNATs each request and reverse-translates
//! each reply, and the client counts the replies. Node core time per round trip for ours,
//! kube-proxy's nftables mode doing the same (DNAT + masquerade in its real shape,
//! kube_proxy_cluster.rs, with conntrack) and the bare redirect both ways (the ceiling);
//! steady flows, and every packet a new flow (new connections per second per core).

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{bail, Context as _, Result};
use aya::maps::Array;
use ingress_common::bench as refs;
use xdp_ingress::datapath::{reference::ReferencePrograms, AttachMode};

use super::{
    forwarding::{program_stats, ModeGuard, MEASURED_PROGRAMS},
    kube_proxy::load_rules,
    kube_proxy_cluster::{nft_full, Services},
    per_packet::ifindex,
    report::{median, Report},
    rig::{
        cpu1_busy_jiffies, jiffy_ns, mac_bytes, udp_frames, Rig, CLIENT_MAC, NODE_CLIENT_MAC,
        NODE_SINK_MAC, SINK_MAC,
    },
    scale::{endpoint_addr, scale_frontend, service_manifest, Agent, RemoveDir, BIG_TABLES},
    Settings, ENDPOINTS, SCALE_SERVICES, SERVICE_PORT, VIP,
};

/// The agent's node and the endpoints' node.
const NODE: &str = "node-a";
const OTHER_NODE: &str = "node-b";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Mode {
    Ceiling,
    Ours,
    Nftables,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Ceiling => "bare XDP redirect both ways (ceiling)",
            Mode::Ours => "xdp-ingress (DNAT + SNAT)",
            Mode::Nftables => "nftables DNAT + masquerade (kube-proxy nftables mode)",
        }
    }
}

struct Sample {
    /// Node core busy time per reply received by the client.
    ns_per_round_trip: f64,
    /// Requests answered by the reflector / offered.
    forwarded: f64,
    /// Replies received by the client / offered.
    answered: f64,
    /// XDP program run time per run (both directions), NaN without XDP.
    program_ns: f64,
}

/// trafgen config: UDP to `dst` from 192.0.2.2–201 (the node has their neighbour entries);
/// steady: 1,000 flows cycling; new: two random port bytes per packet besides the cycling
/// address (13 M tuples; a run of 40,000 packets repeats about 60 of them).
fn round_trip_config(dst: (Ipv4Addr, u16), new_flows: bool) -> String {
    if new_flows {
        udp_frames(dst, "dinc(2, 201)", "drnd(), drnd()")
    } else {
        udp_frames(dst, "dinc(2, 9)", "0x27, dinc(0, 124)")
    }
}

fn measure(
    rig: &mut Rig,
    config: &Path,
    rate_pps: u64,
    seconds: f64,
    flush_conntrack: bool,
) -> Result<Sample> {
    if flush_conntrack {
        let _ = rig.node.exec(&["conntrack", "-F"]);
    }
    let packets = (rate_pps as f64 * seconds) as u64;
    let (before_forwarded, before_answered) = (rig.delivered()?, rig.replies()?);
    let before_busy = cpu1_busy_jiffies()?;
    let before_programs = program_stats(rig.node.name(), MEASURED_PROGRAMS)?;
    rig.send(config, rate_pps, packets)?;
    // Let in-flight packets land.
    std::thread::sleep(Duration::from_millis(100));
    let busy = cpu1_busy_jiffies()? - before_busy;
    let forwarded = rig.delivered()? - before_forwarded;
    let answered = rig.replies()? - before_answered;
    let after_programs = program_stats(rig.node.name(), MEASURED_PROGRAMS)?;
    let runs = after_programs.1.saturating_sub(before_programs.1);
    Ok(Sample {
        ns_per_round_trip: if answered > 0 {
            busy as f64 * jiffy_ns() / answered as f64
        } else {
            f64::NAN
        },
        forwarded: forwarded as f64 / packets as f64,
        answered: answered as f64 / packets as f64,
        program_ns: if runs > 0 {
            after_programs.0.saturating_sub(before_programs.0) as f64 / runs as f64
        } else {
            f64::NAN
        },
    })
}

struct ModeResult {
    steady: f64,
    steady_answered: f64,
    steady_forwarded: f64,
    steady_program: f64,
    new_flow: f64,
    new_answered: f64,
    new_program: f64,
    /// Ours: new flows dropped for want of a free SNAT port / offered (NaN for the others).
    snat_failed: f64,
}

pub(crate) fn snat_cost(settings: &Settings, report: &mut Report) -> Result<()> {
    let mut rig = Rig::build_with(true)?;
    let dir = std::env::temp_dir().join(format!("xdp-ingress-bench-snat-{}", std::process::id()));
    let _cleanup = RemoveDir(dir.clone());
    std::fs::create_dir_all(&dir)?;
    // New flows: ours holds a UDP SNAT mapping for a minute and has 4,536 ports per endpoint
    // (45,360 for the 10 endpoints), so a run offers 40,000 new flows, and ours starts each run
    // with an empty SNAT table (a new agent), as nftables starts with an empty conntrack table.
    let (rate, steady_seconds, new_rate, new_seconds, rounds) = if settings.quick {
        (400_000, 1.0, 100_000, 0.4, 1)
    } else {
        (400_000, 3.0, 100_000, 0.4, 5)
    };
    let mut cases = vec![(Mode::Ceiling, 1), (Mode::Ours, 1), (Mode::Nftables, 1)];
    if !settings.quick {
        cases.extend([
            (Mode::Ours, SCALE_SERVICES),
            (Mode::Nftables, SCALE_SERVICES),
        ]);
    }
    let mut results: BTreeMap<(Mode, usize), ModeResult> = BTreeMap::new();
    for (mode, services) in cases {
        let target = if services == 1 {
            (VIP, SERVICE_PORT)
        } else {
            scale_frontend(SCALE_SERVICES - 1)
        };
        let steady_config = dir.join("steady.cfg");
        let new_config = dir.join("new.cfg");
        std::fs::write(&steady_config, round_trip_config(target, false))?;
        std::fs::write(&new_config, round_trip_config(target, true))?;
        eprintln!(
            "SNAT path: measuring {} with {services} Service(s)...",
            mode.name()
        );
        let mut guard = setup(settings, &rig, mode, services, &dir)?;
        // Warm up: neighbour entries, conntrack and SNAT mappings of the steady flows, caches.
        let warm = measure(&mut rig, &steady_config, rate, 0.5, false)?;
        if warm.answered < 0.5 {
            bail!(
                "{} with {services} Service(s): only {:.1} % of the requests were answered ({:.1} % reached the endpoints)",
                mode.name(),
                warm.answered * 100.0,
                warm.forwarded * 100.0
            );
        }
        check_translation(&rig, mode)?;
        let mut samples: [Vec<f64>; 8] = Default::default();
        for _ in 0..rounds {
            let sample = measure(&mut rig, &steady_config, rate, steady_seconds, false)?;
            samples[0].push(sample.ns_per_round_trip);
            samples[1].push(sample.answered);
            samples[2].push(sample.forwarded);
            samples[3].push(sample.program_ns);
            if mode == Mode::Ours {
                // An empty SNAT table: a new agent.
                drop(guard);
                guard = setup(settings, &rig, mode, services, &dir)?;
            }
            let sample = measure(&mut rig, &new_config, new_rate, new_seconds, true)?;
            samples[4].push(sample.ns_per_round_trip);
            samples[5].push(sample.answered);
            samples[6].push(sample.program_ns);
            if mode == Mode::Ours {
                // This run's agent counted the new flows that found no free SNAT port.
                samples[7].push(
                    datapath_counter(&rig, "drop_snat_failed")? / (new_rate as f64 * new_seconds),
                );
                // The steady flows of the next round start from an empty SNAT table too.
                drop(guard);
                guard = setup(settings, &rig, mode, services, &dir)?;
                measure(&mut rig, &steady_config, rate, 0.5, false)?;
            }
        }
        drop(guard);
        let [a, b, c, d, e, f, g, h] = &mut samples;
        results.insert(
            (mode, services),
            ModeResult {
                steady: median(a),
                steady_answered: median(b),
                steady_forwarded: median(c),
                steady_program: median(d),
                new_flow: median(e),
                new_answered: median(f),
                new_program: median(g),
                snat_failed: median(h),
            },
        );
    }
    report.section(
        "The SNAT path: endpoints on another node",
        table(&results, settings, rounds),
    );
    drop(rig);
    Ok(())
}

fn table(
    results: &BTreeMap<(Mode, usize), ModeResult>,
    settings: &Settings,
    rounds: usize,
) -> Vec<String> {
    let get = |mode: Mode, services: usize, f: fn(&ModeResult) -> f64| {
        results.get(&(mode, services)).map_or(f64::NAN, f)
    };
    let ceiling = get(Mode::Ceiling, 1, |r| r.steady);
    let mut lines = vec![
        format!(
            "The Service's {ENDPOINTS} endpoints are on another node (EndpointSlice nodeName {OTHER_NODE}, agent --node-name {NODE}), behind the sink, which answers every datagram with addresses and ports swapped (an XDP reflector); requests are DNATed and SNATed (ours: to the node's address and a port of 61000–65535; nftables: masquerade fully-random), replies reverse-translated on their way back to the client, which counts them. Node core (core 1) busy time per reply received, generator on core 0 (everything of the node, the reflector and the client's counter runs on core 1, the same in every mode). Steady: 400 kpps offered, 1,000 flows cycling, median of {rounds} × {} s. New flows: 100 kpps offered, every packet a new flow, 40,000 per run (ours: a new agent, so an empty SNAT table, before each run; nftables: conntrack flushed), median of {rounds} runs; 'new flows/s per core' = 1 s / busy time per new-flow round trip.{}",
            if settings.quick { 1.0 } else { 3.0 },
            if settings.quick { " (--quick: 1 Service only.)" } else { "" }
        ),
        String::new(),
        "| mode | Services | steady ns/round trip | answered | × ceiling | × ours | new-flow ns/round trip | answered | new flows/s per core | ours × |".into(),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |".into(),
    ];
    for ((mode, services), r) in results {
        let ours_steady = get(Mode::Ours, *services, |o| o.steady);
        let ours_new = get(Mode::Ours, *services, |o| o.new_flow);
        lines.push(format!(
            "| {} | {services} | {:.0} | {:.1} % | {:.2} | {:.2} | {:.0} | {:.1} % | {:.0} k | {:.2} |",
            mode.name(),
            r.steady,
            r.steady_answered * 100.0,
            r.steady / ceiling,
            r.steady / ours_steady,
            r.new_flow,
            r.new_answered * 100.0,
            1e6 / r.new_flow,
            r.new_flow / ours_new,
        ));
    }
    lines.push(String::new());
    lines.push("XDP program run time per run on the node (both directions averaged; kernel.bpf_stats_enabled), and requests that reached the endpoints:".into());
    lines.push(String::new());
    lines.push("| mode | Services | steady ns/run | new-flow ns/run | steady requests forwarded | new flows without a SNAT port |".into());
    lines.push("| --- | ---: | ---: | ---: | ---: | ---: |".into());
    for ((mode, services), r) in results {
        lines.push(format!(
            "| {} | {services} | {:.0} | {:.0} | {:.1} % | {} |",
            mode.name(),
            r.steady_program,
            r.new_program,
            r.steady_forwarded * 100.0,
            if r.snat_failed.is_nan() {
                "–".to_string()
            } else {
                format!("{:.1} %", r.snat_failed * 100.0)
            }
        ));
    }
    lines.push(String::new());
    lines.push("Ours takes a SNAT port among 4,536 per endpoint (61000–65535) and node address, trying 8 of them from the flow's hash; a UDP mapping holds its port for a minute, so 40,000 new flows to 10 endpoints fill each endpoint's range to about 88 % and the last flows of a run find all 8 tries taken (counted as drop_snat_failed, shown above). kube-proxy's masquerade keeps the client's port when it is free and otherwise picks among 64,512.".into());
    let ours = get(Mode::Ours, 1, |r| r.steady);
    let nft = get(Mode::Nftables, 1, |r| r.steady);
    let ours_new = get(Mode::Ours, 1, |r| r.new_flow);
    let nft_new = get(Mode::Nftables, 1, |r| r.new_flow);
    lines.push(String::new());
    lines.push(format!(
        "Targets (1 Service): ours ≤ 1.3 × ceiling (measured {:.2}); nftables ≥ 1.4 × ours (measured {:.2}); new flows/s per core ours ≥ 2 × nftables (measured {:.2}).{}",
        ours / ceiling,
        nft / ours,
        nft_new / ours_new,
        match (
            results.get(&(Mode::Ours, SCALE_SERVICES)),
            results.get(&(Mode::Nftables, SCALE_SERVICES)),
        ) {
            (Some(o), Some(n)) => format!(
                " At 10,000 Services: ours {:.2} × ceiling, nftables {:.2} × ours, new flows/s ours {:.2} × nftables.",
                o.steady / ceiling,
                n.steady / o.steady,
                n.new_flow / o.new_flow
            ),
            _ => String::new(),
        }
    ));
    lines
}

/// One of the agent's `xdp_ingress_datapath_packets` reasons, from its admin listener.
fn datapath_counter(rig: &Rig, reason: &str) -> Result<f64> {
    let output = rig
        .node
        .exec(&["curl", "-sf", "http://127.0.0.1:9900/metrics"])?;
    let text = String::from_utf8_lossy(&output.stdout);
    let needle = format!("xdp_ingress_datapath_packets_total{{reason=\"{reason}\"}} ");
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(&needle))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0))
}

/// The mode really translates both ways: a peer that forwarded without masquerade would still
/// be answered (the reflector answers whatever reaches it, back through the node), so this
/// looks at the translation itself.
fn check_translation(rig: &Rig, mode: Mode) -> Result<()> {
    match mode {
        Mode::Ceiling => Ok(()),
        Mode::Ours => {
            // Replies of SNATed flows are addressed to the node; only the SNAT table turns
            // them back into replies to the client.
            if datapath_counter(rig, "reverse_redirect")? == 0.0 {
                bail!("ours: no reply was reverse-translated by XDP");
            }
            Ok(())
        }
        Mode::Nftables => {
            let output = rig.node.exec(&["conntrack", "-L", "-p", "udp"])?;
            let text = String::from_utf8_lossy(&output.stdout);
            // The reply tuple of a masqueraded flow is addressed to the node's n-sink address.
            if !text.lines().any(|l| l.contains(" dst=198.51.100.1 ")) {
                bail!(
                    "nftables: no conntrack entry shows masquerade to 198.51.100.1: {}",
                    text.lines().next().unwrap_or("(no entries)")
                );
            }
            Ok(())
        }
    }
}

fn setup(
    settings: &Settings,
    rig: &Rig,
    mode: Mode,
    services: usize,
    dir: &Path,
) -> Result<ModeGuard> {
    let endpoints: Vec<Ipv4Addr> = (0..ENDPOINTS).map(endpoint_addr).collect();
    let frontend = |i: usize| {
        if services == 1 {
            (VIP, SERVICE_PORT)
        } else {
            scale_frontend(i)
        }
    };
    match mode {
        Mode::Ceiling => {
            let references = rig.node.run_inside(|| {
                let (client, sink) = (ifindex("n-client")?, ifindex("n-sink")?);
                let mut references = ReferencePrograms::load()?;
                {
                    let map = references
                        .ebpf_mut()
                        .map_mut(refs::REDIRECT_MAP)
                        .context("redirect map")?;
                    let mut targets: Array<_, refs::RedirectTarget> = Array::try_from(map)?;
                    let target = |ifindex, dst: &str, src: &str| refs::RedirectTarget {
                        ifindex,
                        dst_mac: mac_bytes(dst),
                        src_mac: mac_bytes(src),
                    };
                    targets.set(0, target(sink, SINK_MAC, NODE_SINK_MAC), 0)?;
                    targets.set(1, target(client, CLIENT_MAC, NODE_CLIENT_MAC), 0)?;
                }
                // Detached when the object (which owns the links) is dropped.
                references
                    .program(refs::REDIRECT)?
                    .attach("n-client", AttachMode::Native.into())?;
                references
                    .program(refs::REDIRECT_REPLY)?
                    .attach("n-sink", AttachMode::Native.into())?;
                Ok(references)
            })?;
            Ok(ModeGuard::Program {
                _program: Box::new(references),
            })
        }
        Mode::Ours => {
            let manifests = dir.join(format!("ours-{services}"));
            if !manifests.exists() {
                std::fs::create_dir_all(&manifests)?;
                let mut text = String::new();
                for i in 0..services {
                    service_manifest(&mut text, i, frontend(i), &endpoints, Some(OTHER_NODE));
                }
                std::fs::write(manifests.join("services.yaml"), text)?;
            }
            let (agent, _) = Agent::start_with(
                settings,
                &rig.node,
                &manifests,
                &["n-client", "n-sink"],
                &[&["--node-name", NODE][..], BIG_TABLES].concat(),
            )?;
            agent.wait_for("running", Duration::from_secs(60))?;
            Ok(ModeGuard::Agent { _agent: agent })
        }
        Mode::Nftables => {
            let rules = nft_full(&Services {
                frontends: (0..services).map(frontend).collect(),
                endpoints: vec![endpoints; services],
            });
            load_rules(&rig.node, &["nft", "-f", "-"], &rules)?;
            // The reflector's XDP_TX reaches the node's end only if that end runs XDP (see
            // ingress-ebpf's bench.rs); a pass-through program, as on the other modes' n-sink.
            let pass = rig.node.run_inside(|| {
                let mut references = ReferencePrograms::load()?;
                references
                    .program(refs::PASS)?
                    .attach("n-sink", AttachMode::Native.into())?;
                Ok(references)
            })?;
            Ok(ModeGuard::RulesAndProgram {
                _program: Box::new(pass),
                _rules: Box::new(ModeGuard::Rules {
                    node: rig.node.name().to_string(),
                    cleanup: vec![
                        vec![
                            "nft".into(),
                            "delete".into(),
                            "table".into(),
                            "ip".into(),
                            "kube-proxy".into(),
                        ],
                        vec!["conntrack".into(), "-F".into()],
                    ],
                }),
            })
        }
    }
}
