//! externalTrafficPolicy Cluster to a backend on the other node: the node the VIP arrives at
//! forwards with its own address as the source (SNAT), so the backend's replies come back
//! through it and are translated back; the client sees the VIP answer, over TCP (a held
//! connection keeps working) and UDP.

use std::net::SocketAddr;

use anyhow::{ensure, Result};
use xdp_ingress_tests::lab::{
    self,
    cluster::{web_service, Endpoint, NodeId},
    HeldConnection,
};

use super::{vip_answers, Scenario, ANSWER_TIMEOUT, VIP};

#[test]
fn cluster_policy_reaches_a_remote_pod_and_back() -> Result<()> {
    let Some(mut scenario) =
        Scenario::new("cluster_policy_reaches_a_remote_pod_and_back", "xc-remote")?
    else {
        return Ok(());
    };
    let remote = scenario.cluster.add_serving_pod(NodeId::Two, "r")?;
    scenario.manifests.write(
        super::SERVICE_FILE,
        &web_service("web", VIP, &[Endpoint::ready(remote, NodeId::Two)]),
    )?;
    scenario.start_agents_with_node_names()?;
    scenario.cluster.route_vips_via(NodeId::One)?;
    let node = NodeId::One.addr();

    let answered = vip_answers(&scenario.cluster, 20)?;
    ensure!(
        answered.len() == 1 && answered.contains("r"),
        "answered by {answered:?}"
    );
    scenario.cluster.in_client(move || {
        let mut held = HeldConnection::open(SocketAddr::from((VIP, 80)), ANSWER_TIMEOUT)?;
        for _ in 0..5 {
            let (name, seen) = held.ask_peer()?;
            ensure!(
                name == "r" && seen.ip() == node,
                "over TCP {name} saw the client as {seen}, expected r to see node-1 ({node})"
            );
        }
        let udp = SocketAddr::from((VIP, 53));
        let (name, seen, from) = lab::udp_ask_peer(udp, ANSWER_TIMEOUT)?;
        ensure!(
            name == "r" && seen.ip() == node && from == udp,
            "over UDP {name} (from {from}) saw the client as {seen}, expected r (from {udp}) \
             to see node-1 ({node})"
        );
        Ok(())
    })
}
