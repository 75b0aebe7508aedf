//! One reconciliation of one VirtualMachine on this node: observe (libvirt, RBD), decide
//! ([`super::domain_reconcile::decide`]), act (libvirt), report (`status.domain`,
//! `status.restarts`, only when changed).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use tracing::{Instrument, debug, info, info_span, warn};

use super::Context;
use super::actions;
use super::domain_reconcile::{
    self, AbsentReason, Decision, Facts, Intent, Note, ObservedDomain, Step, gave_up,
};
use super::error::AgentError;
use super::status::{self, Failure};
use super::stored_xml::Stored;
use crate::api::{
    DesiredState, DomainState, DomainStatus, MIGRATION_TARGET_LABEL, MIGRATION_UID_ANNOTATION,
    MigrationReport, NODE_LABEL, RestartStatus, VirtualMachine, condition_types,
};
use crate::domain_xml::DomainOwner;
use crate::libvirt::DomainState as LvState;
use crate::naming::VmNames;

/// What this node wants for the VM. A live migration (the controller's migration label) makes
/// the source migrate the domain away and the target keep the incoming one.
pub fn intent_of(vm: &VirtualMachine, node: &str) -> Intent {
    let assigned = vm.labels().get(NODE_LABEL).map(String::as_str) == Some(node);
    let migration_target = vm.labels().get(MIGRATION_TARGET_LABEL).map(String::as_str);
    if vm.metadata.deletion_timestamp.is_some() {
        Intent::Absent(AbsentReason::Deleting)
    } else if !assigned {
        if migration_target == Some(node) {
            Intent::Incoming
        } else {
            Intent::Absent(AbsentReason::NotAssigned)
        }
    } else {
        match vm.spec.state {
            DesiredState::Disabled => Intent::Absent(AbsentReason::Disabled),
            DesiredState::Started if migration_target.is_some_and(|t| t != node) => Intent::MigrateAway,
            DesiredState::Stopped => Intent::Stopped,
            DesiredState::Started => Intent::Started,
        }
    }
}

/// Whether the controller reports the VM's storage ready.
pub fn storage_ready(vm: &VirtualMachine) -> bool {
    vm.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == condition_types::STORAGE_READY && c.status == "True")
    })
}

/// Entry point for the kube-runtime controller.
pub(crate) async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, AgentError> {
    let span = info_span!(
        "reconcile",
        vm = %format!("{}/{}", vm.namespace().unwrap_or_default(), vm.name_any()),
        node = %ctx.config.node_name,
        generation = vm.metadata.generation.unwrap_or_default(),
    );
    let result = reconcile_vm(&vm, &ctx).instrument(span).await;
    if result.is_ok()
        && let Some(uid) = vm.uid()
    {
        ctx.errors.lock().expect("error counters").remove(&uid);
    }
    result
}

