//! What one file gave, by kind: the kinds this source reads and how each is keyed and admitted,
//! keeping a broken document's last good objects, and merging the files into one snapshot with
//! duplicates reported.

use std::{collections::BTreeMap, fmt};

use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Secret, Service},
        discovery::v1::EndpointSlice,
        networking::v1::{Ingress, IngressClass},
    },
    ByteString, Resource as _,
};
use serde::de::DeserializeOwned;

use crate::model::{
    is_kept_secret, ObjectKind, ObjectName, Origin, Problem, Sourced, OPAQUE_SECRET_TYPE,
    TLS_SECRET_TYPE,
};

use super::Snapshot;

/// The objects one file defines, in document order (duplicates included: they are reported when
/// the files are merged).
#[derive(Clone, Debug, Default)]
pub(super) struct FileObjects {
    pub(super) services: Vec<(ObjectName, Sourced<Service>)>,
    pub(super) endpoint_slices: Vec<(ObjectName, Sourced<EndpointSlice>)>,
    pub(super) ingresses: Vec<(ObjectName, Sourced<Ingress>)>,
    pub(super) ingress_classes: Vec<(String, Sourced<IngressClass>)>,
    pub(super) secrets: Vec<(ObjectName, Sourced<Secret>)>,
    pub(super) config_maps: Vec<(ObjectName, Sourced<ConfigMap>)>,
}

/// A kind of object this source reads, as a file holds it: where [`FileObjects`] keeps it and
/// what loading does to it. Its key and its map in the snapshot are [`ObjectKind`]'s.
pub(super) trait ManifestKind: ObjectKind + DeserializeOwned {
    /// This kind's objects in a file.
    fn in_file(objects: &FileObjects) -> &Vec<(Self::Key, Sourced<Self>)>;
    /// The same, mutable.
    fn in_file_mut(objects: &mut FileObjects) -> &mut Vec<(Self::Key, Sourced<Self>)>;
    /// Load-time normalisation; `None` drops an object we have no use for (silently: it is valid).
    fn admit(self, _origin: &Origin) -> Option<Self> {
        Some(self)
    }
}

/// Implements [`ManifestKind`] for a k8s-openapi type kept in [`FileObjects`]'s `$field`.
macro_rules! impl_kind {
    ($ty:ty, $field:ident $(, admit: $admit:expr)?) => {
        impl ManifestKind for $ty {
            fn in_file(objects: &FileObjects) -> &Vec<(Self::Key, Sourced<Self>)> {
                &objects.$field
            }
            fn in_file_mut(objects: &mut FileObjects) -> &mut Vec<(Self::Key, Sourced<Self>)> {
                &mut objects.$field
            }
            $(fn admit(self, origin: &Origin) -> Option<Self> {
                $admit(self, origin)
            })?
        }
    };
}

impl_kind!(Service, services);
impl_kind!(EndpointSlice, endpoint_slices);
impl_kind!(Ingress, ingresses);
impl_kind!(IngressClass, ingress_classes);
impl_kind!(Secret, secrets, admit: admit_secret);
impl_kind!(ConfigMap, config_maps);

/// Runs `$body` once per kind this source reads, with `$kind` naming the type: the one list of
/// kinds that parsing, keeping last good objects and merging all follow. Full paths: it expands
/// in `parse` too, where these types are not imported.
macro_rules! for_each_kind {
    ($kind:ident => $body:block) => {{
        {
            type $kind = k8s_openapi::api::core::v1::Service;
            $body
        }
        {
            type $kind = k8s_openapi::api::discovery::v1::EndpointSlice;
            $body
        }
        {
            type $kind = k8s_openapi::api::networking::v1::Ingress;
            $body
        }
        {
            type $kind = k8s_openapi::api::networking::v1::IngressClass;
            $body
        }
        {
            type $kind = k8s_openapi::api::core::v1::Secret;
            $body
        }
        {
            type $kind = k8s_openapi::api::core::v1::ConfigMap;
            $body
        }
    }};
}
pub(super) use for_each_kind;

/// Keeps TLS Secrets, and Opaque ones for `auth-secret` and CA bundles (those no Ingress names
/// and without a `ca.crt` are dropped when the files are merged, see [`drop_unnamed_secrets`]: others hold things we must not
/// read), with `stringData` merged into `data` as the API server does on write (`stringData`
/// wins on a shared key).
fn admit_secret(mut secret: Secret, origin: &Origin) -> Option<Secret> {
    let kind = secret.type_.as_deref().unwrap_or(OPAQUE_SECRET_TYPE);
    if kind != TLS_SECRET_TYPE && kind != OPAQUE_SECRET_TYPE {
        tracing::debug!(%origin, r#type = ?secret.type_, "ignoring Secret that is neither kubernetes.io/tls nor Opaque");
        return None;
    }
    if let Some(string_data) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        for (key, value) in string_data {
            data.insert(key, ByteString(value.into_bytes()));
        }
    }
    Some(secret)
}

/// Drops the Opaque Secrets no Ingress names in its `auth-secret` annotation.
pub(super) fn drop_unnamed_secrets(snapshot: &mut Snapshot) {
    let named: std::collections::BTreeSet<ObjectName> = snapshot
        .objects
        .ingresses
        .iter()
        .filter_map(|(name, ingress)| auth_secret_of(name, &ingress.object))
        .collect();
    snapshot
        .objects
        .secrets
        .retain(|name, secret| is_kept_secret(&secret.object) || named.contains(name));
}

/// The Secret an Ingress's `auth-secret` annotation names (`name` or `namespace/name`).
pub(crate) fn auth_secret_of(
    name: &ObjectName,
    ingress: &k8s_openapi::api::networking::v1::Ingress,
) -> Option<ObjectName> {
    let annotations = ingress.metadata.annotations.as_ref()?;
    let value = annotations
        .get("nginx.ingress.kubernetes.io/auth-secret")?
        .trim();
    let (namespace, secret) = value.split_once('/').unwrap_or((&name.namespace, value));
    Some(ObjectName {
        namespace: namespace.to_string(),
        name: secret.to_string(),
    })
}

/// Objects from documents that failed now keep their previous version.
pub(super) fn keep_previous(objects: &mut FileObjects, previous: &FileObjects) {
    fn keep<K: ManifestKind>(objects: &mut FileObjects, previous: &FileObjects) {
        for (name, object) in K::in_file(previous) {
            let current = K::in_file_mut(objects);
            if !current.iter().any(|(n, _)| n == name) {
                current.push((name.clone(), object.clone()));
            }
        }
    }
    for_each_kind!(K => { keep::<K>(objects, previous) });
}

pub(super) fn merge_into(snapshot: &mut Snapshot, objects: &FileObjects) {
    for_each_kind!(K => {
        for (name, object) in K::in_file(objects) {
            insert_unique(
                K::in_cluster(&mut snapshot.objects),
                &mut snapshot.problems,
                K::KIND,
                name,
                object,
            );
        }
    });
}

fn insert_unique<K: Ord + Clone + fmt::Display, T: Clone>(
    map: &mut BTreeMap<K, Sourced<T>>,
    problems: &mut Vec<Problem>,
    kind: &str,
    name: &K,
    object: &Sourced<T>,
) {
    if let Some(first) = map.get(name) {
        problems.push(Problem {
            severity: crate::model::Severity::Error,
            origin: object.origin.to_string(),
            object: format!("{kind} {name}"),
            field: "metadata.name".to_string(),
            message: format!("also defined in {}; that definition is used", first.origin),
        });
        return;
    }
    map.insert(name.clone(), object.clone());
}
