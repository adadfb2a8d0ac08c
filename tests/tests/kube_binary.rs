//! Cluster mode end to end with the agent binary (`run --kubeconfig`) inside a namespace: in
//! the L4 lab through a relist, a long debounce, readiness only once every kind is listed, and
//! `--watch-namespace`.
//!
//! The binary is `$XDP_INGRESS_BIN` or `target/<profile>/xdp-ingress` (build it with
//! `cargo build -p ingress-userspace`); the fake API server runs in the test's namespace. Root
//! is needed: run as another user, the tests say so and skip.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use fake_apiserver::{FakeApiServer, Options, Verb};
use serde_json::json;
use xdp_ingress_tests::{
    agent::{self, Agent, AgentProcess},
    kube::{
        apply_web, kubeconfig,
        objects::{self, OUR_CLASS},
        served_by, start_binary, status_of, Scene,
    },
    lab::{self, BackendLink, Lab, LabConfig},
    proxy::{
        backends::HttpBackend,
        clients::{self, pooled},
    },
    root::root_or_skip,
};

/// The namespace of the scenario objects.
const NS: &str = "shop";

/// The start of the tests that run the binary against the fake API server: `None` (skipped)
/// when not root, else their scene, the agent binary and the scene's namespace to run it in.
fn binary_scene(test: &str, scene: &str) -> Result<Option<(Scene, PathBuf, String)>> {
    if !root_or_skip(test) {
        return Ok(None);
    }
    let scene = Scene::new(scene)?;
    let binary = agent::binary()?;
    let netns = scene.netns().name().to_string();
    Ok(Some((scene, binary, netns)))
}

/// SIGTERM; the agent must exit cleanly.
fn stop(agent: AgentProcess) -> Result<()> {
    let (status, _) = agent.terminate(Duration::from_secs(30))?;
    ensure!(status.success(), "exit {status}");
    Ok(())
}

/// The Service of deploy/examples/web.yaml, for the lab's backends: VIP 203.0.113.10,
/// TCP 80 → 8080, UDP 53 → 8053.
fn lab_service() -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "demo", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "protocol": "TCP", "port": lab::VIP_TCP_PORT, "targetPort": lab::TCP_PORT},
                {"name": "dns", "protocol": "UDP", "port": lab::VIP_UDP_PORT, "targetPort": lab::UDP_PORT},
            ],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": lab::VIP.to_string()}]}},
    })
}

/// The lab Service's EndpointSlice with these ready endpoints.
fn lab_slice(endpoints: &[Ipv4Addr]) -> serde_json::Value {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|addr| json!({"addresses": [addr.to_string()], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-e2e", "namespace": "demo",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "protocol": "TCP", "port": lab::TCP_PORT},
            {"name": "dns", "protocol": "UDP", "port": lab::UDP_PORT},
        ],
        "endpoints": endpoints,
    })
}

/// End to end: the agent binary in the lab's node namespace watching a fake API server there;
/// TCP connections from the client to the VIP are answered before, during and after a relist
/// forced by compaction and a server restart; a change after the relist is followed.
#[test]
fn lab_binary_keeps_forwarding_through_a_relist() -> Result<()> {
    if !root_or_skip("lab_binary_keeps_forwarding_through_a_relist") {
        return Ok(());
    }
    let binary = agent::binary()?;
    let mut lab = Lab::up(&LabConfig::for_test("xk-lab", BackendLink::Shared))?;
    lab.start_servers()?;
    lab.check_backends(ANSWER)?;
    let server =
        Arc::new(lab.node().run_inside(|| {
            FakeApiServer::start_with("127.0.0.1:0".parse()?, Options::default())
        })?);
    server.apply(&lab_service())?;
    let all: Vec<Ipv4Addr> = lab.backends().iter().map(|b| b.addr).collect();
    server.apply(&lab_slice(&all))?;
    let config = kubeconfig(&server)?;
    let mut args = vec![
        "--http-listen",
        "off",
        "--https-listen",
        "off",
        "--admin-listen",
        "off",
        "--maglev-slots",
        "1048576",
        "--bpffs",
        "off",
    ];
    let interfaces = lab.node_interfaces();
    for interface in &interfaces {
        args.extend(["--interface", interface.as_str()]);
    }
    let mut agent = Agent::kubeconfig(config.path())
        .binary(&binary)
        .in_netns(lab.node().name())
        .args(&args)
        .start()?;
    agent.wait_running(Duration::from_secs(30))?;
    connections_spread_over_the_backends(&lab)?;
    no_connection_fails_across_a_relist(&lab, &server)?;
    a_backend_leaving_the_slice_gets_no_more_connections(&lab, &server)?;
    let (status, output) = agent.terminate(Duration::from_secs(30))?;
    ensure!(
        status.success(),
        "the agent exited with {status}:\n{}",
        output.join("\n")
    );
    drop(lab);
    Ok(())
}

