//! Ceph unreachable for a while: the test bed's OSD is frozen (SIGSTOP) while a VM is created
//! and a snapshot is taken, then thawed. Every Ceph call of the controller times out (its
//! librados op timeouts are lowered to a few seconds here), the VM and the snapshot say so in a
//! condition, and once Ceph is back both complete with nothing half-made.
//!
//! One test in this binary: freezing the OSD stops Ceph for everything in the process, and the
//! test binaries of the suite run one after the other, so no other test sees the outage.

mod common;

use std::time::Duration;

use kube::api::{Api, PostParams};
use seapath_operator::api::{
    Phase, SnapshotPhase, VirtualMachine, VirtualMachineSnapshot, condition_types as ct,
};
use serde_json::json;

use common::operator::{Options, operator_with};
use common::snapshots::{create_vm, rbd, snap_names, vm_manifest, wait_for, wait_for_within};

fn condition_reason(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> Option<String> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.clone())
}

#[tokio::test]
async fn ceph_unreachable_for_a_while_then_everything_completes() {
    let client = common::admin_client().await;
    common::install_crds(&client).await;
    let timeout = |key: &str| (key.to_owned(), "3".to_owned());
    operator_with(
        "outage",
        Options {
            snapshots: true,
            ceph_options: vec![timeout("rados_osd_op_timeout"), timeout("rados_mon_op_timeout")],
            ..Default::default()
        },
    );
    let namespace = common::fresh_namespace(&client, "ceph-outage").await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &namespace);
    let snaps: Api<VirtualMachineSnapshot> = Api::namespaced(client.clone(), &namespace);
    create_vm(&vms, "steady", 0, "Started", Phase::Started).await;
    let io = rbd(&namespace);

    let frozen = common::Stopped::stop("ceph-osd");
    vms.create(&PostParams::default(), &vm_manifest("during", 1, "Started"))
        .await
        .expect("create VM during the outage");
    let snapshot: VirtualMachineSnapshot = serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineSnapshot",
        "metadata": {"name": "beforeupdate"}, "spec": {"vmName": "steady", "failureDeadline": "10m"}
    }))
    .unwrap();
    snaps
        .create(&PostParams::default(), &snapshot)
        .await
        .expect("create snapshot during the outage");

    let limit = Duration::from_secs(90);
    let during = wait_for_within(
        &vms,
        "during",
        "StorageReady=False CephUnavailable",
        limit,
        |vm| {
            vm.status.as_ref().is_some_and(|s| {
                condition_reason(&s.conditions, ct::STORAGE_READY).as_deref() == Some("CephUnavailable")
            })
        },
    )
    .await;
    let status = during.status.unwrap();
    let storage = status
        .conditions
        .iter()
        .find(|c| c.type_ == ct::STORAGE_READY)
        .unwrap();
    assert_eq!(storage.status, "False");
    assert!(!storage.message.is_empty(), "the condition says what failed");
    assert_ne!(status.phase, Some(Phase::Started));
    let waiting = wait_for_within(
        &snaps,
        "beforeupdate",
        "Ready=False CephUnavailable",
        limit,
        |s| {
            s.status.as_ref().is_some_and(|st| {
                condition_reason(&st.conditions, ct::READY).as_deref() == Some("CephUnavailable")
            })
        },
    )
    .await;
    assert_ne!(waiting.status.unwrap().phase, Some(SnapshotPhase::Ready));
    // The VM that was running before is still reported as it was.
    let steady = vms.get("steady").await.unwrap();
    assert_eq!(steady.status.unwrap().phase, Some(Phase::Started));

    drop(frozen);
    wait_for_within(&vms, "during", "phase Started", limit, |vm| {
        vm.status.as_ref().and_then(|s| s.phase) == Some(Phase::Started)
    })
    .await;
    let snap = wait_for(&snaps, "beforeupdate", "phase Ready", |s| {
        s.status.as_ref().and_then(|st| st.phase) == Some(SnapshotPhase::Ready)
    })
    .await;
    assert!(snap.status.unwrap().disks.iter().all(|d| d.snapshot_id.is_some()));

    // Nothing half-made: no temporary image left, one snapshot of that name on the disk.
    let images = io.list_images().expect("list images");
    assert!(
        images.iter().all(|i| !i.starts_with("tmp_")),
        "temporary images left: {images:?}"
    );
    for image in ["system_during", "data_during_0"] {
        assert!(images.contains(&image.to_string()), "{image} exists");
    }
    assert_eq!(snap_names(&io, "system_steady"), ["beforeupdate"]);
}
