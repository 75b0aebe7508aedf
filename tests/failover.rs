//! High availability on the real API server and Ceph, with libvirt test-driver hosts: a host
//! whose agent dies is judged lost, fenced, and its VMs start elsewhere by priority within the
//! capacity left (pinned and opted-out VMs stay and say why); an administrator's out-of-service
//! mark fences at once; an agent cut from the API server destroys its domains before they start
//! elsewhere, and no VM ever runs on two hosts; an agent restart shorter than the grace fails
//! nothing over; a fencing decision recorded by a controller that died is carried out; a host
//! that comes back rejoins clean and the fence is lifted.
//!
//! The controller runs once per binary; each test brings up its own simulated hosts (node files
//! with the capacity it needs) and agents it can kill, and the tests take turns, since a lost
//! host concerns every VM that could move.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::FutureExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use seapath_operator::agent::{Agent, AgentConfig, CephConfig, CephSecretConfig};
use seapath_operator::api::{
    FenceState, Hypervisor, MigrationMode, MigrationPhase, Phase, VirtualMachine, VirtualMachineMigration,
};
use seapath_operator::ceph::{Cluster, ClusterConfig, IoCtx};
use seapath_operator::controller::hypervisor::FencingSettings;
use seapath_operator::domain_xml::CephAuthRef;
use seapath_operator::libvirt;
use seapath_operator::naming::{NamespaceMap, VmNames};
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

use common::operator::{Options, operator_with};
use common::testbed_env;

/// The controller's grace in this binary.
const GRACE: Duration = Duration::from_secs(5);
const HEARTBEAT: Duration = Duration::from_secs(1);
const SELF_FENCE_AFTER: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(60);

/// One test at a time: a lost host concerns every VM that could move.
static TURN: Mutex<()> = Mutex::const_new(());

fn xml(memory_mib: u32) -> String {
    format!(
        "<domain type='qemu'><name>x</name><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type></os><features><acpi/></features></domain>"
    )
}

/// A simulated host of `memory_gib` GiB: its own node file, so each test chooses capacity.
async fn host(dir: &std::path::Path, name: &str, memory_gib: u64) -> libvirt::Hypervisor {
    let path = dir.join(format!("{name}.xml"));
    std::fs::write(
        &path,
        format!(
            "<node><cpu><mhz>2400</mhz><model>x86_64</model><active>8</active><nodes>1</nodes>\
             <sockets>1</sockets><cores>4</cores><threads>2</threads></cpu>\
             <memory>{}</memory></node>",
            memory_gib * 1024 * 1024
        ),
    )
    .expect("node file");
    let uri = format!("test://{}", path.display());
    tokio::task::spawn_blocking(move || libvirt::Hypervisor::connect(&uri))
        .await
        .unwrap()
        .expect("connecting to the node file")
}

/// Where the power-fence hook of this binary's controller writes the nodes it was asked to fence.
fn power_fence_log() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("seapath-power-fence-{}.log", std::process::id()))
}

/// A power-fence command standing for `fence_ipmilan`: it records the node and succeeds.
fn power_fence_hook() -> std::path::PathBuf {
    let script = std::env::temp_dir().join(format!("seapath-power-fence-{}.sh", std::process::id()));
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$1\" >> {}\n", power_fence_log().display()),
    )
    .expect("writing the power-fence hook");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

/// The QEMU guest's namespace maps to RBD's default namespace: libvirt 9.0 cannot name an RBD
/// namespace in a disk source (QEMU reads `NAMESPACE/IMAGE` as an image name).
fn namespace_map() -> NamespaceMap {
    NamespaceMap::parse(&format!("{}=", common::operator::HOST_PATHS_NAMESPACE)).unwrap()
}

/// The libvirt secret QEMU hosts keep with the Ceph key (cephx test beds only).
fn ceph_secret() -> Option<CephSecretConfig> {
    let key = std::env::var("SEAPATH_CEPH_LIBVIRT_KEY")
        .ok()
        .filter(|k| !k.is_empty())?;
    Some(CephSecretConfig {
        usage_name: "client.libvirt secret".into(),
        uuid: uuid::Uuid::from_u128(0x5ea9_a7f0_0000_4000_8000_0000_0000_f0f0),
        key_base64: key,
    })
}

fn agent_config(node: &str, uri: &str) -> AgentConfig {
    let mut ceph = CephConfig::new(
        testbed_env("CEPH_CONF"),
        std::env::var("SEAPATH_CEPH_CLIENT").unwrap_or_else(|_| "admin".into()),
        testbed_env("SEAPATH_CEPH_POOL"),
    );
    ceph.options = vec![("admin_socket".into(), String::new())];
    // No namespace map: agents learn the controller's from each VM's status.
    let mut config = AgentConfig::new(node, uri, ceph);
    if !uri.starts_with("test:") {
        config.ceph_secret = ceph_secret();
    }
    config.heartbeat_interval = HEARTBEAT;
    config.self_fence_after = SELF_FENCE_AFTER;
    config.resync_period = Duration::from_secs(2);
    config.restart_backoff_base = Duration::from_secs(1);
    config.restart_backoff_max = Duration::from_secs(2);
    config.default_stop_timeout = Duration::from_secs(2);
    config
}

/// An agent as a task the test can kill (abort: nothing runs after, as with SIGKILL); the
/// test keeps the libvirt connection, so the host's domains outlive the agent.
struct Host {
    name: String,
    hv: libvirt::Hypervisor,
    agent: Option<JoinHandle<()>>,
}

impl Host {
    fn start_agent(&mut self, client: &Client) {
        let config = agent_config(&self.name, self.hv.uri());
        let agent = Agent::new(client.clone(), config)
            .expect("agent config")
            .with_connection(self.hv.clone());
        self.agent = Some(tokio::spawn(async move {
            agent.run(std::future::pending()).await.expect("agent");
        }));
    }

    fn kill_agent(&mut self) {
        if let Some(task) = self.agent.take() {
            task.abort();
        }
    }

    /// Names of the running domains (`NAMESPACE_VM`).
    async fn running(&self) -> BTreeSet<String> {
        let hv = self.hv.clone();
        tokio::task::spawn_blocking(move || {
            hv.list_domains()
                .expect("listing domains")
                .into_iter()
                .filter(|d| d.state.state.is_active())
                .map(|d| d.name)
                .collect()
        })
        .await
        .unwrap()
    }
}

struct Bed {
    client: Client,
    namespace: String,
    /// The VMs this test made (the QEMU test shares its namespace with earlier runs).
    created: std::sync::Mutex<Vec<String>>,
    vms: Api<VirtualMachine>,
    hypervisors: Api<Hypervisor>,
    hosts: Vec<Host>,
    /// The binary's controller (the agents are the hosts' own).
    operator: &'static common::operator::Operator,
    _dir: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Where a test's hosts come from.
enum Hosts<'a> {
    /// libvirt test-driver node files of these sizes (name suffix, GiB).
    Simulated(&'a [(&'a str, u64)]),
    /// The test bed's QEMU hosts (`SEAPATH_QEMU_NODES`), in this Kubernetes namespace.
    Qemu { namespace: &'a str },
}

/// Takes the turn, removes the hosts of earlier tests, and brings up `hosts` (name suffix,
/// GiB) with running agents.
async fn bed(prefix: &str, hosts: &[(&str, u64)]) -> Bed {
    bed_with(prefix, Hosts::Simulated(hosts)).await
}

