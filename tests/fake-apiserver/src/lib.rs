//! A fake Kubernetes API server on loopback, for testing code that uses a real Kubernetes client
//! (kube-rs) unmodified, through a kubeconfig.
//!
//! It speaks the real list/watch protocol over plain HTTP/1.1 (no TLS, no auth):
//!
//! * **LIST** (`GET` on a collection): a `<Kind>List` with `metadata.resourceVersion`;
//!   `labelSelector`, `fieldSelector`, `limit`/`continue` paging (410 Gone for a continue token
//!   older than the compaction point), `resourceVersionMatch=Exact` below the compaction point
//!   gets 410 too; any other `resourceVersion` is answered with the current state.
//! * **WATCH** (`watch=true`/`watch=1`): a chunked stream of newline-delimited
//!   `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":...}` with every change after
//!   `resourceVersion`, from a kept event history; without a resourceVersion (or with `0`) the
//!   current objects come first as ADDED; `sendInitialEvents=true` (streaming lists) ends that
//!   with a BOOKMARK annotated `k8s.io/initial-events-end`; `allowWatchBookmarks=true` gets a
//!   BOOKMARK every [`Options::bookmark_interval`]; `timeoutSeconds` ends the stream; selectors
//!   are honoured, including an object moving into (ADDED) or out of (DELETED) the selector; a
//!   resourceVersion older than the compaction point gets the single ERROR event with a 410
//!   `Expired` Status, as the real server sends.
//! * **GET**, **POST** (409 AlreadyExists), **PUT** (409 Conflict when the body's
//!   `metadata.resourceVersion` is set and stale; unconditional when it is empty), **DELETE**
//!   (with `preconditions.resourceVersion`), delete-collection, and **PATCH** on an object or its
//!   `/status` with `application/merge-patch+json`, `application/strategic-merge-patch+json`
//!   (treated as a merge patch) and `application/apply-patch+yaml` (server-side apply, treated
//!   as a merge patch that creates a missing object; requires `fieldManager`). JSON patch gets
//!   415.
//! * For resources with a status subresource (Service, Ingress, Pod, Namespace, Node), writes to
//!   the main resource keep the stored `.status` and writes to `/status` change only `.status`,
//!   as on a real cluster. Unchanged writes are no-ops (no new resourceVersion, no event).
//!   `metadata.generation` goes up when anything outside `metadata` and `status` changes.
//! * Errors are `Status` objects with the real HTTP codes (400, 404, 409, 410, 415, 422).
//! * Discovery: `/version`, `/api`, `/apis`, `/apis/{group}`, `/api/v1`, `/apis/{group}/{version}`
//!   (kube's typed `Api<K>` needs none of it).
//!
//! Served resources: see [`RESOURCES`] (core `services`, `secrets`, `configmaps`, `events`,
//! `endpoints`, `pods`, `namespaces`, `nodes`; `endpointslices.discovery.k8s.io`;
//! `ingresses` and `ingressclasses.networking.k8s.io`; `leases.coordination.k8s.io`;
//! `events.events.k8s.io`).
//!
//! # Runtime
//!
//! The server runs on **its own thread and tokio runtime**, so every method here is a plain
//! synchronous call that works from `#[test]`, `#[tokio::test]` (current-thread or
//! multi-thread) and from any thread, and the server outlives the test's runtime. Test-side
//! calls ([`FakeApiServer::apply`], ...) never block on the network; [`FakeApiServer::stop`]
//! waits briefly for the listener and connections to close.
//!
//! # Example
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use fake_apiserver::FakeApiServer;
//! let server = FakeApiServer::start("127.0.0.1:0".parse()?)?;
//! server.write_kubeconfig("/tmp/kubeconfig")?; // or set KUBECONFIG for a child process
//! server.apply(&serde_json::json!({
//!     "apiVersion": "v1", "kind": "Service",
//!     "metadata": {"name": "web", "namespace": "default"},
//!     "spec": {"ports": [{"port": 80}]},
//! }))?;
//! // ... run a kube client against it ...
//! assert_eq!(server.count(fake_apiserver::Verb::Watch, "services"), 1);
//! # Ok(()) }
//! ```

mod http;
mod resources;
mod selector;
mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use crate::http::{lock, Injection, Shared};
pub use crate::resources::{ResourceDef, RESOURCES};
pub use crate::selector::Selector;
pub use crate::store::ApiError;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK (default 1 s).
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// What a request asked for, as the API server's authorizer would name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `GET` on a collection.
    List,
    /// `GET` on a collection with `watch=true`.
    Watch,
    /// `GET` on an object (or its status).
    Get,
    /// `POST` on a collection.
    Create,
    /// `PUT` on an object (or its status).
    Update,
    /// `PATCH` on an object (or its status).
    Patch,
    /// `DELETE` on an object.
    Delete,
    /// `DELETE` on a collection.
    DeleteCollection,
    /// A discovery or `/version` request.
    Discovery,
    /// Anything else (unknown path or method).
    Other,
}

