//! Relations and aggregates: the relation index (`m.relates_to`), children waiting for
//! a parent not yet received, and the bundled aggregations kept per parent.

use crate::services::error::ServiceResult;
use crate::services::records::{decode, encode};
use crate::services::rooms::aggregates::{Aggregates, Child};
use crate::services::rooms::event_store::{EventStore, StoredEvent};
use crate::services::rooms::records::{EventMeta, RelationRecord};
use crate::services::rooms::state_store::ShortEventId;
use crate::storage::{keys, Batch, Table};
use serde_json::Value;

use super::head::RoomHead;

pub(super) fn relation_of(pdu: &Value) -> Option<(&str, &str)> {
    let relates = pdu.get("content")?.get("m.relates_to")?;
    Some((
        relates.get("rel_type")?.as_str()?,
        relates.get("event_id")?.as_str()?,
    ))
}

/// Relation index entries: `parent ++ pos ++ child`, and a thread root's latest activity.
#[allow(clippy::too_many_arguments)]
pub(super) fn index_relation(
    store: &EventStore,
    head: &RoomHead,
    batch: &mut Batch<'_>,
    rel_type: &str,
    parent_id: &str,
    child_event: &Child<'_>,
    pos: u64,
) -> ServiceResult<()> {
    let Some(parent) = store.state.find_event(parent_id)? else {
        // Not held yet (a message from before we joined, or history not yet backfilled):
        // indexed when it gets its place.
        let mut prefix = parent_id.as_bytes().to_vec();
        prefix.push(0xFF);
        let waiting = store
            .db
            .scan_prefix(Table::EventidPendingrelation, &prefix)
            .take(MAX_PENDING_PER_PARENT)
            .count();
        // Bounded per parent: an event id can be known before its event exists (a hash),
        // so a member could line up any number of relations for one future event.
        if parent_id.len() <= MAX_EVENT_ID && waiting < MAX_PENDING_PER_PARENT {
            store.pending_parents.note(parent_id);
            batch.put(
                Table::EventidPendingrelation,
                pending_key(parent_id, child_event.short),
                b"",
            );
        }
        return Ok(());
    };
    let parent_event = store.event(parent)?;
    if parent_event.meta.room != head.short {
        return Ok(());
    }
    let child = child_event.short;
    let kind = child_event
        .pdu
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("");
    // A thread's latest event is the one with the highest position: a reply placed as
    // history (backfill) below it leaves it, and the thread's place in `/threads`, alone.
    let previous_latest = if rel_type == "m.thread" {
        store
            .db
            .get(Table::ThreadrootLatestpos, parent.to_be_bytes())?
            .and_then(|b| keys::read_u64(&b))
    } else {
        None
    };
    let older = previous_latest.is_some_and(|latest| latest > pos);
    let mut aggregates = load_aggregates(store, parent)?;
    let kept_latest = aggregates.thread.as_ref().map(|t| t.latest);
    aggregates.add(&parent_event, rel_type, child_event);
    if let (true, Some(thread), Some(latest)) = (older, aggregates.thread.as_mut(), kept_latest) {
        thread.latest = latest;
    }
    if !aggregates.is_empty() {
        batch.put(
            Table::ShorteventidAggregates,
            parent.to_be_bytes(),
            encode(&aggregates),
        );
    }
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(&parent.to_be_bytes());
    key.extend_from_slice(&pos.to_be_bytes());
    key.extend_from_slice(&child.to_be_bytes());
    batch.put(
        Table::RelatesPosChild,
        key,
        encode(&RelationRecord {
            rel_type: rel_type.to_owned(),
            event_type: kind.to_owned(),
        }),
    );
    if rel_type == "m.thread" && !older {
        if let Some(previous) = previous_latest {
            batch.delete(
                Table::ShortroomidThreadpos,
                thread_key(head.short, previous, parent),
            );
        }
        batch.put(
            Table::ShortroomidThreadpos,
            thread_key(head.short, pos, parent),
            b"",
        );
        batch.put(
            Table::ThreadrootLatestpos,
            parent.to_be_bytes(),
            pos.to_be_bytes(),
        );
    }
    Ok(())
}

/// Relations kept waiting for one parent at most.
pub(super) const MAX_PENDING_PER_PARENT: usize = 1000;

/// Event ids longer than this are not kept as pending parents (the spec caps ids at 255).
pub(super) const MAX_EVENT_ID: usize = 255;

pub(super) fn pending_key(parent_id: &str, child: ShortEventId) -> Vec<u8> {
    let mut key = Vec::with_capacity(parent_id.len() + 9);
    key.extend_from_slice(parent_id.as_bytes());
    key.push(0xFF);
    key.extend_from_slice(&child.to_be_bytes());
    key
}

