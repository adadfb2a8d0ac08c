//! Shared pieces of the integration tests, the lab and the benchmarks: network namespaces that
//! clean up after themselves ([`netns`]).
//!
//! Everything here needs root (CAP_NET_ADMIN, CAP_BPF) and the `ip` tool from iproute2.
pub mod netns;
