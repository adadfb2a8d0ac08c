//! Refusing a new connection to a frontend that has no endpoint, so the client sees "connection
//! refused" at once instead of a timeout (kube-proxy's REJECT rules; Cilium drops these instead).
//! A TCP segment is answered with a RST, a UDP datagram with ICMP port unreachable, both from the
//! frontend's address and sent back out of the interface they came in by (XDP_TX).
//!
//! The answer is built in the received frame: a RST keeps the frame's headers (trimmed to 40
//! bytes of IP), an ICMP error grows the frame at its head by 28 bytes, which leaves the original
//! IP header and its first 8 payload bytes exactly where RFC 792 wants them. Frames with IP
//! options, and ICMP for VLAN-tagged frames, are dropped instead (counted as `drop_no_backend`):
//! rare, and not worth moving headers around for.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use ingress_common::{csum_fold, proto, Reason};
use ingress_ebpf::parse::{
    ptr_at, EthHdr, Ipv4Hdr, Packet, ETH_HLEN, ETH_P_IP, ICMP_DEST_UNREACH, IPV4_NO_OPTIONS, IP_DF,
    TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

/// ICMP destination unreachable's code port unreachable.
const ICMP_PORT_UNREACH: u8 = 3;
/// What an ICMP error adds in front of the original IP header: its own IP header and ICMP header.
const ICMP_GROWTH: usize = 28;
/// The ICMP answer: Ethernet, IP, ICMP, the original IP header and 8 bytes of its payload.
const ICMP_FRAME_LEN: usize = ETH_HLEN + 20 + 8 + 20 + 8;
/// TTL of the answers (Linux's default).
const ANSWER_TTL: u8 = 64;

/// TCP header without options.
#[repr(C)]
struct TcpHdr {
    src: u16,
    dst: u16,
    seq: u32,
    ack: u32,
    doff: u8,
    flags: u8,
    window: u16,
    check: u16,
    urg: u16,
}

/// ICMP error header.
#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    unused: u32,
}

/// Refuses the packet's connection, or drops it when no answer can be built here.
#[inline(always)]
pub(crate) fn refuse(ctx: &XdpContext, packet: &Packet) -> (u32, Reason) {
    if packet.proto == proto::TCP {
        tcp_reset(ctx, packet)
    } else {
        icmp_port_unreachable(ctx, packet)
    }
}

const DROP: (u32, Reason) = (xdp_action::XDP_DROP, Reason::DropNoBackend);

/// Sums `N` 16-bit words read at `at` (RFC 1071; byte order does not matter as long as the result
/// is stored the same way).
///
/// # Safety
/// `at` must point at `2 * N` readable bytes.
#[inline(always)]
unsafe fn sum_words<const N: usize>(at: *const u8, mut sum: u32) -> u32 {
    let mut i = 0;
    while i < N {
        // SAFETY: the caller guarantees `2 * N` bytes; unaligned reads are allowed on packets.
        sum += unsafe { core::ptr::read_unaligned(at.add(2 * i).cast::<u16>()) } as u32;
        i += 1;
    }
    sum
}

/// The two 16-bit halves of an address, as they lie in memory.
#[inline(always)]
fn addr_words(addr: u32) -> u32 {
    (addr & 0xffff) + (addr >> 16)
}

/// Writes a 20-byte IPv4 header and its checksum.
///
/// # Safety
/// `ip` must point at 20 writable bytes of the frame.
#[inline(always)]
unsafe fn write_ipv4(
    ip: *mut Ipv4Hdr,
    tos: u8,
    tot_len: u16,
    frag_off: u16,
    proto: u8,
    src: u32,
    dst: u32,
) {
    // SAFETY: the caller guarantees the header's bytes.
    unsafe {
        (*ip).version_ihl = IPV4_NO_OPTIONS;
        (*ip).tos = tos;
        (*ip).tot_len = tot_len.to_be();
        (*ip).id = 0;
        (*ip).frag_off = frag_off.to_be();
        (*ip).ttl = ANSWER_TTL;
        (*ip).proto = proto;
        (*ip).check = 0;
        (*ip).src_addr = src;
        (*ip).dst_addr = dst;
        (*ip).check = !csum_fold(sum_words::<10>(ip.cast::<u8>(), 0));
    }
}

