//! ingress-nginx's ConfigMap through the translator: its keys become what an Ingress without
//! the annotation gets; an annotation still wins.

use std::time::Duration;

use super::*;
use crate::translate::l7::Filter;

const CONFIG_MAP: &str = r#"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ingress-nginx-controller, namespace: ingress-nginx}
data:
  ssl-redirect: "false"
  http-redirect-code: "301"
  hsts-max-age: "600"
  whitelist-source-range: "192.0.2.0/24"
"#;

const SECRET: &str = r#"
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: demo}
type: kubernetes.io/tls
stringData: {tls.crt: "x", tls.key: "y"}
"#;

/// Ingress `name` for `host` (with a certificate), with `annotations` (keys without prefix).
fn tls_ingress(name: &str, host: &str, annotations: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: demo, annotations: {{{annotations}}}}}\nspec:\n  tls:\n  - {{hosts: [{host}], secretName: cert}}\n{}",
        rules(&[rule(host, &[path("/", "Prefix", "web", 80)])])
    )
}

fn filters_of(plan: &L7Plan, host: &str) -> Vec<String> {
    plan.routes
        .route(host, "/")
        .expect("routed")
        .filters
        .iter()
        .map(|f| match f {
            Filter::HttpsRedirect { status, .. } => format!("https-redirect {}", status.as_u16()),
            Filter::Hsts(value) => format!("hsts {}", value.to_str().unwrap_or("?")),
            Filter::SourceRange { allow, .. } => format!("allow {}", allow.len()),
            other => other.name().to_string(),
        })
        .collect()
}

#[test]
fn configmap_keys_are_the_annotation_defaults() {
    let yaml = [
        DEFAULT_CLASS,
        SERVICES,
        SECRET,
        CONFIG_MAP,
        &tls_ingress("plain", "plain.example", ""),
        &tls_ingress(
            "own",
            "own.example",
            "nginx.ingress.kubernetes.io/ssl-redirect: \"true\", \
             nginx.ingress.kubernetes.io/whitelist-source-range: \"198.51.100.0/24, 203.0.113.0/24\"",
        ),
    ]
    .concat();
    // Without the flag the ConfigMap is just another object: ingress-nginx's defaults.
    let (plan, _) = run(&yaml);
    assert_eq!(
        filters_of(&plan, "plain.example"),
        [
            "https-redirect 308",
            "hsts max-age=31536000; includeSubDomains"
        ]
    );
    let options = L7Options {
        nginx_configmap: Some(name("ingress-nginx", "ingress-nginx-controller")),
        ..L7Options::default()
    };
    let (plan, problems) = translate(&objects(&yaml), &options);
    let problems = without_unknown_services(problems);
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        plan.nginx.hsts.as_ref().map(|v| v.to_str().unwrap()),
        Some("max-age=600; includeSubDomains")
    );
    assert_eq!(
        filters_of(&plan, "plain.example"),
        ["hsts max-age=600; includeSubDomains", "allow 1"]
    );
    assert_eq!(
        filters_of(&plan, "own.example"),
        [
            "https-redirect 301",
            "hsts max-age=600; includeSubDomains",
            "allow 2"
        ],
        "the annotations win over the ConfigMap"
    );
}

/// The limits keys of the ConfigMap: body size, timeouts and the rate limit's status are the
/// defaults of Ingresses without the annotations; an annotation still wins.
#[test]
fn configmap_limits_are_the_limits_annotations_defaults() {
    let config_map = r#"
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ingress-nginx-controller, namespace: ingress-nginx}
data:
  proxy-body-size: "8k"
  proxy-read-timeout: "5"
  proxy-connect-timeout: "2"
  proxy-send-timeout: "7"
  limit-req-status-code: "429"
"#;
    let yaml = [
        DEFAULT_CLASS,
        SERVICES,
        SECRET,
        config_map,
        &tls_ingress(
            "plain",
            "plain.example",
            "nginx.ingress.kubernetes.io/limit-rps: \"5\"",
        ),
        &tls_ingress(
            "own",
            "own.example",
            "nginx.ingress.kubernetes.io/proxy-body-size: \"0\", \
             nginx.ingress.kubernetes.io/proxy-read-timeout: \"30\"",
        ),
    ]
    .concat();
    let options = L7Options {
        nginx_configmap: Some(name("ingress-nginx", "ingress-nginx-controller")),
        ..L7Options::default()
    };
    let (plan, problems) = translate(&objects(&yaml), &options);
    let problems = without_unknown_services(problems);
    assert!(problems.is_empty(), "{problems:?}");
    let plain = plan.routes.route("plain.example", "/").expect("routed");
    assert_eq!(plain.policy.max_body_bytes, Some(8 * 1024));
    assert_eq!(plain.policy.read_timeout, Some(Duration::from_secs(5)));
    assert_eq!(plain.policy.connect_timeout, Some(Duration::from_secs(2)));
    assert_eq!(plain.policy.send_timeout, Duration::from_secs(7));
    let statuses: Vec<u16> = plain
        .filters
        .iter()
        .filter_map(|f| match f {
            Filter::RateLimit(limiter) => Some(limiter.status.as_u16()),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [429]);
    let own = plan.routes.route("own.example", "/").expect("routed");
    assert_eq!(own.policy.max_body_bytes, None, "the annotation's 0 wins");
    assert_eq!(own.policy.read_timeout, Some(Duration::from_secs(30)));
    assert_eq!(own.policy.connect_timeout, Some(Duration::from_secs(2)));
}
