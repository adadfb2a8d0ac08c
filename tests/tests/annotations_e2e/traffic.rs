//! Traffic annotations: a canary Ingress beside a main one (by header, value, pattern and
//! cookie, and by weight over 1,000 requests within a 5-sigma binomial interval, so the test
//! cannot flake), `affinity: cookie` (the cookie ingress-nginx sets, sessions kept on their
//! endpoint, a gone endpoint re-picked with a new cookie), and `upstream-hash-by` (a key stays
//! on its endpoint; removing an endpoint moves only its keys). Endpoints are told apart by the
//! name each in-process backend answers with.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context as _, Result};
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use xdp_ingress_tests::{
    ensure_eq,
    proxy::{
        backends::HttpBackend,
        clients::{collect, pooled, Pooled, Reply, EXCHANGE_TIMEOUT},
        eventually,
        manifests::{backend_service, rule},
    },
};

use super::{annotated, start};

/// `GET http://<host><path>` with extra request headers.
async fn get_with(
    client: &Pooled,
    proxy: std::net::SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply> {
    let mut request = Request::get(format!("http://{proxy}{path}")).header(header::HOST, host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        client.request(request.body(Full::<Bytes>::default())?),
    )
    .await
    .context("no answer in time")??;
    collect(response).await
}

/// The backend that served `reply` (200 required).
fn served_by(reply: &Reply) -> Result<String> {
    ensure_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.backend().context("no backend name")
}

fn set_cookie(reply: &Reply) -> Option<String> {
    reply
        .headers
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A main Ingress for `host` to `web`, and a canary one to `v2` with `canary` annotations.
fn main_and_canary(host: &'static str, canary: &[(&str, &str)]) -> [Value; 2] {
    let mut annotations = vec![("canary", "true")];
    annotations.extend_from_slice(canary);
    let name = host.split('.').next().unwrap_or(host);
    [
        annotated(
            &format!("{name}-main"),
            &[rule(Some(host), &[("/", "Prefix", "web")])],
            &[],
        ),
        annotated(
            &format!("{name}-canary"),
            &[rule(Some(host), &[("/", "Prefix", "v2")])],
            &annotations,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_by_header_value_pattern_and_cookie_in_that_order() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let v2 = HttpBackend::start("v2").await?;
    let mut ingresses = Vec::new();
    ingresses.extend(main_and_canary(
        "header.example",
        &[
            ("canary-by-header", "X-Canary"),
            ("canary-by-cookie", "canary"),
        ],
    ));
    ingresses.extend(main_and_canary(
        "value.example",
        &[
            ("canary-by-header", "X-Canary"),
            ("canary-by-header-value", "v2"),
        ],
    ));
    ingresses.extend(main_and_canary(
        "pattern.example",
        &[
            ("canary-by-header", "X-Canary"),
            ("canary-by-header-pattern", "^rc-[0-9]+$"),
        ],
    ));
    // A canary without a main Ingress serves nothing.
    ingresses.push(annotated(
        "orphan",
        &[rule(Some("orphan.example"), &[("/", "Prefix", "v2")])],
        &[("canary", "true"), ("canary-weight", "100")],
    ));
    let proxy = start(&[&web, &v2], &[], &ingresses)?;
    let client = pooled();
    for (host, headers, expected) in [
        ("header.example", &[][..], "web"),
        ("header.example", &[("x-canary", "always")][..], "v2"),
        ("header.example", &[("x-canary", "never")][..], "web"),
        ("header.example", &[("x-canary", "perhaps")][..], "web"),
        ("header.example", &[("cookie", "canary=always")][..], "v2"),
        (
            "header.example",
            &[("cookie", "a=b; canary=never")][..],
            "web",
        ),
        // The header decides before the cookie; a value it does not know leaves it to the cookie.
        (
            "header.example",
            &[("x-canary", "never"), ("cookie", "canary=always")][..],
            "web",
        ),
        (
            "header.example",
            &[("x-canary", "perhaps"), ("cookie", "canary=always")][..],
            "v2",
        ),
        ("value.example", &[("x-canary", "v2")][..], "v2"),
        ("value.example", &[("x-canary", "always")][..], "web"),
        ("value.example", &[("x-canary", "v3")][..], "web"),
        ("pattern.example", &[("x-canary", "rc-12")][..], "v2"),
        ("pattern.example", &[("x-canary", "rc-12b")][..], "web"),
        ("pattern.example", &[][..], "web"),
    ] {
        let reply = get_with(&client, proxy.http, host, "/x", headers).await?;
        ensure_eq!(served_by(&reply)?, expected, "{host} {headers:?}");
    }
    let orphan = get_with(&client, proxy.http, "orphan.example", "/", &[]).await?;
    ensure_eq!(orphan.status, StatusCode::NOT_FOUND);
    Ok(())
}

/// Canary answers out of `n` requests to `host`.
async fn canary_count(
    client: &Pooled,
    proxy: std::net::SocketAddr,
    host: &str,
    n: usize,
) -> Result<usize> {
    let mut canary = 0;
    for _ in 0..n {
        let reply = get_with(client, proxy, host, "/", &[]).await?;
        match served_by(&reply)?.as_str() {
            "v2" => canary += 1,
            "web" => {}
            other => bail!("{host}: served by {other}"),
        }
    }
    Ok(canary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_weights_split_within_statistical_bounds() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let v2 = HttpBackend::start("v2").await?;
    let mut ingresses = Vec::new();
    ingresses.extend(main_and_canary("zero.example", &[("canary-weight", "0")]));
    ingresses.extend(main_and_canary("all.example", &[("canary-weight", "100")]));
    ingresses.extend(main_and_canary(
        "thirty.example",
        &[("canary-weight", "30")],
    ));
    ingresses.extend(main_and_canary(
        "permille.example",
        &[("canary-weight", "300"), ("canary-weight-total", "1000")],
    ));
    let proxy = start(&[&web, &v2], &[], &ingresses)?;
    let client = pooled();
    ensure_eq!(
        canary_count(&client, proxy.http, "zero.example", 200).await?,
        0
    );
    ensure_eq!(
        canary_count(&client, proxy.http, "all.example", 200).await?,
        200
    );
    // Binomial(1000, 0.3): mean 300, sigma 14.5; 5 sigma is [228, 372].
    for host in ["thirty.example", "permille.example"] {
        let canary = canary_count(&client, proxy.http, host, 1000).await?;
        ensure!(
            (228..=372).contains(&canary),
            "{host}: {canary} of 1000 to the canary"
        );
    }
    Ok(())
}

/// Three endpoints behind one Service `pool`, named `pool-0`..`pool-2`.
async fn pool() -> Result<Vec<HttpBackend>> {
    let mut pool = Vec::new();
    for i in 0..3 {
        pool.push(HttpBackend::start(&format!("pool-{i}")).await?);
    }
    Ok(pool)
}

fn pool_service(pool: &[&HttpBackend]) -> Vec<Value> {
    let addrs: Vec<_> = pool.iter().map(|b| b.addr).collect();
    backend_service("pool", &addrs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_sets_nginx_cookie_and_keeps_the_session() -> Result<()> {
    let pool = pool().await?;
    let all: Vec<&HttpBackend> = pool.iter().collect();
    let rules = |host| [rule(Some(host), &[("/app", "Prefix", "pool")])];
    let ingresses = [
        annotated(
            "balanced",
            &rules("balanced.example"),
            &[
                ("affinity", "cookie"),
                ("session-cookie-max-age", "60"),
                ("session-cookie-samesite", "Lax"),
            ],
        ),
        annotated(
            "persistent",
            &rules("persistent.example"),
            &[
                ("affinity", "cookie"),
                ("affinity-mode", "persistent"),
                ("session-cookie-name", "route"),
                ("session-cookie-path", "/"),
                ("session-cookie-secure", "true"),
            ],
        ),
    ];
    let proxy = start(&[], &pool_service(&all), &ingresses)?;
    let client = pooled();

    // First answer: ingress-nginx's cookie, no endpoint address in it.
    let first = get_with(&client, proxy.http, "balanced.example", "/app/x", &[]).await?;
    let endpoint = served_by(&first)?;
    let cookie = set_cookie(&first).context("no Set-Cookie on a new session")?;
    let (pair, attributes) = cookie.split_once("; ").context("attributes")?;
    ensure_eq!(attributes, "Max-Age=60; Path=/app; HttpOnly; SameSite=Lax");
    ensure!(
        pair.starts_with("INGRESSCOOKIE=") && !pair.contains("127.0.0.1"),
        "{pair}"
    );
    // Sent back: always the same endpoint, no new cookie.
    for _ in 0..20 {
        let again = get_with(
            &client,
            proxy.http,
            "balanced.example",
            "/app/y",
            &[("cookie", pair)],
        )
        .await?;
        ensure_eq!(served_by(&again)?, endpoint);
        ensure_eq!(set_cookie(&again), None);
    }
    // New sessions spread over the endpoints (all 30 on one of three: p = 3^-29).
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        let reply = get_with(&client, proxy.http, "balanced.example", "/app", &[]).await?;
        ensure!(set_cookie(&reply).is_some());
        *seen.entry(served_by(&reply)?).or_insert(0) += 1;
    }
    ensure!(seen.len() > 1, "{seen:?}");

    // Persistent, configured name, path and Secure (even over plain HTTP, as asked).
    let first = get_with(&client, proxy.http, "persistent.example", "/app", &[]).await?;
    let endpoint = served_by(&first)?;
    let cookie = set_cookie(&first).context("no Set-Cookie")?;
    let (pair, attributes) = cookie.split_once("; ").context("attributes")?;
    ensure_eq!(attributes, "Path=/; Secure; HttpOnly");
    ensure!(pair.starts_with("route="), "{pair}");
    for _ in 0..10 {
        let again = get_with(
            &client,
            proxy.http,
            "persistent.example",
            "/app",
            &[("cookie", pair)],
        )
        .await?;
        ensure_eq!(served_by(&again)?, endpoint);
    }
    // Its endpoint leaves the Service: the session is re-picked, with a new cookie.
    let rest: Vec<&HttpBackend> = pool.iter().filter(|b| b.name != endpoint).collect();
    proxy
        .manifests
        .write("services.yaml", &pool_service(&rest))?;
    let moved = eventually("the session moves off the removed endpoint", || async {
        let reply = get_with(
            &client,
            proxy.http,
            "persistent.example",
            "/app",
            &[("cookie", pair)],
        )
        .await?;
        let now = served_by(&reply)?;
        ensure!(now != endpoint, "still on {now}");
        Ok(reply)
    })
    .await?;
    let new_cookie = set_cookie(&moved).context("a new cookie for the new endpoint")?;
    let new_pair = new_cookie
        .split_once("; ")
        .map_or(new_cookie.as_str(), |(p, _)| p);
    ensure!(new_pair != pair);
    let now = served_by(&moved)?;
    for _ in 0..10 {
        let again = get_with(
            &client,
            proxy.http,
            "persistent.example",
            "/app",
            &[("cookie", new_pair)],
        )
        .await?;
        ensure_eq!(served_by(&again)?, now);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_hash_by_keeps_keys_and_moves_only_a_removed_endpoints_share() -> Result<()> {
    let pool = pool().await?;
    let all: Vec<&HttpBackend> = pool.iter().collect();
    let proxy = start(
        &[],
        &pool_service(&all),
        &[annotated(
            "hashed",
            &[rule(Some("hash.example"), &[("/", "Prefix", "pool")])],
            &[("upstream-hash-by", "$arg_user")],
        )],
    )?;
    let client = pooled();
    let mut owner = BTreeMap::new();
    for user in 0..90 {
        let path = format!("/?user={user}");
        let first = served_by(&get_with(&client, proxy.http, "hash.example", &path, &[]).await?)?;
        for _ in 0..3 {
            let again =
                served_by(&get_with(&client, proxy.http, "hash.example", &path, &[]).await?)?;
            ensure_eq!(again, first, "user {user}");
        }
        owner.insert(user, first);
    }
    let mut shares = BTreeMap::new();
    owner
        .values()
        .for_each(|e| *shares.entry(e.clone()).or_insert(0) += 1);
    ensure_eq!(shares.len(), 3, "{shares:?}");

    // pool-2 leaves: its keys move, every other key stays where it was.
    let rest: Vec<&HttpBackend> = pool.iter().take(2).collect();
    proxy
        .manifests
        .write("services.yaml", &pool_service(&rest))?;
    let gone = owner
        .iter()
        .find(|(_, e)| e.as_str() == "pool-2")
        .map(|(u, _)| *u)
        .context("pool-2 had no key")?;
    eventually("pool-2's keys move", || async {
        let reply = get_with(
            &client,
            proxy.http,
            "hash.example",
            &format!("/?user={gone}"),
            &[],
        )
        .await?;
        ensure!(served_by(&reply)? != "pool-2");
        Ok(())
    })
    .await?;
    for (user, was) in &owner {
        let now = served_by(
            &get_with(
                &client,
                proxy.http,
                "hash.example",
                &format!("/?user={user}"),
                &[],
            )
            .await?,
        )?;
        if was == "pool-2" {
            ensure!(now != "pool-2", "user {user}");
        } else {
            ensure_eq!(&now, was, "user {user} moved though its endpoint stayed");
        }
    }
    Ok(())
}

/// ingress-nginx's `affinity-canary-behavior: sticky` (the default): a session cookie of the
/// canary's backend keeps the request on the canary, one of the main backend's on the main
/// one, whatever the weight draws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stays_on_the_side_of_the_canary_it_started_on() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let v2 = HttpBackend::start("v2").await?;
    let sticky = [("affinity", "cookie")];
    let proxy = start(
        &[&web, &v2],
        &[],
        &[
            annotated(
                "main",
                &[rule(Some("sticky.example"), &[("/", "Prefix", "web")])],
                &sticky,
            ),
            annotated(
                "preview",
                &[rule(Some("sticky.example"), &[("/", "Prefix", "v2")])],
                &[
                    ("canary", "true"),
                    ("canary-weight", "50"),
                    ("affinity", "cookie"),
                ],
            ),
        ],
    )?;
    let client = pooled();
    let mut cookies = BTreeMap::new();
    // New sessions until both sides have one (50 % each: 40 tries all alike is p = 2^-39).
    for _ in 0..40 {
        let reply = get_with(&client, proxy.http, "sticky.example", "/", &[]).await?;
        let side = served_by(&reply)?;
        let cookie = set_cookie(&reply).context("a new session gets a cookie")?;
        let pair = cookie
            .split_once("; ")
            .map_or(cookie.clone(), |(p, _)| p.to_string());
        cookies.entry(side).or_insert(pair);
        if cookies.len() == 2 {
            break;
        }
    }
    ensure_eq!(cookies.len(), 2, "{cookies:?}");
    for (side, pair) in &cookies {
        for _ in 0..20 {
            let reply = get_with(
                &client,
                proxy.http,
                "sticky.example",
                "/",
                &[("cookie", pair.as_str())],
            )
            .await?;
            ensure_eq!(&served_by(&reply)?, side, "{pair}");
        }
    }
    Ok(())
}