/// How long a connection through the lab may take to answer.
const ANSWER: Duration = Duration::from_secs(1);

/// Connections from the client to the VIP are answered by the lab's backends only.
fn connections_spread_over_the_backends(lab: &Lab) -> Result<()> {
    let names: BTreeSet<String> = lab.backends().iter().map(|b| b.name.clone()).collect();

    let spread = |n: usize| {
        lab.client().run_inside(move || {
            let mut counts = BTreeMap::new();
            for i in 0..n {
                let name = lab::tcp_ask(lab::vip_tcp(), ANSWER)
                    .with_context(|| format!("connection {i} of {n}"))?;
                *counts.entry(name).or_insert(0usize) += 1;
            }
            Ok(counts)
        })
    };
    let counts = spread(30)?;
    ensure!(
        counts.keys().all(|n| names.contains(n)),
        "answered by {counts:?}, backends {names:?}"
    );

    Ok(())
}

/// Connections made continuously while the API server compacts, restarts and the agent relists
/// all succeed, before, during and after the relist.
fn no_connection_fails_across_a_relist(lab: &Lab, server: &Arc<FakeApiServer>) -> Result<()> {
    // Connect continuously while the server compacts, restarts and the agent relists.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let lists_before = (
        server.count(Verb::List, "services"),
        server.count(Verb::List, "endpointslices"),
    );
    std::thread::scope(|scope| -> Result<()> {
        let (stop2, answered2, failures2) = (stop.clone(), answered.clone(), failures.clone());
        let connecting = scope.spawn(|| {
            lab.client().run_inside(move || {
                while !stop2.load(Ordering::SeqCst) {
                    match lab::tcp_ask(lab::vip_tcp(), ANSWER) {
                        Ok(_) => answered2.fetch_add(1, Ordering::SeqCst),
                        Err(error) => {
                            failures2.lock().unwrap().push(format!("{error:#}"));
                            0
                        }
                    };
                }
                Ok(())
            })
        });
        let outcome = (|| -> Result<()> {
            let at_start = answered.load(Ordering::SeqCst);
            let restart = server.clone();
            lab.node().run_inside(move || {
                restart.expire_resource_versions();
                restart.stop();
                restart.restart()
            })?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while server.count(Verb::List, "services") <= lists_before.0
                || server.count(Verb::List, "endpointslices") <= lists_before.1
            {
                ensure!(
                    Instant::now() < deadline,
                    "the agent did not relist within 30 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            // And some more connections after the relist.
            let after = answered.load(Ordering::SeqCst);
            while answered.load(Ordering::SeqCst) < after + 50 {
                ensure!(
                    Instant::now() < deadline,
                    "connections stalled after the relist"
                );
                ensure!(!connecting.is_finished(), "the client loop ended");
                std::thread::sleep(Duration::from_millis(20));
            }
            ensure!(answered.load(Ordering::SeqCst) > at_start);
            Ok(())
        })();
        stop.store(true, Ordering::SeqCst);
        let joined = connecting
            .join()
            .map_err(|_| anyhow::anyhow!("the client loop panicked"))?;
        outcome?;
        joined
    })?;
    let failures = failures.lock().unwrap().clone();
    let answered = answered.load(Ordering::SeqCst);
    ensure!(
        failures.is_empty(),
        "{} of {} connections failed across the relist: {:?}",
        failures.len(),
        answered + failures.len(),
        &failures[..failures.len().min(5)]
    );
    println!("lab relist: {answered} connections answered, none failed");

    Ok(())
}

/// The agent still follows the cluster after the relist: a backend that leaves the slice gets
/// no more connections.
fn a_backend_leaving_the_slice_gets_no_more_connections(
    lab: &Lab,
    server: &FakeApiServer,
) -> Result<()> {
    let removed = lab.backends().last().context("no backends")?.name.clone();
    let kept: Vec<Ipv4Addr> = lab
        .backends()
        .iter()
        .filter(|b| b.name != removed)
        .map(|b| b.addr)
        .collect();
    server.apply(&lab_slice(&kept))?;
    // A connection whose handshake straddles the switch may break: by design (issue 2), flows of
    // a backend that left are re-balanced at once, so its final ACK can land on another backend.
    // Count answers only; failures in this phase are not the point.
    let tolerant_spread = |n: usize| {
        lab.client().run_inside(move || {
            let mut counts = BTreeMap::new();
            for _ in 0..n {
                if let Ok(name) = lab::tcp_ask(lab::vip_tcp(), ANSWER) {
                    *counts.entry(name).or_insert(0usize) += 1;
                }
            }
            Ok(counts)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts = tolerant_spread(20)?;
        if !counts.contains_key(&removed) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{removed} still gets connections 20 s after leaving the slice: {counts:?}"
        );
    }
    Ok(())
}

/// The binary applies every change, also with a debounce longer than a few milliseconds: each
/// of five Ingresses, added one after the other, is served within seconds. (A regression test:
/// `run` in main.rs once raced the whole debounce against a 500 ms log tick, and a tick during
/// the debounce dropped a change already taken from the channel.)
#[test]
fn binary_applies_every_change_with_a_long_debounce() -> Result<()> {
    let Some((scene, binary, netns)) =
        binary_scene("binary_applies_every_change_with_a_long_debounce", "xk-deb")?
    else {
        return Ok(());
    };
    scene.run(async move |server: &FakeApiServer| {
        let web = HttpBackend::start("web").await?;
        apply_web(server, NS, web.addr)?;
        let (_config, mut agent) = start_binary(
            &netns,
            &binary,
            server,
            &[
                "--admin-listen",
                "off",
                "--debounce-ms",
                "400",
                "--debounce-max-ms",
                "450",
            ],
        )?;
        agent.wait_running(Duration::from_secs(30))?;
        let http = agent
            .logged_addr("HTTP listening")?
            .context("no HTTP listening line")?;
        let client = pooled();
        for n in 0..5 {
            let host = format!("t{n}.example");
            server.apply(&objects::ingress(
                NS,
                &format!("t{n}"),
                Some(OUR_CLASS),
                &host,
                "/",
                "web",
            ))?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                if served_by(&client, http, &host).await.ok().as_deref() == Some("web") {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    bail!(
                        "Ingress t{n} ({host}) not served 5 s after it was created \
                         (--debounce-ms 400); the agent's output:\n{}",
                        agent.output().join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        stop(agent)
    })
}

/// `/readyz` answers 503 until the first list of every kind has been applied, then 200: with the
/// Ingress list failing (injected 500s, retried by the watcher), the agent's admin listener
/// answers not ready and its proxy does not listen yet; once the list succeeds it turns ready
/// and serves the Ingress.
#[test]
fn readyz_turns_ready_only_once_every_kind_is_listed() -> Result<()> {
    let Some((scene, binary, netns)) = binary_scene(
        "readyz_turns_ready_only_once_every_kind_is_listed",
        "xk-rdy",
    )?
    else {
        return Ok(());
    };
    scene.run(async move |server: &FakeApiServer| {
        let web = HttpBackend::start("web").await?;
        apply_web(server, NS, web.addr)?;
        server.apply(&objects::ingress(
            NS,
            "ready",
            Some(OUR_CLASS),
            "ready.example",
            "/",
            "web",
        ))?;
        const FAILURES: usize = 4;
        server.inject_error(Verb::List, "ingresses.networking.k8s.io", 500, FAILURES)?;
        let (_config, mut agent) =
            start_binary(&netns, &binary, server, &["--admin-listen", "127.0.0.1:0"])?;
        agent.wait_for_line(|l| l.contains("admin listening"), Duration::from_secs(30))?;
        let admin = agent
            .logged_addr("admin listening")?
            .context("no admin listening line")?;
        let client = pooled();
        let readyz = async || -> Result<u16> {
            let reply = clients::get(&client, admin, "admin", "/readyz").await?;
            Ok(reply.status.as_u16())
        };
        // While the Ingress list fails: not ready, and the proxy is not listening.
        let first = readyz().await?;
        let failed_so_far = server.count(Verb::List, "ingresses.networking.k8s.io");
        ensure!(
            first == 503 && failed_so_far <= FAILURES,
            "/readyz answered {first} after {failed_so_far} Ingress list(s), {FAILURES} of them \
             failing:\n{}",
            agent.output().join("\n")
        );
        ensure!(
            !agent.output().iter().any(|l| l.contains("HTTP listening")),
            "the proxy listened before every kind was listed"
        );
        // Then ready, with every kind listed, and serving.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while readyz().await? != 200 {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "not ready 30 s after start:\n{}",
                agent.output().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let lists = server.count(Verb::List, "ingresses.networking.k8s.io");
        ensure!(
            lists > FAILURES,
            "ready after only {lists} Ingress list(s), {FAILURES} of which failed"
        );
        let http = agent
            .logged_addr("HTTP listening")?
            .context("no HTTP listening line")?;
        ensure!(served_by(&client, http, "ready.example").await? == "web");
        stop(agent)
    })
}

/// `--watch-namespace`: only that namespace's objects are served, and the agent lists and
/// watches namespaced kinds only there (never cluster-wide).
#[test]
fn watch_namespace_keeps_the_agent_to_its_namespaces() -> Result<()> {
    let Some((scene, binary, netns)) = binary_scene(
        "watch_namespace_keeps_the_agent_to_its_namespaces",
        "xk-wns",
    )?
    else {
        return Ok(());
    };
    scene.run(async move |server: &FakeApiServer| {
        let web = HttpBackend::start("web").await?;
        for class in objects::classes() {
            server.apply(&class)?;
        }
        for namespace in [NS, "elsewhere"] {
            server.apply(&objects::service(namespace, "web", None, None))?;
            server.apply(&objects::backend_slice(namespace, "web-a", "web", web.addr))?;
            server.apply(&objects::ingress(
                namespace,
                "site",
                Some(OUR_CLASS),
                &format!("{namespace}.example"),
                "/",
                "web",
            ))?;
        }
        let (_config, mut agent) = start_binary(
            &netns,
            &binary,
            server,
            &["--admin-listen", "off", "--watch-namespace", NS],
        )?;
        agent.wait_running(Duration::from_secs(30))?;
        let http = agent
            .logged_addr("HTTP listening")?
            .context("no HTTP listening line")?;
        let client = pooled();
        ensure!(served_by(&client, http, &format!("{NS}.example")).await? == "web");
        let status = status_of(&client, http, "elsewhere.example").await?;
        ensure!(
            status == 404,
            "an Ingress of another namespace answered {status}"
        );
        // A change in the other namespace is not seen either.
        server.apply(&objects::ingress(
            "elsewhere",
            "late",
            Some(OUR_CLASS),
            "late.example",
            "/",
            "web",
        ))?;
        server.apply(&objects::ingress(
            NS,
            "late",
            Some(OUR_CLASS),
            "late-ours.example",
            "/",
            "web",
        ))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while served_by(&client, http, "late-ours.example")
            .await
            .ok()
            .as_deref()
            != Some("web")
        {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "a new Ingress of the watched namespace not served"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = status_of(&client, http, "late.example").await?;
        ensure!(
            status == 404,
            "a new Ingress of another namespace answered {status}"
        );
        // Namespaced kinds were listed and watched in NS only.
        let namespaced = [
            "services",
            "endpointslices.discovery.k8s.io",
            "ingresses.networking.k8s.io",
            "secrets",
        ];
        let mut scoped = 0;
        for record in server.requests() {
            let kind = record.resource.as_deref().unwrap_or_default();
            if namespaced.contains(&kind) && matches!(record.verb, Verb::List | Verb::Watch) {
                ensure!(
                    record.namespace.as_deref() == Some(NS),
                    "a cluster-wide or other-namespace request: {} {}",
                    record.method,
                    record.path
                );
                scoped += 1;
            }
        }
        ensure!(
            scoped >= namespaced.len(),
            "only {scoped} scoped list/watch requests"
        );
        stop(agent)
    })
}

/// `--nginx-configmap` in a cluster: the agent lists and watches that one ConfigMap (by name,
/// in its namespace), its `whitelist-source-range` refuses the client (127.0.0.1) on an
/// Ingress without its own, and a change to it applies without a restart; a second ConfigMap
/// of the namespace is never read.
#[test]
fn nginx_configmap_is_watched_alone_and_applies_live() -> Result<()> {
    let Some((scene, binary, netns)) = binary_scene(
        "nginx_configmap_is_watched_alone_and_applies_live",
        "xk-ncm",
    )?
    else {
        return Ok(());
    };
    scene.run(async move |server: &FakeApiServer| {
        let web = HttpBackend::start("web").await?;
        for class in objects::classes() {
            server.apply(&class)?;
        }
        server.apply(&objects::service(NS, "web", None, None))?;
        server.apply(&objects::backend_slice(NS, "web-a", "web", web.addr))?;
        server.apply(&objects::ingress(
            NS,
            "site",
            Some(OUR_CLASS),
            "site.example",
            "/",
            "web",
        ))?;
        let config_map = |name: &str, range: &str| {
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "ingress-nginx"},
                "data": {"whitelist-source-range": range},
            })
        };
        server.apply(&config_map("ingress-nginx-controller", "192.0.2.0/24"))?;
        server.apply(&config_map("unrelated", "198.51.100.0/24"))?;
        let (_config, mut agent) = start_binary(
            &netns,
            &binary,
            server,
            &[
                "--admin-listen",
                "off",
                "--nginx-configmap",
                "ingress-nginx/ingress-nginx-controller",
            ],
        )?;
        agent.wait_running(Duration::from_secs(30))?;
        let http = agent
            .logged_addr("HTTP listening")?
            .context("no HTTP listening line")?;
        let client = pooled();
        let status = status_of(&client, http, "site.example").await?;
        ensure!(status == 403, "outside the ConfigMap's range: {status}");
        server.apply(&config_map("ingress-nginx-controller", "127.0.0.0/8"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while served_by(&client, http, "site.example")
            .await
            .ok()
            .as_deref()
            != Some("web")
        {
            ensure!(
                tokio::time::Instant::now() < deadline,
                "the ConfigMap's change not applied"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut config_map_calls = 0;
        for record in server.requests() {
            if record.resource.as_deref() != Some("configmaps") {
                continue;
            }
            ensure!(
                record.namespace.as_deref() == Some("ingress-nginx")
                    && record
                        .query
                        .contains("fieldSelector=metadata.name%3Dingress-nginx-controller"),
                "a ConfigMap request beyond the one named: {} {}?{}",
                record.method,
                record.path,
                record.query
            );
            config_map_calls += 1;
        }
        ensure!(config_map_calls >= 2, "the ConfigMap is listed and watched");
        stop(agent)
    })
}
