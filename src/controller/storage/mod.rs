//! The storage half of the VM controller: everything it does in Ceph for a VirtualMachine.
//!
//! Layout (SEAPATH vm_manager's, see `crate::naming`): in the VM's RBD namespace, one group
//! named like the VM holding `system_<vm>` and `data_<vm>_<i>`; the VM's metadata (`vm_name`,
//! `_base_xml`, `xml`, internal `_*` keys, user keys) on the system image, plus the operator's
//! owner keys ([`META_OWNER_UID`](crate::naming::META_OWNER_UID),
//! [`META_OWNER`](crate::naming::META_OWNER)) on every image it owns.
//!
//! Entry points (async; librbd work runs in `spawn_blocking`):
//! - [`ensure_storage`]: create, resume, adopt; idempotent (a second call writes nothing).
//! - [`observe_storage`]: read-only look (no Ceph write at all).
//! - [`delete_storage`]: remove snapshots, images, group, if this object owns them.
//! - [`read_metadata`]: the system image's metadata.
//! - [`stored_domain_uuid`]: the UUID the stored `xml` runs (kept when a VM is adopted).
//! - [`dependent_clones`]: clones that keep a VM from being deleted.
//! - [`monitors`]: the monitors' addresses for the domain XML.
//!
//! # Crash safety
//! The controller may die at any instant and re-run the same call:
//! - a disk is built under a temporary name `tmp_<final>_<uid>` and renamed to its final name
//!   (atomic) only when complete and carrying the owner keys: a half import is never visible as
//!   a VM image. Each call first removes the temporary images (and download scratch files) of
//!   its own UID, and only those.
//! - the group is created and filled after the images exist; metadata is compared and only
//!   differing keys are written, owner keys first and `vm_name` last.
//! - delete removes data images before the system image (whose owner key is the VM's), so an
//!   interrupted delete still knows what is its own.
//!
//! # Ownership
//! The system image's [`META_OWNER_UID`](crate::naming::META_OWNER_UID) says who owns the
//! VM: the same UID continues; another UID is refused ([`StorageError::OwnedByAnotherObject`])
//! before anything is written; no owner but `vm_name` equal to the VM name is a VM made by
//! SEAPATH's tools: it is adopted (owner keys written, data untouched,
//! [`StorageObservation::adopted`] set). A data image or group member without owner key is
//! claimed only as part of such a VM (a member of its group); anything else named like the VM's
//! images is a [`StorageError::NameConflict`].
//!
//! # Pool space
//! Before an import writes anything, the bytes it may write (allocated size of a raw file,
//! qemu-img's `actual-size` of a qcow2, the Content-Length of a download) are compared with
//! what the pool can take: `max_avail` from the mon command `df` (reported only when a
//! ceph-mgr runs) and the pool quota from `osd dump`; when neither is known the check passes.
//! Thin sources (blank, golden clone, deep copy) are not checked.
//!
//! # Sources
//! `blank`: created at its size. `golden`: format-2 layered clone of the snapshot
//! (copy-on-write, near-instant, no flatten). `rbd`: deep copy. A clone of another VM's disk
//! ([`ResolvedSource::CloneOf`]): deep copy of the image, or of the image opened at the
//! snapshot (the copy gets the data of that snapshot and the snapshots up to it, as
//! vm_manager's clone keeps snapshots); it never links to the source, so the source can be
//! deleted later. Metadata copied along by librbd (deep copy and clone copy it) is dropped but
//! for librbd's own `conf_*` keys. `path` and `http`: see `import.rs` (qcow2 through qemu-img's
//! rbd driver, raw streamed sparse). Sizes only grow; a requested size smaller than the image
//! gives a warning, not an error.

mod error;
mod http;
mod import;
mod plan;
mod quantity;
mod rbd;
mod rename_repair;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::join_all;
use tokio::sync::mpsc;

pub use error::{Result, StorageError};
pub use import::{QEMU_IMG, qemu_img_convert_args, qemu_img_info_args, qemu_rbd_target};
pub use plan::parse_mon_dump;
pub use quantity::parse_quantity;

use crate::api::{ImageFormat, ImageStatus, ImportProgress, StorageStatus};
use crate::ceph::{Cluster, IoCtx};
use crate::naming::{NamespaceMap, VmNames};
use plan::Ownership;

