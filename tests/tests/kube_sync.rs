//! Cluster mode end to end, sync: the agent follows a (fake) Kubernetes API server through
//! endpoint changes, watch outages and relists, with the BPF maps and the proxy always right.
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

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use fake_apiserver::{FakeApiServer, Verb};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice, networking::v1::Ingress};
use xdp_ingress_tests::{
    kube::{
        check_view, frontend, http_addr, kernel_entries, kubeconfig,
        objects::{self, OUR_CLASS},
        run_args, served_by, served_by_all, settle, start_runner, status_of, v4, InProcessRunner,
        Scene, View, DUMMY_IF,
    },
    proxy::{
        backends::HttpBackend,
        clients::{pooled, Pooled},
    },
    root::root_or_skip,
};

/// The namespace of the scenario objects.
const NS: &str = "shop";
/// LoadBalancer Services in the big scenario.
const SERVICES: usize = 100;

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 1 + u8::try_from(i).expect("at most 254"))
}

fn svc(i: usize) -> String {
    format!("svc-{i:03}")
}

fn host(i: usize) -> String {
    format!("h{i:03}.example")
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Scenarios 1–4: 100 LoadBalancer Services with EndpointSlices and Ingresses; the first list
/// is programmed before `start()` returns; endpoint changes; deletions while the watch is down;
/// a relist after compaction that never empties the maps.
#[test]
fn hundred_services_follow_endpoints_outages_and_relists() -> Result<()> {
    if !root_or_skip("hundred_services_follow_endpoints_outages_and_relists") {
        return Ok(());
    }
    let scene = Scene::new("xk-big")?;
    scene.run(hundred_services)
}

async fn hundred_services(server: &FakeApiServer) -> Result<()> {
    let mut backends = Vec::new();
    for i in 0..SERVICES {
        backends.push(HttpBackend::start(&format!("b{i:03}")).await?);
    }
    let b000b = HttpBackend::start("b000b").await?;
    let b000c = HttpBackend::start("b000c").await?;
    let fresh = HttpBackend::start("fresh").await?;
    for class in objects::classes() {
        server.apply(&class)?;
    }
    let (mut l4, mut l7) = apply_hundred_services(server, &backends, &b000b)?;
    let config = kubeconfig(server)?;
    let runner = start_runner(run_args(config.path(), DUMMY_IF, &[])?).await?;
    let proxy = http_addr(&runner)?;
    let client = pooled();

    let at = Watched {
        server,
        runner: &runner,
        client,
        proxy,
    };

    everything_in_place_after_start(&at, &l4, &l7).await?;
    endpoints_added_not_ready_and_removed(&at, &backends[0], &b000b, &b000c, &mut l4, &mut l7)
        .await?;
    deleted_while_the_watch_is_down(&at, &mut l4, &mut l7).await?;
    relist_after_compaction_keeps_every_survivor(&at, &fresh, &mut l4, &l7).await?;

    runner.stop().await?;
    Ok(())
}

/// Host → the backends that may answer it.
type Hosts = BTreeMap<String, BTreeSet<String>>;

/// The running agent and how the scenario looks at it.
struct Watched<'a> {
    server: &'a FakeApiServer,
    runner: &'a InProcessRunner,
    client: Pooled,
    proxy: SocketAddr,
}

/// The 100 Services, each with a slice and an Ingress, svc-000 with a second slice; returns
/// what the maps (`l4`) and the proxy (`l7`) must show.
fn apply_hundred_services(
    server: &FakeApiServer,
    backends: &[HttpBackend],
    b000b: &HttpBackend,
) -> Result<(View, Hosts)> {
    let mut l4 = View::new();
    let mut l7: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (i, backend) in backends.iter().enumerate() {
        server.apply(&objects::service(NS, &svc(i), Some(vip(i)), None))?;
        server.apply(&objects::backend_slice(
            NS,
            &format!("{}-a", svc(i)),
            &svc(i),
            backend.addr,
        ))?;
        server.apply(&objects::ingress(
            NS,
            &format!("ing-{i:03}"),
            Some(OUR_CLASS),
            &host(i),
            "/",
            &svc(i),
        ))?;
        l4.insert(frontend(vip(i)), BTreeSet::from([v4(backend.addr)]));
        l7.insert(host(i), names(&[&backend.name]));
    }
    // svc-000 has a second slice.
    server.apply(&objects::backend_slice(
        NS,
        "svc-000-b",
        "svc-000",
        b000b.addr,
    ))?;
    l4.insert(
        frontend(vip(0)),
        BTreeSet::from([v4(backends[0].addr), v4(b000b.addr)]),
    );
    l7.insert(host(0), names(&["b000", "b000b"]));

    Ok((l4, l7))
}

