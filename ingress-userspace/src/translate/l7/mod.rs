//! The L7 half of the translator: Ingresses (with their IngressClasses, Services, EndpointSlices
//! and TLS Secrets) in, an [`L7Plan`] out.

pub mod plan;
pub mod routes;

pub use plan::{BackendId, BackendPlan, L7Plan, PemPair, ServicePortRef, TlsPlan, Unavailable};
pub use routes::{PathRule, PathType, RouteTable};
