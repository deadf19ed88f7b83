//! The global stream: one monotonic position (u64) for everything a user can be told about
//! (room events, receipts, typing, account data, to-device messages), and the watermark
//! below which every position is committed.
//!
//! Writers take a [`PosTicket`] before they write and commit it, with a description of the
//! change ([`StreamChange`]), once their batch is durable. Tickets of different rooms commit
//! out of order; the watermark is the highest position below which nothing is still in
//! flight, and changes are handed to the subscriber (the sync notifier) in position order as
//! the watermark passes them. So a client told "you have everything up to W" never misses a
//! change at a position below W that commits later.
//!
//! Positions survive restarts: allocation reserves blocks and persists the block's ceiling
//! before handing out a position from it, so a token held by a client is always below the
//! first position handed out after a restart (in-memory changes such as typing included).
//!
//! Live positions start above [`HISTORY_SPACE`]. The positions below it are for a room's
//! past fetched from other servers (backfill), handed out downwards in blocks
//! ([`StreamPositions::reserve_history`]): history sorts before every event a room already
//! holds, and is never news to a syncing client. A database from before this split keeps
//! its old live positions; the history space stops above them.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::storage::{keys, Db, StorageError, Table};

/// Positions reserved per persisted ceiling.
const RESERVE: u64 = 4096;
const CEILING_KEY: &[u8] = b"stream_ceiling";
/// Live positions are above this one; history positions below it.
pub const HISTORY_SPACE: u64 = 1 << 40;
/// The highest history position not handed out yet.
const HISTORY_NEXT_KEY: &[u8] = b"history_next";
/// History positions stay above this one (the live positions of a database from before
/// the split).
const HISTORY_FLOOR_KEY: &[u8] = b"history_floor";

/// One write of [`StreamPositions::write_at_new_position`]: table, key, and the value
/// (`None` deletes).
pub type Write = (Table, Vec<u8>, Option<Vec<u8>>);

/// What committed at a position, for whoever wakes clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamChange {
    /// An event in a room; `member` names the user of an `m.room.member` event and
    /// `membership` their new membership.
    RoomEvent {
        /// The room's short id.
        room: u64,
        /// `(state_key, membership)` of a member event.
        member: Option<(String, String)>,
    },
    /// A receipt or typing change in a room.
    RoomEphemeral {
        /// The room's short id.
        room: u64,
    },
    /// A user's global or room account data changed.
    AccountData {
        /// The user.
        user: String,
    },
    /// A to-device message for a user's device.
    ToDevice {
        /// The recipient.
        user: String,
    },
    /// A user's presence changed; users sharing a room with them are told.
    Presence {
        /// The user whose presence changed.
        user: String,
        /// The short ids of the rooms they are joined to.
        rooms: Vec<u64>,
    },
    /// A user's devices or cross-signing keys changed; users sharing a room with them are
    /// told (`device_lists.changed` in /sync).
    DeviceList {
        /// The user whose keys changed.
        user: String,
        /// The short ids of the rooms they are joined to.
        rooms: Vec<u64>,
    },
    /// A user signed another user's master key with their user-signing key: only the
    /// signer's own devices are told (`device_lists.changed` lists the target), since
    /// only the signer sees that signature.
    SignedUser {
        /// Whose devices are told.
        signer: String,
        /// Whose master key was signed.
        target: String,
    },
}

/// Receives committed changes in position order (called with the stream's lock held, so it
/// must be quick and must not allocate positions itself).
pub trait StreamSubscriber: Send + Sync {
    /// Changes up to the new watermark, in position order.
    fn committed(&self, changes: &[(u64, StreamChange)]);
}

struct Inner {
    next: u64,
    ceiling: u64,
    in_flight: BTreeSet<u64>,
    pending: BTreeMap<u64, Vec<StreamChange>>,
}

/// The allocator and watermark of the global stream.
pub struct StreamPositions {
    db: Arc<Db>,
    inner: Mutex<Inner>,
    /// `(next, floor)` of the history space.
    history: Mutex<(u64, u64)>,
    watermark: AtomicU64,
    /// Who is told of committed changes: the sync notifier, the push delivery's waker.
    subscribers: RwLock<Vec<Arc<dyn StreamSubscriber>>>,
}

/// A position being written; commit it with [`PosTicket::commit`] once the write is
/// durable. Dropped without commit (a failed write), it leaves a gap in the stream.
pub struct PosTicket {
    stream: Arc<StreamPositions>,
    pos: u64,
    done: bool,
}

impl PosTicket {
    /// The position.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Marks the position written, with what changed there.
    pub fn commit(mut self, changes: Vec<StreamChange>) {
        self.done = true;
        self.stream.complete(self.pos, changes);
    }
}

