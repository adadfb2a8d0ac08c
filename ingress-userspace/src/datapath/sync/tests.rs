//! The diff engine against an in-memory model of the maps: what it writes, and in what order.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use super::*;
use crate::{
    model::ObjectName,
    translate::l4::{Protocol, ServicePortPlan},
};

/// The maps as plain collections, plus a log of every write.
#[derive(Default)]
struct MemoryMaps {
    services: BTreeMap<(u32, u16, u8), ServiceEntry>,
    vips: BTreeMap<u32, u32>,
    backends: BTreeMap<u32, BackendEntry>,
    slots: Vec<u32>,
    states: BTreeMap<u32, ServiceState>,
    filters: BTreeMap<(Filter, u32), u64>,
    source_ranges: BTreeSet<(u32, Ipv4Prefix)>,
    writes: Vec<String>,
    vip_writes: usize,
}

impl DatapathMaps for MemoryMaps {
    fn set_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<(), DatapathError> {
        self.writes.push(format!("service {}", entry.service_id));
        self.services.insert((key.vip, key.port, key.proto), *entry);
        Ok(())
    }
    fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DatapathError> {
        self.writes.push("remove service".into());
        self.services.remove(&(key.vip, key.port, key.proto));
        Ok(())
    }
    fn set_vip(&mut self, vip: u32, ports: u32) -> Result<(), DatapathError> {
        self.vip_writes += 1;
        self.vips.insert(vip, ports);
        Ok(())
    }
    fn remove_vip(&mut self, vip: u32) -> Result<(), DatapathError> {
        self.vips.remove(&vip);
        Ok(())
    }
    fn set_service_state(&mut self, id: u32, state: &ServiceState) -> Result<(), DatapathError> {
        self.states.insert(id, *state);
        Ok(())
    }
    fn set_filter_word(
        &mut self,
        filter: Filter,
        index: u32,
        word: u64,
    ) -> Result<(), DatapathError> {
        self.filters.insert((filter, index), word);
        Ok(())
    }
    fn set_backend(&mut self, id: u32, entry: &BackendEntry) -> Result<(), DatapathError> {
        self.writes
            .push(format!("backend {id} active={}", entry.flags));
        self.backends.insert(id, *entry);
        Ok(())
    }
    fn write_slots(&mut self, offset: u32, slots: &[u32]) -> Result<(), DatapathError> {
        self.writes.push(format!("slots {offset}+{}", slots.len()));
        let end = offset as usize + slots.len();
        if self.slots.len() < end {
            self.slots.resize(end, u32::MAX);
        }
        self.slots[offset as usize..end].copy_from_slice(slots);
        Ok(())
    }
    fn reset_service_counters(&mut self, id: u32) -> Result<(), DatapathError> {
        self.writes.push(format!("reset service counters {id}"));
        Ok(())
    }
    fn reset_backend_counters(&mut self, id: u32) -> Result<(), DatapathError> {
        self.writes.push(format!("reset backend counters {id}"));
        Ok(())
    }
    fn add_source_range(
        &mut self,
        service_id: u32,
        prefix: Ipv4Prefix,
    ) -> Result<(), DatapathError> {
        self.writes
            .push(format!("source range {service_id} {prefix}"));
        self.source_ranges.insert((service_id, prefix));
        Ok(())
    }
    fn remove_source_range(
        &mut self,
        service_id: u32,
        prefix: Ipv4Prefix,
    ) -> Result<(), DatapathError> {
        self.writes
            .push(format!("source range {service_id} {prefix} removed"));
        self.source_ranges.remove(&(service_id, prefix));
        Ok(())
    }
}

fn frontend(last: u8, port: u16) -> Frontend {
    Frontend {
        vip: Ipv4Addr::new(203, 0, 113, last),
        port,
        protocol: Protocol::Tcp,
    }
}

