//! kube-proxy's "should serve a basic endpoint from pods" (test/e2e/network/service.go), on
//! both nodes: the Service's endpoints go 0 → 1 → 2 → 1 → 0 pods, one pod on each node, and
//! after each change the VIP, delivered to either node, answers from exactly the current
//! endpoints (TCP and UDP, UDP answers from the VIP), and not at all without endpoints.

use std::collections::BTreeSet;

use anyhow::{ensure, Context as _, Result};
use xdp_ingress_tests::lab::cluster::{web_service, Endpoint, NodeId};

use super::{vip_answers, vip_silent, Scenario, VIP};

/// Connections per check: with two endpoints, both answer among 20 but with odds of 2^-19.
const PER_CHECK: usize = 20;

#[test]
fn basic_endpoints_0_1_2_1_0_on_both_nodes() -> Result<()> {
    let Some(mut scenario) = Scenario::new("basic_endpoints_0_1_2_1_0_on_both_nodes", "xc-basic")?
    else {
        return Ok(());
    };
    let p1 = scenario.cluster.add_serving_pod(NodeId::One, "p1")?;
    let p2 = scenario.cluster.add_serving_pod(NodeId::Two, "p2")?;
    scenario
        .manifests
        .write(super::SERVICE_FILE, &web_service("web", VIP, &[]))?;
    scenario.start_agents_with_node_names()?;
    let e1 = Endpoint::ready(p1, NodeId::One);
    let e2 = Endpoint::ready(p2, NodeId::Two);
    let steps: [(&[Endpoint], &[&str]); 5] = [
        (&[], &[]),
        (&[e1], &["p1"]),
        (&[e1, e2], &["p1", "p2"]),
        (&[e2], &["p2"]),
        (&[], &[]),
    ];
    for (step, (endpoints, expected)) in steps.into_iter().enumerate() {
        scenario.write_service(&web_service("web", VIP, endpoints))?;
        let expected: BTreeSet<String> = expected.iter().map(|name| name.to_string()).collect();
        for node in NodeId::ALL {
            scenario.cluster.route_vips_via(node)?;
            let context = || {
                format!(
                    "step {step} (endpoints {expected:?}), VIP via {}",
                    node.name()
                )
            };
            if expected.is_empty() {
                ensure!(
                    vip_silent(&scenario.cluster).with_context(context)?,
                    "{}: the VIP answered without endpoints",
                    context()
                );
                continue;
            }
            let answered = vip_answers(&scenario.cluster, PER_CHECK).with_context(context)?;
            ensure!(
                answered == expected,
                "{}: answered by {answered:?}",
                context()
            );
        }
    }
    Ok(())
}
