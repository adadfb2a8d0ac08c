//! The proxy's routing table: the plan's [`RouteTable`] of [`Route`]s (filters, then backends)
//! with each backend id bound to a live [`Backend`]. A reload builds a new one and swaps it in;
//! endpoints (and their connection pools) that both tables name are shared, not reconnected.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Weak},
};

use bytes::Bytes;

use crate::model::ObjectName;
use crate::translate::l7::{
    routes::Verdict, BackendId, BackendPlan, L7Plan, PassthroughTable, Route, RouteTable,
    UpstreamPlan,
};

use super::{
    metrics::{nginx, BackendKey, MetricsBook},
    tls::crypto_provider,
    upstream::{Backend, Endpoint, Transport},
};

/// Host and path → route and backend, as the proxy uses it.
#[derive(Debug)]
pub(crate) struct Router {
    routes: Arc<RouteTable<Route>>,
    backends: Vec<Arc<Backend>>,
    /// `ssl-passthrough` hosts → index in `backends`.
    passthrough: Arc<PassthroughTable>,
    /// ingress-nginx's `use-forwarded-headers`: the client's `X-Forwarded-*` are trusted.
    pub(crate) trust_forwarded: bool,
    /// `--metrics-compat nginx`: each TLS host and its Secret (first named wins), for
    /// `nginx_ingress_controller_ssl_expire_time_seconds`; empty without the flag.
    tls_hosts: Arc<Vec<(String, ObjectName)>>,
}

impl Default for Router {
    fn default() -> Self {
        Self {
            routes: Arc::new(RouteTable::new(std::iter::empty(), None)),
            backends: Vec::new(),
            passthrough: Arc::default(),
            trust_forwarded: false,
            tls_hosts: Arc::default(),
        }
    }
}

impl Router {
    /// The route for `host` and `path`, if any rule or default backend matches, and the
    /// backend it sends to now: its first backend, or its fallback (`default-backend`) when
    /// that one has no endpoint and the fallback has. `None` backend: the route only answers.
    pub(crate) fn route(&self, host: &str, path: &str) -> Option<(&Route, Option<&Arc<Backend>>)> {
        let route = self.routes.route(host, path)?;
        let primary = route.backend().and_then(|id| self.backends.get(id));
        let backend = match (primary, route.fallback) {
            (Some(primary), Some(fallback)) if primary.endpoints.is_empty() => self
                .backends
                .get(fallback)
                .filter(|f| !f.endpoints.is_empty())
                .or(Some(primary)),
            (primary, _) => primary,
        };
        Some((route, backend))
    }

    /// The backend an `ssl-passthrough` host's TLS connections go to (`host` lower-case).
    pub(crate) fn passthrough(&self, host: &str) -> Option<&Arc<Backend>> {
        self.backends.get(self.passthrough.get(host)?.backend)
    }

    /// Whether some host passes TLS through (else the listener reads no ClientHello itself).
    pub(crate) fn has_passthrough(&self) -> bool {
        !self.passthrough.is_empty()
    }

    /// The backend a canary request goes to instead of `primary` (ingress-nginx's
    /// `route_to_alternative_balancer`): none while the request holds the primary backend's
    /// session cookie; the canary's when it holds the canary's (unless `legacy`); else as the
    /// canary rule decides. A canary backend without endpoints is never chosen.
    pub(crate) fn canary(
        &self,
        route: &Route,
        primary: &Backend,
        headers: &http::HeaderMap,
    ) -> Option<&Arc<Backend>> {
        let canary = route.canary.as_ref()?;
        // A canary without endpoints takes nothing: the main backend serves, rather than
        // a share of the requests failing with 503.
        let backend = canary
            .backends
            .first()
            .and_then(|b| self.backends.get(b.backend))
            .filter(|b| !b.endpoints.is_empty())?;
        if primary.balancer.is_affinitized(headers) {
            return None;
        }
        if canary.rule.sticky && backend.balancer.is_affinitized(headers) {
            return Some(backend);
        }
        let draw = |n: u32| (super::upstream::random() % u64::from(n.max(1))) as u32 + 1;
        (canary.rule.decide(headers, draw) == Verdict::Canary).then_some(backend)
    }

    /// How many backends the table points at.
    pub(crate) fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// Every backend of the table (the metrics collector walks them at scrape time).
    pub(crate) fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Every route of the table, the default backend's too (for the nginx metrics).
    pub(crate) fn routes(&self) -> Vec<&Route> {
        let entries = self.routes.entries();
        let mut routes: Vec<&Route> = entries.iter().map(|e| e.backend).collect();
        routes.extend(self.routes.default_backend());
        routes
    }

    /// TLS hosts and their Secrets (`--metrics-compat nginx` only).
    pub(crate) fn tls_hosts(&self) -> &[(String, ObjectName)] {
        &self.tls_hosts
    }
}

