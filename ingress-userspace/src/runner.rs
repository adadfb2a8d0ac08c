//! The agent's life in `run`: set up the source (files or cluster), the sinks (XDP datapath,
//! proxy) and the admin listener; wait for the first complete set of objects and apply it
//! before attaching XDP and listening; then apply each debounced burst of changes; on stop,
//! release the Lease and detach. `main.rs` runs [`Runner::start`] and then [`Runner::run`]; the
//! cluster-mode tests run the same two in-process.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::{
    mpsc::{self, Receiver, UnboundedReceiver},
    watch,
};

use crate::{
    admin::{
        self,
        metrics::{self, AgentMetrics, L4Request, Metrics, Programmed},
        Readiness,
    },
    agent::{Agent, L4Sink, L7Sink, ReloadOutcome},
    cli::RunArgs,
    control::{
        election::{self, ElectionSettings},
        events::{self, EventLimiter},
        status::{self, PublishSettings, StatusPatch},
        vips::{self, AssignSettings, Assignments},
    },
    datapath::{
        sync::{DatapathError, DatapathSync},
        Datapath, KernelMaps, MapSizes, PinDir, PinnedState,
    },
    inspect::{self, ViewKind, ViewRequest},
    model::{ClusterObjects, ObjectName, Origin, Problem},
    proxy::{
        server::{BoundListeners, ProxyError},
        Proxy, ProxySettings,
    },
    source::{
        files::{FilesError, ManifestDir, Snapshot},
        kube::{self, KubeError, KubeSource},
    },
    translate::l7::{L7Options, L7Plan},
};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A `namespace/name` flag is malformed.
    #[error("{flag} {value:?}: expected namespace/name")]
    ObjectName {
        /// The flag.
        flag: &'static str,
        /// What was given.
        value: String,
    },
    /// The manifest directory cannot be watched.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// No connection to the cluster.
    #[error(transparent)]
    Kube(#[from] KubeError),
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

/// `namespace/name` from a flag.
pub fn parse_object_name(text: &str, flag: &'static str) -> Result<ObjectName, RunError> {
    match text.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => Ok(ObjectName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }),
        _ => Err(RunError::ObjectName {
            flag,
            value: text.to_string(),
        }),
    }
}

/// The L7 translation options from the flags.
pub fn l7_options(
    controller_name: &str,
    default_tls_secret: Option<&str>,
) -> Result<L7Options, RunError> {
    let default_tls_secret = default_tls_secret
        .map(|text| parse_object_name(text, "--default-tls-secret"))
        .transpose()?;
    Ok(L7Options {
        controller_name: controller_name.to_string(),
        default_tls_secret,
    })
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

/// Leader election, Ingress status and Events (cluster mode).
struct Control {
    publish: PublishSettings,
    patches: watch::Sender<Vec<StatusPatch>>,
    events: mpsc::Sender<(ObjectReference, String)>,
    limiter: EventLimiter,
    vips: Option<(AssignSettings, watch::Sender<Assignments>)>,
    leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    election: tokio::task::JoinHandle<()>,
}

impl Control {
    fn start(client: ::kube::Client, args: &RunArgs) -> Result<Self, RunError> {
        let publish = PublishSettings {
            addresses: args.publish_addresses.clone(),
            service: args
                .publish_service
                .as_deref()
                .map(|text| parse_object_name(text, "--publish-service"))
                .transpose()?,
        };
        let namespace = args
            .election_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or_else(|| "default".to_string());
        let identity = election::default_identity();
        let (leader_tx, leader) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let settings = ElectionSettings::new(namespace, identity.clone());
        let election = tokio::spawn(election::run(client.clone(), settings, leader_tx, stop_rx));
        let (patches, patches_rx) = watch::channel(Vec::new());
        tokio::spawn(status::run_writer(
            client.clone(),
            patches_rx,
            leader.clone(),
        ));
        let vips = args.assign_vips.map(|pool| {
            let (assigned, assigned_rx) = watch::channel(Vec::new());
            tokio::spawn(vips::run_writer(
                client.clone(),
                assigned_rx,
                leader.clone(),
            ));
            let settings = AssignSettings {
                pool,
                class: args.load_balancer_class.clone(),
                classless_too: args.assign_vips_to_all,
            };
            (settings, assigned)
        });
        let (events, events_rx) = mpsc::channel(1024);
        let leader_rx = leader.clone();
        tokio::spawn(events::run_publisher(client, identity, events_rx, leader));
        Ok(Self {
            publish,
            patches,
            events,
            limiter: EventLimiter::default(),
            vips,
            leader: leader_rx,
            stop,
            election,
        })
    }

    /// After a sync: the status writes and Events it calls for (written by the leader).
    fn after_sync(&mut self, objects: &ClusterObjects, ours: &[ObjectName], problems: &[Problem]) {
        if let Some(addresses) = status::publish_addresses(&self.publish, objects) {
            let ours: BTreeSet<ObjectName> = ours.iter().cloned().collect();
            self.patches
                .send_replace(status::desired_patches(objects, &ours, &addresses));
        }
        if let Some((settings, assigned)) = &self.vips {
            let (wanted, exhausted) = vips::assignments(objects, settings);
            for service in &exhausted {
                tracing::warn!(%service, "no free address left in --assign-vips");
            }
            assigned.send_replace(wanted);
        }
        // Only the leader publishes; a follower must not mark problems as published.
        if !*self.leader.borrow() {
            return;
        }
        for event in self.limiter.due(problems, std::time::Instant::now()) {
            // A full queue means the API is slow; the problem is logged anyway.
            let _ = self.events.try_send(event);
        }
    }

    /// Stops the election, releasing the Lease if this agent holds it.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.election).await;
    }
}

