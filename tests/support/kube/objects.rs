//! Cluster objects as the fake API server stores them (JSON documents): LoadBalancer and
//! ClusterIP Services, their EndpointSlices, IngressClasses, Ingresses and Secrets.

use std::net::{Ipv4Addr, SocketAddr};

use serde_json::{json, Value};

/// Our IngressClass.
pub const OUR_CLASS: &str = "xdp";
/// The controller name the agent serves by default.
pub const OUR_CONTROLLER: &str = "xdp-ingress.dev/controller";
/// Someone else's IngressClass.
pub const OTHER_CLASS: &str = "other";
/// The port every Service exposes (named `http`).
pub const SERVICE_PORT: u16 = 80;

// The proxy's manifests and the cluster's objects hold the same IngressClass document.
pub use crate::proxy::manifests::ingress_class;

/// Our class and another controller's.
pub fn classes() -> Vec<Value> {
    vec![
        ingress_class(OUR_CLASS, OUR_CONTROLLER),
        ingress_class(OTHER_CLASS, "example.com/other"),
    ]
}

/// A Service with TCP port [`SERVICE_PORT`] named `http`: `LoadBalancer` when `vip` or
/// `class` is given (with `status.loadBalancer.ingress[0].ip = vip`), else `ClusterIP`.
pub fn service(namespace: &str, name: &str, vip: Option<Ipv4Addr>, class: Option<&str>) -> Value {
    let load_balancer = vip.is_some() || class.is_some();
    let mut value = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "type": if load_balancer { "LoadBalancer" } else { "ClusterIP" },
            "selector": {"app": name},
            "ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP", "targetPort": 8080}],
        },
    });
    if let Some(class) = class {
        value["spec"]["loadBalancerClass"] = json!(class);
    }
    if let Some(vip) = vip {
        value["status"] = json!({"loadBalancer": {"ingress": [{"ip": vip.to_string()}]}});
    }
    value
}

/// EndpointSlice `name` of Service `service`: `(address, ready)` endpoints on one port.
pub fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    port: u16,
    endpoints: &[(Ipv4Addr, bool)],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(addr, ready)| json!({"addresses": [addr.to_string()], "conditions": {"ready": ready}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// A one-endpoint slice for a loopback backend (its port is the slice's port).
pub fn backend_slice(namespace: &str, name: &str, service: &str, backend: SocketAddr) -> Value {
    let SocketAddr::V4(v4) = backend else {
        panic!("loopback backends are IPv4");
    };
    slice(namespace, name, service, v4.port(), &[(*v4.ip(), true)])
}

/// An Ingress of `class` (`None`: no class) routing `host` + `path` (Prefix) to `service`.
pub fn ingress(
    namespace: &str,
    name: &str,
    class: Option<&str>,
    host: &str,
    path: &str,
    service: &str,
) -> Value {
    let mut value = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"rules": [{
            "host": host,
            "http": {"paths": [{
                "path": path,
                "pathType": "Prefix",
                "backend": {"service": {"name": service, "port": {"number": SERVICE_PORT}}},
            }]},
        }]},
    });
    if let Some(class) = class {
        value["spec"]["ingressClassName"] = json!(class);
    }
    value
}

/// Adds a `spec.tls[]` entry.
pub fn with_tls(mut ingress: Value, hosts: &[&str], secret: &str) -> Value {
    ingress["spec"]["tls"] = json!([{"hosts": hosts, "secretName": secret}]);
    ingress
}

/// A Secret of `type_` with base64 `data`, as the API server stores it.
pub fn secret(namespace: &str, name: &str, type_: &str, data: &[(&str, &[u8])]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(key, bytes)| {
            let encoded = serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec()))
                .expect("a ByteString serializes");
            (key.to_string(), encoded)
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": type_,
        "data": data,
    })
}

/// A `kubernetes.io/tls` Secret for a self-signed certificate.
pub fn tls_secret(namespace: &str, name: &str, certified: &rcgen::CertifiedKey) -> Value {
    secret(
        namespace,
        name,
        "kubernetes.io/tls",
        &[
            ("tls.crt", certified.cert.pem().as_bytes()),
            ("tls.key", certified.key_pair.serialize_pem().as_bytes()),
        ],
    )
}
