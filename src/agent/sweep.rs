//! The sweep: domains of this host that carry the operator's owner marker but whose
//! VirtualMachine is not (or no longer) assigned here are shut down and undefined, so a VM
//! placed elsewhere never keeps running here. Domains without the marker are never touched.
//! It runs at start-up, every resync period, and as soon as a VM leaves this node's watch.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use super::Context;
use super::actions;
use super::domain_reconcile::AbsentReason;
use super::error::AgentError;
use super::status;
use crate::api::{DesiredState, DomainState, MIGRATION_TARGET_LABEL, NODE_LABEL, VirtualMachine};
use crate::domain_xml::DomainOwner;

/// Whether a marked domain may stay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its VM is assigned to this node.
    Keep,
    /// Remove it, giving the guest this long to shut down.
    Release { timeout: Duration, reason: AbsentReason },
}

/// Decides about a domain marked for `owner`, given its VM as the API server has it.
/// `started_outside`: the agent did not define it (its marker has no digest); vm_manager or
/// Pacemaker started it from the XML the controller stores in RBD.
pub fn verdict(
    vm: Option<&VirtualMachine>,
    owner: &DomainOwner,
    started_outside: bool,
    node: &str,
    default_timeout: Duration,
) -> Verdict {
    let release = |timeout, reason| Verdict::Release { timeout, reason };
    let Some(vm) = vm.filter(|vm| vm.uid().as_deref() == Some(owner.uid.as_str())) else {
        // Gone, or re-created as another object. A guest Pacemaker runs from the XML the
        // operator once stored is not the operator's to stop.
        return if started_outside {
            Verdict::Keep
        } else {
            release(default_timeout, AbsentReason::NotAssigned)
        };
    };
    let timeout = vm.spec.stop_timeout();
    // Being live-migrated here: the incoming domain is the VM's next home (the controller
    // moves the node label once it runs here).
    let incoming = vm.labels().get(MIGRATION_TARGET_LABEL).map(String::as_str) == Some(node);
    if incoming && vm.metadata.deletion_timestamp.is_none() {
        return Verdict::Keep;
    }
    match vm.labels().get(NODE_LABEL).map(String::as_str) {
        Some(here) if here == node => {}
        // Started outside the operator, placed on a node that does not run it: the controller
        // moves the VM here. Where the other node runs it, the copy here is the later of two
        // on one disk and goes at once (next arm).
        Some(there) if started_outside && !runs_on(vm, there) => return Verdict::Keep,
        // Assigned to another node, which may run it already (a failover after this host was
        // fenced): no graceful shutdown, the copy here goes at once.
        Some(_) => return release(Duration::ZERO, AbsentReason::NotAssigned),
        // Not placed: the controller places a VM started outside the operator where it runs.
        None if started_outside => return Verdict::Keep,
        None => return release(timeout, AbsentReason::NotAssigned),
    }
    if vm.metadata.deletion_timestamp.is_some() {
        return release(timeout, AbsentReason::Deleting);
    }
    if vm.spec.state == DesiredState::Disabled {
        return release(timeout, AbsentReason::Disabled);
    }
    Verdict::Keep
}

/// Whether the VM's status shows its domain active on `node`.
fn runs_on(vm: &VirtualMachine, node: &str) -> bool {
    vm.status
        .as_ref()
        .and_then(|s| s.domain.as_ref())
        .is_some_and(|d| d.node == node && d.state.is_active())
}

/// Whether the reflector's copy already shows the VM assigned here (no API call needed).
fn kept_by_store(ctx: &Context, owner: &DomainOwner, started_outside: bool) -> bool {
    let Some(store) = ctx.store.get() else {
        return false;
    };
    let key = kube::runtime::reflector::ObjectRef::new(&owner.name).within(&owner.namespace);
    store.get(&key).is_some_and(|vm| {
        verdict(
            Some(&vm),
            owner,
            started_outside,
            &ctx.config.node_name,
            ctx.config.default_stop_timeout,
        ) == Verdict::Keep
    })
}

