//! Helpers shared by the wrappers: C strings in and out, return-code checks, and the RAII
//! holder of `rbd_image_options_t`. The raw bindings are `rados_sys` and `rbd_sys`.

use std::ffi::{CStr, CString, c_char, c_int};
use std::ptr;

use super::error::{CephError, Result};

pub(crate) use rados_sys as rados;
pub(crate) use rbd_sys as rbd;

/// How often a "buffer too small, here is the size" (`ERANGE`) call is retried before giving
/// up; the size only changes between tries if another client changes the list meanwhile.
pub(crate) const MAX_ERANGE_RETRIES: usize = 16;

/// Calls a librbd or librados function that fills a buffer of `T` (entries or bytes) and,
/// when the buffer is too small, answers `-ERANGE` with the size it needs in the in/out count:
/// the buffer grows to that size (at least doubling) until the answer fits, at most
/// [`MAX_ERANGE_RETRIES`] times. Returns the last return code, for the caller to check (some
/// calls have codes of their own, such as `ENOENT`), the buffer, and the count filled (at most
/// the buffer's length).
pub(crate) fn sized<T: Clone>(
    op: &'static str,
    target: &str,
    empty: T,
    first_size: usize,
    mut call: impl FnMut(&mut [T], &mut usize) -> c_int,
) -> Result<(c_int, Vec<T>, usize)> {
    let mut size = first_size;
    for _ in 0..MAX_ERANGE_RETRIES {
        let mut buf = vec![empty.clone(); size];
        let mut n = buf.len();
        let r = call(&mut buf, &mut n);
        if r != -libc::ERANGE {
            return Ok((r, buf, n.min(size)));
        }
        size = n.max(size * 2);
    }
    Err(CephError::new(op, target, -i64::from(libc::ERANGE)))
}

/// A C string for a Ceph call, or `EINVAL` naming `op`/`target` if `s` holds a NUL byte.
pub(crate) fn cstring(op: &'static str, target: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| CephError::invalid(op, target, format!("{s:?} contains a NUL byte")))
}

/// `Ok(r)` for `r >= 0`, the error for a negative librados/librbd return code.
pub(crate) fn check(op: &'static str, target: &str, r: c_int) -> Result<c_int> {
    if r < 0 {
        Err(CephError::new(op, target, r.into()))
    } else {
        Ok(r)
    }
}

/// Like [`check`] for the `ssize_t` returns of read/write calls.
pub(crate) fn check_isize(op: &'static str, target: &str, r: isize) -> Result<usize> {
    usize::try_from(r).map_err(|_| CephError::new(op, target, r as i64))
}

/// Copies a NUL-terminated C string (lossy UTF-8); a null pointer gives `""`.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string valid for the duration of the call.
pub(crate) unsafe fn string_from_ptr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated per this function's contract.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The string up to the first NUL of `buf` (all of it if there is none).
pub(crate) fn string_from_buf(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Splits a buffer of consecutive NUL-terminated strings (librbd's name lists); empty entries
/// (the zero padding after the last name) are dropped.
pub(crate) fn split_nul_list(buf: &[u8]) -> Vec<String> {
    buf.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Owns an `rbd_image_options_t`, destroyed on drop.
pub(crate) struct RawImageOptions(rbd::rbd_image_options_t);

impl RawImageOptions {
    pub(crate) fn new() -> Self {
        let mut opts: rbd::rbd_image_options_t = ptr::null_mut();
        // SAFETY: `opts` is a valid out-pointer; librbd allocates the options object.
        unsafe { rbd::rbd_image_options_create(&mut opts) };
        RawImageOptions(opts)
    }

    pub(crate) fn raw(&self) -> rbd::rbd_image_options_t {
        self.0
    }

    pub(crate) fn set_u64(&mut self, op: &'static str, target: &str, key: u32, value: u64) -> Result<()> {
        // SAFETY: `self.0` is a live options object; key is one of RBD_IMAGE_OPTION_*.
        let r = unsafe { rbd::rbd_image_options_set_uint64(self.0, key as c_int, value) };
        check(op, target, r).map(drop)
    }

    pub(crate) fn set_string(&mut self, op: &'static str, target: &str, key: u32, value: &str) -> Result<()> {
        let value = cstring(op, target, value)?;
        // SAFETY: `self.0` is a live options object; librbd copies the string.
        let r = unsafe { rbd::rbd_image_options_set_string(self.0, key as c_int, value.as_ptr()) };
        check(op, target, r).map(drop)
    }
}

impl Drop for RawImageOptions {
    fn drop(&mut self) {
        // SAFETY: created by rbd_image_options_create and destroyed exactly once here.
        unsafe { rbd::rbd_image_options_destroy(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_lists_split_and_drop_padding() {
        assert_eq!(
            split_nul_list(b"a\0bc\0\0\0"),
            vec!["a".to_string(), "bc".to_string()]
        );
        assert!(split_nul_list(b"\0\0").is_empty());
        assert_eq!(string_from_buf(b"abc\0def"), "abc");
        assert_eq!(string_from_buf(b"abc"), "abc");
    }

    #[test]
    fn nul_in_names_is_einval() {
        let e = cstring("rbd image open", "rbd/x", "a\0b").unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
    }
}
