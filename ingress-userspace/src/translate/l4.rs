//! L4 plan: which VIP:port/protocol goes to which backends, from Services of type LoadBalancer and
//! their EndpointSlices, with the meaning a real cluster gives them (kube-proxy's rules).
//!
//! A Service with a problem (no VIP, an unparsable address, an unknown protocol, a port name that
//! no EndpointSlice offers) keeps what the previous plan had for it: one bad edit never takes a
//! working Service down. Two Services claiming the same VIP:port/protocol: the one that already
//! had it keeps it, else the older one (creationTimestamp, then namespace/name); the other is
//! reported.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
};

use k8s_openapi::{
    api::{core::v1::Service, discovery::v1::EndpointSlice},
    apimachinery::pkg::apis::meta::v1::Time,
};

use crate::model::{ClusterObjects, ObjectName, Problem, Sourced};

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

/// What the translator made of one Service.
struct ServiceResult {
    frontends: Vec<(Frontend, ServicePortPlan)>,
    /// Problems that make the Service's new state untrustworthy: keep the previous one.
    broken: bool,
}

/// Objects in, plan out. `previous` is the plan now programmed: broken Services keep their
/// entries from it, and it decides who keeps a contested frontend.
pub fn translate(objects: &ClusterObjects, previous: &L4Plan) -> (L4Plan, Vec<Problem>) {
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

    // Every candidate claim on a frontend, with what decides conflicts.
    struct Claim<'a> {
        plan: ServicePortPlan,
        created: Option<&'a Time>,
        origin: String,
    }
    let mut claims: BTreeMap<Frontend, Vec<Claim<'_>>> = BTreeMap::new();
    for (name, service) in &objects.services {
        if !is_load_balancer(&service.object) {
            continue;
        }
        let slices = slices_by_service
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let result = translate_service(name, service, slices, &mut problems);
        let frontends = if result.broken {
            previous_by_service
                .get(name)
                .map(|entries| entries.iter().map(|(f, p)| (**f, (*p).clone())).collect())
                .unwrap_or_default()
        } else {
            result.frontends
        };
        for (frontend, plan) in frontends {
            claims.entry(frontend).or_default().push(Claim {
                plan,
                created: service.object.metadata.creation_timestamp.as_ref(),
                origin: service.origin.to_string(),
            });
        }
    }

    let mut plan = L4Plan::default();
    for (frontend, mut contenders) in claims {
        let incumbent = previous.frontends.get(&frontend).map(|p| &p.service);
        contenders.sort_by(|a, b| {
            let a_incumbent = Some(&a.plan.service) == incumbent;
            let b_incumbent = Some(&b.plan.service) == incumbent;
            b_incumbent
                .cmp(&a_incumbent)
                .then_with(|| compare_created(a.created, b.created))
                .then_with(|| a.plan.service.cmp(&b.plan.service))
        });
        let mut contenders = contenders.into_iter();
        let Some(winner) = contenders.next() else {
            continue;
        };
        for loser in contenders {
            problems.push(Problem {
                origin: loser.origin,
                object: format!("Service {}", loser.plan.service),
                field: "spec.ports".to_string(),
                message: format!(
                    "{frontend} is already used by Service {}; this port is not forwarded",
                    winner.plan.service
                ),
            });
        }
        plan.frontends.insert(frontend, winner.plan);
    }
    (plan, problems)
}