fn plan_of(entries: &[(Frontend, &[u8])]) -> L4Plan {
    let mut plan = L4Plan::default();
    for (frontend, backends) in entries {
        plan.frontends.insert(
            *frontend,
            ServicePortPlan {
                service: ObjectName {
                    namespace: "demo".into(),
                    name: format!("svc{}", frontend.port),
                },
                port_name: String::new(),
                backends: backends
                    .iter()
                    .map(|last| Endpoint {
                        addr: Ipv4Addr::new(198, 51, 100, *last),
                        port: 8080,
                    })
                    .collect::<BTreeSet<_>>(),
                ..ServicePortPlan::default()
            },
        );
    }
    plan
}

fn capacity() -> Capacity {
    Capacity {
        services: 16,
        backends: 64,
        slots: 1 << 16,
    }
}

/// Backend addresses a frontend's table points at, read back from the maps.
fn table_backends(maps: &MemoryMaps, frontend: &Frontend) -> BTreeSet<Ipv4Addr> {
    let key = service_key(frontend);
    let entry = maps.services[&(key.vip, key.port, key.proto)];
    let slots =
        &maps.slots[entry.table_offset as usize..(entry.table_offset + entry.table_size) as usize];
    slots
        .iter()
        .map(|id| {
            let backend = maps.backends[id];
            assert_eq!(
                backend.flags, BACKEND_ACTIVE,
                "table points at a retired backend"
            );
            Ipv4Addr::from(backend.addr.to_ne_bytes())
        })
        .collect()
}

