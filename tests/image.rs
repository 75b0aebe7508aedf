//! The container image, run as a cluster runs it: unpacks the OCI image hack/image.sh built
//! (umoci) and runs its programs from its own root file system, in a private mount namespace
//! and a chroot, as the image's user, with what a container runtime and the chart give the
//! controller: /proc, a minimal /dev, a read-only root, the Ceph Secret at /etc/seapath/ceph,
//! empty /tmp and /var/run/ceph. No container runtime is needed.
//!
//! Checks the entrypoint's `--version`, `qemu-img --version`, and a qcow2 import: a qcow2 made by
//! the image's qemu-img from known bytes is converted into an RBD image of the test bed's Ceph
//! by the image's qemu-img, with the arguments the controller's import code builds
//! (`qemu_img_info_args`, `qemu_img_convert_args`, `qemu_rbd_target`); the bytes are read back.
//!
//! Needs root, umoci, the test bed (CEPH_CONF, SEAPATH_CEPH_POOL, SEAPATH_CEPH_CLIENT) and the
//! image: SEAPATH_IMAGE=LAYOUT:TAG. hack/test.sh builds it and exports it; alone:
//! `hack/image.sh && SEAPATH_IMAGE=$PWD/target/image/oci:0.1.0 cargo test --test image`.
//! Without them the test fails, it never skips.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use seapath_operator::ceph::{Cluster, ClusterConfig, ImageOptions, IoCtx};
use seapath_operator::controller::storage::{
    QEMU_IMG, qemu_img_convert_args, qemu_img_info_args, qemu_rbd_target,
};
use serde_json::Value;

const HINT: &str = "run the tests with hack/test.sh (or eval $(hack/testbed.sh env))";
/// Where the chart mounts the Ceph Secret (ceph.conf, keyring) in the controller's container.
const SECRET_DIR: &str = "/etc/seapath/ceph";
/// Where the test's files are in the container (a writable bind mount).
const WORK: &str = "/work";

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{name} is not set: {HINT}"),
    }
}

/// The image to test, as an OCI layout reference (`DIR:TAG`).
fn image_ref() -> String {
    match std::env::var("SEAPATH_IMAGE") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "SEAPATH_IMAGE is not set: build the image with hack/image.sh and run \
             SEAPATH_IMAGE=$PWD/target/image/oci:{} cargo test --test image (hack/test.sh does both)",
            env!("CARGO_PKG_VERSION")
        ),
    }
}

/// A program of this machine (not of the image), looked up in PATH and the sbin directories.
fn host_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed: apt-get install {package}"))
}

