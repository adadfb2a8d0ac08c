//! Keeps the BPF maps equal to the L4 plan by writing only the difference.
//!
//! Each frontend (VIP:port/protocol) owns a service id, a range of Maglev slots and one backend id
//! per endpoint. A change never edits what packets are reading: new backends and a new table are
//! written into unused ids and slots first, then the frontend's `ServiceEntry` is replaced in one
//! map update (the atomic switch), and only then are the old slots and departed backends retired.
//! Retired ids and slots wait out a grace period before reuse, because a packet that looked up the
//! old entry on another CPU may still be reading them.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use ingress_common::{
    filter_slot, BackendEntry, ServiceEntry, ServiceKey, ServiceState, BACKEND_ACTIVE,
    BACKEND_DRAINING, BACKEND_SNAT, FILTER_WORDS, SERVICE_DROP_EMPTY, SERVICE_SOURCE_RANGES,
};

pub use crate::datapath::DatapathError;
use crate::{
    datapath::maglev,
    translate::l4::{Endpoint, Frontend, FrontendKind, Ipv4Prefix, L4Plan, ServicePortPlan},
};

/// How long retired ids and slots wait before reuse. XDP programs finish within microseconds; this
/// is generous.
pub const GRACE_PERIOD: Duration = Duration::from_millis(100);

/// Writes to the kernel maps. `KernelMaps` implements it over aya; the unit tests use an in-memory
/// model to count writes.
pub trait DatapathMaps {
    /// Inserts or replaces a Service entry (one atomic map update).
    fn set_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<(), DatapathError>;
    /// Removes a Service entry.
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DatapathError>;
    /// Records that `vip` carries `ports` Service ports.
    fn set_vip(&mut self, vip: u32, ports: u32) -> Result<(), DatapathError>;
    /// Forgets a VIP.
    fn remove_vip(&mut self, vip: u32) -> Result<(), DatapathError>;
    /// Writes a service id's state (what established flows are checked against).
    fn set_service_state(&mut self, id: u32, state: &ServiceState) -> Result<(), DatapathError>;
    /// Writes one word of an address filter bitmap.
    fn set_filter_word(
        &mut self,
        filter: Filter,
        index: u32,
        word: u64,
    ) -> Result<(), DatapathError>;
    /// Writes a backend entry.
    fn set_backend(&mut self, id: u32, entry: &BackendEntry) -> Result<(), DatapathError>;
    /// Writes Maglev slots starting at `offset`.
    fn write_slots(&mut self, offset: u32, slots: &[u32]) -> Result<(), DatapathError>;
    /// Zeroes a Service's counters (its id is being given to a new frontend).
    fn reset_service_counters(&mut self, id: u32) -> Result<(), DatapathError>;
    /// Zeroes a backend's counters.
    fn reset_backend_counters(&mut self, id: u32) -> Result<(), DatapathError>;
    /// Allows new flows from `prefix` to frontend `service_id`.
    fn add_source_range(
        &mut self,
        service_id: u32,
        prefix: Ipv4Prefix,
    ) -> Result<(), DatapathError>;
    /// Takes a prefix back.
    fn remove_source_range(
        &mut self,
        service_id: u32,
        prefix: Ipv4Prefix,
    ) -> Result<(), DatapathError>;
}

/// Whether a frontend's address counts in `VIPS` (whose fragments the datapath drops): a node
/// address carrying nodePorts is not a VIP, its other traffic (fragments included) is the node's.
fn counts_as_vip(kind: FrontendKind) -> bool {
    kind != FrontendKind::NodePort
}

/// The `ServiceEntry` flags a frontend's plan asks for.
fn service_flags(plan: &ServicePortPlan) -> u32 {
    let mut flags = 0;
    if plan.endpoints_elsewhere {
        flags |= SERVICE_DROP_EMPTY;
    }
    if !plan.policy.source_ranges.is_empty() {
        flags |= SERVICE_SOURCE_RANGES;
    }
    flags
}

