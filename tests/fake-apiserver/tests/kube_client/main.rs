//! The real kube client (kube 5, through a kubeconfig the fake server writes) against the fake
//! API server: CRUD, status patches, watchers across bookmarks, compaction and restarts, lease
//! races, selectors and paging.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

mod crud;
mod errors;
mod lists;
mod watch;

type Result<T = ()> = anyhow::Result<T>;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A client built the way the agent builds one: from a kubeconfig file.
async fn client(server: &FakeApiServer) -> Result<Client> {
    let path = std::env::temp_dir().join(format!(
        "fake-apiserver-kubeconfig-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    server.write_kubeconfig(&path)?;
    let kubeconfig = Kubeconfig::read_from(&path)?;
    let _ = std::fs::remove_file(&path);
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn start() -> Result<FakeApiServer> {
    FakeApiServer::start("127.0.0.1:0".parse()?)
}

fn service(name: &str, port: u16) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"ports": [{"port": port}]},
    })
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn api_reason(e: &kube::Error) -> Option<String> {
    match e {
        kube::Error::Api(s) => Some(s.reason.clone()),
        _ => None,
    }
}

/// A plain HTTP/1.1 exchange, for what the typed client cannot send.
fn raw(
    server: &FakeApiServer,
    method: &str,
    path: &str,
    ctype: &str,
    body: &str,
) -> Result<(u16, serde_json::Value)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.addr())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // de-chunk: size line, data, CRLF, ...
        let mut rest = body;
        let mut data = String::new();
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            data.push_str(&tail[..n]);
            rest = tail[n..].trim_start_matches("\r\n");
        }
        data
    } else {
        body.to_string()
    };
    Ok((
        code,
        serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null),
    ))
}
