//! The proxy's routing table: the plan's [`RouteTable`] with each backend id bound to a live
//! [`Backend`]. A reload builds a new one and swaps it in; endpoints (and their connection pools)
//! that both tables name are shared, not reconnected.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Weak},
};

use bytes::Bytes;

use crate::translate::l7::{BackendId, BackendPlan, L7Plan, RouteTable};

use super::upstream::{Backend, Endpoint};

/// Host and path → backend, as the proxy uses it.
#[derive(Debug)]
pub struct Router {
    routes: Arc<RouteTable<BackendId>>,
    backends: Vec<Arc<Backend>>,
}

impl Default for Router {
    fn default() -> Self {
        Self {
            routes: Arc::new(RouteTable::new(std::iter::empty(), None)),
            backends: Vec::new(),
        }
    }
}

impl Router {
    /// The backend for `host` and `path`, if any rule or default backend matches.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<Backend>> {
        self.routes
            .route(host, path)
            .and_then(|id| self.backends.get(*id))
    }

    /// How many backends the table points at.
    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }
}

/// Endpoints by address, kept as long as some table uses them.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    endpoints: HashMap<SocketAddr, Weak<Endpoint>>,
}

impl EndpointRegistry {
    fn get(&mut self, addr: SocketAddr) -> Arc<Endpoint> {
        if let Some(live) = self.endpoints.get(&addr).and_then(Weak::upgrade) {
            return live;
        }
        let endpoint = Arc::new(Endpoint::new(addr));
        self.endpoints.insert(addr, Arc::downgrade(&endpoint));
        endpoint
    }

    /// Builds the router for `plan`, reusing live endpoints.
    pub fn router(&mut self, plan: &L7Plan) -> Router {
        let backends = plan
            .backends
            .iter()
            .map(|backend| self.backend(backend))
            .collect();
        // Forget addresses no table holds any more (the old table's references go when it drops;
        // those are collected on a later reload).
        self.endpoints.retain(|_, weak| weak.strong_count() > 0);
        Router {
            routes: plan.routes.clone(),
            backends,
        }
    }

    /// `current` with only the backends `changed` rebuilt from `plan` (their endpoints moved):
    /// the route table and every other backend are shared, not rebuilt.
    pub fn with_new_endpoints(
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
        }
    }

    fn backend(&mut self, backend: &BackendPlan) -> Arc<Backend> {
        let endpoints = match &backend.endpoints {
            Ok(addrs) => addrs.iter().map(|addr| self.get(*addr)).collect(),
            Err(_) => Vec::new(),
        };
        let unavailable = match backend.unavailable_message() {
            Some(message) => Some(Bytes::from(message)),
            None if backend.endpoints.as_ref().is_ok_and(Vec::is_empty) => {
                Some(Bytes::from(format!(
                    "503 Service Unavailable: service {} port {} has no ready endpoints\n",
                    backend.service, backend.port
                )))
            }
            None => None,
        };
        Arc::new(Backend::new(
            format!("{}:{}", backend.service, backend.port),
            endpoints,
            unavailable,
        ))
    }
}
