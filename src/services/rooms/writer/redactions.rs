//! Redactions: the client-server rules on a local redaction, and applying a redaction
//! to the event it targets.

use std::sync::Arc;

use crate::core::redaction::redact;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::records::encode;
use crate::services::rooms::event_store::{
    pdu_key, timeline_key, timeline_value, EventStore, StoredEvent,
};
use crate::services::rooms::records::EventMeta;
use crate::services::rooms::state_store::ShortEventId;
use crate::storage::{Batch, Table};

use super::head::RoomHead;
use super::relations::{rebuild_aggregates, relation_of, MAX_EVENT_ID};
use super::{EventDraft, WriterContext};

/// Client-server rules on redactions beyond the auth rules: the target must be in this
/// room, and redacting someone else's event takes the `redact` power level.
pub(super) fn check_redaction(
    ctx: &WriterContext,
    head: &mut RoomHead,
    draft: &EventDraft,
) -> ServiceResult<()> {
    let store = &ctx.store;
    let target_id = draft
        .redacts
        .as_deref()
        .ok_or_else(|| ServiceError::bad_json("a redaction needs the event it redacts"))?;
    let target = store
        .event_by_id(target_id)?
        .filter(|t| t.meta.room == head.short)
        .ok_or_else(|| ServiceError::not_found("Event not found in this room"))?;
    if target.sender() == draft.sender {
        return Ok(());
    }
    let levels = head.power_levels(store)?;
    if levels.user(&draft.sender) < i128::from(levels.redact) {
        return Err(ServiceError::forbidden(
            "You don't have permission to redact other users' events",
        ));
    }
    Ok(())
}

/// Rewrites the redacted event's PDU in its redacted form and records who redacted it;
/// its relation entry goes too (a redacted edit or reaction no longer counts). Answers the
/// event as it was, when the redaction applied.
pub(super) fn apply_redaction(
    store: &EventStore,
    head: &mut RoomHead,
    batch: &mut Batch<'_>,
    target_id: &str,
    redaction: ShortEventId,
) -> ServiceResult<Option<StoredEvent>> {
    let Some(target) = store.event_by_id(target_id)? else {
        return Ok(None);
    };
    if target.meta.room != head.short || target.meta.redacted_by != 0 {
        return Ok(None);
    }
    if let Some((_, parent_id)) = relation_of(target.pdu()) {
        if let Some(parent) = store.state.find_event(parent_id)? {
            let mut key = Vec::with_capacity(24);
            key.extend_from_slice(&parent.to_be_bytes());
            key.extend_from_slice(&target.meta.pos.to_be_bytes());
            key.extend_from_slice(&target.short.to_be_bytes());
            batch.delete(Table::RelatesPosChild, key);
            rebuild_aggregates(store, batch, parent, target.short)?;
        }
    }
    let redacted = redact(target.pdu(), head.version);
    batch.put(
        Table::ShortroomidShorteventidPdu,
        pdu_key(target.meta.room, target.short),
        encode(&redacted),
    );
    let meta = EventMeta {
        redacted_by: redaction,
        ..target.meta
    };
    batch.put(
        Table::ShorteventidMeta,
        target.short.to_be_bytes(),
        meta.encode_with_id(&target.event_id),
    );
    if target.has_timeline_place() {
        // The timeline entry carries a copy of the record.
        batch.put(
            Table::ShortroomidPosShorteventid,
            timeline_key(meta.room, meta.pos),
            timeline_value(target.short, &meta, &target.event_id),
        );
    }
    // A redacted state event stays in the state, redacted: the head's cache holds the
    // redacted copy at once (dropping the parsed one was not enough: the hooks of this
    // batch read the state again before it is written, and found the copy in storage
    // unredacted), and the power levels parsed with the old copy go with it. Other
    // events are only dropped (the cache is for state events).
    if target.state_key().is_some() {
        head.cache.insert(
            target.short,
            Arc::new(StoredEvent::from_pdu(
                target.short,
                target.event_id.clone(),
                redacted,
                meta,
            )),
        );
    } else {
        head.cache.remove(&target.short);
    }
    Ok(Some(target))
}

/// Redactions kept waiting for one event in one room at most (more are accepted but not
/// kept).
const MAX_WAITING: usize = 16;
/// One waiting redaction: its short id and whether its sender had the power to redact.
const WAITING_LEN: usize = 9;

/// The key of the redactions waiting for `target_id` in the room `room`: each room's
/// writer keeps its own (another room's cannot fill its places), under the room's prefix.
fn waiting_key(target_id: &str, room: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + target_id.len());
    key.extend_from_slice(&room.to_be_bytes());
    key.extend_from_slice(target_id.as_bytes());
    key
}

/// Whether any redaction may wait in the room of `head`: looked up once per head, so
/// that the events of a room without any cost no read.
fn may_wait(store: &EventStore, head: &mut RoomHead) -> ServiceResult<bool> {
    if let Some(known) = head.redactions_waiting {
        return Ok(known);
    }
    let prefix = head.short.to_be_bytes();
    let any = match store
        .db
        .scan_prefix(Table::ShortroomidEventidPendingredaction, &prefix)
        .next()
    {
        Some(entry) => entry.map(|_| true)?,
        None => false,
    };
    head.redactions_waiting = Some(any);
    Ok(any)
}

