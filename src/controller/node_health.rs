//! Whether a hypervisor still answers, and what to do when it does not: the pure decision of
//! the hypervisor reconciler. A host whose heartbeat is overdue is lost; a lost host that has
//! VMs is fenced through Ceph before any of them runs elsewhere; a fenced host that comes back
//! clean (its agent destroyed every domain placed elsewhere) is let in again.
//!
//! The heartbeat is judged by the controller's own clock (how long since it saw the heartbeat
//! change), never by comparing the agent's timestamp with the controller's time: hosts' clocks
//! may differ, and a controller that just started gives every host a full grace period.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{FenceState, FenceStatus};

/// Reason of the Hypervisor's `Ready=Unknown` and of the VMs' Ready condition on a lost host.
pub const REASON_NODE_LOST: &str = "NodeLost";
/// Reason of a fence an administrator asked for with `spec.outOfService`.
pub const REASON_OUT_OF_SERVICE: &str = "OutOfService";

/// What the hypervisor reconciler knows about one host.
#[derive(Clone, Debug)]
pub struct NodeFacts<'a> {
    pub name: &'a str,
    /// `spec.outOfService`: an administrator says the host is down or fenced.
    pub out_of_service: bool,
    /// How long the controller has seen no new heartbeat.
    pub silent_for: Duration,
    pub grace: Duration,
    /// Whether the Ready condition already says `NodeLost`.
    pub marked_lost: bool,
    pub fence: Option<&'a FenceStatus>,
    /// `namespace/name` of the VMs placed on the host.
    pub placed_here: Vec<String>,
    /// The host's agent answers, knows it is fenced (its Ready reason is `Fenced`), runs no
    /// domain, and has none left of a VM placed elsewhere: it may be let in again.
    pub rejoined_clean: bool,
}

/// A step the reconciler carries out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeAction {
    /// Set the Hypervisor's Ready condition to Unknown, reason NodeLost.
    MarkLost { message: String },
    /// Record the decision to fence (state Fencing) before anything is done, so a controller
    /// killed at any step resumes it.
    RecordFence { reason: &'static str, vms: Vec<String> },
    /// Run the power-fence hook if any, blocklist the Ceph clients of the host's VMs' images,
    /// break their locks, and record Fenced: from then on the VMs may start elsewhere.
    Fence,
    /// The host came back clean: remove the blocklist entries and the fence.
    LiftFence,
}

/// What to do about a host, and when to look again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeDecision {
    pub lost: bool,
    pub actions: Vec<NodeAction>,
    /// When the host must be judged again even if nothing changes (its grace running out).
    pub recheck: Duration,
}

/// How often a lost or fenced host is looked at again.
const LOST_RECHECK: Duration = Duration::from_secs(2);

pub fn decide(facts: &NodeFacts) -> NodeDecision {
    let overdue = facts.silent_for >= facts.grace;
    let lost = facts.out_of_service || overdue;
    let mut actions = Vec::new();
    match facts.fence.map(|f| f.state) {
        None if lost && !facts.placed_here.is_empty() => actions.push(NodeAction::RecordFence {
            reason: if facts.out_of_service {
                REASON_OUT_OF_SERVICE
            } else {
                REASON_NODE_LOST
            },
            vms: facts.placed_here.clone(),
        }),
        // A recorded decision is always carried out, even if the host answers again meanwhile:
        // some of its VMs may already be on their way elsewhere.
        Some(FenceState::Fencing) => actions.push(NodeAction::Fence),
        // Only an agent that saw the fence and destroyed what ran there lets the host in again:
        // a host that merely stopped being silent may still run a copy.
        Some(FenceState::Fenced) if !lost && facts.rejoined_clean => actions.push(NodeAction::LiftFence),
        _ => {}
    }
    // After the record: the record is written only on the version judged, and the mark
    // changes the version.
    if lost && !facts.marked_lost {
        actions.push(NodeAction::MarkLost {
            message: lost_message(facts),
        });
    }
    let recheck = if lost || facts.fence.is_some() {
        LOST_RECHECK
    } else {
        // Just after the grace runs out, not before.
        facts.grace - facts.silent_for + Duration::from_millis(100)
    };
    NodeDecision {
        lost,
        actions,
        recheck,
    }
}

fn lost_message(facts: &NodeFacts) -> String {
    if facts.out_of_service {
        return format!(
            "hypervisor {} is marked out of service (spec.outOfService); its VMs are fenced and started elsewhere",
            facts.name
        );
    }
    format!(
        "the node agent of hypervisor {} has not reported for {} s (grace {} s); what runs there is unknown",
        facts.name,
        facts.silent_for.as_secs(),
        facts.grace.as_secs()
    )
}

/// When the controller last saw each hypervisor's heartbeat change, on its own clock.
#[derive(Default)]
pub struct HeartbeatClock {
    seen: Mutex<HashMap<String, (Option<Time>, Instant)>>,
}

impl HeartbeatClock {
    /// Records the heartbeat the object shows now and returns how long it has not changed.
    /// A host seen for the first time counts as just heard from.
    pub fn observe(&self, node: &str, heartbeat: Option<&Time>) -> Duration {
        let mut seen = self.seen.lock().expect("heartbeat clock poisoned");
        let entry = seen
            .entry(node.to_owned())
            .or_insert_with(|| (heartbeat.cloned(), Instant::now()));
        if entry.0.as_ref() != heartbeat {
            *entry = (heartbeat.cloned(), Instant::now());
        }
        entry.1.elapsed()
    }

