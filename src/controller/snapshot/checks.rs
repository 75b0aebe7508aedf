//! When a read-only look at Ceph was last made for an object, and on which inputs. The
//! controllers are woken by every change of the objects they watch, their own status writes
//! included: a reconcile whose inputs have not changed since a recent look reads nothing.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A key for a look's inputs: equal inputs, equal keys.
pub fn key_of(inputs: &impl Serialize) -> u64 {
    let mut hasher = DefaultHasher::new();
    serde_json::to_string(inputs)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

pub struct RecentChecks {
    entries: Mutex<HashMap<String, (u64, Instant)>>,
    period: Duration,
}

impl RecentChecks {
    /// `period`: the longest a look stays good (at least one second).
    pub fn new(period: Duration) -> Self {
        RecentChecks {
            entries: Mutex::default(),
            period: period.max(Duration::from_secs(1)),
        }
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// How long the last look at `uid` with inputs `key` stays good (`None`: look now).
    pub fn fresh_for(&self, uid: &str, key: u64) -> Option<Duration> {
        let entries = self.lock();
        let (last, at) = entries.get(uid)?;
        (*last == key)
            .then(|| self.period.checked_sub(at.elapsed()))
            .flatten()
            .filter(|left| !left.is_zero())
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.lock().contains_key(uid)
    }

    /// Also drops the looks too old to matter: objects deleted meanwhile leave no entry behind
    /// for longer than a period.
    pub fn record(&self, uid: &str, key: u64) {
        let mut entries = self.lock();
        let period = self.period;
        entries.retain(|_, (_, at)| at.elapsed() < period);
        entries.insert(uid.to_owned(), (key, Instant::now()));
    }

    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Instant)>> {
        // The map holds no invariant a panicking holder could break.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    pub fn backdate(&self, uid: &str, by: Duration) {
        if let Some((_, at)) = self.lock().get_mut(uid) {
            *at -= by;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_secs(300);

    #[test]
    fn fresh_until_the_inputs_change_or_the_period_ends() {
        let checks = RecentChecks::new(PERIOD);
        assert_eq!(checks.fresh_for("a", 1), None, "never looked at");
        checks.record("a", 1);
        assert!(checks.fresh_for("a", 1).is_some_and(|left| left <= PERIOD));
        assert_eq!(checks.fresh_for("a", 2), None, "other inputs");
        checks.backdate("a", PERIOD);
        assert_eq!(checks.fresh_for("a", 1), None, "period over");
        checks.record("a", 1);
        checks.forget("a");
        assert_eq!(checks.fresh_for("a", 1), None);
        assert!(!checks.contains("a"));
    }

    #[test]
    fn old_entries_go_when_another_is_recorded() {
        let checks = RecentChecks::new(PERIOD);
        checks.record("gone", 1);
        checks.backdate("gone", PERIOD);
        checks.record("kept", 1);
        assert!(!checks.contains("gone"));
        assert!(checks.contains("kept"));
    }

    #[test]
    fn the_period_is_at_least_a_second() {
        assert_eq!(RecentChecks::new(Duration::ZERO).period(), Duration::from_secs(1));
    }
}
