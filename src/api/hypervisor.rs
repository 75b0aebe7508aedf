//! The `Hypervisor` custom resource: one per hypervisor host, written by its node agent.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A hypervisor host as its node agent sees it: versions, capacity, the VMs it runs, and a
/// heartbeat. The controller places VMs only on hypervisors whose `Ready` condition is True.
// The kube attribute repeats `type_` across print columns, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "seapath.lfenergy.org",
    version = "v1alpha1",
    kind = "Hypervisor",
    shortname = "hv",
    status = "HypervisorStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A hypervisor host, registered and kept up to date by the node agent that runs on it.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "VMs", type_ = "integer", json_path = ".status.runningVms"),
    printcolumn(name = "CPUs", type_ = "integer", json_path = ".status.cpus"),
    printcolumn(
        name = "Memory",
        type_ = "string",
        json_path = ".status.memoryMiB",
        priority = 1
    ),
    printcolumn(name = "Heartbeat", type_ = "date", json_path = ".status.heartbeatTime"),
    printcolumn(
        name = "Drain",
        type_ = "string",
        json_path = ".status.drain.phase",
        description = "Draining while VMs are left on a host being drained, then Drained"
    ),
    printcolumn(
        name = "Fence",
        type_ = "string",
        json_path = ".status.fence.state",
        description = "Fencing of a lost host: Fencing, then Fenced until it rejoins clean"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct HypervisorSpec {
    /// When true, the controller places no new VM on this hypervisor (running ones stay).
    #[serde(default)]
    pub unschedulable: bool,
    /// When true, every VM leaves this hypervisor: live-migrated where its
    /// `spec.migration` allows it, otherwise stopped and started elsewhere, a few at a time
    /// (the controller's `--drain-parallel`), highest `spec.placement.priority` first. A
    /// draining host takes no new VM. `status.drain` shows the progress; set it back to
    /// false (and `unschedulable` too) to bring the host back (`kubectl seapath uncordon`).
    #[serde(default)]
    pub drain: bool,
    /// Set by an administrator who knows the host is down or fenced by other means (powered
    /// off, cut from the network), like Kubernetes' `node.kubernetes.io/out-of-service` taint:
    /// the host is fenced through Ceph at once, without waiting for the grace period, and its
    /// VMs start elsewhere. Clear it once the host is back.
    #[serde(default)]
    pub out_of_service: bool,
}

/// Fencing of a host that stopped answering (written by the controller).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FenceStatus {
    /// `Fencing` (decided and recorded, being carried out) or `Fenced` (the host can no longer
    /// write the disks of its VMs; they may start elsewhere).
    pub state: FenceState,
    /// `NodeLost` (heartbeat overdue) or `OutOfService` (marked by an administrator).
    pub reason: String,
    /// What was done, for people.
    #[serde(default)]
    pub message: String,
    /// When fencing was decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// When the host was fenced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_at: Option<Time>,
    /// Ceph client addresses put on the OSD blocklist (the lock owners and watchers of the
    /// images of the host's VMs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocklisted: Vec<String>,
    /// When the blocklist entries expire unless the host rejoins first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Time>,
    /// `namespace/name` of the VMs placed on the host when fencing was decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<String>,
}

/// Steps of fencing.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FenceState {
    /// Decided and recorded; blocklisting under way (a restarted controller resumes it).
    #[default]
    Fencing,
    /// Done: the host's Ceph clients are blocklisted and its VMs may run elsewhere.
    Fenced,
}

/// What the node agent observed on its host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HypervisorStatus {
    /// libvirt URI the agent manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_uri: Option<String>,
    /// libvirt URI the agents of other hypervisors migrate VMs to (`--migration-uri`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_uri: Option<String>,
    /// libvirt library version, e.g. `9.0.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_version: Option<String>,
    /// Hypervisor driver and version, e.g. `QEMU 7.2.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hypervisor: Option<String>,
    /// Logical CPUs of the host.
    #[serde(default)]
    pub cpus: i32,
    /// Memory of the host in MiB.
    #[serde(default, rename = "memoryMiB")]
    pub memory_mib: i64,
    /// Memory in MiB of the VMs placed on this host.
    #[serde(default, rename = "allocatedMemoryMiB")]
    pub allocated_memory_mib: i64,
    /// Number of running domains managed by the operator.
    #[serde(default)]
    pub running_vms: i32,
    /// `namespace/name` of every VM the agent manages on this host: those whose domain it
    /// holds, and those its cache assigns here (it may still define them). The controller
    /// hands a VM to another host once a listing newer than the agent's last report on it
    /// leaves it out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<String>,
    /// When `vms` was read: libvirt's domains and the agent's assignments, at one moment. It
    /// stays as it was while libvirt does not answer (or answers slower than a heartbeat), when
    /// the heartbeat still renews `heartbeatTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vms_observed_time: Option<Time>,
    /// Names of the libvirt domains running here that the agent did not define: vm_manager's
    /// and Pacemaker's guests, or a VM started from the XML the operator stores in RBD. The
    /// controller places a VM whose domain runs here rather than start a second copy, and the
    /// agent takes the running domain over (docs/operations.md, "Pacemaker side by side").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub started_outside: Vec<String>,
    /// Last time the agent reported; a stale heartbeat makes the hypervisor not Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<Time>,
    /// Ready (the agent reaches libvirt and the API server). The controller sets it to
    /// `Unknown` (reason `NodeLost`) when the heartbeat is overdue.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Fencing of the host after it was lost (written by the controller; absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<FenceStatus>,
    /// Progress of a drain (written by the controller while `spec.drain` is true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainStatus>,
}

/// Where the drain of a hypervisor is.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainStatus {
    /// `Draining` while VMs are left on the host, `Drained` once none is.
    pub phase: DrainPhase,
    /// VMs still placed on the host.
    pub vms_left: i32,
    /// VMs moving off now (`namespace/name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moving: Vec<String>,
    /// VMs that cannot leave, each with the reason (`namespace/name: why`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocked: Vec<String>,
}

/// Phase of a drain.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DrainPhase {
    /// VMs are left on the host (moving or blocked).
    #[default]
    Draining,
    /// No VM is left on the host.
    Drained,
}

/// Label on a VirtualMachineMigration a drain created: the drained hypervisor.
pub const DRAIN_LABEL: &str = "seapath.lfenergy.org/drain";
