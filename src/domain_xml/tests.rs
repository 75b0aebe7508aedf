//! Unit tests of the base XML -> domain XML rendering, the device policy and the parser.

use super::tree::{self, Node};
use super::write;
use super::*;

/// A realistic base XML, as a user writes it (name to be replaced, no UUID).
const BASE: &str = r#"<domain type="kvm">
  <name>whatever</name>
  <memory unit="GiB">2</memory>
  <currentMemory unit="KiB">2097152</currentMemory>
  <vcpu placement="static">2</vcpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    <boot dev="hd"/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <!-- the console is on the first serial port -->
  <devices>
    <interface type="user">
      <model type="virtio"/>
    </interface>
    <serial type="pty">
      <target port="0"/>
    </serial>
    <console type="pty">
      <target type="serial" port="0"/>
    </console>
  </devices>
</domain>
"#;

const GIVEN_UUID: &str = "6c0d3ef2-5b55-4a49-9c1c-6e2f5d0c8a11";
const SECRET_UUID: &str = "b3a0a0a5-3f7e-4c55-8f0e-0123456789ab";

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).expect("test UUID")
}

fn cephx() -> CephAccess {
    CephAccess {
        monitors: vec![("10.0.0.1".into(), 6789), ("mon-b.example".into(), 3300)],
        auth: Some(CephAuthRef {
            username: "libvirt".into(),
            secret_uuid: uuid(SECRET_UUID),
        }),
    }
}

fn no_auth() -> CephAccess {
    CephAccess {
        monitors: vec![("127.0.0.1".into(), 6789)],
        auth: None,
    }
}

fn rbd_disk(namespace: Option<&str>, image: &str, bus: DiskBus) -> DiskSpec {
    DiskSpec {
        pool: "rbd".into(),
        namespace: namespace.map(Into::into),
        image: image.into(),
        bus,
    }
}

fn two_disks() -> Vec<DiskSpec> {
    vec![
        rbd_disk(Some("team-a"), "system_guest0", DiskBus::Virtio),
        rbd_disk(Some("team-a"), "data_guest0_0", DiskBus::Virtio),
    ]
}

fn render_ok(base: &str, disks: &[DiskSpec], ceph: &CephAccess) -> RenderedDomain {
    render_domain_xml(
        base,
        "guest0",
        uuid(GIVEN_UUID),
        disks,
        ceph,
        // Rendering does not depend on the policy; the profile lets the bridge of the
        // preservation test through.
        &DevicePolicy::with_profile(Profile::Seapath),
    )
    .unwrap_or_else(|e| panic!("render failed: {e}"))
}

/// A domain whose `<devices>` holds `devices`, with `extra` before `<devices>`.
fn domain_with(extra: &str, devices: &str) -> String {
    format!(
        "<domain type=\"kvm\">\n  <name>x</name>\n  <memory>1048576</memory>\n{extra}\n  <devices>\n{devices}\n  </devices>\n</domain>\n"
    )
}

/// Removes the operator's RBD disks from a generated XML (to render it again).
fn strip_operator_disks(xml: &str) -> String {
    let mut doc = tree::parse(xml).expect("generated XML parses");
    for child in &mut doc.root.children {
        if let Node::Element(devices) = child
            && devices.is_plain("devices")
        {
            devices.children.retain(|c| {
                !matches!(c, Node::Element(e)
                    if e.is_plain("disk") && e.attr_exact("type").as_deref() == Some("network"))
            });
        }
    }
    write::write_document(&doc)
}

// ---------------------------------------------------------------------------------------------
// Rendering

#[test]
fn renders_realistic_base_with_two_rbd_disks_under_cephx_in_a_namespace() {
    let rendered = render_ok(BASE, &two_disks(), &cephx());
    let expected = format!(
        r#"<domain type="kvm">
  <name>guest0</name>
  <uuid>{GIVEN_UUID}</uuid>
  <memory unit="GiB">2</memory>
  <currentMemory unit="KiB">2097152</currentMemory>
  <vcpu placement="static">2</vcpu>
  <os>
    <type arch="x86_64" machine="pc">hvm</type>
    <boot dev="hd"/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <!-- the console is on the first serial port -->
  <devices>
    <interface type="user">
      <model type="virtio"/>
    </interface>
    <serial type="pty">
      <target port="0"/>
    </serial>
    <console type="pty">
      <target type="serial" port="0"/>
    </console>
    <disk type="network" device="disk">
      <driver name="qemu" type="raw" cache="writeback"/>
      <auth username="libvirt">
        <secret type="ceph" uuid="{SECRET_UUID}"/>
      </auth>
      <source protocol="rbd" name="rbd/team-a/system_guest0">
        <host name="10.0.0.1" port="6789"/>
        <host name="mon-b.example" port="3300"/>
      </source>
      <target dev="vda" bus="virtio"/>
    </disk>
    <disk type="network" device="disk">
      <driver name="qemu" type="raw" cache="writeback"/>
      <auth username="libvirt">
        <secret type="ceph" uuid="{SECRET_UUID}"/>
      </auth>
      <source protocol="rbd" name="rbd/team-a/data_guest0_0">
        <host name="10.0.0.1" port="6789"/>
        <host name="mon-b.example" port="3300"/>
      </source>
      <target dev="vdb" bus="virtio"/>
    </disk>
  </devices>
</domain>
"#
    );
    assert_eq!(rendered.xml, expected);
    assert_eq!(rendered.uuid, uuid(GIVEN_UUID));
    assert!(rendered.uuid_inserted);
    assert_eq!(extract_uuid(&rendered.xml), Ok(Some(uuid(GIVEN_UUID))));
    assert_eq!(extract_memory_kib(&rendered.xml), Ok(2 * 1024 * 1024));
}

