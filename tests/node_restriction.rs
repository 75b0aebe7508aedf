//! Agents are confined to their node, as NodeRestriction confines kubelets, proven on the test
//! bed's API server: the chart's ServiceAccounts, roles and admission policies are applied for
//! a fresh release, two Nodes get an agent Pod each (never run: there is no kubelet), and each
//! agent gets its Pod's token through the TokenRequest API, which names its node. With its
//! token each agent heartbeats its own Hypervisor and reports on the VMs of its node, and is
//! refused, by the policy and saying why, on the other node's Hypervisor and VMs. A token bound
//! to no Pod names no node and is refused outright.
//!
//! The writes are the agent's own: its status writer (`agent::status::apply`) for VMs, and
//! the same server-side apply calls as its heartbeat for Hypervisors.
//!
//! Run with hack/test.sh, or `eval "$(hack/testbed.sh env)"`, `hack/chart.sh tools` and
//! `cargo test --test node_restriction`.

mod common;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use seapath_operator::agent::{AgentError, status};
use seapath_operator::api::{DomainState, DomainStatus, Hypervisor, NODE_LABEL, VirtualMachine};
use seapath_operator::field_manager::AGENT as FIELD_MANAGER;
use serde_json::json;

use common::chart::{client_from, node_agent_kubeconfig, service_account_kubeconfig, unique, vm_manifest};
use common::{admin_client, fresh_namespace, install_crds};

/// One agent: the node its token names and a client with that token.
struct NodeAgent {
    node: String,
    client: Client,
}

/// What the test bed's API server answered to one write.
type Answer = Result<(), kube::Error>;

/// Registers the Hypervisor `name` as the agent does (server-side apply of an empty spec).
async fn register(agent: &Client, name: &str) -> Answer {
    let object = json!({
        "apiVersion": Hypervisor::api_version(&()), "kind": Hypervisor::kind(&()),
        "metadata": {"name": name}, "spec": {},
    });
    Api::<Hypervisor>::all(agent.clone())
        .patch(name, &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&object))
        .await
        .map(drop)
}

/// Writes a heartbeat into the status of the Hypervisor `name` as the agent does.
async fn heartbeat(agent: &Client, name: &str) -> Answer {
    let patch = json!({
        "apiVersion": Hypervisor::api_version(&()), "kind": Hypervisor::kind(&()),
        "metadata": {"name": name},
        "status": {"heartbeatTime": "2030-01-01T00:00:00Z", "cpus": 4, "memoryMiB": 4096},
    });
    Api::<Hypervisor>::all(agent.clone())
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map(drop)
}

/// A domain report as an agent writes it: `state` on `node`.
fn report_of(node: &str, vm: &VirtualMachine, state: DomainState) -> DomainStatus {
    DomainStatus {
        node: node.to_owned(),
        name: vm.metadata.name.clone().expect("VM name"),
        state,
        observed_generation: vm.metadata.generation,
        ..Default::default()
    }
}

/// Writes `report` into the VM's `status.domain` with the agent's status writer.
async fn report(agent: &Client, vm_namespace: &str, vm_name: &str, report: DomainStatus) -> Answer {
    let api: Api<VirtualMachine> = Api::namespaced(agent.clone(), vm_namespace);
    let vm = api.get(vm_name).await?;
    match status::apply(&api, &vm, report, None, None).await {
        Ok(_) => Ok(()),
        Err(AgentError::Kube { error, .. }) => Err(error),
        Err(other) => panic!("writing the report of {vm_name}: {other}"),
    }
}

/// The answer was a refusal whose message contains `because`.
fn assert_refused(answer: Answer, what: &str, because: &str) {
    match answer {
        Err(kube::Error::Api(status)) if status.code == 403 => assert!(
            status.message.contains(because),
            "{what}: refused, but not saying \"{because}\": {}",
            status.message
        ),
        other => panic!("{what} should have been refused (\"{because}\"), got {other:?}"),
    }
}

fn assert_allowed(answer: Answer, what: &str) {
    if let Err(e) = answer {
        panic!("{what} should have been allowed: {e}");
    }
}

/// A VM (Disabled: no controller acts on it) labelled with `node`, made by the admin.
async fn vm_on(admin: &Client, namespace: &str, name: &str, node: &str) -> VirtualMachine {
    let mut manifest = vm_manifest(name, namespace, None, "");
    manifest["spec"]["state"] = json!("Disabled");
    manifest["metadata"]["labels"] = json!({NODE_LABEL: node});
    let vm: VirtualMachine = serde_json::from_value(manifest).expect("VM manifest");
    Api::<VirtualMachine>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &vm)
        .await
        .unwrap_or_else(|e| panic!("creating VM {name}: {e}"))
}

