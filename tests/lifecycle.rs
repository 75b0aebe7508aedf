//! The VM lifecycle end to end on the real test bed: the controller and two agents (libvirt
//! test-driver node files) take VirtualMachines from manifest to Started and back, and bad
//! input ends in a condition with a reason, leaving nothing half-made in Ceph or libvirt.

mod common;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use seapath_operator::api::{Phase, VirtualMachine};
use seapath_operator::ceph::{Cluster, ClusterConfig, ImageOptions, IoCtx};
use serde_json::json;

const XML: &str = "<domain type='qemu'><name>ignored</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
<os><type arch='x86_64'>hvm</type></os><features><acpi/></features><devices><serial type='pty'/></devices></domain>";

struct Env {
    vms: Api<VirtualMachine>,
    namespace: String,
    nodes: [String; 2],
}

async fn setup(prefix: &str) -> Env {
    let client = common::admin_client().await;
    common::install_crds(&client).await;
    let op = common::operator::operator("lc");
    let namespace = common::fresh_namespace(&client, prefix).await;
    Env {
        vms: Api::namespaced(client, &namespace),
        namespace,
        nodes: op.nodes.clone(),
    }
}

fn manifest(name: &str, spec: serde_json::Value) -> VirtualMachine {
    serde_json::from_value(json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("valid VirtualMachine")
}

fn blank_spec(extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "xml": XML,
        "stopTimeoutSeconds": 5,
        "systemDisk": {"source": {"blank": {}}, "size": "16Mi"},
        "metadata": {"site": "lab"}
    });
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    spec
}

async fn wait_for(
    env: &Env,
    name: &str,
    what: &str,
    check: impl Fn(&VirtualMachine) -> bool,
) -> VirtualMachine {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let vm = env.vms.get_opt(name).await.expect("get VM");
        if let Some(vm) = vm {
            if check(&vm) {
                return vm;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{name}: timed out waiting for {what}; status: {:#?}", vm.status);
            }
        } else if tokio::time::Instant::now() > deadline {
            panic!("{name}: timed out waiting for {what}; the object is gone");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn phase(vm: &VirtualMachine) -> Option<Phase> {
    vm.status.as_ref().and_then(|s| s.phase)
}

fn condition<'a>(vm: &'a VirtualMachine, type_: &str) -> Option<&'a Condition> {
    vm.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

async fn wait_phase(env: &Env, name: &str, wanted: Phase) -> VirtualMachine {
    wait_for(env, name, &format!("phase {wanted:?}"), |vm| {
        phase(vm) == Some(wanted)
    })
    .await
}

async fn wait_reason(env: &Env, name: &str, type_: &str, reason: &str) -> Condition {
    let vm = wait_for(env, name, &format!("{type_} reason {reason}"), |vm| {
        condition(vm, type_).is_some_and(|c| c.reason == reason)
    })
    .await;
    condition(&vm, type_).unwrap().clone()
}

async fn wait_gone(env: &Env, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while env.vms.get_opt(name).await.expect("get VM").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} was not deleted within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn set_state(env: &Env, name: &str, state: &str) {
    env.vms
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"state": state}})),
        )
        .await
        .expect("patch spec.state");
}

/// A Ceph connection and the RBD namespace of this test's Kubernetes namespace.
fn rbd(env: &Env) -> IoCtx {
    let cluster = Cluster::connect(ClusterConfig {
        conf_path: common::testbed_env("CEPH_CONF").into(),
        client_id: std::env::var("SEAPATH_CEPH_CLIENT").unwrap_or_else(|_| "admin".into()),
        ..Default::default()
    })
    .expect("connect to Ceph");
    let pool = common::testbed_env("SEAPATH_CEPH_POOL");
    let root = cluster.io_context(&pool, "").expect("pool");
    if !root.namespace_exists(&env.namespace).expect("namespace exists") {
        root.create_namespace(&env.namespace)
            .expect("create RBD namespace");
    }
    cluster.io_context(&pool, &env.namespace).expect("RBD namespace")
}

