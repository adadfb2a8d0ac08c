//! kube-proxy's answers, byte for byte, and the freshness rule of the node health server.

use super::*;
use crate::{health::server::Prepared, model::ObjectName};

fn check(local_endpoints: u32) -> HealthCheckPlan {
    HealthCheckPlan {
        service: ObjectName {
            namespace: "demo".into(),
            name: "web".into(),
        },
        local_endpoints,
    }
}

async fn body(response: http::Response<http_body_util::Full<bytes::Bytes>>) -> String {
    use http_body_util::BodyExt as _;
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("full body")
        .to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn service_answers_like_kube_proxy() {
    let response = server::service_answer(&Prepared::new(check(2)), true);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(
        body(response).await,
        "{\n\t\"service\": {\n\t\t\"namespace\": \"demo\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
    );
    let none = server::service_answer(&Prepared::new(check(0)), true);
    assert_eq!(none.status(), 503);
    let unhealthy = server::service_answer(&Prepared::new(check(3)), false);
    assert_eq!(unhealthy.status(), 503);
    let text = body(unhealthy).await;
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(json["localEndpoints"], 3);
    assert_eq!(json["serviceProxyHealthy"], false);
}

#[tokio::test]
async fn node_health_is_unhealthy_until_programmed_then_while_a_change_waits_too_long() {
    let proxy = ProxyHealth::default();
    let now = now_nanos();
    let never = server::node_answer("/healthz", &proxy, now);
    assert_eq!(never.status(), 503);
    assert!(body(never)
        .await
        .starts_with("{\"lastUpdated\": \"0001-01-01 00:00:00 +0000 UTC\",\"currentTime\": \""));

    proxy.updated();
    let now = now_nanos();
    let healthy = server::node_answer("/healthz", &proxy, now);
    assert_eq!(healthy.status(), 200);
    let text = body(healthy).await;
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(json["nodeEligible"], true);
    assert_eq!(json["lastUpdated"], json["currentTime"], "{text}");
    let livez = body(server::node_answer("/livez", &proxy, now)).await;
    assert!(!livez.contains("nodeEligible"), "{livez}");

    // A change queued: healthy until it has waited HEALTH_TIMEOUT.
    proxy.queued_update();
    let timeout = i64::try_from(HEALTH_TIMEOUT.as_nanos()).expect("fits");
    assert_eq!(server::node_answer("/healthz", &proxy, now).status(), 200);
    let late = now + timeout + 1_000_000_000;
    assert_eq!(server::node_answer("/healthz", &proxy, late).status(), 503);
    assert_eq!(server::node_answer("/livez", &proxy, late).status(), 503);
    proxy.updated();
    assert!(proxy.is_healthy());
    assert_eq!(server::node_answer("/other", &proxy, now).status(), 404);
}

#[test]
fn times_print_as_go_prints_them() {
    assert_eq!(go_time(None), "0001-01-01 00:00:00 +0000 UTC");
    assert_eq!(
        go_time(Some(1_767_225_600_123_456_789)),
        "2026-01-01 00:00:00.123456789 +0000 UTC"
    );
    assert_eq!(
        go_time(Some(1_767_225_600_000_000_000)),
        "2026-01-01 00:00:00 +0000 UTC"
    );
}
