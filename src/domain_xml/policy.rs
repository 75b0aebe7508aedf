//! The device policy: what of a user's base XML may reach the hypervisor host.
//!
//! The base XML comes from users who may not be cluster admins. Anything in it that gives the
//! guest (or QEMU on its behalf) a host device, a host path, or a say in how the host runs QEMU
//! is rejected unless the namespace's admin policy allows it: value by value for what SEAPATH's
//! VMs use ([`Allowances`]: emulators, cgroup partitions, bridges, tap ports, macvtap devices,
//! vhost-user sockets, libvirt networks, PCI devices, hugepages), or a whole category with one
//! of the three all-or-nothing switches ([`PolicyFlag`]). Disks are special:
//! the operator attaches the VM's disks itself, so a disk in the base XML is only accepted when
//! it is an empty removable drive, or a host file / device that an admin policy allows.
//!
//! Elements are matched by local name whatever their namespace prefix, and attributes by local
//! name too (libvirt's `xmlGetProp` ignores namespaces), and an attribute that appears several
//! times with different prefixes is rejected if any of its values is. Only the places libvirt
//! reads are examined: what sits in `<metadata>` is opaque to libvirt and never checked, except
//! that an element in the QEMU namespace is rejected wherever it is.

use std::fmt;

use super::allowances::{AllowanceKind, Allowances, Profile, pci_address};
use super::tree::{Element, trim_xml};

/// libvirt's namespace for QEMU pass-through (`<qemu:commandline>`, `<qemu:override>`, ...).
pub const QEMU_NAMESPACE: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// What an admin allows the base XMLs of a namespace to reach on the host.
/// `Default` allows only the safe defaults of [`Allowances`] (the host's own QEMU binaries as
/// emulator, cgroup partitions under `/machine/`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DevicePolicy {
    /// Host hardware and kernel devices: `<hostdev>`, `<interface type="hostdev|direct|vdpa">`,
    /// block and NVMe disks, character devices of type `dev`, host input, TPM, sound, GPU and
    /// display, smartcard readers, random-number devices other than `/dev/(u)random`.
    pub allow_host_devices: bool,
    /// Host files, directories and sockets: file/dir/volume disks, `<filesystem>`, character
    /// devices of type `file`/`pipe` and unix sockets at a given path, log files, kernel /
    /// initrd / firmware / NVRAM / ACPI table / option ROM paths, file-backed memory,
    /// shared memory, leases, vhost-user sockets, firmware-config files.
    pub allow_host_paths: bool,
    /// Control over how the host runs QEMU: any element in the QEMU namespace
    /// (`<qemu:commandline>`, `<qemu:override>`...), `<emulator>`, interface scripts,
    /// helper binaries (virtiofsd), boot loaders, the host cgroup partition, and security
    /// labels that weaken or replace sVirt confinement (`<seclabel type="none">`, static
    /// labels, `relabel="no"`).
    pub allow_qemu_passthrough: bool,
    /// What is allowed value by value, whatever the switches say.
    pub allowances: Allowances,
}

impl DevicePolicy {
    /// A policy that allows every category (for cluster-admin namespaces).
    pub fn allow_all() -> Self {
        DevicePolicy {
            allow_host_devices: true,
            allow_host_paths: true,
            allow_qemu_passthrough: true,
            allowances: Allowances::default(),
        }
    }

    /// No switch, and the allowances of `profile`.
    pub fn with_profile(profile: Profile) -> Self {
        DevicePolicy {
            allowances: profile.allowances(),
            ..DevicePolicy::default()
        }
    }

    /// Whether the policy lets `violation` through: its switch is on, or an allowance covers it.
    fn permits(&self, violation: &PolicyViolation) -> bool {
        violation.allowed_by.is_some_and(|flag| self.allows(flag))
            || violation
                .allowance
                .as_ref()
                .is_some_and(|wanted| self.allowances.allows(wanted.kind, wanted.value.as_deref()))
    }

    /// Whether the policy allows a category.
    pub const fn allows(&self, flag: PolicyFlag) -> bool {
        match flag {
            PolicyFlag::HostDevices => self.allow_host_devices,
            PolicyFlag::HostPaths => self.allow_host_paths,
            PolicyFlag::QemuPassthrough => self.allow_qemu_passthrough,
        }
    }
}

