//! Pure decisions of the storage layer: request validation, temporary names, who owns what,
//! which metadata to write, free space, and parsing of what Ceph and qemu-img print.
//! No I/O here; `rbd.rs` and `import.rs` gather facts and carry the decisions out.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::{Result, StorageError, human_bytes};
use super::{DiskRequest, ResolvedSource, VmStorageRequest};
use crate::naming::{
    META_ADDITIONAL_DISKS, META_BASE_XML, META_DISK_BUS, META_OWNER, META_OWNER_UID, META_OWNER_VM,
    META_PRIORITY, META_STOP_TIMEOUT, META_VM_NAME, META_XML, owner_keys_written_for,
};

/// Prefix of the temporary images disks are built under.
pub(crate) const TEMP_PREFIX: &str = "tmp_";

/// Prefix of the scratch files downloads are kept in before conversion.
pub(crate) const SCRATCH_PREFIX: &str = "seapath-import-";

/// The part of a Kubernetes UID used in temporary names: its letters and digits, lowercased
/// (a UUID without dashes).
pub(crate) fn uid_key(uid: &str) -> String {
    uid.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// `tmp_<final image name>_<uid key>`: only letters, digits and `_`, so a valid RBD name; it
/// never looks like a VM image (those start with `system_` or `data_`), and it names the owner.
pub(crate) fn temp_image_name(final_name: &str, uid_key: &str) -> String {
    format!("{TEMP_PREFIX}{final_name}_{uid_key}")
}

/// Whether `image` is a temporary image of the object with this UID key.
pub(crate) fn is_own_temp_image(image: &str, uid_key: &str) -> bool {
    image.starts_with(TEMP_PREFIX)
        && image.len() > TEMP_PREFIX.len() + uid_key.len() + 1
        && image.ends_with(&format!("_{uid_key}"))
}

/// Name of the scratch file of the download of disk `index`.
pub(crate) fn scratch_file_name(uid_key: &str, index: usize) -> String {
    format!("{SCRATCH_PREFIX}{uid_key}-{index}.download")
}

/// Whether a scratch file belongs to the object with this UID key.
pub(crate) fn is_own_scratch_file(file: &str, uid_key: &str) -> bool {
    file.starts_with(&format!("{SCRATCH_PREFIX}{uid_key}-"))
}

fn is_alnum_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// Keys this layer computes itself; the request may not set them.
const COMPUTED_KEYS: [&str; 7] = [
    META_OWNER_UID,
    META_OWNER,
    META_OWNER_VM,
    META_BASE_XML,
    META_ADDITIONAL_DISKS,
    META_XML,
    META_VM_NAME,
];

/// Checks what the Kubernetes API cannot: names usable in RBD, sources complete, keys sane.
pub(crate) fn validate_request(req: &VmStorageRequest) -> Result<()> {
    let invalid = |m: String| Err(StorageError::InvalidRequest(m));
    if !is_alnum_name(&req.name) {
        return invalid(format!(
            "VM name '{}' must be letters and digits only (SEAPATH names RBD images after it)",
            req.name
        ));
    }
    if req.kube_namespace.is_empty() {
        return invalid("the Kubernetes namespace is empty".into());
    }
    if uid_key(&req.uid).is_empty() {
        return invalid(format!("object UID '{}' has no letters or digits", req.uid));
    }
    if req.disks.is_empty() {
        return invalid("a VM needs a system disk".into());
    }
    for key in req.metadata.keys() {
        if !is_alnum_name(key) || key == META_XML {
            return invalid(format!(
                "metadata key '{key}' must be letters and digits only and not the reserved 'xml'"
            ));
        }
    }
    for key in req.internal.keys().chain(req.creation_defaults.keys()) {
        if !key.starts_with('_') || key.len() < 2 {
            return invalid(format!("internal metadata key '{key}' must start with '_'"));
        }
        if COMPUTED_KEYS.contains(&key.as_str()) {
            return invalid(format!(
                "internal metadata key '{key}' is written by the storage layer itself"
            ));
        }
    }
    for (index, disk) in req.disks.iter().enumerate() {
        validate_disk(index, disk)?;
    }
    Ok(())
}

/// "system disk" or "data disk 0".
pub(crate) fn disk_label(index: usize) -> String {
    if index == 0 {
        "system disk".to_string()
    } else {
        format!("data disk {}", index - 1)
    }
}

fn validate_disk(index: usize, disk: &DiskRequest) -> Result<()> {
    let label = disk_label(index);
    let invalid = |m: String| Err(StorageError::InvalidRequest(format!("{label}: {m}")));
    if disk.size_bytes == Some(0) {
        return invalid("size 0 is not a disk size".into());
    }
    let rbd_name_ok = |s: &str| !s.is_empty() && !s.contains(['/', '@', '\0']);
    match &disk.source {
        ResolvedSource::Blank => {
            if disk.size_bytes.is_none() {
                return invalid("a blank disk needs a size".into());
            }
        }
        ResolvedSource::Http { url, .. } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid(format!("URL '{url}' must start with http:// or https://"));
            }
        }
        ResolvedSource::Built { .. } => {}
        ResolvedSource::Path { path, .. } => {
            if !path.is_absolute() {
                return invalid(format!("path '{}' must be absolute", path.display()));
            }
        }
        ResolvedSource::Rbd { pool, image, .. } | ResolvedSource::CloneOf { pool, image, .. } => {
            if !rbd_name_ok(pool) || !rbd_name_ok(image) {
                return invalid(format!(
                    "RBD source '{pool}/{image}' is not a valid pool/image name"
                ));
            }
        }
        ResolvedSource::Golden {
            pool,
            image,
            snapshot,
            ..
        } => {
            if !rbd_name_ok(pool) || !rbd_name_ok(image) || !rbd_name_ok(snapshot) {
                return invalid(format!(
                    "golden source '{pool}/{image}@{snapshot}' is not a valid pool/image@snapshot"
                ));
            }
        }
    }
    Ok(())
}

