//! L4 plan: which frontend address:port/protocol goes to which backends on this node, from
//! Services and their EndpointSlices, with the meaning a real cluster gives them (kube-proxy's
//! rules). A Service becomes frontends of three kinds: its LoadBalancer addresses (status, else
//! `spec.loadBalancerIP`), its `externalIPs` (on any type) and each nodePort (NodePort and
//! LoadBalancer types) on every node address ([`L4Options`]); ClusterIP alone makes none, and
//! Services labelled for another proxy or headless are left alone. Each frontend carries its
//! policies and its endpoints' roles (`l4/service.rs`, `l4/endpoints.rs`); an
//! `externalTrafficPolicy: Local` Service's `healthCheckNodePort` gets a [`HealthCheckPlan`].
//!
//! A Service with a problem (an unparsable address or source range, an unknown protocol, a port
//! name that no EndpointSlice offers, an affinity timeout out of range) keeps what the previous
//! plan had for it: one bad edit never takes a working Service down. Two Services claiming the
//! same address:port/protocol, the same nodePort/protocol or the same health check port: the
//! one that already had it keeps it, else the older one (creationTimestamp, then
//! namespace/name); the other is reported with the field that made the claim.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use k8s_openapi::{api::discovery::v1::EndpointSlice, apimachinery::pkg::apis::meta::v1::Time};

use self::service::{is_programmed, translate_service, Claim, ClaimKey};
pub use self::service::{
    DEFAULT_AFFINITY_TIMEOUT, HEADLESS_LABEL, MAX_AFFINITY_TIMEOUT, SERVICE_PROXY_NAME_LABEL,
    SOURCE_RANGES_ANNOTATION,
};
use crate::model::{ClusterObjects, ObjectName, Problem};

mod endpoints;
mod service;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Transport protocol of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => ingress_common::proto::TCP,
            Protocol::Udp => ingress_common::proto::UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// What clients connect to: VIP, port, protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// The VIP.
    pub vip: Ipv4Addr,
    /// The Service port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.vip, self.port, self.protocol)
    }
}

/// One endpoint address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    /// Endpoint address.
    pub addr: Ipv4Addr,
    /// Endpoint (target) port.
    pub port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.addr, self.port)
    }
}

/// Where a frontend's address comes from (kube-proxy's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// A `status.loadBalancer.ingress[].ip` (or `spec.loadBalancerIP`).
    #[default]
    LoadBalancer,
    /// A `spec.externalIPs[]` address, on any Service type.
    ExternalIp,
    /// A `nodePort` on one of this node's addresses.
    NodePort,
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FrontendKind::LoadBalancer => "LoadBalancer",
            FrontendKind::ExternalIp => "externalIP",
            FrontendKind::NodePort => "NodePort",
        })
    }
}

/// An IPv4 prefix, as in `loadBalancerSourceRanges`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ipv4Prefix {
    /// The network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub len: u8,
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// How a frontend treats its clients: decided by the translator, looked up by the datapath.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendPolicy {
    /// `externalTrafficPolicy: Local`: `backends` holds only this node's endpoints and the
    /// client's address is never rewritten (no SNAT).
    pub local_only: bool,
    /// `sessionAffinity: ClientIP`: seconds a client keeps its backend after its last packet.
    pub affinity_timeout: Option<u32>,
    /// `loadBalancerSourceRanges` (LoadBalancer frontends only); empty means every client.
    pub source_ranges: Vec<Ipv4Prefix>,
}

/// A Service port as programmed on one frontend: whose it is, how it treats clients and where it
/// goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServicePortPlan {
    /// The Service.
    pub service: ObjectName,
    /// The Service port's name (may be empty for a single unnamed port).
    pub port_name: String,
    /// Where the frontend's address comes from.
    pub kind: FrontendKind,
    /// The frontend's policies.
    pub policy: FrontendPolicy,
    /// Endpoints new flows may pick (KEP-1669: the ready ones, or the serving terminating ones
    /// when none is ready). Empty: new connections are refused.
    pub backends: BTreeSet<Endpoint>,
    /// Serving, terminating endpoints not in `backends`: their established flows go on, they take
    /// no new ones.
    pub draining: BTreeSet<Endpoint>,
    /// The endpoints of `backends` and `draining` that run on another node: their flows are
    /// SNATed to this node's address, so replies come back through it.
    pub remote: BTreeSet<Endpoint>,
    /// `backends` is empty only because of `externalTrafficPolicy: Local`: other nodes have
    /// endpoints. New connections are then dropped, as kube-proxy does, instead of refused.
    pub endpoints_elsewhere: bool,
}

