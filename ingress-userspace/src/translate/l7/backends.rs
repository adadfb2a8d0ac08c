//! The backends routes point at, one per (Ingress, Service, port), resolved to ready IPv4
//! endpoints with the L4 rules; why one cannot be resolved, and re-resolving only the Services
//! whose endpoints changed. How the proxy speaks to them (protocol, TLS) is in `upstream`.

mod upstream;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{
    class::OurIngress, rules::ServiceRef, BackendId, BackendPlan, L7Plan, ServicePortRef,
    Unavailable,
};
use upstream::{upstream_secret, upstream_settings, UpstreamSettings};

use crate::{
    model::{ClusterObjects, ObjectName, Problem},
    translate::l4::{group_slices, resolve_backends, Protocol, SERVICE_NAME_LABEL},
};

/// The backends routes point at, one per (Ingress, Service, port), resolved to endpoints.
pub(super) struct Backends<'a> {
    objects: &'a ClusterObjects,
    slices: BTreeMap<ObjectName, Vec<&'a EndpointSlice>>,
    ids: BTreeMap<(ObjectName, ObjectName, ServicePortRef), BackendId>,
    /// Each Ingress's upstream annotations, parsed (and reported) once.
    upstream: BTreeMap<ObjectName, Result<UpstreamSettings, String>>,
    pub(super) plans: Vec<BackendPlan>,
}

impl<'a> Backends<'a> {
    pub(super) fn new(objects: &'a ClusterObjects) -> Self {
        Self {
            objects,
            slices: group_slices(objects),
            ids: BTreeMap::new(),
            upstream: BTreeMap::new(),
            plans: Vec::new(),
        }
    }

    /// The id of `ingress`'s backend `service` (named at `field`), resolving it the first time;
    /// a backend that cannot work is reported once, at its first use.
    pub(super) fn intern(
        &mut self,
        ingress: &OurIngress<'_>,
        service: &ServiceRef,
        field: &str,
        problems: &mut Vec<Problem>,
    ) -> BackendId {
        let service_name = ObjectName {
            namespace: ingress.name.namespace.clone(),
            name: service.name.clone(),
        };
        let key = (ingress.name.clone(), service_name, service.port.clone());
        if let Some(id) = self.ids.get(&key) {
            return *id;
        }
        let (ingress_name, service_name, port) = key.clone();
        let service_upstream = service_upstream(ingress);
        let endpoints = self.resolve(&service_name, &port, service_upstream);
        if service_upstream && endpoints.is_ok() && self.cluster_ip(&service_name).is_none() {
            problems.push(ingress.problem(
                super::annotations::field("service-upstream"),
                format!(
                    "Service {service_name} has no ClusterIP (headless?); its endpoints are \
                     used instead, as ingress-nginx does"
                ),
            ));
        }
        if let Err(why) = &endpoints {
            if let Some((subfield, message)) = unavailable_problem(why, &service_name, &port) {
                problems.push(ingress.problem(format!("{field}.{subfield}"), message));
            }
        }
        let settings = self
            .upstream
            .entry(ingress_name.clone())
            .or_insert_with(|| upstream_settings(ingress, self.objects, problems));
        let upstream = match settings {
            Ok(settings) => Ok(settings.plan_for(&service_name)),
            Err(why) => Err(why.clone()),
        };
        let id = self.plans.len();
        self.plans.push(BackendPlan {
            ingress: ingress_name,
            service: service_name,
            port,
            endpoints,
            upstream,
            upstream_secret: upstream_secret(ingress),
            balance: Default::default(),
            service_upstream,
        });
        self.ids.insert(key, id);
        id
    }

    /// The Service's ClusterIP, if it has one (not headless).
    fn cluster_ip(&self, name: &ObjectName) -> Option<std::net::IpAddr> {
        let service = self.objects.services.get(name)?;
        let spec = service.object.spec.as_ref()?;
        spec.cluster_ip.as_deref()?.parse().ok()
    }

