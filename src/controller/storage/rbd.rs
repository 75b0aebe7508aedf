//! The blocking Ceph work of the storage layer. Every function here runs inside
//! `spawn_blocking`; decisions come from `plan.rs`.

use std::collections::BTreeMap;

use super::error::{Result, StorageError};
use super::plan::{self, ExistingState, ImageFacts, MetadataPlan, Ownership, SizeAction};
use super::rename_repair::{self, Repair};
use super::{DeleteOutcome, ImageObservation, StorageObservation, VmStorageRequest};
use crate::ceph::{CephError, CloneFormat, Cluster, GroupImage, GroupImageState, Image, ImageOptions, IoCtx};
use crate::naming::{META_OWNER_UID, VmNames};

/// Adds a context to a Ceph result.
pub(crate) trait CephContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> CephContext<T> for std::result::Result<T, CephError> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| StorageError::from_ceph(context(), e))
    }
}

/// `Ok(None)` for `ENOENT`.
fn optional<T>(r: std::result::Result<T, CephError>) -> std::result::Result<Option<T>, CephError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

fn location(pool: &str, ns: &str) -> String {
    if ns.is_empty() {
        pool.to_string()
    } else {
        format!("{pool}/{ns}")
    }
}

/// The I/O context of the VM's RBD namespace. With `create`, a missing namespace is created;
/// without, a missing one gives `None` (nothing of the VM can exist there).
pub(crate) fn open_namespace(cluster: &Cluster, pool: &str, ns: &str, create: bool) -> Result<Option<IoCtx>> {
    let pool_io = cluster
        .io_context(pool, "")
        .ctx(|| format!("opening pool '{pool}' (does it exist?)"))?;
    if !ns.is_empty() {
        let exists = pool_io
            .namespace_exists(ns)
            .ctx(|| format!("checking RBD namespace {pool}/{ns}"))?;
        if !exists {
            if !create {
                return Ok(None);
            }
            match pool_io.create_namespace(ns) {
                Ok(()) => tracing::info!(pool, namespace = ns, "created RBD namespace"),
                Err(e) if e.is_exists() => {}
                Err(e) => {
                    return Err(StorageError::from_ceph(
                        format!("creating RBD namespace {pool}/{ns}"),
                        e,
                    ));
                }
            }
        }
        return cluster
            .io_context(pool, ns)
            .ctx(|| format!("opening RBD namespace {pool}/{ns}"))
            .map(Some);
    }
    Ok(Some(pool_io))
}

/// One existing image read in a single read-only open: its metadata (owner keys, vm_name and,
/// for the system image, what `finalize` compares) and its size and parent.
pub(crate) struct Inspected {
    pub facts: ImageFacts,
    pub observation: ImageObservation,
    pub metadata: BTreeMap<String, String>,
}

/// `None` if the image does not exist.
fn inspect(io: &IoCtx, name: &str, vm: &str) -> Result<Option<Inspected>> {
    let Some(image) =
        optional(io.open_image_read_only(name, None)).ctx(|| format!("opening {}", io.spec(name)))?
    else {
        return Ok(None);
    };
    let metadata = image
        .metadata_list()
        .ctx(|| format!("reading the metadata of {}", io.spec(name)))?;
    let observation = observe_open(&image)?.expect("an open image is observed");
    Ok(Some(Inspected {
        facts: ImageFacts::of_vm(name, vm, &metadata),
        observation,
        metadata,
    }))
}

/// Owner keys (written for `vm`) and vm_name of an image; `None` if it does not exist.
fn image_facts(io: &IoCtx, name: &str, vm: &str) -> Result<Option<ImageFacts>> {
    Ok(inspect(io, name, vm)?.map(|i| i.facts))
}

fn meta_opt(image: &Image, key: &str) -> Result<Option<String>> {
    optional(image.metadata_get(key)).ctx(|| format!("reading metadata {key} of {}", image.spec()))
}

/// Size and parent of an image as observed (opened read-only: no watch, no lock, no write).
pub(crate) fn observe_image(io: &IoCtx, name: &str) -> Result<Option<ImageObservation>> {
    let Some(image) =
        optional(io.open_image_read_only(name, None)).ctx(|| format!("opening {}", io.spec(name)))?
    else {
        return Ok(None);
    };
    observe_open(&image)
}

fn observe_open(image: &Image) -> Result<Option<ImageObservation>> {
    let size = image
        .size()
        .ctx(|| format!("reading the size of {}", image.spec()))?;
    let parent = image
        .parent()
        .ctx(|| format!("reading the parent of {}", image.spec()))?
        .map(|p| plan::parent_spec(&p.image.pool, &p.image.namespace, &p.image.name, &p.snap_name));
    Ok(Some(ImageObservation {
        name: image.name().to_string(),
        size_bytes: size,
        parent,
    }))
}

/// Removes a temporary image with its snapshots (deep copies bring the source's). Absent: done.
pub(crate) fn remove_temp(io: &IoCtx, name: &str) -> Result<()> {
    let context = || format!("removing temporary image {}", io.spec(name));
    let listed = io.list_images().ctx(context)?.iter().any(|i| i == name);
    if !listed {
        // At most a pointer an interrupted rename left: through it, opening or removing `name`
        // would reach the image now listed under its final name.
        return drop_pointer(io, name);
    }
    if let Some(image) = optional(io.open_image(name)).ctx(context)? {
        image.snap_purge().ctx(context)?;
    }
    match io.remove_image(name) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(StorageError::from_ceph(context(), e)),
    }
}

