//! Which frontends a Service makes (LoadBalancer, externalIPs, nodePorts on every node
//! address), which Services are left to other proxies, and who keeps a contested nodePort or
//! health check port.

use super::*;

const NODE_PORT: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: np, namespace: demo, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  type: NodePort
  ports:
  - {name: http, port: 80, nodePort: 30080}
  - {name: dns, protocol: UDP, port: 53, nodePort: 30053}
"#;

const NP_SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: np-a, namespace: demo, labels: {kubernetes.io/service-name: np}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, protocol: UDP, port: 8053}]
endpoints:
- {addresses: [198.51.100.11], nodeName: n1}
- {addresses: [198.51.100.21], nodeName: n2}
"#;

fn kinds(plan: &L4Plan) -> Vec<String> {
    plan.frontends
        .iter()
        .map(|(f, p)| format!("{} {f}", p.kind))
        .collect()
}

#[test]
fn node_ports_are_frontends_on_every_node_address() {
    let (plan, problems) = translate(
        &objects(vec![service(NODE_PORT)], vec![slice(NP_SLICE)]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        kinds(&plan),
        [
            "NodePort 192.0.2.1:30053/UDP",
            "NodePort 192.0.2.1:30080/TCP",
            "NodePort 192.0.2.2:30053/UDP",
            "NodePort 192.0.2.2:30080/TCP",
        ]
    );
    let http = &plan.frontends[&Frontend {
        vip: Ipv4Addr::new(192, 0, 2, 2),
        port: 30080,
        protocol: Protocol::Tcp,
    }];
    assert_eq!(http.port_name, "http");
    assert_eq!(http.backends.len(), 2);
    // Without node addresses (validate without --node-ip) nodePorts make no frontend, and no
    // problem either.
    let (plan, problems) = translate(
        &objects(vec![service(NODE_PORT)], vec![slice(NP_SLICE)]),
        &L4Plan::default(),
        &NO_NODE,
    );
    assert!(
        plan.frontends.is_empty() && problems.is_empty(),
        "{problems:?}"
    );
}

#[test]
fn load_balancer_services_have_every_kind_unless_node_ports_are_not_allocated() {
    let lb = r#"
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: demo}
spec:
  type: LoadBalancer
  externalIPs: [203.0.113.50]
  ports: [{port: 443, nodePort: 30443}]
status: {loadBalancer: {ingress: [{ip: 203.0.113.40}]}}
"#;
    let (plan, problems) = translate(
        &objects(vec![service(lb)], vec![]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        kinds(&plan),
        [
            "NodePort 192.0.2.1:30443/TCP",
            "NodePort 192.0.2.2:30443/TCP",
            "LoadBalancer 203.0.113.40:443/TCP",
            "externalIP 203.0.113.50:443/TCP",
        ]
    );
    // allocateLoadBalancerNodePorts: false: the API server leaves nodePort out.
    let no_node_ports = lb.replace(
        "ports: [{port: 443, nodePort: 30443}]",
        "allocateLoadBalancerNodePorts: false\n  ports: [{port: 443}]",
    );
    let (plan, _) = translate(
        &objects(vec![service(&no_node_ports)], vec![]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert_eq!(
        kinds(&plan),
        [
            "LoadBalancer 203.0.113.40:443/TCP",
            "externalIP 203.0.113.50:443/TCP"
        ]
    );
    // A LoadBalancer Service still waiting for its address serves its nodePorts (reported).
    let pending = lb
        .replace(
            "status: {loadBalancer: {ingress: [{ip: 203.0.113.40}]}}",
            "",
        )
        .replace("  externalIPs: [203.0.113.50]\n", "");
    let (plan, problems) = translate(
        &objects(vec![service(&pending)], vec![]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert_eq!(
        kinds(&plan),
        [
            "NodePort 192.0.2.1:30443/TCP",
            "NodePort 192.0.2.2:30443/TCP"
        ]
    );
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "status.loadBalancer.ingress");
}

#[test]
fn services_of_other_proxies_and_headless_ones_are_left_alone_and_come_back_live() {
    for label in [
        "service.kubernetes.io/service-proxy-name: other",
        "service.kubernetes.io/service-proxy-name: \"\"",
        "service.kubernetes.io/headless: \"\"",
    ] {
        let labelled = NODE_PORT.replace(
            "namespace: demo,",
            &format!("namespace: demo, labels: {{{label}}},"),
        );
        let with_label = objects(vec![service(&labelled)], vec![slice(NP_SLICE)]);
        let without = objects(vec![service(NODE_PORT)], vec![slice(NP_SLICE)]);
        let (plan, problems) = translate(&with_label, &L4Plan::default(), &node("n1"));
        assert!(plan.frontends.is_empty() && problems.is_empty(), "{label}");

        // Label removed: the incremental path declines (new frontends), the full one adds them.
        let np = object_name(
            &without
                .services
                .values()
                .next()
                .expect("one")
                .object
                .metadata,
        );
        let mut incremental = plan.clone();
        let touched = BTreeSet::from([np]);
        assert!(
            retranslate_services(&without, &mut incremental, &touched, &node("n1")).is_none(),
            "{label}"
        );
        let (added, _) = translate(&without, &plan, &node("n1"));
        assert_eq!(added.frontends.len(), 4, "{label}");

        // Label added back: structural again, and the full translation removes them.
        let mut incremental = added.clone();
        assert!(
            retranslate_services(&with_label, &mut incremental, &touched, &node("n1")).is_none(),
            "{label}"
        );
        let (removed, _) = translate(&with_label, &added, &node("n1"));
        assert!(removed.frontends.is_empty(), "{label}");
    }
}

#[test]
fn a_contested_node_port_goes_to_the_incumbent_then_the_oldest_and_names_its_field() {
    let older = NODE_PORT
        .replace("name: np,", "name: old,")
        .replace("2026-01-01T00:00:00Z", "2025-01-01T00:00:00Z");
    // The younger Service wants 30080 as its second port; its first port is its own.
    let younger = NODE_PORT
        .replace("name: np,", "name: young,")
        .replace(
            "{name: http, port: 80, nodePort: 30080}",
            "{name: http, port: 80, nodePort: 30081}",
        )
        .replace(
            "{name: dns, protocol: UDP, port: 53, nodePort: 30053}",
            "{name: web, port: 81, nodePort: 30080}",
        );
    let both = objects(vec![service(&older), service(&younger)], vec![]);
    let (plan, problems) = translate(&both, &L4Plan::default(), &node("n1"));
    let holder = |plan: &L4Plan, port: u16| {
        plan.frontends[&Frontend {
            vip: Ipv4Addr::new(192, 0, 2, 1),
            port,
            protocol: Protocol::Tcp,
        }]
            .service
            .name
            .clone()
    };
    assert_eq!(holder(&plan, 30080), "old");
    assert_eq!(
        holder(&plan, 30081),
        "young",
        "the rest of the loser is forwarded"
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].object, "Service demo/young");
    assert_eq!(problems[0].field, "spec.ports[1].nodePort");
    assert!(
        problems[0].message.contains("nodePort 30080/TCP"),
        "{}",
        problems[0].message
    );

    // The incumbent keeps it even when younger.
    let (only_younger, _) = translate(
        &objects(vec![service(&younger)], vec![]),
        &L4Plan::default(),
        &node("n1"),
    );
    let (plan, problems) = translate(&both, &only_younger, &node("n1"));
    assert_eq!(holder(&plan, 30080), "young");
    assert_eq!(problems[0].object, "Service demo/old");
    assert_eq!(problems[0].field, "spec.ports[0].nodePort");

    // Same port, other protocol: no conflict.
    let udp = younger.replace(
        "{name: web, port: 81, nodePort: 30080}",
        "{name: web, protocol: UDP, port: 81, nodePort: 30080}",
    );
    let (_, problems) = translate(
        &objects(vec![service(&older), service(&udp)], vec![]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert!(problems.is_empty(), "{problems:?}");

    // Collisions are found without node addresses too (validate).
    let (_, problems) = translate(&both, &L4Plan::default(), &NO_NODE);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "spec.ports[1].nodePort");
}

#[test]
fn a_contested_external_ip_names_its_field() {
    let a = "apiVersion: v1\nkind: Service\nmetadata: {name: a, creationTimestamp: \"2025-01-01T00:00:00Z\"}\nspec: {externalIPs: [203.0.113.60], ports: [{port: 80}]}\n";
    let b = "apiVersion: v1\nkind: Service\nmetadata: {name: b, creationTimestamp: \"2026-01-01T00:00:00Z\"}\nspec: {externalIPs: [\"2001:db8::1\", 203.0.113.61, 203.0.113.60], ports: [{port: 80}]}\n";
    let (plan, problems) = translate(
        &objects(vec![service(a), service(b)], vec![]),
        &L4Plan::default(),
        &NO_NODE,
    );
    assert_eq!(plan.frontends.len(), 2);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].object, "Service default/b");
    assert_eq!(
        problems[0].field, "spec.externalIPs[2]",
        "the index in the Service"
    );
}

#[test]
fn a_contested_health_check_port_goes_to_the_older_service() {
    let local = |name: &str, created: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo, creationTimestamp: \"{created}\"}}\nspec: {{type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 32000, loadBalancerIP: 203.0.113.{}, ports: [{{port: 80}}]}}\n",
            if name == "a" { 1 } else { 2 }
        )
    };
    let a = local("a", "2026-01-01T00:00:00Z");
    let b = local("b", "2025-01-01T00:00:00Z");
    let (plan, problems) = translate(
        &objects(vec![service(&a), service(&b)], vec![]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert_eq!(plan.health_checks[&32000].service.name, "b");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].object, "Service demo/a");
    assert_eq!(problems[0].field, "spec.healthCheckNodePort");
    assert_eq!(plan.frontends.len(), 2, "both Services are forwarded");
}

