//! The pure decision of a VirtualMachineMigration: what the controller observed of the
//! migration, its VM and the hypervisors -> the migration's status, the marks the VM carries
//! for the agents, and whether a deleted migration may go. No I/O, no clock.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::api::{
    DesiredState, DomainState, MIGRATION_ABORT_ANNOTATION, MIGRATION_TARGET_LABEL, MIGRATION_UID_ANNOTATION,
    MOVE_TO_ANNOTATION, MigrationFailurePolicy, MigrationMode, MigrationPhase, NODE_LABEL, Placement,
    VirtualMachine, VirtualMachineMigration, VirtualMachineMigrationStatus,
};
use crate::controller::placement::{self, Candidate, Decision as Placed, Member};

/// Everything the decision depends on.
pub struct Facts<'a> {
    pub migration: &'a VirtualMachineMigration,
    /// The VM of `spec.vmName`, if it exists.
    pub vm: Option<&'a VirtualMachine>,
    pub candidates: &'a [Candidate],
    /// Memory of the other VMs placed on each hypervisor.
    pub allocated_mib: &'a BTreeMap<String, i64>,
    /// The other VMs, where they are or are going, for the placement rules.
    pub neighbours: &'a [Member<'a>],
    pub vm_memory_mib: i64,
    /// Another migration of the same VM, older and not finished.
    pub busy_with: Option<&'a str>,
    /// The hypervisors whose latest listing holds a domain of the VM (its source, and a host
    /// an earlier move left that libvirt has not finished removing yet).
    pub listed_on: &'a [String],
    pub now: Time,
}

/// How long a migration waits for its target to remove the VM's copy an earlier move left
/// there before it fails: libvirt removes the source's domain a moment after the guest runs
/// on the target, and refuses a migration back to that host until then.
pub const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The labels and annotations the migration puts on its VM (the controller's migration field
/// manager owns them: applying an empty set removes them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// A warning or notice for `kubectl describe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub status: VirtualMachineMigrationStatus,
    /// The marks the VM must carry; `None`: leave the VM as it is (not this migration's).
    pub marks: Option<Marks>,
    /// A deleted migration may release its finalizer.
    pub finalize: bool,
    pub notice: Option<Notice>,
}

/// Decides one step of a migration.
pub fn decide(f: &Facts<'_>) -> Decision {
    let status = f.migration.status.clone().unwrap_or_default();
    if f.migration.metadata.deletion_timestamp.is_some() {
        return cancel(f, status);
    }
    match (status.phase.unwrap_or(MigrationPhase::Pending), status.mode) {
        (MigrationPhase::Pending, _) => schedule(f, status),
        (phase, _) if phase.is_final() => Decision {
            marks: f
                .vm
                .filter(|vm| carries(vm, f.migration))
                .map(|_| Marks::default()),
            ..keep(status)
        },
        (_, Some(MigrationMode::Live)) => follow_live(f, status),
        (_, _) => follow_move(f, status),
    }
}

fn keep(status: VirtualMachineMigrationStatus) -> Decision {
    Decision {
        status,
        marks: None,
        finalize: false,
        notice: None,
    }
}

fn uid(migration: &VirtualMachineMigration) -> String {
    migration.metadata.uid.clone().unwrap_or_default()
}

/// Whether the VM carries this migration's marks.
fn carries(vm: &VirtualMachine, migration: &VirtualMachineMigration) -> bool {
    vm.annotations().get(MIGRATION_UID_ANNOTATION) == Some(&uid(migration))
}

/// The marks of a migration in `mode` to `target`.
fn marks(migration: &VirtualMachineMigration, mode: MigrationMode, target: &str, abort: bool) -> Marks {
    let mut marks = Marks::default();
    marks
        .annotations
        .insert(MIGRATION_UID_ANNOTATION.into(), uid(migration));
    match mode {
        MigrationMode::Live => {
            marks.labels.insert(MIGRATION_TARGET_LABEL.into(), target.into());
            if abort {
                marks
                    .annotations
                    .insert(MIGRATION_ABORT_ANNOTATION.into(), "true".into());
            }
        }
        MigrationMode::StopAndStart => {
            marks.annotations.insert(MOVE_TO_ANNOTATION.into(), target.into());
        }
    }
    marks
}

fn fail(
    f: &Facts<'_>,
    mut status: VirtualMachineMigrationStatus,
    reason: &'static str,
    message: String,
) -> Decision {
    status.phase = Some(MigrationPhase::Failed);
    status.end_time = Some(f.now.clone());
    status.reason = Some(reason.into());
    status.message = Some(message.clone());
    Decision {
        status,
        marks: f
            .vm
            .filter(|vm| carries(vm, f.migration))
            .map(|_| Marks::default()),
        finalize: false,
        notice: Some(Notice {
            warning: true,
            reason,
            message,
        }),
    }
}

