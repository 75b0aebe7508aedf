//! The one error type of the storage half of the controller: what went wrong, in words a user
//! reads in a Kubernetes condition, with a CamelCase reason and whether a retry may help.

use crate::ceph::CephError;

/// A failed storage operation.
///
/// The `Display` text is meant for a condition message; [`StorageError::reason`] for the
/// condition reason; [`StorageError::is_retryable`] tells the controller whether to retry
/// with back-off (`true`) or to wait for a change of the spec or of the cluster (`false`).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The request itself is wrong (a blank disk without size, a relative path, ...).
    #[error("invalid storage request: {0}")]
    InvalidRequest(String),

    /// A disk source (file, URL, RBD image, snapshot, pool, namespace) does not exist.
    #[error("disk source {what} not found: {detail}")]
    SourceNotFound { what: String, detail: String },

    /// A golden source names a snapshot that is not protected: an ordinary snapshot of a VM,
    /// which a clone would pin (its owner could no longer delete it).
    #[error(
        "{what} is not a protected snapshot; golden sources clone only protected snapshots \
         (`rbd snap protect`), so a clone never pins an ordinary snapshot of someone's VM"
    )]
    SourceNotProtected { what: String },

    /// Reading or converting a disk source failed (HTTP error, not an image of the declared
    /// format, qemu-img failure, ...). The temporary image was removed.
    #[error("importing {image} from {from} failed: {detail}")]
    ImportFailed {
        image: String,
        from: String,
        detail: String,
        retryable: bool,
    },

    /// The pool cannot take the data.
    #[error("pool '{pool}' is full: {detail}")]
    PoolFull { pool: String, detail: String },

    /// The RBD data carry the owner key of another Kubernetes object.
    #[error(
        "{what} belongs to another VirtualMachine ({}uid {owner_uid}); nothing was changed. \
         Delete that object or give this one another name",
        owner.as_deref().map(|o| format!("{o}, ")).unwrap_or_default()
    )]
    OwnedByAnotherObject {
        what: String,
        owner_uid: String,
        owner: Option<String>,
    },

    /// The RBD data carry the owner key of a VirtualMachine that was deleted with
    /// `deletionPolicy: Retain`: they are kept for whoever takes them over.
    #[error(
        "{what} holds the disks that VirtualMachine {owner} (uid {owner_uid}) kept when it was \
         deleted with deletionPolicy Retain; nothing was changed. To give them to this VM, remove \
         their owner key (rbd image-meta remove POOL/NAMESPACE/IMAGE _k8s_owner_uid, on each of \
         the VM's images) and it adopts them; otherwise give this VM another name, or remove \
         those images"
    )]
    RetainedByDeletedVm {
        what: String,
        owner_uid: String,
        owner: String,
    },

    /// Something of the VM's RBD names exists but is not a VM this object may use or adopt.
    #[error("{what}: {detail}")]
    NameConflict { what: String, detail: String },

    /// Deleting would break clones made from the VM's snapshots.
    #[error(
        "{image} cannot be deleted: clones depend on its snapshots: {}. Delete or flatten them first",
        children.join(", ")
    )]
    HasDependentClones { image: String, children: Vec<String> },

    /// An image is open elsewhere (a running VM, an earlier import still writing).
    #[error("{image} is in use: {detail}")]
    ImageBusy { image: String, detail: String },

    /// Ceph does not answer (monitors unreachable, this client blocklisted, ...).
    #[error("Ceph is unavailable ({context}): {source}")]
    CephUnavailable {
        context: String,
        #[source]
        source: CephError,
    },

    /// Any other Ceph failure.
    #[error("{context}: {source}")]
    Ceph {
        context: String,
        #[source]
        source: CephError,
    },

    /// A bug or an environment failure of the controller itself (a panicked worker thread).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result of the storage layer.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

