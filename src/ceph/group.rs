//! RBD groups (consistency groups) and group snapshots.
//!
//! Pacific has group snapshot create/list/remove/rollback, but no group snapshot info
//! (Ceph 20) and no clone from a group snapshot (Squid+).

use std::mem::size_of;
use std::ptr;

use super::cluster::IoCtx;
use super::error::{CephError, Result};
use super::ffi::{self, check, cstring, rbd};
use super::image::Image;

/// Whether an image is fully in a group or half-way through being added/removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupImageState {
    Attached,
    Incomplete,
}

/// A member of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupImage {
    /// Image name (in the group's RBD namespace).
    pub name: String,
    /// Pool id of the image.
    pub pool_id: i64,
    pub state: GroupImageState,
}

/// Whether a group snapshot finished (an interrupted one stays incomplete).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupSnapState {
    Incomplete,
    Complete,
}

/// A group snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSnap {
    pub name: String,
    pub state: GroupSnapState,
}

/// The group an image belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRef {
    pub pool_id: i64,
    pub name: String,
}

impl IoCtx {
    fn group_snap_target(&self, group: &str, snap: &str) -> String {
        format!("{}@{snap}", self.spec(group))
    }

    /// Creates a group (`EEXIST` if it exists).
    pub fn group_create(&self, group: &str) -> Result<()> {
        const OP: &str = "rbd group create";
        let target = self.spec(group);
        let g = cstring(OP, &target, group)?;
        // SAFETY: live ioctx, NUL-terminated name.
        check(OP, &target, unsafe {
            rbd::rbd_group_create(self.raw(), g.as_ptr())
        })
        .map(drop)
    }

    /// Removes a group with its group snapshots; member images stay (`ENOENT` if missing:
    /// librbd itself reports success for a missing group, this layer checks first).
    pub fn group_remove(&self, group: &str) -> Result<()> {
        const OP: &str = "rbd group remove";
        let target = self.spec(group);
        let g = cstring(OP, &target, group)?;
        self.group_must_exist(OP, group)?;
        // SAFETY: live ioctx, NUL-terminated name.
        check(OP, &target, unsafe {
            rbd::rbd_group_remove(self.raw(), g.as_ptr())
        })
        .map(drop)
    }

    /// The groups in this pool and namespace, sorted.
    pub fn group_list(&self) -> Result<Vec<String>> {
        const OP: &str = "rbd group list";
        let target = self.location();
        let (r, buf, _) = ffi::sized(OP, &target, 0u8, 1024, |buf, len| {
            // SAFETY: `buf` is writable for `len` bytes (never null: librbd rejects a null buffer
            // even for an empty list); on ERANGE librbd stores the needed size.
            unsafe { rbd::rbd_group_list(self.raw(), buf.as_mut_ptr().cast(), len) }
        })?;
        check(OP, &target, r)?;
        let mut names = ffi::split_nul_list(&buf);
        names.sort();
        Ok(names)
    }

    /// `ENOENT` unless `group` exists; librbd's group listings report a missing group as empty.
    fn group_must_exist(&self, op: &'static str, group: &str) -> Result<()> {
        if self.group_list()?.iter().any(|g| g == group) {
            Ok(())
        } else {
            Err(CephError::new(op, self.spec(group), -i64::from(libc::ENOENT)))
        }
    }

    /// Adds `image` (in `image_ioctx`) to the group (`EEXIST` if it is in a group already).
    pub fn group_image_add(&self, group: &str, image_ioctx: &IoCtx, image: &str) -> Result<()> {
        const OP: &str = "rbd group image add";
        let target = format!("{} + {}", self.spec(group), image_ioctx.spec(image));
        let g = cstring(OP, &target, group)?;
        let i = cstring(OP, &target, image)?;
        // SAFETY: live ioctxs, NUL-terminated names.
        let r = unsafe { rbd::rbd_group_image_add(self.raw(), g.as_ptr(), image_ioctx.raw(), i.as_ptr()) };
        check(OP, &target, r).map(drop)
    }

    /// Removes `image` (in `image_ioctx`) from the group.
    pub fn group_image_remove(&self, group: &str, image_ioctx: &IoCtx, image: &str) -> Result<()> {
        const OP: &str = "rbd group image remove";
        let target = format!("{} - {}", self.spec(group), image_ioctx.spec(image));
        let g = cstring(OP, &target, group)?;
        let i = cstring(OP, &target, image)?;
        // SAFETY: live ioctxs, NUL-terminated names.
        let r = unsafe { rbd::rbd_group_image_remove(self.raw(), g.as_ptr(), image_ioctx.raw(), i.as_ptr()) };
        check(OP, &target, r).map(drop)
    }

