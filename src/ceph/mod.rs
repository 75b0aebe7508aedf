//! Safe layer over librados/librbd: the only module with unsafe FFI for Ceph.
//!
//! A generic layer (no naming policy of the operator lives here), written for Ceph 16 Pacific's
//! C API:
//!
//! - [`Cluster`]: a connection (`rados_t`), `Send + Sync`, cheap to clone; mon commands and the
//!   OSD blocklist. [`Cluster::io_context`] gives an [`IoCtx`] on a pool and RBD namespace.
//! - [`IoCtx`]: image create/open/remove/list/rename, clones, groups and group snapshots, RBD
//!   namespaces. `Send + Sync`, cheap to clone.
//! - [`Image`]: an open image (closed on drop), `Send`: size/stat/resize, read/write/flush,
//!   metadata, snapshots, deep copy, flatten, parent/children, managed and advisory locks.
//! - the `rbd_id.<name>` pointers an interrupted rename leaves ([`IoCtx::image_id_pointer`]);
//! - advisory locks on plain RADOS objects ([`IoCtx::object_lock_exclusive`]).
//!
//! Every failure is a [`CephError`] naming the operation, the target
//! (`pool/namespace/image@snap`) and the errno.
//!
//! Not in Pacific's C API (so not here): snapshot purge (see [`Image::snap_purge`], a loop),
//! image import (stream [`Image::write_at`]), group snapshot info, clone from a group snapshot.
//!
//! Pacific behaviours this layer documents or smooths over:
//! - managed-lock owners are client addresses (`127.0.0.1:0/123`), not `client.N` names;
//! - breaking a lock (managed or advisory) blocklists the holder by default
//!   (`rbd_blocklist_on_break_lock`), so its later calls fail with `ESHUTDOWN`;
//! - a client that took the managed lock with [`Image::lock_acquire`] keeps it: others get
//!   `EROFS` at once;
//! - librbd reports a missing group as empty (listings) or success (removal): this layer
//!   returns `ENOENT` instead;
//! - `osd blocklist ls` prints two JSON lists (addresses, then ranges): see
//!   [`Cluster::blocklist_list`];
//! - a read at or past the end is `EINVAL` in librbd: [`Image::read_at`] returns 0 there;
//! - a null string passed where librbd builds a `std::string` throws a C++ exception that
//!   aborts the process: every string argument here is a real C string;
//! - librados's threads outlive `main` and crash on the library's static destructors: once a
//!   cluster is connected, the process ends with `_exit` (see `process_exit.rs`).
//!
//! Every `unsafe` block of the crate's Ceph access lives in this module's files, each with the
//! reason it is sound; handles are freed on drop and every librbd list is released with its
//! matching `*_cleanup`/`*_end` call.

mod clone;
mod cluster;
mod error;
mod ffi;
mod group;
mod image;
mod image_id;
mod lock;
mod metadata;
mod object_lock;
mod process_exit;
mod snapshot;

pub use clone::{LinkedImage, ParentInfo};
pub use cluster::{Cluster, ClusterConfig, IoCtx};
pub use error::{CephError, Result, errno_description, errno_name};
pub use group::{GroupImage, GroupImageState, GroupRef, GroupSnap, GroupSnapState};
pub use image::{CloneFormat, Features, Image, ImageInfo, ImageName, ImageOptions};
pub use lock::{BlocklistEntry, LockMode, LockOwners, Locker, Lockers};
pub use snapshot::{SnapInfo, SnapNamespace};