/// A running agent.
pub struct Runner {
    args: RunArgs,
    source: Source,
    changes: UnboundedReceiver<()>,
    agent: Agent<KernelMaps>,
    datapath: Option<Datapath>,
    readiness: Readiness,
    admin: Option<SocketAddr>,
    listeners: BoundListeners,
    metrics: Arc<Metrics>,
    /// Scrapes asking for the datapath's counters (with a datapath only).
    scrapes: Option<Receiver<L4Request>>,
    /// `/debug/...` requests for the views `inspect` shows.
    views: Receiver<ViewRequest>,
}

impl Runner {
    /// Sets everything up: the source starts reading, the admin listener answers (not ready),
    /// the XDP program is loaded (not attached), the proxy is built (not listening).
    pub async fn new(args: RunArgs) -> Result<Self, RunError> {
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let source = match &args.manifests {
            Some(dir) => {
                let files = ManifestDir::new(dir).with_max_file_bytes(args.max_manifest_bytes);
                let watcher = files.watch(changes_tx)?;
                Source::Files(Arc::new(std::sync::Mutex::new(files)), watcher)
            }
            None => {
                let client = kube::client(args.kubeconfig.as_deref()).await?;
                let source = KubeSource::start(client.clone(), &args.watch_namespaces, changes_tx);
                let control = Control::start(client, &args)?;
                Source::Kube(source, Box::new(control))
            }
        };
        let readiness = Readiness::default();
        let mut datapath = None;
        let l4 = if args.interfaces.is_empty() {
            None
        } else {
            let sizes = MapSizes {
                services: args.max_services,
                backends: args.max_backends,
                maglev_slots: args.maglev_slots,
                flows: args.max_flows,
            };
            let pins = args.bpffs.0.as_ref().map(PinDir::new);
            let (loaded, sync) = load_datapath(&sizes, pins.as_ref())?;
            datapath = Some(loaded);
            Some(L4Sink::new(sync))
        };
        let settings = ProxySettings {
            http_listen: args.http_listen.0,
            https_listen: args.https_listen.0,
            upstream_connect_timeout: args.upstream_connect_timeout,
            upstream_response_timeout: args.upstream_response_timeout,
            upstream_idle_timeout: args.upstream_idle_timeout,
            client_header_timeout: args.client_header_timeout,
            client_idle_timeout: args.client_idle_timeout,
            client_send_timeout: args.client_send_timeout,
            client_body_timeout: args.client_body_timeout,
            max_connections: args.max_connections.unwrap_or_else(|| {
                let listeners = usize::from(args.http_listen.0.is_some())
                    + usize::from(args.https_listen.0.is_some());
                // Read after main raised the soft limit to the hard one.
                crate::proxy::lifetime::nofile_limit().map_or(usize::MAX, |nofile| {
                    crate::proxy::lifetime::default_max_connections(nofile, listeners)
                })
            }),
            max_header_bytes: args.max_header_bytes,
            max_body_bytes: args.max_body_bytes,
            access_log: args.access_log,
            allow_encoded_slashes: args.allow_encoded_slashes,
            allow_underscores_in_headers: args.allow_underscores_in_headers,
            upgrades: args
                .allow_upgrades
                .iter()
                .map(|protocol| protocol.to_ascii_lowercase())
                .collect(),
        };
        tracing::info!(
            max_connections = settings.max_connections,
            "proxy: client connections per listener"
        );
        let mut proxy_collector = None;
        let l7 = if settings.http_listen.is_none() && settings.https_listen.is_none() {
            None
        } else {
            let options = l7_options(&args.controller_name, args.default_tls_secret.as_deref())?;
            let proxy = Proxy::new(settings)?;
            proxy_collector = Some(Box::new(proxy.collector()) as _);
            Some(L7Sink::new(proxy, options))
        };
        // A small queue: scrapes beyond it wait, they are not lost.
        let (scrape_tx, scrapes) = match &l4 {
            Some(_) => {
                let (tx, rx) = mpsc::channel(8);
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let metrics = Arc::new(Metrics::new(proxy_collector, scrape_tx));
        // The admin listener comes after the sinks, which `/metrics` reads; it still answers
        // (not ready) long before the first sync.
        let (views_tx, views) = mpsc::channel(8);
        let endpoints = admin::Endpoints {
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            views: views_tx,
        };
        // Admin clients get the proxy's client timeouts: one pair of knobs for every listener.
        let timeouts = admin::Timeouts {
            header: args.client_header_timeout,
            idle: args.client_idle_timeout,
        };
        let admin = match args.admin_listen.0 {
            Some(addr) => {
                let role = admin::Role::Admin {
                    metrics: args.metrics_listen.0.is_none(),
                };
                let bound = admin::serve(addr, role, timeouts, endpoints.clone())
                    .await
                    .map_err(|source| RunError::Admin { addr, source })?;
                tracing::info!(addr = %bound, "admin listening");
                Some(bound)
            }
            None => None,
        };
        if let Some(addr) = args.metrics_listen.0 {
            let bound = admin::serve(addr, admin::Role::Metrics, timeouts, endpoints)
                .await
                .map_err(|source| RunError::Metrics { addr, source })?;
            tracing::info!(addr = %bound, "metrics listening");
        }
        Ok(Self {
            args,
            source,
            changes,
            agent: Agent::new(l4, l7),
            datapath,
            readiness,
            admin,
            listeners: BoundListeners::default(),
            metrics,
            scrapes,
            views,
        })
    }

    /// Waits for the first complete set of objects (from a cluster: the first list of every
    /// kind) and applies it, then attaches XDP, listens, and reports ready. The maps and the
    /// routing table are full before the first packet or request arrives.
    pub async fn start(&mut self) -> Result<(), RunError> {
        while !sync(&mut self.agent, &mut self.source, self.metrics.agent()).await {
            if !self.next_change().await {
                break;
            }
        }
        if let Some(datapath) = self.datapath.as_mut() {
            for interface in &self.args.interfaces {
                datapath.attach(interface, self.args.xdp_mode)?;
                tracing::info!(interface, mode = ?self.args.xdp_mode, "XDP attached");
            }
            for interface in datapath.unpin_other_links(&self.args.interfaces)? {
                tracing::info!(interface, "XDP detached (no longer an --interface)");
            }
        }
        if let Some(l7) = self.agent.l7() {
            self.listeners = l7.proxy().listen().await?;
            if let Some(addr) = self.listeners.http {
                tracing::info!(%addr, "HTTP listening");
            }
            if let Some(addr) = self.listeners.https {
                tracing::info!(%addr, "HTTPS listening");
            }
        }
        self.readiness.set_ready();
        match &self.args.manifests {
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
            agent,
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
                change = changes.recv() => return change.is_some(),
                Some(reply) = scrape => {
                    if let Some(l4) = agent.l4() {
                        // The scrape may have given up waiting; nothing to do then.
                        let _ = reply.send(metrics::l4_snapshot(l4));
                    }
                }
                Some((kind, reply)) = views.recv() => {
                    let _ = reply.send(view(agent, kind));
                }
            }
        }
    }

    /// After [`Runner::next_change`]: collects the rest of the burst, until `--debounce-ms` passes
    /// quietly but at most `--debounce-max-ms`, then applies everything.
    pub async fn apply_burst(&mut self) {
        let quiet = Duration::from_millis(self.args.debounce_ms);
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.args.debounce_max_ms);
        loop {
            let until = deadline.min(tokio::time::Instant::now() + quiet);
            match tokio::time::timeout_at(until, self.changes.recv()).await {
                Ok(Some(())) => continue,
                _ => break,
            }
        }
        sync(&mut self.agent, &mut self.source, self.metrics.agent()).await;
    }

