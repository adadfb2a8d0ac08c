//! Finding the manifests under the directory: symlinks followed, each directory walked once by
//! device and inode (so a symlink loop ends), in an order that does not depend on the file system.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::FilesError;

/// The `.yaml`/`.yml` paths under `root` (symlinks followed), in path order: each directory's
/// entries sorted, depth first. A directory reached again (a symlink loop, two links to one
/// directory) is not walked again; which path of it counts is the first in that order, shallower
/// paths first among siblings. Iterative, so a deep tree costs neither stack nor open directories.
pub(super) fn collect_manifest_files(root: &Path) -> Result<Vec<PathBuf>, FilesError> {
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
