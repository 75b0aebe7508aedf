//! End to end: a QEMU guest boots through OUR libvirt layer from an RBD image of the test
//! bed's Ceph and writes a marker to its disk, which is then read back through OUR librbd layer.
//!
//! The guest (hack/lib/guest/init) writes exactly "SEAPATH-E2E:<TEXT>\n" at offset 0 of
//! /dev/vda when the kernel command line has `seapath.marker=<TEXT>`, then powers off.
//!
//! Needs the test bed with Ceph and QEMU: `hack/testbed.sh up --components ceph,libvirt
//! --with-qemu`, then `eval "$(hack/testbed.sh env)"` (hack/test.sh does both). Everything it
//! creates is named with SEAPATH_E2E_PREFIX and removed at the end, also on failure.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use seapath_operator::ceph::{Cluster, ClusterConfig, ImageOptions, IoCtx};
use seapath_operator::libvirt::{
    CephSecretSpec, DefineOptions, DomainState, Hypervisor, ShutdownOutcome, UndefineOptions,
};
use uuid::Uuid;

const HINT: &str = "run the tests with hack/test.sh (or eval $(hack/testbed.sh env))";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const IMAGE_SIZE: u64 = 16 << 20;

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{name} is not set: {HINT}"),
    }
}

struct Guest {
    uri: String,
    kernel: String,
    initrd: String,
    prefix: String,
}

impl Guest {
    fn from_env() -> Self {
        let guest = Guest {
            uri: env("SEAPATH_QEMU_URI"),
            kernel: env("SEAPATH_GUEST_KERNEL"),
            initrd: env("SEAPATH_GUEST_INITRD"),
            prefix: env("SEAPATH_E2E_PREFIX"),
        };
        for file in [&guest.kernel, &guest.initrd] {
            assert!(Path::new(file).is_file(), "guest file {file} is missing: {HINT}");
        }
        guest
    }

    /// A name for this test's objects, starting with the prefix the test bed cleans up.
    fn unique_name(&self, what: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!("{}{what}-{}-{nanos:x}", self.prefix, std::process::id())
    }
}

struct Rbd {
    pool: String,
    mon_host: String,
    mon_port: u16,
    /// (user, base64 key) with cephx, None with auth none.
    cephx: Option<(String, String)>,
    io: IoCtx,
}

impl Rbd {
    fn from_env() -> Self {
        let conf = env("CEPH_CONF");
        let pool = env("SEAPATH_CEPH_POOL");
        let mon_host = env("SEAPATH_CEPH_MON_HOST");
        let mon_port = env("SEAPATH_CEPH_MON_PORT")
            .parse()
            .unwrap_or_else(|e| panic!("SEAPATH_CEPH_MON_PORT is not a port ({e}): {HINT}"));
        let cephx = match env("SEAPATH_CEPH_AUTH").as_str() {
            "cephx" => Some((env("SEAPATH_CEPH_LIBVIRT_USER"), env("SEAPATH_CEPH_LIBVIRT_KEY"))),
            "none" => None,
            other => panic!("SEAPATH_CEPH_AUTH must be cephx or none, not '{other}': {HINT}"),
        };
        let client_id = std::env::var("SEAPATH_CEPH_CLIENT").unwrap_or_else(|_| "admin".into());
        let cluster = Cluster::connect(ClusterConfig {
            conf_path: PathBuf::from(&conf),
            client_id,
            mount_timeout: Duration::from_secs(15),
            options: Vec::new(),
        })
        .unwrap_or_else(|e| panic!("connect to Ceph with {conf}: {e}"));
        let io = cluster
            .io_context(&pool, "")
            .unwrap_or_else(|e| panic!("open pool {pool}: {e}"));
        Rbd {
            pool,
            mon_host,
            mon_port,
            cephx,
            io,
        }
    }
}

/// Removes what a test created, in reverse order, also when the test panics: the domain
/// (destroyed first), the libvirt secret, the RBD image.
struct Cleanup {
    hv: Hypervisor,
    domain: Option<String>,
    secret_usage: Option<String>,
    image: Option<(IoCtx, String)>,
}

impl Cleanup {
    fn new(hv: &Hypervisor) -> Self {
        Cleanup {
            hv: hv.clone(),
            domain: None,
            secret_usage: None,
            image: None,
        }
    }

