//! The real kube client (kube 5, through a kubeconfig the fake server writes) against the fake
//! API server: CRUD, status patches, watchers across bookmarks, compaction and restarts, lease
//! races, selectors and paging.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fake_apiserver::{FakeApiServer, Options, Verb};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Config, ResourceExt};
use serde_json::json;

type Result<T = ()> = anyhow::Result<T>;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A client built the way the agent builds one: from a kubeconfig file.
async fn client(server: &FakeApiServer) -> Result<Client> {
    let path = std::env::temp_dir().join(format!(
        "fake-apiserver-kubeconfig-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    server.write_kubeconfig(&path)?;
    let kubeconfig = Kubeconfig::read_from(&path)?;
    let _ = std::fs::remove_file(&path);
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn start() -> Result<FakeApiServer> {
    FakeApiServer::start("127.0.0.1:0".parse()?)
}

fn service(name: &str, port: u16) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"ports": [{"port": port}]},
    })
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn api_reason(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) => Some(s.reason.clone()),
        _ => None,
    }
}

type Events<K> = BoxStream<'static, std::result::Result<Event<K>, watcher::Error>>;

/// The next watcher event (errors included), within 5 s.
async fn next<K>(s: &mut Events<K>) -> Result<std::result::Result<Event<K>, watcher::Error>> {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .map_err(|_| anyhow::anyhow!("no watcher event within 5 s"))?
        .ok_or_else(|| anyhow::anyhow!("the watcher stream ended"))
}

/// The next successful event, failing on an error.
async fn next_ok<K: std::fmt::Debug>(s: &mut Events<K>) -> Result<Event<K>> {
    Ok(next(s).await??)
}

