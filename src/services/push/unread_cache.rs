//! Unread counts remembered per (user, room), so that counting follows what is new rather
//! than everything unread: a count made at some read receipts, up to some stream
//! position, goes on from that position while the receipts stay the same. Notification
//! entries are added at rising positions, and a count only covers positions the stream
//! has published (all committed), so the remembered part does not change under it. A new
//! receipt means counting again from it, once. The one exception is a redaction, which
//! deletes its target's entries: it sets a barrier at its own position before it
//! commits, and a count that does not reach the barrier (made, perhaps, before the
//! deletion) is neither kept nor used.
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

/// What is remembered of one user's room.
#[derive(Debug, Default)]
struct Slot {
    /// Counts that end before this position are stale.
    barrier: u64,
    counted: Option<Counted>,
}

/// The remembered counts.
#[derive(Default)]
pub struct UnreadCache {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    by_room: HashMap<(String, u64), Slot>,
    /// The highest barrier of the slots forgotten when the map was last cleared: counts
    /// ending before it are stale (for any room, not knowing which).
    cleared_barrier: u64,
}

impl Slots {
    fn barrier(&self, key: &(String, u64)) -> u64 {
        self.by_room
            .get(key)
            .map_or(0, |slot| slot.barrier)
            .max(self.cleared_barrier)
    }

    /// Makes room for one more slot: past [`MAX_ENTRIES`] the map starts again.
    fn make_room(&mut self) {
        if self.by_room.len() >= MAX_ENTRIES {
            let highest = self.by_room.values().map(|s| s.barrier).max().unwrap_or(0);
            self.cleared_barrier = self.cleared_barrier.max(highest);
            self.by_room.clear();
        }
    }
}

impl UnreadCache {
    /// The count of `user_id` in `room`, if one was made at exactly `read`.
    pub fn get(&self, user_id: &str, room: u64, read: &ReadPositions) -> Option<Counted> {
        let slots = self.lock();
        let key = (user_id.to_owned(), room);
        let barrier = slots.barrier(&key);
        slots
            .by_room
            .get(&key)?
            .counted
            .as_ref()
            .filter(|c| c.read == *read && c.upto >= barrier)
            .cloned()
    }

    /// Remembers a count, unless a newer one (covering more) is there already, or it
    /// ends before a redaction that deleted entries it may have counted.
    pub fn put(&self, user_id: &str, room: u64, counted: Counted) {
        let mut slots = self.lock();
        let key = (user_id.to_owned(), room);
        if counted.upto < slots.barrier(&key) {
            return;
        }
        if !slots.by_room.contains_key(&key) {
            slots.make_room();
        }
        let slot = slots.by_room.entry(key).or_default();
        match &slot.counted {
            Some(old) if old.read == counted.read && old.upto >= counted.upto => {}
            _ => slot.counted = Some(counted),
        }
    }

    /// Entries of `user_id` in `room` are being deleted in the batch of the event at
    /// `pos` (not committed yet): counts that end before it are stale.
    pub fn forget_before(&self, user_id: &str, room: u64, pos: u64) {
        let mut slots = self.lock();
        let key = (user_id.to_owned(), room);
        if !slots.by_room.contains_key(&key) {
            slots.make_room();
        }
        let slot = slots.by_room.entry(key).or_default();
        slot.barrier = slot.barrier.max(pos);
        if slot.counted.as_ref().is_some_and(|c| c.upto < pos) {
            slot.counted = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
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

    #[test]
    fn a_count_made_before_a_redaction_deleted_entries_is_stale() {
        let cache = UnreadCache::default();
        let at = counted(5, 0, 0).read;
        cache.put("@a:x", 1, counted(5, 20, 7));
        // A redaction at 25 deletes an entry it counted.
        cache.forget_before("@a:x", 1, 25);
        assert!(cache.get("@a:x", 1, &at).is_none());
        // A count begun before the redaction committed, put after it: not kept.
        cache.put("@a:x", 1, counted(5, 24, 7));
        assert!(cache.get("@a:x", 1, &at).is_none());
        // One that reaches the redaction's position was made after it committed.
        cache.put("@a:x", 1, counted(5, 25, 6));
        assert_eq!(
            cache.get("@a:x", 1, &at).unwrap().counts.main.notifications,
            6
        );
        // Other rooms and users are untouched.
        cache.put("@a:x", 2, counted(5, 20, 1));
        cache.put("@b:x", 1, counted(5, 20, 2));
        assert!(cache.get("@a:x", 2, &at).is_some() && cache.get("@b:x", 1, &at).is_some());
    }

    #[test]
    fn barriers_outlive_the_map_starting_again() {
        let cache = UnreadCache::default();
        let at = counted(5, 0, 0).read;
        cache.forget_before("@a:x", 1, 25);
        for room in 0..MAX_ENTRIES as u64 {
            cache.put("@b:x", 100 + room, counted(5, 30, 1));
        }
        // Cleared on the way: the barrier at 25 now holds for every room.
        cache.put("@a:x", 1, counted(5, 24, 7));
        assert!(cache.get("@a:x", 1, &at).is_none());
        cache.put("@a:x", 1, counted(5, 26, 7));
        assert!(cache.get("@a:x", 1, &at).is_some());
    }
}
