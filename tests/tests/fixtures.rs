//! Packet fixtures for the XDP program, run through BPF_PROG_TEST_RUN (aya's `TestRun`).
//!
//! Each fixture is a description, an input frame, the ingress interface, the expected verdict, the
//! expected output bytes (compared exactly) and the reason counter that must move. Frames are built
//! with etherparse, and every expected output is built again from scratch from its fields, so its
//! checksums come from etherparse's full computation, never from the datapath's incremental code.
//!
//! The FIB answers come from a network namespace made for each test (`fixtures/rig.rs`): the test
//! run executes on a thread inside it, and `ctx_in` names the interface the frame arrives on. The
//! maps are programmed the way the agent programs them: an `L4Plan` applied by `DatapathSync`.
//!
//! Needs root. Run: `cargo test -p xdp-ingress-tests --test fixtures`.

#[path = "fixtures/packets.rs"]
mod packets;
#[path = "fixtures/rig.rs"]
mod rig;

use std::{collections::BTreeMap, net::Ipv4Addr, time::Instant};

use anyhow::{ensure, Context as _, Result};
use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type};
use ingress_common::{flow_cache_slot, proto, FlowEntry, Reason, BACKEND_ACTIVE};
use packets::{Frame, TPID_8021AD, TPID_8021Q};
use rig::*;
use xdp_ingress::{
    datapath::sync::GRACE_PERIOD,
    translate::l4::{Endpoint, Frontend, L4Plan, Protocol},
};

/// A client frame to `dst:dport` over TCP, as it arrives on the client-facing interface.
fn client_tcp(sport: u16, dst: Ipv4Addr, dport: u16) -> Frame {
    Frame::tcp(CLIENT, sport, dst, dport).macs(CLIENT_MAC, FXC_MAC)
}

fn client_udp(sport: u16, dst: Ipv4Addr, dport: u16) -> Frame {
    Frame::udp(CLIENT, sport, dst, dport).macs(CLIENT_MAC, FXC_MAC)
}

fn proto_of(frontend: Frontend) -> u8 {
    match frontend.protocol {
        Protocol::Tcp => proto::TCP,
        Protocol::Udp => proto::UDP,
    }
}

/// What a forwarded frame must look like: DNAT to `backend`, TTL - 1, MACs of the next hop.
fn forwarded(input: &Frame, backend: Endpoint, smac: [u8; 6], dmac: [u8; 6]) -> Frame {
    input
        .clone()
        .dst(backend.addr, backend.port)
        .ttl(input.ttl - 1)
        .macs(smac, dmac)
}

/// The usual forward case: a client frame redirected to the backend side, to the backend Maglev
/// picks for it, and the flow tracked.
fn forward_fixture(
    lb: &Lb,
    description: &str,
    input: &Frame,
    frontend: Frontend,
) -> Result<Fixture> {
    let backend = lb.maglev_pick(frontend, input)?;
    let output = forwarded(input, backend, FXB_MAC, neighbour_mac(backend.addr));
    Ok(Fixture::rewritten(
        description,
        Side::Client,
        input,
        XDP_REDIRECT,
        &output,
        Reason::ForwardRedirect,
    )
    .tracks(flow_key(input, proto_of(frontend)), backend))
}

/// A backend's reply to `request` (which was forwarded to `backend`), as it arrives.
fn reply_to(
    request: &Frame,
    backend: Endpoint,
    arrives_from: [u8; 6],
    arrives_to: [u8; 6],
) -> Frame {
    let (sport, _) = request.ports();
    let mut reply = request
        .clone()
        .src(backend.addr, backend.port)
        .dst(request.src, sport)
        .macs(arrives_from, arrives_to)
        .payload(b"reply");
    reply.options.clear();
    reply.vlans.clear();
    reply.id = 0x4321;
    if let packets::L4::Tcp { .. } = reply.l4 {
        reply = reply.data_segment(0x0a0b_0c0d, 0x0102_0305);
    }
    reply
}

/// Sets the 2-byte payload so that the serialised frame's L4 checksum field (at `offset` from the
/// start of the L4 header) holds `wanted`. Appending a word equal to the checksum computed without
/// it makes the one's complement sum 0xFFFF, i.e. a computed checksum of 0; etherparse then writes
/// 0x0000 for TCP and 0xFFFF for UDP. Verified on the serialised bytes.
fn with_checksum_edge(frame: Frame, check_offset: usize, wanted: u16) -> Result<Frame> {
    let l4 = 14 + 4 * frame.vlans.len() + 20 + frame.options.len();
    let read = |f: &Frame| {
        let b = f.bytes();
        u16::from_be_bytes([b[l4 + check_offset], b[l4 + check_offset + 1]])
    };
    let zero = frame.clone().payload(&[0, 0]);
    let candidate = zero.clone().payload(&read(&zero).to_be_bytes());
    ensure!(
        read(&candidate) == wanted,
        "could not build a frame with checksum {wanted:#06x}"
    );
    Ok(candidate)
}

/// Patches byte `at` of a serialised frame (for headers etherparse refuses to build).
fn patched(mut bytes: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
    bytes[at] = value;
    bytes
}

fn truncated(mut bytes: Vec<u8>, len: usize) -> Vec<u8> {
    bytes.truncate(len);
    bytes
}

/// A frame rewritten (DNAT or reverse NAT) and then handed to the stack, which routes it: TTL and
/// MACs stay as they arrived.
fn passed_rewritten(
    description: &str,
    ingress: Side,
    input: &Frame,
    output: &Frame,
    reason: Reason,
) -> Fixture {
    Fixture::rewritten(description, ingress, input, XDP_PASS, output, reason)
}