/// Scenario 1: everything is in place when start() returns (start_runner checked it is ready): no
/// waiting.
async fn everything_in_place_after_start(at: &Watched<'_>, l4: &View, l7: &Hosts) -> Result<()> {
    let (runner, client, proxy) = (at.runner, &at.client, at.proxy);
    check_view(runner, l4).context("after start()")?;
    ensure!(l4.len() == SERVICES);
    for (host, expected) in l7.iter() {
        served_by_all(client, proxy, host, expected)
            .await
            .with_context(|| format!("after start(), {host}"))?;
    }

    Ok(())
}

/// Scenario 2: endpoints change: one added, one not ready, one removed.
async fn endpoints_added_not_ready_and_removed(
    at: &Watched<'_>,
    b000: &HttpBackend,
    b000b: &HttpBackend,
    b000c: &HttpBackend,
    l4: &mut View,
    l7: &mut Hosts,
) -> Result<()> {
    let (server, runner, client, proxy) = (at.server, at.runner, &at.client, at.proxy);
    let a = v4(b000.addr);
    let (b, c) = (v4(b000b.addr), v4(b000c.addr));
    server.apply(&objects::backend_slice(
        NS,
        "svc-000-c",
        "svc-000",
        b000c.addr,
    ))?;
    l4.insert(frontend(vip(0)), BTreeSet::from([a, b, c]));
    let all3 = names(&["b000", "b000b", "b000c"]);
    settle("an endpoint added", async || {
        check_view(runner, l4)?;
        served_by_all(client, proxy, &host(0), &all3).await
    })
    .await?;

    server.apply(&objects::slice(
        NS,
        "svc-000-a",
        "svc-000",
        a.port(),
        &[(*a.ip(), false)],
    ))?;
    l4.insert(frontend(vip(0)), BTreeSet::from([b, c]));
    let ready = names(&["b000b", "b000c"]);
    settle("an endpoint not ready", async || {
        check_view(runner, l4)?;
        served_by_all(client, proxy, &host(0), &ready).await
    })
    .await?;

    server.delete_as::<EndpointSlice>(NS, "svc-000-b")?;
    l4.insert(frontend(vip(0)), BTreeSet::from([c]));
    settle("an endpoint removed", async || {
        check_view(runner, l4)?;
        for _ in 0..20 {
            let name = served_by(client, proxy, &host(0)).await?;
            ensure!(name == "b000c", "{} answered by {name}", host(0));
        }
        Ok(())
    })
    .await?;
    l7.insert(host(0), names(&["b000c"]));

    Ok(())
}

/// Scenario 3: a Service and its Ingress deleted while the watch is down.
async fn deleted_while_the_watch_is_down(
    at: &Watched<'_>,
    l4: &mut View,
    l7: &mut Hosts,
) -> Result<()> {
    let (server, runner, client, proxy) = (at.server, at.runner, &at.client, at.proxy);
    let lists_before = list_counts(server);
    server.stop();
    server.delete_as::<Service>(NS, &svc(99))?;
    server.delete_as::<EndpointSlice>(NS, "svc-099-a")?;
    server.delete_as::<Ingress>(NS, "ing-099")?;
    // Meanwhile everything keeps being served as it was.
    for i in [1, 2, 3, 50, 98, 99] {
        let name = served_by(client, proxy, &host(i)).await?;
        ensure!(
            l7[&host(i)].contains(&name),
            "during the outage {} → {name}",
            host(i)
        );
    }
    check_view(runner, l4).context("during the outage")?;
    server.restart()?;
    l4.remove(&frontend(vip(99)));
    l7.remove(&host(99));
    settle("deletions seen after the reconnect", async || {
        check_view(runner, l4)?;
        let status = status_of(client, proxy, &host(99)).await?;
        ensure!(status == 404, "{} still answers {status}", host(99));
        Ok(())
    })
    .await?;
    for (host, expected) in l7.iter() {
        served_by_all(client, proxy, host, expected)
            .await
            .with_context(|| format!("after the reconnect, {host}"))?;
    }
    ensure!(
        list_counts(server) == lists_before,
        "a reconnect without compaction resumes the watches (DELETED from the history), \
         it does not relist: LISTs {lists_before:?} → {:?}",
        list_counts(server)
    );

    Ok(())
}

