//! kube-proxy's "should implement service.kubernetes.io/service-proxy-name" and "...headless"
//! (test/e2e/network/service.go): a Service labelled for another proxy, or as headless, is not
//! programmed; adding the label makes its VIP silent on a running agent, removing it makes the
//! VIP answer again.

use anyhow::{ensure, Context as _, Result};
use serde_json::{json, Value};
use xdp_ingress_tests::lab::cluster::{Endpoint, NodeId};

use super::{vip_answers, vip_silent, web_with, Scenario};

/// Connections per check (one endpoint: any number shows it answers).
const PER_CHECK: usize = 5;

#[test]
fn proxy_name_and_headless_labels_take_the_service_away_and_back() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "proxy_name_and_headless_labels_take_the_service_away_and_back",
        "xc-lbl",
    )?
    else {
        return Ok(());
    };
    let p1 = scenario.cluster.add_serving_pod(NodeId::One, "p1")?;
    let endpoints = [Endpoint::ready(p1, NodeId::One)];
    let labelled = |labels: Value| {
        let mut documents = web_with(&endpoints, Value::Null);
        documents[0]["metadata"]["labels"] = labels;
        documents
    };
    scenario
        .manifests
        .write(super::SERVICE_FILE, &labelled(json!({"app": "web"})))?;
    scenario.start_agents_with_node_names()?;
    let answers = |scenario: &Scenario, step: &str| -> Result<()> {
        let answered = vip_answers(&scenario.cluster, PER_CHECK).context(step.to_string())?;
        ensure!(
            answered.len() == 1 && answered.contains("p1"),
            "{step}: answered by {answered:?}"
        );
        Ok(())
    };
    answers(&scenario, "unlabelled")?;
    for label in [
        json!({"app": "web", "service.kubernetes.io/service-proxy-name": "other"}),
        json!({"app": "web", "service.kubernetes.io/headless": ""}),
    ] {
        scenario.write_service(&labelled(label.clone()))?;
        ensure!(
            vip_silent(&scenario.cluster)?,
            "the VIP answered with labels {label}"
        );
        scenario.write_service(&labelled(json!({"app": "web"})))?;
        answers(&scenario, &format!("after removing {label}"))?;
    }
    Ok(())
}
