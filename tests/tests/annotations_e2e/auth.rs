//! `auth-type: basic` (htpasswd Secrets in every format htpasswd writes, `auth-map`, the
//! realm, a missing Secret, a changed Secret), `auth-url` against a real small auth service
//! (what it is sent, 2xx / 401 / 403 / other, `auth-response-headers`, `auth-signin`,
//! `auth-method`), `upstream-vhost` and `service-upstream`, through the proxy.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::{ensure, Context as _, Result};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{net::TcpListener, task::JoinHandle};
use xdp_ingress_tests::{
    ensure_eq,
    proxy::{
        backends::HttpBackend,
        clients::{collect, get, pooled, Pooled, Reply, EXCHANGE_TIMEOUT},
        ensure_served, eventually,
        manifests::{endpoint_slice, rule},
    },
};

use super::{annotated, location, start};

/// An Opaque Secret in the default namespace.
fn opaque_secret(name: &str, data: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "Opaque",
        "stringData": data,
    })
}

/// GET with `Authorization: Basic user:password` (or none) on the pooled client.
async fn get_as(
    client: &Pooled,
    proxy: SocketAddr,
    host: &str,
    credentials: Option<(&str, &str)>,
    extra: &[(&str, &str)],
) -> Result<Reply> {
    let mut request = Request::get(format!("http://{proxy}/path?q=1")).header(header::HOST, host);
    if let Some((user, password)) = credentials {
        let token = STANDARD.encode(format!("{user}:{password}"));
        request = request.header(header::AUTHORIZATION, format!("Basic {token}"));
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        client.request(request.body(Full::default())?),
    )
    .await
    .context("no answer")??;
    collect(response).await
}

