//! Where a rewritten packet goes: the kernel FIB names the next hop and the interface; we set the
//! MACs and send it with XDP_TX (same interface) or XDP_REDIRECT. Without an answer from the FIB
//! (no neighbour entry yet, no route, packet above the MTU) the rewritten packet goes to the
//! stack, which forwards it (or answers with ICMP) and resolves the neighbour, so the next packet
//! takes the fast path.
//!
//! The FIB lookup costs more than everything else on the forward path together, so its answer for
//! a backend is cached per CPU in `NEXT_HOPS` for [`NEXT_HOP_TTL_JIFFIES`]: a changed route or
//! neighbour is picked up within that time, a reused backend id (new generation) at once, and a
//! packet longer than any the FIB accepted for that next hop always asks the FIB (MTU).

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use ingress_common::{NextHop, Reason, NEXT_HOP_TTL_JIFFIES, NEXT_HOP_VIA_STACK};

use ingress_ebpf::parse::Packet;

use crate::{
    maps::{NEXT_HOPS, NODE_INTERFACES},
    nat,
};

const AF_INET: u8 = 2;

/// Which direction a packet travels, and for a forward, whose next hop may be cached.
pub(crate) enum Direction {
    /// To backend `id` of generation `generation`; `now` in jiffies.
    ToBackend { id: u32, generation: u32, now: u64 },
    /// A reply back to the client.
    ToClient,
    /// A translated ICMP error, counted as `reason` whether sent with TX or redirect.
    IcmpError(Reason),
}

/// The reasons of one direction's transmissions: with XDP_TX, with a redirect, through the stack.
#[derive(Clone, Copy)]
struct Reasons {
    tx: Reason,
    redirect: Reason,
    stack: Reason,
}

impl Direction {
    #[inline(always)]
    fn reasons(&self) -> Reasons {
        match self {
            Direction::ToBackend { .. } => FORWARD_REASONS,
            Direction::ToClient => Reasons {
                tx: Reason::ReverseTx,
                redirect: Reason::ReverseRedirect,
                stack: Reason::ReverseStack,
            },
            Direction::IcmpError(reason) => Reasons {
                tx: *reason,
                redirect: *reason,
                stack: *reason,
            },
        }
    }
}

const FORWARD_REASONS: Reasons = Reasons {
    tx: Reason::ForwardTx,
    redirect: Reason::ForwardRedirect,
    stack: Reason::ForwardStack,
};

/// Sends the packet towards `dst` (its source is `src`), from the cache or the FIB.
#[inline(always)]
pub(crate) fn send(
    ctx: &XdpContext,
    packet: &Packet,
    src: u32,
    dst: u32,
    direction: Direction,
) -> (u32, Reason) {
    let ingress_ifindex = ctx.ingress_ifindex() as u32;
    let tot_len = u16::from_be(packet.tot_len);
    let mut cache: Option<(*mut NextHop, u32)> = None;
    let mut now = 0u64;
    if let Direction::ToBackend {
        id,
        generation,
        now: jiffies,
    } = direction
    {
        now = jiffies;
        if let Some(hop) = NEXT_HOPS.get_ptr_mut(id) {
            // SAFETY: per-CPU slot of a map value; only this CPU touches it now.
            let cached = unsafe { *hop };
            if cached.ifindex != 0
                && cached.generation == generation
                && cached.expires > now
                && tot_len <= cached.max_len
            {
                return transmit(
                    packet,
                    ingress_ifindex,
                    cached.ifindex,
                    cached.dst_mac,
                    cached.src_mac,
                    cached.flags & NEXT_HOP_VIA_STACK != 0,
                    FORWARD_REASONS,
                );
            }
            cache = Some((hop, generation));
        }
    }

    let mut params = zeroed_fib_params();
    params.family = AF_INET;
    params.l4_protocol = packet.proto;
    if !packet.ports.is_null() {
        // SAFETY: the ports were bounds-checked by parse::parse (null only for ICMP here).
        unsafe {
            params.sport = (*packet.ports).src;
            params.dport = (*packet.ports).dst;
        }
    }
    params.__bindgen_anon_1.tot_len = tot_len;
    params.__bindgen_anon_2.tos = packet.tos;
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
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
    // SAFETY: the value is a plain integer.
    let via_stack = params.ifindex != ingress_ifindex
        && unsafe { NODE_INTERFACES.get(params.ifindex) }.is_none();
    if let Some((hop, generation)) = cache {
        // SAFETY: per-CPU slot, see above.
        unsafe {
            let previous = *hop;
            let same = previous.ifindex == params.ifindex
                && previous.generation == generation
                && previous.dst_mac == params.dmac
                && previous.src_mac == params.smac;
            *hop = NextHop {
                ifindex: params.ifindex,
                generation,
                max_len: if same && previous.max_len > tot_len {
                    previous.max_len
                } else {
                    tot_len
                },
                dst_mac: params.dmac,
                src_mac: params.smac,
                flags: if via_stack { NEXT_HOP_VIA_STACK } else { 0 },
                expires: now + NEXT_HOP_TTL_JIFFIES,
            };
        }
    }
    transmit(
        packet,
        ingress_ifindex,
        params.ifindex,
        params.dmac,
        params.smac,
        via_stack,
        direction.reasons(),
    )
}

