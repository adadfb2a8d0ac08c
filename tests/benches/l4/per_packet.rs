//! Section 1: per-packet cost through BPF_PROG_TEST_RUN (established and new-flow forward,
//! non-VIP pass) against a floor program that only parses and bounces.

use std::{net::Ipv4Addr, time::Instant};

use anyhow::{bail, Result};
use aya::programs::{TestRun as _, TestRunOptions};
use ingress_common::bench as refs;
use xdp_ingress::{
    datapath::{reference::ReferencePrograms, sync::DatapathSync, AttachMode, Datapath, MapSizes},
    model::ObjectName,
    translate::l4::{Endpoint, Frontend, L4Plan, Protocol, ServicePortPlan},
};
use xdp_ingress_tests::netns::Netns;

use super::{
    report::{median, Report},
    Settings, CLIENT, ENDPOINTS, VIP, XDP_PASS, XDP_REDIRECT, XDP_TX,
};

/// A plan with one TCP frontend on the VIP and `ENDPOINTS` backends 198.51.100.11...
pub(crate) fn one_service_plan(port: u16, protocol: Protocol) -> L4Plan {
    let mut plan = L4Plan::default();
    plan.frontends.insert(
        Frontend {
            vip: VIP,
            port,
            protocol,
        },
        ServicePortPlan {
            service: ObjectName {
                namespace: "bench".into(),
                name: "svc".into(),
            },
            port_name: String::new(),
            backends: (0..ENDPOINTS)
                .map(|i| Endpoint {
                    addr: Ipv4Addr::new(198, 51, 100, 11 + i as u8),
                    port: 8080,
                })
                .collect(),
            ..ServicePortPlan::default()
        },
    );
    plan
}

pub(crate) fn tcp_frame(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1])
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(src_port, dst_port, 1, 64_240)
        .ack(1);
    let payload = [0u8; 6];
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, &payload).expect("frame");
    frame
}

/// `struct xdp_md` for a test run: data_end must equal the frame's length.
pub(crate) fn xdp_md(ingress_ifindex: u32, frame_len: usize) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame_len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx
}

/// Interface index in the calling thread's namespace (sysfs would show the host's).
pub(crate) fn ifindex(name: &str) -> Result<u32> {
    let c_name = std::ffi::CString::new(name)?;
    // SAFETY: FFI call with a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        bail!("no interface {name}: {}", std::io::Error::last_os_error());
    }
    Ok(index)
}

/// Runs `frame` through `program` `repeat` times; returns (verdict, ns per run).
pub(crate) fn time_run(
    program: &aya::programs::Xdp,
    frame: &[u8],
    ingress: u32,
    repeat: u32,
) -> Result<(u32, f64)> {
    let ctx = xdp_md(ingress, frame.len());
    let mut out = vec![0u8; frame.len() + 256];
    let result = program.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        repeat,
        ..Default::default()
    })?;
    Ok((result.return_value, result.duration.as_secs_f64() * 1e9))
}

