//! Pure decisions of a VM reconcile: check the spec, settle the UUID, resolve disk sources and
//! render the domain XML into the request the storage layer carries out.

use std::collections::BTreeMap;

use kube::ResourceExt;
use uuid::Uuid;

use crate::api::{self, DiskSource, VirtualMachine};
use crate::controller::context::ControllerSettings;
use crate::controller::storage::{DiskRequest, ResolvedSource, VmStorageRequest, parse_quantity};
use crate::domain_xml::{self, DiskSpec, DomainXmlError};
use crate::naming::{self, NamespaceMap, VmNames};

/// Why a spec cannot be carried out. None of these is fixed by retrying the same spec, except
/// the ones about a clone source, which may become ready.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    InvalidXml(#[from] DomainXmlError),
    #[error(
        "the domain UUID {uuid} is already used by {other}; spec.xml is immutable: create this VM again \
         with an XML without <uuid> (it then gets a UUID of its own), or delete the other VM \
         (this one is checked again every {} s)", DUPLICATE_UUID_RECHECK.as_secs()
    )]
    DuplicateUuid { uuid: Uuid, other: String },
    #[error(
        "disk {disk}: a VirtualMachine cannot be cloned from itself; name another VM of this namespace in source.vm.name"
    )]
    CloneOfItself { disk: usize },
    #[error("disk {disk}: {message}")]
    InvalidSize { disk: usize, message: String },
    #[error("disk {disk}: the controller imports files only from {allowed}; {path} is not under one of them")]
    PathNotAllowed {
        disk: usize,
        path: String,
        allowed: String,
    },
    #[error("disk {disk}: clone source VirtualMachine {source_vm} does not exist in this namespace")]
    SourceNotFound { disk: usize, source_vm: String },
    #[error("disk {disk}: clone source VirtualMachine {source_vm} is being deleted")]
    SourceBeingDeleted { disk: usize, source_vm: String },
    #[error(
        "disk {disk}: clone source VirtualMachine {source_vm} has no storage yet (its StorageReady condition is not True)"
    )]
    SourceNotReady { disk: usize, source_vm: String },
    #[error("disk {disk}: clone source VirtualMachine {source_vm} has no disk {disk}")]
    SourceHasNoSuchDisk { disk: usize, source_vm: String },
    #[error(
        "disk {disk}: {kind} source {location} is outside this VM's own RBD namespace ('{own}' of pool {pool}) \
         and a cluster admin has not shared it (the controller's --shared-image-namespaces); \
         copy or clone only from your own namespace or from a shared one"
    )]
    SourceNotShared {
        disk: usize,
        kind: &'static str,
        location: String,
        own: String,
        pool: String,
    },
}

impl PlanError {
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::InvalidXml(DomainXmlError::PolicyViolations(_)) => "ForbiddenDevice",
            PlanError::InvalidXml(_) => "InvalidXml",
            PlanError::DuplicateUuid { .. } => "DuplicateUuid",
            PlanError::CloneOfItself { .. } => "CloneOfItself",
            PlanError::InvalidSize { .. } => "InvalidSize",
            PlanError::PathNotAllowed { .. } => "PathNotAllowed",
            PlanError::SourceNotFound { .. } => "SourceNotFound",
            PlanError::SourceBeingDeleted { .. } => "SourceBeingDeleted",
            PlanError::SourceNotReady { .. } => "SourceNotReady",
            PlanError::SourceHasNoSuchDisk { .. } => "SourceHasNoSuchDisk",
            PlanError::SourceNotShared { .. } => "SourceNotShared",
        }
    }

    /// A source that does not exist yet or is not ready may become usable: retry with back-off.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PlanError::SourceNotFound { .. } | PlanError::SourceNotReady { .. }
        )
    }
}

/// How often a VM refused for a duplicate UUID is checked again: the other VM may be deleted.
pub const DUPLICATE_UUID_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Everything the reconcile needs to act.
#[derive(Clone, Debug)]
pub struct Plan {
    pub uuid: Uuid,
    /// Name of the libvirt domain.
    pub domain: String,
    pub memory_mib: i64,
    pub request: VmStorageRequest,
    /// What the user should know about the VM as vm_manager sees it (published as events when
    /// the storage is first ready).
    pub warnings: Vec<String>,
}