impl Drop for PosTicket {
    fn drop(&mut self) {
        if !self.done {
            self.stream.complete(self.pos, Vec::new());
        }
    }
}

impl StreamPositions {
    /// Opens the stream: the next position is past both the persisted ceiling and
    /// `last_used` (the highest position any table holds).
    pub fn open(db: Arc<Db>, last_used: u64) -> Result<Arc<Self>, StorageError> {
        let read = |key: &[u8]| -> Result<Option<u64>, StorageError> {
            Ok(db.get(Table::Meta, key)?.and_then(|v| keys::read_u64(&v)))
        };
        let ceiling = read(CEILING_KEY)?.unwrap_or(0);
        let used = ceiling.max(last_used);
        let history = match (read(HISTORY_NEXT_KEY)?, read(HISTORY_FLOOR_KEY)?) {
            (Some(next), Some(floor)) => (next, floor),
            _ => {
                // The first start with a history space: what is used so far stays below
                // its floor.
                let floor = used.min(HISTORY_SPACE - 1);
                let next = HISTORY_SPACE - 1;
                let mut batch = db.batch();
                batch.put(Table::Meta, HISTORY_NEXT_KEY, next.to_be_bytes());
                batch.put(Table::Meta, HISTORY_FLOOR_KEY, floor.to_be_bytes());
                db.commit_blocking(batch)?;
                (next, floor)
            }
        };
        let start = used.max(HISTORY_SPACE) + 1;
        Ok(Arc::new(Self {
            db,
            history: Mutex::new(history),
            inner: Mutex::new(Inner {
                next: start,
                ceiling: start - 1,
                in_flight: BTreeSet::new(),
                pending: BTreeMap::new(),
            }),
            watermark: AtomicU64::new(start - 1),
            subscribers: RwLock::new(Vec::new()),
        }))
    }

    /// Adds one who is told about committed changes (at start-up).
    pub fn subscribe(&self, subscriber: Arc<dyn StreamSubscriber>) {
        self.subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(subscriber);
    }

    /// The highest position below which every position is committed. Read under the
    /// stream's lock: every change up to it has reached the subscriber.
    pub fn watermark(&self) -> u64 {
        let _inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        self.watermark.load(Ordering::Acquire)
    }

