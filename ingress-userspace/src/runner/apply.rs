//! One apply pass as the runner makes it: take what the source holds now (read the manifest
//! directory off the workers, or the cluster's objects and what changed since the last pass),
//! apply it to the sinks, hand the cluster write-back its part, then log and count what the pass
//! did. The runner decides when a pass runs; this decides what one is.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use super::Source;
use crate::{
    admin::metrics::{AgentMetrics, Programmed},
    datapath::KernelMaps,
    model::{ObjectName, Origin, Problem},
    sinks::{ApplyOutcome, Sinks},
    source::files::{FilesError, ManifestDir, Snapshot},
    translate::l7::L7Plan,
};

/// Applies the source's objects to the sinks; false when there is nothing complete to apply yet
/// (a cluster source before its initial list, an unreadable directory).
pub(super) async fn apply_pass(
    sinks: &mut Sinks<KernelMaps>,
    source: &mut Source,
    metrics: &AgentMetrics,
) -> bool {
    let reading = Instant::now();
    let mut read = None;
    let outcome = match source {
        Source::Files(files, _) => match load_off_the_workers(files.clone()).await {
            Ok(snapshot) => {
                read = Some(reading.elapsed());
                sinks.apply(&snapshot.objects, snapshot.problems)
            }
            Err(error) => {
                tracing::error!("{error}; keeping the programmed state");
                metrics.record_failed_reload();
                return false;
            }
        },
        Source::Kube(kube, control) => {
            if !kube.has_listed_all() {
                return false;
            }
            let outcome = kube.with_changes(|objects, dirty| {
                let outcome = sinks.apply_dirty(objects, &dirty);
                let ours = sinks.l7().map_or(&[][..], |l7| &l7.plan().ingresses[..]);
                // A Secret whose PEM does not parse is found by the proxy, not the translator;
                // it deserves an Event on the Secret as much as a translation problem does.
                // (A Secret that is missing or lacks a key is the translator's problem, already
                // reported on the Ingress that names it.)
                let unusable: BTreeSet<&ObjectName> = sinks
                    .l7()
                    .into_iter()
                    .flat_map(|l7| l7.plan().tls.iter().chain(&l7.plan().default_tls))
                    .filter(|tls| tls.pem.is_err())
                    .map(|tls| &tls.secret)
                    .collect();
                let mut problems = outcome.problems.clone();
                let unparsable = outcome
                    .l7
                    .iter()
                    .flat_map(|r| &r.certificate_problems)
                    .filter(|p| !unusable.contains(&p.secret));
                for broken in unparsable {
                    problems.push(Problem {
                        severity: crate::model::Severity::Error,
                        origin: Origin::Api.to_string(),
                        object: format!("Secret {}", broken.secret),
                        field: "data".to_string(),
                        message: broken.message.clone(),
                    });
                }
                control.after_apply(objects, ours, &problems);
                outcome
            });
            if let Some(l7) = sinks.l7() {
                kube.set_referenced_secrets(referenced_secrets(l7.plan()));
            }
            outcome
        }
    };
    report(sinks, &outcome, read);
    metrics.record_reload(&outcome, programmed(sinks));
    true
}

/// Reads the manifest directory on tokio's blocking pool: file I/O and YAML parsing take as
/// long as the files make them take, and with `--workers 1` the runner shares its thread with
/// the proxy, which must keep serving meanwhile. (Reads cannot block forever: only regular files
/// are opened, without waiting, and read up to `--max-manifest-bytes`.)
async fn load_off_the_workers(
    files: Arc<std::sync::Mutex<ManifestDir>>,
) -> Result<Snapshot, LoadError> {
    let path = files.lock().map_or_else(
        |e| e.into_inner().path().to_path_buf(),
        |f| f.path().to_path_buf(),
    );
    tokio::task::spawn_blocking(move || {
        // A panic in an earlier load poisoned the lock; what it held is still a directory to read.
        let mut files = files.lock().unwrap_or_else(|e| e.into_inner());
        files.load().map_err(LoadError::Files)
    })
    .await
    .unwrap_or_else(|error| {
        Err(LoadError::Panicked {
            path,
            message: error.to_string(),
        })
    })
}

/// Why the manifest directory gave nothing this time.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    /// Not readable as a whole.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// The reading thread panicked (a bug; the agent keeps its state and reads again next time).
    #[error("reading {path} failed: {message}")]
    Panicked {
        /// The directory.
        path: std::path::PathBuf,
        /// The join error.
        message: String,
    },
}

/// What the sinks hold now, for the gauges.
fn programmed(sinks: &Sinks<KernelMaps>) -> Programmed {
    Programmed {
        service_ports: sinks.l4().map(|l4| l4.plan().frontends.len()),
        backends: sinks.l4().map(|l4| l4.plan().backend_count()),
        ingresses: sinks.l7().map(|l7| l7.plan().ingresses.len()),
        l7_backends: sinks.l7().map(|l7| l7.plan().backends.len()),
    }
}

/// The Secrets an L7 plan uses.
fn referenced_secrets(plan: &L7Plan) -> BTreeSet<ObjectName> {
    plan.tls
        .iter()
        .chain(&plan.default_tls)
        .map(|tls| tls.secret.clone())
        .chain(
            plan.backends
                .iter()
                .filter_map(|b| b.upstream_secret.clone()),
        )
        .chain(plan.auth_secrets.iter().cloned())
        .collect()
}

/// Logs what an apply pass did; `read`: how long reading the files took (files source only).
fn report(sinks: &Sinks<KernelMaps>, outcome: &ApplyOutcome, read: Option<Duration>) {
    for problem in &outcome.problems {
        tracing::warn!("{problem}");
    }
    if let (Some(r), Some(l4)) = (&outcome.l4, sinks.l4()) {
        for error in &r.errors {
            tracing::error!("{error}");
        }
        tracing::info!(
            added = r.added,
            changed = r.changed,
            removed = r.removed,
            unchanged = r.unchanged,
            "L4: {} Service port(s), {} backend(s)",
            l4.plan().frontends.len(),
            l4.plan().backend_count()
        );
    }
    if let (Some(r), Some(l7)) = (&outcome.l7, sinks.l7()) {
        for problem in &r.certificate_problems {
            tracing::warn!(secret = %problem.secret, "certificate: {}", problem.message);
        }
        tracing::info!(
            backends = r.backends,
            rebuild_ms = outcome.l7_rebuild.as_secs_f64() * 1e3,
            swap_ms = r.elapsed.as_secs_f64() * 1e3,
            "L7: {} Ingress(es), {} certificate entr(ies)",
            l7.plan().ingresses.len(),
            l7.plan().tls.len()
        );
    }
    match read {
        Some(read) => tracing::info!(
            problems = outcome.problems.len(),
            read_ms = read.as_secs_f64() * 1e3,
            l4_sync_ms = outcome.l4_sync.as_secs_f64() * 1e3,
            elapsed_ms = outcome.elapsed.as_secs_f64() * 1e3,
            "synced"
        ),
        None => tracing::info!(
            problems = outcome.problems.len(),
            elapsed_ms = outcome.elapsed.as_secs_f64() * 1e3,
            "synced"
        ),
    }
}
