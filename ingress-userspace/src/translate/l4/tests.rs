//! Objects in, plan out: the meaning kube-proxy gives Services and EndpointSlices, and the rules
//! that keep a broken object's last good state.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

use k8s_openapi::{api::core::v1::Service, api::discovery::v1::EndpointSlice};

use super::*;
use crate::model::{object_name, Origin, Sourced};

const NO_NODE: L4Options = L4Options {
    node_name: None,
    node_addresses: Vec::new(),
};

/// A node named `name` with two addresses.
fn node(name: &str) -> L4Options {
    L4Options {
        node_name: Some(name.to_string()),
        node_addresses: vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)],
    }
}

fn origin() -> Origin {
    Origin::File {
        path: Arc::from("/m/test.yaml"),
        document: 1,
    }
}

fn service(yaml: &str) -> Sourced<Service> {
    Sourced {
        object: serde_yaml::from_str(yaml).expect("test Service"),
        origin: origin(),
    }
}

fn slice(yaml: &str) -> Sourced<EndpointSlice> {
    Sourced {
        object: serde_yaml::from_str(yaml).expect("test EndpointSlice"),
        origin: origin(),
    }
}

fn objects(services: Vec<Sourced<Service>>, slices: Vec<Sourced<EndpointSlice>>) -> ClusterObjects {
    ClusterObjects {
        services: services
            .into_iter()
            .map(|s| (object_name(&s.object.metadata), s))
            .collect::<BTreeMap<_, _>>(),
        endpoint_slices: slices
            .into_iter()
            .map(|s| (object_name(&s.object.metadata), s))
            .collect::<BTreeMap<_, _>>(),
        ..ClusterObjects::default()
    }
}

const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  type: LoadBalancer
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: dns, protocol: UDP, port: 53}
status: {loadBalancer: {ingress: [{ip: 203.0.113.10}]}}
"#;

const WEB_SLICE_A: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, protocol: UDP, port: 8053}]
endpoints:
- {addresses: [198.51.100.11], conditions: {ready: true}}
- {addresses: [198.51.100.12]}
- {addresses: [198.51.100.19], conditions: {ready: false}}
"#;

const WEB_SLICE_B: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, protocol: UDP, port: 8053}]
endpoints:
- {addresses: [198.51.100.13], conditions: {ready: true}}
"#;

fn vip(port: u16, protocol: Protocol) -> Frontend {
    Frontend {
        vip: Ipv4Addr::new(203, 0, 113, 10),
        port,
        protocol,
    }
}

fn backends(plan: &L4Plan, frontend: Frontend) -> Vec<String> {
    plan.frontends[&frontend]
        .backends
        .iter()
        .map(|b| b.to_string())
        .collect()
}

#[test]
fn slices_add_up_and_not_ready_endpoints_are_left_out() {
    let objects = objects(
        vec![service(WEB)],
        vec![slice(WEB_SLICE_A), slice(WEB_SLICE_B)],
    );
    let (plan, problems) = translate(&objects, &L4Plan::default(), &L4Options::default());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        backends(&plan, vip(80, Protocol::Tcp)),
        [
            "198.51.100.11:8080",
            "198.51.100.12:8080",
            "198.51.100.13:8080"
        ]
    );
    assert_eq!(
        backends(&plan, vip(53, Protocol::Udp)),
        [
            "198.51.100.11:8053",
            "198.51.100.12:8053",
            "198.51.100.13:8053"
        ]
    );
}