/// Endpoints by address and way of connecting, kept as long as some table uses them; the
/// transports (rustls client configurations) by upstream plan, likewise; and the request
/// counters by backend key, kept while the plan names the key.
#[derive(Debug, Default)]
pub(crate) struct EndpointRegistry {
    /// Keyed by the transport's address: transports are one per distinct plan, and live as
    /// long as an endpoint that uses them, so the address names one way of connecting.
    endpoints: HashMap<(SocketAddr, usize), Weak<Endpoint>>,
    transports: HashMap<UpstreamPlan, Weak<Transport>>,
    metrics: MetricsBook,
    /// `--metrics-compat nginx`: routes get their series' counters.
    pub(crate) nginx_metrics: bool,
}

impl EndpointRegistry {
    fn get(&mut self, addr: SocketAddr, transport: &Arc<Transport>) -> Arc<Endpoint> {
        let key = (addr, Arc::as_ptr(transport) as usize);
        if let Some(live) = self.endpoints.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        let endpoint = Arc::new(Endpoint::with_transport(addr, transport.clone()));
        self.endpoints.insert(key, Arc::downgrade(&endpoint));
        endpoint
    }

    /// The transport for `plan`, built once per distinct plan while a table uses it.
    fn transport(&mut self, plan: &UpstreamPlan) -> Result<Arc<Transport>, String> {
        if let Some(live) = self.transports.get(plan).and_then(Weak::upgrade) {
            return Ok(live);
        }
        let transport =
            Arc::new(Transport::new(plan, &crypto_provider()).map_err(|e| e.to_string())?);
        self.transports
            .insert(plan.clone(), Arc::downgrade(&transport));
        Ok(transport)
    }

    /// Builds the router for `plan`, reusing live endpoints.
    pub(crate) fn router(&mut self, plan: &L7Plan) -> Router {
        let backends = plan
            .backends
            .iter()
            .map(|backend| self.backend(backend))
            .collect();
        // Forget addresses no table holds any more (the old table's references go when it drops;
        // those are collected on a later reload).
        self.endpoints.retain(|_, weak| weak.strong_count() > 0);
        self.transports.retain(|_, weak| weak.strong_count() > 0);
        self.metrics.retain(&plan.backends);
        let mut tls_hosts = Vec::new();
        if self.nginx_metrics {
            let routes = plan.routes.entries();
            let all = || {
                routes
                    .iter()
                    .map(|e| e.backend)
                    .chain(plan.routes.default_backend())
            };
            nginx::attach(all(), &mut self.metrics);
            nginx::retain(all(), &mut self.metrics);
            let mut seen = std::collections::HashSet::new();
            for tls in &plan.tls {
                for host in &tls.hosts {
                    if seen.insert(host.clone()) {
                        tls_hosts.push((host.clone(), tls.secret.clone()));
                    }
                }
            }
        }
        Router {
            routes: plan.routes.clone(),
            backends,
            passthrough: plan.passthrough.clone(),
            trust_forwarded: plan.nginx.use_forwarded_headers,
            tls_hosts: Arc::new(tls_hosts),
        }
    }

    /// `current` with only the backends `changed` rebuilt from `plan` (their endpoints moved):
    /// the route table and every other backend are shared, not rebuilt.
    pub(crate) fn with_new_endpoints(
        &mut self,
        current: &Router,
        plan: &L7Plan,
        changed: &[BackendId],
    ) -> Router {
        let mut backends = current.backends.clone();
        for &id in changed {
            if let (Some(slot), Some(backend)) = (backends.get_mut(id), plan.backends.get(id)) {
                *slot = self.backend(backend);
            }
        }
        self.endpoints.retain(|_, weak| weak.strong_count() > 0);
        Router {
            routes: current.routes.clone(),
            backends,
            passthrough: current.passthrough.clone(),
            trust_forwarded: current.trust_forwarded,
            tls_hosts: current.tls_hosts.clone(),
        }
    }

