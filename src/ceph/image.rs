//! RBD images: create/open/remove/list on an [`IoCtx`], and the open [`Image`] handle
//! (size, stat, resize, read/write, flush).

use std::ffi::c_char;
use std::fmt;
use std::ops::{BitOr, BitOrAssign};
use std::ptr;

use super::cluster::IoCtx;
use super::error::{CephError, Result};
use super::ffi::{self, RawImageOptions, check, check_isize, cstring, rbd};

/// RBD image feature bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(pub u64);

impl Features {
    pub const LAYERING: Features = Features(rbd::RBD_FEATURE_LAYERING as u64);
    pub const STRIPING_V2: Features = Features(rbd::RBD_FEATURE_STRIPINGV2 as u64);
    pub const EXCLUSIVE_LOCK: Features = Features(rbd::RBD_FEATURE_EXCLUSIVE_LOCK as u64);
    pub const OBJECT_MAP: Features = Features(rbd::RBD_FEATURE_OBJECT_MAP as u64);
    pub const FAST_DIFF: Features = Features(rbd::RBD_FEATURE_FAST_DIFF as u64);
    pub const DEEP_FLATTEN: Features = Features(rbd::RBD_FEATURE_DEEP_FLATTEN as u64);
    pub const JOURNALING: Features = Features(rbd::RBD_FEATURE_JOURNALING as u64);
    pub const DATA_POOL: Features = Features(rbd::RBD_FEATURE_DATA_POOL as u64);
    pub const OPERATIONS: Features = Features(rbd::RBD_FEATURE_OPERATIONS as u64);
    pub const MIGRATING: Features = Features(rbd::RBD_FEATURE_MIGRATING as u64);
    pub const NON_PRIMARY: Features = Features(rbd::RBD_FEATURE_NON_PRIMARY as u64);
    pub const DIRTY_CACHE: Features = Features(rbd::RBD_FEATURE_DIRTY_CACHE as u64);
    /// layering, exclusive-lock, object-map, fast-diff, deep-flatten: the Ceph default, and what
    /// [`IoCtx::create_image`] uses unless told otherwise.
    pub const DEFAULT: Features = Features(
        Self::LAYERING.0
            | Self::EXCLUSIVE_LOCK.0
            | Self::OBJECT_MAP.0
            | Self::FAST_DIFF.0
            | Self::DEEP_FLATTEN.0,
    );

    const NAMES: [(Features, &'static str); 12] = [
        (Self::LAYERING, "layering"),
        (Self::STRIPING_V2, "striping"),
        (Self::EXCLUSIVE_LOCK, "exclusive-lock"),
        (Self::OBJECT_MAP, "object-map"),
        (Self::FAST_DIFF, "fast-diff"),
        (Self::DEEP_FLATTEN, "deep-flatten"),
        (Self::JOURNALING, "journaling"),
        (Self::DATA_POOL, "data-pool"),
        (Self::OPERATIONS, "operations"),
        (Self::MIGRATING, "migrating"),
        (Self::NON_PRIMARY, "non-primary"),
        (Self::DIRTY_CACHE, "dirty-cache"),
    ];

    /// The raw bit mask.
    pub fn bits(self) -> u64 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }

    /// Ceph's names of the set bits, e.g. `["layering", "exclusive-lock"]`.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(f, _)| self.contains(*f))
            .map(|(_, n)| *n)
            .collect()
    }
}

impl BitOr for Features {
    type Output = Features;
    fn bitor(self, rhs: Features) -> Features {
        Features(self.0 | rhs.0)
    }
}

impl BitOrAssign for Features {
    fn bitor_assign(&mut self, rhs: Features) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Features({:#x}: {})", self.0, self.names().join(","))
    }
}

/// The RBD clone format: v1 needs a protected parent snapshot, v2 does not (and needs
/// `require-min-compat-client mimic` on the cluster).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloneFormat {
    V1 = 1,
    V2 = 2,
}

/// Options for creating, cloning or deep-copying an image; `None` = librbd's default
/// (for `create_image` the features default to [`Features::DEFAULT`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageOptions {
    /// Feature bits of the new image.
    pub features: Option<Features>,
    /// Object size as a power of two (22 = 4 MiB objects).
    pub order: Option<u32>,
    /// A separate data pool (erasure-coded pools); metadata stays in the image's pool.
    pub data_pool: Option<String>,
    /// Clone format, for clones only.
    pub clone_format: Option<CloneFormat>,
}