/// Finishes the renames of this VM's disks a killed run left half done, or removes the stray
/// pointers they left (see `rename_repair`); returns what it changed.
fn repair_interrupted_renames(io: &IoCtx, wanted: &[String], uid_key: &str) -> Result<Vec<String>> {
    let listing = io
        .list_image_ids()
        .ctx(|| format!("listing images of {}", io.location()))?;
    // Only a name the directory does not list can have a stray pointer.
    let stray_pointer = |name: &str| -> Result<Option<String>> {
        if listing.iter().any(|i| i.name == name) {
            return Ok(None);
        }
        io.image_id_pointer(name)
            .ctx(|| format!("reading the id pointer of {}", io.spec(name)))
    };
    let mut disks = Vec::with_capacity(wanted.len());
    for final_name in wanted {
        disks.push(rename_repair::DiskPointers {
            final_name: final_name.clone(),
            final_pointer: stray_pointer(final_name)?,
            temp_pointer: stray_pointer(&plan::temp_image_name(final_name, uid_key))?,
        });
    }
    let mut changes = Vec::new();
    for repair in rename_repair::decide(&listing, &disks, uid_key) {
        let change = match repair {
            Repair::FinishRename { tmp, final_name } => {
                drop_pointer(io, &final_name)?;
                io.rename_image(&tmp, &final_name)
                    .ctx(|| format!("renaming {} to {final_name}", io.spec(&tmp)))?;
                format!("finished the interrupted rename of {tmp} to {final_name}")
            }
            Repair::DropPointer { name } => {
                drop_pointer(io, &name)?;
                format!("removed the stray id pointer rbd_id.{name} an interrupted rename left")
            }
        };
        tracing::warn!(location = %io.location(), "{change}");
        changes.push(change);
    }
    Ok(changes)
}

/// Removes the pointer `rbd_id.<name>` alone; already gone is fine.
fn drop_pointer(io: &IoCtx, name: &str) -> Result<()> {
    match io.remove_image_id_pointer(name) {
        Err(e) if !e.is_not_found() => Err(StorageError::from_ceph(
            format!("removing the stray id pointer of {}", io.spec(name)),
            e,
        )),
        _ => Ok(()),
    }
}

/// What `prepare` found and did; `finalize` starts from it instead of reading Ceph again.
pub(crate) struct Prepared {
    pub io: IoCtx,
    pub ownership: Ownership,
    /// Per requested disk: the final image if it exists already.
    pub existing: Vec<Option<ImageObservation>>,
    /// The group's members as listed (`None`: no group yet).
    pub group: Option<Vec<GroupImage>>,
    /// The system image's metadata (after adoption's owner keys), if it exists.
    pub system_metadata: Option<BTreeMap<String, String>>,
    pub changes: Vec<String>,
}

/// Makes sure the namespace exists, decides ownership (refusing before any write when the data
/// are someone else's), removes this object's leftover temporary images, and adopts.
pub(crate) fn prepare(
    cluster: &Cluster,
    pool: &str,
    names: &VmNames,
    req: &VmStorageRequest,
) -> Result<Prepared> {
    let ns = &names.rbd_namespace;
    let io = open_namespace(cluster, pool, ns, true)?
        .ok_or_else(|| StorageError::internal("namespace vanished"))?;
    let loc = location(pool, ns);
    let wanted = names.images(req.disks.len() - 1);
    let uid_key = plan::uid_key(&req.uid);
    let mut changes = repair_interrupted_renames(&io, &wanted, &uid_key)?;
    let images = io.list_images().ctx(|| format!("listing images of {loc}"))?;
    let group_name = names.group();
    let group_exists = io
        .group_list()
        .ctx(|| format!("listing groups of {loc}"))?
        .contains(&group_name);
    let pool_id = io.pool_id();
    let group = if group_exists {
        Some(
            io.group_image_list(&group_name)
                .ctx(|| format!("listing the images of group {}", io.spec(&group_name)))?,
        )
    } else {
        None
    };
    let group_members: Vec<String> = group
        .iter()
        .flatten()
        .filter(|m| m.pool_id == pool_id)
        .map(|m| m.name.clone())
        .collect();
    // Each existing image of interest is opened once.
    let mut inspected: BTreeMap<String, Inspected> = BTreeMap::new();
    for name in wanted.iter().chain(group_members.iter()) {
        if images.contains(name)
            && !inspected.contains_key(name)
            && let Some(found) = inspect(&io, name, &names.vm)?
        {
            inspected.insert(name.clone(), found);
        }
    }
    let system_name = names.system_image();
    let state = ExistingState {
        system: inspected.get(&system_name).map(|i| i.facts.clone()),
        others: inspected
            .iter()
            .filter(|(name, _)| **name != system_name)
            .map(|(_, i)| i.facts.clone())
            .collect(),
        group_exists,
        group_members,
    };
    let (ownership, claimable) = plan::decide_ownership(&state, &names.vm, &req.uid, &loc)?;

    for temp in images.iter().filter(|i| plan::is_own_temp_image(i, &uid_key)) {
        remove_temp(&io, temp)?;
        tracing::info!(image = %io.spec(temp), "removed leftover temporary image of an interrupted run");
        changes.push(format!("removed leftover temporary image {temp}"));
    }

    // Data images first, the system image last: the system image's owner key is what marks the
    // whole VM as ours, so it is written once everything else is.
    let owner_kv = plan::owner_metadata(req);
    let mut to_claim = claimable;
    if ownership == Ownership::Adopt {
        to_claim.push(system_name.clone());
    }
    for name in &to_claim {
        let image = io.open_image(name).ctx(|| format!("opening {}", io.spec(name)))?;
        for (k, v) in &owner_kv {
            image
                .metadata_set(k, v)
                .ctx(|| format!("writing owner key {k} on {}", io.spec(name)))?;
            if let Some(found) = inspected.get_mut(name) {
                found.metadata.insert(k.clone(), v.clone());
            }
        }
        changes.push(format!("adopted {name} (wrote owner keys, data untouched)"));
    }
    if ownership == Ownership::Adopt {
        tracing::info!(vm = %names.vm, location = %loc, "adopted a VM made by SEAPATH's tools");
    }

    let existing = wanted
        .iter()
        .map(|name| inspected.get(name).map(|i| i.observation.clone()))
        .collect();
    let system_metadata = inspected.remove(&system_name).map(|i| i.metadata);
    Ok(Prepared {
        io,
        ownership,
        existing,
        group,
        system_metadata,
        changes,
    })
}