fn run_host(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Enters the image's root file system: a private mount namespace (nothing leaks to the host),
/// the root bound read-only, /proc, a /dev with the usual nodes, tmpfs /tmp and /var/run/ceph,
/// the work and Secret directories bound; then chroot as the image's user.
const ENTER: &str = r#"set -eu
root=$1 user=$2 work=$3 secret=$4 mount=$5 chroot=$6
shift 6
"$mount" --bind "$root" "$root"
"$mount" -o remount,bind,ro "$root"
"$mount" -t proc -o nosuid,nodev,noexec proc "$root/proc"
"$mount" -t tmpfs -o nosuid,noexec,mode=0755 tmpfs "$root/dev"
for node in null zero full random urandom; do
  : >"$root/dev/$node"
  "$mount" --bind "/dev/$node" "$root/dev/$node"
done
"$mount" -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/tmp"
"$mount" -t tmpfs -o nosuid,nodev,mode=0777 tmpfs "$root/var/run/ceph"
"$mount" --bind "$work" "$root/work"
"$mount" --bind -o ro "$secret" "$root/etc/seapath/ceph"
exec "$chroot" --userspec="$user" "$root" "$@"
"#;

/// The unpacked image (an OCI runtime bundle) and what its config says about the process.
struct Container {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// Host directories bound at /work and /etc/seapath/ceph.
    work: PathBuf,
    secret: PathBuf,
    uid: u32,
    gid: u32,
    env: Vec<(String, String)>,
    entrypoint: Vec<String>,
}

impl Container {
    fn unpack(image: &str) -> Container {
        let dir = tempfile::tempdir().expect("temp dir");
        let bundle = dir.path().join("bundle");
        let layout = image.rsplit_once(':').map_or(image, |(dir, _)| dir);
        assert!(
            Path::new(layout).join("index.json").is_file(),
            "SEAPATH_IMAGE={image}: {layout} is not an OCI layout; build it with hack/image.sh"
        );
        run_host(
            Command::new(host_tool("umoci", "umoci"))
                .args(["unpack", "--image", image])
                .arg(&bundle),
            &format!("umoci unpack --image {image}"),
        );
        let config: Value = serde_json::from_slice(
            &std::fs::read(bundle.join("config.json")).expect("the bundle's config.json"),
        )
        .expect("config.json is JSON");
        let process = &config["process"];
        let id = |key: &str| {
            process["user"][key]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or_else(|| panic!("config.json has no process.user.{key}"))
        };
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                .unwrap_or_default()
        };
        let env = strings(&process["env"])
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        let root = bundle.join(config["root"]["path"].as_str().unwrap_or("rootfs"));
        // Mount points a runtime or the chart would mount on (the bundle is a scratch copy).
        for point in ["proc", "dev", "work"] {
            std::fs::create_dir_all(root.join(point)).expect("mount point");
        }
        for point in ["tmp", "var/run/ceph", "etc/seapath/ceph"] {
            assert!(root.join(point).is_dir(), "the image has no /{point}");
        }
        let work = dir.path().join("work");
        let secret = dir.path().join("secret");
        std::fs::create_dir(&work).unwrap();
        std::fs::create_dir(&secret).unwrap();
        let container = Container {
            root,
            work,
            secret,
            uid: id("uid"),
            gid: id("gid"),
            env,
            entrypoint: strings(&process["args"]),
            _dir: dir,
        };
        chown(&container.work, Some(container.uid), Some(container.gid)).unwrap();
        container
    }

    /// Runs a program of the image with the image's environment and user.
    fn run<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Output {
        let started = Instant::now();
        let out = Command::new(host_tool("unshare", "util-linux"))
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(["--mount", "--propagation", "private", "--"])
            .arg(host_tool("sh", "dash"))
            .args(["-c", ENTER, "enter"])
            .arg(&self.root)
            .arg(format!("{}:{}", self.uid, self.gid))
            .arg(&self.work)
            .arg(&self.secret)
            .arg(host_tool("mount", "mount"))
            .arg(host_tool("chroot", "coreutils"))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running unshare");
        eprintln!(
            "{program} {} ({:.1} s)",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            started.elapsed().as_secs_f64()
        );
        assert!(
            out.status.success(),
            "{program} in the image failed ({}): {} (stdout: {})",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        out
    }

    /// A file of the work directory, as the container sees it, and as the host does.
    fn work_file(&self, name: &str) -> (PathBuf, PathBuf) {
        (Path::new(WORK).join(name), self.work.join(name))
    }
}

/// A value of a ceph.conf section (`mon host` and `mon_host` are the same key).
fn conf_value(conf: &str, section: &str, key: &str) -> Option<String> {
    let norm = |s: &str| s.trim().replace(['_', ' '], "");
    let mut current = String::new();
    conf.lines()
        .map(|l| l.split(['#', ';']).next().unwrap_or("").trim())
        .filter_map(|line| {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                current = name.trim().to_string();
                return None;
            }
            let (k, v) = line.split_once('=')?;
            (current == section && norm(k) == norm(key)).then(|| v.trim().to_string())
        })
        .last()
}

/// A fresh RBD namespace of the test bed, removed with what it holds.
struct Namespace {
    pool: IoCtx,
    io: IoCtx,
    name: String,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for image in self.io.list_images().unwrap_or_default() {
            let _ = self.io.remove_image(&image);
        }
        let _ = self.pool.remove_namespace(&self.name);
    }
}

/// Known bytes: data, a hole, data up to an end that is not a multiple of the qcow2 cluster.
fn known_disk() -> Vec<u8> {
    let len = (4 << 20) + (64 << 10) + 512;
    let mut disk = vec![0u8; len];
    let mut x: u32 = 0x9e37_79b9;
    let mut fill = |range: std::ops::Range<usize>, disk: &mut Vec<u8>| {
        for b in &mut disk[range] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
    };
    fill(0..(1 << 20), &mut disk);
    fill((3 << 20)..len, &mut disk);
    disk
}

