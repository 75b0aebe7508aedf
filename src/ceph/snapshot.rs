//! Image snapshots: create, list, remove, rollback, protect/unprotect, and a purge loop
//! (librbd's C API has no purge).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::error::Result;
use super::ffi::{self, check, cstring, rbd};
use super::image::Image;

/// Which kind of snapshot: one made by a user, one made as part of a group snapshot, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapNamespace {
    User,
    Group,
    Trash,
    Mirror,
    Unknown(u32),
}

impl From<rbd::rbd_snap_namespace_type_t> for SnapNamespace {
    fn from(t: rbd::rbd_snap_namespace_type_t) -> Self {
        match t {
            rbd::rbd_snap_namespace_type_t::RBD_SNAP_NAMESPACE_TYPE_USER => SnapNamespace::User,
            rbd::rbd_snap_namespace_type_t::RBD_SNAP_NAMESPACE_TYPE_GROUP => SnapNamespace::Group,
            rbd::rbd_snap_namespace_type_t::RBD_SNAP_NAMESPACE_TYPE_TRASH => SnapNamespace::Trash,
            rbd::rbd_snap_namespace_type_t::RBD_SNAP_NAMESPACE_TYPE_MIRROR => SnapNamespace::Mirror,
            other => SnapNamespace::Unknown(other.0),
        }
    }
}

/// One snapshot of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapInfo {
    /// Snapshot id (increasing with creation).
    pub id: u64,
    /// Snapshot name (group snapshots get a generated `.group.*` name).
    pub name: String,
    /// Image size when the snapshot was taken.
    pub size: u64,
    /// Creation time.
    pub timestamp: SystemTime,
    /// User, group, trash or mirror snapshot.
    pub namespace: SnapNamespace,
}

impl Image {
    /// Takes a snapshot named `name` (`EEXIST` if taken).
    pub fn snap_create(&self, name: &str) -> Result<()> {
        const OP: &str = "rbd snap create";
        let target = self.snap_target(name);
        let c = cstring(OP, &target, name)?;
        // SAFETY: open image, NUL-terminated name.
        check(OP, &target, unsafe { rbd::rbd_snap_create(self.raw, c.as_ptr()) }).map(drop)
    }

