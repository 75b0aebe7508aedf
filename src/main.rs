use std::process::ExitCode;

use clap::Parser;
use seapath_operator::cli::{AgentArgs, Cli, Command, CommonArgs, ControllerArgs, kube_client};
use seapath_operator::http::{HttpState, Readiness};
use seapath_operator::metrics::Metrics;
use seapath_operator::{controller, crdgen, telemetry};
use tokio::sync::watch;

/// Resolves on SIGINT or SIGTERM (what Kubernetes sends on Pod termination).
async fn termination_signal() {
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = sigterm.recv() => {},
    }
}

/// A shutdown signal that any number of tasks can wait on.
fn shutdown_channel() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        termination_signal().await;
        let _ = tx.send(true);
    });
    rx
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn serve_http(
    common: &CommonArgs,
    metrics: Metrics,
    ready: Readiness,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(common.http_addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the metrics/health address {}: {e}", common.http_addr))?;
    tokio::spawn(seapath_operator::http::serve(
        listener,
        HttpState { metrics, ready },
        wait_for(stop),
    ));
    Ok(())
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    telemetry::init(args.common.log_format);
    let client = kube_client(args.common.kubeconfig.as_ref()).await?;
    let metrics = Metrics::new();
    let ready = Readiness::new();
    let stop = shutdown_channel();
    serve_http(&args.common, metrics.clone(), ready.clone(), stop.clone()).await?;
    let config = args.config();
    ready.set_ready(true, "running");
    if args.leader_election {
        let leader = seapath_operator::leader::LeaderConfig::new(
            args.lease_namespace.clone(),
            "seapath-controller",
            args.identity(),
        );
        let work = {
            let client = client.clone();
            move |leader_stop: seapath_operator::leader::StopSignal| {
                let (client, config, metrics) = (client.clone(), config.clone(), metrics.clone());
                async move {
                    if let Err(err) =
                        controller::run::run(client, config, metrics, leader_stop.stopped()).await
                    {
                        tracing::error!(error = %err, "controller failed");
                        std::process::exit(1);
                    }
                }
            }
        };
        seapath_operator::leader::run_as_leader(client.clone(), leader, work, wait_for(stop)).await?;
    } else {
        controller::run::run(client, config, metrics, wait_for(stop)).await?;
    }
    Ok(())
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    telemetry::init(args.common.log_format);
    let client = kube_client(args.common.kubeconfig.as_ref()).await?;
    let ready = Readiness::new();
    let stop = shutdown_channel();
    let config = args.config();
    serve_http(&args.common, config.metrics.clone(), ready.clone(), stop.clone()).await?;
    ready.set_ready(true, "running");
    seapath_operator::agent::run(client, config, wait_for(stop)).await?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Crdgen {
            out_dir: Some(dir),
            check: true,
        } => crdgen::check(&dir).map_err(Into::into),
        Command::Crdgen {
            out_dir: Some(dir),
            check: false,
        } => crdgen::write_all(&dir).map_err(Into::into),
        Command::Crdgen { out_dir: None, .. } => crdgen::render_all()
            .map(|yaml| print!("{yaml}"))
            .map_err(Into::into),
        Command::Controller(args) => tokio_main(run_controller(args)),
        Command::Agent(args) => tokio_main(run_agent(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn tokio_main(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(fut)
}
