use std::path::PathBuf;

use super::*;
use crate::api::ImageFormat;

fn request(disks: Vec<DiskRequest>) -> VmStorageRequest {
    VmStorageRequest {
        kube_namespace: "prod".into(),
        name: "guest0".into(),
        object_name: "guest0".into(),
        uid: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
        disks,
        base_xml: "<domain/>".into(),
        rendered_xml: "<domain><name>guest0</name></domain>".into(),
        metadata: [("site".to_string(), "north".to_string())].into(),
        internal: [("_stop_timeout".to_string(), "60".to_string())].into(),
        creation_defaults: BTreeMap::new(),
    }
}

fn blank(size: Option<u64>) -> DiskRequest {
    DiskRequest {
        source: ResolvedSource::Blank,
        size_bytes: size,
    }
}

#[test]
fn temp_names_encode_the_owner() {
    let key = uid_key("0F1E2D3C-4b5a-6978-8796-a5b4c3d2e1f0");
    assert_eq!(key, "0f1e2d3c4b5a69788796a5b4c3d2e1f0");
    let tmp = temp_image_name("data_guest0_1", &key);
    assert_eq!(tmp, "tmp_data_guest0_1_0f1e2d3c4b5a69788796a5b4c3d2e1f0");
    assert!(tmp.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    assert!(is_own_temp_image(&tmp, &key));
    assert!(!is_own_temp_image(&tmp, "ffffffffffffffffffffffffffffffff"));
    assert!(!is_own_temp_image("system_guest0", &key));
    assert!(
        !is_own_temp_image(&format!("tmp_{key}"), &key),
        "no final name part"
    );
    let scratch = scratch_file_name(&key, 2);
    assert!(is_own_scratch_file(&scratch, &key));
    assert!(!is_own_scratch_file(&scratch, "abc"));
}

#[test]
fn validation() {
    assert!(validate_request(&request(vec![blank(Some(1 << 20))])).is_ok());
    let err = |r: VmStorageRequest| validate_request(&r).unwrap_err().to_string();
    assert!(err(request(vec![blank(None)])).contains("system disk: a blank disk needs a size"));
    assert!(err(request(vec![])).contains("system disk"));
    let mut r = request(vec![blank(Some(1))]);
    r.name = "guest_0".into();
    assert!(err(r).contains("letters and digits"));
    let mut r = request(vec![blank(Some(1))]);
    r.metadata.insert("xml".into(), "x".into());
    assert!(err(r).contains("reserved"));
    let mut r = request(vec![blank(Some(1))]);
    r.internal.insert("_base_xml".into(), "x".into());
    assert!(err(r).contains("written by the storage layer"));
    let mut r = request(vec![blank(Some(1))]);
    r.internal.insert("stop".into(), "x".into());
    assert!(err(r).contains("must start with '_'"));
    let r = request(vec![
        blank(Some(1)),
        DiskRequest {
            source: ResolvedSource::Path {
                path: PathBuf::from("disk.qcow2"),
                format: ImageFormat::Qcow2,
            },
            size_bytes: None,
        },
    ]);
    assert!(err(r).contains("data disk 0: path 'disk.qcow2' must be absolute"));
    let r = request(vec![DiskRequest {
        source: ResolvedSource::Http {
            url: "ftp://x".into(),
            format: ImageFormat::Raw,
        },
        size_bytes: None,
    }]);
    assert!(err(r).contains("http://"));
    let r = request(vec![DiskRequest {
        source: ResolvedSource::Golden {
            pool: "rbd".into(),
            namespace: String::new(),
            image: "golden".into(),
            snapshot: String::new(),
        },
        size_bytes: None,
    }]);
    assert!(err(r).contains("golden source"));
    assert_eq!(
        validate_request(&request(vec![blank(Some(0))]))
            .unwrap_err()
            .reason(),
        "InvalidSpec"
    );
}

fn facts(name: &str, owner: Option<&str>, vm_name: Option<&str>) -> ImageFacts {
    ImageFacts {
        name: name.into(),
        owner_uid: owner.map(Into::into),
        owner: owner.map(|_| "prod/guest0".to_string()),
        vm_name: vm_name.map(Into::into),
    }
}

#[test]
fn ownership_decisions() {
    let decide = |s: &ExistingState| decide_ownership(s, "guest0", "u1", "rbd/prod");
    // Nothing there: ours to create.
    assert_eq!(
        decide(&ExistingState::default()).unwrap(),
        (Ownership::Ours, vec![])
    );
    // Our own system image.
    let ours = ExistingState {
        system: Some(facts("system_guest0", Some("u1"), Some("guest0"))),
        ..Default::default()
    };
    assert_eq!(decide(&ours).unwrap().0, Ownership::Ours);
    // Another object's.
    let theirs = ExistingState {
        system: Some(facts("system_guest0", Some("u2"), Some("guest0"))),
        ..Default::default()
    };
    let e = decide(&theirs).unwrap_err();
    assert_eq!(e.reason(), "OwnedByAnotherObject");
    assert!(e.to_string().contains("rbd/prod/system_guest0"), "{e}");
    // A vm_manager VM: adopted, its data images in the group claimed.
    let vm_manager = ExistingState {
        system: Some(facts("system_guest0", None, Some("guest0"))),
        others: vec![facts("data_guest0_0", None, None)],
        group_exists: true,
        group_members: vec!["system_guest0".into(), "data_guest0_0".into()],
    };
    assert_eq!(
        decide(&vm_manager).unwrap(),
        (Ownership::Adopt, vec!["data_guest0_0".to_string()])
    );
    // An image named like the system image but of another VM, or of no VM.
    let other_vm = ExistingState {
        system: Some(facts("system_guest0", None, Some("guest1"))),
        ..Default::default()
    };
    assert_eq!(decide(&other_vm).unwrap_err().reason(), "NameConflict");
    let no_vm = ExistingState {
        system: Some(facts("system_guest0", None, None)),
        ..Default::default()
    };
    assert!(
        decide(&no_vm)
            .unwrap_err()
            .to_string()
            .contains("not a SEAPATH VM")
    );
    // A data image of another object while the system image is ours.
    let mixed = ExistingState {
        system: Some(facts("system_guest0", Some("u1"), Some("guest0"))),
        others: vec![facts("data_guest0_0", Some("u2"), None)],
        ..Default::default()
    };
    assert_eq!(decide(&mixed).unwrap_err().reason(), "OwnedByAnotherObject");
    // A stray data image without owner outside the group: not ours to take.
    let stray = ExistingState {
        system: Some(facts("system_guest0", Some("u1"), Some("guest0"))),
        others: vec![facts("data_guest0_0", None, None)],
        ..Default::default()
    };
    assert_eq!(decide(&stray).unwrap_err().reason(), "NameConflict");
    // Our data images left by an interrupted first run (no system image yet): resume.
    let resumed = ExistingState {
        others: vec![facts("data_guest0_0", Some("u1"), None)],
        ..Default::default()
    };
    assert_eq!(decide(&resumed).unwrap(), (Ownership::Ours, vec![]));
    // A group made by someone else holding an image without owner, no system image.
    let foreign_group = ExistingState {
        others: vec![facts("data_guest0_0", None, None)],
        group_exists: true,
        group_members: vec!["data_guest0_0".into()],
        ..Default::default()
    };
    assert_eq!(decide(&foreign_group).unwrap_err().reason(), "NameConflict");
}

#[test]
fn metadata_order_and_diff() {
    let mut req = request(vec![blank(Some(1)), blank(Some(1)), blank(Some(1))]);
    let desired = desired_metadata(&req);
    let keys: Vec<&str> = desired.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "_k8s_owner_vm",
            "_k8s_owner_uid",
            "_k8s_owner",
            "_stop_timeout",
            "site",
            "_base_xml",
            "_additional_disks",
            "xml",
            "vm_name"
        ]
    );
    assert!(desired.contains(&("_additional_disks".into(), "2".into())));
    assert!(desired.contains(&("_k8s_owner".into(), "prod/guest0".into())));

    let current: BTreeMap<String, String> = desired.iter().cloned().collect();
    assert!(plan_metadata(&current, &req).is_empty());

    let mut changed = current.clone();
    changed.insert("xml".into(), "<old/>".into());
    changed.insert("_pacemaker_meta".into(), "{}".into());
    let plan = plan_metadata(&changed, &req);
    assert_eq!(plan.set, vec![("xml".to_string(), req.rendered_xml.clone())]);
    assert!(plan.remove.is_empty(), "unknown keys stay");

    req.disks.truncate(1);
    let plan = plan_metadata(&current, &req);
    assert_eq!(plan.remove, vec!["_additional_disks".to_string()]);
    assert!(plan.set.is_empty());
}

