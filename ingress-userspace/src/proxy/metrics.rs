//! Request counters for `/metrics`, kept without locks or allocations on the request path.
//!
//! Every backend (`upstream::Backend`) owns one [`RequestMetrics`]: a fixed array of
//! atomics per status class and per duration bucket, bumped once per request when its response
//! body drops. Requests that found no backend (no rule: 404; a bad request: 400) count in a
//! proxy-wide set with empty labels, as ingress-nginx does for its default backend. The collector
//! walks the current router's backends at scrape time, so nothing is registered per backend.
//!
//! A reload builds new `Backend`s; [`MetricsBook`] hands them the counters of the backend with
//! the same (Ingress, Service, port), so totals never go backwards across reloads.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
};

use crate::{
    model::ObjectName,
    translate::l7::{
        routes::series::{SeriesCounters, SeriesKey},
        BackendPlan,
    },
};

pub(crate) mod nginx;

/// Upper bounds of the request duration histogram, in seconds: Prometheus' default buckets,
/// which ingress-nginx's `request_duration_seconds` also uses.
pub(crate) const DURATION_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `status` label of each class, index 0 = 1xx.
pub(crate) const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Counters of the requests to one backend (or to none).
#[derive(Debug, Default)]
pub(crate) struct RequestMetrics {
    /// Responses by status class (1xx..5xx).
    statuses: [AtomicU64; 5],
    /// Requests per duration bucket, not cumulative; the last one is above every bound (+Inf).
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    /// Sum of durations, in microseconds (an integer, so one atomic add suffices).
    duration_micros: AtomicU64,
    /// Connections to an endpoint that failed (refused, timed out, handshake failed).
    connect_errors: AtomicU64,
    /// Requests sent again: to another endpoint after a failed connect, or on a new connection
    /// after a pooled one turned out closed.
    retries: AtomicU64,
}

/// A consistent-enough copy of [`RequestMetrics`] for one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RequestSnapshot {
    /// Responses by status class, index 0 = 1xx.
    pub statuses: [u64; 5],
    /// Requests per bucket (not cumulative), in [`DURATION_BUCKETS`] order, then above them all.
    pub buckets: [u64; DURATION_BUCKETS.len() + 1],
    /// Requests measured.
    pub count: u64,
    /// Sum of durations, in seconds.
    pub sum_seconds: f64,
    /// Failed connects.
    pub connect_errors: u64,
    /// Requests sent again.
    pub retries: u64,
}

impl RequestMetrics {
    /// Counts one answered request: its status and how long it took.
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        // Out-of-range codes cannot come from hyper; clamp rather than index out of bounds.
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.statuses[class].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.duration_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts a failed connect to an endpoint.
    pub(crate) fn connect_error(&self) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request sent again.
    pub(crate) fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter (each atomically; the set may straddle a request, which a scrape
    /// tolerates).
    pub(crate) fn snapshot(&self) -> RequestSnapshot {
        let mut snapshot = RequestSnapshot::default();
        for (out, counter) in snapshot.statuses.iter_mut().zip(&self.statuses) {
            *out = counter.load(Ordering::Relaxed);
        }
        for (out, counter) in snapshot.buckets.iter_mut().zip(&self.buckets) {
            *out = counter.load(Ordering::Relaxed);
        }
        snapshot.count = snapshot.buckets.iter().sum();
        snapshot.sum_seconds = self.duration_micros.load(Ordering::Relaxed) as f64 / 1e6;
        snapshot.connect_errors = self.connect_errors.load(Ordering::Relaxed);
        snapshot.retries = self.retries.load(Ordering::Relaxed);
        snapshot
    }
}

/// What a backend's series are labelled with: the Ingress, the Service and its port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BackendKey {
    /// The Ingress (its namespace is the Service's too).
    pub ingress: ObjectName,
    /// The Service's name.
    pub service: String,
    /// The Service port, as the Ingress names it (number or name).
    pub port: String,
}