#[tokio::test]
async fn a_vm_goes_from_manifest_to_started_and_between_states() {
    let env = setup("lc-states").await;
    let spec = blank_spec(json!({"dataDisks": [{"source": {"blank": {}}, "size": "8Mi"}]}));
    env.vms
        .create(&PostParams::default(), &manifest("guest0", spec))
        .await
        .expect("create");
    let vm = wait_phase(&env, "guest0", Phase::Started).await;
    let status = vm.status.clone().unwrap();
    let node = status.node.clone().expect("placed");
    assert!(
        env.nodes.contains(&node),
        "placed on {node}, not on this test's hypervisors"
    );
    assert_eq!(
        vm.metadata.labels.as_ref().unwrap()["seapath.lfenergy.org/node"],
        node
    );
    assert_eq!(status.domain.as_ref().unwrap().node, node);
    assert!(condition(&vm, "Ready").is_some_and(|c| c.status == "True"));
    assert_eq!(status.observed_generation, vm.metadata.generation);

    // vm_manager's layout in Ceph.
    let io = rbd(&env);
    assert_eq!(io.group_list().unwrap(), ["guest0"]);
    let mut images = io.list_images().unwrap();
    images.sort();
    assert_eq!(images, ["data_guest0_0", "system_guest0"]);
    let system = io.open_image("system_guest0").unwrap();
    let metadata = system.metadata_list().unwrap();
    assert_eq!(metadata["vm_name"], "guest0");
    assert_eq!(metadata["_base_xml"], XML);
    assert_eq!(metadata["site"], "lab");
    assert!(
        metadata["xml"].contains(&format!("rbd/{}/system_guest0", env.namespace)),
        "{}",
        metadata["xml"]
    );
    assert_eq!(system.size().unwrap(), 16 << 20);

    set_state(&env, "guest0", "Stopped").await;
    wait_phase(&env, "guest0", Phase::Stopped).await;
    set_state(&env, "guest0", "Disabled").await;
    let vm = wait_phase(&env, "guest0", Phase::Disabled).await;
    assert_eq!(
        vm.status.unwrap().domain.unwrap().state,
        seapath_operator::api::DomainState::Absent
    );
    // Moving between states never touches the disks.
    assert_eq!(
        io.open_image("system_guest0").unwrap().metadata_list().unwrap(),
        metadata
    );
    set_state(&env, "guest0", "Started").await;
    wait_phase(&env, "guest0", Phase::Started).await;
}

#[tokio::test]
async fn deletion_removes_the_rbd_data_unless_retained() {
    let env = setup("lc-delete").await;
    env.vms
        .create(&PostParams::default(), &manifest("gone", blank_spec(json!({}))))
        .await
        .unwrap();
    let retained = blank_spec(json!({"deletionPolicy": "Retain"}));
    env.vms
        .create(&PostParams::default(), &manifest("kept", retained))
        .await
        .unwrap();
    wait_phase(&env, "gone", Phase::Started).await;
    wait_phase(&env, "kept", Phase::Started).await;

    env.vms.delete("gone", &DeleteParams::default()).await.unwrap();
    env.vms.delete("kept", &DeleteParams::default()).await.unwrap();
    wait_gone(&env, "gone").await;
    wait_gone(&env, "kept").await;
    let io = rbd(&env);
    assert_eq!(io.group_list().unwrap(), ["kept"]);
    assert_eq!(io.list_images().unwrap(), ["system_kept"]);
}

#[tokio::test]
async fn base_xml_reaching_the_host_is_refused_before_anything_is_made() {
    let env = setup("lc-policy").await;
    let xml = "<domain type='qemu'><name>x</name><memory unit='MiB'>64</memory><os><type>hvm</type></os>\
<devices><hostdev mode='subsystem' type='pci'><source><address domain='0' bus='0' slot='1' function='0'/></source></hostdev>\
<disk type='file' device='disk'><source file='/etc/shadow'/><target dev='vdz'/></disk></devices></domain>";
    let mut spec = blank_spec(json!({}));
    spec["xml"] = json!(xml);
    env.vms
        .create(&PostParams::default(), &manifest("hostile", spec))
        .await
        .unwrap();
    let stalled = wait_reason(&env, "hostile", "Stalled", "ForbiddenDevice").await;
    assert_eq!(stalled.status, "True");
    // Each refusal names the element and the setting that would allow it.
    assert!(
        stalled
            .message
            .contains("<hostdev type=\"pci\"> passes host PCI device 0000:00:01.0 to the guest"),
        "{}",
        stalled.message
    );
    assert!(
        stalled.message.contains("\"pciDevices\": [\"0000:00:01.0\"]"),
        "{}",
        stalled.message
    );
    assert!(
        stalled.message.contains("<disk type=\"file\">"),
        "{}",
        stalled.message
    );
    let vm = env.vms.get("hostile").await.unwrap();
    assert_eq!(phase(&vm), Some(Phase::Undefined));
    assert_eq!(condition(&vm, "Ready").unwrap().reason, "ForbiddenDevice");
    let io = rbd(&env);
    assert!(io.group_list().unwrap().is_empty());
    assert!(io.list_images().unwrap().is_empty());

    let mut malformed = blank_spec(json!({}));
    malformed["xml"] = json!("<domain><name>x</name>");
    env.vms
        .create(&PostParams::default(), &manifest("broken", malformed))
        .await
        .unwrap();
    let stalled = wait_reason(&env, "broken", "Stalled", "InvalidXml").await;
    assert!(stalled.message.contains("malformed"), "{}", stalled.message);
}

