//! kube's watcher against the server's watch: bookmarks, relists after compaction, restarts
//! with and without a compaction.

use std::{collections::BTreeSet, time::Duration};

use fake_apiserver::{FakeApiServer, Options, Verb};
use futures::{stream::BoxStream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::{
    api::{Api, Patch, PatchParams, WatchEvent, WatchParams},
    runtime::{
        watcher::{self, watcher, Event},
        WatchStreamExt,
    },
    ResourceExt,
};
use serde_json::json;

use super::{client, service, start, Result};

pub(crate) type Events<K> = BoxStream<'static, std::result::Result<Event<K>, watcher::Error>>;

/// The next watcher event (errors included), within 5 s.
pub(crate) async fn next<K>(
    s: &mut Events<K>,
) -> Result<std::result::Result<Event<K>, watcher::Error>> {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .map_err(|_| anyhow::anyhow!("no watcher event within 5 s"))?
        .ok_or_else(|| anyhow::anyhow!("the watcher stream ended"))
}

/// The next successful event, failing on an error.
pub(crate) async fn next_ok<K: std::fmt::Debug>(s: &mut Events<K>) -> Result<Event<K>> {
    Ok(next(s).await??)
}

/// Skip to the next `Init`, then collect the names of a whole initial list (`InitApply`s up
/// to `InitDone`). Errors before `Init` are returned in the first element.
pub(crate) async fn relist<K: kube::Resource>(
    s: &mut Events<K>,
) -> Result<(Vec<String>, BTreeSet<String>)> {
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

pub(crate) fn kind<K>(e: &Event<K>) -> &'static str {
    match e {
        Event::Init => "Init",
        Event::InitApply(_) => "InitApply",
        Event::InitDone => "InitDone",
        Event::Apply(_) => "Apply",
        Event::Delete(_) => "Delete",
    }
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
