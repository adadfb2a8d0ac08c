//! The file source: a directory of YAML manifests (several documents per file allowed), read into
//! k8s-openapi types, and watched for changes.
//!
//! Kinds read: `v1` Service and Secret, `discovery.k8s.io/v1` EndpointSlice,
//! `networking.k8s.io/v1` Ingress and IngressClass; other kinds are skipped. Only Secrets of type
//! `kubernetes.io/tls` are kept (the others may hold anything and we have no use for them), with
//! `stringData` merged into `data` as the API server does.
//!
//! A file that cannot be read completely keeps its last good objects: documents that still parse
//! replace their previous versions, and objects from broken documents stay as they were. Problems
//! name the file, the document, the object and the field.
//!
//! What an attacker who can write into the directory could do is bounded: only regular files are
//! read (a FIFO or a device named `x.yaml` is a problem, not a wait or an endless read), each at
//! most `--max-manifest-bytes`; directories and files are known by device and inode, so a symlink
//! loop is walked once and a file reachable by several paths is read once; and a document nesting
//! flow collections deeper than [`MAX_NESTING_DEPTH`] is refused before serde_yaml sees it (the
//! full measurement runs only for documents with that many `[`/`{`: see `yaml_depth`).

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    fs::File,
    io::Read as _,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{Secret, Service},
        discovery::v1::EndpointSlice,
        networking::v1::{Ingress, IngressClass},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ByteString, Metadata, Resource,
};
use serde::de::DeserializeOwned;

use crate::model::{
    object_name, ClusterObjects, ObjectName, Origin, Problem, Sourced, TLS_SECRET_TYPE,
};

use super::yaml_depth;

/// `--max-manifest-bytes` by default: far above any manifest people write by hand or generate
/// (the API server refuses objects over 1.5 MiB), far below what hurts the node.
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

/// The deepest collection nesting a document may have. Kubernetes objects nest about 10 deep
/// (an Ingress's `spec.rules[].http.paths[].backend.service.port.number` is 10), a
/// CustomResourceDefinition's schema some 30; serde_yaml itself gives up at 128.
pub const MAX_NESTING_DEPTH: usize = 100;

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

/// The objects one file defines, in document order (duplicates included: they are reported when
/// the files are merged).
#[derive(Clone, Debug, Default)]
struct FileObjects {
    services: Vec<(ObjectName, Sourced<Service>)>,
    endpoint_slices: Vec<(ObjectName, Sourced<EndpointSlice>)>,
    ingresses: Vec<(ObjectName, Sourced<Ingress>)>,
    ingress_classes: Vec<(String, Sourced<IngressClass>)>,
    secrets: Vec<(ObjectName, Sourced<Secret>)>,
}

/// A kind of object this source reads: how it is keyed and where it is kept. `apiVersion` and
/// `kind` come from k8s-openapi's [`Resource`].
trait Kind: Resource + Metadata<Ty = ObjectMeta> + DeserializeOwned + Clone {
    /// `ObjectName` for namespaced kinds, the bare name for cluster-scoped ones.
    type Key: Ord + Clone + fmt::Display;
    /// Whether `metadata.namespace` means anything (it is ignored on cluster-scoped kinds).
    const NAMESPACED: bool;
    /// The key, or `None` when `metadata.name` is missing or empty.
    fn key(meta: &ObjectMeta) -> Option<Self::Key>;
    /// This kind's objects in a file.
    fn in_file(objects: &FileObjects) -> &Vec<(Self::Key, Sourced<Self>)>;
    /// The same, mutable.
    fn in_file_mut(objects: &mut FileObjects) -> &mut Vec<(Self::Key, Sourced<Self>)>;
    /// This kind's objects in the merged snapshot.
    fn in_cluster(objects: &mut ClusterObjects) -> &mut BTreeMap<Self::Key, Sourced<Self>>;
    /// Load-time normalisation; `None` drops an object we have no use for (silently: it is valid).
    fn admit(self, _origin: &Origin) -> Option<Self> {
        Some(self)
    }
}

