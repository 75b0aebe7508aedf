//! `kubectl seapath`: a kubectl plugin (the `kubectl-seapath` binary) for the people who run
//! SEAPATH VMs. It only reads objects and changes what a user may change — a VM's
//! `spec.state`, new VirtualMachineSnapshot and VirtualMachineRestore objects — so the
//! controller stays the only one acting on Ceph and libvirt.
//!
//! ```text
//! kubectl seapath status [VM] [-A]
//! kubectl seapath start|stop|disable VM [--wait] [--timeout 5m]
//! kubectl seapath snapshot VM [NAME] [--wait]
//! kubectl seapath restore VM SNAPSHOT [--wait]
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::api::{
    DesiredState, GROUP, Hypervisor, MigrationPhase, VirtualMachine, VirtualMachineMigration,
    VirtualMachineMigrationSpec, condition_types as ct,
};
use crate::field_manager;

/// Operate SEAPATH virtual machines: status, start, stop, disable, snapshot, restore, migrate,
/// and drain or uncordon hypervisors.
#[derive(Parser, Debug)]
#[command(name = "kubectl-seapath", bin_name = "kubectl seapath", version, about)]
pub struct PluginCli {
    /// kubeconfig file; $KUBECONFIG or ~/.kube/config when unset.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace of the VMs; the context's namespace when unset.
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: PluginCommand,
}

#[derive(Subcommand, Debug)]
pub enum PluginCommand {
    /// VMs with their desired state, phase, node, disks and snapshots.
    Status {
        /// Only this VM.
        vm: Option<String>,
        /// VMs of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Set spec.state to Started.
    Start(StateArgs),
    /// Set spec.state to Stopped (graceful shutdown, domain stays defined).
    Stop(StateArgs),
    /// Set spec.state to Disabled (domain undefined everywhere, disks kept).
    Disable(StateArgs),
    /// Create a VirtualMachineSnapshot of a VM (every disk, crash-consistent).
    Snapshot {
        vm: String,
        /// Name of the snapshot (letters and digits); VM name + UTC time when unset.
        name: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Create a VirtualMachineRestore that rolls a VM back to one of its snapshots.
    Restore {
        vm: String,
        /// Name of the VirtualMachineSnapshot.
        snapshot: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Drain a hypervisor: cordon it and move every VM off it (live where allowed).
    Drain {
        /// The Hypervisor.
        node: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Bring a cordoned or drained hypervisor back: it takes VMs again.
    Uncordon {
        /// The Hypervisor.
        node: String,
    },
    /// Create a VirtualMachineMigration that moves a VM to another hypervisor (live where the
    /// VM allows it).
    Migrate {
        vm: String,
        /// The hypervisor to move to; the one placement chooses when unset.
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct StateArgs {
    pub vm: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Args, Debug, Clone)]
pub struct WaitArgs {
    /// Show progress and return when the operation has ended (non-zero exit when it failed).
    #[arg(long)]
    pub wait: bool,
    /// Longest wait with --wait, e.g. 90s, 5m.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `30s`, `5m`, `1h 30m` (humantime's durations), or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration such as 30s, 5m or 1h: {e}"))
}

/// What can go wrong, worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{kind} '{name}' not found in namespace '{namespace}'")]
    NotFound {
        kind: &'static str,
        namespace: String,
        name: String,
    },
    #[error(
        "forbidden: you may not {verb} {resource} in namespace '{namespace}' ({message}). Ask for \
         the seapath edit role (ClusterRole seapath-operator-edit, aggregated into 'edit')"
    )]
    Forbidden {
        verb: &'static str,
        resource: &'static str,
        namespace: String,
        message: String,
    },
    #[error(
        "this cluster does not serve {kind} (its CRD is not installed): install a seapath-operator \
         version with snapshots"
    )]
    KindNotServed { kind: &'static str },
    #[error("{0}")]
    Failed(String),
    #[error("timed out after {timeout:?} waiting for {what}; last seen: {last}")]
    Timeout {
        what: String,
        timeout: Duration,
        last: String,
    },
    #[error("kubeconfig: {0}")]
    Config(String),
    /// The API server refused the call: its message (one line) and reason, not kube's dump.
    #[error("{context}: {message} ({reason})")]
    Refused {
        context: String,
        message: String,
        reason: String,
    },
    #[error("{context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
}

impl PluginError {
    /// Exit code: 1 for a failed operation or a refusal, 2 for a timeout.
    pub fn exit_code(&self) -> u8 {
        match self {
            PluginError::Timeout { .. } => 2,
            _ => 1,
        }
    }
}

/// One API call, described for error messages.
struct Call {
    verb: &'static str,
    resource: &'static str,
    kind: &'static str,
    namespace: String,
    name: String,
}

impl Call {
    fn error(&self, err: kube::Error) -> PluginError {
        if let kube::Error::Api(status) = &err {
            match status.code {
                403 => {
                    return PluginError::Forbidden {
                        verb: self.verb,
                        resource: self.resource,
                        namespace: self.namespace.clone(),
                        message: status.message.clone(),
                    };
                }
                // A 404 on a named object is that object missing; on a collection, the kind.
                404 if status.details.as_ref().is_some_and(|d| !d.name.is_empty())
                    || (!self.name.is_empty() && self.verb != "create") =>
                {
                    return PluginError::NotFound {
                        kind: self.kind,
                        namespace: self.namespace.clone(),
                        name: self.name.clone(),
                    };
                }
                404 => return PluginError::KindNotServed { kind: self.kind },
                _ => return refused(self.context(), status),
            }
        }
        PluginError::Kube {
            context: self.context(),
            source: err,
        }
    }