async fn bed_with(prefix: &str, hosts: Hosts<'_>) -> Bed {
    let turn = TURN.lock().await;
    let client = common::admin_client().await;
    common::install_crds(&client).await;
    let operator = operator_with(
        "fo",
        Options {
            without_agents: true,
            fencing: Some(FencingSettings {
                grace: GRACE,
                blocklist_expiry: Duration::from_secs(600),
                power_fence_command: Some(power_fence_hook()),
            }),
            namespace_map: namespace_map(),
            libvirt_auth: ceph_secret().map(|s| CephAuthRef {
                username: std::env::var("SEAPATH_CEPH_LIBVIRT_USER").unwrap_or_else(|_| "libvirt".into()),
                secret_uuid: s.uuid,
            }),
            ..Default::default()
        },
    );
    let hypervisors: Api<Hypervisor> = Api::all(client.clone());
    for old in hypervisors.list(&ListParams::default()).await.unwrap() {
        hypervisors
            .delete(&old.name_any(), &DeleteParams::default())
            .await
            .ok();
    }
    forget_leftover_vms(&client).await;
    let namespace = match hosts {
        Hosts::Simulated(_) => common::fresh_namespace(&client, prefix).await,
        Hosts::Qemu { namespace } => ensure_namespace(&client, namespace).await,
    };
    let dir = tempfile::tempdir().unwrap();
    // Unique per run: VMs an earlier run left on a host of the same name would move in.
    let run = format!("{:04x}", rand_suffix());
    let connections = match hosts {
        Hosts::Simulated(sizes) => {
            let mut connections = Vec::new();
            for (suffix, gib) in sizes {
                let name = format!("{prefix}-{suffix}-{run}");
                connections.push((host(dir.path(), &name, *gib).await, name));
            }
            connections
        }
        Hosts::Qemu { .. } => qemu_hosts(prefix, &run).await,
    };
    let mut started = Vec::new();
    for (hv, name) in connections {
        let mut host = Host {
            hv,
            name,
            agent: None,
        };
        host.start_agent(&client);
        started.push(host);
    }
    let bed = Bed {
        vms: Api::namespaced(client.clone(), &namespace),
        namespace,
        created: Default::default(),
        hypervisors,
        client,
        hosts: started,
        operator,
        _dir: dir,
        _turn: turn,
    };
    for host in &bed.hosts {
        bed.wait_hv(&host.name, "Ready", |hv| ready(hv) == Some("True"))
            .await;
    }
    bed
}

/// Removes the VMs an earlier test left behind (it failed before its tear-down, or ran in an
/// earlier binary whose operator is gone) without running their deletion: this test's
/// controller would otherwise place them on its hosts and count them in its drains. Tests take
/// their turn, so none of them is another test's running VM.
async fn forget_leftover_vms(client: &Client) {
    let all: Api<VirtualMachine> = Api::all(client.clone());
    for vm in all.list(&ListParams::default()).await.unwrap() {
        let namespace = vm.namespace().unwrap_or_default();
        let api: Api<VirtualMachine> = Api::namespaced(client.clone(), &namespace);
        api.delete(&vm.name_any(), &DeleteParams::default()).await.ok();
        let no_finalizers = json!({"metadata": {"finalizers": null}});
        api.patch(
            &vm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&no_finalizers),
        )
        .await
        .ok();
    }
}

fn rand_suffix() -> u16 {
    (uuid::Uuid::new_v4().as_u128() & 0xffff) as u16
}

async fn ensure_namespace(client: &Client, name: &str) -> String {
    use k8s_openapi::api::core::v1::Namespace;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.ok();
    name.to_owned()
}

/// Connections to the test bed's QEMU hosts, named for this run.
async fn qemu_hosts(prefix: &str, run: &str) -> Vec<(libvirt::Hypervisor, String)> {
    let mut hosts = Vec::new();
    for entry in testbed_env("SEAPATH_QEMU_NODES").split(',') {
        let (name, uri) = entry
            .split_once('=')
            .expect("SEAPATH_QEMU_NODES entries are NAME=URI");
        let uri = uri.to_owned();
        let hv = tokio::task::spawn_blocking(move || libvirt::Hypervisor::connect(&uri))
            .await
            .unwrap()
            .expect("connecting to a QEMU host of the test bed");
        hosts.push((hv, format!("{prefix}-{name}-{run}")));
    }
    assert!(
        hosts.len() >= 2,
        "the test bed needs two QEMU hosts (--with-qemu --hypervisors 2)"
    );
    hosts
}

fn ready(hv: &Hypervisor) -> Option<&str> {
    hv.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
}

fn fence_state(hv: &Hypervisor) -> Option<FenceState> {
    hv.status.as_ref()?.fence.as_ref().map(|f| f.state)
}

fn condition(vm: &VirtualMachine, type_: &str) -> Option<(String, String, String)> {
    let c = vm.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn node(vm: &VirtualMachine) -> Option<&str> {
    vm.status.as_ref()?.node.as_deref()
}

fn phase(vm: &VirtualMachine) -> Option<Phase> {
    vm.status.as_ref()?.phase
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Bed {
    /// Kills host `index`'s agent (its domains stay).
    fn kill(&mut self, index: usize) {
        self.hosts[index].kill_agent();
    }

    /// Starts host `index`'s agent again, on the same simulated host.
    fn restart(&mut self, index: usize) {
        let client = self.client.clone();
        self.hosts[index].start_agent(&client);
    }

    async fn create(&self, name: &str, memory_mib: u32, placement: Value) {
        let vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {
                "xml": xml(memory_mib), "stopTimeoutSeconds": 2,
                "systemDisk": {"source": {"blank": {}}, "size": "4Mi"},
                "placement": placement,
            }
        }))
        .unwrap();
        self.created_vm(&vm).await;
    }

    async fn created_vm(&self, vm: &VirtualMachine) {
        self.vms
            .create(&PostParams::default(), vm)
            .await
            .expect("create VM");
        self.created.lock().unwrap().push(vm.name_any());
    }

    async fn wait_vm(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&VirtualMachine) -> bool,
    ) -> VirtualMachine {
        eventually(&format!("{name}: {what}"), async || {
            self.vms.get(name).await.ok().filter(|vm| check(vm))
        })
        .await
    }

    async fn wait_hv(&self, name: &str, what: &str, check: impl Fn(&Hypervisor) -> bool) -> Hypervisor {
        eventually(&format!("hypervisor {name}: {what}"), async || {
            self.hypervisors.get(name).await.ok().filter(|hv| check(hv))
        })
        .await
    }

    async fn started_on(&self, name: &str, host: &str) -> VirtualMachine {
        self.wait_vm(name, &format!("Started on {host}"), |vm| {
            phase(vm) == Some(Phase::Started)
                && node(vm) == Some(host)
                && condition(vm, "Ready").is_some_and(|c| c.0 == "True")
        })
        .await
    }

    async fn set_spec(&self, hv: &str, spec: Value) {
        self.hypervisors
            .patch(hv, &PatchParams::default(), &Patch::Merge(json!({"spec": spec})))
            .await
            .expect("patch Hypervisor spec");
    }

    /// Deletes the test's VMs (with the agents running) and its hosts, for the next test.
    async fn tear_down(mut self) {
        let created = self.created.lock().unwrap().clone();
        for name in &created {
            self.vms.delete(name, &DeleteParams::default()).await.ok();
        }
        eventually("the test's VMs deleted", async || {
            let left = self.vms.list(&ListParams::default()).await.ok()?;
            (!left.items.iter().any(|vm| created.contains(&vm.name_any()))).then_some(())
        })
        .await;
        for host in &mut self.hosts {
            host.kill_agent();
            self.hypervisors
                .delete(&host.name, &DeleteParams::default())
                .await
                .ok();
        }
    }

    async fn create_migration(&self, name: &str, vm: &str, to: Option<&str>) {
        let migration: VirtualMachineMigration = serde_json::from_value(json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachineMigration",
            "metadata": {"name": name}, "spec": {"vmName": vm, "targetNode": to}
        }))
        .unwrap();
        self.migrations()
            .create(&PostParams::default(), &migration)
            .await
            .expect("create migration");
    }

    async fn migration_ended(&self, name: &str) -> VirtualMachineMigration {
        eventually(&format!("migration {name} ended"), async || {
            self.migrations()
                .get(name)
                .await
                .ok()
                .filter(|m| migration_phase(m).is_some_and(MigrationPhase::is_final))
        })
        .await
    }

    /// Waits for migration `name` to end, and checks it succeeded.
    async fn migration_succeeded(&self, name: &str) {
        let done = self.migration_ended(name).await;
        assert_eq!(
            migration_phase(&done),
            Some(MigrationPhase::Succeeded),
            "{:?}",
            done.status
        );
    }

    /// What a drain of `hv` did, for a failure's message: its progress, every migration of the
    /// test's namespace with its outcome, and where each VM is.
    async fn drain_story(&self, hv: &str) -> String {
        let progress = self
            .hypervisors
            .get(hv)
            .await
            .ok()
            .and_then(|h| drain(&h).cloned());
        let mut story = format!("drain: {progress:?}\n");
        for m in self.migrations().list(&ListParams::default()).await.unwrap() {
            let s = m.status.clone().unwrap_or_default();
            let line = format!(
                "{} {:?} {:?} -> {:?}: {:?} {:?}\n",
                m.name_any(),
                s.phase,
                s.source_node,
                s.target_node,
                s.reason,
                s.message
            );
            story.push_str(&line);
        }
        for vm in self.vms.list(&ListParams::default()).await.unwrap() {
            let line = format!("{} on {:?}\n", vm.name_any(), node(&vm));
            story.push_str(&line);
        }
        for host in &self.hosts {
            let hv = self.hypervisors.get(&host.name).await.ok();
            let line = format!("{} Ready {:?}\n", host.name, hv.as_ref().and_then(ready));
            story.push_str(&line);
        }
        story
    }

    fn migrations(&self) -> Api<VirtualMachineMigration> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    async fn events(&self, reason: &str) -> Vec<String> {
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(self.client.clone());
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note)
            .collect()
    }
}

