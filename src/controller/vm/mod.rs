//! Reconciles one VirtualMachine: storage in Ceph, placement on a hypervisor, status; and on
//! deletion, waits for the domain to be gone before it handles the RBD data.

mod plan;
mod status;

pub use plan::{PlanError, generated_uuid};

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::api::{
    DeletionPolicy, DesiredState, DomainState, FenceState, Hypervisor, ImportProgress,
    MIGRATION_TARGET_LABEL, NODE_LABEL, VM_FINALIZER, VirtualMachine, condition_types as ct,
};
use crate::controller::conditions;
use crate::controller::context::Context;
use crate::controller::events::{self, Note};
use crate::controller::frame::{self, FrameError, Retry};
use crate::controller::placement::{self, Candidate, Decision, Member};
use crate::controller::storage::{self, StorageError};
use crate::field_manager;
use status::{HostHealth, Scheduling, StatusInput, StorageOutcome};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("waiting for hypervisor {node} to stop and undefine the domain before the disks are handled")]
    WaitingForDomain { node: String },
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl ReconcileError {
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Kube(_) => "KubernetesApiError",
            ReconcileError::Storage(e) => e.reason(),
            ReconcileError::Plan(e) => e.reason(),
            ReconcileError::WaitingForDomain { .. } => "WaitingForDomain",
            ReconcileError::Finalizer(_) => "FinalizerError",
        }
    }
}

impl FrameError for ReconcileError {
    fn reason(&self) -> &'static str {
        ReconcileError::reason(self)
    }

    fn finalizer(message: String) -> Self {
        ReconcileError::Finalizer(message)
    }

    fn retry(&self) -> Retry {
        match self {
            ReconcileError::WaitingForDomain { .. } => Retry::After(Duration::from_secs(2)),
            _ => Retry::BackOff,
        }
    }
}

pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    frame::finalized(
        "VirtualMachine",
        &api,
        VM_FINALIZER,
        vm,
        &ctx.metrics,
        |event| async {
            match event {
                finalizer::Event::Apply(vm) => apply(&vm, &ctx, &api).await,
                finalizer::Event::Cleanup(vm) => cleanup(&vm, &ctx, &api).await,
            }
        },
    )
    .await
}

pub fn error_policy(vm: Arc<VirtualMachine>, err: &ReconcileError, ctx: Arc<Context>) -> Action {
    frame::error_policy(vm.as_ref(), err, &ctx.failures)
}

/// Publishes an Event without waiting for it: Events tell people what happened and are never
/// what the next step waits for, so they stay off the path from apply to Started.
fn publish(ctx: &Context, vm: &VirtualMachine, type_: EventType, reason: &str, action: &str, note: String) {
    let note = Note {
        type_,
        reason,
        action,
        text: note,
    };
    events::publish_in_background(&ctx.recorder, vm, note);
}

async fn apply(
    vm: &VirtualMachine,
    ctx: &Context,
    api: &Api<VirtualMachine>,
) -> Result<Action, ReconcileError> {
    let others = ctx.vms.state();
    let stored_uuid = stored_uuid(vm, ctx, api).await?;
    let plan = match plan_or_refuse(vm, ctx, api, &others, stored_uuid).await? {
        ControlFlow::Continue(plan) => plan,
        ControlFlow::Break(action) => return Ok(action),
    };
    let storage = match storage_of(vm, ctx, api, &plan).await? {
        ControlFlow::Continue(storage) => storage,
        ControlFlow::Break(action) => return Ok(action),
    };
    place(vm, ctx, api, &plan, &others, &storage).await
}

/// What a storage or plan failure shows in the status: `Failing` keeps the storage recorded
/// before and is retried, `Invalid` waits for the spec to change.
fn failure_outcome(vm: &VirtualMachine, reason: &str, message: String, retryable: bool) -> StorageOutcome {
    if retryable {
        StorageOutcome::Failing {
            reason: reason.into(),
            message,
            storage: vm.status.as_ref().and_then(|s| s.storage.clone()),
        }
    } else {
        StorageOutcome::Invalid {
            reason: reason.into(),
            message,
        }
    }
}

/// Shows a plan or storage failure in the status and in an Event (`action`: what failed). A
/// retryable one is returned as the reconcile's error, retried with back-off; any other waits
/// for a change of the spec.
async fn report_failure<E>(
    vm: &VirtualMachine,
    ctx: &Context,
    api: &Api<VirtualMachine>,
    err: E,
    (reason, retryable, action): (&str, bool, &str),
    uuid: Option<uuid::Uuid>,
) -> Result<(), ReconcileError>
where
    E: std::fmt::Display + Into<ReconcileError>,
{
    let outcome = failure_outcome(vm, reason, err.to_string(), retryable);
    write_status(vm, ctx, api, &outcome, &Scheduling::NotNeeded, None, uuid).await?;
    publish(ctx, vm, EventType::Warning, reason, action, err.to_string());
    if retryable {
        return Err(err.into());
    }
    Ok(())
}