/// Client → VIP cases: DNAT, checksums, TTL, MACs, verdicts, FIB misses.
fn forward_cases(lb: &Lb) -> Result<Vec<Fixture>> {
    let web = tcp(VIP, 80);
    let dns = udp(VIP, 53);
    let mut f = Vec::new();

    let syn = client_tcp(40001, VIP, 80);
    f.push(forward_fixture(
        lb,
        "TCP SYN to VIP:80: DNAT, redirect",
        &syn,
        web,
    )?);
    let data = client_tcp(40002, VIP, 80)
        .data_segment(7, 9)
        .payload(&[0xab; 100]);
    f.push(forward_fixture(
        lb,
        "TCP segment, 100 bytes payload",
        &data,
        web,
    )?);
    let query = client_udp(40003, VIP, 53).payload(b"\x12\x34\x01\x00\x00\x01query");
    f.push(forward_fixture(
        lb,
        "UDP to VIP:53: DNAT to :8053",
        &query,
        dns,
    )?);
    let no_csum = client_udp(40004, VIP, 53)
        .payload(b"no checksum")
        .no_udp_checksum();
    f.push(forward_fixture(
        lb,
        "UDP checksum 0 (none) stays 0",
        &no_csum,
        dns,
    )?);
    {
        // The rewritten datagram's checksum computes to 0: it must go out as 0xFFFF.
        let input = client_udp(40005, VIP, 53);
        let backend = lb.maglev_pick(dns, &input)?;
        let out = forwarded(&input, backend, FXB_MAC, neighbour_mac(backend.addr));
        let out = with_checksum_edge(out, 6, 0xFFFF)?;
        let input = input.payload(&out.payload);
        f.push(
            Fixture::rewritten(
                "UDP whose new checksum computes to 0 goes out as 0xFFFF",
                Side::Client,
                &input,
                XDP_REDIRECT,
                &out,
                Reason::ForwardRedirect,
            )
            .tracks(flow_key(&input, proto::UDP), backend),
        );
    }
    let input = with_checksum_edge(client_udp(40006, VIP, 53), 6, 0xFFFF)?;
    f.push(forward_fixture(
        lb,
        "UDP arriving with checksum 0xFFFF",
        &input,
        dns,
    )?);
    {
        let input = client_tcp(40007, VIP, 80).data_segment(1, 1);
        let backend = lb.maglev_pick(web, &input)?;
        let out = forwarded(&input, backend, FXB_MAC, neighbour_mac(backend.addr));
        let out = with_checksum_edge(out, 16, 0x0000)?;
        let input = input.payload(&out.payload);
        f.push(
            Fixture::rewritten(
                "TCP whose new checksum is 0x0000",
                Side::Client,
                &input,
                XDP_REDIRECT,
                &out,
                Reason::ForwardRedirect,
            )
            .tracks(flow_key(&input, proto::TCP), backend),
        );
    }
    let input = with_checksum_edge(client_tcp(40008, VIP, 80).data_segment(1, 1), 16, 0)?;
    f.push(forward_fixture(
        lb,
        "TCP arriving with checksum 0x0000",
        &input,
        web,
    )?);
    let router_alert = client_tcp(40009, VIP, 80).options(&[0x94, 0x04, 0x00, 0x00]);
    f.push(forward_fixture(
        lb,
        "IPv4 option (router alert, IHL 6) kept, ports found after it",
        &router_alert,
        web,
    )?);
    let mut nops = vec![0x01; 39];
    nops.push(0x00);
    let max_options = client_udp(40010, VIP, 53).options(&nops).payload(b"ihl 15");
    f.push(forward_fixture(
        lb,
        "IHL 15 (40 bytes of options), UDP",
        &max_options,
        dns,
    )?);
    let ttl2 = client_tcp(40011, VIP, 80).ttl(2);
    f.push(forward_fixture(
        lb,
        "TTL 2 is forwarded with TTL 1",
        &ttl2,
        web,
    )?);
    let mut tos = client_tcp(40012, VIP, 80);
    tos.dscp = 46;
    tos.ecn = 2;
    tos.id = 0xbeef;
    tos.df = false;
    f.push(forward_fixture(
        lb,
        "DSCP, ECN, IP id, DF=0 preserved",
        &tos,
        web,
    )?);
    let padded = client_tcp(40013, VIP, 80).trailer(&[0; 6]);
    f.push(forward_fixture(
        lb,
        "60-byte frame: Ethernet padding kept",
        &padded,
        web,
    )?);
    let big = client_tcp(40014, VIP, 80)
        .data_segment(1, 1)
        .payload(&[0x5a; 1400]);
    f.push(forward_fixture(
        lb,
        "1454-byte frame, below the egress MTU",
        &big,
        web,
    )?);
    {
        let input = client_tcp(40015, VIP_REMOTE, 80);
        let backend = Endpoint {
            addr: REMOTE_BACKEND,
            port: 8080,
        };
        f.push(
            Fixture::rewritten(
                "backend behind a router: next hop MAC is the router's",
                Side::Client,
                &input,
                XDP_REDIRECT,
                &forwarded(&input, backend, FXB_MAC, BACKEND_GW_MAC),
                Reason::ForwardRedirect,
            )
            .tracks(flow_key(&input, proto::TCP), backend),
        );
    }
    let local = Endpoint {
        addr: LOCAL_BACKEND,
        port: 8080,
    };
    let local_mac = neighbour_mac(LOCAL_BACKEND);
    for (description, input) in [
        (
            "backend on the ingress interface: XDP_TX",
            client_tcp(40016, VIP_LOCAL, 80),
        ),
        (
            "802.1Q tag, backend on the ingress interface: TX, tag kept",
            client_tcp(40017, VIP_LOCAL, 80).vlan(TPID_8021Q, 100),
        ),
        (
            "802.1ad single tag, backend on the ingress interface: TX",
            client_tcp(40018, VIP_LOCAL, 80).vlan(TPID_8021AD, 200),
        ),
    ] {
        f.push(
            Fixture::rewritten(
                description,
                Side::Client,
                &input,
                XDP_TX,
                &forwarded(&input, local, FXC_MAC, local_mac),
                Reason::ForwardTx,
            )
            .tracks(flow_key(&input, proto::TCP), local),
        );
    }
    {
        let input = client_tcp(40019, VIP, 80).vlan(TPID_8021Q, 100);
        let backend = lb.maglev_pick(web, &input)?;
        f.push(
            passed_rewritten(
                "802.1Q tag, backend elsewhere: PASS, DNATed, tag/MACs/TTL kept",
                Side::Client,
                &input,
                &input.clone().dst(backend.addr, backend.port),
                Reason::PassVlanOtherInterface,
            )
            .tracks(flow_key(&input, proto::TCP), backend),
        );
    }
    for (description, vip, addr) in [
        (
            "FIB miss (no neighbour): PASS, DNATed, TTL/MACs kept",
            VIP_UNRESOLVED,
            UNRESOLVED_BACKEND,
        ),
        (
            "FIB miss (no route): PASS, DNATed, TTL/MACs kept",
            VIP_UNROUTED,
            UNROUTED_BACKEND,
        ),
        (
            "backend is the node's own address: PASS, DNATed",
            VIP_HOST,
            HOST_BACKEND,
        ),
    ] {
        let input = client_tcp(40020, vip, 80);
        let backend = Endpoint { addr, port: 8080 };
        f.push(
            passed_rewritten(
                description,
                Side::Client,
                &input,
                &input.clone().dst(backend.addr, backend.port),
                Reason::PassFibMiss,
            )
            .tracks(flow_key(&input, proto::TCP), backend),
        );
    }
    {
        // A 1654-byte IP packet, egress MTU 1500: the FIB answers FRAG_NEEDED.
        let input = client_tcp(40021, VIP, 80)
            .data_segment(1, 1)
            .payload(&[0x77; 1600]);
        let backend = lb.maglev_pick(web, &input)?;
        f.push(
            passed_rewritten(
                "above the egress MTU: PASS (frag needed), DNATed, TTL/MACs kept",
                Side::Client,
                &input,
                &input.clone().dst(backend.addr, backend.port),
                Reason::PassFibMiss,
            )
            .tracks(flow_key(&input, proto::TCP), backend),
        );
    }
    f.push(Fixture::untouched(
        "Service without backends: DROP",
        Side::Client,
        client_tcp(40022, VIP_EMPTY, 80).bytes(),
        XDP_DROP,
        Reason::DropNoBackend,
    ));
    f.push(Fixture::untouched(
        "TTL 1 to a VIP: PASS untouched (the stack answers)",
        Side::Client,
        client_tcp(40023, VIP, 80).ttl(1).bytes(),
        XDP_PASS,
        Reason::PassTtlExpired,
    ));
    f.push(Fixture::untouched(
        "TTL 0 to a VIP: PASS untouched",
        Side::Client,
        client_udp(40024, VIP, 53).ttl(0).bytes(),
        XDP_PASS,
        Reason::PassTtlExpired,
    ));
    Ok(f)
}

