//! The deployment under `deploy/` is what Kubernetes and the agent accept, and its RBAC is
//! exactly what the agent uses.
//!
//! * Every manifest parses as its k8s-openapi type, strictly: the kustomize base and overlays as
//!   `kubectl kustomize` renders them, and `deploy/examples/*.yaml`. A field the type does not
//!   know (misspelled, misplaced) or a kind no type is known for fails, and every YAML file under
//!   `deploy/` is reached by one of these.
//! * The DaemonSets are fit for production: their args parse with the agent's own command line
//!   (so defaults such as `--drain-timeout` are the agent's), probes and Prometheus reach the
//!   metrics listener while `/debug` stays on loopback, the grace period covers the drain, the
//!   rollout keeps all but one node serving, the Service selects the pods and reaches their
//!   ports. The `kube-proxy-replacement` overlay has the host
//!   network, named capabilities (never `privileged`) and bpffs; `l7-only` runs as non-root with
//!   no capability, no BPF and unprivileged ports.
//! * The ClusterRole and Role bound to the agent's service account allow every API call the
//!   agent makes and grant nothing it does not use. The calls are not listed by hand: the agent
//!   (its `Runner`) runs against the fake API server with every API-calling feature in use
//!   (watchers of the five kinds, Ingress status, VIP assignment into Service status, leader
//!   election on a Lease, Events created and patched as a series), and its request log is
//!   checked against the rendered RBAC.
//!
//! `kubectl` must be on PATH (`cargo xtask setup` installs one). The RBAC test needs root (its
//! own network namespace, XDP in generic mode on a dummy interface).

mod daemonset;
mod manifests;
mod rbac;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
};

use anyhow::{bail, ensure, Context as _, Result};
use daemonset::{agent_args, agent_pod, check_daemonset, DAEMONSET};
use fake_apiserver::{FakeApiServer, RequestRecord, Verb};
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Service, networking::v1::IngressClass};
use kube::{
    ingress_ips, kubeconfig, lease_holder, objects, run_args, settle, start_runner, Scene, DUMMY_IF,
};
use manifests::{Document, EXAMPLES, KUBE_PROXY_REPLACEMENT, KUSTOMIZATIONS, L7_ONLY};
use serde_json::json;
use xdp_ingress_tests::{kube, root::root_or_skip};

/// Every YAML file under `deploy/` parses strictly as its Kubernetes type; none is left out.
#[test]
fn every_manifest_parses_as_its_kubernetes_type() -> Result<()> {
    let mut checked: BTreeSet<PathBuf> = BTreeSet::new();
    for dir in KUSTOMIZATIONS {
        let documents = manifests::rendered(dir)?;
        ensure!(!documents.is_empty(), "{dir} renders nothing");
        checked.extend(manifests::kustomization_inputs(dir)?);
    }
    let examples = manifests::yaml_files(EXAMPLES)?;
    ensure!(!examples.is_empty(), "no examples in {EXAMPLES}");
    for file in &examples {
        let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
        let documents = manifests::documents(&text, &file.display().to_string())?;
        ensure!(!documents.is_empty(), "{} holds nothing", file.display());
        checked.insert(file.canonicalize()?);
    }
    // A manifest no kustomization renders and no example lists would escape the check.
    for file in manifests::yaml_files("deploy")? {
        let is_kustomization = file
            .file_name()
            .is_some_and(|name| name == "kustomization.yaml");
        ensure!(
            is_kustomization || checked.contains(&file.canonicalize()?),
            "{} is neither rendered by {KUSTOMIZATIONS:?} nor an example: it is never checked",
            file.display()
        );
    }
    Ok(())
}

