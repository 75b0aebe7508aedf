//! The node agent: one per hypervisor. It owns the libvirt domains of its host.
//!
//! - registers its `Hypervisor` object and writes its status every heartbeat
//!   ([`hypervisor_status`]);
//! - keeps the Ceph secret defined in libvirt, when configured;
//! - reconciles every VirtualMachine labelled with its node name ([`crate::api::NODE_LABEL`]):
//!   defines the domain from the XML the controller stored in RBD (image metadata `xml` on the
//!   system image), starts, stops, undefines it, restarts it after crashes with exponential
//!   back-off, and reports `status.domain` and `status.restarts` ([`reconciler`],
//!   [`domain_reconcile`] for the pure decision, [`backoff`]);
//! - sweeps domains that carry the operator's owner marker but whose VM is not assigned here
//!   ([`sweep`]). Domains without the marker are never touched.
//!
//! Every blocking libvirt/librbd call runs in `spawn_blocking`. Everything the agent writes to
//! the API server is a server-side apply with field manager `seapath-agent`, on fields only
//! the agents own.

pub mod actions;
pub mod backoff;
mod config;
mod connection;
pub mod domain_reconcile;
mod error;
pub mod hypervisor_status;
mod migration;
pub mod reconciler;
mod self_fence;
pub mod status;
mod stored_xml;
pub mod sweep;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex, OnceLock};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::Store;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{Notify, OwnedMutexGuard, oneshot, watch};
use tracing::{debug, info, warn};

pub use backoff::RestartPolicy;
pub use config::{
    AgentConfig, CephConfig, CephSecretConfig, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_MAX_CONSECUTIVE_FAILURES,
    DEFAULT_RESTART_BACKOFF_BASE, DEFAULT_RESTART_BACKOFF_MAX, DEFAULT_RESYNC_PERIOD,
    DEFAULT_SELF_FENCE_AFTER, DEFAULT_STOP_TIMEOUT, DEFAULT_STORED_XML_RECHECK,
};
pub use connection::{AgentStats, StatsSnapshot};
pub use error::AgentError;

use crate::api::{DomainStatus, MIGRATION_TARGET_LABEL, NODE_LABEL, RestartStatus, VirtualMachine};
use crate::libvirt::Hypervisor;
use connection::{Ceph, Libvirt};

/// What the agent remembers about a VM between reconciliations (the API server's copy may lag
/// behind its own writes).
#[derive(Clone, Debug, Default)]
pub(crate) struct VmMemory {
    /// The last `status.domain` this agent wrote (or found written by itself).
    pub(crate) reported: Option<DomainStatus>,
    /// The last `status.restarts` this agent wrote.
    pub(crate) restarts: Option<RestartStatus>,
    /// The agent stopped the domain and has not started it since.
    pub(crate) stopped_by_agent: bool,
    /// Since when the domain has been seen running.
    pub(crate) running_since: Option<Timestamp>,
}