/// One category of [`DevicePolicy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyFlag {
    HostDevices,
    HostPaths,
    QemuPassthrough,
}

impl PolicyFlag {
    /// The name of the policy field as users see it (`allowHostDevices`, ...).
    pub const fn field_name(self) -> &'static str {
        match self {
            PolicyFlag::HostDevices => "allowHostDevices",
            PolicyFlag::HostPaths => "allowHostPaths",
            PolicyFlag::QemuPassthrough => "allowQemuPassthrough",
        }
    }

    /// The chart value listing the namespaces the switch is on in.
    pub const fn chart_value(self) -> &'static str {
        match self {
            PolicyFlag::HostDevices => "controller.allowHostDevicesIn",
            PolicyFlag::HostPaths => "controller.allowHostPathsIn",
            PolicyFlag::QemuPassthrough => "controller.allowQemuPassthroughIn",
        }
    }

    /// The controller flag listing the namespaces the switch is on in.
    pub const fn controller_flag(self) -> &'static str {
        match self {
            PolicyFlag::HostDevices => "--allow-host-devices-in",
            PolicyFlag::HostPaths => "--allow-host-paths-in",
            PolicyFlag::QemuPassthrough => "--allow-qemu-passthrough-in",
        }
    }
}

impl fmt::Display for PolicyFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field_name())
    }
}

/// One element of the base XML that the policy rejects.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyViolation {
    /// 1-based line of the element's start tag in the base XML.
    pub line: usize,
    /// The element as shown to the user, e.g. `hostdev` or `interface type="direct"`.
    pub element: String,
    /// Why it reaches the host, e.g. "passes a host device to the guest".
    pub reason: String,
    /// The all-or-nothing switch that would allow it; `None` when no policy does.
    pub allowed_by: Option<PolicyFlag>,
    /// The allowance (setting and value) that would allow it, when one can.
    pub allowance: Option<NeededAllowance>,
}

/// The allowance a violation needs: a value added to a setting of the namespace's device
/// policy (for `hugepages`, the setting turned on).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NeededAllowance {
    pub kind: AllowanceKind,
    /// What the base XML names (for `vhostUserDirs`, the socket's path). `None` for hugepages.
    pub value: Option<String>,
}

impl NeededAllowance {
    /// What to write into the setting: the value, or for a vhost-user socket its directory.
    pub fn setting_value(&self) -> String {
        match (&self.value, self.kind) {
            (None, _) => "true".to_owned(),
            (Some(path), AllowanceKind::VhostUserDir) => {
                let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
                format!("[{dir:?}]")
            }
            (Some(value), _) => format!("[{value:?}]"),
        }
    }
}

impl fmt::Display for PolicyViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "base XML line {}: <{}> {}; ",
            self.line, self.element, self.reason
        )?;
        match (&self.allowance, self.allowed_by) {
            (Some(wanted), _) => {
                write!(
                    f,
                    "not allowed in this namespace (a cluster admin allows it with \"{}\": {} in controller.devicePolicy.<namespace>, flag --device-policy",
                    wanted.kind.setting(),
                    wanted.setting_value()
                )?;
                let profile = Profile::Seapath;
                if profile.allowances().allows(wanted.kind, wanted.value.as_deref()) {
                    write!(f, ", or with \"profile\": \"{}\"", profile.name())?;
                }
                f.write_str(")")
            }
            (None, Some(flag)) => write!(
                f,
                "not allowed in this namespace (policy {flag}: a cluster admin allows it with {}, flag {})",
                flag.chart_value(),
                flag.controller_flag()
            ),
            (None, None) => f.write_str("never allowed in a base XML"),
        }
    }
}

