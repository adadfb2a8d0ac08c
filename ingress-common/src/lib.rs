//! Types shared by the XDP programs (`ingress-ebpf`) and the agent (`ingress-userspace`).
//!
//! Everything here is `#[repr(C)]` and `Copy` so the same bytes mean the same thing in the kernel
//! and in user space. Addresses and ports are kept in network byte order exactly as they appear on
//! the wire, so the kernel never swaps bytes on the per-packet path. The pure helpers (`flow_hash`,
//! the checksum updates) live here so the unit tests in user space exercise the very code the kernel
//! runs.
#![no_std]
#![deny(missing_docs)]

/// Names of the maps in the eBPF object, so user space and kernel agree on them.
pub mod map_names {
    /// `HashMap<ServiceKey, ServiceEntry>`: which (VIP, port, protocol) are ours.
    pub const SERVICES: &str = "SERVICES";
    /// `HashMap<u32, u32>`: every VIP address (value: number of Service ports on it), so fragments,
    /// which may carry no ports, can be recognised as ours.
    pub const VIPS: &str = "VIPS";
    /// `Array<ServiceState>`, indexed by service id: lets an established flow be checked without
    /// a hash lookup.
    pub const SERVICE_STATES: &str = "SERVICE_STATES";
    /// `Array<u64>` of [`crate::FILTER_WORDS`] words: a bitmap over VIP addresses (see
    /// [`crate::filter_slot`]); a clear bit means "certainly not a VIP".
    pub const VIP_FILTER: &str = "VIP_FILTER";
    /// The same over backend addresses: a clear bit means "certainly not a reply from a backend".
    pub const BACKEND_FILTER: &str = "BACKEND_FILTER";
    /// `Array<BackendEntry>`, indexed by backend id.
    pub const BACKENDS: &str = "BACKENDS";
    /// `Array<MaglevChunk>`: every Service's Maglev lookup table, each in its own range.
    pub const MAGLEV_SLOTS: &str = "MAGLEV_SLOTS";
    /// `LruHashMap<FlowKey, FlowEntry>`: client → VIP flows and the backend they were given.
    pub const FLOWS: &str = "FLOWS";
    /// `LruHashMap<FlowKey, ReverseEntry>`: backend → client flows and the VIP to restore.
    pub const REVERSE_FLOWS: &str = "REVERSE_FLOWS";
    /// `PerCpuArray<NextHop>`, indexed by backend id: the FIB's last answer for the backend.
    pub const NEXT_HOPS: &str = "NEXT_HOPS";
    /// `PerCpuArray<TrafficCounters>`, indexed by service id.
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    /// `PerCpuArray<TrafficCounters>`, indexed by backend id.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// `PerCpuArray<u64>`, indexed by [`crate::Reason`].
    pub const REASON_STATS: &str = "REASON_STATS";
    /// `LpmTrie<SourceRangeKey, u8>`: the `loadBalancerSourceRanges` of every frontend that has
    /// some ([`crate::SERVICE_SOURCE_RANGES`]), keyed by service id and client prefix.
    pub const SOURCE_RANGES: &str = "SOURCE_RANGES";
    /// `LruHashMap<AffinityKey, AffinityEntry>`: `sessionAffinity: ClientIP`, client → backend.
    pub const AFFINITY: &str = "AFFINITY";
    /// `HashMap<u32, u32>`: the agent's own `--interface`s by index → the node's IPv4 address on
    /// each (wire order, 0 if none): the only interfaces the XDP program redirects frames into
    /// (anything else, a pod's veth above all, whose peer has no NAPI and would drop a redirected
    /// frame, gets the rewritten packet through the stack), and the SNAT source of flows to
    /// remote endpoints that leave by them.
    pub const NODE_INTERFACES: &str = "NODE_INTERFACES";
}

/// Name of the TC egress program that restores the frontend as the source of replies from local
/// endpoints, which reach the uplink through the stack.
pub const TC_EGRESS_PROGRAM: &str = "tc_reverse_nat";

