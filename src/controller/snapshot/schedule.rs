//! Reconciles one VirtualMachineSnapshotSchedule: takes the snapshots of each run (objects
//! named `<schedule>-<vm>-<yyyymmddhhmm>`, labelled as the schedule's), counts failed runs and
//! suspends itself after `maxFailures`, and applies retention to the snapshots it owns (and to
//! those of its VMs taken by hand only with `includeUnowned`, once older than `unownedMinAge`;
//! never to another schedule's).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::core::Selector;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use tracing::info;

use super::cron::{Cron, parse_duration, time_zone};
use super::{Error, SnapshotContext, now, reset_failures, write_status};
use crate::api::{
    Retention, SCHEDULE_LABEL, SCHEDULE_UID_LABEL, SCHEDULED_TIME_ANNOTATION, SnapshotPhase, VM_LABEL,
    VirtualMachine, VirtualMachineSnapshot, VirtualMachineSnapshotSchedule,
    VirtualMachineSnapshotScheduleSpec, VirtualMachineSnapshotScheduleStatus, VirtualMachineSnapshotSpec,
    condition_types as ct,
};
use crate::controller::conditions::{Desired, merge};
use crate::controller::frame;

const KIND: &str = "VirtualMachineSnapshotSchedule";
/// Retention by age is re-evaluated at least this often.
const RECHECK: Duration = Duration::from_secs(60);

/// One snapshot as retention sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapView {
    pub name: String,
    pub vm: String,
    /// When it was taken (creation time, else the object's).
    pub time: Timestamp,
    /// The RBD snapshot id on the system image: orders snapshots taken within one second
    /// (the times have a one-second resolution).
    pub id: Option<i64>,
    pub phase: Option<SnapshotPhase>,
    pub origin: Origin,
}

/// Who took a snapshot, as its labels say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    ThisSchedule,
    /// Labelled with another schedule's UID (that schedule may be gone): never this one's to
    /// delete.
    OtherSchedule,
    /// No schedule label: taken by hand (kubectl, the plugin) or adopted.
    ByHand,
}

impl Origin {
    pub fn of(snap: &VirtualMachineSnapshot, schedule_uid: &str) -> Origin {
        match snap.labels().get(SCHEDULE_UID_LABEL) {
            Some(uid) if uid == schedule_uid => Origin::ThisSchedule,
            Some(_) => Origin::OtherSchedule,
            None => Origin::ByHand,
        }
    }
}

/// What retention decided.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    /// Snapshot objects to delete.
    pub delete: Vec<String>,
    /// Snapshots taken by hand that retention would delete but that are younger than
    /// `unownedMinAge`.
    pub kept_by_hand: Vec<String>,
}

