//! Reconciles one VirtualMachineRestore, SEAPATH's rollback, as a resumable sequence of steps
//! recorded in its status:
//!
//! 1. `Pending`: checks (the snapshot is of this VM and Ready, present on every disk, no other
//!    restore of the VM at work). A refusal is `Failed` before anything is stopped.
//!    Then records the VM's desired state (`previousState`) and goes to `Stopping`.
//! 2. `Stopping`: sets the VM's `spec.state` to `Disabled` (field manager `seapath-restore`);
//!    the node agent stops and undefines the domain. Waits for the agent's report of the
//!    domain `Absent` for that generation of the VM.
//! 3. `RollingBack`: checks again, refuses while any client holds an image's exclusive lock
//!    (a domain still using the disk), and rolls every image back, concurrently.
//! 4. `Starting`: sets `spec.state` back to `previousState`, waits for the VM to reach it.
//! 5. `Succeeded`. The snapshot stays.
//!
//! With `spec.target`, the restore goes into a new VM instead, and the source VM is not
//! touched: after the same checks, `Pending` creates the VirtualMachine `target.name` (marked
//! with the restore's UID, so that a VM of that name it did not create is refused, and one it
//! created before a crash is recognised), whose disks the VM controller copies from the
//! source's at the snapshot; `Creating` waits for its StorageReady condition; `Succeeded`.
//!
//! Deleting a restore half-way: before the roll-back it just gives the VM its state back;
//! during it, it finishes the roll-back first (a VM is never left with half its disks rolled
//! back), then gives the VM its state back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer;
use serde_json::json;
use tracing::info;

use super::{Error, SnapshotContext, now, rbd, reset_failures, write_status};
use super::{per_image, rbd_name};
use crate::api::{
    DesiredState, Disk, DiskSource, DomainState, OperationError, Phase, RESTORE_FINALIZER, RESTORE_LABEL,
    RESTORE_UID_ANNOTATION, RestorePhase, SnapshotDiskStatus, SnapshotPhase, VirtualMachine,
    VirtualMachineRestore, VirtualMachineRestoreSpec, VirtualMachineRestoreStatus, VirtualMachineSnapshot,
    VirtualMachineSpec, VmSource, condition_types as ct,
};
use crate::ceph::SnapInfo;
use crate::controller::conditions::{Desired, merge};
use crate::controller::frame;
use crate::controller::phase;
use crate::controller::storage::StorageError;
use crate::field_manager;

const KIND: &str = "VirtualMachineRestore";
const POLL: Duration = Duration::from_secs(2);
/// How long a restore waits for a snapshot that does not exist: it may be created together
/// with (just after) the restore. Past that the restore fails, since while it waits it holds
/// back every later restore of the VM.
pub const MISSING_SNAPSHOT_GRACE: Duration = Duration::from_secs(30);

/// How much longer a restore created at `created` may wait for its missing snapshot (`None`:
/// fail now).
pub fn missing_snapshot_wait(
    created: Option<&k8s_openapi::jiff::Timestamp>,
    now: k8s_openapi::jiff::Timestamp,
) -> Option<Duration> {
    let waited = created.map_or(Duration::ZERO, |c| now.duration_since(*c).unsigned_abs());
    MISSING_SNAPSHOT_GRACE
        .checked_sub(waited)
        .filter(|left| !left.is_zero())
}

/// A restore that has started and not finished (it holds the VM).
pub fn is_active(restore: &VirtualMachineRestore) -> bool {
    matches!(
        restore.status.as_ref().and_then(|s| s.phase),
        None | Some(
            RestorePhase::Pending
                | RestorePhase::Stopping
                | RestorePhase::RollingBack
                | RestorePhase::Starting
                | RestorePhase::Creating
        )
    )
}

/// Whether `vm` is the one `restore` created (its UID annotation), not one that merely has
/// the target name.
pub fn created_by(vm: &VirtualMachine, restore: &VirtualMachineRestore) -> bool {
    restore.metadata.uid.is_some()
        && vm.annotations().get(RESTORE_UID_ANNOTATION) == restore.metadata.uid.as_ref()
}

/// The VirtualMachine a restore into a new VM creates: the source's configuration (its XML
/// without `<uuid>`, so the copy gets a UUID of its own), each disk copied from the source's
/// same disk at RBD snapshot `snapshot`. No owner reference: deleting the restore must never
/// take the new VM's disks with it.
pub fn target_vm(
    restore: &VirtualMachineRestore,
    source: &VirtualMachine,
    target: &str,
    snapshot: &str,
) -> Result<VirtualMachine, crate::domain_xml::DomainXmlError> {
    let copy = |disk: &Disk| Disk {
        source: DiskSource {
            http: None,
            path: None,
            rbd: None,
            vm: Some(VmSource {
                name: source.name_any(),
                snapshot: Some(snapshot.to_owned()),
            }),
            golden: None,
            blank: None,
        },
        // The copy has the size the disk had at the snapshot.
        size: None,
        bus: disk.bus,
    };
    let spec = &source.spec;
    Ok(VirtualMachine {
        metadata: ObjectMeta {
            name: Some(target.to_owned()),
            namespace: source.namespace(),
            labels: Some(BTreeMap::from([(RESTORE_LABEL.to_owned(), restore.name_any())])),
            annotations: Some(BTreeMap::from([(
                RESTORE_UID_ANNOTATION.to_owned(),
                restore.metadata.uid.clone().unwrap_or_default(),
            )])),
            ..Default::default()
        },
        spec: VirtualMachineSpec {
            state: spec.state,
            xml: crate::domain_xml::without_uuid(&spec.xml)?,
            system_disk: copy(&spec.system_disk),
            data_disks: spec.data_disks.iter().map(copy).collect(),
            metadata: spec.metadata.clone(),
            placement: spec.placement.clone(),
            migration: spec.migration.clone(),
            stop_timeout_seconds: spec.stop_timeout_seconds,
            storage_name: None,
            deletion_policy: spec.deletion_policy,
        },
        status: None,
    })
}

