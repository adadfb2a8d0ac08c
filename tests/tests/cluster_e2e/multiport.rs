//! kube-proxy's "should serve multiport endpoints from pods" (test/e2e/network/service.go) with
//! named targetPorts: one Service with two TCP ports whose targetPorts are container port names.
//! The EndpointSlice controller resolves a name per pod and groups pods whose numbers agree into
//! one slice, so the number a Service port reaches comes from the slice an endpoint is in, found
//! by the Service port's name. Here the two pods name their listeners the other way round (p1's
//! `first` is its greeting listener 8080 and `second` its HTTP listener 8081; p2 the reverse),
//! each in a slice of its own: every connection must reach the listener its own slice names.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::{json, Value};
use xdp_ingress_tests::lab::{
    cluster::{endpoint_slice, load_balancer_service, Endpoint, NodeId, ServicePort},
    HTTP_PORT, TCP_PORT,
};

use super::{Scenario, ANSWER_TIMEOUT, VIP};

/// Connections per Service port: both pods answer among 20 but with odds of 2^-19.
const PER_PORT: usize = 20;
/// The Service's ports: `first` on 80 and `second` on 81, targetPorts named below.
const PORTS: [(&str, u16, &str); 2] = [("first", 80, "lab-a"), ("second", 81, "lab-b")];

/// The listener of a lab server that answered: the greeting one (8080) or the HTTP one (8081).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Listener {
    Greeting,
    Http,
}

/// The slice `name` of Service `mp` for one pod: `first` and `second` resolved to these numbers.
fn slice(name: &str, first: u16, second: u16, endpoint: Endpoint) -> Value {
    let ports = [("first", first), ("second", second)].map(|(port, target)| ServicePort {
        name: port,
        protocol: "TCP",
        port: 0,
        target_port: target,
    });
    let mut slice = endpoint_slice("mp", &ports, &[endpoint]);
    slice["metadata"]["name"] = name.into();
    slice
}

/// Connects to `addr`, sends an HTTP request and tells who answered on which listener: the
/// greeting listener greets with the pod's name first, the HTTP one answers the request with
/// `<name> GET /which` as its body.
fn who_listens(addr: SocketAddr) -> Result<(String, Listener)> {
    let mut stream = TcpStream::connect_timeout(&addr, ANSWER_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.write_all(b"GET /which HTTP/1.1\r\nhost: lab\r\n\r\n")?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .with_context(|| format!("the first line from {addr}"))?;
    if !line.starts_with("HTTP/1.1 ") {
        return Ok((line.trim().to_string(), Listener::Greeting));
    }
    // The head, then the one-line body.
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("{addr} closed before the body");
        }
        if line.trim().is_empty() {
            break;
        }
    }
    line.clear();
    reader.read_line(&mut line)?;
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        [name, "GET", "/which"] => Ok((name.to_string(), Listener::Http)),
        _ => bail!("{addr} answered the request with {line:?}"),
    }
}

#[test]
fn multiport_named_target_ports_reach_the_listener_each_slice_names() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "multiport_named_target_ports_reach_the_listener_each_slice_names",
        "xc-mport",
    )?
    else {
        return Ok(());
    };
    let p1 = scenario.cluster.add_serving_pod(NodeId::One, "p1")?;
    let p2 = scenario.cluster.add_serving_pod(NodeId::Two, "p2")?;
    let mut service = load_balancer_service("mp", VIP, &[]);
    service["spec"]["ports"] = PORTS
        .iter()
        .map(|(name, port, target)| {
            json!({"name": name, "protocol": "TCP", "port": port, "targetPort": target})
        })
        .collect();
    let documents = [
        service,
        slice(
            "mp-p1",
            TCP_PORT,
            HTTP_PORT,
            Endpoint::ready(p1, NodeId::One),
        ),
        slice(
            "mp-p2",
            HTTP_PORT,
            TCP_PORT,
            Endpoint::ready(p2, NodeId::Two),
        ),
    ];
    scenario.manifests.write(super::SERVICE_FILE, &documents)?;
    scenario.start_agents_with_node_names()?;
    // Via node-1: p1 is local (reached through the stack), p2 remote (SNAT).
    scenario.cluster.route_vips_via(NodeId::One)?;

    let expected = |first_pod: Listener| -> BTreeSet<(String, Listener)> {
        let other = match first_pod {
            Listener::Greeting => Listener::Http,
            Listener::Http => Listener::Greeting,
        };
        [("p1".to_string(), first_pod), ("p2".to_string(), other)].into()
    };
    for ((name, port, _), p1_listener) in
        PORTS.into_iter().zip([Listener::Greeting, Listener::Http])
    {
        let addr = SocketAddr::from((VIP, port));
        let answered = scenario.cluster.in_client(move || {
            (0..PER_PORT)
                .map(|i| who_listens(addr).with_context(|| format!("connection {i} to {addr}")))
                .collect::<Result<BTreeSet<_>>>()
        })?;
        ensure!(
            answered == expected(p1_listener),
            "port {name} ({addr}) answered by {answered:?}, expected {:?}",
            expected(p1_listener)
        );
    }
    Ok(())
}
