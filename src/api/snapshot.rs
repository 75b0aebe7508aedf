//! Snapshots, restores and snapshot schedules of VirtualMachines.
//!
//! - `VirtualMachineSnapshot` (short `svmsnap`): one RBD snapshot with the same name on every
//!   image of a VM, as SEAPATH's vm_manager takes them (crash-consistent: the data on disk).
//! - `VirtualMachineRestore` (short `svmrestore`): SEAPATH's rollback: disable the VM, roll
//!   every disk back to a snapshot, bring the VM back to its previous desired state.
//! - `VirtualMachineSnapshotSchedule` (short `svmss`): cron-driven snapshots with retention,
//!   and purges without a schedule.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::DesiredState;

/// Label on a snapshot made by a schedule: the schedule's name.
pub const SCHEDULE_LABEL: &str = "seapath.lfenergy.org/schedule";
/// Label on a snapshot made by a schedule: the schedule's UID (what "owned" means).
pub const SCHEDULE_UID_LABEL: &str = "seapath.lfenergy.org/schedule-uid";
/// Label on a snapshot made by a schedule: the VM.
pub const VM_LABEL: &str = "seapath.lfenergy.org/vm";
/// Annotation on a snapshot made by a schedule: the scheduled time (RFC 3339) of its run.
pub const SCHEDULED_TIME_ANNOTATION: &str = "seapath.lfenergy.org/scheduled-time";
/// Finalizer of snapshots: the RBD snapshots are removed before the object goes.
pub const SNAPSHOT_FINALIZER: &str = "seapath.lfenergy.org/snapshot";
/// Finalizer of restores: a restore deleted half-way brings the VM back first.
pub const RESTORE_FINALIZER: &str = "seapath.lfenergy.org/restore";
/// Label on a VirtualMachine a restore created: the restore's name.
pub const RESTORE_LABEL: &str = "seapath.lfenergy.org/restore";
/// Annotation on a VirtualMachine a restore created: the restore's UID (what tells the VM the
/// restore made from one that happens to have the target name).
pub const RESTORE_UID_ANNOTATION: &str = "seapath.lfenergy.org/restore-uid";

/// A Kubernetes-style duration: `30s`, `5m`, `1h30m`, `7d`, or `0`.
const DURATION_RULE: &str = "self == '0' || self.matches('^([0-9]+(ms|s|m|h|d))+$')";

