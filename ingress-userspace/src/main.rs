//! `xdp-ingress`: the agent binary. Parses the command line and runs the event loop; everything
//! it calls lives in the library.

use anyhow::{Context as _, Result};
use clap::Parser as _;
use tokio::signal::unix::{signal, SignalKind};
use xdp_ingress::{
    cli::{CleanupArgs, Cli, Command, LogFormat, RunArgs, ValidateArgs},
    datapath::PinDir,
    inspect,
    model::Problem,
    proxy::tls,
    runner::Runner,
    sinks::{describe_l7_plan, describe_plan},
    source::files::ManifestDir,
    translate::{l4, l7},
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
        Command::Validate(args) => validate(args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Cleanup(args) => cleanup(&args),
        Command::Run(args) => {
            // Every client and upstream connection is a descriptor; the soft limit (often
            // 1,024) would run out long before the hard one.
            match xdp_ingress::proxy::lifetime::raise_nofile_limit() {
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

fn validate(args: ValidateArgs) -> Result<()> {
    let mut source = ManifestDir::new(&args.manifests).with_max_file_bytes(args.max_manifest_bytes);
    let snapshot = source.load()?;
    let (plan, l4_problems) = l4::translate(&snapshot.objects, &l4::L4Plan::default());
    let l7_options = args.ingress.options()?;
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
    // The certificates the proxy would refuse, parsed by the proxy's own function.
    let certificate_problems: Vec<Problem> = tls::unusable_certificates(
        &l7_plan.tls,
        l7_plan.default_tls.as_ref(),
        &tls::crypto_provider(),
    )
    .into_iter()
    .map(|refused| Problem {
        origin: snapshot
            .objects
            .secrets
            .get(&refused.secret)
            .map_or_else(String::new, |s| s.origin.to_string()),
        object: format!("Secret {}", refused.secret),
        field: "data".to_string(),
        message: format!("the proxy refuses this certificate: {}", refused.message),
    })
    .collect();
    let problems: Vec<_> = snapshot
        .problems
        .iter()
        .chain(&l4_problems)
        .chain(&l7_problems)
        .chain(&certificate_problems)
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

async fn run(args: RunArgs) -> Result<()> {
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
