//! Loads the embedded eBPF object, sizes its maps and attaches the XDP program to interfaces.
//!
//! With a [`PinDir`] the maps and the XDP links are pinned under bpffs (see `pin`), so the
//! datapath keeps forwarding while the agent is down; a new agent opens the same maps (they are
//! adopted, see `sync::adopt`) and swaps its program into the pinned links with
//! `bpf_link_update`, which replaces the program atomically: no packet meets an interface without
//! one.

use std::path::{Path, PathBuf};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use ingress_common::{capacity, map_names, MAGLEV_CHUNK_SLOTS, TC_EGRESS_PROGRAM, XDP_PROGRAM};

use crate::datapath::{
    pin::{pin_file, MapLayout, PINNED_MAPS},
    sync::Capacity,
    DatapathError, KernelMaps, PinDir, PinnedState,
};

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
    /// Tracked flows per direction (FLOWS).
    pub flows: u32,
    /// SNAT mappings (REVERSE_FLOWS): one per flow to an endpoint on another node, held until
    /// it idles out (TCP six hours, UDP a minute).
    pub snat_flows: u32,
    /// Session-affinity entries (AFFINITY): one per client of a `ClientIP` Service.
    pub affinity: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: capacity::SERVICES,
            backends: capacity::BACKENDS,
            maglev_slots: capacity::MAGLEV_SLOTS,
            flows: capacity::FLOWS,
            snat_flows: capacity::SNAT_FLOWS,
            affinity: capacity::AFFINITY,
        }
    }
}

impl MapSizes {
    fn chunks(&self) -> u32 {
        self.maglev_slots.div_ceil(MAGLEV_CHUNK_SLOTS).max(1)
    }

    /// The entries each map gets at load time; `None`: as the object declares.
    pub(super) fn max_entries(&self, map: &str) -> Option<u32> {
        match map {
            map_names::SERVICES
            | map_names::VIPS
            | map_names::SERVICE_STATS
            | map_names::SERVICE_STATES => Some(self.services),
            map_names::BACKENDS | map_names::BACKEND_STATS | map_names::NEXT_HOPS => {
                Some(self.backends)
            }
            map_names::MAGLEV_SLOTS => Some(self.chunks()),
            map_names::FLOWS => Some(self.flows),
            map_names::REVERSE_FLOWS => Some(self.snat_flows),
            map_names::AFFINITY => Some(self.affinity),
            _ => None,
        }
    }

    /// Every map the agent pins, as this build creates it: type, key and value sizes and flags
    /// from the embedded object, entries from these sizes. A pinned map that differs (an
    /// upgrade changed a layout, a flag changed a size) is not reused.
    pub(super) fn layouts(&self) -> Result<Vec<(&'static str, MapLayout)>, DatapathError> {
        let object = aya_obj::Object::parse(EBPF_OBJECT)
            .map_err(|source| DatapathError::ParseObject { source })?;
        PINNED_MAPS
            .iter()
            .map(|name| {
                let map = object
                    .maps
                    .get(*name)
                    .ok_or(DatapathError::MapNotInObject(name))?;
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
    pub(super) ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    attached: Vec<(String, aya::programs::xdp::XdpLinkId)>,
    pub(super) attached_egress: Vec<(String, aya::programs::tc::SchedClassifierLinkId)>,
    pub(super) pins: Option<PinDir>,
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
            .map_err(|source| DatapathError::LoadObject {
                source: Box::new(source),
            })?;
        // aya-log's ring buffer must stay open for as long as the program is loaded.
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                tracing::debug!(%error, "eBPF logging unavailable");
                None
            }
        };
        let program = xdp_program(&mut ebpf, XDP_PROGRAM)?;
        program.load().map_err(|source| DatapathError::Verifier {
            program: XDP_PROGRAM,
            source,
        })?;
        let mut datapath = Self {
            ebpf,
            logger,
            attached: Vec::new(),
            attached_egress: Vec::new(),
            pins: pins.cloned(),
        };
        datapath
            .egress_program()?
            .load()
            .map_err(|source| DatapathError::Verifier {
                program: TC_EGRESS_PROGRAM,
                source,
            })?;
        Ok((datapath, state))
    }