/// Implements [`Kind`] for a k8s-openapi type kept in the `$field` of both object sets.
macro_rules! impl_kind {
    ($ty:ty, $field:ident, $key:ty, namespaced: $namespaced:expr, key: $key_fn:expr
     $(, admit: $admit:expr)?) => {
        impl Kind for $ty {
            type Key = $key;
            const NAMESPACED: bool = $namespaced;
            fn key(meta: &ObjectMeta) -> Option<$key> {
                $key_fn(meta)
            }
            fn in_file(objects: &FileObjects) -> &Vec<($key, Sourced<Self>)> {
                &objects.$field
            }
            fn in_file_mut(objects: &mut FileObjects) -> &mut Vec<($key, Sourced<Self>)> {
                &mut objects.$field
            }
            fn in_cluster(objects: &mut ClusterObjects) -> &mut BTreeMap<$key, Sourced<Self>> {
                &mut objects.$field
            }
            $(fn admit(self, origin: &Origin) -> Option<Self> {
                $admit(self, origin)
            })?
        }
    };
}

impl_kind!(Service, services, ObjectName, namespaced: true, key: namespaced_key);
impl_kind!(EndpointSlice, endpoint_slices, ObjectName, namespaced: true, key: namespaced_key);
impl_kind!(Ingress, ingresses, ObjectName, namespaced: true, key: namespaced_key);
impl_kind!(IngressClass, ingress_classes, String, namespaced: false, key: cluster_key);
impl_kind!(Secret, secrets, ObjectName, namespaced: true, key: namespaced_key, admit: admit_secret);

/// Runs `$body` once per kind this source reads, with `$kind` naming the type: the one list of
/// kinds that parsing, keeping last good objects and merging all follow.
macro_rules! for_each_kind {
    ($kind:ident => $body:block) => {{
        {
            type $kind = Service;
            $body
        }
        {
            type $kind = EndpointSlice;
            $body
        }
        {
            type $kind = Ingress;
            $body
        }
        {
            type $kind = IngressClass;
            $body
        }
        {
            type $kind = Secret;
            $body
        }
    }};
}

fn namespaced_key(meta: &ObjectMeta) -> Option<ObjectName> {
    meta.name.as_ref().filter(|n| !n.is_empty())?;
    Some(object_name(meta))
}

fn cluster_key(meta: &ObjectMeta) -> Option<String> {
    meta.name.clone().filter(|n| !n.is_empty())
}

