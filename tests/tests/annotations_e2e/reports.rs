//! Bad and unsupported annotations: a value that does not parse makes that Ingress's routes
//! answer 503 with the reason (other Ingresses of the same host and of other hosts untouched)
//! and is logged; `validate` names every ignored, never-executed or bad annotation at its field;
//! `migrate-report` lists what each annotation of an ingress-nginx class will do.

use std::process::Command;

use anyhow::{ensure, Context as _, Result};
use http::StatusCode;
use xdp_ingress_tests::{
    agent, ensure_eq,
    proxy::{
        backends::HttpBackend,
        clients::{get, pooled},
        ensure_served,
        manifests::{backend_service, our_class, rule, Manifests},
        services_for,
    },
};

use super::{annotated, start};

/// A bad `permanent-redirect-code` and a bad `ssl-redirect`: that Ingress's path answers 503
/// naming both, the other Ingress's path on the same host and another host are served, and the
/// agent logs the problem at its field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_value_fails_its_ingress_only_with_the_reason() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let proxy = start(
        &[&web],
        &[],
        &[
            annotated(
                "bad",
                &[rule(Some("shared.example"), &[("/bad", "Prefix", "web")])],
                &[
                    ("permanent-redirect", "https://example.org/"),
                    ("permanent-redirect-code", "abc"),
                    ("ssl-redirect", "maybe"),
                ],
            ),
            annotated(
                "good",
                &[rule(Some("shared.example"), &[("/good", "Prefix", "web")])],
                &[("ssl-redirect", "false")],
            ),
            annotated(
                "elsewhere",
                &[rule(Some("other.example"), &[("/", "Prefix", "web")])],
                &[],
            ),
        ],
    )?;
    let client = pooled();
    let reply = get(&client, proxy.http, "shared.example", "/bad/x").await?;
    ensure_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let text = reply.text();
    for part in [
        "Ingress default/bad has invalid annotations",
        "nginx.ingress.kubernetes.io/permanent-redirect-code: \"abc\" is not a number",
        "nginx.ingress.kubernetes.io/ssl-redirect: \"maybe\" is not a boolean",
    ] {
        ensure!(text.contains(part), "503 names {part:?}: {text:?}");
    }
    ensure!(
        web.seen().is_empty(),
        "the failing route sends nothing: {:?}",
        web.seen()
    );
    ensure_served(
        &get(&client, proxy.http, "shared.example", "/good").await?,
        "web",
        "good",
    )?;
    ensure_served(
        &get(&client, proxy.http, "other.example", "/").await?,
        "web",
        "other",
    )?;
    proxy
        .wait_for_log(&[
            "Ingress default/bad",
            "metadata.annotations[\"nginx.ingress.kubernetes.io/permanent-redirect-code\"]",
        ])
        .await?;
    Ok(())
}

/// `validate` reports an ignored annotation, a snippet (never executed), an unknown key and a
/// bad value, each at `metadata.annotations["<key>"]` of its Ingress, and exits non-zero.
#[test]
fn validate_names_ignored_never_executed_unknown_and_bad_annotations() -> Result<()> {
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    manifests.write("services.yaml", &services_for(&[]))?;
    manifests.write(
        "ingress.yaml",
        &[annotated(
            "legacy",
            &[rule(Some("legacy.example"), &[("/", "Prefix", "web")])],
            &[
                ("limit-rate", "10"),
                ("configuration-snippet", "more_set_headers \"X: y\";"),
                ("not-a-real-annotation", "1"),
                ("use-regex", "sometimes"),
                ("rewrite-target", "/$1"),
            ],
        )],
    )?;
    let output = Command::new(agent::binary()?)
        .arg("validate")
        .arg("--manifests")
        .arg(manifests.path())
        .env("NO_COLOR", "1")
        .output()
        .context("running validate")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success(),
        "validate reports problems: {stderr}"
    );
    for (key, why) in [
        ("limit-rate", "not supported by xdp-ingress, ignored"),
        ("configuration-snippet", "never executed"),
        ("not-a-real-annotation", "unknown ingress-nginx annotation"),
        ("use-regex", "\"sometimes\" is not a boolean"),
    ] {
        let field = format!("metadata.annotations[\"nginx.ingress.kubernetes.io/{key}\"]");
        ensure!(
            stderr
                .lines()
                .any(|line| line.contains("Ingress default/legacy")
                    && line.contains(&field)
                    && line.contains(why)),
            "validate names {key} ({why}): {stderr}"
        );
    }
    ensure!(
        !stderr.contains("nginx.ingress.kubernetes.io/rewrite-target\"]"),
        "a supported, valid annotation is not reported: {stderr}"
    );
    Ok(())
}

