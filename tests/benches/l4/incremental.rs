//! Section 4: what a cluster does all day at 10,000 Services: one endpoint of one Service
//! changes. Ours: the agent running on the 10,000 Services (file mode, 100 files of 100
//! Services and their EndpointSlices), one file rewritten with one endpoint replaced; what the
//! agent logs for that sync (read, translate, map writes) and the BPF map writes it makes
//! (counted with strace in a separate, untimed change). The peers, loaded by section 2: `nft -f`
//! of kube-proxy nftables mode's partial-sync transaction for the change, and `iptables-restore
//! --noflush` of kube-proxy iptables mode's full `nat` table and of its
//! `MinimizeIPTablesRestore` partial sync (kube_proxy_cluster.rs).

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use xdp_ingress_tests::netns::Netns;

use super::{
    kube_proxy::{load_rules, load_rules_within},
    kube_proxy_cluster::{ipt_full, ipt_partial, nft_change, Services},
    report::{median, Report},
    scale::{scale_frontend, service_manifest, Agent, Peers, RemoveDir},
    Settings, ENDPOINTS, SCALE_SERVICES,
};

/// Longest the whole-table iptables restore may take.
const FULL_LIMIT: Duration = Duration::from_secs(600);

/// Services per manifest file.
const PER_FILE: usize = 100;

fn write_part(dir: &Path, part: usize, endpoints: &[Vec<Ipv4Addr>]) -> Result<()> {
    let mut text = String::new();
    for (i, service) in endpoints
        .iter()
        .enumerate()
        .skip(part * PER_FILE)
        .take(PER_FILE)
    {
        service_manifest(&mut text, i, scale_frontend(i), service, None);
    }
    // Written aside and renamed: the agent never reads half a file.
    let path = dir.join(format!("part-{part:03}.yaml"));
    let temporary = dir.join(format!(".part-{part:03}.tmp"));
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, &path)?;
    Ok(())
}