/// A warning when the disks are not all on one bus: vm_manager keeps one bus per VM
/// (`_disk_bus`, the system disk's here), so its `clone` of this VM attaches every disk on it.
/// The stored `xml` runs each disk on its own bus, so Pacemaker starts the VM as it is.
pub fn mixed_bus_warning(vm: &VirtualMachine) -> Option<String> {
    let system = vm.spec.system_disk.bus;
    let others: Vec<String> = vm
        .spec
        .data_disks
        .iter()
        .enumerate()
        .filter(|(_, d)| d.bus != system)
        .map(|(i, d)| format!("data disk {i} on {}", bus(d.bus)))
        .collect();
    if others.is_empty() {
        return None;
    }
    Some(format!(
        "the disks are on mixed buses (system disk on {}, {}): vm_manager keeps one bus per VM \
         (_disk_bus={}), so a vm_manager clone of this VM attaches every disk on {}; the VM \
         itself runs each disk on its own bus. Clone it into a VirtualMachine (source.vm) to \
         keep the buses",
        bus(system),
        others.join(", "),
        bus(system),
        bus(system)
    ))
}

/// The UUID a VM's domain gets when its XML has none: derived from the object's UID, so every
/// reconcile (and every controller replica) computes the same one without storing it first.
pub fn generated_uuid(object_uid: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("seapath.lfenergy.org/vm/{object_uid}").as_bytes(),
    )
}

/// Where the domain UUID of a VM comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UuidSource {
    /// Its base XML has one (or cannot be read: the plan reports that).
    BaseXml,
    /// Its status records the UUID the storage was checked with (StorageReady is True).
    Recorded(Uuid),
    /// The stored `xml` must be read: an existing VM (adopted, or a status lost) keeps the UUID
    /// it runs with; none there means a new one is generated.
    Storage,
}

/// Where the domain UUID of `vm` comes from (pure: the reconcile reads Ceph only for
/// [`UuidSource::Storage`]).
pub fn uuid_source(vm: &VirtualMachine) -> UuidSource {
    if !matches!(domain_xml::extract_uuid(&vm.spec.xml), Ok(None)) {
        return UuidSource::BaseXml;
    }
    let recorded = vm.status.as_ref().and_then(|s| {
        let ready =
            crate::controller::conditions::is_true(&s.conditions, api::condition_types::STORAGE_READY);
        let uuid = s.domain_uuid.as_deref().and_then(|u| Uuid::parse_str(u).ok());
        uuid.filter(|_| ready && s.storage.is_some())
    });
    match recorded {
        Some(uuid) => UuidSource::Recorded(uuid),
        None => UuidSource::Storage,
    }
}

/// The UUID a VM has or will have: the one its status records, else its XML's, else generated.
fn effective_uuid(vm: &VirtualMachine) -> Option<Uuid> {
    if let Some(uuid) = vm.status.as_ref().and_then(|s| s.domain_uuid.as_deref()) {
        return Uuid::parse_str(uuid).ok();
    }
    match domain_xml::extract_uuid(&vm.spec.xml) {
        Ok(Some(uuid)) => Some(uuid),
        _ => vm.metadata.uid.as_deref().map(generated_uuid),
    }
}

/// Another VM using `uuid` that keeps it: the older object wins, the name breaks ties.
fn uuid_owner<'a>(
    vm: &VirtualMachine,
    uuid: Uuid,
    others: &'a [std::sync::Arc<VirtualMachine>],
) -> Option<&'a VirtualMachine> {
    let key = |v: &VirtualMachine| {
        (
            v.metadata.creation_timestamp.clone().map(|t| t.0),
            v.namespace(),
            v.name_any(),
        )
    };
    others
        .iter()
        .map(|o| o.as_ref())
        .filter(|o| o.metadata.uid != vm.metadata.uid)
        .filter(|o| effective_uuid(o) == Some(uuid))
        .find(|o| {
            // One that already runs with it keeps it whatever its age.
            o.status.as_ref().is_some_and(|s| s.domain_uuid.is_some()) || key(o) < key(vm)
        })
}

