//! Snapshots, restores and snapshot schedules of VirtualMachines: three kube-runtime
//! controllers sharing one Ceph connection.
//!
//! - [`vmsnapshot`]: `VirtualMachineSnapshot` -> one RBD snapshot with the same name on every
//!   image of the VM (vm_manager-compatible), images worked on concurrently.
//! - [`restore`]: `VirtualMachineRestore` -> SEAPATH rollback: record the VM's desired state,
//!   disable the VM, wait for the agent to report the domain gone, roll every disk back, set
//!   the desired state back, wait for the VM to reach it.
//! - [`schedule`]: `VirtualMachineSnapshotSchedule` -> cron-driven snapshots and retention.
//! - [`inventory`]: `VirtualMachine` -> `status.unmanagedSnapshots`, the RBD snapshots of its
//!   images that no VirtualMachineSnapshot claims (adoptable).
//!
//! # Crash safety
//! Each step records its intent in the object's status before it acts, and every action is
//! idempotent, so a controller killed at any instant resumes from the status:
//! - a snapshot records `InProgress` with its start time and images before it takes anything;
//!   an RBD snapshot of that name counts as its own only if its id is recorded or it was taken
//!   after the start time (a name already taken before is refused, never touched);
//! - a restore records the VM's desired state before it disables the VM, and never rolls a disk
//!   back unless the agent reported the domain gone *and* no client holds the image's lock.
//!
//! Work on one VM's disks is serialised in this process (a per-VM lock); the controller runs
//! under the operator's leader election, so one process acts at a time.

pub mod checks;
pub mod cron;
pub mod inventory;
pub mod rbd;
pub mod restore;
pub mod schedule;
pub mod vmsnapshot;

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    VirtualMachine, VirtualMachineRestore, VirtualMachineSnapshot, VirtualMachineSnapshotSchedule,
};
use crate::controller::context::FailureCounter;
use crate::controller::events::{self, Note};
use crate::controller::frame::{self, FrameError, Retry};
use crate::controller::storage::{StorageContext, StorageError};
use crate::field_manager;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Waiting(String),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubernetesApiError",
            Error::Storage(e) => e.reason(),
            Error::Waiting(_) => "Waiting",
            Error::Finalizer(_) => "FinalizerError",
        }
    }
}

impl FrameError for Error {
    fn reason(&self) -> &'static str {
        Error::reason(self)
    }

    fn finalizer(message: String) -> Self {
        Error::Finalizer(message)
    }

    fn retry(&self) -> Retry {
        match self {
            Error::Waiting(_) => Retry::After(Duration::from_secs(2)),
            Error::Storage(StorageError::ImageBusy { .. }) => Retry::After(Duration::from_secs(5)),
            _ => Retry::BackOff,
        }
    }
}

/// Serialises the Ceph work on one VM's disks.
pub(super) type VmLock = Arc<tokio::sync::Mutex<()>>;

/// What the snapshot, restore, schedule and inventory controllers share (the VM controller has
/// its own [`crate::controller::context::Context`]).
pub struct SnapshotContext {
    pub client: Client,
    pub storage: StorageContext,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub snapshots: Store<VirtualMachineSnapshot>,
    pub restores: Store<VirtualMachineRestore>,
    failures: FailureCounter,
    vm_locks: Mutex<HashMap<(String, String), VmLock>>,
    inventory: inventory::Seen,
    /// Ready snapshots' last check that their RBD snapshots are all there.
    verified: checks::RecentChecks,
    pub(crate) cleaned: RecentlyCleaned,
}

/// Objects whose cleanup finished in this process, by UID. The watch still shows such an
/// object, deleted and with its finalizer, until its DELETE event arrives; a reconcile woken
/// meanwhile must not take the VM's lock and read Ceph again for it.
#[derive(Default)]
pub(crate) struct RecentlyCleaned(Mutex<HashMap<String, std::time::Instant>>);

impl RecentlyCleaned {
    /// Long enough for the DELETE event to arrive.
    const KEEP: std::time::Duration = std::time::Duration::from_secs(600);

    pub(crate) fn contains(&self, uid: &str) -> bool {
        self.0.lock().expect("cleaned set poisoned").contains_key(uid)
    }

