//! Integration tests of the Ceph layer (`seapath_operator::ceph`) against the real micro Ceph
//! cluster of the test bed (1 mon + 1 memstore OSD, Ceph 16 Pacific).
//!
//! They read what `hack/testbed.sh env` exports: CEPH_CONF, SEAPATH_CEPH_POOL,
//! SEAPATH_CEPH_CLIENT and SEAPATH_CEPH_AUTH. Without CEPH_CONF every test fails with a hint.
//! Each test works in its own RBD namespace (test name + random suffix), so tests run in
//! parallel, and removes it (with everything in it) when done, also on failure.
//!
//! Run with hack/test.sh, or `eval "$(hack/testbed.sh env)"` and `cargo test --test ceph_layer`.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use seapath_operator::ceph::{
    CephError, CloneFormat, Cluster, ClusterConfig, Features, GroupImageState, GroupSnapState, Image,
    ImageOptions, IoCtx, LockMode, SnapNamespace,
};
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

fn pool() -> String {
    env("SEAPATH_CEPH_POOL")
}

fn config() -> ClusterConfig {
    ClusterConfig {
        conf_path: conf_path(),
        client_id: env("SEAPATH_CEPH_CLIENT"),
        mount_timeout: Duration::from_secs(10),
        // Many clients in one process: no admin socket each (they would share a path).
        options: vec![("admin_socket".into(), String::new())],
    }
}

fn connect() -> Cluster {
    Cluster::connect(config())
        .unwrap_or_else(|e| panic!("cannot connect to the test bed's Ceph ({e}): {HINT}"))
}

/// Asserts that `result` failed with `errno` and returns the error.
#[track_caller]
fn expect_errno<T: std::fmt::Debug>(result: Result<T, CephError>, errno: i32) -> CephError {
    match result {
        Ok(v) => panic!(
            "expected {}, got Ok({v:?})",
            seapath_operator::ceph::errno_name(errno)
        ),
        Err(e) => {
            assert_eq!(
                e.errno,
                errno,
                "expected {}, got {e}",
                seapath_operator::ceph::errno_name(errno)
            );
            e
        }
    }
}

/// A unique RBD namespace for one test, emptied and removed on drop.
struct Scratch {
    cluster: Cluster,
    ns: String,
    io: IoCtx,
}

impl Scratch {
    fn new(test: &str) -> Scratch {
        let cluster = connect();
        let ns = format!("t-{test}-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let pool_io = cluster.io_context(&pool(), "").expect("pool io context");
        pool_io.create_namespace(&ns).expect("create test namespace");
        let io = cluster.io_context(&pool(), &ns).expect("namespace io context");
        Scratch { cluster, ns, io }
    }

    /// A second context on the same namespace through another connection (another client).
    fn other_client(&self) -> (Cluster, IoCtx) {
        let cluster = connect();
        let io = cluster.io_context(&pool(), &self.ns).expect("io context");
        (cluster, io)
    }

    fn create(&self, name: &str, size: u64) -> Image {
        self.io
            .create_image(name, size, &ImageOptions::default())
            .expect("create image");
        self.io.open_image(name).expect("open image")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = empty_namespace(&self.io) {
            eprintln!("cleanup of namespace {}: {e}", self.ns);
        }
        let pool_io = self.cluster.io_context(&pool(), "").expect("pool io context");
        if let Err(e) = pool_io.remove_namespace(&self.ns) {
            eprintln!("cleanup: {e}");
            if !thread::panicking() {
                panic!("test namespace {} not removed: {e}", self.ns);
            }
        }
    }
}

/// Removes every group and image (clones before parents, snapshots first) of the namespace.
fn empty_namespace(io: &IoCtx) -> Result<(), CephError> {
    for group in io.group_list()? {
        io.group_remove(&group)?;
    }
    for _round in 0..5 {
        let images = io.list_images()?;
        if images.is_empty() {
            return Ok(());
        }
        for name in images {
            if let Ok(image) = io.open_image(&name) {
                let _ = image.snap_purge();
            }
            let _ = io.remove_image(&name);
        }
    }
    match io.list_images()?.first() {
        None => Ok(()),
        Some(name) => io.remove_image(name),
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i % 251) as u8)).collect()
}

fn read(image: &Image, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = image.read_at(offset, &mut buf).expect("read");
    buf.truncate(n);
    buf
}

// ---------------------------------------------------------------------------------------------
// Connection, pools, namespaces

#[test]
fn connect_reports_client_identity() {
    let cluster = connect();
    assert_eq!(
        cluster.client_name(),
        format!("client.{}", env("SEAPATH_CEPH_CLIENT"))
    );
    assert!(cluster.instance_id() > 0);
    let addr = cluster.client_address().expect("client address");
    assert!(addr.contains("127.0.0.1"), "client address {addr}");
    // Send + Sync: used from several threads at once.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let c = cluster.clone();
            thread::spawn(move || c.io_context(&pool(), "").map(|io| io.pool_id()))
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap().expect("io context from a thread") >= 0);
    }
}