/// Re-queue with back-off after an error (at most the resync period).
pub(crate) fn error_policy(vm: Arc<VirtualMachine>, error: &AgentError, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut errors = ctx.errors.lock().expect("error counters");
        let n = errors.entry(vm.uid().unwrap_or_default()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = ctx.policy.delay(failures).min(ctx.config.resync_period);
    warn!(
        vm = %format!("{}/{}", vm.namespace().unwrap_or_default(), vm.name_any()),
        node = %ctx.config.node_name,
        retry_in = ?delay,
        "reconcile failed: {error}"
    );
    Action::requeue(delay)
}

/// The RBD namespace of the VM's data, as the controller recorded it in `status.storage`: the
/// controller's Kubernetes-to-RBD namespace mapping is the one source of truth, so an agent
/// started without the same `--rbd-namespace-map` still finds the XML and names the domain
/// alike. Before the controller recorded the storage nothing runs anyway; the agent's own
/// mapping only names the domain it reports as absent.
fn rbd_namespace_of(vm: &VirtualMachine, ctx: &Context) -> String {
    vm.status
        .as_ref()
        .and_then(|s| s.storage.as_ref())
        .map(|storage| storage.namespace.clone())
        .unwrap_or_else(|| {
            ctx.config
                .ceph
                .namespaces
                .rbd_namespace(&vm.namespace().unwrap_or_default())
        })
}

/// The VM's name in RBD and libvirt as the controller recorded it (`status.storage.group`,
/// named like the VM), else `spec.storageName` or the object's name: the domain and the image
/// the XML is read from are named alike by both.
fn storage_name_of(vm: &VirtualMachine) -> String {
    vm.status
        .as_ref()
        .and_then(|s| s.storage.as_ref())
        .map(|storage| storage.group.clone())
        .filter(|group| !group.is_empty())
        .unwrap_or_else(|| vm.storage_name())
}

/// How soon a VM whose report met a newer version of the object is reconciled again (the
/// watch brings that version within moments).
const CONFLICT_RETRY: Duration = Duration::from_millis(100);

/// How soon a VM whose start was held back by a fence is looked at again.
const FENCED_RECHECK: Duration = Duration::from_secs(2);

/// The VM as this node sees it: its names and what the node wants of it.
struct Target {
    what: String,
    uid: String,
    domain_name: String,
    names: VmNames,
    owner: DomainOwner,
    intent: Intent,
    generation: Option<i64>,
}

impl Target {
    fn of(vm: &VirtualMachine, ctx: &Context) -> Self {
        let namespace = vm.namespace().unwrap_or_default();
        let name = vm.name_any();
        let uid = vm.uid().unwrap_or_default();
        let names = VmNames::new(&rbd_namespace_of(vm, ctx), &storage_name_of(vm));
        Target {
            what: format!("VM {namespace}/{name}"),
            domain_name: names.domain(),
            owner: DomainOwner::new(&namespace, &name, &uid),
            intent: intent_of(vm, &ctx.config.node_name),
            generation: vm.metadata.generation,
            uid,
            names,
        }
    }
}

/// What the agent knows of the VM besides libvirt: its last report from this node, the
/// restarts, and whether it stopped the domain itself.
struct Known {
    reported: Option<DomainStatus>,
    restarts: Option<RestartStatus>,
    stopped_by_agent: bool,
    running_since: Option<Timestamp>,
}

impl Known {
    /// From the agent's memory, else from the VM's status (after a restart of the agent).
    fn of(vm: &VirtualMachine, ctx: &Context, target: &Target) -> Self {
        let memory = ctx.memory_of(&target.uid);
        let from_vm = vm.status.as_ref();
        Known {
            reported: memory
                .as_ref()
                .and_then(|m| m.reported.clone())
                .or_else(|| from_vm.and_then(|s| s.domain.clone()))
                .filter(|d| d.node == ctx.config.node_name),
            restarts: match &memory {
                Some(m) => m.restarts.clone(),
                None => from_vm.and_then(|s| s.restarts.clone()),
            },
            stopped_by_agent: memory.as_ref().is_some_and(|m| m.stopped_by_agent),
            running_since: memory.as_ref().and_then(|m| m.running_since),
        }
    }
}

/// A decision with what it was made from: the stored XML it read, or why it could not.
struct Plan {
    decision: Decision,
    stored: Option<Stored>,
    failure: Option<(Failure, AgentError)>,
}

/// What carrying a decision's steps out left.
struct Acted {
    stopped: bool,
    running_since: Option<Timestamp>,
    migrated: Option<MigrationReport>,
    failure: Option<(Failure, AgentError)>,
}

/// Observe, decide, claim, act, report.
async fn reconcile_vm(vm: &VirtualMachine, ctx: &Context) -> Result<Action, AgentError> {
    ctx.stats.reconcile();
    let target = Target::of(vm, ctx);
    let _guard = ctx.locks.lock(&target.domain_name).await;
    let mut known = Known::of(vm, ctx, &target);
    let observed = observe(ctx, &target.what, &target.domain_name, &target.owner).await?;
    let now = Timestamp::now();
    if observed.as_ref().map(|d| d.state.state) == Some(LvState::Running) {
        known.running_since.get_or_insert(now);
    } else {
        known.running_since = None;
    }
    let mut plan = plan(vm, ctx, &target, &known, observed.as_ref(), now).await;
    let (written, report_on) =
        match claim_if_defining(vm, ctx, &target, &known, &plan, observed.as_ref()).await? {
            Claim::NotNeeded => (known.reported.clone(), vm.resource_version()),
            Claim::Made(claimed) => (Some(claimed.domain), claimed.resource_version),
            Claim::Outdated => return Ok(Action::requeue(CONFLICT_RETRY)),
        };
    let acted = act(vm, ctx, &target, &known, &mut plan, now).await?;
    let observed = if plan.decision.steps.is_empty() {
        observed
    } else {
        observe(ctx, &target.what, &target.domain_name, &target.owner).await?
    };
    known.stopped_by_agent = acted.stopped;
    known.running_since = acted
        .running_since
        .filter(|_| observed.as_ref().map(|d| d.state.state) == Some(LvState::Running));
    let failure = plan.failure.take().or(acted.failure);
    let report = Report {
        observed: observed.as_ref(),
        failure: failure.as_ref().map(|(f, _)| f),
        migrated: acted.migrated,
        written,
        on_version: report_on,
    };
    let state = report_state(vm, ctx, &target, &known, &plan.decision, report).await?;
    let Some(state) = state else {
        return Ok(Action::requeue(CONFLICT_RETRY));
    };
    if let Some((f, e)) = failure
        && f.reason != "StartFailed"
    {
        return Err(e);
    }
    Ok(Action::requeue(next_reconcile(ctx, &plan.decision, state)))
}

/// When to look at the VM again without a change.
fn next_reconcile(ctx: &Context, decision: &Decision, state: DomainState) -> Duration {
    if state == DomainState::Failed {
        // Nothing happens before the spec changes (which triggers a reconcile).
        return ctx.config.resync_period;
    }
    match decision.requeue_after {
        Some(after) => ctx
            .config
            .resync_period
            .min(after.max(Duration::from_millis(100))),
        None => ctx.config.resync_period,
    }
}

/// What `claim_if_defining` did.
enum Claim {
    /// The plan defines nothing.
    NotNeeded,
    /// `status.domain` names this node, as written.
    Made(Box<status::Written>),
    /// The VM changed since this decision: the reconcile decides again.
    Outdated,
}

/// Claims the VM (see `claim`) when the plan defines its domain.
async fn claim_if_defining(
    vm: &VirtualMachine,
    ctx: &Context,
    target: &Target,
    known: &Known,
    plan: &Plan,
    observed: Option<&ObservedDomain>,
) -> Result<Claim, AgentError> {
    if !plan.decision.steps.contains(&Step::Define) {
        return Ok(Claim::NotNeeded);
    }
    match claim(ctx, vm, &target.domain_name, observed, known.restarts.as_ref()).await {
        Ok(claimed) => {
            // Remembered at once: if the define fails, the next report is compared with what
            // the server shows now.
            let memory = memory_of(known, Some(claimed.domain.clone()), known.restarts.clone());
            ctx.remember(&target.uid, memory);
            Ok(Claim::Made(Box::new(claimed)))
        }
        Err(e) if e.is_conflict() => {
            debug!(domain = %target.domain_name, "the VM changed before the define: deciding again on the new version");
            Ok(Claim::Outdated)
        }
        Err(e) => Err(e),
    }
}

fn memory_of(
    known: &Known,
    reported: Option<DomainStatus>,
    restarts: Option<RestartStatus>,
) -> super::VmMemory {
    super::VmMemory {
        reported,
        restarts,
        stopped_by_agent: known.stopped_by_agent,
        running_since: known.running_since,
    }
}

/// Reads the stored XML when a domain is wanted and the storage is ready, and decides. A
/// domain is defined and started from what RBD holds now, never from a kept copy: a start is
/// when a changed XML takes effect. A fenced host defines and starts nothing.
async fn plan(
    vm: &VirtualMachine,
    ctx: &Context,
    target: &Target,
    known: &Known,
    observed: Option<&ObservedDomain>,
    now: Timestamp,
) -> Plan {
    let ready = storage_ready(vm);
    let restarts = known.restarts.clone().unwrap_or_default();
    let decide = |stored: Option<&Stored>| {
        domain_reconcile::decide(&Facts {
            now,
            generation: target.generation.unwrap_or(0),
            intent: target.intent,
            storage_ready: ready,
            stored: stored.map(|(_, s)| s),
            domain: observed,
            reported: known.reported.as_ref(),
            restarts: &restarts,
            stopped_by_agent: known.stopped_by_agent,
            running_since: known.running_since,
            policy: &ctx.policy,
            migration: vm.annotations().get(MIGRATION_UID_ANNOTATION).map(String::as_str),
        })
    };
    let unreadable = |e: AgentError| Plan {
        decision: Decision::idle_with(restarts.clone()),
        stored: None,
        failure: Some(unreadable(e)),
    };
    let wanted = matches!(target.intent, Intent::Started | Intent::Stopped)
        && ready
        && !gave_up(known.reported.as_ref(), target.generation.unwrap_or(0));
    let (stored, is_a_copy) = if !wanted {
        (None, false)
    } else if let Some(copy) =
        ctx.stored_xml
            .get(&target.uid, target.generation, ctx.config.stored_xml_recheck)
    {
        (Some(copy), true)
    } else {
        match fresh_stored(ctx, target).await {
            Ok(s) => (Some(s), false),
            Err(e) => return unreadable(e),
        }
    };
    let mut plan = Plan {
        decision: decide(stored.as_ref()),
        stored,
        failure: None,
    };
    if is_a_copy && plan.decision.brings_up() {
        match fresh_stored(ctx, target).await {
            Ok(s) => {
                plan.decision = decide(Some(&s));
                plan.stored = Some(s);
            }
            Err(e) => return unreadable(e),
        }
    }
    if ctx.fence.blocks_starts() && plan.decision.brings_up() {
        // Self-fenced, or fenced by the controller: the VM may be running elsewhere already.
        plan.decision
            .steps
            .retain(|s| !matches!(s, Step::Define | Step::Start));
        plan.decision.requeue_after = Some(FENCED_RECHECK);
        debug!(domain = %target.domain_name, "not starting: this host is fenced");
    }
    if !plan.decision.steps.is_empty() {
        debug!(steps = ?plan.decision.steps, note = ?plan.decision.note, "acting");
    }
    plan
}

/// The XML as RBD holds it now, kept for the next reconciles.
async fn fresh_stored(ctx: &Context, target: &Target) -> Result<Stored, AgentError> {
    let stored = read_stored(ctx, &target.what, &target.names).await?;
    ctx.stored_xml.put(&target.uid, target.generation, &stored);
    Ok(stored)
}

/// Carries the steps out in order, up to the first that fails. A failed start is counted in
/// the restarts and reported, not an error of the reconcile; a lost libvirt connection or a VM
/// no longer assigned here ends the reconcile at once.
async fn act(
    vm: &VirtualMachine,
    ctx: &Context,
    target: &Target,
    known: &Known,
    plan: &mut Plan,
    now: Timestamp,
) -> Result<Acted, AgentError> {
    let mut acted = Acted {
        stopped: known.stopped_by_agent,
        running_since: known.running_since,
        migrated: None,
        failure: None,
    };
    let decision = &mut plan.decision;
    for step in decision.steps.clone() {
        let result = run_step(
            ctx,
            vm,
            &target.what,
            &target.domain_name,
            &target.owner,
            step,
            vm.spec.stop_timeout(),
            plan.stored.as_ref(),
        )
        .await;
        // Even a failed step may have changed the domain: the Hypervisor status follows.
        ctx.domains_changed.notify_one();
        let e = match result {
            Ok(report) => {
                if report.as_ref().is_some_and(|r| r.succeeded) {
                    decision.note = Some(Note::MigratedAway);
                }
                acted.migrated = acted.migrated.take().or(report);
                match step {
                    Step::Stop => acted.stopped = true,
                    Step::Start => {
                        acted.stopped = false;
                        acted.running_since = Some(Timestamp::now());
                        info!(domain = %target.domain_name, "started");
                    }
                    _ => {}
                }
                continue;
            }
            Err(e) if e.is_libvirt_connection() || matches!(e, AgentError::NotAssigned(_)) => return Err(e),
            Err(e) => e,
        };
        if step == Step::Start {
            let (restarts, note) = domain_reconcile::start_failed(&decision.restarts, now, &ctx.policy);
            decision.restarts = restarts;
            if let Note::BackingOff { retry_after, .. } = &note {
                decision.requeue_after = Some(super::backoff::until(now, *retry_after));
            }
            decision.note = Some(note);
            warn!(domain = %target.domain_name, "start failed: {e}");
        }
        let reason = match step {
            Step::Stop => "StopFailed",
            Step::Destroy => "DestroyFailed",
            Step::Undefine => "UndefineFailed",
            Step::Define => "DefineFailed",
            Step::Start => "StartFailed",
            Step::Migrate => "MigrationFailed",
        };
        acted.failure = Some((
            Failure {
                reason,
                message: e.to_string(),
            },
            e,
        ));
        break;
    }
    Ok(acted)
}

/// What the report is made of, besides the decision.
struct Report<'a> {
    observed: Option<&'a ObservedDomain>,
    failure: Option<&'a Failure>,
    migrated: Option<MigrationReport>,
    /// The last `status.domain` this node wrote.
    written: Option<DomainStatus>,
    /// The version of the VM the report is written on.
    on_version: Option<String>,
}

