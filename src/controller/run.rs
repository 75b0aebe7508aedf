//! Wires the VirtualMachine reconciler into kube-runtime: the watches, the caches, and the
//! Ceph connection it needs.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use kube::{Api, Client};
use tracing::{error, info, warn};

use crate::api::{DesiredState, Hypervisor, VirtualMachine, condition_types as ct};
use crate::ceph::{Cluster, ClusterConfig};
use crate::controller::conditions;
use crate::controller::context::{Context, ControllerSettings, ImageListings, PolicyConfig};
use crate::controller::guard;
use crate::controller::hypervisor::{self, FencingSettings, HypervisorContext};
use crate::controller::node_health::HeartbeatClock;
use crate::controller::storage::{self, StorageContext};
use crate::controller::vm;
use crate::domain_xml::{CephAccess, CephAuthRef};
use crate::metrics::Metrics;
use crate::naming::NamespaceMap;

/// How long one listing of a namespace's images stands for many VMs after a restart: long
/// enough for a resync burst to share it, short enough that a VM made since is not missed
/// (a VM not in the listing is simply checked in full).
const IMAGE_LISTING_MAX_AGE: Duration = Duration::from_secs(2);

/// Everything the controller is configured with.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    pub ceph_conf: PathBuf,
    pub ceph_client: String,
    pub ceph_options: Vec<(String, String)>,
    pub pool: String,
    pub namespace_map: NamespaceMap,
    pub policy: PolicyConfig,
    /// The libvirt user and secret UUID written in each RBD disk when Ceph uses cephx.
    pub libvirt_auth: Option<CephAuthRef>,
    pub concurrency: u16,
    pub storage_recheck: Duration,
    /// Fencing of lost hosts (grace, blocklist expiry, power hook).
    pub fencing: FencingSettings,
    pub resync: Duration,
    /// Directories `path` disk sources may be imported from.
    pub import_dirs: Vec<PathBuf>,
    /// RBD namespaces every tenant may copy or clone disks from.
    pub shared_image_namespaces: crate::naming::SharedImageNamespaces,
    /// Also run the snapshot, restore and schedule controllers in this process.
    pub snapshots: bool,
    /// Longest time before snapshots taken outside the operator show on a VM's status.
    pub unmanaged_snapshot_refresh: Duration,
    /// VMs that leave a draining hypervisor at once.
    pub drain_parallel: usize,
    /// Name reported on Events (the Pod name in a cluster).
    pub instance: String,
    /// The RADOS object (in the pool's default namespace) whose lock the active controller
    /// holds, fencing any earlier holder (see `guard.rs`): one per installation.
    pub guard_object: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("connecting to Ceph with {conf} as client.{client}: {source}")]
    Ceph {
        conf: String,
        client: String,
        source: crate::ceph::CephError,
    },
    #[error("reading the Ceph monitors: {0}")]
    Monitors(#[source] storage::StorageError),
    #[error("taking the controller guard: {0}")]
    Guard(#[source] storage::StorageError),
    #[error(
        "another controller took over the storage and fenced this one through Ceph: it stops (restarted, it starts over)"
    )]
    Fenced,
}

async fn connect_ceph(config: &ControllerConfig, extra: &[(&str, &str)]) -> Result<Cluster, ControllerError> {
    let cluster_config = ClusterConfig {
        conf_path: config.ceph_conf.clone(),
        client_id: config.ceph_client.clone(),
        mount_timeout: Duration::from_secs(10),
        // Without the timeouts a call to a dead OSD or mon blocks a reconcile forever; with
        // them it fails, the VM shows CephUnavailable, and the retry comes with back-off.
        options: [("rados_osd_op_timeout", "30"), ("rados_mon_op_timeout", "30")]
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(config.ceph_options.clone())
            .collect(),
    };
    tokio::task::spawn_blocking(move || Cluster::connect(cluster_config))
        .await
        .expect("Ceph connect task panicked")
        .map_err(|source| ControllerError::Ceph {
            conf: config.ceph_conf.display().to_string(),
            client: config.ceph_client.clone(),
            source,
        })
}

