//! The status the controller writes on a VirtualMachine, built from what it observed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    DesiredState, DomainStatus, Phase, StorageStatus, VirtualMachine, VirtualMachineStatus,
    condition_types as ct,
};
use crate::controller::conditions::{self, Desired};
use crate::controller::node_health::REASON_NODE_LOST;
use crate::controller::phase;
use crate::controller::placement::Broken;

/// The outcome of the storage step.
#[derive(Clone, Debug)]
pub enum StorageOutcome {
    Ready(StorageStatus),
    /// The spec cannot be carried out as it is; retrying does not help.
    Invalid {
        reason: String,
        message: String,
    },
    /// Failed for now; retried with back-off.
    Failing {
        reason: String,
        message: String,
        storage: Option<StorageStatus>,
    },
}

/// The outcome of placement.
#[derive(Clone, Debug)]
pub enum Scheduling {
    /// On this node, with the placement rules it breaks when the VM has rules or another VM's
    /// rule names it (`None`: no rule concerns the VM).
    Placed {
        node: String,
        rules: Option<Vec<Broken>>,
    },
    NotNeeded,
    Unschedulable {
        reason: String,
        message: String,
    },
}

/// What the controller knows of the host the VM is placed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostHealth {
    /// It answers (or the VM is placed nowhere).
    Answering,
    /// Its agent stopped reporting: what runs there is unknown.
    Lost { message: String },
}

pub struct StatusInput<'a> {
    pub vm: &'a VirtualMachine,
    pub host: HostHealth,
    pub storage: &'a StorageOutcome,
    pub scheduling: &'a Scheduling,
    /// The host a VM placed elsewhere waits for, while it still holds the domain.
    pub releasing: Option<&'a Release>,
    pub domain_uuid: Option<String>,
    pub now: Time,
}

/// A VM moving to another node waits for its old host to release the domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub from: String,
    /// Whether the old host still has a Hypervisor object, whose heartbeat can prove the
    /// domain gone (or whose loss gets it fenced).
    pub host_known: bool,
}

impl Release {
    fn message(&self, node: &str) -> String {
        let from = &self.from;
        if self.host_known {
            format!(
                "placed on hypervisor {node}; waiting for hypervisor {from} to stop and undefine the \
                 domain (its heartbeat still lists the VM)"
            )
        } else {
            format!(
                "placed on hypervisor {node}; the domain was last reported on hypervisor {from}, \
                 which has no Hypervisor object, so no heartbeat can prove the domain gone there \
                 and the VM does not move: start that host's agent, which registers the host \
                 again and then releases the domain"
            )
        }
    }
}

/// The controller's part of the status: phase, conditions, node, storage, UUID.
pub fn build(input: &StatusInput) -> VirtualMachineStatus {
    let vm = input.vm;
    let previous = vm.status.clone().unwrap_or_default();
    let desired = vm.spec.state;
    let node = match input.scheduling {
        Scheduling::Placed { node, .. } => Some(node.clone()),
        _ => previous.node.clone(),
    };
    let storage = match input.storage {
        StorageOutcome::Ready(s) => Some(s.clone()),
        StorageOutcome::Failing { storage, .. } => storage.clone(),
        StorageOutcome::Invalid { .. } => previous.storage.clone(),
    };
    let observed = phase::Observed {
        storage_exists: storage.is_some(),
        placed_node: node.as_deref(),
        domain: previous.domain.as_ref(),
    };
    let phase = phase::derive(desired, &observed);

    let mut wanted = vec![storage_condition(input.storage)];
    wanted.extend(scheduling_conditions(input.scheduling, input.releasing));
    let target = phase::target(desired);
    let agent_behind = agent_behind(vm, node.as_deref(), previous.domain.as_ref());
    let storage_ok = matches!(input.storage, StorageOutcome::Ready(_));
    let readiness = Readiness {
        ready: phase == target && storage_ok && agent_behind.is_none(),
        host_lost: match &input.host {
            HostHealth::Lost { message } if desired != DesiredState::Disabled => Some(message.clone()),
            _ => None,
        },
        stalled: stalled_by(input.storage).or_else(|| domain_failure(previous.domain.as_ref(), phase)),
    };
    let why = readiness.why(&Progress {
        phase,
        target,
        desired,
        input,
        agent_behind,
        agent_failure: agent_failure(node.as_deref(), previous.domain.as_ref()),
    });
    wanted.extend(readiness.conditions(why));

    VirtualMachineStatus {
        phase: Some(phase),
        observed_generation: vm.metadata.generation,
        conditions: conditions::merge(&previous.conditions, &wanted, vm.metadata.generation, &input.now),
        node,
        domain_uuid: input.domain_uuid.clone().or(previous.domain_uuid),
        storage,
        // Owned by the import progress reporter (its own field manager).
        import: None,
        // Written by the agents; the controller's apply patch leaves them out.
        restarts: None,
        domain: None,
        // Written by the snapshot controller (its own field manager).
        unmanaged_snapshots: Vec::new(),
    }
}

