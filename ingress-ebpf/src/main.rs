//! The XDP load balancer. One program, attached to every interface the agent is given, handles
//! both directions:
//!
//! * client → VIP:port: parse, look the Service up, find or pick the backend (this CPU's flow
//!   cache, then connection tracking, then Maglev), DNAT with incremental checksums, next hop
//!   (cached FIB answer), MAC rewrite, TX or redirect;
//! * backend → client replies of tracked flows: SNAT back to VIP:port, FIB lookup, TX or redirect.
//!
//! Everything else is handed to the stack untouched. The stages live in small modules: `parse`
//! (bounds-checked header access), `maps` (definitions), `nat` (rewrites and checksums), `forward`
//! (FIB and verdict), `stats` (per-CPU counters). No loops, no allocation, no per-packet logging
//! (aya-log speaks only on an internal inconsistency that should never happen).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

mod bench;
mod forward;
mod maps;
mod nat;
mod parse;
mod stats;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_jiffies64, macros::xdp, programs::XdpContext};
use ingress_common::{
    filter_slot, flow_cache_slot, flow_hash, BackendEntry, FlowCacheEntry, FlowEntry, FlowKey,
    Reason, ReverseEntry, ServiceEntry, ServiceKey, BACKEND_ACTIVE, FLOW_CACHE_TOUCH_JIFFIES,
    MAGLEV_CHUNK_SLOTS,
};

use crate::{
    maps::{
        BACKENDS, BACKEND_FILTER, FLOWS, FLOW_CACHE, MAGLEV_SLOTS, REVERSE_FLOWS, SERVICES,
        SERVICE_STATES, VIPS, VIP_FILTER,
    },
    parse::Packet,
};