/// The UUID the domain runs with, when the VM's stored XML holds it. Never guessed: a generated
/// UUID would replace the one the VM runs with, so a failure to read it stops the reconcile.
async fn stored_uuid(
    vm: &VirtualMachine,
    ctx: &Context,
    api: &Api<VirtualMachine>,
) -> Result<Option<uuid::Uuid>, ReconcileError> {
    match plan::uuid_source(vm) {
        plan::UuidSource::BaseXml => Ok(None),
        plan::UuidSource::Recorded(uuid) => Ok(Some(uuid)),
        plan::UuidSource::Storage => {
            let namespace = vm.namespace().unwrap_or_default();
            let uid = vm.metadata.uid.clone().unwrap_or_default();
            match storage::stored_domain_uuid(&ctx.storage, &namespace, &vm.storage_name(), &uid).await {
                Ok(uuid) => Ok(uuid),
                Err(err) => {
                    let message = format!("cannot read the domain UUID the VM's stored XML runs with: {err}");
                    let outcome = failure_outcome(vm, err.reason(), message, true);
                    write_status(vm, ctx, api, &outcome, &Scheduling::NotNeeded, None, None).await?;
                    Err(err.into())
                }
            }
        }
    }
}

/// The plan of the VM's storage, or, for a spec that cannot be carried out, the status and
/// Event that say why and what to wait for.
async fn plan_or_refuse(
    vm: &VirtualMachine,
    ctx: &Context,
    api: &Api<VirtualMachine>,
    others: &[Arc<VirtualMachine>],
    stored_uuid: Option<uuid::Uuid>,
) -> Result<ControlFlow<Action, plan::Plan>, ReconcileError> {
    let err = match plan::plan(
        vm,
        &ctx.settings,
        &ctx.storage.pool,
        &ctx.storage.namespace_map,
        others,
        stored_uuid,
    ) {
        Ok(plan) => return Ok(ControlFlow::Continue(plan)),
        Err(err) => err,
    };
    let duplicate = matches!(err, PlanError::DuplicateUuid { .. });
    let (reason, retryable) = (err.reason(), err.is_retryable());
    report_failure(vm, ctx, api, err, (reason, retryable, "Validate"), None).await?;
    if duplicate {
        // The other VM may be deleted, which changes nothing of this one.
        return Ok(ControlFlow::Break(Action::requeue(plan::DUPLICATE_UUID_RECHECK)));
    }
    Ok(ControlFlow::Break(Action::await_change()))
}

/// The VM's storage as recorded when it was checked recently enough, else as Ceph has it
/// once made or adopted; a failure is shown in the status.
async fn storage_of(
    vm: &VirtualMachine,
    ctx: &Context,
    api: &Api<VirtualMachine>,
    plan: &plan::Plan,
) -> Result<ControlFlow<Action, StorageOutcome>, ReconcileError> {
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let generation = vm.metadata.generation.unwrap_or_default();
    let previous = vm.status.clone().unwrap_or_default();
    let fresh = previous.storage.is_some()
        && conditions::is_true(&previous.conditions, ct::STORAGE_READY)
        && ctx
            .storage_checks
            .fresh(&uid, generation, ctx.settings.storage_recheck);
    let recorded = if fresh {
        previous.storage.clone()
    } else {
        still_present(vm, ctx, &plan.request).await
    };
    if let Some(recorded) = recorded {
        return Ok(ControlFlow::Continue(StorageOutcome::Ready(recorded)));
    }
    let (progress, reporter) = import_progress_reporter(api.clone(), vm.name_any());
    let ensured = storage::ensure_storage(&ctx.storage, &plan.request, move |p| {
        let _ = progress.send(p);
    })
    .await;
    reporter.await.ok();
    match ensured {
        Ok(observation) => {
            ctx.storage_checks.record(&uid, generation);
            announce_storage(ctx, vm, plan, &observation, previous.storage.is_none());
            Ok(ControlFlow::Continue(StorageOutcome::Ready(
                observation.to_status(),
            )))
        }
        Err(err) => {
            let err = explain_retained(err, ctx).await;
            let (reason, retryable) = (err.reason(), err.is_retryable());
            report_failure(
                vm,
                ctx,
                api,
                err,
                (reason, retryable, "CreateStorage"),
                Some(plan.uuid),
            )
            .await?;
            Ok(ControlFlow::Break(Action::await_change()))
        }
    }
}

/// The Events of storage made or adopted (once, when the VM had none recorded), and of its
/// warnings.
fn announce_storage(
    ctx: &Context,
    vm: &VirtualMachine,
    plan: &plan::Plan,
    observation: &storage::StorageObservation,
    first_time: bool,
) {
    if first_time {
        let note = if observation.adopted {
            format!(
                "adopted existing RBD group {} made by SEAPATH's tools",
                observation.group
            )
        } else {
            format!(
                "RBD group {} with {} image(s) ready",
                observation.group,
                observation.images.len()
            )
        };
        publish(ctx, vm, EventType::Normal, "StorageReady", "CreateStorage", note);
        for warning in &plan.warnings {
            publish(
                ctx,
                vm,
                EventType::Warning,
                "VmManagerWarning",
                "CreateStorage",
                warning.clone(),
            );
        }
    }
    for warning in &observation.warnings {
        publish(
            ctx,
            vm,
            EventType::Warning,
            "StorageWarning",
            "CreateStorage",
            warning.clone(),
        );
    }
}

