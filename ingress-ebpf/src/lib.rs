#![no_std]
//! This library is empty: it exists so `ingress-userspace` can name this crate as a
//! build-dependency (aya-build then rebuilds the eBPF object when it changes).
