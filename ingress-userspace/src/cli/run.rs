//! `xdp-ingress run`'s flags, one group per part of the agent they configure, each shown under
//! its own heading in `--help` and turned into that part's settings here, so the runner wires
//! parts together without knowing flag by flag what configures them.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{
    parse_duration, parse_listen, parse_object_name, parse_pin_path, IngressArgs, NodeArgs,
};
use super::{Listen, ObjectNameError, PinPath, DEFAULT_BPFFS};
use crate::{
    control::{status::PublishSettings, vips::AssignSettings},
    datapath::{AttachMode, MapSizes, PinDir},
    proxy::ProxySettings,
};

/// `xdp-ingress run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where the objects come from, and how changes are batched.
    #[command(flatten)]
    pub source: SourceArgs,
    /// What the agent writes back to a cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The admin and metrics listeners.
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Which Ingresses are ours (shared with `validate`).
    #[command(flatten)]
    pub ingress: IngressArgs,
    /// The L7 proxy.
    #[command(flatten)]
    pub proxy: ProxyArgs,
    /// The XDP load balancer.
    #[command(flatten)]
    pub datapath: DatapathArgs,
    /// This node: its name and nodePort addresses (shared with `validate`).
    #[command(flatten)]
    pub node: NodeArgs,
}

/// Where the objects come from: a manifest directory or the cluster.
#[derive(Debug, Args)]
#[command(next_help_heading = "Objects")]
pub struct SourceArgs {
    /// Directory of Kubernetes manifests (Services, EndpointSlices, Ingresses, IngressClasses,
    /// TLS Secrets), watched for changes. Without it the agent watches the cluster.
    #[arg(long, conflicts_with_all = ["kubeconfig", "watch_namespaces"])]
    pub manifests: Option<PathBuf>,
    /// Largest manifest file read, in bytes; a larger one is a problem and keeps its last good
    /// objects.
    #[arg(long, default_value_t = crate::source::files::DEFAULT_MAX_MANIFEST_BYTES)]
    pub max_manifest_bytes: u64,
    /// Kubeconfig for watching a cluster from outside it; default: the pod's service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Watch only this namespace (repeat for several); default: all.
    #[arg(long = "watch-namespace")]
    pub watch_namespaces: Vec<String>,
    /// Quiet time after a change before applying it, in milliseconds: a burst of changes (an
    /// editor saving, a rollout touching many EndpointSlices) becomes one sync.
    #[arg(long, default_value_t = 5)]
    pub debounce_ms: u64,
    /// Longest a burst may delay a sync, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub debounce_max_ms: u64,
}

impl SourceArgs {
    /// `--debounce-ms`: the quiet time that ends a burst.
    pub fn debounce_quiet(&self) -> Duration {
        Duration::from_millis(self.debounce_ms)
    }

    /// `--debounce-max-ms`: the longest a burst may delay its apply pass.
    pub fn debounce_max(&self) -> Duration {
        Duration::from_millis(self.debounce_max_ms)
    }
}

/// What the agent writes back to a cluster: Ingress status, Service addresses, and the Lease that
/// decides which agent writes.
#[derive(Debug, Args)]
#[command(next_help_heading = "Cluster status (written by the elected agent)")]
pub struct ClusterArgs {
    /// Address (IP or host name) to publish in the status of our Ingresses; repeat for several.
    #[arg(long = "publish-address", conflicts_with = "publish_service")]
    pub publish_addresses: Vec<String>,
    /// Publish the addresses of this LoadBalancer Service (`namespace/name`) in the status of
    /// our Ingresses.
    #[arg(long)]
    pub publish_service: Option<String>,
    /// Assign free addresses from this IPv4 CIDR to LoadBalancer Services of our
    /// `--load-balancer-class` that have none, writing their status (bare-metal edges).
    #[arg(long)]
    pub assign_vips: Option<crate::control::vips::Pool>,
    /// The `spec.loadBalancerClass` whose Services get addresses from `--assign-vips`.
    #[arg(long, default_value = "xdp-ingress.dev/lb")]
    pub load_balancer_class: String,
    /// With `--assign-vips`, also LoadBalancer Services that name no class.
    #[arg(long, requires = "assign_vips")]
    pub assign_vips_to_all: bool,
    /// Namespace of the Lease that elects the one agent writing status
    /// (default: `$POD_NAMESPACE`, else `default`).
    #[arg(long)]
    pub election_namespace: Option<String>,
}

impl ClusterArgs {
    /// What to publish in our Ingresses' status; fails on a malformed `--publish-service`.
    pub fn publish(&self) -> Result<PublishSettings, ObjectNameError> {
        Ok(PublishSettings {
            addresses: self.publish_addresses.clone(),
            service: self
                .publish_service
                .as_deref()
                .map(|text| parse_object_name(text, "--publish-service"))
                .transpose()?,
        })
    }

