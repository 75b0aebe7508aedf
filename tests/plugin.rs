//! `kubectl seapath` against the test bed, run as kubectl runs it (a `kubectl-seapath` binary
//! on the PATH), with the operator running from its binary under the chart's roles.
//!
//! Needs helm (`hack/chart.sh tools`) and the test bed.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, PostParams};
use seapath_operator::api::{DesiredState, Phase, VirtualMachine};
use serde_json::json;

use common::chart::{
    ChartOperator, eventually, kubectl, run_status, service_account_kubeconfig, vm_manifest,
};
use common::{admin_client, fresh_namespace, install_crds};

const WAIT: Duration = Duration::from_secs(120);

/// `kubectl seapath ARGS` with the plugin binary's directory first on the PATH.
fn kubectl_seapath(kubeconfig: Option<&Path>, args: &[&str]) -> (bool, String, String) {
    let plugin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-seapath"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new(kubectl());
    command.arg("seapath").args(args).env("PATH", path);
    if let Some(kubeconfig) = kubeconfig {
        command.env("KUBECONFIG", kubeconfig);
    }
    run_status(&mut command, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_start_stop_disable_and_clear_errors() {
    let admin = admin_client().await;
    install_crds(&admin).await;
    let mut operator = ChartOperator::start(&admin, "plug").await;
    let ns = fresh_namespace(&admin, "plugin").await;
    let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
    let name = format!("vm{}", &operator.release[4..]);
    let manifest: VirtualMachine =
        serde_json::from_value(vm_manifest(&name, &ns, Some(&operator.nodes[0]), "")).unwrap();
    vms.create(&PostParams::default(), &manifest).await.expect("VM");
    eventually(WAIT, "VM Started", || async {
        vms.get(&name)
            .await
            .ok()
            .filter(|vm| vm.status.as_ref().and_then(|s| s.phase) == Some(Phase::Started))
    })
    .await;

    // kubectl finds the plugin; status shows phase, node, disks, snapshots.
    let (ok, out, err) = kubectl_seapath(None, &["status", "-n", &ns]);
    assert!(ok, "{out}{err}");
    let header = out.lines().next().unwrap();
    for column in [
        "NAME",
        "DESIRED",
        "PHASE",
        "NODE",
        "READY",
        "DISKS",
        "SNAPSHOTS",
        "MESSAGE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let line = out
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} missing:\n{out}"));
    assert!(
        line.contains("Started") && line.contains(&operator.nodes[0]) && line.contains("1 (16Mi)"),
        "{line}"
    );
    let (ok, out, _) = kubectl_seapath(None, &["status", "-A"]);
    assert!(ok && out.starts_with("NAMESPACE") && out.contains(&ns), "{out}");

    // stop --wait shows progress and returns once the VM is Stopped; start and disable too.
    for (command, want, phase) in [
        ("stop", DesiredState::Stopped, Phase::Stopped),
        ("start", DesiredState::Started, Phase::Started),
        ("disable", DesiredState::Disabled, Phase::Disabled),
    ] {
        let (ok, out, err) = kubectl_seapath(None, &[command, &name, "-n", &ns, "--wait", "--timeout", "2m"]);
        assert!(ok, "{command}: {out}{err}\nlogs:\n{}", operator.logs());
        assert!(out.contains(&format!("is {want:?}")), "{command}: {out}");
        assert!(
            err.contains(&format!("virtualmachine/{name}")),
            "{command}: no progress in '{err}'"
        );
        let vm = vms.get(&name).await.unwrap();
        assert_eq!(vm.spec.state, want);
        assert_eq!(vm.status.as_ref().and_then(|s| s.phase), Some(phase), "{command}");
        // The change went through the spec, under the plugin's field manager.
        assert!(
            vm.metadata
                .managed_fields
                .unwrap_or_default()
                .iter()
                .any(|m| m.manager.as_deref() == Some(seapath_operator::field_manager::PLUGIN)),
            "no kubectl-seapath field manager"
        );
    }

    // Unknown VM: a clear message, exit code 1.
    let (ok, _, err) = kubectl_seapath(None, &["stop", "nosuchvm", "-n", &ns]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "VirtualMachine 'nosuchvm' not found in namespace '{ns}'"
        )),
        "{err}"
    );

    // A user who may only view: status works, stop is refused with a clear message.
    let viewer = "viewer";
    run_status(
        Command::new(kubectl()).args(["-n", &ns, "create", "serviceaccount", viewer]),
        None,
    );
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": format!("{}-view", operator.fullname())},
        "subjects": [{"kind": "ServiceAccount", "name": viewer, "namespace": ns}]
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");
    let kubeconfig = service_account_kubeconfig(&admin, &ns, viewer, operator.dir.path()).await;
    let (ok, out, err) = eventually(Duration::from_secs(10), "the viewer's role", || async {
        let result = kubectl_seapath(Some(&kubeconfig), &["status"]);
        result.0.then_some(result)
    })
    .await;
    assert!(ok && out.contains(&name), "{out}{err}");
    let (ok, _, err) = kubectl_seapath(Some(&kubeconfig), &["start", &name]);
    assert!(!ok);
    assert!(
        err.contains("forbidden: you may not patch virtualmachines in namespace")
            && err.contains("edit role"),
        "{err}"
    );

    // Snapshots: the kind may not be served yet by this cluster's CRDs; either the snapshot is
    // created, or the error says the kind is missing.
    let (ok, out, err) = kubectl_seapath(None, &["snapshot", &name, "-n", &ns]);
    assert!(
        ok && out.contains("virtualmachinesnapshot/")
            || err.contains("does not serve VirtualMachineSnapshot"),
        "{out}{err}"
    );

    common::chart::delete_vms(&vms).await;
    operator.assert_running();
    let refusals = operator.refusals();
    assert!(
        refusals.is_empty(),
        "refused under the chart's roles:\n{}",
        refusals.join("\n")
    );
}

