//! Adopting pinned maps: a restarted agent rebuilds its mirror ([`DatapathSync`]) from what the
//! kernel holds instead of starting empty, so every frontend keeps its service id, its backend ids
//! and its Maglev table. Tracked flows name backend ids and generations; keeping them is what
//! keeps established connections on their backends across a restart or an upgrade.
//!
//! The state is checked before anything is trusted: ids and slot ranges within capacity, no slot
//! range or backend id claimed twice, every backend in a table published. Anything else is an
//! [`AdoptError`], and the caller starts from empty maps instead (flows then re-balance; nothing is
//! mis-forwarded).

use std::{collections::BTreeMap, net::Ipv4Addr, time::Instant};

use ingress_common::{
    proto, BackendEntry, ServiceEntry, ServiceKey, BACKEND_ACTIVE, BACKEND_DRAINING, BACKEND_SNAT,
    FILTER_WORDS, SERVICE_DROP_EMPTY,
};

use super::{
    counts_as_vip, vip_key, AddressFilter, Capacity, DatapathError, DatapathMaps, DatapathSync,
    Filter, IdPool, ProgrammedFrontend, Retired,
};
use crate::{
    model::ObjectName,
    translate::l4::{
        Endpoint, Frontend, FrontendKind, FrontendPolicy, Ipv4Prefix, Protocol, ServicePortPlan,
    },
};

/// What pinned maps hold, read back at start (`KernelMaps::read_state`).
#[derive(Debug, Default, Clone)]
pub struct KernelState {
    /// SERVICES entries, each with its Maglev table (the slots it points at).
    pub services: Vec<(ServiceKey, ServiceEntry, Vec<u32>)>,
    /// VIPS: address (network order as stored) → Service ports on it.
    pub vips: Vec<(u32, u32)>,
    /// SERVICE_STATES epochs, indexed by service id.
    pub epochs: Vec<u32>,
    /// BACKENDS, indexed by backend id.
    pub backends: Vec<BackendEntry>,
    /// SOURCE_RANGES: service id and prefix.
    pub source_ranges: Vec<(u32, Ipv4Prefix)>,
}

/// Pinned state that cannot be adopted.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// The maps contradict themselves or the capacity.
    #[error("pinned state is inconsistent: {0}")]
    Inconsistent(String),
    /// Writing the corrections failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// What an adoption found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AdoptReport {
    /// Frontends taken over.
    pub frontends: usize,
    /// Backend ids taken over.
    pub backends: usize,
    /// Published backend ids no table used (a sync interrupted by a crash); retired.
    pub orphans: usize,
    /// VIPS entries corrected.
    pub vips_fixed: usize,
}

/// The name given to an adopted frontend until the first sync matches it to its Service.
pub const ADOPTED: &str = "(adopted)";

fn frontend_of(key: &ServiceKey) -> Result<Frontend, AdoptError> {
    let protocol = match key.proto {
        proto::TCP => Protocol::Tcp,
        proto::UDP => Protocol::Udp,
        other => {
            return Err(AdoptError::Inconsistent(format!(
                "SERVICES key with protocol {other}"
            )))
        }
    };
    Ok(Frontend {
        vip: Ipv4Addr::from(key.vip.to_ne_bytes()),
        port: u16::from_be(key.port),
        protocol,
    })
}

impl IdPool {
    /// A pool whose `used` ids are taken; ids below the highest used one are free.
    fn with_used(capacity: u32, used: impl Iterator<Item = u32>) -> Self {
        let used: std::collections::BTreeSet<u32> = used.collect();
        let next = used.last().map_or(0, |last| last + 1);
        // Reversed so `pop` hands out the lowest free id first, as a fresh pool would.
        let free = (0..next).rev().filter(|id| !used.contains(id)).collect();
        Self {
            next,
            free,
            capacity,
            // Ids above the highest used one may hold counters of frontends removed before
            // the restart.
            clean_from: u32::MAX,
        }
    }
}