    fn context(&self) -> String {
        format!("{} {} {}/{}", self.verb, self.resource, self.namespace, self.name)
    }
}

/// The API server's own words for a refusal, on one line (a validation failure lists one
/// cause per line), with its reason, or the HTTP code when it gives none.
fn refused(context: String, status: &kube::core::Status) -> PluginError {
    let mut message = String::new();
    for line in status.message.lines().map(|l| l.trim().trim_start_matches("* ")) {
        if line.is_empty() {
            continue;
        }
        if !message.is_empty() {
            message.push_str(if message.ends_with(':') { " " } else { "; " });
        }
        message.push_str(line);
    }
    let reason = if status.reason.is_empty() {
        format!("HTTP {}", status.code)
    } else {
        status.reason.clone()
    };
    PluginError::Refused {
        context,
        message,
        reason,
    }
}

fn snapshot_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1alpha1", "VirtualMachineSnapshot"),
        "virtualmachinesnapshots",
    )
}

fn restore_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1alpha1", "VirtualMachineRestore"),
        "virtualmachinerestores",
    )
}

/// A client and the namespace to work in, from the kubeconfig and flags.
pub async fn connect(cli: &PluginCli) -> Result<(Client, String), PluginError> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..Default::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| PluginError::Config(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| PluginError::Config(e.to_string()))?
        }
        None => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| PluginError::Config(e.to_string()))?,
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| PluginError::Config(e.to_string()))?;
    Ok((client, namespace))
}

/// Runs one command; the table or result goes to `out`, progress to `progress`.
pub async fn run(
    cli: PluginCli,
    out: &mut (dyn Write + Send),
    progress: &mut (dyn Write + Send),
) -> Result<(), PluginError> {
    let (client, namespace) = connect(&cli).await?;
    match cli.command {
        PluginCommand::Status { vm, all_namespaces } => {
            let ns = (!all_namespaces).then_some(namespace.as_str());
            let rows = status_rows(&client, ns, vm.as_deref()).await?;
            write!(out, "{}", render_table(&rows, all_namespaces)).ok();
            Ok(())
        }
        PluginCommand::Start(args) => {
            set_state(&client, &namespace, &args, DesiredState::Started, out, progress).await
        }
        PluginCommand::Stop(args) => {
            set_state(&client, &namespace, &args, DesiredState::Stopped, out, progress).await
        }
        PluginCommand::Disable(args) => {
            set_state(&client, &namespace, &args, DesiredState::Disabled, out, progress).await
        }
        PluginCommand::Snapshot { vm, name, wait } => {
            snapshot(&client, &namespace, &vm, name, &wait, out, progress).await
        }
        PluginCommand::Restore { vm, snapshot, wait } => {
            restore(&client, &namespace, &vm, &snapshot, &wait, out, progress).await
        }
        PluginCommand::Drain { node, wait } => drain(&client, &node, true, &wait, out, progress).await,
        PluginCommand::Uncordon { node } => {
            let wait = WaitArgs {
                wait: false,
                timeout: Duration::ZERO,
            };
            drain(&client, &node, false, &wait, out, progress).await
        }
        PluginCommand::Migrate { vm, to, wait } => {
            migrate(&client, &namespace, &vm, to.as_deref(), &wait, out, progress).await
        }
    }
}

