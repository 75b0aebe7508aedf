//! Integration tests of the node agent (`seapath_operator::agent`) against the real test bed:
//! the API server, the micro Ceph cluster and libvirt's test driver (one node file per
//! simulated hypervisor).
//!
//! The tests play the controller's part themselves: they create the VirtualMachine in a fresh
//! namespace, put the XML to run in the RBD metadata of a tiny system image (RBD namespace =
//! Kubernetes namespace), set `StorageReady=True` and the node label. Agents run in-process as
//! tokio tasks. Every test uses its own node names (`<namespace>-a`, `-b`), so tests can run in
//! parallel without one test's agent touching another test's VMs.
//!
//! With node files every libvirt connection has its own state: each agent keeps one connection
//! for its lifetime, and the test shares that very connection
//! ([`Agent::with_connection`]) to look at the simulated host, to "crash" a domain behind the
//! agent's back (destroy) and to plant domains for the sweep.
//!
//! Run with hack/test.sh, or `eval "$(hack/testbed.sh env)"` and `cargo test --test agent`.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use seapath_operator::agent::{Agent, AgentConfig, AgentError, AgentStats, CephConfig, CephSecretConfig};
use seapath_operator::api::{DomainState as Reported, Hypervisor, NODE_LABEL, VirtualMachine};
use seapath_operator::ceph::{Cluster, ClusterConfig, ImageOptions, IoCtx};
use seapath_operator::domain_xml::{self, DomainOwner, OwnerMarker};
use seapath_operator::libvirt::{self, DefineOptions, DomainState, XmlSource};
use seapath_operator::naming::{META_XML, VmNames};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use common::{admin_client, fresh_namespace, install_crds, testbed_env};

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(40);
const POLL: Duration = Duration::from_millis(100);
const RESYNC: Duration = Duration::from_millis(500);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The simulated hypervisors' URIs (hv1, hv2).
fn node_uris() -> (String, String) {
    let raw = testbed_env("SEAPATH_LIBVIRT_NODES");
    let uris: Vec<String> = raw
        .split(',')
        .filter_map(|e| e.split_once('=').map(|(_, uri)| uri.trim().to_owned()))
        .collect();
    assert!(
        uris.len() >= 2 && uris.iter().all(|u| u.starts_with("test:///")),
        "SEAPATH_LIBVIRT_NODES must name two test-driver node files, got '{raw}': run the tests with \
         hack/test.sh (or eval $(hack/testbed.sh env))"
    );
    (uris[0].clone(), uris[1].clone())
}

fn ceph_config() -> CephConfig {
    // The agents' own Ceph user (read-only caps), as in a cluster.
    let (id, options) = common::operator::role_ceph_user("AGENT");
    let mut ceph = CephConfig::new(testbed_env("CEPH_CONF"), id, testbed_env("SEAPATH_CEPH_POOL"));
    // Several Ceph clients in one process: no admin socket each (they would share a path).
    ceph.options = options;
    ceph.options.push(("admin_socket".into(), String::new()));
    ceph
}

