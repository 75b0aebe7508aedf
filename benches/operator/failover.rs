//! Measurement 4: failover. A hypervisor's agent dies; how long until its VMs run, Started with
//! Ready=True, on another hypervisor, with the default timings (controller grace 10 s, agent
//! heartbeat 2 s, self-fence 6 s), split into detection, fencing and restart, and how much the
//! restart adds over a plain start of as many VMs on that hypervisor.
//!
//! The measurement has two simulated hypervisors of its own, `fo-hv1` and `fo-hv2` (libvirt
//! test-driver node files in the work directory, 64 GiB each: more free memory than any host of
//! the test bed, so placement sends the VMs leaving fo-hv1 to fo-hv2), whose agents run in this
//! process and are killed as tests/failover.rs kills them: the agent's task is aborted (nothing
//! of it runs after, as with SIGKILL) while the harness keeps its libvirt connection, so the
//! host's domains outlive their agent (the agent dead, its guests alive). The test bed's
//! hypervisors, their agents and the VMs of the other measurements are not touched.
//!
//! The test driver runs no QEMU, so nothing would hold the disks and fencing would have no
//! Ceph client to blocklist. The harness plays the Ceph side of fo-hv1's guests as QEMU does:
//! per VM one Ceph client of its own (one librados instance, as one QEMU process has) with
//! each of the VM's images open read-write and written to, so that librbd took the image's
//! exclusive lock and watches its header. Fencing then blocklists one client per VM and breaks
//! one lock per image, as on a real host.
//!
//! After a warm-up VM on fo-hv2 (the first VM of a namespace makes its RBD namespace too), per
//! case (1 VM, then `--failover-vms` VMs):
//! 1. plain start: the VMs created at once (16 requests in flight) with `preferredNode: fo-hv2`,
//!    apply -> Started with Ready=True there; then deleted;
//! 2. as many VMs created with `preferredNode: fo-hv1`, all Started there; their guests' Ceph
//!    clients open and lock their disks;
//! 3. fo-hv1's agent killed right after a heartbeat the harness saw (so the whole grace runs
//!    from the death: the worst case), then, from the harness's watches: detection (kill ->
//!    `status.fence.state: Fencing` seen), fencing (Fencing seen -> Fenced seen), restart
//!    (Fenced seen -> the last VM Started with Ready=True on fo-hv2);
//! 4. the guests' (blocklisted) Ceph clients closed; fo-hv1's agent started again on the same
//!    connection: it destroys its stale domains and the controller lifts the fence (the host
//!    rejoins); the VMs are deleted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use seapath_operator::agent::Agent;
use seapath_operator::api::{
    FenceState, FenceStatus, Hypervisor, NODE_LABEL, Phase, Placement, VirtualMachine,
};
use seapath_operator::ceph::Image;
use seapath_operator::libvirt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::agents::agent_config;
use crate::controller;
use crate::report::{Table, ms, percentile, verdict};
use crate::setup::{ensure_namespace, progress};
use crate::testbed::Testbed;
use crate::timeline::{Micros, Timelines, blank_vm, create_vms, key, now_us};

/// Kubernetes namespace of the measurement's VMs.
const NS: &str = "benchfailover";
/// The host whose agent dies, and the one its VMs move to.
pub const HV1: &str = "fo-hv1";
pub const HV2: &str = "fo-hv2";
/// Memory of each simulated host, KiB (64 GiB).
const HOST_MEMORY_KIB: u64 = 64 << 20;
/// Longest wait for VMs to start or go.
const WAIT: Duration = Duration::from_secs(300);
/// Longest wait for the fence of `n` VMs' clients (the grace is 10 s, then a mon command or two
/// per client: about 2 s each with a slow mon) and for the rejoin that lifts it.
fn fence_wait(n: usize) -> Duration {
    Duration::from_secs(60 + 5 * n as u64)
}

/// Targets: the VMs Started elsewhere within this long of the death (1 VM, more VMs).
const TARGET_ONE: i64 = 15_000_000;
const TARGET_MANY: i64 = 20_000_000;
/// Target: restarting after fencing adds less than this over a plain start.
const TARGET_ADDED: i64 = 1_000_000;

