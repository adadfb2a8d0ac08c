//! Lists and watches narrowed by label and field selectors, and paging with continue tokens.

use std::collections::BTreeSet;

use fake_apiserver::Verb;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    api::{Api, ListParams},
    runtime::watcher::{self, watcher, Event},
    ResourceExt,
};
use serde_json::json;

use super::{
    api_code, api_reason, client, start,
    watch::{kind, next_ok, relist, Events},
    Result,
};

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
