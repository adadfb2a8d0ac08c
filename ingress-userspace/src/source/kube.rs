//! The cluster source: kube-runtime watchers for Services, EndpointSlices, Ingresses,
//! IngressClasses, Secrets (TLS, and the Opaque ones named or holding a CA bundle) and
//! ingress-nginx's ConfigMap (`--nginx-configmap`), kept in one [`ClusterObjects`] that the agent
//! translates from.
//!
//! Watch semantics come from kube-runtime's `watcher`: an initial list, then a watch from its
//! resourceVersion, bookmarks, a relist on 410 Gone, reconnects with backoff. On top of it:
//! - **Relists replace, they do not flush.** The objects of a (re)list are collected until the
//!   list is complete (`InitDone`) and then replace that watcher's share of the store in one step,
//!   so objects deleted while disconnected disappear and everything else never blinks.
//! - **Readiness.** The source is synced when every watcher has completed its first list.
//! - **Secrets** are watched with `type=kubernetes.io/tls`, and after the first sync only
//!   Secrets that some Ingress names are kept; a second watcher of `type=Opaque` keeps the
//!   named ones (`auth-secret`) from the start, and CA bundles (`ca.crt`, for
//!   `proxy-ssl-secret`) as TLS Secrets are kept. When Ingresses start naming a Secret the store
//!   lacks, the Secret watchers relist.
//! - `metadata.managedFields` is dropped on arrival: it is most of an object's size and nothing
//!   here reads it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Secret, Service},
        discovery::v1::EndpointSlice,
        networking::v1::{Ingress, IngressClass},
    },
    NamespaceResourceScope,
};
use kube::{
    runtime::{watcher, WatchStreamExt as _},
    Api, Client, Resource, ResourceExt as _,
};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc::UnboundedSender, watch};

use crate::{
    model::{
        is_kept_secret, ClusterObjects, ObjectKind, ObjectName, Origin, Sourced,
        OPAQUE_SECRET_TYPE, TLS_SECRET_TYPE,
    },
    translate::l4::SERVICE_NAME_LABEL,
};

/// Errors connecting to the cluster.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig file could not be read.
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        source: kube::config::KubeconfigError,
    },
    /// No in-cluster configuration (not running in a pod).
    #[error("in-cluster configuration: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    /// The client could not be built.
    #[error("building the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `kubeconfig`, or from the pod's service account when `None`.
pub(crate) async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig_error = |source| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => kube::Config::incluster()?,
    };
    Ok(Client::try_from(config)?)
}

/// What changed in the store since the agent last took it: lets the agent re-translate only
/// what a change touches (an endpoint change is one Service's frontends, not 10,000).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Anything may have changed (a (re)list replaced a share of the store): translate all.
    pub everything: bool,
    /// Services that changed or went.
    pub services: BTreeSet<ObjectName>,
    /// Services whose EndpointSlices changed (by the slices' `kubernetes.io/service-name`).
    pub endpoints_of: BTreeSet<ObjectName>,
    /// An Ingress, IngressClass or Secret changed: the routing table must be rebuilt.
    pub routing: bool,
}

/// The objects and what changed in them, under one lock.
#[derive(Default)]
struct Store {
    objects: ClusterObjects,
    dirty: Dirty,
}

/// What the watchers share with the agent.
struct Shared {
    objects: Mutex<Store>,
    /// Watchers that have not completed their first list.
    unlisted: AtomicUsize,
    /// Set until the agent has told which Secrets are referenced; until then all are kept.
    keep_all_secrets: AtomicBool,
    referenced_secrets: Mutex<BTreeSet<ObjectName>>,
    /// Bumped to make the Secret watchers relist; a watch channel, so a watcher busy with an
    /// event when it is bumped still sees it at its next wait.
    relist_secrets: watch::Sender<u64>,
    changes: UnboundedSender<()>,
}

impl Shared {
    fn objects(&self) -> MutexGuard<'_, Store> {
        // A watcher that panicked mid-update leaves data that is still a valid map.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keeps_secret(&self, name: &ObjectName) -> bool {
        self.keep_all_secrets.load(Ordering::Relaxed) || self.names_secret(name)
    }

    fn names_secret(&self, name: &ObjectName) -> bool {
        self.referenced_secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }
}

