//! The sinks one apply pass writes to, fed by whichever source runs (the manifest directory or
//! the cluster). One [`Sinks::apply`] is one pass: translate the objects for each sink, apply
//! what changed. The L4 sink (XDP maps) and the L7 sink (the proxy) are each optional: `run`
//! without `--interface` has no L4 sink, and with both listeners off no L7 sink. With an L4
//! sink, the health check servers ([`HealthSink`]) are fed the L4 plan's health checks after
//! each pass.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use crate::{
    datapath::{
        sync::{DatapathMaps, DatapathSync, SyncReport},
        KernelMaps,
    },
    health::HealthSink,
    model::{ClusterObjects, ObjectName, Problem},
    proxy::{ApplyReport, Proxy},
    source::kube::Dirty,
    translate::{
        l4::{self, L4Options, L4Plan},
        l7::{self, L7Options, L7Plan},
    },
};

/// The result of one apply pass.
#[derive(Debug)]
pub struct ApplyOutcome {
    /// Problems in the objects (each also keeps the last good state of its object).
    pub problems: Vec<Problem>,
    /// What the datapath sync did, when there is a datapath.
    pub l4: Option<SyncReport>,
    /// Time the datapath sync took (writing the maps, without the translation).
    pub l4_sync: Duration,
    /// What the proxy did, when there is a proxy.
    pub l7: Option<ApplyReport>,
    /// Time to translate the objects into the L7 plan and swap it into the proxy (the routing
    /// table rebuild, without reading the files).
    pub l7_rebuild: Duration,
    /// Time from the objects to the last sink updated.
    pub elapsed: Duration,
}

/// The XDP datapath and the plan programmed into it.
pub struct L4Sink<M = KernelMaps> {
    plan: L4Plan,
    sync: DatapathSync<M>,
    options: L4Options,
}

impl<M: DatapathMaps> L4Sink<M> {
    /// A sink whose maps are empty, translating for the node `options` describes.
    pub fn new(sync: DatapathSync<M>, options: L4Options) -> Self {
        Self {
            plan: L4Plan::default(),
            sync,
            options,
        }
    }

    /// The node the plan is translated for.
    pub fn options(&self) -> &L4Options {
        &self.options
    }

    /// The plan now programmed.
    pub fn plan(&self) -> &L4Plan {
        &self.plan
    }

    /// The sync (for what is programmed and the maps' counters).
    pub fn sync(&self) -> &DatapathSync<M> {
        &self.sync
    }

    /// Translates everything against the plan now programmed and writes the difference;
    /// returns the sync's report and how long the map writes took.
    fn rebuild(
        &mut self,
        objects: &ClusterObjects,
        problems: &mut Vec<Problem>,
    ) -> (SyncReport, Duration) {
        let (plan, l4_problems) = l4::translate(objects, &self.plan, &self.options);
        problems.extend(l4_problems);
        let sync_started = Instant::now();
        let report = self.apply(plan);
        (report, sync_started.elapsed())
    }

    fn apply(&mut self, plan: L4Plan) -> SyncReport {
        let report = self.sync.apply(&plan, Instant::now());
        // What the maps hold now: the new plan where it applied, the previous state of frontends
        // that failed (a full map), so the next translation compares against the truth.
        self.plan = if report.errors.is_empty() {
            plan
        } else {
            // Health checks are not in the maps: the new plan's are the truth.
            L4Plan {
                health_checks: plan.health_checks,
                ..self.programmed_plan()
            }
        };
        report
    }

    /// The plan the maps hold, read back from the sync.
    fn programmed_plan(&self) -> L4Plan {
        L4Plan {
            frontends: self
                .sync
                .frontends()
                .iter()
                .map(|(frontend, programmed)| (*frontend, programmed.plan.clone()))
                .collect(),
            health_checks: Default::default(),
        }
    }
}

/// The proxy and the plan it serves.
pub struct L7Sink {
    options: L7Options,
    plan: L7Plan,
    proxy: Proxy,
}

impl L7Sink {
    /// A proxy fed with Ingresses chosen by `options`.
    pub fn new(proxy: Proxy, options: L7Options) -> Self {
        Self {
            options,
            plan: L7Plan::default(),
            proxy,
        }
    }

    /// The plan now served.
    pub fn plan(&self) -> &L7Plan {
        &self.plan
    }

    /// The proxy.
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// Translates everything and swaps the result into the proxy.
    fn rebuild(&mut self, objects: &ClusterObjects, problems: &mut Vec<Problem>) -> ApplyReport {
        let (plan, l7_problems) = l7::translate(objects, &self.options);
        problems.extend(l7_problems);
        let report = self.proxy.apply(&plan);
        self.plan = plan;
        report
    }
}

/// The sinks, fed by whichever source runs.
pub struct Sinks<M = KernelMaps> {
    l4: Option<L4Sink<M>>,
    l7: Option<L7Sink>,
    health: Option<HealthSink>,
}