/// Snapshots per (namespace, VM name): (ready to use, all).
type SnapshotCounts = BTreeMap<(String, String), (usize, usize)>;

/// One line of `status`.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusRow {
    pub namespace: String,
    pub name: String,
    pub desired: String,
    pub phase: String,
    pub node: String,
    pub ready: String,
    pub disks: String,
    pub snapshots: String,
    pub message: String,
}

fn condition<'a>(
    vm: &'a VirtualMachine,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    vm.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// Bytes as a short binary size: 1073741824 -> `1Gi`.
pub fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["", "Ki", "Mi", "Gi", "Ti"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if (value - value.round()).abs() < 0.05 {
        format!("{}{}", value.round() as i64, UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn status_row(vm: &VirtualMachine, snapshots: Option<&SnapshotCounts>) -> StatusRow {
    let status = vm.status.clone().unwrap_or_default();
    let ready = condition(vm, ct::READY);
    let disks = match &status.storage {
        Some(storage) if !storage.images.is_empty() => {
            let total: i64 = storage.images.iter().map(|i| i.size_bytes).sum();
            format!("{} ({})", storage.images.len(), human_size(total))
        }
        _ => format!("{} (none yet)", 1 + vm.spec.data_disks.len()),
    };
    let namespace = vm.namespace().unwrap_or_default();
    let snapshots = match snapshots {
        None => "-".to_owned(),
        Some(map) => match map.get(&(namespace.clone(), vm.name_any())) {
            None => "0".to_owned(),
            Some((ready, all)) if ready == all => format!("{all}"),
            Some((ready, all)) => format!("{ready}/{all} ready"),
        },
    };
    let message = ready
        .map(|c| {
            if c.status == "True" || c.message.is_empty() {
                c.reason.clone()
            } else {
                format!("{}: {}", c.reason, c.message)
            }
        })
        .unwrap_or_default();
    StatusRow {
        namespace,
        name: vm.name_any(),
        desired: format!("{:?}", vm.spec.state),
        phase: status
            .phase
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "-".into()),
        node: status.node.unwrap_or_else(|| "-".into()),
        ready: ready.map(|c| c.status.clone()).unwrap_or_else(|| "-".into()),
        disks,
        snapshots,
        message,
    }
}

/// Snapshot counts per (namespace, VM): (ready to use, all). None when the kind is not served
/// or the user may not list it.
async fn snapshot_counts(client: &Client, namespace: Option<&str>) -> Option<SnapshotCounts> {
    let resource = snapshot_resource();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let list = api.list(&ListParams::default()).await.ok()?;
    let mut counts = BTreeMap::new();
    for snap in list.items {
        let Some(vm) = snap.data.pointer("/spec/vmName").and_then(Value::as_str) else {
            continue;
        };
        let ready = snap
            .data
            .pointer("/status/readyToUse")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let entry = counts
            .entry((snap.namespace().unwrap_or_default(), vm.to_owned()))
            .or_insert((0, 0));
        entry.1 += 1;
        if ready {
            entry.0 += 1;
        }
    }
    Some(counts)
}

/// The rows of `status`: one VM, the VMs of a namespace, or of all namespaces.
pub async fn status_rows(
    client: &Client,
    namespace: Option<&str>,
    vm: Option<&str>,
) -> Result<Vec<StatusRow>, PluginError> {
    let api: Api<VirtualMachine> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let call = |verb, name: &str| Call {
        verb,
        resource: "virtualmachines",
        kind: "VirtualMachine",
        namespace: namespace.unwrap_or("*").to_owned(),
        name: name.to_owned(),
    };
    let vms = match vm {
        Some(name) => vec![api.get(name).await.map_err(|e| call("get", name).error(e))?],
        None => {
            api.list(&ListParams::default())
                .await
                .map_err(|e| call("list", "").error(e))?
                .items
        }
    };
    let snapshots = snapshot_counts(client, namespace).await;
    let mut rows: Vec<StatusRow> = vms.iter().map(|vm| status_row(vm, snapshots.as_ref())).collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(rows)
}

/// Aligned columns, like kubectl get.
pub fn render_table(rows: &[StatusRow], with_namespace: bool) -> String {
    if rows.is_empty() {
        return "No VirtualMachines found.\n".to_owned();
    }
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut header = vec![
        "NAME",
        "DESIRED",
        "PHASE",
        "NODE",
        "READY",
        "DISKS",
        "SNAPSHOTS",
        "MESSAGE",
    ];
    if with_namespace {
        header.insert(0, "NAMESPACE");
    }
    table.push(header.into_iter().map(String::from).collect());
    for r in rows {
        let mut line = vec![
            r.name.clone(),
            r.desired.clone(),
            r.phase.clone(),
            r.node.clone(),
            r.ready.clone(),
            r.disks.clone(),
            r.snapshots.clone(),
            r.message.clone(),
        ];
        if with_namespace {
            line.insert(0, r.namespace.clone());
        }
        table.push(line);
    }
    let columns = table[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|i| table.iter().map(|l| l[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for line in table {
        let mut cells = Vec::new();
        for (i, cell) in line.iter().enumerate() {
            if i + 1 == columns {
                cells.push(cell.clone());
            } else {
                cells.push(format!("{cell:<width$}", width = widths[i]));
            }
        }
        text.push_str(cells.join("   ").trim_end());
        text.push('\n');
    }
    text
}

/// One line describing where a VM is, for progress output.
fn vm_progress(vm: &VirtualMachine) -> String {
    let phase = vm
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "-".into());
    let node = vm.status.as_ref().and_then(|s| s.node.clone());
    let mut line = format!("virtualmachine/{} {phase}", vm.name_any());
    if let Some(node) = node {
        line.push_str(&format!(" on {node}"));
    }
    if let Some(ready) = condition(vm, ct::READY).filter(|c| c.status != "True") {
        line.push_str(&format!(" ({}: {})", ready.reason, ready.message));
    }
    line
}

/// Where a VM stands with respect to a spec change at `generation`.
enum VmOutcome {
    Pending,
    Done,
    Failed(String),
}

fn vm_outcome(vm: &VirtualMachine, generation: i64) -> VmOutcome {
    let observed = vm
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .unwrap_or(0);
    if observed < generation {
        return VmOutcome::Pending;
    }
    if let Some(stalled) = condition(vm, ct::STALLED).filter(|c| c.status == "True") {
        return VmOutcome::Failed(format!("{}: {}", stalled.reason, stalled.message));
    }
    let phase = vm.status.as_ref().and_then(|s| s.phase);
    if phase == Some(crate::api::Phase::Failed) {
        let message = condition(vm, ct::READY)
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_else(|| "the VM failed".into());
        return VmOutcome::Failed(message);
    }
    match condition(vm, ct::READY) {
        Some(c) if c.status == "True" && c.observed_generation.unwrap_or(observed) >= generation => {
            VmOutcome::Done
        }
        _ => VmOutcome::Pending,
    }
}

/// Polls `check` until it says done or failed, printing each new progress line.
async fn wait_until<T, F, Fut>(
    what: String,
    timeout: Duration,
    progress: &mut (dyn Write + Send),
    mut poll: F,
    check: impl Fn(&T) -> (String, Option<Result<(), String>>),
) -> Result<(), PluginError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PluginError>>,
{
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let object = poll().await?;
        let (line, outcome) = check(&object);
        if line != last {
            writeln!(progress, "{line}").ok();
            last = line;
        }
        match outcome {
            Some(Ok(())) => return Ok(()),
            Some(Err(message)) => return Err(PluginError::Failed(format!("{what} failed: {message}"))),
            None => {}
        }
        if start.elapsed() >= timeout {
            return Err(PluginError::Timeout { what, timeout, last });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn set_state(
    client: &Client,
    namespace: &str,
    args: &StateArgs,
    state: DesiredState,
    out: &mut (dyn Write + Send),
    progress: &mut (dyn Write + Send),
) -> Result<(), PluginError> {
    let api: Api<VirtualMachine> = Api::namespaced(client.clone(), namespace);
    let call = |verb| Call {
        verb,
        resource: "virtualmachines",
        kind: "VirtualMachine",
        namespace: namespace.to_owned(),
        name: args.vm.clone(),
    };
    // Read first: a missing VM is reported as such, not as a failed patch.
    api.get(&args.vm).await.map_err(|e| call("get").error(e))?;
    let patch = json!({"spec": {"state": state}});
    let params = PatchParams {
        field_manager: Some(field_manager::PLUGIN.into()),
        ..Default::default()
    };
    let patched = api
        .patch(&args.vm, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| call("patch").error(e))?;
    writeln!(out, "virtualmachine/{} desired state set to {state:?}", args.vm).ok();
    if !args.wait.wait {
        return Ok(());
    }
    let generation = patched.metadata.generation.unwrap_or(0);
    wait_until(
        format!("VirtualMachine {namespace}/{} to be {state:?}", args.vm),
        args.wait.timeout,
        progress,
        || async { api.get(&args.vm).await.map_err(|e| call("get").error(e)) },
        |vm: &VirtualMachine| {
            let outcome = match vm_outcome(vm, generation) {
                VmOutcome::Pending => None,
                VmOutcome::Done => Some(Ok(())),
                VmOutcome::Failed(m) => Some(Err(m)),
            };
            (vm_progress(vm), outcome)
        },
    )
    .await?;
    writeln!(out, "virtualmachine/{} is {state:?}", args.vm).ok();
    Ok(())
}

/// A snapshot name from the VM name and the UTC time: `guest020240102030405`.
pub fn default_snapshot_name(vm: &str, now: Timestamp) -> String {
    format!("{vm}{}", now.strftime("%Y%m%d%H%M%S"))
}

fn dynamic_progress(kind: &str, object: &DynamicObject) -> String {
    let phase = object
        .data
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("-");
    let mut line = format!("{kind}/{} {phase}", object.name_any());
    let error = object
        .data
        .pointer("/status/error/message")
        .and_then(Value::as_str);
    let ready = object
        .data
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"));
    if let Some(message) = error {
        line.push_str(&format!(" ({message})"));
    } else if let Some(c) = ready.filter(|c| c["status"] != "True") {
        let reason = c["reason"].as_str().unwrap_or("");
        let message = c["message"].as_str().unwrap_or("");
        if !reason.is_empty() || !message.is_empty() {
            line.push_str(&format!(" ({reason}: {message})"));
        }
    }
    line
}

fn dynamic_outcome(object: &DynamicObject, done: &str) -> Option<Result<(), String>> {
    match object.data.pointer("/status/phase").and_then(Value::as_str) {
        Some(phase) if phase == done => Some(Ok(())),
        Some("Failed") => Some(Err(object
            .data
            .pointer("/status/error/message")
            .and_then(Value::as_str)
            .unwrap_or("see its conditions")
            .to_owned())),
        _ => None,
    }
}

/// Reads the VM first: a missing VM is reported as such, not as a failed create.
async fn require_vm(client: &Client, namespace: &str, vm: &str) -> Result<VirtualMachine, PluginError> {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), namespace);
    vms.get(vm).await.map_err(|e| {
        Call {
            verb: "get",
            resource: "virtualmachines",
            kind: "VirtualMachine",
            namespace: namespace.to_owned(),
            name: vm.to_owned(),
        }
        .error(e)
    })
}

/// What `create_and_follow` creates: its API, the object, and how its calls are named.
struct Creation<'a, K> {
    api: Api<K>,
    object: K,
    resource: &'static str,
    kind: &'static str,
    namespace: &'a str,
}

/// Creates the object and, with `--wait`, prints its progress until `check` says it ended.
async fn create_and_follow<K>(
    creation: Creation<'_, K>,
    wait: &WaitArgs,
    out: &mut (dyn Write + Send),
    progress: &mut (dyn Write + Send),
    check: impl Fn(&K) -> (String, Option<Result<(), String>>),
) -> Result<K, PluginError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let Creation {
        api,
        object,
        resource,
        kind,
        namespace,
    } = creation;
    let name = object.meta().name.clone().unwrap_or_default();
    let call = |verb| Call {
        verb,
        resource,
        kind,
        namespace: namespace.to_owned(),
        name: name.clone(),
    };
    let params = PostParams {
        field_manager: Some(field_manager::PLUGIN.into()),
        ..Default::default()
    };
    let created = api
        .create(&params, &object)
        .await
        .map_err(|e| call("create").error(e))?;
    writeln!(out, "{}/{name} created", kind.to_lowercase()).ok();
    if !wait.wait {
        return Ok(created);
    }
    wait_until(
        format!("{kind} {namespace}/{name}"),
        wait.timeout,
        progress,
        || async { api.get(&name).await.map_err(|e| call("get").error(e)) },
        check,
    )
    .await?;
    api.get(&name).await.map_err(|e| call("get").error(e))
}

async fn snapshot(
    client: &Client,
    namespace: &str,
    vm: &str,
    name: Option<String>,
    wait: &WaitArgs,
    out: &mut (dyn Write + Send),
    progress: &mut (dyn Write + Send),
) -> Result<(), PluginError> {
    require_vm(client, namespace, vm).await?;
    let name = name.unwrap_or_else(|| default_snapshot_name(vm, Timestamp::now()));
    let resource = snapshot_resource();
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": resource.api_version, "kind": resource.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"vmName": vm},
    }))
    .expect("a VirtualMachineSnapshot");
    let creation = Creation {
        api: Api::namespaced_with(client.clone(), namespace, &resource),
        object,
        resource: "virtualmachinesnapshots",
        kind: "VirtualMachineSnapshot",
        namespace,
    };
    create_and_follow(creation, wait, out, progress, |o: &DynamicObject| {
        (
            dynamic_progress("virtualmachinesnapshot", o),
            dynamic_outcome(o, "Ready"),
        )
    })
    .await?;
    if wait.wait {
        writeln!(out, "virtualmachinesnapshot/{name} is ready").ok();
    }
    Ok(())
}