/// Checks the migration, chooses the target and the mode, and marks the VM.
fn schedule(f: &Facts<'_>, mut status: VirtualMachineMigrationStatus) -> Decision {
    let name = &f.migration.spec.vm_name;
    let Some(vm) = f.vm.filter(|vm| vm.metadata.deletion_timestamp.is_none()) else {
        return fail(
            f,
            status,
            "VmNotFound",
            format!("VirtualMachine {name} does not exist (or is being deleted)"),
        );
    };
    if let Some(other) = f.busy_with {
        let message =
            format!("VirtualMachineMigration {other} of the VM is not finished: one migration at a time");
        return fail(f, status, "AlreadyMigrating", message);
    }
    let Some(source) = vm.status.as_ref().and_then(|s| s.node.clone()) else {
        let message = format!("VirtualMachine {name} is placed on no hypervisor: there is nothing to move");
        return fail(f, status, "NotPlaced", message);
    };
    if let Some(pinned) = vm.spec.placement.as_ref().and_then(|p| p.pinned_node.as_deref()) {
        let message = format!(
            "VirtualMachine {name} is pinned to hypervisor {pinned} (spec.placement.pinnedNode): change the pin to move it"
        );
        return fail(f, status, "Pinned", message);
    }
    let target = match choose_target(f, vm, &source) {
        Ok(target) => target,
        Err((reason, message)) => return fail(f, status, reason, message),
    };
    if f.listed_on.contains(&target) {
        return wait_for_release(f, status, &target);
    }
    let policy = vm.spec.migration.clone().unwrap_or_default();
    let mode = if runs_on(vm, &source) && policy.live {
        MigrationMode::Live
    } else {
        MigrationMode::StopAndStart
    };
    status.phase = Some(MigrationPhase::Scheduling);
    status.mode = Some(mode);
    status.source_node = Some(source.clone());
    status.target_node = Some(target.clone());
    status.start_time = Some(f.now.clone());
    status.reason = None;
    status.message = Some(match mode {
        MigrationMode::Live => format!("live-migrating from {source} to {target}"),
        MigrationMode::StopAndStart if policy.live => {
            format!("the VM does not run: placing it on {target} instead of {source}")
        }
        MigrationMode::StopAndStart => {
            format!("spec.migration.live is false: stopping the VM on {source} and starting it on {target}")
        }
    });
    Decision {
        marks: Some(marks(f.migration, mode, &target, false)),
        ..keep(status)
    }
}

/// Whether the VM's domain runs on `node`, as its agent reported it.
fn runs_on(vm: &VirtualMachine, node: &str) -> bool {
    vm.spec.state == DesiredState::Started
        && vm
            .status
            .as_ref()
            .and_then(|s| s.domain.as_ref())
            .is_some_and(|d| d.node == node && d.state == DomainState::Running)
}

/// The target still lists a copy of the VM: the migration waits (Pending) for it to go, up to
/// [`RELEASE_WAIT`] after it was created.
fn wait_for_release(f: &Facts<'_>, mut status: VirtualMachineMigrationStatus, target: &str) -> Decision {
    let created = f
        .migration
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(f.now.0, |t| t.0);
    if f.now.0 >= created + RELEASE_WAIT {
        let message = format!(
            "hypervisor {target} still holds a domain of the VM {}s after the migration was asked for \
             (an earlier move or a copy left there): check `virsh list --all` on {target}",
            RELEASE_WAIT.as_secs()
        );
        return fail(f, status, "TargetHoldsVm", message);
    }
    status.message = Some(format!(
        "waiting for hypervisor {target} to remove the copy of the VM an earlier move left there"
    ));
    keep(status)
}

