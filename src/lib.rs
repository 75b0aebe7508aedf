//! seapath-operator: runs SEAPATH-style virtual machines (Ceph RBD disks, libvirt/QEMU domains)
//! from Kubernetes custom resources.

pub mod api;
pub mod ceph;
pub mod crdgen;
pub mod domain_xml;
pub mod libvirt;
pub mod naming;
