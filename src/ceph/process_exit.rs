//! Ending the process while librados is connected.
//!
//! librados runs its own threads (messenger, timers, finishers) for as long as a cluster
//! handle lives, and the operator keeps its handle for the life of the process. At `exit`, the
//! C++ static objects of libceph-common are destroyed under those threads, which then crash the
//! process (SIGSEGV) after everything it had to do succeeded: a controller that shut down
//! cleanly, or a test binary whose tests all passed, would report a crash. Once a cluster is
//! connected, the process therefore ends with `_exit` and the status `exit` was given, after
//! flushing what Rust and C buffered, skipping only the static destructors.

use std::ffi::{c_int, c_void};
use std::io::Write;
use std::sync::Once;

unsafe extern "C" {
    /// glibc's `on_exit`: like `atexit`, but the handler receives the exit status.
    fn on_exit(handler: extern "C" fn(c_int, *mut c_void), arg: *mut c_void) -> c_int;
}

extern "C" fn end_without_static_destructors(status: c_int, _arg: *mut c_void) {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: fflush(NULL) flushes every C stdio stream; _exit ends the process with the
    // status `exit` was called with and never returns.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        libc::_exit(status);
    }
}

/// Registers the exit handler (once per process). Handlers run in reverse order of
/// registration, and libceph-common registered its destructors when it was loaded, so this one
/// runs before them.
pub(crate) fn end_process_before_ceph_teardown() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: the handler is a plain `extern "C"` function that ignores its argument.
        let r = unsafe { on_exit(end_without_static_destructors, std::ptr::null_mut()) };
        if r != 0 {
            tracing::warn!("could not register the exit handler; the process may crash at exit");
        }
    });
}
