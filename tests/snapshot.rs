//! Snapshots, restores and schedules on the real test bed: the VM controller and two agents
//! (libvirt test-driver node files) plus the snapshot controllers run in the test process; RBD
//! is read and written directly through librbd to check what the operator did.
//!
//! Run with hack/test.sh, or `eval "$(hack/testbed.sh env)"` and `cargo test --test snapshot`.

mod common;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use seapath_operator::api::{
    DesiredState, Phase, RestorePhase, SnapshotPhase, VirtualMachine, VirtualMachineRestore,
    VirtualMachineSnapshot, VirtualMachineSnapshotSchedule,
};
use seapath_operator::ceph::{CloneFormat, ImageOptions, IoCtx, SnapNamespace};
use serde_json::json;

use common::snapshots::{
    create_vm, rbd, read_marker, snap_names, snapshot_controllers, wait_for, wait_for_within, wait_gone,
    write_marker,
};

struct Env {
    namespace: String,
    vms: Api<VirtualMachine>,
    snaps: Api<VirtualMachineSnapshot>,
    restores: Api<VirtualMachineRestore>,
    schedules: Api<VirtualMachineSnapshotSchedule>,
}

async fn setup(prefix: &str) -> Env {
    let client = common::admin_client().await;
    common::install_crds(&client).await;
    common::operator::operator("snap");
    snapshot_controllers();
    let namespace = common::fresh_namespace(&client, prefix).await;
    Env {
        vms: Api::namespaced(client.clone(), &namespace),
        snaps: Api::namespaced(client.clone(), &namespace),
        restores: Api::namespaced(client.clone(), &namespace),
        schedules: Api::namespaced(client.clone(), &namespace),
        namespace,
    }
}

fn snapshot(name: &str, vm: &str, extra: serde_json::Value) -> VirtualMachineSnapshot {
    let mut spec = json!({"vmName": vm});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineSnapshot",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("valid VirtualMachineSnapshot")
}

fn restore(name: &str, vm: &str, snapshot: &str) -> VirtualMachineRestore {
    serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineRestore",
        "metadata": {"name": name}, "spec": {"vmName": vm, "snapshot": snapshot}
    }))
    .expect("valid VirtualMachineRestore")
}

fn schedule(name: &str, spec: serde_json::Value) -> VirtualMachineSnapshotSchedule {
    serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineSnapshotSchedule",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("valid VirtualMachineSnapshotSchedule")
}

fn snap_phase(s: &VirtualMachineSnapshot) -> Option<SnapshotPhase> {
    s.status.as_ref().and_then(|st| st.phase)
}

fn restore_phase(r: &VirtualMachineRestore) -> Option<RestorePhase> {
    r.status.as_ref().and_then(|st| st.phase)
}

fn ready(conditions: Option<&Vec<Condition>>) -> Option<&Condition> {
    conditions?.iter().find(|c| c.type_ == "Ready")
}

fn snap_ready(s: &VirtualMachineSnapshot) -> Option<&Condition> {
    ready(s.status.as_ref().map(|st| &st.conditions))
}

fn restore_ready(r: &VirtualMachineRestore) -> Option<&Condition> {
    ready(r.status.as_ref().map(|st| &st.conditions))
}

async fn wait_snap_phase(env: &Env, name: &str, phase: SnapshotPhase) -> VirtualMachineSnapshot {
    wait_for(&env.snaps, name, &format!("phase {phase:?}"), |s| {
        snap_phase(s) == Some(phase)
    })
    .await
}

async fn wait_restore_phase(env: &Env, name: &str, phase: RestorePhase) -> VirtualMachineRestore {
    wait_for(&env.restores, name, &format!("phase {phase:?}"), |r| {
        restore_phase(r) == Some(phase)
    })
    .await
}

fn vm_phase(vm: &VirtualMachine) -> Option<Phase> {
    vm.status.as_ref().and_then(|s| s.phase)
}

/// The SEAPATH update cycle: snapshot a running VM, change its disks, roll back, the change is
/// gone and the VM is Started again; the snapshot stays and is removed with its object.
#[tokio::test]
async fn update_cycle_snapshot_change_restore() {
    let env = setup("snap-cycle").await;
    create_vm(&env.vms, "guest", 1, "Started", Phase::Started).await;
    let io = rbd(&env.namespace);
    write_marker(&io, "system_guest", b"BEFORE-UPDATE");
    write_marker(&io, "data_guest_0", b"DATA-BEFORE");

    env.snaps
        .create(
            &PostParams::default(),
            &snapshot(
                "beforeupdate",
                "guest",
                json!({"description": "before the update"}),
            ),
        )
        .await
        .expect("create snapshot");
    let snap = wait_snap_phase(&env, "beforeupdate", SnapshotPhase::Ready).await;
    let status = snap.status.clone().unwrap();
    assert!(status.ready_to_use);
    assert_eq!(status.snapshot_name.as_deref(), Some("beforeupdate"));
    assert_eq!(status.vm_state, Some(DesiredState::Started));
    assert!(status.creation_time.is_some());
    let images: Vec<&str> = status.disks.iter().map(|d| d.image.as_str()).collect();
    assert_eq!(images, ["system_guest", "data_guest_0"]);
    assert!(
        status.disks.iter().all(|d| d.snapshot_id.is_some()),
        "{status:#?}"
    );
    assert_eq!(status.disks[0].size_bytes, Some(16 << 20));
    assert_eq!(status.disks[1].size_bytes, Some(8 << 20));
    assert_eq!(snap_ready(&snap).unwrap().status, "True");
    // vm_manager's layout: the same name on every image.
    assert_eq!(snap_names(&io, "system_guest"), ["beforeupdate"]);
    assert_eq!(snap_names(&io, "data_guest_0"), ["beforeupdate"]);

    // The update: a change to both disks.
    write_marker(&io, "system_guest", b"AFTER--UPDATE");
    write_marker(&io, "data_guest_0", b"DATA-AFTER!");

    let generation_before = env.vms.get("guest").await.unwrap().metadata.generation.unwrap();
    env.restores
        .create(
            &PostParams::default(),
            &restore("rollback", "guest", "beforeupdate"),
        )
        .await
        .expect("create restore");
    let done = wait_restore_phase(&env, "rollback", RestorePhase::Succeeded).await;
    let rs = done.status.clone().unwrap();
    assert_eq!(rs.previous_state, Some(DesiredState::Started));
    assert_eq!(rs.rolled_back, ["system_guest", "data_guest_0"]);
    assert!(rs.completion_time.is_some());
    assert_eq!(restore_ready(&done).unwrap().status, "True");

    // The change is gone, the VM is Started again, the snapshot stays.
    assert_eq!(read_marker(&io, "system_guest", 13), b"BEFORE-UPDATE");
    assert_eq!(read_marker(&io, "data_guest_0", 11), b"DATA-BEFORE");
    let vm = env.vms.get("guest").await.unwrap();
    assert_eq!(vm.spec.state, DesiredState::Started);
    // The VM was disabled and re-enabled by the restore's field manager (on the test driver
    // this takes milliseconds, too fast to watch the Disabled spec go by).
    assert!(
        vm.metadata.generation.unwrap() >= generation_before + 2,
        "the restore changed spec.state twice"
    );
    let managers: Vec<String> = vm
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.iter().any(|m| m == "seapath-restore"), "{managers:?}");
    assert_eq!(vm_phase(&vm), Some(Phase::Started));
    assert_eq!(snap_names(&io, "system_guest"), ["beforeupdate"]);
    assert!(snap_phase(&env.snaps.get("beforeupdate").await.unwrap()) == Some(SnapshotPhase::Ready));

    // Deleting the snapshot object removes the RBD snapshots from every image.
    env.snaps
        .delete("beforeupdate", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&env.snaps, "beforeupdate").await;
    assert!(snap_names(&io, "system_guest").is_empty());
    assert!(snap_names(&io, "data_guest_0").is_empty());

    let metrics = snapshot_controllers();
    assert!(metrics.operations("VirtualMachineSnapshot", "snapshot", "ok") >= 1);
    assert!(metrics.operations("VirtualMachineRestore", "restore", "ok") >= 1);
}

