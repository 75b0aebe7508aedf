//! What every reconcile of the controller shares: a span naming the object, the reconcile
//! timer labelled with the failure's reason, and, for the kinds that hold a finalizer, the
//! finalizer, whose own failures become the reconciler's error. The VM, migration, snapshot,
//! restore, schedule and inventory reconcilers all run in it.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info_span, warn};

use crate::controller::context::FailureCounter;
use crate::metrics::Metrics;

/// An error a reconciler returns through the frame.
pub trait FrameError: std::error::Error + Send + 'static {
    /// CamelCase reason, the label of the failure in the metrics.
    fn reason(&self) -> &'static str;
    /// The finalizer itself failed (adding or removing it).
    fn finalizer(message: String) -> Self;
    /// How to retry: a failure backs off; a wait for something under way does not.
    fn retry(&self) -> Retry {
        Retry::BackOff
    }
}

/// How a failed reconcile is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Something under way is awaited (a domain to go, an image to be released): look again
    /// after this, however often it has been awaited already.
    After(Duration),
    /// A failure: retry after [`back_off`] of the object's consecutive failures.
    BackOff,
}

/// The longest wait between two retries of a failing object.
pub const MAX_BACK_OFF: Duration = Duration::from_secs(120);

/// The one back-off of the controller: 1 s after the first failure, doubling with each
/// consecutive one, up to [`MAX_BACK_OFF`].
pub fn back_off(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.saturating_sub(1).min(16)).min(MAX_BACK_OFF)
}

/// The error policy of a reconciler that counts its objects' failures in `failures` (and
/// resets them when a reconcile succeeds).
pub fn error_policy<K: Resource, E: FrameError>(object: &K, err: &E, failures: &FailureCounter) -> Action {
    let delay = match err.retry() {
        Retry::After(delay) => {
            debug!(reason = err.reason(), retry_in = ?delay, "{err}");
            return Action::requeue(delay);
        }
        Retry::BackOff => back_off(failures.bump(&object.meta().uid.clone().unwrap_or_default())),
    };
    warn!(error = %err, reason = err.reason(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs `reconcile` for `object` in a span naming it, timed under `kind`.
pub async fn observed<K, E, Fut>(
    kind: &'static str,
    object: &K,
    metrics: &Metrics,
    reconcile: Fut,
) -> Result<Action, E>
where
    K: Resource<DynamicType = ()>,
    E: FrameError,
    Fut: Future<Output = Result<Action, E>>,
{
    let namespace = object.namespace().unwrap_or_default();
    let span = info_span!("reconcile", kind, namespace = %namespace, object = %object.name_any());
    async move {
        let timer = metrics.reconcile_timer(kind);
        let result = reconcile.await;
        match &result {
            Ok(_) => timer.ok(),
            Err(e) => timer.error(e.reason()),
        }
        result
    }
    .instrument(span)
    .await
}

/// Runs `step` for `object` under `finalizer_name`: `Apply` while it lives, `Cleanup` once it
/// is deleted (the finalizer goes when `Cleanup` succeeds). A finalizer found already gone
/// when it is removed means the object was deleted meanwhile, the end the cleanup was for.
pub async fn finalized<K, E, F, Fut>(
    kind: &'static str,
    api: &Api<K>,
    finalizer_name: &str,
    object: Arc<K>,
    metrics: &Metrics,
    step: F,
) -> Result<Action, E>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
    E: FrameError,
    F: FnOnce(finalizer::Event<K>) -> Fut,
    Fut: Future<Output = Result<Action, E>>,
{
    let guarded = async {
        finalizer(api, finalizer_name, object.clone(), step)
            .await
            .or_else(|err| match err {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => Err(e),
                finalizer::Error::RemoveFinalizer(kube::Error::Api(e)) if e.code == 404 => {
                    Ok(Action::await_change())
                }
                other => Err(E::finalizer(other.to_string())),
            })
    };
    observed(kind, object.as_ref(), metrics, guarded).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_from_one_second_up_to_its_cap() {
        let waits: Vec<u64> = (1..=9).map(|n| back_off(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 120, 120]);
        assert_eq!(back_off(u32::MAX), MAX_BACK_OFF);
    }
}
