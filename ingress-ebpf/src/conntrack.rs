//! Connection tracking: a flow keeps its backend for as long as the backend stays (`FLOWS`,
//! client → VIP), and its replies find their way back to the VIP (`REVERSE_FLOWS`). In front of
//! `FLOWS` sits each CPU's flow cache (`FLOW_CACHE`), so an established flow's packet usually
//! needs no hash lookup at all.

use ingress_common::{
    flow_cache_slot, BackendEntry, FlowCacheEntry, FlowEntry, FlowKey, ReverseEntry,
    BACKEND_ACTIVE, FLOW_CACHE_TOUCH_JIFFIES,
};

use crate::maps::{BACKENDS, FLOWS, FLOW_CACHE, REVERSE_FLOWS, SERVICE_STATES};

/// The tracked flow and its backend, if its service id still belongs to this frontend (same
/// epoch) and the backend is still the same live one.
#[inline(always)]
pub(crate) fn established(flow_key: &FlowKey, now: u64) -> Option<(FlowEntry, BackendEntry)> {
    let flow = tracked_flow(flow_key, now)?;
    let state = SERVICE_STATES.get(flow.service_id)?;
    if state.epoch != flow.service_epoch
        || state.vip != flow_key.dst_addr
        || state.port != flow_key.dst_port
        || state.proto as u32 != flow_key.proto
    {
        return None;
    }
    let backend = BACKENDS.get(flow.backend_id)?;
    if backend.flags & BACKEND_ACTIVE == 0 || backend.generation != flow.backend_generation {
        // The backend left (or its id was reused): re-balance this flow instead of black-holing it.
        return None;
    }
    Some((flow, *backend))
}

/// The flow's conntrack entry: from this CPU's flow cache when the slot holds this flow, else
/// from `FLOWS` (and then cached). The cache is an exact-match copy, validated by the caller
/// like the entry itself, so a stale copy can only send the flow through `new_flow` again.
#[inline(always)]
fn tracked_flow(flow_key: &FlowKey, now: u64) -> Option<FlowEntry> {
    let slot = FLOW_CACHE.get_ptr_mut(flow_cache_slot(flow_key));
    if let Some(slot) = slot {
        // SAFETY: a per-CPU slot: only this CPU touches it, and not concurrently (XDP runs to
        // completion with preemption off).
        let cached = unsafe { &mut *slot };
        if cached.key == *flow_key {
            if now < cached.touch_after {
                return Some(cached.flow);
            }
            // Due for a touch: the lookup marks the conntrack entry used, so the LRU keeps a busy
            // flow; an entry the LRU evicted anyway is put back (unless another CPU has made a new
            // one meanwhile), so the flow keeps its backend.
            // SAFETY: FlowEntry is plain data.
            match unsafe { FLOWS.get(flow_key) } {
                Some(flow) => cached.flow = *flow,
                None => {
                    let _ = FLOWS.insert(flow_key, cached.flow, BPF_NOEXIST);
                }
            }
            cached.touch_after = now + FLOW_CACHE_TOUCH_JIFFIES;
            return Some(cached.flow);
        }
    }
    // SAFETY: FlowEntry is plain data; a concurrent replacement yields the old or the new value.
    let flow = *unsafe { FLOWS.get(flow_key) }?;
    if let Some(slot) = slot {
        cache_flow(slot, flow_key, flow, now);
    }
    Some(flow)
}

/// `bpf_map_update_elem` flag: only insert, never replace.
const BPF_NOEXIST: u64 = 1;

/// Copies a flow into this CPU's cache slot.
#[inline(always)]
fn cache_flow(slot: *mut FlowCacheEntry, flow_key: &FlowKey, flow: FlowEntry, now: u64) {
    // SAFETY: a per-CPU slot, see tracked_flow.
    unsafe {
        *slot = FlowCacheEntry {
            key: *flow_key,
            flow,
            touch_after: now + FLOW_CACHE_TOUCH_JIFFIES,
        };
    }
}

/// Remembers a new flow (and in this CPU's cache), and its way back unless that is in place
/// already (a SNAT mapping).
#[inline(always)]
pub(crate) fn track(
    flow_key: &FlowKey,
    flow: FlowEntry,
    reverse: Option<(&FlowKey, ReverseEntry)>,
    now: u64,
) {
    // A full LRU evicts the oldest flow; a failed insert only means the next packet of this flow
    // hashes again (to the same backend while the table is unchanged).
    let _ = FLOWS.insert(flow_key, flow, 0);
    if let Some((reverse_key, reverse)) = reverse {
        let _ = REVERSE_FLOWS.insert(reverse_key, reverse, 0);
    }
    if let Some(slot) = FLOW_CACHE.get_ptr_mut(flow_cache_slot(flow_key)) {
        cache_flow(slot, flow_key, flow, now);
    }
}

/// Where a backend's reply goes back from: the entry of the tracked flow it answers (the
/// VIP:port, and for a SNATed flow the client), to read and to keep in use.
#[inline(always)]
pub(crate) fn reply(reverse_key: &FlowKey) -> Option<*mut ReverseEntry> {
    REVERSE_FLOWS.get_ptr_mut(reverse_key)
}
