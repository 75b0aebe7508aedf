//! The hypervisor reconciler: judges each host by its heartbeat, marks a lost one, fences it
//! through Ceph before its VMs run anywhere else, and lets it in again once it rejoined clean.
//! Observe (the object, the controller's heartbeat clock, the VMs placed there) -> decide
//! ([`node_health::decide`]) -> act (one step per action, each recorded on the object) ->
//! report (Events, metrics). Failover itself is the VM reconciler's: it sees the fence and
//! places the VM elsewhere.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use crate::api::{FenceState, FenceStatus, Hypervisor, VirtualMachine, condition_types as ct};
use crate::ceph::Cluster;
use crate::controller::events::{self, Note};
use crate::controller::fencing::{self, VmImages};
use crate::controller::node_health::{self, HeartbeatClock, NodeAction, NodeFacts};
use crate::controller::storage::StorageError;
use crate::field_manager;
use crate::metrics::Metrics;

/// How the controller judges and fences hosts.
#[derive(Clone, Debug)]
pub struct FencingSettings {
    /// Silence after which a host is lost.
    pub grace: Duration,
    /// How long blocklist entries last if the host never rejoins.
    pub blocklist_expiry: Duration,
    /// Command run before Ceph fencing (power fencing), if any.
    pub power_fence_command: Option<std::path::PathBuf>,
}

pub struct HypervisorContext {
    pub client: Client,
    /// A Ceph connection of its own, on which librbd does not blocklist the owners of the
    /// locks it breaks (see `fencing::fence_images`).
    pub fencing_cluster: Cluster,
    pub vms: Store<VirtualMachine>,
    pub heartbeats: Arc<HeartbeatClock>,
    pub settings: FencingSettings,
    pub metrics: Metrics,
    pub recorder: Recorder,
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("fencing through Ceph failed: {0}")]
    Ceph(#[from] StorageError),
    #[error("{0}")]
    PowerFence(String),
}

impl HypervisorError {
    pub fn reason(&self) -> &'static str {
        match self {
            HypervisorError::Kube(_) => "KubernetesApiError",
            HypervisorError::Ceph(e) => e.reason(),
            HypervisorError::PowerFence(_) => "PowerFenceFailed",
        }
    }
}

pub async fn reconcile(hv: Arc<Hypervisor>, ctx: Arc<HypervisorContext>) -> Result<Action, HypervisorError> {
    let span = info_span!("reconcile", kind = "Hypervisor", object = %hv.name_any());
    async move {
        let timer = ctx.metrics.reconcile_timer("Hypervisor");
        let result = apply(&hv, &ctx).await;
        match &result {
            Ok(_) => timer.ok(),
            Err(e) => timer.error(e.reason()),
        }
        if let Err(HypervisorError::Kube(e)) = &result
            && !matches!(e, kube::Error::Api(_))
        {
            // The controller does not reach the API server: it cannot see heartbeats either,
            // so a host's silence meanwhile says nothing. Every host gets a full grace again.
            ctx.heartbeats.restart_all();
        }
        result
    }
    .instrument(span)
    .await
}

pub fn error_policy(_hv: Arc<Hypervisor>, err: &HypervisorError, _ctx: Arc<HypervisorContext>) -> Action {
    warn!(error = %err, reason = err.reason(), "hypervisor reconcile failed");
    // Fencing stands between a lost host and its VMs' restart: retry soon, not with back-off.
    Action::requeue(Duration::from_secs(2))
}

/// VMs whose status places them on `node`.
fn placed_on<'a>(
    vms: &'a [Arc<VirtualMachine>],
    node: &str,
) -> impl Iterator<Item = &'a Arc<VirtualMachine>> {
    vms.iter()
        .filter(move |vm| vm.status.as_ref().and_then(|s| s.node.as_deref()) == Some(node))
}

