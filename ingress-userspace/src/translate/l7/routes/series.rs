//! The labels of a route's ingress-nginx-compatible request series (`--metrics-compat nginx`)
//! and the lock-free counters behind them.
//!
//! The translator knows a rule's host, path, Ingress and Service, so it writes them once per
//! route ([`RouteSeries`]); the proxy fills in the counters when it builds its router (carried
//! over reloads by its metrics book) and a request only touches atomics: its (canary, method,
//! status) picks one of a fixed number of slots, claimed with a compare-and-swap the first time
//! the combination is seen. Nothing is allocated or looked up by string per request.

use std::sync::{
    atomic::{AtomicU32, AtomicU64, Ordering},
    Arc, OnceLock,
};

use crate::model::ObjectName;

/// ingress-nginx's `--time-buckets` default (Prometheus' default buckets), in seconds.
pub const TIME_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// ingress-nginx's `--length-buckets` default (linear, 10 to 100), in bytes.
pub const LENGTH_BUCKETS: [f64; 10] = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0];
/// ingress-nginx's `--size-buckets` default (exponential, 10 to 10^7), in bytes.
pub const SIZE_BUCKETS: [f64; 7] = [10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7];

/// The `method` label values counted apart; any other method counts as `OTHER` (a label per
/// raw method would let clients create series).
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER",
];

/// Distinct (canary, method, status) combinations one route counts; further ones are counted
/// in [`SeriesCounters::overflow`] only (a route seeing more than this many is unusual).
pub const SLOTS: usize = 32;

/// What a route's series are labelled with, as ingress-nginx labels them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    /// The rule's host as written (`""`: a rule without host).
    pub host: String,
    /// The path as written in the Ingress.
    pub path: String,
    /// The Ingress (its namespace is the `namespace` label).
    pub ingress: ObjectName,
    /// The Service of the rule (the main one, also for requests a canary took).
    pub service: String,
    /// The canary's upstream name (`namespace-service-port`, as ingress-nginx names
    /// upstreams): the `canary` label of requests the canary took.
    pub canary: String,
}

/// A route's series: its labels, and the counters the proxy attaches to them.
#[derive(Debug, Default)]
pub struct RouteSeries {
    /// The labels.
    pub key: SeriesKey,
    /// Set by the proxy when it builds its router with `--metrics-compat nginx`; empty
    /// otherwise, and then requests record nothing.
    pub counters: OnceLock<Arc<SeriesCounters>>,
}

impl RouteSeries {
    /// A route's series with no counters yet.
    pub fn new(key: SeriesKey) -> Arc<Self> {
        Arc::new(Self {
            key,
            counters: OnceLock::new(),
        })
    }
}

/// A histogram: counts per bucket (not cumulative; the last is above every bound) and a sum.
#[derive(Debug)]
pub struct Buckets<const N: usize> {
    counts: [AtomicU64; N],
    /// Sum in microseconds (durations) or bytes (sizes): integers, one atomic add.
    sum: AtomicU64,
}

impl<const N: usize> Default for Buckets<N> {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Buckets<N> {
    fn observe(&self, bounds: &[f64], value: f64, sum_unit: u64) {
        let index = bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(bounds.len())
            .min(N - 1);
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(sum_unit, Ordering::Relaxed);
    }

    /// Counts per bucket (not cumulative) and the raw sum.
    pub fn read(&self) -> ([u64; N], u64) {
        (
            std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed)),
            self.sum.load(Ordering::Relaxed),
        )
    }
}

/// The counters of one (canary, method, status) of a route.
#[derive(Debug, Default)]
pub struct Slot {
    /// `request_duration_seconds`: request head to the end of the response.
    pub request_duration: Buckets<12>,
    /// `response_duration_seconds`: request sent to the endpoint to the end of the response.
    pub response_duration: Buckets<12>,
    /// `request_size`.
    pub request_size: Buckets<11>,
    /// `response_size`.
    pub response_size: Buckets<11>,
    /// `bytes_sent` (ingress-nginx fills it with the same value as `response_size`).
    pub bytes_sent: Buckets<8>,
}

/// One request as the series count it.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    /// Whether the canary took it.
    pub canary: bool,
    /// Index into [`METHODS`].
    pub method: usize,
    /// Its status code.
    pub status: u16,
    /// Request head to the end of the response.
    pub duration: std::time::Duration,
    /// Sent to the endpoint to the end of the response (`None`: no endpoint answered).
    pub upstream: Option<std::time::Duration>,
    /// Sent to the endpoint to its response head (`None`: no endpoint answered).
    pub upstream_latency: Option<std::time::Duration>,
    /// Request length (line, headers, body).
    pub request_bytes: u64,
    /// Response length (status line, headers, body).
    pub response_bytes: u64,
}

/// A route's counters (or the unrouted requests'), lock-free.
#[derive(Debug)]
pub struct SeriesCounters {
    /// Slot keys: 0 free, else `1 + canary << 20 | method << 10 | status`.
    keys: [AtomicU32; SLOTS],
    slots: [OnceLock<Box<Slot>>; SLOTS],
    /// `ingress_upstream_latency_seconds` (a summary: count and sum, in microseconds) per
    /// canary or not.
    latency: [(AtomicU64, AtomicU64); 2],
    /// Requests not counted for want of a free slot.
    pub overflow: AtomicU64,
}

impl Default for SeriesCounters {
    fn default() -> Self {
        Self {
            keys: std::array::from_fn(|_| AtomicU32::new(0)),
            slots: std::array::from_fn(|_| OnceLock::new()),
            latency: std::array::from_fn(|_| (AtomicU64::new(0), AtomicU64::new(0))),
            overflow: AtomicU64::new(0),
        }
    }
}