#[test]
fn connect_with_bad_conf_path_fails_promptly() {
    let _ = conf_path(); // fail with the hint, not with ENOENT, when the test bed is not set up
    let start = Instant::now();
    let err = expect_errno(
        Cluster::connect(ClusterConfig {
            conf_path: PathBuf::from("/nonexistent/ceph.conf"),
            mount_timeout: Duration::from_secs(2),
            ..config()
        }),
        libc::ENOENT,
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert!(err.to_string().contains("/nonexistent/ceph.conf"), "{err}");
    assert!(err.is_not_found());
}

#[test]
fn connect_to_unreachable_mon_times_out_after_mount_timeout() {
    let start = Instant::now();
    let mut cfg = config();
    cfg.mount_timeout = Duration::from_secs(2);
    cfg.options.push(("mon_host".into(), "v2:127.0.0.1:9".into()));
    let err = Cluster::connect(cfg).expect_err("no mon listens on port 9");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}: {err}",
        start.elapsed()
    );
    assert!(err.is_timeout(), "{err}");
}

#[test]
fn connect_with_unknown_client_fails_promptly_under_cephx() {
    let start = Instant::now();
    let mut cfg = config();
    cfg.client_id = format!("nosuchuser{}", std::process::id());
    cfg.mount_timeout = Duration::from_secs(2);
    let result = Cluster::connect(cfg);
    if env("SEAPATH_CEPH_AUTH") == "cephx" {
        let err = expect_errno(result, libc::EACCES);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?}: {err}",
            start.elapsed()
        );
    } else {
        // auth none: any name is accepted.
        result.expect("auth none accepts any client");
    }
}

#[test]
fn io_context_rejects_missing_pool_and_namespace() {
    let cluster = connect();
    let err = expect_errno(cluster.io_context("no-such-pool-xyz", ""), libc::ENOENT);
    assert!(
        err.to_string()
            .starts_with("rados ioctx create no-such-pool-xyz: ENOENT"),
        "{err}"
    );
    let err = expect_errno(cluster.io_context(&pool(), "no-such-namespace-xyz"), libc::ENOENT);
    assert!(err.to_string().contains("no-such-namespace-xyz"), "{err}");
    let io = cluster.io_context(&pool(), "").expect("default namespace");
    assert_eq!(io.pool(), pool());
    assert_eq!(io.namespace(), "");
    expect_errno(cluster.io_context(&pool(), "bad\0name"), libc::EINVAL);
}

#[test]
fn namespaces_create_exists_list_remove() {
    let cluster = connect();
    let io = cluster.io_context(&pool(), "").unwrap();
    let ns = format!("t-ns-{}", &Uuid::new_v4().simple().to_string()[..8]);
    assert!(!io.namespace_exists(&ns).unwrap());
    io.create_namespace(&ns).expect("create");
    let err = expect_errno(io.create_namespace(&ns), libc::EEXIST);
    assert!(err.is_exists());
    assert!(io.namespace_exists(&ns).unwrap());
    assert!(io.list_namespaces().unwrap().contains(&ns));
    let scoped = cluster.io_context(&pool(), &ns).expect("namespace io context");
    assert_eq!(scoped.namespace(), ns);
    assert_eq!(scoped.location(), format!("{}/{ns}", pool()));
    // Creating a namespace works through a namespaced context too.
    let ns2 = format!("{ns}-b");
    scoped
        .create_namespace(&ns2)
        .expect("create from a namespaced context");
    io.remove_namespace(&ns2).unwrap();
    io.remove_namespace(&ns).expect("remove");
    assert!(!io.list_namespaces().unwrap().contains(&ns));
    expect_errno(io.remove_namespace(&ns), libc::ENOENT);
}

// ---------------------------------------------------------------------------------------------
// Images

#[test]
fn image_create_open_stat_resize_rename_remove() {
    let s = Scratch::new("image");
    let io = &s.io;
    io.create_image("vm1", 8 * MIB, &ImageOptions::default())
        .expect("create");
    let err = expect_errno(
        io.create_image("vm1", 8 * MIB, &ImageOptions::default()),
        libc::EEXIST,
    );
    assert_eq!(
        err.to_string(),
        format!("rbd image create {}/{}/vm1: EEXIST (File exists)", pool(), s.ns)
    );
    io.create_image(
        "small",
        MIB,
        &ImageOptions {
            features: Some(Features::LAYERING),
            order: Some(20),
            ..Default::default()
        },
    )
    .expect("create with options");
    assert_eq!(
        io.list_images().unwrap(),
        vec!["small".to_string(), "vm1".to_string()]
    );

    let mut image = io.open_image("vm1").expect("open");
    assert_eq!(image.name(), "vm1");
    assert_eq!(image.spec(), format!("{}/{}/vm1", pool(), s.ns));
    assert_eq!(image.size().unwrap(), 8 * MIB);
    assert_eq!(image.features().unwrap(), Features::DEFAULT);
    let info = image.stat().unwrap();
    assert_eq!(info.size, 8 * MIB);
    assert_eq!(info.order, 22);
    assert_eq!(info.object_size, 4 * MIB);
    assert_eq!(info.num_objects, 2);
    assert!(
        info.block_name_prefix.starts_with("rbd_data."),
        "{}",
        info.block_name_prefix
    );
    assert!(info.block_name_prefix.ends_with(&image.id().unwrap()));

    let small = io.open_image("small").unwrap();
    assert_eq!(small.features().unwrap(), Features::LAYERING);
    assert_eq!(small.stat().unwrap().object_size, MIB);
    drop(small);

    image.resize(16 * MIB).expect("grow");
    assert_eq!(image.size().unwrap(), 16 * MIB);
    image.resize(4 * MIB).expect("shrink");
    assert_eq!(image.size().unwrap(), 4 * MIB);
    drop(image);

    io.rename_image("vm1", "vm2").expect("rename");
    expect_errno(io.open_image("vm1"), libc::ENOENT);
    expect_errno(io.rename_image("vm1", "vm3"), libc::ENOENT);
    expect_errno(io.rename_image("vm2", "small"), libc::EEXIST);

    io.remove_image("vm2").expect("remove");
    let err = expect_errno(io.open_image("vm2"), libc::ENOENT);
    assert!(err.is_not_found());
    assert_eq!(err.op, "rbd image open");
    expect_errno(io.remove_image("vm2"), libc::ENOENT);
    expect_errno(io.open_image_read_only("vm2", None), libc::ENOENT);
    expect_errno(
        io.create_image("bad\0name", MIB, &ImageOptions::default()),
        libc::EINVAL,
    );
    assert_eq!(io.list_images().unwrap(), vec!["small".to_string()]);
}