/// Skip to the next `Init`, then collect the names of a whole initial list (`InitApply`s up
/// to `InitDone`). Errors before `Init` are returned in the first element.
async fn relist<K: kube::Resource>(s: &mut Events<K>) -> Result<(Vec<String>, BTreeSet<String>)> {
    let mut errors = Vec::new();
    loop {
        match next(s).await? {
            Ok(Event::Init) => break,
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    let mut names = BTreeSet::new();
    loop {
        match next(s).await?? {
            Event::InitApply(o) => {
                names.insert(o.name_any());
            }
            Event::InitDone => return Ok((errors, names)),
            other => anyhow::bail!(
                "unexpected event during the initial list: {:?}",
                kind(&other)
            ),
        }
    }
}

fn kind<K>(e: &Event<K>) -> &'static str {
    match e {
        Event::Init => "Init",
        Event::InitApply(_) => "InitApply",
        Event::InitDone => "InitDone",
        Event::Apply(_) => "Apply",
        Event::Delete(_) => "Delete",
    }
}

#[tokio::test]
async fn crud_conflicts_and_status_patches() -> Result {
    let server = start()?;
    server.apply(&service("web", 80))?;
    let client = client(&server).await?;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");

    // list and get
    let list = services.list(&ListParams::default()).await?;
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.metadata.resource_version,
        Some(server.resource_version().to_string())
    );
    let web = services.get("web").await?;
    assert_eq!(
        web.spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .map(Vec::len),
        Some(1)
    );
    assert!(web.metadata.uid.is_some() && web.metadata.creation_timestamp.is_some());
    assert_eq!(
        api_code(&services.get("nope").await.unwrap_err()),
        Some(404)
    );

    // create, and create again
    let api_svc: Service = serde_json::from_value(service("api", 8080))?;
    let created = services.create(&PostParams::default(), &api_svc).await?;
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    let again = services
        .create(&PostParams::default(), &api_svc)
        .await
        .unwrap_err();
    assert_eq!(api_code(&again), Some(409));
    assert_eq!(api_reason(&again).as_deref(), Some("AlreadyExists"));

    // replace with a stale resourceVersion → 409 Conflict; with the current one → OK
    let stale = services.get("web").await?;
    let mut changed = service("web", 81);
    changed["metadata"]["labels"]["changed"] = json!("yes");
    server.apply(&changed)?;
    let err = services
        .replace("web", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert_eq!(api_code(&err), Some(409));
    assert_eq!(api_reason(&err).as_deref(), Some("Conflict"));
    let mut current = services.get("web").await?;
    current
        .labels_mut()
        .insert("replaced".into(), "true".into());
    let replaced = services
        .replace("web", &PostParams::default(), &current)
        .await?;
    assert_eq!(
        replaced.labels().get("replaced").map(String::as_str),
        Some("true")
    );
    assert_ne!(replaced.resource_version(), current.resource_version());

    // Ingress status: merge patch, then server-side apply, on /status
    server.apply(&json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "site", "namespace": "default"},
        "spec": {"ingressClassName": "xdp", "rules": [{"host": "example.test"}]},
    }))?;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), "default");
    let merged = ingresses
        .patch_status(
            "site",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}},
                                 "spec": {"ingressClassName": "ignored"}}),
            ),
        )
        .await?;
    let ip = |i: &Ingress| {
        i.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .and_then(|v| v.first())
            .and_then(|e| e.ip.clone())
    };
    assert_eq!(ip(&merged).as_deref(), Some("192.0.2.1"));
    assert_eq!(
        merged
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_deref()),
        Some("xdp"),
        "a status patch changes only .status"
    );
    let applied = ingresses
        .patch_status(
            "site",
            &PatchParams::apply("xdp-ingress").force(),
            &Patch::Apply(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "site"},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}},
            })),
        )
        .await?;
    assert_eq!(ip(&applied).as_deref(), Some("192.0.2.2"));
    // a patch of the main resource leaves .status alone
    let main = ingresses
        .patch(
            "site",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}},
                                 "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}})),
        )
        .await?;
    assert_eq!(ip(&main).as_deref(), Some("192.0.2.2"));
    assert_eq!(main.labels().get("x").map(String::as_str), Some("y"));
    // server-side apply creates a missing object
    let created = ingresses
        .patch(
            "fresh",
            &PatchParams::apply("xdp-ingress"),
            &Patch::Apply(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "fresh"}, "spec": {"ingressClassName": "xdp"},
            })),
        )
        .await?;
    assert!(created.metadata.uid.is_some());

    // the request log saw the patch bodies and content types
    let patches = server.requests_for(Verb::Patch, "ingresses");
    assert_eq!(patches.len(), 4);
    assert_eq!(patches[0].subresource.as_deref(), Some("status"));
    assert_eq!(
        patches[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert!(patches[0].body.contains("192.0.2.1"));
    assert_eq!(
        patches[1].content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert!(patches[1].query.contains("fieldManager=xdp-ingress"));

    // delete
    services.delete("api", &DeleteParams::default()).await?;
    assert!(server.get("v1", "Service", "default", "api").is_none());
    assert_eq!(
        api_code(
            &services
                .delete("api", &DeleteParams::default())
                .await
                .unwrap_err()
        ),
        Some(404)
    );
    // /version
    let version = client.apiserver_version().await?;
    assert_eq!(version.major, "1");
    Ok(())
}

#[tokio::test]
async fn watcher_sees_init_apply_delete_across_bookmarks() -> Result {
    let server = FakeApiServer::start_with(
        "127.0.0.1:0".parse()?,
        Options {
            bookmark_interval: Duration::from_millis(150),
        },
    )?;
    server.apply(&service("a", 80))?;
    server.apply(&service("b", 80))?;
    let client = client(&server).await?;
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let mut events: Events<Service> = watcher(api.clone(), watcher::Config::default()).boxed();

    let (errors, names) = relist(&mut events).await?;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(names, BTreeSet::from(["a".to_string(), "b".to_string()]));

    // let a few BOOKMARKs go by: they must not surface or break the watch
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.apply(&service("a", 8080))?;
    match next_ok(&mut events).await? {
        Event::Apply(s) => {
            assert_eq!(s.name_any(), "a");
            let port = s
                .spec
                .and_then(|s| s.ports)
                .and_then(|p| p.first().map(|p| p.port));
            assert_eq!(port, Some(8080));
        }
        other => anyhow::bail!("expected Apply, got {}", kind(&other)),
    }
    server.delete_as::<Service>("default", "b")?;
    match next_ok(&mut events).await? {
        Event::Delete(s) => assert_eq!(s.name_any(), "b"),
        other => anyhow::bail!("expected Delete, got {}", kind(&other)),
    }
    // a change made through the API reaches the watcher too
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"via": "api"}}})),
    )
    .await?;
    match next_ok(&mut events).await? {
        Event::Apply(s) => assert_eq!(s.labels().get("via").map(String::as_str), Some("api")),
        other => anyhow::bail!("expected Apply, got {}", kind(&other)),
    }
    assert_eq!(server.count(Verb::List, "services"), 1);
    assert_eq!(
        server.count(Verb::Watch, "services"),
        1,
        "bookmarks caused no re-watch"
    );
    let watch = &server.requests_for(Verb::Watch, "services")[0];
    assert!(
        watch.query.contains("allowWatchBookmarks=true"),
        "{}",
        watch.query
    );

    // the raw watch shows the BOOKMARKs themselves
    let mut raw = api
        .watch(&WatchParams::default().timeout(2), "0")
        .await?
        .boxed();
    let mut saw_added = 0;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(3), raw.try_next())
            .await
            .map_err(|_| anyhow::anyhow!("no bookmark"))??;
        match ev {
            Some(WatchEvent::Added(_)) => saw_added += 1,
            Some(WatchEvent::Bookmark(b)) => {
                assert_eq!(
                    b.metadata.resource_version,
                    server.resource_version().to_string()
                );
                break;
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        saw_added, 1,
        "a watch from resourceVersion 0 starts with the current objects"
    );
    // timeoutSeconds ends the stream
    let ended = tokio::time::timeout(Duration::from_secs(4), async {
        while let Some(ev) = raw.next().await {
            ev?;
        }
        Ok::<_, kube::Error>(())
    })
    .await;
    assert!(
        matches!(ended, Ok(Ok(()))),
        "the watch ended at timeoutSeconds"
    );
    Ok(())
}