/// Every format `htpasswd` (and `openssl passwd`) writes, one user each.
const HTPASSWD: &str = "# staff\n\
apr1:$apr1$xdpsalt1$TfoCBxHSD3h0592WRbsd31\n\
sha512:$6$xdpsalt6$eqrJD93v/Wkn07FijliyX0RGXJEVVIVsstpKHkjLRpEfnl06qnOUzPyGEIhiwBW6enOwJloCfHiwQ6wor1mxO/\n\
sha256:$5$xdpsalt5$pwCEFp5uWc88NveXpSkQpcmZ2IyILPSDsDYtTUYoAW8\n\
bcrypt:$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW\n\
sha1:{SHA}lwP+QnDZZeQ+bmQbA4P37mDtFVo=\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_checks_htpasswd_users_and_follows_the_secret() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let host = |name: &'static str| [rule(Some(name), &[("/", "Prefix", "web")])];
    let ingresses = [
        annotated(
            "staff",
            &host("staff.example"),
            &[
                ("auth-type", "basic"),
                ("auth-secret", "staff-users"),
                ("auth-realm", "Staff only"),
            ],
        ),
        annotated(
            "mapped",
            &host("mapped.example"),
            &[
                ("auth-type", "basic"),
                ("auth-secret", "default/mapped-users"),
                ("auth-secret-type", "auth-map"),
            ],
        ),
        annotated(
            "missing",
            &host("missing.example"),
            &[("auth-type", "basic"), ("auth-secret", "nobody")],
        ),
        annotated(
            "digest",
            &host("digest.example"),
            &[("auth-type", "digest"), ("auth-secret", "staff-users")],
        ),
        annotated("open", &host("open.example"), &[]),
    ];
    let secrets = |htpasswd: &str| {
        vec![
            opaque_secret("staff-users", &[("auth", htpasswd)]),
            opaque_secret(
                "mapped-users",
                &[("carol", "$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00")],
            ),
        ]
    };
    let proxy = start(&[&web], &secrets(HTPASSWD), &ingresses)?;
    let client = pooled();
    let p = proxy.http;

    ensure_served(&get(&client, p, "open.example", "/").await?, "web", "open")?;
    for credentials in [None, Some(("apr1", "wrong")), Some(("nobody", "apr1-pass"))] {
        let reply = get_as(&client, p, "staff.example", credentials, &[]).await?;
        ensure_eq!(reply.status, StatusCode::UNAUTHORIZED, "{credentials:?}");
        ensure_eq!(
            reply
                .headers
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.as_bytes()),
            Some(&b"Basic realm=\"Staff only\""[..]),
            "{credentials:?}"
        );
    }
    let users = [
        ("apr1", "apr1-pass"),
        ("sha512", "sha512-pass"),
        ("sha256", "sha256-pass"),
        ("bcrypt", "U*U"),
        ("sha1", "sha1-pass"),
    ];
    // Twice each on the same keep-alive connection: the second is the cache's.
    for round in 0..2 {
        for user in users {
            let reply = get_as(&client, p, "staff.example", Some(user), &[]).await?;
            ensure_served(&reply, "web", &format!("{user:?} round {round}"))?;
            ensure_eq!(
                reply.seen_header("authorization")?,
                Vec::<String>::new(),
                "the backend does not get the credentials"
            );
        }
    }
    let mapped = get_as(
        &client,
        p,
        "mapped.example",
        Some(("carol", "password")),
        &[],
    )
    .await?;
    ensure_served(&mapped, "web", "auth-map")?;
    let reply = get_as(&client, p, "mapped.example", None, &[]).await?;
    ensure_eq!(reply.status, StatusCode::UNAUTHORIZED);
    ensure_eq!(
        reply
            .headers
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
        Some(&b"Basic realm=\"\""[..]),
        "no realm: empty, as nginx writes it"
    );
    for (name, why) in [("missing.example", "nobody"), ("digest.example", "digest")] {
        let reply = get_as(&client, p, name, Some(("apr1", "apr1-pass")), &[]).await?;
        ensure_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
        ensure!(reply.text().contains(why), "{name}: {:?}", reply.text());
    }

    // The Secret changes: the old password stops working, the new user works, no restart.
    let mut documents = xdp_ingress_tests::proxy::services_for(&[&web]);
    documents.push(opaque_secret(
        "staff-users",
        &[("auth", "dave:{SHA}lwP+QnDZZeQ+bmQbA4P37mDtFVo=\n")],
    ));
    documents.extend(secrets("").into_iter().skip(1));
    proxy.manifests.write("services.yaml", &documents)?;
    eventually("the new Secret", || async {
        let reply = get_as(
            &client,
            p,
            "staff.example",
            Some(("dave", "sha1-pass")),
            &[],
        )
        .await?;
        ensure_served(&reply, "web", "dave")
    })
    .await?;
    let old = get_as(
        &client,
        p,
        "staff.example",
        Some(("apr1", "apr1-pass")),
        &[],
    )
    .await?;
    ensure_eq!(
        old.status,
        StatusCode::UNAUTHORIZED,
        "a removed user, even cached"
    );
    Ok(())
}

/// A small auth service: `x-token: good` → 200 with `X-Auth-User: alice`, `forbidden` → 403,
/// `broken` → 502, anything else → 401 with a Bearer challenge. It keeps what it was sent.
struct AuthService {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(Method, String, HeaderMap)>>>,
    accept: JoinHandle<()>,
}

