//! Measurement 4: a proxy's memory with many idle keep-alive connections, and whether it kept
//! them open.

use std::{collections::BTreeMap, io::Write, net::TcpStream, time::Duration};

use anyhow::{ensure, Context as _, Result};

use super::{
    http_client::read_response,
    process::{addr, print_output},
    proxies::Env,
    stats::Samples,
    Kind, Settings, IDLE_BEFORE_RSS, KINDS,
};

pub(crate) struct Memory {
    pub(crate) base_mib: Samples,
    pub(crate) loaded_mib: Samples,
    pub(crate) per_connection_kib: Samples,
    /// Connections that did not answer a second request after the measurement.
    pub(crate) closed: BTreeMap<Kind, usize>,
    pub(crate) open_failures: BTreeMap<Kind, String>,
}

/// Opens `count` connections in batches, one request on each; the connections.
pub(crate) fn open_idle(port: u16, count: usize) -> Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(count);
    let mut buf = Vec::new();
    let request = b"GET / HTTP/1.1\r\nHost: bench.example\r\n\r\n";
    while streams.len() < count {
        let batch = (count - streams.len()).min(500);
        let first = streams.len();
        for _ in 0..batch {
            let stream = TcpStream::connect_timeout(&addr(port), Duration::from_secs(10))
                .with_context(|| format!("opening connection {}", streams.len() + 1))?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            streams.push(stream);
        }
        for stream in &mut streams[first..] {
            stream.write_all(request)?;
        }
        for (i, stream) in streams[first..].iter_mut().enumerate() {
            let status = read_response(stream, &mut buf)
                .with_context(|| format!("response on connection {}", first + i + 1))?;
            ensure!(
                status == 200,
                "status {status} on connection {}",
                first + i + 1
            );
        }
    }
    Ok(streams)
}

/// Asks every connection again; how many no longer answer.
pub(crate) fn count_closed(streams: &mut [TcpStream]) -> usize {
    let request = b"GET / HTTP/1.1\r\nHost: bench.example\r\n\r\n";
    let mut buf = Vec::new();
    let mut closed = 0;
    for chunk in streams.chunks_mut(500) {
        let mut sent = vec![false; chunk.len()];
        for (i, stream) in chunk.iter_mut().enumerate() {
            sent[i] = stream.write_all(request).is_ok();
        }
        for (i, stream) in chunk.iter_mut().enumerate() {
            if !sent[i] || !matches!(read_response(stream, &mut buf), Ok(200)) {
                closed += 1;
            }
        }
    }
    closed
}

pub(crate) fn idle_memory(settings: &Settings, env: &Env) -> Result<Memory> {
    let count = settings.idle_connections;
    println!("\n4. RSS with {count} idle keep-alive connections (fresh proxy each time)");
    let mut result = Memory {
        base_mib: Samples::default(),
        loaded_mib: Samples::default(),
        per_connection_kib: Samples::default(),
        closed: BTreeMap::new(),
        open_failures: BTreeMap::new(),
    };
    for rep in 0..settings.reps {
        for kind in KINDS {
            let mut proxy = env.start_proxy(kind)?;
            proxy.check_answers()?;
            std::thread::sleep(Duration::from_millis(500));
            let base = proxy.proc.rss_kib();
            let mut streams = match open_idle(proxy.ports.http, count) {
                Ok(streams) => streams,
                Err(error) => {
                    let message = format!("{error:#}");
                    println!("  [{}] {:<12} FAILED: {message}", rep + 1, kind.name());
                    result.open_failures.insert(kind, message);
                    continue;
                }
            };
            // Idle for a while, the same for every proxy: ours parks a connection after 1 s
            // quiet and returns the freed memory within the next second, which on a loaded
            // host can take past 2 s for 10,000 connections.
            std::thread::sleep(IDLE_BEFORE_RSS);
            proxy.proc.check_alive()?;
            let loaded = proxy.proc.rss_kib();
            let closed = count_closed(&mut streams);
            drop(streams);
            if rep + 1 == settings.reps {
                print_output(&proxy.proc);
            }
            println!(
                "  [{}] {:<12} RSS {:>7.1} MiB fresh, {:>7.1} MiB with {count} idle connections ({:.1} KiB each); {closed} closed",
                rep + 1,
                kind.name(),
                base as f64 / 1024.0,
                loaded as f64 / 1024.0,
                (loaded as f64 - base as f64) / count as f64,
            );
            result.base_mib.push(kind, base as f64 / 1024.0);
            result.loaded_mib.push(kind, loaded as f64 / 1024.0);
            result
                .per_connection_kib
                .push(kind, (loaded as f64 - base as f64) / count as f64);
            *result.closed.entry(kind).or_default() += closed;
        }
    }
    Ok(result)
}
