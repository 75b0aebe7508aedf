//! Base XML -> domain XML, compatible with SEAPATH's `vm_manager`, and the device policy.
//!
//! A user gives a base libvirt domain XML; the operator runs a generated one:
//! 1. `<name>` is dropped and `<name>VM</name>` inserted as first child of `<domain>`;
//! 2. a non-empty `<uuid>` is kept (it must be a valid UUID), otherwise the caller's UUID is
//!    inserted after `<name>`; the UUID used is returned so the caller can check uniqueness;
//! 3. one `<disk type="network" device="disk">` per RBD image is appended to `<devices>`
//!    (created if absent): `<driver name="qemu" type="raw" cache="writeback"/>`, `<auth>` when
//!    cephx is used, `<source protocol="rbd" name="POOL[/NAMESPACE]/IMAGE">` with one `<host>`
//!    per monitor, and `<target dev="vda" bus="virtio"/>`, `vdb`, ... (prefix by bus);
//! 4. optionally ([`RenderOptions::owner`]), the owner marker
//!    `<seapath:owner namespace= name= uid=/>` is put into `<metadata>` (see [`DomainOwner`];
//!    the node agent finds its domains by it, [`extract_owner`]).
//!
//! Everything else of the base XML is kept: attributes exactly as written, comments, text,
//! CDATA, processing instructions, namespace declarations. Only whitespace between elements is
//! re-indented (two spaces), so the output is deterministic.
//!
//! The base XML comes from users who may not be admins: before anything else it is parsed
//! strictly (one `<domain>` root, no DOCTYPE, no entities beyond XML's five, declared
//! namespace prefixes, bounded nesting) and checked against the namespace's [`DevicePolicy`],
//! which reports every violation at once. Everything here is pure: no I/O, no clock, no
//! randomness (the caller supplies the UUID to insert).
//!
//! XML is only ever read and written through quick-xml's `Reader` and `Writer` events.

mod allowances;
mod memory;
mod owner;
mod policy;
mod tree;
mod write;

#[cfg(test)]
mod seapath_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

pub use allowances::{
    AllowanceError, AllowanceKind, AllowanceSpec, Allowances, DEFAULT_EMULATORS, DEFAULT_PARTITIONS, Profile,
    SEAPATH_VHOST_USER_DIRS,
};
pub use owner::{
    DomainOwner, OWNER_NAMESPACE, OwnerMarker, extract_owner, extract_owner_marker, set_name_and_owner,
};
pub use policy::{DevicePolicy, NeededAllowance, PolicyFlag, PolicyViolation, QEMU_NAMESPACE};

use tree::{Element, Node, trim_xml};