/// Observes the facts about one host.
fn observe<'a>(hv: &'a Hypervisor, ctx: &HypervisorContext, vms: &[Arc<VirtualMachine>]) -> NodeFacts<'a> {
    let name = hv.metadata.name.as_deref().unwrap_or_default();
    let status = hv.status.as_ref();
    let silent_for = ctx
        .heartbeats
        .observe(name, status.and_then(|s| s.heartbeat_time.as_ref()));
    let ready = status.and_then(|s| s.conditions.iter().find(|c| c.type_ == ct::READY));
    let marked_lost = ready.is_some_and(|c| c.reason == node_health::REASON_NODE_LOST);
    let placed_here = placed_on(vms, name).map(|vm| vm.key()).collect();
    let reported = status.map(|s| s.vms.clone()).unwrap_or_default();
    let stray = reported.iter().any(|key| {
        vms.iter()
            .find(|vm| &vm.key() == key)
            .is_some_and(|vm| vm.status.as_ref().and_then(|s| s.node.as_deref()) != Some(name))
    });
    let acknowledged = ready.is_some_and(|c| c.reason == crate::agent::hypervisor_status::REASON_FENCED);
    let runs_nothing = status.is_some_and(|s| s.running_vms == 0);
    NodeFacts {
        name,
        out_of_service: hv.spec.out_of_service,
        silent_for,
        grace: ctx.settings.grace,
        marked_lost,
        fence: status.and_then(|s| s.fence.as_ref()),
        placed_here,
        rejoined_clean: acknowledged && runs_nothing && !stray,
    }
}

async fn apply(hv: &Hypervisor, ctx: &HypervisorContext) -> Result<Action, HypervisorError> {
    let vms = ctx.vms.state();
    let facts = observe(hv, ctx, &vms);
    let decision = node_health::decide(&facts);
    for action in decision.actions {
        act(hv, ctx, &vms, action).await?;
    }
    Ok(Action::requeue(decision.recheck))
}

async fn act(
    hv: &Hypervisor,
    ctx: &HypervisorContext,
    vms: &[Arc<VirtualMachine>],
    action: NodeAction,
) -> Result<(), HypervisorError> {
    let api: Api<Hypervisor> = Api::all(ctx.client.clone());
    let name = hv.name_any();
    match action {
        NodeAction::MarkLost { message } => {
            mark_lost(&api, hv, &message).await?;
            ctx.metrics.operation("Hypervisor", "MarkLost", "ok");
            warn!(node = %name, "{message}");
            publish(
                ctx,
                hv,
                EventType::Warning,
                node_health::REASON_NODE_LOST,
                "Judge",
                message,
            )
            .await;
        }
        NodeAction::RecordFence { reason, vms } => {
            let fence = FenceStatus {
                state: FenceState::Fencing,
                reason: reason.to_owned(),
                message: format!("fencing decided for {} VM(s): {}", vms.len(), vms.join(", ")),
                since: Some(Time(Timestamp::now())),
                vms,
                ..Default::default()
            };
            write_fence(&api, hv, Some(&fence), true).await?;
            info!(node = %name, reason, "fencing decided and recorded");
        }
        NodeAction::Fence => fence(hv, ctx, vms, &api).await?,
        NodeAction::LiftFence => {
            let blocklisted = hv
                .status
                .as_ref()
                .and_then(|s| s.fence.as_ref())
                .map(|f| f.blocklisted.clone())
                .unwrap_or_default();
            let cluster = ctx.fencing_cluster.clone();
            let list = blocklisted.clone();
            blocking(move || fencing::lift(&cluster, &list)).await?;
            write_fence(&api, hv, None, false).await?;
            ctx.metrics.operation("Hypervisor", "LiftFence", "ok");
            let note = format!(
                "hypervisor {name} rejoined clean: its domains of VMs placed elsewhere are gone; {} blocklist entr(ies) removed",
                blocklisted.len()
            );
            info!(node = %name, "{note}");
            publish(ctx, hv, EventType::Normal, "FenceLifted", "Unfence", note).await;
        }
    }
    Ok(())
}