    /// A new position. Blocks for one fsync every [`RESERVE`] positions.
    pub fn allocate(self: &Arc<Self>) -> Result<PosTicket, StorageError> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let pos = inner.next;
        if pos > inner.ceiling {
            let ceiling = pos + RESERVE;
            let mut batch = self.db.batch();
            batch.put(Table::Meta, CEILING_KEY, ceiling.to_be_bytes());
            self.db.commit_blocking(batch)?;
            inner.ceiling = ceiling;
        }
        inner.next = pos + 1;
        inner.in_flight.insert(pos);
        Ok(PosTicket {
            stream: Arc::clone(self),
            pos,
            done: false,
        })
    }

    /// Allocates a position, writes what `build` makes of it durably, and commits the
    /// position with `changes`, all on a blocking thread that the caller's cancellation
    /// cannot interrupt: a dropped request never lets the watermark pass a position whose
    /// write is still under way.
    pub async fn write_at_new_position(
        self: &Arc<Self>,
        build: impl FnOnce(u64) -> Vec<Write> + Send + 'static,
        changes: Vec<StreamChange>,
    ) -> Result<u64, StorageError> {
        let stream = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let ticket = stream.allocate()?;
            let pos = ticket.pos();
            let mut batch = stream.db.batch();
            for (table, key, value) in build(pos) {
                match value {
                    Some(value) => batch.put(table, key, value),
                    None => batch.delete(table, key),
                }
            }
            stream.db.commit_blocking(batch)?;
            ticket.commit(changes);
            Ok(pos)
        })
        .await
        .map_err(|e| StorageError::new(format!("write task failed: {e}")))?
    }

    /// `n` history positions, ascending, below every history position handed out before
    /// (so below every event of every room that was placed with one, and below every live
    /// position); `None` once the history space is used up.
    pub fn reserve_history(&self, n: u64) -> Result<Option<RangeInclusive<u64>>, StorageError> {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let (next, floor) = *history;
        if n == 0 || next < floor.saturating_add(n) {
            return Ok(None);
        }
        let block = next - n + 1..=next;
        let mut batch = self.db.batch();
        batch.put(Table::Meta, HISTORY_NEXT_KEY, (next - n).to_be_bytes());
        // Not synced on its own: the events placed at these positions are written (and
        // synced) after it, and a write-ahead log keeps its order.
        self.db.write_relaxed(batch)?;
        history.0 = next - n;
        Ok(Some(block))
    }

    /// History positions are all above this one.
    pub fn history_floor(&self) -> u64 {
        self.history
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1
    }

    /// Allocates and commits at once: for changes with nothing to write (typing).
    pub fn commit_now(self: &Arc<Self>, change: StreamChange) -> Result<u64, StorageError> {
        let ticket = self.allocate()?;
        let pos = ticket.pos();
        ticket.commit(vec![change]);
        Ok(pos)
    }

    fn complete(&self, pos: u64, changes: Vec<StreamChange>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.in_flight.remove(&pos);
        if !changes.is_empty() {
            inner.pending.insert(pos, changes);
        }
        let watermark = match inner.in_flight.first() {
            Some(first) => first - 1,
            None => inner.next - 1,
        };
        let mut ready = Vec::new();
        while let Some(entry) = inner.pending.first_entry() {
            if *entry.key() > watermark {
                break;
            }
            let (pos, changes) = entry.remove_entry();
            ready.extend(changes.into_iter().map(|c| (pos, c)));
        }
        // Both under the lock: whoever reads the watermark (under the lock too) finds
        // every change below it already applied by the subscriber.
        self.watermark.store(watermark, Ordering::Release);
        if !ready.is_empty() {
            for subscriber in self
                .subscribers
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
            {
                subscriber.committed(&ready);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::DbOptions;

    struct Recorder(Mutex<Vec<u64>>);

    impl StreamSubscriber for Recorder {
        fn committed(&self, changes: &[(u64, StreamChange)]) {
            self.0
                .lock()
                .unwrap()
                .extend(changes.iter().map(|(p, _)| *p));
        }
    }

    fn change() -> Vec<StreamChange> {
        vec![StreamChange::RoomEphemeral { room: 1 }]
    }

    #[test]
    fn watermark_waits_for_positions_still_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
        let stream = StreamPositions::open(db, 0).unwrap();
        let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
        stream.subscribe(recorder.clone());
        let a = stream.allocate().unwrap();
        let b = stream.allocate().unwrap();
        let c = stream.allocate().unwrap();
        let base = HISTORY_SPACE;
        assert_eq!((a.pos(), b.pos(), c.pos()), (base + 1, base + 2, base + 3));
        c.commit(change());
        assert_eq!(stream.watermark(), base);
        drop(b);
        assert_eq!(stream.watermark(), base);
        assert!(recorder.0.lock().unwrap().is_empty());
        a.commit(change());
        assert_eq!(stream.watermark(), base + 3);
        assert_eq!(*recorder.0.lock().unwrap(), vec![base + 1, base + 3]);
    }

    #[test]
    fn positions_after_a_restart_are_above_every_earlier_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut last = 0;
        for _ in 0..3 {
            let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
            let stream = StreamPositions::open(db, 0).unwrap();
            let pos = stream
                .commit_now(StreamChange::RoomEphemeral { room: 1 })
                .unwrap();
            assert!(pos > last, "{pos} after {last}");
            assert_eq!(stream.watermark(), pos);
            last = pos;
        }
    }

    #[test]
    fn history_blocks_go_downwards_below_live_positions_and_survive_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
        let stream = StreamPositions::open(Arc::clone(&db), 0).unwrap();
        let live = stream.allocate().unwrap().pos();
        let first = stream.reserve_history(3).unwrap().unwrap();
        assert_eq!(first, HISTORY_SPACE - 3..=HISTORY_SPACE - 1);
        assert!(*first.end() < live);
        let second = stream.reserve_history(2).unwrap().unwrap();
        assert_eq!(*second.end() + 1, *first.start());
        assert_eq!(stream.reserve_history(0).unwrap(), None);
        drop(stream);
        let stream = StreamPositions::open(db, 0).unwrap();
        let third = stream.reserve_history(1).unwrap().unwrap();
        assert_eq!(*third.end() + 1, *second.start());
    }

    #[test]
    fn a_database_from_before_the_history_space_keeps_its_old_positions_out_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &DbOptions::default()).unwrap();
        // Live positions up to 1000 were used before the split; history can go down to
        // 1001 and no further.
        let stream = StreamPositions::open(db, 1000).unwrap();
        assert!(stream.allocate().unwrap().pos() > HISTORY_SPACE);
        let all = HISTORY_SPACE - 1 - 1000;
        assert_eq!(stream.reserve_history(all + 1).unwrap(), None);
        let block = stream.reserve_history(all).unwrap().unwrap();
        assert_eq!(*block.start(), 1001);
        assert_eq!(stream.reserve_history(1).unwrap(), None);
    }
}
