//! xdp-ingress: an XDP L4 load balancer and an Ingress proxy for Kubernetes.
//!
//! Module map (follow a change from a manifest or the API server to the kernel and the proxy):
//! - [`source`]: where objects come from: a directory of YAML manifests (watched), or the
//!   cluster (kube-runtime watchers);
//! - [`model`]: the typed objects (k8s-openapi) and the problems found in them;
//! - [`node`]: this node's name and addresses (local endpoints, nodePort addresses);
//! - [`translate`]: pure functions from objects to plans ([`translate::l4::L4Plan`],
//!   [`translate::l7::L7Plan`]);
//! - [`datapath`]: the L4 sink: Maglev tables, the diff-and-swap sync, the aya loader;
//! - [`health`]: kube-proxy's health checks (per `externalTrafficPolicy: Local` Service, and
//!   the node's `/healthz`), fed the L4 plan;
//! - [`proxy`]: the L7 sink: the HTTP/HTTPS proxy and its routing table;
//! - [`sinks`]: the sinks one apply pass writes to, and the pass itself over a set of objects;
//! - [`runner`]: the agent's life in `run` (start, debounce, apply, stop);
//! - [`control`]: what the agent writes back to a cluster (Lease, status, Events);
//! - [`admin`]: the admin and metrics listeners (`/healthz`, `/readyz`, `/metrics`, `/debug`);
//! - [`cli`]: the command line, its `run` flags in groups that become each part's settings;
//! - [`inspect`]: `xdp-ingress inspect`, and the views of the plans the admin listener serves;
//! - [`migrate_report`]: `xdp-ingress migrate-report`, what ingress-nginx annotations will do.
#![deny(missing_docs)]

pub(crate) mod admin;
pub mod cli;
pub(crate) mod control;
pub mod datapath;
pub mod health;
pub mod inspect;
pub mod migrate_report;
pub mod model;
pub mod node;
pub mod proxy;
pub mod runner;
pub(crate) mod sinks;
pub(crate) mod source;
pub mod translate;
pub mod validate;
