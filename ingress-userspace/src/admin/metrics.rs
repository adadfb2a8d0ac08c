//! `/metrics`: the agent's counters in the OpenMetrics text format (prometheus-client), every
//! name documented in `docs/metrics.md`.
//!
//! Three sources, each read at scrape time:
//! - the agent's own metrics (syncs, reloads, what is programmed), updated by the runner after
//!   each sync ([`AgentMetrics`]);
//! - the proxy's per-backend request counters, walked through the router current at scrape time
//!   ([`crate::proxy::server::ProxyCollector`]);
//! - the XDP datapath's per-CPU counters, summed over CPUs. The BPF maps belong to the runner's
//!   task (it writes them on every sync), so a scrape asks it for an [`L4Snapshot`] over a channel
//!   and the runner reads the maps between changes; a runner busy for longer than
//!   [`L4_SCRAPE_TIMEOUT`] leaves the L4 families out of that one scrape.

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime},
};

use prometheus_client::{
    collector::Collector,
    encoding::{text, DescriptorEncoder, NoLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, MetricType},
    registry::Registry,
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    datapath::KernelMaps,
    proxy::NginxCollector,
    sinks::{ApplyOutcome, L4Sink},
};

/// How long a scrape waits for the runner to read the BPF maps.
pub(crate) const L4_SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// Buckets of the sync duration histograms, in seconds: a sync takes from well under a
/// millisecond (one endpoint change) to seconds (a cold start at 10,000 Services).
const SYNC_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A request for the datapath's counters; the runner answers on the enclosed channel.
pub(crate) type L4Request = oneshot::Sender<L4Snapshot>;

/// Traffic counters of one Service frontend or backend, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// Flows created (frontends only).
    pub new_flows: u64,
    /// Packets dropped or refused for want of a ready backend (frontends only).
    pub no_backend: u64,
    /// New connections refused with a TCP RST or ICMP port unreachable (frontends only).
    pub rejected: u64,
    /// New connections dropped by `loadBalancerSourceRanges` (frontends only).
    pub denied: u64,
    /// New connections to remote endpoints dropped for want of a SNAT port (frontends only).
    pub snat_failures: u64,
}

/// One programmed Service frontend and its backends.
#[derive(Clone, Debug, Default)]
pub struct FrontendTraffic {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// `vip:port/proto`.
    pub frontend: String,
    /// Its counters.
    pub traffic: Traffic,
    /// `addr:port` of each backend, and its counters.
    pub backends: Vec<(String, Traffic)>,
    /// Clients with a live `sessionAffinity: ClientIP` entry; `None` without affinity.
    pub affinity_entries: Option<u64>,
}

