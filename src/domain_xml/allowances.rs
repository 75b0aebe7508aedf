//! Fine-grained allowances: which host resources of each kind a namespace's base XMLs may
//! name, value by value (emulator binaries, cgroup partitions, bridges, tap ports, macvtap
//! devices, vhost-user socket directories, libvirt networks, PCI devices, hugepages).
//!
//! A cluster admin gives them per namespace ([`AllowanceSpec`], read from the controller's
//! `--device-policy`), optionally with a named [`Profile`]. What a namespace gets is the union
//! of the safe defaults (the host's own QEMU binaries, partitions under `/machine/`), its
//! profile and its own lists: an allowance only ever adds.
//!
//! Names (bridges, ports, devices, networks) and PCI addresses are matched with shell globs
//! (the `glob` crate). Paths are first required to be absolute and normal (no `.`, `..` or
//! empty component), so a pattern cannot be escaped with `..`; emulator and partition
//! patterns then match with `*` stopping at `/` and `**` spanning directories, and a vhost-user
//! socket must lie under one of the allowed directories.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use glob::{MatchOptions, Pattern};
use serde::Deserialize;

use super::policy::PolicyFlag;

/// The host's own QEMU binaries, where distributions install them: what a base XML may name
/// as `<emulator>` by default (`?*`: a target name, never the bare `qemu-system-` prefix).
pub const DEFAULT_EMULATORS: [&str; 4] = [
    "/usr/bin/qemu-system-?*",
    "/usr/bin/kvm",
    "/usr/bin/qemu-kvm",
    "/usr/libexec/qemu-kvm",
];

/// libvirt's own cgroup partition and those below it (SEAPATH's `/machine/rt`, `/machine/nort`):
/// what a base XML may name as `<resource><partition>` by default.
pub const DEFAULT_PARTITIONS: [&str; 2] = ["/machine", "/machine/**"];

/// Where SEAPATH's Open vSwitch (DPDK) expects the guests' vhost-user sockets (`/var/run` is
/// `/run` on every current distribution; both spellings are allowed).
pub const SEAPATH_VHOST_USER_DIRS: [&str; 2] =
    ["/var/run/openvswitch/vm-sockets", "/run/openvswitch/vm-sockets"];

/// One kind of host resource that an admin allows value by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AllowanceKind {
    /// `<emulator>` paths.
    Emulator,
    /// `<resource><partition>` cgroup paths.
    Partition,
    /// `<interface type="bridge">` source bridges (Linux or Open vSwitch).
    Bridge,
    /// `<interface type="ethernet">` existing tap devices (`<target dev=... managed="no"/>`,
    /// how SEAPATH attaches Open vSwitch ports).
    TapDevice,
    /// `<interface type="direct">` (macvtap) source devices.
    DirectDevice,
    /// `<interface type="vhostuser">` socket directories (Open vSwitch with DPDK).
    VhostUserDir,
    /// `<interface type="network">` libvirt networks (SR-IOV pools among them).
    Network,
    /// `<hostdev>` and `<interface type="hostdev">` PCI devices, as `dddd:bb:ss.f`.
    PciDevice,
    /// `<memoryBacking><hugepages>`: the host's reserved huge pages.
    Hugepages,
}

impl AllowanceKind {
    /// The setting's name in a namespace's device policy (`controller.devicePolicy.<namespace>`
    /// in the chart, `--device-policy` of the controller).
    pub const fn setting(self) -> &'static str {
        match self {
            AllowanceKind::Emulator => "emulators",
            AllowanceKind::Partition => "partitions",
            AllowanceKind::Bridge => "bridges",
            AllowanceKind::TapDevice => "tapDevices",
            AllowanceKind::DirectDevice => "directDevices",
            AllowanceKind::VhostUserDir => "vhostUserDirs",
            AllowanceKind::Network => "networks",
            AllowanceKind::PciDevice => "pciDevices",
            AllowanceKind::Hugepages => "hugepages",
        }
    }

    /// The all-or-nothing switch that allows every value of this kind too (kept for
    /// namespaces configured before the allowances existed).
    pub const fn switch(self) -> PolicyFlag {
        match self {
            AllowanceKind::Emulator | AllowanceKind::Partition => PolicyFlag::QemuPassthrough,
            AllowanceKind::VhostUserDir => PolicyFlag::HostPaths,
            _ => PolicyFlag::HostDevices,
        }
    }
}