/// A slot's labels as [`SeriesCounters::slots`] gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotLabels {
    /// Whether its requests went to the canary.
    pub canary: bool,
    /// Its `method` label.
    pub method: &'static str,
    /// Its status code.
    pub status: u16,
}

fn micros(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

impl SeriesCounters {
    /// The index in [`METHODS`] of `method`.
    pub fn method_index(method: &http::Method) -> usize {
        METHODS
            .iter()
            .position(|m| *m == method.as_str())
            .unwrap_or(METHODS.len() - 1)
    }

    /// Counts one request.
    pub fn record(&self, o: &Observation) {
        if let (Some(latency), Some(sum_count)) =
            (o.upstream_latency, self.latency.get(usize::from(o.canary)))
        {
            sum_count.0.fetch_add(1, Ordering::Relaxed);
            sum_count.1.fetch_add(micros(latency), Ordering::Relaxed);
        }
        let method = o.method.min(METHODS.len() - 1) as u32;
        let key = 1 + ((u32::from(o.canary) << 20) | (method << 10) | u32::from(o.status.min(999)));
        let Some(slot) = self.slot(key) else {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let seconds = |d: std::time::Duration| d.as_secs_f64();
        slot.request_duration
            .observe(&TIME_BUCKETS, seconds(o.duration), micros(o.duration));
        if let Some(upstream) = o.upstream {
            slot.response_duration
                .observe(&TIME_BUCKETS, seconds(upstream), micros(upstream));
        }
        slot.request_size
            .observe(&LENGTH_BUCKETS, o.request_bytes as f64, o.request_bytes);
        slot.response_size
            .observe(&LENGTH_BUCKETS, o.response_bytes as f64, o.response_bytes);
        slot.bytes_sent
            .observe(&SIZE_BUCKETS, o.response_bytes as f64, o.response_bytes);
    }

    /// The slot of `key`, claimed if new; `None` when every slot holds another key.
    fn slot(&self, key: u32) -> Option<&Slot> {
        for (stored, slot) in self.keys.iter().zip(&self.slots) {
            let mut seen = stored.load(Ordering::Acquire);
            if seen == 0 {
                seen = match stored.compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => key,
                    Err(other) => other,
                };
            }
            if seen == key {
                // The first request of a combination allocates its slot: once per route and
                // combination, not per request.
                return Some(slot.get_or_init(Box::default));
            }
        }
        None
    }

    /// The slots in use, with their labels.
    pub fn slots(&self) -> impl Iterator<Item = (SlotLabels, &Slot)> {
        self.keys.iter().zip(&self.slots).filter_map(|(key, slot)| {
            let key = key.load(Ordering::Acquire).checked_sub(1)?;
            let slot = slot.get()?;
            let method = METHODS
                .get(((key >> 10) & 0x3ff) as usize)
                .copied()
                .unwrap_or("OTHER");
            Some((
                SlotLabels {
                    canary: key >> 20 == 1,
                    method,
                    status: (key & 0x3ff) as u16,
                },
                &**slot,
            ))
        })
    }

    /// `ingress_upstream_latency_seconds`' count and sum (microseconds), main then canary.
    pub fn latency(&self) -> [(u64, u64); 2] {
        std::array::from_fn(|i| {
            (
                self.latency[i].0.load(Ordering::Relaxed),
                self.latency[i].1.load(Ordering::Relaxed),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn observation(method: usize, status: u16, canary: bool) -> Observation {
        Observation {
            canary,
            method,
            status,
            duration: Duration::from_millis(3),
            upstream: Some(Duration::from_millis(2)),
            upstream_latency: Some(Duration::from_millis(1)),
            request_bytes: 55,
            response_bytes: 150,
        }
    }

    #[test]
    fn one_slot_per_combination_and_overflow_beyond() {
        let c = SeriesCounters::default();
        c.record(&observation(0, 200, false));
        c.record(&observation(0, 200, false));
        c.record(&observation(2, 404, true));
        let slots: Vec<_> = c
            .slots()
            .map(|(l, s)| (l, s.request_duration.read().0.iter().sum::<u64>()))
            .collect();
        assert_eq!(
            slots,
            vec![
                (
                    SlotLabels {
                        canary: false,
                        method: "GET",
                        status: 200
                    },
                    2
                ),
                (
                    SlotLabels {
                        canary: true,
                        method: "POST",
                        status: 404
                    },
                    1
                ),
            ]
        );
        let (sizes, sum) = c
            .slots()
            .next()
            .map(|(_, s)| s.request_size.read())
            .unwrap_or_default();
        // 55 bytes: above the 50 bound, within 60.
        assert_eq!((sizes[5], sum), (2, 110));
        let (bytes, _) = c
            .slots()
            .next()
            .map(|(_, s)| s.bytes_sent.read())
            .unwrap_or_default();
        assert_eq!(bytes[2], 2, "150 bytes: within 1000");
        assert_eq!(c.latency(), [(2, 2000), (1, 1000)]);
        for status in 0..SLOTS as u16 {
            c.record(&observation(1, 500 + status, false));
        }
        assert_eq!(c.slots().count(), SLOTS);
        assert_eq!(c.overflow.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn unknown_methods_count_as_other() {
        let m = http::Method::from_bytes(b"PROPFIND").map(|m| SeriesCounters::method_index(&m));
        assert_eq!(m.ok(), Some(METHODS.len() - 1));
        assert_eq!(SeriesCounters::method_index(&http::Method::PATCH), 8);
    }
}
