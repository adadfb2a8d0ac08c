//! How connections to a backend's endpoints are made: HTTP/1.1 or HTTP/2 (gRPC), in clear or
//! over TLS, from the backend's [`UpstreamPlan`]. A [`Transport`] is built once per distinct
//! plan when the proxy applies a routing table (the rustls client configuration with it), and
//! shared by every endpoint that uses it; nothing here runs per request, only per connection.

use std::{net::SocketAddr, sync::Arc};

use http::{Request, Response};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2, TrySendError},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    version::{TLS12, TLS13},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{ConnectError, UpstreamBody};
use crate::{
    model::ObjectName,
    translate::l7::{BackendPlan, BackendProtocol, UpstreamPlan, UpstreamTlsPlan},
};

/// A connection to an endpoint, ready for requests: HTTP/1.1 carries one request at a time and
/// goes back to the pool after it; an HTTP/2 one is shared by every request to its endpoint.
#[derive(Debug)]
pub(crate) enum Sender {
    /// HTTP/1.1.
    Http1(http1::SendRequest<UpstreamBody>),
    /// HTTP/2 (a clone of the endpoint's shared handle).
    Http2(http2::SendRequest<UpstreamBody>),
}

impl Sender {
    /// Whether the connection has closed.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Self::Http1(sender) => sender.is_closed(),
            Self::Http2(sender) => sender.is_closed(),
        }
    }

    /// Sends `request`; when the connection closed before it went out, it comes back in the
    /// error (see [`TrySendError::take_message`]).
    pub(crate) async fn try_send_request(
        &mut self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>> {
        match self {
            Self::Http1(sender) => sender.try_send_request(request).await,
            Self::Http2(sender) => sender.try_send_request(request).await,
        }
    }
}

/// Why a backend's TLS settings cannot make a client configuration.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    /// `ca.crt` of `proxy-ssl-secret` holds no certificate rustls accepts.
    #[error("proxy-ssl-secret: ca.crt: {0}")]
    TrustedCa(String),
    /// `tls.crt` / `tls.key` of `proxy-ssl-secret` do not parse or do not match.
    #[error("proxy-ssl-secret: client certificate: {0}")]
    ClientCertificate(String),
    /// The name to verify is not a valid server name (the translator checks it; kept for safety).
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How connections of one backend are made.
#[derive(Debug)]
pub(crate) struct Transport {
    protocol: BackendProtocol,
    tls: Option<TlsClient>,
}

/// The TLS side: the client configuration and the name it verifies (and sends, if SNI is on).
struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Default for Transport {
    /// HTTP/1.1 in clear.
    fn default() -> Self {
        Self {
            protocol: BackendProtocol::Http,
            tls: None,
        }
    }
}

impl Transport {
    /// The transport for `plan`.
    pub(crate) fn new(
        plan: &UpstreamPlan,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TransportError> {
        let tls = match (&plan.tls, plan.protocol.is_tls()) {
            (Some(tls), true) => Some(TlsClient {
                connector: TlsConnector::from(Arc::new(client_config(
                    tls,
                    plan.protocol,
                    provider,
                )?)),
                server_name: ServerName::try_from(tls.server_name.clone())
                    .map_err(|_| TransportError::ServerName(tls.server_name.clone()))?,
            }),
            _ => None,
        };
        Ok(Self {
            protocol: plan.protocol,
            tls,
        })
    }

    /// Whether connections speak HTTP/2 (and are shared by concurrent requests).
    pub(crate) fn is_http2(&self) -> bool {
        self.protocol.is_http2()
    }

    /// The URI scheme requests carry upstream (HTTP/2 needs `:scheme`).
    pub(crate) fn scheme(&self) -> http::uri::Scheme {
        if self.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        }
    }

    /// The TLS (if any) and HTTP handshakes over a connected `stream`, the connection's driver
    /// spawned on the runtime.
    pub(super) async fn handshake(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
    ) -> Result<Sender, ConnectError> {
        match &self.tls {
            None => self.http_handshake(TokioIo::new(stream), addr).await,
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(|source| ConnectError::Tls { addr, source })?;
                self.http_handshake(TokioIo::new(stream), addr).await
            }
        }
    }

    async fn http_handshake<T>(
        &self,
        io: TokioIo<T>,
        addr: SocketAddr,
    ) -> Result<Sender, ConnectError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let handshake_error = |source| ConnectError::Handshake { addr, source };
        if self.is_http2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(handshake_error)?;
            tokio::spawn(async move {
                // Errors end the connection; the requests that saw them report them.
                let _ = connection.await;
            });
            Ok(Sender::Http2(sender))
        } else {
            let (sender, connection) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(handshake_error)?;
            tokio::spawn(async move {
                // Errors end the connection; the request that saw them reports them.
                let _ = connection.with_upgrades().await;
            });
            Ok(Sender::Http1(sender))
        }
    }
}

