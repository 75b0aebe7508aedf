//! The live-migration benchmark of seapath-operator, on the test bed's two real QEMU hosts.
//! Run it with `bench/run.sh --migration-only` (or after the other phases, the default), which
//! brings up its own test bed (`hack/testbed.sh up --with-qemu --hypervisors 2`); by hand:
//! `eval "$(hack/testbed.sh env --instance NAME)"` and `cargo bench --bench migration --
//! [options]` (see `--help`).
//!
//! The controller is the release binary in its own process; the agents of the two QEMU hosts
//! run in this process with the default timings (as tests/failover.rs runs them). The guests
//! are the boot-test guest of hack/lib/guest/init, booted under QEMU (TCG on a machine without
//! KVM) from the test bed's kernel and initramfs, their system disk in RBD. Measured:
//!
//! 1. live migration of a guest that only counts on its disk, `--migrations` times back and
//!    forth between the hosts: created -> Succeeded (the harness's clock), and libvirt's
//!    downtime and bytes sent (the migration's status); the guest's boot id is checked after
//!    (the same boot: it was migrated, not restarted);
//! 2. the same with a guest that rewrites `--dirty-mib` MiB of its RAM continuously;
//! 3. a drain of a host running `--drain-vms` small idle guests: `spec.drain: true` -> Drained
//!    with every VM Started and Ready on the other host, by live migration, then the same VMs
//!    with `spec.migration.live: false` drained back (stop and start).
//!
//! Nothing here asserts on time: the program prints numbers and which targets they meet.

// Shared with benches/operator.rs, which uses what this program leaves unused.
#[allow(dead_code)]
#[path = "operator/agents.rs"]
mod agents;
#[allow(dead_code)]
#[path = "operator/controller.rs"]
mod controller;
#[allow(dead_code)]
#[path = "operator/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "operator/setup.rs"]
mod setup;
#[allow(dead_code)]
#[path = "operator/testbed.rs"]
mod testbed;
#[allow(dead_code)]
#[path = "operator/timeline.rs"]
mod timeline;

#[path = "migration/bed.rs"]
mod bed;
#[path = "migration/guest.rs"]
mod guest;
#[path = "migration/moves.rs"]
mod moves;
#[path = "migration/poll.rs"]
mod poll;
#[path = "migration/tables.rs"]
mod tables;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::Api;
use seapath_operator::api::Hypervisor;

use guest::{Disks, Mark, Workload, guest_vm};
use moves::{DrainSample, MoveSample, Moves};
use poll::poll_until;
use setup::progress;
use tables::{Targets, drain_table, migration_table};
use testbed::Testbed;

const USAGE: &str = "\
cargo bench --bench migration -- [options]     (normally run through bench/run.sh)

  --migrations N     live migrations per guest, back and forth                  [6]
  --guest-mib N      memory of the migrated guests                              [256]
  --dirty-mib N      MiB the dirtying guest rewrites continuously               [64]
  --drain-vms N      VMs on the drained host                                    [20]
  --drain-vm-mib N   memory of each of them                                     [128]
  --skip-drain       skip the drain measurement
  --quick            fewer migrations and drained VMs, to check the harness itself
  --workdir DIR      logs                           [$SEAPATH_TESTBED_DIR/bench-migration]
";

