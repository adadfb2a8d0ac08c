//! `--access-log` against the real agent (L7-only on loopback): one valid JSON line per
//! request on stdout, with the fields the README documents and the values of that request.

use anyhow::{ensure, Context as _, Result};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use xdp_ingress_tests::ensure_eq;
use xdp_ingress_tests::proxy::{
    backends::HttpBackend,
    clients::{collect, get, pooled},
    eventually, single_host, TestProxy,
};

/// The documented fields, in no particular order.
const FIELDS: [&str; 10] = [
    "time",
    "client",
    "method",
    "host",
    "path",
    "protocol",
    "status",
    "bytes",
    "duration_ms",
    "upstream",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_request_with_the_documented_fields() -> Result<()> {
    let web = HttpBackend::start("web").await?;
    let manifests = single_host("log", "log.example", &web)?;
    let proxy = TestProxy::start(manifests, &["--access-log"])?;
    let client = pooled();
    let routed = get(&client, proxy.http, "log.example", "/a/b?x=1").await?;
    ensure_eq!(routed.status, StatusCode::OK, "{}", routed.text());
    let unrouted = get(&client, proxy.http, "nowhere.example", "/missing").await?;
    ensure_eq!(unrouted.status, StatusCode::NOT_FOUND);
    // HTTP/2 (h2c with prior knowledge).
    let stream = tokio::net::TcpStream::connect(proxy.http).await?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::head("http://log.example/h2").body(Empty::<Bytes>::new())?;
    let h2 = collect(sender.send_request(request).await?).await?;
    ensure_eq!(h2.status, StatusCode::OK);

    // The lines are written off the request path: wait for all three.
    let lines = eventually("three access-log lines", || async {
        let lines: Vec<Value> = proxy
            .agent
            .output()
            .iter()
            .filter(|line| line.starts_with('{') && line.contains("\"duration_ms\""))
            .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
            .collect::<Result<_>>()?;
        anyhow::ensure!(lines.len() >= 3, "{} lines so far", lines.len());
        Ok(lines)
    })
    .await
    .with_context(|| proxy.log())?;
    ensure_eq!(lines.len(), 3, "one line per request: {lines:#?}");
    for line in &lines {
        let object = line.as_object().context("a JSON object")?;
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected = FIELDS.to_vec();
        expected.sort_unstable();
        ensure_eq!(keys, expected, "{line}");
        ensure_eq!(line["client"], "127.0.0.1", "{line}");
        let time = line["time"].as_str().context("time")?;
        ensure!(
            time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "RFC 3339 UTC with milliseconds: {time}"
        );
        ensure!(
            line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
            "{line}"
        );
    }
    let find = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .with_context(|| format!("no line for {path}: {lines:#?}"))
    };
    let line = find("/a/b?x=1")?;
    ensure_eq!(
        (
            &line["method"],
            &line["host"],
            &line["protocol"],
            &line["status"]
        ),
        (
            &Value::from("GET"),
            &Value::from("log.example"),
            &Value::from("HTTP/1.1"),
            &Value::from(200)
        ),
        "{line}"
    );
    ensure_eq!(line["bytes"], routed.body.len() as u64, "{line}");
    ensure_eq!(line["upstream"], web.addr.to_string(), "{line}");
    let line = find("/missing")?;
    ensure_eq!(
        (&line["status"], &line["upstream"], &line["bytes"]),
        (
            &Value::from(404),
            &Value::Null,
            &Value::from(unrouted.body.len() as u64)
        ),
        "{line}"
    );
    let line = find("/h2")?;
    ensure_eq!(
        (
            &line["method"],
            &line["protocol"],
            &line["host"],
            &line["bytes"]
        ),
        (
            &Value::from("HEAD"),
            &Value::from("HTTP/2.0"),
            &Value::from("log.example"),
            &Value::from(0)
        ),
        "{line}"
    );
    Ok(())
}