/// vm_manager's `xml` for `vm` with its images on `bus`, as its `_create_xml` writes it.
fn vm_manager_xml(uuid: &str, images: &[&str], bus: &str, monitors: &str) -> String {
    let disks: String = images
        .iter()
        .map(|image| {
            format!(
                "<disk type='network' device='disk'><auth username='libvirt'><secret type='ceph' uuid='s'/></auth>\
                 <source protocol='rbd' name='rbd/{image}'>{monitors}</source><target dev='vda' bus='{bus}'/></disk>"
            )
        })
        .collect();
    format!("<domain><name>VM1</name><devices>{disks}</devices><uuid>{uuid}</uuid></domain>")
}

#[test]
fn adoption_writes_only_what_the_spec_asks_for() {
    const UUID: &str = "5c4f1e0a-3d2b-4c1a-9e8f-7a6b5c4d3e2f";
    const BASE: &str = "<domain><name>t</name></domain>\n";
    let vm_manager_hosts = "<host name='hv1' port='6789'/>";
    let operator_hosts = "<host name='10.0.0.1' port='3300'/>";
    let images = ["system_VM1", "data_VM1_0"];
    // What vm_manager's create left: no _stop_timeout (30 s), bus virtio for all.
    let stored: BTreeMap<String, String> = [
        ("vm_name", "VM1".to_string()),
        ("_base_xml", BASE.to_string()),
        ("xml", vm_manager_xml(UUID, &images, "virtio", vm_manager_hosts)),
        ("_disk_bus", "virtio".to_string()),
        ("_additional_disks", "1".to_string()),
        ("_pacemaker_meta", "{}".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let adopting = |edit: &dyn Fn(&mut VmStorageRequest)| {
        let mut req = VmStorageRequest {
            name: "VM1".into(),
            base_xml: BASE.trim().into(),
            rendered_xml: adopting_rendered(UUID, &images, operator_hosts),
            metadata: BTreeMap::new(),
            internal: [("_disk_bus".to_string(), "virtio".to_string())].into(),
            creation_defaults: [("_stop_timeout".to_string(), "60".to_string())].into(),
            ..request(vec![blank(None), blank(None)])
        };
        edit(&mut req);
        let plan = plan_metadata(&stored, &req);
        let mut keys: Vec<String> = plan.set.into_iter().map(|(k, _)| k).collect();
        keys.extend(plan.remove.into_iter().map(|k| format!("-{k}")));
        keys
    };
    let owner_keys = ["_k8s_owner_vm", "_k8s_owner_uid", "_k8s_owner"];
    let with_owner =
        |extra: &[&str]| -> Vec<String> { owner_keys.iter().chain(extra).map(|k| k.to_string()).collect() };
    type Case<'a> = (&'a str, &'a dyn Fn(&mut VmStorageRequest), Vec<String>);
    let table: [Case; 8] = [
        (
            "the spec as vm_manager has it: owner keys only",
            &|_| {},
            with_owner(&[]),
        ),
        (
            "a stop timeout the spec sets",
            &|r| {
                r.internal.insert("_stop_timeout".into(), "45".into());
            },
            with_owner(&["_stop_timeout"]),
        ),
        (
            "vm_manager's default stop timeout, set explicitly: nothing changes for it",
            &|r| {
                r.internal.insert("_stop_timeout".into(), "30".into());
            },
            with_owner(&[]),
        ),
        (
            "a priority of 0, vm_manager's default",
            &|r| {
                r.internal.insert("_priority".into(), "0".into());
            },
            with_owner(&[]),
        ),
        (
            "a pinned host",
            &|r| {
                r.internal.insert("_pinned_host".into(), "hv1".into());
            },
            with_owner(&["_pinned_host"]),
        ),
        (
            "another base XML: both XMLs",
            &|r| r.base_xml = "<domain><name>t</name><vcpu>2</vcpu></domain>".into(),
            with_owner(&["_base_xml", "xml"]),
        ),
        (
            "a data disk on sata: the XML",
            &|r| {
                let at = r.rendered_xml.rfind("bus='virtio'").unwrap();
                r.rendered_xml.replace_range(at..at + 12, "bus='sata'");
            },
            with_owner(&["xml"]),
        ),
        (
            "user metadata",
            &|r| {
                r.metadata.insert("site".into(), "north".into());
            },
            with_owner(&["site"]),
        ),
    ];
    for (case, edit, expected) in table {
        assert_eq!(adopting(edit), expected, "{case}");
    }
    // Another UUID in the base XML, another image set: the XML is the operator's to write.
    let other_uuid = vm_manager_xml(
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        &images,
        "virtio",
        operator_hosts,
    );
    assert_eq!(
        adopting(&|r| r.rendered_xml = other_uuid.clone()),
        with_owner(&["xml"])
    );
    let one_disk = vm_manager_xml(UUID, &images[..1], "virtio", operator_hosts);
    assert_eq!(
        adopting(&|r| {
            r.rendered_xml = one_disk.clone();
            r.disks.truncate(1);
        }),
        with_owner(&["xml", "-_additional_disks"])
    );
    // An XML the operator rendered (it carries its marker) is refreshed like any of its own.
    let mut ours = stored.clone();
    let rendered = adopting_rendered(UUID, &images, operator_hosts);
    ours.insert("xml".into(), rendered.replace("10.0.0.1", "10.0.0.9"));
    let req = VmStorageRequest {
        name: "VM1".into(),
        base_xml: BASE.into(),
        rendered_xml: rendered,
        internal: [("_disk_bus".to_string(), "virtio".to_string())].into(),
        metadata: BTreeMap::new(),
        ..request(vec![blank(None), blank(None)])
    };
    assert!(!keep_stored_xml(&ours, &req));
    assert!(plan_metadata(&ours, &req).set.iter().any(|(k, _)| k == "xml"));
    // Creation writes the operator's defaults; a set value wins over them.
    let mut req = request(vec![blank(None)]);
    req.internal.clear();
    req.creation_defaults.insert("_stop_timeout".into(), "60".into());
    assert!(desired_metadata(&req).contains(&("_stop_timeout".into(), "60".into())));
    req.internal.insert("_stop_timeout".into(), "10".into());
    let desired = desired_metadata(&req);
    assert!(desired.contains(&("_stop_timeout".into(), "10".into())));
    assert!(!desired.contains(&("_stop_timeout".into(), "60".into())));
}

fn adopting_rendered(uuid: &str, images: &[&str], hosts: &str) -> String {
    vm_manager_xml(uuid, images, "virtio", hosts).replace(
        "<devices>",
        "<metadata><seapath:owner xmlns:seapath='https://seapath.lfenergy.org/operator/v1' namespace='ns' name='vm1' uid='u'/></metadata><devices>",
    )
}

#[test]
fn inherited_metadata_is_dropped_but_conf() {
    let current: BTreeMap<String, String> = [
        ("conf_rbd_cache".to_string(), "false".to_string()),
        ("vm_name".to_string(), "src".to_string()),
        ("_k8s_owner_uid".to_string(), "u0".to_string()),
    ]
    .into();
    assert_eq!(inherited_keys_to_strip(&current), ["_k8s_owner_uid", "vm_name"]);
}

#[test]
fn sizes_only_grow() {
    assert_eq!(size_action(None, 10), SizeAction::Keep);
    assert_eq!(size_action(Some(10), 10), SizeAction::Keep);
    assert_eq!(size_action(Some(20), 10), SizeAction::Grow(20));
    assert_eq!(
        size_action(Some(5), 10),
        SizeAction::TooSmall {
            requested: 5,
            actual: 10
        }
    );
    assert!(too_small_warning("system_g", 1 << 20, 2 << 20).contains("never shrunk"));
}

const DF_WITH_MGR: &str = r#"{"stats":{"total_bytes":32212254720,"total_avail_bytes":30064771072,
 "total_used_bytes":2147483648,"total_used_raw_bytes":2147483648,"total_used_raw_ratio":0.066,
 "num_osds":3,"num_per_pool_osds":3,"num_per_pool_omap_osds":3},"stats_by_class":{},
 "pools":[{"name":"device_health_metrics","id":1,"stats":{"stored":0,"objects":0,"kb_used":0,
 "bytes_used":0,"percent_used":0,"max_avail":10000000000}},
 {"name":"rbd","id":2,"stats":{"stored":1073741824,"objects":260,"kb_used":3145728,
 "bytes_used":3221225472,"percent_used":0.1,"max_avail":9000000000}}]}"#;

