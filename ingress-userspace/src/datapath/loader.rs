//! Loads the embedded eBPF object, sizes its maps, attaches the XDP program to interfaces, and
//! gives typed access to the maps ([`KernelMaps`], the real [`DatapathMaps`]).
//!
//! The Maglev slot array is created `BPF_F_MMAPABLE` and mapped into the agent, so writing a
//! table is a memcpy instead of one syscall per 16 slots: 10,000 Services' tables are written in
//! milliseconds.
//!
//! With a [`PinDir`] the maps and the XDP links are pinned under bpffs, so the datapath keeps
//! forwarding while the agent is down; a new agent opens the same maps (they are adopted, see
//! `sync::adopt`) and swaps its program into the pinned links with `bpf_link_update`, which
//! replaces the program atomically: no packet meets an interface without one.

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    ptr::NonNull,
};

use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use ingress_common::{
    capacity, map_names, BackendEntry, FlowEntry, FlowKey, Reason, ReverseEntry, ServiceEntry,
    ServiceKey, ServiceState, TrafficCounters, MAGLEV_CHUNK_SLOTS, XDP_PROGRAM,
};

use crate::datapath::sync::{Capacity, DatapathError, DatapathMaps, Filter, KernelState};

/// The eBPF object built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingress-ebpf"));

/// Map sizes, chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    /// Service ports (SERVICES, VIPS, SERVICE_STATS).
    pub services: u32,
    /// Backend ids (BACKENDS, BACKEND_STATS).
    pub backends: u32,
    /// Maglev slots in total (a multiple of 16).
    pub maglev_slots: u32,
    /// Tracked flows per direction.
    pub flows: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: capacity::SERVICES,
            backends: capacity::BACKENDS,
            maglev_slots: capacity::MAGLEV_SLOTS,
            flows: capacity::FLOWS,
        }
    }
}

impl MapSizes {
    fn chunks(&self) -> u32 {
        self.maglev_slots.div_ceil(MAGLEV_CHUNK_SLOTS).max(1)
    }

    /// The entries each map gets at load time; `None`: as the object declares.
    fn max_entries(&self, map: &str) -> Option<u32> {
        match map {
            map_names::SERVICES
            | map_names::VIPS
            | map_names::SERVICE_STATS
            | map_names::SERVICE_STATES => Some(self.services),
            map_names::BACKENDS | map_names::BACKEND_STATS | map_names::NEXT_HOPS => {
                Some(self.backends)
            }
            map_names::MAGLEV_SLOTS => Some(self.chunks()),
            map_names::FLOWS | map_names::REVERSE_FLOWS => Some(self.flows),
            _ => None,
        }
    }

    /// Every map the agent pins, as this build creates it: type, key and value sizes and flags
    /// from the embedded object, entries from these sizes. A pinned map that differs (an
    /// upgrade changed a layout, a flag changed a size) is not reused.
    fn layouts(&self) -> Result<Vec<(&'static str, MapLayout)>, DatapathError> {
        let object = aya_obj::Object::parse(EBPF_OBJECT)
            .map_err(|e| DatapathError::Load(format!("parsing the eBPF object: {e}")))?;
        PINNED_MAPS
            .iter()
            .map(|name| {
                let map = object.maps.get(*name).ok_or_else(|| {
                    DatapathError::Load(format!("map {name} missing from the eBPF object"))
                })?;
                let layout = MapLayout {
                    map_type: map.map_type(),
                    key_size: map.key_size(),
                    value_size: map.value_size(),
                    max_entries: self.max_entries(name).unwrap_or(map.max_entries()),
                    flags: map.map_flags(),
                };
                Ok((*name, layout))
            })
            .collect()
    }

    /// What the sync may hand out.
    pub fn capacity(&self) -> Capacity {
        Capacity {
            services: self.services,
            backends: self.backends,
            slots: self.maglev_slots / MAGLEV_CHUNK_SLOTS * MAGLEV_CHUNK_SLOTS,
        }
    }
}

/// A map's shape, compared before a pinned map is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MapLayout {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