/// What Ceph shows about one image, as far as ownership goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ImageFacts {
    pub name: String,
    /// The owner keys, when they were written for this VM's image (see
    /// [`ImageFacts::of_vm`]).
    pub owner_uid: Option<String>,
    pub owner: Option<String>,
    pub vm_name: Option<String>,
}

impl ImageFacts {
    /// The facts of image `name` of the VM `vm` from its metadata. Owner keys copied along from
    /// another VM's image (vm_manager's `clone` deep-copies every key) own nothing here: they are
    /// left out, so the copy is adoptable like any vm_manager VM.
    pub fn of_vm(name: &str, vm: &str, metadata: &BTreeMap<String, String>) -> ImageFacts {
        let written_here = owner_keys_written_for(metadata, vm);
        let owner_key = |key: &str| metadata.get(key).filter(|_| written_here).cloned();
        ImageFacts {
            name: name.to_string(),
            owner_uid: owner_key(META_OWNER_UID),
            owner: owner_key(META_OWNER),
            vm_name: metadata.get(META_VM_NAME).cloned(),
        }
    }
}

/// What exists under the VM's names before anything is done.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ExistingState {
    pub system: Option<ImageFacts>,
    /// Existing images among `data_<vm>_<i>` of the requested disks and the group's members
    /// (the system image excluded).
    pub others: Vec<ImageFacts>,
    pub group_exists: bool,
    pub group_members: Vec<String>,
}

/// Who the VM's RBD data belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ownership {
    /// Ours (or nothing exists yet): create what is missing.
    Ours,
    /// A VM made by SEAPATH's tools (vm_manager): take it over, keep its data.
    Adopt,
}

