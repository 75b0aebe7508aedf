//! The operator on the test bed's two real QEMU hosts: the release controller in its own
//! process, and one agent per QEMU host in this process (default timings), as
//! tests/failover.rs runs them for its live migration. The test-driver hypervisors of the test
//! bed get no agent: placement and drains must choose between the QEMU hosts only.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};
use seapath_operator::agent::Agent;
use seapath_operator::api::Hypervisor;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::agents::agent_config;
use crate::controller::ControllerProcess;
use crate::poll::poll_until;
use crate::testbed::Testbed;

/// Kubernetes namespace of the benchmark's VMs. The controller maps it to RBD's default
/// namespace: libvirt 9.0 cannot name an RBD namespace in a disk source.
pub const NS: &str = "benchmig";

/// Sets, for the controller process spawned later (it inherits this environment), what the
/// QEMU guests need: their kernel and initramfs are host paths, allowed in [`NS`] only, and
/// their disks live in RBD's default namespace. Call before any thread starts.
pub fn controller_environment() {
    // SAFETY: called first thing in main, before the tokio runtime or any other thread exists.
    unsafe {
        std::env::set_var("SEAPATH_ALLOW_HOST_PATHS_IN", NS);
        std::env::set_var("SEAPATH_RBD_NAMESPACE_MAP", format!("{NS}="));
    }
}

/// `(node, libvirt URI)` of the test bed's QEMU hosts (`SEAPATH_QEMU_NODES`).
pub fn qemu_nodes() -> anyhow::Result<Vec<(String, String)>> {
    let nodes: Vec<(String, String)> = std::env::var("SEAPATH_QEMU_NODES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|e| e.split_once('='))
        .map(|(n, u)| (n.trim().to_owned(), u.trim().to_owned()))
        .collect();
    anyhow::ensure!(
        nodes.len() >= 2,
        "SEAPATH_QEMU_NODES names fewer than two QEMU hosts: bring the test bed up with \
         hack/testbed.sh up --with-qemu --hypervisors 2"
    );
    Ok(nodes.into_iter().take(2).collect())
}

/// The agents of the QEMU hosts, as tasks stopped by their sender.
pub struct QemuAgents(Vec<(oneshot::Sender<()>, JoinHandle<()>)>);

impl QemuAgents {
    pub fn start(client: &Client, tb: &Testbed, nodes: &[(String, String)]) -> anyhow::Result<QemuAgents> {
        let mut running = Vec::new();
        for (node, uri) in nodes {
            let agent = Agent::new(client.clone(), agent_config(tb, node, uri))?;
            let (stop, stopped) = oneshot::channel::<()>();
            let node = node.clone();
            let task = tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.await;
                };
                if let Err(e) = agent.run(shutdown).await {
                    eprintln!("bench: the agent of {node} stopped with an error: {e}");
                }
            });
            running.push((stop, task));
        }
        Ok(QemuAgents(running))
    }

    pub async fn stop(self) {
        for (stop, task) in self.0 {
            let _ = stop.send(());
            if tokio::time::timeout(Duration::from_secs(20), task).await.is_err() {
                eprintln!("bench: an agent did not stop within 20 s");
            }
        }
    }
}

pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in seapath_operator::api::all_crds() {
        let name = crd.name_any();
        let params = PatchParams::apply("seapath-bench").force();
        crds.patch(&name, &params, &Patch::Apply(&crd)).await?;
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await??;
    }
    Ok(())
}

/// Deletes Hypervisor objects of other agents (an earlier run's test-driver hosts would look
/// Ready until their heartbeat times out, and placement could choose them).
pub async fn forget_other_hypervisors(client: &Client, ours: &[String]) -> anyhow::Result<()> {
    let api: Api<Hypervisor> = Api::all(client.clone());
    for hv in api.list(&ListParams::default()).await? {
        if !ours.contains(&hv.name_any()) {
            api.delete(&hv.name_any(), &DeleteParams::default()).await?;
        }
    }
    Ok(())
}

fn is_ready(hv: &Hypervisor) -> bool {
    hv.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Waits until every host is Ready and returns what each reports of its memory, MiB.
pub async fn ready_hosts(client: &Client, nodes: &[String]) -> anyhow::Result<Vec<i64>> {
    let api: Api<Hypervisor> = Api::all(client.clone());
    let mut memory = Vec::new();
    for node in nodes {
        let hv = poll_until(
            Duration::from_secs(60),
            &format!("Hypervisor {node} Ready"),
            async || api.get_opt(node).await.ok().flatten().filter(is_ready),
        )
        .await?;
        memory.push(hv.status.map_or(0, |s| s.memory_mib));
    }
    Ok(memory)
}

/// The controller (its log `controller.log` in `workdir`) and the QEMU hosts' agents, up with
/// both Hypervisors Ready.
pub struct Operator {
    pub controller: ControllerProcess,
    pub agents: QemuAgents,
    /// Memory each host reports (`status.memoryMiB`), in the order of the nodes.
    pub memory_mib: Vec<i64>,
}

pub async fn start_operator(
    client: &Client,
    tb: &Testbed,
    nodes: &[(String, String)],
    workdir: &Path,
) -> anyhow::Result<Operator> {
    install_crds(client).await?;
    let names: Vec<String> = nodes.iter().map(|(n, _)| n.clone()).collect();
    forget_other_hypervisors(client, &names).await?;
    let agents = QemuAgents::start(client, tb, nodes)?;
    let imports = workdir.join("import");
    std::fs::create_dir_all(&imports)?;
    let mut controller = ControllerProcess::spawn(tb, &workdir.join("controller.log"), &imports)?;
    controller.wait_http().await?;
    let memory_mib = ready_hosts(client, &names).await?;
    Ok(Operator {
        controller,
        agents,
        memory_mib,
    })
}
