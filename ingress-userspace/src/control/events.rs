//! Kubernetes Events for problems a user must see (an Ingress rule skipped and why, a Secret that
//! does not parse), on the object concerned, rate-limited: the same message on the same object
//! at most once per [`REPEAT_AFTER`]. Only the leader publishes, so N agents do not write N
//! copies. kube-runtime's `Recorder` writes `events.k8s.io/v1` Events.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    runtime::events::{Event, EventType, Recorder, Reporter},
    Client,
};
use tokio::sync::{mpsc, watch};

use crate::model::Problem;

/// The same problem on the same object is published again only after this.
pub(crate) const REPEAT_AFTER: Duration = Duration::from_secs(300);

/// The object a problem is about, when it names one (`Kind namespace/name`).
pub(crate) fn problem_reference(problem: &Problem) -> Option<ObjectReference> {
    let (kind, name) = problem.object.split_once(' ')?;
    let (namespace, name) = name.split_once('/')?;
    let api_version = match kind {
        "Ingress" | "IngressClass" => "networking.k8s.io/v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        "Service" | "Secret" => "v1",
        _ => return None,
    };
    Some(ObjectReference {
        api_version: Some(api_version.to_string()),
        kind: Some(kind.to_string()),
        namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
        name: Some(name.to_string()),
        ..ObjectReference::default()
    })
}

/// Decides which problems to publish now (the rate limit), without I/O.
#[derive(Debug, Default)]
pub(crate) struct EventLimiter {
    last: HashMap<(String, String), Instant>,
}

impl EventLimiter {
    /// The problems not published within [`REPEAT_AFTER`], with their objects.
    pub(crate) fn due(
        &mut self,
        problems: &[Problem],
        now: Instant,
    ) -> Vec<(ObjectReference, String)> {
        self.last
            .retain(|_, at| now.duration_since(*at) < REPEAT_AFTER);
        problems
            .iter()
            .filter_map(|problem| {
                let reference = problem_reference(problem)?;
                let message = if problem.field.is_empty() {
                    problem.message.clone()
                } else {
                    format!("{}: {}", problem.field, problem.message)
                };
                let key = (problem.object.clone(), message.clone());
                if self.last.contains_key(&key) {
                    return None;
                }
                self.last.insert(key, now);
                Some((reference, message))
            })
            .collect()
    }
}

/// Publishes what it receives while this agent leads; drops it otherwise.
pub(crate) async fn run_publisher(
    client: Client,
    identity: String,
    mut events: mpsc::Receiver<(ObjectReference, String)>,
    leader: watch::Receiver<bool>,
) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "xdp-ingress".to_string(),
            instance: Some(identity),
        },
    );
    while let Some((reference, note)) = events.recv().await {
        if !*leader.borrow() {
            continue;
        }
        let event = Event {
            type_: EventType::Warning,
            reason: "ConfigurationProblem".to_string(),
            // Events cap the note at 1 kB.
            note: Some(note.chars().take(1000).collect()),
            action: "Translate".to_string(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::warn!(%error, "publishing an Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(object: &str, message: &str) -> Problem {
        Problem {
            severity: crate::model::Severity::Error,
            origin: "the Kubernetes API".into(),
            object: object.into(),
            field: "spec.rules[0].http.paths[0].path".into(),
            message: message.into(),
        }
    }

    #[test]
    fn same_problem_once_per_period_and_only_for_named_objects() {
        let mut limiter = EventLimiter::default();
        let start = Instant::now();
        let problems = [
            problem("Ingress shop/web", "must start with /"),
            problem("Ingress shop/web", "must start with /"),
            problem("Ingress shop/api", "must start with /"),
            problem("", "YAML syntax"),
        ];
        let due = limiter.due(&problems, start);
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].0.kind.as_deref(), Some("Ingress"));
        assert_eq!(due[0].0.namespace.as_deref(), Some("shop"));
        assert_eq!(
            due[0].0.api_version.as_deref(),
            Some("networking.k8s.io/v1")
        );
        assert!(due[0].1.starts_with("spec.rules[0].http.paths[0].path: "));
        assert!(limiter
            .due(&problems, start + Duration::from_secs(60))
            .is_empty());
        assert_eq!(limiter.due(&problems, start + REPEAT_AFTER).len(), 2);
    }
}