/// Grows an existing image.
pub(crate) fn grow(io: &IoCtx, name: &str, size: u64) -> Result<()> {
    let mut image = io.open_image(name).ctx(|| format!("opening {}", io.spec(name)))?;
    image.resize(size).ctx(|| format!("growing {}", io.spec(name)))
}

/// A blank temporary image.
pub(crate) fn create_blank(io: &IoCtx, tmp: &str, size: u64) -> Result<()> {
    io.create_image(tmp, size, &ImageOptions::default())
        .ctx(|| format!("creating {}", io.spec(tmp)))
}

fn source_io(cluster: &Cluster, pool: &str, ns: &str, what: &str) -> Result<IoCtx> {
    match cluster.io_context(pool, ns) {
        Ok(io) => Ok(io),
        Err(e) if e.is_not_found() => Err(StorageError::SourceNotFound {
            what: what.to_string(),
            detail: if ns.is_empty() {
                format!("pool '{pool}' does not exist")
            } else {
                format!("pool '{pool}' or its RBD namespace '{ns}' does not exist")
            },
        }),
        Err(e) => Err(StorageError::from_ceph(
            format!("opening {}", location(pool, ns)),
            e,
        )),
    }
}

/// Opens the source image (at `snap` if given), read-only; `SourceNotFound` names what is
/// missing: the image or the snapshot.
fn open_source(io: &IoCtx, image: &str, snap: Option<&str>, what: &str) -> Result<Image> {
    let not_found = |detail: String| StorageError::SourceNotFound {
        what: what.to_string(),
        detail,
    };
    let head = match io.open_image_read_only(image, None) {
        Ok(i) => i,
        Err(e) if e.is_not_found() => {
            return Err(not_found(format!("image {} does not exist", io.spec(image))));
        }
        Err(e) => return Err(StorageError::from_ceph(format!("opening {}", io.spec(image)), e)),
    };
    let Some(snap) = snap else { return Ok(head) };
    let exists = head
        .snap_exists(snap)
        .ctx(|| format!("checking snapshot {}@{snap}", io.spec(image)))?;
    if !exists {
        return Err(not_found(format!(
            "image {} has no snapshot '{snap}'",
            io.spec(image)
        )));
    }
    io.open_image_read_only(image, Some(snap))
        .ctx(|| format!("opening {}@{snap}", io.spec(image)))
}

/// A copy-on-write clone of a golden snapshot. The snapshot must be protected, as the README
/// promises: clone format 2 would accept any snapshot, and a clone of an ordinary one would
/// keep its owner from deleting it.
pub(crate) fn clone_golden(
    cluster: &Cluster,
    (pool, ns, image, snap): (&str, &str, &str, &str),
    io: &IoCtx,
    tmp: &str,
) -> Result<()> {
    let what = format!("golden image {}", plan::parent_spec(pool, ns, image, snap));
    let src_io = source_io(cluster, pool, ns, &what)?;
    let source = open_source(&src_io, image, Some(snap), &what)?;
    let protected = source
        .snap_is_protected(snap)
        .ctx(|| format!("checking that {what} is protected"))?;
    drop(source);
    if !protected {
        return Err(StorageError::SourceNotProtected { what });
    }
    let options = ImageOptions {
        clone_format: Some(CloneFormat::V2),
        ..Default::default()
    };
    src_io
        .clone_image(image, snap, io, tmp, &options)
        .ctx(|| format!("cloning {what} to {}", io.spec(tmp)))
}

/// A deep copy (data, and the snapshots up to the copied point) of an image or of one of its
/// snapshots.
pub(crate) fn deep_copy_from(
    cluster: &Cluster,
    (pool, ns, image, snap): (&str, &str, &str, Option<&str>),
    io: &IoCtx,
    tmp: &str,
) -> Result<()> {
    let what = match snap {
        Some(s) => format!("RBD image {}", plan::parent_spec(pool, ns, image, s)),
        None => format!("RBD image {}", io_spec(pool, ns, image)),
    };
    let src_io = source_io(cluster, pool, ns, &what)?;
    let src = open_source(&src_io, image, snap, &what)?;
    src.deep_copy(io, tmp, &ImageOptions::default())
        .ctx(|| format!("copying {what} to {}", io.spec(tmp)))
}

