//! An event of a room's past, fetched from another server (backfill), inside its room's
//! writer: it passed checks 4 and 5 like any remote event and gets a place before every
//! event the room held, at a history position the caller reserved.
//!
//! Spec: server-server API, "Backfilling and retrieving missing events", and the client-server
//! API's `/messages`, which reads the room's timeline in order. Unlike a live event, history
//! changes nothing of the room's present: not its forward extremities, not its current state
//! or membership records, and nobody is notified (no stream change, no push). Check 6 (the
//! current state) does not apply to it, as Synapse does for backfilled events.

use serde_json::Value;

use super::head::RoomHead;
use super::persist::Edges;
use super::persist::{note_history_visibility, put_event, put_timeline_place, run_hooks};
use super::relations::{adopt_pending_children, index_relation, relation_of};
use super::remote_event::PduOutcome;
use super::WriterContext;
use crate::services::error::ServiceResult;
use crate::services::records::encode;
use crate::services::rooms::auth_index;
use crate::services::rooms::graph::{self, EventStatus, GraphRecord};
use crate::services::rooms::records::EventMeta;
use crate::services::rooms::state_store::{ShortEventId, ShortStateHash};
use crate::storage::{Batch, Table};

/// What the receive path knows of a historical event once checks 4 and 5 passed.
pub(super) struct History {
    /// The snapshot before it.
    pub before: ShortStateHash,
    /// The snapshot after it (written in its batch).
    pub after: ShortStateHash,
    /// The event its own state key held before it, for a state event.
    pub replaces: ShortEventId,
    /// The state before it has `joined` or `invited` history visibility.
    pub restricted_before: bool,
    /// The redaction it is stored under (0: none; its PDU is then redacted already).
    pub redacted_by: ShortEventId,
    /// For a redaction: the event it redacts (read from the event as it came) and
    /// whether its sender has the power to redact in the state before it, which judges it.
    pub redaction: Option<(String, bool)>,
    /// Its history position.
    pub pos: u64,
}

/// Whether the room of `head` can take history: none of its events is at a position
/// from before the history space (an old database's). Then every history position handed
/// out now is below all of its events, history placed earlier included.
pub(super) fn fits(ctx: &WriterContext, head: &RoomHead) -> ServiceResult<bool> {
    let floor = ctx.store.stream.history_floor();
    Ok(ctx
        .store
        .timeline(head.short, 0, u64::MAX, false, 1)?
        .first()
        .is_none_or(|(first, _)| *first > floor))
}

/// Stores `event` as history of the room of `head`.
pub(super) fn place(
    ctx: &WriterContext,
    head: &mut RoomHead,
    (short, pdu, event_id): (ShortEventId, &Value, &str),
    edges: Edges,
    mut batch: Batch<'_>,
    history: History,
) -> ServiceResult<PduOutcome> {
    let store = &ctx.store;
    let pos = history.pos;
    let graph_record = GraphRecord {
        depth: pdu.get("depth").and_then(Value::as_u64).unwrap_or(0),
        prev: edges.prev,
        auth: edges.auth,
        status: EventStatus::Accepted,
    };
    let state_key = auth_index::state_key_of(store, pdu)?;
    graph::write(&mut batch, short, &graph_record, state_key);
    let prev_ids: Vec<String> = crate::core::pdu::event_ids(pdu, "prev_events")
        .map(str::to_owned)
        .collect();
    graph::note_unknown_prevs(store, &mut batch, &prev_ids, short)?;
    let meta = EventMeta {
        room: head.short,
        pos,
        state_before: history.before,
        state_after: history.after,
        replaces: history.replaces,
        redacted_by: history.redacted_by,
    };
    put_event(&mut batch, (short, event_id), pdu, &meta);
    put_timeline_place(&mut batch, (short, event_id), pdu, &meta);

    if let Some((rel_type, parent_id)) = relation_of(pdu) {
        let child = crate::services::rooms::aggregates::Child {
            short,
            event_id,
            pdu,
        };
        index_relation(store, head, &mut batch, rel_type, parent_id, &child, pos)?;
    }
    // Backfill goes from the newest history back: reactions, edits and replies placed
    // before their parent wait for it.
    adopt_pending_children(store, head, &mut batch, (short, event_id, pdu))?;
    let mut redacted = None;
    if let Some((target, power)) = &history.redaction {
        // A target older still is not held yet: the redaction waits for it.
        let event = (short, pdu);
        redacted =
            super::remote_event::redact_or_wait(ctx, head, &mut batch, event, target, *power)?;
    }
    // Readers check history visibility per event only in rooms that ever restricted it:
    // history may be where the room did.
    let mut record = head.record.clone();
    record.visibility_restricted |= history.restricted_before;
    note_history_visibility(&mut record, pdu);
    if record.visibility_restricted != head.record.visibility_restricted {
        batch.put(
            Table::ShortroomidRoom,
            head.short.to_be_bytes(),
            encode(&record),
        );
    }
    run_hooks(
        ctx,
        head,
        (pdu, short, pos),
        redacted.as_ref(),
        false,
        &mut batch,
    )?;
    store.db.write_relaxed(batch)?;
    if redacted.is_some() {
        for hook in &ctx.hooks {
            hook.history_redaction_written(head.short);
        }
    }
    head.record = record;
    tracing::debug!(event = %event_id, room = %head.record.room_id, pos, "history placed");
    Ok(PduOutcome::Accepted)
}