/// A crash-consistent snapshot of every disk of one VirtualMachine: one RBD snapshot with the
/// same name on each image (`system_VM`, `data_VM_i`), readable by SEAPATH's vm_manager.
/// A snapshot of a running VM holds what was on disk (crash-consistent), not the guest's memory.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "seapath.lfenergy.org",
    version = "v1alpha1",
    kind = "VirtualMachineSnapshot",
    namespaced,
    shortname = "svmsnap",
    status = "VirtualMachineSnapshotStatus",
    derive = "PartialEq",
    doc = "A crash-consistent snapshot of every RBD disk of one VirtualMachine (vm_manager-compatible).",
    printcolumn(name = "VM", type_ = "string", json_path = ".spec.vmName"),
    printcolumn(name = "Snapshot", type_ = "string", json_path = ".status.snapshotName", description = "RBD snapshot name on every image"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "ReadyToUse", type_ = "boolean", json_path = ".status.readyToUse"),
    printcolumn(name = "Created", type_ = "date", json_path = ".status.creationTime"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("has(self.spec.snapshotName) || self.metadata.name.matches('^[a-z0-9]+$')").message("the object name names the RBD snapshot, and SEAPATH allows only letters and digits there: use such a name or set spec.snapshotName").field_path(".metadata"),
    validation = Rule::new("has(self.spec.snapshotName) || self.metadata.name != 'xml'").message("vm_manager refuses 'xml' as a snapshot name: use another name or set spec.snapshotName").field_path(".metadata"),
)]
#[x_kube(validation = Rule::new("(has(self.adopt) && self.adopt) == (has(oldSelf.adopt) && oldSelf.adopt)").message("spec.adopt is immutable"))]
// On the parent, not on the optional field: a field's transition rule is skipped when the
// field is absent on one side, so removing it and setting another value would pass.
#[x_kube(validation = Rule::new("has(self.snapshotName) == has(oldSelf.snapshotName) && (!has(self.snapshotName) || self.snapshotName == oldSelf.snapshotName)").message("spec.snapshotName is immutable (it may not be removed, added or changed)"))]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSnapshotSpec {
    /// The VirtualMachine (same namespace) to snapshot. Immutable.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.vmName is immutable"))]
    pub vm_name: String,

    /// Name of the RBD snapshot on every image (letters and digits only, as vm_manager
    /// requires). Default: the object name. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z0-9]+$') && self != 'xml'").message("snapshotName may contain only letters and digits and may not be 'xml' (SEAPATH vm_manager rules)"))]
    pub snapshot_name: Option<String>,

    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// What deleting this object does to the RBD snapshots: `Delete` removes them from every
    /// image (refused while a clone depends on one), `Retain` keeps them.
    #[serde(default)]
    pub deletion_policy: SnapshotDeletionPolicy,

    /// How long the snapshot may take before it is marked Failed and the part it made is
    /// removed (a duration: `30s`, `5m`; `0` = no deadline). Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("failureDeadline must be a duration such as 30s, 5m or 1h (0 for none)"))]
    pub failure_deadline: Option<String>,

    /// Take over an RBD snapshot of that name that already exists on every image of the VM
    /// (taken by `rbd snap create` or vm_manager) instead of taking one: the object records
    /// its ids and owns it from then on (deleting the object removes it unless Retain). A
    /// snapshot missing on any image fails the object, touching nothing. Immutable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt: bool,
}

/// What happens to the RBD snapshots when the object is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SnapshotDeletionPolicy {
    /// Remove the RBD snapshot from every image.
    #[default]
    Delete,
    /// Keep the RBD snapshots.
    Retain,
}

/// Lifecycle of a snapshot.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SnapshotPhase {
    /// Waiting for the VM or its storage.
    Pending,
    /// Taking the RBD snapshots (the intent is recorded: a restarted controller resumes).
    InProgress,
    /// Every image has the snapshot.
    Ready,
    /// Could not complete (irreversible); the part made was removed.
    Failed,
    /// The object is being deleted.
    Deleting,
}

/// Observed state of a VirtualMachineSnapshot.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSnapshotStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<SnapshotPhase>,
    /// The RBD snapshot name on every image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_name: Option<String>,
    /// UID of the VirtualMachine the snapshot was taken of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_uid: Option<String>,
    /// Desired state of the VM when the snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_state: Option<DesiredState>,
    /// When the controller started taking the snapshots (recorded before any was taken;
    /// a snapshot of that name older than this is not this object's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the last image's snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// The snapshot exists on every image and can be restored.
    #[serde(default)]
    pub ready_to_use: bool,
    /// One entry per image of the VM, system image first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<SnapshotDiskStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The last error, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
}

/// The snapshot on one image.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotDiskStatus {
    /// RBD image.
    pub image: String,
    /// RBD snapshot id, once taken (what proves the snapshot is this object's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<i64>,
    /// Size of the image when the snapshot was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
}

/// A failure, as KubeVirt reports it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    pub message: String,
}