pub(crate) fn per_packet_cost(settings: &Settings, report: &mut Report) -> Result<()> {
    let ns = Netns::new("xib-run")?;
    ns.ip(&["link", "add", "rc", "type", "veth", "peer", "name", "rc-p"])?;
    ns.ip(&["link", "add", "rb", "type", "veth", "peer", "name", "rb-p"])?;
    for link in ["rc", "rc-p", "rb", "rb-p"] {
        ns.ip(&["link", "set", link, "up"])?;
    }
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "rc"])?;
    ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "rb"])?;
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    for i in 0..ENDPOINTS {
        let addr = format!("198.51.100.{}", 11 + i);
        ns.ip(&[
            "neigh",
            "replace",
            &addr,
            "lladdr",
            "02:00:00:00:01:01",
            "dev",
            "rb",
            "nud",
            "permanent",
        ])?;
    }
    // The fixed-point Service below forwards to its own VIP: route it out of rb.
    ns.ip(&["route", "add", "203.0.113.20/32", "dev", "rb"])?;
    ns.ip(&[
        "neigh",
        "replace",
        "203.0.113.20",
        "lladdr",
        "02:00:00:00:01:02",
        "dev",
        "rb",
        "nud",
        "permanent",
    ])?;
    ns.ip(&[
        "neigh",
        "replace",
        "192.0.2.2",
        "lladdr",
        "02:00:00:00:00:02",
        "dev",
        "rc",
        "nud",
        "permanent",
    ])?;
    let rounds = if settings.quick { 3 } else { 5 };
    let repeat = 1_000_000;
    // Forwarding: calls × repeats per call (TTL 255 allows 254 forwards of one frame).
    let (calls, per_call) = if settings.quick {
        (1_000, 200)
    } else {
        (5_000, 200)
    };
    let singles = if settings.quick { 5_000 } else { 20_000 };

    let lines = ns.run_inside(move || {
        let ingress = ifindex("rc")?;
        let sizes = MapSizes { services: 64, backends: 1024, maglev_slots: 1 << 16, flows: 262_144, snat_flows: 1024, affinity: 1024 };
        let mut datapath = Datapath::load(&sizes)?;
        // The node's interfaces, as the agent's `--interface`s: redirect targets.
        datapath.add_interface("rc")?;
        datapath.add_interface("rb")?;
        let maps = datapath.take_maps()?;
        let mut sync = DatapathSync::new(maps, sizes.capacity());
        let mut plan = one_service_plan(80, Protocol::Tcp);
        // A Service whose only backend is its own VIP:port. BPF_PROG_TEST_RUN does not restore the
        // frame between repeats, so a forwarded frame is the input of the next repeat; for this
        // Service the output is again an established flow of the same Service, and every repeat
        // runs the whole established-forward path (lookups, DNAT with checksum updates, FIB, TTL,
        // MACs, redirect). The test checks that every repeat took that path.
        let fixed = Ipv4Addr::new(203, 0, 113, 20);
        plan.frontends.insert(
            Frontend { vip: fixed, port: 80, protocol: Protocol::Tcp },
            ServicePortPlan {
                service: ObjectName { namespace: "bench".into(), name: "fixed-point".into() },
                port_name: String::new(),
                backends: [Endpoint { addr: fixed, port: 80 }].into_iter().collect(),
                ..ServicePortPlan::default()
            },
        );
        let sync_report = sync.apply(&plan, Instant::now());
        if !sync_report.errors.is_empty() {
            bail!("programming the bench Services: {:?}", sync_report.errors);
        }
        // Every BPF_PROG_TEST_RUN of an XDP program adds it to the kernel's XDP dispatcher and
        // removes it again, each change waiting for an RCU grace period (milliseconds). Attached
        // programs stay in the dispatcher, so test runs then leave it alone: attach both programs
        // to idle interfaces of this namespace for the duration.
        datapath.program()?.attach("rc-p", AttachMode::Native.into())?;
        let mut references = ReferencePrograms::load()?;
        references.program(refs::FLOOR)?.attach("rb-p", AttachMode::Native.into())?;
        let mut forward_frame = tcp_frame(CLIENT, 40_000, fixed, 80);
        forward_frame[22] = 255; // TTL
        forward_frame[24..26].copy_from_slice(&[0, 0]);
        let checksum = etherparse::Ipv4HeaderSlice::from_slice(&forward_frame[14..])?.to_header().calc_header_checksum();
        forward_frame[24..26].copy_from_slice(&checksum.to_be_bytes());
        let not_ours = tcp_frame(CLIENT, 40_000, Ipv4Addr::new(198, 51, 100, 99), 80);
        let (verdict, _) = time_run(datapath.program()?, &forward_frame, ingress, 1)?;
        if verdict != XDP_REDIRECT {
            let reasons = sync.maps().reason_counters()?;
            bail!("established flow: verdict {verdict}, expected redirect; reasons {reasons:?}");
        }
        let forwarded = |sync: &DatapathSync<xdp_ingress::datapath::KernelMaps>| -> Result<u64> {
            Ok(sync.maps().reason_counters()?.iter().filter(|(r, _)| *r == ingress_common::Reason::ForwardRedirect).map(|(_, n)| *n).sum())
        };
        let (mut est, mut pass, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        let (mut floor_same, mut round_ratios) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let before = forwarded(&sync)?;
            // The floor is timed exactly the same way (same calls × repeats, so the same share of
            // per-call overhead and cold first repeats), call for call in turn with ours, so the
            // host's drift over a round weighs on both alike.
            let (mut total, mut floor_total) = (0.0, 0.0);
            for _ in 0..calls {
                let (verdict, ns) = time_run(datapath.program()?, &forward_frame, ingress, per_call)?;
                if verdict != XDP_REDIRECT {
                    bail!("fixed-point flow: verdict {verdict}");
                }
                total += ns;
                let program = references.program(refs::FLOOR)?;
                floor_total += time_run(program, &forward_frame, ingress, per_call)?.1;
            }
            let took_path = forwarded(&sync)? - before;
            if took_path != calls as u64 * per_call as u64 {
                bail!("only {took_path} of {} repeats took the forward path", calls * per_call);
            }
            est.push(total / calls as f64);
            floor_same.push(floor_total / calls as f64);
            round_ratios.push(total / floor_total);
            let (verdict, ns) = time_run(datapath.program()?, &not_ours, ingress, repeat)?;
            if verdict != XDP_PASS {
                bail!("non-VIP: verdict {verdict}, expected pass");
            }
            pass.push(ns);
            let (verdict, ns) = time_run(references.program(refs::FLOOR)?, &not_ours, ingress, repeat)?;
            if verdict != XDP_TX {
                bail!("floor: verdict {verdict}, expected tx");
            }
            floor.push(ns);
        }
        // New flows cannot repeat (the second repeat is established): one run per call, each a new
        // 5-tuple, against an established flow timed the same way (same per-call overhead).
        let established = tcp_frame(CLIENT, 40_000, VIP, 80);
        let (mut fresh, mut est_single) = (Vec::new(), Vec::new());
        for i in 0..singles {
            let src = Ipv4Addr::new(192, 0, 2, 2 + (i / 60_000) as u8);
            let frame = tcp_frame(src, 1024 + (i % 60_000) as u16, VIP, 80);
            let (verdict, ns) = time_run(datapath.program()?, &frame, ingress, 1)?;
            if verdict != XDP_REDIRECT {
                bail!("new flow {i}: verdict {verdict}");
            }
            fresh.push(ns);
            est_single.push(time_run(datapath.program()?, &established, ingress, 1)?.1);
        }
        let flows = sync.maps().flows().len();
        if flows < singles as usize {
            bail!("only {flows} flows tracked after {singles} new flows");
        }
        let (est, pass, floor) = (median(&mut est), median(&mut pass), median(&mut floor));
        let floor_same = median(&mut floor_same);
        let ratios = round_ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ");
        let ratio = median(&mut round_ratios);
        let (fresh, est_single) = (median(&mut fresh), median(&mut est_single));
        Ok(vec![
            format!("BPF_PROG_TEST_RUN. Floor and non-VIP pass: medians of {rounds} rounds × {repeat} repeats. Established-flow forward: medians of {rounds} rounds × {} repeats ({calls} calls × {per_call}, each call followed by one of the floor with the same frame and repeats; the ratio is the median of the rounds' ratios), on a Service that forwards to its own VIP so the rewritten frame is again an established flow (the kernel does not restore the frame between repeats), so after the first repeat every repeat finds the flow in the CPU's flow cache; every repeat was checked to take the forward path. New flows: {singles} single runs, each a new 5-tuple, against an established flow timed the same way. 10 backends.", calls * per_call),
            String::new(),
            "| path | ns/packet | × floor |".into(),
            "| --- | ---: | ---: |".into(),
            format!("| floor (parse Eth/IPv4, XDP_TX), {repeat} repeats per call | {floor:.1} | 1.00 |"),
            format!("| non-VIP pass, {repeat} repeats per call | {pass:.1} | {:.2} |", pass / floor),
            format!("| floor, {calls} calls × {per_call} repeats | {floor_same:.1} | 1.00 |"),
            format!("| established-flow forward (lookups, DNAT, next hop, redirect), {calls} calls × {per_call} repeats | {est:.1} | {ratio:.2} (target ≤ 3; rounds {ratios}) |"),
            format!("| established-flow forward against the 1M-repeat floor (upper bound) | {est:.1} | {:.2} |", est / floor),
            String::new(),
            "| single runs (cold caches, per-call overhead included) | ns/run | × established |".into(),
            "| --- | ---: | ---: |".into(),
            format!("| established flow | {est_single:.0} | 1.00 |"),
            format!("| new flow (Maglev pick, conntrack inserts) | {fresh:.0} | {:.2} |", fresh / est_single),
        ])
    })?;
    report.section("Per-packet cost (BPF_PROG_TEST_RUN)", lines);
    Ok(())
}
