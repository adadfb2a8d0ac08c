//! `backend-protocol: GRPC`: every call shape through the proxy with a real tonic client and
//! server, trailers, multiplexing on one pooled HTTP/2 connection, the proxy's own errors as gRPC
//! statuses (no endpoints: UNAVAILABLE; `grpc-timeout` passed: DEADLINE_EXCEEDED), and gRPC from
//! an HTTP/1.1 client refused with 505.

use std::{sync::atomic::Ordering, time::Duration};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};
use xdp_ingress_tests::{
    ensure_eq,
    proxy::{
        clients::{get, pooled, send_h1},
        eventually,
        manifests::{backend_service, our_class, Manifests},
        TestProxy,
    },
};

use super::{
    annotated_ingress,
    echo::{client, codec, echo, method, Echo, GrpcBackend, RawBackend, SilentBackend},
};

const HOST: &str = "grpc.example";
const EMPTY: &str = "empty-grpc.example";
const SILENT: &str = "silent-grpc.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_of_every_shape_pass_through_with_trailers_and_deadlines() -> Result<()> {
    let backend = GrpcBackend::start("echo-1", None).await?;
    let silent = SilentBackend::start().await?;
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    let mut services = backend_service("echo", &[backend.addr]);
    services.extend(backend_service("silent", &[silent.addr]));
    services.extend(backend_service("nobody", &[]));
    manifests.write("services.yaml", &services)?;
    let grpc = [("backend-protocol", "GRPC")];
    manifests.write(
        "ingress.yaml",
        &[
            annotated_ingress("echo", HOST, "echo", &grpc),
            annotated_ingress("silent", SILENT, "silent", &grpc),
            annotated_ingress("nobody", EMPTY, "nobody", &grpc),
        ],
    )?;
    let proxy = TestProxy::start_with_admin(manifests, &[])?;
    let mut client = client(proxy.http, HOST).await?;

    // Unary.
    client.ready().await?;
    let reply = client
        .unary(Request::new(echo("hello")), method("Unary"), codec())
        .await
        .context("unary call")?;
    ensure_eq!(reply.into_inner().text, "echo-1:hello", "unary reply");

    // Server streaming, ending OK; then one ending ABORTED with a trailer of the backend's.
    client.ready().await?;
    let request = Echo {
        text: "s".into(),
        count: 3,
        fail: false,
    };
    let mut stream = client
        .server_streaming(Request::new(request), method("ServerStream"), codec())
        .await?
        .into_inner();
    let mut texts = Vec::new();
    while let Some(message) = stream.message().await? {
        texts.push(message.text);
    }
    ensure_eq!(texts, ["s#0", "s#1", "s#2"], "server-streamed replies");

    client.ready().await?;
    let request = Echo {
        text: "f".into(),
        count: 1,
        fail: true,
    };
    let mut stream = client
        .server_streaming(Request::new(request), method("ServerStream"), codec())
        .await?
        .into_inner();
    ensure_eq!(
        stream.message().await?.map(|m| m.text),
        Some("f#0".to_string()),
        "the message before the failure"
    );
    let status = stream
        .message()
        .await
        .err()
        .context("the stream should end with the backend's status")?;
    ensure_eq!(status.code(), Code::Aborted, "status from the trailers");
    ensure_eq!(
        status
            .metadata()
            .get("x-echo-trailer")
            .and_then(|v| v.to_str().ok()),
        Some("from-the-backend"),
        "the backend's trailer reaches the client"
    );

    // Client streaming.
    client.ready().await?;
    let outbound = futures_util::stream::iter(["a", "b", "c"].map(echo));
    let reply = client
        .client_streaming(Request::new(outbound), method("ClientStream"), codec())
        .await?;
    ensure_eq!(reply.into_inner().text, "a,b,c", "client-streamed request");

    // Bidi, in lock step: each reply arrives before the next message is sent, so neither
    // direction is buffered whole on the way.
    client.ready().await?;
    let (to_server, outbound) = tokio::sync::mpsc::channel::<Echo>(1);
    to_server.send(echo("1")).await?;
    let mut replies = client
        .streaming(
            Request::new(ReceiverStream::new(outbound)),
            method("Bidi"),
            codec(),
        )
        .await?
        .into_inner();
    for i in 1..=3 {
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.message())
            .await
            .with_context(|| format!("bidi reply {i} did not arrive while the call is open"))??;
        ensure_eq!(reply.map(|m| m.text), Some(format!("re:{i}")), "bidi reply");
        if i < 3 {
            to_server.send(echo(&(i + 1).to_string())).await?;
        }
    }
    drop(to_server);
    ensure_eq!(
        replies.message().await?,
        None,
        "bidi ends when the client does"
    );

    // Multiplexing: 20 concurrent calls share the one pooled HTTP/2 connection.
    let before = backend.connections.load(Ordering::SeqCst);
    let calls = (0..20).map(|i| {
        let mut client = client.clone();
        async move {
            client.ready().await?;
            let reply = client
                .unary(Request::new(echo(&i.to_string())), method("Unary"), codec())
                .await?;
            anyhow::Ok(reply.into_inner().text)
        }
    });
    for (i, reply) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        ensure_eq!(reply?, format!("echo-1:{i}"), "concurrent call");
    }
    ensure_eq!(before, 1, "one connection so far");
    ensure_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "concurrent calls are streams on the pooled connection"
    );

    // No endpoints: UNAVAILABLE from the proxy, trailers-only.
    let mut nobody = super::echo::client(proxy.http, EMPTY).await?;
    nobody.ready().await?;
    let status = nobody
        .unary(Request::new(echo("x")), method("Unary"), codec())
        .await
        .err()
        .context("a call to a backend without endpoints should fail")?;
    ensure_eq!(status.code(), Code::Unavailable, "no endpoints: {status:?}");
    anyhow::ensure!(
        status.message().contains("no ready endpoints"),
        "the reason is in grpc-message: {status:?}"
    );
    // Counted as the 503 it stands for, not as the 200 that carries it.
    let admin = proxy.admin.context("admin listener")?;
    eventually("the refused call is counted as 5xx", || async {
        let text = get(&pooled(), admin, "admin", "/metrics").await?.text();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("xdp_ingress_requests_total") && l.contains(r#"service="nobody""#)
            })
            .collect();
        ensure_eq!(lines.len(), 1, "one series for the refused call: {lines:?}");
        anyhow::ensure!(
            lines[0].contains(r#"status="5xx""#) && lines[0].ends_with(" 1"),
            "{lines:?}"
        );
        Ok(())
    })
    .await?;

    // A deadline shorter than the backend takes: DEADLINE_EXCEEDED from the proxy. This backend
    // never answers, so only the proxy can end the call; the client is hyper's HTTP/2 client
    // (tonic's would give up at the deadline itself, before the proxy's answer arrives).
    let reply = tokio::time::timeout(Duration::from_secs(10), call_with_deadline(proxy.http))
        .await
        .context("the proxy did not end the call at its deadline")??;
    ensure_eq!(reply.0, 200, "trailers-only answer");
    ensure_eq!(
        reply.1.as_deref(),
        Some("4"),
        "grpc-status DEADLINE_EXCEEDED"
    );
    anyhow::ensure!(
        reply
            .2
            .as_deref()
            .is_some_and(|m| m.contains("grpc-timeout")),
        "the proxy says why: {reply:?}"
    );

    // gRPC from an HTTP/1.1 client: refused with 505, the backend never sees it.
    let before = backend.connections.load(Ordering::SeqCst);
    let request = http::Request::post("/test.Echo/Unary")
        .header(http::header::HOST, HOST)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))?;
    let reply = send_h1(proxy.http, request).await?;
    ensure_eq!(reply.status, 505, "HTTP/1.1 gRPC: {}", reply.text());
    anyhow::ensure!(
        reply.text().contains("gRPC needs HTTP/2"),
        "{}",
        reply.text()
    );
    ensure_eq!(
        backend.connections.load(Ordering::SeqCst),
        before,
        "the refused call reached no backend"
    );
    Ok(())
}

