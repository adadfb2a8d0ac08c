//! Watching the directory: which change events may concern a manifest and so cause a reload.

use std::path::PathBuf;

use super::{FilesError, ManifestDir};

impl ManifestDir {
    /// Watches the directory; every change event is sent on `changes` (the caller debounces).
    pub(crate) fn watch(
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
pub(super) fn may_concern_manifests(paths: &[PathBuf]) -> bool {
    paths.is_empty()
        || paths.iter().any(|path| {
            path.extension()
                .is_none_or(|ext| ext == "yaml" || ext == "yml")
        })
}