/// SEAPATH's rollback of a VM to one of its snapshots: the VM is disabled (its domain stopped
/// and undefined everywhere), every disk is rolled back, and the VM is brought back to the
/// desired state it had. The snapshot stays.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "seapath.lfenergy.org",
    version = "v1alpha1",
    kind = "VirtualMachineRestore",
    namespaced,
    shortname = "svmrestore",
    status = "VirtualMachineRestoreStatus",
    derive = "PartialEq",
    doc = "A rollback of a VirtualMachine's disks to one of its snapshots (SEAPATH rollback_snapshot).",
    printcolumn(name = "VM", type_ = "string", json_path = ".spec.vmName"),
    printcolumn(name = "Snapshot", type_ = "string", json_path = ".spec.snapshot"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
// On the spec, not the root: a root rule's failure is reported with no field ("<nil>").
#[x_kube(validation = Rule::new("self == oldSelf").message("a VirtualMachineRestore's spec is immutable: create a new one"))]
#[x_kube(validation = Rule::new("!has(self.target) || self.target.name != self.vmName").message("spec.target.name must differ from spec.vmName (omit target to roll the VM back in place)").field_path(".target.name"))]
pub struct VirtualMachineRestoreSpec {
    /// The VirtualMachine (same namespace) to roll back.
    #[schemars(length(min = 1, max = 63))]
    pub vm_name: String,
    /// The VirtualMachineSnapshot (same namespace) to roll back to; it must be of this VM.
    #[schemars(length(min = 1, max = 253))]
    pub snapshot: String,
    /// Restore into a new VirtualMachine instead of rolling `vmName` back: the new VM (same
    /// namespace) gets the source's XML (without its `<uuid>`: it gets its own), metadata,
    /// placement and desired state, and disks copied from the snapshot. The source VM is not
    /// touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RestoreTarget>,
}

/// The new VirtualMachine a restore creates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTarget {
    /// Name of the new VirtualMachine; it must not exist yet. Same rules as VM names.
    #[schemars(length(min = 1, max = 40))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]+$')").message("target.name must be a VirtualMachine name: lowercase letters and digits only"))]
    pub name: String,
}

/// Steps of a restore.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RestorePhase {
    /// Checking the VM and the snapshot; nothing touched yet.
    Pending,
    /// The VM's desired state is recorded; the VM is disabled, waiting for its domain to be
    /// gone from every hypervisor.
    Stopping,
    /// Rolling every disk back.
    RollingBack,
    /// Disks rolled back; the VM's desired state is set back, waiting for it to be reached.
    Starting,
    /// Restore into a new VM: the new VirtualMachine is created, waiting for its disks.
    Creating,
    /// Done.
    Succeeded,
    /// Refused or failed (nothing was stopped when refused).
    Failed,
}

/// Observed state of a VirtualMachineRestore.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineRestoreStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RestorePhase>,
    /// The VM's desired state before the restore, brought back at the end (restore into a new
    /// VM: the desired state the new VM was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_state: Option<DesiredState>,
    /// Restore into a new VM: the VirtualMachine created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_vm: Option<String>,
    /// The VM's `metadata.generation` once disabled (the agent's report must be at least it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_generation: Option<i64>,
    /// The VM's `metadata.generation` once its desired state was set back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_generation: Option<i64>,
    /// The RBD snapshot rolled back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_name: Option<String>,
    /// Images rolled back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolled_back: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<OperationError>,
}

