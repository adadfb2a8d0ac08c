//! Taking over from ingress-nginx without editing anything: `--controller-name` serves the
//! `nginx` class as it stands (by `ingressClassName` and by the legacy annotation), and
//! `--nginx-configmap` turns ingress-nginx's global ConfigMap into the annotation defaults
//! (`ssl-redirect`, `hsts*`, `use-forwarded-headers`, `whitelist-source-range`), live.

use anyhow::{anyhow, ensure, Result};
use http::StatusCode;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use xdp_ingress_tests::{
    ensure_eq,
    proxy::{
        backends::HttpBackend,
        clients::{
            collect, empty, get, pooled, request, send_h1, tls_connect, Reply, Tls,
            EXCHANGE_TIMEOUT,
        },
        ensure_served, eventually,
        manifests::{
            ingress_class, ingress_with, our_class, rule, tls_secret, with_annotation, with_tls,
            Manifests,
        },
        services_for, TestProxy,
    },
};

use super::{annotated, location};

/// ingress-nginx's controller name.
const NGINX_CONTROLLER: &str = "k8s.io/ingress-nginx";

/// An Ingress of the `nginx` class for `nginx.example` (by `ingressClassName`) and one for
/// `legacy.example` naming it in the old annotation: served only when the agent is also
/// `k8s.io/ingress-nginx`; our own class is served either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_class_is_served_only_with_its_controller_name() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let manifests = || -> Result<Manifests> {
        let manifests = Manifests::new()?;
        manifests.write(
            "classes.yaml",
            &[our_class(), ingress_class("nginx", NGINX_CONTROLLER)],
        )?;
        manifests.write("services.yaml", &services_for(&[&web]))?;
        let by_name = ingress_with(
            "by-name",
            Some("nginx"),
            &[rule(Some("nginx.example"), &[("/", "Prefix", "web")])],
            |_| {},
        );
        let legacy = ingress_with(
            "legacy",
            None,
            &[rule(Some("legacy.example"), &[("/", "Prefix", "web")])],
            |i| with_annotation(i, "kubernetes.io/ingress.class", "nginx"),
        );
        let ours = annotated(
            "ours",
            &[rule(Some("ours.example"), &[("/", "Prefix", "web")])],
            &[],
        );
        manifests.write("ingresses.yaml", &[by_name, legacy, ours])?;
        Ok(manifests)
    };
    let client = pooled();
    let without = TestProxy::start(manifests()?, &[])?;
    ensure_served(
        &get(&client, without.http, "ours.example", "/").await?,
        "web",
        "ours",
    )?;
    for host in ["nginx.example", "legacy.example"] {
        let reply = get(&client, without.http, host, "/").await?;
        ensure_eq!(
            reply.status,
            StatusCode::NOT_FOUND,
            "{host} without the flag"
        );
    }
    drop(without);
    let with = TestProxy::start(
        manifests()?,
        &[
            "--controller-name",
            "xdp-ingress.dev/controller",
            "--controller-name",
            NGINX_CONTROLLER,
        ],
    )?;
    for host in ["ours.example", "nginx.example", "legacy.example"] {
        ensure_served(&get(&client, with.http, host, "/").await?, "web", host)?;
    }
    Ok(())
}

/// The ConfigMap as ingress-nginx's Helm chart names it.
const CONFIG_MAP: &str = "ingress-nginx/ingress-nginx-controller";

fn config_map(data: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "ingress-nginx-controller", "namespace": "ingress-nginx"},
        "data": data,
    })
}

