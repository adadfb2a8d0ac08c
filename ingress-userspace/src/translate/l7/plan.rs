//! What the L7 translation produces and the proxy applies: the routing table, the backends it
//! points at (already resolved to endpoint addresses), and the TLS certificates by host.
//!
//! The plan is plain data. The proxy keeps its live state (connection pools, health, balancing
//! counters) per endpoint address, outside the plan, so a new plan never drops a connection.

use std::{fmt, net::SocketAddr, sync::Arc};

use crate::model::ObjectName;

use super::{
    balance::Balance,
    nginx_config::NginxDefaults,
    passthrough::PassthroughTable,
    routes::{Route, RouteTable},
};

/// Index of a backend in [`L7Plan::backends`].
pub type BackendId = usize;

/// The routing table and everything it refers to.
#[derive(Clone, Debug)]
pub struct L7Plan {
    /// Host and path → route (filters, then backends). Requests that match nothing get 404. Shared: an endpoint-only
    /// change reuses the table as it is.
    pub routes: Arc<RouteTable<Route>>,
    /// Every backend a route points at.
    pub backends: Vec<BackendPlan>,
    /// Certificates by host, in precedence order (the first entry naming a host wins).
    pub tls: Vec<TlsPlan>,
    /// The certificate for names no entry covers, from `--default-tls-secret`; `None`: the proxy
    /// uses its self-signed one.
    pub default_tls: Option<TlsPlan>,
    /// The Ingresses this controller owns, sorted.
    pub ingresses: Vec<ObjectName>,
    /// `ssl-passthrough` hosts: their TLS connections go unterminated to a backend. Shared, like
    /// the routes.
    pub passthrough: Arc<PassthroughTable>,
    /// The defaults from ingress-nginx's ConfigMap (or its own): what the routes were built
    /// with, and what the proxy applies to every request (`use-forwarded-headers`).
    pub nginx: NginxDefaults,
    /// The Secrets `auth-secret` names (read or not: the Kubernetes source keeps them).
    pub auth_secrets: Vec<ObjectName>,
}

impl Default for L7Plan {
    fn default() -> Self {
        Self {
            routes: Arc::new(RouteTable::new(std::iter::empty(), None)),
            backends: Vec::new(),
            tls: Vec::new(),
            default_tls: None,
            ingresses: Vec::new(),
            passthrough: Arc::default(),
            nginx: NginxDefaults::default(),
            auth_secrets: Vec::new(),
        }
    }
}

/// A Service port as an Ingress backend names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServicePortRef {
    /// `port.number`.
    Number(u16),
    /// `port.name`.
    Name(String),
}

impl fmt::Display for ServicePortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServicePortRef::Number(n) => write!(f, "{n}"),
            ServicePortRef::Name(name) => f.write_str(name),
        }
    }
}

/// One backend: a Service port of one Ingress, resolved to ready endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPlan {
    /// The Ingress whose rule (or default backend) names it.
    pub ingress: ObjectName,
    /// The Service (in the Ingress's namespace).
    pub service: ObjectName,
    /// The Service port.
    pub port: ServicePortRef,
    /// Ready endpoints (address and target port), or why there are none.
    pub endpoints: Result<Vec<SocketAddr>, Unavailable>,
    /// How the proxy speaks to the endpoints (the Ingress's `backend-protocol` and
    /// `proxy-ssl-*` annotations), or why those annotations cannot be used: then the backend
    /// answers 503 saying so, whatever its endpoints.
    pub upstream: Result<UpstreamPlan, String>,
    /// The Secret `proxy-ssl-secret` names, read or not: the Kubernetes source keeps it.
    pub upstream_secret: Option<ObjectName>,
    /// How requests are spread over the endpoints (`upstream-hash-by`, `affinity`).
    pub balance: Balance,
    /// `service-upstream`: `endpoints` is the Service's ClusterIP and port (one address).
    pub service_upstream: bool,
}

/// The protocol spoken to a backend's endpoints (`backend-protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendProtocol {
    /// HTTP/1.1 in clear (`HTTP`, `AUTO_HTTP`; the default).
    #[default]
    Http,
    /// HTTP/1.1 over TLS, ALPN `http/1.1` (`HTTPS`).
    Https,
    /// HTTP/2 in clear with prior knowledge, h2c (`GRPC`).
    Grpc,
    /// HTTP/2 over TLS, ALPN `h2` (`GRPCS`).
    Grpcs,
}

impl BackendProtocol {
    /// Whether the endpoints speak HTTP/2 (gRPC).
    pub fn is_http2(self) -> bool {
        matches!(self, Self::Grpc | Self::Grpcs)
    }

