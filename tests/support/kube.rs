//! The cluster-mode harness: a network namespace per scenario with a dummy interface for the
//! XDP datapath ([`Scene`]), the agent's [`Runner`] in-process against a [`FakeApiServer`] in
//! the same namespace, running the binary's own loop on a task ([`InProcessRunner`]), a wait that
//! polls observable effects until the expected state is reached ([`settle`]), and what the
//! kernel forwards, read back from the BPF maps of the program attached to the interface
//! ([`programmed`]).

pub mod objects;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use crate::{
    agent::{Agent, AgentProcess},
    netns::Netns,
    proxy::clients::{self, Pooled},
};
use anyhow::{bail, ensure, Context as _, Result};
use clap::Parser as _;
use fake_apiserver::FakeApiServer;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Service, networking::v1::Ingress};
use tokio::sync::oneshot;
use xdp_ingress::{
    cli::{Cli, Command, RunArgs},
    datapath::KernelMaps,
    proxy::BoundListeners,
    runner::Runner,
};

/// The dummy interface the datapath attaches to.
pub const DUMMY_IF: &str = "xi-k0";
/// A second one, for a second agent in the same namespace.
pub const DUMMY_IF2: &str = "xi-k1";
/// How long any expected state may take to show (a sync is milliseconds; reconnecting after an
/// outage waits out kube-runtime's backoff of about a second; this is for a loaded machine).
pub const SETTLE: Duration = Duration::from_secs(30);
/// How often [`settle`] looks again.
const POLL: Duration = Duration::from_millis(20);
/// The Lease the agents compete for.
pub const LEASE_NAME: &str = "xdp-ingress-leader";

/// A fresh network namespace with `lo` up and interfaces [`DUMMY_IF`] and [`DUMMY_IF2`] that
/// carry no traffic (dummy devices, or veth pairs where the kernel lacks the dummy driver);
/// removed on drop, also when the test fails.
pub struct Scene {
    netns: Netns,
}

impl Scene {
    /// `<prefix>-<pid>`, so parallel tests and leftover runs never clash.
    pub fn new(prefix: &str) -> Result<Self> {
        // SAFETY: plain FFI call without arguments.
        ensure!(
            unsafe { libc::geteuid() } == 0,
            "the cluster-mode tests need root (namespaces, XDP)"
        );
        init_logging();
        let netns = Netns::new(prefix)?;
        for interface in [DUMMY_IF, DUMMY_IF2] {
            // A dummy device where the kernel has the driver; else one end of a veth pair
            // (both ends inside the namespace): either carries a generic-mode XDP program.
            if netns
                .ip(&["link", "add", interface, "type", "dummy"])
                .is_err()
            {
                let peer = format!("{interface}p");
                netns.ip(&[
                    "link", "add", interface, "type", "veth", "peer", "name", &peer,
                ])?;
                netns.ip(&["link", "set", &peer, "up"])?;
            }
            netns.ip(&["link", "set", interface, "up"])?;
        }
        Ok(Self { netns })
    }

    /// The namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Runs `f` on a thread inside the namespace with a fake API server started there (its
    /// threads inherit the namespace, so its 127.0.0.1 is the namespace's loopback) and a
    /// two-worker tokio runtime built there. The server outlives `f`'s future and is dropped
    /// outside the runtime.
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: AsyncFnOnce(&FakeApiServer) -> Result<T> + Send + 'static,
    {
        self.netns.run_inside(move || {
            let server = FakeApiServer::start("127.0.0.1:0".parse()?)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let result = runtime.block_on(f(&server));
            runtime.shutdown_timeout(Duration::from_secs(5));
            drop(server);
            result
        })
    }
}