/// The snapshots retention deletes: per VM, those older than `keepLast` newer Ready ones, older
/// than `maxAge` or `before`, or all; never one still being taken, nor another schedule's;
/// those taken by hand only with `includeUnowned`, and only once older than `unownedMinAge`
/// (never without it).
pub fn select_for_deletion(
    snaps: &[SnapView],
    retention: &Retention,
    now: Timestamp,
) -> Result<Selection, String> {
    let max_age = retention.max_age.as_deref().map(parse_duration).transpose()?;
    let by_hand_min_age = retention
        .unowned_min_age
        .as_deref()
        .map(parse_duration)
        .transpose()?;
    let old_enough = |s: &SnapView, min: std::time::Duration| {
        let min = k8s_openapi::jiff::SignedDuration::try_from(min)
            .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
        now.duration_since(s.time) >= min
    };
    let mut by_vm: BTreeMap<&str, Vec<&SnapView>> = BTreeMap::new();
    for s in snaps {
        let counted = match s.origin {
            Origin::ThisSchedule => true,
            Origin::ByHand => retention.include_unowned,
            Origin::OtherSchedule => false,
        };
        if !counted {
            continue;
        }
        if !matches!(s.phase, Some(SnapshotPhase::Ready | SnapshotPhase::Failed)) {
            continue;
        }
        by_vm.entry(&s.vm).or_default().push(s);
    }
    let mut out = Selection::default();
    for (_, mut list) in by_vm {
        list.sort_by(|a, b| (b.time, b.id, &b.name).cmp(&(a.time, a.id, &a.name)));
        let mut ready_seen = 0i64;
        for s in list {
            let ready = s.phase == Some(SnapshotPhase::Ready);
            let mut delete = retention.all == Some(true);
            if let Some(keep) = retention.keep_last {
                if ready {
                    ready_seen += 1;
                    delete |= ready_seen > i64::from(keep);
                } else {
                    // A failed snapshot older than the N kept ones goes with them.
                    delete |= ready_seen >= i64::from(keep);
                }
            }
            if let Some(age) = max_age {
                let age = k8s_openapi::jiff::SignedDuration::try_from(age)
                    .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
                delete |= now.duration_since(s.time) > age;
            }
            if let Some(before) = &retention.before {
                delete |= s.time < before.0;
            }
            if !delete {
                continue;
            }
            // A snapshot taken by hand still counts among the kept ones above while too young.
            match (s.origin, by_hand_min_age) {
                (Origin::ByHand, Some(min)) if old_enough(s, min) => out.delete.push(s.name.clone()),
                (Origin::ByHand, _) => out.kept_by_hand.push(s.name.clone()),
                _ => out.delete.push(s.name.clone()),
            }
        }
    }
    Ok(out)
}

/// The latest scheduled time in `(after, now]`, if any (missed runs are not caught up one by
/// one: only the latest is taken).
pub fn due_run(
    cron: &Cron,
    tz: &k8s_openapi::jiff::tz::TimeZone,
    after: Timestamp,
    now: Timestamp,
) -> Option<Timestamp> {
    let mut due = None;
    let mut t = after;
    for _ in 0..100_000 {
        match cron.next_after(t, tz) {
            Some(next) if next <= now => {
                due = Some(next);
                t = next;
            }
            _ => break,
        }
    }
    due
}

/// Letters and digits of the schedule name: the RBD snapshot name prefix.
pub fn rbd_prefix(schedule: &str) -> String {
    schedule.chars().filter(|c| c.is_ascii_alphanumeric()).collect()
}

fn stamp(t: Timestamp) -> String {
    t.strftime("%Y%m%d%H%M").to_string()
}

/// What a schedule's spec says once read: CEL catches at admission what it can, the rest is
/// a reason and a message for a condition.
pub struct Spec {
    pub tz: k8s_openapi::jiff::tz::TimeZone,
    pub cron: Option<Cron>,
    /// The VMs it selects by label, as kube's selector (`None`: by name only).
    pub selector: Option<Selector>,
}

/// Reads the time zone, the cron expression and the label selector of a schedule.
pub fn read_spec(spec: &VirtualMachineSnapshotScheduleSpec) -> Result<Spec, (&'static str, String)> {
    let tz = time_zone(spec.time_zone.as_deref()).map_err(|m| ("InvalidTimeZone", m))?;
    let cron = (spec.schedule.as_deref().map(Cron::parse).transpose())
        .map_err(|m| ("InvalidSchedule", format!("invalid schedule: {m}")))?;
    let selector = (spec.selector.clone().map(Selector::try_from).transpose())
        .map_err(|e| ("InvalidSelector", format!("invalid spec.selector: {e}")))?;
    Ok(Spec { tz, cron, selector })
}

fn conditions_for(ready: bool, reason: &str, message: &str, stalled: bool) -> Vec<Desired> {
    let mut out = vec![Desired::new(ct::READY, ready, reason, message)];
    if stalled {
        out.push(Desired::new(ct::STALLED, true, reason, message));
    }
    out
}