    /// Forwards the XDP program's rare log lines (aya-log).
    pub fn flush_logs(&mut self) {
        if let Some(datapath) = self.datapath.as_mut() {
            datapath.flush_logs();
        }
    }

    /// The sinks.
    pub fn agent(&self) -> &Agent<KernelMaps> {
        &self.agent
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
        if let Some(l7) = self.agent.l7() {
            let open = l7.proxy().drain(self.args.drain_timeout).await;
            if open > 0 {
                tracing::warn!(open, "drain timeout: closing connections still open");
            } else {
                tracing::info!("proxy drained");
            }
        }

        if let (Some(l4), Some(datapath)) = (self.agent.l4(), self.datapath.as_mut()) {
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

/// Loads the datapath; with pins, adopts the pinned state when it matches this build and is
/// consistent, else starts from empty maps (logged: established flows then re-balance).
fn load_datapath(
    sizes: &MapSizes,
    pins: Option<&PinDir>,
) -> Result<(Datapath, DatapathSync<KernelMaps>), RunError> {
    let (mut loaded, pinned) = Datapath::load_pinned(sizes, pins)?;
    let maps = loaded.take_maps()?;
    if pinned == PinnedState::Fresh {
        if let Some(pins) = pins {
            tracing::info!(dir = %pins.root().display(), "maps pinned (new)");
        }
        return Ok((loaded, DatapathSync::new(maps, sizes.capacity())));
    }
    let started = Instant::now();
    let state = maps.read_state()?;
    match DatapathSync::adopt(maps, sizes.capacity(), &state, started) {
        Ok((sync, report)) => {
            tracing::info!(
                frontends = report.frontends,
                backends = report.backends,
                orphans = report.orphans,
                vips_fixed = report.vips_fixed,
                ms = started.elapsed().as_millis() as u64,
                "adopted the pinned datapath"
            );
            Ok((loaded, sync))
        }
        Err(error) => {
            tracing::error!(%error, "cannot adopt the pinned maps; starting from empty ones");
            drop(loaded);
            if let Some(pins) = pins {
                pins.forget_maps()?;
            }
            let (mut loaded, _) = Datapath::load_pinned(sizes, pins)?;
            let maps = loaded.take_maps()?;
            Ok((loaded, DatapathSync::new(maps, sizes.capacity())))
        }
    }
}

/// Applies the source's objects to the agent; false when there is nothing complete to apply yet
/// (a cluster source before its first full list, an unreadable directory).
async fn sync(agent: &mut Agent<KernelMaps>, source: &mut Source, metrics: &AgentMetrics) -> bool {
    let reading = Instant::now();
    let mut read = None;
    let outcome = match source {
        Source::Files(files, _) => match load_off_the_workers(files.clone()).await {
            Ok(snapshot) => {
                read = Some(reading.elapsed());
                agent.apply(&snapshot.objects, snapshot.problems)
            }
            Err(error) => {
                tracing::error!("{error}; keeping the programmed state");
                metrics.record_failed_reload();
                return false;
            }
        },
        Source::Kube(kube, control) => {
            if !kube.is_synced() {
                return false;
            }
            let outcome = kube.with_changes(|objects, dirty| {
                let outcome = agent.apply_changes(objects, &dirty);
                let ours = agent.l7().map_or(&[][..], |l7| &l7.plan().ingresses[..]);
                // A Secret whose PEM does not parse is found by the proxy, not the translator;
                // it deserves an Event on the Secret as much as a translation problem does.
                // (A Secret that is missing or lacks a key is the translator's problem, already
                // reported on the Ingress that names it.)
                let unusable: BTreeSet<&ObjectName> = agent
                    .l7()
                    .into_iter()
                    .flat_map(|l7| l7.plan().tls.iter().chain(&l7.plan().default_tls))
                    .filter(|tls| tls.pem.is_err())
                    .map(|tls| &tls.secret)
                    .collect();
                let mut problems = outcome.problems.clone();
                let unparsable = outcome
                    .l7
                    .iter()
                    .flat_map(|r| &r.certificate_problems)
                    .filter(|p| !unusable.contains(&p.secret));
                for broken in unparsable {
                    problems.push(Problem {
                        origin: Origin::Api.to_string(),
                        object: format!("Secret {}", broken.secret),
                        field: "data".to_string(),
                        message: broken.message.clone(),
                    });
                }
                control.after_sync(objects, ours, &problems);
                outcome
            });
            if let Some(l7) = agent.l7() {
                kube.set_referenced_secrets(referenced_secrets(l7.plan()));
            }
            outcome
        }
    };
    report(agent, &outcome, read);
    metrics.record_reload(&outcome, programmed(agent));
    true
}

/// Reads the manifest directory on tokio's blocking pool: file I/O and YAML parsing take as
/// long as the files make them take, and with `--workers 1` the runner shares its thread with
/// the proxy, which must keep serving meanwhile. (Reads cannot block forever: only regular files
/// are opened, without waiting, and read up to `--max-manifest-bytes`.)
async fn load_off_the_workers(
    files: Arc<std::sync::Mutex<ManifestDir>>,
) -> Result<Snapshot, LoadError> {
    let path = files.lock().map_or_else(
        |e| e.into_inner().path().to_path_buf(),
        |f| f.path().to_path_buf(),
    );
    tokio::task::spawn_blocking(move || {
        // A panic in an earlier load poisoned the lock; what it held is still a directory to read.
        let mut files = files.lock().unwrap_or_else(|e| e.into_inner());
        files.load().map_err(LoadError::Files)
    })
    .await
    .unwrap_or_else(|error| {
        Err(LoadError::Panicked {
            path,
            message: error.to_string(),
        })
    })
}

/// Why the manifest directory gave nothing this time.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    /// Not readable as a whole.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// The reading thread panicked (a bug; the agent keeps its state and reads again next time).
    #[error("reading {path} failed: {message}")]
    Panicked {
        /// The directory.
        path: std::path::PathBuf,
        /// The join error.
        message: String,
    },
}

/// A view for `inspect`, built from the plans the agent holds.
fn view(agent: &Agent<KernelMaps>, kind: ViewKind) -> serde_json::Value {
    match kind {
        ViewKind::Services => agent.l4().map_or(serde_json::json!([]), |l4| {
            inspect::services_view(l4.plan())
        }),
        ViewKind::Routes => agent.l7().map_or(
            serde_json::json!({"routes": [], "default_backend": null}),
            |l7| inspect::routes_view(l7.plan()),
        ),
        ViewKind::Certs => agent.l7().map_or(serde_json::json!([]), |l7| {
            inspect::certs_view(l7.plan(), &l7.proxy().cert_expiry())
        }),
    }
}

/// What the sinks hold now, for the gauges.
fn programmed(agent: &Agent<KernelMaps>) -> Programmed {
    Programmed {
        service_ports: agent.l4().map(|l4| l4.plan().frontends.len()),
        backends: agent.l4().map(|l4| l4.plan().backend_count()),
        ingresses: agent.l7().map(|l7| l7.plan().ingresses.len()),
        l7_backends: agent.l7().map(|l7| l7.plan().backends.len()),
    }
}

/// The Secrets an L7 plan uses.
fn referenced_secrets(plan: &L7Plan) -> BTreeSet<ObjectName> {
    plan.tls
        .iter()
        .chain(&plan.default_tls)
        .map(|tls| tls.secret.clone())
        .collect()
}

/// Logs what a sync did; `read`: how long reading the files took (files source only).
fn report(agent: &Agent<KernelMaps>, outcome: &ReloadOutcome, read: Option<Duration>) {
    for problem in &outcome.problems {
        tracing::warn!("{problem}");
    }
    if let (Some(r), Some(l4)) = (&outcome.l4, agent.l4()) {
        for error in &r.errors {
            tracing::error!("{error}");
        }
        tracing::info!(
            added = r.added,
            changed = r.changed,
            removed = r.removed,
            unchanged = r.unchanged,
            "L4: {} Service port(s), {} backend(s)",
            l4.plan().frontends.len(),
            l4.plan().backend_count()
        );
    }
    if let (Some(r), Some(l7)) = (&outcome.l7, agent.l7()) {
        for problem in &r.certificate_problems {
            tracing::warn!(secret = %problem.secret, "certificate: {}", problem.message);
        }
        tracing::info!(
            backends = r.backends,
            rebuild_ms = outcome.l7_rebuild.as_secs_f64() * 1e3,
            swap_ms = r.elapsed.as_secs_f64() * 1e3,
            "L7: {} Ingress(es), {} certificate entr(ies)",
            l7.plan().ingresses.len(),
            l7.plan().tls.len()
        );
    }
    match read {
        Some(read) => tracing::info!(
            problems = outcome.problems.len(),
            read_ms = read.as_secs_f64() * 1e3,
            elapsed_ms = outcome.elapsed.as_secs_f64() * 1e3,
            "synced"
        ),
        None => tracing::info!(
            problems = outcome.problems.len(),
            elapsed_ms = outcome.elapsed.as_secs_f64() * 1e3,
            "synced"
        ),
    }
}

/// Per-Service and per-backend counters, printed when the agent stops.
pub fn print_counters(agent: &L4Sink<KernelMaps>) {
    let maps = agent.sync().maps();
    println!(
        "{:<24} {:<28} {:>10} {:>12} {:>9} {:>10}",
        "FRONTEND", "SERVICE", "PACKETS", "BYTES", "FLOWS", "NO-BACKEND"
    );
    for (frontend, programmed) in agent.sync().frontends() {
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
