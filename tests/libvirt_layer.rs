//! Integration tests of the libvirt layer (`seapath_operator::libvirt`).
//!
//! Domains: against libvirt's test driver, one node file per simulated hypervisor
//! (SEAPATH_LIBVIRT_NODES = "hv1=test:///abs/hv1.xml,hv2=test:///abs/hv2.xml"). Every
//! connection to a node file has its own state, so each test opens its own connection per
//! host and keeps it for the whole test; tests run in parallel, so every name is unique.
//!
//! Secrets: the test driver has no secrets, so they are tested against the machine's libvirtd
//! (SEAPATH_QEMU_URI, test bed started with --with-qemu), with usage names starting with
//! SEAPATH_E2E_PREFIX so that `hack/testbed.sh down` removes leftovers.
//!
//! Run with hack/test.sh, or `eval "$(hack/testbed.sh env)"` and `cargo test --test
//! libvirt_layer`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use seapath_operator::libvirt::{
    CephSecretSpec, DefineOptions, DomainState, Hypervisor, Operation, SecretUsage, ShutdownOutcome, Target,
    UndefineOptions, XmlSource, decode_ceph_key,
};
use uuid::Uuid;

const HINT: &str = "run the tests with hack/test.sh (or eval $(hack/testbed.sh env))";

/// A Ceph key as `ceph auth get-key` prints it (base64 of 28 bytes).
const CEPH_KEY: &str = "AQBzKB1lAAAAABAAqPBQ3XSRNnE3PGVi2uYPfA==";

fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{name} is not set: {HINT}"),
    }
}

/// The simulated hypervisors: (name, URI), at least two.
fn nodes() -> Vec<(String, String)> {
    let raw = env("SEAPATH_LIBVIRT_NODES");
    let nodes: Vec<(String, String)> = raw
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|entry| {
            let (name, uri) = entry
                .split_once('=')
                .unwrap_or_else(|| panic!("SEAPATH_LIBVIRT_NODES entry '{entry}' is not NAME=URI: {HINT}"));
            (name.trim().to_owned(), uri.trim().to_owned())
        })
        .collect();
    assert!(
        nodes.len() >= 2,
        "SEAPATH_LIBVIRT_NODES must name at least two hypervisors, got '{raw}': {HINT}"
    );
    for (name, uri) in &nodes {
        assert!(
            uri.starts_with("test:///"),
            "hypervisor {name} must use a test-driver node file, not '{uri}'"
        );
    }
    nodes
}

fn connect_hv(index: usize) -> Hypervisor {
    let (name, uri) = &nodes()[index];
    Hypervisor::connect(uri).unwrap_or_else(|e| panic!("connect to {name}: {e}"))
}

/// A name unique to this process and call, starting with `prefix`.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn test_domain_xml(name: &str, uuid: Uuid, memory_mib: u32) -> String {
    format!(
        "<domain type='test'>\n  <name>{name}</name>\n  <uuid>{uuid}</uuid>\n  \
         <memory unit='MiB'>{memory_mib}</memory>\n  <vcpu>1</vcpu>\n  \
         <os><type>hvm</type></os>\n</domain>\n"
    )
}

#[test]
fn host_info_and_listing() {
    let (_, uri) = &nodes()[0];
    let hv = connect_hv(0);
    assert_eq!(hv.uri(), uri);
    assert!(hv.is_alive());
    let info = hv.host_info().expect("host info");
    assert_eq!(info.hypervisor_type, "TEST");
    assert!(info.libvirt_version.major >= 9, "{info:?}");
    assert!(info.cpus > 0, "{info:?}");
    assert!(info.memory_kib > 0, "{info:?}");
    assert!(!info.hostname.is_empty(), "{info:?}");

    let a = unique("list-a");
    let b = unique("list-b");
    let dom_a = hv
        .define_domain(&test_domain_xml(&a, Uuid::new_v4(), 64), DefineOptions::default())
        .unwrap();
    let dom_b = hv
        .define_domain(&test_domain_xml(&b, Uuid::new_v4(), 64), DefineOptions::default())
        .unwrap();
    dom_b.start().unwrap();
    let list = hv.list_domains().unwrap();
    let find = |n: &str| list.iter().find(|d| d.name == n).cloned();
    let la = find(&a).expect("listed");
    let lb = find(&b).expect("listed");
    assert_eq!(la.uuid, dom_a.uuid());
    assert_eq!(la.state.state, DomainState::ShutOff);
    assert_eq!(lb.uuid, dom_b.uuid());
    assert_eq!(lb.state.state, DomainState::Running);
    assert_eq!(lb.state.reason_name(), "booted");
    hv.close();
}

