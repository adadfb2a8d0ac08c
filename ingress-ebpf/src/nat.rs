//! Address and port rewrites with RFC 1624 incremental checksum updates (IPv4 header and the
//! TCP/UDP pseudo-header). A UDP checksum of 0 means "none" and stays 0.

use ingress_common::{csum_replace2, csum_replace4, proto};
use ingress_ebpf::parse::Packet;

/// DNAT: destination becomes the backend.
#[inline(always)]
pub(crate) fn rewrite_destination(packet: &Packet, new_addr: u32, new_port: u16) {
    // SAFETY: all pointers in `packet` were bounds-checked by parse::parse and the frame has not
    // been resized since.
    unsafe {
        (*packet.ip).check = csum_replace4((*packet.ip).check, packet.dst_addr, new_addr);
        (*packet.ip).dst_addr = new_addr;
        (*packet.ports).dst = new_port;
    }
    update_l4_checksum(packet, packet.dst_addr, new_addr, packet.dst_port, new_port);
}

/// Reverse NAT: source becomes the VIP again.
#[inline(always)]
pub(crate) fn rewrite_source(packet: &Packet, new_addr: u32, new_port: u16) {
    // SAFETY: as in rewrite_destination.
    unsafe {
        (*packet.ip).check = csum_replace4((*packet.ip).check, packet.src_addr, new_addr);
        (*packet.ip).src_addr = new_addr;
        (*packet.ports).src = new_port;
    }
    update_l4_checksum(packet, packet.src_addr, new_addr, packet.src_port, new_port);
}

#[inline(always)]
fn update_l4_checksum(packet: &Packet, old_addr: u32, new_addr: u32, old_port: u16, new_port: u16) {
    // SAFETY: as in rewrite_destination.
    unsafe {
        let check = *packet.l4_check;
        if packet.proto == proto::UDP && check == 0 {
            return;
        }
        let mut check = csum_replace4(check, old_addr, new_addr);
        check = csum_replace2(check, old_port, new_port);
        if packet.proto == proto::UDP && check == 0 {
            check = 0xFFFF;
        }
        *packet.l4_check = check;
    }
}

/// Router duty once we forward ourselves: TTL down by one, header checksum adjusted.
#[inline(always)]
pub(crate) fn decrement_ttl(packet: &Packet) {
    // SAFETY: as in rewrite_destination. TTL and protocol form one 16-bit word of the header.
    unsafe {
        let word = (&raw mut (*packet.ip).ttl).cast::<u16>();
        let old = core::ptr::read_unaligned(word);
        (*packet.ip).ttl -= 1;
        let new = core::ptr::read_unaligned(word);
        (*packet.ip).check = csum_replace2((*packet.ip).check, old, new);
    }
}