#[tokio::test]
async fn watcher_relists_after_compaction_and_restart() -> Result {
    let server = start()?;
    for name in ["a", "b", "c"] {
        server.apply(&service(name, 80))?;
    }
    let client = client(&server).await?;
    let api: Api<Service> = Api::namespaced(client, "default");
    // no bookmarks: a bookmark after the compaction would carry a fresh, valid resourceVersion
    let mut events: Events<Service> = watcher(api, watcher::Config::default().disable_bookmarks())
        .default_backoff()
        .boxed();
    let (_, names) = relist(&mut events).await?;
    assert_eq!(names.len(), 3);

    // poll until the watch is connected (the watcher only watches while polled)
    while server.count(Verb::Watch, "services") == 0 {
        let polled = tokio::time::timeout(Duration::from_millis(50), events.next()).await;
        assert!(polled.is_err(), "no event expected yet");
    }

    server.expire_resource_versions();
    server.stop();
    assert!(!server.is_running());
    server.delete_as::<Service>("default", "b")?;
    server.apply(&service("d", 80))?;
    server.restart()?;

    let (errors, names) = relist(&mut events).await?;
    assert_eq!(
        names,
        BTreeSet::from(["a".to_string(), "c".to_string(), "d".to_string()]),
        "the relist has the objects as they are now"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("Expired") || e.contains("expired")),
        "the re-watch from the old resourceVersion got 410: {errors:?}"
    );
    assert_eq!(server.count(Verb::List, "services"), 2);
    let watches = server.requests_for(Verb::Watch, "services");
    assert!(
        watches.len() >= 2,
        "one watch before the restart, one that got the ERROR event after"
    );

    // and it goes on watching
    server.apply(&service("e", 80))?;
    match next_ok(&mut events).await? {
        Event::Apply(s) => assert_eq!(s.name_any(), "e"),
        other => anyhow::bail!("expected Apply, got {}", kind(&other)),
    }
    Ok(())
}