/// The datapath's counters at one instant.
#[derive(Clone, Debug, Default)]
pub struct L4Snapshot {
    /// Per frontend.
    pub frontends: Vec<FrontendTraffic>,
    /// Packets per verdict reason.
    pub reasons: Vec<(&'static str, u64)>,
    /// Entries in the connection-tracking map (client → VIP flows).
    pub conntrack_entries: u64,
    /// SNAT mappings holding a port (flows to endpoints on other nodes).
    pub snat_mappings: u64,
}

/// Reads the datapath's counters (one map lookup per frontend, per backend, per reason).
/// Unreadable entries are left out rather than failing the scrape.
pub(crate) fn l4_snapshot(sink: &L4Sink<KernelMaps>) -> L4Snapshot {
    let maps = sink.sync().maps();
    let traffic = |c: ingress_common::TrafficCounters| Traffic {
        packets: c.packets,
        bytes: c.bytes,
        new_flows: c.new_flows,
        no_backend: c.no_backend,
        rejected: c.rejected,
        denied: c.denied,
        snat_failures: c.snat_failures,
    };
    let now = crate::datapath::datapath_now_ns();
    let programmed = sink.sync().frontends();
    // Affinity entries count while their frontend's epoch and timeout say the datapath would
    // honour them.
    let policies: std::collections::BTreeMap<u32, (u32, u32)> = programmed
        .values()
        .filter_map(|p| Some((p.service_id, (p.epoch, p.plan.policy.affinity_timeout?))))
        .collect();
    let affinity = if policies.is_empty() {
        Default::default()
    } else {
        maps.affinity_entries(|service_id, entry| {
            policies.get(&service_id).is_some_and(|(epoch, timeout)| {
                entry.service_epoch == *epoch && !entry.expired(*timeout, now)
            })
        })
    };
    let frontends = programmed
        .iter()
        .filter_map(|(frontend, programmed)| {
            let counters = maps.service_counters(programmed.service_id).ok()?;
            Some(FrontendTraffic {
                namespace: programmed.plan.service.namespace.clone(),
                service: programmed.plan.service.name.clone(),
                frontend: frontend.to_string(),
                traffic: traffic(counters),
                backends: programmed
                    .backends
                    .iter()
                    .filter_map(|(backend, id)| {
                        let counters = maps.backend_counters(*id).ok()?;
                        Some((backend.to_string(), traffic(counters)))
                    })
                    .collect(),
                affinity_entries: programmed
                    .plan
                    .policy
                    .affinity_timeout
                    .map(|_| affinity.get(&programmed.service_id).copied().unwrap_or(0)),
            })
        })
        .collect();
    let reasons = maps
        .reason_counters()
        .map(|reasons| reasons.into_iter().map(|(r, n)| (r.name(), n)).collect())
        .unwrap_or_default();
    L4Snapshot {
        frontends,
        reasons,
        conntrack_entries: maps.flow_count() as u64,
        snat_mappings: maps.snat_mappings(now) as u64,
    }
}

/// Writes the datapath's metric families.
pub(crate) fn encode_l4(
    snapshot: &L4Snapshot,
    encoder: &mut DescriptorEncoder,
) -> std::fmt::Result {
    type Read = fn(&Traffic) -> u64;
    let frontend_families: [(&str, &str, Read); 7] = [
        (
            "xdp_ingress_service_packets",
            "Packets forwarded to a Service frontend's backends",
            |t| t.packets,
        ),
        (
            "xdp_ingress_service_bytes",
            "Bytes forwarded to a Service frontend's backends",
            |t| t.bytes,
        ),
        (
            "xdp_ingress_service_new_flows",
            "Flows (5-tuples) the datapath started tracking for a Service frontend",
            |t| t.new_flows,
        ),
        (
            "xdp_ingress_service_no_backend_drops",
            "Packets to a Service frontend without a ready backend (dropped, or refused)",
            |t| t.no_backend,
        ),
        (
            "xdp_ingress_service_rejected",
            "New connections to a Service frontend without endpoints refused (TCP RST, ICMP port unreachable)",
            |t| t.rejected,
        ),
        (
            "xdp_ingress_service_source_range_drops",
            "New connections dropped because the client is outside loadBalancerSourceRanges",
            |t| t.denied,
        ),
        (
            "xdp_ingress_service_snat_failures",
            "New connections to a remote endpoint dropped because no SNAT port was free",
            |t| t.snat_failures,
        ),
    ];
    for (name, help, read) in frontend_families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for f in &snapshot.frontends {
            let labels = [
                ("namespace", f.namespace.as_str()),
                ("service", f.service.as_str()),
                ("frontend", f.frontend.as_str()),
            ];
            family
                .encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&read(&f.traffic), None)?;
        }
    }
    let backend_families: [(&str, &str, Read); 2] = [
        (
            "xdp_ingress_backend_packets",
            "Packets the datapath forwarded to a backend of a Service frontend",
            |t| t.packets,
        ),
        (
            "xdp_ingress_backend_bytes",
            "Bytes the datapath forwarded to a backend of a Service frontend",
            |t| t.bytes,
        ),
    ];
    for (name, help, read) in backend_families {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for f in &snapshot.frontends {
            for (backend, traffic) in &f.backends {
                let labels = [
                    ("namespace", f.namespace.as_str()),
                    ("service", f.service.as_str()),
                    ("frontend", f.frontend.as_str()),
                    ("backend", backend.as_str()),
                ];
                family
                    .encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&read(traffic), None)?;
            }
        }
    }
    let mut family = encoder.encode_descriptor(
        "xdp_ingress_datapath_packets",
        "Packets the XDP program handled, by verdict reason (see ARCHITECTURE.md)",
        None,
        MetricType::Counter,
    )?;
    for (reason, count) in &snapshot.reasons {
        family
            .encode_family(&[("reason", *reason)])?
            .encode_counter::<NoLabelSet, _, u64>(count, None)?;
    }
    let mut family = encoder.encode_descriptor(
        "xdp_ingress_conntrack_entries",
        "Flows (client to VIP) in the connection-tracking map; an LRU map, so old flows are \
         evicted when it is full",
        None,
        MetricType::Gauge,
    )?;
    family.encode_gauge(&(snapshot.conntrack_entries as i64))?;
    let mut family = encoder.encode_descriptor(
        "xdp_ingress_snat_mappings",
        "SNAT mappings holding a port (flows to endpoints on other nodes, not idle past their \
         timeout); each node address has 4536 ports per endpoint address and port",
        None,
        MetricType::Gauge,
    )?;
    family.encode_gauge(&(snapshot.snat_mappings as i64))?;
    let mut family = encoder.encode_descriptor(
        "xdp_ingress_service_affinity_entries",
        "Clients with a live sessionAffinity ClientIP entry, per frontend",
        None,
        MetricType::Gauge,
    )?;
    for f in &snapshot.frontends {
        if let Some(entries) = f.affinity_entries {
            let labels = [
                ("namespace", f.namespace.as_str()),
                ("service", f.service.as_str()),
                ("frontend", f.frontend.as_str()),
            ];
            family
                .encode_family(&labels)?
                .encode_gauge(&(entries as i64))?;
        }
    }
    Ok(())
}