/// Removes every snapshot a deep copy brought into the temporary image `tmp` (no clone can
/// depend on them yet: the image has no final name).
pub(crate) fn remove_copied_snapshots(io: &IoCtx, tmp: &str) -> Result<()> {
    let context = || format!("removing the snapshots copied into {}", io.spec(tmp));
    let image = io.open_image(tmp).ctx(context)?;
    for snap in image.snap_list().ctx(context)? {
        if snap.namespace == crate::ceph::SnapNamespace::User
            && image.snap_is_protected(&snap.name).ctx(context)?
        {
            image.snap_unprotect(&snap.name).ctx(context)?;
        }
        image.snap_remove_by_id(snap.id).ctx(context)?;
    }
    Ok(())
}

fn io_spec(pool: &str, ns: &str, image: &str) -> String {
    format!("{}/{image}", location(pool, ns))
}

/// Finishes a disk built under a temporary name: strips the metadata it inherited from its
/// source (but librbd's `conf_*`), writes `metadata` (the owner keys first; for the system
/// image all of the VM's metadata, so the image appears complete), grows it to the requested
/// size, and renames it to its final name (atomic). Returns the observation, the image's
/// metadata as left, and a warning when the requested size was too small.
pub(crate) fn finish_temp(
    io: &IoCtx,
    tmp: &str,
    final_name: &str,
    metadata: &[(String, String)],
    requested: Option<u64>,
) -> Result<FinishedTemp> {
    let mut warning = None;
    let (mut observation, mut kept) = {
        let mut image = io.open_image(tmp).ctx(|| format!("opening {}", io.spec(tmp)))?;
        let mut kept = image
            .metadata_list()
            .ctx(|| format!("listing metadata of {}", io.spec(tmp)))?;
        for key in plan::inherited_keys_to_strip(&kept) {
            image
                .metadata_remove(&key)
                .ctx(|| format!("removing copied metadata {key} of {}", io.spec(tmp)))?;
            kept.remove(&key);
        }
        for (k, v) in metadata {
            image
                .metadata_set(k, v)
                .ctx(|| format!("writing metadata {k} on {}", io.spec(tmp)))?;
        }
        let size = image
            .size()
            .ctx(|| format!("reading the size of {}", io.spec(tmp)))?;
        match plan::size_action(requested, size) {
            SizeAction::Grow(to) => image.resize(to).ctx(|| format!("growing {}", io.spec(tmp)))?,
            SizeAction::TooSmall { requested, actual } => {
                warning = Some(plan::too_small_warning(final_name, requested, actual));
            }
            SizeAction::Keep => {}
        }
        image.flush().ctx(|| format!("flushing {}", io.spec(tmp)))?;
        let observation = observe_open(&image)?.expect("an open image is observed");
        (observation, kept)
    };
    match io.rename_image(tmp, final_name) {
        Ok(()) => {}
        Err(e) if e.is_exists() => {
            return Err(StorageError::NameConflict {
                what: format!("RBD image {}", io.spec(final_name)),
                detail: "someone else created it while this disk was being built; nothing of theirs \
                         was changed"
                    .to_string(),
            });
        }
        Err(e) => {
            return Err(StorageError::from_ceph(
                format!("renaming {} to {final_name}", io.spec(tmp)),
                e,
            ));
        }
    }
    observation.name = final_name.to_string();
    kept.extend(metadata.iter().cloned());
    Ok(FinishedTemp {
        observation,
        metadata: kept,
        warning,
    })
}

/// What `finish_temp` left.
pub(crate) struct FinishedTemp {
    pub observation: ImageObservation,
    pub metadata: BTreeMap<String, String>,
    pub warning: Option<String>,
}

/// Result of `finalize`.
pub(crate) struct Finalized {
    pub images: Vec<ImageObservation>,
    pub changes: Vec<String>,
    pub warnings: Vec<String>,
}

/// What the call knows already when it finalizes, so that only what it does not know is read.
pub(crate) struct Known {
    /// The group's members as `prepare` listed them (`None`: there was no group).
    pub group: Option<Vec<GroupImage>>,
    /// Images this call created: in no group yet.
    pub created: Vec<String>,
    /// The system image's metadata as last read or written by this call.
    pub system_metadata: Option<BTreeMap<String, String>>,
    /// Per requested disk, the image as this call last saw it.
    pub observed: Vec<Option<ImageObservation>>,
}

