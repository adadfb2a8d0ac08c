//! `permanent-redirect` (+`-code`), `temporal-redirect` (+`-code`), `app-root`, `ssl-redirect`
//! (on by default for hosts with a certificate), `force-ssl-redirect`,
//! `preserve-trailing-slash` and `from-to-www-redirect`.

use anyhow::{ensure, Result};
use http::StatusCode;
use xdp_ingress_tests::{
    ensure_eq,
    proxy::{
        backends::HttpBackend,
        clients::{empty, get, https_get, pooled, request, send_h1},
        ensure_served,
        manifests::{rule, tls_secret, with_tls},
    },
};

use super::{annotated, location, start};

/// Fixed redirects: 301 by default, the code annotation's value otherwise (outside 300-308:
/// the default, as ingress-nginx), temporal (302) winning over permanent. The `Location` is the
/// annotation's value as written, whatever the request path; the backend sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_and_temporal_redirects_with_their_codes() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let on = |host: &'static str| [rule(Some(host), &[("/", "Prefix", "web")])];
    let proxy = start(
        &[&web],
        &[],
        &[
            annotated(
                "perm",
                &on("perm.example"),
                &[("permanent-redirect", "https://example.org/new")],
            ),
            annotated(
                "perm308",
                &on("perm308.example"),
                &[
                    ("permanent-redirect", "https://example.org/p"),
                    ("permanent-redirect-code", "308"),
                ],
            ),
            annotated(
                "perm-bad-code",
                &on("permbad.example"),
                &[
                    ("permanent-redirect", "https://example.org/p"),
                    ("permanent-redirect-code", "200"),
                ],
            ),
            annotated(
                "temp",
                &on("temp.example"),
                &[
                    ("permanent-redirect", "https://example.org/p"),
                    ("temporal-redirect", "http://example.org/t?x=1"),
                ],
            ),
            annotated(
                "temp307",
                &on("temp307.example"),
                &[
                    ("temporal-redirect", "https://example.org/t"),
                    ("temporal-redirect-code", "307"),
                ],
            ),
        ],
    )?;
    let client = pooled();
    for (host, status, target) in [
        ("perm.example", 301, "https://example.org/new"),
        ("perm308.example", 308, "https://example.org/p"),
        ("permbad.example", 301, "https://example.org/p"),
        ("temp.example", 302, "http://example.org/t?x=1"),
        ("temp307.example", 307, "https://example.org/t"),
    ] {
        let reply = get(&client, proxy.http, host, "/any/path?q=1").await?;
        ensure_eq!(reply.status.as_u16(), status, "{host}: {}", reply.text());
        ensure_eq!(location(&reply).as_deref(), Some(target), "{host}");
    }
    ensure!(
        web.seen().is_empty(),
        "redirected requests reach no backend: {:?}",
        web.seen()
    );
    Ok(())
}

/// `app-root`: `/` (whatever the query) answers 302 to `<scheme>://<Host as sent><app-root>`;
/// every other path is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_root_redirects_the_root_only() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let proxy = start(
        &[&web],
        &[],
        &[annotated(
            "app",
            &[rule(Some("app.example"), &[("/", "Prefix", "web")])],
            &[("app-root", "/app1")],
        )],
    )?;
    let client = pooled();
    for host in ["app.example", "app.example:8080"] {
        for path in ["/", "/?x=1"] {
            let reply = get(&client, proxy.http, host, path).await?;
            ensure_eq!(reply.status, StatusCode::FOUND, "{host}{path}");
            let expected = format!("http://{host}/app1");
            ensure_eq!(location(&reply), Some(expected), "{host}{path}");
        }
    }
    for path in ["/app1", "/other/"] {
        let reply = get(&client, proxy.http, "app.example", path).await?;
        ensure_served(&reply, "web", path)?;
    }
    Ok(())
}