#[test]
fn image_write_read_flush_discard() {
    let s = Scratch::new("io");
    let mut image = s.create("disk", 8 * MIB);
    let data = pattern(7, 3 * MIB as usize + 123);
    image.write_at(MIB - 17, &data).expect("write across objects");
    image.flush().expect("flush");
    assert_eq!(read(&image, MIB - 17, data.len()), data);
    // Unwritten space reads as zeros; a read at the end is short.
    assert_eq!(read(&image, 0, 16), vec![0u8; 16]);
    assert_eq!(read(&image, 8 * MIB - 10, 100).len(), 10);
    assert_eq!(read(&image, 8 * MIB, 100).len(), 0);
    // Writing past the end fails.
    let err = image
        .write_at(8 * MIB - 1, b"xy")
        .expect_err("write past the end");
    assert_eq!(err.errno, libc::EINVAL, "{err}");
    image.discard(MIB, MIB).expect("discard");
    assert_eq!(read(&image, MIB, 64), vec![0u8; 64]);
    // Another handle (read-only, other client) sees the data.
    let (_c, other) = s.other_client();
    let ro = other.open_image_read_only("disk", None).unwrap();
    assert_eq!(
        read(&ro, 2 * MIB, 1000),
        data[(MIB + 17) as usize..(MIB + 17) as usize + 1000]
    );
    // Images move between threads.
    let handle = thread::spawn(move || {
        image.write_at(0, b"from another thread").unwrap();
        image
    });
    let image = handle.join().unwrap();
    assert_eq!(read(&image, 0, 19), b"from another thread");
}