#[tokio::test]
async fn lease_replace_race_has_one_winner() -> Result {
    let server = start()?;
    server.apply(&json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "xdp-ingress-leader", "namespace": "kube-system"},
        "spec": {"leaseDurationSeconds": 15},
    }))?;
    let one: Api<Lease> = Api::namespaced(client(&server).await?, "kube-system");
    let two: Api<Lease> = Api::namespaced(client(&server).await?, "kube-system");
    for round in 0..10 {
        let seen = one.get("xdp-ingress-leader").await?;
        let claim = |holder: &str| {
            let mut l = seen.clone();
            if let Some(spec) = l.spec.as_mut() {
                spec.holder_identity = Some(holder.to_string());
                spec.lease_transitions = Some(round);
            }
            l
        };
        let (a, b) = (claim("node-1"), claim("node-2"));
        let pp = PostParams::default();
        let (ra, rb) = tokio::join!(
            one.replace("xdp-ingress-leader", &pp, &a),
            two.replace("xdp-ingress-leader", &pp, &b)
        );
        let winner = match (&ra, &rb) {
            (Ok(_), Err(e)) if api_code(e) == Some(409) => "node-1",
            (Err(e), Ok(_)) if api_code(e) == Some(409) => "node-2",
            _ => anyhow::bail!("round {round}: expected one winner and one 409: {ra:?} {rb:?}"),
        };
        let stored = server
            .get_as::<Lease>("kube-system", "xdp-ingress-leader")?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity);
        assert_eq!(stored.as_deref(), Some(winner));
    }
    assert_eq!(server.count(Verb::Update, "leases"), 20);
    Ok(())
}

#[tokio::test]
async fn selectors_filter_lists_and_watches() -> Result {
    let server = start()?;
    let secret = |name: &str, ty: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "type": ty,
               "metadata": {"name": name, "namespace": "apps", "labels": {"tier": ty.len().to_string()}},
               "data": {}})
    };
    server.apply(&secret("tls-1", "kubernetes.io/tls"))?;
    server.apply(&secret("opaque-1", "Opaque"))?;
    let client = client(&server).await?;
    let api: Api<Secret> = Api::all(client.clone());
    let mut events: Events<Secret> = watcher(
        api.clone(),
        watcher::Config::default().fields("type=kubernetes.io/tls"),
    )
    .boxed();
    let (_, names) = relist(&mut events).await?;
    assert_eq!(names, BTreeSet::from(["tls-1".to_string()]));

    server.apply(&secret("opaque-2", "Opaque"))?;
    server.apply(&secret("tls-2", "kubernetes.io/tls"))?;
    match next_ok(&mut events).await? {
        Event::Apply(s) => assert_eq!(s.name_any(), "tls-2"),
        other => anyhow::bail!("expected Apply(tls-2), got {}", kind(&other)),
    }
    // a Secret that stops matching leaves the watch as a Delete
    server.apply(&secret("tls-1", "Opaque"))?;
    match next_ok(&mut events).await? {
        Event::Delete(s) => assert_eq!(s.name_any(), "tls-1"),
        other => anyhow::bail!("expected Delete(tls-1), got {}", kind(&other)),
    }

    let fields = api
        .list(&ListParams::default().fields("metadata.name=opaque-2"))
        .await?;
    assert_eq!(fields.items.len(), 1);
    let labels = api.list(&ListParams::default().labels("tier=6")).await?;
    let names: BTreeSet<_> = labels.items.iter().map(|s| s.name_any()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["opaque-1".into(), "opaque-2".into(), "tls-1".into()])
    );
    let bad = api
        .list(&ListParams::default().labels("tier in (6"))
        .await
        .unwrap_err();
    assert_eq!(api_code(&bad), Some(400));
    let namespaced: Api<Secret> = Api::namespaced(client, "other");
    assert!(namespaced
        .list(&ListParams::default())
        .await?
        .items
        .is_empty());
    Ok(())
}

