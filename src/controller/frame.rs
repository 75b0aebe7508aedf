//! What every reconcile of the controller shares: a span naming the object, the reconcile
//! timer labelled with the failure's reason, and, for the kinds that hold a finalizer, the
//! finalizer, whose own failures become the reconciler's error. The VM, migration, snapshot,
//! restore, schedule and inventory reconcilers all run in it.

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