/// A snapshot encoded once, for a per-scrape registry.
#[derive(Debug)]
struct L4Collector(L4Snapshot);

impl Collector for L4Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        encode_l4(&self.0, &mut encoder)
    }
}

/// The `result` label of a reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// The agent's own metrics; cheap clones of shared handles.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    map_syncs: Counter,
    map_sync_errors: Counter,
    map_sync_duration: Histogram,
    reloads: Family<ReloadLabels, Counter>,
    reload_duration: Histogram,
    last_reload_successful: Gauge,
    last_reload_success_time: Gauge<f64, std::sync::atomic::AtomicU64>,
    problems: Gauge,
    service_ports: Gauge,
    backends: Gauge,
    ingresses: Gauge,
    l7_backends: Gauge,
}

/// What the agent had programmed after a sync, for the gauges.
#[derive(Clone, Copy, Debug, Default)]
pub struct Programmed {
    /// Service frontends in the BPF maps (`None`: no datapath).
    pub service_ports: Option<usize>,
    /// Backends in the BPF maps.
    pub backends: Option<usize>,
    /// Ingresses the proxy serves (`None`: no proxy).
    pub ingresses: Option<usize>,
    /// Proxy backends (Ingress × Service × port).
    pub l7_backends: Option<usize>,
}

impl AgentMetrics {
    fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            map_syncs: Counter::default(),
            map_sync_errors: Counter::default(),
            map_sync_duration: Histogram::new(SYNC_BUCKETS),
            reloads: Family::default(),
            reload_duration: Histogram::new(SYNC_BUCKETS),
            last_reload_successful: Gauge::default(),
            last_reload_success_time: Gauge::default(),
            problems: Gauge::default(),
            service_ports: Gauge::default(),
            backends: Gauge::default(),
            ingresses: Gauge::default(),
            l7_backends: Gauge::default(),
        };
        let m = metrics.clone();
        registry.register(
            "xdp_ingress_map_syncs",
            "Syncs of the BPF maps with the L4 plan",
            m.map_syncs,
        );
        registry.register(
            "xdp_ingress_map_sync_errors",
            "Service frontends a map sync could not program (their previous state stays)",
            m.map_sync_errors,
        );
        registry.register(
            "xdp_ingress_map_sync_duration_seconds",
            "Time to write one sync's differences to the BPF maps",
            m.map_sync_duration,
        );
        registry.register(
            "xdp_ingress_config_reloads",
            "Configuration reloads (a debounced burst of changes applied to every sink), by result",
            m.reloads,
        );
        registry.register(
            "xdp_ingress_config_reload_duration_seconds",
            "Time from the objects to the last sink updated, per reload",
            m.reload_duration,
        );
        registry.register(
            "xdp_ingress_config_last_reload_successful",
            "Whether the last reload succeeded (1) or failed (0)",
            m.last_reload_successful,
        );
        registry.register(
            "xdp_ingress_config_last_reload_successful_timestamp_seconds",
            "When the last successful reload finished, in seconds since the epoch",
            m.last_reload_success_time,
        );
        registry.register(
            "xdp_ingress_config_problems",
            "Problems found in the objects at the last reload (each keeps its object's last good state)",
            m.problems,
        );
        registry.register(
            "xdp_ingress_service_ports",
            "Service frontends (VIP, port, protocol) programmed in the BPF maps",
            m.service_ports,
        );
        registry.register(
            "xdp_ingress_backends",
            "Backends programmed in the BPF maps, over all Service frontends",
            m.backends,
        );
        registry.register(
            "xdp_ingress_ingresses",
            "Ingresses the proxy serves",
            m.ingresses,
        );
        registry.register(
            "xdp_ingress_l7_backends",
            "Proxy backends (one per Ingress, Service and port)",
            m.l7_backends,
        );
        metrics
    }

    /// Records one reload: its outcome and what is programmed after it.
    pub fn record_reload(&self, outcome: &ApplyOutcome, programmed: Programmed) {
        let l4_errors = outcome.l4.as_ref().map_or(0, |r| r.errors.len());
        if outcome.l4.is_some() {
            self.map_syncs.inc();
            self.map_sync_errors.inc_by(l4_errors as u64);
            self.map_sync_duration
                .observe(outcome.l4_sync.as_secs_f64());
        }
        self.reload_duration.observe(outcome.elapsed.as_secs_f64());
        self.problems
            .set(i64::try_from(outcome.problems.len()).unwrap_or(i64::MAX));
        // Problems in objects are the objects' (they keep their last good state); a reload
        // fails when a sink could not take its plan.
        let certificate_problems = outcome
            .l7
            .as_ref()
            .is_some_and(|r| !r.certificate_problems.is_empty());
        self.record_result(l4_errors == 0 && !certificate_problems);
        let gauge = |gauge: &Gauge, value: Option<usize>| {
            if let Some(value) = value {
                gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        };
        gauge(&self.service_ports, programmed.service_ports);
        gauge(&self.backends, programmed.backends);
        gauge(&self.ingresses, programmed.ingresses);
        gauge(&self.l7_backends, programmed.l7_backends);
    }

    /// Records a reload that could not even read its objects (an unreadable directory).
    pub fn record_failed_reload(&self) {
        self.record_result(false);
    }

    fn record_result(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&ReloadLabels { result }).inc();
        self.last_reload_successful.set(i64::from(success));
        if success {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            self.last_reload_success_time.set(now);
        }
    }
}