/// Places the VM, hands it to its node and writes the status.
async fn place(
    vm: &VirtualMachine,
    ctx: &Context,
    api: &Api<VirtualMachine>,
    plan: &plan::Plan,
    others: &[Arc<VirtualMachine>],
    storage: &StorageOutcome,
) -> Result<Action, ReconcileError> {
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let unplaced = vm.status.as_ref().is_none_or(|s| s.node.is_none());
    let scheduling = if vm.spec.state == DesiredState::Disabled && unplaced {
        Scheduling::NotNeeded
    } else {
        schedule(vm, ctx, plan, others)
    };
    // Remembered before anything is awaited: the next VM placed, by this reconcile's neighbour,
    // counts this one where it goes (room and placement rules) even before the cache shows it.
    if let Scheduling::Placed { node, .. } = &scheduling {
        ctx.placements.set(&uid, node);
    }
    // The agent follows the label alone, so the label goes first.
    let handed = match &scheduling {
        Scheduling::Placed { node, .. } => hand_over(vm, ctx, api, node).await?,
        // Its node's agent would start a second copy: it is assigned nowhere meanwhile.
        Scheduling::Unschedulable { reason, .. } if reason == placement::REASON_STARTED_OUTSIDE => {
            unassign(vm, api).await?;
            HandOver::Unchanged
        }
        _ => HandOver::Unchanged,
    };
    let releasing = match &handed {
        // The newer version's event decides again; the check after a while is a safety net.
        HandOver::Outdated => return Ok(Action::requeue(OUTDATED_RECHECK)),
        HandOver::Releasing(release) => Some(release),
        _ => None,
    };
    ctx.failures.reset(&uid);
    write_status(vm, ctx, api, storage, &scheduling, releasing, Some(plan.uuid)).await?;
    let host = host_health(ctx, vm, &scheduling);
    Ok(Action::requeue(next_check(&host, ctx.settings.resync)))
}

/// How often a VM on a lost host is looked at again while the host is fenced or comes back.
const LOST_HOST_RECHECK: Duration = Duration::from_secs(2);

/// When a VM whose node label could not be written, because it changed since it was read, is
/// looked at again if its change's event did not come first.
const OUTDATED_RECHECK: Duration = Duration::from_secs(1);

/// When to reconcile again without a change. A lost host's fence and return are announced by
/// Hypervisor events, but those come from a watch apart from the cache placement reads, which
/// may not show the change yet when the VM is woken: the VM then checks again shortly rather
/// than at the next resync.
fn next_check(host: &HostHealth, resync: Duration) -> Duration {
    match host {
        HostHealth::Lost { .. } => LOST_HOST_RECHECK.min(resync),
        HostHealth::Answering => resync,
    }
}

/// An ownership refusal names the owner VirtualMachine; when that object is gone (deleted with
/// `deletionPolicy: Retain`), "delete that object" cannot help: say what the retained disks
/// are and how to take them over. Asked of the API server, not the cache, which may not have
/// listed every VM yet.
async fn explain_retained(err: StorageError, ctx: &Context) -> StorageError {
    let StorageError::OwnedByAnotherObject {
        what,
        owner_uid,
        owner: Some(owner),
    } = err
    else {
        return err;
    };
    let Some((namespace, name)) = owner.split_once('/') else {
        return StorageError::OwnedByAnotherObject {
            what,
            owner_uid,
            owner: Some(owner),
        };
    };
    let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(found) if found.as_ref().and_then(|vm| vm.metadata.uid.as_deref()) != Some(owner_uid.as_str()) => {
            StorageError::RetainedByDeletedVm {
                what,
                owner_uid,
                owner,
            }
        }
        _ => StorageError::OwnedByAnotherObject {
            what,
            owner_uid,
            owner: Some(owner),
        },
    }
}

/// The storage recorded in the status by an earlier run (another process, before a restart or
/// a leader change) for this generation, when every image of it is still listed in Ceph; the
/// VM's check is then counted as done. `None`: check Ceph in full.
async fn still_present(
    vm: &VirtualMachine,
    ctx: &Context,
    request: &storage::VmStorageRequest,
) -> Option<crate::api::StorageStatus> {
    if ctx
        .storage_checks
        .seen(&vm.metadata.uid.clone().unwrap_or_default())
    {
        return None;
    }
    let names = ctx.storage.vm_names(&request.kube_namespace, &request.name);
    let expected = names.images(request.disks.len() - 1);
    let recorded = status::recorded_storage(vm, &ctx.storage.pool, &names.rbd_namespace, &expected)?;
    let listing = match ctx
        .image_listings
        .get(&ctx.storage, &request.kube_namespace)
        .await
    {
        Ok(listing) => listing,
        Err(err) => {
            warn!(error = %err, "listing the namespace's images failed; checking the VM's storage in full");
            return None;
        }
    };
    if !expected.iter().all(|image| listing.contains(image)) {
        return None;
    }
    ctx.storage_checks.record(
        &vm.metadata.uid.clone().unwrap_or_default(),
        vm.metadata.generation.unwrap_or_default(),
    );
    Some(recorded.clone())
}