/// The `BackendEntry` flags of a live endpoint of a frontend's plan.
fn backend_flags(plan: &ServicePortPlan, endpoint: &Endpoint) -> u32 {
    let mut flags = BACKEND_ACTIVE;
    if !plan.backends.contains(endpoint) {
        flags |= BACKEND_DRAINING;
    }
    if plan.remote.contains(endpoint) {
        flags |= BACKEND_SNAT;
    }
    flags
}

/// Whether two plans of a frontend program the same maps (names aside).
fn same_datapath(programmed: &ServicePortPlan, wanted: &ServicePortPlan) -> bool {
    programmed.backends == wanted.backends
        && programmed.draining == wanted.draining
        && programmed.remote == wanted.remote
        // `local_only` shaped `backends` in the translator; the maps do not hold it (an adopted
        // plan cannot know it).
        && programmed.policy.affinity_timeout == wanted.policy.affinity_timeout
        && programmed.policy.source_ranges == wanted.policy.source_ranges
        && programmed.endpoints_elsewhere == wanted.endpoints_elsewhere
        && counts_as_vip(programmed.kind) == counts_as_vip(wanted.kind)
}

/// The two address filters the XDP program tests before any hash lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Filter {
    /// Destination addresses that may be VIPs.
    Vips,
    /// Source addresses that may be backends (replies to reverse-NAT).
    Backends,
}

/// A bitmap filter and how many addresses hold each bit, mirrored so only changed words are
/// written.
#[derive(Debug)]
struct AddressFilter {
    which: Filter,
    words: Vec<u64>,
    holders: BTreeMap<(u32, u32), u32>,
}

impl AddressFilter {
    fn new(which: Filter) -> Self {
        Self {
            which,
            words: vec![0; FILTER_WORDS as usize],
            holders: BTreeMap::new(),
        }
    }

    fn add<M: DatapathMaps>(&mut self, maps: &mut M, addr: Ipv4Addr) -> Result<(), DatapathError> {
        let (index, bit) = filter_slot(u32::from_ne_bytes(addr.octets()));
        let holders = self
            .holders
            .entry((index, bit.trailing_zeros()))
            .or_insert(0);
        *holders += 1;
        if *holders == 1 {
            self.words[index as usize] |= bit;
            maps.set_filter_word(self.which, index, self.words[index as usize])?;
        }
        Ok(())
    }

    /// Counts `addr` without writing (adoption rewrites every word afterwards).
    fn mark(&mut self, addr: Ipv4Addr) {
        let (index, bit) = filter_slot(u32::from_ne_bytes(addr.octets()));
        *self
            .holders
            .entry((index, bit.trailing_zeros()))
            .or_insert(0) += 1;
        self.words[index as usize] |= bit;
    }

    fn remove<M: DatapathMaps>(
        &mut self,
        maps: &mut M,
        addr: Ipv4Addr,
    ) -> Result<(), DatapathError> {
        let (index, bit) = filter_slot(u32::from_ne_bytes(addr.octets()));
        let key = (index, bit.trailing_zeros());
        let Some(holders) = self.holders.get_mut(&key) else {
            return Ok(());
        };
        *holders -= 1;
        if *holders == 0 {
            self.holders.remove(&key);
            self.words[index as usize] &= !bit;
            maps.set_filter_word(self.which, index, self.words[index as usize])?;
        }
        Ok(())
    }
}

/// Map sizes the sync must stay within.
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    /// Service ids (and SERVICES entries).
    pub services: u32,
    /// Backend ids.
    pub backends: u32,
    /// Maglev slots in total.
    pub slots: u32,
}

/// What one sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Frontends programmed for the first time.
    pub added: usize,
    /// Frontends whose backends changed.
    pub changed: usize,
    /// Frontends removed.
    pub removed: usize,
    /// Frontends left as they were.
    pub unchanged: usize,
    /// Frontends that could not be (re)programmed; their previous state stays.
    pub errors: Vec<String>,
}