/// The LoadBalancer address comes from the status, else `spec.loadBalancerIP`; externalIPs
/// are frontends of their own beside it, never a fallback for it.
#[test]
fn vip_comes_from_status_then_load_balancer_ip_and_external_ips_are_their_own_frontends() {
    let with = |extra: &str| {
        service(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  type: LoadBalancer\n  ports: [{{port: 80}}]\n{extra}"
        ))
    };
    let cases = [
        ("  loadBalancerIP: 203.0.113.2\n  externalIPs: [203.0.113.3]\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.1}]}}\n", vec!["LoadBalancer 203.0.113.1", "externalIP 203.0.113.3"], 0),
        ("  loadBalancerIP: 203.0.113.2\n  externalIPs: [203.0.113.3]\n", vec!["LoadBalancer 203.0.113.2", "externalIP 203.0.113.3"], 0),
        // No LoadBalancer address yet: reported, the externalIP is still forwarded.
        ("  externalIPs: [203.0.113.3]\n", vec!["externalIP 203.0.113.3"], 1),
        ("  externalIPs: [\"2001:db8::1\", 203.0.113.4]\n", vec!["externalIP 203.0.113.4"], 1),
        // The same address as both: one frontend, the LoadBalancer one.
        ("  externalIPs: [203.0.113.1]\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.1}]}}\n", vec!["LoadBalancer 203.0.113.1"], 0),
    ];
    for (extra, expected, problem_count) in cases {
        let (plan, problems) = translate(
            &objects(vec![with(extra)], vec![]),
            &L4Plan::default(),
            &NO_NODE,
        );
        assert_eq!(problems.len(), problem_count, "{extra}: {problems:?}");
        if problem_count > 0 {
            assert_eq!(problems[0].field, "status.loadBalancer.ingress");
        }
        let vips: Vec<String> = plan
            .frontends
            .iter()
            .map(|(f, p)| format!("{} {}", p.kind, f.vip))
            .collect();
        assert_eq!(vips, expected, "{extra}");
    }
}