/// Name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "xdp_ingress";

/// The reference programs `cargo xtask bench l4` compares against (never attached by the agent).
pub mod bench {
    /// Parses Ethernet and IPv4, returns XDP_TX: the per-packet floor.
    pub const FLOOR: &str = "xdp_bench_floor";
    /// Rewrites MACs and redirects: the forwarding ceiling.
    pub const REDIRECT: &str = "xdp_bench_redirect";
    /// Like [`REDIRECT`] with the map's second entry: the ceiling's way back.
    pub const REDIRECT_REPLY: &str = "xdp_bench_redirect_reply";
    /// Counts and drops IPv4 frames at the receiving end.
    pub const SINK: &str = "xdp_bench_sink";
    /// Counts like [`SINK`] and sends every UDP datagram back with addresses and ports swapped
    /// (XDP_TX): an endpoint that answers every packet.
    pub const REFLECT: &str = "xdp_bench_reflect";
    /// Passes every frame: on a lab's wire-side veth end, so XDP_TX from its peer is received.
    pub const PASS: &str = "xdp_bench_pass";
    /// `Array<RedirectTarget>`: entry 0 read by [`REDIRECT`], entry 1 by [`REDIRECT_REPLY`].
    pub const REDIRECT_MAP: &str = "BENCH_REDIRECT";
    /// `PerCpuArray<u64>` with one entry, written by [`SINK`] and [`REFLECT`].
    pub const SINK_COUNT_MAP: &str = "BENCH_SINK_COUNT";

    /// Where the redirect reference program sends frames.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct RedirectTarget {
        /// Egress interface index.
        pub ifindex: u32,
        /// Destination MAC to write.
        pub dst_mac: [u8; 6],
        /// Source MAC to write.
        pub src_mac: [u8; 6],
    }
}

/// Default sizes; user space may override them at load time (`EbpfLoader::map_max_entries`).
/// Chosen so 10,000 Services × 10 endpoints fit with room for updates, in under 100 MiB of kernel
/// memory on a 2-CPU node (per-CPU maps grow with the CPU count).
pub mod capacity {
    /// Services (VIP:port/protocol entries).
    pub const SERVICES: u32 = 16_384;
    /// Backend ids; ids are per (Service port, endpoint).
    pub const BACKENDS: u32 = 131_072;
    /// Maglev slots in all tables together, 4 bytes each (10,000 Services × 10 endpoints take
    /// 10,090,000; the rest is room for the new table of a Service being changed).
    pub const MAGLEV_SLOTS: u32 = 12 * 1024 * 1024;
    /// Connection-tracking entries, each direction (about 90 bytes each).
    pub const FLOWS: u32 = 131_072;
    /// SNAT mappings (flows to endpoints on other nodes), about 100 bytes each.
    pub const SNAT_FLOWS: u32 = 131_072;
    /// Source-range prefixes over all frontends.
    pub const SOURCE_RANGES: u32 = 65_536;
    /// Session-affinity entries (client, frontend).
    pub const AFFINITY: u32 = 131_072;
}

/// Slots per element of the Maglev slot array. Array values are padded to 8 bytes by the kernel, so
/// one u32 per element would waste half the memory; 16 slots per element waste nothing.
pub const MAGLEV_CHUNK_SLOTS: u32 = 16;

/// Sixteen consecutive Maglev slots; each holds a backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevChunk {
    /// Backend ids.
    pub slots: [u32; MAGLEV_CHUNK_SLOTS as usize],
}

/// IP protocol numbers we forward.
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP (only its error messages about a forwarded flow are translated).
    pub const ICMP: u8 = 1;
}

/// Identifies a Service port: the VIP, the port and the protocol, as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// VIP, network byte order.
    pub vip: u32,
    /// Port, network byte order.
    pub port: u16,
    /// [`proto::TCP`] or [`proto::UDP`].
    pub proto: u8,
    /// Always zero (padding is part of the hash key).
    pub pad: u8,
}