pub async fn reconcile(
    schedule: Arc<VirtualMachineSnapshotSchedule>,
    ctx: Arc<SnapshotContext>,
) -> Result<Action, Error> {
    let namespace = schedule.namespace().unwrap_or_default();
    let run = async {
        // The status carries counters (purgedTotal, failures) that each run adds to: start from
        // the object as the API server has it, not from a cache that may miss the last write.
        let api: Api<VirtualMachineSnapshotSchedule> = Api::namespaced(ctx.client.clone(), &namespace);
        let Some(fresh) = api.get_opt(&schedule.name_any()).await? else {
            return Ok(Action::await_change());
        };
        if fresh.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let action = apply(&fresh, &ctx, &namespace).await?;
        reset_failures(&ctx, &fresh);
        Ok(action)
    };
    frame::observed(KIND, schedule.as_ref(), &ctx.metrics, run).await
}

async fn apply(
    schedule: &VirtualMachineSnapshotSchedule,
    ctx: &SnapshotContext,
    namespace: &str,
) -> Result<Action, Error> {
    let api: Api<VirtualMachineSnapshotSchedule> = Api::namespaced(ctx.client.clone(), namespace);
    let snapshots: Api<VirtualMachineSnapshot> = Api::namespaced(ctx.client.clone(), namespace);
    let previous = schedule.status.clone().unwrap_or_default();
    let mut status = previous.clone();
    let generation = schedule.metadata.generation;
    let uid = schedule.metadata.uid.clone().unwrap_or_default();
    let time = now();
    let write = |mut status: VirtualMachineSnapshotScheduleStatus, conditions: Vec<Desired>| {
        let api = api.clone();
        let previous = previous.clone();
        let time = time.clone();
        async move {
            status.observed_generation = generation;
            status.conditions = merge(&previous.conditions, &conditions, generation, &time);
            if status != previous {
                write_status(&api, schedule, &status).await?;
            }
            Ok::<_, Error>(())
        }
    };

    let Spec { tz, cron, selector } = match read_spec(&schedule.spec) {
        Ok(spec) => spec,
        Err((reason, message)) => {
            status.next_schedule_time = None;
            write(status, conditions_for(false, reason, &message, true)).await?;
            ctx.publish(schedule, EventType::Warning, reason, "Schedule", message)
                .await;
            return Ok(Action::await_change());
        }
    };
    let vms = selected_vms(schedule, ctx, namespace, selector.as_ref()).await?;
    let owned = snapshots
        .list(&ListParams::default().labels(&format!("{SCHEDULE_UID_LABEL}={uid}")))
        .await?
        .items;
    account_last_run(schedule, ctx, &mut status, &owned).await;
    // A spec change resumes a schedule that suspended itself.
    if status.auto_suspended_generation.is_some() && status.auto_suspended_generation != generation {
        status.auto_suspended_generation = None;
        status.consecutive_failures = 0;
    }
    let suspended = schedule.spec.suspend || status.auto_suspended_generation.is_some();
    let now_ts = Timestamp::now();
    let requeue = match (&cron, suspended) {
        (Some(cron), false) => {
            run_if_due(schedule, ctx, namespace, &vms, (cron, &tz), &mut status, now_ts).await?
        }
        _ => {
            status.next_schedule_time = None;
            RECHECK
        }
    };
    let mut kept_by_hand = 0;
    if let (false, Some(retention)) = (suspended, &schedule.spec.retention) {
        let views = retention_views(&snapshots, retention, &owned, &vms, &uid, &status, now_ts).await?;
        let selection = match select_for_deletion(&views, retention, now_ts) {
            Ok(selection) => selection,
            Err(message) => {
                write(status, conditions_for(false, "InvalidRetention", &message, true)).await?;
                return Ok(Action::await_change());
            }
        };
        kept_by_hand = selection.kept_by_hand.len();
        status.purged_total += purge(schedule, ctx, &snapshots, selection.delete).await?;
    }
    status.snapshots = owned_names(&owned, now_ts);
    let conditions = conditions_of(schedule, &status, vms.len(), kept_by_hand);
    write(status, conditions).await?;
    Ok(Action::requeue(requeue))
}

