//! The L7 half of the translator: Ingresses (with their IngressClasses, Services, EndpointSlices
//! and TLS Secrets) in, an [`L7Plan`] out. Pure: no I/O, no clock.
//!
//! Choices, and why:
//! - **Ours**: `spec.ingressClassName`, else the deprecated `kubernetes.io/ingress.class`
//!   annotation, names an IngressClass whose `spec.controller` is one of ours (several may be
//!   configured: `k8s.io/ingress-nginx` takes over the `nginx` class); an Ingress naming no class
//!   is ours when one of our classes is annotated `ingressclass.kubernetes.io/is-default-class:
//!   "true"`. Other Ingresses are another controller's business: ignored without a problem.
//! - **Precedence**: oldest `creationTimestamp` first (missing last), then namespace/name. The
//!   route table keeps the first rule for a host+path, so the oldest Ingress wins a conflict, as
//!   with ingress-nginx; the loser is reported. Conflicts use the table's own notion of "same":
//!   Prefix `/foo` and `/foo/` are one rule, and `ImplementationSpecific` (matched as `Prefix`)
//!   collides with `Prefix`. Only the oldest `spec.defaultBackend` is used.
//! - **Bad input skips the least**: an invalid host skips its rule, a bad path, path type or
//!   backend skips that path, each with a problem naming the field; everything else serves. An
//!   empty `ImplementationSpecific` path means `/` (the API server allows it).
//! - **Backends** are per (Ingress, Service, port) and resolved here to ready IPv4 endpoints with
//!   the L4 rules (EndpointSlice label, port by name, `ready: false` excluded). An unresolvable
//!   backend keeps its route, so the proxy answers 503 saying why; an unknown Service or port, or a
//!   Service the proxy cannot reach (ExternalName, a non-TCP port), is also reported. No ready
//!   endpoint is a normal state: no problem.
//! - **Annotations**: ingress-nginx's `nginx.ingress.kubernetes.io/*` keys are read per Ingress
//!   with nginx's defaults (see `annotations` and its catalogue) into the filters of its routes
//!   ([`Route`]: redirects, CORS, source ranges, rewrite) and into rules of their own
//!   (`app-root`, `server-alias`, `from-to-www-redirect`, `default-backend`). `use-regex` or
//!   `rewrite-target` on any Ingress of a host makes every path of that host a regex. A value
//!   that does not parse makes that Ingress's routes answer 503 with the reason; ignored,
//!   never-executed and unknown keys are reported and the Ingress is served without them.
//! - **TLS**: one [`TlsPlan`] per `spec.tls[]` entry with a `secretName`, in precedence order. An
//!   entry without `hosts` covers the hosts of the Ingress's own rules (as ingress-nginx does); if
//!   the rules name no host either, its host list stays empty and it covers no name. An entry
//!   without `secretName` gets no plan (those hosts get the default certificate). A missing or
//!   unusable Secret is reported and the plan carries the reason.

pub mod annotations;
mod backends;
pub mod balance;
mod class;
pub mod nginx_config;
pub mod passthrough;
pub mod plan;
pub mod routes;
mod rules;
mod tls;

#[cfg(test)]
mod tests;

pub use balance::{AffinityMode, Balance, CookieAffinity, HashKey, HashPart};
pub use plan::{
    BackendId, BackendPlan, BackendProtocol, L7Plan, PemPair, ServicePortRef, TlsPlan, Unavailable,
    UpstreamPlan, UpstreamTlsPlan,
};
pub use routes::{
    Canary, CanaryRule, Cidr, CorsPolicy, Filter, PathRule, PathType, Route, RouteTable,
    WeightedBackend,
};

pub use backends::refresh_endpoints;
pub use nginx_config::NginxDefaults;
pub use passthrough::{PassthroughHost, PassthroughTable};

use std::sync::Arc;

use crate::model::{ClusterObjects, ObjectName, Problem};

use backends::Backends;
use class::our_ingresses;
use rules::{default_backend, path_rules, Context};
use tls::{default_tls, tls_plans};

/// The controller name our IngressClasses carry in `spec.controller`, unless configured.
pub const DEFAULT_CONTROLLER_NAME: &str = "xdp-ingress.dev/controller";
/// The deprecated per-Ingress class annotation, still honoured when `ingressClassName` is unset.
pub const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// The IngressClass annotation that makes it the class of Ingresses naming none.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// What the L7 translation needs besides the objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L7Options {
    /// IngressClasses with one of these `spec.controller` values are ours (`--controller-name`).
    pub controller_names: Vec<String>,
    /// The certificate for names no Ingress covers (`--default-tls-secret`).
    pub default_tls_secret: Option<ObjectName>,
    /// `--enable-ssl-passthrough`: honour `ssl-passthrough` (off, as in ingress-nginx).
    pub ssl_passthrough: bool,
    /// ingress-nginx's global ConfigMap (`--nginx-configmap`): its keys change the annotation
    /// defaults ([`NginxDefaults`]).
    pub nginx_configmap: Option<ObjectName>,
}

impl Default for L7Options {
    fn default() -> Self {
        Self {
            controller_names: vec![DEFAULT_CONTROLLER_NAME.to_string()],
            default_tls_secret: None,
            ssl_passthrough: false,
            nginx_configmap: None,
        }
    }
}

/// Objects in, plan out, with every problem found in our Ingresses.
pub fn translate(objects: &ClusterObjects, options: &L7Options) -> (L7Plan, Vec<Problem>) {
    let mut problems = Vec::new();
    let nginx = nginx_config::read(objects, options.nginx_configmap.as_ref(), &mut problems);
    let ours = our_ingresses(objects, &options.controller_names, &nginx);
    let mut backends = Backends::new(objects);
    // Certificates first: `ssl-redirect` applies to hosts that have one.
    let tls: Vec<TlsPlan> = ours
        .iter()
        .flat_map(|ingress| tls_plans(ingress, objects, &mut problems))
        .collect();
    let mut context = Context {
        objects,
        backends: &mut backends,
        tls: &tls,
        ssl_passthrough: options.ssl_passthrough,
        passthrough: PassthroughTable::default(),
    };
    let mut auth_secrets = Vec::new();
    let rules = path_rules(&ours, &mut context, &mut auth_secrets, &mut problems);
    let passthrough = Arc::new(std::mem::take(&mut context.passthrough));
    let default_backend = default_backend(&ours, &mut backends, &mut problems);
    let routes = Arc::new(RouteTable::new(
        rules
            .iter()
            .map(|(host, rule)| (host.as_deref(), rule.clone())),
        default_backend,
    ));
    let default_tls = options
        .default_tls_secret
        .as_ref()
        .map(|secret| default_tls(objects, secret, &mut problems));
    let mut ingresses: Vec<ObjectName> = ours.iter().map(|i| i.name.clone()).collect();
    ingresses.sort();
    let plan = L7Plan {
        routes,
        backends: backends.plans,
        tls,
        default_tls,
        ingresses,
        passthrough,
        nginx,
        auth_secrets,
    };
    (plan, problems)
}