/// Why a base XML (or the inputs of a rendering) cannot be used. Messages are written for a
/// user reading them in a Kubernetes condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainXmlError {
    /// Not well-formed XML.
    #[error("base XML line {line}, column {column}: malformed XML: {message}")]
    Malformed {
        line: usize,
        column: usize,
        message: String,
    },
    /// A `<!DOCTYPE>` declaration (it could declare entities or external resources).
    #[error(
        "base XML line {line}: <!DOCTYPE> is not allowed (a DTD can declare entities and external resources); remove it"
    )]
    Doctype { line: usize },
    /// A reference to an entity other than XML's five predefined ones.
    #[error(
        "base XML line {line}: the entity reference &{name}; is not allowed; only &lt; &gt; &amp; &quot; &apos; and character references such as &#233; are"
    )]
    UndefinedEntity { line: usize, name: String },
    /// No element at all.
    #[error("base XML contains no element: a libvirt domain XML is one <domain> element")]
    NoRoot,
    /// The root element is not `<domain>` (without prefix or namespace).
    #[error(
        "base XML line {line}: the root element is <{found}>; a libvirt domain XML must have <domain>, without namespace, as root"
    )]
    NotADomain { line: usize, found: String },
    /// Another element after the root.
    #[error(
        "base XML line {line}: a second root element <{found}> follows </domain>; the XML must contain exactly one <domain> element"
    )]
    MultipleRoots { line: usize, found: String },
    /// Non-whitespace character data before or after the root.
    #[error("base XML line {line}: text outside the <domain> element")]
    TextOutsideRoot { line: usize },
    /// An XML declaration naming another encoding than UTF-8.
    #[error(
        "base XML line {line}: the XML declaration says encoding=\"{encoding}\"; only UTF-8 is supported"
    )]
    UnsupportedEncoding { line: usize, encoding: String },
    /// Elements nested deeper than the limit.
    #[error("base XML line {line}: elements are nested more than {limit} levels deep")]
    TooDeep { line: usize, limit: usize },
    /// A `<uuid>` that is not a UUID libvirt would accept (or the nil UUID).
    #[error("base XML line {line}: <uuid> {value:?} is not usable: {reason}")]
    InvalidUuid {
        line: usize,
        value: String,
        reason: &'static str,
    },
    /// An element that may appear once under `<domain>` appears again.
    #[error("base XML line {line}: a second <{element}> under <domain>; there may be at most one")]
    DuplicateElement { line: usize, element: &'static str },
    /// Neither `<memory>` nor NUMA cells with memory.
    #[error(
        "base XML has no <memory> element (nor NUMA cells with memory): the VM's memory size is required"
    )]
    MissingMemory,
    /// A memory size or unit libvirt would not accept.
    #[error("base XML line {line}: {what} {value:?} is not a valid memory size: {reason}")]
    InvalidMemory {
        line: usize,
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A disk of the base XML already uses a target the operator gives to a VM disk.
    #[error(
        "base XML line {line}: disk target {target:?} is already used in the base XML, but the operator attaches a VM disk there; give that disk another target"
    )]
    TargetConflict { line: usize, target: String },
    /// The base XML reaches the host where the namespace's policy does not allow it; one
    /// entry per offending element, one line each in the message.
    #[error("{}", join_lines(.0))]
    PolicyViolations(Vec<PolicyViolation>),
    /// An input of the operator itself (VM name, RBD names, monitors, cephx user) is unusable.
    #[error("{what} {value:?} cannot be used: {reason}")]
    InvalidInput {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

fn join_lines(items: &[PolicyViolation]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Guest bus of an operator disk; it decides the target name prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DiskBus {
    /// virtio-blk: `vda`, `vdb`, ...
    #[default]
    Virtio,
    /// SCSI: `sda`, `sdb`, ...
    Scsi,
    /// SATA: `sda`, `sdb`, ... (shares the `sd` names with SCSI)
    Sata,
    /// IDE: `hda`, `hdb`, ...
    Ide,
}

impl DiskBus {
    /// The libvirt `bus` attribute value (and SEAPATH's `_disk_bus` metadata value).
    pub const fn as_str(self) -> &'static str {
        match self {
            DiskBus::Virtio => "virtio",
            DiskBus::Scsi => "scsi",
            DiskBus::Sata => "sata",
            DiskBus::Ide => "ide",
        }
    }

    /// The prefix of target device names on this bus.
    pub const fn target_prefix(self) -> &'static str {
        match self {
            DiskBus::Virtio => "vd",
            DiskBus::Scsi | DiskBus::Sata => "sd",
            DiskBus::Ide => "hd",
        }
    }
}

impl fmt::Display for DiskBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DiskBus {
    type Err = DomainXmlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "virtio" => Ok(DiskBus::Virtio),
            "scsi" => Ok(DiskBus::Scsi),
            "sata" => Ok(DiskBus::Sata),
            "ide" => Ok(DiskBus::Ide),
            _ => Err(DomainXmlError::InvalidInput {
                what: "disk bus",
                value: s.to_owned(),
                reason: "expected virtio, scsi, sata or ide",
            }),
        }
    }
}

/// One RBD image to attach, in order (system disk first).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiskSpec {
    /// Ceph pool, e.g. `rbd`.
    pub pool: String,
    /// RBD namespace; `None` or `Some("")` is the pool's default namespace.
    pub namespace: Option<String>,
    /// Image name, e.g. `system_guest0`.
    pub image: String,
    pub bus: DiskBus,
}

impl DiskSpec {
    /// The RBD source name libvirt takes: `POOL/IMAGE`, or `POOL/NAMESPACE/IMAGE`.
    pub fn rbd_source_name(&self) -> String {
        match self.namespace.as_deref() {
            Some(ns) if !ns.is_empty() => format!("{}/{}/{}", self.pool, ns, self.image),
            _ => format!("{}/{}", self.pool, self.image),
        }
    }

