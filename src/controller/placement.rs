//! Which hypervisor a VM runs on: pinned node only there, preferred node when possible,
//! otherwise the Ready hypervisor with the most free memory. A VM stays where it is placed
//! unless that host was fenced after it was lost: then it fails over, highest priority first.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::api::{
    DomainState, FailoverPolicy, MIGRATION_TARGET_LABEL, MOVE_TO_ANNOTATION, Placement, VirtualMachine,
};

mod rules;

pub use rules::{Broken, Member, broken_at, keeps_away, related};

/// A hypervisor as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub ready: bool,
    pub unschedulable: bool,
    pub memory_mib: i64,
    /// Lost and fenced through Ceph: nothing of it can write the VMs' disks any more.
    pub fenced: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Run on this node.
    Node(String),
    /// No node can take it now; the reason is written in the Scheduled condition.
    Unschedulable { reason: &'static str, message: String },
}

/// Whether a VM placed on `current` leaves it because the host was fenced: unless it is pinned
/// there or opted out of failover.
pub fn fails_over(current: &str, placement: Option<&Placement>, candidates: &[Candidate]) -> bool {
    let fenced = candidates.iter().any(|c| c.name == current && c.fenced);
    let pinned_here = placement.and_then(|p| p.pinned_node.as_deref()) == Some(current);
    let opted_out = placement.is_some_and(|p| p.failover == FailoverPolicy::Never);
    fenced && !pinned_here && !opted_out
}

/// A VM looking for a host: one leaving a fenced host, or one not placed yet.
#[derive(Clone, Debug)]
pub struct Seeker<'a> {
    /// `namespace/name`, the tie-breaker after priority.
    pub key: String,
    pub member: Member<'a>,
    pub memory_mib: i64,
}

