//! Unit tests of the per-VM decision: desired + observed -> steps, restarts and notes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::*;

const GEN: i64 = 3;

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).unwrap()
}

fn policy() -> RestartPolicy {
    RestartPolicy {
        base: Duration::from_secs(5),
        max: Duration::from_secs(40),
        max_consecutive_failures: 3,
        stable_period: Duration::from_secs(80),
    }
}

fn uuid() -> Uuid {
    Uuid::parse_str("6c0d3ef2-5b55-4a49-9c1c-6e2f5d0c8a11").unwrap()
}

fn stored() -> StoredXml {
    StoredXml {
        uuid: Some(uuid()),
        sha256: "aa".into(),
    }
}

fn domain(state: DomainState, reason: i32) -> ObservedDomain {
    ObservedDomain {
        state: StateInfo { state, reason },
        uuid: uuid(),
        ownership: Ownership::Ours,
        xml_sha256: Some("aa".into()),
    }
}

fn reported(state: ReportedState, generation: i64) -> DomainStatus {
    DomainStatus {
        node: "hv1".into(),
        name: "guest0".into(),
        state,
        observed_generation: Some(generation),
        ..Default::default()
    }
}

/// Owns what [`Facts`] borrows.
struct Case {
    intent: Intent,
    storage_ready: bool,
    stored: Option<StoredXml>,
    domain: Option<ObservedDomain>,
    reported: Option<DomainStatus>,
    restarts: RestartStatus,
    stopped_by_agent: bool,
    running_since: Option<Timestamp>,
    now: Timestamp,
    policy: RestartPolicy,
}

impl Case {
    fn new(intent: Intent) -> Self {
        Case {
            intent,
            storage_ready: true,
            stored: Some(stored()),
            domain: None,
            reported: None,
            restarts: RestartStatus::default(),
            stopped_by_agent: false,
            running_since: None,
            now: t(1000),
            policy: policy(),
        }
    }

    fn domain(mut self, d: ObservedDomain) -> Self {
        self.domain = Some(d);
        self
    }

    fn reported(mut self, r: DomainStatus) -> Self {
        self.reported = Some(r);
        self
    }

    fn restarts(mut self, r: RestartStatus) -> Self {
        self.restarts = r;
        self
    }

    fn decide(&self) -> Decision {
        decide(&Facts {
            now: self.now,
            generation: GEN,
            intent: self.intent,
            storage_ready: self.storage_ready,
            stored: self.stored.as_ref(),
            domain: self.domain.as_ref(),
            reported: self.reported.as_ref(),
            restarts: &self.restarts,
            stopped_by_agent: self.stopped_by_agent,
            running_since: self.running_since,
            policy: &self.policy,
            migration: Some("mig-1"),
        })
    }
}

#[test]
fn absent_domain_is_defined_and_started() {
    let d = Case::new(Intent::Started).decide();
    assert_eq!(d.steps, [Step::Define, Step::Start]);
    assert_eq!(d.note, None);
    assert_eq!(d.restarts, RestartStatus::default());
    let d = Case::new(Intent::Stopped).decide();
    assert_eq!(d.steps, [Step::Define]);
}

#[test]
fn up_to_date_domains_need_nothing() {
    let running = Case::new(Intent::Started)
        .domain(domain(DomainState::Running, 1))
        .reported(reported(ReportedState::Running, GEN));
    let d = running.decide();
    assert_eq!(d.steps, []);
    assert_eq!(d.note, None);
    assert_eq!(d.requeue_after, None);
    let off = Case::new(Intent::Stopped)
        .domain(domain(DomainState::ShutOff, 1))
        .reported(reported(ReportedState::ShutOff, GEN));
    assert_eq!(off.decide().steps, []);
}

#[test]
fn without_storage_nothing_is_defined_or_started() {
    let mut case = Case::new(Intent::Started);
    case.storage_ready = false;
    case.stored = None;
    let d = case.decide();
    assert_eq!(d.steps, []);
    assert_eq!(d.note, Some(Note::WaitingForStorage));
    // A running domain keeps running; a Stopped VM's running domain is still stopped.
    let mut running = case.domain(domain(DomainState::Running, 1));
    assert_eq!(running.decide().steps, []);
    assert_eq!(running.decide().note, None);
    running.intent = Intent::Stopped;
    assert_eq!(running.decide().steps, [Step::Stop]);
}

#[test]
fn stopped_vm_is_shut_down() {
    let d = Case::new(Intent::Stopped)
        .domain(domain(DomainState::Running, 1))
        .decide();
    assert_eq!(d.steps, [Step::Stop]);
    // Outdated too: stop, then redefine.
    let mut outdated = domain(DomainState::Running, 1);
    outdated.xml_sha256 = Some("old".into());
    let d = Case::new(Intent::Stopped).domain(outdated).decide();
    assert_eq!(d.steps, [Step::Stop, Step::Define]);
}

