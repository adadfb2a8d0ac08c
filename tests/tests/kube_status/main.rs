//! Cluster mode end to end, what the agent writes back: Ingress status, TLS, Warning Events,
//! VIP assignment into Service status, and the Lease two agents compete for (only the holder
//! writes status; a takeover keeps it right).
//!
//! Each scenario runs inside a network namespace of its own (removed on drop, also on failure)
//! with dummy interfaces for a real XDP datapath (generic mode); the fake API server, the
//! agent's `Runner`, the in-process HTTP backends and the clients all run inside it, on its
//! loopback. The runner runs the binary's own event loop (`Runner::run`) on a task; nothing
//! drives it or nudges it. The tests change objects on the server and poll until the expected
//! state shows, checking what the agent did, not what it logged: the BPF maps of the XDP program
//! attached to the interface, read back from the kernel (VIP:port → backends; an entry left
//! behind counts), the proxy's answers (backends say their name), and what the agent wrote to
//! the API server (its request log and the stored objects). The harness is
//! `xdp_ingress_tests::kube`. Root is needed: run as another user, the tests say so and skip.

mod election;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
};

use anyhow::{ensure, Context as _, Result};
use election::{
    a_change_while_both_run_is_written_once, a_leads_and_writes_status,
    b_takes_over_after_a_releases, new_leader_keeps_status_right, ours_for, LEASE_NS,
};
use fake_apiserver::{FakeApiServer, Verb};
use k8s_openapi::api::{core::v1::Service, events::v1::Event};
use serde_json::json;
use xdp_ingress_tests::{
    kube::{
        self, apply_web, check_view, frontend, http_addr, https_addr, ingress_ips, kubeconfig,
        lease_holder,
        objects::{self, OTHER_CLASS, OUR_CLASS},
        run_args, served_by, service_ips, settle, start_runner, v4, InProcessRunner, Scene, View,
        DUMMY_IF, DUMMY_IF2,
    },
    proxy::{
        backends::HttpBackend,
        clients::{self, pooled, Pooled, Tls},
    },
    root::root_or_skip,
};

/// The namespace of the scenario objects.
const NS: &str = "shop";
/// What `--publish-address` publishes.
const PUBLISHED: &str = "192.0.2.10";

/// Scenarios 5, 7, 8 and 9: Ingress status (ours set, another class's never touched, one that
/// stops being ours cleared); TLS by SNI from a Secret, Secrets listed by type only, a Secret
/// named later fetched; one Warning Event for a bad path; a VIP assigned from the pool and
/// programmed.
#[test]
fn status_tls_events_and_vip_assignment() -> Result<()> {
    if !root_or_skip("status_tls_events_and_vip_assignment") {
        return Ok(());
    }
    let scene = Scene::new("xk-ctl")?;
    scene.run(status_tls_events_vips)
}

async fn status_tls_events_vips(server: &FakeApiServer) -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let certs = Certs::new()?;
    apply_workload(server, &web, &certs)?;
    let config = kubeconfig(server)?;
    let extra = [
        "--publish-address",
        PUBLISHED,
        "--assign-vips",
        "203.0.113.0/28",
        "--election-namespace",
        "xk-ctl",
    ];
    let runner = start_runner(run_args(config.path(), DUMMY_IF, &extra)?).await?;
    let (http, https) = (http_addr(&runner)?, https_addr(&runner)?);
    let client = pooled();

    status_published_for_ours_and_cleared_when_leaving(server, &client, http).await?;
    tls_by_sni_and_secrets_listed_by_type(server, https, &certs).await?;
    late_secret_fetched_and_kept_when_broken(server, https, &certs.late).await?;
    auth_secret_named_later_is_fetched(server, &client, http).await?;
    one_event_for_a_bad_path(server, &client, http).await?;
    vip_assigned_and_programmed(server, &runner, &web).await?;
    other_class_never_written(server)?;

    runner.stop().await?;
    Ok(())
}