/// What the kernel knows about one Service port. Replaced as a whole by one map update, so a
/// packet sees either the old table or the new one, never a mix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Index into `SERVICE_STATS`.
    pub service_id: u32,
    /// First slot of this Service's Maglev table in `MAGLEV_SLOTS` (a multiple of the chunk size).
    pub table_offset: u32,
    /// Number of slots (a prime), 0 when the Service has no ready backend.
    pub table_size: u32,
    /// The epoch of this service id, as in `SERVICE_STATES`; flows remember it.
    pub epoch: u32,
    /// [`SERVICE_DROP_EMPTY`], [`SERVICE_SOURCE_RANGES`].
    pub flags: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0: no affinity.
    pub affinity_timeout: u32,
}

/// With no backend for new flows, drop them instead of refusing them: the Service has endpoints,
/// but none on this node and `externalTrafficPolicy: Local` (kube-proxy drops these too).
pub const SERVICE_DROP_EMPTY: u32 = 1;
/// New flows are allowed only from the frontend's prefixes in `SOURCE_RANGES`.
pub const SERVICE_SOURCE_RANGES: u32 = 2;

/// Key of `SOURCE_RANGES` (an LPM trie: the prefix length counts the service id's 32 bits, then
/// the client prefix's).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceRangeKey {
    /// Service id, network byte order (all 32 bits always match).
    pub service_id: u32,
    /// Client prefix, wire order.
    pub addr: u32,
}

/// Key of `AFFINITY`: one client of one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Service id of the frontend.
    pub service_id: u32,
    /// Client address, wire order.
    pub client: u32,
}

/// The backend a client sticks to, and since when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityEntry {
    /// Backend id.
    pub backend_id: u32,
    /// Its generation when chosen.
    pub backend_generation: u32,
    /// The frontend's service epoch when chosen (a reused service id forgets its clients).
    pub service_epoch: u32,
    /// Always zero.
    pub pad: u32,
    /// `bpf_ktime_get_coarse_ns` of the client's last new flow.
    pub last_used_ns: u64,
}

impl AffinityEntry {
    /// Whether the client's affinity has lapsed at `now_ns` (the coarse monotonic clock) for a
    /// frontend with this timeout in seconds.
    #[inline(always)]
    pub fn expired(&self, timeout_seconds: u32, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_used_ns) > timeout_seconds as u64 * 1_000_000_000
    }
}

/// What an established flow checks about its Service, by service id: that the id still belongs to
/// the frontend the flow was made for (same VIP, port, protocol and epoch).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceState {
    /// VIP, network byte order (0 when the id is unused).
    pub vip: u32,
    /// Port, network byte order.
    pub port: u16,
    /// Protocol.
    pub proto: u8,
    /// Always zero.
    pub pad: u8,
    /// Bumped whenever the id is given to a frontend or taken away.
    pub epoch: u32,
}

/// Words in each address filter bitmap (65,536 bits, 8 KiB).
pub const FILTER_WORDS: u32 = 1024;

/// Word index and bit mask of an address (wire order) in a filter bitmap.
#[inline(always)]
pub fn filter_slot(addr: u32) -> (u32, u64) {
    let h = addr.wrapping_mul(0x9E37_79B1) >> 16;
    ((h >> 6) & (FILTER_WORDS - 1), 1u64 << (h & 63))
}

/// Backend is live: existing flows keep it (and, unless [`BACKEND_DRAINING`], new flows and
/// affinity may pick it).
pub const BACKEND_ACTIVE: u32 = 1;
/// A serving, terminating endpoint (KEP-1669): it keeps its flows but takes no new ones; the
/// Maglev table does not name it and session affinity does not return to it.
pub const BACKEND_DRAINING: u32 = 2;
/// The endpoint runs on another node: its flows are SNATed to this node's address, so its
/// replies come back here to be translated.
pub const BACKEND_SNAT: u32 = 4;

