//! Measurement 5 (ours only): the cost per request with 10,000 Ingress hosts, and the time to
//! rebuild and swap the routing table after a manifest change.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};

use super::{
    http1::wrk,
    http_client::http_get,
    process::print_output,
    proxies::{base_manifests, host_manifests, Env},
    stats::with_cpu,
    Settings, SCALE_PATHS,
};

pub(crate) struct Scale {
    pub(crate) hosts: usize,
    pub(crate) cpu_us_one: Vec<f64>,
    pub(crate) cpu_us_many: Vec<f64>,
    pub(crate) rps_one: Vec<f64>,
    pub(crate) rps_many: Vec<f64>,
    pub(crate) errors: u64,
    pub(crate) start_s: f64,
    pub(crate) first_sync_ms: Option<f64>,
    pub(crate) rss_one_mib: f64,
    pub(crate) rss_many_mib: f64,
    pub(crate) swap_ms: Vec<f64>,
    pub(crate) sync_ms: Vec<f64>,
}

pub(crate) const SCALE_FILES: usize = 10;

pub(crate) fn write_scale_manifests(dir: &Path, hosts: usize, changed: bool) -> Result<()> {
    fs::create_dir_all(dir)?;
    let per_file = hosts.div_ceil(SCALE_FILES);
    for file in 0..SCALE_FILES {
        let range = file * per_file..((file + 1) * per_file).min(hosts);
        if range.is_empty() && file > 0 {
            continue;
        }
        let mut text = if file == 0 {
            base_manifests("", "", false)
        } else {
            String::new()
        };
        for n in range {
            if changed && n == hosts - 1 {
                text += &host_manifests(n, &["/a", "/b", "/c", "/d", "/f"]);
            } else {
                text += &host_manifests(n, &SCALE_PATHS);
            }
        }
        // Written next to the target and renamed in, so the agent never reads half a file.
        let path = dir.join(format!("hosts-{file:02}.yaml"));
        let staging = dir.join(format!(".hosts-{file:02}.yaml.tmp"));
        fs::write(&staging, text)?;
        fs::rename(&staging, &path)?;
    }
    Ok(())
}

/// The last number after `key=` in the lines of `log` containing `marker`.
pub(crate) fn logged_values(log: &str, marker: &str, key: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            let start = l.find(key)? + key.len();
            l[start..]
                .split(|c: char| c.is_whitespace() || c == ',')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

pub(crate) fn scale(settings: &Settings, env: &Env) -> Result<Scale> {
    let hosts = settings.scale_hosts;
    println!(
        "\n5. Ours: {hosts} Ingress hosts × {} paths against 1 Ingress",
        SCALE_PATHS.len()
    );
    let one_dir = env.dir.join("scale-1");
    fs::create_dir_all(&one_dir)?;
    fs::write(
        one_dir.join("hosts.yaml"),
        base_manifests("", "", false) + &host_manifests(0, &SCALE_PATHS),
    )?;
    let many_dir = env.dir.join("scale-many");
    write_scale_manifests(&many_dir, hosts, false)?;

    let (mut one, _) = env.start_ours_on("ours-1-ingress", &one_dir, 28401)?;
    let (mut many, start) = env.start_ours_on("ours-many-ingresses", &many_dir, 28501)?;
    let first_sync_ms = logged_values(&many.log_text(), "synced", "elapsed_ms=")
        .first()
        .copied();
    println!(
        "  {hosts} Ingresses: listening {:.2} s after start (first sync {} ms)",
        start.as_secs_f64(),
        first_sync_ms.map_or("?".to_string(), |v| format!("{v:.1}"))
    );
    let target = hosts * 7 / 9; // somewhere inside, not the first nor the last
    let one_host = "h0.bench.example".to_string();
    let many_host = format!("h{target}.bench.example");
    for (proc, port, host) in [(&mut one, 28401, &one_host), (&mut many, 28501, &many_host)] {
        let status = http_get(port, host, "/c")?;
        ensure!(
            status == 200,
            "{} answered {status} for {host}/c; its output:\n{}",
            proc.name,
            proc.log_text()
        );
        wrk(port, 1, Some(host), "/c")?; // warm-up
    }
    let mut result = Scale {
        hosts,
        cpu_us_one: Vec::new(),
        cpu_us_many: Vec::new(),
        rps_one: Vec::new(),
        rps_many: Vec::new(),
        errors: 0,
        start_s: start.as_secs_f64(),
        first_sync_ms,
        rss_one_mib: one.rss_kib() as f64 / 1024.0,
        rss_many_mib: many.rss_kib() as f64 / 1024.0,
        swap_ms: Vec::new(),
        sync_ms: Vec::new(),
    };
    for rep in 0..settings.reps {
        for (case, proc, port, host) in [
            (1, &mut one, 28401, &one_host),
            (hosts, &mut many, 28501, &many_host),
        ] {
            let (run, us) = with_cpu(proc, || wrk(port, settings.run_secs, Some(host), "/c"))?;
            proc.check_alive()?;
            let per_request = us / run.requests.max(1) as f64;
            println!(
                "  [{}] {case:>5} Ingress(es) {:>9.0} req/s  {:>6.2} µs CPU/request  errors {}",
                rep + 1,
                run.rps,
                per_request,
                run.errors
            );
            result.errors += run.errors;
            if case == 1 {
                result.cpu_us_one.push(per_request);
                result.rps_one.push(run.rps);
            } else {
                result.cpu_us_many.push(per_request);
                result.rps_many.push(run.rps);
            }
        }
    }
    print_output(&one);
    drop(one);

    // Reloads: one Ingress in the last file changes its last path (/e <-> /f).
    let last = format!("h{}.bench.example", hosts - 1);
    for round in 0..3 {
        let before = logged_values(&many.log_text(), "synced", "elapsed_ms=").len();
        let changed = round % 2 == 0;
        write_scale_manifests(&many_dir, hosts, changed)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        let log = loop {
            many.check_alive()?;
            let log = many.log_text();
            if logged_values(&log, "synced", "elapsed_ms=").len() > before {
                break log;
            }
            if Instant::now() > deadline {
                bail!("no reload within 120 s of rewriting the manifests; output:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let swap = logged_values(&log, "L7:", "swap_ms=");
        let sync = logged_values(&log, "synced", "elapsed_ms=");
        let read = logged_values(&log, "synced", "read_ms=");
        let (Some(&swap), Some(&sync), Some(&read)) = (swap.last(), sync.last(), read.last())
        else {
            bail!("no swap_ms/elapsed_ms/read_ms in the agent's output:\n{log}");
        };
        let status = http_get(28501, &last, "/f")?;
        let expected = if changed { 200 } else { 404 };
        ensure!(
            status == expected,
            "after the reload {last}/f answered {status}, expected {expected}"
        );
        println!(
            "  reload {}: swap_ms={swap:.2} read_ms={read:.1} elapsed_ms={sync:.1}",
            round + 1
        );
        result.swap_ms.push(swap);
        result.sync_ms.push(read + sync);
    }
    print_output(&many);
    drop(many);
    Ok(result)
}