/// `StorageReady`, from the storage step's outcome.
fn storage_condition(storage: &StorageOutcome) -> Desired {
    match storage {
        StorageOutcome::Ready(_) => Desired::new(
            ct::STORAGE_READY,
            true,
            "StorageReady",
            "RBD group and images are in place",
        ),
        StorageOutcome::Invalid { reason, message } | StorageOutcome::Failing { reason, message, .. } => {
            Desired::new(ct::STORAGE_READY, false, reason.clone(), message.clone())
        }
    }
}

/// A storage outcome that retrying does not mend: the VM is stalled until the spec changes.
fn stalled_by(storage: &StorageOutcome) -> Option<(String, String)> {
    match storage {
        StorageOutcome::Invalid { reason, message } => Some((reason.clone(), message.clone())),
        _ => None,
    }
}

/// `Scheduled`, and `PlacementRulesMet` when a rule concerns the VM.
fn scheduling_conditions(scheduling: &Scheduling, releasing: Option<&Release>) -> Vec<Desired> {
    match scheduling {
        Scheduling::Placed { node, rules } => {
            let scheduled = match releasing {
                Some(release) => {
                    Desired::new(ct::SCHEDULED, true, "WaitingForRelease", release.message(node))
                }
                None => Desired::new(
                    ct::SCHEDULED,
                    true,
                    "Scheduled",
                    format!("placed on hypervisor {node}"),
                ),
            };
            let rules = rules.as_ref().map(|broken| rules_condition(node, broken));
            [Some(scheduled), rules].into_iter().flatten().collect()
        }
        Scheduling::Unschedulable { reason, message } => vec![Desired::new(
            ct::SCHEDULED,
            false,
            reason.clone(),
            message.clone(),
        )],
        Scheduling::NotNeeded => Vec::new(),
    }
}

/// The domain's own failure, once the phase says Failed.
fn domain_failure(domain: Option<&DomainStatus>, phase: Phase) -> Option<(String, String)> {
    domain.filter(|_| phase == Phase::Failed).map(|d| {
        (
            d.reason.clone().unwrap_or_else(|| "DomainFailed".into()),
            d.message
                .clone()
                .unwrap_or_else(|| format!("the domain failed on {}", d.node)),
        )
    })
}

/// What `Ready`, `Reconciling` and `Stalled` are made of.
struct Readiness {
    ready: bool,
    /// The VM's host stopped answering (unless the VM is Disabled): Ready is Unknown.
    host_lost: Option<String>,
    /// Reason and message of what no retry mends (invalid storage, a failed domain).
    stalled: Option<(String, String)>,
}

/// The facts that explain a VM not Ready yet.
struct Progress<'a> {
    phase: Phase,
    target: Phase,
    desired: DesiredState,
    input: &'a StatusInput<'a>,
    agent_behind: Option<String>,
    agent_failure: Option<(String, String)>,
}

impl Readiness {
    /// The reason and message of `Ready`: the most telling fact first.
    fn why(&self, p: &Progress) -> (String, String) {
        let (phase, target) = (p.phase, p.target);
        if let Some(message) = self.host_lost.clone() {
            return (REASON_NODE_LOST.to_owned(), message);
        }
        if self.ready {
            return (format!("{phase:?}"), format!("the VM is {phase:?}, as desired"));
        }
        if let Some(stalled) = self.stalled.clone() {
            return stalled;
        }
        if let (
            Scheduling::Unschedulable { reason, message },
            DesiredState::Started | DesiredState::Stopped,
        ) = (p.input.scheduling, p.desired)
        {
            return (reason.clone(), message.clone());
        }
        if let StorageOutcome::Failing { reason, message, .. } = p.input.storage {
            return (reason.clone(), message.clone());
        }
        if let Some(message) = p.agent_behind.clone().filter(|_| phase == target) {
            return ("WaitingForAgent".to_owned(), message);
        }
        // libvirt refused what the agent did (e.g. the XML at define time): say so here, not
        // only in status.domain.
        p.agent_failure.clone().unwrap_or_else(|| {
            (
                format!("{phase:?}"),
                format!("the VM is {phase:?}; desired {target:?}"),
            )
        })
    }