    /// Whether the connection is TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Https | Self::Grpcs)
    }

    /// Its `backend-protocol` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::Https => "HTTPS",
            Self::Grpc => "GRPC",
            Self::Grpcs => "GRPCS",
        }
    }
}

impl UpstreamPlan {
    /// How `validate` shows it: the protocol, and for TLS the name checked (or that nothing
    /// is) and whether SNI is sent.
    pub fn describe(&self) -> String {
        let protocol = self.protocol.as_str();
        match &self.tls {
            None => protocol.to_string(),
            Some(tls) => format!(
                "{protocol}, {} {}, SNI {}{}",
                if tls.verify {
                    "verify"
                } else {
                    "no verification, name"
                },
                tls.server_name,
                if tls.send_sni { "on" } else { "off" },
                if tls.client_certificate.is_some() {
                    ", client certificate"
                } else {
                    ""
                },
            ),
        }
    }
}

/// How the proxy connects to a backend's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct UpstreamPlan {
    /// The protocol.
    pub protocol: BackendProtocol,
    /// The TLS client settings, for the TLS protocols only.
    pub tls: Option<UpstreamTlsPlan>,
}

/// TLS client settings towards a backend (`proxy-ssl-*`). The proxy builds one rustls client
/// configuration per distinct value when it applies a plan, never per request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamTlsPlan {
    /// The name the certificate is verified against and, when `send_sni`, sent as SNI:
    /// `proxy-ssl-name`, else the Service's DNS name `<service>.<namespace>.svc`.
    pub server_name: String,
    /// `proxy-ssl-server-name: on` (nginx's default is off: no SNI).
    pub send_sni: bool,
    /// `proxy-ssl-verify: on`: the chain must lead to `trusted_ca` and name `server_name`. Off
    /// (nginx's default): the endpoint's certificate is not checked at all.
    pub verify: bool,
    /// PEM of `ca.crt` from `proxy-ssl-secret`, the roots verification trusts.
    pub trusted_ca: Option<Vec<u8>>,
    /// `tls.crt`/`tls.key` from `proxy-ssl-secret`: the client certificate, if it has one.
    pub client_certificate: Option<PemPair>,
    /// TLS 1.2 allowed (`proxy-ssl-protocols`).
    pub tls12: bool,
    /// TLS 1.3 allowed (`proxy-ssl-protocols`).
    pub tls13: bool,
}

/// Why a backend has no endpoint to send to; the proxy answers 503 saying so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// No such Service.
    UnknownService,
    /// The Service has no such port.
    UnknownPort,
    /// The Service exists but none of its endpoints is ready.
    NoReadyEndpoints,
    /// The Service is of a type the proxy cannot send to (ExternalName).
    UnsupportedService(String),
}

impl BackendPlan {
    /// The plain-text body of the 503 answer when this backend has no endpoint.
    pub fn unavailable_message(&self) -> Option<String> {
        if let Err(why) = &self.upstream {
            return Some(format!("503 Service Unavailable: {why}\n"));
        }
        let why = match self.endpoints.as_ref().err()? {
            Unavailable::UnknownService => format!("service {} does not exist", self.service),
            Unavailable::UnknownPort => {
                format!("service {} has no port {}", self.service, self.port)
            }
            Unavailable::NoReadyEndpoints => format!(
                "service {} port {} has no ready endpoints",
                self.service, self.port
            ),
            Unavailable::UnsupportedService(why) => format!("service {}: {why}", self.service),
        };
        Some(format!("503 Service Unavailable: {why}\n"))
    }
}

/// A certificate and the hosts it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPlan {
    /// Hosts as written in `spec.tls[].hosts` (exact or `*.` wildcard), lower-case.
    pub hosts: Vec<String>,
    /// The Secret (in the Ingress's namespace).
    pub secret: ObjectName,
    /// The Ingress that asked for it (empty for the default certificate).
    pub ingress: Option<ObjectName>,
    /// The Secret's `tls.crt` and `tls.key`, or why they cannot be used (no such Secret, wrong
    /// type, missing keys). PEM parsing happens in the proxy, which keeps the previous
    /// certificate when the new one does not parse.
    pub pem: Result<PemPair, String>,
}

/// PEM text of a certificate chain and its private key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PemPair {
    /// `tls.crt`: the certificate chain, leaf first.
    pub certificate_chain: Vec<u8>,
    /// `tls.key`: the private key.
    pub private_key: Vec<u8>,
}

impl fmt::Debug for PemPair {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemPair")
            .field("certificate_chain", &self.certificate_chain.len())
            .field("private_key", &"<redacted>")
            .finish()
    }
}
