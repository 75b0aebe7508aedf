//! The controllers killed in the middle of a purge: a schedule with retention had deleted some
//! of the snapshots it owns (objects kept by their finalizer, one of them with its RBD snapshot
//! already removed) and not yet the others. The test leaves exactly that, *then* starts the
//! snapshot controllers, which must finish the purge: remove what retention selects and what
//! was being deleted, and keep every snapshot the schedule does not own.
//!
//! One test in this binary, so that the controllers start only after the seeding (the VM
//! controller and agents run from the start: the VMs are real).

mod common;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use seapath_operator::api::{
    Phase, SCHEDULE_LABEL, SCHEDULE_UID_LABEL, SCHEDULED_TIME_ANNOTATION, SNAPSHOT_FINALIZER, SnapshotPhase,
    VM_LABEL, VirtualMachine, VirtualMachineSnapshot, VirtualMachineSnapshotSchedule,
};
use serde_json::json;

use common::snapshots::{create_vm, rbd, snap_names, snapshot_controllers, wait_for, wait_gone};

fn as_controller() -> PatchParams {
    PatchParams::apply(seapath_operator::field_manager::SNAPSHOT).force()
}

fn status_patch(status: serde_json::Value, kind: &str) -> Patch<serde_json::Value> {
    Patch::Apply(json!({"apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": kind, "status": status}))
}

#[tokio::test]
async fn killed_controller_finishes_a_purge_and_keeps_what_it_does_not_own() {
    let client = common::admin_client().await;
    common::install_crds(&client).await;
    // The same hypervisor names as tests/snapshot.rs (see tests/snapshot_crash.rs).
    common::operator::operator("snap");
    let namespace = common::fresh_namespace(&client, "purge-crash").await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &namespace);
    let snaps: Api<VirtualMachineSnapshot> = Api::namespaced(client.clone(), &namespace);
    let schedules: Api<VirtualMachineSnapshotSchedule> = Api::namespaced(client.clone(), &namespace);
    let vm = create_vm(&vms, "keepvm", 0, "Started", Phase::Started).await;
    let io = rbd(&namespace);

    // A purge: retention only, keep the newest of the snapshots it owns.
    let schedule: VirtualMachineSnapshotSchedule = serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineSnapshotSchedule",
        "metadata": {"name": "purge"},
        "spec": {"vmNames": ["keepvm"], "retention": {"keepLast": 1}}
    }))
    .unwrap();
    let schedule = schedules.create(&PostParams::default(), &schedule).await.unwrap();
    let uid = schedule.metadata.uid.clone().unwrap();

    // Ready snapshots as the controllers made them, oldest first: (object, owner uid, minutes ago).
    // The schedule owns the old ones and the newest; "mine" is a user's, "foreign" a former
    // schedule's of the same name (another UID).
    let seeded = [
        ("mine", None, 60),
        ("foreign", Some("uid-of-an-earlier-schedule"), 55),
        ("oldone", Some(uid.as_str()), 50),
        ("oldtwo", Some(uid.as_str()), 40),
        ("oldthree", Some(uid.as_str()), 30),
        ("newest", Some(uid.as_str()), 10),
    ];
    for (name, owner, minutes) in seeded {
        let time = Time(Timestamp::now() - SignedDuration::from_mins(minutes));
        let mut labels = BTreeMap::new();
        let mut annotations = BTreeMap::new();
        if let Some(owner) = owner {
            labels.insert(SCHEDULE_LABEL.to_string(), "purge".to_string());
            labels.insert(SCHEDULE_UID_LABEL.to_string(), owner.to_string());
            labels.insert(VM_LABEL.to_string(), "keepvm".to_string());
            annotations.insert(SCHEDULED_TIME_ANNOTATION.to_string(), time.0.to_string());
        }
        let object: VirtualMachineSnapshot = serde_json::from_value(json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineSnapshot",
            "metadata": {"name": name, "labels": labels, "annotations": annotations,
                         "finalizers": [SNAPSHOT_FINALIZER]},
            "spec": {"vmName": "keepvm"}
        }))
        .unwrap();
        snaps.create(&PostParams::default(), &object).await.unwrap();
        io.open_image("system_keepvm").unwrap().snap_create(name).unwrap();
        let id = io
            .open_image("system_keepvm")
            .unwrap()
            .snap_list()
            .unwrap()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap()
            .id;
        snaps
            .patch_status(
                name,
                &as_controller(),
                &status_patch(
                    json!({"phase": "Ready", "readyToUse": true, "snapshotName": name,
                           "startTime": time, "creationTime": time, "vmUid": vm.metadata.uid,
                           "vmState": "Started",
                           "disks": [{"image": "system_keepvm", "snapshotId": id, "sizeBytes": 16 << 20}]}),
                    "VirtualMachineSnapshot",
                ),
            )
            .await
            .unwrap();
    }
    // And one taken by hand, which no object claims.
    io.open_image("system_keepvm")
        .unwrap()
        .snap_create("byhand")
        .unwrap();

    // The purge had deleted "oldone" (its snapshot controller was removing the RBD snapshot)
    // and "oldtwo" (RBD snapshot removed, the finalizer not yet), and not reached "oldthree".
    for name in ["oldone", "oldtwo"] {
        snaps.delete(name, &DeleteParams::default()).await.unwrap();
    }
    // The controller writes its whole status each time (an apply of less would drop the rest).
    let mut deleting = snaps.get("oldone").await.unwrap().status.unwrap();
    deleting.phase = Some(SnapshotPhase::Deleting);
    snaps
        .patch_status(
            "oldone",
            &as_controller(),
            &status_patch(serde_json::to_value(&deleting).unwrap(), "VirtualMachineSnapshot"),
        )
        .await
        .unwrap();
    io.open_image("system_keepvm")
        .unwrap()
        .snap_remove("oldtwo")
        .unwrap();
    schedules
        .patch_status(
            "purge",
            &as_controller(),
            &status_patch(
                json!({"purgedTotal": 2, "snapshots": ["oldthree", "newest"]}),
                "VirtualMachineSnapshotSchedule",
            ),
        )
        .await
        .unwrap();
    let mut before = snap_names(&io, "system_keepvm");
    before.sort();
    assert_eq!(
        before,
        ["byhand", "foreign", "mine", "newest", "oldone", "oldthree"]
    );

    snapshot_controllers();

    for name in ["oldone", "oldtwo", "oldthree"] {
        wait_gone(&snaps, name).await;
    }
    let schedule = wait_for(&schedules, "purge", "the purge finished", |s| {
        s.status
            .as_ref()
            .is_some_and(|st| st.snapshots == ["newest"] && st.purged_total >= 3)
    })
    .await;
    assert_eq!(
        schedule.status.unwrap().purged_total,
        3,
        "the deletions made before the crash are not counted twice"
    );
    let mut after = snap_names(&io, "system_keepvm");
    after.sort();
    assert_eq!(
        after,
        ["byhand", "foreign", "mine", "newest"],
        "only what the schedule owns and retention selects is gone"
    );
    for name in ["mine", "foreign", "newest"] {
        let kept = snaps.get(name).await.unwrap();
        assert!(kept.metadata.deletion_timestamp.is_none(), "{name} was deleted");
        assert_eq!(
            kept.status.and_then(|s| s.phase),
            Some(SnapshotPhase::Ready),
            "{name}"
        );
    }
}