/// Decides ownership from the owner keys; refuses anything of another object, or images that
/// are not a VM of this name. `claimable` (on the result) lists existing images without owner
/// key that this object may mark as its own.
pub(crate) fn decide_ownership(
    state: &ExistingState,
    vm: &str,
    uid: &str,
    location: &str,
) -> Result<(Ownership, Vec<String>)> {
    let spec = |image: &str| format!("RBD image {location}/{image}");
    let other_owner = |facts: &ImageFacts| StorageError::OwnedByAnotherObject {
        what: spec(&facts.name),
        owner_uid: facts.owner_uid.clone().unwrap_or_default(),
        owner: facts.owner.clone(),
    };
    let ownership = match &state.system {
        Some(sys) => match sys.owner_uid.as_deref() {
            Some(owner) if owner == uid => Ownership::Ours,
            Some(_) => return Err(other_owner(sys)),
            None if sys.vm_name.as_deref() == Some(vm) => Ownership::Adopt,
            None => {
                return Err(StorageError::NameConflict {
                    what: spec(&sys.name),
                    detail: match &sys.vm_name {
                        Some(other) => format!(
                            "it exists but belongs to the SEAPATH VM '{other}' (metadata vm_name), \
                             not '{vm}'; nothing was changed"
                        ),
                        None => format!(
                            "it exists but is not a SEAPATH VM (no vm_name metadata): nothing was \
                             changed; remove or rename the image, or set its vm_name metadata to \
                             '{vm}' to adopt it"
                        ),
                    },
                });
            }
        },
        None => Ownership::Ours,
    };
    let mut claimable = Vec::new();
    for facts in &state.others {
        match facts.owner_uid.as_deref() {
            Some(owner) if owner == uid => {}
            Some(_) => return Err(other_owner(facts)),
            None => {
                // An image without owner key may be taken over only when it is part of the VM
                // being adopted (or adopted before): a member of the VM's group.
                let in_group = state.group_members.iter().any(|m| m == &facts.name);
                let system_ours_or_adopted = state.system.is_some();
                if in_group && system_ours_or_adopted {
                    claimable.push(facts.name.clone());
                } else {
                    return Err(StorageError::NameConflict {
                        what: spec(&facts.name),
                        detail: format!(
                            "it exists but was not made for this VirtualMachine (no owner key{}): \
                             nothing was changed; remove or rename it",
                            if in_group { "" } else { ", not in the VM's group" }
                        ),
                    });
                }
            }
        }
    }
    Ok((ownership, claimable))
}

