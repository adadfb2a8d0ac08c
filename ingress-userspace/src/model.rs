//! The typed objects every source produces and the translator reads: the Kubernetes objects
//! themselves (k8s-openapi types), each tagged with where it came from so problems can name it.

use std::{collections::BTreeMap, fmt, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Secret, Service},
        discovery::v1::EndpointSlice,
        networking::v1::{Ingress, IngressClass},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    Metadata, Resource,
};

/// Namespace and name of an object (the namespace defaults to `default`, as kubectl does).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where an object came from: a file and document number, or the API server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Document `document` (1-based) of `path`.
    File {
        /// The manifest file.
        path: Arc<str>,
        /// 1-based index of the YAML document in the file.
        document: usize,
    },
    /// The Kubernetes API.
    Api,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, document } => write!(f, "{path} (document {document})"),
            Origin::Api => f.write_str("the Kubernetes API"),
        }
    }
}

/// An object and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Sourced<T> {
    /// The object.
    pub object: T,
    /// Where it came from.
    pub origin: Origin,
}

/// The Secret type TLS certificates live in; sources keep these Secrets, [`OPAQUE_SECRET_TYPE`]
/// ones that hold a [`CA_KEY`], and the Opaque ones an Ingress names in `auth-secret`.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";
/// The generic Secret type: a CA bundle for `proxy-ssl-secret`, htpasswd users for
/// `auth-secret`.
pub const OPAQUE_SECRET_TYPE: &str = "Opaque";
/// The key of a CA bundle in a Secret.
pub const CA_KEY: &str = "ca.crt";

/// Whether a source keeps this Secret whether or not an Ingress names it in `auth-secret`: a
/// TLS one, or an Opaque one holding a CA bundle (for `proxy-ssl-secret`); any other Opaque one
/// holds things the agent must not read unless an Ingress names it. `stringData` counts, as
/// the sources merge it into `data`.
pub fn is_kept_secret(secret: &Secret) -> bool {
    match secret.type_.as_deref().unwrap_or(OPAQUE_SECRET_TYPE) {
        TLS_SECRET_TYPE => true,
        OPAQUE_SECRET_TYPE => {
            secret.data.as_ref().is_some_and(|d| d.contains_key(CA_KEY))
                || secret
                    .string_data
                    .as_ref()
                    .is_some_and(|d| d.contains_key(CA_KEY))
        }
        _ => false,
    }
}

/// Everything the translator needs to know about the cluster (or the manifest directory).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterObjects {
    /// Services by namespace/name.
    pub services: BTreeMap<ObjectName, Sourced<Service>>,
    /// EndpointSlices by namespace/name.
    pub endpoint_slices: BTreeMap<ObjectName, Sourced<EndpointSlice>>,
    /// Ingresses by namespace/name (all of them; the L7 translator picks its own by class).
    pub ingresses: BTreeMap<ObjectName, Sourced<Ingress>>,
    /// IngressClasses by name (they are cluster-scoped, so there is no namespace).
    pub ingress_classes: BTreeMap<String, Sourced<IngressClass>>,
    /// Secrets by namespace/name. Sources keep only `kubernetes.io/tls` Secrets and Opaque ones
    /// with a `ca.crt` ([`is_kept_secret`]), with `stringData` already merged into `data`, as
    /// the API server stores them.
    pub secrets: BTreeMap<ObjectName, Sourced<Secret>>,
    /// ConfigMaps by namespace/name: from files, all of them; from a cluster, only the one
    /// `--nginx-configmap` names.
    pub config_maps: BTreeMap<ObjectName, Sourced<ConfigMap>>,
}

/// A kind of object in [`ClusterObjects`]: how it is keyed and which map holds it. Both sources
/// build on this one definition (`source::files::ManifestKind` adds where a file keeps it,
/// `source::kube::WatchedKind` how a watcher scopes and marks it), so the two cannot disagree on
/// what an object's key is. `apiVersion` and `kind` come from k8s-openapi's [`Resource`].
pub(crate) trait ObjectKind: Resource + Metadata<Ty = ObjectMeta> + Clone {
    /// `ObjectName` for namespaced kinds, the bare name for cluster-scoped ones.
    type Key: Ord + Clone + fmt::Display + Send;
    /// Whether `metadata.namespace` means anything (it is ignored on cluster-scoped kinds).
    const NAMESPACED: bool;
    /// The key, or `None` when `metadata.name` is missing or empty.
    fn key(meta: &ObjectMeta) -> Option<Self::Key>;
    /// This kind's objects in the store.
    fn in_cluster(objects: &mut ClusterObjects) -> &mut BTreeMap<Self::Key, Sourced<Self>>;
}

/// Implements [`ObjectKind`] for a namespaced k8s-openapi type kept in `ClusterObjects::$field`.
macro_rules! namespaced_kind {
    ($ty:ty, $field:ident) => {
        impl ObjectKind for $ty {
            type Key = ObjectName;
            const NAMESPACED: bool = true;
            fn key(meta: &ObjectMeta) -> Option<ObjectName> {
                meta.name.as_ref().filter(|n| !n.is_empty())?;
                Some(object_name(meta))
            }
            fn in_cluster(
                objects: &mut ClusterObjects,
            ) -> &mut BTreeMap<ObjectName, Sourced<Self>> {
                &mut objects.$field
            }
        }
    };
}

namespaced_kind!(Service, services);
namespaced_kind!(EndpointSlice, endpoint_slices);
namespaced_kind!(Ingress, ingresses);
namespaced_kind!(Secret, secrets);
namespaced_kind!(ConfigMap, config_maps);

impl ObjectKind for IngressClass {
    type Key = String;
    const NAMESPACED: bool = false;
    fn key(meta: &ObjectMeta) -> Option<String> {
        meta.name.clone().filter(|n| !n.is_empty())
    }
    fn in_cluster(objects: &mut ClusterObjects) -> &mut BTreeMap<String, Sourced<Self>> {
        &mut objects.ingress_classes
    }
}

/// How bad a [`Problem`] is: `validate` fails on errors (and on warnings with `--strict`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Something is not served as written, or is served with a 503 (a bad field, a missing
    /// Service, an annotation value that does not parse).
    Error,
    /// Served, with a setting ignored or only partly honoured (an unsupported, never-executed
    /// or unknown annotation; a value replaced by its default as ingress-nginx would).
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A problem with one object: which object, which field, what is wrong. Problems never stop the
/// agent; they are reported and the object's last good state stays programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// Where the object came from.
    pub origin: String,
    /// `Kind namespace/name`, or empty when the document could not be read as an object.
    pub object: String,
    /// The field path, e.g. `spec.ports[1].protocol`, or empty.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if !self.object.is_empty() {
            write!(f, ": {}", self.object)?;
        }
        if !self.field.is_empty() {
            write!(f, ": field {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Namespace and name of a k8s-openapi object's metadata.
pub fn object_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> ObjectName {
    ObjectName {
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        name: meta.name.clone().unwrap_or_default(),
    }
}
