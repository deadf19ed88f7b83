//! Unread counts remembered per (user, room), so that counting follows what is new rather
//! than everything unread: a count made at some read receipts, up to some stream
//! position, goes on from that position. Notification entries are added at rising
//! positions, and a count only covers positions the stream has published (all
//! committed), so the remembered part does not change under it. Receipts only move
//! forward: when they moved since, the entries between where they were and where they
//! are now are taken back out of the count (see `Push::counted_unread`).
//!
//! The one exception is a redaction, which deletes its target's entries. Before its batch
//! commits it sets a barrier for the room at its own stream position: a count begun
//! before the stream had published that position (its `started`, the watermark read
//! when the count began; for a count continued from a remembered one, that one's) may
//! have read the entries, and is neither kept nor used. A count begun at or after it
//! read them deleted. A redaction of the room's past publishes no position: its barrier
//! is the position after the watermark, set again once its batch is written (a count
//! begun in between, once other rooms have published past the first, may be served
//! until the second is set: moments). One barrier per room, not per member: every
//! member's count of the room is stale alike.
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
/// Rooms' barriers kept at most; past it they are forgotten, their highest kept for
/// every room.
const MAX_BARRIERS: usize = 10_000;

/// A remembered count.
#[derive(Debug, Clone)]
pub struct Counted {
    /// The receipts it was counted at.
    pub read: ReadPositions,
    /// The last stream position it covers.
    pub upto: u64,
    /// The stream's watermark when its counting began.
    pub started: u64,
    /// The counts.
    pub counts: RoomCounts,
    /// Where the entries it counted unread begin, in each thread.
    pub oldest: OldestUnread,
}

/// The position of the oldest entry a count counted unread in the main timeline and in
/// each thread (a lower bound once some were taken out as read: never later than the
/// oldest still unread).
#[derive(Debug, Clone, Default)]
pub struct OldestUnread {
    /// The main timeline's.
    pub main: Option<u64>,
    /// Each thread's, by root event id.
    pub threads: HashMap<String, u64>,
}

impl OldestUnread {
    /// An entry at `pos` (in the thread of `root`) is counted unread; entries are counted
    /// in rising positions, so the first noted stays.
    pub fn note(&mut self, root: Option<&str>, pos: u64) {
        match root {
            None => {
                self.main.get_or_insert(pos);
            }
            Some(root) => {
                if !self.threads.contains_key(root) {
                    self.threads.insert(root.to_owned(), pos);
                }
            }
        }
    }

    /// The oldest of all.
    pub fn first(&self) -> Option<u64> {
        self.threads.values().copied().chain(self.main).min()
    }

    /// Forgets the threads (and main timeline) `counts` has nothing unread in.
    pub fn forget_read(&mut self, counts: &RoomCounts) {
        if counts.main.notifications == 0 {
            self.main = None;
        }
        self.threads
            .retain(|root, _| counts.threads.contains_key(root));
    }
}

/// The remembered counts.
#[derive(Default)]
pub struct UnreadCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    counts: HashMap<(String, u64), Counted>,
    /// By room: counts begun before this position are stale.
    barriers: HashMap<u64, u64>,
    /// The highest barrier forgotten: it holds for every room.
    forgotten: u64,
}

impl Inner {
    fn fresh(&self, room: u64, counted: &Counted) -> bool {
        let barrier = self.barriers.get(&room).copied().unwrap_or(0);
        counted.started >= barrier.max(self.forgotten)
    }
}

impl UnreadCache {
    /// The latest count of `user_id` in `room`, whatever receipts it was made at (unless
    /// made before a redaction since).
    pub fn get(&self, user_id: &str, room: u64) -> Option<Counted> {
        let inner = self.lock();
        inner
            .counts
            .get(&(user_id.to_owned(), room))
            .filter(|c| inner.fresh(room, c))
            .cloned()
    }

    /// Remembers a count, unless a newer one (covering more) is there already, or it
    /// was begun before a redaction that deleted entries it may have counted.
    pub fn put(&self, user_id: &str, room: u64, counted: Counted) {
        let mut inner = self.lock();
        if !inner.fresh(room, &counted) {
            return;
        }
        let key = (user_id.to_owned(), room);
        match inner.counts.get(&key) {
            Some(old)
                if old.read == counted.read
                    && old.upto >= counted.upto
                    && inner.fresh(room, old) => {}
            _ => {
                if inner.counts.len() >= MAX_ENTRIES {
                    inner.counts.clear();
                }
                inner.counts.insert(key, counted);
            }
        }
    }