/// Records every VM seen running on two hosts at once, until stopped.
fn watch_for_doubles(hosts: Vec<libvirt::Hypervisor>) -> (watch::Sender<bool>, JoinHandle<Vec<String>>) {
    watch_for(hosts, |state| state.is_active(), on_two_hosts)
}

/// Records every VM seen executing (not paused) on two hosts at once: a live migration has the
/// incoming copy paused on the target while the source runs, which is how libvirt hands over.
fn watch_for_two_running(hosts: Vec<libvirt::Hypervisor>) -> (watch::Sender<bool>, JoinHandle<Vec<String>>) {
    watch_for(
        hosts,
        |state| state == libvirt::DomainState::Running,
        on_two_hosts,
    )
}

/// The domains found on two hosts of one sample.
fn on_two_hosts(running: &[BTreeSet<String>]) -> Vec<String> {
    let mut doubles = Vec::new();
    for (i, host) in running.iter().enumerate() {
        for other in &running[i + 1..] {
            doubles.extend(host.intersection(other).cloned());
        }
    }
    doubles
}

/// Samples the domains in the states `counts` accepts on every host every 50 ms, and records
/// what `judge` finds wrong in each sample, until stopped.
fn watch_for(
    hosts: Vec<libvirt::Hypervisor>,
    counts: fn(libvirt::DomainState) -> bool,
    judge: impl Fn(&[BTreeSet<String>]) -> Vec<String> + Send + 'static,
) -> (watch::Sender<bool>, JoinHandle<Vec<String>>) {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut found = Vec::new();
        while !*stopped.borrow() {
            let hosts = hosts.clone();
            let running: Vec<BTreeSet<String>> = tokio::task::spawn_blocking(move || {
                hosts
                    .iter()
                    .map(|hv| {
                        hv.list_domains()
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|d| counts(d.state.state))
                            .map(|d| d.name)
                            .collect()
                    })
                    .collect()
            })
            .await
            .unwrap();
            found.extend(judge(&running));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stopped.changed() => {}
            }
        }
        found
    });
    (stop, task)
}

#[tokio::test]
async fn a_lost_host_is_fenced_and_its_vms_fail_over_by_priority() {
    // hv2 has room for two of the three movable VMs.
    let mut bed = bed("fo-prio", &[("hv1", 16), ("hv2", 4)]).await;
    let (hv1, hv2) = (bed.hosts[0].name.clone(), bed.hosts[1].name.clone());
    for (name, priority) in [("hi", 10), ("mid", 5), ("lo", 1)] {
        bed.create(name, 1536, json!({"preferredNode": hv1, "priority": priority}))
            .await;
    }
    bed.create("pinned", 512, json!({"pinnedNode": hv1, "priority": 100}))
        .await;
    bed.create(
        "stay",
        512,
        json!({"preferredNode": hv1, "failover": "Never", "priority": 100}),
    )
    .await;
    for name in ["hi", "mid", "lo", "pinned", "stay"] {
        bed.started_on(name, &hv1).await;
    }

    let killed = Instant::now();
    bed.kill(0);
    let lost = bed
        .wait_hv(&hv1, "fenced", |hv| fence_state(hv) == Some(FenceState::Fenced))
        .await;
    let fence = lost.status.as_ref().unwrap().fence.clone().unwrap();
    assert_eq!(fence.reason, "NodeLost");
    assert_eq!(
        fence
            .vms
            .iter()
            .filter(|vm| vm.starts_with(&bed.namespace))
            .count(),
        5,
        "{fence:?}"
    );
    assert!(fence.fenced_at.is_some() && fence.until.is_some(), "{fence:?}");
    assert_eq!(ready(&lost), Some("Unknown"), "{:?}", lost.status);
    let powered_off = std::fs::read_to_string(power_fence_log()).unwrap_or_default();
    assert!(
        powered_off.lines().any(|node| node == hv1),
        "the power-fence hook ran for {hv1} before Ceph fencing: {powered_off:?}"
    );

    bed.started_on("hi", &hv2).await;
    bed.started_on("mid", &hv2).await;
    let failover_time = killed.elapsed();
    assert!(
        failover_time > GRACE - HEARTBEAT,
        "failed over before the grace ran out: {failover_time:?}"
    );
    let lo = bed
        .wait_vm("lo", "NodeLost with no room elsewhere", |vm| {
            condition(vm, "Ready").is_some_and(|c| c.0 == "Unknown" && c.2.contains("no other hypervisor"))
        })
        .await;
    assert_eq!(node(&lo), Some(hv1.as_str()));
    assert_eq!(condition(&lo, "Scheduled").unwrap().1, "NoHypervisorAvailable");
    let pinned = bed.vms.get("pinned").await.unwrap();
    let (status, reason, message) = condition(&pinned, "Ready").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("Unknown", "NodeLost"));
    assert!(message.contains("pinned there"), "{message}");
    let stay = bed.vms.get("stay").await.unwrap();
    assert!(condition(&stay, "Ready").unwrap().2.contains("failover is Never"));
    let notes = bed.events("FailedOver").await;
    assert!(
        notes.iter().any(|n| n.contains(&hv1) && n.contains(&hv2)),
        "{notes:?}"
    );

    // The host comes back: the agent destroys what it ran (it was fenced), the fence is lifted,
    // and what is still placed there starts again there.
    bed.restart(0);
    bed.wait_hv(&hv1, "fence lifted and Ready", |hv| {
        fence_state(hv).is_none() && ready(hv) == Some("True")
    })
    .await;
    for name in ["lo", "pinned", "stay"] {
        bed.started_on(name, &hv1).await;
    }
    let (on1, on2) = (bed.hosts[0].running().await, bed.hosts[1].running().await);
    assert!(on1.is_disjoint(&on2), "running on both hosts: {on1:?} {on2:?}");
    assert!(on2.contains(&format!("{}_hi", bed.namespace)), "{on2:?}");
    bed.tear_down().await;
}

