//! What every reconcile of the controller shares: configuration, clients, caches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;

use crate::api::{Hypervisor, VirtualMachine};
use crate::controller::storage::{StorageContext, StorageError};
use crate::domain_xml::{Allowances, CephAccess, DevicePolicy};
use crate::metrics::Metrics;

/// What a cluster admin allows the base XML of each namespace to reach on the host.
#[derive(Clone, Debug, Default)]
pub struct PolicyConfig {
    /// Namespaces where each all-or-nothing switch is on.
    pub host_devices: BTreeSet<String>,
    pub host_paths: BTreeSet<String>,
    pub qemu_passthrough: BTreeSet<String>,
    /// Fine-grained allowances per namespace (`--device-policy`); a namespace not listed has
    /// the safe defaults.
    pub allowances: BTreeMap<String, Allowances>,
}

impl PolicyConfig {
    pub fn for_namespace(&self, namespace: &str) -> DevicePolicy {
        DevicePolicy {
            allow_host_devices: self.host_devices.contains(namespace),
            allow_host_paths: self.host_paths.contains(namespace),
            allow_qemu_passthrough: self.qemu_passthrough.contains(namespace),
            allowances: self.allowances.get(namespace).cloned().unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ControllerSettings {
    pub policy: PolicyConfig,
    /// Monitors and libvirt secret written into every domain's RBD disks.
    pub ceph_access: CephAccess,
    /// How long a successful storage check stays trusted before Ceph is read again.
    pub storage_recheck: Duration,
    /// A hypervisor silent for this long is lost: not Ready for placement, fenced if it has VMs.
    pub node_lost_grace: Duration,
    /// Periodic requeue of every VM.
    pub resync: Duration,
    /// Directories `path` disk sources may be imported from.
    pub import_dirs: Vec<std::path::PathBuf>,
    /// RBD namespaces every tenant may copy (`rbd`) or clone (`golden`) from.
    pub shared_image_namespaces: crate::naming::SharedImageNamespaces,
}

/// When the storage of a VM was last found complete, per object UID.
#[derive(Default)]
pub struct StorageChecks {
    checked: Mutex<HashMap<String, (i64, Instant)>>,
}

impl StorageChecks {
    pub fn fresh(&self, uid: &str, generation: i64, max_age: Duration) -> bool {
        let checked = self.checked.lock().expect("storage check cache poisoned");
        checked
            .get(uid)
            .is_some_and(|(g, at)| *g == generation && at.elapsed() < max_age)
    }

    pub fn record(&self, uid: &str, generation: i64) {
        let mut checked = self.checked.lock().expect("storage check cache poisoned");
        checked.insert(uid.to_owned(), (generation, Instant::now()));
    }

    /// Whether this process checked the VM's storage at least once.
    pub fn seen(&self, uid: &str) -> bool {
        self.checked
            .lock()
            .expect("storage check cache poisoned")
            .contains_key(uid)
    }

    pub fn forget(&self, uid: &str) {
        self.checked
            .lock()
            .expect("storage check cache poisoned")
            .remove(uid);
    }
}

/// When a namespace's images were listed, and their names.
type Listing = (Instant, Arc<BTreeSet<String>>);

/// Image names per Kubernetes namespace, read once for many VMs: after a restart each VM's
/// recorded storage is checked against one listing instead of opening its images.
pub struct ImageListings {
    max_age: Duration,
    // Held across the listing so that concurrent reconciles wait for one read, not make many.
    listings: tokio::sync::Mutex<HashMap<String, Listing>>,
}

impl ImageListings {
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            listings: Default::default(),
        }
    }

    pub async fn get(
        &self,
        storage: &StorageContext,
        kube_namespace: &str,
    ) -> Result<Arc<BTreeSet<String>>, StorageError> {
        let mut listings = self.listings.lock().await;
        if let Some((at, names)) = listings.get(kube_namespace)
            && at.elapsed() < self.max_age
        {
            return Ok(names.clone());
        }
        let names = Arc::new(crate::controller::storage::image_names(storage, kube_namespace).await?);
        listings.insert(kube_namespace.to_owned(), (Instant::now(), names.clone()));
        Ok(names)
    }
}

/// Consecutive reconcile failures per object UID, for the retry back-off.
#[derive(Default)]
pub struct FailureCounter {
    counts: Mutex<HashMap<String, u32>>,
}

impl FailureCounter {
    /// Counts one more failure and returns the count.
    pub fn bump(&self, uid: &str) -> u32 {
        let mut counts = self.counts.lock().expect("failure counter poisoned");
        let count = counts.entry(uid.to_owned()).or_default();
        *count += 1;
        *count
    }

    pub fn reset(&self, uid: &str) {
        self.counts.lock().expect("failure counter poisoned").remove(uid);
    }
}

/// The node each VM was last placed on by this controller, per object UID.
#[derive(Default)]
pub struct Placements {
    nodes: Mutex<HashMap<String, String>>,
}

impl Placements {
    pub fn get(&self, uid: &str) -> Option<String> {
        self.nodes.lock().expect("placements poisoned").get(uid).cloned()
    }

    pub fn set(&self, uid: &str, node: &str) {
        self.nodes
            .lock()
            .expect("placements poisoned")
            .insert(uid.to_owned(), node.to_owned());
    }

    pub fn forget(&self, uid: &str) {
        self.nodes.lock().expect("placements poisoned").remove(uid);
    }
}

pub struct Context {
    pub client: Client,
    pub settings: ControllerSettings,
    pub storage: StorageContext,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub vms: Store<VirtualMachine>,
    pub hypervisors: Store<Hypervisor>,
    /// When each hypervisor's heartbeat last changed, on this controller's clock.
    pub heartbeats: Arc<crate::controller::node_health::HeartbeatClock>,
    pub storage_checks: StorageChecks,
    pub image_listings: ImageListings,
    pub failures: FailureCounter,
    pub placements: Placements,
    /// Memory in MiB of each VM by UID: the XML is immutable, so it is parsed once.
    pub memory_mib: Mutex<HashMap<String, i64>>,
}

impl Context {
    /// Memory of a VM's domain in MiB (0 when its XML cannot be read; such a VM is not placed).
    pub fn memory_of(&self, vm: &VirtualMachine) -> i64 {
        let uid = vm.metadata.uid.clone().unwrap_or_default();
        let mut cache = self.memory_mib.lock().expect("memory cache poisoned");
        *cache.entry(uid).or_insert_with(|| {
            crate::domain_xml::extract_memory_kib(&vm.spec.xml)
                .map(|kib| (kib / 1024) as i64)
                .unwrap_or(0)
        })
    }
}
