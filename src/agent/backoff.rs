//! Crash restarts: exponential back-off and the bookkeeping of `status.restarts`. Pure.
//!
//! Times are whole seconds (the API server stores `metav1.Time` with second precision, and a
//! value that changes below that would make every comparison with the stored status differ).

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::RestartStatus;

/// When and how often a VM is restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the first restart; doubled for each further consecutive failure.
    pub base: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Give up after this many consecutive failures.
    pub max_consecutive_failures: u32,
    /// A domain running this long has its consecutive failures forgotten.
    pub stable_period: Duration,
}

impl RestartPolicy {
    /// The delay before restarting after `consecutive_failures` failures (1 = the first):
    /// `base * 2^(n-1)`, at most `max`.
    pub fn delay(&self, consecutive_failures: u32) -> Duration {
        let doublings = consecutive_failures.saturating_sub(1).min(32);
        self.base
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// A timestamp truncated to whole seconds.
pub fn whole_seconds(ts: Timestamp) -> Timestamp {
    Timestamp::from_second(ts.as_second()).unwrap_or(ts)
}

/// `ts + d`, saturating at the largest timestamp.
pub fn add(ts: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| ts.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// How long from `now` until `later` (zero if it is not later).
pub fn until(now: Timestamp, later: Timestamp) -> Duration {
    Duration::try_from(later.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// What a failure leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Restart at this time.
    RetryAt(Timestamp),
    /// Too many consecutive failures: no more restarts until the spec changes.
    GiveUp,
}

/// Counts one failure (a crash or a failed start) at `now`.
pub fn record_failure(
    current: &RestartStatus,
    now: Timestamp,
    policy: &RestartPolicy,
) -> (RestartStatus, FailureOutcome) {
    let now = whole_seconds(now);
    let failures = current.consecutive_failures.saturating_add(1).max(1);
    let mut next = RestartStatus {
        consecutive_failures: failures,
        total: current.total,
        last_failure_time: Some(Time(now)),
        retry_after: None,
    };
    if failures as u32 >= policy.max_consecutive_failures {
        return (next, FailureOutcome::GiveUp);
    }
    let at = whole_seconds(add(now, policy.delay(failures as u32)));
    next.retry_after = Some(Time(at));
    (next, FailureOutcome::RetryAt(at))
}

/// Counts a restart (a start after failures): `total` + 1, no pending retry any more.
pub fn record_restart(current: &RestartStatus) -> RestartStatus {
    RestartStatus {
        total: current.total.saturating_add(1),
        retry_after: None,
        ..current.clone()
    }
}

/// How long to wait before the pending restart, if it is not due yet.
pub fn retry_wait(current: &RestartStatus, now: Timestamp) -> Option<Duration> {
    let at = current.retry_after.as_ref()?.0;
    (at > now).then(|| until(now, at))
}

/// Whether a running domain has run long enough to forget its failures.
#[derive(Clone, Debug, PartialEq)]
pub enum Stability {
    /// No failures to forget.
    Nothing,
    /// Forget them: the new restart status.
    Reset(RestartStatus),
    /// Not yet: check again after this long.
    WaitFor(Duration),
}

/// Checks a running domain with failures against the stable period.
pub fn check_stable(
    current: &RestartStatus,
    running_since: Timestamp,
    now: Timestamp,
    policy: &RestartPolicy,
) -> Stability {
    if current.consecutive_failures == 0 {
        return Stability::Nothing;
    }
    let stable_at = add(running_since, policy.stable_period);
    if now >= stable_at {
        Stability::Reset(RestartStatus {
            consecutive_failures: 0,
            retry_after: None,
            ..current.clone()
        })
    } else {
        Stability::WaitFor(until(now, stable_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            base: Duration::from_secs(5),
            max: Duration::from_secs(300),
            max_consecutive_failures: 5,
            stable_period: Duration::from_secs(600),
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn delays_double_up_to_the_maximum() {
        let p = policy();
        let secs: Vec<u64> = (1..=9).map(|n| p.delay(n).as_secs()).collect();
        assert_eq!(secs, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(p.delay(0), Duration::from_secs(5));
        assert_eq!(p.delay(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn failures_count_up_and_give_up() {
        let p = policy();
        let mut status = RestartStatus::default();
        let mut now = at(0);
        for n in 1..5 {
            let (next, outcome) = record_failure(&status, now, &p);
            assert_eq!(next.consecutive_failures, n);
            assert_eq!(next.last_failure_time, Some(Time(now)));
            let expected = add(now, p.delay(n as u32));
            assert_eq!(outcome, FailureOutcome::RetryAt(expected));
            assert_eq!(next.retry_after, Some(Time(expected)));
            assert_eq!(retry_wait(&next, now), Some(p.delay(n as u32)));
            assert_eq!(retry_wait(&next, expected), None);
            status = record_restart(&next);
            assert_eq!(status.total, n);
            assert_eq!(status.retry_after, None);
            now = add(expected, Duration::from_secs(1));
        }
        let (last, outcome) = record_failure(&status, now, &p);
        assert_eq!(outcome, FailureOutcome::GiveUp);
        assert_eq!(last.consecutive_failures, 5);
        assert_eq!(last.retry_after, None);
        assert_eq!(last.total, 4);
    }

    #[test]
    fn times_are_whole_seconds() {
        let now = Timestamp::from_millisecond(1_800_000_000_750).unwrap();
        let (next, _) = record_failure(&RestartStatus::default(), now, &policy());
        assert_eq!(next.last_failure_time.unwrap().0, at(0));
        assert_eq!(next.retry_after.unwrap().0, at(5));
    }

    #[test]
    fn stable_running_resets_consecutive_failures() {
        let p = policy();
        let status = RestartStatus {
            consecutive_failures: 3,
            total: 7,
            last_failure_time: Some(Time(at(0))),
            retry_after: Some(Time(at(20))),
        };
        assert_eq!(
            check_stable(&status, at(30), at(100), &p),
            Stability::WaitFor(Duration::from_secs(530))
        );
        let Stability::Reset(reset) = check_stable(&status, at(30), at(630), &p) else {
            panic!("expected a reset");
        };
        assert_eq!(reset.consecutive_failures, 0);
        assert_eq!(reset.total, 7);
        assert_eq!(reset.retry_after, None);
        assert_eq!(reset.last_failure_time, Some(Time(at(0))));
        assert_eq!(check_stable(&reset, at(30), at(630), &p), Stability::Nothing);
    }
}