/// The reply of a tracked flow, restored to come from `vip:port` and sent to `next_hop`.
fn reversed(reply: &Frame, vip: Ipv4Addr, port: u16, next_hop: [u8; 6]) -> Frame {
    reply
        .clone()
        .src(vip, port)
        .ttl(reply.ttl - 1)
        .macs(FXC_MAC, next_hop)
}

/// Backend → client cases. Each first sends the client's request (a fixture of its own), so the
/// reply's REVERSE_FLOWS entry exists.
fn reverse_cases(lb: &Lb) -> Result<Vec<Fixture>> {
    let web = tcp(VIP, 80);
    let dns = udp(VIP, 53);
    let mut f = Vec::new();
    let arriving = |request: &Frame, backend: Endpoint| {
        reply_to(request, backend, neighbour_mac(backend.addr), FXB_MAC)
    };

    let request = client_tcp(41001, VIP, 80);
    f.push(forward_fixture(
        lb,
        "request of the TCP reply cases",
        &request,
        web,
    )?);
    let backend = lb.maglev_pick(web, &request)?;
    let reply = arriving(&request, backend);
    f.push(Fixture::rewritten(
        "TCP reply: source back to VIP:80, redirected to the client",
        Side::Backend,
        &reply,
        XDP_REDIRECT,
        &reversed(&reply, VIP, 80, CLIENT_MAC),
        Reason::ReverseRedirect,
    ));
    f.push(Fixture::untouched(
        "TCP reply with TTL 1: PASS untouched",
        Side::Backend,
        reply.clone().ttl(1).bytes(),
        XDP_PASS,
        Reason::PassTtlExpired,
    ));
    f.push(Fixture::untouched(
        "backend traffic from a port no flow uses: PASS untouched",
        Side::Backend,
        reply.clone().src(backend.addr, 9999).bytes(),
        XDP_PASS,
        Reason::PassNotOurs,
    ));
    let tagged = reply.clone().vlan(TPID_8021Q, 300);
    f.push(passed_rewritten(
        "802.1Q-tagged reply, client elsewhere: PASS, source restored",
        Side::Backend,
        &tagged,
        &tagged.clone().src(VIP, 80),
        Reason::PassVlanOtherInterface,
    ));
    let fragment = Frame::raw(backend.addr, CLIENT, proto::TCP)
        .macs(neighbour_mac(backend.addr), FXB_MAC)
        .payload(&[0x55; 24])
        .fragment(false, 185);
    f.push(Fixture::untouched(
        "reply fragment: not reverse-NATed, PASS untouched",
        Side::Backend,
        fragment.bytes(),
        XDP_PASS,
        Reason::PassNotOurs,
    ));

    let query = client_udp(41002, VIP, 53).payload(b"query");
    f.push(forward_fixture(
        lb,
        "request of the UDP reply case",
        &query,
        dns,
    )?);
    let dns_backend = lb.maglev_pick(dns, &query)?;
    let reply = arriving(&query, dns_backend);
    f.push(Fixture::rewritten(
        "UDP reply: source back to VIP:53",
        Side::Backend,
        &reply,
        XDP_REDIRECT,
        &reversed(&reply, VIP, 53, CLIENT_MAC),
        Reason::ReverseRedirect,
    ));
    // ICMP errors about forwarded flows are not translated (IPVS and Katran do translate them).
    let forwarded_query = forwarded(&query, dns_backend, FXB_MAC, [0; 6]).bytes();
    let unreachable = Frame::icmp_error(
        reply.src,
        CLIENT,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
        &forwarded_query[14..],
    )
    .macs(neighbour_mac(reply.src), FXB_MAC);
    f.push(Fixture::untouched(
        "ICMP port unreachable from a backend: not translated, PASS",
        Side::Backend,
        unreachable.bytes(),
        XDP_PASS,
        Reason::PassNotOurs,
    ));
    let query = client_udp(41003, VIP, 53).no_udp_checksum();
    f.push(forward_fixture(
        lb,
        "request without UDP checksum",
        &query,
        dns,
    )?);
    let reply = arriving(&query, lb.maglev_pick(dns, &query)?).no_udp_checksum();
    f.push(Fixture::rewritten(
        "UDP reply without checksum: stays 0",
        Side::Backend,
        &reply,
        XDP_REDIRECT,
        &reversed(&reply, VIP, 53, CLIENT_MAC),
        Reason::ReverseRedirect,
    ));

    let request = client_tcp(41004, VIP_LOCAL, 80);
    let local = Endpoint {
        addr: LOCAL_BACKEND,
        port: 8080,
    };
    f.push(
        Fixture::rewritten(
            "request to the backend on the client side",
            Side::Client,
            &request,
            XDP_TX,
            &forwarded(&request, local, FXC_MAC, neighbour_mac(LOCAL_BACKEND)),
            Reason::ForwardTx,
        )
        .tracks(flow_key(&request, proto::TCP), local),
    );
    let reply = reply_to(&request, local, neighbour_mac(LOCAL_BACKEND), FXC_MAC);
    f.push(Fixture::rewritten(
        "reply from a backend on the client's interface: XDP_TX",
        Side::Client,
        &reply,
        XDP_TX,
        &reversed(&reply, VIP_LOCAL, 80, CLIENT_MAC),
        Reason::ReverseTx,
    ));

    let request = Frame::tcp(REMOTE_CLIENT, 41005, VIP, 80).macs(CLIENT_GW_MAC, FXC_MAC);
    f.push(forward_fixture(
        lb,
        "client behind a router reaches the VIP",
        &request,
        web,
    )?);
    let reply = arriving(&request, lb.maglev_pick(web, &request)?);
    let restored = reversed(&reply, VIP, 80, CLIENT_GW_MAC);
    f.push(Fixture::rewritten(
        "reply to a client behind a router: next hop is the router",
        Side::Backend,
        &reply,
        XDP_REDIRECT,
        &restored,
        Reason::ReverseRedirect,
    ));
    let too_big = Frame::icmp_error(
        Ipv4Addr::new(192, 0, 2, 254),
        VIP,
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1400,
        }),
        &restored.bytes()[14..],
    )
    .macs(CLIENT_GW_MAC, FXC_MAC);
    f.push(Fixture::untouched(
        "ICMP frag-needed to the VIP about a reply: not sent to the backend",
        Side::Client,
        too_big.bytes(),
        XDP_PASS,
        Reason::PassNotOurs,
    ));

    // 192.0.2.3 has no neighbour entry: the reply cannot take the fast path.
    let request = Frame::tcp(Ipv4Addr::new(192, 0, 2, 3), 41006, VIP, 80)
        .macs([0x02, 0, 0, 0, 0x0c, 0x03], FXC_MAC);
    f.push(forward_fixture(
        lb,
        "client without neighbour entry",
        &request,
        web,
    )?);
    let reply = arriving(&request, lb.maglev_pick(web, &request)?);
    f.push(passed_rewritten(
        "reply, client unresolved: PASS, source restored, TTL/MACs kept",
        Side::Backend,
        &reply,
        &reply.clone().src(VIP, 80),
        Reason::PassFibMiss,
    ));
    Ok(f)
}

