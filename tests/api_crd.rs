//! The VirtualMachine CRD on the real kube-apiserver: round trip, and the validation that makes
//! the API server refuse bad manifests with a readable message.

mod common;

use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::Status;
use seapath_operator::api::{
    DeletionPolicy, DesiredState, Disk, DiskBus, DiskSource, GoldenSource, HttpSource, Phase, VirtualMachine,
    VirtualMachineSpec, VirtualMachineStatus,
};
use serde_json::json;

const BASE_XML: &str =
    "<domain type='qemu'><name>x</name><memory unit='MiB'>128</memory><os><type>hvm</type></os></domain>";

fn golden_disk() -> Disk {
    Disk {
        source: DiskSource {
            golden: Some(GoldenSource {
                pool: None,
                namespace: None,
                image: "debian12".into(),
                snapshot: "v1".into(),
            }),
            ..empty_source()
        },
        size: Some("2Gi".into()),
        bus: DiskBus::Virtio,
    }
}

fn empty_source() -> DiskSource {
    DiskSource {
        http: None,
        path: None,
        rbd: None,
        vm: None,
        golden: None,
        blank: None,
    }
}

fn vm(name: &str) -> VirtualMachine {
    VirtualMachine::new(
        name,
        VirtualMachineSpec {
            state: DesiredState::Started,
            xml: BASE_XML.into(),
            system_disk: golden_disk(),
            data_disks: vec![],
            metadata: [("site".to_string(), "substation1".to_string())].into(),
            placement: None,
            migration: None,
            stop_timeout_seconds: Some(30),
            storage_name: None,
            deletion_policy: DeletionPolicy::Delete,
        },
    )
}

/// The API server's rejection message; panics if the request was accepted.
fn rejection<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Status {
    match result {
        Err(kube::Error::Api(response)) => *response,
        other => panic!("expected the API server to refuse the request, got {other:?}"),
    }
}

async fn setup() -> Api<VirtualMachine> {
    let client = common::admin_client().await;
    common::install_crds(&client).await;
    let ns = common::fresh_namespace(&client, "api").await;
    Api::namespaced(client, &ns)
}

#[tokio::test]
async fn virtual_machine_round_trips_through_the_api_server() {
    let vms = setup().await;
    let created = vms
        .create(&PostParams::default(), &vm("guest0"))
        .await
        .expect("create");
    assert_eq!(created.spec, vm("guest0").spec);

    let status = VirtualMachineStatus {
        phase: Some(Phase::Disabled),
        observed_generation: Some(1),
        ..Default::default()
    };
    vms.patch_status(
        "guest0",
        &PatchParams::apply("tests").force(),
        &Patch::Apply(json!({"apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine", "status": status})),
    )
    .await
    .expect("status patch");
    let read = vms.get("guest0").await.expect("get");
    assert_eq!(read.spec, vm("guest0").spec);
    assert_eq!(read.status.unwrap().phase, Some(Phase::Disabled));

    // Defaults are filled in by the API server from the schema.
    let minimal = json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "guest1"},
        "spec": {"xml": BASE_XML, "systemDisk": {"source": {"http": {"url": "http://127.0.0.1/disk.qcow2"}}}}
    });
    let created: VirtualMachine = vms
        .create(&PostParams::default(), &serde_json::from_value(minimal).unwrap())
        .await
        .expect("create minimal");
    assert_eq!(created.spec.state, DesiredState::Started);
    assert_eq!(created.spec.stop_timeout_seconds, None);
    assert_eq!(created.spec.stop_timeout(), std::time::Duration::from_secs(60));
    assert_eq!(created.spec.deletion_policy, DeletionPolicy::Delete);
}

#[tokio::test]
async fn names_ceph_cannot_carry_are_refused() {
    let vms = setup().await;
    let err = rejection(vms.create(&PostParams::default(), &vm("guest-0")).await);
    assert_eq!(err.code, 422, "{err:?}");
    assert!(
        err.message
            .contains("may contain only lowercase letters and digits"),
        "{}",
        err.message
    );

    let long = "a".repeat(41);
    let err = rejection(vms.create(&PostParams::default(), &vm(&long)).await);
    assert!(err.message.contains("at most 40 characters"), "{}", err.message);
}

