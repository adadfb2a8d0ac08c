//! One Service's claims on frontends: its LoadBalancer addresses, its `externalIPs` (on any
//! Service type) and its nodePorts, each port with its policies (traffic policy, session
//! affinity, source ranges) and its endpoints' roles on this node; plus its health check port.
//! Which claim wins a contested frontend is decided over all Services in `l4.rs`.
//!
//! A field that does not mean what it says (an address or a source range that does not parse,
//! an affinity timeout out of range, an unknown traffic policy) makes the whole Service
//! *broken*: it keeps the previous plan's entries. For source ranges this is the only safe
//! choice: dropping the bad range would leave fewer ranges, or none, which opens the frontend
//! to clients the owner meant to keep out; keeping the last good ranges fails closed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{
    endpoints::{self, Locality},
    Frontend, FrontendKind, FrontendPolicy, HealthCheckPlan, Ipv4Prefix, L4Options, Protocol,
    ServicePortPlan,
};
use crate::model::{ObjectName, Problem, Sourced};

/// Label naming the proxy that programs a Service; any value means another proxy's.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label marking a headless Service (kube-proxy's informers leave these out).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Annotation read for source ranges when `spec.loadBalancerSourceRanges` is empty.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when not given (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// The largest affinity timeout the API accepts (one day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// What a claim is on: one address:port/protocol, or a nodePort on every node address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ClaimKey {
    /// A LoadBalancer or external address.
    Address(Frontend),
    /// A nodePort: decided once for all node addresses (and without any, in `validate`).
    NodePort(u16, Protocol),
}

/// One claim of a Service.
pub(super) struct Claim {
    pub(super) key: ClaimKey,
    pub(super) plan: ServicePortPlan,
    /// The field that makes the claim, for the loser's problem.
    pub(super) field: String,
}

/// What the translator made of one Service.
pub(super) struct ServiceResult {
    pub(super) claims: Vec<Claim>,
    /// `healthCheckNodePort` and what it answers.
    pub(super) health_check: Option<(u16, HealthCheckPlan)>,
    /// Problems that make the Service's new state untrustworthy: keep the previous one.
    pub(super) broken: bool,
}

impl ServiceResult {
    fn broken() -> Self {
        Self {
            claims: Vec::new(),
            health_check: None,
            broken: true,
        }
    }
}

/// Whether the agent programs this Service at all: not another proxy's, not headless, and
/// with something external (a LoadBalancer or NodePort type, or externalIPs). ClusterIP alone
/// is for socket hooks, later.
pub(super) fn is_programmed(service: &Service) -> bool {
    let labels = service.metadata.labels.as_ref();
    if labels
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL) || l.contains_key(HEADLESS_LABEL))
    {
        return false;
    }
    let spec = service.spec.as_ref();
    matches!(
        spec.and_then(|s| s.type_.as_deref()),
        Some("LoadBalancer" | "NodePort")
    ) || spec
        .and_then(|s| s.external_ips.as_ref())
        .is_some_and(|ips| !ips.is_empty())
}