async fn restore(
    client: &Client,
    namespace: &str,
    vm: &str,
    snapshot: &str,
    wait: &WaitArgs,
    out: &mut (dyn Write + Send),
    progress: &mut (dyn Write + Send),
) -> Result<(), PluginError> {
    require_vm(client, namespace, vm).await?;
    let snapshots: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &snapshot_resource());
    let snap = snapshots.get(snapshot).await.map_err(|e| {
        Call {
            verb: "get",
            resource: "virtualmachinesnapshots",
            kind: "VirtualMachineSnapshot",
            namespace: namespace.to_owned(),
            name: snapshot.to_owned(),
        }
        .error(e)
    })?;
    let of = snap
        .data
        .pointer("/spec/vmName")
        .and_then(Value::as_str)
        .unwrap_or("");
    if of != vm {
        return Err(PluginError::Failed(format!(
            "VirtualMachineSnapshot {namespace}/{snapshot} is a snapshot of VM '{of}', not of '{vm}'"
        )));
    }
    let name = format!("{vm}-{snapshot}-{}", Timestamp::now().strftime("%Y%m%d%H%M%S"));
    let name: String = name.chars().take(253).collect();
    let resource = restore_resource();
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": resource.api_version, "kind": resource.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"vmName": vm, "snapshot": snapshot},
    }))
    .expect("a VirtualMachineRestore");
    let creation = Creation {
        api: Api::namespaced_with(client.clone(), namespace, &resource),
        object,
        resource: "virtualmachinerestores",
        kind: "VirtualMachineRestore",
        namespace,
    };
    create_and_follow(creation, wait, out, progress, |o: &DynamicObject| {
        (
            dynamic_progress("virtualmachinerestore", o),
            dynamic_outcome(o, "Succeeded"),
        )
    })
    .await?;
    if wait.wait {
        writeln!(
            out,
            "virtualmachinerestore/{name} succeeded: {vm} is back at snapshot {snapshot}"
        )
        .ok();
    }
    Ok(())
}

