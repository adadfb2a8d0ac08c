//! Where a rewritten packet goes: the kernel FIB names the next hop and the interface; we set the
//! MACs and send it with XDP_TX (same interface) or XDP_REDIRECT. Without an answer from the FIB
//! (no neighbour entry yet, no route) the rewritten packet goes to the stack, which forwards it
//! and resolves the neighbour, so the next packet takes the fast path.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use ingress_common::Reason;

use crate::{nat, parse::Packet};

const AF_INET: u8 = 2;

/// Looks up the next hop for `src → dst` and sends the packet there. `towards_backend` only picks
/// which counter the verdict is recorded under.
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    packet: &Packet,
    src: u32,
    dst: u32,
    towards_backend: bool,
) -> (u32, Reason) {
    // SAFETY: bpf_fib_lookup is plain data; all-zero is a valid starting value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = packet.proto;
    // SAFETY: the ports were bounds-checked by parse::parse (never null for non-fragments).
    unsafe {
        params.sport = (*packet.ports).src;
        params.dport = (*packet.ports).dst;
    }
    params.__bindgen_anon_1.tot_len = u16::from_be(packet.tot_len);
    params.__bindgen_anon_2.tos = packet.tos;
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    let ingress_ifindex = ctx.ingress_ifindex() as u32;
    params.ifindex = ingress_ifindex;
    // SAFETY: params is a valid, fully initialised struct of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return (xdp_action::XDP_PASS, Reason::PassFibMiss);
    }
    let same_interface = params.ifindex == ingress_ifindex;
    if packet.has_vlan && !same_interface {
        return (xdp_action::XDP_PASS, Reason::PassVlanOtherInterface);
    }
    nat::decrement_ttl(packet);
    // SAFETY: the Ethernet header was bounds-checked by parse::parse.
    unsafe {
        (*packet.eth).dst = params.dmac;
        (*packet.eth).src = params.smac;
    }
    if same_interface {
        let reason = if towards_backend {
            Reason::ForwardTx
        } else {
            Reason::ReverseTx
        };
        return (xdp_action::XDP_TX, reason);
    }
    // SAFETY: plain helper call with an interface index from the FIB.
    let action = unsafe { bpf_redirect(params.ifindex, 0) } as u32;
    let reason = if towards_backend {
        Reason::ForwardRedirect
    } else {
        Reason::ReverseRedirect
    };
    (action, reason)
}
