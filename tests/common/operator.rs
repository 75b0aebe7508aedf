//! Runs the operator in the test process: one controller and two agents on test-driver node
//! files, started once per test binary on a runtime of their own (every test has its own
//! runtime, which ends with the test).
#![allow(dead_code)]

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use seapath_operator::agent::{self, AgentConfig, CephConfig};
use seapath_operator::controller::context::PolicyConfig;
use seapath_operator::controller::hypervisor::FencingSettings;
use seapath_operator::controller::run::{self, ControllerConfig};
use seapath_operator::metrics::Metrics;
use seapath_operator::naming::{NamespaceMap, SharedImageNamespaces};

use super::testbed_env;

/// The running operator of this test binary.
pub struct Operator {
    /// Names of the simulated hypervisors; unique per test binary so leftovers of another
    /// binary's agents never take its VMs.
    pub nodes: [String; 2],
    pub metrics: Metrics,
    controller: Mutex<Controller>,
}

/// The controller, on a runtime of its own so that killing it stops every task it spawned.
struct Controller {
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    config: ControllerConfig,
    metrics: Metrics,
}

impl Controller {
    fn start(config: ControllerConfig, metrics: Metrics) -> Self {
        let (kill, killed) = tokio::sync::oneshot::channel();
        let (run_config, run_metrics) = (config.clone(), metrics.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("controller runtime");
            runtime.block_on(async move {
                let client = kube::Client::try_default()
                    .await
                    .expect("kube client for the controller");
                tokio::select! {
                    result = run::run(client, run_config, run_metrics, std::future::pending()) => {
                        if let Err(err) = result {
                            panic!("controller stopped: {err}");
                        }
                    }
                    _ = killed => {}
                }
            });
            // Every task of the controller stops at its next await, nothing cleaned up.
            runtime.shutdown_background();
        });
        Controller {
            kill: Some(kill),
            thread: Some(thread),
            config,
            metrics,
        }
    }

    fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            kill.send(()).ok();
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the controller's thread");
        }
    }
}

impl Operator {
    /// Kills the controller wherever it is (every task of its runtime dropped at its next
    /// await, nothing finished nor cleaned up, as in a killed process), and `down_for` later
    /// starts a new one, which takes the controller guard from the dead one as a restarted pod
    /// would.
    pub async fn kill_controller(&self, down_for: Duration) {
        let (config, metrics) = {
            let mut controller = self.controller.lock().unwrap();
            controller.kill();
            (controller.config.clone(), controller.metrics.clone())
        };
        tokio::time::sleep(down_for).await;
        *self.controller.lock().unwrap() = Controller::start(config, metrics);
    }
}

static OPERATOR: OnceLock<Operator> = OnceLock::new();

/// Namespaces in which the test operator allows host paths in base XML.
pub const HOST_PATHS_NAMESPACE: &str = "lifecycle-hostpaths";

/// The RBD namespace the test operator shares with every tenant as a source of images.
pub const SHARED_IMAGE_NAMESPACE: &str = "shared-images";

/// The Ceph user a role of the operator runs as in the test bed (`role`: `CONTROLLER` or
/// `AGENT`): its id `SEAPATH_CEPH_<ROLE>_ID` and, as librados options, its own keyring
/// `SEAPATH_CEPH_<ROLE>_KEYRING`, so the suite exercises the least caps of
/// docs/operations.md ("Ceph users"). A test bed older than those users has neither: its
/// `SEAPATH_CEPH_CLIENT` (admin) then.
pub fn role_ceph_user(role: &str) -> (String, Vec<(String, String)>) {
    let var = |what: &str| {
        std::env::var(format!("SEAPATH_CEPH_{role}_{what}"))
            .ok()
            .filter(|v| !v.is_empty())
    };
    match (var("ID"), var("KEYRING")) {
        (Some(id), Some(keyring)) => (id, vec![("keyring".to_owned(), keyring)]),
        _ => {
            eprintln!("SEAPATH_CEPH_{role}_ID/_KEYRING not set: the {role} runs as SEAPATH_CEPH_CLIENT");
            (
                std::env::var("SEAPATH_CEPH_CLIENT").unwrap_or_else(|_| "admin".into()),
                Vec::new(),
            )
        }
    }
}

/// The directory the test operator imports `path` disk sources from.
pub fn import_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join("seapath-test-imports");
    std::fs::create_dir_all(&dir).expect("creating the import directory");
    dir
}

fn node_files() -> Vec<String> {
    testbed_env("SEAPATH_LIBVIRT_NODES")
        .split(',')
        .map(|entry| {
            entry
                .split_once('=')
                .expect("SEAPATH_LIBVIRT_NODES entries are NAME=URI")
                .1
                .to_owned()
        })
        .collect()
}

/// What a test binary may change in the operator it runs.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Run the snapshot, restore and schedule controllers in the controller too.
    pub snapshots: bool,
    /// librados options of the controller (after its own, so they override them).
    pub ceph_options: Vec<(String, String)>,
    /// Fencing settings of the controller (default: 8 s grace, one hour blocklist).
    pub fencing: Option<FencingSettings>,
    /// Start the controller only: the test binary runs (and kills) agents itself.
    pub without_agents: bool,
    /// Kubernetes namespace -> RBD namespace mapping of the controller (agents must share it).
    pub namespace_map: NamespaceMap,
    /// The libvirt secret the controller names in RBD disks (cephx; agents must define it).
    pub libvirt_auth: Option<seapath_operator::domain_xml::CephAuthRef>,
}

