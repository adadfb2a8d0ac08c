//! Manifests for the cluster lab's shared manifest directory: Services and EndpointSlices whose
//! endpoints name the node they run on (`nodeName`), as the EndpointSlice controller writes them,
//! so each node's agent can tell local endpoints from remote ones. JSON documents, written with
//! [`crate::proxy::manifests::Manifests`].

use std::net::Ipv4Addr;

use serde_json::{json, Value};

use super::NodeId;
use crate::lab::{TCP_PORT, UDP_PORT};

/// One port of a Service: name, protocol (`TCP`, `UDP`), port, targetPort. The slice's port of
/// the same name is the targetPort.
#[derive(Clone, Copy, Debug)]
pub struct ServicePort {
    /// The port's name (the slice's port has the same).
    pub name: &'static str,
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
    /// The Service port.
    pub port: u16,
    /// Where the pods listen.
    pub target_port: u16,
}

/// The lab servers' ports behind a Service: TCP 80 -> 8080 (`echo`), UDP 53 -> 8053 (`dns`).
pub const WEB_PORTS: [ServicePort; 2] = [
    ServicePort {
        name: "echo",
        protocol: "TCP",
        port: 80,
        target_port: TCP_PORT,
    },
    ServicePort {
        name: "dns",
        protocol: "UDP",
        port: 53,
        target_port: UDP_PORT,
    },
];

/// An endpoint of a slice: a pod's address and the node it runs on.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint {
    /// The pod's address.
    pub addr: Ipv4Addr,
    /// Its node (`nodeName`).
    pub node: NodeId,
    /// `conditions.ready`.
    pub ready: bool,
}

impl Endpoint {
    /// A ready endpoint.
    pub fn ready(addr: Ipv4Addr, node: NodeId) -> Self {
        Self {
            addr,
            node,
            ready: true,
        }
    }
}

/// A `type: LoadBalancer` Service in namespace `default` whose load balancer has given it `vip`.
pub fn load_balancer_service(name: &str, vip: Ipv4Addr, ports: &[ServicePort]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|port| {
            json!({
                "name": port.name,
                "protocol": port.protocol,
                "port": port.port,
                "targetPort": port.target_port,
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": "default",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"type": "LoadBalancer", "selector": {"app": name}, "ports": ports},
        "status": {"loadBalancer": {"ingress": [{"ip": vip.to_string()}]}},
    })
}

/// The EndpointSlice `<service>-lab` of Service `service`, with the targetPorts of `ports`
/// and these endpoints, each with its `nodeName`.
pub fn endpoint_slice(service: &str, ports: &[ServicePort], endpoints: &[Endpoint]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|port| json!({"name": port.name, "protocol": port.protocol, "port": port.target_port}))
        .collect();
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|endpoint| {
            json!({
                "addresses": [endpoint.addr.to_string()],
                "conditions": {"ready": endpoint.ready},
                "nodeName": endpoint.node.name(),
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-lab"),
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// Service `name` on `vip` with [`WEB_PORTS`] and its slice with `endpoints`: the two documents
/// of one manifest file.
pub fn web_service(name: &str, vip: Ipv4Addr, endpoints: &[Endpoint]) -> Vec<Value> {
    vec![
        load_balancer_service(name, vip, &WEB_PORTS),
        endpoint_slice(name, &WEB_PORTS, endpoints),
    ]
}