/// One request the server answered.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw (still percent-encoded) query string.
    pub query: String,
    /// What the request asked for.
    pub verb: Verb,
    /// The resource as `plural` or `plural.group` (`services`, `leases.coordination.k8s.io`).
    pub resource: Option<String>,
    /// The namespace on the URL.
    pub namespace: Option<String>,
    /// The object name on the URL.
    pub name: Option<String>,
    /// `status` for the status subresource.
    pub subresource: Option<String>,
    /// The request's `Content-Type`.
    pub content_type: Option<String>,
    /// The request body (lossy UTF-8), e.g. a PATCH body.
    pub body: String,
    /// The HTTP status sent (200 for a watch that started streaming).
    pub status: u16,
}

impl RequestRecord {
    /// Whether this is `verb` on `resource` (`plural` or `plural.group`).
    pub fn is(&self, verb: Verb, resource: &str) -> bool {
        self.verb == verb
            && self
                .resource
                .as_deref()
                .is_some_and(|r| same_resource(r, resource))
    }
}

fn same_resource(qualified: &str, asked: &str) -> bool {
    qualified == asked || qualified.split('.').next() == Some(asked) && !asked.contains('.')
}

/// A running server generation.
struct Running {
    shutdown: watch::Sender<bool>,
    done: std::sync::mpsc::Receiver<()>,
}

/// A fake Kubernetes API server on loopback. See the crate docs.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    rt: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

fn resource_of(api_version: &str, kind: &str) -> anyhow::Result<usize> {
    resources::by_kind(api_version, kind)
        .ok_or_else(|| anyhow!("the fake API server does not serve {api_version} {kind}"))
}

fn resource_of_type<K: k8s_openapi::Resource>() -> anyhow::Result<usize> {
    resource_of(K::API_VERSION, K::KIND)
}

impl FakeApiServer {
    /// Start on `addr` (use `127.0.0.1:0` for a free port) with default [`Options`].
    pub fn start(addr: SocketAddr) -> anyhow::Result<FakeApiServer> {
        FakeApiServer::start_with(addr, Options::default())
    }

    /// Start on `addr` with `opts`.
    pub fn start_with(addr: SocketAddr, opts: Options) -> anyhow::Result<FakeApiServer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-apiserver")
            .enable_all()
            .build()
            .context("building the fake API server's runtime")?;
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        let server = FakeApiServer {
            shared: Arc::new(Shared::new(opts)),
            rt: Some(rt),
            addr,
            running: Mutex::new(None),
        };
        server.serve(listener)?;
        Ok(server)
    }

    fn serve(&self, listener: std::net::TcpListener) -> anyhow::Result<()> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| anyhow!("the runtime is gone"))?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _guard = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        rt.spawn(http::serve(
            listener,
            self.shared.clone(),
            shutdown_rx,
            done_tx,
        ));
        *lock(&self.running) = Some(Running { shutdown, done });
        Ok(())
    }

    /// The address the server listens on (the same across [`restart`](Self::restart)).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server: one cluster at [`url`](Self::url) without TLS, a user
    /// without credentials, and a context with namespace `default`.
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: default
current-context: fake
users:
- name: fake
  user: {{}}