#[tokio::test]
async fn xml_and_metadata_are_immutable() {
    let vms = setup().await;
    vms.create(&PostParams::default(), &vm("guest0"))
        .await
        .expect("create");

    let err = rejection(
        vms.patch(
            "guest0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"xml": "<domain/>"}})),
        )
        .await,
    );
    assert!(err.message.contains("spec.xml is immutable"), "{}", err.message);

    let err = rejection(
        vms.patch(
            "guest0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"metadata": {"site": "other"}}})),
        )
        .await,
    );
    assert!(
        err.message.contains("spec.metadata is immutable"),
        "{}",
        err.message
    );

    // Removing the metadata and setting other keys afterwards is the same change in two steps.
    let err = rejection(
        vms.patch(
            "guest0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"metadata": null}})),
        )
        .await,
    );
    assert!(
        err.message.contains("spec.metadata is immutable"),
        "{}",
        err.message
    );

    // Disk sources too, and the set of data disks.
    let err = rejection(
        vms.patch(
            "guest0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"systemDisk": {"source": {"golden": null, "blank": {}}}}})),
        )
        .await,
    );
    assert!(
        err.message.contains("disk sources are immutable"),
        "{}",
        err.message
    );
    let err = rejection(
        vms.patch(
            "guest0",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dataDisks": [{"source": {"blank": {}}, "size": "1Gi"}]}})),
        )
        .await,
    );
    assert!(
        err.message.contains("data disks cannot be added"),
        "{}",
        err.message
    );
    // A disk may grow.
    vms.patch(
        "guest0",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"systemDisk": {"size": "4Gi"}}})),
    )
    .await
    .expect("growing a disk is accepted");

    // Desired state is not immutable: moving between states is the point.
    vms.patch(
        "guest0",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"state": "Stopped"}})),
    )
    .await
    .expect("state change accepted");

    // A VM created without metadata cannot get some later either.
    let mut bare = vm("guest1");
    bare.spec.metadata.clear();
    vms.create(&PostParams::default(), &bare).await.expect("create");
    let err = rejection(
        vms.patch(
            "guest1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"metadata": {"site": "x"}}})),
        )
        .await,
    );
    assert!(
        err.message.contains("spec.metadata is immutable"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_disk_with_two_sources_is_refused() {
    let vms = setup().await;
    let mut two_sources = vm("guest0");
    two_sources.spec.system_disk.source.http = Some(HttpSource {
        url: "https://example.invalid/disk.qcow2".into(),
        format: Default::default(),
    });
    let err = rejection(vms.create(&PostParams::default(), &two_sources).await);
    assert!(
        err.message
            .contains("exactly one of http, path, rbd, vm, golden or blank"),
        "{}",
        err.message
    );

    let mut no_source = vm("guest1");
    no_source.spec.system_disk.source = empty_source();
    let err = rejection(vms.create(&PostParams::default(), &no_source).await);
    assert!(err.message.contains("exactly one of"), "{}", err.message);
}

#[tokio::test]
async fn other_bad_fields_get_readable_messages() {
    let vms = setup().await;
    let mut reserved_key = vm("guest0");
    reserved_key.spec.metadata.insert("xml".into(), "x".into());
    let err = rejection(vms.create(&PostParams::default(), &reserved_key).await);
    assert!(err.message.contains("reserved key 'xml'"), "{}", err.message);

    let mut bad_size = vm("guest1");
    bad_size.spec.system_disk.size = Some("2 gigabytes".into());
    let err = rejection(vms.create(&PostParams::default(), &bad_size).await);
    assert!(
        err.message.contains("size must be a whole number of bytes"),
        "{}",
        err.message
    );

    // Raw manifests, as kubectl would send them: values the Rust types could not even hold.
    let raw = raw_api(&vms);
    let bad_state = json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "guest2"},
        "spec": {"xml": BASE_XML, "state": "Running", "systemDisk": {"source": {"blank": {}}, "size": "1Gi"}}
    });
    let err = rejection(
        raw.create(
            &PostParams::default(),
            &serde_json::from_value(bad_state).unwrap(),
        )
        .await,
    );
    assert!(
        err.message.contains("spec.state") && err.message.contains("Started"),
        "{}",
        err.message
    );

    let blank_without_size = json!({
        "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
        "metadata": {"name": "guest3"},
        "spec": {"xml": BASE_XML, "systemDisk": {"source": {"blank": {}}}}
    });
    let err = rejection(
        raw.create(
            &PostParams::default(),
            &serde_json::from_value(blank_without_size).unwrap(),
        )
        .await,
    );
    assert!(
        err.message.contains("a blank disk needs a size"),
        "{}",
        err.message
    );
}

fn raw_api(typed: &Api<VirtualMachine>) -> Api<DynamicObject> {
    let resource = ApiResource::erase::<VirtualMachine>(&());
    Api::namespaced_with(typed.clone().into_client(), typed.namespace().unwrap(), &resource)
}