#[tokio::test]
async fn two_vms_claiming_one_uuid() {
    let env = setup("lc-uuid").await;
    let uuid = uuid::Uuid::new_v4();
    let xml = XML.replace("<vcpu>", &format!("<uuid>{uuid}</uuid><vcpu>"));
    let mut spec = blank_spec(json!({}));
    spec["xml"] = json!(xml);
    env.vms
        .create(&PostParams::default(), &manifest("first", spec.clone()))
        .await
        .unwrap();
    let first = wait_phase(&env, "first", Phase::Started).await;
    assert_eq!(first.status.unwrap().domain_uuid, Some(uuid.to_string()));
    env.vms
        .create(&PostParams::default(), &manifest("second", spec.clone()))
        .await
        .unwrap();
    let stalled = wait_reason(&env, "second", "Stalled", "DuplicateUuid").await;
    assert!(
        stalled.message.contains(&format!("{}/first", env.namespace))
            && stalled.message.contains("spec.xml is immutable"),
        "{}",
        stalled.message
    );
    assert!(!rbd(&env).group_list().unwrap().contains(&"second".to_string()));

    // Another tenant's VM is not named to this one.
    let other = setup("lc-uuid-other").await;
    other
        .vms
        .create(&PostParams::default(), &manifest("third", spec.clone()))
        .await
        .unwrap();
    let stalled = wait_reason(&other, "third", "Stalled", "DuplicateUuid").await;
    assert!(
        stalled.message.contains("of another namespace") && !stalled.message.contains("first"),
        "{}",
        stalled.message
    );
    other.vms.delete("third", &DeleteParams::default()).await.unwrap();
    wait_gone(&other, "third").await;

    // Once the first VM is gone, the second one gets its UUID.
    env.vms.delete("first", &DeleteParams::default()).await.unwrap();
    wait_gone(&env, "first").await;
    let second = wait_phase(&env, "second", Phase::Started).await;
    assert_eq!(second.status.unwrap().domain_uuid, Some(uuid.to_string()));
}

#[tokio::test]
async fn a_vm_cloned_from_itself_is_refused() {
    let env = setup("lc-selfclone").await;
    let spec = blank_spec(json!({"systemDisk": {"source": {"vm": {"name": "narcissus"}}}}));
    env.vms
        .create(&PostParams::default(), &manifest("narcissus", spec))
        .await
        .unwrap();
    let stalled = wait_reason(&env, "narcissus", "Stalled", "CloneOfItself").await;
    assert_eq!(stalled.status, "True");
    assert!(
        stalled.message.contains("cannot be cloned from itself"),
        "{}",
        stalled.message
    );
}

