//! `xdp-ingress`: the agent binary. Parses the command line and runs the event loop; everything
//! it calls lives in the library.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser as _;
use tokio::signal::unix::{signal, SignalKind};
use xdp_ingress::{
    agent::{describe_plan, L4Agent},
    cli::{Cli, Command, RunArgs, ValidateArgs},
    datapath::{
        loader::{Datapath, KernelMaps, MapSizes},
        sync::DatapathSync,
    },
    source::files::ManifestDir,
    translate::l4,
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
        Command::Run(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(run(args)),
    }
}

fn validate(args: ValidateArgs) -> Result<()> {
    let mut source = ManifestDir::new(&args.manifests);
    let snapshot = source.load()?;
    let (plan, problems) = l4::translate(&snapshot.objects, &l4::L4Plan::default());
    for line in describe_plan(&plan) {
        println!("{line}");
    }
    println!(
        "{} Service port(s), {} backend(s) from {} Service(s) and {} EndpointSlice(s)",
        plan.frontends.len(),
        plan.backend_count(),
        snapshot.objects.services.len(),
        snapshot.objects.endpoint_slices.len()
    );
    let problems: Vec<_> = snapshot.problems.iter().chain(&problems).collect();
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

async fn run(args: RunArgs) -> Result<()> {
    let sizes = MapSizes {
        services: args.max_services,
        backends: args.max_backends,
        maglev_slots: args.maglev_slots,
        flows: args.max_flows,
    };
    let mut datapath = Datapath::load(&sizes)?;
    let maps = datapath.take_maps()?;
    let source = ManifestDir::new(&args.manifests);
    let (changes_tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let _watcher = source.watch(changes_tx)?;
    let mut agent = L4Agent::new(source, DatapathSync::new(maps, sizes.capacity()));
    // Program the maps before attaching, so the first packet already sees every Service.
    reload(&mut agent);
    for interface in &args.interfaces {
        datapath.attach(interface, args.xdp_mode)?;
        tracing::info!(interface, mode = ?args.xdp_mode, "XDP attached");
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
            _ = log_tick.tick() => datapath.flush_logs(),
            _ = terminate.recv() => { tracing::info!("SIGTERM"); break; }
            _ = interrupt.recv() => { tracing::info!("SIGINT"); break; }
        }
    }
    print_counters(&agent);
    datapath.detach_all();
    tracing::info!("detached; exiting");
    Ok(())
}

fn reload(agent: &mut L4Agent<KernelMaps>) {
    match agent.reload() {
        Ok(outcome) => {
            for problem in &outcome.problems {
                tracing::warn!("{problem}");
            }
            for error in &outcome.report.errors {
                tracing::error!("{error}");
            }
            let r = &outcome.report;
            tracing::info!(
                added = r.added,
                changed = r.changed,
                removed = r.removed,
                unchanged = r.unchanged,
                problems = outcome.problems.len(),
                elapsed_ms = outcome.elapsed.as_secs_f64() * 1e3,
                "synced {} Service port(s), {} backend(s)",
                agent.plan().frontends.len(),
                agent.plan().backend_count()
            );
        }
        Err(error) => tracing::error!("{error}; keeping the programmed state"),
    }
}

/// Per-Service and per-backend counters, printed when the agent stops.
fn print_counters(agent: &L4Agent<KernelMaps>) {
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
