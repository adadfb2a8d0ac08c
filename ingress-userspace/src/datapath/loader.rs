//! Loads the embedded eBPF object, sizes its maps, attaches the XDP program to interfaces, and
//! gives typed access to the maps ([`KernelMaps`], the real [`DatapathMaps`]).
//!
//! The Maglev slot array is created `BPF_F_MMAPABLE` and mapped into the agent, so writing a
//! table is a memcpy instead of one syscall per 16 slots: 10,000 Services' tables are written in
//! milliseconds.

use std::{os::fd::AsFd as _, ptr::NonNull};

use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use ingress_common::{
    capacity, map_names, BackendEntry, FlowEntry, FlowKey, Reason, ReverseEntry, ServiceEntry,
    ServiceKey, ServiceState, TrafficCounters, MAGLEV_CHUNK_SLOTS, XDP_PROGRAM,
};

use crate::datapath::sync::{Capacity, DatapathError, DatapathMaps, Filter};

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
    ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    attached: Vec<(String, aya::programs::xdp::XdpLinkId)>,
}

impl Datapath {
    /// Loads the embedded object with the given map sizes. Needs CAP_BPF (root here).
    pub fn load(sizes: &MapSizes) -> Result<Self, DatapathError> {
        let chunks = sizes.maglev_slots.div_ceil(MAGLEV_CHUNK_SLOTS).max(1);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::SERVICES, sizes.services)
            .map_max_entries(map_names::VIPS, sizes.services)
            .map_max_entries(map_names::SERVICE_STATS, sizes.services)
            .map_max_entries(map_names::SERVICE_STATES, sizes.services)
            .map_max_entries(map_names::BACKENDS, sizes.backends)
            .map_max_entries(map_names::BACKEND_STATS, sizes.backends)
            .map_max_entries(map_names::NEXT_HOPS, sizes.backends)
            .map_max_entries(map_names::MAGLEV_SLOTS, chunks)
            .map_max_entries(map_names::FLOWS, sizes.flows)
            .map_max_entries(map_names::REVERSE_FLOWS, sizes.flows)
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
        Ok(Self {
            ebpf,
            logger,
            attached: Vec::new(),
        })
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

    /// Attaches the program to `interface`.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<(), DatapathError> {
        let link = self
            .program()?
            .attach(interface, mode.into())
            .map_err(|e| {
                DatapathError::Load(format!("attaching XDP to {interface} ({mode:?}): {e}"))
            })?;
        self.attached.push((interface.to_string(), link));
        Ok(())
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
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
    ebpf.take_map(name)
        .ok_or_else(|| DatapathError::Load(format!("map {name} missing")))
}

fn map_error(operation: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    let operation = operation.into();
    move |source| DatapathError::Map { operation, source }
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, DatapathError> {
    T::try_from(take(ebpf, name)?).map_err(map_error(format!("opening {name}")))
}

impl KernelMaps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| DatapathError::Load(format!("{what}: {e}")))?;
        let slot_map = take(ebpf, map_names::MAGLEV_SLOTS)?;
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
            services: typed(ebpf, map_names::SERVICES)?,
            vips: typed(ebpf, map_names::VIPS)?,
            backends: typed(ebpf, map_names::BACKENDS)?,
            service_states: typed(ebpf, map_names::SERVICE_STATES)?,
            vip_filter: typed(ebpf, map_names::VIP_FILTER)?,
            backend_filter: typed(ebpf, map_names::BACKEND_FILTER)?,
            slots,
            flows: typed(ebpf, map_names::FLOWS)?,
            reverse_flows: typed(ebpf, map_names::REVERSE_FLOWS)?,
            service_stats: typed(ebpf, map_names::SERVICE_STATS)?,
            backend_stats: typed(ebpf, map_names::BACKEND_STATS)?,
            reason_stats: typed(ebpf, map_names::REASON_STATS)?,
            cpus,
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
