//! When each VM reached each stage of apply -> Started, from three sources on one clock (the
//! wall clock, in microseconds since the epoch):
//!
//! - the harness's own watch on VirtualMachines (finalizer, StorageReady, node label,
//!   `status.domain` Running, phase Started);
//! - the in-process agents' tracing events (`acting`, `defined`, `started`, `domain state`);
//! - the controller's JSON log (the first change line of its storage work).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use seapath_operator::api::{DomainState, NODE_LABEL, Phase, VM_FINALIZER, VirtualMachine};
use serde_json::json;

/// Microseconds since the epoch.
pub type Micros = i64;

pub fn now_us() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// First time each stage was seen for one VM.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    /// The create request was sent (for a burst: when the burst started).
    pub applied: Option<Micros>,
    /// Watch: the controller's finalizer is on the object (its first reconcile is done).
    pub finalizer: Option<Micros>,
    /// Controller log: its storage work is done (first change line of `ensure_storage`).
    pub storage_done: Option<Micros>,
    /// Watch: the node label is set.
    pub labelled: Option<Micros>,
    /// Watch: `StorageReady=True`.
    pub storage_ready: Option<Micros>,
    /// Agent: decided to act (domain observed, XML read from RBD).
    pub agent_acting: Option<Micros>,
    /// Agent: the domain is defined.
    pub agent_defined: Option<Micros>,
    /// Agent: the domain is started.
    pub agent_started: Option<Micros>,
    /// Agent: `status.domain` written.
    pub agent_reported: Option<Micros>,
    /// Watch: `status.domain.state` is Running.
    pub domain_running: Option<Micros>,
    /// Watch: `status.phase` is Started.
    pub started: Option<Micros>,
}

pub fn first(slot: &mut Option<Micros>, at: Micros) {
    if slot.is_none() {
        *slot = Some(at);
    }
}

/// Timelines by `namespace/name`.
#[derive(Clone, Default)]
pub struct Timelines(Arc<Mutex<HashMap<String, Timeline>>>);

impl Timelines {
    pub fn update(&self, key: &str, f: impl FnOnce(&mut Timeline)) {
        let mut map = self.0.lock().expect("timelines");
        f(map.entry(key.to_owned()).or_default());
    }

