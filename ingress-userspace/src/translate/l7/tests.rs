//! Ingresses in, L7 plan out: class selection, precedence and conflicts, every bad-input case,
//! backend resolution and TLS plans, one module each. Objects are written as YAML, as users
//! write them; the helpers here turn them into objects and plans.

use std::{net::SocketAddr, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Secret, Service},
        discovery::v1::EndpointSlice,
        networking::v1::{Ingress, IngressClass},
    },
    ByteString,
};

use super::*;
use crate::model::{object_name, Origin, Sourced};

mod annotations;
mod backends;
mod class;
mod nginx_config;
mod passthrough;
mod rules;
mod tls;
mod upstream;

fn origin() -> Origin {
    Origin::File {
        path: Arc::from("/m/test.yaml"),
        document: 1,
    }
}

fn sourced<T>(object: T) -> Sourced<T> {
    Sourced {
        object,
        origin: origin(),
    }
}

/// Every document of `yaml` into a `ClusterObjects`, by kind.
fn objects(yaml: &str) -> ClusterObjects {
    let mut objects = ClusterObjects::default();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(document).unwrap();
        if value.is_null() {
            continue;
        }
        match value["kind"].as_str().unwrap() {
            "Service" => {
                let s: Service = serde_yaml::from_value(value).unwrap();
                objects
                    .services
                    .insert(object_name(&s.metadata), sourced(s));
            }
            "EndpointSlice" => {
                let s: EndpointSlice = serde_yaml::from_value(value).unwrap();
                objects
                    .endpoint_slices
                    .insert(object_name(&s.metadata), sourced(s));
            }
            "Ingress" => {
                let i: Ingress = serde_yaml::from_value(value).unwrap();
                objects
                    .ingresses
                    .insert(object_name(&i.metadata), sourced(i));
            }
            "IngressClass" => {
                let c: IngressClass = serde_yaml::from_value(value).unwrap();
                let name = c.metadata.name.clone().unwrap();
                objects.ingress_classes.insert(name, sourced(c));
            }
            "Secret" => {
                let mut s: Secret = serde_yaml::from_value(value).unwrap();
                // As the file source does: stringData is merged into data.
                for (k, v) in s.string_data.take().unwrap_or_default() {
                    s.data
                        .get_or_insert_with(Default::default)
                        .insert(k, ByteString(v.into_bytes()));
                }
                objects.secrets.insert(object_name(&s.metadata), sourced(s));
            }
            "ConfigMap" => {
                let c: ConfigMap = serde_yaml::from_value(value).unwrap();
                objects
                    .config_maps
                    .insert(object_name(&c.metadata), sourced(c));
            }
            other => panic!("unexpected kind {other}"),
        }
    }
    objects
}

fn run(yaml: &str) -> (L7Plan, Vec<Problem>) {
    translate(&objects(yaml), &L7Options::default())
}

/// `ingress>service:port` of the backend a request is routed to.
fn target(plan: &L7Plan, host: &str, path: &str) -> Option<String> {
    let id = plan.routes.route(host, path)?.backend()?;
    let b = &plan.backends[id];
    Some(format!("{}>{}:{}", b.ingress.name, b.service.name, b.port))
}

fn name(namespace: &str, name: &str) -> ObjectName {
    ObjectName {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// The problems as `object field` lines, for compact assertions.
fn fields(problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .map(|p| format!("{} {}", p.object, p.field))
        .collect()
}

/// Tests about routing write no Services: drop the "does not exist" reports they cause.
fn without_unknown_services(problems: Vec<Problem>) -> Vec<Problem> {
    problems
        .into_iter()
        .filter(|p| !p.message.contains("does not exist"))
        .collect()
}

const DEFAULT_CLASS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: xdp
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: xdp-ingress.dev/controller}
"#;

/// An Ingress of our (default) class with the given creation time and rules.
fn ingress(namespace: &str, name: &str, created: Option<&str>, spec: &str) -> String {
    let created = created
        .map(|t| format!(", creationTimestamp: \"{t}\""))
        .unwrap_or_default();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: {namespace}{created}}}\nspec:\n{spec}\n"
    )
}

fn path(path: &str, path_type: &str, service: &str, port: u32) -> String {
    format!(
        "      - {{path: {path}, pathType: {path_type}, backend: {{service: {{name: {service}, port: {{number: {port}}}}}}}}}\n"
    )
}

fn rule(host: &str, paths: &[String]) -> String {
    format!(
        "  - host: \"{host}\"\n    http:\n      paths:\n{}",
        paths.concat()
    )
}

fn rules(rules: &[String]) -> String {
    format!("  rules:\n{}", rules.concat())
}

const OLD: Option<&str> = Some("2026-01-01T00:00:00Z");
const NEW: Option<&str> = Some("2026-02-01T00:00:00Z");

const SERVICES: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: idle, namespace: demo}
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: demo}
spec: {type: ExternalName, externalName: example.org}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 8053, protocol: UDP}]
endpoints:
- addresses: [10.0.0.3]
- addresses: [10.0.0.9]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.2, 10.0.0.1]
  conditions: {ready: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- addresses: ["2001:db8::1"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: idle-a, namespace: demo, labels: {kubernetes.io/service-name: idle}}
addressType: IPv4
ports: [{port: 9000}]
endpoints:
- addresses: [10.0.1.1]
  conditions: {ready: false}
"#;
