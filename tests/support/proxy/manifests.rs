//! Manifests for the agent's `--manifests` directory: a temporary directory written atomically,
//! and builders for the objects (as JSON documents, which YAML reads as flow style).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};

/// The IngressClass these tests call ours.
pub const OUR_CLASS: &str = "xdp";
/// The controller name the agent serves by default.
pub const OUR_CONTROLLER: &str = "xdp-ingress.dev/controller";
/// The Service port every backend Service exposes (named `http`).
pub const SERVICE_PORT: u16 = 80;

/// A directory removed (with everything in it) on drop, also when a test fails.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A new empty directory under the system's temporary directory.
    pub fn new(prefix: &str) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of a killed earlier run with the same pid would be stale anyway.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The manifest directory the agent watches.
#[derive(Debug)]
pub struct Manifests {
    dir: TempDir,
}

impl Manifests {
    /// An empty directory.
    pub fn new() -> Result<Self> {
        Ok(Self {
            dir: TempDir::new("xdp-ingress-proxy-e2e")?,
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `file` (a `.yaml` name) with `documents`, atomically: the agent never reads half a
    /// file (the temporary name does not end in `.yaml`, so the agent skips it).
    pub fn write(&self, file: &str, documents: &[Value]) -> Result<()> {
        let text = documents
            .iter()
            .map(|d| serde_json::to_string_pretty(d).map_err(anyhow::Error::from))
            .collect::<Result<Vec<_>>>()?
            .join("\n---\n");
        let path = self.path().join(file);
        let staging = self.path().join(format!("{file}.tmp"));
        std::fs::write(&staging, text).with_context(|| format!("writing {}", staging.display()))?;
        std::fs::rename(&staging, &path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// Removes `file`.
    pub fn remove(&self, file: &str) -> Result<()> {
        let path = self.path().join(file);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }
}

/// An IngressClass.
pub fn ingress_class(name: &str, controller: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": name},
        "spec": {"controller": controller},
    })
}

/// Our IngressClass.
pub fn our_class() -> Value {
    ingress_class(OUR_CLASS, OUR_CONTROLLER)
}

/// A ClusterIP Service with port [`SERVICE_PORT`] named `http`.
pub fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP"}],
        },
    })
}

/// The EndpointSlice of Service `service`: `(address, ready)` per endpoint. All endpoints must
/// share one port (a slice has one port list).
pub fn endpoint_slice(service: &str, endpoints: &[(SocketAddr, bool)]) -> Value {
    let port = endpoints.first().map_or(1, |(addr, _)| addr.port());
    assert!(
        endpoints.iter().all(|(addr, _)| addr.port() == port),
        "one port per slice"
    );
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(addr, ready)| {
            json!({"addresses": [addr.ip().to_string()], "conditions": {"ready": ready}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-{port}"),
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// A Service and its slice with ready endpoints, one slice per endpoint port (loopback
/// backends listen on different ports).
pub fn backend_service(name: &str, endpoints: &[SocketAddr]) -> Vec<Value> {
    let mut documents = vec![service(name)];
    for addr in endpoints {
        documents.push(endpoint_slice(name, &[(*addr, true)]));
    }
    documents
}

/// A `kubernetes.io/tls` Secret.
pub fn tls_secret(name: &str, cert_pem: &str, key_pem: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert_pem, "tls.key": key_pem},
    })
}

/// One `spec.rules[]` entry: host (`None`: every host) and `(path, pathType, service)` paths.
pub struct Rule<'a> {
    /// The host.
    pub host: Option<&'a str>,
    /// The paths.
    pub paths: Vec<(&'a str, &'a str, &'a str)>,
}

/// A rule for `host` with paths.
pub fn rule<'a>(host: Option<&'a str>, paths: &[(&'a str, &'a str, &'a str)]) -> Rule<'a> {
    Rule {
        host,
        paths: paths.to_vec(),
    }
}

fn backend(service: &str) -> Value {
    json!({"service": {"name": service, "port": {"number": SERVICE_PORT}}})
}

/// An Ingress of our class.
pub fn ingress(name: &str, rules: &[Rule<'_>]) -> Value {
    ingress_with(name, Some(OUR_CLASS), rules, |_| {})
}

/// An Ingress of class `class` (`None`: no `ingressClassName`), adjusted by `more` (to add a
/// default backend, TLS, annotations).
pub fn ingress_with(
    name: &str,
    class: Option<&str>,
    rules: &[Rule<'_>],
    more: impl FnOnce(&mut Value),
) -> Value {
    let rules: Vec<Value> = rules
        .iter()
        .map(|rule| {
            let paths: Vec<Value> = rule
                .paths
                .iter()
                .map(|(path, path_type, service)| {
                    json!({"path": path, "pathType": path_type, "backend": backend(service)})
                })
                .collect();
            let mut value = json!({"http": {"paths": paths}});
            if let Some(host) = rule.host {
                value["host"] = json!(host);
            }
            value
        })
        .collect();
    let mut value = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"rules": rules},
    });
    if let Some(class) = class {
        value["spec"]["ingressClassName"] = json!(class);
    }
    more(&mut value);
    value
}

/// Sets `spec.defaultBackend`.
pub fn with_default_backend(ingress: &mut Value, service: &str) {
    ingress["spec"]["defaultBackend"] = backend(service);
}

/// Adds a `spec.tls[]` entry.
pub fn with_tls(ingress: &mut Value, hosts: &[&str], secret: &str) {
    let entry = json!({"hosts": hosts, "secretName": secret});
    match ingress["spec"]["tls"].as_array_mut() {
        Some(entries) => entries.push(entry),
        None => ingress["spec"]["tls"] = json!([entry]),
    }
}

/// Sets an annotation.
pub fn with_annotation(ingress: &mut Value, key: &str, value: &str) {
    ingress["metadata"]["annotations"][key] = json!(value);
}
