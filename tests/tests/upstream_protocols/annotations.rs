//! Bad `backend-protocol` / `proxy-ssl-*` values: `validate` names the annotation, the agent
//! answers 503 with the reason on that Ingress's routes, and the other Ingresses serve.

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::json;
use xdp_ingress_tests::{
    agent, ensure_eq,
    proxy::{
        backends::HttpBackend,
        clients::{get, pooled},
        manifests::{our_class, Manifests},
        services_for, TestProxy,
    },
};

use super::annotated_ingress;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_values_are_reported_and_only_their_routes_answer_503() -> Result<()> {
    let backend = HttpBackend::start("plain").await?;
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut objects = services_for(&[&backend]);
    objects.push(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "not-pem", "namespace": "default"},
        "type": "kubernetes.io/tls",
        "stringData": {"ca.crt": "not a certificate", "tls.crt": "x", "tls.key": "y"},
    }));
    manifests.write("objects.yaml", &objects)?;
    manifests.write(
        "ingresses.yaml",
        &[
            annotated_ingress(
                "good",
                "good.example",
                "plain",
                &[("backend-protocol", "AUTO_HTTP")],
            ),
            annotated_ingress(
                "fcgi",
                "fcgi.example",
                "plain",
                &[("backend-protocol", "FCGI")],
            ),
            annotated_ingress(
                "bad-pem",
                "bad-pem.example",
                "plain",
                &[
                    ("backend-protocol", "HTTPS"),
                    ("proxy-ssl-verify", "on"),
                    ("proxy-ssl-secret", "default/not-pem"),
                ],
            ),
        ],
    )?;

    // `validate` fails, naming the object, the annotation and why.
    let validated = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(agent::binary()?)
            .arg("validate")
            .arg("--manifests")
            .arg(manifests.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("validate did not finish")??;
    let stderr = String::from_utf8_lossy(&validated.stderr);
    anyhow::ensure!(
        !validated.status.success(),
        "validate should fail:\n{stderr}"
    );
    let says = |what: &[&str]| stderr.lines().any(|l| what.iter().all(|w| l.contains(w)));
    anyhow::ensure!(
        says(&[
            "Ingress default/fcgi",
            "metadata.annotations[\"nginx.ingress.kubernetes.io/backend-protocol\"]",
            "not supported",
        ]),
        "{stderr}"
    );
    anyhow::ensure!(
        says(&[
            "Ingress default/bad-pem",
            "metadata.annotations[\"nginx.ingress.kubernetes.io/proxy-ssl-secret\"]",
            "ca.crt",
        ]),
        "{stderr}"
    );
    anyhow::ensure!(!says(&["Ingress default/good"]), "{stderr}");

    // The agent serves the good Ingress and answers 503 with the reason on the others.
    let proxy = TestProxy::start(manifests, &[])?;
    let client = pooled();
    let reply = get(&client, proxy.http, "good.example", "/").await?;
    ensure_eq!(reply.status, 200, "AUTO_HTTP is HTTP: {}", reply.text());
    let reply = get(&client, proxy.http, "fcgi.example", "/").await?;
    ensure_eq!(reply.status, 503, "{}", reply.text());
    anyhow::ensure!(
        reply
            .text()
            .contains("nginx.ingress.kubernetes.io/backend-protocol"),
        "{}",
        reply.text()
    );
    let reply = get(&client, proxy.http, "bad-pem.example", "/").await?;
    ensure_eq!(reply.status, 503, "{}", reply.text());
    anyhow::ensure!(reply.text().contains("ca.crt"), "{}", reply.text());
    Ok(())
}