fn bus(bus: api::DiskBus) -> domain_xml::DiskBus {
    match bus {
        api::DiskBus::Virtio => domain_xml::DiskBus::Virtio,
        api::DiskBus::Scsi => domain_xml::DiskBus::Scsi,
        api::DiskBus::Sata => domain_xml::DiskBus::Sata,
        api::DiskBus::Ide => domain_xml::DiskBus::Ide,
    }
}

/// A `path` source reads a file with the controller's rights, so only directories a cluster
/// admin listed are allowed, and `..` may not climb out of them.
fn check_import_path(disk: usize, path: &str, import_dirs: &[std::path::PathBuf]) -> Result<(), PlanError> {
    let candidate = std::path::Path::new(path);
    let climbs = candidate
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir));
    if !climbs && import_dirs.iter().any(|dir| candidate.starts_with(dir)) {
        return Ok(());
    }
    let allowed = if import_dirs.is_empty() {
        "no directory (the controller's --import-dirs is empty)".to_owned()
    } else {
        import_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(PlanError::PathNotAllowed {
        disk,
        path: path.to_owned(),
        allowed,
    })
}

/// Where a VM may read source images: its own RBD namespace in the operator's pool, and the
/// namespaces a cluster admin shared.
struct SourceScope<'a> {
    pool: &'a str,
    rbd_namespace: &'a str,
    namespace_map: &'a NamespaceMap,
    settings: &'a ControllerSettings,
}

impl SourceScope<'_> {
    /// `rbd` and `golden` sources name a pool and an RBD namespace: one tenant must not reach
    /// another's disks (or pin its snapshots with clones) by naming its namespace.
    fn check_reach(
        &self,
        disk: usize,
        kind: &'static str,
        pool: &str,
        namespace: &str,
        image: &str,
    ) -> Result<(), PlanError> {
        let own = pool == self.pool && namespace == self.rbd_namespace;
        if own
            || self
                .settings
                .shared_image_namespaces
                .shares(self.pool, pool, namespace)
        {
            return Ok(());
        }
        Err(PlanError::SourceNotShared {
            disk,
            kind,
            location: if namespace.is_empty() {
                format!("{pool}/{image} (RBD's default namespace)")
            } else {
                format!("{pool}/{namespace}/{image}")
            },
            own: self.rbd_namespace.to_owned(),
            pool: self.pool.to_owned(),
        })
    }
}

fn resolve_source(
    disk_index: usize,
    source: &DiskSource,
    vm: &VirtualMachine,
    scope: &SourceScope,
    others: &[std::sync::Arc<VirtualMachine>],
) -> Result<ResolvedSource, PlanError> {
    if let Some(http) = &source.http {
        return Ok(ResolvedSource::Http {
            url: http.url.clone(),
            format: http.format,
        });
    }
    if let Some(path) = &source.path {
        check_import_path(disk_index, &path.path, &scope.settings.import_dirs)?;
        return Ok(ResolvedSource::Path {
            path: path.path.clone().into(),
            format: path.format,
        });
    }
    if let Some(rbd) = &source.rbd {
        return resolve_rbd_source(disk_index, rbd, scope);
    }
    if let Some(golden) = &source.golden {
        return resolve_golden_source(disk_index, golden, scope);
    }
    if let Some(clone) = &source.vm {
        return resolve_clone_source(disk_index, clone, vm, scope, others);
    }
    Ok(ResolvedSource::Blank)
}

fn resolve_rbd_source(
    disk_index: usize,
    rbd: &api::RbdSource,
    scope: &SourceScope,
) -> Result<ResolvedSource, PlanError> {
    let source_pool = rbd.pool.clone().unwrap_or_else(|| scope.pool.to_owned());
    let namespace = rbd
        .namespace
        .clone()
        .unwrap_or_else(|| scope.rbd_namespace.to_owned());
    scope.check_reach(disk_index, "rbd", &source_pool, &namespace, &rbd.image)?;
    Ok(ResolvedSource::Rbd {
        pool: source_pool,
        namespace,
        image: rbd.image.clone(),
    })
}

