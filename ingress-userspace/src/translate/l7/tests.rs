//! Ingresses in, L7 plan out: class selection, precedence and conflicts, every bad-input case,
//! backend resolution and TLS plans. Objects are written as YAML, as users write them.

use std::{net::SocketAddr, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{Secret, Service},
        discovery::v1::EndpointSlice,
        networking::v1::{Ingress, IngressClass},
    },
    ByteString,
};

use super::*;
use crate::model::{object_name, Origin, Sourced};

fn origin() -> Origin {
    Origin::File {
        path: Arc::from("/m/test.yaml"),
        document: 1,
    }
}

fn sourced<T>(object: T) -> Sourced<T> {
    Sourced {
        object,
        origin: origin(),
    }
}

/// Every document of `yaml` into a `ClusterObjects`, by kind.
fn objects(yaml: &str) -> ClusterObjects {
    let mut objects = ClusterObjects::default();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(document).unwrap();
        if value.is_null() {
            continue;
        }
        match value["kind"].as_str().unwrap() {
            "Service" => {
                let s: Service = serde_yaml::from_value(value).unwrap();
                objects
                    .services
                    .insert(object_name(&s.metadata), sourced(s));
            }
            "EndpointSlice" => {
                let s: EndpointSlice = serde_yaml::from_value(value).unwrap();
                objects
                    .endpoint_slices
                    .insert(object_name(&s.metadata), sourced(s));
            }
            "Ingress" => {
                let i: Ingress = serde_yaml::from_value(value).unwrap();
                objects
                    .ingresses
                    .insert(object_name(&i.metadata), sourced(i));
            }
            "IngressClass" => {
                let c: IngressClass = serde_yaml::from_value(value).unwrap();
                let name = c.metadata.name.clone().unwrap();
                objects.ingress_classes.insert(name, sourced(c));
            }
            "Secret" => {
                let mut s: Secret = serde_yaml::from_value(value).unwrap();
                // As the file source does: stringData is merged into data.
                for (k, v) in s.string_data.take().unwrap_or_default() {
                    s.data
                        .get_or_insert_with(Default::default)
                        .insert(k, ByteString(v.into_bytes()));
                }
                objects.secrets.insert(object_name(&s.metadata), sourced(s));
            }
            other => panic!("unexpected kind {other}"),
        }
    }
    objects
}

fn run(yaml: &str) -> (L7Plan, Vec<Problem>) {
    translate(&objects(yaml), &L7Options::default())
}

/// `ingress>service:port` of the backend a request is routed to.
fn target(plan: &L7Plan, host: &str, path: &str) -> Option<String> {
    let id = *plan.routes.route(host, path)?;
    let b = &plan.backends[id];
    Some(format!("{}>{}:{}", b.ingress.name, b.service.name, b.port))
}

fn name(namespace: &str, name: &str) -> ObjectName {
    ObjectName {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// The problems as `object field` lines, for compact assertions.
fn fields(problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .map(|p| format!("{} {}", p.object, p.field))
        .collect()
}

/// Tests about routing write no Services: drop the "does not exist" reports they cause.
fn without_unknown_services(problems: Vec<Problem>) -> Vec<Problem> {
    problems
        .into_iter()
        .filter(|p| !p.message.contains("does not exist"))
        .collect()
}

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

const DEFAULT_CLASS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: xdp
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: xdp-ingress.dev/controller}
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
        controller_name: "k8s.io/ingress-nginx".into(),
        default_tls_secret: None,
    };
    let (plan, _) = translate(&objects(&yaml), &options);
    assert_eq!(plan.ingresses, vec![name("demo", "no-class")]);
}

/// An Ingress of our (default) class with the given creation time and rules.
fn ingress(namespace: &str, name: &str, created: Option<&str>, spec: &str) -> String {
    let created = created
        .map(|t| format!(", creationTimestamp: \"{t}\""))
        .unwrap_or_default();
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: {namespace}{created}}}\nspec:\n{spec}\n"
    )
}

fn path(path: &str, path_type: &str, service: &str, port: u32) -> String {
    format!(
        "      - {{path: {path}, pathType: {path_type}, backend: {{service: {{name: {service}, port: {{number: {port}}}}}}}}}\n"
    )
}

fn rule(host: &str, paths: &[String]) -> String {
    format!(
        "  - host: \"{host}\"\n    http:\n      paths:\n{}",
        paths.concat()
    )
}

fn rules(rules: &[String]) -> String {
    format!("  rules:\n{}", rules.concat())
}

