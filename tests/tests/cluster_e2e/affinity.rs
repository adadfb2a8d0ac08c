//! kube-proxy's "should have session affinity work for LoadBalancer service with
//! ESIPP on/off", "should be able to switch session affinity" and "should have session
//! affinity timeout work" (test/e2e/network/service.go, loadbalancer.go): with
//! `sessionAffinity: ClientIP` every new connection of one client reaches one pod; switched
//! off, connections spread; on again, they stick; with `timeoutSeconds: 1`, after the timeout
//! has passed the client may move, but sticks again to whichever pod it got.

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
    sticks(&scenario, "timeoutSeconds 1")?;
    // The affinity timeout is the event waited for: nothing else signals its expiry.
    thread::sleep(Duration::from_secs(2));
    sticks(&scenario, "timeoutSeconds 1, after the timeout")
}
