//! The snapshot benchmark of seapath-operator: snapshot create, restore and purge through the
//! operator against the same operations made with direct librbd calls and with the `rbd` CLI,
//! on one test bed and one pool. Run it with `bench/run.sh --snapshots-only` (or after the
//! operator benchmark, the default); by hand: `eval "$(hack/testbed.sh env --instance NAME)"`
//! and `cargo bench --bench snapshots -- [options]` (see `--help`).
//!
//! The operator is the release controller binary in its own process (its snapshot, restore and
//! schedule controllers included) and the two node agents in this process, so that the VMs are
//! Started. `--vms` VMs with one blank 16 MiB disk each; every path works on as many images at
//! once, one operation in flight per image (the operator serialises the Ceph work on one VM's
//! disks):
//!
//! 1. create: `--snapshots` VirtualMachineSnapshots, each created once the previous one of its
//!    VM is Ready (create -> Ready, from this process's watch), against `snap_create` and
//!    `rbd snap create`;
//! 2. restore: `--restores` VirtualMachineRestores (stop the VM, roll back, start it again)
//!    against `snap_rollback` and `rbd snap rollback`; the roll-back step alone is timed from
//!    the restores' phases;
//! 3. purge: one VirtualMachineSnapshotSchedule with retention only (`all`, `includeUnowned`)
//!    deletes every snapshot, until all objects and RBD snapshots are gone, against `snap_remove`
//!    and `rbd snap rm`.
//!
//! Nothing here asserts on time: the program prints numbers and which targets they meet.

// Shared with benches/operator.rs, which uses what this program leaves unused.
#[allow(dead_code)]
#[path = "operator/agents.rs"]
mod agents;
#[allow(dead_code)]
#[path = "operator/controller.rs"]
mod controller;
#[path = "snapshots/direct.rs"]
mod direct;
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
#[path = "snapshots/tracker.rs"]
mod tracker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use kube::Client;
use kube::api::{Api, PostParams};
use seapath_operator::api::{VirtualMachineRestore, VirtualMachineSnapshot, VirtualMachineSnapshotSchedule};
use seapath_operator::ceph::Cluster;
use serde_json::json;

use direct::{Lane, Run, SnapOp};
use report::{Table, ms, percentile, ratio, spread, verdict};
use setup::{ensure_namespace, progress};
use testbed::{ApiRequests, OsdOps, Testbed};
use timeline::{Timelines, blank_vm, create_vms, now_us};
use tracker::Tracker;

const USAGE: &str = "\
cargo bench --bench snapshots -- [options]     (normally run through bench/run.sh)

  --snapshots N    snapshots created, then purged                              [1000]
  --vms N          VMs (one 16 MiB disk each) = operations in flight            [10]
  --restores N     restores (each stops and starts its VM)                     [20]
  --skip-cli       leave the rbd CLI out (it is the slowest path)
  --quick          tiny sizes, to check the harness itself (numbers meaningless)
  --workdir DIR    logs                          [$SEAPATH_TESTBED_DIR/bench-snapshots]
";

/// Kubernetes namespace of the VMs, and so the operator's RBD namespace.
const NS: &str = "benchsnap";
/// RBD namespaces of the direct paths' images.
const LIBRBD_NS: &str = "snaplibrbd";
const CLI_NS: &str = "snapcli";
const DISK_BYTES: u64 = 16 << 20;
/// The API resources whose requests count as the operator's.
const RESOURCES: &[&str] = &[
    "virtualmachinesnapshots",
    "virtualmachinerestores",
    "virtualmachinesnapshotschedules",
    "virtualmachines",
    "events",
];

