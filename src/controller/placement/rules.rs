//! Affinity and anti-affinity between the VMs of one namespace: which rules a hypervisor would
//! break for a VM, given where the other VMs are. Pure: placement, failover, migration and the
//! VM's status all ask the same question here.
//!
//! Rules select VMs of their own namespace only, so a tenant's rules never depend on, nor
//! reveal, where another namespace's VMs run. Anti-affinity holds both ways (a VM keeps away
//! from the VMs whose rules select it); affinity is one way (the VM follows its peers).

use std::collections::{BTreeMap, BTreeSet};

use kube::core::{Selector, SelectorExt};

use crate::api::{Placement, PlacementRule, RuleMode, VirtualMachine};

/// A VM as the rules see it.
#[derive(Clone, Debug)]
pub struct Member<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub placement: Option<&'a Placement>,
    /// Every hypervisor the VM runs on or may run on now (its recorded node, its label, the
    /// target of a migration under way): counting them all never lets a move break a rule.
    pub nodes: BTreeSet<String>,
}

impl<'a> Member<'a> {
    /// A VM that is not placed anywhere yet.
    pub fn unplaced(
        namespace: &'a str,
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
        placement: Option<&'a Placement>,
    ) -> Self {
        Member {
            namespace,
            name,
            labels,
            placement,
            nodes: BTreeSet::new(),
        }
    }

    fn affinity(&self) -> &'a [PlacementRule] {
        self.placement.map(|p| p.affinity.as_slice()).unwrap_or_default()
    }

    fn anti_affinity(&self) -> &'a [PlacementRule] {
        self.placement
            .map(|p| p.anti_affinity.as_slice())
            .unwrap_or_default()
    }

    /// `vm` under `placement` (its own, or one adjusted by the caller), wherever it is.
    pub fn of(vm: &'a VirtualMachine, placement: Option<&'a Placement>) -> Self {
        Member::unplaced(
            vm.metadata.namespace.as_deref().unwrap_or_default(),
            vm.metadata.name.as_deref().unwrap_or_default(),
            kube::ResourceExt::labels(vm),
            placement,
        )
    }

    /// Whether the VM has rules of its own.
    pub fn has_rules(&self) -> bool {
        !self.affinity().is_empty() || !self.anti_affinity().is_empty()
    }

    /// The same VM: namespace and name.
    pub fn is(&self, other: &Member) -> bool {
        self.namespace == other.namespace && self.name == other.name
    }
}

/// A rule a hypervisor would break for the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    pub required: bool,
    pub message: String,
}

/// Why a VM's rules cannot be read: a selector the API server accepted but that selects
/// nothing sensible (an unknown operator, or `In` without values).
pub fn invalid(vm: &Member) -> Option<String> {
    let rules = vm.affinity().iter().chain(vm.anti_affinity());
    rules.filter_map(|r| r.selector.clone()).find_map(|s| {
        Selector::try_from(s)
            .err()
            .map(|e| format!("a placement rule's selector is invalid: {e}"))
    })
}

/// The rules `node` would break if `vm` ran there while `others` are where they are.
pub fn broken_at(vm: &Member, node: &str, others: &[Member]) -> Vec<Broken> {
    let others: Vec<&Member> = others
        .iter()
        .filter(|o| o.namespace == vm.namespace && !o.is(vm))
        .collect();
    let on_node = |o: &&&Member| o.nodes.contains(node);
    let mut broken = Vec::new();
    for rule in vm.anti_affinity() {
        let there = names(
            others
                .iter()
                .filter(on_node)
                .filter(|o| selects(rule, vm, o))
                .copied(),
        );
        if !there.is_empty() {
            broken.push(Broken {
                required: rule.mode == RuleMode::Required,
                message: format!("its antiAffinity keeps it off hypervisor {node}, where {there} runs"),
            });
        }
    }
    for other in others.iter().filter(on_node) {
        if let Some(rule) = other.anti_affinity().iter().find(|r| selects(r, other, vm)) {
            broken.push(Broken {
                required: rule.mode == RuleMode::Required,
                message: format!(
                    "the antiAffinity of {} keeps it off hypervisor {node}, where {} runs",
                    other.name, other.name
                ),
            });
        }
    }
    for rule in vm.affinity() {
        let peers: Vec<&Member> = others
            .iter()
            .filter(|o| !o.nodes.is_empty() && selects(rule, vm, o))
            .copied()
            .collect();
        if !peers.is_empty() && !peers.iter().any(|p| p.nodes.contains(node)) {
            let whereabouts: BTreeSet<&str> = peers
                .iter()
                .flat_map(|p| p.nodes.iter().map(String::as_str))
                .collect();
            broken.push(Broken {
                required: rule.mode == RuleMode::Required,
                message: format!(
                    "its affinity keeps it with {}, which runs on {}, not on {node}",
                    names(peers.into_iter()),
                    whereabouts.into_iter().collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }
    broken
}

/// Whether a rule of `other` keeps it away from `vm` (anti-affinity holds both ways, so `vm`'s
/// placement and status depend on it).
pub fn keeps_away(other: &Member, vm: &Member) -> bool {
    other.anti_affinity().iter().any(|r| selects(r, other, vm))
}

/// Whether a rule of either VM selects the other: where one goes changes what the other's
/// rules find.
pub fn related(a: &Member, b: &Member) -> bool {
    let selects_any = |x: &Member, y: &Member| {
        x.affinity()
            .iter()
            .chain(x.anti_affinity())
            .any(|r| selects(r, x, y))
    };
    selects_any(a, b) || selects_any(b, a)
}

/// Whether `rule`, written on `owner`, selects `vm`: only VMs of the owner's namespace, never
/// the owner itself.
fn selects(rule: &PlacementRule, owner: &Member, vm: &Member) -> bool {
    if vm.namespace != owner.namespace || vm.is(owner) {
        return false;
    }
    if !rule.vms.is_empty() {
        return rule.vms.iter().any(|name| name == vm.name);
    }
    rule.selector
        .clone()
        .and_then(|s| Selector::try_from(s).ok())
        .is_some_and(|s| s.matches(vm.labels))
}

fn names<'m, 'a: 'm>(members: impl Iterator<Item = &'m Member<'a>>) -> String {
    members.map(|m| m.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
