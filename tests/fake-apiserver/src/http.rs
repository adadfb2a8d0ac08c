//! The HTTP side: the accept loop, the state the test side shares with every server generation,
//! and one request's way to its handler (routing, recording, injected failures); the handlers
//! themselves are in the submodules.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::resources::RESOURCES;
use crate::store::{ApiError, Store};
use crate::{Options, RequestRecord, Verb};

mod call;
mod list;
mod query;
mod routes;
mod watch_stream;

use call::Call;
use query::Query;
use routes::{route, verb_of, Route};

/// The largest request body accepted.
const MAX_BODY: usize = 16 << 20;

/// An injected failure: the next `times` requests of `verb` on `resource` get `code`.
pub(crate) struct Injection {
    pub verb: Verb,
    pub resource: usize,
    pub code: u16,
    pub times: usize,
}

/// State shared by the test side and every server generation.
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    /// Carries the latest resourceVersion; watch tasks wait on it.
    pub changed: watch::Sender<u64>,
    pub log: Mutex<Vec<RequestRecord>>,
    pub injections: Mutex<Vec<Injection>>,
    pub opts: Options,
}

/// Lock ignoring poisoning: a panicking test thread must not wedge the server.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn new(opts: Options) -> Shared {
        let (changed, _) = watch::channel(0);
        Shared {
            store: Mutex::new(Store::new()),
            changed,
            log: Mutex::new(Vec::new()),
            injections: Mutex::new(Vec::new()),
            opts,
        }
    }

    /// Run `f` on the store, then wake the watchers.
    pub(crate) fn mutate<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let (r, rv) = {
            let mut store = lock(&self.store);
            let r = f(&mut store);
            (r, store.rv)
        };
        self.changed.send_replace(rv);
        r
    }
}

/// A response body: a whole buffer, or a stream of chunks (a watch).
pub(crate) enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Body::Full(b) => {
                http_body::SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            Body::Stream(_) => http_body::SizeHint::default(),
        }
    }
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    let mut resp = Response::new(Body::Full(Some(Bytes::from(bytes))));
    *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

/// The accept loop of one server generation: ends on `shutdown`, then closes the listener and
/// aborts every open connection (and with it every watch stream).
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    done: std::sync::mpsc::Sender<()>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    conns.spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let shared = shared.clone();
                            let shutdown = shutdown.clone();
                            async move { Ok::<_, Infallible>(handle(req, shared, shutdown).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    let _ = done.send(());
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        504 => "Timeout",
        _ => "InternalError",
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let query_raw = parts.uri.query().unwrap_or("").to_string();
    let q = Query::parse(parts.uri.query());
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_string());
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error_response(&ApiError::new(
                413,
                "RequestEntityTooLarge",
                "request body too large or unreadable",
            ))
        }
    };
    let addr = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let route = route(&path, &addr);
    let mut record = RequestRecord {
        method: parts.method.to_string(),
        path: path.clone(),
        query: query_raw,
        verb: Verb::Other,
        resource: None,
        namespace: None,
        name: None,
        subresource: None,
        content_type: content_type.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
        status: 0,
    };
    let resp = match route {
        Route::Discovery(v) => {
            record.verb = Verb::Discovery;
            if parts.method == Method::GET {
                json_response(200, &v)
            } else {
                error_response(&ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "method not allowed",
                ))
            }
        }
        Route::NotFound => error_response(&ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )),
        Route::Resource { res, ns, name, sub } => {
            let verb = verb_of(&parts.method, name.is_some(), &q);
            record.verb = verb;
            record.resource = Some(RESOURCES[res].qualified());
            record.namespace = ns.clone();
            record.name = name.clone();
            record.subresource = sub.clone();
            let injected = {
                let mut inj = lock(&shared.injections);
                let hit = inj
                    .iter_mut()
                    .find(|i| i.verb == verb && i.resource == res && i.times > 0);
                hit.map(|i| {
                    i.times -= 1;
                    i.code
                })
            };
            if let Some(code) = injected {
                error_response(&ApiError::new(code, reason_for(code), "injected failure"))
            } else {
                let call = Call {
                    shared: &shared,
                    res,
                    ns: ns.unwrap_or_default(),
                    all_ns: RESOURCES[res].namespaced && record.namespace.is_none(),
                    name,
                    sub,
                    q: &q,
                    content_type: content_type.as_deref(),
                    body: &body,
                };
                match call.dispatch(verb, shutdown) {
                    Ok(r) => r,
                    Err(e) => error_response(&e),
                }
            }
        }
    };
    record.status = resp.status().as_u16();
    lock(&shared.log).push(record);
    resp
}

#[cfg(test)]
mod tests {
    use super::query::percent_decode;
    use super::*;

    #[test]
    fn decode() {
        assert_eq!(
            percent_decode("type%3Dkubernetes.io%2Ftls"),
            "type=kubernetes.io/tls"
        );
        assert_eq!(percent_decode("a+b%"), "a b%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn routes() {
        let r = |p: &str| match route(p, "x") {
            Route::Resource { res, ns, name, sub } => {
                Some((RESOURCES[res].qualified(), ns, name, sub))
            }
            _ => None,
        };
        assert_eq!(
            r("/api/v1/namespaces/default/services/web/status"),
            Some((
                "services".into(),
                Some("default".into()),
                Some("web".into()),
                Some("status".into())
            ))
        );
        assert_eq!(
            r("/apis/networking.k8s.io/v1/ingressclasses/nginx"),
            Some((
                "ingressclasses.networking.k8s.io".into(),
                None,
                Some("nginx".into()),
                None
            ))
        );
        assert_eq!(
            r("/api/v1/namespaces/kube-system"),
            Some(("namespaces".into(), None, Some("kube-system".into()), None))
        );
        assert_eq!(
            r("/api/v1/services"),
            Some(("services".into(), None, None, None))
        );
        assert!(r("/api/v1/services/x").is_none());
        assert!(r("/api/v1/namespaces/a/nothings").is_none());
        assert!(r("/apis/nope/v1/things").is_none());
        assert!(matches!(route("/apis", "x"), Route::Discovery(_)));
    }
}
