//! Events, published one way by every reconciler: a failed publication is logged, never an
//! error of the reconcile (Events tell people what happened; no step waits for them).

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

/// What happened to an object, for `kubectl describe`.
pub struct Note<'a> {
    pub type_: EventType,
    pub reason: &'a str,
    pub action: &'a str,
    pub text: String,
}

/// Publishes `note` on `obj` and waits for the API server's answer.
pub async fn publish<K: Resource<DynamicType = ()>>(recorder: &Recorder, obj: &K, note: Note<'_>) {
    let reference = obj.object_ref(&());
    send(recorder, &reference, event(note)).await;
}

/// Publishes `note` on `obj` without waiting for it (off the path a reconcile is timed on).
pub fn publish_in_background<K: Resource<DynamicType = ()>>(recorder: &Recorder, obj: &K, note: Note<'_>) {
    let (recorder, reference, event) = (recorder.clone(), obj.object_ref(&()), event(note));
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        send(&recorder, &reference, event).await;
    }));
}

fn event(note: Note<'_>) -> Event {
    Event {
        type_: note.type_,
        reason: note.reason.into(),
        note: Some(note.text),
        action: note.action.into(),
        secondary: None,
    }
}

async fn send(recorder: &Recorder, reference: &k8s_openapi::api::core::v1::ObjectReference, event: Event) {
    if let Err(err) = recorder.publish(&event, reference).await {
        warn!(error = %err, "publishing event failed");
    }
}