/// `name=value` from a log line.
fn logged(line: &str, name: &str) -> Result<f64> {
    line.split(&format!("{name}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse::<f64>().ok())
        .with_context(|| format!("{name} in the log line {line:?}"))
}

/// One change's figures for ours.
struct OursChange {
    read_ms: f64,
    translate_ms: f64,
    map_ms: f64,
    whole_ms: f64,
    write_to_synced_ms: f64,
}

pub(crate) fn incremental(settings: &Settings, report: &mut Report, peers: &Peers) -> Result<()> {
    let ns = Netns::new("xib-incr")?;
    ns.ip(&["link", "add", "s0", "type", "veth", "peer", "name", "s1"])?;
    ns.ip(&["link", "set", "s0", "up"])?;
    ns.ip(&["link", "set", "s1", "up"])?;
    let dir = std::env::temp_dir().join(format!("xdp-ingress-bench-incr-{}", std::process::id()));
    let _cleanup = RemoveDir(dir.clone());
    std::fs::create_dir_all(&dir)?;
    let mut endpoints = peers.services.endpoints.clone();
    for part in 0..SCALE_SERVICES.div_ceil(PER_FILE) {
        write_part(&dir, part, &endpoints)?;
    }
    let (agent, _) = Agent::start(settings, &ns, &dir, &["s0"])?;
    agent.wait_for("synced", Duration::from_secs(120))?;
    let (rounds, full_rounds) = if settings.quick { (3, 0) } else { (7, 1) };
    let mut ours = Vec::new();
    let (mut nft_ms, mut ipt_full_ms, mut ipt_partial_ms) = (Vec::new(), Vec::new(), Vec::new());
    // Endpoint chains flushed by the previous change: kube-proxy deletes them in the next sync.
    let mut nft_stale: Vec<(usize, Ipv4Addr)> = Vec::new();
    let mut map_calls = String::new();
    for round in 0..rounds + 1 {
        // Spread over the files; one endpoint replaced by a new address (198.51.100.31..).
        let service = (round * 1_237 + 17) % SCALE_SERVICES;
        let slot = round % ENDPOINTS;
        let old = endpoints[service][slot];
        let new = Ipv4Addr::new(198, 51, 100, 31 + round as u8);
        endpoints[service][slot] = new;
        let traced = round == rounds;
        let strace = if traced {
            Some(Strace::attach(agent.child.id(), &dir.join("strace.txt"))?)
        } else {
            None
        };
        let written = Instant::now();
        write_part(&dir, service / PER_FILE, &endpoints)?;
        let programmed = agent.wait_for("L4: ", Duration::from_secs(60))?;
        let line = agent.wait_for("synced", Duration::from_secs(60))?;
        let write_to_synced_ms = written.elapsed().as_secs_f64() * 1e3;
        if logged(&programmed, "changed")? != 1.0 || logged(&programmed, "added")? != 0.0 {
            bail!("the change did not reprogram exactly one Service port: {programmed}");
        }
        if let Some(strace) = strace {
            let calls = strace.finish()?;
            map_calls = format!(
                "BPF map syscalls of ours for one such change (strace -e bpf on the agent, in an extra change after the {rounds} timed ones): {} update(s), {} delete(s), {} lookup(s), {} other.",
                calls.updates, calls.deletes, calls.lookups, calls.other
            );
        } else {
            let (read, sync, elapsed) = (
                logged(&line, "read_ms")?,
                logged(&line, "l4_sync_ms")?,
                logged(&line, "elapsed_ms")?,
            );
            ours.push(OursChange {
                read_ms: read,
                translate_ms: elapsed - sync,
                map_ms: sync,
                whole_ms: read + elapsed,
                write_to_synced_ms,
            });
        }
        // The peers apply the same change.
        let transaction = nft_change(service, &endpoints[service], &[old], &nft_stale);
        let elapsed = load_rules(&peers.nft, &["nft", "-f", "-"], &transaction)?;
        nft_stale = vec![(service, old)];
        let state = Services {
            frontends: peers.services.frontends.clone(),
            endpoints: endpoints.clone(),
        };
        // With iptables-nft the whole table's `--noflush` restore grows about quadratically
        // (here 1 s at 250 Services, 22 s at 1,000): once, and given up after a limit.
        if round < full_rounds {
            let full = ipt_full(&state, false, &[(service, old)]);
            eprintln!(
                "iptables-restore --noflush of the whole nat table (up to {FULL_LIMIT:?})..."
            );
            ipt_full_ms.push(
                load_rules_within(
                    &peers.ipt,
                    &["iptables-restore", "--noflush"],
                    &full,
                    FULL_LIMIT,
                )?
                .map_or(f64::INFINITY, |d| d.as_secs_f64() * 1e3),
            );
        }
        // The same target state again, as a partial sync writes it (same work for the kernel
        // and iptables-restore whatever the state before).
        let partial = ipt_partial(&state, service, &[(service, old)]);
        let partial_elapsed = load_rules(&peers.ipt, &["iptables-restore", "--noflush"], &partial)?;
        if !traced {
            nft_ms.push(elapsed.as_secs_f64() * 1e3);
            ipt_partial_ms.push(partial_elapsed.as_secs_f64() * 1e3);
        }
    }
    check_peer_state(peers, &endpoints)?;
    let column = |f: fn(&OursChange) -> f64| -> f64 {
        let mut values: Vec<f64> = ours.iter().map(f).collect();
        median(&mut values)
    };
    let (read, translate, maps, whole, wall) = (
        column(|c| c.read_ms),
        column(|c| c.translate_ms),
        column(|c| c.map_ms),
        column(|c| c.whole_ms),
        column(|c| c.write_to_synced_ms),
    );
    let (nft, ipt_f, ipt_p) = (
        median(&mut nft_ms),
        median(&mut ipt_full_ms),
        median(&mut ipt_partial_ms),
    );
    let lines = vec![
            format!("One endpoint of one of {SCALE_SERVICES} Services replaced (a different Service and endpoint each time), median of {rounds} changes. Ours: the agent running on the Services in 100 manifest files of 100 Services each; the file holding the changed EndpointSlice rewritten (renamed into place); figures from the agent's `synced` log line. Peers: the namespaces section 2 loaded, applying the same changes; wall-clock around the command, parsing included."),
            String::new(),
            "| mode | sync time | × ours |".into(),
            "| --- | ---: | ---: |".into(),
            format!("| ours (read the changed file, translate all Services, write the difference) | {whole:.1} ms | 1.0 |"),
            format!("| of which read (only the changed file is parsed) / translate / map writes | {read:.1} / {translate:.1} / {maps:.2} ms | |"),
            format!("| ours, file written → `synced` logged (inotify, 5 ms debounce, logging) | {wall:.1} ms | |"),
            format!("| nftables: `nft -f` of kube-proxy's partial-sync transaction (the Service's chains rewritten, the old endpoint's chain flushed, the previous one's deleted) | {nft:.1} ms | {:.1} |", nft / whole),
            match (full_rounds, ipt_f.is_finite()) {
                (0, _) => "| iptables: `iptables-restore --noflush` of the whole `nat` table (kube-proxy iptables mode's full sync) | not run with --quick | |".to_string(),
                (_, true) => format!("| iptables: `iptables-restore --noflush` of the whole `nat` table (kube-proxy iptables mode's full sync; the first change only) | {ipt_f:.0} ms | {:.0} |", ipt_f / whole),
                (_, false) => format!("| iptables: `iptables-restore --noflush` of the whole `nat` table (kube-proxy iptables mode's full sync; the first change only) | > {} s (given up) | > {:.0} |", FULL_LIMIT.as_secs(), FULL_LIMIT.as_secs_f64() * 1e3 / whole),
            },
            format!("| iptables: `iptables-restore --noflush`, `MinimizeIPTablesRestore` partial sync (`KUBE-SERVICES` in full + the Service's chains) | {ipt_p:.1} ms | {:.1} |", ipt_p / whole),
            String::new(),
            map_calls,
        ];
    report.section(
        "Incremental sync at 10,000 Services: one endpoint changes",
        lines,
    );
    drop(agent);
    Ok(())
}

/// The peers hold the changed endpoints and no stale chain of the iptables table.
fn check_peer_state(peers: &Peers, endpoints: &[Vec<Ipv4Addr>]) -> Result<()> {
    let changed: Vec<String> = endpoints
        .iter()
        .flatten()
        .filter(|e| e.octets()[3] >= 31)
        .map(|e| e.to_string())
        .collect();
    for (ns, program) in [
        (&peers.nft, vec!["nft", "list", "ruleset"]),
        (&peers.ipt, vec!["iptables-save", "-t", "nat"]),
    ] {
        let output = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .args(&program)
            .stderr(Stdio::inherit())
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        for address in &changed {
            if !text.contains(&format!("{address}:")) {
                bail!("{} lacks the new endpoint {address}", program.join(" "));
            }
        }
    }
    Ok(())
}

/// BPF syscalls by command.
#[derive(Default)]
struct BpfCalls {
    updates: usize,
    deletes: usize,
    lookups: usize,
    other: usize,
}

/// strace attached to the agent (all threads), logging its `bpf` calls.
struct Strace {
    child: std::process::Child,
    output: std::path::PathBuf,
}

impl Strace {
    fn attach(pid: u32, output: &Path) -> Result<Self> {
        let mut child = Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=bpf", "-o"])
            .arg(output)
            .args(["-p", &pid.to_string()])
            .stderr(Stdio::piped())
            .spawn()
            .context("strace")?;
        // strace prints nothing when attached; wait for the output file, then a little for
        // every thread to be seized (there is no event for it).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !output.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("strace exited at once: {status}");
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(Self {
            child,
            output: output.to_path_buf(),
        })
    }

    fn finish(mut self) -> Result<BpfCalls> {
        // SAFETY: FFI call sending SIGINT to our own child (strace detaches and exits).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        let text = std::fs::read_to_string(&self.output)?;
        let mut calls = BpfCalls::default();
        for line in text.lines().filter(|l| l.contains("bpf(")) {
            if line.contains("BPF_MAP_UPDATE_ELEM") {
                calls.updates += 1;
            } else if line.contains("BPF_MAP_DELETE_ELEM") {
                calls.deletes += 1;
            } else if line.contains("BPF_MAP_LOOKUP_ELEM") {
                calls.lookups += 1;
            } else {
                calls.other += 1;
            }
        }
        Ok(calls)
    }
}
