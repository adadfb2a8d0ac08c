//! SNAT for flows to endpoints on other nodes: their source becomes this node's address on the
//! egress interface and a port of [`SNAT_PORT_MIN`].. (see `ingress_common`), so the endpoint's
//! replies come back through this node, where `REVERSE_FLOWS` turns them back into replies from
//! the frontend to the client.
//!
//! `REVERSE_FLOWS` is the SNAT table. A port is taken by inserting the mapping with
//! `BPF_NOEXIST` before the flow is tracked (reverse first: no reply can arrive before its
//! mapping, and no port is given twice); a port whose mapping sits idle past its timeout (TCP six
//! hours, ten seconds after a FIN or RST, UDP a minute) is taken over. [`SNAT_TRIES`] ports are
//! tried, starting at the flow's hash; when all are busy the flow is dropped and counted, never
//! sent with a colliding mapping. A later direct-server-return mode would skip this module.

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use ingress_common::{
    flow_hash, proto, FlowKey, ReverseEntry, REVERSE_CLOSING, SNAT_PORT_COUNT, SNAT_PORT_MIN,
    SNAT_TRIES,
};
use ingress_ebpf::parse::Packet;

use crate::maps::REVERSE_FLOWS;

/// `bpf_map_update_elem` flag: only insert, never replace.
const BPF_NOEXIST: u64 = 1;
/// Step between tried ports: prime, so the tries are spread over the range.
const STRIDE: u32 = 97;
/// Refresh `last_seen_ns` at most this often (a write per reply would bounce the cache line).
const REFRESH_NS: u64 = 1_000_000_000;

/// Now, for SNAT timestamps.
#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: plain helper call without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Takes a SNAT port for the packet's flow to `backend_addr:backend_port` from `snat_addr`,
/// recording the mapping back to `vip:vip_port` and the client. The port in wire order, or
/// `None` when every try found a live mapping.
#[inline(always)]
pub(crate) fn allocate(
    packet: &Packet,
    backend_addr: u32,
    backend_port: u16,
    snat_addr: u32,
    now: u64,
) -> Option<u16> {
    let mapping = ReverseEntry {
        vip: packet.dst_addr,
        port: packet.dst_port,
        client_port: packet.src_port,
        client_addr: packet.src_addr,
        flags: 0,
        last_seen_ns: now,
    };
    let start = flow_hash(
        packet.src_addr,
        packet.dst_addr,
        packet.src_port,
        packet.dst_port,
        packet.proto,
    ) % SNAT_PORT_COUNT;
    let mut i = 0;
    while i < SNAT_TRIES {
        let port = (SNAT_PORT_MIN as u32 + (start + i * STRIDE) % SNAT_PORT_COUNT) as u16;
        let key = FlowKey::new(
            backend_addr,
            snat_addr,
            backend_port,
            port.to_be(),
            packet.proto,
        );
        if REVERSE_FLOWS.insert(key, mapping, BPF_NOEXIST).is_ok() {
            return Some(port.to_be());
        }
        if let Some(existing) = REVERSE_FLOWS.get_ptr_mut(key) {
            // SAFETY: a map value; a concurrent writer on another CPU can only be taking the
            // same expired port, and then one of the two flows re-balances on its next packet.
            unsafe {
                if (*existing).snat_expired(packet.proto, now) {
                    *existing = mapping;
                    return Some(port.to_be());
                }
            }
        }
        i += 1;
    }
    None
}

/// Keeps a mapping in use (at most one write a second) and notes a FIN or RST.
#[inline(always)]
pub(crate) fn touch(entry: *mut ReverseEntry, closing: bool, now: u64) {
    // SAFETY: a map value pointer from a lookup; plain data.
    unsafe {
        if now.saturating_sub((*entry).last_seen_ns) > REFRESH_NS {
            (*entry).last_seen_ns = now;
        }
        if closing && (*entry).flags & REVERSE_CLOSING == 0 {
            (*entry).flags |= REVERSE_CLOSING;
            (*entry).last_seen_ns = now;
        }
    }
}

/// A forwarded packet of a SNATed flow closes it (FIN or RST): its mapping is released sooner.
#[inline(always)]
pub(crate) fn note_closing(backend_addr: u32, backend_port: u16, snat_addr: u32, snat_port: u16) {
    let key = FlowKey::new(backend_addr, snat_addr, backend_port, snat_port, proto::TCP);
    if let Some(entry) = REVERSE_FLOWS.get_ptr_mut(key) {
        touch(entry, true, now_ns());
    }
}
