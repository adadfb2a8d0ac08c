//! Bad Service input (issue 13's "Bad input"): a nodePort another Service already holds, a
//! source range that does not parse, an affinity timeout out of range. `validate` names each
//! at its object and field and fails; the agents log them and keep forwarding everything else:
//! the Service that holds the nodePort keeps it, the Service that lost it keeps its other
//! frontends, and a good Service beside the bad ones answers.

use std::{collections::BTreeSet, net::SocketAddr, process::Command};

use anyhow::{ensure, Context as _, Result};
use serde_json::{json, Value};
use xdp_ingress_tests::{
    agent,
    lab::cluster::{web_service, Endpoint, NodeId},
};

use super::{answers, node_ports, tcp_outcome, with_node_ports, Scenario, NODE_PORT_TCP, VIP};

/// Attempts per check: with one endpoint each, one wrong answer fails.
const PER_CHECK: usize = 5;

/// Service `name` on `vip` with one endpoint and `spec` merged in, younger than `web`.
fn bad(name: &str, vip: [u8; 4], endpoint: Endpoint, spec: Value) -> Vec<Value> {
    let mut documents = web_service(name, vip.into(), &[endpoint]);
    super::merge(&mut documents[0]["spec"], spec);
    documents[0]["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z".into();
    documents
}

#[test]
fn bad_services_are_named_and_skipped_and_everything_else_forwards() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "bad_services_are_named_and_skipped_and_everything_else_forwards",
        "xc-bad",
    )?
    else {
        return Ok(());
    };
    let p1 = scenario.cluster.add_serving_pod(NodeId::One, "p1")?;
    let p2 = scenario.cluster.add_serving_pod(NodeId::Two, "p2")?;
    let mut documents =
        with_node_ports(web_service("web", VIP, &[Endpoint::ready(p1, NodeId::One)]));
    // `clash` wants web's TCP nodePort for its own TCP port; its VIP is its own.
    let mut clash = bad(
        "clash",
        [203, 0, 113, 11],
        Endpoint::ready(p2, NodeId::Two),
        json!({}),
    );
    clash[0]["spec"]["ports"][0]["nodePort"] = NODE_PORT_TCP.into();
    documents.extend(clash);
    documents.extend(bad(
        "ranges",
        [203, 0, 113, 12],
        Endpoint::ready(p2, NodeId::Two),
        json!({"loadBalancerSourceRanges": ["198.51.100.0/26", "198.51.100.0/99"]}),
    ));
    documents.extend(bad(
        "timeout",
        [203, 0, 113, 13],
        Endpoint::ready(p2, NodeId::Two),
        json!({"sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 86401}}}),
    ));
    scenario.manifests.write(super::SERVICE_FILE, &documents)?;

    let output = Command::new(agent::binary()?)
        .arg("validate")
        .arg("--manifests")
        .arg(scenario.manifests.path())
        .env("NO_COLOR", "1")
        .output()
        .context("running validate")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "validate passed: {stderr}");
    let reported = [
        ("Service default/clash", "spec.ports[0].nodePort"),
        ("Service default/ranges", "spec.loadBalancerSourceRanges[1]"),
        (
            "Service default/timeout",
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        ),
    ];
    for (object, field) in reported {
        ensure!(
            stderr
                .lines()
                .any(|line| line.contains(object) && line.contains(field)),
            "validate does not name {object} at {field}: {stderr}"
        );
    }
    ensure!(
        !stderr.contains("Service default/web: "),
        "validate blames the good Service: {stderr}"
    );

    scenario.start_agents_with_node_names()?;
    for (node, agent) in &scenario.agents {
        let lines = agent.output();
        for (object, field) in reported {
            ensure!(
                lines
                    .iter()
                    .any(|line| line.contains(object) && line.contains(field)),
                "the agent on {} does not log {object} at {field}",
                node.name()
            );
        }
    }
    let client = scenario.cluster.client();
    let only = |name: &str| BTreeSet::from([name.to_string()]);
    let vip = |last: u8| SocketAddr::from(([203, 0, 113, last], 80));
    let vip_udp = |last: u8| SocketAddr::from(([203, 0, 113, last], 53));
    let answered = answers(client, vip(10), vip_udp(10), PER_CHECK).context("web's VIP")?;
    ensure!(answered == only("p1"), "web's VIP answered by {answered:?}");
    let (tcp, udp) = node_ports(NodeId::One);
    let answered = answers(client, tcp, udp, PER_CHECK).context("web's nodePorts")?;
    ensure!(
        answered == only("p1"),
        "web's nodePorts (one wanted by clash too) answered by {answered:?}"
    );
    let answered = answers(client, vip(11), vip_udp(11), PER_CHECK).context("clash's VIP")?;
    ensure!(
        answered == only("p2"),
        "clash's VIP (only its nodePort lost) answered by {answered:?}"
    );
    // Skipped, not open to everyone: the Service whose ranges do not parse is not forwarded.
    // (The VIP is then an address nobody owns: the stack routes it on, so the connect fails or
    // times out, as for any such address.)
    let outcome = client.run_inside(move || Ok(format!("{:?}", tcp_outcome(vip(12)))))?;
    ensure!(
        !outcome.contains("Answered"),
        "the Service with a bad source range: {outcome}"
    );
    Ok(())
}