const DF_WITHOUT_MGR: &str = r#"{"stats":{"total_bytes":0,"total_avail_bytes":0,"total_used_bytes":0,
 "total_used_raw_bytes":0,"total_used_raw_ratio":0,"num_osds":0,"num_per_pool_osds":0,
 "num_per_pool_omap_osds":0},"stats_by_class":{},"pools":[]}"#;

fn osd_dump(quota: u64) -> String {
    format!(
        r#"{{"epoch":9,"pools":[{{"pool":1,"pool_name":"other","quota_max_bytes":5}},
        {{"pool":2,"pool_name":"rbd","quota_max_bytes":{quota}}}]}}"#
    )
}

#[test]
fn pool_space() {
    let avail = |df: &str, quota: u64| pool_available_bytes(df.as_bytes(), osd_dump(quota).as_bytes(), "rbd");
    assert_eq!(avail(DF_WITH_MGR, 0), Some(9_000_000_000));
    assert_eq!(
        avail(DF_WITH_MGR, 2 << 30),
        Some((2 << 30) - (1 << 30)),
        "quota minus stored"
    );
    assert_eq!(avail(DF_WITHOUT_MGR, 0), None, "no mgr: unknown, not zero");
    assert_eq!(avail(DF_WITHOUT_MGR, 64 << 20), Some(64 << 20));
    assert_eq!(pool_available_bytes(b"garbage", b"", "rbd"), None);

    assert!(check_pool_space("rbd", 10, None, "x").is_ok());
    assert!(check_pool_space("rbd", 10, Some(10), "x").is_ok());
    let e = check_pool_space("rbd", 64 << 20, Some(32 << 20), "importing file /a").unwrap_err();
    assert_eq!(e.reason(), "PoolFull");
    assert!(e.is_retryable());
    assert!(
        e.to_string().contains(
            "importing file /a needs up to 64 MiB (67108864 bytes) but the pool can take only 32 MiB"
        ),
        "{e}"
    );
}