/// A stopped VM is snapshotted and restored too, and stays Stopped; Retain keeps the RBD
/// snapshots when the object goes.
#[tokio::test]
async fn stopped_vm_and_retain() {
    let env = setup("snap-stopped").await;
    create_vm(&env.vms, "quiet", 0, "Stopped", Phase::Stopped).await;
    let io = rbd(&env.namespace);
    write_marker(&io, "system_quiet", b"ONE");
    env.snaps
        .create(
            &PostParams::default(),
            &snapshot(
                "keep",
                "quiet",
                json!({"snapshotName": "Keep1", "deletionPolicy": "Retain"}),
            ),
        )
        .await
        .unwrap();
    wait_snap_phase(&env, "keep", SnapshotPhase::Ready).await;
    write_marker(&io, "system_quiet", b"TWO");
    env.restores
        .create(&PostParams::default(), &restore("back", "quiet", "keep"))
        .await
        .unwrap();
    let done = wait_restore_phase(&env, "back", RestorePhase::Succeeded).await;
    assert_eq!(done.status.unwrap().previous_state, Some(DesiredState::Stopped));
    assert_eq!(read_marker(&io, "system_quiet", 3), b"ONE");
    let vm = env.vms.get("quiet").await.unwrap();
    assert_eq!(
        (vm.spec.state, vm_phase(&vm)),
        (DesiredState::Stopped, Some(Phase::Stopped))
    );

    env.snaps.delete("keep", &DeleteParams::default()).await.unwrap();
    wait_gone(&env.snaps, "keep").await;
    assert_eq!(
        snap_names(&io, "system_quiet"),
        ["Keep1"],
        "Retain keeps the RBD snapshot"
    );
}

/// Names SEAPATH cannot carry are refused by the API server.
#[tokio::test]
async fn bad_names_are_refused_at_admission() {
    let env = setup("snap-admission").await;
    let err = env
        .snaps
        .create(
            &PostParams::default(),
            &snapshot("before-update", "vm", json!({})),
        )
        .await
        .expect_err("a name with '-' cannot name an RBD snapshot");
    assert!(err.to_string().contains("spec.snapshotName"), "{err}");
    let err = env
        .snaps
        .create(
            &PostParams::default(),
            &snapshot("ok", "vm", json!({"snapshotName": "bad_name"})),
        )
        .await
        .expect_err("snapshotName with '_'");
    assert!(err.to_string().contains("letters and digits"), "{err}");
    let err = env
        .snaps
        .create(
            &PostParams::default(),
            &snapshot("ok", "vm", json!({"failureDeadline": "soon"})),
        )
        .await
        .expect_err("bad duration");
    assert!(err.to_string().contains("failureDeadline"), "{err}");
    let err = env
        .schedules
        .create(
            &PostParams::default(),
            &schedule("s", json!({"vmNames": ["vm"], "schedule": "every day"})),
        )
        .await
        .expect_err("not a cron expression");
    assert!(err.to_string().contains("cron"), "{err}");
    let err = env
        .schedules
        .create(&PostParams::default(), &schedule("s", json!({"vmNames": ["vm"]})))
        .await
        .expect_err("neither schedule nor retention");
    assert!(err.to_string().contains("spec.schedule"), "{err}");
    // A restore's spec cannot change.
    env.restores
        .create(&PostParams::default(), &restore("r", "vm", "s"))
        .await
        .unwrap();
    let err = env
        .restores
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"snapshot": "other"}})),
        )
        .await
        .expect_err("immutable spec");
    assert!(err.to_string().contains("immutable"), "{err}");
    // An optional immutable field cannot be removed to be set again afterwards.
    env.snaps
        .create(
            &PostParams::default(),
            &snapshot("named", "vm", json!({"snapshotName": "First1"})),
        )
        .await
        .unwrap();
    for change in [json!(null), json!("Second2")] {
        let err = env
            .snaps
            .patch(
                "named",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"snapshotName": change}})),
            )
            .await
            .expect_err("snapshotName is immutable");
        assert!(
            err.to_string().contains("spec.snapshotName is immutable"),
            "{err}"
        );
    }
}

