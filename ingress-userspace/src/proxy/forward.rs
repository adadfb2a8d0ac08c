//! The request path, from hyper's service call to the response head.
//!
//! Per request: one atomic load of the routing table, a lookup that allocates nothing, the
//! route's filters (see `filters`; a route without annotations has none), a canary's rule (routes with a canary only), header rewriting, an endpoint chosen by two random choices (or by the backend's hash ring or session cookie), a pooled (or new) connection, and the
//! response streamed back. What a request learns on its way (its turn on the connection, the
//! backend its route chose, the endpoint that answered) is kept in one [`RequestContext`]. It
//! holds values the request path owns anyway, moved in rather than cloned: the one reference to
//! the backend taken from the routing table (the response body takes it over to count the
//! request) and the endpoint's. What the proxy answers itself is a [`Refusal`] (see `refusal`).

use std::{
    borrow::Cow,
    convert::Infallible,
    sync::{atomic::Ordering, Arc},
    time::{Instant, SystemTime},
};

use http::{
    header, uri::PathAndQuery, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{
    access_log::AccessRecord,
    body::{Counted, NginxTally, ProxyBody, Tally},
    connection::ConnectionInfo,
    filters::{self, Decision, RequestView},
    head_guard::RequestTurn,
    headers,
    limits::{self, ConnectionSlot},
    metrics::nginx,
    path,
    refusal::Refusal,
    server::{ProxySettings, Shared},
    upstream::{
        grpc, Backend, Endpoint, Outstanding, RequestKeys, Sender, UpstreamBody,
        UpstreamResponseBody,
    },
};
use crate::translate::l7::routes::{limits::NextUpstream, series::SeriesCounters};

use attempt::{Replay, Sent, Timeouts};

mod attempt;

/// One request's way through the proxy, filled in as it goes and read when the answer is
/// known: for the head guard, the metrics and the access log.
pub(super) struct RequestContext {
    /// When the request reached the service: its duration counts from here.
    started: Instant,
    /// Its index on the connection, and whether the head guard flagged it.
    turn: RequestTurn,
    /// The backend its route chose (`None`: refused before routing, or no rule matched).
    backend: Option<Arc<Backend>>,
    /// The endpoint that answered, or failed after the request was sent (the request's own
    /// reference, moved here, not cloned).
    endpoint: Option<Arc<Endpoint>>,
    /// Its place in its client's `limit-connections`, given up when the response ends.
    slot: Option<ConnectionSlot>,
    /// `--metrics-compat nginx`: its route's series counters (`None`: unrouted, or no flag).
    series: Option<Arc<SeriesCounters>>,
    /// Whether a canary took it.
    canary: bool,
    /// When it was about to be sent to an endpoint (past filters and auth).
    upstream_started: Option<Instant>,
}

/// hyper's service: one request, start to answer. Always answers; what goes wrong becomes a
/// [`Refusal`] and its response here, in one place.
pub(super) async fn handle(
    shared: Arc<Shared>,
    connection: Arc<ConnectionInfo>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    // HTTP/1.x requests are counted for parking; HTTP/2 connections are never parked, their
    // streams are counted for the idle timeout.
    let http1 = request.version() <= Version::HTTP_11;
    if http1 {
        connection.http1_state.request_started();
    }
    connection.life.request_started(!http1);
    let mut context = RequestContext {
        started: Instant::now(),
        turn: connection.http1_state.next_request(),
        backend: None,
        endpoint: None,
        slot: None,
        series: None,
        canary: false,
        upstream_started: None,
    };
    // ingress-nginx's families: the method and length are read before the request moves on.
    let nginx_request = shared.settings.nginx_metrics.is_some().then(|| {
        (
            SeriesCounters::method_index(request.method()),
            nginx::request_length(&request),
        )
    });
    let record = shared.access_log.as_ref().map(|log| {
        Box::new(AccessRecord {
            log: log.clone(),
            time: SystemTime::now(),
            started: context.started,
            client: connection.peer,
            method: request.method().clone(),
            host: request_host(&request)
                .and_then(|h| h.to_str().ok().map(str::to_string))
                .unwrap_or_default(),
            path: request
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string()),
            version: request.version(),
            status: 0,
            bytes: 0,
            upstream: None,
        })
    });
    // A gRPC client reads refusals as gRPC statuses (see `refusal`); metrics and the access
    // log count them with the HTTP status they stand for, not the 200 that carries them.
    let grpc = !http1 && grpc::is_grpc(request.headers());
    let (mut response, status) =
        match proxy_request(&shared, &connection, request, &mut context).await {
            Err(refusal) if grpc => refusal.into_grpc_response(),
            answer => {
                let response = answer.unwrap_or_else(Refusal::into_response);
                let status = response.status();
                (response, status)
            }
        };
    if http1 {
        // Before hyper writes the answer: the head guard learns whether the connection switched
        // protocols before any byte of the new protocol can arrive.
        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        connection
            .http1_state
            .answered(context.turn.index, switched);
    }
    let counter = match context.backend {
        Some(backend) => Counted::Backend(backend),
        None => Counted::Unrouted(shared.counters.unrouted.clone()),
    };
    response.body_mut().slot = context.slot;
    let nginx = nginx_request.map(|(method, request_bytes)| {
        let counters = context.series.take();
        NginxTally {
            counters: counters.unwrap_or_else(|| shared.counters.nginx_unrouted.clone()),
            canary: context.canary,
            method,
            request_bytes,
            response_bytes: nginx::response_head_length(&response),
            upstream_started: context
                .upstream_started
                .filter(|_| context.endpoint.is_some()),
            upstream_latency: None,
        }
        .with_head_received()
    });
    response.body_mut().tally = Some(Tally {
        counter,
        status: status.as_u16(),
        started: context.started,
        nginx,
    });
    if let Some(mut record) = record {
        record.status = status.as_u16();
        record.upstream = context.endpoint.map(|endpoint| endpoint.addr);
        response.body_mut().record = Some(record);
    }
    if status == StatusCode::REQUEST_TIMEOUT {
        // Only the body timeout answers 408.
        shared
            .counters
            .client_timeouts
            .body
            .fetch_add(1, Ordering::Relaxed);
    }
    // The request's own reference to its connection goes with the body.
    response.body_mut().end_request_on_drop(connection, !http1);
    Ok(response)
}