#[tokio::test]
async fn out_of_service_fences_at_once_and_the_host_comes_back() {
    let bed = bed("fo-oos", &[("hv1", 16), ("hv2", 16)]).await;
    let (hv1, hv2) = (bed.hosts[0].name.clone(), bed.hosts[1].name.clone());
    bed.create("vm1", 256, json!({"preferredNode": hv1})).await;
    bed.started_on("vm1", &hv1).await;

    let marked = Instant::now();
    bed.set_spec(&hv1, json!({"outOfService": true})).await;
    bed.started_on("vm1", &hv2).await;
    assert!(
        marked.elapsed() < GRACE,
        "out of service should not wait for the grace: {:?}",
        marked.elapsed()
    );
    let fenced = bed
        .wait_hv(&hv1, "fenced", |hv| fence_state(hv) == Some(FenceState::Fenced))
        .await;
    assert_eq!(fenced.status.unwrap().fence.unwrap().reason, "OutOfService");
    // The agent, alive, destroys its copy once it learns of the fence.
    eventually("the copy on hv1 destroyed", async || {
        bed.hosts[0].running().await.is_empty().then_some(())
    })
    .await;

    bed.set_spec(&hv1, json!({"outOfService": false})).await;
    bed.wait_hv(&hv1, "fence lifted and Ready", |hv| {
        fence_state(hv).is_none() && ready(hv) == Some("True")
    })
    .await;
    bed.started_on("vm1", &hv2).await;
    bed.tear_down().await;
}

/// Starts a domain on `hv` as Pacemaker's VirtualDomain does from vm_manager's XML: its own
/// UUID, no owner marker.
async fn start_as_pacemaker(hv: &libvirt::Hypervisor, domain: &str, uuid: uuid::Uuid, memory_mib: u32) {
    let (hv, xml) = (
        hv.clone(),
        xml_with_uuid(memory_mib, uuid).replace("<name>x</name>", &format!("<name>{domain}</name>")),
    );
    tokio::task::spawn_blocking(move || {
        hv.define_domain(&xml, libvirt::DefineOptions::default())
            .unwrap()
            .start()
            .unwrap();
    })
    .await
    .unwrap();
}

fn xml_with_uuid(memory_mib: u32, uuid: uuid::Uuid) -> String {
    xml(memory_mib).replace("</name>", &format!("</name><uuid>{uuid}</uuid>"))
}

/// Moving a cluster over from Pacemaker: a VM adopted while Pacemaker runs it (vm_manager's
/// XML and UUID, no owner marker) is placed on the host where it runs, whatever its preferred
/// node, and taken over there as it runs; pinned to another host, it is placed nowhere and
/// says why until that copy stops. No VM ever runs on two hosts.
#[tokio::test]
async fn a_vm_pacemaker_runs_is_taken_over_where_it_runs_and_never_started_twice() {
    let bed = bed("fo-pcmk", &[("hv1", 16), ("hv2", 16)]).await;
    let (hv1, hv2) = (bed.hosts[0].name.clone(), bed.hosts[1].name.clone());
    let (stop, doubles) = watch_for_doubles(bed.hosts.iter().map(|h| h.hv.clone()).collect());
    let domain = |vm: &str| VmNames::new(&bed.namespace, vm).domain();
    let create = async |name: &str, uuid: uuid::Uuid, placement: Value| {
        let vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {
                "xml": xml_with_uuid(256, uuid), "stopTimeoutSeconds": 2,
                "systemDisk": {"source": {"blank": {}}, "size": "4Mi"},
                "placement": placement,
            }
        }))
        .unwrap();
        bed.created_vm(&vm).await;
    };

    // Started by Pacemaker on hv2, and seen there by its agent.
    let start_on_hv2 = async |domain: &str, uuid| {
        start_as_pacemaker(&bed.hosts[1].hv, domain, uuid, 256).await;
        bed.wait_hv(&hv2, "reports the domain Pacemaker runs", |hv| {
            hv.status
                .as_ref()
                .is_some_and(|s| s.started_outside.iter().any(|d| d == domain))
        })
        .await;
    };
    let uuid = uuid::Uuid::new_v4();
    start_on_hv2(&domain("moved"), uuid).await;
    create("moved", uuid, json!({"preferredNode": hv1})).await;
    bed.started_on("moved", &hv2).await;
    let (hv, name) = (bed.hosts[1].hv.clone(), domain("moved"));
    let marker = tokio::task::spawn_blocking(move || {
        let xml = hv
            .lookup_domain(&name)
            .unwrap()
            .xml(libvirt::XmlSource::Inactive)
            .unwrap();
        seapath_operator::domain_xml::extract_owner_marker(&xml).unwrap()
    })
    .await
    .unwrap();
    assert!(
        marker.is_some_and(|m| m.xml_sha256.is_some()),
        "the running domain is the agent's now"
    );
    bed.wait_hv(&hv2, "no domain started outside any more", |hv| {
        hv.status.as_ref().is_some_and(|s| s.started_outside.is_empty())
    })
    .await;

    let uuid = uuid::Uuid::new_v4();
    start_on_hv2(&domain("pinned"), uuid).await;
    create("pinned", uuid, json!({"pinnedNode": hv1})).await;
    let vm = bed
        .wait_vm("pinned", "not scheduled while Pacemaker runs it", |vm| {
            condition(vm, "Scheduled").is_some_and(|c| c.1 == "StartedOutsideOperator")
        })
        .await;
    assert_eq!(node(&vm), None, "{:?}", vm.status);
    let message = condition(&vm, "Scheduled").unwrap().2;
    assert!(message.contains(&hv2) && message.contains(&hv1), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!bed.hosts[0].running().await.contains(&domain("pinned")));

    // Pacemaker lets go of it (crm resource stop): the VM starts where it is pinned.
    let (hv, name) = (bed.hosts[1].hv.clone(), domain("pinned"));
    tokio::task::spawn_blocking(move || hv.lookup_domain(&name).unwrap().destroy().unwrap())
        .await
        .unwrap();
    bed.started_on("pinned", &hv1).await;

    stop.send(true).unwrap();
    assert_eq!(
        doubles.await.unwrap(),
        Vec::<String>::new(),
        "a VM ran on two hosts"
    );
    bed.tear_down().await;
}

/// A TCP relay to the API server that the test can cut, as a network partition would.
struct Relay {
    url: String,
    cut: watch::Sender<bool>,
}

async fn relay(upstream: &str) -> Relay {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut, cut_rx) = watch::channel(false);
    let upstream = upstream.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if *cut_rx.borrow() {
                continue;
            }
            let (upstream, mut cut_rx) = (upstream.clone(), cut_rx.clone());
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut_rx.wait_for(|cut| *cut) => {}
                }
            });
        }
    });
    Relay {
        url: format!("https://127.0.0.1:{port}"),
        cut,
    }
}

