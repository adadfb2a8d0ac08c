//! ingress-nginx's ConfigMap: defaults without it, each key read, bad values keeping their
//! key's default only, unknown keys in one warning.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::*;
use crate::model::Origin;

fn name() -> ObjectName {
    ObjectName {
        namespace: "ingress-nginx".into(),
        name: "ingress-nginx-controller".into(),
    }
}

fn objects_with(data: &[(&str, &str)]) -> ClusterObjects {
    let mut objects = ClusterObjects::default();
    let config_map = ConfigMap {
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..ConfigMap::default()
    };
    objects.config_maps.insert(
        name(),
        Sourced {
            object: config_map,
            origin: Origin::Api,
        },
    );
    objects
}

fn read_data(data: &[(&str, &str)]) -> (NginxDefaults, Vec<Problem>) {
    let mut problems = Vec::new();
    let defaults = read(&objects_with(data), Some(&name()), &mut problems);
    (defaults, problems)
}

#[test]
fn ingress_nginx_defaults_without_the_configmap() {
    let mut problems = Vec::new();
    let defaults = read(&ClusterObjects::default(), None, &mut problems);
    assert!(problems.is_empty());
    assert!(defaults.ssl_redirect && !defaults.force_ssl_redirect);
    assert_eq!(defaults.http_redirect_code, StatusCode::PERMANENT_REDIRECT);
    assert!(!defaults.use_forwarded_headers);
    assert_eq!(
        defaults.hsts.as_ref().map(|v| v.to_str().unwrap()),
        Some("max-age=31536000; includeSubDomains")
    );
    assert_eq!(defaults.proxy_body_size, 1 << 20);
    assert_eq!(
        defaults.limit_req_status_code,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(defaults.proxy_connect_timeout, Duration::from_secs(5));
    assert_eq!(defaults.proxy_read_timeout, Duration::from_secs(60));
    assert_eq!(defaults.proxy_send_timeout, Duration::from_secs(60));
    // Named but absent: an error naming the flag, and the defaults.
    let defaults = read(&ClusterObjects::default(), Some(&name()), &mut problems);
    assert_eq!(defaults, NginxDefaults::default());
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].object,
        "ConfigMap ingress-nginx/ingress-nginx-controller"
    );
    assert_eq!(problems[0].origin, "--nginx-configmap");
}

#[test]
fn every_key_is_read() {
    let (defaults, problems) = read_data(&[
        ("ssl-redirect", "false"),
        ("force-ssl-redirect", "true"),
        ("http-redirect-code", "301"),
        ("use-forwarded-headers", "true"),
        ("hsts-max-age", "600"),
        ("hsts-include-subdomains", "false"),
        ("hsts-preload", "true"),
        ("whitelist-source-range", "192.0.2.0/24, 198.51.100.7"),
        ("proxy-body-size", "8m"),
        ("limit-req-status-code", "429"),
        ("proxy-connect-timeout", "10"),
        ("proxy-read-timeout", "120"),
        ("proxy-send-timeout", "30"),
    ]);
    assert_eq!(problems, []);
    assert!(!defaults.ssl_redirect && defaults.force_ssl_redirect);
    assert_eq!(defaults.http_redirect_code, StatusCode::MOVED_PERMANENTLY);
    assert!(defaults.use_forwarded_headers);
    assert_eq!(
        defaults.hsts.as_ref().map(|v| v.to_str().unwrap()),
        Some("max-age=600; preload")
    );
    assert_eq!(defaults.allow_source_ranges.len(), 2);
    assert_eq!(defaults.proxy_body_size, 8 << 20);
    assert_eq!(
        defaults.limit_req_status_code,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(defaults.proxy_connect_timeout, Duration::from_secs(10));
    assert_eq!(defaults.proxy_read_timeout, Duration::from_secs(120));
    assert_eq!(defaults.proxy_send_timeout, Duration::from_secs(30));
    let (defaults, _) = read_data(&[("hsts", "false")]);
    assert_eq!(defaults.hsts, None);
}

#[test]
fn a_bad_value_keeps_its_default_and_the_rest_applies() {
    let (defaults, problems) = read_data(&[
        ("ssl-redirect", "maybe"),
        ("http-redirect-code", "303"),
        ("whitelist-source-range", "192.0.2.0/24, not-a-range"),
        ("proxy-body-size", "8 megabytes"),
        ("force-ssl-redirect", "true"),
        ("worker-processes", "4"),
        ("enable-brotli", "true"),
    ]);
    assert!(defaults.ssl_redirect, "bad: default");
    assert_eq!(defaults.http_redirect_code, StatusCode::PERMANENT_REDIRECT);
    assert!(defaults.allow_source_ranges.is_empty());
    assert_eq!(defaults.proxy_body_size, 1 << 20);
    assert!(defaults.force_ssl_redirect, "good keys still apply");
    let fields: Vec<(&str, Severity)> = problems
        .iter()
        .map(|p| (p.field.as_str(), p.severity))
        .collect();
    assert_eq!(
        fields,
        [
            ("data[\"ssl-redirect\"]", Severity::Error),
            ("data[\"http-redirect-code\"]", Severity::Error),
            ("data[\"whitelist-source-range\"]", Severity::Error),
            ("data[\"proxy-body-size\"]", Severity::Error),
            ("data", Severity::Warning),
        ]
    );
    assert!(problems
        .iter()
        .all(|p| p.object == "ConfigMap ingress-nginx/ingress-nginx-controller"));
    assert!(
        problems[4]
            .message
            .ends_with("ignored: enable-brotli, worker-processes"),
        "{}",
        problems[4].message
    );
}

#[test]
fn nginx_sizes() {
    assert_eq!(nginx_size("0"), Some(0));
    assert_eq!(nginx_size("1024"), Some(1024));
    assert_eq!(nginx_size("512k"), Some(512 << 10));
    assert_eq!(nginx_size("2M"), Some(2 << 20));
    assert_eq!(nginx_size("1g"), Some(1 << 30));
    assert_eq!(nginx_size("m"), None);
    assert_eq!(nginx_size("1.5m"), None);
    assert_eq!(nginx_size("1t"), None);
}
