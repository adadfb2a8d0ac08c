//! The HTTP side: the accept loop, routing, and the list/watch/CRUD/patch handlers.

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
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::resources::{self, RESOURCES};
use crate::selector::Selector;
use crate::store::{ApiError, EventType, Store, WriteMode};
use crate::{Options, RequestRecord, Verb};

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
    pub fn new(opts: Options) -> Shared {
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
    pub fn mutate<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
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

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }

    fn number<T: std::str::FromStr>(&self, k: &str) -> Result<Option<T>, ApiError> {
        match self.get(k) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value {v:?} for query parameter {k}"))
            }),
        }
    }
}

/// Where a request goes.
enum Route {
    Discovery(Value),
    Resource {
        res: usize,
        ns: Option<String>,
        name: Option<String>,
        sub: Option<String>,
    },
    NotFound,
}

fn group_version_json(group: &str, version: &str) -> Value {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"groupVersion": gv, "version": version})
}

fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&str> = RESOURCES
        .iter()
        .map(|r| r.group)
        .filter(|g| !g.is_empty())
        .collect();
    groups.dedup();
    groups.sort_unstable();
    groups.dedup();
    groups
}

fn api_group_json(group: &str) -> Value {
    let mut versions: Vec<&str> = RESOURCES
        .iter()
        .filter(|r| r.group == group)
        .map(|r| r.version)
        .collect();
    versions.dedup();
    json!({
        "name": group,
        "versions": versions.iter().map(|v| group_version_json(group, v)).collect::<Vec<_>>(),
        "preferredVersion": group_version_json(group, versions.first().copied().unwrap_or("v1")),
    })
}

fn resource_list_json(group: &str, version: &str) -> Option<Value> {
    let mut out = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        out.push(json!({
            "name": r.plural,
            "singularName": r.kind.to_lowercase(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }));
        if r.status_subresource {
            out.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if out.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version_json(group, version)["groupVersion"],
        "resources": out,
    }))
}

fn route(path: &str, addr: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => {
            return Route::Discovery(json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64",
            }))
        }
        ["api"] => {
            return Route::Discovery(json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": addr}],
            }))
        }
        ["apis"] => {
            return Route::Discovery(json!({
                "kind": "APIGroupList", "apiVersion": "v1",
                "groups": groups().into_iter().map(api_group_json).collect::<Vec<_>>(),
            }))
        }
        ["apis", g] => {
            return if groups().contains(g) {
                let mut v = api_group_json(g);
                v["kind"] = json!("APIGroup");
                v["apiVersion"] = json!("v1");
                Route::Discovery(v)
            } else {
                Route::NotFound
            };
        }
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    let r = |plural: &str| resources::by_path(group, version, plural);
    let owned = |s: &str| Some(s.to_string());
    match rest {
        [] => resource_list_json(group, version).map_or(Route::NotFound, Route::Discovery),
        ["namespaces", ns, plural, tail @ ..]
            if r(plural).is_some_and(|i| RESOURCES[i].namespaced)
                && tail.len() <= 2
                && tail.get(1).is_none_or(|s| *s == "status") =>
        {
            Route::Resource {
                res: r(plural).unwrap_or_default(),
                ns: owned(ns),
                name: tail.first().and_then(|n| owned(n)),
                sub: tail.get(1).and_then(|s| owned(s)),
            }
        }
        [plural, tail @ ..] if tail.len() <= 2 && tail.get(1).is_none_or(|s| *s == "status") => {
            match r(plural) {
                Some(res) if RESOURCES[res].namespaced && !tail.is_empty() => Route::NotFound,
                Some(res) => Route::Resource {
                    res,
                    ns: None,
                    name: tail.first().and_then(|n| owned(n)),
                    sub: tail.get(1).and_then(|s| owned(s)),
                },
                None => Route::NotFound,
            }
        }
        _ => Route::NotFound,
    }
}

