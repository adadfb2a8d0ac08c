//! Backends that are not plain HTTP/1.1, against the real agent (L7-only on loopback):
//! `backend-protocol: GRPC` (h2c) with a real tonic service and client, and `HTTPS` / `GRPCS`
//! with `proxy-ssl-*` (verification, names, SNI, ALPN) against rustls backends.

mod annotations;
mod echo;
mod grpc;
mod tls;

use serde_json::{json, Value};
use xdp_ingress_tests::proxy::manifests::{ingress_with, rule, OUR_CLASS};

/// An Ingress `name` of our class routing all of `host` to `service`, with these
/// `nginx.ingress.kubernetes.io/` annotations.
fn annotated_ingress(name: &str, host: &str, service: &str, annotations: &[(&str, &str)]) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| (format!("nginx.ingress.kubernetes.io/{k}"), json!(v)))
        .collect();
    ingress_with(
        name,
        Some(OUR_CLASS),
        &[rule(Some(host), &[("/", "Prefix", service)])],
        |ingress| ingress["metadata"]["annotations"] = Value::Object(annotations),
    )
}
