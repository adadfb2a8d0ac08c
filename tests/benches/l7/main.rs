//! `cargo xtask bench l7`: the L7 proxy against nginx and HAProxy (Debian's), in one run on this
//! machine.
//!
//! Every proxy gets the same job: one worker (`--workers 1`, `worker_processes 1`,
//! `nbthread 1`) pinned to CPU 0, the same upstream (one nginx worker on CPU 1 answering a small
//! fixed body) over keep-alive, access logs off, the same ECDSA P-256 certificate, the same
//! forwarding headers (`X-Forwarded-For/-Proto/-Host/-Port`, `X-Real-IP`, `X-Request-ID`), the
//! same 300 s client idle timeout. Load generators (wrk, h2load, this process) run on CPU 1.
//! CPU time is the proxy's own (utime + stime from /proc, summed over its processes).
//!
//! 1. HTTP/1.1 keep-alive (wrk): requests/s, p99 latency, CPU time per request.
//! 2. HTTP/2 over TLS (h2load): requests/s, CPU time per request.
//! 3. Full TLS 1.3 handshakes (a rustls client here, session resumption disabled, one request
//!    per connection): handshakes per second of proxy CPU.
//! 4. Memory: VmRSS of a freshly started proxy, then with 10,000 idle keep-alive connections that
//!    each carried one request; afterwards every connection is asked a second time, so proxies
//!    that closed idle connections show up.
//! 5. Ours only: CPU time per request with 10,000 Ingress hosts × 5 paths against 1 Ingress, and
//!    the time to rebuild and swap the routing table when a manifest changes.
//!
//! Each measurement runs 3 times, interleaved across the proxies (A B C A B C ...); the report
//! shows medians. Prints the targets with PASS/MISS and rewrites the L7 section of
//! docs/benchmarks.md. Arguments: `--quick` (short runs, 1 repetition, 1,000 connections and
//! 1,000 hosts; for trying the harness), `--memory-only` (only measurement 4, printed, the docs
//! left alone). Runs as root (raises its file limit above 10,000).

use std::{collections::BTreeMap, fs, path::PathBuf, process::Command, time::Duration};

use anyhow::{ensure, Context as _, Result};

mod handshakes;
mod http1;
mod http2;
mod http_client;
mod memory;
mod peer_config;
mod process;
mod proxies;
mod report;
mod scale;
mod stats;

use handshakes::handshakes;
use http1::http1;
use http2::http2;
use memory::idle_memory;
use process::{pin_self_to, print_output, raise_file_limit, TempDir};
use proxies::Env;
use report::Report;
use scale::scale;

const LOCALHOST: [u8; 4] = [127, 0, 0, 1];
const UPSTREAM_PORT: u16 = 28000;
const UPSTREAM_BODY: &str = "hello from the upstream\n";
/// Client idle timeout configured on all three proxies, longer than any measurement.
const IDLE_TIMEOUT_S: u64 = 300;
/// How long the idle connections stay idle before the proxy's RSS is read.
const IDLE_BEFORE_RSS: Duration = Duration::from_secs(5);
/// The host name of the certificate (and the SNI the handshake client sends).
const TLS_NAME: &str = "bench.example";
/// CPU numbers: the proxies on one, everything else on the other.
const PROXY_CPU: &str = "0";
const LOAD_CPU: usize = 1;
const SCALE_PATHS: [&str; 5] = ["/a", "/b", "/c", "/d", "/e"];

struct Settings {
    quick: bool,
    agent: PathBuf,
    workspace: PathBuf,
    reps: usize,
    /// wrk and h2load run time.
    run_secs: u64,
    /// Handshake client run time.
    handshake_secs: u64,
    idle_connections: usize,
    scale_hosts: usize,
    /// Extra flags for ours: the idle timeout (under whichever names this build has), no admin
    /// listener.
    ours_flags: Vec<String>,
    /// RLIMIT_NOFILE after raising it (set in main).
    nofile: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Ours,
    Nginx,
    Haproxy,
}

const KINDS: [Kind; 3] = [Kind::Ours, Kind::Nginx, Kind::Haproxy];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ours => "xdp-ingress",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "HAProxy",
        }
    }

    fn ports(self) -> Ports {
        match self {
            Kind::Ours => Ports::new(28101),
            Kind::Nginx => Ports::new(28201),
            Kind::Haproxy => Ports::new(28301),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Ports {
    http: u16,
    https: u16,
}

impl Ports {
    fn new(http: u16) -> Self {
        Self {
            http,
            https: http + 1,
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace = workspace.canonicalize().unwrap_or(workspace);
    let agent = std::env::var_os("XDP_INGRESS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/release/xdp-ingress"));
    ensure!(
        agent.exists(),
        "agent binary {} missing: run `cargo xtask bench l7` (it builds it)",
        agent.display()
    );
    for tool in ["nginx", "haproxy", "wrk", "h2load", "taskset"] {
        ensure!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is not installed: `cargo xtask setup` installs it"
        );
    }
    let help = Command::new(&agent)
        .args(["run", "--help"])
        .output()
        .context("running the agent's --help")?;
    let help = String::from_utf8_lossy(&help.stdout);
    let mut ours_flags = vec![
        "--client-header-timeout".to_string(),
        format!("{IDLE_TIMEOUT_S}s"),
    ];
    if help.contains("--admin-listen") {
        // Several agents run at once (section 5); none needs the health endpoints.
        ours_flags.extend(["--admin-listen".to_string(), "off".to_string()]);
    }
    if help.contains("--client-idle-timeout") {
        ours_flags.extend([
            "--client-idle-timeout".to_string(),
            format!("{IDLE_TIMEOUT_S}s"),
        ]);
    }
    let settings = Settings {
        quick,
        agent,
        workspace,
        reps: if quick { 1 } else { 3 },
        run_secs: if quick { 3 } else { 10 },
        handshake_secs: if quick { 3 } else { 10 },
        idle_connections: if quick { 1_000 } else { 10_000 },
        scale_hosts: if quick { 1_000 } else { 10_000 },
        ours_flags,
        nofile: 0,
    };
    pin_self_to(LOAD_CPU)?;
    let nofile = raise_file_limit(settings.idle_connections as u64 + 5_000)?;
    let settings = Settings { nofile, ..settings };

    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", load.trim());
    let dir = TempDir::new()?;
    let env = Env::prepare(&settings, dir.path(), nofile)?;
    let mut report = Report::default();
    let _upstream = env.start_upstream()?;
    if args.iter().any(|a| a == "--memory-only") {
        idle_memory(&settings, &env).context("idle-connection memory measurement")?;
        return Ok(());
    }

    let mut proxies = BTreeMap::new();
    for kind in KINDS {
        proxies.insert(kind, env.start_proxy(kind)?);
    }
    for proxy in proxies.values_mut() {
        proxy.check_answers()?;
    }
    let h1 = http1(&settings, &mut proxies).context("HTTP/1.1 measurement")?;
    let h2 = http2(&settings, &mut proxies).context("HTTP/2 measurement")?;
    let hs = handshakes(&settings, &env, &mut proxies).context("TLS handshake measurement")?;
    for proxy in proxies.values() {
        print_output(&proxy.proc);
    }
    drop(proxies);
    let memory = idle_memory(&settings, &env).context("idle-connection memory measurement")?;
    let scale = scale(&settings, &env).context("10,000-host measurement")?;
    report.write_results(&settings, &h1, &h2, &hs, &memory, &scale);
    report.finish(&settings, &load)
}