impl BackendKey {
    /// The key of a plan backend.
    pub(crate) fn of(plan: &BackendPlan) -> Self {
        Self {
            ingress: plan.ingress.clone(),
            service: plan.service.name.clone(),
            port: plan.port.to_string(),
        }
    }
}

/// Counters by backend key, so a rebuilt router continues the old one's totals.
#[derive(Debug, Default)]
pub(crate) struct MetricsBook {
    by_key: HashMap<BackendKey, Arc<RequestMetrics>>,
    /// `--metrics-compat nginx`: the routes' series by their labels.
    series: HashMap<SeriesKey, Arc<SeriesCounters>>,
}

impl MetricsBook {
    /// The counters for `key`: the existing ones, or new zeroed ones.
    pub(crate) fn get(&mut self, key: &BackendKey) -> Arc<RequestMetrics> {
        self.by_key.entry(key.clone()).or_default().clone()
    }

    /// Forgets the counters of keys the current plan no longer has: their series disappear from
    /// `/metrics` (and restart from zero if the backend comes back, which Prometheus' `rate`
    /// reads as a counter reset).
    pub(crate) fn retain(&mut self, plan: &[BackendPlan]) {
        let keep: std::collections::HashSet<BackendKey> = plan.iter().map(BackendKey::of).collect();
        self.by_key.retain(|key, _| keep.contains(key));
    }

    /// The counters of a route's series: the existing ones, or new zeroed ones.
    pub(crate) fn series(&mut self, key: &SeriesKey) -> Arc<SeriesCounters> {
        self.series.entry(key.clone()).or_default().clone()
    }

    /// Forgets the series `keep` refuses.
    pub(crate) fn retain_series(&mut self, keep: impl Fn(&SeriesKey) -> bool) {
        self.series.retain(|key, _| keep(key));
    }
}

/// Proxy-wide counters that belong to no backend.
#[derive(Debug, Default)]
pub(crate) struct ProxyCounters {
    /// Requests no backend took (404 no rule, 400 bad request or no Host).
    pub unrouted: Arc<RequestMetrics>,
    /// TLS handshakes completed.
    pub tls_handshakes: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// HTTP/1.1 connections parked after being quiet (their hyper buffers released).
    pub parked: AtomicU64,
    /// Client connections closed or requests ended by a client timeout, by kind.
    pub client_timeouts: ClientTimeouts,
    /// Idle connections closed to make room at `--max-connections` or when out of descriptors.
    pub shed_idle: AtomicU64,
    /// New connections closed at once: the listener was full and no connection was idle.
    pub refused: AtomicU64,
    /// TLS passthrough connections.
    pub passthrough: super::passthrough::PassthroughCounters,
    /// `--metrics-compat nginx`: requests no route series took (empty labels, as nginx).
    pub nginx_unrouted: nginx::Unrouted,
}

/// Client timeouts by kind (`xdp_ingress_client_timeouts_total{kind}`).
#[derive(Debug, Default)]
pub(crate) struct ClientTimeouts {
    /// A write to the client made no progress for `--client-send-timeout`, or HTTP/2 responses
    /// waited that long for the client's flow-control window.
    pub send: AtomicU64,
    /// A request body made no progress for `--client-body-timeout` (408).
    pub body: AtomicU64,
    /// An HTTP/2 connection had no stream for `--client-idle-timeout` (GOAWAY).
    pub idle_h2: AtomicU64,
    /// A connection sent no complete request within `--client-header-timeout` of its start.
    pub first_request: AtomicU64,
}

/// A backend as `/metrics` sees it: its labels and its counters. The upstream side implements
/// this, so counters depend on nothing there and the dependency goes one way (upstream ->
/// metrics).
pub(crate) trait BackendSeries {
    /// The labels of its series (`None`: a backend built outside a plan).
    fn series_key(&self) -> Option<&BackendKey>;
    /// Its request counters.
    fn request_metrics(&self) -> &RequestMetrics;
}

