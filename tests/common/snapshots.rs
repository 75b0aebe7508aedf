//! Helpers of the snapshot, restore and schedule tests: the snapshot controllers started once
//! per test binary (beside [`super::operator`]'s VM controller and agents), a namespace with a
//! VM, waits on any of the kinds, and direct librbd access to the VM's images.
#![allow(dead_code)]

use std::fmt::Debug;
use std::sync::OnceLock;
use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::{Client, Resource};
use seapath_operator::api::{Phase, VirtualMachine};
use seapath_operator::ceph::{Cluster, ClusterConfig, IoCtx, SnapNamespace};
use seapath_operator::controller::storage::StorageContext;
use seapath_operator::metrics::Metrics;
use seapath_operator::naming::NamespaceMap;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::testbed_env;

pub const XML: &str = "<domain type='qemu'><name>ignored</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
<os><type arch='x86_64'>hvm</type></os><features><acpi/></features><devices><serial type='pty'/></devices></domain>";

static SNAPSHOT_CONTROLLERS: OnceLock<Metrics> = OnceLock::new();

fn ceph_config() -> ClusterConfig {
    ClusterConfig {
        conf_path: testbed_env("CEPH_CONF").into(),
        client_id: std::env::var("SEAPATH_CEPH_CLIENT").unwrap_or_else(|_| "admin".into()),
        mount_timeout: Duration::from_secs(10),
        // Several Ceph clients in one process: no admin socket each (they would share a path).
        options: vec![("admin_socket".into(), String::new())],
    }
}

/// Starts the snapshot, restore and schedule controllers the first time it is called (on a
/// runtime of their own: every test has its own runtime, which ends with the test).
///
/// When the controller process runs them itself (`controller::run` wiring
/// `controller::snapshot::run`), this is the place to drop.
pub fn snapshot_controllers() -> &'static Metrics {
    SNAPSHOT_CONTROLLERS.get_or_init(|| {
        let metrics = Metrics::new();
        let for_run = metrics.clone();
        let pool = testbed_env("SEAPATH_CEPH_POOL");
        let config = ceph_config();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("snapshot controllers runtime");
            runtime.block_on(async move {
                let client = Client::try_default()
                    .await
                    .expect("kube client for the snapshot controllers");
                let conf = config.conf_path.clone();
                let id = config.client_id.clone();
                let cluster = tokio::task::spawn_blocking(move || Cluster::connect(config))
                    .await
                    .unwrap()
                    .expect("connect to Ceph for the snapshot controllers");
                let storage = StorageContext::new(cluster, pool, NamespaceMap::default(), conf, id);
                seapath_operator::controller::snapshot::run(
                    client,
                    storage,
                    for_run,
                    seapath_operator::controller::snapshot::inventory::DEFAULT_REFRESH,
                    std::future::pending(),
                )
                .await;
            });
        });
        metrics
    })
}

/// The test's RBD namespace (named like its Kubernetes namespace).
pub fn rbd(namespace: &str) -> IoCtx {
    let cluster = Cluster::connect(ceph_config()).expect("connect to Ceph");
    cluster
        .io_context(&testbed_env("SEAPATH_CEPH_POOL"), namespace)
        .expect("the VM's RBD namespace")
}

pub fn vm_manifest(name: &str, data_disks: usize, state: &str) -> VirtualMachine {
    let disks: Vec<_> = (0..data_disks)
        .map(|_| json!({"source": {"blank": {}}, "size": "8Mi"}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "xml": XML, "state": state, "stopTimeoutSeconds": 5,
            "systemDisk": {"source": {"blank": {}}, "size": "16Mi"},
            "dataDisks": disks
        }
    }))
    .expect("valid VirtualMachine")
}

/// Polls `get` until `check` holds (60 s), and returns the object.
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, check: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    wait_for_within(api, name, what, Duration::from_secs(60), check).await
}

pub async fn wait_for_within<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    limit: Duration,
    check: impl Fn(&K) -> bool,
) -> K
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let obj = api.get_opt(name).await.expect("get object");
        match obj {
            Some(obj) if check(&obj) => return obj,
            other => {
                if tokio::time::Instant::now() > deadline {
                    panic!("{name}: timed out waiting for {what}; object: {other:#?}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn wait_gone<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Some(obj) = api.get_opt(name).await.expect("get object") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} was not deleted within 60 s: {obj:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates a VM and waits for its phase.
pub async fn create_vm(
    vms: &Api<VirtualMachine>,
    name: &str,
    data_disks: usize,
    state: &str,
    phase: Phase,
) -> VirtualMachine {
    vms.create(&PostParams::default(), &vm_manifest(name, data_disks, state))
        .await
        .expect("create VM");
    wait_for(vms, name, &format!("phase {phase:?}"), |vm| {
        vm.status.as_ref().and_then(|s| s.phase) == Some(phase)
    })
    .await
}

/// Writes `data` at offset 0 of an image through librbd.
pub fn write_marker(io: &IoCtx, image: &str, data: &[u8]) {
    let mut opened = io.open_image(image).expect("open image");
    opened.write_at(0, data).expect("write");
    opened.flush().expect("flush");
}

pub fn read_marker(io: &IoCtx, image: &str, len: usize) -> Vec<u8> {
    let opened = io.open_image(image).expect("open image");
    let mut buf = vec![0u8; len];
    opened.read_at(0, &mut buf).expect("read");
    buf
}

/// The user snapshot names of an image (what `rbd snap ls` and vm_manager show).
pub fn snap_names(io: &IoCtx, image: &str) -> Vec<String> {
    let all = io
        .open_image(image)
        .expect("open image")
        .snap_list()
        .expect("snap list");
    for s in all.iter().filter(|s| s.namespace != SnapNamespace::User) {
        eprintln!("{image}: non-user snapshot {} ({:?})", s.name, s.namespace);
    }
    all.into_iter()
        .filter(|s| s.namespace == SnapNamespace::User)
        .map(|s| s.name)
        .collect()
}