/// Whether the agent confirmed that no domain of the VM is defined any more, for the VM's
/// generation `disabled` (the one that set `Disabled`) or later.
pub fn domain_gone(vm: &VirtualMachine, disabled: i64) -> bool {
    let Some(status) = vm.status.as_ref() else {
        return true;
    };
    match &status.domain {
        Some(domain) => {
            domain.state == DomainState::Absent && domain.observed_generation.unwrap_or(0) >= disabled
        }
        // Never reported by an agent: no domain was ever defined for it.
        None => {
            status.node.is_none()
                || (status.phase == Some(Phase::Disabled)
                    && status.observed_generation.unwrap_or(0) >= disabled)
        }
    }
}

/// Another restore of the same VM that is at work, or older and still pending.
pub fn competing(restore: &VirtualMachineRestore, all: &[Arc<VirtualMachineRestore>]) -> Option<String> {
    let key = |r: &VirtualMachineRestore| (r.metadata.creation_timestamp.clone().map(|t| t.0), r.name_any());
    all.iter()
        .filter(|o| o.metadata.uid != restore.metadata.uid)
        .filter(|o| o.namespace() == restore.namespace() && o.spec.vm_name == restore.spec.vm_name)
        // A restore into a new VM does not touch the source: it competes with none.
        .filter(|o| o.spec.target.is_none())
        .filter(|o| is_active(o))
        .find(|o| {
            let phase = o.status.as_ref().and_then(|s| s.phase);
            matches!(
                phase,
                Some(RestorePhase::Stopping | RestorePhase::RollingBack | RestorePhase::Starting)
            ) || key(o) < key(restore)
        })
        .map(|o| o.name_any())
}

fn conditions_for(phase: RestorePhase, reason: &str, message: &str) -> Vec<Desired> {
    let mut out = vec![Desired::new(
        ct::READY,
        phase == RestorePhase::Succeeded,
        reason,
        message,
    )];
    match phase {
        RestorePhase::Succeeded => {}
        RestorePhase::Failed => out.push(Desired::new(ct::STALLED, true, reason, message)),
        _ => out.push(Desired::new(ct::RECONCILING, true, reason, message)),
    }
    out
}

struct Step<'a> {
    ctx: &'a SnapshotContext,
    api: &'a Api<VirtualMachineRestore>,
    vms: Api<VirtualMachine>,
    restore: &'a VirtualMachineRestore,
    namespace: String,
}

impl Step<'_> {
    async fn write(
        &self,
        mut status: VirtualMachineRestoreStatus,
        phase: RestorePhase,
        reason: &str,
        message: &str,
    ) -> Result<VirtualMachineRestoreStatus, Error> {
        let previous = self.restore.status.clone().unwrap_or_default();
        status.phase = Some(phase);
        status.observed_generation = self.restore.metadata.generation;
        status.conditions = merge(
            &previous.conditions,
            &conditions_for(phase, reason, message),
            self.restore.metadata.generation,
            &now(),
        );
        if status != previous {
            if previous.phase != Some(phase) {
                info!(?phase, reason, "restore step");
            }
            write_status(self.api, self.restore, &status).await?;
        }
        Ok(status)
    }

    /// Moves to `phase` (its name as the reason) and says so in a Normal Event.
    async fn advance(
        &self,
        status: VirtualMachineRestoreStatus,
        phase: RestorePhase,
        event: &str,
        message: String,
    ) -> Result<VirtualMachineRestoreStatus, Error> {
        let status = self.write(status, phase, &format!("{phase:?}"), &message).await?;
        self.ctx
            .publish(self.restore, EventType::Normal, event, "Restore", message)
            .await;
        Ok(status)
    }

    async fn refuse(
        &self,
        mut status: VirtualMachineRestoreStatus,
        reason: &str,
        message: String,
    ) -> Result<Action, Error> {
        let message = format!("{message}; nothing was stopped or changed");
        status.error = Some(OperationError {
            time: Some(now()),
            message: message.clone(),
        });
        self.write(status, RestorePhase::Failed, reason, &message).await?;
        self.ctx.metrics.operation(KIND, "restore", "refused");
        self.ctx
            .publish(self.restore, EventType::Warning, reason, "Restore", message)
            .await;
        Ok(Action::await_change())
    }

    /// Sets the VM's desired state; returns the VM's generation after the change.
    async fn set_vm_state(&self, state: DesiredState) -> Result<i64, Error> {
        let patch = json!({"spec": {"state": state}});
        let params = PatchParams {
            field_manager: Some(field_manager::RESTORE.into()),
            ..Default::default()
        };
        let vm = self
            .vms
            .patch(&self.restore.spec.vm_name, &params, &Patch::Merge(&patch))
            .await?;
        info!(?state, vm = %self.restore.spec.vm_name, "VM desired state set");
        Ok(vm.metadata.generation.unwrap_or_default())
    }

    async fn vm(&self) -> Result<Option<VirtualMachine>, Error> {
        Ok(self.vms.get_opt(&self.restore.spec.vm_name).await?)
    }
}

pub async fn reconcile(
    restore: Arc<VirtualMachineRestore>,
    ctx: Arc<SnapshotContext>,
) -> Result<Action, Error> {
    let namespace = restore.namespace().unwrap_or_default();
    let api: Api<VirtualMachineRestore> = Api::namespaced(ctx.client.clone(), &namespace);
    let (ctx, api) = (&ctx, &api);
    frame::finalized(
        KIND,
        api,
        RESTORE_FINALIZER,
        restore,
        &ctx.metrics,
        |event| async move {
            let (finalizer::Event::Apply(restore) | finalizer::Event::Cleanup(restore)) = &event;
            let step = Step {
                ctx,
                api,
                vms: Api::namespaced(ctx.client.clone(), &namespace),
                restore,
                namespace: namespace.clone(),
            };
            match event {
                finalizer::Event::Apply(_) => apply(&step).await,
                finalizer::Event::Cleanup(_) => cleanup(&step).await,
            }
        },
    )
    .await
}

