//! The fault campaign: the controller and both agents run as real child processes (the built
//! `seapath-operator` binary) and are killed with SIGKILL at random points while a workload runs
//! in a namespace of its own: VMs from blank disks and path imports, clones, state changes,
//! snapshots, restores in place and into a new VM, a snapshot schedule with retention, and
//! deletions under both policies. At the end nothing is killed any more; every object must reach
//! its final phase and the invariants are checked against the API server and Ceph:
//!
//! - every VM reaches the phase of its desired state, every snapshot Ready, every restore
//!   Succeeded, every deleted object is gone;
//! - RBD holds exactly the images and groups of the VMs that exist or were deleted with
//!   `Retain`: no orphan image, group, `tmp_*` name, trash entry, group snapshot, trash-namespace
//!   snapshot, nor user snapshot that no snapshot object claims; nothing the workload did not
//!   delete is gone;
//! - never one VM listed by two live hypervisors at once (a background sampler during the whole
//!   run) nor reported by a node other than the one it is placed on;
//! - no process panicked.
//!
//! Between kill points the campaign also stops the test bed's OSD or its API server for a few
//! seconds (SIGSTOP, then SIGCONT: every client's calls hang, as in an outage), drawn from a
//! second generator of the same seed, so the operations and kill points stay those of the seed.
//!
//! Every violation is listed in one failing assertion with the seed, which replays the same
//! sequence of operations and kill points (timings of the operator itself still vary).
//!
//! `SEAPATH_CHAOS_SEED` (default [`DEFAULT_SEED`]) and `SEAPATH_CHAOS_KILLS` (default
//! [`DEFAULT_KILLS`], the CI run) choose the campaign; `hack/chaos.sh` runs a long one.
//! `SEAPATH_CHAOS_LOGS` keeps the processes' logs in that directory.
//!
//! Known bugs the campaign finds ([`KNOWN_BUGS`]) are listed apart and fail it only with
//! `SEAPATH_CHAOS_STRICT=1` (as `hack/chaos.sh` runs it), so that CI stays green until they are
//! fixed. None is listed now: the last one, a controller killed inside librbd's rename of a
//! finished disk, is repaired by the next run (`controller/storage/rename_repair.rs`).
//!
//! The long campaign's figures (seed, kill points, outages, violations) are in the closing
//! notes of the changes that ran it; the defects it found are fixed, each with a test of its own.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use seapath_operator::api::{
    Hypervisor, MIGRATION_TARGET_LABEL, MIGRATION_UID_ANNOTATION, MOVE_TO_ANNOTATION, MigrationPhase, Phase,
    RestorePhase, SnapshotPhase, VirtualMachine, VirtualMachineMigration, VirtualMachineRestore,
    VirtualMachineSnapshot, VirtualMachineSnapshotSchedule,
};
use seapath_operator::ceph::{IoCtx, SnapNamespace};
use serde_json::json;

use common::testbed_env;

/// The CI campaign: a seed whose run passes.
const DEFAULT_SEED: u64 = 20261207;
const DEFAULT_KILLS: usize = 30;
/// How long the operator has to converge once the killing stops.
const CONVERGE: Duration = Duration::from_secs(240);

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number")))
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// The operator's processes.

struct Proc {
    name: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Proc {
    fn start(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = common::chart::operator_command(&self.args, file);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.child = Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", self.name)),
        );
        self.starts += 1;
    }

    /// SIGKILL (std's `Child::kill`), and reaped.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An exit the campaign did not cause (a crash or a stop on an error).
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(format!("{} exited by itself: {status}", self.name))
            }
            _ => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One in eight kill points is followed by an outage of the OSD or the API server, 2 to 5 s.
async fn maybe_outage(rng: &mut fastrand::Rng, outages: &mut BTreeMap<&'static str, usize>, point: usize) {
    if rng.u8(0..8) != 0 {
        return;
    }
    let component = if rng.bool() { "ceph-osd" } else { "kube-apiserver" };
    let length = Duration::from_millis(rng.u64(2000..=5000));
    eprintln!("kill point {point}: {component} stopped for {length:?}");
    let outage = common::Stopped::stop(component);
    tokio::time::sleep(length).await;
    drop(outage);
    *outages.entry(component).or_default() += 1;
}

fn ceph_env(role: &str) -> Vec<(String, String)> {
    let (client_id, options) = common::operator::role_ceph_user(role);
    let mut env = vec![
        ("KUBECONFIG".to_owned(), testbed_env("KUBECONFIG")),
        ("CEPH_CONF".to_owned(), testbed_env("CEPH_CONF")),
        ("SEAPATH_CEPH_POOL".to_owned(), testbed_env("SEAPATH_CEPH_POOL")),
        ("SEAPATH_CEPH_CLIENT".to_owned(), client_id),
    ];
    for (_, keyring) in options.iter().filter(|(key, _)| key == "keyring") {
        env.push(("SEAPATH_CEPH_KEYRING".to_owned(), keyring.clone()));
    }
    env
}