/// The request's host: the target URI's authority when it has one (HTTP/2 `:authority`, or an
/// absolute-form HTTP/1.1 target, which RFC 9112 §3.2.2 says outranks Host), else the Host
/// header. Routing and the Host the endpoint sees both use it, so they cannot disagree.
fn request_host<B>(request: &Request<B>) -> Option<HeaderValue> {
    if let Some(authority) = request.uri().authority() {
        if let Ok(value) = HeaderValue::from_str(authority.as_str()) {
            return Some(value);
        }
    }
    request.headers().get(header::HOST).cloned()
}

/// Routes `request`, rewrites it for its endpoint and sends it; what it learns on the way goes
/// into `context`.
async fn proxy_request(
    shared: &Shared,
    connection: &ConnectionInfo,
    mut request: Request<Incoming>,
    context: &mut RequestContext,
) -> Result<Response<ProxyBody>, Refusal> {
    let settings = &shared.settings;
    if context.turn.smuggling {
        return Err(Refusal::Smuggling);
    }
    if request.method() == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    // Routing and the endpoint see the same path (see `path`).
    // `Some` when normalising changed the path (rare: most paths are already normal).
    let rewritten_path = match path::normalize(request.uri().path(), settings.allow_encoded_slashes)
    {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(path)) => Some(path),
        Err(error) => return Err(Refusal::BadPath(error)),
    };
    let host = request_host(&request);
    let host_text = match host.as_ref().map(HeaderValue::to_str) {
        Some(Ok(text)) => text,
        // HTTP/1.0 may omit Host; HTTP/1.1 must send it (RFC 9112 §3.2).
        None if request.version() != Version::HTTP_11 => "",
        None => return Err(Refusal::NoHost),
        Some(Err(_)) => return Err(Refusal::InvalidHost),
    };

    // The context holds the request's one reference to the backend; the response is counted in
    // its metrics. The route's filters run while the table is loaded: they may answer, rewrite
    // the target or set headers.
    let mut cookie_path: Option<std::sync::Arc<str>>;
    let (backend, rewritten_target, response_edit, policy, trust_forwarded, authorize, vhost) = {
        let router = shared.router.load();
        let trust_forwarded = router.trust_forwarded;
        let path = rewritten_path.as_deref().unwrap_or(request.uri().path());
        let Some((route, backend)) = router.route(host_text, path) else {
            return Err(Refusal::NoRoute);
        };
        if let Some(backend) = backend {
            context.backend = Some(backend.clone());
        }
        if let Some(series) = &route.series {
            context.series = series.counters.get().cloned();
        }
        let vhost = if route.filters.is_empty() {
            None
        } else {
            filters::upstream_vhost(route)
        };
        let decision = if route.filters.is_empty() {
            Decision::Forward(None, None)
        } else {
            // The filters read the target and method while they may set headers: copies
            // (reference counts; standard methods are inline), for routes with filters only.
            let uri = request.uri().clone();
            let method = request.method().clone();
            let https = connection.headers.proto == "https";
            let mut access_https = https;
            let mut client = connection.peer.ip();
            if trust_forwarded {
                let headers = request.headers();
                access_https = headers::forwarded_https(headers).unwrap_or(https);
                client = headers
                    .get(&headers::X_FORWARDED_FOR)
                    .and_then(headers::forwarded_client)
                    .unwrap_or(client);
            }
            let view = RequestView {
                https,
                access_https,
                host: host_text,
                path: rewritten_path.as_deref().unwrap_or(uri.path()),
                uri: &uri,
                method: &method,
                client,
            };
            filters::run(route, &view, request.headers_mut())
        };
        let (target, edit, authorize) = match decision {
            Decision::Answer(answer) => return Ok(*answer),
            Decision::Forward(target, edit) => (target, edit, None),
            Decision::Authorize(mut authorize) => {
                let (target, edit) = (authorize.target.take(), authorize.edit.take());
                (target, edit, Some(authorize))
            }
        };
        // A route without backends always answers; never forward nowhere.
        let Some(primary) = context.backend.as_ref() else {
            return Err(Refusal::NoRoute);
        };
        // A canary (only routes that have one look): the request's backend may change, and
        // with it the path its session cookie is for.
        cookie_path = route.cookie_path.clone();
        if let Some(canary) = &route.canary {
            if let Some(chosen) = router.canary(route, primary, request.headers()) {
                context.backend = Some(chosen.clone());
                context.canary = true;
                cookie_path = canary.cookie_path.clone();
            }
        }
        let Some(backend) = context.backend.as_ref() else {
            return Err(Refusal::NoRoute);
        };
        // `limit-connections`: the slot is held until the response has ended.
        if let Some(limiter) = &route.connection_limit {
            match limits::acquire(limiter, connection.peer.ip()) {
                Ok(slot) => context.slot = slot,
                Err(()) => return Ok(filters::limited(limiter.status, "connection")),
            }
        }
        (
            backend,
            target,
            edit,
            *route.policy,
            trust_forwarded,
            authorize,
            vhost,
        )
    };
    // Auth that waits (a hash the cache did not know, an auth service), off the table.
    if let Some(authorize) = authorize {
        let filters::Authorize {
            basic,
            external,
            strip_authorization,
            ..
        } = *authorize;
        if let Some(unverified) = basic {
            if let Err(answer) = unverified.verify().await {
                return Ok(*answer);
            }
        }
        if let Some(external) = external {
            let (mut parts, body) = request.into_parts();
            let original = filters::auth::Original {
                scheme: if connection.headers.proto == "https" {
                    "https"
                } else {
                    "http"
                },
                host: host_text,
                request_uri: parts.uri.path_and_query().map_or("/", |pq| pq.as_str()),
                method: &parts.method,
                client_ip: &connection.headers.client_ip,
            };
            let checked = filters::auth::external(
                &external,
                &original,
                &mut parts.headers,
                settings.upstream_response_timeout,
            )
            .await;
            if strip_authorization {
                parts.headers.remove(header::AUTHORIZATION);
            }
            request = Request::from_parts(parts, body);
            if let Err(answer) = checked {
                return Ok(*answer);
            }
        }
    }
    // Past filters and auth: what follows is the endpoint's time (`response_duration`).
    if settings.nginx_metrics.is_some() {
        context.upstream_started = Some(Instant::now());
    }
    // What the balancer needs of the request (a hash key's value, the session cookie), read
    // once, before the target is rewritten; nothing for the default balancing.
    let https = connection.headers.proto == "https";
    let prepared = backend.balancer.prepare(&RequestKeys {
        headers: request.headers(),
        uri: request.uri(),
        path: rewritten_path.as_deref().unwrap_or(request.uri().path()),
        host: host_text,
        client: connection.peer.ip(),
        https,
    });
    let http2_upstream = backend.transport.is_http2();
    if http2_upstream && request.version() < Version::HTTP_2 && grpc::is_grpc(request.headers()) {
        return Err(Refusal::GrpcOverHttp1);
    }
    if backend.endpoints.is_empty() {
        return Err(Refusal::NoEndpoints(backend.unavailable.clone()));
    }
    // The route's limit (`proxy-body-size`) under the proxy's ceiling (`--max-body-bytes`).
    let limit = match (policy.max_body_bytes, settings.max_body_bytes) {
        (Some(route), Some(ceiling)) => route.min(ceiling),
        (Some(limit), None) | (None, Some(limit)) => limit,
        (None, None) => u64::MAX,
    };
    if let Some(length) = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if length > limit {
            return Err(Refusal::TooLarge);
        }
    }
    // Only allowed protocols, and never after a body: the head guard, which follows the
    // framing, steps aside only after a `101` to a request without one.
    let upgrade = request.version() == Version::HTTP_11
        && headers::is_upgrade_request(request.headers())
        && headers::upgrade_allowed(request.headers(), &settings.upgrades)
        && request.body().is_end_stream();
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let http2 = request.version() == Version::HTTP_2;
    let (mut parts, body) = request.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    if !settings.allow_underscores_in_headers {
        headers::remove_underscore_headers(&mut parts.headers);
    }
    if http2 {
        headers::join_cookies(&mut parts.headers);
    }
    let trusted = trust_forwarded.then(|| headers::TrustedForwarded::read(&parts.headers));
    headers::set_forwarding_headers(
        &mut parts.headers,
        &connection.headers,
        host.as_ref(),
        &shared.request_ids,
    );
    if let Some(trusted) = trusted {
        trusted.apply(&mut parts.headers);
    }
    if let Some(vhost) = &vhost {
        parts.headers.insert(header::HOST, vhost.clone());
    }
    // Endpoints get origin-form (`/path?query`) with the path routing used, whatever form the
    // client used.
    parts.uri = match (rewritten_path, parts.uri.path_and_query()) {
        (None, Some(path_and_query)) => Uri::from(path_and_query.clone()),
        (None, None) => Uri::from_static("/"),
        (Some(path), original) => {
            let target = match original.and_then(PathAndQuery::query) {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            match PathAndQuery::try_from(target) {
                Ok(path_and_query) => Uri::from(path_and_query),
                Err(_) => return Err(Refusal::InvalidPath),
            }
        }
    };
    if let Some(target) = rewritten_target {
        match PathAndQuery::try_from(target) {
            Ok(path_and_query) => parts.uri = Uri::from(path_and_query),
            Err(_) => return Err(Refusal::InvalidPath),
        }
    }
    parts.version = Version::HTTP_11;
    // gRPC calls end at their deadline, wherever they are (connecting, waiting, streaming).
    let deadline = http2_upstream
        .then(|| grpc::grpc_timeout(&parts.headers))
        .flatten()
        .and_then(|timeout| tokio::time::Instant::now().checked_add(timeout));
    if http2_upstream {
        grpc::http2_request(
            &mut parts,
            backend.transport.scheme(),
            vhost.as_ref().or(host.as_ref()),
        );
    }
    let mut upstream_request = Request::from_parts(
        parts,
        UpstreamBody::new(body, limit, settings.client_body_timeout),
    );

    let timeouts = Timeouts {
        connect: policy
            .connect_timeout
            .unwrap_or(settings.upstream_connect_timeout),
        send: policy.send_timeout,
        read: policy
            .read_timeout
            .unwrap_or(settings.upstream_response_timeout),
        idle: settings.upstream_idle_timeout,
    };
    let progress = upstream_request.body_mut().track();
    // nginx's `proxy_next_upstream_tries`, each endpoint at most once (0: every endpoint).
    let endpoints = backend.endpoints.len();
    let tries = match policy.next_upstream_tries {
        0 => endpoints,
        n => endpoints.min(n as usize),
    }
    .max(1);
    let next_upstream = policy.next_upstream;
    // Kept only where a try that reached an endpoint may be followed by another.
    let replay = (tries > 1 && next_upstream != NextUpstream::OFF)
        .then(|| Replay::of(&upstream_request, next_upstream, client_upgrade.is_some()))
        .flatten();
    let first_try = tokio::time::Instant::now();
    let mut failed: Option<Arc<Endpoint>> = None;
    let mut last_refusal = Refusal::Unreachable(String::new());
    for try_index in 0..tries {
        // Asked when this try has failed: the time budget counts until then.
        let may_try_again = || {
            try_index + 1 < tries
                && policy
                    .next_upstream_timeout
                    .is_none_or(|budget| first_try.elapsed() < budget)
        };
        let Some((endpoint, session)) = backend.choose(&prepared, failed.as_ref()) else {
            break;
        };
        let endpoint = endpoint.clone();
        if failed.is_some() {
            backend.metrics.retry();
        }
        let outstanding = endpoint.start_request();
        let sent = attempt::send(
            &endpoint,
            upstream_request,
            timeouts,
            progress.as_deref(),
            &backend.metrics,
        );
        let sent = match deadline {
            None => sent.await,
            // Boxed: only calls with a deadline carry the timer.
            Some(at) => Box::pin(tokio::time::timeout_at(at, sent))
                .await
                .unwrap_or(Sent::Failed(Refusal::DeadlineExceeded, None)),
        };
        match sent {
            // Never sent: any method may go to the next endpoint.
            Sent::Unsent(unsent, refusal, condition) => {
                if !(next_upstream.has(condition) && may_try_again()) {
                    return Err(refusal);
                }
                upstream_request = unsent;
                last_refusal = refusal;
                failed = Some(endpoint);
            }
            Sent::Failed(refusal, condition) => {
                let again = replay
                    .as_ref()
                    .filter(|_| condition.is_some_and(|c| next_upstream.has(c)) && may_try_again());
                let Some(replay) = again else {
                    context.endpoint = Some(endpoint);
                    return Err(refusal);
                };
                upstream_request = replay.request();
                last_refusal = refusal;
                failed = Some(endpoint);
            }
            Sent::Answered(response, sender) => {
                let again = replay
                    .as_ref()
                    .filter(|_| next_upstream.on_status(response.status()) && may_try_again());
                if let Some(replay) = again {
                    // The answer is dropped unread: its connection closes, not pooled.
                    upstream_request = replay.request();
                    failed = Some(endpoint);
                    continue;
                }
                context.endpoint = Some(endpoint);
                let mut relayed = relay_response(
                    response,
                    sender,
                    outstanding,
                    client_upgrade,
                    settings,
                    deadline,
                    timeouts.read,
                );
                if let (Ok(response), Some(edit)) = (relayed.as_mut(), response_edit) {
                    edit.apply(response);
                }
                // A new session: the endpoint's cookie goes with the answer.
                let cookie = session.and_then(|session| {
                    backend
                        .balancer
                        .set_cookie(&session, cookie_path.as_deref(), https, &prepared)
                });
                if let (Ok(response), Some(cookie)) = (relayed.as_mut(), cookie) {
                    response.headers_mut().append(header::SET_COOKIE, cookie);
                }
                return relayed;
            }
        }
    }
    Err(last_refusal)
}