/// A frontend as it is in the maps.
#[derive(Debug, Clone)]
pub struct ProgrammedFrontend {
    /// Its service id (index of its counters).
    pub service_id: u32,
    /// The service id's epoch (what tracked flows of this frontend carry).
    pub epoch: u32,
    /// First Maglev slot.
    pub table_offset: u32,
    /// Maglev table size.
    pub table_size: u32,
    /// Backends and their ids.
    pub backends: BTreeMap<Endpoint, u32>,
    /// The plan it was programmed from.
    pub plan: ServicePortPlan,
}

#[derive(Debug)]
enum Retired {
    ServiceId(u32),
    BackendId(u32),
    Slots { offset: u32, len: u32 },
}

/// The user-space mirror of the datapath and the diff engine.
pub struct DatapathSync<M> {
    maps: M,
    frontends: BTreeMap<Frontend, ProgrammedFrontend>,
    vip_ports: BTreeMap<Ipv4Addr, u32>,
    /// VIPs whose port count changed without the VIPS entry appearing or going: written once
    /// at the end of the pass (the datapath reads only whether a VIP is there; the count is for
    /// adoption), so a first load writes each VIP once, not once per Service port.
    stale_vip_counts: BTreeSet<Ipv4Addr>,
    service_ids: IdPool,
    backend_ids: IdPool,
    slots: SlotPool,
    generations: Vec<u32>,
    epochs: Vec<u32>,
    vip_filter: AddressFilter,
    backend_filter: AddressFilter,
    retired: VecDeque<(Instant, Retired)>,
}

fn service_key(frontend: &Frontend) -> ServiceKey {
    ServiceKey {
        vip: u32::from_ne_bytes(frontend.vip.octets()),
        port: frontend.port.to_be(),
        proto: frontend.protocol.number(),
        pad: 0,
    }
}

fn vip_key(vip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(vip.octets())
}

impl<M: DatapathMaps> DatapathSync<M> {
    /// A sync for empty maps of the given capacity.
    pub fn new(maps: M, capacity: Capacity) -> Self {
        Self {
            maps,
            frontends: BTreeMap::new(),
            vip_ports: BTreeMap::new(),
            stale_vip_counts: BTreeSet::new(),
            service_ids: IdPool::new(capacity.services),
            backend_ids: IdPool::new(capacity.backends),
            slots: SlotPool::new(capacity.slots),
            generations: Vec::new(),
            epochs: Vec::new(),
            vip_filter: AddressFilter::new(Filter::Vips),
            backend_filter: AddressFilter::new(Filter::Backends),
            retired: VecDeque::new(),
        }
    }

    /// The maps (for reading counters).
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// What is programmed now.
    pub fn frontends(&self) -> &BTreeMap<Frontend, ProgrammedFrontend> {
        &self.frontends
    }

    /// Makes the maps equal to `plan`, writing only what differs.
    pub fn apply(&mut self, plan: &L4Plan, now: Instant) -> SyncReport {
        self.recycle(now);
        let mut report = SyncReport::default();
        let gone: Vec<Frontend> = self
            .frontends
            .keys()
            .filter(|f| !plan.frontends.contains_key(f))
            .copied()
            .collect();
        for frontend in gone {
            match self.remove_frontend(&frontend, now) {
                Ok(()) => report.removed += 1,
                Err(error) => report.errors.push(format!("removing {frontend}: {error}")),
            }
        }
        for (frontend, wanted) in &plan.frontends {
            self.apply_one(frontend, wanted, now, &mut report);
        }
        self.write_vip_counts(&mut report);
        report
    }

    /// Writes the VIP port counts that changed during this pass.
    fn write_vip_counts(&mut self, report: &mut SyncReport) {
        for vip in std::mem::take(&mut self.stale_vip_counts) {
            if let Some(ports) = self.vip_ports.get(&vip) {
                if let Err(error) = self.maps.set_vip(vip_key(vip), *ports) {
                    report.errors.push(format!("VIP {vip}: {error}"));
                }
            }
        }
    }