    /// How long the host has been silent, by the last observation (zero if never observed).
    pub fn silent_for(&self, node: &str) -> Duration {
        self.seen
            .lock()
            .expect("heartbeat clock poisoned")
            .get(node)
            .map(|(_, at)| at.elapsed())
            .unwrap_or_default()
    }

    /// Starts every host's grace anew: after the controller lost the API server for a while,
    /// heartbeats it missed meanwhile say nothing about the hosts.
    pub fn restart_all(&self) {
        for entry in self.seen.lock().expect("heartbeat clock poisoned").values_mut() {
            entry.1 = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    struct Case {
        facts: NodeFacts<'static>,
    }

    fn fence(state: FenceState) -> &'static FenceStatus {
        Box::leak(Box::new(FenceStatus {
            state,
            reason: REASON_NODE_LOST.into(),
            since: Some(Time(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        }))
    }

    impl Case {
        fn host() -> Self {
            Case {
                facts: NodeFacts {
                    name: "hv1",
                    out_of_service: false,
                    silent_for: Duration::from_secs(1),
                    grace: Duration::from_secs(10),
                    marked_lost: false,
                    fence: None,
                    placed_here: vec!["ns/vm1".into()],
                    rejoined_clean: false,
                },
            }
        }
        fn silent(mut self, secs: u64) -> Self {
            self.facts.silent_for = Duration::from_secs(secs);
            self
        }
        fn marked(mut self) -> Self {
            self.facts.marked_lost = true;
            self
        }
        fn out_of_service(mut self) -> Self {
            self.facts.out_of_service = true;
            self
        }
        fn fenced(mut self, state: FenceState) -> Self {
            self.facts.fence = Some(fence(state));
            self
        }
        fn empty(mut self) -> Self {
            self.facts.placed_here.clear();
            self
        }
        fn rejoined(mut self) -> Self {
            self.facts.rejoined_clean = true;
            self
        }
        fn kinds(&self) -> Vec<&'static str> {
            decide(&self.facts)
                .actions
                .iter()
                .map(|a| match a {
                    NodeAction::MarkLost { .. } => "mark",
                    NodeAction::RecordFence { .. } => "record",
                    NodeAction::Fence => "fence",
                    NodeAction::LiftFence => "lift",
                })
                .collect()
        }
    }

    #[test]
    fn decisions() {
        let table: Vec<(&str, Case, Vec<&str>)> = vec![
            ("answering host", Case::host(), vec![]),
            ("silent within the grace", Case::host().silent(9), vec![]),
            ("lost with VMs", Case::host().silent(10), vec!["record", "mark"]),
            (
                "lost, already marked",
                Case::host().silent(30).marked(),
                vec!["record"],
            ),
            (
                "lost without VMs: nothing to fence",
                Case::host().silent(30).empty(),
                vec!["mark"],
            ),
            (
                "out of service at once",
                Case::host().out_of_service(),
                vec!["record", "mark"],
            ),
            (
                "recorded decision is carried out",
                Case::host().silent(30).marked().fenced(FenceState::Fencing),
                vec!["fence"],
            ),
            (
                "even if the host answers again",
                Case::host().fenced(FenceState::Fencing),
                vec!["fence"],
            ),
            (
                "fenced and still lost",
                Case::host().silent(60).marked().fenced(FenceState::Fenced),
                vec![],
            ),
            (
                "answering, but not (yet) rejoined clean",
                Case::host().fenced(FenceState::Fenced),
                vec![],
            ),
            (
                "back clean",
                Case::host().fenced(FenceState::Fenced).rejoined(),
                vec!["lift"],
            ),
            (
                "out of service stays fenced while it answers",
                Case::host()
                    .out_of_service()
                    .marked()
                    .fenced(FenceState::Fenced)
                    .rejoined(),
                vec![],
            ),
        ];
        for (name, case, expected) in table {
            assert_eq!(case.kinds(), expected, "{name}");
        }
    }

    #[test]
    fn recheck_when_the_grace_runs_out() {
        let d = decide(&Case::host().silent(4).facts);
        assert!(!d.lost);
        assert_eq!(d.recheck, Duration::from_millis(6100));
        assert_eq!(decide(&Case::host().silent(40).facts).recheck, LOST_RECHECK);
    }

    #[test]
    fn record_names_the_reason_and_the_vms() {
        let d = decide(&Case::host().out_of_service().marked().facts);
        assert_eq!(
            d.actions,
            vec![NodeAction::RecordFence {
                reason: REASON_OUT_OF_SERVICE,
                vms: vec!["ns/vm1".into()]
            }]
        );
        let d = decide(&Case::host().silent(12).facts);
        let NodeAction::MarkLost { message } = &d.actions[1] else {
            panic!("{d:?}")
        };
        assert!(
            message.contains("has not reported for 12 s (grace 10 s)"),
            "{message}"
        );
    }

    #[test]
    fn the_clock_counts_from_the_last_change() {
        let clock = HeartbeatClock::default();
        let t1 = Time(Timestamp::UNIX_EPOCH);
        assert!(clock.observe("hv1", Some(&t1)) < Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        assert!(clock.observe("hv1", Some(&t1)) >= Duration::from_millis(60));
        let t2 = Time(Timestamp::from_second(1).unwrap());
        assert!(clock.observe("hv1", Some(&t2)) < Duration::from_millis(50));
        assert_eq!(clock.silent_for("unknown"), Duration::ZERO);
    }
}
