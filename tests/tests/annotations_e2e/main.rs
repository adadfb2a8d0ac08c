//! ingress-nginx annotations end to end: the real `xdp-ingress` binary run L7-only on loopback
//! (the `xdp_ingress_tests::proxy` harness), Ingresses carrying `nginx.ingress.kubernetes.io/*`
//! annotations written to its manifest directory, in-process backends that echo what they saw,
//! and real clients (hyper, rustls). Each test asserts what the client gets (status,
//! `Location`, body) and what the backend saw (path, headers), for the annotation's default and
//! a non-default value, as ingress-nginx behaves. Groups: path matching and rewriting
//! (`paths`), redirects (`redirects`), hosts and fallbacks (`hosts`), CORS (`cors`), source
//! ranges (`access`), body size, timeouts and retries (`limits`), rate and connection limits
//! (`rate_limits`), TLS passthrough by SNI (`passthrough`), canaries, cookie affinity and
//! hashing (`traffic`), basic and external auth, `upstream-vhost` and `service-upstream`
//! (`auth`), how bad or unsupported annotations are reported (`reports`), and taking over from
//! ingress-nginx (`takeover`: controller names, its ConfigMap), and ingress-nginx's metric families
//! (`metrics`).
//!
//! The binary is `$XDP_INGRESS_BIN` or `target/<profile>/xdp-ingress`: build it first with
//! `cargo build -p ingress-userspace`.

mod access;
mod auth;
mod cors;
mod hosts;
mod limits;
mod metrics;
mod passthrough;
mod paths;
mod rate_limits;
mod redirects;
mod reports;
mod takeover;
mod traffic;

use anyhow::Result;
use serde_json::Value;
use xdp_ingress_tests::proxy::{
    backends::HttpBackend,
    clients::Reply,
    manifests::{ingress, our_class, with_annotation, Manifests, Rule},
    services_for, TestProxy,
};

/// The annotation prefix.
const PREFIX: &str = "nginx.ingress.kubernetes.io/";

/// An Ingress of our class with `rules` and `annotations` (keys without the prefix).
fn annotated(name: &str, rules: &[Rule<'_>], annotations: &[(&str, &str)]) -> Value {
    let mut value = ingress(name, rules);
    for (key, v) in annotations {
        with_annotation(&mut value, &format!("{PREFIX}{key}"), v);
    }
    value
}

/// Our class, a Service per backend, `more` (Secrets, Services without endpoints) and the
/// Ingresses; the proxy started on them.
fn start(backends: &[&HttpBackend], more: &[Value], ingresses: &[Value]) -> Result<TestProxy> {
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut services = services_for(backends);
    services.extend_from_slice(more);
    manifests.write("services.yaml", &services)?;
    manifests.write("ingresses.yaml", ingresses)?;
    TestProxy::start(manifests, &[])
}

/// The `Location` of an answer, if any.
fn location(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The path and query the backend saw for this answer.
fn seen_path(reply: &Reply) -> Option<String> {
    reply
        .json()
        .ok()
        .and_then(|v| v["path"].as_str().map(str::to_string))
}
