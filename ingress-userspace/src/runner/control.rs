//! The runner's handle on what the agent writes back to a cluster (cluster mode only): the
//! election, status and Event tasks it starts, and what it hands them after each apply pass.
//! The tasks themselves live in [`crate::control`]; this is where the runner's state meets them.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::{mpsc, watch};

use super::RunError;
use crate::{
    cli::ClusterArgs,
    control::{
        election::{self, ElectionSettings},
        events::{self, EventLimiter},
        status::{self, PublishSettings, StatusPatch},
        vips::{self, AssignSettings, Assignments},
    },
    model::{ClusterObjects, ObjectName, Problem},
};

/// Leader election, Ingress status and Events (cluster mode).
pub(super) struct Control {
    publish: PublishSettings,
    patches: watch::Sender<Vec<StatusPatch>>,
    events: mpsc::Sender<(ObjectReference, String)>,
    limiter: EventLimiter,
    vips: Option<(AssignSettings, watch::Sender<Assignments>)>,
    leader: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    election: tokio::task::JoinHandle<()>,
}

impl Control {
    pub(super) fn start(client: ::kube::Client, args: &ClusterArgs) -> Result<Self, RunError> {
        let publish = args.publish()?;
        let namespace = args.election_namespace();
        let identity = election::default_identity();
        let (leader_tx, leader) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let settings = ElectionSettings::new(namespace, identity.clone());
        let election = tokio::spawn(election::run(client.clone(), settings, leader_tx, stop_rx));
        let (patches, patches_rx) = watch::channel(Vec::new());
        tokio::spawn(status::run_writer(
            client.clone(),
            patches_rx,
            leader.clone(),
        ));
        let vips = args.assign().map(|settings| {
            let (assigned, assigned_rx) = watch::channel(Vec::new());
            tokio::spawn(vips::run_writer(
                client.clone(),
                assigned_rx,
                leader.clone(),
            ));
            (settings, assigned)
        });
        let (events, events_rx) = mpsc::channel(1024);
        let leader_rx = leader.clone();
        tokio::spawn(events::run_publisher(client, identity, events_rx, leader));
        Ok(Self {
            publish,
            patches,
            events,
            limiter: EventLimiter::default(),
            vips,
            leader: leader_rx,
            stop,
            election,
        })
    }

    /// After an apply pass: the status writes and Events it calls for (written by the leader).
    pub(super) fn after_apply(
        &mut self,
        objects: &ClusterObjects,
        ours: &[ObjectName],
        problems: &[Problem],
    ) {
        if let Some(addresses) = status::publish_addresses(&self.publish, objects) {
            let ours: BTreeSet<ObjectName> = ours.iter().cloned().collect();
            self.patches
                .send_replace(status::desired_patches(objects, &ours, &addresses));
        }
        if let Some((settings, assigned)) = &self.vips {
            let (wanted, exhausted) = vips::assignments(objects, settings);
            for service in &exhausted {
                tracing::warn!(%service, "no free address left in --assign-vips");
            }
            assigned.send_replace(wanted);
        }
        // Only the leader publishes; a follower must not mark problems as published.
        if !*self.leader.borrow() {
            return;
        }
        for event in self.limiter.due(problems, std::time::Instant::now()) {
            // A full queue means the API is slow; the problem is logged anyway.
            let _ = self.events.try_send(event);
        }
    }

    /// Stops the election, releasing the Lease if this agent holds it.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), self.election).await;
    }
}
