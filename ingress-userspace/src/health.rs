//! What cloud load balancers probe on a node, answered as kube-proxy answers it, so they work
//! unchanged when the agent replaces kube-proxy:
//!
//! - the *service health checks*: for each `externalTrafficPolicy: Local` Service with a
//!   `healthCheckNodePort`, an HTTP server on `0.0.0.0:<port>` that answers 200 while this node
//!   has a ready endpoint of the Service and 503 otherwise, with kube-proxy's JSON body
//!   (`pkg/proxy/healthcheck/service_health.go`). A [`HealthSink`] is fed the L4 plan's
//!   health checks after each apply pass: it opens and closes listeners as entries come and go,
//!   and swaps in new counts (one atomic pointer per port; requests take no lock);
//! - the *node health server* (`--healthz-listen`, kube-proxy's `:10256`): `/healthz` and
//!   `/livez` answer 200 while the datapath is programmed and no change has waited longer than
//!   [`HEALTH_TIMEOUT`] to be applied (`proxy_health.go`), 503 otherwise.
//!
//! A port that cannot be bound is logged and reported as a problem of its Service; every other
//! port is served, and the next apply pass tries again.

mod server;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use k8s_openapi::jiff::Timestamp;
use tokio::task::JoinHandle;

use crate::{
    model::{ClusterObjects, Problem},
    translate::l4::HealthCheckPlan,
};

/// How long a change may wait to be applied before the node reports itself unhealthy
/// (kube-proxy: twice its 30 s sync period).
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether the datapath is programmed and fresh, shared by the runner (which reports changes
/// queued and applied) and every health server (which read it per request, lock-free).
#[derive(Debug, Default)]
pub struct ProxyHealth {
    /// Nanoseconds since the epoch of the last apply pass; 0: none yet.
    last_updated: AtomicI64,
    /// Nanoseconds since the epoch of the oldest change not applied yet; 0: none.
    oldest_pending: AtomicI64,
}

impl ProxyHealth {
    /// A change arrived (kube-proxy's `QueuedUpdate`): the clock starts unless one is running.
    pub fn queued_update(&self) {
        let _ = self.oldest_pending.compare_exchange(
            0,
            now_nanos(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    /// An apply pass programmed the objects (kube-proxy's `Updated`).
    pub fn updated(&self) {
        self.oldest_pending.store(0, Ordering::SeqCst);
        self.last_updated.store(now_nanos(), Ordering::SeqCst);
    }

    /// Healthy, and the last update's time (`None`: never programmed, which is unhealthy: a
    /// probe must not send traffic to a node whose datapath is still empty).
    pub fn check(&self, now: i64) -> (bool, Option<i64>) {
        let last = self.last_updated.load(Ordering::SeqCst);
        if last == 0 {
            return (false, None);
        }
        let pending = self.oldest_pending.load(Ordering::SeqCst);
        let timeout = i64::try_from(HEALTH_TIMEOUT.as_nanos()).unwrap_or(i64::MAX);
        let fresh = pending == 0 || now.saturating_sub(pending) < timeout;
        (fresh, Some(last))
    }

    /// Whether `/healthz` answers 200 now.
    pub fn is_healthy(&self) -> bool {
        self.check(now_nanos()).0
    }
}

fn now_nanos() -> i64 {
    i64::try_from(Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

/// Go's `time.Time.String()` for a UTC time, as kube-proxy prints it (without the monotonic
/// clock reading): `2026-01-02 15:04:05.123456789 +0000 UTC`; `None` is Go's zero time.
pub(crate) fn go_time(nanos: Option<i64>) -> String {
    match nanos.and_then(|n| Timestamp::from_nanosecond(i128::from(n)).ok()) {
        Some(ts) => ts.strftime("%Y-%m-%d %H:%M:%S%.f +0000 UTC").to_string(),
        None => "0001-01-01 00:00:00 +0000 UTC".to_string(),
    }
}

/// One service health check server: what it answers, swapped in by each apply pass.
struct Served {
    entry: Arc<ArcSwap<server::Prepared>>,
    task: JoinHandle<()>,
}

/// The service health check servers, fed the L4 plan's health checks after each apply pass.
pub struct HealthSink {
    proxy: Arc<ProxyHealth>,
    /// The address each port is bound on (`0.0.0.0`; tests may bind loopback).
    bind: Ipv4Addr,
    served: BTreeMap<u16, Served>,
}

impl HealthSink {
    /// A sink serving nothing yet; `proxy` tells the servers whether the datapath is healthy.
    pub fn new(proxy: Arc<ProxyHealth>, bind: Ipv4Addr) -> Self {
        Self {
            proxy,
            bind,
            served: BTreeMap::new(),
        }
    }

    /// The ports served now.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.served.keys().copied()
    }

    /// Serves exactly `checks`: closes the ports that are gone, swaps the counts of those that
    /// stay, binds the new ones. A port that cannot be bound is returned as a problem of its
    /// Service (origin from `objects`) and tried again next time. Call on a tokio runtime.
    pub fn apply(
        &mut self,
        checks: &BTreeMap<u16, HealthCheckPlan>,
        objects: &ClusterObjects,
    ) -> Vec<Problem> {
        self.served.retain(|port, served| {
            let keep = checks.contains_key(port);
            if !keep {
                served.task.abort();
                tracing::info!(port, "health check closed");
            }
            keep
        });
        let mut problems = Vec::new();
        for (port, check) in checks {
            if let Some(served) = self.served.get(port) {
                if served.entry.load().check != *check {
                    served
                        .entry
                        .store(Arc::new(server::Prepared::new(check.clone())));
                }
                continue;
            }
            let addr = SocketAddr::from((self.bind, *port));
            let entry = Arc::new(ArcSwap::from_pointee(server::Prepared::new(check.clone())));
            match server::serve_service(addr, entry.clone(), self.proxy.clone()) {
                Ok(task) => {
                    tracing::info!(%addr, service = %check.service, "health check listening");
                    self.served.insert(*port, Served { entry, task });
                }
                Err(error) => {
                    tracing::error!(%addr, service = %check.service, %error, "health check port");
                    problems.push(Problem {
                        severity: crate::model::Severity::Error,
                        origin: objects
                            .services
                            .get(&check.service)
                            .map_or_else(String::new, |s| s.origin.to_string()),
                        object: format!("Service {}", check.service),
                        field: "spec.healthCheckNodePort".to_string(),
                        message: format!("cannot listen on {addr}: {error}"),
                    });
                }
            }
        }
        problems
    }
}

impl Drop for HealthSink {
    fn drop(&mut self) {
        for served in self.served.values() {
            served.task.abort();
        }
    }
}

/// Binds `addr` and serves kube-proxy's `/healthz` and `/livez` on it; the bound address.
pub fn serve_node_health(addr: SocketAddr, proxy: Arc<ProxyHealth>) -> std::io::Result<SocketAddr> {
    server::serve_node(addr, proxy)
}

#[cfg(test)]
mod tests;