/// The certificates of the scenario's TLS Secrets.
struct Certs {
    secure: rcgen::CertifiedKey,
    late: rcgen::CertifiedKey,
    unused: rcgen::CertifiedKey,
}

impl Certs {
    fn new() -> Result<Self> {
        let cert = |name: &str| rcgen::generate_simple_self_signed(vec![name.to_string()]);
        Ok(Self {
            secure: cert("secure.example")?,
            late: cert("late.example")?,
            unused: cert("unused.example")?,
        })
    }
}

/// The protocols the TLS clients offer.
const ALPN: &[&[u8]] = &[b"http/1.1"];

/// An Ingress of our class sending `host` to Service web.
fn ours(name: &str, host: &str) -> serde_json::Value {
    objects::ingress(NS, name, Some(OUR_CLASS), host, "/", "web")
}

/// Service web, Ingresses of ours (one with TLS), one of another class, and Secrets: three TLS
/// ones (one named later, one never) and an Opaque one.
fn apply_workload(server: &FakeApiServer, web: &HttpBackend, certs: &Certs) -> Result<()> {
    apply_web(server, NS, web.addr)?;
    server.apply(&ours("web", "web.example"))?;
    server.apply(&ours("leaving", "leaving.example"))?;
    server.apply(&objects::ingress(
        NS,
        "foreign",
        Some(OTHER_CLASS),
        "foreign.example",
        "/",
        "web",
    ))?;
    server.apply(&objects::with_tls(
        ours("secure", "secure.example"),
        &["secure.example"],
        "secure-tls",
    ))?;
    server.apply(&objects::tls_secret(NS, "secure-tls", &certs.secure))?;
    server.apply(&objects::tls_secret(NS, "late-tls", &certs.late))?;
    server.apply(&objects::tls_secret(NS, "unused-tls", &certs.unused))?;
    server.apply(&objects::secret(
        NS,
        "opaque",
        "Opaque",
        &[("password", b"hunter2")],
    ))?;

    Ok(())
}

/// Scenario 5, status: ours get the published address; the other class's Ingress gets nothing; one
/// that stops being ours is cleared.
async fn status_published_for_ours_and_cleared_when_leaving(
    server: &FakeApiServer,
    client: &Pooled,
    http: SocketAddr,
) -> Result<()> {
    let published = vec![PUBLISHED.to_string()];
    settle("status of our Ingresses", async || {
        ensure!(lease_holder(server, "xk-ctl")?.is_some(), "no Lease holder");
        for name in ["web", "leaving", "secure"] {
            let ips = ingress_ips(server, NS, name)?;
            ensure!(ips.as_ref() == Some(&published), "{name}: {ips:?}");
        }
        Ok(())
    })
    .await?;
    ensure!(served_by(client, http, "web.example").await? == "web");
    // One that stops being ours is cleared.
    change_class(server, "leaving", OTHER_CLASS)?;
    settle("status cleared", async || {
        let ips = ingress_ips(server, NS, "leaving")?;
        ensure!(ips == Some(Vec::new()), "leaving: {ips:?}");
        Ok(())
    })
    .await?;
    let cleared = server
        .requests_for(Verb::Patch, "ingresses")
        .into_iter()
        .rfind(|r| r.name.as_deref() == Some("leaving"))
        .context("no PATCH for leaving")?;
    ensure!(
        cleared.subresource.as_deref() == Some("status")
            && cleared.body.replace(' ', "").contains("\"ingress\":[]"),
        "not a status patch clearing the addresses: {cleared:?}"
    );

    Ok(())
}