#[test]
fn mon_dump() {
    // The test bed's mon (msgr2 only).
    let testbed = br#"{"epoch":1,"mons":[{"rank":0,"name":"a","public_addrs":{"addrvec":
      [{"type":"v2","addr":"127.0.0.1:23880","nonce":0}]},"addr":"127.0.0.1:23880/0",
      "public_addr":"127.0.0.1:23880/0"}],"quorum":[0]}"#;
    assert_eq!(
        parse_mon_dump(testbed).unwrap(),
        [("127.0.0.1".to_string(), 23880)]
    );
    // Both protocols: msgr2 first; IPv6; a legacy map with only `addr`.
    let multi = br#"{"mons":[
      {"name":"a","public_addrs":{"addrvec":[{"type":"v1","addr":"10.0.0.1:6789","nonce":0},
        {"type":"v2","addr":"10.0.0.1:3300","nonce":0}]}},
      {"name":"b","public_addrs":{"addrvec":[{"type":"v1","addr":"[fd00::2]:6789","nonce":0}]}},
      {"name":"c","addr":"10.0.0.3:6789/0"}]}"#;
    assert_eq!(
        parse_mon_dump(multi).unwrap(),
        [
            ("10.0.0.1".to_string(), 3300),
            ("fd00::2".to_string(), 6789),
            ("10.0.0.3".to_string(), 6789)
        ]
    );
    assert!(parse_mon_dump(b"{}").is_err());
    assert!(parse_mon_dump(br#"{"mons":[{"name":"x","addr":"nohost"}]}"#).is_err());
}

#[test]
fn qemu_img_output() {
    let info = br#"{"virtual-size": 67108864, "filename": "/tmp/a.qcow2", "cluster-size": 65536,
      "format": "qcow2", "actual-size": 2363392, "format-specific": {"type": "qcow2",
      "data": {"compat": "1.1"}}, "dirty-flag": false}"#;
    assert_eq!(
        parse_qemu_img_info(info).unwrap(),
        QemuImageInfo {
            format: "qcow2".into(),
            virtual_size: 64 << 20,
            actual_size: Some(2363392),
            backing_file: None,
            data_file: None,
        }
    );
    let overlay = br#"{"virtual-size": 1024, "format": "qcow2", "backing-filename": "/etc/shadow",
      "format-specific": {"type": "qcow2", "data": {"data-file": "/x"}}}"#;
    let info = parse_qemu_img_info(overlay).unwrap();
    assert_eq!(info.backing_file.as_deref(), Some("/etc/shadow"));
    assert_eq!(info.data_file.as_deref(), Some("/x"));
    assert!(parse_qemu_img_info(b"{}").is_err());

    assert_eq!(
        parse_qemu_progress("    (0.00/100%)\r    (50.00/100%)\r"),
        Some(50.0)
    );
    assert_eq!(parse_qemu_progress("    (100.00/100%)\r\n"), Some(100.0));
    assert_eq!(parse_qemu_progress("nothing"), None);
}