/// A RST for the segment (RFC 9293 §3.10.7.1, a closed port): from the frontend, with the
/// sequence numbers the client accepts.
#[inline(always)]
fn tcp_reset(ctx: &XdpContext, packet: &Packet) -> (u32, Reason) {
    let ip = packet.ip;
    let Some(tcp) = ptr_at::<TcpHdr>(ctx, packet.l4_offset) else {
        return DROP;
    };
    // SAFETY: the IP header was bounds-checked by parse::parse, the TCP header just above, and
    // the frame has not been resized.
    unsafe {
        if (*ip).version_ihl != IPV4_NO_OPTIONS {
            return DROP;
        }
        let flags = (*tcp).flags;
        if flags & TCP_RST != 0 {
            // Never answer a RST.
            return DROP;
        }
        let (seq, ack, answer_flags) = if flags & TCP_ACK != 0 {
            ((*tcp).ack, 0u32, TCP_RST)
        } else {
            let header_len = (((*tcp).doff >> 4) as u32) * 4;
            let segment_len = (u16::from_be(packet.tot_len) as u32).saturating_sub(20 + header_len)
                + (flags & TCP_SYN != 0) as u32
                + (flags & TCP_FIN != 0) as u32;
            let ack = u32::from_be((*tcp).seq).wrapping_add(segment_len);
            (0u32, ack.to_be(), TCP_RST | TCP_ACK)
        };
        let eth = packet.eth;
        core::mem::swap(&mut (*eth).src, &mut (*eth).dst);
        write_ipv4(
            ip,
            0,
            40,
            IP_DF,
            proto::TCP,
            packet.dst_addr,
            packet.src_addr,
        );
        (*tcp).src = packet.dst_port;
        (*tcp).dst = packet.src_port;
        (*tcp).seq = seq;
        (*tcp).ack = ack;
        (*tcp).doff = 5 << 4;
        (*tcp).flags = answer_flags;
        (*tcp).window = 0;
        (*tcp).check = 0;
        (*tcp).urg = 0;
        let pseudo = addr_words(packet.dst_addr)
            + addr_words(packet.src_addr)
            + (proto::TCP as u16).to_be() as u32
            + 20u16.to_be() as u32;
        (*tcp).check = !csum_fold(sum_words::<10>(tcp.cast::<u8>(), pseudo));
    }
    // Trim whatever followed the 20-byte TCP header (options, payload).
    let answer_end = tcp as usize + 20;
    let delta = answer_end as i64 - ctx.data_end() as i64;
    // SAFETY: plain helper call on this program's context; a failure leaves the frame as it was.
    if delta < 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
        return DROP;
    }
    (xdp_action::XDP_TX, Reason::RejectTcpReset)
}

/// ICMP destination unreachable / port unreachable for the datagram (RFC 792, RFC 1812 §4.3.2.3),
/// from the frontend's address.
#[inline(always)]
fn icmp_port_unreachable(ctx: &XdpContext, packet: &Packet) -> (u32, Reason) {
    // SAFETY: the IP header was bounds-checked by parse::parse.
    if packet.has_vlan || unsafe { (*packet.ip).version_ihl } != IPV4_NO_OPTIONS {
        return DROP;
    }
    // SAFETY: the Ethernet header was bounds-checked by parse::parse.
    let (client_mac, our_mac) = unsafe { ((*packet.eth).src, (*packet.eth).dst) };
    // SAFETY: plain helper call; on success every packet pointer must be derived anew.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(ICMP_GROWTH as i32)) } != 0 {
        return DROP;
    }
    let Some(frame) = ptr_at::<[u8; ICMP_FRAME_LEN]>(ctx, 0) else {
        return (xdp_action::XDP_DROP, Reason::DropNoBackend);
    };
    let frame = frame.cast::<u8>();
    // SAFETY: all writes and reads below are inside the ICMP_FRAME_LEN bytes checked above; the
    // original IP header and 8 bytes of UDP now sit at ETH_HLEN + 28, untouched.
    unsafe {
        let eth = frame.cast::<EthHdr>();
        (*eth).dst = client_mac;
        (*eth).src = our_mac;
        (*eth).ether_type = ETH_P_IP.to_be();
        let ip = frame.add(ETH_HLEN).cast::<Ipv4Hdr>();
        write_ipv4(
            ip,
            0xc0,
            (ICMP_FRAME_LEN - ETH_HLEN) as u16,
            0,
            proto::ICMP,
            packet.dst_addr,
            packet.src_addr,
        );
        let icmp = frame.add(ETH_HLEN + 20).cast::<IcmpHdr>();
        (*icmp).kind = ICMP_DEST_UNREACH;
        (*icmp).code = ICMP_PORT_UNREACH;
        (*icmp).check = 0;
        (*icmp).unused = 0;
        (*icmp).check = !csum_fold(sum_words::<18>(icmp.cast::<u8>(), 0));
    }
    let delta = (ctx.data() + ICMP_FRAME_LEN) as i64 - ctx.data_end() as i64;
    // SAFETY: plain helper call on this program's context.
    if delta < 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
        return (xdp_action::XDP_DROP, Reason::DropNoBackend);
    }
    (xdp_action::XDP_TX, Reason::RejectIcmpUnreachable)
}
