//! The moves the benchmark times, through the API as a user makes them: one
//! VirtualMachineMigration and its end, and a drain (`Hypervisor.spec.drain`) until the host is
//! Drained with every VM running on the other host.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use seapath_operator::api::{
    DRAIN_LABEL, DrainPhase, Hypervisor, MigrationMode, MigrationPhase, Phase, VirtualMachine,
    VirtualMachineMigration, VirtualMachineMigrationStatus,
};
use serde_json::json;

use crate::bed::NS;
use crate::poll::poll_until;

/// Longest wait for one live migration (the VM's default timeout is 120 s) or a boot.
const ONE_MOVE: Duration = Duration::from_secs(300);
/// Longest wait for many guests to boot or a whole drain, on two CPUs under TCG.
const MANY_MOVES: Duration = Duration::from_secs(900);

/// What one migration showed: the harness's clock and the status the controller wrote.
#[derive(Clone, Debug)]
pub struct MoveSample {
    /// Created -> `Succeeded` (or `Failed`) seen, µs.
    pub total_us: i64,
    pub status: VirtualMachineMigrationStatus,
}

/// How many VMs [`Moves::boot`] starts at once.
const BOOT_BATCH: usize = 3;

impl MoveSample {
    pub fn succeeded(&self) -> bool {
        self.status.phase == Some(MigrationPhase::Succeeded)
    }

    /// `endTime - startTime` of the status, whole seconds (`metav1.Time` has no fractions).
    pub fn status_seconds(&self) -> Option<i64> {
        let (start, end) = (self.status.start_time.as_ref()?, self.status.end_time.as_ref()?);
        Some((end.0.as_second()) - start.0.as_second())
    }
}

/// What a drain showed.
#[derive(Clone, Debug)]
pub struct DrainSample {
    /// `spec.drain: true` set -> Drained with every VM Started and Ready on the other host, µs.
    pub wall_us: i64,
    /// The drain's migrations, by their mode.
    pub modes: BTreeMap<String, usize>,
    /// Downtime of each live migration of the drain, ms.
    pub downtimes_ms: Vec<i64>,
    /// Migrations of the drain that failed (a retried move counts once per attempt), each as
    /// `name: reason: message`.
    pub failures: Vec<String>,
}

fn started_on(vm: &VirtualMachine, node: &str) -> bool {
    let Some(status) = vm.status.as_ref() else {
        return false;
    };
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    ready && status.phase == Some(Phase::Started) && status.node.as_deref() == Some(node)
}

fn drained(hv: &Hypervisor) -> bool {
    hv.status
        .as_ref()
        .and_then(|s| s.drain.as_ref())
        .is_some_and(|d| d.phase == DrainPhase::Drained)
}

pub struct Moves {
    vms: Api<VirtualMachine>,
    migrations: Api<VirtualMachineMigration>,
    hypervisors: Api<Hypervisor>,
}

impl Moves {
    pub fn new(client: &Client) -> Moves {
        Moves {
            vms: Api::namespaced(client.clone(), NS),
            migrations: Api::namespaced(client.clone(), NS),
            hypervisors: Api::all(client.clone()),
        }
    }

    /// Creates the VMs at once and waits until each is Started and Ready on `node`.
    pub async fn boot(&self, vms: &[VirtualMachine], node: &str) -> anyhow::Result<()> {
        // A few at a time: guests booting at once under TCG starve the agents' heartbeats on a
        // small machine, and the controller would take the hosts for lost.
        for batch in vms.chunks(BOOT_BATCH) {
            for vm in batch {
                self.vms.create(&PostParams::default(), vm).await?;
            }
            let names: Vec<String> = batch.iter().map(|vm| vm.name_any()).collect();
            let timeout = if names.len() > 1 { MANY_MOVES } else { ONE_MOVE };
            self.all_started_on(&names, node, timeout).await?;
        }
        Ok(())
    }

    async fn all_started_on(&self, names: &[String], node: &str, timeout: Duration) -> anyhow::Result<()> {
        let what = format!("{} VM(s) Started and Ready on {node}", names.len());
        poll_until(timeout, &what, async || {
            let list = self.vms.list(&ListParams::default()).await.ok()?;
            let running = list
                .items
                .iter()
                .filter(|vm| names.contains(&vm.name_any()) && started_on(vm, node))
                .count();
            (running == names.len()).then_some(())
        })
        .await
    }

    /// Where VM `name` runs now (`status.node`).
    pub async fn node_of(&self, name: &str) -> anyhow::Result<String> {
        let vm = self.vms.get(name).await?;
        vm.status
            .and_then(|s| s.node)
            .ok_or_else(|| anyhow::anyhow!("VM {name} is not placed"))
    }

