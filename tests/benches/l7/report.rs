//! The report: the printed table with PASS/MISS against the targets, and the L7 section of
//! docs/benchmarks.md with the command, versions and machine that produced it.

use std::{fmt::Write as _, fs, process::Command};

use anyhow::{Context as _, Result};

use super::{
    handshakes::{Handshakes, HANDSHAKE_THREADS},
    http1::Http1,
    http2::Http2,
    memory::Memory,
    scale::{Scale, SCALE_FILES},
    stats::{fmt_num, median, verdict},
    Kind, Settings, IDLE_BEFORE_RSS, IDLE_TIMEOUT_S, KINDS, SCALE_PATHS, UPSTREAM_BODY,
};

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) lines: Vec<String>,
}

impl Report {
    pub(crate) fn line(&mut self, text: impl Into<String>) {
        self.lines.push(text.into());
    }

    pub(crate) fn write_results(
        &mut self,
        settings: &Settings,
        h1: &Http1,
        h2: &Http2,
        hs: &Handshakes,
        memory: &Memory,
        scale: &Scale,
    ) {
        let reps = settings.reps;
        let of = |n: usize| {
            if n == 1 {
                "1 run".to_string()
            } else {
                format!("median of {n} interleaved runs")
            }
        };
        let ours = Kind::Ours;
        let (ng, hp) = (Kind::Nginx, Kind::Haproxy);

        self.line("### 1. HTTP/1.1 keep-alive");
        self.line("");
        self.line(format!(
            "`wrk -t1 -c50 -d{}s --latency http://127.0.0.1:PORT/`, small responses ({} bytes); {}.",
            settings.run_secs,
            UPSTREAM_BODY.len(),
            of(reps)
        ));
        self.line("");
        self.line("| proxy | req/s | p99 ms | CPU µs/request | × ours (CPU) | proxy CPU busy | errors | runs (µs/request) |");
        self.line("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        for kind in KINDS {
            self.line(format!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} % | {} | {} |",
                kind.name(),
                h1.rps.median(kind),
                h1.p99_ms.median(kind),
                h1.cpu_us.median(kind),
                h1.cpu_us.median(kind) / h1.cpu_us.median(ours),
                h1.busy.median(kind),
                h1.errors.get(&kind).copied().unwrap_or(0),
                h1.cpu_us.all(kind)
            ));
        }
        self.line("");
        let cpu = |k| h1.cpu_us.median(k);
        let t1 = [
            (
                format!(
                    "CPU/request ≤ nginx / 1.3 ({:.2} ≤ {:.2})",
                    cpu(ours),
                    cpu(ng) / 1.3
                ),
                cpu(ours) <= cpu(ng) / 1.3,
            ),
            (
                format!(
                    "CPU/request ≤ HAProxy / 1.2 ({:.2} ≤ {:.2})",
                    cpu(ours),
                    cpu(hp) / 1.2
                ),
                cpu(ours) <= cpu(hp) / 1.2,
            ),
            (
                format!(
                    "req/s ≥ both ({:.0} vs {:.0}, {:.0})",
                    h1.rps.median(ours),
                    h1.rps.median(ng),
                    h1.rps.median(hp)
                ),
                h1.rps.median(ours) >= h1.rps.median(ng).max(h1.rps.median(hp)),
            ),
            (
                format!(
                    "p99 ≤ both ({:.2} vs {:.2}, {:.2} ms)",
                    h1.p99_ms.median(ours),
                    h1.p99_ms.median(ng),
                    h1.p99_ms.median(hp)
                ),
                h1.p99_ms.median(ours) <= h1.p99_ms.median(ng).min(h1.p99_ms.median(hp)),
            ),
        ];
        let mut targets = Vec::new();
        for (text, ok) in t1 {
            targets.push(format!("(1) {text}: {}", verdict(ok)));
        }

        self.line("### 2. HTTP/2 over TLS");
        self.line("");
        self.line(format!(
            "`h2load -t1 -c50 -m10 -D{} https://127.0.0.1:PORT/` (ALPN h2, TLS 1.3); {}.",
            settings.run_secs,
            of(reps)
        ));
        self.line("");
        self.line("| proxy | req/s | CPU µs/request | × ours (CPU) | proxy CPU busy | errors | runs (µs/request) |");
        self.line("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
        for kind in KINDS {
            self.line(format!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.0} % | {} | {} |",
                kind.name(),
                h2.rps.median(kind),
                h2.cpu_us.median(kind),
                h2.cpu_us.median(kind) / h2.cpu_us.median(ours),
                h2.busy.median(kind),
                h2.errors.get(&kind).copied().unwrap_or(0),
                h2.cpu_us.all(kind)
            ));
        }
        self.line("");
        targets.push(format!(
            "(2) HTTP/2 CPU/request ≤ nginx ({:.2} ≤ {:.2}): {}",
            h2.cpu_us.median(ours),
            h2.cpu_us.median(ng),
            verdict(h2.cpu_us.median(ours) <= h2.cpu_us.median(ng))
        ));

        self.line("### 3. Full TLS handshakes");
        self.line("");
        self.line(format!(
            "A rustls client in the harness (CPU 1, {HANDSHAKE_THREADS} threads, {} s): TLS 1.3, X25519, ECDSA P-256 certificate, session resumption disabled (every handshake checked to be full), one request per connection (`Connection: close`). Handshakes per second of the proxy's CPU time; {}.",
            settings.handshake_secs,
            of(reps)
        ));
        self.line("");
        self.line("| proxy | handshakes per CPU-second | × ours | handshakes/s (wall) | failed | runs (per CPU-second) |");
        self.line("| --- | ---: | ---: | ---: | ---: | --- |");
        for kind in KINDS {
            let (failed, first) = hs.errors.get(&kind).cloned().unwrap_or_default();
            self.line(format!(
                "| {} | {:.0} | {:.2} | {:.0} | {failed}{} | {} |",
                kind.name(),
                hs.per_cpu_second.median(kind),
                hs.per_cpu_second.median(kind) / hs.per_cpu_second.median(ours),
                hs.per_second.median(kind),
                first.map(|e| format!(" ({e})")).unwrap_or_default(),
                hs.per_cpu_second.all(kind)
            ));
        }
        self.line("");
        targets.push(format!(
            "(3) handshakes per CPU-second ≥ nginx ({:.0} ≥ {:.0}): {}",
            hs.per_cpu_second.median(ours),
            hs.per_cpu_second.median(ng),
            verdict(hs.per_cpu_second.median(ours) >= hs.per_cpu_second.median(ng))
        ));

        let count = settings.idle_connections;
        self.line(format!("### 4. Memory with {count} idle connections"));
        self.line("");
        self.line(format!(
            "A freshly started proxy answers one request, then {count} plain-HTTP/1.1 keep-alive connections each carry one request and stay idle; VmRSS summed over the proxy's processes {} s later; {}. Afterwards every connection is asked again ('closed' = no answer).",
            IDLE_BEFORE_RSS.as_secs(),
            of(reps)
        ));
        self.line("");
        self.line("| proxy | RSS fresh MiB | RSS with connections MiB | × ours | KiB per connection | closed |");
        self.line("| --- | ---: | ---: | ---: | ---: | ---: |");
        for kind in KINDS {
            if let Some(error) = memory.open_failures.get(&kind) {
                self.line(format!(
                    "| {} | {:.1} | failed: {error} | | | |",
                    kind.name(),
                    memory.base_mib.median(kind)
                ));
                continue;
            }
            self.line(format!(
                "| {} | {:.1} | {:.1} | {:.2} | {:.1} | {} |",
                kind.name(),
                memory.base_mib.median(kind),
                memory.loaded_mib.median(kind),
                memory.loaded_mib.median(kind) / memory.loaded_mib.median(ours),
                memory.per_connection_kib.median(kind),
                memory.closed.get(&kind).copied().unwrap_or(0)
            ));
        }
        self.line("");
        targets.push(format!(
            "(4) RSS with {count} idle connections ≤ nginx ({:.1} ≤ {:.1} MiB): {}",
            memory.loaded_mib.median(ours),
            memory.loaded_mib.median(ng),
            verdict(memory.loaded_mib.median(ours) <= memory.loaded_mib.median(ng))
        ));

        self.line(format!(
            "### 5. Ours: {} Ingress hosts × {} paths",
            scale.hosts,
            SCALE_PATHS.len()
        ));
        self.line("");
        let ratio = median(&scale.cpu_us_many) / median(&scale.cpu_us_one);
        let pairs: Vec<String> = scale
            .cpu_us_many
            .iter()
            .zip(&scale.cpu_us_one)
            .map(|(m, o)| format!("{:.3}", m / o))
            .collect();
        self.line(format!(
            "{} Ingresses (host hN.bench.example, Prefix paths {}, each to its own Service and EndpointSlice; {} files) against 1 Ingress of the same shape. `wrk -t1 -c50 -d{}s -H 'Host: HOST' http://127.0.0.1:PORT/c`, the host in the middle of the table; {}.",
            scale.hosts,
            SCALE_PATHS.join(" "),
            SCALE_FILES,
            settings.run_secs,
            of(reps)
        ));
        self.line("");
        self.line("| Ingresses | req/s | CPU µs/request | runs (µs/request) | RSS MiB |");
        self.line("| ---: | ---: | ---: | --- | ---: |");
        let runs = |v: &[f64]| v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(", ");
        self.line(format!(
            "| 1 | {:.0} | {:.2} | {} | {:.1} |",
            median(&scale.rps_one),
            median(&scale.cpu_us_one),
            runs(&scale.cpu_us_one),
            scale.rss_one_mib
        ));
        self.line(format!(
            "| {} | {:.0} | {:.2} | {} | {:.1} |",
            scale.hosts,
            median(&scale.rps_many),
            median(&scale.cpu_us_many),
            runs(&scale.cpu_us_many),
            scale.rss_many_mib
        ));
        self.line("");
        self.line(format!(
            "CPU/request ratio {} : 1 = {ratio:.3} (per run: {}); wrk errors {}.",
            scale.hosts,
            pairs.join(", "),
            scale.errors
        ));
        self.line("");
        self.line(format!(
            "Start with {} Ingresses: listening {:.2} s after the process started (first sync {} ms). Reloads (one Ingress's path changed in one of the {} files, 3 times): table build and swap `swap_ms` {} (median {:.1} ms); whole sync `read_ms` + `elapsed_ms` (read the files, parsing only those that changed; translate, build, swap) {} (median {:.0} ms).",
            scale.hosts,
            scale.start_s,
            scale.first_sync_ms.map_or("?".to_string(), |v| format!("{v:.0}")),
            SCALE_FILES,
            runs(&scale.swap_ms),
            median(&scale.swap_ms),
            runs(&scale.sync_ms),
            median(&scale.sync_ms),
        ));
        self.line("");
        targets.push(format!(
            "(5) {} : 1 Ingress CPU/request ≤ 1.10 ({ratio:.3}): {}",
            scale.hosts,
            verdict(ratio <= 1.10)
        ));
        targets.push(format!(
            "(5) table rebuild (swap_ms) < 200 ms ({:.1} ms): {}; whole sync (read_ms + elapsed_ms) {:.0} ms: {}",
            median(&scale.swap_ms),
            verdict(median(&scale.swap_ms) < 200.0),
            median(&scale.sync_ms),
            verdict(median(&scale.sync_ms) < 200.0)
        ));

        self.line("### Targets");
        self.line("");
        for target in targets {
            self.line(format!("- {target}"));
        }
        self.line("");
    }

    pub(crate) fn finish(&self, settings: &Settings, load: &str) -> Result<()> {
        let quick = if settings.quick { " --quick" } else { "" };
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let versions = versions();
        let commit = Command::new("git")
            .current_dir(&settings.workspace)
            .args(["describe", "--always", "--dirty"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let mut body = String::new();
        const BEGIN: &str = "<!-- l7:begin -->";
        const END: &str = "<!-- l7:end -->";
        let _ = writeln!(body, "{BEGIN}");
        let _ = writeln!(body, "## L7: `cargo xtask bench l7{quick}`");
        let _ = writeln!(body);
        let _ = writeln!(
            body,
            "Command: `cargo xtask bench l7{quick}` (as root), {date}, tree {commit}. {} Load average at the start: {}, at the end: {}. {versions}.",
            machine(),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(body);
        let _ = writeln!(
            body,
            "Setup: each proxy with one worker (`--workers 1`, nginx `worker_processes 1`, HAProxy \
             `nbthread 1`) pinned to CPU 0 (`taskset -c 0`); the load generator (wrk, h2load, the \
             harness's own clients) and the upstream (one nginx worker answering a {}-byte body \
             with `return 200`) on CPU 1. Same for all three: keep-alive to the upstream, access \
             logs off, the same ECDSA P-256 certificate, the same forwarding headers \
             (X-Forwarded-For/-Proto/-Host/-Port, X-Real-IP, X-Request-ID), client idle timeout \
             {IDLE_TIMEOUT_S} s, 127.0.0.1, RLIMIT_NOFILE {} (connection limits just below it; HAProxy, which reserves two descriptors per connection, warns that this is too low for its maxconn of idle connections + 1,000, but idle client connections hold one each). CPU time = utime + stime of the proxy's processes \
             (/proc/PID/stat) over the run. The host is shared and noisy: compare within one run.",
            UPSTREAM_BODY.len(),
            settings.nofile
        );
        let _ = writeln!(body);
        for line in &self.lines {
            let _ = writeln!(body, "{line}");
        }
        let _ = writeln!(body, "{END}");
        print!("\n{body}");

        let path = settings.workspace.join("docs/benchmarks.md");
        let existing = fs::read_to_string(&path).unwrap_or_default();
        let updated = match (existing.find(BEGIN), existing.find(END)) {
            (Some(begin), Some(end)) if end > begin => format!(
                "{}{}{}",
                &existing[..begin],
                body,
                &existing[end + END.len()..].trim_start_matches('\n')
            ),
            _ if existing.is_empty() => format!("# Benchmarks\n\n{body}"),
            _ => format!("{}\n\n{body}", existing.trim_end()),
        };
        fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))?;
        println!("\nwritten to {}", path.display());
        Ok(())
    }
}

pub(crate) fn versions() -> String {
    let first_line = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .map(|o| {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                text.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_default()
    };
    let haproxy = first_line("haproxy", &["-v"]);
    let haproxy = haproxy.split(" - ").next().unwrap_or(&haproxy).to_string();
    let wrk = first_line("wrk", &["-v"]);
    let wrk = wrk.split(" Copyright").next().unwrap_or(&wrk).to_string();
    format!(
        "{}, {haproxy}, {wrk}, {}",
        first_line("nginx", &["-v"]),
        first_line("h2load", &["--version"])
    )
}

pub(crate) fn machine() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    // Not available_parallelism: this process is pinned to one CPU.
    // SAFETY: plain FFI call.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!("Kernel {}, {cores} × {cpu}.", kernel.trim())
}
