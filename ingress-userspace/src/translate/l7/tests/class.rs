//! Which Ingresses are ours: by class name, by the deprecated annotation, by our default class.

use super::*;

const CLASSES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: xdp}
spec: {controller: xdp-ingress.dev/controller}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx}
spec: {controller: k8s.io/ingress-nginx}
"#;

/// An Ingress `demo/name` with a Prefix `/` rule for `host` to Service `web:80`, naming its class
/// in `spec.ingressClassName` and/or the deprecated annotation.
fn classed_ingress(
    name: &str,
    spec_class: Option<&str>,
    annotation: Option<&str>,
    host: &str,
) -> String {
    let annotation = annotation
        .map(|c| format!("\n  annotations: {{kubernetes.io/ingress.class: {c}}}"))
        .unwrap_or_default();
    let spec_class = spec_class
        .map(|c| format!("  ingressClassName: {c}\n"))
        .unwrap_or_default();
    format!(
        r#"
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: {name}
  namespace: demo{annotation}
spec:
{spec_class}  rules:
  - host: {host}
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
"#
    )
}

fn class_cases() -> String {
    [
        classed_ingress("by-name", Some("xdp"), None, "a.example"),
        classed_ingress("other-controller", Some("nginx"), None, "b.example"),
        classed_ingress("by-annotation", None, Some("xdp"), "c.example"),
        classed_ingress(
            "spec-beats-annotation",
            Some("nginx"),
            Some("xdp"),
            "d.example",
        ),
        classed_ingress("no-class", None, None, "e.example"),
        classed_ingress("unknown-class", Some("gone"), None, "f.example"),
    ]
    .concat()
}

#[test]
fn ingress_class_selection() {
    let (plan, problems) = run(&(CLASSES.to_string() + &class_cases()));
    let problems = without_unknown_services(problems);
    assert!(
        problems.is_empty(),
        "ignored Ingresses are no problem: {problems:?}"
    );
    assert_eq!(
        plan.ingresses,
        vec![name("demo", "by-annotation"), name("demo", "by-name")]
    );
    assert!(target(&plan, "a.example", "/").is_some());
    assert!(target(&plan, "b.example", "/").is_none());
}

#[test]
fn our_default_class_takes_ingresses_naming_no_class() {
    let classes = CLASSES.replace(
        "metadata: {name: xdp}",
        "metadata: {name: xdp, annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}}",
    );
    let (plan, _) = run(&(classes + &class_cases()));
    assert_eq!(
        plan.ingresses,
        vec![
            name("demo", "by-annotation"),
            name("demo", "by-name"),
            name("demo", "no-class")
        ]
    );
}

#[test]
fn default_class_of_another_controller_does_not_make_classless_ingresses_ours() {
    let yaml = DEFAULT_CLASS.replace("xdp-ingress.dev/controller", "k8s.io/ingress-nginx")
        + &classed_ingress("no-class", None, None, "e.example");
    let (plan, problems) = run(&yaml);
    let problems = without_unknown_services(problems);
    assert!(plan.ingresses.is_empty());
    assert!(problems.is_empty());
    // Another controller name configured: that class is now ours.
    let options = L7Options {
        controller_names: vec!["k8s.io/ingress-nginx".into()],
        ..L7Options::default()
    };
    let (plan, _) = translate(&objects(&yaml), &options);
    assert_eq!(plan.ingresses, vec![name("demo", "no-class")]);
}

/// `--controller-name` twice: our class and ingress-nginx's as it stands, by name, by the
/// legacy annotation and as the default class; a class of a third controller stays ignored.
#[test]
fn several_controller_names_take_over_the_nginx_class() {
    let classes = CLASSES.replace(
        "metadata: {name: nginx}",
        "metadata: {name: nginx, annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}}",
    ) + r#"
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: other}
spec: {controller: example.dev/other}
"#;
    let yaml = classes
        + &class_cases()
        + &classed_ingress("nginx-by-annotation", None, Some("nginx"), "g.example")
        + &classed_ingress("third", Some("other"), None, "h.example");
    let options = L7Options {
        controller_names: vec![
            DEFAULT_CONTROLLER_NAME.to_string(),
            "k8s.io/ingress-nginx".into(),
        ],
        ..L7Options::default()
    };
    let (plan, _) = translate(&objects(&yaml), &options);
    assert_eq!(
        plan.ingresses,
        vec![
            name("demo", "by-annotation"),
            name("demo", "by-name"),
            name("demo", "nginx-by-annotation"),
            name("demo", "no-class"),
            name("demo", "other-controller"),
            name("demo", "spec-beats-annotation"),
        ]
    );
    assert!(target(&plan, "b.example", "/").is_some());
    assert!(target(&plan, "h.example", "/").is_none());
    // Without the flag, none of the nginx class is ours.
    let (plan, _) = translate(&objects(&yaml), &L7Options::default());
    assert_eq!(
        plan.ingresses,
        vec![name("demo", "by-annotation"), name("demo", "by-name")]
    );
}