const OLD: Option<&str> = Some("2026-01-01T00:00:00Z");
const NEW: Option<&str> = Some("2026-02-01T00:00:00Z");

#[test]
fn same_host_merges_paths_and_the_oldest_wins_a_conflict() {
    let yaml = [
        DEFAULT_CLASS.to_string(),
        ingress(
            "demo",
            "newer",
            NEW,
            &rules(&[rule(
                "Shop.Example",
                &[
                    path("/web", "Prefix", "web", 80),
                    path("/api/", "Prefix", "api-v2", 80),
                ],
            )]),
        ),
        ingress(
            "demo",
            "older",
            OLD,
            &rules(&[rule("shop.example", &[path("/api", "Prefix", "api", 80)])]),
        ),
    ]
    .concat();
    let (plan, problems) = run(&yaml);
    let problems = without_unknown_services(problems);
    assert_eq!(
        target(&plan, "shop.example", "/web/x").unwrap(),
        "newer>web:80"
    );
    assert_eq!(
        target(&plan, "SHOP.example", "/api/v1").unwrap(),
        "older>api:80"
    );
    assert_eq!(
        fields(&problems),
        vec!["Ingress demo/newer spec.rules[0].http.paths[1]"]
    );
    assert!(
        problems[0].message.contains("Ingress demo/older"),
        "{}",
        problems[0].message
    );
    assert!(
        !plan.backends.iter().any(|b| b.service.name == "api-v2"),
        "a losing path gets no backend"
    );
}

#[test]
fn equal_timestamps_then_namespace_and_name_and_missing_timestamps_last() {
    let api = |service: &str| rules(&[rule("h.example", &[path("/", "Prefix", service, 80)])]);
    let yaml = [
        DEFAULT_CLASS.to_string(),
        ingress("b", "first", None, &api("no-timestamp")),
        ingress("b", "a", OLD, &api("b-a")),
        ingress("a", "z", OLD, &api("a-z")),
    ]
    .concat();
    let (plan, problems) = run(&yaml);
    let problems = without_unknown_services(problems);
    assert_eq!(target(&plan, "h.example", "/").unwrap(), "z>a-z:80");
    assert_eq!(
        fields(&problems),
        vec![
            "Ingress b/a spec.rules[0].http.paths[0]",
            "Ingress b/first spec.rules[0].http.paths[0]"
        ]
    );
    // Tie-break order also orders the TLS plans and nothing else depends on map order.
    assert_eq!(
        plan.ingresses,
        vec![name("a", "z"), name("b", "a"), name("b", "first")]
    );
}

#[test]
fn the_same_rule_twice_in_one_ingress_and_prefix_types_collide() {
    let yaml = DEFAULT_CLASS.to_string()
        + &ingress(
            "demo",
            "dup",
            OLD,
            &rules(&[
                rule(
                    "h.example",
                    &[
                        path("/foo", "Prefix", "one", 80),
                        path("/foo/", "Prefix", "two", 80),
                        path("/foo", "Exact", "exact", 80),
                    ],
                ),
                rule(
                    "h.example",
                    &[path("/foo", "ImplementationSpecific", "three", 80)],
                ),
            ]),
        );
    let (plan, problems) = run(&yaml);
    let problems = without_unknown_services(problems);
    assert_eq!(
        fields(&problems),
        vec![
            "Ingress demo/dup spec.rules[0].http.paths[1]",
            "Ingress demo/dup spec.rules[1].http.paths[0]"
        ]
    );
    assert!(problems[0]
        .message
        .contains("spec.rules[0].http.paths[0] of this Ingress"));
    assert_eq!(target(&plan, "h.example", "/foo/x").unwrap(), "dup>one:80");
    assert_eq!(target(&plan, "h.example", "/foo").unwrap(), "dup>exact:80");
}

#[test]
fn oldest_default_backend_wins() {
    let default = |service: &str| {
        format!("  defaultBackend: {{service: {{name: {service}, port: {{number: 80}}}}}}\n")
    };
    let yaml = [
        DEFAULT_CLASS.to_string(),
        ingress("demo", "newer", NEW, &default("newer-default")),
        ingress(
            "demo",
            "older",
            OLD,
            &(default("older-default")
                + &rules(&[rule("a.example", &[path("/a", "Exact", "a", 80)])])),
        ),
    ]
    .concat();
    let (plan, problems) = run(&yaml);
    let problems = without_unknown_services(problems);
    assert_eq!(target(&plan, "a.example", "/a").unwrap(), "older>a:80");
    assert_eq!(
        target(&plan, "a.example", "/b").unwrap(),
        "older>older-default:80"
    );
    assert_eq!(
        target(&plan, "other.example", "/").unwrap(),
        "older>older-default:80"
    );
    assert_eq!(
        fields(&problems),
        vec!["Ingress demo/newer spec.defaultBackend"]
    );
    assert!(problems[0].message.contains("demo/older"));
}

