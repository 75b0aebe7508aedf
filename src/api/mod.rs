//! The custom resources of group `seapath.lfenergy.org`, version `v1alpha1`.

mod hypervisor;
mod snapshot;
mod virtual_machine;

pub use hypervisor::*;
pub use snapshot::*;
pub use virtual_machine::*;

use kube::CustomResourceExt;

/// API group of every kind of the operator.
pub const GROUP: &str = "seapath.lfenergy.org";

/// The CRDs of the operator, in the order `crdgen` writes them.
pub fn all_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    vec![
        VirtualMachine::crd(),
        Hypervisor::crd(),
        VirtualMachineSnapshot::crd(),
        VirtualMachineRestore::crd(),
        VirtualMachineSnapshotSchedule::crd(),
    ]
}

/// Label the controller puts on a VirtualMachine with the hypervisor it is placed on; each node
/// agent watches only the VMs that carry its node name.
pub const NODE_LABEL: &str = "seapath.lfenergy.org/node";

/// Finalizer that makes deletion wait for the domain to be gone and the RBD data handled.
pub const VM_FINALIZER: &str = "seapath.lfenergy.org/storage";

/// Condition types used on the operator's resources.
pub mod condition_types {
    pub const READY: &str = "Ready";
    pub const STORAGE_READY: &str = "StorageReady";
    pub const SCHEDULED: &str = "Scheduled";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
}
