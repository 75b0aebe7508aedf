//! The pure decision of the node agent for one VM: what is wanted and what libvirt shows ->
//! the libvirt steps to take, the restart bookkeeping and what to report. No I/O, no clock.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use uuid::Uuid;

use super::backoff::{self, FailureOutcome, RestartPolicy, Stability};
use crate::api::{DomainState as ReportedState, DomainStatus, RestartStatus};
use crate::domain_xml::DomainOwner;
use crate::libvirt::{DomainState, StateInfo};

/// What the VM wants from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intent {
    /// No domain here.
    Absent(AbsentReason),
    /// Defined, shut off.
    Stopped,
    /// Defined and running.
    Started,
    /// Running here, to be live-migrated to the hypervisor the controller labelled the VM
    /// with; nothing is defined or started here meanwhile (the guest may run there already).
    MigrateAway,
    /// Being live-migrated here: the incoming domain is kept and reported once it runs.
    Incoming,
}

/// Why no domain is wanted here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbsentReason {
    /// The VirtualMachine is being deleted.
    Deleting,
    /// `spec.state: Disabled`.
    Disabled,
    /// The VM is placed on another node (or none).
    NotAssigned,
}

impl AbsentReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AbsentReason::Deleting => "Deleting",
            AbsentReason::Disabled => "Disabled",
            AbsentReason::NotAssigned => "NotAssigned",
        }
    }
}

/// Whose domain a same-named libvirt domain is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Marked for this very object (same UID).
    Ours,
    /// Marked for an earlier object of the same namespace and name (deleted and re-created):
    /// a leftover the agent replaces.
    Stale,
    /// Marked for another VirtualMachine: two objects map to one domain name.
    OtherVm(DomainOwner),
    /// Not marked: not the operator's; never touched.
    Foreign,
}

/// A libvirt domain as the agent observed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedDomain {
    pub state: StateInfo,
    pub uuid: Uuid,
    pub ownership: Ownership,
    /// Digest of the XML it was defined from (from its owner marker).
    pub xml_sha256: Option<String>,
}

/// The XML the VM should run, as stored in RBD (only its identity matters here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredXml {
    /// The `<uuid>` of the stored XML.
    pub uuid: Option<Uuid>,
    /// SHA-256 of the stored text.
    pub sha256: String,
}

/// Everything the decision depends on.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub now: Timestamp,
    /// `metadata.generation` of the VM.
    pub generation: i64,
    pub intent: Intent,
    /// The VM's `StorageReady` condition is True.
    pub storage_ready: bool,
    /// The stored XML; `None` when it was not read (storage not ready, or no domain wanted).
    pub stored: Option<&'a StoredXml>,
    /// The same-named domain on this host.
    pub domain: Option<&'a ObservedDomain>,
    /// What this node last reported for the VM (`None` if it never did, or another node did).
    pub reported: Option<&'a DomainStatus>,
    /// The VM's restart bookkeeping as last reported.
    pub restarts: &'a RestartStatus,
    /// The agent itself stopped the domain since it last started it.
    pub stopped_by_agent: bool,
    /// Since when the agent has seen the domain running.
    pub running_since: Option<Timestamp>,
    pub policy: &'a RestartPolicy,
    /// UID of the live migration the VM is labelled for, if any.
    pub migration: Option<&'a str>,
}

/// One libvirt operation, in the order of [`Decision::steps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Graceful shutdown within the VM's stop timeout, then destroy.
    Stop,
    /// Power off at once (a crashed domain before its restart).
    Destroy,
    /// Remove the definition (the domain is shut off by then).
    Undefine,
    /// Define (or redefine) from the stored XML.
    Define,
    /// Start; a failure counts as a restart failure.
    Start,
    /// Live-migrate the running domain to the migration's target.
    Migrate,
}

/// Something the report says besides the observed state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// Waiting for the controller's `StorageReady`.
    WaitingForStorage,
    /// Another domain holds the name: unmarked (`None`) or marked for another VM.
    NameConflict(Option<DomainOwner>),
    /// The stored XML changed while the domain runs: it keeps the old definition until it
    /// stops.
    RestartRequired,
    /// The running domain was started outside the operator (vm_manager or Pacemaker, from the
    /// stored XML): the agent takes it over as it runs, marking its definition as its own.
    TakenOver,
    /// A crash or failed start; restart at this time.
    BackingOff { failures: i32, retry_after: Timestamp },
    /// Too many consecutive failures; no more restarts until the spec changes.
    GaveUp { failures: i32 },
    /// No domain wanted here.
    Absent(AbsentReason),
    /// The domain left this host for the migration's target.
    MigratedAway,
    /// A live migration to this host is under way.
    Incoming,
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub steps: Vec<Step>,
    /// The restart bookkeeping to report (before the steps run).
    pub restarts: RestartStatus,
    pub note: Option<Note>,
    /// Look again after this long (sooner than the resync period).
    pub requeue_after: Option<Duration>,
}