#[test]
fn connect_error_names_the_uri() {
    let uri = "test:///nonexistent/seapath/node.xml";
    let err = Hypervisor::connect(uri).expect_err("no such node file");
    assert_eq!(err.operation(), Operation::Connect);
    assert_eq!(err.uri(), uri);
    assert!(err.raw_code().is_some());
    assert!(err.is_connection_error(), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("libvirt connect on {uri}: ")),
        "{err}"
    );
}

#[test]
fn simulated_hosts_keep_separate_state() {
    let hv1 = connect_hv(0);
    let hv2 = connect_hv(1);
    let name = unique("separate");
    let uuid = Uuid::new_v4();
    let dom = hv1
        .define_domain(&test_domain_xml(&name, uuid, 64), DefineOptions::validated())
        .unwrap();
    dom.start().unwrap();
    assert_eq!(hv1.lookup_domain(&name).unwrap().uuid(), uuid);

    let err = hv2.lookup_domain(&name).expect_err("absent on hv2");
    assert!(err.is_no_domain(), "{err:?}");
    assert!(hv2.find_domain(&name).unwrap().is_none());
    assert!(hv2.list_domains().unwrap().iter().all(|d| d.name != name));
    assert!(hv2.lookup_domain_by_uuid(uuid).unwrap_err().is_no_domain());

    // The same name may exist with another UUID on the other host.
    let other = hv2
        .define_domain(
            &test_domain_xml(&name, Uuid::new_v4(), 64),
            DefineOptions::default(),
        )
        .unwrap();
    assert_ne!(other.uuid(), uuid);
    assert_eq!(other.state().unwrap().state, DomainState::ShutOff);
    assert_eq!(dom.state().unwrap().state, DomainState::Running);

    // A second connection to hv1's node file is another simulated host as well.
    let hv1_again = connect_hv(0);
    assert!(hv1_again.find_domain(&name).unwrap().is_none());
}

#[test]
fn domain_lifecycle() {
    let hv = connect_hv(0);
    let name = unique("lifecycle");
    let uuid = Uuid::new_v4();
    let dom = hv
        .define_domain(&test_domain_xml(&name, uuid, 128), DefineOptions::validated())
        .unwrap();
    assert_eq!(dom.name(), name);
    assert_eq!(dom.uuid(), uuid);
    assert_eq!(dom.uri(), hv.uri());
    assert_eq!(dom.state().unwrap().state, DomainState::ShutOff);

    dom.start().unwrap();
    let st = dom.state().unwrap();
    assert_eq!((st.state, st.reason_name()), (DomainState::Running, "booted"));
    assert_eq!(st.to_string(), "running (booted)");

    // (The test driver reports an internal error here, QEMU an operation-invalid one.)
    let err = dom.start().expect_err("already running");
    assert!(err.message().contains("already running"), "{err:?}");
    assert_eq!(err.operation(), Operation::Start);
    assert_eq!(err.domain_name(), Some(name.as_str()));

    let live = dom.xml(XmlSource::Active).unwrap();
    let inactive = dom.xml(XmlSource::Inactive).unwrap();
    for xml in [&live, &inactive] {
        assert!(xml.contains(&format!("<name>{name}</name>")), "{xml}");
        assert!(xml.contains(&uuid.to_string()), "{xml}");
    }
    // Only the live XML of a running domain carries its id.
    assert!(live.contains("id='"), "{live}");
    assert!(!inactive.contains("id='"), "{inactive}");

    // The test driver shuts off at once.
    dom.shutdown().unwrap();
    let st = dom.state().unwrap();
    assert_eq!((st.state, st.reason), (DomainState::ShutOff, 1));
    assert_eq!(st.reason_name(), "shutdown");

    dom.start().unwrap();
    dom.destroy().unwrap();
    let st = dom.state().unwrap();
    assert_eq!((st.state, st.reason_name()), (DomainState::ShutOff, "destroyed"));
    let err = dom.destroy().expect_err("not running");
    assert!(err.is_operation_invalid(), "{err:?}");
    assert_eq!(err.operation(), Operation::Destroy);

    let by_uuid = hv.lookup_domain_by_uuid(uuid).unwrap();
    assert_eq!(by_uuid.name(), name);

    dom.undefine(UndefineOptions::test_driver()).unwrap();
    assert!(hv.lookup_domain(&name).unwrap_err().is_no_domain());
    assert!(hv.find_domain(&name).unwrap().is_none());
}