/// The endpoint's response on its way to the client: hop-by-hop headers out, the body streamed
/// (its connection pooled again at the end), or for a `101 Switching Protocols` answer to an
/// upgrade request, both upgraded connections spliced together. A `101` to a request we did
/// not upgrade, or naming a protocol that is not allowed, is the endpoint's error (502): relayed,
/// it would turn the connection into a tunnel no routing rule sees.
fn relay_response(
    mut response: Response<Incoming>,
    sender: Sender,
    outstanding: Outstanding,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    settings: &ProxySettings,
    deadline: Option<tokio::time::Instant>,
    read_timeout: std::time::Duration,
) -> Result<Response<ProxyBody>, Refusal> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade
            .filter(|_| headers::upgrade_allowed(response.headers(), &settings.upgrades))
        else {
            return Err(Refusal::UnaskedSwitch);
        };
        {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                // The tunnel counts as outstanding on its endpoint while it is open.
                let _outstanding = outstanding;
                if let (Ok(client), Ok(upstream)) = (client_upgrade.await, upstream_upgrade.await) {
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(upstream),
                    )
                    .await;
                }
            });
            let (mut parts, _) = response.into_parts();
            headers::remove_hop_by_hop(&mut parts.headers, true);
            return Ok(Response::from_parts(parts, ProxyBody::empty()));
        }
    }
    let (mut parts, body) = response.into_parts();
    headers::remove_hop_by_hop(&mut parts.headers, false);
    Ok(Response::from_parts(
        parts,
        ProxyBody::upstream(
            UpstreamResponseBody::new(body, Some(sender), outstanding)
                .with_deadline(deadline)
                .with_read_timeout(read_timeout),
        ),
    ))
}