/// When the run that created a snapshot was due.
fn scheduled_at(snapshot: &VirtualMachineSnapshot) -> Option<Timestamp> {
    snapshot
        .annotations()
        .get(SCHEDULED_TIME_ANNOTATION)
        .and_then(|t| t.parse::<Timestamp>().ok())
}

/// The VMs the schedule names, and those its selector matches.
async fn selected_vms(
    schedule: &VirtualMachineSnapshotSchedule,
    ctx: &SnapshotContext,
    namespace: &str,
    selector: Option<&Selector>,
) -> Result<BTreeSet<String>, Error> {
    let mut vms: BTreeSet<String> = schedule.spec.vm_names.iter().cloned().collect();
    if let Some(selector) = selector {
        let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), namespace);
        let selected = api.list(&ListParams::default().labels_from(selector)).await?;
        vms.extend(selected.items.iter().map(|vm| vm.name_any()));
    }
    Ok(vms)
}

/// Counts the last run once all its snapshots ended: a failure adds to the consecutive ones and
/// may suspend the schedule (`maxFailures`), a success resets them.
async fn account_last_run(
    schedule: &VirtualMachineSnapshotSchedule,
    ctx: &SnapshotContext,
    status: &mut VirtualMachineSnapshotScheduleStatus,
    owned: &[VirtualMachineSnapshot],
) {
    let Some(last) = status.last_schedule_time.clone() else {
        return;
    };
    if status.last_evaluated_time.as_ref().is_some_and(|e| e.0 >= last.0) {
        return;
    }
    let phases: Vec<Option<SnapshotPhase>> = owned
        .iter()
        .filter(|s| scheduled_at(s) == Some(last.0))
        .map(|s| s.status.as_ref().and_then(|st| st.phase))
        .collect();
    let finished = phases
        .iter()
        .all(|p| matches!(p, Some(SnapshotPhase::Ready | SnapshotPhase::Failed)));
    if !finished {
        return;
    }
    status.last_evaluated_time = Some(last.clone());
    if !phases.contains(&Some(SnapshotPhase::Failed)) && !phases.is_empty() {
        status.consecutive_failures = 0;
        status.last_successful_time = Some(last);
        ctx.metrics.operation(KIND, "scheduled-run", "ok");
        return;
    }
    status.consecutive_failures += 1;
    ctx.metrics.operation(KIND, "scheduled-run", "failed");
    let note = format!(
        "run of {} failed ({} consecutive)",
        last.0, status.consecutive_failures
    );
    ctx.publish(schedule, EventType::Warning, "RunFailed", "Schedule", note)
        .await;
    let max = schedule.spec.max_failures;
    if max > 0 && status.consecutive_failures >= max && status.auto_suspended_generation.is_none() {
        status.auto_suspended_generation = schedule.metadata.generation;
        let note = format!(
            "{} consecutive failed runs: schedule suspended; change its spec to resume",
            status.consecutive_failures
        );
        ctx.publish(schedule, EventType::Warning, "AutoSuspended", "Schedule", note)
            .await;
    }
}

