//! The command line: `xdp-ingress run`, `validate`, `inspect`, `cleanup` and `migrate-report`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};

pub use self::run::{AdminArgs, ClusterArgs, DatapathArgs, ProxyArgs, RunArgs, SourceArgs};
use crate::{
    model::ObjectName,
    node::{self, NodeError},
    translate::{l4::L4Options, l7::L7Options},
};

mod run;

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
    /// Report what the ingress-nginx annotations of a class's Ingresses will do here.
    MigrateReport(MigrateReportArgs),
}

/// `xdp-ingress migrate-report`.
#[derive(Debug, Args)]
pub struct MigrateReportArgs {
    /// Directory of Kubernetes manifests.
    #[arg(long)]
    pub manifests: PathBuf,
    /// The IngressClass (`spec.ingressClassName` or `kubernetes.io/ingress.class`) reported on.
    #[arg(long, default_value = "nginx")]
    pub class: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Largest manifest file read, in bytes (as `run`'s flag).
    #[arg(long, default_value_t = crate::source::files::DEFAULT_MAX_MANIFEST_BYTES)]
    pub max_manifest_bytes: u64,
}

/// Default pin directory (the DaemonSet mounts the host's bpffs at /sys/fs/bpf).
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/xdp-ingress";

/// `--bpffs DIR` or `off`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinPath(pub Option<PathBuf>);

pub(crate) fn parse_pin_path(text: &str) -> Result<PinPath, String> {
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

/// A listener address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

pub(crate) fn parse_listen(text: &str) -> Result<Listen, String> {
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
// The shared group's text promises `run`'s self-signed default, which `validate` never makes.
#[command(mut_arg("default_tls_secret", |arg| {
    arg.help("TLS Secret (`namespace/name`) for names no Ingress covers")
}))]
pub struct ValidateArgs {
    /// Directory of Kubernetes manifests.
    #[arg(long)]
    pub manifests: PathBuf,
    /// Fail on warnings too (an ignored or partly supported annotation), not only on errors
    /// (an object not served, or served with a 503).
    #[arg(long)]
    pub strict: bool,
    /// Largest manifest file read, in bytes (as `run`'s flag).
    #[arg(long, default_value_t = crate::source::files::DEFAULT_MAX_MANIFEST_BYTES)]
    pub max_manifest_bytes: u64,
    /// Which Ingresses are ours and the default certificate, as `run` chooses them.
    #[command(flatten)]
    pub ingress: IngressArgs,
    /// The node to translate for; without it, what needs a node (nodePort addresses, remote
    /// endpoints) is left out, everything else is checked.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// This node, as the L4 translation needs it: the same for `run` and `validate`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Node")]
pub struct NodeArgs {
    /// This node's name as EndpointSlices give it (`nodeName`): endpoints of other nodes are
    /// reached through SNAT, and only this node's serve `externalTrafficPolicy: Local`. `run`
    /// defaults to the host name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// An IPv4 address of this node on which every nodePort is served; repeat for several.
    /// `run` defaults to the IPv4 addresses of the `--interface`s.
    #[arg(long = "node-ip", value_name = "IPV4")]
    pub node_ips: Vec<Ipv4Addr>,
}

impl NodeArgs {
    /// The flags as given, with no defaults from the host (`validate`).
    pub fn given(&self) -> L4Options {
        L4Options {
            node_name: self.node_name.clone().filter(|n| !n.is_empty()),
            node_addresses: self.node_ips.clone(),
        }
    }