/// SNAT source ports: 61000–65535, above Linux's ephemeral range (32768–60999, so no local
/// socket's connection can share a SNAT 5-tuple) and the nodePort range (30000–32767).
pub const SNAT_PORT_MIN: u16 = 61_000;
/// Number of SNAT ports (per backend address:port and node address: a 5-tuple, not a port, must
/// be unique).
pub const SNAT_PORT_COUNT: u32 = 4_536;
/// Ports tried per new SNAT flow before it is dropped and counted.
pub const SNAT_TRIES: u32 = 8;
/// How long an idle SNAT mapping holds its port (Cilium's defaults): TCP six hours, after a FIN
/// or RST ten seconds, UDP one minute.
pub const SNAT_TCP_IDLE_NS: u64 = 6 * 3600 * 1_000_000_000;
/// See [`SNAT_TCP_IDLE_NS`].
pub const SNAT_CLOSING_NS: u64 = 10 * 1_000_000_000;
/// See [`SNAT_TCP_IDLE_NS`].
pub const SNAT_UDP_IDLE_NS: u64 = 60 * 1_000_000_000;
/// A SNAT mapping whose flow saw a FIN or RST.
pub const REVERSE_CLOSING: u32 = 1;

impl ReverseEntry {
    /// Whether a SNAT mapping of a `protocol` flow no longer holds its port at `now_ns` (the
    /// coarse monotonic clock): idle past [`SNAT_TCP_IDLE_NS`], [`SNAT_CLOSING_NS`] or
    /// [`SNAT_UDP_IDLE_NS`].
    #[inline(always)]
    pub fn snat_expired(&self, protocol: u8, now_ns: u64) -> bool {
        let idle = if self.flags & REVERSE_CLOSING != 0 {
            SNAT_CLOSING_NS
        } else if protocol == proto::TCP {
            SNAT_TCP_IDLE_NS
        } else {
            SNAT_UDP_IDLE_NS
        };
        now_ns.saturating_sub(self.last_seen_ns) > idle
    }
}

/// One backend of one Service port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendEntry {
    /// Endpoint address, network byte order.
    pub addr: u32,
    /// Endpoint port, network byte order.
    pub port: u16,
    /// Always zero.
    pub pad: u16,
    /// [`BACKEND_ACTIVE`], [`BACKEND_DRAINING`], or 0 (retired).
    pub flags: u32,
    /// Bumped every time the id is given to a new backend, so a flow remembered for an old owner
    /// of the id is re-balanced instead of being sent to a stranger.
    pub generation: u32,
    /// The service id of the frontend the backend belongs to (a restarted agent adopts draining
    /// backends, which no Maglev table names, by it).
    pub service_id: u32,
}

/// A 5-tuple in one direction, as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src_addr: u32,
    /// Destination address.
    pub dst_addr: u32,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// IP protocol number, zero-extended: a whole word rather than a byte and three bytes of
    /// padding, because zeroing a `[u8; 3]` compiles to a call to `memset` in BPF.
    pub proto: u32,
}

/// How long a cached FIB answer for a backend is used before the FIB is asked again, in jiffies:
/// about 1 s at Debian's HZ=250 (0.26 s at HZ=1000, 2.6 s at HZ=100). Jiffies, because reading
/// them costs a few nanoseconds where a clock read costs twenty on the per-packet path.
pub const NEXT_HOP_TTL_JIFFIES: u64 = 256;

/// The FIB's answer for one backend, cached per CPU (the lookup is the most expensive step of a
/// forward). Valid while `generation` matches the backend's, `expires` lies ahead and the
/// packet is no longer than `max_len` (the longest packet the FIB accepted, so MTU checks stay).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    /// Egress interface.
    pub ifindex: u32,
    /// Backend generation the answer was for.
    pub generation: u32,
    /// Longest IPv4 total length the FIB accepted for this next hop.
    pub max_len: u16,
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// [`NEXT_HOP_VIA_STACK`] or 0.
    pub flags: u16,
    /// `bpf_jiffies64` after which the FIB is asked again.
    pub expires: u64,
}