#[tokio::test]
async fn a_clone_waits_for_its_source_then_copies_it() {
    let env = setup("lc-clone").await;
    let spec = blank_spec(json!({"systemDisk": {"source": {"vm": {"name": "golden"}}}}));
    env.vms
        .create(&PostParams::default(), &manifest("copy", spec))
        .await
        .unwrap();
    let waiting = wait_reason(&env, "copy", "StorageReady", "SourceNotFound").await;
    assert!(waiting.message.contains("golden"), "{}", waiting.message);

    env.vms
        .create(&PostParams::default(), &manifest("golden", blank_spec(json!({}))))
        .await
        .unwrap();
    wait_phase(&env, "golden", Phase::Started).await;
    // Data written to the source before the copy is made shows in the copy.
    let io = rbd(&env);
    io.open_image("system_golden")
        .unwrap()
        .write_at(4096, b"seapath clone")
        .unwrap();
    let copy = wait_phase(&env, "copy", Phase::Started).await;
    let mut buf = [0u8; 13];
    io.open_image("system_copy")
        .unwrap()
        .read_at(4096, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"seapath clone");
    let golden = env.vms.get("golden").await.unwrap();
    assert_ne!(
        copy.status.unwrap().domain_uuid,
        golden.status.unwrap().domain_uuid,
        "a clone gets a fresh UUID"
    );

    // The copy owes nothing to its source: it lives on when the source is deleted.
    env.vms.delete("golden", &DeleteParams::default()).await.unwrap();
    wait_gone(&env, "golden").await;
    set_state(&env, "copy", "Stopped").await;
    let stopped = wait_phase(&env, "copy", Phase::Stopped).await;
    let ready = stopped
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "StorageReady")
        .unwrap();
    assert_eq!(ready.status, "True", "{}", ready.message);
}

#[tokio::test]
async fn a_golden_image_is_cloned_copy_on_write() {
    let env = setup("lc-golden").await;
    let io = rbd(&env);
    io.create_image("debian", 64 << 20, &ImageOptions::default())
        .unwrap();
    {
        let mut image = io.open_image("debian").unwrap();
        image.write_at(0, b"golden").unwrap();
        image.snap_create("v1").unwrap();
        image.snap_protect("v1").unwrap();
    }
    let spec = blank_spec(
        json!({"systemDisk": {"source": {"golden": {"namespace": env.namespace, "image": "debian", "snapshot": "v1"}}, "size": "128Mi"}}),
    );
    env.vms
        .create(&PostParams::default(), &manifest("layered", spec))
        .await
        .unwrap();
    let vm = wait_phase(&env, "layered", Phase::Started).await;
    let image = &vm.status.unwrap().storage.unwrap().images[0];
    assert_eq!(image.size_bytes, 128 << 20, "grown to the size asked");
    assert!(
        image.parent.as_deref().is_some_and(|p| p.contains("debian@v1")),
        "{:?}",
        image.parent
    );
    let mut buf = [0u8; 6];
    io.open_image("system_layered")
        .unwrap()
        .read_at(0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"golden");
}

#[tokio::test]
async fn an_image_url_that_fails_leaves_nothing_behind() {
    let env = setup("lc-http").await;
    let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = server.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut socket, _) = server.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let _ = socket
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nnot found",
                )
                .await;
        }
    });
    let spec = blank_spec(
        json!({"systemDisk": {"source": {"http": {"url": format!("http://127.0.0.1:{port}/missing.qcow2")}}}}),
    );
    env.vms
        .create(&PostParams::default(), &manifest("missing", spec))
        .await
        .unwrap();
    let failed = wait_reason(&env, "missing", "StorageReady", "ImportFailed").await;
    assert!(failed.message.contains("404"), "{}", failed.message);
    let io = rbd(&env);
    assert!(
        io.list_images().unwrap().is_empty(),
        "partial images left: {:?}",
        io.list_images()
    );
    assert!(io.group_list().unwrap().is_empty());
}

#[tokio::test]
async fn an_existing_vm_manager_vm_is_adopted_not_overwritten() {
    let env = setup("lc-adopt").await;
    let io = rbd(&env);
    io.group_create("legacy").unwrap();
    io.create_image("system_legacy", 16 << 20, &ImageOptions::default())
        .unwrap();
    {
        let mut image = io.open_image("system_legacy").unwrap();
        image.write_at(0, b"substation data").unwrap();
        image.metadata_set("vm_name", "legacy").unwrap();
        image.metadata_set("_base_xml", XML).unwrap();
        image.metadata_set("xml", XML).unwrap();
    }
    io.group_image_add("legacy", &io, "system_legacy").unwrap();
    env.vms
        .create(&PostParams::default(), &manifest("legacy", blank_spec(json!({}))))
        .await
        .unwrap();
    wait_phase(&env, "legacy", Phase::Started).await;
    let mut buf = [0u8; 15];
    io.open_image("system_legacy")
        .unwrap()
        .read_at(0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"substation data", "adoption must not overwrite the disk");

    // Once adopted, the data belongs to that object: a new object of the same name (another
    // UID) is refused and touches nothing.
    env.vms
        .patch(
            "legacy",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"deletionPolicy": "Retain"}})),
        )
        .await
        .unwrap();
    env.vms.delete("legacy", &DeleteParams::default()).await.unwrap();
    wait_gone(&env, "legacy").await;
    env.vms
        .create(&PostParams::default(), &manifest("legacy", blank_spec(json!({}))))
        .await
        .unwrap();
    // The owner is gone: the message says what the disks are and how to take them over.
    let refused = wait_reason(&env, "legacy", "StorageReady", "RetainedByDeletedVm").await;
    assert_eq!(refused.status, "False");
    assert!(
        refused.message.contains(&format!("{}/legacy", env.namespace))
            && refused.message.contains("deletionPolicy Retain")
            && refused.message.contains("_k8s_owner_uid")
            && !refused.message.contains("Delete that object"),
        "{}",
        refused.message
    );
    io.open_image("system_legacy")
        .unwrap()
        .read_at(0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"substation data");
    // Done as the message says, the new object adopts the retained disks, data untouched.
    io.open_image("system_legacy")
        .unwrap()
        .metadata_remove("_k8s_owner_uid")
        .unwrap();
    wait_phase(&env, "legacy", Phase::Started).await;
    io.open_image("system_legacy")
        .unwrap()
        .read_at(0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"substation data");
}

