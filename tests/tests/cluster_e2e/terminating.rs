//! KEP-1669 in the datapath: an endpoint that turns terminating but keeps serving keeps its
//! established connection and takes no new one while a ready endpoint exists. The terminating
//! pod runs on the other node, so its flow is SNATed: the mapping stays with the draining
//! backend.

use std::net::SocketAddr;

use anyhow::{bail, ensure, Result};
use serde_json::json;
use xdp_ingress_tests::lab::{
    self,
    cluster::{web_service, Endpoint, NodeId},
    HeldConnection,
};

use super::{Scenario, ANSWER_TIMEOUT, VIP};

/// New connections after the change: none may reach the terminating pod.
const NEW_CONNECTIONS: usize = 20;

#[test]
fn a_terminating_endpoint_keeps_its_established_connection_and_takes_no_new_ones() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "a_terminating_endpoint_keeps_its_established_connection_and_takes_no_new_ones",
        "xc-term",
    )?
    else {
        return Ok(());
    };
    let p = scenario.cluster.add_serving_pod(NodeId::Two, "p")?;
    let q = scenario.cluster.add_serving_pod(NodeId::One, "q")?;
    let endpoints = [
        Endpoint::ready(p, NodeId::Two),
        Endpoint::ready(q, NodeId::One),
    ];
    scenario
        .manifests
        .write(super::SERVICE_FILE, &web_service("web", VIP, &endpoints))?;
    scenario.start_agents_with_node_names()?;
    scenario.cluster.route_vips_via(NodeId::One)?;
    let mut held = scenario.cluster.in_client(|| {
        for _ in 0..40 {
            let held = HeldConnection::open(SocketAddr::from((VIP, 80)), ANSWER_TIMEOUT)?;
            if held.greeting() == "p" {
                return Ok(held);
            }
        }
        bail!("40 connections and none reached p")
    })?;

    // p turns terminating, still serving.
    let mut documents = web_service("web", VIP, &endpoints);
    documents[1]["endpoints"][0]["conditions"] =
        json!({"ready": false, "serving": true, "terminating": true});
    scenario.write_service(&documents)?;
    ensure!(
        held.ask()? == "p",
        "the established connection left the terminating pod"
    );
    let answered = scenario.cluster.in_client(|| {
        (0..NEW_CONNECTIONS)
            .map(|_| lab::tcp_ask(SocketAddr::from((VIP, 80)), ANSWER_TIMEOUT))
            .collect::<Result<Vec<String>>>()
    })?;
    ensure!(
        answered.iter().all(|name| name == "q"),
        "new connections reached {answered:?}, not only q"
    );
    ensure!(
        held.ask()? == "p",
        "the established connection broke while new ones went elsewhere"
    );
    Ok(())
}
