//! Clients: hyper (pooled, and one connection at a time with full control of the headers),
//! raw TCP, rustls with a verifier that records the presented certificate (or, for the
//! benchmarks, accepts only a pinned one), and curl.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, ProtocolVersion, SignatureScheme,
};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Bound for any one exchange: a hung proxy fails the test instead of hanging it.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// HTTP version of the response.
    pub version: Version,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (the backends' answers).
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("{} answer is not JSON: {:?}", self.status, self.text()))
    }

    /// The backend that answered (its JSON `backend` field), if any.
    pub fn backend(&self) -> Option<String> {
        self.json()
            .ok()
            .and_then(|v| v["backend"].as_str().map(str::to_string))
    }

    /// The values the backend saw for request header `name`.
    pub fn seen_header(&self, name: &str) -> Result<Vec<String>> {
        let json = self.json()?;
        Ok(json["headers"][name]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Reads a response to the end.
pub async fn collect<B>(response: Response<B>) -> Result<Reply>
where
    B: Body,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (parts, body) = response.into_parts();
    let body = body.collect().await.context("reading the body")?.to_bytes();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// hyper's pooled client (keep-alive), HTTP/1.1.
pub type Pooled = Client<HttpConnector, Full<Bytes>>;

/// A new pooled client.
pub fn pooled() -> Pooled {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `GET http://<host><path>` sent to `proxy` with a pooled client.
pub async fn get(client: &Pooled, proxy: SocketAddr, host: &str, path: &str) -> Result<Reply> {
    let request = Request::get(format!("http://{proxy}{path}"))
        .header(http::header::HOST, host)
        .body(Full::default())?;
    let response = tokio::time::timeout(EXCHANGE_TIMEOUT, client.request(request))
        .await
        .map_err(|_| anyhow!("GET {host}{path}: no answer in {EXCHANGE_TIMEOUT:?}"))?
        .with_context(|| format!("GET {host}{path}"))?;
    tokio::time::timeout(EXCHANGE_TIMEOUT, collect(response))
        .await
        .map_err(|_| anyhow!("GET {host}{path}: body not complete in {EXCHANGE_TIMEOUT:?}"))?
}

/// One request on its own HTTP/1.1 connection, headers exactly as given.
pub async fn send_h1<B>(proxy: SocketAddr, request: Request<B>) -> Result<Reply>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let exchange = async {
        let stream = TcpStream::connect(proxy).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let response = sender.send_request(request).await?;
        collect(response).await
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no complete answer in {EXCHANGE_TIMEOUT:?}"))?
}

/// A plain GET request for `host` and `path`, to add headers to.
pub fn request(host: &str, path: &str) -> http::request::Builder {
    Request::get(path).header(http::header::HOST, host)
}

/// An empty body.
pub fn empty() -> Empty<Bytes> {
    Empty::new()
}

/// Writes `bytes` on a new connection and reads one response: its status and the whole text
/// (head and body as far as Content-Length says, or to the end of the connection).
pub async fn raw_exchange(proxy: SocketAddr, bytes: &[u8]) -> Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(proxy).await?;
        stream.write_all(bytes).await?;
        read_response(&mut stream).await
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no complete answer in {EXCHANGE_TIMEOUT:?}"))?
}

/// Reads one HTTP/1.1 response from `stream`: its status and the whole text (head and body as
/// far as Content-Length says, or to the end of the connection). With a Content-Length, the
/// connection stays usable (keep-alive).
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(u16, String)> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buffer).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buffer[..n]);
        if let Some(end) = find(&received, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if let Some(length) = length {
                if received.len() >= end + 4 + length {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no HTTP/1.1 status line in {text:?}"))?;
    Ok((status, text))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a TLS handshake presented and negotiated.
#[derive(Debug)]
pub struct Handshake {
    /// The end-entity certificate the server presented (DER).
    pub certificate: Vec<u8>,
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The negotiated TLS version.
    pub version: Option<ProtocolVersion>,
}

/// A server-certificate check that still verifies the handshake signatures (so the server must
/// hold the key); only what it accepts as the certificate differs, see [`CertVerifier::pinned`].
#[derive(Debug)]
pub struct CertVerifier {
    provider: Arc<CryptoProvider>,
    accept: Accept,
}

#[derive(Debug)]
enum Accept {
    /// Exactly this certificate: the benchmark's, with no lock on its handshake path.
    Pinned(CertificateDer<'static>),
    /// Any certificate, recording the end-entity one for the test to compare.
    Recording(Mutex<Option<Vec<u8>>>),
}

impl CertVerifier {
    /// Accepts exactly `cert`.
    pub fn pinned(cert: CertificateDer<'static>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            provider,
            accept: Accept::Pinned(cert),
        }
    }

    fn recording(provider: Arc<CryptoProvider>) -> Self {
        Self {
            provider,
            accept: Accept::Recording(Mutex::new(None)),
        }
    }

    fn presented(&self) -> Result<Option<Vec<u8>>> {
        match &self.accept {
            Accept::Pinned(cert) => Ok(Some(cert.as_ref().to_vec())),
            Accept::Recording(presented) => {
                Ok(presented.lock().map_err(|_| anyhow!("poisoned"))?.clone())
            }
        }
    }
}

impl ServerCertVerifier for CertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.accept {
            Accept::Pinned(cert) if end_entity.as_ref() != cert.as_ref() => Err(
                rustls::Error::General("not the benchmark's certificate".into()),
            ),
            Accept::Pinned(_) => Ok(ServerCertVerified::assertion()),
            Accept::Recording(presented) => {
                if let Ok(mut presented) = presented.lock() {
                    *presented = Some(end_entity.as_ref().to_vec());
                }
                Ok(ServerCertVerified::assertion())
            }
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS protocol versions to offer.
#[derive(Clone, Copy, Debug)]
pub enum Tls {
    /// 1.2 only.
    V12,
    /// 1.3 only.
    V13,
    /// Both.
    Any,
}

/// A TLS connection to `proxy` with SNI `sni`, offering `alpn`.
pub async fn tls_connect(
    proxy: SocketAddr,
    sni: &str,
    versions: Tls,
    alpn: &[&[u8]],
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Handshake)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(CertVerifier::recording(provider.clone()));
    let versions: &[&rustls::SupportedProtocolVersion] = match versions {
        Tls::V12 => &[&rustls::version::TLS12],
        Tls::V13 => &[&rustls::version::TLS13],
        Tls::Any => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(sni.to_string())?;
    let handshake = async {
        let stream = TcpStream::connect(proxy).await?;
        Ok::<_, anyhow::Error>(connector.connect(name, stream).await?)
    };
    let stream = tokio::time::timeout(EXCHANGE_TIMEOUT, handshake)
        .await
        .map_err(|_| anyhow!("TLS handshake with {proxy} (SNI {sni}) timed out"))?
        .with_context(|| format!("TLS handshake with {proxy} (SNI {sni})"))?;
    let (_, connection) = stream.get_ref();
    let handshake = Handshake {
        certificate: recorder.presented()?.context("no certificate presented")?,
        alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
        version: connection.protocol_version(),
    };
    Ok((stream, handshake))
}

/// One GET over TLS (SNI = `host`), HTTP/2 or HTTP/1.1 as ALPN decides.
pub async fn https_get(proxy: SocketAddr, host: &str, path: &str, alpn: &[&[u8]]) -> Result<Reply> {
    let exchange = async {
        let (stream, handshake) = tls_connect(proxy, host, Tls::Any, alpn).await?;
        let io = TokioIo::new(stream);
        if handshake.alpn.as_deref() == Some(b"h2") {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(connection);
            let request = Request::get(format!("https://{host}{path}")).body(empty())?;
            collect(sender.send_request(request).await?).await
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(connection);
            let request = self::request(host, path).body(empty())?;
            collect(sender.send_request(request).await?).await
        }
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow!("no complete answer in {EXCHANGE_TIMEOUT:?}"))?
}

/// `curl -s <args> -w '\n%{http_version}' URL`: the body and the HTTP version curl used.
pub async fn curl(args: &[&str]) -> Result<(String, String)> {
    let output = tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "15", "-w", "\n%{http_version}"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("curl {args:?} timed out"))?
    .context("running curl (is it installed?)")?;
    if !output.status.success() {
        bail!(
            "curl {args:?}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8(output.stdout)?;
    let (body, version) = text
        .rsplit_once('\n')
        .with_context(|| format!("curl output {text:?}"))?;
    Ok((body.to_string(), version.to_string()))
}