impl<M: DatapathMaps> DatapathSync<M> {
    /// A sync that takes over the state in `maps` (described by `state`, read from them).
    /// Corrects what a crash mid-sync can leave behind (orphan backends, VIPS counts, filter
    /// words) and changes nothing a packet of an adopted frontend depends on.
    pub fn adopt(
        maps: M,
        capacity: Capacity,
        state: &KernelState,
        now: Instant,
    ) -> Result<(Self, AdoptReport), AdoptError> {
        let mut sync = Self::new(maps, capacity);
        let mut report = AdoptReport::default();
        let kernel_vips: BTreeMap<u32, u32> = state.vips.iter().copied().collect();
        let mut owner: BTreeMap<u32, Frontend> = BTreeMap::new();
        let mut service_ids = BTreeMap::new();
        for (key, entry, table) in &state.services {
            let frontend = frontend_of(key)?;
            let inconsistent = |why: String| AdoptError::Inconsistent(format!("{frontend}: {why}"));
            if entry.service_id >= capacity.services {
                return Err(inconsistent(format!("service id {}", entry.service_id)));
            }
            if let Some(other) = service_ids.insert(entry.service_id, frontend) {
                return Err(inconsistent(format!(
                    "service id {} also used by {other}",
                    entry.service_id
                )));
            }
            if table.len() != entry.table_size as usize {
                return Err(inconsistent(format!(
                    "Maglev table of {} slots, {} readable",
                    entry.table_size,
                    table.len()
                )));
            }
            if entry.table_size != 0 && !sync.slots.take(entry.table_offset, entry.table_size) {
                return Err(inconsistent(format!(
                    "Maglev slots {}+{} overlap another table or exceed {}",
                    entry.table_offset, entry.table_size, capacity.slots
                )));
            }
            let mut backends = BTreeMap::new();
            // Draining backends are in no table; they name their frontend's service id.
            let draining_ids = state.backends.iter().enumerate().filter_map(|(id, b)| {
                (b.flags & (BACKEND_ACTIVE | BACKEND_DRAINING) == BACKEND_ACTIVE | BACKEND_DRAINING
                    && b.service_id == entry.service_id)
                    .then_some(id as u32)
            });
            let mut draining = std::collections::BTreeSet::new();
            let mut remote = std::collections::BTreeSet::new();
            let table_ids: Vec<(u32, bool)> = table
                .iter()
                .map(|&id| (id, false))
                .chain(draining_ids.map(|id| (id, true)))
                .collect();
            for (id, is_draining) in table_ids {
                let published = state
                    .backends
                    .get(id as usize)
                    .filter(|b| b.flags & BACKEND_ACTIVE != 0);
                let Some(published) = published else {
                    return Err(inconsistent(format!(
                        "table names unpublished backend {id}"
                    )));
                };
                if let Some(other) = owner.insert(id, frontend) {
                    if other != frontend {
                        return Err(inconsistent(format!("backend {id} also used by {other}")));
                    }
                }
                let backend = Endpoint {
                    addr: Ipv4Addr::from(published.addr.to_ne_bytes()),
                    port: u16::from_be(published.port),
                };
                if is_draining {
                    draining.insert(backend);
                }
                if published.flags & BACKEND_SNAT != 0 {
                    remote.insert(backend);
                }
                if let Some(other) = backends.insert(backend, id) {
                    if other != id {
                        return Err(inconsistent(format!(
                            "backend {backend} has ids {other} and {id}"
                        )));
                    }
                }
            }
            let epoch = state
                .epochs
                .get(entry.service_id as usize)
                .copied()
                .unwrap_or(0);
            if epoch != entry.epoch {
                return Err(inconsistent(format!(
                    "epoch {} but SERVICE_STATES says {epoch}",
                    entry.epoch
                )));
            }
            // The kind is not in the kernel; only whether the address is a VIP matters to the
            // maps, and VIPS says that.
            let kind = if kernel_vips.contains_key(&key.vip) {
                FrontendKind::LoadBalancer
            } else {
                FrontendKind::NodePort
            };
            let plan = ServicePortPlan {
                service: ObjectName {
                    namespace: String::new(),
                    name: ADOPTED.into(),
                },
                port_name: String::new(),
                kind,
                policy: FrontendPolicy {
                    local_only: false,
                    affinity_timeout: (entry.affinity_timeout != 0)
                        .then_some(entry.affinity_timeout),
                    source_ranges: state
                        .source_ranges
                        .iter()
                        .filter(|(id, _)| *id == entry.service_id)
                        .map(|(_, prefix)| *prefix)
                        .collect::<std::collections::BTreeSet<Ipv4Prefix>>()
                        .into_iter()
                        .collect(),
                },
                backends: backends
                    .keys()
                    .filter(|b| !draining.contains(*b))
                    .copied()
                    .collect(),
                draining,
                remote,
                endpoints_elsewhere: entry.flags & SERVICE_DROP_EMPTY != 0,
            };
            report.frontends += 1;
            report.backends += backends.len();
            sync.frontends.insert(
                frontend,
                ProgrammedFrontend {
                    service_id: entry.service_id,
                    epoch: entry.epoch,
                    table_offset: entry.table_offset,
                    table_size: entry.table_size,
                    backends,
                    plan,
                },
            );
        }
        if state.backends.len() > capacity.backends as usize
            && state.backends[capacity.backends as usize..]
                .iter()
                .any(|b| b.flags & BACKEND_ACTIVE != 0)
        {
            return Err(AdoptError::Inconsistent(
                "published backends beyond the backend capacity".into(),
            ));
        }

        // Generations and epochs carry on, so reused ids never match a stale flow.
        sync.generations = state.backends.iter().map(|b| b.generation).collect();
        sync.epochs = state.epochs.clone();
        sync.service_ids = IdPool::with_used(capacity.services, service_ids.keys().copied());
        // Published backends no table names (a crash mid-sync): taken like used ids, then
        // retired like any departed backend, so they come back only after the grace period.
        let orphans: Vec<(u32, BackendEntry)> = state
            .backends
            .iter()
            .enumerate()
            .map(|(id, entry)| (id as u32, *entry))
            .filter(|(id, entry)| entry.flags & BACKEND_ACTIVE != 0 && !owner.contains_key(id))
            .collect();
        sync.backend_ids = IdPool::with_used(
            capacity.backends,
            owner
                .keys()
                .copied()
                .chain(orphans.iter().map(|(id, _)| *id)),
        );
        for (id, entry) in orphans {
            sync.maps
                .set_backend(id, &BackendEntry { flags: 0, ..entry })?;
            sync.retired.push_back((now, Retired::BackendId(id)));
            report.orphans += 1;
        }

        // VIPS counts and both filters, recomputed from the adopted frontends and rewritten
        // whole: a stale bit would only cost a hash lookup, a missing one would drop traffic.
        for (frontend, programmed) in &sync.frontends {
            if counts_as_vip(programmed.plan.kind) {
                *sync.vip_ports.entry(frontend.vip).or_insert(0) += 1;
            }
        }
        for (vip, ports) in &sync.vip_ports {
            let key = vip_key(*vip);
            if kernel_vips.get(&key) != Some(ports) {
                sync.maps.set_vip(key, *ports)?;
                report.vips_fixed += 1;
            }
        }
        for key in kernel_vips.keys() {
            if !sync
                .vip_ports
                .contains_key(&Ipv4Addr::from(key.to_ne_bytes()))
            {
                sync.maps.remove_vip(*key)?;
                report.vips_fixed += 1;
            }
        }
        // Holders as the sync counts them: one per frontend, one per (frontend, backend).
        let mut vip_filter = AddressFilter::new(Filter::Vips);
        let mut backend_filter = AddressFilter::new(Filter::Backends);
        for frontend in sync.frontends.keys() {
            vip_filter.mark(frontend.vip);
        }
        for programmed in sync.frontends.values() {
            for backend in programmed.backends.keys() {
                backend_filter.mark(backend.addr);
            }
        }
        for filter in [&vip_filter, &backend_filter] {
            for index in 0..FILTER_WORDS {
                sync.maps
                    .set_filter_word(filter.which, index, filter.words[index as usize])?;
            }
        }
        sync.vip_filter = vip_filter;
        sync.backend_filter = backend_filter;
        Ok((sync, report))
    }
}
