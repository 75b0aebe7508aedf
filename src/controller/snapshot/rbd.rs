//! The Ceph side of snapshots and restores: blocking librbd calls on one image each, so the
//! callers run the images of a VM concurrently (one `spawn_blocking` per image) while the work
//! on one image stays sequential.

use std::time::{Duration, SystemTime};

use crate::ceph::{Cluster, IoCtx, LinkedImage, SnapInfo, SnapNamespace};
use crate::controller::fencing;
use crate::controller::storage::StorageError;

pub type Result<T> = std::result::Result<T, StorageError>;

/// Clock skew allowed between the controller and Ceph when telling whether an existing RBD
/// snapshot was taken after the object recorded its intent.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);

fn ceph<T>(r: std::result::Result<T, crate::ceph::CephError>, context: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|e| StorageError::from_ceph(context(), e))
}

/// The I/O context of the VM's RBD namespace (`None` if the namespace does not exist).
pub fn io_context(cluster: &Cluster, pool: &str, namespace: &str) -> Result<Option<IoCtx>> {
    match cluster.io_context(pool, namespace) {
        Ok(io) => Ok(Some(io)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(StorageError::from_ceph(
            format!("opening pool {pool} namespace '{namespace}'"),
            e,
        )),
    }
}

/// The user snapshot `name` of `image`; `Ok(None)` when the image has none; the outer `None`
/// when the image does not exist.
pub fn find(io: &IoCtx, image: &str, name: &str) -> Result<Option<Option<SnapInfo>>> {
    let opened = match io.open_image_read_only(image, None) {
        Ok(i) => i,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(StorageError::from_ceph(format!("opening {}", io.spec(image)), e)),
    };
    let snaps = ceph(opened.snap_list(), || {
        format!("listing the snapshots of {}", io.spec(image))
    })?;
    Ok(Some(
        snaps
            .into_iter()
            .find(|s| s.name == name && s.namespace == SnapNamespace::User),
    ))
}

/// Every user snapshot of `image` (empty when the image does not exist).
pub fn list(io: &IoCtx, image: &str) -> Result<Vec<SnapInfo>> {
    Ok(list_every_namespace(io, image)?
        .into_iter()
        .filter(|s| s.namespace == SnapNamespace::User)
        .collect())
}

/// Every user snapshot of `image`, after removing those left in librbd's trash (see
/// [`sweep_trash`]).
pub fn list_and_sweep(io: &IoCtx, image: &str) -> Result<Vec<SnapInfo>> {
    let snaps = list_every_namespace(io, image)?;
    sweep_trash(io, image, &snaps)?;
    Ok(snaps
        .into_iter()
        .filter(|s| s.namespace == SnapNamespace::User)
        .collect())
}

fn list_every_namespace(io: &IoCtx, image: &str) -> Result<Vec<SnapInfo>> {
    let opened = match io.open_image_read_only(image, None) {
        Ok(i) => i,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(StorageError::from_ceph(format!("opening {}", io.spec(image)), e)),
    };
    ceph(opened.snap_list(), || {
        format!("listing the snapshots of {}", io.spec(image))
    })
}

/// Whether an existing snapshot is the one an object made: its id is the one recorded, or
/// (none recorded: the controller died between taking it and recording it) it was taken
/// after the object recorded its intent.
pub fn made_by(snap: &SnapInfo, recorded_id: Option<u64>, intent: Option<SystemTime>) -> bool {
    match (recorded_id, intent) {
        (Some(id), _) => snap.id == id,
        (None, Some(intent)) => snap.timestamp + CLOCK_SKEW >= intent,
        (None, None) => false,
    }
}

/// Takes snapshot `name` of `image`, unless it exists (then returns it as found; the caller
/// decides whose it is). Returns the snapshot and whether this call took it.
pub fn create(io: &IoCtx, image: &str, name: &str) -> Result<(SnapInfo, bool)> {
    let opened = ceph(io.open_image(image), || format!("opening {}", io.spec(image)))?;
    let mut created = false;
    let existing = ceph(opened.snap_exists(name), || {
        format!("looking up {}@{name}", io.spec(image))
    })?;
    if !existing {
        match opened.snap_create(name) {
            Ok(()) => created = true,
            Err(e) if e.is_exists() => {}
            Err(e) => {
                return Err(StorageError::from_ceph(
                    format!("taking snapshot {}@{name}", io.spec(image)),
                    e,
                ));
            }
        }
    }
    let snaps = ceph(opened.snap_list(), || {
        format!("listing the snapshots of {}", io.spec(image))
    })?;
    let snap = snaps
        .into_iter()
        .find(|s| s.name == name && s.namespace == SnapNamespace::User)
        .ok_or_else(|| {
            StorageError::internal(format!(
                "snapshot {}@{name} vanished right after it was taken",
                io.spec(image)
            ))
        })?;
    Ok((snap, created))
}

/// What [`remove`] did on one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    Removed,
    /// Nothing to remove (image or snapshot gone).
    Absent,
    /// A snapshot of that name exists but is not the object's: left alone.
    NotOwned,
}

