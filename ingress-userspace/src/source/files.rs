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

mod objects;
mod parse;
mod read;
mod walk;
mod watch;

#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashSet},
    path::{Path, PathBuf},
};

use crate::model::{ClusterObjects, Problem};

use objects::{drop_unnamed_secrets, keep_previous, merge_into, FileObjects};
use parse::parse_manifest;
use read::{open_regular, read_bounded};
use walk::collect_manifest_files;

/// `--max-manifest-bytes` by default: far above any manifest people write by hand or generate
/// (the API server refuses objects over 1.5 MiB), far below what hurts the node.
pub(crate) const DEFAULT_MAX_MANIFEST_BYTES: u64 = 16 * 1024 * 1024;

/// The deepest collection nesting a document may have. Kubernetes objects nest about 10 deep
/// (an Ingress's `spec.rules[].http.paths[].backend.service.port.number` is 10), a
/// CustomResourceDefinition's schema some 30; serde_yaml itself gives up at 128.
pub(crate) const MAX_NESTING_DEPTH: usize = 100;

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

/// A manifest directory and what each file in it gave at the last read.
#[derive(Debug)]
pub(crate) struct ManifestDir {
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
pub(crate) struct Snapshot {
    /// The objects, last good versions included.
    pub objects: ClusterObjects,
    /// Problems with files, documents and objects.
    pub problems: Vec<Problem>,
}

impl ManifestDir {
    /// A directory not read yet.
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_file_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            last_read: BTreeMap::new(),
        }
    }

    /// The same, reading no file larger than `max_file_bytes` (`--max-manifest-bytes`).
    pub(crate) fn with_max_file_bytes(mut self, max_file_bytes: u64) -> Self {
        self.max_file_bytes = max_file_bytes;
        self
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads every `.yaml`/`.yml` file (recursively, in path order) and returns the objects.
    /// Blocks on file I/O and parsing: call it where that holds up no traffic.
    pub(crate) fn load(&mut self) -> Result<Snapshot, FilesError> {
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
                            severity: crate::model::Severity::Error,
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
        drop_unnamed_secrets(&mut snapshot);
        Ok(snapshot)
    }
}