/// Every refusal by a CEL rule names a field and says the rule's message: no "<nil>" field, no
/// evaluation error about a missing key. Raw manifests, as kubectl sends them.
#[tokio::test]
async fn cel_refusals_name_a_field_and_never_show_an_evaluation_error() {
    let vms = setup().await;
    let client = vms.clone().into_client();
    let namespace = vms.namespace().unwrap().to_owned();
    let api = |kind: &str, plural: &str| -> Api<DynamicObject> {
        let gvk = kube::core::GroupVersionKind::gvk("seapath.lfenergy.org", "v1alpha1", kind);
        Api::namespaced_with(
            client.clone(),
            &namespace,
            &ApiResource::from_gvk_with_plural(&gvk, plural),
        )
    };
    let manifest = |kind: &str, name: &str, spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": kind,
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap()
    };
    let refused = |status: Status, field: &str, message: &str| {
        let text = status.message;
        assert!(
            text.contains(&format!("{field}: Invalid value")) && text.contains(message),
            "expected '{field}: Invalid value ... {message}', got: {text}"
        );
        assert!(
            !text.contains("<nil>") && !text.contains("no such key") && !text.contains("evaluating rule"),
            "{text}"
        );
    };
    let create = |api: Api<DynamicObject>, object: DynamicObject| async move {
        rejection(api.create(&PostParams::default(), &object).await)
    };

    let schedules = api(
        "VirtualMachineSnapshotSchedule",
        "virtualmachinesnapshotschedules",
    );
    refused(
        create(
            schedules.clone(),
            manifest(
                "VirtualMachineSnapshotSchedule",
                "novms",
                json!({"retention": {"keepLast": 1}}),
            ),
        )
        .await,
        "spec",
        "select VMs with vmNames or selector",
    );
    refused(
        create(
            schedules.clone(),
            manifest(
                "VirtualMachineSnapshotSchedule",
                "nothing",
                json!({"vmNames": ["a"]}),
            ),
        )
        .await,
        "spec",
        "a schedule needs spec.schedule, spec.retention, or both",
    );
    refused(
        create(
            schedules,
            manifest(
                "VirtualMachineSnapshotSchedule",
                &"s".repeat(41),
                json!({"vmNames": ["a"], "schedule": "@daily"}),
            ),
        )
        .await,
        "metadata",
        "a schedule name may be at most 40 characters long",
    );

    let vm_api = api("VirtualMachine", "virtualmachines");
    for (name, rule) in [
        ("norule", json!({})),
        (
            "tworules",
            json!({"vms": ["a"], "selector": {"matchLabels": {"role": "x"}}}),
        ),
    ] {
        refused(
            create(
                vm_api.clone(),
                manifest(
                    "VirtualMachine",
                    name,
                    json!({"xml": BASE_XML, "systemDisk": {"source": {"blank": {}}, "size": "1Gi"},
                           "placement": {"antiAffinity": [rule]}}),
                ),
            )
            .await,
            "spec.placement.antiAffinity[0]",
            "a placement rule selects VMs with vms or selector, exactly one of them",
        );
    }

    let restores = api("VirtualMachineRestore", "virtualmachinerestores");
    refused(
        create(
            restores.clone(),
            manifest(
                "VirtualMachineRestore",
                "same",
                json!({"vmName": "a", "snapshot": "s", "target": {"name": "a"}}),
            ),
        )
        .await,
        "spec.target.name",
        "spec.target.name must differ from spec.vmName",
    );
    restores
        .create(
            &PostParams::default(),
            &manifest(
                "VirtualMachineRestore",
                "fixed",
                json!({"vmName": "a", "snapshot": "s"}),
            ),
        )
        .await
        .expect("a valid restore");
    let changed = restores
        .patch(
            "fixed",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"snapshot": "t"}})),
        )
        .await;
    refused(
        rejection(changed),
        "spec",
        "a VirtualMachineRestore's spec is immutable",
    );

    let snapshots = api("VirtualMachineSnapshot", "virtualmachinesnapshots");
    refused(
        create(
            snapshots,
            manifest("VirtualMachineSnapshot", "with-dash", json!({"vmName": "a"})),
        )
        .await,
        "metadata",
        "the object name names the RBD snapshot",
    );

    let mut dashed = vm("guest-1");
    dashed.metadata.namespace = None;
    refused(
        rejection(vms.create(&PostParams::default(), &dashed).await),
        "metadata",
        "a VirtualMachine name may contain only lowercase letters and digits",
    );
}
