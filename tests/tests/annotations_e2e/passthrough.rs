//! `ssl-passthrough` (with `--enable-ssl-passthrough`): a backend that terminates TLS itself
//! with a certificate a test CA signed for `vault.example`. A client asking for that name sees
//! the backend's certificate (curl verifying it against the CA; rustls comparing it byte for
//! byte) and the backend's answer; another name, or none, gets the proxy's certificate and its
//! routes; a ClientHello trickled over many segments still passes; an established passthrough
//! connection outlives a new routing table that no longer passes the host through; `/metrics`
//! and `/debug/routes` show the connections and the host.

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer, ServerName};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use xdp_ingress_tests::{
    ensure_eq,
    proxy::{
        backends::HttpBackend,
        clients::{
            collect, curl, empty, get, https_get, pooled, request, tls_connect, CertVerifier, Tls,
        },
        ensure_served, eventually, has_exited,
        manifests::{backend_service, our_class, rule, Manifests, TempDir},
        read_within, services_for, sigterm, TestProxy, SETTLE,
    },
};

use super::annotated;

const HOST: &str = "vault.example";

/// A TLS backend: its CA (PEM) and leaf certificate (DER); it answers `vault-tls <path>`.
struct TlsBackend {
    addr: SocketAddr,
    ca_pem: String,
    leaf: CertificateDer<'static>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    async fn start() -> Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: with rcgen's default for both, OpenSSL takes the leaf for self-signed.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "xdp-ingress passthrough test CA");
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(vec![HOST.to_string()])?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, HOST);
        let leaf = leaf_params.signed_by(&key, &ca, &ca_key)?;
        let leaf_der = CertificateDer::from_pem_slice(leaf.pem().as_bytes())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_der.clone()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?,
            )?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(|request: http::Request<hyper::body::Incoming>| {
                        let body = format!("vault-tls {}", request.uri().path());
                        async move {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            ca_pem: ca.pem(),
            leaf: leaf_der,
            task,
        })
    }
}

/// An HTTP/1.1 client over an established TLS stream.
async fn http1_over<S>(
    stream: S,
) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Writes at most 16 bytes per write, pausing between writes, so a ClientHello leaves in many
/// TCP segments (with `TCP_NODELAY`). The pauses only make separate segments likely; there is
/// no event for "the peer has received it", and nothing asserts on time.
struct Trickle {
    inner: TcpStream,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(pause) = &mut self.pause {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let end = buf.len().min(16);
        let written = Pin::new(&mut self.inner).poll_write(cx, &buf[..end]);
        if let Poll::Ready(Ok(_)) = written {
            self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(2))));
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

use std::future::Future as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_passthrough_host_reaches_the_backends_certificate() -> Result<()> {
    let vault = TlsBackend::start().await?;
    let shop = HttpBackend::start("shop").await?;
    let passing = |on: bool| {
        let annotations: &[(&str, &str)] = if on {
            &[("ssl-passthrough", "true")]
        } else {
            &[]
        };
        annotated(
            "vault",
            &[rule(Some(HOST), &[("/", "Prefix", "vault")])],
            annotations,
        )
    };
    let shop_ingress = annotated(
        "shop",
        &[rule(Some("shop.example"), &[("/", "Prefix", "shop")])],
        &[],
    );
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut services = services_for(&[&shop]);
    services.extend(backend_service("vault", &[vault.addr]));
    manifests.write("services.yaml", &services)?;
    manifests.write("ingresses.yaml", &[passing(true), shop_ingress.clone()])?;
    let proxy = TestProxy::start_with_admin(manifests, &["--enable-ssl-passthrough"])?;
    let https = proxy.https;
    let admin = proxy.admin.context("no admin listener")?;

    // curl verifies the chain against the backend's CA: only the backend's certificate passes.
    let dir = TempDir::new("xdp-passthrough-ca")?;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &vault.ca_pem)?;
    let resolve = format!("{HOST}:{}:127.0.0.1", https.port());
    let url = format!("https://{HOST}:{}/hello", https.port());
    let (body, _) = curl(&[
        "--cacert",
        ca.to_str().context("path")?,
        "--resolve",
        &resolve,
        &url,
    ])
    .await
    .with_context(|| proxy.log())?;
    ensure_eq!(body, "vault-tls /hello");

    // rustls: the very certificate the backend holds; then a request on the same connection,
    // kept open across the reload below. Upper case in the name: SNI is matched without case.
    let (stream, handshake) = tls_connect(https, "VAULT.example", Tls::Any, &[b"http/1.1"]).await?;
    ensure!(
        handshake.certificate == vault.leaf.as_ref(),
        "the proxy's certificate, not the backend's"
    );
    let mut kept = http1_over(stream).await?;
    let reply = collect(
        kept.send_request(request(HOST, "/before").body(empty())?)
            .await?,
    )
    .await?;
    ensure_eq!(reply.text(), "vault-tls /before");

    // Another name, and no name at all: the proxy's own certificate and routes.
    let (_, other) = tls_connect(https, "shop.example", Tls::Any, &[b"http/1.1"]).await?;
    ensure!(
        other.certificate != vault.leaf.as_ref(),
        "backend certificate for another name"
    );
    let reply = https_get(https, "shop.example", "/x", &[b"http/1.1"]).await?;
    ensure_served(&reply, "shop", "another name, terminated")?;
    let (_, unnamed) = tls_connect(https, "127.0.0.1", Tls::Any, &[b"http/1.1"]).await?;
    ensure!(
        unnamed.certificate != vault.leaf.as_ref(),
        "backend certificate without SNI"
    );

    // A ClientHello in 16-byte writes: the proxy waits for the whole first record.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CertVerifier::pinned(
            vault.leaf.clone(),
            provider,
        )))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(https).await?;
    tcp.set_nodelay(true)?;
    let trickle = Trickle {
        inner: tcp,
        pause: None,
    };
    let stream = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(HOST)?, trickle),
    )
    .await
    .context("trickled handshake timed out")?
    .context("trickled handshake (only the backend's certificate is accepted)")?;
    let mut trickled = http1_over(stream).await?;
    let reply = collect(
        trickled
            .send_request(request(HOST, "/trickled").body(empty())?)
            .await?,
    )
    .await?;
    ensure_eq!(reply.text(), "vault-tls /trickled");
    drop(trickled);

    // What the proxy says: three spliced connections, one still open (the kept one: curl's and
    // the trickled one have closed); the host in the routing view.
    let client = pooled();
    eventually("the passthrough counters on /metrics", || async {
        let text = get(&client, admin, "127.0.0.1", "/metrics").await?.text();
        for line in [
            r#"xdp_ingress_passthrough_connections_total{result="spliced"} 3"#,
            "xdp_ingress_passthrough_connections_open 1",
        ] {
            ensure!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        Ok(())
    })
    .await
    .with_context(|| proxy.log())?;
    let routes = get(&client, admin, "127.0.0.1", "/debug/routes")
        .await?
        .json()?;
    ensure_eq!(routes["passthrough"][0]["host"], HOST, "{routes}");
    ensure_eq!(
        routes["passthrough"][0]["backend"]["service"],
        "default/vault",
        "{routes}"
    );

    // A new table without passthrough: new connections are terminated by the proxy...
    proxy
        .manifests
        .write("ingresses.yaml", &[passing(false), shop_ingress])?;
    eventually("new connections terminated by the proxy", || async {
        let (_, fresh) = tls_connect(https, HOST, Tls::Any, &[b"http/1.1"]).await?;
        ensure!(
            fresh.certificate != vault.leaf.as_ref(),
            "still passed through"
        );
        Ok(())
    })
    .await
    .with_context(|| proxy.log())?;
    // ...and the established one still talks to the backend, end to end encrypted.
    let reply = collect(
        kept.send_request(request(HOST, "/after").body(empty())?)
            .await?,
    )
    .await?;
    ensure_eq!(reply.text(), "vault-tls /after");
    Ok(())
}

