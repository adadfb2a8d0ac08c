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

use anyhow::{Context as _, Result};
use ingress_common::{proto, FlowEntry};
use rig::*;

#[path = "fixtures/conntrack.rs"]
mod conntrack;
#[path = "fixtures/counters.rs"]
mod counters;
#[path = "fixtures/flow_cache.rs"]
mod flow_cache;
#[path = "fixtures/forward.rs"]
mod forward;
#[path = "fixtures/not_forwarded.rs"]
mod not_forwarded;
#[path = "fixtures/reverse.rs"]
mod reverse;

use forward::{client_tcp, forward_cases, forward_fixture};
use not_forwarded::{fragment_cases, malformed_cases, not_ours_cases};
use reverse::reverse_cases;

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
