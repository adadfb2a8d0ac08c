//! End to end: the real `xdp-ingress` binary in a lab of namespaces (client, node, backends),
//! driven through its manifest directory, checked with real TCP and UDP clients.
//!
//! Each test builds its own lab under unique names and removes it also when it fails (the lab,
//! the agent process and the temporary manifest directory all clean up on drop). The tests use
//! the same addresses, but in namespaces of their own, so they can run in parallel. They need
//! root and the agent binary: `cargo xtask test` builds it and passes it as XDP_INGRESS_BIN.

use std::time::Duration;

mod forwarding;
mod handover;
mod pinning;
mod scenario;

/// For every single connect or request: the lab is one hop, so anything slower is a failure.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// Loading the program and creating its maps (64 MiB of Maglev slots) takes a moment.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections per distribution check: enough that a fair share lands within 20–47 %.
const SPREAD_CONNECTIONS: usize = 300;
