//! Header parsing with a bounds check before every access. The result, [`Packet`], holds the
//! fields the later stages need (in wire byte order) and pointers to the bytes they rewrite.

use aya_ebpf::programs::XdpContext;
use ingress_common::{proto, Reason};

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
/// EtherType IPv4.
pub const ETH_P_IP: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// IPv4 flags and fragment offset: more fragments.
pub const IP_MF: u16 = 0x2000;
/// IPv4 fragment offset mask.
pub const IP_OFFSET: u16 = 0x1FFF;
/// IPv4 don't-fragment flag.
pub const IP_DF: u16 = 0x4000;
/// The first byte of an IPv4 header without options (version 4, IHL 5).
pub const IPV4_NO_OPTIONS: u8 = 0x45;
/// ICMP type destination unreachable.
pub const ICMP_DEST_UNREACH: u8 = 3;

/// Ethernet header (fields as in the kernel's `struct ethhdr`).
#[repr(C)]
#[allow(missing_docs)] // the wire format's own field names
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: u16,
}

/// One 802.1Q tag (after the outer EtherType).
#[repr(C)]
struct VlanHdr {
    tci: u16,
    ether_type: u16,
}

/// IPv4 header without options (fields as in RFC 791 and the kernel's `struct iphdr`).
#[repr(C)]
#[allow(missing_docs)] // the wire format's own field names
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src_addr: u32,
    pub dst_addr: u32,
}

/// The two ports at the start of TCP and UDP headers.
#[repr(C)]
pub struct Ports {
    /// Source port.
    pub src: u16,
    /// Destination port.
    pub dst: u16,
}

/// A parsed IPv4 TCP/UDP (or ICMP) frame. Addresses and ports in wire byte order.
pub struct Packet {
    /// The Ethernet header (rewritten: MACs).
    pub eth: *mut EthHdr,
    /// The IPv4 header (rewritten: addresses, TTL, checksum).
    pub ip: *mut Ipv4Hdr,
    /// Null for fragments and ICMP.
    pub ports: *mut Ports,
    /// The L4 checksum field; null for fragments and ICMP.
    pub l4_check: *mut u16,
    /// Source address.
    pub src_addr: u32,
    /// Destination address.
    pub dst_addr: u32,
    /// Source port (0 for fragments).
    pub src_port: u16,
    /// Destination port (0 for fragments).
    pub dst_port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// TTL as received.
    pub ttl: u8,
    /// TOS as received (the FIB lookup uses it).
    pub tos: u8,
    /// IPv4 total length (the MTU check uses it).
    pub tot_len: u16,
    /// A fragment (first or not): no ports.
    pub is_fragment: bool,
    /// One 802.1Q/802.1ad tag was parsed.
    pub has_vlan: bool,
    /// The frame's length, for the byte counters.
    pub frame_len: u64,
    /// Where the L4 header starts, from the start of the frame.
    pub l4_offset: usize,
}

/// TCP flags: FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flags: SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flags: RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flags: ACK.
pub const TCP_ACK: u8 = 0x10;

/// The TCP flags of a TCP packet (0 for anything else or a truncated header).
#[inline(always)]
pub fn tcp_flags(ctx: &XdpContext, packet: &Packet) -> u8 {
    if packet.proto != proto::TCP || packet.is_fragment {
        return 0;
    }
    match ptr_at::<[u8; 14]>(ctx, packet.l4_offset) {
        // SAFETY: bounds-checked by ptr_at.
        Some(header) => unsafe { (*header)[13] },
        None => 0,
    }
}

/// A pointer to a `T` at `offset` if the whole `T` lies inside the frame.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Parses Ethernet (with at most one VLAN tag), IPv4 (with options) and the TCP/UDP ports (ICMP:
/// the IP header only, `ports` null).
/// `Err` carries why the frame goes to the stack untouched.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Reason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Reason::PassMalformed)?;
    // SAFETY: `eth` was bounds-checked by ptr_at.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3_offset = ETH_HLEN;
    let mut has_vlan = false;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let vlan: *const VlanHdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::PassMalformed)?;
        // SAFETY: bounds-checked above.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        l3_offset += VLAN_HLEN;
        has_vlan = true;
    }
    if ether_type != ETH_P_IP {
        return Err(Reason::PassNotOurs);
    }
    let ip: *mut Ipv4Hdr = ptr_at(ctx, l3_offset).ok_or(Reason::PassMalformed)?;
    // SAFETY: the fixed 20-byte header was bounds-checked above.
    let (version_ihl, frag_off, ip_proto) =
        unsafe { ((*ip).version_ihl, (*ip).frag_off, (*ip).proto) };
    if ip_proto != proto::TCP && ip_proto != proto::UDP && ip_proto != proto::ICMP {
        return Err(Reason::PassNotOurs);
    }
    let ihl = (version_ihl & 0x0F) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return Err(Reason::PassMalformed);
    }
    // Options are kept as they are: the L4 header starts after them.
    let l4_offset = l3_offset + ihl * 4;
    if ctx.data() + l4_offset > ctx.data_end() {
        return Err(Reason::PassMalformed);
    }
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    // SAFETY: bounds-checked above.
    let (src_addr, dst_addr, ttl, tos, tot_len) = unsafe {
        (
            (*ip).src_addr,
            (*ip).dst_addr,
            (*ip).ttl,
            (*ip).tos,
            (*ip).tot_len,
        )
    };
    let mut packet = Packet {
        eth,
        ip,
        ports: core::ptr::null_mut(),
        l4_check: core::ptr::null_mut(),
        src_addr,
        dst_addr,
        src_port: 0,
        dst_port: 0,
        proto: ip_proto,
        ttl,
        tos,
        tot_len,
        is_fragment: u16::from_be(frag_off) & (IP_MF | IP_OFFSET) != 0,
        has_vlan,
        frame_len,
        l4_offset,
    };
    // ICMP has no ports; `icmp` parses what an error message quotes.
    if packet.is_fragment || ip_proto == proto::ICMP {
        return Ok(packet);
    }
    // TCP's checksum sits at byte 16 of a 20-byte minimum header, UDP's at byte 6 of 8.
    let check_offset = if ip_proto == proto::TCP {
        let _: *const [u8; 20] = ptr_at(ctx, l4_offset).ok_or(Reason::PassMalformed)?;
        16
    } else {
        let _: *const [u8; 8] = ptr_at(ctx, l4_offset).ok_or(Reason::PassMalformed)?;
        6
    };
    let ports: *mut Ports = ptr_at(ctx, l4_offset).ok_or(Reason::PassMalformed)?;
    let l4_check: *mut u16 = ptr_at(ctx, l4_offset + check_offset).ok_or(Reason::PassMalformed)?;
    // SAFETY: bounds-checked above.
    let (src_port, dst_port) = unsafe { ((*ports).src, (*ports).dst) };
    packet.ports = ports;
    packet.l4_check = l4_check;
    packet.src_port = src_port;
    packet.dst_port = dst_port;
    Ok(packet)
}
