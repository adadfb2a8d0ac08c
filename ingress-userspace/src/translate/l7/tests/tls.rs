//! TLS plans carrying the certificate or why not, and the default certificate from the options.

use super::*;

const SECRETS: &str = r#"
---
apiVersion: v1
kind: Secret
metadata: {name: good, namespace: demo}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==}
stringData: {tls.key: KEY}
---
apiVersion: v1
kind: Secret
metadata: {name: opaque, namespace: demo}
type: Opaque
stringData: {tls.crt: CERT, tls.key: KEY}
---
apiVersion: v1
kind: Secret
metadata: {name: no-key, namespace: demo}
type: kubernetes.io/tls
stringData: {tls.crt: CERT}
"#;

fn tls(entries: &[(&[&str], &str)]) -> String {
    let mut text = "  tls:\n".to_string();
    for (hosts, secret) in entries {
        text += &format!("  - {{hosts: {hosts:?}, secretName: {secret}}}\n");
    }
    text
}

#[test]
fn tls_plans_carry_the_certificate_or_why_not() {
    let older = tls(&[
        (&["Shop.Example"], "good"),
        (&["a.example"], "missing"),
        (&["b.example"], "opaque"),
        (&["c.example"], "no-key"),
    ]) + "  - {hosts: [d.example]}\n";
    let newer = tls(&[(&[], "good")])
        + &rules(&[
            rule("x.example", &[path("/", "Prefix", "web", 80)]),
            rule("*.y.example", &[path("/", "Prefix", "web", 80)]),
            rule("x.example", &[path("/x", "Prefix", "web", 80)]),
        ]);
    let yaml = [
        DEFAULT_CLASS,
        SERVICES,
        SECRETS,
        &ingress("demo", "newer", NEW, &newer),
        &ingress("demo", "older", OLD, &older),
    ]
    .concat();
    let (plan, problems) = run(&yaml);
    let summary: Vec<(Vec<String>, String, Option<String>, bool)> = plan
        .tls
        .iter()
        .map(|t| {
            (
                t.hosts.clone(),
                t.secret.name.clone(),
                t.ingress.as_ref().map(|i| i.name.clone()),
                t.pem.is_ok(),
            )
        })
        .collect();
    let row = |hosts: &[&str], secret: &str, ingress: &str, ok: bool| {
        (
            hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
            secret.to_string(),
            Some(ingress.to_string()),
            ok,
        )
    };
    assert_eq!(
        summary,
        vec![
            row(&["shop.example"], "good", "older", true),
            row(&["a.example"], "missing", "older", false),
            row(&["b.example"], "opaque", "older", false),
            row(&["c.example"], "no-key", "older", false),
            // No hosts listed: the Ingress's own rule hosts.
            row(&["x.example", "*.y.example"], "good", "newer", true),
        ]
    );
    let pem = plan.tls[0].pem.as_ref().unwrap();
    assert_eq!(pem.certificate_chain, b"CERT");
    assert_eq!(pem.private_key, b"KEY");
    assert!(
        !format!("{pem:?}").contains("KEY"),
        "key material never printed"
    );
    assert_eq!(
        problems
            .iter()
            .map(|p| format!("{} {}: {}", p.object, p.field, p.message))
            .collect::<Vec<_>>(),
        vec![
            "Ingress demo/older spec.tls[1].secretName: no Secret demo/missing of type kubernetes.io/tls",
            "Ingress demo/older spec.tls[2].secretName: Secret demo/opaque is of type Opaque, not kubernetes.io/tls",
            "Ingress demo/older spec.tls[3].secretName: Secret demo/no-key has no tls.key",
        ]
    );
    assert_eq!(plan.default_tls, None);
}

#[test]
fn default_tls_secret_from_options() {
    let options = |secret: &str| L7Options {
        default_tls_secret: Some(name("demo", secret)),
        ..L7Options::default()
    };
    let objects = objects(SECRETS);
    let (plan, problems) = translate(&objects, &options("good"));
    let default = plan.default_tls.unwrap();
    assert!(default.pem.is_ok() && default.ingress.is_none() && default.hosts.is_empty());
    assert!(problems.is_empty());
    let (plan, problems) = translate(&objects, &options("absent"));
    assert!(plan.default_tls.unwrap().pem.is_err());
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].origin, "--default-tls-secret");
    assert_eq!(problems[0].object, "Secret demo/absent");
}
