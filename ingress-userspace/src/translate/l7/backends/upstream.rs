//! How the proxy speaks to an Ingress's backends: the ingress-nginx annotations
//! `backend-protocol` and `proxy-ssl-*`, parsed once per Ingress into an [`UpstreamPlan`].
//!
//! Semantics and defaults are ingress-nginx's (and nginx's `proxy_ssl_*`): `HTTP` by default,
//! the value trimmed and case-insensitive; verification off by default (the endpoint's certificate is then not
//! checked at all); no SNI unless `proxy-ssl-server-name: on`. Where nginx verifies against the
//! host of `proxy_pass` (ingress-nginx's internal `upstream_balancer`, which no certificate
//! names), the name verified without `proxy-ssl-name` is the Service's DNS name
//! `<service>.<namespace>.svc`, the name a certificate for a Service carries. rustls speaks
//! TLS 1.2 and 1.3 only: older versions listed in `proxy-ssl-protocols` are skipped.
//!
//! Two deliberate differences from ingress-nginx, which a migration report should name:
//! `AUTO_HTTP` is plain `HTTP` (nginx proxies with the client's scheme, so HTTPS clients get
//! HTTPS to the backend), and a value that does not parse is reported under its annotation key
//! with the Ingress's backends answering 503 saying why (nginx logs a warning and falls back to
//! `HTTP`, which silently sends clear text to a TLS backend). Nothing else is affected.

use rustls::pki_types::ServerName;

use crate::{
    model::{ClusterObjects, ObjectName, Problem},
    translate::l7::{class::OurIngress, BackendProtocol, PemPair, UpstreamPlan, UpstreamTlsPlan},
};

/// The annotations this module reads.
const BACKEND_PROTOCOL: &str = "nginx.ingress.kubernetes.io/backend-protocol";
const SSL_SECRET: &str = "nginx.ingress.kubernetes.io/proxy-ssl-secret";
const SSL_VERIFY: &str = "nginx.ingress.kubernetes.io/proxy-ssl-verify";
const SSL_NAME: &str = "nginx.ingress.kubernetes.io/proxy-ssl-name";
const SSL_SERVER_NAME: &str = "nginx.ingress.kubernetes.io/proxy-ssl-server-name";
const SSL_PROTOCOLS: &str = "nginx.ingress.kubernetes.io/proxy-ssl-protocols";

/// An Ingress's upstream annotations, parsed; the TLS name default still depends on the
/// Service (see [`UpstreamSettings::plan_for`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct UpstreamSettings {
    protocol: BackendProtocol,
    /// `proxy-ssl-name`.
    name: Option<String>,
    send_sni: bool,
    verify: bool,
    trusted_ca: Option<Vec<u8>>,
    client_certificate: Option<PemPair>,
    tls12: bool,
    tls13: bool,
}

impl UpstreamSettings {
    /// The plan for one of the Ingress's backends, `service`.
    pub(super) fn plan_for(&self, service: &ObjectName) -> UpstreamPlan {
        let tls = self.protocol.is_tls().then(|| UpstreamTlsPlan {
            server_name: self.name.clone().unwrap_or_else(|| {
                format!("{}.{}.svc", service.name, service.namespace).to_ascii_lowercase()
            }),
            send_sni: self.send_sni,
            verify: self.verify,
            trusted_ca: self.trusted_ca.clone(),
            client_certificate: self.client_certificate.clone(),
            tls12: self.tls12,
            tls13: self.tls13,
        });
        UpstreamPlan {
            protocol: self.protocol,
            tls,
        }
    }
}

/// The field a problem with annotation `key` names.
fn field(key: &str) -> String {
    format!("metadata.annotations[\"{key}\"]")
}