/// The hypervisor asked for, when it can take the VM, or the one placement chooses among the
/// others.
fn choose_target(f: &Facts<'_>, vm: &VirtualMachine, source: &str) -> Result<String, (&'static str, String)> {
    let free = |c: &Candidate| c.memory_mib - f.allocated_mib.get(&c.name).copied().unwrap_or(0);
    let Some(wanted) = f.migration.spec.target_node.as_deref() else {
        let others: Vec<Candidate> = f
            .candidates
            .iter()
            .filter(|c| c.name != source)
            .cloned()
            .collect();
        let placement = Placement {
            pinned_node: None,
            preferred_node: None,
            ..vm.spec.placement.clone().unwrap_or_default()
        };
        let me = Member::of(vm, Some(&placement));
        return match placement::place(None, &me, f.vm_memory_mib, &others, f.allocated_mib, f.neighbours) {
            Placed::Node(node) => Ok(node),
            Placed::Unschedulable { reason, message } => Err((reason, message)),
        };
    };
    let Some(target) = f.candidates.iter().find(|c| c.name == wanted) else {
        return Err((
            "TargetUnknown",
            format!("hypervisor {wanted} has no Hypervisor object"),
        ));
    };
    if wanted == source {
        return Err(("SameNode", format!("the VM already runs on hypervisor {wanted}")));
    }
    if !target.ready || target.fenced {
        return Err(("TargetNotReady", format!("hypervisor {wanted} is not Ready")));
    }
    if target.unschedulable {
        let message = format!("hypervisor {wanted} is cordoned (spec.unschedulable is true) and takes no VM");
        return Err(("TargetUnschedulable", message));
    }
    if free(target) < f.vm_memory_mib {
        let message = format!(
            "hypervisor {wanted} has {} MiB free of the {} MiB the VM needs",
            free(target),
            f.vm_memory_mib
        );
        return Err(("TargetFull", message));
    }
    let me = Member::of(vm, vm.spec.placement.as_ref());
    if let Some(broken) = placement::broken_at(&me, wanted, f.neighbours)
        .into_iter()
        .find(|b| b.required)
    {
        let message = format!("the VM may not run on hypervisor {wanted}: {}", broken.message);
        return Err(("TargetBreaksPlacementRule", message));
    }
    Ok(wanted.to_owned())
}

/// A migration in Scheduling runs once its VM shows its marks.
fn run_once_marked(vm: &VirtualMachine, status: &mut VirtualMachineMigrationStatus, marks: &Marks) {
    let shows = marks.labels.iter().all(|(k, v)| vm.labels().get(k) == Some(v))
        && marks
            .annotations
            .iter()
            .all(|(k, v)| vm.annotations().get(k) == Some(v));
    if shows && status.phase == Some(MigrationPhase::Scheduling) {
        status.phase = Some(MigrationPhase::Running);
    }
}

/// A live migration: the target's report of the domain running there ends it (once the VM's
/// node label follows); the source's report that libvirt refused it fails it, or falls back
/// to stop and start.
fn follow_live(f: &Facts<'_>, mut status: VirtualMachineMigrationStatus) -> Decision {
    let Some(vm) = f.vm else {
        return fail(f, status, "VmNotFound", "the VirtualMachine was deleted".into());
    };
    let (source, target) = nodes(&status);
    let live = marks(f.migration, MigrationMode::Live, &target, false);
    run_once_marked(vm, &mut status, &live);
    let report = vm.status.as_ref().and_then(|s| s.domain.as_ref());
    let mine = report
        .and_then(|r| r.migration.as_ref())
        .filter(|m| m.uid == uid(f.migration));
    // libvirt's figures, kept as soon as a report carries them (a later report may not).
    if let Some(m) = mine.filter(|m| m.succeeded) {
        status.downtime_milliseconds = m.downtime_milliseconds.or(status.downtime_milliseconds);
        status.bytes_transferred = m.bytes_transferred.or(status.bytes_transferred);
    }
    // Handed over once both the label the agents follow and the placement the VM reconciler
    // records name the target: the marks keep the VM reconciler on the target until then.
    let handed_over = vm.labels().get(NODE_LABEL) == Some(&target)
        && vm.status.as_ref().and_then(|s| s.node.as_deref()) == Some(target.as_str());
    match report {
        Some(r) if r.node == target && r.state == DomainState::Running && handed_over => {
            let downtime = status
                .downtime_milliseconds
                .map(|d| format!(" ({d} ms of downtime)"))
                .unwrap_or_default();
            succeed(
                f,
                status,
                format!("live-migrated from {source} to {target}{downtime}"),
            )
        }
        Some(r) if r.node == source && r.state.is_active() && mine.is_some_and(|m| !m.succeeded) => {
            let why = mine.and_then(|m| m.message.clone()).unwrap_or_default();
            let policy = vm.spec.migration.clone().unwrap_or_default();
            if policy.on_failure == MigrationFailurePolicy::StopAndStart {
                status.mode = Some(MigrationMode::StopAndStart);
                status.reason = Some("LiveMigrationFailed".into());
                status.message = Some(format!(
                    "live migration failed ({why}); spec.migration.onFailure is StopAndStart: stopping the VM on {source} and starting it on {target}"
                ));
                let notice = Notice {
                    warning: true,
                    reason: "LiveMigrationFailed",
                    message: status.message.clone().unwrap_or_default(),
                };
                return Decision {
                    marks: Some(marks(f.migration, MigrationMode::StopAndStart, &target, false)),
                    notice: Some(notice),
                    ..keep(status)
                };
            }
            let message =
                format!("live migration to {target} failed: {why}; the VM keeps running on {source}");
            fail(f, status, "MigrationFailed", message)
        }
        Some(r)
            if r.node == source
                && matches!(
                    r.state,
                    DomainState::ShutOff | DomainState::Crashed | DomainState::Failed
                ) =>
        {
            let message = format!("the guest stopped on {source} ({:?}) before it moved", r.state);
            fail(f, status, "SourceNotRunning", message)
        }
        // The source was lost and fenced: nothing there can finish the migration or write the
        // disks any more, and failover takes the VM from here.
        // (A guest that arrived is handed over instead: the arms above wait for that.)
        r if f.candidates.iter().any(|c| c.name == source && c.fenced)
            && !r.is_some_and(|r| r.node == target && r.state.is_active()) =>
        {
            let message =
                format!("hypervisor {source} was lost and fenced before the VM moved; it fails over");
            fail(f, status, "SourceLost", message)
        }
        _ => Decision {
            marks: Some(live),
            ..keep(status)
        },
    }
}

