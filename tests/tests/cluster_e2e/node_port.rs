//! kube-proxy's "should be able to create a functioning NodePort service" and its external IP
//! checks (test/e2e/network/service.go): a NodePort Service and a LoadBalancer Service's nodePort
//! answer on BOTH node addresses, TCP and UDP, from pods on both nodes; a port of a node
//! address that is no nodePort is left to the node's own stack; an externalIP that no node
//! owns, routed to a node, answers.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
};

use anyhow::{ensure, Context as _, Result};
use serde_json::json;
use xdp_ingress_tests::lab::cluster::{
    endpoint_slice, load_balancer_service, Endpoint, NodeId, CLIENT_ADDR, WEB_PORTS,
};

use super::{answers, merge, node_ports, with_node_ports, Scenario, ANSWER_TIMEOUT, VIP};

/// Connections per check: with two endpoints, both answer among 20 but with odds of 2^-19.
const PER_CHECK: usize = 20;
/// The LoadBalancer Service's nodePorts (TCP, UDP).
const LB_NODE_PORTS: (u16, u16) = (30081, 30054);
/// An external IP no node has; the router sends it to node-2.
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// A port on node-1 that no Service claims, where a process of the node listens.
const NODE_OWN_PORT: u16 = 30999;

#[test]
fn node_ports_answer_on_every_node_address_and_external_ips_answer() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "node_ports_answer_on_every_node_address_and_external_ips_answer",
        "xc-np",
    )?
    else {
        return Ok(());
    };
    let p1 = scenario.cluster.add_serving_pod(NodeId::One, "p1")?;
    let p2 = scenario.cluster.add_serving_pod(NodeId::Two, "p2")?;
    let endpoints = [
        Endpoint::ready(p1, NodeId::One),
        Endpoint::ready(p2, NodeId::Two),
    ];
    // "np": type NodePort, no load balancer; "lb": the LoadBalancer on the VIP with its own
    // nodePorts; "ext": type ClusterIP with an externalIP.
    let mut node_port = with_node_ports(vec![load_balancer_service("np", VIP, &WEB_PORTS)]);
    merge(&mut node_port[0]["spec"], json!({"type": "NodePort"}));
    node_port[0]["status"] = json!({});
    let mut lb = vec![load_balancer_service("lb", VIP, &WEB_PORTS)];
    lb[0]["spec"]["ports"][0]["nodePort"] = LB_NODE_PORTS.0.into();
    lb[0]["spec"]["ports"][1]["nodePort"] = LB_NODE_PORTS.1.into();
    let mut ext = vec![load_balancer_service("ext", VIP, &WEB_PORTS)];
    merge(
        &mut ext[0]["spec"],
        json!({"type": "ClusterIP", "externalIPs": [EXTERNAL_IP.to_string()]}),
    );
    ext[0]["status"] = json!({});
    let mut documents = Vec::new();
    for (service, slice_of) in [(node_port, "np"), (lb, "lb"), (ext, "ext")] {
        documents.extend(service);
        documents.push(endpoint_slice(slice_of, &WEB_PORTS, &endpoints));
    }
    scenario.manifests.write(super::SERVICE_FILE, &documents)?;
    scenario.start_agents_with_node_names()?;

    let both: BTreeSet<String> = ["p1", "p2"].iter().map(|name| name.to_string()).collect();
    for node in NodeId::ALL {
        let (tcp, udp) = node_ports(node);
        let answered = answers(scenario.cluster.client(), tcp, udp, PER_CHECK)
            .with_context(|| format!("the NodePort Service on {}", node.name()))?;
        ensure!(
            answered == both,
            "the NodePort Service on {} answered by {answered:?}",
            node.name()
        );
        let tcp = SocketAddr::from((node.addr(), LB_NODE_PORTS.0));
        let udp = SocketAddr::from((node.addr(), LB_NODE_PORTS.1));
        let answered = answers(scenario.cluster.client(), tcp, udp, PER_CHECK)
            .with_context(|| format!("the LoadBalancer's nodePort on {}", node.name()))?;
        ensure!(
            answered == both,
            "the LoadBalancer's nodePort on {} answered by {answered:?}",
            node.name()
        );
    }

    // A port of node-1's address that no Service claims: a listener of the node gets it.
    let listener = scenario.cluster.node(NodeId::One).run_inside(|| {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, NODE_OWN_PORT))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })?;
    let own = SocketAddr::from((NodeId::One.addr(), NODE_OWN_PORT));
    let client_end = scenario.cluster.in_client(move || {
        let stream = TcpStream::connect_timeout(&own, ANSWER_TIMEOUT)
            .with_context(|| format!("connecting to the node's own listener on {own}"))?;
        Ok(stream.local_addr()?)
    })?;
    let (_, peer) = listener
        .accept()
        .context("the node's own listener has no connection")?;
    ensure!(
        peer == client_end && peer.ip() == CLIENT_ADDR,
        "the node's own listener got a connection from {peer}, the client connected from \
         {client_end}"
    );

    // The externalIP, delivered to node-2 by the router as it would be by any route.
    let external = format!("{EXTERNAL_IP}/32");
    let via = NodeId::Two.addr().to_string();
    scenario
        .cluster
        .router()
        .ip(&["route", "replace", &external, "via", &via])?;
    let answered = answers(
        scenario.cluster.client(),
        SocketAddr::from((EXTERNAL_IP, 80)),
        SocketAddr::from((EXTERNAL_IP, 53)),
        PER_CHECK,
    )
    .context("the externalIP via node-2")?;
    ensure!(answered == both, "the externalIP answered by {answered:?}");
    Ok(())
}
