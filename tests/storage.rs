//! Integration tests of the controller's storage half (`seapath_operator::controller::storage`)
//! against the real micro Ceph cluster of the test bed (1 mon + 1 memstore OSD, Ceph 16).
//!
//! They read what `hack/testbed.sh env` exports (CEPH_CONF, SEAPATH_CEPH_POOL,
//! SEAPATH_CEPH_CLIENT, SEAPATH_CEPH_MON_PORT); without it every test fails with a hint. Each test
//! uses its own Kubernetes namespace name, hence its own RBD namespace, and empties and removes
//! it when done (also on failure). HTTP sources are served by a tiny server on 127.0.0.1.
//!
//! Run with hack/test.sh, or `eval "$(hack/testbed.sh env)"` and `cargo test --test storage`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use seapath_operator::api::{ImageFormat, ImportProgress};
use seapath_operator::ceph::{CloneFormat, Cluster, ClusterConfig, ImageOptions, IoCtx};
use seapath_operator::controller::storage::{
    DeleteOutcome, DiskRequest, ResolvedSource, StorageContext, StorageError, StorageObservation,
    VmStorageRequest, delete_storage, dependent_clones, ensure_storage, monitors, observe_storage,
    read_metadata, stored_domain_uuid,
};
use seapath_operator::naming::NamespaceMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const HINT: &str = "run the tests with hack/test.sh (or eval $(hack/testbed.sh env))";
const MIB: u64 = 1 << 20;

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{name} is not set: {HINT}"),
    }
}

fn conf_path() -> PathBuf {
    let conf = PathBuf::from(env("CEPH_CONF"));
    assert!(
        conf.is_file(),
        "CEPH_CONF={} is not a file (is the test bed up?): {HINT}",
        conf.display()
    );
    conf
}

fn connect() -> Cluster {
    Cluster::connect(ClusterConfig {
        conf_path: conf_path(),
        client_id: env("SEAPATH_CEPH_CLIENT"),
        mount_timeout: Duration::from_secs(10),
        // Many clients in one process: no admin socket each (they would share a path).
        options: vec![("admin_socket".into(), String::new())],
    })
    .unwrap_or_else(|e| panic!("cannot connect to the test bed's Ceph ({e}): {HINT}"))
}

/// One test's Kubernetes namespace (= RBD namespace), storage context and scratch directory;
/// everything in the RBD namespace is removed on drop.
struct Fixture {
    ctx: StorageContext,
    kube_ns: String,
    io: IoCtx,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(test: &str) -> Fixture {
        Self::in_pool(test, &env("SEAPATH_CEPH_POOL"))
    }

