//! Writes through the typed client: CRUD with conflicts, status patches and server-side apply,
//! the lease race the leader election depends on, and the event recorder's create-then-patch.

use fake_apiserver::Verb;
use k8s_openapi::api::{coordination::v1::Lease, core::v1::Service, networking::v1::Ingress};
use kube::{
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    ResourceExt,
};
use serde_json::json;

use super::{api_code, api_reason, client, service, start, Result};

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
