//! The file source: a directory of YAML manifests (several documents per file allowed), read into
//! k8s-openapi types, and watched for changes.
//!
//! A file that cannot be read completely keeps its last good objects: documents that still parse
//! replace their previous versions, and objects from broken documents stay as they were. Problems
//! name the file, the document, the object and the field.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::{api::core::v1::Service, api::discovery::v1::EndpointSlice};
use serde::de::DeserializeOwned;

use crate::model::{object_name, ClusterObjects, ObjectName, Origin, Problem, Sourced};

/// Errors that stop reading the directory as a whole (a single bad file never does).
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The directory cannot be listed.
    #[error("cannot read manifest directory {path}: {source}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file watcher could not be set up.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: notify::Error,
    },
}

/// The objects one file defines.
#[derive(Clone, Debug, Default)]
struct FileObjects {
    services: Vec<(ObjectName, Sourced<Service>)>,
    endpoint_slices: Vec<(ObjectName, Sourced<EndpointSlice>)>,
}

/// A manifest directory and the last good objects of each file in it.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    last_good: BTreeMap<PathBuf, FileObjects>,
}

/// The result of reading the directory: the objects and every problem found.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The objects, last good versions included.
    pub objects: ClusterObjects,
    /// Problems with files, documents and objects.
    pub problems: Vec<Problem>,
}

impl ManifestDir {
    /// A directory not read yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            last_good: BTreeMap::new(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads every `.yaml`/`.yml` file (recursively, in path order) and returns the objects.
    pub fn load(&mut self) -> Result<Snapshot, FilesError> {
        let mut files = Vec::new();
        collect_manifest_files(&self.dir, &mut files)?;
        files.sort();
        let mut snapshot = Snapshot::default();
        let mut next_good = BTreeMap::new();
        for path in files {
            let (mut objects, problems) = match std::fs::read_to_string(&path) {
                Ok(text) => parse_manifest(&path, &text),
                Err(error) => (
                    FileObjects::default(),
                    vec![Problem {
                        origin: path.display().to_string(),
                        object: String::new(),
                        field: String::new(),
                        message: format!("cannot read file: {error}"),
                    }],
                ),
            };
            if !problems.is_empty() {
                if let Some(previous) = self.last_good.get(&path) {
                    keep_previous(&mut objects, previous);
                }
            }
            snapshot.problems.extend(problems);
            merge_into(&mut snapshot, &objects);
            next_good.insert(path, objects);
        }
        self.last_good = next_good;
        Ok(snapshot)
    }

    /// Watches the directory; every change event is sent on `changes` (the caller debounces).
    pub fn watch(
        &self,
        changes: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Result<notify::RecommendedWatcher, FilesError> {
        use notify::Watcher as _;
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    if !event.kind.is_access() {
                        let _ = changes.send(());
                    }
                }
            })
            .map_err(|source| FilesError::Watch {
                path: self.dir.clone(),
                source,
            })?;
        watcher
            .watch(&self.dir, notify::RecursiveMode::Recursive)
            .map_err(|source| FilesError::Watch {
                path: self.dir.clone(),
                source,
            })?;
        Ok(watcher)
    }
}

fn collect_manifest_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), FilesError> {
    let entries = std::fs::read_dir(dir).map_err(|source| FilesError::ReadDir {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Editors' and kubectl's temporary files start with a dot; skip them.
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_manifest_files(&path, files)?;
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            files.push(path);
        }
    }
    Ok(())
}

/// Objects from documents that failed now keep their previous version.
fn keep_previous(objects: &mut FileObjects, previous: &FileObjects) {
    for (name, service) in &previous.services {
        if !objects.services.iter().any(|(n, _)| n == name) {
            objects.services.push((name.clone(), service.clone()));
        }
    }
    for (name, slice) in &previous.endpoint_slices {
        if !objects.endpoint_slices.iter().any(|(n, _)| n == name) {
            objects.endpoint_slices.push((name.clone(), slice.clone()));
        }
    }
}

fn merge_into(snapshot: &mut Snapshot, objects: &FileObjects) {
    for (name, service) in &objects.services {
        insert_unique(
            &mut snapshot.objects.services,
            &mut snapshot.problems,
            "Service",
            name,
            service,
        );
    }
    for (name, slice) in &objects.endpoint_slices {
        insert_unique(
            &mut snapshot.objects.endpoint_slices,
            &mut snapshot.problems,
            "EndpointSlice",
            name,
            slice,
        );
    }
}