#[test]
fn shutdown_with_timeout_on_the_test_driver() {
    let hv = connect_hv(0);
    let name = unique("shutdown-timeout");
    let dom = hv
        .define_domain(
            &test_domain_xml(&name, Uuid::new_v4(), 64),
            DefineOptions::default(),
        )
        .unwrap();
    assert_eq!(
        dom.shutdown_with_timeout(Duration::from_secs(5)).unwrap(),
        ShutdownOutcome::AlreadyOff
    );
    dom.start().unwrap();
    assert_eq!(
        dom.shutdown_with_timeout(Duration::from_secs(5)).unwrap(),
        ShutdownOutcome::Graceful
    );
    assert_eq!(dom.state().unwrap().state, DomainState::ShutOff);
    let st = dom.wait_for_shutoff(Duration::ZERO).unwrap().expect("off");
    assert_eq!(st.reason_name(), "shutdown");
}

/// From async code the layer runs on tokio's blocking pool.
#[tokio::test]
async fn shutdown_with_timeout_from_async_code() {
    let dom = tokio::task::spawn_blocking(|| {
        let hv = connect_hv(0);
        let name = unique("async-shutdown");
        let dom = hv
            .define_domain(
                &test_domain_xml(&name, Uuid::new_v4(), 64),
                DefineOptions::default(),
            )
            .unwrap();
        dom.start().unwrap();
        // The domain handle keeps the connection (and so the simulated host) alive.
        dom
    })
    .await
    .unwrap();
    let d = dom.clone();
    let outcome = tokio::task::spawn_blocking(move || d.shutdown_with_timeout(Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, ShutdownOutcome::Graceful);
    assert_eq!(dom.state().unwrap().state, DomainState::ShutOff);
}

#[test]
fn define_errors() {
    let hv = connect_hv(0);
    let uri = hv.uri().to_owned();

    // Malformed XML.
    let err = hv
        .define_domain("<domain type='test'><name>broken", DefineOptions::default())
        .expect_err("malformed XML");
    assert!(err.is_invalid_xml(), "{err:?}");
    assert_eq!(err.operation(), Operation::Define);
    assert!(
        err.to_string()
            .starts_with(&format!("libvirt define domain from XML on {uri}: ")),
        "{err}"
    );

    // Schema validation: an unknown element is refused with validate, dropped without.
    let name = unique("validate");
    let xml = test_domain_xml(&name, Uuid::new_v4(), 64).replace("</domain>", "<seapath-unknown/></domain>");
    let err = hv
        .define_domain(&xml, DefineOptions::validated())
        .expect_err("fails the schema");
    assert!(err.is_invalid_xml(), "{err:?}");
    assert_eq!(err.domain_name(), Some(name.as_str()));
    assert!(hv.find_domain(&name).unwrap().is_none());
    let dom = hv.define_domain(&xml, DefineOptions::default()).unwrap();
    assert!(!dom.xml(XmlSource::Inactive).unwrap().contains("seapath-unknown"));

    // Same name, other UUID.
    let name = unique("duplicate");
    let uuid = Uuid::new_v4();
    hv.define_domain(&test_domain_xml(&name, uuid, 64), DefineOptions::default())
        .unwrap();
    let err = hv
        .define_domain(
            &test_domain_xml(&name, Uuid::new_v4(), 64),
            DefineOptions::default(),
        )
        .expect_err("name exists with another UUID");
    assert!(err.is_operation_failed(), "{err:?}");
    assert_eq!(err.target(), &Target::Domain(name.clone()));
    assert_eq!(err.uri(), uri);
    assert_eq!(
        err.to_string(),
        format!(
            "libvirt define domain '{name}' on {uri}: operation failed: domain '{name}' already \
             exists with uuid {uuid}"
        )
    );

    // Same name and UUID: an update.
    let updated = hv
        .define_domain(&test_domain_xml(&name, uuid, 96), DefineOptions::validated())
        .unwrap();
    assert_eq!(updated.uuid(), uuid);
    let xml = updated.xml(XmlSource::Inactive).unwrap();
    assert!(xml.contains("98304"), "memory updated to 96 MiB: {xml}");
}

#[test]
fn missing_domain_errors() {
    let hv = connect_hv(0);
    let uri = hv.uri().to_owned();
    let missing = unique("missing");

    let err = hv.lookup_domain(&missing).expect_err("missing");
    assert!(err.is_no_domain(), "{err:?}");
    assert_eq!(err.operation(), Operation::Lookup);
    assert!(
        err.to_string()
            .starts_with(&format!("libvirt look up domain '{missing}' on {uri}: ")),
        "{err}"
    );
    assert!(
        hv.lookup_domain_by_uuid(Uuid::new_v4())
            .unwrap_err()
            .is_no_domain()
    );

    // A handle whose domain was undefined behind its back.
    let name = unique("stale");
    let dom = hv
        .define_domain(
            &test_domain_xml(&name, Uuid::new_v4(), 64),
            DefineOptions::default(),
        )
        .unwrap();
    let stale = hv.lookup_domain(&name).unwrap();
    dom.undefine(UndefineOptions::default()).unwrap();

    let err = stale.start().expect_err("start a missing domain");
    assert!(err.is_no_domain(), "{err:?}");
    assert_eq!(err.operation(), Operation::Start);
    assert!(
        err.to_string()
            .starts_with(&format!("libvirt start domain '{name}' on {uri}: ")),
        "{err}"
    );

    let err = stale.state().expect_err("state of a missing domain");
    assert!(err.is_no_domain(), "{err:?}");
    assert_eq!(err.operation(), Operation::GetState);

    let err = stale
        .undefine(UndefineOptions::default())
        .expect_err("undefine a missing domain");
    assert!(err.is_no_domain(), "{err:?}");
    assert_eq!(err.operation(), Operation::Undefine);

    assert!(stale.shutdown().unwrap_err().is_no_domain());
    assert!(stale.destroy().unwrap_err().is_no_domain());
    assert!(stale.xml(XmlSource::Inactive).unwrap_err().is_no_domain());
    assert!(
        stale
            .shutdown_with_timeout(Duration::from_secs(1))
            .unwrap_err()
            .is_no_domain()
    );
}

#[test]
fn undefine_options_the_test_driver_lacks() {
    let hv = connect_hv(0);
    let name = unique("undefine-flags");
    let dom = hv
        .define_domain(
            &test_domain_xml(&name, Uuid::new_v4(), 64),
            DefineOptions::default(),
        )
        .unwrap();
    let err = dom
        .undefine(UndefineOptions::everything())
        .expect_err("the test driver has no NVRAM or checkpoints");
    assert!(err.is_invalid_argument(), "{err:?}");
    assert!(err.message().contains("unsupported flags"), "{err}");
    assert!(hv.find_domain(&name).unwrap().is_some());
    dom.undefine(UndefineOptions::test_driver()).unwrap();
    assert!(hv.find_domain(&name).unwrap().is_none());
}

#[test]
fn one_connection_shared_by_threads() {
    let hv = Arc::new(connect_hv(1));
    let base = unique("threads");
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let hv = Arc::clone(&hv);
            let name = format!("{base}-{i}");
            std::thread::spawn(move || {
                let dom = hv
                    .define_domain(
                        &test_domain_xml(&name, Uuid::new_v4(), 64),
                        DefineOptions::default(),
                    )
                    .unwrap();
                dom.start().unwrap();
                dom.destroy().unwrap();
                name
            })
        })
        .collect();
    let names: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let listed = hv.list_domains().unwrap();
    for name in names {
        let d = listed.iter().find(|d| d.name == name).expect("listed");
        assert_eq!(d.state.state, DomainState::ShutOff);
        assert_eq!(d.state.reason_name(), "destroyed");
    }
}