    /// The node `run` programs: the flags, else the host name and the IPv4 addresses of
    /// `interfaces`.
    pub fn options(&self, interfaces: &[String]) -> Result<L4Options, NodeError> {
        let mut options = self.given();
        if options.node_name.is_none() {
            options.node_name = node::host_name();
        }
        if options.node_addresses.is_empty() {
            options.node_addresses = node::interface_addresses(interfaces)?;
        }
        Ok(options)
    }
}

/// Which Ingresses the agent serves and its default certificate: the L7 translation's options,
/// the same for `run` and `validate`.
#[derive(Debug, Args)]
#[command(next_help_heading = "Ingress")]
pub struct IngressArgs {
    /// IngressClass `spec.controller` value this agent serves; repeat for several (e.g.
    /// `k8s.io/ingress-nginx` as well, to take over ingress-nginx's classes as they stand).
    #[arg(long = "controller-name", default_value = crate::translate::l7::DEFAULT_CONTROLLER_NAME)]
    pub controller_names: Vec<String>,
    /// TLS Secret (`namespace/name`) for names no Ingress covers; default: a self-signed one.
    #[arg(long)]
    pub default_tls_secret: Option<String>,
    /// Honour `nginx.ingress.kubernetes.io/ssl-passthrough`: TLS connections whose SNI names such
    /// a host go unterminated to its backend. Off by default, as in ingress-nginx, so Ingresses
    /// that carry the annotation on a controller without the flag keep being terminated.
    #[arg(long)]
    pub enable_ssl_passthrough: bool,
    /// ingress-nginx's global ConfigMap (`namespace/name`): its `ssl-redirect`, `hsts*`,
    /// `use-forwarded-headers`, `whitelist-source-range`... become the annotation defaults.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub nginx_configmap: Option<String>,
}

impl IngressArgs {
    /// The L7 translation's options; fails on a malformed `--default-tls-secret`.
    pub fn options(&self) -> Result<L7Options, ObjectNameError> {
        let default_tls_secret = self
            .default_tls_secret
            .as_deref()
            .map(|text| parse_object_name(text, "--default-tls-secret"))
            .transpose()?;
        let nginx_configmap = self
            .nginx_configmap
            .as_deref()
            .map(|text| parse_object_name(text, "--nginx-configmap"))
            .transpose()?;
        Ok(L7Options {
            controller_names: self.controller_names.clone(),
            default_tls_secret,
            ssl_passthrough: self.enable_ssl_passthrough,
            nginx_configmap,
        })
    }
}

/// A `namespace/name` flag that is not one.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {value:?}: expected namespace/name")]
pub struct ObjectNameError {
    /// The flag.
    pub flag: &'static str,
    /// What was given.
    pub value: String,
}

/// `namespace/name` from a flag.
pub fn parse_object_name(text: &str, flag: &'static str) -> Result<ObjectName, ObjectNameError> {
    match text.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => Ok(ObjectName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }),
        _ => Err(ObjectNameError {
            flag,
            value: text.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// The groups' flags stay one command line: no id or flag declared twice, every
    /// `conflicts_with`/`requires` naming a flag that exists (clap checks this only in debug
    /// builds, and only for the subcommand being parsed).
    #[test]
    fn the_flag_groups_form_one_consistent_command_line() {
        Cli::command().debug_assert();
    }

    /// `run` and `validate` with the same flags.
    fn run_and_validate(flags: &[&str]) -> (RunArgs, ValidateArgs) {
        let run = Cli::try_parse_from(["xdp-ingress", "run"].iter().chain(flags));
        let validate = Cli::try_parse_from(
            ["xdp-ingress", "validate", "--manifests", "m"]
                .iter()
                .chain(flags),
        );
        let (
            Ok(Cli {
                command: Command::Run(run),
                ..
            }),
            Ok(Cli {
                command: Command::Validate(validate),
                ..
            }),
        ) = (run, validate)
        else {
            panic!("both parse");
        };
        (*run, validate)
    }

    /// `run` and `validate` read the L7 group alike, so both choose the same Ingresses.
    #[test]
    fn run_and_validate_share_the_ingress_flags() {
        let flags = [
            "--controller-name",
            "example.dev/c",
            "--controller-name",
            "k8s.io/ingress-nginx",
            "--default-tls-secret",
            "a/b",
            "--nginx-configmap",
            "ingress-nginx/ingress-nginx-controller",
        ];
        let (run, validate) = run_and_validate(&flags);
        for ingress in [&run.ingress, &validate.ingress] {
            let options = ingress.options().map_err(|e| e.to_string());
            assert_eq!(
                options.as_ref().map(|o| o.controller_names.clone()),
                Ok(vec![
                    "example.dev/c".to_string(),
                    "k8s.io/ingress-nginx".to_string()
                ])
            );
            assert_eq!(
                options
                    .as_ref()
                    .map(|o| o.default_tls_secret.as_ref().map(|s| s.to_string())),
                Ok(Some("a/b".to_string()))
            );
            assert_eq!(
                options.map(|o| o.nginx_configmap.map(|s| s.to_string())),
                Ok(Some("ingress-nginx/ingress-nginx-controller".to_string()))
            );
        }
    }

    /// `run` and `validate` read the node flags alike; `validate` adds nothing from the host,
    /// `run` fills the addresses from the interfaces only when no `--node-ip` is given.
    #[test]
    fn run_and_validate_share_the_node_flags() {
        let flags = [
            "--node-name",
            "n1",
            "--node-ip",
            "192.0.2.1",
            "--node-ip",
            "192.0.2.2",
        ];
        let (run, validate) = run_and_validate(&flags);
        let expected = L4Options {
            node_name: Some("n1".to_string()),
            node_addresses: vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)],
        };
        assert_eq!(validate.node.given(), expected);
        let from_run = run.node.options(&["lo".to_string()]).expect("options");
        assert_eq!(from_run, expected, "--node-ip wins over the interfaces");
        let bare = NodeArgs {
            node_name: Some("n1".to_string()),
            node_ips: Vec::new(),
        };
        let from_lo = bare.options(&["lo".to_string()]).expect("options");
        assert!(from_lo.node_addresses.contains(&Ipv4Addr::LOCALHOST));
        assert!(Cli::try_parse_from(["xdp-ingress", "run", "--node-ip", "2001:db8::1"]).is_err());
    }
}