async fn migrate(
    client: &Client,
    namespace: &str,
    vm: &str,
    to: Option<&str>,
    wait: &WaitArgs,
    out: &mut (dyn Write + Send),
    progress: &mut (dyn Write + Send),
) -> Result<(), PluginError> {
    require_vm(client, namespace, vm).await?;
    let name = format!("{vm}-{}", Timestamp::now().strftime("%Y%m%d%H%M%S"));
    let creation = Creation {
        api: Api::namespaced(client.clone(), namespace),
        object: VirtualMachineMigration::new(
            &name,
            VirtualMachineMigrationSpec {
                vm_name: vm.to_owned(),
                target_node: to.map(str::to_owned),
            },
        ),
        resource: "virtualmachinemigrations",
        kind: "VirtualMachineMigration",
        namespace,
    };
    let done = create_and_follow(creation, wait, out, progress, migration_progress).await?;
    if wait.wait {
        let message = done.status.and_then(|s| s.message).unwrap_or_default();
        writeln!(out, "virtualmachinemigration/{name} succeeded: {message}").ok();
    }
    Ok(())
}

/// Sets (or clears) `spec.unschedulable` and `spec.drain` of a Hypervisor; with `--wait`,
/// follows `status.drain` until no VM is left.
async fn drain(
    client: &Client,
    node: &str,
    on: bool,
    wait: &WaitArgs,
    out: &mut (dyn Write + Send),
    progress: &mut (dyn Write + Send),
) -> Result<(), PluginError> {
    let api: Api<Hypervisor> = Api::all(client.clone());
    let call = |verb| Call {
        verb,
        resource: "hypervisors",
        kind: "Hypervisor",
        namespace: String::new(),
        name: node.to_owned(),
    };
    api.get(node).await.map_err(|e| call("get").error(e))?;
    let params = PatchParams {
        field_manager: Some(field_manager::PLUGIN.into()),
        ..Default::default()
    };
    let patch = json!({"spec": {"unschedulable": on, "drain": on}});
    api.patch(node, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| call("patch").error(e))?;
    let what = if on { "draining" } else { "uncordoned" };
    writeln!(out, "hypervisor/{node} {what}").ok();
    if !wait.wait {
        return Ok(());
    }
    wait_until(
        format!("the drain of hypervisor {node}"),
        wait.timeout,
        progress,
        || async { api.get(node).await.map_err(|e| call("get").error(e)) },
        drain_progress,
    )
    .await?;
    writeln!(out, "hypervisor/{node} drained").ok();
    Ok(())
}

