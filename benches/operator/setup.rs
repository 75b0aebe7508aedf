//! What every benchmark program does before and around its measurements: progress lines, the
//! harness's own log, the CRDs, namespaces, the operator (the controller process and the two
//! in-process agents) up and its Hypervisors Ready, and `main`.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use seapath_operator::api::Hypervisor;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::agents::{AgentRecorder, Agents};
use crate::controller::ControllerProcess;
use crate::testbed::Testbed;
use crate::timeline::{self, Timelines};

/// Reads the command line: `option(arg, value)` handles one option (`value()` takes its
/// argument) and returns false for an unknown one. `--bench` (cargo bench passes it to
/// harness-less targets) is skipped; `--help` prints `usage` and exits.
pub fn parse_args(
    usage: &str,
    mut option: impl FnMut(&str, &mut dyn FnMut() -> anyhow::Result<String>) -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bench" => continue,
            "-h" | "--help" => {
                print!("{usage}");
                std::process::exit(0);
            }
            _ => {}
        }
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value\n\n{usage}"))
        };
        if !option(&arg, &mut value)? {
            anyhow::bail!("unknown argument '{arg}'\n\n{usage}");
        }
    }
    Ok(())
}

pub fn progress(text: impl AsRef<str>) {
    eprintln!("[bench {}] {}", clock(), text.as_ref());
}

fn clock() -> String {
    let now = k8s_openapi::jiff::Timestamp::now();
    now.strftime("%H:%M:%S").to_string()
}

/// Logs of this process (warnings of the agents, kube) go to `bench-agents.log` in `workdir`;
/// with `timelines`, the agents' decisions are timestamped by [`AgentRecorder`] too.
pub fn init_tracing(workdir: &Path, timelines: Option<Timelines>) -> anyhow::Result<()> {
    let file = std::fs::File::create(workdir.join("bench-agents.log"))?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .with_filter(filter),
        )
        .with(timelines.map(|timelines| {
            AgentRecorder { timelines }
                .with_filter(Targets::new().with_target("seapath_operator::agent", tracing::Level::DEBUG))
        }))
        .try_init()?;
    Ok(())
}

async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in seapath_operator::api::all_crds() {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("seapath-bench").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await??;
    }
    Ok(())
}

pub async fn ensure_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn wait_hypervisors(client: &Client, n: usize) -> anyhow::Result<()> {
    let api: Api<Hypervisor> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|hv| {
                hv.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {ready} of {n} Hypervisors Ready after 60 s: read bench-agents.log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The operator as the benchmarks run it.
pub struct Operator {
    /// The harness's watch on VirtualMachines, recording into the timelines.
    pub watch: tokio::task::JoinHandle<()>,
    pub agents: Agents,
    pub controller: ControllerProcess,
}

/// Installs the CRDs, starts the VirtualMachine watch, the two agents and the controller
/// process (log `controller-1.log` in `workdir`, `import_dir` for `path` sources), and waits
/// until both Hypervisors are Ready.
pub async fn start_operator(
    client: &Client,
    tb: &Testbed,
    timelines: &Timelines,
    workdir: &Path,
    import_dir: &Path,
) -> anyhow::Result<Operator> {
    install_crds(client).await?;
    let watch = timeline::start_watch(client.clone(), timelines.clone()).await?;
    let agents = Agents::start(client, tb)?;
    let mut controller = ControllerProcess::spawn(tb, &workdir.join("controller-1.log"), import_dir)?;
    controller.wait_http().await?;
    wait_hypervisors(client, 2).await?;
    Ok(Operator {
        watch,
        agents,
        controller,
    })
}

/// The `main` of a benchmark program: parses its options (exit code 2 on a bad one), runs it on
/// a tokio runtime, prints the error chain of a failure.
pub fn main_with<O, F>(
    parse: impl FnOnce() -> anyhow::Result<O>,
    run: impl FnOnce(O) -> F,
) -> std::process::ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting tokio: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(opts)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
