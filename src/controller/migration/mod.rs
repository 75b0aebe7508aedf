//! Reconciles VirtualMachineMigrations: observe (the migration, its VM, the hypervisors, other
//! migrations of the VM, all from caches) -> decide ([`decide::decide`], pure) -> act (the
//! VM's migration marks, the migration's status) -> report (an Event when it ends). The
//! agents do the moving; the VM reconciler moves the node label (see `api::migration`).

mod decide;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use crate::api::{
    MIGRATION_FINALIZER, MIGRATION_UID_ANNOTATION, MigrationPhase, VirtualMachine, VirtualMachineMigration,
};
use crate::controller::context::Context;
use crate::controller::events::{self, Note};
use crate::field_manager;
use decide::{Decision, Facts, Marks};

/// How often a running migration is looked at without a change (its VM's changes wake it).
const RUNNING_RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(
        "waiting for the source hypervisor's agent to abort the live migration before the migration goes"
    )]
    Aborting,
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl crate::controller::frame::FrameError for MigrationError {
    fn reason(&self) -> &'static str {
        match self {
            MigrationError::Kube(_) => "KubernetesApiError",
            MigrationError::Aborting => "Aborting",
            MigrationError::Finalizer(_) => "FinalizerError",
        }
    }

    fn finalizer(message: String) -> Self {
        MigrationError::Finalizer(message)
    }
}

/// What the migration reconciler reads: the VM controller's context (VMs, hypervisors,
/// placement facts) and the migrations' own cache.
pub struct MigrationContext {
    pub vm: Arc<Context>,
    pub migrations: Store<VirtualMachineMigration>,
    /// Targets chosen by this process (migration UID -> target, MiB), until the cache shows
    /// them: migrations scheduled at once each count the room the others took.
    chosen: std::sync::Mutex<std::collections::HashMap<String, Arrival>>,
    /// Held while a migration chooses its target.
    scheduling: tokio::sync::Mutex<()>,
}

/// A VM a migration is bringing to its target.
#[derive(Clone, Debug)]
struct Arrival {
    vm: ObjectRef<VirtualMachine>,
    target: String,
    mib: i64,
}

/// Runs the migration controller until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let controller = crate::watch::controller(
        Api::<VirtualMachineMigration>::all(client.clone()),
        watcher::Config::default(),
    );
    let migrations = controller.store();
    let by_vm = migrations.clone();
    let controller = controller.watches(
        Api::<VirtualMachine>::all(client),
        watcher::Config::default(),
        move |vm: VirtualMachine| migrations_of(&by_vm, &vm),
    );
    let context = Arc::new(MigrationContext {
        vm: ctx,
        migrations,
        chosen: Default::default(),
        scheduling: Default::default(),
    });
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

/// The migrations of `vm` a change of the VM concerns: the unfinished ones (it is what they
/// wait for), and an ended one whose marks the VM still shows (the copy the migration ended
/// on may not have shown them yet: they go now).
fn migrations_of(
    store: &Store<VirtualMachineMigration>,
    vm: &VirtualMachine,
) -> Vec<ObjectRef<VirtualMachineMigration>> {
    let marked_by = vm.annotations().get(MIGRATION_UID_ANNOTATION);
    store
        .state()
        .iter()
        .filter(|m| m.namespace() == vm.namespace() && m.spec.vm_name == vm.name_any())
        .filter(|m| {
            !phase(m).is_final()
                || m.metadata.deletion_timestamp.is_some()
                || marked_by == m.metadata.uid.as_ref()
        })
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect()
}

fn phase(m: &VirtualMachineMigration) -> MigrationPhase {
    m.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(MigrationPhase::Pending)
}

pub async fn reconcile(
    migration: Arc<VirtualMachineMigration>,
    ctx: Arc<MigrationContext>,
) -> Result<Action, MigrationError> {
    let namespace = migration.namespace().unwrap_or_default();
    let api: Api<VirtualMachineMigration> = Api::namespaced(ctx.vm.client.clone(), &namespace);
    let metrics = ctx.vm.metrics.clone();
    crate::controller::frame::finalized(
        "VirtualMachineMigration",
        &api,
        MIGRATION_FINALIZER,
        migration,
        &metrics,
        |event| async {
            match event {
                finalizer::Event::Apply(m) | finalizer::Event::Cleanup(m) => step(&m, &ctx, &api).await,
            }
        },
    )
    .await
}

pub fn error_policy(
    _: Arc<VirtualMachineMigration>,
    err: &MigrationError,
    _: Arc<MigrationContext>,
) -> Action {
    if !matches!(err, MigrationError::Aborting) {
        use crate::controller::frame::FrameError;
        warn!(error = %err, reason = err.reason(), "reconcile failed");
    }
    Action::requeue(Duration::from_secs(1))
}

