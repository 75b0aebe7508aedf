//! Drains hypervisors (`spec.drain`): observe (the VMs placed on the host from the cache, the
//! drain's migrations) -> decide ([`decide::decide`], pure) -> act (one
//! VirtualMachineMigration per VM to move, a few at a time) -> report (`status.drain`).
//! The migrations do the moving, live where the VM allows it.

mod decide;

pub use decide::RETRY_NOTE;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use crate::api::{
    DRAIN_LABEL, DesiredState, DrainStatus, Hypervisor, VirtualMachine, VirtualMachineMigration,
    VirtualMachineMigrationSpec,
};
use crate::controller::context::Context;
use crate::field_manager;

/// Label on a drain's migrations: the Hypervisor's generation when the drain was asked for, so
/// that a later drain starts afresh.
pub const DRAIN_GENERATION_LABEL: &str = "seapath.lfenergy.org/drain-generation";

/// How often a draining host is looked at without a change.
const DRAINING_RECHECK: Duration = Duration::from_secs(3);

/// VMs that leave a draining host at once, unless configured.
pub const DEFAULT_PARALLEL: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// The VM controller's context (the VM cache) and the drain's setting.
pub struct DrainContext {
    pub vm: Arc<Context>,
    pub parallel: usize,
}

/// Runs the drain controller until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    parallel: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let controller =
        crate::watch::controller(Api::<Hypervisor>::all(client.clone()), watcher::Config::default()).watches(
            Api::<VirtualMachineMigration>::all(client),
            watcher::Config::default().labels(DRAIN_LABEL),
            |m: VirtualMachineMigration| m.labels().get(DRAIN_LABEL).map(|hv| ObjectRef::new(hv)),
        );
    let context = Arc::new(DrainContext { vm: ctx, parallel });
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

pub async fn reconcile(hv: Arc<Hypervisor>, ctx: Arc<DrainContext>) -> Result<Action, DrainError> {
    let span = info_span!("reconcile", kind = "Drain", object = %hv.name_any());
    async move {
        let timer = ctx.vm.metrics.reconcile_timer("Drain");
        let result = step(&hv, &ctx).await;
        match &result {
            Ok(_) => timer.ok(),
            Err(_) => timer.error("KubernetesApiError"),
        }
        result
    }
    .instrument(span)
    .await
}

pub fn error_policy(_: Arc<Hypervisor>, err: &DrainError, _: Arc<DrainContext>) -> Action {
    warn!(error = %err, "drain reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Observe, decide, act, report.
async fn step(hv: &Hypervisor, ctx: &DrainContext) -> Result<Action, DrainError> {
    let node = hv.name_any();
    let generation = hv.metadata.generation.unwrap_or_default().to_string();
    let shown = hv.status.as_ref().and_then(|s| s.drain.clone());
    if !hv.spec.drain && shown.is_none() {
        return Ok(Action::await_change());
    }
    let vms = ctx.vm.vms.state();
    let placed: Vec<&VirtualMachine> = vms
        .iter()
        .map(Arc::as_ref)
        .filter(|vm| vm.spec.state != DesiredState::Disabled)
        .filter(|vm| vm.status.as_ref().and_then(|s| s.node.as_deref()) == Some(node.as_str()))
        .collect();
    let migrations = if hv.spec.drain {
        drain_migrations(ctx, &node, &generation).await?
    } else {
        Vec::new()
    };
    let decision = decide::decide(&decide::Facts {
        node: &node,
        draining: hv.spec.drain,
        vms: &placed,
        migrations: &migrations,
        parallel: ctx.parallel,
        now: k8s_openapi::jiff::Timestamp::now(),
    });
    for next in &decision.migrate {
        create_migration(ctx, &node, &generation, next).await?;
    }
    if decision.status != shown {
        write_status(ctx, &node, decision.status.as_ref()).await?;
    }
    Ok(match decision.status {
        Some(status) if status.vms_left > 0 => Action::requeue(DRAINING_RECHECK),
        _ => Action::await_change(),
    })
}

async fn drain_migrations(
    ctx: &DrainContext,
    node: &str,
    generation: &str,
) -> Result<Vec<VirtualMachineMigration>, DrainError> {
    let api: Api<VirtualMachineMigration> = Api::all(ctx.vm.client.clone());
    let selector = format!("{DRAIN_LABEL}={node},{DRAIN_GENERATION_LABEL}={generation}");
    Ok(api.list(&ListParams::default().labels(&selector)).await?.items)
}

/// One migration of a VM off `node`, named after the drain and the attempt so that asking
/// twice makes one.
async fn create_migration(
    ctx: &DrainContext,
    node: &str,
    generation: &str,
    next: &decide::Move,
) -> Result<(), DrainError> {
    let (namespace, vm) = (next.namespace.as_str(), next.vm.as_str());
    let api: Api<VirtualMachineMigration> = Api::namespaced(ctx.vm.client.clone(), namespace);
    let name: String = format!("{vm}-drain-{generation}-{}-{node}", next.attempt)
        .chars()
        .take(253)
        .collect();
    let name = name.trim_end_matches(['-', '.']).to_owned();
    let migration = VirtualMachineMigration {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(
                [
                    (DRAIN_LABEL.to_owned(), node.to_owned()),
                    (DRAIN_GENERATION_LABEL.to_owned(), generation.to_owned()),
                ]
                .into(),
            ),
            ..Default::default()
        },
        spec: VirtualMachineMigrationSpec {
            vm_name: vm.to_owned(),
            target_node: None,
        },
        status: None,
    };
    match api.create(&PostParams::default(), &migration).await {
        Ok(_) => {
            info!(vm = %format!("{namespace}/{vm}"), migration = %name, "draining: moving a VM off the host");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Writes (or, with `None`, removes) `status.drain`, under the drain's own field manager.
async fn write_status(ctx: &DrainContext, node: &str, drain: Option<&DrainStatus>) -> Result<(), DrainError> {
    let api: Api<Hypervisor> = Api::all(ctx.vm.client.clone());
    let status = match drain {
        Some(drain) => json!({"drain": drain}),
        None => json!({}),
    };
    let patch = json!({
        "apiVersion": Hypervisor::api_version(&()), "kind": Hypervisor::kind(&()),
        "metadata": {"name": node}, "status": status
    });
    api.patch_status(
        node,
        &PatchParams::apply(field_manager::DRAIN).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}
