//! The support library of the integration tests, the lab and the benchmarks: one place for the
//! scaffolding the test binaries share, so a test reads as the specification it checks.
//!
//! Always there (xtask uses these before the agent can be built, so they do not depend on the
//! agent's crate): network namespaces that clean up after themselves ([`netns`]), the lab of
//! namespaces standing for a node, a client and backends ([`lab`]), the agent binary run as a
//! child process ([`agent`]), and the root check of the tests that need privileges ([`root`]).
//!
//! With the `e2e` feature (the default; off in xtask): the L7 proxy harness with its in-process
//! backends, clients and manifest builders ([`proxy`]), and the cluster-mode harness running the
//! agent's `Runner` in-process against a fake API server ([`kube`]), which links the agent crate.
//!
//! Every check in the tests is an `Err`, not a panic ([`ensure_eq!`], [`ensure_ne!`] and
//! `anyhow::ensure!`).
//!
//! What touches namespaces, XDP or BPF needs root (CAP_NET_ADMIN, CAP_BPF) and the `ip` tool
//! from iproute2.
pub mod agent;
mod ensure;
#[cfg(feature = "e2e")]
pub mod kube;
pub mod lab;
pub mod netns;
#[cfg(feature = "e2e")]
pub mod proxy;
pub mod root;
