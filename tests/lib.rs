//! Shared pieces of the integration tests, the lab and the benchmarks: network namespaces that
//! clean up after themselves ([`netns`]), the lab of namespaces standing for a node, a client and
//! backends ([`lab`]), and the agent binary run as a child process ([`agent`]).
//!
//! Everything here needs root (CAP_NET_ADMIN, CAP_BPF) and the `ip` tool from iproute2. It does
//! not depend on the agent's crate: xtask uses it before the agent can be built.
pub mod agent;
pub mod lab;
pub mod netns;