    /// Like [`DatapathSync::apply`], for the listed frontends of `plan` only (an incremental
    /// translation names the frontends it changed; none is added or removed).
    pub fn apply_frontends(
        &mut self,
        plan: &L4Plan,
        frontends: &[Frontend],
        now: Instant,
    ) -> SyncReport {
        self.recycle(now);
        let mut report = SyncReport::default();
        for frontend in frontends {
            if let Some(wanted) = plan.frontends.get(frontend) {
                self.apply_one(frontend, wanted, now, &mut report);
            }
        }
        report.unchanged += self.frontends.len().saturating_sub(frontends.len());
        self.write_vip_counts(&mut report);
        report
    }

    fn apply_one(
        &mut self,
        frontend: &Frontend,
        wanted: &ServicePortPlan,
        now: Instant,
        report: &mut SyncReport,
    ) {
        let unchanged = self
            .frontends
            .get(frontend)
            .map(|programmed| same_datapath(&programmed.plan, wanted));
        match unchanged {
            Some(true) => {
                report.unchanged += 1;
                if let Some(programmed) = self.frontends.get_mut(frontend) {
                    if programmed.plan != *wanted {
                        programmed.plan = wanted.clone();
                    }
                }
            }
            Some(false) => match self.program_frontend(frontend, wanted, now) {
                Ok(()) => report.changed += 1,
                Err(error) => report.errors.push(format!("updating {frontend}: {error}")),
            },
            None => match self.program_frontend(frontend, wanted, now) {
                Ok(()) => report.added += 1,
                Err(error) => report.errors.push(format!("adding {frontend}: {error}")),
            },
        }
    }

    /// A new epoch for a service id (every change of owner gets one).
    fn next_epoch(&mut self, service_id: u32) -> u32 {
        let index = service_id as usize;
        if self.epochs.len() <= index {
            self.epochs.resize(index + 1, 0);
        }
        self.epochs[index] = self.epochs[index].wrapping_add(1).max(1);
        self.epochs[index]
    }

    /// Returns ids and slots whose grace period is over to the pools.
    fn recycle(&mut self, now: Instant) {
        while let Some((retired_at, _)) = self.retired.front() {
            if now.duration_since(*retired_at) < GRACE_PERIOD {
                break;
            }
            let Some((_, item)) = self.retired.pop_front() else {
                break;
            };
            match item {
                Retired::ServiceId(id) => self.service_ids.release(id),
                Retired::BackendId(id) => self.backend_ids.release(id),
                Retired::Slots { offset, len } => self.slots.release(offset, len),
            }
        }
    }

    fn retire_backend(
        &mut self,
        id: u32,
        backend: &Endpoint,
        now: Instant,
    ) -> Result<(), DatapathError> {
        let entry = BackendEntry {
            addr: u32::from_ne_bytes(backend.addr.octets()),
            port: backend.port.to_be(),
            pad: 0,
            flags: 0,
            generation: self.generations.get(id as usize).copied().unwrap_or(0),
            service_id: 0,
        };
        self.maps.set_backend(id, &entry)?;
        self.backend_filter.remove(&mut self.maps, backend.addr)?;
        self.retired.push_back((now, Retired::BackendId(id)));
        Ok(())
    }

    fn remove_frontend(&mut self, frontend: &Frontend, now: Instant) -> Result<(), DatapathError> {
        let Some(programmed) = self.frontends.get(frontend).cloned() else {
            return Ok(());
        };
        // Unpublish first: from here on no packet reaches the table or the backends.
        self.maps.remove_service(&service_key(frontend))?;
        self.frontends.remove(frontend);
        // Flows of this frontend stop matching their service id at once.
        let epoch = self.next_epoch(programmed.service_id);
        self.maps.set_service_state(
            programmed.service_id,
            &ServiceState {
                epoch,
                ..Default::default()
            },
        )?;
        for prefix in &programmed.plan.policy.source_ranges {
            self.maps
                .remove_source_range(programmed.service_id, *prefix)?;
        }
        if counts_as_vip(programmed.plan.kind) {
            self.release_vip_port(frontend.vip)?;
        }
        self.vip_filter.remove(&mut self.maps, frontend.vip)?;
        for (backend, id) in &programmed.backends {
            self.retire_backend(*id, backend, now)?;
        }
        self.retired.push_back((
            now,
            Retired::Slots {
                offset: programmed.table_offset,
                len: programmed.table_size,
            },
        ));
        self.retired
            .push_back((now, Retired::ServiceId(programmed.service_id)));
        Ok(())
    }

