//! kube-proxy's "should have session affinity work for LoadBalancer service with
//! ESIPP on/off", "should be able to switch session affinity" and "should have session
//! affinity timeout work" (test/e2e/network/service.go, loadbalancer.go): with
//! `sessionAffinity: ClientIP` every new connection of one client reaches one pod; switched
//! off, connections spread; on again, they stick; with `timeoutSeconds: 1`, each time the
//! timeout has passed the client's next connection is picked afresh and sticks again to
//! whichever pod it got, so within a few expiries the client moves to another pod.

use std::{collections::BTreeSet, net::SocketAddr, thread, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::{json, Value};
use xdp_ingress_tests::lab::cluster::{Endpoint, NodeId};

use super::{tcp_outcome, web_with, Outcome, Scenario, VIP};

/// Connections that must all reach one pod.
const STICKY: usize = 15;
/// Connections among which, without affinity, more than one of three pods must answer
/// (all reach one with odds of 3·3^-30).
const SPREAD: usize = 30;
/// Longer than the 1 s affinity timeout with room for its granularity.
const EXPIRY_WAIT: Duration = Duration::from_millis(1500);
/// Expiries after which the client must have moved at least once: it stays with odds of 1/3
/// per expiry, so of 3^-10 in all; it moves after 1.5 expiries on average.
const EXPIRY_ROUNDS: usize = 10;

/// Who answered each of `n` new TCP connections from the first client to the VIP.
fn tcp_answers(scenario: &Scenario, n: usize) -> Result<BTreeSet<String>> {
    let vip = SocketAddr::from((VIP, 80));
    scenario.cluster.in_client(move || {
        let mut names = BTreeSet::new();
        for i in 0..n {
            match tcp_outcome(vip)? {
                Outcome::Answered(name) => names.insert(name),
                other => anyhow::bail!("connection {i} of {n} to {vip}: {other:?}"),
            };
        }
        Ok(names)
    })
}

fn sticks(scenario: &Scenario, step: &str) -> Result<()> {
    let answered = tcp_answers(scenario, STICKY).with_context(|| step.to_string())?;
    anyhow::ensure!(
        answered.len() == 1,
        "{step}: {STICKY} connections of one client answered by {answered:?}"
    );
    Ok(())
}

#[test]
fn client_ip_affinity_sticks_switches_and_expires() -> Result<()> {
    let Some(mut scenario) =
        Scenario::new("client_ip_affinity_sticks_switches_and_expires", "xc-aff")?
    else {
        return Ok(());
    };
    let mut endpoints = Vec::new();
    for (node, name) in [
        (NodeId::One, "p1"),
        (NodeId::One, "p2"),
        (NodeId::Two, "p3"),
    ] {
        let addr = scenario.cluster.add_serving_pod(node, name)?;
        endpoints.push(Endpoint::ready(addr, node));
    }
    let affinity = |timeout: Option<u32>| {
        let mut spec = json!({"sessionAffinity": "ClientIP"});
        if let Some(seconds) = timeout {
            spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": seconds}});
        }
        spec
    };
    scenario
        .manifests
        .write(super::SERVICE_FILE, &web_with(&endpoints, affinity(None)))?;
    scenario.start_agents_with_node_names()?;
    sticks(&scenario, "affinity on")?;

    scenario.write_service(&web_with(&endpoints, Value::Null))?;
    let answered = tcp_answers(&scenario, SPREAD).context("affinity off")?;
    anyhow::ensure!(
        answered.len() > 1,
        "affinity off: {SPREAD} connections all answered by {answered:?}"
    );

    scenario.write_service(&web_with(&endpoints, affinity(None)))?;
    sticks(&scenario, "affinity on again")?;

    scenario.write_service(&web_with(&endpoints, affinity(Some(1))))?;
    let mut pinned = tcp_answers(&scenario, STICKY).context("timeoutSeconds 1")?;
    anyhow::ensure!(
        pinned.len() == 1,
        "timeoutSeconds 1: {STICKY} connections of one client answered by {pinned:?}"
    );
    // Once the timeout has passed, the next connection is picked afresh (by its own 5-tuple,
    // so by one of three pods) and sticks again: some round sees the client move. The timeout
    // is the event waited for, nothing else signals its expiry.
    for round in 1..=EXPIRY_ROUNDS {
        thread::sleep(EXPIRY_WAIT);
        let now = tcp_answers(&scenario, STICKY)
            .with_context(|| format!("timeoutSeconds 1, round {round} after the timeout"))?;
        anyhow::ensure!(
            now.len() == 1,
            "round {round} after the timeout: {STICKY} connections answered by {now:?}"
        );
        if now != pinned {
            return Ok(());
        }
        pinned = now;
    }
    anyhow::bail!(
        "after {EXPIRY_ROUNDS} expiries of a 1 s affinity the client is still on {pinned:?} \
         (odds 3^-{EXPIRY_ROUNDS} if the entries expired)"
    )
}