impl<M: DatapathMaps> Sinks<M> {
    /// The given sinks, nothing applied yet.
    pub fn new(l4: Option<L4Sink<M>>, l7: Option<L7Sink>) -> Self {
        Self {
            l4,
            l7,
            health: None,
        }
    }

    /// Also serves the L4 plan's health checks (with an L4 sink).
    pub fn with_health(mut self, health: HealthSink) -> Self {
        self.health = Some(health);
        self
    }

    /// The health check servers, if any.
    pub fn health(&self) -> Option<&HealthSink> {
        self.health.as_ref()
    }

    /// Opens, updates and closes the health check servers after the L4 sink's pass.
    fn apply_health(&mut self, objects: &ClusterObjects, problems: &mut Vec<Problem>) {
        if let (Some(health), Some(l4)) = (self.health.as_mut(), self.l4.as_ref()) {
            problems.extend(health.apply(&l4.plan.health_checks, objects));
        }
    }

    /// Translates `objects` and applies the difference to each sink. `problems` are the
    /// source's own (files that did not parse); they come back in the outcome with the
    /// translators'.
    pub fn apply(&mut self, objects: &ClusterObjects, mut problems: Vec<Problem>) -> ApplyOutcome {
        let started = Instant::now();
        let mut l4_sync = Duration::ZERO;
        let l4 = self.l4.as_mut().map(|sink| {
            let (report, sync_time) = sink.rebuild(objects, &mut problems);
            l4_sync = sync_time;
            report
        });
        self.apply_health(objects, &mut problems);
        let l7_started = Instant::now();
        let l7 = self
            .l7
            .as_mut()
            .map(|sink| sink.rebuild(objects, &mut problems));
        let l7_rebuild = l7_started.elapsed();
        ApplyOutcome {
            problems,
            l4,
            l4_sync,
            l7,
            l7_rebuild,
            elapsed: started.elapsed(),
        }
    }

    /// Like [`Sinks::apply`], but re-translates only what `dirty` says changed when it can: an
    /// EndpointSlice change re-translates its Service's frontends and writes only those, and
    /// swaps in the proxy's backends for that Service without rebuilding the routing table.
    /// Anything structural (a relist, a Service gaining or losing frontends, an Ingress, class or
    /// Secret change) takes the full path for that sink.
    pub fn apply_dirty(&mut self, objects: &ClusterObjects, dirty: &Dirty) -> ApplyOutcome {
        if dirty.everything {
            return self.apply(objects, Vec::new());
        }
        let started = Instant::now();
        let mut problems = Vec::new();
        let mut l4_sync = Duration::ZERO;
        let touched: BTreeSet<ObjectName> = dirty
            .services
            .iter()
            .chain(&dirty.endpoints_of)
            .cloned()
            .collect();
        let l4 = match self.l4.as_mut() {
            Some(sink) if !touched.is_empty() => {
                let mut plan = std::mem::take(&mut sink.plan);
                match l4::retranslate_services(objects, &mut plan, &touched, &sink.options) {
                    Some((changed, l4_problems)) => {
                        problems.extend(l4_problems);
                        let sync_started = Instant::now();
                        let report = sink.sync.apply_frontends(&plan, &changed, Instant::now());
                        l4_sync = sync_started.elapsed();
                        sink.plan = plan;
                        if !report.errors.is_empty() {
                            sink.plan = sink.programmed_plan();
                        }
                        Some(report)
                    }
                    None => {
                        // Structural: retranslate_services left `plan` as it was.
                        sink.plan = plan;
                        let (report, sync_time) = sink.rebuild(objects, &mut problems);
                        l4_sync = sync_time;
                        Some(report)
                    }
                }
            }
            _ => None,
        };
        self.apply_health(objects, &mut problems);
        let l7_started = Instant::now();
        let l7 = self.l7.as_mut().and_then(|sink| {
            if dirty.routing || !dirty.services.is_empty() {
                Some(sink.rebuild(objects, &mut problems))
            } else if !dirty.endpoints_of.is_empty() {
                let changed = l7::refresh_endpoints(objects, &mut sink.plan, &dirty.endpoints_of);
                (!changed.is_empty()).then(|| sink.proxy.apply_endpoints(&sink.plan, &changed))
            } else {
                None
            }
        });
        let l7_rebuild = l7_started.elapsed();
        ApplyOutcome {
            problems,
            l4,
            l4_sync,
            l7,
            l7_rebuild,
            elapsed: started.elapsed(),
        }
    }

    /// The L4 sink, if any.
    pub fn l4(&self) -> Option<&L4Sink<M>> {
        self.l4.as_ref()
    }

    /// The L7 sink, if any.
    pub fn l7(&self) -> Option<&L7Sink> {
        self.l7.as_ref()
    }
}
