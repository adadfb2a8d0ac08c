//! One port number over TCP and UDP (kube-proxy's "should be able to update service type to
//! NodePort listening on same port number but different protocols" and the "one removed
//! while the other keeps working"): a Service exposing port 80 over both, TCP to the pods'
//! greeting listener and UDP to their datagram one. Both answer; then the UDP port leaves the
//! Service and its slice: UDP is refused (ICMP port unreachable from the VIP, as a host answers
//! for a closed port: the fixtures' "UDP to the VIP's TCP-only port 80" case) while TCP keeps
//! working, new connections and an established one alike.

use std::net::SocketAddr;

use anyhow::{ensure, Context as _, Result};
use serde_json::Value;
use xdp_ingress_tests::lab::{
    cluster::{endpoint_slice, load_balancer_service, Endpoint, NodeId, ServicePort},
    HeldConnection, TCP_PORT, UDP_PORT,
};

use super::{answers, tcp_outcome, udp_outcome, Outcome, Scenario, ANSWER_TIMEOUT, VIP};

/// The Service port number both protocols share.
const PORT: u16 = 80;
/// Attempts per check: both pods answer among 20 but with odds of 2^-19.
const PER_CHECK: usize = 20;
/// UDP attempts once the port is gone.
const UDP_AFTER: usize = 2;

const TCP: ServicePort = ServicePort {
    name: "tcp",
    protocol: "TCP",
    port: PORT,
    target_port: TCP_PORT,
};
const UDP: ServicePort = ServicePort {
    name: "udp",
    protocol: "UDP",
    port: PORT,
    target_port: UDP_PORT,
};

/// Service `dual` on the VIP with `ports` and its slice.
fn dual(ports: &[ServicePort], endpoints: &[Endpoint]) -> Vec<Value> {
    vec![
        load_balancer_service("dual", VIP, ports),
        endpoint_slice("dual", ports, endpoints),
    ]
}

#[test]
fn same_port_over_tcp_and_udp_one_removed_the_other_keeps_working() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "same_port_over_tcp_and_udp_one_removed_the_other_keeps_working",
        "xc-same",
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
    scenario
        .manifests
        .write(super::SERVICE_FILE, &dual(&[TCP, UDP], &endpoints))?;
    scenario.start_agents_with_node_names()?;
    scenario.cluster.route_vips_via(NodeId::One)?;
    let addr = SocketAddr::from((VIP, PORT));
    let both = ["p1", "p2"].map(String::from).into();
    let answered = answers(scenario.cluster.client(), addr, addr, PER_CHECK)
        .context("port 80 over TCP and UDP")?;
    ensure!(answered == both, "port 80 answered by {answered:?}");
    let mut held = scenario
        .cluster
        .in_client(move || HeldConnection::open(addr, ANSWER_TIMEOUT))?;
    let held_by = held.greeting().to_string();

    scenario.write_service(&dual(&[TCP], &endpoints))?;
    let (udp, tcp) = scenario.cluster.in_client(move || {
        let udp = (0..UDP_AFTER)
            .map(|_| udp_outcome(addr))
            .collect::<Result<Vec<_>>>()?;
        let tcp = (0..PER_CHECK)
            .map(|_| tcp_outcome(addr))
            .collect::<Result<Vec<_>>>()?;
        Ok((udp, tcp))
    })?;
    ensure!(
        udp.iter().all(|o| matches!(o, Outcome::Refused)),
        "UDP port 80 removed: {udp:?}, wanted each refused"
    );
    ensure!(
        tcp.iter().all(|o| matches!(o, Outcome::Answered(_))),
        "TCP port 80 after the UDP port left: {tcp:?}"
    );
    let answered_after = held.ask()?;
    ensure!(
        answered_after == held_by,
        "the established TCP connection to {held_by} is answered by {answered_after}"
    );
    Ok(())
}