async fn apply(step: &Step<'_>) -> Result<Action, Error> {
    let status = step.restore.status.clone().unwrap_or_default();
    match status.phase.unwrap_or(RestorePhase::Pending) {
        RestorePhase::Succeeded | RestorePhase::Failed => Ok(Action::await_change()),
        RestorePhase::Pending => pending(step, status).await,
        RestorePhase::Stopping => stopping(step, status).await,
        RestorePhase::RollingBack => rolling_back(step, status).await,
        RestorePhase::Starting => starting(step, status).await,
        RestorePhase::Creating => creating(step, status).await,
    }
}

async fn pending(step: &Step<'_>, mut status: VirtualMachineRestoreStatus) -> Result<Action, Error> {
    let (vm, name) = match restorable(step).await {
        Ok(checked) => checked,
        Err(halt) => return halt.report(step, status).await,
    };
    let spec = &step.restore.spec;
    if let Some(target) = &spec.target {
        return create_target(step, status, &vm, &target.name, &name).await;
    }
    // Record the intent, then act.
    status.previous_state = Some(vm.spec.state);
    status.snapshot_name = Some(name.clone());
    status.start_time = Some(now());
    let message = format!(
        "VM desired state {:?} recorded; disabling VirtualMachine {} to roll back to '{name}'",
        vm.spec.state, spec.vm_name
    );
    let status = step
        .advance(status, RestorePhase::Stopping, "RestoreStarted", message)
        .await?;
    stopping(step, status).await
}

