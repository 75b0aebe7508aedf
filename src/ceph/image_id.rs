//! The `rbd_id.<name>` objects of format-2 images: the pointer from an image's name to its id,
//! beside the pool's `rbd_directory` (which maps names and ids both ways).
//!
//! librbd renames an image in steps (Pacific's `RenameRequest`): it writes `rbd_id.<new>`,
//! updates the directory, then removes `rbd_id.<old>`. A process killed between two steps
//! leaves a pointer the directory does not list: `rbd_id.<new>` (the new name cannot be used:
//! creating or renaming to it fails with `EEXIST`, opening it opens the image still listed
//! under the old name) or `rbd_id.<old>` (opening or removing the old name reaches the image
//! now listed under the new one). These calls let a caller find such pointers and remove them.

use super::cluster::IoCtx;
use super::error::{CephError, Result};
use super::ffi::{check, cstring, rados};

/// The name of the object that points from image `name` to its id.
fn pointer_object(name: &str) -> String {
    format!("rbd_id.{name}")
}

/// Decodes the id an `rbd_id.` object holds: a Ceph-encoded string (little-endian `u32`
/// length, then the bytes).
fn decode_id(bytes: &[u8]) -> Option<String> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    rest.get(..len)
        .and_then(|id| std::str::from_utf8(id).ok())
        .map(str::to_owned)
}

impl IoCtx {
    /// The id `rbd_id.<name>` points to, or `None` when there is no such object, whether or not
    /// the directory lists `name`.
    pub fn image_id_pointer(&self, name: &str) -> Result<Option<String>> {
        const OP: &str = "rados read image id";
        let oid = pointer_object(name);
        let target = self.spec(&oid);
        let o = cstring(OP, &target, &oid)?;
        // An id is 12 to 16 characters; 64 bytes hold any of them with its length.
        let mut buf = vec![0u8; 64];
        // SAFETY: valid ioctx, NUL-terminated oid, `buf` writable for its length.
        let r = unsafe { rados::rados_read(self.raw(), o.as_ptr(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = match check(OP, &target, r) {
            Ok(n) => usize::try_from(n).unwrap_or_default(),
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        decode_id(&buf[..n]).map(Some).ok_or_else(|| {
            CephError::new(OP, target, -i64::from(libc::EINVAL)).with_detail("not an encoded image id")
        })
    }

    /// Removes the pointer object `rbd_id.<name>` alone (not the image, not its directory
    /// entry). The caller makes sure the directory does not list `name` under that id.
    pub fn remove_image_id_pointer(&self, name: &str) -> Result<()> {
        const OP: &str = "rados remove image id";
        let oid = pointer_object(name);
        let target = self.spec(&oid);
        let o = cstring(OP, &target, &oid)?;
        // SAFETY: valid ioctx, NUL-terminated oid.
        check(OP, &target, unsafe {
            rados::rados_remove(self.raw(), o.as_ptr())
        })
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_decode_from_their_ceph_encoding() {
        let encoded = |id: &str| [&(id.len() as u32).to_le_bytes()[..], id.as_bytes()].concat();
        assert_eq!(decode_id(&encoded("10a8b2c3d4e5")), Some("10a8b2c3d4e5".into()));
        assert_eq!(decode_id(&encoded("")), Some(String::new()));
        assert_eq!(decode_id(&[5, 0, 0, 0, b'a']), None, "truncated");
        assert_eq!(decode_id(&[1, 0]), None, "no length");
    }
}