    /// The XDP program (for attaching and for BPF_PROG_TEST_RUN).
    pub fn program(&mut self) -> Result<&mut Xdp, DatapathError> {
        xdp_program(&mut self.ebpf, XDP_PROGRAM)
    }

    /// Makes `interface` one of the datapath's: a redirect target, the TC egress program (replies
    /// of local endpoints) and the XDP program attached. When pinning and links are pinned for
    /// it, the programs in them are replaced atomically instead (the XDP mode stays the link's);
    /// else new links are made and, when pinning, pinned.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<(), DatapathError> {
        self.add_interface(interface)?;
        self.attach_egress(interface)?;
        self.attach_xdp(interface, mode)
    }

    fn attach_xdp(&mut self, interface: &str, mode: AttachMode) -> Result<(), DatapathError> {
        let Some(pins) = self.pins.clone() else {
            let link = self
                .program()?
                .attach(interface, mode.into())
                .map_err(|source| DatapathError::Attach {
                    interface: interface.to_string(),
                    mode,
                    source,
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
                    std::fs::remove_file(&path).map_err(pin_file("removing", &path))?;
                }
            }
        }
        let program = self.program()?;
        let id =
            program
                .attach(interface, mode.into())
                .map_err(|source| DatapathError::Attach {
                    interface: interface.to_string(),
                    mode,
                    source,
                })?;
        let link = program
            .take_link(id)
            .map_err(|source| DatapathError::TakeLink {
                interface: interface.to_string(),
                source,
            })?;
        pin_link(interface, link, &path)
    }

    fn replace_in_pinned_link(&mut self, path: &Path) -> Result<(), DatapathError> {
        let pinned = PinnedLink::from_pin(path).map_err(|source| DatapathError::OpenLink {
            path: path.to_path_buf(),
            source,
        })?;
        let fd_link = FdLink::from(pinned);
        // A defunct link (its interface deleted) still opens; `bpf_link_update` refuses it.
        let link = XdpLink::try_from(fd_link).map_err(|source| DatapathError::NotXdpLink {
            path: path.to_path_buf(),
            source,
        })?;
        let program = self.program()?;
        let id = program
            .attach_to_link(link)
            .map_err(|source| DatapathError::UpdateLink {
                operation: "updating",
                path: path.to_path_buf(),
                source,
            })?;
        // The link's fd goes with the program object; the pin keeps the attachment.
        let link = program
            .take_link(id)
            .map_err(|source| DatapathError::UpdateLink {
                operation: "taking",
                path: path.to_path_buf(),
                source,
            })?;
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
            std::fs::remove_file(&path).map_err(pin_file("removing", &path))?;
            let egress = pins.egress_link(&interface);
            if egress.exists() {
                std::fs::remove_file(&egress).map_err(pin_file("removing", &egress))?;
            }
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
        let attached = std::mem::take(&mut self.attached_egress);
        for (interface, link) in attached {
            if let Ok(program) = self.egress_program() {
                if let Err(error) = program.detach(link) {
                    tracing::warn!(interface, %error, "detaching TC egress");
                }
            }
        }
    }

    /// Takes the maps out of the object for the sync and for reading counters.
    pub fn take_maps(&mut self) -> Result<KernelMaps, DatapathError> {
        KernelMaps::take(&mut self.ebpf)
    }

    /// Drains eBPF log records into `tracing` (the runner calls it on a timer).
    pub fn flush_logs(&mut self) {
        if let Some(logger) = &mut self.logger {
            logger.flush();
        }
    }
}

/// Pins a new attachment's link at `path`. Our fd closes here; the pin alone keeps the program
/// attached, as for an updated link, so `cleanup` detaches every interface at once, agent
/// running or not.
pub(super) fn pin_link<L>(interface: &str, link: L, path: &Path) -> Result<(), DatapathError>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    let fd_link = FdLink::try_from(link).map_err(|source| DatapathError::NotBpfLink {
        interface: interface.to_string(),
        source,
    })?;
    drop(fd_link.pin(path).map_err(|source| DatapathError::PinLink {
        path: path.to_path_buf(),
        source,
    })?);
    Ok(())
}

/// The object's XDP program `name`.
pub(super) fn xdp_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Xdp, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::ProgramMissing(name))?
        .try_into()
        .map_err(|source| DatapathError::NotXdp {
            program: name,
            source,
        })
}