/// A VM that does not exist: Pending with a condition, Failed at the deadline; a VM being
/// deleted: Failed at once. A Failed snapshot is deleted at once.
#[tokio::test]
async fn missing_vm_and_deadline() {
    let env = setup("snap-novm").await;
    env.snaps
        .create(
            &PostParams::default(),
            &snapshot("ghost", "nosuchvm", json!({"failureDeadline": "4s"})),
        )
        .await
        .unwrap();
    let pending = wait_for(&env.snaps, "ghost", "reason VmNotFound", |s| {
        snap_ready(s).is_some_and(|c| c.reason == "VmNotFound")
    })
    .await;
    assert_eq!(snap_phase(&pending), Some(SnapshotPhase::Pending));
    let failed = wait_snap_phase(&env, "ghost", SnapshotPhase::Failed).await;
    let cond = snap_ready(&failed).unwrap();
    assert_eq!(cond.reason, "DeadlineExceeded");
    assert!(
        cond.message.contains("nosuchvm"),
        "the last state is in the message: {}",
        cond.message
    );
    assert!(failed.status.as_ref().unwrap().error.is_some());
    env.snaps.delete("ghost", &DeleteParams::default()).await.unwrap();
    wait_gone(&env.snaps, "ghost").await;

    // A VM being deleted (held by a finalizer of the test).
    create_vm(&env.vms, "dying", 0, "Disabled", Phase::Disabled).await;
    env.vms
        .patch(
            "dying",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["seapath.lfenergy.org/storage", "test/hold"]}})),
        )
        .await
        .unwrap();
    env.vms.delete("dying", &DeleteParams::default()).await.unwrap();
    env.snaps
        .create(&PostParams::default(), &snapshot("late", "dying", json!({})))
        .await
        .unwrap();
    let failed = wait_snap_phase(&env, "late", SnapshotPhase::Failed).await;
    assert_eq!(snap_ready(&failed).unwrap().reason, "VmBeingDeleted");
    // The test's finalizer alone is removed. The controller may remove its own between the
    // read and the write, and no finalizer can be added back then: read again and retry.
    let mut attempts = 0;
    loop {
        let vm = env.vms.get("dying").await.unwrap();
        let others: Vec<&String> = vm.finalizers().iter().filter(|f| *f != "test/hold").collect();
        let patch = json!({"metadata": {"finalizers": others, "resourceVersion": vm.resource_version()}});
        match env
            .vms
            .patch("dying", &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => break,
            Err(e) if attempts < 10 => {
                attempts += 1;
                eprintln!("removing the test's finalizer again: {e}");
            }
            Err(e) => panic!("removing the test's finalizer: {e}"),
        }
    }
    wait_gone(&env.vms, "dying").await;
}

/// Two snapshots of one name, and a name taken outside the operator: refused, and the
/// snapshots that are not the object's are never removed.
#[tokio::test]
async fn duplicate_and_foreign_names() {
    let env = setup("snap-dup").await;
    create_vm(&env.vms, "dup", 1, "Started", Phase::Started).await;
    let io = rbd(&env.namespace);
    env.snaps
        .create(
            &PostParams::default(),
            &snapshot("first", "dup", json!({"snapshotName": "same"})),
        )
        .await
        .unwrap();
    wait_snap_phase(&env, "first", SnapshotPhase::Ready).await;
    env.snaps
        .create(
            &PostParams::default(),
            &snapshot("second", "dup", json!({"snapshotName": "same"})),
        )
        .await
        .unwrap();
    let second = wait_snap_phase(&env, "second", SnapshotPhase::Failed).await;
    assert_eq!(snap_ready(&second).unwrap().reason, "DuplicateName");
    assert!(snap_ready(&second).unwrap().message.contains("first"));
    env.snaps
        .delete("second", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&env.snaps, "second").await;
    assert_eq!(
        snap_names(&io, "system_dup"),
        ["same"],
        "the first object's snapshot stays"
    );

    // Taken by rbd / vm_manager on one image only.
    io.open_image("data_dup_0")
        .unwrap()
        .snap_create("manual")
        .unwrap();
    env.snaps
        .create(&PostParams::default(), &snapshot("manual", "dup", json!({})))
        .await
        .unwrap();
    let manual = wait_snap_phase(&env, "manual", SnapshotPhase::Failed).await;
    assert_eq!(snap_ready(&manual).unwrap().reason, "AlreadyExists");
    assert!(snap_ready(&manual).unwrap().message.contains("data_dup_0"));
    env.snaps
        .delete("manual", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&env.snaps, "manual").await;
    assert_eq!(
        snap_names(&io, "data_dup_0"),
        ["same", "manual"],
        "the foreign snapshot stays"
    );
    assert_eq!(snap_names(&io, "system_dup"), ["same"], "nothing half-made");
}