/// Scenario 4: compaction, then a broken connection: every watcher relists. The relist replaces the
/// store in one step: the maps never lose a survivor, requests never fail.
async fn relist_after_compaction_keeps_every_survivor(
    at: &Watched<'_>,
    fresh: &HttpBackend,
    l4: &mut View,
    l7: &Hosts,
) -> Result<()> {
    let (server, runner, client, proxy) = (at.server, at.runner, &at.client, at.proxy);
    let survivors: View = l4
        .iter()
        .filter(|(f, _)| **f != frontend(vip(98)))
        .map(|(f, b)| (*f, b.clone()))
        .collect();
    let traffic = RequestLoop::start(
        proxy,
        (0..10).map(|i| (host(i), l7[&host(i)].clone())).collect(),
    );
    let lists_before = list_counts(server);
    server.expire_resource_versions();
    server.stop();
    server.delete_as::<Service>(NS, &svc(98))?;
    server.delete_as::<EndpointSlice>(NS, "svc-098-a")?;
    server.delete_as::<Ingress>(NS, "ing-098")?;
    let fresh_vip = Ipv4Addr::new(198, 51, 100, 201);
    server.apply(&objects::service(NS, "svc-fresh", Some(fresh_vip), None))?;
    server.apply(&objects::backend_slice(
        NS,
        "svc-fresh-a",
        "svc-fresh",
        fresh.addr,
    ))?;
    server.apply(&objects::ingress(
        NS,
        "ing-fresh",
        Some(OUR_CLASS),
        "fresh.example",
        "/",
        "svc-fresh",
    ))?;
    server.restart()?;
    l4.remove(&frontend(vip(98)));
    l4.insert(frontend(fresh_vip), BTreeSet::from([v4(fresh.addr)]));
    // Every look at the maps, until the relist is through, checks the survivors first: read
    // while the runner works on its own, at any moment, not only between syncs.
    let mut samples = 0usize;
    let mut lost: Vec<String> = Vec::new();
    settle("the relist after compaction", async || {
        samples += 1;
        let entries = kernel_entries(runner)?;
        for (frontend, backends) in &survivors {
            let got = entries.get(frontend);
            if got != Some(&Ok(backends.clone())) {
                lost.push(format!(
                    "sample {samples}: {frontend} → {got:?} ({} frontends)",
                    entries.len()
                ));
            }
        }
        let lists = list_counts(server);
        for (kind, before) in &lists_before {
            ensure!(lists[kind] > *before, "{kind} not relisted yet: {lists:?}");
        }
        check_view(runner, l4)?;
        ensure!(served_by(client, proxy, "fresh.example").await? == "fresh");
        let status = status_of(client, proxy, &host(98)).await?;
        ensure!(status == 404, "{} still answers {status}", host(98));
        Ok(())
    })
    .await?;
    let (ok, failures) = traffic.stop().await;
    ensure!(
        lost.is_empty(),
        "during the relist survivors left the maps: {}",
        lost.join("\n")
    );
    ensure!(
        failures.is_empty(),
        "{} of {} requests failed during the relist: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
    ensure!(ok > 0, "no request completed during the relist");
    println!(
        "relist: {samples} samples of the maps, {ok} requests, LISTs {:?}",
        list_counts(server)
    );

    Ok(())
}

/// LIST requests so far for each kind the agent watches.
fn list_counts(server: &FakeApiServer) -> BTreeMap<&'static str, usize> {
    [
        "services",
        "endpointslices",
        "ingresses",
        "ingressclasses",
        "secrets",
    ]
    .into_iter()
    .map(|kind| (kind, server.count(Verb::List, kind)))
    .collect()
}

/// Requests in a loop on a task of their own, each checked against the backends its host may
/// be answered by.
struct RequestLoop {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl RequestLoop {
    fn start(proxy: SocketAddr, hosts: Vec<(String, BTreeSet<String>)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let client = pooled();
            let (mut ok, mut failures) = (0, Vec::new());
            while !stopped.load(Ordering::SeqCst) {
                for (host, expected) in &hosts {
                    match served_by(&client, proxy, host).await {
                        Ok(name) if expected.contains(&name) => ok += 1,
                        Ok(name) => failures.push(format!("{host} answered by {name}")),
                        Err(error) => failures.push(format!("{host}: {error:#}")),
                    }
                }
                // Pacing, so the loop does not starve the agent on two cores.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failures)
        });
        Self { stop, task }
    }

    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.task
            .await
            .unwrap_or_else(|e| (0, vec![format!("the request loop panicked: {e}")]))
    }
}