/// vm_manager's `VM1` (upper case: no Kubernetes name) with its random UUID only in `xml`, adopted
/// by `vm1` through `spec.storageName`: it runs as domain `<ns>_VM1` with that UUID, and nothing
/// vm_manager reads is rewritten. `storageName` can be neither changed nor removed.
#[tokio::test]
async fn a_vm_manager_vm_is_adopted_under_its_own_name_and_uuid() {
    let env = setup("lc-vmm").await;
    let io = rbd(&env);
    let uuid = uuid::Uuid::new_v4();
    let pool = common::testbed_env("SEAPATH_CEPH_POOL");
    let stored_xml = XML.replace(
        "<devices>",
        &format!(
            "<uuid>{uuid}</uuid><devices><disk type=\"network\" device=\"disk\">\
             <driver name=\"qemu\" type=\"raw\" cache=\"writeback\" /><source protocol=\"rbd\" \
             name=\"{pool}/system_VM1\"><host name=\"hv1\" port=\"6789\" /></source>\
             <target dev=\"vda\" bus=\"virtio\" /></disk>"
        ),
    );
    io.group_create("VM1").unwrap();
    io.create_image("system_VM1", 16 << 20, &ImageOptions::default())
        .unwrap();
    {
        let mut image = io.open_image("system_VM1").unwrap();
        image.write_at(0, b"substation data").unwrap();
        image.metadata_set("vm_name", "VM1").unwrap();
        image.metadata_set("_base_xml", XML).unwrap();
        image.metadata_set("xml", &stored_xml).unwrap();
        image.metadata_set("_disk_bus", "virtio").unwrap();
        image.snap_create("before").unwrap();
    }
    io.group_image_add("VM1", &io, "system_VM1").unwrap();
    let before = io.open_image("system_VM1").unwrap().metadata_list().unwrap();

    let spec = json!({
        "xml": XML, "storageName": "VM1",
        "systemDisk": {"source": {"blank": {}}, "size": "16Mi"}
    });
    env.vms
        .create(&PostParams::default(), &manifest("vm1", spec))
        .await
        .unwrap();
    let vm = wait_phase(&env, "vm1", Phase::Started).await;
    let status = vm.status.unwrap();
    assert_eq!(
        status.domain_uuid,
        Some(uuid.to_string()),
        "the UUID vm_manager gave it"
    );
    assert_eq!(status.domain.unwrap().name, format!("{}_VM1", env.namespace));
    assert_eq!(status.storage.unwrap().group, "VM1");
    let after: std::collections::BTreeMap<String, String> = io
        .open_image("system_VM1")
        .unwrap()
        .metadata_list()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("_k8s_"))
        .collect();
    assert_eq!(after, before, "nothing vm_manager reads was rewritten");
    let mut buf = [0u8; 15];
    io.open_image("system_VM1").unwrap().read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"substation data");

    for patch in [
        json!({"spec": {"storageName": "VM2"}}),
        json!({"spec": {"storageName": null}}),
    ] {
        let refused = env
            .vms
            .patch("vm1", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect_err("storageName is immutable");
        assert!(
            refused.to_string().contains("storageName is immutable"),
            "{refused}"
        );
    }
    let refused = env
        .vms
        .create(
            &PostParams::default(),
            &manifest("vm2", json!({"xml": XML, "storageName": "xml", "systemDisk": {"source": {"blank": {}}, "size": "16Mi"}})),
        )
        .await
        .expect_err("vm_manager refuses the name xml");
    assert!(refused.to_string().contains("may not be 'xml'"), "{refused}");
}

