//! Which hypervisor a VM runs on: pinned node only there, preferred node when possible,
//! otherwise the Ready hypervisor with the most free memory.

use std::collections::BTreeMap;

use crate::api::Placement;

/// A hypervisor as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub ready: bool,
    pub unschedulable: bool,
    pub memory_mib: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run on this node.
    Node(String),
    /// No node can take it now; the reason is written in the Scheduled condition.
    Unschedulable { reason: &'static str, message: String },
}

/// Chooses a node. `allocated_mib` is the memory of the VMs already placed on each node
/// (excluding this one). A VM already placed stays where it is while that node is still allowed,
/// even when the node is not Ready: without fencing, a domain may still run there, and starting
/// a second copy elsewhere would have two hosts write one disk.
pub fn place(
    current: Option<&str>,
    placement: Option<&Placement>,
    vm_memory_mib: i64,
    candidates: &[Candidate],
    allocated_mib: &BTreeMap<String, i64>,
) -> Decision {
    let pinned = placement.and_then(|p| p.pinned_node.as_deref());
    let preferred = placement.and_then(|p| p.preferred_node.as_deref());
    let free = |c: &Candidate| c.memory_mib - allocated_mib.get(&c.name).copied().unwrap_or(0);
    let usable = |c: &&Candidate| c.ready && !c.unschedulable && free(c) >= vm_memory_mib;

    if let Some(current) = current {
        let still_allowed = pinned.is_none_or(|p| p == current);
        if still_allowed {
            return Decision::Node(current.to_owned());
        }
    }
    if let Some(pinned) = pinned {
        return match candidates.iter().find(|c| c.name == pinned) {
            Some(c) if usable(&c) => Decision::Node(c.name.clone()),
            Some(c) if !c.ready => Decision::Unschedulable {
                reason: "PinnedNodeNotReady",
                message: format!("the VM is pinned to hypervisor {pinned}, which is not Ready"),
            },
            Some(c) => Decision::Unschedulable {
                reason: "PinnedNodeFull",
                message: format!(
                    "the VM is pinned to hypervisor {pinned}, which has {} MiB free of the {vm_memory_mib} MiB it needs{}",
                    free(c),
                    if c.unschedulable {
                        " and is marked unschedulable"
                    } else {
                        ""
                    }
                ),
            },
            None => Decision::Unschedulable {
                reason: "PinnedNodeUnknown",
                message: format!("the VM is pinned to hypervisor {pinned}, which has no Hypervisor object"),
            },
        };
    }
    if let Some(c) = preferred.and_then(|p| candidates.iter().filter(usable).find(|c| c.name == p)) {
        return Decision::Node(c.name.clone());
    }
    candidates
        .iter()
        .filter(usable)
        // Most free memory first; the name breaks ties so the choice is deterministic.
        .max_by(|a, b| free(a).cmp(&free(b)).then_with(|| b.name.cmp(&a.name)))
        .map(|c| Decision::Node(c.name.clone()))
        .unwrap_or_else(|| Decision::Unschedulable {
            reason: "NoHypervisorAvailable",
            message: format!(
                "no Ready, schedulable hypervisor has {vm_memory_mib} MiB of memory free ({} known)",
                candidates.len()
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(name: &str, ready: bool, memory_mib: i64) -> Candidate {
        Candidate {
            name: name.into(),
            ready,
            unschedulable: false,
            memory_mib,
        }
    }

    fn pinned(node: &str) -> Placement {
        Placement {
            pinned_node: Some(node.into()),
            ..Default::default()
        }
    }

    fn preferred(node: &str) -> Placement {
        Placement {
            preferred_node: Some(node.into()),
            ..Default::default()
        }
    }

    #[test]
    fn least_loaded_ready_node_wins() {
        let nodes = [
            hv("hv1", true, 8192),
            hv("hv2", true, 8192),
            hv("hv3", false, 65536),
        ];
        let allocated = BTreeMap::from([("hv1".to_string(), 4096)]);
        assert_eq!(
            place(None, None, 512, &nodes, &allocated),
            Decision::Node("hv2".into())
        );
        assert_eq!(
            place(None, None, 512, &nodes, &BTreeMap::new()),
            Decision::Node("hv1".into())
        );
    }

    #[test]
    fn pinned_means_only_there() {
        let nodes = [hv("hv1", true, 8192), hv("hv2", false, 8192)];
        assert_eq!(
            place(None, Some(&pinned("hv1")), 512, &nodes, &BTreeMap::new()),
            Decision::Node("hv1".into())
        );
        assert!(matches!(
            place(None, Some(&pinned("hv2")), 512, &nodes, &BTreeMap::new()),
            Decision::Unschedulable {
                reason: "PinnedNodeNotReady",
                ..
            }
        ));
        assert!(matches!(
            place(None, Some(&pinned("hv9")), 512, &nodes, &BTreeMap::new()),
            Decision::Unschedulable {
                reason: "PinnedNodeUnknown",
                ..
            }
        ));
        assert!(matches!(
            place(None, Some(&pinned("hv1")), 10000, &nodes, &BTreeMap::new()),
            Decision::Unschedulable {
                reason: "PinnedNodeFull",
                ..
            }
        ));
    }

    #[test]
    fn preferred_when_possible() {
        let nodes = [
            hv("hv1", true, 8192),
            hv("hv2", true, 1024),
            hv("hv3", false, 8192),
        ];
        assert_eq!(
            place(None, Some(&preferred("hv2")), 512, &nodes, &BTreeMap::new()),
            Decision::Node("hv2".into())
        );
        assert_eq!(
            place(None, Some(&preferred("hv3")), 512, &nodes, &BTreeMap::new()),
            Decision::Node("hv1".into())
        );
    }

    #[test]
    fn a_placed_vm_stays_while_its_node_is_ready() {
        let nodes = [hv("hv1", true, 1024), hv("hv2", true, 65536)];
        assert_eq!(
            place(Some("hv1"), None, 512, &nodes, &BTreeMap::new()),
            Decision::Node("hv1".into())
        );
        // Re-pinning elsewhere moves it.
        assert_eq!(
            place(Some("hv1"), Some(&pinned("hv2")), 512, &nodes, &BTreeMap::new()),
            Decision::Node("hv2".into())
        );
        // A node that stops answering keeps its VMs: it may still run them.
        let down = [hv("hv1", false, 1024), hv("hv2", true, 65536)];
        assert_eq!(
            place(Some("hv1"), None, 512, &down, &BTreeMap::new()),
            Decision::Node("hv1".into())
        );
    }

    #[test]
    fn nothing_fits() {
        let nodes = [hv("hv1", true, 256)];
        assert!(matches!(
            place(None, None, 512, &nodes, &BTreeMap::new()),
            Decision::Unschedulable {
                reason: "NoHypervisorAvailable",
                ..
            }
        ));
    }
}