/// Puts every image in the VM's group (creating it) and writes the system image's metadata;
/// only what differs is written.
pub(crate) fn finalize(
    io: &IoCtx,
    names: &VmNames,
    req: &VmStorageRequest,
    known: Known,
) -> Result<Finalized> {
    let group = names.group();
    let wanted = names.images(req.disks.len() - 1);
    let mut changes = Vec::new();
    let mut warnings = Vec::new();

    let members = match known.group {
        Some(members) => members,
        None => {
            if create_group(io, &group)? {
                changes.push(format!("created group {group}"));
            }
            Vec::new()
        }
    };
    for name in &wanted {
        if add_to_group(io, &group, &members, name, &known.created)? {
            changes.push(format!("added {name} to group {group}"));
        }
    }
    for extra in members.iter().filter(|m| !wanted.contains(&m.name)) {
        warnings.push(format!(
            "group {group} also holds image {} which this VirtualMachine does not attach",
            extra.name
        ));
    }

    let system = names.system_image();
    changes.extend(update_system_metadata(io, &system, req, known.system_metadata)?);

    let images = wanted
        .iter()
        .zip(known.observed)
        .map(|(n, seen)| match seen {
            Some(seen) => Ok(seen),
            None => observe_image(io, n)?.ok_or_else(|| StorageError::internal(format!("{n} vanished"))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Finalized {
        images,
        changes,
        warnings,
    })
}

/// Creates the VM's group; `false` if it exists already.
fn create_group(io: &IoCtx, group: &str) -> Result<bool> {
    match io.group_create(group) {
        Ok(()) => Ok(true),
        Err(e) if e.is_exists() => Ok(false),
        Err(e) => Err(StorageError::from_ceph(
            format!("creating group {}", io.spec(group)),
            e,
        )),
    }
}

/// Adds `name` to `group` unless it is attached already; returns whether it added it.
/// `members` are the group's members as listed, `created` the images this call created (in
/// no group yet).
fn add_to_group(
    io: &IoCtx,
    group: &str,
    members: &[GroupImage],
    name: &str,
    created: &[String],
) -> Result<bool> {
    let pool_id = io.pool_id();
    let member = members.iter().find(|m| m.name == name && m.pool_id == pool_id);
    match member.map(|m| m.state) {
        Some(GroupImageState::Attached) => return Ok(false),
        Some(GroupImageState::Incomplete) => {
            // An add or remove was interrupted: redo it from the start.
            io.group_image_remove(group, io, name)
                .ctx(|| format!("repairing the half-added {name} in group {}", io.spec(group)))?;
        }
        None if created.iter().any(|c| c == name) => {}
        None => refuse_if_in_other_group(io, group, name)?,
    }
    io.group_image_add(group, io, name)
        .ctx(|| format!("adding {name} to group {}", io.spec(group)))?;
    Ok(true)
}

/// An image is in one group at most: one already in another group is refused rather than
/// taken from there.
fn refuse_if_in_other_group(io: &IoCtx, group: &str, name: &str) -> Result<()> {
    let image = io
        .open_image_read_only(name, None)
        .ctx(|| format!("opening {}", io.spec(name)))?;
    if let Some(other) = image
        .group()
        .ctx(|| format!("reading the group of {}", io.spec(name)))?
        && (other.name != group || other.pool_id != io.pool_id())
    {
        return Err(StorageError::NameConflict {
            what: format!("RBD image {}", io.spec(name)),
            detail: format!(
                "it is in another group ('{}'); remove it from there first",
                other.name
            ),
        });
    }
    Ok(())
}

/// Brings the system image's metadata to what `req` asks. `current` is the metadata as the
/// call knows it (`None`: read it). Returns the change made, if any.
fn update_system_metadata(
    io: &IoCtx,
    system: &str,
    req: &VmStorageRequest,
    current: Option<BTreeMap<String, String>>,
) -> Result<Option<String>> {
    // Metadata on the system image: compare, open read-write only to write.
    let current = match current {
        Some(current) => current,
        None => io
            .open_image_read_only(system, None)
            .and_then(|i| i.metadata_list())
            .ctx(|| format!("reading the metadata of {}", io.spec(system)))?,
    };
    let plan = plan::plan_metadata(&current, req);
    if plan.is_empty() {
        return Ok(None);
    }
    write_metadata(io, system, &plan)?;
    let keys: Vec<&str> = plan
        .set
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(plan.remove.iter().map(String::as_str))
        .collect();
    Ok(Some(format!("wrote metadata of {system}: {}", keys.join(", "))))
}

/// Writes `plan` on the system image (a key to remove that is gone already is fine).
fn write_metadata(io: &IoCtx, system: &str, plan: &MetadataPlan) -> Result<()> {
    let image = io
        .open_image(system)
        .ctx(|| format!("opening {}", io.spec(system)))?;
    for (k, v) in &plan.set {
        image
            .metadata_set(k, v)
            .ctx(|| format!("writing metadata {k} on {}", io.spec(system)))?;
    }
    for k in &plan.remove {
        match image.metadata_remove(k) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(StorageError::from_ceph(
                    format!("removing metadata {k} of {system}"),
                    e,
                ));
            }
        }
    }
    Ok(())
}

/// Orders image names the way a VM attaches them: system, data_0, data_1, ..., then others.
fn attach_order(names: &VmNames, mut images: Vec<String>) -> Vec<String> {
    let system = names.system_image();
    let data_prefix = format!("data_{}_", names.vm);
    let key = |n: &String| -> (u8, u64, String) {
        if *n == system {
            (0, 0, String::new())
        } else if let Some(i) = n.strip_prefix(&data_prefix).and_then(|i| i.parse::<u64>().ok()) {
            (1, i, String::new())
        } else {
            (2, 0, n.clone())
        }
    };
    images.sort_by_key(key);
    images
}

