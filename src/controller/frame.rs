//! What a finalizer-guarded reconcile shares: a span naming the object, the reconcile timer,
//! and the finalizer, whose own failures become the reconciler's error. The VM and migration
//! reconcilers run in it; the snapshot controllers still carry their own copy.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, info_span};

use crate::metrics::Metrics;

/// An error a reconciler returns through the frame.
pub trait FrameError: std::error::Error + Send + 'static {
    /// CamelCase reason, the label of the failure in the metrics.
    fn reason(&self) -> &'static str;
    /// The finalizer itself failed (adding or removing it).
    fn finalizer(message: String) -> Self;
}

/// Runs `step` for `object` under `finalizer_name`: `Apply` while it lives, `Cleanup` once it
/// is deleted (the finalizer goes when `Cleanup` succeeds).
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
    let namespace = object.namespace().unwrap_or_default();
    let span = info_span!("reconcile", kind, namespace = %namespace, object = %object.name_any());
    async move {
        let timer = metrics.reconcile_timer(kind);
        let result = finalizer(api, finalizer_name, object, step)
            .await
            .map_err(|err| match err {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e,
                other => E::finalizer(other.to_string()),
            });
        match &result {
            Ok(_) => timer.ok(),
            Err(e) => timer.error(e.reason()),
        }
        result
    }
    .instrument(span)
    .await
}
