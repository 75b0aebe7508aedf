//! Reconciles one VirtualMachineSnapshot: Pending -> InProgress -> Ready, or Failed; on
//! deletion, removes the RBD snapshots it made (unless Retain).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::join_all;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer;
use tracing::info;

use super::rbd::{self, Removed};
use super::{
    Error, SnapshotContext, VmLock, checks, cron, now, per_image, rbd_name, reset_failures, write_status,
};
use crate::api::{
    OperationError, SNAPSHOT_FINALIZER, SnapshotDeletionPolicy, SnapshotDiskStatus, SnapshotPhase,
    VirtualMachine, VirtualMachineSnapshot, VirtualMachineSnapshotStatus, condition_types as ct,
};
use crate::controller::conditions::{Desired, merge};
use crate::controller::frame;
use crate::controller::storage::StorageError;

const KIND: &str = "VirtualMachineSnapshot";
/// How often a Ready snapshot checks that its RBD snapshots are still there.
pub(super) const VERIFY_EVERY: Duration = Duration::from_secs(300);
const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

/// Ready or Failed: nothing more to do until deleted.
pub fn is_settled(snap: &VirtualMachineSnapshot) -> bool {
    matches!(
        snap.status.as_ref().and_then(|s| s.phase),
        Some(SnapshotPhase::Ready | SnapshotPhase::Failed)
    )
}

/// What a Ready snapshot's check depends on besides Ceph: the object as people change it
/// (spec, labels, annotations; an annotation is how one asks for a check now), not its status.
fn verify_key(snap: &VirtualMachineSnapshot) -> u64 {
    checks::key_of(&(
        snap.metadata.generation,
        &snap.metadata.labels,
        &snap.metadata.annotations,
    ))
}

fn to_system_time(t: &Time) -> SystemTime {
    SystemTime::from(t.0)
}

fn timestamp_of(t: SystemTime) -> Time {
    Time(Timestamp::try_from(t).unwrap_or_else(|_| Timestamp::now()))
}

/// The deadline of the snapshot (`None`: no deadline).
pub fn deadline(snap: &VirtualMachineSnapshot) -> Result<Option<Timestamp>, String> {
    let limit = match snap.spec.failure_deadline.as_deref() {
        None => DEFAULT_DEADLINE,
        Some(text) => cron::parse_duration(text)?,
    };
    if limit.is_zero() {
        return Ok(None);
    }
    let created = snap
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    Ok(created.checked_add(limit).ok())
}

/// Conditions of a phase: `Ready` for `kubectl wait`, `Reconciling`/`Stalled` for kstatus.
fn conditions_for(phase: SnapshotPhase, reason: &str, message: &str) -> Vec<Desired> {
    let ready = phase == SnapshotPhase::Ready && reason == "Ready";
    let working = matches!(
        phase,
        SnapshotPhase::Pending | SnapshotPhase::InProgress | SnapshotPhase::Deleting
    );
    let mut out = vec![Desired::new(ct::READY, ready, reason, message)];
    if working {
        out.push(Desired::new(ct::RECONCILING, true, reason, message));
    }
    if phase == SnapshotPhase::Failed || (phase == SnapshotPhase::Ready && !ready) {
        out.push(Desired::new(ct::STALLED, true, reason, message));
    }
    out
}

struct Writer<'a> {
    api: &'a Api<VirtualMachineSnapshot>,
    snap: &'a VirtualMachineSnapshot,
}

impl Writer<'_> {
    async fn write(
        &self,
        mut status: VirtualMachineSnapshotStatus,
        phase: SnapshotPhase,
        reason: &str,
        message: &str,
    ) -> Result<VirtualMachineSnapshotStatus, Error> {
        let previous = self.snap.status.clone().unwrap_or_default();
        let time = now();
        status.phase = Some(phase);
        status.observed_generation = self.snap.metadata.generation;
        status.conditions = merge(
            &previous.conditions,
            &conditions_for(phase, reason, message),
            self.snap.metadata.generation,
            &time,
        );
        if status != previous {
            if previous.phase != Some(phase) {
                info!(?phase, reason, "snapshot phase");
            }
            write_status(self.api, self.snap, &status).await?;
        }
        Ok(status)
    }
}

pub async fn reconcile(
    snap: Arc<VirtualMachineSnapshot>,
    ctx: Arc<SnapshotContext>,
) -> Result<Action, Error> {
    let api: Api<VirtualMachineSnapshot> =
        Api::namespaced(ctx.client.clone(), &snap.namespace().unwrap_or_default());
    frame::finalized(
        KIND,
        &api,
        SNAPSHOT_FINALIZER,
        snap,
        &ctx.metrics,
        |event| async {
            match event {
                finalizer::Event::Apply(snap) => apply(&snap, &ctx, &api).await,
                finalizer::Event::Cleanup(snap) => {
                    let uid = snap.metadata.uid.clone().unwrap_or_default();
                    if ctx.cleaned.contains(&uid) {
                        return Ok(Action::await_change());
                    }
                    let done = cleanup(&snap, &ctx, &api).await;
                    if done.is_ok() {
                        ctx.cleaned.insert(&uid);
                        ctx.verified.forget(&uid);
                    }
                    done
                }
            }
        },
    )
    .await
}