/// One sweep; returns how many domains it removed.
pub(crate) async fn sweep(ctx: &Context) -> Result<usize, AgentError> {
    ctx.stats.sweep();
    let node = ctx.config.node_name.clone();
    let marked = ctx.libvirt.run("sweep", actions::list_marked).await?;
    let mut removed = 0;
    for domain in marked {
        let owner = domain.owner.clone();
        if kept_by_store(ctx, &owner, domain.started_outside) {
            continue;
        }
        let _guard = ctx.locks.lock(&domain.name).await;
        let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &owner.namespace);
        let vm = api
            .get_opt(&owner.name)
            .await
            .map_err(|e| AgentError::kube(format!("sweep: read VM {}/{}", owner.namespace, owner.name), e))?;
        let Verdict::Release { timeout, reason } = verdict(
            vm.as_ref(),
            &owner,
            domain.started_outside,
            &node,
            ctx.config.default_stop_timeout,
        ) else {
            continue;
        };
        let name = domain.name.clone();
        let stats = ctx.stats.clone();
        let target = owner.clone();
        let gone = ctx
            .libvirt
            .run(format!("sweep domain '{name}'"), move |hv| {
                actions::remove_marked(hv, &stats, &name, &target, timeout)
            })
            .await?;
        if !gone {
            continue;
        }
        ctx.domains_changed.notify_one();
        removed += 1;
        info!(
            domain = %domain.name,
            vm = %format!("{}/{}", owner.namespace, owner.name),
            reason = reason.as_str(),
            "removed a domain whose VM is not assigned to this node"
        );
        ctx.forget(&owner.uid);
        if let Some(vm) = vm.filter(|_| reason == AbsentReason::NotAssigned) {
            report_release(ctx, &api, &vm, &domain.name).await;
        }
    }
    Ok(removed)
}

/// After removing the domain of a VM placed elsewhere: if this node is still the one its
/// status names, say the domain is gone here. The write is conditional on the version read (a
/// newer report by the new node wins); when another writer (the controller) changed the object
/// meanwhile, it is read again and the report retried, because the controller waits for this
/// report before it lets the new node start the VM.
async fn report_release(ctx: &Context, api: &Api<VirtualMachine>, vm: &VirtualMachine, domain_name: &str) {
    let node = &ctx.config.node_name;
    let mut vm = vm.clone();
    for _ in 0..5 {
        let Some(current) = vm.status.as_ref().and_then(|s| s.domain.as_ref()) else {
            return;
        };
        if current.node != *node || current.state == DomainState::Absent {
            return;
        }
        let report = status::domain_status(
            node,
            domain_name,
            vm.metadata.generation,
            None,
            Some(&super::domain_reconcile::Note::Absent(AbsentReason::NotAssigned)),
            None,
        );
        let restarts = vm.status.as_ref().and_then(|s| s.restarts.as_ref());
        match status::apply(api, &vm, report, restarts, vm.resource_version()).await {
            Ok(_) => {
                ctx.stats.vm_status_write();
                return;
            }
            Err(AgentError::Kube {
                error: kube::Error::Api(s),
                ..
            }) if s.code == 409 => match api.get_opt(&vm.name_any()).await {
                Ok(Some(fresh)) if fresh.metadata.uid == vm.metadata.uid => vm = fresh,
                Ok(_) => return,
                Err(e) => {
                    warn!("re-reading VM {} after a conflict: {e}", vm.name_any());
                    return;
                }
            },
            Err(e) => {
                warn!("{e}");
                return;
            }
        }
    }
    warn!(
        "could not report domain {domain_name} released after 5 conflicts; the controller falls back to this node's heartbeat, which no longer lists it"
    );
}

