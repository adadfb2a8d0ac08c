//! The kernel maps as typed handles ([`KernelMaps`], the real `sync::DatapathMaps`), and every
//! `unsafe` they need: the Maglev slot array is created `BPF_F_MMAPABLE` and mapped into the
//! agent, so writing a table is a memcpy instead of one syscall per 16 slots (10,000 Services'
//! tables are written in milliseconds).

use std::{os::fd::AsFd as _, ptr::NonNull};

use std::net::Ipv4Addr;

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues,
    },
    Ebpf,
};
use ingress_common::{
    map_names, AffinityEntry, AffinityKey, BackendEntry, FlowEntry, FlowKey, Reason, ReverseEntry,
    ServiceEntry, ServiceKey, ServiceState, SourceRangeKey, TrafficCounters,
};

use crate::{
    datapath::{
        sync::{DatapathMaps, Filter, KernelState},
        DatapathError, PinDir,
    },
    translate::l4::Ipv4Prefix,
};

/// The LPM key of a frontend's prefix: the service id's 32 bits, then the prefix's.
fn source_range_key(service_id: u32, prefix: Ipv4Prefix) -> Key<SourceRangeKey> {
    Key::new(
        32 + u32::from(prefix.len),
        SourceRangeKey {
            service_id: service_id.to_be(),
            addr: u32::from_ne_bytes(prefix.addr.octets()),
        },
    )
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
            return Err(DatapathError::Mmap {
                map: map_names::MAGLEV_SLOTS,
                source: std::io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(address.cast::<u32>()).ok_or_else(|| DatapathError::Mmap {
            map: map_names::MAGLEV_SLOTS,
            source: std::io::Error::other("mmap returned null"),
        })?;
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
    source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    affinity: HashMap<MapData, AffinityKey, AffinityEntry>,
    cpus: usize,
    /// The sizes of FLOWS, REVERSE_FLOWS and AFFINITY: a walk never counts past them.
    flow_capacity: usize,
    reverse_capacity: usize,
    affinity_capacity: usize,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DatapathError> {
    ebpf.take_map(name).ok_or(DatapathError::MapMissing(name))
}

/// A hash map (plain or LRU) and its size.
fn hash_map<K: aya::Pod, V: aya::Pod>(
    get: &mut impl FnMut(&'static str) -> Result<Map, DatapathError>,
    name: &'static str,
) -> Result<(HashMap<MapData, K, V>, usize), DatapathError> {
    let map = get(name)?;
    let capacity = match &map {
        Map::LruHashMap(data) | Map::HashMap(data) => data
            .info()
            .map(|info| info.max_entries() as usize)
            .map_err(map_error(format!("reading {name} info")))?,
        _ => 0,
    };
    let map = HashMap::try_from(map).map_err(map_error(format!("opening {name}")))?;
    Ok((map, capacity))
}

/// Now on the clock the datapath stamps SNAT mappings and affinity entries with
/// (`bpf_ktime_get_coarse_ns` reads `CLOCK_MONOTONIC_COARSE`).
pub fn datapath_now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: FFI call writing one timespec we own; the clock id is a constant the kernel has.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now);
    }
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn map_error(operation: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    let operation = operation.into();
    move |source| DatapathError::Map { operation, source }
}

impl KernelMaps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
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
            .ok_or(DatapathError::NoProgram(program_id))?;
        let ids = program
            .map_ids()
            .map_err(|source| DatapathError::ProgramMaps { program_id, source })?
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
            let data = maps.remove(name).ok_or(DatapathError::ProgramLacksMap {
                program_id,
                map: name,
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
        let cpus =
            aya::util::nr_cpus().map_err(|(what, source)| DatapathError::Cpus { what, source })?;
        let slot_map = get(map_names::MAGLEV_SLOTS)?;
        let Map::Array(slot_data) = slot_map else {
            return Err(DatapathError::MapType {
                map: map_names::MAGLEV_SLOTS,
                expected: "an array",
            });
        };
        let chunks = slot_data
            .info()
            .map(|info| info.max_entries())
            .map_err(map_error("reading MAGLEV_SLOTS info"))?;
        let slots = MappedSlots::map(&slot_data, chunks)?;
        let (flows, flow_capacity) = hash_map(&mut get, map_names::FLOWS)?;
        let (reverse_flows, reverse_capacity) = hash_map(&mut get, map_names::REVERSE_FLOWS)?;
        let (affinity, affinity_capacity) = hash_map(&mut get, map_names::AFFINITY)?;
        Ok(Self {
            services: typed(&mut get, map_names::SERVICES)?,
            vips: typed(&mut get, map_names::VIPS)?,
            backends: typed(&mut get, map_names::BACKENDS)?,
            service_states: typed(&mut get, map_names::SERVICE_STATES)?,
            vip_filter: typed(&mut get, map_names::VIP_FILTER)?,
            backend_filter: typed(&mut get, map_names::BACKEND_FILTER)?,
            slots,
            flows,
            reverse_flows,
            service_stats: typed(&mut get, map_names::SERVICE_STATS)?,
            backend_stats: typed(&mut get, map_names::BACKEND_STATS)?,
            reason_stats: typed(&mut get, map_names::REASON_STATS)?,
            source_ranges: typed(&mut get, map_names::SOURCE_RANGES)?,
            affinity,
            cpus,
            flow_capacity,
            reverse_capacity,
            affinity_capacity,
        })
    }

    fn zero_per_cpu<T: aya::Pod + Default>(
        map: &mut PerCpuArray<MapData, T>,
        cpus: usize,
        id: u32,
        name: &str,
    ) -> Result<(), DatapathError> {
        let values = PerCpuValues::try_from(vec![T::default(); cpus])
            .map_err(|source| DatapathError::PerCpuValues { source })?;
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

    /// Number of tracked flows (client → VIP), counted by walking the keys. Bounded by the map's
    /// size: under churn the LRU can evict the key a walk stands on, which restarts it.
    pub fn flow_count(&self) -> usize {
        self.flows
            .keys()
            .take(self.flow_capacity)
            .filter(Result::is_ok)
            .count()
    }

    /// SNAT mappings that hold their port at `now_ns` ([`datapath_now_ns`]): entries of
    /// `REVERSE_FLOWS` that name a client and are not past their idle timeout. A walk, bounded
    /// like [`Self::flow_count`].
    pub fn snat_mappings(&self, now_ns: u64) -> usize {
        self.reverse_flows
            .iter()
            .take(self.reverse_capacity)
            .filter_map(Result::ok)
            .filter(|(key, entry)| {
                entry.client_addr != 0 && !entry.snat_expired(key.proto as u8, now_ns)
            })
            .count()
    }

    /// Clients with a live session affinity, by service id: `live(service_id, entry)` says
    /// whether an entry still counts (its frontend's epoch and timeout). A bounded walk.
    pub fn affinity_entries(
        &self,
        live: impl Fn(u32, &AffinityEntry) -> bool,
    ) -> std::collections::BTreeMap<u32, u64> {
        let mut counts = std::collections::BTreeMap::new();
        for (key, entry) in self
            .affinity
            .iter()
            .take(self.affinity_capacity)
            .filter_map(Result::ok)
        {
            if live(key.service_id, &entry) {
                *counts.entry(key.service_id).or_insert(0) += 1;
            }
        }
        counts
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
        let mut source_ranges = Vec::new();
        for key in self.source_ranges.keys() {
            let key = key.map_err(map_error("reading SOURCE_RANGES"))?;
            let data = key.data();
            let len = key.prefix_len().saturating_sub(32).min(32) as u8;
            source_ranges.push((
                u32::from_be(data.service_id),
                Ipv4Prefix {
                    addr: Ipv4Addr::from(data.addr.to_ne_bytes()),
                    len,
                },
            ));
        }
        Ok(KernelState {
            services,
            vips,
            epochs,
            backends,
            source_ranges,
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
            sum.rejected += c.rejected;
            sum.denied += c.denied;
            sum.snat_failures += c.snat_failures;
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
    fn add_source_range(
        &mut self,
        service_id: u32,
        prefix: Ipv4Prefix,
    ) -> Result<(), DatapathError> {
        self.source_ranges
            .insert(&source_range_key(service_id, prefix), 1, 0)
            .map_err(map_error(format!("writing SOURCE_RANGES {prefix}")))
    }
    fn remove_source_range(
        &mut self,
        service_id: u32,
        prefix: Ipv4Prefix,
    ) -> Result<(), DatapathError> {
        self.source_ranges
            .remove(&source_range_key(service_id, prefix))
            .map_err(map_error(format!("removing SOURCE_RANGES {prefix}")))
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
