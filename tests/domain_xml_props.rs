//! Property tests of the base-XML layer (pure: no test bed).
//!
//! Inputs: domain XMLs built from the elements the device policy knows (disks of every
//! type/device/source, interfaces of every type, host devices, file systems, character devices,
//! emulators, `<qemu:commandline>`, cgroup partitions, hugepages, security labels, firmware
//! paths, ...), with adversarial values (`..`, `//`, control characters, character references,
//! CDATA, comments inside paths, prefixes and namespaces on elements and attributes, duplicated
//! elements and attributes, huge values), byte-level mutations of them, and arbitrary strings.
//!
//! Properties:
//! - nothing the controller calls panics, whatever the input and policy;
//! - under the default policy, a base XML that is accepted, and the domain generated from it,
//!   reach nothing of the host, as judged by [`host_reach`]: an oracle written from libvirt's
//!   domain format on another XML parser (roxmltree), not from the operator's code;
//! - the generated domain parses again with the same UUID, memory and owner, passes the policy
//!   but for the operator's own RBD disks, and generating it again from itself changes nothing.
//!
//! `SEAPATH_PROPTEST_MINUTES=10 cargo test --test domain_xml_props -- --nocapture` runs it for
//! ten minutes (see tests/proptest_support and hack/proptest.sh).

mod proptest_support;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use seapath_operator::domain_xml::{
    CephAccess, CephAuthRef, DevicePolicy, DiskBus, DiskSpec, DomainOwner, DomainXmlError, Profile,
    QEMU_NAMESPACE, check_device_policy, device_policy_violations, extract_memory_kib, extract_owner,
    extract_uuid, render_domain_xml_with_uuid, validate_base_xml, without_uuid,
};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The oracle

/// Emulators libvirt may run without an allowance (the defaults): the host's QEMU binaries.
fn default_emulator(path: &str) -> bool {
    matches!(
        path,
        "/usr/bin/kvm" | "/usr/bin/qemu-kvm" | "/usr/libexec/qemu-kvm"
    ) || path
        .strip_prefix("/usr/bin/qemu-system-")
        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
}

/// A cgroup partition at or below `/machine`, as a normal absolute path.
fn default_partition(path: &str) -> bool {
    let normal = path
        .strip_prefix('/')
        .is_some_and(|rest| rest.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
    normal && (path == "/machine" || path.starts_with("/machine/"))
}

type Node<'a, 'i> = roxmltree::Node<'a, 'i>;

fn children<'a, 'i>(node: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children().filter(Node::is_element)
}

fn named<'a, 'i: 'a>(node: Node<'a, 'i>, local: &'static str) -> impl Iterator<Item = Node<'a, 'i>> {
    children(node).filter(move |c| c.tag_name().name() == local)
}

/// Every value of the attributes with local name `local` (libvirt's `xmlGetProp` ignores
/// namespaces, so any of them may be the one it reads).
fn attrs(node: Node<'_, '_>, local: &str) -> Vec<String> {
    node.attributes()
        .filter(|a| a.name() == local)
        .map(|a| a.value().to_owned())
        .collect()
}

fn attr_is(node: Node<'_, '_>, local: &str, values: &[&str]) -> bool {
    attrs(node, local).iter().any(|v| values.contains(&v.as_str()))
}

fn has_attr(node: Node<'_, '_>, local: &str) -> bool {
    !attrs(node, local).is_empty()
}

/// The character data directly inside an element (text and CDATA).
fn text(node: Node<'_, '_>) -> String {
    node.children()
        .filter(Node::is_text)
        .filter_map(|t| t.text())
        .collect()
}

fn blank(s: &str) -> bool {
    s.chars().all(|c| matches!(c, ' ' | '\t' | '\r' | '\n'))
}

fn descendants_any(node: Node<'_, '_>, pred: &dyn Fn(Node<'_, '_>) -> bool) -> bool {
    node.descendants().skip(1).filter(Node::is_element).any(pred)
}