/// What the storage layer needs to reach Ceph.
#[derive(Clone, Debug)]
pub struct StorageContext {
    /// A connected cluster.
    pub cluster: Cluster,
    /// The pool the VMs live in (`rbd` with SEAPATH).
    pub pool: String,
    /// Kubernetes namespace -> RBD namespace.
    pub namespace_map: NamespaceMap,
    /// The ceph.conf qemu-img's rbd driver reads.
    pub ceph_conf_path: PathBuf,
    /// The cephx id (without `client.`) qemu-img connects as.
    pub ceph_client_id: String,
    /// The keyring qemu-img's rbd driver reads (`CEPH_KEYRING`), when the controller was given
    /// one apart from its ceph.conf.
    pub ceph_keyring: Option<PathBuf>,
    /// Where qcow2 downloads are kept until converted (default: the system's temp directory).
    pub scratch_dir: PathBuf,
}

impl StorageContext {
    pub fn new(
        cluster: Cluster,
        pool: impl Into<String>,
        namespace_map: NamespaceMap,
        ceph_conf_path: impl Into<PathBuf>,
        ceph_client_id: impl Into<String>,
    ) -> StorageContext {
        StorageContext {
            cluster,
            pool: pool.into(),
            namespace_map,
            ceph_conf_path: ceph_conf_path.into(),
            ceph_client_id: ceph_client_id.into(),
            ceph_keyring: None,
            scratch_dir: std::env::temp_dir(),
        }
    }

    /// The same context, with qemu-img reading `keyring` for its key.
    pub fn with_keyring(self, keyring: Option<PathBuf>) -> StorageContext {
        StorageContext {
            ceph_keyring: keyring,
            ..self
        }
    }

    /// The RBD names of a VM of a Kubernetes namespace.
    pub fn vm_names(&self, kube_namespace: &str, name: &str) -> VmNames {
        VmNames::new(&self.namespace_map.rbd_namespace(kube_namespace), name)
    }
}

/// Where a disk's content comes from, with every default resolved by the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolvedSource {
    /// An empty disk (needs a size).
    Blank,
    /// A qcow2 or raw image over HTTP(S).
    Http { url: String, format: ImageFormat },
    /// A qcow2 or raw image file readable by the controller (absolute path).
    Path { path: PathBuf, format: ImageFormat },
    /// An RBD image, deep-copied.
    Rbd {
        pool: String,
        namespace: String,
        image: String,
    },
    /// A golden image snapshot, cloned copy-on-write.
    Golden {
        pool: String,
        namespace: String,
        image: String,
        snapshot: String,
    },
    /// Another VM's image (same disk index), deep-copied at its head or at a snapshot.
    CloneOf {
        pool: String,
        namespace: String,
        image: String,
        snapshot: Option<String>,
    },
    /// A disk built earlier whose source is not available any more (a clone's source VM was
    /// deleted): fine while the image exists; if it is gone it cannot be rebuilt.
    Built {
        /// Why the source cannot be used.
        unavailable: String,
    },
}

/// One disk of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRequest {
    pub source: ResolvedSource,
    /// Requested size in bytes; `None`: the source's size.
    pub size_bytes: Option<u64>,
}

/// Everything [`ensure_storage`] needs for one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmStorageRequest {
    pub kube_namespace: String,
    /// The VM's name in RBD (group, images, `vm_name`): the VirtualMachine's storage name.
    pub name: String,
    /// The VirtualMachine's own name (for the `_k8s_owner` key people read).
    pub object_name: String,
    /// `metadata.uid` of the VirtualMachine: the owner key.
    pub uid: String,
    /// The system disk first, then the data disks.
    pub disks: Vec<DiskRequest>,
    /// The user's base XML (`_base_xml`).
    pub base_xml: String,
    /// The generated XML (`xml`).
    pub rendered_xml: String,
    /// User metadata (letters and digits keys).
    pub metadata: BTreeMap<String, String>,
    /// vm_manager internal keys computed by the controller from what the spec sets
    /// (`_stop_timeout`, `_pinned_host`, ...). `_base_xml`, `_additional_disks` and the owner keys
    /// are written by this layer. On an existing system image a key is written only when its
    /// value differs from what vm_manager reads there (an absent key is vm_manager's default).
    pub internal: BTreeMap<String, String>,
    /// vm_manager keys written only on a system image this call creates: the operator's
    /// defaults for what the spec leaves unset (`_stop_timeout`), so that vm_manager agrees with
    /// the operator on a VM the operator made, while an adopted VM keeps its own.
    pub creation_defaults: BTreeMap<String, String>,
}