#[test]
fn cluster_ip_services_are_forwarded_on_their_external_ips_only() {
    let cluster_ip = "apiVersion: v1\nkind: Service\nmetadata: {name: c}\nspec:\n  type: ClusterIP\n  ports: [{port: 80, nodePort: 30080}]\n";
    let (plan, problems) = translate(
        &objects(vec![service(cluster_ip)], vec![]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert!(plan.frontends.is_empty() && problems.is_empty());
    let with_external = cluster_ip.replace(
        "type: ClusterIP",
        "type: ClusterIP\n  externalIPs: [203.0.113.9]",
    );
    let (plan, problems) = translate(
        &objects(vec![service(&with_external)], vec![]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert!(problems.is_empty(), "{problems:?}");
    let got: Vec<(String, FrontendKind)> = plan
        .frontends
        .iter()
        .map(|(f, p)| (f.to_string(), p.kind))
        .collect();
    assert_eq!(
        got,
        [("203.0.113.9:80/TCP".to_string(), FrontendKind::ExternalIp)]
    );
}

#[test]
fn service_without_endpoint_slices_has_no_backends_and_no_problem() {
    let (plan, problems) = translate(
        &objects(vec![service(WEB)], vec![]),
        &L4Plan::default(),
        &L4Options::default(),
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert!(plan.frontends[&vip(80, Protocol::Tcp)].backends.is_empty());
}

#[test]
fn port_name_is_resolved_like_kube_proxy() {
    // The Service port "http" maps to the slice port named "http" whatever its number; a target
    // port number in the Service does not matter.
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  type: LoadBalancer\n  loadBalancerIP: 203.0.113.5\n  ports: [{name: http, port: 80, targetPort: 1234}, {name: admin, port: 81}]\n";
    let sl = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1, labels: {kubernetes.io/service-name: s}}\naddressType: IPv4\nports: [{name: admin, port: 9000}, {name: http, port: 8080}]\nendpoints: [{addresses: [198.51.100.20]}]\n";
    let (plan, problems) = translate(
        &objects(vec![service(svc)], vec![slice(sl)]),
        &L4Plan::default(),
        &NO_NODE,
    );
    assert!(problems.is_empty(), "{problems:?}");
    let got: Vec<(u16, Vec<String>)> = plan
        .frontends
        .iter()
        .map(|(f, p)| (f.port, p.backends.iter().map(|b| b.to_string()).collect()))
        .collect();
    assert_eq!(
        got,
        [
            (80, vec!["198.51.100.20:8080".to_string()]),
            (81, vec!["198.51.100.20:9000".to_string()])
        ]
    );
}

#[test]
fn slices_of_other_services_and_namespaces_do_not_count() {
    let other_ns = WEB_SLICE_B.replace("namespace: demo", "namespace: other");
    let other_service = WEB_SLICE_B
        .replace("service-name: web", "service-name: api")
        .replace("web-b", "api-b");
    let objects = objects(
        vec![service(WEB)],
        vec![slice(WEB_SLICE_A), slice(&other_ns), slice(&other_service)],
    );
    let (plan, _) = translate(&objects, &L4Plan::default(), &L4Options::default());
    assert_eq!(
        backends(&plan, vip(80, Protocol::Tcp)),
        ["198.51.100.11:8080", "198.51.100.12:8080"]
    );
}

#[test]
fn problems_name_the_field_and_keep_the_last_good_state() {
    let good = objects(vec![service(WEB)], vec![slice(WEB_SLICE_A)]);
    let (previous, _) = translate(&good, &L4Plan::default(), &L4Options::default());
    let broken_variants = [
        (
            WEB.replace(
                "status: {loadBalancer: {ingress: [{ip: 203.0.113.10}]}}",
                "",
            ),
            "status.loadBalancer.ingress",
        ),
        (
            WEB.replace("{ip: 203.0.113.10}", "{ip: 203.0.113.300}"),
            "status.loadBalancer.ingress[0].ip",
        ),
        (
            WEB.replace("protocol: UDP", "protocol: QUIC"),
            "spec.ports[1].protocol",
        ),
        (
            WEB.replace("name: http, port: 80", "name: htp, port: 80"),
            "spec.ports[0].name",
        ),
        (
            WEB.replace("port: 80,", "port: 70000,"),
            "spec.ports[0].port",
        ),
    ];
    for (yaml, field) in broken_variants {
        let broken = objects(vec![service(&yaml)], vec![slice(WEB_SLICE_A)]);
        let (plan, problems) = translate(&broken, &previous, &L4Options::default());
        assert_eq!(problems.len(), 1, "{field}: {problems:?}");
        assert_eq!(problems[0].field, field);
        assert_eq!(problems[0].object, "Service demo/web");
        assert_eq!(problems[0].origin, "/m/test.yaml (document 1)");
        assert_eq!(plan, previous, "{field}: last good state kept");
        // The same broken Service with nothing programmed before is simply not forwarded.
        let (fresh, _) = translate(&broken, &L4Plan::default(), &L4Options::default());
        assert!(fresh.frontends.is_empty(), "{field}");
    }
}

#[test]
fn sctp_ports_are_skipped_but_the_rest_is_forwarded() {
    let yaml = WEB.replace("protocol: UDP", "protocol: SCTP");
    let (plan, problems) = translate(
        &objects(vec![service(&yaml)], vec![slice(WEB_SLICE_A)]),
        &L4Plan::default(),
        &NO_NODE,
    );
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "spec.ports[1].protocol");
    assert_eq!(
        plan.frontends.keys().copied().collect::<Vec<_>>(),
        [vip(80, Protocol::Tcp)]
    );
}

#[test]
fn conflicting_claims_go_to_the_incumbent_then_the_oldest() {
    let older = "apiVersion: v1\nkind: Service\nmetadata: {name: b-old, namespace: x, creationTimestamp: \"2025-01-01T00:00:00Z\"}\nspec: {type: LoadBalancer, loadBalancerIP: 203.0.113.7, ports: [{port: 80}]}\n";
    let newer = "apiVersion: v1\nkind: Service\nmetadata: {name: a-new, namespace: x, creationTimestamp: \"2026-01-01T00:00:00Z\"}\nspec: {type: LoadBalancer, loadBalancerIP: 203.0.113.7, ports: [{port: 80}]}\n";
    let contested = Frontend {
        vip: Ipv4Addr::new(203, 0, 113, 7),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let both = objects(vec![service(older), service(newer)], vec![]);
    let (plan, problems) = translate(&both, &L4Plan::default(), &L4Options::default());
    assert_eq!(
        plan.frontends[&contested].service.name, "b-old",
        "older wins"
    );
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].object, "Service x/a-new");
    // Whoever already holds the frontend keeps it, even if younger.
    let (only_newer, _) = translate(
        &objects(vec![service(newer)], vec![]),
        &L4Plan::default(),
        &L4Options::default(),
    );
    let (plan, problems) = translate(&both, &only_newer, &L4Options::default());
    assert_eq!(
        plan.frontends[&contested].service.name, "a-new",
        "incumbent keeps it"
    );
    assert_eq!(problems[0].object, "Service x/b-old");
    // Same timestamp: namespace/name decides, deterministically.
    let same = older.replace("2025-01-01", "2026-01-01");
    let (plan, _) = translate(
        &objects(vec![service(&same), service(newer)], vec![]),
        &L4Plan::default(),
        &NO_NODE,
    );
    assert_eq!(plan.frontends[&contested].service.name, "a-new");
}

#[test]
fn removed_service_disappears_from_the_plan() {
    let (previous, _) = translate(
        &objects(vec![service(WEB)], vec![slice(WEB_SLICE_A)]),
        &L4Plan::default(),
        &NO_NODE,
    );
    let (plan, problems) = translate(
        &objects(vec![], vec![slice(WEB_SLICE_A)]),
        &previous,
        &L4Options::default(),
    );
    assert!(plan.frontends.is_empty() && problems.is_empty());
}

/// The incremental path gives the plan a full translation gives, for endpoint changes, and
/// declines structural changes.
#[test]
fn retranslating_changed_services_matches_a_full_translation() {
    let api = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: demo}
spec: {type: LoadBalancer, ports: [{name: http, port: 80}]}
status: {loadBalancer: {ingress: [{ip: 203.0.113.20}]}}
"#;
    let api_slice = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-a, namespace: demo, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 9000}]
