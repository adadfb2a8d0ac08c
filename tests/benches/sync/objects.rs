//! The cluster the bench puts into the fake API server: Services, their EndpointSlices (one
//! generation per change) and Ingresses, addressed from the benchmarking range.

use std::net::Ipv4Addr;

use serde_json::json;

use super::ENDPOINTS;

/// VIP of Service `i`: 198.18.0.0/16.
pub(crate) fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i as u32)
}

/// Endpoint `j` of Service `i`, generation `g`: 198.19.0.0/16 (wrapping: endpoints of different
/// Services may share an address, as pods of different Services may; ports differ).
pub(crate) fn endpoint(i: usize, j: usize, generation: usize) -> Ipv4Addr {
    let n = (i * ENDPOINTS + j + generation * 7919) % 65_536;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + n as u32)
}

pub(crate) fn namespace(i: usize) -> String {
    format!("bench-{}", i % 10)
}

pub(crate) fn service(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": namespace(i)},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": vip(i).to_string()}]}}
    })
}

pub(crate) fn endpoint_slice(i: usize, generation: usize) -> serde_json::Value {
    let endpoints: Vec<serde_json::Value> = (0..ENDPOINTS)
        .map(|j| json!({"addresses": [endpoint(i, j, generation).to_string()], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("svc-{i}-abcde"), "namespace": namespace(i),
            "labels": {"kubernetes.io/service-name": format!("svc-{i}")}
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

pub(crate) fn ingress(i: usize) -> serde_json::Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": format!("ing-{i}"), "namespace": namespace(i)},
        "spec": {
            "ingressClassName": "xdp-ingress",
            "rules": [{"host": format!("host-{i}.example"), "http": {"paths": [
                {"path": "/", "pathType": "Prefix",
                 "backend": {"service": {"name": format!("svc-{i}"), "port": {"number": 80}}}}
            ]}}]
        }
    })
}