/// One image as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageObservation {
    pub name: String,
    pub size_bytes: u64,
    /// `pool/namespace/image@snapshot` of a layered clone's parent.
    pub parent: Option<String>,
}

/// The VM's storage as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageObservation {
    pub pool: String,
    /// RBD namespace ("" = default).
    pub namespace: String,
    pub group: String,
    /// System image first, then data images in order (then any other group member).
    pub images: Vec<ImageObservation>,
    /// This call adopted a VM made by SEAPATH's tools.
    pub adopted: bool,
    /// Things the user should know (requested size smaller than an image, extra images, ...).
    pub warnings: Vec<String>,
    /// The owner key on the system image ([`observe_storage`] only; [`ensure_storage`] sets it
    /// to the request's UID).
    pub owner_uid: Option<String>,
    /// What this call changed in Ceph, for events and logs (empty: nothing was written).
    pub changes: Vec<String>,
}

impl StorageObservation {
    /// The `status.storage` of the VirtualMachine.
    pub fn to_status(&self) -> StorageStatus {
        StorageStatus {
            pool: self.pool.clone(),
            namespace: self.namespace.clone(),
            group: self.group.clone(),
            images: self
                .images
                .iter()
                .map(|i| ImageStatus {
                    name: i.name.clone(),
                    size_bytes: i64::try_from(i.size_bytes).unwrap_or(i64::MAX),
                    parent: i.parent.clone(),
                })
                .collect(),
        }
    }
}

/// What [`delete_storage`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Nothing of the VM exists (never created, or already deleted).
    Absent,
    /// Removed these images (and their snapshots, and the group).
    Deleted {
        images: Vec<String>,
        snapshots: usize,
        group_removed: bool,
        /// Things left in place because they are not this object's.
        kept: Vec<String>,
    },
    /// The data exist but this object does not own them (not adopted, or another object's):
    /// nothing was touched.
    NotOwned {
        owner_uid: Option<String>,
        owner: Option<String>,
    },
}

/// Runs blocking Ceph work off the async threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::internal(format!("storage worker thread failed: {e}")))?
}

/// Tells running raw imports to stop when the call is dropped (the controller gave up on it).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Drives `work` while passing its progress reports to `on_progress` on this task.
async fn with_progress<T>(
    mut rx: mpsc::UnboundedReceiver<ImportProgress>,
    work: impl Future<Output = T>,
    on_progress: impl Fn(ImportProgress),
) -> T {
    tokio::pin!(work);
    loop {
        tokio::select! {
            biased;
            Some(p) = rx.recv() => on_progress(p),
            out = &mut work => {
                while let Ok(p) = rx.try_recv() {
                    on_progress(p);
                }
                return out;
            }
        }
    }
}

/// Makes the VM's RBD storage match the request: creates what is missing, resumes what an
/// earlier run left, adopts a vm_manager VM, grows disks, fills the group, writes metadata.
///
/// `on_progress` receives import progress (at most about once a second per image).
pub async fn ensure_storage(
    ctx: &StorageContext,
    req: &VmStorageRequest,
    on_progress: impl Fn(ImportProgress) + Send + Sync,
) -> Result<StorageObservation> {
    plan::validate_request(req)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    with_progress(rx, ensure_inner(ctx, req, tx, cancel.0.clone()), on_progress).await
}