/// Writes import progress to `status.import` in the order it comes, and clears it when the
/// sender is dropped (the import ended, one way or another).
fn import_progress_reporter(
    api: Api<VirtualMachine>,
    name: String,
) -> (
    tokio::sync::mpsc::UnboundedSender<ImportProgress>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ImportProgress>();
    let task = tokio::spawn(async move {
        let params = PatchParams::apply(field_manager::IMPORT).force();
        let mut reported = false;
        while let Some(progress) = rx.recv().await {
            let patch = json!({"apiVersion": VirtualMachine::api_version(&()), "kind": VirtualMachine::kind(&()), "status": {"import": progress}});
            match api.patch_status(&name, &params, &Patch::Apply(patch)).await {
                Ok(_) => reported = true,
                Err(err) => warn!(error = %err, "reporting import progress failed"),
            }
        }
        if reported {
            let clear = json!({"apiVersion": VirtualMachine::api_version(&()), "kind": VirtualMachine::kind(&()), "status": {}});
            if let Err(err) = api.patch_status(&name, &params, &Patch::Apply(clear)).await {
                warn!(error = %err, "clearing import progress failed");
            }
        }
    });
    (tx, task)
}

/// What `hand_over` did.
#[derive(Debug, PartialEq, Eq)]
enum HandOver {
    /// The label already named the node.
    Unchanged,
    /// The label now names the node.
    Moved,
    /// The old node still holds the domain: the label is gone (removed now or before) until
    /// it releases it.
    Releasing(status::Release),
    /// The VM changed since this decision was read: nothing was written.
    Outdated,
}

/// Points the node label at `node`. When the VM moves while its domain is still defined on the
/// old node, the label is first removed, so the old agent stops and undefines the domain, and
/// only set to the new node once the old one reports it gone: two hosts never run one disk.
async fn hand_over(
    vm: &VirtualMachine,
    ctx: &Context,
    api: &Api<VirtualMachine>,
    node: &str,
) -> Result<HandOver, ReconcileError> {
    let label = vm.labels().get(NODE_LABEL).map(String::as_str);
    if label == Some(node) {
        return Ok(HandOver::Unchanged);
    }
    let domain = vm.status.as_ref().and_then(|s| s.domain.as_ref());
    // Even a domain reported Absent is released only by a listing of the old node that leaves
    // the VM out: its agent may still be about to define it from a view that predates the
    // move (a start asked for at the same time), and that listing proves it no longer will.
    let old_node_busy = domain
        .is_some_and(|d| d.node != node && !released_per_listing(ctx, vm, d) && !node_fenced(ctx, &d.node));
    if let Some(from) = domain.filter(|_| old_node_busy).map(|d| d.node.clone()) {
        if label.is_some() {
            info!(from = %from, to = %node, "moving: waiting for the old node to release the domain");
            apply_labels(vm, api, json!({}), None).await?;
        }
        let host_known = ctx.hypervisors.state().iter().any(|hv| hv.name_any() == from);
        return Ok(HandOver::Releasing(status::Release { from, host_known }));
    }
    // A node is named only on the version this decision read: an agent that claimed the VM
    // meanwhile (the agent's `claim`, written before any define) makes this write fail, and the
    // claim's event brings the VM back here to wait for that node's release. A copy of the VM
    // older than this controller's own last label write fails the same way, so a move is
    // announced once.
    match apply_labels(vm, api, json!({NODE_LABEL: node}), vm.resource_version()).await {
        Err(ReconcileError::Kube(kube::Error::Api(e))) if e.code == 409 => {
            debug!(to = %node, "the VM changed since this decision: deciding again on its new version");
            return Ok(HandOver::Outdated);
        }
        written => written?,
    }
    announce_move(ctx, vm, domain, node);
    Ok(HandOver::Moved)
}

/// The Event of a placement or of a failover.
fn announce_move(ctx: &Context, vm: &VirtualMachine, domain: Option<&crate::api::DomainStatus>, node: &str) {
    let failed_over_from = domain
        .filter(|d| d.node != node && d.state != DomainState::Absent && node_fenced(ctx, &d.node))
        .map(|d| d.node.clone());
    if let Some(from) = failed_over_from {
        warn!(from = %from, to = %node, "failing over");
        publish(
            ctx,
            vm,
            EventType::Warning,
            "FailedOver",
            "Failover",
            format!("hypervisor {from} was lost and fenced through Ceph; the VM is started on {node}"),
        );
    } else {
        info!(node = %node, "placed");
        publish(
            ctx,
            vm,
            EventType::Normal,
            "Scheduled",
            "Place",
            format!("placed on hypervisor {node}"),
        );
    }
}

/// Removes the node label (the agents follow it alone).
async fn unassign(vm: &VirtualMachine, api: &Api<VirtualMachine>) -> Result<(), ReconcileError> {
    if !vm.labels().contains_key(NODE_LABEL) {
        return Ok(());
    }
    apply_labels(vm, api, json!({}), None).await
}

