//! The TC egress program on the uplinks: replies of local endpoints (pods on this node) leave
//! through the stack, not through an XDP hook, so their frontend is restored here. Attached to
//! the agent's `--interface`s only, it serves pods created at any time without knowing their
//! veths (Cilium does the same at TC).
//!
//! At TC the packet is an skb, so the kernel's checksum helpers keep a partial checksum (a pod's
//! veth leaves checksum offload on: the TCP/UDP checksum holds only the pseudo-header sum until
//! the device completes it) correct: `BPF_F_PSEUDO_HDR` updates an address in the pseudo-header
//! sum, a port change leaves a partial checksum alone. XDP cannot know a checksum is partial,
//! which is why replies are not rewritten there on their way out of a pod.

use aya_ebpf::{macros::classifier, programs::TcContext};
use ingress_common::{proto, FlowKey, Reason};
use ingress_ebpf::parse::{ETH_HLEN, ETH_P_IP, IP_MF, IP_OFFSET};

use crate::{
    maps::{BACKEND_FILTER, REVERSE_FLOWS},
    maybe_in, stats,
};

/// `TCX_NEXT` / `TC_ACT_UNSPEC`: let the next program (another agent's, a CNI's) decide.
const TC_NEXT: i32 = -1;
/// `bpf_l4_csum_replace` flags: the field is in the pseudo-header; a UDP checksum of 0 stays 0.
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;

/// Entry point: every packet leaving an uplink through the stack.
#[classifier]
pub(crate) fn tc_reverse_nat(ctx: TcContext) -> i32 {
    if let Some(reason) = restore_frontend(&ctx) {
        stats::count_reason(reason);
    }
    TC_NEXT
}

#[inline(always)]
fn restore_frontend(ctx: &TcContext) -> Option<Reason> {
    if u16::from_be(ctx.load::<u16>(12).ok()?) != ETH_P_IP {
        return None;
    }
    let version_ihl = ctx.load::<u8>(ETH_HLEN).ok()?;
    let protocol = ctx.load::<u8>(ETH_HLEN + 9).ok()?;
    if version_ihl >> 4 != 4 || (protocol != proto::TCP && protocol != proto::UDP) {
        return None;
    }
    if u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).ok()?) & (IP_MF | IP_OFFSET) != 0 {
        return None;
    }
    let src = ctx.load::<u32>(ETH_HLEN + 12).ok()?;
    if !maybe_in(&BACKEND_FILTER, src) {
        return None;
    }
    let dst = ctx.load::<u32>(ETH_HLEN + 16).ok()?;
    let l4 = ETH_HLEN + ((version_ihl & 0x0F) as usize) * 4;
    let src_port = ctx.load::<u16>(l4).ok()?;
    let dst_port = ctx.load::<u16>(l4 + 2).ok()?;
    let key = FlowKey::new(src, dst, src_port, dst_port, protocol);
    // SAFETY: ReverseEntry is plain data.
    let reverse = *unsafe { REVERSE_FLOWS.get(key) }?;
    if reverse.client_addr != 0 {
        // A SNAT mapping: its replies arrive at XDP, never leave from here.
        return None;
    }
    let (check, mangled) = if protocol == proto::TCP {
        (l4 + 16, 0)
    } else {
        (l4 + 6, BPF_F_MARK_MANGLED_0)
    };
    ctx.l4_csum_replace(
        check,
        src as u64,
        reverse.vip as u64,
        BPF_F_PSEUDO_HDR | mangled | 4,
    )
    .ok()?;
    ctx.l4_csum_replace(check, src_port as u64, reverse.port as u64, mangled | 2)
        .ok()?;
    ctx.l3_csum_replace(ETH_HLEN + 10, src as u64, reverse.vip as u64, 4)
        .ok()?;
    ctx.store(ETH_HLEN + 12, &reverse.vip, 0).ok()?;
    ctx.store(l4, &reverse.port, 0).ok()?;
    Some(Reason::ReverseTcEgress)
}
