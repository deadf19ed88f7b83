//! The rooms that may hold a pushed user's unread notifications, kept in memory, so that
//! a push's badge (`counts.unread`, the user's unread notifications across their rooms)
//! sums those rooms only, not every room the user ever had a notification in.
//!
//! A user's rooms are loaded once from the notification table (a skip scan over it). The
//! delivery worker then adds the room of every queue entry it reads that lists the user's
//! tag (a tag that only collides adds a room with nothing unread, dropped again), and
//! the badge drops a room it finds read through, or left. That keeps it whole:
//! - the user's entry is made before the load starts, and a pass adds to it while the
//!   load runs; an entry the load missed (committed after the scan passed it) is read by
//!   a pass after the entry was made, which adds its room;
//! - a room is dropped only if nothing was added for it past the position its count was
//!   complete to, so a notification racing the drop keeps or adds it back.
//!
//! A notification of a user who had no pusher when the event was written is not in the
//! queue; the load finds it unless it was committed after the load, which needs the
//! event's write to outlast setting a pusher and a whole delivery. Loads are redone after
//! [`RELOAD_AFTER`] anyway, which bounds what any miss can cost, and the memory held.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A user's rooms are loaded again from storage after this long.
const RELOAD_AFTER: Duration = Duration::from_secs(600);
/// Users kept at most; past it every user is loaded again when next pushed to.
const MAX_USERS: usize = 100_000;

/// One user's rooms: by short room id, the latest queue position that added it.
struct UserRooms {
    /// When the load ended; `None` while it runs.
    loaded: Option<Instant>,
    rooms: HashMap<u64, u64>,
}

/// The rooms of the users pushed to lately.
#[derive(Default)]
pub struct BadgeRooms {
    users: Mutex<HashMap<String, UserRooms>>,
}

impl BadgeRooms {
    /// The user's rooms, loaded with `load` (every room with notification entries) when
    /// not held or held too long. `load` runs without the lock; the user's entry is made
    /// first, so that the rooms passes add meanwhile are kept.
    pub fn rooms<E>(
        &self,
        user_id: &str,
        load: impl FnOnce() -> Result<Vec<u64>, E>,
    ) -> Result<Vec<u64>, E> {
        {
            let mut users = self.lock();
            if let Some(held) = users.get(user_id) {
                if held.loaded.is_some_and(|at| at.elapsed() < RELOAD_AFTER) {
                    return Ok(held.rooms.keys().copied().collect());
                }
            } else {
                if users.len() >= MAX_USERS {
                    users.clear();
                }
                users.insert(
                    user_id.to_owned(),
                    UserRooms {
                        loaded: None,
                        rooms: HashMap::new(),
                    },
                );
            }
        }
        let loaded = load()?;
        let mut users = self.lock();
        let Some(held) = users.get_mut(user_id) else {
            // Forgotten (or every user dropped) while loading: answered, not kept.
            return Ok(loaded);
        };
        held.loaded = Some(Instant::now());
        for room in loaded {
            held.rooms.entry(room).or_insert(0);
        }
        Ok(held.rooms.keys().copied().collect())
    }