/// The checker itself: a misspelled field, a field at the wrong level and an unknown kind each
/// fail, where a lenient `serde` deserialization would have dropped or skipped them.
#[test]
fn misspelled_fields_and_unknown_kinds_fail_the_check() -> Result<()> {
    let rendered = manifests::render(KUBE_PROXY_REPLACEMENT)?;
    manifests::documents(&rendered, "as rendered")?;
    let mutations = [
        ("hostNetwork: true", "hostNetwrok: true", "hostNetwrok"),
        // Valid name, wrong place: a container has no `hostNetwork`.
        (
            "      - args:",
            "      - hostNetwork: true\n        args:",
            "hostNetwork",
        ),
        ("kind: IngressClass", "kind: IngressKlass", "IngressKlass"),
    ];
    for (from, to, named) in mutations {
        ensure!(
            rendered.contains(from),
            "the rendered overlay no longer contains {from:?}: update this test's mutation"
        );
        let broken = rendered.replacen(from, to, 1);
        match manifests::documents(&broken, "mutated") {
            Ok(_) => bail!("{from:?} → {to:?} was accepted"),
            Err(error) => ensure!(
                format!("{error:#}").contains(named),
                "{from:?} → {to:?} failed without naming {named}: {error:#}"
            ),
        }
    }
    Ok(())
}

/// XDP on the node: host network, exactly the capabilities BPF and XDP need, bpffs.
#[test]
fn kube_proxy_replacement_daemonset_is_production_ready() -> Result<()> {
    let documents = manifests::rendered(KUBE_PROXY_REPLACEMENT)?;
    let (daemonset, args) = check_daemonset(&documents)?;
    let (pod, container) = agent_pod(&daemonset)?;
    // Every node's own uplinks (its default routes), not one NIC name for all nodes.
    ensure!(
        args.datapath.interfaces == [xdp_ingress::node::AUTO_INTERFACE],
        "--interface {:?}, want auto",
        args.datapath.interfaces
    );
    ensure!(pod.host_network == Some(true), "not on the host network");
    // As kube-proxy: scheduled first and evicted last, on every node whatever its taints.
    ensure!(
        pod.priority_class_name.as_deref() == Some("system-node-critical"),
        "priorityClassName {:?}",
        pod.priority_class_name
    );
    let tolerates_all =
        pod.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
        });
    ensure!(tolerates_all, "tolerations {:?}", pod.tolerations);
    // Which endpoints are local: --node-name's default comes from the downward API.
    let node_name = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    ensure!(
        node_name == Some("spec.nodeName"),
        "NODE_NAME from {node_name:?}, want spec.nodeName"
    );
    // Cluster DNS stays reachable from the host network.
    ensure!(
        pod.dns_policy.as_deref() == Some("ClusterFirstWithHostNet"),
        "dnsPolicy {:?}",
        pod.dns_policy
    );
    let added: BTreeSet<String> = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    // BPF: programs and maps; NET_ADMIN: attaching XDP; PERFMON: the verifier's pointer
    // arithmetic for non-CAP_SYS_ADMIN loaders; SYS_RESOURCE: the memlock rlimit of older
    // kernels. Nothing broader (SYS_ADMIN) and no `privileged`.
    let wanted: BTreeSet<String> = ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"]
        .map(str::to_string)
        .into();
    ensure!(
        added == wanted,
        "capabilities added {added:?}, want {wanted:?}"
    );
    // The maps are pinned on the host's bpffs.
    let bpffs = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| {
            v.host_path
                .as_ref()
                .is_some_and(|h| h.path == "/sys/fs/bpf")
        })
        .context("no hostPath volume of /sys/fs/bpf")?;
    let mounted = container
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == bpffs.name && m.mount_path == "/sys/fs/bpf");
    ensure!(
        mounted,
        "bpffs volume {} not mounted at /sys/fs/bpf",
        bpffs.name
    );
    Ok(())
}

/// The Ingress controller only: no BPF, no host network, non-root, no capability, so it can
/// only bind unprivileged ports.
#[test]
fn l7_only_daemonset_is_unprivileged_and_loads_no_bpf() -> Result<()> {
    let documents = manifests::rendered(L7_ONLY)?;
    let (daemonset, args) = check_daemonset(&documents)?;
    let (pod, container) = agent_pod(&daemonset)?;
    ensure!(
        args.datapath.interfaces.is_empty(),
        "--interface {:?}: the agent would load BPF",
        args.datapath.interfaces
    );
    ensure!(pod.host_network != Some(true), "on the host network");
    let security = container
        .security_context
        .as_ref()
        .context("no securityContext")?;
    let pod_security = pod.security_context.as_ref();
    let non_root = security
        .run_as_non_root
        .or(pod_security.and_then(|s| s.run_as_non_root));
    ensure!(non_root == Some(true), "runAsNonRoot is not true");
    let user = security
        .run_as_user
        .or(pod_security.and_then(|s| s.run_as_user));
    ensure!(user != Some(0), "runs as uid 0");
    let added = security
        .capabilities
        .as_ref()
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    ensure!(added.is_empty(), "capabilities added: {added:?}");
    let host_paths: Vec<_> = pod
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.host_path.is_some())
        .collect();
    ensure!(host_paths.is_empty(), "hostPath volumes: {host_paths:?}");
    // Non-root without NET_BIND_SERVICE cannot bind below 1024.
    for listen in [
        &args.proxy.http_listen,
        &args.proxy.https_listen,
        &args.admin.admin_listen,
        &args.admin.metrics_listen,
    ] {
        if let Some(addr) = listen.0 {
            ensure!(addr.port() >= 1024, "{addr} is a privileged port");
        }
    }
    Ok(())
}