#[tokio::test]
async fn an_agent_cut_from_the_api_server_destroys_its_domains_before_they_run_elsewhere() {
    let mut bed = bed("fo-self", &[("hv1", 16), ("hv2", 16)]).await;
    let (hv1, hv2) = (bed.hosts[0].name.clone(), bed.hosts[1].name.clone());
    // hv1's agent reaches the API server through a relay the test cuts.
    bed.kill(0);
    let mut config = kube::Config::infer().await.unwrap();
    let upstream = config.cluster_url.authority().unwrap().to_string();
    let relay = relay(&upstream).await;
    config.cluster_url = relay.url.parse().unwrap();
    let cut_client = Client::try_from(config).unwrap();
    bed.hosts[0].start_agent(&cut_client);
    bed.create("vm1", 256, json!({"preferredNode": hv1})).await;
    bed.create("vm2", 256, json!({"preferredNode": hv1, "priority": 3}))
        .await;
    bed.started_on("vm1", &hv1).await;
    bed.started_on("vm2", &hv1).await;

    let (stop, doubles) = watch_for_doubles(vec![bed.hosts[0].hv.clone(), bed.hosts[1].hv.clone()]);
    let cut_at = Instant::now();
    relay.cut.send(true).unwrap();
    eventually("hv1's domains destroyed by its own agent", async || {
        bed.hosts[0].running().await.is_empty().then_some(())
    })
    .await;
    let self_fenced = cut_at.elapsed();
    bed.started_on("vm1", &hv2).await;
    bed.started_on("vm2", &hv2).await;
    assert!(
        self_fenced < GRACE,
        "the agent must destroy its domains before the controller's grace runs out: {self_fenced:?}"
    );

    // The partition heals: hv1 rejoins clean, and nothing ran twice meanwhile.
    relay.cut.send(false).unwrap();
    bed.wait_hv(&hv1, "fence lifted and Ready", |hv| {
        fence_state(hv).is_none() && ready(hv) == Some("True")
    })
    .await;
    stop.send(true).unwrap();
    let doubles = doubles.await.unwrap();
    assert!(doubles.is_empty(), "VMs ran on two hosts at once: {doubles:?}");
    bed.started_on("vm1", &hv2).await;

    // hv1's watch of its VMs resumed within seconds (kube's default back-off, grown during
    // the partition, would have kept it away for up to half a minute more).
    let rejoined = Instant::now();
    bed.create("vm3", 256, json!({"preferredNode": hv1})).await;
    bed.started_on("vm3", &hv1).await;
    assert!(
        rejoined.elapsed() < Duration::from_secs(10),
        "a VM placed on the rejoined host waited {:?} for its agent",
        rejoined.elapsed()
    );
    bed.tear_down().await;
}

#[tokio::test]
async fn an_agent_restart_within_the_grace_fails_nothing_over_and_status_waits_for_it() {
    let mut bed = bed("fo-short", &[("hv1", 16), ("hv2", 16)]).await;
    let hv1 = bed.hosts[0].name.clone();
    bed.create("vm1", 256, json!({"preferredNode": hv1})).await;
    let before = bed.started_on("vm1", &hv1).await;

    bed.kill(0);
    // Switched off and on while nobody runs it: Ready may not claim what no agent observed.
    for state in ["Stopped", "Started"] {
        bed.vms
            .patch(
                "vm1",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"state": state}})),
            )
            .await
            .unwrap();
    }
    let waiting = bed
        .wait_vm("vm1", "Ready waits for the agent", |vm| {
            vm.metadata.generation > before.metadata.generation
                && condition(vm, "Ready").is_some_and(|c| c.1 == "WaitingForAgent")
        })
        .await;
    assert_eq!(condition(&waiting, "Ready").unwrap().0, "False");
    tokio::time::sleep(GRACE / 2).await;
    bed.restart(0);
    let after = bed.started_on("vm1", &hv1).await;
    assert!(after.metadata.generation > before.metadata.generation);
    // Well past the grace: nothing was fenced, the VM never moved.
    tokio::time::sleep(GRACE).await;
    let hv = bed.hypervisors.get(&hv1).await.unwrap();
    assert_eq!(fence_state(&hv), None);
    assert_eq!(node(&bed.vms.get("vm1").await.unwrap()), Some(hv1.as_str()));
    assert!(bed.hosts[1].running().await.is_empty());
    bed.tear_down().await;
}

#[tokio::test]
async fn a_fencing_decision_recorded_by_a_dead_controller_is_carried_out_once() {
    let mut bed = bed("fo-resume", &[("hv1", 16), ("hv2", 16)]).await;
    let (hv1, hv2) = (bed.hosts[0].name.clone(), bed.hosts[1].name.clone());
    bed.create("vm1", 256, json!({"preferredNode": hv1})).await;
    bed.started_on("vm1", &hv1).await;
    bed.kill(0);
    // What a controller killed right after recording its decision leaves behind.
    let namespace = bed.vms.get("vm1").await.unwrap().namespace().unwrap();
    bed.hypervisors
        .patch_status(
            &hv1,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"fence": {
                "state": "Fencing", "reason": "NodeLost", "since": "2026-01-01T00:00:00Z",
                "vms": [format!("{namespace}/vm1")]
            }}})),
        )
        .await
        .unwrap();
    let recorded = Instant::now();
    bed.wait_hv(&hv1, "fenced", |hv| fence_state(hv) == Some(FenceState::Fenced))
        .await;
    assert!(
        recorded.elapsed() < GRACE,
        "the recorded decision is carried out at once, not when the grace runs out: {:?}",
        recorded.elapsed()
    );
    bed.started_on("vm1", &hv2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bed.hosts[1].running().await.len(), 1, "started once");
    bed.restart(0);
    bed.wait_hv(&hv1, "fence lifted and Ready", |hv| {
        fence_state(hv).is_none() && ready(hv) == Some("True")
    })
    .await;
    assert!(bed.hosts[0].running().await.is_empty());
    bed.tear_down().await;
}

fn ceph() -> Cluster {
    Cluster::connect(ClusterConfig {
        conf_path: testbed_env("CEPH_CONF").into(),
        client_id: std::env::var("SEAPATH_CEPH_CLIENT").unwrap_or_else(|_| "admin".into()),
        ..Default::default()
    })
    .expect("connect to Ceph")
}

/// How long the OSD blocklist keeps `addr` from now.
fn blocklisted_for(addr: &str) -> Duration {
    let entries = ceph().blocklist_list().expect("the OSD blocklist");
    let entry = entries
        .iter()
        .find(|e| e.addr == addr)
        .unwrap_or_else(|| panic!("{addr} is not on the blocklist: {entries:?}"));
    let until = jiff::Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.f%z", &entry.until)
        .unwrap_or_else(|e| panic!("the blocklist's expiry {}: {e}", entry.until));
    Duration::try_from(until.duration_since(jiff::Timestamp::now())).unwrap_or_default()
}

/// The RBD namespace of the host-path test namespace, where the QEMU guest's disk lives.
fn rbd_io(namespace: &str) -> IoCtx {
    ceph()
        .io_context(&testbed_env("SEAPATH_CEPH_POOL"), namespace)
        .expect("RBD namespace")
}

/// What the counting guest last wrote at offset 0 of its disk: (boot id, count).
async fn counter(namespace: &str, image: &str) -> Option<(String, u64)> {
    let (namespace, image) = (namespace.to_owned(), image.to_owned());
    tokio::task::spawn_blocking(move || {
        let io = rbd_io(&namespace);
        let disk = io.open_image_read_only(&image, None).ok()?;
        let mut buf = [0u8; 64];
        disk.read_at(0, &mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let line = text.strip_prefix("SEAPATH-COUNT:")?.lines().next()?.to_owned();
        let (boot, count) = line.rsplit_once(':')?;
        Some((boot.to_owned(), count.parse().ok()?))
    })
    .await
    .unwrap()
}

/// A QEMU guest that counts on its disk (boot id and count at offset 0, read by [`counter`]),
/// preferring `node`.
fn counting_guest(name: &str, node: &str) -> VirtualMachine {
    let xml = format!(
        "<domain type='qemu'><name>x</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type><kernel>{}</kernel><initrd>{}</initrd>\
         <cmdline>console=ttyS0 panic=-1 seapath.counter=1</cmdline></os><features><acpi/></features>\
         <on_poweroff>destroy</on_poweroff><devices><serial type='pty'/><memballoon model='none'/></devices></domain>",
        testbed_env("SEAPATH_GUEST_KERNEL"),
        testbed_env("SEAPATH_GUEST_INITRD"),
    );
    serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"xml": xml, "stopTimeoutSeconds": 2, "placement": {"preferredNode": node},
                 "systemDisk": {"source": {"blank": {}}, "size": "16Mi"}}
    }))
    .unwrap()
}

