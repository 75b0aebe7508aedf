//! The benchmark harness of seapath-operator. Run it with `bench/run.sh`, which brings up its
//! own test bed (`hack/testbed.sh up --instance bench`), runs this program against it and takes
//! it down again; by hand: `eval "$(hack/testbed.sh env --instance NAME)"` and
//! `cargo bench --bench operator -- [options]` (see `--help`).
//!
//! Measured (the controller is the release binary in its own process, the two node agents run
//! in this process on the libvirt test driver's simulated hypervisors hv1/hv2):
//!
//! 1. apply -> Started of VMs with a blank 16 MiB disk, one at a time and 100 at once, split
//!    into stages, against a floor: the same librbd and libvirt calls made directly here;
//! 2. a no-op resync of 500 Started VMs (a controller restart): time until each VM was
//!    reconciled once, and the Ceph, libvirt and API writes it made; then the idle controller's
//!    CPU use and RSS;
//! 3. a 1 GiB qcow2 import (operator vs `qemu-img convert` straight into the pool) and layered
//!    clones of 1 GiB and 20 GiB golden images;
//! 4. failover, the last measurement of each phase: a hypervisor's agent is killed (its guests
//!    stay) and its VMs (1, then 50) start on another hypervisor, with the default timings;
//!    split into detection, fencing and restart, the restart against a plain start. It has two
//!    simulated hypervisors and agents of its own (`benches/operator/failover.rs`).
//!
//! Nothing here asserts on time: the program prints numbers and which targets they meet.

#[path = "operator/agents.rs"]
mod agents;
#[path = "operator/controller.rs"]
mod controller;
#[path = "operator/failover.rs"]
mod failover;
#[path = "operator/floor.rs"]
mod floor;
#[path = "operator/report.rs"]
mod report;
#[path = "operator/setup.rs"]
mod setup;
#[path = "operator/storage.rs"]
mod storage;
#[path = "operator/testbed.rs"]
mod testbed;
#[path = "operator/timeline.rs"]
mod timeline;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use seapath_operator::api::VirtualMachine;
use serde_json::json;

use agents::Agents;
use controller::ControllerProcess;
use floor::Floor;
use report::{Table, ms, percentile, ratio, spread, verdict};
use setup::{ensure_namespace, progress};
use testbed::Testbed;
use timeline::{Micros, Timeline, Timelines, blank_vm, create_vms, key, now_us, vm_object};

const USAGE: &str = "\
cargo bench --bench operator -- [options]     (normally run through bench/run.sh)

  --phase main|slow-mon   main: all measurements; slow-mon: only the 1-VM latency and its floor,
                          and the failover (for a test bed started with
                          SEAPATH_CEPH_SLOW_MON=1)                                [main]
  --samples N             sequential 1-VM samples (after one warm-up)             [10]
  --burst N               VMs applied at once                                     [100]
  --resync-vms N          VMs in the cluster for the resync                       [500]
  --idle-seconds S        window of the idle CPU measurement                      [30]
  --import-mib N          virtual size of the imported qcow2                      [1024]
  --rounds N              rounds of the import comparison                         [2]
  --clones N              clones per golden image size                            [3]
  --skip-storage          skip measurement 3 (import, clones)
  --failover-vms N        VMs of the second failover case (the first has 1 VM;
                          1: only that one)                                       [50]
  --skip-failover         skip measurement 4 (failover)
  --failover-only         only measurement 4 (failover), in either phase
  --quick                 tiny sizes, to check the harness itself (numbers meaningless)
  --workdir DIR           logs and the qcow2 source       [$SEAPATH_TESTBED_DIR/bench]
";

#[derive(Clone, Debug)]
struct Options {
    phase: String,
    samples: usize,
    burst: usize,
    resync_vms: usize,
    idle_seconds: u64,
    import_mib: u64,
    rounds: usize,
    clones: usize,
    skip_storage: bool,
    failover_vms: usize,
    skip_failover: bool,
    failover_only: bool,
    workdir: Option<PathBuf>,
}

