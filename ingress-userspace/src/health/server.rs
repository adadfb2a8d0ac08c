//! The HTTP side of the health servers: one accept loop per port (its connections die with
//! it, so closing a health check is aborting one task), answering with kube-proxy's status
//! codes, headers and bodies. Anything that reaches a node port can connect, so connections
//! are bounded: [`MAX_CONNECTIONS`] per port, a request head within [`HEAD_TIMEOUT`].

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::JoinHandle, task::JoinSet};

use super::{go_time, now_nanos, ProxyHealth};
use crate::translate::l4::HealthCheckPlan;

/// Connections open at once on one port; past it a newcomer is closed at once. Load balancer
/// probes need one or two per source.
pub(super) const MAX_CONNECTIONS: usize = 64;

/// A request head (and an idle keep-alive connection's next one) must arrive within this.
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head (hyper's smallest buffer).
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// A Service's health check with its two possible bodies made once, when its count changes,
/// not per probe.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Prepared {
    /// What the bodies say.
    pub(super) check: HealthCheckPlan,
    /// The body while the proxy is healthy.
    healthy: Bytes,
    /// The body while it is not (`serviceProxyHealthy: false`).
    unhealthy: Bytes,
}

impl Prepared {
    pub(super) fn new(check: HealthCheckPlan) -> Self {
        Self {
            healthy: service_body(&check, true),
            unhealthy: service_body(&check, false),
            check,
        }
    }
}

/// Binds `addr` and serves a Service's health check from `entry`.
pub(super) fn serve_service(
    addr: SocketAddr,
    entry: Arc<ArcSwap<Prepared>>,
    proxy: Arc<ProxyHealth>,
) -> std::io::Result<JoinHandle<()>> {
    let listener = bind(addr)?;
    Ok(tokio::spawn(accept_loop(listener, move |_request| {
        service_answer(&entry.load(), proxy.is_healthy())
    })))
}

/// Binds `addr` and serves `/healthz` and `/livez`; the bound address.
pub(super) fn serve_node(addr: SocketAddr, proxy: Arc<ProxyHealth>) -> std::io::Result<SocketAddr> {
    let listener = bind(addr)?;
    let bound = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, move |request: &Request<Incoming>| {
        node_answer(request.uri().path(), &proxy, now_nanos())
    }));
    Ok(bound)
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

async fn accept_loop<F>(listener: TcpListener, answer: F)
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let answer = Arc::new(answer);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let mut connections = JoinSet::new();
    loop {
        let accepted = listener.accept().await;
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors: every retry fails at once; wait instead of spinning.
                tracing::warn!(%error, "health check accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if connections.len() >= MAX_CONNECTIONS {
            continue;
        }
        let answer = answer.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let response = answer(&request);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        connections.spawn(async move {
            let _ = connection.await;
        });
    }
}

/// kube-proxy's service health check answer: 200 with local endpoints and a healthy proxy,
/// else 503, on any path and method.
pub(super) fn service_answer(prepared: &Prepared, proxy_healthy: bool) -> Response<Full<Bytes>> {
    let status = if prepared.check.local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = if proxy_healthy {
        &prepared.healthy
    } else {
        &prepared.unhealthy
    };
    json_response(status, body.clone())
}

/// kube-proxy's body, byte for byte: tab-indented, no trailing newline.
fn service_body(check: &HealthCheckPlan, proxy_healthy: bool) -> Bytes {
    Bytes::from(format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        json_string(&check.service.namespace),
        json_string(&check.service.name),
        check.local_endpoints,
        proxy_healthy
    ))
}

/// kube-proxy's `/healthz` and `/livez` (the node is always eligible: the agent does not
/// watch Node objects for the autoscaler's deletion taint); other paths 404 as Go's mux does.
pub(super) fn node_answer(path: &str, proxy: &ProxyHealth, now: i64) -> Response<Full<Bytes>> {
    let (healthy, last_updated) = proxy.check(now);
    // kube-proxy reports "now" as the last update while healthy (its older releases did).
    let last_updated = if healthy { Some(now) } else { last_updated };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let times = format!(
        "{{\"lastUpdated\": {},\"currentTime\": {}",
        json_string(&go_time(last_updated)),
        json_string(&go_time(Some(now)))
    );
    match path {
        "/healthz" => json_response(status, format!("{times}, \"nodeEligible\": true}}").into()),
        "/livez" => json_response(status, format!("{times}}}").into()),
        _ => {
            let mut response =
                Response::new(Full::new(Bytes::from_static(b"404 page not found\n")));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response.headers_mut().insert(
                header::X_CONTENT_TYPE_OPTIONS,
                header::HeaderValue::from_static("nosniff"),
            );
            response
        }
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}

/// A JSON string literal (Go's `%q` gives the same for the names Kubernetes allows).
fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}