/// Indexes the relations that were waiting for `parent` (an event getting its timeline
/// place in `batch`, written there too): their index entries, the parent's aggregates
/// and a thread's latest activity, the children taken in position order.
pub(super) fn adopt_pending_children(
    store: &EventStore,
    head: &RoomHead,
    batch: &mut Batch<'_>,
    parent: (ShortEventId, &str, &Value),
) -> ServiceResult<()> {
    let (parent_short, parent_id, parent_pdu) = parent;
    if !store.pending_parents.may_be_awaited(parent_id) {
        return Ok(());
    }
    let mut prefix = parent_id.as_bytes().to_vec();
    prefix.push(0xFF);
    let mut children = Vec::new();
    for entry in store.db.scan_prefix(Table::EventidPendingrelation, &prefix) {
        let (key, _) = entry?;
        batch.delete(Table::EventidPendingrelation, &key);
        let Some(short) = key.get(prefix.len()..).and_then(keys::read_u64) else {
            continue;
        };
        let child = store.event(short)?;
        if child.meta.room == head.short && child.has_timeline_place() {
            children.push(child);
        }
    }
    if children.is_empty() {
        return Ok(());
    }
    children.sort_by_key(|c| c.meta.pos);
    let meta = EventMeta {
        room: head.short,
        pos: 0,
        state_before: 0,
        state_after: 0,
        replaces: 0,
        redacted_by: 0,
    };
    let parent_event =
        StoredEvent::from_pdu(parent_short, parent_id.to_owned(), parent_pdu.clone(), meta);
    let mut aggregates = load_aggregates(store, parent_short)?;
    let mut thread_pos = None;
    for child in &children {
        let Some((rel_type, to)) = relation_of(child.pdu()) else {
            continue;
        };
        if to != parent_id {
            continue;
        }
        let as_child = Child {
            short: child.short,
            event_id: &child.event_id,
            pdu: child.pdu(),
        };
        aggregates.add(&parent_event, rel_type, &as_child);
        let mut key = Vec::with_capacity(24);
        key.extend_from_slice(&parent_short.to_be_bytes());
        key.extend_from_slice(&child.meta.pos.to_be_bytes());
        key.extend_from_slice(&child.short.to_be_bytes());
        batch.put(
            Table::RelatesPosChild,
            key,
            encode(&RelationRecord {
                rel_type: rel_type.to_owned(),
                event_type: child.kind().to_owned(),
            }),
        );
        if rel_type == "m.thread" {
            thread_pos = Some(child.meta.pos);
        }
    }
    if !aggregates.is_empty() {
        batch.put(
            Table::ShorteventidAggregates,
            parent_short.to_be_bytes(),
            encode(&aggregates),
        );
    }
    if let Some(pos) = thread_pos {
        // Replies indexed directly (while the parent was held as an outlier) may already
        // have given the thread a latest position: the higher one stays.
        let previous = store
            .db
            .get(Table::ThreadrootLatestpos, parent_short.to_be_bytes())?
            .and_then(|b| keys::read_u64(&b));
        if previous.is_none_or(|p| p < pos) {
            if let Some(previous) = previous {
                batch.delete(
                    Table::ShortroomidThreadpos,
                    thread_key(head.short, previous, parent_short),
                );
            }
            batch.put(
                Table::ShortroomidThreadpos,
                thread_key(head.short, pos, parent_short),
                b"",
            );
            batch.put(
                Table::ThreadrootLatestpos,
                parent_short.to_be_bytes(),
                pos.to_be_bytes(),
            );
        }
    }
    Ok(())
}

pub(super) fn load_aggregates(
    store: &EventStore,
    parent: ShortEventId,
) -> ServiceResult<Aggregates> {
    Ok(store
        .db
        .get(Table::ShorteventidAggregates, parent.to_be_bytes())?
        .map(|b| decode(Table::ShorteventidAggregates, &b))
        .transpose()?
        .unwrap_or_default())
}

/// Recomputes a parent's aggregates from its children, leaving out `without` (a child
/// being redacted in the same batch).
pub(super) fn rebuild_aggregates(
    store: &EventStore,
    batch: &mut Batch<'_>,
    parent: ShortEventId,
    without: ShortEventId,
) -> ServiceResult<()> {
    let parent_event = store.event(parent)?;
    let aggregates =
        crate::services::rooms::relations::aggregates_of_children(store, &parent_event, |child| {
            Ok(child.short != without)
        })?;
    if aggregates.is_empty() {
        batch.delete(Table::ShorteventidAggregates, parent.to_be_bytes());
    } else {
        batch.put(
            Table::ShorteventidAggregates,
            parent.to_be_bytes(),
            encode(&aggregates),
        );
    }
    Ok(())
}

/// `room ++ u64 ++ short event`: the key shape of the thread and timestamp indexes.
pub(in crate::services::rooms) fn thread_key(room: u64, pos: u64, root: ShortEventId) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&room.to_be_bytes());
    key[8..16].copy_from_slice(&pos.to_be_bytes());
    key[16..].copy_from_slice(&root.to_be_bytes());
    key
}