#[test]
fn absent_intent_removes_only_our_domains() {
    for reason in [
        AbsentReason::Deleting,
        AbsentReason::Disabled,
        AbsentReason::NotAssigned,
    ] {
        let d = Case::new(Intent::Absent(reason))
            .domain(domain(DomainState::Running, 1))
            .decide();
        assert_eq!(d.steps, [Step::Stop, Step::Undefine]);
        assert_eq!(d.note, Some(Note::Absent(reason)));
        let d = Case::new(Intent::Absent(reason))
            .domain(domain(DomainState::ShutOff, 1))
            .decide();
        assert_eq!(d.steps, [Step::Undefine]);
        let mut foreign = domain(DomainState::Running, 1);
        foreign.ownership = Ownership::Foreign;
        assert_eq!(
            Case::new(Intent::Absent(reason)).domain(foreign).decide().steps,
            []
        );
        assert_eq!(Case::new(Intent::Absent(reason)).decide().steps, []);
    }
}

#[test]
fn foreign_or_other_vm_domains_are_never_touched() {
    let mut foreign = domain(DomainState::ShutOff, 0);
    foreign.ownership = Ownership::Foreign;
    let d = Case::new(Intent::Started).domain(foreign).decide();
    assert_eq!(d.steps, []);
    assert_eq!(d.note, Some(Note::NameConflict(None)));
    let other = DomainOwner::new("other", "guest0", "uid-2");
    let mut theirs = domain(DomainState::Running, 1);
    theirs.ownership = Ownership::OtherVm(other.clone());
    let d = Case::new(Intent::Stopped).domain(theirs).decide();
    assert_eq!(d.steps, []);
    assert_eq!(d.note, Some(Note::NameConflict(Some(other))));
}

#[test]
fn stale_leftover_is_replaced() {
    let mut stale = domain(DomainState::Running, 1);
    stale.ownership = Ownership::Stale;
    let d = Case::new(Intent::Started).domain(stale).decide();
    assert_eq!(d.steps, [Step::Stop, Step::Undefine, Step::Define, Step::Start]);
}

#[test]
fn changed_xml_redefines_a_stopped_domain_but_never_a_running_one() {
    let mut off = domain(DomainState::ShutOff, 0);
    off.xml_sha256 = Some("old".into());
    let d = Case::new(Intent::Started).domain(off.clone()).decide();
    assert_eq!(d.steps, [Step::Define, Step::Start]);
    // A new UUID cannot be redefined in place: undefine first.
    off.uuid = Uuid::new_v4();
    let d = Case::new(Intent::Started).domain(off).decide();
    assert_eq!(d.steps, [Step::Undefine, Step::Define, Step::Start]);

    let mut running = domain(DomainState::Running, 1);
    running.xml_sha256 = Some("old".into());
    let d = Case::new(Intent::Started)
        .domain(running)
        .reported(reported(ReportedState::Running, GEN))
        .decide();
    assert_eq!(d.steps, []);
    assert_eq!(d.note, Some(Note::RestartRequired));
}

#[test]
fn a_domain_started_outside_the_operator_is_taken_over_as_it_runs() {
    // vm_manager or Pacemaker started it from the stored XML: its marker has no digest.
    let mut running = domain(DomainState::Running, 1);
    running.xml_sha256 = None;
    let d = Case::new(Intent::Started).domain(running.clone()).decide();
    assert_eq!(d.steps, [Step::Define], "redefined in place, never stopped");
    assert_eq!(d.note, Some(Note::TakenOver));
    // Another UUID is another machine: it keeps running, the change waits for its stop.
    running.uuid = Uuid::new_v4();
    let d = Case::new(Intent::Started).domain(running.clone()).decide();
    assert_eq!(d.steps, []);
    assert_eq!(d.note, Some(Note::RestartRequired));
    // The VM says Stopped: the user's spec governs the domain assigned here.
    running.uuid = domain(DomainState::Running, 1).uuid;
    let d = Case::new(Intent::Stopped).domain(running.clone()).decide();
    assert_eq!(d.steps, [Step::Stop, Step::Define]);

    // Unmarked, with the stored XML's UUID: a vm_manager VM that Pacemaker runs, adopted.
    running.ownership = Ownership::Foreign;
    let d = Case::new(Intent::Started).domain(running.clone()).decide();
    assert_eq!((d.steps, d.note), (vec![Step::Define], Some(Note::TakenOver)));
    // Another UUID is another machine that happens to have the name: never touched.
    running.uuid = Uuid::new_v4();
    let d = Case::new(Intent::Started).domain(running.clone()).decide();
    assert_eq!((d.steps, d.note), (vec![], Some(Note::NameConflict(None))));
    // Without the stored XML nothing says it is the same machine.
    running.uuid = domain(DomainState::Running, 1).uuid;
    let mut case = Case::new(Intent::Started).domain(running);
    case.storage_ready = false;
    let d = case.decide();
    assert_eq!((d.steps, d.note), (vec![], Some(Note::NameConflict(None))));
}

