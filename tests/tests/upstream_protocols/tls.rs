//! `backend-protocol: HTTPS` / `GRPCS` with `proxy-ssl-*`: a backend whose certificate a test CA
//! signed for `backend.internal.example`. Verification on: the right CA and name pass, a wrong
//! name or an untrusted CA get 502; verification off (nginx's default) passes anything. SNI is
//! sent only with `proxy-ssl-server-name: on`, naming `proxy-ssl-name` or the Service's DNS
//! name; GRPCS negotiates ALPN h2.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::Request;
use xdp_ingress_tests::{
    ensure_eq,
    proxy::{
        clients::{get, pooled},
        manifests::{backend_service, our_class, Manifests},
        TestProxy,
    },
};

use super::{
    annotated_ingress,
    echo::{client, codec, echo, method, GrpcBackend},
};

const BACKEND_NAME: &str = "backend.internal.example";

/// A CA, as PEM, and a key to sign with.
struct TestCa {
    certificate: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    fn new() -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate()?;
        let certificate = params.self_signed(&key)?;
        Ok(Self { certificate, key })
    }

    /// A server configuration for a certificate this CA signs for `name`, offering `alpn`.
    fn server(&self, name: &str, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>> {
        self.server_config(name, alpn, false)
    }

    /// Like [`TestCa::server`], requiring a client certificate this CA signed.
    fn server_config(
        &self,
        name: &str,
        alpn: &[&[u8]],
        client_auth: bool,
    ) -> Result<Arc<rustls::ServerConfig>> {
        let key = KeyPair::generate()?;
        let certificate = CertificateParams::new(vec![name.to_string()])?.signed_by(
            &key,
            &self.certificate,
            &self.key,
        )?;
        let chain = vec![CertificateDer::from_pem_slice(
            certificate.pem().as_bytes(),
        )?];
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.certificate.der().clone())?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A Secret `name` with this CA as `ca.crt`, and a client certificate it signed (as
    /// cert-manager writes them: type `kubernetes.io/tls`).
    fn secret(&self, name: &str) -> Result<Value> {
        let key = KeyPair::generate()?;
        let certificate = CertificateParams::new(vec!["xdp-ingress.client".to_string()])?
            .signed_by(&key, &self.certificate, &self.key)?;
        Ok(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "default"},
            "type": "kubernetes.io/tls",
            "stringData": {
                "ca.crt": self.certificate.pem(),
                "tls.crt": certificate.pem(),
                "tls.key": key.serialize_pem(),
            },
        }))
    }
}

impl TestCa {
    /// A generic Secret `name` holding only this CA as `ca.crt` (ingress-nginx accepts those
    /// for `proxy-ssl-secret`).
    fn opaque_ca_secret(&self, name: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "default"},
            "type": "Opaque",
            "stringData": {"ca.crt": self.certificate.pem()},
        })
    }
}