fn verb_of(method: &Method, name: bool, q: &Query) -> Verb {
    match (method.as_str(), name) {
        ("GET", false) if q.flag("watch") => Verb::Watch,
        ("GET", false) => Verb::List,
        ("GET", true) => Verb::Get,
        ("POST", false) => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        _ => Verb::Other,
    }
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

struct Call<'a> {
    shared: &'a Arc<Shared>,
    res: usize,
    /// The namespace on the URL, `""` for cluster-scoped or all-namespace requests.
    ns: String,
    all_ns: bool,
    name: Option<String>,
    sub: Option<String>,
    q: &'a Query,
    content_type: Option<&'a str>,
    body: &'a Bytes,
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

impl Call<'_> {
    fn selector(&self) -> Result<Selector, ApiError> {
        Selector::parse(self.q.get("labelSelector"), self.q.get("fieldSelector"))
            .map_err(ApiError::bad_request)
    }

    fn list_ns(&self) -> Option<&str> {
        if self.all_ns || !RESOURCES[self.res].namespaced {
            None
        } else {
            Some(&self.ns)
        }
    }

    fn dispatch(
        &self,
        verb: Verb,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Response<Body>, ApiError> {
        let def = &RESOURCES[self.res];
        let status_sub = match self.sub.as_deref() {
            None => false,
            Some("status") if def.status_subresource => true,
            Some(other) => {
                return Err(ApiError::new(
                    404,
                    "NotFound",
                    format!("the server could not find the requested resource ({other})"),
                ))
            }
        };
        let name = self.name.as_deref().unwrap_or_default();
        match verb {
            Verb::List => Ok(json_response(200, &self.list()?)),
            Verb::Watch => self.watch(shutdown),
            Verb::Get => {
                let store = lock(&self.shared.store);
                match store.get(self.res, &self.ns, name) {
                    Some(o) => Ok(json_response(200, o)),
                    None => Err(ApiError::not_found(def, name)),
                }
            }
            Verb::Create => {
                if self.all_ns {
                    return Err(ApiError::new(
                        405,
                        "MethodNotAllowed",
                        "create needs a namespace",
                    ));
                }
                let mut obj = parse_json(self.body)?;
                if def.status_subresource {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
                let created = self.shared.mutate(|s| s.create(self.res, &self.ns, obj))?;
                Ok(json_response(201, &created))
            }
            Verb::Update => {
                let obj = parse_json(self.body)?;
                let mode = if status_sub {
                    WriteMode::Status
                } else {
                    WriteMode::Main
                };
                let updated = self
                    .shared
                    .mutate(|s| s.update(self.res, &self.ns, name, obj, mode))?;
                Ok(json_response(200, &updated))
            }
            Verb::Patch => {
                let ct = self
                    .content_type
                    .unwrap_or("")
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim();
                let (patch, apply) = match ct {
                    "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                        (parse_json(self.body)?, false)
                    }
                    "application/apply-patch+yaml" | "application/apply-patch+json" => {
                        let v: Value = serde_yaml::from_slice(self.body).map_err(|e| {
                            ApiError::bad_request(format!("the apply patch is not valid YAML/JSON: {e}"))
                        })?;
                        if self.q.get("fieldManager").is_none_or(str::is_empty) {
                            return Err(ApiError::bad_request(
                                "PATCH with apply requires the fieldManager query parameter",
                            ));
                        }
                        (v, true)
                    }
                    other => {
                        return Err(ApiError::new(
                            415,
                            "UnsupportedMediaType",
                            format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"),
                        ))
                    }
                };
                let patched = self
                    .shared
                    .mutate(|s| s.patch(self.res, &self.ns, name, &patch, status_sub, apply))?;
                Ok(json_response(200, &patched))
            }
            Verb::Delete => {
                let opts: Value = if self.body.is_empty() {
                    Value::Null
                } else {
                    parse_json(self.body)?
                };
                let pre = opts
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str);
                let deleted = self
                    .shared
                    .mutate(|s| s.delete(self.res, &self.ns, name, pre))?;
                Ok(json_response(200, &deleted))
            }
            Verb::DeleteCollection => {
                let sel = self.selector()?;
                let ns = self.list_ns().map(str::to_string);
                let deleted = self.shared.mutate(|s| {
                    let keys: Vec<(String, String)> = s
                        .list(self.res, ns.as_deref(), &sel)
                        .into_iter()
                        .map(|(k, _)| k.clone())
                        .collect();
                    keys.iter()
                        .filter_map(|(ns, n)| s.delete(self.res, ns, n, None).ok())
                        .collect::<Vec<_>>()
                });
                Ok(json_response(
                    200,
                    &json!({
                        "kind": format!("{}List", def.kind),
                        "apiVersion": def.api_version(),
                        "metadata": {},
                        "items": deleted,
                    }),
                ))
            }
            Verb::Discovery | Verb::Other => Err(ApiError::new(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            )),
        }
    }

    fn list(&self) -> Result<Value, ApiError> {
        let def = &RESOURCES[self.res];
        let sel = self.selector()?;
        let limit: usize = self.q.number("limit")?.unwrap_or(0);
        let store = lock(&self.shared.store);
        if self.q.get("resourceVersionMatch") == Some("Exact") {
            let rv: u64 = self.q.number("resourceVersion")?.unwrap_or(0);
            if rv < store.compacted_before {
                return Err(ApiError::expired(format!(
                    "too old resource version: {rv} ({})",
                    store.compacted_before
                )));
            }
        }
        let (rv, after) = match self.q.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let mut parts = token.splitn(3, '/');
                let (Some(rv), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
                else {
                    return Err(ApiError::bad_request(format!(
                        "invalid continue token {token:?}"
                    )));
                };
                let rv: u64 = rv.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid continue token {token:?}"))
                })?;
                if rv < store.compacted_before {
                    return Err(ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    ));
                }
                (rv, Some((ns.to_string(), name.to_string())))
            }
            None => (store.rv, None),
        };
        let items: Vec<_> = store
            .list(self.res, self.list_ns(), &sel)
            .into_iter()
            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
            .collect();
        let mut meta = json!({"resourceVersion": rv.to_string()});
        let page: Vec<Value> = if limit > 0 && items.len() > limit {
            let last = &items[limit - 1].0;
            meta["continue"] = json!(format!("{rv}/{}/{}", last.0, last.1));
            meta["remainingItemCount"] = json!(items.len() - limit);
            items[..limit].iter().map(|(_, o)| (*o).clone()).collect()
        } else {
            items.iter().map(|(_, o)| (*o).clone()).collect()
        };
        Ok(json!({
            "kind": format!("{}List", def.kind),
            "apiVersion": def.api_version(),
            "metadata": meta,
            "items": page,
        }))
    }

    fn watch(&self, shutdown: watch::Receiver<bool>) -> Result<Response<Body>, ApiError> {
        let sel = self.selector()?;
        let start: Option<u64> = self.q.number("resourceVersion")?;
        let timeout: Option<u64> = self.q.number("timeoutSeconds")?;
        let spec = WatchSpec {
            res: self.res,
            ns: self.list_ns().map(str::to_string),
            sel,
            start,
            initial_events: self.q.flag("sendInitialEvents"),
            bookmarks: self.q.flag("allowWatchBookmarks"),
            timeout: timeout.filter(|t| *t > 0).map(Duration::from_secs),
        };
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(run_watch(self.shared.clone(), spec, tx, shutdown));
        let mut resp = Response::new(Body::Stream(rx));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        Ok(resp)
    }
}