/// A drain's progress line; done once no VM is left.
fn drain_progress(hv: &Hypervisor) -> (String, Option<Result<(), String>>) {
    let Some(drain) = hv.status.as_ref().and_then(|s| s.drain.clone()) else {
        return (format!("hypervisor/{} drain requested", hv.name_any()), None);
    };
    let mut line = format!(
        "hypervisor/{} {:?}: {} VM(s) left",
        hv.name_any(),
        drain.phase,
        drain.vms_left
    );
    if !drain.moving.is_empty() {
        line.push_str(&format!(", moving {}", drain.moving.join(", ")));
    }
    if !drain.blocked.is_empty() {
        line.push_str(&format!("; blocked: {}", drain.blocked.join("; ")));
    }
    let retrying = drain
        .blocked
        .iter()
        .any(|b| b.contains(crate::controller::drain::RETRY_NOTE));
    let stuck = drain.moving.is_empty()
        && !retrying
        && usize::try_from(drain.vms_left).is_ok_and(|n| n > 0 && n == drain.blocked.len());
    let outcome = if drain.phase == crate::api::DrainPhase::Drained {
        Some(Ok(()))
    } else if stuck {
        Some(Err(format!("no VM left can move: {}", drain.blocked.join("; "))))
    } else {
        None
    };
    (line, outcome)
}