/// What the harness saw, in order, with the time it saw it.
struct Seen<T>(Arc<Mutex<Vec<(Micros, T)>>>);

impl<T> Clone for Seen<T> {
    fn clone(&self) -> Self {
        Seen(self.0.clone())
    }
}

impl<T> Default for Seen<T> {
    fn default() -> Self {
        Seen(Arc::default())
    }
}

impl<T> Seen<T> {
    fn push(&self, at: Micros, value: T) {
        self.0.lock().expect("seen").push((at, value));
    }

    fn with<R>(&self, f: impl FnOnce(&[(Micros, T)]) -> R) -> R {
        f(&self.0.lock().expect("seen"))
    }
}

/// A Hypervisor as one watch event showed it.
#[derive(Clone, Debug)]
struct HvState {
    name: String,
    /// `status.heartbeatTime`, µs.
    heartbeat: Option<Micros>,
    /// The Ready condition's status.
    ready: Option<String>,
    fence: Option<FenceStatus>,
}

impl HvState {
    fn of(hv: &Hypervisor) -> HvState {
        let status = hv.status.as_ref();
        HvState {
            name: hv.name_any(),
            heartbeat: status
                .and_then(|s| s.heartbeat_time.as_ref())
                .map(|t| t.0.as_microsecond()),
            ready: status
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .map(|c| c.status.clone()),
            fence: status.and_then(|s| s.fence.clone()),
        }
    }

    fn fence_state(&self) -> Option<FenceState> {
        self.fence.as_ref().map(|f| f.state)
    }
}

/// A VirtualMachine as one watch event showed it.
#[derive(Clone, Debug)]
struct VmState {
    key: String,
    /// The node label (the controller's placement, what the agents watch).
    label: Option<String>,
    /// `status.node`.
    node: Option<String>,
    /// Phase Started and Ready=True.
    started_ready: bool,
}

impl VmState {
    fn of(vm: &VirtualMachine) -> VmState {
        let status = vm.status.as_ref();
        let ready = status.is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        VmState {
            key: key(&vm.namespace().unwrap_or_default(), &vm.name_any()),
            label: vm.labels().get(NODE_LABEL).cloned(),
            node: status.and_then(|s| s.node.clone()),
            started_ready: ready && status.and_then(|s| s.phase) == Some(Phase::Started),
        }
    }
}