/// A move by stop and start: the VM reconciler moves the VM to the target; it ends once the
/// VM is placed there and, if it should run, runs there.
fn follow_move(f: &Facts<'_>, mut status: VirtualMachineMigrationStatus) -> Decision {
    let Some(vm) = f.vm else {
        return fail(f, status, "VmNotFound", "the VirtualMachine was deleted".into());
    };
    let (source, target) = nodes(&status);
    let moving = marks(f.migration, MigrationMode::StopAndStart, &target, false);
    run_once_marked(vm, &mut status, &moving);
    let placed = vm.status.as_ref().and_then(|s| s.node.as_deref()) == Some(target.as_str())
        && vm.labels().get(NODE_LABEL) == Some(&target);
    if placed && (vm.spec.state != DesiredState::Started || runs_on(vm, &target)) {
        return succeed(
            f,
            status,
            format!("moved from {source} to {target} by stop and start"),
        );
    }
    Decision {
        marks: Some(moving),
        ..keep(status)
    }
}

fn nodes(status: &VirtualMachineMigrationStatus) -> (String, String) {
    (
        status.source_node.clone().unwrap_or_default(),
        status.target_node.clone().unwrap_or_default(),
    )
}

fn succeed(f: &Facts<'_>, mut status: VirtualMachineMigrationStatus, message: String) -> Decision {
    status.phase = Some(MigrationPhase::Succeeded);
    status.end_time = Some(f.now.clone());
    status.reason = None;
    status.message = Some(message.clone());
    Decision {
        status,
        marks: Some(Marks::default()),
        finalize: false,
        notice: Some(Notice {
            warning: false,
            reason: "Migrated",
            message,
        }),
    }
}

/// A deleted migration: a live one that runs is aborted, and the marks go only once the
/// source says the guest stayed, or the VM was handed to the target. Removing them earlier
/// would let the source start the VM again while the target may run it.
fn cancel(f: &Facts<'_>, status: VirtualMachineMigrationStatus) -> Decision {
    let done = Decision {
        marks: f
            .vm
            .filter(|vm| carries(vm, f.migration))
            .map(|_| Marks::default()),
        finalize: true,
        ..keep(status.clone())
    };
    let running_live = status.mode == Some(MigrationMode::Live)
        && matches!(
            status.phase,
            Some(MigrationPhase::Scheduling | MigrationPhase::Running)
        );
    let Some(vm) = f.vm.filter(|vm| running_live && carries(vm, f.migration)) else {
        return done;
    };
    let (source, target) = nodes(&status);
    let report = vm.status.as_ref().and_then(|s| s.domain.as_ref());
    let handed_over = vm.labels().get(NODE_LABEL) == Some(&target);
    let stayed = report.is_some_and(|r| {
        r.node == source
            && r.state.is_active()
            && r.migration
                .as_ref()
                .is_some_and(|m| m.uid == uid(f.migration) && !m.succeeded)
    });
    if handed_over || stayed {
        return done;
    }
    Decision {
        marks: Some(marks(f.migration, MigrationMode::Live, &target, true)),
        ..keep(status)
    }
}

#[cfg(test)]
mod tests;
