use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::api::{
    DomainStatus, MigrationPolicy, MigrationReport, PlacementRule, RuleMode, VirtualMachineMigrationSpec,
    VirtualMachineStatus,
};

fn hv(name: &str) -> Candidate {
    Candidate {
        name: name.into(),
        ready: true,
        unschedulable: false,
        memory_mib: 4096,
        fenced: false,
    }
}

fn report(node: &str, state: DomainState) -> DomainStatus {
    DomainStatus {
        node: node.into(),
        name: "vm1".into(),
        state,
        ..Default::default()
    }
}

fn migration_report(succeeded: bool) -> MigrationReport {
    MigrationReport {
        uid: "mig-uid".into(),
        target: "hv2".into(),
        succeeded,
        downtime_milliseconds: succeeded.then_some(21),
        bytes_transferred: succeeded.then_some(1 << 20),
        message: (!succeeded).then(|| "target refused".into()),
    }
}

/// Owns what [`Facts`] borrows.
struct Case {
    migration: VirtualMachineMigration,
    vm: Option<VirtualMachine>,
    candidates: Vec<Candidate>,
    allocated: BTreeMap<String, i64>,
    busy_with: Option<String>,
    /// Other VMs of the namespace: name and the node each runs on.
    peers: Vec<(String, String)>,
    listed_on: Vec<String>,
    now: Timestamp,
}

impl Case {
    /// A migration of `vm1` (running on hv1, 1 GiB) with hosts hv1, hv2, hv3.
    fn new(target: Option<&str>) -> Self {
        let mut migration = VirtualMachineMigration::new(
            "move1",
            VirtualMachineMigrationSpec {
                vm_name: "vm1".into(),
                target_node: target.map(Into::into),
            },
        );
        migration.metadata.uid = Some("mig-uid".into());
        let mut vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "vm1"},
            "spec": {"xml": "<domain/>", "systemDisk": {"source": {"blank": {}}, "size": "1Gi"}}
        }))
        .unwrap();
        vm.metadata.labels = Some(BTreeMap::from([(NODE_LABEL.into(), "hv1".into())]));
        vm.status = Some(VirtualMachineStatus {
            node: Some("hv1".into()),
            domain: Some(report("hv1", DomainState::Running)),
            ..Default::default()
        });
        Case {
            migration,
            vm: Some(vm),
            candidates: vec![hv("hv1"), hv("hv2"), hv("hv3")],
            allocated: BTreeMap::from([("hv3".into(), 2048)]),
            busy_with: None,
            peers: Vec::new(),
            listed_on: vec!["hv1".into()],
            now: Timestamp::UNIX_EPOCH,
        }
    }

    fn vm(&mut self) -> &mut VirtualMachine {
        self.vm.as_mut().expect("the case has a VM")
    }

    fn policy(mut self, policy: MigrationPolicy) -> Self {
        self.vm().spec.migration = Some(policy);
        self
    }

    /// vm1 keeps away from `peer`, which runs on `node`.
    fn apart_from(mut self, peer: &str, node: &str, mode: RuleMode) -> Self {
        let rule = PlacementRule {
            vms: vec![peer.into()],
            selector: None,
            mode,
        };
        let placement = self.vm().spec.placement.get_or_insert_default();
        placement.anti_affinity.push(rule);
        self.peers.push((peer.into(), node.into()));
        self
    }

    fn decide(&self) -> Decision {
        let no_labels = BTreeMap::new();
        let neighbours: Vec<Member> = self
            .peers
            .iter()
            .map(|(name, node)| Member {
                nodes: [node.clone()].into(),
                ..Member::unplaced("", name, &no_labels, None)
            })
            .collect();
        decide(&Facts {
            migration: &self.migration,
            vm: self.vm.as_ref(),
            candidates: &self.candidates,
            allocated_mib: &self.allocated,
            neighbours: &neighbours,
            vm_memory_mib: 1024,
            busy_with: self.busy_with.as_deref(),
            listed_on: &self.listed_on,
            now: Time(self.now),
        })
    }

    /// Applies a decision as the controller would: status written, marks on the VM.
    fn apply(mut self, decision: &Decision) -> Self {
        self.migration.status = Some(decision.status.clone());
        if let Some(marks) = &decision.marks {
            let vm = self.vm();
            let labels = vm.labels_mut();
            labels.remove(MIGRATION_TARGET_LABEL);
            labels.extend(marks.labels.clone());
            let annotations = vm.annotations_mut();
            annotations.clear();
            annotations.extend(marks.annotations.clone());
        }
        self
    }

    /// Scheduled and marked: Running.
    fn running(self) -> Self {
        let first = self.decide();
        let case = self.apply(&first);
        let second = case.decide();
        assert_eq!(second.status.phase, Some(MigrationPhase::Running));
        case.apply(&second)
    }

    fn reported(mut self, domain: DomainStatus) -> Self {
        self.vm().status.as_mut().unwrap().domain = Some(domain);
        self
    }

    fn labelled(mut self, node: &str) -> Self {
        self.vm().labels_mut().insert(NODE_LABEL.into(), node.into());
        self
    }

    fn placed(mut self, node: &str) -> Self {
        self.vm().status.as_mut().unwrap().node = Some(node.into());
        self
    }
}