fn resolve_golden_source(
    disk_index: usize,
    golden: &api::GoldenSource,
    scope: &SourceScope,
) -> Result<ResolvedSource, PlanError> {
    let source_pool = golden.pool.clone().unwrap_or_else(|| scope.pool.to_owned());
    let namespace = golden.namespace.clone().unwrap_or_default();
    scope.check_reach(disk_index, "golden", &source_pool, &namespace, &golden.image)?;
    Ok(ResolvedSource::Golden {
        pool: source_pool,
        namespace,
        image: golden.image.clone(),
        snapshot: golden.snapshot.clone(),
    })
}

fn resolve_clone_source(
    disk_index: usize,
    clone: &api::VmSource,
    vm: &VirtualMachine,
    scope: &SourceScope,
    others: &[std::sync::Arc<VirtualMachine>],
) -> Result<ResolvedSource, PlanError> {
    if clone.name == vm.name_any() {
        return Err(PlanError::CloneOfItself { disk: disk_index });
    }
    let namespace = vm.namespace().unwrap_or_default();
    let source_vm = clone_source_vm(disk_index, &clone.name, &namespace, others)?;
    let names = VmNames::new(
        &scope.namespace_map.rbd_namespace(&namespace),
        &source_vm.storage_name(),
    );
    let image = names
        .images(source_vm.spec.data_disks.len())
        .swap_remove(disk_index);
    Ok(ResolvedSource::CloneOf {
        pool: scope.pool.to_owned(),
        namespace: names.rbd_namespace,
        image,
        snapshot: clone.snapshot.clone(),
    })
}

/// The VirtualMachine `source_name` of `namespace` that disk `disk_index` is cloned from, or
/// why it cannot be (yet: a missing or unready source may still come, see
/// [`PlanError::is_retryable`]).
fn clone_source_vm<'a>(
    disk_index: usize,
    source_name: &str,
    namespace: &str,
    others: &'a [std::sync::Arc<VirtualMachine>],
) -> Result<&'a VirtualMachine, PlanError> {
    let source_vm = others
        .iter()
        .find(|o| o.name_any() == source_name && o.namespace().as_deref() == Some(namespace))
        .ok_or_else(|| PlanError::SourceNotFound {
            disk: disk_index,
            source_vm: source_name.to_owned(),
        })?;
    if source_vm.metadata.deletion_timestamp.is_some() {
        return Err(PlanError::SourceBeingDeleted {
            disk: disk_index,
            source_vm: source_name.to_owned(),
        });
    }
    let ready = source_vm.status.as_ref().is_some_and(|s| {
        crate::controller::conditions::is_true(&s.conditions, api::condition_types::STORAGE_READY)
    });
    if !ready {
        return Err(PlanError::SourceNotReady {
            disk: disk_index,
            source_vm: source_name.to_owned(),
        });
    }
    if disk_index > source_vm.spec.data_disks.len() {
        return Err(PlanError::SourceHasNoSuchDisk {
            disk: disk_index,
            source_vm: source_name.to_owned(),
        });
    }
    Ok(source_vm)
}

/// Whether the VM's status records `image` as built: it exists whatever became of its source.
fn built_already(vm: &VirtualMachine, image: &str) -> bool {
    vm.status
        .as_ref()
        .and_then(|s| s.storage.as_ref())
        .is_some_and(|storage| storage.images.iter().any(|i| i.name == image))
}

/// vm_manager's internal metadata keys that follow from what the spec sets.
fn internal_metadata(vm: &VirtualMachine) -> BTreeMap<String, String> {
    let spec = &vm.spec;
    let mut keys = BTreeMap::from([(
        naming::META_DISK_BUS.to_owned(),
        bus(spec.system_disk.bus).to_string(),
    )]);
    if let Some(seconds) = spec.stop_timeout_seconds {
        keys.insert(naming::META_STOP_TIMEOUT.to_owned(), seconds.to_string());
    }
    if let Some(placement) = &spec.placement {
        if let Some(node) = &placement.pinned_node {
            keys.insert(naming::META_PINNED_HOST.to_owned(), node.clone());
        }
        if let Some(node) = &placement.preferred_node {
            keys.insert(naming::META_PREFERRED_HOST.to_owned(), node.clone());
        }
        keys.insert(naming::META_PRIORITY.to_owned(), placement.priority.to_string());
    }
    keys
}