/// The maps the agent pins (the bench programs' maps and aya-log's ring buffer are not), the
/// state maps first.
const PINNED_MAPS: [&str; 13] = [
    map_names::SERVICES,
    map_names::VIPS,
    map_names::SERVICE_STATES,
    map_names::VIP_FILTER,
    map_names::BACKEND_FILTER,
    map_names::BACKENDS,
    map_names::MAGLEV_SLOTS,
    map_names::FLOWS,
    map_names::REVERSE_FLOWS,
    map_names::NEXT_HOPS,
    map_names::SERVICE_STATS,
    map_names::BACKEND_STATS,
    map_names::REASON_STATS,
];

/// The maps that hold the forwarding state and must be adopted together: a Service entry names
/// slots, slots name backend ids. The others (flows, next hops, counters) can start empty alone.
const STATE_MAPS: &[&str] = PINNED_MAPS.split_at(7).0;

/// bpffs's magic number (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where the datapath is pinned: `ROOT/maps/<MAP>` and `ROOT/links/xdp-<interface>`. ROOT must be
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

    fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    fn link(&self, interface: &str) -> PathBuf {
        self.links().join(format!("xdp-{interface}"))
    }

    /// Creates the directories; fails with a hint when ROOT's parent is not a bpffs.
    pub fn prepare(&self) -> Result<(), DatapathError> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if !is_bpffs(parent) && !is_bpffs(&self.root) {
            return Err(DatapathError::Load(format!(
                "{} is not on a bpf filesystem: mount one (`mount -t bpf bpf {}`) or pass \
                 --bpffs off to run without pinning (the datapath then stops with the agent)",
                self.root.display(),
                parent.display()
            )));
        }
        for dir in [self.maps(), self.links()] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| DatapathError::Load(format!("creating {}: {e}", dir.display())))?;
        }
        Ok(())
    }

    /// Compares every pinned map with this build's layout; removes the pins of those that differ
    /// (and of every state map when any state map is missing or differs, so they are never mixed
    /// with fresh ones). Programs already attached keep the maps they hold until replaced.
    fn check_maps(&self, sizes: &MapSizes) -> Result<PinnedState, DatapathError> {
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
                std::fs::remove_file(&path).map_err(|e| {
                    DatapathError::Load(format!("unpinning {}: {e}", path.display()))
                })?;
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
                std::fs::remove_file(&path).map_err(|e| {
                    DatapathError::Load(format!("unpinning {}: {e}", path.display()))
                })?;
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
                std::fs::remove_file(&path).map_err(|e| {
                    DatapathError::Load(format!("removing {}: {e}", path.display()))
                })?;
                removed.push(path);
            }
            std::fs::remove_dir(&dir)
                .map_err(|e| DatapathError::Load(format!("removing {}: {e}", dir.display())))?;
        }
        if self.root.exists() {
            std::fs::remove_dir(&self.root).map_err(|e| {
                DatapathError::Load(format!("removing {}: {e}", self.root.display()))
            })?;
            removed.push(self.root.clone());
        }
        Ok(removed)
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

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// In the driver (veth, most NICs): the fast path.
    Native,
    /// In the stack after the skb is built: works everywhere, slower.
    Generic,
}

impl From<AttachMode> for XdpMode {
    fn from(mode: AttachMode) -> Self {
        match mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Generic => XdpMode::Skb,
        }
    }
}

/// The loaded object: program, maps and the logger that drains aya-log's ring buffer.
pub struct Datapath {
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    attached: Vec<(String, aya::programs::xdp::XdpLinkId)>,
    pins: Option<PinDir>,
}

impl Datapath {
    /// Loads the embedded object with the given map sizes. Needs CAP_BPF (root here).
    pub fn load(sizes: &MapSizes) -> Result<Self, DatapathError> {
        Ok(Self::load_pinned(sizes, None)?.0)
    }