/// A kind of object the source watches: which watcher's share of the store it is in, whether it
/// is kept, and what a change to it marks dirty. Its key and its map are [`ObjectKind`]'s.
trait WatchedKind:
    ObjectKind + Resource<DynamicType = ()> + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// Whether `key` belongs to the watcher scoped to `namespace` (`None`: all).
    fn in_scope(key: &Self::Key, namespace: Option<&str>) -> bool;
    fn keep(&self, _shared: &Shared) -> bool {
        true
    }
    /// Whether this object is one the watcher with field selector `fields` lists (its share
    /// of the store, which a relist replaces).
    fn in_share(&self, _fields: Option<&str>) -> bool {
        true
    }
    /// Records that `key` changed from `old` to `new` (either absent: created or deleted).
    fn mark(dirty: &mut Dirty, _key: &Self::Key, _old: Option<&Self>, _new: Option<&Self>) {
        dirty.routing = true;
    }
}

fn namespaced_in_scope(key: &ObjectName, namespace: Option<&str>) -> bool {
    namespace.is_none_or(|ns| key.namespace == ns)
}

impl WatchedKind for Ingress {
    fn in_scope(key: &ObjectName, namespace: Option<&str>) -> bool {
        namespaced_in_scope(key, namespace)
    }
}

impl WatchedKind for Service {
    fn in_scope(key: &ObjectName, namespace: Option<&str>) -> bool {
        namespaced_in_scope(key, namespace)
    }
    fn mark(dirty: &mut Dirty, key: &ObjectName, _old: Option<&Self>, _new: Option<&Self>) {
        dirty.services.insert(key.clone());
    }
}

impl WatchedKind for EndpointSlice {
    fn in_scope(key: &ObjectName, namespace: Option<&str>) -> bool {
        namespaced_in_scope(key, namespace)
    }
    fn mark(dirty: &mut Dirty, key: &ObjectName, old: Option<&Self>, new: Option<&Self>) {
        // A slice that moved from one Service to another touches both.
        for slice in old.into_iter().chain(new) {
            let labels = slice.metadata.labels.as_ref();
            if let Some(service) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) {
                dirty.endpoints_of.insert(ObjectName {
                    namespace: key.namespace.clone(),
                    name: service.clone(),
                });
            }
        }
    }
}

impl WatchedKind for Secret {
    fn in_scope(key: &ObjectName, namespace: Option<&str>) -> bool {
        namespaced_in_scope(key, namespace)
    }
    fn keep(&self, shared: &Shared) -> bool {
        let Some(name) = Self::key(&self.metadata) else {
            return false;
        };
        match self.type_.as_deref() {
            Some(TLS_SECRET_TYPE) => shared.keeps_secret(&name),
            // Opaque Secrets hold anything: only those an Ingress names (`auth-secret`), or
            // a CA bundle (`proxy-ssl-secret`) in scope, never all.
            Some(OPAQUE_SECRET_TYPE) => {
                shared.names_secret(&name) || (is_kept_secret(self) && shared.keeps_secret(&name))
            }
            _ => false,
        }
    }
    fn in_share(&self, fields: Option<&str>) -> bool {
        match fields.and_then(|f| f.strip_prefix("type=")) {
            Some(kind) => self.type_.as_deref() == Some(kind),
            None => true,
        }
    }
}

impl WatchedKind for ConfigMap {
    fn in_scope(key: &ObjectName, namespace: Option<&str>) -> bool {
        namespaced_in_scope(key, namespace)
    }
}

impl WatchedKind for IngressClass {
    fn in_scope(_: &String, _: Option<&str>) -> bool {
        true
    }
}