/// The VM's storage as it is: read-only calls only.
pub(crate) fn observe(cluster: &Cluster, pool: &str, names: &VmNames) -> Result<Option<StorageObservation>> {
    let Some(io) = open_namespace(cluster, pool, &names.rbd_namespace, false)? else {
        return Ok(None);
    };
    let group = names.group();
    let loc = io.location();
    if !io
        .group_list()
        .ctx(|| format!("listing groups of {loc}"))?
        .contains(&group)
    {
        return Ok(None);
    }
    let members = match io.group_image_list(&group) {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => {
            return Err(StorageError::from_ceph(
                format!("listing the images of group {}", io.spec(&group)),
                e,
            ));
        }
    };
    let pool_id = io.pool_id();
    let mut warnings = Vec::new();
    let mut member_names = Vec::new();
    for m in members {
        if m.pool_id != pool_id {
            warnings.push(format!(
                "group {group} holds image {} of another pool (id {})",
                m.name, m.pool_id
            ));
        } else if m.state == GroupImageState::Incomplete {
            warnings.push(format!("image {} is half-added to group {group}", m.name));
            member_names.push(m.name);
        } else {
            member_names.push(m.name);
        }
    }
    let mut images = Vec::new();
    for name in attach_order(names, member_names) {
        match observe_image(&io, &name)? {
            Some(o) => images.push(o),
            None => warnings.push(format!("group {group} lists image {name}, which does not exist")),
        }
    }
    let system = names.system_image();
    let owner_uid = match optional(io.open_image_read_only(&system, None))
        .ctx(|| format!("opening {}", io.spec(&system)))?
    {
        Some(image) => meta_opt(&image, META_OWNER_UID)?,
        None => None,
    };
    Ok(Some(StorageObservation {
        pool: pool.to_string(),
        namespace: names.rbd_namespace.clone(),
        group,
        images,
        adopted: false,
        warnings,
        owner_uid,
        changes: Vec::new(),
    }))
}

/// Metadata of the system image; empty when it does not exist. Read-only.
pub(crate) fn read_metadata(
    cluster: &Cluster,
    pool: &str,
    names: &VmNames,
) -> Result<BTreeMap<String, String>> {
    let Some(io) = open_namespace(cluster, pool, &names.rbd_namespace, false)? else {
        return Ok(BTreeMap::new());
    };
    let system = names.system_image();
    match optional(io.open_image_read_only(&system, None)).ctx(|| format!("opening {}", io.spec(&system)))? {
        Some(image) => image
            .metadata_list()
            .ctx(|| format!("reading the metadata of {}", io.spec(&system))),
        None => Ok(BTreeMap::new()),
    }
}

/// The clones depending on any snapshot of `image` (listed at the head: librbd then walks every
/// snapshot, trashed ones included).
fn dependent_clones(image: &Image) -> Result<Vec<String>> {
    let children = image
        .children()
        .ctx(|| format!("listing the clones of {}", image.spec()))?;
    Ok(children
        .into_iter()
        .map(|c| {
            let spec = io_spec(&c.pool, &c.namespace, &c.name);
            if c.trash {
                format!("{spec} (in the RBD trash)")
            } else {
                spec
            }
        })
        .collect())
}

/// The clones depending on a snapshot of any image of the VM's group (read-only).
pub(crate) fn vm_dependent_clones(cluster: &Cluster, pool: &str, names: &VmNames) -> Result<Vec<String>> {
    let Some(io) = open_namespace(cluster, pool, &names.rbd_namespace, false)? else {
        return Ok(Vec::new());
    };
    let group = names.group();
    let members = match io.group_image_list(&group) {
        Ok(m) => m,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => {
            return Err(StorageError::from_ceph(
                format!("listing the images of group {}", io.spec(&group)),
                e,
            ));
        }
    };
    let mut out = Vec::new();
    for m in members.iter().filter(|m| m.pool_id == io.pool_id()) {
        if let Some(image) = optional(io.open_image_read_only(&m.name, None))
            .ctx(|| format!("opening {}", io.spec(&m.name)))?
        {
            out.extend(dependent_clones(&image)?);
        }
    }
    Ok(out)
}

/// Deletes the VM's storage if `uid` owns it: group snapshots, then each image (data first,
/// the system image last, so an interrupted delete still knows the owner), then the group.
pub(crate) fn delete(cluster: &Cluster, pool: &str, names: &VmNames, uid: &str) -> Result<DeleteOutcome> {
    let Some(io) = open_namespace(cluster, pool, &names.rbd_namespace, false)? else {
        return Ok(DeleteOutcome::Absent);
    };
    let listed = list_vm_storage(&io, names, uid)?;
    if listed.is_empty() {
        return Ok(DeleteOutcome::Absent);
    }
    let (ours, mut kept) = match sort_by_owner(&io, names, uid, &listed)? {
        Owners::Caller { ours, kept } => (ours, kept),
        Owners::Other(facts) => {
            return Ok(DeleteOutcome::NotOwned {
                owner_uid: facts.owner_uid,
                owner: facts.owner,
            });
        }
    };

    // Refuse before removing anything if a clone depends on one of the images.
    refuse_dependent_clones(&io, &ours)?;

    let group = &listed.group;
    let group_is_ours = listed.group_is_ours(&kept);
    let mut snapshots = if group_is_ours {
        remove_group_snapshots(&io, group)?
    } else {
        0
    };

    // The system image last: its owner key marks the rest as ours until the end.
    let mut removed = listed.half_removed;
    for name in system_last(&ours, &names.system_image()) {
        if listed.members.contains(name) {
            leave_group(&io, group, name)?;
        }
        snapshots += purge_snapshots(&io, name)?;
        if remove_image_if_present(&io, name)? {
            removed.push(name.clone());
        }
        tracing::info!(image = %io.spec(name), "removed image");
    }

    let mut group_removed = false;
    if group_is_ours {
        match remove_group_if_empty(&io, group)? {
            GroupEnd::Removed => group_removed = true,
            GroupEnd::AlreadyGone => {}
            GroupEnd::HoldsOthers => kept.push(format!(
                "group {group} (still holds images that are not this object's)"
            )),
        }
    }
    Ok(DeleteOutcome::Deleted {
        images: removed,
        snapshots,
        group_removed,
        kept,
    })
}

