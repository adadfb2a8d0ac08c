//! `whitelist-source-range` / `allowlist-source-range` and `denylist-source-range`: the client
//! (here 127.0.0.1) is refused with 403 when denied or outside the allowed ranges; the
//! redirects of the rewrite phase still answer first, as in nginx.

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

use super::{annotated, location, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_ranges_allow_and_deny_the_client_address() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let host = |name: &'static str| [rule(Some(name), &[("/", "Prefix", "web")])];
    let proxy = start(
        &[&web],
        &[],
        &[
            annotated("open", &host("open.example"), &[]),
            annotated(
                "allowed",
                &host("allowed.example"),
                &[("whitelist-source-range", "192.0.2.0/24, 127.0.0.0/8")],
            ),
            annotated(
                "not-allowed",
                &host("not-allowed.example"),
                &[("allowlist-source-range", "192.0.2.0/24,2001:db8::/32")],
            ),
            annotated(
                "denied",
                &host("denied.example"),
                &[
                    ("denylist-source-range", "127.0.0.1"),
                    ("whitelist-source-range", "127.0.0.0/8"),
                ],
            ),
            annotated(
                "not-denied",
                &host("not-denied.example"),
                &[("denylist-source-range", "198.51.100.0/24")],
            ),
            annotated(
                "redirected",
                &host("redirected.example"),
                &[
                    ("denylist-source-range", "127.0.0.0/8"),
                    ("permanent-redirect", "https://example.org/"),
                ],
            ),
        ],
    )?;
    let client = pooled();
    for name in ["open.example", "allowed.example", "not-denied.example"] {
        ensure_served(&get(&client, proxy.http, name, "/x").await?, "web", name)?;
    }
    let served = web.seen().len();
    for name in ["not-allowed.example", "denied.example"] {
        let reply = get(&client, proxy.http, name, "/x").await?;
        ensure_eq!(reply.status, StatusCode::FORBIDDEN, "{name}");
        ensure!(
            reply.text().contains("not allowed"),
            "{name}: {:?}",
            reply.text()
        );
    }
    let redirected = get(&client, proxy.http, "redirected.example", "/x").await?;
    ensure_eq!(redirected.status, StatusCode::MOVED_PERMANENTLY);
    ensure_eq!(
        location(&redirected).as_deref(),
        Some("https://example.org/")
    );
    ensure_eq!(
        web.seen().len(),
        served,
        "refused requests reach no backend"
    );
    Ok(())
}