/// Keeps TLS Secrets only (others hold things we must not read), with `stringData` merged into
/// `data` as the API server does on write (`stringData` wins on a shared key).
fn admit_secret(mut secret: Secret, origin: &Origin) -> Option<Secret> {
    if secret.type_.as_deref() != Some(TLS_SECRET_TYPE) {
        tracing::debug!(%origin, r#type = ?secret.type_, "ignoring Secret that is not of type kubernetes.io/tls");
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

/// A manifest directory and what each file in it gave at the last read.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    max_file_bytes: u64,
    last_read: BTreeMap<PathBuf, FileRead>,
}

/// One file as last read: a fingerprint of its text, its objects (the last good ones where the
/// text had problems) and the problems. A file whose text is unchanged is not parsed again: on a
/// directory of many large files a change to one parses that one only.
#[derive(Debug)]
struct FileRead {
    fingerprint: (usize, u64),
    objects: FileObjects,
    problems: Vec<Problem>,
}

fn fingerprint(text: &str) -> (usize, u64) {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    (text.len(), hasher.finish())
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
            max_file_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            last_read: BTreeMap::new(),
        }
    }

    /// The same, reading no file larger than `max_file_bytes` (`--max-manifest-bytes`).
    pub fn with_max_file_bytes(mut self, max_file_bytes: u64) -> Self {
        self.max_file_bytes = max_file_bytes;
        self
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads every `.yaml`/`.yml` file (recursively, in path order) and returns the objects.
    /// Blocks on file I/O and parsing: call it where that holds up no traffic.
    pub fn load(&mut self) -> Result<Snapshot, FilesError> {
        let files = collect_manifest_files(&self.dir)?;
        let mut snapshot = Snapshot::default();
        let mut next_read = BTreeMap::new();
        // Files by (device, inode): one reachable by several paths is read under the first.
        let mut read_files = HashSet::new();
        for path in files {
            let text = match open_regular(&path) {
                Ok((file, id)) => {
                    if !read_files.insert(id) {
                        tracing::debug!(path = %path.display(), "already read under another path");
                        continue;
                    }
                    read_bounded(file, self.max_file_bytes)
                }
                Err(message) => Err(message),
            };
            let read = match text {
                Ok(text) => {
                    let fingerprint = fingerprint(&text);
                    match self.last_read.remove(&path) {
                        Some(previous) if previous.fingerprint == fingerprint => previous,
                        previous => {
                            let (mut objects, problems) = parse_manifest(&path, &text);
                            if let (false, Some(previous)) = (problems.is_empty(), &previous) {
                                keep_previous(&mut objects, &previous.objects);
                            }
                            FileRead {
                                fingerprint,
                                objects,
                                problems,
                            }
                        }
                    }
                }
                Err(message) => {
                    let mut objects = FileObjects::default();
                    if let Some(previous) = self.last_read.remove(&path) {
                        keep_previous(&mut objects, &previous.objects);
                    }
                    FileRead {
                        // No text has this fingerprint: the next read parses again.
                        fingerprint: (usize::MAX, 0),
                        objects,
                        problems: vec![Problem {
                            origin: path.display().to_string(),
                            object: String::new(),
                            field: String::new(),
                            message,
                        }],
                    }
                }
            };
            snapshot.problems.extend(read.problems.iter().cloned());
            merge_into(&mut snapshot, &read.objects);
            next_read.insert(path, read);
        }
        self.last_read = next_read;
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
                    if !event.kind.is_access() && may_concern_manifests(&event.paths) {
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

/// False when every path of a change event is a file that cannot be a manifest (a log, an
/// editor's swap file): writing such files into the directory then causes no reload. Paths
/// without an extension may be directories, or temporary files renamed into manifests, so they
/// count.
fn may_concern_manifests(paths: &[PathBuf]) -> bool {
    paths.is_empty()
        || paths.iter().any(|path| {
            path.extension()
                .is_none_or(|ext| ext == "yaml" || ext == "yml")
        })
}

/// The `.yaml`/`.yml` paths under `root` (symlinks followed), in path order: each directory's
/// entries sorted, depth first. A directory reached again (a symlink loop, two links to one
/// directory) is not walked again; which path of it counts is the first in that order, shallower
/// paths first among siblings. Iterative, so a deep tree costs neither stack nor open directories.
fn collect_manifest_files(root: &Path) -> Result<Vec<PathBuf>, FilesError> {
    enum Next {
        Dir(PathBuf),
        File(PathBuf),
    }
    let read_dir_error = |path: &Path, source| FilesError::ReadDir {
        path: path.to_path_buf(),
        source,
    };
    let root_meta = std::fs::metadata(root).map_err(|e| read_dir_error(root, e))?;
    let mut walked = HashSet::from([(root_meta.dev(), root_meta.ino())]);
    let mut stack = vec![Next::Dir(root.to_path_buf())];
    let mut files = Vec::new();
    while let Some(next) = stack.pop() {
        let dir = match next {
            Next::File(path) => {
                files.push(path);
                continue;
            }
            Next::Dir(dir) => dir,
        };
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| read_dir_error(&dir, e))?
            .flatten()
            .map(|entry| entry.file_name())
            // Editors' and kubectl's temporary files start with a dot; skip them.
            .filter(|name| !name.as_encoded_bytes().starts_with(b"."))
            .collect();
        names.sort();
        let mut children = Vec::new();
        for name in names {
            let path = dir.join(&name);
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    if walked.insert((meta.dev(), meta.ino())) {
                        children.push(Next::Dir(path));
                    } else {
                        tracing::debug!(path = %path.display(), "directory already walked");
                    }
                }
                // Not a directory, or not even there (a dangling link): a manifest by its name;
                // reading it says what is wrong.
                _ => {
                    let name = name.to_string_lossy();
                    if name.ends_with(".yaml") || name.ends_with(".yml") {
                        children.push(Next::File(path));
                    }
                }
            }
        }
        stack.extend(children.into_iter().rev());
    }
    Ok(files)
}

/// Opens a file for reading without waiting (a FIFO's open would wait for a writer, forever) and
/// returns it with its (device, inode) if it is a regular file; else the problem's message.
fn open_regular(path: &Path) -> Result<(File, (u64, u64)), String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // O_NOCTTY: a terminal named x.yaml must not become the agent's controlling terminal.
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot read file: {e}"))?;
    // The type of what was opened, not of what the path named a moment before.
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read file: {e}"))?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        let kind = if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_socket() {
            "a socket"
        } else if file_type.is_char_device() {
            "a character device"
        } else if file_type.is_block_device() {
            "a block device"
        } else {
            "not a file"
        };
        return Err(format!(
            "not a regular file ({kind}); only regular files are read"
        ));
    }
    Ok((file, (meta.dev(), meta.ino())))
}