/// The metadata of a system image this call creates, in the order it is written: owner keys
/// first (so a half-written state is already ours), `vm_name` last (vm_manager's tools see a VM
/// as complete once it has its name).
pub(crate) fn desired_metadata(req: &VmStorageRequest) -> Vec<(String, String)> {
    let mut out = owner_metadata(req).to_vec();
    out.extend(
        req.creation_defaults
            .iter()
            .filter(|(k, _)| !req.internal.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    out.extend(req.internal.iter().map(|(k, v)| (k.clone(), v.clone())));
    out.extend(req.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
    out.push((META_BASE_XML.to_string(), req.base_xml.clone()));
    let data_disks = req.disks.len() - 1;
    if data_disks > 0 {
        // vm_manager stores json.dumps(count): a bare number.
        out.push((META_ADDITIONAL_DISKS.to_string(), data_disks.to_string()));
    }
    out.push((META_XML.to_string(), req.rendered_xml.clone()));
    out.push((META_VM_NAME.to_string(), req.name.clone()));
    out
}

/// The owner keys alone (written on every image the object owns), the VM they are written for
/// first: keys being written never look copied from another VM.
pub(crate) fn owner_metadata(req: &VmStorageRequest) -> [(String, String); 3] {
    [
        (META_OWNER_VM.to_string(), req.name.clone()),
        (META_OWNER_UID.to_string(), req.uid.clone()),
        (
            META_OWNER.to_string(),
            format!("{}/{}", req.kube_namespace, req.object_name),
        ),
    ]
}

/// The UUID of the domain that the system image's `xml` runs, when that image is a VM this
/// object may run: named `vm` (`vm_name`) and owned by it or by no object (adoptable). vm_manager
/// keeps a random UUID only there when the base XML has none; adopting the VM keeps it, so the
/// guest and vm_manager's `list_all_uuids` still see the same machine.
pub fn stored_uuid(metadata: &BTreeMap<String, String>, vm: &str, uid: &str) -> Option<uuid::Uuid> {
    let facts = ImageFacts::of_vm("", vm, metadata);
    if facts.vm_name.as_deref() != Some(vm) {
        return None;
    }
    match facts.owner_uid {
        Some(owner) if owner != uid => return None,
        _ => {}
    }
    crate::domain_xml::extract_uuid(metadata.get(META_XML)?)
        .ok()
        .flatten()
}

/// Writes needed to go from `current` to `desired`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MetadataPlan {
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl MetadataPlan {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// What vm_manager does when a key is absent from the system image (its `create` and
/// `enable_vm`): writing the same value changes nothing it does, so it is not written.
pub(crate) const VM_MANAGER_DEFAULTS: [(&str, &str); 3] = [
    (META_STOP_TIMEOUT, "30"),
    (META_DISK_BUS, "virtio"),
    (META_PRIORITY, "0"),
];

/// Whether the stored `xml`, written by vm_manager, stays: adopting a VM changes nothing
/// vm_manager reads unless the spec asks for something it does not say. It stays when it carries
/// no owner marker of the operator (an XML the operator rendered is the operator's to refresh,
/// with the monitors of now), the base XML is the stored `_base_xml` (surrounding white space
/// aside), and it runs the rendered XML's UUID and the same RBD images on the same buses.
pub(crate) fn keep_stored_xml(current: &BTreeMap<String, String>, req: &VmStorageRequest) -> bool {
    use crate::domain_xml::{extract_owner_marker, extract_uuid, rbd_disks};
    let Some(stored) = current.get(META_XML) else {
        return false;
    };
    if !matches!(extract_owner_marker(stored), Ok(None)) {
        return false;
    }
    let same_base = current.get(META_BASE_XML).map(|b| b.trim()) == Some(req.base_xml.trim());
    let same_uuid = matches!(
        (extract_uuid(stored), extract_uuid(&req.rendered_xml)),
        (Ok(Some(a)), Ok(Some(b))) if a == b
    );
    let same_disks = matches!(
        (rbd_disks(stored), rbd_disks(&req.rendered_xml)),
        (Ok(a), Ok(b)) if a == b
    );
    same_base && same_uuid && same_disks
}

/// The writes that bring an existing system image to the request. A key is set only when
/// what vm_manager reads differs: a key it lacks stands for its default
/// ([`VM_MANAGER_DEFAULTS`]), `_base_xml` is compared without surrounding white space, and a
/// vm_manager `xml` that says what the spec says stays ([`keep_stored_xml`]).
/// `_additional_disks` is removed when the VM has no data disk any more. Keys this layer does
/// not know (vm_manager's `_pacemaker_*`, ...) stay, and [`VmStorageRequest::creation_defaults`]
/// are never written here.
pub(crate) fn plan_metadata(current: &BTreeMap<String, String>, req: &VmStorageRequest) -> MetadataPlan {
    let keep_xml = keep_stored_xml(current, req);
    let without_defaults = VmStorageRequest {
        creation_defaults: BTreeMap::new(),
        ..req.clone()
    };
    let desired = desired_metadata(&without_defaults);
    let set = desired
        .iter()
        .filter(|(k, v)| {
            let stored = current.get(k).map(String::as_str).or_else(|| {
                VM_MANAGER_DEFAULTS
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, default)| *default)
            });
            match k.as_str() {
                META_XML if keep_xml => false,
                META_BASE_XML => stored.map(str::trim) != Some(v.trim()),
                _ => stored != Some(v.as_str()),
            }
        })
        .cloned()
        .collect();
    let remove = if current.contains_key(META_ADDITIONAL_DISKS)
        && !desired.iter().any(|(k, _)| k == META_ADDITIONAL_DISKS)
    {
        vec![META_ADDITIONAL_DISKS.to_string()]
    } else {
        Vec::new()
    };
    MetadataPlan { set, remove }
}

/// Metadata keys copied from a source image (deep copy and clones copy image metadata) that a
/// new disk must not keep: everything but librbd's own `conf_*` settings.
pub(crate) fn inherited_keys_to_strip(current: &BTreeMap<String, String>) -> Vec<String> {
    current
        .keys()
        .filter(|k| !k.starts_with("conf_"))
        .cloned()
        .collect()
}

/// What to do about the size of an image that exists (or was just built).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SizeAction {
    Keep,
    Grow(u64),
    /// The requested size is smaller than the image: RBD images are never shrunk.
    TooSmall {
        requested: u64,
        actual: u64,
    },
}

pub(crate) fn size_action(requested: Option<u64>, actual: u64) -> SizeAction {
    match requested {
        Some(r) if r > actual => SizeAction::Grow(r),
        Some(r) if r < actual => SizeAction::TooSmall { requested: r, actual },
        _ => SizeAction::Keep,
    }
}

pub(crate) fn too_small_warning(image: &str, requested: u64, actual: u64) -> String {
    format!(
        "{image}: the requested size {} is smaller than the image ({}); disks are never shrunk, \
         the image keeps its size",
        human_bytes(requested),
        human_bytes(actual)
    )
}

/// Bytes the pool can still take: the smaller of what `df` reports as `max_avail` (needs a
/// ceph-mgr; without one the mon reports no pool statistics) and what the pool quota
/// (`osd dump`) leaves. `None` when neither is known.
pub(crate) fn pool_available_bytes(df_json: &[u8], osd_dump_json: &[u8], pool: &str) -> Option<u64> {
    let df: Option<Value> = serde_json::from_slice(df_json).ok();
    let pool_stats = df.as_ref().and_then(|df| {
        let known = df["stats"]["total_bytes"].as_u64().unwrap_or(0) > 0;
        df["pools"]
            .as_array()?
            .iter()
            .find(|p| p["name"].as_str() == Some(pool))
            .map(|p| p["stats"].clone())
            .filter(|_| known)
    });
    let max_avail = pool_stats.as_ref().and_then(|s| s["max_avail"].as_u64());
    let stored = pool_stats
        .as_ref()
        .and_then(|s| s["stored"].as_u64().or_else(|| s["bytes_used"].as_u64()))
        .unwrap_or(0);
    let quota = serde_json::from_slice::<Value>(osd_dump_json)
        .ok()
        .and_then(|dump| {
            dump["pools"]
                .as_array()?
                .iter()
                .find(|p| p["pool_name"].as_str() == Some(pool))
                .and_then(|p| p["quota_max_bytes"].as_u64())
        })
        .filter(|&q| q > 0)
        .map(|q| q.saturating_sub(stored));
    match (max_avail, quota) {
        (Some(a), Some(q)) => Some(a.min(q)),
        (a, q) => a.or(q),
    }
}

/// `PoolFull` when `needed` bytes do not fit in what the pool can still take.
pub(crate) fn check_pool_space(pool: &str, needed: u64, available: Option<u64>, what: &str) -> Result<()> {
    match available {
        Some(available) if needed > available => Err(StorageError::PoolFull {
            pool: pool.to_string(),
            detail: format!(
                "{what} needs up to {} but the pool can take only {} more; free space in the \
                 pool (or raise its quota) and the import is retried",
                human_bytes(needed),
                human_bytes(available)
            ),
        }),
        _ => Ok(()),
    }
}

/// The monitors' addresses from `mon dump -f json`: one `(host, port)` per monitor, its msgr2
/// address when it has one (what Ceph 14+ clients use), else its msgr1 one.
pub fn parse_mon_dump(json: &[u8]) -> std::result::Result<Vec<(String, u16)>, String> {
    let dump: Value = serde_json::from_slice(json).map_err(|e| format!("mon dump is not JSON: {e}"))?;
    let mons = dump["mons"]
        .as_array()
        .ok_or_else(|| "mon dump has no 'mons' list".to_string())?;
    let mut out = Vec::new();
    for mon in mons {
        let addrvec = mon["public_addrs"]["addrvec"].as_array();
        let pick = |kind: &str| {
            addrvec.and_then(|v| {
                v.iter()
                    .find(|a| a["type"].as_str() == Some(kind))
                    .and_then(|a| a["addr"].as_str())
            })
        };
        let addr = pick("v2")
            .or_else(|| pick("v1"))
            .or_else(|| mon["public_addr"].as_str())
            .or_else(|| mon["addr"].as_str())
            .ok_or_else(|| format!("monitor {} has no address", mon["name"]))?;
        out.push(split_host_port(addr)?);
    }
    Ok(out)
}

/// `127.0.0.1:3300/0`, `[::1]:3300`, `v2:10.0.0.1:3300/0` -> (host, port).
fn split_host_port(addr: &str) -> std::result::Result<(String, u16), String> {
    let bad = || format!("cannot read monitor address '{addr}'");
    let a = addr
        .strip_prefix("v2:")
        .or_else(|| addr.strip_prefix("v1:"))
        .unwrap_or(addr);
    let a = a.split('/').next().unwrap_or(a);
    let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// What `qemu-img info --output=json` says about a source file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QemuImageInfo {
    pub format: String,
    pub virtual_size: u64,
    /// Bytes the file occupies on its file system (an upper bound of the data to write).
    pub actual_size: Option<u64>,
    pub backing_file: Option<String>,
    pub data_file: Option<String>,
}

pub(crate) fn parse_qemu_img_info(json: &[u8]) -> std::result::Result<QemuImageInfo, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("qemu-img info printed no JSON: {e}"))?;
    Ok(QemuImageInfo {
        format: v["format"].as_str().unwrap_or_default().to_string(),
        virtual_size: v["virtual-size"]
            .as_u64()
            .ok_or_else(|| "qemu-img info printed no virtual-size".to_string())?,
        actual_size: v["actual-size"].as_u64(),
        backing_file: v["backing-filename"]
            .as_str()
            .or_else(|| v["full-backing-filename"].as_str())
            .map(str::to_string),
        data_file: v["format-specific"]["data"]["data-file"]
            .as_str()
            .map(str::to_string),
    })
}