/// An HTTPS (HTTP/1.1) backend answering `sni=<name or ->` with the SNI its handshake saw.
struct HttpsBackend {
    addr: SocketAddr,
    handshakes: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpsBackend {
    async fn start(config: Arc<rustls::ServerConfig>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let handshakes = Arc::new(Mutex::new(0));
        let counted = handshakes.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    *counted.lock().unwrap() += 1;
                    let sni = stream.get_ref().1.server_name().unwrap_or("-").to_string();
                    let handler = service_fn(move |_request| {
                        let body = format!("sni={sni}");
                        async move {
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), handler)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            handshakes,
            task,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_backends_verifies_names_and_cas_and_sends_the_expected_sni() -> Result<()> {
    let ca = TestCa::new()?;
    let other_ca = TestCa::new()?;
    let https = HttpsBackend::start(ca.server(BACKEND_NAME, &[b"http/1.1"])?).await?;
    let grpcs = GrpcBackend::start("grpcs", Some(ca.server(BACKEND_NAME, &[b"h2"])?)).await?;
    let mtls = HttpsBackend::start(ca.server_config(BACKEND_NAME, &[b"http/1.1"], true)?).await?;

    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut objects = vec![
        ca.secret("backend-ca")?,
        other_ca.secret("other-ca")?,
        ca.opaque_ca_secret("opaque-ca"),
    ];
    objects.extend(backend_service("secure", &[https.addr]));
    objects.extend(backend_service("secure-grpc", &[grpcs.addr]));
    objects.extend(backend_service("mutual", &[mtls.addr]));
    manifests.write("objects.yaml", &objects)?;
    let verified: [(&str, &str); 5] = [
        ("backend-protocol", "HTTPS"),
        ("proxy-ssl-secret", "default/backend-ca"),
        ("proxy-ssl-verify", "on"),
        ("proxy-ssl-name", BACKEND_NAME),
        ("proxy-ssl-server-name", "on"),
    ];
    let with = |changes: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        verified
            .iter()
            .map(|(k, v)| {
                let changed = changes.iter().find(|(key, _)| key == k);
                (*k, changed.map_or(*v, |(_, v)| *v))
            })
            .collect()
    };
    manifests.write(
        "ingresses.yaml",
        &[
            annotated_ingress("good", "good.example", "secure", &verified),
            annotated_ingress(
                "opaque-ca",
                "opaque-ca.example",
                "secure",
                &with(&[("proxy-ssl-secret", "default/opaque-ca")]),
            ),
            annotated_ingress(
                "wrong-name",
                "wrong-name.example",
                "secure",
                &with(&[("proxy-ssl-name", "other.internal.example")]),
            ),
            annotated_ingress(
                "untrusted",
                "untrusted.example",
                "secure",
                &with(&[("proxy-ssl-secret", "default/other-ca")]),
            ),
            annotated_ingress(
                "unverified",
                "unverified.example",
                "secure",
                &with(&[
                    ("proxy-ssl-secret", "default/other-ca"),
                    ("proxy-ssl-verify", "off"),
                ]),
            ),
            annotated_ingress(
                "defaults",
                "defaults.example",
                "secure",
                &[("backend-protocol", "HTTPS")],
            ),
            annotated_ingress(
                "service-name",
                "service-name.example",
                "secure",
                &[
                    ("backend-protocol", "HTTPS"),
                    ("proxy-ssl-server-name", "on"),
                ],
            ),
            annotated_ingress("mtls", "mtls.example", "mutual", &verified),
            annotated_ingress(
                "mtls-other-client",
                "mtls-other-client.example",
                "mutual",
                &with(&[
                    ("proxy-ssl-secret", "default/other-ca"),
                    ("proxy-ssl-verify", "off"),
                ]),
            ),
            annotated_ingress(
                "grpcs",
                "grpcs.example",
                "secure-grpc",
                &with(&[("backend-protocol", "GRPCS")]),
            ),
        ],
    )?;
    let proxy = TestProxy::start(manifests, &[])?;
    let client = pooled();

    let reply = get(&client, proxy.http, "opaque-ca.example", "/").await?;
    ensure_eq!(
        reply.status,
        200,
        "the CA from an Opaque Secret: {}",
        reply.text()
    );
    let reply = get(&client, proxy.http, "good.example", "/").await?;
    ensure_eq!(reply.status, 200, "right CA and name: {}", reply.text());
    ensure_eq!(
        reply.text(),
        format!("sni={BACKEND_NAME}"),
        "SNI is proxy-ssl-name"
    );

    let handshakes = *https.handshakes.lock().unwrap();
    for host in ["wrong-name.example", "untrusted.example"] {
        let reply = get(&client, proxy.http, host, "/").await?;
        ensure_eq!(reply.status, 502, "{host}: {}", reply.text());
        anyhow::ensure!(
            reply.text().contains("TLS handshake"),
            "{host}: {}",
            reply.text()
        );
    }
    ensure_eq!(
        *https.handshakes.lock().unwrap(),
        handshakes,
        "no request reached the backend without verification"
    );

    let reply = get(&client, proxy.http, "unverified.example", "/").await?;
    ensure_eq!(
        reply.status,
        200,
        "verify off accepts any certificate: {}",
        reply.text()
    );
    let reply = get(&client, proxy.http, "defaults.example", "/").await?;
    ensure_eq!(reply.status, 200, "nginx's defaults: {}", reply.text());
    ensure_eq!(
        reply.text(),
        "sni=-",
        "no SNI unless proxy-ssl-server-name is on"
    );
    let reply = get(&client, proxy.http, "service-name.example", "/").await?;
    ensure_eq!(
        reply.text(),
        "sni=secure.default.svc",
        "SNI defaults to the Service's name"
    );

    // Client certificates: the one from proxy-ssl-secret is presented; one the backend's CA did
    // not sign is refused by the backend.
    let reply = get(&client, proxy.http, "mtls.example", "/").await?;
    ensure_eq!(
        reply.status,
        200,
        "client certificate accepted: {}",
        reply.text()
    );
    let reply = get(&client, proxy.http, "mtls-other-client.example", "/").await?;
    ensure_eq!(
        reply.status,
        502,
        "foreign client certificate: {}",
        reply.text()
    );

    // GRPCS: verified, ALPN h2, SNI.
    let mut grpc = client_for(proxy.http, "grpcs.example").await?;
    grpc.ready().await?;
    let reply = grpc
        .unary(Request::new(echo("over tls")), method("Unary"), codec())
        .await?;
    ensure_eq!(reply.into_inner().text, "grpcs:over tls", "GRPCS call");
    ensure_eq!(
        grpcs.handshakes.lock().unwrap().clone(),
        vec![(Some(BACKEND_NAME.to_string()), Some(b"h2".to_vec()))],
        "one TLS connection, SNI and ALPN h2"
    );
    Ok(())
}

async fn client_for(
    proxy: SocketAddr,
    host: &str,
) -> Result<tonic::client::Grpc<tonic::transport::Channel>> {
    client(proxy, host).await
}