/// The violations of `policy` in a domain, in document order.
pub(crate) fn violations(root: &Element<'_>, policy: &DevicePolicy) -> Vec<PolicyViolation> {
    let mut found = Findings::default();
    found.qemu_namespace(root);
    for child in root.elements() {
        match child.local_name() {
            "os" => found.os(child),
            "bootloader" if child.has_text() => found.add(
                child,
                None,
                "names a host program for libvirt to run as boot loader",
                Some(PolicyFlag::QemuPassthrough),
            ),
            "seclabel" => found.seclabel(child),
            "resource" => {
                for partition in child.elements_named("partition") {
                    if partition.has_text() {
                        let path = partition.text();
                        found.add_allowance(
                            partition,
                            None,
                            &format!("places QEMU in host cgroup partition {path:?}"),
                            AllowanceKind::Partition,
                            Some(path),
                        );
                    }
                }
            }
            "memoryBacking" => {
                for hugepages in child.elements_named("hugepages") {
                    found.add_allowance(
                        hugepages,
                        None,
                        "backs the guest's memory with the host's reserved huge pages",
                        AllowanceKind::Hugepages,
                        None,
                    );
                }
                for source in child.elements_named("source") {
                    if source.attr_any("type", |t| t == "file") {
                        found.add(
                            source,
                            Some("type"),
                            "backs the guest's memory with files on the host",
                            Some(PolicyFlag::HostPaths),
                        );
                    }
                }
            }
            "sysinfo" => {
                for entry in child.elements_named("entry") {
                    if entry.has_attr("file") {
                        found.add(
                            entry,
                            None,
                            "makes QEMU read a host file into the guest's firmware configuration",
                            Some(PolicyFlag::HostPaths),
                        );
                    }
                }
            }
            "devices" => {
                for device in child.elements() {
                    found.device(device);
                }
            }
            _ => {}
        }
    }
    let mut list: Vec<PolicyViolation> = found.list.into_iter().filter(|v| !policy.permits(v)).collect();
    list.sort_by_key(|v| v.line);
    list
}

/// Everything in a base XML that reaches the host, before the policy is applied.
#[derive(Default)]
struct Findings {
    list: Vec<PolicyViolation>,
}

/// Random-number sources that read nothing of the host but entropy.
const HARMLESS_RNG_SOURCES: [&str; 2] = ["/dev/urandom", "/dev/random"];

/// Smartcard modes that reach the host, each with why and the switch that allows it, in the
/// order they are tested.
const HOST_SMARTCARD_MODES: [(&str, &str, PolicyFlag); 2] = [
    (
        "host",
        "gives the guest the host's smartcard reader",
        PolicyFlag::HostDevices,
    ),
    (
        "host-certificates",
        "reads certificates from a directory on the host",
        PolicyFlag::HostPaths,
    ),
];

/// TPM backend types that reach the host, each with why and the switch that allows it, in the
/// order they are tested.
const HOST_TPM_BACKENDS: [(&str, &str, PolicyFlag); 2] = [
    (
        "passthrough",
        "passes the host's TPM to the guest",
        PolicyFlag::HostDevices,
    ),
    (
        "external",
        "connects the TPM to a socket at a host path",
        PolicyFlag::HostPaths,
    ),
];

/// Audio backends that play and record on the host's own sound system.
const HOST_SOUND_SYSTEMS: [&str; 7] = [
    "alsa",
    "oss",
    "pulseaudio",
    "jack",
    "coreaudio",
    "sdl",
    "pipewire",
];

impl Findings {
    /// Records `element` (shown with its attribute `shown_attr`, if any).
    fn add(
        &mut self,
        element: &Element<'_>,
        shown_attr: Option<&str>,
        reason: &str,
        allowed_by: Option<PolicyFlag>,
    ) {
        let mut shown = element.qname().to_owned();
        if let Some(attr) = shown_attr
            && let Some(value) = element.attr_values(attr).first()
        {
            shown.push_str(&format!(" {attr}={value:?}"));
        }
        self.list.push(PolicyViolation {
            line: element.line,
            element: shown,
            reason: reason.to_owned(),
            allowed_by,
            allowance: None,
        });
    }

    /// Records `element`, which the allowance `kind` allows for `value` (with `value` `None`,
    /// only its switch allows it, except for hugepages which have no value), as does the
    /// switch of that kind.
    fn add_allowance(
        &mut self,
        element: &Element<'_>,
        shown_attr: Option<&str>,
        reason: &str,
        kind: AllowanceKind,
        value: Option<String>,
    ) {
        self.add(element, shown_attr, reason, Some(kind.switch()));
        if value.is_some() || kind == AllowanceKind::Hugepages {
            let last = self.list.last_mut().expect("just added");
            last.allowance = Some(NeededAllowance { kind, value });
        }
    }