/// `images`, the system image moved last.
fn system_last<'a>(images: &'a [String], system: &str) -> Vec<&'a String> {
    images
        .iter()
        .filter(|n| *n != system)
        .chain(images.iter().filter(|n| *n == system))
        .collect()
}

/// What `delete` finds of the VM in its namespace, the removals a killed run left half done
/// finished.
struct ListedStorage {
    group: String,
    group_exists: bool,
    /// The group's members in the namespace's pool.
    members: Vec<String>,
    system_present: bool,
    /// The listed images that may be the VM's, in attach order.
    candidates: Vec<String>,
    /// The images whose half-done removal this call finished.
    half_removed: Vec<String>,
}

impl ListedStorage {
    /// Nothing of the VM was there, not even a removal to finish.
    fn is_empty(&self) -> bool {
        self.candidates.is_empty() && !self.group_exists && self.half_removed.is_empty()
    }

    /// Whether the group is the caller's to empty and remove: with the system image there
    /// (ownership is checked on it first), or when it holds none of the images `kept` as
    /// someone else's.
    fn group_is_ours(&self, kept: &[String]) -> bool {
        self.group_exists && (self.system_present || kept.iter().all(|k| !self.members.contains(k)))
    }
}

/// Lists the VM's images and group, and finishes the removals a killed run left half done:
/// an image left so cannot be opened, and would hide the owner of the rest.
fn list_vm_storage(io: &IoCtx, names: &VmNames, uid: &str) -> Result<ListedStorage> {
    let loc = io.location();
    let group = names.group();
    let system = names.system_image();
    let data_prefix = format!("data_{}_", names.vm);
    let uid_key = plan::uid_key(uid);
    let images = io.list_images().ctx(|| format!("listing images of {loc}"))?;
    let group_exists = io
        .group_list()
        .ctx(|| format!("listing groups of {loc}"))?
        .contains(&group);
    let members = if group_exists {
        group_members_in_pool(io, &group)?
    } else {
        Vec::new()
    };

    // Candidates: the VM layout's names, the group's members, this object's temporary images.
    let is_candidate = |n: &String| {
        *n == system
            || n.strip_prefix(&data_prefix)
                .is_some_and(|i| i.parse::<u64>().is_ok())
            || members.contains(n)
            || plan::is_own_temp_image(n, &uid_key)
    };
    let listed: Vec<&String> = images.iter().filter(|n| is_candidate(n)).collect();
    let half_removed = finish_half_removals(io, &group, &members, &listed)?;
    let images: Vec<String> = images.into_iter().filter(|n| !half_removed.contains(n)).collect();
    let candidates: Vec<String> = images.iter().filter(|n| is_candidate(n)).cloned().collect();
    Ok(ListedStorage {
        system_present: images.contains(&system),
        candidates: attach_order(names, candidates),
        group,
        group_exists,
        members,
        half_removed,
    })
}

/// The names of the group's members in the namespace's pool; none if the group is gone.
fn group_members_in_pool(io: &IoCtx, group: &str) -> Result<Vec<String>> {
    let pool_id = io.pool_id();
    match io.group_image_list(group) {
        Ok(m) => Ok(m
            .into_iter()
            .filter(|m| m.pool_id == pool_id)
            .map(|m| m.name)
            .collect()),
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) => Err(StorageError::from_ceph(
            format!("listing group {}", io.spec(group)),
            e,
        )),
    }
}

/// Whose the VM's images are, as `delete` decides before it removes anything.
enum Owners {
    /// Someone else's, as the facts of this image say: nothing is removed.
    Other(ImageFacts),
    /// The caller's `ours` are removed; `kept`, someone else's, stay.
    Caller { ours: Vec<String>, kept: Vec<String> },
}

/// The system image's owner key speaks for the whole VM; the other images' own keys decide
/// which of them are the caller's, and its temporary images are its own by their name.
fn sort_by_owner(io: &IoCtx, names: &VmNames, uid: &str, listed: &ListedStorage) -> Result<Owners> {
    let uid_key = plan::uid_key(uid);
    if listed.system_present {
        let facts = image_facts(io, &names.system_image(), &names.vm)?.unwrap_or_default();
        if facts.owner_uid.as_deref() != Some(uid) {
            return Ok(Owners::Other(facts));
        }
    }
    let mut ours = Vec::new();
    let mut kept = Vec::new();
    for name in &listed.candidates {
        if plan::is_own_temp_image(name, &uid_key) {
            ours.push(name.clone());
            continue;
        }
        match image_facts(io, name, &names.vm)? {
            Some(f) if f.owner_uid.as_deref() == Some(uid) => ours.push(name.clone()),
            Some(_) => kept.push(name.clone()),
            None => {}
        }
    }
    if !listed.system_present && ours.is_empty() && !kept.is_empty() {
        // Nothing here is ours: images of the VM's names made by someone else.
        let first = image_facts(io, &kept[0], &names.vm)?.unwrap_or_default();
        return Ok(Owners::Other(first));
    }
    Ok(Owners::Caller { ours, kept })
}