    /// The Lease's namespace: the flag, else `$POD_NAMESPACE`, else `default`.
    pub fn election_namespace(&self) -> String {
        self.election_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty())
            })
            .unwrap_or_else(|| "default".to_string())
    }

    /// How Services get addresses, with `--assign-vips`.
    pub fn assign(&self) -> Option<AssignSettings> {
        self.assign_vips.map(|pool| AssignSettings {
            pool,
            class: self.load_balancer_class.clone(),
            classless_too: self.assign_vips_to_all,
        })
    }
}

/// The admin and metrics listeners.
#[derive(Debug, Args)]
#[command(next_help_heading = "Admin")]
pub struct AdminArgs {
    /// The admin listener, or `off`: `/healthz`, `/readyz`, `/debug/...` (loopback clients
    /// only) and, without `--metrics-listen`, `/metrics`.
    #[arg(long, default_value = "127.0.0.1:9900", value_parser = parse_listen)]
    pub admin_listen: Listen,
    /// A listener for `/metrics` (and `/healthz`, `/readyz`) alone, without `/debug`, or `off`;
    /// when set, the admin listener no longer serves `/metrics`.
    #[arg(long, default_value = "off", value_parser = parse_listen)]
    pub metrics_listen: Listen,
    /// kube-proxy's node health server (`/healthz`, `/livez`: 200 while the datapath is
    /// programmed and up to date), for cloud load balancers that probe it; or `off`. Served
    /// with the XDP datapath only, like the Services' `healthCheckNodePort`s.
    #[arg(long, default_value = "0.0.0.0:10256", value_parser = parse_listen)]
    pub healthz_listen: Listen,
}

/// The proxy's listeners, timeouts and limits.
#[derive(Debug, Args)]
#[command(next_help_heading = "Proxy")]
pub struct ProxyArgs {
    /// The proxy's plain-HTTP listener, or `off`.
    #[arg(long, default_value = "0.0.0.0:80", value_parser = parse_listen)]
    pub http_listen: Listen,
    /// The proxy's HTTPS listener, or `off`.
    #[arg(long, default_value = "0.0.0.0:443", value_parser = parse_listen)]
    pub https_listen: Listen,
    /// Connecting to an endpoint; after this, the next endpoint, else 504 (e.g. `5s`, `500ms`).
    /// The default of the `proxy-connect-timeout` annotation.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,
    /// From the request sent to the response head, and between two reads of the response body;
    /// after this, 504 (or the body cut). The default of the `proxy-read-timeout` annotation.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub upstream_response_timeout: Duration,
    /// Idle pooled connections to endpoints are closed after this.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub upstream_idle_timeout: Duration,
    /// A client must send a whole request head (and finish its TLS handshake) within this, once
    /// it has started (slowloris protection).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub client_header_timeout: Duration,
    /// An idle HTTP/1.1 keep-alive client connection, or an HTTP/2 one without streams
    /// (GOAWAY first), is closed after this (also on the admin and metrics listeners, with
    /// `--client-header-timeout`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub client_idle_timeout: Duration,
    /// A client that reads nothing of its response for this long is disconnected, and its
    /// upstream connection closed (nginx `send_timeout`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub client_send_timeout: Duration,
    /// A request body that brings nothing for this long while the proxy waits for it ends the
    /// request with 408 (nginx `client_body_timeout`).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub client_body_timeout: Duration,
    /// Client connections per proxy listener, idle and parked ones included; at the cap the
    /// connection idle longest is closed for a new one, else the new one is refused. Default:
    /// (open-file limit - 64) / 2, split over the listeners, at least 16.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Largest request head in bytes (larger: 431).
    #[arg(long, default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Largest request body in bytes (larger: 413), over every route; default no ceiling.
    /// Ingress routes have their own limit too: `proxy-body-size`, by default 1m as in
    /// ingress-nginx.
    #[arg(long)]
    pub max_body_bytes: Option<u64>,
    /// Keep `%2F` and `%5C` in request paths, as ordinary characters of a path segment, instead
    /// of answering 400 (for applications whose URLs carry encoded slashes).
    #[arg(long)]
    pub allow_encoded_slashes: bool,
    /// Pass request headers whose names contain `_` (dropped by default, as nginx does: an
    /// endpoint that reads `_` as `-` would take `X_Real_IP` for `X-Real-IP`).
    #[arg(long)]
    pub allow_underscores_in_headers: bool,
    /// A protocol of the `Upgrade` header passed to endpoints; repeat for several (the default
    /// is `websocket`; `h2c` is never passed). Other upgrade requests go on as plain requests.
    #[arg(
        long = "allow-upgrade",
        value_name = "PROTOCOL",
        default_value = "websocket"
    )]
    pub allow_upgrades: Vec<String>,
    /// On SIGTERM, how long requests in flight get to finish (the proxy stops accepting at
    /// once; keep this below the pod's terminationGracePeriodSeconds).
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// One JSON access-log line per request on stdout.
    #[arg(long)]
    pub access_log: bool,
    /// Proxy worker threads (default: one per CPU).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Also export another controller's request metrics on `/metrics`: `nginx` adds
    /// ingress-nginx's `nginx_ingress_controller_*` families (its names, types, buckets and
    /// labels; `controller_namespace` and `controller_pod` from `$POD_NAMESPACE` and
    /// `$POD_NAME`, `controller_class` the first `--controller-name`).
    #[arg(long, value_enum, value_name = "CONTROLLER")]
    pub metrics_compat: Option<MetricsCompat>,
}

