//! Copies and layering: deep copy, layered clones, flatten, parent and children.

use std::ptr;

use super::cluster::IoCtx;
use super::error::Result;
use super::ffi::{self, check, cstring, rbd};
use super::image::{Image, ImageOptions};

/// An image another image is linked to (a clone's parent or a parent's child).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkedImage {
    pub pool_id: i64,
    pub pool: String,
    /// RBD namespace (`""` = default).
    pub namespace: String,
    pub name: String,
    pub id: String,
    /// The image sits in the RBD trash.
    pub trash: bool,
}

/// A clone's parent: the image and the snapshot it was cloned from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentInfo {
    pub image: LinkedImage,
    pub snap_id: u64,
    pub snap_name: String,
}

/// Copies a C `rbd_linked_image_spec_t`.
///
/// # Safety
/// The spec's string pointers must be null or valid NUL-terminated strings.
unsafe fn linked_image(spec: &rbd::rbd_linked_image_spec_t) -> LinkedImage {
    // SAFETY: per contract.
    unsafe {
        LinkedImage {
            pool_id: spec.pool_id,
            pool: ffi::string_from_ptr(spec.pool_name),
            namespace: ffi::string_from_ptr(spec.pool_namespace),
            name: ffi::string_from_ptr(spec.image_name),
            id: ffi::string_from_ptr(spec.image_id),
            trash: spec.trash,
        }
    }
}

fn empty_linked_spec() -> rbd::rbd_linked_image_spec_t {
    rbd::rbd_linked_image_spec_t {
        pool_id: 0,
        pool_name: ptr::null_mut(),
        pool_namespace: ptr::null_mut(),
        image_id: ptr::null_mut(),
        image_name: ptr::null_mut(),
        trash: false,
    }
}

impl IoCtx {
    /// Clones `parent@snap` (in this context's pool/namespace) to `child` in `child_ioctx`.
    ///
    /// With [`super::CloneFormat::V1`] the snapshot must be protected (`EINVAL` otherwise);
    /// v2 clones need `require-min-compat-client mimic`. `EEXIST` if `child` exists,
    /// `ENOENT` if the parent or snapshot does not.
    pub fn clone_image(
        &self,
        parent: &str,
        snap: &str,
        child_ioctx: &IoCtx,
        child: &str,
        options: &ImageOptions,
    ) -> Result<()> {
        const OP: &str = "rbd clone";
        let target = format!("{}@{snap} -> {}", self.spec(parent), child_ioctx.spec(child));
        let p = cstring(OP, &target, parent)?;
        let s = cstring(OP, &target, snap)?;
        let c = cstring(OP, &target, child)?;
        let opts = options.to_raw(OP, &target, None)?;
        // SAFETY: live ioctxs, NUL-terminated names, live options object.
        let r = unsafe {
            rbd::rbd_clone3(
                self.raw(),
                p.as_ptr(),
                s.as_ptr(),
                child_ioctx.raw(),
                c.as_ptr(),
                opts.raw(),
            )
        };
        check(OP, &target, r).map(drop)
    }
}

impl Image {
    /// Copies the image with all its snapshots and metadata to `dest` in `dest_ioctx`
    /// (`EEXIST` if it exists). Unset options keep the source's features and layout.
    pub fn deep_copy(&self, dest_ioctx: &IoCtx, dest: &str, options: &ImageOptions) -> Result<()> {
        const OP: &str = "rbd deep copy";
        let target = format!("{} -> {}", self.spec(), dest_ioctx.spec(dest));
        let d = cstring(OP, &target, dest)?;
        let opts = options.to_raw(OP, &target, None)?;
        // SAFETY: open image, live destination ioctx, NUL-terminated name, live options object.
        let r = unsafe { rbd::rbd_deep_copy(self.raw, dest_ioctx.raw(), d.as_ptr(), opts.raw()) };
        check(OP, &target, r).map(drop)
    }

    /// Copies the parent's data into this clone and detaches it (`EINVAL` if not a clone).
    pub fn flatten(&mut self) -> Result<()> {
        // SAFETY: open image.
        check("rbd flatten", self.spec(), unsafe { rbd::rbd_flatten(self.raw) }).map(drop)
    }

    /// The parent of a clone; `None` for an image that is not one (or no longer is).
    pub fn parent(&self) -> Result<Option<ParentInfo>> {
        let mut image = empty_linked_spec();
        let mut snap = rbd::rbd_snap_spec_t {
            id: 0,
            namespace_type: rbd::rbd_snap_namespace_type_t(0),
            name: ptr::null_mut(),
        };
        // SAFETY: open image, valid out-pointers; on success librbd fills them with strdup'd
        // strings, released below.
        let r = unsafe { rbd::rbd_get_parent(self.raw, &mut image, &mut snap) };
        if r == -libc::ENOENT {
            return Ok(None);
        }
        check("rbd parent", self.spec(), r)?;
        // SAFETY: filled by a successful rbd_get_parent.
        let info = unsafe {
            ParentInfo {
                image: linked_image(&image),
                snap_id: snap.id,
                snap_name: ffi::string_from_ptr(snap.name),
            }
        };
        // SAFETY: releases the strings librbd allocated, once each.
        unsafe {
            rbd::rbd_linked_image_spec_cleanup(&mut image);
            rbd::rbd_snap_spec_cleanup(&mut snap);
        }
        Ok(Some(info))
    }

    /// The clones of this image's snapshots (of the snapshot it was opened at, if any).
    pub fn children(&self) -> Result<Vec<LinkedImage>> {
        const OP: &str = "rbd children";
        let (r, mut specs, n) = ffi::sized(OP, self.spec(), empty_linked_spec(), 16, |specs, n| {
            // SAFETY: `specs` has room for `n` entries; librbd fills them or asks for more.
            unsafe { rbd::rbd_list_children3(self.raw, specs.as_mut_ptr(), n) }
        })?;
        check(OP, self.spec(), r)?;
        // SAFETY: the first `n` entries were filled by librbd.
        let out = specs[..n].iter().map(|s| unsafe { linked_image(s) }).collect();
        // SAFETY: releases exactly the `n` filled entries, once.
        unsafe { rbd::rbd_linked_image_spec_list_cleanup(specs.as_mut_ptr(), n) };
        Ok(out)
    }
}
