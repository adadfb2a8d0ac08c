//! `xdp-ingress`: the agent binary. Parses the command line and runs the event loop; everything
//! it calls lives in the library.

use anyhow::{Context as _, Result};
use clap::Parser as _;
use tokio::signal::unix::{signal, SignalKind};
use xdp_ingress::{
    cli::{CleanupArgs, Cli, Command, LogFormat, MigrateReportArgs, RunArgs, ValidateArgs},
    datapath::PinDir,
    inspect,
    runner::Runner,
};

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log_level))
        .context("--log-level")?;
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => {
            // Colours only for a person at a terminal; logs read by tools stay plain text.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            subscriber.with_ansi(ansi).init();
        }
        // One JSON object per line, the event's fields under "fields"; no colour codes.
        LogFormat::Json => subscriber.json().with_ansi(false).init(),
    }
    match cli.command {
        Command::Validate(args) => validate(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Cleanup(args) => cleanup(&args),
        Command::MigrateReport(args) => migrate_report(&args),
        Command::Run(args) => {
            // Every client and upstream connection is a descriptor; the soft limit (often
            // 1,024) would run out long before the hard one.
            match xdp_ingress::proxy::raise_nofile_limit() {
                Ok((before, after)) if before != after => {
                    tracing::info!(before, after, "raised the open-file limit (RLIMIT_NOFILE)");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
            }
            // One worker: a current-thread runtime, which spares every wake-up the cross-thread
            // hand-off of the work-stealing scheduler (a proxy pinned to one core, an edge box).
            let mut runtime = match args.proxy.workers {
                Some(1) => tokio::runtime::Builder::new_current_thread(),
                Some(workers) => {
                    let mut builder = tokio::runtime::Builder::new_multi_thread();
                    builder.worker_threads(workers.max(1));
                    builder
                }
                None => tokio::runtime::Builder::new_multi_thread(),
            };
            runtime
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(run(*args))
        }
    }
}

fn validate(args: &ValidateArgs) -> Result<()> {
    let validation = xdp_ingress::validate::validate(args)?;
    for line in &validation.lines {
        println!("{line}");
    }
    for problem in &validation.problems {
        eprintln!("{}: {problem}", problem.severity);
    }
    let failing = validation.failing(args.strict);
    if failing == 0 {
        return Ok(());
    }
    anyhow::bail!(
        "{failing} {} in {}",
        if args.strict {
            "problem(s)"
        } else {
            "error(s)"
        },
        args.manifests.display()
    )
}

fn migrate_report(args: &MigrateReportArgs) -> Result<()> {
    let report = xdp_ingress::migrate_report::report_dir(
        &args.manifests,
        &args.class,
        args.max_manifest_bytes,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

fn cleanup(args: &CleanupArgs) -> Result<()> {
    let pins = PinDir::new(&args.bpffs);
    let interfaces = pins.pinned_interfaces();
    let removed = pins.remove_all()?;
    for interface in &interfaces {
        println!("detached XDP from {interface}");
    }
    println!(
        "removed {} pin(s) under {}",
        removed.len(),
        args.bpffs.display()
    );
    Ok(())
}

async fn run(mut args: RunArgs) -> Result<()> {
    args.datapath.interfaces = xdp_ingress::node::resolve_interfaces(&args.datapath.interfaces)?;
    if !args.datapath.interfaces.is_empty() {
        tracing::info!(interfaces = ?args.datapath.interfaces, "XDP interfaces");
    }
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut runner = Runner::new(args).await?;
    tokio::select! {
        started = runner.start() => started?,
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    }
    runner
        .run(async {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM"),
                _ = interrupt.recv() => tracing::info!("SIGINT"),
            }
        })
        .await;
    tracing::info!("exiting");
    Ok(())
}
