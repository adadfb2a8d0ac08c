//! The exposition as a scraper reads it, from all three sources at once: the exact lines, and
//! every family named in `docs/metrics.md`.

use std::{sync::Arc, time::Duration};

use super::*;
use crate::{
    datapath::sync::SyncReport,
    model::ObjectName,
    proxy::{
        metrics::{self as proxy_metrics, BackendKey, ProxyCounters, ProxyScrape},
        upstream::Backend,
    },
};

#[derive(Debug)]
struct Proxy(Vec<Arc<Backend>>, ProxyCounters);

impl Collector for Proxy {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        proxy_metrics::encode(
            &ProxyScrape {
                backends: &self.0,
                counters: &self.1,
                cert_expiry: &[(
                    ObjectName {
                        namespace: "shop".into(),
                        name: "shop-tls".into(),
                    },
                    1_930_348_800,
                )],
                access_log_dropped: Some(0),
            },
            &mut encoder,
        )
    }
}

#[test]
fn exposition_has_the_documented_names() {
    let backend = Backend::new(Vec::new(), None).with_metrics(
        BackendKey {
            ingress: ObjectName {
                namespace: "shop".into(),
                name: "front".into(),
            },
            service: "web".into(),
            port: "80".into(),
        },
        Arc::default(),
    );
    backend.metrics.record(200, Duration::from_millis(2));
    backend.metrics.record(200, Duration::from_millis(20));
    backend.metrics.record(503, Duration::from_millis(2));
    let counters = ProxyCounters::default();
    counters.unrouted.record(404, Duration::from_millis(1));
    let metrics = Metrics::new(
        Some(Box::new(Proxy(vec![Arc::new(backend)], counters))),
        None,
    );
    metrics.agent().record_reload(
        &ApplyOutcome {
            problems: Vec::new(),
            l4: Some(SyncReport::default()),
            l4_sync: Duration::from_millis(1),
            l7: None,
            l7_rebuild: Duration::ZERO,
            elapsed: Duration::from_millis(2),
        },
        Programmed {
            service_ports: Some(2),
            backends: Some(4),
            ingresses: Some(1),
            l7_backends: Some(1),
        },
    );
    let snapshot = L4Snapshot {
        frontends: vec![FrontendTraffic {
            namespace: "demo".into(),
            service: "web".into(),
            frontend: "203.0.113.10:80/TCP".into(),
            traffic: Traffic {
                packets: 10,
                bytes: 1000,
                new_flows: 2,
                no_backend: 1,
                rejected: 3,
                denied: 4,
                snat_failures: 5,
            },
            backends: vec![(
                "10.0.0.1:8080".into(),
                Traffic {
                    packets: 10,
                    bytes: 1000,
                    ..Traffic::default()
                },
            )],
            affinity_entries: Some(3),
        }],
        reasons: vec![("forward_tx", 10), ("pass_not_ours", 3)],
        conntrack_entries: 7,
        snat_mappings: 2,
    };
    let text = metrics.encode(Some(snapshot));
    let web = r#"namespace="shop",ingress="front",service="web",port="80""#;
    for line in [
            format!(r#"xdp_ingress_requests_total{{{web},status="2xx"}} 2"#),
            format!(r#"xdp_ingress_requests_total{{{web},status="5xx"}} 1"#),
            r#"xdp_ingress_requests_total{namespace="",ingress="",service="",port="",status="4xx"} 1"#.to_string(),
            format!(r#"xdp_ingress_request_duration_seconds_bucket{{le="0.005",{web}}} 2"#),
            format!(r#"xdp_ingress_request_duration_seconds_bucket{{le="+Inf",{web}}} 3"#),
            format!(r#"xdp_ingress_request_duration_seconds_count{{{web}}} 3"#),
            format!(r#"xdp_ingress_upstream_connect_errors_total{{{web}}} 0"#),
            format!(r#"xdp_ingress_upstream_retries_total{{{web}}} 0"#),
            r#"xdp_ingress_tls_handshakes_total{result="success"} 0"#.into(),
            r#"xdp_ingress_ssl_expire_time_seconds{namespace="shop",secret="shop-tls"} 1930348800"#.into(),
            "xdp_ingress_access_log_dropped_total 0".into(),
            "xdp_ingress_map_syncs_total 1".into(),
            "xdp_ingress_map_sync_errors_total 0".into(),
            "xdp_ingress_map_sync_duration_seconds_count 1".into(),
            r#"xdp_ingress_config_reloads_total{result="success"} 1"#.into(),
            "xdp_ingress_config_reload_duration_seconds_count 1".into(),
            "xdp_ingress_config_last_reload_successful 1".into(),
            "xdp_ingress_config_problems 0".into(),
            "xdp_ingress_service_ports 2".into(),
            "xdp_ingress_backends 4".into(),
            "xdp_ingress_ingresses 1".into(),
            "xdp_ingress_l7_backends 1".into(),
            "xdp_ingress_conntrack_entries 7".into(),
            "xdp_ingress_snat_mappings 2".into(),
            r#"xdp_ingress_service_affinity_entries{namespace="demo",service="web",frontend="203.0.113.10:80/TCP"} 3"#.into(),
            r#"xdp_ingress_service_packets_total{namespace="demo",service="web",frontend="203.0.113.10:80/TCP"} 10"#.into(),
            r#"xdp_ingress_service_bytes_total{namespace="demo",service="web",frontend="203.0.113.10:80/TCP"} 1000"#.into(),
            r#"xdp_ingress_service_new_flows_total{namespace="demo",service="web",frontend="203.0.113.10:80/TCP"} 2"#.into(),
            r#"xdp_ingress_service_no_backend_drops_total{namespace="demo",service="web",frontend="203.0.113.10:80/TCP"} 1"#.into(),
            r#"xdp_ingress_service_rejected_total{namespace="demo",service="web",frontend="203.0.113.10:80/TCP"} 3"#.into(),
            r#"xdp_ingress_service_source_range_drops_total{namespace="demo",service="web",frontend="203.0.113.10:80/TCP"} 4"#.into(),
            r#"xdp_ingress_service_snat_failures_total{namespace="demo",service="web",frontend="203.0.113.10:80/TCP"} 5"#.into(),
            r#"xdp_ingress_backend_packets_total{namespace="demo",service="web",frontend="203.0.113.10:80/TCP",backend="10.0.0.1:8080"} 10"#.into(),
            r#"xdp_ingress_backend_bytes_total{namespace="demo",service="web",frontend="203.0.113.10:80/TCP",backend="10.0.0.1:8080"} 1000"#.into(),
            r#"xdp_ingress_datapath_packets_total{reason="forward_tx"} 10"#.into(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in:\n{text}");
        }
    assert!(text
        .lines()
        .any(|l| l.starts_with("xdp_ingress_config_last_reload_successful_timestamp_seconds ")));
    assert!(text.ends_with("# EOF\n"), "{text}");

    // Every family named in docs/metrics.md is in the exposition, and the other way round.
    let doc = include_str!("../../../../docs/metrics.md");
    for family in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
    {
        assert!(doc.contains(&format!("`{family}")), "{family} undocumented");
    }
}