/// The PID of the QEMU process running guest `domain` (found by its `-name guest=` argument).
fn qemu_pid(domain: &str) -> Option<u32> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("guest={domain},")])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

#[tokio::test]
async fn a_cut_off_host_is_fenced_through_ceph_and_its_guest_boots_elsewhere_without_losing_a_write() {
    let mut bed = bed_with(
        "fo-qemu",
        Hosts::Qemu {
            namespace: common::operator::HOST_PATHS_NAMESPACE,
        },
    )
    .await;
    let (hv1, hv2) = (bed.hosts[0].name.clone(), bed.hosts[1].name.clone());
    let vm = format!("count{:04x}", rand_suffix());
    bed.created_vm(&counting_guest(&vm, &hv1)).await;
    bed.started_on(&vm, &hv1).await;
    // In RBD's default namespace (see namespace_map), where the domain is named like the VM.
    let (namespace, image) = (String::new(), format!("system_{vm}"));
    let domain = vm.clone();
    let first = eventually("the guest on hv1 counting on its disk", async || {
        counter(&namespace, &image).await.filter(|(_, n)| *n >= 3)
    })
    .await;

    // hv1 is cut off but alive: its agent dies, its QEMU is frozen mid-run.
    let old_qemu = qemu_pid(&domain).expect("the QEMU process of the guest on hv1");
    let killed = Instant::now();
    bed.kill(0);
    signal(old_qemu, "STOP");
    let fenced = bed
        .wait_hv(&hv1, "fenced", |hv| fence_state(hv) == Some(FenceState::Fenced))
        .await;
    let fence = fenced.status.unwrap().fence.unwrap();
    assert!(
        !fence.blocklisted.is_empty(),
        "the old QEMU's Ceph client is blocklisted: {fence:?}"
    );
    // For the fence's expiry (600 s here), not the hour librbd would set on breaking a lock.
    let left = blocklisted_for(&fence.blocklisted[0]);
    assert!(left <= Duration::from_secs(600), "blocklisted for {left:?}");
    bed.started_on(&vm, &hv2).await;
    let second = eventually("the guest booted on hv2 and counting", async || {
        counter(&namespace, &image)
            .await
            .filter(|(boot, n)| *boot != first.0 && *n >= 3)
    })
    .await;
    eprintln!(
        "failover of a QEMU guest: counting again on hv2 {:?} after the agent's death",
        killed.elapsed()
    );

    // The frozen guest wakes up and keeps writing: none of it may reach the disk.
    signal(old_qemu, "CONT");
    let watch_until = Instant::now() + Duration::from_secs(5);
    let mut last = second.1;
    while Instant::now() < watch_until {
        let (boot, n) = counter(&namespace, &image).await.expect("the counter");
        assert_eq!(boot, second.0, "a write of the fenced guest reached the disk");
        assert!(n >= last, "the counter went back: {n} < {last}");
        last = n;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // hv1's agent comes back: the stale domain is destroyed, the fence lifted.
    bed.restart(0);
    bed.wait_hv(&hv1, "fence lifted and Ready", |hv| {
        fence_state(hv).is_none() && ready(hv) == Some("True")
    })
    .await;
    assert!(!bed.hosts[0].running().await.contains(&domain));
    assert!(bed.hosts[1].running().await.contains(&domain));
    let (boot, _) = counter(&namespace, &image).await.unwrap();
    assert_eq!(boot, second.0);
    bed.tear_down().await;
}

/// What a VirtualMachineMigration of this test reached.
fn migration_phase(m: &VirtualMachineMigration) -> Option<MigrationPhase> {
    m.status.as_ref()?.phase
}

/// Live migration on two real QEMU hosts: a guest counting on its disk moves from hv1 to hv2
/// and keeps counting from the same boot (no restart), never executing on both hosts; the
/// migration records its downtime and the bytes sent. A migration the target refuses (a
/// domain of the same name and another UUID is defined there) fails with libvirt's reason and
/// leaves the guest running, still the same boot. A source agent killed as a migration starts
/// and restarted changes nothing: libvirt carries the guest over and the hand-over completes.
/// Draining the host live-migrates the guest off it. The controller killed as a migration
/// starts changes nothing either.
#[tokio::test]
async fn a_counting_guest_live_migrates_without_a_restart_and_a_refused_migration_leaves_it_running() {
    let bed = bed_with(
        "fo-mig",
        Hosts::Qemu {
            namespace: common::operator::HOST_PATHS_NAMESPACE,
        },
    )
    .await;
    let (hv1, hv2) = (bed.hosts[0].name.clone(), bed.hosts[1].name.clone());
    let vm = format!("mig{:04x}", rand_suffix());
    bed.created_vm(&counting_guest(&vm, &hv1)).await;
    bed.started_on(&vm, &hv1).await;
    let (namespace, image) = (String::new(), format!("system_{vm}"));
    let (boot, before) = eventually("the guest on hv1 counting on its disk", async || {
        counter(&namespace, &image).await.filter(|(_, n)| *n >= 3)
    })
    .await;
    let (stop, doubles) = watch_for_two_running(bed.hosts.iter().map(|h| h.hv.clone()).collect());
    let migrate = async |name: &str, to: &str| {
        bed.create_migration(name, &vm, Some(to)).await;
        bed.migration_ended(name).await
    };

    let started = Instant::now();
    let moved = migrate(&format!("{vm}-there"), &hv2).await;
    let status = moved.status.clone().unwrap();
    assert_eq!(status.phase, Some(MigrationPhase::Succeeded), "{status:?}");
    assert_eq!(status.mode, Some(MigrationMode::Live));
    assert!(status.bytes_transferred.is_some_and(|b| b > 0), "{status:?}");
    eprintln!(
        "live migration of a counting guest: {:?} end to end, {:?} ms of downtime",
        started.elapsed(),
        status.downtime_milliseconds
    );
    bed.started_on(&vm, &hv2).await;
    let (after_boot, after) = eventually("the guest counting on after the move", async || {
        counter(&namespace, &image).await.filter(|(_, n)| *n > before + 2)
    })
    .await;
    assert_eq!(after_boot, boot, "the guest was restarted instead of migrated");
    assert!(bed.hosts[1].running().await.contains(&vm));
    assert!(!bed.hosts[0].running().await.contains(&vm));

    // hv1 holds another machine of the VM's name: libvirt there refuses the incoming guest.
    // (libvirt undefines the source's copy last, once the guest runs on the target.)
    eventually("the guest's definition gone from hv1", async || {
        let (hv, name) = (bed.hosts[0].hv.clone(), vm.clone());
        let left = tokio::task::spawn_blocking(move || hv.find_domain(&name).ok().flatten())
            .await
            .unwrap();
        left.is_none().then_some(())
    })
    .await;
    let (hv, squatter) = (
        bed.hosts[0].hv.clone(),
        xml_with_uuid(128, uuid::Uuid::new_v4()).replace("<name>x</name>", &format!("<name>{vm}</name>")),
    );
    tokio::task::spawn_blocking(move || {
        hv.define_domain(&squatter, libvirt::DefineOptions::default())
            .unwrap()
    })
    .await
    .unwrap();
    let refused = migrate(&format!("{vm}-back"), &hv1).await;
    let status = refused.status.clone().unwrap();
    assert_eq!(status.phase, Some(MigrationPhase::Failed), "{status:?}");
    assert_eq!(status.reason.as_deref(), Some("MigrationFailed"), "{status:?}");
    assert!(
        status.message.as_deref().is_some_and(|m| m.contains(&hv2)),
        "the message says where the VM runs: {status:?}"
    );
    bed.started_on(&vm, &hv2).await;
    let (still, _) = eventually("the guest still counting on hv2", async || {
        counter(&namespace, &image).await.filter(|(_, n)| *n > after + 2)
    })
    .await;
    assert_eq!(still, boot, "a refused migration restarted the guest");
    let (hv, name) = (bed.hosts[0].hv.clone(), vm.clone());
    tokio::task::spawn_blocking(move || {
        hv.lookup_domain(&name)
            .unwrap()
            .undefine(libvirt::UndefineOptions::everything())
            .unwrap()
    })
    .await
    .unwrap();

    // The source's agent dies as the migration starts and comes back: libvirt, peer to peer,
    // carries the guest over by itself, and the agents and the controller finish the hand-over.
    let home = format!("{vm}-home");
    bed.create_migration(&home, &vm, Some(&hv1)).await;
    let vms: Api<VirtualMachine> = Api::namespaced(bed.client.clone(), &bed.namespace);
    eventually("the source told to migrate", async || {
        let labels = vms.get(&vm).await.ok()?.metadata.labels?;
        (labels.get("seapath.lfenergy.org/migration-target") == Some(&hv1)).then_some(())
    })
    .await;
    let mut bed = bed;
    bed.kill(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    bed.restart(1);
    bed.migration_succeeded(&home).await;
    bed.started_on(&vm, &hv1).await;
    let (last, _) = eventually("the guest counting on hv1 again", async || {
        counter(&namespace, &image).await.filter(|(_, n)| *n > after + 10)
    })
    .await;
    assert_eq!(last, boot, "the guest was restarted");

    // Draining hv1 live-migrates the guest off it.
    bed.set_spec(&hv1, json!({"unschedulable": true, "drain": true}))
        .await;
    bed.wait_hv(&hv1, "drained", |hv| {
        drain(hv).is_some_and(|d| d.phase == seapath_operator::api::DrainPhase::Drained)
    })
    .await;
    bed.started_on(&vm, &hv2).await;
    let (drained_boot, _) = eventually("the guest counting on hv2 after the drain", async || {
        counter(&namespace, &image).await.filter(|(_, n)| *n > after + 20)
    })
    .await;
    assert_eq!(
        drained_boot, boot,
        "the drain restarted the guest instead of migrating it"
    );
    bed.set_spec(&hv1, json!({"unschedulable": false, "drain": false}))
        .await;
    bed.wait_hv(&hv1, "uncordoned", |hv| {
        !hv.spec.unschedulable && drain(hv).is_none()
    })
    .await;

    // The controller dies as a migration starts and comes back: libvirt carries the guest over,
    // and the new controller finishes the hand-over from what the agents report. (The drain's
    // migration ends first: one migration of a VM runs at a time.)
    eventually("the drain's migrations ended", async || {
        let all = bed.migrations().list(&ListParams::default()).await.ok()?;
        let mut mine = all.items.iter().filter(|m| m.spec.vm_name == vm);
        mine.all(|m| migration_phase(m).is_some_and(MigrationPhase::is_final))
            .then_some(())
    })
    .await;
    let again = format!("{vm}-again");
    bed.create_migration(&again, &vm, Some(&hv1)).await;
    eventually("the source told to migrate", async || {
        let labels = vms.get(&vm).await.ok()?.metadata.labels?;
        (labels.get("seapath.lfenergy.org/migration-target") == Some(&hv1)).then_some(())
    })
    .await;
    bed.operator.kill_controller(Duration::from_secs(2)).await;
    bed.migration_succeeded(&again).await;
    bed.started_on(&vm, &hv1).await;
    let (again_boot, _) = eventually(
        "the guest counting on hv1 after the controller's death",
        async || counter(&namespace, &image).await.filter(|(_, n)| *n > after + 30),
    )
    .await;
    assert_eq!(again_boot, boot, "the guest was restarted");

    stop.send(true).unwrap();
    assert_eq!(
        doubles.await.unwrap(),
        Vec::<String>::new(),
        "a guest ran on two hosts"
    );
    for name in [format!("{vm}-there"), format!("{vm}-back"), home, again] {
        bed.migrations()
            .delete(&name, &DeleteParams::default())
            .await
            .ok();
    }
    bed.tear_down().await;
}

/// The drain progress of hypervisor `hv`.
fn drain(hv: &Hypervisor) -> Option<&seapath_operator::api::DrainStatus> {
    hv.status.as_ref()?.drain.as_ref()
}

/// Draining a host: its VMs leave two at a time, highest priority first, by stop and start
/// here (the test driver cannot live-migrate), each where there is room. Those that find none
/// and a pinned one stay, each with its reason; the host takes no new VM meanwhile; no VM runs
/// on two hosts. Uncordoned, the host is back and the progress goes.
#[tokio::test]
async fn a_drained_host_empties_by_priority_within_the_capacity_left() {
    let bed = bed("fo-drain", &[("hv1", 64), ("hv2", 5), ("hv3", 5)]).await;
    let (hv1, hv2, hv3) = (
        bed.hosts[0].name.clone(),
        bed.hosts[1].name.clone(),
        bed.hosts[2].name.clone(),
    );
    let (stop, doubles) = watch_for_doubles(bed.hosts.iter().map(|h| h.hv.clone()).collect());
    let names: Vec<String> = (0..8).map(|i| format!("d{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {
                "xml": xml(2048), "stopTimeoutSeconds": 2,
                "systemDisk": {"source": {"blank": {}}, "size": "4Mi"},
                "placement": {"preferredNode": hv1, "priority": i * 10},
                "migration": {"live": false},
            }
        }))
        .unwrap();
        bed.created_vm(&vm).await;
    }
    bed.create("pinned", 512, json!({"pinnedNode": hv1})).await;
    for name in names.iter().chain([&"pinned".to_owned()]) {
        bed.started_on(name, &hv1).await;
    }

    bed.set_spec(&hv1, json!({"unschedulable": true, "drain": true}))
        .await;
    // hv2 and hv3 (5 GiB each) take two 2 GiB VMs each: the four most important.
    let waited = bed.wait_hv(&hv1, "drained as far as the capacity goes", |hv| {
        drain(hv).is_some_and(|d| d.vms_left == 5 && d.moving.is_empty() && d.blocked.len() == 5)
    });
    let Ok(drained) = std::panic::AssertUnwindSafe(waited).catch_unwind().await else {
        panic!("the drain did not settle:\n{}", bed.drain_story(&hv1).await);
    };
    let blocked = drain(&drained).unwrap().blocked.join("\n");
    assert!(blocked.contains("pinned: pinned to this hypervisor"), "{blocked}");
    assert!(blocked.contains("NoHypervisorAvailable"), "{blocked}");
    for (i, name) in names.iter().enumerate() {
        let vm = bed.vms.get(name).await.unwrap();
        let at = node(&vm).unwrap_or_default().to_owned();
        if i >= 4 {
            assert!(
                at == hv2 || at == hv3,
                "{name} (priority {}) left hv1: {at}\n{}",
                i * 10,
                bed.drain_story(&hv1).await
            );
            bed.started_on(name, &at).await;
        } else {
            assert_eq!(at, hv1, "{name} (priority {}) stays for lack of room", i * 10);
        }
    }
    // A draining host takes no new VM.
    bed.create("newcomer", 512, json!({"preferredNode": hv1})).await;
    let newcomer = bed.wait_vm("newcomer", "placed", |vm| node(vm).is_some()).await;
    assert_ne!(node(&newcomer), Some(hv1.as_str()));

    bed.set_spec(&hv1, json!({"unschedulable": false, "drain": false}))
        .await;
    bed.wait_hv(&hv1, "no drain progress once uncordoned", |hv| {
        drain(hv).is_none()
    })
    .await;
    stop.send(true).unwrap();
    assert_eq!(
        doubles.await.unwrap(),
        Vec::<String>::new(),
        "a VM ran on two hosts"
    );
    bed.tear_down().await;
}