/// A clone depending on one of `images` would lose its data with it: `HasDependentClones`.
fn refuse_dependent_clones(io: &IoCtx, images: &[String]) -> Result<()> {
    for name in images {
        let Some(image) =
            optional(io.open_image_read_only(name, None)).ctx(|| format!("opening {}", io.spec(name)))?
        else {
            continue;
        };
        let children = dependent_clones(&image)?;
        if !children.is_empty() {
            return Err(StorageError::HasDependentClones {
                image: io.spec(name),
                children,
            });
        }
    }
    Ok(())
}

/// Removes the group's snapshots (gone already: fine); returns how many it removed.
fn remove_group_snapshots(io: &IoCtx, group: &str) -> Result<usize> {
    let snaps = match io.group_snap_list(group) {
        Ok(s) => s,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => {
            return Err(StorageError::from_ceph(
                format!("listing snapshots of group {}", io.spec(group)),
                e,
            ));
        }
    };
    let mut removed = 0usize;
    for snap in snaps {
        match io.group_snap_remove(group, &snap.name) {
            Ok(()) => removed += 1,
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(StorageError::from_ceph(
                    format!("removing group snapshot {}@{}", io.spec(group), snap.name),
                    e,
                ));
            }
        }
    }
    Ok(removed)
}

/// Takes `name` out of `group`; out already is fine.
fn leave_group(io: &IoCtx, group: &str, name: &str) -> Result<()> {
    match io.group_image_remove(group, io, name) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(StorageError::from_ceph(
            format!("removing {name} from group {group}"),
            e,
        )),
    }
}

/// Removes the snapshots of an image about to be removed; returns how many (none if the image
/// is gone). A snapshot busy with a clone made since the check is `HasDependentClones`.
fn purge_snapshots(io: &IoCtx, name: &str) -> Result<usize> {
    let Some(image) = optional(io.open_image(name)).ctx(|| format!("opening {}", io.spec(name)))? else {
        return Ok(0);
    };
    let purged = image.snap_purge().map_err(|e| {
        if e.is_busy() {
            StorageError::HasDependentClones {
                image: io.spec(name),
                children: vec![format!("a clone made meanwhile ({e})")],
            }
        } else {
            StorageError::from_ceph(format!("removing the snapshots of {}", io.spec(name)), e)
        }
    })?;
    Ok(purged.len())
}

/// Removes an image; `false` if it was gone already.
fn remove_image_if_present(io: &IoCtx, name: &str) -> Result<bool> {
    match io.remove_image(name) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(StorageError::from_ceph(format!("removing {}", io.spec(name)), e)),
    }
}

/// What became of the VM's group once the caller's images are out of it.
enum GroupEnd {
    Removed,
    AlreadyGone,
    /// Kept: it still holds images that are not the caller's.
    HoldsOthers,
}

/// Removes the group if it is empty.
fn remove_group_if_empty(io: &IoCtx, group: &str) -> Result<GroupEnd> {
    let left = match io.group_image_list(group) {
        Ok(m) => m.len(),
        Err(e) if e.is_not_found() => return Ok(GroupEnd::AlreadyGone),
        Err(e) => {
            return Err(StorageError::from_ceph(
                format!("listing group {}", io.spec(group)),
                e,
            ));
        }
    };
    if left != 0 {
        return Ok(GroupEnd::HoldsOthers);
    }
    match io.group_remove(group) {
        Ok(()) => Ok(GroupEnd::Removed),
        Err(e) if e.is_not_found() => Ok(GroupEnd::AlreadyGone),
        Err(e) => Err(StorageError::from_ceph(
            format!("removing group {}", io.spec(group)),
            e,
        )),
    }
}

/// Finishes the removal of the images among `names` that the directory lists but that cannot
/// be opened: a removal killed after it removed the image's header or id object. Their data
/// are gone already, and their owner keys with them: left there, they would make the VM's
/// deletion stop on an ownership it cannot read, and keep its group. Returns their names.
fn finish_half_removals(
    io: &IoCtx,
    group: &str,
    members: &[String],
    names: &[&String],
) -> Result<Vec<String>> {
    let mut finished = Vec::new();
    for &name in names {
        match io.open_image_read_only(name, None) {
            Err(e) if e.is_not_found() => {}
            other => {
                other.ctx(|| format!("opening {}", io.spec(name)))?;
                continue;
            }
        }
        if members.contains(name) {
            match io.group_image_remove(group, io, name) {
                Err(e) if !e.is_not_found() => {
                    return Err(StorageError::from_ceph(
                        format!("removing {name} from group {group}"),
                        e,
                    ));
                }
                _ => {}
            }
        }
        match io.remove_image(name) {
            Err(e) if !e.is_not_found() => {
                return Err(StorageError::from_ceph(
                    format!("finishing the removal of {}", io.spec(name)),
                    e,
                ));
            }
            _ => {}
        }
        tracing::warn!(image = %io.spec(name), "finished the removal of an image a killed removal left half done");
        finished.push(name.clone());
    }
    Ok(finished)
}

/// What the pool can still take (`None`: unknown, e.g. no ceph-mgr reports statistics).
pub(crate) fn pool_available(cluster: &Cluster, pool: &str) -> Result<Option<u64>> {
    let (df, _) = cluster
        .mon_command(r#"{"prefix":"df","format":"json"}"#)
        .ctx(|| "asking the monitors for pool usage (df)".to_string())?;
    let (dump, _) = cluster
        .mon_command(r#"{"prefix":"osd dump","format":"json"}"#)
        .ctx(|| "asking the monitors for pool quotas (osd dump)".to_string())?;
    Ok(plan::pool_available_bytes(&df, &dump, pool))
}
