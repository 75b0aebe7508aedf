//! SEAPATH's guest template against the device policy: every feature it has is accepted under
//! the `seapath` profile and under exactly the allowances it needs, and refused by default with
//! a message naming the setting. The fixtures are the template rendered by
//! `testdata/seapath/render.py` (see there for where the template comes from). Also the
//! allowances' own rules: globs, paths, PCI addresses, what a cluster admin may write.

use super::allowances::{Allowances, is_normal_absolute_path, pci_address};
use super::*;

/// The rendered template, one variant per feature (`all`: every feature at once).
const FIXTURES: &[(&str, &str)] = &[
    ("minimal", include_str!("testdata/seapath/guest-minimal.xml")),
    ("rt", include_str!("testdata/seapath/guest-rt.xml")),
    ("isolated", include_str!("testdata/seapath/guest-isolated.xml")),
    ("dpdk", include_str!("testdata/seapath/guest-dpdk.xml")),
    ("ovs", include_str!("testdata/seapath/guest-ovs.xml")),
    ("bridges", include_str!("testdata/seapath/guest-bridges.xml")),
    ("direct", include_str!("testdata/seapath/guest-direct.xml")),
    ("sriov", include_str!("testdata/seapath/guest-sriov.xml")),
    ("pci", include_str!("testdata/seapath/guest-pci.xml")),
    (
        "graphic-console",
        include_str!("testdata/seapath/guest-graphic-console.xml"),
    ),
    (
        "memballoon",
        include_str!("testdata/seapath/guest-memballoon.xml"),
    ),
    ("all", include_str!("testdata/seapath/guest-all.xml")),
];

/// A feature of the template: its fixture, what the default policy refuses (setting, the
/// element's start as written in the fixture), and the device policy entry allowing exactly that.
type Feature = (
    &'static str,
    &'static [(&'static str, &'static str)],
    &'static str,
);

