//! The controller's guard across processes.
//!
//! The Lease elects one controller, but a leader that lost its Lease in the middle of a librbd
//! call, or a second controller started without leader election, may still write for a while,
//! and storage operations that interleave corrupt (a dangling RBD directory entry, one image
//! under two names). So the controller that starts its work first fences every earlier one
//! through Ceph: it takes an exclusive lock on a RADOS object, and any holder it finds there is
//! put on the OSD blocklist (its writes then fail with `ESHUTDOWN`, whatever it is doing) before
//! its lock is broken. The fenced controller sees that it lost the guard and stops; restarted,
//! it starts over as a new contender. A controller that stops cleanly releases the guard, so
//! its successor has nobody to fence.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::ceph::{Cluster, IoCtx, Locker};
use crate::controller::fencing::blocklist_seconds;
use crate::controller::storage::{self, StorageError};

/// The name of the lock on the guard object.
const GUARD_LOCK: &str = "seapath-controller";

/// How often a running controller checks that it still holds the guard.
const GUARD_CHECK: Duration = Duration::from_secs(2);

/// The guard, held by this controller.
pub struct Guard {
    io: IoCtx,
    object: String,
    cookie: String,
    address: String,
}

/// The holders of the guard that are not `own_address`: earlier controllers, to fence.
fn earlier_holders(holders: Vec<Locker>, own_address: &str) -> Vec<Locker> {
    holders.into_iter().filter(|h| h.address != own_address).collect()
}

impl Guard {
    /// Takes the guard `object` in `pool` (RBD's default namespace), fencing its holders for
    /// `expiry` first. Returns the guard and the addresses fenced. Blocking.
    pub fn take(
        cluster: &Cluster,
        pool: &str,
        object: &str,
        expiry: Duration,
    ) -> Result<(Guard, Vec<String>), StorageError> {
        let io = cluster
            .io_context(pool, "")
            .map_err(|e| StorageError::from_ceph(format!("opening pool {pool}"), e))?;
        let address = cluster
            .client_address()
            .map_err(|e| StorageError::from_ceph("reading the controller's Ceph address", e))?;
        let holders = io
            .object_lockers(object, GUARD_LOCK)
            .map_err(|e| StorageError::from_ceph("reading the holder of the controller guard", e))?;
        let mut fenced = Vec::new();
        for holder in earlier_holders(holders.lockers, &address) {
            cluster
                .blocklist_add(&holder.address, blocklist_seconds(expiry))
                .map_err(|e| {
                    StorageError::from_ceph(format!("fencing the earlier controller {}", holder.address), e)
                })?;
            match io.object_break_lock(object, GUARD_LOCK, &holder.client, &holder.cookie) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(StorageError::from_ceph("breaking the controller guard", e)),
            }
            fenced.push(holder.address);
        }
        let cookie = uuid::Uuid::new_v4().simple().to_string();
        io.object_lock_exclusive(object, GUARD_LOCK, &cookie, "the active seapath controller")
            .map_err(|e| {
                StorageError::from_ceph(
                    "taking the controller guard (another controller took it meanwhile?)",
                    e,
                )
            })?;
        let guard = Guard {
            io,
            object: object.to_owned(),
            cookie,
            address,
        };
        Ok((guard, fenced))
    }

    /// Whether this controller still holds the guard: false once another one fenced it.
    /// Blocking.
    pub fn held(&self) -> Result<bool, StorageError> {
        match self.io.object_lockers(&self.object, GUARD_LOCK) {
            Ok(holders) => Ok(holders
                .lockers
                .iter()
                .any(|h| h.cookie == self.cookie && h.address == self.address)),
            Err(e) if e.is_blocklisted() => Ok(false),
            Err(e) => Err(StorageError::from_ceph(
                "reading the holder of the controller guard",
                e,
            )),
        }
    }

    /// Lets go of the guard on a clean stop. Blocking.
    pub fn release(&self) -> Result<(), StorageError> {
        match self.io.object_unlock(&self.object, GUARD_LOCK, &self.cookie) {
            Err(e) if !e.is_not_found() => Err(StorageError::from_ceph("releasing the controller guard", e)),
            _ => Ok(()),
        }
    }
}

/// Takes the guard off the async threads and says whom it fenced.
pub async fn take(
    cluster: Cluster,
    pool: String,
    object: String,
    expiry: Duration,
) -> Result<Arc<Guard>, StorageError> {
    let (guard, fenced) = storage::blocking(move || Guard::take(&cluster, &pool, &object, expiry)).await?;
    if fenced.is_empty() {
        info!("took the controller guard");
    } else {
        warn!(
            ?fenced,
            "took the controller guard from earlier controller(s), fenced through Ceph: run one controller, or several with leader election"
        );
    }
    Ok(Arc::new(guard))
}

/// Completes when this controller no longer holds the guard (another one fenced it). A check
/// that fails (Ceph unreachable) is not a loss: the next one decides.
pub async fn lost(guard: Arc<Guard>) {
    let mut tick = tokio::time::interval(GUARD_CHECK);
    loop {
        tick.tick().await;
        let guard = guard.clone();
        match storage::blocking(move || guard.held()).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => warn!(error = %e, "could not check the controller guard"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(address: &str) -> Locker {
        Locker {
            client: "client.1".into(),
            cookie: "c".into(),
            address: address.into(),
        }
    }

    #[test]
    fn every_holder_but_this_client_is_fenced() {
        let own = "10.0.0.1:0/1";
        assert!(earlier_holders(vec![], own).is_empty());
        assert!(earlier_holders(vec![holder(own)], own).is_empty());
        let other = earlier_holders(vec![holder(own), holder("10.0.0.1:0/2")], own);
        assert_eq!(other, vec![holder("10.0.0.1:0/2")]);
    }
}