impl StorageError {
    /// The condition reason: CamelCase, stable, one per kind of failure.
    pub fn reason(&self) -> &'static str {
        match self {
            StorageError::InvalidRequest(_) => "InvalidSpec",
            StorageError::SourceNotFound { .. } => "SourceNotFound",
            StorageError::SourceNotProtected { .. } => "SourceNotProtected",
            StorageError::ImportFailed { .. } => "ImportFailed",
            StorageError::PoolFull { .. } => "PoolFull",
            StorageError::OwnedByAnotherObject { .. } => "OwnedByAnotherObject",
            StorageError::RetainedByDeletedVm { .. } => "RetainedByDeletedVm",
            StorageError::NameConflict { .. } => "NameConflict",
            StorageError::HasDependentClones { .. } => "HasDependentClones",
            StorageError::ImageBusy { .. } => "ImageBusy",
            StorageError::CephUnavailable { .. } => "CephUnavailable",
            StorageError::Ceph { .. } => "CephError",
            StorageError::Internal(_) => "InternalError",
        }
    }

    /// Whether retrying the same call later (with back-off) may succeed without anyone changing
    /// the spec: true for transient states (Ceph down, image busy, source not there yet, clones
    /// being deleted, space being freed), false when a person must act.
    pub fn is_retryable(&self) -> bool {
        match self {
            StorageError::InvalidRequest(_)
            | StorageError::OwnedByAnotherObject { .. }
            | StorageError::NameConflict { .. } => false,
            StorageError::ImportFailed { retryable, .. } => *retryable,
            // Taken over in Ceph (owner key removed), not in the spec.
            StorageError::RetainedByDeletedVm { .. }
            | StorageError::SourceNotFound { .. }
            | StorageError::SourceNotProtected { .. }
            | StorageError::PoolFull { .. }
            | StorageError::HasDependentClones { .. }
            | StorageError::ImageBusy { .. }
            | StorageError::CephUnavailable { .. }
            | StorageError::Internal(_) => true,
            StorageError::Ceph { source, .. } => !matches!(
                source.errno,
                libc::EINVAL
                    | libc::ENAMETOOLONG
                    | libc::EOPNOTSUPP
                    | libc::ENOSYS
                    | libc::EPERM
                    | libc::EACCES
            ),
        }
    }

    /// Classifies a Ceph failure: unreachable cluster, busy image, full pool, or other.
    pub(crate) fn from_ceph(context: impl Into<String>, source: CephError) -> StorageError {
        let context = context.into();
        match source.errno {
            libc::ETIMEDOUT
            | libc::ESHUTDOWN
            | libc::ENOTCONN
            | libc::ECONNREFUSED
            | libc::ECONNRESET
            | libc::EHOSTUNREACH
            | libc::ENETUNREACH => StorageError::CephUnavailable { context, source },
            libc::EROFS => StorageError::ImageBusy {
                image: source.target.clone(),
                detail: format!(
                    "{context}: another client holds its exclusive lock (the VM runs, or a node \
                     agent fenced it): {source}"
                ),
            },
            libc::EBUSY => StorageError::ImageBusy {
                image: source.target.clone(),
                detail: format!(
                    "{context}: another client has it open or locked (a running VM, or an earlier \
                     operation still finishing): {source}"
                ),
            },
            libc::ENOSPC | libc::EDQUOT => StorageError::PoolFull {
                pool: source.target.split('/').next().unwrap_or_default().to_string(),
                detail: format!("{context}: {source}"),
            },
            _ => StorageError::Ceph { context, source },
        }
    }

    pub(crate) fn internal(what: impl std::fmt::Display) -> StorageError {
        StorageError::Internal(what.to_string())
    }
}

/// `64 MiB (67108864 bytes)` style sizes for messages.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64;
    let mut unit = "";
    for u in UNITS {
        value /= 1024.0;
        unit = u;
        if value < 1024.0 {
            break;
        }
    }
    let shown = if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    };
    format!("{shown} {unit} ({bytes} bytes)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_and_retryability() {
        let busy = StorageError::from_ceph("removing", CephError::new("rbd image remove", "rbd/ns/x", -16));
        assert_eq!(busy.reason(), "ImageBusy");
        assert!(busy.is_retryable());
        let down = StorageError::from_ceph("connect", CephError::new("rados connect", "client.admin", -110));
        assert_eq!(down.reason(), "CephUnavailable");
        assert!(down.is_retryable());
        let full = StorageError::from_ceph("writing", CephError::new("rbd image write", "rbd/ns/x", -122));
        assert_eq!(full.reason(), "PoolFull");
        assert!(full.to_string().starts_with("pool 'rbd' is full"), "{full}");
        let inval = StorageError::from_ceph("x", CephError::new("rbd image create", "rbd/x", -22));
        assert_eq!(inval.reason(), "CephError");
        assert!(!inval.is_retryable());
        let owned = StorageError::OwnedByAnotherObject {
            what: "rbd/ns/system_vm1".into(),
            owner_uid: "u2".into(),
            owner: Some("ns/vm1".into()),
        };
        assert_eq!(owned.reason(), "OwnedByAnotherObject");
        assert!(!owned.is_retryable());
        assert!(owned.to_string().contains("(ns/vm1, uid u2)"), "{owned}");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(64 << 20), "64 MiB (67108864 bytes)");
        assert_eq!(human_bytes(1536 << 20), "1.5 GiB (1610612736 bytes)");
    }
}