/// Watches `api`, recording what `map` keeps of every object seen; returns once the initial
/// list is done.
async fn watch<K, T>(api: Api<K>, seen: Seen<T>, map: fn(&K) -> T) -> anyhow::Result<JoinHandle<()>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    T: Send + 'static,
{
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        tokio::pin!(stream);
        let mut ready = Some(ready_tx);
        while let Some(event) = stream.next().await {
            let at = now_us();
            match event {
                Ok(Event::Apply(o)) | Ok(Event::InitApply(o)) => seen.push(at, map(&o)),
                Ok(Event::InitDone) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("bench: failover watch: {e}"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .map_err(|_| anyhow::anyhow!("a failover watch did not start within 30 s"))??;
    Ok(handle)
}

/// Polls `check` every 10 ms until it gives a value; fails after `timeout`.
async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; read the controller log and bench-agents.log in the bench work directory"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A simulated hypervisor of this measurement and its agent, which can be killed.
struct Host {
    name: String,
    /// The harness's handle on the host's connection, shared with its agent: with the test
    /// driver, the domains live as long as a connection to them.
    hv: libvirt::Hypervisor,
    agent: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Host {
    async fn new(dir: &Path, name: &str) -> anyhow::Result<Host> {
        let path = dir.join(format!("{name}.xml"));
        std::fs::write(
            &path,
            format!(
                "<!-- Simulated hypervisor {name} of the failover measurement. -->\n<node>\n  <cpu>\
                 <mhz>2400</mhz><model>x86_64</model><active>8</active><nodes>1</nodes><sockets>1</sockets>\
                 <cores>4</cores><threads>2</threads></cpu>\n  <memory>{HOST_MEMORY_KIB}</memory>\n</node>\n"
            ),
        )?;
        let uri = format!("test://{}", path.display());
        let hv = tokio::task::spawn_blocking(move || libvirt::Hypervisor::connect(&uri)).await??;
        Ok(Host {
            name: name.to_owned(),
            hv,
            agent: None,
        })
    }

    /// Starts the agent (default timings) on the harness's connection.
    fn start_agent(&mut self, client: &Client, tb: &Testbed) -> anyhow::Result<()> {
        let config = agent_config(tb, &self.name, self.hv.uri());
        let agent = Agent::new(client.clone(), config)?.with_connection(self.hv.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let node = self.name.clone();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = agent.run(shutdown).await {
                eprintln!("bench: the agent of {node} stopped with an error: {e}");
            }
        });
        self.agent = Some((stop, task));
        Ok(())
    }

    /// Kills the agent: its task is aborted and nothing of it runs after; the domains stay.
    async fn kill_agent(&mut self) {
        if let Some((_, task)) = self.agent.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Stops the agent gracefully (it leaves the domains running).
    async fn stop_agent(&mut self) {
        if let Some((stop, task)) = self.agent.take() {
            let _ = stop.send(());
            if tokio::time::timeout(Duration::from_secs(20), task).await.is_err() {
                eprintln!("bench: the agent of {} did not stop within 20 s", self.name);
            }
        }
    }

    /// How many domains run on the host.
    async fn running(&self) -> anyhow::Result<usize> {
        let hv = self.hv.clone();
        let domains = tokio::task::spawn_blocking(move || hv.list_domains()).await??;
        Ok(domains.iter().filter(|d| d.state.state.is_active()).count())
    }
}

/// The Ceph side of fo-hv1's guests, as QEMU holds it: per VM a Ceph client of its own with
/// the VM's images open read-write and 4 KiB written at offset 0 of each, so that librbd took
/// their exclusive locks (automatic mode, as QEMU's) and watches their headers.
struct Guests(Vec<Vec<Image>>);

impl Guests {
    /// `disks`: per VM, (pool, RBD namespace, images).
    async fn open(tb: &Testbed, disks: Vec<(String, String, Vec<String>)>) -> anyhow::Result<Guests> {
        let tb = tb.clone();
        tokio::task::spawn_blocking(move || {
            let mut guests = Vec::new();
            for (pool, namespace, images) in disks {
                let io = tb.ceph_cluster()?.io_context(&pool, &namespace)?;
                let mut opened = Vec::new();
                for name in images {
                    let mut image = io.open_image(&name)?;
                    image.write_at(0, &[0x5a; 4096])?;
                    image.flush()?;
                    opened.push(image);
                }
                guests.push(opened);
            }
            Ok(Guests(guests))
        })
        .await?
    }

    /// Closes the images and the clients (blocklisted by then: librbd's lock release fails,
    /// which close does not wait for). Whether they closed within 30 s.
    async fn close(self) -> bool {
        let closing = tokio::task::spawn_blocking(move || drop(self.0));
        tokio::time::timeout(Duration::from_secs(30), closing)
            .await
            .is_ok()
    }
}

/// One case: `n` VMs fail over.
struct Case {
    n: usize,
    /// Plain start on fo-hv2: apply -> Started with Ready=True, per VM, µs.
    plain: Vec<i64>,
    killed: Micros,
    /// The kill came this long after the heartbeat the harness saw last, µs.
    heartbeat_age: i64,
    /// `Fencing` first seen (none if the harness saw `Fenced` first).
    fencing_seen: Option<Micros>,
    /// `Fenced` first seen, and the fence as then seen.
    fenced_seen: Micros,
    fence: FenceStatus,
    /// Per VM: the node label fo-hv2 first seen (the controller's placement), absolute µs.
    placed: Vec<Micros>,
    /// Per VM: Started with Ready=True on fo-hv2 first seen, absolute µs.
    started: Vec<Micros>,
    /// Domains still running on fo-hv1 once every VM ran on fo-hv2 (the dead agent's guests).
    left_on_hv1: usize,
    /// The guests' Ceph clients closed within 30 s after their fence.
    guests_closed: bool,
    /// Agent started again -> fence lifted and Ready=True seen, µs.
    rejoin: i64,
    /// Domains running on fo-hv1 once it rejoined.
    left_after_rejoin: usize,
}

impl Case {
    fn last_started(&self) -> Micros {
        self.started.iter().copied().max().unwrap_or(self.fenced_seen)
    }

    /// From the death to the last VM Started with Ready=True on fo-hv2, µs.
    fn total(&self) -> i64 {
        self.last_started() - self.killed
    }

    /// Per VM: Fenced seen -> Started on fo-hv2, µs.
    fn restart(&self) -> Vec<i64> {
        self.started.iter().map(|s| s - self.fenced_seen).collect()
    }

    fn target(&self) -> i64 {
        if self.n == 1 { TARGET_ONE } else { TARGET_MANY }
    }

    fn label(&self) -> String {
        if self.n == 1 {
            "1 VM".into()
        } else {
            format!("{} VMs", self.n)
        }
    }
}

/// The measurement's hosts, watches and what it saw.
struct Failover<'a> {
    client: &'a Client,
    tb: &'a Testbed,
    timelines: &'a Timelines,
    hosts: Vec<Host>,
    hvs: Seen<HvState>,
    vms: Seen<VmState>,
    watches: Vec<JoinHandle<()>>,
}

/// Seconds with two decimals ("-" when absent).
fn secs(us: Option<i64>) -> String {
    us.map_or_else(|| "-".into(), |v| format!("{:.2} s", v as f64 / 1e6))
}

fn vm_on(name: &str, node: &str) -> anyhow::Result<VirtualMachine> {
    let mut vm = blank_vm(NS, name)?;
    vm.spec.placement = Some(Placement {
        preferred_node: Some(node.to_owned()),
        ..Default::default()
    });
    Ok(vm)
}

impl Failover<'_> {
    /// The first state of hypervisor `name` seen at or after `after` that satisfies `check`.
    fn hv_first(
        &self,
        name: &str,
        after: Micros,
        check: impl Fn(&HvState) -> bool,
    ) -> Option<(Micros, HvState)> {
        self.hvs.with(|seen| {
            seen.iter()
                .find(|(at, s)| *at >= after && s.name == name && check(s))
                .cloned()
        })
    }

    /// Per key, the first time at or after `after` a VM state satisfied `check`; `None` until
    /// every key has one.
    fn vms_first(
        &self,
        keys: &[String],
        after: Micros,
        check: impl Fn(&VmState) -> bool,
    ) -> Option<Vec<Micros>> {
        self.vms.with(|seen| {
            let mut first: HashMap<&str, Micros> = HashMap::new();
            for (at, s) in seen.iter().filter(|(at, _)| *at >= after) {
                if check(s) {
                    first.entry(s.key.as_str()).or_insert(*at);
                }
            }
            keys.iter().map(|k| first.get(k.as_str()).copied()).collect()
        })
    }

    async fn wait_started(
        &self,
        keys: &[String],
        node: &str,
        after: Micros,
        what: &str,
    ) -> anyhow::Result<Vec<Micros>> {
        wait_for(WAIT, what, || {
            self.vms_first(keys, after, |s| {
                s.started_ready && s.node.as_deref() == Some(node)
            })
        })
        .await
    }

    async fn create(
        &self,
        prefix: &str,
        n: usize,
        node: &str,
    ) -> anyhow::Result<(Vec<String>, Vec<String>, Micros)> {
        // SEAPATH names: lowercase letters and digits only.
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{n}x{i}")).collect();
        let vms = names
            .iter()
            .map(|name| vm_on(name, node))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let start = now_us();
        let keys = create_vms(self.client, self.timelines, vms, 16, Some(start)).await?;
        Ok((names, keys, start))
    }

    /// Deletes the VMs and waits until they are gone.
    async fn delete(&self, names: &[String]) -> anyhow::Result<()> {
        let api: Api<VirtualMachine> = Api::namespaced(self.client.clone(), NS);
        let results: Vec<Result<_, kube::Error>> = futures::stream::iter(names)
            .map(|name| {
                let api = api.clone();
                async move { api.delete(name, &DeleteParams::default()).await }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for r in results {
            match r {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = api
                .list_metadata(&ListParams::default())
                .await?
                .items
                .iter()
                .filter(|m| names.contains(&m.name_any()))
                .count();
            if left == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{left} failover VMs still exist {WAIT:?} after their deletion"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn case(&mut self, n: usize) -> anyhow::Result<Case> {
        progress(format!("failover, {n} VM(s): plain start on {HV2}"));
        let (names, keys, start) = self.create("p", n, HV2).await?;
        let started = self
            .wait_started(
                &keys,
                HV2,
                start,
                &format!("plain start: {n} VMs Started on {HV2}"),
            )
            .await?;
        let plain: Vec<i64> = started.iter().map(|s| s - start).collect();
        self.delete(&names).await?;

        progress(format!("failover, {n} VM(s): started on {HV1}"));
        let (names, keys, start) = self.create("f", n, HV1).await?;
        self.wait_started(&keys, HV1, start, &format!("{n} VMs Started on {HV1}"))
            .await?;
        let api: Api<VirtualMachine> = Api::namespaced(self.client.clone(), NS);
        let mut disks = Vec::new();
        for name in &names {
            let storage = api
                .get(name)
                .await?
                .status
                .and_then(|s| s.storage)
                .ok_or_else(|| anyhow::anyhow!("{NS}/{name} is Started but has no status.storage"))?;
            disks.push((
                storage.pool,
                storage.namespace,
                storage.images.into_iter().map(|i| i.name).collect(),
            ));
        }
        progress(format!(
            "failover, {n} VM(s): their guests' Ceph clients open and lock the disks"
        ));
        let guests = Guests::open(self.tb, disks).await?;
        // Let the status writes and the agents' reconciles that follow Started pass.
        tokio::time::sleep(Duration::from_secs(2)).await;

        // The kill follows a heartbeat at once: the controller's grace runs from the death.
        let before = self.hvs.with(|seen| {
            seen.iter()
                .rev()
                .find(|(_, s)| s.name == HV1)
                .and_then(|(_, s)| s.heartbeat)
        });
        let since = now_us();
        let (heartbeat_seen, _) = wait_for(Duration::from_secs(30), &format!("a heartbeat of {HV1}"), || {
            self.hv_first(HV1, since, |s| s.heartbeat.is_some() && s.heartbeat != before)
        })
        .await?;
        progress(format!(
            "failover, {n} VM(s): killing the agent of {HV1}; the grace is 10 s"
        ));
        let killed = now_us();
        self.hosts[0].kill_agent().await;
        let (fenced_seen, fenced) = wait_for(fence_wait(n), &format!("{HV1} Fenced"), || {
            self.hv_first(HV1, killed, |s| s.fence_state() == Some(FenceState::Fenced))
        })
        .await?;
        let started = self
            .wait_started(
                &keys,
                HV2,
                killed,
                &format!("{n} VMs Started with Ready=True on {HV2} after {HV1}'s agent died"),
            )
            .await?;
        let left_on_hv1 = self.hosts[0].running().await?;
        let fencing_seen = self
            .hv_first(HV1, killed, |s| s.fence_state() == Some(FenceState::Fencing))
            .map(|(at, _)| at);
        let placed = self
            .vms_first(&keys, killed, |s| s.label.as_deref() == Some(HV2))
            .unwrap_or_default();
        let guests_closed = guests.close().await;

        progress(format!(
            "failover, {n} VM(s): restarting the agent of {HV1}; waiting for it to rejoin"
        ));
        let restarted = now_us();
        self.hosts[0].start_agent(self.client, self.tb)?;
        let (rejoined, _) = wait_for(
            fence_wait(n),
            &format!("{HV1} rejoined (fence lifted, Ready=True)"),
            || {
                self.hv_first(HV1, restarted, |s| {
                    s.fence.is_none() && s.ready.as_deref() == Some("True")
                })
            },
        )
        .await?;
        let left_after_rejoin = self.hosts[0].running().await?;
        self.delete(&names).await?;
        Ok(Case {
            n,
            plain,
            killed,
            heartbeat_age: killed - heartbeat_seen,
            fencing_seen,
            fenced_seen,
            fence: fenced.fence.unwrap_or_default(),
            placed,
            started,
            left_on_hv1,
            guests_closed,
            rejoin: rejoined - restarted,
            left_after_rejoin,
        })
    }

    /// Stops the agents and removes the hosts' Hypervisor objects.
    async fn finish(mut self) {
        for host in &mut self.hosts {
            host.stop_agent().await;
        }
        let api: Api<Hypervisor> = Api::all(self.client.clone());
        for host in &self.hosts {
            let _ = api.delete(&host.name, &DeleteParams::default()).await;
        }
        for w in self.watches.drain(..) {
            w.abort();
        }
    }
}

/// Runs the measurement: a case of 1 VM, then one of `many` VMs (if more than 1). Returns the
/// tables and the targets with their verdicts.
pub async fn measure(
    client: &Client,
    tb: &Testbed,
    timelines: &Timelines,
    workdir: &Path,
    controller_log: &Path,
    many: usize,
) -> anyhow::Result<(Vec<Table>, Vec<(String, bool)>)> {
    ensure_namespace(client, NS).await?;
    let dir: PathBuf = workdir.join("failover");
    std::fs::create_dir_all(&dir)?;
    let hvs = Seen::default();
    let vms = Seen::default();
    let watches = vec![
        watch(Api::<Hypervisor>::all(client.clone()), hvs.clone(), HvState::of).await?,
        watch(
            Api::<VirtualMachine>::namespaced(client.clone(), NS),
            vms.clone(),
            VmState::of,
        )
        .await?,
    ];
    let mut f = Failover {
        client,
        tb,
        timelines,
        hosts: vec![Host::new(&dir, HV1).await?, Host::new(&dir, HV2).await?],
        hvs,
        vms,
        watches,
    };
    progress(format!(
        "failover: hosts {HV1} and {HV2} with agents of their own (default timings)"
    ));
    let result = async {
        for host in &mut f.hosts {
            host.start_agent(client, tb)?;
        }
        for name in [HV1, HV2] {
            wait_for(Duration::from_secs(60), &format!("{name} Ready"), || {
                f.hv_first(name, 0, |s| s.ready.as_deref() == Some("True"))
            })
            .await?;
        }
        // The first VM of a namespace makes its RBD namespace too: not part of a plain start.
        progress(format!("failover: warm-up VM on {HV2}"));
        let (names, keys, start) = f.create("w", 1, HV2).await?;
        f.wait_started(&keys, HV2, start, "warm-up VM Started").await?;
        f.delete(&names).await?;
        let mut cases = vec![f.case(1).await?];
        if many > 1 {
            cases.push(f.case(many).await?);
        }
        anyhow::Ok(cases)
    }
    .await;
    f.finish().await;
    let cases = result?;
    Ok(report(&cases, tb.slow_mon, controller_log))
}

fn report(cases: &[Case], slow_mon: bool, controller_log: &Path) -> (Vec<Table>, Vec<(String, bool)>) {
    let mon = if slow_mon { " [slow mon]" } else { "" };
    let mut targets = Vec::new();
    let mut t = Table::new(
        format!(
            "4. failover: {HV1}'s agent killed -> every VM Started with Ready=True on {HV2}{mon} \
             (default timings: grace 10 s, heartbeat 2 s, self-fence 6 s)"
        ),
        &[
            "case",
            "detection",
            "fencing",
            "restart",
            "total",
            "target",
            "verdict",
        ],
    );
    for c in cases {
        let total = c.total();
        let met = total < c.target();
        let detection = c.fencing_seen.map(|at| at - c.killed);
        let fencing = c.fencing_seen.map(|at| c.fenced_seen - at);
        t.row(vec![
            c.label(),
            secs(detection),
            secs(fencing),
            secs(Some(c.last_started() - c.fenced_seen)),
            secs(Some(total)),
            format!("< {} s", c.target() / 1_000_000),
            verdict(met).into(),
        ]);
        targets.push((
            format!(
                "failover{mon}: {} Started with Ready=True elsewhere within {} s of its host's agent dying",
                c.label(),
                c.target() / 1_000_000
            ),
            met,
        ));
    }
    t.note(format!(
        "detection: the kill -> the harness's watch sees status.fence.state Fencing on {HV1}; fencing: Fencing seen -> Fenced seen; \
         restart: Fenced seen -> the last VM seen Started with Ready=True on {HV2}; total: the kill -> that last VM"
    ));
    t.note(
        "the kill follows a heartbeat the harness saw at once, so the grace runs from the death: the worst case; \
         a death at a random moment is detected up to one heartbeat (2 s) sooner",
    );
    t.note(format!(
        "{HV1}'s guests hold their disks as QEMU does (a Ceph client per VM, images open and written: exclusive lock \
         and header watch), so fencing blocklists one client per VM (one mon command each) and breaks one lock per image"
    ));
    let lines = controller::read_log(controller_log);
    for c in cases {
        let at = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
            t.as_ref().map(|t| t.0.as_microsecond() - c.killed)
        };
        let placed_last = c.placed.iter().copied().max();
        // The controller's warnings while the VMs failed over, but those a lost host brings.
        let warnings = match &lines {
            Ok(lines) => {
                let window: Vec<&controller::LogLine> = lines
                    .iter()
                    .filter(|l| l.at >= c.killed && l.at <= c.last_started())
                    .collect();
                let failing_over = window.iter().filter(|l| l.message == "failing over").count();
                let expected = |l: &controller::LogLine| {
                    l.message == "failing over"
                        || l.message.starts_with("the node agent of hypervisor")
                        || l.message.contains("Ceph client(s) blocklisted")
                };
                let mut kinds: Vec<String> = window
                    .iter()
                    .filter(|l| matches!(l.level.as_str(), "WARN" | "ERROR") && !expected(l))
                    .map(|l| {
                        let error: String = l.error.as_deref().unwrap_or_default().chars().take(90).collect();
                        format!("{}: {error}", l.message)
                    })
                    .collect();
                let others = kinds.len();
                kinds.sort();
                kinds.dedup();
                format!(
                    "the controller logged {failing_over} 'failing over' line(s) and {others} other warning(s)/error(s){}",
                    if kinds.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " ({})",
                            kinds.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
                        )
                    }
                )
            }
            Err(e) => format!("the controller log could not be read: {e}"),
        };
        t.note(format!(
            "{}: killed {} ms after a heartbeat seen; status.fence.since and fencedAt {} and {} after the kill \
             (whole seconds: metav1.Time); {} Ceph client(s) blocklisted; last VM placed on {HV2} (node label seen) {} \
             after Fenced seen; {warnings}; {HV1} still ran {} domain(s) of the dead agent, {} once it rejoined ({} after \
             its agent restarted){}",
            c.label(),
            ms(Some(c.heartbeat_age)),
            secs(at(&c.fence.since)),
            secs(at(&c.fence.fenced_at)),
            c.fence.blocklisted.len(),
            secs(placed_last.map(|p| p - c.fenced_seen)),
            c.left_on_hv1,
            c.left_after_rejoin,
            secs(Some(c.rejoin)),
            if c.guests_closed {
                ""
            } else {
                "; the guests' Ceph clients did not close within 30 s of their fence"
            },
        ));
    }

    let mut s = Table::new(
        format!("4b. restart after fencing against a plain start on {HV2}{mon} (ms)"),
        &[
            "case",
            "restart p50",
            "restart last",
            "plain start p50",
            "plain start last",
            "added (last)",
            "target < 1000",
        ],
    );
    for c in cases {
        let restart = c.restart();
        let restart_last = restart.iter().copied().max();
        let plain_last = c.plain.iter().copied().max();
        let added = restart_last.zip(plain_last).map(|(r, p)| r - p);
        let met = added.is_some_and(|a| a < TARGET_ADDED);
        s.row(vec![
            c.label(),
            ms(percentile(&restart, 50.0)),
            ms(restart_last),
            ms(percentile(&c.plain, 50.0)),
            ms(plain_last),
            ms(added),
            verdict(met).into(),
        ]);
        targets.push((
            format!(
                "failover{mon}: restarting {} after fencing adds < 1 s over a plain start",
                c.label()
            ),
            met,
        ));
    }
    s.note(format!(
        "restart: per VM, Fenced seen -> Started with Ready=True on {HV2} seen (the controller places it, {HV2}'s agent \
         reads its XML from RBD, defines and starts the domain, both report); its disks exist already"
    ));
    s.note(format!(
        "plain start: as many new VMs created at once (16 requests in flight) with preferredNode {HV2}, \
         apply -> Started with Ready=True (storage made, placed, started); added: restart last - plain start last"
    ));
    (vec![t, s], targets)
}