/// Entry point: every frame on an attached interface.
#[xdp]
pub fn xdp_ingress(ctx: XdpContext) -> u32 {
    let (action, reason) = process(&ctx);
    stats::count_reason(reason);
    action
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (u32, Reason) {
    let packet = match parse::parse(ctx) {
        Ok(packet) => packet,
        Err(reason) => return (xdp_action::XDP_PASS, reason),
    };
    if packet.is_fragment {
        // Non-first fragments carry no ports, so they can be neither hashed nor matched to a flow.
        // Rather than forward some pieces and strand others, every fragment for a VIP is dropped
        // (as Katran does); fragments for anything else belong to the stack.
        // SAFETY: the value is a plain integer read by the verifier-checked helper.
        return if unsafe { VIPS.get(packet.dst_addr) }.is_some() {
            (xdp_action::XDP_DROP, Reason::DropFragment)
        } else {
            (xdp_action::XDP_PASS, Reason::PassNotOurs)
        };
    }
    // Most of a node's traffic is neither for a VIP nor a reply from a backend: two bitmap tests
    // (array lookups the verifier inlines) send it on without touching a hash map.
    if maybe_in(&VIP_FILTER, packet.dst_addr) {
        if let Some(verdict) = forward_to_backend(ctx, &packet) {
            return verdict;
        }
    }
    if maybe_in(&BACKEND_FILTER, packet.src_addr) {
        return reply_to_client(ctx, &packet);
    }
    (xdp_action::XDP_PASS, Reason::PassNotOurs)
}

/// False when `addr` is certainly not in the set the filter describes.
#[inline(always)]
fn maybe_in(filter: &aya_ebpf::maps::Array<u64>, addr: u32) -> bool {
    let (word, bit) = filter_slot(addr);
    filter.get(word).is_some_and(|w| w & bit != 0)
}

/// Client → VIP: find or pick the backend and DNAT. `None` when the packet is not for a Service.
#[inline(always)]
fn forward_to_backend(ctx: &XdpContext, packet: &Packet) -> Option<(u32, Reason)> {
    let flow_key = FlowKey::new(
        packet.src_addr,
        packet.dst_addr,
        packet.src_port,
        packet.dst_port,
        packet.proto,
    );
    // Established flows need no hash lookup at all when this CPU's flow cache holds them, one
    // otherwise: the flow, checked against its Service's state and its backend by index.
    // Everything else takes the Service lookup.
    // TTL is checked once on either path; on the new-flow path before any state is created.
    // SAFETY: reads the jiffies counter (the verifier inlines it).
    let now = unsafe { bpf_jiffies64() };
    let (service_id, backend_id, backend) = match established(&flow_key, now) {
        Some(found) => {
            if packet.ttl <= 1 {
                return Some((xdp_action::XDP_PASS, Reason::PassTtlExpired));
            }
            found
        }
        None => {
            let service_key = ServiceKey {
                vip: packet.dst_addr,
                port: packet.dst_port,
                proto: packet.proto,
                pad: 0,
            };
            // SAFETY: ServiceEntry is plain data; user space replaces entries whole.
            let service = *unsafe { SERVICES.get(service_key) }?;
            if packet.ttl <= 1 {
                return Some((xdp_action::XDP_PASS, Reason::PassTtlExpired));
            }
            match new_flow(ctx, packet, &flow_key, &service, now) {
                Ok((backend_id, backend)) => (service.service_id, backend_id, backend),
                Err(verdict) => return Some(verdict),
            }
        }
    };
    nat::rewrite_destination(packet, backend.addr, backend.port);
    stats::count_forward(service_id, backend_id, packet.frame_len);
    Some(forward::send(
        ctx,
        packet,
        packet.src_addr,
        backend.addr,
        forward::Direction::ToBackend {
            id: backend_id,
            generation: backend.generation,
            now,
        },
    ))
}

/// The tracked flow's Service id and backend, if the id still belongs to this frontend (same
/// epoch) and the backend is still the same live one.
#[inline(always)]
fn established(flow_key: &FlowKey, now: u64) -> Option<(u32, u32, BackendEntry)> {
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
    Some((flow.service_id, flow.backend_id, *backend))
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

/// A flow without a live tracked backend: pick one with Maglev and remember it both ways.
#[inline(always)]
fn new_flow(
    ctx: &XdpContext,
    packet: &Packet,
    flow_key: &FlowKey,
    service: &ServiceEntry,
    now: u64,
) -> Result<(u32, BackendEntry), (u32, Reason)> {
    let Some((backend_id, backend)) = pick_backend(packet, service) else {
        if service.table_size == 0 {
            stats::count_no_backend(service.service_id);
            return Err((xdp_action::XDP_DROP, Reason::DropNoBackend));
        }
        aya_log_ebpf::warn!(
            ctx,
            "maglev slot of service {} points at no live backend",
            service.service_id
        );
        return Err((xdp_action::XDP_DROP, Reason::DropInternal));
    };
    let flow = FlowEntry {
        backend_id,
        backend_generation: backend.generation,
        service_id: service.service_id,
        service_epoch: service.epoch,
    };
    let reverse_key = FlowKey::new(
        backend.addr,
        packet.src_addr,
        backend.port,
        packet.src_port,
        packet.proto,
    );
    let reverse = ReverseEntry {
        vip: packet.dst_addr,
        port: packet.dst_port,
        pad: 0,
    };
    // A full LRU evicts the oldest flow; a failed insert only means the next packet of this flow
    // hashes again (to the same backend while the table is unchanged).
    let _ = FLOWS.insert(flow_key, flow, 0);
    let _ = REVERSE_FLOWS.insert(reverse_key, reverse, 0);
    if let Some(slot) = FLOW_CACHE.get_ptr_mut(flow_cache_slot(flow_key)) {
        cache_flow(slot, flow_key, flow, now);
    }
    stats::count_new_flow(service.service_id);
    Ok((backend_id, backend))
}

/// Maglev: hash the 5-tuple onto the Service's lookup table.
#[inline(always)]
fn pick_backend(packet: &Packet, service: &ServiceEntry) -> Option<(u32, BackendEntry)> {
    if service.table_size == 0 {
        return None;
    }
    let hash = flow_hash(
        packet.src_addr,
        packet.dst_addr,
        packet.src_port,
        packet.dst_port,
        packet.proto,
    );
    let slot = service.table_offset.wrapping_add(hash % service.table_size);
    let chunk = MAGLEV_SLOTS.get(slot / MAGLEV_CHUNK_SLOTS)?;
    let backend_id = *chunk
        .slots
        .get((slot % MAGLEV_CHUNK_SLOTS) as usize & (MAGLEV_CHUNK_SLOTS as usize - 1))?;
    let backend = BACKENDS.get(backend_id)?;
    if backend.flags & BACKEND_ACTIVE == 0 {
        return None;
    }
    Some((backend_id, *backend))
}

/// Backend → client: if this is a reply of a tracked flow, make it come from the VIP again.
#[inline(always)]
fn reply_to_client(ctx: &XdpContext, packet: &Packet) -> (u32, Reason) {
    let reverse_key = FlowKey::new(
        packet.src_addr,
        packet.dst_addr,
        packet.src_port,
        packet.dst_port,
        packet.proto,
    );
    // SAFETY: ReverseEntry is plain data.
    let Some(reverse) = (unsafe { REVERSE_FLOWS.get(reverse_key) }).copied() else {
        return (xdp_action::XDP_PASS, Reason::PassNotOurs);
    };
    if packet.ttl <= 1 {
        return (xdp_action::XDP_PASS, Reason::PassTtlExpired);
    }
    nat::rewrite_source(packet, reverse.vip, reverse.port);
    forward::send(
        ctx,
        packet,
        reverse.vip,
        packet.dst_addr,
        forward::Direction::ToClient,
    )
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program; the verifier rejects any path that could get here.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
