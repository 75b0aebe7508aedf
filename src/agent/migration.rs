//! The agent's side of a live migration: the source migrates the domain to the target the
//! controller labelled the VM with and reports how it went; the target keeps the incoming
//! domain and reports it once it runs. Who may write the VM's report while it moves is decided
//! here, so that the source never hides the target's report.

use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use super::Context;
use super::domain_reconcile::{Intent, ObservedDomain, Ownership};
use super::error::AgentError;
use crate::api::{
    DomainStatus, Hypervisor, MIGRATION_ABORT_ANNOTATION, MIGRATION_TARGET_LABEL, MIGRATION_UID_ANNOTATION,
    MigrationReport, VirtualMachine,
};
use crate::libvirt::{DomainState as LvState, LiveMigration};

/// Live-migrates the VM's domain to the target of its migration label. A migration libvirt
/// refuses (or that times out, or is cancelled) leaves the guest running here and is
/// reported as failed; only a lost libvirt connection is an error.
pub(crate) async fn migrate(
    ctx: &Context,
    vm: &VirtualMachine,
    what: &str,
    domain_name: &str,
) -> Result<MigrationReport, AgentError> {
    let target = vm
        .labels()
        .get(MIGRATION_TARGET_LABEL)
        .cloned()
        .unwrap_or_default();
    let mut report = MigrationReport {
        uid: vm
            .annotations()
            .get(MIGRATION_UID_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
        target: target.clone(),
        ..Default::default()
    };
    let target_uri = match migration_uri_of(ctx, &target).await {
        Ok(uri) => uri,
        Err(message) => {
            report.message = Some(message);
            return Ok(report);
        }
    };
    let policy = vm.spec.migration.clone().unwrap_or_default();
    let cancelled = cancellation(ctx, vm, &target);
    let context = format!("{what}: live migration to {target}");
    let (name, stats, c) = (domain_name.to_owned(), ctx.stats.clone(), context.clone());
    let outcome = ctx
        .libvirt
        .run(context, move |hv| {
            let domain = hv.lookup_domain(&name).map_err(|e| AgentError::libvirt(&c, e))?;
            stats.libvirt_write("migrate");
            domain
                .migrate_live(&LiveMigration {
                    target_uri: &target_uri,
                    max_downtime: Duration::from_millis(policy.max_downtime_milliseconds.into()),
                    timeout: Duration::from_secs(policy.timeout_seconds.into()),
                    cancelled: &cancelled,
                })
                .map_err(|e| AgentError::libvirt(&c, e))
        })
        .await;
    match outcome {
        Ok(stats) => {
            report.succeeded = true;
            report.downtime_milliseconds = stats.downtime.and_then(|d| i64::try_from(d.as_millis()).ok());
            report.bytes_transferred = stats.bytes.and_then(|b| i64::try_from(b).ok());
            tracing::info!(domain = %domain_name, %target, ?stats, "live-migrated");
        }
        Err(e) if e.is_libvirt_connection() => return Err(e),
        Err(e) => {
            tracing::warn!(domain = %domain_name, %target, "live migration failed: {e}");
            report.message = Some(e.to_string());
        }
    }
    Ok(report)
}

/// The libvirt URI the target's agent publishes for incoming migrations.
async fn migration_uri_of(ctx: &Context, target: &str) -> Result<String, String> {
    let hypervisors: Api<Hypervisor> = Api::all(ctx.client.clone());
    let hv = hypervisors
        .get_opt(target)
        .await
        .map_err(|e| format!("cannot read Hypervisor {target}: {e}"))?
        .ok_or_else(|| format!("hypervisor {target} has no Hypervisor object"))?;
    hv.status
        .and_then(|s| s.migration_uri)
        .ok_or_else(|| format!("the agent of hypervisor {target} publishes no migration URI"))
}

/// Whether the controller called the migration off, as the agent's watch shows the VM now
/// (the reconciliation that runs the migration holds an older copy).
fn cancellation(
    ctx: &Context,
    vm: &VirtualMachine,
    target: &str,
) -> impl Fn() -> bool + Sync + Send + 'static {
    let store = ctx.store.get().cloned();
    let key = ObjectRef::from_obj(vm);
    let target = target.to_owned();
    move || {
        let Some(store) = store.as_ref() else {
            return false;
        };
        store.get(&key).is_none_or(|now| {
            now.annotations().contains_key(MIGRATION_ABORT_ANNOTATION)
                || now.labels().get(MIGRATION_TARGET_LABEL) != Some(&target)
        })
    }
}