/// `migrate-report` over a directory: Ingresses of the `nginx` class only (by
/// `ingressClassName` or the old annotation), each annotation with its verdict (identical,
/// differs, ignored, never executed, unknown, invalid) and the counts at the end; `--json`
/// says the same.
#[test]
fn migrate_report_lists_each_annotation_of_the_class_with_counts() -> Result<()> {
    let manifests = Manifests::new()?;
    let mut shop = annotated(
        "shop",
        &[rule(Some("shop.example"), &[("/", "Prefix", "web")])],
        &[
            ("use-regex", "true"),
            ("rewrite-target", "/$1"),
            ("limit-rate", "10"),
            ("server-snippet", "return 200;"),
            ("no-such-key", "x"),
            ("ssl-redirect", "maybe"),
        ],
    );
    shop["spec"]["ingressClassName"] = serde_json::json!("nginx");
    let mut legacy = annotated(
        "legacy",
        &[rule(Some("legacy.example"), &[("/", "Prefix", "web")])],
        &[("permanent-redirect", "https://example.org/")],
    );
    legacy["spec"]
        .as_object_mut()
        .context("spec")?
        .remove("ingressClassName");
    legacy["metadata"]["annotations"]["kubernetes.io/ingress.class"] = serde_json::json!("nginx");
    let ours = annotated(
        "ours",
        &[rule(Some("ours.example"), &[("/", "Prefix", "web")])],
        &[("limit-rps", "10")],
    );
    manifests.write("ingresses.yaml", &[shop, legacy, ours])?;
    let run = |json: bool| -> Result<String> {
        let mut command = Command::new(agent::binary()?);
        command
            .arg("migrate-report")
            .arg("--manifests")
            .arg(manifests.path());
        if json {
            command.arg("--json");
        }
        let output = command.output().context("running migrate-report")?;
        ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    };
    let text = run(false)?;
    for line in [
        "Ingress default/legacy",
        "  identical       permanent-redirect",
        "Ingress default/shop",
        "  identical       use-regex",
        "  differs         rewrite-target: captures $1..$9",
        "  ignored         limit-rate: response bandwidth limits are not implemented",
        "  never executed  server-snippet: nginx configuration is never executed",
        "  unknown         no-such-key",
        "  invalid         ssl-redirect: \"maybe\" is not a boolean",
        "2 Ingress(es) of class nginx, 7 annotation(s): 2 identical, 1 differs, 1 ignored, \
         1 never executed, 1 unknown, 1 invalid",
    ] {
        ensure!(
            text.lines().any(|l| l.starts_with(line)),
            "report has {line:?}:\n{text}"
        );
    }
    ensure!(
        !text.contains("default/ours"),
        "other classes are not reported:\n{text}"
    );
    let json: serde_json::Value = serde_json::from_str(&run(true)?)?;
    ensure_eq!(
        json["counts"],
        serde_json::json!({"identical": 2, "differs": 1, "ignored": 1, "never executed": 1,
                           "unknown": 1, "invalid": 1})
    );
    ensure_eq!(json["ingresses"].as_array().map(Vec::len), Some(2));
    Ok(())
}

/// Problems have a severity: an Ingress served with a never-executed snippet and an unknown key
/// gets warnings, printed as such, and `validate` succeeds; `--strict` fails on them. A bad
/// value (its routes answer 503) is an error and fails either way.
#[test]
fn validate_fails_on_errors_and_on_warnings_only_when_strict() -> Result<()> {
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    // Documentation addresses: `validate` only reads them.
    let web = backend_service("web", &["192.0.2.10:8080".parse()?]);
    manifests.write("services.yaml", &web)?;
    let served = annotated(
        "served",
        &[rule(Some("served.example"), &[("/", "Prefix", "web")])],
        &[
            ("configuration-snippet", "more_set_headers \"X: y\";"),
            ("not-a-real-annotation", "1"),
        ],
    );
    manifests.write("ingress.yaml", std::slice::from_ref(&served))?;
    let validate = |strict: bool| -> Result<(bool, String)> {
        let mut command = Command::new(agent::binary()?);
        command
            .arg("validate")
            .arg("--manifests")
            .arg(manifests.path());
        if strict {
            command.arg("--strict");
        }
        let output = command.output().context("running validate")?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    };
    let (success, stderr) = validate(false)?;
    ensure!(success, "warnings only: validate succeeds: {stderr}");
    for key in ["configuration-snippet", "not-a-real-annotation"] {
        ensure!(
            stderr.lines().any(|line| line.starts_with("warning: ")
                && line.contains(&format!("nginx.ingress.kubernetes.io/{key}\"]"))),
            "{key} is a warning: {stderr}"
        );
    }
    ensure!(!stderr.contains("error: "), "no error: {stderr}");
    let (success, stderr) = validate(true)?;
    ensure!(!success, "--strict fails on warnings: {stderr}");
    let bad = annotated(
        "bad",
        &[rule(Some("bad.example"), &[("/", "Prefix", "web")])],
        &[("ssl-redirect", "maybe")],
    );
    manifests.write("ingress.yaml", &[served, bad])?;
    let (success, stderr) = validate(false)?;
    ensure!(!success, "a bad value is an error: {stderr}");
    ensure!(
        stderr.lines().any(|line| line.starts_with("error: ")
            && line.contains("nginx.ingress.kubernetes.io/ssl-redirect\"]")),
        "{stderr}"
    );
    Ok(())
}