/// A request the API server refuses is reported in the API server's words, on one line, with
/// its reason: not kube's `ApiError { .. }` dump. Needs no operator: the plugin only checks
/// that the VM object exists before it creates the snapshot object.
#[tokio::test]
async fn a_refused_request_prints_the_api_servers_message_and_reason() {
    let admin = admin_client().await;
    install_crds(&admin).await;
    let ns = fresh_namespace(&admin, "plugin-refused").await;
    let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
    let mut manifest = vm_manifest("guest", &ns, None, "");
    manifest["spec"]["state"] = json!("Disabled");
    vms.create(&PostParams::default(), &serde_json::from_value(manifest).unwrap())
        .await
        .expect("VM");

    let (ok, _, err) = kubectl_seapath(None, &["snapshot", "guest", "Bad_Name", "-n", &ns]);
    assert!(!ok);
    assert!(
        err.starts_with(&format!(
            "error: create virtualmachinesnapshots {ns}/Bad_Name: VirtualMachineSnapshot.seapath.lfenergy.org \"Bad_Name\" is invalid: "
        )) && err.contains("metadata.name: Invalid value: \"Bad_Name\"")
            && err.trim_end().ends_with("(Invalid)")
            && err.trim_end().lines().count() == 1
            && !err.contains("ApiError")
            && !err.contains("<nil>"),
        "{err}"
    );

    let (ok, _, err) = kubectl_seapath(None, &["snapshot", "guest", "first", "-n", &ns]);
    assert!(ok, "{err}");
    let (ok, _, err) = kubectl_seapath(None, &["snapshot", "guest", "first", "-n", &ns]);
    assert!(!ok);
    assert_eq!(
        err.trim_end(),
        format!(
            "error: create virtualmachinesnapshots {ns}/first: virtualmachinesnapshots.seapath.lfenergy.org \"first\" already exists (AlreadyExists)"
        )
    );
}
