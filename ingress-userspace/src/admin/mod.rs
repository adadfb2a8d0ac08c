//! The admin listener (`--admin-listen`, default 127.0.0.1:9900): `/healthz` answers 200 while
//! the process serves; `/readyz` answers 200 only once the first full sync of the objects is in
//! the maps and the proxy, 503 before; `/metrics` serves the Prometheus metrics ([`metrics`],
//! listed in `docs/metrics.md`); `/debug/services`, `/debug/routes` and `/debug/certs` serve the
//! JSON views `xdp-ingress inspect` shows ([`crate::inspect`]), to loopback clients only.

pub mod metrics;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

use self::metrics::Metrics;
use crate::inspect::{ViewKind, ViewRequest};

/// How long a `/debug/...` request waits for the runner (busy applying a change).
const VIEW_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The OpenMetrics text format, which Prometheus scrapes natively.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the agent is ready, shared with the admin listener.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the agent ready.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether the agent is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Binds `addr` and serves the admin endpoints on the current runtime; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    views: mpsc::Sender<ViewRequest>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let readiness = readiness.clone();
            let metrics = metrics.clone();
            let views = views.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    answer(
                        request,
                        peer,
                        readiness.clone(),
                        metrics.clone(),
                        views.clone(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

async fn answer(
    request: Request<Incoming>,
    peer: SocketAddr,
    readiness: Readiness,
    metrics: Arc<Metrics>,
    views: mpsc::Sender<ViewRequest>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let view = match request.uri().path() {
        "/debug/services" => Some(ViewKind::Services),
        "/debug/routes" => Some(ViewKind::Routes),
        "/debug/certs" => Some(ViewKind::Certs),
        _ => None,
    };
    // The routing table names endpoints and Secrets: for `inspect` on the node (or in the pod),
    // not for whoever reaches the probe port.
    if view.is_some() && !peer.ip().is_loopback() {
        let mut refused = Response::new(Full::new(Bytes::from_static(
            b"/debug is served on loopback only (run xdp-ingress inspect on the node)\n",
        )));
        *refused.status_mut() = StatusCode::FORBIDDEN;
        return Ok(refused);
    }
    if let Some(kind) = view {
        let (reply, answer) = oneshot::channel();
        // Both the queue and the answer are bounded in time: a runner busy with a long sync
        // makes a 503, not a pile of waiting requests.
        let view = tokio::time::timeout(VIEW_TIMEOUT, async {
            views.send((kind, reply)).await.ok()?;
            answer.await.ok()
        })
        .await
        .ok()
        .flatten();
        let mut response = match view {
            Some(view) => Response::new(Full::new(Bytes::from(view.to_string()))),
            None => {
                let mut busy = Response::new(Full::new(Bytes::from_static(b"agent busy\n")));
                *busy.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                busy
            }
        };
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return Ok(response);
    }
    if request.uri().path() == "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from(metrics.render().await)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(METRICS_CONTENT_TYPE),
        );
        return Ok(response);
    }
    let (status, body) = match request.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n"),
        "/readyz" if readiness.is_ready() => (StatusCode::OK, "ready\n"),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    Ok(response)
}