async fn apply(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    api: &Api<VirtualMachineSnapshot>,
) -> Result<Action, Error> {
    let writer = Writer { api, snap };
    let status = snap.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or(SnapshotPhase::Pending);
    match phase {
        SnapshotPhase::Ready => verify(snap, ctx, &writer, status).await,
        SnapshotPhase::Failed => {
            clean_failed(snap, ctx, &writer, status).await?;
            Ok(Action::await_change())
        }
        SnapshotPhase::Pending | SnapshotPhase::InProgress | SnapshotPhase::Deleting => {
            let deadline = match deadline(snap) {
                Ok(d) => d,
                Err(e) => return fail(snap, ctx, &writer, status, "InvalidSpec", &e).await,
            };
            if let Some(deadline) = deadline
                && Timestamp::now() > deadline
            {
                let message = format!(
                    "the snapshot did not complete before its failureDeadline ({}); the part taken is removed",
                    snap.spec.failure_deadline.as_deref().unwrap_or("5m")
                );
                let message = match status.conditions.iter().find(|c| c.type_ == ct::READY) {
                    Some(c) if !c.message.is_empty() => format!("{message}. Last state: {}", c.message),
                    _ => message,
                };
                return fail(snap, ctx, &writer, status, "DeadlineExceeded", &message).await;
            }
            take(snap, ctx, &writer, status, deadline).await
        }
    }
}

/// Whether the object as stored (not as cached) is still Pending.
async fn still_pending(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    namespace: &str,
) -> Result<bool, Error> {
    let api: Api<VirtualMachineSnapshot> = Api::namespaced(ctx.client.clone(), namespace);
    Ok(api.get_opt(&snap.name_any()).await?.is_some_and(|stored| {
        stored
            .status
            .and_then(|s| s.phase)
            .unwrap_or(SnapshotPhase::Pending)
            == SnapshotPhase::Pending
    }))
}

/// Pending and InProgress: check, record the intent, take the snapshots.
async fn take(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    writer: &Writer<'_>,
    status: VirtualMachineSnapshotStatus,
    deadline: Option<Timestamp>,
) -> Result<Action, Error> {
    let status = if status.phase.unwrap_or(SnapshotPhase::Pending) == SnapshotPhase::Pending {
        match begin(snap, ctx, writer, status, deadline).await? {
            ControlFlow::Continue(status) => status,
            ControlFlow::Break(action) => return Ok(action),
        }
    } else {
        status
    };
    finish(snap, ctx, writer, status, deadline).await
}

/// The next run past the deadline marks the snapshot Failed and cleans up.
fn past_deadline() -> Action {
    Action::requeue(Duration::from_millis(100))
}

/// How soon a snapshot waiting for its VM or disks looks again.
const WAIT_FOR_VM: Duration = Duration::from_secs(3);

/// Pending: checks the VM and that no snapshot of that name exists on its images, then records
/// the intent (phase InProgress, the images, the start time) before anything is taken, or
/// adopts the snapshot already there.
async fn begin(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    writer: &Writer<'_>,
    mut status: VirtualMachineSnapshotStatus,
    deadline: Option<Timestamp>,
) -> Result<ControlFlow<Action, VirtualMachineSnapshotStatus>, Error> {
    let namespace = snap.namespace().unwrap_or_default();
    let name = rbd_name(snap);
    if !still_pending(snap, ctx, &namespace).await? {
        // A reconcile queued before this object's own last writes: what it took would look
        // like someone else's snapshot. The next reconcile sees the object as it is.
        return Ok(ControlFlow::Break(Action::requeue(Duration::from_millis(200))));
    }
    let vm = match snapshotable_vm(snap, ctx, writer, &status).await? {
        ControlFlow::Continue(vm) => vm,
        ControlFlow::Break(action) => return Ok(ControlFlow::Break(action)),
    };
    let images = ctx
        .storage
        .vm_names(&namespace, &vm.storage_name())
        .images(vm.spec.data_disks.len());
    let lock = ctx.vm_lock(&namespace, &snap.spec.vm_name);
    let Some(_guard) = lock_until(&lock, deadline).await else {
        return Ok(ControlFlow::Break(past_deadline()));
    };
    let existing = match names_free(snap, ctx, writer, &status, &images).await? {
        ControlFlow::Continue(existing) => existing,
        ControlFlow::Break(action) => return Ok(ControlFlow::Break(action)),
    };
    if snap.spec.adopt {
        let action = match adoption(&images, &existing) {
            Ok(disks) => adopt(snap, ctx, writer, status, &vm, &name, disks).await,
            Err(missing) => {
                let message = format!(
                    "RBD snapshot '{name}' is missing on image(s) {} of VirtualMachine {}: \
                     only a snapshot present on every image can be adopted; nothing was touched",
                    missing.join(", "),
                    snap.spec.vm_name
                );
                fail(snap, ctx, writer, status, "SnapshotIncomplete", &message).await
            }
        };
        return action.map(ControlFlow::Break);
    }
    status.snapshot_name = Some(name.clone());
    status.vm_uid = vm.metadata.uid.clone();
    status.vm_state = Some(vm.spec.state);
    status.start_time = Some(now());
    status.disks = images
        .iter()
        .map(|image| SnapshotDiskStatus {
            image: image.clone(),
            ..Default::default()
        })
        .collect();
    status.error = None;
    let message = format!("taking snapshot '{name}' of {} image(s)", images.len());
    let status = writer
        .write(status, SnapshotPhase::InProgress, "InProgress", &message)
        .await?;
    Ok(ControlFlow::Continue(status))
}