#[derive(Clone, Debug)]
pub struct Options {
    pub migrations: usize,
    pub guest_mib: u32,
    pub dirty_mib: u32,
    pub drain_vms: usize,
    pub drain_vm_mib: u32,
    pub skip_drain: bool,
    workdir: Option<PathBuf>,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut o = Options {
        migrations: 6,
        guest_mib: 256,
        dirty_mib: 64,
        drain_vms: 20,
        drain_vm_mib: 128,
        skip_drain: false,
        workdir: None,
    };
    setup::parse_args(USAGE, |arg, value| {
        match arg {
            "--migrations" => o.migrations = value()?.parse()?,
            "--guest-mib" => o.guest_mib = value()?.parse()?,
            "--dirty-mib" => o.dirty_mib = value()?.parse()?,
            "--drain-vms" => o.drain_vms = value()?.parse()?,
            "--drain-vm-mib" => o.drain_vm_mib = value()?.parse()?,
            "--skip-drain" => o.skip_drain = true,
            "--workdir" => o.workdir = Some(value()?.into()),
            "--quick" => {
                o.migrations = 2;
                o.drain_vms = 6;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    anyhow::ensure!(
        o.migrations >= 1 && o.drain_vms >= 1 && o.dirty_mib >= 1,
        "--migrations, --drain-vms and --dirty-mib must be at least 1"
    );
    // The guest keeps the random source and the buffer in a tmpfs, besides its kernel.
    anyhow::ensure!(
        2 * o.dirty_mib + 96 <= o.guest_mib,
        "--dirty-mib {} needs a guest of at least {} MiB (--guest-mib)",
        o.dirty_mib,
        2 * o.dirty_mib + 96
    );
    Ok(o)
}

/// One migrated guest: its VM, what it does, and its migrations.
pub struct GuestRun {
    pub label: String,
    pub samples: Vec<MoveSample>,
    /// The same boot before and after every migration (the guest moved, it did not restart).
    pub same_boot: bool,
    /// MiB/s the guest rewrote, measured before the migrations (dirty mode only).
    pub dirty_rate: Option<f64>,
}

struct Bench {
    opts: Options,
    moves: Moves,
    disks: Disks,
    /// The two QEMU hosts.
    nodes: [String; 2],
    targets: Targets,
}

impl Bench {
    fn other(&self, node: &str) -> String {
        let [a, b] = &self.nodes;
        if node == a { b.clone() } else { a.clone() }
    }

    /// Waits until the guest of `vm` wrote a mark through `read` at least `past` times.
    async fn mark_past(
        &self,
        vm: &str,
        what: &str,
        past: u64,
        read: fn(&Disks, &str) -> Option<Mark>,
    ) -> anyhow::Result<Mark> {
        poll_until(Duration::from_secs(180), &format!("{vm}: {what}"), async || {
            read(&self.disks, vm).filter(|m| m.count >= past)
        })
        .await
    }

    /// The guest's rewrite rate over `window`, MiB/s, from its passes over the buffer.
    async fn dirty_rate(&self, vm: &str, mib: u32, window: Duration) -> anyhow::Result<f64> {
        let first = self
            .mark_past(vm, "dirtying its memory", 2, Disks::dirty_passes)
            .await?;
        tokio::time::sleep(window).await;
        let last = self
            .mark_past(vm, "dirtying its memory", first.count, Disks::dirty_passes)
            .await?;
        let seconds = last.read_at.duration_since(first.read_at).as_secs_f64();
        Ok((last.count - first.count) as f64 * f64::from(mib) / seconds.max(0.001))
    }

    /// Boots one guest on the first host, migrates it back and forth, deletes it.
    async fn migrate_guest(&mut self, vm: &str, label: &str, workload: Workload) -> anyhow::Result<GuestRun> {
        progress(format!(
            "{label}: booting {vm} ({} MiB) on {}",
            self.opts.guest_mib, self.nodes[0]
        ));
        let object = guest_vm(vm, &self.nodes[0], self.opts.guest_mib, workload)?;
        self.moves.boot(&[object], &self.nodes[0]).await?;
        let before = self
            .mark_past(vm, "counting on its disk", 3, Disks::counter)
            .await?;
        let dirty_rate = match workload {
            Workload::Dirtying { mib } => Some(self.dirty_rate(vm, mib, Duration::from_secs(5)).await?),
            _ => None,
        };
        let mut samples = Vec::new();
        for i in 0..self.opts.migrations {
            let target = self.other(&self.moves.node_of(vm).await?);
            let sample = self.moves.migrate(&format!("{vm}-{i}"), vm, &target).await?;
            progress(format!(
                "{label}: migration {} of {} to {target}: {:?} in {:.2} s, downtime {:?} ms",
                i + 1,
                self.opts.migrations,
                sample.status.phase,
                sample.total_us as f64 / 1e6,
                sample.status.downtime_milliseconds
            ));
            samples.push(sample);
        }
        let after = self
            .mark_past(
                vm,
                "counting after the migrations",
                before.count + 3,
                Disks::counter,
            )
            .await?;
        self.moves.delete_vms(&[vm.to_owned()]).await?;
        Ok(GuestRun {
            label: label.to_owned(),
            samples,
            same_boot: after.boot == before.boot,
            dirty_rate,
        })
    }

    /// Boots the drained VMs on the first host, drains it live, then drains the second host by
    /// stop and start; deletes them.
    async fn drains(&mut self) -> anyhow::Result<(DrainSample, DrainSample)> {
        let names: Vec<String> = (0..self.opts.drain_vms).map(|i| format!("drain{i:02}")).collect();
        let [hv1, hv2] = self.nodes.clone();
        progress(format!(
            "drain: booting {} VMs ({} MiB each) on {hv1}",
            names.len(),
            self.opts.drain_vm_mib
        ));
        let objects = names
            .iter()
            .map(|n| guest_vm(n, &hv1, self.opts.drain_vm_mib, Workload::Idle))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.moves.boot(&objects, &hv1).await?;
        progress(format!("drain: draining {hv1} (live migrations)"));
        let live = self.moves.drain(&hv1, &hv2, &names).await?;
        progress(format!(
            "drain: live in {:.1} s; draining {hv2} back by stop and start",
            live.wall_us as f64 / 1e6
        ));
        self.moves.set_live(&names, false).await?;
        let stop_start = self.moves.drain(&hv2, &hv1, &names).await?;
        progress(format!(
            "drain: stop and start in {:.1} s",
            stop_start.wall_us as f64 / 1e6
        ));
        self.moves.delete_vms(&names).await?;
        Ok((live, stop_start))
    }
}

/// What the QEMU hosts report: the hypervisor (e.g. "QEMU 7.2.0") of the first.
async fn hypervisor_version(client: &Client, node: &str) -> String {
    let api: Api<Hypervisor> = Api::all(client.clone());
    api.get(node)
        .await
        .ok()
        .and_then(|hv| hv.status?.hypervisor)
        .unwrap_or_else(|| "QEMU".into())
}

fn setup_line(hypervisor: &str, memory_mib: &[i64], nodes: &[String; 2]) -> String {
    format!(
        "setup: {}; load average at start {}\n       \
         kube-apiserver + etcd, Ceph 16 (1 mon, 1 memstore OSD); two private libvirtd hosts {} and {} \
         ({hypervisor}, TCG unless /dev/kvm; status.memoryMiB {} and {})\n       \
         controller: release binary in its own process; agents of the QEMU hosts in the harness process, default timings\n",
        testbed::machine(),
        testbed::loadavg(),
        nodes[0],
        nodes[1],
        memory_mib.first().copied().unwrap_or_default(),
        memory_mib.get(1).copied().unwrap_or_default(),
    )
}

async fn measure(bench: &mut Bench) -> anyhow::Result<Vec<report::Table>> {
    let idle = bench
        .migrate_guest("idle", "counting guest", Workload::Counting)
        .await?;
    let dirty_mib = bench.opts.dirty_mib;
    let dirty = bench
        .migrate_guest(
            "dirty",
            &format!("dirtying {dirty_mib} MiB"),
            Workload::Dirtying { mib: dirty_mib },
        )
        .await?;
    let mut out = vec![migration_table(&bench.opts, &[idle, dirty], &mut bench.targets)];
    if bench.opts.skip_drain {
        progress("--skip-drain: the drain measurement skipped");
    } else {
        let (live, stop_start) = bench.drains().await?;
        out.push(drain_table(&bench.opts, &live, &stop_start, &mut bench.targets));
    }
    bench.moves.delete_migrations().await?;
    Ok(out)
}

async fn run(opts: Options) -> anyhow::Result<()> {
    let tb = Testbed::from_env()?;
    let workdir = opts
        .workdir
        .clone()
        .unwrap_or_else(|| tb.dir.join("bench-migration"));
    std::fs::create_dir_all(&workdir)?;
    setup::init_tracing(&workdir, None)?;
    let started = Instant::now();
    let client = Client::try_default().await?;
    let qemu = bed::qemu_nodes()?;
    let nodes = [qemu[0].0.clone(), qemu[1].0.clone()];
    progress(format!(
        "test bed {}, QEMU hosts {} and {}, work directory {}",
        tb.dir.display(),
        nodes[0],
        nodes[1],
        workdir.display()
    ));
    setup::ensure_namespace(&client, bed::NS).await?;
    let operator = bed::start_operator(&client, &tb, &qemu, &workdir).await?;
    let setup = setup_line(
        &hypervisor_version(&client, &nodes[0]).await,
        &operator.memory_mib,
        &nodes,
    );
    let mut bench = Bench {
        moves: Moves::new(&client),
        disks: Disks::open(&tb).await?,
        opts,
        nodes,
        targets: Targets::default(),
    };
    let result = measure(&mut bench).await;
    operator.controller.stop().await?;
    operator.agents.stop().await;
    let tables = result?;
    let out = report::render(&setup, &tables, &bench.targets.0, started.elapsed(), &workdir);
    print!("{out}");
    std::fs::write(workdir.join("report.txt"), &out)?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    bed::controller_environment();
    setup::main_with(parse_options, run)
}