struct WatchSpec {
    res: usize,
    ns: Option<String>,
    sel: Selector,
    start: Option<u64>,
    initial_events: bool,
    bookmarks: bool,
    timeout: Option<Duration>,
}

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn bookmark(res: usize, rv: u64, initial_end: bool) -> Bytes {
    let def = &RESOURCES[res];
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": meta}),
    )
}

/// The lines for the history after `cursor` that this watch should see.
fn pending(store: &Store, spec: &WatchSpec, cursor: u64) -> Vec<Bytes> {
    let from = store.history.partition_point(|e| e.rv <= cursor);
    let in_ns = |o: &Value| {
        spec.ns
            .as_deref()
            .is_none_or(|ns| o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
    };
    let mut out = Vec::new();
    for e in &store.history[from..] {
        if e.res != spec.res || !in_ns(&e.obj) {
            continue;
        }
        let now = spec.sel.matches(&e.obj);
        let ty = match e.ty {
            EventType::Modified => {
                let before = e.prev.as_ref().is_some_and(|p| spec.sel.matches(p));
                match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
            ty => now.then_some(ty),
        };
        if let Some(ty) = ty {
            out.push(event_line(ty.as_str(), &e.obj));
        }
    }
    out
}

async fn run_watch(
    shared: Arc<Shared>,
    spec: WatchSpec,
    tx: mpsc::Sender<Bytes>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changed = shared.changed.subscribe();
    let (mut cursor, first) = {
        let store = lock(&shared.store);
        match spec.start {
            Some(n) if n != 0 && !spec.initial_events => {
                if n < store.compacted_before {
                    let gone = ApiError::expired(format!(
                        "too old resource version: {n} ({})",
                        store.compacted_before
                    ));
                    (u64::MAX, vec![event_line("ERROR", &gone.to_status())])
                } else {
                    (n, Vec::new())
                }
            }
            _ => {
                // No resourceVersion (or 0), or a streaming list: the current state first.
                let mut lines: Vec<Bytes> = store
                    .list(spec.res, spec.ns.as_deref(), &spec.sel)
                    .into_iter()
                    .map(|(_, o)| event_line("ADDED", o))
                    .collect();
                if spec.initial_events {
                    lines.push(bookmark(spec.res, store.rv, true));
                }
                (store.rv, lines)
            }
        }
    };
    for line in first {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    if cursor == u64::MAX {
        // The 410 ERROR event was the whole stream.
        return;
    }
    let deadline = async {
        match spec.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let period = shared.opts.bookmark_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        let lines = {
            let store = lock(&shared.store);
            let lines = pending(&store, &spec, cursor);
            cursor = cursor.max(store.rv);
            lines
        };
        for line in lines {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tick.tick(), if spec.bookmarks => {
                if tx.send(bookmark(spec.res, cursor, false)).await.is_err() {
                    return;
                }
            }
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
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