/// Starts the controller and two agents the first time it is called.
pub fn operator(prefix: &str) -> &'static Operator {
    operator_with(prefix, Options::default())
}

/// [`operator`] with options (those of the first call of the binary apply).
pub fn operator_with(prefix: &str, options: Options) -> &'static Operator {
    OPERATOR.get_or_init(|| {
        let ceph_conf = testbed_env("CEPH_CONF");
        let pool = testbed_env("SEAPATH_CEPH_POOL");
        let (controller_id, mut controller_options) = role_ceph_user("CONTROLLER");
        controller_options.extend(options.ceph_options.iter().cloned());
        let (agent_id, agent_options) = role_ceph_user("AGENT");
        let uris = node_files();
        assert!(
            uris.len() >= 2,
            "the test bed needs two simulated hypervisors (hack/testbed.sh up --hypervisors 2)"
        );
        let nodes = [format!("{prefix}-hv1"), format!("{prefix}-hv2")];
        let metrics = Metrics::new();
        let controller_config = ControllerConfig {
            ceph_conf: ceph_conf.clone().into(),
            ceph_client: controller_id,
            ceph_options: controller_options,
            pool: pool.clone(),
            namespace_map: options.namespace_map.clone(),
            policy: PolicyConfig {
                host_paths: [HOST_PATHS_NAMESPACE.to_string()].into(),
                ..Default::default()
            },
            libvirt_auth: options.libvirt_auth.clone(),
            concurrency: 16,
            storage_recheck: Duration::from_secs(300),
            fencing: options.fencing.clone().unwrap_or(FencingSettings {
                grace: Duration::from_secs(8),
                blocklist_expiry: Duration::from_secs(3600),
                power_fence_command: None,
            }),
            resync: Duration::from_secs(300),
            import_dirs: vec![import_dir()],
            shared_image_namespaces: SharedImageNamespaces::parse(SHARED_IMAGE_NAMESPACE).unwrap(),
            // Tests of snapshots mostly start those controllers themselves, at the moment they
            // choose.
            snapshots: options.snapshots,
            unmanaged_snapshot_refresh: seapath_operator::controller::snapshot::inventory::DEFAULT_REFRESH,
            drain_parallel: seapath_operator::controller::drain::DEFAULT_PARALLEL,
            instance: format!("{prefix}-controller"),
            // One per test binary: binaries run one at a time in CI, but a developer may run
            // two at once against the same test bed.
            guard_object: format!("seapath-test-guard.{prefix}"),
        };
        let agents: Vec<AgentConfig> = nodes
            .iter()
            .zip(&uris)
            .map(|(node, uri)| {
                let mut ceph = CephConfig::new(&ceph_conf, &agent_id, &pool);
                ceph.options = agent_options.clone();
                let mut config = AgentConfig::new(node, uri, ceph);
                config.heartbeat_interval = Duration::from_secs(2);
                config.resync_period = Duration::from_secs(10);
                config.restart_backoff_base = Duration::from_secs(1);
                config.restart_backoff_max = Duration::from_secs(4);
                config
            })
            .collect();
        let agent_nodes = nodes.clone();
        let (forgotten, others_forgotten) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("agents' runtime");
            runtime.block_on(async move {
                let client = kube::Client::try_default()
                    .await
                    .expect("kube client for the agents");
                forget_other_hypervisors(&client, &agent_nodes).await;
                forgotten.send(()).expect("the controller waits for it");
                for config in agents.into_iter().filter(|_| !options.without_agents) {
                    let client = client.clone();
                    tokio::spawn(async move {
                        if let Err(err) = agent::run(client, config, std::future::pending()).await {
                            panic!("agent stopped: {err}");
                        }
                    });
                }
                std::future::pending::<()>().await;
            });
        });
        seapath_operator::telemetry::init(seapath_operator::telemetry::LogFormat::Pretty);
        // The controller must not place VMs on another binary's Hypervisor objects.
        others_forgotten.recv().expect("the agents' runtime started");
        let controller = Mutex::new(Controller::start(controller_config, metrics.clone()));
        Operator {
            nodes,
            metrics,
            controller,
        }
    })
}

/// Hypervisor objects left by the agents of an earlier test binary look Ready until their
/// heartbeat times out; this binary's controller must not place VMs there.
async fn forget_other_hypervisors(client: &kube::Client, ours: &[String; 2]) {
    use kube::ResourceExt;
    let hypervisors: kube::Api<seapath_operator::api::Hypervisor> = kube::Api::all(client.clone());
    let list = hypervisors
        .list(&Default::default())
        .await
        .expect("listing hypervisors");
    for hv in list.items.iter().filter(|hv| !ours.contains(&hv.name_any())) {
        hypervisors.delete(&hv.name_any(), &Default::default()).await.ok();
    }
}
