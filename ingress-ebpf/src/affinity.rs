//! `sessionAffinity: ClientIP`: a client's new flows go to the backend its last new flow went to,
//! as long as that was less than the frontend's timeout ago and the backend still takes new flows.
//! Consulted before Maglev, refreshed by every new flow of the client (kube-proxy's `recent`
//! match does the same: established flows follow conntrack, not affinity).

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use ingress_common::{
    AffinityEntry, AffinityKey, BackendEntry, ServiceEntry, BACKEND_ACTIVE, BACKEND_DRAINING,
};

use crate::maps::{AFFINITY, BACKENDS};

/// Now, for affinity timestamps (the coarse clock: a tick's precision is plenty for timeouts in
/// seconds, and it is cheaper).
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: plain helper call without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The backend `client` sticks to on this frontend, if its affinity is still valid.
#[inline(always)]
pub(crate) fn sticky_backend(
    service: &ServiceEntry,
    client: u32,
    now_ns: u64,
) -> Option<(u32, BackendEntry)> {
    let key = AffinityKey {
        service_id: service.service_id,
        client,
    };
    // SAFETY: AffinityEntry is plain data.
    let entry = *unsafe { AFFINITY.get(key) }?;
    if entry.service_epoch != service.epoch || entry.expired(service.affinity_timeout, now_ns) {
        return None;
    }
    let backend = BACKENDS.get(entry.backend_id)?;
    if backend.flags & (BACKEND_ACTIVE | BACKEND_DRAINING) != BACKEND_ACTIVE
        || backend.generation != entry.backend_generation
    {
        return None;
    }
    Some((entry.backend_id, *backend))
}

/// Records (or refreshes) `client`'s backend on this frontend.
#[inline(always)]
pub(crate) fn remember(
    service: &ServiceEntry,
    client: u32,
    backend_id: u32,
    backend: &BackendEntry,
    now_ns: u64,
) {
    let key = AffinityKey {
        service_id: service.service_id,
        client,
    };
    let entry = AffinityEntry {
        backend_id,
        backend_generation: backend.generation,
        service_epoch: service.epoch,
        pad: 0,
        last_used_ns: now_ns,
    };
    // A full LRU evicts its oldest client, who then gets a Maglev pick: nothing breaks.
    let _ = AFFINITY.insert(key, entry, 0);
}
