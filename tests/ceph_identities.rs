//! The Ceph users of each role (docs/operations.md, "Ceph users") hold the caps their role
//! needs and no more, checked against the test bed's real Ceph, which creates them
//! (hack/lib/ceph.sh): the controller (`SEAPATH_CEPH_CONTROLLER_ID`), the agents
//! (`SEAPATH_CEPH_AGENT_ID`) and QEMU through libvirt (`SEAPATH_CEPH_QEMU_ID`), each connected
//! with its own keyring only (`SEAPATH_CEPH_<ROLE>_KEYRING`). client.admin
//! (`SEAPATH_CEPH_CLIENT`) prepares and cleans up.
//!
//! OSD caps refuse with `EPERM`, mon caps with `EACCES`. With `--ceph-auth none` nothing is
//! refused: each test says so and checks nothing.
//!
//! Run with hack/test.sh, or `eval "$(hack/testbed.sh env)"` and
//! `cargo test --test ceph_identities`.

mod common;

use std::thread;
use std::time::Duration;

use common::testbed_env;
use seapath_operator::ceph::{CephError, CloneFormat, Cluster, ClusterConfig, ImageOptions, IoCtx, LockMode};
use uuid::Uuid;

const MIB: u64 = 1 << 20;

fn cephx() -> bool {
    if testbed_env("SEAPATH_CEPH_AUTH") == "cephx" {
        return true;
    }
    eprintln!("the test bed runs without cephx: no cap is enforced, nothing to check");
    false
}

fn pool() -> String {
    testbed_env("SEAPATH_CEPH_POOL")
}

fn connect_as(client_id: String, mut options: Vec<(String, String)>) -> Cluster {
    // Several clients in one process: no admin socket each (they would share a path).
    options.push(("admin_socket".into(), String::new()));
    let config = ClusterConfig {
        conf_path: testbed_env("CEPH_CONF").into(),
        client_id: client_id.clone(),
        mount_timeout: Duration::from_secs(10),
        options,
    };
    Cluster::connect(config).unwrap_or_else(|e| panic!("connecting as client.{client_id}: {e}"))
}

/// Connects as a role's user (`CONTROLLER`, `AGENT`, `QEMU`) with only its own keyring.
fn connect_role(role: &str) -> Cluster {
    let keyring = testbed_env(&format!("SEAPATH_CEPH_{role}_KEYRING"));
    connect_as(
        testbed_env(&format!("SEAPATH_CEPH_{role}_ID")),
        vec![("keyring".into(), keyring)],
    )
}

fn admin() -> Cluster {
    connect_as(testbed_env("SEAPATH_CEPH_CLIENT"), Vec::new())
}

#[track_caller]
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, CephError>, errno: i32) {
    match result {
        Ok(v) => panic!("{what} should be refused, got Ok({v:?})"),
        Err(e) => assert_eq!(e.errno, errno, "{what}: expected errno {errno}, got {e}"),
    }
}

/// An RBD namespace of the test, emptied and removed (as admin) on drop.
struct Scratch {
    admin: Cluster,
    ns: String,
}

impl Scratch {
    fn new(test: &str) -> Scratch {
        let admin = admin();
        let ns = format!("t-{test}-{}", &Uuid::new_v4().simple().to_string()[..8]);
        admin
            .io_context(&pool(), "")
            .unwrap()
            .create_namespace(&ns)
            .expect("creating the test namespace");
        Scratch { admin, ns }
    }

    fn io(&self) -> IoCtx {
        self.admin.io_context(&pool(), &self.ns).unwrap()
    }

    /// An image with the `xml` metadata the agents read, made as admin.
    fn image(&self, name: &str) {
        let io = self.io();
        io.create_image(name, 8 * MIB, &ImageOptions::default()).unwrap();
        io.open_image(name)
            .unwrap()
            .metadata_set("xml", "<domain/>")
            .unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let io = self.io();
        for _round in 0..3 {
            for name in io.list_images().unwrap_or_default() {
                if let Ok(image) = io.open_image(&name) {
                    for snap in image.snap_list().unwrap_or_default() {
                        let _ = image.snap_unprotect(&snap.name);
                    }
                    let _ = image.snap_purge();
                }
                let _ = io.remove_image(&name);
            }
        }
        if let Err(e) = self
            .admin
            .io_context(&pool(), "")
            .unwrap()
            .remove_namespace(&self.ns)
        {
            eprintln!("cleanup of namespace {}: {e}", self.ns);
        }
    }
}

