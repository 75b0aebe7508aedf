//! The cluster-wide controller: storage in Ceph, placement, status, deletion.

pub mod conditions;
pub mod context;
pub mod drain;
pub mod events;
pub mod fencing;
pub mod frame;
pub mod guard;
pub mod hypervisor;
pub mod migration;
pub mod node_health;
pub mod phase;
pub mod placement;
pub mod run;
pub mod snapshot;
pub mod storage;
pub mod vm;