/// Reads at most `limit` bytes of text; more is a problem, whatever the file's size said (a file
/// can grow while it is read).
fn read_bounded(file: File, limit: u64) -> Result<String, String> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read file: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "larger than --max-manifest-bytes ({limit} bytes); not read"
        ));
    }
    String::from_utf8(bytes).map_err(|e| format!("cannot read file: not UTF-8 text ({e})"))
}

/// Objects from documents that failed now keep their previous version.
fn keep_previous(objects: &mut FileObjects, previous: &FileObjects) {
    fn keep<K: Kind>(objects: &mut FileObjects, previous: &FileObjects) {
        for (name, object) in K::in_file(previous) {
            let current = K::in_file_mut(objects);
            if !current.iter().any(|(n, _)| n == name) {
                current.push((name.clone(), object.clone()));
            }
        }
    }
    for_each_kind!(K => { keep::<K>(objects, previous) });
}

fn merge_into(snapshot: &mut Snapshot, objects: &FileObjects) {
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
    // serde_yaml skips a byte-order mark; so does the depth check, so they count alike.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // The documents before a too deep one are read as usual; it and the rest are not, as after
    // a syntax error.
    let deep = yaml_depth::may_nest_flows_deeper(text, MAX_NESTING_DEPTH)
        .then(|| yaml_depth::too_deep(text, MAX_NESTING_DEPTH))
        .flatten();
    let text = match deep {
        None => text,
        Some(deep) => {
            problems.push(Problem {
                origin: Origin::File {
                    path: path_text.clone(),
                    document: deep.document,
                }
                .to_string(),
                object: String::new(),
                field: String::new(),
                message: format!(
                    "nested deeper than {MAX_NESTING_DEPTH} levels (line {}, column {}); \
                     this document and the rest of the file are not read",
                    deep.line, deep.column
                ),
            });
            text.get(..deep.document_start).unwrap_or_default()
        }
    };
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
        if api_version.is_empty() || kind.is_empty() {
            problems.push(problem(
                describe(&value, kind, true),
                if api_version.is_empty() {
                    "apiVersion"
                } else {
                    "kind"
                },
                "missing; every document must be a Kubernetes object".into(),
            ));
            continue;
        }
        let mut ours = false;
        for_each_kind!(K => {
            if (api_version, kind) == (K::API_VERSION, K::KIND) {
                ours = true;
                if let Err(problem) = load::<K>(&value, &origin, &mut objects) {
                    problems.push(problem);
                }
            }
        });
        if !ours {
            // Other kinds (Deployments, ConfigMaps, ...) may share the directory; they are not ours.
            tracing::debug!(%origin, api_version, kind, "ignoring object of a kind we do not use");
        }
    }
    (objects, problems)
}