fn insert_unique<T: Clone>(
    map: &mut BTreeMap<ObjectName, Sourced<T>>,
    problems: &mut Vec<Problem>,
    kind: &str,
    name: &ObjectName,
    object: &Sourced<T>,
) {
    if let Some(first) = map.get(name) {
        problems.push(Problem {
            origin: object.origin.to_string(),
            object: format!("{kind} {name}"),
            field: "metadata.name".to_string(),
            message: format!("also defined in {}; that definition is used", first.origin),
        });
        return;
    }
    map.insert(name.clone(), object.clone());
}

/// Parses one manifest file: every document, every object, every problem.
fn parse_manifest(path: &Path, text: &str) -> (FileObjects, Vec<Problem>) {
    let path_text: Arc<str> = Arc::from(path.display().to_string());
    let mut objects = FileObjects::default();
    let mut problems = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = Origin::File {
            path: path_text.clone(),
            document: index + 1,
        };
        let problem = |object: String, field: &str, message: String| Problem {
            origin: origin.to_string(),
            object,
            field: field.to_string(),
            message,
        };
        let value: serde_yaml::Value = match serde::Deserialize::deserialize(document) {
            Ok(value) => value,
            Err(error) => {
                problems.push(problem(String::new(), "", format!("YAML syntax: {error}")));
                // After a syntax error the document stream cannot be resynchronised.
                break;
            }
        };
        if value.is_null() {
            continue;
        }
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or("");
        let display_name = describe(&value, kind);
        match (api_version, kind) {
            ("v1", "Service") => match typed::<Service>(value) {
                Ok(service) => match named(&service.metadata) {
                    Some(name) => objects.services.push((
                        name,
                        Sourced {
                            object: service,
                            origin,
                        },
                    )),
                    None => problems.push(problem(display_name, "metadata.name", "missing".into())),
                },
                Err((field, message)) => problems.push(problem(display_name, &field, message)),
            },
            ("discovery.k8s.io/v1", "EndpointSlice") => match typed::<EndpointSlice>(value) {
                Ok(slice) => match named(&slice.metadata) {
                    Some(name) => objects.endpoint_slices.push((
                        name,
                        Sourced {
                            object: slice,
                            origin,
                        },
                    )),
                    None => problems.push(problem(display_name, "metadata.name", "missing".into())),
                },
                Err((field, message)) => problems.push(problem(display_name, &field, message)),
            },
            ("", _) | (_, "") => problems.push(problem(
                display_name,
                if api_version.is_empty() {
                    "apiVersion"
                } else {
                    "kind"
                },
                "missing; every document must be a Kubernetes object".into(),
            )),
            // Other kinds (Deployments, ConfigMaps, ...) may share the directory; they are not ours.
            _ => {
                tracing::debug!(%origin, api_version, kind, "ignoring object of a kind we do not use")
            }
        }
    }
    (objects, problems)
}

fn named(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<ObjectName> {
    meta.name.as_ref().filter(|n| !n.is_empty())?;
    Some(object_name(meta))
}

/// `Kind namespace/name` for messages, from the raw document.
fn describe(value: &serde_yaml::Value, kind: &str) -> String {
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(|v| v.as_str())
        .unwrap_or("<unnamed>");
    let namespace = meta
        .and_then(|m| m.get("namespace"))
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let kind = if kind.is_empty() { "object" } else { kind };
    format!("{kind} {namespace}/{name}")
}

/// Deserializes into a k8s-openapi type; on failure returns the path of the offending field.
fn typed<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let field = error.path().to_string();
        let field = if field == "." { String::new() } else { field };
        (field, error.into_inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_file_document_object_and_field() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: shop}\nspec:\n  ports:\n  - port: not-a-number\n";
        let (objects, problems) = parse_manifest(Path::new("/m/s.yaml"), text);
        assert_eq!(objects.services.len(), 1);
        assert_eq!(problems.len(), 1);
        let p = &problems[0];
        assert_eq!(p.origin, "/m/s.yaml (document 2)");
        assert_eq!(p.object, "Service shop/b");
        assert_eq!(p.field, "spec.ports[0].port");
    }

    #[test]
    fn broken_file_keeps_last_good_objects() {
        let dir = std::env::temp_dir().join(format!("xdp-ingress-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("svc.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
        )
        .unwrap();
        let mut source = ManifestDir::new(&dir);
        assert_eq!(source.load().unwrap().objects.services.len(), 1);
        std::fs::write(&file, "apiVersion: v1\nkind: Service\nmetadata: {name: a\n").unwrap();
        let snapshot = source.load().unwrap();
        assert_eq!(snapshot.objects.services.len(), 1, "last good object kept");
        assert!(snapshot.problems[0].message.contains("YAML syntax"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
