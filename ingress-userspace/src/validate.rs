//! `xdp-ingress validate`: what the agent would make of a manifest directory, without a kernel
//! or a listener. The same reader, translators and certificate check as `run`, so a directory
//! that validates is one the agent serves; `main` prints the result.

use crate::{
    cli::ValidateArgs,
    model::{Problem, Severity},
    proxy::{tls, upstream},
    source::files::{FilesError, ManifestDir},
    translate::{
        l4::{self, L4Plan},
        l7::{self, L7Plan},
    },
};

/// Why a directory could not be validated at all (problems in it are not errors: they are
/// listed in [`Validation::problems`]).
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The directory could not be read.
    #[error(transparent)]
    Files(#[from] FilesError),
    /// A flag of the Ingress group is malformed.
    #[error(transparent)]
    Options(#[from] crate::cli::ObjectNameError),
}

/// What `validate` found.
#[derive(Debug)]
pub struct Validation {
    /// One line per Service port, per L7 backend and per certificate, then a summary line.
    pub lines: Vec<String>,
    /// Every problem: the reader's, both translators', and the certificates the proxy refuses.
    pub problems: Vec<Problem>,
}

impl Validation {
    /// How many problems make `validate` fail: its errors, and with `strict` its warnings too.
    pub fn failing(&self, strict: bool) -> usize {
        self.problems
            .iter()
            .filter(|p| strict || p.severity == Severity::Error)
            .count()
    }
}

/// Reads `args.manifests` as `run` would and translates it for both sinks.
pub fn validate(args: &ValidateArgs) -> Result<Validation, ValidateError> {
    let mut source = ManifestDir::new(&args.manifests).with_max_file_bytes(args.max_manifest_bytes);
    let snapshot = source.load()?;
    let (plan, l4_problems) =
        l4::translate(&snapshot.objects, &L4Plan::default(), &args.node.given());
    let l7_options = args.ingress.options()?;
    let (l7_plan, l7_problems) = l7::translate(&snapshot.objects, &l7_options);
    let mut lines: Vec<String> = describe_plan(&plan)
        .into_iter()
        .chain(describe_l7_plan(&l7_plan))
        .collect();
    lines.push(format!(
        "{} Service port(s), {} backend(s) from {} Service(s) and {} EndpointSlice(s); \
         {} Ingress(es) ours, {} L7 backend(s)",
        plan.frontends.len(),
        plan.backend_count(),
        snapshot.objects.services.len(),
        snapshot.objects.endpoint_slices.len(),
        l7_plan.ingresses.len(),
        l7_plan.backends.len(),
    ));
    // The certificates the proxy would refuse, parsed by the proxy's own function.
    let certificate_problems = tls::unusable_certificates(
        &l7_plan.tls,
        l7_plan.default_tls.as_ref(),
        &tls::crypto_provider(),
    )
    .into_iter()
    .map(|refused| Problem {
        severity: crate::model::Severity::Error,
        origin: snapshot
            .objects
            .secrets
            .get(&refused.secret)
            .map_or_else(String::new, |s| s.origin.to_string()),
        object: format!("Secret {}", refused.secret),
        field: "data".to_string(),
        message: format!("the proxy refuses this certificate: {}", refused.message),
    });
    // The TLS settings towards backends the proxy would refuse, by the proxy's own function.
    let upstream_tls_problems =
        upstream::unusable_upstream_tls(&l7_plan.backends, &tls::crypto_provider())
            .into_iter()
            .map(|(ingress, message)| Problem {
                severity: crate::model::Severity::Error,
                origin: snapshot
                    .objects
                    .ingresses
                    .get(&ingress)
                    .map_or_else(String::new, |i| i.origin.to_string()),
                object: format!("Ingress {ingress}"),
                field: "metadata.annotations[\"nginx.ingress.kubernetes.io/proxy-ssl-secret\"]"
                    .to_string(),
                message: format!("the proxy refuses this TLS setting: {message}"),
            });
    let problems = snapshot
        .problems
        .into_iter()
        .chain(l4_problems)
        .chain(l7_problems)
        .chain(certificate_problems)
        .chain(upstream_tls_problems)
        .collect();
    Ok(Validation { lines, problems })
}

/// Human-readable lines describing a plan, one per frontend (with its kind, its policies and
/// its draining and remote endpoints when it has any), then one per health check port.
fn describe_plan(plan: &L4Plan) -> Vec<String> {
    let list = |set: &std::collections::BTreeSet<l4::Endpoint>| {
        set.iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines: Vec<String> = plan
        .frontends
        .iter()
        .map(|(frontend, port)| {
            let port_name = if port.port_name.is_empty() {
                "-"
            } else {
                port.port_name.as_str()
            };
            let mut line = format!(
                "{frontend:<24} service {} port {port_name}: {} backend(s) [{}]",
                port.service,
                port.backends.len(),
                list(&port.backends)
            );
            if port.kind != l4::FrontendKind::LoadBalancer {
                line.push_str(&format!(" kind {}", port.kind));
            }
            if !port.draining.is_empty() {
                line.push_str(&format!(" draining [{}]", list(&port.draining)));
            }
            if !port.remote.is_empty() {
                line.push_str(&format!(" remote [{}]", list(&port.remote)));
            }
            let policy = &port.policy;
            if policy.local_only {
                line.push_str(" trafficPolicy Local");
            }
            if let Some(timeout) = policy.affinity_timeout {
                line.push_str(&format!(" affinity {timeout}s"));
            }
            if !policy.source_ranges.is_empty() {
                let ranges: Vec<String> =
                    policy.source_ranges.iter().map(|r| r.to_string()).collect();
                line.push_str(&format!(" sourceRanges [{}]", ranges.join(", ")));
            }
            line
        })
        .collect();
    for (port, check) in &plan.health_checks {
        lines.push(format!(
            "health check :{port} service {}: {} local endpoint(s)",
            check.service, check.local_endpoints
        ));
    }
    lines
}

/// Human-readable lines describing an L7 plan: one per backend, then the certificates.
fn describe_l7_plan(plan: &L7Plan) -> Vec<String> {
    let mut lines: Vec<String> = plan
        .backends
        .iter()
        .map(|backend| {
            let endpoints = match &backend.endpoints {
                Ok(addrs) => addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                Err(why) => format!("unavailable: {why:?}"),
            };
            // Plain HTTP, the default, says nothing.
            let upstream = match &backend.upstream {
                Ok(plan) if *plan == l7::UpstreamPlan::default() => String::new(),
                Ok(plan) => format!(" ({})", plan.describe()),
                Err(why) => format!(" (503: {why})"),
            };
            format!(
                "ingress {} -> service {} port {}: [{endpoints}]{upstream}",
                backend.ingress, backend.service, backend.port
            )
        })
        .collect();
    for tls in &plan.tls {
        lines.push(format!(
            "tls {} -> secret {}{}",
            tls.hosts.join(","),
            tls.secret,
            if tls.pem.is_ok() { "" } else { " (unusable)" }
        ));
    }
    lines
}