/// Runs the power hook, blocklists and breaks locks, and records `Fenced`.
async fn fence(
    hv: &Hypervisor,
    ctx: &HypervisorContext,
    vms: &[Arc<VirtualMachine>],
    api: &Api<Hypervisor>,
) -> Result<(), HypervisorError> {
    let name = hv.name_any();
    let recorded = hv
        .status
        .as_ref()
        .and_then(|s| s.fence.clone())
        .unwrap_or_default();
    if let Some(command) = &ctx.settings.power_fence_command {
        fencing::run_power_fence(command, &name, &recorded.reason)
            .await
            .map_err(HypervisorError::PowerFence)?;
    }
    // The VMs recorded with the decision and any placed there since (none should be).
    let images: Vec<VmImages> = vms
        .iter()
        .filter(|vm| {
            recorded.vms.contains(&vm.key())
                || vm.status.as_ref().and_then(|s| s.node.as_deref()) == Some(name.as_str())
        })
        .filter_map(|vm| vm.status.as_ref().and_then(|s| s.storage.clone()))
        .map(|s| VmImages {
            pool: s.pool,
            namespace: s.namespace,
            images: s.images.into_iter().map(|i| i.name).collect(),
        })
        .collect();
    let cluster = ctx.fencing_cluster.clone();
    let expiry = ctx.settings.blocklist_expiry;
    let fenced = blocking(move || {
        let own = cluster
            .client_address()
            .map_err(|e| StorageError::from_ceph("reading the controller's Ceph address", e))?;
        fencing::fence_images(&cluster, &images, &own, expiry)
    })
    .await?;
    let now = Timestamp::now();
    let took = recorded
        .since
        .as_ref()
        .map(|since| now.duration_since(since.0))
        .unwrap_or_default();
    let fence = FenceStatus {
        state: FenceState::Fenced,
        message: format!(
            "{} Ceph client(s) blocklisted and {} lock(s) broken {:.1} s after the decision; the host's VMs may run elsewhere",
            fenced.blocklisted.len(),
            fenced.locks_broken,
            took.as_secs_f64()
        ),
        fenced_at: Some(Time(now)),
        until: Some(Time(
            now.saturating_add(SignedDuration::try_from(expiry).unwrap_or(SignedDuration::MAX))
                .unwrap_or(now),
        )),
        blocklisted: fenced.blocklisted,
        ..recorded
    };
    write_fence(api, hv, Some(&fence), false).await?;
    ctx.metrics.operation("Hypervisor", "Fence", "ok");
    warn!(node = %name, "{}", fence.message);
    publish(
        ctx,
        hv,
        EventType::Warning,
        "Fenced",
        "Fence",
        fence.message.clone(),
    )
    .await;
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, HypervisorError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::internal(format!("fencing task: {e}")))?
        .map_err(HypervisorError::from)
}

/// Sets Ready to Unknown (reason NodeLost). The agent's next heartbeat, if any, replaces it, so
/// no precondition is needed.
async fn mark_lost(api: &Api<Hypervisor>, hv: &Hypervisor, message: &str) -> Result<(), HypervisorError> {
    let condition = Condition {
        type_: ct::READY.into(),
        status: "Unknown".into(),
        reason: node_health::REASON_NODE_LOST.into(),
        message: message.into(),
        last_transition_time: Time(Timestamp::now()),
        observed_generation: hv.metadata.generation,
    };
    let mut conditions: Vec<Condition> = hv
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions.retain(|c| c.type_ != ct::READY);
    conditions.insert(0, condition);
    let patch = json!({"status": {"conditions": conditions}});
    api.patch_status(&hv.name_any(), &params(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

/// Writes (or removes) `status.fence`. A new decision is written only on the version judged, so
/// a heartbeat that arrived meanwhile makes the controller judge again instead of fencing a
/// host that just answered.
async fn write_fence(
    api: &Api<Hypervisor>,
    hv: &Hypervisor,
    fence: Option<&FenceStatus>,
    on_version_judged: bool,
) -> Result<(), HypervisorError> {
    let mut patch = json!({"status": {"fence": fence}});
    if on_version_judged {
        patch["metadata"] = json!({"resourceVersion": hv.resource_version()});
    }
    api.patch_status(&hv.name_any(), &params(), &Patch::Merge(patch))
        .await?;
    Ok(())
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(field_manager::HEALTH.into()),
        ..Default::default()
    }
}

async fn publish(
    ctx: &HypervisorContext,
    hv: &Hypervisor,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let note = Note {
        type_,
        reason,
        action,
        text: note,
    };
    events::publish(&ctx.recorder, hv, note).await;
}