#[test]
fn urls_lose_their_credentials() {
    assert_eq!(redact_url("https://u:p@host/a@b"), "https://***@host/a@b");
    assert_eq!(redact_url("http://host:80/x?u=a@b"), "http://host:80/x?u=a@b");
    assert_eq!(redact_url("not a url"), "not a url");
}

#[test]
fn byte_checks() {
    assert!(is_all_zero(&[]));
    assert!(is_all_zero(&[0; 4099]));
    let mut buf = vec![0u8; 4099];
    buf[4098] = 1;
    assert!(!is_all_zero(&buf));
    buf[4098] = 0;
    buf[17] = 1;
    assert!(!is_all_zero(&buf));
    assert!(looks_like_qcow2(b"QFI\xfb\0\0\0\x03"));
    assert!(!looks_like_qcow2(b"<htm"));
    assert_eq!(parent_spec("rbd", "", "golden", "v1"), "rbd/golden@v1");
    assert_eq!(parent_spec("rbd", "lab", "golden", "v1"), "rbd/lab/golden@v1");
}

#[test]
fn the_stored_uuid_is_kept_for_this_object_or_an_adoptable_vm() {
    let xml = "<domain><name>VM1</name><uuid>5c4f1e0a-3d2b-4c1a-9e8f-7a6b5c4d3e2f</uuid></domain>";
    let uuid = uuid::Uuid::parse_str("5c4f1e0a-3d2b-4c1a-9e8f-7a6b5c4d3e2f").unwrap();
    let meta = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let table = [
        (
            "vm_manager's VM",
            meta(&[("vm_name", "VM1"), ("xml", xml)]),
            Some(uuid),
        ),
        (
            "this object's",
            meta(&[("vm_name", "VM1"), ("xml", xml), ("_k8s_owner_uid", "u1")]),
            Some(uuid),
        ),
        (
            "another object's",
            meta(&[("vm_name", "VM1"), ("xml", xml), ("_k8s_owner_uid", "u2")]),
            None,
        ),
        (
            "another VM's name",
            meta(&[("vm_name", "VM2"), ("xml", xml)]),
            None,
        ),
        ("no system image", meta(&[]), None),
        (
            "an xml without uuid",
            meta(&[("vm_name", "VM1"), ("xml", "<domain><name>VM1</name></domain>")]),
            None,
        ),
        (
            "an unreadable xml",
            meta(&[("vm_name", "VM1"), ("xml", "<domain")]),
            None,
        ),
    ];
    for (case, metadata, expected) in table {
        assert_eq!(stored_uuid(&metadata, "VM1", "u1"), expected, "{case}");
    }
}