#[test]
fn a_running_vm_is_live_migrated_to_the_host_asked_for_or_the_roomiest_other() {
    let d = Case::new(Some("hv3")).decide();
    assert_eq!(d.status.phase, Some(MigrationPhase::Scheduling));
    assert_eq!(d.status.mode, Some(MigrationMode::Live));
    assert_eq!(d.status.source_node.as_deref(), Some("hv1"));
    assert_eq!(d.status.target_node.as_deref(), Some("hv3"));
    let marks = d.marks.expect("the VM is marked");
    assert_eq!(marks.labels[MIGRATION_TARGET_LABEL], "hv3");
    assert_eq!(marks.annotations[MIGRATION_UID_ANNOTATION], "mig-uid");
    // hv3 has less free memory than hv2, and hv1 is the source.
    let d = Case::new(None).decide();
    assert_eq!(d.status.target_node.as_deref(), Some("hv2"));
    // Unless a placement rule keeps the VM off hv2, even a preferred one.
    for mode in [RuleMode::Required, RuleMode::Preferred] {
        let d = Case::new(None).apart_from("vm2", "hv2", mode).decide();
        assert_eq!(d.status.target_node.as_deref(), Some("hv3"), "{mode:?}");
    }
    // A preferred rule does not stop a target asked for by name.
    let d = Case::new(Some("hv2"))
        .apart_from("vm2", "hv2", RuleMode::Preferred)
        .decide();
    assert_eq!(d.status.phase, Some(MigrationPhase::Scheduling));
}

#[test]
fn a_vm_that_does_not_run_or_may_not_live_migrate_moves_by_stop_and_start() {
    let stopped = Case::new(Some("hv2")).reported(report("hv1", DomainState::ShutOff));
    let no_live = Case::new(Some("hv2")).policy(MigrationPolicy {
        live: false,
        ..Default::default()
    });
    for case in [stopped, no_live] {
        let d = case.decide();
        assert_eq!(d.status.mode, Some(MigrationMode::StopAndStart));
        let marks = d.marks.unwrap();
        assert_eq!(marks.annotations[MOVE_TO_ANNOTATION], "hv2");
        assert!(marks.labels.is_empty(), "no agent live-migrates it");
    }
}

#[test]
fn a_migration_that_cannot_start_fails_with_a_reason_and_touches_nothing() {
    let mut cases: Vec<(Case, &str)> = Vec::new();
    cases.push((Case::new(Some("hv9")), "TargetUnknown"));
    cases.push((Case::new(Some("hv1")), "SameNode"));
    let mut not_ready = Case::new(Some("hv2"));
    not_ready.candidates[1].ready = false;
    cases.push((not_ready, "TargetNotReady"));
    let mut cordoned = Case::new(Some("hv2"));
    cordoned.candidates[1].unschedulable = true;
    cases.push((cordoned, "TargetUnschedulable"));
    let mut full = Case::new(Some("hv2"));
    full.allocated.insert("hv2".into(), 3500);
    cases.push((full, "TargetFull"));
    let mut nowhere = Case::new(None);
    nowhere.candidates.truncate(1);
    cases.push((nowhere, "NoHypervisorAvailable"));
    let mut gone = Case::new(None);
    gone.vm = None;
    cases.push((gone, "VmNotFound"));
    let mut busy = Case::new(None);
    busy.busy_with = Some("move0".into());
    cases.push((busy, "AlreadyMigrating"));
    let mut unplaced = Case::new(None);
    unplaced.vm().status.as_mut().unwrap().node = None;
    cases.push((unplaced, "NotPlaced"));
    let kept_off = Case::new(Some("hv2")).apart_from("vm2", "hv2", RuleMode::Required);
    cases.push((kept_off, "TargetBreaksPlacementRule"));
    let boxed_in = Case::new(None)
        .apart_from("vm2", "hv2", RuleMode::Required)
        .apart_from("vm3", "hv3", RuleMode::Required);
    cases.push((boxed_in, placement::REASON_RULES_UNSATISFIABLE));
    let mut pinned = Case::new(None);
    pinned.vm().spec.placement = Some(Placement {
        pinned_node: Some("hv1".into()),
        ..Default::default()
    });
    cases.push((pinned, "Pinned"));
    for (case, reason) in cases {
        let d = case.decide();
        assert_eq!(d.status.phase, Some(MigrationPhase::Failed), "{reason}");
        assert_eq!(d.status.reason.as_deref(), Some(reason));
        assert!(d.status.message.as_deref().is_some_and(|m| !m.is_empty()));
        assert_eq!(d.marks, None, "{reason}: the VM is left alone");
        assert!(d.notice.is_some_and(|n| n.warning && n.reason == reason));
    }
}