/// Frames that are not for a Service: handed on untouched.
fn not_ours_cases() -> Vec<Fixture> {
    let icmp = Frame::icmp_echo(CLIENT, VIP)
        .macs(CLIENT_MAC, FXC_MAC)
        .payload(b"ping");
    let double_tagged = client_tcp(40035, VIP, 80)
        .vlan(TPID_8021AD, 10)
        .vlan(TPID_8021Q, 20);
    let fragment = Frame::raw(CLIENT, NOT_A_VIP, proto::UDP)
        .macs(CLIENT_MAC, FXC_MAC)
        .payload(&[0x44; 16])
        .fragment(true, 5);
    [
        (
            "TCP to an address that is no VIP",
            client_tcp(40030, NOT_A_VIP, 80).bytes(),
        ),
        (
            "TCP straight to a backend's address",
            client_tcp(40031, B1, 8080).bytes(),
        ),
        (
            "TCP to the VIP on a port without Service",
            client_tcp(40032, VIP, 443).bytes(),
        ),
        (
            "UDP to the VIP's TCP-only port 80",
            client_udp(40033, VIP, 80).bytes(),
        ),
        (
            "TCP to the VIP's UDP-only port 53",
            client_tcp(40034, VIP, 53).bytes(),
        ),
        ("ICMP echo to the VIP", icmp.bytes()),
        ("IPv6 TCP", packets::ipv6_tcp(CLIENT_MAC, FXC_MAC, 80)),
        (
            "ARP request for the VIP",
            packets::arp_request(CLIENT_MAC, CLIENT, VIP),
        ),
        (
            "802.1ad + 802.1Q double tag: one tag is parsed",
            double_tagged.bytes(),
        ),
        ("fragment to an address that is no VIP", fragment.bytes()),
    ]
    .into_iter()
    .map(|(description, bytes)| {
        Fixture::untouched(
            description,
            Side::Client,
            bytes,
            XDP_PASS,
            Reason::PassNotOurs,
        )
    })
    .collect()
}