#[tokio::test]
async fn placement_honours_pinned_and_unknown_nodes() {
    let env = setup("lc-place").await;
    let pinned = blank_spec(json!({"placement": {"pinnedNode": env.nodes[1]}}));
    env.vms
        .create(&PostParams::default(), &manifest("pinned", pinned))
        .await
        .unwrap();
    let vm = wait_phase(&env, "pinned", Phase::Started).await;
    assert_eq!(vm.status.unwrap().node.as_deref(), Some(env.nodes[1].as_str()));

    let nowhere = blank_spec(json!({"placement": {"pinnedNode": "no-such-hypervisor"}}));
    env.vms
        .create(&PostParams::default(), &manifest("nowhere", nowhere))
        .await
        .unwrap();
    let scheduled = wait_reason(&env, "nowhere", "Scheduled", "PinnedNodeUnknown").await;
    assert_eq!(scheduled.status, "False");
    assert!(
        scheduled.message.contains("no-such-hypervisor"),
        "{}",
        scheduled.message
    );
    let vm = env.vms.get("nowhere").await.unwrap();
    assert_eq!(phase(&vm), Some(Phase::Starting));

    // Re-pinning moves it: the old node lets go before the new one starts it.
    env.vms
        .patch(
            "pinned",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"placement": {"pinnedNode": env.nodes[0]}}})),
        )
        .await
        .unwrap();
    let moved = wait_for(&env, "pinned", "Started on the new node", |vm| {
        phase(vm) == Some(Phase::Started)
            && vm.status.as_ref().unwrap().node.as_deref() == Some(env.nodes[0].as_str())
    })
    .await;
    assert_eq!(moved.status.unwrap().domain.unwrap().node, env.nodes[0]);
}

#[tokio::test]
async fn a_qcow2_file_is_imported_and_other_paths_are_refused() {
    let env = setup("lc-import").await;
    let dir = common::operator::import_dir();
    let qcow2 = dir.join(format!("{}.qcow2", env.namespace));
    let run = |program: &str, args: &[&str]| {
        let status = std::process::Command::new(program)
            .args(args)
            .status()
            .expect(program);
        assert!(status.success(), "{program} {args:?} failed");
    };
    let path = qcow2.to_str().unwrap();
    run("qemu-img", &["create", "-q", "-f", "qcow2", path, "32M"]);
    run("qemu-io", &["-c", "write -P 0x5a 1M 1M", path]);
    let spec = blank_spec(
        json!({"systemDisk": {"source": {"path": {"path": path, "format": "qcow2"}}, "size": "48Mi"}}),
    );
    env.vms
        .create(&PostParams::default(), &manifest("imported", spec))
        .await
        .unwrap();
    let vm = wait_phase(&env, "imported", Phase::Started).await;
    assert_eq!(
        vm.status.as_ref().unwrap().import,
        None,
        "import progress is cleared once done"
    );
    let image = rbd(&env).open_image("system_imported").unwrap();
    assert_eq!(image.size().unwrap(), 48 << 20);
    let mut buf = vec![0u8; 1 << 20];
    image.read_at(1 << 20, &mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0x5a), "the qcow2 content is in RBD");
    image.read_at(0, &mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0), "unwritten clusters read as zeros");
    std::fs::remove_file(&qcow2).ok();

    let spec =
        blank_spec(json!({"systemDisk": {"source": {"path": {"path": "/etc/shadow", "format": "raw"}}}}));
    env.vms
        .create(&PostParams::default(), &manifest("snoop", spec))
        .await
        .unwrap();
    let stalled = wait_reason(&env, "snoop", "Stalled", "PathNotAllowed").await;
    assert!(stalled.message.contains("/etc/shadow"), "{}", stalled.message);
    assert!(
        !rbd(&env)
            .list_images()
            .unwrap()
            .iter()
            .any(|i| i.contains("snoop"))
    );
}

