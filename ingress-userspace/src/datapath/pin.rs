//! Pinning under bpffs: where the datapath's maps and XDP links live so that forwarding outlives
//! the agent, and which pinned maps a new agent may reuse. A pinned map is reused only when its
//! shape matches this build's (aya's `pin.rs` keeps pinning apart from loading the same way).

use std::path::{Path, PathBuf};

use aya::maps::MapData;
use ingress_common::map_names;

use crate::datapath::{DatapathError, MapSizes};

/// A map's shape, compared before a pinned map is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MapLayout {
    pub(super) map_type: u32,
    pub(super) key_size: u32,
    pub(super) value_size: u32,
    pub(super) max_entries: u32,
    pub(super) flags: u32,
}

/// The maps the agent pins (aya-log's ring buffer is not), the state maps first.
pub(super) const PINNED_MAPS: [&str; 15] = [
    map_names::SERVICES,
    map_names::VIPS,
    map_names::SERVICE_STATES,
    map_names::VIP_FILTER,
    map_names::BACKEND_FILTER,
    map_names::BACKENDS,
    map_names::MAGLEV_SLOTS,
    map_names::SOURCE_RANGES,
    map_names::FLOWS,
    map_names::AFFINITY,
    map_names::REVERSE_FLOWS,
    map_names::NEXT_HOPS,
    map_names::SERVICE_STATS,
    map_names::BACKEND_STATS,
    map_names::REASON_STATS,
];

/// The maps that hold the forwarding state and must be adopted together: a Service entry names
/// slots and source ranges, slots name backend ids. The others (flows, affinity, next hops,
/// counters) can start empty alone.
const STATE_MAPS: &[&str] = PINNED_MAPS.split_at(8).0;

/// bpffs's magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where the datapath is pinned: `ROOT/maps/<MAP>`, `ROOT/links/xdp-<interface>` and
/// `ROOT/links/tc-egress-<interface>`. ROOT must be
/// on a bpffs (`/sys/fs/bpf/xdp-ingress` by default; the DaemonSet mounts the host's).
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

/// What loading found under the pin directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinnedState {
    /// Nothing pinned (or not pinning): the maps start empty.
    Fresh,
    /// The state maps were pinned and match this build: adopt them.
    Adopted,
}

impl PinDir {
    /// A pin directory at `root` (not touched until used).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub(super) fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub(super) fn link(&self, interface: &str) -> PathBuf {
        self.links().join(format!("xdp-{interface}"))
    }

    /// The pinned TCX link of the TC egress program on `interface`.
    pub(super) fn egress_link(&self, interface: &str) -> PathBuf {
        self.links().join(format!("tc-egress-{interface}"))
    }

    /// Creates the directories; fails with a hint when ROOT's parent is not a bpffs.
    pub fn prepare(&self) -> Result<(), DatapathError> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) && !is_bpffs(&self.root) {
            return Err(DatapathError::NotBpffs {
                root: self.root.clone(),
                parent: parent.to_path_buf(),
            });
        }
        for dir in [self.maps(), self.links()] {
            std::fs::create_dir_all(&dir).map_err(pin_file("creating", &dir))?;
        }
        Ok(())
    }

    /// Compares every pinned map with this build's layout; removes the pins of those that differ
    /// (and of every state map when any state map is missing or differs, so they are never mixed
    /// with fresh ones). Programs already attached keep the maps they hold until replaced.
    pub(super) fn check_maps(&self, sizes: &MapSizes) -> Result<PinnedState, DatapathError> {
        let mut mismatched = Vec::new();
        let mut state_complete = true;
        let layouts = sizes.layouts()?;
        for &(name, expected) in &layouts {
            let path = self.map(name);
            if !path.exists() {
                state_complete &= !STATE_MAPS.contains(&name);
                continue;
            }
            let found = MapData::from_pin(&path)
                .map_err(|e| e.to_string())
                .and_then(|map| map.info().map_err(|e| e.to_string()))
                .and_then(|info| {
                    Ok(MapLayout {
                        map_type: info.map_type().map_err(|e| e.to_string())? as u32,
                        key_size: info.key_size(),
                        value_size: info.value_size(),
                        max_entries: info.max_entries(),
                        flags: info.map_flags(),
                    })
                });
            match found {
                Ok(found) if found == expected => {}
                Ok(found) => {
                    tracing::warn!(
                        map = name,
                        ?found,
                        ?expected,
                        "pinned map differs; not reused"
                    );
                    mismatched.push(name);
                }
                Err(error) => {
                    tracing::warn!(map = name, %error, "pinned map unreadable; not reused");
                    mismatched.push(name);
                }
            }
        }
        if mismatched.iter().any(|name| STATE_MAPS.contains(name)) {
            state_complete = false;
        }
        let remove: Vec<&str> = if state_complete {
            mismatched
        } else {
            // Fresh state maps: flows and next hops name ids of the old ones, so they go too.
            PINNED_MAPS.to_vec()
        };
        for name in remove {
            let path = self.map(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(pin_file("unpinning", &path))?;
            }
        }
        Ok(if state_complete {
            PinnedState::Adopted
        } else {
            PinnedState::Fresh
        })
    }

    /// Unpins the state maps so the next load starts empty (adoption was refused).
    pub fn forget_maps(&self) -> Result<(), DatapathError> {
        for name in PINNED_MAPS {
            let path = self.map(name);
            if path.exists() {
                std::fs::remove_file(&path).map_err(pin_file("unpinning", &path))?;
            }
        }
        Ok(())
    }

    /// Interfaces with a pinned XDP link.
    pub fn pinned_interfaces(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.links()) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix("xdp-")
                    .map(String::from)
            })
            .collect();
        names.sort();
        names
    }

    /// Removes everything under ROOT: link pins first (each detaches its program once no one
    /// holds the link), then map pins, then the directories. Returns what it removed.
    pub fn remove_all(&self) -> Result<Vec<PathBuf>, DatapathError> {
        let mut removed = Vec::new();
        for dir in [self.links(), self.maps()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(pin_file("removing", &path))?;
                removed.push(path);
            }
            std::fs::remove_dir(&dir).map_err(pin_file("removing", &dir))?;
        }
        if self.root.exists() {
            std::fs::remove_dir(&self.root).map_err(pin_file("removing", &self.root))?;
            removed.push(self.root.clone());
        }
        Ok(removed)
    }
}

/// Wraps a filesystem error under the pin directory with what was done to which path.
pub(super) fn pin_file(
    operation: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> DatapathError {
    let path = path.to_path_buf();
    move |source| DatapathError::PinFile {
        operation,
        path,
        source,
    }
}

/// Whether `path` is on a bpffs.
fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: FFI call with a NUL-terminated path and a zeroed statfs the call fills in.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    }
}
