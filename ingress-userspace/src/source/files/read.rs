//! Reading one manifest file within bounds: only regular files, opened without waiting, and never
//! more than `--max-manifest-bytes`, whatever the file claims or becomes while read.

use std::{
    fs::File,
    io::Read as _,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::Path,
};

/// Opens a file for reading without waiting (a FIFO's open would wait for a writer, forever) and
/// returns it with its (device, inode) if it is a regular file; else the problem's message.
pub(super) fn open_regular(path: &Path) -> Result<(File, (u64, u64)), String> {
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
pub(super) fn read_bounded(file: File, limit: u64) -> Result<String, String> {
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
