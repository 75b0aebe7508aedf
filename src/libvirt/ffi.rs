//! The only raw libvirt calls of the layer, for two `virt` 0.5.0 functions that are unsound:
//!
//! - `Secret::usage_id()` passes the string of virSecretGetUsageID to free(), but libvirt owns
//!   it (it lives in the virSecret object): a double free that aborts the process.
//! - `Secret::value()` never frees (nor wipes) the buffer virSecretGetValue returns.
//!
//! and two more: virDomainAbortJob, which `virt` 0.5.0 does not bind, and virDomainGetJobStats,
//! whose `virt` binding builds a Vec from the NULL pointer libvirt returns with no statistics
//! (undefined behaviour, caught as a panic in debug builds).

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

/// Aborts the domain's current job (a migration): virDomainAbortJob, which `virt` 0.5.0 does
/// not bind.
pub(super) fn abort_job(domain: &virt::domain::Domain) -> Result<(), Error> {
    // SAFETY: `domain.as_ptr()` is a valid virDomainPtr while `domain` is borrowed, and
    // virDomainAbortJob only reads it; it returns -1 on error, with the error set per thread.
    let rc = unsafe { sys::virDomainAbortJob(domain.as_ptr()) };
    if rc < 0 {
        return Err(Error::last_error());
    }
    Ok(())
}

/// From the statistics of the domain's last completed job (a migration, on either side): the
/// guest's downtime in ms and the bytes sent, each when libvirt recorded it.
pub(super) fn completed_job_stats(
    domain: &virt::domain::Domain,
) -> Result<(Option<u64>, Option<u64>), Error> {
    let mut job_type: std::os::raw::c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut count: std::os::raw::c_int = 0;
    // SAFETY: `domain.as_ptr()` is a valid virDomainPtr while `domain` is borrowed; the three
    // out-pointers are valid locals. On success libvirt sets `params` to an array of `count`
    // typed parameters it allocated (or NULL with `count` 0), which the caller frees with
    // virTypedParamsFree, done once below after the values are copied out.
    let rc = unsafe {
        sys::virDomainGetJobStats(
            domain.as_ptr(),
            &mut job_type,
            &mut params,
            &mut count,
            sys::VIR_DOMAIN_JOB_STATS_COMPLETED,
        )
    };
    if rc < 0 {
        return Err(Error::last_error());
    }
    let read = |name: &CStr| {
        let mut value: std::os::raw::c_ulonglong = 0;
        // SAFETY: `params`/`count` are what libvirt returned (NULL/0 is accepted and finds
        // nothing); `name` is NUL-terminated; `value` is a valid out-pointer. Returns 1 when
        // found, 0 when absent, -1 on a type mismatch.
        let found = unsafe { sys::virTypedParamsGetULLong(params, count, name.as_ptr(), &mut value) };
        (found == 1).then_some(value)
    };
    let downtime = read(sys::VIR_DOMAIN_JOB_DOWNTIME);
    let bytes =
        read(sys::VIR_DOMAIN_JOB_DATA_PROCESSED).or_else(|| read(sys::VIR_DOMAIN_JOB_MEMORY_PROCESSED));
    // SAFETY: frees the array libvirt allocated above, exactly once; NULL is accepted.
    unsafe { sys::virTypedParamsFree(params, count) };
    Ok((downtime, bytes))
}