/// Restores refused before anything stops: a snapshot of another VM, a snapshot missing on one
/// disk, a second restore of the same VM.
#[tokio::test]
async fn restore_refusals() {
    let env = setup("snap-refuse").await;
    create_vm(&env.vms, "alpha", 1, "Started", Phase::Started).await;
    create_vm(&env.vms, "beta", 0, "Started", Phase::Started).await;
    let io = rbd(&env.namespace);
    for (name, vm) in [
        ("alphasnap", "alpha"),
        ("betasnap", "beta"),
        ("alphatwo", "alpha"),
    ] {
        env.snaps
            .create(&PostParams::default(), &snapshot(name, vm, json!({})))
            .await
            .unwrap();
    }
    for name in ["alphasnap", "betasnap", "alphatwo"] {
        wait_snap_phase(&env, name, SnapshotPhase::Ready).await;
    }

    env.restores
        .create(&PostParams::default(), &restore("wrongvm", "alpha", "betasnap"))
        .await
        .unwrap();
    let refused = wait_restore_phase(&env, "wrongvm", RestorePhase::Failed).await;
    assert_eq!(restore_ready(&refused).unwrap().reason, "SnapshotOfAnotherVm");
    assert!(
        restore_ready(&refused)
            .unwrap()
            .message
            .contains("nothing was stopped")
    );

    // Removed behind the operator's back from the data disk.
    io.open_image("data_alpha_0")
        .unwrap()
        .snap_remove("alphatwo")
        .unwrap();
    env.restores
        .create(&PostParams::default(), &restore("partial", "alpha", "alphatwo"))
        .await
        .unwrap();
    let refused = wait_restore_phase(&env, "partial", RestorePhase::Failed).await;
    assert_eq!(restore_ready(&refused).unwrap().reason, "SnapshotIncomplete");
    assert!(restore_ready(&refused).unwrap().message.contains("data_alpha_0"));
    let vm = env.vms.get("alpha").await.unwrap();
    assert_eq!(vm.spec.state, DesiredState::Started, "nothing was stopped");
    assert_eq!(vm_phase(&vm), Some(Phase::Started));
    // The Ready snapshot notices its RBD snapshot is gone.
    let gone = wait_for(&env.snaps, "alphatwo", "readyToUse false", |s| {
        !s.status.as_ref().unwrap().ready_to_use
    });
    // (checked at the next verification; kick it with an annotation)
    env.snaps
        .patch(
            "alphatwo",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"kick": "1"}}})),
        )
        .await
        .unwrap();
    let gone = gone.await;
    assert_eq!(snap_ready(&gone).unwrap().reason, "SnapshotMissing");

    // Two restores of one VM: the second is refused while the first is unfinished. A restore
    // runs in a fraction of a second here, so the first one is held in Pending by a snapshot
    // that does not exist yet: a running one could end before the second is even seen.
    env.restores
        .create(&PostParams::default(), &restore("one", "alpha", "late"))
        .await
        .unwrap();
    wait_for(&env.restores, "one", "waiting for its snapshot", |r| {
        restore_ready(r).is_some_and(|c| c.reason == "SnapshotNotFound")
    })
    .await;
    env.restores
        .create(&PostParams::default(), &restore("two", "alpha", "alphasnap"))
        .await
        .unwrap();
    let refused = wait_restore_phase(&env, "two", RestorePhase::Failed).await;
    assert_eq!(restore_ready(&refused).unwrap().reason, "RestoreInProgress");
    assert!(restore_ready(&refused).unwrap().message.contains("one"));
    let vm = env.vms.get("alpha").await.unwrap();
    assert_eq!(vm.spec.state, DesiredState::Started, "nothing was stopped");
    env.snaps
        .create(&PostParams::default(), &snapshot("late", "alpha", json!({})))
        .await
        .unwrap();
    wait_restore_phase(&env, "one", RestorePhase::Succeeded).await;
    assert_eq!(
        vm_phase(&env.vms.get("alpha").await.unwrap()),
        Some(Phase::Started)
    );
}

/// Snapshots of a deleted VM stop being ready to use, and say whether their data went with the
/// VM's disks or stays on retained ones.
#[tokio::test]
async fn snapshots_of_a_deleted_vm_say_where_their_data_is() {
    let env = setup("snap-vmgone").await;
    for vm in ["doomed", "kept"] {
        create_vm(&env.vms, vm, 0, "Disabled", Phase::Disabled).await;
        env.snaps
            .create(
                &PostParams::default(),
                &snapshot(&format!("{vm}snap"), vm, json!({})),
            )
            .await
            .unwrap();
    }
    let io = rbd(&env.namespace);
    env.vms
        .patch(
            "kept",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Retain"}})),
        )
        .await
        .unwrap();
    for vm in ["doomed", "kept"] {
        wait_snap_phase(&env, &format!("{vm}snap"), SnapshotPhase::Ready).await;
        env.vms.delete(vm, &DeleteParams::default()).await.unwrap();
        wait_gone(&env.vms, vm).await;
    }

    let unusable = |name: &'static str| {
        wait_for(&env.snaps, name, "not ready to use", |s| {
            !s.status.as_ref().unwrap().ready_to_use
        })
    };
    let doomed = unusable("doomedsnap").await;
    let ready = snap_ready(&doomed).unwrap();
    assert_eq!(
        (ready.reason.as_str(), ready.status.as_str()),
        ("VmDeleted", "False")
    );
    assert_eq!(
        ready.message,
        "VirtualMachine doomed was deleted with its disks (deletionPolicy Delete): RBD snapshot 'doomedsnap' \
         went with them and nothing can be restored from it; delete this object"
    );
    let kept = unusable("keptsnap").await;
    let ready = snap_ready(&kept).unwrap();
    assert_eq!(
        (ready.reason.as_str(), ready.status.as_str()),
        ("VmDeletedDisksRetained", "False")
    );
    assert_eq!(
        ready.message,
        "VirtualMachine kept was deleted with deletionPolicy Retain: RBD snapshot 'keptsnap' stays on its \
         retained images (readable with rbd), but no VirtualMachineRestore can use it, the VM it was taken \
         of being gone"
    );
    assert_eq!(snap_names(&io, "system_kept"), ["keptsnap"]);
}

/// A restore of a snapshot that never comes fails after a short wait, and no longer holds
/// back the VM's later restores.
#[tokio::test]
async fn a_restore_of_a_missing_snapshot_fails_and_lets_the_next_one_go() {
    let env = setup("snap-missing").await;
    create_vm(&env.vms, "gamma", 0, "Stopped", Phase::Stopped).await;
    env.snaps
        .create(&PostParams::default(), &snapshot("real", "gamma", json!({})))
        .await
        .unwrap();
    wait_snap_phase(&env, "real", SnapshotPhase::Ready).await;

    env.restores
        .create(&PostParams::default(), &restore("lost", "gamma", "never"))
        .await
        .unwrap();
    let waiting = wait_for(&env.restores, "lost", "waiting for its snapshot", |r| {
        restore_ready(r).is_some_and(|c| c.reason == "SnapshotNotFound")
    })
    .await;
    let message = &restore_ready(&waiting).unwrap().message;
    assert!(
        message.starts_with("VirtualMachineSnapshot never does not exist; the restore fails in "),
        "{message}"
    );
    let failed = wait_restore_phase(&env, "lost", RestorePhase::Failed).await;
    let ready = restore_ready(&failed).unwrap();
    assert_eq!(ready.reason, "SnapshotNotFound");
    assert_eq!(
        ready.message,
        "VirtualMachineSnapshot never does not exist (waited 30 s for it); create the snapshot, then a new \
         VirtualMachineRestore. Later restores of VirtualMachine gamma are no longer held back; nothing was \
         stopped or changed"
    );

    env.restores
        .create(&PostParams::default(), &restore("next", "gamma", "real"))
        .await
        .unwrap();
    wait_restore_phase(&env, "next", RestorePhase::Succeeded).await;
}

