//! The snapshot controllers killed mid-way: the test leaves exactly what a controller killed
//! at that instant leaves (statuses recording an intent, RBD snapshots taken on some disks, a
//! VM already disabled by a restore), *then* starts the snapshot controllers, which must
//! resume from the statuses: nothing lost, nothing half-made.
//!
//! One test in this binary, so that the controllers start only after the seeding (the VM
//! controller and agents run from the start: the VMs are real).

mod common;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use seapath_operator::api::{
    DesiredState, Phase, RestorePhase, SnapshotDiskStatus, SnapshotPhase, VirtualMachine,
    VirtualMachineRestore, VirtualMachineSnapshot,
};
use serde_json::json;
use std::time::Duration;

use common::snapshots::{
    create_vm, rbd, read_marker, snap_names, snapshot_controllers, wait_for, wait_for_within, write_marker,
};

/// A status written as the controller writes it (server-side apply, its field manager).
fn status_patch(status: serde_json::Value, kind: &str) -> Patch<serde_json::Value> {
    Patch::Apply(json!({"apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": kind, "status": status}))
}

fn as_controller() -> PatchParams {
    PatchParams::apply(seapath_operator::field_manager::SNAPSHOT).force()
}

#[tokio::test]
async fn killed_controller_resumes_snapshots_and_restores() {
    let client = common::admin_client().await;
    common::install_crds(&client).await;
    // The same hypervisor names as tests/snapshot.rs: a VM is never placed on a hypervisor
    // whose agent died with the other binary (its heartbeat stays fresh for a while).
    common::operator::operator("snap");
    let namespace = common::fresh_namespace(&client, "snap-crash").await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &namespace);
    let snaps: Api<VirtualMachineSnapshot> = Api::namespaced(client.clone(), &namespace);
    let restores: Api<VirtualMachineRestore> = Api::namespaced(client.clone(), &namespace);
    create_vm(&vms, "crashvm", 1, "Started", Phase::Started).await;
    let vm = create_vm(&vms, "victim", 0, "Started", Phase::Started).await;
    let io = rbd(&namespace);
    let now = || Time(Timestamp::now());

    // 1. Killed after recording InProgress and taking the snapshot of the system disk only.
    let snap: VirtualMachineSnapshot = serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineSnapshot",
        "metadata": {"name": "midway"}, "spec": {"vmName": "crashvm", "failureDeadline": "0"}
    }))
    .unwrap();
    snaps.create(&PostParams::default(), &snap).await.unwrap();
    let disks = |images: &[&str]| -> Vec<SnapshotDiskStatus> {
        images
            .iter()
            .map(|i| SnapshotDiskStatus {
                image: i.to_string(),
                ..Default::default()
            })
            .collect()
    };
    snaps
        .patch_status(
            "midway",
            &as_controller(),
            &status_patch(
                json!({"phase": "InProgress", "snapshotName": "midway", "startTime": now(),
                       "disks": disks(&["system_crashvm", "data_crashvm_0"])}),
                "VirtualMachineSnapshot",
            ),
        )
        .await
        .unwrap();
    io.open_image("system_crashvm")
        .unwrap()
        .snap_create("midway")
        .unwrap();
    let taken_id = io.open_image("system_crashvm").unwrap().snap_list().unwrap()[0].id;

    // 2. Killed mid-way and past its deadline: the part taken must be removed.
    let late: VirtualMachineSnapshot = serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineSnapshot",
        "metadata": {"name": "toolate"}, "spec": {"vmName": "crashvm", "failureDeadline": "1s"}
    }))
    .unwrap();
    let late = snaps.create(&PostParams::default(), &late).await.unwrap();
    snaps
        .patch_status(
            "toolate",
            &as_controller(),
            &status_patch(
                json!({"phase": "InProgress", "snapshotName": "toolate", "startTime": now(),
                       "disks": disks(&["system_crashvm", "data_crashvm_0"])}),
                "VirtualMachineSnapshot",
            ),
        )
        .await
        .unwrap();
    io.open_image("data_crashvm_0")
        .unwrap()
        .snap_create("toolate")
        .unwrap();

    // 3. A restore killed right after it disabled the VM: a Ready snapshot (as the controller
    // would have made it), a change to the disk, the restore in Stopping, the VM Disabled.
    write_marker(&io, "system_victim", b"GOOD");
    io.open_image("system_victim")
        .unwrap()
        .snap_create("good")
        .unwrap();
    let good_id = io.open_image("system_victim").unwrap().snap_list().unwrap()[0].id;
    write_marker(&io, "system_victim", b"BAD!");
    let good: VirtualMachineSnapshot = serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineSnapshot",
        "metadata": {"name": "good"}, "spec": {"vmName": "victim"}
    }))
    .unwrap();
    snaps.create(&PostParams::default(), &good).await.unwrap();
    snaps
        .patch_status(
            "good",
            &as_controller(),
            &status_patch(
                json!({"phase": "Ready", "readyToUse": true, "snapshotName": "good", "startTime": now(),
                       "creationTime": now(), "vmUid": vm.metadata.uid,
                       "disks": [{"image": "system_victim", "snapshotId": good_id, "sizeBytes": 16 << 20}]}),
                "VirtualMachineSnapshot",
            ),
        )
        .await
        .unwrap();
    let restore: VirtualMachineRestore = serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineRestore",
        "metadata": {"name": "resume"}, "spec": {"vmName": "victim", "snapshot": "good"}
    }))
    .unwrap();
    restores.create(&PostParams::default(), &restore).await.unwrap();
    restores
        .patch_status(
            "resume",
            &as_controller(),
            &status_patch(
                json!({"phase": "Stopping", "previousState": "Started", "snapshotName": "good", "startTime": now()}),
                "VirtualMachineRestore",
            ),
        )
        .await
        .unwrap();
    let as_restore = PatchParams {
        field_manager: Some(seapath_operator::field_manager::RESTORE.into()),
        ..Default::default()
    };
    vms.patch(
        "victim",
        &as_restore,
        &Patch::Merge(json!({"spec": {"state": "Disabled"}})),
    )
    .await
    .unwrap();
    // And the killed controller's librbd client still owns the exclusive lock of the disk.
    die_holding_the_lock(&namespace, "system_victim");

    // The controller comes back, after the late snapshot's deadline (seeding can be faster
    // than its one second).
    let late_deadline = seapath_operator::controller::snapshot::vmsnapshot::deadline(&late)
        .unwrap()
        .expect("a deadline");
    let left = late_deadline.duration_since(Timestamp::now());
    if left.is_positive() {
        tokio::time::sleep(left.unsigned_abs() + Duration::from_millis(100)).await;
    }
    snapshot_controllers();

    let midway = wait_for(&snaps, "midway", "Ready", |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(SnapshotPhase::Ready)
    })
    .await;
    let st = midway.status.unwrap();
    assert_eq!(
        st.disks[0].snapshot_id,
        Some(taken_id as i64),
        "the snapshot taken before the crash is kept, not retaken"
    );
    assert!(st.disks[1].snapshot_id.is_some());
    assert_eq!(snap_names(&io, "system_crashvm"), ["midway"]);
    // "toolate" made part of its snapshot on this image too; it is removed below.
    assert!(snap_names(&io, "data_crashvm_0").contains(&"midway".to_string()));

    let toolate = wait_for(&snaps, "toolate", "Failed and cleaned", |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.phase == Some(SnapshotPhase::Failed) && st.disks.is_empty())
    })
    .await;
    assert_eq!(
        toolate
            .status
            .unwrap()
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .reason,
        "DeadlineExceeded"
    );
    assert_eq!(
        snap_names(&io, "data_crashvm_0"),
        ["midway"],
        "the half-made snapshot was removed"
    );

    // The dead client's watch lasts Ceph's 30 s watch timeout; then its lock is broken.
    let resumed = wait_for_within(&restores, "resume", "Succeeded", Duration::from_secs(120), |r| {
        r.status.as_ref().and_then(|st| st.phase) == Some(RestorePhase::Succeeded)
    })
    .await;
    assert_eq!(resumed.status.unwrap().rolled_back, ["system_victim"]);
    assert_eq!(read_marker(&io, "system_victim", 4), b"GOOD");
    let vm = vms.get("victim").await.unwrap();
    assert_eq!(vm.spec.state, DesiredState::Started);
    assert_eq!(vm.status.unwrap().phase, Some(Phase::Started));
}

/// A librbd client (`rbd bench`) takes the exclusive lock of `image` by writing to it, and is
/// killed holding it, as a controller killed in the middle of a rollback is.
fn die_holding_the_lock(namespace: &str, image: &str) {
    let spec = format!("{}/{namespace}/{image}", common::testbed_env("SEAPATH_CEPH_POOL"));
    let mut bench = std::process::Command::new("rbd")
        .args([
            "--conf",
            &common::testbed_env("CEPH_CONF"),
            "bench",
            "--io-type",
            "write",
        ])
        .args([
            "--io-size",
            "4096",
            "--io-total",
            "1G",
            "--io-pattern",
            "rand",
            &spec,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run rbd bench");
    let io = rbd(namespace);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while io.open_image(image).unwrap().lock_owners().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "rbd bench never took the lock of {spec}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    bench.kill().unwrap();
    bench.wait().unwrap();
    assert!(
        io.open_image(image).unwrap().lock_owners().unwrap().is_some(),
        "the dead client still owns the lock"
    );
}