/// Reads one document as a `K` into `objects`; a problem names the object and the field.
fn load<K: Kind>(
    value: &serde_yaml::Value,
    origin: &Origin,
    objects: &mut FileObjects,
) -> Result<(), Problem> {
    let problem = |field: &str, message: String| Problem {
        origin: origin.to_string(),
        object: describe(value, K::KIND, K::NAMESPACED),
        field: field.to_string(),
        message,
    };
    let object: K = typed(value).map_err(|(field, message)| problem(&field, message))?;
    let key =
        K::key(object.metadata()).ok_or_else(|| problem("metadata.name", "missing".into()))?;
    if let Some(object) = object.admit(origin) {
        K::in_file_mut(objects).push((
            key,
            Sourced {
                object,
                origin: origin.clone(),
            },
        ));
    }
    Ok(())
}

/// `Kind namespace/name` for messages, from the raw document.
fn describe(value: &serde_yaml::Value, kind: &str, namespaced: bool) -> String {
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
    if namespaced {
        format!("{kind} {namespace}/{name}")
    } else {
        format!("{kind} {name}")
    }
}

/// Deserializes into a k8s-openapi type; on failure returns the path of the offending field.
fn typed<T: DeserializeOwned>(value: &serde_yaml::Value) -> Result<T, (String, String)> {
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

    const L7_OBJECTS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: xdp, namespace: ignored}
spec: {controller: xdp-ingress.dev/controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web, namespace: demo}
spec:
  rules:
  - http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: v1
