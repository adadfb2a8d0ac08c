//! The backends of these tests: a real tonic gRPC service (`test.Echo`: unary, server-streaming,
//! client-streaming, bidi) served over h2c or TLS, hand-written with tonic's codec (no protoc),
//! and a gRPC backend that never answers (only the proxy can then end a call).

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Result;
use futures_util::{Stream, StreamExt as _};
use http::uri::PathAndQuery;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::{
    codec::{ProstCodec, Streaming},
    metadata::MetadataValue,
    server::{
        ClientStreamingService, Grpc, ServerStreamingService, StreamingService, UnaryService,
    },
    transport::{Channel, Endpoint},
    Request, Response, Status,
};

/// The one message type: a text, and how many replies a server-streaming call wants.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Echo {
    /// What to echo.
    #[prost(string, tag = "1")]
    pub(crate) text: String,
    /// Server streaming: how many replies; then, if `fail`, an ABORTED status with a trailer.
    #[prost(uint32, tag = "2")]
    pub(crate) count: u32,
    /// Server streaming: end with ABORTED and the `x-echo-trailer` trailer.
    #[prost(bool, tag = "3")]
    pub(crate) fail: bool,
}

type Boxed<T> = Pin<Box<dyn std::future::Future<Output = Result<Response<T>, Status>> + Send>>;
type EchoStream = Pin<Box<dyn Stream<Item = Result<Echo, Status>> + Send>>;

/// The `test.Echo` service, answering as `name`.
#[derive(Clone)]
struct EchoService {
    name: &'static str,
}

impl UnaryService<Echo> for EchoService {
    type Response = Echo;
    type Future = Boxed<Echo>;
    fn call(&mut self, request: Request<Echo>) -> Self::Future {
        let name = self.name;
        Box::pin(async move {
            Ok(Response::new(Echo {
                text: format!("{name}:{}", request.get_ref().text),
                ..Echo::default()
            }))
        })
    }
}

impl ServerStreamingService<Echo> for EchoService {
    type Response = Echo;
    type ResponseStream = EchoStream;
    type Future = Boxed<EchoStream>;
    // The stream's items are tonic's: `Result<_, Status>`, large or not.
    #[allow(clippy::result_large_err)]
    fn call(&mut self, request: Request<Echo>) -> Self::Future {
        Box::pin(async move {
            let Echo { text, count, fail } = request.into_inner();
            let mut items: Vec<Result<Echo, Status>> = (0..count)
                .map(|i| {
                    Ok(Echo {
                        text: format!("{text}#{i}"),
                        ..Echo::default()
                    })
                })
                .collect();
            if fail {
                let mut status = Status::aborted("the echo was told to fail");
                status.metadata_mut().insert(
                    "x-echo-trailer",
                    MetadataValue::from_static("from-the-backend"),
                );
                items.push(Err(status));
            }
            let stream: EchoStream = Box::pin(futures_util::stream::iter(items));
            Ok(Response::new(stream))
        })
    }
}

impl ClientStreamingService<Echo> for EchoService {
    type Response = Echo;
    type Future = Boxed<Echo>;
    fn call(&mut self, request: Request<Streaming<Echo>>) -> Self::Future {
        Box::pin(async move {
            let mut stream = request.into_inner();
            let mut texts = Vec::new();
            while let Some(message) = stream.message().await? {
                texts.push(message.text);
            }
            Ok(Response::new(Echo {
                text: texts.join(","),
                ..Echo::default()
            }))
        })
    }
}

impl StreamingService<Echo> for EchoService {
    type Response = Echo;
    type ResponseStream = EchoStream;
    type Future = Boxed<EchoStream>;
    fn call(&mut self, request: Request<Streaming<Echo>>) -> Self::Future {
        Box::pin(async move {
            let stream = request.into_inner();
            // Each message answered as it comes: the client sees a reply before it sends the
            // next one, so nothing on the way may hold a whole body.
            let replies = futures_util::stream::unfold(stream, |mut stream| async move {
                match stream.message().await {
                    Ok(Some(message)) => Some((
                        Ok(Echo {
                            text: format!("re:{}", message.text),
                            ..Echo::default()
                        }),
                        stream,
                    )),
                    Ok(None) => None,
                    Err(status) => Some((Err(status), stream)),
                }
            });
            let stream: EchoStream = Box::pin(replies);
            Ok(Response::new(stream))
        })
    }
}

/// Routes one gRPC request to its method.
async fn dispatch(
    service: EchoService,
    request: http::Request<Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let mut grpc = Grpc::new(ProstCodec::<Echo, Echo>::default());
    Ok(match request.uri().path() {
        "/test.Echo/Unary" => grpc.unary(service, request).await,
        "/test.Echo/ServerStream" => grpc.server_streaming(service, request).await,
        "/test.Echo/ClientStream" => grpc.client_streaming(service, request).await,
        "/test.Echo/Bidi" => grpc.streaming(service, request).await,
        _ => Status::unimplemented("no such method").into_http(),
    })
}