#[test]
fn images_are_created_in_parallel_through_one_io_context() {
    let s = Scratch::new("parallel");
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let io = s.io.clone();
            thread::spawn(move || -> Result<(), CephError> {
                let name = format!("p{i}");
                io.create_image(&name, MIB, &ImageOptions::default())?;
                let mut image = io.open_image(&name)?;
                image.write_at(0, name.as_bytes())?;
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap().expect("parallel create/write");
    }
    assert_eq!(s.io.list_images().unwrap(), vec!["p0", "p1", "p2", "p3"]);
}

#[test]
fn metadata_round_trip() {
    let s = Scratch::new("meta");
    let image = s.create("disk", MIB);
    assert!(image.metadata_list().unwrap().is_empty());
    image.metadata_set("seapath.io/owner", "vm1").unwrap();
    image.metadata_set("empty", "").unwrap();
    let long = "x".repeat(5000);
    image.metadata_set("long", &long).unwrap();
    assert_eq!(image.metadata_get("seapath.io/owner").unwrap(), "vm1");
    assert_eq!(image.metadata_get("empty").unwrap(), "");
    assert_eq!(
        image.metadata_get("long").unwrap(),
        long,
        "value larger than the first buffer"
    );
    image.metadata_set("seapath.io/owner", "vm2").unwrap();
    assert_eq!(image.metadata_get("seapath.io/owner").unwrap(), "vm2");
    // More keys than one listing page (128), and more bytes than the first buffers.
    for i in 0..150 {
        image
            .metadata_set(&format!("k{i:03}"), &format!("value-{i}-{}", "v".repeat(40)))
            .unwrap();
    }
    let all = image.metadata_list().unwrap();
    assert_eq!(all.len(), 153);
    assert_eq!(all["seapath.io/owner"], "vm2");
    assert_eq!(all["empty"], "");
    assert_eq!(all["long"], long);
    assert_eq!(all["k149"], format!("value-149-{}", "v".repeat(40)));
    image.metadata_remove("seapath.io/owner").unwrap();
    let err = expect_errno(image.metadata_get("seapath.io/owner"), libc::ENOENT);
    assert!(err.to_string().contains("key seapath.io/owner"), "{err}");
    expect_errno(image.metadata_remove("seapath.io/owner"), libc::ENOENT);
    expect_errno(image.metadata_set("bad\0key", "v"), libc::EINVAL);
    assert_eq!(image.metadata_list().unwrap().len(), 152);
}

// ---------------------------------------------------------------------------------------------
// Snapshots

#[test]
fn snapshots_create_list_rollback_remove() {
    let s = Scratch::new("snap");
    let before = SystemTime::now() - Duration::from_secs(60);
    let mut image = s.create("disk", 4 * MIB);
    let original = pattern(1, 64 * 1024);
    image.write_at(0, &original).unwrap();
    image.snap_create("s1").expect("snap create");
    let err = expect_errno(image.snap_create("s1"), libc::EEXIST);
    assert_eq!(err.target, format!("{}/{}/disk@s1", pool(), s.ns));
    image.resize(8 * MIB).unwrap();
    let overwrite = pattern(99, 64 * 1024);
    image.write_at(0, &overwrite).unwrap();
    image.snap_create("s2").unwrap();

    let snaps = image.snap_list().expect("snap list");
    assert_eq!(
        snaps.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["s1", "s2"]
    );
    assert!(snaps[0].id < snaps[1].id);
    assert_eq!(snaps[0].size, 4 * MIB);
    assert_eq!(snaps[1].size, 8 * MIB);
    for snap in &snaps {
        assert_eq!(snap.namespace, SnapNamespace::User);
        assert!(snap.timestamp > before && snap.timestamp < SystemTime::now() + Duration::from_secs(60));
    }
    assert!(image.snap_exists("s1").unwrap());
    assert!(!image.snap_exists("nope").unwrap());

    // A read-only handle at a snapshot sees the snapshot's data and size.
    let at_s1 =
        s.io.open_image_read_only("disk", Some("s1"))
            .expect("open at snapshot");
    assert_eq!(at_s1.size().unwrap(), 4 * MIB);
    assert_eq!(read(&at_s1, 0, original.len()), original);
    drop(at_s1);
    expect_errno(s.io.open_image_read_only("disk", Some("nope")), libc::ENOENT);

    image.write_at(0, b"after s2").unwrap();
    image.snap_rollback("s1").expect("rollback");
    assert_eq!(read(&image, 0, original.len()), original);
    assert_eq!(image.size().unwrap(), 4 * MIB, "rollback restores the size");
    image.snap_rollback("s2").unwrap();
    assert_eq!(read(&image, 0, overwrite.len()), overwrite);
    expect_errno(image.snap_rollback("nope"), libc::ENOENT);

    // An image with snapshots cannot be removed.
    expect_errno(s.io.remove_image("disk"), libc::ENOTEMPTY);

    image.snap_remove("s1").expect("snap remove");
    expect_errno(image.snap_remove("s1"), libc::ENOENT);
    assert_eq!(image.snap_list().unwrap().len(), 1);
    image.snap_create("s3").unwrap();
    image.snap_protect("s3").unwrap();
    assert_eq!(
        image.snap_purge().unwrap(),
        vec!["s2".to_string(), "s3".to_string()]
    );
    assert!(image.snap_list().unwrap().is_empty());
    assert!(image.snap_purge().unwrap().is_empty());
}

#[test]
fn snapshot_protect_unprotect_and_v1_clone_flatten() {
    let s = Scratch::new("clone1");
    let mut parent = s.create("golden", 4 * MIB);
    let data = pattern(5, 128 * 1024);
    parent.write_at(0, &data).unwrap();
    parent.snap_create("base").unwrap();
    assert!(!parent.snap_is_protected("base").unwrap());
    expect_errno(parent.snap_is_protected("nope"), libc::ENOENT);

    let v1 = ImageOptions {
        clone_format: Some(CloneFormat::V1),
        ..Default::default()
    };
    // v1 clones need a protected snapshot.
    expect_errno(
        s.io.clone_image("golden", "base", &s.io, "vm1", &v1),
        libc::EINVAL,
    );

    parent.snap_protect("base").expect("protect");
    assert!(parent.snap_is_protected("base").unwrap());
    expect_errno(parent.snap_protect("base"), libc::EBUSY);
    expect_errno(parent.snap_protect("nope"), libc::ENOENT);
    expect_errno(parent.snap_remove("base"), libc::EBUSY);

    s.io.clone_image("golden", "base", &s.io, "vm1", &v1)
        .expect("v1 clone");
    expect_errno(
        s.io.clone_image("golden", "base", &s.io, "vm1", &v1),
        libc::EEXIST,
    );
    expect_errno(
        s.io.clone_image("missing", "base", &s.io, "vm9", &v1),
        libc::ENOENT,
    );

    let mut child = s.io.open_image("vm1").unwrap();
    assert_eq!(read(&child, 0, data.len()), data);
    let p = child.parent().unwrap().expect("a clone has a parent");
    assert_eq!(
        (p.image.pool.as_str(), p.image.namespace.as_str()),
        (pool().as_str(), s.ns.as_str())
    );
    assert_eq!(p.image.name, "golden");
    assert_eq!(p.snap_name, "base");
    assert_eq!(p.image.id, parent.id().unwrap());
    assert!(parent.parent().unwrap().is_none());
    let children = parent.children().unwrap();
    assert_eq!(children.len(), 1);
    assert_eq!(children[0].name, "vm1");
    assert_eq!(children[0].namespace, s.ns);

    // A protected snapshot with clones cannot be unprotected.
    expect_errno(parent.snap_unprotect("base"), libc::EBUSY);

    child.write_at(0, b"child data").unwrap();
    child.flatten().expect("flatten");
    assert!(child.parent().unwrap().is_none());
    assert!(parent.children().unwrap().is_empty());
    let mut expected = data.clone();
    expected[..10].copy_from_slice(b"child data");
    assert_eq!(read(&child, 0, data.len()), expected);
    expect_errno(child.flatten(), libc::EINVAL);

    parent.snap_unprotect("base").expect("unprotect");
    assert!(!parent.snap_is_protected("base").unwrap());
    expect_errno(parent.snap_unprotect("base"), libc::EINVAL);
    parent.snap_remove("base").unwrap();
}

#[test]
fn v2_clone_from_unprotected_snapshot_across_namespaces() {
    let s = Scratch::new("clone2");
    let target = Scratch::new("clone2dst");
    let mut parent = s.create("golden", 4 * MIB);
    let data = pattern(9, 64 * 1024);
    parent.write_at(4096, &data).unwrap();
    parent.snap_create("base").unwrap();
    let v2 = ImageOptions {
        clone_format: Some(CloneFormat::V2),
        ..Default::default()
    };
    s.io.clone_image("golden", "base", &target.io, "vm1", &v2)
        .expect("v2 clone");
    expect_errno(
        s.io.clone_image("golden", "nope", &target.io, "vm2", &v2),
        libc::ENOENT,
    );
    expect_errno(
        s.io.clone_image("golden", "base", &target.io, "vm1", &v2),
        libc::EEXIST,
    );

    let mut child = target.io.open_image("vm1").unwrap();
    assert_eq!(read(&child, 4096, data.len()), data);
    let p = child.parent().unwrap().expect("parent");
    assert_eq!(p.image.namespace, s.ns);
    assert_eq!(p.snap_name, "base");
    let kids = parent.children().unwrap();
    assert_eq!(kids.len(), 1);
    assert_eq!(
        (kids[0].namespace.as_str(), kids[0].name.as_str()),
        (target.ns.as_str(), "vm1")
    );
    assert!(
        !parent.snap_is_protected("base").unwrap(),
        "v2 needs no protection"
    );

    // The parent changes after the snapshot do not reach the clone.
    parent.write_at(4096, b"parent changed").unwrap();
    assert_eq!(read(&child, 4096, data.len()), data);

    child.flatten().unwrap();
    assert!(child.parent().unwrap().is_none());
    drop(child);
    target.io.remove_image("vm1").unwrap();
    parent.snap_remove("base").unwrap();
}

#[test]
fn deep_copy_copies_data_snapshots_and_metadata() {
    let s = Scratch::new("deepcopy");
    let dst = Scratch::new("deepcopydst");
    let mut src = s.create("src", 4 * MIB);
    src.metadata_set("a", "1").unwrap();
    src.metadata_set("b", "two").unwrap();
    let v1 = pattern(1, 8192);
    src.write_at(0, &v1).unwrap();
    src.snap_create("s1").unwrap();
    let v2 = pattern(2, 8192);
    src.write_at(0, &v2).unwrap();
    src.snap_create("s2").unwrap();
    let head = pattern(3, 8192);
    src.write_at(0, &head).unwrap();

    src.deep_copy(&dst.io, "copy", &ImageOptions::default())
        .expect("deep copy");
    let err = expect_errno(
        src.deep_copy(&dst.io, "copy", &ImageOptions::default()),
        libc::EEXIST,
    );
    assert!(err.target.contains("-> "), "{err}");

    let copy = dst.io.open_image("copy").unwrap();
    assert_eq!(copy.metadata_list().unwrap(), src.metadata_list().unwrap());
    let names: Vec<String> = copy.snap_list().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["s1", "s2"]);
    assert_eq!(read(&copy, 0, head.len()), head);
    assert_eq!(copy.size().unwrap(), 4 * MIB);
    assert_eq!(copy.features().unwrap(), src.features().unwrap());
    for (snap, expected) in [("s1", &v1), ("s2", &v2)] {
        let at = dst.io.open_image_read_only("copy", Some(snap)).unwrap();
        assert_eq!(&read(&at, 0, expected.len()), expected, "data at {snap}");
    }

    // Options apply to the copy.
    src.deep_copy(
        &s.io,
        "copy-layering",
        &ImageOptions {
            features: Some(Features::LAYERING),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        s.io.open_image("copy-layering").unwrap().features().unwrap(),
        Features::LAYERING
    );
}

// ---------------------------------------------------------------------------------------------
// Groups

#[test]
fn groups_and_group_snapshot_rollback() {
    let s = Scratch::new("group");
    let io = &s.io;
    let mut a = s.create("a", MIB);
    let mut b = s.create("b", MIB);
    a.write_at(0, b"a-original").unwrap();
    b.write_at(0, b"b-original").unwrap();

    io.group_create("vm1").expect("group create");
    expect_errno(io.group_create("vm1"), libc::EEXIST);
    io.group_create("other").unwrap();
    assert_eq!(io.group_list().unwrap(), vec!["other", "vm1"]);

    io.group_image_add("vm1", io, "a").expect("add a");
    io.group_image_add("vm1", io, "b").expect("add b");
    expect_errno(io.group_image_add("other", io, "a"), libc::EEXIST);
    expect_errno(io.group_image_add("vm1", io, "missing"), libc::ENOENT);
    expect_errno(io.group_image_add("missing", io, "a"), libc::ENOENT);
    let mut members: Vec<_> = io.group_image_list("vm1").unwrap();
    members.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(
        members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    assert!(
        members
            .iter()
            .all(|m| m.state == GroupImageState::Attached && m.pool_id == io.pool_id())
    );
    assert!(io.group_image_list("other").unwrap().is_empty());
    expect_errno(io.group_image_list("missing"), libc::ENOENT);
    assert_eq!(a.group().unwrap().expect("a is in a group").name, "vm1");

    io.group_snap_create("vm1", "gs1").expect("group snap create");
    expect_errno(io.group_snap_create("vm1", "gs1"), libc::EEXIST);
    expect_errno(io.group_snap_create("missing", "gs1"), libc::ENOENT);
    let snaps = io.group_snap_list("vm1").unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].name, "gs1");
    assert_eq!(snaps[0].state, GroupSnapState::Complete);
    expect_errno(io.group_snap_list("missing"), libc::ENOENT);
    assert!(io.group_snap_list("other").unwrap().is_empty());
    // The member snapshots are in the group namespace.
    let member_snaps = a.snap_list().unwrap();
    assert_eq!(member_snaps.len(), 1);
    assert_eq!(member_snaps[0].namespace, SnapNamespace::Group);
    assert!(
        a.snap_purge().unwrap().is_empty(),
        "purge leaves group snapshots alone"
    );

    a.write_at(0, b"a-changed!").unwrap();
    b.write_at(0, b"b-changed!").unwrap();
    // Rollback needs the images closed (or at least not locked by a writer).
    drop(a);
    drop(b);
    io.group_snap_rollback("vm1", "gs1").expect("group snap rollback");
    expect_errno(io.group_snap_rollback("vm1", "nope"), libc::ENOENT);
    let a = io.open_image("a").unwrap();
    let b = io.open_image("b").unwrap();
    assert_eq!(read(&a, 0, 10), b"a-original");
    assert_eq!(read(&b, 0, 10), b"b-original");

    io.group_snap_remove("vm1", "gs1").expect("group snap remove");
    expect_errno(io.group_snap_remove("vm1", "gs1"), libc::ENOENT);
    assert!(a.snap_list().unwrap().is_empty());

    io.group_image_remove("vm1", io, "b").expect("image remove");
    expect_errno(io.group_image_remove("vm1", io, "missing"), libc::ENOENT);
    assert_eq!(io.group_image_list("vm1").unwrap().len(), 1);
    assert!(b.group().unwrap().is_none());

    io.group_remove("vm1").expect("group remove");
    expect_errno(io.group_remove("vm1"), libc::ENOENT);
    assert!(
        a.group().unwrap().is_none(),
        "removing the group detaches its images"
    );
    assert_eq!(io.group_list().unwrap(), vec!["other"]);
}

