//! How the watches that feed every reconciler recover from an API server that went away.
//!
//! kube's default back-off (client-go's) grows to 30 s and resets only after two quiet
//! minutes, so a watch could resume half a minute after the API server came back, and agents
//! took up to a minute to see VMs created just before an outage. Capped at 2 s, a watch
//! resumes within 2 s of the server's return and re-lists at once when its resource version
//! expired ("too old resource version"), while a dead server costs one request every 2 s per
//! watch, which it can take.

use std::time::Duration;

use std::fmt::Debug;
use std::hash::Hash;

use kube::Resource;
use kube::api::Api;
use kube::runtime::Controller;
use kube::runtime::utils::{Backoff, ResetTimerBackoff};
use kube::runtime::watcher::{self, ExponentialBackoff};
use serde::de::DeserializeOwned;

/// The longest pause between two attempts of a failing watch.
pub const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(2);

/// The back-off of every watch: 100 ms doubling up to 1 s, plus a jitter of up to as much
/// again so that agents do not come back in step (so at most [`MAX_WATCH_BACKOFF`]), reset
/// after a minute without errors.
pub fn watch_backoff() -> impl Backoff + 'static {
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_WATCH_BACKOFF / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    ResetTimerBackoff::new(ExponentialBackoff::from(exponential), Duration::from_secs(60))
}

/// A kube-runtime Controller whose watches (its own and those added with `watches`/`owns`)
/// recover with [`watch_backoff`]. Every reconciler of the operator starts from here.
pub fn controller<K>(api: Api<K>, config: watcher::Config) -> Controller<K>
where
    K: Clone + Resource + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    Controller::new(api, config).trigger_backoff(watch_backoff())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_watch_is_retried_within_two_seconds_forever() {
        let waits: Vec<Duration> = watch_backoff().take(50).collect();
        assert_eq!(waits.len(), 50, "never gives up");
        assert!(waits.iter().all(|w| *w <= MAX_WATCH_BACKOFF), "{waits:?}");
        assert!(waits[0] < Duration::from_millis(250), "{waits:?}");
    }
}
