//! The Helm chart in tests: rendering it with helm, applying its RBAC objects to the test bed,
//! ServiceAccount kubeconfigs, and the operator's binaries run under exactly the chart's roles.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

use super::testbed_env;

pub const CHART: &str = "charts/seapath-operator";
/// The test bed's Kubernetes version (hack/lib/common.sh), for offline rendering.
pub const KUBE_VERSION: &str = "1.36.3";

/// Path of a file of the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// helm, as `hack/chart.sh tools` installs it (or $SEAPATH_HELM).
pub fn helm() -> PathBuf {
    let path = match std::env::var("SEAPATH_HELM") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            let cache = std::env::var("SEAPATH_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    let base = std::env::var("XDG_CACHE_HOME")
                        .map(PathBuf::from)
                        .unwrap_or_else(|_| {
                            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache")
                        });
                    base.join("seapath-operator")
                });
            cache.join("helm/v3.19.0/helm")
        }
    };
    assert!(
        path.is_file(),
        "helm is not installed at {}: run hack/chart.sh tools (hack/test.sh does)",
        path.display()
    );
    path
}

/// kubectl of the test bed.
pub fn kubectl() -> String {
    testbed_env("SEAPATH_KUBECTL")
}

/// Runs a command, panics with its output when it fails, returns its stdout.
pub fn run(command: &mut Command, stdin: Option<&str>) -> String {
    let output = run_status(command, stdin);
    assert!(
        output.0,
        "{command:?} failed:\nstdout:\n{}\nstderr:\n{}",
        output.1, output.2
    );
    output.1
}

/// Runs a command: (success, stdout, stderr).
pub fn run_status(command: &mut Command, stdin: Option<&str>) -> (bool, String, String) {
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("writing stdin");
    }
    let output = child.wait_with_output().expect("waiting for the command");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `helm template RELEASE charts/seapath-operator --namespace NS ARGS...`.
pub fn render(release: &str, namespace: &str, args: &[&str]) -> String {
    let mut command = Command::new(helm());
    command
        .args([
            "template",
            release,
            CHART,
            "--namespace",
            namespace,
            "--kube-version",
            KUBE_VERSION,
        ])
        .args(args);
    run(&mut command, None)
}

/// The documents of a YAML stream, as JSON values (empty documents dropped).
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| {
            let value = <Value as serde::Deserialize>::deserialize(doc).expect("a YAML document");
            (!value.is_null()).then_some(value)
        })
        .collect()
}

pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// Kinds that make up the operator's identity and permissions.
const ACCESS_KINDS: [&str; 7] = [
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// Applies (server-side, as the admin) the chart's ServiceAccounts, roles, bindings and
/// admission policies for `release` in `namespace`; the workloads are not applied (the test
/// bed has no kubelet). Returns the rendered documents.
pub fn apply_access_objects(release: &str, namespace: &str) -> Vec<Value> {
    let docs = documents(&render(release, namespace, &[]));
    let access: Vec<&Value> = docs
        .iter()
        .filter(|d| ACCESS_KINDS.contains(&d["kind"].as_str().unwrap_or("")))
        .collect();
    let stream: String = access
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).expect("YAML")))
        .collect();
    run(
        Command::new(kubectl()).args([
            "apply",
            "--server-side",
            "--field-manager",
            "seapath-tests",
            "-f",
            "-",
        ]),
        Some(&stream),
    );
    docs
}

/// A kubeconfig for a ServiceAccount: the test bed's operator kubeconfig (server, CA) with a
/// fresh token of `namespace/name`, bound to nothing.
pub async fn service_account_kubeconfig(admin: &Client, namespace: &str, name: &str, dir: &Path) -> PathBuf {
    let token = request_token(admin, namespace, name, None).await;
    token_kubeconfig(namespace, name, &token, &format!("{namespace}-{name}"), dir)
}

/// A kubeconfig for the agent ServiceAccount `namespace/name` as the agent of `node` has it:
/// the token of a Pod of that ServiceAccount bound to the Node `node` (both made here; the Pod
/// never runs, the test bed has no kubelet). The API server puts the node's name into the user
/// info of such a token, which the chart's admission policies confine the agent to.
pub async fn node_agent_kubeconfig(
    admin: &Client,
    namespace: &str,
    name: &str,
    node: &str,
    dir: &Path,
) -> PathBuf {
    ensure_node(admin, node).await;
    let pod = agent_pod(admin, namespace, name, node).await;
    let bound = BoundObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
    };
    let token = request_token(admin, namespace, name, Some(bound)).await;
    token_kubeconfig(
        namespace,
        name,
        &token,
        &format!("{namespace}-{name}-{node}"),
        dir,
    )
}

/// A Node object named `node` (no kubelet behind it), made unless it exists.
async fn ensure_node(admin: &Client, node: &str) {
    let nodes: Api<Node> = Api::all(admin.clone());
    let object: Node = serde_json::from_value(serde_json::json!({"metadata": {"name": node}})).unwrap();
    match nodes.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("creating Node {node}: {e}"),
    }
}