pub(super) fn translate_service(
    name: &ObjectName,
    service: &Sourced<Service>,
    slices: &[&EndpointSlice],
    options: &L4Options,
    problems: &mut Vec<Problem>,
) -> ServiceResult {
    let report = |field: String, message: String| Problem {
        severity: crate::model::Severity::Error,
        origin: service.origin.to_string(),
        object: format!("Service {name}"),
        field,
        message,
    };
    let object = &service.object;
    let spec = object.spec.as_ref();
    let service_type = spec.and_then(|s| s.type_.as_deref()).unwrap_or("ClusterIP");
    let is_lb = service_type == "LoadBalancer";
    let has_node_ports = is_lb || service_type == "NodePort";

    let lb_vips = if is_lb {
        match load_balancer_vips(object) {
            Ok(vips) => vips,
            Err((field, message)) => {
                problems.push(report(field, message));
                return ServiceResult::broken();
            }
        }
    } else {
        Vec::new()
    };
    let external_ips = match parse_ips(
        spec.and_then(|s| s.external_ips.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, ip)| (format!("spec.externalIPs[{i}]"), ip.as_str())),
    ) {
        Ok(ips) => ips,
        Err((field, message)) => {
            problems.push(report(field, message));
            return ServiceResult::broken();
        }
    };

    let mut broken = false;
    let local_only = match spec.and_then(|s| s.external_traffic_policy.as_deref()) {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            problems.push(report(
                "spec.externalTrafficPolicy".into(),
                format!("unknown traffic policy {other:?} (expected Cluster or Local)"),
            ));
            return ServiceResult::broken();
        }
    };
    let affinity_timeout = match affinity_timeout(object) {
        Ok(timeout) => timeout,
        Err((field, message)) => {
            problems.push(report(field, message));
            return ServiceResult::broken();
        }
    };
    let mut lb_vips = lb_vips;
    // No address given yet (a cloud or `--assign-vips` still to write the status).
    let pending = is_lb && !has_load_balancer_address(object);
    let mut source_ranges_given = Vec::new();
    if is_lb {
        match source_ranges(object) {
            Ok(SourceRanges::Ipv4(ranges)) => source_ranges_given = ranges,
            Ok(SourceRanges::OnlyIpv6(field)) if !lb_vips.is_empty() => {
                // An empty list means "every client" to the datapath: the IPv6-only list would
                // open the IPv4 addresses to all (kube-proxy's IPv4 side does just that: it
                // filters by the ranges of its own family). Not forwarding them fails closed.
                problems.push(report(
                    field,
                    "only IPv6 source ranges, and IPv6 is not forwarded yet: the LoadBalancer \
                     addresses are not forwarded"
                        .into(),
                ));
                lb_vips.clear();
            }
            Ok(SourceRanges::OnlyIpv6(_)) => {}
            Err((field, message)) => {
                problems.push(report(field, message));
                return ServiceResult::broken();
            }
        }
        if pending {
            problems.push(report(
                "status.loadBalancer.ingress".into(),
                "the Service has no IPv4 LoadBalancer address (none in \
                 status.loadBalancer.ingress[].ip or spec.loadBalancerIP)"
                    .into(),
            ));
        }
    }
    let source_ranges = source_ranges_given;

    let publish_not_ready = spec
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let locality = Locality {
        node_name: options.node_name.as_deref(),
    };
    let base_policy = FrontendPolicy {
        local_only,
        affinity_timeout,
        source_ranges: Vec::new(),
    };
    let mut claims = Vec::new();
    let mut local_ready = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut any_node_port = false;
    let ports = spec.and_then(|s| s.ports.as_ref());
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
        let Some(service_port) = valid_port(port.port) else {
            problems.push(report(
                format!("spec.ports[{index}].port"),
                format!("{} is not a valid port (1-65535)", port.port),
            ));
            broken = true;
            continue;
        };
        let node_port = match port.node_port.filter(|p| *p != 0 && has_node_ports) {
            None => None,
            Some(p) => match valid_port(p) {
                Some(p) => Some(p),
                None => {
                    problems.push(report(
                        format!("spec.ports[{index}].nodePort"),
                        format!("{p} is not a valid port (1-65535)"),
                    ));
                    broken = true;
                    continue;
                }
            },
        };
        let port_name = port.name.clone().unwrap_or_default();
        let (endpoints, resolved) =
            endpoints::port_endpoints(slices, &port_name, protocol, publish_not_ready, locality);
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
        local_ready.extend(endpoints::local_ready(&endpoints));
        let selection = endpoints::select(&endpoints, local_only);
        let plan = |kind: FrontendKind, source_ranges: Vec<Ipv4Prefix>| ServicePortPlan {
            service: name.clone(),
            port_name: port_name.clone(),
            kind,
            policy: FrontendPolicy {
                source_ranges,
                ..base_policy.clone()
            },
            backends: selection.backends.clone(),
            draining: selection.draining.clone(),
            remote: selection.remote.clone(),
            endpoints_elsewhere: selection.endpoints_elsewhere,
        };
        let mut claim = |key: ClaimKey, plan: ServicePortPlan, field: String| {
            // A Service naming one address twice (its LoadBalancer IP also among its
            // externalIPs) claims the frontend once, as the first kind.
            if seen.insert(key) {
                claims.push(Claim { key, plan, field });
            }
        };
        for (vip, _) in &lb_vips {
            let frontend = Frontend {
                vip: *vip,
                port: service_port,
                protocol,
            };
            claim(
                ClaimKey::Address(frontend),
                plan(FrontendKind::LoadBalancer, source_ranges.clone()),
                format!("spec.ports[{index}].port"),
            );
        }
        for (ip, field) in &external_ips {
            let frontend = Frontend {
                vip: *ip,
                port: service_port,
                protocol,
            };
            claim(
                ClaimKey::Address(frontend),
                plan(FrontendKind::ExternalIp, Vec::new()),
                field.clone(),
            );
        }
        if let Some(node_port) = node_port {
            any_node_port = true;
            claim(
                ClaimKey::NodePort(node_port, protocol),
                plan(FrontendKind::NodePort, Vec::new()),
                format!("spec.ports[{index}].nodePort"),
            );
        }
    }
    if pending && external_ips.is_empty() && !any_node_port {
        // Nothing to forward yet (its address not assigned, or its status just cleared): keep
        // what it had.
        broken = true;
    }

    let health_check = match spec.and_then(|s| s.health_check_node_port) {
        Some(port) if local_only && port != 0 && has_node_ports => match valid_port(port) {
            Some(port) => Some((
                port,
                HealthCheckPlan {
                    service: name.clone(),
                    local_endpoints: u32::try_from(local_ready.len()).unwrap_or(u32::MAX),
                },
            )),
            None => {
                problems.push(report(
                    "spec.healthCheckNodePort".into(),
                    format!("{port} is not a valid port (1-65535)"),
                ));
                broken = true;
                None
            }
        },
        _ => None,
    };
    ServiceResult {
        claims,
        health_check,
        broken,
    }
}

fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// IPv4 addresses of `items`, each with the field that first gave it; IPv6 ones are skipped
/// (not forwarded yet); one that does not parse is an error naming its field.
fn parse_ips<'a>(
    items: impl Iterator<Item = (String, &'a str)>,
) -> Result<Vec<(Ipv4Addr, String)>, (String, String)> {
    let mut ips: Vec<(Ipv4Addr, String)> = Vec::new();
    for (field, text) in items {
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => {
                if !ips.iter().any(|(ip, _)| *ip == v4) {
                    ips.push((v4, field))
                }
            }
            Ok(IpAddr::V6(_)) => {}
            Err(_) => return Err((field, format!("{text:?} is not an IP address"))),
        }
    }
    Ok(ips)
}

/// The LoadBalancer Service's IPv4 addresses, as kube-proxy takes them: the status's (but not
/// those with `ipMode: Proxy`, KEP-1860: that load balancer sends traffic to the nodes' own
/// addresses, so the VIP never arrives here), else `spec.loadBalancerIP` (file mode, where no
/// controller writes a status).
fn load_balancer_vips(service: &Service) -> Result<Vec<(Ipv4Addr, String)>, (String, String)> {
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let with_ip = || {
        ingress
            .into_iter()
            .flatten()
            .enumerate()
            .filter(|(_, entry)| entry.ip.is_some())
    };
    let vips = parse_ips(with_ip().filter_map(|(i, entry)| {
        let field = format!("status.loadBalancer.ingress[{i}].ip");
        match entry.ip_mode.as_deref() {
            Some("Proxy") => None,
            _ => entry.ip.as_deref().map(|ip| (field, ip)),
        }
    }))?;
    if with_ip().next().is_some() {
        return Ok(vips);
    }
    let requested = service
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_ip.as_deref())
        .filter(|ip| !ip.is_empty());
    parse_ips(
        requested
            .map(|ip| ("spec.loadBalancerIP".to_string(), ip))
            .into_iter(),
    )
}

