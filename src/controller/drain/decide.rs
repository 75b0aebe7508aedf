//! The pure decision of a drain: the VMs placed on a draining hypervisor and the migrations
//! the drain made -> the migrations to create now (a bounded number at a time, highest
//! priority first) and the progress to show. No I/O.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{DrainPhase, DrainStatus, MigrationPhase, VirtualMachine, VirtualMachineMigration};

/// Everything the decision depends on.
pub struct Facts<'a> {
    pub node: &'a str,
    /// `spec.drain` of the hypervisor.
    pub draining: bool,
    /// The VMs placed on the hypervisor (`status.node`).
    pub vms: &'a [&'a VirtualMachine],
    /// The migrations this drain created (labelled with the node).
    pub migrations: &'a [VirtualMachineMigration],
    /// How many VMs may move at once.
    pub parallel: usize,
    pub now: Timestamp,
}

/// A VM whose move failed is tried again this long after (the target may have been busy),
/// up to [`MAX_ATTEMPTS`] times in all.
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);
pub const MAX_ATTEMPTS: usize = 3;

/// How a blocked VM that will be tried again is shown (`kubectl seapath drain --wait` keeps
/// waiting for it).
pub const RETRY_NOTE: &str = "tried again at";

/// A VM to move, and which attempt of this drain it is (numbering the migration's name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub namespace: String,
    pub vm: String,
    pub attempt: usize,
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// VMs to move now, in order.
    pub migrate: Vec<Move>,
    /// The progress to show; `None` when the host is not draining.
    pub status: Option<DrainStatus>,
}

/// Decides the next step of a drain.
pub fn decide(f: &Facts<'_>) -> Decision {
    if !f.draining {
        return Decision {
            migrate: Vec::new(),
            status: None,
        };
    }
    let mut order: Vec<&VirtualMachine> = f.vms.to_vec();
    let priority = |vm: &VirtualMachine| vm.spec.placement.as_ref().map_or(0, |p| p.priority);
    order.sort_by(|a, b| priority(b).cmp(&priority(a)).then_with(|| key(a).cmp(&key(b))));
    let mut moving = Vec::new();
    let mut blocked = Vec::new();
    let mut waiting = Vec::new();
    for vm in order {
        let pinned = vm.spec.placement.as_ref().and_then(|p| p.pinned_node.as_deref());
        let attempts: Vec<&VirtualMachineMigration> = f
            .migrations
            .iter()
            .filter(|m| m.namespace() == vm.namespace() && m.spec.vm_name == vm.name_any())
            .collect();
        let last = attempts
            .iter()
            .max_by_key(|m| m.metadata.creation_timestamp.clone().map(|t| t.0));
        match last {
            _ if pinned == Some(f.node) => {
                blocked.push(format!(
                    "{}: pinned to this hypervisor (spec.placement.pinnedNode)",
                    key(vm)
                ));
            }
            Some(m) if phase(m) == MigrationPhase::Failed => {
                let status = m.status.clone().unwrap_or_default();
                let ended = status.end_time.as_ref().map_or(f.now, |t| t.0);
                let retry_at = ended + RETRY_AFTER;
                if attempts.len() < MAX_ATTEMPTS && f.now >= retry_at {
                    waiting.push((vm, attempts.len() + 1));
                    continue;
                }
                let next = if attempts.len() < MAX_ATTEMPTS {
                    format!("{RETRY_NOTE} {retry_at}")
                } else {
                    format!(
                        "gave up after {MAX_ATTEMPTS} attempts; delete VirtualMachineMigration {} and uncordon and drain again to retry",
                        m.name_any()
                    )
                };
                blocked.push(format!(
                    "{}: {} ({}; {next})",
                    key(vm),
                    status.reason.unwrap_or_default(),
                    status.message.unwrap_or_default(),
                ));
            }
            // Under way, or done and the cache does not show the VM gone yet.
            Some(_) => moving.push(key(vm)),
            None => waiting.push((vm, 1)),
        }
    }
    let room = f.parallel.saturating_sub(moving.len());
    let migrate: Vec<Move> = waiting
        .iter()
        .take(room)
        .map(|(vm, attempt)| Move {
            namespace: vm.namespace().unwrap_or_default(),
            vm: vm.name_any(),
            attempt: *attempt,
        })
        .collect();
    moving.extend(migrate.iter().map(|m| format!("{}/{}", m.namespace, m.vm)));
    let vms_left = i32::try_from(f.vms.len()).unwrap_or(i32::MAX);
    Decision {
        migrate,
        status: Some(DrainStatus {
            phase: if vms_left == 0 {
                DrainPhase::Drained
            } else {
                DrainPhase::Draining
            },
            vms_left,
            moving,
            blocked,
        }),
    }
}

fn key(vm: &VirtualMachine) -> String {
    format!("{}/{}", vm.namespace().unwrap_or_default(), vm.name_any())
}