#[test]
fn owner_keys_copied_by_a_clone_own_nothing() {
    let meta = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // vm_manager's clone of the operator's opvm1 into opclone: every key deep-copied, then
    // vm_name, xml and _base_xml rewritten on the copy's system image.
    let copied = [
        ("_k8s_owner_uid", "u-source"),
        ("_k8s_owner", "prod/opvm1"),
        ("_k8s_owner_vm", "opvm1"),
    ];
    let mut system = meta(&copied);
    system.insert("vm_name".into(), "opclone".into());
    let state = ExistingState {
        system: Some(ImageFacts::of_vm("system_opclone", "opclone", &system)),
        others: vec![ImageFacts::of_vm("data_opclone_0", "opclone", &meta(&copied))],
        group_exists: true,
        group_members: vec!["system_opclone".into(), "data_opclone_0".into()],
    };
    assert_eq!(
        decide_ownership(&state, "opclone", "u-new", "rbd").unwrap(),
        (Ownership::Adopt, vec!["data_opclone_0".to_string()]),
        "the clone is adoptable, its data disk with it"
    );
    // The source itself stays its owner's.
    let mut source = meta(&copied);
    source.insert("vm_name".into(), "opvm1".into());
    let state = ExistingState {
        system: Some(ImageFacts::of_vm("system_opvm1", "opvm1", &source)),
        ..Default::default()
    };
    let e = decide_ownership(&state, "opvm1", "u-new", "rbd").unwrap_err();
    assert_eq!(e.reason(), "OwnedByAnotherObject");
    // Once adopted, the clone is the new object's: a third object is refused.
    let mut adopted = system.clone();
    adopted.extend(meta(&[
        ("_k8s_owner_uid", "u-new"),
        ("_k8s_owner", "prod/opclone"),
        ("_k8s_owner_vm", "opclone"),
    ]));
    let state = ExistingState {
        system: Some(ImageFacts::of_vm("system_opclone", "opclone", &adopted)),
        ..Default::default()
    };
    assert_eq!(
        decide_ownership(&state, "opclone", "u-new", "rbd").unwrap().0,
        Ownership::Ours
    );
    let e = decide_ownership(&state, "opclone", "u-third", "rbd").unwrap_err();
    assert_eq!(e.reason(), "OwnedByAnotherObject");
}
