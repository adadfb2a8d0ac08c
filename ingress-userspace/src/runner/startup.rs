//! Building what the runner drives, before anything is applied: the source (files or cluster),
//! the sinks (the XDP datapath loaded but not attached, the proxy built but not listening) and
//! the admin and metrics listeners, which answer (not ready) from here on. A pinned datapath
//! left by an earlier agent is adopted here.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use prometheus_client::collector::Collector;
use tokio::sync::mpsc::UnboundedSender;

use super::{control::Control, RunError, Source};
use crate::{
    admin,
    cli::RunArgs,
    datapath::{sync::DatapathSync, Datapath, KernelMaps, MapSizes, PinDir, PinnedState},
    health::{self, HealthSink, ProxyHealth},
    proxy::Proxy,
    sinks::{L4Sink, L7Sink, Sinks},
    source::{
        files::ManifestDir,
        kube::{self, KubeSource},
    },
};

/// The source `--manifests` or the cluster flags name, already reading; each change is
/// signalled on `changes`.
pub(super) async fn open_source(
    args: &RunArgs,
    changes: UnboundedSender<()>,
) -> Result<Source, RunError> {
    let source = &args.source;
    Ok(match &source.manifests {
        Some(dir) => {
            let files = ManifestDir::new(dir).with_max_file_bytes(source.max_manifest_bytes);
            let watcher = files.watch(changes)?;
            Source::Files(Arc::new(std::sync::Mutex::new(files)), watcher)
        }
        None => {
            let client = kube::client(source.kubeconfig.as_deref()).await?;
            let nginx_configmap = args.ingress.options()?.nginx_configmap;
            let kube = KubeSource::start(
                client.clone(),
                &source.watch_namespaces,
                nginx_configmap.as_ref(),
                changes,
            );
            let control = Control::start(client, &args.cluster)?;
            Source::Kube(kube, Box::new(control))
        }
    })
}

/// What [`build_sinks`] built.
pub(super) struct Built {
    pub(super) sinks: Sinks<KernelMaps>,
    /// The loaded program, with an L4 sink: the runner attaches and detaches it.
    pub(super) datapath: Option<Datapath>,
    /// The proxy's metrics, with an L7 sink.
    pub(super) proxy_collector: Option<Box<dyn Collector>>,
    /// ingress-nginx's families (`--metrics-compat nginx`), with an L7 sink.
    pub(super) nginx_collector: Option<crate::proxy::NginxCollector>,
}

/// The sinks the flags ask for, with the loaded datapath (when there is an L4 sink) and the
/// proxy's metrics (when there is a proxy). With an L4 sink, the Services' health checks are
/// served too, healthy while `proxy_health` says so.
pub(super) fn build_sinks(
    args: &RunArgs,
    proxy_health: &Arc<ProxyHealth>,
) -> Result<Built, RunError> {
    let mut datapath = None;
    let l4 = if args.datapath.interfaces.is_empty() {
        None
    } else {
        let options = args.node.options(&args.datapath.interfaces)?;
        if options.node_addresses.is_empty() {
            tracing::warn!("no IPv4 address on the interfaces and no --node-ip: no nodePorts");
        }
        tracing::info!(
            node = options.node_name.as_deref().unwrap_or("-"),
            addresses = ?options.node_addresses,
            "node"
        );
        let sizes = args.datapath.map_sizes();
        let pins = args.datapath.pins();
        let (loaded, sync) = load_datapath(&sizes, pins.as_ref())?;
        datapath = Some(loaded);
        Some(L4Sink::new(sync, options))
    };
    let with_l4 = l4.is_some();
    // Read after main raised the open-file limit to the hard one (the default connection cap).
    let mut settings = args.proxy.settings();
    if let Some(labels) = &mut settings.nginx_metrics {
        labels.controller_class = args
            .ingress
            .controller_names
            .first()
            .cloned()
            .unwrap_or_default();
    }
    tracing::info!(
        max_connections = settings.max_connections,
        "proxy: client connections per listener"
    );
    let mut proxy_collector = None;
    let mut nginx_collector = None;
    let l7 = if settings.http_listen.is_none() && settings.https_listen.is_none() {
        None
    } else {
        let options = args.ingress.options()?;
        let proxy = Proxy::new(settings)?;
        proxy_collector = Some(Box::new(proxy.collector()) as _);
        nginx_collector = proxy.nginx_metrics();
        Some(L7Sink::new(proxy, options))
    };
    let mut sinks = Sinks::new(l4, l7);
    if with_l4 {
        sinks = sinks.with_health(HealthSink::new(proxy_health.clone(), Ipv4Addr::UNSPECIFIED));
    }
    Ok(Built {
        sinks,
        datapath,
        proxy_collector,
        nginx_collector,
    })
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

/// Binds the admin listener and the metrics listener the flags ask for; the admin listener's
/// bound address.
pub(super) async fn serve_admin(
    args: &RunArgs,
    endpoints: admin::Endpoints,
) -> Result<Option<SocketAddr>, RunError> {
    // Admin clients get the proxy's client timeouts: one pair of knobs for every listener.
    let timeouts = admin::Timeouts {
        header: args.proxy.client_header_timeout,
        idle: args.proxy.client_idle_timeout,
    };
    let admin = match args.admin.admin_listen.0 {
        Some(addr) => {
            let role = admin::Role::Admin {
                metrics: args.admin.metrics_listen.0.is_none(),
            };
            let bound = admin::serve(addr, role, timeouts, endpoints.clone())
                .await
                .map_err(|source| RunError::Admin { addr, source })?;
            tracing::info!(addr = %bound, "admin listening");
            Some(bound)
        }
        None => None,
    };
    if let Some(addr) = args.admin.metrics_listen.0 {
        let bound = admin::serve(addr, admin::Role::Metrics, timeouts, endpoints)
            .await
            .map_err(|source| RunError::Metrics { addr, source })?;
        tracing::info!(addr = %bound, "metrics listening");
    }
    Ok(admin)
}

/// Starts kube-proxy's node health server (`--healthz-listen`) when there is a datapath to
/// report on. A port in use is logged: the load balancer and the proxy go on without it.
pub(super) fn serve_node_health(args: &RunArgs, with_l4: bool, proxy_health: &Arc<ProxyHealth>) {
    let Some(addr) = args.admin.healthz_listen.0.filter(|_| with_l4) else {
        return;
    };
    match health::serve_node_health(addr, proxy_health.clone()) {
        Ok(bound) => tracing::info!(addr = %bound, "node health listening (/healthz, /livez)"),
        Err(error) => tracing::error!(%addr, %error, "node health server not started"),
    }
}
