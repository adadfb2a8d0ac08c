//! The L7 proxy: HTTP/1.1 and HTTP/2 (h2 over TLS by ALPN, h2c with prior knowledge) from
//! clients, HTTP/1.1 to endpoints, routed by the translator's [`L7Plan`].
//!
//! - [`server`]: the proxy as a sink: settings, plans applied (one atomic swap), listeners
//!   started and drained, the `/metrics` collector. Beside it, along a request's way:
//!   - `listener`: accept loops, the per-listener cap, the TLS handshake;
//!   - `connection`: a connection's life under hyper, keep-alive, parking;
//!   - `forward`: the request path, with one `RequestContext` per request;
//!   - `refusal`: every answer the proxy gives itself, turned into a response in one place;
//!   - `body`: the response body, where a request is counted when it ends.
//! - [`head_guard`]: HTTP/1.1 heads read before hyper: slow heads, smuggling, message
//!   boundaries for parking (the connection's `Http1State`).
//! - [`router`]: the routing table the request path reads through one atomic pointer (arc-swap);
//!   a reload swaps it, requests in flight keep the table they started with.
//! - [`upstream`]: endpoints, their keep-alive pools and passive health, balancing.
//! - [`tls`]: certificates by SNI, swapped on reload.
//! - [`headers`]: hop-by-hop and forwarding header rules.
//! - [`path`]: the request path, normalised once for routing and for the endpoint.
//! - `limits`: per-client state of the rate and connection limits (`limit-*` annotations).
//! - [`lifetime`]: send, HTTP/2 idle and first-request timeouts; the per-listener connection cap.
//! - [`parking`]: quiet plain HTTP/1.1 connections, each a descriptor in one epoll set.
//! - `passthrough`: `ssl-passthrough` hosts' TLS connections, routed by SNI and spliced.
//! - [`access_log`]: the optional per-request log, written off the request path.
//! - [`metrics`]: per-backend request counters (atomics) and their `/metrics` encoding.

pub(crate) mod access_log;
mod body;
mod connection;
mod filters;
mod forward;
pub(crate) mod head_guard;
pub(crate) mod headers;
pub(crate) mod lifetime;
mod limits;
mod listener;
pub(crate) mod metrics;
pub(crate) mod parking;
mod passthrough;
pub(crate) mod path;
mod refusal;
pub(crate) mod router;
pub(crate) mod server;
pub(crate) mod tls;
pub(crate) mod upstream;

pub use lifetime::raise_nofile_limit;
pub use listener::BoundListeners;
pub use metrics::nginx::NginxLabels;
pub use server::{ApplyReport, NginxCollector, Proxy, ProxySettings};