/// The node's address on the interface the FIB sends `dst` out of, for a SNAT source: `None`
/// when that is not one of the node's interfaces (or it has no address).
#[inline(always)]
pub(crate) fn egress_address(ctx: &XdpContext, packet: &Packet, dst: u32) -> Option<u32> {
    let (rc, params) = route(ctx, packet, dst);
    // Without a neighbour entry yet the FIB still names the interface.
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 && rc != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return None;
    }
    // SAFETY: the value is a plain integer.
    let addr = *unsafe { NODE_INTERFACES.get(params.ifindex) }?;
    (addr != 0).then_some(addr)
}

/// Whether the FIB would forward the packet as it is (a unicast route out of the node), not
/// deliver it locally or drop it.
#[inline(always)]
pub(crate) fn routed_onwards(ctx: &XdpContext, packet: &Packet) -> bool {
    let rc = route(ctx, packet, packet.dst_addr).0;
    rc == BPF_FIB_LKUP_RET_SUCCESS as i64 || rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64
}

/// The FIB's answer for the packet sent to `dst` (without ports: only the route matters here).
#[inline(always)]
fn route(ctx: &XdpContext, packet: &Packet, dst: u32) -> (i64, bpf_fib_lookup) {
    let mut params = zeroed_fib_params();
    params.family = AF_INET;
    params.l4_protocol = packet.proto;
    params.__bindgen_anon_1.tot_len = u16::from_be(packet.tot_len);
    params.__bindgen_anon_2.tos = packet.tos;
    params.__bindgen_anon_3.ipv4_src = packet.src_addr;
    params.__bindgen_anon_4.ipv4_dst = dst;
    params.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: params is a valid, fully initialised struct of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    (rc, params)
}

/// An all-zero `bpf_fib_lookup`, written as eight word stores: `mem::zeroed` compiles to a call
/// to a `memset` loop in BPF, on the path of every packet that asks the FIB.
#[inline(always)]
fn zeroed_fib_params() -> bpf_fib_lookup {
    const WORDS: usize = core::mem::size_of::<bpf_fib_lookup>() / 8;
    const _: () = assert!(core::mem::size_of::<bpf_fib_lookup>() == WORDS * 8);
    let mut params = core::mem::MaybeUninit::<bpf_fib_lookup>::uninit();
    let words = params.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < WORDS {
        // SAFETY: `i` < WORDS keeps every store inside the struct; volatile keeps LLVM from
        // turning the stores back into a memset call.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte was written above, and all-zero is a valid bpf_fib_lookup.
    unsafe { params.assume_init() }
}

/// Router duty and the verdict once the next hop is known. An egress interface XDP may not
/// redirect into gets the rewritten packet through the stack (TTL and MACs untouched: the stack
/// forwards it).
#[inline(always)]
#[allow(clippy::too_many_arguments)] // the next hop's parts, as the FIB and the cache give them
fn transmit(
    packet: &Packet,
    ingress_ifindex: u32,
    egress_ifindex: u32,
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    via_stack: bool,
    reasons: Reasons,
) -> (u32, Reason) {
    if via_stack {
        return (xdp_action::XDP_PASS, reasons.stack);
    }
    let same_interface = egress_ifindex == ingress_ifindex;
    if packet.has_vlan && !same_interface {
        return (xdp_action::XDP_PASS, Reason::PassVlanOtherInterface);
    }
    nat::decrement_ttl(packet);
    // SAFETY: the Ethernet header was bounds-checked by parse::parse.
    unsafe {
        (*packet.eth).dst = dst_mac;
        (*packet.eth).src = src_mac;
    }
    if same_interface {
        return (xdp_action::XDP_TX, reasons.tx);
    }
    // SAFETY: plain helper call with an interface index from the FIB.
    let action = unsafe { bpf_redirect(egress_ifindex, 0) } as u32;
    (action, reasons.redirect)
}