/// One HTTPS/1.1 request for `host` with `headers` (SNI = `host`).
async fn https_with(
    proxy: std::net::SocketAddr,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    let exchange = async {
        let (stream, _) = tls_connect(proxy, host, Tls::Any, &[b"http/1.1"]).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut builder = request(host, "/x");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        collect(sender.send_request(builder.body(empty())?).await?).await
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no complete answer in {EXCHANGE_TIMEOUT:?}"))?
}

/// One plain HTTP request for `host` with `headers`.
async fn http_with(
    proxy: std::net::SocketAddr,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    let mut builder = request(host, "/x");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send_h1(proxy, builder.body(empty())?).await
}

fn hsts(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get(http::header::STRICT_TRANSPORT_SECURITY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `--nginx-configmap`: with `ssl-redirect: "false"`, a host with a certificate serves plain
/// HTTP; `hsts-*` shape the `Strict-Transport-Security` of its HTTPS answers;
/// `use-forwarded-headers: "true"` makes the first `X-Forwarded-For` address the client (for
/// `whitelist-source-range` and `X-Real-IP`) and passes `X-Forwarded-Proto` through;
/// `whitelist-source-range` refuses other clients of every Ingress without its own. A bad
/// value and unknown keys are logged, naming the ConfigMap. Rewriting the ConfigMap applies
/// live: back to ingress-nginx's defaults (308 to HTTPS, HSTS of a year, no trust, no range),
/// then `hsts: "false"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_configmap_sets_the_defaults_and_applies_live() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let cert = rcgen::generate_simple_self_signed(vec!["tls.example".to_string()])?;
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut objects = services_for(&[&web]);
    objects.push(tls_secret(
        "cert",
        &cert.cert.pem(),
        &cert.key_pair.serialize_pem(),
    ));
    manifests.write("services.yaml", &objects)?;
    let mut tls = annotated(
        "tls",
        &[rule(Some("tls.example"), &[("/", "Prefix", "web")])],
        &[],
    );
    with_tls(&mut tls, &["tls.example"], "cert");
    let open = annotated(
        "open",
        &[rule(Some("open.example"), &[("/", "Prefix", "web")])],
        &[("whitelist-source-range", "127.0.0.0/8")],
    );
    let forced = annotated(
        "forced",
        &[rule(Some("forced.example"), &[("/", "Prefix", "web")])],
        &[("force-ssl-redirect", "true")],
    );
    manifests.write("ingresses.yaml", &[tls, open, forced])?;
    manifests.write(
        "nginx.yaml",
        &[config_map(json!({
            "ssl-redirect": "false",
            "hsts-max-age": "600",
            "hsts-preload": "true",
            "use-forwarded-headers": "true",
            "whitelist-source-range": "192.0.2.0/24",
            "worker-processes": "4",
            "http-redirect-code": "303",
        }))],
    )?;
    let proxy = TestProxy::start(manifests, &["--nginx-configmap", CONFIG_MAP])?;
    proxy
        .wait_for_log(&[
            "ConfigMap ingress-nginx/ingress-nginx-controller",
            "http-redirect-code",
            "\"303\" is not one of 301, 302, 307, 308",
        ])
        .await?;
    proxy
        .wait_for_log(&[
            "ConfigMap ingress-nginx/ingress-nginx-controller",
            "worker-processes",
        ])
        .await?;

    let trusted = [("x-forwarded-for", "192.0.2.9, 198.51.100.1")];
    // ssl-redirect false: plain HTTP is served; the client is the first forwarded address.
    let reply = http_with(
        proxy.http,
        "tls.example",
        &[trusted[0], ("x-forwarded-proto", "https")],
    )
    .await?;
    ensure_served(&reply, "web", "tls.example over HTTP")?;
    ensure_eq!(
        reply.seen_header("x-real-ip")?,
        vec!["192.0.2.9".to_string()]
    );
    ensure_eq!(
        reply.seen_header("x-forwarded-proto")?,
        vec!["https".to_string()],
        "trusted"
    );
    ensure_eq!(
        hsts(&reply),
        None,
        "no HSTS over plain HTTP, whatever X-Forwarded-Proto says"
    );
    // The redirect to HTTPS follows the trusted X-Forwarded-Proto.
    let reply = http_with(
        proxy.http,
        "forced.example",
        &[trusted[0], ("x-forwarded-proto", "https")],
    )
    .await?;
    ensure_served(&reply, "web", "forced.example, HTTPS at the load balancer")?;
    let reply = http_with(proxy.http, "forced.example", &trusted).await?;
    ensure_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    // HTTPS answers carry the ConfigMap's HSTS.
    let reply = https_with(proxy.https, "tls.example", &trusted).await?;
    ensure_served(&reply, "web", "tls.example over HTTPS")?;
    ensure_eq!(
        hsts(&reply).as_deref(),
        Some("max-age=600; includeSubDomains; preload")
    );
    // The ConfigMap's range: a client outside it (unforwarded, 127.0.0.1; or forwarded from
    // elsewhere) is refused; an Ingress's own range wins.
    for headers in [&[][..], &[("x-forwarded-for", "198.51.100.1")][..]] {
        let reply = http_with(proxy.http, "tls.example", headers).await?;
        ensure_eq!(reply.status, StatusCode::FORBIDDEN, "{headers:?}");
    }
    ensure_served(
        &http_with(proxy.http, "open.example", &[]).await?,
        "web",
        "open.example, its own range",
    )?;

    // Back to ingress-nginx's defaults, live.
    proxy
        .manifests
        .write("nginx.yaml", &[config_map(json!({}))])?;
    let client = pooled();
    let redirect = eventually("the HTTPS redirect back", || async {
        let reply = get(&client, proxy.http, "tls.example", "/x").await?;
        ensure!(
            reply.status == StatusCode::PERMANENT_REDIRECT,
            "{}",
            reply.status
        );
        Ok(reply)
    })
    .await?;
    ensure_eq!(
        location(&redirect).as_deref(),
        Some("https://tls.example/x")
    );
    let reply = https_with(proxy.https, "tls.example", &trusted).await?;
    ensure_served(&reply, "web", "any client, forwarded headers not trusted")?;
    ensure_eq!(
        reply.seen_header("x-real-ip")?,
        vec!["127.0.0.1".to_string()]
    );
    ensure_eq!(
        hsts(&reply).as_deref(),
        Some("max-age=31536000; includeSubDomains"),
        "ingress-nginx's default HSTS"
    );

    proxy
        .manifests
        .write("nginx.yaml", &[config_map(json!({"hsts": "false"}))])?;
    eventually("HSTS off", || async {
        let reply = https_with(proxy.https, "tls.example", &[]).await?;
        ensure_served(&reply, "web", "tls.example")?;
        ensure!(hsts(&reply).is_none(), "{:?}", hsts(&reply));
        Ok(())
    })
    .await?;
    Ok(())
}
