//! The agent's life in `run`: set up the source (files or cluster), the sinks (XDP datapath,
//! proxy) and the admin listener (`runner/startup.rs`); wait for the first complete set of
//! objects and apply it before attaching XDP and listening; then apply each debounced burst of
//! changes (`runner/apply.rs` makes one pass); on stop, release the Lease and detach.
//! `main.rs` runs [`Runner::start`] and then [`Runner::run`]; the cluster-mode tests run the
//! same two in-process.

mod apply;
mod control;
mod startup;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::mpsc::{self, Receiver, UnboundedReceiver};

use self::control::Control;
use crate::{
    admin::{
        self,
        metrics::{self, L4Request, Metrics},
        Readiness,
    },
    cli::{ObjectNameError, RunArgs},
    datapath::{Datapath, DatapathError, KernelMaps},
    health::ProxyHealth,
    inspect::{self, ViewKind, ViewRequest},
    node::NodeError,
    proxy::{server::ProxyError, BoundListeners},
    sinks::{L4Sink, Sinks},
    source::{
        files::{FilesError, ManifestDir},
        kube::{KubeError, KubeSource},
    },
};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A `namespace/name` flag is malformed.
    #[error(transparent)]
    ObjectName(#[from] ObjectNameError),
    /// The manifest directory cannot be watched.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// No connection to the cluster.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// The node's addresses could not be read.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The XDP datapath could not be loaded or attached.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    /// The proxy could not start.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// The admin listener could not be bound.
    #[error("admin listener on {addr}: {source}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The metrics listener could not be bound.
    #[error("metrics listener on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Where the objects come from.
enum Source {
    /// A manifest directory and its watcher (held only to keep it alive). Shared with the
    /// blocking thread that reads it.
    Files(
        Arc<std::sync::Mutex<ManifestDir>>,
        #[allow(dead_code)] notify::RecommendedWatcher,
    ),
    /// The cluster, and what the agent writes back to it.
    Kube(KubeSource, Box<Control>),
}

/// How often the runner looks for SNAT exhaustion to log.
const SNAT_REPORT_PERIOD: Duration = Duration::from_secs(10);

/// What `run` drives: the source, the sinks (with the loaded datapath) and the listeners.
pub struct Runner {
    args: RunArgs,
    source: Source,
    changes: UnboundedReceiver<()>,
    sinks: Sinks<KernelMaps>,
    datapath: Option<Datapath>,
    readiness: Readiness,
    admin: Option<SocketAddr>,
    listeners: BoundListeners,
    metrics: Arc<Metrics>,
    /// Scrapes asking for the datapath's counters (with a datapath only).
    scrapes: Option<Receiver<L4Request>>,
    /// `/debug/...` requests for the views `inspect` shows.
    views: Receiver<ViewRequest>,
    /// Changes queued and applied, for the health servers.
    proxy_health: Arc<ProxyHealth>,
    /// New connections dropped for want of a SNAT port, as last logged.
    snat_failures_logged: u64,
}

impl Runner {
    /// Sets everything up: the source starts reading, the admin listener answers (not ready),
    /// the XDP program is loaded (not attached), the proxy is built (not listening).
    pub async fn new(args: RunArgs) -> Result<Self, RunError> {
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let source = startup::open_source(&args, changes_tx).await?;
        let readiness = Readiness::default();
        let proxy_health = Arc::new(ProxyHealth::default());
        let startup::Built {
            sinks,
            datapath,
            proxy_collector,
            nginx_collector,
        } = startup::build_sinks(&args, &proxy_health)?;
        startup::serve_node_health(&args, sinks.l4().is_some(), &proxy_health);
        // A small queue: scrapes beyond it wait, they are not lost.
        let (scrape_tx, scrapes) = match sinks.l4() {
            Some(_) => {
                let (tx, rx) = mpsc::channel(8);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let metrics =
            Arc::new(Metrics::new(proxy_collector, scrape_tx).with_nginx(nginx_collector));
        // The admin listener comes after the sinks, which `/metrics` reads; it still answers
        // (not ready) long before the first apply pass.
        let (views_tx, views) = mpsc::channel(8);
        let endpoints = admin::Endpoints {
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            views: views_tx,
        };
        let admin = startup::serve_admin(&args, endpoints).await?;
        Ok(Self {
            args,
            source,
            changes,
            sinks,
            datapath,
            readiness,
            admin,
            listeners: BoundListeners::default(),
            metrics,
            scrapes,
            views,
            proxy_health,
            snat_failures_logged: 0,
        })
    }

    /// Waits for the first complete set of objects (from a cluster: the first list of every
    /// kind) and applies it, then attaches XDP, listens, and reports ready. The maps and the
    /// routing table are full before the first packet or request arrives.
    pub async fn start(&mut self) -> Result<(), RunError> {
        while !apply::apply_pass(&mut self.sinks, &mut self.source, self.metrics.agent()).await {
            if !self.next_change().await {
                break;
            }
        }
        self.proxy_health.updated();
        if let Some(datapath) = self.datapath.as_mut() {
            let args = &self.args.datapath;
            for interface in &args.interfaces {
                datapath.attach(interface, args.xdp_mode)?;
                tracing::info!(interface, mode = ?args.xdp_mode, "XDP attached");
            }
            for interface in datapath.unpin_other_links(&args.interfaces)? {
                tracing::info!(interface, "XDP detached (no longer an --interface)");
            }
        }
        if let Some(l7) = self.sinks.l7() {
            self.listeners = l7.proxy().listen().await?;
            if let Some(addr) = self.listeners.http {
                tracing::info!(%addr, "HTTP listening");
            }
            if let Some(addr) = self.listeners.https {
                tracing::info!(%addr, "HTTPS listening");
            }
        }
        self.readiness.set_ready();
        match &self.args.source.manifests {
            Some(dir) => tracing::info!(manifests = %dir.display(), "running"),
            None => tracing::info!("running"),
        }
        Ok(())
    }

    /// The agent's life after [`Runner::start`], as the binary runs it: applies each burst of
    /// changes as it comes, forwards the XDP program's log lines, and when `shutdown` completes
    /// (or the source ends) [stops](Runner::stop).
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut log_tick = tokio::time::interval(Duration::from_millis(500));
        let mut snat_tick = tokio::time::interval(SNAT_REPORT_PERIOD);
        loop {
            tokio::select! {
                // Only the wait races the other events; the burst is applied whole once it
                // started.
                more = self.next_change() => {
                    if !more {
                        break;
                    }
                    self.apply_burst().await;
                }
                _ = log_tick.tick() => self.flush_logs(),
                _ = snat_tick.tick() => self.report_snat_failures(),
                () = &mut shutdown => break,
            }
        }
        self.stop().await;
    }

    /// Waits for a change (cancel-safe: nothing is consumed unless it returns). False when the
    /// source ended. Meanwhile answers `/metrics` scrapes' requests for the datapath's counters:
    /// the maps are this task's, and between changes nothing writes them.
    pub async fn next_change(&mut self) -> bool {
        let Self {
            changes,
            scrapes,
            views,
            sinks,
            proxy_health,
            ..
        } = self;
        loop {
            let scrape = async {
                match scrapes.as_mut() {
                    Some(scrapes) => scrapes.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                change = changes.recv() => {
                    if change.is_some() {
                        proxy_health.queued_update();
                    }
                    return change.is_some();
                }
                Some(reply) = scrape => {
                    if let Some(l4) = sinks.l4() {
                        // The scrape may have given up waiting; nothing to do then.
                        let _ = reply.send(metrics::l4_snapshot(l4));
                    }
                }
                Some((kind, reply)) = views.recv() => {
                    let _ = reply.send(view(sinks, kind));
                }
            }
        }
    }

    /// After [`Runner::next_change`]: collects the rest of the burst, until `--debounce-ms` passes
    /// quietly but at most `--debounce-max-ms`, then applies everything.
    pub async fn apply_burst(&mut self) {
        let quiet = self.args.source.debounce_quiet();
        let deadline = tokio::time::Instant::now() + self.args.source.debounce_max();
        loop {
            let until = deadline.min(tokio::time::Instant::now() + quiet);
            match tokio::time::timeout_at(until, self.changes.recv()).await {
                Ok(Some(())) => continue,
                _ => break,
            }
        }
        if apply::apply_pass(&mut self.sinks, &mut self.source, self.metrics.agent()).await {
            self.proxy_health.updated();
        }
    }

    /// Logs new connections the datapath dropped for want of a SNAT port since the last look:
    /// the metric counts them per Service, the log says that it happens (one read of the
    /// per-CPU reason counters a period).
    fn report_snat_failures(&mut self) {
        let Some(l4) = self.sinks.l4() else {
            return;
        };
        let Ok(reasons) = l4.sync().maps().reason_counters() else {
            return;
        };
        let total = reasons
            .iter()
            .find(|(reason, _)| *reason == ingress_common::Reason::DropSnatFailed)
            .map_or(0, |(_, count)| *count);
        if total > self.snat_failures_logged {
            tracing::warn!(
                dropped = total - self.snat_failures_logged,
                total,
                "new connections to endpoints on other nodes dropped: no SNAT port free (per \
                 Service: xdp_ingress_service_snat_failures_total)"
            );
        }
        self.snat_failures_logged = total;
    }

    /// Forwards the XDP program's rare log lines (aya-log).
    pub fn flush_logs(&mut self) {
        if let Some(datapath) = self.datapath.as_mut() {
            datapath.flush_logs();
        }
    }

    /// The sinks.
    pub fn sinks(&self) -> &Sinks<KernelMaps> {
        &self.sinks
    }

    /// The proxy's bound addresses (after [`Runner::start`]).
    pub fn listeners(&self) -> BoundListeners {
        self.listeners
    }

    /// The admin listener's bound address.
    pub fn admin(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// What `/metrics` serves.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether `/readyz` answers ready.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// Drains the proxy (no new connections; requests in flight finish within
    /// `--drain-timeout`), releases the Lease (if held), prints the L4 counters and detaches XDP.
    pub async fn stop(mut self) {
        // The Lease first, so another agent takes over status writes while this one drains.
        if let Source::Kube(_, control) = self.source {
            control.stop().await;
        }
        if let Some(l7) = self.sinks.l7() {
            let open = l7.proxy().drain(self.args.proxy.drain_timeout).await;
            if open > 0 {
                tracing::warn!(open, "drain timeout: closing connections still open");
            } else {
                tracing::info!("proxy drained");
            }
        }

        if let (Some(l4), Some(datapath)) = (self.sinks.l4(), self.datapath.as_mut()) {
            print_counters(l4);
            if datapath.is_pinned() {
                // The datapath outlives us: the next agent adopts it; `cleanup` removes it.
                tracing::info!("XDP stays attached (pinned)");
            } else {
                datapath.detach_all();
                tracing::info!("detached");
            }
        }
    }
}

/// A view for `inspect`, built from the plans the sinks hold.
fn view(sinks: &Sinks<KernelMaps>, kind: ViewKind) -> serde_json::Value {
    match kind {
        ViewKind::Services => sinks.l4().map_or(serde_json::json!([]), |l4| {
            inspect::services_view(l4.plan())
        }),
        ViewKind::Routes => sinks.l7().map_or(
            serde_json::json!({"routes": [], "default_backend": null}),
            |l7| inspect::routes_view(l7.plan()),
        ),
        ViewKind::Certs => sinks.l7().map_or(serde_json::json!([]), |l7| {
            inspect::certs_view(l7.plan(), &l7.proxy().cert_expiry())
        }),
    }
}

/// Per-Service and per-backend counters, printed when the agent stops.
pub fn print_counters(l4: &L4Sink<KernelMaps>) {
    let maps = l4.sync().maps();
    println!(
        "{:<24} {:<28} {:>10} {:>12} {:>9} {:>10}",
        "FRONTEND", "SERVICE", "PACKETS", "BYTES", "FLOWS", "NO-BACKEND"
    );
    for (frontend, programmed) in l4.sync().frontends() {
        let Ok(c) = maps.service_counters(programmed.service_id) else {
            continue;
        };
        println!(
            "{:<24} {:<28} {:>10} {:>12} {:>9} {:>10}",
            frontend.to_string(),
            programmed.plan.service.to_string(),
            c.packets,
            c.bytes,
            c.new_flows,
            c.no_backend
        );
        for (backend, id) in &programmed.backends {
            if let Ok(b) = maps.backend_counters(*id) {
                println!(
                    "    -> {:<24} {:>10} packets {:>12} bytes",
                    backend.to_string(),
                    b.packets,
                    b.bytes
                );
            }
        }
    }
    if let Ok(reasons) = maps.reason_counters() {
        let line: Vec<String> = reasons
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{}={n}", r.name()))
            .collect();
        println!("verdicts: {}", line.join(" "));
    }
}