/// KEP-1860: a load balancer that proxies (`ipMode: Proxy`) sends its traffic to the nodes, not
/// to the VIP: kube-proxy does not program such a VIP, and neither does the agent (nor does it
/// fall back to `spec.loadBalancerIP` then).
#[test]
fn proxy_mode_load_balancer_addresses_are_not_frontends() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  type: LoadBalancer\n  loadBalancerIP: 203.0.113.2\n  ports: [{port: 80, nodePort: 30080}]\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.1, ipMode: Proxy}, {ip: 203.0.113.3, ipMode: VIP}]}}\n";
    let (plan, problems) = translate(
        &objects(vec![service(svc)], vec![]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(
        kinds(&plan),
        [
            "NodePort 192.0.2.1:30080/TCP",
            "NodePort 192.0.2.2:30080/TCP",
            "LoadBalancer 203.0.113.3:80/TCP"
        ]
    );
    let only_proxy = svc.replace(", {ip: 203.0.113.3, ipMode: VIP}", "");
    let (plan, problems) = translate(
        &objects(vec![service(&only_proxy)], vec![]),
        &L4Plan::default(),
        &node("n1"),
    );
    assert!(problems.is_empty(), "not pending: {problems:?}");
    assert!(plan
        .frontends
        .values()
        .all(|p| p.kind == FrontendKind::NodePort));
}