/// The backends whose TLS settings the proxy would refuse (a `ca.crt` or client certificate
/// that does not parse), once per Ingress, with why: what `validate` reports. The router
/// refuses the same ones when it applies the plan (those backends answer 503).
pub(crate) fn unusable_upstream_tls(
    backends: &[BackendPlan],
    provider: &Arc<CryptoProvider>,
) -> Vec<(ObjectName, String)> {
    let mut checked = std::collections::HashSet::new();
    let mut refused = Vec::new();
    for backend in backends {
        let Ok(plan) = &backend.upstream else {
            continue;
        };
        if plan.tls.is_none() || !checked.insert((&backend.ingress, plan)) {
            continue;
        }
        if let Err(error) = Transport::new(plan, provider) {
            refused.push((backend.ingress.clone(), error.to_string()));
        }
    }
    refused.dedup();
    refused
}

/// The rustls client configuration for one backend's TLS settings.
fn client_config(
    tls: &UpstreamTlsPlan,
    protocol: BackendProtocol,
    provider: &Arc<CryptoProvider>,
) -> Result<ClientConfig, TransportError> {
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(tls.tls13, &TLS13), (tls.tls12, &TLS12)]
            .into_iter()
            .filter_map(|(allowed, version)| allowed.then_some(version))
            .collect();
    let builder =
        ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(&versions)?;
    let builder = if tls.verify {
        let mut roots = RootCertStore::empty();
        let pem = tls.trusted_ca.as_deref().unwrap_or_default();
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|e| TransportError::TrustedCa(e.to_string()))?;
            roots
                .add(certificate)
                .map_err(|e| TransportError::TrustedCa(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(TransportError::TrustedCa("no certificate".into()));
        }
        builder.with_root_certificates(roots)
    } else {
        // `proxy-ssl-verify: off`, nginx's default: any certificate is accepted; only the
        // handshake's own signatures are still checked.
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider.clone())))
    };
    let mut config = match &tls.client_certificate {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let chain = CertificateDer::pem_slice_iter(&pem.certificate_chain)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TransportError::ClientCertificate(e.to_string()))?;
            let key = PrivateKeyDer::from_pem_slice(&pem.private_key)
                .map_err(|e| TransportError::ClientCertificate(e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TransportError::ClientCertificate(e.to_string()))?
        }
    };
    config.enable_sni = tls.send_sni;
    config.alpn_protocols = vec![if protocol.is_http2() {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(config)
}

/// The verifier for `proxy-ssl-verify: off`: every certificate chain and name is accepted, as
/// nginx does by default; the handshake signatures are verified with the provider so the
/// connection is at least bound to the key the endpoint presented.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::l7::{PemPair, ServicePortRef, Unavailable};

    fn backend(ingress: &str, tls: UpstreamTlsPlan) -> BackendPlan {
        let name = |name: &str| ObjectName {
            namespace: "demo".into(),
            name: name.into(),
        };
        BackendPlan {
            ingress: name(ingress),
            service: name("web"),
            port: ServicePortRef::Number(443),
            endpoints: Err(Unavailable::NoReadyEndpoints),
            upstream: Ok(UpstreamPlan {
                protocol: BackendProtocol::Https,
                tls: Some(tls),
            }),
            upstream_secret: None,
            balance: Default::default(),
            service_upstream: false,
        }
    }

    fn tls(trusted_ca: Option<&[u8]>, client: Option<PemPair>) -> UpstreamTlsPlan {
        UpstreamTlsPlan {
            server_name: "web.demo.svc".into(),
            send_sni: false,
            verify: trusted_ca.is_some(),
            trusted_ca: trusted_ca.map(<[u8]>::to_vec),
            client_certificate: client,
            tls12: true,
            tls13: true,
        }
    }

    #[test]
    fn pem_the_proxy_cannot_use_is_refused_once_per_ingress() {
        let provider = crate::proxy::tls::crypto_provider();
        let generated = rcgen::generate_simple_self_signed(vec!["ca.example".to_string()]).unwrap();
        let ca = generated.cert.pem();
        let client = PemPair {
            certificate_chain: ca.clone().into_bytes(),
            private_key: generated.key_pair.serialize_pem().into_bytes(),
        };
        let backends = [
            backend("good", tls(Some(ca.as_bytes()), Some(client))),
            backend("unverified", tls(None, None)),
            backend("bad-ca", tls(Some(b"not PEM"), None)),
            backend("bad-ca", tls(Some(b"not PEM"), None)),
            backend(
                "bad-client",
                tls(
                    None,
                    Some(PemPair {
                        certificate_chain: ca.into_bytes(),
                        private_key: b"no key".to_vec(),
                    }),
                ),
            ),
        ];
        let refused: Vec<(String, String)> = unusable_upstream_tls(&backends, &provider)
            .into_iter()
            .map(|(ingress, why)| (ingress.name, why))
            .collect();
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert_eq!(refused[0].0, "bad-ca");
        assert!(refused[0].1.contains("ca.crt"), "{refused:?}");
        assert_eq!(refused[1].0, "bad-client");
        assert!(refused[1].1.contains("client certificate"), "{refused:?}");
    }
}