/// Deleting a snapshot a clone depends on is refused with a condition until the clone goes.
#[tokio::test]
async fn deletion_waits_for_dependent_clones() {
    let env = setup("snap-clone").await;
    create_vm(&env.vms, "parent", 0, "Disabled", Phase::Disabled).await;
    let io = rbd(&env.namespace);
    env.snaps
        .create(&PostParams::default(), &snapshot("golden", "parent", json!({})))
        .await
        .unwrap();
    wait_snap_phase(&env, "golden", SnapshotPhase::Ready).await;
    let image = io.open_image("system_parent").unwrap();
    image.snap_protect("golden").unwrap();
    io.clone_image(
        "system_parent",
        "golden",
        &io,
        "child",
        &ImageOptions {
            clone_format: Some(CloneFormat::V1),
            ..Default::default()
        },
    )
    .unwrap();
    env.snaps
        .delete("golden", &DeleteParams::default())
        .await
        .unwrap();
    let held = wait_for(&env.snaps, "golden", "HasDependentClones", |s| {
        snap_ready(s).is_some_and(|c| c.reason == "HasDependentClones")
    })
    .await;
    assert_eq!(snap_phase(&held), Some(SnapshotPhase::Deleting));
    assert!(
        snap_ready(&held).unwrap().message.contains("child"),
        "{:?}",
        snap_ready(&held)
    );
    assert_eq!(snap_names(&io, "system_parent"), ["golden"]);
    io.remove_image("child").unwrap();
    wait_gone(&env.snaps, "golden").await;
    assert!(
        snap_names(&io, "system_parent").is_empty(),
        "unprotected and removed"
    );
}

fn owned_snapshot(name: &str, vm: &str, sched: &VirtualMachineSnapshotSchedule) -> VirtualMachineSnapshot {
    let mut snap = snapshot(name, vm, json!({}));
    snap.metadata.labels = Some(
        [
            ("seapath.lfenergy.org/schedule".to_string(), sched.name_any()),
            (
                "seapath.lfenergy.org/schedule-uid".to_string(),
                sched.uid().unwrap(),
            ),
            ("seapath.lfenergy.org/vm".to_string(), vm.to_string()),
        ]
        .into(),
    );
    snap
}

fn sched_ready(s: &VirtualMachineSnapshotSchedule) -> Option<&Condition> {
    ready(s.status.as_ref().map(|st| &st.conditions))
}

/// Retention keeps the last N of the snapshots the schedule owns and never touches the others.
#[tokio::test]
async fn retention_purges_only_what_the_schedule_owns() {
    let env = setup("snap-retain").await;
    create_vm(&env.vms, "purged", 0, "Disabled", Phase::Disabled).await;
    let io = rbd(&env.namespace);
    let sched = env
        .schedules
        .create(
            &PostParams::default(),
            &schedule(
                "purge",
                json!({"vmNames": ["purged"], "suspend": true, "retention": {"keepLast": 1}}),
            ),
        )
        .await
        .unwrap();
    for name in ["old1", "old2", "new3"] {
        env.snaps
            .create(&PostParams::default(), &owned_snapshot(name, "purged", &sched))
            .await
            .unwrap();
        wait_snap_phase(&env, name, SnapshotPhase::Ready).await;
    }
    env.snaps
        .create(&PostParams::default(), &snapshot("mine", "purged", json!({})))
        .await
        .unwrap();
    wait_snap_phase(&env, "mine", SnapshotPhase::Ready).await;
    // Suspended: nothing deleted.
    wait_for(&env.schedules, "purge", "Suspended", |s| {
        sched_ready(s).is_some_and(|c| c.reason == "Suspended")
    })
    .await;
    assert_eq!(env.snaps.list(&Default::default()).await.unwrap().items.len(), 4);

    env.schedules
        .patch(
            "purge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}})),
        )
        .await
        .unwrap();
    wait_gone(&env.snaps, "old1").await;
    wait_gone(&env.snaps, "old2").await;
    let s = wait_for(&env.schedules, "purge", "purgedTotal 2", |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.purged_total == 2 && st.snapshots == ["new3"])
    })
    .await;
    assert_eq!(sched_ready(&s).unwrap().status, "True");
    let mut left = snap_names(&io, "system_purged");
    left.sort();
    assert_eq!(
        left,
        ["mine", "new3"],
        "the unowned snapshot and the newest owned one stay"
    );
}

