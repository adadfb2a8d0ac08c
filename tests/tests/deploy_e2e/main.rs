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

mod manifests;
mod rbac;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Parser as _;
use fake_apiserver::{FakeApiServer, RequestRecord, Verb};
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, PodSpec, Service, ServiceAccount},
        networking::v1::IngressClass,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{
    ingress_ips, kubeconfig, lease_holder, objects, run_args, settle, start_runner, Scene, DUMMY_IF,
};
use manifests::{Document, EXAMPLES, KUBE_PROXY_REPLACEMENT, KUSTOMIZATIONS, L7_ONLY};
use serde_json::json;
use xdp_ingress::cli::{Cli, Command, RunArgs};
use xdp_ingress_tests::{kube, root::root_or_skip};

/// The agent's DaemonSet and its container.
const DAEMONSET: &str = "xdp-ingress";
const CONTAINER: &str = "agent";
/// What `cargo xtask image` tags (`IMAGE_NAME` in xtask/src/image.rs, with the workspace
/// version). xtask's own test checks the base's kustomization text; this checks the image the
/// overlays actually render, which an overlay's `images:` could change.
fn built_image() -> String {
    format!("localhost/xdp-ingress:{}", env!("CARGO_PKG_VERSION"))
}

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

/// The agent's pod spec and container in a rendered DaemonSet.
fn agent_pod(daemonset: &DaemonSet) -> Result<(&PodSpec, &Container)> {
    let pod = daemonset
        .spec
        .template
        .spec
        .as_ref()
        .context("the DaemonSet has no pod spec")?;
    let container = pod
        .containers
        .iter()
        .find(|c| c.name == CONTAINER)
        .with_context(|| format!("no container {CONTAINER}"))?;
    Ok((pod, container))
}

/// The container's args as the agent parses them (the image's ENTRYPOINT is the agent, so
/// `args` is its command line).
fn agent_args(container: &Container) -> Result<RunArgs> {
    ensure!(
        container.command.is_none(),
        "`command` would replace the image's ENTRYPOINT (the agent)"
    );
    let args = container.args.clone().unwrap_or_default();
    let argv = std::iter::once("xdp-ingress".to_string()).chain(args.iter().cloned());
    match Cli::try_parse_from(argv)
        .with_context(|| format!("the agent rejects the DaemonSet's args {args:?}"))?
        .command
    {
        Command::Run(run) => Ok(*run),
        other => bail!("the DaemonSet runs {other:?}, not `run`"),
    }
}

/// A probe's or Service's port, resolved against the container's ports.
fn container_port(container: &Container, port: &IntOrString) -> Result<u16> {
    let number = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .with_context(|| format!("the container has no port named {name}"))?
                .container_port
        }
    };
    u16::try_from(number).with_context(|| format!("port {number}"))
}

/// The port the container declares under `name`.
fn named_port(container: &Container, name: &str) -> Result<u16> {
    container_port(container, &IntOrString::String(name.to_string()))
}