// ---------------------------------------------------------------------------------------------
// Locks and blocklisting

#[test]
fn exclusive_lock_acquire_owners_release_and_break() {
    let s = Scratch::new("xlock");
    let holder = s.create("disk", MIB);
    assert!(holder.lock_owners().unwrap().is_none());
    assert!(!holder.is_exclusive_lock_owner().unwrap());

    holder.lock_acquire(LockMode::Exclusive).expect("acquire");
    assert!(holder.is_exclusive_lock_owner().unwrap());
    let (other_cluster, other_io) = s.other_client();
    let watcher = other_io.open_image("disk").unwrap();
    let owners = watcher.lock_owners().unwrap().expect("locked");
    assert_eq!(owners.mode, LockMode::Exclusive);
    // Pacific names lock owners by client address.
    assert_eq!(owners.owners, vec![s.cluster.client_address().unwrap()]);
    assert!(!watcher.is_exclusive_lock_owner().unwrap());
    // A holder that took the lock explicitly keeps it: others get EROFS at once.
    expect_errno(watcher.lock_acquire(LockMode::Exclusive), libc::EROFS);
    let mut writer = other_io.open_image("disk").unwrap();
    expect_errno(writer.write_at(0, b"x"), libc::EROFS);
    drop(writer);

    holder.lock_release().expect("release");
    assert!(!holder.is_exclusive_lock_owner().unwrap());
    assert!(watcher.lock_owners().unwrap().is_none());
    expect_errno(watcher.lock_break(LockMode::Exclusive, "client.1"), libc::ENOENT);

    // Break the lock of a live holder: it is blocklisted and its writes fail.
    let (victim_cluster, victim_io) = s.other_client();
    let victim_addr = victim_cluster.client_address().unwrap();
    let mut victim = victim_io.open_image("disk").unwrap();
    victim.lock_acquire(LockMode::Exclusive).unwrap();
    victim.write_at(0, b"victim").unwrap();
    let owner = watcher
        .lock_owners()
        .unwrap()
        .expect("victim holds it")
        .owners
        .remove(0);
    assert_eq!(owner, victim_addr);
    expect_errno(watcher.lock_break(LockMode::Exclusive, "client.1"), libc::EBUSY);
    watcher.lock_break(LockMode::Exclusive, &owner).expect("break");
    let blocklisted = s.cluster.blocklist_list().unwrap();
    assert!(
        blocklisted.iter().any(|e| e.addr == victim_addr),
        "{victim_addr} not in {blocklisted:?}"
    );

    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let r = victim.write_at(0, b"fenced?");
        let _ = tx.send(r.map_err(|e| e.errno));
        drop(victim);
        drop(victim_io);
        drop(victim_cluster);
    });
    let result = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a fenced write returns");
    assert_eq!(
        result,
        Err(libc::ESHUTDOWN),
        "the blocklisted holder's write fails"
    );

    s.cluster.blocklist_remove(&victim_addr).unwrap();
    // An image without the exclusive-lock feature has no managed lock.
    s.io.create_image(
        "plain",
        MIB,
        &ImageOptions {
            features: Some(Features::LAYERING),
            ..Default::default()
        },
    )
    .unwrap();
    let plain = s.io.open_image("plain").unwrap();
    expect_errno(plain.lock_acquire(LockMode::Exclusive), libc::EINVAL);
    drop(other_cluster);
}