/// Removes snapshot `name` of `image` if it is the object's (see [`made_by`]), unprotecting it
/// first; refuses with [`StorageError::HasDependentClones`] while a clone depends on it. A
/// snapshot librbd only moved to its trash (still in use, or a removal killed half way) is
/// found there by its recorded id and removed; while it stays, [`StorageError::ImageBusy`]
/// (retryable) is returned, so the object goes only once its snapshot is gone.
pub fn remove(
    io: &IoCtx,
    image: &str,
    name: &str,
    recorded_id: Option<u64>,
    intent: Option<SystemTime>,
) -> Result<Removed> {
    let opened = match io.open_image(image) {
        Ok(i) => i,
        Err(e) if e.is_not_found() => return Ok(Removed::Absent),
        Err(e) => return Err(StorageError::from_ceph(format!("opening {}", io.spec(image)), e)),
    };
    let snaps = ceph(opened.snap_list(), || {
        format!("listing the snapshots of {}", io.spec(image))
    })?;
    let user = snaps
        .iter()
        .find(|s| s.name == name && s.namespace == SnapNamespace::User);
    let trashed = snaps
        .iter()
        .find(|s| Some(s.id) == recorded_id && s.namespace == SnapNamespace::Trash);
    let snap = match (user, trashed) {
        (Some(snap), _) => snap,
        (None, Some(snap)) => {
            drop(opened);
            return remove_trashed(io, image, name, snap);
        }
        (None, None) => return Ok(Removed::Absent),
    };
    if !made_by(snap, recorded_id, intent) {
        return Ok(Removed::NotOwned);
    }
    let children = clones_of(io, &opened, image, name)?;
    if !children.is_empty() {
        return Err(StorageError::HasDependentClones {
            image: format!("{}@{name}", io.spec(image)),
            children,
        });
    }
    if ceph(opened.snap_is_protected(name), || {
        format!("reading {}@{name}", io.spec(image))
    })? {
        ceph(opened.snap_unprotect(name), || {
            format!("unprotecting {}@{name}", io.spec(image))
        })?;
    }
    match opened.snap_remove(name) {
        Ok(()) => {}
        Err(e) if e.is_not_found() => return Ok(Removed::Absent),
        Err(e) => {
            return Err(StorageError::from_ceph(
                format!("removing {}@{name}", io.spec(image)),
                e,
            ));
        }
    }
    drop(opened);
    gone_or_in_use(io, image, name, snap.id)
}

/// Removes the object's snapshot that an earlier [`remove`] left in librbd's trash.
fn remove_trashed(io: &IoCtx, image: &str, name: &str, snap: &SnapInfo) -> Result<Removed> {
    match remove_from_trash(io, image, snap)? {
        FromTrash::Gone => Ok(Removed::Removed),
        FromTrash::HasClones(children) => Err(StorageError::HasDependentClones {
            image: format!("{}@{name}", io.spec(image)),
            children: children.iter().map(clone_spec).collect(),
        }),
        FromTrash::Removed => gone_or_in_use(io, image, name, snap.id),
    }
}

/// [`Removed::Removed`] once snapshot `id` is no longer listed; [`StorageError::ImageBusy`]
/// while librbd keeps it in its trash (a clone or another client still uses it).
fn gone_or_in_use(io: &IoCtx, image: &str, name: &str, id: u64) -> Result<Removed> {
    // A fresh handle: the one that removed it may show its own view of the header.
    if !list_every_namespace(io, image)?.iter().any(|s| s.id == id) {
        return Ok(Removed::Removed);
    }
    Err(StorageError::ImageBusy {
        image: format!("{}@{name}", io.spec(image)),
        detail: "librbd moved the snapshot to its trash instead of removing it (a clone or another \
                 client still uses it); it is removed once released"
            .into(),
    })
}

/// The clones of `image@name`. Found from the image's head (librbd lists the clones of every
/// snapshot there) and each clone's parent: opening the image at the snapshot to ask would
/// keep the snapshot in use while it is being removed (librbd then leaves it in its trash).
fn clones_of(io: &IoCtx, opened: &crate::ceph::Image, image: &str, name: &str) -> Result<Vec<String>> {
    let children = ceph(opened.children(), || {
        format!("listing the clones of {}", io.spec(image))
    })?;
    let mut out = Vec::new();
    for c in children {
        let spec = clone_spec(&c);
        let parent = io
            .cluster()
            .io_context(&c.pool, &c.namespace)
            .and_then(|child_io| child_io.open_image_read_only(&c.name, None))
            .and_then(|child| child.parent());
        match parent {
            Ok(Some(p)) if p.snap_name != name || p.image.name != image => {}
            // A clone of this snapshot, or one that cannot be read (counted: never break it).
            _ => out.push(spec),
        }
    }
    Ok(out)
}

/// How a clone is named in messages.
fn clone_spec(c: &LinkedImage) -> String {
    let trash = if c.trash { " (in the RBD trash)" } else { "" };
    format!("{}/{}/{}{trash}", c.pool, c.namespace, c.name)
}