/// Writes `status.domain` and `status.restarts` when they changed, and remembers them. `None`
/// when the VM changed meanwhile: the reconcile decides again on the new version.
async fn report_state(
    vm: &VirtualMachine,
    ctx: &Context,
    target: &Target,
    known: &Known,
    decision: &Decision,
    report: Report<'_>,
) -> Result<Option<DomainState>, AgentError> {
    let node = ctx.config.node_name.as_str();
    let mut status = status::domain_status(
        node,
        &target.domain_name,
        target.generation,
        report.observed,
        decision.note.as_ref(),
        report.failure,
    );
    status.migration = match (report.migrated, target.intent) {
        (Some(migrated), _) => Some(migrated),
        // The source keeps its account while the VM is marked for that migration: dropping a
        // refusal would let it try again before the controller ends the migration.
        (None, Intent::MigrateAway) => super::migration::own_account(vm, known.reported.as_ref()),
        (None, _) => super::migration::incoming_report(ctx, vm, target.intent, &target.domain_name).await,
    };
    let restarts = if known.restarts.is_none() && decision.restarts == RestartStatus::default() {
        None
    } else {
        Some(decision.restarts.clone())
    };
    let unchanged = report
        .written
        .as_ref()
        .is_some_and(|r| status::same_report(r, &status))
        && restarts == known.restarts;
    let mut written = report.written;
    if !unchanged && super::migration::may_report(vm, target.intent, node, report.observed) {
        let api: Api<VirtualMachine> =
            Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
        // Written on the version this decision was made from: a copy that is out of date (the
        // VM moved to another node while this agent was cut off) must not replace the report
        // of the node that runs the VM now.
        let w = match status::apply(&api, vm, status.clone(), restarts.as_ref(), report.on_version).await {
            Ok(w) => w.domain,
            Err(e) if e.is_conflict() => {
                debug!(domain = %target.domain_name, "the VM changed meanwhile: deciding again on the new version");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        ctx.stats.vm_status_write();
        if known.reported.as_ref().map(|r| r.state) != Some(w.state) {
            info!(domain = %target.domain_name, state = ?w.state, reason = ?w.reason, "domain state");
        }
        written = Some(w);
    }
    ctx.remember(&target.uid, memory_of(known, written, restarts));
    Ok(Some(status.state))
}

async fn observe(
    ctx: &Context,
    what: &str,
    domain_name: &str,
    owner: &DomainOwner,
) -> Result<Option<ObservedDomain>, AgentError> {
    let (c, n, o) = (what.to_owned(), domain_name.to_owned(), owner.clone());
    ctx.libvirt
        .run(format!("{what}: observe domain"), move |hv| {
            actions::observe(hv, &c, &n, &o)
        })
        .await
}

fn unreadable(e: AgentError) -> (Failure, AgentError) {
    (
        Failure {
            reason: "StorageUnreadable",
            message: e.to_string(),
        },
        e,
    )
}

async fn read_stored(ctx: &Context, what: &str, names: &VmNames) -> Result<Stored, AgentError> {
    let context = format!("{what}: read the domain XML from RBD");
    let text = ctx
        .ceph
        .read_xml(context.clone(), names.rbd_namespace.clone(), names.system_image())
        .await?;
    let identity = actions::stored_identity(&text).map_err(|e| AgentError::xml(context, e))?;
    Ok((text, identity))
}

/// Says, before a define, that this node is about to hold the VM's domain: `status.domain`
/// names this node, written on the version of the VM that assigns it here. The controller
/// moves a VM to another node with a write conditional on the version it decided from, so of
/// a claim and a move made at once, one fails. A move that comes after finds this node named
/// and waits for a heartbeat, newer than this claim, that leaves the VM out; a claim that
/// fails means the VM moved, and nothing is defined.
async fn claim(
    ctx: &Context,
    vm: &VirtualMachine,
    domain_name: &str,
    observed: Option<&ObservedDomain>,
    restarts: Option<&RestartStatus>,
) -> Result<status::Written, AgentError> {
    let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &vm.namespace().unwrap_or_default());
    let report = status::domain_status(
        &ctx.config.node_name,
        domain_name,
        vm.metadata.generation,
        observed,
        None,
        None,
    );
    let claimed = status::apply(&api, vm, report, restarts, vm.resource_version()).await?;
    ctx.stats.vm_status_write();
    Ok(claimed)
}

/// Holds the assignment gate for a define, once the cache still assigns the VM here (see
/// `Context::assignment_gate`).
async fn assigned<'a>(
    ctx: &'a Context,
    vm: &VirtualMachine,
    context: &str,
) -> Result<tokio::sync::RwLockReadGuard<'a, ()>, AgentError> {
    let gate = ctx.assignment_gate.read().await;
    if !ctx.is_assigned_here(vm) {
        return Err(AgentError::NotAssigned(context.to_owned()));
    }
    Ok(gate)
}

