//! Which endpoints of a Service port take new flows, which keep only their established ones and
//! which run on another node: KEP-1669's endpoint conditions as kube-proxy's
//! `CategorizeEndpoints` reads them, with this node's locality.
//!
//! Conditions follow the EndpointSlice API contract: a missing `ready` means ready, a missing
//! `serving` defers to `ready`, a missing `terminating` means not terminating. A Service with
//! `publishNotReadyAddresses: true` counts every endpoint as ready, as the EndpointSlice
//! controller publishes them (`ready = publishNotReadyAddresses || (podReady && !terminating)`),
//! so hand-written slices in file mode mean the same as the controller's.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{Endpoint, Protocol};

/// One endpoint of a Service port with the conditions that decide its role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EndpointState {
    /// Ready: takes new flows.
    pub(crate) ready: bool,
    /// Serving (ready regardless of terminating).
    pub(crate) serving: bool,
    /// Terminating.
    pub(crate) terminating: bool,
    /// Runs on this node (or names no node).
    pub(crate) local: bool,
}

/// Where an endpoint runs, from this node's point of view.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Locality<'a> {
    /// This node's name; `None` (no node, as in `validate`): every endpoint counts as local.
    pub(crate) node_name: Option<&'a str>,
}

impl Locality<'_> {
    /// An endpoint without `nodeName` counts as local: single-node labs and old manifests name
    /// none, and their backends are reached without SNAT, as before nodes were known.
    fn is_local(&self, endpoint_node: Option<&str>) -> bool {
        match (self.node_name, endpoint_node) {
            (None, _) | (_, None) => true,
            (Some(ours), Some(theirs)) => ours == theirs,
        }
    }
}

/// The endpoints of the Service port named `port_name`, over all the Service's EndpointSlices,
/// with their conditions. `resolved` is false when slices list ports but none has this name
/// and protocol (a Service with no slices, or slices without ports, simply has no endpoints
/// yet). An address listed twice (slices being replaced) keeps its best conditions.
pub(crate) fn port_endpoints(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    publish_not_ready: bool,
    locality: Locality<'_>,
) -> (BTreeMap<Endpoint, EndpointState>, bool) {
    let mut endpoints: BTreeMap<Endpoint, EndpointState> = BTreeMap::new();
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
            let conditions = endpoint.conditions.as_ref();
            let ready = publish_not_ready || conditions.and_then(|c| c.ready).unwrap_or(true);
            let state = EndpointState {
                ready,
                serving: publish_not_ready || conditions.and_then(|c| c.serving).unwrap_or(ready),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                local: locality.is_local(endpoint.node_name.as_deref()),
            };
            for address in &endpoint.addresses {
                let Ok(addr) = address.parse::<Ipv4Addr>() else {
                    continue;
                };
                let key = Endpoint {
                    addr,
                    port: target_port,
                };
                endpoints
                    .entry(key)
                    .and_modify(|seen| {
                        seen.ready |= state.ready;
                        seen.serving |= state.serving;
                        seen.terminating &= state.terminating;
                    })
                    .or_insert(state);
            }
        }
    }
    (endpoints, resolved || !any_ports)
}

/// The roles of a Service port's endpoints on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Selection {
    /// New flows: the ready endpoints, else the serving terminating ones.
    pub(crate) backends: BTreeSet<Endpoint>,
    /// Serving terminating endpoints not in `backends`.
    pub(crate) draining: BTreeSet<Endpoint>,
    /// Endpoints of `backends` and `draining` on another node.
    pub(crate) remote: BTreeSet<Endpoint>,
    /// `backends` is empty only because of `local_only`: another node has a usable endpoint
    /// (kube-proxy drops such traffic; with no endpoint anywhere it refuses it).
    pub(crate) endpoints_elsewhere: bool,
}

/// kube-proxy's rule: ready endpoints take new flows; when none is ready, the serving
/// terminating ones do (so a rollout's last pods keep answering). With `local_only`
/// (`externalTrafficPolicy: Local`) the same rule runs over this node's endpoints alone, and
/// nothing is remote.
pub(crate) fn select(endpoints: &BTreeMap<Endpoint, EndpointState>, local_only: bool) -> Selection {
    let pool = || {
        endpoints
            .iter()
            .filter(move |(_, state)| !local_only || state.local)
    };
    let ready: BTreeSet<Endpoint> = pool().filter(|(_, s)| s.ready).map(|(e, _)| *e).collect();
    let serving_terminating: BTreeSet<Endpoint> = pool()
        .filter(|(_, s)| !s.ready && s.serving && s.terminating)
        .map(|(e, _)| *e)
        .collect();
    let (backends, draining) = if ready.is_empty() {
        (serving_terminating, BTreeSet::new())
    } else {
        (ready, serving_terminating)
    };
    let remote = backends
        .iter()
        .chain(&draining)
        .filter(|e| endpoints.get(e).is_some_and(|s| !s.local))
        .copied()
        .collect();
    let endpoints_elsewhere = local_only
        && backends.is_empty()
        && endpoints
            .values()
            .any(|s| s.ready || (s.serving && s.terminating));
    Selection {
        backends,
        draining,
        remote,
        endpoints_elsewhere,
    }
}

/// kube-proxy's health check count: the addresses of ready endpoints on this node, a pod
/// serving several ports counting once (kube-proxy's `LocalReadyEndpoints` squashes by IP);
/// terminating ones do not count, even while they take flows as a fallback.
pub(crate) fn local_ready(
    endpoints: &BTreeMap<Endpoint, EndpointState>,
) -> impl Iterator<Item = std::net::Ipv4Addr> + '_ {
    endpoints
        .iter()
        .filter(|(_, s)| s.ready && s.local)
        .map(|(e, _)| e.addr)
}