#[rustfmt::skip]
const FEATURES: &[Feature] = &[
    ("minimal", &[], "{}"),
    ("rt", &[], "{}"),
    ("isolated", &[], "{}"),
    ("graphic-console", &[], "{}"),
    ("memballoon", &[], "{}"),
    ("dpdk", &[("hugepages", "<hugepages>"), ("vhostUserDirs", "<interface type='vhostuser'>")],
        r#"{"hugepages": true, "vhostUserDirs": ["/var/run/openvswitch/vm-sockets"]}"#),
    ("ovs", &[("tapDevices", r#"<interface type="ethernet">"#)], r#"{"tapDevices": ["tap-*"]}"#),
    ("bridges", &[("bridges", r#"<interface type="bridge">"#)], r#"{"bridges": ["br0"]}"#),
    ("direct", &[("directDevices", r#"<interface type="direct""#)], r#"{"directDevices": ["enp3s0"]}"#),
    ("sriov", &[("networks", r#"<interface type="network">"#)], r#"{"networks": ["sriov-*"]}"#),
    ("pci", &[("pciDevices", r#"<hostdev mode="subsystem" type="pci""#)], r#"{"pciDevices": ["0000:3b:00.*"]}"#),
];

fn fixture(name: &str) -> &'static str {
    FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, xml)| *xml)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

/// The 1-based line of the first line of `xml` containing `needle`.
fn line_of(xml: &str, needle: &str) -> usize {
    xml.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle} not in fixture"))
        + 1
}

fn policy_from(spec: &str) -> DevicePolicy {
    let spec: AllowanceSpec = serde_json::from_str(spec).unwrap();
    DevicePolicy {
        allowances: spec.compile().unwrap(),
        ..DevicePolicy::default()
    }
}

fn seapath() -> DevicePolicy {
    DevicePolicy::with_profile(Profile::Seapath)
}

fn disks() -> Vec<DiskSpec> {
    vec![DiskSpec {
        pool: "rbd".into(),
        namespace: None,
        image: "system_guest0".into(),
        bus: DiskBus::Virtio,
    }]
}

#[test]
fn every_variant_of_the_template_renders_under_the_seapath_profile() {
    let ceph = CephAccess {
        monitors: vec![],
        auth: None,
    };
    for (name, xml) in FIXTURES {
        let summary = validate_base_xml(xml, &seapath()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(summary.uuid.is_some(), "{name}");
        let rendered = render_domain_xml(xml, "guest0", uuid::Uuid::nil(), &disks(), &ceph, &seapath())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            rendered
                .xml
                .contains("<emulator>/usr/bin/qemu-system-x86_64</emulator>"),
            "{name}"
        );
    }
}

#[test]
fn the_fixtures_have_the_features_they_are_named_after() {
    for (name, needle) in [
        ("rt", "<partition>/machine/rt</partition>"),
        ("rt", r#"scheduler="fifo""#),
        ("isolated", "<partition>/machine/nort</partition>"),
        ("isolated", "<vcpupin"),
        ("graphic-console", r#"<graphics type="vnc""#),
        ("memballoon", r#"<memballoon model="virtio">"#),
        ("dpdk", "<page size=\"1\" unit=\"G\"/>"),
        ("dpdk", "/var/run/openvswitch/vm-sockets/dpdkvhostuser_guest0p0"),
        ("ovs", r#"<target dev="tap-guest0" managed="no"/>"#),
        ("bridges", "<virtualport type='openvswitch'/>"),
        ("direct", r#"<source dev="enp3s0""#),
        ("sriov", r#"<source network="sriov-net0" />"#),
        (
            "pci",
            r#"<address domain="0x0000" bus="0x3b" slot="0x00" function="0x1"/>"#,
        ),
    ] {
        assert!(fixture(name).contains(needle), "{name} lacks {needle}");
    }
    for (name, _) in FIXTURES {
        assert!(
            fixture(name).contains("<emulator>/usr/bin/qemu-system-x86_64</emulator>"),
            "{name}"
        );
    }
}

#[test]
fn each_feature_is_refused_by_default_naming_its_setting_and_allowed_by_exactly_it() {
    for &(name, refused, spec) in FEATURES {
        let xml = fixture(name);
        let violations = device_policy_violations(xml, &DevicePolicy::default()).unwrap();
        let found: Vec<(usize, &str)> = violations
            .iter()
            .map(|v| {
                (
                    v.line,
                    v.allowance
                        .as_ref()
                        .expect("an allowance allows it")
                        .kind
                        .setting(),
                )
            })
            .collect();
        let expected: Vec<(usize, &str)> = refused
            .iter()
            .map(|&(setting, element)| (line_of(xml, element), setting))
            .collect();
        assert_eq!(found, expected, "{name}");
        for violation in &violations {
            let message = violation.to_string();
            let setting = violation.allowance.as_ref().unwrap().kind.setting();
            assert!(
                message.starts_with(&format!("base XML line {}: <", violation.line)),
                "{message}"
            );
            assert!(message.contains(&format!("\"{setting}\": ")), "{message}");
            assert!(
                message.contains("controller.devicePolicy.<namespace>, flag --device-policy"),
                "{message}"
            );
            assert!(
                message.ends_with(", or with \"profile\": \"seapath\")"),
                "{message}"
            );
        }
        assert_eq!(
            check_device_policy(xml, &policy_from(spec)),
            Ok(()),
            "{name} under {spec}"
        );
        assert_eq!(check_device_policy(xml, &seapath()), Ok(()), "{name}");
    }
}

#[test]
fn the_whole_template_needs_every_allowance_and_the_old_switch_still_does_it() {
    let xml = fixture("all");
    let settings: Vec<&str> = device_policy_violations(xml, &DevicePolicy::default())
        .unwrap()
        .iter()
        .map(|v| v.allowance.as_ref().unwrap().kind.setting())
        .collect();
    assert_eq!(
        settings,
        [
            "hugepages",
            "vhostUserDirs",
            "pciDevices",
            "directDevices",
            "bridges",
            "tapDevices",
            "networks"
        ]
    );
    let switches = DevicePolicy {
        allow_host_devices: true,
        allow_host_paths: true,
        ..DevicePolicy::default()
    };
    assert_eq!(check_device_policy(xml, &switches), Ok(()));
    let all_lists = policy_from(
        r#"{"hugepages": true, "vhostUserDirs": ["/run/openvswitch/vm-sockets", "/var/run/openvswitch/vm-sockets"],
            "pciDevices": ["0000:3b:00.1"], "directDevices": ["enp3s0"], "bridges": ["br0"],
            "tapDevices": ["tap-guest0"], "networks": ["sriov-net0"]}"#,
    );
    assert_eq!(check_device_policy(xml, &all_lists), Ok(()));
}

#[test]
fn messages_name_line_element_value_and_setting() {
    let xml = fixture("all");
    let message = check_device_policy(xml, &DevicePolicy::default())
        .unwrap_err()
        .to_string();
    let pci = line_of(xml, "<hostdev ");
    let vhost = line_of(xml, "<interface type='vhostuser'>");
    let huge = line_of(xml, "<hugepages>");
    for expected in [
        format!(
            "base XML line {pci}: <hostdev type=\"pci\"> passes host PCI device 0000:3b:00.1 to the guest; not allowed in this namespace (a cluster admin allows it with \"pciDevices\": [\"0000:3b:00.1\"] in controller.devicePolicy.<namespace>, flag --device-policy, or with \"profile\": \"seapath\")"
        ),
        format!(
            "base XML line {vhost}: <interface type=\"vhostuser\"> connects the guest to vhost-user socket \"/var/run/openvswitch/vm-sockets/dpdkvhostuser_guest0p0\" on the host; not allowed in this namespace (a cluster admin allows it with \"vhostUserDirs\": [\"/var/run/openvswitch/vm-sockets\"] in controller.devicePolicy.<namespace>, flag --device-policy, or with \"profile\": \"seapath\")"
        ),
        format!(
            "base XML line {huge}: <hugepages> backs the guest's memory with the host's reserved huge pages; not allowed in this namespace (a cluster admin allows it with \"hugepages\": true in controller.devicePolicy.<namespace>, flag --device-policy, or with \"profile\": \"seapath\")"
        ),
    ] {
        assert!(
            message.lines().any(|l| l == expected),
            "{expected}\nnot in\n{message}"
        );
    }
    // A value the profile does not cover is not offered the profile.
    let emulator = domain_with_devices("<emulator>/opt/qemu/bin/qemu-system-x86_64</emulator>");
    let message = check_device_policy(&emulator, &seapath())
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "base XML line 3: <emulator> makes libvirt run host program \"/opt/qemu/bin/qemu-system-x86_64\" as the emulator; not allowed in this namespace (a cluster admin allows it with \"emulators\": [\"/opt/qemu/bin/qemu-system-x86_64\"] in controller.devicePolicy.<namespace>, flag --device-policy)"
    );
}

fn domain_with_devices(devices: &str) -> String {
    format!("<domain type=\"kvm\">\n  <memory>1048576</memory>\n  <devices>{devices}</devices>\n</domain>")
}

#[test]
fn the_seapath_profile_still_refuses_qemu_passthrough_host_files_and_foreign_emulators() {
    let refused = [
        r#"<emulator>/opt/qemu/bin/qemu-system-x86_64</emulator>"#,
        r#"<disk type="file" device="disk"><source file="/var/lib/libvirt/images/guest0.qcow2"/><target dev="vdz"/></disk>"#,
        r#"<interface type="vhostuser"><source type="unix" path="/var/run/openvswitch/db.sock" mode="client"/></interface>"#,
        r#"<interface type="vhostuser"><source type="unix" path="/var/run/openvswitch/vm-sockets/../db.sock" mode="client"/></interface>"#,
        r#"<interface type="vhostuser"><source type="unix" mode="client"/></interface>"#,
        r#"<interface type="ethernet"><target dev="tap0" managed="no"/><script path="/etc/qemu-ifup"/></interface>"#,
        r#"<hostdev mode="subsystem" type="usb"><source><vendor id="0x1234"/><product id="0xbeef"/></source></hostdev>"#,
        r#"<hostdev mode="capabilities" type="storage"><source><block>/dev/sdf1</block></source></hostdev>"#,
        r#"<hostdev mode="subsystem" type="pci"><source><address domain="0" bus="0x3b" slot="0" function="x"/></source></hostdev>"#,
        r#"<serial type="file"><source path="/var/log/guest0.log"/></serial>"#,
    ];
    for devices in refused {
        let xml = domain_with_devices(devices);
        assert!(check_device_policy(&xml, &seapath()).is_err(), "{devices}");
    }
    let commandline = r#"<domain type="kvm" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">
  <memory>1048576</memory>
  <qemu:commandline><qemu:arg value="-s"/></qemu:commandline>
</domain>"#;
    let violations = device_policy_violations(commandline, &seapath()).unwrap();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].allowed_by, Some(PolicyFlag::QemuPassthrough));
    assert_eq!(violations[0].allowance, None);
    assert!(
        violations[0]
            .to_string()
            .ends_with("(policy allowQemuPassthrough: a cluster admin allows it with controller.allowQemuPassthroughIn, flag --allow-qemu-passthrough-in)")
    );
}

#[test]
fn an_allowance_matches_only_the_values_it_names() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, bool)] = &[
        (r#"{"bridges": ["br0"]}"#, r#"<interface type="bridge"><source bridge="br0"/></interface>"#, true),
        (r#"{"bridges": ["br0"]}"#, r#"<interface type="bridge"><source bridge="br1"/></interface>"#, false),
        (r#"{"bridges": ["br*"]}"#, r#"<interface type="bridge"><source bridge="br-process"/></interface>"#, true),
        (r#"{"bridges": ["br*"]}"#, r#"<interface type="bridge"><source bridge="BR0"/></interface>"#, false),
        (r#"{"bridges": ["br0"]}"#, r#"<interface type="bridge"><source x:bridge="br0" xmlns:x="urn:x" bridge="br9"/></interface>"#, false),
        (r#"{"bridges": ["br0"]}"#, r#"<interface type="bridge"/>"#, false),
        (r#"{"networks": ["sriov-*"]}"#, r#"<interface type="network"><source network="sriov-a"/></interface>"#, true),
        (r#"{"networks": ["sriov-*"]}"#, r#"<interface type="network"><source network="default"/></interface>"#, false),
        (r#"{"directDevices": ["enp3s0"]}"#, r#"<interface type="direct"><source dev="enp3s0" mode="bridge"/></interface>"#, true),
        (r#"{"directDevices": ["enp3s0"]}"#, r#"<interface type="direct"><source dev="eno1" mode="bridge"/></interface>"#, false),
        (r#"{"tapDevices": ["vm1-*"]}"#, r#"<interface type="ethernet"><target dev="vm1-p0" managed="no"/></interface>"#, true),
        (r#"{"tapDevices": ["vm1-*"]}"#, r#"<interface type="ethernet"><target dev="vm2-p0" managed="no"/></interface>"#, false),
        (r#"{"vhostUserDirs": ["/run/vhost"]}"#, r#"<interface type="vhostuser"><source type="unix" path="/run/vhost/a/s0" mode="server"/></interface>"#, true),
        (r#"{"vhostUserDirs": ["/run/vhost/"]}"#, r#"<interface type="vhostuser"><source type="unix" path="/run/vhost/s0" mode="server"/></interface>"#, true),
        (r#"{"vhostUserDirs": ["/run/vhost"]}"#, r#"<interface type="vhostuser"><source type="unix" path="/run/vhost-other/s0" mode="server"/></interface>"#, false),
        (r#"{"vhostUserDirs": ["/run/vhost"]}"#, r#"<interface type="vhostuser"><source type="unix" path="/run/vhost" mode="server"/></interface>"#, false),
        (r#"{"pciDevices": ["0000:3b:00.*"]}"#, r#"<hostdev mode="subsystem" type="pci"><source><address domain="0" bus="59" slot="0" function="3"/></source></hostdev>"#, true),
        (r#"{"pciDevices": ["0000:3b:00.*"]}"#, r#"<hostdev type="pci"><source><address bus="0x3c"/></source></hostdev>"#, false),
        (r#"{"pciDevices": ["0000:3b:00.*"]}"#, r#"<hostdev mode="subsystem" type="pci"><source><address bus="073"/></source></hostdev>"#, true),
        (r#"{"pciDevices": ["0000:3b:00.1"]}"#, r#"<interface type="hostdev" managed="yes"><source><address type="pci" domain="0x0000" bus="0x3b" slot="0x00" function="0x1"/></source></interface>"#, true),
        (r#"{"pciDevices": ["*"]}"#, r#"<hostdev mode="subsystem" type="scsi"><source><adapter name="scsi_host0"/><address bus="0" target="0" unit="0"/></source></hostdev>"#, false),
        (r#"{"emulators": ["/opt/qemu/bin/*"]}"#, "<emulator>/opt/qemu/bin/qemu-system-x86_64</emulator>", true),
        (r#"{"emulators": ["/opt/qemu/bin/*"]}"#, "<emulator>/opt/qemu/bin/sub/qemu</emulator>", false),
        (r#"{"partitions": ["/realtime/**"]}"#, "<resource><partition>/realtime/vm1</partition></resource>", true),
        (r#"{"partitions": ["/realtime/**"]}"#, "<resource><partition>/realtime/../system.slice</partition></resource>", false),
        (r#"{"hugepages": true}"#, r#"<memoryBacking><hugepages><page size="2" unit="M"/></hugepages></memoryBacking>"#, true),
    ];
    for &(spec, element, accepted) in cases {
        let xml = if element.starts_with("<resource") || element.starts_with("<memoryBacking") {
            format!("<domain type=\"kvm\">\n  <memory>1048576</memory>\n  {element}\n</domain>")
        } else {
            domain_with_devices(element)
        };
        let result = check_device_policy(&xml, &policy_from(spec));
        assert_eq!(result.is_ok(), accepted, "{spec} with {element}: {result:?}");
        // the defaults never allow these, except what they are meant to
        assert!(
            check_device_policy(&xml, &DevicePolicy::default()).is_err(),
            "{element}"
        );
    }
}

#[test]
fn default_allowances_are_the_hosts_qemu_and_machine_partitions_only() {
    let defaults = Allowances::default();
    #[rustfmt::skip]
    let cases: &[(AllowanceKind, &str, bool)] = &[
        (AllowanceKind::Emulator, "/usr/bin/qemu-system-x86_64", true),
        (AllowanceKind::Emulator, "/usr/bin/qemu-system-aarch64", true),
        (AllowanceKind::Emulator, "/usr/bin/qemu-system-", false),
        (AllowanceKind::Emulator, "/usr/bin/kvm", true),
        (AllowanceKind::Emulator, "/usr/bin/qemu-kvm", true),
        (AllowanceKind::Emulator, "/usr/libexec/qemu-kvm", true),
        (AllowanceKind::Emulator, "/usr/bin/qemu-img", false),
        (AllowanceKind::Emulator, "/usr/local/bin/qemu-system-x86_64", false),
        (AllowanceKind::Emulator, "/usr/bin/qemu-system-x86_64/../../../tmp/x", false),
        (AllowanceKind::Emulator, "/usr/bin//kvm", false),
        (AllowanceKind::Emulator, "usr/bin/kvm", false),
        (AllowanceKind::Emulator, "/usr/bin/kvm\n", false),
        (AllowanceKind::Partition, "/machine", true),
        (AllowanceKind::Partition, "/machine/rt", true),
        (AllowanceKind::Partition, "/machine/nort", true),
        (AllowanceKind::Partition, "/machine/rt/bay1", true),
        (AllowanceKind::Partition, "/machine/", false),
        (AllowanceKind::Partition, "/machinery", false),
        (AllowanceKind::Partition, "/machine/./rt", false),
        (AllowanceKind::Partition, "/machine/../system.slice", false),
        (AllowanceKind::Partition, "/system.slice", false),
        (AllowanceKind::Partition, "/", false),
        (AllowanceKind::Bridge, "br0", false),
        (AllowanceKind::TapDevice, "tap0", false),
        (AllowanceKind::DirectDevice, "eth0", false),
        (AllowanceKind::VhostUserDir, "/var/run/openvswitch/vm-sockets/s", false),
        (AllowanceKind::Network, "default", false),
        (AllowanceKind::PciDevice, "0000:00:00.0", false),
        (AllowanceKind::Hugepages, "", false),
    ];
    for &(kind, value, allowed) in cases {
        assert_eq!(defaults.allows(kind, Some(value)), allowed, "{kind} {value:?}");
    }
    for kind in [
        AllowanceKind::Emulator,
        AllowanceKind::Bridge,
        AllowanceKind::PciDevice,
    ] {
        assert!(
            !Profile::Seapath.allowances().allows(kind, None),
            "{kind} without a value"
        );
    }
}

#[test]
fn cluster_admin_entries_are_checked_and_only_ever_add() {
    #[rustfmt::skip]
    let refused: &[(&str, &str)] = &[
        (r#"{"emulators": ["qemu-system-*"]}"#, "emulators: \"qemu-system-*\" is not an absolute path pattern"),
        (r#"{"partitions": ["/machine/[rt"]}"#, "partitions: \"/machine/[rt\" is not a glob pattern"),
        (r#"{"bridges": ["br[0"]}"#, "bridges: \"br[0\" is not a glob pattern"),
        (r#"{"vhostUserDirs": ["/"]}"#, "vhostUserDirs: \"/\" is not a directory"),
        (r#"{"vhostUserDirs": ["run/ovs"]}"#, "vhostUserDirs: \"run/ovs\" is not a directory"),
        (r#"{"vhostUserDirs": ["/run/../etc"]}"#, "vhostUserDirs: \"/run/../etc\" is not a directory"),
    ];
    for &(spec, message) in refused {
        let spec: AllowanceSpec = serde_json::from_str(spec).unwrap();
        let err = spec.compile().unwrap_err().to_string();
        assert!(err.starts_with(message), "{err}");
    }
    for spec in [
        r#"{"bridge": ["br0"]}"#,
        r#"{"profile": "everything"}"#,
        r#"{"hugepages": "yes"}"#,
    ] {
        assert!(serde_json::from_str::<AllowanceSpec>(spec).is_err(), "{spec}");
    }

    let spec: AllowanceSpec = serde_json::from_str(
        r#"{"profile": "seapath", "emulators": ["/opt/qemu/bin/*"], "bridges": ["br0"]}"#,
    )
    .unwrap();
    let allowances = spec.compile().unwrap();
    assert!(allowances.allows(AllowanceKind::Emulator, Some("/usr/bin/kvm")));
    assert!(allowances.allows(AllowanceKind::Emulator, Some("/opt/qemu/bin/qemu")));
    assert!(allowances.allows(AllowanceKind::Bridge, Some("anything")));
    assert!(allowances.allows(AllowanceKind::Hugepages, None));
    assert_eq!(AllowanceSpec::default().compile().unwrap(), Allowances::default());
}

#[test]
fn paths_are_normal_and_pci_addresses_read_as_libvirt_does() {
    for (path, normal) in [
        ("/", true),
        ("/a/b", true),
        ("/a/", false),
        ("/a//b", false),
        ("/a/./b", false),
        ("/a/../b", false),
        ("a/b", false),
        ("", false),
    ] {
        assert_eq!(is_normal_absolute_path(path), normal, "{path:?}");
    }
    let address = |d: &[&str], b: &[&str], s: &[&str], f: &[&str]| {
        let owned = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        pci_address(&owned(d), &owned(b), &owned(s), &owned(f))
    };
    assert_eq!(
        address(&["0x0000"], &["0x3b"], &["0x00"], &["0x1"]).as_deref(),
        Some("0000:3b:00.1")
    );
    assert_eq!(
        address(&["0"], &["59"], &["0"], &["1"]).as_deref(),
        Some("0000:3b:00.1")
    );
    assert_eq!(address(&[], &["073"], &[], &[]).as_deref(), Some("0000:3b:00.0"));
    assert_eq!(
        address(&["0X1"], &["0xFF"], &["0x1f"], &["7"]).as_deref(),
        Some("0001:ff:1f.7")
    );
    assert_eq!(address(&[], &["0x100"], &[], &[]), None, "bus out of range");
    assert_eq!(address(&[], &[], &["32"], &[]), None, "slot out of range");
    assert_eq!(address(&[], &[], &[], &["8"]), None, "function out of range");
    assert_eq!(address(&[], &["x"], &[], &[]), None);
    assert_eq!(address(&[], &["-1"], &[], &[]), None);
    assert_eq!(address(&[], &["0x"], &[], &[]), None);
    assert_eq!(address(&[], &["09"], &[], &[]), None, "9 is not octal");
    assert_eq!(address(&[], &["1", "2"], &[], &[]), None, "repeated attribute");
}

#[test]
fn an_element_naming_no_value_is_left_to_its_switch() {
    let xml = domain_with_devices(r#"<interface type="bridge"><model type="virtio"/></interface>"#);
    let message = check_device_policy(&xml, &seapath()).unwrap_err().to_string();
    assert_eq!(
        message,
        "base XML line 3: <interface type=\"bridge\"> connects the guest to host bridge (none named); not allowed in this namespace (policy allowHostDevices: a cluster admin allows it with controller.allowHostDevicesIn, flag --allow-host-devices-in)"
    );
    let switch = DevicePolicy {
        allow_host_devices: true,
        ..DevicePolicy::default()
    };
    assert_eq!(check_device_policy(&xml, &switch), Ok(()));
}