impl fmt::Display for AllowanceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.setting())
    }
}

/// A named set of allowances a namespace can be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Everything SEAPATH's guest template (seapath/ansible `templates/vm/guest.xml.j2`) uses:
    /// any bridge, tap port, macvtap device, libvirt network and PCI device, vhost-user sockets
    /// in Open vSwitch's `vm-sockets` directory, and hugepages. QEMU pass-through and host
    /// files stay refused. For namespaces whose users are trusted with the host's networks
    /// and PCI devices; list the values instead to give less.
    Seapath,
}

impl Profile {
    pub const fn name(self) -> &'static str {
        match self {
            Profile::Seapath => "seapath",
        }
    }

    /// The allowances of the profile, defaults included.
    pub fn allowances(self) -> Allowances {
        match self {
            Profile::Seapath => {
                let any = || Patterns::parse(&["*"], PatternSyntax::Name).expect("valid pattern");
                Allowances {
                    bridges: any(),
                    tap_devices: any(),
                    direct_devices: any(),
                    networks: any(),
                    pci_devices: any(),
                    vhost_user_dirs: Directories::parse(&SEAPATH_VHOST_USER_DIRS).expect("valid directories"),
                    hugepages: true,
                    ..Allowances::default()
                }
            }
        }
    }
}

/// An allowance a cluster admin wrote that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {value:?} {reason}")]
pub struct AllowanceError {
    pub setting: &'static str,
    pub value: String,
    pub reason: String,
}

/// A value a cluster admin wrote and why it cannot be used.
type Rejected = (String, String);

/// How the patterns of a kind are written and matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatternSyntax {
    /// Interface, bridge and network names, PCI addresses: plain globs.
    Name,
    /// Absolute paths: `*` stays within one component, `**` spans components.
    Path,
}

/// Glob patterns of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Patterns(Vec<Pattern>);

impl Patterns {
    fn parse<S: AsRef<str>>(patterns: &[S], syntax: PatternSyntax) -> Result<Self, Rejected> {
        let mut parsed = Vec::with_capacity(patterns.len());
        for text in patterns {
            let text = text.as_ref();
            if syntax == PatternSyntax::Path && !text.starts_with('/') {
                return Err((text.to_owned(), "is not an absolute path pattern".to_owned()));
            }
            let pattern =
                Pattern::new(text).map_err(|e| (text.to_owned(), format!("is not a glob pattern: {e}")))?;
            parsed.push(pattern);
        }
        Ok(Patterns(parsed))
    }

    fn matches(&self, value: &str, syntax: PatternSyntax) -> bool {
        let options = MatchOptions {
            case_sensitive: true,
            require_literal_separator: syntax == PatternSyntax::Path,
            require_literal_leading_dot: false,
        };
        if syntax == PatternSyntax::Path && !is_normal_absolute_path(value) {
            return false;
        }
        self.0.iter().any(|p| p.matches_with(value, options))
    }

    fn extend(&mut self, other: &Patterns) {
        for pattern in &other.0 {
            if !self.0.contains(pattern) {
                self.0.push(pattern.clone());
            }
        }
    }

    /// The patterns as written.
    pub fn as_strs(&self) -> Vec<&str> {
        self.0.iter().map(Pattern::as_str).collect()
    }
}

/// Directories (normal absolute paths) below which sockets may be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Directories(BTreeSet<String>);

impl Directories {
    fn parse<S: AsRef<str>>(dirs: &[S]) -> Result<Self, Rejected> {
        let mut parsed = BTreeSet::new();
        for written in dirs {
            let dir = written.as_ref().trim_end_matches('/');
            if dir.is_empty() || !is_normal_absolute_path(dir) {
                return Err((
                    written.as_ref().to_owned(),
                    "is not a directory as a normal absolute path (no '.', '..' or '//', not '/')".to_owned(),
                ));
            }
            parsed.insert(dir.to_owned());
        }
        Ok(Directories(parsed))
    }