#[test]
fn a_domain_found_off_after_running_is_a_crash_with_back_off() {
    let case = Case::new(Intent::Started)
        .domain(domain(DomainState::ShutOff, 2))
        .reported(reported(ReportedState::Running, GEN));
    let d = case.decide();
    assert_eq!(d.steps, []);
    assert_eq!(d.restarts.consecutive_failures, 1);
    assert_eq!(d.restarts.total, 0);
    assert_eq!(d.restarts.last_failure_time, Some(Time(t(1000))));
    assert_eq!(d.restarts.retry_after, Some(Time(t(1005))));
    assert_eq!(
        d.note,
        Some(Note::BackingOff {
            failures: 1,
            retry_after: t(1005)
        })
    );
    assert_eq!(d.requeue_after, Some(Duration::from_secs(5)));

    // Reported ShutOff with the back-off pending: wait, no second count.
    let mut waiting = Case::new(Intent::Started)
        .domain(domain(DomainState::ShutOff, 2))
        .reported(reported(ReportedState::ShutOff, GEN))
        .restarts(d.restarts.clone());
    waiting.now = t(1002);
    let w = waiting.decide();
    assert_eq!(w.steps, []);
    assert_eq!(w.restarts, d.restarts);
    assert_eq!(w.requeue_after, Some(Duration::from_secs(3)));
    // Due: restart, counted in total.
    waiting.now = t(1005);
    let r = waiting.decide();
    assert_eq!(r.steps, [Step::Start]);
    assert_eq!(r.restarts.total, 1);
    assert_eq!(r.restarts.consecutive_failures, 1);
    assert_eq!(r.restarts.retry_after, None);
    assert_eq!(r.note, None);
}

#[test]
fn a_domain_the_agent_stopped_is_no_crash() {
    let mut case = Case::new(Intent::Started)
        .domain(domain(DomainState::ShutOff, 1))
        .reported(reported(ReportedState::Running, GEN));
    case.stopped_by_agent = true;
    let d = case.decide();
    assert_eq!(d.steps, [Step::Start]);
    assert_eq!(d.restarts, RestartStatus::default());
    // Reported ShutOff (a Stopped VM now Started): a plain start.
    let d = Case::new(Intent::Started)
        .domain(domain(DomainState::ShutOff, 1))
        .reported(reported(ReportedState::ShutOff, GEN - 1))
        .decide();
    assert_eq!(d.steps, [Step::Start]);
    // Nothing reported yet (new agent): a plain start.
    let d = Case::new(Intent::Started)
        .domain(domain(DomainState::ShutOff, 2))
        .decide();
    assert_eq!(d.steps, [Step::Start]);
}

#[test]
fn a_crashed_domain_is_destroyed_and_counted() {
    let d = Case::new(Intent::Started)
        .domain(domain(DomainState::Crashed, 1))
        .reported(reported(ReportedState::Running, GEN))
        .decide();
    assert_eq!(d.steps, [Step::Destroy]);
    assert_eq!(d.restarts.consecutive_failures, 1);
}

#[test]
fn too_many_failures_give_up_until_the_generation_changes() {
    let restarts = RestartStatus {
        consecutive_failures: 2,
        total: 2,
        last_failure_time: Some(Time(t(900))),
        retry_after: None,
    };
    let d = Case::new(Intent::Started)
        .domain(domain(DomainState::ShutOff, 2))
        .reported(reported(ReportedState::Running, GEN))
        .restarts(restarts.clone())
        .decide();
    assert_eq!(d.steps, []);
    assert_eq!(d.note, Some(Note::GaveUp { failures: 3 }));
    assert_eq!(d.restarts.consecutive_failures, 3);
    assert_eq!(d.restarts.retry_after, None);

    // Reported Failed for this generation: nothing more.
    let failed = Case::new(Intent::Started)
        .domain(domain(DomainState::ShutOff, 2))
        .reported(reported(ReportedState::Failed, GEN))
        .restarts(d.restarts.clone());
    let again = failed.decide();
    assert_eq!(again.steps, []);
    assert_eq!(again.note, Some(Note::GaveUp { failures: 3 }));
    assert_eq!(again.restarts, d.restarts);
    assert!(gave_up(failed.reported.as_ref(), GEN));

    // A new generation: counters reset, a plain start (no crash counted).
    let fresh = Case::new(Intent::Started)
        .domain(domain(DomainState::ShutOff, 2))
        .reported(reported(ReportedState::Failed, GEN - 1))
        .restarts(d.restarts.clone())
        .decide();
    assert_eq!(fresh.steps, [Step::Start]);
    assert_eq!(fresh.restarts.consecutive_failures, 0);
    assert_eq!(fresh.restarts.total, 2);
    assert_eq!(fresh.note, None);
}

