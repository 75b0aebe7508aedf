//! The `VirtualMachine` custom resource (short name `svm`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A SEAPATH virtual machine: its disks live in Ceph RBD (one RBD group named like the VM,
/// images `system_NAME` and `data_NAME_<i>`), it runs under libvirt on one hypervisor, and
/// its status reports what Ceph and libvirt really show.
// The kube attribute repeats `type_` across print columns, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "seapath.lfenergy.org",
    version = "v1alpha1",
    kind = "VirtualMachine",
    namespaced,
    shortname = "svm",
    status = "VirtualMachineStatus",
    derive = "PartialEq",
    doc = "A SEAPATH virtual machine: RBD disks in Ceph, a libvirt domain on one hypervisor, and a status computed from what both report.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "SEAPATH status, from observed Ceph and libvirt state"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node", description = "Hypervisor the VM is placed on"),
    printcolumn(name = "Desired", type_ = "string", json_path = ".spec.state", description = "Desired state"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z0-9]+$')").message("a VirtualMachine name may contain only lowercase letters and digits (SEAPATH names the RBD group and images after it and allows only [a-zA-Z0-9]; Kubernetes allows only lowercase)").field_path(".metadata"),
    validation = Rule::new("size(self.metadata.name) <= 40").message("a VirtualMachine name may be at most 40 characters long (it names the RBD images data_NAME_<i>)").field_path(".metadata"),
    validation = Rule::new("has(self.spec.storageName) || self.metadata.name != 'xml'").message("a VirtualMachine may not be named 'xml' (vm_manager reserves it): choose another name or set spec.storageName").field_path(".metadata"),
)]
#[serde(rename_all = "camelCase")]
// Immutability is checked here, on the parent, and not with `self == oldSelf` on each field:
// the API server skips a field's transition rule when the field is absent on either side, so
// removing it and setting it again in two steps would pass.
#[x_kube(validation = Rule::new("(has(self.metadata) ? self.metadata : {}) == (has(oldSelf.metadata) ? oldSelf.metadata : {})").message("spec.metadata is immutable (it may not be removed, added or changed): SEAPATH VMs change their metadata by cloning"))]
#[x_kube(validation = Rule::new("(has(self.storageName) ? self.storageName : '') == (has(oldSelf.storageName) ? oldSelf.storageName : '')").message("spec.storageName is immutable (it may not be removed, added or changed): it names the RBD group, images and libvirt domain the VM is"))]
#[x_kube(validation = Rule::new("self.systemDisk.source == oldSelf.systemDisk.source && (has(self.dataDisks) ? self.dataDisks.map(d, d.source) : []) == (has(oldSelf.dataDisks) ? oldSelf.dataDisks.map(d, d.source) : [])").message("disk sources are immutable and data disks cannot be added or removed (a disk's size may grow and its bus may change): to change the disks, clone the VM into a new VirtualMachine"))]
pub struct VirtualMachineSpec {
    /// Desired state: `Started` (run it), `Stopped` (enabled on the cluster but shut down) or
    /// `Disabled` (no domain defined anywhere; disks kept). Changing it never touches the disks.
    #[serde(default)]
    pub state: DesiredState,

    /// The base libvirt domain XML. The operator replaces `<name>`, keeps a non-empty `<uuid>`
    /// (or generates one) and appends one RBD network disk per image. Immutable: to change the
    /// XML, clone the VM (SEAPATH rule).
    #[schemars(length(min = 1, max = 262144))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.xml is immutable: SEAPATH VMs change their configuration by cloning; create a new VirtualMachine with spec.systemDisk.source.vm"))]
    pub xml: String,

    /// The name of the VM in RBD and libvirt (group `NAME`, images `system_NAME`,
    /// `data_NAME_<i>`, domain `NAME`) when it differs from the object's name: SEAPATH names
    /// may have upper case letters and be longer than Kubernetes allows, so `VM1` is adopted by
    /// a VirtualMachine `vm1` with `storageName: VM1`. Letters and digits, not `xml` (vm_manager's
    /// rules). Immutable. Unset: the object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z0-9]+$') && self != 'xml'").message("storageName may contain only letters and digits and may not be 'xml' (SEAPATH vm_manager rules)"))]
    pub storage_name: Option<String>,