/// The VM to snapshot, once it exists, is not being deleted, has its disks, and no other
/// object takes a snapshot of that name of it.
async fn snapshotable_vm(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    writer: &Writer<'_>,
    status: &VirtualMachineSnapshotStatus,
) -> Result<ControlFlow<Action, VirtualMachine>, Error> {
    let namespace = snap.namespace().unwrap_or_default();
    let vm_name = &snap.spec.vm_name;
    let waiting = |reason: &'static str, message: String| async move {
        writer
            .write(status.clone(), SnapshotPhase::Pending, reason, &message)
            .await?;
        Ok::<_, Error>(ControlFlow::Break(Action::requeue(WAIT_FOR_VM)))
    };
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(vm) = vms.get_opt(vm_name).await? else {
        let message = format!("VirtualMachine {vm_name} does not exist in namespace {namespace}");
        return waiting("VmNotFound", message).await;
    };
    if vm.metadata.deletion_timestamp.is_some() {
        let message = format!("VirtualMachine {vm_name} is being deleted");
        let action = fail(snap, ctx, writer, status.clone(), "VmBeingDeleted", &message).await?;
        return Ok(ControlFlow::Break(action));
    }
    if vm.status.as_ref().and_then(|s| s.storage.as_ref()).is_none() {
        let message = format!("waiting for the disks of VirtualMachine {vm_name} to exist");
        return waiting("WaitingForStorage", message).await;
    }
    if let Some(other) = duplicate_of(snap, &ctx.snapshots.state()) {
        let message = format!(
            "VirtualMachineSnapshot {other} already takes the RBD snapshot '{}' of VirtualMachine {vm_name}; choose another name",
            rbd_name(snap)
        );
        let action = fail(snap, ctx, writer, status.clone(), "DuplicateName", &message).await?;
        return Ok(ControlFlow::Break(action));
    }
    Ok(ControlFlow::Continue(vm))
}

/// Before the intent is recorded, a snapshot of that name must not exist on any image (unless
/// it is adopted: then what each image has). A missing image waits; a failure is reported.
async fn names_free(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    writer: &Writer<'_>,
    status: &VirtualMachineSnapshotStatus,
    images: &[String],
) -> Result<ControlFlow<Action, Vec<Option<crate::ceph::SnapInfo>>>, Error> {
    let namespace = snap.namespace().unwrap_or_default();
    let name = rbd_name(snap);
    let found = per_image(ctx, &namespace, images, {
        let name = name.clone();
        move |io, image| rbd::find(io, &image, &name)
    })
    .await;
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            return storage_error(snap, ctx, writer, status.clone(), e)
                .await
                .map(ControlFlow::Break);
        }
    };
    let mut existing = Vec::with_capacity(images.len());
    for (image, result) in images.iter().zip(found) {
        match result {
            Err(e) => {
                return storage_error(snap, ctx, writer, status.clone(), e)
                    .await
                    .map(ControlFlow::Break);
            }
            Ok(Some(found)) if snap.spec.adopt => existing.push(found),
            Ok(None) => {
                let message = format!(
                    "waiting for image {image} of VirtualMachine {}",
                    snap.spec.vm_name
                );
                writer
                    .write(
                        status.clone(),
                        SnapshotPhase::Pending,
                        "WaitingForStorage",
                        &message,
                    )
                    .await?;
                return Ok(ControlFlow::Break(Action::requeue(WAIT_FOR_VM)));
            }
            Ok(Some(Some(_))) => {
                let message = format!(
                    "an RBD snapshot named '{name}' already exists on image {image} and was not taken by this object \
                     (by rbd, vm_manager or another VirtualMachineSnapshot): it is left alone; choose another snapshotName"
                );
                let action = fail(snap, ctx, writer, status.clone(), "AlreadyExists", &message).await?;
                return Ok(ControlFlow::Break(action));
            }
            Ok(Some(None)) => {}
        }
    }
    Ok(ControlFlow::Continue(existing))
}