fn agent_config(node: &str, uri: &str) -> AgentConfig {
    let mut config = AgentConfig::new(node, uri, ceph_config());
    config.heartbeat_interval = Duration::from_millis(500);
    config.resync_period = RESYNC;
    // XML edited in RBD behind the agent's back is seen at the next resync.
    config.stored_xml_recheck = RESYNC;
    config.restart_backoff_base = Duration::from_secs(1);
    config.restart_backoff_max = Duration::from_secs(2);
    config.max_consecutive_failures = 3;
    config.stable_period = Some(Duration::from_secs(4));
    config.default_stop_timeout = Duration::from_secs(5);
    config
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// An agent running as a tokio task, with the libvirt connection it uses.
struct RunningAgent {
    node: String,
    hv: libvirt::Hypervisor,
    stats: Arc<AgentStats>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AgentError>>>,
}

impl RunningAgent {
    /// Starts an agent on `uri`, sharing its connection with the test.
    async fn start(client: &Client, node: &str, uri: &str, tweak: impl FnOnce(&mut AgentConfig)) -> Self {
        let connect_uri = uri.to_owned();
        let hv = blocking(move || libvirt::Hypervisor::connect(&connect_uri))
            .await
            .unwrap_or_else(|e| panic!("connect to {uri}: {e}"));
        Self::start_on(client, node, hv, tweak).await
    }

    /// Starts an agent on an open connection (the same simulated host as an earlier agent).
    async fn start_on(
        client: &Client,
        node: &str,
        hv: libvirt::Hypervisor,
        tweak: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        let mut config = agent_config(node, hv.uri());
        tweak(&mut config);
        let agent = Agent::new(client.clone(), config)
            .expect("valid agent config")
            .with_connection(hv.clone());
        let stats = agent.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(async move {
            let _ = stopped.await;
        }));
        RunningAgent {
            node: node.to_owned(),
            hv,
            stats,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("agent stops in time")
                .expect("agent task")
                .expect("agent ran without error");
        }
    }

    /// The state of domain `name` on this agent's host.
    async fn domain_state(&self, name: &str) -> Option<DomainState> {
        let hv = self.hv.clone();
        let name = name.to_owned();
        blocking(move || {
            hv.find_domain(&name)
                .expect("look up domain")
                .map(|d| d.state().expect("domain state").state)
        })
        .await
    }

    /// The inactive XML of domain `name`.
    async fn domain_xml(&self, name: &str) -> String {
        let hv = self.hv.clone();
        let name = name.to_owned();
        blocking(move || hv.lookup_domain(&name).unwrap().xml(XmlSource::Inactive).unwrap()).await
    }

    async fn wait_domain(&self, name: &str, what: &str, pred: impl Fn(Option<DomainState>) -> bool) {
        let start = Instant::now();
        loop {
            let state = self.domain_state(name).await;
            if pred(state) {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "node {}: domain {name} never became {what} (last: {state:?})",
                self.node
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Destroys a domain behind the agent's back (a guest crash as libvirt shows it).
    async fn crash(&self, name: &str) {
        let hv = self.hv.clone();
        let name = name.to_owned();
        blocking(move || hv.lookup_domain(&name).unwrap().destroy().unwrap()).await
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A fresh Kubernetes namespace with the RBD namespace of the same name.
struct Bed {
    client: Client,
    ns: String,
    io: IoCtx,
}

impl Bed {
    async fn new(prefix: &str) -> Self {
        init_tracing();
        let client = admin_client().await;
        install_crds(&client).await;
        let ns = fresh_namespace(&client, prefix).await;
        let pool = testbed_env("SEAPATH_CEPH_POOL");
        let rbd_ns = ns.clone();
        let config = ClusterConfig {
            conf_path: testbed_env("CEPH_CONF").into(),
            client_id: testbed_env("SEAPATH_CEPH_CLIENT"),
            mount_timeout: Duration::from_secs(10),
            options: vec![("admin_socket".into(), String::new())],
        };
        let io = blocking(move || {
            let cluster = Cluster::connect(config).expect(
                "connect to the test bed's Ceph: run the tests with hack/test.sh (or eval $(hack/testbed.sh env))",
            );
            cluster
                .io_context(&pool, "")
                .unwrap()
                .create_namespace(&rbd_ns)
                .unwrap();
            cluster.io_context(&pool, &rbd_ns).unwrap()
        })
        .await;
        Bed { client, ns, io }
    }

    fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn domain(&self, vm: &str) -> String {
        VmNames::new(&self.ns, vm).domain()
    }

    /// Stores `xml` as the VM's XML to run (metadata `xml` of `system_NAME`).
    async fn store_xml(&self, vm: &str, xml: String) {
        let io = self.io.clone();
        let image = VmNames::new(&self.ns, vm).system_image();
        blocking(move || {
            if !io.list_images().unwrap().contains(&image) {
                io.create_image(&image, MIB, &ImageOptions::default()).unwrap();
            }
            io.open_image(&image)
                .unwrap()
                .metadata_set(META_XML, &xml)
                .unwrap();
        })
        .await
    }

    /// Does the controller's part: RBD image with the XML, the object, the node label and
    /// `StorageReady=True`.
    async fn create_vm(&self, name: &str, node: &str, state: &str) -> Uuid {
        let uuid = Uuid::new_v4();
        let xml = test_xml(name, uuid, 64);
        self.store_xml(name, xml.clone()).await;
        let vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": { "name": name, "labels": { NODE_LABEL: node } },
            "spec": {
                "state": state,
                "xml": xml,
                "systemDisk": { "source": { "blank": {} }, "size": "1Mi" },
                "stopTimeoutSeconds": 5,
            },
        }))
        .unwrap();
        self.vms()
            .create(&PostParams::default(), &vm)
            .await
            .expect("create VM");
        let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
        let status = json!({ "status": { "conditions": [{
            "type": "StorageReady", "status": "True", "reason": "Test",
            "message": "set by the test", "lastTransitionTime": now.to_string(),
        }]}});
        self.vms()
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("set StorageReady");
        uuid
    }

    async fn patch_spec(&self, name: &str, spec: serde_json::Value) {
        self.vms()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "spec": spec })),
            )
            .await
            .expect("patch VM spec");
    }

    async fn set_state(&self, name: &str, state: &str) {
        self.patch_spec(name, json!({ "state": state })).await;
    }

    async fn set_node(&self, name: &str, node: &str) {
        let patch = json!({ "metadata": { "labels": { NODE_LABEL: node } } });
        self.vms()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("move VM");
    }

    /// Waits until the VM satisfies `pred`; panics with its status otherwise.
    async fn wait_vm(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&VirtualMachine) -> bool,
    ) -> VirtualMachine {
        let pred = &pred;
        wait_until(
            what,
            move || async move { self.vms().get(name).await.ok().filter(|vm| pred(vm)) },
            move || async move { format!("{:#?}", self.vms().get(name).await.map(|vm| vm.status)) },
        )
        .await
    }

    /// Waits until `status.domain` says `state` on `node`.
    async fn wait_domain_status(&self, name: &str, node: &str, state: Reported) -> VirtualMachine {
        self.wait_vm(name, &format!("{name} {state:?} on {node}"), |vm| {
            domain_status(vm).is_some_and(|d| d.node == node && d.state == state)
        })
        .await
    }
}