/// Logs of the agent on stderr when `RUST_LOG` is set (for a failing run).
fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A file removed on drop.
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    /// A unique path under the temporary directory (not created).
    pub fn new(tag: &str) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        Self {
            path: std::env::temp_dir().join(format!(
                "xdp-ingress-kube-{tag}-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            )),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A kubeconfig for `server`, removed on drop.
pub fn kubeconfig(server: &FakeApiServer) -> Result<TempFile> {
    let file = TempFile::new("kubeconfig");
    server.write_kubeconfig(file.path())?;
    Ok(file)
}

/// The agent binary in cluster mode against `server`, in `netns`, HTTP on a loopback port and
/// no HTTPS, with `extra` flags; the kubeconfig file lives as long as the returned handle.
pub fn start_binary(
    netns: &str,
    binary: &Path,
    server: &FakeApiServer,
    extra: &[&str],
) -> Result<(TempFile, AgentProcess)> {
    let config = kubeconfig(server)?;
    let mut args = vec!["--http-listen", "127.0.0.1:0", "--https-listen", "off"];
    args.extend_from_slice(extra);
    let agent = Agent::kubeconfig(config.path())
        .binary(binary)
        .in_netns(netns)
        .args(&args)
        .start()?;
    Ok((config, agent))
}

/// The IngressClasses (ours and another's), and a Service `web` in `namespace` whose one ready
/// endpoint is `web`: what the scenario's Ingresses route to.
pub fn apply_web(server: &FakeApiServer, namespace: &str, web: SocketAddr) -> Result<()> {
    for class in objects::classes() {
        server.apply(&class)?;
    }
    server.apply(&objects::service(namespace, "web", None, None))?;
    server.apply(&objects::backend_slice(namespace, "web-a", "web", web))?;
    Ok(())
}

/// `xdp-ingress run` arguments for an in-process runner against `kubeconfig`, attached to
/// `interface` in generic mode, every listener on 127.0.0.1:0, short debounce, small maps;
/// then `extra`.
pub fn run_args(kubeconfig: &Path, interface: &str, extra: &[&str]) -> Result<RunArgs> {
    let kubeconfig = kubeconfig.to_str().context("kubeconfig path")?;
    let mut argv = vec![
        "xdp-ingress",
        "run",
        "--kubeconfig",
        kubeconfig,
        "--interface",
        interface,
        "--xdp-mode",
        "generic",
        "--http-listen",
        "127.0.0.1:0",
        "--https-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--debounce-ms",
        "5",
        "--debounce-max-ms",
        "50",
        "--max-services",
        "1024",
        "--max-backends",
        "8192",
        "--maglev-slots",
        "1048576",
        "--max-flows",
        "4096",
        "--drain-timeout",
        "1s",
        // In-process runners of parallel tests must not share the host's pins.
        "--bpffs",
        "off",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv)?.command {
        Command::Run(args) => Ok(*args),
        other => bail!("expected `run`, parsed {other:?}"),
    }
}

/// A runner started as the binary starts one (its first complete list applied, XDP attached,
/// listening), then running the binary's own event loop, [`Runner::run`], on a task of its own:
/// nothing drives it but the changes it watches. Tests observe only what it does (the kernel's
/// maps, the proxy's answers, what it writes to the API server). Dropped without
/// [`InProcessRunner::stop`] (a failing test), the task is aborted.
pub struct InProcessRunner {
    interface: String,
    listeners: BoundListeners,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcessRunner {
    /// The interface its XDP program is attached to.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// Stops it as SIGTERM stops the binary (drain, release the Lease, detach) and waits.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            // The loop may have ended already (its source ended); the join says how.
            let _ = shutdown.send(());
        }
        let task = self.task.take().context("stopped twice")?;
        tokio::time::timeout(SETTLE, task)
            .await
            .context("the runner did not stop")?
            .context("the runner's task panicked")
    }
}

impl Drop for InProcessRunner {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A runner from `args`, started (ready when this returns) and running on a task.
pub async fn start_runner(args: RunArgs) -> Result<InProcessRunner> {
    let interface = args
        .datapath
        .interfaces
        .first()
        .cloned()
        .unwrap_or_default();
    let mut runner = Runner::new(args).await.context("Runner::new")?;
    tokio::time::timeout(SETTLE, runner.start())
        .await
        .context("the runner did not start (first list of every kind)")?
        .context("Runner::start")?;
    ensure!(runner.is_ready(), "started but not ready");
    let listeners = runner.listeners();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async {
        // A dropped sender (the handle is gone) stops the loop too.
        let _ = stopped.await;
    }));
    Ok(InProcessRunner {
        interface,
        listeners,
        shutdown: Some(shutdown),
        task: Some(task),
    })
}

/// The runner's plain-HTTP listener.
pub fn http_addr(agent: &InProcessRunner) -> Result<SocketAddr> {
    agent.listeners.http.context("no HTTP listener")
}

/// The runner's HTTPS listener.
pub fn https_addr(agent: &InProcessRunner) -> Result<SocketAddr> {
    agent.listeners.https.context("no HTTPS listener")
}

/// Polls `check` until it passes (returns `Ok`) or [`SETTLE`] passes (then `check`'s last error
/// is returned), every [`POLL`]. Nothing is injected: the runner applies what it watches on its
/// own, so a change it takes but leaves unapplied until the next one is never applied here.
pub async fn settle(what: &str, mut check: impl AsyncFnMut() -> Result<()>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let error = match check().await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(error.context(format!("still not true after {SETTLE:?}: {what}")));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// VIP:port (TCP) → backends, as the kernel has them.
pub type View = BTreeMap<SocketAddrV4, BTreeSet<SocketAddrV4>>;

/// VIP:port (TCP) → its backends, or why its entry does not forward.
pub type Entries = BTreeMap<SocketAddrV4, Result<BTreeSet<SocketAddrV4>, String>>;

/// The id of the XDP program attached to `interface` (in the calling thread's namespace), as
/// `ip -details -json link show` reports it.
fn attached_program(interface: &str) -> Result<u32> {
    let output = std::process::Command::new("ip")
        .args(["-details", "-json", "link", "show", "dev", interface])
        .output()
        .context("running ip")?;
    ensure!(
        output.status.success(),
        "ip link show dev {interface}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let links: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let xdp = &links[0]["xdp"];
    // One program: `xdp.prog`; several (one per mode): `xdp.attached[].prog`.
    std::iter::once(&xdp["prog"])
        .chain(
            xdp["attached"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| &a["prog"]),
        )
        .find_map(|prog| prog["id"].as_u64())
        .and_then(|id| u32::try_from(id).ok())
        .with_context(|| format!("no XDP program attached to {interface}: {links}"))
}

/// Every SERVICES entry of the XDP program attached to the agent's interface, read back from the
/// kernel (not from what the agent believes it programmed): the backends its Maglev slots point
/// at (BACKENDS entries, which must be active), or why not.
pub fn kernel_entries(agent: &InProcessRunner) -> Result<Entries> {
    let program = attached_program(agent.interface())?;
    let maps = KernelMaps::of_program(program)
        .with_context(|| format!("the maps of XDP program {program}"))?;
    let state = maps.read_state()?;
    let mut entries = Entries::new();
    for (key, _, table) in &state.services {
        let frontend = SocketAddrV4::new(
            Ipv4Addr::from(key.vip.to_ne_bytes()),
            u16::from_be(key.port),
        );
        let backends = if u32::from(key.proto) != u32::from(ingress_common::proto::TCP) {
            Err(format!(
                "protocol {}, the tests make only TCP Services",
                key.proto
            ))
        } else {
            table_backends(&maps, table)
        };
        entries.insert(frontend, backends);
    }
    Ok(entries)
}

/// The backends a Maglev table points at; an error for an id that is not an active backend.
fn table_backends(maps: &KernelMaps, table: &[u32]) -> Result<BTreeSet<SocketAddrV4>, String> {
    let ids: BTreeSet<u32> = table.iter().copied().collect();
    let mut backends = BTreeSet::new();
    for id in ids {
        let backend = maps
            .backend(id)
            .ok_or_else(|| format!("backend id {id} not in BACKENDS"))?;
        if backend.flags & ingress_common::BACKEND_ACTIVE == 0 {
            return Err(format!("backend id {id} in its table is not active"));
        }
        backends.insert(SocketAddrV4::new(
            Ipv4Addr::from(backend.addr.to_ne_bytes()),
            u16::from_be(backend.port),
        ));
    }
    Ok(backends)
}

/// What the kernel forwards ([`kernel_entries`]), every entry consistent; an entry the agent
/// left behind (a deleted Service) is in it as much as one it programmed.
pub fn programmed(agent: &InProcessRunner) -> Result<View> {
    kernel_entries(agent)?
        .into_iter()
        .map(|(frontend, backends)| {
            backends
                .map(|b| (frontend, b))
                .map_err(|why| anyhow::anyhow!("{frontend}: {why}"))
        })
        .collect()
}

/// `vip:80`.
pub fn frontend(vip: Ipv4Addr) -> SocketAddrV4 {
    SocketAddrV4::new(vip, objects::SERVICE_PORT)
}

/// A loopback backend's address as a [`View`] holds it.
pub fn v4(addr: SocketAddr) -> SocketAddrV4 {
    match addr {
        SocketAddr::V4(v4) => v4,
        SocketAddr::V6(_) => panic!("loopback backends are IPv4"),
    }
}

/// `GET http://<host>/` through the proxy: the backend that answered with 200, or an error.
pub async fn served_by(client: &Pooled, proxy: SocketAddr, host: &str) -> Result<String> {
    let reply = clients::get(client, proxy, host, "/").await?;
    ensure!(
        reply.status == http::StatusCode::OK,
        "{host}: {} {:?}",
        reply.status,
        reply.text()
    );
    reply
        .backend()
        .with_context(|| format!("{host}: no backend in {:?}", reply.text()))
}

/// The status code the proxy answers for `host`.
pub async fn status_of(client: &Pooled, proxy: SocketAddr, host: &str) -> Result<u16> {
    Ok(clients::get(client, proxy, host, "/")
        .await?
        .status
        .as_u16())
}

/// Asks `host` until every one of `expected` has answered (at most 60 requests); fails on an
/// answer from anyone else.
pub async fn served_by_all(
    client: &Pooled,
    proxy: SocketAddr,
    host: &str,
    expected: &BTreeSet<String>,
) -> Result<()> {
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        let name = served_by(client, proxy, host).await?;
        ensure!(
            expected.contains(&name),
            "{host} answered by {name}, expected only {expected:?}"
        );
        seen.insert(name);
        if &seen == expected {
            return Ok(());
        }
    }
    bail!("{host}: 60 requests reached only {seen:?} of {expected:?}")
}

/// `status.loadBalancer.ingress[].ip` of a `K` (Service, Ingress: the same shape) as the server
/// has it (`None`: no such object).
fn status_ips<K: k8s_openapi::Resource>(
    server: &FakeApiServer,
    namespace: &str,
    name: &str,
) -> Option<Vec<String>> {
    let object = server.get(K::API_VERSION, K::KIND, namespace, name)?;
    Some(
        object["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str().map(String::from))
            .collect(),
    )
}

/// `status.loadBalancer.ingress[].ip` of a Service (`None`: no such Service).
pub fn service_ips(
    server: &FakeApiServer,
    namespace: &str,
    name: &str,
) -> Result<Option<Vec<String>>> {
    Ok(status_ips::<Service>(server, namespace, name))
}

/// `status.loadBalancer.ingress[].ip` of an Ingress (`None`: no such Ingress).
pub fn ingress_ips(
    server: &FakeApiServer,
    namespace: &str,
    name: &str,
) -> Result<Option<Vec<String>>> {
    Ok(status_ips::<Ingress>(server, namespace, name))
}

/// The Lease's `holderIdentity` (`None`: no Lease or not held).
pub fn lease_holder(server: &FakeApiServer, namespace: &str) -> Result<Option<String>> {
    Ok(server
        .get_as::<Lease>(namespace, LEASE_NAME)?
        .and_then(|lease| lease.spec)
        .and_then(|spec| spec.holder_identity)
        .filter(|holder| !holder.is_empty()))
}

/// A query string with `%XX` escapes decoded (`+` kept).
pub fn decode_query(query: &str) -> String {
    let bytes = query.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What differs between two views, briefly (a whole 100-entry view is unreadable).
pub fn view_diff(got: &View, want: &View) -> String {
    let mut lines = Vec::new();
    for (frontend, backends) in want {
        match got.get(frontend) {
            None => lines.push(format!("missing {frontend}")),
            Some(b) if b != backends => lines.push(format!("{frontend}: {b:?}, want {backends:?}")),
            Some(_) => {}
        }
    }
    for frontend in got.keys().filter(|f| !want.contains_key(f)) {
        lines.push(format!("unexpected {frontend}"));
    }
    format!(
        "{} frontends, want {}: {}",
        got.len(),
        want.len(),
        lines.join("; ")
    )
}

/// The kernel's view equals `want`.
pub fn check_view(runner: &InProcessRunner, want: &View) -> Result<()> {
    let got = programmed(runner)?;
    ensure!(&got == want, "BPF maps: {}", view_diff(&got, want));
    Ok(())
}