    /// Migrates VM `vm` to `target` with a VirtualMachineMigration named `name`, and waits for
    /// its end; after a success, also until the VM is Started and Ready there (not timed).
    pub async fn migrate(&self, name: &str, vm: &str, target: &str) -> anyhow::Result<MoveSample> {
        let object: VirtualMachineMigration = serde_json::from_value(json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineMigration",
            "metadata": {"name": name}, "spec": {"vmName": vm, "targetNode": target}
        }))?;
        let created = Instant::now();
        self.migrations.create(&PostParams::default(), &object).await?;
        let status = poll_until(ONE_MOVE, &format!("migration {name} ended"), async || {
            let m = self.migrations.get(name).await.ok()?;
            m.status.filter(|s| s.phase.is_some_and(MigrationPhase::is_final))
        })
        .await?;
        let sample = MoveSample {
            total_us: created.elapsed().as_micros() as i64,
            status,
        };
        if sample.succeeded() {
            self.all_started_on(&[vm.to_owned()], target, ONE_MOVE).await?;
        }
        Ok(sample)
    }

    async fn set_hypervisor_spec(&self, host: &str, spec: serde_json::Value) -> anyhow::Result<()> {
        let patch = Patch::Merge(json!({ "spec": spec }));
        self.hypervisors
            .patch(host, &PatchParams::default(), &patch)
            .await?;
        Ok(())
    }

    /// Drains `host` (cordon and drain, as `kubectl seapath drain` does) and waits until it is
    /// Drained with all `vms` Started and Ready on `other`; then uncordons it and deletes the
    /// drain's migrations, so that the next drain counts only its own.
    pub async fn drain(&self, host: &str, other: &str, vms: &[String]) -> anyhow::Result<DrainSample> {
        let started = Instant::now();
        self.set_hypervisor_spec(host, json!({"unschedulable": true, "drain": true}))
            .await?;
        poll_until(MANY_MOVES, &format!("{host} Drained"), async || {
            let hv = self.hypervisors.get(host).await.ok()?;
            drained(&hv).then_some(())
        })
        .await?;
        self.all_started_on(vms, other, MANY_MOVES).await?;
        let wall_us = started.elapsed().as_micros() as i64;
        let sample = self.drain_account(host, wall_us).await?;
        self.set_hypervisor_spec(host, json!({"unschedulable": false, "drain": false}))
            .await?;
        poll_until(ONE_MOVE, &format!("{host} uncordoned"), async || {
            let hv = self.hypervisors.get(host).await.ok()?;
            hv.status.is_some_and(|s| s.drain.is_none()).then_some(())
        })
        .await?;
        self.delete_drain_migrations(host).await?;
        Ok(sample)
    }

    fn drain_selector(host: &str) -> ListParams {
        ListParams::default().labels(&format!("{DRAIN_LABEL}={host}"))
    }

    async fn drain_account(&self, host: &str, wall_us: i64) -> anyhow::Result<DrainSample> {
        let list = self.migrations.list(&Self::drain_selector(host)).await?;
        let mut sample = DrainSample {
            wall_us,
            modes: BTreeMap::new(),
            downtimes_ms: Vec::new(),
            failures: Vec::new(),
        };
        for m in list.items {
            let name = m.name_any();
            let Some(status) = m.status else { continue };
            let mode = match status.mode {
                Some(MigrationMode::Live) => "live",
                Some(MigrationMode::StopAndStart) => "stop and start",
                None => "unknown",
            };
            *sample.modes.entry(mode.to_owned()).or_default() += 1;
            sample.downtimes_ms.extend(status.downtime_milliseconds);
            if status.phase == Some(MigrationPhase::Failed) {
                sample.failures.push(format!(
                    "{name}: {}: {}",
                    status.reason.unwrap_or_default(),
                    status.message.unwrap_or_default()
                ));
            }
        }
        Ok(sample)
    }

    async fn delete_drain_migrations(&self, host: &str) -> anyhow::Result<()> {
        let list = self.migrations.list(&Self::drain_selector(host)).await?;
        for m in list.items {
            self.migrations
                .delete(&m.name_any(), &DeleteParams::default())
                .await?;
        }
        Ok(())
    }

    /// Sets `spec.migration.live` of the VMs: false makes a migration or a drain stop and start
    /// them.
    pub async fn set_live(&self, vms: &[String], live: bool) -> anyhow::Result<()> {
        let patch = Patch::Merge(json!({"spec": {"migration": {"live": live}}}));
        for name in vms {
            self.vms.patch(name, &PatchParams::default(), &patch).await?;
        }
        Ok(())
    }

    /// Deletes the VMs and waits until they are gone (their domains destroyed, disks removed).
    pub async fn delete_vms(&self, names: &[String]) -> anyhow::Result<()> {
        for name in names {
            self.vms.delete(name, &DeleteParams::default()).await?;
        }
        poll_until(MANY_MOVES, "the VMs deleted", async || {
            let list = self.vms.list(&ListParams::default()).await.ok()?;
            (!list.items.iter().any(|vm| names.contains(&vm.name_any()))).then_some(())
        })
        .await
    }

    /// Deletes every migration of the namespace (the next run starts from none).
    pub async fn delete_migrations(&self) -> anyhow::Result<()> {
        for m in self.migrations.list(&ListParams::default()).await? {
            self.migrations
                .delete(&m.name_any(), &DeleteParams::default())
                .await?;
        }
        Ok(())
    }
}