/// Scenario 7, TLS: the referenced Secret is served by SNI, an unreferenced one is not; Secrets are
/// listed and watched by type only.
async fn tls_by_sni_and_secrets_listed_by_type(
    server: &FakeApiServer,
    https: SocketAddr,
    certs: &Certs,
) -> Result<()> {
    let (_, handshake) = clients::tls_connect(https, "secure.example", Tls::Any, ALPN).await?;
    ensure!(
        handshake.certificate == certs.secure.cert.der().to_vec(),
        "secure.example did not present the certificate of secure-tls"
    );
    let reply = clients::https_get(https, "secure.example", "/", ALPN).await?;
    ensure!(
        reply.backend().as_deref() == Some("web"),
        "{:?}",
        reply.text()
    );
    let (_, handshake) = clients::tls_connect(https, "unused.example", Tls::Any, ALPN).await?;
    ensure!(
        handshake.certificate != certs.unused.cert.der().to_vec(),
        "the certificate of a Secret no Ingress names was presented"
    );
    // Secrets are only ever listed and watched by type, never read one by one.
    let secret_requests: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.resource.as_deref() == Some("secrets"))
        .collect();
    ensure!(!secret_requests.is_empty(), "no Secret requests at all");
    for request in &secret_requests {
        ensure!(
            matches!(request.verb, Verb::List | Verb::Watch),
            "a Secret request that is no LIST/WATCH: {request:?}"
        );
        let query = kube::decode_query(&request.query);
        // TLS Secrets, and Opaque ones for `auth-secret` (of which only named ones are kept).
        ensure!(
            query
                .split('&')
                .any(|p| p == "fieldSelector=type=kubernetes.io/tls"
                    || p == "fieldSelector=type=Opaque"),
            "a Secret {:?} without fieldSelector=type=kubernetes.io/tls or type=Opaque: {query}",
            request.verb
        );
    }
    Ok(())
}

/// An Opaque Secret first named (`auth-secret`) after the first sync is fetched: the Ingress
/// answers 401 without credentials and serves with them; until then it answered 503.
async fn auth_secret_named_later_is_fetched(
    server: &FakeApiServer,
    client: &Pooled,
    http: SocketAddr,
) -> Result<()> {
    let mut guarded = ours("guarded", "guarded.example");
    guarded["metadata"]["annotations"] = json!({
        "nginx.ingress.kubernetes.io/auth-type": "basic",
        "nginx.ingress.kubernetes.io/auth-secret": "staff",
    });
    server.apply(&objects::secret(
        NS,
        "staff",
        "Opaque",
        // `htpasswd -s`: dave / sha1-pass.
        &[("auth", b"dave:{SHA}lwP+QnDZZeQ+bmQbA4P37mDtFVo=\n")],
    ))?;
    server.apply(&guarded)?;
    let ask = |credentials: Option<&'static str>| async move {
        let mut request = http::Request::get(format!("http://{http}/"))
            .header(http::header::HOST, "guarded.example");
        if let Some(credentials) = credentials {
            request = request.header(http::header::AUTHORIZATION, credentials);
        }
        let response = client.request(request.body(Default::default())?).await?;
        clients::collect(response).await
    };
    settle("guarded.example asks for credentials", async || {
        let reply = ask(None).await?;
        ensure!(reply.status == 401, "{} {:?}", reply.status, reply.text());
        Ok(())
    })
    .await?;
    // base64("dave:sha1-pass")
    let reply = ask(Some("Basic ZGF2ZTpzaGExLXBhc3M=")).await?;
    ensure!(
        reply.backend().as_deref() == Some("web"),
        "{} {:?}",
        reply.status,
        reply.text()
    );
    Ok(())
}