/// The last percentage in qemu-img's `-p` output (`    (12.50/100%)\r`).
pub(crate) fn parse_qemu_progress(text: &str) -> Option<f64> {
    let end = text.rfind("/100%)")?;
    let start = text[..end].rfind('(')? + 1;
    text[start..end].trim().parse().ok()
}

/// Whether a buffer holds only zero bytes (such chunks are not written: images stay sparse).
pub(crate) fn is_all_zero(buf: &[u8]) -> bool {
    // 16 bytes at a time: the compiler vectorises this well.
    let mut words = buf.chunks_exact(16);
    let body = words
        .by_ref()
        .all(|w| <[u8; 16]>::try_from(w).is_ok_and(|a| u128::from_ne_bytes(a) == 0));
    body && words.remainder().iter().all(|&b| b == 0)
}

/// A URL for messages and logs: `user:password@` replaced by `***@`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..scheme_end], &rest[at..]),
        None => url.to_string(),
    }
}

/// The qcow2 magic: `QFI\xfb`.
pub(crate) fn looks_like_qcow2(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(b"QFI\xfb")
}

/// `pool/namespace/image@snapshot` (the namespace left out when it is the default one).
pub(crate) fn parent_spec(pool: &str, namespace: &str, image: &str, snap: &str) -> String {
    if namespace.is_empty() {
        format!("{pool}/{image}@{snap}")
    } else {
        format!("{pool}/{namespace}/{image}@{snap}")
    }
}

#[cfg(test)]
mod tests;