impl Decision {
    fn idle(facts: &Facts<'_>) -> Self {
        Decision::idle_with(facts.restarts.clone())
    }

    /// Nothing to do, the restarts kept as they are.
    pub fn idle_with(restarts: RestartStatus) -> Self {
        Decision {
            steps: Vec::new(),
            restarts,
            note: None,
            requeue_after: None,
        }
    }

    /// Whether a domain is defined or started.
    pub fn brings_up(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Define | Step::Start))
    }

    fn with_note(mut self, note: Note) -> Self {
        self.note = Some(note);
        self
    }
}

/// Whether the agent gave up on this generation of the VM.
pub fn gave_up(reported: Option<&DomainStatus>, generation: i64) -> bool {
    reported.is_some_and(|r| r.state == ReportedState::Failed && r.observed_generation == Some(generation))
}

/// Decides what to do for one VM.
pub fn decide(facts: &Facts<'_>) -> Decision {
    match facts.intent {
        Intent::Absent(reason) => decide_absent(facts, reason),
        Intent::Stopped | Intent::Started => decide_present(facts),
        Intent::MigrateAway => decide_migrate_away(facts),
        Intent::Incoming => Decision::idle(facts).with_note(Note::Incoming),
    }
}

/// Only a guest that runs is live-migrated. One that is gone left for the target (or will be
/// started again once the controller ends the migration); one in any other state is reported
/// as it is, and the controller ends the migration. Nothing is defined or started meanwhile.
fn decide_migrate_away(facts: &Facts<'_>) -> Decision {
    let mut decision = Decision::idle(facts);
    // A migration libvirt refused is not tried again: the controller ends it on the report.
    let failed_already = facts
        .reported
        .and_then(|r| r.migration.as_ref())
        .is_some_and(|m| Some(m.uid.as_str()) == facts.migration && !m.succeeded);
    match facts.domain {
        None => return decision.with_note(Note::MigratedAway),
        _ if failed_already => {}
        Some(d) if d.ownership == Ownership::Ours && d.state.state == DomainState::Running => {
            decision.steps.push(Step::Migrate);
        }
        Some(_) => {}
    }
    decision
}

fn decide_absent(facts: &Facts<'_>, reason: AbsentReason) -> Decision {
    let mut decision = Decision::idle(facts).with_note(Note::Absent(reason));
    if let Some(domain) = facts.domain
        && matches!(domain.ownership, Ownership::Ours | Ownership::Stale)
    {
        if domain.state.state.is_active() {
            decision.steps.push(Step::Stop);
        }
        decision.steps.push(Step::Undefine);
    }
    decision
}

fn decide_present(facts: &Facts<'_>) -> Decision {
    let started = facts.intent == Intent::Started;
    let mut decision = Decision::idle(facts);
    // A new generation after giving up: start over.
    let failed_before = facts.reported.is_some_and(|r| r.state == ReportedState::Failed);
    if gave_up(facts.reported, facts.generation) {
        return decision.with_note(Note::GaveUp {
            failures: facts.restarts.consecutive_failures,
        });
    }
    if failed_before {
        decision.restarts.consecutive_failures = 0;
        decision.restarts.retry_after = None;
    }

    let domain = match facts.domain {
        Some(d) if d.ownership == Ownership::Foreign && !same_machine(d, facts) => {
            return decision.with_note(Note::NameConflict(None));
        }
        Some(ObservedDomain {
            ownership: Ownership::OtherVm(owner),
            ..
        }) => return decision.with_note(Note::NameConflict(Some(owner.clone()))),
        other => other,
    };

    let (Some(stored), true) = (facts.stored, facts.storage_ready) else {
        // Without storage: stop what should not run, start nothing, define nothing.
        match domain {
            Some(d) if d.state.state.is_active() => {
                if !started {
                    decision.steps.push(Step::Stop);
                }
            }
            Some(_) if !started => {}
            _ => decision.note = Some(Note::WaitingForStorage),
        }
        return decision;
    };

    let Some(domain) = domain else {
        decision.steps.push(Step::Define);
        if started {
            start_or_wait(facts, &mut decision, false);
        }
        return decision;
    };

    let active = domain.state.state.is_active();
    let stale = domain.ownership == Ownership::Stale;
    let uuid_changed = stale || stored.uuid.is_some_and(|u| u != domain.uuid);
    let outdated = uuid_changed || domain.xml_sha256.as_deref() != Some(stored.sha256.as_str());
    let redefine = |steps: &mut Vec<Step>| {
        if uuid_changed {
            steps.push(Step::Undefine);
        }
        steps.push(Step::Define);
    };

    if !started {
        if active {
            decision.steps.push(Step::Stop);
        }
        if outdated {
            redefine(&mut decision.steps);
        }
        return decision;
    }

    if stale {
        // A leftover of a deleted object: replace it, and start fresh.
        if active {
            decision.steps.push(Step::Stop);
        }
        redefine(&mut decision.steps);
        start_or_wait(facts, &mut decision, false);
        return decision;
    }

    match domain.state.state {
        DomainState::ShutOff => {
            let crashed = facts.reported.is_some_and(|r| r.state.is_active())
                && !facts.stopped_by_agent
                && !failed_before;
            if outdated {
                redefine(&mut decision.steps);
            }
            start_or_wait(facts, &mut decision, crashed);
        }
        DomainState::Crashed => {
            decision.steps.push(Step::Destroy);
            if outdated {
                redefine(&mut decision.steps);
            }
            start_or_wait(facts, &mut decision, true);
        }
        _ => {
            if domain.xml_sha256.is_none() && !uuid_changed {
                // Same VM, same disks: redefining changes only the definition of its next
                // boot, and stopping it would stop a guest nobody asked to stop.
                decision.steps.push(Step::Define);
                decision.note = Some(Note::TakenOver);
            } else if outdated {
                decision.note = Some(Note::RestartRequired);
            }
            if domain.state.state == DomainState::Running
                && let Some(since) = facts.running_since
            {
                match backoff::check_stable(&decision.restarts, since, facts.now, facts.policy) {
                    Stability::Nothing => {}
                    Stability::Reset(reset) => decision.restarts = reset,
                    Stability::WaitFor(wait) => decision.requeue_after = Some(wait),
                }
            }
        }
    }
    decision
}

