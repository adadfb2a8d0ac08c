//! The nginx families as a scraper reads them: names, types, label names and values, buckets.

use std::time::Duration;

use super::*;
use crate::translate::l7::routes::series::{Observation, RouteSeries};

fn name(namespace: &str, name: &str) -> ObjectName {
    ObjectName {
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn route(path: &str, canary: &str) -> Route {
    let mut route = Route::to(0, Some(name("shop", "front")));
    route.series = Some(RouteSeries::new(SeriesKey {
        host: "shop.example".into(),
        path: path.into(),
        ingress: name("shop", "front"),
        service: "web".into(),
        canary: canary.into(),
    }));
    route
}

fn observation(method: usize, status: u16, canary: bool) -> Observation {
    Observation {
        canary,
        method,
        status,
        duration: Duration::from_millis(30),
        upstream: Some(Duration::from_millis(20)),
        upstream_latency: Some(Duration::from_millis(10)),
        request_bytes: 75,
        response_bytes: 450,
    }
}

fn render_for(routes: Vec<&Route>, unrouted: &SeriesCounters) -> String {
    let labels = NginxLabels {
        controller_class: "k8s.io/ingress-nginx".into(),
        controller_namespace: "ingress".into(),
        controller_pod: "agent-x".into(),
    };
    let mut out = String::new();
    render(
        &NginxScrape {
            labels: &labels,
            routes,
            unrouted,
            tls_hosts: &[("shop.example".into(), name("shop", "shop-tls"))],
            cert_expiry: &[(name("shop", "shop-tls"), 1_930_348_800)],
            last_reload_successful: Some(1),
        },
        &mut out,
    );
    out
}

/// The label names of a sample line, in order.
fn label_names(line: &str) -> Vec<&str> {
    let Some(inner) = line
        .split_once('{')
        .and_then(|(_, rest)| rest.rsplit_once('}'))
    else {
        return Vec::new();
    };
    inner
        .0
        .split("\",")
        .filter_map(|pair| pair.split_once('=').map(|(n, _)| n))
        .collect()
}

#[test]
fn families_types_labels_and_buckets_are_ingress_nginx_s() {
    let routed = route("/api", "shop-web-canary-80");
    let plain = route("/(.*)\\.png", "");
    let mut book = crate::proxy::metrics::MetricsBook::default();
    attach([&routed, &plain].into_iter(), &mut book);
    let counters = routed
        .series
        .as_ref()
        .and_then(|s| s.counters.get())
        .cloned();
    let Some(counters) = counters else {
        panic!("attach gave no counters");
    };
    counters.record(&observation(0, 200, false));
    counters.record(&observation(0, 200, false));
    counters.record(&observation(2, 503, true));
    let unrouted = SeriesCounters::default();
    unrouted.record(&Observation {
        upstream: None,
        upstream_latency: None,
        ..observation(0, 404, false)
    });
    let text = render_for(vec![&routed, &plain], &unrouted);

    let types: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert_eq!(
        types,
        vec![
            ("nginx_ingress_controller_requests", "unknown"),
            (
                "nginx_ingress_controller_request_duration_seconds",
                "histogram"
            ),
            (
                "nginx_ingress_controller_response_duration_seconds",
                "histogram"
            ),
            ("nginx_ingress_controller_request_size", "histogram"),
            ("nginx_ingress_controller_response_size", "histogram"),
            ("nginx_ingress_controller_bytes_sent", "histogram"),
            (
                "nginx_ingress_controller_ingress_upstream_latency_seconds",
                "summary"
            ),
            ("nginx_ingress_controller_ssl_expire_time_seconds", "gauge"),
            (
                "nginx_ingress_controller_config_last_reload_successful",
                "gauge"
            ),
        ]
    );

    let request_labels = [
        "canary",
        "controller_class",
        "controller_namespace",
        "controller_pod",
        "host",
        "ingress",
        "method",
        "namespace",
        "path",
        "service",
        "status",
    ];
    for line in [
        r#"nginx_ingress_controller_requests{canary="",controller_class="k8s.io/ingress-nginx",controller_namespace="ingress",controller_pod="agent-x",host="shop.example",ingress="front",method="GET",namespace="shop",path="/api",service="web",status="200"} 2"#,
        r#"nginx_ingress_controller_requests{canary="shop-web-canary-80",controller_class="k8s.io/ingress-nginx",controller_namespace="ingress",controller_pod="agent-x",host="shop.example",ingress="front",method="POST",namespace="shop",path="/api",service="web",status="503"} 1"#,
        // Unmatched: empty labels, as nginx's default server.
        r#"nginx_ingress_controller_requests{canary="",controller_class="k8s.io/ingress-nginx",controller_namespace="ingress",controller_pod="agent-x",host="",ingress="",method="GET",namespace="",path="",service="",status="404"} 1"#,
        // 30 ms: in the 0.05 bucket, not the 0.025 one.
        r#"nginx_ingress_controller_request_duration_seconds_bucket{canary="",controller_class="k8s.io/ingress-nginx",controller_namespace="ingress",controller_pod="agent-x",host="shop.example",ingress="front",method="GET",namespace="shop",path="/api",service="web",status="200",le="0.025"} 0"#,
        r#"nginx_ingress_controller_request_duration_seconds_bucket{canary="",controller_class="k8s.io/ingress-nginx",controller_namespace="ingress",controller_pod="agent-x",host="shop.example",ingress="front",method="GET",namespace="shop",path="/api",service="web",status="200",le="0.05"} 2"#,
        r#"nginx_ingress_controller_request_duration_seconds_count{canary="",controller_class="k8s.io/ingress-nginx",controller_namespace="ingress",controller_pod="agent-x",host="shop.example",ingress="front",method="GET",namespace="shop",path="/api",service="web",status="200"} 2"#,
        // 75 bytes: linear buckets 10..100.
        r#"nginx_ingress_controller_request_size_bucket{canary="",controller_class="k8s.io/ingress-nginx",controller_namespace="ingress",controller_pod="agent-x",host="shop.example",ingress="front",method="GET",namespace="shop",path="/api",service="web",status="200",le="80.0"} 2"#,
        r#"nginx_ingress_controller_response_size_bucket{canary="",controller_class="k8s.io/ingress-nginx",controller_namespace="ingress",controller_pod="agent-x",host="shop.example",ingress="front",method="GET",namespace="shop",path="/api",service="web",status="200",le="+Inf"} 2"#,
        // 450 bytes: exponential buckets 10..10^7.
        r#"nginx_ingress_controller_bytes_sent_bucket{canary="",controller_class="k8s.io/ingress-nginx",controller_namespace="ingress",controller_pod="agent-x",host="shop.example",ingress="front",method="GET",namespace="shop",path="/api",service="web",status="200",le="1000.0"} 2"#,
        r#"nginx_ingress_controller_bytes_sent_sum{canary="",controller_class="k8s.io/ingress-nginx",controller_namespace="ingress",controller_pod="agent-x",host="shop.example",ingress="front",method="GET",namespace="shop",path="/api",service="web",status="200"} 900.0"#,
        r#"nginx_ingress_controller_ingress_upstream_latency_seconds_count{canary="",controller_class="k8s.io/ingress-nginx",controller_namespace="ingress",controller_pod="agent-x",ingress="front",namespace="shop",service="web"} 2"#,
        r#"nginx_ingress_controller_ingress_upstream_latency_seconds_count{canary="shop-web-canary-80",controller_class="k8s.io/ingress-nginx",controller_namespace="ingress",controller_pod="agent-x",ingress="front",namespace="shop",service="web"} 1"#,
        r#"nginx_ingress_controller_ssl_expire_time_seconds{class="k8s.io/ingress-nginx",host="shop.example",namespace="ingress",secret_name="shop-tls"} 1930348800"#,
        r#"nginx_ingress_controller_config_last_reload_successful{controller_class="k8s.io/ingress-nginx",controller_namespace="ingress",controller_pod="agent-x"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
    // Every sample carries exactly ingress-nginx's label names for its family.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let names = label_names(line);
        let family = line.split('{').next().unwrap_or_default();
        let expected: Vec<&str> = if family.contains("upstream_latency") {
            vec![
                "canary",
                "controller_class",
                "controller_namespace",
                "controller_pod",
                "ingress",
                "namespace",
                "service",
            ]
        } else if family.ends_with("_bucket") {
            request_labels.iter().copied().chain(["le"]).collect()
        } else if family.contains("ssl_expire") {
            vec!["class", "host", "namespace", "secret_name"]
        } else if family.contains("config_last_reload") {
            vec!["controller_class", "controller_namespace", "controller_pod"]
        } else {
            request_labels.to_vec()
        };
        assert_eq!(names, expected, "{line}");
    }
    // The route that saw no request has no series; the unrouted one has no upstream latency.
    assert!(!text.contains("png"), "{text}");
    assert!(
        !text.contains(r#"ingress="",namespace="",service=""} "#),
        "{text}"
    );

    // Every family is documented.
    let doc = include_str!("../../../../../docs/metrics.md");
    for (family, _) in types {
        assert!(
            doc.contains(&format!("`{family}`")),
            "{family} undocumented"
        );
    }
}

#[test]
fn totals_survive_a_rebuild_and_label_values_are_escaped() {
    let mut book = crate::proxy::metrics::MetricsBook::default();
    let first = route("/a\\d+\"", "");
    attach(std::iter::once(&first), &mut book);
    if let Some(c) = first.series.as_ref().and_then(|s| s.counters.get()) {
        c.record(&observation(1, 200, false));
    }
    // A reload: a new route with the same labels continues the same counters.
    let second = route("/a\\d+\"", "");
    retain(std::iter::once(&second), &mut book);
    attach(std::iter::once(&second), &mut book);
    if let Some(c) = second.series.as_ref().and_then(|s| s.counters.get()) {
        c.record(&observation(1, 200, false));
    }
    let text = render_for(vec![&second], &SeriesCounters::default());
    assert!(
        text.contains(
            r#"method="HEAD",namespace="shop",path="/a\\d+\"",service="web",status="200"} 2"#
        ),
        "{text}"
    );
    // A reload without the route forgets its counters.
    retain(std::iter::empty(), &mut book);
    let third = route("/a\\d+\"", "");
    attach(std::iter::once(&third), &mut book);
    let text = render_for(vec![&third], &SeriesCounters::default());
    assert!(!text.contains("HEAD"), "{text}");
}