/// The source's last account of the migration the VM is marked for, if it gave one.
pub(crate) fn own_account(vm: &VirtualMachine, reported: Option<&DomainStatus>) -> Option<MigrationReport> {
    let uid = vm.annotations().get(MIGRATION_UID_ANNOTATION)?;
    reported
        .and_then(|r| r.migration.clone())
        .filter(|m| &m.uid == uid)
}

/// The account of the migration in the target's report: the source's, when the source wrote
/// it first (the source's report may come after the target's, and then it is not written at
/// all), with the downtime and bytes libvirt here recorded of the migration that brought the
/// guest (libvirt hands them to the target with the guest).
pub(crate) async fn incoming_report(
    ctx: &Context,
    vm: &VirtualMachine,
    intent: Intent,
    domain_name: &str,
) -> Option<MigrationReport> {
    let node = ctx.config.node_name.as_str();
    // Until the controller ends the migration (its marks go), the report keeps the account,
    // also once the node label moved here.
    let target_here = vm.labels().get(MIGRATION_TARGET_LABEL).map(String::as_str) == Some(node);
    if intent != Intent::Incoming && !(target_here && intent == Intent::Started) {
        return None;
    }
    let carried = vm
        .status
        .as_ref()
        .and_then(|s| s.domain.as_ref())
        .and_then(|d| d.migration.clone())
        .filter(|m| m.target == node);
    let name = domain_name.to_owned();
    let local = ctx
        .libvirt
        .run(format!("{domain_name}: migration statistics"), move |hv| {
            hv.lookup_domain(&name)
                .and_then(|d| d.completed_migration_stats())
                .map_err(|e| AgentError::libvirt("migration statistics", e))
        })
        .await
        .unwrap_or_default();
    let mut report = carried.unwrap_or_else(|| MigrationReport {
        uid: vm
            .annotations()
            .get(MIGRATION_UID_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
        target: node.to_owned(),
        succeeded: true,
        ..Default::default()
    });
    let millis = |d: std::time::Duration| i64::try_from(d.as_millis()).ok();
    report.downtime_milliseconds = local.downtime.and_then(millis).or(report.downtime_milliseconds);
    report.bytes_transferred = local
        .bytes
        .and_then(|b| i64::try_from(b).ok())
        .or(report.bytes_transferred);
    Some(report)
}

/// Whether this node writes its report on the VM. A node the VM is not placed on writes
/// nothing, unless it is the migration's target and the domain arrived; the source whose
/// domain left writes only while the VM's report is still its own, so that it never replaces
/// the target's.
pub(crate) fn may_report(
    vm: &VirtualMachine,
    intent: Intent,
    node: &str,
    observed: Option<&ObservedDomain>,
) -> bool {
    let last_reporter = vm
        .status
        .as_ref()
        .and_then(|s| s.domain.as_ref())
        .map(|d| d.node.as_str());
    match intent {
        Intent::Absent(super::domain_reconcile::AbsentReason::NotAssigned) => false,
        // Only once it runs: a paused incoming guest is still being migrated, and the
        // controller hands the VM over on the first report of it here.
        Intent::Incoming => {
            observed.is_some_and(|d| d.ownership == Ownership::Ours && d.state.state == LvState::Running)
        }
        Intent::MigrateAway if observed.is_none() => last_reporter == Some(node),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_keeps_its_account_of_the_migration_it_is_marked_for() {
        let mut vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "vm1", "annotations": {MIGRATION_UID_ANNOTATION: "m1"}},
            "spec": {"xml": "<domain/>", "systemDisk": {"source": {"blank": {}}, "size": "1Gi"}}
        }))
        .unwrap();
        let refused = DomainStatus {
            node: "hv1".into(),
            migration: Some(MigrationReport {
                uid: "m1".into(),
                target: "hv2".into(),
                message: Some("refused".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(own_account(&vm, Some(&refused)), refused.migration);
        vm.annotations_mut()
            .insert(MIGRATION_UID_ANNOTATION.into(), "m2".into());
        assert_eq!(
            own_account(&vm, Some(&refused)),
            None,
            "another migration's account goes"
        );
        assert_eq!(own_account(&vm, None), None);
    }
}
