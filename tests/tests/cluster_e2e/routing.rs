//! The lab's own routing, with and without agents: the client reaches pods on both nodes,
//! pods reach each other across nodes (host-gw routes), a pod added later is reachable and a
//! removed one is gone, and every server sees the real source address (nothing NATs plain
//! routed traffic). With an agent on each node's uplink, all of it keeps working: traffic to
//! pod addresses is not the agent's.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{ensure, Context as _, Result};
use xdp_ingress_tests::lab::{
    self,
    cluster::{self, web_service, Cluster, Endpoint, NodeId, CLIENT2_ADDR, CLIENT_ADDR},
    HeldConnection,
};

use super::{Scenario, ANSWER_TIMEOUT, VIP};

/// Who asks.
#[derive(Clone, Copy, Debug)]
enum From<'a> {
    Client,
    Client2,
    Pod(&'a str),
}

/// From `from`, pod `to` answers over TCP and UDP with its name, and sees `from`'s own address.
fn check_direct(cluster: &Cluster, from: From<'_>, to: &str) -> Result<()> {
    let pod = cluster.pod(to)?;
    let (name, addr) = (pod.name.clone(), pod.addr);
    let (source, netns) = match from {
        From::Client => (CLIENT_ADDR, cluster.client()),
        From::Client2 => (CLIENT2_ADDR, cluster.client2()),
        From::Pod(source) => {
            let source = cluster.pod(source)?;
            (source.addr, &source.netns)
        }
    };
    let expected = name.clone();
    netns
        .run_inside(move || {
            let tcp = SocketAddr::from((addr, lab::TCP_PORT));
            let mut connection = HeldConnection::open(tcp, ANSWER_TIMEOUT)?;
            ensure!(
                connection.greeting() == expected,
                "{tcp} greeted as {:?}, not {expected}",
                connection.greeting()
            );
            let (answered, seen) = connection.ask_peer()?;
            ensure!(
                answered == expected && seen.ip() == source,
                "over TCP {answered} saw the client as {seen}, expected {expected} to see {source}"
            );
            let udp = SocketAddr::from((addr, lab::UDP_PORT));
            let (answered, seen, reply_from) = lab::udp_ask_peer(udp, ANSWER_TIMEOUT)?;
            ensure!(
                answered == expected && seen.ip() == source && reply_from == udp,
                "over UDP {answered} (from {reply_from}) saw the client as {seen}, expected \
             {expected} (from {udp}) to see {source}"
            );
            Ok(())
        })
        .with_context(|| format!("{from:?} -> pod {name} ({addr})"))
}

/// Every direct path between the clients and the pods, and between pods on different nodes.
fn check_every_direct_path(cluster: &Cluster) -> Result<()> {
    let pods: Vec<(String, NodeId)> = cluster
        .pods()
        .iter()
        .map(|pod| (pod.name.clone(), pod.node))
        .collect();
    for (to, to_node) in &pods {
        check_direct(cluster, From::Client, to)?;
        check_direct(cluster, From::Client2, to)?;
        for (from, from_node) in &pods {
            if from_node != to_node {
                check_direct(cluster, From::Pod(from), to)?;
            }
        }
    }
    Ok(())
}

/// Whether a TCP connect from the client to `addr` gets a greeting.
fn client_reaches(cluster: &Cluster, addr: Ipv4Addr) -> Result<bool> {
    let target = SocketAddr::from((addr, lab::TCP_PORT));
    cluster.in_client(move || Ok(lab::tcp_ask(target, ANSWER_TIMEOUT).is_ok()))
}

/// A pod added to a running lab is reachable at once; removed, it is gone.
fn check_pod_comes_and_goes(cluster: &mut Cluster, node: NodeId, name: &str) -> Result<()> {
    let addr = cluster.add_serving_pod(node, name)?;
    check_direct(cluster, From::Client, name)?;
    let other_node_pod = cluster
        .pods()
        .iter()
        .find(|pod| pod.node != node)
        .map(|pod| pod.name.clone())
        .context("no pod on the other node")?;
    check_direct(cluster, From::Pod(&other_node_pod), name)?;
    cluster.remove_pod(name)?;
    ensure!(
        !client_reaches(cluster, addr)?,
        "pod {name} ({addr}) still answers after it was removed"
    );
    Ok(())
}

/// host-gw: each node sends the other node's pods straight to that node on the shared
/// segment, not through the router (which would also deliver them, one hop longer).
fn check_host_gw_routes(cluster: &Cluster) -> Result<()> {
    for pod in cluster.pods() {
        let from = pod.node.other();
        let output = cluster
            .node(from)
            .ip(&["route", "get", &pod.addr.to_string()])?;
        let route = String::from_utf8_lossy(&output.stdout);
        let expected = format!("via {} dev {}", pod.node.addr(), cluster::UPLINK);
        ensure!(
            route.contains(&expected),
            "{} routes pod {} ({}) as {:?}, not {expected:?}",
            from.name(),
            pod.name,
            pod.addr,
            route.trim()
        );
    }
    Ok(())
}

#[test]
fn client_and_pods_reach_each_other_across_nodes() -> Result<()> {
    let Some(mut scenario) =
        Scenario::new("client_and_pods_reach_each_other_across_nodes", "xc-rt")?
    else {
        return Ok(());
    };
    let cluster = &mut scenario.cluster;
    cluster.add_serving_pod(NodeId::One, "a")?;
    cluster.add_serving_pod(NodeId::Two, "b")?;
    check_host_gw_routes(cluster)?;
    check_every_direct_path(cluster)?;
    // Routed to a node that has no agent, the VIP is nobody's: it must not answer.
    ensure!(
        !client_reaches(cluster, VIP)?,
        "the VIP answered without an agent"
    );
    check_pod_comes_and_goes(cluster, NodeId::Two, "c")?;
    check_pod_comes_and_goes(cluster, NodeId::One, "d")?;
    Ok(())
}

#[test]
fn agents_on_the_uplinks_leave_traffic_to_pods_alone() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "agents_on_the_uplinks_leave_traffic_to_pods_alone",
        "xc-pass",
    )?
    else {
        return Ok(());
    };
    let a = scenario.cluster.add_serving_pod(NodeId::One, "a")?;
    let b = scenario.cluster.add_serving_pod(NodeId::Two, "b")?;
    // A Service whose endpoints are the pods: the agents know the pods' addresses as backends,
    // and still must pass traffic addressed to the pods themselves.
    scenario.manifests.write(
        super::SERVICE_FILE,
        &web_service(
            "web",
            VIP,
            &[
                Endpoint::ready(a, NodeId::One),
                Endpoint::ready(b, NodeId::Two),
            ],
        ),
    )?;
    for node in NodeId::ALL {
        scenario.start_agent(node, &[])?;
    }
    check_every_direct_path(&scenario.cluster)?;
    check_pod_comes_and_goes(&mut scenario.cluster, NodeId::One, "c")?;
    check_pod_comes_and_goes(&mut scenario.cluster, NodeId::Two, "d")?;
    for (node, agent) in &mut scenario.agents {
        ensure!(agent.is_running()?, "the agent on {} died", node.name());
    }
    Ok(())
}
