//! Failures a client must survive: injected error codes, restarts, and malformed requests sent
//! raw, each answered with a `Status` object.

use fake_apiserver::Verb;
use k8s_openapi::api::core::v1::Service;
use kube::{api::Api, ResourceExt};

use super::{api_code, client, raw, service, start, Result};

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