    /// The system disk (RBD image `system_NAME`).
    pub system_disk: Disk,

    /// Additional disks (RBD images `data_NAME_0`, `data_NAME_1`, ...), attached in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub data_disks: Vec<Disk>,

    /// User metadata stored as RBD image metadata on the system image, as SEAPATH's
    /// vm_manager does. Keys: letters and digits only; `xml` is reserved. Immutable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[a-zA-Z0-9]+$') && size(k) <= 63 && k != 'xml')").message("metadata keys may contain only letters and digits (at most 63) and may not be the reserved key 'xml'"))]
    pub metadata: BTreeMap<String, String>,

    /// Where the VM may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,

    /// How the VM may be moved between hypervisors (live migration settings). Unset: live
    /// migration allowed, 300 ms of downtime at most, 120 s at most, and a failed migration
    /// leaves the VM where it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<super::MigrationPolicy>,

    /// Seconds a graceful shutdown may take before the domain is destroyed. Unset: 60, written
    /// as vm_manager's `_stop_timeout` on a VM the operator creates; an adopted VM keeps the
    /// `_stop_timeout` it has (vm_manager uses 30 s without one). Set, it is written there too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub stop_timeout_seconds: Option<i32>,

    /// What happens to the RBD data when this object is deleted: `Delete` removes the
    /// snapshots, images and group; `Retain` keeps them (reported in an Event).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The stop timeout of a VM whose spec sets none.
pub const DEFAULT_STOP_TIMEOUT_SECONDS: i32 = 60;

impl VirtualMachineSpec {
    /// How long a graceful shutdown may take: `stopTimeoutSeconds`, else 60 s.
    pub fn stop_timeout(&self) -> std::time::Duration {
        let seconds = self.stop_timeout_seconds.unwrap_or(DEFAULT_STOP_TIMEOUT_SECONDS);
        std::time::Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
    }
}

/// Desired run state of a VM.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DesiredState {
    /// Defined on a hypervisor and running.
    #[default]
    Started,
    /// Enabled on the cluster, shut down.
    Stopped,
    /// Not defined on any hypervisor; the disks stay.
    Disabled,
}

/// What happens to RBD data when the resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Remove snapshots, images and the RBD group.
    #[default]
    Delete,
    /// Keep everything in RBD.
    Retain,
}

/// One disk of the VM.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.source.blank) || has(self.size)").message("a blank disk needs a size"))]
pub struct Disk {
    /// Where the disk's content comes from. Exactly one source.
    pub source: DiskSource,
    /// Size of the RBD image (Kubernetes quantity, e.g. `10Gi`). When larger than the source,
    /// the image is grown; it is never shrunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(Ki|Mi|Gi|Ti)?$')").message("size must be a whole number of bytes or use Ki, Mi, Gi or Ti, e.g. 10Gi"))]
    #[schemars(length(max = 32))]
    pub size: Option<String>,
    /// Disk bus in the guest.
    #[serde(default)]
    pub bus: DiskBus,
}

/// Guest bus of a disk.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    #[default]
    Virtio,
    Scsi,
    Sata,
    Ide,
}

/// Where a disk comes from. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.http), has(self.path), has(self.rbd), has(self.vm), has(self.golden), has(self.blank)].filter(x, x).size() == 1").message("a disk source needs exactly one of http, path, rbd, vm, golden or blank"))]
pub struct DiskSource {
    /// A qcow2 or raw image downloaded over HTTP(S) and streamed into RBD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    /// A qcow2 or raw image at a path readable by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathSource>,
    /// An existing RBD image, copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbd: Option<RbdSource>,
    /// The same disk of another VirtualMachine in this namespace (SEAPATH clone: a deep copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmSource>,
    /// A golden image snapshot, cloned copy-on-write (RBD layered clone; near-instant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden: Option<GoldenSource>,
    /// An empty disk of `size` bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blank: Option<BlankSource>,
}

/// Image file format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Qcow2,
    Raw,
}

/// An image served over HTTP(S).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    /// `http://` or `https://` URL of the image.
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("url must start with http:// or https://"))]
    pub url: String,
    /// Format of the file.
    #[serde(default)]
    pub format: ImageFormat,
}