/// The passthrough Ingress of `vault.example` alone, served with `--enable-ssl-passthrough`,
/// the admin listener and `extra` flags.
fn vault_proxy(vault: &TlsBackend, extra: &[&str]) -> Result<TestProxy> {
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    manifests.write("services.yaml", &backend_service("vault", &[vault.addr]))?;
    manifests.write(
        "ingresses.yaml",
        &[annotated(
            "vault",
            &[rule(Some(HOST), &[("/", "Prefix", "vault")])],
            &[("ssl-passthrough", "true")],
        )],
    )?;
    let flags = [&["--enable-ssl-passthrough"], extra].concat();
    TestProxy::start_with_admin(manifests, &flags)
}

/// A passthrough connection to `https` answered by the backend whose leaf is `leaf`, after one
/// request for `path` (the backend, hyper without timers, then keeps it open as long as we do).
async fn exchange(
    https: SocketAddr,
    leaf: &CertificateDer<'static>,
    path: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let (mut stream, handshake) = tls_connect(https, HOST, Tls::Any, &[b"http/1.1"]).await?;
    ensure!(handshake.certificate == leaf.as_ref(), "not passed through");
    let head = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await?;
    let expected = format!("vault-tls {path}");
    let mut answer = Vec::new();
    let mut buf = [0; 1024];
    while !String::from_utf8_lossy(&answer).ends_with(&expected) {
        let n = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await?;
        ensure!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    Ok(stream)
}

/// A passthrough connection idle for `--client-idle-timeout` is closed, and counted as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_passthrough_connection_is_closed() -> Result<()> {
    let vault = TlsBackend::start().await?;
    let proxy = vault_proxy(&vault, &["--client-idle-timeout", "1s"])?;
    let admin = proxy.admin.context("no admin listener")?;
    let mut idle = exchange(proxy.https, &vault.leaf, "/idle").await?;
    // Only the proxy's idle timeout can end it (the backend keeps it).
    let closed = read_within(&mut idle, SETTLE)
        .await
        .context("the idle passthrough connection stayed open")?;
    ensure!(!matches!(closed, Ok(n) if n > 0), "unexpected bytes");
    let client = pooled();
    eventually("the idle close on /metrics", || async {
        let text = get(&client, admin, "127.0.0.1", "/metrics").await?.text();
        let line = "xdp_ingress_passthrough_idle_closed_total 1";
        ensure!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        Ok(())
    })
    .await
    .with_context(|| proxy.log())?;
    Ok(())
}

/// On SIGTERM a quiet passthrough connection is closed after a second, so the agent exits long
/// before its drain deadline (60 s here; the idle timeout, 60 s by default, plays no part).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_passthrough_connection_does_not_hold_the_drain() -> Result<()> {
    let vault = TlsBackend::start().await?;
    let proxy = vault_proxy(&vault, &["--drain-timeout", "60s"])?;
    let mut quiet = exchange(proxy.https, &vault.leaf, "/quiet").await?;
    let pid = proxy.agent.pid();
    sigterm(pid)?;
    let closed = read_within(&mut quiet, SETTLE)
        .await
        .context("the quiet passthrough connection held the drain")?;
    ensure!(!matches!(closed, Ok(n) if n > 0), "unexpected bytes");
    eventually("the agent's exit", || async {
        ensure!(has_exited(pid)?, "still running");
        Ok(())
    })
    .await
    .with_context(|| proxy.log())?;
    Ok(())
}