#[derive(Clone, Debug)]
struct Options {
    snapshots: usize,
    vms: usize,
    restores: usize,
    skip_cli: bool,
    workdir: Option<PathBuf>,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut o = Options {
        snapshots: 1000,
        vms: 10,
        restores: 20,
        skip_cli: false,
        workdir: None,
    };
    setup::parse_args(USAGE, |arg, value| {
        match arg {
            "--snapshots" => o.snapshots = value()?.parse()?,
            "--vms" => o.vms = value()?.parse()?,
            "--restores" => o.restores = value()?.parse()?,
            "--skip-cli" => o.skip_cli = true,
            "--workdir" => o.workdir = Some(value()?.into()),
            "--quick" => {
                o.snapshots = 12;
                o.vms = 2;
                o.restores = 2;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    anyhow::ensure!(
        o.vms >= 1 && o.snapshots >= o.vms,
        "--vms must be at least 1 and --snapshots at least --vms"
    );
    Ok(o)
}

fn vm_name(j: usize) -> String {
    format!("sv{j}")
}

/// The image of VM `j`'s system disk (the operator's naming, used by the direct paths too).
fn image_name(j: usize) -> String {
    format!("system_sv{j}")
}

/// Snapshot `k` of VM `j`: the object name and the RBD snapshot name on every path.
fn snap_name(j: usize, k: usize) -> String {
    format!("sv{j}n{k}")
}

/// An object of the operator's API in the benchmark's namespace.
fn object<K: serde::de::DeserializeOwned>(
    kind: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<K> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1",
        "kind": kind,
        "metadata": { "name": name, "namespace": NS },
        "spec": spec,
    }))?)
}

/// Creates the objects of each lane one after the other, the next once the previous one is
/// `done` in `tracker`, the lanes at once; each object's latency is create -> `done` (a
/// `Failed` object fails the run).
async fn run_objects<K>(
    api: &Api<K>,
    tracker: &Tracker,
    lanes: Vec<Vec<(String, K)>>,
    done: &'static str,
) -> anyhow::Result<Run>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let start = Instant::now();
    let results = join_all(lanes.into_iter().map(|lane| async move {
        let mut latency = Vec::new();
        for (name, obj) in lane {
            let sent = now_us();
            tracker.record(&name, &["sent"], None, sent);
            api.create(&PostParams::default(), &obj)
                .await
                .map_err(|e| anyhow::anyhow!("creating {name}: {e}"))?;
            let at = tracker
                .wait(&name, done, "Failed", Duration::from_secs(300))
                .await?;
            latency.push(at - sent);
        }
        anyhow::Ok(latency)
    }))
    .await;
    let mut latency = Vec::new();
    for r in results {
        latency.extend(r?);
    }
    Ok(Run {
        latency,
        wall: start.elapsed().as_micros() as i64,
    })
}

/// One operation of a lane: on VM `vm`, the object `name` (the snapshot, or the restore), the
/// RBD snapshot `snap`.
#[derive(Clone, Debug)]
struct Op {
    vm: usize,
    name: String,
    snap: String,
}

fn names(lanes: &[Vec<Op>]) -> Vec<String> {
    lanes.iter().flatten().map(|op| op.name.clone()).collect()
}

/// The same operations for the direct paths: (image, snapshot).
fn direct_lanes(lanes: &[Vec<Op>]) -> Vec<Lane> {
    lanes
        .iter()
        .map(|lane| {
            lane.iter()
                .map(|op| (image_name(op.vm), op.snap.clone()))
                .collect()
        })
        .collect()
}

/// The objects of the lanes, `kind` with the spec `spec(op)`, by name.
fn objects<K: serde::de::DeserializeOwned>(
    lanes: &[Vec<Op>],
    kind: &str,
    spec: impl Fn(&Op) -> serde_json::Value,
) -> anyhow::Result<Vec<Vec<(String, K)>>> {
    lanes
        .iter()
        .map(|lane| {
            lane.iter()
                .map(|op| Ok((op.name.clone(), object(kind, &op.name, spec(op))?)))
                .collect()
        })
        .collect()
}

/// What one path measured.
#[derive(Clone, Debug, Default)]
struct Measured {
    run: Run,
    osd: OsdOps,
    /// API requests on the operator's resources (operator paths only).
    api: Option<ApiRequests>,
}

impl Measured {
    fn n(&self) -> usize {
        self.run.latency.len()
    }

    fn p50(&self) -> Option<i64> {
        percentile(&self.run.latency, 50.0)
    }
}

/// Wall time x operations in flight / operations: the mean time one operation took at that
/// concurrency, µs.
fn wall_per_op(m: &Measured, in_flight: usize) -> Option<i64> {
    (m.n() > 0).then(|| m.run.wall * in_flight as i64 / m.n() as i64)
}

