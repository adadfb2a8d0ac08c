//! Measurement 2: HTTP/2 over TLS through h2load (requests/s, CPU per request).

use std::collections::BTreeMap;

use anyhow::{ensure, Context as _, Result};

use super::{
    process::{pinned, run_tool},
    proxies::Proxy,
    stats::{with_cpu, Samples},
    Kind, Settings, LOAD_CPU,
};

pub(crate) struct H2loadResult {
    pub(crate) succeeded: u64,
    pub(crate) rps: f64,
    pub(crate) errors: u64,
}

pub(crate) fn h2load(port: u16, secs: u64) -> Result<H2loadResult> {
    let mut command = pinned(&LOAD_CPU.to_string(), "h2load");
    command
        .args(["-t1", "-c50", "-m10", "-D"])
        .arg(secs.to_string())
        .arg(format!("https://127.0.0.1:{port}/"));
    let out = run_tool(command)?;
    ensure!(
        out.contains("Application protocol: h2") && out.contains("TLS Protocol: TLSv1.3"),
        "h2load did not negotiate h2 over TLS 1.3:\n{out}"
    );
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.trim_end_matches(" req/s").parse().ok())
        .with_context(|| format!("no req/s in h2load's output:\n{out}"))?;
    let requests = out
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .with_context(|| format!("no request counts in h2load's output:\n{out}"))?;
    let count = |what: &str| -> u64 {
        requests
            .split(", ")
            .find(|part| part.ends_with(what))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let non_2xx = out
        .lines()
        .find_map(|l| l.strip_prefix("status codes: "))
        .map_or(0, |codes| {
            codes
                .split(", ")
                .filter(|part| !part.ends_with(" 2xx"))
                .filter_map(|part| part.split_whitespace().next())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum()
        });
    Ok(H2loadResult {
        succeeded: count(" succeeded"),
        rps,
        errors: count(" failed") + count(" errored") + count(" timeout") + non_2xx,
    })
}

pub(crate) struct Http2 {
    pub(crate) busy: Samples,
    pub(crate) rps: Samples,
    pub(crate) cpu_us: Samples,
    pub(crate) errors: BTreeMap<Kind, u64>,
}

pub(crate) fn http2(settings: &Settings, proxies: &mut BTreeMap<Kind, Proxy>) -> Result<Http2> {
    println!(
        "\n2. HTTP/2 over TLS, h2load -t1 -c50 -m10 -D{}",
        settings.run_secs
    );
    for proxy in proxies.values() {
        h2load(proxy.ports.https, 1)?; // warm-up
    }
    let mut result = Http2 {
        busy: Samples::default(),
        rps: Samples::default(),
        cpu_us: Samples::default(),
        errors: BTreeMap::new(),
    };
    for rep in 0..settings.reps {
        for proxy in proxies.values_mut() {
            let (run, us) = with_cpu(&proxy.proc, || h2load(proxy.ports.https, settings.run_secs))?;
            proxy.proc.check_alive()?;
            let per_request = us / run.succeeded.max(1) as f64;
            println!(
                "  [{}] {:<12} {:>9.0} req/s  {:>6.2} µs CPU/request  errors {}",
                rep + 1,
                proxy.kind.name(),
                run.rps,
                per_request,
                run.errors
            );
            result
                .busy
                .push(proxy.kind, us / (settings.run_secs as f64 * 1e4));
            result.rps.push(proxy.kind, run.rps);
            result.cpu_us.push(proxy.kind, per_request);
            *result.errors.entry(proxy.kind).or_default() += run.errors;
        }
    }
    Ok(result)
}