pub(crate) async fn sweep_loop(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    loop {
        let span = info_span!("sweep", node = %ctx.config.node_name);
        match sweep(&ctx).instrument(span).await {
            Ok(0) => {}
            Ok(n) => info!(node = %ctx.config.node_name, "sweep removed {n} domain(s)"),
            Err(e) => warn!(node = %ctx.config.node_name, "sweep failed: {e}"),
        }
        ctx.libvirt.keep_secret().await;
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.resync_period) => {}
            _ = ctx.sweep_now.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Disk, DiskSource, VirtualMachineSpec};
    use std::collections::BTreeMap;

    fn vm(uid: &str, node: Option<&str>, state: DesiredState) -> VirtualMachine {
        let mut vm = VirtualMachine::new(
            "guest0",
            VirtualMachineSpec {
                state,
                xml: "<domain/>".into(),
                system_disk: Disk {
                    source: DiskSource {
                        http: None,
                        path: None,
                        rbd: None,
                        vm: None,
                        golden: None,
                        blank: Some(Default::default()),
                    },
                    size: Some("1Mi".into()),
                    bus: Default::default(),
                },
                data_disks: vec![],
                metadata: BTreeMap::new(),
                placement: None,
                migration: None,
                stop_timeout_seconds: Some(7),
                storage_name: None,
                deletion_policy: Default::default(),
            },
        );
        vm.metadata.namespace = Some("prod".into());
        vm.metadata.uid = Some(uid.into());
        if let Some(node) = node {
            vm.metadata.labels = Some(BTreeMap::from([(NODE_LABEL.to_owned(), node.to_owned())]));
        }
        vm
    }

    #[test]
    fn an_incoming_migration_is_kept_until_the_vm_is_deleted() {
        let owner = DomainOwner::new("prod", "guest0", "u1");
        let d = Duration::from_secs(60);
        let mut moving = vm("u1", Some("hv1"), DesiredState::Started);
        moving
            .labels_mut()
            .insert(MIGRATION_TARGET_LABEL.into(), "hv2".into());
        assert_eq!(verdict(Some(&moving), &owner, false, "hv2", d), Verdict::Keep);
        assert_eq!(verdict(Some(&moving), &owner, false, "hv1", d), Verdict::Keep);
        assert_eq!(
            verdict(Some(&moving), &owner, false, "hv3", d),
            Verdict::Release {
                timeout: Duration::ZERO,
                reason: AbsentReason::NotAssigned
            }
        );
        moving.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        assert_ne!(verdict(Some(&moving), &owner, false, "hv2", d), Verdict::Keep);
    }

    #[test]
    fn verdicts() {
        let owner = DomainOwner::new("prod", "guest0", "u1");
        let d = Duration::from_secs(60);
        let s7 = Duration::from_secs(7);
        let keep = vm("u1", Some("hv1"), DesiredState::Started);
        assert_eq!(verdict(Some(&keep), &owner, false, "hv1", d), Verdict::Keep);
        assert_eq!(
            verdict(
                Some(&vm("u1", Some("hv1"), DesiredState::Stopped)),
                &owner,
                false,
                "hv1",
                d
            ),
            Verdict::Keep
        );
        let rel = |timeout, reason| Verdict::Release { timeout, reason };
        assert_eq!(
            verdict(None, &owner, false, "hv1", d),
            rel(d, AbsentReason::NotAssigned)
        );
        assert_eq!(
            verdict(
                Some(&vm("u2", Some("hv1"), DesiredState::Started)),
                &owner,
                false,
                "hv1",
                d
            ),
            rel(d, AbsentReason::NotAssigned)
        );
        assert_eq!(
            verdict(
                Some(&vm("u1", Some("hv2"), DesiredState::Started)),
                &owner,
                false,
                "hv1",
                d
            ),
            rel(Duration::ZERO, AbsentReason::NotAssigned),
            "placed elsewhere: destroyed at once, it may run there already"
        );
        assert_eq!(
            verdict(
                Some(&vm("u1", None, DesiredState::Started)),
                &owner,
                false,
                "hv1",
                d
            ),
            rel(s7, AbsentReason::NotAssigned)
        );
        assert_eq!(
            verdict(
                Some(&vm("u1", Some("hv1"), DesiredState::Disabled)),
                &owner,
                false,
                "hv1",
                d
            ),
            rel(s7, AbsentReason::Disabled)
        );
        // Started outside the operator (vm_manager or Pacemaker, from the stored XML).
        assert_eq!(
            verdict(None, &owner, true, "hv1", d),
            Verdict::Keep,
            "VM gone: not ours to stop"
        );
        let other_object = vm("u2", Some("hv2"), DesiredState::Started);
        assert_eq!(
            verdict(Some(&other_object), &owner, true, "hv1", d),
            Verdict::Keep
        );
        let unplaced = vm("u1", None, DesiredState::Started);
        assert_eq!(
            verdict(Some(&unplaced), &owner, true, "hv1", d),
            Verdict::Keep,
            "the controller places it here"
        );
        let mut placed_elsewhere = vm("u1", Some("hv2"), DesiredState::Started);
        assert_eq!(
            verdict(Some(&placed_elsewhere), &owner, true, "hv1", d),
            Verdict::Keep,
            "not running there: the controller moves it here"
        );
        placed_elsewhere.status = Some(crate::api::VirtualMachineStatus {
            domain: Some(crate::api::DomainStatus {
                node: "hv2".into(),
                state: DomainState::Running,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            verdict(Some(&placed_elsewhere), &owner, true, "hv1", d),
            rel(Duration::ZERO, AbsentReason::NotAssigned),
            "a second copy of a VM the operator runs elsewhere goes at once"
        );
        assert_eq!(verdict(Some(&keep), &owner, true, "hv1", d), Verdict::Keep);
        let mut deleting = keep.clone();
        deleting.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        ));
        assert_eq!(
            verdict(Some(&deleting), &owner, false, "hv1", d),
            rel(s7, AbsentReason::Deleting)
        );
    }
}