/// Truncated and malformed frames to a VIP: handed on untouched.
///
/// Frames shorter than an Ethernet header cannot be fed in: BPF_PROG_TEST_RUN on this kernel
/// refuses input with fewer than 14 bytes after the metadata (EINVAL), so the shortest case is the
/// bare Ethernet header.
fn malformed_cases() -> Vec<Fixture> {
    let syn = client_tcp(40040, VIP, 80).bytes();
    let udp = client_udp(40041, VIP, 53).bytes();
    let tagged = client_tcp(40042, VIP, 80).vlan(TPID_8021Q, 5).bytes();
    let with_options = client_tcp(40043, VIP, 80).options(&[1, 1, 1, 0]).bytes();
    [
        ("VLAN tag truncated (16 bytes)", truncated(tagged, 16)),
        (
            "Ethernet header only, EtherType IPv4",
            truncated(syn.clone(), 14),
        ),
        (
            "IPv4 header truncated at 19 bytes",
            truncated(syn.clone(), 14 + 19),
        ),
        (
            "IHL 15 pointing past the end of the frame",
            patched(udp.clone(), 14, 0x4f),
        ),
        (
            "IHL 6, frame ends inside the options",
            truncated(with_options, 14 + 22),
        ),
        (
            "TCP header truncated at 19 bytes",
            truncated(syn.clone(), 14 + 20 + 19),
        ),
        (
            "TCP header with only the ports",
            truncated(syn.clone(), 14 + 20 + 4),
        ),
        (
            "UDP header truncated at 7 bytes",
            truncated(udp, 14 + 20 + 7),
        ),
        (
            "IP version 6 under EtherType IPv4",
            patched(syn.clone(), 14, 0x65),
        ),
        ("IHL 4", patched(syn, 14, 0x44)),
    ]
    .into_iter()
    .map(|(description, bytes)| {
        Fixture::untouched(
            description,
            Side::Client,
            bytes,
            XDP_PASS,
            Reason::PassMalformed,
        )
    })
    .collect()
}

/// Fragments to a VIP cannot all be matched to a flow: every one is dropped.
fn fragment_cases() -> Vec<Fixture> {
    let first = client_udp(40050, VIP, 53)
        .payload(&[0x11; 32])
        .fragment(true, 0);
    let middle = Frame::raw(CLIENT, VIP, proto::UDP)
        .macs(CLIENT_MAC, FXC_MAC)
        .payload(&[0x22; 32])
        .fragment(true, 5);
    let last = Frame::raw(CLIENT, VIP, proto::TCP)
        .macs(CLIENT_MAC, FXC_MAC)
        .payload(&[0x33; 12])
        .fragment(false, 185);
    [
        ("first fragment (MF, offset 0) to a VIP: DROP", first),
        ("middle fragment (MF, offset 40) to a VIP: DROP", middle),
        ("last fragment (offset 1480) to a VIP: DROP", last),
    ]
    .into_iter()
    .map(|(description, frame)| {
        Fixture::untouched(
            description,
            Side::Client,
            frame.bytes(),
            XDP_DROP,
            Reason::DropFragment,
        )
    })
    .collect()
}

/// Every stateless case and the reverse path, against the standard plan.
#[test]
fn packet_fixtures() -> Result<()> {
    in_own_namespace("xif", "packet_fixtures", || {
        let mut lb = Lb::load(&standard_plan())?;
        let mut fixtures = vec![foreign_flow_case(&mut lb)?];
        fixtures.extend(forward_cases(&lb)?);
        fixtures.extend(reverse_cases(&lb)?);
        fixtures.extend(not_ours_cases());
        fixtures.extend(malformed_cases());
        fixtures.extend(fragment_cases());
        for fixture in &fixtures {
            lb.check(fixture);
        }
        check_reverse_entry(&mut lb)?;
        lb.finish()
    })
}

/// Runs `fixtures` on a thread inside a namespace of its own and reports how many passed.
fn in_own_namespace(
    name: &str,
    test: &str,
    fixtures: impl FnOnce() -> Result<usize> + Send + 'static,
) -> Result<()> {
    let ns = namespace(name)?;
    let checked = ns.run_inside(fixtures)?;
    eprintln!("{test}: {checked} fixtures passed");
    Ok(())
}

/// A FLOWS entry of this flow that names another Service's backend (say, left from a Service
/// that once had this VIP:port): ignored, the flow is balanced over this Service's table.
fn foreign_flow_case(lb: &mut Lb) -> Result<Fixture> {
    let (web, dns) = (tcp(VIP, 80), udp(VIP, 53));
    let input = client_tcp(40060, VIP, 80);
    let foreign = lb.frontend(dns)?;
    let (service_id, service_epoch, (_, &backend_id)) = (
        foreign.service_id,
        foreign.epoch,
        foreign.backends.iter().next().context("dns has backends")?,
    );
    let generation = lb
        .sync
        .maps()
        .backend(backend_id)
        .context("BACKENDS entry")?
        .generation;
    let entry = FlowEntry {
        backend_id,
        backend_generation: generation,
        service_id,
        service_epoch,
    };
    lb.insert_flow(flow_key(&input, proto::TCP), entry)?;
    forward_fixture(lb, "tracked entry of another Service: ignored", &input, web)
}

/// The reverse entry the first TCP request created names the VIP and the Service port.
fn check_reverse_entry(lb: &mut Lb) -> Result<()> {
    let request = client_tcp(41001, VIP, 80);
    let backend = lb.maglev_pick(tcp(VIP, 80), &request)?;
    let key = ingress_common::FlowKey {
        src_addr: u32::from_ne_bytes(backend.addr.octets()),
        dst_addr: u32::from_ne_bytes(CLIENT.octets()),
        src_port: backend.port.to_be(),
        dst_port: 41001u16.to_be(),
        proto: proto::TCP.into(),
    };
    let entry = lb
        .sync
        .maps()
        .reverse_flows()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v);
    match entry {
        Some(e) if e.vip == u32::from_ne_bytes(VIP.octets()) && e.port == 80u16.to_be() => {}
        other => lb.fail(format!(
            "REVERSE_FLOWS entry of the first request: {other:?}"
        )),
    }
    Ok(())
}

/// A plan with only the connection-tracking Service, on port 8080 of `backends`.
fn ct_plan(backends: &[Ipv4Addr]) -> L4Plan {
    let mut plan = L4Plan::default();
    let backends: Vec<(Ipv4Addr, u16)> = backends.iter().map(|a| (*a, 8080)).collect();
    plan.frontends
        .insert(tcp(VIP_CT, 80), port_plan("ct", &backends));
    plan
}

fn ct_backend(addr: Ipv4Addr) -> Endpoint {
    Endpoint { addr, port: 8080 }
}

/// `frame` forwarded to `backend` (which need not be Maglev's pick) and tracked there.
fn forward_to(description: String, frame: &Frame, backend: Endpoint) -> Fixture {
    Fixture::rewritten(
        description,
        Side::Client,
        frame,
        XDP_REDIRECT,
        &forwarded(frame, backend, FXB_MAC, neighbour_mac(backend.addr)),
        Reason::ForwardRedirect,
    )
    .tracks(flow_key(frame, proto::TCP), backend)
}

