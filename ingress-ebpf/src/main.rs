//! The XDP load balancer. One program, attached to every interface the agent is given, handles
//! both directions:
//!
//! * client → VIP:port: parse, look the Service up, find or pick the backend (this CPU's flow
//!   cache, then connection tracking, then Maglev), DNAT with incremental checksums, next hop
//!   (cached FIB answer), MAC rewrite, TX or redirect;
//! * backend → client replies of tracked flows: SNAT back to VIP:port, FIB lookup, TX or redirect;
//! * ICMP errors about translated flows: translated and forwarded (`icmp`);
//! * a new flow to a frontend without endpoints: refused (TCP RST, ICMP port unreachable), or
//!   dropped when only other nodes have endpoints (`externalTrafficPolicy: Local`).
//!
//! Everything else is handed to the stack untouched. The stages live in small modules: `parse`
//! (bounds-checked header access, in the library: the bench object shares it), `maps`
//! (definitions), `conntrack` (tracked flows and the per-CPU flow cache), `source_range`
//! (`loadBalancerSourceRanges`), `affinity` (`sessionAffinity: ClientIP`), `maglev` (the backend
//! pick), `reject` (refusals), `nat` (rewrites and checksums), `forward` (FIB and verdict),
//! `stats` (per-CPU counters). No loops, no allocation, no per-packet logging (aya-log speaks only on an internal
//! inconsistency that should never happen).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

mod affinity;
mod conntrack;
mod egress;
mod forward;
mod icmp;
mod maglev;
mod maps;
mod nat;
mod reject;
mod snat;
mod source_range;
mod stats;

use aya_ebpf::{bindings::xdp_action, helpers::bpf_jiffies64, macros::xdp, programs::XdpContext};
use ingress_common::{
    filter_slot, proto, BackendEntry, FlowEntry, FlowKey, Reason, ReverseEntry, ServiceEntry,
    ServiceKey, BACKEND_SNAT, SERVICE_DROP_EMPTY, SERVICE_SOURCE_RANGES,
};
use ingress_ebpf::parse::{self, Packet};

use crate::maps::{BACKEND_FILTER, SERVICES, VIPS, VIP_FILTER};

/// Entry point: every frame on an attached interface.
#[xdp]
pub(crate) fn xdp_ingress(ctx: XdpContext) -> u32 {
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
    if packet.proto == proto::ICMP {
        if packet.is_fragment {
            return (xdp_action::XDP_PASS, Reason::PassNotOurs);
        }
        return icmp::translate_error(ctx, &packet);
    }
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
pub(crate) fn maybe_in(filter: &aya_ebpf::maps::Array<u64>, addr: u32) -> bool {
    let (word, bit) = filter_slot(addr);
    filter.get(word).is_some_and(|w| w & bit != 0)
}

/// Client → VIP: find or pick the backend, DNAT (and SNAT for a remote endpoint). `None` when
/// the packet is not for a Service.
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
    let (flow, backend) = match conntrack::established(&flow_key, now) {
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
            let Some(service) = (unsafe { SERVICES.get(service_key) }).copied() else {
                return unserved_port(ctx, packet);
            };
            if packet.ttl <= 1 {
                return Some((xdp_action::XDP_PASS, Reason::PassTtlExpired));
            }
            if service.flags & SERVICE_SOURCE_RANGES != 0
                && !source_range::allowed(service.service_id, packet.src_addr)
            {
                stats::count_denied(service.service_id);
                return Some((xdp_action::XDP_DROP, Reason::DropSourceRange));
            }
            match new_flow(ctx, packet, &flow_key, &service, now) {
                Ok(found) => found,
                Err(verdict) => return Some(verdict),
            }
        }
    };
    nat::rewrite_destination(packet, backend.addr, backend.port);
    let mut source = packet.src_addr;
    if flow.snat_addr != 0 {
        nat::rewrite_source(packet, flow.snat_addr, flow.snat_port);
        source = flow.snat_addr;
        if parse::tcp_flags(ctx, packet) & (parse::TCP_FIN | parse::TCP_RST) != 0 {
            snat::note_closing(backend.addr, backend.port, flow.snat_addr, flow.snat_port);
        }
    }
    stats::count_forward(flow.service_id, flow.backend_id, packet.frame_len);
    Some(forward::send(
        ctx,
        packet,
        source,
        backend.addr,
        forward::Direction::ToBackend {
            id: flow.backend_id,
            generation: backend.generation,
            now,
        },
    ))
}