#[test]
fn no_default_backend_means_no_route() {
    let yaml = DEFAULT_CLASS.to_string()
        + &ingress(
            "demo",
            "a",
            OLD,
            &rules(&[rule("a.example", &[path("/a", "Exact", "a", 80)])]),
        );
    let (plan, _) = run(&yaml);
    assert_eq!(target(&plan, "a.example", "/b"), None);
}

#[test]
fn every_bad_input_is_reported_at_its_field_and_the_rest_routes() {
    let raw = |text: &str| format!("      - {text}\n");
    let backend = "backend: {service: {name: web, port: {number: 80}}}";
    let spec = rules(&[
        rule(
            "good.example",
            &[
                path("/ok", "Prefix", "web", 80),
                raw(&format!("{{path: relative, pathType: Prefix, {backend}}}")),
                raw(&format!("{{path: /x, pathType: Regex, {backend}}}")),
                raw(&format!("{{path: /y, {backend}}}")),
                raw("{path: /both, pathType: Prefix, backend: {service: {name: web, port: {number: 80, name: http}}}}"),
                raw("{path: /neither, pathType: Prefix, backend: {service: {name: web, port: {}}}}"),
                raw("{path: /resource, pathType: Prefix, backend: {resource: {kind: StorageBucket, name: b}}}"),
                raw("{path: /zero, pathType: Prefix, backend: {service: {name: web, port: {number: 0}}}}"),
                raw("{path: /nobackend, pathType: Prefix}"),
                raw(&format!("{{pathType: Exact, {backend}}}")),
                raw(&format!("{{path: impl, pathType: ImplementationSpecific, {backend}}}")),
            ],
        ),
        rule("good.example:80", &[path("/", "Prefix", "web", 80)]),
        rule("*.*.example", &[path("/", "Prefix", "web", 80)]),
        rule("foo*.example", &[path("/", "Prefix", "web", 80)]),
        rule("10.0.0.1", &[path("/", "Prefix", "web", 80)]),
        rule("under_score.example", &[path("/", "Prefix", "web", 80)]),
        "  - host: no-http.example\n".to_string(),
        rule("*.wild.example", &[path("/", "Prefix", "web", 80)]),
    ]);
    let yaml = DEFAULT_CLASS.to_string() + &ingress("demo", "bad", OLD, &spec);
    let (plan, problems) = run(&yaml);
    let p = "Ingress demo/bad spec.rules[0].http.paths";
    let mut expected: Vec<String> = vec![
        // The Service `web` does not exist: reported once, where it is first used.
        format!("{p}[0].backend.service.name"),
        format!("{p}[1].path"),
        format!("{p}[2].pathType"),
        format!("{p}[3].pathType"),
        format!("{p}[4].backend.service.port"),
        format!("{p}[5].backend.service.port"),
        format!("{p}[6].backend.resource"),
        format!("{p}[7].backend.service.port.number"),
        format!("{p}[8].backend"),
        format!("{p}[9].path"),
        format!("{p}[10].path"),
    ];
    expected.extend((1..=5).map(|i| format!("Ingress demo/bad spec.rules[{i}].host")));
    assert_eq!(fields(&problems), expected, "{problems:#?}");
    assert!(problems
        .iter()
        .any(|p| p.field.ends_with("rules[4].host") && p.message.contains("IP address")));
    assert_eq!(
        target(&plan, "good.example", "/ok/1").unwrap(),
        "bad>web:80"
    );
    assert_eq!(target(&plan, "a.wild.example", "/").unwrap(), "bad>web:80");
    assert_eq!(target(&plan, "good.example", "/x"), None);
    assert_eq!(plan.backends.len(), 1, "the invalid paths got no backend");
}

