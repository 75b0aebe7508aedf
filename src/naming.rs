//! Names shared with SEAPATH's vm_manager: the RBD group, images and metadata keys of a VM, the
//! Kubernetes-namespace-to-RBD-namespace mapping, and the libvirt domain name.

use std::collections::BTreeMap;

/// Metadata key (on the system image) holding the VM name, as vm_manager writes it.
pub const META_VM_NAME: &str = "vm_name";
/// Metadata key holding the user's base XML.
pub const META_BASE_XML: &str = "_base_xml";
/// Metadata key holding the generated XML that runs.
pub const META_XML: &str = "xml";
/// vm_manager's internal keys the operator writes.
pub const META_STOP_TIMEOUT: &str = "_stop_timeout";
pub const META_PINNED_HOST: &str = "_pinned_host";
pub const META_PREFERRED_HOST: &str = "_preferred_host";
pub const META_PRIORITY: &str = "_priority";
pub const META_DISK_BUS: &str = "_disk_bus";
pub const META_ADDITIONAL_DISKS: &str = "_additional_disks";
/// Operator-only key: UID of the Kubernetes object that owns the VM's RBD data. A group without
/// it was made by vm_manager (adoptable); one with another UID belongs to another object.
pub const META_OWNER_UID: &str = "_k8s_owner_uid";
/// Operator-only key: `namespace/name` of the owning object, for humans reading `rbd image-meta`.
pub const META_OWNER: &str = "_k8s_owner";
/// Operator-only key: the VM (RBD) name the owner keys were written for. A deep copy (vm_manager's
/// `clone`) carries every key of its source onto images of another VM: there the owner keys
/// name nobody, and the copy can be adopted.
pub const META_OWNER_VM: &str = "_k8s_owner_vm";

/// Whether an image's owner keys were written for an image of the VM `vm`, and not copied
/// along from another VM's image. Keys written before [`META_OWNER_VM`] existed name the VM in
/// `_k8s_owner` (`namespace/name`; the object was then named like its VM); keys that say
/// nothing of the VM count (never treat a possible owner as absent).
pub fn owner_keys_written_for(metadata: &BTreeMap<String, String>, vm: &str) -> bool {
    match (metadata.get(META_OWNER_VM), metadata.get(META_OWNER)) {
        (Some(written_for), _) => written_for == vm,
        (None, Some(owner)) => owner.rsplit_once('/').is_none_or(|(_, name)| name == vm),
        (None, None) => true,
    }
}

/// Keys a user may not set in `spec.metadata`.
pub fn is_reserved_metadata_key(key: &str) -> bool {
    key == META_VM_NAME || key == META_XML || key.starts_with('_')
}

/// RBD names of one VM, vm_manager-compatible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmNames {
    pub vm: String,
    pub rbd_namespace: String,
}

impl VmNames {
    pub fn new(rbd_namespace: &str, vm: &str) -> Self {
        Self {
            vm: vm.to_owned(),
            rbd_namespace: rbd_namespace.to_owned(),
        }
    }

    /// The RBD group is named exactly like the VM.
    pub fn group(&self) -> String {
        self.vm.clone()
    }

    pub fn system_image(&self) -> String {
        format!("system_{}", self.vm)
    }

    pub fn data_image(&self, index: usize) -> String {
        format!("data_{}_{index}", self.vm)
    }

    /// Images in attach order: the system disk, then `data_disks` data disks.
    pub fn images(&self, data_disks: usize) -> Vec<String> {
        std::iter::once(self.system_image())
            .chain((0..data_disks).map(|i| self.data_image(i)))
            .collect()
    }

    /// The libvirt domain name. In the default RBD namespace it is the VM name, as vm_manager
    /// has it; elsewhere the RBD namespace is prefixed so two namespaces' `guest0` never meet on
    /// one hypervisor.
    pub fn domain(&self) -> String {
        if self.rbd_namespace.is_empty() {
            self.vm.clone()
        } else {
            format!("{}_{}", self.rbd_namespace, self.vm)
        }
    }
}

/// How Kubernetes namespaces map to RBD namespaces: explicit entries, and otherwise the
/// Kubernetes namespace name itself. An explicit empty value maps to RBD's default namespace,
/// where vm_manager sees the VMs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceMap {
    explicit: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid RBD namespace mapping '{entry}': {reason} (expected KUBE_NAMESPACE=RBD_NAMESPACE, comma separated)"
)]
pub struct NamespaceMapError {
    pub entry: String,
    pub reason: &'static str,
}

impl NamespaceMap {
    /// Parses `ns1=rbdns1,ns2=` (an empty right-hand side is RBD's default namespace).
    pub fn parse(text: &str) -> Result<Self, NamespaceMapError> {
        let mut explicit = BTreeMap::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (kube, rbd) = entry.split_once('=').ok_or_else(|| NamespaceMapError {
                entry: entry.to_owned(),
                reason: "missing '='",
            })?;
            if kube.is_empty() {
                return Err(NamespaceMapError {
                    entry: entry.to_owned(),
                    reason: "empty Kubernetes namespace",
                });
            }
            if rbd.contains(['/', '@']) {
                return Err(NamespaceMapError {
                    entry: entry.to_owned(),
                    reason: "RBD namespaces cannot contain '/' or '@'",
                });
            }
            if explicit.insert(kube.to_owned(), rbd.to_owned()).is_some() {
                return Err(NamespaceMapError {
                    entry: entry.to_owned(),
                    reason: "namespace mapped twice",
                });
            }
        }
        Ok(Self { explicit })
    }

    pub fn rbd_namespace(&self, kube_namespace: &str) -> String {
        self.explicit
            .get(kube_namespace)
            .cloned()
            .unwrap_or_else(|| kube_namespace.to_owned())
    }
}

