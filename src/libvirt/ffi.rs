//! The only raw libvirt calls of the layer, for two `virt` 0.5.0 functions that are unsound:
//!
//! - `Secret::usage_id()` passes the string of virSecretGetUsageID to free(), but libvirt owns
//!   it (it lives in the virSecret object): a double free that aborts the process.
//! - `Secret::value()` never frees (nor wipes) the buffer virSecretGetValue returns.

use std::ffi::CStr;
use std::os::raw::c_void;

use virt::error::Error;
use virt::secret::Secret;
use virt::sys;

/// The usage ID of a secret (e.g. the Ceph usage name), copied.
pub(super) fn secret_usage_id(secret: &Secret) -> Result<String, Error> {
    // SAFETY: `secret.as_ptr()` is a valid virSecretPtr for as long as `secret` is borrowed,
    // and `secret` outlives this call. virSecretGetUsageID returns either NULL (error) or a
    // NUL-terminated string owned by that virSecret object, valid while the object lives; it
    // is copied into a String here and never freed by us.
    unsafe {
        let ptr = sys::virSecretGetUsageID(secret.as_ptr());
        if ptr.is_null() {
            return Err(Error::last_error());
        }
        Ok(CStr::from_ptr(ptr).to_string_lossy().into_owned())
    }
}

/// The raw value of a secret, copied; libvirt's buffer is wiped and freed.
pub(super) fn secret_value(secret: &Secret) -> Result<Vec<u8>, Error> {
    let mut size: usize = 0;
    // SAFETY: `secret.as_ptr()` is a valid virSecretPtr while `secret` is borrowed and `size`
    // is a valid out-pointer. On success virSecretGetValue returns a buffer of exactly `size`
    // bytes allocated with malloc that the caller owns and must free(); NULL means an error.
    // The buffer is read only within those `size` bytes, overwritten, then freed once.
    unsafe {
        let ptr = sys::virSecretGetValue(secret.as_ptr(), &mut size, 0);
        if ptr.is_null() {
            return Err(Error::last_error());
        }
        let value = std::slice::from_raw_parts(ptr, size).to_vec();
        std::ptr::write_bytes(ptr, 0, size);
        libc::free(ptr as *mut c_void);
        Ok(value)
    }
}