/// Checks a VM's spec against the policy and the other VMs, and computes what to build.
/// `stored_uuid` is the UUID the VM's stored `xml` runs with (see [`uuid_source`]): when the
/// base XML has none, it is kept, and only a VM without one gets a generated UUID.
pub fn plan(
    vm: &VirtualMachine,
    settings: &ControllerSettings,
    pool: &str,
    namespace_map: &NamespaceMap,
    others: &[std::sync::Arc<VirtualMachine>],
    stored_uuid: Option<Uuid>,
) -> Result<Plan, PlanError> {
    let namespace = vm.namespace().unwrap_or_default();
    let name = vm.name_any();
    let uid = vm.metadata.uid.clone().unwrap_or_default();
    let policy = settings.policy.for_namespace(&namespace);
    let summary = domain_xml::validate_base_xml(&vm.spec.xml, &policy)?;
    let uuid = summary
        .uuid
        .or(stored_uuid)
        .unwrap_or_else(|| generated_uuid(&uid));
    check_uuid_not_taken(vm, uuid, others)?;

    let rbd_namespace = namespace_map.rbd_namespace(&namespace);
    let storage_name = vm.storage_name();
    let names = VmNames::new(&rbd_namespace, &storage_name);
    let scope = SourceScope {
        pool,
        rbd_namespace: &rbd_namespace,
        namespace_map,
        settings,
    };
    let (disks, disk_specs) = plan_disks(vm, &names, &scope, others)?;
    let owner = domain_xml::DomainOwner {
        namespace: namespace.clone(),
        name: name.clone(),
        uid: uid.clone(),
    };
    let rendered = domain_xml::render_domain_xml_with_uuid(
        &vm.spec.xml,
        &names.domain(),
        uuid,
        &disk_specs,
        &settings.ceph_access,
        &policy,
        Some(&owner),
    )?;
    Ok(Plan {
        uuid: rendered.uuid,
        domain: names.domain(),
        memory_mib: (summary.memory_kib / 1024) as i64,
        request: VmStorageRequest {
            kube_namespace: namespace,
            name: storage_name,
            object_name: name,
            uid,
            disks,
            base_xml: vm.spec.xml.clone(),
            rendered_xml: rendered.xml,
            metadata: vm.spec.metadata.clone(),
            internal: internal_metadata(vm),
            creation_defaults: creation_defaults(),
        },
        warnings: mixed_bus_warning(vm).into_iter().collect(),
    })
}

/// Refuses `uuid` when another VM keeps it (see [`uuid_owner`]).
fn check_uuid_not_taken(
    vm: &VirtualMachine,
    uuid: Uuid,
    others: &[std::sync::Arc<VirtualMachine>],
) -> Result<(), PlanError> {
    let Some(other) = uuid_owner(vm, uuid, others) else {
        return Ok(());
    };
    // Another tenant's VM is not named to this one.
    let other = if other.namespace() == vm.namespace() {
        let namespace = vm.namespace().unwrap_or_default();
        format!("VirtualMachine {namespace}/{}", other.name_any())
    } else {
        "a VirtualMachine of another namespace".to_owned()
    };
    Err(PlanError::DuplicateUuid { uuid, other })
}