/// A migration's progress line and, once it ended, its outcome.
fn migration_progress(m: &VirtualMachineMigration) -> (String, Option<Result<(), String>>) {
    let status = m.status.clone().unwrap_or_default();
    let phase = status
        .phase
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "Pending".into());
    let message = status.message.clone().unwrap_or_default();
    let line = format!("virtualmachinemigration/{} {phase} ({message})", m.name_any());
    let outcome = match status.phase {
        Some(MigrationPhase::Succeeded) => Some(Ok(())),
        Some(MigrationPhase::Failed) => {
            Some(Err(format!("{}: {message}", status.reason.unwrap_or_default())))
        }
        _ => None,
    };
    (line, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_the_api_servers_message_on_one_line() {
        let call = Call {
            verb: "create",
            resource: "virtualmachinesnapshots",
            kind: "VirtualMachineSnapshot",
            namespace: "ns".into(),
            name: "Bad".into(),
        };
        let status = kube::core::Status::failure(
            "VirtualMachineSnapshot.seapath.lfenergy.org \"Bad\" is invalid: \n* metadata.name: Invalid value: \"Bad\"\n* metadata: Invalid value: name bad",
            "Invalid",
        )
        .with_code(422);
        let text = call.error(kube::Error::Api(status.boxed())).to_string();
        assert_eq!(
            text,
            "create virtualmachinesnapshots ns/Bad: VirtualMachineSnapshot.seapath.lfenergy.org \"Bad\" is invalid: \
             metadata.name: Invalid value: \"Bad\"; metadata: Invalid value: name bad (Invalid)"
        );
        let bare = kube::core::Status::failure("the server is shutting down", "").with_code(503);
        let text = call.error(kube::Error::Api(bare.boxed())).to_string();
        assert_eq!(
            text,
            "create virtualmachinesnapshots ns/Bad: the server is shutting down (HTTP 503)"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0");
        assert_eq!(human_size(1 << 30), "1Gi");
        assert_eq!(human_size(3 << 29), "1.5Gi");
        assert_eq!(human_size(64 << 20), "64Mi");
    }

    #[test]
    fn snapshot_names_are_letters_and_digits() {
        let name = default_snapshot_name("guest0", "2024-01-02T03:04:05Z".parse().unwrap());
        assert_eq!(name, "guest020240102030405");
    }

    #[test]
    fn table_is_aligned() {
        let row = StatusRow {
            namespace: "ns".into(),
            name: "guest0".into(),
            desired: "Started".into(),
            phase: "Started".into(),
            node: "hv1".into(),
            ready: "True".into(),
            disks: "1 (1Gi)".into(),
            snapshots: "0".into(),
            message: "Started".into(),
        };
        let text = render_table(&[row], true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].find("NAME   "), lines[1].find("guest0"));
        assert_eq!(lines[0].find("PHASE"), lines[1].find("Started   hv1"));
        assert_eq!(render_table(&[], false), "No VirtualMachines found.\n");
    }

    #[test]
    fn a_drain_is_done_when_drained_and_stuck_only_when_nothing_will_move() {
        use crate::api::{DrainPhase, DrainStatus, HypervisorStatus};
        let hv = |drain: DrainStatus| {
            let mut hv = Hypervisor::new("hv1", Default::default());
            hv.status = Some(HypervisorStatus {
                drain: Some(drain),
                ..Default::default()
            });
            hv
        };
        let status = |phase, vms_left, moving: &[&str], blocked: &[&str]| DrainStatus {
            phase,
            vms_left,
            moving: moving.iter().map(|s| s.to_string()).collect(),
            blocked: blocked.iter().map(|s| s.to_string()).collect(),
        };
        let (line, outcome) =
            drain_progress(&hv(status(DrainPhase::Draining, 2, &["ns/a"], &["ns/b: pinned"])));
        assert_eq!(outcome, None);
        assert!(
            line.contains("2 VM(s) left, moving ns/a; blocked: ns/b: pinned"),
            "{line}"
        );
        let retried = format!(
            "ns/b: NoHypervisorAvailable (full; {} x)",
            crate::controller::drain::RETRY_NOTE
        );
        let (_, outcome) = drain_progress(&hv(status(DrainPhase::Draining, 1, &[], &[&retried])));
        assert_eq!(outcome, None, "a move that will be tried again is waited for");
        let (_, outcome) = drain_progress(&hv(status(DrainPhase::Draining, 1, &[], &["ns/b: pinned"])));
        assert!(outcome.is_some_and(|o| o.is_err()));
        let (_, outcome) = drain_progress(&hv(status(DrainPhase::Drained, 0, &[], &[])));
        assert_eq!(outcome, Some(Ok(())));
    }

    #[test]
    fn a_migration_is_followed_to_its_end() {
        use crate::api::VirtualMachineMigrationStatus;
        let mut m = VirtualMachineMigration::new(
            "m1",
            VirtualMachineMigrationSpec {
                vm_name: "guest0".into(),
                target_node: None,
            },
        );
        assert_eq!(migration_progress(&m).1, None);
        m.status = Some(VirtualMachineMigrationStatus {
            phase: Some(MigrationPhase::Failed),
            reason: Some("TargetFull".into()),
            message: Some("hypervisor hv2 has 10 MiB free".into()),
            ..Default::default()
        });
        let (line, outcome) = migration_progress(&m);
        assert!(line.contains("Failed (hypervisor hv2 has 10 MiB free)"), "{line}");
        assert_eq!(
            outcome,
            Some(Err("TargetFull: hypervisor hv2 has 10 MiB free".into()))
        );
    }
}