/// The controller's labels of the VM (server-side apply: a label it set and leaves out goes),
/// with `on_version`, only on that version of the VM.
async fn apply_labels(
    vm: &VirtualMachine,
    api: &Api<VirtualMachine>,
    labels: serde_json::Value,
    on_version: Option<String>,
) -> Result<(), ReconcileError> {
    let mut metadata = json!({"name": vm.name_any(), "labels": labels});
    if let Some(version) = on_version {
        metadata["resourceVersion"] = json!(version);
    }
    let patch = json!({
        "apiVersion": VirtualMachine::api_version(&()), "kind": VirtualMachine::kind(&()),
        "metadata": metadata
    });
    api.patch(
        &vm.name_any(),
        &PatchParams::apply(field_manager::CONTROLLER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

/// The old node's listing of its VMs, newer than its last report on this VM, leaves the VM out:
/// the domain is gone there even if the agent's own report of it got lost, and the agent's
/// cache no longer assigns the VM there, so it will not define it again (the heartbeat lists
/// what the cache assigns, read under the gate that defines take).
fn released_per_listing(ctx: &Context, vm: &VirtualMachine, domain: &crate::api::DomainStatus) -> bool {
    let key = format!("{}/{}", vm.namespace().unwrap_or_default(), vm.name_any());
    let Some(hv) = ctx
        .hypervisors
        .state()
        .into_iter()
        .find(|hv| hv.name_any() == domain.node)
    else {
        return false;
    };
    let Some(status) = hv.status.as_ref() else {
        return false;
    };
    let newer = match (&status.vms_observed_time, &domain.observed_time) {
        (Some(listed), Some(reported)) => listed.0 > reported.0,
        _ => false,
    };
    newer && !status.vms.contains(&key)
}

/// Memory of the VMs placed on each node, from the controller's cache of every VM and the
/// placements this process made that the cache may not show yet (two VMs placed at once must
/// not both count on the same room).
pub(crate) fn allocated_memory(
    ctx: &Context,
    me: &VirtualMachine,
    others: &[Arc<VirtualMachine>],
) -> BTreeMap<String, i64> {
    let mut allocated = BTreeMap::new();
    for other in others.iter().filter(|o| o.metadata.uid != me.metadata.uid) {
        if other.spec.state == DesiredState::Disabled {
            continue;
        }
        let Some(node) = counted_on(ctx, other) else {
            continue;
        };
        *allocated.entry(node).or_default() += ctx.memory_of(other);
    }
    allocated
}

/// The node whose memory `vm` takes: where this process last placed it, else where its status
/// says it is.
pub(crate) fn counted_on(ctx: &Context, vm: &VirtualMachine) -> Option<String> {
    let remembered = ctx.placements.get(vm.metadata.uid.as_deref().unwrap_or_default());
    remembered.or_else(|| vm.status.as_ref().and_then(|s| s.node.clone()))
}

/// Every other VM as the placement rules see it. Rules select within one namespace, but every
/// namespace is listed: the failover order over all evacuees must come out the same in every
/// VM's reconcile.
pub(crate) fn neighbours<'a>(
    ctx: &Context,
    me: &VirtualMachine,
    others: &'a [Arc<VirtualMachine>],
) -> Vec<Member<'a>> {
    others
        .iter()
        .filter(|o| o.metadata.uid != me.metadata.uid)
        .map(|o| member(ctx, o))
        .collect()
}

/// A VM as the placement rules see it: every node it may run on now (recorded, labelled,
/// migration target, just placed by this process, or where its agent reports it active),
/// fenced nodes left out (nothing runs there any more).
fn member<'a>(ctx: &Context, vm: &'a VirtualMachine) -> Member<'a> {
    let status = vm.status.as_ref();
    let active = status
        .and_then(|s| s.domain.as_ref())
        .filter(|d| d.state.is_active())
        .map(|d| d.node.clone());
    let wherever = [
        status.and_then(|s| s.node.clone()),
        vm.labels().get(NODE_LABEL).cloned(),
        vm.labels().get(MIGRATION_TARGET_LABEL).cloned(),
        ctx.placements.get(vm.metadata.uid.as_deref().unwrap_or_default()),
    ];
    // A disabled VM is nowhere once its domain is gone.
    let placed = (vm.spec.state != DesiredState::Disabled).then_some(wherever);
    Member {
        nodes: placed
            .into_iter()
            .flatten()
            .chain([active])
            .flatten()
            .filter(|node| !node_fenced(ctx, node))
            .collect(),
        ..ruled(vm)
    }
}

/// Every hypervisor as placement sees it.
pub(crate) fn candidates(ctx: &Context) -> Vec<Candidate> {
    ctx.hypervisors
        .state()
        .iter()
        .map(|hv| candidate(hv, ctx))
        .collect()
}