/// What to build for each disk, the system disk first, and how the domain XML attaches it.
fn plan_disks(
    vm: &VirtualMachine,
    names: &VmNames,
    scope: &SourceScope,
    others: &[std::sync::Arc<VirtualMachine>],
) -> Result<(Vec<DiskRequest>, Vec<DiskSpec>), PlanError> {
    let all_disks: Vec<&api::Disk> = std::iter::once(&vm.spec.system_disk)
        .chain(&vm.spec.data_disks)
        .collect();
    let image_names = names.images(vm.spec.data_disks.len());
    let mut disks = Vec::with_capacity(all_disks.len());
    let mut disk_specs = Vec::with_capacity(all_disks.len());
    for (index, (disk, image)) in all_disks.iter().zip(&image_names).enumerate() {
        let size_bytes = disk_size_bytes(index, disk)?;
        let resolved = resolve_source(index, &disk.source, vm, scope, others);
        let source = match resolved {
            Ok(source) => source,
            // A clone's source may go away once the copy exists: the copy does not need it.
            Err(err) if built_already(vm, image) => ResolvedSource::Built {
                unavailable: err.to_string(),
            },
            Err(err) => return Err(err),
        };
        disks.push(DiskRequest { source, size_bytes });
        disk_specs.push(DiskSpec {
            pool: scope.pool.to_owned(),
            namespace: Some(scope.rbd_namespace.to_owned()).filter(|ns| !ns.is_empty()),
            image: image.clone(),
            bus: bus(disk.bus),
        });
    }
    Ok((disks, disk_specs))
}

fn disk_size_bytes(disk_index: usize, disk: &api::Disk) -> Result<Option<u64>, PlanError> {
    disk.size
        .as_deref()
        .map(parse_quantity)
        .transpose()
        .map_err(|e| PlanError::InvalidSize {
            disk: disk_index,
            message: e.to_string(),
        })
}

