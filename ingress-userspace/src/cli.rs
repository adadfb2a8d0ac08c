//! The command line: `xdp-ingress run` and `xdp-ingress validate`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::datapath::loader::AttachMode;

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
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the XDP program, attach it, and keep its maps equal to the manifests.
    Run(RunArgs),
    /// Read and check the manifests, print what would be programmed.
    Validate(ValidateArgs),
}

/// `xdp-ingress run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory of Kubernetes manifests (Services, EndpointSlices), watched for changes.
    #[arg(long)]
    pub manifests: PathBuf,
    /// Interface to attach to (clients and backends alike); repeat for several.
    #[arg(long = "interface", required = true)]
    pub interfaces: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value = "native")]
    pub xdp_mode: AttachMode,
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
    /// Quiet time after a file change before reloading, in milliseconds (debounces editors).
    #[arg(long, default_value_t = 50)]
    pub debounce_ms: u64,
}

/// `xdp-ingress validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Directory of Kubernetes manifests.
    #[arg(long)]
    pub manifests: PathBuf,
}