/// Whose metric families `--metrics-compat` adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsCompat {
    /// ingress-nginx's (`nginx_ingress_controller_*`).
    Nginx,
}

impl ProxyArgs {
    /// The proxy's settings. Without `--max-connections`, the cap comes from the open-file
    /// limit, so call this after raising it.
    pub fn settings(&self) -> ProxySettings {
        ProxySettings {
            http_listen: self.http_listen.0,
            https_listen: self.https_listen.0,
            upstream_connect_timeout: self.upstream_connect_timeout,
            upstream_response_timeout: self.upstream_response_timeout,
            upstream_idle_timeout: self.upstream_idle_timeout,
            client_header_timeout: self.client_header_timeout,
            client_idle_timeout: self.client_idle_timeout,
            client_send_timeout: self.client_send_timeout,
            client_body_timeout: self.client_body_timeout,
            max_connections: self.max_connections.unwrap_or_else(|| {
                let listeners = usize::from(self.http_listen.0.is_some())
                    + usize::from(self.https_listen.0.is_some());
                crate::proxy::lifetime::nofile_limit().map_or(usize::MAX, |nofile| {
                    crate::proxy::lifetime::default_max_connections(nofile, listeners)
                })
            }),
            max_header_bytes: self.max_header_bytes,
            max_body_bytes: self.max_body_bytes,
            access_log: self.access_log,
            allow_encoded_slashes: self.allow_encoded_slashes,
            allow_underscores_in_headers: self.allow_underscores_in_headers,
            upgrades: self
                .allow_upgrades
                .iter()
                .map(|protocol| protocol.to_ascii_lowercase())
                .collect(),
            nginx_metrics: self.metrics_compat.map(|MetricsCompat::Nginx| {
                let env = |name: &str| std::env::var(name).unwrap_or_default();
                crate::proxy::NginxLabels {
                    // Set from `--controller-name` by the runner, which reads both groups.
                    controller_class: String::new(),
                    controller_namespace: env("POD_NAMESPACE"),
                    controller_pod: env("POD_NAME"),
                }
            }),
        }
    }
}

/// The XDP load balancer: where it attaches, how, and how big its maps are.
#[derive(Debug, Args)]
#[command(next_help_heading = "XDP datapath")]
pub struct DatapathArgs {
    /// Interface to attach the XDP load balancer to: the node's uplink(s), where clients'
    /// packets arrive (pods' veths need not be named); repeat for several. `auto`: the
    /// interfaces of the node's IPv4 default routes. Without any, the agent is an L7-only
    /// Ingress controller and loads no BPF.
    #[arg(long = "interface")]
    pub interfaces: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value = "native")]
    pub xdp_mode: AttachMode,
    /// Pin maps and XDP links under this bpffs directory, so forwarding continues while the
    /// agent restarts and a new agent adopts the state; `off` detaches at exit instead.
    #[arg(long, default_value = DEFAULT_BPFFS, value_parser = parse_pin_path)]
    pub bpffs: PinPath,
    /// Maximum Service ports.
    #[arg(long, default_value_t = ingress_common::capacity::SERVICES)]
    pub max_services: u32,
    /// Maximum backends (summed over Service ports).
    #[arg(long, default_value_t = ingress_common::capacity::BACKENDS)]
    pub max_backends: u32,
    /// Maglev slots for all tables together (4 bytes each).
    #[arg(long, default_value_t = ingress_common::capacity::MAGLEV_SLOTS)]
    pub maglev_slots: u32,
    /// Tracked flows per direction.
    #[arg(long, default_value_t = ingress_common::capacity::FLOWS)]
    pub max_flows: u32,
    /// SNAT mappings: one per flow to an endpoint on another node, held until the flow idles
    /// out (TCP six hours, ten seconds after FIN/RST, UDP a minute). About 100 bytes each.
    #[arg(long, default_value_t = ingress_common::capacity::SNAT_FLOWS)]
    pub max_snat_flows: u32,
    /// Session-affinity entries: one per (client, frontend) of `sessionAffinity: ClientIP`
    /// Services (an LRU table: when full, the least recently used client loses its affinity).
    #[arg(long, default_value_t = ingress_common::capacity::AFFINITY)]
    pub max_affinity_entries: u32,
}

impl DatapathArgs {
    /// The maps' sizes.
    pub fn map_sizes(&self) -> MapSizes {
        MapSizes {
            services: self.max_services,
            backends: self.max_backends,
            maglev_slots: self.maglev_slots,
            flows: self.max_flows,
            snat_flows: self.max_snat_flows,
            affinity: self.max_affinity_entries,
        }
    }

    /// The pin directory, unless `--bpffs off`.
    pub fn pins(&self) -> Option<PinDir> {
        self.bpffs.0.as_ref().map(PinDir::new)
    }
}
