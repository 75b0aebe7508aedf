//! Kubernetes-style conditions: building them and merging them into a status without moving
//! `lastTransitionTime` when nothing changed (so a resync writes nothing).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as the reconciler decides it, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    /// Nobody can tell (the host that would know does not answer): status `Unknown`.
    pub unknown: bool,
    pub reason: String,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            unknown: false,
            reason: reason.into(),
            message: message.into(),
        }
    }

    /// A condition nobody can currently observe.
    pub fn unknown(type_: &'static str, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            unknown: true,
            ..Self::new(type_, false, reason, message)
        }
    }
}

/// Merges desired conditions into the previous ones: a condition whose status did not flip
/// keeps its `lastTransitionTime`; conditions not desired any more are dropped.
pub fn merge(
    previous: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = match (d.unknown, d.status) {
                (true, _) => "Unknown",
                (false, true) => "True",
                (false, false) => "False",
            }
            .to_owned();
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: d.type_.to_owned(),
                status,
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn time(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_on_flips() {
        let first = merge(
            &[],
            &[Desired::new("Ready", false, "Starting", "")],
            Some(1),
            &time(10),
        );
        assert_eq!(first[0].last_transition_time, time(10));
        let same = merge(
            &first,
            &[Desired::new("Ready", false, "Still", "x")],
            Some(2),
            &time(20),
        );
        assert_eq!(same[0].last_transition_time, time(10));
        assert_eq!(same[0].reason, "Still");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(
            &same,
            &[Desired::new("Ready", true, "Started", "")],
            Some(2),
            &time(30),
        );
        assert_eq!(flipped[0].last_transition_time, time(30));
        assert!(is_true(&flipped, "Ready"));
        assert!(!is_true(&flipped, "Stalled"));
    }
}
