//! `--metrics-compat nginx`: ingress-nginx's request and controller families
//! (`nginx_ingress_controller_*`), with its types, buckets and label names, so dashboards built
//! for it keep working.
//!
//! The counters are the routes' [`RouteSeries`] (labels written by the translator, counters
//! carried across reloads by the [`super::MetricsBook`]); this module attaches them when the
//! router is built and writes the exposition at scrape time. The text is written here rather
//! than through prometheus-client: its encoder has no summaries and names every counter's
//! samples `_total`, while ingress-nginx's Go exporter serves `nginx_ingress_controller_requests`
//! (text format 0.0.4) and that is the name dashboards query. In our OpenMetrics exposition
//! that family is therefore typed `unknown` (a counter's samples must end in `_total` there);
//! its values are a counter's, so `rate()` works as before.

use std::{fmt::Write as _, sync::Arc};

use http::{header, Request, Response};

use crate::{
    model::ObjectName,
    translate::l7::routes::{
        series::{
            Buckets, SeriesCounters, SeriesKey, Slot, SlotLabels, LENGTH_BUCKETS, SIZE_BUCKETS,
            TIME_BUCKETS,
        },
        Route,
    },
};

/// The constant labels ingress-nginx puts on its request and reload families.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NginxLabels {
    /// `controller_class`: the IngressClass' controller as ingress-nginx names it (`nginx`).
    pub controller_class: String,
    /// `controller_namespace`: the agent's namespace (`$POD_NAMESPACE`).
    pub controller_namespace: String,
    /// `controller_pod`: the agent's pod (`$POD_NAME`).
    pub controller_pod: String,
}

/// The prefix of every family.
const PREFIX: &str = "nginx_ingress_controller_";

/// What one scrape of the nginx families reads.
pub(crate) struct NginxScrape<'a> {
    /// The constant labels.
    pub labels: &'a NginxLabels,
    /// The current routes (each with its series, when it has one).
    pub routes: Vec<&'a Route>,
    /// Requests no route with a series took.
    pub unrouted: &'a SeriesCounters,
    /// TLS hosts and the Secret serving each.
    pub tls_hosts: &'a [(String, ObjectName)],
    /// notAfter (seconds since the epoch) per Secret.
    pub cert_expiry: &'a [(ObjectName, i64)],
    /// The last reload's result (`None`: not known here).
    pub last_reload_successful: Option<i64>,
}

/// Writes `s` as an OpenMetrics label value (backslash, quote and newline escaped): paths may
/// be regexes with backslashes.
fn escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes `{name="value",...}` (names already sorted, as the Go exporter sorts them).
fn labels(out: &mut String, pairs: &[(&str, &str)], le: Option<f64>) {
    out.push('{');
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        escape(out, value);
        out.push('"');
    }
    if let Some(le) = le {
        if !pairs.is_empty() {
            out.push(',');
        }
        if le.is_infinite() {
            out.push_str("le=\"+Inf\"");
        } else {
            let _ = write!(out, "le=\"{le:?}\"");
        }
    }
    out.push('}');
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# TYPE {PREFIX}{name} {kind}");
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}");
}

fn histogram<const N: usize>(
    out: &mut String,
    name: &str,
    pairs: &[(&str, &str)],
    bounds: &[f64],
    buckets: &Buckets<N>,
    sum_scale: f64,
) {
    let (counts, sum) = buckets.read();
    // Nothing observed (no endpoint answered): no series, as a Go histogram vector has none
    // until its first observation.
    if counts.iter().all(|c| *c == 0) {
        return;
    }
    let mut cumulative = 0;
    for (i, count) in counts.iter().enumerate() {
        cumulative += count;
        let le = bounds.get(i).copied().unwrap_or(f64::INFINITY);
        let _ = write!(out, "{PREFIX}{name}_bucket");
        labels(out, pairs, Some(le));
        let _ = writeln!(out, " {cumulative}");
    }
    let _ = write!(out, "{PREFIX}{name}_sum");
    labels(out, pairs, None);
    let _ = writeln!(out, " {:?}", sum as f64 * sum_scale);
    let _ = write!(out, "{PREFIX}{name}_count");
    labels(out, pairs, None);
    let _ = writeln!(out, " {cumulative}");
}