/// A Secret first named after the first sync is fetched and served; when its PEM breaks, the
/// previous certificate stays and a Warning Event says why.
async fn late_secret_fetched_and_kept_when_broken(
    server: &FakeApiServer,
    https: SocketAddr,
    late: &rcgen::CertifiedKey,
) -> Result<()> {
    // A Secret first named after the first sync (it was dropped from the store then) is
    // fetched and served.
    server.apply(&objects::with_tls(
        ours("late", "late.example"),
        &["late.example"],
        "late-tls",
    ))?;
    settle("late-tls served", async || {
        let (_, handshake) = clients::tls_connect(https, "late.example", Tls::Any, ALPN).await?;
        ensure!(
            handshake.certificate == late.cert.der().to_vec(),
            "late.example does not present late-tls yet"
        );
        Ok(())
    })
    .await?;
    // A Secret whose PEM stops parsing: the previous certificate stays, and a Warning Event on
    // the Secret says why.
    server.apply(&objects::secret(
        NS,
        "late-tls",
        "kubernetes.io/tls",
        &[
            (
                "tls.crt",
                b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
            ),
            ("tls.key", late.key_pair.serialize_pem().as_bytes()),
        ],
    ))?;
    settle("an Event for the broken late-tls", async || {
        let events: Vec<Event> = server
            .list_as::<Event>()?
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("Secret") && r.name.as_deref() == Some("late-tls")
                })
            })
            .collect();
        ensure!(
            events.len() == 1,
            "Events regarding Secret late-tls: {events:?}"
        );
        ensure!(
            events[0].type_.as_deref() == Some("Warning"),
            "{:?}",
            events[0]
        );
        Ok(())
    })
    .await?;
    let (_, handshake) = clients::tls_connect(https, "late.example", Tls::Any, ALPN).await?;
    ensure!(
        handshake.certificate == late.cert.der().to_vec(),
        "the previous certificate of late-tls did not stay after its PEM broke"
    );

    Ok(())
}

/// Scenario 8: a bad path: one Warning Event on the Ingress, not one per sync.
async fn one_event_for_a_bad_path(
    server: &FakeApiServer,
    client: &Pooled,
    http: SocketAddr,
) -> Result<()> {
    server.apply(&objects::ingress(
        NS,
        "bad-path",
        Some(OUR_CLASS),
        "bad.example",
        "nope",
        "web",
    ))?;
    let bad_events = || -> Result<Vec<Event>> {
        Ok(server
            .list_as::<Event>()?
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("bad-path"))
            .collect())
    };
    settle("a Warning Event for bad-path", async || {
        let events = bad_events()?;
        ensure!(!events.is_empty(), "no Event regarding bad-path");
        Ok(())
    })
    .await?;
    // More syncs.
    for n in 0..3 {
        let host = format!("more{n}.example");
        server.apply(&ours(&format!("more{n}"), &host))?;
        settle("another change applied", async || {
            ensure!(served_by(client, http, &host).await? == "web");
            Ok(())
        })
        .await?;
    }
    let events = bad_events()?;
    ensure!(events.len() == 1, "Events regarding bad-path: {events:?}");
    let event = &events[0];
    ensure!(event.type_.as_deref() == Some("Warning"), "{event:?}");
    ensure!(
        event.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Ingress"),
        "{event:?}"
    );
    ensure!(
        event.note.as_deref().is_some_and(|n| n.contains("path")),
        "{event:?}"
    );
    let creates = server
        .requests_for(Verb::Create, "events.events.k8s.io")
        .into_iter()
        .filter(|r| r.body.contains("bad-path"))
        .count();
    let repeats = server.count(Verb::Patch, "events.events.k8s.io");
    ensure!(
        creates == 1 && repeats == 0,
        "bad-path: {creates} Event creates and {repeats} Event patches (series) after 4 syncs"
    );

    Ok(())
}