    /// Loads the embedded object; with `pins`, its maps are the pinned ones when they match this
    /// build (then [`PinnedState::Adopted`]), else new ones that get pinned.
    pub fn load_pinned(
        sizes: &MapSizes,
        pins: Option<&PinDir>,
    ) -> Result<(Self, PinnedState), DatapathError> {
        let mut loader = EbpfLoader::new();
        let mut state = PinnedState::Fresh;
        let map_paths: Vec<(&'static str, PathBuf)> = match pins {
            Some(pins) => {
                pins.prepare()?;
                state = pins.check_maps(sizes)?;
                PINNED_MAPS
                    .iter()
                    .map(|name| (*name, pins.map(name)))
                    .collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &map_paths {
            loader.map_pin_path(name, path.as_path());
        }
        for name in PINNED_MAPS {
            if let Some(entries) = sizes.max_entries(name) {
                loader.map_max_entries(name, entries);
            }
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|e| DatapathError::Load(format!("loading the eBPF object: {e}")))?;
        // aya-log's ring buffer must stay open for as long as the program is loaded.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                tracing::debug!(%error, "eBPF logging unavailable");
                None
            }
        };
        let program: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| DatapathError::Load(format!("program {XDP_PROGRAM} missing")))?
            .try_into()
            .map_err(|e| DatapathError::Load(format!("{XDP_PROGRAM} is not XDP: {e}")))?;
        program.load().map_err(|e| {
            DatapathError::Load(format!("the verifier rejected {XDP_PROGRAM}: {e}"))
        })?;
        Ok((
            Self {
                ebpf,
                logger,
                attached: Vec::new(),
                pins: pins.cloned(),
            },
            state,
        ))
    }

    /// The XDP program (for attaching and for BPF_PROG_TEST_RUN).
    pub fn program(&mut self) -> Result<&mut Xdp, DatapathError> {
        self.ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| DatapathError::Load(format!("program {XDP_PROGRAM} missing")))?
            .try_into()
            .map_err(|e| DatapathError::Load(format!("{XDP_PROGRAM} is not XDP: {e}")))
    }

    /// Loads another program of the object by name (the bench reference programs) and returns it.
    pub fn load_program(&mut self, name: &str) -> Result<&mut Xdp, DatapathError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| DatapathError::Load(format!("program {name} missing")))?
            .try_into()
            .map_err(|e| DatapathError::Load(format!("{name} is not XDP: {e}")))?;
        if program.fd().is_err() {
            program
                .load()
                .map_err(|e| DatapathError::Load(format!("the verifier rejected {name}: {e}")))?;
        }
        Ok(program)
    }

    /// The whole object, for tools that need maps or programs beyond the agent's own.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Attaches the program to `interface`. When pinning and a link is pinned for it, the
    /// program in that link is replaced atomically instead (the mode stays the link's); else a
    /// new link is made and, when pinning, pinned.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<(), DatapathError> {
        let Some(pins) = self.pins.clone() else {
            let link = self
                .program()?
                .attach(interface, mode.into())
                .map_err(|e| {
                    DatapathError::Load(format!("attaching XDP to {interface} ({mode:?}): {e}"))
                })?;
            self.attached.push((interface.to_string(), link));
            return Ok(());
        };
        let path = pins.link(interface);
        if path.exists() {
            match self.replace_in_pinned_link(&path) {
                Ok(()) => {
                    tracing::info!(interface, "XDP program replaced in the pinned link");
                    return Ok(());
                }
                // A link whose interface went away (or a stale file) cannot be updated: a new
                // attachment is the only way to forward on this interface again.
                Err(error) => {
                    tracing::warn!(interface, %error, "pinned link unusable; attaching anew");
                    std::fs::remove_file(&path).map_err(|e| {
                        DatapathError::Load(format!("removing {}: {e}", path.display()))
                    })?;
                }
            }
        }
        let program = self.program()?;
        let id = program.attach(interface, mode.into()).map_err(|e| {
            DatapathError::Load(format!("attaching XDP to {interface} ({mode:?}): {e}"))
        })?;
        let link = program
            .take_link(id)
            .map_err(|e| DatapathError::Load(format!("taking the XDP link of {interface}: {e}")))?;
        let fd_link = FdLink::try_from(link).map_err(|e| {
            DatapathError::Load(format!(
                "XDP on {interface} is not a bpf_link (kernel too old to pin): {e}"
            ))
        })?;
        // Our fd closes here; the pin alone keeps the program attached, as for an updated link,
        // so `cleanup` detaches every interface at once, agent running or not.
        drop(
            fd_link
                .pin(&path)
                .map_err(|e| DatapathError::Load(format!("pinning {}: {e}", path.display())))?,
        );
        Ok(())
    }

    fn replace_in_pinned_link(&mut self, path: &Path) -> Result<(), DatapathError> {
        let pinned = PinnedLink::from_pin(path)
            .map_err(|e| DatapathError::Load(format!("opening {}: {e}", path.display())))?;
        let fd_link = FdLink::from(pinned);
        // A defunct link (its interface deleted) still opens; `bpf_link_update` refuses it.
        let link = XdpLink::try_from(fd_link).map_err(|e| {
            DatapathError::Load(format!("{} is not an XDP link: {e}", path.display()))
        })?;
        let program = self.program()?;
        let id = program
            .attach_to_link(link)
            .map_err(|e| DatapathError::Load(format!("updating {}: {e}", path.display())))?;
        // The link's fd goes with the program object; the pin keeps the attachment.
        let link = program
            .take_link(id)
            .map_err(|e| DatapathError::Load(format!("taking {}: {e}", path.display())))?;
        drop(link);
        Ok(())
    }

    /// With pinning: removes the pinned links of interfaces not in `keep` (an interface dropped
    /// from `--interface` between runs), which detaches the program from them.
    pub fn unpin_other_links(&mut self, keep: &[String]) -> Result<Vec<String>, DatapathError> {
        let Some(pins) = self.pins.clone() else {
            return Ok(Vec::new());
        };
        let mut removed = Vec::new();
        for interface in pins.pinned_interfaces() {
            if keep.contains(&interface) {
                continue;
            }
            let path = pins.link(&interface);
            std::fs::remove_file(&path)
                .map_err(|e| DatapathError::Load(format!("removing {}: {e}", path.display())))?;
            removed.push(interface);
        }
        Ok(removed)
    }

    /// Whether the datapath is pinned (and so outlives the agent).
    pub fn is_pinned(&self) -> bool {
        self.pins.is_some()
    }

    /// Detaches from every interface.
    pub fn detach_all(&mut self) {
        let attached = std::mem::take(&mut self.attached);
        for (interface, link) in attached {
            if let Ok(program) = self.program() {
                if let Err(error) = program.detach(link) {
                    tracing::warn!(interface, %error, "detaching XDP");
                }
            }
        }
    }

    /// Takes the maps out of the object for the sync and for reading counters.
    pub fn take_maps(&mut self) -> Result<KernelMaps, DatapathError> {
        KernelMaps::take(&mut self.ebpf)
    }

    /// Drains eBPF log records into `tracing` (call when the ring buffer's fd is readable).
    pub fn flush_logs(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }

    /// The ring buffer's fd, to wait on.
    pub fn log_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.logger.as_ref().map(|l| l.as_fd())
    }
}