impl ImageOptions {
    pub(crate) fn to_raw(
        &self,
        op: &'static str,
        target: &str,
        default_features: Option<Features>,
    ) -> Result<RawImageOptions> {
        let mut raw = RawImageOptions::new();
        raw.set_u64(op, target, rbd::RBD_IMAGE_OPTION_FORMAT, 2)?;
        if let Some(features) = self.features.or(default_features) {
            raw.set_u64(op, target, rbd::RBD_IMAGE_OPTION_FEATURES, features.bits())?;
        }
        if let Some(order) = self.order {
            raw.set_u64(op, target, rbd::RBD_IMAGE_OPTION_ORDER, order.into())?;
        }
        if let Some(pool) = &self.data_pool {
            raw.set_string(op, target, rbd::RBD_IMAGE_OPTION_DATA_POOL, pool)?;
        }
        if let Some(format) = self.clone_format {
            raw.set_u64(op, target, rbd::RBD_IMAGE_OPTION_CLONE_FORMAT, format as u64)?;
        }
        Ok(raw)
    }
}

/// `rbd_stat` of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Size in bytes.
    pub size: u64,
    /// Object size in bytes.
    pub object_size: u64,
    /// Number of objects the image spans.
    pub num_objects: u64,
    /// Object size as a power of two.
    pub order: i32,
    /// RADOS object name prefix of the data objects.
    pub block_name_prefix: String,
}

impl IoCtx {
    /// Creates a format-2 image of `size` bytes (`EEXIST` if the name is taken).
    pub fn create_image(&self, name: &str, size: u64, options: &ImageOptions) -> Result<()> {
        const OP: &str = "rbd image create";
        let target = self.spec(name);
        let c = cstring(OP, &target, name)?;
        let opts = options.to_raw(OP, &target, Some(Features::DEFAULT))?;
        // SAFETY: live ioctx, NUL-terminated name, live options object.
        let r = unsafe { rbd::rbd_create4(self.raw(), c.as_ptr(), size, opts.raw()) };
        check(OP, &target, r).map(drop)
    }

    /// Opens an image read-write (`ENOENT` if missing). Closed when the [`Image`] drops.
    pub fn open_image(&self, name: &str) -> Result<Image> {
        self.open(name, None, false)
    }

    /// Opens an image read-only, at the head or at snapshot `snap`. Takes no watch and no
    /// exclusive lock, so it does not disturb a writer.
    pub fn open_image_read_only(&self, name: &str, snap: Option<&str>) -> Result<Image> {
        self.open(name, snap, true)
    }

    fn open(&self, name: &str, snap: Option<&str>, read_only: bool) -> Result<Image> {
        const OP: &str = "rbd image open";
        let target = match snap {
            Some(s) => format!("{}@{s}", self.spec(name)),
            None => self.spec(name),
        };
        let c = cstring(OP, &target, name)?;
        let snap_c = snap.map(|s| cstring(OP, &target, s)).transpose()?;
        let snap_ptr = snap_c.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let mut raw: rbd::rbd_image_t = ptr::null_mut();
        // SAFETY: live ioctx, NUL-terminated name, snapshot name or null, valid out-pointer.
        let r = unsafe {
            if read_only {
                rbd::rbd_open_read_only(self.raw(), c.as_ptr(), &mut raw, snap_ptr)
            } else {
                rbd::rbd_open(self.raw(), c.as_ptr(), &mut raw, snap_ptr)
            }
        };
        check(OP, &target, r)?;
        Ok(Image {
            raw,
            ioctx: self.clone(),
            name: name.to_string(),
            target: self.spec(name),
        })
    }

    /// Removes an image (`ENOENT` if missing, `ENOTEMPTY` while it has snapshots,
    /// `EBUSY` while another client has it open).
    pub fn remove_image(&self, name: &str) -> Result<()> {
        const OP: &str = "rbd image remove";
        let target = self.spec(name);
        let c = cstring(OP, &target, name)?;
        // SAFETY: live ioctx and NUL-terminated name.
        check(OP, &target, unsafe { rbd::rbd_remove(self.raw(), c.as_ptr()) }).map(drop)
    }

