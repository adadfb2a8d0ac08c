//! Ties the file source, the translator and the datapath sync together. One [`L4Agent::reload`]
//! is one pass: read objects, translate against the plan now programmed, apply the difference.

use std::time::{Duration, Instant};

use crate::{
    datapath::{
        loader::KernelMaps,
        sync::{DatapathMaps, DatapathSync, SyncReport},
    },
    model::Problem,
    source::files::{FilesError, ManifestDir},
    translate::l4::{self, L4Plan},
};

/// The result of one reload.
#[derive(Debug)]
pub struct ReloadOutcome {
    /// Problems in the objects (each also keeps the last good state of its object).
    pub problems: Vec<Problem>,
    /// What the datapath sync did.
    pub report: SyncReport,
    /// Time from reading the files to the maps being written.
    pub elapsed: Duration,
}

/// A manifest directory driving a datapath.
pub struct L4Agent<M = KernelMaps> {
    source: ManifestDir,
    plan: L4Plan,
    sync: DatapathSync<M>,
}

impl<M: DatapathMaps> L4Agent<M> {
    /// An agent whose maps are empty.
    pub fn new(source: ManifestDir, sync: DatapathSync<M>) -> Self {
        Self {
            source,
            plan: L4Plan::default(),
            sync,
        }
    }

    /// Reads the directory and applies the difference. An unreadable directory changes nothing.
    pub fn reload(&mut self) -> Result<ReloadOutcome, FilesError> {
        let started = Instant::now();
        let snapshot = self.source.load()?;
        let (plan, mut problems) = l4::translate(&snapshot.objects, &self.plan);
        problems.splice(0..0, snapshot.problems);
        let report = self.sync.apply(&plan, Instant::now());
        // What the maps hold now: the new plan where it applied, the previous state of frontends
        // that failed (a full map), so the next translation compares against the truth.
        self.plan = if report.errors.is_empty() {
            plan
        } else {
            L4Plan {
                frontends: self
                    .sync
                    .frontends()
                    .iter()
                    .map(|(frontend, programmed)| (*frontend, programmed.plan.clone()))
                    .collect(),
            }
        };
        Ok(ReloadOutcome {
            problems,
            report,
            elapsed: started.elapsed(),
        })
    }

    /// The plan now programmed.
    pub fn plan(&self) -> &L4Plan {
        &self.plan
    }

    /// The sync (for what is programmed and the maps' counters).
    pub fn sync(&self) -> &DatapathSync<M> {
        &self.sync
    }

    /// The source.
    pub fn source(&self) -> &ManifestDir {
        &self.source
    }
}

/// Human-readable lines describing a plan, one per frontend, as `validate` prints them.
pub fn describe_plan(plan: &L4Plan) -> Vec<String> {
    plan.frontends
        .iter()
        .map(|(frontend, port)| {
            let backends: Vec<String> = port.backends.iter().map(|b| b.to_string()).collect();
            let port_name = if port.port_name.is_empty() {
                "-"
            } else {
                port.port_name.as_str()
            };
            format!(
                "{frontend:<24} service {} port {port_name}: {} backend(s) [{}]",
                port.service,
                backends.len(),
                backends.join(", ")
            )
        })
        .collect()
}