/// The next hop's interface is not a redirect target: hand the rewritten packet to the stack.
pub const NEXT_HOP_VIA_STACK: u16 = 1;

/// Most node interfaces the agent attaches to.
pub const NODE_INTERFACES_MAX: u32 = 256;

impl FlowKey {
    /// The key of a packet from `src_addr:src_port` to `dst_addr:dst_port` (wire order).
    #[inline(always)]
    pub const fn new(
        src_addr: u32,
        dst_addr: u32,
        src_port: u16,
        dst_port: u16,
        proto: u8,
    ) -> Self {
        Self {
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            proto: proto as u32,
        }
    }
}

/// A tracked client → VIP flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// Backend chosen for the flow.
    pub backend_id: u32,
    /// The backend's generation when chosen.
    pub backend_generation: u32,
    /// Service the flow belongs to.
    pub service_id: u32,
    /// The service id's epoch when the flow was made.
    pub service_epoch: u32,
    /// The node address the flow's source is rewritten to (remote endpoint), or 0.
    pub snat_addr: u32,
    /// The SNAT source port, network byte order.
    pub snat_port: u16,
    /// Always zero.
    pub pad: u16,
}

/// Slots of the per-CPU flow cache (a power of two), 40 bytes each per CPU.
pub const FLOW_CACHE_SLOTS: u32 = 4096;

/// How long a flow cache hit may go without touching the flow's conntrack entry, in jiffies
/// (about 1 s at HZ=250). Touching it keeps the LRU from evicting a busy flow and puts back an
/// entry the LRU evicted anyway.
pub const FLOW_CACHE_TOUCH_JIFFIES: u64 = 256;

/// One slot of the per-CPU exact-match flow cache in front of `FLOWS`: a copy of a conntrack
/// entry under its full key, so an established flow costs an array lookup instead of a hash
/// lookup. The copy is checked against the Service's epoch and the backend's generation exactly
/// as the conntrack entry is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowCacheEntry {
    /// The flow.
    pub key: FlowKey,
    /// Its conntrack entry as last seen.
    pub flow: FlowEntry,
    /// Jiffies after which the next hit looks the conntrack entry up again.
    pub touch_after: u64,
}

/// The flow cache slot of a flow.
#[inline(always)]
pub fn flow_cache_slot(key: &FlowKey) -> u32 {
    flow_hash(
        key.src_addr,
        key.dst_addr,
        key.src_port,
        key.dst_port,
        key.proto as u8,
    ) & (FLOW_CACHE_SLOTS - 1)
}

/// A tracked backend → client flow: what to put back as the source, and for a SNATed flow (its
/// key's destination is this node's address and SNAT port) the client to send it to. For SNATed
/// flows this map is the SNAT table: an entry is written before its flow, with `BPF_NOEXIST`, so
/// a port is never given twice and no reply can arrive before its mapping.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReverseEntry {
    /// VIP, network byte order.
    pub vip: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// The client's port (SNAT only), network byte order.
    pub client_port: u16,
    /// The client's address (SNAT only), or 0: the reply's destination stays.
    pub client_addr: u32,
    /// [`REVERSE_CLOSING`] or 0.
    pub flags: u32,
    /// `bpf_ktime_get_coarse_ns` when the mapping was last used (SNAT only).
    pub last_seen_ns: u64,
}

/// Packet and byte counters, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded (frame length as received).
    pub bytes: u64,
    /// Flows that were given a backend (new or re-balanced).
    pub new_flows: u64,
    /// Packets dropped or refused because the Service had no ready backend.
    pub no_backend: u64,
    /// New connections refused (TCP RST, ICMP port unreachable) for want of an endpoint.
    pub rejected: u64,
    /// New connections dropped because the client is outside `loadBalancerSourceRanges`.
    pub denied: u64,
    /// New connections to a remote endpoint dropped because no SNAT port was free (or the egress
    /// interface has no address).
    pub snat_failures: u64,
}