    fn validate(&self) -> Result<(), DomainXmlError> {
        check_rbd_name("Ceph pool name", &self.pool)?;
        if let Some(ns) = self.namespace.as_deref().filter(|ns| !ns.is_empty()) {
            check_rbd_name("RBD namespace", ns)?;
        }
        check_rbd_name("RBD image name", &self.image)
    }
}

/// The cephx identity QEMU uses: user id (without `client.`) and the libvirt secret that
/// holds its key on every hypervisor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CephAuthRef {
    pub username: String,
    pub secret_uuid: Uuid,
}

/// How QEMU reaches Ceph: monitors (host, port) and, when cephx is on, the identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CephAccess {
    /// One `<host>` each, in this order; empty leaves monitor discovery to the host's ceph.conf.
    pub monitors: Vec<(String, u16)>,
    /// `None` when the cluster runs without cephx (`auth none`).
    pub auth: Option<CephAuthRef>,
}

impl CephAccess {
    fn validate(&self) -> Result<(), DomainXmlError> {
        for (host, port) in &self.monitors {
            if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(DomainXmlError::InvalidInput {
                    what: "Ceph monitor host",
                    value: host.clone(),
                    reason: "a monitor host must be a non-empty name or address without spaces",
                });
            }
            if *port == 0 {
                return Err(DomainXmlError::InvalidInput {
                    what: "Ceph monitor port",
                    value: format!("{host}:{port}"),
                    reason: "port 0 is not a monitor port",
                });
            }
        }
        if let Some(auth) = &self.auth {
            let name = &auth.username;
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(DomainXmlError::InvalidInput {
                    what: "cephx user",
                    value: name.clone(),
                    reason: "the cephx user must be a non-empty id without spaces",
                });
            }
            if name.starts_with("client.") {
                return Err(DomainXmlError::InvalidInput {
                    what: "cephx user",
                    value: name.clone(),
                    reason: "give the cephx id without the \"client.\" prefix (libvirt adds it)",
                });
            }
        }
        Ok(())
    }
}

/// The generated domain XML and the UUID it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedDomain {
    pub xml: String,
    /// The domain's UUID: the base XML's one, or the one given by the caller.
    pub uuid: Uuid,
    /// Whether `uuid` was inserted (or replaced) rather than taken from the base XML.
    pub uuid_inserted: bool,
}

/// What [`validate_base_xml`] learns about an acceptable base XML.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseXmlSummary {
    /// The base XML's own UUID, if it has a non-empty `<uuid>`.
    pub uuid: Option<Uuid>,
    /// Memory of the domain in KiB.
    pub memory_kib: u64,
}

/// Generates the domain XML to run from a base XML: name replaced, UUID kept or
/// `uuid_if_absent` inserted, one RBD disk per `disks` entry appended, after checking the
/// base XML against `policy` (all violations are returned at once).
pub fn render_domain_xml(
    base_xml: &str,
    vm_name: &str,
    uuid_if_absent: Uuid,
    disks: &[DiskSpec],
    ceph: &CephAccess,
    policy: &DevicePolicy,
) -> Result<RenderedDomain, DomainXmlError> {
    render_domain_xml_with(
        base_xml,
        vm_name,
        uuid_if_absent,
        disks,
        ceph,
        policy,
        &RenderOptions::default(),
    )
}

/// Like [`render_domain_xml`], but the domain gets `uuid` whatever the base XML says (a clone
/// must get a fresh UUID even when its base XML, copied from the source VM, has one), and,
/// with `owner`, the owner marker (see [`RenderOptions::owner`]).
pub fn render_domain_xml_with_uuid(
    base_xml: &str,
    vm_name: &str,
    uuid: Uuid,
    disks: &[DiskSpec],
    ceph: &CephAccess,
    policy: &DevicePolicy,
    owner: Option<&DomainOwner>,
) -> Result<RenderedDomain, DomainXmlError> {
    let options = RenderOptions {
        replace_uuid: true,
        owner: owner.cloned(),
    };
    render_domain_xml_with(base_xml, vm_name, uuid, disks, ceph, policy, &options)
}