/// Points the VM's node label at `node` (None: removes it), as the controller's placement does.
async fn label(admin: &Client, namespace: &str, name: &str, node: Option<&str>) {
    Api::<VirtualMachine>::namespaced(admin.clone(), namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {NODE_LABEL: node}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("labelling VM {name}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_writes_only_for_its_own_node() {
    let admin = admin_client().await;
    install_crds(&admin).await;
    let release = unique("node");
    let namespace = fresh_namespace(&admin, &format!("{release}-system")).await;
    common::chart::apply_access_objects(&release, &namespace);
    let account = format!("{release}-seapath-operator-agent");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut agents = Vec::new();
    for node in [format!("{release}-n1"), format!("{release}-n2")] {
        let kubeconfig = node_agent_kubeconfig(&admin, &namespace, &account, &node, dir.path()).await;
        agents.push(NodeAgent {
            node,
            client: client_from(&kubeconfig).await,
        });
    }
    let unbound =
        client_from(&service_account_kubeconfig(&admin, &namespace, &account, dir.path()).await).await;
    // The admission policies are loaded asynchronously by the API server.
    tokio::time::sleep(Duration::from_secs(3)).await;

    hypervisors_are_their_nodes_own(&agents).await;
    let vm_namespace = fresh_namespace(&admin, "node-vms").await;
    vm_reports_are_their_nodes_own(&admin, &agents, &vm_namespace).await;
    unbound_tokens_are_refused(&unbound, &agents, &vm_namespace).await;

    clean_up(&admin, &namespace, &agents, &vm_namespace).await;
}

/// Each agent registers and heartbeats its own Hypervisor, never the other node's, nor a
/// Hypervisor of a node that has no agent.
async fn hypervisors_are_their_nodes_own(agents: &[NodeAgent]) {
    for agent in agents {
        assert_allowed(
            register(&agent.client, &agent.node).await,
            "registering its own Hypervisor",
        );
        assert_allowed(
            heartbeat(&agent.client, &agent.node).await,
            "heartbeating its own Hypervisor",
        );
    }
    for (agent, other) in [(&agents[0], &agents[1]), (&agents[1], &agents[0])] {
        let because = format!(
            "the seapath node agent of node {} may not write Hypervisor {}",
            agent.node, other.node
        );
        let what = format!("the agent of {} heartbeating {}", agent.node, other.node);
        assert_refused(heartbeat(&agent.client, &other.node).await, &what, &because);
        let what = format!("the agent of {} registering {}", agent.node, other.node);
        assert_refused(register(&agent.client, &other.node).await, &what, &because);
    }
    let stray = format!("{}-stray", agents[0].node);
    assert_refused(
        register(&agents[0].client, &stray).await,
        "an agent registering a Hypervisor for another name",
        &format!("may not write Hypervisor {stray}"),
    );
}

/// Each agent reports on the VM labelled with its node, not on the other's, and only in its
/// own name; after a move, the old node may still say it let the VM go until the new node has
/// reported.
async fn vm_reports_are_their_nodes_own(admin: &Client, agents: &[NodeAgent], vm_namespace: &str) {
    let vms = [
        vm_on(admin, vm_namespace, "vmone", &agents[0].node).await,
        vm_on(admin, vm_namespace, "vmtwo", &agents[1].node).await,
    ];
    for (agent, vm, other) in [(&agents[0], &vms[0], &vms[1]), (&agents[1], &vms[1], &vms[0])] {
        let mine = vm.metadata.name.as_deref().unwrap();
        let theirs = other.metadata.name.as_deref().unwrap();
        let running = report_of(&agent.node, vm, DomainState::Running);
        assert_allowed(
            report(&agent.client, vm_namespace, mine, running).await,
            &format!("the agent of {} reporting {mine}", agent.node),
        );
        for (field, value) in [
            ("phase", json!("Started")),
            ("node", json!(agent.node)),
            ("domainUuid", json!("6c0d3ef2-5b55-4a49-9c1c-6e2f5d0c8a11")),
        ] {
            assert_refused(
                Api::<VirtualMachine>::namespaced(agent.client.clone(), vm_namespace)
                    .patch_status(
                        mine,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": {field: value}})),
                    )
                    .await
                    .map(drop),
                &format!("the agent of {} writing status.{field} of {mine}", agent.node),
                &format!("a seapath node agent may not change status.{field} of a VirtualMachine"),
            );
        }
        let forged = report_of(&agent.node, other, DomainState::Absent);
        assert_refused(
            report(&agent.client, vm_namespace, theirs, forged).await,
            &format!("the agent of {} reporting {theirs}", agent.node),
            &format!(
                "the seapath node agent of node {} may not write status.domain or status.restarts of VirtualMachine {vm_namespace}/{theirs}",
                agent.node
            ),
        );
    }
    // A report in another node's name, even on the agent's own VM.
    let other_node = &agents[1].node;
    assert_refused(
        report(
            &agents[0].client,
            vm_namespace,
            "vmone",
            report_of(other_node, &vms[0], DomainState::Absent),
        )
        .await,
        "an agent reporting in another node's name",
        &format!("may not report a domain on node {other_node}"),
    );

    // vmone moves from n1 to n2: the label is removed first; n1 says it let go, n2 may not
    // speak yet; once labelled for n2, n2 reports and n1 no longer may.
    label(admin, vm_namespace, "vmone", None).await;
    assert_allowed(
        report(
            &agents[0].client,
            vm_namespace,
            "vmone",
            report_of(&agents[0].node, &vms[0], DomainState::Absent),
        )
        .await,
        "the old node reporting it let go of a VM that moves",
    );
    assert_refused(
        report(
            &agents[1].client,
            vm_namespace,
            "vmone",
            report_of(&agents[1].node, &vms[0], DomainState::Running),
        )
        .await,
        "the new node reporting before the VM is labelled for it",
        "the VM is assigned to no node",
    );
    label(admin, vm_namespace, "vmone", Some(&agents[1].node)).await;
    assert_allowed(
        report(
            &agents[1].client,
            vm_namespace,
            "vmone",
            report_of(&agents[1].node, &vms[0], DomainState::Running),
        )
        .await,
        "the new node reporting a VM labelled for it",
    );
    assert_refused(
        report(
            &agents[0].client,
            vm_namespace,
            "vmone",
            report_of(&agents[0].node, &vms[0], DomainState::Absent),
        )
        .await,
        "the old node reporting after the new node did",
        &format!(
            "the VM is assigned to node {} and node {} reported it last",
            agents[1].node, agents[1].node
        ),
    );
}

/// A token bound to no Pod names no node: refused for Hypervisors and VMs alike, even where
/// a node's agent would be allowed.
async fn unbound_tokens_are_refused(unbound: &Client, agents: &[NodeAgent], vm_namespace: &str) {
    let because = "this token names no node";
    assert_refused(
        heartbeat(unbound, &agents[0].node).await,
        "a token bound to no Pod heartbeating a Hypervisor",
        because,
    );
    assert_refused(
        register(unbound, "unbound-stray").await,
        "a token bound to no Pod registering a Hypervisor",
        because,
    );
    let api: Api<VirtualMachine> = Api::namespaced(unbound.clone(), vm_namespace);
    let vm = api.get("vmtwo").await.expect("the agent reads VMs");
    let absent = report_of(&agents[1].node, &vm, DomainState::Absent);
    let answer = match status::apply(&api, &vm, absent, None, None).await {
        Ok(_) => Ok(()),
        Err(AgentError::Kube { error, .. }) => Err(error),
        Err(other) => panic!("{other}"),
    };
    assert_refused(answer, "a token bound to no Pod reporting a VM", because);
}

/// Leaves nothing a later test's operator would adopt or judge: the VMs (a controller of
/// another test binary may have put its finalizer on them), Hypervisors, Pods and Nodes.
async fn clean_up(admin: &Client, namespace: &str, agents: &[NodeAgent], vm_namespace: &str) {
    let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), vm_namespace);
    for name in ["vmone", "vmtwo"] {
        let _ = vms.delete(name, &DeleteParams::default()).await;
        let _ = vms
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await;
    }
    let pods: Api<Pod> = Api::namespaced(admin.clone(), namespace);
    for agent in agents {
        let _ = Api::<Hypervisor>::all(admin.clone())
            .delete(&agent.node, &DeleteParams::default())
            .await;
        // No kubelet confirms a graceful deletion.
        let _ = pods
            .delete(
                &format!("agent-{}", agent.node),
                &DeleteParams::default().grace_period(0),
            )
            .await;
        let _ = Api::<Node>::all(admin.clone())
            .delete(&agent.node, &DeleteParams::default())
            .await;
    }
}
