//! The object store: objects as JSON keyed by resource, namespace and name, one global
//! resourceVersion counter, and the history of every change (for watches).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::resources::RESOURCES;
use crate::selector::Selector;

mod error;
mod metadata;

pub use error::ApiError;
use metadata::{merge_patch, meta_str, now_rfc3339, same_ignoring_rv, set_meta, spec_part};

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    /// `ADDED`
    Added,
    /// `MODIFIED`
    Modified,
    /// `DELETED`
    Deleted,
}

impl EventType {
    /// The wire name (`ADDED`, ...).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change in the history.
#[derive(Debug, Clone)]
pub(crate) struct HistEvent {
    pub rv: u64,
    pub res: usize,
    pub ty: EventType,
    pub obj: Value,
    /// The object before a MODIFIED change (for selector transitions).
    pub prev: Option<Value>,
}

/// How an update treats `.status` and `metadata.resourceVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// A write to the main resource over HTTP: keeps the stored status when the resource has a
    /// status subresource; honours a resourceVersion precondition.
    Main,
    /// A write to `/status`: changes only `.status`; honours a resourceVersion precondition.
    Status,
    /// The test side: writes everything, no precondition.
    Force,
}

type Key = (String, String);

pub(crate) struct Store {
    /// The latest resourceVersion handed out.
    pub rv: u64,
    /// Watches and continue tokens from a resourceVersion below this get 410 Gone.
    pub compacted_before: u64,
    uid_seq: u64,
    objects: Vec<BTreeMap<Key, Value>>,
    pub history: Vec<HistEvent>,
}

impl Store {
    pub(crate) fn new() -> Store {
        Store {
            rv: 1,
            compacted_before: 0,
            uid_seq: 0,
            objects: vec![BTreeMap::new(); RESOURCES.len()],
            history: Vec::new(),
        }
    }