fn domain_status(vm: &VirtualMachine) -> Option<&seapath_operator::api::DomainStatus> {
    vm.status.as_ref()?.domain.as_ref()
}

fn restarts(vm: &VirtualMachine) -> (i32, i32) {
    vm.status
        .as_ref()
        .and_then(|s| s.restarts.as_ref())
        .map_or((0, 0), |r| (r.consecutive_failures, r.total))
}

/// Polls `probe` until it gives something; `describe` says what was seen on timeout.
async fn wait_until<T, F, Fut, D, DFut>(what: &str, probe: F, describe: D) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
    D: Fn() -> DFut,
    DFut: Future<Output = String>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if start.elapsed() > WAIT {
            panic!("timed out waiting for {what}; last seen: {}", describe().await);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A domain the test driver runs.
fn test_xml(name: &str, uuid: Uuid, memory_mib: u32) -> String {
    format!(
        "<domain type='test'>\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n  \
         <memory unit='MiB'>{memory_mib}</memory>\n  <vcpu>1</vcpu>\n  <os>\n    <type>hvm</type>\n  </os>\n</domain>\n"
    )
}

async fn wait_hypervisor(
    client: &Client,
    node: &str,
    what: &str,
    pred: impl Fn(&Hypervisor) -> bool,
) -> Hypervisor {
    let api: Api<Hypervisor> = Api::all(client.clone());
    let (api, pred) = (&api, &pred);
    wait_until(
        what,
        move || async move { api.get(node).await.ok().filter(|h| pred(h)) },
        move || async move { format!("{:#?}", api.get(node).await.map(|h| h.status)) },
    )
    .await
}

fn ready(h: &Hypervisor) -> Option<(String, String, String)> {
    let c = h
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hypervisors_register_with_heartbeat() {
    let bed = Bed::new("ag-hv").await;
    let (uri1, uri2) = node_uris();
    let a = RunningAgent::start(&bed.client, &format!("{}-a", bed.ns), &uri1, |_| {}).await;
    let b = RunningAgent::start(&bed.client, &format!("{}-b", bed.ns), &uri2, |_| {}).await;
    for (agent, uri) in [(&a, &uri1), (&b, &uri2)] {
        let h = wait_hypervisor(&bed.client, &agent.node, "Ready=True", |h| {
            ready(h).is_some_and(|(s, _, _)| s == "True")
        })
        .await;
        let status = h.status.clone().unwrap();
        assert_eq!(status.libvirt_uri.as_deref(), Some(uri.as_str()));
        assert_eq!(status.hypervisor.as_deref(), Some("TEST 0.0.2"));
        assert!(status.libvirt_version.is_some());
        assert_eq!(status.cpus, 8);
        assert_eq!(status.memory_mib, 16384);
        assert_eq!(status.running_vms, 0);
        let (_, reason, message) = ready(&h).unwrap();
        assert_eq!(reason, "LibvirtReachable");
        assert!(message.contains(uri.as_str()), "{message}");
        assert!(!h.spec.unschedulable);
        // The agent owns status fields only: no spec field is managed by it.
        let managed = h.metadata.managed_fields.clone().unwrap_or_default();
        for entry in managed
            .iter()
            .filter(|m| m.manager.as_deref() == Some("seapath-agent"))
        {
            let fields = serde_json::to_string(&entry.fields_v1).unwrap();
            assert!(!fields.contains("unschedulable"), "{fields}");
        }
        // The heartbeat moves on; the condition's transition time does not.
        let first = status.heartbeat_time.clone().unwrap().0;
        let transition = h.status.as_ref().unwrap().conditions[0]
            .last_transition_time
            .clone();
        let later = wait_hypervisor(&bed.client, &agent.node, "a later heartbeat", |h| {
            h.status
                .as_ref()
                .and_then(|s| s.heartbeat_time.as_ref())
                .is_some_and(|t| t.0 > first)
        })
        .await;
        assert_eq!(
            later.status.unwrap().conditions[0].last_transition_time,
            transition
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}

/// Placement reads the Hypervisor's running VMs and memory: a domain started or stopped shows
/// there at once, not at the next heartbeat (an hour away here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn domain_changes_reach_the_hypervisor_before_the_next_heartbeat() {
    let bed = Bed::new("ag-hvchg").await;
    let (uri1, _) = node_uris();
    let a = RunningAgent::start(&bed.client, &format!("{}-a", bed.ns), &uri1, |c| {
        c.heartbeat_interval = Duration::from_secs(3600);
        // A one-hour heartbeat would otherwise trip the self-fence deadline.
        c.self_fence_after = Duration::ZERO;
    })
    .await;
    wait_hypervisor(&bed.client, &a.node, "registered", |h| h.status.is_some()).await;
    bed.create_vm("vm1", &a.node, "Started").await;
    bed.wait_domain_status("vm1", &a.node, Reported::Running).await;
    let vm_key = format!("{}/vm1", bed.ns);
    let h = wait_hypervisor(
        &bed.client,
        &a.node,
        "vm1 running in the Hypervisor status",
        |h| {
            h.status
                .as_ref()
                .is_some_and(|s| s.running_vms == 1 && s.vms.contains(&vm_key))
        },
    )
    .await;
    assert_eq!(h.status.unwrap().allocated_memory_mib, 64);
    bed.set_state("vm1", "Stopped").await;
    wait_hypervisor(
        &bed.client,
        &a.node,
        "no VM running in the Hypervisor status",
        |h| h.status.as_ref().is_some_and(|s| s.running_vms == 0),
    )
    .await;
    a.shutdown().await;
}

/// The agent keeps the stored XML it read (an hour here) to compare with the domain, but a
/// start always reads RBD again: a guest that crashes after its XML changed in RBD comes back
/// with the new XML (its spec, hence the generation, did not change).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_reads_the_stored_xml_afresh() {
    let bed = Bed::new("ag-xmlcopy").await;
    let (uri1, _) = node_uris();
    let a = RunningAgent::start(&bed.client, &format!("{}-a", bed.ns), &uri1, |c| {
        c.stored_xml_recheck = Duration::from_secs(3600);
    })
    .await;
    let dom = bed.domain("vm1");
    let uuid = bed.create_vm("vm1", &a.node, "Started").await;
    bed.wait_domain_status("vm1", &a.node, Reported::Running).await;
    let memory = |xml: &str| domain_xml::extract_memory_kib(xml).unwrap();
    assert_eq!(memory(&a.domain_xml(&dom).await), 64 * 1024);

    bed.store_xml("vm1", test_xml("vm1", uuid, 96)).await;
    // Resyncs meanwhile compare with the kept copy: nothing to report.
    tokio::time::sleep(RESYNC * 3).await;
    let vm = bed.vms().get("vm1").await.unwrap();
    assert_ne!(
        domain_status(&vm).and_then(|d| d.reason.clone()).as_deref(),
        Some("RestartRequired")
    );
    a.crash(&dom).await;
    bed.wait_vm("vm1", "restarted after the crash", |vm| {
        restarts(vm).1 == 1 && domain_status(vm).is_some_and(|d| d.state == Reported::Running)
    })
    .await;
    assert_eq!(
        memory(&a.domain_xml(&dom).await),
        96 * 1024,
        "restarted from the new XML"
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_libvirt_makes_the_hypervisor_not_ready() {
    let bed = Bed::new("ag-down").await;
    let node = format!("{}-a", bed.ns);
    let uri = format!("test:///nonexistent/{}/node.xml", bed.ns);
    let config = agent_config(&node, &uri);
    let agent = Agent::new(bed.client.clone(), config).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
    }));
    let h = wait_hypervisor(&bed.client, &node, "Ready=False", |h| {
        ready(h).is_some_and(|(s, _, _)| s == "False")
    })
    .await;
    let (_, reason, message) = ready(&h).unwrap();
    assert_eq!(reason, "LibvirtUnreachable");
    assert!(message.contains(&uri), "the message names the URI: {message}");
    assert!(message.contains("connect"), "{message}");
    assert!(h.status.unwrap().heartbeat_time.is_some());
    // A VM placed there is not acted on, and the agent keeps running.
    bed.create_vm("vm1", &node, "Started").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let vm = bed.vms().get("vm1").await.unwrap();
    assert!(domain_status(&vm).is_none(), "{:?}", vm.status);
    assert!(!task.is_finished());
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_lifecycle_follows_spec_and_placement() {
    let bed = Bed::new("ag-life").await;
    let (uri1, uri2) = node_uris();
    // Agent a also keeps a Ceph secret: the test driver has no secrets, which the agent
    // notices and reports once without failing.
    let a = RunningAgent::start(&bed.client, &format!("{}-a", bed.ns), &uri1, |c| {
        c.ceph_secret = Some(CephSecretConfig {
            usage_name: format!("client.libvirt {}", bed.ns),
            uuid: Uuid::new_v4(),
            key_base64: testbed_env("SEAPATH_CEPH_LIBVIRT_KEY"),
        })
    })
    .await;
    let b = RunningAgent::start(&bed.client, &format!("{}-b", bed.ns), &uri2, |_| {}).await;
    let dom = bed.domain("vm1");
    let uuid = bed.create_vm("vm1", &a.node, "Started").await;

    // Defined and running on a only, under its namespaced domain name, with the owner marker.
    let vm = bed.wait_domain_status("vm1", &a.node, Reported::Running).await;
    let d = domain_status(&vm).unwrap();
    assert_eq!(d.name, dom);
    assert_eq!(d.reason.as_deref(), Some("booted"));
    assert_eq!(d.observed_generation, vm.metadata.generation);
    assert!(d.observed_time.is_some());
    assert_eq!(a.domain_state(&dom).await, Some(DomainState::Running));
    assert_eq!(b.domain_state(&dom).await, None);
    let xml = a.domain_xml(&dom).await;
    assert_eq!(domain_xml::extract_uuid(&xml).unwrap(), Some(uuid));
    assert_eq!(
        domain_xml::extract_owner(&xml).unwrap(),
        Some(DomainOwner::new(&bed.ns, "vm1", vm.uid().unwrap()))
    );
    // The agent writes only status.domain (and restarts), never the controller's fields.
    let status = vm.status.clone().unwrap();
    assert!(status.phase.is_none() && status.node.is_none());
    assert_eq!(status.conditions.len(), 1, "only the test's StorageReady");

    // The Hypervisor reports it.
    let vm_key = format!("{}/vm1", bed.ns);
    let h = wait_hypervisor(&bed.client, &a.node, "vm1 in the Hypervisor status", |h| {
        h.status
            .as_ref()
            .is_some_and(|s| s.vms.contains(&vm_key) && s.running_vms == 1)
    })
    .await;
    assert_eq!(h.status.unwrap().allocated_memory_mib, 64);

    // A no-op resync: no libvirt write, no API write.
    let version = vm.resource_version();
    let before = a.stats.snapshot();
    tokio::time::sleep(RESYNC * 5).await;
    let after = a.stats.snapshot();
    assert!(
        after.reconciles >= before.reconciles + 3,
        "resyncs ran: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.libvirt_writes, before.libvirt_writes,
        "{before:?} -> {after:?}"
    );
    assert_eq!(
        after.vm_status_writes, before.vm_status_writes,
        "{before:?} -> {after:?}"
    );
    assert_eq!(bed.vms().get("vm1").await.unwrap().resource_version(), version);

    // Stopped -> shut off (the agent stopped it: no restart).
    bed.set_state("vm1", "Stopped").await;
    bed.wait_domain_status("vm1", &a.node, Reported::ShutOff).await;
    assert_eq!(a.domain_state(&dom).await, Some(DomainState::ShutOff));
    tokio::time::sleep(RESYNC * 3).await;
    assert_eq!(a.domain_state(&dom).await, Some(DomainState::ShutOff));

    // Started again: a plain start, no crash counted.
    bed.set_state("vm1", "Started").await;
    let vm = bed.wait_domain_status("vm1", &a.node, Reported::Running).await;
    assert_eq!(restarts(&vm), (0, 0));

    // The stored XML changes while running: reported, not applied until the domain stops.
    bed.store_xml("vm1", test_xml("vm1", uuid, 96)).await;
    bed.wait_vm("vm1", "RestartRequired", |vm| {
        domain_status(vm).is_some_and(|d| d.reason.as_deref() == Some("RestartRequired"))
    })
    .await;
    assert_eq!(
        domain_xml::extract_memory_kib(&a.domain_xml(&dom).await).unwrap(),
        64 * 1024
    );
    bed.set_state("vm1", "Stopped").await;
    bed.wait_domain_status("vm1", &a.node, Reported::ShutOff).await;
    let start = Instant::now();
    while domain_xml::extract_memory_kib(&a.domain_xml(&dom).await).unwrap() != 96 * 1024 {
        assert!(start.elapsed() < WAIT, "the domain is redefined once stopped");
        tokio::time::sleep(POLL).await;
    }
    bed.set_state("vm1", "Started").await;
    let vm = bed.wait_domain_status("vm1", &a.node, Reported::Running).await;
    assert_eq!(domain_status(&vm).unwrap().reason.as_deref(), Some("booted"));

    // Disabled -> undefined.
    bed.set_state("vm1", "Disabled").await;
    let vm = bed.wait_domain_status("vm1", &a.node, Reported::Absent).await;
    assert_eq!(domain_status(&vm).unwrap().reason.as_deref(), Some("Disabled"));
    assert_eq!(a.domain_state(&dom).await, None);

    // Enabled again, then placed on b: gone from a, running on b.
    bed.set_state("vm1", "Started").await;
    bed.wait_domain_status("vm1", &a.node, Reported::Running).await;
    bed.set_node("vm1", &b.node).await;
    bed.wait_domain_status("vm1", &b.node, Reported::Running).await;
    a.wait_domain(&dom, "removed from a", |s| s.is_none()).await;
    assert_eq!(b.domain_state(&dom).await, Some(DomainState::Running));
    wait_hypervisor(&bed.client, &a.node, "vm1 gone from a's Hypervisor status", |h| {
        h.status
            .as_ref()
            .is_some_and(|s| !s.vms.contains(&vm_key) && s.running_vms == 0)
    })
    .await;

    // Deleted (no finalizer in this test): swept from b.
    bed.vms().delete("vm1", &DeleteParams::default()).await.unwrap();
    b.wait_domain(&dom, "removed from b", |s| s.is_none()).await;

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_are_restarted_with_back_off_then_given_up() {
    let bed = Bed::new("ag-crash").await;
    let (uri1, _) = node_uris();
    let a = RunningAgent::start(&bed.client, &format!("{}-a", bed.ns), &uri1, |_| {}).await;
    let dom = bed.domain("vm1");
    bed.create_vm("vm1", &a.node, "Started").await;
    bed.wait_domain_status("vm1", &a.node, Reported::Running).await;

    // One crash: counted, restarted after the back-off, forgotten after the stable period.
    a.crash(&dom).await;
    let vm = bed
        .wait_vm("vm1", "the crash counted", |vm| restarts(vm).0 == 1)
        .await;
    let r = vm.status.as_ref().unwrap().restarts.clone().unwrap();
    assert!(r.last_failure_time.is_some());
    let vm = bed
        .wait_vm("vm1", "restarted once", |vm| {
            restarts(vm) == (1, 1) && domain_status(vm).is_some_and(|d| d.state == Reported::Running)
        })
        .await;
    assert!(vm.status.unwrap().restarts.unwrap().retry_after.is_none());
    assert_eq!(a.domain_state(&dom).await, Some(DomainState::Running));
    bed.wait_vm("vm1", "failures forgotten after running stably", |vm| {
        restarts(vm) == (0, 1)
    })
    .await;

    // Crash after crash: the third in a row gives up.
    for n in 1..=2 {
        a.crash(&dom).await;
        bed.wait_vm("vm1", &format!("restart #{n} of the loop"), |vm| {
            restarts(vm) == (n, 1 + n) && domain_status(vm).is_some_and(|d| d.state == Reported::Running)
        })
        .await;
    }
    a.crash(&dom).await;
    let vm = bed.wait_domain_status("vm1", &a.node, Reported::Failed).await;
    let d = domain_status(&vm).unwrap();
    assert_eq!(d.reason.as_deref(), Some("CrashLoop"));
    assert!(d.message.as_deref().unwrap().contains("3 times"), "{d:?}");
    assert_eq!(restarts(&vm), (3, 3));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        a.domain_state(&dom).await,
        Some(DomainState::ShutOff),
        "no restart after giving up"
    );

    // A spec change: tried again from zero.
    bed.patch_spec("vm1", json!({ "stopTimeoutSeconds": 6 })).await;
    let vm = bed.wait_domain_status("vm1", &a.node, Reported::Running).await;
    assert_eq!(restarts(&vm), (0, 3));
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sweep_removes_marked_domains_not_assigned_here_only() {
    let bed = Bed::new("ag-sweep").await;
    let (uri1, _) = node_uris();
    let a = RunningAgent::start(&bed.client, &format!("{}-a", bed.ns), &uri1, |_| {}).await;

    // A VM that exists but is placed on another node (no agent there).
    bed.create_vm("elsewhere", &format!("{}-nowhere", bed.ns), "Started")
        .await;
    let elsewhere_uid = bed.vms().get("elsewhere").await.unwrap().uid().unwrap();
    // A VM assigned here, for contrast.
    bed.create_vm("mine", &a.node, "Started").await;
    bed.wait_domain_status("mine", &a.node, Reported::Running).await;

    // Domains the agent defined carry the digest of the XML they were defined from.
    let plant = |name: String, owner: Option<DomainOwner>| {
        plant_running(
            &a.hv,
            name,
            Uuid::new_v4(),
            owner.map(|o| OwnerMarker::new(o).with_xml_sha256("aa")),
        )
    };
    let ghost = format!("{}_ghost", bed.ns);
    let moved = format!("{}_elsewhere", bed.ns);
    let foreign = format!("{}_foreign", bed.ns);
    plant(
        ghost.clone(),
        Some(DomainOwner::new(&bed.ns, "ghost", Uuid::new_v4().to_string())),
    )
    .await;
    plant(
        moved.clone(),
        Some(DomainOwner::new(&bed.ns, "elsewhere", elsewhere_uid)),
    )
    .await;
    plant(foreign.clone(), None).await;

    a.wait_domain(&ghost, "swept (VM gone)", |s| s.is_none()).await;
    a.wait_domain(&moved, "swept (VM placed elsewhere)", |s| s.is_none())
        .await;
    tokio::time::sleep(RESYNC * 4).await;
    assert_eq!(
        a.domain_state(&foreign).await,
        Some(DomainState::Running),
        "unmarked: untouched"
    );
    assert_eq!(
        a.domain_state(&bed.domain("mine")).await,
        Some(DomainState::Running)
    );
    let elsewhere = bed.vms().get("elsewhere").await.unwrap();
    assert!(domain_status(&elsewhere).is_none(), "{:?}", elsewhere.status);
    a.shutdown().await;
}

/// Defines and starts a domain on `hv` behind the agent's back, marked with `marker`.
async fn plant_running(hv: &libvirt::Hypervisor, name: String, uuid: Uuid, marker: Option<OwnerMarker>) {
    let hv = hv.clone();
    blocking(move || {
        let mut xml = test_xml(&name, uuid, 32);
        if let Some(marker) = marker {
            xml = domain_xml::set_name_and_owner(&xml, &name, &marker).unwrap();
        }
        hv.define_domain(&xml, DefineOptions::default())
            .unwrap()
            .start()
            .unwrap();
    })
    .await
}

/// A cluster moving over from vm_manager and Pacemaker: Pacemaker starts a VM from the XML the
/// operator stored in RBD (its owner marker, without the agent's digest) on a host where an
/// agent runs. The agent never stops such a guest unless the operator runs the VM elsewhere
/// (then it is the later of two copies on one disk), reports it, and takes it over as it runs
/// once the VM is placed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_domain_started_outside_the_operator_is_never_stopped_unless_it_runs_twice() {
    let bed = Bed::new("ag-outside").await;
    let (uri1, _) = node_uris();
    let a = RunningAgent::start(&bed.client, &format!("{}-a", bed.ns), &uri1, |_| {}).await;
    let nowhere = format!("{}-nowhere", bed.ns);
    let outside = |name: &str, uid: String| Some(OwnerMarker::new(DomainOwner::new(&bed.ns, name, uid)));

    // Its VirtualMachine is gone (deleted with Retain to hand it back to Pacemaker).
    let handed_back = format!("{}_handed", bed.ns);
    plant_running(
        &a.hv,
        handed_back.clone(),
        Uuid::new_v4(),
        outside("handed", Uuid::new_v4().to_string()),
    )
    .await;
    // Its VirtualMachine is placed on another node, which does not run it.
    // Started from the stored XML, so with its UUID.
    let stored_uuid = bed.create_vm("waiting", &nowhere, "Started").await;
    let waiting_uid = bed.vms().get("waiting").await.unwrap().uid().unwrap();
    let waiting = bed.domain("waiting");
    plant_running(
        &a.hv,
        waiting.clone(),
        stored_uuid,
        outside("waiting", waiting_uid),
    )
    .await;
    // Its VirtualMachine runs on another node already: this copy is the second on its disks.
    let twice_uuid = bed.create_vm("twice", &nowhere, "Started").await;
    let twice_uid = bed.vms().get("twice").await.unwrap().uid().unwrap();
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    bed.vms()
        .patch_status(
            "twice",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"domain": {
                "node": nowhere, "name": bed.domain("twice"), "state": "Running",
                "observedTime": now.to_string(),
            }}})),
        )
        .await
        .unwrap();
    let twice = bed.domain("twice");
    plant_running(&a.hv, twice.clone(), twice_uuid, outside("twice", twice_uid)).await;

    a.wait_domain(&twice, "destroyed (a second copy)", |s| s.is_none())
        .await;
    tokio::time::sleep(RESYNC * 4).await;
    for kept in [&handed_back, &waiting] {
        assert_eq!(a.domain_state(kept).await, Some(DomainState::Running), "{kept}");
    }
    // A vm_manager VM that Pacemaker runs (no marker), adopted: the stored XML is vm_manager's.
    let vmmgr_uuid = bed.create_vm("vmmgr", &nowhere, "Started").await;
    let vmmgr = bed.domain("vmmgr");
    plant_running(&a.hv, vmmgr.clone(), vmmgr_uuid, None).await;
    let hv = wait_hypervisor(
        &bed.client,
        &a.node,
        "reports the domains started outside",
        |hv| {
            hv.status
                .as_ref()
                .is_some_and(|s| s.started_outside.contains(&waiting) && s.started_outside.contains(&vmmgr))
        },
    )
    .await;
    assert!(
        !hv.status.unwrap().started_outside.contains(&twice),
        "the destroyed copy is not reported"
    );

    // Placed here (as the controller does when a host reports it): taken over as it runs,
    // with one libvirt write, the definition marked as the agent's own.
    let place_here = async |vm: &str| {
        let writes = a.stats.snapshot().libvirt_writes;
        bed.vms()
            .patch(
                vm,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"labels": {NODE_LABEL: a.node}}})),
            )
            .await
            .unwrap();
        bed.wait_domain_status(vm, &a.node, Reported::Running).await;
        a.stats.snapshot().libvirt_writes - writes
    };
    let writes = place_here("waiting").await;
    let marker = {
        let hv = a.hv.clone();
        let name = waiting.clone();
        blocking(move || {
            let xml = hv.lookup_domain(&name).unwrap().xml(XmlSource::Inactive).unwrap();
            domain_xml::extract_owner_marker(&xml).unwrap().unwrap()
        })
        .await
    };
    assert!(
        marker.xml_sha256.is_some(),
        "defined again by the agent: {marker:?}"
    );
    assert_eq!(writes, 1, "one define, no stop nor start");
    assert_eq!(a.domain_state(&waiting).await, Some(DomainState::Running));

    assert_eq!(place_here("vmmgr").await, 1, "one define, no stop nor start");
    assert_eq!(a.domain_state(&vmmgr).await, Some(DomainState::Running));
    wait_hypervisor(
        &bed.client,
        &a.node,
        "no longer reports the domains taken over",
        |hv| {
            hv.status
                .as_ref()
                .is_some_and(|s| !s.started_outside.contains(&waiting) && !s.started_outside.contains(&vmmgr))
        },
    )
    .await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_agent_leaves_running_domains_alone() {
    let bed = Bed::new("ag-restart").await;
    let (uri1, _) = node_uris();
    let node = format!("{}-a", bed.ns);
    let first = RunningAgent::start(&bed.client, &node, &uri1, |_| {}).await;
    let dom = bed.domain("vm1");
    bed.create_vm("vm1", &node, "Started").await;
    bed.create_vm("vm2", &node, "Stopped").await;
    let vm1 = bed.wait_domain_status("vm1", &node, Reported::Running).await;
    let vm2 = bed.wait_domain_status("vm2", &node, Reported::ShutOff).await;
    let hv = first.hv.clone();
    first.shutdown().await;

    // The agent is gone; the domain is not.
    let hv_probe = hv.clone();
    let probe_dom = dom.clone();
    let state = blocking(move || hv_probe.lookup_domain(&probe_dom).unwrap().state().unwrap().state).await;
    assert_eq!(state, DomainState::Running);

    // A new agent on the same host: nothing to do, nothing written for the VMs.
    let second = RunningAgent::start_on(&bed.client, &node, hv, |_| {}).await;
    tokio::time::sleep(RESYNC * 5).await;
    let stats = second.stats.snapshot();
    assert!(stats.reconciles >= 2 && stats.sweeps >= 1, "{stats:?}");
    assert_eq!(stats.libvirt_writes, 0, "{stats:?}");
    assert_eq!(stats.vm_status_writes, 0, "{stats:?}");
    assert_eq!(
        bed.vms().get("vm1").await.unwrap().resource_version(),
        vm1.resource_version()
    );
    assert_eq!(
        bed.vms().get("vm2").await.unwrap().resource_version(),
        vm2.resource_version()
    );
    assert_eq!(second.domain_state(&dom).await, Some(DomainState::Running));
    second.shutdown().await;
}