/// Observe, decide, act, report.
async fn step(
    migration: &VirtualMachineMigration,
    ctx: &MigrationContext,
    api: &Api<VirtualMachineMigration>,
) -> Result<Action, MigrationError> {
    // One target chosen at a time, each counting the room the others took.
    let _scheduling = match phase(migration) {
        MigrationPhase::Pending => Some(ctx.scheduling.lock().await),
        _ => None,
    };
    // Right after a restart the hypervisor cache may not have listed any host yet: deciding
    // from it would fail the migration for a target it does not know. A deletion still goes
    // ahead: its cancel needs no host, and waiting could hold the object forever.
    let deleting = migration.metadata.deletion_timestamp.is_some();
    if !deleting && ctx.vm.hypervisors.state().is_empty() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let vm = observe_vm(ctx, migration).await?;
    let others = ctx.vm.vms.state();
    let (candidates, mut allocated, memory) = match vm.as_deref() {
        Some(vm) => (
            crate::controller::vm::candidates(&ctx.vm),
            crate::controller::vm::allocated_memory(&ctx.vm, vm, &others),
            ctx.vm.memory_of(vm),
        ),
        None => Default::default(),
    };
    let mut neighbours = match vm.as_deref() {
        Some(vm) => crate::controller::vm::neighbours(&ctx.vm, vm, &others),
        None => Vec::new(),
    };
    for arrival in arriving(ctx, migration) {
        *allocated.entry(arrival.target.clone()).or_default() += arrival.mib;
        let moving = |m: &&mut crate::controller::placement::Member| {
            Some(m.namespace) == arrival.vm.namespace.as_deref() && m.name == arrival.vm.name
        };
        if let Some(member) = neighbours.iter_mut().find(moving) {
            member.nodes.insert(arrival.target);
        }
    }
    let busy_with = busy_with(ctx, migration);
    let listed_on = listed_on(ctx, migration);
    let decision = decide::decide(&Facts {
        migration,
        vm: vm.as_deref(),
        candidates: &candidates,
        allocated_mib: &allocated,
        neighbours: &neighbours,
        vm_memory_mib: memory,
        busy_with: busy_with.as_deref(),
        listed_on: &listed_on,
        now: Time(Timestamp::now()),
    });
    if let (Some(vm), Some(marks)) = (vm.as_deref(), &decision.marks) {
        mark(ctx, vm, marks).await?;
    }
    if migration.metadata.deletion_timestamp.is_some() {
        return if decision.finalize {
            let uid = migration.metadata.uid.clone().unwrap_or_default();
            ctx.chosen.lock().expect("chosen targets").remove(&uid);
            Ok(Action::await_change())
        } else {
            Err(MigrationError::Aborting)
        };
    }
    write_status(migration, api, &decision).await?;
    remember_target(ctx, migration, &decision, memory);
    report(ctx, migration, &decision);
    Ok(if decision.status.phase.is_some_and(MigrationPhase::is_final) {
        Action::await_change()
    } else {
        Action::requeue(RUNNING_RECHECK)
    })
}

/// The migration's VM, from the cache. One the cache does not hold is asked of the API server:
/// right after a restart the cache may not have listed it yet, and deciding from that would
/// fail the migration as "VM deleted" while the guest moves.
async fn observe_vm(
    ctx: &MigrationContext,
    migration: &VirtualMachineMigration,
) -> Result<Option<Arc<VirtualMachine>>, MigrationError> {
    let namespace = migration.namespace().unwrap_or_default();
    let key = ObjectRef::new(&migration.spec.vm_name).within(&namespace);
    if let Some(vm) = ctx.vm.vms.get(&key) {
        return Ok(Some(vm));
    }
    let api: Api<VirtualMachine> = Api::namespaced(ctx.vm.client.clone(), &namespace);
    Ok(api.get_opt(&migration.spec.vm_name).await?.map(Arc::new))
}

/// The memory other unfinished migrations are bringing to their targets: not yet placed
/// there, but about to be, so two migrations at once do not both count on the same room.
fn arriving(ctx: &MigrationContext, migration: &VirtualMachineMigration) -> Vec<Arrival> {
    let me = migration.metadata.uid.clone().unwrap_or_default();
    let chosen = ctx.chosen.lock().expect("chosen targets").clone();
    // Counted there by `allocated_memory` already (placed, or about to be shown placed).
    let placed_there = |a: &Arrival| {
        ctx.vm.vms.get(&a.vm).is_some_and(|vm| {
            crate::controller::vm::counted_on(&ctx.vm, &vm).as_deref() == Some(a.target.as_str())
        })
    };
    chosen
        .into_iter()
        .filter(|(uid, arrival)| *uid != me && !placed_there(arrival))
        .map(|(_, a)| a)
        .collect()
}

