//! Every field manager the project applies under (server-side apply), in one place. Each owns
//! disjoint fields, so one writer's apply never removes another's; docs/architecture.md says
//! which fields each one owns.

/// The VM controller: the node label, finalizers and the VM's status but `domain`,
/// `restarts` and `import`.
pub const CONTROLLER: &str = "seapath-controller";
/// The VM controller's import progress (`status.import`), apart so that progress and the
/// controller's own status patches never remove each other's fields.
pub const IMPORT: &str = "seapath-controller-import";
/// The host judge: a Hypervisor's fence and `NodeLost` mark.
pub const HEALTH: &str = "seapath-controller-health";
/// The drain: `Hypervisor.status.drain`.
pub const DRAIN: &str = "seapath-controller-drain";
/// A migration's marks on its VM (the migration-target label and annotations) and the
/// migration's status.
pub const MIGRATION: &str = "seapath-controller-migration";
/// The snapshot controllers' status of snapshots and schedules.
pub const SNAPSHOT: &str = "seapath-snapshot-controller";
/// The snapshot inventory: `status.unmanagedSnapshots` of a VM.
pub const SNAPSHOT_INVENTORY: &str = "seapath-snapshot-inventory";
/// A restore's writes to the VM it restores.
pub const RESTORE: &str = "seapath-restore";
/// The node agents: `status.domain` and `status.restarts` of a VM, a Hypervisor's status.
pub const AGENT: &str = "seapath-agent";
/// The kubectl plugin's requests (drain, migrate, snapshot).
pub const PLUGIN: &str = "kubectl-seapath";
