//! Lists, on each VirtualMachine's status, the RBD snapshots of its images that no
//! VirtualMachineSnapshot claims (`status.unmanagedSnapshots`): those taken by `rbd snap
//! create` or SEAPATH's vm_manager, which a VirtualMachineSnapshot with `adopt: true` can take
//! over. Read-only on Ceph (one snap_list per image), but for one cleanup: snapshots left in
//! librbd's trash that no clone depends on any more (see `rbd::sweep_trash`) are removed.
//!
//! Written with a field manager of its own, so that the VM controller's and the agents'
//! status patches (which leave the field out) never remove it, nor this one theirs.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;
use tracing::debug;

use super::checks::{self, RecentChecks};
use super::{Error, SnapshotContext, rbd, reset_failures};
use super::{per_image, rbd_name};
use crate::api::{SnapshotPhase, UnmanagedSnapshot, VirtualMachine, VirtualMachineSnapshot};
use crate::ceph::SnapInfo;
use crate::controller::frame;
use crate::field_manager;

/// How often, by default, the list is refreshed without any change seen on the objects
/// (snapshots taken or removed by hand leave no trace in Kubernetes). Each refresh opens every
/// image of the VM: with 500 VMs a 5-minute period kept an idle controller above 1 % of a core.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(600);
const KIND: &str = "VirtualMachineInventory";

/// The RBD snapshot names claimed by VirtualMachineSnapshots of `vm`: every object but a
/// Failed one (which owns nothing: a refused adoption leaves the snapshot unmanaged).
pub fn claimed(namespace: &str, vm: &str, snapshots: &[Arc<VirtualMachineSnapshot>]) -> BTreeSet<String> {
    snapshots
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace) && s.spec.vm_name == vm)
        .filter(|s| s.status.as_ref().and_then(|st| st.phase) != Some(SnapshotPhase::Failed))
        .map(|s| {
            s.status
                .as_ref()
                .and_then(|st| st.snapshot_name.clone())
                .unwrap_or_else(|| rbd_name(s))
        })
        .collect()
}

/// The unclaimed user snapshots of the images (given in the VM's order), oldest first: one
/// entry per name, with the images that have it.
pub fn unmanaged(images: &[(String, Vec<SnapInfo>)], claimed: &BTreeSet<String>) -> Vec<UnmanagedSnapshot> {
    let mut by_name: BTreeMap<&str, (Vec<String>, SystemTime)> = BTreeMap::new();
    for (image, snaps) in images {
        for s in snaps.iter().filter(|s| !claimed.contains(&s.name)) {
            let entry = by_name
                .entry(&s.name)
                .or_insert_with(|| (Vec::new(), s.timestamp));
            if !entry.0.contains(image) {
                entry.0.push(image.clone());
            }
            entry.1 = entry.1.max(s.timestamp);
        }
    }
    let mut out: Vec<(SystemTime, UnmanagedSnapshot)> = by_name
        .into_iter()
        .map(|(name, (images, time))| {
            (
                time,
                UnmanagedSnapshot {
                    name: name.to_owned(),
                    images,
                    creation_time: Timestamp::try_from(time).ok().map(Time),
                },
            )
        })
        .collect();
    out.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    out.into_iter().map(|(_, u)| u).collect()
}

/// What a VM's list depends on besides Ceph: its images, the list it shows, the names claimed.
pub fn inputs_key(
    storage: &crate::api::StorageStatus,
    shown: &[UnmanagedSnapshot],
    claimed: &BTreeSet<String>,
) -> u64 {
    checks::key_of(&(storage, shown, claimed))
}

/// The inputs of each VM's last refresh and when it was made: a reconcile woken by a change
/// this list does not depend on (the agents' reports, conditions) lists nothing in Ceph.
pub struct Seen {
    checks: RecentChecks,
    started: Timestamp,
}

impl Seen {
    /// `period`: the longest a list stays unchecked.
    pub fn new(period: Duration) -> Self {
        Seen {
            checks: RecentChecks::new(period),
            started: Timestamp::now(),
        }
    }

    pub fn period(&self) -> Duration {
        self.checks.period()
    }