/// A Pod of ServiceAccount `account` bound to `node`, as the agent DaemonSet makes one.
async fn agent_pod(admin: &Client, namespace: &str, account: &str, node: &str) -> Pod {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("agent-{node}")},
        "spec": {
            "nodeName": node,
            "serviceAccountName": account,
            "containers": [{"name": "agent", "image": "seapath-operator:never-pulled"}],
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating the agent Pod of {node} in {namespace}: {e}"))
}

/// A token of ServiceAccount `namespace/name` through the TokenRequest API, bound to `bound`.
async fn request_token(
    admin: &Client,
    namespace: &str,
    name: &str,
    bound: Option<BoundObjectReference>,
) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(7200),
            bound_object_ref: bound,
            ..Default::default()
        }),
        ..Default::default()
    };
    accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("token for {namespace}/{name}: {e}"))
        .status
        .and_then(|s| s.token)
        .expect("token in the TokenRequest status")
}

/// The test bed's operator kubeconfig (server, CA) with `token` of `namespace/name`, written to
/// `<file_stem>.kubeconfig` in `dir`.
fn token_kubeconfig(namespace: &str, name: &str, token: &str, file_stem: &str, dir: &Path) -> PathBuf {
    let template =
        std::fs::read_to_string(testbed_env("SEAPATH_OPERATOR_KUBECONFIG")).expect("operator kubeconfig");
    let mut kubeconfig: serde_yaml::Value = serde_yaml::from_str(&template).expect("kubeconfig YAML");
    let user = format!("system:serviceaccount:{namespace}:{name}");
    kubeconfig["users"][0]["name"] = user.clone().into();
    kubeconfig["users"][0]["user"]["token"] = token.into();
    kubeconfig["contexts"][0]["context"]["user"] = user.clone().into();
    kubeconfig["contexts"][0]["context"]["namespace"] = namespace.into();
    let path = dir.join(format!("{file_stem}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).expect("YAML")).expect("writing kubeconfig");
    path
}

/// A client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("reading kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Client::try_from(config).expect("client")
}

/// The operator's binary, run as a child process; killed (by its PID) when dropped.
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The controller (with leader election) and two agents of one chart release, each run from
/// the `seapath-operator` binary with the kubeconfig of its ServiceAccount.
pub struct ChartOperator {
    pub release: String,
    pub namespace: String,
    pub nodes: [String; 2],
    pub controller_kubeconfig: PathBuf,
    /// One per node: each agent runs with the token of its own Pod (see
    /// [`node_agent_kubeconfig`]).
    pub agent_kubeconfigs: [PathBuf; 2],
    pub processes: Vec<Process>,
    pub docs: Vec<Value>,
    pub dir: tempfile::TempDir,
}

/// Name prefix of everything a test binary makes for its release (`<prefix><6 hex>`).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..6])
}

/// The operator's binary as every test runs it: JSON logs at info into `log`, and none of the
/// developer's own operator settings from the environment.
pub fn operator_command<S: AsRef<std::ffi::OsStr>>(args: &[S], log: std::fs::File) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_seapath-operator"));
    command
        .args(args)
        .env("SEAPATH_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1")
        .env_remove("SEAPATH_LIBVIRT_SECRET_UUID")
        .env_remove("SEAPATH_CEPH_LIBVIRT_KEY")
        .env_remove("SEAPATH_RBD_NAMESPACE_MAP")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    command
}

fn spawn(name: &str, dir: &Path, kubeconfig: &Path, args: &[&str], env: &[(&str, String)]) -> Process {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let mut command = operator_command(args, file);
    command
        .env("KUBECONFIG", kubeconfig)
        .env("CEPH_CONF", testbed_env("CEPH_CONF"))
        .env("SEAPATH_CEPH_POOL", testbed_env("SEAPATH_CEPH_POOL"));
    for (key, value) in env {
        command.env(key, value);
    }
    // Each role as its own Ceph user, with its own keyring, as the chart's Secrets give them.
    let role = if args.first() == Some(&"agent") {
        "AGENT"
    } else {
        "CONTROLLER"
    };
    let (client_id, options) = super::operator::role_ceph_user(role);
    command.env("SEAPATH_CEPH_CLIENT", client_id);
    for (_, keyring) in options.iter().filter(|(key, _)| key == "keyring") {
        command.env("SEAPATH_CEPH_KEYRING", keyring);
    }
    let child = command.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Process {
        name: name.to_owned(),
        child,
        log,
    }
}