    pub fn get(&self, key: &str) -> Timeline {
        self.0
            .lock()
            .expect("timelines")
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Writes every VM's stages, in ms after its apply, as tab-separated values.
    pub fn write_tsv(&self, path: &std::path::Path) -> std::io::Result<()> {
        let map = self.0.lock().expect("timelines");
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        let mut out = String::from(
            "vm\tfinalizer\tstorage_done\tlabelled\tstorage_ready\tagent_acting\tagent_defined\t\
             agent_started\tagent_reported\tdomain_running\tstarted\n",
        );
        for k in keys {
            let t = &map[k];
            out.push_str(k);
            for at in [
                t.finalizer,
                t.storage_done,
                t.labelled,
                t.storage_ready,
                t.agent_acting,
                t.agent_defined,
                t.agent_started,
                t.agent_reported,
                t.domain_running,
                t.started,
            ] {
                match (at, t.applied) {
                    (Some(at), Some(applied)) => {
                        out.push_str(&format!("\t{:.1}", (at - applied) as f64 / 1000.0))
                    }
                    _ => out.push_str("\t-"),
                }
            }
            out.push('\n');
        }
        std::fs::write(path, out)
    }

    /// How many of `keys` satisfy `done`.
    pub fn count(&self, keys: &[String], done: impl Fn(&Timeline) -> bool) -> usize {
        let map = self.0.lock().expect("timelines");
        keys.iter().filter(|k| map.get(*k).is_some_and(&done)).count()
    }

    /// Waits until every VM of `keys` satisfies `done`; fails after `timeout`.
    pub async fn wait_all(
        &self,
        keys: &[String],
        timeout: Duration,
        what: &str,
        done: impl Fn(&Timeline) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let n = self.count(keys, &done);
            if n == keys.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let missing: Vec<&String> = {
                    let map = self.0.lock().expect("timelines");
                    keys.iter()
                        .filter(|k| !map.get(*k).is_some_and(&done))
                        .take(5)
                        .collect()
                };
                anyhow::bail!(
                    "{what}: only {n} of {} VMs within {timeout:?} (still waiting for {missing:?} ...); \
                     read the controller log and bench-agents.log in the bench work directory",
                    keys.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Records what one watch event shows.
fn observe(timelines: &Timelines, vm: &VirtualMachine, at: Micros) {
    let k = key(&vm.namespace().unwrap_or_default(), &vm.name_any());
    let status = vm.status.as_ref();
    let storage_ready = status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "StorageReady" && c.status == "True")
    });
    let running = status
        .and_then(|s| s.domain.as_ref())
        .is_some_and(|d| d.state == DomainState::Running);
    let started = status.and_then(|s| s.phase) == Some(Phase::Started);
    let finalizer = vm.finalizers().iter().any(|f| f == VM_FINALIZER);
    let labelled = vm.labels().contains_key(NODE_LABEL);
    timelines.update(&k, |t| {
        if finalizer {
            first(&mut t.finalizer, at);
        }
        if labelled {
            first(&mut t.labelled, at);
        }
        if storage_ready {
            first(&mut t.storage_ready, at);
        }
        if running {
            first(&mut t.domain_running, at);
        }
        if started {
            first(&mut t.started, at);
        }
    });
}

/// Watches every VirtualMachine and records stages into `timelines`; returns once the initial
/// list is done.
pub async fn start_watch(
    client: Client,
    timelines: Timelines,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let stream = vm_watch(Api::<VirtualMachine>::all(client)).default_backoff();
        tokio::pin!(stream);
        let mut ready = Some(ready_tx);
        while let Some(event) = stream.next().await {
            let at = now_us();
            match event {
                Ok(Event::Apply(vm)) | Ok(Event::InitApply(vm)) => observe(&timelines, &vm, at),
                Ok(Event::InitDone) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("bench: watching VirtualMachines: {e}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .map_err(|_| anyhow::anyhow!("the VirtualMachine watch did not start within 30 s"))??;
    Ok(handle)
}

fn vm_watch(
    api: Api<VirtualMachine>,
) -> impl futures::Stream<Item = Result<Event<VirtualMachine>, watcher::Error>> {
    watcher::watcher(api, watcher::Config::default())
}

/// The base XML of every benchmark VM: tiny, so 500 of them fit on two simulated hosts.
pub fn base_xml(name: &str, memory_mib: u32) -> String {
    format!(
        "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>{memory_mib}</memory>\n  \
         <vcpu>1</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>\n</domain>\n"
    )
}

/// A VirtualMachine object with one system disk from `source`.
pub fn vm_object(
    namespace: &str,
    name: &str,
    state: &str,
    source: serde_json::Value,
    size: Option<&str>,
) -> anyhow::Result<VirtualMachine> {
    let mut disk = json!({ "source": source });
    if let Some(size) = size {
        disk["size"] = json!(size);
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "state": state,
            "stopTimeoutSeconds": 5,
            "systemDisk": disk,
            "xml": base_xml(name, 16),
        }
    }))?)
}

/// A Started VM with a blank 16 MiB system disk.
pub fn blank_vm(namespace: &str, name: &str) -> anyhow::Result<VirtualMachine> {
    vm_object(namespace, name, "Started", json!({"blank": {}}), Some("16Mi"))
}

/// Creates the VMs, at most `parallel` requests at a time. Every VM's `applied` time is
/// `batch_start` (when given) or the moment its own request was sent.
pub async fn create_vms(
    client: &Client,
    timelines: &Timelines,
    vms: Vec<VirtualMachine>,
    parallel: usize,
    batch_start: Option<Micros>,
) -> anyhow::Result<Vec<String>> {
    let keys: Vec<String> = vms
        .iter()
        .map(|vm| key(&vm.namespace().unwrap_or_default(), &vm.name_any()))
        .collect();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(vms.into_iter().map(|vm| {
        let client = client.clone();
        let timelines = timelines.clone();
        async move {
            let namespace = vm.namespace().unwrap_or_default();
            let k = key(&namespace, &vm.name_any());
            let api: Api<VirtualMachine> = Api::namespaced(client, &namespace);
            let at = batch_start.unwrap_or_else(now_us);
            timelines.update(&k, |t| t.applied = Some(at));
            api.create(&PostParams::default(), &vm)
                .await
                .map_err(|e| anyhow::anyhow!("creating VirtualMachine {k}: {e}"))?;
            Ok(())
        }
    }))
    .buffer_unordered(parallel.max(1))
    .collect()
    .await;
    for r in results {
        r?;
    }
    Ok(keys)
}