    fn in_pool(test: &str, pool: &str) -> Fixture {
        let cluster = connect();
        let kube_ns = format!("st-{test}-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let pool_io = cluster.io_context(pool, "").expect("pool io context");
        pool_io.create_namespace(&kube_ns).expect("create test namespace");
        let io = cluster.io_context(pool, &kube_ns).expect("namespace io context");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ctx = StorageContext::new(
            cluster,
            pool,
            NamespaceMap::default(),
            conf_path(),
            env("SEAPATH_CEPH_CLIENT"),
        );
        ctx.scratch_dir = dir.path().join("scratch");
        std::fs::create_dir(&ctx.scratch_dir).unwrap();
        Fixture {
            ctx,
            kube_ns,
            io,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn request(&self, name: &str, uid: &str, disks: Vec<DiskRequest>) -> VmStorageRequest {
        VmStorageRequest {
            kube_namespace: self.kube_ns.clone(),
            name: name.into(),
            object_name: name.to_lowercase(),
            uid: uid.into(),
            disks,
            base_xml: format!("<domain type='qemu'><name>{name}</name></domain>"),
            rendered_xml: format!("<domain type='qemu'><name>{name}</name><uuid>u</uuid></domain>"),
            metadata: [("site".to_string(), "north".to_string())].into(),
            internal: [("_stop_timeout".to_string(), "60".to_string())].into(),
            creation_defaults: BTreeMap::new(),
        }
    }

    async fn ensure(&self, req: &VmStorageRequest) -> Result<StorageObservation, StorageError> {
        ensure_storage(&self.ctx, req, |_| {}).await
    }

    fn images(&self) -> Vec<String> {
        self.io.list_images().unwrap()
    }

    fn metadata(&self, image: &str) -> BTreeMap<String, String> {
        self.io
            .open_image_read_only(image, None)
            .unwrap()
            .metadata_list()
            .unwrap()
    }

    fn read(&self, image: &str, offset: u64, len: usize) -> Vec<u8> {
        let img = self.io.open_image_read_only(image, None).unwrap();
        let mut buf = vec![0u8; len];
        let n = img.read_at(offset, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn write(&self, image: &str, offset: u64, data: &[u8]) {
        let mut img = self.io.open_image(image).unwrap();
        img.write_at(offset, data).unwrap();
        img.flush().unwrap();
    }

    /// Everything observable in the namespace: images with size, metadata, snapshots, parent;
    /// groups with members and snapshots.
    fn state(&self) -> String {
        let mut out = String::new();
        for name in self.images() {
            let img = self.io.open_image_read_only(&name, None).unwrap();
            let snaps: Vec<String> = img.snap_list().unwrap().into_iter().map(|s| s.name).collect();
            out += &format!(
                "image {name} size={} parent={:?} snaps={snaps:?} meta={:?} group={:?}\n",
                img.size().unwrap(),
                img.parent().unwrap().map(|p| p.snap_name),
                img.metadata_list().unwrap(),
                img.group().unwrap().map(|g| g.name),
            );
        }
        for group in self.io.group_list().unwrap() {
            let members: Vec<String> = self
                .io
                .group_image_list(&group)
                .unwrap()
                .into_iter()
                .map(|m| m.name)
                .collect();
            let snaps: Vec<String> = self
                .io
                .group_snap_list(&group)
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect();
            out += &format!("group {group} members={members:?} snaps={snaps:?}\n");
        }
        out
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let io = &self.io;
        if let Ok(groups) = io.group_list() {
            for g in groups {
                let _ = io.group_remove(&g);
            }
        }
        for _round in 0..6 {
            let Ok(images) = io.list_images() else { break };
            if images.is_empty() {
                break;
            }
            for name in images {
                if let Ok(image) = io.open_image(&name) {
                    let _ = image.snap_purge();
                }
                let _ = io.remove_image(&name);
            }
        }
        let pool_io = self.ctx.cluster.io_context(io.pool(), "").unwrap();
        if let Err(e) = pool_io.remove_namespace(&self.kube_ns) {
            eprintln!("cleanup of namespace {}: {e}", self.kube_ns);
            if !std::thread::panicking() {
                panic!("test namespace {} not removed: {e}", self.kube_ns);
            }
        }
    }
}

fn uid() -> String {
    Uuid::new_v4().to_string()
}

fn uid_key(uid: &str) -> String {
    uid.replace('-', "")
}

fn blank(size: u64) -> DiskRequest {
    DiskRequest {
        source: ResolvedSource::Blank,
        size_bytes: Some(size),
    }
}

fn path_source(path: &Path, format: ImageFormat, size: Option<u64>) -> DiskRequest {
    DiskRequest {
        source: ResolvedSource::Path {
            path: path.to_path_buf(),
            format,
        },
        size_bytes: size,
    }
}

fn http_source(url: String, format: ImageFormat) -> DiskRequest {
    DiskRequest {
        source: ResolvedSource::Http { url, format },
        size_bytes: None,
    }
}

#[track_caller]
fn expect_err<T: std::fmt::Debug>(r: Result<T, StorageError>, reason: &str) -> StorageError {
    match r {
        Ok(v) => panic!("expected {reason}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.reason(), reason, "expected {reason}, got: {e}");
            e
        }
    }
}

/// 64 MiB of recognisable data with an 8 MiB hole (zeros) at 16 MiB.
fn sample_raw(path: &Path) -> Vec<u8> {
    let mut data: Vec<u8> = (0..64 * MIB as usize)
        .map(|i| ((i / 4096) as u8).wrapping_mul(31).wrapping_add(7) | 1)
        .collect();
    data[16 * MIB as usize..24 * MIB as usize].fill(0);
    std::fs::write(path, &data).unwrap();
    data
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qcow2_from_raw(raw: &Path, qcow2: &Path) {
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(qcow2));
}

/// `rbd du` used bytes of an image (object-map/fast-diff: exact and cheap).
fn used_bytes(fx: &Fixture, image: &str) -> u64 {
    let out = Command::new("rbd")
        .args(["--conf", &env("CEPH_CONF"), "du", "--format", "json"])
        .arg(format!("{}/{}/{image}", fx.io.pool(), fx.kube_ns))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["images"][0]["used_size"].as_u64().unwrap()
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP server for the http sources

#[derive(Clone)]
struct Route {
    status: u16,
    content_type: &'static str,
    body: Arc<Vec<u8>>,
    /// `Some(n)`: announce n bytes whatever the body; `None`: no Content-Length (body to EOF).
    content_length: Option<u64>,
    location: Option<String>,
    /// The first request gets only this many bytes of the body, then the server stalls.
    stall_once: Option<(usize, Arc<AtomicBool>)>,
}

impl Route {
    fn ok(content_type: &'static str, body: Vec<u8>) -> Route {
        let len = body.len() as u64;
        Route {
            status: 200,
            content_type,
            body: Arc::new(body),
            content_length: Some(len),
            location: None,
            stall_once: None,
        }
    }
}

/// Serves `routes` on 127.0.0.1 (unknown paths: 404); returns the base URL.
async fn serve(routes: HashMap<&'static str, Route>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let routes = Arc::new(routes);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16384 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                let route = routes.get(path.as_str()).cloned().unwrap_or(Route {
                    status: 404,
                    content_type: "text/plain",
                    body: Arc::new(b"not found".to_vec()),
                    content_length: Some(9),
                    location: None,
                    stall_once: None,
                });
                let mut head = format!(
                    "HTTP/1.1 {} X\r\nContent-Type: {}\r\nConnection: close\r\n",
                    route.status, route.content_type
                );
                if let Some(len) = route.content_length {
                    head += &format!("Content-Length: {len}\r\n");
                }
                if let Some(loc) = &route.location {
                    head += &format!("Location: {loc}\r\n");
                }
                head += "\r\n";
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                if let Some((n, stalled)) = &route.stall_once
                    && !stalled.swap(true, Ordering::SeqCst)
                {
                    let _ = sock.write_all(&route.body[..*n]).await;
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let _ = sock.write_all(&route.body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    base
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn blank_vm_with_two_data_disks_then_idempotent() {
    let fx = Fixture::new("blank");
    let uid = uid();
    let req = fx.request("vm1", &uid, vec![blank(8 * MIB), blank(4 * MIB), blank(2 * MIB)]);
    let obs = fx.ensure(&req).await.expect("ensure");
    assert_eq!(obs.pool, env("SEAPATH_CEPH_POOL"));
    assert_eq!(obs.namespace, fx.kube_ns);
    assert_eq!(obs.group, "vm1");
    assert!(!obs.adopted);
    assert!(obs.warnings.is_empty(), "{:?}", obs.warnings);
    let images: Vec<(&str, u64)> = obs
        .images
        .iter()
        .map(|i| (i.name.as_str(), i.size_bytes))
        .collect();
    assert_eq!(
        images,
        [
            ("system_vm1", 8 * MIB),
            ("data_vm1_0", 4 * MIB),
            ("data_vm1_1", 2 * MIB)
        ]
    );
    assert!(obs.images.iter().all(|i| i.parent.is_none()));
    assert!(!obs.changes.is_empty());

    assert_eq!(
        fx.images(),
        ["data_vm1_0", "data_vm1_1", "system_vm1"],
        "no temporary image left"
    );
    assert_eq!(fx.io.group_list().unwrap(), ["vm1"]);
    let mut members: Vec<String> = fx
        .io
        .group_image_list("vm1")
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    members.sort();
    assert_eq!(members, ["data_vm1_0", "data_vm1_1", "system_vm1"]);

    let owner = format!("{}/vm1", fx.kube_ns);
    let expected: BTreeMap<String, String> = [
        ("vm_name", "vm1".to_string()),
        ("_base_xml", req.base_xml.clone()),
        ("xml", req.rendered_xml.clone()),
        ("_stop_timeout", "60".to_string()),
        ("site", "north".to_string()),
        ("_additional_disks", "2".to_string()),
        ("_k8s_owner_uid", uid.clone()),
        ("_k8s_owner", owner.clone()),
        ("_k8s_owner_vm", "vm1".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(fx.metadata("system_vm1"), expected);
    let owner_only: BTreeMap<String, String> = [
        ("_k8s_owner_uid".to_string(), uid.clone()),
        ("_k8s_owner".to_string(), owner),
        ("_k8s_owner_vm".to_string(), "vm1".to_string()),
    ]
    .into();
    assert_eq!(fx.metadata("data_vm1_0"), owner_only);
    assert_eq!(fx.metadata("data_vm1_1"), owner_only);
    assert_eq!(
        read_metadata(&fx.ctx, &fx.kube_ns, "vm1").await.unwrap(),
        expected
    );

    // Idempotent: a second run changes nothing and reports nothing changed.
    let before = fx.state();
    let again = fx.ensure(&req).await.expect("second ensure");
    assert!(
        again.changes.is_empty(),
        "second run changed: {:?}",
        again.changes
    );
    assert_eq!(again.images, obs.images);
    assert_eq!(fx.state(), before);

    // observe_storage sees the same, read-only.
    let seen = observe_storage(&fx.ctx, &fx.kube_ns, "vm1")
        .await
        .unwrap()
        .expect("observed");
    assert_eq!(seen.images, obs.images);
    assert_eq!(seen.owner_uid.as_deref(), Some(uid.as_str()));
    assert_eq!(seen.to_status().images[0].size_bytes, 8 * MIB as i64);
    assert_eq!(fx.state(), before);
}

#[tokio::test]
async fn absent_vm_is_observed_as_none_without_creating_anything() {
    let fx = Fixture::new("absent");
    assert!(
        observe_storage(&fx.ctx, &fx.kube_ns, "ghost")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        read_metadata(&fx.ctx, &fx.kube_ns, "ghost")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        delete_storage(&fx.ctx, &fx.kube_ns, "ghost", &uid())
            .await
            .unwrap(),
        DeleteOutcome::Absent
    );
    // A Kubernetes namespace whose RBD namespace does not exist: observed, not created.
    let unknown = format!("st-none-{}", &Uuid::new_v4().simple().to_string()[..8]);
    assert!(
        observe_storage(&fx.ctx, &unknown, "ghost")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        read_metadata(&fx.ctx, &unknown, "ghost")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        delete_storage(&fx.ctx, &unknown, "ghost", &uid()).await.unwrap(),
        DeleteOutcome::Absent
    );
    let pool_io = fx.ctx.cluster.io_context(&fx.ctx.pool, "").unwrap();
    assert!(
        !pool_io.namespace_exists(&unknown).unwrap(),
        "observe must not create namespaces"
    );
    assert!(fx.state().is_empty());
}

#[tokio::test]
async fn path_imports_qcow2_and_raw_concurrently() {
    let fx = Fixture::new("path");
    let raw_path = fx.path("disk.raw");
    let data = sample_raw(&raw_path);
    let qcow2_path = fx.path("disk.qcow2");
    qcow2_from_raw(&raw_path, &qcow2_path);
    // A second qcow2 made the way the brief's users do: qemu-img create + qemu-io writes.
    let small = fx.path("small.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&small)
        .arg("16M"));
    run(Command::new("qemu-io")
        .args(["-c", "write -P 0x5a 0 1M", "-c", "write -P 0x33 8M 64k"])
        .arg(&small));

    let uid = uid();
    let req = fx.request(
        "vm1",
        &uid,
        vec![
            path_source(&qcow2_path, ImageFormat::Qcow2, None),
            path_source(&raw_path, ImageFormat::Raw, None),
            path_source(&small, ImageFormat::Qcow2, Some(32 * MIB)),
        ],
    );
    let progress: Arc<Mutex<Vec<ImportProgress>>> = Arc::default();
    let seen = progress.clone();
    let t0 = Instant::now();
    let obs = ensure_storage(&fx.ctx, &req, move |p| seen.lock().unwrap().push(p))
        .await
        .expect("import");
    eprintln!(
        "imported 64 MiB qcow2 + 64 MiB raw + 16 MiB qcow2 concurrently in {:?}",
        t0.elapsed()
    );
    let sizes: Vec<u64> = obs.images.iter().map(|i| i.size_bytes).collect();
    assert_eq!(
        sizes,
        [64 * MIB, 64 * MIB, 32 * MIB],
        "the small one grown to 32 MiB"
    );

    assert!(
        fx.read("system_vm1", 0, data.len()) == data,
        "qcow2 content read back through librbd"
    );
    assert!(
        fx.read("data_vm1_0", 0, data.len()) == data,
        "raw content read back through librbd"
    );
    assert_eq!(fx.read("data_vm1_1", 0, MIB as usize), vec![0x5a; MIB as usize]);
    assert_eq!(fx.read("data_vm1_1", 8 * MIB, 65536), vec![0x33; 65536]);
    assert_eq!(
        fx.read("data_vm1_1", 16 * MIB, 4096),
        vec![0; 4096],
        "grown part reads zero"
    );
    // Sparse: the 8 MiB hole is not allocated (raw: skipped zero chunks; qcow2: --target-is-zero).
    assert_eq!(used_bytes(&fx, "data_vm1_0"), 56 * MIB);
    assert_eq!(used_bytes(&fx, "system_vm1"), 56 * MIB);
    assert!(used_bytes(&fx, "data_vm1_1") <= 8 * MIB);

    let progress = progress.lock().unwrap();
    for image in ["system_vm1", "data_vm1_0", "data_vm1_1"] {
        let last = progress
            .iter()
            .rev()
            .find(|p| p.image == image)
            .unwrap_or_else(|| panic!("no progress for {image}"));
        assert_eq!(
            Some(last.bytes_done),
            last.bytes_total,
            "final report of {image}: {last:?}"
        );
    }
    assert!(
        progress.len() < 40,
        "progress is throttled: {} reports",
        progress.len()
    );
    assert_eq!(std::fs::read_dir(&fx.ctx.scratch_dir).unwrap().count(), 0);
}

#[tokio::test]
async fn import_timings_64mib() {
    let fx = Fixture::new("timing");
    let raw_path = fx.path("full.raw");
    let data: Vec<u8> = (0..64 * MIB as usize).map(|i| (i % 251) as u8 | 1).collect();
    std::fs::write(&raw_path, &data).unwrap();
    let qcow2_path = fx.path("full.qcow2");
    qcow2_from_raw(&raw_path, &qcow2_path);
    let t0 = Instant::now();
    fx.ensure(&fx.request(
        "raw",
        &uid(),
        vec![path_source(&raw_path, ImageFormat::Raw, None)],
    ))
    .await
    .unwrap();
    let raw_time = t0.elapsed();
    let t0 = Instant::now();
    fx.ensure(&fx.request(
        "qcow",
        &uid(),
        vec![path_source(&qcow2_path, ImageFormat::Qcow2, None)],
    ))
    .await
    .unwrap();
    let qcow2_time = t0.elapsed();
    eprintln!(
        "TIMING 64 MiB fully allocated: raw (librbd stream) {raw_time:?}, qcow2 (qemu-img convert) {qcow2_time:?}"
    );
    assert!(fx.read("system_raw", 0, data.len()) == data);
    assert!(fx.read("system_qcow", 0, data.len()) == data);
}

#[tokio::test]
async fn path_errors_leave_nothing() {
    let fx = Fixture::new("patherr");
    let missing = fx.path("missing.qcow2");
    let e = expect_err(
        fx.ensure(&fx.request(
            "vm1",
            &uid(),
            vec![path_source(&missing, ImageFormat::Qcow2, None)],
        ))
        .await,
        "SourceNotFound",
    );
    assert!(e.is_retryable());
    assert!(e.to_string().contains("missing.qcow2"), "{e}");

    let garbage = fx.path("garbage.qcow2");
    std::fs::write(&garbage, b"this is not a disk image at all").unwrap();
    let e = expect_err(
        fx.ensure(&fx.request(
            "vm1",
            &uid(),
            vec![path_source(&garbage, ImageFormat::Qcow2, None)],
        ))
        .await,
        "ImportFailed",
    );
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("not a qcow2 image"), "{e}");
    assert!(
        e.to_string().contains("Image is not in qcow2 format"),
        "qemu-img's words: {e}"
    );

    // A qcow2 declared raw would be written as garbage: refused.
    let qcow2 = fx.path("real.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&qcow2)
        .arg("4M"));
    let e = expect_err(
        fx.ensure(&fx.request("vm1", &uid(), vec![path_source(&qcow2, ImageFormat::Raw, None)]))
            .await,
        "ImportFailed",
    );
    assert!(e.to_string().contains("set format qcow2"), "{e}");
    assert!(fx.images().is_empty(), "nothing left: {:?}", fx.images());
    assert!(fx.io.group_list().unwrap().is_empty());
}

#[tokio::test]
async fn http_imports_and_errors() {
    let fx = Fixture::new("http");
    let raw: Vec<u8> = (0..6 * MIB as usize).map(|i| (i % 13) as u8 + 1).collect();
    let small = fx.path("small.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&small)
        .arg("8M"));
    run(Command::new("qemu-io")
        .args(["-c", "write -P 0x5a 0 1M"])
        .arg(&small));
    let qcow2 = std::fs::read(&small).unwrap();
    let overlay = fx.path("overlay.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&small)
        .arg(&overlay));
    let mut chunked = Route::ok("application/octet-stream", raw.clone());
    chunked.content_length = None;
    let redirect = Route {
        status: 302,
        content_type: "text/plain",
        body: Arc::new(Vec::new()),
        content_length: Some(0),
        location: Some("/disk.raw".into()),
        stall_once: None,
    };
    let base = serve(HashMap::from([
        ("/disk.raw", Route::ok("application/octet-stream", raw.clone())),
        ("/disk.qcow2", Route::ok("application/octet-stream", qcow2)),
        ("/eof.raw", chunked),
        ("/moved", redirect),
        (
            "/text.qcow2",
            Route::ok("application/octet-stream", b"hello, I am not an image\n".to_vec()),
        ),
        (
            "/page",
            Route::ok("text/html; charset=utf-8", b"<html>login</html>".to_vec()),
        ),
        (
            "/overlay.qcow2",
            Route::ok("application/octet-stream", std::fs::read(&overlay).unwrap()),
        ),
    ]))
    .await;

    let req = fx.request(
        "vm1",
        &uid(),
        vec![
            http_source(format!("{base}/disk.qcow2"), ImageFormat::Qcow2),
            http_source(format!("{base}/disk.raw"), ImageFormat::Raw),
            http_source(format!("{base}/eof.raw"), ImageFormat::Raw),
            http_source(format!("{base}/moved"), ImageFormat::Raw),
        ],
    );
    let obs = fx.ensure(&req).await.expect("http imports");
    let sizes: Vec<u64> = obs.images.iter().map(|i| i.size_bytes).collect();
    assert_eq!(sizes, [8 * MIB, 6 * MIB, 6 * MIB, 6 * MIB]);
    assert_eq!(fx.read("system_vm1", 0, MIB as usize), vec![0x5a; MIB as usize]);
    assert_eq!(fx.read("system_vm1", MIB, 4096), vec![0; 4096]);
    for image in ["data_vm1_0", "data_vm1_1", "data_vm1_2"] {
        assert!(fx.read(image, 0, raw.len()) == raw, "{image} content");
    }
    assert_eq!(
        std::fs::read_dir(&fx.ctx.scratch_dir).unwrap().count(),
        0,
        "scratch files removed"
    );
    let before = fx.state();

    let failing =
        |path: &str, format| fx.request("vm2", &uid(), vec![http_source(format!("{base}{path}"), format)]);
    let e = expect_err(
        fx.ensure(&failing("/missing", ImageFormat::Qcow2)).await,
        "ImportFailed",
    );
    assert!(e.to_string().contains("HTTP 404 Not Found"), "{e}");
    assert!(!e.is_retryable());
    let e = expect_err(
        fx.ensure(&failing("/text.qcow2", ImageFormat::Qcow2)).await,
        "ImportFailed",
    );
    assert!(e.to_string().contains("not a qcow2 image"), "{e}");
    let e = expect_err(
        fx.ensure(&failing("/page", ImageFormat::Raw)).await,
        "ImportFailed",
    );
    assert!(e.to_string().contains("web page"), "{e}");
    let e = expect_err(
        fx.ensure(&failing("/overlay.qcow2", ImageFormat::Qcow2)).await,
        "ImportFailed",
    );
    assert!(e.to_string().contains("backing file"), "{e}");
    let e = expect_err(
        fx.ensure(&failing("/disk.qcow2", ImageFormat::Raw)).await,
        "ImportFailed",
    );
    assert!(e.to_string().contains("set format qcow2"), "{e}");
    let e = expect_err(
        fx.ensure(&fx.request(
            "vm2",
            &uid(),
            vec![http_source("http://127.0.0.1:1/x".into(), ImageFormat::Raw)],
        ))
        .await,
        "ImportFailed",
    );
    assert!(e.is_retryable(), "connection refused is transient: {e}");
    assert_eq!(
        fx.state(),
        before,
        "failed imports left nothing (no vm2 image, no temporary image)"
    );
    assert_eq!(std::fs::read_dir(&fx.ctx.scratch_dir).unwrap().count(), 0);
}

/// A golden image in its own namespace, with a snapshot `v1`.
fn golden(fx: &Fixture) -> Vec<u8> {
    fx.io
        .create_image("golden", 32 * MIB, &ImageOptions::default())
        .unwrap();
    let data: Vec<u8> = (0..MIB as usize).map(|i| (i % 7) as u8 + 1).collect();
    fx.write("golden", 0, &data);
    let image = fx.io.open_image("golden").unwrap();
    image.snap_create("v1").unwrap();
    // Golden sources clone protected snapshots only.
    image.snap_protect("v1").unwrap();
    data
}

#[tokio::test]
async fn golden_clone_is_copy_on_write_and_sizes_only_grow() {
    let gold = Fixture::new("gold");
    let data = golden(&gold);
    let fx = Fixture::new("golden");
    let source = ResolvedSource::Golden {
        pool: gold.ctx.pool.clone(),
        namespace: gold.kube_ns.clone(),
        image: "golden".into(),
        snapshot: "v1".into(),
    };
    let uid = uid();
    let mut req = fx.request(
        "vm1",
        &uid,
        vec![
            DiskRequest {
                source: source.clone(),
                size_bytes: Some(64 * MIB),
            },
            DiskRequest {
                source: source.clone(),
                size_bytes: None,
            },
        ],
    );
    let t0 = Instant::now();
    let obs = fx.ensure(&req).await.expect("golden clone");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a layered clone is near-instant, took {took:?}"
    );
    let parent = format!("{}/{}/golden@v1", gold.ctx.pool, gold.kube_ns);
    assert_eq!(obs.images[0].parent.as_deref(), Some(parent.as_str()));
    assert_eq!(obs.images[0].size_bytes, 64 * MIB);
    assert_eq!(obs.images[1].size_bytes, 32 * MIB);
    assert_eq!(fx.read("system_vm1", 0, data.len()), data);
    // Copy-on-write: nothing of the golden data was copied.
    assert_eq!(used_bytes(&fx, "system_vm1"), 0);
    // No metadata inherited from the golden image: only what the VM gets.
    assert!(!fx.metadata("data_vm1_0").contains_key("vm_name"));

    // Growth of an existing image.
    req.disks[1].size_bytes = Some(48 * MIB);
    let obs = fx.ensure(&req).await.unwrap();
    assert_eq!(obs.images[1].size_bytes, 48 * MIB);
    assert!(
        obs.changes.iter().any(|c| c.contains("grew data_vm1_0")),
        "{:?}",
        obs.changes
    );
    // A smaller request: a warning, never a shrink.
    req.disks[0].size_bytes = Some(16 * MIB);
    let before = fx.state();
    let obs = fx.ensure(&req).await.unwrap();
    assert_eq!(obs.images[0].size_bytes, 64 * MIB);
    assert_eq!(obs.warnings.len(), 1, "{:?}", obs.warnings);
    assert!(obs.warnings[0].contains("never shrunk"), "{:?}", obs.warnings);
    assert!(obs.changes.is_empty());
    assert_eq!(fx.state(), before);

    // A missing snapshot is SourceNotFound, and leaves nothing.
    let bad = fx.request(
        "vm2",
        &self::uid(),
        vec![DiskRequest {
            source: ResolvedSource::Golden {
                pool: gold.ctx.pool.clone(),
                namespace: gold.kube_ns.clone(),
                image: "golden".into(),
                snapshot: "v9".into(),
            },
            size_bytes: None,
        }],
    );
    let e = expect_err(fx.ensure(&bad).await, "SourceNotFound");
    assert!(e.to_string().contains("no snapshot 'v9'"), "{e}");
    assert_eq!(fx.state(), before);
    drop(fx); // clones first, then the golden image
}

#[tokio::test]
async fn rbd_source_is_deep_copied_without_its_metadata() {
    let src = Fixture::new("rbdsrc");
    src.io
        .create_image("base", 8 * MIB, &ImageOptions::default())
        .unwrap();
    let data: Vec<u8> = (0..2 * MIB as usize).map(|i| (i % 5) as u8 + 9).collect();
    src.write("base", MIB, &data);
    {
        let img = src.io.open_image("base").unwrap();
        img.metadata_set("vm_name", "base").unwrap();
        img.metadata_set("_k8s_owner_uid", "someone-else").unwrap();
        img.metadata_set("conf_rbd_cache", "false").unwrap();
    }
    let fx = Fixture::new("rbdcopy");
    let uid = uid();
    let req = fx.request(
        "vm1",
        &uid,
        vec![
            blank(MIB),
            DiskRequest {
                source: ResolvedSource::Rbd {
                    pool: src.ctx.pool.clone(),
                    namespace: src.kube_ns.clone(),
                    image: "base".into(),
                },
                size_bytes: Some(16 * MIB),
            },
        ],
    );
    let obs = fx.ensure(&req).await.expect("deep copy");
    assert_eq!(obs.images[1].size_bytes, 16 * MIB);
    assert!(obs.images[1].parent.is_none(), "a deep copy is independent");
    assert_eq!(fx.read("data_vm1_0", MIB, data.len()), data);
    let meta = fx.metadata("data_vm1_0");
    assert_eq!(meta.get("_k8s_owner_uid"), Some(&uid));
    assert_eq!(
        meta.get("conf_rbd_cache").map(String::as_str),
        Some("false"),
        "librbd settings kept"
    );
    assert!(!meta.contains_key("vm_name"), "source metadata dropped: {meta:?}");
    // The source is untouched and can go.
    drop(fx);
    assert_eq!(
        src.io
            .open_image("base")
            .unwrap()
            .metadata_get("vm_name")
            .unwrap(),
        "base"
    );
}

#[tokio::test]
async fn clone_of_another_vm_at_a_snapshot() {
    let fx = Fixture::new("clonevm");
    let uid_a = uid();
    fx.ensure(&fx.request("vma", &uid_a, vec![blank(4 * MIB), blank(MIB)]))
        .await
        .unwrap();
    fx.write("system_vma", 0, b"before the snapshot");
    fx.io.open_image("system_vma").unwrap().snap_create("s1").unwrap();
    fx.write("system_vma", 0, b"AFTER  the snapshot");

    let uid_b = uid();
    let clone_of = |image: &str, snapshot: Option<&str>| DiskRequest {
        source: ResolvedSource::CloneOf {
            pool: fx.ctx.pool.clone(),
            namespace: fx.kube_ns.clone(),
            image: image.into(),
            snapshot: snapshot.map(Into::into),
        },
        size_bytes: None,
    };
    let missing = fx.request("vmb", &uid_b, vec![clone_of("system_vma", Some("nope"))]);
    expect_err(fx.ensure(&missing).await, "SourceNotFound");

    let req = fx.request(
        "vmb",
        &uid_b,
        vec![clone_of("system_vma", Some("s1")), clone_of("data_vma_0", None)],
    );
    let obs = fx.ensure(&req).await.expect("clone");
    assert_eq!(obs.images[0].size_bytes, 4 * MIB);
    assert!(obs.images.iter().all(|i| i.parent.is_none()));
    assert_eq!(fx.read("system_vmb", 0, 19), b"before the snapshot");
    let meta = fx.metadata("system_vmb");
    assert_eq!(meta["vm_name"], "vmb");
    assert_eq!(meta["_k8s_owner_uid"], uid_b);
    assert_eq!(meta["xml"], req.rendered_xml);
    let snaps = fx.io.open_image("system_vmb").unwrap().snap_list().unwrap();
    assert!(
        snaps.is_empty(),
        "a copy at a snapshot starts its own history, without the source's: {snaps:?}"
    );
    // Nothing links the clone to its source: the source VM can be deleted.
    match delete_storage(&fx.ctx, &fx.kube_ns, "vma", &uid_a).await.unwrap() {
        DeleteOutcome::Deleted {
            images,
            group_removed,
            ..
        } => {
            assert_eq!(images.len(), 2);
            assert!(group_removed);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fx.read("system_vmb", 0, 19), b"before the snapshot");
}

/// A VM the way SEAPATH's vm_manager leaves it: group, images, metadata, no owner key.
fn vm_manager_vm(fx: &Fixture, name: &str) -> (Vec<u8>, Vec<u8>) {
    let system = format!("system_{name}");
    let data0 = format!("data_{name}_0");
    fx.io
        .create_image(&system, 8 * MIB, &ImageOptions::default())
        .unwrap();
    fx.io
        .create_image(&data0, 4 * MIB, &ImageOptions::default())
        .unwrap();
    let sys_data: Vec<u8> = (0..MIB as usize).map(|i| (i % 3) as u8 + 1).collect();
    let d0_data: Vec<u8> = (0..MIB as usize).map(|i| (i % 11) as u8 + 1).collect();
    fx.write(&system, 0, &sys_data);
    fx.write(&data0, 2 * MIB, &d0_data);
    fx.io.group_create(name).unwrap();
    fx.io.group_image_add(name, &fx.io, &system).unwrap();
    fx.io.group_image_add(name, &fx.io, &data0).unwrap();
    let img = fx.io.open_image(&system).unwrap();
    img.metadata_set("vm_name", name).unwrap();
    img.metadata_set("_base_xml", "<domain><name>x</name></domain>")
        .unwrap();
    img.metadata_set("xml", "<domain><name>old</name><uuid>1</uuid></domain>")
        .unwrap();
    img.metadata_set("_pacemaker_meta", "{\"a\": 1}").unwrap();
    img.metadata_set("_additional_disks", "1").unwrap();
    (sys_data, d0_data)
}

/// A VM the way vm_manager's `create` makes it (reference: its `_create_xml` and
/// `_configure_vm`): images imported, a group named like the VM, and on the system image
/// `vm_name`, `_base_xml` (without `<uuid>`), `xml` (the only place of the random UUID; one RBD
/// disk per image with `<auth>`, monitors by host name on port 6789, one bus for all),
/// `_disk_bus`, `_additional_disks`; no `_stop_timeout` (not given); a snapshot on every disk.
struct VmManagerVm {
    name: String,
    uuid: Uuid,
    images: Vec<String>,
    data: Vec<Vec<u8>>,
}

const VMM_BASE_XML: &str = "<domain type='kvm'>\n  <name>template</name>\n  <memory unit='MiB'>64</memory>\n  \
<vcpu>1</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>\n  <devices><serial type='pty'/></devices>\n</domain>\n";

/// The `xml` vm_manager generates for `name` with these images on `bus`.
fn vm_manager_xml(name: &str, uuid: Uuid, images: &[String], bus: &str) -> String {
    let disks: String = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            format!(
                "<disk type=\"network\" device=\"disk\"><driver name=\"qemu\" type=\"raw\" cache=\"writeback\" />\
                 <auth username=\"libvirt\"><secret type=\"ceph\" uuid=\"7f3e6a52-93b4-4a8e-9d11-0c6a2b8e4f10\" /></auth>\
                 <source protocol=\"rbd\" name=\"rbd/{image}\"><host name=\"hv1\" port=\"6789\" />\
                 <host name=\"hv2\" port=\"6789\" /></source><target dev=\"vd{}\" bus=\"{bus}\" /></disk>",
                (b'a' + i as u8) as char
            )
        })
        .collect();
    format!(
        "<domain type=\"kvm\"><name>{name}</name><memory unit=\"MiB\">64</memory><vcpu>1</vcpu>\
         <os><type arch=\"x86_64\">hvm</type></os><devices><serial type=\"pty\" />{disks}</devices>\
         <uuid>{uuid}</uuid></domain>"
    )
}

fn vm_manager_create(fx: &Fixture, name: &str, data_disks: usize, bus: &str) -> VmManagerVm {
    let images: Vec<String> = std::iter::once(format!("system_{name}"))
        .chain((0..data_disks).map(|i| format!("data_{name}_{i}")))
        .collect();
    let mut data = Vec::new();
    fx.io.group_create(name).unwrap();
    for (index, image) in images.iter().enumerate() {
        fx.io
            .create_image(image, 4 * MIB, &ImageOptions::default())
            .unwrap();
        let content: Vec<u8> = format!("{name} disk {index} ")
            .bytes()
            .cycle()
            .take(64 * 1024)
            .collect();
        fx.write(image, MIB, &content);
        data.push(content);
        fx.io.group_image_add(name, &fx.io, image).unwrap();
    }
    let uuid = Uuid::new_v4();
    let system = fx.io.open_image(&images[0]).unwrap();
    system.metadata_set("vm_name", name).unwrap();
    system
        .metadata_set("xml", &vm_manager_xml(name, uuid, &images, bus))
        .unwrap();
    system.metadata_set("_base_xml", VMM_BASE_XML).unwrap();
    system.metadata_set("_disk_bus", bus).unwrap();
    system
        .metadata_set("_pacemaker_meta", "{\"is-managed\": \"true\"}")
        .unwrap();
    if data_disks > 0 {
        system
            .metadata_set("_additional_disks", &data_disks.to_string())
            .unwrap();
    }
    drop(system);
    for image in &images {
        fx.io.open_image(image).unwrap().snap_create("before").unwrap();
    }
    VmManagerVm {
        name: name.to_string(),
        uuid,
        images,
        data,
    }
}

/// A request that adopts `vm` as it is: its base XML, its disks, no setting of its own.
fn adopting_request(fx: &Fixture, vm: &VmManagerVm, uid: &str) -> VmStorageRequest {
    let mut req = fx.request(&vm.name, uid, vm.images.iter().map(|_| blank(4 * MIB)).collect());
    req.base_xml = VMM_BASE_XML.trim_end().to_string();
    // The operator's rendering: the same UUID and disks, its own monitors and owner marker.
    let bus = fx
        .metadata(&vm.images[0])
        .get("_disk_bus")
        .cloned()
        .unwrap_or_else(|| "virtio".into());
    req.rendered_xml = vm_manager_xml(&vm.name, vm.uuid, &vm.images, &bus)
        .replace("name=\"hv1\" port=\"6789\"", "name=\"10.0.0.1\" port=\"3300\"")
        .replace(
            "<devices>",
            "<metadata><seapath:owner xmlns:seapath=\"https://seapath.lfenergy.org/operator/v1\" \
             namespace=\"ns\" name=\"vm\" uid=\"u\"/></metadata><devices>",
        );
    req.metadata.clear();
    req.internal = [("_disk_bus".to_string(), bus)].into();
    req.creation_defaults = [("_stop_timeout".to_string(), "60".to_string())].into();
    req
}

/// The system image's metadata, and each disk's data and snapshots.
type VmManagerView = (BTreeMap<String, String>, Vec<(Vec<u8>, Vec<String>)>);

/// Everything vm_manager reads of a VM: the system image's metadata but the operator's own
/// `_k8s_*` keys, every image's data at the written offset, and its snapshots.
fn vm_manager_view(fx: &Fixture, vm: &VmManagerVm) -> VmManagerView {
    let meta = fx
        .metadata(&vm.images[0])
        .into_iter()
        .filter(|(k, _)| !k.starts_with("_k8s_"))
        .collect();
    let disks = vm
        .images
        .iter()
        .zip(&vm.data)
        .map(|(image, data)| {
            let snaps = fx
                .io
                .open_image_read_only(image, None)
                .unwrap()
                .snap_list()
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect();
            (fx.read(image, MIB, data.len()), snaps)
        })
        .collect();
    (meta, disks)
}

#[tokio::test]
async fn the_uuid_of_a_vm_manager_vm_is_read_from_its_xml() {
    let fx = Fixture::new("vmm-uuid");
    let vm = vm_manager_create(&fx, "VM1", 1, "virtio");
    let uid = uid();
    assert!(!VMM_BASE_XML.contains("<uuid>"), "vm_manager's base XML has none");
    assert_eq!(
        stored_domain_uuid(&fx.ctx, &fx.kube_ns, "VM1", &uid)
            .await
            .unwrap(),
        Some(vm.uuid),
        "the UUID lives only in `xml`"
    );
    assert_eq!(
        stored_domain_uuid(&fx.ctx, &fx.kube_ns, "vm1", &uid)
            .await
            .unwrap(),
        None,
        "names are case-sensitive"
    );
    // Once adopted, this object keeps reading it; another object does not.
    let before = vm_manager_view(&fx, &vm);
    fx.ensure(&adopting_request(&fx, &vm, &uid)).await.expect("adopt");
    assert_eq!(vm_manager_view(&fx, &vm).1, before.1, "data and snapshots kept");
    assert_eq!(
        stored_domain_uuid(&fx.ctx, &fx.kube_ns, "VM1", &uid)
            .await
            .unwrap(),
        Some(vm.uuid)
    );
    assert_eq!(
        seapath_operator::domain_xml::extract_uuid(&fx.metadata("system_VM1")["xml"]).unwrap(),
        Some(vm.uuid),
        "adoption keeps the UUID the VM runs with"
    );
    assert_eq!(
        stored_domain_uuid(&fx.ctx, &fx.kube_ns, "VM1", &self::uid())
            .await
            .unwrap(),
        None
    );
}

/// What vm_manager's `clone` does: deep-copy every image of `src` (snapshots and ALL image
/// metadata along, the operator's owner keys included), group the copies, then rewrite
/// `vm_name`, `xml` (a fresh UUID) and `_base_xml` on the copy's system image.
fn vm_manager_clone(fx: &Fixture, src: &str, dst: &str, data_disks: usize) -> VmManagerVm {
    let images: Vec<String> = std::iter::once(format!("system_{dst}"))
        .chain((0..data_disks).map(|i| format!("data_{dst}_{i}")))
        .collect();
    let sources: Vec<String> = std::iter::once(format!("system_{src}"))
        .chain((0..data_disks).map(|i| format!("data_{src}_{i}")))
        .collect();
    fx.io.group_create(dst).unwrap();
    let mut data = Vec::new();
    for (source, image) in sources.iter().zip(&images) {
        fx.io
            .open_image_read_only(source, None)
            .unwrap()
            .deep_copy(&fx.io, image, &ImageOptions::default())
            .unwrap();
        fx.io.group_image_add(dst, &fx.io, image).unwrap();
        data.push(fx.read(image, MIB, 64 * 1024));
    }
    let uuid = Uuid::new_v4();
    let system = fx.io.open_image(&images[0]).unwrap();
    let bus = system
        .metadata_get("_disk_bus")
        .unwrap_or_else(|_| "virtio".into());
    let base = system.metadata_get("_base_xml").unwrap();
    system.metadata_set("vm_name", dst).unwrap();
    system
        .metadata_set("xml", &vm_manager_xml(dst, uuid, &images, &bus))
        .unwrap();
    system.metadata_set("_base_xml", &base).unwrap();
    VmManagerVm {
        name: dst.to_string(),
        uuid,
        images,
        data,
    }
}

#[tokio::test]
async fn a_vm_manager_clone_of_an_operator_vm_is_adoptable() {
    let fx = Fixture::new("vmm-clone");
    let (uid_source, uid_clone, uid_third) = (uid(), uid(), uid());
    let mut source = fx.request("opvm1", &uid_source, vec![blank(4 * MIB), blank(4 * MIB)]);
    source.base_xml = VMM_BASE_XML.to_string();
    fx.ensure(&source).await.expect("the operator's VM");
    for image in ["system_opvm1", "data_opvm1_0"] {
        fx.write(image, MIB, format!("{image} content").as_bytes());
        fx.io.open_image(image).unwrap().snap_create("before").unwrap();
    }
    let clone = vm_manager_clone(&fx, "opvm1", "opclone", 1);
    assert_eq!(
        fx.metadata("data_opclone_0")["_k8s_owner_uid"],
        uid_source,
        "the deep copy carries the source's owner keys"
    );
    let before = vm_manager_view(&fx, &clone);
    let obs = fx
        .ensure(&adopting_request(&fx, &clone, &uid_clone))
        .await
        .expect("the clone is adoptable");
    assert!(obs.adopted);
    assert_eq!(
        vm_manager_view(&fx, &clone).1,
        before.1,
        "data and snapshots kept"
    );
    for image in &clone.images {
        let meta = fx.metadata(image);
        assert_eq!(meta["_k8s_owner_uid"], uid_clone, "{image}");
        assert_eq!(meta["_k8s_owner_vm"], "opclone", "{image}");
    }
    // The protection stays: the source is its object's, the clone now the adopter's.
    for (vm, uid) in [
        ("opvm1", &uid_third),
        ("opclone", &uid_third),
        ("opvm1", &uid_clone),
    ] {
        let state = fx.state();
        let mut req = fx.request(vm, uid, vec![blank(4 * MIB), blank(4 * MIB)]);
        req.base_xml = VMM_BASE_XML.to_string();
        expect_err(fx.ensure(&req).await, "OwnedByAnotherObject");
        assert_eq!(fx.state(), state, "{vm}: nothing changed");
    }
    // Deleting the clone's object removes the clone only.
    match delete_storage(&fx.ctx, &fx.kube_ns, "opclone", &uid_clone)
        .await
        .unwrap()
    {
        DeleteOutcome::Deleted { images, .. } => assert_eq!(images.len(), 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(fx.images(), ["data_opvm1_0", "system_opvm1"]);
}

/// Every kind of VM vm_manager makes is adopted keeping its data, snapshots, UUID and every key
/// vm_manager reads; only the operator's `_k8s_*` keys are added. A second call writes nothing.
#[tokio::test]
async fn adoption_keeps_everything_vm_manager_reads() {
    let fx = Fixture::new("vmm-keep");
    let long = format!("Substation{}", "A1".repeat(28));
    assert_eq!(long.len(), 66);
    let mut kinds = vec![
        vm_manager_create(&fx, "VM1", 0, "virtio"),
        vm_manager_create(&fx, &long, 2, "virtio"),
        vm_manager_create(&fx, "sata1", 1, "sata"),
    ];
    // A clone of the upper-case one, made by vm_manager.
    kinds.push(vm_manager_clone(&fx, "VM1", "VM1copy", 0));
    for vm in &kinds {
        let uid = uid();
        let before = vm_manager_view(&fx, vm);
        assert!(!before.0.contains_key("_stop_timeout"));
        let req = adopting_request(&fx, vm, &uid);
        let obs = fx
            .ensure(&req)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", vm.name));
        assert!(obs.adopted, "{}", vm.name);
        assert_eq!(
            vm_manager_view(&fx, vm),
            before,
            "{}: what vm_manager reads is kept",
            vm.name
        );
        let meta = fx.metadata(&vm.images[0]);
        assert_eq!(meta["_k8s_owner_uid"], uid);
        assert_eq!(meta["_k8s_owner_vm"], vm.name);
        assert_eq!(
            seapath_operator::domain_xml::extract_uuid(&meta["xml"]).unwrap(),
            Some(vm.uuid)
        );
        let again = fx.ensure(&req).await.unwrap();
        assert!(again.changes.is_empty(), "{}: {:?}", vm.name, again.changes);

        // What the user asks for is written: a stop timeout, and a bus of its own for the
        // system disk (the XML then is the operator's).
        let mut asked = req.clone();
        asked.internal.insert("_stop_timeout".into(), "45".into());
        fx.ensure(&asked).await.unwrap();
        let meta = fx.metadata(&vm.images[0]);
        assert_eq!(meta["_stop_timeout"], "45");
        assert_eq!(
            meta["xml"], before.0["xml"],
            "{}: the XML still says what the spec says",
            vm.name
        );
    }
}

#[tokio::test]
async fn adopts_a_vm_manager_vm_without_touching_its_data() {
    let fx = Fixture::new("adopt");
    let (sys_data, d0_data) = vm_manager_vm(&fx, "old");
    let uid = uid();
    let req = fx.request("old", &uid, vec![blank(8 * MIB), blank(4 * MIB)]);
    let obs = fx.ensure(&req).await.expect("adopt");
    assert!(obs.adopted);
    assert_eq!(
        obs.images.iter().map(|i| i.size_bytes).collect::<Vec<_>>(),
        [8 * MIB, 4 * MIB]
    );
    assert_eq!(
        fx.read("system_old", 0, sys_data.len()),
        sys_data,
        "system data untouched"
    );
    assert_eq!(
        fx.read("data_old_0", 2 * MIB, d0_data.len()),
        d0_data,
        "data disk untouched"
    );
    assert_eq!(
        fx.images(),
        ["data_old_0", "system_old"],
        "no image created or replaced"
    );
    let meta = fx.metadata("system_old");
    assert_eq!(meta["_k8s_owner_uid"], uid);
    assert_eq!(meta["_pacemaker_meta"], "{\"a\": 1}", "vm_manager keys stay");
    assert_eq!(
        meta["xml"], req.rendered_xml,
        "a base XML other than vm_manager's: the operator's XML"
    );
    assert_eq!(fx.metadata("data_old_0")["_k8s_owner_uid"], uid);

    let again = fx.ensure(&req).await.unwrap();
    assert!(!again.adopted, "adopted once");
    assert!(again.changes.is_empty(), "{:?}", again.changes);
}

#[tokio::test]
async fn refuses_storage_owned_by_another_object() {
    let fx = Fixture::new("owned");
    let (uid_a, uid_b) = (uid(), uid());
    fx.ensure(&fx.request("vm1", &uid_a, vec![blank(MIB), blank(MIB)]))
        .await
        .unwrap();
    // A refused call touches nothing, not even the refused object's own leftover temporary image.
    fx.io
        .create_image(
            &format!("tmp_data_vm1_1_{}", uid_key(&uid_b)),
            MIB,
            &ImageOptions::default(),
        )
        .unwrap();
    let before = fx.state();
    let e = expect_err(
        fx.ensure(&fx.request("vm1", &uid_b, vec![blank(2 * MIB), blank(2 * MIB), blank(MIB)]))
            .await,
        "OwnedByAnotherObject",
    );
    assert!(!e.is_retryable());
    assert!(e.to_string().contains(&uid_a), "{e}");
    assert_eq!(fx.state(), before, "nothing changed");
    match delete_storage(&fx.ctx, &fx.kube_ns, "vm1", &uid_b).await.unwrap() {
        DeleteOutcome::NotOwned { owner_uid, .. } => assert_eq!(owner_uid, Some(uid_a.clone())),
        other => panic!("{other:?}"),
    }
    assert_eq!(fx.state(), before, "nothing deleted");

    // A stray image named like a VM's system image but not a VM: a name conflict.
    fx.io
        .create_image("system_vm3", MIB, &ImageOptions::default())
        .unwrap();
    expect_err(
        fx.ensure(&fx.request("vm3", &uid_b, vec![blank(MIB)])).await,
        "NameConflict",
    );
}

#[tokio::test]
async fn resumes_after_a_killed_run() {
    let fx = Fixture::new("crash");
    let uid = uid();
    let other = Uuid::new_v4().to_string();
    let raw_path = fx.path("disk.raw");
    let data = sample_raw(&raw_path);
    let req = fx.request(
        "vm1",
        &uid,
        vec![
            path_source(&raw_path, ImageFormat::Raw, None),
            blank(2 * MIB),
            blank(MIB),
        ],
    );
    // State a killed earlier run leaves: a half-written temporary system image with a
    // snapshot, a data disk already complete (renamed, owner keys), no group, no metadata, and
    // a half download; plus another object's temporary image, which must survive.
    let tmp = format!("tmp_system_vm1_{}", uid_key(&uid));
    fx.io
        .create_image(&tmp, 64 * MIB, &ImageOptions::default())
        .unwrap();
    fx.write(&tmp, 0, &[0xee; 4096]);
    fx.io.open_image(&tmp).unwrap().snap_create("half").unwrap();
    fx.io
        .create_image("data_vm1_0", 2 * MIB, &ImageOptions::default())
        .unwrap();
    {
        let img = fx.io.open_image("data_vm1_0").unwrap();
        img.metadata_set("_k8s_owner_uid", &uid).unwrap();
        img.metadata_set("_k8s_owner", &format!("{}/vm1", fx.kube_ns))
            .unwrap();
    }
    fx.write("data_vm1_0", 0, b"written by the guest already");
    let foreign_tmp = format!("tmp_system_vm9_{}", uid_key(&other));
    fx.io
        .create_image(&foreign_tmp, MIB, &ImageOptions::default())
        .unwrap();
    let scratch = fx
        .ctx
        .scratch_dir
        .join(format!("seapath-import-{}-0.download", uid_key(&uid)));
    std::fs::write(&scratch, b"half a download").unwrap();
    let foreign_scratch = fx
        .ctx
        .scratch_dir
        .join(format!("seapath-import-{}-0.download", uid_key(&other)));
    std::fs::write(&foreign_scratch, b"someone else's").unwrap();

    let obs = fx.ensure(&req).await.expect("resume");
    assert!(
        obs.changes
            .iter()
            .any(|c| c.contains("removed leftover temporary image")),
        "{:?}",
        obs.changes
    );
    assert_eq!(
        fx.images(),
        ["data_vm1_0", "data_vm1_1", "system_vm1", foreign_tmp.as_str()]
    );
    assert!(
        fx.read("system_vm1", 0, data.len()) == data,
        "re-imported completely"
    );
    assert_eq!(
        fx.read("data_vm1_0", 0, 28),
        b"written by the guest already",
        "kept, not recreated"
    );
    assert!(
        fx.io
            .open_image("system_vm1")
            .unwrap()
            .snap_list()
            .unwrap()
            .is_empty()
    );
    assert_eq!(fx.metadata("system_vm1")["vm_name"], "vm1");
    assert!(!scratch.exists(), "own leftover download removed");
    assert!(foreign_scratch.exists(), "another object's download kept");

    // Killed between the renames and the metadata: the next run completes it.
    let sys = fx.io.open_image("system_vm1").unwrap();
    sys.metadata_remove("vm_name").unwrap();
    sys.metadata_remove("xml").unwrap();
    drop(sys);
    fx.io.group_image_remove("vm1", &fx.io, "data_vm1_1").unwrap();
    let obs = fx.ensure(&req).await.unwrap();
    assert_eq!(obs.changes.len(), 2, "{:?}", obs.changes);
    assert_eq!(fx.metadata("system_vm1")["vm_name"], "vm1");
    assert_eq!(fx.io.group_image_list("vm1").unwrap().len(), 3);
}

/// Writes the pointer `rbd_id.<name>` to image id `id` with the `rados` tool, as librbd's rename
/// does before it moves the directory entry.
fn write_id_pointer(fx: &Fixture, name: &str, id: &str) {
    let file = fx.path(&format!("rbd_id.{name}"));
    std::fs::write(
        &file,
        [&(id.len() as u32).to_le_bytes()[..], id.as_bytes()].concat(),
    )
    .unwrap();
    run(Command::new("rados")
        .args([
            "--conf",
            &env("CEPH_CONF"),
            "--pool",
            fx.io.pool(),
            "--namespace",
            &fx.kube_ns,
        ])
        .arg("put")
        .arg(format!("rbd_id.{name}"))
        .arg(&file));
}

/// A controller killed inside librbd's rename of a finished disk, at either of its steps: the
/// next run keeps the disk it built, under its final name, and leaves no stray pointer.
#[tokio::test]
async fn a_rename_killed_half_way_is_finished_and_its_stray_pointers_removed() {
    let fx = Fixture::new("rename");
    let uid = uid();
    let req = fx.request("vm1", &uid, vec![blank(MIB), blank(MIB)]);
    // Killed after the new name's pointer was written, before the directory moved.
    let tmp = format!("tmp_system_vm1_{}", uid_key(&uid));
    fx.io.create_image(&tmp, MIB, &ImageOptions::default()).unwrap();
    {
        let img = fx.io.open_image(&tmp).unwrap();
        img.metadata_set("_k8s_owner_uid", &uid).unwrap();
        img.metadata_set("_k8s_owner", &format!("{}/vm1", fx.kube_ns))
            .unwrap();
    }
    fx.write(&tmp, 0, b"the finished disk");
    let id = fx.io.open_image(&tmp).unwrap().id().unwrap();
    write_id_pointer(&fx, "system_vm1", &id);
    // And a pointer to an image removed since (what an earlier run's leftover removal left).
    write_id_pointer(&fx, "data_vm1_0", "1234deadbeef");

    let obs = fx.ensure(&req).await.expect("the interrupted rename is finished");
    let changes = obs.changes.join("; ");
    assert!(
        changes.contains(&format!("finished the interrupted rename of {tmp} to system_vm1")),
        "{changes}"
    );
    assert!(
        changes.contains("removed the stray id pointer rbd_id.data_vm1_0"),
        "{changes}"
    );
    assert_eq!(fx.images(), ["data_vm1_0", "system_vm1"]);
    assert_eq!(
        fx.read("system_vm1", 0, 17),
        b"the finished disk",
        "kept, not rebuilt"
    );
    assert_eq!(fx.io.open_image("system_vm1").unwrap().id().unwrap(), id);
    assert_eq!(fx.io.image_id_pointer(&tmp).unwrap(), None);

    // Killed after the directory moved, before the old pointer was removed: through the stray
    // pointer, the temporary name still opens the VM's disk; it is removed, the disk is not.
    write_id_pointer(&fx, &tmp, &id);
    let obs = fx.ensure(&req).await.unwrap();
    assert!(
        obs.changes.iter().any(|c| c.contains(&format!("rbd_id.{tmp}"))),
        "{:?}",
        obs.changes
    );
    assert_eq!(fx.io.image_id_pointer(&tmp).unwrap(), None);
    assert_eq!(fx.read("system_vm1", 0, 17), b"the finished disk");
    assert_eq!(fx.io.group_image_list("vm1").unwrap().len(), 2);
}

/// A removal killed after librbd removed an image's header (the data are gone, the name is
/// still listed): the VM's deletion finishes it and removes the rest and the group, instead of
/// stopping on an ownership it can no longer read.
#[tokio::test]
async fn a_removal_killed_half_way_is_finished_by_the_deletion() {
    let fx = Fixture::new("halfrm");
    let uid = uid();
    fx.ensure(&fx.request("vm1", &uid, vec![blank(MIB), blank(MIB)]))
        .await
        .unwrap();
    fx.io.group_image_remove("vm1", &fx.io, "system_vm1").unwrap();
    let id = fx.io.open_image("system_vm1").unwrap().id().unwrap();
    run(Command::new("rados")
        .args([
            "--conf",
            &env("CEPH_CONF"),
            "--pool",
            fx.io.pool(),
            "--namespace",
            &fx.kube_ns,
        ])
        .args(["rm", &format!("rbd_header.{id}")]));
    assert!(fx.images().contains(&"system_vm1".to_string()), "still listed");
    assert!(
        fx.io.open_image_read_only("system_vm1", None).is_err(),
        "cannot be opened"
    );

    let outcome = delete_storage(&fx.ctx, &fx.kube_ns, "vm1", &uid).await.unwrap();
    match outcome {
        DeleteOutcome::Deleted {
            images,
            group_removed,
            kept,
            ..
        } => {
            assert_eq!(images, ["system_vm1", "data_vm1_0"]);
            assert!(group_removed);
            assert!(kept.is_empty(), "{kept:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(fx.images().is_empty(), "{:?}", fx.images());
    assert!(fx.io.group_list().unwrap().is_empty());
}

/// The controller dies (here: the call is dropped) in the middle of a download; the same call
/// made again starts over and completes, and no half image is ever visible under a VM name.
#[tokio::test]
async fn a_call_dropped_mid_import_is_resumed() {
    let fx = Fixture::new("dropped");
    let body: Vec<u8> = (0..32 * MIB as usize).map(|i| (i % 17) as u8 + 1).collect();
    let mut slow = Route::ok("application/octet-stream", body.clone());
    slow.stall_once = Some((20 * MIB as usize, Arc::new(AtomicBool::new(false))));
    let base = serve(HashMap::from([("/slow.raw", slow)])).await;
    let uid = uid();
    let req = fx.request(
        "vm1",
        &uid,
        vec![http_source(format!("{base}/slow.raw"), ImageFormat::Raw)],
    );
    let progress: Arc<Mutex<Vec<ImportProgress>>> = Arc::default();
    let seen = progress.clone();
    let first = tokio::time::timeout(
        Duration::from_secs(3),
        ensure_storage(&fx.ctx, &req, move |p| seen.lock().unwrap().push(p)),
    )
    .await;
    assert!(first.is_err(), "the first call stalls: {first:?}");
    assert!(
        progress.lock().unwrap().iter().any(|p| p.bytes_done > 0),
        "it was writing: {:?}",
        progress.lock().unwrap()
    );
    let images = fx.images();
    assert_eq!(
        images,
        [format!("tmp_system_vm1_{}", uid_key(&uid))],
        "only the temporary image exists"
    );
    assert!(
        observe_storage(&fx.ctx, &fx.kube_ns, "vm1")
            .await
            .unwrap()
            .is_none()
    );

    // The re-run may find the dropped call's writer still closing the image: busy, retryable.
    let mut attempt = 0;
    let obs = loop {
        attempt += 1;
        match fx.ensure(&req).await {
            Ok(obs) => break obs,
            Err(e) if e.is_retryable() && attempt < 20 => {
                eprintln!("attempt {attempt}: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(obs.images[0].size_bytes, 32 * MIB);
    assert!(fx.read("system_vm1", 0, body.len()) == body);
    assert_eq!(fx.images(), ["system_vm1"]);
}

#[tokio::test]
async fn import_larger_than_the_pool_is_pool_full() {
    // A pool of its own, with a 32 MiB quota: without a ceph-mgr the test bed reports no usage,
    // and the quota is what limits the pool.
    let cluster = connect();
    let pool = format!("st-full-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let cmd = |json: String| {
        cluster
            .mon_command(&json)
            .unwrap_or_else(|e| panic!("{json}: {e}"))
    };
    cmd(format!(
        r#"{{"prefix":"osd pool create","pool":"{pool}","pg_num":8,"pgp_num":8}}"#
    ));
    struct DropPool(Cluster, String);
    impl Drop for DropPool {
        fn drop(&mut self) {
            let json = format!(
                r#"{{"prefix":"osd pool delete","pool":"{0}","pool2":"{0}","yes_i_really_really_mean_it":true}}"#,
                self.1
            );
            if let Err(e) = self.0.mon_command(&json) {
                eprintln!("cleanup of pool {}: {e}", self.1);
            }
        }
    }
    let _pool_guard = DropPool(cluster.clone(), pool.clone());
    cmd(format!(
        r#"{{"prefix":"osd pool set-quota","pool":"{pool}","field":"max_bytes","val":"{}"}}"#,
        32 * MIB
    ));
    cluster
        .io_context(&pool, "")
        .unwrap()
        .rbd_pool_init(false)
        .expect("rbd pool init");

    let fx = Fixture::in_pool("full", &pool);
    let raw_path = fx.path("disk.raw");
    sample_raw(&raw_path);
    let e = expect_err(
        fx.ensure(&fx.request(
            "vm1",
            &uid(),
            vec![path_source(&raw_path, ImageFormat::Raw, None)],
        ))
        .await,
        "PoolFull",
    );
    assert!(e.is_retryable());
    assert!(e.to_string().contains("64 MiB"), "what the import needs: {e}");
    assert!(e.to_string().contains("32 MiB"), "what the pool has: {e}");

    let mut huge = Route::ok("application/octet-stream", vec![1; 1024]);
    huge.content_length = Some(100 * MIB);
    let base = serve(HashMap::from([("/huge.raw", huge)])).await;
    expect_err(
        fx.ensure(&fx.request(
            "vm1",
            &uid(),
            vec![http_source(format!("{base}/huge.raw"), ImageFormat::Raw)],
        ))
        .await,
        "PoolFull",
    );
    assert!(fx.images().is_empty(), "nothing left: {:?}", fx.images());
    assert!(fx.io.group_list().unwrap().is_empty());
    drop(fx);
}

#[tokio::test]
async fn delete_removes_snapshots_images_group_and_respects_clones() {
    let fx = Fixture::new("delete");
    let other = Fixture::new("deleteclone");
    let uid = uid();
    fx.ensure(&fx.request("vm1", &uid, vec![blank(4 * MIB), blank(MIB)]))
        .await
        .unwrap();
    {
        let sys = fx.io.open_image("system_vm1").unwrap();
        sys.snap_create("s1").unwrap();
        sys.snap_create("s2").unwrap();
        sys.snap_protect("s2").unwrap();
        fx.io.open_image("data_vm1_0").unwrap().snap_create("s1").unwrap();
    }
    fx.io.group_snap_create("vm1", "gs").unwrap();
    // A clone of the VM's snapshot in another namespace.
    fx.io
        .clone_image(
            "system_vm1",
            "s1",
            &other.io,
            "child",
            &ImageOptions {
                clone_format: Some(CloneFormat::V2),
                ..Default::default()
            },
        )
        .unwrap();
    let before = fx.state();
    assert_eq!(
        dependent_clones(&fx.ctx, &fx.kube_ns, "vm1").await.unwrap(),
        [format!("{}/{}/child", other.io.pool(), other.kube_ns)]
    );
    let e = expect_err(
        delete_storage(&fx.ctx, &fx.kube_ns, "vm1", &uid).await,
        "HasDependentClones",
    );
    assert!(e.to_string().contains(&format!("{}/child", other.kube_ns)), "{e}");
    assert_eq!(fx.state(), before, "nothing removed while a clone depends on it");

    other.io.remove_image("child").unwrap();
    match delete_storage(&fx.ctx, &fx.kube_ns, "vm1", &uid).await.unwrap() {
        DeleteOutcome::Deleted {
            images,
            snapshots,
            group_removed,
            kept,
        } => {
            assert_eq!(images, ["data_vm1_0", "system_vm1"]);
            assert_eq!(snapshots, 4, "group snapshot + s1, s2 + s1");
            assert!(group_removed);
            assert!(kept.is_empty(), "{kept:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(fx.state().is_empty(), "{}", fx.state());
    assert_eq!(
        delete_storage(&fx.ctx, &fx.kube_ns, "vm1", &uid).await.unwrap(),
        DeleteOutcome::Absent
    );
    assert!(
        observe_storage(&fx.ctx, &fx.kube_ns, "vm1")
            .await
            .unwrap()
            .is_none()
    );

    // An interrupted delete (data image gone, system image and group left) completes.
    fx.ensure(&fx.request("vm2", &uid, vec![blank(MIB), blank(MIB)]))
        .await
        .unwrap();
    fx.io.group_image_remove("vm2", &fx.io, "data_vm2_0").unwrap();
    fx.io.remove_image("data_vm2_0").unwrap();
    match delete_storage(&fx.ctx, &fx.kube_ns, "vm2", &uid).await.unwrap() {
        DeleteOutcome::Deleted {
            images,
            group_removed,
            ..
        } => {
            assert_eq!(images, ["system_vm2"]);
            assert!(group_removed);
        }
        other => panic!("{other:?}"),
    }
    // Interrupted after the system image: only the empty group is left.
    fx.ensure(&fx.request("vm3", &uid, vec![blank(MIB)]))
        .await
        .unwrap();
    fx.io.group_image_remove("vm3", &fx.io, "system_vm3").unwrap();
    fx.io.remove_image("system_vm3").unwrap();
    match delete_storage(&fx.ctx, &fx.kube_ns, "vm3", &uid).await.unwrap() {
        DeleteOutcome::Deleted {
            images,
            group_removed,
            ..
        } => {
            assert!(images.is_empty());
            assert!(group_removed);
        }
        other => panic!("{other:?}"),
    }
    assert!(fx.state().is_empty(), "{}", fx.state());
}

#[tokio::test]
async fn monitors_come_from_the_mon_map() {
    let mons = monitors(&connect()).await.expect("mon dump");
    let port: u16 = env("SEAPATH_CEPH_MON_PORT").parse().unwrap();
    assert_eq!(mons, [("127.0.0.1".to_string(), port)]);
}