kind: Secret
metadata: {name: cert, namespace: demo}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==, tls.key: b2xk}
stringData: {tls.key: KEY}
---
apiVersion: v1
kind: Secret
metadata: {name: password, namespace: demo}
type: Opaque
stringData: {password: hunter2}
"#;

    #[test]
    fn reads_ingresses_classes_and_tls_secrets_only() {
        let (objects, problems) = parse_manifest(Path::new("/m/l7.yaml"), L7_OBJECTS);
        assert!(problems.is_empty(), "{problems:?}");
        let name = |namespace: &str, name: &str| ObjectName {
            namespace: namespace.into(),
            name: name.into(),
        };
        assert_eq!(
            objects.ingress_classes[0].0, "xdp",
            "cluster-scoped: keyed by name"
        );
        assert_eq!(objects.ingresses[0].0, name("demo", "web"));
        assert_eq!(objects.secrets.len(), 1, "the Opaque Secret is not kept");
        let (secret_name, secret) = &objects.secrets[0];
        assert_eq!(*secret_name, name("demo", "cert"));
        let data = secret.object.data.as_ref().unwrap();
        assert_eq!(data["tls.crt"].0, b"CERT", "data is base64");
        assert_eq!(data["tls.key"].0, b"KEY", "stringData wins over data");
        assert_eq!(secret.object.string_data, None);
    }

    #[test]
    fn a_broken_ingress_names_its_field() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web, namespace: demo}\nspec:\n  rules:\n  - http:\n      paths:\n      - {path: /, pathType: Prefix, backend: web}\n";
        let (objects, problems) = parse_manifest(Path::new("/m/i.yaml"), text);
        assert!(objects.ingresses.is_empty());
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].object, "Ingress demo/web");
        assert_eq!(problems[0].field, "spec.rules[0].http.paths[0].backend");
        let text =
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {namespace: x}\n";
        let (_, problems) = parse_manifest(Path::new("/m/c.yaml"), text);
        assert_eq!(problems[0].object, "IngressClass <unnamed>");
        assert_eq!(problems[0].field, "metadata.name");
    }

    #[test]
    fn duplicate_names_and_last_good_state_for_the_new_kinds() {
        let dir = std::env::temp_dir().join(format!("xdp-ingress-files-l7-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), L7_OBJECTS).unwrap();
        // The class again, in another namespace: cluster-scoped, so the same object.
        std::fs::write(
            dir.join("b.yaml"),
            "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: xdp}\n",
        )
        .unwrap();
        let mut source = ManifestDir::new(&dir);
        let snapshot = source.load().unwrap();
        assert_eq!(snapshot.objects.ingress_classes.len(), 1);
        assert_eq!(snapshot.problems.len(), 1, "{:?}", snapshot.problems);
        assert_eq!(snapshot.problems[0].object, "IngressClass xdp");
        assert!(snapshot.problems[0].origin.contains("b.yaml"));

        // The Ingress breaks: its last good version stays, the rest of the file reloads.
        let broken = L7_OBJECTS.replace("number: 80", "number: eighty");
        std::fs::write(dir.join("a.yaml"), broken).unwrap();
        let snapshot = source.load().unwrap();
        assert_eq!(
            snapshot.objects.ingresses.len(),
            1,
            "last good Ingress kept"
        );
        assert_eq!(snapshot.objects.secrets.len(), 1);
        assert!(snapshot
            .problems
            .iter()
            .any(|p| p.field == "spec.rules[0].http.paths[0].backend.service.port.number"));
        std::fs::remove_dir_all(&dir).unwrap();
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

    #[test]
    fn only_changes_that_may_touch_manifests_count() {
        let paths = |names: &[&str]| names.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert!(may_concern_manifests(&paths(&["/m/a.yaml"])));
        assert!(may_concern_manifests(&paths(&["/m/a.yml"])));
        assert!(may_concern_manifests(&paths(&["/m/sub"])), "a directory");
        assert!(
            may_concern_manifests(&paths(&["/m/sedX1b2c3", "/m/a.yaml"])),
            "a rename onto a manifest"
        );
        assert!(may_concern_manifests(&[]), "an event without paths");
        assert!(!may_concern_manifests(&paths(&["/m/agent.log"])));
        assert!(!may_concern_manifests(&paths(&[
            "/m/.a.yaml.swp",
            "/m/notes.txt"
        ])));
    }

    /// Unchanged files are not parsed again, yet every read reports the same objects and
    /// problems; a changed file is read anew, and a removed file's objects go.
    #[test]
    fn unchanged_files_give_the_same_objects_and_problems() {
        let dir = std::env::temp_dir().join(format!("xdp-ingress-reread-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.yaml");
        let broken = dir.join("broken.yaml");
        std::fs::write(
            &good,
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n",
        )
        .unwrap();
        std::fs::write(
            &broken,
            "apiVersion: v1\nkind: Service\nmetadata: {name: b\n",
        )
        .unwrap();
        let mut source = ManifestDir::new(&dir);
        let first = source.load().unwrap();
        let second = source.load().unwrap();
        assert_eq!(first.objects.services.len(), 1);
        assert_eq!(first.problems.len(), 1);
        assert_eq!(
            second.problems, first.problems,
            "the broken file is reported again"
        );
        assert_eq!(
            second.objects.services.keys().collect::<Vec<_>>(),
            first.objects.services.keys().collect::<Vec<_>>()
        );

        // Same length, other text: parsed again.
        std::fs::write(
            &good,
            "apiVersion: v1\nkind: Service\nmetadata: {name: c}\n",
        )
        .unwrap();
        let changed = source.load().unwrap();
        let names: Vec<String> = changed
            .objects
            .services
            .keys()
            .map(|k| k.to_string())
            .collect();
        assert!(
            names.iter().any(|n| n.ends_with("/c") || n == "c"),
            "{names:?}"
        );
        assert!(
            !names.iter().any(|n| n.ends_with("/a") || n == "a"),
            "{names:?}"
        );

        // Removed: its objects go.
        std::fs::remove_file(&good).unwrap();
        assert!(source.load().unwrap().objects.services.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A temporary directory for one test, removed at the end.
    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xdp-ingress-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const SERVICE_A: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n";

    /// A FIFO named like a manifest is a problem, not a wait (on the old code `load` never
    /// returned); its path's last good objects stay, the other files load.
    #[test]
    fn a_fifo_is_reported_and_keeps_the_last_good_objects() {
        let dir = test_dir("fifo");
        std::fs::write(dir.join("a.yaml"), SERVICE_A).unwrap();
        let x = dir.join("x.yaml");
        std::fs::write(&x, "apiVersion: v1\nkind: Service\nmetadata: {name: x}\n").unwrap();
        let mut source = ManifestDir::new(&dir);
        assert_eq!(source.load().unwrap().objects.services.len(), 2);
        std::fs::remove_file(&x).unwrap();
        let path = std::ffi::CString::new(x.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only reads it.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let snapshot = source.load().unwrap();
        assert_eq!(snapshot.problems.len(), 1, "{:?}", snapshot.problems);
        assert_eq!(snapshot.problems[0].origin, x.display().to_string());
        assert!(snapshot.problems[0]
            .message
            .contains("not a regular file (a FIFO)"));
        assert_eq!(
            snapshot.objects.services.len(),
            2,
            "x.yaml's last good Service is kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `/dev/zero` behind a manifest's name, and a file over the limit: reported, not read
    /// (on the old code the first read grew without end).
    #[test]
    fn devices_and_files_over_the_limit_are_not_read() {
        let dir = test_dir("limit");
        std::fs::write(dir.join("a.yaml"), SERVICE_A).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
        std::fs::write(dir.join("big.yaml"), format!("# {}\n", "x".repeat(200))).unwrap();
        let snapshot = ManifestDir::new(&dir)
            .with_max_file_bytes(100)
            .load()
            .unwrap();
        assert_eq!(snapshot.objects.services.len(), 1);
        let messages: Vec<(&str, &str)> = snapshot
            .problems
            .iter()
            .map(|p| (p.origin.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].0.ends_with("big.yaml"));
        assert!(messages[0]
            .1
            .contains("larger than --max-manifest-bytes (100 bytes)"));
        assert!(messages[1].0.ends_with("zero.yaml"));
        assert!(messages[1].1.contains("a character device"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two symlink loops and a second link to a directory: every directory is walked once,
    /// every file read once, under its first path (on the old code: files read 40 times, or a
    /// walk without end).
    #[test]
    fn symlink_loops_and_second_paths_are_walked_once() {
        let dir = test_dir("loops");
        std::fs::create_dir(dir.join("b")).unwrap();
        std::fs::write(dir.join("b/svc.yaml"), SERVICE_A).unwrap();
        std::os::unix::fs::symlink("..", dir.join("b/up")).unwrap();
        std::os::unix::fs::symlink(".", dir.join("b/here")).unwrap();
        std::os::unix::fs::symlink("b", dir.join("c")).unwrap();
        std::os::unix::fs::symlink("b/svc.yaml", dir.join("d.yaml")).unwrap();
        assert_eq!(
            collect_manifest_files(&dir).unwrap(),
            vec![dir.join("b/svc.yaml"), dir.join("d.yaml")],
            "c is b, walked already; b/up and b/here lead back"
        );
        let snapshot = ManifestDir::new(&dir).load().unwrap();
        assert!(snapshot.problems.is_empty(), "{:?}", snapshot.problems);
        assert_eq!(snapshot.objects.services.len(), 1);
        let origin = snapshot
            .objects
            .services
            .values()
            .next()
            .unwrap()
            .origin
            .to_string();
        assert!(origin.contains("b/svc.yaml"), "{origin}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Deep nesting is refused before serde_yaml sees it, naming file and document; the
    /// documents before it load.
    #[test]
    fn deep_nesting_is_refused_by_document() {
        let text = format!(
            "{SERVICE_A}---\n{}\n---\n{SERVICE_A}",
            "[".repeat(97 * 1024)
        );
        let started = std::time::Instant::now();
        let (objects, problems) = parse_manifest(Path::new("/m/deep.yaml"), &text);
        let elapsed = started.elapsed();
        assert_eq!(objects.services.len(), 1, "document 1 loads");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].origin, "/m/deep.yaml (document 2)");
        assert!(problems[0]
            .message
            .starts_with("nested deeper than 100 levels (line 5, column 101)"));
        // Generous: milliseconds here; serde_yaml alone took seconds on this input.
        assert!(elapsed < std::time::Duration::from_secs(2), "{elapsed:?}");
    }
}