const SERVICES: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: idle, namespace: demo}
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: demo}
spec: {type: ExternalName, externalName: example.org}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 8053, protocol: UDP}]
endpoints:
- addresses: [10.0.0.3]
- addresses: [10.0.0.9]
  conditions: {ready: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.0.0.2, 10.0.0.1]
  conditions: {ready: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- addresses: ["2001:db8::1"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: idle-a, namespace: demo, labels: {kubernetes.io/service-name: idle}}
addressType: IPv4
ports: [{port: 9000}]
endpoints:
- addresses: [10.0.1.1]
  conditions: {ready: false}
"#;

fn named_port_path(path: &str, service: &str, port: &str) -> String {
    format!(
        "      - {{path: {path}, pathType: Prefix, backend: {{service: {{name: {service}, port: {{name: {port}}}}}}}}}\n"
    )
}

fn endpoints(plan: &L7Plan, host: &str, path: &str) -> Result<Vec<SocketAddr>, Unavailable> {
    let id = *plan.routes.route(host, path).expect("routed");
    plan.backends[id].endpoints.clone()
}

#[test]
fn backends_resolve_to_ready_endpoints_or_say_why_not() {
    let spec = rules(&[rule(
        "h.example",
        &[
            path("/number", "Prefix", "web", 80),
            named_port_path("/name", "web", "http"),
            path("/no-service", "Prefix", "gone", 80),
            path("/no-port", "Prefix", "web", 81),
            named_port_path("/no-port-name", "web", "https"),
            path("/idle", "Prefix", "idle", 80),
            path("/external", "Prefix", "external", 80),
            named_port_path("/udp", "web", "dns"),
        ],
    )]);
    let yaml = [DEFAULT_CLASS, SERVICES, &ingress("demo", "ing", OLD, &spec)].concat();
    let (plan, problems) = run(&yaml);
    let web: Vec<SocketAddr> = ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    // Two slices summed and sorted; the not-ready endpoint and the IPv6 slice left out.
    assert_eq!(endpoints(&plan, "h.example", "/number"), Ok(web.clone()));
    assert_eq!(endpoints(&plan, "h.example", "/name"), Ok(web));
    use Unavailable::*;
    assert_eq!(
        endpoints(&plan, "h.example", "/no-service"),
        Err(UnknownService)
    );
    assert_eq!(endpoints(&plan, "h.example", "/no-port"), Err(UnknownPort));
    assert_eq!(
        endpoints(&plan, "h.example", "/no-port-name"),
        Err(UnknownPort)
    );
    assert_eq!(
        endpoints(&plan, "h.example", "/idle"),
        Err(NoReadyEndpoints)
    );
    assert_eq!(
        endpoints(&plan, "h.example", "/external"),
        Err(UnsupportedService(
            "ExternalName Services are not supported".into()
        ))
    );
    assert!(matches!(
        endpoints(&plan, "h.example", "/udp"),
        Err(UnsupportedService(_))
    ));
    let p = "Ingress demo/ing spec.rules[0].http.paths";
    assert_eq!(
        fields(&problems),
        vec![
            format!("{p}[2].backend.service.name"),
            format!("{p}[3].backend.service.port"),
            format!("{p}[4].backend.service.port"),
            format!("{p}[6].backend.service.name"),
            format!("{p}[7].backend.service.name"),
        ],
        "no ready endpoints is not a problem: {problems:#?}"
    );
    let unavailable = &plan.backends[*plan.routes.route("h.example", "/no-port").unwrap()];
    assert_eq!(
        unavailable.unavailable_message().unwrap(),
        "503 Service Unavailable: service demo/web has no port 81\n"
    );
}

#[test]
fn one_backend_per_ingress_service_and_port() {
    let paths = |prefix: &str| {
        rules(&[rule(
            &format!("{prefix}.example"),
            &[
                path("/a", "Prefix", "web", 80),
                path("/b", "Prefix", "web", 80),
                named_port_path("/c", "web", "http"),
            ],
        )])
    };
    let yaml = [
        DEFAULT_CLASS,
        SERVICES,
        &ingress("demo", "one", OLD, &paths("one")),
        &ingress("demo", "two", NEW, &paths("two")),
    ]
    .concat();
    let (plan, problems) = run(&yaml);
    assert!(problems.is_empty(), "{problems:?}");
    let ids = |host: &str| ["/a", "/b", "/c"].map(|p| *plan.routes.route(host, p).unwrap());
    assert_eq!(ids("one.example"), [0, 0, 1]);
    assert_eq!(ids("two.example"), [2, 2, 3]);
    assert_eq!(plan.backends.len(), 4);
    assert_eq!(plan.backends[1].port, ServicePortRef::Name("http".into()));
}

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