fn processes(run: &str, logs: &Path, nodes: &[String; 2], import_dir: &Path) -> Vec<Proc> {
    let uris: Vec<String> = testbed_env("SEAPATH_LIBVIRT_NODES")
        .split(',')
        .map(|e| e.split_once('=').expect("NAME=URI").1.to_owned())
        .collect();
    assert!(uris.len() >= 2, "the test bed needs two simulated hypervisors");
    let mut controller_env = ceph_env("CONTROLLER");
    controller_env.extend([
        // The guard object is named after it: one of its own, no other test's controller fenced.
        ("POD_NAMESPACE".to_owned(), format!("{run}-lease")),
        ("POD_NAME".to_owned(), format!("{run}-controller")),
        ("SEAPATH_NODE_LOST_GRACE".to_owned(), "10".to_owned()),
        // Every restart fences the killed controller: keep the OSD map's blocklist short.
        ("SEAPATH_FENCE_BLOCKLIST_EXPIRY".to_owned(), "900".to_owned()),
        ("SEAPATH_IMPORT_DIRS".to_owned(), import_dir.display().to_string()),
        ("SEAPATH_UNMANAGED_SNAPSHOT_REFRESH".to_owned(), "20".to_owned()),
    ]);
    let mut procs = vec![Proc {
        name: "controller".to_owned(),
        args: ["controller", "--http-addr", "127.0.0.1:0"]
            .map(String::from)
            .to_vec(),
        env: controller_env,
        log: logs.join("controller.log"),
        child: None,
        starts: 0,
    }];
    for (node, uri) in nodes.iter().zip(&uris) {
        let mut env = ceph_env("AGENT");
        env.extend([
            ("SEAPATH_RESTART_BACKOFF_BASE".to_owned(), "1".to_owned()),
            ("SEAPATH_RESTART_BACKOFF_MAX".to_owned(), "4".to_owned()),
            ("SEAPATH_AGENT_RESYNC".to_owned(), "10".to_owned()),
        ]);
        procs.push(Proc {
            name: format!("agent-{node}"),
            args: vec![
                "agent".into(),
                "--node".into(),
                node.clone(),
                "--libvirt-uri".into(),
                uri.clone(),
                "--http-addr".into(),
                "127.0.0.1:0".into(),
            ],
            env,
            log: logs.join(format!("agent-{node}.log")),
            child: None,
            starts: 0,
        });
    }
    procs
}

// ---------------------------------------------------------------------------------------------
// The workload's model: what the user asked for, so the end state can be judged.

#[derive(Clone, Debug)]
struct VmModel {
    state: &'static str,
    retain: bool,
    /// Images the VM has (system first).
    images: Vec<String>,
    deleted: bool,
}

#[derive(Default)]
struct Model {
    vms: BTreeMap<String, VmModel>,
    /// Snapshot object -> VM.
    snapshots: BTreeMap<String, String>,
    deleted_snapshots: BTreeSet<String>,
    restores: BTreeSet<String>,
    next: usize,
    ops: BTreeMap<&'static str, usize>,
}

impl Model {
    fn name(&mut self, prefix: &str) -> String {
        self.next += 1;
        format!("{prefix}{}", self.next)
    }

    fn live_vms(&self) -> Vec<String> {
        self.vms
            .iter()
            .filter(|(_, vm)| !vm.deleted)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

const XML: &str = common::snapshots::XML;
const STATES: [&str; 3] = ["Started", "Stopped", "Disabled"];

fn vm_object(
    name: &str,
    system: serde_json::Value,
    data_disks: usize,
    state: &str,
    node: &str,
    retain: bool,
) -> VirtualMachine {
    let disks: Vec<_> = (0..data_disks)
        .map(|_| json!({"source": {"blank": {}}, "size": "8Mi"}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"chaos": "yes"}},
        "spec": {
            "xml": XML, "state": state, "stopTimeoutSeconds": 3,
            "systemDisk": system, "dataDisks": disks,
            "placement": {"preferredNode": node},
            // The test-driver hosts cannot live-migrate: a migration falls back to stop and start.
            "migration": {"onFailure": "StopAndStart"},
            "deletionPolicy": if retain { "Retain" } else { "Delete" },
        }
    }))
    .expect("valid VirtualMachine")
}

struct Workload {
    vms: Api<VirtualMachine>,
    snaps: Api<VirtualMachineSnapshot>,
    restores: Api<VirtualMachineRestore>,
    migrations: Api<VirtualMachineMigration>,
    hypervisors: Api<Hypervisor>,
    /// The hypervisor being drained, if any.
    draining: Option<String>,
    nodes: [String; 2],
    import_file: PathBuf,
    model: Model,
}

