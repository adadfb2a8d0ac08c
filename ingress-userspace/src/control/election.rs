//! Leader election on a `coordination.k8s.io/v1` Lease, the way client-go's leaderelection does
//! it: the holder renews `renewTime` every retry period; a candidate takes the Lease when it is
//! free or its `renewTime` is older than `leaseDurationSeconds`. Every write carries the
//! resourceVersion it read, so of two candidates racing, the API server lets exactly one win
//! (the other gets 409 Conflict and stays a follower). A leader that stops releases the Lease so
//! a follower takes over at its next try instead of waiting out the duration.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    api::{Api, PostParams},
    Client,
};
use tokio::sync::watch;

/// Lease timing.
#[derive(Clone, Debug)]
pub(crate) struct ElectionSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This agent's identity (pod name and a random suffix).
    pub identity: String,
    /// A Lease not renewed for this long is free.
    pub lease_duration: Duration,
    /// How often the holder renews and candidates try.
    pub retry_period: Duration,
}

impl ElectionSettings {
    /// Defaults as client-go's: 15 s lease, 2 s retry.
    pub(crate) fn new(namespace: String, identity: String) -> Self {
        Self {
            namespace,
            name: "xdp-ingress-leader".to_string(),
            identity,
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// An identity unique to this process: `$POD_NAME` or the host name, plus a random suffix (two
/// agents on one host, or a restarted pod, must not think they already hold the Lease).
pub(crate) fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "xdp-ingress".to_string());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{base}-{:08x}", nanos ^ std::process::id().rotate_left(16))
}

/// What one attempt found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Leading,
    Following,
}

/// Runs the election until `stop` fires; `leader` tells whether this agent holds the Lease.
/// Returns after releasing the Lease if it held it.
pub(crate) async fn run(
    client: Client,
    settings: ElectionSettings,
    leader: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut interval = tokio::time::interval(settings.retry_period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => break,
        }
        let attempt = match try_acquire_or_renew(&api, &settings).await {
            Ok(attempt) => attempt,
            Err(error) => {
                tracing::warn!(%error, lease = %settings.name, "leader election");
                // Could not confirm the Lease: a leader stops writing rather than risk two.
                Attempt::Following
            }
        };
        let leading = attempt == Attempt::Leading;
        if *leader.borrow() != leading {
            tracing::info!(identity = %settings.identity, leading, "leader election changed");
            let _ = leader.send(leading);
        }
    }
    if *leader.borrow() {
        let _ = leader.send(false);
        if let Err(error) = release(&api, &settings).await {
            tracing::warn!(%error, "releasing the Lease");
        }
    }
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    settings: &ElectionSettings,
) -> Result<Attempt, kube::Error> {
    let duration_seconds = i32::try_from(settings.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Following),
            Err(error) => Err(error),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let mine = holder.as_deref() == Some(settings.identity.as_str());
    if !mine {
        let held_for = spec
            .lease_duration_seconds
            .map_or(settings.lease_duration, |s| {
                Duration::from_secs(u64::try_from(s).unwrap_or(0))
            });
        let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
            let age = Timestamp::now().duration_since(renewed.0);
            age > SignedDuration::try_from(held_for).unwrap_or(SignedDuration::MAX)
        });
        if holder.is_some() && !expired {
            return Ok(Attempt::Following);
        }
        spec.holder_identity = Some(settings.identity.clone());
        spec.acquire_time = Some(now());
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(now());
    spec.lease_duration_seconds = Some(duration_seconds);
    // `lease` still carries the resourceVersion we read: a concurrent writer makes this a 409.
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(Attempt::Leading),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(Attempt::Following),
        Err(error) => Err(error),
    }
}

async fn release(api: &Api<Lease>, settings: &ElectionSettings) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        return Ok(());
    };
    let Some(spec) = lease.spec.as_mut() else {
        return Ok(());
    };
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    // client-go's release: a 1 s duration so followers see it free at once.
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now());
    api.replace(&settings.name, &PostParams::default(), &lease)
        .await
        .map(|_| ())
}