/// Incremental: re-translates only the Services in `services` (changed, or whose EndpointSlices
/// changed) into `plan`, which holds the plan now programmed. Returns the frontends whose plan
/// changed and the problems of those Services, or `None` when the change is structural (a Service
/// gone, or one whose set of frontends changes, which may hand a contested frontend to another
/// Service): then `plan` is left as it was and the caller translates everything with
/// [`translate`].
pub fn retranslate_services(
    objects: &ClusterObjects,
    plan: &mut L4Plan,
    services: &BTreeSet<ObjectName>,
) -> Option<(Vec<Frontend>, Vec<Problem>)> {
    let mut current: BTreeMap<&ObjectName, BTreeSet<Frontend>> = BTreeMap::new();
    for (frontend, port) in &plan.frontends {
        if services.contains(&port.service) {
            current.entry(&port.service).or_default().insert(*frontend);
        }
    }
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
    for name in services {
        let had = current.get(name);
        let Some(service) = objects.services.get(name) else {
            // Gone: structural if it had frontends, nothing to do if it never had any.
            if had.is_some() {
                return None;
            }
            continue;
        };
        if !is_load_balancer(&service.object) {
            if had.is_some() {
                return None;
            }
            continue;
        }
        let service_slices = slices.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let result = translate_service(name, service, service_slices, &mut problems);
        if result.broken {
            // The previous state stays, as in a full translation.
            continue;
        }
        let wanted: BTreeSet<Frontend> = result.frontends.iter().map(|(f, _)| *f).collect();
        if had.map_or(!wanted.is_empty(), |had| *had != wanted) {
            return None;
        }
        updates.extend(result.frontends);
    }
    let mut changed = Vec::new();
    for (frontend, port) in updates {
        if plan.frontends.get(&frontend) != Some(&port) {
            plan.frontends.insert(frontend, port);
            changed.push(frontend);
        }
    }
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

fn is_load_balancer(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
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

fn translate_service(
    name: &ObjectName,
    service: &Sourced<Service>,
    slices: &[&EndpointSlice],
    problems: &mut Vec<Problem>,
) -> ServiceResult {
    let mut broken = false;
    let report = |field: String, message: String| Problem {
        origin: service.origin.to_string(),
        object: format!("Service {name}"),
        field,
        message,
    };
    let vips = match service_vips(&service.object) {
        Ok(vips) if vips.is_empty() => {
            problems.push(report(
                "status.loadBalancer.ingress".into(),
                "the Service has no IPv4 VIP (none in status.loadBalancer.ingress[].ip, \
                 spec.loadBalancerIP or spec.externalIPs)"
                    .into(),
            ));
            return ServiceResult {
                frontends: Vec::new(),
                broken: true,
            };
        }
        Ok(vips) => vips,
        Err((field, message)) => {
            problems.push(report(field, message));
            return ServiceResult {
                frontends: Vec::new(),
                broken: true,
            };
        }
    };
    let ports = service.object.spec.as_ref().and_then(|s| s.ports.as_ref());
    let mut frontends = Vec::new();
    for (index, port) in ports.into_iter().flatten().enumerate() {
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => {
                // Valid Kubernetes, not forwarded by this datapath: skip the port, keep the rest.
                problems.push(report(
                    format!("spec.ports[{index}].protocol"),
                    "SCTP is not supported; this port is not forwarded".into(),
                ));
                continue;
            }
            other => {
                problems.push(report(
                    format!("spec.ports[{index}].protocol"),
                    format!("unknown protocol {other:?} (expected TCP, UDP or SCTP)"),
                ));
                broken = true;
                continue;
            }
        };
        let service_port = match u16::try_from(port.port) {
            Ok(p) if p != 0 => p,
            _ => {
                problems.push(report(
                    format!("spec.ports[{index}].port"),
                    format!("{} is not a valid port (1-65535)", port.port),
                ));
                broken = true;
                continue;
            }
        };
        let port_name = port.name.clone().unwrap_or_default();
        let (backends, resolved) = resolve_backends(slices, &port_name, protocol);
        if !resolved {
            problems.push(report(
                format!("spec.ports[{index}].name"),
                format!(
                    "no EndpointSlice of this Service has a {protocol} port named {port_name:?}"
                ),
            ));
            broken = true;
            continue;
        }
        for vip in &vips {
            frontends.push((
                Frontend {
                    vip: *vip,
                    port: service_port,
                    protocol,
                },
                ServicePortPlan {
                    service: name.clone(),
                    port_name: port_name.clone(),
                    backends: backends.clone(),
                    ..ServicePortPlan::default()
                },
            ));
        }
    }
    ServiceResult { frontends, broken }
}

/// The Service's IPv4 VIPs, in kube-proxy's order of preference: status, then loadBalancerIP, then
/// externalIPs. IPv6 addresses are skipped (not forwarded yet); an unparsable one is an error.
fn service_vips(service: &Service) -> Result<Vec<Ipv4Addr>, (String, String)> {
    fn parse_all<'a>(
        items: impl Iterator<Item = (String, &'a str)>,
    ) -> Result<Vec<Ipv4Addr>, (String, String)> {
        let mut vips = Vec::new();
        for (field, text) in items {
            match text.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(v4)) => {
                    if !vips.contains(&v4) {
                        vips.push(v4)
                    }
                }
                Ok(std::net::IpAddr::V6(_)) => {}
                Err(_) => return Err((field, format!("{text:?} is not an IP address"))),
            }
        }
        Ok(vips)
    }
    let from_status = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ingress| {
            ingress
                .iter()
                .enumerate()
                .filter_map(|(i, entry)| {
                    entry
                        .ip
                        .as_deref()
                        .map(|ip| (format!("status.loadBalancer.ingress[{i}].ip"), ip))
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let vips = parse_all(from_status.into_iter())?;
    if !vips.is_empty() {
        return Ok(vips);
    }
    let spec = service.spec.as_ref();
    if let Some(ip) = spec
        .and_then(|s| s.load_balancer_ip.as_deref())
        .filter(|ip| !ip.is_empty())
    {
        let vips = parse_all(std::iter::once(("spec.loadBalancerIP".to_string(), ip)))?;
        if !vips.is_empty() {
            return Ok(vips);
        }
    }
    let external = spec.and_then(|s| s.external_ips.as_ref());
    parse_all(
        external
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, ip)| (format!("spec.externalIPs[{i}]"), ip.as_str())),
    )
}

/// Ready endpoints for the Service port named `port_name`, summed over all the Service's
/// EndpointSlices. `resolved` is false when slices list ports but none has this name and
/// protocol (a Service with no slices, or slices without ports, simply has no backends yet).
pub(crate) fn resolve_backends(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
) -> (BTreeSet<Endpoint>, bool) {
    let mut backends = BTreeSet::new();
    let mut any_ports = false;
    let mut resolved = false;
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let Some(ports) = slice.ports.as_ref() else {
            continue;
        };
        any_ports |= !ports.is_empty();
        let matching = ports.iter().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == protocol.to_string()
        });
        let Some(target_port) = matching
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        resolved = true;
        for endpoint in slice.endpoints.iter().flatten() {
            // kube-proxy: a missing `ready` means ready; only an explicit false excludes.
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(addr) = address.parse::<Ipv4Addr>() {
                    backends.insert(Endpoint {
                        addr,
                        port: target_port,
                    });
                }
            }
        }
    }
    (backends, resolved || !any_ports)
}

#[cfg(test)]
mod tests;
