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

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};

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

// ---------------------------------------------------------------------------------------------
// Processes and the machine

/// Pins this process (and threads started later, and children unless they re-pin) to one CPU.
fn pin_self_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the macros only set bits in it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "pinning the load generator to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// Raises RLIMIT_NOFILE (inherited by the proxies started later) to hold `need` descriptors, as
/// far as allowed (without CAP_SYS_RESOURCE only up to the hard limit); the limit now.
fn raise_file_limit(need: u64) -> Result<u64> {
    let wanted = need.max(200_000);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain FFI calls with a valid pointer.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            // Not allowed to raise the hard limit: take what there is.
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    ensure!(
        limit.rlim_cur >= need,
        "RLIMIT_NOFILE is {} (hard limit {}) but the benchmark needs {need} descriptors: \
         raise the hard limit (ulimit -Hn) or run as root with CAP_SYS_RESOURCE",
        limit.rlim_cur,
        limit.rlim_max
    );
    Ok(limit.rlim_cur)
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("xdp-ingress-bench-l7-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A child process (and whatever it forks), its output in a log file; killed on drop.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut command: Command, log: PathBuf) -> Result<Self> {
        let file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let line = display(&command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}: `{line}`"))?;
        println!("  started {name} (pid {}): {line}", child.id());
        Ok(Self {
            name: name.to_string(),
            child,
            log,
        })
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails, with the process's output, if it has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                self.log_text()
            );
        }
        Ok(())
    }

    /// Waits until every port accepts connections.
    fn wait_listening(&mut self, ports: &[u16], timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        for &port in ports {
            loop {
                self.check_alive()?;
                if TcpStream::connect_timeout(&addr(port), Duration::from_millis(200)).is_ok() {
                    break;
                }
                if started.elapsed() > timeout {
                    bail!(
                        "{} is not listening on 127.0.0.1:{port} after {timeout:?}; its output:\n{}",
                        self.name,
                        self.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(started.elapsed())
    }

    /// The process and its descendants (nginx's workers).
    fn pids(&self) -> Vec<u32> {
        let root = self.child.id();
        let mut parents: Vec<(u32, u32)> = Vec::new();
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Some(fields) = stat_fields(pid) {
                    if let Some(ppid) = fields.get(1).and_then(|s| s.parse().ok()) {
                        parents.push((pid, ppid));
                    }
                }
            }
        }
        let mut found = vec![root];
        let mut i = 0;
        while i < found.len() {
            let parent = found[i];
            found.extend(
                parents
                    .iter()
                    .filter(|(_, ppid)| *ppid == parent)
                    .map(|(pid, _)| *pid),
            );
            i += 1;
        }
        found
    }

    /// utime + stime of the process and its descendants, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(stat_fields)
            .map(|fields| {
                let field = |i: usize| fields.get(i).and_then(|s| s.parse::<u64>().ok());
                field(11).unwrap_or(0) + field(12).unwrap_or(0)
            })
            .sum()
    }

    /// VmRSS summed over the process and its descendants, KiB.
    fn rss_kib(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .filter_map(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .sum()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pids = self.pids();
        for pid in pids.iter().rev() {
            // SAFETY: FFI call signalling our own child or its descendants.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a proxy wrote (warnings, errors), for the person reading the run; at most 20 lines.
fn print_output(proc: &Proc) {
    let text = proc.log_text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(" INFO ") && !l.contains("[NOTICE]"))
        .collect();
    if lines.is_empty() {
        println!("  {}: no warnings or errors in its output", proc.name);
        return;
    }
    println!(
        "  {} wrote {} warning/error line(s):",
        proc.name,
        lines.len()
    );
    for line in lines.iter().take(20) {
        println!("    | {line}");
    }
}

/// Fields of /proc/PID/stat after the command name: [0] is the state, [1] the ppid, [11] utime,
/// [12] stime.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: plain FFI call.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

fn display(command: &Command) -> String {
    let mut line = vec![command.get_program().to_string_lossy().into_owned()];
    line.extend(command.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.contains(' ') || a.contains(';') {
            format!("'{a}'")
        } else {
            a.into_owned()
        }
    }));
    line.join(" ")
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from((LOCALHOST, port))
}

fn ensure_free(port: u16) -> Result<()> {
    TcpListener::bind(addr(port))
        .map(drop)
        .with_context(|| format!("port 127.0.0.1:{port} is taken (a proxy left running?)"))
}

/// `taskset -c CPU program`.
fn pinned(cpu: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", cpu]).arg(program);
    command
}

/// Runs a load generator to completion; its stdout, or its output in the error.
fn run_tool(mut command: Command) -> Result<String> {
    let line = display(&command);
    let output = command
        .output()
        .with_context(|| format!("starting `{line}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

// ---------------------------------------------------------------------------------------------
// The proxies and their configuration

struct Env {
    dir: PathBuf,
    agent: PathBuf,
    ours_flags: Vec<String>,
    /// RLIMIT_NOFILE the proxies inherit; their connection limits are set just below it.
    nofile: u64,
    idle_connections: usize,
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
}

struct Proxy {
    kind: Kind,
    ports: Ports,
    proc: Proc,
}

impl Proxy {
    fn check_answers(&mut self) -> Result<()> {
        let status = http_get(self.ports.http, "bench.example", "/")
            .with_context(|| format!("asking {}", self.kind.name()))?;
        self.proc.check_alive()?;
        ensure!(
            status == 200,
            "{} answered {status} instead of 200; its output:\n{}",
            self.kind.name(),
            self.proc.log_text()
        );
        Ok(())
    }
}

impl Env {
    fn prepare(settings: &Settings, dir: &Path, nofile: u64) -> Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec![
            TLS_NAME.to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .context("generating the certificate")?;
        let env = Self {
            dir: dir.to_path_buf(),
            agent: settings.agent.clone(),
            ours_flags: settings.ours_flags.clone(),
            nofile,
            idle_connections: settings.idle_connections,
            cert_pem: certified.cert.pem(),
            key_pem: certified.key_pair.serialize_pem(),
            cert_der: certified.cert.der().clone(),
        };
        fs::write(dir.join("cert.pem"), &env.cert_pem)?;
        fs::write(dir.join("key.pem"), &env.key_pem)?;
        fs::write(
            dir.join("haproxy.pem"),
            format!("{}{}", env.cert_pem, env.key_pem),
        )?;
        let manifests = dir.join("manifests");
        fs::create_dir_all(&manifests)?;
        let mut text = base_manifests(&env.cert_pem, &env.key_pem, true);
        text += &service_manifests("up");
        text += "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: all, namespace: bench}\nspec:\n  ingressClassName: xdp\n  rules:\n  - http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: up, port: {number: 80}}}}\n";
        fs::write(manifests.join("bench.yaml"), text)?;
        Ok(env)
    }

    fn start_upstream(&self) -> Result<Proc> {
        ensure_free(UPSTREAM_PORT)?;
        let dir = self.dir.join("upstream");
        fs::create_dir_all(&dir)?;
        let conf = format!(
            "worker_processes 1;\nworker_rlimit_nofile {nofile};\npid {dir}/nginx.pid;\n\
             error_log stderr warn;\nevents {{ worker_connections {connections}; }}\n\
             http {{\n  access_log off;\n  keepalive_timeout {IDLE_TIMEOUT_S}s;\n  \
             keepalive_requests 100000000;\n{temp}  server {{\n    listen 127.0.0.1:{UPSTREAM_PORT} backlog=4096;\n    \
             default_type text/plain;\n    location / {{ return 200 {body:?}; }}\n  }}\n}}\n",
            dir = dir.display(),
            temp = nginx_temp_paths(&dir),
            body = UPSTREAM_BODY,
            nofile = self.nofile,
            connections = self.connection_limit(),
        );
        let file = dir.join("nginx.conf");
        fs::write(&file, conf)?;
        let mut command = pinned(&LOAD_CPU.to_string(), "nginx");
        command
            .arg("-p")
            .arg(&dir)
            .args(["-e", "stderr"])
            .arg("-c")
            .arg(&file)
            .args(["-g", "daemon off;"]);
        let mut proc = Proc::spawn("upstream nginx", command, dir.join("output.log"))?;
        proc.wait_listening(&[UPSTREAM_PORT], Duration::from_secs(10))?;
        let status = http_get(UPSTREAM_PORT, "bench.example", "/")?;
        ensure!(status == 200, "the upstream answered {status}");
        Ok(proc)
    }

    fn start_proxy(&self, kind: Kind) -> Result<Proxy> {
        let ports = kind.ports();
        ensure_free(ports.http)?;
        ensure_free(ports.https)?;
        let dir = self.dir.join(kind.name());
        fs::create_dir_all(&dir)?;
        let (command, timeout) = match kind {
            Kind::Ours => {
                let mut command = pinned(PROXY_CPU, &self.agent);
                command
                    .arg("run")
                    .arg("--manifests")
                    .arg(self.dir.join("manifests"))
                    .arg("--http-listen")
                    .arg(addr(ports.http).to_string())
                    .arg("--https-listen")
                    .arg(addr(ports.https).to_string())
                    .args(["--workers", "1", "--default-tls-secret", "bench/tls"])
                    .args(&self.ours_flags)
                    .env("RUST_LOG", "info");
                (command, Duration::from_secs(30))
            }
            Kind::Nginx => {
                let file = dir.join("nginx.conf");
                fs::write(&file, self.nginx_conf(&dir, ports))?;
                let mut command = pinned(PROXY_CPU, "nginx");
                command
                    .arg("-p")
                    .arg(&dir)
                    .args(["-e", "stderr"])
                    .arg("-c")
                    .arg(&file)
                    .args(["-g", "daemon off;"]);
                (command, Duration::from_secs(10))
            }
            Kind::Haproxy => {
                let file = dir.join("haproxy.cfg");
                fs::write(&file, self.haproxy_conf(ports))?;
                let mut command = pinned(PROXY_CPU, "haproxy");
                command.arg("-f").arg(&file).arg("-db");
                (command, Duration::from_secs(10))
            }
        };
        let mut proc = Proc::spawn(kind.name(), command, dir.join("output.log"))?;
        proc.wait_listening(&[ports.http, ports.https], timeout)?;
        Ok(Proxy { kind, ports, proc })
    }

    fn nginx_conf(&self, dir: &Path, ports: Ports) -> String {
        format!(
            "worker_processes 1;\nworker_rlimit_nofile {nofile};\npid {d}/nginx.pid;\n\
             error_log stderr warn;\nevents {{ worker_connections {connections}; }}\n\
             http {{\n  access_log off;\n  keepalive_timeout {IDLE_TIMEOUT_S}s;\n  \
             keepalive_requests 100000000;\n  client_header_timeout {IDLE_TIMEOUT_S}s;\n{temp}  \
             upstream up {{\n    server 127.0.0.1:{UPSTREAM_PORT};\n    keepalive 256;\n    \
             keepalive_requests 100000000;\n    keepalive_timeout 30s;\n  }}\n  server {{\n    \
             listen 127.0.0.1:{http};\n    listen 127.0.0.1:{https} ssl http2;\n    \
             ssl_certificate {d}/../cert.pem;\n    ssl_certificate_key {d}/../key.pem;\n    \
             ssl_protocols TLSv1.2 TLSv1.3;\n    \
             location / {{\n      proxy_pass http://up;\n      proxy_http_version 1.1;\n      \
             proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n      \
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      \
             proxy_set_header X-Forwarded-Proto $scheme;\n      \
             proxy_set_header X-Forwarded-Host $host;\n      \
             proxy_set_header X-Forwarded-Port $server_port;\n      \
             proxy_set_header X-Real-IP $remote_addr;\n      \
             proxy_set_header X-Request-ID $request_id;\n    }}\n  }}\n}}\n",
            d = dir.display(),
            temp = nginx_temp_paths(dir),
            http = ports.http,
            https = ports.https,
            nofile = self.nofile,
            connections = self.connection_limit(),
        )
    }

    /// Connections per proxy: all the descriptors it may open, less some for everything else.
    fn connection_limit(&self) -> u64 {
        self.nofile.saturating_sub(500)
    }

    /// HAProxy reserves two descriptors per connection (client and server side) and refuses a
    /// maxconn it cannot back that way unless `no strict-limits`; idle client connections hold
    /// one, so the idle-connection count (plus room) is enough and within the limit here.
    fn haproxy_maxconn(&self) -> u64 {
        (self.idle_connections as u64 + 1_000).min(self.connection_limit())
    }

    fn haproxy_conf(&self, ports: Ports) -> String {
        format!(
            "global\n  nbthread 1\n  maxconn {connections}\n  no strict-limits\n\n\
             defaults\n  mode http\n  maxconn {connections}\n  timeout connect 5s\n  \
             timeout client {IDLE_TIMEOUT_S}s\n  timeout server 60s\n  \
             timeout http-request {IDLE_TIMEOUT_S}s\n  timeout http-keep-alive {IDLE_TIMEOUT_S}s\n\n\
             frontend fe\n  bind 127.0.0.1:{http}\n  \
             bind 127.0.0.1:{https} ssl crt {pem} alpn h2,http/1.1\n  \
             unique-id-format %{{+X}}o%ci%cp%fi%fp%Ts%rt\n  option forwardfor\n  \
             http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}\n  \
             http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}\n  \
             http-request set-header X-Forwarded-Host %[req.hdr(host)]\n  \
             http-request set-header X-Forwarded-Port %[dst_port]\n  \
             http-request set-header X-Real-IP %[src]\n  \
             http-request set-header X-Request-ID %[unique-id] unless {{ req.hdr(x-request-id) -m found }}\n  \
             default_backend be\n\n\
             backend be\n  server up 127.0.0.1:{UPSTREAM_PORT}\n",
            http = ports.http,
            https = ports.https,
            pem = self.dir.join("haproxy.pem").display(),
            connections = self.haproxy_maxconn(),
        )
    }

    /// Ours on a manifest directory of its own, plain HTTP only (the scale measurement).
    fn start_ours_on(&self, name: &str, manifests: &Path, port: u16) -> Result<(Proc, Duration)> {
        ensure_free(port)?;
        let mut command = pinned(PROXY_CPU, &self.agent);
        command
            .arg("run")
            .arg("--manifests")
            .arg(manifests)
            .arg("--http-listen")
            .arg(addr(port).to_string())
            .args(["--https-listen", "off", "--workers", "1"])
            .args(&self.ours_flags)
            .env("RUST_LOG", "info");
        let mut proc = Proc::spawn(name, command, self.dir.join(format!("{name}.log")))?;
        let started = proc.wait_listening(&[port], Duration::from_secs(180))?;
        Ok((proc, started))
    }
}

fn nginx_temp_paths(dir: &Path) -> String {
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|kind| format!("  {kind}_temp_path {}/{kind}_temp;\n", dir.display()))
        .collect()
}

/// The IngressClass and, if asked, the TLS Secret `bench/tls`.
fn base_manifests(cert_pem: &str, key_pem: &str, with_secret: bool) -> String {
    let mut text = "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: xdp}\nspec: {controller: xdp-ingress.dev/controller}\n".to_string();
    if with_secret {
        let indent = |pem: &str| {
            pem.lines()
                .map(|line| format!("    {line}\n"))
                .collect::<String>()
        };
        let _ = write!(
            text,
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: tls, namespace: bench}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(cert_pem),
            indent(key_pem)
        );
    }
    text
}

/// Service `bench/NAME` port 80 with an EndpointSlice pointing at the upstream.
fn service_manifests(name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\nspec: {{ports: [{{name: http, port: 80, targetPort: {UPSTREAM_PORT}}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-a, namespace: bench, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nports: [{{name: http, port: {UPSTREAM_PORT}}}]\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]\n"
    )
}

/// Ingress `bench/hN` for host hN.bench.example with `paths` to Service `bench/sN`, and the
/// Service.
fn host_manifests(n: usize, paths: &[&str]) -> String {
    let mut text = service_manifests(&format!("s{n}"));
    let _ = write!(
        text,
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: h{n}, namespace: bench}}\nspec:\n  ingressClassName: xdp\n  rules:\n  - host: h{n}.bench.example\n    http:\n      paths:\n"
    );
    for path in paths {
        let _ = writeln!(
            text,
            "      - {{path: {path}, pathType: Prefix, backend: {{service: {{name: s{n}, port: {{number: 80}}}}}}}}"
        );
    }
    text
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers for this process's own clients

/// One GET on a new connection; the status.
fn http_get(port: u16, host: &str, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr(port), Duration::from_secs(5))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    read_response(&mut stream, &mut Vec::new())
}

/// Reads one response (Content-Length or chunked body); the status.
fn read_response(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk)?;
        ensure!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status in the response")?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(length) => {
            while buf.len() < head_end + length {
                let n = stream.read(&mut chunk)?;
                ensure!(n > 0, "connection closed inside a response body");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        None if head.contains("transfer-encoding: chunked") => {
            while find(&buf[head_end..], b"0\r\n\r\n").is_none() {
                let n = stream.read(&mut chunk)?;
                ensure!(n > 0, "connection closed inside a chunked body");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        None => {}
    }
    Ok(status)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Statistics

fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(|a, b| a.total_cmp(b));
    if values.is_empty() {
        return f64::NAN;
    }
    values[values.len() / 2]
}

/// Samples of one figure per proxy.
#[derive(Default)]
struct Samples(BTreeMap<Kind, Vec<f64>>);

impl Samples {
    fn push(&mut self, kind: Kind, value: f64) {
        self.0.entry(kind).or_default().push(value);
    }

    fn median(&self, kind: Kind) -> f64 {
        self.0.get(&kind).map_or(f64::NAN, |v| median(v))
    }

    fn all(&self, kind: Kind) -> String {
        self.0.get(&kind).map_or_else(String::new, |v| {
            v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(", ")
        })
    }
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

/// CPU µs of `proc` while `work` runs, with what `work` returns.
fn with_cpu<T>(proc: &Proc, work: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let before = proc.cpu_ticks();
    let value = work()?;
    let after = proc.cpu_ticks();
    let us = (after.saturating_sub(before)) as f64 * 1e6 / clock_ticks_per_second();
    Ok((value, us))
}

// ---------------------------------------------------------------------------------------------
// 1. HTTP/1.1 keep-alive

struct WrkResult {
    requests: u64,
    rps: f64,
    p99_ms: f64,
    errors: u64,
}

fn wrk(port: u16, secs: u64, host: Option<&str>, path: &str) -> Result<WrkResult> {
    let mut command = pinned(&LOAD_CPU.to_string(), "wrk");
    command
        .args(["-t1", "-c50", "--latency", "-d"])
        .arg(format!("{secs}s"));
    if let Some(host) = host {
        command.arg("-H").arg(format!("Host: {host}"));
    }
    command.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = run_tool(command)?;
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no request count in wrk's output:\n{out}"))?;
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?;
    let p99_ms = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| parse_latency_ms(v.trim()))
        .with_context(|| format!("no 99% latency in wrk's output:\n{out}"))?;
    let mut errors = 0;
    for line in out.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
        if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Ok(WrkResult {
        requests,
        rps,
        p99_ms,
        errors,
    })
}

fn parse_latency_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(number / 1000.0),
        "ms" => Some(number),
        "s" => Some(number * 1000.0),
        "m" => Some(number * 60_000.0),
        _ => None,
    }
}

struct Http1 {
    /// Proxy CPU time over the run's length, %.
    busy: Samples,
    rps: Samples,
    p99_ms: Samples,
    cpu_us: Samples,
    errors: BTreeMap<Kind, u64>,
}

fn http1(settings: &Settings, proxies: &mut BTreeMap<Kind, Proxy>) -> Result<Http1> {
    println!(
        "\n1. HTTP/1.1 keep-alive, wrk -t1 -c50 -d{}s",
        settings.run_secs
    );
    for proxy in proxies.values() {
        wrk(proxy.ports.http, 1, None, "/")?; // warm-up
    }
    let mut result = Http1 {
        busy: Samples::default(),
        rps: Samples::default(),
        p99_ms: Samples::default(),
        cpu_us: Samples::default(),
        errors: BTreeMap::new(),
    };
    for rep in 0..settings.reps {
        for proxy in proxies.values_mut() {
            let (run, us) = with_cpu(&proxy.proc, || {
                wrk(proxy.ports.http, settings.run_secs, None, "/")
            })?;
            proxy.proc.check_alive()?;
            let per_request = us / run.requests.max(1) as f64;
            println!(
                "  [{}] {:<12} {:>9.0} req/s  p99 {:>6.2} ms  {:>6.2} µs CPU/request  errors {}",
                rep + 1,
                proxy.kind.name(),
                run.rps,
                run.p99_ms,
                per_request,
                run.errors
            );
            result
                .busy
                .push(proxy.kind, us / (settings.run_secs as f64 * 1e4));
            result.rps.push(proxy.kind, run.rps);
            result.p99_ms.push(proxy.kind, run.p99_ms);
            result.cpu_us.push(proxy.kind, per_request);
            *result.errors.entry(proxy.kind).or_default() += run.errors;
        }
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// 2. HTTP/2 over TLS

struct H2loadResult {
    succeeded: u64,
    rps: f64,
    errors: u64,
}

fn h2load(port: u16, secs: u64) -> Result<H2loadResult> {
    let mut command = pinned(&LOAD_CPU.to_string(), "h2load");
    command
        .args(["-t1", "-c50", "-m10", "-D"])
        .arg(secs.to_string())
        .arg(format!("https://127.0.0.1:{port}/"));
    let out = run_tool(command)?;
    ensure!(
        out.contains("Application protocol: h2") && out.contains("TLS Protocol: TLSv1.3"),
        "h2load did not negotiate h2 over TLS 1.3:\n{out}"
    );
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").parse().ok())
        .with_context(|| format!("no req/s in h2load's output:\n{out}"))?;
    let requests = out
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .with_context(|| format!("no request counts in h2load's output:\n{out}"))?;
    let count = |what: &str| -> u64 {
        requests
            .split(", ")
            .find(|part| part.ends_with(what))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let non_2xx = out
        .lines()
        .find_map(|l| l.strip_prefix("status codes: "))
        .map_or(0, |codes| {
            codes
                .split(", ")
                .filter(|part| !part.ends_with(" 2xx"))
                .filter_map(|part| part.split_whitespace().next())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum()
        });
    Ok(H2loadResult {
        succeeded: count(" succeeded"),
        rps,
        errors: count(" failed") + count(" errored") + count(" timeout") + non_2xx,
    })
}

struct Http2 {
    busy: Samples,
    rps: Samples,
    cpu_us: Samples,
    errors: BTreeMap<Kind, u64>,
}

fn http2(settings: &Settings, proxies: &mut BTreeMap<Kind, Proxy>) -> Result<Http2> {
    println!(
        "\n2. HTTP/2 over TLS, h2load -t1 -c50 -m10 -D{}",
        settings.run_secs
    );
    for proxy in proxies.values() {
        h2load(proxy.ports.https, 1)?; // warm-up
    }
    let mut result = Http2 {
        busy: Samples::default(),
        rps: Samples::default(),
        cpu_us: Samples::default(),
        errors: BTreeMap::new(),
    };
    for rep in 0..settings.reps {
        for proxy in proxies.values_mut() {
            let (run, us) = with_cpu(&proxy.proc, || h2load(proxy.ports.https, settings.run_secs))?;
            proxy.proc.check_alive()?;
            let per_request = us / run.succeeded.max(1) as f64;
            println!(
                "  [{}] {:<12} {:>9.0} req/s  {:>6.2} µs CPU/request  errors {}",
                rep + 1,
                proxy.kind.name(),
                run.rps,
                per_request,
                run.errors
            );
            result
                .busy
                .push(proxy.kind, us / (settings.run_secs as f64 * 1e4));
            result.rps.push(proxy.kind, run.rps);
            result.cpu_us.push(proxy.kind, per_request);
            *result.errors.entry(proxy.kind).or_default() += run.errors;
        }
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// 3. Full TLS handshakes

/// Accepts exactly the benchmark's certificate; handshake signatures are verified as usual.
#[derive(Debug)]
struct PinnedCert {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the benchmark's certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS 1.3, no session resumption (no cache, no tickets): every connection is a full handshake.
fn handshake_client_config(cert: &CertificateDer<'static>) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCert {
            cert: cert.clone(),
            provider,
        }))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One connection: full handshake, one request, the whole response.
fn one_handshake(config: &Arc<rustls::ClientConfig>, port: u16) -> Result<()> {
    let tcp = TcpStream::connect_timeout(&addr(port), Duration::from_secs(5))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from(TLS_NAME)?.to_owned();
    let connection = rustls::ClientConnection::new(config.clone(), name)?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: {TLS_NAME}\r\nConnection: close\r\n\r\n"
    )?;
    stream.flush()?;
    let status = read_response(&mut stream, &mut Vec::new())?;
    ensure!(status == 200, "status {status}");
    ensure!(
        stream.conn.handshake_kind() == Some(rustls::HandshakeKind::Full),
        "not a full handshake: {:?}",
        stream.conn.handshake_kind()
    );
    Ok(())
}

/// Handshakes from `threads` client threads for `secs`: (completed, failed, first error).
fn handshake_load(
    config: &Arc<rustls::ClientConfig>,
    port: u16,
    secs: u64,
    threads: usize,
) -> (u64, u64, Option<String>) {
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let first_error = std::sync::Mutex::new(None);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    match one_handshake(config, port) {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut first = first_error.lock().unwrap();
                            if first.is_none() {
                                *first = Some(format!("{error:#}"));
                            }
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
    });
    (
        done.into_inner(),
        failed.into_inner(),
        first_error.into_inner().unwrap(),
    )
}

struct Handshakes {
    per_cpu_second: Samples,
    per_second: Samples,
    errors: BTreeMap<Kind, (u64, Option<String>)>,
}

const HANDSHAKE_THREADS: usize = 16;

fn handshakes(
    settings: &Settings,
    env: &Env,
    proxies: &mut BTreeMap<Kind, Proxy>,
) -> Result<Handshakes> {
    println!(
        "\n3. Full TLS 1.3 handshakes, {HANDSHAKE_THREADS} client threads, {} s",
        settings.handshake_secs
    );
    let config = handshake_client_config(&env.cert_der)?;
    for proxy in proxies.values() {
        one_handshake(&config, proxy.ports.https)
            .with_context(|| format!("a TLS request to {}", proxy.kind.name()))?;
        handshake_load(&config, proxy.ports.https, 1, HANDSHAKE_THREADS); // warm-up
    }
    let mut result = Handshakes {
        per_cpu_second: Samples::default(),
        per_second: Samples::default(),
        errors: BTreeMap::new(),
    };
    for rep in 0..settings.reps {
        for proxy in proxies.values_mut() {
            let started = Instant::now();
            let ((done, failed, first), us) = with_cpu(&proxy.proc, || {
                Ok(handshake_load(
                    &config,
                    proxy.ports.https,
                    settings.handshake_secs,
                    HANDSHAKE_THREADS,
                ))
            })?;
            let wall = started.elapsed().as_secs_f64();
            proxy.proc.check_alive()?;
            let per_cpu = done as f64 / (us / 1e6);
            println!(
                "  [{}] {:<12} {:>7.0} handshakes/s  {:>7.0} per proxy CPU-second  failed {failed}{}",
                rep + 1,
                proxy.kind.name(),
                done as f64 / wall,
                per_cpu,
                first.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
            );
            result.per_cpu_second.push(proxy.kind, per_cpu);
            result.per_second.push(proxy.kind, done as f64 / wall);
            let entry = result.errors.entry(proxy.kind).or_default();
            entry.0 += failed;
            if entry.1.is_none() {
                entry.1 = first;
            }
        }
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// 4. Memory with idle keep-alive connections

struct Memory {
    base_mib: Samples,
    loaded_mib: Samples,
    per_connection_kib: Samples,
    /// Connections that did not answer a second request after the measurement.
    closed: BTreeMap<Kind, usize>,
    open_failures: BTreeMap<Kind, String>,
}

/// Opens `count` connections in batches, one request on each; the connections.
fn open_idle(port: u16, count: usize) -> Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(count);
    let mut buf = Vec::new();
    let request = b"GET / HTTP/1.1\r\nHost: bench.example\r\n\r\n";
    while streams.len() < count {
        let batch = (count - streams.len()).min(500);
        let first = streams.len();
        for _ in 0..batch {
            let stream = TcpStream::connect_timeout(&addr(port), Duration::from_secs(10))
                .with_context(|| format!("opening connection {}", streams.len() + 1))?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            streams.push(stream);
        }
        for stream in &mut streams[first..] {
            stream.write_all(request)?;
        }
        for (i, stream) in streams[first..].iter_mut().enumerate() {
            let status = read_response(stream, &mut buf)
                .with_context(|| format!("response on connection {}", first + i + 1))?;
            ensure!(
                status == 200,
                "status {status} on connection {}",
                first + i + 1
            );
        }
    }
    Ok(streams)
}

/// Asks every connection again; how many no longer answer.
fn count_closed(streams: &mut [TcpStream]) -> usize {
    let request = b"GET / HTTP/1.1\r\nHost: bench.example\r\n\r\n";
    let mut buf = Vec::new();
    let mut closed = 0;
    for chunk in streams.chunks_mut(500) {
        let mut sent = vec![false; chunk.len()];
        for (i, stream) in chunk.iter_mut().enumerate() {
            sent[i] = stream.write_all(request).is_ok();
        }
        for (i, stream) in chunk.iter_mut().enumerate() {
            if !sent[i] || !matches!(read_response(stream, &mut buf), Ok(200)) {
                closed += 1;
            }
        }
    }
    closed
}

fn idle_memory(settings: &Settings, env: &Env) -> Result<Memory> {
    let count = settings.idle_connections;
    println!("\n4. RSS with {count} idle keep-alive connections (fresh proxy each time)");
    let mut result = Memory {
        base_mib: Samples::default(),
        loaded_mib: Samples::default(),
        per_connection_kib: Samples::default(),
        closed: BTreeMap::new(),
        open_failures: BTreeMap::new(),
    };
    for rep in 0..settings.reps {
        for kind in KINDS {
            let mut proxy = env.start_proxy(kind)?;
            proxy.check_answers()?;
            std::thread::sleep(Duration::from_millis(500));
            let base = proxy.proc.rss_kib();
            let mut streams = match open_idle(proxy.ports.http, count) {
                Ok(streams) => streams,
                Err(error) => {
                    let message = format!("{error:#}");
                    println!("  [{}] {:<12} FAILED: {message}", rep + 1, kind.name());
                    result.open_failures.insert(kind, message);
                    continue;
                }
            };
            // Idle for a while, the same for every proxy: ours parks a connection after 1 s
            // quiet and returns the freed memory within the next second, which on a loaded
            // host can take past 2 s for 10,000 connections.
            std::thread::sleep(IDLE_BEFORE_RSS);
            proxy.proc.check_alive()?;
            let loaded = proxy.proc.rss_kib();
            let closed = count_closed(&mut streams);
            drop(streams);
            if rep + 1 == settings.reps {
                print_output(&proxy.proc);
            }
            println!(
                "  [{}] {:<12} RSS {:>7.1} MiB fresh, {:>7.1} MiB with {count} idle connections ({:.1} KiB each); {closed} closed",
                rep + 1,
                kind.name(),
                base as f64 / 1024.0,
                loaded as f64 / 1024.0,
                (loaded as f64 - base as f64) / count as f64,
            );
            result.base_mib.push(kind, base as f64 / 1024.0);
            result.loaded_mib.push(kind, loaded as f64 / 1024.0);
            result
                .per_connection_kib
                .push(kind, (loaded as f64 - base as f64) / count as f64);
            *result.closed.entry(kind).or_default() += closed;
        }
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// 5. 10,000 Ingress hosts

struct Scale {
    hosts: usize,
    cpu_us_one: Vec<f64>,
    cpu_us_many: Vec<f64>,
    rps_one: Vec<f64>,
    rps_many: Vec<f64>,
    errors: u64,
    start_s: f64,
    first_sync_ms: Option<f64>,
    rss_one_mib: f64,
    rss_many_mib: f64,
    swap_ms: Vec<f64>,
    sync_ms: Vec<f64>,
}

const SCALE_FILES: usize = 10;

fn write_scale_manifests(dir: &Path, hosts: usize, changed: bool) -> Result<()> {
    fs::create_dir_all(dir)?;
    let per_file = hosts.div_ceil(SCALE_FILES);
    for file in 0..SCALE_FILES {
        let range = file * per_file..((file + 1) * per_file).min(hosts);
        if range.is_empty() && file > 0 {
            continue;
        }
        let mut text = if file == 0 {
            base_manifests("", "", false)
        } else {
            String::new()
        };
        for n in range {
            if changed && n == hosts - 1 {
                text += &host_manifests(n, &["/a", "/b", "/c", "/d", "/f"]);
            } else {
                text += &host_manifests(n, &SCALE_PATHS);
            }
        }
        // Written next to the target and renamed in, so the agent never reads half a file.
        let path = dir.join(format!("hosts-{file:02}.yaml"));
        let staging = dir.join(format!(".hosts-{file:02}.yaml.tmp"));
        fs::write(&staging, text)?;
        fs::rename(&staging, &path)?;
    }
    Ok(())
}

/// The last number after `key=` in the lines of `log` containing `marker`.
fn logged_values(log: &str, marker: &str, key: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            let start = l.find(key)? + key.len();
            l[start..]
                .split(|c: char| c.is_whitespace() || c == ',')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn scale(settings: &Settings, env: &Env) -> Result<Scale> {
    let hosts = settings.scale_hosts;
    println!(
        "\n5. Ours: {hosts} Ingress hosts × {} paths against 1 Ingress",
        SCALE_PATHS.len()
    );
    let one_dir = env.dir.join("scale-1");
    fs::create_dir_all(&one_dir)?;
    fs::write(
        one_dir.join("hosts.yaml"),
        base_manifests("", "", false) + &host_manifests(0, &SCALE_PATHS),
    )?;
    let many_dir = env.dir.join("scale-many");
    write_scale_manifests(&many_dir, hosts, false)?;

    let (mut one, _) = env.start_ours_on("ours-1-ingress", &one_dir, 28401)?;
    let (mut many, start) = env.start_ours_on("ours-many-ingresses", &many_dir, 28501)?;
    let first_sync_ms = logged_values(&many.log_text(), "synced", "elapsed_ms=")
        .first()
        .copied();
    println!(
        "  {hosts} Ingresses: listening {:.2} s after start (first sync {} ms)",
        start.as_secs_f64(),
        first_sync_ms.map_or("?".to_string(), |v| format!("{v:.1}"))
    );
    let target = hosts * 7 / 9; // somewhere inside, not the first nor the last
    let one_host = "h0.bench.example".to_string();
    let many_host = format!("h{target}.bench.example");
    for (proc, port, host) in [(&mut one, 28401, &one_host), (&mut many, 28501, &many_host)] {
        let status = http_get(port, host, "/c")?;
        ensure!(
            status == 200,
            "{} answered {status} for {host}/c; its output:\n{}",
            proc.name,
            proc.log_text()
        );
        wrk(port, 1, Some(host), "/c")?; // warm-up
    }
    let mut result = Scale {
        hosts,
        cpu_us_one: Vec::new(),
        cpu_us_many: Vec::new(),
        rps_one: Vec::new(),
        rps_many: Vec::new(),
        errors: 0,
        start_s: start.as_secs_f64(),
        first_sync_ms,
        rss_one_mib: one.rss_kib() as f64 / 1024.0,
        rss_many_mib: many.rss_kib() as f64 / 1024.0,
        swap_ms: Vec::new(),
        sync_ms: Vec::new(),
    };
    for rep in 0..settings.reps {
        for (case, proc, port, host) in [
            (1, &mut one, 28401, &one_host),
            (hosts, &mut many, 28501, &many_host),
        ] {
            let (run, us) = with_cpu(proc, || wrk(port, settings.run_secs, Some(host), "/c"))?;
            proc.check_alive()?;
            let per_request = us / run.requests.max(1) as f64;
            println!(
                "  [{}] {case:>5} Ingress(es) {:>9.0} req/s  {:>6.2} µs CPU/request  errors {}",
                rep + 1,
                run.rps,
                per_request,
                run.errors
            );
            result.errors += run.errors;
            if case == 1 {
                result.cpu_us_one.push(per_request);
                result.rps_one.push(run.rps);
            } else {
                result.cpu_us_many.push(per_request);
                result.rps_many.push(run.rps);
            }
        }
    }
    print_output(&one);
    drop(one);

    // Reloads: one Ingress in the last file changes its last path (/e <-> /f).
    let last = format!("h{}.bench.example", hosts - 1);
    for round in 0..3 {
        let before = logged_values(&many.log_text(), "synced", "elapsed_ms=").len();
        let changed = round % 2 == 0;
        write_scale_manifests(&many_dir, hosts, changed)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let log = loop {
            many.check_alive()?;
            let log = many.log_text();
            if logged_values(&log, "synced", "elapsed_ms=").len() > before {
                break log;
            }
            if Instant::now() > deadline {
                bail!("no reload within 120 s of rewriting the manifests; output:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let swap = logged_values(&log, "L7:", "swap_ms=");
        let sync = logged_values(&log, "synced", "elapsed_ms=");
        let read = logged_values(&log, "synced", "read_ms=");
        let (Some(&swap), Some(&sync), Some(&read)) = (swap.last(), sync.last(), read.last())
        else {
            bail!("no swap_ms/elapsed_ms/read_ms in the agent's output:\n{log}");
        };
        let status = http_get(28501, &last, "/f")?;
        let expected = if changed { 200 } else { 404 };
        ensure!(
            status == expected,
            "after the reload {last}/f answered {status}, expected {expected}"
        );
        println!(
            "  reload {}: swap_ms={swap:.2} read_ms={read:.1} elapsed_ms={sync:.1}",
            round + 1
        );
        result.swap_ms.push(swap);
        result.sync_ms.push(read + sync);
    }
    print_output(&many);
    drop(many);
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// Report

#[derive(Default)]
struct Report {
    lines: Vec<String>,
}

impl Report {
    fn line(&mut self, text: impl Into<String>) {
        self.lines.push(text.into());
    }

    fn write_results(
        &mut self,
        settings: &Settings,
        h1: &Http1,
        h2: &Http2,
        hs: &Handshakes,
        memory: &Memory,
        scale: &Scale,
    ) {
        let reps = settings.reps;
        let of = |n: usize| {
            if n == 1 {
                "1 run".to_string()
            } else {
                format!("median of {n} interleaved runs")
            }
        };
        let ours = Kind::Ours;
        let (ng, hp) = (Kind::Nginx, Kind::Haproxy);

        self.line("### 1. HTTP/1.1 keep-alive");
        self.line("");
        self.line(format!(
            "`wrk -t1 -c50 -d{}s --latency http://127.0.0.1:PORT/`, small responses ({} bytes); {}.",
            settings.run_secs,
            UPSTREAM_BODY.len(),
            of(reps)
        ));
        self.line("");
        self.line("| proxy | req/s | p99 ms | CPU µs/request | × ours (CPU) | proxy CPU busy | errors | runs (µs/request) |");
        self.line("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        for kind in KINDS {
            self.line(format!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} % | {} | {} |",
                kind.name(),
                h1.rps.median(kind),
                h1.p99_ms.median(kind),
                h1.cpu_us.median(kind),
                h1.cpu_us.median(kind) / h1.cpu_us.median(ours),
                h1.busy.median(kind),
                h1.errors.get(&kind).copied().unwrap_or(0),
                h1.cpu_us.all(kind)
            ));
        }
        self.line("");
        let cpu = |k| h1.cpu_us.median(k);
        let t1 = [
            (
                format!(
                    "CPU/request ≤ nginx / 1.3 ({:.2} ≤ {:.2})",
                    cpu(ours),
                    cpu(ng) / 1.3
                ),
                cpu(ours) <= cpu(ng) / 1.3,
            ),
            (
                format!(
                    "CPU/request ≤ HAProxy / 1.2 ({:.2} ≤ {:.2})",
                    cpu(ours),
                    cpu(hp) / 1.2
                ),
                cpu(ours) <= cpu(hp) / 1.2,
            ),
            (
                format!(
                    "req/s ≥ both ({:.0} vs {:.0}, {:.0})",
                    h1.rps.median(ours),
                    h1.rps.median(ng),
                    h1.rps.median(hp)
                ),
                h1.rps.median(ours) >= h1.rps.median(ng).max(h1.rps.median(hp)),
            ),
            (
                format!(
                    "p99 ≤ both ({:.2} vs {:.2}, {:.2} ms)",
                    h1.p99_ms.median(ours),
                    h1.p99_ms.median(ng),
                    h1.p99_ms.median(hp)
                ),
                h1.p99_ms.median(ours) <= h1.p99_ms.median(ng).min(h1.p99_ms.median(hp)),
            ),
        ];
        let mut targets = Vec::new();
        for (text, ok) in t1 {
            targets.push(format!("(1) {text}: {}", verdict(ok)));
        }

        self.line("### 2. HTTP/2 over TLS");
        self.line("");
        self.line(format!(
            "`h2load -t1 -c50 -m10 -D{} https://127.0.0.1:PORT/` (ALPN h2, TLS 1.3); {}.",
            settings.run_secs,
            of(reps)
        ));
        self.line("");
        self.line("| proxy | req/s | CPU µs/request | × ours (CPU) | proxy CPU busy | errors | runs (µs/request) |");
        self.line("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
        for kind in KINDS {
            self.line(format!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.0} % | {} | {} |",
                kind.name(),
                h2.rps.median(kind),
                h2.cpu_us.median(kind),
                h2.cpu_us.median(kind) / h2.cpu_us.median(ours),
                h2.busy.median(kind),
                h2.errors.get(&kind).copied().unwrap_or(0),
                h2.cpu_us.all(kind)
            ));
        }
        self.line("");
        targets.push(format!(
            "(2) HTTP/2 CPU/request ≤ nginx ({:.2} ≤ {:.2}): {}",
            h2.cpu_us.median(ours),
            h2.cpu_us.median(ng),
            verdict(h2.cpu_us.median(ours) <= h2.cpu_us.median(ng))
        ));

        self.line("### 3. Full TLS handshakes");
        self.line("");
        self.line(format!(
            "A rustls client in the harness (CPU 1, {HANDSHAKE_THREADS} threads, {} s): TLS 1.3, X25519, ECDSA P-256 certificate, session resumption disabled (every handshake checked to be full), one request per connection (`Connection: close`). Handshakes per second of the proxy's CPU time; {}.",
            settings.handshake_secs,
            of(reps)
        ));
        self.line("");
        self.line("| proxy | handshakes per CPU-second | × ours | handshakes/s (wall) | failed | runs (per CPU-second) |");
        self.line("| --- | ---: | ---: | ---: | ---: | --- |");
        for kind in KINDS {
            let (failed, first) = hs.errors.get(&kind).cloned().unwrap_or_default();
            self.line(format!(
                "| {} | {:.0} | {:.2} | {:.0} | {failed}{} | {} |",
                kind.name(),
                hs.per_cpu_second.median(kind),
                hs.per_cpu_second.median(kind) / hs.per_cpu_second.median(ours),
                hs.per_second.median(kind),
                first.map(|e| format!(" ({e})")).unwrap_or_default(),
                hs.per_cpu_second.all(kind)
            ));
        }
        self.line("");
        targets.push(format!(
            "(3) handshakes per CPU-second ≥ nginx ({:.0} ≥ {:.0}): {}",
            hs.per_cpu_second.median(ours),
            hs.per_cpu_second.median(ng),
            verdict(hs.per_cpu_second.median(ours) >= hs.per_cpu_second.median(ng))
        ));

        let count = settings.idle_connections;
        self.line(format!("### 4. Memory with {count} idle connections"));
        self.line("");
        self.line(format!(
            "A freshly started proxy answers one request, then {count} plain-HTTP/1.1 keep-alive connections each carry one request and stay idle; VmRSS summed over the proxy's processes {} s later; {}. Afterwards every connection is asked again ('closed' = no answer).",
            IDLE_BEFORE_RSS.as_secs(),
            of(reps)
        ));
        self.line("");
        self.line("| proxy | RSS fresh MiB | RSS with connections MiB | × ours | KiB per connection | closed |");
        self.line("| --- | ---: | ---: | ---: | ---: | ---: |");
        for kind in KINDS {
            if let Some(error) = memory.open_failures.get(&kind) {
                self.line(format!(
                    "| {} | {:.1} | failed: {error} | | | |",
                    kind.name(),
                    memory.base_mib.median(kind)
                ));
                continue;
            }
            self.line(format!(
                "| {} | {:.1} | {:.1} | {:.2} | {:.1} | {} |",
                kind.name(),
                memory.base_mib.median(kind),
                memory.loaded_mib.median(kind),
                memory.loaded_mib.median(kind) / memory.loaded_mib.median(ours),
                memory.per_connection_kib.median(kind),
                memory.closed.get(&kind).copied().unwrap_or(0)
            ));
        }
        self.line("");
        targets.push(format!(
            "(4) RSS with {count} idle connections ≤ nginx ({:.1} ≤ {:.1} MiB): {}",
            memory.loaded_mib.median(ours),
            memory.loaded_mib.median(ng),
            verdict(memory.loaded_mib.median(ours) <= memory.loaded_mib.median(ng))
        ));

        self.line(format!(
            "### 5. Ours: {} Ingress hosts × {} paths",
            scale.hosts,
            SCALE_PATHS.len()
        ));
        self.line("");
        let ratio = median(&scale.cpu_us_many) / median(&scale.cpu_us_one);
        let pairs: Vec<String> = scale
            .cpu_us_many
            .iter()
            .zip(&scale.cpu_us_one)
            .map(|(m, o)| format!("{:.3}", m / o))
            .collect();
        self.line(format!(
            "{} Ingresses (host hN.bench.example, Prefix paths {}, each to its own Service and EndpointSlice; {} files) against 1 Ingress of the same shape. `wrk -t1 -c50 -d{}s -H 'Host: HOST' http://127.0.0.1:PORT/c`, the host in the middle of the table; {}.",
            scale.hosts,
            SCALE_PATHS.join(" "),
            SCALE_FILES,
            settings.run_secs,
            of(reps)
        ));
        self.line("");
        self.line("| Ingresses | req/s | CPU µs/request | runs (µs/request) | RSS MiB |");
        self.line("| ---: | ---: | ---: | --- | ---: |");
        let runs = |v: &[f64]| v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(", ");
        self.line(format!(
            "| 1 | {:.0} | {:.2} | {} | {:.1} |",
            median(&scale.rps_one),
            median(&scale.cpu_us_one),
            runs(&scale.cpu_us_one),
            scale.rss_one_mib
        ));
        self.line(format!(
            "| {} | {:.0} | {:.2} | {} | {:.1} |",
            scale.hosts,
            median(&scale.rps_many),
            median(&scale.cpu_us_many),
            runs(&scale.cpu_us_many),
            scale.rss_many_mib
        ));
        self.line("");
        self.line(format!(
            "CPU/request ratio {} : 1 = {ratio:.3} (per run: {}); wrk errors {}.",
            scale.hosts,
            pairs.join(", "),
            scale.errors
        ));
        self.line("");
        self.line(format!(
            "Start with {} Ingresses: listening {:.2} s after the process started (first sync {} ms). Reloads (one Ingress's path changed in one of the {} files, 3 times): table build and swap `swap_ms` {} (median {:.1} ms); whole sync `read_ms` + `elapsed_ms` (read the files, parsing only those that changed; translate, build, swap) {} (median {:.0} ms).",
            scale.hosts,
            scale.start_s,
            scale.first_sync_ms.map_or("?".to_string(), |v| format!("{v:.0}")),
            SCALE_FILES,
            runs(&scale.swap_ms),
            median(&scale.swap_ms),
            runs(&scale.sync_ms),
            median(&scale.sync_ms),
        ));
        self.line("");
        targets.push(format!(
            "(5) {} : 1 Ingress CPU/request ≤ 1.10 ({ratio:.3}): {}",
            scale.hosts,
            verdict(ratio <= 1.10)
        ));
        targets.push(format!(
            "(5) table rebuild (swap_ms) < 200 ms ({:.1} ms): {}; whole sync (read_ms + elapsed_ms) {:.0} ms: {}",
            median(&scale.swap_ms),
            verdict(median(&scale.swap_ms) < 200.0),
            median(&scale.sync_ms),
            verdict(median(&scale.sync_ms) < 200.0)
        ));

        self.line("### Targets");
        self.line("");
        for target in targets {
            self.line(format!("- {target}"));
        }
        self.line("");
    }

    fn finish(&self, settings: &Settings, load: &str) -> Result<()> {
        let quick = if settings.quick { " --quick" } else { "" };
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let versions = versions();
        let commit = Command::new("git")
            .current_dir(&settings.workspace)
            .args(["describe", "--always", "--dirty"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let mut body = String::new();
        const BEGIN: &str = "<!-- l7:begin -->";
        const END: &str = "<!-- l7:end -->";
        let _ = writeln!(body, "{BEGIN}");
        let _ = writeln!(body, "## L7: `cargo xtask bench l7{quick}`");
        let _ = writeln!(body);
        let _ = writeln!(
            body,
            "Command: `cargo xtask bench l7{quick}` (as root), {date}, tree {commit}. {} Load average at the start: {}, at the end: {}. {versions}.",
            machine(),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(body);
        let _ = writeln!(
            body,
            "Setup: each proxy with one worker (`--workers 1`, nginx `worker_processes 1`, HAProxy \
             `nbthread 1`) pinned to CPU 0 (`taskset -c 0`); the load generator (wrk, h2load, the \
             harness's own clients) and the upstream (one nginx worker answering a {}-byte body \
             with `return 200`) on CPU 1. Same for all three: keep-alive to the upstream, access \
             logs off, the same ECDSA P-256 certificate, the same forwarding headers \
             (X-Forwarded-For/-Proto/-Host/-Port, X-Real-IP, X-Request-ID), client idle timeout \
             {IDLE_TIMEOUT_S} s, 127.0.0.1, RLIMIT_NOFILE {} (connection limits just below it; HAProxy, which reserves two descriptors per connection, warns that this is too low for its maxconn of idle connections + 1,000, but idle client connections hold one each). CPU time = utime + stime of the proxy's processes \
             (/proc/PID/stat) over the run. The host is shared and noisy: compare within one run.",
            UPSTREAM_BODY.len(),
            settings.nofile
        );
        let _ = writeln!(body);
        for line in &self.lines {
            let _ = writeln!(body, "{line}");
        }
        let _ = writeln!(body, "{END}");
        print!("\n{body}");

        let path = settings.workspace.join("docs/benchmarks.md");
        let existing = fs::read_to_string(&path).unwrap_or_default();
        let updated = match (existing.find(BEGIN), existing.find(END)) {
            (Some(begin), Some(end)) if end > begin => format!(
                "{}{}{}",
                &existing[..begin],
                body,
                &existing[end + END.len()..].trim_start_matches('\n')
            ),
            _ if existing.is_empty() => format!("# Benchmarks\n\n{body}"),
            _ => format!("{}\n\n{body}", existing.trim_end()),
        };
        fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))?;
        println!("\nwritten to {}", path.display());
        Ok(())
    }
}

fn versions() -> String {
    let first_line = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .map(|o| {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                text.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_default()
    };
    let haproxy = first_line("haproxy", &["-v"]);
    let haproxy = haproxy.split(" - ").next().unwrap_or(&haproxy).to_string();
    let wrk = first_line("wrk", &["-v"]);
    let wrk = wrk.split(" Copyright").next().unwrap_or(&wrk).to_string();
    format!(
        "{}, {haproxy}, {wrk}, {}",
        first_line("nginx", &["-v"]),
        first_line("h2load", &["--version"])
    )
}

fn machine() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    // Not available_parallelism: this process is pinned to one CPU.
    // SAFETY: plain FFI call.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!("Kernel {}, {cores} × {cpu}.", kernel.trim())
}