/// Scheduled snapshots of VMs with retention, and purges (a schedule with only retention).
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "seapath.lfenergy.org",
    version = "v1alpha1",
    kind = "VirtualMachineSnapshotSchedule",
    namespaced,
    shortname = "svmss",
    status = "VirtualMachineSnapshotScheduleStatus",
    derive = "PartialEq",
    doc = "Cron-driven VirtualMachineSnapshots with retention (keep the last N, delete older than an age or a date).",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Last", type_ = "date", json_path = ".status.lastScheduleTime"),
    printcolumn(name = "Next", type_ = "string", json_path = ".status.nextScheduleTime"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 40").message("a schedule name may be at most 40 characters long (it prefixes the names of the snapshots it takes)").field_path(".metadata"),
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.schedule) || has(self.retention)").message("a schedule needs spec.schedule, spec.retention, or both"))]
// vmNames is left out when empty: has() first, or the rule fails with "no such key".
#[x_kube(validation = Rule::new("(has(self.vmNames) && size(self.vmNames) > 0) || has(self.selector)").message("select VMs with vmNames or selector"))]
pub struct VirtualMachineSnapshotScheduleSpec {
    /// VMs (same namespace) by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub vm_names: Vec<String>,
    /// VMs (same namespace) by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Cron expression (minute hour day-of-month month day-of-week, or @hourly, @daily,
    /// @weekly, @monthly, @yearly). Without it, the schedule only applies retention (a purge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^@(hourly|daily|midnight|weekly|monthly|yearly|annually)$') || self.matches('^\\\\s*[0-9*,/\\\\-A-Za-z?]+(\\\\s+[0-9*,/\\\\-A-Za-z?]+){4}\\\\s*$')").message("schedule must be a cron expression with 5 fields (minute hour day-of-month month day-of-week) or @hourly, @daily, @weekly, @monthly, @yearly"))]
    pub schedule: Option<String>,
    /// IANA time zone the cron expression is read in (e.g. `Europe/Paris`). Default UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_+\\\\-]*(/[A-Za-z0-9_+\\\\-]+)*$')").message("timeZone must be an IANA time zone name such as Europe/Paris or UTC"))]
    pub time_zone: Option<String>,
    /// Which snapshots to delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Take no snapshot and delete none while true.
    #[serde(default)]
    pub suspend: bool,
    /// Consecutive failed runs after which the schedule suspends itself (0: never). A change of
    /// the spec resumes it.
    #[serde(default = "default_max_failures")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_failures: i32,
    /// failureDeadline of the snapshots it takes. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("snapshotDeadline must be a duration such as 30s, 5m or 1h (0 for none)"))]
    pub snapshot_deadline: Option<String>,
}

fn default_max_failures() -> i32 {
    3
}

/// Which snapshots a schedule deletes. A snapshot goes when any rule says so; by default only
/// the snapshots the schedule took itself.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.keepLast) || has(self.maxAge) || has(self.before) || has(self.all)").message("retention needs keepLast, maxAge, before or all"))]
#[x_kube(validation = Rule::new("!(has(self.includeUnowned) && self.includeUnowned) || has(self.unownedMinAge)").message("includeUnowned deletes snapshots taken by hand: set unownedMinAge too, the age they must reach first (e.g. 7d; 0 to confirm that they may go at any age)").field_path(".unownedMinAge"))]
pub struct Retention {
    /// Keep the N newest snapshots of each VM, delete the older ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub keep_last: Option<i32>,
    /// Delete snapshots older than this duration (e.g. `7d`, `12h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("maxAge must be a duration such as 12h or 7d"))]
    pub max_age: Option<String>,
    /// Delete snapshots taken before this date (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Time>,
    /// Delete every snapshot (SEAPATH `purge_image` of all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
    /// Also delete the VM's VirtualMachineSnapshots taken by hand (`false` by default:
    /// retention never deletes what it does not own unless told to). Never those of another
    /// schedule (labelled with its UID, even once that schedule is gone): each schedule's
    /// retention deletes its own. Requires `unownedMinAge`.
    #[serde(default)]
    pub include_unowned: bool,
    /// With `includeUnowned`: a snapshot taken by hand is deleted only once older than this (a
    /// duration such as `7d`; `0` confirms that any age may go). Required with
    /// `includeUnowned`, so that a new schedule never deletes, the moment it is created, the
    /// snapshots someone just took by hand without saying so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("unownedMinAge must be a duration such as 12h or 7d (0 for any age)"))]
    pub unowned_min_age: Option<String>,
}

/// Observed state of a schedule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSnapshotScheduleStatus {
    /// The scheduled time of the last run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The last run whose snapshots all became Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// The next run (absent while suspended or without a schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The last run whose outcome was counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluated_time: Option<Time>,
    /// Consecutive runs with a Failed snapshot.
    #[serde(default)]
    pub consecutive_failures: i32,
    /// Set when the schedule suspended itself after maxFailures: the generation it happened at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_suspended_generation: Option<i64>,
    /// The VirtualMachineSnapshots the schedule owns, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<String>,
    /// Snapshots deleted by retention since the object was created.
    #[serde(default)]
    pub purged_total: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled, Suspended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
