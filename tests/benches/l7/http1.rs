//! Measurement 1: HTTP/1.1 keep-alive through wrk (requests/s, p99 latency, CPU per request).

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};

use super::{
    process::{pinned, run_tool},
    proxies::Proxy,
    stats::{with_cpu, Samples},
    Kind, Settings, LOAD_CPU,
};

pub(crate) struct WrkResult {
    pub(crate) requests: u64,
    pub(crate) rps: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: u64,
}

pub(crate) fn wrk(port: u16, secs: u64, host: Option<&str>, path: &str) -> Result<WrkResult> {
    let mut command = pinned(&LOAD_CPU.to_string(), "wrk");
    command
        .args(["-t1", "-c50", "--latency", "-d"])
        .arg(format!("{secs}s"));
    if let Some(host) = host {
        command.arg("-H").arg(format!("Host: {host}"));
    }
    command.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = run_tool(command)?;
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no request count in wrk's output:\n{out}"))?;
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?;
    let p99_ms = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| parse_latency_ms(v.trim()))
        .with_context(|| format!("no 99% latency in wrk's output:\n{out}"))?;
    let mut errors = 0;
    for line in out.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
        if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    Ok(WrkResult {
        requests,
        rps,
        p99_ms,
        errors,
    })
}

pub(crate) fn parse_latency_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(number / 1000.0),
        "ms" => Some(number),
        "s" => Some(number * 1000.0),
        "m" => Some(number * 60_000.0),
        _ => None,
    }
}

pub(crate) struct Http1 {
    /// Proxy CPU time over the run's length, %.
    pub(crate) busy: Samples,
    pub(crate) rps: Samples,
    pub(crate) p99_ms: Samples,
    pub(crate) cpu_us: Samples,
    pub(crate) errors: BTreeMap<Kind, u64>,
}

pub(crate) fn http1(settings: &Settings, proxies: &mut BTreeMap<Kind, Proxy>) -> Result<Http1> {
    println!(
        "\n1. HTTP/1.1 keep-alive, wrk -t1 -c50 -d{}s",
        settings.run_secs
    );
    for proxy in proxies.values() {
        wrk(proxy.ports.http, 1, None, "/")?; // warm-up
    }
    let mut result = Http1 {
        busy: Samples::default(),
        rps: Samples::default(),
        p99_ms: Samples::default(),
        cpu_us: Samples::default(),
        errors: BTreeMap::new(),
    };
    for rep in 0..settings.reps {
        for proxy in proxies.values_mut() {
            let (run, us) = with_cpu(&proxy.proc, || {
                wrk(proxy.ports.http, settings.run_secs, None, "/")
            })?;
            proxy.proc.check_alive()?;
            let per_request = us / run.requests.max(1) as f64;
            println!(
                "  [{}] {:<12} {:>9.0} req/s  p99 {:>6.2} ms  {:>6.2} µs CPU/request  errors {}",
                rep + 1,
                proxy.kind.name(),
                run.rps,
                run.p99_ms,
                per_request,
                run.errors
            );
            result
                .busy
                .push(proxy.kind, us / (settings.run_secs as f64 * 1e4));
            result.rps.push(proxy.kind, run.rps);
            result.p99_ms.push(proxy.kind, run.p99_ms);
            result.cpu_us.push(proxy.kind, per_request);
            *result.errors.entry(proxy.kind).or_default() += run.errors;
        }
    }
    Ok(result)
}