    /// The members of a group (`ENOENT` if the group does not exist).
    pub fn group_image_list(&self, group: &str) -> Result<Vec<GroupImage>> {
        const OP: &str = "rbd group image list";
        let target = self.spec(group);
        let g = cstring(OP, &target, group)?;
        let empty = rbd::rbd_group_image_info_t {
            name: ptr::null_mut(),
            pool: 0,
            state: rbd::rbd_group_image_state_t(0),
        };
        let (r, mut infos, n) = ffi::sized(OP, &target, empty, 16, |infos, n| {
            // SAFETY: `infos` has room for `n` entries of the size passed; librbd fills them or
            // asks for more with ERANGE.
            unsafe {
                rbd::rbd_group_image_list(
                    self.raw(),
                    g.as_ptr(),
                    infos.as_mut_ptr(),
                    size_of::<rbd::rbd_group_image_info_t>(),
                    n,
                )
            }
        })?;
        check(OP, &target, r)?;
        let out: Vec<GroupImage> = infos[..n]
            .iter()
            .map(|i| GroupImage {
                // SAFETY: the first `n` entries hold strdup'd names.
                name: unsafe { ffi::string_from_ptr(i.name) },
                pool_id: i.pool,
                state: if i.state == rbd::rbd_group_image_state_t::RBD_GROUP_IMAGE_STATE_ATTACHED {
                    GroupImageState::Attached
                } else {
                    GroupImageState::Incomplete
                },
            })
            .collect();
        // SAFETY: releases exactly the `n` filled entries, once.
        unsafe {
            rbd::rbd_group_image_list_cleanup(infos.as_mut_ptr(), size_of::<rbd::rbd_group_image_info_t>(), n)
        };
        if out.is_empty() {
            self.group_must_exist(OP, group)?;
        }
        Ok(out)
    }

    /// Snapshots every member image at once (`EEXIST` if the name is taken).
    pub fn group_snap_create(&self, group: &str, snap: &str) -> Result<()> {
        const OP: &str = "rbd group snap create";
        let target = self.group_snap_target(group, snap);
        let g = cstring(OP, &target, group)?;
        let s = cstring(OP, &target, snap)?;
        // SAFETY: live ioctx, NUL-terminated names.
        check(OP, &target, unsafe {
            rbd::rbd_group_snap_create(self.raw(), g.as_ptr(), s.as_ptr())
        })
        .map(drop)
    }

    /// Removes a group snapshot and its member snapshots.
    pub fn group_snap_remove(&self, group: &str, snap: &str) -> Result<()> {
        const OP: &str = "rbd group snap remove";
        let target = self.group_snap_target(group, snap);
        let g = cstring(OP, &target, group)?;
        let s = cstring(OP, &target, snap)?;
        // SAFETY: live ioctx, NUL-terminated names.
        check(OP, &target, unsafe {
            rbd::rbd_group_snap_remove(self.raw(), g.as_ptr(), s.as_ptr())
        })
        .map(drop)
    }

    /// Rolls every member image back to the group snapshot (no member may be open for writing
    /// elsewhere).
    pub fn group_snap_rollback(&self, group: &str, snap: &str) -> Result<()> {
        const OP: &str = "rbd group snap rollback";
        let target = self.group_snap_target(group, snap);
        let g = cstring(OP, &target, group)?;
        let s = cstring(OP, &target, snap)?;
        // SAFETY: live ioctx, NUL-terminated names.
        check(OP, &target, unsafe {
            rbd::rbd_group_snap_rollback(self.raw(), g.as_ptr(), s.as_ptr())
        })
        .map(drop)
    }

    /// The snapshots of a group (`ENOENT` if the group does not exist).
    pub fn group_snap_list(&self, group: &str) -> Result<Vec<GroupSnap>> {
        const OP: &str = "rbd group snap list";
        let target = self.spec(group);
        let g = cstring(OP, &target, group)?;
        let empty = rbd::rbd_group_snap_info_t {
            name: ptr::null_mut(),
            state: rbd::rbd_group_snap_state_t(0),
        };
        let (r, mut infos, n) = ffi::sized(OP, &target, empty, 16, |infos, n| {
            // SAFETY: `infos` has room for `n` entries of the size passed; librbd fills them or
            // asks for more with ERANGE.
            unsafe {
                rbd::rbd_group_snap_list(
                    self.raw(),
                    g.as_ptr(),
                    infos.as_mut_ptr(),
                    size_of::<rbd::rbd_group_snap_info_t>(),
                    n,
                )
            }
        })?;
        check(OP, &target, r)?;
        let out: Vec<GroupSnap> = infos[..n]
            .iter()
            .map(|i| GroupSnap {
                // SAFETY: the first `n` entries hold strdup'd names.
                name: unsafe { ffi::string_from_ptr(i.name) },
                state: if i.state == rbd::rbd_group_snap_state_t::RBD_GROUP_SNAP_STATE_COMPLETE {
                    GroupSnapState::Complete
                } else {
                    GroupSnapState::Incomplete
                },
            })
            .collect();
        // SAFETY: releases exactly the `n` filled entries, once.
        unsafe {
            rbd::rbd_group_snap_list_cleanup(infos.as_mut_ptr(), size_of::<rbd::rbd_group_snap_info_t>(), n)
        };
        if out.is_empty() {
            self.group_must_exist(OP, group)?;
        }
        Ok(out)
    }
}

impl Image {
    /// The group this image belongs to, if any.
    pub fn group(&self) -> Result<Option<GroupRef>> {
        let mut info = rbd::rbd_group_info_t {
            name: ptr::null_mut(),
            pool: -1,
        };
        // SAFETY: open image; `info` is writable for the size passed; librbd strdup()s the name.
        let r = unsafe { rbd::rbd_get_group(self.raw, &mut info, size_of::<rbd::rbd_group_info_t>()) };
        check("rbd image group", self.spec(), r)?;
        // SAFETY: filled by a successful rbd_get_group.
        let name = unsafe { ffi::string_from_ptr(info.name) };
        let pool_id = info.pool;
        // SAFETY: releases the name librbd allocated, once.
        unsafe { rbd::rbd_group_info_cleanup(&mut info, size_of::<rbd::rbd_group_info_t>()) };
        Ok(if name.is_empty() || pool_id < 0 {
            None
        } else {
            Some(GroupRef { pool_id, name })
        })
    }
}