fn schedule(
    vm: &VirtualMachine,
    ctx: &Context,
    plan: &plan::Plan,
    others: &[Arc<VirtualMachine>],
) -> Scheduling {
    let candidates = candidates(ctx);
    if let Some(node) = placement::moved_by_migration(vm, &candidates) {
        let rules = rules_at(&member(ctx, vm), &node, &neighbours(ctx, vm, others));
        return Scheduling::Placed { node, rules };
    }
    // The cache may not show our own last placement yet: remember it, so a reconcile on a stale
    // copy does not place the VM a second time, elsewhere.
    let remembered = ctx.placements.get(&vm.metadata.uid.clone().unwrap_or_default());
    let recorded = vm.status.as_ref().and_then(|s| s.node.clone());
    let label = vm.labels().get(NODE_LABEL).cloned();
    // An evacuee already sent to a healthy host (by this process, or by the leader before it)
    // stays there: deciding again on a copy that still shows the fenced host could pick
    // another one while the first may already start it.
    let evacuated_to = remembered
        .clone()
        .into_iter()
        .chain(label.clone())
        .find(|node| !node_fenced(ctx, node));
    // Where the agents' label points and the agent there reports the guest, it is: a copy
    // whose recorded node lags behind a label just moved (a live migration hands the VM over
    // by the label first) must not move it back.
    let runs_where_labelled = vm
        .status
        .as_ref()
        .and_then(|s| s.domain.as_ref())
        .filter(|d| label.as_deref() == Some(d.node.as_str()) && d.state.is_active())
        .map(|d| d.node.clone());
    let current = match (recorded, evacuated_to) {
        (Some(recorded), Some(sent)) if node_fenced(ctx, &recorded) => Some(sent),
        (recorded, _) => runs_where_labelled.or(recorded).or(label).or(remembered),
    };
    let allocated = allocated_memory(ctx, vm, others);
    let neighbours = neighbours(ctx, vm, others);
    let me = member(ctx, vm);
    let decision = match (
        started_outside_on(ctx, vm, &plan.domain, &candidates),
        current.as_deref(),
    ) {
        (Some(host), _) => placement::where_started_outside(&host, vm.spec.placement.as_ref()),
        (None, Some(node)) if placement::fails_over(node, vm.spec.placement.as_ref(), &candidates) => {
            evacuate(vm, ctx, others, &candidates, &allocated, &neighbours)
        }
        (None, None) => {
            let ahead = waiting_ahead(ctx, vm, others);
            let me = placement::Seeker {
                key: vm.key(),
                member: me.clone(),
                memory_mib: plan.memory_mib,
            };
            placement::place_in_turn(&me, &ahead, &candidates, &allocated, &neighbours)
        }
        (None, Some(_)) => placement::place(
            current.as_deref(),
            &me,
            plan.memory_mib,
            &candidates,
            &allocated,
            &neighbours,
        ),
    };
    match decision {
        Decision::Node(node) => Scheduling::Placed {
            rules: rules_at(&me, &node, &neighbours),
            node,
        },
        Decision::Unschedulable { reason, message } => Scheduling::Unschedulable {
            reason: reason.into(),
            message,
        },
    }
}

/// The rules the VM breaks on `node`, when any rule concerns it (its own, or another VM's
/// anti-affinity that names it).
fn rules_at(me: &Member, node: &str, neighbours: &[Member]) -> Option<Vec<placement::Broken>> {
    let concerned = me.has_rules() || neighbours.iter().any(|o| placement::keeps_away(o, me));
    concerned.then(|| placement::broken_at(me, node, neighbours))
}

/// The VMs of `vm`'s namespace that a placement rule ties to it, either way: where `vm` goes
/// changes what their rules find.
pub(crate) fn related_by_rules(
    vms: &Store<VirtualMachine>,
    vm: &VirtualMachine,
) -> Vec<ObjectRef<VirtualMachine>> {
    let me = ruled(vm);
    vms.state()
        .iter()
        .filter(|o| o.metadata.namespace == vm.metadata.namespace && placement::related(&me, &ruled(o)))
        .map(|o| ObjectRef::from_obj(&**o))
        .collect()
}

/// A VM as its placement rules see it, wherever it is.
fn ruled(vm: &VirtualMachine) -> Member<'_> {
    Member::of(vm, vm.spec.placement.as_ref())
}

/// An answering hypervisor that reports the VM's domain running there, started outside the
/// operator (vm_manager or Pacemaker), while the operator runs no copy of it elsewhere (if it
/// does, a copy marked for the VM is destroyed by its host's agent).
fn started_outside_on(
    ctx: &Context,
    vm: &VirtualMachine,
    domain: &str,
    candidates: &[Candidate],
) -> Option<String> {
    let reported = vm.status.as_ref().and_then(|s| s.domain.as_ref());
    let runs_there = |host: &str| {
        ctx.hypervisors
            .get(&kube::runtime::reflector::ObjectRef::new(host))
            .and_then(|hv| {
                hv.status
                    .as_ref()
                    .map(|s| s.started_outside.iter().any(|d| d == domain))
            })
            .unwrap_or(false)
    };
    candidates
        .iter()
        .filter(|c| c.ready && runs_there(&c.name))
        .map(|c| c.name.clone())
        .find(|host| !reported.is_some_and(|d| d.node != *host && d.state.is_active()))
}

