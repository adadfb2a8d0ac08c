//! kube-proxy's externalTrafficPolicy Local checks (test/e2e/network/loadbalancer.go "should
//! work for type=LoadBalancer", "should only target nodes with endpoints", "should fallback to
//! local terminating endpoints when there are no ready endpoints with
//! externalTrafficPolicy=Local"): with the pod on node-1 only, the VIP via node-1 is answered
//! and the pod sees the client's own address (TCP and UDP); via node-2 it is silent (node-2
//! does not forward); a terminating but serving local endpoint takes new flows when it is the
//! only one.

use std::net::SocketAddr;

use anyhow::{ensure, Result};
use serde_json::json;
use xdp_ingress_tests::lab::{
    self,
    cluster::{Cluster, Endpoint, NodeId, CLIENT_ADDR},
    HeldConnection,
};

use super::{silent, vip_ports, web_with, with_node_ports, Scenario, ANSWER_TIMEOUT, VIP};

/// The Service's healthCheckNodePort.
const HEALTH_PORT: u16 = 30100;

/// Asks the VIP over TCP and UDP from the first client who answered and whom the pod saw.
fn peers(cluster: &Cluster) -> Result<[(String, SocketAddr); 2]> {
    cluster.in_client(|| {
        let mut held = HeldConnection::open(SocketAddr::from((VIP, 80)), ANSWER_TIMEOUT)?;
        let tcp = held.ask_peer()?;
        let udp = SocketAddr::from((VIP, 53));
        let (name, seen, from) = lab::udp_ask_peer(udp, ANSWER_TIMEOUT)?;
        ensure!(from == udp, "the UDP answer came from {from}, not {udp}");
        Ok([tcp, (name, seen)])
    })
}

#[test]
fn local_policy_keeps_the_client_address_and_only_local_nodes_forward() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "local_policy_keeps_the_client_address_and_only_local_nodes_forward",
        "xc-loc",
    )?
    else {
        return Ok(());
    };
    let p1 = scenario.cluster.add_serving_pod(NodeId::One, "p1")?;
    let spec = json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": HEALTH_PORT});
    let ready = [Endpoint::ready(p1, NodeId::One)];
    scenario.manifests.write(
        super::SERVICE_FILE,
        &with_node_ports(web_with(&ready, spec.clone())),
    )?;
    scenario.start_agents_with_node_names()?;

    scenario.cluster.route_vips_via(NodeId::One)?;
    for (protocol, (name, seen)) in ["TCP", "UDP"].into_iter().zip(peers(&scenario.cluster)?) {
        ensure!(
            name == "p1" && seen.ip() == CLIENT_ADDR,
            "over {protocol} {name} saw the client as {seen}, expected p1 to see {CLIENT_ADDR}"
        );
    }
    scenario.cluster.route_vips_via(NodeId::Two)?;
    let (tcp, udp) = vip_ports();
    ensure!(
        silent(scenario.cluster.client(), tcp, udp)?,
        "the VIP via node-2, which has no local endpoint, answered or refused"
    );

    // The only endpoint terminating but still serving: it takes new flows (KEP-1669).
    let mut terminating = web_with(&ready, spec);
    terminating[1]["endpoints"][0]["conditions"] =
        json!({"ready": false, "serving": true, "terminating": true});
    scenario.write_service(&with_node_ports(terminating))?;
    scenario.cluster.route_vips_via(NodeId::One)?;
    for (protocol, (name, seen)) in ["TCP", "UDP"].into_iter().zip(peers(&scenario.cluster)?) {
        ensure!(
            name == "p1" && seen.ip() == CLIENT_ADDR,
            "terminating endpoint, over {protocol}: {name} saw the client as {seen}"
        );
    }
    Ok(())
}
