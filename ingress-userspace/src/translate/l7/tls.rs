//! Certificates: a TLS plan per `spec.tls[]` entry (hosts defaulting to the Ingress's own rule
//! hosts) and one for `--default-tls-secret`, each carrying the PEM pair or why there is none.

use super::{class::OurIngress, rules::check_host, PemPair, TlsPlan};
use crate::model::{ClusterObjects, ObjectName, Problem, TLS_SECRET_TYPE};

/// The TLS plans of one Ingress's `spec.tls`, in order.
pub(super) fn tls_plans(
    ingress: &OurIngress<'_>,
    objects: &ClusterObjects,
    problems: &mut Vec<Problem>,
) -> Vec<TlsPlan> {
    let entries = ingress.spec().and_then(|s| s.tls.as_ref());
    let mut plans = Vec::new();
    for (i, entry) in entries.into_iter().flatten().enumerate() {
        let Some(secret_name) = entry.secret_name.as_deref().filter(|s| !s.is_empty()) else {
            // Valid: these hosts are served with the default certificate.
            continue;
        };
        let secret = ObjectName {
            namespace: ingress.name.namespace.clone(),
            name: secret_name.to_string(),
        };
        let listed = entry.hosts.as_ref().filter(|h| !h.is_empty());
        let hosts = match listed {
            Some(hosts) => hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            None => rule_hosts(ingress),
        };
        let pem = secret_pem(objects, &secret);
        if let Err(message) = &pem {
            problems.push(ingress.problem(format!("spec.tls[{i}].secretName"), message.clone()));
        }
        plans.push(TlsPlan {
            hosts,
            secret,
            ingress: Some(ingress.name.clone()),
            pem,
        });
    }
    plans
}

/// The distinct valid hosts of an Ingress's rules, lower-case, in rule order.
fn rule_hosts(ingress: &OurIngress<'_>) -> Vec<String> {
    let rules = ingress.spec().and_then(|s| s.rules.as_ref());
    let mut hosts: Vec<String> = Vec::new();
    for rule in rules.into_iter().flatten() {
        if let Ok(Some(host)) = check_host(rule.host.as_deref()) {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
    }
    hosts
}

/// `tls.crt` and `tls.key` of a TLS Secret, or why they cannot be had.
fn secret_pem(objects: &ClusterObjects, name: &ObjectName) -> Result<PemPair, String> {
    let secret = objects
        .secrets
        .get(name)
        .ok_or_else(|| format!("no Secret {name} of type {TLS_SECRET_TYPE}"))?;
    let secret = &secret.object;
    let secret_type = secret.type_.as_deref().unwrap_or("Opaque");
    if secret_type != TLS_SECRET_TYPE {
        return Err(format!(
            "Secret {name} is of type {secret_type}, not {TLS_SECRET_TYPE}"
        ));
    }
    let get = |key: &str| {
        let data = secret.data.as_ref();
        data.and_then(|d| d.get(key))
            .filter(|value| !value.0.is_empty())
            .map(|value| value.0.clone())
            .ok_or_else(|| format!("Secret {name} has no {key}"))
    };
    Ok(PemPair {
        certificate_chain: get("tls.crt")?,
        private_key: get("tls.key")?,
    })
}

/// The plan for `--default-tls-secret`; a problem if the Secret cannot be used.
pub(super) fn default_tls(
    objects: &ClusterObjects,
    secret: &ObjectName,
    problems: &mut Vec<Problem>,
) -> TlsPlan {
    let pem = secret_pem(objects, secret);
    if let Err(message) = &pem {
        let origin = objects.secrets.get(secret).map_or_else(
            || "--default-tls-secret".to_string(),
            |s| s.origin.to_string(),
        );
        problems.push(Problem {
            severity: crate::model::Severity::Error,
            origin,
            object: format!("Secret {secret}"),
            field: String::new(),
            message: message.clone(),
        });
    }
    TlsPlan {
        hosts: Vec::new(),
        secret: secret.clone(),
        ingress: None,
        pem,
    }
}