/// Why a packet was passed, dropped or how it was forwarded: index into `REASON_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4/TCP/UDP or not for a VIP and not a tracked reply: handed to the stack untouched.
    PassNotOurs = 0,
    /// Truncated header (Ethernet, VLAN, IPv4 or L4): handed to the stack untouched.
    PassMalformed = 1,
    /// TTL would expire: handed to the stack untouched, which answers with ICMP.
    PassTtlExpired = 2,
    /// The FIB had no answer for the backend (no neighbour yet, no route): rewritten packet handed
    /// to the stack, which resolves the neighbour and forwards it.
    PassFibMiss = 3,
    /// A fragment addressed to a VIP: dropped, since non-first fragments carry no ports.
    DropFragment = 4,
    /// The Service has no ready backend: dropped.
    DropNoBackend = 5,
    /// Forwarded to a backend with XDP_TX (same interface).
    ForwardTx = 6,
    /// Forwarded to a backend with XDP_REDIRECT.
    ForwardRedirect = 7,
    /// A reply was rewritten to come from the VIP and sent with XDP_TX.
    ReverseTx = 8,
    /// A reply was rewritten to come from the VIP and redirected.
    ReverseRedirect = 9,
    /// Internal inconsistency (a table slot pointing at a missing backend): dropped.
    DropInternal = 10,
    /// A VLAN-tagged frame whose backend lies behind another interface: rewritten, then handed to
    /// the stack, which owns the VLAN devices and forwards it.
    PassVlanOtherInterface = 11,
    /// A TCP segment to a frontend without endpoints: answered with a RST from the frontend.
    RejectTcpReset = 12,
    /// A UDP datagram to a frontend without endpoints: answered with ICMP port unreachable.
    RejectIcmpUnreachable = 13,
    /// `externalTrafficPolicy: Local` and no endpoint on this node: dropped (as kube-proxy does).
    DropNoLocalEndpoint = 14,
    /// A new flow from a client outside the frontend's `loadBalancerSourceRanges`: dropped.
    DropSourceRange = 15,
    /// An ICMP error about a reply of a tracked flow (say, fragmentation needed on the client's
    /// path), translated for the backend and forwarded to it.
    IcmpErrorToBackend = 16,
    /// An ICMP error about a packet forwarded to a backend (its port unreachable, fragmentation
    /// needed on the backend's path), translated to be about the frontend and sent to the client.
    IcmpErrorToClient = 17,
    /// Rewritten towards a backend whose interface XDP may not redirect into (a local pod's
    /// veth): handed to the stack, which delivers it.
    ForwardStack = 18,
    /// A reply rewritten to come from the frontend, handed to the stack (its egress interface is
    /// not a redirect target).
    ReverseStack = 19,
    /// A reply from a local endpoint that left through the stack: the frontend restored as its
    /// source by the TC egress program on the uplink.
    ReverseTcEgress = 20,
    /// A new flow to a remote endpoint found no free SNAT port (or its egress interface has no
    /// address): dropped and counted.
    DropSnatFailed = 21,
}

impl Reason {
    /// Number of reasons (size of `REASON_STATS`).
    pub const COUNT: u32 = 22;
    /// Every reason, in index order.
    pub const ALL: [Reason; Reason::COUNT as usize] = [
        Reason::PassNotOurs,
        Reason::PassMalformed,
        Reason::PassTtlExpired,
        Reason::PassFibMiss,
        Reason::DropFragment,
        Reason::DropNoBackend,
        Reason::ForwardTx,
        Reason::ForwardRedirect,
        Reason::ReverseTx,
        Reason::ReverseRedirect,
        Reason::DropInternal,
        Reason::PassVlanOtherInterface,
        Reason::RejectTcpReset,
        Reason::RejectIcmpUnreachable,
        Reason::DropNoLocalEndpoint,
        Reason::DropSourceRange,
        Reason::IcmpErrorToBackend,
        Reason::IcmpErrorToClient,
        Reason::ForwardStack,
        Reason::ReverseStack,
        Reason::ReverseTcEgress,
        Reason::DropSnatFailed,
    ];

