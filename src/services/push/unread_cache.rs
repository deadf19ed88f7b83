//! Unread counts remembered per (user, room), so that counting follows what is new rather
//! than everything unread: a count made at some read receipts, up to some stream
//! position, goes on from that position while the receipts stay the same. Notification
//! entries are only ever added, each room's at rising positions, and a count only covers
//! positions the stream has published (all committed), so the remembered part never
//! changes under it. A new receipt means counting again from it, once.
//!
//! Without it a user who never reads a busy room made every push and every `/sync` of that
//! room scan all their unread entries (up to the cap): pushes to 31 members of one busy
//! room took most of the server's CPU.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::notifications::RoomCounts;
use crate::services::ephemeral::receipts::ReadPositions;

/// Counts remembered at most; past it the map starts again (cheap, and counts are cheap
/// to redo once).
const MAX_ENTRIES: usize = 50_000;

/// A remembered count.
#[derive(Debug, Clone)]
pub struct Counted {
    /// The receipts it was counted at.
    pub read: ReadPositions,
    /// The last stream position it covers.
    pub upto: u64,
    /// The counts.
    pub counts: RoomCounts,
}

/// The remembered counts.
#[derive(Default)]
pub struct UnreadCache {
    counts: Mutex<HashMap<(String, u64), Counted>>,
}

impl UnreadCache {
    /// The count of `user_id` in `room`, if one was made at exactly `read`.
    pub fn get(&self, user_id: &str, room: u64, read: &ReadPositions) -> Option<Counted> {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts
            .get(&(user_id.to_owned(), room))
            .filter(|c| c.read == *read)
            .cloned()
    }

    /// Remembers a count, unless a newer one (covering more) is there already.
    pub fn put(&self, user_id: &str, room: u64, counted: Counted) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.len() >= MAX_ENTRIES {
            counts.clear();
        }
        let key = (user_id.to_owned(), room);
        match counts.get(&key) {
            Some(old) if old.read == counted.read && old.upto >= counted.upto => {}
            _ => {
                counts.insert(key, counted);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(unthreaded: u64, upto: u64, n: u64) -> Counted {
        let mut counts = RoomCounts::default();
        counts.main.notifications = n;
        Counted {
            read: ReadPositions {
                unthreaded,
                ..ReadPositions::default()
            },
            upto,
            counts,
        }
    }

    #[test]
    fn a_count_is_found_only_at_the_same_receipts() {
        let cache = UnreadCache::default();
        cache.put("@a:x", 1, counted(5, 10, 3));
        let at = counted(5, 0, 0).read;
        assert_eq!(
            cache.get("@a:x", 1, &at).unwrap().counts.main.notifications,
            3
        );
        assert!(cache.get("@a:x", 1, &counted(6, 0, 0).read).is_none());
        assert!(cache.get("@a:x", 2, &at).is_none());
        assert!(cache.get("@b:x", 1, &at).is_none());
    }

    #[test]
    fn an_older_count_does_not_replace_a_newer_one() {
        let cache = UnreadCache::default();
        let at = counted(5, 0, 0).read;
        cache.put("@a:x", 1, counted(5, 20, 7));
        cache.put("@a:x", 1, counted(5, 10, 3));
        assert_eq!(cache.get("@a:x", 1, &at).unwrap().upto, 20);
        // New receipts replace whatever was there.
        cache.put("@a:x", 1, counted(9, 12, 1));
        assert!(cache.get("@a:x", 1, &at).is_none());
    }
}