/// RBD namespaces a cluster admin shares with every tenant as sources of `rbd` copies and
/// `golden` clones. A VM may always read its own RBD namespace in the operator's pool; any other
/// place must be listed here, so one tenant never reaches another's disks by naming them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedImageNamespaces {
    /// `(pool, namespace)`; `None` is the operator's pool.
    entries: Vec<(Option<String>, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid shared image namespace '{entry}': {reason} (expected NAMESPACE or POOL/NAMESPACE, comma separated; POOL/ alone is the pool's default RBD namespace)"
)]
pub struct SharedImageNamespacesError {
    pub entry: String,
    pub reason: &'static str,
}

impl SharedImageNamespaces {
    /// Parses `golden,images/base,rbd/`: a bare name is an RBD namespace of the operator's pool,
    /// `POOL/NAMESPACE` one of another pool, and `POOL/` a pool's default RBD namespace.
    pub fn parse(text: &str) -> Result<Self, SharedImageNamespacesError> {
        let mut entries = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let error = |reason| SharedImageNamespacesError {
                entry: entry.to_owned(),
                reason,
            };
            let (pool, namespace) = match entry.split_once('/') {
                Some(("", _)) => return Err(error("empty pool name")),
                Some((pool, namespace)) => (Some(pool.to_owned()), namespace.to_owned()),
                None => (None, entry.to_owned()),
            };
            if namespace.contains(['/', '@']) {
                return Err(error("RBD namespaces cannot contain '/' or '@'"));
            }
            entries.push((pool, namespace));
        }
        Ok(Self { entries })
    }

    /// Whether `namespace` of `pool` is shared; `operator_pool` stands for entries without pool.
    pub fn shares(&self, operator_pool: &str, pool: &str, namespace: &str) -> bool {
        self.entries
            .iter()
            .any(|(p, ns)| p.as_deref().unwrap_or(operator_pool) == pool && ns == namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_manager_names() {
        let names = VmNames::new("", "guest0");
        assert_eq!(names.group(), "guest0");
        assert_eq!(
            names.images(2),
            ["system_guest0", "data_guest0_0", "data_guest0_1"]
        );
        assert_eq!(names.domain(), "guest0");
        assert_eq!(VmNames::new("prod", "guest0").domain(), "prod_guest0");
    }

    #[test]
    fn namespace_map() {
        let map = NamespaceMap::parse("seapath=, lab=lab-rbd").unwrap();
        assert_eq!(map.rbd_namespace("seapath"), "");
        assert_eq!(map.rbd_namespace("lab"), "lab-rbd");
        assert_eq!(map.rbd_namespace("other"), "other");
        assert_eq!(NamespaceMap::parse("").unwrap(), NamespaceMap::default());
        assert_eq!(NamespaceMap::parse("a").unwrap_err().reason, "missing '='");
        assert_eq!(
            NamespaceMap::parse("a=x,a=y").unwrap_err().reason,
            "namespace mapped twice"
        );
        assert!(NamespaceMap::parse("a=x/y").is_err());
    }

    #[test]
    fn owner_keys_count_only_on_the_vm_they_were_written_for() {
        let meta = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let table = [
            (
                "written for this VM",
                meta(&[("_k8s_owner_vm", "VM1"), ("_k8s_owner", "ns/vm1")]),
                true,
            ),
            (
                "copied by vm_manager's clone of opvm1",
                meta(&[("_k8s_owner_vm", "opvm1"), ("_k8s_owner", "ns/opvm1")]),
                false,
            ),
            (
                "names are case-sensitive",
                meta(&[("_k8s_owner_vm", "vm1")]),
                false,
            ),
            (
                "older keys naming this VM",
                meta(&[("_k8s_owner", "ns/VM1")]),
                true,
            ),
            (
                "older keys copied from opvm1",
                meta(&[("_k8s_owner", "ns/opvm1")]),
                false,
            ),
            (
                "a bare uid: an owner all the same",
                meta(&[("_k8s_owner_uid", "u")]),
                true,
            ),
            (
                "an unreadable owner: an owner all the same",
                meta(&[("_k8s_owner", "x")]),
                true,
            ),
        ];
        for (case, metadata, expected) in table {
            assert_eq!(owner_keys_written_for(&metadata, "VM1"), expected, "{case}");
        }
    }

    #[test]
    fn reserved_keys() {
        assert!(is_reserved_metadata_key("xml"));
        assert!(is_reserved_metadata_key("_base_xml"));
        assert!(!is_reserved_metadata_key("site"));
    }

    #[test]
    fn shared_image_namespaces() {
        let shared = SharedImageNamespaces::parse("golden, images/base,rbd/").unwrap();
        assert!(shared.shares("rbd", "rbd", "golden"));
        assert!(
            !shared.shares("other", "rbd", "golden"),
            "a bare name is in the operator's pool"
        );
        assert!(shared.shares("rbd", "images", "base"));
        assert!(shared.shares("vms", "rbd", ""), "POOL/ is the default namespace");
        assert!(!shared.shares("rbd", "rbd", "tenant"));
        assert!(!SharedImageNamespaces::default().shares("rbd", "rbd", ""));
        assert!(SharedImageNamespaces::parse("/x").is_err());
        assert!(SharedImageNamespaces::parse("a/b/c").is_err());
    }
}