/// InProgress: takes what is missing, on every image at once. Once started, the Ceph calls
/// are awaited to the end even past the deadline (bounded by the rados op timeout): a call
/// abandoned in its thread could take a snapshot after the cleanup removed the others.
async fn finish(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    writer: &Writer<'_>,
    mut status: VirtualMachineSnapshotStatus,
    deadline: Option<Timestamp>,
) -> Result<Action, Error> {
    let namespace = snap.namespace().unwrap_or_default();
    let name = rbd_name(snap);
    let lock = ctx.vm_lock(&namespace, &snap.spec.vm_name);
    let Some(_guard) = lock_until(&lock, deadline).await else {
        return Ok(past_deadline());
    };
    let todo: Vec<(usize, String)> = status
        .disks
        .iter()
        .enumerate()
        .filter(|(_, d)| d.snapshot_id.is_none())
        .map(|(i, d)| (i, d.image.clone()))
        .collect();
    let images: Vec<String> = todo.iter().map(|(_, image)| image.clone()).collect();
    let results = per_image(ctx, &namespace, &images, {
        let name = name.clone();
        move |io, image| rbd::create(io, &image, &name).map(Some)
    })
    .await;
    let (results, mut first_error) = match results {
        Ok(results) => (results, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let intent = status.start_time.as_ref().map(to_system_time);
    for ((index, image), result) in todo.into_iter().zip(results) {
        match result {
            Ok(Some((info, created))) => {
                if !created && !rbd::made_by(&info, None, intent) {
                    let message = format!(
                        "an RBD snapshot named '{name}' appeared on image {image} that this object did not take; it is left alone"
                    );
                    return fail(snap, ctx, writer, status, "AlreadyExists", &message).await;
                }
                ctx.metrics.ceph_write("snap_create");
                record_taken(&mut status, index, &info);
            }
            Ok(None) => {
                first_error.get_or_insert(StorageError::SourceNotFound {
                    what: format!("image {image}"),
                    detail: "the VM's RBD namespace does not exist any more".into(),
                });
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        // Record the ids taken so far, then retry (until the deadline).
        let message = format!("taking snapshot '{name}': {e}");
        status.error = Some(OperationError {
            time: Some(now()),
            message: message.clone(),
        });
        writer
            .write(status, SnapshotPhase::InProgress, e.reason(), &message)
            .await?;
        ctx.publish(snap, EventType::Warning, e.reason(), "Snapshot", message)
            .await;
        return Err(e.into());
    }
    status.ready_to_use = true;
    status.error = None;
    let message = format!(
        "snapshot '{name}' taken on {} image(s) (crash-consistent)",
        status.disks.len()
    );
    writer
        .write(status, SnapshotPhase::Ready, "Ready", &message)
        .await?;
    // Just taken: the reconcile this status write wakes has nothing to check.
    ctx.verified
        .record(&snap.uid().unwrap_or_default(), verify_key(snap));
    drop(_guard);
    reset_failures(ctx, snap);
    ctx.metrics.operation(KIND, "snapshot", "ok");
    ctx.publish(snap, EventType::Normal, "SnapshotReady", "Snapshot", message)
        .await;
    Ok(Action::requeue(VERIFY_EVERY))
}

/// The id and size of a disk's snapshot just taken; the snapshot's time is its newest disk's.
fn record_taken(status: &mut VirtualMachineSnapshotStatus, index: usize, info: &crate::ceph::SnapInfo) {
    let disk = &mut status.disks[index];
    disk.snapshot_id = Some(info.id as i64);
    disk.size_bytes = Some(i64::try_from(info.size).unwrap_or(i64::MAX));
    if status
        .creation_time
        .as_ref()
        .is_none_or(|t| to_system_time(t) < info.timestamp)
    {
        status.creation_time = Some(timestamp_of(info.timestamp));
    }
}

/// The disks an adoption records (ids, sizes), or the images the snapshot is missing on.
pub fn adoption(
    images: &[String],
    found: &[Option<crate::ceph::SnapInfo>],
) -> Result<Vec<(SnapshotDiskStatus, SystemTime)>, Vec<String>> {
    let missing: Vec<String> = images
        .iter()
        .zip(found)
        .filter(|(_, f)| f.is_none())
        .map(|(image, _)| image.clone())
        .collect();
    if !missing.is_empty() || images.len() != found.len() {
        return Err(missing);
    }
    Ok(images
        .iter()
        .zip(found.iter().flatten())
        .map(|(image, info)| {
            (
                SnapshotDiskStatus {
                    image: image.clone(),
                    snapshot_id: Some(info.id as i64),
                    size_bytes: Some(i64::try_from(info.size).unwrap_or(i64::MAX)),
                },
                info.timestamp,
            )
        })
        .collect())
}

/// Takes over a snapshot present on every image: its ids are recorded in one write, so from
/// then on the object owns exactly those snapshots (a snapshot of that name made later, after
/// a removal by hand, is not its own).
#[allow(clippy::too_many_arguments)]
async fn adopt(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    writer: &Writer<'_>,
    mut status: VirtualMachineSnapshotStatus,
    vm: &VirtualMachine,
    name: &str,
    disks: Vec<(SnapshotDiskStatus, SystemTime)>,
) -> Result<Action, Error> {
    let taken = disks.iter().map(|(_, t)| *t).max();
    status.snapshot_name = Some(name.to_owned());
    status.vm_uid = vm.metadata.uid.clone();
    status.vm_state = Some(vm.spec.state);
    status.start_time = Some(now());
    status.creation_time = taken.map(timestamp_of);
    status.disks = disks.into_iter().map(|(d, _)| d).collect();
    status.ready_to_use = true;
    status.error = None;
    let message = format!(
        "adopted RBD snapshot '{name}' of {} image(s), taken outside the operator",
        status.disks.len()
    );
    writer
        .write(status, SnapshotPhase::Ready, "Ready", &message)
        .await?;
    ctx.verified
        .record(&snap.uid().unwrap_or_default(), verify_key(snap));
    reset_failures(ctx, snap);
    ctx.metrics.operation(KIND, "adopt", "ok");
    ctx.publish(snap, EventType::Normal, "SnapshotAdopted", "Adopt", message)
        .await;
    Ok(Action::requeue(VERIFY_EVERY))
}

/// The VM's lock, unless the deadline passes first.
async fn lock_until(lock: &VmLock, deadline: Option<Timestamp>) -> Option<tokio::sync::MutexGuard<'_, ()>> {
    let Some(deadline) = deadline else {
        return Some(lock.lock().await);
    };
    let left = deadline.duration_since(Timestamp::now());
    if left.is_negative() {
        return None;
    }
    tokio::time::timeout(left.unsigned_abs(), lock.lock()).await.ok()
}

/// Another live object of the same VM claiming the same RBD name first (older, or same age and
/// a smaller name).
pub fn duplicate_of(snap: &VirtualMachineSnapshot, all: &[Arc<VirtualMachineSnapshot>]) -> Option<String> {
    let key = |s: &VirtualMachineSnapshot| (s.metadata.creation_timestamp.clone().map(|t| t.0), s.name_any());
    all.iter()
        .filter(|o| o.metadata.uid != snap.metadata.uid)
        .filter(|o| o.namespace() == snap.namespace() && o.spec.vm_name == snap.spec.vm_name)
        .filter(|o| rbd_name(o) == rbd_name(snap))
        .filter(|o| o.status.as_ref().and_then(|s| s.phase) != Some(SnapshotPhase::Failed))
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .find(|o| key(o) < key(snap))
        .map(|o| o.name_any())
}

async fn storage_error(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    writer: &Writer<'_>,
    mut status: VirtualMachineSnapshotStatus,
    e: StorageError,
) -> Result<Action, Error> {
    let phase = status.phase.unwrap_or(SnapshotPhase::Pending);
    let message = e.to_string();
    status.error = Some(OperationError {
        time: Some(now()),
        message: message.clone(),
    });
    writer.write(status, phase, e.reason(), &message).await?;
    ctx.publish(snap, EventType::Warning, e.reason(), "Snapshot", message)
        .await;
    Err(e.into())
}

/// Marks the snapshot Failed (irreversible) and removes the part it took.
async fn fail(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    writer: &Writer<'_>,
    mut status: VirtualMachineSnapshotStatus,
    reason: &str,
    message: &str,
) -> Result<Action, Error> {
    status.ready_to_use = false;
    status.error = Some(OperationError {
        time: Some(now()),
        message: message.to_owned(),
    });
    let status = writer
        .write(status, SnapshotPhase::Failed, reason, message)
        .await?;
    ctx.metrics.operation(KIND, "snapshot", "failed");
    ctx.publish(snap, EventType::Warning, reason, "Snapshot", message.to_owned())
        .await;
    clean_failed(snap, ctx, writer, status).await?;
    Ok(Action::await_change())
}

/// Removes the RBD snapshots a Failed object took (`status.disks` empty: nothing left).
async fn clean_failed(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    writer: &Writer<'_>,
    mut status: VirtualMachineSnapshotStatus,
) -> Result<(), Error> {
    if status.disks.is_empty() {
        return Ok(());
    }
    let removed = remove_own(snap, ctx, &status).await?;
    status.disks.clear();
    let reason = status
        .conditions
        .iter()
        .find(|c| c.type_ == ct::READY)
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default();
    writer
        .write(status, SnapshotPhase::Failed, &reason.0, &reason.1)
        .await?;
    if removed > 0 {
        ctx.publish(
            snap,
            EventType::Normal,
            "PartialSnapshotRemoved",
            "Snapshot",
            format!("removed the {removed} RBD snapshot(s) the failed snapshot had taken"),
        )
        .await;
    }
    Ok(())
}

/// Removes this object's RBD snapshots from its images; returns how many were removed.
async fn remove_own(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    status: &VirtualMachineSnapshotStatus,
) -> Result<usize, Error> {
    let namespace = snap.namespace().unwrap_or_default();
    let name = status.snapshot_name.clone().unwrap_or_else(|| rbd_name(snap));
    let intent = status.start_time.as_ref().map(to_system_time);
    let lock = ctx.vm_lock(&namespace, &snap.spec.vm_name);
    let _guard = lock.lock().await;
    let images: Vec<String> = status.disks.iter().map(|d| d.image.clone()).collect();
    let ids: Vec<Option<u64>> = status
        .disks
        .iter()
        .map(|d| d.snapshot_id.map(|i| i as u64))
        .collect();
    let namespace = &namespace;
    let results = join_all(images.iter().zip(ids).map(|(image, id)| {
        let name = name.clone();
        async move {
            per_image(ctx, namespace, std::slice::from_ref(image), move |io, image| {
                rbd::remove(io, &image, &name, id, intent).map(Some)
            })
            .await?
            .pop()
            .expect("one result per image")
        }
    }))
    .await;
    let mut removed = 0;
    for (image, result) in images.iter().zip(results) {
        match result? {
            Some(Removed::Removed) => {
                removed += 1;
                ctx.metrics.ceph_write("snap_remove");
            }
            Some(Removed::NotOwned) => {
                ctx.publish(
                    snap,
                    EventType::Warning,
                    "SnapshotNotOwned",
                    "Delete",
                    format!("RBD snapshot {image}@{name} was not taken by this object: left in place"),
                )
                .await;
            }
            Some(Removed::Absent) | None => {}
        }
    }
    Ok(removed)
}

/// What a check of a Ready snapshot found.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// On every image, the VM it was taken of still there.
    Usable,
    /// Removed from some images, its VM still there.
    Missing { images: Vec<String> },
    /// The VM was deleted (or replaced by another of that name) with its disks.
    VmDeleted,
    /// The VM was deleted with `deletionPolicy: Retain`: the RBD snapshots stay on the retained
    /// images, but no restore can use them any more.
    VmDeletedDisksRetained,
}

/// `vm_uid`: the UID the snapshot was taken of; `current_uid`: the VM of that name now, if any;
/// `missing`: the images that lack the snapshot.
pub fn verdict(vm_uid: Option<&str>, current_uid: Option<&str>, missing: Vec<String>) -> Verdict {
    let vm_gone = current_uid.is_none() || vm_uid.is_some_and(|taken_of| Some(taken_of) != current_uid);
    match (vm_gone, missing.is_empty()) {
        (false, true) => Verdict::Usable,
        (false, false) => Verdict::Missing { images: missing },
        (true, false) => Verdict::VmDeleted,
        (true, true) => Verdict::VmDeletedDisksRetained,
    }
}

/// The reason and message of a verdict that leaves the snapshot unusable.
fn unusable(verdict: &Verdict, name: &str, vm: &str) -> (&'static str, String) {
    match verdict {
        Verdict::Usable => ("Ready", String::new()),
        Verdict::Missing { images } => (
            "SnapshotMissing",
            format!(
                "RBD snapshot '{name}' is gone from image(s) {} (removed outside the operator)",
                images.join(", ")
            ),
        ),
        Verdict::VmDeleted => (
            "VmDeleted",
            format!(
                "VirtualMachine {vm} was deleted with its disks (deletionPolicy Delete): RBD snapshot '{name}' \
                 went with them and nothing can be restored from it; delete this object"
            ),
        ),
        Verdict::VmDeletedDisksRetained => (
            "VmDeletedDisksRetained",
            format!(
                "VirtualMachine {vm} was deleted with deletionPolicy Retain: RBD snapshot '{name}' stays on its \
                 retained images (readable with rbd), but no VirtualMachineRestore can use it, the VM it was taken \
                 of being gone"
            ),
        ),
    }
}

/// Ready: from time to time, check the RBD snapshots are all still there.
async fn verify(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    writer: &Writer<'_>,
    mut status: VirtualMachineSnapshotStatus,
) -> Result<Action, Error> {
    let uid = snap.uid().unwrap_or_default();
    let key = verify_key(snap);
    if let Some(left) = ctx.verified.fresh_for(&uid, key) {
        return Ok(Action::requeue(left));
    }
    let namespace = snap.namespace().unwrap_or_default();
    let name = status.snapshot_name.clone().unwrap_or_else(|| rbd_name(snap));
    let images: Vec<String> = status.disks.iter().map(|d| d.image.clone()).collect();
    let found = per_image(ctx, &namespace, &images, {
        let name = name.clone();
        move |io, image| rbd::find(io, &image, &name)
    })
    .await?;
    let mut missing = Vec::new();
    for ((image, disk), result) in images.iter().zip(&status.disks).zip(found) {
        match result? {
            Some(Some(info)) if disk.snapshot_id.is_none_or(|id| id as u64 == info.id) => {}
            _ => missing.push(image.clone()),
        }
    }
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &namespace);
    let vm = vms.get_opt(&snap.spec.vm_name).await?;
    let verdict = verdict(
        status.vm_uid.as_deref(),
        vm.as_ref().and_then(|vm| vm.metadata.uid.as_deref()),
        missing,
    );
    if verdict == Verdict::Usable {
        status.ready_to_use = true;
        // A snapshot still Ready keeps its condition as it was: a check that finds nothing
        // new writes nothing (a restart checks every snapshot).
        let message = status
            .conditions
            .iter()
            .find(|c| c.type_ == ct::READY && c.status == "True")
            .map(|c| c.message.clone())
            .unwrap_or_else(|| format!("snapshot '{name}' present on {} image(s)", images.len()));
        writer
            .write(status, SnapshotPhase::Ready, "Ready", &message)
            .await?;
    } else {
        status.ready_to_use = false;
        let (reason, message) = unusable(&verdict, &name, &snap.spec.vm_name);
        if snap.status.as_ref().is_some_and(|s| s.ready_to_use) {
            ctx.publish(snap, EventType::Warning, reason, "Verify", message.clone())
                .await;
        }
        writer
            .write(status, SnapshotPhase::Ready, reason, &message)
            .await?;
    }
    ctx.verified.record(&uid, key);
    Ok(Action::requeue(VERIFY_EVERY))
}

/// Deletion: wait for restores using it, then remove the RBD snapshots (unless Retain).
async fn cleanup(
    snap: &VirtualMachineSnapshot,
    ctx: &SnapshotContext,
    api: &Api<VirtualMachineSnapshot>,
) -> Result<Action, Error> {
    let writer = Writer { api, snap };
    let status = snap.status.clone().unwrap_or_default();
    let namespace = snap.namespace();
    if let Some(restore) = ctx.restores.state().iter().find(|r| {
        r.namespace() == namespace && r.spec.snapshot == snap.name_any() && super::restore::is_active(r)
    }) {
        let message = format!(
            "VirtualMachineRestore {} is rolling the VM back to this snapshot; deletion waits for it",
            restore.name_any()
        );
        writer
            .write(status, SnapshotPhase::Deleting, "InUseByRestore", &message)
            .await?;
        return Err(Error::Waiting(message));
    }
    if snap.spec.deletion_policy == SnapshotDeletionPolicy::Retain
        && status.phase != Some(SnapshotPhase::Failed)
    {
        if status.phase == Some(SnapshotPhase::Ready) {
            ctx.publish(
                snap,
                EventType::Normal,
                "SnapshotRetained",
                "Delete",
                format!(
                    "deletionPolicy Retain: RBD snapshot '{}' stays on every image",
                    rbd_name(snap)
                ),
            )
            .await;
        }
        return Ok(Action::await_change());
    }
    if status.disks.is_empty() {
        return Ok(Action::await_change());
    }
    let status = writer
        .write(
            status,
            SnapshotPhase::Deleting,
            "Deleting",
            "removing the RBD snapshots",
        )
        .await?;
    match remove_own(snap, ctx, &status).await {
        Ok(removed) => {
            ctx.metrics.operation(KIND, "delete", "ok");
            ctx.publish(
                snap,
                EventType::Normal,
                "SnapshotDeleted",
                "Delete",
                format!(
                    "removed RBD snapshot '{}' from {removed} image(s)",
                    rbd_name(snap)
                ),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(Error::Storage(e)) => {
            ctx.metrics.operation(KIND, "delete", "error");
            let message = format!("cannot delete: {e}");
            writer
                .write(status, SnapshotPhase::Deleting, e.reason(), &message)
                .await?;
            ctx.publish(snap, EventType::Warning, e.reason(), "Delete", message.clone())
                .await;
            // Clones are removed by people: check again soon, without a growing back-off.
            if matches!(e, StorageError::HasDependentClones { .. }) {
                return Err(Error::Waiting(message));
            }
            Err(Error::Storage(e))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::VirtualMachineSnapshotSpec;

    fn snap(name: &str, vm: &str, rbd: Option<&str>, created: i64) -> Arc<VirtualMachineSnapshot> {
        let mut s = VirtualMachineSnapshot::new(
            name,
            VirtualMachineSnapshotSpec {
                vm_name: vm.into(),
                snapshot_name: rbd.map(Into::into),
                description: None,
                deletion_policy: SnapshotDeletionPolicy::Delete,
                failure_deadline: None,
                adopt: false,
            },
        );
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some(format!("uid-{name}"));
        s.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        Arc::new(s)
    }

    #[test]
    fn duplicates_are_the_younger_objects() {
        let a = snap("a", "vm1", Some("before"), 10);
        let b = snap("b", "vm1", Some("before"), 20);
        let c = snap("c", "vm2", Some("before"), 5);
        let all = vec![a.clone(), b.clone(), c.clone()];
        assert_eq!(duplicate_of(&a, &all), None);
        assert_eq!(duplicate_of(&b, &all).as_deref(), Some("a"));
        assert_eq!(duplicate_of(&c, &all), None);
        // Object name as the RBD name.
        let d = snap("before", "vm1", None, 30);
        assert_eq!(duplicate_of(&d, &[a.clone(), d.clone()]).as_deref(), Some("a"));
    }

    #[test]
    fn adoption_needs_every_image() {
        use crate::ceph::{SnapInfo, SnapNamespace};
        let info = |id| SnapInfo {
            id,
            name: "manual".into(),
            size: 42,
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(id * 10),
            namespace: SnapNamespace::User,
        };
        let images = vec!["system_vm".to_string(), "data_vm_0".to_string()];
        let disks = adoption(&images, &[Some(info(4)), Some(info(9))]).unwrap();
        assert_eq!(disks[0].0.snapshot_id, Some(4));
        assert_eq!(disks[1].0.snapshot_id, Some(9));
        assert_eq!(disks[1].0.size_bytes, Some(42));
        assert_eq!(
            adoption(&images, &[Some(info(4)), None]).unwrap_err(),
            ["data_vm_0"]
        );
    }

    #[test]
    fn a_snapshot_of_a_deleted_vm_says_whether_its_data_went_with_it() {
        let gone = || vec!["system_vm".to_string()];
        let table = [
            (Some("u1"), Some("u1"), vec![], Verdict::Usable),
            (
                Some("u1"),
                Some("u1"),
                gone(),
                Verdict::Missing { images: gone() },
            ),
            (Some("u1"), None, gone(), Verdict::VmDeleted),
            (Some("u1"), None, vec![], Verdict::VmDeletedDisksRetained),
            // Another VM of the same name: the one it was taken of is gone.
            (Some("u1"), Some("u2"), gone(), Verdict::VmDeleted),
            (Some("u1"), Some("u2"), vec![], Verdict::VmDeletedDisksRetained),
            // Adopted snapshots of an old status without UID: the name decides.
            (None, Some("u2"), vec![], Verdict::Usable),
        ];
        for (taken_of, now, missing, expected) in table {
            assert_eq!(verdict(taken_of, now, missing), expected, "{taken_of:?} {now:?}");
        }
        let (reason, message) = unusable(&Verdict::VmDeleted, "before", "guest");
        assert_eq!(reason, "VmDeleted");
        assert!(
            message.starts_with("VirtualMachine guest was deleted with its disks (deletionPolicy Delete)"),
            "{message}"
        );
        let (reason, message) = unusable(&Verdict::VmDeletedDisksRetained, "before", "guest");
        assert_eq!(reason, "VmDeletedDisksRetained");
        assert!(message.contains("stays on its retained images"), "{message}");
    }

    #[test]
    fn deadlines() {
        let s = snap("a", "vm", None, 100);
        assert_eq!(deadline(&s).unwrap(), Some(Timestamp::from_second(400).unwrap()));
        let mut none = (*s).clone();
        none.spec.failure_deadline = Some("0".into());
        assert_eq!(deadline(&none).unwrap(), None);
    }

    #[test]
    fn conditions_follow_the_phase() {
        let ready = conditions_for(SnapshotPhase::Ready, "Ready", "");
        assert!(ready.iter().any(|c| c.type_ == ct::READY && c.status));
        assert!(!ready.iter().any(|c| c.type_ == ct::RECONCILING));
        let failed = conditions_for(SnapshotPhase::Failed, "DeadlineExceeded", "x");
        assert!(failed.iter().any(|c| c.type_ == ct::STALLED && c.status));
        assert!(failed.iter().any(|c| c.type_ == ct::READY && !c.status));
        let working = conditions_for(SnapshotPhase::InProgress, "InProgress", "");
        assert!(working.iter().any(|c| c.type_ == ct::RECONCILING && c.status));
    }
}