/// Why `pending` stops before the restore starts: nothing is stopped or created until every
/// check passed.
enum Halt {
    /// What is missing may still come: stays `Pending`, looks again `after`.
    Wait {
        reason: &'static str,
        message: String,
        after: Duration,
    },
    /// Waiting cannot make it pass: `Failed`, before anything is touched.
    Refuse { reason: &'static str, message: String },
    /// A failed read: retried as any reconcile error.
    Error(Error),
}

impl From<Error> for Halt {
    fn from(e: Error) -> Self {
        Halt::Error(e)
    }
}

impl From<kube::Error> for Halt {
    fn from(e: kube::Error) -> Self {
        Halt::Error(e.into())
    }
}

impl Halt {
    async fn report(self, step: &Step<'_>, status: VirtualMachineRestoreStatus) -> Result<Action, Error> {
        match self {
            Halt::Wait {
                reason,
                message,
                after,
            } => {
                step.write(status, RestorePhase::Pending, reason, &message)
                    .await?;
                Ok(Action::requeue(after))
            }
            Halt::Refuse { reason, message } => step.refuse(status, reason, message).await,
            Halt::Error(e) => Err(e),
        }
    }
}

/// The checks of `Pending`, cheapest first (Ceph is read last); the VM to restore and the name
/// of the RBD snapshot to restore it to.
async fn restorable(step: &Step<'_>) -> Result<(VirtualMachine, String), Halt> {
    let spec = &step.restore.spec;
    let snapshots: Api<VirtualMachineSnapshot> = Api::namespaced(step.ctx.client.clone(), &step.namespace);
    let Some(snapshot) = snapshots.get_opt(&spec.snapshot).await? else {
        let created = step.restore.metadata.creation_timestamp.as_ref().map(|t| &t.0);
        let left = missing_snapshot_wait(created, k8s_openapi::jiff::Timestamp::now());
        return Err(missing_snapshot(spec, left));
    };
    snapshot_usable(spec, &snapshot)?;
    let snap_status = snapshot.status.clone().unwrap_or_default();
    let vm = vm_restorable(spec, snap_status.vm_uid.as_deref(), step.vm().await?)?;
    if spec.target.is_none()
        && let Some(other) = competing(step.restore, &step.ctx.restores.state())
    {
        return Err(Halt::Refuse {
            reason: "RestoreInProgress",
            message: format!(
                "VirtualMachineRestore {other} came first and has not finished restoring VirtualMachine {}; nothing was stopped",
                spec.vm_name
            ),
        });
    }
    // The snapshot must be on every disk the VM has now.
    let name = snap_status
        .snapshot_name
        .clone()
        .unwrap_or_else(|| rbd_name(&snapshot));
    let missing = images_lacking(step, &vm, &name, &snap_status.disks).await?;
    if !missing.is_empty() {
        return Err(Halt::Refuse {
            reason: "SnapshotIncomplete",
            message: format!(
                "RBD snapshot '{name}' is missing on image(s) {}",
                missing.join(", ")
            ),
        });
    }
    Ok((vm, name))
}

/// `left`: how much longer the restore may wait for its snapshot (see [`missing_snapshot_wait`]).
fn missing_snapshot(spec: &VirtualMachineRestoreSpec, left: Option<Duration>) -> Halt {
    let Some(left) = left else {
        return Halt::Refuse {
            reason: "SnapshotNotFound",
            message: format!(
                "VirtualMachineSnapshot {} does not exist (waited {} s for it); create the snapshot, \
                 then a new VirtualMachineRestore. Later restores of VirtualMachine {} are no longer held back",
                spec.snapshot,
                MISSING_SNAPSHOT_GRACE.as_secs(),
                spec.vm_name
            ),
        };
    };
    Halt::Wait {
        reason: "SnapshotNotFound",
        message: format!(
            "VirtualMachineSnapshot {} does not exist; the restore fails in {} s unless it is created",
            spec.snapshot,
            left.as_secs().max(1)
        ),
        after: left.min(Duration::from_secs(5)),
    }
}

/// Whether `snapshot` is one of the restore's VM that can be restored now: one still being taken
/// is waited for, one that never will be usable is refused.
fn snapshot_usable(spec: &VirtualMachineRestoreSpec, snapshot: &VirtualMachineSnapshot) -> Result<(), Halt> {
    if snapshot.spec.vm_name != spec.vm_name {
        return Err(Halt::Refuse {
            reason: "SnapshotOfAnotherVm",
            message: format!(
                "VirtualMachineSnapshot {} is a snapshot of VirtualMachine {}, not of {}",
                spec.snapshot, snapshot.spec.vm_name, spec.vm_name
            ),
        });
    }
    let snap_status = snapshot.status.clone().unwrap_or_default();
    match snap_status.phase {
        Some(SnapshotPhase::Ready) if snap_status.ready_to_use => Ok(()),
        Some(SnapshotPhase::Failed | SnapshotPhase::Deleting) | Some(SnapshotPhase::Ready) => {
            Err(Halt::Refuse {
                reason: "SnapshotNotUsable",
                message: format!(
                    "VirtualMachineSnapshot {} cannot be restored: {}",
                    spec.snapshot,
                    match snap_status.phase {
                        Some(SnapshotPhase::Failed) => "it failed",
                        Some(SnapshotPhase::Deleting) => "it is being deleted",
                        _ => "it is not ready to use (its RBD snapshot is missing on some image)",
                    }
                ),
            })
        }
        _ => Err(Halt::Wait {
            reason: "SnapshotNotReady",
            message: format!("waiting for VirtualMachineSnapshot {} to be Ready", spec.snapshot),
            after: Duration::from_secs(3),
        }),
    }
}

/// `vm`: the VM of the restore's name now; `taken_of`: the UID the snapshot was taken of. A VM
/// deleted and created again under the same name is another VM: its snapshots are not its own.
fn vm_restorable(
    spec: &VirtualMachineRestoreSpec,
    taken_of: Option<&str>,
    vm: Option<VirtualMachine>,
) -> Result<VirtualMachine, Halt> {
    let Some(vm) = vm else {
        return Err(Halt::Refuse {
            reason: "VmNotFound",
            message: format!("VirtualMachine {} does not exist", spec.vm_name),
        });
    };
    if vm.metadata.deletion_timestamp.is_some() {
        return Err(Halt::Refuse {
            reason: "VmBeingDeleted",
            message: format!("VirtualMachine {} is being deleted", spec.vm_name),
        });
    }
    if taken_of.is_some() && taken_of != vm.metadata.uid.as_deref() {
        return Err(Halt::Refuse {
            reason: "SnapshotOfAnotherVm",
            message: format!(
                "VirtualMachineSnapshot {} was taken of an earlier VirtualMachine named {} (another UID)",
                spec.snapshot, spec.vm_name
            ),
        });
    }
    Ok(vm)
}

/// The images of `vm` on which RBD snapshot `name` is missing; `recorded`: the snapshot's disks.
async fn images_lacking(
    step: &Step<'_>,
    vm: &VirtualMachine,
    name: &str,
    recorded: &[SnapshotDiskStatus],
) -> Result<Vec<String>, Error> {
    let images = step
        .ctx
        .storage
        .vm_names(&step.namespace, &vm.storage_name())
        .images(vm.spec.data_disks.len());
    let found = {
        let name = name.to_owned();
        per_image(step.ctx, &step.namespace, &images, move |io, image| {
            rbd::find(io, &image, &name)
        })
        .await?
    };
    Ok(missing_images(&images, found, recorded)?)
}

/// `found`: what [`rbd::find`] found on each of `images`. A snapshot of that name with another
/// id than the one recorded is not the snapshot's: it was removed and taken again outside the
/// operator.
fn missing_images(
    images: &[String],
    found: Vec<Result<Option<Option<SnapInfo>>, StorageError>>,
    recorded: &[SnapshotDiskStatus],
) -> Result<Vec<String>, StorageError> {
    let mut missing = Vec::new();
    for ((image, result), index) in images.iter().zip(found).zip(0..) {
        let recorded = recorded.get(index).and_then(|d| d.snapshot_id);
        match result? {
            Some(Some(info)) if recorded.is_none_or(|id| id as u64 == info.id) => {}
            _ => missing.push(image.clone()),
        }
    }
    Ok(missing)
}

/// Restore into a new VM: creates it (or finds the one this restore created before a crash),
/// then waits for its disks.
async fn create_target(
    step: &Step<'_>,
    mut status: VirtualMachineRestoreStatus,
    source: &VirtualMachine,
    target: &str,
    snapshot: &str,
) -> Result<Action, Error> {
    let existing = match step.vms.get_opt(target).await? {
        Some(vm) => Some(vm),
        None => {
            let new = match target_vm(step.restore, source, target, snapshot) {
                Ok(vm) => vm,
                Err(e) => {
                    return step
                        .refuse(
                            status,
                            "InvalidSourceXml",
                            format!(
                                "the XML of VirtualMachine {} cannot be copied: {e}",
                                source.name_any()
                            ),
                        )
                        .await;
                }
            };
            match step.vms.create(&PostParams::default(), &new).await {
                Ok(_) => {
                    info!(target, snapshot, "new VirtualMachine created from the snapshot");
                    None
                }
                // Created meanwhile (by whom is checked below).
                Err(kube::Error::Api(e)) if e.code == 409 => step.vms.get_opt(target).await?,
                Err(kube::Error::Api(e)) if e.code == 422 => {
                    return step
                        .refuse(
                            status,
                            "TargetRejected",
                            format!("VirtualMachine {target} cannot be created: {}", e.message),
                        )
                        .await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    if let Some(vm) = existing
        && !created_by(&vm, step.restore)
    {
        return step
            .refuse(
                status,
                "TargetExists",
                format!(
                    "VirtualMachine {target} already exists and was not created by this restore; choose another target name"
                ),
            )
            .await;
    }
    status.previous_state = Some(source.spec.state);
    status.snapshot_name = Some(snapshot.to_owned());
    status.target_vm = Some(target.to_owned());
    status.start_time.get_or_insert_with(now);
    let message = format!(
        "VirtualMachine {target} created with the disks of {} at '{snapshot}'; waiting for its storage",
        source.name_any()
    );
    let status = step
        .advance(status, RestorePhase::Creating, "TargetCreated", message)
        .await?;
    creating(step, status).await
}

/// Restore into a new VM: waits for the new VM's StorageReady.
async fn creating(step: &Step<'_>, mut status: VirtualMachineRestoreStatus) -> Result<Action, Error> {
    let target = status
        .target_vm
        .clone()
        .or_else(|| step.restore.spec.target.as_ref().map(|t| t.name.clone()))
        .unwrap_or_default();
    let vm = match step.vms.get_opt(&target).await? {
        Some(vm) if created_by(&vm, step.restore) => vm,
        Some(_) => {
            return fail(
                step,
                status,
                "TargetExists",
                format!("VirtualMachine {target} was replaced by one this restore did not create"),
            )
            .await;
        }
        None => {
            return fail(
                step,
                status,
                "TargetDeleted",
                format!("VirtualMachine {target} was deleted before its disks were ready"),
            )
            .await;
        }
    };
    let conditions = vm
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if !crate::controller::conditions::is_true(conditions, ct::STORAGE_READY) {
        let detail = conditions
            .iter()
            .find(|c| c.type_ == ct::STORAGE_READY)
            .map(|c| format!(" ({}: {})", c.reason, c.message))
            .unwrap_or_default();
        let message = format!("waiting for the disks of VirtualMachine {target}{detail}");
        step.write(status, RestorePhase::Creating, "WaitingForStorage", &message)
            .await?;
        return Ok(Action::requeue(POLL));
    }
    status.completion_time = Some(now());
    status.error = None;
    let message = format!(
        "VirtualMachine {target} has the disks of {} at '{}'",
        step.restore.spec.vm_name,
        status.snapshot_name.clone().unwrap_or_default()
    );
    step.advance(status, RestorePhase::Succeeded, "RestoreSucceeded", message)
        .await?;
    reset_failures(step.ctx, step.restore);
    step.ctx.metrics.operation(KIND, "restore", "ok");
    Ok(Action::await_change())
}

async fn stopping(step: &Step<'_>, mut status: VirtualMachineRestoreStatus) -> Result<Action, Error> {
    let Some(vm) = step.vm().await? else {
        return fail(
            step,
            status,
            "VmNotFound",
            "the VirtualMachine was deleted during the restore".into(),
        )
        .await;
    };
    if vm.spec.state != DesiredState::Disabled || status.disabled_generation.is_none() {
        let generation = if vm.spec.state != DesiredState::Disabled {
            step.set_vm_state(DesiredState::Disabled).await?
        } else {
            vm.metadata.generation.unwrap_or_default()
        };
        status.disabled_generation = Some(generation);
        let message = format!(
            "waiting for the domain of VirtualMachine {} to be stopped and undefined",
            step.restore.spec.vm_name
        );
        step.write(status, RestorePhase::Stopping, "WaitingForDomain", &message)
            .await?;
        return Ok(Action::requeue(POLL));
    }
    if !domain_gone(&vm, status.disabled_generation.unwrap_or_default()) {
        let where_ = vm
            .status
            .as_ref()
            .and_then(|s| s.domain.as_ref())
            .map(|d| format!(" (hypervisor {} reports {:?})", d.node, d.state))
            .unwrap_or_default();
        let message = format!(
            "waiting for the domain of VirtualMachine {} to be stopped and undefined{where_}",
            step.restore.spec.vm_name
        );
        step.write(status, RestorePhase::Stopping, "WaitingForDomain", &message)
            .await?;
        return Ok(Action::requeue(POLL));
    }
    let status = step
        .write(
            status,
            RestorePhase::RollingBack,
            "RollingBack",
            "domain gone; rolling every disk back",
        )
        .await?;
    rolling_back(step, status).await
}

async fn rolling_back(step: &Step<'_>, mut status: VirtualMachineRestoreStatus) -> Result<Action, Error> {
    let Some(vm) = step.vm().await? else {
        return fail(
            step,
            status,
            "VmNotFound",
            "the VirtualMachine was deleted during the restore".into(),
        )
        .await;
    };
    // Never roll back while a domain may run: someone re-enabled the VM -> back to Stopping.
    if vm.spec.state != DesiredState::Disabled
        || !domain_gone(&vm, status.disabled_generation.unwrap_or_default())
    {
        status.disabled_generation = None;
        let message =
            "the VirtualMachine was re-enabled before the roll-back: disabling it again".to_string();
        step.write(status, RestorePhase::Stopping, "WaitingForDomain", &message)
            .await?;
        return Ok(Action::requeue(POLL));
    }
    let name = status.snapshot_name.clone().unwrap_or_default();
    let images = step
        .ctx
        .storage
        .vm_names(&step.namespace, &vm.storage_name())
        .images(vm.spec.data_disks.len());
    let results = roll_back_images(step, &images, &name).await?;
    let (done, first_error) = rollback_outcome(&images, results);
    for _ in &done {
        step.ctx.metrics.ceph_write("snap_rollback");
    }
    status.rolled_back = done;
    if let Some(e) = first_error {
        return rollback_failed(step, status, &name, e).await;
    }
    status.error = None;
    let previous = status.previous_state.unwrap_or_default();
    let message = format!(
        "{} disk(s) rolled back to '{name}'; bringing the VM back to {previous:?}",
        images.len()
    );
    let status = step
        .advance(status, RestorePhase::Starting, "DisksRolledBack", message)
        .await?;
    starting(step, status).await
}

/// Under the VM's lock: no other Ceph work on its disks while they are rolled back.
async fn roll_back_images(
    step: &Step<'_>,
    images: &[String],
    name: &str,
) -> Result<Vec<Result<Option<()>, StorageError>>, Error> {
    let lock = step.ctx.vm_lock(&step.namespace, &step.restore.spec.vm_name);
    let guard = lock.lock().await;
    let results = {
        let name = name.to_owned();
        per_image(step.ctx, &step.namespace, images, move |io, image| {
            rbd::rollback(io, &image, &name).map(Some)
        })
        .await?
    };
    drop(guard);
    Ok(results)
}

/// The images rolled back, and the first error, the one reported. `None` in `results`: the VM's
/// RBD namespace does not exist, an error too: its disks are not there to roll back.
fn rollback_outcome(
    images: &[String],
    results: Vec<Result<Option<()>, StorageError>>,
) -> (Vec<String>, Option<StorageError>) {
    let mut done = Vec::new();
    let mut first_error = None;
    for (image, result) in images.iter().zip(results) {
        match result {
            Ok(Some(())) => done.push(image.clone()),
            Ok(None) => {
                first_error.get_or_insert(StorageError::SourceNotFound {
                    what: format!("image {image}"),
                    detail: "the VM's RBD namespace does not exist".into(),
                });
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    (done, first_error)
}

/// Stays `RollingBack` (recording the images done so far) and returns the error, so that the
/// roll-back is retried: a VM is never left with half its disks rolled back.
async fn rollback_failed(
    step: &Step<'_>,
    mut status: VirtualMachineRestoreStatus,
    name: &str,
    e: StorageError,
) -> Result<Action, Error> {
    let message = format!("rolling back to '{name}': {e}");
    status.error = Some(OperationError {
        time: Some(now()),
        message: message.clone(),
    });
    step.write(status, RestorePhase::RollingBack, e.reason(), &message)
        .await?;
    step.ctx
        .publish(step.restore, EventType::Warning, e.reason(), "Restore", message)
        .await;
    Err(e.into())
}

async fn starting(step: &Step<'_>, mut status: VirtualMachineRestoreStatus) -> Result<Action, Error> {
    let previous = status.previous_state.unwrap_or_default();
    let Some(vm) = step.vm().await? else {
        return fail(
            step,
            status,
            "VmNotFound",
            "the VirtualMachine was deleted during the restore".into(),
        )
        .await;
    };
    if status.restored_generation.is_none() {
        let generation = if vm.spec.state != previous {
            step.set_vm_state(previous).await?
        } else {
            vm.metadata.generation.unwrap_or_default()
        };
        status.restored_generation = Some(generation);
        let message = format!(
            "waiting for VirtualMachine {} to be {previous:?}",
            step.restore.spec.vm_name
        );
        step.write(status, RestorePhase::Starting, "WaitingForVm", &message)
            .await?;
        return Ok(Action::requeue(POLL));
    }
    let vm_status = vm.status.clone().unwrap_or_default();
    let reached = vm_status.phase == Some(phase::target(previous))
        && vm_status.observed_generation.unwrap_or(0) >= status.restored_generation.unwrap_or(0);
    if !reached {
        let message = format!(
            "disks rolled back; waiting for VirtualMachine {} to be {previous:?} (now {:?})",
            step.restore.spec.vm_name, vm_status.phase
        );
        step.write(status, RestorePhase::Starting, "WaitingForVm", &message)
            .await?;
        return Ok(Action::requeue(POLL));
    }
    status.completion_time = Some(now());
    let message = format!(
        "VirtualMachine {} rolled back to '{}' and {previous:?} again",
        step.restore.spec.vm_name,
        status.snapshot_name.clone().unwrap_or_default()
    );
    step.advance(status, RestorePhase::Succeeded, "RestoreSucceeded", message)
        .await?;
    reset_failures(step.ctx, step.restore);
    step.ctx.metrics.operation(KIND, "restore", "ok");
    Ok(Action::await_change())
}

async fn fail(
    step: &Step<'_>,
    mut status: VirtualMachineRestoreStatus,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    status.error = Some(OperationError {
        time: Some(now()),
        message: message.clone(),
    });
    step.write(status, RestorePhase::Failed, reason, &message).await?;
    step.ctx.metrics.operation(KIND, "restore", "error");
    step.ctx
        .publish(step.restore, EventType::Warning, reason, "Restore", message)
        .await;
    Ok(Action::await_change())
}

/// Deleted half-way: never leave the VM disabled, nor half rolled back.
async fn cleanup(step: &Step<'_>) -> Result<Action, Error> {
    let status = step.restore.status.clone().unwrap_or_default();
    match status.phase {
        Some(RestorePhase::RollingBack) => {
            // Finish the roll-back (the object is kept by the finalizer meanwhile).
            rolling_back(step, status).await?;
            Err(Error::Waiting(
                "finishing the roll-back before the restore goes".into(),
            ))
        }
        Some(RestorePhase::Stopping | RestorePhase::Starting) => {
            if let (Some(vm), Some(previous)) = (step.vm().await?, status.previous_state)
                && vm.spec.state == DesiredState::Disabled
                && previous != DesiredState::Disabled
            {
                step.set_vm_state(previous).await?;
                step.ctx
                    .publish(
                        step.restore,
                        EventType::Normal,
                        "RestoreAbandoned",
                        "Restore",
                        format!(
                            "restore deleted before it finished: VirtualMachine set back to {previous:?}"
                        ),
                    )
                    .await;
            }
            Ok(Action::await_change())
        }
        _ => Ok(Action::await_change()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DomainStatus, VirtualMachineRestoreSpec, VirtualMachineStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn vm(
        domain: Option<(DomainState, i64)>,
        node: Option<&str>,
        phase: Option<Phase>,
        observed: i64,
    ) -> VirtualMachine {
        let mut vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "vm1", "namespace": "ns"},
            "spec": {"xml": "<domain/>", "systemDisk": {"source": {"blank": {}}, "size": "1Mi"}}
        }))
        .unwrap();
        vm.status = Some(VirtualMachineStatus {
            domain: domain.map(|(state, generation)| DomainStatus {
                node: "hv1".into(),
                name: "vm1".into(),
                state,
                observed_generation: Some(generation),
                ..Default::default()
            }),
            node: node.map(Into::into),
            phase,
            observed_generation: Some(observed),
            ..Default::default()
        });
        vm
    }

    #[test]
    fn domain_gone_needs_a_fresh_absent_report() {
        assert!(!domain_gone(
            &vm(Some((DomainState::Running, 3)), Some("hv1"), None, 3),
            3
        ));
        // Absent, but reported for a generation before the VM was disabled.
        assert!(!domain_gone(
            &vm(Some((DomainState::Absent, 2)), Some("hv1"), None, 3),
            3
        ));
        assert!(domain_gone(
            &vm(Some((DomainState::Absent, 3)), Some("hv1"), None, 3),
            3
        ));
        // Never placed.
        assert!(domain_gone(&vm(None, None, None, 1), 3));
        // Placed, never reported: only once the controller computed Disabled for that generation.
        assert!(!domain_gone(&vm(None, Some("hv1"), Some(Phase::Started), 2), 3));
        assert!(domain_gone(&vm(None, Some("hv1"), Some(Phase::Disabled), 3), 3));
    }

    fn restore(name: &str, created: i64, phase: Option<RestorePhase>) -> Arc<VirtualMachineRestore> {
        let mut r = VirtualMachineRestore::new(
            name,
            VirtualMachineRestoreSpec {
                vm_name: "vm1".into(),
                snapshot: "s".into(),
                target: None,
            },
        );
        r.metadata.namespace = Some("ns".into());
        r.metadata.uid = Some(name.into());
        r.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        r.status = phase.map(|p| VirtualMachineRestoreStatus {
            phase: Some(p),
            ..Default::default()
        });
        Arc::new(r)
    }

    #[test]
    fn the_new_vm_copies_the_source_at_the_snapshot() {
        let mut source = vm(None, Some("hv1"), Some(Phase::Started), 1);
        source.spec.xml = "<domain type='kvm'><name>vm1</name><uuid>6c0d3ef2-5b55-4a49-9c1c-6e2f5d0c8a11</uuid><memory unit='MiB'>64</memory></domain>".into();
        source.spec.state = DesiredState::Stopped;
        source.spec.data_disks = vec![source.spec.system_disk.clone()];
        source.spec.data_disks[0].bus = crate::api::DiskBus::Scsi;
        source.spec.metadata = BTreeMap::from([("site".to_string(), "a".to_string())]);
        source
            .metadata
            .labels
            .get_or_insert_default()
            .insert(crate::api::NODE_LABEL.into(), "hv1".into());
        let mut r = (*restore("r", 1, None)).clone();
        r.metadata.uid = Some("uid-r".into());
        let new = target_vm(&r, &source, "copy", "before").unwrap();
        assert_eq!(new.metadata.name.as_deref(), Some("copy"));
        assert_eq!(new.metadata.namespace.as_deref(), Some("ns"));
        assert!(created_by(&new, &r));
        assert!(
            !new.labels().contains_key(crate::api::NODE_LABEL),
            "placement is the controller's"
        );
        assert_eq!(crate::domain_xml::extract_uuid(&new.spec.xml).unwrap(), None);
        assert_eq!(new.spec.state, DesiredState::Stopped);
        assert_eq!(new.spec.metadata, source.spec.metadata);
        for disk in std::iter::once(&new.spec.system_disk).chain(&new.spec.data_disks) {
            let from = disk.source.vm.as_ref().unwrap();
            assert_eq!(
                (from.name.as_str(), from.snapshot.as_deref()),
                ("vm1", Some("before"))
            );
            assert!(disk.source.blank.is_none() && disk.size.is_none());
        }
        assert_eq!(new.spec.data_disks[0].bus, crate::api::DiskBus::Scsi);
        // A VM of that name this restore did not create.
        let mut other = new.clone();
        other.metadata.annotations = None;
        assert!(!created_by(&other, &r));
    }

    #[test]
    fn a_missing_snapshot_is_waited_for_a_short_while_only() {
        let at = |s| Timestamp::from_second(s).unwrap();
        let grace = MISSING_SNAPSHOT_GRACE.as_secs() as i64;
        let table = [
            (Some(at(100)), at(100), Some(MISSING_SNAPSHOT_GRACE)),
            (
                Some(at(100)),
                at(110),
                Some(MISSING_SNAPSHOT_GRACE - Duration::from_secs(10)),
            ),
            (Some(at(100)), at(100 + grace), None),
            (Some(at(100)), at(1000), None),
            // A clock behind the API server's: still waits at most the grace.
            (
                Some(at(100)),
                at(90),
                Some(MISSING_SNAPSHOT_GRACE - Duration::from_secs(10)),
            ),
        ];
        for (created, now, expected) in table {
            assert_eq!(
                missing_snapshot_wait(created.as_ref(), now),
                expected,
                "{created:?} {now}"
            );
        }
    }

    #[test]
    fn one_restore_per_vm() {
        let old_done = restore("a", 1, Some(RestorePhase::Succeeded));
        let running = restore("b", 5, Some(RestorePhase::RollingBack));
        let new = restore("c", 10, None);
        assert_eq!(
            competing(&new, &[old_done.clone(), running.clone(), new.clone()]).as_deref(),
            Some("b")
        );
        assert_eq!(competing(&new, &[old_done.clone(), new.clone()]), None);
        // Two pending ones: the older goes first.
        let newer = restore("d", 11, None);
        assert_eq!(
            competing(&newer, &[new.clone(), newer.clone()]).as_deref(),
            Some("c")
        );
        assert_eq!(competing(&new, &[new.clone(), newer.clone()]), None);
    }

    /// What `pending` does on a halt, and its reason (`None`: it goes on).
    fn halted(result: Result<(), Halt>) -> Option<(&'static str, &'static str)> {
        match result.err()? {
            Halt::Wait { reason, .. } => Some(("wait", reason)),
            Halt::Refuse { reason, .. } => Some(("refuse", reason)),
            Halt::Error(_) => Some(("error", "")),
        }
    }

    #[test]
    fn only_a_ready_snapshot_of_the_vm_is_restored() {
        let spec = restore("r", 1, None).spec.clone();
        let snapshot = |of: &str, phase: Option<SnapshotPhase>, ready_to_use: bool| {
            let mut s: VirtualMachineSnapshot = serde_json::from_value(json!({
                "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineSnapshot",
                "metadata": {"name": "s", "namespace": "ns"},
                "spec": {"vmName": of}
            }))
            .unwrap();
            s.status = Some(crate::api::VirtualMachineSnapshotStatus {
                phase,
                ready_to_use,
                ..Default::default()
            });
            s
        };
        let table = [
            ("vm1", Some(SnapshotPhase::Ready), true, None),
            (
                "vm2",
                Some(SnapshotPhase::Ready),
                true,
                Some(("refuse", "SnapshotOfAnotherVm")),
            ),
            (
                "vm1",
                Some(SnapshotPhase::Ready),
                false,
                Some(("refuse", "SnapshotNotUsable")),
            ),
            (
                "vm1",
                Some(SnapshotPhase::Failed),
                false,
                Some(("refuse", "SnapshotNotUsable")),
            ),
            (
                "vm1",
                Some(SnapshotPhase::Deleting),
                true,
                Some(("refuse", "SnapshotNotUsable")),
            ),
            (
                "vm1",
                Some(SnapshotPhase::InProgress),
                false,
                Some(("wait", "SnapshotNotReady")),
            ),
            (
                "vm1",
                Some(SnapshotPhase::Pending),
                false,
                Some(("wait", "SnapshotNotReady")),
            ),
            ("vm1", None, false, Some(("wait", "SnapshotNotReady"))),
        ];
        for (of, phase, ready_to_use, expected) in table {
            assert_eq!(
                halted(snapshot_usable(&spec, &snapshot(of, phase, ready_to_use))),
                expected,
                "{of} {phase:?} {ready_to_use}"
            );
        }
    }

    #[test]
    fn the_vm_must_be_the_one_the_snapshot_was_taken_of() {
        let spec = restore("r", 1, None).spec.clone();
        let with_uid = |uid: &str| {
            let mut vm = vm(None, None, None, 1);
            vm.metadata.uid = Some(uid.into());
            vm
        };
        let mut deleting = with_uid("u1");
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(1).unwrap()));
        let table = [
            (Some(with_uid("u1")), Some("u1"), None),
            // Taken before the controller recorded UIDs.
            (Some(with_uid("u1")), None, None),
            (
                Some(with_uid("u2")),
                Some("u1"),
                Some(("refuse", "SnapshotOfAnotherVm")),
            ),
            (None, Some("u1"), Some(("refuse", "VmNotFound"))),
            (Some(deleting), Some("u1"), Some(("refuse", "VmBeingDeleted"))),
        ];
        for (vm, taken_of, expected) in table {
            let uid = vm.as_ref().and_then(|vm| vm.metadata.uid.clone());
            assert_eq!(
                halted(vm_restorable(&spec, taken_of, vm).map(drop)),
                expected,
                "{uid:?} {taken_of:?}"
            );
        }
    }

    #[test]
    fn a_missing_snapshot_is_waited_for_then_refused() {
        let spec = restore("r", 1, None).spec.clone();
        let Halt::Wait { after, .. } = missing_snapshot(&spec, Some(Duration::from_secs(20))) else {
            panic!("waits while it may come");
        };
        assert_eq!(after, Duration::from_secs(5));
        let Halt::Wait { after, message, .. } = missing_snapshot(&spec, Some(Duration::from_millis(300)))
        else {
            panic!("waits while it may come");
        };
        assert_eq!(after, Duration::from_millis(300));
        assert!(message.contains("fails in 1 s"), "{message}");
        assert!(matches!(
            missing_snapshot(&spec, None),
            Halt::Refuse {
                reason: "SnapshotNotFound",
                ..
            }
        ));
    }

    #[test]
    fn the_snapshot_must_be_on_every_image_with_its_recorded_id() {
        let images = ["sys".to_string(), "data".to_string()];
        let info = |id| {
            Ok(Some(Some(SnapInfo {
                id,
                name: "before".into(),
                size: 1,
                timestamp: std::time::SystemTime::UNIX_EPOCH,
                namespace: crate::ceph::SnapNamespace::User,
            })))
        };
        let recorded = |ids: &[i64]| -> Vec<SnapshotDiskStatus> {
            ids.iter()
                .map(|&id| SnapshotDiskStatus {
                    image: String::new(),
                    snapshot_id: Some(id),
                    size_bytes: None,
                })
                .collect()
        };
        let table: [(Vec<_>, Vec<SnapshotDiskStatus>, Vec<&str>); 6] = [
            (vec![info(4), info(7)], recorded(&[4, 7]), vec![]),
            // Ids not recorded: any snapshot of that name.
            (vec![info(4), info(7)], vec![], vec![]),
            // Removed and taken again outside the operator.
            (vec![info(4), info(9)], recorded(&[4, 7]), vec!["data"]),
            (vec![info(4), Ok(Some(None))], recorded(&[4, 7]), vec!["data"]),
            // Image or RBD namespace gone.
            (vec![Ok(None), info(7)], recorded(&[4, 7]), vec!["sys"]),
            (vec![Ok(None), Ok(None)], vec![], vec!["sys", "data"]),
        ];
        for (found, recorded, expected) in table {
            assert_eq!(missing_images(&images, found, &recorded).unwrap(), expected);
        }
        let failed = vec![Ok(None), Err(StorageError::Internal("ceph down".into()))];
        assert!(missing_images(&images, failed, &[]).is_err());
    }

    #[test]
    fn a_roll_back_reports_the_images_done_and_the_first_error() {
        let images = ["sys".to_string(), "data1".to_string(), "data2".to_string()];
        let busy = || Err(StorageError::Internal("busy".into()));
        let (done, error) = rollback_outcome(&images, vec![Ok(Some(())), Ok(Some(())), Ok(Some(()))]);
        assert_eq!(done, images);
        assert!(error.is_none());
        let (done, error) = rollback_outcome(&images, vec![Ok(Some(())), busy(), Ok(None)]);
        assert_eq!(done, ["sys"]);
        assert!(matches!(error, Some(StorageError::Internal(m)) if m == "busy"));
        let (done, error) = rollback_outcome(&images, vec![Ok(None), Ok(None), Ok(None)]);
        assert!(done.is_empty());
        assert_eq!(error.unwrap().reason(), "SourceNotFound");
    }
}