/// What the scenario takes from the rendered manifests.
struct Deployed {
    /// Every rendered document of the overlay.
    documents: Vec<Document>,
    /// The agent's namespace: its Lease's (`$POD_NAMESPACE`) and its Role's.
    namespace: String,
    /// `--publish-service`.
    publish_service: String,
}

/// The pool `--assign-vips` hands out in the scenario, and its first address.
const POOL: &str = "203.0.113.0/28";
const FIRST_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The namespace of the scenario's workload.
const APP_NS: &str = "shop";
/// The kinds the agent watches (their plural names).
const WATCHED: [&str; 5] = [
    "services",
    "endpointslices",
    "ingresses",
    "secrets",
    "ingressclasses",
];

/// Every API call the agent makes is allowed by the rendered RBAC, and everything the RBAC
/// grants is used by some call.
#[test]
fn rbac_allows_exactly_the_api_calls_the_agent_makes() -> Result<()> {
    if !root_or_skip("rbac_allows_exactly_the_api_calls_the_agent_makes") {
        return Ok(());
    }
    let documents = manifests::rendered(KUBE_PROXY_REPLACEMENT)?;
    // Both overlays share the RBAC, so what holds for one holds for the other.
    let rbac_of = |documents: &[Document]| -> Vec<serde_json::Value> {
        documents
            .iter()
            .filter(|d| d.api_version == "rbac.authorization.k8s.io/v1")
            .map(|d| d.value.clone())
            .collect()
    };
    ensure!(
        rbac_of(&documents) == rbac_of(&manifests::rendered(L7_ONLY)?),
        "the overlays' RBAC differ"
    );
    let daemonset: DaemonSet = manifests::one(&documents, DAEMONSET)?;
    let namespace = daemonset
        .metadata
        .namespace
        .clone()
        .context("the DaemonSet has no namespace")?;
    let (pod, container) = agent_pod(&daemonset)?;
    let account = rbac::Account {
        namespace: namespace.clone(),
        name: pod
            .service_account_name
            .clone()
            .context("no serviceAccountName")?,
    };
    let publish_service = agent_args(container)?
        .cluster
        .publish_service
        .context("no --publish-service")?;
    let grants = rbac::grants(&documents, &account)?;
    ensure!(!grants.is_empty(), "no RBAC for {account:?}");

    let deployed = Deployed {
        documents,
        namespace,
        publish_service,
    };
    let scene = Scene::new("xk-rbac")?;
    let records = scene
        .run(async move |server: &FakeApiServer| use_every_api_feature(server, &deployed).await)?;

    let mut calls = BTreeMap::new();
    for record in &records {
        let call = rbac::call(record)?;
        calls.entry(call).or_insert_with(|| record.clone());
    }
    // (a) Every call is allowed.
    let denied: Vec<String> = calls
        .iter()
        .filter(|(call, _)| !grants.iter().any(|g| g.allows(call)))
        .map(|(call, record)| format!("{call} ({} {})", record.method, record.path))
        .collect();
    ensure!(
        denied.is_empty(),
        "the RBAC forbids calls the agent makes:\n  {}",
        denied.join("\n  ")
    );
    // (b) Every grant is used.
    let unused: Vec<String> = grants
        .iter()
        .filter(|g| !calls.keys().any(|call| g.allows(call)))
        .map(ToString::to_string)
        .collect();
    ensure!(
        unused.is_empty(),
        "the RBAC grants what the agent never calls:\n  {}",
        unused.join("\n  ")
    );
    Ok(())
}