    /// Runs the cleanup now and reports every failure.
    fn run(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(name) = self.domain.take() {
            match self.hv.find_domain(&name) {
                Ok(Some(dom)) => {
                    if dom.state().is_ok_and(|s| s.state.is_active())
                        && let Err(e) = dom.destroy()
                    {
                        problems.push(e.to_string());
                    }
                    if let Err(e) = dom.undefine(UndefineOptions::everything()) {
                        problems.push(e.to_string());
                    }
                }
                Ok(None) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        if let Some(usage) = self.secret_usage.take() {
            match self.hv.find_ceph_secret(&usage) {
                Ok(Some(s)) => {
                    if let Err(e) = s.undefine() {
                        problems.push(e.to_string());
                    }
                }
                Ok(None) => {}
                Err(e) => problems.push(e.to_string()),
            }
        }
        if let Some((io, image)) = self.image.take() {
            // QEMU's librbd client may hold its watch for a moment after the guest is gone.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match io.remove_image(&image) {
                    Ok(()) => break,
                    Err(e) if e.is_not_found() => break,
                    Err(e) if e.is_busy() && Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(200))
                    }
                    Err(e) => {
                        problems.push(e.to_string());
                        break;
                    }
                }
            }
        }
        problems
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for problem in self.run() {
            eprintln!("cleanup: {problem}");
        }
    }
}

fn escape_attr(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// The boot-test domain: direct kernel boot, 128 MiB, ACPI, serial console to a file, and
/// optionally the RBD disk as vda.
fn domain_xml(
    guest: &Guest,
    name: &str,
    uuid: Uuid,
    cmdline: &str,
    console_log: &Path,
    disk: Option<String>,
) -> String {
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>{disk}
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
",
        kernel = escape_attr(&guest.kernel),
        initrd = escape_attr(&guest.initrd),
        cmdline = escape_attr(cmdline),
        console = escape_attr(&console_log.to_string_lossy()),
        disk = disk.unwrap_or_default(),
    )
}

fn rbd_disk_xml(rbd: &Rbd, image: &str, secret: Option<(&str, Uuid)>) -> String {
    let auth = match secret {
        Some((user, uuid)) => format!(
            "\n      <auth username='{}'>\n        <secret type='ceph' uuid='{uuid}'/>\n      </auth>",
            escape_attr(user)
        ),
        None => String::new(),
    };
    format!(
        "
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='rbd' name='{pool}/{image}'>
        <host name='{host}' port='{port}'/>
      </source>{auth}
      <target dev='vda' bus='virtio'/>
    </disk>",
        pool = escape_attr(&rbd.pool),
        image = escape_attr(image),
        host = escape_attr(&rbd.mon_host),
        port = rbd.mon_port,
    )
}

fn console(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no console log at {path:?}: {e})"))
}