/// Fencing a live holder: blocklisted for the fence's expiry (librbd's blocklist on break is
/// off on the fencing connection: Pacific refuses a custom expiry there with `EINVAL`, and its
/// default hour would shorten the fence), its lock broken, its next write refused.
#[test]
fn fencing_blocklists_a_live_holder_for_the_fence_expiry_and_breaks_its_lock() {
    use seapath_operator::controller::fencing::{VmImages, fence_images};
    let s = Scratch::new("fencexp");
    drop(s.create("disk", MIB));
    let (holder_cluster, holder_io) = s.other_client();
    let holder_addr = holder_cluster.client_address().unwrap();
    let mut holder = holder_io.open_image("disk").unwrap();
    holder.write_at(0, b"held").unwrap();
    let mut cfg = config();
    cfg.options
        .push(("rbd_blocklist_on_break_lock".into(), "false".into()));
    let fencer = Cluster::connect(cfg).unwrap();
    let vm = VmImages {
        pool: pool(),
        namespace: s.ns.clone(),
        images: vec!["disk".into(), "missing".into()],
    };
    let own = fencer.client_address().unwrap();
    let fenced = fence_images(&fencer, &[vm], &own, Duration::from_secs(7200)).unwrap();
    assert_eq!(fenced.blocklisted, vec![holder_addr.clone()]);
    assert_eq!(fenced.locks_broken, 1);
    let entry = fencer
        .blocklist_list()
        .unwrap()
        .into_iter()
        .find(|e| e.addr == holder_addr)
        .expect("the holder is blocklisted");
    let until = jiff::Timestamp::strptime("%Y-%m-%dT%H:%M:%S%.f%z", &entry.until).unwrap();
    let left = until.duration_since(jiff::Timestamp::now()).as_secs();
    assert!((7000..=7200).contains(&left), "blocklisted for {left} s");
    assert!(s.io.open_image("disk").unwrap().lock_owners().unwrap().is_none());
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(holder.write_at(0, b"late").map_err(|e| e.errno));
        drop(holder);
        drop(holder_io);
        drop(holder_cluster);
    });
    let late = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a fenced write returns");
    assert_eq!(late, Err(libc::ESHUTDOWN));
    s.cluster.blocklist_remove(&holder_addr).unwrap();
}