/// Optional parts of a rendering ([`render_domain_xml_with`]). `Default` is what
/// [`render_domain_xml`] does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// Give the domain the caller's UUID even when the base XML has one (see
    /// [`render_domain_xml_with_uuid`]); otherwise it is only inserted when absent.
    pub replace_uuid: bool,
    /// Mark the domain as belonging to this object: a `<seapath:owner>` element in
    /// `<metadata>` (merged into the base XML's `<metadata>`; any owner marker of the base XML
    /// is dropped). See [`OWNER_NAMESPACE`].
    pub owner: Option<DomainOwner>,
}

/// [`render_domain_xml`] with [`RenderOptions`]: `uuid` is inserted when the base XML has
/// none (or replaces it with `replace_uuid`), and `owner` adds the owner marker.
pub fn render_domain_xml_with(
    base_xml: &str,
    vm_name: &str,
    uuid: Uuid,
    disks: &[DiskSpec],
    ceph: &CephAccess,
    policy: &DevicePolicy,
    options: &RenderOptions,
) -> Result<RenderedDomain, DomainXmlError> {
    let choice = if options.replace_uuid {
        UuidChoice::Replace(uuid)
    } else {
        UuidChoice::KeepOrInsert(uuid)
    };
    let marker = options.owner.clone().map(OwnerMarker::new);
    render(base_xml, vm_name, choice, disks, ceph, policy, marker.as_ref())
}

/// Checks a base XML against a device policy: `Ok` or [`DomainXmlError::PolicyViolations`]
/// listing every offending element (or the parse error).
pub fn check_device_policy(base_xml: &str, policy: &DevicePolicy) -> Result<(), DomainXmlError> {
    let violations = device_policy_violations(base_xml, policy)?;
    if violations.is_empty() {
        Ok(())
    } else {
        Err(DomainXmlError::PolicyViolations(violations))
    }
}

/// Every element of a base XML that `policy` rejects, in document order (empty: acceptable).
pub fn device_policy_violations(
    base_xml: &str,
    policy: &DevicePolicy,
) -> Result<Vec<PolicyViolation>, DomainXmlError> {
    let doc = tree::parse(base_xml)?;
    Ok(policy::violations(&doc.root, policy))
}

/// Everything that can be checked on a base XML alone (for admission or before any storage
/// work): well-formed, policy, `<uuid>` valid if present, memory size valid.
pub fn validate_base_xml(base_xml: &str, policy: &DevicePolicy) -> Result<BaseXmlSummary, DomainXmlError> {
    let doc = tree::parse(base_xml)?;
    let violations = policy::violations(&doc.root, policy);
    if !violations.is_empty() {
        return Err(DomainXmlError::PolicyViolations(violations));
    }
    Ok(BaseXmlSummary {
        uuid: domain_uuid(&doc.root)?,
        memory_kib: memory::memory_kib(&doc.root)?,
    })
}

/// The UUID of a domain XML (base or generated); `None` if `<uuid>` is absent or empty.
pub fn extract_uuid(xml: &str) -> Result<Option<Uuid>, DomainXmlError> {
    let doc = tree::parse(xml)?;
    domain_uuid(&doc.root)
}

/// The RBD disks of a domain XML in order: the image name (without pool and RBD namespace) and
/// the guest bus of each `<disk>` whose source is an RBD image. Two XMLs that list the same run
/// the same disks the same way, whatever their monitors or secret.
pub fn rbd_disks(xml: &str) -> Result<Vec<(String, String)>, DomainXmlError> {
    let doc = tree::parse(xml)?;
    let mut out = Vec::new();
    for devices in doc.root.elements_named("devices") {
        for disk in devices.elements_named("disk") {
            let Some(source) = disk
                .elements_named("source")
                .find(|s| s.attr_exact("protocol").as_deref() == Some("rbd"))
            else {
                continue;
            };
            let name = source.attr_exact("name").unwrap_or_default();
            let image = name.rsplit('/').next().unwrap_or_default().to_string();
            let bus = disk
                .elements_named("target")
                .find_map(|t| t.attr_exact("bus"))
                .unwrap_or_default();
            out.push((image, bus));
        }
    }
    Ok(out)
}

/// `xml` without its `<uuid>`: the base XML of a copy of a VM, which must get a UUID of its own
/// (two domains with one UUID cannot both be defined).
pub fn without_uuid(xml: &str) -> Result<String, DomainXmlError> {
    let mut doc = tree::parse(xml)?;
    doc.root
        .children
        .retain(|c| !matches!(c, Node::Element(e) if e.is_plain("uuid")));
    Ok(write::write_document(&doc))
}

