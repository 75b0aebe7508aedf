//! The custom resources of group `seapath.lfenergy.org`, version `v1alpha1`.

mod virtual_machine;

pub use virtual_machine::*;

use kube::CustomResourceExt;

/// API group of every kind of the operator.
pub const GROUP: &str = "seapath.lfenergy.org";

/// The CRDs of the operator, in the order `crdgen` writes them.
pub fn all_crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    vec![VirtualMachine::crd()]
}