/// VMs that wait for a hypervisor: storage ready but not placed yet (a hypervisor becoming
/// Ready may take them), or moving (the old node's heartbeat may show it let go). A VM whose
/// storage is failing is not one of them: its retries keep their back-off instead of following
/// every heartbeat.
///
/// The VMs placed on a host that is lost, fenced or coming back are reconciled too: their
/// Ready condition follows the host's state, and a fence releases them for failover.
fn waiting_for_a_hypervisor(
    vms: &reflector::Store<VirtualMachine>,
    hv: &Hypervisor,
) -> Vec<ObjectRef<VirtualMachine>> {
    let hv_name = hv.metadata.name.as_deref().unwrap_or_default();
    let hv_troubled = hv
        .status
        .as_ref()
        .is_some_and(|s| s.fence.is_some() || !conditions::is_true(&s.conditions, ct::READY));
    vms.state()
        .iter()
        .filter(|vm| {
            let Some(status) = vm.status.as_ref() else {
                return false;
            };
            let node = status.node.as_ref();
            let on_this_host = node.is_some_and(|n| n == hv_name);
            let marked_lost = conditions::find(&status.conditions, ct::READY)
                .is_some_and(|c| c.reason == crate::controller::node_health::REASON_NODE_LOST);
            // Placed (or left) on a host that cannot take it now: another host may.
            let unschedulable =
                conditions::find(&status.conditions, ct::SCHEDULED).is_some_and(|c| c.status == "False");
            if (on_this_host && (hv_troubled || marked_lost)) || unschedulable {
                return true;
            }
            let reported_from = status.domain.as_ref().map(|d| &d.node);
            let unplaced = node.is_none()
                && vm.spec.state != DesiredState::Disabled
                && conditions::is_true(&status.conditions, ct::STORAGE_READY);
            unplaced || reported_from.is_some_and(|from| Some(from) != node)
        })
        .map(|vm| ObjectRef::from_obj(vm.as_ref()))
        .collect()
}

/// Publishes how many VMs are in each phase.
fn count_phases(vms: &reflector::Store<VirtualMachine>, metrics: &Metrics) {
    let mut counts = BTreeMap::new();
    for vm in vms.state() {
        let phase = vm
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map(|p| format!("{p:?}"))
            .unwrap_or("Unknown".into());
        *counts.entry(phase).or_insert(0) += 1;
    }
    metrics.set_vm_phases(&counts);
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), ControllerError> {
    let ceph = connect(&config).await?;
    let fenced = Arc::new(AtomicBool::new(false));
    let shutdown = stop_on_guard_loss(shutdown, ceph.guard.clone(), fenced.clone());

    // The hypervisor reconciler's cache is also placement's; a second, lighter watch in
    // `vm_controller` only triggers VMs.
    let hv_controller =
        crate::watch::controller(Api::<Hypervisor>::all(client.clone()), watcher::Config::default());
    let hypervisors = hv_controller.store();
    let heartbeats = Arc::new(HeartbeatClock::default());
    let controller = vm_controller(&client, config.concurrency);
    let vms = controller.store();
    let storage = storage_context(ceph.cluster, &config);
    let snapshots = config.snapshots.then(|| {
        tokio::spawn(crate::controller::snapshot::run(
            client.clone(),
            storage.clone(),
            metrics.clone(),
            config.unmanaged_snapshot_refresh,
            shutdown.clone(),
        ))
    });
    let reporter = Reporter {
        controller: "seapath-controller".into(),
        instance: Some(config.instance.clone()),
    };
    let hv_context = Arc::new(HypervisorContext {
        client: client.clone(),
        fencing_cluster: ceph.fencing_cluster,
        vms: vms.clone(),
        heartbeats: heartbeats.clone(),
        settings: config.fencing.clone(),
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter.clone()),
    });
    let hv_controller = tokio::spawn(
        hv_controller
            .graceful_shutdown_on(shutdown.clone())
            .run(hypervisor::reconcile, hypervisor::error_policy, hv_context)
            .for_each(|_| async {}),
    );
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        settings: settings(&config, ceph.monitors),
        storage,
        metrics: metrics.clone(),
        vms: vms.clone(),
        hypervisors,
        heartbeats,
        storage_checks: Default::default(),
        image_listings: ImageListings::new(IMAGE_LISTING_MAX_AGE),
        failures: Default::default(),
        placements: Default::default(),
        memory_mib: Default::default(),
    });
    let phase_counter = spawn_phase_counter(vms, metrics);
    let migrations = tokio::spawn(crate::controller::migration::run(
        context.clone(),
        shutdown.clone(),
    ));
    let drains = tokio::spawn(crate::controller::drain::run(
        context.clone(),
        config.drain_parallel,
        shutdown.clone(),
    ));
    run_vm_controller(controller, context, shutdown).await;
    hv_controller.abort();
    phase_counter.abort();
    migrations.await.ok();
    drains.await.ok();
    if let Some(snapshots) = snapshots {
        snapshots.await.ok();
    }
    release(ceph.guard, &fenced).await
}