/// The memory of a domain XML in KiB, as libvirt computes it: `<memory>` in its `unit`
/// (default KiB, rounded up to whole KiB), or the sum of the NUMA cells when there are some.
pub fn extract_memory_kib(xml: &str) -> Result<u64, DomainXmlError> {
    let doc = tree::parse(xml)?;
    memory::memory_kib(&doc.root)
}

/// Where the domain's UUID comes from.
#[derive(Debug, Clone, Copy)]
enum UuidChoice {
    /// The base XML's non-empty `<uuid>`, else this one.
    KeepOrInsert(Uuid),
    /// This one, replacing any `<uuid>` of the base XML.
    Replace(Uuid),
}

fn render(
    base_xml: &str,
    vm_name: &str,
    choice: UuidChoice,
    disks: &[DiskSpec],
    ceph: &CephAccess,
    policy: &DevicePolicy,
    owner: Option<&OwnerMarker>,
) -> Result<RenderedDomain, DomainXmlError> {
    check_vm_name(vm_name)?;
    for disk in disks {
        disk.validate()?;
    }
    ceph.validate()?;
    if let Some(marker) = owner {
        owner::validate_marker(marker)?;
    }

    let mut doc = tree::parse(base_xml)?;
    let violations = policy::violations(&doc.root, policy);
    if !violations.is_empty() {
        return Err(DomainXmlError::PolicyViolations(violations));
    }
    let existing = domain_uuid(&doc.root)?;
    let targets = allocate_targets(disks);
    check_target_conflicts(&doc.root, &targets)?;

    let root = &mut doc.root;
    let (uuid, uuid_inserted) = match (choice, existing) {
        (UuidChoice::KeepOrInsert(_), Some(uuid)) => (uuid, false),
        (UuidChoice::KeepOrInsert(uuid), None) | (UuidChoice::Replace(uuid), _) => (uuid, true),
    };
    root.children.retain(|child| match child {
        Node::Element(e) => !(e.is_plain("name") || (uuid_inserted && e.is_plain("uuid"))),
        _ => true,
    });
    root.children
        .insert(0, Node::Element(Element::new("name").with_text(vm_name)));
    if uuid_inserted {
        let text = uuid.hyphenated().to_string();
        root.children
            .insert(1, Node::Element(Element::new("uuid").with_text(&text)));
    }
    if let Some(marker) = owner {
        owner::set_marker(root, marker);
    }

    if !disks.is_empty() {
        let position = root
            .children
            .iter()
            .position(|c| matches!(c, Node::Element(e) if e.is_plain("devices")));
        let position = position.unwrap_or_else(|| {
            root.children.push(Node::Element(Element::new("devices")));
            root.children.len() - 1
        });
        if let Some(Node::Element(devices)) = root.children.get_mut(position) {
            for (disk, target) in disks.iter().zip(&targets) {
                devices
                    .children
                    .push(Node::Element(disk_element(disk, target, ceph)));
            }
        }
    }

    Ok(RenderedDomain {
        xml: write::write_document(&doc),
        uuid,
        uuid_inserted,
    })
}

/// The `<disk>` of one RBD image.
fn disk_element(disk: &DiskSpec, target: &str, ceph: &CephAccess) -> Element<'static> {
    let mut element = Element::new("disk")
        .with_attr("type", "network")
        .with_attr("device", "disk")
        .with_child(
            Element::new("driver")
                .with_attr("name", "qemu")
                .with_attr("type", "raw")
                .with_attr("cache", "writeback"),
        );
    if let Some(auth) = &ceph.auth {
        let secret_uuid = auth.secret_uuid.hyphenated().to_string();
        element = element.with_child(
            Element::new("auth")
                .with_attr("username", &auth.username)
                .with_child(
                    Element::new("secret")
                        .with_attr("type", "ceph")
                        .with_attr("uuid", &secret_uuid),
                ),
        );
    }
    let mut source = Element::new("source")
        .with_attr("protocol", "rbd")
        .with_attr("name", &disk.rbd_source_name());
    for (host, port) in &ceph.monitors {
        source = source.with_child(
            Element::new("host")
                .with_attr("name", host)
                .with_attr("port", &port.to_string()),
        );
    }
    element.with_child(source).with_child(
        Element::new("target")
            .with_attr("dev", target)
            .with_attr("bus", disk.bus.as_str()),
    )
}

