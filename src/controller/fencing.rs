//! Fencing through Ceph: the clients that hold or watch the images of a lost host's VMs are
//! put on the OSD blocklist (their writes then fail with `ESHUTDOWN`), and the exclusive locks
//! they held are broken, so a copy started elsewhere takes the lock at once. This needs no
//! fencing hardware; an optional power-fence hook covers what Ceph cannot stop (a guest that
//! still sends packets).
//!
//! Clients are named by instance (`127.0.0.1:0/NONCE`), never by bare IP: the controller and
//! other hosts' clients may share an address.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::ceph::{Cluster, Image, IoCtx, LockMode};
use crate::controller::storage::StorageError;

/// The images of one VM to fence.
#[derive(Clone, Debug)]
pub struct VmImages {
    pub pool: String,
    pub namespace: String,
    pub images: Vec<String>,
}

/// What fencing did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fenced {
    pub blocklisted: Vec<String>,
    pub locks_broken: usize,
}

/// How many mon commands or lock breaks fencing runs at once. The mon folds concurrent
/// blocklist changes into one OSD map update, so fencing fifty VMs costs a few map updates
/// instead of fifty in a row.
const FENCE_CONCURRENCY: usize = 16;

/// Blocklists every client (but `own_address`) that owns the lock of, or watches, one of the
/// images, for `expiry`, then breaks the locks they held. Blocking: run it off the runtime.
///
/// The cluster connection must have `rbd_blocklist_on_break_lock = false`: the clients are
/// blocklisted here first, with the fence's own expiry, and librbd's blocklist on break would
/// replace it with the mon's default hour (Pacific refuses another expiry there with
/// `EINVAL`) and cost one more OSD map update per lock.
pub fn fence_images(
    cluster: &Cluster,
    vms: &[VmImages],
    own_address: &str,
    expiry: Duration,
) -> Result<Fenced, StorageError> {
    let mut clients = BTreeSet::new();
    let mut locks = Vec::new();
    for found in concurrently(vms, |vm| clients_of(cluster, vm, own_address)) {
        let (vm_clients, vm_locks) = found?;
        clients.extend(vm_clients);
        locks.extend(vm_locks);
    }
    let clients: Vec<String> = clients.into_iter().collect();
    let expire_secs = blocklist_seconds(expiry);
    concurrently(&clients, |client| {
        cluster
            .blocklist_add(client, expire_secs)
            .map_err(|e| StorageError::from_ceph(format!("blocklisting {client}"), e))
    })
    .into_iter()
    .collect::<Result<(), _>>()?;
    let broken = concurrently(&locks, break_held_lock)
        .into_iter()
        .collect::<Result<Vec<bool>, _>>()?;
    Ok(Fenced {
        blocklisted: clients,
        locks_broken: broken.into_iter().filter(|b| *b).count(),
    })
}

/// A blocklist expiry in whole seconds as Ceph takes it (at least 1).
pub fn blocklist_seconds(expiry: Duration) -> u32 {
    u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX).max(1)
}

/// Breaks the exclusive lock of an image whose owners are dead, and says which owners are
/// alive (then nothing is broken). A librbd client keeps a watch on every image it has open,
/// so an owner without one crashed, or hangs and lost its watch: it will never release the
/// lock, and, blocklisted by librbd on the break (`rbd_blocklist_on_break_lock`, librbd's
/// default, for the mon's default hour), it cannot write again if it wakes up.
pub fn break_dead_owners(opened: &Image, own_address: &str) -> Result<Vec<String>, StorageError> {
    let spec = opened.spec();
    let Some(owners) = opened
        .lock_owners()
        .map_err(|e| StorageError::from_ceph(format!("reading the lock owners of {spec}"), e))?
    else {
        return Ok(Vec::new());
    };
    let watchers = opened
        .watchers()
        .map_err(|e| StorageError::from_ceph(format!("listing the watchers of {spec}"), e))?;
    let (alive, dead): (Vec<String>, Vec<String>) = owners
        .owners
        .into_iter()
        .filter(|o| o != own_address)
        .partition(|o| watchers.contains(o));
    if !alive.is_empty() {
        return Ok(alive);
    }
    for owner in dead {
        match opened.lock_break(owners.mode, &owner) {
            Ok(()) => tracing::warn!(image = %spec, %owner, "broke the lock of a dead client"),
            Err(e) if e.is_not_found() || e.errno == libc::EBUSY => {}
            Err(e) => {
                return Err(StorageError::from_ceph(format!("breaking the lock of {spec}"), e));
            }
        }
    }
    Ok(Vec::new())
}

/// Breaks the lock of a blocklisted owner; false when it was gone already (released by its
/// owner before the blocklist took hold, or broken meanwhile).
fn break_held_lock((io, image, mode, owner): &HeldLock) -> Result<bool, StorageError> {
    let opened = io
        .open_image(image)
        .map_err(|e| StorageError::from_ceph(format!("opening {}", io.spec(image)), e))?;
    match opened.lock_break(*mode, owner) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() || e.errno == libc::EBUSY => Ok(false),
        Err(e) => Err(StorageError::from_ceph(
            format!("breaking the lock of {}", io.spec(image)),
            e,
        )),
    }
}

