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

use crate::ceph::{Cluster, IoCtx, LockMode};
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

/// Blocklists every client (but `own_address`) that owns the lock of, or watches, one of the
/// images, for `expiry`, then breaks the locks they held. Blocking: run it off the runtime.
pub fn fence_images(
    cluster: &Cluster,
    vms: &[VmImages],
    own_address: &str,
    expiry: Duration,
) -> Result<Fenced, StorageError> {
    let mut clients = BTreeSet::new();
    let mut locks = Vec::new();
    for vm in vms {
        let io = cluster
            .io_context(&vm.pool, &vm.namespace)
            .map_err(|e| StorageError::from_ceph(format!("opening {}/{}", vm.pool, vm.namespace), e))?;
        for image in &vm.images {
            collect_clients(&io, image, own_address, &mut clients, &mut locks)?;
        }
    }
    let expire_secs = u32::try_from(expiry.as_secs()).unwrap_or(u32::MAX).max(1);
    for client in &clients {
        cluster
            .blocklist_add(client, expire_secs)
            .map_err(|e| StorageError::from_ceph(format!("blocklisting {client}"), e))?;
    }
    let mut broken = 0;
    for (io, image, mode, owner) in locks {
        let opened = io
            .open_image(&image)
            .map_err(|e| StorageError::from_ceph(format!("opening {}", io.spec(&image)), e))?;
        match opened.lock_break(mode, &owner) {
            Ok(()) => broken += 1,
            // Gone meanwhile (released by the blocklisted client, or broken by librbd).
            Err(e) if e.is_not_found() || e.errno == libc::EBUSY => {}
            Err(e) => {
                return Err(StorageError::from_ceph(
                    format!("breaking the lock of {}", io.spec(&image)),
                    e,
                ));
            }
        }
    }
    Ok(Fenced {
        blocklisted: clients.into_iter().collect(),
        locks_broken: broken,
    })
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
    for client in clients {
        cluster
            .blocklist_remove(client)
            .map_err(|e| StorageError::from_ceph(format!("removing {client} from the blocklist"), e))?;
    }
    Ok(())
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