/// Two controllers on one pool (a leader that lost its Lease mid-call, or a second one started
/// without leader election): the one that takes the guard fences the other through Ceph, whose
/// writes then fail, and which sees that it lost the guard.
#[test]
fn the_controller_guard_fences_the_controller_before() {
    use seapath_operator::controller::guard::Guard;
    let s = Scratch::new("guard");
    let object = format!("guard-{}", s.ns);
    let expiry = Duration::from_secs(600);
    let (first_cluster, first_io) = s.other_client();
    let first_addr = first_cluster.client_address().unwrap();
    drop(s.create("disk", MIB));
    let mut first_disk = first_io.open_image("disk").unwrap();
    let (first, fenced) = Guard::take(&first_cluster, &pool(), &object, expiry).unwrap();
    assert!(fenced.is_empty(), "nobody held it: {fenced:?}");
    assert!(first.held().unwrap());
    first_disk.write_at(0, b"first").unwrap();

    let (second_cluster, _second_io) = s.other_client();
    let (second, fenced) = Guard::take(&second_cluster, &pool(), &object, expiry).unwrap();
    assert_eq!(fenced, vec![first_addr.clone()]);
    assert!(second.held().unwrap());
    assert!(!first.held().unwrap(), "the first controller sees it was fenced");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(first_disk.write_at(0, b"late!").map_err(|e| e.errno));
        drop(first_disk);
        drop(first_io);
        drop(first);
        drop(first_cluster);
    });
    let late = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a fenced write returns");
    assert_eq!(late, Err(libc::ESHUTDOWN), "the fenced controller cannot write");

    // A clean stop releases it: the next controller fences nobody.
    second.release().unwrap();
    let (third_cluster, _third_io) = s.other_client();
    let (third, fenced) = Guard::take(&third_cluster, &pool(), &object, expiry).unwrap();
    assert!(fenced.is_empty(), "{fenced:?}");
    third.release().unwrap();
    s.cluster.blocklist_remove(&first_addr).unwrap();
    let pool_io = s.cluster.io_context(&pool(), "").unwrap();
    assert!(
        pool_io
            .object_lockers(&object, "seapath-controller")
            .unwrap()
            .lockers
            .is_empty()
    );
}

