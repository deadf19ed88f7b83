//! Our user's join through a resident server: the room as its `send_join` answer tells
//! it, taken in by the room's writer.
//!
//! Spec: server-server API, "Joining Rooms" (the joining server "must verify the
//! events", then "the state before the join" is the room's state). The events passed
//! checks 1 to 3 on the way in (see the rooms service's `remote_join`); here each one of
//! the auth chain and the state is held as an outlier after check 4 (the auth rules
//! against its own auth events; the create event first, then by depth, an event whose
//! auth events are not in yet waiting for another pass), the state before the join is
//! saved from the state events that passed, and the join itself goes through checks 4
//! and 5 against that state and becomes the room's only forward extremity. A room we
//! did not have is made here, with no event of its own.

use serde_json::Value;

use super::head::RoomHead;
use super::remote_event::{self, PduOutcome, RemoteEvent};
use super::{WriterContext, Written};
use crate::core::RoomVersion;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::records::encode;
use crate::services::rooms::event_store::EventStore;
use crate::services::rooms::graph::{self, EventStatus};
use crate::services::rooms::records::RoomRecord;
use crate::services::rooms::state_store::{ShortEventId, ShortStateKey, StateMap};
use crate::storage::Table;

/// Passes over the events at most (each takes in those whose auth events are in).
const MAX_PASSES: usize = 16;

/// What the join's answer holds, checked for format, signatures and hashes.
pub struct RemoteJoin {
    /// The room's version.
    pub version: RoomVersion,
    /// The auth chain and state events, in any order, each once.
    pub events: Vec<RemoteEvent>,
    /// The ids of the state events (the state before the join).
    pub state_ids: Vec<String>,
    /// Our join as the resident server kept it.
    pub join: RemoteEvent,
    /// `Some(servers_in_room)` when the answer left out the room's members
    /// (`members_omitted`): the room is held with a partial state until the resync.
    pub partial: Option<Vec<String>>,
}

/// Takes in the room and the join; answers what became of the join.
pub(super) fn join(
    ctx: &WriterContext,
    room_id: &str,
    head: &mut Option<RoomHead>,
    job: RemoteJoin,
    written: &mut Written,
) -> ServiceResult<PduOutcome> {
    let store = &ctx.store;
    if head.is_none() {
        *head = Some(match store.room(room_id)? {
            Some(_) => RoomHead::load(store, room_id)?,
            None => empty_room(ctx, room_id, job.version)?,
        });
    }
    // A room made here for a join that then fails keeps its record (the events taken in
    // point at it) with no state: the receive entry point treats such a room as one we
    // are not in.
    take_in(ctx, room_id, head, job, written)
}

fn take_in(
    ctx: &WriterContext,
    room_id: &str,
    head: &mut Option<RoomHead>,
    job: RemoteJoin,
    written: &mut Written,
) -> ServiceResult<PduOutcome> {
    let store = &ctx.store;
    let Some(current) = head.as_mut() else {
        return Err(ServiceError::internal("the room's head is not loaded"));
    };
    if current.version != job.version {
        // Only a room we hold no state of (one an invite told us of) takes the version
        // the resident server answers.
        if current.record.state != 0 {
            return Err(ServiceError::invalid_param(format!(
                "The room is of version {} here, {} there",
                current.version, job.version
            )));
        }
        current.adopt_version(store, job.version)?;
    }
    take_in_outliers(ctx, room_id, current, job.events, written)?;
    // The state before the join: the state events that were taken in.
    let changes = state_of(store, &job.state_ids)?;
    let mut batch = store.db.batch();
    let snapshot = store.state.save(None, &changes, &mut batch)?;
    store.db.write_relaxed(batch)?;
    let map: StateMap = changes
        .iter()
        .filter_map(|(key, short)| short.map(|s| (*key, s)))
        .collect();
    let mut join = job.join;
    join.outlier = false;
    // A join starts the room afresh: a partial state of an earlier join is over, and one
    // of this join begins with it (its members are then taken from the join's auth
    // events, as for any event on a partial state).
    let earlier = current.record.partial_state.clone();
    super::partial_state::begin(current, &join.event_id, job.partial);
    join.given_state = Some((snapshot, map));
    // Accepted, the join writes the room's record with the mark.
    let outcome = remote_event::receive(ctx, current, join, written)?;
    if outcome != PduOutcome::Accepted {
        // Not joined: the room stays as it was.
        current.record.partial_state = earlier;
        current.remote_servers = None;
    }
    Ok(outcome)
}