/// The VM leaves a fenced host: it gets the place the priority order over every VM leaving a
/// fenced host gives it (see [`placement::place_evacuees`]).
fn evacuate(
    vm: &VirtualMachine,
    ctx: &Context,
    others: &[Arc<VirtualMachine>],
    candidates: &[Candidate],
    allocated: &BTreeMap<String, i64>,
    neighbours: &[Member],
) -> Decision {
    let leaving = |o: &VirtualMachine| {
        o.spec.state != DesiredState::Disabled
            && o.metadata.deletion_timestamp.is_none()
            && o.status
                .as_ref()
                .and_then(|s| s.node.as_deref())
                .is_some_and(|node| placement::fails_over(node, o.spec.placement.as_ref(), candidates))
    };
    let me = vm.key();
    let mut evacuees: Vec<placement::Seeker> = others
        .iter()
        .filter(|o| o.metadata.uid != vm.metadata.uid && leaving(o))
        .map(|o| seeker(ctx, o))
        .collect();
    evacuees.push(seeker(ctx, vm));
    // The evacuees' own memory counts on the fenced host, which takes nothing: leave it out.
    let mut decisions = placement::place_evacuees(&evacuees, candidates, allocated, neighbours);
    decisions.remove(&me).expect("the VM is among the evacuees")
}

/// The VMs of higher priority than `vm` waiting to be placed: their storage is ready, yet no
/// node took them (their last reconcile found no room) and this process has not placed them
/// since.
fn waiting_ahead<'a>(
    ctx: &Context,
    vm: &VirtualMachine,
    others: &'a [Arc<VirtualMachine>],
) -> Vec<placement::Seeker<'a>> {
    let priority = |o: &VirtualMachine| o.spec.placement.as_ref().map_or(0, |p| p.priority);
    let waiting = |o: &VirtualMachine| {
        let uid = o.metadata.uid.as_deref().unwrap_or_default();
        o.spec.state != DesiredState::Disabled
            && o.metadata.deletion_timestamp.is_none()
            && !o.labels().contains_key(NODE_LABEL)
            && ctx.placements.get(uid).is_none()
            && o.status
                .as_ref()
                .is_some_and(|s| s.node.is_none() && conditions::is_true(&s.conditions, ct::STORAGE_READY))
    };
    others
        .iter()
        .filter(|o| o.metadata.uid != vm.metadata.uid && priority(o) > priority(vm) && waiting(o))
        .map(|o| seeker(ctx, o))
        .collect()
}

fn seeker<'a>(ctx: &Context, vm: &'a VirtualMachine) -> placement::Seeker<'a> {
    placement::Seeker {
        key: vm.key(),
        member: member(ctx, vm),
        memory_mib: ctx.memory_of(vm),
    }
}

fn candidate(hv: &Hypervisor, ctx: &Context) -> Candidate {
    let status = hv.status.clone().unwrap_or_default();
    let name = hv.name_any();
    let fresh = ctx.heartbeats.silent_for(&name) < ctx.settings.node_lost_grace;
    Candidate {
        ready: fresh
            && conditions::is_true(&status.conditions, ct::READY)
            && status.fence.is_none()
            && !hv.spec.out_of_service,
        unschedulable: hv.spec.unschedulable || hv.spec.drain,
        memory_mib: status.memory_mib,
        fenced: status
            .fence
            .as_ref()
            .is_some_and(|f| f.state == FenceState::Fenced),
        name,
    }
}

/// Whether `node` is fenced: nothing there can write the VM's disks any more.
fn node_fenced(ctx: &Context, node: &str) -> bool {
    ctx.hypervisors
        .get(&kube::runtime::reflector::ObjectRef::new(node))
        .and_then(|hv| hv.status.as_ref().and_then(|s| s.fence.clone()))
        .is_some_and(|f| f.state == FenceState::Fenced)
}

/// What is known of the host the VM is (or stays) placed on.
fn host_health(ctx: &Context, vm: &VirtualMachine, scheduling: &Scheduling) -> HostHealth {
    let node = match scheduling {
        Scheduling::Placed { node, .. } => Some(node.clone()),
        _ => vm.status.as_ref().and_then(|s| s.node.clone()),
    };
    let Some(node) = node else {
        return HostHealth::Answering;
    };
    let hv = ctx
        .hypervisors
        .get(&kube::runtime::reflector::ObjectRef::new(&node));
    let status = hv.as_ref().and_then(|hv| hv.status.clone()).unwrap_or_default();
    let silent = ctx.heartbeats.silent_for(&node);
    let lost_condition = conditions::find(&status.conditions, ct::READY)
        .filter(|c| c.reason == crate::controller::node_health::REASON_NODE_LOST);
    if lost_condition.is_none() && status.fence.is_none() && silent < ctx.settings.node_lost_grace {
        return HostHealth::Answering;
    }
    let what = lost_condition.map(|c| c.message.clone()).unwrap_or_else(|| {
        format!(
            "the node agent of hypervisor {node} has not reported for {} s",
            silent.as_secs()
        )
    });
    let fence = match status.fence.as_ref() {
        Some(f) if f.state == FenceState::Fenced => format!(
            "; the host was fenced ({} Ceph client(s) blocklisted)",
            f.blocklisted.len()
        ),
        Some(_) => "; the host is being fenced".to_owned(),
        None => String::new(),
    };
    let placement = vm.spec.placement.as_ref();
    let next = if placement.and_then(|p| p.pinned_node.as_deref()) == Some(node.as_str()) {
        "; the VM is pinned there and waits for the host to come back".to_owned()
    } else if placement.is_some_and(|p| p.failover == crate::api::FailoverPolicy::Never) {
        "; spec.placement.failover is Never: the VM waits for the host to come back".to_owned()
    } else if let Scheduling::Unschedulable { message, .. } = scheduling {
        format!("; no other hypervisor can take the VM now: {message}")
    } else {
        "; the VM is started on another hypervisor once the host is fenced".to_owned()
    };
    HostHealth::Lost {
        message: format!("{what}{fence}{next}"),
    }
}