impl Workload {
    async fn vm_phase(&self, name: &str) -> Option<Phase> {
        self.vms
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|vm| vm.status.and_then(|s| s.phase))
    }

    /// A restore of `vm` (in place) that has not finished: the VM's state is the restore's.
    async fn restoring(&self, vm: &str) -> bool {
        let Ok(list) = self.restores.list(&ListParams::default()).await else {
            return true;
        };
        list.items.iter().any(|r| {
            (r.spec.vm_name == vm || r.spec.target.as_ref().is_some_and(|t| t.name == vm))
                && !matches!(
                    r.status.as_ref().and_then(|s| s.phase),
                    Some(RestorePhase::Succeeded | RestorePhase::Failed)
                )
        })
    }

    async fn ready_snapshots(&self, vm: &str) -> Vec<String> {
        let mut ready = Vec::new();
        for (snap, of) in &self.model.snapshots {
            if of != vm || self.model.deleted_snapshots.contains(snap) {
                continue;
            }
            if let Ok(Some(s)) = self.snaps.get_opt(snap).await
                && s.status.as_ref().and_then(|st| st.phase) == Some(SnapshotPhase::Ready)
            {
                ready.push(snap.clone());
            }
        }
        ready
    }

    async fn create_vm(
        &mut self,
        rng: &mut fastrand::Rng,
        system: Option<(String, serde_json::Value)>,
    ) -> String {
        let name = self.model.name(if system.is_some() { "cl" } else { "vm" });
        let data_disks = if system.is_some() { 0 } else { rng.usize(0..=1) };
        let (kind, system) = match system {
            Some((kind, s)) => (kind, s),
            None if rng.u8(0..3) == 0 => (
                "import".to_owned(),
                json!({"source": {"path": {"path": self.import_file.display().to_string(), "format": "raw"}}}),
            ),
            None => (
                "blank".to_owned(),
                json!({"source": {"blank": {}}, "size": "16Mi"}),
            ),
        };
        let state = STATES[rng.usize(0..3)];
        let retain = rng.u8(0..4) == 0;
        let node = self.nodes[rng.usize(0..2)].clone();
        let object = vm_object(&name, system, data_disks, state, &node, retain);
        eprintln!("op: create {kind} VM {name} ({state}, {data_disks} data disks, retain {retain})");
        self.vms
            .create(&PostParams::default(), &object)
            .await
            .expect("create VM");
        let mut images = vec![format!("system_{name}")];
        images.extend((0..data_disks).map(|i| format!("data_{name}_{i}")));
        self.model.vms.insert(
            name.clone(),
            VmModel {
                state,
                retain,
                images,
                deleted: false,
            },
        );
        *self
            .model
            .ops
            .entry(if kind == "import" {
                "import"
            } else if kind == "clone" {
                "clone"
            } else {
                "create"
            })
            .or_default() += 1;
        name
    }

    /// One random move: a migration of a VM (to the other host), or a drain started or ended.
    /// Drawn from a generator of its own, so a seed keeps its other operations.
    async fn move_step(&mut self, rng: &mut fastrand::Rng) {
        let live = self.model.live_vms();
        if rng.u8(0..3) > 0 && !live.is_empty() {
            let vm = live[rng.usize(0..live.len())].clone();
            if self.restoring(&vm).await {
                return;
            }
            let name = self.model.name("mg");
            eprintln!("op: migrate {vm} ({name})");
            let object: VirtualMachineMigration = serde_json::from_value(json!({
                "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineMigration",
                "metadata": {"name": name}, "spec": {"vmName": vm}
            }))
            .unwrap();
            self.migrations
                .create(&PostParams::default(), &object)
                .await
                .expect("create migration");
            *self.model.ops.entry("migrate").or_default() += 1;
            return;
        }
        let (node, drain) = match self.draining.take() {
            Some(node) => (node, false),
            None => (self.nodes[rng.usize(0..2)].clone(), true),
        };
        eprintln!("op: {} {node}", if drain { "drain" } else { "uncordon" });
        if self.set_drain(&node, drain).await && drain {
            self.draining = Some(node);
            *self.model.ops.entry("drain").or_default() += 1;
        }
    }

    /// Whether the Hypervisor took the change (its agent may not have registered it yet).
    async fn set_drain(&self, node: &str, drain: bool) -> bool {
        let patch = json!({"spec": {"unschedulable": drain, "drain": drain}});
        let patched = self
            .hypervisors
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        if let Err(e) = &patched {
            eprintln!("op: {node} not patched: {e}");
        }
        patched.is_ok()
    }

    /// One random operation of the workload (a no-op when it finds nothing to act on).
    async fn step(&mut self, rng: &mut fastrand::Rng) {
        let live = self.model.live_vms();
        let pick = |rng: &mut fastrand::Rng| -> Option<String> {
            (!live.is_empty()).then(|| live[rng.usize(0..live.len())].clone())
        };
        let roll = if live.len() < 3 { 0 } else { rng.u8(0..100) };
        match roll {
            0..15 => {
                self.create_vm(rng, None).await;
            }
            15..25 => {
                let Some(source) = pick(rng) else { return };
                // A clone of a VM whose storage exists (a clone needs its source until then).
                if matches!(self.vm_phase(&source).await, None | Some(Phase::Undefined)) {
                    return;
                }
                let system = json!({"source": {"vm": {"name": source}}});
                self.create_vm(rng, Some(("clone".to_owned(), system))).await;
            }
            25..50 => {
                let Some(vm) = pick(rng) else { return };
                if self.restoring(&vm).await {
                    return;
                }
                let state = STATES[rng.usize(0..3)];
                eprintln!("op: {vm} -> {state}");
                let patch = json!({"spec": {"state": state}});
                if self
                    .vms
                    .patch(&vm, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    self.model.vms.get_mut(&vm).unwrap().state = state;
                    *self.model.ops.entry("state").or_default() += 1;
                }
            }
            50..68 => {
                let Some(vm) = pick(rng) else { return };
                if matches!(self.vm_phase(&vm).await, None | Some(Phase::Undefined))
                    || self.restoring(&vm).await
                {
                    return;
                }
                let name = self.model.name("sn");
                eprintln!("op: snapshot {name} of {vm}");
                let object: VirtualMachineSnapshot = serde_json::from_value(json!({
                    "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineSnapshot",
                    "metadata": {"name": name},
                    "spec": {"vmName": vm, "failureDeadline": "0"}
                }))
                .unwrap();
                self.snaps
                    .create(&PostParams::default(), &object)
                    .await
                    .expect("create snapshot");
                self.model.snapshots.insert(name, vm);
                *self.model.ops.entry("snapshot").or_default() += 1;
            }
            68..82 => {
                let Some(vm) = pick(rng) else { return };
                if self.restoring(&vm).await {
                    return;
                }
                let ready = self.ready_snapshots(&vm).await;
                if ready.is_empty() {
                    return;
                }
                let snap = ready[rng.usize(0..ready.len())].clone();
                let name = self.model.name("rs");
                let into_new = rng.bool();
                let mut spec = json!({"vmName": vm, "snapshot": snap});
                if into_new {
                    spec["target"] = json!({"name": name});
                }
                eprintln!("op: restore {name} of {vm} to {snap} (into a new VM: {into_new})");
                let object: VirtualMachineRestore = serde_json::from_value(json!({
                    "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineRestore",
                    "metadata": {"name": name}, "spec": spec
                }))
                .unwrap();
                self.restores
                    .create(&PostParams::default(), &object)
                    .await
                    .expect("create restore");
                self.model.restores.insert(name.clone());
                if into_new {
                    let source = self.model.vms[&vm].clone();
                    let images = source.images.iter().map(|i| i.replacen(&vm, &name, 1)).collect();
                    self.model.vms.insert(
                        name,
                        VmModel {
                            state: source.state,
                            retain: source.retain,
                            images,
                            deleted: false,
                        },
                    );
                    *self.model.ops.entry("restore-new").or_default() += 1;
                } else {
                    *self.model.ops.entry("restore").or_default() += 1;
                }
            }
            82..90 => {
                let snaps: Vec<String> = self
                    .model
                    .snapshots
                    .keys()
                    .filter(|s| !self.model.deleted_snapshots.contains(*s))
                    .cloned()
                    .collect();
                if snaps.is_empty() {
                    return;
                }
                let snap = snaps[rng.usize(0..snaps.len())].clone();
                // Not one a restore still reads.
                let vm = self.model.snapshots[&snap].clone();
                if self.restoring(&vm).await {
                    return;
                }
                eprintln!("op: delete snapshot {snap}");
                self.snaps.delete(&snap, &DeleteParams::default()).await.ok();
                self.model.deleted_snapshots.insert(snap);
                *self.model.ops.entry("delete-snapshot").or_default() += 1;
            }
            _ => {
                let Some(vm) = pick(rng) else { return };
                if self.restoring(&vm).await {
                    return;
                }
                // A clone still being made reads its source: not while one is Undefined.
                for (name, model) in &self.model.vms {
                    if !model.deleted
                        && name.starts_with("cl")
                        && self.vm_phase(name).await == Some(Phase::Undefined)
                    {
                        return;
                    }
                }
                // Its snapshot objects go first (as a user would, and the retained disks keep no
                // snapshot nobody claims), then the VM.
                let mine: Vec<String> = self
                    .model
                    .snapshots
                    .iter()
                    .filter(|(s, of)| **of == vm && !self.model.deleted_snapshots.contains(*s))
                    .map(|(s, _)| s.clone())
                    .collect();
                for snap in mine {
                    self.snaps.delete(&snap, &DeleteParams::default()).await.ok();
                    self.model.deleted_snapshots.insert(snap);
                }
                eprintln!("op: delete VM {vm} (retain {})", self.model.vms[&vm].retain);
                self.vms.delete(&vm, &DeleteParams::default()).await.ok();
                self.model.vms.get_mut(&vm).unwrap().deleted = true;
                *self.model.ops.entry("delete-vm").or_default() += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sampler: no VM on two live hypervisors at once, none reported by a node it is not on.

async fn sample(
    client: Client,
    namespace: String,
    nodes: [String; 2],
    found: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let hypervisors: Api<Hypervisor> = Api::all(client.clone());
    let mut previous: BTreeSet<String> = BTreeSet::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let Ok(list) = hypervisors.list(&ListParams::default()).await else {
            continue;
        };
        let now = Timestamp::now();
        let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for hv in &list.items {
            let Some(status) = &hv.status else { continue };
            let fresh = status
                .heartbeat_time
                .as_ref()
                .is_some_and(|t| now.duration_since(t.0).as_secs_f64() < 5.0);
            if !fresh {
                continue;
            }
            for vm in status
                .vms
                .iter()
                .filter(|vm| vm.starts_with(&format!("{namespace}/")))
            {
                holders.entry(vm.clone()).or_default().push(hv.name_any());
            }
        }
        let mut current = BTreeSet::new();
        for (vm, hvs) in holders {
            if hvs.len() > 1 {
                let line = format!("{vm} on {} live hypervisors at once: {hvs:?}", hvs.len());
                // Two samples in a row: a report lagging by one heartbeat is not a second copy.
                if previous.contains(&line) {
                    found.lock().unwrap().push(format!("[{now}] {line}"));
                }
                current.insert(line);
            }
            for hv in &hvs {
                if !nodes.contains(hv) {
                    found
                        .lock()
                        .unwrap()
                        .push(format!("[{now}] {vm} runs on {hv}, a hypervisor of another test"));
                }
            }
        }
        previous = current;
    }
}

// ---------------------------------------------------------------------------------------------
// The end: convergence and invariants.

/// Conditions of known bugs of the operator that the campaign finds (see the module's doc).
const KNOWN_BUGS: &[&str] = &[];

/// Whether a violation names one of `vms` (as a VM, an image, a group or a scheduled snapshot).
fn mentions_any(line: &str, vms: &BTreeSet<String>) -> bool {
    vms.iter().any(|vm| {
        [
            format!("VM {vm}:"),
            format!("VM {vm} "),
            format!("-{vm}-"),
            format!("_{vm}@"),
            format!("_{vm} "),
            format!("_{vm}_"),
            format!("/{vm} "),
        ]
        .iter()
        .any(|p| line.contains(p.as_str()))
            || line.ends_with(&format!("/{vm}"))
            || line.ends_with(&format!("_{vm}"))
    })
}

/// Waits until every object is final (bounded); returns what is not, and the VMs stuck on a
/// known bug (see [`KNOWN_BUGS`]).
async fn converge(w: &Workload) -> (Vec<String>, BTreeSet<String>) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let mut pending = Vec::new();
        let mut known = BTreeSet::new();
        for (name, vm) in &w.model.vms {
            let object = w.vms.get_opt(name).await.expect("get VM");
            match (vm.deleted, object) {
                (true, Some(_)) => pending.push(format!("VM {name} deleted but still there")),
                (true, None) => {}
                (false, None) => pending.push(format!("VM {name} is gone; it was not deleted")),
                (false, Some(object)) => {
                    let status = object.status.clone().unwrap_or_default();
                    let want = match vm.state {
                        "Started" => Phase::Started,
                        "Stopped" => Phase::Stopped,
                        _ => Phase::Disabled,
                    };
                    let current = status.observed_generation == object.metadata.generation;
                    if status
                        .conditions
                        .iter()
                        .any(|c| c.status == "True" && KNOWN_BUGS.iter().any(|b| c.message.contains(b)))
                    {
                        known.insert(name.clone());
                    }
                    if status.phase != Some(want) || !current {
                        pending.push(format!(
                            "VM {name}: phase {:?} (observed generation {:?} of {:?}), want {want:?}; conditions {:?}",
                            status.phase,
                            status.observed_generation,
                            object.metadata.generation,
                            status
                                .conditions
                                .iter()
                                .filter(|c| c.status == "True" || c.type_ == "Ready")
                                .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
                                .collect::<Vec<_>>()
                        ));
                    }
                }
            }
        }
        for name in w.model.snapshots.keys() {
            let object = w.snaps.get_opt(name).await.expect("get snapshot");
            match (w.model.deleted_snapshots.contains(name), object) {
                (true, Some(_)) => pending.push(format!("snapshot {name} deleted but still there")),
                (false, None) => pending.push(format!("snapshot {name} is gone; it was not deleted")),
                (false, Some(s)) => {
                    let status = s.status.unwrap_or_default();
                    if status.phase != Some(SnapshotPhase::Ready) {
                        pending.push(format!(
                            "snapshot {name}: phase {:?}, error {:?}",
                            status.phase, status.error
                        ));
                    }
                }
                (true, None) => {}
            }
        }
        for name in &w.model.restores {
            match w.restores.get_opt(name).await.expect("get restore") {
                None => pending.push(format!("restore {name} is gone")),
                Some(r) => {
                    let status = r.status.unwrap_or_default();
                    if status.phase != Some(RestorePhase::Succeeded) {
                        pending.push(format!(
                            "restore {name}: phase {:?}, conditions {:?}",
                            status.phase,
                            status
                                .conditions
                                .iter()
                                .map(|c| format!("{}={} {}", c.type_, c.status, c.message))
                                .collect::<Vec<_>>()
                        ));
                    }
                }
            }
        }
        // Snapshots a schedule took and retention deleted must be gone too.
        if let Ok(list) = w.snaps.list(&ListParams::default()).await {
            // (Those of a deleted VM stay as they are: the test bed has no garbage collector.)
            let gone = |vm: &str| w.model.vms.get(vm).is_none_or(|m| m.deleted);
            for s in list
                .items
                .iter()
                .filter(|s| !w.model.snapshots.contains_key(&s.name_any()) && !gone(&s.spec.vm_name))
            {
                let phase = s.status.as_ref().and_then(|st| st.phase);
                if s.metadata.deletion_timestamp.is_some() || !matches!(phase, Some(SnapshotPhase::Ready)) {
                    pending.push(format!(
                        "scheduled snapshot {}: phase {phase:?}, deleting {}",
                        s.name_any(),
                        s.metadata.deletion_timestamp.is_some()
                    ));
                }
            }
        }
        pending.extend(unfinished_moves(w).await);
        // Only VMs stuck on a known bug left: they will not move any more.
        let only_known = pending.iter().all(|p| mentions_any(p, &known));
        let settled = Instant::now() + CONVERGE > deadline + Duration::from_secs(60);
        if pending.is_empty() || Instant::now() > deadline || (only_known && settled) {
            return (pending, known);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Migrations (the workload's and the drains') that have not ended, and VMs that still carry a
/// migration's marks once every migration ended.
async fn unfinished_moves(w: &Workload) -> Vec<String> {
    let Ok(migrations) = w.migrations.list(&ListParams::default()).await else {
        return vec!["migrations cannot be listed".into()];
    };
    let mut pending: Vec<String> = migrations
        .items
        .iter()
        .filter(|m| {
            !m.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(MigrationPhase::is_final)
        })
        .map(|m| format!("migration {}: {:?}", m.name_any(), m.status))
        .collect();
    if !pending.is_empty() {
        return pending;
    }
    let Ok(vms) = w.vms.list(&ListParams::default()).await else {
        return vec!["VMs cannot be listed".into()];
    };
    for vm in &vms.items {
        let label = vm.labels().get(MIGRATION_TARGET_LABEL);
        let annotations = vm.annotations();
        let marks = [MIGRATION_UID_ANNOTATION, MOVE_TO_ANNOTATION].map(|a| annotations.get(a));
        if label.is_some() || marks.iter().any(Option::is_some) {
            pending.push(format!(
                "VM {} still carries a migration's marks: {label:?} {marks:?}",
                vm.name_any()
            ));
        }
    }
    pending
}

fn ceph_invariants(
    w: &Workload,
    io: &IoCtx,
    namespace: &str,
    snapshot_objects: &BTreeMap<String, BTreeSet<String>>,
    ready_objects: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut found = Vec::new();
    let mut expected_images = BTreeSet::new();
    let mut expected_groups = BTreeSet::new();
    for (name, vm) in &w.model.vms {
        if !vm.deleted || vm.retain {
            expected_images.extend(vm.images.iter().cloned());
            expected_groups.insert(name.clone());
        }
    }
    let images: BTreeSet<String> = io.list_images().expect("list images").into_iter().collect();
    for image in images.difference(&expected_images) {
        found.push(format!("orphan image {namespace}/{image}"));
    }
    for image in expected_images.difference(&images) {
        found.push(format!(
            "image {namespace}/{image} is gone; its VM was not deleted with Delete"
        ));
    }
    let groups: BTreeSet<String> = io.group_list().expect("list groups").into_iter().collect();
    for group in groups.difference(&expected_groups) {
        found.push(format!("orphan group {namespace}/{group}"));
    }
    for group in expected_groups.difference(&groups) {
        found.push(format!("group {namespace}/{group} is gone"));
    }
    for group in &groups {
        for snap in io.group_snap_list(group).unwrap_or_default() {
            found.push(format!("group snapshot {group}@{} ({:?})", snap.name, snap.state));
        }
    }
    for image in &images {
        let Ok(opened) = io.open_image(image) else {
            found.push(format!("image {image} cannot be opened"));
            continue;
        };
        let vm_name = image
            .strip_prefix("system_")
            .or_else(|| {
                image
                    .strip_prefix("data_")
                    .and_then(|r| r.rsplit_once('_').map(|(vm, _)| vm))
            })
            .unwrap_or("");
        let claimed = snapshot_objects.get(vm_name).cloned().unwrap_or_default();
        let snaps = opened.snap_list().unwrap_or_default();
        let mut user = BTreeSet::new();
        for snap in snaps {
            match snap.namespace {
                SnapNamespace::User => {
                    // A clone is a deep copy: it brings the snapshots of its source (by
                    // design, as vm_manager's clone; the VM lists them as unmanaged). A restore
                    // into a new VM starts without them.
                    let derived = vm_name.starts_with("cl");
                    let inherited = derived
                        && (w.model.snapshots.contains_key(&snap.name) || snap.name.starts_with("every"));
                    if inherited && !claimed.contains(&snap.name) {
                        eprintln!("note: {image}@{} inherited from its source", snap.name);
                    } else if !claimed.contains(&snap.name) {
                        found.push(format!(
                            "snapshot {image}@{} claimed by no snapshot object",
                            snap.name
                        ));
                    }
                    user.insert(snap.name);
                }
                other => found.push(format!(
                    "snapshot {image}@{} in the {other:?} namespace",
                    snap.name
                )),
            }
        }
        let ready = ready_objects.get(vm_name).cloned().unwrap_or_default();
        for missing in ready.difference(&user) {
            found.push(format!(
                "snapshot {image}@{missing} of a Ready snapshot object is gone"
            ));
        }
    }
    // Images in the RBD trash (a removal that moved an image there and stopped).
    let out = Command::new("rbd")
        .args([
            "trash",
            "ls",
            "--pool",
            &testbed_env("SEAPATH_CEPH_POOL"),
            "--namespace",
            namespace,
        ])
        .env("CEPH_CONF", testbed_env("CEPH_CONF"))
        .output();
    match out {
        Ok(out) if out.status.success() => {
            for line in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
            {
                found.push(format!("image in the RBD trash: {line}"));
            }
        }
        Ok(out) => eprintln!("rbd trash ls failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => eprintln!("rbd trash ls: {e}"),
    }
    found
}

fn panics(procs: &[Proc]) -> Vec<String> {
    let mut found = Vec::new();
    for p in procs {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        for line in text.lines().filter(|l| l.contains("panicked at")) {
            found.push(format!(
                "{} panicked: {}",
                p.name,
                line.chars().take(400).collect::<String>()
            ));
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_campaign() {
    let seed = env_number("SEAPATH_CHAOS_SEED", DEFAULT_SEED);
    let kills = env_number("SEAPATH_CHAOS_KILLS", DEFAULT_KILLS as u64) as usize;
    eprintln!(
        "chaos: seed {seed}, {kills} kill points (SEAPATH_CHAOS_SEED={seed} SEAPATH_CHAOS_KILLS={kills} replays)"
    );
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut outage_rng = fastrand::Rng::with_seed(seed.rotate_left(17) ^ 0x5ea9);
    let mut move_rng = fastrand::Rng::with_seed(seed.rotate_left(29) ^ 0x3ad1);
    let mut outages: BTreeMap<&'static str, usize> = BTreeMap::new();

    let client = common::admin_client().await;
    common::install_crds(&client).await;
    let namespace = common::fresh_namespace(&client, "chaos").await;
    let run = format!("chaos{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let nodes = [format!("{run}-hv1"), format!("{run}-hv2")];
    let dir = tempfile::tempdir().expect("temp dir");
    let logs = match std::env::var("SEAPATH_CHAOS_LOGS") {
        Ok(d) if !d.is_empty() => {
            std::fs::create_dir_all(&d).expect("log directory");
            PathBuf::from(d)
        }
        _ => dir.path().to_owned(),
    };
    let import_dir = dir.path().join("imports");
    std::fs::create_dir_all(&import_dir).unwrap();
    let import_file = import_dir.join("disk.raw");
    {
        let mut data = vec![0u8; 16 << 20];
        for (i, b) in data.iter_mut().enumerate().step_by(4096) {
            *b = (i >> 12) as u8;
        }
        std::fs::write(&import_file, data).unwrap();
    }
    eprintln!(
        "chaos: namespace {namespace}, hypervisors {nodes:?}, logs in {}",
        logs.display()
    );

    // Hypervisors no agent reports any more (earlier test binaries) would take VMs and hold them
    // until fenced; live ones (another test running meanwhile) are left alone.
    let hypervisors: Api<Hypervisor> = Api::all(client.clone());
    for hv in hypervisors
        .list(&ListParams::default())
        .await
        .expect("list hypervisors")
    {
        let stale = hv
            .status
            .as_ref()
            .and_then(|s| s.heartbeat_time.as_ref())
            .is_none_or(|t| Timestamp::now().duration_since(t.0).as_secs() > 30);
        if stale {
            hypervisors
                .delete(&hv.name_any(), &DeleteParams::default())
                .await
                .ok();
        }
    }

    let mut procs = processes(&run, &logs, &nodes, &import_dir);
    for p in &mut procs {
        p.start();
    }

    let mut w = Workload {
        vms: Api::namespaced(client.clone(), &namespace),
        snaps: Api::namespaced(client.clone(), &namespace),
        restores: Api::namespaced(client.clone(), &namespace),
        migrations: Api::namespaced(client.clone(), &namespace),
        hypervisors: hypervisors.clone(),
        draining: None,
        nodes: nodes.clone(),
        import_file: import_file.clone(),
        model: Model::default(),
    };
    // A schedule every minute on the VMs labelled chaos=yes, keeping the two newest of each.
    let schedules: Api<VirtualMachineSnapshotSchedule> = Api::namespaced(client.clone(), &namespace);
    let schedule: VirtualMachineSnapshotSchedule = serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineSnapshotSchedule",
        "metadata": {"name": "every"},
        "spec": {"selector": {"matchLabels": {"chaos": "yes"}}, "schedule": "* * * * *",
                 "retention": {"keepLast": 2}, "maxFailures": 0}
    }))
    .unwrap();
    schedules
        .create(&PostParams::default(), &schedule)
        .await
        .expect("create schedule");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampled = Arc::new(Mutex::new(Vec::new()));
    let sampler = tokio::spawn(sample(
        client.clone(),
        namespace.clone(),
        nodes.clone(),
        sampled.clone(),
        stop.clone(),
    ));

    let mut violations: Vec<String> = Vec::new();
    let mut killed: BTreeMap<String, usize> = BTreeMap::new();
    for point in 0..kills {
        for _ in 0..rng.usize(1..=2) {
            w.step(&mut rng).await;
        }
        if move_rng.u8(0..3) == 0 {
            w.move_step(&mut move_rng).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..=2000))).await;
        let target = match rng.u8(0..4) {
            0 | 1 => 0,
            2 => 1,
            _ => 2,
        };
        for p in &mut procs {
            if let Some(exit) = p.exited() {
                violations.push(format!("before kill point {point}: {exit}"));
                p.start();
            }
        }
        let p = &mut procs[target];
        eprintln!(
            "kill point {point}: SIGKILL {} at {:?}",
            p.name,
            started.elapsed()
        );
        p.kill();
        *killed.entry(p.name.clone()).or_default() += 1;
        if rng.bool() {
            tokio::time::sleep(Duration::from_millis(rng.u64(0..=3000))).await;
        }
        p.start();
        // Some progress between two kill points.
        tokio::time::sleep(Duration::from_millis(rng.u64(200..=1500))).await;
        maybe_outage(&mut outage_rng, &mut outages, point).await;
    }
    eprintln!("chaos: killing stopped after {:?}; converging", started.elapsed());
    // No new scheduled snapshot while the invariants are read: one taken between the listing of
    // the objects and that of RBD would look unclaimed.
    schedules
        .patch(
            "every",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": true}})),
        )
        .await
        .expect("suspend the schedule");
    // A drain under way ends: the VMs it could not move stay where they are.
    if let Some(node) = w.draining.take() {
        w.set_drain(&node, false).await;
    }
    let (pending, known_vms) = converge(&w).await;
    violations.extend(
        pending
            .into_iter()
            .map(|p| format!("not final after {CONVERGE:?}: {p}")),
    );

    // Snapshot objects (those of the workload and the schedule's) by VM, which RBD must match.
    let mut by_vm: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut ready_by_vm: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in w
        .snaps
        .list(&ListParams::default())
        .await
        .expect("list snapshots")
    {
        if s.metadata.deletion_timestamp.is_none() {
            let status = s.status.clone().unwrap_or_default();
            let name = (status.snapshot_name.clone())
                .or_else(|| s.spec.snapshot_name.clone())
                .unwrap_or_else(|| s.name_any());
            if status.phase == Some(SnapshotPhase::Ready) {
                ready_by_vm
                    .entry(s.spec.vm_name.clone())
                    .or_default()
                    .insert(name.clone());
            }
            by_vm.entry(s.spec.vm_name.clone()).or_default().insert(name);
        }
    }
    let io = common::snapshots::rbd(&namespace);
    violations.extend(ceph_invariants(&w, &io, &namespace, &by_vm, &ready_by_vm));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.await.ok();
    violations.extend(sampled.lock().unwrap().iter().cloned());
    for p in &mut procs {
        if let Some(exit) = p.exited() {
            violations.push(exit);
        }
    }
    violations.extend(panics(&procs));
    // Violations caused by a known bug of the operator (and what follows from it on the same
    // VM): listed apart; they fail the campaign only with SEAPATH_CHAOS_STRICT=1 (hack/chaos.sh).
    let (known, violations): (Vec<String>, Vec<String>) =
        violations.into_iter().partition(|v| mentions_any(v, &known_vms));
    let strict = std::env::var("SEAPATH_CHAOS_STRICT").is_ok_and(|v| v == "1");

    let ops: usize = w.model.ops.values().sum();
    eprintln!(
        "chaos figures: seed {seed}, {kills} kill points ({killed:?}), outages {outages:?}, {ops} operations ({:?}), {} violations, {} of known bugs (VMs {known_vms:?}), {:?}",
        w.model.ops,
        violations.len(),
        known.len(),
        started.elapsed()
    );
    for v in &known {
        eprintln!("chaos: known bug: {v}");
    }
    let violations = if strict {
        [violations, known].concat()
    } else {
        violations
    };
    // The namespace stays (no controller-manager finalizes namespaces): its VMs go, while this
    // campaign's operator still runs, so that a later test binary's controller finds none to run.
    schedules.delete("every", &DeleteParams::default()).await.ok();
    for vm in w.model.live_vms() {
        w.vms.delete(&vm, &DeleteParams::default()).await.ok();
    }
    let cleanup = Instant::now() + Duration::from_secs(60);
    while Instant::now() < cleanup
        && !w
            .vms
            .list(&ListParams::default())
            .await
            .is_ok_and(|l| l.items.is_empty())
    {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for p in &mut procs {
        p.kill();
    }
    if !violations.is_empty() && std::env::var("SEAPATH_CHAOS_LOGS").is_err() {
        // Keep the logs of a failing run.
        let keep = std::env::temp_dir().join(format!("{run}-logs"));
        let _ = std::fs::create_dir_all(&keep);
        for p in &procs {
            let _ = std::fs::copy(&p.log, keep.join(p.log.file_name().unwrap()));
        }
        eprintln!("chaos: logs kept in {}", keep.display());
    }
    assert!(
        violations.is_empty(),
        "chaos campaign, seed {seed} ({kills} kill points, namespace {namespace}): {} violations:\n  {}",
        violations.len(),
        violations.join("\n  ")
    );
}
