//! A rolling update under load (kube-proxy's e2e "should not have connectivity disruption
//! during rolling update with externalTrafficPolicy=Cluster" in test/e2e/network/
//! loadbalancer.go accepts 95 % success; we want all): three pods, two on node-1 and one on
//! node-2, replaced one by one as a Deployment does it (the new pod ready, then the old one
//! terminating but serving, then gone from the slice and deleted) while a client opens new TCP
//! connections to the VIP without pause. Every connection must be answered. Between steps the
//! test waits for a number of connections made after the step, not for time, so every phase
//! carries traffic and the count cannot come out vacuously small.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::{json, Value};
use xdp_ingress_tests::{
    lab::{
        self,
        cluster::{Endpoint, NodeId},
    },
    netns,
};

use super::{web_with, Scenario, ANSWER_TIMEOUT, VIP};

/// Connections each phase must see before the next step (10 phases, so at least 120 in all,
/// every one checked).
const PER_PHASE: usize = 12;
/// How long a phase may take to see its connections (each takes milliseconds).
const PHASE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pods before and after, with their nodes.
const PODS: [(NodeId, &str, &str); 3] = [
    (NodeId::One, "old-1", "new-1"),
    (NodeId::One, "old-2", "new-2"),
    (NodeId::Two, "old-3", "new-3"),
];

/// One endpoint of the slice by its state in the rollout.
#[derive(Clone, Copy)]
struct Member {
    endpoint: Endpoint,
    terminating: bool,
    /// Gone from the slice.
    removed: bool,
}

impl Member {
    fn ready(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            terminating: false,
            removed: false,
        }
    }
}

/// The Service with the members not removed, terminating ones as `serving: true,
/// terminating: true`.
fn documents(members: &[Member]) -> Vec<Value> {
    let listed: Vec<&Member> = members.iter().filter(|m| !m.removed).collect();
    let endpoints: Vec<Endpoint> = listed.iter().map(|m| m.endpoint).collect();
    let mut documents = web_with(&endpoints, Value::Null);
    for (index, member) in listed.iter().enumerate() {
        if member.terminating {
            documents[1]["endpoints"][index]["conditions"] =
                json!({"ready": false, "serving": true, "terminating": true});
        }
    }
    documents
}

/// The client's results as they are taken: every one must be an answer.
struct Results {
    receiver: mpsc::Receiver<Result<String, String>>,
    /// Connections checked so far.
    count: usize,
}

impl Results {
    /// Checks what the client has made so far, then waits for `n` connections made from now
    /// on: the pods that answered them, in order (the first may have started a moment before).
    fn next(&mut self, n: usize, phase: &str) -> Result<Vec<String>> {
        for result in self.receiver.try_iter() {
            self.count += 1;
            if let Err(error) = result {
                bail!("{phase}: a connection made before the phase failed: {error}");
            }
        }
        let mut names = Vec::with_capacity(n);
        for i in 0..n {
            match self.receiver.recv_timeout(PHASE_TIMEOUT) {
                Ok(Ok(name)) => names.push(name),
                Ok(Err(error)) => bail!("{phase}: connection {i} of the phase failed: {error}"),
                Err(error) => {
                    bail!("{phase}: no connection result within {PHASE_TIMEOUT:?}: {error}")
                }
            }
            self.count += 1;
        }
        Ok(names)
    }
}

#[test]
fn every_backend_replaced_under_a_stream_of_new_connections_without_a_failure() -> Result<()> {
    let Some(mut scenario) = Scenario::new(
        "every_backend_replaced_under_a_stream_of_new_connections_without_a_failure",
        "xc-roll",
    )?
    else {
        return Ok(());
    };
    let mut members = Vec::new();
    for (node, old, _) in PODS {
        let addr = scenario.cluster.add_serving_pod(node, old)?;
        members.push(Member::ready(Endpoint::ready(addr, node)));
    }
    scenario
        .manifests
        .write(super::SERVICE_FILE, &documents(&members))?;
    scenario.start_agents_with_node_names()?;
    scenario.cluster.route_vips_via(NodeId::One)?;

    // The client: one new connection after another until told to stop, each result sent on.
    let stop = Arc::new(AtomicBool::new(false));
    let (sender, receiver) = mpsc::channel();
    let mut results = Results { receiver, count: 0 };
    let client_netns = scenario.cluster.client().name().to_string();
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<()> {
            netns::enter_named(&client_netns)?;
            let vip = SocketAddr::from((VIP, 80));
            while !stop.load(Ordering::SeqCst) {
                let result = lab::tcp_ask(vip, ANSWER_TIMEOUT).map_err(|e| format!("{e:#}"));
                if sender.send(result).is_err() {
                    break;
                }
            }
            Ok(())
        })
    };
    let rollout = (|| -> Result<(Vec<String>, Vec<String>)> {
        let before = results.next(PER_PHASE, "before the rollout")?;
        for (index, (node, old, new)) in PODS.into_iter().enumerate() {
            let addr = scenario.cluster.add_serving_pod(node, new)?;
            members.push(Member::ready(Endpoint::ready(addr, node)));
            scenario.write_service(&documents(&members))?;
            results.next(PER_PHASE, &format!("{new} ready beside {old}"))?;
            members[index].terminating = true;
            scenario.write_service(&documents(&members))?;
            results.next(PER_PHASE, &format!("{old} terminating"))?;
            members[index].removed = true;
            scenario.write_service(&documents(&members))?;
            scenario.cluster.remove_pod(old)?;
            results.next(PER_PHASE, &format!("{old} removed"))?;
        }
        let after = results.next(PER_PHASE, "after the rollout")?;
        Ok((before, after))
    })();
    stop.store(true, Ordering::SeqCst);
    let client_result = client.join();
    // What the client made between the last phase and the stop counts too.
    let tail: Vec<Result<String, String>> = results.receiver.try_iter().collect();
    let (before, after) = rollout?;
    match client_result {
        Ok(result) => result.context("the client thread")?,
        Err(_) => bail!("the client thread panicked"),
    }
    let failed: Vec<&String> = tail.iter().filter_map(|r| r.as_ref().err()).collect();
    ensure!(
        failed.is_empty(),
        "connections after the rollout failed: {failed:?}"
    );
    let total = results.count + tail.len();
    ensure!(
        total >= 10 * PER_PHASE,
        "only {total} connections were made during the rollout"
    );
    eprintln!("{total} connections during the rollout, none failed");
    let olds: BTreeSet<&str> = PODS.iter().map(|(_, old, _)| *old).collect();
    let news: BTreeSet<&str> = PODS.iter().map(|(_, _, new)| *new).collect();
    ensure!(
        before.iter().all(|name| olds.contains(name.as_str())),
        "before the rollout answered by {before:?}"
    );
    ensure!(
        after
            .iter()
            .skip(1)
            .all(|name| news.contains(name.as_str())),
        "after the rollout answered by {after:?}"
    );
    Ok(())
}