/// An RBD namespace of this test's pool, made if missing.
fn rbd_namespace(namespace: &str) -> IoCtx {
    let cluster = Cluster::connect(ClusterConfig {
        conf_path: common::testbed_env("CEPH_CONF").into(),
        client_id: std::env::var("SEAPATH_CEPH_CLIENT").unwrap_or_else(|_| "admin".into()),
        ..Default::default()
    })
    .expect("connect to Ceph");
    let pool = common::testbed_env("SEAPATH_CEPH_POOL");
    let root = cluster.io_context(&pool, "").expect("pool");
    if !root.namespace_exists(namespace).expect("namespace exists") {
        root.create_namespace(namespace).expect("create RBD namespace");
    }
    cluster.io_context(&pool, namespace).expect("RBD namespace")
}

#[tokio::test]
async fn a_tenant_cannot_copy_or_clone_another_tenants_disks() {
    let victim = setup("lc-victim").await;
    victim
        .vms
        .create(&PostParams::default(), &manifest("secret", blank_spec(json!({}))))
        .await
        .unwrap();
    wait_phase(&victim, "secret", Phase::Started).await;
    let victim_io = rbd(&victim);
    victim_io
        .open_image("system_secret")
        .unwrap()
        .snap_create("ordinary")
        .unwrap();

    let tenant = setup("lc-tenant").await;
    let copy = blank_spec(
        json!({"systemDisk": {"source": {"rbd": {"namespace": victim.namespace, "image": "system_secret"}}}}),
    );
    let clone = blank_spec(
        json!({"systemDisk": {"source": {"golden": {"namespace": victim.namespace, "image": "system_secret", "snapshot": "ordinary"}}}}),
    );
    for (name, spec, kind) in [("copy", copy, "rbd"), ("clone", clone, "golden")] {
        tenant
            .vms
            .create(&PostParams::default(), &manifest(name, spec))
            .await
            .unwrap();
        let stalled = wait_reason(&tenant, name, "Stalled", "SourceNotShared").await;
        assert_eq!(stalled.status, "True");
        assert!(
            stalled.message.contains(&format!("{kind} source"))
                && stalled
                    .message
                    .contains(&format!("/{}/system_secret", victim.namespace))
                && stalled.message.contains("--shared-image-namespaces"),
            "{}",
            stalled.message
        );
    }
    // Nothing was made on the tenant's side, and the victim can still drop its snapshot.
    let tenant_io = rbd(&tenant);
    assert!(tenant_io.list_images().unwrap().is_empty());
    assert!(tenant_io.group_list().unwrap().is_empty());
    victim_io
        .open_image("system_secret")
        .unwrap()
        .snap_remove("ordinary")
        .unwrap();
}

#[tokio::test]
async fn golden_sources_must_be_shared_and_protected() {
    let env = setup("lc-shared").await;
    let shared = rbd_namespace(common::operator::SHARED_IMAGE_NAMESPACE);
    let image = format!("base{}", &env.namespace[env.namespace.len() - 8..]);
    shared
        .create_image(&image, 16 << 20, &ImageOptions::default())
        .unwrap();
    {
        let mut base = shared.open_image(&image).unwrap();
        base.write_at(0, b"shared").unwrap();
        base.snap_create("loose").unwrap();
        base.snap_create("v1").unwrap();
        base.snap_protect("v1").unwrap();
    }
    let golden = |snap: &str| {
        blank_spec(json!({"systemDisk": {"source": {"golden": {
            "namespace": common::operator::SHARED_IMAGE_NAMESPACE, "image": image, "snapshot": snap
        }}}}))
    };
    env.vms
        .create(&PostParams::default(), &manifest("loose", golden("loose")))
        .await
        .unwrap();
    let refused = wait_reason(&env, "loose", "StorageReady", "SourceNotProtected").await;
    assert!(
        refused.message.contains("rbd snap protect"),
        "{}",
        refused.message
    );
    assert!(
        !rbd(&env)
            .list_images()
            .unwrap()
            .iter()
            .any(|i| i.contains("loose")),
        "no image is left for a refused clone"
    );

    env.vms
        .create(&PostParams::default(), &manifest("layered", golden("v1")))
        .await
        .unwrap();
    wait_phase(&env, "layered", Phase::Started).await;
    let mut buf = [0u8; 6];
    rbd(&env)
        .open_image("system_layered")
        .unwrap()
        .read_at(0, &mut buf)
        .unwrap();
    assert_eq!(&buf, b"shared");
}