#[test]
fn a_live_migration_ends_only_once_the_target_runs_the_vm_and_holds_its_label() {
    let case = Case::new(Some("hv2")).running();
    // Under way: the source still reports the domain.
    let d = case.decide();
    assert_eq!(d.status.phase, Some(MigrationPhase::Running));
    assert!(
        d.marks
            .as_ref()
            .is_some_and(|m| m.labels.contains_key(MIGRATION_TARGET_LABEL))
    );
    // The source says the domain left; nothing ends before the target reports it.
    let mut left = report("hv1", DomainState::Absent);
    left.migration = Some(migration_report(true));
    let d = case.reported(left).decide();
    assert_eq!(d.status.phase, Some(MigrationPhase::Running));
    // The target reports it running, carrying the source's account; the label is still hv1.
    let mut arrived = report("hv2", DomainState::Running);
    arrived.migration = Some(migration_report(true));
    let case = Case::new(Some("hv2")).running().reported(arrived);
    let d = case.decide();
    assert_eq!(d.status.phase, Some(MigrationPhase::Running));
    assert!(
        d.marks.as_ref().is_some_and(|m| !m.labels.is_empty()),
        "the marks stay until the node label moved"
    );
    let case = case.labelled("hv2");
    let d = case.decide();
    assert_eq!(
        d.status.phase,
        Some(MigrationPhase::Running),
        "status.node is not there yet"
    );
    let d = case.placed("hv2").decide();
    assert_eq!(d.status.phase, Some(MigrationPhase::Succeeded));
    assert_eq!(d.status.downtime_milliseconds, Some(21));
    assert_eq!(d.status.bytes_transferred, Some(1 << 20));
    assert_eq!(d.marks, Some(Marks::default()));
    assert!(d.notice.is_some_and(|n| !n.warning));
}

#[test]
fn a_refused_live_migration_fails_or_falls_back_to_stop_and_start() {
    let mut refused = report("hv1", DomainState::Running);
    refused.migration = Some(migration_report(false));
    let d = Case::new(Some("hv2"))
        .running()
        .reported(refused.clone())
        .decide();
    assert_eq!(d.status.phase, Some(MigrationPhase::Failed));
    assert_eq!(d.status.reason.as_deref(), Some("MigrationFailed"));
    assert!(d.status.message.unwrap().contains("target refused"));
    assert_eq!(d.marks, Some(Marks::default()), "the source runs it: marks go");

    let fallback = MigrationPolicy {
        on_failure: MigrationFailurePolicy::StopAndStart,
        ..Default::default()
    };
    let case = Case::new(Some("hv2"))
        .policy(fallback)
        .running()
        .reported(refused);
    let d = case.decide();
    assert_eq!(d.status.phase, Some(MigrationPhase::Running));
    assert_eq!(d.status.mode, Some(MigrationMode::StopAndStart));
    assert_eq!(d.status.reason.as_deref(), Some("LiveMigrationFailed"));
    let marks = d.marks.clone().unwrap();
    assert_eq!(marks.annotations[MOVE_TO_ANNOTATION], "hv2");
    assert!(marks.labels.is_empty());
    // Moved: placed on hv2 and running there.
    let mut case = case
        .apply(&d)
        .labelled("hv2")
        .reported(report("hv2", DomainState::Running));
    case.vm().status.as_mut().unwrap().node = Some("hv2".into());
    let d = case.decide();
    assert_eq!(d.status.phase, Some(MigrationPhase::Succeeded));
}