/// One async lock per domain name: reconciliations and the sweep never act on one domain at
/// the same time.
#[derive(Default)]
pub(crate) struct DomainLocks(StdMutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl DomainLocks {
    pub(crate) async fn lock(&self, domain: &str) -> OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().expect("domain locks");
            map.retain(|_, l| Arc::strong_count(l) > 1);
            map.entry(domain.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Shared state of one running agent.
pub(crate) struct Context {
    pub(crate) client: Client,
    pub(crate) config: AgentConfig,
    pub(crate) policy: RestartPolicy,
    pub(crate) libvirt: Libvirt,
    pub(crate) ceph: Ceph,
    pub(crate) stats: Arc<AgentStats>,
    pub(crate) locks: DomainLocks,
    memory: StdMutex<HashMap<String, VmMemory>>,
    /// Consecutive reconcile errors per VM UID, for the error back-off.
    pub(crate) errors: StdMutex<HashMap<String, u32>>,
    /// The controller's cache of the VMs assigned here.
    pub(crate) store: OnceLock<Store<VirtualMachine>>,
    /// Wakes the sweep early (a VM left this node's watch).
    pub(crate) sweep_now: Notify,
    /// Wakes the heartbeat early: a domain was defined, started, stopped or removed here.
    pub(crate) domains_changed: Notify,
    /// The XML each VM should run, as last read from RBD.
    pub(crate) stored_xml: stored_xml::StoredXmlCache,
    /// Heartbeat renewal and fencing: whether domains may start.
    pub(crate) fence: self_fence::FenceWatch,
    /// Defines (read) against the heartbeat's listing (write): a domain is defined only for
    /// a VM the cache assigns here at that moment, and the heartbeat lists every such VM and
    /// every defined domain, so a heartbeat that leaves a VM out proves the agent will not
    /// bring it up from a stale view after the controller moved it. Starts only check the
    /// cache: their domain is defined, hence listed, and a start (slow under load) must not
    /// hold the heartbeat back. See docs/architecture.md, "Moving a VM between nodes".
    pub(crate) assignment_gate: tokio::sync::RwLock<()>,
}

impl Context {
    pub(crate) fn memory_of(&self, uid: &str) -> Option<VmMemory> {
        self.memory.lock().expect("VM memory").get(uid).cloned()
    }

    pub(crate) fn remember(&self, uid: &str, memory: VmMemory) {
        self.memory
            .lock()
            .expect("VM memory")
            .insert(uid.to_owned(), memory);
    }

    /// `namespace/name` of the VMs the cache assigns to this node.
    pub(crate) fn assigned_here(&self) -> Vec<String> {
        let Some(store) = self.store.get() else {
            return Vec::new();
        };
        store
            .state()
            .iter()
            .filter(|vm| {
                kube::ResourceExt::labels(&***vm).get(crate::api::NODE_LABEL) == Some(&self.config.node_name)
            })
            .map(|vm| vm.key())
            .collect()
    }

    /// Whether the cache assigns `vm` to this node now.
    pub(crate) fn is_assigned_here(&self, vm: &VirtualMachine) -> bool {
        let current = self
            .store
            .get()
            .and_then(|store| store.get(&kube::runtime::reflector::ObjectRef::from_obj(vm)));
        current.is_some_and(|vm| {
            kube::ResourceExt::labels(&*vm).get(crate::api::NODE_LABEL) == Some(&self.config.node_name)
        })
    }

    pub(crate) fn forget(&self, uid: &str) {
        self.memory.lock().expect("VM memory").remove(uid);
        self.errors.lock().expect("error counters").remove(uid);
        self.stored_xml.forget(uid);
    }
}

/// A node agent, ready to run.
pub struct Agent {
    client: Client,
    config: AgentConfig,
    connection: Option<Hypervisor>,
    stats: Arc<AgentStats>,
}

impl Agent {
    /// Checks the configuration.
    pub fn new(client: Client, config: AgentConfig) -> Result<Self, AgentError> {
        config.validate()?;
        let stats = Arc::new(AgentStats::with_metrics(config.metrics.clone()));
        Ok(Agent {
            client,
            config,
            connection: None,
            stats,
        })
    }

    /// Uses this already open libvirt connection (to `config.libvirt_uri`) instead of opening
    /// one. With libvirt's test driver every connection to a node file has its own state, so
    /// tests share the agent's connection to see (and disturb) what the agent does.
    pub fn with_connection(mut self, hypervisor: Hypervisor) -> Self {
        self.connection = Some(hypervisor);
        self
    }

    /// Counters of what the agent did (libvirt writes, status writes, reconciliations).
    pub fn stats(&self) -> Arc<AgentStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` completes, then lets running reconciliations finish. Domains keep
    /// running when the agent stops.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), AgentError> {
        let Agent {
            client,
            config,
            connection,
            stats,
        } = self;
        let node = config.node_name.clone();
        info!(node, uri = %config.libvirt_uri, "node agent starting");
        let selector = format!("{NODE_LABEL}={node}");
        let vms: Api<VirtualMachine> = Api::all(client.clone());

        let ctx = Arc::new(Context {
            client: client.clone(),
            policy: config.restart_policy(),
            libvirt: Libvirt::new(
                config.libvirt_uri.clone(),
                config.ceph_secret.clone(),
                connection,
                stats.clone(),
            ),
            ceph: Ceph::new(config.ceph.clone()),
            stats,
            locks: DomainLocks::default(),
            memory: StdMutex::default(),
            errors: StdMutex::default(),
            store: OnceLock::new(),
            sweep_now: Notify::new(),
            domains_changed: Notify::new(),
            assignment_gate: Default::default(),
            stored_xml: stored_xml::StoredXmlCache::default(),
            fence: self_fence::FenceWatch::default(),
            config,
        });

        let (stop_tx, stop_rx) = watch::channel(false);
        let (controller_stop_tx, controller_stop_rx) = oneshot::channel::<()>();
        let controller = crate::watch::controller(vms, watcher::Config::default().labels(&selector));
        let _ = ctx.store.set(controller.store());
        let reconciles = controller
            .graceful_shutdown_on(async move {
                let _ = controller_stop_rx.await;
            })
            .run(reconciler::reconcile, reconciler::error_policy, ctx.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    debug!("controller: {e}");
                }
            });
        // VMs being live-migrated here carry another node's label: a watch of their own.
        let (incoming_stop_tx, incoming_stop_rx) = oneshot::channel::<()>();
        let incoming_selector = format!("{MIGRATION_TARGET_LABEL}={node}");
        let incoming = crate::watch::controller(
            Api::<VirtualMachine>::all(client.clone()),
            watcher::Config::default().labels(&incoming_selector),
        )
        .graceful_shutdown_on(async move {
            let _ = incoming_stop_rx.await;
        })
        .run(reconciler::reconcile, reconciler::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!("incoming migrations: {e}");
            }
        });

        let heartbeat = hypervisor_status::heartbeat_loop(ctx.clone(), stop_rx.clone());
        let sweeps = sweep::sweep_loop(ctx.clone(), stop_rx.clone());
        let self_fence = self_fence::self_fence_loop(ctx.clone(), stop_rx.clone());
        let departures = watch_departures(ctx.clone(), Api::all(client.clone()), selector, stop_rx);
        let all = async {
            tokio::join!(reconciles, incoming, heartbeat, sweeps, departures, self_fence);
        };
        tokio::pin!(all);
        tokio::select! {
            _ = shutdown => {}
            _ = &mut all => {}
        }
        info!(node, "node agent stopping");
        let _ = stop_tx.send(true);
        let _ = controller_stop_tx.send(());
        let _ = incoming_stop_tx.send(());
        all.await;
        info!(node, "node agent stopped");
        Ok(())
    }
}

/// Wakes the sweep when a VM leaves this node's watch (label moved or removed, object
/// deleted): its domain goes at once instead of at the next resync.
async fn watch_departures(
    ctx: Arc<Context>,
    vms: Api<PartialObjectMeta<VirtualMachine>>,
    selector: String,
    mut stop: watch::Receiver<bool>,
) {
    let stream = watcher::watcher(vms, watcher::Config::default().labels(&selector))
        .backoff(crate::watch::watch_backoff());
    tokio::pin!(stream);
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(Event::Delete(vm))) => {
                    debug!(vm = ?vm.metadata.name, "a VM left this node");
                    if let Some(uid) = vm.metadata.uid.as_deref() {
                        ctx.forget(uid);
                    }
                    ctx.sweep_now.notify_one();
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => warn!("watching VMs of this node: {e}"),
                None => return,
            },
            _ = stop.changed() => return,
        }
    }
}

/// Runs a node agent until `shutdown` completes (see [`Agent::run`]).
pub async fn run(
    client: Client,
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    Agent::new(client, config)?.run(shutdown).await
}