#[tokio::test]
async fn paging_and_expired_continue_tokens() -> Result {
    let server = start()?;
    for i in 0..7 {
        server.apply(&json!({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": format!("cm-{i}"), "namespace": "default"}}))?;
    }
    let client = client(&server).await?;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut names = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let mut lp = ListParams::default().limit(3);
        lp.continue_token = token.clone();
        let page = api.list(&lp).await?;
        pages += 1;
        names.extend(page.items.iter().map(|c| c.name_any()));
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(names, (0..7).map(|i| format!("cm-{i}")).collect::<Vec<_>>());

    // a continue token from before a compaction gets 410 Gone
    let first = api.list(&ListParams::default().limit(2)).await?;
    server.expire_resource_versions();
    let mut lp = ListParams::default().limit(2);
    lp.continue_token = first.metadata.continue_;
    let err = api.list(&lp).await.unwrap_err();
    assert_eq!(api_code(&err), Some(410));
    assert_eq!(api_reason(&err).as_deref(), Some("Expired"));

    // the watcher pages too
    let mut events: Events<ConfigMap> =
        watcher(api, watcher::Config::default().page_size(2)).boxed();
    let (_, listed) = relist(&mut events).await?;
    assert_eq!(listed.len(), 7);
    assert_eq!(server.count(Verb::List, "configmaps"), 3 + 2 + 4);
    Ok(())
}

#[tokio::test]
async fn injected_errors_and_restart_keep_the_client_working() -> Result {
    let server = start()?;
    server.apply(&service("web", 80))?;
    let client = client(&server).await?;
    let api: Api<Service> = Api::namespaced(client, "default");
    server.inject_error(Verb::Get, "services", 500, 1)?;
    assert_eq!(api_code(&api.get("web").await.unwrap_err()), Some(500));
    api.get("web").await?;
    // kube 5 retries 429/503/504 by itself (Config::default_retry)
    server.clear_requests();
    server.inject_error(Verb::Get, "services", 503, 1)?;
    api.get("web").await?;
    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 200]);
    let before = server.resource_version();
    server.restart()?;
    let web = api.get("web").await?;
    assert_eq!(web.resource_version(), Some(before.to_string()));
    server.stop();
    assert!(api.get("web").await.is_err());
    server.restart()?;
    api.get("web").await?;
    Ok(())
}

/// A plain HTTP/1.1 exchange, for what the typed client cannot send.
fn raw(
    server: &FakeApiServer,
    method: &str,
    path: &str,
    ctype: &str,
    body: &str,
) -> Result<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.addr())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // de-chunk: size line, data, CRLF, ...
        let mut rest = body;
        let mut data = String::new();
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            data.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        data
    } else {
        body.to_string()
    };
    Ok((
        code,
        serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null),
    ))
}