/// With includeUnowned, retention never touches another schedule's snapshots, and deletes the
/// ones taken by hand only once older than unownedMinAge, which admission requires with it.
#[tokio::test]
async fn retention_of_unowned_snapshots_is_guarded() {
    let env = setup("snap-unowned").await;
    create_vm(&env.vms, "guarded", 0, "Disabled", Phase::Disabled).await;
    let io = rbd(&env.namespace);
    let purge_all = |min_age: Option<&str>| {
        let mut retention = json!({"all": true, "includeUnowned": true});
        if let Some(min_age) = min_age {
            retention["unownedMinAge"] = json!(min_age);
        }
        json!({"vmNames": ["guarded"], "retention": retention})
    };
    let err = env
        .schedules
        .create(&PostParams::default(), &schedule("rash", purge_all(None)))
        .await
        .expect_err("includeUnowned without unownedMinAge");
    assert!(
        err.to_string().contains(
            "spec.retention.unownedMinAge: Invalid value: includeUnowned deletes snapshots taken by hand: set unownedMinAge too"
        ),
        "{err}"
    );

    let other = env
        .schedules
        .create(
            &PostParams::default(),
            &schedule(
                "other",
                json!({"vmNames": ["guarded"], "suspend": true, "retention": {"keepLast": 5}}),
            ),
        )
        .await
        .unwrap();
    env.snaps
        .create(
            &PostParams::default(),
            &owned_snapshot("theirs", "guarded", &other),
        )
        .await
        .unwrap();
    env.snaps
        .create(&PostParams::default(), &snapshot("mine", "guarded", json!({})))
        .await
        .unwrap();
    wait_snap_phase(&env, "theirs", SnapshotPhase::Ready).await;
    wait_snap_phase(&env, "mine", SnapshotPhase::Ready).await;

    let purge = env
        .schedules
        .create(&PostParams::default(), &schedule("purge", purge_all(Some("1h"))))
        .await
        .unwrap();
    env.snaps
        .create(&PostParams::default(), &owned_snapshot("ours", "guarded", &purge))
        .await
        .unwrap();
    wait_gone(&env.snaps, "ours").await;
    let s = wait_for(&env.schedules, "purge", "the snapshot by hand kept", |s| {
        sched_ready(s).is_some_and(|c| c.message.contains("taken by hand"))
    })
    .await;
    let ready = sched_ready(&s).unwrap();
    assert_eq!((ready.reason.as_str(), ready.status.as_str()), ("Active", "True"));
    assert_eq!(
        ready.message,
        "1 VM(s); retention only; 1 snapshot(s) taken by hand kept until older than unownedMinAge (1h)"
    );
    env.snaps.get("mine").await.expect("the snapshot by hand stays");
    env.snaps.get("theirs").await.expect("the other schedule's stays");

    // Saying any age may go: the snapshot by hand goes, the other schedule's still stays.
    env.schedules
        .patch(
            "purge",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"retention": {"unownedMinAge": "0"}}})),
        )
        .await
        .unwrap();
    wait_gone(&env.snaps, "mine").await;
    env.snaps.get("theirs").await.expect("never another schedule's");
    assert_eq!(snap_names(&io, "system_guarded"), ["theirs"]);
}

/// A cron schedule takes snapshots named after itself and the time; a VM that cannot be
/// snapshotted makes the run fail, and the schedule suspends itself after maxFailures.
#[tokio::test]
async fn cron_runs_and_auto_suspends() {
    let env = setup("snap-cron").await;
    create_vm(&env.vms, "tick", 0, "Disabled", Phase::Disabled).await;
    let io = rbd(&env.namespace);
    env.schedules
        .create(
            &PostParams::default(),
            &schedule("minutely", json!({"vmNames": ["tick"], "schedule": "* * * * *", "timeZone": "Europe/Paris", "retention": {"keepLast": 5}})),
        )
        .await
        .unwrap();
    env.schedules
        .create(
            &PostParams::default(),
            &schedule("broken", json!({"vmNames": ["nosuchvm"], "schedule": "* * * * *", "maxFailures": 1, "snapshotDeadline": "2s"})),
        )
        .await
        .unwrap();
    let s = wait_for(&env.schedules, "minutely", "nextScheduleTime", |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.next_schedule_time.is_some())
    })
    .await;
    assert_eq!(sched_ready(&s).unwrap().reason, "Active");
    let taken = wait_for_within(
        &env.schedules,
        "minutely",
        "a run",
        Duration::from_secs(90),
        |s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.last_successful_time.is_some())
        },
    )
    .await;
    let st = taken.status.unwrap();
    let name = st.snapshots.last().expect("an owned snapshot").clone();
    assert!(name.starts_with("minutely-tick-"), "{name}");
    let snap = env.snaps.get(&name).await.unwrap();
    assert_eq!(snap.labels()["seapath.lfenergy.org/schedule"], "minutely");
    let rbd_name = snap.status.unwrap().snapshot_name.unwrap();
    assert!(
        rbd_name.starts_with("minutely") && rbd_name.chars().all(|c| c.is_ascii_alphanumeric()),
        "{rbd_name}"
    );
    assert!(snap_names(&io, "system_tick").contains(&rbd_name));

    let broken = wait_for_within(
        &env.schedules,
        "broken",
        "AutoSuspended",
        Duration::from_secs(90),
        |s| sched_ready(s).is_some_and(|c| c.reason == "AutoSuspended"),
    )
    .await;
    let st = broken.status.unwrap();
    assert_eq!(st.consecutive_failures, 1);
    assert!(st.next_schedule_time.is_none());
}

/// Cron expressions and time zones the API server cannot check end in a condition.
#[tokio::test]
async fn invalid_cron_and_time_zone() {
    let env = setup("snap-badcron").await;
    env.schedules
        .create(
            &PostParams::default(),
            &schedule("minute61", json!({"vmNames": ["x"], "schedule": "61 * * * *"})),
        )
        .await
        .expect("passes admission: 5 fields");
    env.schedules
        .create(
            &PostParams::default(),
            &schedule(
                "mars",
                json!({"vmNames": ["x"], "schedule": "@daily", "timeZone": "Mars/Olympus"}),
            ),
        )
        .await
        .unwrap();
    let s = wait_for(&env.schedules, "minute61", "InvalidSchedule", |s| {
        sched_ready(s).is_some_and(|c| c.reason == "InvalidSchedule")
    })
    .await;
    assert!(
        sched_ready(&s).unwrap().message.contains("minute"),
        "{:?}",
        sched_ready(&s)
    );
    let s = wait_for(&env.schedules, "mars", "InvalidTimeZone", |s| {
        sched_ready(s).is_some_and(|c| c.reason == "InvalidTimeZone")
    })
    .await;
    assert!(sched_ready(&s).unwrap().message.contains("Mars/Olympus"));
    assert!(
        s.status
            .as_ref()
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True")
    );
}

fn unmanaged(vm: &VirtualMachine) -> Vec<(String, Vec<String>)> {
    vm.status
        .iter()
        .flat_map(|s| &s.unmanaged_snapshots)
        .map(|u| (u.name.clone(), u.images.clone()))
        .collect()
}

fn pair(name: &str, images: &[&str]) -> (String, Vec<String>) {
    (name.to_string(), images.iter().map(|i| i.to_string()).collect())
}