/// `healthCheckNodePort` of an `externalTrafficPolicy: Local` Service: what the agent answers
/// there (kube-proxy's health check server).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthCheckPlan {
    /// The Service.
    pub service: ObjectName,
    /// Ready endpoints of the Service on this node (terminating ones do not count).
    pub local_endpoints: u32,
}

/// The whole L4 plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L4Plan {
    /// Every forwarded frontend address:port/protocol.
    pub frontends: BTreeMap<Frontend, ServicePortPlan>,
    /// Health check servers by `healthCheckNodePort`.
    pub health_checks: BTreeMap<u16, HealthCheckPlan>,
}

impl L4Plan {
    /// Number of distinct backends over all frontends (a backend shared by two frontends counts
    /// twice, as it does in the datapath).
    pub fn backend_count(&self) -> usize {
        self.frontends.values().map(|p| p.backends.len()).sum()
    }
}

/// What the translator knows about the node it programs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct L4Options {
    /// This node's name (`--node-name`): endpoints whose `nodeName` names another node are
    /// remote. `None` (no node, as in `validate`): every endpoint counts as local.
    pub node_name: Option<String>,
    /// This node's IPv4 addresses: every nodePort is a frontend on each of them.
    pub node_addresses: Vec<Ipv4Addr>,
}

