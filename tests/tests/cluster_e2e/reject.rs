//! kube-proxy's "should be rejected when no endpoints exist" and "...for evicted pods (no
//! endpoints)" (test/e2e/network/service.go): a Service without endpoints refuses at once, TCP
//! with a RST (connect fails with ConnectionRefused before its 1 s timeout) and UDP with an
//! ICMP port unreachable (a connected socket's recv fails with ConnectionRefused). With
//! externalTrafficPolicy Local and the only endpoint on the other node, the node the VIP
//! arrives at stays silent instead: the load balancer's health check, not a refusal, steers
//! clients away from it.

use anyhow::{ensure, Result};
use serde_json::{json, Value};
use xdp_ingress_tests::lab::cluster::{Endpoint, NodeId};

use super::{tcp_outcome, udp_outcome, vip_ports, web_with, Outcome, Scenario};

/// TCP and UDP outcomes at the VIP from the first client.
fn vip_outcomes(scenario: &Scenario) -> Result<(Outcome, Outcome)> {
    let (tcp, udp) = vip_ports();
    scenario
        .cluster
        .in_client(move || Ok((tcp_outcome(tcp)?, udp_outcome(udp)?)))
}

#[test]
fn no_endpoints_refuses_tcp_and_udp_at_once() -> Result<()> {
    let Some(mut scenario) = Scenario::new("no_endpoints_refuses_tcp_and_udp_at_once", "xc-rej")?
    else {
        return Ok(());
    };
    scenario
        .manifests
        .write(super::SERVICE_FILE, &web_with(&[], Value::Null))?;
    scenario.start_agents_with_node_names()?;
    for node in NodeId::ALL {
        scenario.cluster.route_vips_via(node)?;
        let outcomes = vip_outcomes(&scenario)?;
        ensure!(
            outcomes == (Outcome::Refused, Outcome::Refused),
            "VIP via {} without endpoints: (TCP, UDP) {outcomes:?}, expected both refused",
            node.name()
        );
    }
    Ok(())
}

#[test]
fn local_policy_without_a_local_endpoint_is_silent_not_refused() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "local_policy_without_a_local_endpoint_is_silent_not_refused",
        "xc-rejl",
    )?
    else {
        return Ok(());
    };
    let p2 = scenario.cluster.add_serving_pod(NodeId::Two, "p2")?;
    scenario.manifests.write(
        super::SERVICE_FILE,
        &web_with(
            &[Endpoint::ready(p2, NodeId::Two)],
            json!({"externalTrafficPolicy": "Local"}),
        ),
    )?;
    scenario.start_agents_with_node_names()?;
    scenario.cluster.route_vips_via(NodeId::Two)?;
    let outcomes = vip_outcomes(&scenario)?;
    let answered = (
        Outcome::Answered("p2".to_string()),
        Outcome::Answered("p2".to_string()),
    );
    ensure!(
        outcomes == answered,
        "VIP via node-2, where the endpoint is: (TCP, UDP) {outcomes:?}"
    );
    scenario.cluster.route_vips_via(NodeId::One)?;
    let outcomes = vip_outcomes(&scenario)?;
    ensure!(
        outcomes == (Outcome::Silent, Outcome::Silent),
        "VIP via node-1, no local endpoint: (TCP, UDP) {outcomes:?}, expected both silent"
    );
    Ok(())
}