/// Flows keep their backend across table changes, move only when their backend leaves, and a
/// backend id given to a new backend does not inherit the old owner's flows.
#[test]
fn connection_tracking() -> Result<()> {
    in_own_namespace("xict", "connection_tracking", run_connection_tracking)
}

fn run_connection_tracking() -> Result<usize> {
    let ct = tcp(VIP_CT, 80);
    let mut lb = Lb::load(&ct_plan(&[B1, B2]))?;
    let t0 = Instant::now();
    let service_id = lb.frontend(ct)?.service_id;
    let service_epoch = lb.frontend(ct)?.epoch;
    let mut new_flows = 0u64;

    // Table 1 (B1, B2): new flows go where Maglev says and are tracked there.
    let mut flows: Vec<Frame> = (0..48).map(|i| client_tcp(50000 + i, VIP_CT, 80)).collect();
    let mut owners = Vec::new();
    for (i, frame) in flows.iter().enumerate() {
        let backend = lb.maglev_pick(ct, frame)?;
        lb.check(&forward_to(
            format!("table 1: new flow {i} to Maglev's pick {backend}"),
            frame,
            backend,
        ));
        owners.push(backend);
        new_flows += 1;
    }
    ensure!(
        owners.contains(&ct_backend(B1)) && owners.contains(&ct_backend(B2)),
        "48 flows all hashed to one backend: {owners:?}"
    );

    // A staged flow: FLOWS says B2 while Maglev would pick B1. The tracked backend wins.
    let staged = (51000u16..52000)
        .map(|port| client_tcp(port, VIP_CT, 80))
        .find(|f| lb.maglev_pick(ct, f).ok() == Some(ct_backend(B1)))
        .context("no port that Maglev sends to B1")?;
    let id2 = lb.backend_id(ct, ct_backend(B2))?;
    let generation2 = lb
        .sync
        .maps()
        .backend(id2)
        .context("BACKENDS[B2]")?
        .generation;
    lb.insert_flow(
        flow_key(&staged, proto::TCP),
        FlowEntry {
            backend_id: id2,
            backend_generation: generation2,
            service_id,
            service_epoch,
        },
    )?;
    lb.check(&forward_to(
        "staged flow on B2 goes to B2, not to Maglev's B1".into(),
        &staged,
        ct_backend(B2),
    ));
    flows.push(staged);
    owners.push(ct_backend(B2));

    // Table 2 (B1, B2, B3): a new table in new slots; every tracked flow stays put.
    let offset_before = lb.frontend(ct)?.table_offset;
    lb.apply(&ct_plan(&[B1, B2, B3]), t0)?;
    ensure!(
        lb.frontend(ct)?.table_offset != offset_before,
        "the table did not move"
    );
    let mut would_move = 0;
    for (i, (frame, owner)) in flows.iter().zip(&owners).enumerate() {
        if lb.maglev_pick(ct, frame)? != *owner {
            would_move += 1;
        }
        let next = frame.clone().data_segment(100, 1).payload(b"second");
        lb.check(&forward_to(
            format!("table 2: flow {i} stays on {owner}"),
            &next,
            *owner,
        ));
    }
    ensure!(
        would_move > 0,
        "no tracked flow hashes elsewhere under table 2; the check proves nothing"
    );
    let to_b3 = (52000u16..53000)
        .map(|port| client_tcp(port, VIP_CT, 80))
        .find(|f| lb.maglev_pick(ct, f).ok() == Some(ct_backend(B3)))
        .context("no port that Maglev sends to B3")?;
    lb.check(&forward_to(
        "table 2: a new flow reaches the new backend B3".into(),
        &to_b3,
        ct_backend(B3),
    ));
    new_flows += 1;

    // Table 3 (B2, B3): B1's flows are re-balanced, FLOWS follows; the others stay.
    let id1 = lb.backend_id(ct, ct_backend(B1))?;
    let generation1 = lb
        .sync
        .maps()
        .backend(id1)
        .context("BACKENDS[B1]")?
        .generation;
    lb.apply(&ct_plan(&[B2, B3]), t0)?;
    let mut rebalanced = 0;
    for (i, (frame, owner)) in flows.iter().zip(owners.iter_mut()).enumerate() {
        let next = frame.clone().data_segment(200, 1).payload(b"third");
        if owner.addr == B1 {
            let new_owner = lb.maglev_pick(ct, frame)?;
            lb.check(&forward_to(
                format!("table 3: flow {i} leaves removed B1 for {new_owner}"),
                &next,
                new_owner,
            ));
            *owner = new_owner;
            rebalanced += 1;
            new_flows += 1;
        } else {
            lb.check(&forward_to(
                format!("table 3: flow {i} stays on {owner}"),
                &next,
                *owner,
            ));
        }
    }
    ensure!(rebalanced > 0, "no flow was on B1");

    // After the grace period B1's id goes to the new backend B4. A flow still naming that id
    // with B1's generation must be re-balanced, not handed to B4 as if it were B1.
    let later = t0 + GRACE_PERIOD * 3;
    lb.apply(&ct_plan(&[B2, B3, B4]), later)?;
    let id4 = lb.backend_id(ct, ct_backend(B4))?;
    ensure!(
        id4 == id1,
        "expected B4 to reuse B1's freed id {id1}, got {id4}"
    );
    let generation4 = lb
        .sync
        .maps()
        .backend(id4)
        .context("BACKENDS[B4]")?
        .generation;
    ensure!(
        generation4 != generation1,
        "id {id1} reused without a new generation"
    );
    let stale = (53000u16..54000)
        .map(|port| client_tcp(port, VIP_CT, 80))
        .find(|f| lb.maglev_pick(ct, f).is_ok_and(|b| b.addr != B4))
        .context("no port Maglev sends elsewhere than B4")?;
    let stale_key = flow_key(&stale, proto::TCP);
    lb.insert_flow(
        stale_key,
        FlowEntry {
            backend_id: id1,
            backend_generation: generation1,
            service_id,
            service_epoch,
        },
    )?;
    let pick = lb.maglev_pick(ct, &stale)?;
    lb.check(&forward_to(
        format!("flow naming B1's reused id is re-balanced to {pick}, not sent to B4"),
        &stale,
        pick,
    ));
    new_flows += 1;
    let pick_id = lb.backend_id(ct, pick)?;
    let pick_generation = lb
        .sync
        .maps()
        .backend(pick_id)
        .context("BACKENDS[pick]")?
        .generation;
    match lb.flow(&stale_key) {
        Some(entry)
            if entry.backend_id == pick_id && entry.backend_generation == pick_generation => {}
        other => lb.fail(format!(
            "FLOWS after re-balancing the stale flow: {other:?}"
        )),
    }
    ensure!(
        lb.sync
            .maps()
            .backend(id4)
            .is_some_and(|b| b.flags & BACKEND_ACTIVE != 0),
        "B4 not active"
    );

    let counters = lb.sync.maps().service_counters(service_id)?;
    if counters.new_flows != new_flows {
        lb.fail(format!(
            "new_flows {} (expected {new_flows})",
            counters.new_flows
        ));
    }

    // Every backend leaves: a tracked flow's next packet is dropped and counted as such.
    lb.apply(&ct_plan(&[]), later)?;
    let orphan = flows[1].clone().data_segment(250, 1);
    lb.check(&Fixture::untouched(
        "all backends gone: a tracked flow's next packet is dropped",
        Side::Client,
        orphan.bytes(),
        XDP_DROP,
        Reason::DropNoBackend,
    ));
    let no_backend = lb.sync.maps().service_counters(service_id)?.no_backend;
    if no_backend != 1 {
        lb.fail(format!(
            "no_backend {no_backend} after one orphaned packet (expected 1)"
        ));
    }

    // The Service goes away: its tracked flows are no longer ours.
    lb.apply(&L4Plan::default(), later)?;
    let after = flows[0].clone().data_segment(300, 1);
    lb.check(&Fixture::untouched(
        "Service removed: a tracked flow's next packet is handed to the stack untouched",
        Side::Client,
        after.bytes(),
        XDP_PASS,
        Reason::PassNotOurs,
    ));
    lb.finish()
}

