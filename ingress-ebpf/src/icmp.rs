//! ICMP errors about translated flows, translated too, so path MTU discovery and port
//! unreachable work through the load balancer in both directions (RFC 5508 §7, as netfilter's
//! NAT does for RELATED packets):
//!
//! * to the client: an error about a packet we forwarded to a backend (the backend's port
//!   unreachable, fragmentation needed on the backend's path) quotes `client → backend`; it is
//!   made to quote `client → frontend`, and comes from the frontend when the backend sent it;
//! * to the backend: an error about a reply (fragmentation needed on the client's path) quotes
//!   `frontend → client` and is addressed to the frontend; it is made to quote
//!   `backend → client` and sent to the backend.
//!
//! The quoted header and ports are rewritten with the inner IPv4 checksum, the quoted UDP
//! checksum (when it is quoted and not 0) and the ICMP checksum updated incrementally. A quoted
//! TCP checksum lies beyond the 8 bytes every error carries and is left alone, as netfilter does.
//!
//! For a flow to a remote endpoint (SNAT) both ends of the quote move: an error about a
//! forwarded packet quotes `node:snat port → backend`, is addressed to this node and goes to the
//! client quoting `client → frontend`; an error about a reply quotes `frontend → client` and goes
//! to the backend quoting `backend → node:snat port`. In both, an outer address that is the
//! quote's peer (the client, the backend) is translated like the quote, so each end sees the
//! error come from the peer it knows.
//!
//! Errors with a quoted IP header carrying options, and every other ICMP, go to the stack.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_jiffies64, programs::XdpContext};
use ingress_common::{csum_replace2, csum_replace4, proto, FlowKey, Reason};
use ingress_ebpf::parse::{ptr_at, Ipv4Hdr, Packet, Ports, ICMP_DEST_UNREACH, IPV4_NO_OPTIONS};

use crate::{conntrack, forward, maps::BACKEND_FILTER, maps::VIP_FILTER, maybe_in};

const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_HLEN: usize = 8;
/// What an error must quote for us: the IP header without options and 8 bytes of TCP or UDP.
const QUOTED_LEN: usize = 28;

/// ICMP header of an error message.
#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    rest: u32,
}

/// The quoted packet: its IP header, its ports and (UDP) its checksum.
struct Quoted {
    ip: *mut Ipv4Hdr,
    ports: *mut Ports,
    udp_check: *mut u16,
    src: u32,
    dst: u32,
    src_port: u16,
    dst_port: u16,
    proto: u8,
}

/// Translates and forwards an ICMP error about a tracked flow; hands anything else on.
#[inline(always)]
pub(crate) fn translate_error(ctx: &XdpContext, packet: &Packet) -> (u32, Reason) {
    const NOT_OURS: (u32, Reason) = (xdp_action::XDP_PASS, Reason::PassNotOurs);
    // One bounds check for the ICMP header and everything quoted we touch, and every pointer
    // derived from it: the verifier then knows each access is inside it.
    let Some(message) = ptr_at::<[u8; ICMP_HLEN + QUOTED_LEN]>(ctx, packet.l4_offset) else {
        return NOT_OURS;
    };
    let icmp = message.cast::<IcmpHdr>();
    // SAFETY: bounds-checked by ptr_at.
    let kind = unsafe { (*icmp).kind };
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED {
        return NOT_OURS;
    }
    // SAFETY: the quoted part lies inside `message`.
    let Some(quoted) = quoted(unsafe { message.cast::<u8>().add(ICMP_HLEN) }) else {
        return NOT_OURS;
    };
    if packet.ttl <= 1 {
        return (xdp_action::XDP_PASS, Reason::PassTtlExpired);
    }
    // The quoted packet's 5-tuple turned round: the key of the flow it belongs to in either
    // case below (client → frontend, or backend → client).
    let flow_key = FlowKey::new(
        quoted.dst,
        quoted.src,
        quoted.dst_port,
        quoted.src_port,
        quoted.proto,
    );
    if maybe_in(&VIP_FILTER, quoted.src) {
        // Quotes `frontend → client`: a reply of a flow, if its client → frontend key is tracked.
        // SAFETY: reads the jiffies counter.
        let now = unsafe { bpf_jiffies64() };
        if let Some((flow, backend)) = conntrack::established(&flow_key, now) {
            let snat = flow.snat_addr != 0;
            let from_client = snat && packet.src_addr == quoted.dst;
            // SAFETY: `icmp` and the quoted headers were bounds-checked; the frame is unchanged
            // but for the fields each call rewrites (each reads the old value it replaces).
            unsafe {
                if packet.dst_addr == quoted.src {
                    rewrite_outer_destination(packet, backend.addr);
                }
                if from_client {
                    rewrite_outer_source(packet, flow.snat_addr);
                }
                if snat {
                    rewrite_quoted(icmp, &quoted, false, flow.snat_addr, flow.snat_port);
                }
                rewrite_quoted(icmp, &quoted, true, backend.addr, backend.port);
            }
            let src = if from_client {
                flow.snat_addr
            } else {
                packet.src_addr
            };
            return forward::send(
                ctx,
                packet,
                src,
                backend.addr,
                forward::Direction::IcmpError(Reason::IcmpErrorToBackend),
            );
        }
    }
    if maybe_in(&BACKEND_FILTER, quoted.dst) {
        // Quotes `client → backend` (or `node:snat port → backend`): a packet we forwarded, if
        // its reply key is tracked.
        // SAFETY: a map value pointer from the lookup; plain data.
        let reverse = conntrack::reply(&flow_key).map(|entry| unsafe { *entry });
        if let Some(reverse) = reverse {
            let from_backend = packet.src_addr == quoted.dst;
            // A SNAT mapping names the client; the error is addressed to this node.
            let to_node = reverse.client_addr != 0 && packet.dst_addr == quoted.src;
            // SAFETY: as above.
            unsafe {
                if from_backend {
                    rewrite_outer_source(packet, reverse.vip);
                }
                if to_node {
                    rewrite_outer_destination(packet, reverse.client_addr);
                }
                if reverse.client_addr != 0 {
                    rewrite_quoted(
                        icmp,
                        &quoted,
                        true,
                        reverse.client_addr,
                        reverse.client_port,
                    );
                }
                rewrite_quoted(icmp, &quoted, false, reverse.vip, reverse.port);
            }
            let src = if from_backend {
                reverse.vip
            } else {
                packet.src_addr
            };
            let dst = if to_node {
                reverse.client_addr
            } else {
                packet.dst_addr
            };
            return forward::send(
                ctx,
                packet,
                src,
                dst,
                forward::Direction::IcmpError(Reason::IcmpErrorToClient),
            );
        }
    }
    NOT_OURS
}

