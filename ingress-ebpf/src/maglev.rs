//! The Maglev pick: a new flow's backend is the slot its 5-tuple hashes to in its Service's
//! lookup table (written by the agent, `datapath::maglev`), so every node picks the same backend
//! and a backend change moves only the flows that must move.

use ingress_common::{flow_hash, BackendEntry, ServiceEntry, BACKEND_ACTIVE, MAGLEV_CHUNK_SLOTS};
use ingress_ebpf::parse::Packet;

use crate::maps::{BACKENDS, MAGLEV_SLOTS};

/// Maglev: hash the 5-tuple onto the Service's lookup table.
#[inline(always)]
pub(crate) fn pick_backend(packet: &Packet, service: &ServiceEntry) -> Option<(u32, BackendEntry)> {
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