    /// All snapshots of the image, oldest first, of every namespace (filter on
    /// [`SnapInfo::namespace`] for the user's own).
    pub fn snap_list(&self) -> Result<Vec<SnapInfo>> {
        const OP: &str = "rbd snap list";
        let empty = rbd::rbd_snap_info_t {
            id: 0,
            size: 0,
            name: std::ptr::null(),
        };
        let (r, mut snaps, _) = ffi::sized(OP, self.spec(), empty, 16, |snaps, n| {
            let mut max = i32::try_from(*n).unwrap_or(i32::MAX);
            // SAFETY: `snaps` has room for `max` entries; librbd fills count+1 entries (the last
            // a null-name terminator) or asks for more with ERANGE.
            let r = unsafe { rbd::rbd_snap_list(self.raw, snaps.as_mut_ptr(), &mut max) };
            *n = usize::try_from(max).unwrap_or(*n);
            r
        })?;
        let n = usize::try_from(check(OP, self.spec(), r)?)
            .unwrap_or(0)
            .min(snaps.len().saturating_sub(1));
        let raw: Vec<(u64, u64, String)> = snaps[..n]
            .iter()
            // SAFETY: the first `n` entries hold strdup'd names.
            .map(|s| (s.id, s.size, unsafe { ffi::string_from_ptr(s.name) }))
            .collect();
        // SAFETY: frees the names of this successful listing exactly once; it stops at the
        // first null name (librbd's terminator, or our zero-initialised entries).
        unsafe { rbd::rbd_snap_list_end(snaps.as_mut_ptr()) };
        let mut out = Vec::with_capacity(raw.len());
        for (id, size, name) in raw {
            // A snapshot removed (by another client) since the listing is skipped.
            let (timestamp, namespace) = match self
                .snap_timestamp(id, &name)
                .and_then(|t| Ok((t, self.snap_namespace(id, &name)?)))
            {
                Ok(found) => found,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e),
            };
            out.push(SnapInfo {
                id,
                name,
                size,
                timestamp,
                namespace,
            });
        }
        Ok(out)
    }

    fn snap_timestamp(&self, id: u64, name: &str) -> Result<SystemTime> {
        let mut ts = rbd::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: open image, valid out-pointer.
        let r = unsafe { rbd::rbd_snap_get_timestamp(self.raw, id, &mut ts) };
        check("rbd snap timestamp", &self.snap_target(name), r)?;
        let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
        let nanos = u32::try_from(ts.tv_nsec).unwrap_or(0);
        Ok(UNIX_EPOCH + Duration::new(secs, nanos))
    }

    fn snap_namespace(&self, id: u64, name: &str) -> Result<SnapNamespace> {
        let mut t = rbd::rbd_snap_namespace_type_t(0);
        // SAFETY: open image, valid out-pointer.
        let r = unsafe { rbd::rbd_snap_get_namespace_type(self.raw, id, &mut t) };
        check("rbd snap namespace", &self.snap_target(name), r)?;
        Ok(t.into())
    }

    /// Makes this handle show snapshot `id`, whatever its namespace: the way to ask about a
    /// snapshot that has no name to open it at (one in librbd's trash).
    pub fn snap_set_by_id(&mut self, id: u64) -> Result<()> {
        // SAFETY: open image.
        check("rbd snap set", &self.snap_target(&format!("#{id}")), unsafe {
            rbd::rbd_snap_set_by_id(self.raw, id)
        })
        .map(drop)
    }

    /// Removes snapshot `id`, whatever its namespace (one in librbd's trash has no name to
    /// remove it by).
    pub fn snap_remove_by_id(&self, id: u64) -> Result<()> {
        // SAFETY: open image.
        check("rbd snap remove", &self.snap_target(&format!("#{id}")), unsafe {
            rbd::rbd_snap_remove_by_id(self.raw, id)
        })
        .map(drop)
    }

    /// Whether a snapshot named `name` exists.
    pub fn snap_exists(&self, name: &str) -> Result<bool> {
        const OP: &str = "rbd snap exists";
        let target = self.snap_target(name);
        let c = cstring(OP, &target, name)?;
        let mut exists = false;
        // SAFETY: open image, NUL-terminated name, valid out-pointer.
        check(OP, &target, unsafe {
            rbd::rbd_snap_exists(self.raw, c.as_ptr(), &mut exists)
        })?;
        Ok(exists)
    }

    /// Removes a snapshot (`ENOENT` if missing, `EBUSY` while protected).
    pub fn snap_remove(&self, name: &str) -> Result<()> {
        const OP: &str = "rbd snap remove";
        let target = self.snap_target(name);
        let c = cstring(OP, &target, name)?;
        // SAFETY: open image, NUL-terminated name.
        check(OP, &target, unsafe { rbd::rbd_snap_remove(self.raw, c.as_ptr()) }).map(drop)
    }

    /// Rolls the image's data back to the snapshot (`ENOENT` if missing). Other clients must
    /// not have the image open for writing.
    pub fn snap_rollback(&mut self, name: &str) -> Result<()> {
        const OP: &str = "rbd snap rollback";
        let target = self.snap_target(name);
        let c = cstring(OP, &target, name)?;
        // SAFETY: open image, NUL-terminated name.
        check(OP, &target, unsafe {
            rbd::rbd_snap_rollback(self.raw, c.as_ptr())
        })
        .map(drop)
    }

    /// Protects a snapshot from removal (needed for v1 clones; `EBUSY` if already protected).
    pub fn snap_protect(&self, name: &str) -> Result<()> {
        const OP: &str = "rbd snap protect";
        let target = self.snap_target(name);
        let c = cstring(OP, &target, name)?;
        // SAFETY: open image, NUL-terminated name.
        check(OP, &target, unsafe {
            rbd::rbd_snap_protect(self.raw, c.as_ptr())
        })
        .map(drop)
    }

    /// Unprotects a snapshot (`EINVAL` if not protected, `EBUSY` while it has clones).
    pub fn snap_unprotect(&self, name: &str) -> Result<()> {
        const OP: &str = "rbd snap unprotect";
        let target = self.snap_target(name);
        let c = cstring(OP, &target, name)?;
        // SAFETY: open image, NUL-terminated name.
        check(OP, &target, unsafe {
            rbd::rbd_snap_unprotect(self.raw, c.as_ptr())
        })
        .map(drop)
    }

    /// Whether a snapshot is protected (`ENOENT` if missing).
    pub fn snap_is_protected(&self, name: &str) -> Result<bool> {
        const OP: &str = "rbd snap is protected";
        let target = self.snap_target(name);
        let c = cstring(OP, &target, name)?;
        let mut protected = 0;
        // SAFETY: open image, NUL-terminated name, valid out-pointer.
        check(OP, &target, unsafe {
            rbd::rbd_snap_is_protected(self.raw, c.as_ptr(), &mut protected)
        })?;
        Ok(protected != 0)
    }

    /// Removes every user snapshot, unprotecting protected ones first (`EBUSY` if one still has
    /// clones). Group snapshots are left to [`crate::ceph::IoCtx::group_snap_remove`].
    /// Returns the names removed.
    pub fn snap_purge(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for snap in self.snap_list()? {
            if snap.namespace != SnapNamespace::User {
                continue;
            }
            if self.snap_is_protected(&snap.name)? {
                self.snap_unprotect(&snap.name)?;
            }
            self.snap_remove(&snap.name)?;
            removed.push(snap.name);
        }
        Ok(removed)
    }
}
