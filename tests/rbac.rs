//! Least privilege, proven on the test bed's API server (RBAC on): the chart's ServiceAccounts,
//! roles, bindings and admission policies are applied for a fresh release, the controller and
//! two agents run from the `seapath-operator` binary with kubeconfigs of those ServiceAccounts,
//! and a VM goes through its life cycle (create, start, stop, delete) without one refusal in
//! their logs. Then each ServiceAccount tries what it must not do, and is refused.
//!
//! Run with hack/test.sh, or `eval "$(hack/testbed.sh env)"`, `hack/chart.sh tools` and
//! `cargo test --test rbac`.

mod common;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use seapath_operator::api::{Hypervisor, NODE_LABEL, Phase, VirtualMachine};
use serde_json::json;

use common::chart::{
    ChartOperator, client_from, eventually, node_agent_kubeconfig, service_account_kubeconfig, vm_manifest,
};
use common::{admin_client, fresh_namespace, install_crds};

const WAIT: Duration = Duration::from_secs(120);

fn phase(vm: &VirtualMachine) -> Option<Phase> {
    vm.status.as_ref().and_then(|s| s.phase)
}

fn ready(vm: &VirtualMachine) -> bool {
    vm.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

async fn wait_phase(
    api: &Api<VirtualMachine>,
    name: &str,
    want: Phase,
    operator: &mut ChartOperator,
) -> VirtualMachine {
    let what = format!("VM {name} {want:?} and Ready");
    let result = tokio::time::timeout(
        WAIT,
        eventually(WAIT, &what, || async {
            api.get(name)
                .await
                .ok()
                .filter(|vm| phase(vm) == Some(want) && ready(vm))
        }),
    )
    .await;
    match result {
        Ok(vm) => vm,
        Err(_) => {
            let vm = api.get(name).await.ok();
            panic!("{what}: timed out; VM: {vm:#?}\nlogs:\n{}", operator.logs())
        }
    }
}

/// The status code of a refused call.
fn refused(result: Result<impl std::fmt::Debug, kube::Error>, what: &str) -> u16 {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 || status.code == 422 => status.code,
        other => panic!("{what} should have been refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_runs_its_vm_life_cycle_under_the_chart_roles() {
    let admin = admin_client().await;
    install_crds(&admin).await;
    let mut operator = ChartOperator::start(&admin, "rbac").await;
    let vm_namespace = fresh_namespace(&admin, "rbac-vms").await;
    let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &vm_namespace);

    // Both agents register their Hypervisor (create through apply, status patch).
    let hypervisors: Api<Hypervisor> = Api::all(admin.clone());
    for node in &operator.nodes {
        eventually(WAIT, &format!("Hypervisor {node} Ready"), || async {
            hypervisors.get(node).await.ok().filter(|hv| {
                hv.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
        })
        .await;
    }
    operator.assert_running();

    // The controller holds its Lease in its own namespace (Role with resourceNames).
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &operator.namespace);
    eventually(WAIT, "the controller's Lease", || async {
        leases
            .get("seapath-controller")
            .await
            .ok()
            .and_then(|l| l.spec.and_then(|s| s.holder_identity))
    })
    .await;

    // A VM pinned to this release's first hypervisor: storage, placement (label patch),
    // finalizer, status from the controller and the agent.
    let name = format!("vm{}", &operator.release[4..]);
    let manifest = vm_manifest(&name, &vm_namespace, Some(&operator.nodes[0]), "");
    let vm: VirtualMachine = serde_json::from_value(manifest).expect("VM");
    vms.create(&PostParams::default(), &vm)
        .await
        .expect("creating the VM");
    let started = wait_phase(&vms, &name, Phase::Started, &mut operator).await;
    assert_eq!(started.labels().get(NODE_LABEL), Some(&operator.nodes[0]));
    assert!(
        started
            .finalizers()
            .iter()
            .any(|f| f == seapath_operator::api::VM_FINALIZER)
    );
    let domain = started
        .status
        .as_ref()
        .and_then(|s| s.domain.as_ref())
        .expect("agent's domain report");
    assert_eq!(domain.node, operator.nodes[0]);

    // Stop, then start again: the controller and the agent act on a spec change.
    vms.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"state": "Stopped"}})),
    )
    .await
    .expect("stopping");
    wait_phase(&vms, &name, Phase::Stopped, &mut operator).await;

    // Events were recorded by the controller (events.k8s.io create/patch).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin.clone(), &vm_namespace);
    let recorded = events.list(&ListParams::default()).await.expect("events");
    assert!(
        recorded
            .items
            .iter()
            .any(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(&name)),
        "no Event about {name}"
    );

    // Deletion: the controller removes the RBD data and its finalizer.
    vms.delete(&name, &DeleteParams::default())
        .await
        .expect("deleting");
    eventually(WAIT, "the VM gone", || async {
        match vms.get_opt(&name).await {
            Ok(None) => Some(()),
            _ => None,
        }
    })
    .await;

    operator.assert_running();
    let refusals = operator.refusals();
    assert!(
        refusals.is_empty(),
        "the operator was refused API calls under the chart's roles:\n{}",
        refusals.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_the_operator_must_not_do_is_forbidden() {
    let admin = admin_client().await;
    install_crds(&admin).await;
    let release = common::chart::unique("deny");
    let namespace = fresh_namespace(&admin, &format!("{release}-system")).await;
    common::chart::apply_access_objects(&release, &namespace);
    let dir = tempfile::tempdir().expect("temp dir");
    let fullname = format!("{release}-seapath-operator");
    let controller = client_from(
        &service_account_kubeconfig(&admin, &namespace, &format!("{fullname}-controller"), dir.path()).await,
    )
    .await;
    // The agent of the Hypervisor below, with its Pod's token: the node restriction lets it
    // write that Hypervisor, so what refuses the writes below is what each test names.
    let hv_name = format!("{release}-hv");
    let agent = client_from(
        &node_agent_kubeconfig(
            &admin,
            &namespace,
            &format!("{fullname}-agent"),
            &hv_name,
            dir.path(),
        )
        .await,
    )
    .await;
    // The admission policies are loaded asynchronously by the API server.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Objects to aim at: a Secret in the operator's namespace and in a VM namespace, a VM, a
    // Hypervisor.
    let vm_namespace = fresh_namespace(&admin, "deny-vms").await;
    for ns in [&namespace, &vm_namespace] {
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "ceph-key"}, "stringData": {"key": "secret"}
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .expect("secret");
    }
    let vm_name = format!("vm{}", &release[4..]);
    let mut manifest = vm_manifest(&vm_name, &vm_namespace, None, "");
    manifest["spec"]["state"] = json!("Disabled");
    let vm: VirtualMachine = serde_json::from_value(manifest).unwrap();
    Api::<VirtualMachine>::namespaced(admin.clone(), &vm_namespace)
        .create(&PostParams::default(), &vm)
        .await
        .expect("VM");
    let hv: Hypervisor = serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "Hypervisor",
        "metadata": {"name": hv_name}, "spec": {}
    }))
    .unwrap();
    Api::<Hypervisor>::all(admin.clone())
        .create(&PostParams::default(), &hv)
        .await
        .expect("Hypervisor");

    for (who, client) in [("controller", &controller), ("agent", &agent)] {
        // Secrets: not in a VM namespace, not even in its own namespace, not listed anywhere.
        for ns in [&vm_namespace, &namespace] {
            refused(
                Api::<Secret>::namespaced(client.clone(), ns)
                    .get("ceph-key")
                    .await,
                &format!("{who} reading a Secret in {ns}"),
            );
        }
        refused(
            Api::<Secret>::all(client.clone())
                .list(&ListParams::default())
                .await,
            &format!("{who} listing Secrets"),
        );
        // Other kinds.
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "intruder"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap();
        refused(
            Api::<Pod>::namespaced(client.clone(), &vm_namespace)
                .create(&PostParams::default(), &pod)
                .await,
            &format!("{who} creating a Pod"),
        );
        refused(
            Api::<ConfigMap>::namespaced(client.clone(), &namespace)
                .list(&ListParams::default())
                .await,
            &format!("{who} listing ConfigMaps"),
        );
        // VMs: no create (the controller: only a restore's copy, below), no delete.
        let other: VirtualMachine =
            serde_json::from_value(vm_manifest("intruder", &vm_namespace, None, "")).unwrap();
        let client_vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &vm_namespace);
        refused(
            client_vms.create(&PostParams::default(), &other).await,
            &format!("{who} creating a VM"),
        );
        // Marked as a restore's, but with a disk that is not a copy of a snapshot.
        let mut marked = other.clone();
        marked.metadata.name = Some("intrudertwo".into());
        marked.metadata.annotations = Some(
            [(
                seapath_operator::api::RESTORE_UID_ANNOTATION.to_string(),
                "uid".to_string(),
            )]
            .into(),
        );
        refused(
            client_vms.create(&PostParams::default(), &marked).await,
            &format!("{who} creating a VM marked as a restore's with a blank disk"),
        );
        refused(
            client_vms.delete(&vm_name, &DeleteParams::default()).await,
            &format!("{who} deleting a VM"),
        );
        // Hypervisors: no delete; no cordoning.
        let client_hvs: Api<Hypervisor> = Api::all(client.clone());
        refused(
            client_hvs.delete(&hv_name, &DeleteParams::default()).await,
            &format!("{who} deleting a Hypervisor"),
        );
        refused(
            client_hvs
                .patch(
                    &hv_name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"unschedulable": true}})),
                )
                .await,
            &format!("{who} cordoning a Hypervisor"),
        );
        // Leases: only the controller's own, only in its namespace.
        let lease: Lease =
            serde_json::from_value(json!({"metadata": {"name": "seapath-controller"}})).unwrap();
        refused(
            Api::<Lease>::namespaced(client.clone(), &vm_namespace)
                .create(&PostParams::default(), &lease)
                .await,
            &format!("{who} creating a Lease outside its namespace"),
        );
    }

    // The controller may patch a VM's labels and state (placement, restores), never the rest
    // of its spec: the admission policy refuses it.
    let controller_vms: Api<VirtualMachine> = Api::namespaced(controller.clone(), &vm_namespace);
    controller_vms
        .patch(
            &vm_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"probe": "ok"}}})),
        )
        .await
        .expect("the controller may label a VM");
    controller_vms
        .patch(
            &vm_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"state": "Stopped"}})),
        )
        .await
        .expect("the controller may change spec.state (restores)");
    controller_vms
        .patch(
            &vm_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"state": "Disabled"}})),
        )
        .await
        .expect("the controller may change spec.state (restores)");
    for (field, value) in [
        ("placement", json!({"pinnedNode": "elsewhere"})),
        ("stopTimeoutSeconds", json!(1)),
        ("deletionPolicy", json!("Retain")),
        ("systemDisk", json!({"source": {"blank": {}}, "size": "1Gi"})),
    ] {
        let patch = json!({"spec": {field: value}});
        match controller_vms
            .patch(&vm_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(status)) => assert!(
                status
                    .message
                    .contains(&format!("the seapath controller may not change spec.{field}")),
                "spec.{field}: refused, but not by the admission policy: {status:?}"
            ),
            other => panic!("the controller changed spec.{field}: {other:?}"),
        }
        // The same change is valid: an administrator may make it.
        let dry_run = PatchParams {
            dry_run: true,
            ..Default::default()
        };
        Api::<VirtualMachine>::namespaced(admin.clone(), &vm_namespace)
            .patch(&vm_name, &dry_run, &Patch::Merge(&patch))
            .await
            .unwrap_or_else(|e| panic!("an administrator may change spec.{field}: {e}"));
    }
    // The one VM the controller may create: a restore's copy, every disk from a snapshot.
    let mut copy = vm_manifest("restored", &vm_namespace, None, "");
    copy["metadata"]["annotations"] =
        json!({seapath_operator::api::RESTORE_UID_ANNOTATION: "uid-of-a-restore"});
    copy["spec"]["systemDisk"] = json!({"source": {"vm": {"name": vm_name, "snapshot": "before"}}});
    let copy: VirtualMachine = serde_json::from_value(copy).unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    controller_vms
        .create(&dry_run, &copy)
        .await
        .expect("the controller may create the new VM of a restore");
    // The agent may not patch a VM at all (status only).
    let agent_vms: Api<VirtualMachine> = Api::namespaced(agent.clone(), &vm_namespace);
    refused(
        agent_vms
            .patch(
                &vm_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {NODE_LABEL: "x"}}})),
            )
            .await,
        "agent labelling a VM",
    );
    refused(
        agent_vms
            .patch(
                &vm_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"state": "Stopped"}})),
            )
            .await,
        "agent changing a VM's spec",
    );
    // An agent may register Hypervisors but not cordon them (admission policy), while an
    // administrator may.
    let agent_hvs: Api<Hypervisor> = Api::all(agent.clone());
    match agent_hvs
        .patch(
            &hv_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
    {
        Err(kube::Error::Api(status)) => assert!(
            status.message.contains("may not change the spec of a Hypervisor"),
            "refused, but not by the admission policy: {status:?}"
        ),
        other => panic!("the agent cordoned a Hypervisor: {other:?}"),
    }
    // The controller may write only the fence and the Ready condition of a Hypervisor's status
    // (admission policy); the agent may not record Events.
    refused(
        Api::<Hypervisor>::all(controller.clone())
            .patch_status(
                &hv_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"cpus": 1}})),
            )
            .await,
        "controller writing a Hypervisor's status",
    );
    Api::<Hypervisor>::all(controller.clone())
        .patch_status(
            &hv_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"fence": null}})),
        )
        .await
        .expect("the controller may write a Hypervisor's fence");
    let event: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
        "metadata": {"name": "intruder"}, "eventTime": "2024-01-01T00:00:00.000000Z",
        "reportingController": "x", "reportingInstance": "x", "action": "x", "reason": "x", "type": "Normal"
    }))
    .unwrap();
    refused(
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(agent.clone(), &vm_namespace)
            .create(&PostParams::default(), &event)
            .await,
        "agent recording an Event",
    );
    // Sanity: what they must do is allowed.
    Api::<VirtualMachine>::all(agent.clone())
        .list(&ListParams::default().labels(&format!("{NODE_LABEL}=none")))
        .await
        .expect("the agent lists VMs");
    Api::<Hypervisor>::all(controller.clone())
        .list(&ListParams::default())
        .await
        .expect("the controller lists Hypervisors");
    // Leave nothing a later test binary's operator would adopt.
    // The other test's controller may have put its finalizer on this VM and be gone by now.
    let admin_vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &vm_namespace);
    let _ = admin_vms.delete(&vm_name, &DeleteParams::default()).await;
    let _ = admin_vms
        .patch(
            &vm_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    common::chart::delete_vms(&admin_vms).await;
    let _ = Api::<Hypervisor>::all(admin.clone())
        .delete(&hv_name, &DeleteParams::default())
        .await;
}