impl ChartOperator {
    /// Applies the chart's access objects for a fresh release in a fresh namespace and starts
    /// the controller and two agents (simulated hypervisors `<release>-hv1`, `-hv2`).
    pub async fn start(admin: &Client, prefix: &str) -> Self {
        let release = unique(prefix);
        let namespace = super::fresh_namespace(admin, &format!("{release}-system")).await;
        let docs = apply_access_objects(&release, &namespace);
        let dir = tempfile::tempdir().expect("temp dir");
        let fullname = format!("{release}-seapath-operator");
        let controller_kubeconfig =
            service_account_kubeconfig(admin, &namespace, &format!("{fullname}-controller"), dir.path())
                .await;
        // Policies are loaded by the API server asynchronously.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let uris: Vec<String> = testbed_env("SEAPATH_LIBVIRT_NODES")
            .split(',')
            .map(|e| e.split_once('=').expect("NAME=URI").1.to_owned())
            .collect();
        assert!(uris.len() >= 2, "the test bed needs two simulated hypervisors");
        let nodes = [format!("{release}-hv1"), format!("{release}-hv2")];
        let agent_account = format!("{fullname}-agent");
        let agent_kubeconfigs = [
            node_agent_kubeconfig(admin, &namespace, &agent_account, &nodes[0], dir.path()).await,
            node_agent_kubeconfig(admin, &namespace, &agent_account, &nodes[1], dir.path()).await,
        ];
        // Hypervisors left by earlier test binaries have no agent any more: this controller
        // would judge them lost and fail their VMs over onto this binary's hosts.
        let hypervisors: kube::Api<seapath_operator::api::Hypervisor> = kube::Api::all(admin.clone());
        for hv in hypervisors
            .list(&Default::default())
            .await
            .expect("listing hypervisors")
        {
            let name = kube::ResourceExt::name_any(&hv);
            hypervisors.delete(&name, &Default::default()).await.ok();
        }
        let mut processes = vec![spawn(
            "controller",
            dir.path(),
            &controller_kubeconfig,
            &["controller", "--leader-election", "--http-addr", "127.0.0.1:0"],
            &[
                ("POD_NAMESPACE", namespace.clone()),
                ("POD_NAME", format!("{release}-controller-0")),
                ("SEAPATH_NODE_LOST_GRACE", "20".into()),
            ],
        )];
        for ((node, uri), kubeconfig) in nodes.iter().zip(&uris).zip(&agent_kubeconfigs) {
            processes.push(spawn(
                &format!("agent-{node}"),
                dir.path(),
                kubeconfig,
                &[
                    "agent",
                    "--node",
                    node,
                    "--libvirt-uri",
                    uri,
                    "--http-addr",
                    "127.0.0.1:0",
                ],
                &[
                    ("SEAPATH_HEARTBEAT_INTERVAL", "2".into()),
                    ("SEAPATH_AGENT_RESYNC", "5".into()),
                ],
            ));
        }
        ChartOperator {
            release,
            namespace,
            nodes,
            controller_kubeconfig,
            agent_kubeconfigs,
            processes,
            docs,
            dir,
        }
    }

    pub fn fullname(&self) -> String {
        format!("{}-seapath-operator", self.release)
    }

    /// Every process still runs (panics with its log otherwise).
    pub fn assert_running(&mut self) {
        for p in &mut self.processes {
            if let Some(status) = p.child.try_wait().expect("try_wait") {
                panic!("{} exited with {status}:\n{}", p.name, p.log_text());
            }
        }
    }

    /// Lines of the processes' logs that say the API server refused something.
    pub fn refusals(&self) -> Vec<String> {
        self.processes
            .iter()
            .flat_map(|p| {
                p.log_text()
                    .lines()
                    // kube's API errors carry the reason (`Forbidden`) and `code: 403`.
                    .filter(|l| l.to_ascii_lowercase().contains("forbidden") || l.contains("code: 403"))
                    .map(|l| format!("{}: {l}", p.name))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub fn logs(&self) -> String {
        self.processes
            .iter()
            .map(|p| format!("===== {} =====\n{}", p.name, p.log_text()))
            .collect()
    }
}

/// A VirtualMachine manifest with a blank 16 MiB system disk, pinned to `node` when given.
pub fn vm_manifest(name: &str, namespace: &str, node: Option<&str>, extra_devices: &str) -> Value {
    let mut vm = serde_json::json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "state": "Started",
            "stopTimeoutSeconds": 5,
            "systemDisk": {"source": {"blank": {}}, "size": "16Mi"},
            "xml": format!(
                "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
                 <os><type arch='x86_64'>hvm</type></os><devices>{extra_devices}</devices></domain>"
            ),
        }
    });
    if let Some(node) = node {
        vm["spec"]["placement"] = serde_json::json!({"pinnedNode": node});
    }
    vm
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deletes every VM of a namespace and waits until they are gone (the operator must still
/// run: it removes its finalizer), so no later test binary's operator adopts them.
pub async fn delete_vms(api: &kube::Api<seapath_operator::api::VirtualMachine>) {
    use kube::api::{DeleteParams, ListParams};
    let _ = api
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    eventually(Duration::from_secs(120), "the test's VMs deleted", || async {
        api.list(&ListParams::default())
            .await
            .ok()
            .filter(|l| l.items.is_empty())
            .map(|_| ())
    })
    .await;
}
