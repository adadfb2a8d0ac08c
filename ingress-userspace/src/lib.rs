//! xdp-ingress: an XDP L4 load balancer for Kubernetes LoadBalancer Services.
//!
//! Module map (follow a change from a manifest to the kernel in this order):
//! - [`source`]: where objects come from (today: a directory of YAML manifests, watched);
//! - [`model`]: the typed objects (k8s-openapi) and the problems found in them;
//! - [`translate`]: pure functions from objects to plans ([`translate::l4::L4Plan`]);
//! - [`datapath`]: the L4 sink: Maglev tables, the diff-and-swap sync, the aya loader;
//! - [`agent`]: ties a source to the sink (reload, report);
//! - [`cli`]: the command line.
#![deny(missing_docs)]

pub mod admin;
pub mod agent;
pub mod cli;
pub mod control;
pub mod datapath;
pub mod model;
pub mod proxy;
pub mod source;
pub mod translate;