    pub(crate) fn get(&self, res: usize, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(res)?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// Objects of `res` (in `ns`, or all namespaces when `None`) matching `sel`, in
    /// (namespace, name) order, with their keys.
    pub(crate) fn list(&self, res: usize, ns: Option<&str>, sel: &Selector) -> Vec<(&Key, &Value)> {
        let Some(objs) = self.objects.get(res) else {
            return Vec::new();
        };
        objs.iter()
            .filter(|((ons, _), o)| ns.is_none_or(|ns| ns == ons) && sel.matches(o))
            .collect()
    }

    /// Make sure `obj` is an object of `res` in `ns` (`""` for cluster-scoped): fills in
    /// apiVersion, kind and metadata.namespace; checks they agree with the URL.
    fn normalize(&self, res: usize, ns: &str, mut obj: Value) -> Result<Value, ApiError> {
        let def = &RESOURCES[res];
        let Some(map) = obj.as_object_mut() else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        let api_version = def.api_version();
        match map.get("apiVersion") {
            None | Some(Value::Null) => {
                map.insert("apiVersion".into(), Value::String(api_version));
            }
            Some(Value::String(s)) if *s == api_version => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({other}) does not match the expected API version ({api_version})"
                )))
            }
        }
        match map.get("kind") {
            None | Some(Value::Null) => {
                map.insert("kind".into(), Value::String(def.kind.into()));
            }
            Some(Value::String(s)) if s == def.kind => {}
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({other}) does not match the expected kind ({})",
                    def.kind
                )))
            }
        }
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(meta) = meta.as_object_mut() else {
            return Err(ApiError::bad_request("metadata must be an object"));
        };
        if def.namespaced {
            match meta.get("namespace") {
                None | Some(Value::Null) => {
                    meta.insert("namespace".into(), Value::String(ns.to_string()));
                }
                Some(Value::String(s)) if s == ns => {}
                Some(Value::String(s)) if s.is_empty() => {
                    meta.insert("namespace".into(), Value::String(ns.to_string()));
                }
                Some(other) => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the provided object ({other}) does not match the namespace sent on the request ({ns})"
                    )))
                }
            }
        } else {
            meta.remove("namespace");
        }
        Ok(obj)
    }

    fn next_uid(&mut self) -> String {
        self.uid_seq += 1;
        format!("fa4e0000-0000-4000-8000-{:012x}", self.uid_seq)
    }

    /// Store `new` (whose key is `key`) as the next resourceVersion and record the event.
    fn commit(&mut self, res: usize, key: Key, mut new: Value, prev: Option<Value>) -> Value {
        self.rv += 1;
        set_meta(
            &mut new,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        let ty = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.objects[res].insert(key, new.clone());
        self.history.push(HistEvent {
            rv: self.rv,
            res,
            ty,
            obj: new.clone(),
            prev,
        });
        new
    }

    /// POST: create `obj` in `ns`; 409 AlreadyExists when present.
    pub(crate) fn create(&mut self, res: usize, ns: &str, obj: Value) -> Result<Value, ApiError> {
        let def = &RESOURCES[res];
        let mut obj = self.normalize(res, ns, obj)?;
        let name = match meta_str(&obj, "name") {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta_str(&obj, "generateName") {
                Some(prefix) if !prefix.is_empty() => {
                    format!("{prefix}{:05x}", (self.rv * 2_654_435_761) & 0xfffff)
                }
                _ => {
                    return Err(ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "{} is invalid: metadata.name: Required value: name or generateName is required",
                            def.kind
                        ),
                    ))
                }
            },
        };
        let key = (ns.to_string(), name.clone());
        if self.objects[res].contains_key(&key) {
            return Err(ApiError::already_exists(def, &name));
        }
        set_meta(&mut obj, "name", Value::String(name));
        let uid = self.next_uid();
        set_meta(&mut obj, "uid", Value::String(uid));
        set_meta(&mut obj, "creationTimestamp", Value::String(now_rfc3339()));
        set_meta(&mut obj, "generation", json!(1));
        Ok(self.commit(res, key, obj, None))
    }

    /// PUT (or the test side's replace): replace the object named `name` with `body`.
    pub(crate) fn update(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        body: Value,
        mode: WriteMode,
    ) -> Result<Value, ApiError> {
        let def = &RESOURCES[res];
        let body = self.normalize(res, ns, body)?;
        match meta_str(&body, "name") {
            Some(n) if n == name => {}
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            None => {
                return Err(ApiError::bad_request(
                    "metadata.name: Required value: name is required",
                ))
            }
        }
        let key = (ns.to_string(), name.to_string());
        let Some(old) = self.objects[res].get(&key).cloned() else {
            return Err(ApiError::not_found(def, name));
        };
        if mode != WriteMode::Force {
            if let Some(want) = meta_str(&body, "resourceVersion") {
                if !want.is_empty() && Some(want) != meta_str(&old, "resourceVersion") {
                    return Err(ApiError::conflict(def, name));
                }
            }
        }
        let new = match mode {
            WriteMode::Status => {
                let mut new = old.clone();
                match body.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                new
            }
            WriteMode::Main | WriteMode::Force => {
                let mut new = body;
                if mode == WriteMode::Main && def.status_subresource {
                    match old.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(m) = new.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                new
            }
        };
        Ok(self.replace_stored(res, key, old, new))
    }

    /// Keep the server-owned metadata of `old` in `new`, bump generation on spec change, and
    /// commit unless nothing changed.
    fn replace_stored(&mut self, res: usize, key: Key, old: Value, mut new: Value) -> Value {
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "resourceVersion",
        ] {
            let v = old
                .get("metadata")
                .and_then(|m| m.get(field))
                .cloned()
                .unwrap_or(Value::Null);
            if v.is_null() {
                if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove(field);
                }
            } else {
                set_meta(&mut new, field, v);
            }
        }
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let generation = if spec_part(&old) != spec_part(&new) {
            generation + 1
        } else {
            generation
        };
        set_meta(&mut new, "generation", json!(generation));
        if same_ignoring_rv(&old, &new) {
            return old;
        }
        self.commit(res, key, new, Some(old))
    }

    /// PATCH with a merge-style `patch` (merge, strategic merge, or server-side apply).
    /// `create` (server-side apply on the main resource) creates a missing object.
    pub(crate) fn patch(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        patch: &Value,
        status: bool,
        create: bool,
    ) -> Result<Value, ApiError> {
        let def = &RESOURCES[res];
        if !patch.is_object() {
            return Err(ApiError::bad_request("the patch must be a JSON object"));
        }
        let key = (ns.to_string(), name.to_string());
        let Some(old) = self.objects[res].get(&key).cloned() else {
            if create && !status {
                let mut obj = patch.clone();
                if let Some(m) = obj.as_object_mut() {
                    m.entry("metadata")
                        .or_insert_with(|| Value::Object(Map::new()));
                }
                match meta_str(&obj, "name") {
                    None => set_meta(&mut obj, "name", Value::String(name.to_string())),
                    Some(n) if n == name => {}
                    Some(n) => {
                        return Err(ApiError::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )))
                    }
                }
                if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                if def.status_subresource {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
                return self.create(res, ns, obj);
            }
            return Err(ApiError::not_found(def, name));
        };
        if let Some(want) = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            if Some(want) != meta_str(&old, "resourceVersion") {
                return Err(ApiError::conflict(def, name));
            }
        }
        let mut patched = old.clone();
        merge_patch(&mut patched, patch);
        let patched = self.normalize(res, ns, patched)?;
        let new = if status {
            let mut new = old.clone();
            match patched.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            new
        } else {
            let mut new = patched;
            if def.status_subresource {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            new
        };
        Ok(self.replace_stored(res, key, old, new))
    }

    /// DELETE; `precondition_rv` is DeleteOptions.preconditions.resourceVersion.
    pub(crate) fn delete(
        &mut self,
        res: usize,
        ns: &str,
        name: &str,
        precondition_rv: Option<&str>,
    ) -> Result<Value, ApiError> {
        let def = &RESOURCES[res];
        let key = (ns.to_string(), name.to_string());
        let Some(old) = self.objects[res].get(&key) else {
            return Err(ApiError::not_found(def, name));
        };
        if let Some(want) = precondition_rv {
            if Some(want) != meta_str(old, "resourceVersion") {
                return Err(ApiError::conflict(def, name));
            }
        }
        let Some(mut obj) = self.objects[res].remove(&key) else {
            return Err(ApiError::not_found(def, name));
        };
        self.rv += 1;
        set_meta(
            &mut obj,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        self.history.push(HistEvent {
            rv: self.rv,
            res,
            ty: EventType::Deleted,
            obj: obj.clone(),
            prev: None,
        });
        Ok(obj)
    }

    /// The test side's create-or-replace: no preconditions, status written as given.
    pub(crate) fn upsert(&mut self, res: usize, obj: Value) -> Result<Value, ApiError> {
        let def = &RESOURCES[res];
        let ns = if def.namespaced {
            meta_str(&obj, "namespace")
                .filter(|n| !n.is_empty())
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let Some(name) = meta_str(&obj, "name").map(str::to_string) else {
            return Err(ApiError::bad_request("metadata.name is required"));
        };
        if self.get(res, &ns, &name).is_some() {
            self.update(res, &ns, &name, obj, WriteMode::Force)
        } else {
            self.create(res, &ns, obj)
        }
    }

    /// Compaction: every resourceVersion handed out so far becomes too old for a new watch or
    /// a continue token. The counter moves on by one so that a fresh list returns a
    /// resourceVersion that can be watched from.
    pub(crate) fn expire(&mut self) {
        self.rv += 1;
        self.compacted_before = self.rv;
    }
}
