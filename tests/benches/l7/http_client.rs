//! This process's own minimal HTTP/1.1 client: enough to check that a proxy answers and to keep
//! idle connections, without a client library's own costs in the measurement.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};

use super::process::addr;

/// One GET on a new connection; the status.
pub(crate) fn http_get(port: u16, host: &str, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr(port), Duration::from_secs(5))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    read_response(&mut stream, &mut Vec::new())
}

/// Reads one response (Content-Length or chunked body); the status.
pub(crate) fn read_response(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk)?;
        ensure!(n > 0, "connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status in the response")?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(length) => {
            while buf.len() < head_end + length {
                let n = stream.read(&mut chunk)?;
                ensure!(n > 0, "connection closed inside a response body");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        None if head.contains("transfer-encoding: chunked") => {
            while find(&buf[head_end..], b"0\r\n\r\n").is_none() {
                let n = stream.read(&mut chunk)?;
                ensure!(n > 0, "connection closed inside a chunked body");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        None => {}
    }
    Ok(status)
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