/// Runs `work` on every item, [`FENCE_CONCURRENCY`] threads at most, and returns the results
/// in the items' order. Each call blocks on Ceph, not on the CPU.
fn concurrently<T: Sync, R: Send>(items: &[T], work: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(&work).collect();
    }
    let per_thread = items.len().div_ceil(FENCE_CONCURRENCY);
    std::thread::scope(|scope| {
        let work = &work;
        let threads: Vec<_> = items
            .chunks(per_thread)
            .map(|chunk| scope.spawn(move || chunk.iter().map(work).collect::<Vec<R>>()))
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("a fencing thread panicked"))
            .collect()
    })
}

/// The clients that hold or watch the images of one VM, and the locks they hold.
fn clients_of(
    cluster: &Cluster,
    vm: &VmImages,
    own_address: &str,
) -> Result<(BTreeSet<String>, Vec<HeldLock>), StorageError> {
    let io = cluster
        .io_context(&vm.pool, &vm.namespace)
        .map_err(|e| StorageError::from_ceph(format!("opening {}/{}", vm.pool, vm.namespace), e))?;
    let mut clients = BTreeSet::new();
    let mut locks = Vec::new();
    for image in &vm.images {
        collect_clients(&io, image, own_address, &mut clients, &mut locks)?;
    }
    Ok((clients, locks))
}

type HeldLock = (IoCtx, String, LockMode, String);

fn collect_clients(
    io: &IoCtx,
    image: &str,
    own_address: &str,
    clients: &mut BTreeSet<String>,
    locks: &mut Vec<HeldLock>,
) -> Result<(), StorageError> {
    // Read-write: librbd answers lock queries only there. Opening takes no lock; our own
    // watch is left out below.
    let opened = match io.open_image(image) {
        Ok(opened) => opened,
        // No image, no writer to stop.
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(StorageError::from_ceph(format!("opening {}", io.spec(image)), e)),
    };
    let owners = match opened.lock_owners() {
        Ok(owners) => owners,
        // No exclusive-lock feature: nobody can hold the lock, the watchers are the writers.
        Err(e) if e.errno == libc::EINVAL => None,
        Err(e) => {
            return Err(StorageError::from_ceph(
                format!("reading the lock owners of {}", io.spec(image)),
                e,
            ));
        }
    };
    if let Some(owners) = owners {
        for owner in owners.owners.into_iter().filter(|o| o != own_address) {
            clients.insert(owner.clone());
            locks.push((io.clone(), image.to_owned(), owners.mode, owner));
        }
    }
    let watchers = opened
        .watchers()
        .map_err(|e| StorageError::from_ceph(format!("listing the watchers of {}", io.spec(image)), e))?;
    clients.extend(watchers.into_iter().filter(|w| w != own_address));
    Ok(())
}

/// Removes the blocklist entries a fence made (the host rejoined clean).
pub fn lift(cluster: &Cluster, clients: &[String]) -> Result<(), StorageError> {
    concurrently(clients, |client| {
        cluster
            .blocklist_remove(client)
            .map_err(|e| StorageError::from_ceph(format!("removing {client} from the blocklist"), e))
    })
    .into_iter()
    .collect()
}

/// Runs the administrator's power-fence command (e.g. a wrapper around `fence_ipmilan`) with
/// the node name as its argument and in `SEAPATH_FENCE_NODE`; fencing goes on only when it
/// exits with 0.
pub async fn run_power_fence(command: &std::path::Path, node: &str, reason: &str) -> Result<(), String> {
    let output = tokio::process::Command::new(command)
        .arg(node)
        .env("SEAPATH_FENCE_NODE", node)
        .env("SEAPATH_FENCE_REASON", reason)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run the power-fence command {}: {e}", command.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!(
        "the power-fence command {} {node} failed ({}): {}",
        command.display(),
        output.status,
        stderr.trim()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_work_keeps_the_order_of_the_items() {
        let items: Vec<usize> = (0..50).collect();
        let threads = std::sync::Mutex::new(std::collections::HashSet::new());
        let doubled = concurrently(&items, |i| {
            threads.lock().unwrap().insert(std::thread::current().id());
            i * 2
        });
        assert_eq!(doubled, (0..50).map(|i| i * 2).collect::<Vec<_>>());
        let used = threads.lock().unwrap().len();
        assert!(used > 1 && used <= FENCE_CONCURRENCY, "{used} threads");
        assert_eq!(concurrently(&[7], |i| i + 1), vec![8]);
        assert!(concurrently(&[] as &[usize], |i| *i).is_empty());
    }

    #[tokio::test]
    async fn the_power_fence_command_must_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("fenced");
        let script = dir.path().join("fence-node");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$1 $SEAPATH_FENCE_NODE $SEAPATH_FENCE_REASON\" >> {}\n[ \"$1\" != refuse ] || {{ echo 'BMC unreachable' >&2; exit 3; }}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        // A test of another thread that forks while the script was open for writing keeps it
        // open until its exec: the kernel then refuses to run it (ETXTBSY) for a moment.
        for _ in 0..50 {
            match run_power_fence(&script, "probe", "probe").await {
                Err(e) if e.contains("Text file busy") => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                _ => break,
            }
        }
        std::fs::write(&log, "").unwrap();
        run_power_fence(&script, "hv1", "NodeLost").await.unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "hv1 hv1 NodeLost\n");
        let err = run_power_fence(&script, "refuse", "NodeLost").await.unwrap_err();
        assert!(err.contains("failed") && err.contains("BMC unreachable"), "{err}");
        let err = run_power_fence(&dir.path().join("missing"), "hv1", "NodeLost")
            .await
            .unwrap_err();
        assert!(err.contains("cannot run the power-fence command"), "{err}");
    }
}