    fn backend(&mut self, backend: &BackendPlan) -> Arc<Backend> {
        let transport = match &backend.upstream {
            Ok(plan) => self.transport(plan),
            // Answered 503 with the translator's reason (`unavailable_message`).
            Err(why) => Err(why.clone()),
        };
        let (endpoints, transport, broken) = match (&backend.endpoints, transport) {
            (Ok(addrs), Ok(transport)) => (
                addrs
                    .iter()
                    .map(|addr| self.get(*addr, &transport))
                    .collect(),
                transport,
                None,
            ),
            (_, Ok(transport)) => (Vec::new(), transport, None),
            (_, Err(why)) => (Vec::new(), Arc::default(), Some(why)),
        };
        let unavailable = match (backend.unavailable_message(), broken) {
            (Some(message), _) => Some(Bytes::from(message)),
            (None, Some(why)) => {
                // The PEM of proxy-ssl-secret did not make a TLS client: the translator could
                // not know (it does not parse PEM).
                tracing::warn!(
                    ingress = %backend.ingress,
                    service = %backend.service,
                    "{why}; requests routed there get 503"
                );
                Some(Bytes::from(format!("503 Service Unavailable: {why}\n")))
            }
            (None, None) if backend.endpoints.as_ref().is_ok_and(Vec::is_empty) => {
                Some(Bytes::from(format!(
                    "503 Service Unavailable: service {} port {} has no ready endpoints\n",
                    backend.service, backend.port
                )))
            }
            (None, None) => None,
        };
        let key = BackendKey::of(backend);
        let metrics = self.metrics.get(&key);
        let name = format!("{}/{}", backend.service, backend.port);
        Arc::new(
            Backend::new(endpoints, unavailable)
                .with_metrics(key, metrics)
                .with_transport(transport)
                .with_balance(&backend.balance, &name),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        model::ObjectName,
        translate::l7::{ServicePortRef, Unavailable},
    };

    fn name(namespace: &str, name: &str) -> ObjectName {
        ObjectName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn plan(services: &[&str]) -> L7Plan {
        L7Plan {
            backends: services
                .iter()
                .map(|service| BackendPlan {
                    ingress: name("shop", "front"),
                    service: name("shop", service),
                    port: ServicePortRef::Number(80),
                    endpoints: Err(Unavailable::NoReadyEndpoints),
                    upstream: Ok(Default::default()),
                    upstream_secret: None,
                    balance: Default::default(),
                    service_upstream: false,
                })
                .collect(),
            ..L7Plan::default()
        }
    }

    #[test]
    fn request_totals_survive_a_rebuild_and_an_endpoint_change() {
        let mut registry = EndpointRegistry::default();
        let first = registry.router(&plan(&["web", "api"]));
        first.backends()[0]
            .metrics
            .record(200, Duration::from_millis(1));
        first.backends()[1]
            .metrics
            .record(503, Duration::from_millis(1));

        // A full rebuild that reorders the backends and adds one: counters follow the key.
        let second = registry.router(&plan(&["api", "web", "cart"]));
        drop(first);
        let by_service = |router: &Router, service: &str| {
            router
                .backends()
                .iter()
                .find(|b| b.key.as_ref().is_some_and(|k| k.service == service))
                .map(|b| b.metrics.snapshot())
                .unwrap()
        };
        assert_eq!(by_service(&second, "web").statuses, [0, 1, 0, 0, 0]);
        assert_eq!(by_service(&second, "api").statuses, [0, 0, 0, 0, 1]);
        assert_eq!(by_service(&second, "cart").count, 0);

        // An endpoint-only change rebuilds one backend: same counters.
        let third = registry.with_new_endpoints(&second, &plan(&["api", "web", "cart"]), &[1]);
        assert!(!Arc::ptr_eq(&second.backends()[1], &third.backends()[1]));
        assert_eq!(by_service(&third, "web").statuses, [0, 1, 0, 0, 0]);

        // A backend the plan dropped is forgotten; coming back, it starts from zero.
        let _fourth = registry.router(&plan(&["api"]));
        let fifth = registry.router(&plan(&["api", "web"]));
        assert_eq!(by_service(&fifth, "web").count, 0);
        assert_eq!(by_service(&fifth, "api").statuses, [0, 0, 0, 0, 1]);
    }

    #[test]
    fn endpoints_are_shared_per_address_and_way_of_connecting() {
        use crate::translate::l7::{BackendProtocol, UpstreamPlan};
        let addr: SocketAddr = "192.0.2.10:8080".parse().unwrap();
        let backend = |service: &str, protocol| BackendPlan {
            ingress: name("shop", service),
            service: name("shop", service),
            port: ServicePortRef::Number(80),
            endpoints: Ok(vec![addr]),
            upstream: Ok(UpstreamPlan {
                protocol,
                tls: None,
            }),
            upstream_secret: None,
            balance: Default::default(),
            service_upstream: false,
        };
        let plan = |backends| L7Plan {
            backends,
            ..L7Plan::default()
        };
        let mut registry = EndpointRegistry::default();
        let first = registry.router(&plan(vec![
            backend("web", BackendProtocol::Http),
            backend("grpc", BackendProtocol::Grpc),
            backend("web-too", BackendProtocol::Http),
        ]));
        let endpoint = |router: &Router, i: usize| router.backends()[i].endpoints[0].clone();
        // One address, two ways of connecting: two endpoints (an HTTP/1.1 pool and an HTTP/2
        // connection); the same way twice: one.
        assert!(!Arc::ptr_eq(&endpoint(&first, 0), &endpoint(&first, 1)));
        assert!(Arc::ptr_eq(&endpoint(&first, 0), &endpoint(&first, 2)));
        assert!(first.backends()[1].transport.is_http2());
        // A reload keeps both; a protocol change gets a new endpoint.
        let second = registry.router(&plan(vec![
            backend("grpc", BackendProtocol::Grpc),
            backend("web", BackendProtocol::Grpc),
        ]));
        assert!(Arc::ptr_eq(&endpoint(&first, 1), &endpoint(&second, 0)));
        assert!(Arc::ptr_eq(&endpoint(&second, 0), &endpoint(&second, 1)));
        assert!(!Arc::ptr_eq(&endpoint(&first, 0), &endpoint(&second, 1)));
    }
}