#[test]
fn a_failed_start_backs_off_then_gives_up() {
    let p = policy();
    let (r1, note) = start_failed(&RestartStatus::default(), t(0), &p);
    assert_eq!(
        note,
        Note::BackingOff {
            failures: 1,
            retry_after: t(5)
        }
    );
    let (r2, _) = start_failed(&r1, t(5), &p);
    assert_eq!(r2.retry_after, Some(Time(t(15))));
    let (r3, note) = start_failed(&r2, t(15), &p);
    assert_eq!(note, Note::GaveUp { failures: 3 });
    assert_eq!(r3.retry_after, None);
}

#[test]
fn running_long_enough_forgets_failures() {
    let restarts = RestartStatus {
        consecutive_failures: 2,
        total: 2,
        last_failure_time: Some(Time(t(0))),
        retry_after: None,
    };
    let mut case = Case::new(Intent::Started)
        .domain(domain(DomainState::Running, 1))
        .reported(reported(ReportedState::Running, GEN))
        .restarts(restarts.clone());
    case.running_since = Some(t(950));
    let d = case.decide();
    assert_eq!(d.steps, []);
    assert_eq!(d.restarts, restarts);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(30)));
    case.now = t(1030);
    let d = case.decide();
    assert_eq!(d.restarts.consecutive_failures, 0);
    assert_eq!(d.restarts.total, 2);
    assert_eq!(d.requeue_after, None);
}

#[test]
fn state_mapping() {
    assert_eq!(reported_state(DomainState::Blocked), ReportedState::Running);
    assert_eq!(reported_state(DomainState::PmSuspended), ReportedState::Paused);
    assert_eq!(reported_state(DomainState::ShutOff), ReportedState::ShutOff);
    assert_eq!(reported_state(DomainState::Crashed), ReportedState::Crashed);
}

#[test]
fn a_migration_moves_only_a_running_guest_and_never_starts_one() {
    let mut foreign = domain(DomainState::Running, 1);
    foreign.ownership = Ownership::Foreign;
    let cases = [
        (Some(domain(DomainState::Running, 1)), vec![Step::Migrate], None),
        (None, vec![], Some(Note::MigratedAway)),
        (Some(domain(DomainState::ShutOff, 1)), vec![], None),
        (Some(domain(DomainState::Paused, 1)), vec![], None),
        (Some(domain(DomainState::Crashed, 1)), vec![], None),
        (Some(foreign), vec![], None),
    ];
    for (observed, steps, note) in cases {
        let mut case = Case::new(Intent::MigrateAway).reported(reported(ReportedState::Running, GEN));
        case.domain = observed.clone();
        let d = case.decide();
        assert_eq!(d.steps, steps, "{observed:?}");
        assert_eq!(d.note, note, "{observed:?}");
    }
    let mut refused = reported(ReportedState::Running, GEN);
    refused.migration = Some(crate::api::MigrationReport {
        uid: "mig-1".into(),
        target: "hv2".into(),
        message: Some("refused".into()),
        ..Default::default()
    });
    let again = Case::new(Intent::MigrateAway)
        .domain(domain(DomainState::Running, 1))
        .reported(refused.clone());
    assert_eq!(again.decide().steps, [], "a refused migration is not retried");
    refused.migration.as_mut().unwrap().uid = "mig-0".into();
    let next = Case::new(Intent::MigrateAway)
        .domain(domain(DomainState::Running, 1))
        .reported(refused);
    assert_eq!(next.decide().steps, [Step::Migrate], "a new migration is tried");
}

#[test]
fn an_incoming_guest_is_kept_as_it_is() {
    for observed in [
        None,
        Some(domain(DomainState::Paused, 1)),
        Some(domain(DomainState::Running, 1)),
        Some(domain(DomainState::ShutOff, 1)),
    ] {
        let mut case = Case::new(Intent::Incoming);
        case.domain = observed.clone();
        let d = case.decide();
        assert_eq!(d.steps, [], "{observed:?}");
        assert_eq!(d.note, Some(Note::Incoming), "{observed:?}");
    }
}