async fn write_status(
    vm: &VirtualMachine,
    ctx: &Context,
    api: &Api<VirtualMachine>,
    storage: &StorageOutcome,
    scheduling: &Scheduling,
    releasing: Option<&status::Release>,
    uuid: Option<uuid::Uuid>,
) -> Result<(), ReconcileError> {
    let input = StatusInput {
        vm,
        host: host_health(ctx, vm, scheduling),
        storage,
        scheduling,
        releasing,
        domain_uuid: uuid.map(|u| u.to_string()),
        now: Time(Timestamp::now()),
    };
    let new = status::build(&input);
    if !status::differs(vm, &new) {
        return Ok(());
    }
    let phase_changed = vm.status.as_ref().and_then(|s| s.phase) != new.phase;
    let phase = new.phase;
    let patch = json!({"apiVersion": VirtualMachine::api_version(&()), "kind": VirtualMachine::kind(&()), "status": new});
    api.patch_status(
        &vm.name_any(),
        &PatchParams::apply(field_manager::CONTROLLER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    // Logged once written: while the API server is away, every retry would claim it again.
    if phase_changed {
        info!(?phase, "phase changed");
    }
    Ok(())
}

async fn cleanup(
    vm: &VirtualMachine,
    ctx: &Context,
    api: &Api<VirtualMachine>,
) -> Result<Action, ReconcileError> {
    let status = vm.status.clone().unwrap_or_default();
    // Disks are never touched while a domain using them may run: the agent of the node must
    // first report the domain gone, or the node must have been fenced.
    if let Some(domain) = status
        .domain
        .as_ref()
        .filter(|d| d.state != DomainState::Absent && !node_fenced(ctx, &d.node))
    {
        let message = format!(
            "being deleted: waiting for hypervisor {} to stop and undefine domain {}",
            domain.node, domain.name
        );
        let outcome = StorageOutcome::Failing {
            reason: "Deleting".into(),
            message,
            storage: status.storage.clone(),
        };
        write_status(vm, ctx, api, &outcome, &Scheduling::NotNeeded, None, None).await?;
        return Err(ReconcileError::WaitingForDomain {
            node: domain.node.clone(),
        });
    }
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let namespace = vm.namespace().unwrap_or_default();
    ctx.storage_checks.forget(&uid);
    ctx.failures.reset(&uid);
    ctx.placements.forget(&uid);
    match vm.spec.deletion_policy {
        DeletionPolicy::Retain => {
            let names = crate::naming::VmNames::new(
                &ctx.storage.namespace_map.rbd_namespace(&namespace),
                &vm.storage_name(),
            );
            publish(
                ctx,
                vm,
                EventType::Normal,
                "StorageRetained",
                "Delete",
                format!(
                    "deletionPolicy Retain: RBD group {} and its images stay in pool {} (RBD namespace '{}')",
                    names.group(),
                    ctx.storage.pool,
                    names.rbd_namespace
                ),
            );
        }
        DeletionPolicy::Delete => {
            match storage::delete_storage(&ctx.storage, &namespace, &vm.storage_name(), &uid).await {
                Ok(_) => {
                    publish(
                        ctx,
                        vm,
                        EventType::Normal,
                        "StorageDeleted",
                        "Delete",
                        "RBD snapshots, images and group removed".into(),
                    );
                }
                Err(err) => {
                    let outcome = StorageOutcome::Failing {
                        reason: err.reason().into(),
                        message: format!("cannot delete the VM's storage: {err}"),
                        storage: status.storage.clone(),
                    };
                    write_status(vm, ctx, api, &outcome, &Scheduling::NotNeeded, None, None).await?;
                    publish(
                        ctx,
                        vm,
                        EventType::Warning,
                        err.reason(),
                        "Delete",
                        err.to_string(),
                    );
                    return Err(err.into());
                }
            }
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_on_a_lost_host_is_checked_again_within_seconds() {
        let resync = Duration::from_secs(300);
        let lost = HostHealth::Lost {
            message: "silent".into(),
        };
        for (host, want) in [(HostHealth::Answering, resync), (lost.clone(), LOST_HOST_RECHECK)] {
            assert_eq!(next_check(&host, resync), want, "{host:?}");
        }
        assert_eq!(next_check(&lost, Duration::from_secs(1)), Duration::from_secs(1));
    }
}