/// One unary call to [`SILENT`] with `grpc-timeout: 300m` on its own HTTP/2 connection: the
/// HTTP status, `grpc-status` and `grpc-message` of the answer.
async fn call_with_deadline(
    proxy: std::net::SocketAddr,
) -> Result<(u16, Option<String>, Option<String>)> {
    let stream = tokio::net::TcpStream::connect(proxy).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{SILENT}/test.Echo/Unary"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))?;
    let response = sender.send_request(request).await?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Ok((
        response.status().as_u16(),
        header("grpc-status"),
        header("grpc-message"),
    ))
}

/// An HTTP/2 connection to the proxy's plain listener (h2c with prior knowledge).
async fn h2_to(
    proxy: std::net::SocketAddr,
) -> Result<hyper::client::conn::http2::SendRequest<RawRequestBody>> {
    let stream = tokio::net::TcpStream::connect(proxy).await?;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

type RawRequestBody = http_body_util::StreamBody<
    futures_util::stream::Iter<
        std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>,
    >,
>;

/// A gRPC-shaped POST for `path` on [`RAW`]: one empty message, then `trailers` if any.
fn raw_call(
    path: &str,
    trailers: Option<http::HeaderMap>,
    timeout: Option<&'static str>,
) -> Result<http::Request<RawRequestBody>> {
    let mut frames = vec![Ok(hyper::body::Frame::data(Bytes::from_static(
        b"\0\0\0\0\0",
    )))];
    frames.extend(trailers.map(|t| Ok(hyper::body::Frame::trailers(t))));
    let mut request = http::Request::post(format!("http://{RAW}{path}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers");
    if let Some(timeout) = timeout {
        request = request.header("grpc-timeout", timeout);
    }
    Ok(
        request.body(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))?,
    )
}

const RAW: &str = "raw-grpc.example";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_both_ways_and_a_deadline_cuts_a_streaming_response() -> Result<()> {
    use http_body_util::BodyExt as _;
    let backend = RawBackend::start().await?;
    let manifests = Manifests::new()?;
    manifests.write("class.yaml", &[our_class()])?;
    manifests.write("services.yaml", &backend_service("raw", &[backend.addr]))?;
    manifests.write(
        "ingress.yaml",
        &[annotated_ingress(
            "raw",
            RAW,
            "raw",
            &[("backend-protocol", "GRPC")],
        )],
    )?;
    let proxy = TestProxy::start(manifests, &[])?;
    let mut sender = h2_to(proxy.http).await?;

    // The client's trailers reach the backend; the backend's reach the client.
    let mut trailers = http::HeaderMap::new();
    trailers.insert(
        "x-request-trailer",
        http::HeaderValue::from_static("from-the-client"),
    );
    let response = sender
        .send_request(raw_call("/raw/trailers", Some(trailers), None)?)
        .await?;
    ensure_eq!(response.status(), 200, "raw call");
    let collected = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .context("the response did not end")??;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    ensure_eq!(
        trailers
            .get("x-echoed-trailer")
            .and_then(|v| v.to_str().ok()),
        Some("from-the-client"),
        "request trailer echoed in the response trailers: {trailers:?}"
    );
    ensure_eq!(
        trailers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("0"),
        "the backend's grpc-status"
    );

    // The response started, then stalls: at the deadline the proxy ends it with status 4 in
    // trailers, after the data already relayed.
    let response = sender
        .send_request(raw_call("/raw/hang", None, Some("300m"))?)
        .await?;
    ensure_eq!(
        response.status(),
        200,
        "the head is relayed before the deadline"
    );
    let mut body = response.into_body();
    let mut data = 0;
    let trailers = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .context("the proxy did not cut the response at the deadline")?
            .context("the response ended without trailers")??;
        match frame.into_data() {
            Ok(bytes) => data += bytes.len(),
            Err(frame) => break frame.into_trailers().unwrap_or_default(),
        }
    };
    ensure_eq!(
        data,
        5,
        "the message sent before the stall reached the client"
    );
    ensure_eq!(
        trailers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("4"),
        "DEADLINE_EXCEEDED in the trailers: {trailers:?}"
    );
    Ok(())
}
