//! The one error type of the Ceph layer: which operation failed, on what, and the errno.

use std::fmt;

/// A failed librados/librbd call.
///
/// Displays as `rbd image create rbd/ns/system_vm1: EEXIST (File exists)`, followed by
/// `: detail` when Ceph (or this layer) said more, e.g. the status string of a mon command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{op} {target}: {} ({}){}",
    errno_name(self.errno),
    errno_description(self.errno),
    DetailSuffix(self.detail.as_deref())
)]
pub struct CephError {
    /// The operation, e.g. `"rbd image create"`.
    pub op: &'static str,
    /// What it was applied to: `pool/namespace/image`, `pool/image@snap`, a pool, a command.
    pub target: String,
    /// The positive errno value (librados/librbd return `-errno`).
    pub errno: i32,
    /// Extra text, e.g. the mon's status string for a failed mon command.
    pub detail: Option<String>,
}

/// Result of the Ceph layer.
pub type Result<T, E = CephError> = std::result::Result<T, E>;

impl CephError {
    /// An error for `op` on `target` from a librados/librbd return code (negative or positive).
    pub fn new(op: &'static str, target: impl Into<String>, code: i64) -> Self {
        let errno = i32::try_from(code.unsigned_abs()).unwrap_or(libc::EIO);
        CephError {
            op,
            target: target.into(),
            errno,
            detail: None,
        }
    }

    /// The same error with a detail message appended.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        self.detail = if detail.is_empty() { None } else { Some(detail) };
        self
    }

    /// An `EINVAL` raised by this layer before calling Ceph (e.g. a name with a NUL byte).
    pub(crate) fn invalid(op: &'static str, target: impl Into<String>, why: impl Into<String>) -> Self {
        CephError::new(op, target, libc::EINVAL.into()).with_detail(why)
    }

    /// The symbolic errno name, e.g. `"ENOENT"`.
    pub fn errno_name(&self) -> &'static str {
        errno_name(self.errno)
    }

    /// `ENOENT`: the pool, namespace, image, snapshot, group or key does not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno == libc::ENOENT
    }

    /// `EEXIST`: something of that name exists already.
    pub fn is_exists(&self) -> bool {
        self.errno == libc::EEXIST
    }

    /// `EBUSY`: held by someone else (a lock, an image with watchers, a protected snapshot).
    pub fn is_busy(&self) -> bool {
        self.errno == libc::EBUSY
    }

    /// `ESHUTDOWN`: this client was blocklisted (Ceph reports it as ESHUTDOWN).
    pub fn is_blocklisted(&self) -> bool {
        self.errno == libc::ESHUTDOWN
    }

    /// `ETIMEDOUT`: the cluster did not answer in time (e.g. mount timeout).
    pub fn is_timeout(&self) -> bool {
        self.errno == libc::ETIMEDOUT
    }
}

struct DetailSuffix<'a>(Option<&'a str>);

impl fmt::Display for DetailSuffix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, ": {d}"),
            None => Ok(()),
        }
    }
}

/// The symbolic name of a (positive) errno value, `"E<n>"` when unknown.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::EPIPE => "EPIPE",
        libc::EDOM => "EDOM",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOLCK => "ENOLCK",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENOMSG => "ENOMSG",
        libc::ENODATA => "ENODATA",
        libc::ETIME => "ETIME",
        libc::ENOLINK => "ENOLINK",
        libc::EPROTO => "EPROTO",
        libc::EBADMSG => "EBADMSG",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::EILSEQ => "EILSEQ",
        libc::EUSERS => "EUSERS",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOBUFS => "ENOBUFS",
        libc::EISCONN => "EISCONN",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESHUTDOWN => "ESHUTDOWN",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        libc::ECANCELED => "ECANCELED",
        libc::EOWNERDEAD => "EOWNERDEAD",
        libc::ENOTRECOVERABLE => "ENOTRECOVERABLE",
        _ => "EUNKNOWN",
    }
}

/// The C library's description of an errno value, e.g. `"File exists"`.
pub fn errno_description(errno: i32) -> String {
    let text = std::io::Error::from_raw_os_error(errno).to_string();
    // std appends " (os error N)"; the errno name already identifies it.
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_operation_target_and_errno() {
        let e = CephError::new("rbd image create", "rbd/ns/system_vm1", -17);
        assert_eq!(
            e.to_string(),
            "rbd image create rbd/ns/system_vm1: EEXIST (File exists)"
        );
        assert!(e.is_exists());
        assert!(!e.is_not_found());
        let e = CephError::new("mon command", "osd blocklist rm", -22).with_detail("bad addr");
        assert_eq!(
            e.to_string(),
            "mon command osd blocklist rm: EINVAL (Invalid argument): bad addr"
        );
        assert_eq!(e.errno_name(), "EINVAL");
    }

    #[test]
    fn positive_and_negative_codes_agree() {
        assert_eq!(CephError::new("x", "y", 2), CephError::new("x", "y", -2));
        assert!(CephError::new("x", "y", -2).is_not_found());
    }
}