/// The Maglev slot array, mapped into our address space.
struct MappedSlots {
    base: NonNull<u32>,
    slots: usize,
    bytes: usize,
}

// SAFETY: the mapping is owned by this struct alone and only written through `&mut self`.
unsafe impl Send for MappedSlots {}
// SAFETY: shared access only reads.
unsafe impl Sync for MappedSlots {}

impl MappedSlots {
    fn map(data: &MapData, chunks: u32) -> Result<Self, DatapathError> {
        let bytes = chunks as usize * std::mem::size_of::<ingress_common::MaglevChunk>();
        let fd = data.fd().as_fd();
        use std::os::fd::AsRawFd as _;
        // SAFETY: FFI call; a shared read-write mapping of an mmapable BPF array of exactly
        // `bytes` bytes (value size 64, a multiple of 8, so elements are contiguous).
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(DatapathError::Load(format!(
                "mmap of {}: {}",
                map_names::MAGLEV_SLOTS,
                std::io::Error::last_os_error()
            )));
        }
        let base = NonNull::new(address.cast::<u32>())
            .ok_or_else(|| DatapathError::Load("mmap returned null".into()))?;
        Ok(Self {
            base,
            slots: bytes / 4,
            bytes,
        })
    }

    fn write(&mut self, offset: u32, values: &[u32]) -> Result<(), DatapathError> {
        let end = offset as usize + values.len();
        if end > self.slots {
            return Err(DatapathError::Exhausted("Maglev slots"));
        }
        // SAFETY: bounds checked above; the mapping is live until drop and u32-aligned (page).
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.base.as_ptr().add(offset as usize),
                values.len(),
            );
        }
        Ok(())
    }

    fn read(&self, offset: u32, len: u32) -> Vec<u32> {
        let end = (offset as usize + len as usize).min(self.slots);
        let start = (offset as usize).min(end);
        // SAFETY: bounds clamped above; the mapping is live until drop.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), end - start).to_vec() }
    }
}