fn parse_options() -> anyhow::Result<Options> {
    let mut o = Options {
        phase: "main".into(),
        samples: 10,
        burst: 100,
        resync_vms: 500,
        idle_seconds: 30,
        import_mib: 1024,
        rounds: 2,
        clones: 3,
        skip_storage: false,
        failover_vms: 50,
        skip_failover: false,
        failover_only: false,
        workdir: None,
    };
    setup::parse_args(USAGE, |arg, value| {
        match arg {
            "--phase" => o.phase = value()?,
            "--samples" => o.samples = value()?.parse()?,
            "--burst" => o.burst = value()?.parse()?,
            "--resync-vms" => o.resync_vms = value()?.parse()?,
            "--idle-seconds" => o.idle_seconds = value()?.parse()?,
            "--import-mib" => o.import_mib = value()?.parse()?,
            "--rounds" => o.rounds = value()?.parse()?,
            "--clones" => o.clones = value()?.parse()?,
            "--skip-storage" => o.skip_storage = true,
            "--failover-vms" => o.failover_vms = value()?.parse()?,
            "--skip-failover" => o.skip_failover = true,
            "--failover-only" => o.failover_only = true,
            "--workdir" => o.workdir = Some(value()?.into()),
            "--quick" => {
                o.samples = 3;
                o.burst = 10;
                o.resync_vms = 30;
                o.idle_seconds = 3;
                o.import_mib = 64;
                o.rounds = 1;
                o.clones = 1;
                o.failover_vms = 3;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    anyhow::ensure!(
        matches!(o.phase.as_str(), "main" | "slow-mon"),
        "--phase is main or slow-mon, not '{}'",
        o.phase
    );
    anyhow::ensure!(
        o.samples >= 1 && o.burst >= 1 && o.failover_vms >= 1,
        "--samples, --burst and --failover-vms must be at least 1"
    );
    anyhow::ensure!(
        !(o.skip_failover && o.failover_only),
        "--skip-failover and --failover-only leave nothing to run"
    );
    Ok(o)
}

async fn delete_and_wait(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let api: Api<VirtualMachine> = Api::namespaced(client.clone(), namespace);
    api.delete(name, &DeleteParams::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while api.get_opt(name).await?.is_some() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "VirtualMachine {namespace}/{name} still exists 120 s after its deletion"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Copies the controller's "storage done" times into the timelines.
fn merge_controller_log(controller: &ControllerProcess, timelines: &Timelines) -> anyhow::Result<usize> {
    let lines = controller::read_log(&controller.log)?;
    for (k, at) in controller::storage_done(&lines) {
        timelines.update(&k, |t| timeline::first(&mut t.storage_done, at));
    }
    Ok(controller::problems(&lines))
}

fn diff(a: Option<Micros>, b: Option<Micros>) -> Option<i64> {
    Some(a? - b?)
}

/// The stages of apply -> Started of one VM, µs.
#[derive(Default)]
struct Stages {
    total: Vec<i64>,
    admit: Vec<i64>,
    storage: Vec<i64>,
    publish: Vec<i64>,
    pickup: Vec<i64>,
    libvirt: Vec<i64>,
    report: Vec<i64>,
    /// admit + publish + report: the API stages.
    api: Vec<i64>,
}

impl Stages {
    fn of(timelines: &Timelines, keys: &[String]) -> Stages {
        let mut s = Stages::default();
        for k in keys {
            let t: Timeline = timelines.get(k);
            let push = |v: &mut Vec<i64>, d: Option<i64>| {
                if let Some(d) = d {
                    v.push(d);
                }
            };
            push(&mut s.total, diff(t.started, t.applied));
            push(&mut s.admit, diff(t.finalizer, t.applied));
            push(&mut s.storage, diff(t.storage_done, t.finalizer));
            push(&mut s.publish, diff(t.storage_ready, t.storage_done));
            push(&mut s.pickup, diff(t.agent_acting, t.storage_ready));
            push(&mut s.libvirt, diff(t.agent_started, t.agent_acting));
            push(&mut s.report, diff(t.started, t.agent_started));
            let api = [
                diff(t.finalizer, t.applied),
                diff(t.storage_ready, t.storage_done),
                diff(t.started, t.agent_started),
            ];
            if api.iter().all(Option::is_some) {
                s.api.push(api.iter().flatten().sum());
            }
        }
        s
    }

    fn p50_row(&self, label: &str) -> Vec<String> {
        let p = |v: &Vec<i64>| ms(percentile(v, 50.0));
        vec![
            label.to_owned(),
            p(&self.admit),
            p(&self.storage),
            p(&self.publish),
            p(&self.pickup),
            p(&self.libvirt),
            p(&self.report),
            p(&self.api),
            p(&self.total),
        ]
    }
}

/// Everything the run shares.
struct Bench {
    opts: Options,
    tb: Testbed,
    client: Client,
    timelines: Timelines,
    agents: Option<Agents>,
    controller: Option<ControllerProcess>,
    floor: Arc<Floor>,
    workdir: PathBuf,
    /// Targets: (what, met).
    targets: Vec<(String, bool)>,
    tables: Vec<Table>,
}

impl Bench {
    fn controller(&self) -> &ControllerProcess {
        self.controller.as_ref().expect("controller running")
    }

    async fn floor_run(&self, prefix: &str, n: usize, threads: usize) -> anyhow::Result<floor::FloorRun> {
        let floor = self.floor.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || floor.run(&prefix, n, threads)).await?
    }

    /// Measurement 1: apply -> Started, 1 VM at a time and `burst` at once, and the floor.
    async fn latency(&mut self, label: &str, with_burst: bool) -> anyhow::Result<()> {
        let ns = if self.tb.slow_mon {
            "benchlatslow"
        } else {
            "benchlat"
        };
        ensure_namespace(&self.client, ns).await?;
        let samples = self.opts.samples;
        progress(format!("1-VM latency ({label}): warm-up"));
        let warm = create_vms(
            &self.client,
            &self.timelines,
            vec![blank_vm(ns, "warm")?],
            1,
            None,
        )
        .await?;
        self.timelines
            .wait_all(&warm, Duration::from_secs(120), "warm-up VM Started", |t| {
                t.started.is_some()
            })
            .await?;
        let tag = if self.tb.slow_mon { "s" } else { "" };
        self.floor_run(&format!("fw{tag}"), 1, 1).await?;
        // Operator and floor samples alternate, so that both see the same machine load (other
        // work on the machine varies over a run); the OSD counts the ops of each sample.
        progress(format!(
            "1-VM samples: {samples} operator VMs and {samples} floor VMs, alternating"
        ));
        let api_before = testbed::api_requests(&self.client).await?;
        let mut osd = testbed::OsdOps::default();
        let mut floor_osd = testbed::OsdOps::default();
        let mut floor1 = floor::FloorRun::default();
        let mut keys = Vec::new();
        for i in 0..samples {
            let before = testbed::osd_ops(&self.tb).await?;
            let k = create_vms(
                &self.client,
                &self.timelines,
                vec![blank_vm(ns, &format!("lat{i}"))?],
                1,
                None,
            )
            .await?;
            self.timelines
                .wait_all(&k, Duration::from_secs(60), "VM Started", |t| t.started.is_some())
                .await?;
            keys.extend(k);
            // The reconciles that follow Started (agents re-read the XML) are the operator's.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let middle = testbed::osd_ops(&self.tb).await?;
            osd += middle.since(&before);
            let r = self.floor_run(&format!("f{tag}{i}x"), 1, 1).await?;
            floor_osd += testbed::osd_ops(&self.tb).await?.since(&middle);
            floor1.latency.extend(r.latency);
            floor1.ceph.extend(r.ceph);
            floor1.libvirt.extend(r.libvirt);
        }
        let api = testbed::api_requests(&self.client).await?.since(&api_before);
        let problems = merge_controller_log(self.controller(), &self.timelines)?;
        let single = Stages::of(&self.timelines, &keys);

        let mut burst = None;
        if with_burst {
            let n = self.opts.burst;
            ensure_namespace(&self.client, "benchburst").await?;
            progress(format!("{n} VMs applied at once"));
            let vms = (0..n)
                .map(|i| blank_vm("benchburst", &format!("b{i}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let start = now_us();
            let keys = create_vms(&self.client, &self.timelines, vms, 16, Some(start)).await?;
            let created = now_us() - start;
            self.timelines
                .wait_all(&keys, Duration::from_secs(600), "burst VMs Started", |t| {
                    t.started.is_some()
                })
                .await?;
            merge_controller_log(self.controller(), &self.timelines)?;
            progress(format!("floor: {n} VMs, one at a time, then 16 threads"));
            let serial = self.floor_run("fbs", n, 1).await?;
            let parallel = self.floor_run("fbp", n, 16).await?;
            burst = Some((Stages::of(&self.timelines, &keys), serial, parallel, created));
        }

        // The table.
        let mon = if self.tb.slow_mon { " [slow mon]" } else { "" };
        let mut t = Table::new(
            format!("1. apply -> Started, blank 16 MiB system disk{mon} (ms; from apply to phase Started)"),
            &[
                "case",
                "n",
                "p50",
                "p95",
                "max",
                "floor p50",
                "ratio p50",
                "target <=1.5x",
            ],
        );
        let floor_row = |t: &mut Table, case: String, fl: &[i64]| {
            let [p50, p95, max] = spread(fl);
            t.row(vec![
                case,
                fl.len().to_string(),
                p50,
                p95,
                max,
                "".into(),
                "".into(),
                "".into(),
            ]);
        };
        let add = |t: &mut Table,
                   targets: &mut Vec<(String, bool)>,
                   case: &str,
                   op: &[i64],
                   floor_p50: Option<i64>| {
            let r = ratio(percentile(op, 50.0), floor_p50);
            let met = r.is_some_and(|r| r <= 1.5);
            let [p50, p95, max] = spread(op);
            t.row(vec![
                case.to_owned(),
                op.len().to_string(),
                p50,
                p95,
                max,
                ms(floor_p50),
                r.map_or("-".into(), |r| format!("{r:.1}x")),
                verdict(met).to_owned(),
            ]);
            targets.push((
                format!("apply->Started {case}{mon}: p50 within 1.5x of the floor"),
                met,
            ));
        };
        add(
            &mut t,
            &mut self.targets,
            "operator, 1 VM",
            &single.total,
            percentile(&floor1.latency, 50.0),
        );
        floor_row(&mut t, "floor, 1 VM".into(), &floor1.latency);
        if let Some((stages, serial, parallel, _)) = &burst {
            // The floor is the better of the two ways to make the VMs.
            let best = [
                percentile(&serial.latency, 50.0),
                percentile(&parallel.latency, 50.0),
            ]
            .into_iter()
            .flatten()
            .min();
            add(
                &mut t,
                &mut self.targets,
                &format!("operator, {} VMs at once", self.opts.burst),
                &stages.total,
                best,
            );
            floor_row(
                &mut t,
                format!("floor, {} VMs one at a time", self.opts.burst),
                &serial.latency,
            );
            floor_row(
                &mut t,
                format!("floor, {} VMs 16 threads", self.opts.burst),
                &parallel.latency,
            );
        }
        let per_vm = samples as f64;
        t.note(format!(
            "floor, 1 VM p50: Ceph {} ms (group, image, 7 metadata keys, group add; {:.0} OSD ops of which {:.0} writes), \
             libvirt {} ms (define + start)",
            ms(percentile(&floor1.ceph, 50.0)),
            floor_osd.ops as f64 / per_vm,
            floor_osd.writes as f64 / per_vm,
            ms(percentile(&floor1.libvirt, 50.0)),
        ));
        t.note(format!(
            "operator, per VM of the 1-VM samples: kube-apiserver {:.1} ms server time over {:.1} requests ({:.1} writes) \
             on virtualmachines+events; OSD {:.1} ms over {:.0} ops ({:.0} writes, {:.0} reads; the agent's XML read included)",
            api.seconds * 1000.0 / per_vm,
            api.requests / per_vm,
            api.writes / per_vm,
            osd.seconds * 1000.0 / per_vm,
            osd.ops as f64 / per_vm,
            osd.writes as f64 / per_vm,
            osd.reads as f64 / per_vm,
        ));
        if let Some((_, serial, parallel, created)) = &burst {
            t.note(format!(
                "burst: the {n} create requests took {} ms (16 in flight); floor Ceph part per VM p50: {} ms one at a time, \
                 {} ms with 16 threads (batch done after {} / {} ms)",
                ms(Some(*created)),
                ms(percentile(&serial.ceph, 50.0)),
                ms(percentile(&parallel.ceph, 50.0)),
                ms(serial.latency.iter().copied().max()),
                ms(parallel.latency.iter().copied().max()),
                n = self.opts.burst,
            ));
        }
        if problems > 0 {
            t.note(format!(
                "the controller logged {problems} warnings/errors so far (retries): see its log"
            ));
        }
        self.tables.push(t);

        let mut s = Table::new(
            format!("1b. stages of apply -> Started{mon}, p50 (ms)"),
            &[
                "case",
                "admit",
                "storage",
                "publish",
                "agent pickup",
                "define+start",
                "report",
                "API stages",
                "total",
            ],
        );
        s.row(single.p50_row("operator, 1 VM"));
        let floor_stages = |label: String, fl: &floor::FloorRun| {
            let p = |v: &Vec<i64>| ms(percentile(v, 50.0));
            let none = || "-".to_owned();
            vec![
                label,
                none(),
                p(&fl.ceph),
                none(),
                none(),
                p(&fl.libvirt),
                none(),
                none(),
                p(&fl.latency),
            ]
        };
        s.row(floor_stages("floor, 1 VM".into(), &floor1));
        if let Some((stages, serial, parallel, _)) = &burst {
            s.row(stages.p50_row(&format!("operator, {} VMs", self.opts.burst)));
            s.row(floor_stages(
                format!("floor, {} VMs one at a time", self.opts.burst),
                serial,
            ));
            s.row(floor_stages(
                format!("floor, {} VMs 16 threads", self.opts.burst),
                parallel,
            ));
        }
        s.note("admit (API): create -> the controller's finalizer visible in a watch");
        s.note("storage (Ceph): finalizer visible -> the controller logs its storage changes (plan + all librbd calls)");
        s.note(
            "publish (API): storage done -> StorageReady visible (2 Events, node label patch, status patch)",
        );
        s.note("agent pickup (API watch + Ceph read + libvirt read): StorageReady visible -> the agent decides to act (XML read from RBD)");
        s.note("define+start (libvirt): the agent's define and start calls (test driver, in-process)");
        s.note("report (API): domain started -> phase Started visible (agent status patch, controller status patch)");
        s.note(
            "API stages: admit + publish + report of each VM; stage p50s need not add up to the total's p50",
        );
        self.tables.push(s);
        Ok(())
    }

    /// Measurement 2: a no-op resync of `resync_vms` Started VMs (controller restart), then idle.
    async fn resync(&mut self) -> anyhow::Result<()> {
        ensure_namespace(&self.client, "benchresync").await?;
        let all: Api<VirtualMachine> = Api::all(self.client.clone());
        let existing = all.list_metadata(&ListParams::default()).await?.items.len();
        let target = self.opts.resync_vms.max(existing);
        let missing = target - existing;
        progress(format!(
            "resync: creating {missing} more VMs ({target} in all) and waiting until all are Started"
        ));
        let vms = (0..missing)
            .map(|i| blank_vm("benchresync", &format!("r{i}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        create_vms(&self.client, &self.timelines, vms, 16, None).await?;
        let every: Vec<String> = all
            .list_metadata(&ListParams::default())
            .await?
            .items
            .iter()
            .map(|m| key(&m.namespace().unwrap_or_default(), &m.name_any()))
            .collect();
        let every_started: Vec<String> = {
            let storage_only = ["benchstore"];
            every
                .into_iter()
                .filter(|k| !storage_only.iter().any(|ns| k.starts_with(&format!("{ns}/"))))
                .collect()
        };
        self.timelines
            .wait_all(&every_started, Duration::from_secs(900), "all VMs Started", |t| {
                t.started.is_some()
            })
            .await?;
        // Let the last status writes and agent reconciles pass.
        tokio::time::sleep(Duration::from_secs(3)).await;

        progress("resync: restarting the controller");
        let osd_before = testbed::osd_ops(&self.tb).await?;
        let api_before = testbed::api_requests(&self.client).await?;
        let lv_before = self.agents.as_ref().map_or(0, Agents::libvirt_writes);
        let old_pid = self.controller().pid;
        let old_rss = testbed::rss_mib(old_pid).unwrap_or_default();
        self.controller.take().expect("controller").stop().await?;
        let mut c = ControllerProcess::spawn(
            &self.tb,
            &self.workdir.join("controller-2.log"),
            &self.workdir.join("import"),
        )?;
        c.wait_http().await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut counted_at = None;
        while Instant::now() < deadline {
            if c.reconciles().await.unwrap_or(0) >= target as u64 {
                counted_at = Some(now_us());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let resync_cpu = testbed::cpu_seconds(c.pid)?;
        // Writes that follow the reconciles (status patches seen by agents) are counted too.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let osd = testbed::osd_ops(&self.tb).await?.since(&osd_before);
        let api = testbed::api_requests(&self.client).await?.since(&api_before);
        let lv = self.agents.as_ref().map_or(0, Agents::libvirt_writes) - lv_before;
        let lines = controller::read_log(&c.log)?;
        let firsts = controller::first_reconciles(&lines);
        let last_first = firsts.values().copied().max();
        let resync_time = diff(last_first, Some(c.spawned));
        let problems = controller::problems(&lines);
        let problem_summary = controller::problem_summary(&lines);

        progress(format!("resync: idle CPU over {} s", self.opts.idle_seconds));
        let cpu0 = testbed::cpu_seconds(c.pid)?;
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(self.opts.idle_seconds)).await;
        let cpu1 = testbed::cpu_seconds(c.pid)?;
        let idle_pct = (cpu1 - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
        let rss = testbed::rss_mib(c.pid)?;
        self.controller = Some(c);

        let mut t = Table::new(
            format!(
                "2. no-op resync of {target} Started VMs (controller restart; {} reconciled once)",
                firsts.len()
            ),
            &["metric", "value", "target", "verdict"],
        );
        let in_time = resync_time.is_some_and(|d| d < 2_000_000) && firsts.len() >= target;
        t.row(vec![
            "process start -> every VM reconciled once".into(),
            format!("{} ms", ms(resync_time)),
            "< 2000 ms".into(),
            verdict(in_time).into(),
        ]);
        t.row(vec![
            "  (reconcile counter >= VMs, polled)".into(),
            format!("{} ms", ms(diff(counted_at, Some(self.controller().spawned)))),
            "".into(),
            "".into(),
        ]);
        t.row(vec![
            "Ceph write ops during it (OSD op_w + op_rw)".into(),
            osd.writes.to_string(),
            "0".into(),
            verdict(osd.writes == 0).into(),
        ]);
        t.row(vec![
            "  Ceph read ops during it (OSD op_r)".into(),
            format!("{} ({:.0} per VM)", osd.reads, osd.reads as f64 / target as f64),
            "".into(),
            "".into(),
        ]);
        t.row(vec![
            "libvirt write calls during it (agents' AgentStats)".into(),
            lv.to_string(),
            "0".into(),
            verdict(lv == 0).into(),
        ]);
        t.row(vec![
            "API writes during it (VMs + Events)".into(),
            format!("{:.0}", api.writes),
            "".into(),
            "".into(),
        ]);
        t.row(vec![
            "controller CPU used by the resync".into(),
            format!(
                "{resync_cpu:.2} s ({:.1} ms per VM)",
                resync_cpu * 1000.0 / target as f64
            ),
            "".into(),
            "".into(),
        ]);
        t.row(vec![
            format!("idle controller CPU ({} s window)", self.opts.idle_seconds),
            format!("{idle_pct:.2} % of one core"),
            "".into(),
            "".into(),
        ]);
        t.row(vec![
            format!("controller RSS with {target} VMs (after restart)"),
            format!("{rss:.1} MiB"),
            "".into(),
            "".into(),
        ]);
        t.row(vec![
            "  (before restart, after creating them)".into(),
            format!("{old_rss:.1} MiB"),
            "".into(),
            "".into(),
        ]);
        if problems > 0 {
            t.note(format!("the restarted controller logged {problem_summary}"));
        }
        t.note("Ceph writes are counted at the OSD (the only Ceph client writing could be the controller; the agents only read)");
        self.targets
            .push((format!("resync of {target} VMs under 2 s"), in_time));
        self.targets
            .push(("resync: zero Ceph writes".into(), osd.writes == 0));
        self.targets.push(("resync: zero libvirt writes".into(), lv == 0));
        self.tables.push(t);
        Ok(())
    }

    /// Measurement 4: failover (on hosts and agents of its own; see failover.rs).
    async fn failover(&mut self) -> anyhow::Result<()> {
        let log = self.controller().log.clone();
        let (tables, targets) = failover::measure(
            &self.client,
            &self.tb,
            &self.timelines,
            &self.workdir,
            &log,
            self.opts.failover_vms,
        )
        .await?;
        self.tables.extend(tables);
        self.targets.extend(targets);
        Ok(())
    }

    /// Creates a Disabled VM whose disk comes from `source`, waits for StorageReady; returns
    /// (apply -> StorageReady, finalizer -> storage done) in µs.
    async fn storage_vm(&self, name: &str, source: serde_json::Value) -> anyhow::Result<(i64, Option<i64>)> {
        let vm = vm_object("benchstore", name, "Disabled", source, None)?;
        let keys = create_vms(&self.client, &self.timelines, vec![vm], 1, None).await?;
        self.timelines
            .wait_all(&keys, Duration::from_secs(900), "StorageReady", |t| {
                t.storage_ready.is_some()
            })
            .await?;
        merge_controller_log(self.controller(), &self.timelines)?;
        let t = self.timelines.get(&keys[0]);
        Ok((
            diff(t.storage_ready, t.applied).unwrap_or_default(),
            diff(t.storage_done, t.finalizer),
        ))
    }

    /// Measurement 3: qcow2 import and golden clones.
    async fn storage(&mut self) -> anyhow::Result<()> {
        ensure_namespace(&self.client, "benchstore").await?;
        let size = self.opts.import_mib << 20;
        let dir = self.workdir.join("import");
        progress(format!(
            "import: writing a {} MiB raw image and converting it to qcow2",
            self.opts.import_mib
        ));
        let src = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || storage::make_qcow2(&dir, size)).await??
        };
        let mut direct = Vec::new();
        let mut operator = Vec::new();
        let mut operator_storage = Vec::new();
        for round in 0..self.opts.rounds {
            progress(format!(
                "import round {}: qemu-img convert, then the operator",
                round + 1
            ));
            let (tb, floor, path) = (self.tb.clone(), self.floor.clone(), src.qcow2.clone());
            let image = format!("directimport{round}");
            let d = tokio::task::spawn_blocking(move || storage::qemu_img_direct(&tb, &floor, &path, &image))
                .await??;
            direct.push(d);
            let name = format!("imp{round}");
            let (total, storage_part) = self
                .storage_vm(
                    &name,
                    json!({"path": {"path": src.qcow2.display().to_string(), "format": "qcow2"}}),
                )
                .await?;
            operator.push(total as f64 / 1e6);
            if let Some(s) = storage_part {
                operator_storage.push(s as f64 / 1e6);
            }
            delete_and_wait(&self.client, "benchstore", &name).await?;
        }
        let _ = std::fs::remove_file(&src.qcow2);
        let median = |v: &[f64]| -> f64 {
            let mut s = v.to_vec();
            s.sort_by(|a, b| a.total_cmp(b));
            if s.is_empty() { 0.0 } else { s[(s.len() - 1) / 2] }
        };
        let gib = size as f64 / storage::GIB as f64;
        let (d, o) = (median(&direct), median(&operator));
        let mib_s = |secs: f64| {
            if secs > 0.0 {
                size as f64 / (1 << 20) as f64 / secs
            } else {
                0.0
            }
        };
        let share = if o > 0.0 { d / o } else { 0.0 };
        let mut t = Table::new(
            format!(
                "3a. import of a {gib:.2} GiB qcow2 ({} MiB of data in zero/random runs, qcow2 file {} MiB) into pool {}, median of {} round(s)",
                src.data_bytes >> 20,
                src.qcow2_bytes >> 20,
                self.tb.pool,
                self.opts.rounds
            ),
            &[
                "path",
                "time",
                "throughput (virtual size)",
                "share of qemu-img",
                "target >=90%",
            ],
        );
        t.row(vec![
            "qemu-img convert -f qcow2 -O raw (direct)".into(),
            format!("{d:.2} s"),
            format!("{:.0} MiB/s", mib_s(d)),
            "100 %".into(),
            "".into(),
        ]);
        let met = share >= 0.9;
        t.row(vec![
            "operator: apply -> StorageReady".into(),
            format!("{o:.2} s"),
            format!("{:.0} MiB/s", mib_s(o)),
            format!("{:.0} %", share * 100.0),
            verdict(met).into(),
        ]);
        if !operator_storage.is_empty() {
            let os = median(&operator_storage);
            t.row(vec![
                "  operator storage work alone (log)".into(),
                format!("{os:.2} s"),
                format!("{:.0} MiB/s", mib_s(os)),
                format!("{:.0} %", if os > 0.0 { d / os * 100.0 } else { 0.0 }),
                "".into(),
            ]);
        }
        t.note(format!(
            "rounds: qemu-img {:?} s, operator {:?} s; the source file is in the page cache for both",
            direct
                .iter()
                .map(|v| (v * 100.0).round() / 100.0)
                .collect::<Vec<_>>(),
            operator
                .iter()
                .map(|v| (v * 100.0).round() / 100.0)
                .collect::<Vec<_>>(),
        ));
        t.note("the operator runs qemu-img convert -n --target-is-zero -W (out-of-order writes) into a temporary image, then renames it");
        self.targets.push((
            "qcow2 import: operator >= 90% of qemu-img's throughput".into(),
            met,
        ));
        self.tables.push(t);

        progress("golden images: 1 GiB and 20 GiB, sparse, 8 MiB written each, snapshot protected");
        {
            let (tb, floor) = (self.tb.clone(), self.floor.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                storage::make_golden(&tb, &floor, "golden1g", storage::GIB)?;
                storage::make_golden(&tb, &floor, "golden20g", 20 * storage::GIB)
            })
            .await??;
        }
        let mut t = Table::new(
            format!(
                "3b. layered clone of a golden image (ms; {} clone(s) each)",
                self.opts.clones
            ),
            &[
                "golden image",
                "operator p50",
                "operator max",
                "storage work p50",
                "direct p50",
                "ratio p50",
            ],
        );
        for (label, image, tag) in [("1 GiB", "golden1g", "a"), ("20 GiB", "golden20g", "b")] {
            let mut op = Vec::new();
            let mut work = Vec::new();
            let mut fl = Vec::new();
            for i in 0..self.opts.clones {
                let floor = self.floor.clone();
                let name = format!("fc{tag}{i}");
                let img = image.to_owned();
                fl.push(
                    tokio::task::spawn_blocking(move || floor.clone_storage(&name, &img, "gold")).await??,
                );
                let (total, storage_part) = self
                    .storage_vm(
                        &format!("clone{tag}{i}"),
                        json!({"golden": {"image": image, "snapshot": "gold"}}),
                    )
                    .await?;
                op.push(total);
                work.extend(storage_part);
            }
            t.row(vec![
                label.into(),
                ms(percentile(&op, 50.0)),
                ms(op.iter().copied().max()),
                ms(percentile(&work, 50.0)),
                ms(percentile(&fl, 50.0)),
                ratio(percentile(&op, 50.0), percentile(&fl, 50.0))
                    .map_or("-".into(), |r| format!("{r:.1}x")),
            ]);
        }
        t.note("operator: apply -> StorageReady of a Disabled VM whose system disk is golden@gold; storage work: from the controller's log");
        t.note(
            "direct: clone (format 2) + group + 7 metadata keys + group add, as the floor of measurement 1",
        );
        self.tables.push(t);
        Ok(())
    }
}

async fn run(opts: Options) -> anyhow::Result<()> {
    let tb = Testbed::from_env()?;
    let workdir = opts.workdir.clone().unwrap_or_else(|| tb.dir.join("bench"));
    std::fs::create_dir_all(workdir.join("import"))?;
    let timelines = Timelines::default();
    setup::init_tracing(&workdir, Some(timelines.clone()))?;
    let started = Instant::now();
    let client = Client::try_default().await?;
    progress(format!(
        "test bed {}, work directory {}",
        tb.dir.display(),
        workdir.display()
    ));
    let setup::Operator {
        watch: _watch,
        agents,
        controller,
    } = setup::start_operator(&client, &tb, &timelines, &workdir, &workdir.join("import")).await?;
    let floor = {
        let tb = tb.clone();
        Arc::new(tokio::task::spawn_blocking(move || Floor::connect(&tb)).await??)
    };
    let mut bench = Bench {
        opts: opts.clone(),
        tb: tb.clone(),
        client,
        timelines,
        agents: Some(agents),
        controller: Some(controller),
        floor,
        workdir: workdir.clone(),
        targets: Vec::new(),
        tables: Vec::new(),
    };
    let result = async {
        if opts.failover_only {
            progress("--failover-only: measurements 1 to 3 skipped");
        } else if opts.phase == "slow-mon" {
            bench.latency("slow mon", false).await?;
        } else {
            bench.latency("fast mon", true).await?;
            bench.resync().await?;
            if !opts.skip_storage {
                bench.storage().await?;
            }
        }
        // Last: it kills and restarts agents (its own) and leaves the controller's log with
        // the warnings of a lost host.
        if !opts.skip_failover {
            bench.failover().await?;
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(c) = bench.controller.take() {
        c.stop().await?;
    }
    if let Some(a) = bench.agents.take() {
        a.stop().await;
    }
    result?;

    let out = report::render(
        &testbed::setup_note(
            &tb,
            &format!(
                "controller: release binary in its own process (concurrency 16); agents: in the harness process; phase {}",
                opts.phase
            ),
        ),
        &bench.tables,
        &bench.targets,
        started.elapsed(),
        &workdir,
    );
    print!("{out}");
    bench.timelines.write_tsv(&workdir.join("stages.tsv"))?;
    std::fs::write(workdir.join("report.txt"), &out)?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    setup::main_with(parse_options, run)
}