    pub(crate) fn insert(&self, uid: &str) {
        let mut cleaned = self.0.lock().expect("cleaned set poisoned");
        cleaned.retain(|_, at| at.elapsed() < Self::KEEP);
        cleaned.insert(uid.to_owned(), std::time::Instant::now());
    }
}

impl SnapshotContext {
    /// The lock serialising Ceph work on one VM's disks in this process.
    pub fn vm_lock(&self, namespace: &str, vm: &str) -> VmLock {
        let mut locks = self.vm_locks.lock().expect("vm lock table poisoned");
        locks
            .entry((namespace.to_owned(), vm.to_owned()))
            .or_default()
            .clone()
    }

    pub async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let note = Note {
            type_,
            reason,
            action,
            text: note,
        };
        events::publish(&self.recorder, obj, note).await;
    }
}

pub fn now() -> Time {
    Time(Timestamp::now())
}

/// Writes a whole status with server-side apply (this controller owns every status field).
pub async fn write_status<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(field_manager::SNAPSHOT).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

/// Retries with a delay that grows with the failures of this object, up to two minutes;
/// waiting is not a failure, nor is a disk another client holds: that client may be a dead
/// process whose lock is broken once Ceph drops its watch (30 s), so it is polled.
fn error_policy<K: Resource>(obj: Arc<K>, err: &Error, ctx: Arc<SnapshotContext>) -> Action {
    frame::error_policy(obj.as_ref(), err, &ctx.failures)
}

/// The RBD snapshot name: `spec.snapshotName`, else the object name (CEL makes sure one fits).
pub(crate) fn rbd_name(snap: &VirtualMachineSnapshot) -> String {
    snap.spec.snapshot_name.clone().unwrap_or_else(|| snap.name_any())
}

/// Runs `f` on every image at once (one blocking task per image). `None` for every image when
/// the VM's RBD namespace does not exist.
pub(super) async fn per_image<T, F>(
    ctx: &SnapshotContext,
    namespace: &str,
    images: &[String],
    f: F,
) -> Result<Vec<Result<Option<T>, StorageError>>, StorageError>
where
    T: Send + 'static,
    F: Fn(&crate::ceph::IoCtx, String) -> Result<Option<T>, StorageError> + Clone + Send + 'static,
{
    let rbd_namespace = ctx.storage.namespace_map.rbd_namespace(namespace);
    let (cluster, pool) = (ctx.storage.cluster.clone(), ctx.storage.pool.clone());
    let io = crate::controller::storage::blocking(move || rbd::io_context(&cluster, &pool, &rbd_namespace))
        .await?;
    let Some(io) = io else {
        return Ok(images.iter().map(|_| Ok(None)).collect());
    };
    Ok(futures::future::join_all(images.iter().map(|image| {
        let (io, image, f) = (io.clone(), image.clone(), f.clone());
        crate::controller::storage::blocking(move || f(&io, image))
    }))
    .await)
}

fn reset_failures<K: Resource>(ctx: &SnapshotContext, obj: &K) {
    ctx.failures.reset(&obj.meta().uid.clone().unwrap_or_default());
}