fn phase(m: &VirtualMachineMigration) -> MigrationPhase {
    m.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(MigrationPhase::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use crate::api::{Placement, VirtualMachineMigrationSpec, VirtualMachineMigrationStatus};

    fn vm(name: &str, priority: i32, pinned: Option<&str>) -> VirtualMachine {
        let mut vm: VirtualMachine = serde_json::from_value(serde_json::json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "prod"},
            "spec": {"xml": "<domain/>", "systemDisk": {"source": {"blank": {}}, "size": "1Gi"}}
        }))
        .unwrap();
        vm.spec.placement = Some(Placement {
            priority,
            pinned_node: pinned.map(Into::into),
            ..Default::default()
        });
        vm
    }

    fn migration(vm: &str, phase: MigrationPhase) -> VirtualMachineMigration {
        let mut m = VirtualMachineMigration::new(
            &format!("{vm}-drain-hv1"),
            VirtualMachineMigrationSpec {
                vm_name: vm.into(),
                target_node: None,
            },
        );
        m.metadata.namespace = Some("prod".into());
        m.metadata.creation_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        m.status = Some(VirtualMachineMigrationStatus {
            phase: Some(phase),
            end_time: Some(Time(Timestamp::UNIX_EPOCH + std::time::Duration::from_secs(95))),
            reason: Some("NoHypervisorAvailable".into()),
            message: Some("no room".into()),
            ..Default::default()
        });
        m
    }

    fn decide_with(
        vms: &[VirtualMachine],
        migrations: &[VirtualMachineMigration],
        draining: bool,
    ) -> Decision {
        let refs: Vec<&VirtualMachine> = vms.iter().collect();
        decide(&Facts {
            node: "hv1",
            draining,
            vms: &refs,
            migrations,
            parallel: 2,
            now: Timestamp::UNIX_EPOCH + std::time::Duration::from_secs(100),
        })
    }

    fn names(d: &Decision) -> Vec<&str> {
        d.migrate.iter().map(|m| m.vm.as_str()).collect()
    }

    #[test]
    fn the_most_important_vms_leave_first_a_few_at_a_time() {
        let vms = [
            vm("a", 0, None),
            vm("b", 10, None),
            vm("c", 5, None),
            vm("d", 10, None),
        ];
        let d = decide_with(&vms, &[], true);
        assert_eq!(names(&d), ["b", "d"]);
        let status = d.status.unwrap();
        assert_eq!(status.phase, DrainPhase::Draining);
        assert_eq!(status.vms_left, 4);
        assert_eq!(status.moving, ["prod/b", "prod/d"]);
        // b moves; d moved, but the cache still shows it here: it counts as moving.
        let under_way = [
            migration("b", MigrationPhase::Running),
            migration("d", MigrationPhase::Succeeded),
        ];
        assert_eq!(names(&decide_with(&vms, &under_way, true)), Vec::<&str>::new());
        // d gone: one more starts.
        let left = [vms[0].clone(), vms[1].clone(), vms[2].clone()];
        assert_eq!(names(&decide_with(&left, &under_way, true)), ["c"]);
        let d = decide_with(&vms[..1], &[], true);
        assert_eq!(names(&d), ["a"]);
    }

    #[test]
    fn pinned_vms_and_failed_moves_block_and_say_why() {
        let vms = [vm("a", 0, Some("hv1")), vm("b", 0, None), vm("c", 0, None)];
        let d = decide_with(&vms, &[migration("b", MigrationPhase::Failed)], true);
        assert_eq!(names(&d), ["c"]);
        let status = d.status.unwrap();
        assert_eq!(status.blocked.len(), 2, "{:?}", status.blocked);
        assert!(status.blocked[0].starts_with("prod/a: pinned"));
        assert!(
            status.blocked[1].contains("NoHypervisorAvailable"),
            "{}",
            status.blocked[1]
        );
    }

    #[test]
    fn a_failed_move_is_tried_again_a_few_times() {
        let vms = [vm("b", 0, None)];
        let at = |secs: u64, migrations: &[VirtualMachineMigration]| {
            let refs: Vec<&VirtualMachine> = vms.iter().collect();
            decide(&Facts {
                node: "hv1",
                draining: true,
                vms: &refs,
                migrations,
                parallel: 2,
                now: Timestamp::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            })
        };
        let failed = [migration("b", MigrationPhase::Failed)];
        assert!(at(100, &failed).migrate.is_empty(), "ended at 95 s: too early");
        assert_eq!(
            at(105, &failed).migrate,
            [Move {
                namespace: "prod".into(),
                vm: "b".into(),
                attempt: 2
            }]
        );
        let thrice = [
            migration("b", MigrationPhase::Failed),
            migration("b", MigrationPhase::Failed),
            migration("b", MigrationPhase::Failed),
        ];
        let d = at(1000, &thrice);
        assert!(d.migrate.is_empty());
        assert!(d.status.unwrap().blocked[0].contains("gave up after 3 attempts"));
    }

    #[test]
    fn an_empty_host_is_drained_and_a_host_not_draining_shows_nothing() {
        let d = decide_with(&[], &[], true);
        assert_eq!(d.status.unwrap().phase, DrainPhase::Drained);
        let d = decide_with(&[vm("a", 0, None)], &[], false);
        assert_eq!(
            d,
            Decision {
                migrate: vec![],
                status: None
            }
        );
    }
}