/// A host with a certificate: plain HTTP answers 308 to `https://<host without port><URI>`
/// (one trailing `/` dropped, as ingress-nginx does), HTTPS is served; `ssl-redirect: "false"`
/// serves plain HTTP; `force-ssl-redirect` redirects a host without a certificate, and
/// `preserve-trailing-slash` keeps the slash. A host without a certificate is not redirected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_redirect_by_default_for_tls_hosts_opt_out_and_force() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let cert = rcgen::generate_simple_self_signed(vec![
        "tls.example".to_string(),
        "optout.example".to_string(),
    ])?;
    let secret = tls_secret("cert", &cert.cert.pem(), &cert.key_pair.serialize_pem());
    let mut tls = annotated(
        "tls",
        &[rule(Some("tls.example"), &[("/", "Prefix", "web")])],
        &[],
    );
    with_tls(&mut tls, &["tls.example"], "cert");
    let mut optout = annotated(
        "optout",
        &[rule(Some("optout.example"), &[("/", "Prefix", "web")])],
        &[("ssl-redirect", "false")],
    );
    with_tls(&mut optout, &["optout.example"], "cert");
    let proxy = start(
        &[&web],
        &[secret],
        &[
            tls,
            optout,
            annotated(
                "forced",
                &[rule(Some("forced.example"), &[("/", "Prefix", "web")])],
                &[
                    ("force-ssl-redirect", "true"),
                    ("preserve-trailing-slash", "true"),
                ],
            ),
            annotated(
                "plain",
                &[rule(Some("plain.example"), &[("/", "Prefix", "web")])],
                &[],
            ),
        ],
    )?;
    let client = pooled();
    let http_port = proxy.http.port();
    for (host, path, target) in [
        ("tls.example", "/a/b?x=1", "https://tls.example/a/b?x=1"),
        ("tls.example", "/dir/", "https://tls.example/dir"),
        (
            &*format!("tls.example:{http_port}"),
            "/p",
            "https://tls.example/p",
        ),
        ("forced.example", "/dir/", "https://forced.example/dir/"),
    ] {
        let reply = get(&client, proxy.http, host, path).await?;
        ensure_eq!(reply.status, StatusCode::PERMANENT_REDIRECT, "{host}{path}");
        ensure_eq!(location(&reply).as_deref(), Some(target), "{host}{path}");
    }
    for host in ["optout.example", "plain.example"] {
        let reply = get(&client, proxy.http, host, "/x").await?;
        ensure_served(&reply, "web", host)?;
    }
    let over_tls = https_get(proxy.https, "tls.example", "/a/b", &[b"http/1.1"]).await?;
    ensure_served(&over_tls, "web", "tls.example over HTTPS")?;
    ensure_eq!(
        over_tls.seen_header("x-forwarded-proto")?,
        vec!["https".to_string()]
    );
    Ok(())
}

/// `from-to-www-redirect` on `www.site.example` answers requests for `site.example` with 308
/// to the www name (the scheme and port the client used, one trailing `/` dropped), and the
/// other way round for an Ingress of the bare name; a name some rule serves is not redirected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_to_www_redirects_the_other_name() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let other = HttpBackend::start("other").await?;
    let proxy = start(
        &[&web, &other],
        &[],
        &[
            annotated(
                "www",
                &[rule(Some("www.site.example"), &[("/", "Prefix", "web")])],
                &[("from-to-www-redirect", "true")],
            ),
            annotated(
                "bare",
                &[
                    rule(Some("bare.example"), &[("/", "Prefix", "web")]),
                    rule(Some("taken.example"), &[("/", "Prefix", "web")]),
                ],
                &[("from-to-www-redirect", "true")],
            ),
            annotated(
                "taken",
                &[rule(Some("www.taken.example"), &[("/", "Prefix", "other")])],
                &[],
            ),
        ],
    )?;
    let client = pooled();
    for (host, path, target) in [
        ("site.example", "/a/b/", "http://www.site.example/a/b"),
        (
            "site.example:8080",
            "/a?x=1",
            "http://www.site.example:8080/a?x=1",
        ),
        ("www.bare.example", "/", "http://bare.example"),
    ] {
        let reply = get(&client, proxy.http, host, path).await?;
        ensure_eq!(reply.status, StatusCode::PERMANENT_REDIRECT, "{host}{path}");
        ensure_eq!(location(&reply).as_deref(), Some(target), "{host}{path}");
    }
    ensure_served(
        &get(&client, proxy.http, "www.site.example", "/a").await?,
        "web",
        "www",
    )?;
    ensure_served(
        &get(&client, proxy.http, "bare.example", "/a").await?,
        "web",
        "bare",
    )?;
    let taken = send_h1(proxy.http, request("www.taken.example", "/").body(empty())?).await?;
    ensure_served(&taken, "other", "a name some rule serves")?;
    Ok(())
}
