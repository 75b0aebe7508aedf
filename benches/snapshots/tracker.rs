//! When each VirtualMachineSnapshot and VirtualMachineRestore reached each stage, from the
//! harness's own watches (the time an event arrives here, on the wall clock of `now_us`), and
//! waiting for a stage without polling: every recorded event wakes the waiters.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use seapath_operator::api::{
    RestorePhase, SNAPSHOT_FINALIZER, SnapshotPhase, VirtualMachineRestore, VirtualMachineSnapshot,
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::timeline::{Micros, now_us};

/// What was seen of one object: the first time of each stage, and its last error message.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub at: HashMap<&'static str, Micros>,
    pub message: Option<String>,
}

/// Stages by object name (one namespace per tracker).
#[derive(Clone)]
pub struct Tracker {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Tracker {
    fn default() -> Tracker {
        Tracker {
            seen: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

impl Tracker {
    /// Records `stages` of `name` at `at` (only their first time counts).
    pub fn record(&self, name: &str, stages: &[&'static str], message: Option<String>, at: Micros) {
        {
            let mut seen = self.seen.lock().expect("tracker");
            let entry = seen.entry(name.to_owned()).or_default();
            for stage in stages {
                entry.at.entry(*stage).or_insert(at);
            }
            if message.is_some() {
                entry.message = message;
            }
        }
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn at(&self, name: &str, stage: &str) -> Option<Micros> {
        self.seen
            .lock()
            .expect("tracker")
            .get(name)
            .and_then(|s| s.at.get(stage).copied())
    }

    pub fn get(&self, name: &str) -> Seen {
        self.seen
            .lock()
            .expect("tracker")
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `done(name)` holds; fails when `failed` returns a reason or after `timeout`.
    async fn wait_until(
        &self,
        timeout: Duration,
        what: impl Fn() -> String,
        done: impl Fn(&Tracker) -> bool,
        failed: impl Fn(&Tracker) -> Option<String>,
    ) -> anyhow::Result<()> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Marked seen before the check: an event recorded after it wakes `changed`.
            rx.borrow_and_update();
            if done(self) {
                return Ok(());
            }
            if let Some(reason) = failed(self) {
                anyhow::bail!("{}: {reason}", what());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => anyhow::bail!("{}: the watch stopped", what()),
                Err(_) => anyhow::bail!(
                    "{}: not within {timeout:?}; read the controller log in the bench work directory",
                    what()
                ),
            }
        }
    }

    /// Waits until `name` reaches `stage`, returns when it was seen; fails if it reaches
    /// `failed` first.
    pub async fn wait(
        &self,
        name: &str,
        stage: &'static str,
        failed: &'static str,
        timeout: Duration,
    ) -> anyhow::Result<Micros> {
        self.wait_until(
            timeout,
            || format!("{name} to be {stage}"),
            |t| t.at(name, stage).is_some(),
            |t| {
                t.at(name, failed)
                    .map(|_| format!("it is {failed}: {}", t.get(name).message.unwrap_or_default()))
            },
        )
        .await?;
        Ok(self.at(name, stage).unwrap_or_default())
    }

    /// Waits until every one of `names` reaches `stage`.
    pub async fn wait_all(
        &self,
        names: &[String],
        stage: &'static str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let left = |t: &Tracker| names.iter().filter(|n| t.at(n, stage).is_none()).count();
        self.wait_until(
            timeout,
            || format!("{} of {} objects still to be {stage}", left(self), names.len()),
            |t| left(t) == 0,
            |_| None,
        )
        .await
    }

    /// `to - from` of every name that saw both stages, µs.
    pub fn spans(&self, names: &[String], from: &str, to: &str) -> Vec<i64> {
        names
            .iter()
            .filter_map(|n| Some(self.at(n, to)? - self.at(n, from)?))
            .collect()
    }

    /// The last time any of `names` reached `stage`.
    pub fn last(&self, names: &[String], stage: &str) -> Option<Micros> {
        names.iter().filter_map(|n| self.at(n, stage)).max()
    }
}

/// The stages an object shows in one watch event, and its error message.
pub type Stages<K> = fn(&K) -> (Vec<&'static str>, Option<String>);

/// Watches the objects of `api` and records their stages; a deleted object is `gone`. Returns
/// once the initial list is done.
pub async fn start_watch<K>(
    api: Api<K>,
    tracker: Tracker,
    stages: Stages<K>,
) -> anyhow::Result<tokio::task::JoinHandle<()>>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default,
{
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        tokio::pin!(stream);
        let mut ready = Some(ready_tx);
        while let Some(event) = stream.next().await {
            let at = now_us();
            match event {
                Ok(Event::Apply(obj)) | Ok(Event::InitApply(obj)) => {
                    let (seen, message) = stages(&obj);
                    tracker.record(&obj.name_any(), &seen, message, at);
                }
                Ok(Event::Delete(obj)) => tracker.record(&obj.name_any(), &["gone"], None, at),
                Ok(Event::InitDone) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Init) => {}
                Err(e) => eprintln!("bench: watching {}: {e}", K::kind(&K::DynamicType::default())),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .map_err(|_| anyhow::anyhow!("a watch did not start within 30 s"))??;
    Ok(handle)
}

/// `finalizer` (the controller's first reconcile), the phase (`InProgress`, `Ready`, `Failed`,
/// `Deleting`) and `deleting` (deletion requested).
pub fn snapshot_stages(s: &VirtualMachineSnapshot) -> (Vec<&'static str>, Option<String>) {
    let mut out = Vec::new();
    if s.finalizers().iter().any(|f| f == SNAPSHOT_FINALIZER) {
        out.push("finalizer");
    }
    let status = s.status.as_ref();
    match status.and_then(|st| st.phase) {
        Some(SnapshotPhase::InProgress) => out.push("InProgress"),
        Some(SnapshotPhase::Ready) if status.is_some_and(|st| st.ready_to_use) => out.push("Ready"),
        Some(SnapshotPhase::Failed) => out.push("Failed"),
        Some(SnapshotPhase::Deleting) => out.push("Deleting"),
        _ => {}
    }
    if s.metadata.deletion_timestamp.is_some() {
        out.push("deleting");
    }
    (
        out,
        status.and_then(|st| st.error.as_ref()).map(|e| e.message.clone()),
    )
}

/// The restore's phase (`Stopping`, `RollingBack`, `Starting`, `Succeeded`, `Failed`).
pub fn restore_stages(r: &VirtualMachineRestore) -> (Vec<&'static str>, Option<String>) {
    let status = r.status.as_ref();
    let phase = match status.and_then(|st| st.phase) {
        Some(RestorePhase::Pending) => "Pending",
        Some(RestorePhase::Stopping) => "Stopping",
        Some(RestorePhase::RollingBack) => "RollingBack",
        Some(RestorePhase::Starting) => "Starting",
        Some(RestorePhase::Creating) => "Creating",
        Some(RestorePhase::Succeeded) => "Succeeded",
        Some(RestorePhase::Failed) => "Failed",
        None => return (Vec::new(), None),
    };
    (
        vec![phase],
        status.and_then(|st| st.error.as_ref()).map(|e| e.message.clone()),
    )
}