#[test]
fn programs_every_frontend_and_its_table() {
    let mut sync = DatapathSync::new(MemoryMaps::default(), capacity());
    let plan = plan_of(&[
        (frontend(10, 80), &[11, 12, 13]),
        (frontend(10, 443), &[11]),
    ]);
    let report = sync.apply(&plan, Instant::now());
    assert_eq!((report.added, report.errors.len()), (2, 0));
    let maps = sync.maps();
    assert_eq!(maps.vips.values().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(table_backends(maps, &frontend(10, 80)).len(), 3);
    assert_eq!(table_backends(maps, &frontend(10, 443)).len(), 1);
}

#[test]
fn unchanged_plan_writes_nothing() {
    let mut sync = DatapathSync::new(MemoryMaps::default(), capacity());
    let plan = plan_of(&[(frontend(10, 80), &[11, 12, 13])]);
    sync.apply(&plan, Instant::now());
    let before = sync.maps().writes.len();
    let report = sync.apply(&plan, Instant::now());
    assert_eq!(report.unchanged, 1);
    assert_eq!(sync.maps().writes.len(), before);
}

#[test]
fn a_change_writes_table_before_switch_and_retires_after() {
    let mut sync = DatapathSync::new(MemoryMaps::default(), capacity());
    let now = Instant::now();
    sync.apply(
        &plan_of(&[(frontend(10, 80), &[11, 12, 13]), (frontend(11, 80), &[21])]),
        now,
    );
    let start = sync.maps().writes.len();
    let report = sync.apply(
        &plan_of(&[(frontend(10, 80), &[11, 12]), (frontend(11, 80), &[21])]),
        now,
    );
    assert_eq!((report.changed, report.unchanged), (1, 1));
    let writes = &sync.maps().writes[start..];
    // New slots first, then the one switching update, then the departed backend is retired.
    assert!(writes[0].starts_with("slots"), "{writes:?}");
    assert!(writes[1].starts_with("service"), "{writes:?}");
    assert!(writes[2].ends_with("active=0"), "{writes:?}");
    assert_eq!(
        writes.len(),
        3,
        "only the difference is written: {writes:?}"
    );
    let remaining = table_backends(sync.maps(), &frontend(10, 80));
    assert_eq!(remaining.len(), 2);
    assert!(!remaining.contains(&Ipv4Addr::new(198, 51, 100, 13)));
}

#[test]
fn removed_frontend_is_unpublished_and_vip_forgotten() {
    let mut sync = DatapathSync::new(MemoryMaps::default(), capacity());
    let now = Instant::now();
    sync.apply(&plan_of(&[(frontend(10, 80), &[11])]), now);
    let report = sync.apply(&L4Plan::default(), now);
    assert_eq!(report.removed, 1);
    assert!(sync.maps().services.is_empty());
    assert!(sync.maps().vips.is_empty());
    assert!(sync.maps().backends.values().all(|b| b.flags == 0));
}

#[test]
fn retired_ids_wait_for_the_grace_period_and_come_back_with_a_new_generation() {
    let mut sync = DatapathSync::new(
        MemoryMaps::default(),
        Capacity {
            services: 1,
            backends: 1,
            slots: 2 * 101,
        },
    );
    let start = Instant::now();
    sync.apply(&plan_of(&[(frontend(10, 80), &[11])]), start);
    let first_generation = sync.maps().backends[&0].generation;
    // Replacing the only backend needs a second id, and there is none until the grace period ends.
    let report = sync.apply(&plan_of(&[(frontend(10, 80), &[12])]), start);
    assert_eq!(report.errors.len(), 1, "{report:?}");
    assert_eq!(
        table_backends(sync.maps(), &frontend(10, 80)).len(),
        1,
        "old state kept"
    );
    // Remove, wait out the grace period, then the id is reused with a new generation.
    sync.apply(&L4Plan::default(), start);
    let later = start + GRACE_PERIOD + Duration::from_millis(1);
    let report = sync.apply(&plan_of(&[(frontend(10, 80), &[12])]), later);
    assert_eq!(report.added, 1, "{report:?}");
    let entry = sync.maps().backends[&0];
    assert_eq!(entry.flags, BACKEND_ACTIVE);
    assert_ne!(entry.generation, first_generation);
}

#[test]
fn counters_are_reset_only_for_ids_used_before() {
    let resets = |maps: &MemoryMaps| -> Vec<String> {
        maps.writes
            .iter()
            .filter(|w| w.starts_with("reset"))
            .cloned()
            .collect()
    };
    let mut sync = DatapathSync::new(MemoryMaps::default(), capacity());
    let start = Instant::now();
    // Maps created empty: the first ids' counters are zero already.
    sync.apply(&plan_of(&[(frontend(10, 80), &[11, 12])]), start);
    assert_eq!(resets(sync.maps()), Vec::<String>::new());
    // Removed, and after the grace period its ids come back: their counters are the old
    // frontend's, so they are reset.
    sync.apply(&L4Plan::default(), start);
    let later = start + GRACE_PERIOD + Duration::from_millis(1);
    sync.apply(&L4Plan::default(), later);
    sync.apply(&plan_of(&[(frontend(10, 81), &[13])]), later);
    let reused = resets(sync.maps());
    assert!(
        reused.contains(&"reset service counters 0".to_string())
            && reused
                .iter()
                .any(|w| w.starts_with("reset backend counters")),
        "{reused:?}"
    );
}

#[test]
fn a_vip_count_is_written_when_it_appears_and_once_at_the_end_of_the_pass() {
    let mut sync = DatapathSync::new(MemoryMaps::default(), capacity());
    let now = Instant::now();
    let vip = vip_key(frontend(10, 80).vip);
    let ports = [80, 81, 82, 83];
    let entries: Vec<(Frontend, &[u8])> = ports
        .iter()
        .map(|port| (frontend(10, *port), &[11u8][..]))
        .collect();
    sync.apply(&plan_of(&entries), now);
    assert_eq!(sync.maps().vips.get(&vip), Some(&4));
    assert_eq!(
        sync.maps().vip_writes,
        2,
        "on appearing, then the final count"
    );
    sync.apply(&plan_of(&entries[..1]), now);
    assert_eq!(sync.maps().vips.get(&vip), Some(&1));
    assert_eq!(sync.maps().vip_writes, 3);
    sync.apply(&L4Plan::default(), now);
    assert_eq!(sync.maps().vips.get(&vip), None);
}

#[test]
fn exhausted_slots_keep_the_previous_state() {
    let mut sync = DatapathSync::new(
        MemoryMaps::default(),
        Capacity {
            services: 4,
            backends: 64,
            slots: 400,
        },
    );
    let now = Instant::now();
    sync.apply(&plan_of(&[(frontend(10, 80), &[11, 12])]), now);
    // 5 backends need a 503-slot table: more than there is.
    let report = sync.apply(&plan_of(&[(frontend(10, 80), &[11, 12, 13, 14, 15])]), now);
    assert_eq!(report.errors.len(), 1);
    assert_eq!(table_backends(sync.maps(), &frontend(10, 80)).len(), 2);
}

/// Whether `addr` passes a filter as the kernel tests it.
fn passes(maps: &MemoryMaps, filter: Filter, addr: Ipv4Addr) -> bool {
    let (index, bit) = ingress_common::filter_slot(u32::from_ne_bytes(addr.octets()));
    maps.filters
        .get(&(filter, index))
        .is_some_and(|w| w & bit != 0)
}

#[test]
fn filters_and_service_states_follow_the_plan() {
    let mut sync = DatapathSync::new(MemoryMaps::default(), capacity());
    let now = Instant::now();
    let web = frontend(10, 80);
    let tls = frontend(10, 443);
    sync.apply(&plan_of(&[(web, &[11, 12]), (tls, &[12])]), now);
    let web_id = sync.frontends()[&web].service_id;
    let maps = sync.maps();
    assert!(passes(maps, Filter::Vips, Ipv4Addr::new(203, 0, 113, 10)));
    assert!(passes(
        maps,
        Filter::Backends,
        Ipv4Addr::new(198, 51, 100, 11)
    ));
    let key = service_key(&web);
    let entry = maps.services[&(key.vip, key.port, key.proto)];
    let state = maps.states[&web_id];
    assert_eq!(
        (state.vip, state.port, state.epoch),
        (key.vip, key.port, entry.epoch)
    );
    // One port of the VIP goes: the VIP stays in the filter; backend .11 leaves it, .12 stays.
    sync.apply(&plan_of(&[(tls, &[12])]), now);
    let maps = sync.maps();
    assert!(passes(maps, Filter::Vips, Ipv4Addr::new(203, 0, 113, 10)));
    assert!(!passes(
        maps,
        Filter::Backends,
        Ipv4Addr::new(198, 51, 100, 11)
    ));
    assert!(passes(
        maps,
        Filter::Backends,
        Ipv4Addr::new(198, 51, 100, 12)
    ));
    // The removed frontend's id lost its state: flows made for it no longer match.
    assert_eq!(maps.states[&web_id].vip, 0);
    assert_ne!(maps.states[&web_id].epoch, entry.epoch);
    sync.apply(&L4Plan::default(), now);
    let maps = sync.maps();
    assert!(!passes(maps, Filter::Vips, Ipv4Addr::new(203, 0, 113, 10)));
    assert!(maps.filters.values().all(|w| *w == 0));
}

#[test]
fn slot_pool_coalesces() {
    let mut pool = SlotPool::new(100);
    let a = pool.allocate(30).unwrap();
    let b = pool.allocate(30).unwrap();
    let c = pool.allocate(40).unwrap();
    assert!(pool.allocate(1).is_none());
    pool.release(a, 30);
    pool.release(c, 40);
    pool.release(b, 30);
    assert_eq!(pool.allocate(100), Some(0));
}

impl MemoryMaps {
    /// What `KernelMaps::read_state` would read from these maps.
    fn state(&self) -> KernelState {
        let services = self
            .services
            .iter()
            .map(|(&(vip, port, proto), entry)| {
                let start = entry.table_offset as usize;
                let table = self.slots[start..start + entry.table_size as usize].to_vec();
                (
                    ServiceKey {
                        vip,
                        port,
                        proto,
                        pad: 0,
                    },
                    *entry,
                    table,
                )
            })
            .collect();
        let epochs_len = self.states.keys().max().map_or(0, |max| max + 1);
        let backends_len = self.backends.keys().max().map_or(0, |max| max + 1);
        KernelState {
            services,
            vips: self.vips.iter().map(|(k, v)| (*k, *v)).collect(),
            epochs: (0..epochs_len)
                .map(|id| self.states.get(&id).map_or(0, |s| s.epoch))
                .collect(),
            backends: (0..backends_len)
                .map(|id| {
                    self.backends.get(&id).copied().unwrap_or(BackendEntry {
                        addr: 0,
                        port: 0,
                        pad: 0,
                        flags: 0,
                        generation: 0,
                        service_id: 0,
                    })
                })
                .collect(),
            source_ranges: self.source_ranges.iter().copied().collect(),
        }
    }

    /// A copy of the maps' contents, without the write log (a restarted agent's view).
    fn reopen(&self) -> Self {
        Self {
            services: self.services.clone(),
            vips: self.vips.clone(),
            backends: self.backends.clone(),
            slots: self.slots.clone(),
            states: self.states.clone(),
            filters: self.filters.clone(),
            source_ranges: self.source_ranges.clone(),
            writes: Vec::new(),
            vip_writes: 0,
        }
    }
}

#[test]
fn adopted_state_keeps_every_id_and_table_and_the_same_plan_writes_nothing() {
    let now = Instant::now();
    let plan = plan_of(&[
        (frontend(10, 80), &[11, 12, 13]),
        (frontend(10, 443), &[11]),
        (frontend(20, 53), &[14, 15]),
    ]);
    let mut first = DatapathSync::new(MemoryMaps::default(), capacity());
    first.apply(&plan, now);
    let kernel = first.maps().reopen();
    let state = kernel.state();

    let (mut second, report) =
        DatapathSync::adopt(kernel, capacity(), &state, now).expect("consistent state");
    assert_eq!(
        report,
        AdoptReport {
            frontends: 3,
            backends: 6,
            orphans: 0,
            vips_fixed: 0,
        }
    );
    for (frontend, programmed) in first.frontends() {
        let adopted = &second.frontends()[frontend];
        assert_eq!(adopted.service_id, programmed.service_id, "{frontend}");
        assert_eq!(adopted.backends, programmed.backends, "{frontend}");
        assert_eq!(
            (adopted.table_offset, adopted.table_size, adopted.epoch),
            (
                programmed.table_offset,
                programmed.table_size,
                programmed.epoch
            )
        );
    }
    // Adoption rewrote the filter words only (every word), to exactly what they were.
    let set = |maps: &MemoryMaps| -> Vec<((Filter, u32), u64)> {
        maps.filters
            .iter()
            .filter(|(_, word)| **word != 0)
            .map(|(k, v)| (*k, *v))
            .collect()
    };
    assert!(
        set(second.maps()) == set(first.maps()),
        "filter words differ"
    );
    assert!(
        second.maps().writes.is_empty(),
        "{:?}",
        second.maps().writes
    );

    // The same objects after the restart: nothing to write, and the names come back.
    let report = second.apply(&plan, now);
    assert_eq!((report.unchanged, report.errors.len()), (3, 0));
    assert!(
        second.maps().writes.is_empty(),
        "{:?}",
        second.maps().writes
    );
    assert_eq!(
        second.frontends()[&frontend(10, 80)].plan.service.name,
        "svc80"
    );

    // New ids do not collide with adopted ones; a reused id gets a new generation.
    let grown = plan_of(&[
        (frontend(10, 80), &[11, 12, 13, 16]),
        (frontend(10, 443), &[11]),
        (frontend(20, 53), &[14, 15]),
        (frontend(30, 80), &[17]),
    ]);
    let report = second.apply(&grown, now);
    assert_eq!(
        (report.added, report.changed, report.errors.len()),
        (1, 1, 0)
    );
    let ids: Vec<u32> = second
        .frontends()
        .values()
        .flat_map(|p| p.backends.values().copied())
        .collect();
    let unique: BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(
        ids.len(),
        unique.len(),
        "a backend id was handed out twice: {ids:?}"
    );
    let service_ids: BTreeSet<u32> = second.frontends().values().map(|p| p.service_id).collect();
    assert_eq!(service_ids.len(), 4);
    assert_eq!(table_backends(second.maps(), &frontend(10, 80)).len(), 4);
}

#[test]
fn adoption_retires_orphans_and_fixes_vip_counts() {
    let now = Instant::now();
    let plan = plan_of(&[(frontend(10, 80), &[11, 12])]);
    let mut first = DatapathSync::new(MemoryMaps::default(), capacity());
    first.apply(&plan, now);
    let mut kernel = first.maps().reopen();
    // A crash between publishing a backend and switching the table, and a stale VIPS count.
    kernel.backends.insert(
        40,
        BackendEntry {
            addr: u32::from_ne_bytes([198, 51, 100, 99]),
            port: 8080u16.to_be(),
            pad: 0,
            flags: BACKEND_ACTIVE,
            generation: 3,
            service_id: 0,
        },
    );
    kernel.vips.insert(u32::from_ne_bytes([203, 0, 113, 77]), 1);
    let state = kernel.state();
    let (mut second, report) = DatapathSync::adopt(kernel, capacity(), &state, now).expect("ok");
    assert_eq!((report.orphans, report.vips_fixed), (1, 1));
    assert_eq!(
        second.maps().backends[&40].flags,
        0,
        "orphan still published"
    );
    assert!(!second
        .maps()
        .vips
        .contains_key(&u32::from_ne_bytes([203, 0, 113, 77])));
    // The orphan's id comes back after the grace period with a newer generation.
    second.apply(&L4Plan::default(), now + GRACE_PERIOD * 2);
    let many: Vec<u8> = (100..160).collect();
    let report = second.apply(
        &plan_of(&[(frontend(10, 80), &many)]),
        now + GRACE_PERIOD * 3,
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(second.maps().backends[&40].generation > 3);
    // Every id handed out once: the orphan's id is reused, never doubled.
    let ids: Vec<u32> = second.frontends()[&frontend(10, 80)]
        .backends
        .values()
        .copied()
        .collect();
    let unique: BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "a backend id was handed out twice");
    assert!(unique.contains(&40));
    assert_eq!(table_backends(second.maps(), &frontend(10, 80)).len(), 60);
}

#[test]
fn inconsistent_state_is_refused() {
    let now = Instant::now();
    let plan = plan_of(&[(frontend(10, 80), &[11, 12]), (frontend(10, 81), &[13])]);
    let mut first = DatapathSync::new(MemoryMaps::default(), capacity());
    first.apply(&plan, now);
    let kernel = first.maps().reopen();

    // Two tables over the same slots.
    let mut state = kernel.state();
    let offset = state.services[0].1.table_offset;
    state.services[1].1.table_offset = offset;
    let error = DatapathSync::adopt(kernel.reopen(), capacity(), &state, now)
        .err()
        .expect("overlap refused");
    assert!(error.to_string().contains("overlap"), "{error}");

    // A table naming a backend that is not published.
    let mut state = kernel.state();
    state.services[0].2[0] = 63;
    let error = DatapathSync::adopt(kernel.reopen(), capacity(), &state, now)
        .err()
        .expect("unpublished backend refused");
    assert!(error.to_string().contains("unpublished"), "{error}");

    // A service id beyond the capacity.
    let mut state = kernel.state();
    state.services[0].1.service_id = 99;
    assert!(DatapathSync::adopt(kernel.reopen(), capacity(), &state, now).is_err());
}

#[test]
fn an_adopted_vip_leaves_the_filter_with_its_last_port() {
    let now = Instant::now();
    let plan = plan_of(&[
        (frontend(10, 80), &[11]),
        (frontend(10, 443), &[12]),
        (frontend(20, 80), &[13]),
    ]);
    let mut first = DatapathSync::new(MemoryMaps::default(), capacity());
    first.apply(&plan, now);
    let kernel = first.maps().reopen();
    let state = kernel.state();
    let (mut second, _) = DatapathSync::adopt(kernel, capacity(), &state, now).expect("ok");
    let vip = Ipv4Addr::new(203, 0, 113, 10);
    second.apply(
        &plan_of(&[(frontend(10, 443), &[12]), (frontend(20, 80), &[13])]),
        now,
    );
    assert!(passes(second.maps(), Filter::Vips, vip), "one port left");
    second.apply(&plan_of(&[(frontend(20, 80), &[13])]), now);
    assert!(!passes(second.maps(), Filter::Vips, vip), "no port left");
    assert!(!second
        .maps()
        .vips
        .contains_key(&u32::from_ne_bytes(vip.octets())));
}

fn endpoint(last: u8) -> Endpoint {
    Endpoint {
        addr: Ipv4Addr::new(198, 51, 100, last),
        port: 8080,
    }
}

#[test]
fn a_terminating_endpoint_keeps_its_id_and_generation_and_leaves_the_table() {
    let now = Instant::now();
    let web = frontend(10, 80);
    let mut plan = plan_of(&[(web, &[11, 12])]);
    let mut sync = DatapathSync::new(MemoryMaps::default(), capacity());
    sync.apply(&plan, now);
    let before = sync.frontends()[&web].clone();
    let id_12 = before.backends[&endpoint(12)];
    let generation = sync.maps().backends[&id_12].generation;

    let entry = plan.frontends.get_mut(&web).expect("planned");
    entry.backends.remove(&endpoint(12));
    entry.draining.insert(endpoint(12));
    let report = sync.apply(&plan, now);
    assert_eq!(report.changed, 1);
    let after = &sync.frontends()[&web];
    assert_eq!(after.backends[&endpoint(12)], id_12, "same id");
    let published = sync.maps().backends[&id_12];
    assert_eq!(published.flags, BACKEND_ACTIVE | BACKEND_DRAINING);
    assert_eq!(published.generation, generation, "its flows stay valid");
    assert_eq!(published.service_id, after.service_id);
    let start = after.table_offset as usize;
    let table = &sync.maps().slots[start..start + after.table_size as usize];
    assert!(table.iter().all(|id| *id == after.backends[&endpoint(11)]));

    // Gone from the slice: retired.
    plan.frontends
        .get_mut(&web)
        .expect("planned")
        .draining
        .clear();
    sync.apply(&plan, now);
    assert_eq!(sync.maps().backends[&id_12].flags, 0);
}

#[test]
fn source_ranges_are_written_before_the_switch_and_removed_after_it() {
    let now = Instant::now();
    let web = frontend(10, 80);
    let prefix = |a: u8, len: u8| Ipv4Prefix {
        addr: Ipv4Addr::new(192, 0, 2, a),
        len,
    };
    let mut plan = plan_of(&[(web, &[11])]);
    plan.frontends
        .get_mut(&web)
        .expect("planned")
        .policy
        .source_ranges = vec![prefix(0, 25)];
    let mut sync = DatapathSync::new(MemoryMaps::default(), capacity());
    sync.apply(&plan, now);
    let id = sync.frontends()[&web].service_id;
    let entry = sync
        .maps()
        .services
        .values()
        .next()
        .copied()
        .expect("entry");
    assert_eq!(entry.flags, SERVICE_SOURCE_RANGES);
    assert!(sync.maps().source_ranges.contains(&(id, prefix(0, 25))));

    sync.maps.writes.clear();
    plan.frontends
        .get_mut(&web)
        .expect("planned")
        .policy
        .source_ranges = vec![prefix(128, 25)];
    sync.apply(&plan, now);
    let writes = &sync.maps().writes;
    let added = writes
        .iter()
        .position(|w| *w == format!("source range {id} 192.0.2.128/25"))
        .expect("added");
    let switched = writes
        .iter()
        .position(|w| *w == format!("service {id}"))
        .expect("switched");
    let removed = writes
        .iter()
        .position(|w| *w == format!("source range {id} 192.0.2.0/25 removed"))
        .expect("removed");
    assert!(added < switched && switched < removed, "{writes:?}");

    // No ranges: everyone, and the trie holds nothing of this frontend.
    plan.frontends
        .get_mut(&web)
        .expect("planned")
        .policy
        .source_ranges
        .clear();
    sync.apply(&plan, now);
    let entry = sync
        .maps()
        .services
        .values()
        .next()
        .copied()
        .expect("entry");
    assert_eq!(entry.flags, 0);
    assert!(sync.maps().source_ranges.is_empty());
    sync.apply(&L4Plan::default(), now);
    assert!(sync.maps().source_ranges.is_empty());
}

#[test]
fn node_ports_are_not_vips_and_policies_reach_the_service_entry() {
    let now = Instant::now();
    let node_port = frontend(66, 30080);
    let lb = frontend(10, 80);
    let mut plan = plan_of(&[(node_port, &[11]), (lb, &[])]);
    {
        let entry = plan.frontends.get_mut(&node_port).expect("planned");
        entry.kind = FrontendKind::NodePort;
        entry.policy.affinity_timeout = Some(10_800);
        // Not in the maps: an adopted plan cannot know it, and it must not make a rewrite.
        entry.policy.local_only = true;
    }
    plan.frontends
        .get_mut(&lb)
        .expect("planned")
        .endpoints_elsewhere = true;
    let mut sync = DatapathSync::new(MemoryMaps::default(), capacity());
    sync.apply(&plan, now);
    let maps = sync.maps();
    assert!(!maps.vips.contains_key(&vip_key(node_port.vip)));
    assert!(maps.vips.contains_key(&vip_key(lb.vip)));
    assert!(passes(maps, Filter::Vips, node_port.vip), "looked up");
    let entry_of = |f: &Frontend| maps.services[&(vip_key(f.vip), f.port.to_be(), 6)];
    assert_eq!(entry_of(&node_port).affinity_timeout, 10_800);
    assert_eq!(entry_of(&lb).flags, SERVICE_DROP_EMPTY);
    assert_eq!(entry_of(&lb).table_size, 0);

    // A restart adopts all of it (an empty frontend too) and the same plan writes nothing.
    let kernel = sync.maps().reopen();
    let state = kernel.state();
    let (mut adopted, report) =
        DatapathSync::adopt(kernel, capacity(), &state, now).expect("consistent state");
    assert_eq!(report.frontends, 2);
    adopted.maps.writes.clear();
    let report = adopted.apply(&plan, now);
    assert_eq!(report.unchanged, 2, "{report:?}");
    assert!(
        adopted.maps().writes.is_empty(),
        "{:?}",
        adopted.maps().writes
    );
}

#[test]
fn adoption_keeps_draining_endpoints_and_source_ranges() {
    let now = Instant::now();
    let web = frontend(10, 80);
    let mut plan = plan_of(&[(web, &[11])]);
    {
        let entry = plan.frontends.get_mut(&web).expect("planned");
        entry.draining.insert(endpoint(12));
        entry.policy.source_ranges = vec![Ipv4Prefix {
            addr: Ipv4Addr::new(192, 0, 2, 0),
            len: 24,
        }];
    }
    let mut sync = DatapathSync::new(MemoryMaps::default(), capacity());
    sync.apply(&plan, now);
    let kernel = sync.maps().reopen();
    let state = kernel.state();
    let (mut adopted, report) =
        DatapathSync::adopt(kernel, capacity(), &state, now).expect("consistent state");
    assert_eq!((report.backends, report.orphans), (2, 0));
    assert_eq!(
        adopted.frontends()[&web].backends,
        sync.frontends()[&web].backends
    );
    adopted.maps.writes.clear();
    assert_eq!(adopted.apply(&plan, now).unchanged, 1);
    assert!(
        adopted.maps().writes.is_empty(),
        "{:?}",
        adopted.maps().writes
    );
}
