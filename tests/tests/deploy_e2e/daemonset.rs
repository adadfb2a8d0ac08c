//! What both overlays' DaemonSets must get right, and the agent's pod, container and command
//! line found in one: the production checks read the manifest the way the kubelet and the agent
//! would, so a port, probe or flag that only looks right fails here.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, ensure, Context as _, Result};
use clap::Parser as _;
use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{Container, PodSpec, Service, ServiceAccount},
        networking::v1::IngressClass,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use xdp_ingress::cli::{Cli, Command, RunArgs};

use crate::manifests::{self, Document};

/// The agent's DaemonSet and its container.
pub(crate) const DAEMONSET: &str = "xdp-ingress";
pub(crate) const CONTAINER: &str = "agent";
/// What `cargo xtask image` tags (`IMAGE_NAME` in xtask/src/image.rs, with the workspace
/// version). xtask's own test checks the base's kustomization text; this checks the image the
/// overlays actually render, which an overlay's `images:` could change.
fn built_image() -> String {
    format!("localhost/xdp-ingress:{}", env!("CARGO_PKG_VERSION"))
}

/// The agent's pod spec and container in a rendered DaemonSet.
pub(crate) fn agent_pod(daemonset: &DaemonSet) -> Result<(&PodSpec, &Container)> {
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
pub(crate) fn agent_args(container: &Container) -> Result<RunArgs> {
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
pub(crate) fn check_daemonset(documents: &[Document]) -> Result<(DaemonSet, RunArgs)> {
    let daemonset: DaemonSet = manifests::one(documents, DAEMONSET)?;
    let namespace = daemonset
        .metadata
        .namespace
        .clone()
        .context("the DaemonSet has no namespace")?;
    let (_, container) = agent_pod(&daemonset)?;
    let args = agent_args(container)?;

    ensure!(
        container.image.as_deref() == Some(built_image().as_str()),
        "image {:?}, but `cargo xtask image` builds {}",
        container.image,
        built_image()
    );
    check_rollout_and_scheduling(&daemonset, &args)?;
    check_listeners(&daemonset, &args)?;
    check_security_context(&daemonset)?;
    check_service_account_and_lease(documents, &daemonset, &namespace, &args)?;
    check_ingress_class(documents, &args)?;
    check_publish_service(documents, &daemonset, &args)?;
    Ok((daemonset, args))
}

/// Rollout, termination, scheduling and resources: one node at a time loses its agent, the
/// kubelet waits out the drain, every node runs one, requests and limits are set.
fn check_rollout_and_scheduling(daemonset: &DaemonSet, args: &RunArgs) -> Result<()> {
    let spec = &daemonset.spec;
    let (pod, container) = agent_pod(daemonset)?;
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
    Ok(())
}

/// The listeners: `/debug` on loopback, Prometheus and the probes on the metrics listener, the
/// proxy on the container's named ports.
fn check_listeners(daemonset: &DaemonSet, args: &RunArgs) -> Result<()> {
    let (_, container) = agent_pod(daemonset)?;
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
    Ok(())
}

/// The container's security context: unprivileged, no escalation, read-only root, every
/// capability dropped (the overlays add back what they need).
fn check_security_context(daemonset: &DaemonSet) -> Result<()> {
    let (_, container) = agent_pod(daemonset)?;
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
    Ok(())
}

/// The service account and the Lease's namespace are where the pod and its Role are.
fn check_service_account_and_lease(
    documents: &[Document],
    daemonset: &DaemonSet,
    namespace: &str,
    args: &RunArgs,
) -> Result<()> {
    let (pod, container) = agent_pod(daemonset)?;
    // The service account exists where the pod runs.
    let account = pod
        .service_account_name
        .as_deref()
        .context("no serviceAccountName")?;
    let sa: ServiceAccount = manifests::one(documents, account)?;
    ensure!(
        sa.metadata.namespace.as_deref() == Some(namespace),
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
    Ok(())
}

/// The IngressClass is one the agent serves.
fn check_ingress_class(documents: &[Document], args: &RunArgs) -> Result<()> {
    let classes = manifests::of_kind::<IngressClass>(documents)?;
    ensure!(!classes.is_empty(), "no IngressClass");
    for (_, class) in classes {
        let controller = class.spec.and_then(|s| s.controller);
        ensure!(
            controller
                .as_ref()
                .is_some_and(|c| args.ingress.controller_names.contains(c)),
            "IngressClass controller {controller:?}, the agent serves {:?}",
            args.ingress.controller_names
        );
    }
    Ok(())
}

/// `--publish-service` names the LoadBalancer Service in front of these pods, and that Service
/// selects them and reaches the proxy's ports.
fn check_publish_service(
    documents: &[Document],
    daemonset: &DaemonSet,
    args: &RunArgs,
) -> Result<()> {
    let spec = &daemonset.spec;
    let (_, container) = agent_pod(daemonset)?;
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
    Ok(())
}