/// The operator's defaults for what the spec leaves unset, so that vm_manager agrees with the
/// operator on a VM the operator made (see [`VmStorageRequest::creation_defaults`]).
fn creation_defaults() -> BTreeMap<String, String> {
    BTreeMap::from([(
        naming::META_STOP_TIMEOUT.to_owned(),
        api::DEFAULT_STOP_TIMEOUT_SECONDS.to_string(),
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_paths_stay_in_allowed_directories() {
        let dirs = vec![std::path::PathBuf::from("/srv/images")];
        assert!(check_import_path(0, "/srv/images/debian.qcow2", &dirs).is_ok());
        assert!(check_import_path(0, "/srv/images/../../etc/shadow", &dirs).is_err());
        assert!(check_import_path(0, "/srv/imagesX/a.qcow2", &dirs).is_err());
        let err = check_import_path(1, "/etc/shadow", &[]).unwrap_err();
        assert_eq!(err.reason(), "PathNotAllowed");
        assert!(err.to_string().contains("--import-dirs"), "{err}");
    }

    fn settings(shared: &str) -> ControllerSettings {
        ControllerSettings {
            policy: Default::default(),
            ceph_access: crate::domain_xml::CephAccess {
                monitors: vec![],
                auth: None,
            },
            storage_recheck: std::time::Duration::from_secs(1),
            node_lost_grace: std::time::Duration::from_secs(1),
            resync: std::time::Duration::from_secs(1),
            import_dirs: vec![],
            shared_image_namespaces: naming::SharedImageNamespaces::parse(shared).unwrap(),
        }
    }

    #[test]
    fn sources_stay_in_the_tenants_own_namespace_unless_shared() {
        let map = NamespaceMap::default();
        let settings = settings("golden,images/");
        let scope = SourceScope {
            pool: "rbd",
            rbd_namespace: "tenant-a",
            namespace_map: &map,
            settings: &settings,
        };
        let table = [
            ("own namespace", "rbd", "tenant-a", true),
            ("another tenant", "rbd", "default", false),
            ("RBD's default namespace", "rbd", "", false),
            ("own namespace name in another pool", "other", "tenant-a", false),
            ("shared namespace", "rbd", "golden", true),
            ("shared default namespace of another pool", "images", "", true),
            ("shared name, wrong pool", "images", "golden", false),
        ];
        for (name, pool, namespace, allowed) in table {
            let result = scope.check_reach(0, "rbd", pool, namespace, "system_x");
            assert_eq!(result.is_ok(), allowed, "{name}: {result:?}");
        }
        let err = scope
            .check_reach(1, "golden", "rbd", "default", "system_x")
            .unwrap_err();
        assert_eq!(err.reason(), "SourceNotShared");
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "disk 1: golden source rbd/default/system_x is outside this VM's own RBD namespace \
             ('tenant-a' of pool rbd) and a cluster admin has not shared it (the controller's \
             --shared-image-namespaces); copy or clone only from your own namespace or from a shared one"
        );
    }

    #[test]
    fn the_uuid_comes_from_the_xml_the_status_or_the_stored_xml() {
        let recorded = "5c4f1e0a-3d2b-4c1a-9e8f-7a6b5c4d3e2f";
        let vm = |xml: &str, ready: &str, domain_uuid: Option<&str>, storage: bool| -> VirtualMachine {
            let mut status = serde_json::json!({
                "conditions": [{"type": "StorageReady", "status": ready, "reason": "r", "message": "",
                                "lastTransitionTime": "2024-01-01T00:00:00Z"}],
            });
            if let Some(u) = domain_uuid {
                status["domainUuid"] = u.into();
            }
            if storage {
                status["storage"] =
                    serde_json::json!({"pool": "rbd", "namespace": "", "group": "vm1", "images": []});
            }
            serde_json::from_value(serde_json::json!({
                "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": "vm1", "namespace": "ns", "uid": "u1"},
                "spec": {"xml": xml, "systemDisk": {"source": {"blank": {}}, "size": "1Mi"}},
                "status": status,
            }))
            .unwrap()
        };
        let with_uuid = "<domain><uuid>0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0</uuid></domain>";
        let without = "<domain><name>x</name></domain>";
        let parsed = Uuid::parse_str(recorded).unwrap();
        let table = [
            (
                "the base XML has one",
                vm(with_uuid, "True", Some(recorded), true),
                UuidSource::BaseXml,
            ),
            (
                "an unreadable XML: the plan says so",
                vm("<domain", "False", None, false),
                UuidSource::BaseXml,
            ),
            (
                "recorded with ready storage",
                vm(without, "True", Some(recorded), true),
                UuidSource::Recorded(parsed),
            ),
            (
                "storage not ready: read it",
                vm(without, "False", Some(recorded), true),
                UuidSource::Storage,
            ),
            (
                "no storage recorded: read it",
                vm(without, "True", Some(recorded), false),
                UuidSource::Storage,
            ),
            (
                "no UUID recorded (a status lost): read it",
                vm(without, "True", None, true),
                UuidSource::Storage,
            ),
            (
                "a garbled UUID: read it",
                vm(without, "True", Some("nope"), true),
                UuidSource::Storage,
            ),
        ];
        for (case, vm, expected) in table {
            assert_eq!(uuid_source(&vm), expected, "{case}");
        }
    }

    #[test]
    fn mixed_buses_are_warned_about() {
        let vm = |buses: &[&str]| -> VirtualMachine {
            let disk = |b: &str| serde_json::json!({"source": {"blank": {}}, "size": "1Mi", "bus": b});
            serde_json::from_value(serde_json::json!({
                "apiVersion": "seapath.lfenergy.org/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": "vm1", "namespace": "ns"},
                "spec": {"xml": "<domain/>", "systemDisk": disk(buses[0]),
                         "dataDisks": buses[1..].iter().map(|b| disk(b)).collect::<Vec<_>>()},
            }))
            .unwrap()
        };
        assert_eq!(mixed_bus_warning(&vm(&["virtio"])), None);
        assert_eq!(mixed_bus_warning(&vm(&["sata", "sata", "sata"])), None);
        let warning = mixed_bus_warning(&vm(&["virtio", "virtio", "sata"])).unwrap();
        assert!(
            warning.contains("system disk on virtio, data disk 1 on sata"),
            "{warning}"
        );
        assert!(warning.contains("_disk_bus=virtio"), "{warning}");
    }

    #[test]
    fn generated_uuids_are_stable_per_object() {
        assert_eq!(generated_uuid("a"), generated_uuid("a"));
        assert_ne!(generated_uuid("a"), generated_uuid("b"));
    }
}