/// The per-CPU flow cache in front of FLOWS: flows sharing a cache slot each keep their own
/// backend (the cache matches whole 5-tuples), and a cached flow whose FLOWS entry the LRU
/// evicted keeps its backend, even where Maglev would now pick another, and gets its entry back.
#[test]
fn flow_cache() -> Result<()> {
    in_own_namespace("xifc", "flow_cache", run_flow_cache)
}

/// Keeps the calling thread on the CPU it runs on, so every test run meets the same per-CPU cache.
fn stay_on_this_cpu() -> Result<()> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    ensure!(
        cpu >= 0,
        "sched_getcpu: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is a CPU number the kernel gave, below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu as usize, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    ensure!(
        rc == 0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn run_flow_cache() -> Result<usize> {
    stay_on_this_cpu()?;
    let ct = tcp(VIP_CT, 80);
    let mut lb = Lb::load(&ct_plan(&[B1, B2]))?;
    let t0 = Instant::now();
    let (service_id, service_epoch) = (lb.frontend(ct)?.service_id, lb.frontend(ct)?.epoch);
    let tracked_on = |lb: &Lb, backend: Ipv4Addr| -> Result<FlowEntry> {
        let backend_id = lb.backend_id(ct, ct_backend(backend))?;
        let generation = lb
            .sync
            .maps()
            .backend(backend_id)
            .context("BACKENDS entry")?
            .generation;
        Ok(FlowEntry {
            backend_id,
            backend_generation: generation,
            service_id,
            service_epoch,
        })
    };

    // Two flows in one cache slot, tracked on different backends, taking turns: each packet
    // evicts the other flow from the slot, and neither may be given the other's backend.
    let first = client_tcp(40_000, VIP_CT, 80);
    let slot = flow_cache_slot(&flow_key(&first, proto::TCP));
    let second = (40_001u16..u16::MAX)
        .map(|port| client_tcp(port, VIP_CT, 80))
        .find(|f| flow_cache_slot(&flow_key(f, proto::TCP)) == slot)
        .context("no second port in the first flow's cache slot")?;
    lb.insert_flow(flow_key(&first, proto::TCP), tracked_on(&lb, B1)?)?;
    lb.insert_flow(flow_key(&second, proto::TCP), tracked_on(&lb, B2)?)?;
    for round in 0..3u32 {
        for (frame, backend) in [(&first, B1), (&second, B2)] {
            let next = frame.clone().data_segment(round * 10, 1).payload(b"turn");
            lb.check(&forward_to(
                format!(
                    "cache slot {slot} shared, round {round}: port {} stays on {backend}",
                    frame.ports().0
                ),
                &next,
                ct_backend(backend),
            ));
        }
    }

    // Twelve new flows on B1, then a table with B3: some of them Maglev would now send to B3.
    let on_b1: Vec<Frame> = (41_000u16..42_000)
        .map(|port| client_tcp(port, VIP_CT, 80))
        .filter(|f| lb.maglev_pick(ct, f).ok() == Some(ct_backend(B1)))
        .take(12)
        .collect();
    ensure!(on_b1.len() == 12, "not 12 ports that Maglev sends to B1");
    for (i, frame) in on_b1.iter().enumerate() {
        lb.check(&forward_to(
            format!("new flow {i} on B1"),
            frame,
            ct_backend(B1),
        ));
    }
    let new_flows = lb.sync.maps().service_counters(service_id)?.new_flows;
    lb.apply(&ct_plan(&[B1, B2, B3]), t0)?;
    let moved = on_b1
        .iter()
        .find(|f| lb.maglev_pick(ct, f).is_ok_and(|b| b.addr != B1))
        .context("table 2 sends none of the twelve flows elsewhere; the check proves nothing")?;
    let key = flow_key(moved, proto::TCP);
    let next = moved.clone().data_segment(100, 1).payload(b"cached");
    lb.check(&forward_to(
        "table 2: the flow stays on B1".into(),
        &next,
        ct_backend(B1),
    ));

    // The LRU evicts the flow's FLOWS entry. The cached copy keeps it on B1 (Maglev now says
    // otherwise), and the periodic touch puts the entry back.
    lb.remove_flow(&key)?;
    let evicted = moved.clone().data_segment(200, 1).payload(b"evicted");
    lb.check(&Fixture::rewritten(
        "FLOWS entry evicted: the cached flow still goes to B1",
        Side::Client,
        &evicted,
        XDP_REDIRECT,
        &forwarded(&evicted, ct_backend(B1), FXB_MAC, neighbour_mac(B1)),
        Reason::ForwardRedirect,
    ));
    // The touch is due within FLOW_CACHE_TOUCH_JIFFIES (1 s at HZ=250, 2.6 s at HZ=100).
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    let mut sent = 0u32;
    while lb.flow(&key).is_none() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        sent += 1;
        let frame = moved.clone().data_segment(300 + sent, 1).payload(b"again");
        lb.check(&Fixture::rewritten(
            format!("FLOWS entry evicted, packet {sent}: still B1"),
            Side::Client,
            &frame,
            XDP_REDIRECT,
            &forwarded(&frame, ct_backend(B1), FXB_MAC, neighbour_mac(B1)),
            Reason::ForwardRedirect,
        ));
    }
    match lb.flow(&key) {
        Some(entry) if entry == tracked_on(&lb, B1)? => {}
        other => lb.fail(format!(
            "FLOWS after {sent} packets of the evicted flow: {other:?}, expected its B1 entry back"
        )),
    }
    let after = lb.sync.maps().service_counters(service_id)?.new_flows;
    if after != new_flows {
        lb.fail(format!(
            "putting the entry back counted {} new flow(s)",
            after - new_flows
        ));
    }
    lb.finish()
}