async fn ensure_inner(
    ctx: &StorageContext,
    req: &VmStorageRequest,
    tx: mpsc::UnboundedSender<ImportProgress>,
    cancel: Arc<AtomicBool>,
) -> Result<StorageObservation> {
    let names = ctx.vm_names(&req.kube_namespace, &req.name);
    let uid_key = plan::uid_key(&req.uid);
    let shared = Arc::new(req.clone());

    let prepared = {
        let (cluster, pool, names, req) = (
            ctx.cluster.clone(),
            ctx.pool.clone(),
            names.clone(),
            shared.clone(),
        );
        blocking(move || rbd::prepare(&cluster, &pool, &names, &req)).await?
    };
    import::remove_own_scratch_files(&ctx.scratch_dir, &uid_key).await;
    let mut changes = prepared.changes;
    let mut warnings = Vec::new();

    let final_names = names.images(req.disks.len() - 1);
    let existing = prepared.existing.clone();
    let disks = req.disks.iter().enumerate().map(|(index, disk)| {
        ensure_disk(
            ctx,
            &prepared.io,
            DiskJob {
                index,
                disk,
                final_name: &final_names[index],
                existing: existing[index].clone(),
                uid_key: &uid_key,
                req: shared.clone(),
            },
            tx.clone(),
            cancel.clone(),
        )
    });
    let mut first_error = None;
    let mut known = rbd::Known {
        group: prepared.group,
        created: Vec::new(),
        system_metadata: prepared.system_metadata,
        observed: prepared.existing,
    };
    for (index, outcome) in join_all(disks).await.into_iter().enumerate() {
        match outcome {
            Ok(done) => {
                changes.extend(done.changes);
                warnings.extend(done.warning);
                if let Some(created) = done.created {
                    known.created.push(created.observation.name.clone());
                    if index == 0 {
                        known.system_metadata = Some(created.metadata);
                    }
                    known.observed[index] = Some(created.observation);
                } else if let (Some(size), Some(seen)) = (done.grown_to, known.observed[index].as_mut()) {
                    seen.size_bytes = size;
                }
            }
            Err(e) => {
                tracing::warn!(vm = %req.name, disk = index, error = %e, "disk not ready");
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }

    let finalized = {
        let (io, names, req) = (prepared.io.clone(), names.clone(), shared.clone());
        blocking(move || rbd::finalize(&io, &names, &req, known)).await?
    };
    changes.extend(finalized.changes);
    warnings.extend(finalized.warnings);
    for change in &changes {
        tracing::info!(vm = %req.name, namespace = %req.kube_namespace, "{change}");
    }
    Ok(StorageObservation {
        pool: ctx.pool.clone(),
        namespace: names.rbd_namespace.clone(),
        group: names.group(),
        images: finalized.images,
        adopted: prepared.ownership == Ownership::Adopt,
        warnings,
        owner_uid: Some(req.uid.clone()),
        changes,
    })
}

struct DiskJob<'a> {
    index: usize,
    disk: &'a DiskRequest,
    final_name: &'a str,
    existing: Option<ImageObservation>,
    uid_key: &'a str,
    req: Arc<VmStorageRequest>,
}

struct DiskDone {
    changes: Vec<String>,
    warning: Option<String>,
    /// The image this call built and renamed into place.
    created: Option<rbd::FinishedTemp>,
    /// The new size of an existing image this call grew.
    grown_to: Option<u64>,
}

/// One disk: grow it if it exists, else build it under its temporary name and rename it.
async fn ensure_disk(
    ctx: &StorageContext,
    io: &IoCtx,
    job: DiskJob<'_>,
    tx: mpsc::UnboundedSender<ImportProgress>,
    cancel: Arc<AtomicBool>,
) -> Result<DiskDone> {
    if let Some(existing) = &job.existing {
        return match plan::size_action(job.disk.size_bytes, existing.size_bytes) {
            plan::SizeAction::Keep => Ok(DiskDone {
                changes: Vec::new(),
                warning: None,
                created: None,
                grown_to: None,
            }),
            plan::SizeAction::TooSmall { requested, actual } => Ok(DiskDone {
                changes: Vec::new(),
                warning: Some(plan::too_small_warning(job.final_name, requested, actual)),
                created: None,
                grown_to: None,
            }),
            plan::SizeAction::Grow(to) => {
                let (io, name) = (io.clone(), job.final_name.to_string());
                blocking(move || rbd::grow(&io, &name, to)).await?;
                Ok(DiskDone {
                    changes: vec![format!("grew {} to {to} bytes", job.final_name)],
                    warning: None,
                    created: None,
                    grown_to: Some(to),
                })
            }
        };
    }

    let tmp = plan::temp_image_name(job.final_name, job.uid_key);
    let built = build_temp(ctx, io, &job, &tmp, tx, cancel).await;
    let finished = match built {
        Ok(how) => {
            let (io, tmp, final_name) = (io.clone(), tmp.clone(), job.final_name.to_string());
            // The system image gets all of the VM's metadata before it appears under its name.
            let metadata = if job.index == 0 {
                plan::desired_metadata(&job.req)
            } else {
                plan::owner_metadata(&job.req).to_vec()
            };
            let size = job.disk.size_bytes;
            blocking(move || rbd::finish_temp(&io, &tmp, &final_name, &metadata, size))
                .await
                .map(|mut finished| DiskDone {
                    changes: vec![format!(
                        "created {} ({how}, {} bytes)",
                        job.final_name, finished.observation.size_bytes
                    )],
                    warning: finished.warning.take(),
                    created: Some(finished),
                    grown_to: None,
                })
        }
        Err(e) => Err(e),
    };
    if finished.is_err() {
        let (io2, tmp2) = (io.clone(), tmp.clone());
        if let Err(e) = blocking(move || rbd::remove_temp(&io2, &tmp2)).await {
            tracing::warn!(image = %io.spec(&tmp), error = %e, "cannot remove the temporary image now; the next run will");
        }
    }
    finished
}

/// Builds the disk's content under `tmp`; returns how, for the change log.
async fn build_temp(
    ctx: &StorageContext,
    io: &IoCtx,
    job: &DiskJob<'_>,
    tmp: &str,
    tx: mpsc::UnboundedSender<ImportProgress>,
    cancel: Arc<AtomicBool>,
) -> Result<String> {
    let (io_c, tmp_c) = (io.clone(), tmp.to_string());
    match &job.disk.source {
        ResolvedSource::Blank => {
            let size = job.disk.size_bytes.unwrap_or_default();
            blocking(move || rbd::create_blank(&io_c, &tmp_c, size)).await?;
            Ok("blank".to_string())
        }
        ResolvedSource::Golden {
            pool,
            namespace,
            image,
            snapshot,
        } => {
            let cluster = ctx.cluster.clone();
            let src = (pool.clone(), namespace.clone(), image.clone(), snapshot.clone());
            blocking(move || rbd::clone_golden(&cluster, (&src.0, &src.1, &src.2, &src.3), &io_c, &tmp_c))
                .await?;
            Ok(format!(
                "clone of {}",
                plan::parent_spec(pool, namespace, image, snapshot)
            ))
        }
        ResolvedSource::Rbd {
            pool,
            namespace,
            image,
        } => {
            let cluster = ctx.cluster.clone();
            let src = (pool.clone(), namespace.clone(), image.clone());
            blocking(move || rbd::deep_copy_from(&cluster, (&src.0, &src.1, &src.2, None), &io_c, &tmp_c))
                .await?;
            Ok(format!("copy of {pool}/{namespace}/{image}"))
        }
        ResolvedSource::CloneOf {
            pool,
            namespace,
            image,
            snapshot,
        } => {
            let cluster = ctx.cluster.clone();
            let src = (pool.clone(), namespace.clone(), image.clone(), snapshot.clone());
            blocking(move || {
                rbd::deep_copy_from(
                    &cluster,
                    (&src.0, &src.1, &src.2, src.3.as_deref()),
                    &io_c,
                    &tmp_c,
                )?;
                // A copy at a snapshot (a restore into a new VM) starts its own history: the
                // source's older snapshots it brought along are not this VM's to restore.
                if src.3.is_some() {
                    rbd::remove_copied_snapshots(&io_c, &tmp_c)?;
                }
                Ok(())
            })
            .await?;
            Ok(match snapshot {
                Some(s) => format!("copy of {}", plan::parent_spec(pool, namespace, image, s)),
                None => format!("copy of {pool}/{namespace}/{image}"),
            })
        }
        ResolvedSource::Built { unavailable } => Err(StorageError::SourceNotFound {
            what: format!("image {}", job.final_name),
            detail: format!("the disk is gone and cannot be rebuilt: {unavailable}"),
        }),
        ResolvedSource::Path { path, format } => {
            let target = import::Target {
                ctx,
                io: io.clone(),
                tmp: tmp.to_string(),
                image: job.final_name.to_string(),
                cancel,
            };
            let mut progress = import::Progress::new(tx, job.final_name);
            import::import_path(&target, path, *format, &mut progress).await?;
            Ok(format!("imported from {}", path.display()))
        }
        ResolvedSource::Http { url, format } => {
            let target = import::Target {
                ctx,
                io: io.clone(),
                tmp: tmp.to_string(),
                image: job.final_name.to_string(),
                cancel,
            };
            let scratch = ctx
                .scratch_dir
                .join(plan::scratch_file_name(job.uid_key, job.index));
            let mut progress = import::Progress::new(tx, job.final_name);
            import::import_http(&target, url, *format, scratch, &mut progress).await?;
            Ok(format!("imported from {}", plan::redact_url(url)))
        }
    }
}

/// The VM's storage as it is, or `None` when its group does not exist. Read-only: no Ceph
/// write of any kind (images are opened read-only: no watch, no lock).
pub async fn observe_storage(
    ctx: &StorageContext,
    kube_namespace: &str,
    name: &str,
) -> Result<Option<StorageObservation>> {
    let (cluster, pool, names) = (
        ctx.cluster.clone(),
        ctx.pool.clone(),
        ctx.vm_names(kube_namespace, name),
    );
    blocking(move || rbd::observe(&cluster, &pool, &names)).await
}

/// Deletes the VM's storage when `uid` owns it: every snapshot (unprotected first), every
/// image, the group. Refuses with [`StorageError::HasDependentClones`] (removing nothing) while
/// a clone depends on one of its snapshots. Idempotent: absent is [`DeleteOutcome::Absent`].
pub async fn delete_storage(
    ctx: &StorageContext,
    kube_namespace: &str,
    name: &str,
    uid: &str,
) -> Result<DeleteOutcome> {
    if plan::uid_key(uid).is_empty() {
        return Err(StorageError::InvalidRequest(format!(
            "object UID '{uid}' has no letters or digits"
        )));
    }
    let (cluster, pool, names, uid) = (
        ctx.cluster.clone(),
        ctx.pool.clone(),
        ctx.vm_names(kube_namespace, name),
        uid.to_string(),
    );
    blocking(move || rbd::delete(&cluster, &pool, &names, &uid)).await
}

/// The clones (`pool/namespace/image`) that depend on a snapshot of one of the VM's images:
/// while there are any, [`delete_storage`] refuses. Read-only; empty when the VM is absent.
pub async fn dependent_clones(ctx: &StorageContext, kube_namespace: &str, name: &str) -> Result<Vec<String>> {
    let (cluster, pool, names) = (
        ctx.cluster.clone(),
        ctx.pool.clone(),
        ctx.vm_names(kube_namespace, name),
    );
    blocking(move || rbd::vm_dependent_clones(&cluster, &pool, &names)).await
}

/// The names of every image in the RBD namespace of a Kubernetes namespace (empty when the
/// RBD namespace does not exist): one read for all the VMs of the namespace. Read-only.
pub async fn image_names(ctx: &StorageContext, kube_namespace: &str) -> Result<BTreeSet<String>> {
    let (cluster, pool, ns) = (
        ctx.cluster.clone(),
        ctx.pool.clone(),
        ctx.namespace_map.rbd_namespace(kube_namespace),
    );
    blocking(move || {
        let Some(io) = rbd::open_namespace(&cluster, &pool, &ns, false)? else {
            return Ok(BTreeSet::new());
        };
        io.list_images()
            .map(|names| names.into_iter().collect())
            .map_err(|e| StorageError::from_ceph(format!("listing images of {}", io.location()), e))
    })
    .await
}

/// The metadata of the VM's system image (empty when it does not exist). Read-only.
pub async fn read_metadata(
    ctx: &StorageContext,
    kube_namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, String>> {
    let (cluster, pool, names) = (
        ctx.cluster.clone(),
        ctx.pool.clone(),
        ctx.vm_names(kube_namespace, name),
    );
    blocking(move || rbd::read_metadata(&cluster, &pool, &names)).await
}

/// The domain UUID in the stored `xml` of the VM `name`, when that VM is `uid`'s or adoptable
/// by it (see [`plan::stored_uuid`]); `None` when there is none. Read-only.
pub async fn stored_domain_uuid(
    ctx: &StorageContext,
    kube_namespace: &str,
    name: &str,
    uid: &str,
) -> Result<Option<uuid::Uuid>> {
    let metadata = read_metadata(ctx, kube_namespace, name).await?;
    Ok(plan::stored_uuid(&metadata, name, uid))
}

/// The monitors' `(host, port)` as they listen (msgr2 address when they have one), for the
/// `<host name= port=>` elements of the domain XML.
pub async fn monitors(cluster: &Cluster) -> Result<Vec<(String, u16)>> {
    let cluster = cluster.clone();
    let out = blocking(move || {
        use rbd::CephContext;
        cluster
            .mon_command(r#"{"prefix":"mon dump","format":"json"}"#)
            .ctx(|| "asking the monitors for the monitor map (mon dump)".to_string())
    })
    .await?;
    parse_mon_dump(&out.0).map_err(|e| StorageError::internal(format!("reading the monitor map: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The controller spawns reconciles: the futures must be `Send`.
    #[allow(dead_code)]
    fn futures_are_send(ctx: &StorageContext, req: &VmStorageRequest) {
        fn is_send<T: Send>(_: &T) {}
        is_send(&ensure_storage(ctx, req, |_| {}));
        is_send(&observe_storage(ctx, "ns", "vm"));
        is_send(&delete_storage(ctx, "ns", "vm", "uid"));
        is_send(&read_metadata(ctx, "ns", "vm"));
        is_send(&monitors(&ctx.cluster));
    }
}