/// Room that frees up goes to the VM of highest priority waiting for it, whichever waited
/// first; the other is not placed beside it on a host without room for both.
#[tokio::test]
async fn room_that_frees_up_goes_to_the_highest_priority_waiting() {
    let bed = bed("fo-queue", &[("hv1", 4)]).await;
    let hv1 = bed.hosts[0].name.clone();
    bed.set_spec(&hv1, json!({"unschedulable": true})).await;
    let no_room = |vm: &VirtualMachine| {
        condition(vm, "Scheduled").is_some_and(|c| c.0 == "False" && c.1 == "NoHypervisorAvailable")
    };
    // Named so that the low one comes first in every listing.
    bed.create("alow", 3072, json!({"priority": 1})).await;
    bed.wait_vm("alow", "waiting for a host", no_room).await;
    bed.create("bhigh", 3072, json!({"priority": 9})).await;
    bed.wait_vm("bhigh", "waiting for a host", no_room).await;

    bed.set_spec(&hv1, json!({"unschedulable": false})).await;
    bed.started_on("bhigh", &hv1).await;
    // Told that the VMs ahead take the room while bhigh is not placed yet, then that none is left.
    let low = bed.wait_vm("alow", "no room left", no_room).await;
    assert_eq!(node(&low), None, "placed on a host without room for it");
    bed.tear_down().await;
}