/// Service, backend and reason counters after a known sequence of frames.
#[test]
fn counters() -> Result<()> {
    in_own_namespace("xicn", "counters", run_counters)
}

fn run_counters() -> Result<usize> {
    let mut lb = Lb::load(&standard_plan())?;
    let web = tcp(VIP, 80);
    let dns = udp(VIP, 53);
    let empty = tcp(VIP_EMPTY, 80);

    // Two TCP flows (3 and 2 frames of different sizes) and one UDP datagram, all forwarded.
    let mut sent: Vec<(Frontend, Frame)> = Vec::new();
    for (seq, size) in [(1, 0), (2, 100), (3, 1000)] {
        let frame = client_tcp(42000, VIP, 80).data_segment(seq, 1);
        sent.push((web, frame.payload(&vec![1; size])));
    }
    for size in [10, 20] {
        let frame = client_tcp(42001, VIP, 80).data_segment(5, 1);
        sent.push((web, frame.payload(&vec![2; size])));
    }
    sent.push((dns, client_udp(42002, VIP, 53).payload(b"counted")));
    let mut per_backend: BTreeMap<(Frontend, Endpoint), (u64, u64)> = BTreeMap::new();
    for (i, (frontend, frame)) in sent.iter().enumerate() {
        let fixture = forward_fixture(&lb, &format!("counted frame {i}"), frame, *frontend)?;
        let backend = lb.maglev_pick(*frontend, frame)?;
        let entry = per_backend.entry((*frontend, backend)).or_default();
        entry.0 += 1;
        entry.1 += fixture.input.len() as u64;
        lb.check(&fixture);
    }
    // Not forwarded: two drops for want of a backend, an expiring TTL, a stranger.
    let uncounted = [
        (
            "no backend",
            client_tcp(42003, VIP_EMPTY, 80),
            XDP_DROP,
            Reason::DropNoBackend,
        ),
        (
            "no backend",
            client_tcp(42003, VIP_EMPTY, 80),
            XDP_DROP,
            Reason::DropNoBackend,
        ),
        (
            "TTL 1",
            client_tcp(42004, VIP, 80).ttl(1),
            XDP_PASS,
            Reason::PassTtlExpired,
        ),
        (
            "not ours",
            client_tcp(42005, NOT_A_VIP, 80),
            XDP_PASS,
            Reason::PassNotOurs,
        ),
    ];
    for (description, frame, verdict, reason) in uncounted {
        let fixture = Fixture::untouched(description, Side::Client, frame.bytes(), verdict, reason);
        lb.check(&fixture);
    }

    let maps = lb.sync.maps();
    let mut problems = Vec::new();
    for (frontend, frames, new_flows) in [(web, 5, 2), (dns, 1, 1)] {
        let bytes: u64 = sent
            .iter()
            .filter(|(f, _)| *f == frontend)
            .map(|(_, frame)| frame.bytes().len() as u64)
            .sum();
        let c = maps.service_counters(lb.frontend(frontend)?.service_id)?;
        if (c.packets, c.bytes, c.new_flows, c.no_backend) != (frames, bytes, new_flows, 0) {
            problems.push(format!(
                "{frontend}: {c:?}, expected {frames} packets, {bytes} bytes, {new_flows} new flows"
            ));
        }
        for (backend, id) in &lb.frontend(frontend)?.backends {
            let key = (frontend, *backend);
            let (packets, bytes) = per_backend.get(&key).copied().unwrap_or_default();
            let c = maps.backend_counters(*id)?;
            if (c.packets, c.bytes) != (packets, bytes) {
                problems.push(format!(
                    "{frontend} backend {backend}: {c:?}, expected {packets} packets, {bytes} bytes"
                ));
            }
        }
    }
    let c = maps.service_counters(lb.frontend(empty)?.service_id)?;
    if (c.packets, c.bytes, c.new_flows, c.no_backend) != (0, 0, 0, 2) {
        problems.push(format!("{empty}: {c:?}, expected only no_backend = 2"));
    }
    let expected = |reason: Reason| match reason {
        Reason::ForwardRedirect => 6,
        Reason::DropNoBackend => 2,
        Reason::PassTtlExpired | Reason::PassNotOurs => 1,
        _ => 0,
    };
    for (reason, count) in maps.reason_counters()? {
        if count != expected(reason) {
            let name = reason.name();
            problems.push(format!("{name}: {count}, expected {}", expected(reason)));
        }
    }
    for problem in problems {
        lb.fail(problem);
    }
    lb.finish()
}