preferences: {{}}
",
            self.url()
        )
    }

    /// Write [`kubeconfig_yaml`](Self::kubeconfig_yaml) to `path`.
    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.kubeconfig_yaml())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Whether the server is listening.
    pub fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }

    /// Stop listening and close every open connection, which ends every watch stream
    /// (clients see the connection drop). The stored objects and history stay. Idempotent.
    pub fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(r) = running {
            let _ = r.shutdown.send(true);
            let _ = r.done.recv_timeout(Duration::from_secs(5));
        }
    }

    /// Simulate an API server restart: [`stop`](Self::stop), then listen again on the same
    /// address with the same objects, resourceVersions and history.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        let mut last = None;
        for _ in 0..50 {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => return self.serve(l),
                Err(e) => {
                    last = Some(e);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        match last {
            Some(e) => Err(e).with_context(|| format!("rebinding {}", self.addr)),
            None => bail!("rebinding {}", self.addr),
        }
    }

    /// Compaction: every resourceVersion handed out so far becomes too old. A new watch from
    /// one of them gets the ERROR event with a 410 `Expired` Status, and a continue token from
    /// before gets 410 Gone. The counter moves on by one, so a fresh LIST returns a
    /// resourceVersion that can be watched from. Watches already connected go on (as on a
    /// real server); note that a BOOKMARK sent to them after this carries a fresh, valid
    /// resourceVersion.
    pub fn expire_resource_versions(&self) {
        self.shared.mutate(|s| s.expire());
    }

    /// The latest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv
    }

    /// Create or replace an object (a `serde_json::Value` or any serializable k8s-openapi
    /// type with `apiVersion`, `kind` and `metadata.name`; `metadata.namespace` defaults to
    /// `default` for namespaced kinds). No preconditions; `.status` is stored as given. Bumps
    /// the resourceVersion and sends ADDED or MODIFIED to the watches, unless nothing
    /// changed. Returns the stored object.
    pub fn apply<T: Serialize + ?Sized>(&self, obj: &T) -> anyhow::Result<Value> {
        let obj = serde_json::to_value(obj).context("serializing the object")?;
        let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let res = resource_of(api_version, kind)?;
        Ok(self.shared.mutate(|s| s.upsert(res, obj))?)
    }

    /// Delete an object (namespace `""` for cluster-scoped kinds); sends DELETED. Returns the
    /// deleted object.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Value> {
        let res = resource_of(api_version, kind)?;
        let ns = if RESOURCES[res].namespaced {
            namespace
        } else {
            ""
        };
        Ok(self.shared.mutate(|s| s.delete(res, ns, name, None))?)
    }

    /// [`delete`](Self::delete) for a k8s-openapi type.
    pub fn delete_as<K: k8s_openapi::Resource>(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Value> {
        self.delete(K::API_VERSION, K::KIND, namespace, name)
    }

    /// The stored object (namespace `""` for cluster-scoped kinds).
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let res = resources::by_kind(api_version, kind)?;
        let ns = if RESOURCES[res].namespaced {
            namespace
        } else {
            ""
        };
        lock(&self.shared.store).get(res, ns, name).cloned()
    }

    /// [`get`](Self::get) as a k8s-openapi type.
    pub fn get_as<K: k8s_openapi::Resource + DeserializeOwned>(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<Option<K>> {
        self.get(K::API_VERSION, K::KIND, namespace, name)
            .map(serde_json::from_value)
            .transpose()
            .context("deserializing the stored object")
    }

    /// Every stored object of a kind, in (namespace, name) order.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let Some(res) = resources::by_kind(api_version, kind) else {
            return Vec::new();
        };
        lock(&self.shared.store)
            .list(res, None, &Selector::default())
            .into_iter()
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// [`list`](Self::list) as a k8s-openapi type.
    pub fn list_as<K: k8s_openapi::Resource + DeserializeOwned>(&self) -> anyhow::Result<Vec<K>> {
        self.list(K::API_VERSION, K::KIND)
            .into_iter()
            .map(serde_json::from_value)
            .collect::<Result<_, _>>()
            .context("deserializing the stored objects")
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.log).clone()
    }

    /// The requests of `verb` on `resource` (`plural`, e.g. `services`, or `plural.group`).
    pub fn requests_for(&self, verb: Verb, resource: &str) -> Vec<RequestRecord> {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.is(verb, resource))
            .cloned()
            .collect()
    }

    /// How many requests of `verb` on `resource` were answered.
    pub fn count(&self, verb: Verb, resource: &str) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.is(verb, resource))
            .count()
    }

    /// Forget the request log.
    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// Make the next `times` requests of `verb` on `resource` (`plural` or `plural.group`)
    /// fail with HTTP `code` and a matching `Status`.
    pub fn inject_error(
        &self,
        verb: Verb,
        resource: &str,
        code: u16,
        times: usize,
    ) -> anyhow::Result<()> {
        let res = resources::by_name(resource)
            .ok_or_else(|| anyhow!("the fake API server does not serve {resource}"))?;
        lock(&self.shared.injections).push(Injection {
            verb,
            resource: res,
            code,
            times,
        });
        Ok(())
    }

    /// Resolve a k8s-openapi type to its served resource (`plural` or `plural.group`).
    pub fn resource_name<K: k8s_openapi::Resource>() -> anyhow::Result<String> {
        Ok(RESOURCES[resource_of_type::<K>()?].qualified())
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_closes_the_listener() -> anyhow::Result<()> {
        let server = FakeApiServer::start("127.0.0.1:0".parse()?)?;
        std::net::TcpStream::connect(server.addr())?;
        server.stop();
        assert!(std::net::TcpStream::connect(server.addr()).is_err());
        server.restart()?;
        std::net::TcpStream::connect(server.addr())?;
        server.stop();
        assert!(std::net::TcpStream::connect(server.addr()).is_err());
        Ok(())
    }
}