/// An image file readable by the controller.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PathSource {
    /// Absolute path of the image file.
    #[schemars(length(max = 4096))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("path must be absolute"))]
    pub path: String,
    /// Format of the file.
    #[serde(default)]
    pub format: ImageFormat,
}

/// An existing RBD image.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RbdSource {
    /// Pool of the image; the operator's pool when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub pool: Option<String>,
    /// RBD namespace of the image; the VM's own RBD namespace when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub namespace: Option<String>,
    /// Image name.
    #[schemars(length(min = 1, max = 128))]
    pub image: String,
}

/// Another VirtualMachine of the same namespace to clone from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmSource {
    /// Name of the source VirtualMachine.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Clone from this snapshot of the source instead of its current content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub snapshot: Option<String>,
}

/// A protected snapshot of a golden image.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GoldenSource {
    /// Pool of the golden image; the operator's pool when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub pool: Option<String>,
    /// RBD namespace of the golden image; the default namespace when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub namespace: Option<String>,
    /// Golden image name.
    #[schemars(length(min = 1, max = 128))]
    pub image: String,
    /// Snapshot of the golden image to clone.
    #[schemars(length(min = 1, max = 128))]
    pub snapshot: String,
}

/// An empty disk.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct BlankSource {}

/// Where a VM may run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.pinnedNode) && has(self.preferredNode))").message("set pinnedNode or preferredNode, not both"))]
pub struct Placement {
    /// Run only on this hypervisor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub pinned_node: Option<String>,
    /// Run on this hypervisor when it is Ready, elsewhere otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub preferred_node: Option<String>,
    /// Higher priority VMs get the room first when it cannot take them all: VMs waiting to be
    /// placed (a lower one shows `Scheduled=False`, reason `HigherPriorityWaiting`, meanwhile),
    /// a lost host's VMs failing over, and a drained host's VMs moving off.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000))]
    pub priority: i32,
    /// What happens when the VM's hypervisor is lost: `Restart` (default) starts it on another
    /// hypervisor once the lost one is fenced; `Never` leaves it there until the host comes
    /// back. A pinned VM never moves.
    #[serde(default)]
    pub failover: FailoverPolicy,
    /// VMs this one runs on the same hypervisor as (vm_manager's colocation): while any of
    /// them is placed, this VM goes only where one of them is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub affinity: Vec<PlacementRule>,
    /// VMs this one never shares a hypervisor with, such as two redundant protection VMs
    /// (vm_manager's colocation with a negative score). The rule holds both ways: the VMs it
    /// selects do not come to this VM's hypervisor either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub anti_affinity: Vec<PlacementRule>,
}

/// VMs of the VM's own namespace, by names or by labels, and how strictly the rule holds.
/// Placement (new VMs and failover), migration and drain all follow it; a rule that cannot be
/// met leaves the VM unscheduled (`Required`) or is reported in the `PlacementRulesMet`
/// condition (`Preferred`), never broken silently.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
// vms is left out when empty: has() first, or the rule fails with "no such key".
#[x_kube(validation = Rule::new("(has(self.vms) && size(self.vms) > 0) != has(self.selector)").message("a placement rule selects VMs with vms or selector, exactly one of them"))]
pub struct PlacementRule {
    /// Names of VMs of this namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub vms: Vec<String>,
    /// VMs of this namespace whose labels match (the VM itself never counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// `Required` (default, vm_manager's strong colocation): never broken; when no hypervisor
    /// meets it the VM waits unscheduled. `Preferred` (a weak one): followed when a hypervisor
    /// allows it, otherwise the VM runs anyway and the PlacementRulesMet condition says so.
    #[serde(default)]
    pub mode: RuleMode,
}

/// How strictly a placement rule holds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RuleMode {
    /// Never broken: the VM waits unscheduled instead.
    #[default]
    Required,
    /// Followed when it can be.
    Preferred,
}

/// Whether a VM of a lost hypervisor is started elsewhere.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailoverPolicy {
    /// Start it on another hypervisor once the lost one is fenced.
    #[default]
    Restart,
    /// Wait for the host to come back.
    Never,
}