/// One operation on every path.
struct Comparison {
    operation: &'static str,
    operator: Measured,
    /// A part of the operator's operation timed alone, compared too: (label, latencies µs).
    step: Option<(&'static str, Vec<i64>)>,
    librbd: Measured,
    cli: Option<Measured>,
    /// Operations in flight on every path (lanes with work).
    in_flight: usize,
    /// Whether the operator's latencies are one operation's own (false for the purge: the
    /// objects are all deleted at once and queue behind their VM's other deletions).
    per_op: bool,
}

struct Bench {
    opts: Options,
    tb: Testbed,
    client: Client,
    cluster: Arc<Cluster>,
    snaps: Tracker,
    restores: Tracker,
    comparisons: Vec<Comparison>,
    tables: Vec<Table>,
    targets: Vec<(String, bool)>,
    notes: Vec<String>,
}

impl Bench {
    /// Snapshot `i` goes to VM `i mod vms`: lane j holds VM j's snapshots, in order.
    fn snapshot_lanes(&self) -> Vec<Vec<Op>> {
        let mut lanes = vec![Vec::new(); self.opts.vms];
        for i in 0..self.opts.snapshots {
            let vm = i % self.opts.vms;
            let snap = snap_name(vm, i / self.opts.vms);
            lanes[vm].push(Op {
                vm,
                name: snap.clone(),
                snap,
            });
        }
        lanes
    }

    /// Restore `m` goes to VM `m mod vms`, to that VM's snapshot `m / vms` (wrapping around its
    /// snapshots).
    fn restore_lanes(&self) -> Vec<Vec<Op>> {
        let per_vm = self.opts.snapshots / self.opts.vms;
        let mut lanes = vec![Vec::new(); self.opts.vms];
        for m in 0..self.opts.restores {
            let vm = m % self.opts.vms;
            lanes[vm].push(Op {
                vm,
                name: format!("sv{vm}r{m}"),
                snap: snap_name(vm, (m / self.opts.vms) % per_vm),
            });
        }
        lanes
    }

    fn images(&self) -> Vec<String> {
        (0..self.opts.vms).map(image_name).collect()
    }

    async fn counters(&self) -> anyhow::Result<(OsdOps, ApiRequests)> {
        Ok((
            testbed::osd_ops(&self.tb).await?,
            testbed::api_requests_of(&self.client, RESOURCES).await?,
        ))
    }

    async fn since(&self, before: (OsdOps, ApiRequests), run: Run, api: bool) -> anyhow::Result<Measured> {
        let (osd, requests) = self.counters().await?;
        Ok(Measured {
            run,
            osd: osd.since(&before.0),
            api: api.then(|| requests.since(&before.1)),
        })
    }

    /// The librbd path, then the rbd CLI path (unless skipped), of `op` on `lanes`.
    async fn direct(&self, op: SnapOp, lanes: Vec<Lane>) -> anyhow::Result<(Measured, Option<Measured>)> {
        progress(format!(
            "{op:?}: librbd, {} operations",
            lanes.iter().map(Vec::len).sum::<usize>()
        ));
        let before = self.counters().await?;
        let run = {
            let (cluster, pool, lanes) = (self.cluster.clone(), self.tb.pool.clone(), lanes.clone());
            tokio::task::spawn_blocking(move || {
                let io = cluster.io_context(&pool, LIBRBD_NS)?;
                direct::librbd(&io, &lanes, op)
            })
            .await??
        };
        let librbd = self.since(before, run, false).await?;
        if self.opts.skip_cli {
            return Ok((librbd, None));
        }
        progress(format!("{op:?}: rbd CLI"));
        let before = self.counters().await?;
        let run = {
            let tb = self.tb.clone();
            tokio::task::spawn_blocking(move || direct::cli(&tb, CLI_NS, &lanes, op)).await??
        };
        Ok((librbd, Some(self.since(before, run, false).await?)))
    }