/// The running watchers and the objects they keep.
pub(crate) struct KubeSource {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl KubeSource {
    /// Starts the watchers: cluster-wide, or one per namespace in `namespaces`, and one for
    /// the `nginx_configmap` alone. Every change sends `()` on `changes` (the caller debounces).
    pub(crate) fn start(
        client: Client,
        namespaces: &[String],
        nginx_configmap: Option<&ObjectName>,
        changes: UnboundedSender<()>,
    ) -> Self {
        let shared = Arc::new(Shared {
            objects: Mutex::new(Store::default()),
            unlisted: AtomicUsize::new(0),
            keep_all_secrets: AtomicBool::new(true),
            referenced_secrets: Mutex::new(BTreeSet::new()),
            relist_secrets: watch::channel(0).0,
            changes,
        });
        let scopes: Vec<Option<String>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().cloned().map(Some).collect()
        };
        let mut tasks = Vec::new();
        for scope in &scopes {
            let config = watcher::Config::default;
            tasks.push(spawn_namespaced::<Service>(
                &client,
                scope,
                config(),
                &shared,
            ));
            tasks.push(spawn_namespaced::<EndpointSlice>(
                &client,
                scope,
                config(),
                &shared,
            ));
            tasks.push(spawn_namespaced::<Ingress>(
                &client,
                scope,
                config(),
                &shared,
            ));
            // By type, so the API server never sends us the other kinds of Secret; the Opaque
            // ones are kept only when named (`auth-secret`), or with a ca.crt (a
            // `proxy-ssl-secret`) as TLS Secrets are.
            for secret_type in [TLS_SECRET_TYPE, OPAQUE_SECRET_TYPE] {
                let of_type = config().fields(&format!("type={secret_type}"));
                tasks.push(spawn_namespaced::<Secret>(&client, scope, of_type, &shared));
            }
        }
        if let Some(name) = nginx_configmap {
            // That one object only: ConfigMaps are many and none other is ours to read.
            let one = watcher::Config::default().fields(&format!("metadata.name={}", name.name));
            tasks.push(spawn_namespaced::<ConfigMap>(
                &client,
                &Some(name.namespace.clone()),
                one,
                &shared,
            ));
        }
        shared.unlisted.fetch_add(1, Ordering::SeqCst);
        tasks.push(tokio::spawn(watch_kind::<IngressClass>(
            Api::all(client.clone()),
            watcher::Config::default(),
            None,
            shared.clone(),
        )));
        Self { shared, tasks }
    }

    /// Whether every watcher has completed its first list.
    pub(crate) fn has_listed_all(&self) -> bool {
        self.shared.unlisted.load(Ordering::SeqCst) == 0
    }

    /// Runs `f` on the current objects and what changed since the last call (which it resets).
    pub(crate) fn with_changes<R>(&self, f: impl FnOnce(&ClusterObjects, Dirty) -> R) -> R {
        let mut store = self.shared.objects();
        let dirty = std::mem::take(&mut store.dirty);
        f(&store.objects, dirty)
    }

    /// The Secrets the current Ingresses name: others are dropped from the store; a newly named
    /// Secret the store lacks makes the Secret watchers relist.
    pub(crate) fn set_referenced_secrets(&self, referenced: BTreeSet<ObjectName>) {
        let newly_named = {
            let mut current = self
                .shared
                .referenced_secrets
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let newly_named: Vec<ObjectName> = referenced.difference(&current).cloned().collect();
            *current = referenced;
            newly_named
        };
        self.shared.keep_all_secrets.store(false, Ordering::SeqCst);
        let missing = {
            let mut store = self.shared.objects();
            let objects = &mut store.objects;
            let referenced = self
                .shared
                .referenced_secrets
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            objects.secrets.retain(|name, _| referenced.contains(name));
            newly_named
                .iter()
                .any(|name| !objects.secrets.contains_key(name))
        };
        // Before the first call every TLS Secret was kept, but no Opaque one (`auth-secret`):
        // a missing one may exist.
        if missing {
            self.shared.relist_secrets.send_modify(|n| *n += 1);
        }
    }
}