impl Drop for MappedSlots {
    fn drop(&mut self) {
        // SAFETY: FFI call unmapping exactly what `map` mapped.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.bytes);
        }
    }
}

/// The maps, typed.
pub struct KernelMaps {
    services: HashMap<MapData, ServiceKey, ServiceEntry>,
    vips: HashMap<MapData, u32, u32>,
    backends: Array<MapData, BackendEntry>,
    service_states: Array<MapData, ServiceState>,
    vip_filter: Array<MapData, u64>,
    backend_filter: Array<MapData, u64>,
    slots: MappedSlots,
    flows: HashMap<MapData, FlowKey, FlowEntry>,
    reverse_flows: HashMap<MapData, FlowKey, ReverseEntry>,
    service_stats: PerCpuArray<MapData, TrafficCounters>,
    backend_stats: PerCpuArray<MapData, TrafficCounters>,
    reason_stats: PerCpuArray<MapData, u64>,
    cpus: usize,
    /// FLOWS' size: a walk of its keys never counts past it.
    flow_capacity: usize,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
    ebpf.take_map(name)
        .ok_or_else(|| DatapathError::Load(format!("map {name} missing")))
}

fn map_error(operation: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    let operation = operation.into();
    move |source| DatapathError::Map { operation, source }
}

impl KernelMaps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Self::build(|name| take(ebpf, name))
    }

    /// The maps a running (or stopped) agent pinned under `pins`, for `inspect`.
    pub fn open_pinned(pins: &PinDir) -> Result<Self, DatapathError> {
        Self::build(|name| {
            let path = pins.map(name);
            let data = MapData::from_pin(&path)
                .map_err(map_error(format!("opening {}", path.display())))?;
            Map::from_map_data(data).map_err(map_error(format!("opening {}", path.display())))
        })
    }

    /// The maps the loaded program with this id uses (the id `ip link` shows for an interface's
    /// XDP program): what the kernel forwards with, found without pins and without the agent
    /// that loaded them. Tests read an in-process agent's datapath this way.
    pub fn of_program(program_id: u32) -> Result<Self, DatapathError> {
        let program = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|program| program.id() == program_id)
            .ok_or_else(|| {
                DatapathError::Load(format!("no loaded program with id {program_id}"))
            })?;
        let ids = program
            .map_ids()
            .map_err(|e| DatapathError::Load(format!("map ids of program {program_id}: {e}")))?
            .unwrap_or_default();
        let mut maps = std::collections::BTreeMap::new();
        for id in ids {
            let data = MapData::from_id(id).map_err(map_error(format!("opening map id {id}")))?;
            let info = data
                .info()
                .map_err(map_error(format!("reading map id {id} info")))?;
            if let Some(name) = info.name_as_str() {
                maps.insert(name.to_string(), data);
            }
        }
        Self::build(|name| {
            let data = maps.remove(name).ok_or_else(|| {
                DatapathError::Load(format!("program {program_id} uses no map {name}"))
            })?;
            Map::from_map_data(data).map_err(map_error(format!("opening {name}")))
        })
    }

    fn build(
        mut get: impl FnMut(&'static str) -> Result<Map, DatapathError>,
    ) -> Result<Self, DatapathError> {
        fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
            get: &mut impl FnMut(&'static str) -> Result<Map, DatapathError>,
            name: &'static str,
        ) -> Result<T, DatapathError> {
            T::try_from(get(name)?).map_err(map_error(format!("opening {name}")))
        }
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| DatapathError::Load(format!("{what}: {e}")))?;
        let mut flow_capacity = 0;
        let slot_map = get(map_names::MAGLEV_SLOTS)?;
        let Map::Array(slot_data) = slot_map else {
            return Err(DatapathError::Load(format!(
                "{} is not an array",
                map_names::MAGLEV_SLOTS
            )));
        };
        let chunks = slot_data
            .info()
            .map(|info| info.max_entries())
            .map_err(map_error("reading MAGLEV_SLOTS info"))?;
        let slots = MappedSlots::map(&slot_data, chunks)?;
        Ok(Self {
            services: typed(&mut get, map_names::SERVICES)?,
            vips: typed(&mut get, map_names::VIPS)?,
            backends: typed(&mut get, map_names::BACKENDS)?,
            service_states: typed(&mut get, map_names::SERVICE_STATES)?,
            vip_filter: typed(&mut get, map_names::VIP_FILTER)?,
            backend_filter: typed(&mut get, map_names::BACKEND_FILTER)?,
            slots,
            flows: {
                let map = get(map_names::FLOWS)?;
                if let Map::LruHashMap(data) | Map::HashMap(data) = &map {
                    flow_capacity = data
                        .info()
                        .map(|info| info.max_entries() as usize)
                        .map_err(map_error("reading FLOWS info"))?;
                }
                HashMap::try_from(map).map_err(map_error("opening FLOWS"))?
            },
            reverse_flows: typed(&mut get, map_names::REVERSE_FLOWS)?,
            service_stats: typed(&mut get, map_names::SERVICE_STATS)?,
            backend_stats: typed(&mut get, map_names::BACKEND_STATS)?,
            reason_stats: typed(&mut get, map_names::REASON_STATS)?,
            cpus,
            flow_capacity,
        })
    }

    fn zero_per_cpu<T: aya::Pod + Default>(
        map: &mut PerCpuArray<MapData, T>,
        cpus: usize,
        id: u32,
        name: &str,
    ) -> Result<(), DatapathError> {
        let values = PerCpuValues::try_from(vec![T::default(); cpus])
            .map_err(|e| DatapathError::Load(format!("per-CPU values: {e}")))?;
        map.set(id, values, 0)
            .map_err(map_error(format!("zeroing {name}[{id}]")))
    }

    /// Counters of one Service id, summed over CPUs.
    pub fn service_counters(&self, id: u32) -> Result<TrafficCounters, DatapathError> {
        sum_counters(&self.service_stats, id)
    }

    /// Counters of one backend id, summed over CPUs.
    pub fn backend_counters(&self, id: u32) -> Result<TrafficCounters, DatapathError> {
        sum_counters(&self.backend_stats, id)
    }

    /// Packets per pass/drop/forward reason, summed over CPUs.
    pub fn reason_counters(&self) -> Result<Vec<(Reason, u64)>, DatapathError> {
        Reason::ALL
            .iter()
            .map(|reason| {
                let values = self
                    .reason_stats
                    .get(&(*reason as u32), 0)
                    .map_err(map_error("reading REASON_STATS"))?;
                Ok((*reason, values.iter().sum()))
            })
            .collect()
    }

    /// The tracked client → VIP flows.
    pub fn flows(&self) -> Vec<(FlowKey, FlowEntry)> {
        self.flows.iter().filter_map(Result::ok).collect()
    }

    /// The tracked backend → client flows.
    pub fn reverse_flows(&self) -> Vec<(FlowKey, ReverseEntry)> {
        self.reverse_flows.iter().filter_map(Result::ok).collect()
    }

    /// Inserts a tracked flow directly (tests use it to stage conntrack state).
    pub fn insert_flow(&mut self, key: FlowKey, entry: FlowEntry) -> Result<(), DatapathError> {
        self.flows
            .insert(key, entry, 0)
            .map_err(map_error("inserting into FLOWS"))
    }

    /// A Service entry as the kernel sees it.
    pub fn service(&self, key: &ServiceKey) -> Option<ServiceEntry> {
        self.services.get(key, 0).ok()
    }

    /// A backend entry as the kernel sees it.
    pub fn backend(&self, id: u32) -> Option<BackendEntry> {
        self.backends.get(&id, 0).ok()
    }

    /// Maglev slots as the kernel sees them.
    pub fn slots(&self, offset: u32, len: u32) -> Vec<u32> {
        self.slots.read(offset, len)
    }

    /// Number of CPUs the per-CPU maps hold values for.
    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// Number of tracked flows (client → VIP), counted by walking the keys. Bounded by the map's
    /// size: under churn the LRU can evict the key a walk stands on, which restarts it.
    pub fn flow_count(&self) -> usize {
        self.flows
            .keys()
            .take(self.flow_capacity)
            .filter(Result::is_ok)
            .count()
    }

    /// Everything adoption needs, read from the maps (pinned ones after a restart).
    pub fn read_state(&self) -> Result<KernelState, DatapathError> {
        let mut services = Vec::new();
        for item in self.services.iter() {
            let (key, entry) = item.map_err(map_error("reading SERVICES"))?;
            let table = self.slots.read(entry.table_offset, entry.table_size);
            services.push((key, entry, table));
        }
        let vips = self
            .vips
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error("reading VIPS"))?;
        let epochs = self
            .service_states
            .iter()
            .map(|state| state.map(|s| s.epoch))
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error("reading SERVICE_STATES"))?;
        let mut backends = self
            .backends
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_error("reading BACKENDS"))?;
        // Ids never handed out are all zero; drop that tail.
        let used = backends
            .iter()
            .rposition(|b| b.generation != 0 || b.flags != 0 || b.addr != 0)
            .map_or(0, |last| last + 1);
        backends.truncate(used);
        Ok(KernelState {
            services,
            vips,
            epochs,
            backends,
        })
    }
}