/// Snapshots taken with rbd (as vm_manager does) show on the VM's status; one on every image
/// is adopted (its ids recorded, owned from then on: deleting the object removes it); one
/// missing on an image is refused and left alone.
#[tokio::test]
async fn snapshots_taken_outside_are_listed_and_adopted() {
    let env = setup("snap-adopt").await;
    create_vm(&env.vms, "guest", 1, "Started", Phase::Started).await;
    let io = rbd(&env.namespace);
    for image in ["system_guest", "data_guest_0"] {
        io.open_image(image).unwrap().snap_create("manual").unwrap();
    }
    io.open_image("system_guest")
        .unwrap()
        .snap_create("partial")
        .unwrap();
    let id_of = |image: &str, name: &str| {
        io.open_image(image)
            .unwrap()
            .snap_list()
            .unwrap()
            .into_iter()
            .find(|s| s.name == name)
            .map(|s| s.id as i64)
            .expect("snapshot taken")
    };
    let manual_ids = [id_of("system_guest", "manual"), id_of("data_guest_0", "manual")];
    let partial_id = id_of("system_guest", "partial");

    // A snapshot of the operator's own is not listed.
    env.snaps
        .create(&PostParams::default(), &snapshot("ours", "guest", json!({})))
        .await
        .unwrap();
    wait_snap_phase(&env, "ours", SnapshotPhase::Ready).await;
    let expected = vec![
        pair("manual", &["system_guest", "data_guest_0"]),
        pair("partial", &["system_guest"]),
    ];
    // Refreshed on changes of the VM's snapshot objects, and every minute.
    let vm = wait_for_within(
        &env.vms,
        "guest",
        "the unmanaged snapshots listed",
        Duration::from_secs(150),
        |vm| unmanaged(vm) == expected,
    )
    .await;
    let listed = &vm.status.as_ref().unwrap().unmanaged_snapshots;
    assert!(listed.iter().all(|u| u.creation_time.is_some()), "{listed:#?}");
    let managers: Vec<String> = vm
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.iter().any(|m| m == "seapath-snapshot-inventory"),
        "{managers:?}"
    );

    // Adopt the complete one.
    env.snaps
        .create(
            &PostParams::default(),
            &snapshot(
                "adopted",
                "guest",
                json!({"snapshotName": "manual", "adopt": true}),
            ),
        )
        .await
        .unwrap();
    let adopted = wait_snap_phase(&env, "adopted", SnapshotPhase::Ready).await;
    let st = adopted.status.clone().unwrap();
    assert!(st.ready_to_use);
    assert_eq!(st.snapshot_name.as_deref(), Some("manual"));
    assert!(st.creation_time.is_some());
    let ids: Vec<Option<i64>> = st.disks.iter().map(|d| d.snapshot_id).collect();
    assert_eq!(ids, [Some(manual_ids[0]), Some(manual_ids[1])]);
    assert_eq!(st.disks[0].size_bytes, Some(16 << 20));
    assert_eq!(snap_ready(&adopted).unwrap().status, "True");
    wait_for_within(
        &env.vms,
        "guest",
        "the adopted snapshot out of the list",
        Duration::from_secs(150),
        |vm| unmanaged(vm) == [pair("partial", &["system_guest"])],
    )
    .await;

    // The incomplete one: refused, nothing touched.
    env.snaps
        .create(
            &PostParams::default(),
            &snapshot(
                "incomplete",
                "guest",
                json!({"snapshotName": "partial", "adopt": true}),
            ),
        )
        .await
        .unwrap();
    let refused = wait_snap_phase(&env, "incomplete", SnapshotPhase::Failed).await;
    let reason = snap_ready(&refused).unwrap();
    assert_eq!(reason.reason, "SnapshotIncomplete");
    assert!(reason.message.contains("data_guest_0"), "{}", reason.message);
    assert!(refused.status.unwrap().disks.is_empty());
    let mut system = snap_names(&io, "system_guest");
    system.sort();
    assert_eq!(system, ["manual", "ours", "partial"]);
    let mut data = snap_names(&io, "data_guest_0");
    data.sort();
    assert_eq!(data, ["manual", "ours"]);
    env.snaps
        .delete("incomplete", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&env.snaps, "incomplete").await;
    assert!(snap_names(&io, "system_guest").contains(&"partial".to_string()));

    // Owned from now on: deleting the object removes the adopted snapshot from every image.
    env.snaps
        .delete("adopted", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&env.snaps, "adopted").await;
    assert!(!snap_names(&io, "system_guest").contains(&"manual".to_string()));
    assert!(!snap_names(&io, "data_guest_0").contains(&"manual".to_string()));
    assert_eq!(
        id_of("system_guest", "partial"),
        partial_id,
        "the unadopted one is untouched"
    );
}

/// A snapshot removal killed after librbd moved the snapshot to its trash (its first step)
/// leaves it there with nothing to remove it: the VM's inventory does.
#[tokio::test]
async fn snapshots_left_in_librbds_trash_are_removed() {
    let env = setup("snap-trash").await;
    create_vm(&env.vms, "guest", 0, "Stopped", Phase::Stopped).await;
    let io = rbd(&env.namespace);
    let image = io.open_image("system_guest").unwrap();
    image.snap_create("removed-in-use").unwrap();
    let id = image
        .snap_list()
        .unwrap()
        .into_iter()
        .find(|s| s.name == "removed-in-use")
        .unwrap()
        .id;
    move_to_librbds_trash(&io, &env.namespace, "system_guest", id);
    let trashed = || in_librbds_trash(&io, "system_guest");
    assert_eq!(trashed(), 1, "the premise: librbd kept the snapshot in its trash");

    // Any change of the VM's snapshot objects refreshes its inventory.
    env.snaps
        .create(&PostParams::default(), &snapshot("poke", "guest", json!({})))
        .await
        .unwrap();
    wait_snap_phase(&env, "poke", SnapshotPhase::Ready).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    while trashed() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the trash snapshot is still there"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let left = io
        .open_image_read_only("system_guest", None)
        .unwrap()
        .snap_list()
        .unwrap();
    assert_eq!(left.len(), 1, "the VM's own snapshot stays: {left:?}");
    assert_eq!(left[0].name, "poke");
}