/// A packet to a frontend address on a port (or protocol) no Service serves: refused like a
/// closed port of a host (RST, ICMP port unreachable) when the stack would route it onwards:
/// the node routes an address it does not own to its gateway, which routes it to the node
/// again, until its TTL runs out. An address of the node's own (its stack and listeners answer
/// for it), or one without a route, is the stack's. `None`: the stack's, or not a frontend
/// address at all.
#[inline(always)]
fn unserved_port(ctx: &XdpContext, packet: &Packet) -> Option<(u32, Reason)> {
    // SAFETY: the value is a plain integer.
    unsafe { VIPS.get(packet.dst_addr) }?;
    if !forward::routed_onwards(ctx, packet) {
        return None;
    }
    Some(reject::refuse(ctx, packet))
}

/// A flow without a live tracked backend: the client's sticky backend or a Maglev pick,
/// remembered both ways (for a remote endpoint, with a SNAT port taken first). Without any
/// backend the connection is refused (or dropped).
#[inline(always)]
fn new_flow(
    ctx: &XdpContext,
    packet: &Packet,
    flow_key: &FlowKey,
    service: &ServiceEntry,
    now: u64,
) -> Result<(FlowEntry, BackendEntry), (u32, Reason)> {
    if service.table_size == 0 {
        stats::count_no_backend(service.service_id);
        if service.flags & SERVICE_DROP_EMPTY != 0 {
            return Err((xdp_action::XDP_DROP, Reason::DropNoLocalEndpoint));
        }
        let verdict = reject::refuse(ctx, packet);
        if verdict.0 == xdp_action::XDP_TX {
            stats::count_rejected(service.service_id);
        }
        return Err(verdict);
    }
    let affinity_now = if service.affinity_timeout != 0 {
        affinity::now_ns()
    } else {
        0
    };
    let sticky = if service.affinity_timeout != 0 {
        affinity::sticky_backend(service, packet.src_addr, affinity_now)
    } else {
        None
    };
    let Some((backend_id, backend)) = sticky.or_else(|| maglev::pick_backend(packet, service))
    else {
        aya_log_ebpf::warn!(
            ctx,
            "maglev slot of service {} points at no live backend",
            service.service_id
        );
        return Err((xdp_action::XDP_DROP, Reason::DropInternal));
    };
    let mut flow = FlowEntry {
        backend_id,
        backend_generation: backend.generation,
        service_id: service.service_id,
        service_epoch: service.epoch,
        snat_addr: 0,
        snat_port: 0,
        pad: 0,
    };
    if backend.flags & BACKEND_SNAT != 0 {
        let snat = forward::egress_address(ctx, packet, backend.addr).and_then(|addr| {
            snat::allocate(packet, backend.addr, backend.port, addr, snat::now_ns())
                .map(|port| (addr, port))
        });
        let Some((snat_addr, snat_port)) = snat else {
            stats::count_snat_failure(service.service_id);
            return Err((xdp_action::XDP_DROP, Reason::DropSnatFailed));
        };
        flow.snat_addr = snat_addr;
        flow.snat_port = snat_port;
        // The mapping (the reverse entry) is in place: now the flow.
        conntrack::track(flow_key, flow, None, now);
    } else {
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
            client_port: 0,
            client_addr: 0,
            flags: 0,
            last_seen_ns: 0,
        };
        conntrack::track(flow_key, flow, Some((&reverse_key, reverse)), now);
    }
    if service.affinity_timeout != 0 {
        affinity::remember(service, packet.src_addr, backend_id, &backend, affinity_now);
    }
    stats::count_new_flow(service.service_id);
    Ok((flow, backend))
}

/// Backend → client: if this is a reply of a tracked flow, make it come from the VIP again (and,
/// for a SNATed flow, go to the client again).
#[inline(always)]
fn reply_to_client(ctx: &XdpContext, packet: &Packet) -> (u32, Reason) {
    let reverse_key = FlowKey::new(
        packet.src_addr,
        packet.dst_addr,
        packet.src_port,
        packet.dst_port,
        packet.proto,
    );
    let Some(entry) = conntrack::reply(&reverse_key) else {
        return (xdp_action::XDP_PASS, Reason::PassNotOurs);
    };
    // SAFETY: a map value pointer from the lookup; plain data.
    let reverse = unsafe { *entry };
    if packet.ttl <= 1 {
        return (xdp_action::XDP_PASS, Reason::PassTtlExpired);
    }
    nat::rewrite_source(packet, reverse.vip, reverse.port);
    let mut client = packet.dst_addr;
    if reverse.client_addr != 0 {
        nat::rewrite_destination(packet, reverse.client_addr, reverse.client_port);
        client = reverse.client_addr;
        let closing = parse::tcp_flags(ctx, packet) & (parse::TCP_FIN | parse::TCP_RST) != 0;
        snat::touch(entry, closing, snat::now_ns());
    }
    forward::send(
        ctx,
        packet,
        reverse.vip,
        client,
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