    /// Stable snake-case name for logs, metrics and `inspect`.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotOurs => "pass_not_ours",
            Reason::PassMalformed => "pass_malformed",
            Reason::PassTtlExpired => "pass_ttl_expired",
            Reason::PassFibMiss => "pass_fib_miss",
            Reason::DropFragment => "drop_fragment",
            Reason::DropNoBackend => "drop_no_backend",
            Reason::ForwardTx => "forward_tx",
            Reason::ForwardRedirect => "forward_redirect",
            Reason::ReverseTx => "reverse_tx",
            Reason::ReverseRedirect => "reverse_redirect",
            Reason::DropInternal => "drop_internal",
            Reason::PassVlanOtherInterface => "pass_vlan_other_interface",
            Reason::RejectTcpReset => "reject_tcp_reset",
            Reason::RejectIcmpUnreachable => "reject_icmp_unreachable",
            Reason::DropNoLocalEndpoint => "drop_no_local_endpoint",
            Reason::DropSourceRange => "drop_source_range",
            Reason::IcmpErrorToBackend => "icmp_error_to_backend",
            Reason::IcmpErrorToClient => "icmp_error_to_client",
            Reason::ForwardStack => "forward_stack",
            Reason::ReverseStack => "reverse_stack",
            Reason::ReverseTcEgress => "reverse_tc_egress",
            Reason::DropSnatFailed => "drop_snat_failed",
        }
    }
}

/// Hash of a flow's 5-tuple, used to pick a Maglev slot. Takes the wire-order fields as they sit
/// in memory, so kernel and user space compute the same value on any little-endian host.
#[inline(always)]
pub fn flow_hash(src_addr: u32, dst_addr: u32, src_port: u16, dst_port: u16, proto: u8) -> u32 {
    // Two rounds of a murmur3-style finalizer over the tuple folded into 64 bits: cheap (no loop,
    // no table), and well mixed in the low bits, which the modulo by a prime then uses.
    let a = ((src_addr as u64) << 32) | dst_addr as u64;
    let b = ((src_port as u64) << 32) | ((dst_port as u64) << 8) | proto as u64;
    let mut h = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^= h >> 33;
    h as u32
}

/// Folds a 32-bit one's complement sum into 16 bits.
#[inline(always)]
pub fn csum_fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 incremental update of a checksum field (as read from the packet, any byte order) when
/// a 16-bit word changes from `old` to `new` (same byte order as the checksum).
#[inline(always)]
pub fn csum_replace2(check: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    let sum = (!check as u32) + (!old as u32 & 0xffff) + new as u32;
    !csum_fold(sum)
}

/// RFC 1624 incremental update when a 32-bit field changes (e.g. an IPv4 address).
#[inline(always)]
pub fn csum_replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check as u32)
        + (!(old as u16) as u32)
        + (!((old >> 16) as u16) as u32)
        + (new & 0xffff)
        + (new >> 16);
    !csum_fold(sum)
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, contain only integers and have no implicit padding
    // (explicit `pad` fields), so every bit pattern is valid.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BackendEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowCacheEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ReverseEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TrafficCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MaglevChunk {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SourceRangeKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for AffinityKey {}
    // SAFETY: as above (4 × 4 + 8 bytes, no padding).
    unsafe impl aya::Pod for AffinityEntry {}
    // SAFETY: as above (4 + 4 + 2 + 6 + 6 + 2 + 8 bytes, no padding).
    unsafe impl aya::Pod for NextHop {}
    // SAFETY: as above (4 + 6 + 6 bytes, no padding).
    unsafe impl aya::Pod for crate::bench::RedirectTarget {}
}