    /// The VMs, Started, and the direct paths' images.
    async fn prepare(&self, timelines: &Timelines) -> anyhow::Result<()> {
        ensure_namespace(&self.client, NS).await?;
        progress(format!("{} Started VMs with a blank 16 MiB disk", self.opts.vms));
        let vms = (0..self.opts.vms)
            .map(|j| blank_vm(NS, &vm_name(j)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let keys = create_vms(&self.client, timelines, vms, 16, None).await?;
        timelines
            .wait_all(&keys, Duration::from_secs(300), "VMs Started", |t| {
                t.started.is_some()
            })
            .await?;
        let (cluster, pool, images) = (self.cluster.clone(), self.tb.pool.clone(), self.images());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            // A second run on one test bed would find the first one's images, snapshots and
            // purge schedule: it wants a fresh test bed.
            anyhow::ensure!(
                !cluster.io_context(&pool, "")?.namespace_exists(LIBRBD_NS)?,
                "RBD namespace {LIBRBD_NS} exists: a previous run used this test bed; bring up a fresh one \
                 (hack/testbed.sh down --instance NAME; hack/testbed.sh up --instance NAME --hypervisors 2)"
            );
            for ns in [LIBRBD_NS, CLI_NS] {
                direct::make_images(&cluster, &pool, ns, &images, DISK_BYTES)?;
            }
            Ok(())
        })
        .await??;
        // Let the VMs' last status writes and the agents' follow-up reconciles pass.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }

    /// User snapshots on the images of each path (operator, librbd, CLI).
    async fn snapshot_counts(&self) -> anyhow::Result<[usize; 3]> {
        let (cluster, pool, images) = (self.cluster.clone(), self.tb.pool.clone(), self.images());
        tokio::task::spawn_blocking(move || -> anyhow::Result<[usize; 3]> {
            Ok([
                direct::count_snaps(&cluster, &pool, NS, &images)?,
                direct::count_snaps(&cluster, &pool, LIBRBD_NS, &images)?,
                direct::count_snaps(&cluster, &pool, CLI_NS, &images)?,
            ])
        })
        .await?
    }

    /// 1. create.
    async fn create(&mut self) -> anyhow::Result<()> {
        let lanes = self.snapshot_lanes();
        progress(format!(
            "create: {} VirtualMachineSnapshots, {} at a time",
            self.opts.snapshots, self.opts.vms
        ));
        let objects = objects(
            &lanes,
            "VirtualMachineSnapshot",
            |op| json!({ "vmName": vm_name(op.vm) }),
        )?;
        let before = self.counters().await?;
        let run = run_objects(
            &Api::<VirtualMachineSnapshot>::namespaced(self.client.clone(), NS),
            &self.snaps,
            objects,
            "Ready",
        )
        .await?;
        let operator = self.since(before, run, true).await?;

        let (librbd, cli) = self.direct(SnapOp::Create, direct_lanes(&lanes)).await?;
        let counts = self.snapshot_counts().await?;
        self.notes.push(format!(
            "RBD snapshots on the images after create: operator {}, librbd {}, rbd CLI {} (expected {} each{})",
            counts[0],
            counts[1],
            counts[2],
            self.opts.snapshots,
            if self.opts.skip_cli { "; CLI skipped" } else { "" }
        ));

        let names = names(&lanes);
        let mut t = Table::new(
            "3a. operator create, stages p50 (ms; from this process's watch)",
            &["stage", "p50", "p95", "max"],
        );
        for (label, from, to) in [
            ("admit: create -> finalizer added", "sent", "finalizer"),
            (
                "check + intent: finalizer -> InProgress",
                "finalizer",
                "InProgress",
            ),
            ("take: InProgress -> Ready", "InProgress", "Ready"),
            ("total: create -> Ready", "sent", "Ready"),
        ] {
            let [p50, p95, max] = spread(&self.snaps.spans(&names, from, to));
            t.row(vec![label.into(), p50, p95, max]);
        }
        t.note("check + intent: the VM read (API), the RBD snapshot looked up on every image (Ceph read), status InProgress written");
        t.note("take: snapshot taken on every image (open, exists, snap_create, snap_list), status Ready written");
        self.tables.push(t);
        self.comparisons.push(Comparison {
            operation: "create",
            operator,
            step: None,
            librbd,
            cli,
            in_flight: lanes.iter().filter(|l| !l.is_empty()).count(),
            per_op: true,
        });
        Ok(())
    }

    /// 2. restore.
    async fn restore(&mut self) -> anyhow::Result<()> {
        if self.opts.restores == 0 {
            return Ok(());
        }
        let lanes = self.restore_lanes();
        progress(format!(
            "restore: {} VirtualMachineRestores, {} VMs at a time",
            self.opts.restores,
            lanes.iter().filter(|l| !l.is_empty()).count()
        ));
        let objects = objects(
            &lanes,
            "VirtualMachineRestore",
            |op| json!({ "vmName": vm_name(op.vm), "snapshot": op.snap }),
        )?;
        let before = self.counters().await?;
        let run = run_objects(
            &Api::<VirtualMachineRestore>::namespaced(self.client.clone(), NS),
            &self.restores,
            objects,
            "Succeeded",
        )
        .await?;
        let operator = self.since(before, run, true).await?;
        let names = names(&lanes);
        let rollback = self.restores.spans(&names, "RollingBack", "Starting");

        let (librbd, cli) = self.direct(SnapOp::Rollback, direct_lanes(&lanes)).await?;

        let mut t = Table::new(
            "3b. operator restore, stages (ms; from this process's watch of the restores' phases)",
            &["stage", "p50", "p95", "max"],
        );
        for (label, from, to) in [
            ("check + disable: create -> Stopping", "sent", "Stopping"),
            (
                "stop: Stopping -> RollingBack (agent stops, undefines)",
                "Stopping",
                "RollingBack",
            ),
            ("roll back: RollingBack -> Starting", "RollingBack", "Starting"),
            (
                "start: Starting -> Succeeded (agent defines, starts)",
                "Starting",
                "Succeeded",
            ),
            ("total: create -> Succeeded", "sent", "Succeeded"),
        ] {
            let [p50, p95, max] = spread(&self.restores.spans(&names, from, to));
            t.row(vec![label.into(), p50, p95, max]);
        }
        t.note("roll back: the VM read, lock owners read, exclusive lock taken, snap_rollback, lock released, status Starting written");
        self.tables.push(t);
        self.comparisons.push(Comparison {
            operation: "restore",
            operator,
            step: Some(("  operator, roll-back step", rollback)),
            librbd,
            cli,
            in_flight: lanes.iter().filter(|l| !l.is_empty()).count(),
            per_op: true,
        });
        Ok(())
    }

    /// 3. purge.
    async fn purge(&mut self) -> anyhow::Result<()> {
        let lanes = self.snapshot_lanes();
        let names = names(&lanes);
        progress(format!(
            "purge: a retention-only VirtualMachineSnapshotSchedule deletes {} snapshots",
            names.len()
        ));
        let api: Api<VirtualMachineSnapshotSchedule> = Api::namespaced(self.client.clone(), NS);
        let schedule: VirtualMachineSnapshotSchedule = object(
            "VirtualMachineSnapshotSchedule",
            "purge",
            json!({
                "vmNames": (0..self.opts.vms).map(vm_name).collect::<Vec<_>>(),
                "retention": { "all": true, "includeUnowned": true },
            }),
        )?;
        let before = self.counters().await?;
        let sent = now_us();
        let start = Instant::now();
        api.create(&PostParams::default(), &schedule).await?;
        self.snaps
            .wait_all(&names, "gone", Duration::from_secs(1800))
            .await?;
        let wall = start.elapsed().as_micros() as i64;
        let run = Run {
            latency: self.snaps.spans(&names, "deleting", "gone"),
            wall,
        };
        let operator = self.since(before, run, true).await?;
        let marked = self.snaps.last(&names, "deleting").map(|at| at - sent);
        let first_marked = names
            .iter()
            .filter_map(|n| self.snaps.at(n, "deleting"))
            .min()
            .map(|at| at - sent);
        let left = self.snapshot_counts().await?[0];

        let (librbd, cli) = self.direct(SnapOp::Remove, direct_lanes(&lanes)).await?;
        let counts = self.snapshot_counts().await?;
        self.notes.push(format!(
            "purge: the schedule marked the first snapshot deleted {} ms and the last {} ms after it was created \
             (its DELETE requests, one at a time); RBD snapshots left on the operator's images when the last object went: {left}; \
             after every purge: operator {}, librbd {}, rbd CLI {}",
            ms(first_marked),
            ms(marked),
            counts[0],
            counts[1],
            counts[2],
        ));
        self.comparisons.push(Comparison {
            operation: "purge",
            operator,
            step: None,
            librbd,
            cli,
            in_flight: lanes.iter().filter(|l| !l.is_empty()).count(),
            per_op: false,
        });
        Ok(())
    }

    /// The comparison tables and the targets.
    fn tables(&mut self) {
        let mut t = Table::new(
            format!(
                "1. snapshot operations, {} VMs/images, one operation in flight per image (latency in ms, wall in s)",
                self.opts.vms
            ),
            &[
                "operation",
                "path",
                "n",
                "p50",
                "p95",
                "max",
                "wall",
                "ops/s",
                "wall/op",
                "OSD ops/op",
                "API writes/op",
            ],
        );
        let row = |op: &str, path: &str, m: &Measured, lanes: usize| -> Vec<String> {
            let [p50, p95, max] = spread(&m.run.latency);
            let n = m.n().max(1) as f64;
            let secs = m.run.wall as f64 / 1e6;
            vec![
                op.to_owned(),
                path.to_owned(),
                m.n().to_string(),
                p50,
                p95,
                max,
                format!("{secs:.2}"),
                if secs > 0.0 {
                    format!("{:.1}", m.n() as f64 / secs)
                } else {
                    "-".into()
                },
                ms(wall_per_op(m, lanes)),
                format!("{:.1}", m.osd.ops as f64 / n),
                m.api.map_or("".into(), |a| format!("{:.1}", a.writes / n)),
            ]
        };
        for c in &self.comparisons {
            t.row(row(c.operation, "operator", &c.operator, c.in_flight));
            if let Some((label, step)) = &c.step {
                let [p50, p95, max] = spread(step);
                t.row(vec![
                    "".into(),
                    label.trim().into(),
                    step.len().to_string(),
                    p50,
                    p95,
                    max,
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                ]);
            }
            t.row(row("", "librbd", &c.librbd, c.in_flight));
            if let Some(cli) = &c.cli {
                t.row(row("", "rbd CLI", cli, c.in_flight));
            }
        }
        t.note("create: object created -> Ready seen; restore: created -> Succeeded (the VM is stopped and started again); purge: deletion requested -> object gone (its RBD snapshot removed)");
        t.note("librbd: open + snap_create / snap_rollback / snap_remove per operation, in this process; rbd CLI: one `rbd snap create|rollback|rm` process per operation");
        t.note("wall: first request -> last operation done; for the operator's purge from the schedule's creation; wall/op: wall x operations in flight / n");
        t.note("the operator's purge latencies are queueing (every object is deleted at once, each waits for its VM's other deletions): its wall time is what compares");
        t.note("OSD ops: all client ops the OSD served during the run (the agents' reads included for the operator); API writes on snapshots, restores, schedules, VMs and events");
        for n in &self.notes {
            t.note(n.clone());
        }
        self.tables.insert(0, t);

        let mut v = Table::new(
            "2. targets: operator within 1.5x of librbd, faster than the rbd CLI",
            &[
                "operation",
                "operator/librbd p50",
                "wall",
                "within 1.5x (p50, wall)",
                "operator/CLI p50",
                "wall",
                "faster than CLI (p50, wall)",
            ],
        );
        let x = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}x"));
        let wall = |m: &Measured| Some(m.run.wall);
        for c in &self.comparisons {
            // The purge's latencies are queueing: only its wall time compares.
            let op_p50 = if c.per_op { c.operator.p50() } else { None };
            let mut cases = vec![(c.operation.to_owned(), op_p50, Some(c.operator.run.wall))];
            if let Some((label, step)) = &c.step {
                cases.push((
                    format!("{} ({})", c.operation, label.trim()),
                    percentile(step, 50.0),
                    None,
                ));
            }
            for (label, op_p50, op_wall) in cases {
                let lib = (ratio(op_p50, c.librbd.p50()), ratio(op_wall, wall(&c.librbd)));
                let cli = c
                    .cli
                    .as_ref()
                    .map(|cli| (ratio(op_p50, cli.p50()), ratio(op_wall, wall(cli))));
                let within = |r: Option<f64>| r.map(|r| r <= 1.5);
                let faster = |r: Option<f64>| r.map(|r| r < 1.0);
                let both = |a: Option<bool>, b: Option<bool>| {
                    [a, b]
                        .iter()
                        .map(|m| m.map_or("-", verdict))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                v.row(vec![
                    label.clone(),
                    x(lib.0),
                    x(lib.1),
                    both(within(lib.0), within(lib.1)),
                    x(cli.and_then(|c| c.0)),
                    x(cli.and_then(|c| c.1)),
                    cli.map_or("-".into(), |c| both(faster(c.0), faster(c.1))),
                ]);
                if let Some(met) = within(lib.0) {
                    self.targets
                        .push((format!("{label}: operator p50 within 1.5x of librbd"), met));
                }
                if let Some(met) = within(lib.1) {
                    self.targets
                        .push((format!("{label}: operator wall time within 1.5x of librbd"), met));
                }
                if let Some(met) = cli.and_then(|c| faster(c.0)) {
                    self.targets
                        .push((format!("{label}: operator p50 faster than the rbd CLI"), met));
                }
                if let Some(met) = cli.and_then(|c| faster(c.1)) {
                    self.targets.push((
                        format!("{label}: operator wall time faster than the rbd CLI"),
                        met,
                    ));
                }
            }
        }
        v.note("purge: no p50 verdict, its operator latencies include the queue (see table 1); the wall-time ratio is also the ratio of wall/op");
        v.note("the restore compares the whole restore (stop, roll back, start) and its roll-back step alone with a bare roll-back");
        self.tables.insert(1, v);
    }
}

async fn run(opts: Options) -> anyhow::Result<()> {
    let tb = Testbed::from_env()?;
    let workdir = opts
        .workdir
        .clone()
        .unwrap_or_else(|| tb.dir.join("bench-snapshots"));
    std::fs::create_dir_all(workdir.join("import"))?;
    setup::init_tracing(&workdir, None)?;
    let started = Instant::now();
    let client = Client::try_default().await?;
    progress(format!(
        "test bed {}, work directory {}",
        tb.dir.display(),
        workdir.display()
    ));
    let timelines = Timelines::default();
    let operator = setup::start_operator(&client, &tb, &timelines, &workdir, &workdir.join("import")).await?;
    let snaps = Tracker::default();
    let restores = Tracker::default();
    let _snap_watch = tracker::start_watch(
        Api::<VirtualMachineSnapshot>::namespaced(client.clone(), NS),
        snaps.clone(),
        tracker::snapshot_stages,
    )
    .await?;
    let _restore_watch = tracker::start_watch(
        Api::<VirtualMachineRestore>::namespaced(client.clone(), NS),
        restores.clone(),
        tracker::restore_stages,
    )
    .await?;
    let cluster = {
        let tb = tb.clone();
        Arc::new(tokio::task::spawn_blocking(move || tb.ceph_cluster()).await??)
    };
    let mut bench = Bench {
        opts: opts.clone(),
        tb: tb.clone(),
        client,
        cluster,
        snaps,
        restores,
        comparisons: Vec::new(),
        tables: Vec::new(),
        targets: Vec::new(),
        notes: Vec::new(),
    };
    let result = async {
        bench.prepare(&timelines).await?;
        bench.create().await?;
        bench.restore().await?;
        bench.purge().await?;
        anyhow::Ok(())
    }
    .await;
    let log = operator.controller.log.clone();
    operator.controller.stop().await?;
    operator.agents.stop().await;
    result?;
    let lines = controller::read_log(&log)?;
    let problems = controller::problems(&lines);
    if problems > 0 {
        bench.notes.push(format!(
            "the controller logged {}: see {}",
            controller::problem_summary(&lines),
            log.display()
        ));
    }
    bench.tables();

    let out = report::render(
        &testbed::setup_note(
            &tb,
            &format!(
                "controller: release binary in its own process (snapshot controllers in it); agents: in the harness process; \
                 {} snapshots over {} VMs, {} restores",
                opts.snapshots, opts.vms, opts.restores
            ),
        ),
        &bench.tables,
        &bench.targets,
        started.elapsed(),
        &workdir,
    );
    print!("{out}");
    std::fs::write(workdir.join("report.txt"), &out)?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    setup::main_with(parse_options, run)
}