/// What an XML that libvirt would read reaches of the host, without any allowance; `rbd_disks`
/// are the RBD source names of the disks the operator itself appends (allowed in the generated
/// domain). Empty: nothing. An XML that does not parse is an error.
fn host_reach(xml: &str, rbd_disks: &[String]) -> Result<Vec<String>, String> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, options).map_err(|e| e.to_string())?;
    let root = doc.root_element();
    let mut found = Vec::new();
    let mut flag = |node: Node<'_, '_>, what: &str| {
        found.push(format!(
            "<{}> (byte {}): {what}",
            node.tag_name().name(),
            node.range().start
        ));
    };
    if root.tag_name().name() != "domain" || root.tag_name().namespace().is_some() {
        return Err("root is not <domain>".into());
    }
    for top in children(root) {
        let local = top.tag_name().name();
        if local == "metadata" {
            continue; // libvirt keeps it opaque
        }
        for node in top.descendants().filter(Node::is_element) {
            if node.tag_name().namespace() == Some(QEMU_NAMESPACE) {
                flag(node, "QEMU namespace");
            }
        }
        match local {
            "os" => {
                for c in children(top) {
                    match c.tag_name().name() {
                        "kernel" | "initrd" | "dtb" | "shim" | "loader" if !blank(&text(c)) => {
                            flag(c, "host boot file")
                        }
                        "nvram"
                            if !blank(&text(c))
                                || has_attr(c, "template")
                                || children(c).next().is_some() =>
                        {
                            flag(c, "host NVRAM path")
                        }
                        "acpi" => {
                            for t in named(c, "table") {
                                if !blank(&text(t)) {
                                    flag(t, "host ACPI table")
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            "bootloader" if !blank(&text(top)) => flag(top, "host boot loader program"),
            "seclabel" => {
                if attr_is(top, "type", &["none", "static"]) || attr_is(top, "model", &["none"]) {
                    flag(top, "confinement off or chosen");
                }
                if weak_seclabel(top) {
                    flag(top, "labels chosen");
                }
            }
            "resource" => {
                for p in named(top, "partition") {
                    let path = text(p);
                    if !blank(&path) && !default_partition(&path) {
                        flag(p, "host cgroup partition outside /machine");
                    }
                }
            }
            "memoryBacking" => {
                for c in children(top) {
                    if c.tag_name().name() == "hugepages" {
                        flag(c, "host huge pages");
                    }
                    if c.tag_name().name() == "source" && attr_is(c, "type", &["file"]) {
                        flag(c, "host memory files");
                    }
                }
            }
            "sysinfo" => {
                for e in named(top, "entry") {
                    if has_attr(e, "file") {
                        flag(e, "host file into fw_cfg");
                    }
                }
            }
            "devices" => {
                for device in children(top) {
                    device_reach(device, rbd_disks, &mut flag);
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

fn weak_seclabel(s: Node<'_, '_>) -> bool {
    attr_is(s, "relabel", &["no"])
        || children(s).any(|c| matches!(c.tag_name().name(), "label" | "imagelabel" | "baselabel"))
}

// One arm per device kind, each with its own conditions, reads as libvirt's format does.
#[allow(clippy::collapsible_match)]
fn device_reach(device: Node<'_, '_>, rbd_disks: &[String], flag: &mut dyn FnMut(Node<'_, '_>, &str)) {
    for d in device.descendants().skip(1).filter(Node::is_element) {
        match d.tag_name().name() {
            "rom" if has_attr(d, "file") => flag(d, "host option ROM"),
            "seclabel" if weak_seclabel(d) => flag(d, "device labels"),
            _ => {}
        }
    }
    let is = |t: &[&str]| attr_is(device, "type", t);
    match device.tag_name().name() {
        "emulator" => {
            if !default_emulator(&text(device)) {
                flag(device, "emulator outside the defaults");
            }
        }
        "disk" => {
            let kinds = attrs(device, "device");
            let removable = !kinds.is_empty() && kinds.iter().all(|k| k == "cdrom" || k == "floppy");
            let source = named(device, "source").next().is_some()
                || named(device, "backingStore")
                    .any(|b| descendants_any(b, &|n| n.tag_name().name() == "source"));
            if removable && !source {
                return;
            }
            let operators = attrs(device, "type") == ["network"]
                && kinds == ["disk"]
                && named(device, "source").count() == 1
                && named(device, "source").all(|s| {
                    attrs(s, "protocol") == ["rbd"]
                        && attrs(s, "name").len() == 1
                        && rbd_disks.contains(&attrs(s, "name")[0])
                })
                && named(device, "backingStore").next().is_none();
            if !operators {
                flag(device, "disk with media of the host");
            }
        }
        "filesystem" => flag(device, "host file system"),
        "hostdev" => flag(device, "host device"),
        "interface" => {
            if is(&["network", "bridge", "direct", "hostdev", "vdpa", "vhostuser"]) {
                flag(device, "host network");
            }
            if is(&["ethernet"]) && named(device, "target").any(|t| attr_is(t, "managed", &["no"])) {
                flag(device, "existing host tap");
            }
            for c in children(device) {
                match c.tag_name().name() {
                    "script" | "downscript" if has_attr(c, "path") => flag(c, "host script"),
                    "backend" if has_attr(c, "tap") || has_attr(c, "vhost") || has_attr(c, "logFile") => {
                        flag(c, "host device files or log")
                    }
                    _ => {}
                }
            }
        }
        "serial" | "parallel" | "console" | "channel" | "redirdev" => chardev_reach(device, flag),
        "smartcard" => {
            if attr_is(device, "mode", &["host", "host-certificates"]) {
                flag(device, "host smartcard");
            } else {
                chardev_reach(device, flag);
            }
        }
        "tpm" => {
            for b in named(device, "backend") {
                if attr_is(b, "type", &["passthrough", "external"]) {
                    flag(b, "host TPM or socket");
                }
                if named(b, "source").any(|s| has_attr(s, "path")) {
                    flag(b, "TPM state at a host path");
                }
            }
        }
        "input" => {
            if is(&["passthrough", "evdev"])
                || named(device, "source").any(|s| has_attr(s, "evdev") || has_attr(s, "dev"))
            {
                flag(device, "host input device");
            }
        }
        "rng" => {
            for b in named(device, "backend") {
                if attr_is(b, "model", &["egd"]) {
                    chardev_reach(b, flag);
                } else if attr_is(b, "model", &["random"]) {
                    let t = text(b);
                    let t = t.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'));
                    if !t.is_empty() && t != "/dev/urandom" && t != "/dev/random" {
                        flag(b, "host random device");
                    }
                }
            }
        }
        "graphics" => {
            if is(&["sdl", "desktop", "egl-headless"])
                || has_attr(device, "rendernode")
                || descendants_any(device, &|n| has_attr(n, "rendernode"))
                || named(device, "gl").any(|g| attr_is(g, "enable", &["yes"]))
            {
                flag(device, "host display or GPU");
            }
            if has_attr(device, "socket")
                || named(device, "listen").any(|l| has_attr(l, "socket"))
                || (is(&["dbus"]) && has_attr(device, "address"))
            {
                flag(device, "host socket path");
            }
        }
        "video" if descendants_any(device, &|n| has_attr(n, "rendernode")) => flag(device, "host GPU"),
        "audio"
            if !attrs(device, "type")
                .iter()
                .all(|t| matches!(t.as_str(), "none" | "spice" | "dbus")) =>
        {
            if is(&[
                "file",
                "alsa",
                "oss",
                "pulseaudio",
                "jack",
                "coreaudio",
                "sdl",
                "pipewire",
            ]) {
                flag(device, "host sound or file");
            }
        }
        "shmem" | "lease" | "pstore" => flag(device, "host memory or file"),
        "memory" => {
            for s in named(device, "source") {
                if named(s, "path").any(|p| !blank(&text(p))) {
                    flag(device, "host file mapped");
                }
                if named(s, "pagesize").next().is_some() {
                    flag(device, "host huge pages");
                }
            }
        }
        _ => {}
    }
}

fn chardev_reach(dev: Node<'_, '_>, flag: &mut dyn FnMut(Node<'_, '_>, &str)) {
    if attr_is(dev, "type", &["dev", "nmdm", "file", "pipe"]) {
        flag(dev, "host character device, file or pipe");
    }
    if attr_is(dev, "type", &["unix"]) && named(dev, "source").any(|s| has_attr(s, "path")) {
        flag(dev, "host socket path");
    }
    for log in named(dev, "log") {
        if has_attr(log, "file") {
            flag(log, "host log file");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The generators

fn s(x: &str) -> BoxedStrategy<String> {
    Just(x.to_owned()).boxed()
}

fn one_of(values: &[&str]) -> BoxedStrategy<String> {
    proptest::sample::select(values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>()).boxed()
}

/// Paths and path-like values, harmless and hostile.
fn value() -> BoxedStrategy<String> {
    prop_oneof![
        6 => one_of(&[
            "/etc/shadow", "/dev/sda", "/dev/urandom", "/dev/random", "/dev/hwrng", "/dev/dri/renderD128",
            "/var/lib/libvirt/images/a.qcow2", "/usr/bin/kvm", "/usr/bin/qemu-kvm", "/usr/libexec/qemu-kvm",
            "/usr/bin/qemu-system-x86_64", "/usr/bin/../bin/kvm", "//usr/bin/kvm", "/usr/bin/./kvm",
            "/usr/bin/qemu-system-x86_64/../../../tmp/evil", "/usr/bin/qemu-system-*", "/usr/bin/qemu-system-",
            "/usr/bin/qemu-system-x/", "/usr/bin/kvm/", "/usr/bin/qemu-system-..", "/machine", "/machine/a",
            "/machine/../system.slice", "/machine//x", "/machine/.", "/machinex", "/machine/a/../../etc", "/",
            "/run/openvswitch/vm-sockets/s", "/run/openvswitch/vm-sockets/../../x", "/tmp/sock",
            " /usr/bin/kvm", "/usr/bin/kvm ", "/usr/bin/kvm&#10;", "&#47;usr&#47;bin&#47;kvm", "/usr/bin/kv&#109;",
            "/usr/bin/kvm&#0;", "/usr/bin/kvm\u{1}", "/usr/bin/kvm\u{0}", "&amp;/etc", "/dev/urandom\t",
            "/dev/urandom&#x9;", "<![CDATA[/usr/bin/kvm]]>", "<![CDATA[/etc/shadow]]>", "/usr/bin/<!-- c -->kvm",
            "/usr/bin/kvm<?pi x?>", "&lt;x&gt;", "&nbsp;", "&xxe;", "\"", "'", "br0", "default", "eth0", "vnet0",
            "yes", "no", "file", "pty", "0x3b", "0", "1", "rbd/x", "pool/img", "",
        ]),
        1 => "[a-z/.]{0,12}",
        1 => "(/[a-z.]{0,3}){0,4}",
        1 => "\\PC{0,12}",
        1 => "[\\x00-\\x7f]{0,8}",
        1 => (1usize..70_000).prop_map(|n| "a".repeat(n)),
    ]
    .boxed()
}

/// An element name: plain, prefixed (declared or not), or in a default namespace.
fn tag(local: &'static str) -> BoxedStrategy<(String, String)> {
    prop_oneof![
        12 => Just((local.to_owned(), local.to_owned())),
        1 => Just((format!("p:{local}"), format!("p:{local}"))),
        1 => Just((format!("q:{local}"), format!("q:{local}"))),
        1 => Just((format!("u:{local}"), format!("u:{local}"))),
        1 => Just((format!("{local} xmlns=\"urn:other\""), local.to_owned())),
        1 => Just((format!("{local} xmlns=\"{QEMU_NAMESPACE}\""), local.to_owned())),
    ]
    .boxed()
}

/// ` name="value"`, sometimes prefixed, single-quoted or given twice.
fn attr(local: &'static str, values: BoxedStrategy<String>) -> BoxedStrategy<String> {
    (values.clone(), values, 0..8u8)
        .prop_map(move |(v, w, how)| match how {
            0 => format!(" p:{local}=\"{v}\""),
            1 => format!(" {local}='{v}'"),
            2 => format!(" {local}=\"{v}\" p:{local}=\"{w}\""),
            3 => format!(" {local}=\"{v}\" {local}=\"{w}\""),
            _ => format!(" {local}=\"{v}\""),
        })
        .boxed()
}

fn maybe(x: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![1 => Just(String::new()), 2 => x].boxed()
}

/// An element with optional attributes and children (or text).
fn el(
    local: &'static str,
    attributes: Vec<BoxedStrategy<String>>,
    content: BoxedStrategy<String>,
) -> BoxedStrategy<String> {
    let attributes: Vec<BoxedStrategy<String>> = attributes.into_iter().map(maybe).collect();
    (tag(local), attributes, content)
        .prop_map(|((open, close), attrs, content)| {
            let attrs = attrs.concat();
            if content.is_empty() {
                format!("<{open}{attrs}/>")
            } else {
                format!("<{open}{attrs}>{content}</{close}>")
            }
        })
        .boxed()
}

fn empty() -> BoxedStrategy<String> {
    s("")
}

fn many(items: Vec<BoxedStrategy<String>>, max: usize) -> BoxedStrategy<String> {
    prop::collection::vec(proptest::strategy::Union::new(items), 0..=max)
        .prop_map(|v| v.concat())
        .boxed()
}

fn typed(values: &[&str]) -> BoxedStrategy<String> {
    prop_oneof![8 => one_of(values), 1 => value()].boxed()
}

fn seclabel() -> BoxedStrategy<String> {
    el(
        "seclabel",
        vec![
            attr("type", typed(&["dynamic", "none", "static"])),
            attr("model", typed(&["selinux", "dac", "apparmor", "none"])),
            attr("relabel", typed(&["yes", "no"])),
        ],
        many(
            vec![
                el("label", vec![], value()),
                el("imagelabel", vec![], value()),
                el("baselabel", vec![], value()),
            ],
            1,
        ),
    )
}

fn source(attrs: &[&'static str]) -> BoxedStrategy<String> {
    let attributes = attrs.iter().map(|a| attr(a, value())).collect();
    el(
        "source",
        attributes,
        maybe(many(vec![seclabel(), el("address", pci_attrs(), empty())], 1)),
    )
}

fn pci_attrs() -> Vec<BoxedStrategy<String>> {
    vec![
        attr("type", typed(&["pci", "usb", "drive"])),
        attr("domain", typed(&["0x0000", "0", "00"])),
        attr("bus", typed(&["0x3b", "59", "073", "0x100"])),
        attr("slot", typed(&["0x00", "0x1f", "0x20"])),
        attr("function", typed(&["0x0", "7", "8"])),
    ]
}

fn disk() -> BoxedStrategy<String> {
    let backing = el(
        "backingStore",
        vec![attr("type", typed(&["file", "block", "network"]))],
        maybe(many(
            vec![
                source(&["file", "dev"]),
                el("format", vec![attr("type", typed(&["qcow2"]))], empty()),
            ],
            2,
        )),
    );
    el(
        "disk",
        vec![
            attr(
                "type",
                typed(&[
                    "file",
                    "block",
                    "dir",
                    "network",
                    "volume",
                    "nvme",
                    "vhostuser",
                    "bogus",
                ]),
            ),
            attr("device", typed(&["disk", "cdrom", "floppy", "lun"])),
        ],
        many(
            vec![
                el(
                    "driver",
                    vec![
                        attr("name", typed(&["qemu"])),
                        attr("type", typed(&["raw", "qcow2"])),
                    ],
                    empty(),
                ),
                source(&["file", "dev", "dir", "protocol", "name", "pool", "volume", "path"]),
                backing,
                el("mirror", vec![attr("file", value())], maybe(source(&["file"]))),
                el(
                    "target",
                    vec![
                        attr("dev", typed(&["hdc", "vda", "sda", "fda"])),
                        attr("bus", typed(&["ide", "virtio", "sata", "fdc"])),
                    ],
                    empty(),
                ),
                el("readonly", vec![], empty()),
            ],
            4,
        ),
    )
}

fn interface() -> BoxedStrategy<String> {
    el(
        "interface",
        vec![attr(
            "type",
            typed(&[
                "network",
                "bridge",
                "direct",
                "hostdev",
                "vdpa",
                "vhostuser",
                "ethernet",
                "user",
                "mcast",
                "server",
                "client",
                "udp",
                "null",
                "vds",
            ]),
        )],
        many(
            vec![
                source(&["bridge", "network", "dev", "path", "mode", "address", "port"]),
                el(
                    "target",
                    vec![attr("dev", value()), attr("managed", typed(&["yes", "no"]))],
                    empty(),
                ),
                el("script", vec![attr("path", value())], empty()),
                el("downscript", vec![attr("path", value())], empty()),
                el(
                    "backend",
                    vec![
                        attr("type", typed(&["passt", "default"])),
                        attr("tap", value()),
                        attr("vhost", value()),
                        attr("logFile", value()),
                    ],
                    empty(),
                ),
                el("model", vec![attr("type", typed(&["virtio", "e1000"]))], empty()),
                el(
                    "rom",
                    vec![attr("file", value()), attr("bar", typed(&["on", "off"]))],
                    empty(),
                ),
                el("portForward", vec![attr("proto", typed(&["tcp"]))], empty()),
                el(
                    "mac",
                    vec![attr("address", typed(&["52:54:00:00:00:01"]))],
                    empty(),
                ),
            ],
            4,
        ),
    )
}

fn hostdev() -> BoxedStrategy<String> {
    el(
        "hostdev",
        vec![
            attr("mode", typed(&["subsystem", "capabilities"])),
            attr("type", typed(&["pci", "usb", "scsi", "mdev", "storage", "net"])),
            attr("managed", typed(&["yes", "no"])),
        ],
        many(
            vec![el("source", vec![], maybe(el("address", pci_attrs(), empty())))],
            2,
        ),
    )
}

fn chardev(local: &'static str) -> BoxedStrategy<String> {
    el(
        local,
        vec![
            attr(
                "type",
                typed(&[
                    "pty",
                    "file",
                    "dev",
                    "pipe",
                    "unix",
                    "tcp",
                    "udp",
                    "null",
                    "vc",
                    "stdio",
                    "spicevmc",
                    "spiceport",
                    "nmdm",
                    "qemu-vdagent",
                    "dbus",
                ]),
            ),
            attr("mode", typed(&["host", "host-certificates", "passthrough"])),
        ],
        many(
            vec![
                source(&["path", "mode", "host", "service"]),
                el(
                    "log",
                    vec![attr("file", value()), attr("append", typed(&["on"]))],
                    empty(),
                ),
                el(
                    "target",
                    vec![
                        attr("type", typed(&["virtio", "serial"])),
                        attr("port", typed(&["0"])),
                    ],
                    empty(),
                ),
                el("protocol", vec![attr("type", typed(&["raw", "telnet"]))], empty()),
            ],
            3,
        ),
    )
}

fn other_device() -> BoxedStrategy<String> {
    prop_oneof![
        el("emulator", vec![], value()),
        el(
            "filesystem",
            vec![attr(
                "type",
                typed(&["mount", "block", "file", "template", "ram", "bind"])
            )],
            many(
                vec![
                    source(&["dir", "file", "dev", "name"]),
                    el("binary", vec![attr("path", value())], empty())
                ],
                2
            ),
        ),
        el(
            "tpm",
            vec![attr("model", typed(&["tpm-crb", "tpm-tis"]))],
            maybe(el(
                "backend",
                vec![attr("type", typed(&["emulator", "passthrough", "external"]))],
                maybe(many(
                    vec![
                        source(&["path", "type"]),
                        el("device", vec![attr("path", value())], empty())
                    ],
                    2
                )),
            )),
        ),
        el(
            "input",
            vec![attr(
                "type",
                typed(&["tablet", "passthrough", "evdev", "keyboard"])
            )],
            maybe(source(&["evdev", "dev"])),
        ),
        el(
            "rng",
            vec![attr("model", typed(&["virtio"]))],
            maybe(
                prop_oneof![
                    el(
                        "backend",
                        vec![attr("model", typed(&["random", "egd", "builtin"]))],
                        value()
                    ),
                    el(
                        "backend",
                        vec![
                            attr("model", typed(&["egd"])),
                            attr("type", typed(&["file", "unix", "tcp", "dev"]))
                        ],
                        maybe(source(&["path", "mode"]))
                    ),
                ]
                .boxed()
            ),
        ),
        el(
            "graphics",
            vec![
                attr(
                    "type",
                    typed(&["vnc", "spice", "sdl", "desktop", "egl-headless", "dbus", "rdp"])
                ),
                attr("socket", value()),
                attr("address", value()),
                attr("rendernode", value()),
            ],
            many(
                vec![
                    el(
                        "listen",
                        vec![
                            attr("type", typed(&["socket", "address"])),
                            attr("socket", value())
                        ],
                        empty()
                    ),
                    el(
                        "gl",
                        vec![attr("enable", typed(&["yes", "no"])), attr("rendernode", value())],
                        empty()
                    ),
                ],
                2,
            ),
        ),
        el(
            "video",
            vec![],
            maybe(el(
                "model",
                vec![attr("type", typed(&["virtio", "vga"]))],
                maybe(el("acceleration", vec![attr("rendernode", value())], empty()))
            )),
        ),
        el(
            "audio",
            vec![
                attr(
                    "type",
                    typed(&["none", "spice", "file", "alsa", "pulseaudio", "pipewire", "dbus"])
                ),
                attr("path", value())
            ],
            empty()
        ),
        el("shmem", vec![attr("name", value())], empty()),
        el(
            "lease",
            vec![],
            maybe(el("target", vec![attr("path", value())], empty()))
        ),
        el(
            "pstore",
            vec![attr("backend", typed(&["acpi-erst"]))],
            maybe(el("path", vec![], value()))
        ),
        el(
            "memory",
            vec![attr(
                "model",
                typed(&["dimm", "nvdimm", "virtio-pmem", "virtio-mem"])
            )],
            maybe(el(
                "source",
                vec![],
                maybe(many(
                    vec![
                        el("path", vec![], value()),
                        el("pagesize", vec![attr("unit", typed(&["KiB"]))], s("2048")),
                        el("nodemask", vec![], s("0"))
                    ],
                    2
                ))
            )),
        ),
        el(
            "smartcard",
            vec![attr("mode", typed(&["host", "host-certificates", "passthrough"]))],
            maybe(el("certificate", vec![], value()))
        ),
        el(
            "watchdog",
            vec![
                attr("model", typed(&["i6300esb"])),
                attr("action", typed(&["dump", "reset"]))
            ],
            empty()
        ),
        el(
            "controller",
            vec![
                attr("type", typed(&["usb", "scsi"])),
                attr("model", typed(&["vhost-scsi", "qemu-xhci"]))
            ],
            empty()
        ),
        el("vsock", vec![attr("model", typed(&["virtio"]))], empty()),
        el("hub", vec![attr("type", typed(&["usb"]))], empty()),
        el("panic", vec![attr("model", typed(&["isa"]))], empty()),
    ]
    .boxed()
}

fn device() -> BoxedStrategy<String> {
    prop_oneof![
        3 => disk(),
        3 => interface(),
        1 => hostdev(),
        1 => chardev("serial"),
        1 => chardev("console"),
        1 => chardev("channel"),
        1 => chardev("parallel"),
        1 => chardev("redirdev"),
        4 => other_device(),
        1 => seclabel(),
    ]
    .boxed()
}

fn top_level() -> BoxedStrategy<String> {
    let qemu_commandline = (0..3u8)
        .prop_map(|how| match how {
            0 => "<q:commandline><q:arg value=\"-device\"/><q:arg value=\"vfio-pci,host=3b:00.0\"/></q:commandline>".to_owned(),
            1 => format!("<commandline xmlns=\"{QEMU_NAMESPACE}\"><arg value=\"-S\"/></commandline>"),
            _ => format!("<x:override xmlns:x=\"{QEMU_NAMESPACE}\"><x:device alias=\"a\"/></x:override>"),
        })
        .boxed();
    prop_oneof![
        2 => qemu_commandline,
        2 => el("resource", vec![], maybe(el("partition", vec![], value()))),
        2 => el(
            "memoryBacking",
            vec![],
            maybe(many(
                vec![
                    el("hugepages", vec![], maybe(el("page", vec![attr("size", typed(&["2048"]))], empty()))),
                    el("source", vec![attr("type", typed(&["file", "anonymous", "memfd"]))], empty()),
                    el("access", vec![attr("mode", typed(&["shared"]))], empty()),
                ],
                2,
            )),
        ),
        2 => seclabel(),
        2 => el(
            "os",
            vec![attr("firmware", typed(&["efi"]))],
            many(
                vec![
                    el("type", vec![attr("arch", typed(&["x86_64"]))], s("hvm")),
                    el("kernel", vec![], value()),
                    el("initrd", vec![], value()),
                    el("loader", vec![attr("readonly", typed(&["yes"])), attr("type", typed(&["pflash"]))], maybe(value())),
                    el("nvram", vec![attr("template", value())], maybe(value())),
                    el("acpi", vec![], maybe(el("table", vec![attr("type", typed(&["slic"]))], value()))),
                    el("boot", vec![attr("dev", typed(&["hd", "cdrom"]))], empty()),
                ],
                3,
            ),
        ),
        1 => el("bootloader", vec![], value()),
        1 => el("sysinfo", vec![attr("type", typed(&["fwcfg", "smbios"]))], maybe(el("entry", vec![attr("name", typed(&["opt/x"])), attr("file", value())], value()))),
        1 => el("metadata", vec![], maybe(prop_oneof![device(), s("<q:commandline/>")].boxed())),
        1 => el("uuid", vec![], typed(&["3f2504e0-4f89-11d3-9a0c-0305e82c3301", "", "00000000-0000-0000-0000-000000000000", "3F2504E04F8911D39A0C0305E82C3301"])),
        1 => el("vcpu", vec![attr("placement", typed(&["static"]))], s("2")),
        1 => el("blkiotune", vec![], maybe(el("device", vec![], maybe(el("path", vec![], value()))))),
        1 => el("memory", vec![attr("unit", typed(&["MiB", "KiB", "GiB", "b"]))], typed(&["128", "0", "1", "-1", "99999999999999999999"])),
        1 => s("<!-- comment --><?pi data?>"),
        1 => s("<![CDATA[ text ]]>"),
    ]
    .boxed()
}

/// A domain XML: name, memory, top-level elements and devices in any order, some repeated.
fn domain() -> BoxedStrategy<String> {
    let devices = prop::collection::vec(device(), 0..5).prop_flat_map(|v| Just(v).prop_shuffle());
    let top = prop::collection::vec(top_level(), 0..4);
    (devices, top, 0..4u8, tag("devices"), any::<bool>(), any::<bool>())
        .prop_flat_map(|(devices, top, prolog, (dopen, dclose), with_devices, declare)| {
            let mut items = top;
            items.push("<name>guest</name>".to_owned());
            items.push("<memory unit='MiB'>128</memory>".to_owned());
            if with_devices {
                items.push(format!("<{dopen}>{}</{dclose}>", devices.concat()));
            }
            let prolog = match prolog {
                0 => "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
                1 => "<!-- c -->\n",
                2 => "<?xml version=\"1.0\" encoding=\"latin1\"?>",
                _ => "",
            };
            let decl = if declare {
                format!(" xmlns:p=\"urn:p\" xmlns:q=\"{QEMU_NAMESPACE}\"")
            } else {
                String::new()
            };
            Just(items).prop_shuffle().prop_map(move |items| {
                format!(
                    "{prolog}<domain type=\"kvm\"{decl}>\n{}\n</domain>\n",
                    items.join("\n")
                )
            })
        })
        .boxed()
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, String),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

fn mutate(xml: &str, mutations: &[Mutation]) -> String {
    let mut bytes = xml.as_bytes().to_vec();
    for m in mutations {
        let n = bytes.len().max(1);
        match m {
            Mutation::Flip(i, bit) => {
                if !bytes.is_empty() {
                    bytes[i % n] ^= 1 << (bit % 8);
                }
            }
            Mutation::Truncate(i) => bytes.truncate(i % n),
            Mutation::Insert(i, frag) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, frag.bytes());
            }
            Mutation::Delete(i, len) => {
                let at = i % n;
                let end = (at + len % 64).min(bytes.len());
                if at < end {
                    bytes.drain(at..end);
                }
            }
            Mutation::Duplicate(i, len) => {
                let at = i % n;
                let end = (at + len % 256).min(bytes.len());
                if at < end {
                    let copy = bytes[at..end].to_vec();
                    bytes.splice(end..end, copy);
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn mutation() -> BoxedStrategy<Mutation> {
    let fragment = prop_oneof![
        one_of(&[
            "<",
            ">",
            "/>",
            "&",
            "&amp;",
            "&#0;",
            "\"",
            "'",
            "]]>",
            "<!--",
            "-->",
            "<hostdev/>",
            "</devices>",
            "<devices>",
            "xmlns:q=\"http://libvirt.org/schemas/domain/qemu/1.0\"",
            " type=\"file\"",
            "\0",
            ":"
        ]),
        device(),
    ];
    prop_oneof![
        any::<(usize, u8)>().prop_map(|(i, b)| Mutation::Flip(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), fragment).prop_map(|(i, f)| Mutation::Insert(i, f)),
        any::<(usize, usize)>().prop_map(|(i, l)| Mutation::Delete(i, l)),
        any::<(usize, usize)>().prop_map(|(i, l)| Mutation::Duplicate(i, l)),
    ]
    .boxed()
}

fn input() -> BoxedStrategy<String> {
    prop_oneof![
        6 => domain(),
        3 => (domain(), prop::collection::vec(mutation(), 1..4)).prop_map(|(x, m)| mutate(&x, &m)),
        1 => any::<String>(),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// The properties

fn disks() -> Vec<DiskSpec> {
    vec![
        DiskSpec {
            pool: "rbd".into(),
            namespace: Some("tenant".into()),
            image: "system_guest".into(),
            bus: DiskBus::Virtio,
        },
        DiskSpec {
            pool: "rbd".into(),
            namespace: None,
            image: "data_guest_0".into(),
            bus: DiskBus::Scsi,
        },
    ]
}

fn ceph() -> CephAccess {
    CephAccess {
        monitors: vec![("10.0.0.1".into(), 6789)],
        auth: Some(CephAuthRef {
            username: "seapath".into(),
            secret_uuid: Uuid::from_u128(0x1234),
        }),
    }
}

fn owner() -> DomainOwner {
    DomainOwner {
        namespace: "tenant".into(),
        name: "guest".into(),
        uid: "0b7c8d2e-0000-4000-8000-000000000001".into(),
    }
}

/// What the controller calls, under `policy`: nothing may panic. Returns the rendering.
fn exercise(xml: &str, policy: &DevicePolicy, disks: &[DiskSpec]) -> Option<String> {
    let _ = check_device_policy(xml, policy);
    let _ = device_policy_violations(xml, policy);
    let _ = extract_uuid(xml);
    let _ = extract_memory_kib(xml);
    let _ = extract_owner(xml);
    if let Ok(copy) = without_uuid(xml) {
        let _ = validate_base_xml(&copy, policy);
    }
    let uuid = Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0001);
    let rendered = render_domain_xml_with_uuid(xml, "guest", uuid, disks, &ceph(), policy, Some(&owner()));
    validate_base_xml(xml, policy).ok()?;
    match rendered {
        Ok(rendered) => Some(rendered.xml),
        // A disk of the base XML on a target the operator's disks take.
        Err(DomainXmlError::TargetConflict { .. }) => None,
        Err(other) => panic!("a base XML that validates does not render: {other}"),
    }
}

fn check(xml: String, stats: &Stats) -> Result<(), TestCaseError> {
    // Other policies: no panic.
    for policy in [
        DevicePolicy::allow_all(),
        DevicePolicy::with_profile(Profile::Seapath),
    ] {
        exercise(&xml, &policy, &disks());
    }
    let policy = DevicePolicy::default();
    let disks = disks();
    let names: Vec<String> = disks.iter().map(DiskSpec::rbd_source_name).collect();
    let Some(rendered) = exercise(&xml, &policy, &disks) else {
        return Ok(());
    };
    stats.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // (b) No host escape, in the base XML nor in the generated domain. An XML the oracle's
    // (strict) parser refuses is one libvirt's refuses too: counted, not an escape.
    match (host_reach(&xml, &[]), host_reach(&rendered, &names)) {
        (Ok(base), Ok(generated)) => {
            prop_assert!(base.is_empty(), "host escape in an accepted base XML: {base:?}");
            prop_assert!(
                generated.is_empty(),
                "host escape in the generated domain: {generated:?}\n{rendered}"
            );
        }
        (base, generated) => {
            if stats
                .unparsable
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                == 0
            {
                println!(
                    "proptest domain_xml: accepted, but not well-formed for the oracle's parser ({:?} / {:?}): {xml:?}",
                    base.err(),
                    generated.err()
                );
            }
        }
    }

    // (c) The generated domain parses again and says what was asked.
    let summary = validate_base_xml(&xml, &policy).expect("validated above");
    let uuid = Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0001);
    prop_assert_eq!(extract_uuid(&rendered).ok(), Some(Some(uuid)));
    prop_assert_eq!(extract_memory_kib(&rendered).ok(), Some(summary.memory_kib));
    prop_assert_eq!(extract_owner(&rendered).ok(), Some(Some(owner())));
    // It passes the policy but for the operator's own RBD disks.
    let violations = device_policy_violations(&rendered, &policy).expect("the generated domain parses");
    prop_assert_eq!(violations.len(), disks.len(), "{:?}", violations);
    prop_assert!(
        violations.iter().all(|v| v.element == "disk type=\"network\""),
        "{:?}",
        violations
    );
    // Without disks, it passes the check, and generating it again from itself changes nothing.
    let bare = render_domain_xml_with_uuid(&xml, "guest", uuid, &[], &ceph(), &policy, Some(&owner()))
        .expect("renders without disks");
    prop_assert!(validate_base_xml(&bare.xml, &policy).is_ok());
    let again = render_domain_xml_with_uuid(&bare.xml, "guest", uuid, &[], &ceph(), &policy, Some(&owner()))
        .expect("the generated domain renders again");
    prop_assert_eq!(&again.xml, &bare.xml);
    Ok(())
}

#[derive(Default)]
struct Stats {
    accepted: std::sync::atomic::AtomicU64,
    /// Accepted, but refused by the oracle's parser (a parser difference, not an escape).
    unparsable: std::sync::atomic::AtomicU64,
}

#[test]
fn generated_domain_xmls_never_panic_nor_reach_the_host_and_round_trip() {
    let stats = Stats::default();
    let cases = proptest_support::run("domain_xml", 256, 512, input(), |xml| check(xml, &stats));
    let accepted = stats.accepted.load(std::sync::atomic::Ordering::Relaxed);
    let unparsable = stats.unparsable.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "proptest domain_xml: {accepted} accepted by the default policy (of {cases} cases), {unparsable} of them not well-formed for the oracle's parser"
    );
    assert!(accepted > 0, "the generator should produce acceptable XMLs too");
}

/// The oracle itself flags what it should (a guard against an oracle that sees nothing).
#[test]
fn the_oracle_sees_host_resources() {
    let flagged = [
        "<devices><disk type='file' device='disk'><source file='/etc/shadow'/></disk></devices>",
        "<devices><p:hostdev xmlns:p='urn:p'/></devices>",
        "<devices><interface type='bridge'><source bridge='br0'/></interface></devices>",
        "<devices><emulator>/usr/bin/../bin/kvm</emulator></devices>",
        "<q:commandline xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0'/>",
        "<resource><partition>/machine/../x</partition></resource>",
        "<devices><serial type='file'><source path='/tmp/x'/></serial></devices>",
        "<devices><memory model='dimm'><source><pagesize unit='KiB'>2048</pagesize></source></memory></devices>",
    ];
    for inner in flagged {
        let xml = format!("<domain type='kvm'><name>x</name>{inner}</domain>");
        assert!(!host_reach(&xml, &[]).unwrap().is_empty(), "{xml}");
    }
    let clean = "<domain type='kvm'><name>x</name><memory unit='MiB'>128</memory><devices><emulator>/usr/bin/qemu-system-x86_64</emulator><disk type='file' device='cdrom'><target dev='hdc'/></disk><interface type='user'/><serial type='pty'/></devices><metadata><hostdev/></metadata></domain>";
    assert_eq!(host_reach(clean, &[]).unwrap(), Vec::<String>::new());
    assert!(validate_base_xml(clean, &DevicePolicy::default()).is_ok());
}