    /// Notes queue entries read by the delivery worker: `(user, room, position)`. Only
    /// users whose rooms are held or being loaded are noted (a later load finds the
    /// others' entries).
    pub fn added<'a>(&self, entries: impl IntoIterator<Item = (&'a str, u64, u64)>) {
        let mut users = self.lock();
        if users.is_empty() {
            return;
        }
        for (user_id, room, pos) in entries {
            if let Some(held) = users.get_mut(user_id) {
                let last = held.rooms.entry(room).or_insert(pos);
                *last = (*last).max(pos);
            }
        }
    }

    /// Drops a room whose notifications the user has read (or that they left), as
    /// counted completely up to stream position `counted_upto`, unless an entry past it
    /// added the room since.
    pub fn drop_read(&self, user_id: &str, room: u64, counted_upto: u64) {
        let mut users = self.lock();
        if let Some(held) = users.get_mut(user_id) {
            if held
                .rooms
                .get(&room)
                .is_some_and(|last| *last <= counted_upto)
            {
                held.rooms.remove(&room);
            }
        }
    }

    /// Forgets a user's rooms (their pushers are gone).
    pub fn forget(&self, user_id: &str) {
        self.lock().remove(user_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, UserRooms>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut rooms: Vec<u64>) -> Vec<u64> {
        rooms.sort_unstable();
        rooms
    }

    #[test]
    fn a_user_is_loaded_once_then_follows_the_queue() {
        let badge = BadgeRooms::default();
        // Not held: a pass's entries are not noted.
        badge.added([("@a:x", 9, 50)]);
        let loads = std::cell::Cell::new(0);
        let load = |rooms: Vec<u64>| {
            let loads = &loads;
            move || {
                loads.set(loads.get() + 1);
                Ok::<_, ()>(rooms)
            }
        };
        assert_eq!(
            sorted(badge.rooms("@a:x", load(vec![1, 2])).unwrap()),
            [1, 2]
        );
        badge.added([("@a:x", 3, 60), ("@b:x", 4, 60)]);
        assert_eq!(
            sorted(badge.rooms("@a:x", load(vec![99])).unwrap()),
            [1, 2, 3]
        );
        assert_eq!(loads.get(), 1, "held rooms are not loaded again");
        // Another user is loaded on their own.
        assert_eq!(badge.rooms("@b:x", || Ok::<_, ()>(vec![7])).unwrap(), [7]);
    }

    #[test]
    fn a_read_room_goes_unless_a_later_entry_added_it() {
        let badge = BadgeRooms::default();
        badge.rooms("@a:x", || Ok::<_, ()>(vec![1, 2])).unwrap();
        badge.added([("@a:x", 2, 80)]);
        // Counted up to 70: room 1 (loaded, position 0) goes; room 2 got an entry at 80.
        badge.drop_read("@a:x", 1, 70);
        badge.drop_read("@a:x", 2, 70);
        assert_eq!(badge.rooms("@a:x", || Err(())).unwrap(), [2]);
        // Counted past it, it goes too; a new entry brings it back.
        badge.drop_read("@a:x", 2, 80);
        assert!(badge.rooms("@a:x", || Err(())).unwrap().is_empty());
        badge.added([("@a:x", 2, 90)]);
        assert_eq!(badge.rooms("@a:x", || Err(())).unwrap(), [2]);
    }

    #[test]
    fn a_room_a_pass_adds_while_the_load_runs_is_kept() {
        let badge = BadgeRooms::default();
        // The scan has passed room 7 when its entry commits and a pass reads it.
        let rooms = badge
            .rooms("@a:x", || {
                badge.added([("@a:x", 7, 40)]);
                Ok::<_, ()>(vec![1])
            })
            .unwrap();
        assert_eq!(sorted(rooms), [1, 7]);
        // A user forgotten during the load is answered but not kept.
        let rooms = badge
            .rooms("@b:x", || {
                badge.forget("@b:x");
                Ok::<_, ()>(vec![2])
            })
            .unwrap();
        assert_eq!(rooms, [2]);
        badge.added([("@b:x", 3, 50)]);
        assert_eq!(badge.rooms("@b:x", || Ok::<_, ()>(vec![4])).unwrap(), [4]);
    }

    #[test]
    fn a_failed_load_holds_nothing_and_a_forgotten_user_is_loaded_again() {
        let badge = BadgeRooms::default();
        assert!(badge.rooms("@a:x", || Err::<Vec<u64>, _>("disk")).is_err());
        assert_eq!(badge.rooms("@a:x", || Ok::<_, ()>(vec![5])).unwrap(), [5]);
        badge.forget("@a:x");
        assert_eq!(badge.rooms("@a:x", || Ok::<_, ()>(vec![6])).unwrap(), [6]);
    }
}