endpoints: [{addresses: [198.51.100.31]}]
"#;
    let before = objects(
        vec![service(WEB), service(api)],
        vec![slice(WEB_SLICE_A), slice(WEB_SLICE_B), slice(api_slice)],
    );
    let (mut plan, _) = translate(&before, &L4Plan::default(), &L4Options::default());
    let web = ObjectName {
        namespace: "demo".into(),
        name: "web".into(),
    };

    // web-b loses its endpoint and gains another: only web's frontends change.
    let mut after = before.clone();
    after.endpoint_slices.insert(
        ObjectName {
            namespace: "demo".into(),
            name: "web-b".into(),
        },
        slice(&WEB_SLICE_B.replace("198.51.100.13", "198.51.100.14")),
    );
    let (changed, problems) =
        retranslate_services(&after, &mut plan, &BTreeSet::from([web.clone()]), &NO_NODE)
            .expect("incremental");
    assert!(problems.is_empty());
    assert_eq!(changed.len(), 2, "web's TCP and UDP frontends");
    let (full, _) = translate(&after, &L4Plan::default(), &L4Options::default());
    assert_eq!(plan, full);

    // Nothing changed: nothing to write.
    let (changed, _) =
        retranslate_services(&after, &mut plan, &BTreeSet::from([web.clone()]), &NO_NODE)
            .expect("incremental");
    assert!(changed.is_empty());

    // Structural: web loses its UDP port, or goes away.
    let mut fewer_ports = after.clone();
    fewer_ports.services.insert(
        web.clone(),
        service(&WEB.replace("  - {name: dns, protocol: UDP, port: 53}\n", "")),
    );
    assert!(retranslate_services(
        &fewer_ports,
        &mut plan.clone(),
        &BTreeSet::from([web.clone()]),
        &NO_NODE
    )
    .is_none());
    let mut gone = after.clone();
    gone.services.remove(&web);
    assert!(
        retranslate_services(&gone, &mut plan.clone(), &BTreeSet::from([web]), &NO_NODE).is_none()
    );
}

mod endpoints;
mod frontends;
mod policies;