#[test]
fn secrets_are_unsupported_on_the_test_driver() {
    let hv = connect_hv(0);
    let err = hv
        .define_ceph_secret(&CephSecretSpec::new(unique("client.test secret")))
        .expect_err("no secret driver");
    assert!(err.is_unsupported(), "{err:?}");
    assert!(hv.list_secrets().unwrap_err().is_unsupported());
}

/// Undefines a secret at the end of a test, also when it fails.
struct SecretGuard {
    hv: Hypervisor,
    usage: String,
}

impl Drop for SecretGuard {
    fn drop(&mut self) {
        if let Ok(Some(s)) = self.hv.find_ceph_secret(&self.usage) {
            let _ = s.undefine();
        }
    }
}

#[test]
fn ceph_secrets() {
    let uri = env("SEAPATH_QEMU_URI");
    let prefix = env("SEAPATH_E2E_PREFIX");
    let hv = Hypervisor::connect(&uri).unwrap_or_else(|e| panic!("{e}: {HINT}"));
    let usage = format!("{} client.libvirt secret", unique(&format!("{prefix}secret")));
    let _guard = SecretGuard {
        hv: hv.clone(),
        usage: usage.clone(),
    };

    let err = hv.lookup_ceph_secret(&usage).expect_err("not defined yet");
    assert!(err.is_no_secret(), "{err:?}");
    assert_eq!(err.target(), &Target::CephSecret(usage.clone()));
    assert!(
        err.to_string()
            .starts_with(&format!("libvirt look up ceph secret '{usage}' on {uri}: ")),
        "{err}"
    );
    assert!(hv.find_ceph_secret(&usage).unwrap().is_none());

    // A readable (non-private) secret, to check the stored value.
    let uuid = Uuid::new_v4();
    let spec = CephSecretSpec::new(usage.clone())
        .with_uuid(uuid)
        .with_description("seapath-operator test")
        .with_private(false);
    let secret = hv.define_ceph_secret(&spec).unwrap();
    assert_eq!(secret.uuid(), uuid);
    assert_eq!(secret.usage(), SecretUsage::Ceph);
    assert_eq!(secret.usage_id(), Some(usage.as_str()));

    secret.set_ceph_key(CEPH_KEY).unwrap();
    let stored = hv.lookup_ceph_secret(&usage).unwrap().value().unwrap();
    assert_eq!(
        stored,
        decode_ceph_key(CEPH_KEY).unwrap(),
        "libvirt keeps the decoded key"
    );
    assert_eq!(
        hv.lookup_secret_by_uuid(uuid).unwrap().usage_id(),
        Some(usage.as_str())
    );

    let listed = hv.list_secrets().unwrap();
    let entry = listed.iter().find(|s| s.uuid == uuid).expect("listed");
    assert_eq!(entry.usage, SecretUsage::Ceph);
    assert_eq!(entry.usage_id.as_deref(), Some(usage.as_str()));

    // Invalid key: refused before libvirt is called.
    let err = secret.set_ceph_key("not base64!").expect_err("invalid key");
    assert!(err.is_invalid_argument(), "{err:?}");
    assert_eq!(err.operation(), Operation::SetValue);

    // The same usage with another UUID.
    let err = hv
        .define_ceph_secret(&spec.clone().with_uuid(Uuid::new_v4()))
        .expect_err("usage taken by another UUID");
    assert!(err.raw_code().is_some(), "{err:?}");
    assert!(err.message().contains(&usage), "{err}");

    // ensure: idempotent for the same UUID, refuses another one.
    let ensured = hv.ensure_ceph_secret(&spec, CEPH_KEY).unwrap();
    assert_eq!(ensured.uuid(), uuid);
    let err = hv
        .ensure_ceph_secret(&spec.clone().with_uuid(Uuid::new_v4()), CEPH_KEY)
        .expect_err("exists with another UUID");
    assert!(err.is_invalid_argument(), "{err:?}");
    assert!(err.message().contains(&uuid.to_string()), "{err}");

    secret.undefine().unwrap();
    assert!(hv.lookup_ceph_secret(&usage).unwrap_err().is_no_secret());
    assert!(hv.lookup_secret_by_uuid(uuid).unwrap_err().is_no_secret());
    assert!(secret.undefine().unwrap_err().is_no_secret());

    // A private secret (the default) with a generated UUID: its value cannot be read back.
    let secret = hv
        .ensure_ceph_secret(&CephSecretSpec::new(usage.clone()), CEPH_KEY)
        .unwrap();
    assert_ne!(secret.uuid(), uuid);
    let err = secret.value().expect_err("private");
    assert_eq!(err.operation(), Operation::GetValue);
    secret.undefine().unwrap();
}
