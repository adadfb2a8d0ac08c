//! The cluster-mode harness: a network namespace per scenario with a dummy interface for the
//! XDP datapath ([`Scene`]), the agent's [`Runner`] in-process against a [`FakeApiServer`] in
//! the same namespace, a driver that applies the runner's debounced changes until the expected
//! state is reached ([`settle`]), and the programmed state read back from the kernel's BPF maps
//! ([`programmed`]).

pub mod objects;
pub mod process;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Parser as _;
use fake_apiserver::FakeApiServer;
use ingress_common::ServiceKey;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Service, networking::v1::Ingress};
use serde_json::json;
use xdp_ingress::{
    cli::{Cli, Command, RunArgs},
    runner::Runner,
};
use xdp_ingress_tests::netns::Netns;

use crate::clients::{self, Pooled};

/// The dummy interface the datapath attaches to.
pub const DUMMY_IF: &str = "xi-k0";
/// A second one, for a second agent in the same namespace.
pub const DUMMY_IF2: &str = "xi-k1";
/// How long any expected state may take to show (a sync is milliseconds; reconnecting after an
/// outage waits out kube-runtime's backoff of about a second; this is for a loaded machine).
pub const SETTLE: Duration = Duration::from_secs(30);
/// A runner with no change for this long gets a nudge (see [`settle`]).
const IDLE: Duration = Duration::from_secs(1);
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

/// A runner from `args`, started: its first complete list applied, XDP attached, listening.
pub async fn start_runner(args: RunArgs) -> Result<Runner> {
    let mut runner = Runner::new(args).await.context("Runner::new")?;
    tokio::time::timeout(SETTLE, runner.start())
        .await
        .context("the runner did not start (first list of every kind)")?
        .context("Runner::start")?;
    ensure!(runner.is_ready(), "started but not ready");
    Ok(runner)
}

/// The runner's plain-HTTP listener.
pub fn http_addr(runner: &Runner) -> Result<SocketAddr> {
    runner.listeners().http.context("no HTTP listener")
}

/// The runner's HTTPS listener.
pub fn https_addr(runner: &Runner) -> Result<SocketAddr> {
    runner.listeners().https.context("no HTTPS listener")
}

/// Applies the runner's changes until `check` passes (returns `Ok`) or [`SETTLE`] passes
/// (then `check`'s last error is returned). `on_sync` sees the runner after every sync.
///
/// `check` runs before every wait, so it is level-triggered. A runner with no change for
/// [`IDLE`] gets a nudge (an annotation on an unrelated Service, hence one more sync): waiting
/// with a timeout may cut a debounce short after its change was taken, and the state the test
/// waits for may depend on something the runner is not told about (a status write, the Lease).
pub async fn settle_watching(
    runner: &mut Runner,
    server: &FakeApiServer,
    what: &str,
    mut check: impl AsyncFnMut(&Runner) -> Result<()>,
    mut on_sync: impl FnMut(&Runner),
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let error = match check(runner).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(error.context(format!("still not true after {SETTLE:?}: {what}")));
        }
        match tokio::time::timeout((deadline - now).min(IDLE), runner.apply_next_change()).await {
            Ok(true) => on_sync(runner),
            Ok(false) => bail!("the runner's source ended while waiting for: {what}"),
            Err(_) => nudge(server)?,
        }
    }
}

/// [`settle_watching`] without an observer.
pub async fn settle(
    runner: &mut Runner,
    server: &FakeApiServer,
    what: &str,
    check: impl AsyncFnMut(&Runner) -> Result<()>,
) -> Result<()> {
    settle_watching(runner, server, what, check, |_| {}).await
}

/// One more change for every watcher of Services: an annotation on a Service nobody uses.
pub fn nudge(server: &FakeApiServer) -> Result<()> {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let mut service = objects::service("kube-system", "nudge", None, None);
    service["metadata"]["annotations"] = json!({
        "test/nudge": COUNT.fetch_add(1, Ordering::Relaxed).to_string(),
    });
    server.apply(&service)?;
    Ok(())
}

/// VIP:port (TCP) → backends, as the kernel has them.
pub type View = BTreeMap<SocketAddrV4, BTreeSet<SocketAddrV4>>;

/// What the BPF maps forward, read back from the kernel: for every frontend the sync says it
/// programmed, the SERVICES entry (which must exist and carry the same service id) and the
/// backends its Maglev slots point at (BACKENDS entries, which must be active). The backends
/// must equal the ones the sync says it programmed.
pub fn programmed(runner: &Runner) -> Result<View> {
    let l4 = runner.agent().l4().context("no L4 datapath")?;
    let sync = l4.sync();
    let maps = sync.maps();
    let mut view = View::new();
    for (frontend, programmed) in sync.frontends() {
        let key = ServiceKey {
            vip: u32::from_ne_bytes(frontend.vip.octets()),
            port: frontend.port.to_be(),
            proto: frontend.protocol.number(),
            pad: 0,
        };
        let entry = maps
            .service(&key)
            .with_context(|| format!("{frontend} is not in the kernel's SERVICES map"))?;
        ensure!(
            entry.service_id == programmed.service_id,
            "{frontend}: kernel service id {} != programmed {}",
            entry.service_id,
            programmed.service_id
        );
        let ids: BTreeSet<u32> = maps
            .slots(entry.table_offset, entry.table_size)
            .into_iter()
            .collect();
        let mut backends = BTreeSet::new();
        for id in &ids {
            let backend = maps
                .backend(*id)
                .with_context(|| format!("{frontend}: backend id {id} not in BACKENDS"))?;
            ensure!(
                backend.flags & ingress_common::BACKEND_ACTIVE != 0,
                "{frontend}: backend id {id} in its table is not active"
            );
            backends.insert(SocketAddrV4::new(
                Ipv4Addr::from(backend.addr.to_ne_bytes()),
                u16::from_be(backend.port),
            ));
        }
        let planned: BTreeSet<SocketAddrV4> = programmed
            .backends
            .keys()
            .map(|b| SocketAddrV4::new(b.addr, b.port))
            .collect();
        ensure!(
            planned == backends,
            "{frontend}: the kernel's table has {backends:?}, the sync programmed {planned:?}"
        );
        view.insert(SocketAddrV4::new(frontend.vip, frontend.port), backends);
    }
    Ok(view)
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