/// Everything `/metrics` serves.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    agent: AgentMetrics,
    l4: Option<mpsc::Sender<L4Request>>,
    /// ingress-nginx's families (`--metrics-compat nginx`), written after ours.
    nginx: Option<NginxCollector>,
}

impl Metrics {
    /// The agent's metrics, the proxy's collector (when there is a proxy) and the channel to
    /// ask the runner for the datapath's counters (when there is a datapath).
    pub fn new(proxy: Option<Box<dyn Collector>>, l4: Option<mpsc::Sender<L4Request>>) -> Self {
        let mut registry = Registry::default();
        let agent = AgentMetrics::new(&mut registry);
        if let Some(proxy) = proxy {
            registry.register_collector(proxy);
        }
        Self {
            registry,
            agent,
            l4,
            nginx: None,
        }
    }

    /// Also writes ingress-nginx's families (`--metrics-compat nginx`).
    pub fn with_nginx(mut self, nginx: Option<NginxCollector>) -> Self {
        self.nginx = nginx;
        self
    }

    /// The handles the runner records syncs with.
    pub fn agent(&self) -> &AgentMetrics {
        &self.agent
    }

    /// The exposition text: every family, then `# EOF`.
    pub async fn render(&self) -> String {
        let l4 = match &self.l4 {
            Some(requests) => {
                let (reply, answer) = oneshot::channel();
                if requests.send(reply).await.is_ok() {
                    tokio::time::timeout(L4_SCRAPE_TIMEOUT, answer)
                        .await
                        .ok()
                        .and_then(Result::ok)
                } else {
                    None
                }
            }
            None => None,
        };
        self.encode(l4)
    }

    /// Encodes the registry and, when given, the datapath's counters.
    pub fn encode(&self, l4: Option<L4Snapshot>) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would be a bug in a label.
        if let Err(error) = text::encode_registry(&mut out, &self.registry) {
            tracing::error!(%error, "encoding metrics");
        }
        if let Some(snapshot) = l4 {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(L4Collector(snapshot)));
            if let Err(error) = text::encode_registry(&mut out, &registry) {
                tracing::error!(%error, "encoding datapath metrics");
            }
        }
        if let Some(nginx) = &self.nginx {
            nginx.render(&mut out, Some(self.agent.last_reload_successful.get()));
        }
        let _ = text::encode_eof(&mut out);
        if !out.ends_with('\n') {
            let _ = writeln!(out);
        }
        out
    }
}

#[cfg(test)]
mod tests;