    /// Records `element` once per value of what it names (an interface's bridge, device,
    /// network, ...), each allowed by `kind`; once without a value if it names none.
    fn add_named(
        &mut self,
        element: &Element<'_>,
        values: Vec<String>,
        reason: impl Fn(&str) -> String,
        kind: AllowanceKind,
    ) {
        if values.is_empty() {
            self.add_allowance(element, Some("type"), &reason("(none named)"), kind, None);
        }
        for value in values {
            self.add_allowance(
                element,
                Some("type"),
                &reason(&format!("{value:?}")),
                kind,
                Some(value),
            );
        }
    }

    /// Elements in the QEMU namespace, wherever they are (only the outermost is reported).
    fn qemu_namespace(&mut self, element: &Element<'_>) {
        if element
            .ns
            .as_deref()
            .is_some_and(|ns| trim_xml(ns) == QEMU_NAMESPACE)
        {
            self.add(
                element,
                None,
                "is in libvirt's QEMU namespace: it hands options straight to QEMU on the host, past libvirt's checks",
                Some(PolicyFlag::QemuPassthrough),
            );
            return;
        }
        for child in element.elements() {
            self.qemu_namespace(child);
        }
    }

    /// `<os>`: direct kernel boot, firmware, NVRAM and ACPI tables from host paths.
    fn os(&mut self, os: &Element<'_>) {
        for child in os.elements() {
            match child.local_name() {
                "kernel" | "initrd" | "dtb" | "shim" if child.has_text() => self.add(
                    child,
                    None,
                    "boots the guest from a file on the host",
                    Some(PolicyFlag::HostPaths),
                ),
                "loader" if child.has_text() => self.add(
                    child,
                    None,
                    "loads firmware from a host path (use <os firmware=\"efi\"> to let libvirt choose the firmware)",
                    Some(PolicyFlag::HostPaths),
                ),
                "nvram"
                    if child.has_text()
                        || child.has_attr("template")
                        || child.elements().next().is_some() =>
                {
                    self.add(
                        child,
                        None,
                        "keeps or copies UEFI variables at a host path or storage of its choosing (leave <nvram/> empty)",
                        Some(PolicyFlag::HostPaths),
                    );
                }
                "acpi" => {
                    for table in child.elements_named("table") {
                        if table.has_text() {
                            self.add(
                                table,
                                None,
                                "loads an ACPI table from a file on the host",
                                Some(PolicyFlag::HostPaths),
                            );
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// A domain-level `<seclabel>`: anything but plain dynamic confinement.
    fn seclabel(&mut self, seclabel: &Element<'_>) {
        let reason =
            if seclabel.attr_any("type", |t| t == "none") || seclabel.attr_any("model", |m| m == "none") {
                Some("turns off the host's security confinement (sVirt) of QEMU")
            } else if seclabel.attr_any("type", |t| t == "static") {
                Some("runs QEMU under a security label chosen in the XML")
            } else {
                device_seclabel_reason(seclabel)
            };
        if let Some(reason) = reason {
            self.add(seclabel, None, reason, Some(PolicyFlag::QemuPassthrough));
        }
    }

    /// Device-level `<seclabel>` elements anywhere below `element`.
    fn device_seclabels(&mut self, element: &Element<'_>) {
        for child in element.elements() {
            if child.is("seclabel") {
                if let Some(reason) = device_seclabel_reason(child) {
                    self.add(child, None, reason, Some(PolicyFlag::QemuPassthrough));
                }
            } else {
                self.device_seclabels(child);
            }
        }
    }

    /// `<rom file="...">` anywhere below `element` (NICs, host devices, video).
    fn rom_files(&mut self, element: &Element<'_>) {
        for child in element.elements() {
            if child.is("rom") && child.has_attr("file") {
                self.add(
                    child,
                    None,
                    "loads an option ROM from a file on the host",
                    Some(PolicyFlag::HostPaths),
                );
            }
            self.rom_files(child);
        }
    }

    /// Whether some element below `element` has a `rendernode` attribute.
    fn uses_render_node(element: &Element<'_>) -> bool {
        element
            .elements()
            .any(|c| c.has_attr("rendernode") || Self::uses_render_node(c))
    }

    /// One child of `<devices>`.
    fn device(&mut self, device: &Element<'_>) {
        self.rom_files(device);
        self.device_seclabels(device);
        match device.local_name() {
            "emulator" => self.emulator(device),
            "disk" => self.disk(device),
            "filesystem" => self.filesystem(device),
            "hostdev" => self.hostdev(device),
            "interface" => self.interface(device),
            "serial" | "parallel" | "console" | "channel" | "redirdev" => self.chardev(device),
            "smartcard" => self.smartcard(device),
            "tpm" => self.tpm(device),
            "input" => self.input(device),
            "rng" => self.rng(device),
            "graphics" => self.graphics(device),
            "video" if Self::uses_render_node(device) => self.add(
                device,
                None,
                "renders on a host GPU device",
                Some(PolicyFlag::HostDevices),
            ),
            "audio" => self.audio(device),
            "shmem" => self.add(
                device,
                None,
                "shares host memory with other guests or host processes",
                Some(PolicyFlag::HostPaths),
            ),
            "memory" => self.memory(device),
            "lease" => self.add(
                device,
                None,
                "takes a lock on a file at a host path",
                Some(PolicyFlag::HostPaths),
            ),
            "pstore" => self.add(
                device,
                None,
                "stores guest data in a file at a host path",
                Some(PolicyFlag::HostPaths),
            ),
            _ => {}
        }
    }

    /// `<emulator>`: the host program libvirt runs as QEMU, allowed path by path.
    fn emulator(&mut self, emulator: &Element<'_>) {
        let path = emulator.text();
        self.add_allowance(
            emulator,
            None,
            &format!("makes libvirt run host program {path:?} as the emulator"),
            AllowanceKind::Emulator,
            Some(path),
        );
    }

    /// `<filesystem>`: every kind reaches the host, a block device through its own switch; a
    /// daemon binary of its choosing besides.
    fn filesystem(&mut self, filesystem: &Element<'_>) {
        if filesystem.attr_any("type", |t| t == "block") {
            self.add(
                filesystem,
                Some("type"),
                "exports a host block device to the guest",
                Some(PolicyFlag::HostDevices),
            );
        } else {
            self.add(
                filesystem,
                Some("type"),
                "shares host files or directories with the guest",
                Some(PolicyFlag::HostPaths),
            );
        }
        for binary in filesystem.elements_named("binary") {
            if binary.has_attr("path") {
                self.add(
                    binary,
                    None,
                    "runs a host program chosen in the XML as the file-system daemon",
                    Some(PolicyFlag::QemuPassthrough),
                );
            }
        }
    }

    /// `<smartcard>`: the host modes reach the host themselves; any other mode is a character
    /// device, checked as one.
    fn smartcard(&mut self, smartcard: &Element<'_>) {
        let host_mode = HOST_SMARTCARD_MODES
            .iter()
            .find(|(mode, ..)| smartcard.attr_any("mode", |m| m == *mode));
        match host_mode {
            Some(&(_, reason, flag)) => self.add(smartcard, Some("mode"), reason, Some(flag)),
            None => self.chardev(smartcard),
        }
    }

    /// `<tpm>`: each backend that passes the host's TPM, talks to a host socket or keeps its
    /// state at a host path.
    fn tpm(&mut self, tpm: &Element<'_>) {
        for backend in tpm.elements_named("backend") {
            let host_backend = HOST_TPM_BACKENDS
                .iter()
                .find(|(backend_type, ..)| backend.attr_any("type", |t| t == *backend_type));
            if let Some(&(_, reason, flag)) = host_backend {
                self.add(backend, Some("type"), reason, Some(flag));
            } else if backend.elements_named("source").any(|s| s.has_attr("path")) {
                self.add(
                    backend,
                    Some("type"),
                    "keeps the emulated TPM's state at a host path",
                    Some(PolicyFlag::HostPaths),
                );
            }
        }
    }

    /// `<input>`: by type, or by a host event device named as its source whatever the type.
    fn input(&mut self, input: &Element<'_>) {
        let evdev_source = input
            .elements_named("source")
            .any(|s| s.has_attr("evdev") || s.has_attr("dev"));
        if input.attr_any("type", |t| t == "passthrough" || t == "evdev") || evdev_source {
            self.add(
                input,
                Some("type"),
                "passes a host input device to the guest",
                Some(PolicyFlag::HostDevices),
            );
        }
    }

    /// `<rng>`: an `egd` backend is a character device; a `random` one may read only entropy.
    fn rng(&mut self, rng: &Element<'_>) {
        for backend in rng.elements_named("backend") {
            if backend.attr_any("model", |m| m == "egd") {
                self.chardev(backend);
            } else if backend.attr_any("model", |m| m == "random") {
                let source = backend.text();
                let source = trim_xml(&source);
                if !source.is_empty() && !HARMLESS_RNG_SOURCES.contains(&source) {
                    self.add(
                        backend,
                        Some("model"),
                        "reads a host device other than /dev/urandom or /dev/random",
                        Some(PolicyFlag::HostDevices),
                    );
                }
            }
        }
    }

    /// `<audio>`: a file backend writes on the host, a sound-system backend uses its hardware.
    fn audio(&mut self, audio: &Element<'_>) {
        if audio.attr_any("type", |t| t == "file") {
            self.add(
                audio,
                Some("type"),
                "records or plays the guest's audio into a host file",
                Some(PolicyFlag::HostPaths),
            );
        } else if audio.attr_any("type", |t| HOST_SOUND_SYSTEMS.contains(&t)) {
            self.add(
                audio,
                Some("type"),
                "plays and records on the host's sound system",
                Some(PolicyFlag::HostDevices),
            );
        }
    }

    /// A `<memory>` device: backed by a host file, or by huge pages (allowed by their own
    /// setting).
    fn memory(&mut self, memory: &Element<'_>) {
        let has_path = memory
            .elements_named("source")
            .flat_map(|s| s.elements_named("path"))
            .any(Element::has_text);
        if has_path {
            self.add(
                memory,
                Some("model"),
                "maps a host file into the guest's memory",
                Some(PolicyFlag::HostPaths),
            );
        }
        let hugepages = memory
            .elements_named("source")
            .any(|s| s.elements_named("pagesize").next().is_some());
        if hugepages {
            self.add_allowance(
                memory,
                Some("model"),
                "backs the memory device with the host's reserved huge pages",
                AllowanceKind::Hugepages,
                None,
            );
        }
    }

    /// A user `<disk>`: only an empty CD-ROM or floppy drive passes without a policy.
    fn disk(&mut self, disk: &Element<'_>) {
        let kinds = disk.attr_values("device");
        let removable = !kinds.is_empty() && kinds.iter().all(|k| k == "cdrom" || k == "floppy");
        let has_media = disk.elements_named("source").next().is_some()
            || disk
                .elements_named("backingStore")
                .any(|b| b.elements().next().is_some());
        if removable && !has_media {
            return;
        }
        let mut types = disk.attr_values("type");
        if types.is_empty() {
            types.push("file".to_owned()); // libvirt's default disk type
        }
        types.sort();
        types.dedup();
        for t in &types {
            let (reason, allowed_by) = match t.as_str() {
                "file" | "dir" | "volume" => (
                    "attaches host files as a disk (the VM's disks come from the VirtualMachine spec)",
                    Some(PolicyFlag::HostPaths),
                ),
                "vhostuser" => (
                    "attaches a disk through a vhost-user socket at a host path (the VM's disks come from the VirtualMachine spec)",
                    Some(PolicyFlag::HostPaths),
                ),
                "block" | "nvme" => (
                    "attaches a host block device as a disk (the VM's disks come from the VirtualMachine spec)",
                    Some(PolicyFlag::HostDevices),
                ),
                "network" => (
                    "attaches network storage with the host's identity and credentials; the VM's disks come from the VirtualMachine spec",
                    None,
                ),
                _ => (
                    "is not a disk the operator accepts from a base XML; the VM's disks come from the VirtualMachine spec",
                    None,
                ),
            };
            let mut shown = disk.qname().to_owned();
            shown.push_str(&format!(" type={t:?}"));
            self.list.push(PolicyViolation {
                line: disk.line,
                element: shown,
                reason: reason.to_owned(),
                allowed_by,
                allowance: None,
            });
        }
    }

    /// `<hostdev>`: a PCI device is allowed address by address, any other host device only
    /// by its switch.
    fn hostdev(&mut self, hostdev: &Element<'_>) {
        // Every spelling of `type` must say pci, and of `mode` subsystem (libvirt's default):
        // a capabilities-mode hostdev names host block or network devices instead.
        let all_values_are = |attr: &str, value: &str| hostdev.attr_values(attr).iter().all(|v| v == value);
        let is_pci = hostdev.attr_any("type", |t| t == "pci")
            && all_values_are("type", "pci")
            && all_values_are("mode", "subsystem");
        match pci_sources(hostdev).filter(|_| is_pci) {
            Some(addresses) => {
                for address in addresses {
                    self.add_allowance(
                        hostdev,
                        Some("type"),
                        &format!("passes host PCI device {address} to the guest"),
                        AllowanceKind::PciDevice,
                        Some(address),
                    );
                }
            }
            None => self.add(
                hostdev,
                None,
                "passes a host device to the guest",
                Some(PolicyFlag::HostDevices),
            ),
        }
    }

    /// `<interface>`: host NICs, bridges, networks, tap ports, vhost-user sockets, host
    /// scripts, backend device paths.
    fn interface(&mut self, interface: &Element<'_>) {
        // Checked type by type in this order, so that an interface spelling `type` several
        // times reports each of them, always in the same order.
        let has_type = |t: &str| interface.attr_any("type", |v| v == t);
        if has_type("hostdev") {
            self.hostdev_interface(interface);
        }
        if has_type("direct") {
            self.add_named(
                interface,
                named_by(interface, "source", "dev"),
                |d| format!("attaches the guest directly to host network interface {d} (macvtap)"),
                AllowanceKind::DirectDevice,
            );
        }
        if has_type("bridge") {
            self.add_named(
                interface,
                named_by(interface, "source", "bridge"),
                |b| format!("connects the guest to host bridge {b}"),
                AllowanceKind::Bridge,
            );
        }
        if has_type("network") {
            self.add_named(
                interface,
                named_by(interface, "source", "network"),
                |n| format!("connects the guest to libvirt network {n} of the host"),
                AllowanceKind::Network,
            );
        }
        if has_type("vdpa") {
            self.add(
                interface,
                Some("type"),
                "passes a host vDPA device to the guest",
                Some(PolicyFlag::HostDevices),
            );
        }
        if has_type("vhostuser") {
            self.add_named(
                interface,
                named_by(interface, "source", "path"),
                |p| format!("connects the guest to vhost-user socket {p} on the host"),
                AllowanceKind::VhostUserDir,
            );
        }
        if has_type("ethernet") {
            self.unmanaged_tap_interface(interface);
        }
        self.interface_scripts_and_backend(interface);
    }

    /// `<interface type="hostdev">`: a PCI network device is allowed address by address, any
    /// other only by its switch.
    fn hostdev_interface(&mut self, interface: &Element<'_>) {
        match pci_sources(interface) {
            Some(addresses) => self.add_named(
                interface,
                addresses,
                |a| format!("passes host PCI network device {a} to the guest"),
                AllowanceKind::PciDevice,
            ),
            None => self.add(
                interface,
                Some("type"),
                "passes a host network device to the guest",
                Some(PolicyFlag::HostDevices),
            ),
        }
    }

    /// `<interface type="ethernet">`: libvirt creates and owns its tap device unless
    /// `managed="no"` hands it one the host already has, allowed name by name.
    fn unmanaged_tap_interface(&mut self, interface: &Element<'_>) {
        let unmanaged = interface
            .elements_named("target")
            .any(|t| t.attr_any("managed", |m| m == "no"));
        if unmanaged {
            self.add_named(
                interface,
                named_by(interface, "target", "dev"),
                |d| format!("uses existing host tap device {d}"),
                AllowanceKind::TapDevice,
            );
        }
    }

    /// An interface's host scripts and backend paths, whatever its type.
    fn interface_scripts_and_backend(&mut self, interface: &Element<'_>) {
        for child in interface.elements() {
            match child.local_name() {
                "script" | "downscript" if child.has_attr("path") => self.add(
                    child,
                    None,
                    "runs a host script as root when the interface goes up or down",
                    Some(PolicyFlag::QemuPassthrough),
                ),
                "backend" => {
                    if child.has_attr("tap") || child.has_attr("vhost") {
                        self.add(
                            child,
                            None,
                            "opens host device files of its choosing for the network backend",
                            Some(PolicyFlag::HostPaths),
                        );
                    }
                    if child.has_attr("logFile") {
                        self.add(
                            child,
                            None,
                            "writes a log file at a host path",
                            Some(PolicyFlag::HostPaths),
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// A character device (serial, console, channel, ...): host devices, files, pipes, unix
    /// sockets at a path, log files. `pty`, `tcp`, `udp`, `spicevmc`, unix sockets without a
    /// path (libvirt picks one) and the like stay inside libvirt's management.
    fn chardev(&mut self, chardev: &Element<'_>) {
        let has_type = |t: &str| chardev.attr_any("type", |v| v == t);
        if has_type("dev") || has_type("nmdm") {
            self.add(
                chardev,
                Some("type"),
                "connects the guest to a host character device",
                Some(PolicyFlag::HostDevices),
            );
        }
        if has_type("file") {
            self.add(
                chardev,
                Some("type"),
                "writes guest output into a host file",
                Some(PolicyFlag::HostPaths),
            );
        }
        if has_type("pipe") {
            self.add(
                chardev,
                Some("type"),
                "connects the guest to a named pipe on the host",
                Some(PolicyFlag::HostPaths),
            );
        }
        if has_type("unix") && chardev.elements_named("source").any(|s| s.has_attr("path")) {
            self.add(
                chardev,
                Some("type"),
                "connects the guest to a unix socket at a host path",
                Some(PolicyFlag::HostPaths),
            );
        }
        for log in chardev.elements_named("log") {
            if log.has_attr("file") {
                self.add(
                    log,
                    None,
                    "logs guest output into a host file",
                    Some(PolicyFlag::HostPaths),
                );
            }
        }
    }

    /// `<graphics>`: host display or GPU, unix sockets at a path.
    fn graphics(&mut self, graphics: &Element<'_>) {
        if graphics.attr_any("type", |t| matches!(t, "sdl" | "desktop" | "egl-headless")) {
            self.add(
                graphics,
                Some("type"),
                "draws on the host's display or GPU",
                Some(PolicyFlag::HostDevices),
            );
        } else if Self::uses_render_node(graphics)
            || graphics.has_attr("rendernode")
            || graphics
                .elements_named("gl")
                .any(|gl| gl.attr_any("enable", |e| e == "yes"))
        {
            self.add(
                graphics,
                Some("type"),
                "renders on the host's GPU",
                Some(PolicyFlag::HostDevices),
            );
        }
        let socket = graphics.has_attr("socket")
            || graphics.elements_named("listen").any(|l| l.has_attr("socket"))
            || (graphics.attr_any("type", |t| t == "dbus") && graphics.has_attr("address"));
        if socket {
            self.add(
                graphics,
                Some("type"),
                "listens or connects on a socket at a host path",
                Some(PolicyFlag::HostPaths),
            );
        }
    }
}

/// The values of attribute `attr` on the `child` elements of `element` (what an interface
/// names: its bridge, host device, network, socket path...).
fn named_by(element: &Element<'_>, child: &str, attr: &str) -> Vec<String> {
    element
        .elements_named(child)
        .flat_map(|c| c.attr_values(attr))
        .collect()
}

/// The PCI addresses of an element's `<source><address>` children, as `dddd:bb:ss.f`; `None`
/// when it has none, or one is not a PCI address libvirt would read the same way.
fn pci_sources(element: &Element<'_>) -> Option<Vec<String>> {
    let addresses: Vec<&Element<'_>> = element
        .elements_named("source")
        .flat_map(|s| s.elements_named("address"))
        .collect();
    if addresses.is_empty() {
        return None;
    }
    addresses
        .into_iter()
        .map(|a| {
            if !a.attr_values("type").iter().all(|t| t == "pci") {
                return None;
            }
            pci_address(
                &a.attr_values("domain"),
                &a.attr_values("bus"),
                &a.attr_values("slot"),
                &a.attr_values("function"),
            )
        })
        .collect()
}

/// Why a `<seclabel>` inside a device (or the domain) weakens confinement, if it does.
fn device_seclabel_reason(seclabel: &Element<'_>) -> Option<&'static str> {
    if seclabel.attr_any("relabel", |r| r == "no") {
        Some("stops libvirt from labelling host resources for this VM's confinement")
    } else if seclabel
        .elements()
        .any(|c| matches!(c.local_name(), "label" | "imagelabel" | "baselabel"))
    {
        Some("sets security labels of QEMU or its files itself")
    } else {
        None
    }
}
