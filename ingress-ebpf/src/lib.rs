#![no_std]
//! What the crate's two objects share: header parsing. The library also lets `ingress-userspace`
//! name this crate as a build-dependency (aya-build then rebuilds the objects when it changes).
//!
//! The objects are the crate's binaries: `ingress-ebpf` (`main.rs`, the XDP load balancer the
//! agent loads) and `ingress-ebpf-bench` (`bench.rs`, the reference programs of
//! `cargo xtask bench l4`, kept out of the agent's object).

pub mod parse;
