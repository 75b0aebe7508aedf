//! seapath-operator: runs SEAPATH-style virtual machines (Ceph RBD disks, libvirt/QEMU domains)
//! from Kubernetes custom resources.

pub mod agent;
pub mod api;
pub mod ceph;
pub mod cli;
pub mod controller;
pub mod crdgen;
pub mod domain_xml;
pub mod field_manager;
pub mod http;
pub mod leader;
pub mod libvirt;
pub mod metrics;
pub mod naming;
pub mod plugin;
pub mod telemetry;
pub mod watch;