#[test]
fn guest_boots_from_rbd_through_the_libvirt_layer() {
    let guest = Guest::from_env();
    let rbd = Rbd::from_env();
    let hv = Hypervisor::connect(&guest.uri).unwrap_or_else(|e| panic!("{e}: {HINT}"));
    let host = hv.host_info().expect("host info");
    assert_eq!(host.hypervisor_type, "QEMU", "{host:?}");
    eprintln!(
        "host: libvirt {}, QEMU {}, {} CPUs, {} KiB",
        host.libvirt_version, host.hypervisor_version, host.cpus, host.memory_kib
    );

    let name = guest.unique_name("boot");
    let marker = format!("m{:x}", Uuid::new_v4().as_u128() as u64);
    let logs = tempfile::tempdir().expect("temp dir");
    let console_log = logs.path().join("console.log");
    let mut cleanup = Cleanup::new(&hv);

    // The disk.
    rbd.io
        .create_image(&name, IMAGE_SIZE, &ImageOptions::default())
        .expect("create the RBD image");
    cleanup.image = Some((rbd.io.clone(), name.clone()));

    // The Ceph secret (cephx only), through our layer.
    let secret = match &rbd.cephx {
        Some((user, key)) => {
            let usage = format!("{name} client.{user} secret");
            cleanup.secret_usage = Some(usage.clone());
            let secret = hv
                .ensure_ceph_secret(&CephSecretSpec::new(usage), key)
                .expect("define the ceph secret");
            Some((user.as_str(), secret.uuid()))
        }
        None => None,
    };

    // The domain.
    let uuid = Uuid::new_v4();
    let xml = domain_xml(
        &guest,
        &name,
        uuid,
        &format!("console=ttyS0 panic=-1 seapath.marker={marker}"),
        &console_log,
        Some(rbd_disk_xml(&rbd, &name, secret)),
    );
    cleanup.domain = Some(name.clone());
    let dom = hv
        .define_domain(&xml, DefineOptions::validated())
        .expect("define the domain");
    assert_eq!(dom.uuid(), uuid);
    assert_eq!(dom.state().unwrap().state, DomainState::ShutOff);

    let t0 = Instant::now();
    dom.start().expect("start the domain");
    let started = t0.elapsed();
    let end = dom
        .wait_for_shutoff(BOOT_TIMEOUT)
        .expect("domain state")
        .unwrap_or_else(|| {
            panic!(
                "the guest did not shut off within {BOOT_TIMEOUT:?} (state {}); console:\n{}",
                dom.state()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string()),
                console(&console_log)
            )
        });
    let booted = t0.elapsed();
    eprintln!(
        "e2e boot: start() returned after {started:.2?}, guest wrote and shut off after \
         {booted:.2?} (final state {end})"
    );
    let log = console(&console_log);
    assert!(
        log.contains("seapath-e2e-done"),
        "the guest did not report success; console:\n{log}"
    );
    assert_eq!(end.reason_name(), "shutdown", "console:\n{log}");

    // Read the marker back through librbd.
    let expected = format!("SEAPATH-E2E:{marker}\n");
    let image = rbd.io.open_image_read_only(&name, None).expect("open the image");
    let mut buf = vec![0u8; expected.len() + 16];
    let n = image.read_at(0, &mut buf).expect("read the image");
    assert_eq!(n, buf.len());
    assert_eq!(
        String::from_utf8_lossy(&buf[..expected.len()]),
        expected,
        "marker at offset 0; console:\n{log}"
    );
    assert!(
        buf[expected.len()..].iter().all(|&b| b == 0),
        "nothing but the marker was written: {buf:?}"
    );
    drop(image);

    // Clean up through the layer and check that it worked.
    let problems = cleanup.run();
    assert!(problems.is_empty(), "cleanup failed: {problems:?}");
    assert!(hv.find_domain(&name).unwrap().is_none());
    if let Some((_, secret_uuid)) = secret {
        assert!(hv.lookup_secret_by_uuid(secret_uuid).unwrap_err().is_no_secret());
    }
    assert!(
        rbd.io
            .open_image_read_only(&name, None)
            .unwrap_err()
            .is_not_found()
    );
}

/// A guest whose init ignores the ACPI power button (it only sleeps) is destroyed after the
/// timeout of `shutdown_with_timeout`.
#[test]
fn shutdown_with_timeout_destroys_a_guest_that_ignores_acpi() {
    let guest = Guest::from_env();
    let hv = Hypervisor::connect(&guest.uri).unwrap_or_else(|e| panic!("{e}: {HINT}"));
    let name = guest.unique_name("stubborn");
    let logs = tempfile::tempdir().expect("temp dir");
    let console_log = logs.path().join("console.log");
    let mut cleanup = Cleanup::new(&hv);

    // No disk: busybox as init just sleeps, and nothing in the guest reacts to ACPI.
    let xml = domain_xml(
        &guest,
        &name,
        Uuid::new_v4(),
        "console=ttyS0 rdinit=/bin/busybox -- sleep 600",
        &console_log,
        None,
    );
    cleanup.domain = Some(name.clone());
    let dom = hv
        .define_domain(&xml, DefineOptions::validated())
        .expect("define the domain");
    dom.start().expect("start the domain");
    assert_eq!(dom.state().unwrap().state, DomainState::Running);

    let t0 = Instant::now();
    let outcome = dom
        .shutdown_with_timeout(Duration::from_secs(3))
        .expect("shutdown with timeout");
    let took = t0.elapsed();
    assert_eq!(
        outcome,
        ShutdownOutcome::Destroyed,
        "console:\n{}",
        console(&console_log)
    );
    assert!(took >= Duration::from_secs(3), "{took:?}");
    let st = dom.state().unwrap();
    assert_eq!((st.state, st.reason_name()), (DomainState::ShutOff, "destroyed"));
    assert_eq!(
        dom.shutdown_with_timeout(Duration::from_secs(3)).unwrap(),
        ShutdownOutcome::AlreadyOff
    );

    let problems = cleanup.run();
    assert!(problems.is_empty(), "cleanup failed: {problems:?}");
    assert!(hv.find_domain(&name).unwrap().is_none());
}