/// Observed SEAPATH status of a VM.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// No RBD group exists for the VM yet.
    Undefined,
    /// The disks exist; the VM is not enabled on any hypervisor.
    Disabled,
    /// Enabled; a start is under way.
    Starting,
    /// Enabled and running (not necessarily booted).
    Started,
    /// Enabled; a shutdown is under way.
    Stopping,
    /// Enabled and shut off.
    Stopped,
    /// Enabled but failed to start, or crashed too often.
    Failed,
}

/// Observed state of a VirtualMachine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// SEAPATH status computed from what Ceph and libvirt report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, StorageReady, Scheduled, Reconciling, Stalled, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Hypervisor the VM is placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// UUID of the libvirt domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_uuid: Option<String>,
    /// Where the VM's data lives in Ceph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageStatus>,
    /// Progress of a disk import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportProgress>,
    /// Restarts after guest crashes and the back-off in force (written by the node agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<RestartStatus>,
    /// The libvirt domain as the node agent last observed it (written by the node agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainStatus>,
    /// User RBD snapshots on the VM's images that no VirtualMachineSnapshot claims (taken by
    /// `rbd snap create` or vm_manager); a VirtualMachineSnapshot with `adopt: true` takes one
    /// over. Written by the snapshot controller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unmanaged_snapshots: Vec<UnmanagedSnapshot>,
}

/// An RBD snapshot name found on the VM's images and claimed by no VirtualMachineSnapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnmanagedSnapshot {
    /// RBD snapshot name.
    pub name: String,
    /// The images that have it, system image first (all of the VM's images: adoptable).
    pub images: Vec<String>,
    /// When the last of them was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
}

/// The libvirt domain of a VM as observed by the agent of the node it is placed on.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainStatus {
    /// Hypervisor that reported this.
    pub node: String,
    /// libvirt domain name.
    pub name: String,
    /// Observed state.
    pub state: DomainState,
    /// libvirt's reason for the state (e.g. `booted`, `shutdown`, `crashed`), or the agent's
    /// error when it could not act.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Message of the last failure, if the agent could not reach the desired state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `metadata.generation` of the VM the agent acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the agent last observed the domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_time: Option<Time>,
    /// The last live migration of the domain, as the agent that sent it saw it (carried by the
    /// target's first report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<super::MigrationReport>,
}

/// Observed state of a libvirt domain.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DomainState {
    /// No domain is defined on the node.
    #[default]
    Absent,
    /// Defined, shut off.
    ShutOff,
    Running,
    Paused,
    ShuttingDown,
    Crashed,
    /// The agent gave up restarting it (see `restarts`).
    Failed,
}

impl DomainState {
    /// Whether a guest may be running (or about to write its disks) in this state.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            DomainState::Running | DomainState::Paused | DomainState::ShuttingDown | DomainState::Crashed
        )
    }
}

/// Where a VM's data lives in Ceph.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageStatus {
    pub pool: String,
    /// RBD namespace ("" is the default namespace).
    pub namespace: String,
    /// RBD group (named like the VM).
    pub group: String,
    /// Images of the VM, system disk first.
    pub images: Vec<ImageStatus>,
}

/// One RBD image of a VM.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    pub name: String,
    pub size_bytes: i64,
    /// Parent `pool/namespace/image@snapshot` of a layered clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// Progress of a disk import.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportProgress {
    /// Image being written.
    pub image: String,
    pub bytes_done: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<i64>,
}

/// Guest crash restarts.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartStatus {
    /// Consecutive failed starts or crashes.
    pub consecutive_failures: i32,
    /// All restarts since the object was created.
    pub total: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// No restart is attempted before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<Time>,
}

impl VirtualMachine {
    /// The VM's name in RBD and libvirt: `spec.storageName`, else the object's name.
    pub fn storage_name(&self) -> String {
        use kube::ResourceExt;
        self.spec.storage_name.clone().unwrap_or_else(|| self.name_any())
    }

    /// `namespace/name`: how Hypervisor status, fence records and placement name a VM.
    pub fn key(&self) -> String {
        use kube::ResourceExt;
        format!("{}/{}", self.namespace().unwrap_or_default(), self.name_any())
    }
}
