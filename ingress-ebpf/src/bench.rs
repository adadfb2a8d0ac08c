//! The reference programs of `cargo xtask bench l4`, built as their own object
//! (`ingress-ebpf-bench`) so the agent's object holds only what the agent runs:
//! - `xdp_bench_floor`: parses Ethernet and IPv4 and returns XDP_TX, the floor our per-packet cost
//!   is compared with;
//! - `xdp_bench_redirect`: rewrites both MACs and redirects every IPv4 frame to one interface, the
//!   ceiling of what an XDP forwarder can do on the rig;
//! - `xdp_bench_redirect_reply`: the same with the map's second entry, attached to the other
//!   side, so the ceiling also carries replies back (the SNAT rig's round trip);
//! - `xdp_bench_sink`: counts IPv4 frames per CPU and drops them (other frames, ARP among them,
//!   go to the stack), so the receiving end counts delivered packets cheaply;
//! - `xdp_bench_reflect`: counts like the sink, then answers every UDP datagram by swapping
//!   MACs, addresses and ports and sending it back (XDP_TX): an endpoint that replies to every
//!   packet, at the cost of a sink, so the SNAT rig's replies return through the node (swapping
//!   leaves both checksums valid: the sums are the same);
//! - `xdp_bench_pass`: passes every frame; on the far end of a veth that stands for a wire (a
//!   lab router's port) it makes that end receive what XDP_TX sends from the near end, as a NIC
//!   would: the kernel wakes a veth peer for XDP_TX only when the peer has an XDP program (GRO
//!   alone is enough for redirects, not for XDP_TX).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

use ingress_common::bench::RedirectTarget;
use ingress_ebpf::parse::{ptr_at, EthHdr, Ipv4Hdr, Ports};

#[map(name = "BENCH_REDIRECT")]
static BENCH_REDIRECT: Array<RedirectTarget> = Array::with_max_entries(2, 0);

#[map(name = "BENCH_SINK_COUNT")]
static BENCH_SINK_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const ETH_P_IP: u16 = 0x0800;
const UDP: u8 = 17;

#[inline(always)]
fn ipv4_eth(ctx: &XdpContext) -> Option<*mut EthHdr> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked by ptr_at.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IP {
        return None;
    }
    let _: *const Ipv4Hdr = ptr_at(ctx, 14)?;
    Some(eth)
}

#[xdp]
pub(crate) fn xdp_bench_floor(ctx: XdpContext) -> u32 {
    match ipv4_eth(&ctx) {
        Some(_) => xdp_action::XDP_TX,
        None => xdp_action::XDP_PASS,
    }
}

#[xdp]
pub(crate) fn xdp_bench_redirect(ctx: XdpContext) -> u32 {
    redirect_to(&ctx, 0)
}

#[xdp]
pub(crate) fn xdp_bench_redirect_reply(ctx: XdpContext) -> u32 {
    redirect_to(&ctx, 1)
}

#[inline(always)]
fn redirect_to(ctx: &XdpContext, entry: u32) -> u32 {
    let Some(eth) = ipv4_eth(ctx) else {
        return xdp_action::XDP_PASS;
    };
    let Some(target) = BENCH_REDIRECT.get(entry) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked by ipv4_eth.
    unsafe {
        (*eth).dst = target.dst_mac;
        (*eth).src = target.src_mac;
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(target.ifindex, 0) as u32 }
}

#[xdp]
pub(crate) fn xdp_bench_sink(ctx: XdpContext) -> u32 {
    if ipv4_eth(&ctx).is_none() {
        return xdp_action::XDP_PASS;
    }
    if let Some(count) = BENCH_SINK_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub(crate) fn xdp_bench_reflect(ctx: XdpContext) -> u32 {
    let Some(eth) = ipv4_eth(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    let Some(ip) = ptr_at::<Ipv4Hdr>(&ctx, 14) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked by ptr_at.
    let (version_ihl, protocol) = unsafe { ((*ip).version_ihl, (*ip).proto) };
    // The rig sends no IP options: a fixed offset keeps the verifier's job trivial.
    if version_ihl != 0x45 || protocol != UDP {
        return xdp_action::XDP_PASS;
    }
    let Some(ports) = ptr_at::<Ports>(&ctx, 34) else {
        return xdp_action::XDP_PASS;
    };
    if let Some(count) = BENCH_SINK_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { *count += 1 };
    }
    // SAFETY: all three bounds-checked by ptr_at above.
    unsafe {
        core::mem::swap(&mut (*eth).dst, &mut (*eth).src);
        core::mem::swap(&mut (*ip).src_addr, &mut (*ip).dst_addr);
        core::mem::swap(&mut (*ports).src, &mut (*ports).dst);
    }
    xdp_action::XDP_TX
}

#[xdp]
pub(crate) fn xdp_bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
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