/// Takes in `events` (an auth chain and state, checked for format, signatures and
/// hashes) as outliers after check 4: the create event first, then by depth, an event
/// whose auth events are not in yet waiting for another pass.
pub(super) fn take_in_outliers(
    ctx: &WriterContext,
    room_id: &str,
    current: &mut RoomHead,
    events: Vec<RemoteEvent>,
    written: &mut Written,
) -> ServiceResult<()> {
    let store = &ctx.store;
    let create_key = store.state.state_key("m.room.create", "")?;
    let mut pending = events;
    pending.sort_by_key(|e| {
        let kind = e.pdu.get("type").and_then(Value::as_str);
        let depth = e.pdu.get("depth").and_then(Value::as_u64).unwrap_or(0);
        (kind != Some("m.room.create"), depth)
    });
    for _ in 0..MAX_PASSES {
        let mut waiting = Vec::new();
        let before = pending.len();
        for mut event in pending {
            event.outlier = true;
            let is_create = event.pdu.get("type").and_then(Value::as_str) == Some("m.room.create");
            let id = event.event_id.clone();
            match remote_event::receive(ctx, current, event.clone(), written)? {
                PduOutcome::MissingEvents(_) => waiting.push(event),
                outcome => {
                    if is_create && !current.state.contains_key(&create_key) {
                        // From v12 the create event is found through the room's state
                        // rather than among the auth events.
                        if let Some(short) = store.state.find_event(&id)? {
                            current.state.insert(create_key, short);
                        }
                    }
                    if !matches!(outcome, PduOutcome::Outlier | PduOutcome::AlreadyKnown) {
                        tracing::info!(room = %room_id, event = %id, ?outcome, "an event of a state answer was not taken");
                    }
                }
            }
        }
        let progress = waiting.len() < before;
        pending = waiting;
        if pending.is_empty() || !progress {
            break;
        }
    }
    for event in &pending {
        tracing::info!(room = %room_id, event = %event.event_id, "an event of a state answer lacks auth events");
    }
    Ok(())
}

/// The state the events `state_ids` make (each under its own key), leaving out those not
/// taken in or rejected.
pub(super) fn state_of(
    store: &EventStore,
    state_ids: &[String],
) -> ServiceResult<Vec<(ShortStateKey, Option<ShortEventId>)>> {
    let mut changes = Vec::with_capacity(state_ids.len());
    for id in state_ids {
        let Some(short) = store.state.find_event(id)? else {
            continue;
        };
        if let Some(record) = graph::record(store, short)? {
            if matches!(record.status, EventStatus::Rejected { .. }) {
                continue;
            }
        }
        let event = store.event(short)?;
        let Some(state_key) = event.state_key() else {
            continue;
        };
        let key = store.state.state_key(event.kind(), state_key)?;
        changes.push((key, Some(short)));
    }
    Ok(changes)
}

/// The record of a room we learn of from another server, with no event yet.
pub(super) fn empty_room(
    ctx: &WriterContext,
    room_id: &str,
    version: RoomVersion,
) -> ServiceResult<RoomHead> {
    let store = &ctx.store;
    let short = store.allocate_room();
    let record = RoomRecord::new(room_id, version.as_str());
    let mut batch = store.db.batch();
    batch.put(Table::RoomidShortroomid, room_id, short.to_be_bytes());
    batch.put(Table::ShortroomidRoom, short.to_be_bytes(), encode(&record));
    store.db.write_relaxed(batch)?;
    RoomHead::load(store, room_id)
}
