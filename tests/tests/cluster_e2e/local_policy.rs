//! kube-proxy's externalTrafficPolicy Local checks (test/e2e/network/loadbalancer.go "should
//! work for type=LoadBalancer", "should only target nodes with endpoints", "should fallback to
//! local terminating endpoints when there are no ready endpoints with
//! externalTrafficPolicy=Local"): with the pod on node-1 only, the VIP via node-1 is answered
//! and the pod sees the client's own address (TCP and UDP); via node-2 it is silent (node-2
//! does not forward); the healthCheckNodePort answers 200 with `localEndpoints: 1` on node-1
//! and 503 on node-2; a terminating but serving local endpoint takes new flows when it is the
//! only one (the health check is in its own test).

use std::net::SocketAddr;

use anyhow::{ensure, Context as _, Result};
use serde_json::{json, Value};
use xdp_ingress_tests::lab::{
    self,
    cluster::{Cluster, Endpoint, NodeId, CLIENT_ADDR},
    HeldConnection,
};

use super::{silent, vip_ports, web_with, with_node_ports, Scenario, ANSWER_TIMEOUT, VIP};

/// The Service's healthCheckNodePort.
const HEALTH_PORT: u16 = 30100;

/// GET http://<node>:<HEALTH_PORT>/ with curl from the first client: status and JSON body.
fn health(cluster: &Cluster, node: NodeId) -> Result<(u16, Value)> {
    let url = format!("http://{}:{HEALTH_PORT}/", node.addr());
    let output = cluster
        .client()
        .exec(&[
            "curl",
            "-sS",
            "--max-time",
            "1",
            "-w",
            "\n%{http_code}",
            &url,
        ])
        .with_context(|| format!("curl {url}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, status) = text
        .rsplit_once('\n')
        .with_context(|| format!("curl {url} printed {text:?}"))?;
    let status = status.trim().parse().context("the status")?;
    let body = serde_json::from_str(body).with_context(|| format!("the body {body:?}"))?;
    Ok((status, body))
}

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

#[test]
fn health_check_node_port_reports_local_endpoints_per_node() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "health_check_node_port_reports_local_endpoints_per_node",
        "xc-hc",
    )?
    else {
        return Ok(());
    };
    let p1 = scenario.cluster.add_serving_pod(NodeId::One, "p1")?;
    let spec = json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": HEALTH_PORT});
    // One pod behind both of the Service's ports (TCP 80 and UDP 53) is one endpoint, as
    // kube-proxy counts them (by address: `EndpointsMap.LocalReadyEndpoints`).
    scenario.manifests.write(
        super::SERVICE_FILE,
        &with_node_ports(web_with(&[Endpoint::ready(p1, NodeId::One)], spec)),
    )?;
    scenario.start_agents_with_node_names()?;
    let (status, body) = health(&scenario.cluster, NodeId::Two)?;
    ensure!(
        status == 503 && body["localEndpoints"] == 0,
        "node-2's health check: {status} {body}"
    );
    let (status, body) = health(&scenario.cluster, NodeId::One)?;
    ensure!(
        status == 200 && body["localEndpoints"] == 1,
        "node-1's health check: {status} {body}"
    );
    Ok(())
}