#[test]
fn advisory_locks_list_and_break() {
    let s = Scratch::new("alock");
    drop(s.create("disk", MIB));
    // Breaking a lock blocklists its holder: hold locks through throw-away connections, and
    // list/break them through the test's own (which also cleans up).
    let theirs = s.io.open_image("disk").unwrap();
    assert!(theirs.list_lockers().unwrap().lockers.is_empty());
    let (holder_cluster, holder_io) = s.other_client();
    let holder_addr = holder_cluster.client_address().unwrap();
    let mine = holder_io.open_image("disk").unwrap();

    mine.lock_exclusive("cookie-1").expect("lock");
    expect_errno(mine.lock_exclusive("cookie-1"), libc::EEXIST);
    expect_errno(theirs.lock_exclusive("cookie-2"), libc::EBUSY);
    let lockers = theirs.list_lockers().unwrap();
    assert!(lockers.exclusive);
    assert_eq!(lockers.lockers.len(), 1);
    let l = lockers.lockers[0].clone();
    assert_eq!(l.client, format!("client.{}", holder_cluster.instance_id()));
    assert_eq!(l.cookie, "cookie-1");
    assert_eq!(l.address, holder_addr);

    expect_errno(theirs.unlock("cookie-1"), libc::ENOENT);
    expect_errno(theirs.break_lock("client.1", "cookie-1"), libc::ENOENT);
    theirs.break_lock(&l.client, &l.cookie).expect("break");
    assert!(theirs.list_lockers().unwrap().lockers.is_empty());
    let fenced = s.cluster.blocklist_list().unwrap();
    assert!(
        fenced.iter().any(|e| e.addr == holder_addr),
        "break_lock blocklists the holder"
    );
    drop(mine);
    drop(holder_io);
    drop(holder_cluster);
    s.cluster.blocklist_remove(&holder_addr).unwrap();

    let (_c, other_io) = s.other_client();
    let mine = other_io.open_image("disk").unwrap();
    mine.lock_shared("c1", "tag-x").unwrap();
    theirs.lock_shared("c2", "tag-x").unwrap();
    let lockers = mine.list_lockers().unwrap();
    assert!(!lockers.exclusive);
    assert_eq!(lockers.tag, "tag-x");
    let mut cookies: Vec<_> = lockers.lockers.iter().map(|l| l.cookie.clone()).collect();
    cookies.sort();
    assert_eq!(cookies, vec!["c1", "c2"]);
    expect_errno(theirs.lock_shared("c3", "other-tag"), libc::EBUSY);
    mine.unlock("c1").unwrap();
    theirs.unlock("c2").unwrap();
    expect_errno(theirs.unlock("c2"), libc::ENOENT);
    assert!(mine.list_lockers().unwrap().lockers.is_empty());
}

#[test]
fn blocklist_add_list_remove_via_mon_commands() {
    let s = Scratch::new("blocklist");
    let cluster = s.cluster.clone();
    let (victim, victim_io) = s.other_client();
    let addr = victim.client_address().unwrap();
    cluster.blocklist_add(&addr, 600).expect("blocklist add");

    let (out, _status) = cluster
        .mon_command(r#"{"prefix": "osd blocklist ls", "format": "json"}"#)
        .unwrap();
    // Pacific prints the address list, then the range list: `[...][]`.
    let listed: serde_json::Value = serde_json::Deserializer::from_slice(&out)
        .into_iter()
        .next()
        .expect("a JSON list")
        .expect("json");
    let addrs: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["addr"].as_str())
        .collect();
    assert!(addrs.contains(&addr.as_str()), "{addr} not in {addrs:?}");
    assert!(
        cluster
            .blocklist_list()
            .unwrap()
            .iter()
            .any(|e| e.addr == addr && !e.until.is_empty())
    );

    // The blocklisted client is fenced: its writes fail.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let r = victim_io.create_image("never", MIB, &ImageOptions::default());
        let _ = tx.send(r.map_err(|e| e.errno));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a fenced client's call returns");
    assert_eq!(result, Err(libc::ESHUTDOWN));

    let rm = serde_json::json!({"prefix": "osd blocklist", "blocklistop": "rm", "addr": addr});
    let (_, status) = cluster.mon_command(&rm.to_string()).expect("blocklist rm");
    assert!(status.contains("un-blocklisting"), "{status}");
    assert!(!cluster.blocklist_list().unwrap().iter().any(|e| e.addr == addr));
    cluster
        .blocklist_remove(&addr)
        .expect("removing an unlisted address succeeds");

    // Errors: a bad address, an unknown command (with the mon's explanation).
    expect_errno(cluster.blocklist_add("not an address", 60), libc::EINVAL);
    let err = expect_errno(
        cluster.mon_command(r#"{"prefix": "no such command"}"#),
        libc::EINVAL,
    );
    assert_eq!(err.target, "no such command");
    assert!(err.detail.is_some(), "{err}");
    expect_errno(cluster.mon_command("not json"), libc::EINVAL);
}