/// Records the target a migration chose while it moves; forgets it once it ended.
fn remember_target(
    ctx: &MigrationContext,
    migration: &VirtualMachineMigration,
    decision: &Decision,
    mib: i64,
) {
    let uid = migration.metadata.uid.clone().unwrap_or_default();
    let mut chosen = ctx.chosen.lock().expect("chosen targets");
    match (&decision.status.target_node, decision.status.phase) {
        (Some(target), Some(phase)) if !phase.is_final() => {
            let vm =
                ObjectRef::new(&migration.spec.vm_name).within(&migration.namespace().unwrap_or_default());
            let arrival = Arrival {
                vm,
                target: target.clone(),
                mib,
            };
            chosen.insert(uid, arrival);
        }
        _ => {
            chosen.remove(&uid);
        }
    }
}

/// The hypervisors whose latest listing holds a domain of the migration's VM.
fn listed_on(ctx: &MigrationContext, migration: &VirtualMachineMigration) -> Vec<String> {
    let key = format!(
        "{}/{}",
        migration.namespace().unwrap_or_default(),
        migration.spec.vm_name
    );
    ctx.vm
        .hypervisors
        .state()
        .iter()
        .filter(|hv| hv.status.as_ref().is_some_and(|s| s.vms.contains(&key)))
        .map(|hv| hv.name_any())
        .collect()
}

/// An older unfinished migration of the same VM (the first one created goes first).
fn busy_with(ctx: &MigrationContext, migration: &VirtualMachineMigration) -> Option<String> {
    let order =
        |m: &VirtualMachineMigration| (m.metadata.creation_timestamp.clone().map(|t| t.0), m.name_any());
    ctx.migrations
        .state()
        .into_iter()
        .filter(|m| m.metadata.uid != migration.metadata.uid)
        .filter(|m| m.namespace() == migration.namespace() && m.spec.vm_name == migration.spec.vm_name)
        .filter(|m| !phase(m).is_final() && m.metadata.deletion_timestamp.is_none())
        .filter(|m| order(m) < order(migration))
        .map(|m| m.name_any())
        .next()
}

/// Puts the migration's marks on the VM (server-side apply under the migration's own field
/// manager: marks it set before and leaves out are removed), unless the VM shows them already.
async fn mark(ctx: &MigrationContext, vm: &VirtualMachine, marks: &Marks) -> Result<(), MigrationError> {
    if shows_exactly(vm, marks) {
        return Ok(());
    }
    let api: Api<VirtualMachine> =
        Api::namespaced(ctx.vm.client.clone(), &vm.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": VirtualMachine::api_version(&()), "kind": VirtualMachine::kind(&()),
        "metadata": {"name": vm.name_any(), "labels": marks.labels, "annotations": marks.annotations}
    });
    api.patch(
        &vm.name_any(),
        &PatchParams::apply(field_manager::MIGRATION).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

/// Whether the VM carries these marks and none of the other migration marks.
fn shows_exactly(vm: &VirtualMachine, marks: &Marks) -> bool {
    use crate::api::{
        MIGRATION_ABORT_ANNOTATION, MIGRATION_TARGET_LABEL, MIGRATION_UID_ANNOTATION, MOVE_TO_ANNOTATION,
    };
    let label_ok = |key: &str| vm.labels().get(key) == marks.labels.get(key);
    let annotation_ok = |key: &str| vm.annotations().get(key) == marks.annotations.get(key);
    label_ok(MIGRATION_TARGET_LABEL)
        && [
            MIGRATION_UID_ANNOTATION,
            MIGRATION_ABORT_ANNOTATION,
            MOVE_TO_ANNOTATION,
        ]
        .into_iter()
        .all(annotation_ok)
}

async fn write_status(
    migration: &VirtualMachineMigration,
    api: &Api<VirtualMachineMigration>,
    decision: &Decision,
) -> Result<(), MigrationError> {
    if migration.status.as_ref() == Some(&decision.status) {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": VirtualMachineMigration::api_version(&()), "kind": VirtualMachineMigration::kind(&()),
        "status": decision.status
    });
    api.patch_status(
        &migration.name_any(),
        &PatchParams::apply(field_manager::CONTROLLER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

/// An Event when the migration ends or changes course, once: on the write that says so.
fn report(ctx: &MigrationContext, migration: &VirtualMachineMigration, decision: &Decision) {
    let Some(notice) = &decision.notice else {
        return;
    };
    let before = migration.status.as_ref();
    if before.and_then(|s| s.phase) == decision.status.phase
        && before.and_then(|s| s.mode) == decision.status.mode
    {
        return;
    }
    let type_ = if notice.warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    let note = Note {
        type_,
        reason: notice.reason,
        action: "Migrate",
        text: notice.message.clone(),
    };
    events::publish_in_background(&ctx.vm.recorder, migration, note);
}
