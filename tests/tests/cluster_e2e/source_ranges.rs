//! kube-proxy's "should only allow access from service loadbalancer source ranges"
//! (test/e2e/network/loadbalancer.go): with `loadBalancerSourceRanges` covering the first
//! client's subnet only, the first client is answered at the VIP and the second gets nothing
//! (dropped, not refused); the same Service's nodePort still answers the second client, since
//! kube-proxy applies the ranges to LoadBalancer addresses only; with the field removed both
//! clients are answered at the VIP.

use std::collections::BTreeSet;

use anyhow::{ensure, Context as _, Result};
use serde_json::json;
use xdp_ingress_tests::lab::cluster::{Endpoint, NodeId};

use super::{answers, node_ports, silent, vip_ports, web_with, with_node_ports, Scenario};

/// Connections per check (one endpoint: any number shows it answers).
const PER_CHECK: usize = 5;

#[test]
fn source_ranges_admit_only_their_clients_at_the_load_balancer_address() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "source_ranges_admit_only_their_clients_at_the_load_balancer_address",
        "xc-src",
    )?
    else {
        return Ok(());
    };
    let p1 = scenario.cluster.add_serving_pod(NodeId::One, "p1")?;
    let endpoints = [Endpoint::ready(p1, NodeId::One)];
    // The first client's /26 (198.51.100.0/26); the second client is 198.51.100.66.
    let ranged = with_node_ports(web_with(
        &endpoints,
        json!({"loadBalancerSourceRanges": ["198.51.100.0/26"]}),
    ));
    scenario.manifests.write(super::SERVICE_FILE, &ranged)?;
    scenario.start_agents_with_node_names()?;
    let only_p1: BTreeSet<String> = BTreeSet::from(["p1".to_string()]);
    let (vip_tcp, vip_udp) = vip_ports();
    let (np_tcp, np_udp) = node_ports(NodeId::One);
    let cluster = &scenario.cluster;

    let answered = answers(cluster.client(), vip_tcp, vip_udp, PER_CHECK)
        .context("the client inside the range, at the VIP")?;
    ensure!(answered == only_p1, "answered by {answered:?}");
    ensure!(
        silent(cluster.client2(), vip_tcp, vip_udp)?,
        "the second client, outside the range, got an answer or a refusal at the VIP"
    );
    let answered = answers(cluster.client2(), np_tcp, np_udp, PER_CHECK)
        .context("the second client at the nodePort (ranges do not apply there)")?;
    ensure!(answered == only_p1, "answered by {answered:?}");

    scenario.write_service(&with_node_ports(web_with(&endpoints, json!({}))))?;
    for (name, client) in [
        ("client", scenario.cluster.client()),
        ("client2", scenario.cluster.client2()),
    ] {
        let answered = answers(client, vip_tcp, vip_udp, PER_CHECK)
            .with_context(|| format!("{name} at the VIP, the field removed"))?;
        ensure!(answered == only_p1, "answered by {answered:?}");
    }
    Ok(())
}
