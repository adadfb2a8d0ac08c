//! `use-regex`, `rewrite-target` (with captures, and without) and `x-forwarded-prefix`.

use anyhow::{ensure, Result};
use http::StatusCode;
use xdp_ingress_tests::{
    ensure_eq,
    proxy::{
        backends::HttpBackend,
        clients::{get, pooled},
        ensure_served,
        manifests::rule,
    },
};

use super::{annotated, seen_path, start};

/// `use-regex: "true"` on one Ingress makes every path of its host a case-insensitive regex
/// anchored at the start, on every Ingress of that host (the other Ingress's Exact path too);
/// other hosts keep the Ingress path semantics, and `"false"` (the default) is literal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_regex_turns_the_whole_host_to_case_insensitive_prefix_regexes() -> Result<()> {
    let api = HttpBackend::start("api").await?;
    let docs = HttpBackend::start("docs").await?;
    let plain = HttpBackend::start("plain").await?;
    let proxy = start(
        &[&api, &docs, &plain],
        &[],
        &[
            annotated(
                "regex",
                &[rule(
                    Some("r.example"),
                    &[("/api/v[0-9]+", "ImplementationSpecific", "api")],
                )],
                &[("use-regex", "true")],
            ),
            annotated(
                "docs",
                &[
                    rule(Some("r.example"), &[("/docs", "Exact", "docs")]),
                    rule(Some("p.example"), &[("/docs", "Exact", "docs")]),
                ],
                &[],
            ),
            annotated(
                "literal",
                &[rule(Some("l.example"), &[("/a.c", "Prefix", "plain")])],
                &[("use-regex", "false")],
            ),
        ],
    )?;
    let client = pooled();
    for (host, path, backend) in [
        ("r.example", "/api/v2/items?x=1", Some("api")),
        ("r.example", "/API/V10", Some("api")),
        ("r.example", "/api/v", None),
        ("r.example", "/x/api/v1", None),
        // The Exact path of the other Ingress became a prefix regex on this host...
        ("r.example", "/docs", Some("docs")),
        ("r.example", "/DOCS/more", Some("docs")),
        // ...and stays Exact (and case-sensitive) on a host without regexes.
        ("p.example", "/docs", Some("docs")),
        ("p.example", "/docs/more", None),
        ("p.example", "/DOCS", None),
        // `use-regex: "false"`: the path is literal.
        ("l.example", "/a.c", Some("plain")),
        ("l.example", "/abc", None),
    ] {
        let reply = get(&client, proxy.http, host, path).await?;
        match backend {
            Some(backend) => ensure_served(&reply, backend, &format!("{host}{path}"))?,
            None => ensure_eq!(reply.status, StatusCode::NOT_FOUND, "{host}{path}"),
        }
    }
    ensure!(
        api.saw("/api/v2/items?x=1"),
        "without rewrite-target the path is not changed: {:?}",
        api.seen()
    );
    Ok(())
}

/// `rewrite-target: /$2` on `/something(/|$)(.*)` (ingress-nginx's example): the backend gets
/// the second capture, the query kept, and `X-Forwarded-Prefix` when set; `rewrite-target: /`
/// without captures sends every matched path to `/`; without the annotations nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_target_uses_captures_keeps_the_query_and_sets_the_prefix() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let root = HttpBackend::start("root").await?;
    let proxy = start(
        &[&web, &root],
        &[],
        &[
            annotated(
                "captures",
                &[rule(
                    Some("rw.example"),
                    &[("/something(/|$)(.*)", "ImplementationSpecific", "web")],
                )],
                &[
                    ("rewrite-target", "/$2"),
                    ("x-forwarded-prefix", "/something"),
                ],
            ),
            annotated(
                "to-root",
                &[rule(Some("root.example"), &[("/app", "Prefix", "root")])],
                &[("rewrite-target", "/")],
            ),
            annotated(
                "unchanged",
                &[rule(Some("plain.example"), &[("/app", "Prefix", "root")])],
                &[],
            ),
        ],
    )?;
    let client = pooled();
    for (path, expected) in [
        ("/something", "/"),
        ("/something/", "/"),
        ("/something/new", "/new"),
        ("/SOMETHING/new/deeper?x=1&y=2", "/new/deeper?x=1&y=2"),
    ] {
        let reply = get(&client, proxy.http, "rw.example", path).await?;
        ensure_served(&reply, "web", path)?;
        ensure_eq!(seen_path(&reply).as_deref(), Some(expected), "{path}");
        ensure_eq!(
            reply.seen_header("x-forwarded-prefix")?,
            vec!["/something".to_string()],
            "{path}"
        );
    }
    for (path, expected) in [("/app", "/"), ("/app/page?q=1", "/?q=1")] {
        let reply = get(&client, proxy.http, "root.example", path).await?;
        ensure_served(&reply, "root", path)?;
        ensure_eq!(seen_path(&reply).as_deref(), Some(expected), "{path}");
        ensure!(
            reply.seen_header("x-forwarded-prefix")?.is_empty(),
            "no prefix header unless asked"
        );
    }
    let reply = get(&client, proxy.http, "plain.example", "/app/page").await?;
    ensure_served(&reply, "root", "plain")?;
    ensure_eq!(seen_path(&reply).as_deref(), Some("/app/page"));
    Ok(())
}