/// A VM of `memory_mib` labelled `pair: PAIR`, preferring `node`, moved by stop and start (the
/// simulated hosts cannot live-migrate).
fn paired_vm(name: &str, pair: &str, node: &str, priority: i32, placement: Value) -> VirtualMachine {
    let mut spec_placement = json!({"preferredNode": node, "priority": priority});
    spec_placement
        .as_object_mut()
        .unwrap()
        .extend(placement.as_object().cloned().unwrap_or_default());
    serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"pair": pair}},
        "spec": {
            "xml": xml(1024), "stopTimeoutSeconds": 2,
            "systemDisk": {"source": {"blank": {}}, "size": "4Mi"},
            "placement": spec_placement,
            "migration": {"live": false},
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn a_drain_of_twenty_vms_keeps_redundant_pairs_apart_and_survives_an_agent_restart() {
    let mut bed = bed("fo-rules", &[("hv1", 64), ("hv2", 24), ("hv3", 6)]).await;
    let names: Vec<String> = bed.hosts.iter().map(|h| h.name.clone()).collect();
    let (hv1, hv2, hv3) = (names[0].clone(), names[1].clone(), names[2].clone());
    // Eight protection VMs on hv1, each with its redundant twin on hv2 (anti-affinity by label,
    // required), and twelve VMs without rules on hv1: 20 VMs of 1 GiB on the drained host.
    let apart =
        |i: usize| json!({"antiAffinity": [{"selector": {"matchLabels": {"pair": format!("p{i}")}}}]});
    for i in 0..8 {
        let twin = paired_vm(&format!("twin{i}"), &format!("p{i}"), &hv2, 0, json!({}));
        bed.created_vm(&twin).await;
        bed.started_on(&format!("twin{i}"), &hv2).await;
        let protection = paired_vm(
            &format!("prot{i}"),
            &format!("p{i}"),
            &hv1,
            100 + i as i32,
            apart(i),
        );
        bed.created_vm(&protection).await;
    }
    for i in 0..12 {
        let plain = paired_vm(&format!("svc{i}"), "none", &hv1, 0, json!({}));
        bed.created_vm(&plain).await;
    }
    let on_hv1: Vec<String> = (0..8)
        .map(|i| format!("prot{i}"))
        .chain((0..12).map(|i| format!("svc{i}")))
        .collect();
    for name in &on_hv1 {
        bed.started_on(name, &hv1).await;
    }
    let prot = bed
        .wait_vm("prot0", "rules reported", |vm| {
            condition(vm, "PlacementRulesMet").is_some()
        })
        .await;
    assert_eq!(
        condition(&prot, "PlacementRulesMet").map(|c| (c.0, c.1)),
        Some(("True".into(), "RulesMet".into()))
    );
    // A twin's placement is reported too: another VM's rule names it.
    let twin = bed.vms.get("twin0").await.unwrap();
    assert_eq!(
        condition(&twin, "PlacementRulesMet").map(|c| c.0),
        Some("True".into())
    );

    let (stop_doubles, doubles) = watch_for_doubles(bed.hosts.iter().map(|h| h.hv.clone()).collect());
    let namespace = bed.namespace.clone();
    let twins_together = move |running: &[BTreeSet<String>]| {
        let mut found = Vec::new();
        for host in running {
            for i in 0..8 {
                let (a, b) = (format!("{namespace}_prot{i}"), format!("{namespace}_twin{i}"));
                if host.contains(&a) && host.contains(&b) {
                    found.push(format!("prot{i} and twin{i} on one host"));
                }
            }
        }
        found
    };
    let (stop_pairs, pairs) = watch_for(
        bed.hosts.iter().map(|h| h.hv.clone()).collect(),
        |state| state.is_active(),
        twins_together,
    );

    bed.set_spec(&hv1, json!({"unschedulable": true, "drain": true}))
        .await;
    // The source's agent dies while VMs move, and comes back within the grace.
    bed.wait_hv(&hv1, "moving VMs", |hv| {
        drain(hv).is_some_and(|d| d.vms_left <= 17 && !d.moving.is_empty())
    })
    .await;
    bed.kill(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    bed.restart(0);

    // hv2 holds every twin: the protection VMs may go to hv3 only, which takes six; the two
    // least important stay, blocked by their rule. The twelve others go to hv2.
    let drained = bed
        .wait_hv(&hv1, "drained as far as the rules and capacity go", |hv| {
            drain(hv).is_some_and(|d| d.vms_left == 2 && d.moving.is_empty() && d.blocked.len() == 2)
        })
        .await;
    let blocked = drain(&drained).unwrap().blocked.join("\n");
    for i in [0, 1] {
        assert!(
            blocked.contains(&format!("prot{i}: "))
                && blocked.contains(seapath_operator::controller::placement::REASON_RULES_UNSATISFIABLE),
            "{blocked}"
        );
    }
    for i in 0..8 {
        let at = if i < 2 { &hv1 } else { &hv3 };
        bed.started_on(&format!("prot{i}"), at).await;
    }
    for i in 0..12 {
        bed.started_on(&format!("svc{i}"), &hv2).await;
    }
    // Asked for by name, a target the rule forbids is refused before anything moves.
    bed.create_migration("refused", "prot0", Some(&hv2)).await;
    let status = bed.migration_ended("refused").await.status.unwrap();
    assert_eq!(status.phase, Some(MigrationPhase::Failed));
    assert_eq!(status.reason.as_deref(), Some("TargetBreaksPlacementRule"));
    assert!(
        status.message.as_deref().is_some_and(|m| m.contains("twin0")),
        "{:?}",
        status.message
    );

    stop_doubles.send(true).unwrap();
    stop_pairs.send(true).unwrap();
    assert_eq!(
        doubles.await.unwrap(),
        Vec::<String>::new(),
        "a VM ran on two hosts"
    );
    assert_eq!(
        pairs.await.unwrap(),
        Vec::<String>::new(),
        "a required rule was broken"
    );
    bed.set_spec(&hv1, json!({"unschedulable": false, "drain": false}))
        .await;
    bed.tear_down().await;
}