    /// Whether `path` is a normal absolute path strictly below one of the directories.
    fn contains(&self, path: &str) -> bool {
        is_normal_absolute_path(path)
            && self
                .0
                .iter()
                .any(|dir| path != dir && Path::new(path).starts_with(Path::new(dir)))
    }

    fn extend(&mut self, other: &Directories) {
        self.0.extend(other.0.iter().cloned());
    }
}

/// Whether `path` is absolute and has no empty, `.` or `..` component (`/` alone is normal).
pub(crate) fn is_normal_absolute_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    rest.is_empty() || rest.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// What a namespace's base XMLs may name of the host, kind by kind. `Default` is the safe
/// default: the host's own QEMU binaries as emulators, partitions under `/machine/`, nothing
/// else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Allowances {
    pub emulators: Patterns,
    pub partitions: Patterns,
    pub bridges: Patterns,
    pub tap_devices: Patterns,
    pub direct_devices: Patterns,
    pub vhost_user_dirs: Directories,
    pub networks: Patterns,
    pub pci_devices: Patterns,
    pub hugepages: bool,
}

impl Default for Allowances {
    fn default() -> Self {
        Allowances {
            emulators: Patterns::parse(&DEFAULT_EMULATORS, PatternSyntax::Path).expect("valid defaults"),
            partitions: Patterns::parse(&DEFAULT_PARTITIONS, PatternSyntax::Path).expect("valid defaults"),
            bridges: Patterns::default(),
            tap_devices: Patterns::default(),
            direct_devices: Patterns::default(),
            vhost_user_dirs: Directories::default(),
            networks: Patterns::default(),
            pci_devices: Patterns::default(),
            hugepages: false,
        }
    }
}

impl Allowances {
    /// Whether `value` of `kind` is allowed (for [`AllowanceKind::Hugepages`] the value is
    /// ignored). `None` (a value the XML does not give) is never allowed.
    pub fn allows(&self, kind: AllowanceKind, value: Option<&str>) -> bool {
        if kind == AllowanceKind::Hugepages {
            return self.hugepages;
        }
        let Some(value) = value else {
            return false;
        };
        match kind {
            AllowanceKind::Emulator => self.emulators.matches(value, PatternSyntax::Path),
            AllowanceKind::Partition => self.partitions.matches(value, PatternSyntax::Path),
            AllowanceKind::Bridge => self.bridges.matches(value, PatternSyntax::Name),
            AllowanceKind::TapDevice => self.tap_devices.matches(value, PatternSyntax::Name),
            AllowanceKind::DirectDevice => self.direct_devices.matches(value, PatternSyntax::Name),
            AllowanceKind::VhostUserDir => self.vhost_user_dirs.contains(value),
            AllowanceKind::Network => self.networks.matches(value, PatternSyntax::Name),
            AllowanceKind::PciDevice => self.pci_devices.matches(value, PatternSyntax::Name),
            AllowanceKind::Hugepages => self.hugepages,
        }
    }

    /// Adds everything `other` allows.
    pub fn extend(&mut self, other: &Allowances) {
        self.emulators.extend(&other.emulators);
        self.partitions.extend(&other.partitions);
        self.bridges.extend(&other.bridges);
        self.tap_devices.extend(&other.tap_devices);
        self.direct_devices.extend(&other.direct_devices);
        self.vhost_user_dirs.extend(&other.vhost_user_dirs);
        self.networks.extend(&other.networks);
        self.pci_devices.extend(&other.pci_devices);
        self.hugepages |= other.hugepages;
    }
}