/// Places the VMs of fenced hosts one after the other, highest priority first (then by name),
/// each taking the capacity the ones before it left and counting where they went for the
/// placement rules. Every VM's reconcile computes the same order from the same facts, so when
/// capacity is short the most important VMs get it. `others` are the VMs that stay, where they
/// are.
pub fn place_evacuees<'a>(
    evacuees: &[Seeker<'a>],
    candidates: &[Candidate],
    allocated_mib: &BTreeMap<String, i64>,
    others: &[Member<'a>],
) -> BTreeMap<String, Decision> {
    let mut order: Vec<&Seeker> = evacuees.iter().collect();
    order.sort_by(|a, b| priority(b).cmp(&priority(a)).then_with(|| a.key.cmp(&b.key)));
    let mut allocated = allocated_mib.clone();
    // Where everyone is: the evacuees nowhere until they are placed.
    let mut members: Vec<Member<'a>> = others
        .iter()
        .filter(|o| !evacuees.iter().any(|e| e.member.is(o)))
        .cloned()
        .collect();
    members.extend(evacuees.iter().map(|e| Member {
        nodes: Default::default(),
        ..e.member.clone()
    }));
    let mut decisions = BTreeMap::new();
    for evacuee in order {
        let decision = place(
            None,
            &evacuee.member,
            evacuee.memory_mib,
            candidates,
            &allocated,
            &members,
        );
        if let Decision::Node(node) = &decision {
            *allocated.entry(node.clone()).or_default() += evacuee.memory_mib;
            for member in members.iter_mut().filter(|m| m.is(&evacuee.member)) {
                member.nodes = [node.clone()].into();
            }
        }
        decisions.insert(evacuee.key.clone(), decision);
    }
    decisions
}

/// Reason of `Scheduled=False` for a VM that would fit, but whose room goes to VMs of higher
/// priority waiting to be placed.
pub const REASON_HIGHER_PRIORITY_WAITING: &str = "HigherPriorityWaiting";

/// Places a VM that is not placed yet in its turn: the VMs of higher priority still waiting
/// for a host (`ahead`) take the room first, in the order of [`place_evacuees`], so room that
/// frees up goes to the most important VM whatever order their reconciles run in. A VM ahead
/// that fits nowhere takes nothing.
pub fn place_in_turn<'a>(
    me: &Seeker<'a>,
    ahead: &[Seeker<'a>],
    candidates: &[Candidate],
    allocated_mib: &BTreeMap<String, i64>,
    others: &[Member<'a>],
) -> Decision {
    let alone = place(None, &me.member, me.memory_mib, candidates, allocated_mib, others);
    if ahead.is_empty() || matches!(alone, Decision::Unschedulable { .. }) {
        return alone;
    }
    let queue: Vec<Seeker> = ahead.iter().cloned().chain([me.clone()]).collect();
    let mut decisions = place_evacuees(&queue, candidates, allocated_mib, others);
    match decisions.remove(&me.key).expect("the VM is in the queue") {
        Decision::Node(node) => Decision::Node(node),
        Decision::Unschedulable { .. } => {
            let first: Vec<String> = ahead
                .iter()
                .filter(|e| matches!(decisions.get(&e.key), Some(Decision::Node(_))))
                .map(|e| format!("{} (priority {})", e.key, priority(e)))
                .collect();
            Decision::Unschedulable {
                reason: REASON_HIGHER_PRIORITY_WAITING,
                message: format!(
                    "a hypervisor has room for this VM, but the VMs of higher priority waiting to be \
                     placed take it first: {}",
                    first.join(", ")
                ),
            }
        }
    }
}

fn priority(e: &Seeker) -> i32 {
    e.member.placement.map(|p| p.priority).unwrap_or(0)
}

/// Reason of `Scheduled=False` when hypervisors have room but the VM's required placement
/// rules keep it off every one of them.
pub const REASON_RULES_UNSATISFIABLE: &str = "PlacementRulesUnsatisfiable";

/// Chooses a node. `allocated_mib` is the memory of the VMs already placed on each node
/// (excluding this one), `others` where the other VMs are, for the placement rules. A VM already
/// placed stays where it is while that node is still allowed, even when the node is not Ready:
/// unless the node was fenced, a domain may still run there, and starting a second copy
/// elsewhere would have two hosts write one disk. Among the nodes with room that break no
/// required rule, the one breaking the fewest preferred rules wins, then the preferred node,
/// then the most free memory.
pub fn place(
    current: Option<&str>,
    vm: &Member,
    vm_memory_mib: i64,
    candidates: &[Candidate],
    allocated_mib: &BTreeMap<String, i64>,
    others: &[Member],
) -> Decision {
    let placement = vm.placement;
    let pinned = placement.and_then(|p| p.pinned_node.as_deref());
    let preferred = placement.and_then(|p| p.preferred_node.as_deref());
    let free = |c: &Candidate| c.memory_mib - allocated_mib.get(&c.name).copied().unwrap_or(0);
    let usable = |c: &&Candidate| c.ready && !c.fenced && !c.unschedulable && free(c) >= vm_memory_mib;

    if let Some(current) = current {
        let still_allowed = pinned.is_none_or(|p| p == current);
        if still_allowed && !fails_over(current, placement, candidates) {
            return Decision::Node(current.to_owned());
        }
    }
    if let Some(message) = rules::invalid(vm) {
        return Decision::Unschedulable {
            reason: "InvalidPlacementRule",
            message,
        };
    }
    let required_break = |node: &str| {
        rules::broken_at(vm, node, others)
            .into_iter()
            .find(|b| b.required)
            .map(|b| b.message)
    };
    if let Some(pinned) = pinned {
        let node = candidates.iter().find(|c| c.name == pinned);
        return place_pinned(pinned, node, vm_memory_mib, free, usable, required_break);
    }
    let with_room: Vec<&Candidate> = candidates.iter().filter(usable).collect();
    if with_room.is_empty() {
        return Decision::Unschedulable {
            reason: "NoHypervisorAvailable",
            message: format!(
                "no Ready, schedulable hypervisor has {vm_memory_mib} MiB of memory free ({} known)",
                candidates.len()
            ),
        };
    }
    // Each node with room that breaks no required rule, with the number of preferred ones it breaks.
    let allowed: Vec<(&Candidate, usize)> = with_room
        .iter()
        .filter_map(|c| {
            let broken = rules::broken_at(vm, &c.name, others);
            (!broken.iter().any(|b| b.required)).then_some((*c, broken.len()))
        })
        .collect();
    let Some(fewest) = allowed.iter().map(|(_, n)| *n).min() else {
        let why: Vec<String> = with_room.iter().filter_map(|c| required_break(&c.name)).collect();
        return Decision::Unschedulable {
            reason: REASON_RULES_UNSATISFIABLE,
            message: format!(
                "every hypervisor with room breaks a required placement rule: {}",
                why.join("; ")
            ),
        };
    };
    let best = || allowed.iter().filter(|(_, n)| *n == fewest).map(|(c, _)| *c);
    if let Some(c) = preferred.and_then(|p| best().find(|c| c.name == p)) {
        return Decision::Node(c.name.clone());
    }
    best()
        // Most free memory first; the name breaks ties so the choice is deterministic.
        .max_by(|a, b| free(a).cmp(&free(b)).then_with(|| b.name.cmp(&a.name)))
        .map(|c| Decision::Node(c.name.clone()))
        .expect("at least one node is allowed")
}

/// Where a pinned VM goes: its node when that one can take it, otherwise the reason it cannot,
/// in the order a user must act on (not Ready, cordoned, full).
fn place_pinned(
    pinned: &str,
    node: Option<&Candidate>,
    vm_memory_mib: i64,
    free: impl Fn(&Candidate) -> i64,
    usable: impl Fn(&&Candidate) -> bool,
    required_break: impl Fn(&str) -> Option<String>,
) -> Decision {
    match node {
        Some(c) if usable(&c) => match required_break(pinned) {
            None => Decision::Node(c.name.clone()),
            Some(broken) => Decision::Unschedulable {
                reason: REASON_RULES_UNSATISFIABLE,
                message: format!("the VM is pinned to hypervisor {pinned}, but {broken}"),
            },
        },
        Some(c) if !c.ready => Decision::Unschedulable {
            reason: "PinnedNodeNotReady",
            message: format!("the VM is pinned to hypervisor {pinned}, which is not Ready"),
        },
        // Cordoned before full: uncordoning is what the user must do, whatever the memory.
        Some(c) if c.unschedulable => Decision::Unschedulable {
            reason: "PinnedNodeUnschedulable",
            message: format!(
                "the VM is pinned to hypervisor {pinned}, which is cordoned (spec.unschedulable is true) \
                 and takes no new VM: uncordon it (kubectl patch hypervisor {pinned} --type merge \
                 -p '{{\"spec\":{{\"unschedulable\":false}}}}') or pin the VM to another hypervisor"
            ),
        },
        Some(c) => Decision::Unschedulable {
            reason: "PinnedNodeFull",
            message: format!(
                "the VM is pinned to hypervisor {pinned}, which has {} MiB free of the {vm_memory_mib} MiB it needs",
                free(c)
            ),
        },
        None => Decision::Unschedulable {
            reason: "PinnedNodeUnknown",
            message: format!("the VM is pinned to hypervisor {pinned}, which has no Hypervisor object"),
        },
    }
}

/// Where a VirtualMachineMigration moves the VM, when it is time: a live migration hands the
/// VM to its target once the target's agent reports the domain running there (the node label
/// then follows the guest); a move by stop and start places it on its target while that host
/// can take it (the usual hand-over then stops it on the old host before the new one starts it).
pub fn moved_by_migration(vm: &VirtualMachine, candidates: &[Candidate]) -> Option<String> {
    if let Some(target) = vm.labels().get(MIGRATION_TARGET_LABEL) {
        let report = vm.status.as_ref().and_then(|s| s.domain.as_ref());
        return report
            .filter(|r| &r.node == target && r.state == DomainState::Running)
            .map(|r| r.node.clone());
    }
    let target = vm.annotations().get(MOVE_TO_ANNOTATION)?;
    candidates
        .iter()
        .find(|c| &c.name == target && c.ready && !c.fenced)
        .map(|c| c.name.clone())
}

/// Reason of `Scheduled=False` for a VM pinned away from the host where a copy started
/// outside the operator runs.
pub const REASON_STARTED_OUTSIDE: &str = "StartedOutsideOperator";

/// A VM whose domain runs on `host`, started outside the operator (by vm_manager or
/// Pacemaker, from the XML the operator stores in RBD), while the operator runs no copy of it:
/// it is placed where it runs, whatever the capacity says (it runs already), so that nobody
/// starts a second copy. A VM pinned elsewhere is placed nowhere while that copy runs.
pub fn where_started_outside(host: &str, placement: Option<&Placement>) -> Decision {
    match placement.and_then(|p| p.pinned_node.as_deref()) {
        Some(pinned) if pinned != host => Decision::Unschedulable {
            reason: REASON_STARTED_OUTSIDE,
            message: format!(
                "the VM runs on hypervisor {host}, started outside the operator (by vm_manager or Pacemaker, \
                 from the XML stored in RBD); it is pinned to {pinned} and is not started there while that \
                 copy runs: stop it on {host} (remove it from Pacemaker first), or pin the VM to {host}"
            ),
        },
        _ => Decision::Node(host.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PlacementRule, RuleMode};

    const NO_LABELS: &BTreeMap<String, String> = &BTreeMap::new();

    /// Places a VM that has no placement rule among VMs that have none.
    fn place_alone(
        current: Option<&str>,
        placement: Option<&Placement>,
        vm_memory_mib: i64,
        candidates: &[Candidate],
        allocated_mib: &BTreeMap<String, i64>,
    ) -> Decision {
        let vm = Member::unplaced("ns", "vm", NO_LABELS, placement);
        place(current, &vm, vm_memory_mib, candidates, allocated_mib, &[])
    }

    fn seeker<'a>(name: &'a str, placement: Option<&'a Placement>, memory_mib: i64) -> Seeker<'a> {
        Seeker {
            key: format!("ns/{name}"),
            member: Member::unplaced("ns", name, NO_LABELS, placement),
            memory_mib,
        }
    }

    fn hv(name: &str, ready: bool, memory_mib: i64) -> Candidate {
        Candidate {
            name: name.into(),
            ready,
            unschedulable: false,
            memory_mib,
            fenced: false,
        }
    }

    fn fenced(name: &str) -> Candidate {
        Candidate {
            fenced: true,
            ..hv(name, false, 8192)
        }
    }

    fn with(priority: i32, failover: FailoverPolicy, pinned: Option<&str>) -> Placement {
        Placement {
            priority,
            failover,
            pinned_node: pinned.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn a_fenced_host_releases_its_vms_unless_pinned_or_opted_out() {
        let nodes = [fenced("hv1"), hv("hv2", true, 8192)];
        let none = BTreeMap::new();
        assert_eq!(
            place_alone(Some("hv1"), None, 512, &nodes, &none),
            Decision::Node("hv2".into())
        );
        let stays = |p: Placement| place_alone(Some("hv1"), Some(&p), 512, &nodes, &none);
        assert_eq!(
            stays(with(0, FailoverPolicy::Never, None)),
            Decision::Node("hv1".into())
        );
        assert_eq!(
            stays(with(0, FailoverPolicy::Restart, Some("hv1"))),
            Decision::Node("hv1".into())
        );
        // Re-pinned away from the lost host: goes to the new pin.
        assert_eq!(
            stays(with(0, FailoverPolicy::Restart, Some("hv2"))),
            Decision::Node("hv2".into())
        );
        // A lost host that is not fenced yet keeps its VMs: a copy may still run there.
        let unfenced = [hv("hv1", false, 8192), hv("hv2", true, 8192)];
        assert_eq!(
            place_alone(Some("hv1"), None, 512, &unfenced, &none),
            Decision::Node("hv1".into())
        );
    }

    #[test]
    fn evacuees_take_the_capacity_by_priority() {
        let nodes = [fenced("hv1"), hv("hv2", true, 2048), hv("hv3", true, 1024)];
        let low = with(1, FailoverPolicy::Restart, None);
        let high = with(100, FailoverPolicy::Restart, None);
        let evacuees = [
            seeker("a-low", Some(&low), 1024),
            seeker("b-high", Some(&high), 2048),
            seeker("c-none", None, 1024),
            seeker("d-high", Some(&high), 1024),
        ];
        let decisions = place_evacuees(&evacuees, &nodes, &BTreeMap::new(), &[]);
        assert_eq!(decisions["ns/b-high"], Decision::Node("hv2".into()));
        assert_eq!(decisions["ns/d-high"], Decision::Node("hv3".into()));
        assert!(matches!(
            decisions["ns/a-low"],
            Decision::Unschedulable {
                reason: "NoHypervisorAvailable",
                ..
            }
        ));
        assert!(matches!(decisions["ns/c-none"], Decision::Unschedulable { .. }));
    }

    #[test]
    fn an_unplaced_vm_waits_for_higher_priorities_that_fit() {
        let nodes = [hv("hv1", true, 2048)];
        let none = BTreeMap::new();
        let (low, high) = (
            with(1, FailoverPolicy::Restart, None),
            with(9, FailoverPolicy::Restart, None),
        );
        let big = with(9, FailoverPolicy::Restart, Some("hv1"));
        let cases: [(&str, Vec<Seeker>, Result<&str, &str>); 4] = [
            ("nobody ahead", vec![], Ok("hv1")),
            ("room for both", vec![seeker("a", Some(&high), 1024)], Ok("hv1")),
            (
                "room for one",
                vec![seeker("a", Some(&high), 2048)],
                Err(REASON_HIGHER_PRIORITY_WAITING),
            ),
            // Ahead but fitting nowhere (4 GiB on a 2 GiB host): it takes nothing.
            (
                "ahead fits nowhere",
                vec![seeker("a", Some(&big), 4096)],
                Ok("hv1"),
            ),
        ];
        for (case, ahead, expected) in cases {
            let me = seeker("z", Some(&low), 1024);
            match (place_in_turn(&me, &ahead, &nodes, &none, &[]), expected) {
                (Decision::Node(node), Ok(want)) => assert_eq!(node, want, "{case}"),
                (Decision::Unschedulable { reason, message }, Err(want)) => {
                    assert_eq!(reason, want, "{case}");
                    assert!(message.contains("ns/a (priority 9)"), "{case}: {message}");
                }
                (got, _) => panic!("{case}: {got:?}"),
            }
        }
        // Too big for any host: the plain reason, not the queue.
        let huge = seeker("z", Some(&low), 4096);
        assert!(matches!(
            place_in_turn(&huge, &[seeker("a", Some(&high), 1024)], &nodes, &none, &[]),
            Decision::Unschedulable {
                reason: "NoHypervisorAvailable",
                ..
            }
        ));
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
            place_alone(None, None, 512, &nodes, &allocated),
            Decision::Node("hv2".into())
        );
        assert_eq!(
            place_alone(None, None, 512, &nodes, &BTreeMap::new()),
            Decision::Node("hv1".into())
        );
    }

    #[test]
    fn pinned_means_only_there() {
        let nodes = [hv("hv1", true, 8192), hv("hv2", false, 8192)];
        assert_eq!(
            place_alone(None, Some(&pinned("hv1")), 512, &nodes, &BTreeMap::new()),
            Decision::Node("hv1".into())
        );
        assert!(matches!(
            place_alone(None, Some(&pinned("hv2")), 512, &nodes, &BTreeMap::new()),
            Decision::Unschedulable {
                reason: "PinnedNodeNotReady",
                ..
            }
        ));
        assert!(matches!(
            place_alone(None, Some(&pinned("hv9")), 512, &nodes, &BTreeMap::new()),
            Decision::Unschedulable {
                reason: "PinnedNodeUnknown",
                ..
            }
        ));
        assert!(matches!(
            place_alone(None, Some(&pinned("hv1")), 10000, &nodes, &BTreeMap::new()),
            Decision::Unschedulable {
                reason: "PinnedNodeFull",
                ..
            }
        ));
    }

    #[test]
    fn a_cordoned_pinned_node_says_so_whatever_its_memory() {
        let cordoned = |memory_mib| Candidate {
            unschedulable: true,
            ..hv("hv1", true, memory_mib)
        };
        for (memory_mib, vm_mib) in [(8192, 512), (256, 512)] {
            let Decision::Unschedulable { reason, message } = place_alone(
                None,
                Some(&pinned("hv1")),
                vm_mib,
                &[cordoned(memory_mib)],
                &BTreeMap::new(),
            ) else {
                panic!("a cordoned node takes no new VM");
            };
            assert_eq!(reason, "PinnedNodeUnschedulable");
            assert!(
                message.contains("hypervisor hv1, which is cordoned (spec.unschedulable is true)")
                    && message.contains("uncordon it")
                    && !message.contains("MiB"),
                "{message}"
            );
        }
        // A node that is not Ready says that first: uncordoning would not be enough.
        let down = Candidate {
            unschedulable: true,
            ..hv("hv1", false, 8192)
        };
        assert!(matches!(
            place_alone(None, Some(&pinned("hv1")), 512, &[down], &BTreeMap::new()),
            Decision::Unschedulable {
                reason: "PinnedNodeNotReady",
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
            place_alone(None, Some(&preferred("hv2")), 512, &nodes, &BTreeMap::new()),
            Decision::Node("hv2".into())
        );
        assert_eq!(
            place_alone(None, Some(&preferred("hv3")), 512, &nodes, &BTreeMap::new()),
            Decision::Node("hv1".into())
        );
    }

    #[test]
    fn a_placed_vm_stays_while_its_node_is_ready() {
        let nodes = [hv("hv1", true, 1024), hv("hv2", true, 65536)];
        assert_eq!(
            place_alone(Some("hv1"), None, 512, &nodes, &BTreeMap::new()),
            Decision::Node("hv1".into())
        );
        // Re-pinning elsewhere moves it.
        assert_eq!(
            place_alone(Some("hv1"), Some(&pinned("hv2")), 512, &nodes, &BTreeMap::new()),
            Decision::Node("hv2".into())
        );
        // A node that stops answering keeps its VMs: it may still run them.
        let down = [hv("hv1", false, 1024), hv("hv2", true, 65536)];
        assert_eq!(
            place_alone(Some("hv1"), None, 512, &down, &BTreeMap::new()),
            Decision::Node("hv1".into())
        );
    }

    fn apart_from(names: &[&str], mode: RuleMode) -> Placement {
        Placement {
            anti_affinity: vec![PlacementRule {
                vms: names.iter().map(|n| n.to_string()).collect(),
                selector: None,
                mode,
            }],
            ..Default::default()
        }
    }

    fn at<'a>(name: &'a str, node: &str) -> Member<'a> {
        Member {
            nodes: [node.to_owned()].into(),
            ..Member::unplaced("ns", name, NO_LABELS, None)
        }
    }

    #[test]
    fn placement_rules_come_before_room_and_the_preferred_node() {
        let nodes = [
            hv("hv1", true, 8192),
            hv("hv2", true, 4096),
            hv("hv3", true, 2048),
        ];
        let none = BTreeMap::new();
        let others = [at("a", "hv1"), at("c", "hv2")];
        let place_b = |placement: &Placement, candidates: &[Candidate]| {
            let b = Member::unplaced("ns", "b", NO_LABELS, Some(placement));
            place(None, &b, 1024, candidates, &none, &others)
        };
        // Kept off a's host, the roomiest.
        let off_a = apart_from(&["a"], RuleMode::Required);
        assert_eq!(place_b(&off_a, &nodes), Decision::Node("hv2".into()));
        // A preferred node that breaks a rule loses to one that breaks none.
        let off_a_preferring_hv1 = Placement {
            preferred_node: Some("hv1".into()),
            ..off_a.clone()
        };
        assert_eq!(
            place_b(&off_a_preferring_hv1, &nodes),
            Decision::Node("hv2".into())
        );
        // Only a's host has room: required waits, preferred runs there.
        let only_hv1 = [hv("hv1", true, 8192), hv("hv2", true, 512)];
        let Decision::Unschedulable { reason, message } = place_b(&off_a, &only_hv1) else {
            panic!("a required rule is never broken");
        };
        assert_eq!(reason, REASON_RULES_UNSATISFIABLE);
        assert!(
            message.contains("hv1") && message.contains("where a runs"),
            "{message}"
        );
        let prefers_off_a = apart_from(&["a"], RuleMode::Preferred);
        assert_eq!(place_b(&prefers_off_a, &only_hv1), Decision::Node("hv1".into()));
        // Fewest preferred rules broken: off a and c, preferred, leaves hv3 despite its room.
        let off_both = apart_from(&["a", "c"], RuleMode::Preferred);
        assert_eq!(place_b(&off_both, &nodes), Decision::Node("hv3".into()));
        // Pinned onto a's host against a required rule: said, not done.
        let pinned_to_a = Placement {
            pinned_node: Some("hv1".into()),
            ..off_a.clone()
        };
        assert!(matches!(
            place_b(&pinned_to_a, &nodes),
            Decision::Unschedulable {
                reason: REASON_RULES_UNSATISFIABLE,
                ..
            }
        ));
        // Affinity: with c, although hv1 has more room.
        let with_c = Placement {
            affinity: vec![PlacementRule {
                vms: vec!["c".into()],
                selector: None,
                mode: RuleMode::Required,
            }],
            ..Default::default()
        };
        assert_eq!(place_b(&with_c, &nodes), Decision::Node("hv2".into()));
        // a's own rule keeps b away too.
        let a_apart = apart_from(&["b"], RuleMode::Required);
        let a = Member {
            placement: Some(&a_apart),
            ..at("a", "hv1")
        };
        let b = Member::unplaced("ns", "b", NO_LABELS, None);
        assert_eq!(
            place(None, &b, 1024, &nodes, &none, &[a, at("c", "hv2")]),
            Decision::Node("hv2".into())
        );
    }

    #[test]
    fn evacuees_keep_their_rules_among_themselves() {
        let nodes = [fenced("hv1"), hv("hv2", true, 8192), hv("hv3", true, 2048)];
        let apart = Placement {
            priority: 10,
            ..apart_from(&["a", "b"], RuleMode::Required)
        };
        let low = Placement {
            priority: 1,
            ..apart.clone()
        };
        let evacuees = [seeker("a", Some(&apart), 1024), seeker("b", Some(&low), 1024)];
        let decisions = place_evacuees(&evacuees, &nodes, &BTreeMap::new(), &[]);
        assert_eq!(decisions["ns/a"], Decision::Node("hv2".into()));
        assert_eq!(decisions["ns/b"], Decision::Node("hv3".into()), "not with a");
        // Room left on one host only: the more important one gets it, the other waits.
        let one = [fenced("hv1"), hv("hv2", true, 8192)];
        let decisions = place_evacuees(&evacuees, &one, &BTreeMap::new(), &[]);
        assert_eq!(decisions["ns/a"], Decision::Node("hv2".into()));
        assert!(matches!(
            decisions["ns/b"],
            Decision::Unschedulable {
                reason: REASON_RULES_UNSATISFIABLE,
                ..
            }
        ));
    }

    #[test]
    fn nothing_fits() {
        let nodes = [hv("hv1", true, 256)];
        assert!(matches!(
            place_alone(None, None, 512, &nodes, &BTreeMap::new()),
            Decision::Unschedulable {
                reason: "NoHypervisorAvailable",
                ..
            }
        ));
    }

    #[test]
    fn a_vm_started_outside_the_operator_is_placed_where_it_runs() {
        assert_eq!(where_started_outside("hv1", None), Decision::Node("hv1".into()));
        let preferred = Placement {
            preferred_node: Some("hv2".into()),
            ..Default::default()
        };
        assert_eq!(
            where_started_outside("hv1", Some(&preferred)),
            Decision::Node("hv1".into())
        );
        let pinned_there = with(0, FailoverPolicy::default(), Some("hv1"));
        assert_eq!(
            where_started_outside("hv1", Some(&pinned_there)),
            Decision::Node("hv1".into())
        );
        let pinned_away = with(0, FailoverPolicy::default(), Some("hv2"));
        let Decision::Unschedulable { reason, message } = where_started_outside("hv1", Some(&pinned_away))
        else {
            panic!("a VM pinned elsewhere is not placed while the other copy runs");
        };
        assert_eq!(reason, REASON_STARTED_OUTSIDE);
        assert!(
            message.contains("hv1") && message.contains("pinned to hv2"),
            "{message}"
        );
    }
}
