//! `xdp-ingress`: the agent binary. Parses the command line and runs the event loop; everything
//! it calls lives in the library.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser as _;
use tokio::signal::unix::{signal, SignalKind};
use xdp_ingress::{
    agent::{describe_l7_plan, describe_plan, Agent, L4Sink, L7Sink},
    cli::{Cli, Command, RunArgs, ValidateArgs},
    datapath::{
        loader::{Datapath, KernelMaps, MapSizes},
        sync::DatapathSync,
    },
    model::ObjectName,
    proxy::{Proxy, ProxySettings},
    source::files::ManifestDir,
    translate::{
        l4,
        l7::{self, L7Options},
    },
};

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log_level))
        .context("--log-level")?;
    // Colours only for a person at a terminal; logs read by tools stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .init();
    match cli.command {
        Command::Validate(args) => validate(args),
        Command::Run(args) => {
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            if let Some(workers) = args.workers {
                runtime.worker_threads(workers.max(1));
            }
            runtime
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(run(*args))
        }
    }
}

fn validate(args: ValidateArgs) -> Result<()> {
    let mut source = ManifestDir::new(&args.manifests);
    let snapshot = source.load()?;
    let (plan, l4_problems) = l4::translate(&snapshot.objects, &l4::L4Plan::default());
    let l7_options = l7_options(&args.controller_name, args.default_tls_secret.as_deref())?;
    let (l7_plan, l7_problems) = l7::translate(&snapshot.objects, &l7_options);
    for line in describe_plan(&plan)
        .into_iter()
        .chain(describe_l7_plan(&l7_plan))
    {
        println!("{line}");
    }
    println!(
        "{} Service port(s), {} backend(s) from {} Service(s) and {} EndpointSlice(s); \
         {} Ingress(es) ours, {} L7 backend(s)",
        plan.frontends.len(),
        plan.backend_count(),
        snapshot.objects.services.len(),
        snapshot.objects.endpoint_slices.len(),
        l7_plan.ingresses.len(),
        l7_plan.backends.len(),
    );
    let problems: Vec<_> = snapshot
        .problems
        .iter()
        .chain(&l4_problems)
        .chain(&l7_problems)
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    for problem in &problems {
        eprintln!("error: {problem}");
    }
    anyhow::bail!(
        "{} problem(s) in {}",
        problems.len(),
        args.manifests.display()
    )
}

fn l7_options(controller_name: &str, default_tls_secret: Option<&str>) -> Result<L7Options> {
    let default_tls_secret = default_tls_secret
        .map(|text| match text.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
                Ok(ObjectName {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })
            }
            _ => anyhow::bail!("--default-tls-secret {text:?}: expected namespace/name"),
        })
        .transpose()?;
    Ok(L7Options {
        controller_name: controller_name.to_string(),
        default_tls_secret,
    })
}