    /// `Ready`, `Reconciling` and `Stalled`.
    fn conditions(&self, (reason, message): (String, String)) -> [Desired; 3] {
        let ready = if self.host_lost.is_some() {
            Desired::unknown(ct::READY, reason, message.clone())
        } else {
            Desired::new(ct::READY, self.ready, reason, message.clone())
        };
        let reconciling = Desired::new(
            ct::RECONCILING,
            !self.ready && self.stalled.is_none(),
            if self.ready { "Done" } else { "Progressing" },
            if self.ready { String::new() } else { message },
        );
        let (stalled_reason, stalled_message) = self
            .stalled
            .clone()
            .unwrap_or_else(|| ("NotStalled".into(), String::new()));
        let stalled = Desired::new(
            ct::STALLED,
            self.stalled.is_some(),
            stalled_reason,
            stalled_message,
        );
        [ready, reconciling, stalled]
    }
}

/// `PlacementRulesMet`: whether the VM's placement rules hold on its node. A required rule is
/// broken only where the VM was placed before the rule or its peers were moved by hand: the
/// controller never moves a running VM on its own to mend it.
fn rules_condition(node: &str, broken: &[Broken]) -> Desired {
    let required = broken.iter().any(|b| b.required);
    let what = broken
        .iter()
        .map(|b| b.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    match (broken.is_empty(), required) {
        (true, _) => Desired::new(
            ct::PLACEMENT_RULES_MET,
            true,
            "RulesMet",
            format!("the placement rules hold on hypervisor {node}"),
        ),
        (false, true) => Desired::new(
            ct::PLACEMENT_RULES_MET,
            false,
            "RequiredRuleBroken",
            format!("on hypervisor {node}, {what}: move one of the VMs (kubectl seapath migrate VM)"),
        ),
        (false, false) => Desired::new(
            ct::PLACEMENT_RULES_MET,
            false,
            "PreferredRuleNotMet",
            format!("no hypervisor with room meets every preferred rule: on {node}, {what}"),
        ),
    }
}

/// The agent of the placed node has not acted on the VM's current generation yet: what it last
/// reported says nothing about the spec as it is now.
fn agent_behind(vm: &VirtualMachine, node: Option<&str>, domain: Option<&DomainStatus>) -> Option<String> {
    let domain = domain.filter(|d| Some(d.node.as_str()) == node)?;
    let seen = domain.observed_generation?;
    let generation = vm.metadata.generation?;
    (seen < generation && vm.spec.state != DesiredState::Disabled).then(|| {
        format!(
            "the agent of hypervisor {} last acted on generation {seen}; the VM is at generation {generation}",
            domain.node
        )
    })
}

/// What the agent of the placed node could not do, with libvirt's words.
fn agent_failure(node: Option<&str>, domain: Option<&DomainStatus>) -> Option<(String, String)> {
    let domain = domain.filter(|d| Some(d.node.as_str()) == node)?;
    let reason = domain.reason.clone().filter(|r| r.ends_with("Failed"))?;
    let message = domain.message.clone()?;
    Some((reason, format!("hypervisor {}: {message}", domain.node)))
}

/// Whether writing `new` would change what the object already says (agent-owned fields and
/// timestamps of unchanged conditions excluded), so a resync writes nothing.
pub fn differs(vm: &VirtualMachine, new: &VirtualMachineStatus) -> bool {
    let Some(old) = &vm.status else { return true };
    old.phase != new.phase
        || old.observed_generation != new.observed_generation
        || old.node != new.node
        || old.domain_uuid != new.domain_uuid
        || old.storage != new.storage
        || old.conditions != new.conditions
}

/// The storage a previous run recorded as ready for this very generation, if it matches the
/// layout the plan expects: after a restart it is trusted once every image is found in one
/// listing of the namespace, instead of reading each VM's images again (the full check comes
/// back after the storage recheck interval).
pub fn recorded_storage<'a>(
    vm: &'a VirtualMachine,
    pool: &str,
    rbd_namespace: &str,
    expected_images: &[String],
) -> Option<&'a StorageStatus> {
    let status = vm.status.as_ref()?;
    let storage = status.storage.as_ref()?;
    let ready = conditions::find(&status.conditions, ct::STORAGE_READY)?;
    let same_generation =
        ready.observed_generation.is_some() && ready.observed_generation == vm.metadata.generation;
    let same_layout = storage.pool == pool
        && storage.namespace == rbd_namespace
        && storage.images.len() == expected_images.len()
        && storage
            .images
            .iter()
            .zip(expected_images)
            .all(|(i, e)| &i.name == e);
    (ready.status == "True" && same_generation && same_layout).then_some(storage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ImageStatus;

    fn vm(generation: i64, ready: bool, observed: i64, images: &[&str]) -> VirtualMachine {
        let mut vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "vm", "namespace": "ns", "generation": generation},
            "spec": {"xml": "<domain/>", "systemDisk": {"size": "1Mi", "source": {"blank": {}}}}
        }))
        .unwrap();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let condition = conditions::merge(
            &[],
            &[Desired::new(ct::STORAGE_READY, ready, "R", "m")],
            Some(observed),
            &now,
        );
        vm.status = Some(VirtualMachineStatus {
            storage: Some(StorageStatus {
                pool: "rbd".into(),
                namespace: "ns".into(),
                group: "vm".into(),
                images: images
                    .iter()
                    .map(|n| ImageStatus {
                        name: n.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            }),
            conditions: condition,
            ..Default::default()
        });
        vm
    }

    /// A started VM on hv1 whose agent reported `reported_generation`, at `generation`.
    fn running(generation: i64, reported_generation: i64) -> VirtualMachine {
        let mut vm = vm(generation, true, generation, &["system_vm"]);
        let status = vm.status.as_mut().unwrap();
        status.node = Some("hv1".into());
        status.domain = Some(DomainStatus {
            node: "hv1".into(),
            name: "ns_vm".into(),
            state: crate::api::DomainState::Running,
            observed_generation: Some(reported_generation),
            ..Default::default()
        });
        vm
    }

    fn ready_of(vm: &VirtualMachine, host: HostHealth) -> (String, String, String) {
        let storage = StorageOutcome::Ready(vm.status.as_ref().unwrap().storage.clone().unwrap());
        let input = StatusInput {
            vm,
            host,
            storage: &storage,
            scheduling: &Scheduling::Placed {
                node: "hv1".into(),
                rules: None,
            },
            releasing: None,
            domain_uuid: None,
            now: Time(k8s_openapi::jiff::Timestamp::now()),
        };
        let status = build(&input);
        let ready = conditions::find(&status.conditions, ct::READY).unwrap().clone();
        (ready.status, ready.reason, ready.message)
    }

    #[test]
    fn ready_says_only_what_was_observed() {
        let lost = || HostHealth::Lost {
            message: "hypervisor hv1 has not reported for 12 s".into(),
        };
        let table: Vec<(&str, VirtualMachine, HostHealth, &str, &str)> = vec![
            (
                "observed and running",
                running(3, 3),
                HostHealth::Answering,
                "True",
                "Started",
            ),
            ("host lost", running(3, 3), lost(), "Unknown", "NodeLost"),
            (
                "spec changed, agent has not acted on it",
                running(5, 3),
                HostHealth::Answering,
                "False",
                "WaitingForAgent",
            ),
            (
                "both: the host is what matters",
                running(5, 3),
                lost(),
                "Unknown",
                "NodeLost",
            ),
        ];
        for (name, vm, host, status, reason) in table {
            let (s, r, m) = ready_of(&vm, host);
            assert_eq!((s.as_str(), r.as_str()), (status, reason), "{name}: {m}");
        }
        let mut refused = running(3, 3);
        let domain = refused.status.as_mut().unwrap().domain.as_mut().unwrap();
        domain.state = crate::api::DomainState::Absent;
        domain.reason = Some("DefineFailed".into());
        domain.message = Some("unsupported configuration: Invalid number of vCPUs: 0".into());
        let (status, reason, message) = ready_of(&refused, HostHealth::Answering);
        assert_eq!((status.as_str(), reason.as_str()), ("False", "DefineFailed"));
        assert!(message.contains("hv1: unsupported configuration"), "{message}");
        let (_, _, message) = ready_of(&running(5, 3), HostHealth::Answering);
        assert!(
            message.contains("last acted on generation 3; the VM is at generation 5"),
            "{message}"
        );
    }

    #[test]
    fn the_placement_rules_condition_says_which_rule_is_broken_and_how_badly() {
        let broken = |required: bool| Broken {
            required,
            message: "its antiAffinity keeps it off hypervisor hv1, where b runs".into(),
        };
        let cases = [
            (None, None),
            (Some(vec![]), Some(("True", "RulesMet"))),
            (Some(vec![broken(false)]), Some(("False", "PreferredRuleNotMet"))),
            (
                Some(vec![broken(false), broken(true)]),
                Some(("False", "RequiredRuleBroken")),
            ),
        ];
        let vm = vm(1, true, 1, &["system_vm"]);
        let storage = StorageOutcome::Ready(vm.status.as_ref().unwrap().storage.clone().unwrap());
        for (rules, expected) in cases {
            let scheduling = Scheduling::Placed {
                node: "hv1".into(),
                rules: rules.clone(),
            };
            let status = build(&StatusInput {
                vm: &vm,
                host: HostHealth::Answering,
                storage: &storage,
                scheduling: &scheduling,
                releasing: None,
                domain_uuid: None,
                now: Time(k8s_openapi::jiff::Timestamp::now()),
            });
            let condition = conditions::find(&status.conditions, ct::PLACEMENT_RULES_MET);
            assert_eq!(
                condition.map(|c| (c.status.as_str(), c.reason.as_str())),
                expected,
                "{rules:?}"
            );
            if let Some(c) = condition.filter(|c| c.status == "False") {
                assert!(c.message.contains("where b runs"), "{}", c.message);
            }
        }
    }

    #[test]
    fn recorded_storage_is_trusted_only_for_the_same_generation_and_layout() {
        let expected = ["system_vm".to_string()];
        assert!(recorded_storage(&vm(3, true, 3, &["system_vm"]), "rbd", "ns", &expected).is_some());
        // The spec changed since: read Ceph.
        assert!(recorded_storage(&vm(4, true, 3, &["system_vm"]), "rbd", "ns", &expected).is_none());
        assert!(recorded_storage(&vm(3, false, 3, &["system_vm"]), "rbd", "ns", &expected).is_none());
        // Another pool, namespace or set of images than the plan's.
        assert!(recorded_storage(&vm(3, true, 3, &["system_vm"]), "other", "ns", &expected).is_none());
        assert!(recorded_storage(&vm(3, true, 3, &["system_vm"]), "rbd", "", &expected).is_none());
        assert!(
            recorded_storage(
                &vm(3, true, 3, &["system_vm", "data_vm_0"]),
                "rbd",
                "ns",
                &expected
            )
            .is_none()
        );
    }

    #[test]
    fn a_moving_vm_says_which_host_it_waits_for_and_what_to_do_when_that_host_is_unknown() {
        let vm = vm(1, true, 1, &["system_vm"]);
        let storage = StorageOutcome::Ready(vm.status.as_ref().unwrap().storage.clone().unwrap());
        let scheduling = Scheduling::Placed {
            node: "hv2".into(),
            rules: None,
        };
        let scheduled = |releasing: Option<&Release>| {
            let status = build(&StatusInput {
                vm: &vm,
                host: HostHealth::Answering,
                storage: &storage,
                scheduling: &scheduling,
                releasing,
                domain_uuid: None,
                now: Time(k8s_openapi::jiff::Timestamp::now()),
            });
            let c = conditions::find(&status.conditions, ct::SCHEDULED)
                .unwrap()
                .clone();
            (c.reason, c.message)
        };
        assert_eq!(scheduled(None).0, "Scheduled");
        let known = Release {
            from: "hv1".into(),
            host_known: true,
        };
        let (reason, message) = scheduled(Some(&known));
        assert_eq!(reason, "WaitingForRelease");
        assert!(message.contains("waiting for hypervisor hv1"), "{message}");
        let gone = Release {
            host_known: false,
            ..known
        };
        let (reason, message) = scheduled(Some(&gone));
        assert_eq!(reason, "WaitingForRelease");
        assert!(
            message.contains("hv1, which has no Hypervisor object"),
            "{message}"
        );
        assert!(message.contains("start that host's agent"), "{message}");
    }
}