/// What both overlays must get right; returns the agent's parsed args.
fn check_daemonset(documents: &[Document]) -> Result<(DaemonSet, RunArgs)> {
    let daemonset: DaemonSet = manifests::one(documents, DAEMONSET)?;
    let namespace = daemonset
        .metadata
        .namespace
        .clone()
        .context("the DaemonSet has no namespace")?;
    let spec = &daemonset.spec;
    let (pod, container) = agent_pod(&daemonset)?;
    let args = agent_args(container)?;

    ensure!(
        container.image.as_deref() == Some(built_image().as_str()),
        "image {:?}, but `cargo xtask image` builds {}",
        container.image,
        built_image()
    );

    // Rollout: one node at a time loses its agent.
    let strategy = spec.update_strategy.as_ref().context("no updateStrategy")?;
    ensure!(
        strategy.type_.as_deref() == Some("RollingUpdate"),
        "{strategy:?}"
    );
    let max_unavailable = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.max_unavailable.as_ref());
    ensure!(
        max_unavailable == Some(&IntOrString::Int(1)),
        "maxUnavailable {max_unavailable:?}, want 1"
    );

    // SIGTERM drains for --drain-timeout; the kubelet must not SIGKILL before (30 s is the
    // Kubernetes default when the field is unset).
    let grace = pod.termination_grace_period_seconds.unwrap_or(30);
    let grace = Duration::from_secs(u64::try_from(grace).context("negative grace period")?);
    ensure!(
        grace >= args.proxy.drain_timeout,
        "terminationGracePeriodSeconds {grace:?} < the agent's --drain-timeout {:?}",
        args.proxy.drain_timeout
    );

    // On every node, tainted ones included: a toleration with no key and `Exists` matches all.
    let tolerates_all = pod.tolerations.iter().flatten().any(|t| {
        t.operator.as_deref() == Some("Exists")
            && t.key.as_deref().unwrap_or("").is_empty()
            && t.effect.as_deref().unwrap_or("").is_empty()
    });
    ensure!(tolerates_all, "tolerations {:?}", pod.tolerations);

    let resources = container.resources.as_ref().context("no resources")?;
    let requests = resources.requests.clone().unwrap_or_default();
    let limits = resources.limits.clone().unwrap_or_default();
    ensure!(
        requests.contains_key("cpu") && requests.contains_key("memory"),
        "requests {requests:?}"
    );
    ensure!(limits.contains_key("memory"), "limits {limits:?}");

    // /debug names endpoints and Secrets: the admin listener stays on loopback (or off), where
    // only `inspect` on the node or in the pod reaches it.
    if let Some(admin) = args.admin.admin_listen.0 {
        ensure!(
            admin.ip().is_loopback(),
            "--admin-listen {admin} exposes /debug beyond the node"
        );
    }
    // Prometheus scrapes the pod's IP: the metrics listener listens there, on the port the
    // container names `metrics`.
    let metrics = args
        .admin
        .metrics_listen
        .0
        .context("--metrics-listen off: Prometheus cannot scrape the agents")?;
    ensure!(
        metrics.ip().is_unspecified() && metrics.port() == named_port(container, "metrics")?,
        "--metrics-listen {metrics} vs the container's port metrics"
    );
    // The kubelet probes the pod's IP too: the probes go to the metrics listener (which serves
    // /healthz and /readyz), on the paths it serves.
    for (probe, path) in [
        (container.readiness_probe.as_ref(), "/readyz"),
        (container.liveness_probe.as_ref(), "/healthz"),
    ] {
        let get = probe
            .and_then(|p| p.http_get.as_ref())
            .with_context(|| format!("no httpGet probe for {path}"))?;
        ensure!(get.path.as_deref() == Some(path), "probe {get:?}");
        let port = container_port(container, &get.port)?;
        ensure!(
            port == metrics.port(),
            "the {path} probe goes to {port}, the agent's metrics listener is {metrics}"
        );
    }

    // The proxy listens where the container's named ports say.
    for (name, listen) in [
        ("http", &args.proxy.http_listen),
        ("https", &args.proxy.https_listen),
    ] {
        let listen = listen.0.with_context(|| format!("--{name}-listen off"))?;
        ensure!(
            listen.ip().is_unspecified() && listen.port() == named_port(container, name)?,
            "--{name}-listen {listen} vs the container's port {name}"
        );
    }

    let security = container
        .security_context
        .as_ref()
        .context("no securityContext")?;
    ensure!(security.privileged != Some(true), "privileged");
    ensure!(
        security.allow_privilege_escalation == Some(false),
        "allowPrivilegeEscalation not false"
    );
    ensure!(
        security.read_only_root_filesystem == Some(true),
        "writable root filesystem"
    );
    let dropped = security
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.clone())
        .unwrap_or_default();
    ensure!(
        dropped.iter().any(|c| c == "ALL"),
        "capabilities not dropped: {dropped:?}"
    );

    // The service account exists where the pod runs.
    let account = pod
        .service_account_name
        .as_deref()
        .context("no serviceAccountName")?;
    let sa: ServiceAccount = manifests::one(documents, account)?;
    ensure!(
        sa.metadata.namespace.as_deref() == Some(namespace.as_str()),
        "ServiceAccount {account} is not in {namespace}"
    );

    // Without --election-namespace the Lease is in $POD_NAMESPACE: it must be the pod's own
    // namespace, where the Role for Leases is.
    if args.cluster.election_namespace.is_none() {
        let from_field = container.env.iter().flatten().any(|e| {
            e.name == "POD_NAMESPACE"
                && e.value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .is_some_and(|f| f.field_path == "metadata.namespace")
        });
        ensure!(
            from_field,
            "POD_NAMESPACE is not the pod's metadata.namespace"
        );
    }

    // The IngressClass is one the agent serves.
    let classes = manifests::of_kind::<IngressClass>(documents)?;
    ensure!(!classes.is_empty(), "no IngressClass");
    for (_, class) in classes {
        let controller = class.spec.and_then(|s| s.controller);
        ensure!(
            controller.as_deref() == Some(args.ingress.controller_name.as_str()),
            "IngressClass controller {controller:?}, the agent serves {}",
            args.ingress.controller_name
        );
    }

    // --publish-service names the LoadBalancer Service in front of these pods, and that Service
    // selects them and reaches the proxy's ports.
    let publish = args
        .cluster
        .publish_service
        .as_deref()
        .context("no --publish-service")?;
    let (publish_ns, publish_name) = publish
        .split_once('/')
        .with_context(|| format!("--publish-service {publish}"))?;
    let service: Service = manifests::one(documents, publish_name)?;
    ensure!(
        service.metadata.namespace.as_deref() == Some(publish_ns),
        "Service {publish_name} is not in {publish_ns}"
    );
    let service_spec = service.spec.as_ref().context("Service without spec")?;
    ensure!(
        service_spec.type_.as_deref() == Some("LoadBalancer"),
        "{service_spec:?}"
    );
    let selector = service_spec.selector.clone().unwrap_or_default();
    let labels: BTreeMap<String, String> = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    ensure!(
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the Service's selector {selector:?} does not select the pods {labels:?}"
    );
    for port in service_spec.ports.iter().flatten() {
        let target = port.target_port.as_ref().context("no targetPort")?;
        container_port(container, target)?;
    }
    Ok((daemonset, args))
}

/// XDP on the node: host network, exactly the capabilities BPF and XDP need, bpffs.
#[test]
fn kube_proxy_replacement_daemonset_is_production_ready() -> Result<()> {
    let documents = manifests::rendered(KUBE_PROXY_REPLACEMENT)?;
    let (daemonset, args) = check_daemonset(&documents)?;
    let (pod, container) = agent_pod(&daemonset)?;
    ensure!(
        !args.datapath.interfaces.is_empty(),
        "no --interface: this would be L7 only"
    );
    ensure!(pod.host_network == Some(true), "not on the host network");
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