/// One namespace's entry in the controller's device policy, as a cluster admin writes it
/// (JSON or YAML; `controller.devicePolicy.<namespace>` in the chart). Every list adds to the
/// defaults and to the profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowanceSpec {
    /// A named set of allowances (`seapath`).
    #[serde(default)]
    pub profile: Option<Profile>,
    /// `<emulator>` path patterns, besides the host's QEMU binaries.
    #[serde(default)]
    pub emulators: Vec<String>,
    /// `<resource><partition>` path patterns, besides `/machine` and below.
    #[serde(default)]
    pub partitions: Vec<String>,
    /// Bridge name patterns (`<interface type="bridge">`).
    #[serde(default)]
    pub bridges: Vec<String>,
    /// Existing tap device (OVS port) name patterns (`<interface type="ethernet">` with
    /// `<target dev=... managed="no"/>`).
    #[serde(default)]
    pub tap_devices: Vec<String>,
    /// macvtap source device name patterns (`<interface type="direct">`).
    #[serde(default)]
    pub direct_devices: Vec<String>,
    /// Directories of vhost-user sockets (`<interface type="vhostuser">`).
    #[serde(default)]
    pub vhost_user_dirs: Vec<String>,
    /// libvirt network name patterns (`<interface type="network">`, SR-IOV pools).
    #[serde(default)]
    pub networks: Vec<String>,
    /// PCI address patterns `dddd:bb:ss.f` in hex, e.g. `0000:3b:00.*` (`<hostdev>`,
    /// `<interface type="hostdev">`).
    #[serde(default)]
    pub pci_devices: Vec<String>,
    /// `<memoryBacking><hugepages>`.
    #[serde(default)]
    pub hugepages: bool,
}

impl AllowanceSpec {
    /// The allowances the entry gives: defaults, then the profile, then the lists.
    pub fn compile(&self) -> Result<Allowances, AllowanceError> {
        let mut allowances = self.profile.map(Profile::allowances).unwrap_or_default();
        let names = |kind: AllowanceKind, list: &[String]| patterns(kind, list, PatternSyntax::Name);
        let own = Allowances {
            emulators: patterns(AllowanceKind::Emulator, &self.emulators, PatternSyntax::Path)?,
            partitions: patterns(AllowanceKind::Partition, &self.partitions, PatternSyntax::Path)?,
            bridges: names(AllowanceKind::Bridge, &self.bridges)?,
            tap_devices: names(AllowanceKind::TapDevice, &self.tap_devices)?,
            direct_devices: names(AllowanceKind::DirectDevice, &self.direct_devices)?,
            vhost_user_dirs: Directories::parse(&self.vhost_user_dirs)
                .map_err(|reason| error(AllowanceKind::VhostUserDir, reason))?,
            networks: names(AllowanceKind::Network, &self.networks)?,
            pci_devices: names(AllowanceKind::PciDevice, &self.pci_devices)?,
            hugepages: self.hugepages,
        };
        allowances.extend(&own);
        Ok(allowances)
    }
}

fn patterns(kind: AllowanceKind, list: &[String], syntax: PatternSyntax) -> Result<Patterns, AllowanceError> {
    Patterns::parse(list, syntax).map_err(|reason| error(kind, reason))
}

fn error(kind: AllowanceKind, (value, reason): Rejected) -> AllowanceError {
    AllowanceError {
        setting: kind.setting(),
        value,
        reason,
    }
}

/// A PCI address as libvirt reads `<address domain= bus= slot= function=>` (each number in
/// C's base-0 notation: `0x3b`, `59` or `073`; a missing one is 0), written `dddd:bb:ss.f`.
/// `None` when an attribute is repeated, not a number, or out of range.
pub fn pci_address(
    domain: &[String],
    bus: &[String],
    slot: &[String],
    function: &[String],
) -> Option<String> {
    let field = |values: &[String], max: u32| -> Option<u32> {
        match values {
            [] => Some(0),
            [one] => parse_c_number(one).filter(|n| *n <= max),
            _ => None,
        }
    };
    Some(format!(
        "{:04x}:{:02x}:{:02x}.{:x}",
        field(domain, 0xffff)?,
        field(bus, 0xff)?,
        field(slot, 0x1f)?,
        field(function, 7)?
    ))
}

/// An unsigned number as `strtoul(s, NULL, 0)` reads a whole string: hex after `0x`, octal
/// after a leading `0`, decimal otherwise.
fn parse_c_number(text: &str) -> Option<u32> {
    let (digits, radix) = if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        (hex, 16)
    } else if text.len() > 1 && text.starts_with('0') {
        (&text[1..], 8)
    } else {
        (text, 10)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u32::from_str_radix(digits, radix).ok()
}
