//! Pods come and go: the agents are told the uplinks only, and a pod created after they
//! started, on either node, takes new flows once it is in the EndpointSlice, without a restart
//! or any other reconfiguration. Local pods see the client's own address.

use std::{collections::BTreeSet, net::SocketAddr};

use anyhow::{ensure, Result};
use xdp_ingress_tests::lab::{
    cluster::{web_service, Endpoint, NodeId, CLIENT_ADDR},
    HeldConnection,
};

use super::{vip_answers, Scenario, ANSWER_TIMEOUT, VIP};

/// Connections per check: with three endpoints, one is missed among 30 with odds of 3·(2/3)^30.
const PER_CHECK: usize = 30;

#[test]
fn a_pod_created_after_the_agents_started_gets_new_flows() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "a_pod_created_after_the_agents_started_gets_new_flows",
        "xc-new",
    )?
    else {
        return Ok(());
    };
    let a = scenario.cluster.add_serving_pod(NodeId::One, "a")?;
    let mut endpoints = vec![Endpoint::ready(a, NodeId::One)];
    scenario
        .manifests
        .write(super::SERVICE_FILE, &web_service("web", VIP, &endpoints))?;
    scenario.start_agents_with_node_names()?;
    scenario.cluster.route_vips_via(NodeId::One)?;
    let answered = vip_answers(&scenario.cluster, 5)?;
    ensure!(
        answered == names(&["a"]),
        "before: answered by {answered:?}"
    );

    // A pod on the receiving node and one on the other node, both made after the agents.
    let c = scenario.cluster.add_serving_pod(NodeId::One, "c")?;
    let d = scenario.cluster.add_serving_pod(NodeId::Two, "d")?;
    endpoints.extend([
        Endpoint::ready(c, NodeId::One),
        Endpoint::ready(d, NodeId::Two),
    ]);
    scenario.write_service(&web_service("web", VIP, &endpoints))?;
    let answered = vip_answers(&scenario.cluster, PER_CHECK)?;
    ensure!(
        answered == names(&["a", "c", "d"]),
        "after adding c and d: answered by {answered:?}"
    );

    // The new local pod sees the client itself: local endpoints are not SNATed.
    scenario.cluster.in_client(|| {
        for _ in 0..PER_CHECK {
            let mut held = HeldConnection::open(SocketAddr::from((VIP, 80)), ANSWER_TIMEOUT)?;
            if held.greeting() != "c" {
                continue;
            }
            let (_, seen) = held.ask_peer()?;
            ensure!(
                seen.ip() == CLIENT_ADDR,
                "pod c saw the client as {seen}, not {CLIENT_ADDR}"
            );
            return Ok(());
        }
        anyhow::bail!("{PER_CHECK} connections and none reached c")
    })?;
    for (node, agent) in &mut scenario.agents {
        ensure!(agent.is_running()?, "the agent on {} died", node.name());
    }
    Ok(())
}

fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}