fn spawn_namespaced<K>(
    client: &Client,
    namespace: &Option<String>,
    config: watcher::Config,
    shared: &Arc<Shared>,
) -> tokio::task::JoinHandle<()>
where
    K: WatchedKind<Key = ObjectName> + Resource<Scope = NamespaceResourceScope>,
{
    let api = match namespace {
        Some(ns) => Api::<K>::namespaced(client.clone(), ns),
        None => Api::<K>::all(client.clone()),
    };
    shared.unlisted.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(watch_kind::<K>(
        api,
        config,
        namespace.clone(),
        shared.clone(),
    ))
}

/// One watcher: applies its events to the store, a (re)list as one replacement.
async fn watch_kind<K: WatchedKind>(
    api: Api<K>,
    config: watcher::Config,
    namespace: Option<String>,
    shared: Arc<Shared>,
) {
    let mut first_list_done = false;
    let mut relist = shared.relist_secrets.subscribe();
    loop {
        let mut stream = watcher(api.clone(), config.clone())
            .default_backoff()
            .boxed();
        let mut listing: Option<BTreeMap<K::Key, Sourced<K>>> = None;
        loop {
            let event = tokio::select! {
                event = stream.next() => event,
                // Only Secret watchers are ever told to relist.
                Ok(()) = relist.changed(), if K::KIND == "Secret" => break,
            };
            let Some(event) = event else {
                return;
            };
            let changed = match event {
                Ok(watcher::Event::Init) => {
                    listing = Some(BTreeMap::new());
                    false
                }
                Ok(watcher::Event::InitApply(object)) => {
                    if let (Some(listing), Some((key, object))) =
                        (listing.as_mut(), stored(object, &shared))
                    {
                        listing.insert(key, object);
                    }
                    false
                }
                Ok(watcher::Event::InitDone) => {
                    let listed = listing.take().unwrap_or_default();
                    {
                        let mut store = shared.objects();
                        store.dirty.everything = true;
                        let slot = K::in_cluster(&mut store.objects);
                        let fields = config.field_selector.as_deref();
                        slot.retain(|key, object| {
                            !(K::in_scope(key, namespace.as_deref())
                                && object.object.in_share(fields))
                        });
                        slot.extend(listed);
                    }
                    if !first_list_done {
                        first_list_done = true;
                        shared.unlisted.fetch_sub(1, Ordering::SeqCst);
                    }
                    true
                }
                Ok(watcher::Event::Apply(object)) => {
                    let key = K::key(object.meta());
                    let kept = stored(object, &shared);
                    let mut store = shared.objects();
                    let Store { objects, dirty } = &mut *store;
                    let slot = K::in_cluster(objects);
                    match (kept, key) {
                        (Some((key, object)), _) => {
                            K::mark(
                                dirty,
                                &key,
                                slot.get(&key).map(|o| &o.object),
                                Some(&object.object),
                            );
                            slot.insert(key, object);
                        }
                        // No longer one we keep (a Secret nobody names): forget it.
                        (None, Some(key)) => {
                            if let Some(old) = slot.remove(&key) {
                                K::mark(dirty, &key, Some(&old.object), None);
                            }
                        }
                        (None, None) => {}
                    }
                    true
                }
                Ok(watcher::Event::Delete(object)) => {
                    if let Some(key) = K::key(object.meta()) {
                        let mut store = shared.objects();
                        let Store { objects, dirty } = &mut *store;
                        if let Some(old) = K::in_cluster(objects).remove(&key) {
                            K::mark(dirty, &key, Some(&old.object), None);
                        }
                    }
                    true
                }
                Err(error) => {
                    // The watcher retries with backoff and relists when it must; the store keeps
                    // serving what it has.
                    tracing::warn!(kind = K::KIND, namespace = ?namespace, %error, "watch error");
                    false
                }
            };
            if changed {
                let _ = shared.changes.send(());
            }
        }
        tracing::debug!(kind = K::KIND, "relisting");
    }
}

/// The object as the store keeps it, or `None` when it is not kept.
fn stored<K: WatchedKind>(mut object: K, shared: &Shared) -> Option<(K::Key, Sourced<K>)> {
    if !object.keep(shared) {
        return None;
    }
    let key = K::key(object.meta())?;
    object.managed_fields_mut().clear();
    Some((
        key,
        Sourced {
            object,
            origin: Origin::Api,
        },
    ))
}