/// Whether an unmarked domain is this VM running as vm_manager or Pacemaker started it: the
/// name and UUID of the XML stored for it (adoption keeps vm_manager's XML and UUID). It is
/// then taken over as it runs, like a domain started outside the agent from the stored XML; a
/// shut-off one stays someone else's definition.
fn same_machine(domain: &ObservedDomain, facts: &Facts<'_>) -> bool {
    domain.state.state.is_active()
        && facts.storage_ready
        && facts.stored.is_some_and(|s| s.uuid == Some(domain.uuid))
}

/// Starts the domain, or counts a crash and waits for its back-off.
fn start_or_wait(facts: &Facts<'_>, decision: &mut Decision, crashed: bool) {
    if crashed {
        let (restarts, outcome) = backoff::record_failure(&decision.restarts, facts.now, facts.policy);
        decision.restarts = restarts;
        match outcome {
            FailureOutcome::GiveUp => {
                // Nothing starts; a pending redefinition waits too.
                decision.steps.retain(|s| matches!(s, Step::Destroy));
                decision.note = Some(Note::GaveUp {
                    failures: decision.restarts.consecutive_failures,
                });
                return;
            }
            FailureOutcome::RetryAt(at) => {
                decision.note = Some(Note::BackingOff {
                    failures: decision.restarts.consecutive_failures,
                    retry_after: at,
                });
                decision.requeue_after = Some(backoff::until(facts.now, at));
                return;
            }
        }
    }
    if let Some(wait) = backoff::retry_wait(&decision.restarts, facts.now) {
        decision.note = Some(Note::BackingOff {
            failures: decision.restarts.consecutive_failures,
            retry_after: decision.restarts.retry_after.as_ref().map_or(facts.now, |t| t.0),
        });
        decision.requeue_after = Some(wait);
        return;
    }
    if decision.restarts.consecutive_failures > 0 {
        decision.restarts = backoff::record_restart(&decision.restarts);
    }
    decision.steps.push(Step::Start);
}

/// Counts a failed start (libvirt refused it) into a decision's restart bookkeeping.
pub fn start_failed(
    restarts: &RestartStatus,
    now: Timestamp,
    policy: &RestartPolicy,
) -> (RestartStatus, Note) {
    let (restarts, outcome) = backoff::record_failure(restarts, now, policy);
    let failures = restarts.consecutive_failures;
    let note = match outcome {
        FailureOutcome::GiveUp => Note::GaveUp { failures },
        FailureOutcome::RetryAt(retry_after) => Note::BackingOff {
            failures,
            retry_after,
        },
    };
    (restarts, note)
}

/// Maps a libvirt state to the reported one.
pub fn reported_state(state: DomainState) -> ReportedState {
    match state {
        DomainState::Running | DomainState::Blocked | DomainState::NoState => ReportedState::Running,
        DomainState::Paused | DomainState::PmSuspended => ReportedState::Paused,
        DomainState::ShuttingDown => ReportedState::ShuttingDown,
        DomainState::ShutOff => ReportedState::ShutOff,
        DomainState::Crashed => ReportedState::Crashed,
    }
}

#[cfg(test)]
mod tests;
