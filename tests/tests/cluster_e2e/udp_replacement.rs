//! kube-proxy's "should be able to preserve UDP traffic when server pod cycles for a NodePort
//! service" and its ClusterIP twin (test/e2e/network/conntrack.go): a client sends from one
//! fixed source port again and again; its backend is replaced (a new pod's endpoint added, the
//! old one removed from the slice while the old pod still serves); the next datagrams of the
//! same 5-tuple reach the new pod. kube-proxy clears the conntrack entries of a removed UDP
//! endpoint for this; here the flow to a removed endpoint is forgotten. Done with one socket, so
//! one 5-tuple throughout: a local backend replaced, then the flow moved to a remote one (SNAT)
//! and that replaced too.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

use anyhow::{ensure, Context as _, Result};
use serde_json::Value;
use xdp_ingress_tests::lab::cluster::{Endpoint, NodeId};

use super::{web_with, Outcome, Scenario, ANSWER_TIMEOUT, VIP};

/// The client's fixed source port.
const CLIENT_PORT: u16 = 40053;
/// Datagrams per step, each of which must reach the expected pod.
const PER_STEP: usize = 3;

/// Sends one question on the connected `socket` and waits for the answer.
fn ask(socket: &UdpSocket) -> Result<Outcome> {
    socket.send(b"who?\n")?;
    let mut buffer = [0u8; 512];
    match socket.recv(&mut buffer) {
        Ok(len) => Ok(Outcome::Answered(
            String::from_utf8_lossy(&buffer[..len]).trim().to_string(),
        )),
        Err(error) => Ok(Outcome::of_error(error)?),
    }
}

/// Makes `name` (a new pod on `node`) the Service's only endpoint; the pod that served before
/// keeps serving, so a datagram still sent to it would be answered by it and seen.
fn replace_with(
    scenario: &mut Scenario,
    socket: &UdpSocket,
    node: NodeId,
    name: &str,
) -> Result<()> {
    let addr = scenario.cluster.add_serving_pod(node, name)?;
    scenario.write_service(&web_with(&[Endpoint::ready(addr, node)], Value::Null))?;
    for i in 0..PER_STEP {
        let outcome = ask(socket).with_context(|| format!("datagram {i} after the change"))?;
        ensure!(
            outcome == Outcome::Answered(name.to_string()),
            "datagram {i} from port {CLIENT_PORT} after {name} replaced the endpoint: {outcome:?}"
        );
    }
    Ok(())
}

#[test]
fn a_udp_client_on_a_fixed_port_follows_its_backend_being_replaced() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "a_udp_client_on_a_fixed_port_follows_its_backend_being_replaced",
        "xc-udpcyc",
    )?
    else {
        return Ok(());
    };
    let first = scenario.cluster.add_serving_pod(NodeId::One, "local-a")?;
    scenario.manifests.write(
        super::SERVICE_FILE,
        &web_with(&[Endpoint::ready(first, NodeId::One)], Value::Null),
    )?;
    scenario.start_agents_with_node_names()?;
    scenario.cluster.route_vips_via(NodeId::One)?;
    // Created in the client's namespace, the socket stays there when used from this thread.
    let vip = SocketAddr::from((VIP, 53));
    let socket = scenario.cluster.in_client(move || {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, CLIENT_PORT))?;
        socket.connect(vip)?;
        socket.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        Ok(socket)
    })?;
    for i in 0..PER_STEP {
        let outcome = ask(&socket)?;
        ensure!(
            outcome == Outcome::Answered("local-a".to_string()),
            "datagram {i} before any change: {outcome:?}"
        );
    }

    // On node-1, where the VIP arrives: local pods, no SNAT.
    replace_with(&mut scenario, &socket, NodeId::One, "local-b")
        .context("a local backend replaced by a local one")?;
    scenario.cluster.remove_pod("local-a")?;
    // On node-2: the same 5-tuple SNATed to a remote pod, then that one replaced.
    replace_with(&mut scenario, &socket, NodeId::Two, "remote-a")
        .context("the local backend replaced by a remote one")?;
    scenario.cluster.remove_pod("local-b")?;
    replace_with(&mut scenario, &socket, NodeId::Two, "remote-b")
        .context("a remote backend replaced by a remote one")
}