/// Objects in, plan out. `previous` is the plan now programmed: broken Services keep their
/// entries from it, and it decides who keeps a contested frontend or health check port.
pub fn translate(
    objects: &ClusterObjects,
    previous: &L4Plan,
    options: &L4Options,
) -> (L4Plan, Vec<Problem>) {
    let mut problems = Vec::new();
    let slices_by_service = group_slices(objects);
    let mut previous_by_service: BTreeMap<&ObjectName, Vec<(&Frontend, &ServicePortPlan)>> =
        BTreeMap::new();
    for (frontend, plan) in &previous.frontends {
        previous_by_service
            .entry(&plan.service)
            .or_default()
            .push((frontend, plan));
    }
    // Who holds each claim now: frontends by address, nodePorts by port and protocol.
    let mut incumbents: BTreeMap<ClaimKey, &ObjectName> = BTreeMap::new();
    for (frontend, plan) in &previous.frontends {
        incumbents.insert(claim_key(frontend, plan), &plan.service);
    }

    // Every candidate claim, with what decides conflicts.
    struct Contender<'a> {
        plan: ServicePortPlan,
        field: String,
        created: Option<&'a Time>,
        origin: String,
    }
    struct HealthContender<'a> {
        plan: HealthCheckPlan,
        created: Option<&'a Time>,
        origin: String,
    }
    let mut claims: BTreeMap<ClaimKey, Vec<Contender<'_>>> = BTreeMap::new();
    let mut health_claims: BTreeMap<u16, Vec<HealthContender<'_>>> = BTreeMap::new();
    for (name, service) in &objects.services {
        if !is_programmed(&service.object) {
            continue;
        }
        let slices = slices_by_service
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let created = service.object.metadata.creation_timestamp.as_ref();
        let origin = service.origin.to_string();
        let result = translate_service(name, service, slices, options, &mut problems);
        let (service_claims, health_check) = if result.broken {
            let kept: BTreeMap<ClaimKey, Claim> = previous_by_service
                .get(name)
                .into_iter()
                .flatten()
                .map(|(f, p)| {
                    let key = claim_key(f, p);
                    let claim = Claim {
                        key,
                        plan: (*p).clone(),
                        field: "spec.ports".to_string(),
                    };
                    (key, claim)
                })
                .collect();
            let health = previous
                .health_checks
                .iter()
                .find(|(_, h)| &h.service == name)
                .map(|(port, h)| (*port, h.clone()));
            (kept.into_values().collect(), health)
        } else {
            (result.claims, result.health_check)
        };
        for claim in service_claims {
            claims.entry(claim.key).or_default().push(Contender {
                plan: claim.plan,
                field: claim.field,
                created,
                origin: origin.clone(),
            });
        }
        if let Some((port, plan)) = health_check {
            health_claims
                .entry(port)
                .or_default()
                .push(HealthContender {
                    plan,
                    created,
                    origin: origin.clone(),
                });
        }
    }

    let mut plan = L4Plan::default();
    for (key, contenders) in claims {
        let incumbent = incumbents.get(&key).copied();
        let (winner, losers) = decide(contenders, incumbent, |c| (&c.plan.service, c.created));
        let what = match key {
            ClaimKey::Address(frontend) => frontend.to_string(),
            ClaimKey::NodePort(port, protocol) => format!("nodePort {port}/{protocol}"),
        };
        for loser in losers {
            problems.push(Problem {
                severity: crate::model::Severity::Error,
                origin: loser.origin,
                object: format!("Service {}", loser.plan.service),
                field: loser.field,
                message: format!(
                    "{what} is already used by Service {}; this port is not forwarded",
                    winner.plan.service
                ),
            });
        }
        let frontends: Vec<Frontend> = match key {
            ClaimKey::Address(frontend) => vec![frontend],
            ClaimKey::NodePort(port, protocol) => options
                .node_addresses
                .iter()
                .map(|vip| Frontend {
                    vip: *vip,
                    port,
                    protocol,
                })
                .collect(),
        };
        for frontend in frontends {
            // A nodePort on a node address that is also some Service's external address and
            // port: the address claim (decided first, in key order) keeps it.
            match plan.frontends.get(&frontend) {
                Some(holder) if holder.service != winner.plan.service => {
                    problems.push(Problem {
                        severity: crate::model::Severity::Error,
                        origin: winner.origin.clone(),
                        object: format!("Service {}", winner.plan.service),
                        field: winner.field.clone(),
                        message: format!(
                            "{frontend} is already used by Service {}; not forwarded there",
                            holder.service
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    plan.frontends.insert(frontend, winner.plan.clone());
                }
            }
        }
    }
    for (port, contenders) in health_claims {
        let incumbent = previous.health_checks.get(&port).map(|h| &h.service);
        let (winner, losers) = decide(contenders, incumbent, |c| (&c.plan.service, c.created));
        for loser in losers {
            problems.push(Problem {
                severity: crate::model::Severity::Error,
                origin: loser.origin,
                object: format!("Service {}", loser.plan.service),
                field: "spec.healthCheckNodePort".to_string(),
                message: format!(
                    "health check port {port} is already used by Service {}; not served",
                    winner.plan.service
                ),
            });
        }
        plan.health_checks.insert(port, winner.plan);
    }
    (plan, problems)
}

/// The contested-claim rule: the incumbent keeps it, else the oldest (creationTimestamp, then
/// namespace/name). Returns the winner and the losers.
fn decide<'a, C>(
    mut contenders: Vec<C>,
    incumbent: Option<&ObjectName>,
    key: impl Fn(&C) -> (&ObjectName, Option<&'a Time>),
) -> (C, Vec<C>) {
    contenders.sort_by(|a, b| {
        let (a_name, a_created) = key(a);
        let (b_name, b_created) = key(b);
        let a_incumbent = Some(a_name) == incumbent;
        let b_incumbent = Some(b_name) == incumbent;
        b_incumbent
            .cmp(&a_incumbent)
            .then_with(|| compare_created(a_created, b_created))
            .then_with(|| a_name.cmp(b_name))
    });
    let losers = contenders.split_off(1);
    // `claims` and `health_claims` entries are made with one contender at least.
    let winner = contenders.remove(0);
    (winner, losers)
}

/// The claim a programmed frontend was made for.
fn claim_key(frontend: &Frontend, plan: &ServicePortPlan) -> ClaimKey {
    match plan.kind {
        FrontendKind::NodePort => ClaimKey::NodePort(frontend.port, frontend.protocol),
        FrontendKind::LoadBalancer | FrontendKind::ExternalIp => ClaimKey::Address(*frontend),
    }
}

/// Incremental: re-translates only the Services in `services` (changed, or whose EndpointSlices
/// changed) into `plan`, which holds the plan now programmed. Returns the frontends whose plan
/// changed and the problems of those Services, or `None` when the change is structural (a Service
/// gone, or one whose set of frontends or health check port changes, which may hand a contested
/// one to another Service): then `plan` is left as it was and the caller translates everything
/// with [`translate`]. Health check counts are updated in `plan` (they are not frontends).
pub fn retranslate_services(
    objects: &ClusterObjects,
    plan: &mut L4Plan,
    services: &BTreeSet<ObjectName>,
    options: &L4Options,
) -> Option<(Vec<Frontend>, Vec<Problem>)> {
    let mut current: BTreeMap<&ObjectName, BTreeSet<Frontend>> = BTreeMap::new();
    for (frontend, port) in &plan.frontends {
        if services.contains(&port.service) {
            current.entry(&port.service).or_default().insert(*frontend);
        }
    }
    let current_health: BTreeMap<&ObjectName, u16> = plan
        .health_checks
        .iter()
        .filter(|(_, h)| services.contains(&h.service))
        .map(|(port, h)| (&h.service, *port))
        .collect();
    // The slices of the named Services only, in one pass.
    let mut slices: BTreeMap<ObjectName, Vec<&EndpointSlice>> = BTreeMap::new();
    for (name, slice) in &objects.endpoint_slices {
        let labels = slice.object.metadata.labels.as_ref();
        if let Some(service) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) {
            let service = ObjectName {
                namespace: name.namespace.clone(),
                name: service.clone(),
            };
            if services.contains(&service) {
                slices.entry(service).or_default().push(&slice.object);
            }
        }
    }
    let mut problems = Vec::new();
    let mut updates = Vec::new();
    let mut health_updates = Vec::new();
    for name in services {
        let had = current.get(name);
        let had_health = current_health.get(name).copied();
        let programmed = objects
            .services
            .get(name)
            .filter(|service| is_programmed(&service.object));
        let Some(service) = programmed else {
            // Gone (or no longer ours): structural if it had anything, else nothing to do.
            if had.is_some() || had_health.is_some() {
                return None;
            }
            continue;
        };
        let service_slices = slices.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let result = translate_service(name, service, service_slices, options, &mut problems);
        if result.broken {
            // The previous state stays, as in a full translation.
            continue;
        }
        let mut wanted = BTreeMap::new();
        for claim in result.claims {
            match claim.key {
                ClaimKey::Address(frontend) => {
                    wanted.insert(frontend, claim.plan);
                }
                ClaimKey::NodePort(port, protocol) => {
                    for vip in &options.node_addresses {
                        let frontend = Frontend {
                            vip: *vip,
                            port,
                            protocol,
                        };
                        wanted.entry(frontend).or_insert_with(|| claim.plan.clone());
                    }
                }
            }
        }
        let wanted_set: BTreeSet<Frontend> = wanted.keys().copied().collect();
        if had.map_or(!wanted_set.is_empty(), |had| *had != wanted_set) {
            return None;
        }
        if had_health != result.health_check.as_ref().map(|(port, _)| *port) {
            return None;
        }
        updates.extend(wanted);
        health_updates.extend(result.health_check);
    }
    let mut changed = Vec::new();
    for (frontend, port) in updates {
        if plan.frontends.get(&frontend) != Some(&port) {
            plan.frontends.insert(frontend, port);
            changed.push(frontend);
        }
    }
    plan.health_checks.extend(health_updates);
    Some((changed, problems))
}

/// Older first; objects without a timestamp sort last.
pub(crate) fn compare_created(a: Option<&Time>, b: Option<&Time>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.0.cmp(&b.0),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

pub(crate) fn group_slices(objects: &ClusterObjects) -> BTreeMap<ObjectName, Vec<&EndpointSlice>> {
    let mut by_service: BTreeMap<ObjectName, Vec<&EndpointSlice>> = BTreeMap::new();
    for (name, slice) in &objects.endpoint_slices {
        let labels = slice.object.metadata.labels.as_ref();
        let Some(service) = labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
            continue;
        };
        by_service
            .entry(ObjectName {
                namespace: name.namespace.clone(),
                name: service.clone(),
            })
            .or_default()
            .push(&slice.object);
    }
    by_service
}

/// Ready endpoints for the Service port named `port_name`, summed over all the Service's
/// EndpointSlices (the proxy's backends). `resolved` is false when slices list ports but none
/// has this name and protocol (a Service with no slices, or slices without ports, simply has
/// no backends yet).
pub(crate) fn resolve_backends(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
) -> (BTreeSet<Endpoint>, bool) {
    let (endpoints, resolved) = endpoints::port_endpoints(
        slices,
        port_name,
        protocol,
        false,
        endpoints::Locality { node_name: None },
    );
    let ready = endpoints
        .into_iter()
        .filter(|(_, state)| state.ready)
        .map(|(endpoint, _)| endpoint)
        .collect();
    (ready, resolved)
}

#[cfg(test)]
mod tests;
