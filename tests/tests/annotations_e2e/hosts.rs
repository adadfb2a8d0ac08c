//! `server-alias` and `default-backend`.

use anyhow::Result;
use http::StatusCode;
use xdp_ingress_tests::{
    ensure_eq,
    proxy::{
        backends::HttpBackend,
        clients::{get, pooled},
        ensure_served,
        manifests::{backend_service, rule},
    },
};

use super::{annotated, start};

/// `server-alias`: each alias serves the rules of the Ingress's hosts (its paths, their
/// backends); an alias that is some rule's host stays that rule's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_alias_serves_the_same_rules() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let api = HttpBackend::start("api").await?;
    let other = HttpBackend::start("other").await?;
    let proxy = start(
        &[&web, &api, &other],
        &[],
        &[
            annotated(
                "main",
                &[rule(
                    Some("main.example"),
                    &[("/", "Prefix", "web"), ("/api", "Prefix", "api")],
                )],
                &[(
                    "server-alias",
                    "alias.example, Second.Example,taken.example",
                )],
            ),
            annotated(
                "taken",
                &[rule(Some("taken.example"), &[("/", "Prefix", "other")])],
                &[],
            ),
        ],
    )?;
    let client = pooled();
    for (host, path, backend) in [
        ("alias.example", "/", "web"),
        ("alias.example", "/api/x", "api"),
        ("second.example:8080", "/api", "api"),
        ("taken.example", "/api", "other"),
        ("main.example", "/api", "api"),
    ] {
        let reply = get(&client, proxy.http, host, path).await?;
        ensure_served(&reply, backend, &format!("{host}{path}"))?;
    }
    let unknown = get(&client, proxy.http, "third.example", "/").await?;
    ensure_eq!(unknown.status, StatusCode::NOT_FOUND);
    Ok(())
}

/// `default-backend`: the Service (its first port) answers for a rule whose Service has no
/// ready endpoint, and for paths of the Ingress's hosts no rule matches; without the
/// annotation, the same rule answers 503 and unmatched paths 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_backend_serves_endpointless_rules_and_unmatched_paths() -> Result<()> {
    let fallback = HttpBackend::start("fallback").await?;
    let web = HttpBackend::start("web").await?;
    let proxy = start(
        &[&fallback, &web],
        &backend_service("empty", &[]),
        &[
            annotated(
                "with",
                &[rule(
                    Some("with.example"),
                    &[("/app", "Prefix", "empty"), ("/web", "Prefix", "web")],
                )],
                &[("default-backend", "fallback")],
            ),
            annotated(
                "without",
                &[rule(
                    Some("without.example"),
                    &[("/app", "Prefix", "empty")],
                )],
                &[],
            ),
        ],
    )?;
    let client = pooled();
    for (path, backend) in [
        ("/app/x", "fallback"),
        ("/other", "fallback"),
        ("/web", "web"),
    ] {
        let reply = get(&client, proxy.http, "with.example", path).await?;
        ensure_served(&reply, backend, path)?;
    }
    let unavailable = get(&client, proxy.http, "without.example", "/app").await?;
    ensure_eq!(unavailable.status, StatusCode::SERVICE_UNAVAILABLE);
    let unmatched = get(&client, proxy.http, "without.example", "/other").await?;
    ensure_eq!(unmatched.status, StatusCode::NOT_FOUND);
    Ok(())
}