fn sum_counters(
    map: &PerCpuArray<MapData, TrafficCounters>,
    id: u32,
) -> Result<TrafficCounters, DatapathError> {
    let values = map
        .get(&id, 0)
        .map_err(map_error(format!("reading counters {id}")))?;
    Ok(values
        .iter()
        .fold(TrafficCounters::default(), |mut sum, c| {
            sum.packets += c.packets;
            sum.bytes += c.bytes;
            sum.new_flows += c.new_flows;
            sum.no_backend += c.no_backend;
            sum
        }))
}

impl DatapathMaps for KernelMaps {
    fn set_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<(), DatapathError> {
        self.services
            .insert(key, entry, 0)
            .map_err(map_error("writing SERVICES"))
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DatapathError> {
        self.services
            .remove(key)
            .map_err(map_error("removing from SERVICES"))
    }
    fn set_vip(&mut self, vip: u32, ports: u32) -> Result<(), DatapathError> {
        self.vips
            .insert(vip, ports, 0)
            .map_err(map_error("writing VIPS"))
    }
    fn remove_vip(&mut self, vip: u32) -> Result<(), DatapathError> {
        self.vips
            .remove(&vip)
            .map_err(map_error("removing from VIPS"))
    }
    fn set_service_state(&mut self, id: u32, state: &ServiceState) -> Result<(), DatapathError> {
        self.service_states
            .set(id, state, 0)
            .map_err(map_error(format!("writing SERVICE_STATES[{id}]")))
    }
    fn set_filter_word(
        &mut self,
        filter: Filter,
        index: u32,
        word: u64,
    ) -> Result<(), DatapathError> {
        let map = match filter {
            Filter::Vips => &mut self.vip_filter,
            Filter::Backends => &mut self.backend_filter,
        };
        map.set(index, word, 0)
            .map_err(map_error(format!("writing {filter:?} filter word {index}")))
    }
    fn set_backend(&mut self, id: u32, entry: &BackendEntry) -> Result<(), DatapathError> {
        self.backends
            .set(id, entry, 0)
            .map_err(map_error(format!("writing BACKENDS[{id}]")))
    }
    fn write_slots(&mut self, offset: u32, slots: &[u32]) -> Result<(), DatapathError> {
        self.slots.write(offset, slots)
    }
    fn reset_service_counters(&mut self, id: u32) -> Result<(), DatapathError> {
        Self::zero_per_cpu(
            &mut self.service_stats,
            self.cpus,
            id,
            map_names::SERVICE_STATS,
        )
    }
    fn reset_backend_counters(&mut self, id: u32) -> Result<(), DatapathError> {
        Self::zero_per_cpu(
            &mut self.backend_stats,
            self.cpus,
            id,
            map_names::BACKEND_STATS,
        )
    }
}
