//! Map definitions. Sizes are defaults; the agent sets them at load time.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use ingress_common::{
    capacity, AffinityEntry, AffinityKey, BackendEntry, FlowCacheEntry, FlowEntry, FlowKey,
    MaglevChunk, NextHop, Reason, ReverseEntry, ServiceEntry, ServiceKey, ServiceState,
    SourceRangeKey, TrafficCounters, FILTER_WORDS, FLOW_CACHE_SLOTS, MAGLEV_CHUNK_SLOTS,
    NODE_INTERFACES_MAX,
};

/// Lets the agent mmap the Maglev slots and write whole tables with a memcpy.
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[map(name = "SERVICES")]
pub(crate) static SERVICES: HashMap<ServiceKey, ServiceEntry> =
    HashMap::with_max_entries(capacity::SERVICES, 0);

#[map(name = "VIPS")]
pub(crate) static VIPS: HashMap<u32, u32> = HashMap::with_max_entries(capacity::SERVICES, 0);

#[map(name = "SERVICE_STATES")]
pub(crate) static SERVICE_STATES: Array<ServiceState> =
    Array::with_max_entries(capacity::SERVICES, 0);

#[map(name = "VIP_FILTER")]
pub(crate) static VIP_FILTER: Array<u64> = Array::with_max_entries(FILTER_WORDS, 0);

#[map(name = "BACKEND_FILTER")]
pub(crate) static BACKEND_FILTER: Array<u64> = Array::with_max_entries(FILTER_WORDS, 0);

#[map(name = "BACKENDS")]
pub(crate) static BACKENDS: Array<BackendEntry> = Array::with_max_entries(capacity::BACKENDS, 0);

#[map(name = "MAGLEV_SLOTS")]
pub(crate) static MAGLEV_SLOTS: Array<MaglevChunk> =
    Array::with_max_entries(capacity::MAGLEV_SLOTS / MAGLEV_CHUNK_SLOTS, BPF_F_MMAPABLE);

#[map(name = "FLOWS")]
pub(crate) static FLOWS: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(capacity::FLOWS, 0);

#[map(name = "FLOW_CACHE")]
pub(crate) static FLOW_CACHE: PerCpuArray<FlowCacheEntry> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

#[map(name = "REVERSE_FLOWS")]
pub(crate) static REVERSE_FLOWS: LruHashMap<FlowKey, ReverseEntry> =
    LruHashMap::with_max_entries(capacity::SNAT_FLOWS, 0);

#[map(name = "NEXT_HOPS")]
pub(crate) static NEXT_HOPS: PerCpuArray<NextHop> =
    PerCpuArray::with_max_entries(capacity::BACKENDS, 0);

#[map(name = "SERVICE_STATS")]
pub(crate) static SERVICE_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(capacity::SERVICES, 0);

#[map(name = "BACKEND_STATS")]
pub(crate) static BACKEND_STATS: PerCpuArray<TrafficCounters> =
    PerCpuArray::with_max_entries(capacity::BACKENDS, 0);

#[map(name = "REASON_STATS")]
pub(crate) static REASON_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

#[map(name = "SOURCE_RANGES")]
pub(crate) static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> =
    LpmTrie::with_max_entries(capacity::SOURCE_RANGES, 0);

#[map(name = "AFFINITY")]
pub(crate) static AFFINITY: LruHashMap<AffinityKey, AffinityEntry> =
    LruHashMap::with_max_entries(capacity::AFFINITY, 0);

#[map(name = "NODE_INTERFACES")]
pub(crate) static NODE_INTERFACES: HashMap<u32, u32> =
    HashMap::with_max_entries(NODE_INTERFACES_MAX, 0);