/// Whether a redaction naming `target_id` may wait for it: the id is the sender's word,
/// and one that cannot name an event (not `$…`, or longer than the spec's 255 bytes)
/// never comes, so its row would stay for good.
fn may_be_waited_for(target_id: &str) -> bool {
    target_id.len() <= MAX_EVENT_ID && target_id.starts_with('$')
}

/// Keeps an accepted redaction whose target is not held yet, to be applied when the
/// target comes (backfill goes from the newest history back, so a redaction often comes
/// before what it redacts). `power`: whether its sender had the power to redact when it
/// came; without it, the redaction applies only if both come from one server.
pub(super) fn wait_for_target(
    store: &EventStore,
    head: &mut RoomHead,
    batch: &mut Batch<'_>,
    target_id: &str,
    (redaction, power): (ShortEventId, bool),
) -> ServiceResult<()> {
    if !may_be_waited_for(target_id) {
        return Ok(());
    }
    head.redactions_waiting = Some(true);
    let key = waiting_key(target_id, head.short);
    let mut waiting = store
        .db
        .get(Table::ShortroomidEventidPendingredaction, &key)?
        .unwrap_or_default();
    if waiting.len() >= MAX_WAITING * WAITING_LEN {
        return Ok(());
    }
    waiting.extend_from_slice(&redaction.to_be_bytes());
    waiting.push(u8::from(power));
    batch.put(Table::ShortroomidEventidPendingredaction, key, waiting);
    Ok(())
}

/// The redactions waiting for `event_id` in the room of `head` (see [`wait_for_target`]),
/// in the order they came: each one's short id and whether its sender had the power to
/// redact.
pub(super) fn waiting_for(
    store: &EventStore,
    head: &mut RoomHead,
    event_id: &str,
) -> ServiceResult<Vec<(ShortEventId, bool)>> {
    if !may_wait(store, head)? {
        return Ok(Vec::new());
    }
    let Some(waiting) = store.db.get(
        Table::ShortroomidEventidPendingredaction,
        waiting_key(event_id, head.short),
    )?
    else {
        return Ok(Vec::new());
    };
    Ok(waiting
        .chunks_exact(WAITING_LEN)
        .filter_map(|entry| {
            let short = crate::storage::keys::read_u64(&entry[..8])?;
            Some((short, entry[8] != 0))
        })
        .collect())
}

/// Moves the waiting redactions of older builds (`eventid_pendingredaction`, keyed by the
/// target's id, then also by room after a `0xFF`) to their rooms' rows: each redaction's
/// room comes from its own record. Run at start-up, before any writer; answers how
/// many redactions moved and how many were dropped (no record, or a row over
/// [`MAX_WAITING`]).
pub(crate) fn move_rows_keyed_by_event(store: &EventStore) -> ServiceResult<(usize, usize)> {
    let (mut moved, mut dropped) = (0, 0);
    let mut batch = store.db.batch();
    for entry in store.db.scan_prefix(Table::EventidPendingredaction, &[]) {
        let (key, value) = entry?;
        let target = key.split(|b| *b == 0xFF).next().unwrap_or_default();
        let target = String::from_utf8_lossy(target);
        let mut rows: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
        for waiting in value.chunks_exact(WAITING_LEN) {
            // A read that fails stops the start-up; a redaction without a record goes.
            let record = match crate::storage::keys::read_u64(&waiting[..8]) {
                Some(short) => store.db.get(Table::ShorteventidMeta, short.to_be_bytes())?,
                None => None,
            };
            let room = record
                .as_deref()
                .and_then(crate::services::rooms::records::EventMeta::decode)
                .map(|meta| meta.room);
            let Some(room) = room else {
                dropped += 1;
                continue;
            };
            let row = match rows.entry(room) {
                std::collections::btree_map::Entry::Occupied(row) => row.into_mut(),
                std::collections::btree_map::Entry::Vacant(row) => row.insert(
                    store
                        .db
                        .get(
                            Table::ShortroomidEventidPendingredaction,
                            waiting_key(&target, room),
                        )?
                        .unwrap_or_default(),
                ),
            };
            if row.len() >= MAX_WAITING * WAITING_LEN {
                dropped += 1;
                continue;
            }
            row.extend_from_slice(waiting);
            moved += 1;
        }
        for (room, row) in rows {
            batch.put(
                Table::ShortroomidEventidPendingredaction,
                waiting_key(&target, room),
                row,
            );
        }
        batch.delete(Table::EventidPendingredaction, key);
    }
    if !batch.is_empty() {
        store.db.commit_blocking(batch)?;
    }
    Ok((moved, dropped))
}

/// The redactions waiting for `event_id` in the room `room` are done with (it came).
pub(super) fn stop_waiting(store: &EventStore, event_id: &str, room: u64) -> ServiceResult<()> {
    let mut batch = store.db.batch();
    batch.delete(
        Table::ShortroomidEventidPendingredaction,
        waiting_key(event_id, room),
    );
    store.db.write_relaxed(batch)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_can_be_an_event_id_is_waited_for() {
        assert!(may_be_waited_for(
            "$yRzSgsydKkkEcwFZKVQDQoFvFRSDBvnyvjvXVoMRV7I"
        ));
        assert!(may_be_waited_for("$old-style:example.org"));
        assert!(!may_be_waited_for(&format!(
            "${}",
            "a".repeat(MAX_EVENT_ID)
        )));
        assert!(!may_be_waited_for("not an id"));
        assert!(!may_be_waited_for(""));
    }
}