/// Scenario 9: a LoadBalancer Service of our class without an address gets one from the pool, and
/// is forwarded; one of another class is left alone.
async fn vip_assigned_and_programmed(
    server: &FakeApiServer,
    runner: &InProcessRunner,
    web: &HttpBackend,
) -> Result<()> {
    server.apply(&objects::service(
        NS,
        "auto",
        None,
        Some("xdp-ingress.dev/lb"),
    ))?;
    server.apply(&objects::backend_slice(NS, "auto-a", "auto", web.addr))?;
    server.apply(&objects::service(
        NS,
        "theirs",
        None,
        Some("example.com/lb"),
    ))?;
    let assigned = Ipv4Addr::new(203, 0, 113, 1);
    let want = View::from([(frontend(assigned), BTreeSet::from([v4(web.addr)]))]);
    settle("a VIP assigned and programmed", async || {
        let ips = service_ips(server, NS, "auto")?.context("auto is gone")?;
        ensure!(ips == [assigned.to_string()], "auto's status: {ips:?}");
        check_view(runner, &want)
    })
    .await?;
    let theirs = server.get_as::<Service>(NS, "theirs")?.context("theirs")?;
    ensure!(
        theirs
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .is_none(),
        "a Service of another loadBalancerClass got an address"
    );

    Ok(())
}

/// The other class's Ingress was never written to, and no Service but auto was patched.
fn other_class_never_written(server: &FakeApiServer) -> Result<()> {
    let foreign: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| {
            r.resource.as_deref() == Some("ingresses.networking.k8s.io")
                && r.name.as_deref() == Some("foreign")
                && !matches!(r.verb, Verb::Get | Verb::List | Verb::Watch)
        })
        .collect();
    ensure!(foreign.is_empty(), "writes to foreign: {foreign:?}");
    ensure!(
        server
            .requests_for(Verb::Patch, "services")
            .iter()
            .all(|r| r.name.as_deref() == Some("auto")),
        "a Service other than auto was patched"
    );
    let foreign_ips = ingress_ips(server, NS, "foreign")?;
    ensure!(foreign_ips == Some(Vec::new()), "foreign: {foreign_ips:?}");

    Ok(())
}

/// Gives Ingress `NS/name` another class, keeping its status (as `kubectl apply` of its spec
/// would: [`FakeApiServer::apply`] stores the object as given, status included).
fn change_class(server: &FakeApiServer, name: &str, class: &str) -> Result<()> {
    let mut ingress = server
        .get("networking.k8s.io/v1", "Ingress", NS, name)
        .with_context(|| format!("no Ingress {name}"))?;
    ensure!(
        !ingress["status"]["loadBalancer"]["ingress"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "{name} has no status to clear"
    );
    ingress["spec"]["ingressClassName"] = json!(class);
    server.apply(&ingress)?;
    Ok(())
}

/// Scenario 6: two agents compete for the Lease; only the holder writes status; when it stops
/// (releasing the Lease) the other takes over and keeps status right.
#[test]
fn two_agents_one_lease_and_a_takeover() -> Result<()> {
    if !root_or_skip("two_agents_one_lease_and_a_takeover") {
        return Ok(());
    }
    let scene = Scene::new("xk-two")?;
    scene.run(two_agents)
}

async fn two_agents(server: &FakeApiServer) -> Result<()> {
    let web = HttpBackend::start("web").await?;
    apply_web(server, NS, web.addr)?;
    server.apply(&ours_for("one"))?;
    let published = Some(vec![PUBLISHED.to_string()]);
    let config = kubeconfig(server)?;
    let extra = [
        "--publish-address",
        PUBLISHED,
        "--election-namespace",
        LEASE_NS,
    ];

    // A starts first and leads.
    let a = start_runner(run_args(config.path(), DUMMY_IF, &extra)?).await?;
    let first = a_leads_and_writes_status(server, &published).await?;
    // B follows. A change while both run is written once.
    let b = start_runner(run_args(config.path(), DUMMY_IF2, &extra)?).await?;
    a_change_while_both_run_is_written_once(server, &a, &b, &first, &published).await?;
    // A stops and releases the Lease; a change arrives while nobody leads.
    b_takes_over_after_a_releases(server, a, &first, &published).await?;
    new_leader_keeps_status_right(server, &published).await?;
    b.stop().await?;
    ensure!(
        lease_holder(server, LEASE_NS)?.is_none(),
        "the last agent stopped without releasing the Lease"
    );
    Ok(())
}