/// Runs the snapshot, restore, schedule and inventory controllers until `shutdown` completes.
pub async fn run(
    client: Client,
    storage: StorageContext,
    metrics: Metrics,
    inventory_refresh: Duration,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let snapshot_controller = crate::watch::controller(
        Api::<VirtualMachineSnapshot>::all(client.clone()),
        watcher::Config::default(),
    );
    let restore_controller = crate::watch::controller(
        Api::<VirtualMachineRestore>::all(client.clone()),
        watcher::Config::default(),
    );
    let reporter = Reporter {
        controller: "seapath-snapshot-controller".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let ctx = Arc::new(SnapshotContext {
        client: client.clone(),
        storage,
        metrics,
        recorder: Recorder::new(client.clone(), reporter),
        snapshots: snapshot_controller.store(),
        restores: restore_controller.store(),
        failures: FailureCounter::default(),
        vm_locks: Mutex::new(HashMap::new()),
        inventory: inventory::Seen::new(inventory_refresh),
        verified: checks::RecentChecks::new(vmsnapshot::VERIFY_EVERY),
        cleaned: RecentlyCleaned::default(),
    });
    tracing::info!("snapshot, restore, schedule and inventory controllers started");
    futures::join!(
        run_snapshots(snapshot_controller, ctx.clone(), shutdown.clone()),
        run_restores(restore_controller, ctx.clone(), shutdown.clone()),
        run_schedules(ctx.clone(), shutdown.clone()),
        run_inventory(ctx, shutdown),
    );
    tracing::info!("snapshot, restore, schedule and inventory controllers stopped");
}

/// A VM's changes wake the snapshots of that VM that are still at work. A VM being deleted
/// also wakes its Ready snapshots, their last check forgotten: its disks go (or stay, with
/// Retain), and they say so now rather than at their next period.
async fn run_snapshots(
    controller: kube::runtime::Controller<VirtualMachineSnapshot>,
    ctx: Arc<SnapshotContext>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let woken = ctx.clone();
    controller
        .watches(
            Api::<VirtualMachine>::all(ctx.client.clone()),
            watcher::Config::default(),
            move |vm: VirtualMachine| snapshots_woken_by(&vm, &woken),
        )
        .graceful_shutdown_on(shutdown)
        .run(vmsnapshot::reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn snapshots_woken_by(vm: &VirtualMachine, ctx: &SnapshotContext) -> Vec<ObjectRef<VirtualMachineSnapshot>> {
    let ns = vm.namespace();
    let going = vm.metadata.deletion_timestamp.is_some();
    ctx.snapshots
        .state()
        .iter()
        .filter(|s| s.namespace() == ns && s.spec.vm_name == vm.name_any())
        .filter(|s| going || !vmsnapshot::is_settled(s))
        .inspect(|s| {
            if going {
                ctx.verified.forget(&s.uid().unwrap_or_default());
            }
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// A VM's changes wake the restores of that VM (or into it) that are still at work.
async fn run_restores(
    controller: kube::runtime::Controller<VirtualMachineRestore>,
    ctx: Arc<SnapshotContext>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let restores = ctx.restores.clone();
    controller
        .watches(
            Api::<VirtualMachine>::all(ctx.client.clone()),
            watcher::Config::default(),
            move |vm: VirtualMachine| restores_woken_by(&vm, &restores),
        )
        .graceful_shutdown_on(shutdown)
        .run(restore::reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn restores_woken_by(
    vm: &VirtualMachine,
    restores: &Store<VirtualMachineRestore>,
) -> Vec<ObjectRef<VirtualMachineRestore>> {
    let (ns, name) = (vm.namespace(), vm.name_any());
    restores
        .state()
        .iter()
        .filter(|r| {
            r.namespace() == ns
                && (r.spec.vm_name == name || r.spec.target.as_ref().is_some_and(|t| t.name == name))
        })
        .filter(|r| restore::is_active(r))
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// A schedule's snapshots wake it when they change (run outcome, retention).
async fn run_schedules(
    ctx: Arc<SnapshotContext>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    crate::watch::controller(
        Api::<VirtualMachineSnapshotSchedule>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<VirtualMachineSnapshot>::all(client),
        watcher::Config::default(),
        |snap: VirtualMachineSnapshot| {
            let ns = snap.namespace();
            snap.labels().get(crate::api::SCHEDULE_LABEL).map(|name| {
                ObjectRef::<VirtualMachineSnapshotSchedule>::new(name)
                    .within(ns.as_deref().unwrap_or_default())
            })
        },
    )
    .graceful_shutdown_on(shutdown)
    .run(schedule::reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}

/// The unmanaged snapshots of each VM: on changes of its storage or of its snapshot objects,
/// and every refresh period (snapshots taken or removed by hand leave no trace here). The
/// debounce lets the snapshot controller's cache (which says what is claimed) catch up with the
/// change that triggered the reconcile: it comes through another watch.
async fn run_inventory(
    ctx: Arc<SnapshotContext>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    crate::watch::controller(
        Api::<VirtualMachine>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().debounce(Duration::from_secs(1)))
    .watches(
        Api::<VirtualMachineSnapshot>::all(client),
        watcher::Config::default(),
        |snap: VirtualMachineSnapshot| {
            let ns = snap.namespace();
            Some(
                ObjectRef::<VirtualMachine>::new(&snap.spec.vm_name)
                    .within(ns.as_deref().unwrap_or_default()),
            )
        },
    )
    .graceful_shutdown_on(shutdown)
    .run(inventory::reconcile, error_policy, ctx)
    .for_each(|_| async {})
    .await;
}
