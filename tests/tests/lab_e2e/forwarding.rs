//! Forwarding through both lab layouts (one shared backend link, one link per backend), over TCP
//! and UDP, following manifest changes.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{ensure, Context as _, Result};
use xdp_ingress_tests::lab::{self, BackendLink};

use super::{
    handover::CounterTable,
    scenario::{assert_fair, slice_yaml, Scenario, SERVICE_YAML},
    SPREAD_CONNECTIONS,
};

/// The start both layouts share: `None` (skipped) when not root; else the scenario with its
/// agent running and spreading TCP connections fairly over the backends, and their names.
fn forwarding_fairly(
    test: &str,
    netns: &str,
    link: BackendLink,
    layout: &str,
) -> Result<Option<(Scenario, Vec<String>)>> {
    if !xdp_ingress_tests::root::root_or_skip(test) {
        return Ok(None);
    }
    let mut scenario = Scenario::new(netns, link)?;
    let names = scenario.names();

    // Nothing on the node answers for the VIP: whatever answers later is the agent's doing.
    ensure!(
        !scenario.vip_answers_tcp()?,
        "the VIP answered before the agent ran"
    );

    scenario.start_agent()?;
    let counts = scenario.tcp_spread(SPREAD_CONNECTIONS)?;
    println!("{layout}, {SPREAD_CONNECTIONS} connections: {counts:?}");
    assert_fair(&counts, &names)?;
    Ok(Some((scenario, names)))
}

#[test]
fn shared_link_forwards_and_follows_manifest_changes() -> Result<()> {
    let Some((mut scenario, names)) = forwarding_fairly(
        "shared_link_forwards_and_follows_manifest_changes",
        "xe-sh",
        BackendLink::Shared,
        "shared link",
    )?
    else {
        return Ok(());
    };
    for name in scenario.udp_answers(10)? {
        ensure!(names.contains(&name), "unexpected UDP answer {name:?}");
    }

    // Hold connections to every backend, then take the last backend out of the slice.
    let removed = names.last().context("no backends")?.clone();
    let mut held = scenario.hold_connections_to_every_backend()?;
    let remaining: Vec<Ipv4Addr> = scenario
        .lab
        .backends()
        .iter()
        .filter(|b| b.name != removed)
        .map(|b| b.addr)
        .collect();
    // The promise under test: within a second of the change, no new flow reaches it. Waited
    // for as an event (the agent's sync), and the bound checked on what was measured.
    let before = scenario.syncs()?;
    let written = std::time::Instant::now();
    scenario
        .manifests
        .write("slice.yaml", &slice_yaml(&remaining))?;
    let took = scenario.wait_for_sync(before, written)?;
    ensure!(
        took < Duration::from_secs(1),
        "the agent applied the removal of {removed} {took:?} after the change"
    );
    let kept: Vec<String> = names.iter().filter(|n| **n != removed).cloned().collect();
    let counts = scenario.tcp_spread(150)?;
    println!("after removing {removed} (applied in {took:?}): {counts:?}");
    ensure!(
        !counts.contains_key(&removed),
        "new connections still reach {removed} after the sync that removed it ({took:?} after \
         the change): {counts:?}"
    );
    assert_fair(&counts, &kept)?;
    for connection in held.iter_mut().filter(|c| c.greeting() != removed) {
        let greeting = connection.greeting().to_string();
        let answer = connection
            .ask()
            .with_context(|| format!("held connection to {greeting} after the change"))?;
        ensure!(
            answer == greeting,
            "a held connection to {greeting} is now answered by {answer}"
        );
    }
    drop(held);

    // A broken manifest is reported and ignored; what was programmed keeps forwarding.
    scenario.manifests.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: [oops\n",
    )?;
    scenario
        .agent()?
        .wait_for_line(|line| line.contains("broken.yaml"), Duration::from_secs(5))
        .context("the agent did not report the broken manifest")?;
    ensure!(
        scenario.agent()?.is_running()?,
        "the agent died on a broken manifest"
    );
    let counts = scenario.tcp_spread(30)?;
    ensure!(
        counts.keys().all(|name| kept.contains(name)),
        "after the broken manifest: {counts:?}"
    );
    scenario.manifests.remove("broken.yaml")?;

    // Without its Service the VIP is no longer forwarded.
    let before = scenario.syncs()?;
    let written = std::time::Instant::now();
    scenario.manifests.remove("service.yaml")?;
    let took = scenario.wait_for_sync(before, written)?;
    ensure!(
        took < Duration::from_secs(1),
        "the agent applied the Service's removal {took:?} after it"
    );
    for _ in 0..5 {
        ensure!(
            !scenario.vip_answers_tcp()?,
            "the VIP still answers after the sync that removed its Service ({took:?} after it)"
        );
    }

    // SIGTERM is a clean exit, and the same interfaces can be taken again at once.
    scenario.stop_agent()?;
    scenario.manifests.write("service.yaml", SERVICE_YAML)?;
    scenario.start_agent()?;
    let counts = scenario.tcp_spread(30)?;
    ensure!(
        counts.keys().all(|name| kept.contains(name)),
        "after the restart: {counts:?}"
    );
    scenario.stop_agent()?;
    Ok(())
}

#[test]
fn per_backend_links_forward_tcp_and_udp() -> Result<()> {
    let Some((mut scenario, names)) = forwarding_fairly(
        "per_backend_links_forward_tcp_and_udp",
        "xe-pb",
        BackendLink::PerBackend,
        "per-backend links",
    )?
    else {
        return Ok(());
    };
    // From 30 sockets held open together: 30 distinct source ports, so 30 flows (a port freed
    // and taken again would make two questions one flow).
    let answers = scenario.udp_answers_from_distinct_ports(30)?;
    for name in &answers {
        ensure!(names.contains(name), "unexpected UDP answer {name:?}");
    }
    let output = scenario.stop_agent()?;
    // The per-Service counters printed on exit count exactly this traffic: one flow per TCP
    // connection, one flow and one packet per UDP question (a new socket each), each backend's
    // UDP packets those it answered.
    let table = CounterTable::parse(&output)?;
    let tcp = table.frontend("203.0.113.10:80/TCP")?;
    ensure!(
        tcp.flows == SPREAD_CONNECTIONS as u64,
        "TCP flows {}, not {SPREAD_CONNECTIONS}",
        tcp.flows
    );
    let udp = table.frontend("203.0.113.10:53/UDP")?;
    ensure!(
        (udp.flows, udp.packets) == (answers.len() as u64, answers.len() as u64),
        "UDP: {} flows and {} packets for {} questions",
        udp.flows,
        udp.packets,
        answers.len()
    );
    for backend in scenario.lab.backends() {
        let answered = answers.iter().filter(|n| **n == backend.name).count() as u64;
        let counted = udp
            .backends
            .get(&format!("{}:{}", backend.addr, lab::UDP_PORT))
            .copied()
            .unwrap_or(0);
        ensure!(
            counted == answered,
            "{} answered {answered} UDP questions, its counter says {counted}",
            backend.name
        );
    }
    let tcp_backend_packets: u64 = tcp.backends.values().sum();
    ensure!(
        tcp_backend_packets == tcp.packets,
        "TCP backends' packets add up to {tcp_backend_packets}, the Service's to {}",
        tcp.packets
    );
    Ok(())
}