/// The Secret `proxy-ssl-secret` names (`namespace/name`, or `name` in the Ingress's
/// namespace), if the value has that shape.
pub(super) fn upstream_secret(ingress: &OurIngress<'_>) -> Option<ObjectName> {
    let annotations = ingress.ingress.object.metadata.annotations.as_ref()?;
    let value = annotations.get(SSL_SECRET)?.trim();
    let (namespace, name) = match value.split_once('/') {
        Some((namespace, name)) => (namespace, name),
        None => (ingress.name.namespace.as_str(), value),
    };
    if namespace.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    Some(ObjectName {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// Parses `ingress`'s upstream annotations; each value that does not parse is pushed to
/// `problems` (field: the annotation key), and the result is then why its backends answer 503.
pub(super) fn upstream_settings(
    ingress: &OurIngress<'_>,
    objects: &ClusterObjects,
    problems: &mut Vec<Problem>,
) -> Result<UpstreamSettings, String> {
    let annotations = ingress.ingress.object.metadata.annotations.as_ref();
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.trim());
    let mut errors: Vec<String> = Vec::new();
    let mut report = |key: &str, message: String| {
        problems.push(ingress.problem(field(key), message.clone()));
        errors.push(format!("annotation {key}: {message}"));
    };

    let protocol = match get(BACKEND_PROTOCOL).map(parse_protocol) {
        None => BackendProtocol::Http,
        Some(Ok(protocol)) => protocol,
        Some(Err(message)) => {
            report(BACKEND_PROTOCOL, message);
            BackendProtocol::Http
        }
    };
    let mut on_off = |key: &str| match get(key).map(parse_on_off) {
        None => false,
        Some(Ok(value)) => value,
        Some(Err(message)) => {
            report(key, message);
            false
        }
    };
    let verify = on_off(SSL_VERIFY);
    let send_sni = on_off(SSL_SERVER_NAME);
    let name = match get(SSL_NAME).map(parse_name) {
        None => None,
        Some(Ok(name)) => Some(name),
        Some(Err(message)) => {
            report(SSL_NAME, message);
            None
        }
    };
    let (tls12, tls13) = match get(SSL_PROTOCOLS).map(parse_protocols) {
        None => (true, true),
        Some(Ok(versions)) => versions,
        Some(Err(message)) => {
            report(SSL_PROTOCOLS, message);
            (true, true)
        }
    };
    let mut trusted_ca = None;
    let mut client_certificate = None;
    match get(SSL_SECRET).map(|value| secret_keys(value, upstream_secret(ingress), objects)) {
        None if verify && protocol.is_tls() => report(
            SSL_VERIFY,
            format!("\"on\" needs {SSL_SECRET} with the ca.crt to verify against"),
        ),
        None => {}
        Some(Ok((ca, certificate))) => {
            if verify && ca.is_none() && protocol.is_tls() {
                report(
                    SSL_SECRET,
                    format!("the Secret has no ca.crt, which {SSL_VERIFY}: on needs"),
                );
            }
            trusted_ca = ca;
            client_certificate = certificate;
        }
        Some(Err(message)) => report(SSL_SECRET, message),
    }
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    Ok(UpstreamSettings {
        protocol,
        name,
        send_sni,
        verify,
        trusted_ca,
        client_certificate,
        tls12,
        tls13,
    })
}

/// `backend-protocol`, case-insensitive as ingress-nginx reads it.
fn parse_protocol(value: &str) -> Result<BackendProtocol, String> {
    match value.to_ascii_uppercase().as_str() {
        "HTTP" | "AUTO_HTTP" => Ok(BackendProtocol::Http),
        "HTTPS" => Ok(BackendProtocol::Https),
        "GRPC" => Ok(BackendProtocol::Grpc),
        "GRPCS" => Ok(BackendProtocol::Grpcs),
        "FCGI" | "AJP" => Err(format!("{value:?} is not supported by xdp-ingress")),
        _ => Err(format!(
            "{value:?} is not one of HTTP, HTTPS, GRPC, GRPCS, AUTO_HTTP"
        )),
    }
}

/// nginx's `on` / `off`.
fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{value:?} is neither \"on\" nor \"off\"")),
    }
}

/// `proxy-ssl-name`: a DNS name or an IP address (a certificate can name either).
fn parse_name(value: &str) -> Result<String, String> {
    ServerName::try_from(value)
        .map(|_| value.to_ascii_lowercase())
        .map_err(|_| format!("{value:?} is not a DNS name or an IP address"))
}

/// `proxy-ssl-protocols`: nginx's space-separated version names; (TLS 1.2, TLS 1.3) allowed.
fn parse_protocols(value: &str) -> Result<(bool, bool), String> {
    let (mut tls12, mut tls13) = (false, false);
    for token in value.split_ascii_whitespace() {
        match token {
            "TLSv1.2" => tls12 = true,
            "TLSv1.3" => tls13 = true,
            // Versions rustls does not speak (nor should anyone): skipped.
            "SSLv2" | "SSLv3" | "TLSv1" | "TLSv1.1" => {}
            _ => return Err(format!("{token:?} is not a TLS version nginx knows")),
        }
    }
    if !(tls12 || tls13) {
        return Err(format!(
            "{value:?} allows neither TLSv1.2 nor TLSv1.3, the versions xdp-ingress speaks"
        ));
    }
    Ok((tls12, tls13))
}

/// `ca.crt`, and the client certificate, of a `proxy-ssl-secret`.
type SecretKeys = (Option<Vec<u8>>, Option<PemPair>);

/// `proxy-ssl-secret` (`secret_name`, parsed from `value`): its `ca.crt`, and its `tls.crt` +
/// `tls.key` when it has them. The sources keep Secrets of type `kubernetes.io/tls` (as
/// cert-manager makes them, with `ca.crt`) and Opaque ones with a `ca.crt` (as ingress-nginx
/// accepts); another type reads as missing.
fn secret_keys(
    value: &str,
    secret_name: Option<ObjectName>,
    objects: &ClusterObjects,
) -> Result<SecretKeys, String> {
    let Some(secret_name) = secret_name else {
        return Err(format!("{value:?} is not \"namespace/name\""));
    };
    let secret = objects
        .secrets
        .get(&secret_name)
        .ok_or_else(|| format!("no Secret {secret_name}"))?;
    let data = secret.object.data.as_ref();
    let key = |key: &str| {
        data.and_then(|d| d.get(key))
            .filter(|v| !v.0.is_empty())
            .map(|v| v.0.clone())
    };
    let certificate = match (key("tls.crt"), key("tls.key")) {
        (Some(certificate_chain), Some(private_key)) => Some(PemPair {
            certificate_chain,
            private_key,
        }),
        (None, None) => None,
        (Some(_), None) => return Err(format!("Secret {secret_name} has tls.crt but no tls.key")),
        (None, Some(_)) => return Err(format!("Secret {secret_name} has tls.key but no tls.crt")),
    };
    let ca = key("ca.crt");
    if ca.is_none() && certificate.is_none() {
        return Err(format!(
            "Secret {secret_name} has neither ca.crt nor tls.crt and tls.key"
        ));
    }
    Ok((ca, certificate))
}