#[test]
fn the_image_runs_the_controller_and_imports_a_qcow2_with_its_own_qemu_img() {
    let image = image_ref();
    assert!(
        unsafe { libc::geteuid() } == 0,
        "tests/image.rs needs root (mount namespace, chroot), as hack/test.sh runs it"
    );
    let started = Instant::now();
    let c = Container::unpack(&image);
    eprintln!("unpacked {image} ({:.1} s)", started.elapsed().as_secs_f64());

    // The entrypoint, as the image's user.
    let entrypoint = c.entrypoint.first().expect("config.json has process.args");
    assert_eq!(entrypoint, "/usr/bin/seapath-operator");
    assert_ne!(c.uid, 0, "the controller's image runs as a non-root user");
    let out = c.run(entrypoint, &["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("seapath-operator {}", env!("CARGO_PKG_VERSION")),
        "the image holds another build of the operator: rebuild it with hack/image.sh"
    );

    // qemu-img, found through the image's PATH as the controller finds it.
    let out = c.run(QEMU_IMG, &["--version"]);
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with("qemu-img version "), "{version}");

    // A qcow2 of known bytes, made by the image's qemu-img.
    let disk = known_disk();
    let (raw_in, raw_host) = c.work_file("disk.raw");
    let (qcow2_in, qcow2_host) = c.work_file("disk.qcow2");
    std::fs::write(&raw_host, &disk).unwrap();
    std::fs::set_permissions(&raw_host, std::fs::Permissions::from_mode(0o644)).unwrap();
    c.run(
        QEMU_IMG,
        &[
            OsStr::new("convert"),
            OsStr::new("-f"),
            OsStr::new("raw"),
            OsStr::new("-O"),
            OsStr::new("qcow2"),
            raw_in.as_os_str(),
            qcow2_in.as_os_str(),
        ],
    );
    let head = std::fs::read(&qcow2_host).expect("the qcow2 qemu-img wrote");
    assert_eq!(&head[..4], b"QFI\xfb", "not a qcow2 file");
    std::fs::remove_file(&raw_host).unwrap();

    // What the controller asks qemu-img about a qcow2 source.
    let out = c.run(QEMU_IMG, &qemu_img_info_args(&qcow2_in));
    let info: Value = serde_json::from_slice(&out.stdout).expect("qemu-img info prints JSON");
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"].as_u64(), Some(disk.len() as u64));

    // The Ceph Secret as the chart mounts it: ceph.conf and the keyring.
    let host_conf_path = PathBuf::from(env("CEPH_CONF"));
    let host_conf = std::fs::read_to_string(&host_conf_path)
        .unwrap_or_else(|e| panic!("CEPH_CONF={}: {e}: {HINT}", host_conf_path.display()));
    let mon_host = conf_value(&host_conf, "global", "mon host").expect("mon host in CEPH_CONF");
    let keyring = conf_value(&host_conf, "client", "keyring")
        .or_else(|| conf_value(&host_conf, "global", "keyring"))
        .expect("keyring in CEPH_CONF");
    // qemu-img reads the keyring only from ceph.conf (the controller's --ceph-keyring is not
    // passed on to it): the conf names it, see docs/operations.md.
    std::fs::write(
        c.secret.join("ceph.conf"),
        format!("[global]\nmon host = {mon_host}\nkeyring = {SECRET_DIR}/keyring\n"),
    )
    .unwrap();
    std::fs::copy(&keyring, c.secret.join("keyring")).expect("copying the test bed's keyring");
    for file in ["ceph.conf", "keyring"] {
        // A Secret volume's default mode.
        std::fs::set_permissions(c.secret.join(file), std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    // The temporary image the controller creates before the conversion, in a fresh namespace.
    let client_id = env("SEAPATH_CEPH_CLIENT");
    let pool_name = env("SEAPATH_CEPH_POOL");
    let cluster = Cluster::connect(ClusterConfig {
        conf_path: host_conf_path,
        client_id: client_id.clone(),
        mount_timeout: Duration::from_secs(10),
        options: vec![],
    })
    .unwrap_or_else(|e| panic!("cannot connect to the test bed's Ceph ({e}): {HINT}"));
    let name = format!("image-test-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let pool = cluster.io_context(&pool_name, "").expect("pool io context");
    pool.create_namespace(&name).expect("creating an RBD namespace");
    let ns = Namespace {
        io: cluster
            .io_context(&pool_name, &name)
            .expect("namespace io context"),
        pool,
        name,
    };
    let tmp = "disk-import";
    ns.io
        .create_image(tmp, disk.len() as u64, &ImageOptions::default())
        .expect("creating the target image");

    // The conversion, exactly as the controller runs it.
    let target = qemu_rbd_target(
        &pool_name,
        &ns.name,
        tmp,
        &Path::new(SECRET_DIR).join("ceph.conf"),
        &client_id,
    );
    let args: Vec<OsString> = qemu_img_convert_args(&qcow2_in, &target);
    c.run(QEMU_IMG, &args);

    let img = ns.io.open_image_read_only(tmp, None).expect("opening the import");
    let mut back = vec![0u8; disk.len()];
    let n = img.read_at(0, &mut back).expect("reading the import");
    assert_eq!(n, disk.len());
    let differs = back.iter().zip(&disk).position(|(a, b)| a != b);
    assert_eq!(
        differs, None,
        "the imported image differs from the source at that offset"
    );
    drop(img);
    drop(ns);
    eprintln!("image test done in {:.1} s", started.elapsed().as_secs_f64());
}