    /// Renames an image within this pool and namespace.
    pub fn rename_image(&self, from: &str, to: &str) -> Result<()> {
        const OP: &str = "rbd image rename";
        let target = format!("{} -> {to}", self.spec(from));
        let f = cstring(OP, &target, from)?;
        let t = cstring(OP, &target, to)?;
        // SAFETY: live ioctx and NUL-terminated names.
        check(OP, &target, unsafe {
            rbd::rbd_rename(self.raw(), f.as_ptr(), t.as_ptr())
        })
        .map(drop)
    }

    /// The names of the images in this pool and namespace, sorted.
    pub fn list_images(&self) -> Result<Vec<String>> {
        Ok(self.list_image_ids()?.into_iter().map(|i| i.name).collect())
    }

    /// The images of this pool and namespace as its directory lists them, name and id, sorted
    /// by name.
    pub fn list_image_ids(&self) -> Result<Vec<ImageName>> {
        const OP: &str = "rbd image list";
        let target = self.location();
        let empty = rbd::rbd_image_spec_t {
            id: ptr::null_mut(),
            name: ptr::null_mut(),
        };
        let (r, mut specs, n) = ffi::sized(OP, &target, empty, 64, |specs, n| {
            // SAFETY: `specs` has room for `n` entries; librbd fills them (strdup'd strings) and
            // reports the count, or the needed count with ERANGE.
            unsafe { rbd::rbd_list2(self.raw(), specs.as_mut_ptr(), n) }
        })?;
        check(OP, &target, r)?;
        let mut images: Vec<ImageName> = specs[..n]
            .iter()
            // SAFETY: the first `n` entries were filled with valid strings.
            .map(|s| unsafe {
                ImageName {
                    name: ffi::string_from_ptr(s.name),
                    id: ffi::string_from_ptr(s.id),
                }
            })
            .collect();
        // SAFETY: frees exactly the `n` entries librbd filled, once.
        unsafe { rbd::rbd_image_spec_list_cleanup(specs.as_mut_ptr(), n) };
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }
}

/// An image as the pool's RBD directory lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageName {
    pub name: String,
    /// Its internal id (its RADOS objects are `rbd_header.<id>`, `rbd_data.<id>.*`).
    pub id: String,
}

/// An open RBD image, closed on drop.
///
/// `Send` but not `Sync`: move it between threads, share it behind a `Mutex`. Calls that change
/// the image's data or size take `&mut self`.
pub struct Image {
    pub(crate) raw: rbd::rbd_image_t,
    ioctx: IoCtx,
    name: String,
    target: String,
}

// SAFETY: an rbd_image_t is not tied to the thread that opened it; librbd's ImageCtx guards its
// state with its own locks. We still do not claim Sync (no concurrent calls through &Image).
unsafe impl Send for Image {}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: opened by rbd_open*, closed exactly once; the IoCtx (and so the cluster
        // connection) it was opened on is kept alive by `self.ioctx` until after this.
        unsafe { rbd::rbd_close(self.raw) };
    }
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image").field("spec", &self.target).finish()
    }
}

impl Image {
    /// The image name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `pool/namespace/name`.
    pub fn spec(&self) -> &str {
        &self.target
    }

    /// The I/O context the image was opened on.
    pub fn io_context(&self) -> &IoCtx {
        &self.ioctx
    }

    pub(crate) fn snap_target(&self, snap: &str) -> String {
        format!("{}@{snap}", self.target)
    }

    /// Size in bytes (of the head, or of the snapshot the image was opened at).
    pub fn size(&self) -> Result<u64> {
        let mut size = 0u64;
        // SAFETY: open image, valid out-pointer.
        check("rbd image size", &self.target, unsafe {
            rbd::rbd_get_size(self.raw, &mut size)
        })?;
        Ok(size)
    }

    /// Size, object size and layout.
    pub fn stat(&self) -> Result<ImageInfo> {
        // SAFETY: rbd_image_info_t is plain data; all-zero is a valid value.
        let mut info: rbd::rbd_image_info_t = unsafe { std::mem::zeroed() };
        // SAFETY: open image; `info` is writable for the size passed.
        let r = unsafe { rbd::rbd_stat(self.raw, &mut info, std::mem::size_of::<rbd::rbd_image_info_t>()) };
        check("rbd image stat", &self.target, r)?;
        let prefix: Vec<u8> = info.block_name_prefix.iter().map(|&c| c as u8).collect();
        Ok(ImageInfo {
            size: info.size,
            object_size: info.obj_size,
            num_objects: info.num_objs,
            order: info.order,
            block_name_prefix: ffi::string_from_buf(&prefix),
        })
    }