/// Target names in order: per prefix `a`, `b`, ..., `z`, `aa`, `ab`, ... (libvirt's scheme).
fn allocate_targets(disks: &[DiskSpec]) -> Vec<String> {
    let mut used: Vec<(&'static str, usize)> = Vec::new();
    disks
        .iter()
        .map(|disk| {
            let prefix = disk.bus.target_prefix();
            let index = match used.iter_mut().find(|(p, _)| *p == prefix) {
                Some((_, next)) => {
                    *next += 1;
                    *next - 1
                }
                None => {
                    used.push((prefix, 1));
                    0
                }
            };
            format!("{prefix}{}", disk_letters(index))
        })
        .collect()
}

/// `0 -> a`, `25 -> z`, `26 -> aa`, `27 -> ab`, ... (bijective base 26).
fn disk_letters(index: usize) -> String {
    let mut letters = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        letters.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
    }
    letters.iter().rev().collect()
}

/// Fails if a disk of the base XML (an allowed one) already has one of `targets`.
fn check_target_conflicts(root: &Element<'_>, targets: &[String]) -> Result<(), DomainXmlError> {
    let existing = root
        .elements_named("devices")
        .flat_map(|d| d.elements_named("disk"))
        .flat_map(|d| d.elements_named("target"));
    for target in existing {
        for dev in target.attr_values("dev") {
            if targets.iter().any(|t| *t == trim_xml(&dev)) {
                return Err(DomainXmlError::TargetConflict {
                    line: target.line,
                    target: dev,
                });
            }
        }
    }
    Ok(())
}

/// The domain's `<uuid>`: `None` if absent or empty; an error if invalid or repeated.
fn domain_uuid(root: &Element<'_>) -> Result<Option<Uuid>, DomainXmlError> {
    let mut uuids = root.elements().filter(|e| e.is_plain("uuid"));
    let first = uuids.next();
    if let Some(second) = uuids.next() {
        return Err(DomainXmlError::DuplicateElement {
            line: second.line,
            element: "uuid",
        });
    }
    let Some(element) = first else {
        return Ok(None);
    };
    let text = element.text();
    let invalid = |reason| DomainXmlError::InvalidUuid {
        line: element.line,
        value: text.clone(),
        reason,
    };
    if element.elements().next().is_some() {
        return Err(invalid("<uuid> may contain only text"));
    }
    let value = trim_xml(&text);
    if value.is_empty() {
        return Ok(None);
    }
    parse_libvirt_uuid(value).map(Some).map_err(invalid)
}

/// Parses a UUID as libvirt does: 32 hexadecimal digits, dashes allowed anywhere between them.
fn parse_libvirt_uuid(value: &str) -> Result<Uuid, &'static str> {
    if !value.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
        return Err("a UUID has only hexadecimal digits and dashes");
    }
    let digits: String = value.chars().filter(|&c| c != '-').collect();
    if digits.len() != 32 {
        return Err("a UUID has 32 hexadecimal digits");
    }
    let uuid = Uuid::try_parse(&digits).map_err(|_| "not a UUID")?;
    if uuid.is_nil() {
        return Err("the nil UUID cannot identify a domain");
    }
    Ok(uuid)
}

/// A libvirt domain name: non-empty, no `/`, no control characters, no surrounding spaces.
fn check_vm_name(name: &str) -> Result<(), DomainXmlError> {
    let reason = if name.is_empty() {
        Some("a domain name cannot be empty")
    } else if name.contains('/') {
        Some("libvirt domain names cannot contain '/'")
    } else if name.chars().any(char::is_control) {
        Some("a domain name cannot contain control characters")
    } else if name.trim() != name {
        Some("a domain name cannot start or end with spaces")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DomainXmlError::InvalidInput {
            what: "VM name",
            value: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// An RBD pool, namespace or image name as it appears in a libvirt RBD source name.
fn check_rbd_name(what: &'static str, name: &str) -> Result<(), DomainXmlError> {
    let reason = if name.is_empty() {
        Some("it cannot be empty")
    } else if name.contains(['/', '@']) {
        Some("'/' and '@' separate pool, namespace, image and snapshot in RBD names")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("spaces and control characters are not allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DomainXmlError::InvalidInput {
            what,
            value: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}