impl AuthService {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen: Arc<Mutex<Vec<(Method, String, HeaderMap)>>> = Arc::default();
        let kept = seen.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let kept = kept.clone();
                        async move {
                            let token = request
                                .headers()
                                .get("x-token")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            if let Ok(mut kept) = kept.lock() {
                                kept.push((
                                    request.method().clone(),
                                    request.uri().to_string(),
                                    request.headers().clone(),
                                ));
                            }
                            let mut response = Response::new(Empty::<Bytes>::new());
                            match token.as_str() {
                                "good" => {
                                    response
                                        .headers_mut()
                                        .insert("x-auth-user", "alice".parse().unwrap());
                                }
                                "forbidden" => *response.status_mut() = StatusCode::FORBIDDEN,
                                "broken" => *response.status_mut() = StatusCode::BAD_GATEWAY,
                                _ => {
                                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                                    response.headers_mut().insert(
                                        header::WWW_AUTHENTICATE,
                                        "Bearer realm=\"apps\"".parse().unwrap(),
                                    );
                                }
                            }
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, seen, accept })
    }

    fn last(&self) -> Option<(Method, String, HeaderMap)> {
        self.seen.lock().ok().and_then(|s| s.last().cloned())
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_auth_asks_the_auth_service_for_every_request() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let auth = AuthService::start().await?;
    let url = format!("http://{}/check?app=web", auth.addr);
    let host = |name: &'static str| [rule(Some(name), &[("/", "Prefix", "web")])];
    let proxy = start(
        &[&web],
        &[opaque_secret("staff-users", &[("auth", HTPASSWD)])],
        &[
            annotated(
                "ext",
                &host("ext.example"),
                &[("auth-url", &url), ("auth-response-headers", "X-Auth-User")],
            ),
            annotated(
                "both",
                &host("both.example"),
                &[
                    ("auth-type", "basic"),
                    ("auth-secret", "staff-users"),
                    ("auth-url", &url),
                ],
            ),
            annotated(
                "signin",
                &host("signin.example"),
                &[
                    ("auth-url", &url),
                    ("auth-method", "POST"),
                    ("auth-signin", "https://login.example/start"),
                ],
            ),
            annotated(
                "https-auth",
                &host("https-auth.example"),
                &[("auth-url", "https://auth.example/check")],
            ),
        ],
    )?;
    let client = pooled();
    let p = proxy.http;
    let token = |t: &'static str| {
        [
            ("x-token", t),
            ("cookie", "session=s1"),
            ("x-auth-user", "mallory"),
        ]
    };

    let reply = get_as(&client, p, "ext.example", None, &token("good")).await?;
    ensure_served(&reply, "web", "good token")?;
    ensure_eq!(
        reply.seen_header("x-auth-user")?,
        vec!["alice".to_string()],
        "from the auth service, not the client"
    );
    // Basic auth and auth-url on one route: the auth service gets the client's Authorization
    // (as nginx's auth_request sub-request does), the backend does not.
    let reply = get_as(
        &client,
        p,
        "both.example",
        Some(("apr1", "apr1-pass")),
        &token("good"),
    )
    .await?;
    ensure_served(&reply, "web", "basic and external auth")?;
    let (_, _, sent) = auth.last().context("the auth service was asked")?;
    ensure!(
        sent.get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes().starts_with(b"Basic ")),
        "the auth service did not get the client's Authorization: {sent:?}"
    );
    ensure_eq!(
        reply.seen_header("authorization")?,
        Vec::<String>::new(),
        "the backend must not get Authorization"
    );
    let refused = get_as(&client, p, "both.example", None, &token("good")).await?;
    ensure_eq!(refused.status, StatusCode::UNAUTHORIZED, "no credentials");

    let reply = get_as(&client, p, "ext.example", None, &token("good")).await?;
    ensure_served(&reply, "web", "good token again")?;
    let (method, uri, sent) = auth.last().context("the auth service was asked")?;
    ensure_eq!(method, Method::GET);
    ensure_eq!(uri, "/check?app=web");
    let sent_header = |name: &str| {
        sent.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    ensure_eq!(
        sent_header("x-original-url").as_deref(),
        Some("http://ext.example/path?q=1")
    );
    ensure_eq!(sent_header("x-original-method").as_deref(), Some("GET"));
    ensure_eq!(
        sent_header("x-sent-from").as_deref(),
        Some("nginx-ingress-controller")
    );
    ensure_eq!(sent_header("x-real-ip").as_deref(), Some("127.0.0.1"));
    ensure_eq!(sent_header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    ensure_eq!(
        sent_header("x-auth-request-redirect").as_deref(),
        Some("/path?q=1")
    );
    ensure_eq!(sent_header("cookie").as_deref(), Some("session=s1"));
    ensure_eq!(sent_header("host"), Some(auth.addr.to_string()));
    ensure_eq!(sent_header("x-original-uri"), None, "only with auth-method");

    // Without auth-response-headers' header in the answer, a client's own is not passed on.
    let served = web.seen().len();
    let refused = get_as(&client, p, "ext.example", None, &token("nope")).await?;
    ensure_eq!(refused.status, StatusCode::UNAUTHORIZED);
    ensure_eq!(
        refused
            .headers
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.as_bytes()),
        Some(&b"Bearer realm=\"apps\""[..])
    );
    let forbidden = get_as(&client, p, "ext.example", None, &token("forbidden")).await?;
    ensure_eq!(forbidden.status, StatusCode::FORBIDDEN);
    let broken = get_as(&client, p, "ext.example", None, &token("broken")).await?;
    ensure_eq!(broken.status, StatusCode::INTERNAL_SERVER_ERROR);
    ensure_eq!(
        web.seen().len(),
        served,
        "refused requests reach no backend"
    );

    // auth-signin: the 401 becomes a 302 with rd=<the original URL>; auth-method POST.
    let redirected = get_as(&client, p, "signin.example", None, &token("nope")).await?;
    ensure_eq!(redirected.status, StatusCode::FOUND);
    ensure_eq!(
        location(&redirected).as_deref(),
        Some("https://login.example/start?rd=http://signin.example%2Fpath%3Fq%3D1")
    );
    let (method, _, sent) = auth.last().context("asked")?;
    ensure_eq!(method, Method::POST);
    ensure_eq!(
        sent.get("x-original-uri").and_then(|v| v.to_str().ok()),
        Some("/path?q=1")
    );
    ensure_served(
        &get_as(&client, p, "signin.example", None, &token("good")).await?,
        "web",
        "signin, good token",
    )?;
    let https = get_as(&client, p, "https-auth.example", None, &token("good")).await?;
    ensure_eq!(
        https.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "never unprotected"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_vhost_and_service_upstream() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let decoy = HttpBackend::start("decoy").await?;
    // A Service whose ClusterIP and port are `web`'s address, and whose endpoint is `decoy`.
    let cluster_ip_service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "clustered", "namespace": "default"},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": web.addr.ip().to_string(),
            "ports": [{"name": "http", "port": web.addr.port(), "protocol": "TCP"}],
        },
    });
    let mut slice = endpoint_slice("clustered", &[(decoy.addr, true)]);
    slice["metadata"]["name"] = Value::from("clustered-decoy");
    let clustered_rule = |name: &'static str| {
        let mut value = annotated(
            name,
            &[rule(Some("x.example"), &[("/", "Prefix", "web")])],
            &[],
        );
        value["spec"]["rules"][0]["host"] = Value::from(format!("{name}.example"));
        value["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] =
            json!({"name": "clustered", "port": {"number": web.addr.port()}});
        value
    };
    let mut via_cluster_ip = clustered_rule("cluster-ip");
    via_cluster_ip["metadata"]["annotations"][format!("{}service-upstream", super::PREFIX)] =
        Value::from("true");
    let via_endpoints = clustered_rule("endpoints");
    let proxy = start(
        &[&web],
        &[cluster_ip_service, slice],
        &[
            annotated(
                "vhost",
                &[rule(Some("vhost.example"), &[("/", "Prefix", "web")])],
                &[("upstream-vhost", "internal.example")],
            ),
            via_cluster_ip,
            via_endpoints,
        ],
    )?;
    let client = pooled();
    let reply = get(&client, proxy.http, "vhost.example", "/").await?;
    ensure_served(&reply, "web", "vhost")?;
    ensure_eq!(
        reply.seen_header("host")?,
        vec!["internal.example".to_string()]
    );
    ensure_eq!(
        reply.seen_header("x-forwarded-host")?,
        vec!["vhost.example".to_string()],
        "the client's host"
    );
    ensure_served(
        &get(&client, proxy.http, "cluster-ip.example", "/").await?,
        "web",
        "service-upstream: the ClusterIP",
    )?;
    ensure_served(
        &get(&client, proxy.http, "endpoints.example", "/").await?,
        "decoy",
        "without service-upstream: the endpoints",
    )?;
    Ok(())
}