#[test]
fn a_report_of_another_migration_or_a_guest_in_flight_ends_nothing() {
    let mut other = report("hv1", DomainState::Running);
    other.migration = Some(MigrationReport {
        uid: "older".into(),
        ..migration_report(false)
    });
    let d = Case::new(Some("hv2")).running().reported(other).decide();
    assert_eq!(d.status.phase, Some(MigrationPhase::Running));
    let d = Case::new(Some("hv2"))
        .running()
        .reported(report("hv2", DomainState::Paused))
        .decide();
    assert_eq!(d.status.phase, Some(MigrationPhase::Running));
    let d = Case::new(Some("hv2"))
        .running()
        .reported(report("hv1", DomainState::ShutOff))
        .decide();
    assert_eq!(d.status.reason.as_deref(), Some("SourceNotRunning"));
    let mut lost = Case::new(Some("hv2")).running();
    lost.candidates[0].fenced = true;
    let d = lost.decide();
    assert_eq!(d.status.reason.as_deref(), Some("SourceLost"));
    assert_eq!(d.marks, Some(Marks::default()));
    // Arrived before the source was fenced: handed over, not failed.
    let mut arrived = Case::new(Some("hv2"))
        .running()
        .reported(report("hv2", DomainState::Running));
    arrived.candidates[0].fenced = true;
    assert_eq!(arrived.decide().status.phase, Some(MigrationPhase::Running));
}

#[test]
fn a_cancelled_live_migration_goes_only_once_the_guest_stayed_or_moved() {
    let mut case = Case::new(Some("hv2")).running();
    case.migration.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    let d = case.decide();
    assert!(!d.finalize, "the source has not answered");
    let marks = d.marks.unwrap();
    assert_eq!(marks.annotations[MIGRATION_ABORT_ANNOTATION], "true");
    assert_eq!(
        marks.labels[MIGRATION_TARGET_LABEL], "hv2",
        "the target keeps what arrives"
    );

    let mut stayed = report("hv1", DomainState::Running);
    stayed.migration = Some(migration_report(false));
    let mut aborted = Case::new(Some("hv2")).running().reported(stayed);
    aborted.migration.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    let d = aborted.decide();
    assert!(d.finalize);
    assert_eq!(d.marks, Some(Marks::default()));

    let mut too_late = Case::new(Some("hv2"))
        .running()
        .reported(report("hv2", DomainState::Running))
        .labelled("hv2");
    too_late.migration.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    assert!(too_late.decide().finalize, "handed over: nothing left to abort");
}

#[test]
fn a_finished_migration_removes_only_its_own_marks() {
    let case = Case::new(Some("hv2")).running();
    let mut finished = case.migration.clone();
    finished.status.as_mut().unwrap().phase = Some(MigrationPhase::Failed);
    let mut case = case;
    case.migration = finished;
    assert_eq!(case.decide().marks, Some(Marks::default()));
    case.vm()
        .annotations_mut()
        .insert(MIGRATION_UID_ANNOTATION.into(), "another".into());
    assert_eq!(case.decide().marks, None);
}

#[test]
fn a_target_still_holding_the_vm_is_waited_for_then_refused() {
    let mut case = Case::new(Some("hv2"));
    case.migration.metadata.creation_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    case.listed_on.push("hv2".into());
    let waiting = case.decide();
    assert_eq!(waiting.status.phase, None, "still Pending: {:?}", waiting.status);
    assert!(waiting.marks.is_none(), "the VM is not told to move yet");
    assert!(
        waiting
            .status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("hv2")),
        "{:?}",
        waiting.status
    );

    case.now = Timestamp::UNIX_EPOCH + RELEASE_WAIT;
    let refused = case.decide();
    assert_eq!(refused.status.phase, Some(MigrationPhase::Failed));
    assert_eq!(refused.status.reason.as_deref(), Some("TargetHoldsVm"));

    // Gone from the target's listing in time: the migration goes ahead.
    case.now = Timestamp::UNIX_EPOCH;
    case.listed_on.retain(|n| n != "hv2");
    assert_eq!(case.decide().status.phase, Some(MigrationPhase::Scheduling));
}