/// Whether the Service has been given a load balancer address at all (its status, or
/// `spec.loadBalancerIP`), IPv4 or not, proxied or not: without one it is still pending.
fn has_load_balancer_address(service: &Service) -> bool {
    let in_status = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .is_some_and(|ingress| ingress.iter().any(|entry| entry.ip.is_some()));
    in_status
        || service
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref())
            .is_some_and(|ip| !ip.is_empty())
}

/// `sessionAffinity: ClientIP`'s timeout; `None` without affinity.
fn affinity_timeout(service: &Service) -> Result<Option<u32>, (String, String)> {
    let spec = service.spec.as_ref();
    match spec.and_then(|s| s.session_affinity.as_deref()) {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let given = spec
                .and_then(|s| s.session_affinity_config.as_ref())
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match given {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT)),
                Some(t) => u32::try_from(t)
                    .ok()
                    .filter(|t| (1..=MAX_AFFINITY_TIMEOUT).contains(t))
                    .map(Some)
                    .ok_or_else(|| {
                        (
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds".to_string(),
                            format!("{t} is out of range (1-{MAX_AFFINITY_TIMEOUT} seconds)"),
                        )
                    }),
            }
        }
        Some(other) => Err((
            "spec.sessionAffinity".to_string(),
            format!("unknown session affinity {other:?} (expected None or ClientIP)"),
        )),
    }
}

/// What the source ranges of a Service allow.
#[derive(Debug, PartialEq, Eq)]
enum SourceRanges {
    /// The IPv4 ranges (empty: every client).
    Ipv4(Vec<Ipv4Prefix>),
    /// Ranges were given, all IPv6: the field that gave them.
    OnlyIpv6(String),
}

/// `spec.loadBalancerSourceRanges`, else the annotation (comma-separated). kube-proxy reads
/// only the field; the annotation is the older form cloud providers still honour
/// (`GetLoadBalancerSourceRanges`), and Services written for them expect it to filter.
fn source_ranges(service: &Service) -> Result<SourceRanges, (String, String)> {
    let from_spec = service
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.as_ref())
        .filter(|r| !r.is_empty());
    let items: Vec<(String, &str)> = match from_spec {
        Some(ranges) => ranges
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("spec.loadBalancerSourceRanges[{i}]"), r.as_str()))
            .collect(),
        None => service
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE_RANGES_ANNOTATION))
            .map(|value| {
                let field = format!("metadata.annotations[{SOURCE_RANGES_ANNOTATION}]");
                value
                    .split(',')
                    .filter(|r| !r.trim().is_empty())
                    .map(|r| (field.clone(), r))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mut ranges = BTreeMap::new();
    let mut ipv6_field = None;
    for (field, text) in items {
        match parse_cidr(text.trim()) {
            Some(Cidr::V4(prefix)) => {
                ranges.insert(prefix, ());
            }
            Some(Cidr::V6) => {
                ipv6_field.get_or_insert(field);
            }
            None => {
                return Err((
                    field,
                    format!("{text:?} is not a CIDR range like 192.0.2.0/24"),
                ))
            }
        }
    }
    if ranges.keys().any(|r: &Ipv4Prefix| r.len == 0) {
        // kube-proxy: a zero-length range allows every client, as no range does.
        return Ok(SourceRanges::Ipv4(Vec::new()));
    }
    match (ranges.is_empty(), ipv6_field) {
        (true, Some(field)) => Ok(SourceRanges::OnlyIpv6(field)),
        _ => Ok(SourceRanges::Ipv4(ranges.into_keys().collect())),
    }
}

enum Cidr {
    V4(Ipv4Prefix),
    V6,
}

/// Go's `net.ParseCIDR`: an address, `/`, a decimal prefix length within the family's bits;
/// the host bits are masked off (`192.0.2.7/24` is `192.0.2.0/24`).
fn parse_cidr(text: &str) -> Option<Cidr> {
    let (addr, len) = text.split_once('/')?;
    if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    match addr.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) if len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            Some(Cidr::V4(Ipv4Prefix {
                addr: Ipv4Addr::from(u32::from(v4) & mask),
                len,
            }))
        }
        IpAddr::V6(_) if len <= 128 => Some(Cidr::V6),
        _ => None,
    }
}