/// Removes the snapshots of `image` in librbd's trash that no clone depends on any more, and
/// returns their ids. librbd moves a removed snapshot there while a clone depends on it and
/// removes it with the last clone, unless that clone's removal was killed half way: then
/// nothing would ever remove it.
fn sweep_trash(io: &IoCtx, image: &str, snaps: &[SnapInfo]) -> Result<Vec<u64>> {
    let mut removed = Vec::new();
    for snap in snaps.iter().filter(|s| s.namespace == SnapNamespace::Trash) {
        if matches!(remove_from_trash(io, image, snap)?, FromTrash::Removed) {
            let what = format!("{}@{} (in librbd's trash)", io.spec(image), snap.name);
            tracing::warn!(snapshot = %what, "removed a snapshot left in librbd's trash with no clone");
            removed.push(snap.id);
        }
    }
    Ok(removed)
}

/// What [`remove_from_trash`] did.
#[derive(Debug)]
enum FromTrash {
    /// librbd was asked to remove it (it keeps it while a client has it open).
    Removed,
    /// Not there any more.
    Gone,
    /// Clones still depend on it: left.
    HasClones(Vec<LinkedImage>),
}

/// Removes snapshot `snap` of `image`, in librbd's trash, unless a clone depends on it.
fn remove_from_trash(io: &IoCtx, image: &str, snap: &SnapInfo) -> Result<FromTrash> {
    let what = || format!("{}@{} (in librbd's trash)", io.spec(image), snap.name);
    let mut at_snap = ceph(io.open_image_read_only(image, None), || {
        format!("opening {}", what())
    })?;
    match at_snap.snap_set_by_id(snap.id) {
        Err(e) if e.is_not_found() => return Ok(FromTrash::Gone),
        other => ceph(other, || format!("opening {}", what()))?,
    }
    let children = ceph(at_snap.children(), || format!("listing the clones of {}", what()))?;
    drop(at_snap);
    if !children.is_empty() {
        return Ok(FromTrash::HasClones(children));
    }
    let opened = ceph(io.open_image(image), || format!("opening {}", io.spec(image)))?;
    match opened.snap_remove_by_id(snap.id) {
        Err(e) if e.is_not_found() => Ok(FromTrash::Gone),
        other => ceph(other, || format!("removing {}", what())).map(|()| FromTrash::Removed),
    }
}

/// Rolls `image` back to snapshot `name`. Refuses with [`StorageError::ImageBusy`] when a live
/// client holds the image's exclusive lock (a domain still runs on it somewhere); breaks the
/// lock of a dead one (a controller killed in the middle of an earlier rollback); holds the
/// lock itself during the rollback so that no client can start writing meanwhile.
pub fn rollback(io: &IoCtx, image: &str, name: &str) -> Result<()> {
    let mut opened = ceph(io.open_image(image), || format!("opening {}", io.spec(image)))?;
    let own = ceph(io.cluster().client_address(), || {
        "reading the controller's Ceph address".to_owned()
    })?;
    let alive = fencing::break_dead_owners(&opened, &own)?;
    if !alive.is_empty() {
        return Err(StorageError::ImageBusy {
            image: io.spec(image),
            detail: format!(
                "client(s) {} hold its exclusive lock: a domain still uses the disk (or a process that used it died less than 30 s ago), it is not rolled back",
                alive.join(", ")
            ),
        });
    }
    let locked = match opened.lock_acquire(crate::ceph::LockMode::Exclusive) {
        Ok(()) => true,
        // No exclusive-lock feature on this image: nothing to hold.
        Err(e) if e.errno == libc::EINVAL || e.errno == libc::EOPNOTSUPP => false,
        Err(e) => return Err(StorageError::from_ceph(format!("locking {}", io.spec(image)), e)),
    };
    let result = ceph(opened.snap_rollback(name), || {
        format!("rolling {} back to {name}", io.spec(image))
    });
    if locked {
        let _ = opened.lock_release();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn snap(id: u64, secs: u64) -> SnapInfo {
        SnapInfo {
            id,
            name: "s".into(),
            size: 1,
            timestamp: UNIX_EPOCH + Duration::from_secs(secs),
            namespace: SnapNamespace::User,
        }
    }

    #[test]
    fn ownership_of_existing_snapshots() {
        let intent = Some(UNIX_EPOCH + Duration::from_secs(1000));
        // A recorded id decides alone.
        assert!(made_by(&snap(7, 10), Some(7), intent));
        assert!(!made_by(&snap(8, 2000), Some(7), intent));
        // No id: taken after the intent (within the clock skew) is ours.
        assert!(made_by(&snap(8, 1001), None, intent));
        assert!(made_by(&snap(8, 990), None, intent));
        assert!(!made_by(&snap(8, 900), None, intent));
        // No intent recorded: never ours.
        assert!(!made_by(&snap(8, 2000), None, None));
    }
}