/// A snapshot object whose RBD snapshot librbd left in its trash (a removal that moved it there
/// and stopped): deleting the object removes it from the trash, found by its recorded id, before
/// the object goes; nothing waits for the VM's inventory to sweep it.
#[tokio::test]
async fn a_deleted_snapshot_left_in_librbds_trash_goes_with_its_object() {
    let env = setup("snap-held").await;
    create_vm(&env.vms, "guest", 0, "Stopped", Phase::Stopped).await;
    let io = rbd(&env.namespace);
    env.snaps
        .create(&PostParams::default(), &snapshot("held", "guest", json!({})))
        .await
        .unwrap();
    let ready = wait_snap_phase(&env, "held", SnapshotPhase::Ready).await;
    let id = ready.status.unwrap().disks[0].snapshot_id.unwrap();
    move_to_librbds_trash(&io, &env.namespace, "system_guest", id as u64);
    let trashed = || in_librbds_trash(&io, "system_guest");
    assert_eq!(trashed(), 1, "the premise: the snapshot is in librbd's trash");

    env.snaps.delete("held", &DeleteParams::default()).await.unwrap();
    wait_gone(&env.snaps, "held").await;
    assert_eq!(trashed(), 0, "removed from the trash before its object went");
}

/// How many snapshots of `image` are in librbd's trash, read on a fresh handle (an open one
/// does not see another client's header change).
fn in_librbds_trash(io: &IoCtx, image: &str) -> usize {
    io.open_image_read_only(image, None)
        .unwrap()
        .snap_list()
        .unwrap()
        .into_iter()
        .filter(|s| s.namespace == SnapNamespace::Trash)
        .count()
}

/// Moves snapshot `id` of `image` to librbd's trash, as librbd's removal does first
/// (cls_rbd's snapshot_trash_add), with Ceph's Python binding: what a removal killed right after
/// that step leaves.
fn move_to_librbds_trash(io: &IoCtx, namespace: &str, image: &str, id: u64) {
    let header = format!("rbd_header.{}", io.open_image(image).unwrap().id().unwrap());
    let script = format!(
        "import rados, struct\n\
         c = rados.Rados(conffile='{conf}'); c.connect()\n\
         io = c.open_ioctx('{pool}'); io.set_namespace('{namespace}')\n\
         io.execute('{header}', 'rbd', 'snapshot_trash_add', struct.pack('<Q', {id}))\n",
        conf = std::env::var("CEPH_CONF").unwrap(),
        pool = io.pool(),
    );
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A restore with a target makes a new VM from the snapshot; the source keeps its current
/// content and keeps running. A target name already taken is refused.
#[tokio::test]
async fn restore_into_a_new_vm() {
    let env = setup("snap-newvm").await;
    let source = create_vm(&env.vms, "src", 1, "Started", Phase::Started).await;
    let io = rbd(&env.namespace);
    write_marker(&io, "system_src", b"GOOD");
    write_marker(&io, "data_src_0", b"DATA");
    env.snaps
        .create(&PostParams::default(), &snapshot("before", "src", json!({})))
        .await
        .unwrap();
    wait_snap_phase(&env, "before", SnapshotPhase::Ready).await;
    write_marker(&io, "system_src", b"BAD!");

    let into = |name: &str, target: &str| -> VirtualMachineRestore {
        serde_json::from_value(json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineRestore",
            "metadata": {"name": name},
            "spec": {"vmName": "src", "snapshot": "before", "target": {"name": target}}
        }))
        .unwrap()
    };
    // Checked at admission: a VM name, not the source's.
    for bad in ["Copy", "copy-1", "src"] {
        let err = env
            .restores
            .create(&PostParams::default(), &into("bad", bad))
            .await
            .expect_err("invalid target name");
        assert!(err.to_string().contains("target.name"), "{bad}: {err}");
    }

    // A VM that already has the name is not this restore's: refused, left alone.
    let taken = create_vm(&env.vms, "taken", 0, "Stopped", Phase::Stopped).await;
    env.restores
        .create(&PostParams::default(), &into("clash", "taken"))
        .await
        .unwrap();
    let clash = wait_restore_phase(&env, "clash", RestorePhase::Failed).await;
    assert_eq!(restore_ready(&clash).unwrap().reason, "TargetExists");
    let after = env.vms.get("taken").await.unwrap();
    assert_eq!(after.metadata.generation, taken.metadata.generation);
    assert!(after.spec.system_disk.source.blank.is_some());

    env.restores
        .create(&PostParams::default(), &into("tonew", "copy"))
        .await
        .unwrap();
    let done = wait_for_within(
        &env.restores,
        "tonew",
        "Succeeded",
        Duration::from_secs(120),
        |r| restore_phase(r) == Some(RestorePhase::Succeeded),
    )
    .await;
    let rs = done.status.clone().unwrap();
    assert_eq!(rs.target_vm.as_deref(), Some("copy"));
    assert_eq!(rs.snapshot_name.as_deref(), Some("before"));
    assert!(rs.rolled_back.is_empty());
    assert_eq!(restore_ready(&done).unwrap().status, "True");

    let copy = env.vms.get("copy").await.unwrap();
    assert_eq!(
        copy.labels()
            .get("seapath.lfenergy.org/restore")
            .map(String::as_str),
        Some("tonew")
    );
    assert_eq!(copy.spec.state, DesiredState::Started);
    assert_eq!(read_marker(&io, "system_copy", 4), b"GOOD");
    assert_eq!(read_marker(&io, "data_copy_0", 4), b"DATA");
    // The new VM runs beside the source, with a UUID of its own.
    let copy = wait_for(&env.vms, "copy", "phase Started", |vm| {
        vm_phase(vm) == Some(Phase::Started)
    })
    .await;
    let uuid = |vm: &VirtualMachine| vm.status.as_ref().and_then(|s| s.domain_uuid.clone());
    assert!(uuid(&copy).is_some());
    assert_ne!(uuid(&copy), uuid(&source));

    // The source: its current content, still Started, never disabled.
    assert_eq!(read_marker(&io, "system_src", 4), b"BAD!");
    let src = env.vms.get("src").await.unwrap();
    assert_eq!(src.spec.state, DesiredState::Started);
    assert_eq!(vm_phase(&src), Some(Phase::Started));
    assert_eq!(src.metadata.generation, source.metadata.generation);
}