    /// Ready IPv4 endpoints of the Service port, sorted, or why there are none; with
    /// `service_upstream`, the ClusterIP and Service port instead (kube-proxy, or our L4
    /// datapath, balances), unless the Service has no ClusterIP.
    fn resolve(
        &self,
        name: &ObjectName,
        port: &ServicePortRef,
        service_upstream: bool,
    ) -> Result<Vec<SocketAddr>, Unavailable> {
        let service = self
            .objects
            .services
            .get(name)
            .ok_or(Unavailable::UnknownService)?;
        let spec = service.object.spec.as_ref();
        if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            return Err(Unavailable::UnsupportedService(
                "ExternalName Services are not supported".into(),
            ));
        }
        let ports = spec.and_then(|s| s.ports.as_ref());
        let service_port = ports
            .into_iter()
            .flatten()
            .find(|p| match port {
                ServicePortRef::Number(n) => p.port == i32::from(*n),
                ServicePortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
            })
            .ok_or(Unavailable::UnknownPort)?;
        let protocol = service_port.protocol.as_deref().unwrap_or("TCP");
        if protocol != "TCP" {
            return Err(Unavailable::UnsupportedService(format!(
                "port {port} is {protocol}; HTTP needs TCP"
            )));
        }
        if service_upstream {
            if let (Some(ip), Ok(port)) = (self.cluster_ip(name), u16::try_from(service_port.port))
            {
                return Ok(vec![SocketAddr::new(ip, port)]);
            }
        }
        let slices = self.slices.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let port_name = service_port.name.as_deref().unwrap_or("");
        // A BTreeSet of (address, port): already sorted as SocketAddrs sort.
        let (endpoints, _) = resolve_backends(slices, port_name, Protocol::Tcp);
        if endpoints.is_empty() {
            return Err(Unavailable::NoReadyEndpoints);
        }
        Ok(endpoints
            .iter()
            .map(|e| SocketAddr::from((e.addr, e.port)))
            .collect())
    }
}

/// Incremental: re-resolves the endpoints of the plan's backends whose Service is in `services`
/// (their EndpointSlices changed). Returns the ids whose endpoints changed; the routes and
/// everything else stay as they are.
pub fn refresh_endpoints(
    objects: &ClusterObjects,
    plan: &mut L7Plan,
    services: &BTreeSet<ObjectName>,
) -> Vec<BackendId> {
    let affected: Vec<BackendId> = plan
        .backends
        .iter()
        .enumerate()
        .filter(|(_, backend)| services.contains(&backend.service))
        .map(|(id, _)| id)
        .collect();
    if affected.is_empty() {
        return Vec::new();
    }
    // Only the slices of the affected Services (one pass, no full grouping).
    let mut slices: BTreeMap<ObjectName, Vec<&EndpointSlice>> = BTreeMap::new();
    for (name, slice) in &objects.endpoint_slices {
        let service = slice
            .object
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(SERVICE_NAME_LABEL));
        if let Some(service) = service {
            let service = ObjectName {
                namespace: name.namespace.clone(),
                name: service.clone(),
            };
            if services.contains(&service) {
                slices.entry(service).or_default().push(&slice.object);
            }
        }
    }
    let resolver = Backends {
        objects,
        slices,
        ids: BTreeMap::new(),
        upstream: BTreeMap::new(),
        plans: Vec::new(),
    };
    let mut changed = Vec::new();
    for id in affected {
        let backend = &mut plan.backends[id];
        let endpoints = resolver.resolve(&backend.service, &backend.port, backend.service_upstream);
        if endpoints != backend.endpoints {
            backend.endpoints = endpoints;
            changed.push(id);
        }
    }
    changed
}

/// `service-upstream`, as ingress-nginx reads it (a bad value is reported with the other
/// annotations, and then the Ingress answers 503 anyway).
fn service_upstream(ingress: &OurIngress<'_>) -> bool {
    let annotations = ingress.ingress.object.metadata.annotations.as_ref();
    let value =
        annotations.and_then(|a| a.get(&format!("{}service-upstream", super::annotations::PREFIX)));
    matches!(
        value.map(|v| v.trim()),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True")
    )
}

/// The problem to report for an unresolvable backend (sub-field of the backend, message); `None`
/// for states that are normal (no ready endpoints yet).
fn unavailable_problem(
    why: &Unavailable,
    service: &ObjectName,
    port: &ServicePortRef,
) -> Option<(&'static str, String)> {
    let answered = "requests routed here get 503";
    match why {
        Unavailable::NoReadyEndpoints => None,
        Unavailable::UnknownService => Some((
            "service.name",
            format!("Service {service} does not exist; {answered}"),
        )),
        Unavailable::UnknownPort => Some((
            "service.port",
            format!("Service {service} has no port {port}; {answered}"),
        )),
        Unavailable::UnsupportedService(reason) => Some((
            "service.name",
            format!("Service {service}: {reason}; {answered}"),
        )),
    }
}