/// Runs the agent with every feature that calls the API, until each has made its calls, then
/// stops it (which releases the Lease); returns every request it made.
async fn use_every_api_feature(
    server: &FakeApiServer,
    deployed: &Deployed,
) -> Result<Vec<RequestRecord>> {
    // The deployed IngressClass and front-door Service, as rendered.
    for document in &deployed.documents {
        if document.kind == "IngressClass" {
            server.apply(&document.value)?;
        }
    }
    let class: IngressClass = manifests::of_kind::<IngressClass>(&deployed.documents)?
        .into_iter()
        .map(|(_, class)| class)
        .next()
        .context("no IngressClass")?;
    let class = class.metadata.name.context("unnamed IngressClass")?;
    let (front_ns, front_name) = deployed
        .publish_service
        .split_once('/')
        .context("--publish-service")?;
    let front: Service = manifests::one(&deployed.documents, front_name)?;
    server.apply(&front)?;

    // A workload: a Service with endpoints, an Ingress with TLS from a Secret, and an Ingress
    // with two bad paths (two problems on one object: an Event, then the same Event patched as
    // a series, which is how kube-runtime's Recorder reports a repeat).
    server.apply(&objects::service(APP_NS, "web", None, None))?;
    server.apply(&objects::slice(
        APP_NS,
        "web-a",
        "web",
        8080,
        &[(Ipv4Addr::new(192, 0, 2, 20), true)],
    ))?;
    let certified = rcgen::generate_simple_self_signed(vec!["shop.example".to_string()])?;
    server.apply(&objects::tls_secret(APP_NS, "shop-tls", &certified))?;
    server.apply(&objects::with_tls(
        objects::ingress(APP_NS, "shop", Some(&class), "shop.example", "/", "web"),
        &["shop.example"],
        "shop-tls",
    ))?;
    let mut broken = objects::ingress(APP_NS, "broken", Some(&class), "bad.example", "nope", "web");
    let second_path = json!({
        "path": "nada",
        "pathType": "Prefix",
        "backend": {"service": {"name": "web", "port": {"number": objects::SERVICE_PORT}}},
    });
    broken["spec"]["rules"][0]["http"]["paths"]
        .as_array_mut()
        .context("the Ingress has no paths")?
        .push(second_path);
    server.apply(&broken)?;

    // The deployed publish Service and election namespace ($POD_NAMESPACE in the pod); VIPs
    // assigned to every LoadBalancer Service, so the front door gets its address from the agent
    // and the agent publishes it in the Ingresses' status.
    let config = kubeconfig(server)?;
    let extra = [
        "--publish-service",
        deployed.publish_service.as_str(),
        "--election-namespace",
        deployed.namespace.as_str(),
        "--assign-vips",
        POOL,
        "--assign-vips-to-all",
    ];
    let runner = start_runner(run_args(config.path(), DUMMY_IF, &extra)?).await?;
    let want_ips = Some(vec![FIRST_VIP.to_string()]);
    settle("every API-calling feature has made its calls", async || {
        for kind in WATCHED {
            ensure!(
                server.count(Verb::List, kind) > 0 && server.count(Verb::Watch, kind) > 0,
                "{kind} not listed and watched yet"
            );
        }
        let front_ips = kube::service_ips(server, front_ns, front_name)?
            .context("the front-door Service is gone")?;
        ensure!(
            front_ips == [FIRST_VIP.to_string()],
            "front door: {front_ips:?}"
        );
        let shop = ingress_ips(server, APP_NS, "shop")?;
        ensure!(shop == want_ips, "shop's status: {shop:?}");
        ensure!(
            lease_holder(server, &deployed.namespace)?.is_some(),
            "no Lease holder"
        );
        ensure!(
            server.count(Verb::Create, "events.events.k8s.io") > 0
                && server.count(Verb::Patch, "events.events.k8s.io") > 0,
            "no Event created and patched yet"
        );
        Ok(())
    })
    .await?;
    // Stopping releases the Lease: a read and an update, whether or not a renewal happened.
    runner.stop().await?;
    ensure!(
        lease_holder(server, &deployed.namespace)?.is_none(),
        "the Lease was not released"
    );
    Ok(server.requests())
}
