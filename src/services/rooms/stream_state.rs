//! The room's state along the stream, where a forked graph makes it differ from an
//! event's own state.
//!
//! An event's state after it (spec: the state "at" an event) is its branch's. Once
//! another server's event forks the graph, the room's current state after that event is
//! the resolution of every branch, which is what a client following `/sync` should hold.
//! Kept for the events where the two differ (only forks), so `/sync` can tell a client
//! what changed since its token. Also kept: the positions of events accepted with a gap
//! before them (prev events that could not be fetched, their state told by the sending
//! server), so `/sync` can say its timeline is `limited` there.
//!
//! Owns the tables `shorteventid_currentstate` and `shortroomid_gappos`.

use super::event_store::EventStore;
use super::state_store::{ShortEventId, ShortStateHash};
use crate::services::error::{ServiceError, ServiceResult};
use crate::storage::{keys, Batch, Table};

/// Notes, in `batch`, the room's current state after accepted event `short` when it is
/// not the event's own state after.
pub fn note_current(
    batch: &mut Batch<'_>,
    short: ShortEventId,
    current: ShortStateHash,
    state_after: ShortStateHash,
) {
    if current != state_after {
        batch.put(
            Table::ShorteventidCurrentstate,
            short.to_be_bytes(),
            current.to_be_bytes(),
        );
    }
}

/// The room's current state after accepted event `short`, whose own state after is
/// `state_after`.
pub fn current_after(
    store: &EventStore,
    short: ShortEventId,
    state_after: ShortStateHash,
) -> ServiceResult<ShortStateHash> {
    match store
        .db
        .get(Table::ShorteventidCurrentstate, short.to_be_bytes())?
    {
        Some(bytes) => keys::read_u64(&bytes)
            .ok_or_else(|| ServiceError::internal("corrupt record in shorteventid_currentstate")),
        None => Ok(state_after),
    }
}

/// Notes, in `batch`, that the event at `pos` in room `room` came with a gap before it.
pub fn note_gap(batch: &mut Batch<'_>, room: u64, pos: u64) {
    batch.put(Table::ShortroomidGappos, keys::u64_pair(room, pos), b"");
}

/// The newest position in `[lower, upper)` of room `room` whose event came with a gap.
pub fn newest_gap(
    store: &EventStore,
    room: u64,
    lower: u64,
    upper: u64,
) -> ServiceResult<Option<u64>> {
    if lower >= upper {
        return Ok(None);
    }
    let from = keys::u64_pair(room, lower);
    let to = keys::u64_pair(room, upper);
    match store
        .db
        .scan_range(Table::ShortroomidGappos, &from, &to, true)
        .next()
    {
        Some(entry) => {
            let (key, _) = entry?;
            let pos = key
                .get(8..16)
                .and_then(keys::read_u64)
                .ok_or_else(|| ServiceError::internal("corrupt key in shortroomid_gappos"))?;
            Ok(Some(pos))
        }
        None => Ok(None),
    }
}