    /// A VM that existed before this process started is listed after a delay taken from its
    /// UID within the refresh period: after a restart the listings of hundreds of VMs are
    /// spread out instead of opening every image at once. VMs made since are listed at once.
    fn startup_delay(&self, uid: &str, created: Option<Timestamp>) -> Option<Duration> {
        let started = self.started;
        // Creation times have whole seconds: a VM made in this process's first second is new.
        if created.is_none_or(|c| c.as_second() >= started.as_second()) || self.checks.contains(uid) {
            return None;
        }
        let mut hasher = DefaultHasher::new();
        uid.hash(&mut hasher);
        let due = Duration::from_millis(hasher.finish() % self.period().as_millis() as u64);
        let since_start = Timestamp::now().duration_since(started).unsigned_abs();
        due.checked_sub(since_start).filter(|left| !left.is_zero())
    }
}

pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<SnapshotContext>) -> Result<Action, Error> {
    let namespace = vm.namespace().unwrap_or_default();
    let run = async {
        let action = refresh(&vm, &ctx, &namespace).await?;
        reset_failures(&ctx, vm.as_ref());
        Ok(action)
    };
    frame::observed(KIND, vm.as_ref(), &ctx.metrics, run).await
}

async fn refresh(vm: &VirtualMachine, ctx: &SnapshotContext, namespace: &str) -> Result<Action, Error> {
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let Some(storage) = vm.status.as_ref().and_then(|s| s.storage.as_ref()) else {
        return Ok(Action::requeue(ctx.inventory.period()));
    };
    if vm.metadata.deletion_timestamp.is_some() {
        ctx.inventory.checks.forget(&uid);
        return Ok(Action::await_change());
    }
    let current = vm
        .status
        .as_ref()
        .map(|s| s.unmanaged_snapshots.clone())
        .unwrap_or_default();
    let created = vm.metadata.creation_timestamp.as_ref().map(|t| t.0);
    if let Some(delay) = ctx.inventory.startup_delay(&uid, created) {
        return Ok(Action::requeue(delay));
    }
    let claimed = claimed(namespace, &vm.name_any(), &ctx.snapshots.state());
    if let Some(left) = ctx
        .inventory
        .checks
        .fresh_for(&uid, inputs_key(storage, &current, &claimed))
    {
        return Ok(Action::requeue(left));
    }
    let images: Vec<String> = storage.images.iter().map(|i| i.name.clone()).collect();
    let listed = per_image(ctx, namespace, &images, |io, image| {
        rbd::list_and_sweep(io, &image).map(Some)
    })
    .await?;
    let mut found = Vec::with_capacity(images.len());
    for (image, result) in images.iter().zip(listed) {
        found.push((image.clone(), result?.unwrap_or_default()));
    }
    let list = unmanaged(&found, &claimed);
    if list != current {
        debug!(count = list.len(), "unmanaged snapshots changed");
        // An empty apply gives the field up: the API server removes it.
        let status = if list.is_empty() {
            json!({})
        } else {
            json!({"unmanagedSnapshots": list})
        };
        let patch = json!({
            "apiVersion": <VirtualMachine as kube::Resource>::api_version(&()), "kind": <VirtualMachine as kube::Resource>::kind(&()), "status": status
        });
        let api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), namespace);
        match api
            .patch_status(
                &vm.name_any(),
                &PatchParams::apply(field_manager::SNAPSHOT_INVENTORY).force(),
                &Patch::Apply(patch),
            )
            .await
        {
            Ok(_) => {}
            // Deleted meanwhile: nothing to report on.
            Err(kube::Error::Api(e)) if e.code == 404 => {
                ctx.inventory.checks.forget(&uid);
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e.into()),
        }
    }
    // Keyed on the list now shown: the VM's update that this write causes finds it fresh.
    ctx.inventory
        .checks
        .record(&uid, inputs_key(storage, &list, &claimed));
    Ok(Action::requeue(ctx.inventory.period()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SnapshotDeletionPolicy, VirtualMachineSnapshotSpec, VirtualMachineSnapshotStatus};
    use crate::ceph::SnapNamespace;
    use std::time::UNIX_EPOCH;

    const REFRESH: Duration = DEFAULT_REFRESH;

    fn snap(id: u64, name: &str, secs: u64) -> SnapInfo {
        SnapInfo {
            id,
            name: name.into(),
            size: 1,
            timestamp: UNIX_EPOCH + Duration::from_secs(secs),
            namespace: SnapNamespace::User,
        }
    }

    #[test]
    fn one_entry_per_name_with_its_images_oldest_first() {
        let images = vec![
            (
                "system_vm".to_string(),
                vec![snap(1, "late", 300), snap(2, "manual", 100), snap(3, "ours", 50)],
            ),
            (
                "data_vm_0".to_string(),
                vec![snap(7, "manual", 120), snap(8, "ours", 50)],
            ),
        ];
        let claimed = BTreeSet::from(["ours".to_string()]);
        let list = unmanaged(&images, &claimed);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "manual");
        assert_eq!(list[0].images, ["system_vm", "data_vm_0"]);
        assert_eq!(
            list[0].creation_time,
            Some(Time(Timestamp::from_second(120).unwrap())),
            "the time of the last image's snapshot"
        );
        assert_eq!(list[1].name, "late");
        assert_eq!(list[1].images, ["system_vm"]);
        assert!(unmanaged(&[], &claimed).is_empty());
    }

    fn object(
        name: &str,
        vm: &str,
        rbd: Option<&str>,
        phase: Option<SnapshotPhase>,
    ) -> Arc<VirtualMachineSnapshot> {
        let mut s = VirtualMachineSnapshot::new(
            name,
            VirtualMachineSnapshotSpec {
                vm_name: vm.into(),
                snapshot_name: rbd.map(Into::into),
                description: None,
                deletion_policy: SnapshotDeletionPolicy::Delete,
                failure_deadline: None,
                adopt: true,
            },
        );
        s.metadata.namespace = Some("ns".into());
        s.status = phase.map(|p| VirtualMachineSnapshotStatus {
            phase: Some(p),
            ..Default::default()
        });
        Arc::new(s)
    }

    #[test]
    fn failed_objects_and_other_vms_claim_nothing() {
        let all = vec![
            object("a", "vm", Some("one"), Some(SnapshotPhase::Ready)),
            object("two", "vm", None, None),
            object("c", "vm", Some("three"), Some(SnapshotPhase::Failed)),
            object("d", "other", Some("four"), Some(SnapshotPhase::Ready)),
        ];
        assert_eq!(
            claimed("ns", "vm", &all),
            BTreeSet::from(["one".to_string(), "two".to_string()])
        );
        assert!(claimed("elsewhere", "vm", &all).is_empty());
    }

    #[test]
    fn the_key_changes_with_the_names_claimed() {
        let storage = crate::api::StorageStatus::default();
        let one = inputs_key(&storage, &[], &BTreeSet::from(["a".to_string()]));
        assert_ne!(one, inputs_key(&storage, &[], &BTreeSet::new()));
        assert_eq!(one, inputs_key(&storage, &[], &BTreeSet::from(["a".to_string()])));
    }

    #[test]
    fn after_a_restart_older_vms_are_listed_spread_over_the_period() {
        let seen = Seen::new(REFRESH);
        let before = Timestamp::now() - jiff::SignedDuration::from_secs(3600);
        let delays: Vec<_> = (0..50)
            .filter_map(|i| seen.startup_delay(&format!("uid-{i}"), Some(before)))
            .collect();
        assert!(delays.len() > 40, "most wait: {}", delays.len());
        assert!(delays.iter().all(|d| *d < REFRESH));
        let spread = delays
            .iter()
            .max()
            .unwrap()
            .saturating_sub(*delays.iter().min().unwrap());
        assert!(spread > REFRESH / 2, "spread over the period: {spread:?}");
        // A VM made after the start, or already listed by this process, waits for nothing.
        assert_eq!(
            seen.startup_delay("new", Some(Timestamp::now() + jiff::SignedDuration::from_secs(1))),
            None
        );
        assert_eq!(seen.startup_delay("new", None), None);
        seen.checks.record("uid-1", 7);
        assert_eq!(seen.startup_delay("uid-1", Some(before)), None);
    }
}
