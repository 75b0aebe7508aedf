//! `VirtualMachineMigration` (short `svmmig`): one move of a running VM to another hypervisor,
//! live where the VM allows it (libvirt migrates the guest's memory; the RBD disks are shared),
//! by stop and start otherwise. Modelled on KubeVirt's `VirtualMachineInstanceMigration`.
//!
//! How the controller and the agents hand a live migration over, each step visible on the VM:
//! 1. the controller labels the VM with [`MIGRATION_TARGET_LABEL`] (and the migration's UID in
//!    [`MIGRATION_UID_ANNOTATION`]); the node label still names the source;
//! 2. the source agent migrates the domain with libvirt; the target agent keeps the incoming
//!    domain (its sweep does not destroy it) and reports it once it runs there;
//! 3. the controller points the node label at the target only once the target reports the
//!    domain running, then removes the migration label: no moment has two hosts own the VM.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label on a VirtualMachine being live-migrated: the target hypervisor. Set and removed by
/// the controller only.
pub const MIGRATION_TARGET_LABEL: &str = "seapath.lfenergy.org/migration-target";
/// Annotation on a VirtualMachine being live-migrated: the UID of the VirtualMachineMigration,
/// which the source agent copies into its report so that a report answers one migration.
pub const MIGRATION_UID_ANNOTATION: &str = "seapath.lfenergy.org/migration-uid";
/// Annotation on a VirtualMachine being live-migrated when the migration was cancelled: the
/// source agent aborts the libvirt job.
pub const MIGRATION_ABORT_ANNOTATION: &str = "seapath.lfenergy.org/migration-abort";
/// Annotation on a VirtualMachine moved by stop and start: the hypervisor it moves to.
pub const MOVE_TO_ANNOTATION: &str = "seapath.lfenergy.org/move-to";
/// Finalizer of migrations: a migration deleted while it runs is aborted first.
pub const MIGRATION_FINALIZER: &str = "seapath.lfenergy.org/migration";

/// A move of one VirtualMachine to another hypervisor.
// The kube attribute repeats `type_` across print columns, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "seapath.lfenergy.org",
    version = "v1alpha1",
    kind = "VirtualMachineMigration",
    namespaced,
    shortname = "svmmig",
    status = "VirtualMachineMigrationStatus",
    derive = "PartialEq",
    doc = "A move of a VirtualMachine to another hypervisor: live (libvirt migration over the shared RBD disks) where the VM allows it, by stop and start otherwise.",
    printcolumn(name = "VM", type_ = "string", json_path = ".spec.vmName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".status.mode"),
    printcolumn(name = "Source", type_ = "string", json_path = ".status.sourceNode"),
    printcolumn(name = "Target", type_ = "string", json_path = ".status.targetNode"),
    printcolumn(
        name = "Downtime",
        type_ = "integer",
        json_path = ".status.downtimeMilliseconds",
        description = "Milliseconds the guest was paused at the switch-over"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a VirtualMachineMigration's spec is immutable: create a new one"))]
pub struct VirtualMachineMigrationSpec {
    /// The VirtualMachine (same namespace) to move.
    #[schemars(length(min = 1, max = 63))]
    pub vm_name: String,
    /// The hypervisor to move it to. Unset: the one placement chooses among the others
    /// (Ready, not cordoned, with room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub target_node: Option<String>,
}

/// Where a migration is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MigrationPhase {
    /// Accepted, not yet checked.
    Pending,
    /// Checked; the target is chosen and being handed the migration.
    Scheduling,
    /// The VM is moving.
    Running,
    /// The VM runs on the target (or, stopped, is placed there).
    Succeeded,
    /// The VM did not move; `reason` and `message` say why and where it runs.
    Failed,
}

impl MigrationPhase {
    pub fn is_final(self) -> bool {
        matches!(self, MigrationPhase::Succeeded | MigrationPhase::Failed)
    }
}

/// How the VM moves.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MigrationMode {
    /// libvirt live migration: the guest keeps running, paused for the downtime only.
    Live,
    /// Shut down on the source, started on the target (a VM that may not live-migrate, a
    /// stopped VM, or the fall-back of a failed live migration).
    StopAndStart,
}

/// What the controller observed of a migration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineMigrationStatus {
    /// `Pending`, `Scheduling`, `Running`, then `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MigrationPhase>,
    /// How the VM moves (or moved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MigrationMode>,
    /// The hypervisor the VM ran on when the migration started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    /// The hypervisor the VM moves to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// When the VM started to move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the migration succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
    /// How long the guest was paused at the switch-over of a live migration (libvirt's
    /// measure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_milliseconds: Option<i64>,
    /// Bytes of memory and device state sent to the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_transferred: Option<i64>,
    /// Why the migration failed, or what it waits for (CamelCase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How a VM may be moved (vm_manager's `enable_live_migration`, `migration_downtime` and
/// `migrate_to_timeout`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPolicy {
    /// Whether the VM may be live-migrated. False: a migration or a drain moves it by stop
    /// and start.
    #[serde(default = "live_by_default")]
    pub live: bool,
    /// The longest pause of the guest at the end of a live migration, in milliseconds
    /// (libvirt's default: 300).
    #[serde(default = "default_max_downtime")]
    #[schemars(range(min = 1, max = 60000))]
    pub max_downtime_milliseconds: u32,
    /// The longest a live migration may take, in seconds; past it, it is aborted and the
    /// guest keeps running on the source.
    #[serde(default = "default_migration_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: u32,
    /// What a live migration that fails or times out does: `Stay` (the VM keeps running
    /// where it ran; the migration is Failed) or `StopAndStart` (it is shut down and started
    /// on the target).
    #[serde(default)]
    pub on_failure: MigrationFailurePolicy,
}

impl Default for MigrationPolicy {
    fn default() -> Self {
        MigrationPolicy {
            live: true,
            max_downtime_milliseconds: default_max_downtime(),
            timeout_seconds: default_migration_timeout(),
            on_failure: MigrationFailurePolicy::Stay,
        }
    }
}

fn live_by_default() -> bool {
    true
}

fn default_max_downtime() -> u32 {
    300
}

fn default_migration_timeout() -> u32 {
    120
}

/// What a failed live migration does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MigrationFailurePolicy {
    /// The VM keeps running on the source.
    #[default]
    Stay,
    /// The VM is shut down on the source and started on the target.
    StopAndStart,
}

/// The source agent's account of a live migration, in the VM's `status.domain`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationReport {
    /// UID of the VirtualMachineMigration this answers.
    pub uid: String,
    /// The hypervisor the domain was sent to.
    pub target: String,
    /// Whether libvirt completed the migration.
    pub succeeded: bool,
    /// How long the guest was paused at the switch-over (libvirt's measure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_milliseconds: Option<i64>,
    /// Bytes of memory and device state sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_transferred: Option<i64>,
    /// libvirt's error when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