/// What one TLS handshake of a backend saw: the SNI name and the ALPN protocol.
pub(crate) type Handshake = (Option<String>, Option<Vec<u8>>);

/// A running gRPC backend: its address, the connections it accepted, the SNI names and ALPN
/// protocols its TLS handshakes saw.
pub(crate) struct GrpcBackend {
    pub(crate) addr: SocketAddr,
    pub(crate) connections: Arc<AtomicUsize>,
    pub(crate) handshakes: Arc<Mutex<Vec<Handshake>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcBackend {
    /// `test.Echo` as `name` over h2c (prior knowledge), or over TLS with `tls`.
    pub(crate) async fn start(
        name: &'static str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let (counted, seen) = (connections.clone(), handshakes.clone());
        let acceptor = tls.map(TlsAcceptor::from);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let service = EchoService { name };
                let handler = service_fn(move |request| dispatch(service.clone(), request));
                let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), handler)
                                .await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            let (_, connection) = stream.get_ref();
                            let sni = connection.server_name().map(str::to_string);
                            let alpn = connection.alpn_protocol().map(<[u8]>::to_vec);
                            seen.lock().unwrap().push((sni, alpn));
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), handler)
                                .await;
                        }
                    }
                });
            }
        });
        Ok(Self {
            addr,
            connections,
            handshakes,
            task,
        })
    }
}

/// A gRPC backend that accepts calls and never answers them.
pub(crate) struct SilentBackend {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SilentBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SilentBackend {
    pub(crate) async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let handler = service_fn(|_request: http::Request<Incoming>| {
                        std::future::pending::<Result<http::Response<tonic::body::Body>, Infallible>>(
                        )
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), handler)
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}

/// A gRPC client of `test.Echo` through the proxy's plain listener `proxy` (h2c), for the
/// Ingress host `host`.
pub(crate) async fn client(proxy: SocketAddr, host: &str) -> Result<tonic::client::Grpc<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{proxy}"))?
        .origin(format!("http://{host}").parse()?)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(tonic::client::Grpc::new(channel))
}

/// The path of method `method` of `test.Echo`.
pub(crate) fn method(method: &'static str) -> PathAndQuery {
    PathAndQuery::from_maybe_shared(bytes::Bytes::from(format!("/test.Echo/{method}")))
        .unwrap_or_else(|_| PathAndQuery::from_static("/"))
}

/// The codec every call uses.
pub(crate) fn codec() -> ProstCodec<Echo, Echo> {
    ProstCodec::default()
}

/// A request message.
pub(crate) fn echo(text: &str) -> Echo {
    Echo {
        text: text.into(),
        ..Echo::default()
    }
}

/// A hand-written HTTP/2 gRPC-shaped backend for what tonic does not expose: on
/// `/raw/trailers` it reads the request to its end and answers one data frame and trailers that
/// echo the request's `x-request-trailer` (as `x-echoed-trailer`) with `grpc-status: 0`; on
/// `/raw/hang` it answers one data frame and then never ends the response.
pub(crate) struct RawBackend {
    pub(crate) addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type RawBody = http_body_util::StreamBody<
    Pin<Box<dyn Stream<Item = Result<hyper::body::Frame<bytes::Bytes>, Infallible>> + Send>>,
>;

async fn raw(request: http::Request<Incoming>) -> Result<http::Response<RawBody>, Infallible> {
    use http_body_util::BodyExt as _;
    let hang = request.uri().path() == "/raw/hang";
    let mut echoed = http::HeaderMap::new();
    if !hang {
        if let Ok(collected) = request.into_body().collect().await {
            if let Some(value) = collected
                .trailers()
                .and_then(|t| t.get("x-request-trailer"))
            {
                echoed.insert("x-echoed-trailer", value.clone());
            }
        }
    }
    echoed.insert("grpc-status", http::HeaderValue::from_static("0"));
    let data = hyper::body::Frame::data(bytes::Bytes::from_static(b"\0\0\0\0\0"));
    let frames: Pin<Box<dyn Stream<Item = _> + Send>> = if hang {
        Box::pin(futures_util::stream::iter([Ok(data)]).chain(futures_util::stream::pending()))
    } else {
        Box::pin(futures_util::stream::iter([
            Ok(data),
            Ok(hyper::body::Frame::trailers(echoed)),
        ]))
    };
    let mut response = http::Response::new(http_body_util::StreamBody::new(frames));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    Ok(response)
}

impl RawBackend {
    pub(crate) async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service_fn(raw))
                        .await;
                });
            }
        });
        Ok(Self { addr, task })
    }
}