/// What the proxy collector reads at scrape time.
pub(crate) struct ProxyScrape<'a, B> {
    /// The current router's backends.
    pub backends: &'a [Arc<B>],
    /// The proxy-wide counters.
    pub counters: &'a ProxyCounters,
    /// Expiry (notAfter, seconds since the epoch) of each Secret's leaf certificate.
    pub cert_expiry: &'a [(ObjectName, i64)],
    /// Access-log lines dropped (`None`: no access log).
    pub access_log_dropped: Option<u64>,
}

/// Writes the proxy's metric families (names and meanings in `docs/metrics.md`).
pub(crate) fn encode<B: BackendSeries>(
    scrape: &ProxyScrape<'_, B>,
    encoder: &mut DescriptorEncoder,
) -> std::fmt::Result {
    let unrouted = scrape.counters.unrouted.snapshot();
    let snapshots: Vec<(Option<&BackendKey>, RequestSnapshot)> = scrape
        .backends
        .iter()
        .map(|b| (b.series_key(), b.request_metrics().snapshot()))
        .chain(std::iter::once((None, unrouted)))
        .collect();
    // Unrouted requests carry empty labels, like ingress-nginx's default backend.
    let labels = |key: Option<&BackendKey>| -> [(&'static str, String); 4] {
        match key {
            Some(k) => [
                ("namespace", k.ingress.namespace.clone()),
                ("ingress", k.ingress.name.clone()),
                ("service", k.service.clone()),
                ("port", k.port.clone()),
            ],
            None => [
                ("namespace", String::new()),
                ("ingress", String::new()),
                ("service", String::new()),
                ("port", String::new()),
            ],
        }
    };

    let mut family = encoder.encode_descriptor(
        "xdp_ingress_requests",
        "HTTP requests answered, by Ingress, Service, Service port and status class",
        None,
        MetricType::Counter,
    )?;
    for (key, snapshot) in &snapshots {
        let base = labels(*key);
        for (class, count) in STATUS_CLASSES.iter().zip(snapshot.statuses) {
            // A class never seen has no series, as in ingress-nginx: 5 classes per backend would
            // multiply the series count for nothing.
            if count == 0 {
                continue;
            }
            let set = (base.clone(), [("status", *class)]);
            family
                .encode_family(&set)?
                .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }
    }

    let mut family = encoder.encode_descriptor(
        "xdp_ingress_request_duration_seconds",
        "Time from the request head to the end of the response, by Ingress, Service and port",
        None,
        MetricType::Histogram,
    )?;
    for (key, snapshot) in &snapshots {
        if key.is_none() && snapshot.count == 0 {
            continue;
        }
        let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(snapshot.buckets)
            .collect();
        family
            .encode_family(&labels(*key))?
            .encode_histogram::<NoLabelSet>(snapshot.sum_seconds, snapshot.count, &buckets, None)?;
    }

    for (name, help, read) in [
        (
            "xdp_ingress_upstream_connect_errors",
            "Connections to an endpoint that failed (refused, timed out, HTTP handshake failed)",
            (|s: &RequestSnapshot| s.connect_errors) as fn(&RequestSnapshot) -> u64,
        ),
        (
            "xdp_ingress_upstream_retries",
            "Requests sent again: to another endpoint after a failed connect, or on a new \
             connection after a pooled one was found closed",
            |s: &RequestSnapshot| s.retries,
        ),
    ] {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (key, snapshot) in &snapshots {
            if key.is_none() {
                continue;
            }
            family
                .encode_family(&labels(*key))?
                .encode_counter::<NoLabelSet, _, u64>(&read(snapshot), None)?;
        }
    }

    let mut family = encoder.encode_descriptor(
        "xdp_ingress_tls_handshakes",
        "TLS handshakes on the HTTPS listener, by result (success, failure: failed or timed out)",
        None,
        MetricType::Counter,
    )?;
    for (result, counter) in [
        ("success", &scrape.counters.tls_handshakes),
        ("failure", &scrape.counters.tls_handshake_failures),
    ] {
        family
            .encode_family(&[("result", result)])?
            .encode_counter::<NoLabelSet, _, u64>(&counter.load(Ordering::Relaxed), None)?;
    }

    let mut family = encoder.encode_descriptor(
        "xdp_ingress_connections_parked",
        "Times an idle HTTP/1.1 keep-alive connection was parked: its per-connection buffers \
         released until the client sends again",
        None,
        MetricType::Counter,
    )?;
    family.encode_counter::<NoLabelSet, _, u64>(
        &scrape.counters.parked.load(Ordering::Relaxed),
        None,
    )?;

    let timeouts = &scrape.counters.client_timeouts;
    let mut family = encoder.encode_descriptor(
        "xdp_ingress_client_timeouts",
        "Client connections closed, or requests ended, by a client timeout: send (the client \
         did not read), body (request body too slow: 408), idle_h2 (HTTP/2 without streams: \
         GOAWAY), first_request (no request within the header timeout of the connection's start)",
        None,
        MetricType::Counter,
    )?;
    for (kind, counter) in [
        ("send", &timeouts.send),
        ("body", &timeouts.body),
        ("idle_h2", &timeouts.idle_h2),
        ("first_request", &timeouts.first_request),
    ] {
        family
            .encode_family(&[("kind", kind)])?
            .encode_counter::<NoLabelSet, _, u64>(&counter.load(Ordering::Relaxed), None)?;
    }

    let mut family = encoder.encode_descriptor(
        "xdp_ingress_connections_shed",
        "Client connections closed for room: idle (an idle connection closed for a new one at \
         --max-connections or out of descriptors), refused (a new one closed: full, none idle)",
        None,
        MetricType::Counter,
    )?;
    for (action, counter) in [
        ("idle", &scrape.counters.shed_idle),
        ("refused", &scrape.counters.refused),
    ] {
        family
            .encode_family(&[("action", action)])?
            .encode_counter::<NoLabelSet, _, u64>(&counter.load(Ordering::Relaxed), None)?;
    }

    let mut family = encoder.encode_descriptor(
        "xdp_ingress_ssl_expire_time_seconds",
        "notAfter of the leaf certificate of each TLS Secret in use, in seconds since the epoch",
        None,
        MetricType::Gauge,
    )?;
    for (secret, not_after) in scrape.cert_expiry {
        family
            .encode_family(&[
                ("namespace", secret.namespace.as_str()),
                ("secret", secret.name.as_str()),
            ])?
            .encode_gauge(not_after)?;
    }

    super::passthrough::encode(&scrape.counters.passthrough, encoder)?;

    if let Some(dropped) = scrape.access_log_dropped {
        encoder
            .encode_descriptor(
                "xdp_ingress_access_log_dropped",
                "Access-log lines dropped because the writer fell behind",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&dropped, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_status_class_and_bucket() {
        let m = RequestMetrics::default();
        m.record(200, Duration::from_millis(3));
        m.record(204, Duration::from_millis(30));
        m.record(404, Duration::from_millis(3));
        m.record(503, Duration::from_secs(20));
        m.record(101, Duration::ZERO);
        m.connect_error();
        m.retry();
        let s = m.snapshot();
        assert_eq!(s.statuses, [1, 2, 0, 1, 1]);
        assert_eq!(s.count, 5);
        // ≤ 5 ms: 101, 200, 404; ≤ 50 ms: the 204; the 20 s one above every bound.
        assert_eq!(s.buckets[0], 3);
        assert_eq!(s.buckets[3], 1);
        assert_eq!(s.buckets[DURATION_BUCKETS.len()], 1);
        assert!((s.sum_seconds - 20.036).abs() < 1e-6, "{}", s.sum_seconds);
        assert_eq!((s.connect_errors, s.retries), (1, 1));
    }
}