/// The packet an error quotes, at `at` (QUOTED_LEN bytes checked by the caller): an
/// option-less IPv4 header, then at least 8 bytes of TCP or UDP.
#[inline(always)]
fn quoted(at: *mut u8) -> Option<Quoted> {
    let ip = at.cast::<Ipv4Hdr>();
    // SAFETY: QUOTED_LEN bytes at `at` were bounds-checked by the caller.
    let (ports, udp_check) = unsafe { (at.add(20).cast::<Ports>(), at.add(26).cast::<u16>()) };
    // SAFETY: as above.
    unsafe {
        if (*ip).version_ihl != IPV4_NO_OPTIONS {
            return None;
        }
        let proto = (*ip).proto;
        if proto != proto::TCP && proto != proto::UDP {
            return None;
        }
        Some(Quoted {
            ip,
            ports,
            udp_check,
            src: (*ip).src_addr,
            dst: (*ip).dst_addr,
            src_port: (*ports).src,
            dst_port: (*ports).dst,
            proto,
        })
    }
}

/// The quoted packet's source (`source` true) or destination becomes `addr:port`.
///
/// # Safety
/// `icmp` and the quoted headers must be bounds-checked pointers into the frame, whose quoted
/// side being rewritten still holds the values `quoted` read (the other side may have moved:
/// the checksums are read afresh).
#[inline(always)]
unsafe fn rewrite_quoted(icmp: *mut IcmpHdr, quoted: &Quoted, source: bool, addr: u32, port: u16) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let (old_addr, old_port) = if source {
            (quoted.src, quoted.src_port)
        } else {
            (quoted.dst, quoted.dst_port)
        };
        let mut icmp_check = (*icmp).check;
        let old_ip_check = (*quoted.ip).check;
        let new_ip_check = csum_replace4(old_ip_check, old_addr, addr);
        if source {
            (*quoted.ip).src_addr = addr;
            (*quoted.ports).src = port;
        } else {
            (*quoted.ip).dst_addr = addr;
            (*quoted.ports).dst = port;
        }
        (*quoted.ip).check = new_ip_check;
        icmp_check = csum_replace4(icmp_check, old_addr, addr);
        icmp_check = csum_replace2(icmp_check, old_ip_check, new_ip_check);
        icmp_check = csum_replace2(icmp_check, old_port, port);
        if quoted.proto == proto::UDP {
            let old_udp = *quoted.udp_check;
            if old_udp != 0 {
                let mut udp = csum_replace4(old_udp, old_addr, addr);
                udp = csum_replace2(udp, old_port, port);
                if udp == 0 {
                    udp = 0xFFFF;
                }
                *quoted.udp_check = udp;
                icmp_check = csum_replace2(icmp_check, old_udp, udp);
            }
        }
        (*icmp).check = icmp_check;
    }
}

/// # Safety
/// `packet.ip` must be a bounds-checked pointer into the unchanged frame.
#[inline(always)]
unsafe fn rewrite_outer_destination(packet: &Packet, addr: u32) {
    // SAFETY: guaranteed by the caller. ICMP has no pseudo-header: only the IP checksum moves.
    unsafe {
        (*packet.ip).check = csum_replace4((*packet.ip).check, packet.dst_addr, addr);
        (*packet.ip).dst_addr = addr;
    }
}

/// # Safety
/// As [`rewrite_outer_destination`].
#[inline(always)]
unsafe fn rewrite_outer_source(packet: &Packet, addr: u32) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*packet.ip).check = csum_replace4((*packet.ip).check, packet.src_addr, addr);
        (*packet.ip).src_addr = addr;
    }
}