    fn release_vip_port(&mut self, vip: Ipv4Addr) -> Result<(), DatapathError> {
        let remaining = self
            .vip_ports
            .get(&vip)
            .copied()
            .unwrap_or(1)
            .saturating_sub(1);
        if remaining == 0 {
            self.vip_ports.remove(&vip);
            self.stale_vip_counts.remove(&vip);
            self.maps.remove_vip(vip_key(vip))
        } else {
            self.vip_ports.insert(vip, remaining);
            self.stale_vip_counts.insert(vip);
            Ok(())
        }
    }

    /// Programs a new frontend or a new backend set for an existing one.
    fn program_frontend(
        &mut self,
        frontend: &Frontend,
        wanted: &ServicePortPlan,
        now: Instant,
    ) -> Result<(), DatapathError> {
        let previous = self.frontends.get(frontend).cloned();
        // Ids: keep those of backends that stay, allocate for newcomers.
        let mut backends = BTreeMap::new();
        let mut fresh = Vec::new();
        // Fresh ids whose counters are known to be zero (no reset needed).
        let mut clean = Vec::new();
        for backend in wanted.backends.iter().chain(&wanted.draining) {
            if let Some(id) = previous.as_ref().and_then(|p| p.backends.get(backend)) {
                backends.insert(*backend, *id);
                continue;
            }
            let Some((id, is_clean)) = self.backend_ids.allocate_clean() else {
                fresh.iter().for_each(|id| self.backend_ids.release(*id));
                return Err(DatapathError::Exhausted("backend ids"));
            };
            fresh.push(id);
            if is_clean {
                clean.push(id);
            }
            backends.insert(*backend, id);
        }
        let table_size = maglev::resize(
            previous.as_ref().map(|p| p.table_size).unwrap_or(0),
            wanted.backends.len(),
        );
        let Some(table_offset) = self.slots.allocate(table_size) else {
            fresh.iter().for_each(|id| self.backend_ids.release(*id));
            return Err(DatapathError::Exhausted("Maglev slots"));
        };
        let (service_id, service_clean) = match &previous {
            Some(p) => (p.service_id, false),
            None => match self.service_ids.allocate_clean() {
                Some(allocated) => allocated,
                None => {
                    fresh.iter().for_each(|id| self.backend_ids.release(*id));
                    self.slots.release(table_offset, table_size);
                    return Err(DatapathError::Exhausted("service ids"));
                }
            },
        };

        // 1. Newcomers into unused backend ids; kept backends whose state changed (ready ↔
        // draining, local ↔ remote) rewritten in place, same generation, so their flows stay.
        for (backend, id) in &backends {
            let index = *id as usize;
            let is_fresh = fresh.contains(id);
            if is_fresh {
                if self.generations.len() <= index {
                    self.generations.resize(index + 1, 0);
                }
                self.generations[index] = self.generations[index].wrapping_add(1);
                if !clean.contains(id) {
                    self.maps.reset_backend_counters(*id)?;
                }
                self.backend_filter.add(&mut self.maps, backend.addr)?;
            } else if previous
                .as_ref()
                .is_some_and(|p| backend_flags(&p.plan, backend) == backend_flags(wanted, backend))
            {
                continue;
            }
            self.maps.set_backend(
                *id,
                &BackendEntry {
                    addr: u32::from_ne_bytes(backend.addr.octets()),
                    port: backend.port.to_be(),
                    pad: 0,
                    flags: backend_flags(wanted, backend),
                    generation: self.generations.get(index).copied().unwrap_or(0),
                    service_id,
                },
            )?;
        }
        // 2. The new table into unused slots, over the backends that take new flows.
        let serving: Vec<(&Endpoint, &u32)> = backends
            .iter()
            .filter(|(backend, _)| wanted.backends.contains(backend))
            .collect();
        let names: Vec<String> = serving.iter().map(|(b, _)| b.to_string()).collect();
        let ids: Vec<u32> = serving.iter().map(|(_, id)| **id).collect();
        let table: Vec<u32> = maglev::populate(&names, table_size)
            .into_iter()
            .map(|index| ids[index as usize])
            .collect();
        self.maps.write_slots(table_offset, &table)?;
        // 3. The switch: one map update. A new frontend first gets its id's state and its VIP in
        // the filter, so the first packet after the switch finds everything in place.
        let key = service_key(frontend);
        let epoch = match &previous {
            Some(_) => self.epochs.get(service_id as usize).copied().unwrap_or(0),
            None => {
                if !service_clean {
                    self.maps.reset_service_counters(service_id)?;
                }
                let epoch = self.next_epoch(service_id);
                self.maps.set_service_state(
                    service_id,
                    &ServiceState {
                        vip: key.vip,
                        port: key.port,
                        proto: key.proto,
                        pad: 0,
                        epoch,
                    },
                )?;
                self.vip_filter.add(&mut self.maps, frontend.vip)?;
                epoch
            }
        };
        let was_vip = previous.as_ref().map(|p| counts_as_vip(p.plan.kind));
        let is_vip = counts_as_vip(wanted.kind);
        if was_vip != Some(is_vip) {
            if is_vip {
                let ports = self.vip_ports.entry(frontend.vip).or_insert(0);
                *ports += 1;
                if *ports == 1 {
                    // A new VIP is in VIPS before its first Service port is switched on.
                    self.maps.set_vip(vip_key(frontend.vip), 1)?;
                } else {
                    self.stale_vip_counts.insert(frontend.vip);
                }
            } else if was_vip == Some(true) {
                self.release_vip_port(frontend.vip)?;
            }
        }
        // Source ranges: the new prefixes before the switch, the old ones after it.
        let old_ranges: BTreeSet<Ipv4Prefix> = previous
            .as_ref()
            .map(|p| p.plan.policy.source_ranges.iter().copied().collect())
            .unwrap_or_default();
        let new_ranges: BTreeSet<Ipv4Prefix> =
            wanted.policy.source_ranges.iter().copied().collect();
        for prefix in new_ranges.difference(&old_ranges) {
            self.maps.add_source_range(service_id, *prefix)?;
        }
        self.maps.set_service(
            &key,
            &ServiceEntry {
                service_id,
                table_offset,
                table_size,
                epoch,
                flags: service_flags(wanted),
                affinity_timeout: wanted.policy.affinity_timeout.unwrap_or(0),
            },
        )?;
        for prefix in old_ranges.difference(&new_ranges) {
            self.maps.remove_source_range(service_id, *prefix)?;
        }
        // 4. Retire what the old table used.
        if let Some(previous) = &previous {
            for (backend, id) in &previous.backends {
                if !backends.contains_key(backend) {
                    self.retire_backend(*id, backend, now)?;
                }
            }
            self.retired.push_back((
                now,
                Retired::Slots {
                    offset: previous.table_offset,
                    len: previous.table_size,
                },
            ));
        }
        self.frontends.insert(
            *frontend,
            ProgrammedFrontend {
                service_id,
                epoch,
                table_offset,
                table_size,
                backends,
                plan: wanted.clone(),
            },
        );
        Ok(())
    }
}

mod adopt;
mod pools;
pub use adopt::{AdoptError, AdoptReport, KernelState, ADOPTED};
use pools::{IdPool, SlotPool};

#[cfg(test)]
mod tests;