#[test]
fn malformed_requests_get_status_objects() -> Result {
    let server = start()?;
    server.apply(&service("web", 80))?;
    let cases = [
        (
            "POST",
            "/api/v1/namespaces/default/services",
            "application/json",
            "{not json",
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/services",
            "application/json",
            "[1]",
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/services",
            "application/json",
            r#"{"kind":"Pod"}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/namespaces/default/services",
            "application/json",
            r#"{"metadata":{}}"#,
            422,
        ),
        (
            "PUT",
            "/api/v1/namespaces/default/services/web",
            "application/json",
            r#"{"metadata":{"name":"other"}}"#,
            400,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/services/web",
            "application/json-patch+json",
            "[]",
            415,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/services/web",
            "application/merge-patch+json",
            "3",
            400,
        ),
        (
            "PATCH",
            "/api/v1/namespaces/default/services/web",
            "application/apply-patch+yaml",
            "a: [",
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/services?limit=x",
            "",
            "",
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/services?watch=1&resourceVersion=abc",
            "",
            "",
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/services?continue=garbage",
            "",
            "",
            400,
        ),
        (
            "GET",
            "/api/v1/namespaces/default/services?fieldSelector=nonsense",
            "",
            "",
            400,
        ),
        ("GET", "/api/v1/namespaces/default/widgets", "", "", 404),
        (
            "GET",
            "/api/v1/namespaces/default/services/web/scale",
            "",
            "",
            404,
        ),
        (
            "DELETE",
            "/api/v1/namespaces/default/services/web",
            "application/json",
            r#"{"preconditions":{"resourceVersion":"1"}}"#,
            409,
        ),
    ];
    for (method, path, ctype, body, want) in cases {
        let (code, status) = raw(&server, method, path, ctype, body)?;
        assert_eq!(code, want, "{method} {path} {body}: {status}");
        assert_eq!(status["kind"], "Status", "{method} {path}");
        assert_eq!(status["code"], want);
    }
    // the server still works
    let (code, list) = raw(&server, "GET", "/api/v1/services", "", "")?;
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let (code, discovery) = raw(&server, "GET", "/apis/networking.k8s.io/v1", "", "")?;
    assert_eq!(code, 200);
    assert_eq!(discovery["kind"], "APIResourceList");
    // a watch from a compacted resourceVersion: 200 and a single ERROR event with 410
    server.expire_resource_versions();
    let (code, ev) = raw(
        &server,
        "GET",
        "/api/v1/services?watch=true&resourceVersion=1",
        "",
        "",
    )?;
    assert_eq!(code, 200);
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    Ok(())
}

#[tokio::test]
async fn watcher_resumes_after_restart_without_compaction() -> Result {
    let server = start()?;
    server.apply(&service("a", 80))?;
    server.apply(&service("b", 80))?;
    let api: Api<Service> = Api::namespaced(client(&server).await?, "default");
    let mut events: Events<Service> = watcher(api, watcher::Config::default()).boxed();
    relist(&mut events).await?;
    while server.count(Verb::Watch, "services") == 0 {
        let polled = tokio::time::timeout(Duration::from_millis(50), events.next()).await;
        assert!(polled.is_err(), "no event expected yet");
    }
    server.stop();
    server.delete_as::<Service>("default", "b")?;
    server.restart()?;
    // the history survived the restart: the re-watch from the old resourceVersion replays it
    let mut deleted = None;
    for _ in 0..3 {
        match next(&mut events).await? {
            Ok(Event::Delete(s)) => {
                deleted = Some(s.name_any());
                break;
            }
            Ok(other) => anyhow::bail!("expected Delete, got {}", kind(&other)),
            Err(_) => {} // the broken connection
        }
    }
    assert_eq!(deleted.as_deref(), Some("b"));
    assert_eq!(server.count(Verb::List, "services"), 1, "no relist");
    assert_eq!(server.count(Verb::Watch, "services"), 2);
    Ok(())
}

#[tokio::test]
async fn event_recorder_creates_then_patches_a_series() -> Result {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use kube::runtime::events::{Event as Ev, EventType, Recorder, Reporter};
    let server = start()?;
    let recorder = Recorder::new(
        client(&server).await?,
        Reporter {
            controller: "xdp-ingress".into(),
            instance: Some("node-1".into()),
        },
    );
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some("web".into()),
        namespace: Some("apps".into()),
        ..Default::default()
    };
    let ev = Ev {
        type_: EventType::Normal,
        reason: "VipAssigned".into(),
        note: Some("192.0.2.10".into()),
        action: "Assign".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await?;
    recorder.publish(&ev, &reference).await?;
    let events = server.list_as::<K8sEvent>()?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].metadata.namespace.as_deref(), Some("apps"));
    assert_eq!(events[0].series.as_ref().map(|s| s.count), Some(2));
    assert_eq!(server.count(Verb::Create, "events.events.k8s.io"), 1);
    assert_eq!(server.count(Verb::Patch, "events.events.k8s.io"), 1);
    Ok(())
}