    /// The image's feature bits.
    pub fn features(&self) -> Result<Features> {
        let mut bits = 0u64;
        // SAFETY: open image, valid out-pointer.
        check("rbd image features", &self.target, unsafe {
            rbd::rbd_get_features(self.raw, &mut bits)
        })?;
        Ok(Features(bits))
    }

    /// The image's internal id (its RADOS objects are `rbd_data.<id>.*`).
    pub fn id(&self) -> Result<String> {
        const OP: &str = "rbd image id";
        // librbd does not say the size it needs here: the buffer doubles.
        let (r, buf, _) = ffi::sized(OP, &self.target, 0u8, 64, |buf, _| {
            // SAFETY: `buf` is writable for its length.
            unsafe { rbd::rbd_get_id(self.raw, buf.as_mut_ptr().cast::<c_char>(), buf.len()) }
        })?;
        check(OP, &self.target, r)?;
        Ok(ffi::string_from_buf(&buf))
    }

    /// Grows or shrinks the image.
    pub fn resize(&mut self, size: u64) -> Result<()> {
        // SAFETY: open image.
        check("rbd image resize", &self.target, unsafe {
            rbd::rbd_resize(self.raw, size)
        })
        .map(drop)
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read: fewer at the end
    /// of the image, 0 at or past it (like `pread`; librbd itself says `EINVAL` there).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        const CHUNK: usize = 64 << 20;
        let mut done = 0usize;
        while done < buf.len() {
            let len = (buf.len() - done).min(CHUNK);
            let chunk = &mut buf[done..done + len];
            // SAFETY: open image; `chunk` is writable for `len` bytes.
            let r = unsafe {
                rbd::rbd_read(
                    self.raw,
                    offset + done as u64,
                    len,
                    chunk.as_mut_ptr().cast::<c_char>(),
                )
            };
            if r == -(libc::EINVAL as isize) && offset + done as u64 >= self.size()? {
                break;
            }
            let n = check_isize("rbd image read", &self.target, r)?;
            done += n;
            if n < len {
                break;
            }
        }
        Ok(done)
    }

    /// Writes all of `data` at `offset` (`EINVAL` past the end of the image: resize first).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        const OP: &str = "rbd image write";
        const CHUNK: usize = 64 << 20;
        let mut done = 0usize;
        while done < data.len() {
            let len = (data.len() - done).min(CHUNK);
            let chunk = &data[done..done + len];
            // SAFETY: open image; `chunk` is readable for `len` bytes.
            let r = unsafe {
                rbd::rbd_write(
                    self.raw,
                    offset + done as u64,
                    len,
                    chunk.as_ptr().cast::<c_char>(),
                )
            };
            let n = check_isize(OP, &self.target, r)?;
            if n == 0 {
                return Err(
                    CephError::new(OP, &self.target, -i64::from(libc::EIO)).with_detail("short write")
                );
            }
            done += n;
        }
        Ok(())
    }

    /// Discards (zeroes, deallocates) `len` bytes at `offset`.
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<()> {
        // SAFETY: open image.
        let r = unsafe { rbd::rbd_discard(self.raw, offset, len) };
        check("rbd image discard", &self.target, r).map(drop)
    }

    /// Waits until written data is persisted.
    pub fn flush(&self) -> Result<()> {
        // SAFETY: open image.
        check("rbd image flush", &self.target, unsafe {
            rbd::rbd_flush(self.raw)
        })
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_features_match_ceph_default() {
        assert_eq!(Features::DEFAULT.bits(), u64::from(rbd::RBD_FEATURES_DEFAULT));
        assert_eq!(
            Features::DEFAULT.names(),
            vec![
                "layering",
                "exclusive-lock",
                "object-map",
                "fast-diff",
                "deep-flatten"
            ]
        );
        assert!(Features::DEFAULT.contains(Features::LAYERING | Features::EXCLUSIVE_LOCK));
        assert!(!Features::LAYERING.contains(Features::DEFAULT));
    }

    #[test]
    fn image_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Image>();
    }
}