/// Runs one step; a live migration returns how it went (a refusal is reported, not an error).
#[allow(clippy::too_many_arguments)]
async fn run_step(
    ctx: &Context,
    vm: &VirtualMachine,
    what: &str,
    domain_name: &str,
    owner: &DomainOwner,
    step: Step,
    stop_timeout: Duration,
    stored: Option<&Stored>,
) -> Result<Option<MigrationReport>, AgentError> {
    let context = format!("{what}: {step:?}");
    let stats = ctx.stats.clone();
    let name = domain_name.to_owned();
    let c = context.clone();
    match step {
        Step::Stop => {
            let outcome = ctx
                .libvirt
                .run(context, move |hv| {
                    actions::stop(hv, &stats, &c, &name, stop_timeout)
                })
                .await?;
            info!(domain = %domain_name, ?outcome, "stopped");
            Ok(None)
        }
        Step::Destroy => {
            ctx.libvirt
                .run(context, move |hv| actions::destroy(hv, &stats, &c, &name))
                .await?;
            Ok(None)
        }
        Step::Undefine => {
            ctx.libvirt
                .run(context, move |hv| actions::undefine(hv, &stats, &c, &name))
                .await?;
            info!(domain = %domain_name, "undefined");
            Ok(None)
        }
        Step::Define => {
            let _assigned = assigned(ctx, vm, &context).await?;
            let Some((text, _)) = stored else {
                return Err(AgentError::Config(format!(
                    "{context}: no stored XML to define from"
                )));
            };
            let xml =
                actions::prepare_xml(text, domain_name, owner).map_err(|e| AgentError::xml(&context, e))?;
            ctx.libvirt
                .run(context, move |hv| actions::define(hv, &stats, &c, &xml).map(drop))
                .await?;
            info!(domain = %domain_name, "defined");
            Ok(None)
        }
        Step::Start => {
            // Checked, not held: the domain is defined, so every heartbeat lists it whatever
            // the start does, and a start, slow under load, must not hold the heartbeat back.
            drop(assigned(ctx, vm, &context).await?);
            ctx.libvirt
                .run(context, move |hv| actions::start(hv, &stats, &c, &name))
                .await?;
            Ok(None)
        }
        Step::Migrate => super::migration::migrate(ctx, vm, what, domain_name)
            .await
            .map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use std::collections::BTreeMap;

    fn vm(node: Option<&str>, state: DesiredState) -> VirtualMachine {
        let spec: crate::api::VirtualMachineSpec = serde_json::from_value(serde_json::json!({
            "state": state,
            "xml": "<domain/>",
            "systemDisk": {"source": {"blank": {}}, "size": "1Mi"},
        }))
        .unwrap();
        let mut vm = VirtualMachine::new("guest0", spec);
        if let Some(node) = node {
            vm.metadata.labels = Some(BTreeMap::from([(NODE_LABEL.to_owned(), node.to_owned())]));
        }
        vm
    }

    #[test]
    fn intents() {
        assert_eq!(
            intent_of(&vm(Some("hv1"), DesiredState::Started), "hv1"),
            Intent::Started
        );
        assert_eq!(
            intent_of(&vm(Some("hv1"), DesiredState::Stopped), "hv1"),
            Intent::Stopped
        );
        assert_eq!(
            intent_of(&vm(Some("hv1"), DesiredState::Disabled), "hv1"),
            Intent::Absent(AbsentReason::Disabled)
        );
        assert_eq!(
            intent_of(&vm(Some("hv2"), DesiredState::Started), "hv1"),
            Intent::Absent(AbsentReason::NotAssigned)
        );
        assert_eq!(
            intent_of(&vm(None, DesiredState::Started), "hv1"),
            Intent::Absent(AbsentReason::NotAssigned)
        );
        let mut deleting = vm(Some("hv1"), DesiredState::Started);
        deleting.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        assert_eq!(
            intent_of(&deleting, "hv1"),
            Intent::Absent(AbsentReason::Deleting)
        );
    }

    #[test]
    fn storage_readiness() {
        let mut v = vm(Some("hv1"), DesiredState::Started);
        assert!(!storage_ready(&v));
        let condition = |status: &str| Condition {
            type_: condition_types::STORAGE_READY.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            last_transition_time: Time(Timestamp::now()),
            observed_generation: None,
        };
        v.status = Some(crate::api::VirtualMachineStatus {
            conditions: vec![condition("False")],
            ..Default::default()
        });
        assert!(!storage_ready(&v));
        v.status.as_mut().unwrap().conditions = vec![condition("True")];
        assert!(storage_ready(&v));
    }
}
