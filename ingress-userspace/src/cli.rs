//! The command line: `xdp-ingress run`, `validate`, `inspect` and `cleanup`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::datapath::AttachMode;

/// XDP load balancer for Kubernetes LoadBalancer Services.
#[derive(Debug, Parser)]
#[command(name = "xdp-ingress", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log level filter (tracing syntax), overridden by RUST_LOG.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    /// Log line format: `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2024-01-01T00:00:00Z  INFO message key=value`.
    Text,
    /// `{"timestamp":…,"level":"INFO","fields":{"message":…,"key":…}}`.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the XDP program, attach it, and keep its maps equal to the manifests.
    Run(Box<RunArgs>),
    /// Read and check the manifests, print what would be programmed.
    Validate(ValidateArgs),
    /// Show what is programmed now: from the pinned maps (services, backends, flows) and from
    /// the running agent's admin listener (routes, certs).
    Inspect(InspectArgs),
    /// Remove everything `run` pinned: detaches XDP from every interface and frees the maps.
    Cleanup(CleanupArgs),
}

/// Default pin directory (the DaemonSet mounts the host's bpffs at /sys/fs/bpf).
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/xdp-ingress";

/// `--bpffs DIR` or `off`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinPath(pub Option<PathBuf>);

fn parse_pin_path(text: &str) -> Result<PinPath, String> {
    match text {
        "off" => Ok(PinPath(None)),
        "" => Err("empty path; pass a directory on a bpffs or `off`".into()),
        path => Ok(PinPath(Some(PathBuf::from(path)))),
    }
}

/// What `inspect` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InspectWhat {
    /// VIP:port/protocol, service id, Maglev table size, backends, counters.
    Services,
    /// Every backend id with its address, Service port and counters.
    Backends,
    /// Tracked flows: client → VIP and the backend it is pinned to.
    Flows,
    /// The proxy's routing table (host, path, type → backend), from the running agent.
    Routes,
    /// Certificates: names, Secret, expiry, from the running agent.
    Certs,
}

/// `xdp-ingress inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// What to show.
    #[arg(value_enum)]
    pub what: InspectWhat,
    /// One JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Where `run` pinned the maps.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// The running agent's admin listener (Service names, routes, certificates).
    #[arg(long, default_value = "127.0.0.1:9900")]
    pub admin: SocketAddr,
}

/// `xdp-ingress cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Where `run` pinned the maps and links.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}

/// `xdp-ingress run`.
#[derive(Debug, Args)]
pub struct RunArgs {
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

    /// The admin listener, or `off`: `/healthz`, `/readyz`, `/debug/...` (loopback clients
    /// only) and, without `--metrics-listen`, `/metrics`.
    #[arg(long, default_value = "127.0.0.1:9900", value_parser = parse_listen)]
    pub admin_listen: Listen,
    /// A listener for `/metrics` (and `/healthz`, `/readyz`) alone, without `/debug`, or `off`;
    /// when set, the admin listener no longer serves `/metrics`.
    #[arg(long, default_value = "off", value_parser = parse_listen)]
    pub metrics_listen: Listen,
    /// Interface to attach the XDP load balancer to (clients and backends alike); repeat for
    /// several. Without any, the agent is an L7-only Ingress controller and loads no BPF.
    #[arg(long = "interface")]
    pub interfaces: Vec<String>,
    /// The proxy's plain-HTTP listener, or `off`.
    #[arg(long, default_value = "0.0.0.0:80", value_parser = parse_listen)]
    pub http_listen: Listen,
    /// The proxy's HTTPS listener, or `off`.
    #[arg(long, default_value = "0.0.0.0:443", value_parser = parse_listen)]
    pub https_listen: Listen,
    /// IngressClass `spec.controller` value this agent serves.
    #[arg(long, default_value = "xdp-ingress.dev/controller")]
    pub controller_name: String,
    /// TLS Secret (`namespace/name`) for names no Ingress covers; default: a self-signed one.
    #[arg(long)]
    pub default_tls_secret: Option<String>,
    /// Connecting to an endpoint; after this, 502 (e.g. `5s`, `500ms`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub upstream_connect_timeout: Duration,
    /// From the request sent to the response head; after this, 504.
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
    /// Largest request body in bytes (larger: 413); default unlimited.
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
    /// Quiet time after a change before applying it, in milliseconds: a burst of changes (an
    /// editor saving, a rollout touching many EndpointSlices) becomes one sync.
    #[arg(long, default_value_t = 5)]
    pub debounce_ms: u64,
    /// Longest a burst may delay a sync, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub debounce_max_ms: u64,
}

/// A listener address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

fn parse_listen(text: &str) -> Result<Listen, String> {
    if text == "off" {
        return Ok(Listen(None));
    }
    text.parse()
        .map(|addr| Listen(Some(addr)))
        .map_err(|_| format!("{text:?} is not an address like 0.0.0.0:80, nor `off`"))
}

/// `250ms`, `5s`, `2m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration like 250ms, 5s or 2m");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(invalid)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err(invalid()),
    }
}

/// `xdp-ingress validate`.

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Directory of Kubernetes manifests.
    #[arg(long)]
    pub manifests: PathBuf,
    /// Largest manifest file read, in bytes (as `run`'s flag).
    #[arg(long, default_value_t = crate::source::files::DEFAULT_MAX_MANIFEST_BYTES)]
    pub max_manifest_bytes: u64,
    /// IngressClass `spec.controller` value this agent serves.
    #[arg(long, default_value = "xdp-ingress.dev/controller")]
    pub controller_name: String,
    /// TLS Secret (`namespace/name`) for names no Ingress covers.
    #[arg(long)]
    pub default_tls_secret: Option<String>,
}