/// The series of one scrape: labels and counters, the unrouted requests' last.
fn series<'a>(scrape: &'a NginxScrape<'a>) -> Vec<(&'a SeriesKey, &'a SeriesCounters)> {
    static EMPTY: std::sync::OnceLock<SeriesKey> = std::sync::OnceLock::new();
    let mut all: Vec<(&SeriesKey, &SeriesCounters)> = scrape
        .routes
        .iter()
        .filter_map(|route| {
            let series = route.series.as_ref()?;
            Some((&series.key, &**series.counters.get()?))
        })
        .collect();
    all.push((EMPTY.get_or_init(SeriesKey::default), scrape.unrouted));
    all
}

/// A sample's label pairs.
type Labels<'a> = &'a [(&'a str, &'a str)];

/// Writes one family's samples of one slot.
type WriteSlot = dyn Fn(&mut String, Labels<'_>, &Slot);

/// Writes the request families of every slot of every series, then the controller's.
pub(crate) fn render(scrape: &NginxScrape<'_>, out: &mut String) {
    let c = scrape.labels;
    let all = series(scrape);
    let each_slot = |out: &mut String, write: &WriteSlot| {
        let mut status = String::new();
        for (key, counters) in &all {
            for (slot_labels, slot) in counters.slots() {
                let SlotLabels {
                    canary,
                    method,
                    status: code,
                } = slot_labels;
                status.clear();
                let _ = write!(status, "{code}");
                let pairs = [
                    ("canary", if canary { key.canary.as_str() } else { "" }),
                    ("controller_class", c.controller_class.as_str()),
                    ("controller_namespace", c.controller_namespace.as_str()),
                    ("controller_pod", c.controller_pod.as_str()),
                    ("host", key.host.as_str()),
                    ("ingress", key.ingress.name.as_str()),
                    ("method", method),
                    ("namespace", key.ingress.namespace.as_str()),
                    ("path", key.path.as_str()),
                    ("service", key.service.as_str()),
                    ("status", status.as_str()),
                ];
                write(out, &pairs, slot);
            }
        }
    };

    header(
        out,
        "requests",
        "unknown",
        "The total number of client requests (a counter; typed unknown so its samples keep \
         ingress-nginx's name)",
    );
    each_slot(out, &|out, pairs, slot| {
        let _ = write!(out, "{PREFIX}requests");
        labels(out, pairs, None);
        let _ = writeln!(
            out,
            " {}",
            slot.request_duration.read().0.iter().sum::<u64>()
        );
    });
    type Family = (
        &'static str,
        &'static str,
        fn(&mut String, Labels<'_>, &Slot),
    );
    let families: [Family; 5] = [
        (
            "request_duration_seconds",
            "The request processing time in seconds",
            |out, pairs, slot| {
                let b = &slot.request_duration;
                histogram(
                    out,
                    "request_duration_seconds",
                    pairs,
                    &TIME_BUCKETS,
                    b,
                    1e-6,
                );
            },
        ),
        (
            "response_duration_seconds",
            "The time spent on receiving the response from the upstream server",
            |out, pairs, slot| {
                let b = &slot.response_duration;
                histogram(
                    out,
                    "response_duration_seconds",
                    pairs,
                    &TIME_BUCKETS,
                    b,
                    1e-6,
                );
            },
        ),
        (
            "request_size",
            "The request length (including request line, header, and request body)",
            |out, pairs, slot| {
                histogram(
                    out,
                    "request_size",
                    pairs,
                    &LENGTH_BUCKETS,
                    &slot.request_size,
                    1.0,
                );
            },
        ),
        (
            "response_size",
            "The response length (including request line, header, and request body)",
            |out, pairs, slot| {
                histogram(
                    out,
                    "response_size",
                    pairs,
                    &LENGTH_BUCKETS,
                    &slot.response_size,
                    1.0,
                );
            },
        ),
        (
            "bytes_sent",
            "DEPRECATED The number of bytes sent to a client",
            |out, pairs, slot| {
                histogram(
                    out,
                    "bytes_sent",
                    pairs,
                    &SIZE_BUCKETS,
                    &slot.bytes_sent,
                    1.0,
                );
            },
        ),
    ];
    for (name, help, write) in families {
        header(out, name, "histogram", help);
        each_slot(out, &write);
    }

    header(
        out,
        "ingress_upstream_latency_seconds",
        "summary",
        "DEPRECATED Upstream service latency per Ingress (count and sum; no quantiles)",
    );
    for (key, counters) in &all {
        for (canary, (count, sum_micros)) in [false, true].into_iter().zip(counters.latency()) {
            if count == 0 {
                continue;
            }
            let pairs = [
                ("canary", if canary { key.canary.as_str() } else { "" }),
                ("controller_class", c.controller_class.as_str()),
                ("controller_namespace", c.controller_namespace.as_str()),
                ("controller_pod", c.controller_pod.as_str()),
                ("ingress", key.ingress.name.as_str()),
                ("namespace", key.ingress.namespace.as_str()),
                ("service", key.service.as_str()),
            ];
            let name = "ingress_upstream_latency_seconds";
            let _ = write!(out, "{PREFIX}{name}_sum");
            labels(out, &pairs, None);
            let _ = writeln!(out, " {:?}", sum_micros as f64 / 1e6);
            let _ = write!(out, "{PREFIX}{name}_count");
            labels(out, &pairs, None);
            let _ = writeln!(out, " {count}");
        }
    }

    header(
        out,
        "ssl_expire_time_seconds",
        "gauge",
        "Number of seconds since 1970 to the SSL Certificate expire",
    );
    for (host, secret) in scrape.tls_hosts {
        let Some((_, not_after)) = scrape.cert_expiry.iter().find(|(s, _)| s == secret) else {
            continue;
        };
        let _ = write!(out, "{PREFIX}ssl_expire_time_seconds");
        labels(
            out,
            &[
                ("class", c.controller_class.as_str()),
                ("host", host.as_str()),
                ("namespace", c.controller_namespace.as_str()),
                ("secret_name", secret.name.as_str()),
            ],
            None,
        );
        let _ = writeln!(out, " {not_after}");
    }

    if let Some(success) = scrape.last_reload_successful {
        header(
            out,
            "config_last_reload_successful",
            "gauge",
            "Whether the last configuration reload attempt was successful",
        );
        let _ = write!(out, "{PREFIX}config_last_reload_successful");
        labels(
            out,
            &[
                ("controller_class", c.controller_class.as_str()),
                ("controller_namespace", c.controller_namespace.as_str()),
                ("controller_pod", c.controller_pod.as_str()),
            ],
            None,
        );
        let _ = writeln!(out, " {success}");
    }
}

/// nginx's `$request_length` as near as hyper lets us see it: the request line and headers as
/// HTTP/1.1 writes them, plus the declared body length (a chunked body's is not known here).
pub(crate) fn request_length<B>(request: &Request<B>) -> u64 {
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |pq| pq.as_str().len());
    // "METHOD target HTTP/1.1\r\n"
    let line = request.method().as_str().len() + 1 + target + 11;
    let body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    (line + headers_length(request.headers()) + 2) as u64 + body
}

/// The status line and headers of `response` as HTTP/1.1 writes them (nginx's `$bytes_sent`
/// counts them; the body bytes are added as they go out).
pub(crate) fn response_head_length<B>(response: &Response<B>) -> u64 {
    // "HTTP/1.1 200 OK\r\n"
    let reason = response.status().canonical_reason().map_or(0, str::len);
    (15 + reason + headers_length(response.headers()) + 2) as u64
}

/// `name: value\r\n` for every header.
fn headers_length(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// Attaches counters to every route series of `routes` (from `book`, so totals continue across
/// reloads).
pub(crate) fn attach<'a>(routes: impl Iterator<Item = &'a Route>, book: &mut super::MetricsBook) {
    for route in routes {
        if let Some(series) = &route.series {
            let counters = book.series(&series.key);
            // Already set when the same table is applied again: the same counters.
            let _ = series.counters.set(counters);
        }
    }
}

/// Keeps only `routes`' series in `book`.
pub(crate) fn retain<'a>(routes: impl Iterator<Item = &'a Route>, book: &mut super::MetricsBook) {
    let keep: std::collections::HashSet<&SeriesKey> = routes
        .filter_map(|route| route.series.as_ref().map(|s| &s.key))
        .collect();
    book.retain_series(|key| keep.contains(key));
}

/// Arc of the unrouted counters, shared by every request that matched no series.
pub(crate) type Unrouted = Arc<SeriesCounters>;

#[cfg(test)]
mod tests;