/// Takes the run that is due, if one is, and says when the next one is; returns when to look
/// again.
async fn run_if_due(
    schedule: &VirtualMachineSnapshotSchedule,
    ctx: &SnapshotContext,
    namespace: &str,
    vms: &BTreeSet<String>,
    (cron, tz): (&Cron, &k8s_openapi::jiff::tz::TimeZone),
    status: &mut VirtualMachineSnapshotScheduleStatus,
    now_ts: Timestamp,
) -> Result<Duration, Error> {
    let after = status
        .last_schedule_time
        .as_ref()
        .map(|t| t.0)
        .or_else(|| schedule.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .unwrap_or(now_ts);
    if let Some(run) = due_run(cron, tz, after, now_ts) {
        let snapshots: Api<VirtualMachineSnapshot> = Api::namespaced(ctx.client.clone(), namespace);
        let mut created = 0;
        for vm in vms {
            match snapshots
                .create(
                    &PostParams::default(),
                    &scheduled_snapshot(schedule, namespace, vm, run),
                )
                .await
            {
                Ok(_) => created += 1,
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        status.last_schedule_time = Some(Time(run));
        info!(run = %run, vms = vms.len(), "scheduled run");
        let note = format!("run of {run}: {created} VirtualMachineSnapshot(s) created");
        ctx.publish(schedule, EventType::Normal, "SnapshotsCreated", "Schedule", note)
            .await;
    }
    let next_after = status
        .last_schedule_time
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(after)
        .max(now_ts);
    status.next_schedule_time = cron.next_after(next_after, tz).map(Time);
    Ok(match &status.next_schedule_time {
        Some(next) => RECHECK.min(next.0.duration_since(now_ts).unsigned_abs() + Duration::from_millis(200)),
        None => RECHECK,
    })
}

/// The snapshot of `vm` for the run due at `run`, named and labelled after the schedule.
fn scheduled_snapshot(
    schedule: &VirtualMachineSnapshotSchedule,
    namespace: &str,
    vm: &str,
    run: Timestamp,
) -> VirtualMachineSnapshot {
    let uid = schedule.metadata.uid.clone().unwrap_or_default();
    VirtualMachineSnapshot {
        metadata: ObjectMeta {
            name: Some(format!("{}-{vm}-{}", schedule.name_any(), stamp(run))),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([
                (SCHEDULE_LABEL.to_owned(), schedule.name_any()),
                (SCHEDULE_UID_LABEL.to_owned(), uid),
                (VM_LABEL.to_owned(), vm.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(
                SCHEDULED_TIME_ANNOTATION.to_owned(),
                run.to_string(),
            )])),
            ..Default::default()
        },
        spec: VirtualMachineSnapshotSpec {
            vm_name: vm.to_owned(),
            snapshot_name: Some(format!("{}{}", rbd_prefix(&schedule.name_any()), stamp(run))),
            description: Some(format!("taken by schedule {}", schedule.name_any())),
            deletion_policy: Default::default(),
            failure_deadline: schedule.spec.snapshot_deadline.clone(),
            adopt: false,
        },
        status: None,
    }
}

/// The snapshots retention may count: the schedule's own (every one in the namespace with
/// `includeUnowned`), of the schedule's VMs, not being deleted. A failed run not counted yet
/// stays until it is.
async fn retention_views(
    snapshots: &Api<VirtualMachineSnapshot>,
    retention: &crate::api::Retention,
    owned: &[VirtualMachineSnapshot],
    vms: &BTreeSet<String>,
    uid: &str,
    status: &VirtualMachineSnapshotScheduleStatus,
    now_ts: Timestamp,
) -> Result<Vec<SnapView>, Error> {
    let listed;
    let candidates = if retention.include_unowned {
        listed = snapshots.list(&ListParams::default()).await?.items;
        &listed[..]
    } else {
        owned
    };
    let not_counted_yet = |s: &VirtualMachineSnapshot| {
        s.status.as_ref().and_then(|st| st.phase) == Some(SnapshotPhase::Failed)
            && scheduled_at(s).is_some_and(|t| status.last_evaluated_time.as_ref().is_none_or(|e| t > e.0))
    };
    Ok(candidates
        .iter()
        .filter(|s| vms.contains(&s.spec.vm_name) && s.metadata.deletion_timestamp.is_none())
        .filter(|s| !(Origin::of(s, uid) == Origin::ThisSchedule && not_counted_yet(s)))
        .map(|s| {
            let st = s.status.clone().unwrap_or_default();
            SnapView {
                name: s.name_any(),
                vm: s.spec.vm_name.clone(),
                time: st
                    .creation_time
                    .map(|t| t.0)
                    .or_else(|| s.metadata.creation_timestamp.as_ref().map(|t| t.0))
                    .unwrap_or(now_ts),
                id: st.disks.first().and_then(|d| d.snapshot_id),
                phase: st.phase,
                origin: Origin::of(s, uid),
            }
        })
        .collect())
}

/// Deletes the snapshots retention selected, a few requests at a time rather than one after
/// the other (the RBD work happens in each snapshot's own cleanup); returns how many went.
async fn purge(
    schedule: &VirtualMachineSnapshotSchedule,
    ctx: &SnapshotContext,
    snapshots: &Api<VirtualMachineSnapshot>,
    doomed: Vec<String>,
) -> Result<i64, Error> {
    let deletions: Vec<_> = futures::stream::iter(doomed.clone())
        .map(|name| {
            let snapshots = snapshots.clone();
            async move { snapshots.delete(&name, &DeleteParams::default()).await }
        })
        .buffer_unordered(PURGE_REQUESTS_IN_FLIGHT)
        .collect()
        .await;
    let mut purged = 0;
    let mut first_error = None;
    for deletion in deletions {
        match deletion {
            Ok(_) => {
                purged += 1;
                ctx.metrics.operation(KIND, "purge", "ok");
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                ctx.metrics.operation(KIND, "purge", "error");
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e.into());
    }
    if purged > 0 {
        let note = purge_note(purged, &doomed);
        ctx.publish(schedule, EventType::Normal, "SnapshotsPurged", "Retention", note)
            .await;
    }
    Ok(purged)
}

/// The schedule's own snapshots not being deleted, oldest first.
fn owned_names(owned: &[VirtualMachineSnapshot], now_ts: Timestamp) -> Vec<String> {
    let mut named: Vec<(Timestamp, String)> = owned
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none())
        .map(|s| {
            let created = s.metadata.creation_timestamp.as_ref().map(|t| t.0);
            (created.unwrap_or(now_ts), s.name_any())
        })
        .collect();
    named.sort();
    named.into_iter().map(|(_, n)| n).collect()
}

/// Ready and Stalled, by what the schedule is doing.
fn conditions_of(
    schedule: &VirtualMachineSnapshotSchedule,
    status: &VirtualMachineSnapshotScheduleStatus,
    vms: usize,
    kept_by_hand: usize,
) -> Vec<Desired> {
    if status.auto_suspended_generation.is_some() {
        let message = format!(
            "suspended after {} consecutive failed runs; change the spec to resume",
            status.consecutive_failures
        );
        return conditions_for(false, "AutoSuspended", &message, true);
    }
    if schedule.spec.suspend {
        return conditions_for(
            true,
            "Suspended",
            "suspended: no snapshot is taken or deleted",
            false,
        );
    }
    if vms == 0 {
        return conditions_for(true, "NoVirtualMachines", "no VirtualMachine matches", false);
    }
    let mut what = match &status.next_schedule_time {
        Some(next) => format!("{vms} VM(s); next run {}", next.0),
        None => format!("{vms} VM(s); retention only"),
    };
    if kept_by_hand > 0 {
        let min_age = schedule
            .spec
            .retention
            .as_ref()
            .and_then(|r| r.unowned_min_age.as_deref());
        what.push_str(&format!(
            "; {kept_by_hand} snapshot(s) taken by hand kept until older than unownedMinAge ({})",
            min_age.unwrap_or("unset: never")
        ));
    }
    conditions_for(true, "Active", &what, false)
}

/// DELETE requests of one purge in flight at once.
const PURGE_REQUESTS_IN_FLIGHT: usize = 16;

/// The Event note of a purge: the API server refuses notes over 1 KiB, and a purge of a
/// thousand snapshots would name them all, so the list is cut.
fn purge_note(purged: i64, names: &[String]) -> String {
    const MAX: usize = 900;
    let mut note = format!("retention deleted {purged} snapshot(s): ");
    for (shown, name) in names.iter().enumerate() {
        if note.len() + name.len() + 2 > MAX {
            note.push_str(&format!(" and {} more", names.len() - shown));
            return note;
        }
        if shown > 0 {
            note.push_str(", ");
        }
        note.push_str(name);
    }
    note
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_purge_note_stays_under_the_event_limit() {
        let few: Vec<String> = vec!["a".into(), "b".into()];
        assert_eq!(
            super::purge_note(2, &few),
            "retention deleted 2 snapshot(s): a, b"
        );
        let many: Vec<String> = (0..1000).map(|i| format!("nightly-20261123-{i:04}")).collect();
        let note = super::purge_note(1000, &many);
        assert!(note.len() <= 1024, "{}", note.len());
        assert!(note.ends_with(" more"), "{note}");
    }

    use super::*;

    fn view(name: &str, vm: &str, secs: i64, phase: SnapshotPhase, owned: bool) -> SnapView {
        SnapView {
            name: name.into(),
            vm: vm.into(),
            time: Timestamp::from_second(secs).unwrap(),
            id: None,
            phase: Some(phase),
            origin: if owned {
                Origin::ThisSchedule
            } else {
                Origin::ByHand
            },
        }
    }

    fn deleted(snaps: &[SnapView], retention: &Retention, now: Timestamp) -> Vec<String> {
        select_for_deletion(snaps, retention, now).unwrap().delete
    }

    #[test]
    fn keep_last_per_vm_owned_only() {
        use SnapshotPhase::*;
        let snaps = vec![
            view("a1", "a", 100, Ready, true),
            view("a2", "a", 200, Ready, true),
            view("a3", "a", 300, Ready, true),
            view("a4", "a", 400, InProgress, true),
            view("b1", "b", 100, Ready, true),
            view("x", "a", 50, Ready, false),
        ];
        let retention = Retention {
            keep_last: Some(2),
            ..Default::default()
        };
        let now = Timestamp::from_second(1000).unwrap();
        assert_eq!(deleted(&snaps, &retention, now), vec!["a1"]);
        let unowned = Retention {
            include_unowned: true,
            unowned_min_age: Some("0".into()),
            ..retention.clone()
        };
        assert_eq!(deleted(&snaps, &unowned, now), vec!["a1", "x"]);
    }

    #[test]
    fn snapshots_taken_by_hand_go_only_when_old_enough_and_another_schedules_never() {
        use SnapshotPhase::*;
        let other = SnapView {
            origin: Origin::OtherSchedule,
            ..view("theirs", "a", 10, Ready, false)
        };
        let snaps = vec![
            view("ours", "a", 100, Ready, true),
            view("old-by-hand", "a", 200, Ready, false),
            view("new-by-hand", "a", 950, Ready, false),
            other,
        ];
        let now = Timestamp::from_second(1000).unwrap();
        let all = |include_unowned, min_age: Option<&str>| Retention {
            all: Some(true),
            include_unowned,
            unowned_min_age: min_age.map(Into::into),
            ..Default::default()
        };
        let table: [(Retention, &[&str], &[&str]); 4] = [
            (all(false, None), &["ours"], &[]),
            // No age floor given (an object older than the rule): none taken by hand goes.
            (all(true, None), &["ours"], &["old-by-hand", "new-by-hand"]),
            (all(true, Some("5m")), &["ours", "old-by-hand"], &["new-by-hand"]),
            (all(true, Some("0")), &["ours", "old-by-hand", "new-by-hand"], &[]),
        ];
        for (retention, delete, kept) in table {
            let mut selection = select_for_deletion(&snaps, &retention, now).unwrap();
            selection.delete.sort();
            selection.kept_by_hand.sort();
            let sorted = |names: &[&str]| {
                let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                names.sort();
                names
            };
            assert_eq!(selection.delete, sorted(delete), "{retention:?}");
            assert_eq!(selection.kept_by_hand, sorted(kept), "{retention:?}");
        }
        // A snapshot taken by hand counts among the kept ones: keepLast 1 keeps the newest,
        // taken by hand, and would delete the two older ones; the one by hand is too young.
        let keep_one = Retention {
            keep_last: Some(1),
            include_unowned: true,
            unowned_min_age: Some("1h".into()),
            ..Default::default()
        };
        let selection = select_for_deletion(&snaps, &keep_one, now).unwrap();
        assert_eq!(selection.delete, ["ours"]);
        assert_eq!(selection.kept_by_hand, ["old-by-hand"]);
    }

    #[test]
    fn same_second_ordered_by_snapshot_id() {
        let mut snaps: Vec<SnapView> = [("x", 3), ("z", 1), ("y", 2)]
            .iter()
            .map(|(name, id)| SnapView {
                id: Some(*id),
                ..view(name, "a", 100, SnapshotPhase::Ready, true)
            })
            .collect();
        snaps.rotate_left(1);
        let keep_one = Retention {
            keep_last: Some(1),
            ..Default::default()
        };
        let now = Timestamp::from_second(1000).unwrap();
        assert_eq!(deleted(&snaps, &keep_one, now), vec!["y", "z"]);
    }

    #[test]
    fn by_age_date_and_all() {
        use SnapshotPhase::*;
        let snaps = vec![
            view("old", "a", 100, Ready, true),
            view("failed", "a", 150, Failed, true),
            view("new", "a", 900, Ready, true),
        ];
        let now = Timestamp::from_second(1000).unwrap();
        let by_age = Retention {
            max_age: Some("5m".into()),
            ..Default::default()
        };
        assert_eq!(deleted(&snaps, &by_age, now), vec!["failed", "old"]);
        let by_date = Retention {
            before: Some(Time(Timestamp::from_second(120).unwrap())),
            ..Default::default()
        };
        assert_eq!(deleted(&snaps, &by_date, now), vec!["old"]);
        let all = Retention {
            all: Some(true),
            ..Default::default()
        };
        assert_eq!(deleted(&snaps, &all, now).len(), 3);
        let keep_one = Retention {
            keep_last: Some(1),
            ..Default::default()
        };
        assert_eq!(deleted(&snaps, &keep_one, now), vec!["failed", "old"]);
    }

    #[test]
    fn only_the_latest_missed_run() {
        let cron = Cron::parse("*/10 * * * *").unwrap();
        let tz = k8s_openapi::jiff::tz::TimeZone::UTC;
        let after: Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let now: Timestamp = "2026-11-23T10:35:00Z".parse().unwrap();
        assert_eq!(
            due_run(&cron, &tz, after, now),
            Some("2026-11-23T10:30:00Z".parse().unwrap())
        );
        assert_eq!(due_run(&cron, &tz, now, now), None);
    }

    #[test]
    fn names_and_selectors() {
        assert_eq!(rbd_prefix("nightly-a.b"), "nightlyab");
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
        let requirement = |operator: &str| LabelSelectorRequirement {
            key: "zone".into(),
            operator: operator.into(),
            values: Some(vec!["a".into(), "b".into()]),
        };
        let mut spec = VirtualMachineSnapshotScheduleSpec {
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("tier".to_string(), "prod".to_string())])),
                match_expressions: Some(vec![requirement("NotIn")]),
            }),
            ..Default::default()
        };
        let read = read_spec(&spec).unwrap_or_else(|(r, m)| panic!("{r}: {m}"));
        assert_eq!(read.selector.unwrap().to_string(), "tier=prod,zone notin (a,b)");
        // An operator Kubernetes does not know is the user's error, never a `!key` query.
        spec.selector.as_mut().unwrap().match_expressions = Some(vec![requirement("Near")]);
        let Err((reason, message)) = read_spec(&spec) else {
            panic!("an unknown operator is refused");
        };
        assert_eq!(reason, "InvalidSelector");
        assert!(message.contains("spec.selector"), "{message}");
        spec.selector = None;
        spec.time_zone = Some("Mars/Olympus".into());
        assert_eq!(read_spec(&spec).err().map(|e| e.0), Some("InvalidTimeZone"));
    }
}