#[test]
fn without_cephx_and_namespace_disks_have_no_auth_and_pool_image_names() {
    let disks = [
        rbd_disk(None, "system_guest0", DiskBus::Virtio),
        rbd_disk(Some(""), "data_guest0_0", DiskBus::Virtio),
    ];
    let xml = render_ok(BASE, &disks, &no_auth()).xml;
    assert!(!xml.contains("<auth"));
    assert!(!xml.contains("<secret"));
    assert!(xml.contains(r#"<source protocol="rbd" name="rbd/system_guest0">"#));
    assert!(xml.contains(r#"<source protocol="rbd" name="rbd/data_guest0_0">"#));
    assert!(xml.contains(r#"<host name="127.0.0.1" port="6789"/>"#));
}

#[test]
fn without_monitors_the_source_has_no_host() {
    let ceph = CephAccess::default();
    let xml = render_ok(BASE, &two_disks()[..1], &ceph).xml;
    assert!(xml.contains(r#"<source protocol="rbd" name="rbd/team-a/system_guest0"/>"#));
}

#[test]
fn every_name_is_replaced_by_one_name_first() {
    let base = "<domain type='kvm'><memory>1024</memory><name>a</name><name>b</name></domain>";
    let xml = render_ok(base, &[], &no_auth()).xml;
    assert_eq!(xml.matches("<name>").count(), 1);
    let doc = tree::parse(&xml).unwrap();
    let first = doc.root.elements().next().unwrap();
    assert!(first.is_plain("name"));
    assert_eq!(first.text(), "guest0");
}

#[test]
fn vm_name_is_escaped() {
    let rendered = render_domain_xml(
        BASE,
        "a&b<c>\"d'",
        uuid(GIVEN_UUID),
        &[],
        &no_auth(),
        &DevicePolicy::default(),
    )
    .unwrap();
    let doc = tree::parse(&rendered.xml).unwrap();
    let name = doc.root.elements().find(|e| e.is_plain("name")).unwrap();
    assert_eq!(name.text(), "a&b<c>\"d'");
}

#[test]
fn existing_uuid_is_kept_verbatim() {
    let base = BASE.replace(
        "<name>whatever</name>",
        "<uuid> 0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0 </uuid>",
    );
    let rendered = render_ok(&base, &two_disks(), &cephx());
    assert_eq!(rendered.uuid, uuid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"));
    assert!(!rendered.uuid_inserted);
    assert!(
        rendered
            .xml
            .contains("<uuid> 0F1E2D3C-4B5A-6978-8796-A5B4C3D2E1F0 </uuid>")
    );
    assert!(!rendered.xml.contains(GIVEN_UUID));
    assert_eq!(rendered.xml.matches("<uuid>").count(), 1);
}

#[test]
fn uuid_with_dashes_anywhere_is_accepted_like_libvirt() {
    let base = "<domain><uuid>0f1e2d3c4b5a6978-8796a5b4c3d2e1f0</uuid><memory>1</memory></domain>";
    assert_eq!(
        extract_uuid(base),
        Ok(Some(uuid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")))
    );
}

#[test]
fn empty_uuid_is_replaced_by_the_given_one() {
    for empty in ["<uuid/>", "<uuid></uuid>", "<uuid>  \n </uuid>"] {
        let base = BASE.replace("<name>whatever</name>", empty);
        assert_eq!(extract_uuid(&base), Ok(None));
        let rendered = render_ok(&base, &[], &no_auth());
        assert!(rendered.uuid_inserted);
        assert_eq!(rendered.uuid, uuid(GIVEN_UUID));
        assert_eq!(rendered.xml.matches("<uuid").count(), 1, "{empty}");
        assert!(rendered.xml.contains(&format!("<uuid>{GIVEN_UUID}</uuid>")));
    }
}

#[test]
fn invalid_uuids_are_rejected_with_their_line() {
    for bad in [
        "not-a-uuid",
        "{0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0}",
        "urn:uuid:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f",
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0a",
        "0f1e2d3c 4b5a-6978-8796-a5b4c3d2e1f0",
        "00000000-0000-0000-0000-000000000000",
    ] {
        let base = BASE.replace("<name>whatever</name>", &format!("<uuid>{bad}</uuid>"));
        let err = render_domain_xml(
            &base,
            "guest0",
            uuid(GIVEN_UUID),
            &[],
            &no_auth(),
            &DevicePolicy::default(),
        )
        .unwrap_err();
        assert!(
            matches!(&err, DomainXmlError::InvalidUuid { line: 2, value, .. } if value == bad),
            "{bad}: {err:?}"
        );
        assert!(extract_uuid(&base).is_err());
        assert!(err.to_string().starts_with("base XML line 2: <uuid>"), "{err}");
    }
}

#[test]
fn two_uuids_are_rejected() {
    let base = format!(
        "<domain>\n<uuid>{GIVEN_UUID}</uuid>\n<uuid>{SECRET_UUID}</uuid>\n<memory>1</memory></domain>"
    );
    assert_eq!(
        extract_uuid(&base),
        Err(DomainXmlError::DuplicateElement {
            line: 3,
            element: "uuid"
        })
    );
}

#[test]
fn render_with_uuid_replaces_the_base_uuid() {
    let base = BASE.replace("<name>whatever</name>", &format!("<uuid>{SECRET_UUID}</uuid>"));
    let rendered = render_domain_xml_with_uuid(
        &base,
        "clone0",
        uuid(GIVEN_UUID),
        &two_disks(),
        &cephx(),
        &DevicePolicy::default(),
        None,
    )
    .unwrap();
    assert_eq!(rendered.uuid, uuid(GIVEN_UUID));
    assert!(rendered.uuid_inserted);
    assert_eq!(extract_uuid(&rendered.xml), Ok(Some(uuid(GIVEN_UUID))));
    assert_eq!(rendered.xml.matches("<uuid>").count(), 1);
}

#[test]
fn devices_element_is_created_when_absent() {
    let base = "<domain type=\"kvm\">\n  <name>x</name>\n  <memory>1048576</memory>\n  <os><type>hvm</type></os>\n</domain>";
    let xml = render_ok(base, &two_disks(), &no_auth()).xml;
    let doc = tree::parse(&xml).unwrap();
    let last = doc.root.elements().last().unwrap();
    assert!(last.is_plain("devices"));
    let targets: Vec<String> = last
        .elements_named("disk")
        .flat_map(|d| d.elements_named("target"))
        .filter_map(|t| t.attr_exact("dev"))
        .collect();
    assert_eq!(targets, ["vda", "vdb"]);
    // and it is not created when there is nothing to put in it
    let xml = render_ok(base, &[], &no_auth()).xml;
    assert!(!xml.contains("devices"));
}

#[test]
fn empty_devices_element_receives_the_disks() {
    let base = "<domain><memory>1</memory><devices/></domain>";
    let xml = render_ok(base, &two_disks()[..1], &no_auth()).xml;
    assert_eq!(xml.matches("<devices>").count(), 1);
    assert!(xml.contains("<target dev=\"vda\" bus=\"virtio\"/>"));
}

#[test]
fn targets_follow_the_bus_prefix() {
    let disks = [
        rbd_disk(None, "system_v", DiskBus::Virtio),
        rbd_disk(None, "data_v_0", DiskBus::Sata),
        rbd_disk(None, "data_v_1", DiskBus::Virtio),
        rbd_disk(None, "data_v_2", DiskBus::Ide),
        rbd_disk(None, "data_v_3", DiskBus::Scsi),
    ];
    assert_eq!(allocate_targets(&disks), ["vda", "sda", "vdb", "hda", "sdb"]);
    let xml = render_ok(BASE, &disks, &no_auth()).xml;
    for (dev, bus) in [
        ("vda", "virtio"),
        ("sda", "sata"),
        ("vdb", "virtio"),
        ("hda", "ide"),
        ("sdb", "scsi"),
    ] {
        assert!(
            xml.contains(&format!("<target dev=\"{dev}\" bus=\"{bus}\"/>")),
            "{dev}"
        );
    }
}

#[test]
fn target_letters_continue_past_z() {
    assert_eq!(disk_letters(0), "a");
    assert_eq!(disk_letters(25), "z");
    assert_eq!(disk_letters(26), "aa");
    assert_eq!(disk_letters(27), "ab");
    assert_eq!(disk_letters(701), "zz");
    assert_eq!(disk_letters(702), "aaa");
}

#[test]
fn an_allowed_base_disk_on_an_operator_target_is_a_conflict() {
    let base = domain_with(
        "",
        "    <disk type=\"file\" device=\"cdrom\">\n      <target dev=\"sda\" bus=\"sata\"/>\n      <readonly/>\n    </disk>",
    );
    let disks = [rbd_disk(None, "system_x", DiskBus::Sata)];
    let err = render_domain_xml(
        &base,
        "x",
        uuid(GIVEN_UUID),
        &disks,
        &no_auth(),
        &DevicePolicy::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        DomainXmlError::TargetConflict {
            line: 7,
            target: "sda".into()
        }
    );
    // on virtio the cdrom's sda is no conflict
    let disks = [rbd_disk(None, "system_x", DiskBus::Virtio)];
    let xml = render_ok(&base, &disks, &no_auth()).xml;
    assert!(xml.contains("<target dev=\"sda\" bus=\"sata\"/>"));
    assert!(xml.contains("<target dev=\"vda\" bus=\"virtio\"/>"));
}

#[test]
fn rendering_is_deterministic_and_idempotent() {
    let bases = [
        BASE.to_owned(),
        "<domain type='qemu'><memory unit='MiB'>512</memory><os><type>hvm</type></os></domain>".to_owned(),
        PRESERVED.to_owned(),
        BASE.replace("<name>whatever</name>", &format!("<uuid>{SECRET_UUID}</uuid>")),
    ];
    for base in &bases {
        for ceph in [cephx(), no_auth()] {
            let first = render_ok(base, &two_disks(), &ceph);
            let again = render_ok(base, &two_disks(), &ceph);
            assert_eq!(first, again);
            // the writer is a fixed point on its own output
            let doc = tree::parse(&first.xml).unwrap();
            assert_eq!(write::write_document(&doc), first.xml);
            // rendering the output, once the operator's disks are removed, changes nothing
            let stripped = strip_operator_disks(&first.xml);
            let second = render_domain_xml(
                &stripped,
                "guest0",
                Uuid::new_v4(),
                &two_disks(),
                &ceph,
                &DevicePolicy::with_profile(Profile::Seapath),
            )
            .unwrap();
            assert_eq!(second.xml, first.xml);
            assert_eq!(second.uuid, first.uuid);
            assert!(!second.uuid_inserted);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Faithful preservation

const PRESERVED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- made by hand -->
<?tool hint="kept"?>
<domain type='kvm' xmlns:app="urn:example:app"   id = "7">
  <name>old</name>
  <title>Substation &amp; bay 3 &#233;</title>
  <description><![CDATA[raw <stuff> & more]]></description>
  <metadata>
    <app:info app:version="1.2"><app:owner>team &lt;a&gt;</app:owner></app:info>
    <app:script xml:space="preserve">  line 1
      line 2  <app:b>bold</app:b></app:script>
  </metadata>
  <memory unit='KiB'>1048576</memory>
  <os>
    <type>hvm</type>
  </os>
  <clock offset="utc">text before<timer name="rtc"/>mixed</clock>
      <devices>
        <interface type="bridge"><source bridge="br0"/><virtualport type="openvswitch"/></interface>
      </devices>
</domain>
<!-- trailer -->
"#;

#[test]
fn everything_else_of_the_base_xml_is_preserved() {
    let xml = render_ok(PRESERVED, &two_disks(), &cephx()).xml;
    for kept in [
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- made by hand -->\n<?tool hint=\"kept\"?>\n",
        "<domain type='kvm' xmlns:app=\"urn:example:app\"   id = \"7\">",
        "<title>Substation &amp; bay 3 &#233;</title>",
        "<description><![CDATA[raw <stuff> & more]]></description>",
        "<app:info app:version=\"1.2\">\n      <app:owner>team &lt;a&gt;</app:owner>\n    </app:info>",
        "<app:script xml:space=\"preserve\">  line 1\n      line 2  <app:b>bold</app:b></app:script>",
        "<memory unit='KiB'>1048576</memory>",
        "<clock offset=\"utc\">text before<timer name=\"rtc\"/>mixed</clock>",
        "<interface type=\"bridge\">\n      <source bridge=\"br0\"/>\n      <virtualport type=\"openvswitch\"/>\n    </interface>",
        "</domain>\n<!-- trailer -->\n",
    ] {
        assert!(xml.contains(kept), "missing {kept:?} in\n{xml}");
    }
    assert!(!xml.contains("<name>old</name>"));
    let doc = tree::parse(&xml).unwrap();
    let title = doc.root.elements().find(|e| e.is_plain("title")).unwrap();
    assert_eq!(title.text(), "Substation & bay 3 é");
}

#[test]
fn byte_order_mark_is_accepted() {
    let base = format!("\u{FEFF}{BASE}");
    assert_eq!(
        render_ok(&base, &[], &no_auth()).xml,
        render_ok(BASE, &[], &no_auth()).xml
    );
}

// ---------------------------------------------------------------------------------------------
// Device policy

/// Only the given flag set.
fn only(flag: PolicyFlag) -> DevicePolicy {
    DevicePolicy {
        allow_host_devices: flag == PolicyFlag::HostDevices,
        allow_host_paths: flag == PolicyFlag::HostPaths,
        allow_qemu_passthrough: flag == PolicyFlag::QemuPassthrough,
        ..DevicePolicy::default()
    }
}

/// Every flag but the given one.
fn all_but(flag: PolicyFlag) -> DevicePolicy {
    DevicePolicy {
        allow_host_devices: flag != PolicyFlag::HostDevices,
        allow_host_paths: flag != PolicyFlag::HostPaths,
        allow_qemu_passthrough: flag != PolicyFlag::QemuPassthrough,
        ..DevicePolicy::default()
    }
}

/// Children of `<devices>` that reach the host, and the flag that allows each (`None`: no
/// policy does).
#[rustfmt::skip]
const REJECTED_DEVICES: &[(Option<PolicyFlag>, &str)] = {
    use PolicyFlag::*;
    &[
        (Some(HostDevices), r#"<hostdev mode="subsystem" type="pci" managed="yes"><source><address domain="0" bus="1" slot="0" function="0"/></source></hostdev>"#),
        (Some(HostPaths), r#"<disk type="file" device="disk"><source file="/etc/shadow"/><target dev="vdz" bus="virtio"/></disk>"#),
        (Some(HostPaths), r#"<disk device="disk"><source file="/var/lib/x.img"/><target dev="vdz"/></disk>"#),
        (Some(HostPaths), r#"<disk type="dir" device="disk"><source dir="/"/><target dev="vdz"/></disk>"#),
        (Some(HostPaths), r#"<disk type="volume" device="disk"><source pool="p" volume="v"/><target dev="vdz"/></disk>"#),
        (Some(HostDevices), r#"<disk type="block" device="disk"><source dev="/dev/sda"/><target dev="vdz"/></disk>"#),
        (Some(HostDevices), r#"<disk type="nvme" device="disk"><source type="pci" managed="yes" namespace="1"><address domain="0" bus="1" slot="0" function="0"/></source><target dev="vdz"/></disk>"#),
        (None, r#"<disk type="network" device="disk"><source protocol="rbd" name="rbd/system_other"/><target dev="vdz"/></disk>"#),
        (Some(HostPaths), r#"<disk type="file" device="cdrom"><source file="/srv/install.iso"/><target dev="hdc" bus="ide"/><readonly/></disk>"#),
        (Some(HostPaths), r#"<filesystem type="mount" accessmode="passthrough"><source dir="/"/><target dir="hostroot"/></filesystem>"#),
        (Some(HostDevices), r#"<filesystem type="block"><source dev="/dev/sdb"/><target dir="b"/></filesystem>"#),
        (Some(HostDevices), r#"<interface type="hostdev" managed="yes"><source><address type="pci" domain="0" bus="2" slot="0" function="1"/></source></interface>"#),
        (Some(HostDevices), r#"<interface type="direct"><source dev="eth0" mode="bridge"/><model type="virtio"/></interface>"#),
        (Some(HostDevices), r#"<interface type="vdpa"><source dev="/dev/vhost-vdpa-0"/></interface>"#),
        (Some(HostPaths), r#"<interface type="vhostuser"><source type="unix" path="/run/ovs/sock0" mode="client"/><model type="virtio"/></interface>"#),
        (Some(HostDevices), r#"<interface type="ethernet"><target dev="tap7" managed="no"/></interface>"#),
        (Some(QemuPassthrough), r#"<interface type="ethernet"><script path="/tmp/evil.sh"/></interface>"#),
        (Some(HostPaths), r#"<interface type="ethernet"><backend tap="/dev/net/tun" vhost="/dev/vhost-net"/></interface>"#),
        (Some(HostPaths), r#"<interface type="user"><rom file="/tmp/rom.bin"/></interface>"#),
        (Some(HostDevices), r#"<interface type="bridge"><source bridge="br0"/><virtualport type="openvswitch"/><model type="virtio"/></interface>"#),
        (Some(HostDevices), r#"<interface type="network"><source network="default"/><model type="virtio"/></interface>"#),
        (Some(HostDevices), r#"<interface type="hostdev"><source><address type="usb" bus="1" port="2"/></source></interface>"#),
        (Some(HostDevices), r#"<hostdev mode="subsystem" type="pci"><source><address domain="0x0000" bus="0x3b" slot="0x00" function="0x8"/></source></hostdev>"#),
        (Some(HostDevices), r#"<hostdev mode="subsystem" type="usb"><source><vendor id="0x1234"/><product id="0xbeef"/></source></hostdev>"#),
        (Some(HostPaths), r#"<serial type="file"><source path="/var/log/guest.log"/><target port="0"/></serial>"#),
        (Some(HostDevices), r#"<serial type="dev"><source path="/dev/ttyS0"/><target port="0"/></serial>"#),
        (Some(HostPaths), r#"<parallel type="pipe"><source path="/tmp/mypipe"/></parallel>"#),
        (Some(HostPaths), r#"<channel type="pipe"><source path="/tmp/chan"/><target type="virtio" name="x"/></channel>"#),
        (Some(HostPaths), r#"<console type="unix"><source mode="connect" path="/run/containerd/containerd.sock"/></console>"#),
        (Some(HostPaths), r#"<serial type="pty"><log file="/etc/cron.d/x" append="on"/><target port="0"/></serial>"#),
        (Some(HostDevices), r#"<smartcard mode="host"/>"#),
        (Some(HostPaths), r#"<smartcard mode="host-certificates"><certificate>a</certificate><database>/etc/pki/nssdb/</database></smartcard>"#),
        (Some(HostDevices), r#"<smartcard mode="passthrough" type="dev"><source path="/dev/ttyUSB0"/></smartcard>"#),
        (Some(HostDevices), r#"<tpm model="tpm-tis"><backend type="passthrough"><device path="/dev/tpm0"/></backend></tpm>"#),
        (Some(HostPaths), r#"<tpm model="tpm-crb"><backend type="external"><source type="unix" mode="connect" path="/tmp/swtpm.sock"/></backend></tpm>"#),
        (Some(HostDevices), r#"<input type="passthrough" bus="virtio"><source evdev="/dev/input/event1"/></input>"#),
        (Some(HostDevices), r#"<input type="evdev"><source dev="/dev/input/event2" grab="all"/></input>"#),
        (Some(HostDevices), r#"<rng model="virtio"><backend model="random">/dev/hwrng</backend></rng>"#),
        (Some(HostPaths), r#"<rng model="virtio"><backend model="egd" type="file"><source path="/tmp/x"/></backend></rng>"#),
        (Some(HostDevices), r#"<graphics type="sdl" display=":0" xauth="/root/.Xauthority"/>"#),
        (Some(HostDevices), r#"<graphics type="egl-headless"><gl rendernode="/dev/dri/renderD128"/></graphics>"#),
        (Some(HostDevices), r#"<graphics type="spice"><gl enable="yes"/></graphics>"#),
        (Some(HostPaths), r#"<graphics type="vnc" socket="/tmp/vnc.sock"/>"#),
        (Some(HostPaths), r#"<graphics type="vnc"><listen type="socket" socket="/tmp/vnc.sock"/></graphics>"#),
        (Some(HostDevices), r#"<video><model type="virtio"><acceleration accel3d="yes" rendernode="/dev/dri/renderD128"/></model></video>"#),
        (Some(HostPaths), r#"<audio id="1" type="file" path="/tmp/audio.wav"/>"#),
        (Some(HostDevices), r#"<audio id="1" type="pulseaudio"/>"#),
        (Some(HostPaths), r#"<shmem name="ivshmem0"><model type="ivshmem-plain"/><size unit="M">4</size></shmem>"#),
        (Some(HostPaths), r#"<memory model="nvdimm"><source><path>/tmp/nvdimm</path></source><target><size unit="KiB">524288</size></target></memory>"#),
        (Some(HostPaths), r#"<lease><lockspace>somearea</lockspace><key>somekey</key><target path="/some/lease/path" offset="1024"/></lease>"#),
        (Some(HostPaths), r#"<pstore backend="acpi-erst"><path>/tmp/guest_acpi_esrt</path><size unit="KiB">8</size></pstore>"#),
        (Some(QemuPassthrough), r#"<emulator>/opt/qemu/bin/qemu-system-x86_64</emulator>"#),
        (Some(QemuPassthrough), r#"<emulator>/usr/bin/../../tmp/qemu-system-x86_64</emulator>"#),
        (Some(QemuPassthrough), r#"<emulator> /usr/bin/kvm</emulator>"#),
        (Some(HostDevices), r#"<x:hostdev xmlns:x="urn:elsewhere" mode="subsystem" type="usb"/>"#),
        (Some(HostDevices), r#"<interface xmlns:x="urn:x" x:type="direct" type="user"><source network="default"/></interface>"#),
    ]
};

/// Children of `<domain>` that reach the host, and the flag that allows each.
#[rustfmt::skip]
const REJECTED_DOMAIN: &[(Option<PolicyFlag>, &str)] = {
    use PolicyFlag::*;
    &[
        (Some(QemuPassthrough), r#"<qemu:commandline xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"><qemu:arg value="-device"/><qemu:arg value="x"/></qemu:commandline>"#),
        (Some(QemuPassthrough), r#"<qemu:override xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0"><qemu:device alias="ua-x"><qemu:frontend><qemu:property name="p" type="string" value="v"/></qemu:frontend></qemu:device></qemu:override>"#),
        (Some(QemuPassthrough), r#"<cmd:commandline xmlns:cmd="http://libvirt.org/schemas/domain/qemu/1.0"><cmd:arg value="-x"/></cmd:commandline>"#),
        (Some(QemuPassthrough), r#"<commandline xmlns="http://libvirt.org/schemas/domain/qemu/1.0"><arg value="-x"/></commandline>"#),
        (Some(QemuPassthrough), r#"<q:commandline xmlns:q="http://libvirt.org/schemas/domain/qemu/1&#46;0"><q:arg value="-x"/></q:commandline>"#),
        (Some(HostPaths), "<os><type>hvm</type><kernel>/boot/vmlinuz</kernel></os>"),
        (Some(HostPaths), "<os><type>hvm</type><initrd>/boot/initrd.img</initrd></os>"),
        (Some(HostPaths), "<os><type>hvm</type><dtb>/boot/x.dtb</dtb></os>"),
        (Some(HostPaths), r#"<os><type>hvm</type><loader readonly="yes" type="pflash">/usr/share/OVMF/OVMF_CODE.fd</loader></os>"#),
        (Some(HostPaths), "<os><type>hvm</type><nvram>/var/lib/libvirt/qemu/nvram/x_VARS.fd</nvram></os>"),
        (Some(HostPaths), r#"<os><type>hvm</type><nvram template="/etc/shadow"/></os>"#),
        (Some(HostPaths), r#"<os><type>hvm</type><acpi><table type="slic">/tmp/slic.dat</table></acpi></os>"#),
        (Some(QemuPassthrough), "<bootloader>/usr/bin/pygrub</bootloader>"),
        (Some(QemuPassthrough), r#"<seclabel type="none"/>"#),
        (Some(QemuPassthrough), r#"<seclabel model="none"/>"#),
        (Some(QemuPassthrough), "<resource><partition>/system.slice</partition></resource>"),
        (Some(QemuPassthrough), "<resource><partition>/machine/../system.slice</partition></resource>"),
        (Some(QemuPassthrough), "<resource><partition>/machinery</partition></resource>"),
        (Some(HostDevices), "<memoryBacking><hugepages/></memoryBacking>"),
        (Some(QemuPassthrough), r#"<seclabel type="static" model="dac" relabel="no"><label>+0:+0</label></seclabel>"#),
        (Some(QemuPassthrough), r#"<seclabel type="dynamic" model="selinux"><baselabel>system_u:system_r:unconfined_t:s0</baselabel></seclabel>"#),
        (Some(HostPaths), r#"<memoryBacking><source type="file"/><access mode="shared"/></memoryBacking>"#),
        (Some(HostPaths), r#"<sysinfo type="fwcfg"><entry name="opt/com.example/x" file="/etc/shadow"/></sysinfo>"#),
    ]
};

/// Children of `<devices>` that reach nothing of the host.
#[rustfmt::skip]
const ALLOWED_DEVICES: &[&str] = &[
    r#"<disk type="file" device="cdrom"><driver name="qemu" type="raw"/><target dev="hdc" bus="ide"/><readonly/></disk>"#,
    r#"<disk device="floppy"><target dev="fda"/></disk>"#,
    r#"<interface type="user"><model type="virtio"/></interface>"#,
    r#"<interface type="ethernet"><target dev="vnet7"/></interface>"#,
    r#"<emulator>/usr/bin/qemu-system-x86_64</emulator>"#,
    r#"<emulator>/usr/libexec/qemu-kvm</emulator>"#,
    r#"<serial type="pty"><source path="/dev/pts/3"/><target port="0"/></serial>"#,
    r#"<serial type="tcp"><source mode="bind" host="0.0.0.0" service="4555"/><protocol type="telnet"/></serial>"#,
    r#"<channel type="unix"><source mode="bind"/><target type="virtio" name="org.qemu.guest_agent.0"/></channel>"#,
    r#"<channel type="spicevmc"><target type="virtio" name="com.redhat.spice.0"/></channel>"#,
    r#"<redirdev bus="usb" type="spicevmc"/>"#,
    r#"<redirdev bus="usb" type="tcp"><source mode="connect" host="192.0.2.1" service="4000"/></redirdev>"#,
    r#"<smartcard mode="passthrough" type="spicevmc"/>"#,
    r#"<rng model="virtio"><backend model="random">/dev/urandom</backend></rng>"#,
    r#"<rng model="virtio"><backend model="builtin"/></rng>"#,
    r#"<graphics type="vnc" port="-1" autoport="yes" listen="0.0.0.0"><listen type="address" address="0.0.0.0"/></graphics>"#,
    r#"<graphics type="spice" autoport="yes"/>"#,
    r#"<video><model type="virtio" heads="1"/></video>"#,
    r#"<tpm model="tpm-crb"><backend type="emulator" version="2.0"/></tpm>"#,
    r#"<input type="tablet" bus="usb"/>"#,
    r#"<audio id="1" type="none"/>"#,
    r#"<memballoon model="virtio"/>"#,
    r#"<watchdog model="i6300esb" action="reset"/>"#,
    r#"<controller type="scsi" model="virtio-scsi"/>"#,
    r#"<vsock model="virtio"><cid auto="yes"/></vsock>"#,
];

/// Children of `<domain>` that reach nothing of the host.
#[rustfmt::skip]
const ALLOWED_DOMAIN: &[&str] = &[
    r#"<os firmware="efi"><type>hvm</type><loader secure="yes"/><nvram/></os>"#,
    r#"<seclabel type="dynamic" model="selinux" relabel="yes"/>"#,
    "<memoryBacking><nosharepages/><locked/></memoryBacking>",
    "<resource><partition>/machine</partition></resource>",
    "<resource><partition>/machine/rt</partition></resource>",
    "<resource><partition>/machine/nort/bay3</partition></resource>",
    r#"<sysinfo type="smbios"><system><entry name="manufacturer">ACME</entry></system></sysinfo>"#,
    r#"<cpu mode="host-passthrough"/>"#,
    r#"<metadata><app:c xmlns:app="urn:app"><devices><hostdev/><disk type="block"/></devices></app:c></metadata>"#,
    "<features><acpi/><apic/></features>",
];

/// The test cases as (before `<devices>`, inside `<devices>`, flag).
fn rejected_cases() -> Vec<(String, String, Option<PolicyFlag>)> {
    let devices = REJECTED_DEVICES
        .iter()
        .map(|&(flag, xml)| (String::new(), format!("    {xml}"), flag));
    let domain = REJECTED_DOMAIN
        .iter()
        .map(|&(flag, xml)| (format!("  {xml}"), String::new(), flag));
    devices.chain(domain).collect()
}

#[test]
fn each_host_reaching_element_is_rejected_and_allowed_by_its_flag_only() {
    for (extra, devices, flag) in rejected_cases() {
        let base = domain_with(&extra, &devices);
        let violations = device_policy_violations(&base, &DevicePolicy::default())
            .unwrap_or_else(|e| panic!("{base}: {e}"));
        assert_eq!(violations.len(), 1, "{base}\n{violations:#?}");
        assert_eq!(violations[0].allowed_by, flag, "{base}");
        let line = if extra.is_empty() { 6 } else { 4 };
        assert_eq!(violations[0].line, line, "{base}");

        let err = check_device_policy(&base, &DevicePolicy::default()).unwrap_err();
        assert!(matches!(err, DomainXmlError::PolicyViolations(ref v) if v.len() == 1));
        match flag {
            Some(flag) => {
                assert_eq!(check_device_policy(&base, &only(flag)), Ok(()), "{base}");
                assert!(check_device_policy(&base, &all_but(flag)).is_err(), "{base}");
                let how = match &violations[0].allowance {
                    Some(wanted) => {
                        format!("(a cluster admin allows it with \"{}\": ", wanted.kind.setting())
                    }
                    None => format!(
                        "(policy {}: a cluster admin allows it with {}, flag {})",
                        flag.field_name(),
                        flag.chart_value(),
                        flag.controller_flag()
                    ),
                };
                assert!(
                    err.to_string()
                        .contains(&format!("; not allowed in this namespace {how}")),
                    "{err}"
                );
            }
            None => {
                assert!(
                    check_device_policy(&base, &DevicePolicy::allow_all()).is_err(),
                    "{base}"
                );
                assert!(err.to_string().ends_with("; never allowed in a base XML"));
            }
        }
        assert!(
            render_domain_xml(
                &base,
                "x",
                uuid(GIVEN_UUID),
                &[],
                &no_auth(),
                &DevicePolicy::default()
            )
            .is_err()
        );
    }
}

#[test]
fn an_element_can_need_several_flags() {
    use PolicyFlag::*;
    let cases: &[(&str, &[PolicyFlag])] = &[
        (
            r#"<filesystem type="mount"><driver type="virtiofs"/><binary path="/tmp/my-virtiofsd"/><source dir="/srv"/><target dir="srv"/></filesystem>"#,
            &[HostPaths, QemuPassthrough],
        ),
        (
            r#"<disk type="file" device="disk"><source file="/x.img"><seclabel model="selinux" relabel="no"/></source><target dev="vdz"/></disk>"#,
            &[HostPaths, QemuPassthrough],
        ),
        (
            r#"<hostdev mode="subsystem" type="pci"><source><address bus="1"/></source><rom file="/tmp/vbios.bin"/></hostdev>"#,
            &[HostPaths, HostDevices],
        ),
    ];
    for &(devices, flags) in cases {
        let base = domain_with("", devices);
        let mut found: Vec<PolicyFlag> = device_policy_violations(&base, &DevicePolicy::default())
            .unwrap()
            .into_iter()
            .filter_map(|v| v.allowed_by)
            .collect();
        found.sort();
        let mut expected = flags.to_vec();
        expected.sort();
        assert_eq!(found, expected, "{base}");
        for &flag in flags {
            assert!(check_device_policy(&base, &only(flag)).is_err(), "{base}");
        }
        let mut policy = DevicePolicy::default();
        for &flag in flags {
            match flag {
                HostDevices => policy.allow_host_devices = true,
                HostPaths => policy.allow_host_paths = true,
                QemuPassthrough => policy.allow_qemu_passthrough = true,
            }
        }
        assert_eq!(check_device_policy(&base, &policy), Ok(()), "{base}");
    }
}

#[test]
fn elements_that_stay_inside_libvirt_pass_the_default_policy() {
    let devices = ALLOWED_DEVICES
        .iter()
        .map(|xml| domain_with("", &format!("    {xml}")));
    let domain = ALLOWED_DOMAIN
        .iter()
        .map(|xml| domain_with(&format!("  {xml}"), ""));
    for base in devices.chain(domain) {
        assert_eq!(
            device_policy_violations(&base, &DevicePolicy::default()),
            Ok(vec![]),
            "{base}"
        );
    }
    assert_eq!(check_device_policy(BASE, &DevicePolicy::default()), Ok(()));
}

#[test]
fn all_violations_are_reported_at_once_in_document_order() {
    let base = r#"<domain type="kvm" xmlns:qemu="http://libvirt.org/schemas/domain/qemu/1.0">
  <name>x</name>
  <memory>1048576</memory>
  <devices>
    <serial type="file">
      <source path="/tmp/out"/>
    </serial>
    <interface type="user"/>
    <hostdev mode="subsystem" type="usb"/>
  </devices>
  <qemu:commandline>
    <qemu:arg value="-no-shutdown"/>
  </qemu:commandline>
</domain>"#;
    let violations = device_policy_violations(base, &DevicePolicy::default()).unwrap();
    let summary: Vec<(usize, &str, Option<PolicyFlag>)> = violations
        .iter()
        .map(|v| (v.line, v.element.as_str(), v.allowed_by))
        .collect();
    assert_eq!(
        summary,
        [
            (5, "serial type=\"file\"", Some(PolicyFlag::HostPaths)),
            (9, "hostdev", Some(PolicyFlag::HostDevices)),
            (11, "qemu:commandline", Some(PolicyFlag::QemuPassthrough)),
        ]
    );
    let err = render_domain_xml(
        base,
        "x",
        uuid(GIVEN_UUID),
        &two_disks(),
        &cephx(),
        &DevicePolicy::default(),
    )
    .unwrap_err();
    let message = err.to_string();
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 3, "{message}");
    assert_eq!(
        lines[1],
        "base XML line 9: <hostdev> passes a host device to the guest; not allowed in this namespace (policy allowHostDevices: a cluster admin allows it with controller.allowHostDevicesIn, flag --allow-host-devices-in)"
    );
    assert_eq!(
        lines[0],
        "base XML line 5: <serial type=\"file\"> writes guest output into a host file; not allowed in this namespace (policy allowHostPaths: a cluster admin allows it with controller.allowHostPathsIn, flag --allow-host-paths-in)"
    );
    assert!(lines[2].starts_with("base XML line 11: <qemu:commandline> is in libvirt's QEMU namespace"));

    // with everything allowed it renders, and the pass-through is kept as written
    let rendered = render_domain_xml(
        base,
        "x",
        uuid(GIVEN_UUID),
        &two_disks(),
        &cephx(),
        &DevicePolicy::allow_all(),
    )
    .unwrap();
    assert!(rendered.xml.contains("<qemu:arg value=\"-no-shutdown\"/>"));
}

#[test]
fn default_policy_denies_everything() {
    let policy = DevicePolicy::default();
    for flag in [
        PolicyFlag::HostDevices,
        PolicyFlag::HostPaths,
        PolicyFlag::QemuPassthrough,
    ] {
        assert!(!policy.allows(flag));
        assert!(DevicePolicy::allow_all().allows(flag));
        assert!(only(flag).allows(flag));
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing: malformed, wrong root, DOCTYPE and entities

fn parse_err(xml: &str) -> DomainXmlError {
    extract_uuid(xml).expect_err(xml)
}

#[test]
fn malformed_xml_is_rejected_with_line_and_column() {
    let cases: &[(&str, usize)] = &[
        ("<domain>\n  <devices>\n  </domain>", 3),
        ("<domain>\n  <name>x</name>\n  <memory>1", 3),
        ("<domain>\n  <name>x</nam>\n</domain>", 2),
        ("<domain>\n  <a x=\"1\" x=\"2\"/>\n</domain>", 2),
        ("<domain>\n  <a x=1/>\n</domain>", 2),
        ("<domain>\n  <a x=\"a<b\"/>\n</domain>", 2),
        ("<domain>\n  <a>fish & chips</a>\n</domain>", 2),
        ("<domain>\n  <q:a/>\n</domain>", 2),
        ("<domain>\n  <a q:x=\"1\"/>\n</domain>", 2),
        ("<domain>\n  <1a/>\n</domain>", 2),
        ("<domain>\n  <a>&#0;</a>\n</domain>", 2),
        ("<domain>\n  <a>&#xD800;</a>\n</domain>", 2),
        ("<domain>\n  <a>\u{1}</a>\n</domain>", 2),
        ("<domain>\n  <!-- a -- b -->\n</domain>", 2),
        ("<domain>\n  <a>]]></a>\n</domain>", 2),
        ("<domain>\n  <a xmlns:p=\"\"/>\n</domain>", 2),
        ("\n<?xml version=\"1.0\"?><domain/>", 2),
        ("<domain/>\n</domain>", 2),
        ("<domain>\n  <a>\n</domain>", 3),
    ];
    for &(xml, line) in cases {
        match parse_err(xml) {
            DomainXmlError::Malformed { line: l, .. } => assert_eq!(l, line, "{xml:?}"),
            other => panic!("{xml:?}: {other:?}"),
        }
    }
    let message = parse_err("<domain>\n  <name>x</nam>\n</domain>").to_string();
    assert!(message.starts_with("base XML line 2, column "), "{message}");
    assert!(message.contains("malformed XML"), "{message}");
}

#[test]
fn documents_without_element_are_rejected() {
    for xml in ["", "   \n", "<!-- only a comment -->", "<?xml version=\"1.0\"?>"] {
        assert_eq!(parse_err(xml), DomainXmlError::NoRoot, "{xml:?}");
    }
}

#[test]
fn root_must_be_a_domain_without_namespace() {
    assert_eq!(
        parse_err("<network><name>x</name></network>"),
        DomainXmlError::NotADomain {
            line: 1,
            found: "network".into()
        }
    );
    assert_eq!(
        parse_err("<!-- c -->\n<x:domain xmlns:x=\"urn:x\"/>"),
        DomainXmlError::NotADomain {
            line: 2,
            found: "x:domain (in namespace urn:x)".into()
        }
    );
    assert!(matches!(
        parse_err("<domain xmlns=\"urn:x\"/>"),
        DomainXmlError::NotADomain { .. }
    ));
    let message = parse_err("<network/>").to_string();
    assert_eq!(
        message,
        "base XML line 1: the root element is <network>; a libvirt domain XML must have <domain>, without namespace, as root"
    );
}

#[test]
fn a_second_root_or_text_outside_the_root_is_rejected() {
    assert_eq!(
        parse_err("<domain/>\n<domain/>"),
        DomainXmlError::MultipleRoots {
            line: 2,
            found: "domain".into()
        }
    );
    assert_eq!(
        parse_err("<domain></domain>\n<x>y</x>"),
        DomainXmlError::MultipleRoots {
            line: 2,
            found: "x".into()
        }
    );
    assert_eq!(
        parse_err("<domain/>\ntrailing"),
        DomainXmlError::TextOutsideRoot { line: 1 }
    );
    assert!(matches!(
        parse_err("leading<domain/>"),
        DomainXmlError::TextOutsideRoot { line: 1 }
    ));
}

#[test]
fn doctype_and_entities_are_rejected() {
    let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
]>
<domain><name>&lol2;</name></domain>"#;
    assert_eq!(parse_err(laughs), DomainXmlError::Doctype { line: 2 });
    let xxe = "<!DOCTYPE domain SYSTEM \"file:///etc/shadow\"><domain/>";
    assert_eq!(parse_err(xxe), DomainXmlError::Doctype { line: 1 });
    assert_eq!(
        parse_err("<domain>\n<name>&xxe;</name></domain>"),
        DomainXmlError::UndefinedEntity {
            line: 2,
            name: "xxe".into()
        }
    );
    assert_eq!(
        parse_err("<domain>\n<name>&nbsp;</name></domain>"),
        DomainXmlError::UndefinedEntity {
            line: 2,
            name: "nbsp".into()
        }
    );
    assert_eq!(
        parse_err("<domain>\n\n<a b=\"&ent;\"/></domain>"),
        DomainXmlError::UndefinedEntity {
            line: 3,
            name: "ent".into()
        }
    );
    // predefined entities and character references are fine
    assert_eq!(
        extract_uuid("<domain><a b=\"&lt;&#65;&#x42;\">&amp;&apos;&quot;&gt;&#233;</a></domain>"),
        Ok(None)
    );
    let message = parse_err("<domain>&xxe;</domain>").to_string();
    assert!(message.starts_with("base XML line 1: the entity reference &xxe; is not allowed"));
}

#[test]
fn only_utf8_declarations_are_accepted() {
    assert_eq!(
        parse_err("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?>\n<domain/>"),
        DomainXmlError::UnsupportedEncoding {
            line: 1,
            encoding: "ISO-8859-1".into()
        }
    );
    for ok in [
        "<?xml version=\"1.0\"?><domain/>",
        "<?xml version='1.0' encoding='utf-8'?>\n<domain/>",
        "<?xml version=\"1.0\" encoding=\"UTF8\" standalone=\"yes\"?><domain/>",
    ] {
        assert_eq!(extract_uuid(ok), Ok(None), "{ok}");
    }
}

#[test]
fn nesting_is_bounded() {
    let depth = tree::MAX_DEPTH + 1;
    let xml = format!("<domain>{}{}</domain>", "<a>".repeat(depth), "</a>".repeat(depth));
    assert!(matches!(parse_err(&xml), DomainXmlError::TooDeep { .. }));
    let ok_depth = tree::MAX_DEPTH - 1;
    let xml = format!(
        "<domain>{}{}</domain>",
        "<a>".repeat(ok_depth),
        "</a>".repeat(ok_depth)
    );
    assert_eq!(extract_uuid(&xml), Ok(None));
}

// ---------------------------------------------------------------------------------------------
// Memory

fn memory_of(value: &str, unit: Option<&str>) -> Result<u64, DomainXmlError> {
    let unit = unit.map_or(String::new(), |u| format!(" unit=\"{u}\""));
    extract_memory_kib(&format!("<domain>\n  <memory{unit}>{value}</memory>\n</domain>"))
}

#[test]
fn memory_honours_libvirt_units() {
    let cases: &[(&str, Option<&str>, u64)] = &[
        ("1048576", None, 1_048_576),
        ("1048576", Some(""), 1_048_576),
        (" 524288\n", Some("KiB"), 524_288),
        ("4", Some("k"), 4),
        ("4", Some("K"), 4),
        ("1", Some("KB"), 1),
        ("2048", Some("b"), 2),
        ("1025", Some("bytes"), 2),
        ("1", Some("byte"), 1),
        ("1024", Some("MiB"), 1_048_576),
        ("1024", Some("M"), 1_048_576),
        ("1024", Some("mib"), 1_048_576),
        ("1", Some("MB"), 977),
        ("2", Some("GiB"), 2_097_152),
        ("2", Some("G"), 2_097_152),
        ("1", Some("GB"), 976_563),
        ("1", Some("TiB"), 1_073_741_824),
        ("1", Some("T"), 1_073_741_824),
        ("1", Some("TB"), 976_562_500),
        ("1", Some("PiB"), 1_099_511_627_776),
        ("1", Some("EiB"), 1_125_899_906_842_624),
    ];
    for &(value, unit, kib) in cases {
        assert_eq!(memory_of(value, unit), Ok(kib), "{value} {unit:?}");
    }
}

#[test]
fn bad_memory_is_rejected() {
    for (value, unit) in [
        ("", None),
        ("abc", None),
        ("-1", None),
        ("1.5", Some("GiB")),
        ("0x10", None),
        ("0", None),
        ("99999999999999999999999", None),
        ("8", Some("EiB")),
        ("1", Some("parsec")),
        ("1", Some("Kib2")),
    ] {
        let err = memory_of(value, unit).expect_err(value);
        assert!(
            matches!(err, DomainXmlError::InvalidMemory { line: 2, .. }),
            "{value} {unit:?}: {err:?}"
        );
        assert!(err.to_string().starts_with("base XML line 2: "), "{err}");
    }
    assert_eq!(
        extract_memory_kib("<domain><vcpu>1</vcpu></domain>"),
        Err(DomainXmlError::MissingMemory)
    );
}

#[test]
fn numa_cells_define_the_memory_when_present() {
    let xml = r#"<domain>
  <memory unit="GiB">8</memory>
  <cpu>
    <numa>
      <cell id="0" cpus="0-1" memory="1" unit="GiB"/>
      <cell id="1" cpus="2-3" memory="524288"/>
    </numa>
  </cpu>
</domain>"#;
    assert_eq!(extract_memory_kib(xml), Ok(1_048_576 + 524_288));
}

#[test]
fn validate_base_xml_summarizes_an_acceptable_base() {
    assert_eq!(
        validate_base_xml(BASE, &DevicePolicy::default()),
        Ok(BaseXmlSummary {
            uuid: None,
            memory_kib: 2 * 1024 * 1024
        })
    );
    let with_uuid = BASE.replace("<name>whatever</name>", &format!("<uuid>{GIVEN_UUID}</uuid>"));
    assert_eq!(
        validate_base_xml(&with_uuid, &DevicePolicy::default()).map(|s| s.uuid),
        Ok(Some(uuid(GIVEN_UUID)))
    );
    let no_memory = BASE.replace("<memory unit=\"GiB\">2</memory>", "");
    assert_eq!(
        validate_base_xml(&no_memory, &DevicePolicy::default()),
        Err(DomainXmlError::MissingMemory)
    );
}

// ---------------------------------------------------------------------------------------------
// Inputs of the operator

#[test]
fn unusable_operator_inputs_are_rejected() {
    let policy = DevicePolicy::default();
    let id = uuid(GIVEN_UUID);
    for name in ["", "a/b", "a\nb", " a"] {
        let err = render_domain_xml(BASE, name, id, &[], &no_auth(), &policy).unwrap_err();
        assert!(
            matches!(err, DomainXmlError::InvalidInput { what: "VM name", .. }),
            "{name:?}"
        );
    }
    for disk in [
        DiskSpec {
            pool: "".into(),
            ..rbd_disk(None, "i", DiskBus::Virtio)
        },
        DiskSpec {
            pool: "rb d".into(),
            ..rbd_disk(None, "i", DiskBus::Virtio)
        },
        rbd_disk(None, "img@snap", DiskBus::Virtio),
        rbd_disk(Some("a/b"), "img", DiskBus::Virtio),
        rbd_disk(None, "", DiskBus::Virtio),
    ] {
        let err =
            render_domain_xml(BASE, "x", id, std::slice::from_ref(&disk), &no_auth(), &policy).unwrap_err();
        assert!(matches!(err, DomainXmlError::InvalidInput { .. }), "{disk:?}");
    }
    let bad_ceph = [
        CephAccess {
            monitors: vec![("10.0.0.1".into(), 0)],
            auth: None,
        },
        CephAccess {
            monitors: vec![("".into(), 6789)],
            auth: None,
        },
        CephAccess {
            monitors: vec![],
            auth: Some(CephAuthRef {
                username: "client.libvirt".into(),
                secret_uuid: id,
            }),
        },
    ];
    for ceph in bad_ceph {
        let err = render_domain_xml(BASE, "x", id, &two_disks(), &ceph, &policy).unwrap_err();
        assert!(matches!(err, DomainXmlError::InvalidInput { .. }), "{ceph:?}");
    }
}

#[test]
fn disk_bus_names_round_trip() {
    for bus in [DiskBus::Virtio, DiskBus::Scsi, DiskBus::Sata, DiskBus::Ide] {
        assert_eq!(bus.to_string().parse::<DiskBus>(), Ok(bus));
    }
    assert!("usb".parse::<DiskBus>().is_err());
    assert_eq!(DiskBus::default(), DiskBus::Virtio);
}

// ---------------------------------------------------------------------------------------------
// Robustness

#[test]
fn mangled_inputs_never_panic_and_whatever_renders_is_well_formed() {
    let policy = DevicePolicy::allow_all();
    for base in [BASE, PRESERVED] {
        for (i, c) in base.char_indices() {
            let truncated = base[..i].to_owned();
            let without_char = format!("{}{}", &base[..i], &base[i + c.len_utf8()..]);
            for variant in [truncated, without_char] {
                let _ = device_policy_violations(&variant, &policy);
                let _ = extract_memory_kib(&variant);
                if let Ok(rendered) = render_domain_xml(
                    &variant,
                    "guest0",
                    uuid(GIVEN_UUID),
                    &two_disks(),
                    &cephx(),
                    &policy,
                ) {
                    let doc = tree::parse(&rendered.xml)
                        .unwrap_or_else(|e| panic!("{variant}\n=> {}\n{e}", rendered.xml));
                    assert_eq!(write::write_document(&doc), rendered.xml);
                    assert_eq!(extract_uuid(&rendered.xml), Ok(Some(rendered.uuid)));
                }
            }
        }
    }
}

#[test]
fn policy_checks_report_parse_errors_as_such() {
    assert!(matches!(
        check_device_policy("<domain><hostdev></domain>", &DevicePolicy::default()),
        Err(DomainXmlError::Malformed { .. })
    ));
    assert_eq!(
        device_policy_violations("<network/>", &DevicePolicy::allow_all()),
        Err(DomainXmlError::NotADomain {
            line: 1,
            found: "network".into()
        })
    );
}

#[test]
fn copies_lose_only_their_uuid() {
    let base = "<domain type='kvm'><name>a</name><uuid>6c0d3ef2-5b55-4a49-9c1c-6e2f5d0c8a11</uuid><memory unit='MiB'>64</memory><devices><serial type='pty'/></devices></domain>";
    let copy = without_uuid(base).unwrap();
    assert_eq!(extract_uuid(&copy).unwrap(), None);
    assert!(copy.contains("<name>a</name>"));
    assert!(copy.contains("<serial type='pty'/>"));
    assert_eq!(extract_memory_kib(&copy).unwrap(), 64 * 1024);
    // Without a <uuid>: unchanged apart from the layout.
    assert_eq!(extract_uuid(&without_uuid(&copy).unwrap()).unwrap(), None);
}

#[test]
fn memory_device_huge_pages_and_tpm_state_paths_need_a_policy() {
    let xml = |inner: &str| {
        format!(
            "<domain type='kvm'><name>x</name><memory unit='MiB'>128</memory><devices>{inner}</devices></domain>"
        )
    };
    let dimm = xml(
        "<memory model='dimm'><source><pagesize unit='KiB'>2048</pagesize></source><target><size unit='MiB'>128</size></target></memory>",
    );
    assert!(check_device_policy(&dimm, &DevicePolicy::default()).is_err());
    assert!(check_device_policy(&dimm, &DevicePolicy::with_profile(Profile::Seapath)).is_ok());
    let tpm =
        xml("<tpm model='tpm-crb'><backend type='emulator'><source type='dir' path='/etc'/></backend></tpm>");
    assert!(check_device_policy(&tpm, &DevicePolicy::default()).is_err());
    let plain = xml("<tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>");
    assert!(check_device_policy(&plain, &DevicePolicy::default()).is_ok());
}
