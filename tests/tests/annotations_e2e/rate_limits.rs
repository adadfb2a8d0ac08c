//! `limit-rps`, `limit-rpm`, `limit-burst-multiplier`, `limit-connections` and
//! `limit-allowlist` / `limit-whitelist`, bound-based: requests sent back to back get at most
//! `burst + 1` successes (plus what the bucket drained while they were sent) and then 503s;
//! an exempt client never gets a 503; a second request in progress of a client limited to one
//! is refused while the first is held at the backend (a gate, no timing).

use std::time::Instant;

use anyhow::{ensure, Result};
use http::StatusCode;
use xdp_ingress_tests::{
    ensure_eq,
    proxy::{
        backends::{Gate, HttpBackend},
        clients::{get, pooled},
        ensure_served,
        manifests::rule,
    },
};

use super::{annotated, start};

/// Sends `n` GETs back to back; the 200s and the 503s, and the seconds it took (for the
/// bucket's drain in the bound).
async fn burst(proxy: std::net::SocketAddr, host: &str, n: usize) -> Result<(usize, usize, f64)> {
    let client = pooled();
    let started = Instant::now();
    let (mut ok, mut limited) = (0, 0);
    for i in 0..n {
        let reply = get(&client, proxy, host, &format!("/r{i}")).await?;
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                ensure!(
                    reply.text().contains("over its request rate limit"),
                    "{host}: {:?}",
                    reply.text()
                );
                limited += 1;
            }
            other => anyhow::bail!("{host}: unexpected {other}"),
        }
    }
    Ok((ok, limited, started.elapsed().as_secs_f64()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_allow_the_burst_then_answer_503_except_exempt_clients() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let host = |name: &'static str| [rule(Some(name), &[("/", "Prefix", "web")])];
    let proxy = start(
        &[&web],
        &[],
        &[
            // 1 r/s, burst 1 × 5 (the default multiplier): 6 at once.
            annotated("rps", &host("rps.example"), &[("limit-rps", "1")]),
            // 2 r/min, burst 2 × 2: 5 at once.
            annotated(
                "rpm",
                &host("rpm.example"),
                &[("limit-rpm", "2"), ("limit-burst-multiplier", "2")],
            ),
            annotated(
                "exempt",
                &host("exempt.example"),
                &[("limit-rps", "1"), ("limit-allowlist", "127.0.0.0/8")],
            ),
            annotated(
                "elsewhere",
                &host("elsewhere.example"),
                &[("limit-rps", "1"), ("limit-whitelist", "192.0.2.0/24")],
            ),
            annotated("open", &host("open.example"), &[]),
        ],
    )?;
    const N: usize = 30;
    let (ok, limited, seconds) = burst(proxy.http, "rps.example", N).await?;
    // What drained while the requests went out, rounded up, is the only margin.
    let drained = seconds.ceil() as usize;
    ensure!(limited > 0, "rps: {ok} ok, none refused");
    ensure!(ok <= 6 + drained, "rps: {ok} ok in {seconds:.2}s, burst 5");
    ensure!(ok >= 6, "rps: the burst passes ({ok} ok)");

    let (ok, limited, seconds) = burst(proxy.http, "rpm.example", N).await?;
    let drained = (seconds * 2.0 / 60.0).ceil() as usize;
    ensure!(limited > 0, "rpm: {ok} ok, none refused");
    ensure!(
        (5..=5 + drained).contains(&ok),
        "rpm: {ok} ok in {seconds:.2}s, burst 4"
    );

    let (ok, limited, _) = burst(proxy.http, "exempt.example", N).await?;
    ensure_eq!(
        (ok, limited),
        (N, 0),
        "an allowlisted client is never limited"
    );
    let (_, limited, _) = burst(proxy.http, "elsewhere.example", N).await?;
    ensure!(
        limited > 0,
        "an allowlist that does not hold the client exempts nothing"
    );
    let (ok, limited, _) = burst(proxy.http, "open.example", N).await?;
    ensure_eq!((ok, limited), (N, 0), "no limit without the annotations");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_connections_refuses_requests_beyond_those_in_progress() -> Result<()> {
    let gate = Gate::new();
    let web = HttpBackend::start_gated("web", gate.clone()).await?;
    let host = |name: &'static str| [rule(Some(name), &[("/", "Prefix", "web")])];
    let proxy = start(
        &[&web],
        &[],
        &[
            annotated("one", &host("one.example"), &[("limit-connections", "1")]),
            annotated(
                "exempt",
                &host("exempt.example"),
                &[
                    ("limit-connections", "1"),
                    ("limit-whitelist", "127.0.0.1/32"),
                ],
            ),
        ],
    )?;
    let addr = proxy.http;
    // One request of the client held at the backend, then a second one.
    let held =
        tokio::spawn(async move { get(&pooled(), addr, "one.example", "/held/first").await });
    let exempt_held =
        tokio::spawn(async move { get(&pooled(), addr, "exempt.example", "/held/first").await });
    let watched = gate.clone();
    xdp_ingress_tests::proxy::eventually("both held requests at the backend", move || {
        let arrived = watched.arrived();
        async move {
            ensure!(arrived >= 2, "{arrived} arrived");
            Ok(())
        }
    })
    .await?;
    let second = get(&pooled(), addr, "one.example", "/second").await?;
    ensure_eq!(
        second.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        second.text()
    );
    ensure!(
        second.text().contains("over its connection limit"),
        "{:?}",
        second.text()
    );
    ensure_served(
        &get(&pooled(), addr, "exempt.example", "/second").await?,
        "web",
        "an exempt client is not limited",
    )?;
    ensure_eq!(
        web.seen().iter().filter(|p| *p == "/second").count(),
        1,
        "the refused request never reached the backend"
    );
    gate.open();
    ensure_served(&held.await??, "web", "the held request")?;
    ensure_served(&exempt_held.await??, "web", "the exempt held request")?;
    // The slot is free again once the response has ended.
    ensure_served(
        &get(&pooled(), addr, "one.example", "/third").await?,
        "web",
        "after the first ended",
    )?;
    Ok(())
}
