//! The XML each VM should run, as read from its system image's RBD metadata, kept for a while:
//! every resync of every VM would otherwise open its image (500 VMs every 30 s is a steady
//! load on the OSDs for text that hardly ever changes). A copy is only compared with the
//! domain; a domain is always defined and started from a fresh read.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::domain_reconcile::StoredXml;

/// The text and its identity (UUID, digest).
pub type Stored = (String, StoredXml);

#[derive(Default)]
pub(crate) struct StoredXmlCache(Mutex<HashMap<String, Entry>>);

struct Entry {
    generation: Option<i64>,
    read_at: Instant,
    stored: Stored,
}

impl StoredXmlCache {
    /// The copy read for this generation of the VM less than `max_age` ago.
    pub(crate) fn get(&self, uid: &str, generation: Option<i64>, max_age: Duration) -> Option<Stored> {
        let entries = self.lock();
        let entry = entries.get(uid)?;
        (entry.generation == generation && entry.read_at.elapsed() < max_age).then(|| entry.stored.clone())
    }

    pub(crate) fn put(&self, uid: &str, generation: Option<i64>, stored: &Stored) {
        self.lock().insert(
            uid.to_owned(),
            Entry {
                generation,
                read_at: Instant::now(),
                stored: stored.clone(),
            },
        );
    }

    pub(crate) fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // Plain data: a panicking holder leaves nothing half-updated.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(digest: &str) -> Stored {
        (
            "<domain/>".into(),
            StoredXml {
                uuid: None,
                sha256: digest.into(),
            },
        )
    }

    #[test]
    fn a_copy_serves_its_generation_until_it_is_too_old() {
        let cache = StoredXmlCache::default();
        let long = Duration::from_secs(300);
        assert_eq!(cache.get("vm", Some(1), long), None);
        cache.put("vm", Some(1), &stored("a"));
        assert_eq!(cache.get("vm", Some(1), long), Some(stored("a")));
        assert_eq!(cache.get("vm", Some(2), long), None, "the spec changed");
        assert_eq!(cache.get("vm", Some(1), Duration::ZERO), None, "too old");
        assert_eq!(cache.get("other", Some(1), long), None);
        cache.forget("vm");
        assert_eq!(cache.get("vm", Some(1), long), None);
    }
}