#[test]
fn agent_key_reads_the_xml_and_is_refused_everything_else() {
    if !cephx() {
        return;
    }
    let s = Scratch::new("id-agent");
    s.image("vm1");
    let agent = connect_role("AGENT");
    let io = agent.io_context(&pool(), &s.ns).unwrap();

    // What the agent does: a read-only open and the `xml` metadata.
    let image = io.open_image_read_only("vm1", None).expect("read-only open");
    assert_eq!(image.metadata_get("xml").unwrap(), "<domain/>");
    assert_eq!(io.list_images().unwrap(), vec!["vm1".to_string()]);
    drop(image);

    // Deleting, creating, opening for writing (which registers a watch): refused by the OSDs.
    refused("deleting an image", io.remove_image("vm1"), libc::EPERM);
    refused(
        "creating an image",
        io.create_image("vm2", MIB, &ImageOptions::default()),
        libc::EPERM,
    );
    refused("opening an image for writing", io.open_image("vm1"), libc::EPERM);
    refused(
        "creating a namespace",
        agent
            .io_context(&pool(), "")
            .unwrap()
            .create_namespace("t-agent-never"),
        libc::EPERM,
    );
    // Blocklisting (fencing others) and un-blocklisting: refused by the mon.
    refused(
        "blocklisting a client",
        agent.blocklist_add("127.0.0.1:0/4242", 60),
        libc::EACCES,
    );
    refused(
        "un-blocklisting a client",
        agent.blocklist_remove("127.0.0.1:0/4242"),
        libc::EACCES,
    );
    refused(
        "reading the auth database",
        agent.mon_command(r#"{"prefix":"auth ls","format":"json"}"#),
        libc::EACCES,
    );

    // Nothing changed.
    let io = s.io();
    assert_eq!(io.list_images().unwrap(), vec!["vm1".to_string()]);
    assert_eq!(
        io.open_image("vm1").unwrap().metadata_get("xml").unwrap(),
        "<domain/>"
    );
}

#[test]
fn controller_key_manages_storage_and_fences() {
    if !cephx() {
        return;
    }
    let s = Scratch::new("id-controller");
    let controller = connect_role("CONTROLLER");
    let pool_io = controller.io_context(&pool(), "").unwrap();

    // RBD namespaces (one per Kubernetes namespace) are the controller's to create and remove.
    let own_ns = format!("{}-own", s.ns);
    pool_io.create_namespace(&own_ns).expect("creating a namespace");
    assert!(pool_io.namespace_exists(&own_ns).unwrap());
    pool_io.remove_namespace(&own_ns).expect("removing a namespace");

    // Images, metadata, data, snapshots, clones, groups, deletion.
    let io = controller.io_context(&pool(), &s.ns).unwrap();
    io.create_image("base", 8 * MIB, &ImageOptions::default())
        .expect("create");
    let mut image = io.open_image("base").expect("open");
    image.metadata_set("xml", "<domain/>").expect("metadata");
    image.write_at(0, &[7u8; 4096]).expect("write");
    image.snap_create("golden").expect("snapshot");
    image.snap_protect("golden").expect("protect");
    io.clone_image(
        "base",
        "golden",
        &io,
        "child",
        &ImageOptions {
            clone_format: Some(CloneFormat::V2),
            ..Default::default()
        },
    )
    .expect("clone");
    io.group_create("grp").expect("group");
    io.remove_image("child").expect("deleting the clone");
    image.snap_unprotect("golden").expect("unprotect");
    image.snap_remove("golden").expect("snapshot removal");
    drop(image);
    io.remove_image("base").expect("deleting an image");
    io.group_remove("grp").expect("group removal");

    // The monitor reads of the storage path: monitors for the domain XML, pool usage, quotas.
    for prefix in ["mon dump", "df", "osd dump", "osd blocklist ls"] {
        let cmd = serde_json::json!({"prefix": prefix, "format": "json"});
        controller
            .mon_command(&cmd.to_string())
            .unwrap_or_else(|e| panic!("{prefix}: {e}"));
    }

    // Fencing: breaking the lock of a client (here QEMU's) blocklists it; the fence is lifted
    // with `osd blocklist rm`.
    s.image("vm1");
    let qemu = connect_role("QEMU");
    let qemu_io = qemu.io_context(&pool(), &s.ns).unwrap();
    let mut guest_disk = qemu_io.open_image("vm1").unwrap();
    guest_disk
        .write_at(0, &[1u8; 512])
        .expect("QEMU's write takes the lock");
    let fenced = qemu.client_address().unwrap();
    let disk = io.open_image("vm1").unwrap();
    let owners = disk.lock_owners().unwrap().expect("QEMU holds the lock");
    disk.lock_break(LockMode::Exclusive, &owners.owners[0])
        .expect("breaking QEMU's lock");
    assert!(
        controller
            .blocklist_list()
            .unwrap()
            .iter()
            .any(|e| e.addr == fenced),
        "breaking the lock blocklisted {fenced}"
    );
    refused(
        "a fenced client's write",
        guest_disk.write_at(0, &[2u8; 512]),
        libc::ESHUTDOWN,
    );
    let other = "127.0.0.1:0/4243";
    controller
        .blocklist_add(other, 60)
        .expect("blocklisting by instance");
    controller.blocklist_remove(other).expect("un-blocklisting");
    controller.blocklist_remove(&fenced).expect("lifting the fence");
    drop(disk);
    drop(guest_disk);

    // Not the controller's: the auth database, the whole blocklist, a bare IP (every client
    // of a host).
    refused(
        "reading the auth database",
        controller.mon_command(r#"{"prefix":"auth ls","format":"json"}"#),
        libc::EACCES,
    );
    refused(
        "clearing the blocklist",
        controller.mon_command(r#"{"prefix":"osd blocklist clear"}"#),
        libc::EACCES,
    );
    refused(
        "blocklisting a bare address",
        controller.blocklist_add("127.0.0.1", 60),
        libc::EACCES,
    );
}

#[test]
fn qemu_key_reads_and_writes_disks_and_cannot_lift_a_fence() {
    if !cephx() {
        return;
    }
    let s = Scratch::new("id-qemu");
    s.image("vm1");
    let qemu = connect_role("QEMU");
    let io = qemu.io_context(&pool(), &s.ns).unwrap();
    let mut disk = io.open_image("vm1").expect("opening a disk for writing");
    disk.write_at(4096, &[9u8; 4096]).expect("write");
    disk.flush().unwrap();
    let mut buf = vec![0u8; 4096];
    disk.read_at(4096, &mut buf).expect("read");
    assert_eq!(buf, vec![9u8; 4096]);
    assert!(disk.is_exclusive_lock_owner().unwrap());
    drop(disk);

    // Un-blocklisting (lifting a fence) and the auth database are not QEMU's. It keeps
    // `osd blocklist add` (profile rbd): librbd blocklists a dead lock owner before taking its
    // lock, which a guest restarted after a QEMU crash needs.
    refused(
        "un-blocklisting a client",
        qemu.blocklist_remove("127.0.0.1:0/4244"),
        libc::EACCES,
    );
    refused(
        "reading the auth database",
        qemu.mon_command(r#"{"prefix":"auth ls","format":"json"}"#),
        libc::EACCES,
    );
}

/// A QEMU user scoped to one tenant's RBD namespace (`profile rbd pool=P namespace=NS`, the
/// per-tenant variant in docs/operations.md) opens that namespace's disks only.
#[test]
fn tenant_scoped_qemu_key_opens_only_its_namespace() {
    if !cephx() {
        return;
    }
    let tenant = Scratch::new("id-tenant");
    let other = Scratch::new("id-other");
    tenant.image("vm1");
    other.image("vm1");
    let admin = admin();
    let user = format!("client.seapath-test-{}", &tenant.ns);
    let osd_caps = format!("profile rbd pool={} namespace={}", pool(), tenant.ns);
    let create = serde_json::json!({
        "prefix": "auth get-or-create", "entity": user, "format": "json",
        "caps": ["mon", "profile rbd", "osd", osd_caps],
    });
    let (out, _) = admin
        .mon_command(&create.to_string())
        .expect("creating the tenant's user");
    let created: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let key = created[0]["key"].as_str().expect("a key").to_owned();
    struct DeleteUser(Cluster, String);
    impl Drop for DeleteUser {
        fn drop(&mut self) {
            let cmd = serde_json::json!({"prefix": "auth del", "entity": self.1});
            if let Err(e) = self.0.mon_command(&cmd.to_string()) {
                eprintln!("cleanup of {}: {e}", self.1);
            }
        }
    }
    let _delete = DeleteUser(admin, user.clone());

    // A new user's key reaches the mon's auth at once, but be lenient with a slow paxos.
    let id = user.trim_start_matches("client.").to_owned();
    let mut scoped = None;
    for _ in 0..20 {
        match Cluster::connect(ClusterConfig {
            conf_path: testbed_env("CEPH_CONF").into(),
            client_id: id.clone(),
            mount_timeout: Duration::from_secs(10),
            options: vec![
                ("key".into(), key.clone()),
                ("admin_socket".into(), String::new()),
            ],
        }) {
            Ok(c) => {
                scoped = Some(c);
                break;
            }
            Err(e) => {
                eprintln!("connecting as {user}: {e}");
                thread::sleep(Duration::from_millis(250));
            }
        }
    }
    let scoped = scoped.expect("connecting as the tenant's user");

    let own = scoped.io_context(&pool(), &tenant.ns).unwrap();
    let mut disk = own.open_image("vm1").expect("opening the tenant's disk");
    disk.write_at(0, &[3u8; 512]).expect("writing the tenant's disk");
    drop(disk);

    // Another tenant's namespace: even its existence cannot be read, so no I/O context.
    refused(
        "an I/O context on another namespace",
        scoped.io_context(&pool(), &other.ns),
        libc::EPERM,
    );
    // RBD's default namespace (vm_manager's): no listing, no image opened.
    let default_ns = scoped.io_context(&pool(), "").unwrap();
    refused(
        "listing the default namespace",
        default_ns.list_images(),
        libc::EPERM,
    );
    refused(
        "opening a disk of the default namespace",
        default_ns.open_image("vm1"),
        libc::EPERM,
    );
    refused(
        "creating a disk in the default namespace",
        default_ns.create_image(&other.ns, MIB, &ImageOptions::default()),
        libc::EPERM,
    );
    assert_eq!(other.io().list_images().unwrap(), vec!["vm1".to_string()]);
}