async fn run(args: RunArgs) -> Result<()> {
    let source = ManifestDir::new(&args.manifests);
    let (changes_tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let _watcher = source.watch(changes_tx)?;

    let mut datapath = None;
    let l4 = if args.interfaces.is_empty() {
        None
    } else {
        let sizes = MapSizes {
            services: args.max_services,
            backends: args.max_backends,
            maglev_slots: args.maglev_slots,
            flows: args.max_flows,
        };
        let mut loaded = Datapath::load(&sizes)?;
        let maps = loaded.take_maps()?;
        datapath = Some(loaded);
        Some(L4Sink::new(DatapathSync::new(maps, sizes.capacity())))
    };
    let settings = ProxySettings {
        http_listen: args.http_listen.0,
        https_listen: args.https_listen.0,
        upstream_connect_timeout: args.upstream_connect_timeout,
        upstream_response_timeout: args.upstream_response_timeout,
        upstream_idle_timeout: args.upstream_idle_timeout,
        client_header_timeout: args.client_header_timeout,
        client_idle_timeout: args.client_idle_timeout,

        max_header_bytes: args.max_header_bytes,
        max_body_bytes: args.max_body_bytes,
        access_log: args.access_log,
    };
    let l7 = if settings.http_listen.is_none() && settings.https_listen.is_none() {
        None
    } else {
        let options = l7_options(&args.controller_name, args.default_tls_secret.as_deref())?;
        Some(L7Sink::new(Proxy::new(settings)?, options))
    };
    let mut agent = Agent::new(source, l4, l7);
    // Program the maps and the routing table before attaching and listening, so the first
    // packet and the first request already see every object.
    reload(&mut agent);
    if let Some(datapath) = datapath.as_mut() {
        for interface in &args.interfaces {
            datapath.attach(interface, args.xdp_mode)?;
            tracing::info!(interface, mode = ?args.xdp_mode, "XDP attached");
        }
    }
    if let Some(l7) = agent.l7() {
        let bound = l7.proxy().listen().await?;
        if let Some(addr) = bound.http {
            tracing::info!(%addr, "HTTP listening");
        }
        if let Some(addr) = bound.https {
            tracing::info!(%addr, "HTTPS listening");
        }
    }
    tracing::info!(manifests = %args.manifests.display(), "running");

    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut log_tick = tokio::time::interval(Duration::from_millis(500));
    let debounce = Duration::from_millis(args.debounce_ms);
    loop {
        tokio::select! {
            Some(()) = changes.recv() => {
                // Let a burst of writes (an editor saving, a tool rewriting several files) settle.
                while let Ok(Some(())) = tokio::time::timeout(debounce, changes.recv()).await {}
                reload(&mut agent);
            }
            _ = log_tick.tick() => {
                if let Some(datapath) = datapath.as_mut() {
                    datapath.flush_logs();
                }
            }
            _ = terminate.recv() => { tracing::info!("SIGTERM"); break; }
            _ = interrupt.recv() => { tracing::info!("SIGINT"); break; }
        }
    }
    if let (Some(l4), Some(datapath)) = (agent.l4(), datapath.as_mut()) {
        print_counters(l4);
        datapath.detach_all();
        tracing::info!("detached");
    }
    tracing::info!("exiting");
    Ok(())
}

fn reload(agent: &mut Agent<KernelMaps>) {
    let outcome = match agent.reload() {
        Ok(outcome) => outcome,
        Err(error) => {
            tracing::error!("{error}; keeping the programmed state");
            return;
        }
    };
    for problem in &outcome.problems {
        tracing::warn!("{problem}");
    }
    if let (Some(r), Some(l4)) = (&outcome.l4, agent.l4()) {
        for error in &r.errors {
            tracing::error!("{error}");
        }
        tracing::info!(
            added = r.added,
            changed = r.changed,
            removed = r.removed,
            unchanged = r.unchanged,
            "L4: {} Service port(s), {} backend(s)",
            l4.plan().frontends.len(),
            l4.plan().backend_count()
        );
    }
    if let (Some(r), Some(l7)) = (&outcome.l7, agent.l7()) {
        for problem in &r.certificate_problems {
            tracing::warn!(secret = %problem.secret, "certificate: {}", problem.message);
        }
        tracing::info!(
            backends = r.backends,
            rebuild_ms = outcome.l7_rebuild.as_secs_f64() * 1e3,
            swap_ms = r.elapsed.as_secs_f64() * 1e3,
            "L7: {} Ingress(es), {} certificate entr(ies)",
            l7.plan().ingresses.len(),
            l7.plan().tls.len()
        );
    }
    tracing::info!(
        problems = outcome.problems.len(),
        elapsed_ms = outcome.elapsed.as_secs_f64() * 1e3,
        "synced"
    );
}

/// Per-Service and per-backend counters, printed when the agent stops.
fn print_counters(agent: &L4Sink<KernelMaps>) {
    let maps = agent.sync().maps();
    println!(
        "{:<24} {:<28} {:>10} {:>12} {:>9} {:>10}",
        "FRONTEND", "SERVICE", "PACKETS", "BYTES", "FLOWS", "NO-BACKEND"
    );
    for (frontend, programmed) in agent.sync().frontends() {
        let Ok(c) = maps.service_counters(programmed.service_id) else {
            continue;
        };
        println!(
            "{:<24} {:<28} {:>10} {:>12} {:>9} {:>10}",
            frontend.to_string(),
            programmed.plan.service.to_string(),
            c.packets,
            c.bytes,
            c.new_flows,
            c.no_backend
        );
        for (backend, id) in &programmed.backends {
            if let Ok(b) = maps.backend_counters(*id) {
                println!(
                    "    -> {:<24} {:>10} packets {:>12} bytes",
                    backend.to_string(),
                    b.packets,
                    b.bytes
                );
            }
        }
    }
    if let Ok(reasons) = maps.reason_counters() {
        let line: Vec<String> = reasons
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{}={n}", r.name()))
            .collect();
        println!("verdicts: {}", line.join(" "));
    }
}