    /// Entries of `room` are deleted by the event at stream position `pos` (called before
    /// its batch commits; for a redaction of the room's past, whose batch publishes no
    /// position, again once it is written, with the position after the watermark):
    /// counts begun before it are stale.
    pub fn forget_before(&self, room: u64, pos: u64) {
        let mut inner = self.lock();
        if !inner.barriers.contains_key(&room) && inner.barriers.len() >= MAX_BARRIERS {
            let highest = inner.barriers.values().copied().max().unwrap_or(0);
            inner.forgotten = inner.forgotten.max(highest);
            inner.barriers.clear();
        }
        let barrier = inner.barriers.entry(room).or_default();
        *barrier = (*barrier).max(pos);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(unthreaded: u64, upto: u64, n: u64) -> Counted {
        started(unthreaded, upto, upto, n)
    }

    fn started(unthreaded: u64, upto: u64, started: u64, n: u64) -> Counted {
        let mut counts = RoomCounts::default();
        counts.main.notifications = n;
        Counted {
            read: ReadPositions {
                unthreaded,
                ..ReadPositions::default()
            },
            upto,
            started,
            counts,
            oldest: OldestUnread::default(),
        }
    }

    #[test]
    fn a_count_is_found_by_user_and_room() {
        let cache = UnreadCache::default();
        cache.put("@a:x", 1, counted(5, 10, 3));
        assert_eq!(cache.get("@a:x", 1).unwrap().counts.main.notifications, 3);
        assert!(cache.get("@a:x", 2).is_none());
        assert!(cache.get("@b:x", 1).is_none());
    }

    #[test]
    fn an_older_count_does_not_replace_a_newer_one() {
        let cache = UnreadCache::default();
        cache.put("@a:x", 1, counted(5, 20, 7));
        cache.put("@a:x", 1, counted(5, 10, 3));
        assert_eq!(cache.get("@a:x", 1).unwrap().upto, 20);
        // New receipts replace whatever was there.
        cache.put("@a:x", 1, counted(9, 12, 1));
        assert_eq!(cache.get("@a:x", 1).unwrap().read.unthreaded, 9);
    }

    #[test]
    fn a_count_begun_before_a_redaction_deleted_entries_is_stale() {
        let cache = UnreadCache::default();
        cache.put("@a:x", 1, counted(5, 20, 7));
        cache.put("@b:x", 1, counted(5, 20, 2));
        // A redaction at 25 deletes entries of room 1: every member's count goes.
        cache.forget_before(1, 25);
        assert!(cache.get("@a:x", 1).is_none());
        assert!(cache.get("@b:x", 1).is_none());
        // A count begun before the redaction committed, put after it: not kept.
        cache.put("@a:x", 1, counted(5, 24, 7));
        assert!(cache.get("@a:x", 1).is_none());
        // One begun once the stream had published it read the entries deleted, even
        // when it stopped short (10,000 entries at a time) at an older position.
        cache.put("@a:x", 1, started(5, 12, 25, 6));
        assert_eq!(cache.get("@a:x", 1).unwrap().counts.main.notifications, 6);
        // Other rooms are untouched.
        cache.put("@a:x", 2, counted(5, 20, 1));
        assert!(cache.get("@a:x", 2).is_some());
    }

    #[test]
    fn barriers_forgotten_still_hold() {
        let cache = UnreadCache::default();
        cache.forget_before(1, 25);
        for room in 0..MAX_BARRIERS as u64 {
            cache.forget_before(100 + room, 10);
        }
        // Forgotten on the way: the barrier at 25 now holds for every room.
        cache.put("@a:x", 1, counted(5, 24, 7));
        cache.put("@a:x", 7, counted(5, 24, 7));
        assert!(cache.get("@a:x", 1).is_none() && cache.get("@a:x", 7).is_none());
        cache.put("@a:x", 1, counted(5, 26, 7));
        assert!(cache.get("@a:x", 1).is_some());
    }
}
