//! One lock per key, made when a key is first locked and dropped when its last holder
//! and waiter are gone: work on one key (a room's backfill, an origin's transaction)
//! waits only for work on that key, unlike [`super::StripedLocks`], whose stripes are
//! shared by unrelated keys (fine for short critical sections, not for ones that wait on
//! the network).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The locks by key.
#[derive(Default)]
pub struct KeyedLocks(Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>);

/// Held while the key's work runs.
pub struct KeyedGuard<'a> {
    locks: &'a KeyedLocks,
    key: Vec<u8>,
    lock: Arc<tokio::sync::Mutex<()>>,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        let mut locks = self.locks.0.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's, ours and our guard's: nobody else holds or waits, the entry goes.
        if Arc::strong_count(&self.lock) <= 3 {
            locks.remove(&self.key);
        }
    }
}

impl KeyedLocks {
    /// Waits for the lock of `key`.
    pub async fn lock(&self, key: &[u8]) -> KeyedGuard<'_> {
        let lock = {
            let mut locks = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(locks.entry(key.to_vec()).or_default())
        };
        let held = Arc::clone(&lock).lock_owned().await;
        KeyedGuard {
            locks: self,
            key: key.to_vec(),
            lock,
            _held: held,
        }
    }

    /// How many keys have a lock now (held or waited for).
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no key has a lock now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_key_waits_for_itself_only_and_its_lock_goes_after() {
        let locks = Arc::new(KeyedLocks::default());
        let first = locks.lock(b"room a").await;
        // Another key is not held up.
        let other = tokio::time::timeout(Duration::from_millis(100), locks.lock(b"room b")).await;
        assert!(other.is_ok());
        drop(other);
        let waiting = {
            let locks = Arc::clone(&locks);
            tokio::spawn(async move {
                let _again = locks.lock(b"room a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the same key waits");
        drop(first);
        waiting.await.unwrap();
        assert!(locks.is_empty());
    }
}