async fn run_vm_controller(
    controller: kube::runtime::Controller<VirtualMachine>,
    context: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(vm::reconcile, vm::error_policy, context)
        .for_each(|result| {
            match result {
                Ok((object, _)) => tracing::debug!(vm = %object.name, "reconciled"),
                Err(err) => warn!(error = %err, "controller"),
            }
            async {}
        })
        .await;
}

/// The controller's Ceph connections, and its guard taken.
struct Ceph {
    cluster: Cluster,
    /// Where fencing blocklists and breaks locks.
    fencing_cluster: Cluster,
    monitors: Vec<(String, u16)>,
    guard: Arc<guard::Guard>,
}

async fn connect(config: &ControllerConfig) -> Result<Ceph, ControllerError> {
    let cluster = connect_ceph(config, &[]).await?;
    // Fencing blocklists clients itself, for the fence's expiry, before it breaks their locks:
    // librbd must not blocklist them again on the break (Pacific refuses a custom expiry there,
    // and its default hour would shorten the fence).
    let fencing_cluster = connect_ceph(config, &[("rbd_blocklist_on_break_lock", "false")]).await?;
    let monitors = storage::monitors(&cluster)
        .await
        .map_err(ControllerError::Monitors)?;
    info!(?monitors, pool = %config.pool, "connected to Ceph");
    let guard = guard::take(
        cluster.clone(),
        config.pool.clone(),
        config.guard_object.clone(),
        config.fencing.blocklist_expiry,
    )
    .await
    .map_err(ControllerError::Guard)?;
    Ok(Ceph {
        cluster,
        fencing_cluster,
        monitors,
        guard,
    })
}

/// The VirtualMachine controller and what, besides a VM's own changes, reconciles it.
fn vm_controller(client: &Client, concurrency: u16) -> kube::runtime::Controller<VirtualMachine> {
    let controller = crate::watch::controller(
        Api::<VirtualMachine>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    let waiting = controller.store();
    let peers = controller.store();
    controller
        .watches(
            Api::<Hypervisor>::all(client.clone()),
            watcher::Config::default(),
            move |hv: Hypervisor| waiting_for_a_hypervisor(&waiting, &hv),
        )
        // A VM that moves changes what its peers' placement rules find: they report again.
        .watches(
            Api::<VirtualMachine>::all(client.clone()),
            watcher::Config::default(),
            move |vm: VirtualMachine| vm::related_by_rules(&peers, &vm),
        )
}

fn storage_context(cluster: Cluster, config: &ControllerConfig) -> StorageContext {
    let keyring = config
        .ceph_options
        .iter()
        .find(|(key, _)| key == "keyring")
        .map(|(_, path)| PathBuf::from(path));
    StorageContext::new(
        cluster,
        config.pool.clone(),
        config.namespace_map.clone(),
        config.ceph_conf.clone(),
        config.ceph_client.clone(),
    )
    .with_keyring(keyring)
}

fn settings(config: &ControllerConfig, monitors: Vec<(String, u16)>) -> ControllerSettings {
    ControllerSettings {
        policy: config.policy.clone(),
        ceph_access: CephAccess {
            monitors,
            auth: config.libvirt_auth.clone(),
        },
        storage_recheck: config.storage_recheck,
        node_lost_grace: config.fencing.grace,
        resync: config.resync,
        import_dirs: config.import_dirs.clone(),
        shared_image_namespaces: config.shared_image_namespaces.clone(),
    }
}

/// Counting phases walks every VM: once every few seconds, not after every reconcile (a
/// resync of N VMs would otherwise walk N x N).
fn spawn_phase_counter(
    vms: reflector::Store<VirtualMachine>,
    metrics: Metrics,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            count_phases(&vms, &metrics);
        }
    })
}

/// Gives the guard back on a clean stop; a controller fenced meanwhile reports it instead.
async fn release(guard: Arc<guard::Guard>, fenced: &AtomicBool) -> Result<(), ControllerError> {
    if fenced.load(Ordering::SeqCst) {
        return Err(ControllerError::Fenced);
    }
    if let Err(e) = storage::blocking(move || guard.release()).await {
        warn!(error = %e, "the controller guard stays held: the next controller fences this one");
    }
    info!("controller stopped");
    Ok(())
}

/// `shutdown`, or the loss of the guard (then `fenced` is set).
fn stop_on_guard_loss(
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    guard: Arc<guard::Guard>,
    fenced: Arc<AtomicBool>,
) -> futures::future::Shared<futures::future::BoxFuture<'static, ()>> {
    async move {
        tokio::select! {
            () = shutdown => {}
            () = guard::lost(guard) => {
                error!("{}", ControllerError::Fenced);
                fenced.store(true, Ordering::SeqCst);
            }
        }
    }
    .boxed()
    .shared()
}
