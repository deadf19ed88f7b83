//! Relations between events: edits, reactions, threads, references.
//!
//! Spec: client-server API, "Relationships" (`GET
//! /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`), "Threading" (`GET
//! /rooms/{roomId}/threads`), "Event replacements" and "Event annotations". Relations are
//! indexed when the child is written (`relates_pos_child`, in arrival order) and dropped
//! when it is redacted.

use serde_json::Value;

use super::aggregates::{Aggregates, Child};
use super::client_event::{client_event, Viewer};
use super::event_store::{EventStore, StoredEvent};
use super::history::{Direction, MAX_LIMIT};
use super::records::RelationRecord;
use super::state_store::ShortEventId;
use super::tokens;
use super::visibility::VisibilityCheck;
use super::writer::thread_key;
use super::Rooms;
use crate::services::error::{ServiceError, ServiceResult};
use crate::services::records::decode;
use crate::storage::{keys, Table};

/// What `/relations` asks for.
#[derive(Debug, Default)]
pub struct RelationsQuery<'a> {
    /// Only this relation type.
    pub rel_type: Option<&'a str>,
    /// Only children of this event type (needs `rel_type`).
    pub event_type: Option<&'a str>,
    /// Pagination token.
    pub from: Option<&'a str>,
    /// Stop token.
    pub to: Option<&'a str>,
    /// Page size.
    pub limit: usize,
    /// Newest first (`b`, the default) or oldest first (`f`).
    pub dir: Option<Direction>,
}

/// A page of relations or threads.
#[derive(Debug)]
pub struct RelationsPage {
    /// The events.
    pub chunk: Vec<Value>,
    /// Token for the next page, if there is one.
    pub next_batch: Option<String>,
}

fn child_key(parent: u64, pos: u64, child: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&parent.to_be_bytes());
    key[8..16].copy_from_slice(&pos.to_be_bytes());
    key[16..].copy_from_slice(&child.to_be_bytes());
    key
}

/// The aggregates of `parent` built from the children `keep` accepts, in arrival order
/// (the relation index holds no redacted child).
pub(super) fn aggregates_of_children(
    store: &EventStore,
    parent: &StoredEvent,
    mut keep: impl FnMut(&StoredEvent) -> ServiceResult<bool>,
) -> ServiceResult<Aggregates> {
    let mut aggregates = Aggregates::default();
    for entry in store
        .db
        .scan_prefix(Table::RelatesPosChild, &parent.short.to_be_bytes())
    {
        let (key, value) = entry?;
        let Some(child) = key.get(16..24).and_then(keys::read_u64) else {
            continue;
        };
        let record: RelationRecord = decode(Table::RelatesPosChild, &value)?;
        let event = store.event(child)?;
        if !keep(&event)? {
            continue;
        }
        aggregates.add(
            parent,
            &record.rel_type,
            &Child {
                short: child,
                event_id: &event.event_id,
                pdu: event.pdu(),
            },
        );
    }
    Ok(aggregates)
}

/// The aggregates stored for `parent` (every child counted), if it has any.
pub(super) fn stored_aggregates(
    store: &EventStore,
    parent: ShortEventId,
) -> ServiceResult<Option<Aggregates>> {
    store
        .db
        .get(Table::ShorteventidAggregates, parent.to_be_bytes())?
        .map(|bytes| decode(Table::ShorteventidAggregates, &bytes))
        .transpose()
}

/// What the viewer of `check` may see of `parent`'s aggregates (`stored`, which count
/// every child): the same aggregates when the viewer has been joined since before the
/// first child (every child was sent to them), else rebuilt from the children they may
/// see, so an edit or thread reply sent after they left is neither bundled nor counted.
pub(super) fn visible_aggregates(
    store: &EventStore,
    parent: &StoredEvent,
    stored: Aggregates,
    check: &mut VisibilityCheck<'_>,
) -> ServiceResult<Aggregates> {
    let first_child_pos = store
        .db
        .scan_prefix(Table::RelatesPosChild, &parent.short.to_be_bytes())
        .next()
        .transpose()?
        .and_then(|(key, _)| key.get(8..16).and_then(keys::read_u64));
    match first_child_pos {
        None => Ok(Aggregates::default()),
        Some(pos) if check.sees_everything_after(pos.saturating_sub(1)) => Ok(stored),
        Some(_) => aggregates_of_children(store, parent, |child| check.can_see(child)),
    }
}

impl Rooms {
    fn visible_parent<'a>(
        &'a self,
        viewer: Viewer<'a>,
        room_id: &str,
        event_id: &str,
    ) -> ServiceResult<(StoredEvent, VisibilityCheck<'a>)> {
        let access = self.read_access(viewer.user_id, room_id)?;
        let not_found = || ServiceError::not_found("Event not found");
        let parent = self
            .store
            .event_by_id(event_id)?
            .filter(|e| e.meta.room == access.room.short && e.has_timeline_place())
            .ok_or_else(not_found)?;
        let mut check = self.visibility_check(viewer.user_id, &access);
        if !check.can_see(&parent)? {
            return Err(not_found());
        }
        Ok((parent, check))
    }

    /// The children of an event, filtered by relation and event type.
    pub fn relations(
        &self,
        viewer: Viewer<'_>,
        room_id: &str,
        event_id: &str,
        query: &RelationsQuery<'_>,
    ) -> ServiceResult<RelationsPage> {
        let (parent, mut check) = self.visible_parent(viewer, room_id, event_id)?;
        let dir = query.dir.unwrap_or(Direction::Backward);
        let backwards = dir == Direction::Backward;
        let limit = query.limit.clamp(1, MAX_LIMIT);
        let from = query.from.map(tokens::parse).transpose()?;
        let to = query.to.map(tokens::parse).transpose()?;
        let (lo, hi) = if backwards {
            (
                to.map_or(0, |t| t.saturating_add(1)),
                from.map_or(u64::MAX, |f| f.saturating_add(1)),
            )
        } else {
            (
                from.map_or(0, |f| f.saturating_add(1)),
                to.map_or(u64::MAX, |t| t.saturating_add(1)),
            )
        };
        let lower = child_key(parent.short, lo, 0);
        let upper = child_key(parent.short, hi, 0);
        let mut chunk = Vec::new();
        let mut last_pos = None;
        let mut more = false;
        for entry in self
            .store
            .db
            .scan_range(Table::RelatesPosChild, &lower, &upper, backwards)
        {
            let (key, value) = entry?;
            let record: RelationRecord = decode(Table::RelatesPosChild, &value)?;
            let (Some(pos), Some(child)) = (
                key.get(8..16).and_then(keys::read_u64),
                key.get(16..24).and_then(keys::read_u64),
            ) else {
                continue;
            };
            if query.rel_type.is_some_and(|t| t != record.rel_type)
                || query.event_type.is_some_and(|t| t != record.event_type)
            {
                continue;
            }
            let event = self.store.event(child)?;
            if !check.can_see(&event)? {
                continue;
            }
            if chunk.len() >= limit {
                // Another match exists: the page ends at the last one returned.
                more = true;
                break;
            }
            last_pos = Some(pos);
            chunk.push(client_event(
                &self.store,
                &event,
                room_id,
                Some(viewer),
                Some(&mut check),
            )?);
        }
        let next_batch = match (more, last_pos) {
            (true, Some(pos)) if backwards => Some(tokens::token(pos.saturating_sub(1))),
            (true, Some(pos)) => Some(tokens::token(pos)),
            _ => None,
        };
        Ok(RelationsPage { chunk, next_batch })
    }

    /// `/threads`: thread roots, latest activity first; `participated` keeps the threads
    /// the viewer started or replied in.
    pub fn threads(
        &self,
        viewer: Viewer<'_>,
        room_id: &str,
        participated: bool,
        from: Option<&str>,
        limit: usize,
    ) -> ServiceResult<RelationsPage> {
        let access = self.read_access(viewer.user_id, room_id)?;
        let room = access.room.short;
        let mut check = self.visibility_check(viewer.user_id, &access);
        let limit = limit.clamp(1, MAX_LIMIT);
        let upper_pos = match from {
            Some(token) => tokens::parse(token)?.saturating_add(1),
            None => u64::MAX,
        };
        let lower = thread_key(room, 0, 0);
        let upper = thread_key(room, upper_pos, 0);
        let mut chunk = Vec::new();
        let mut next_batch = None;
        for entry in self
            .store
            .db
            .scan_range(Table::ShortroomidThreadpos, &lower, &upper, true)
        {
            let (key, _) = entry?;
            let (Some(pos), Some(root)) = (
                key.get(8..16).and_then(keys::read_u64),
                key.get(16..24).and_then(keys::read_u64),
            ) else {
                continue;
            };
            if chunk.len() >= limit {
                next_batch = Some(tokens::token(pos));
                break;
            }
            let root = self.store.event(root)?;
            if !check.can_see(&root)? {
                continue;
            }
            // A root whose replies all came after the viewer could see is no thread to them.
            let Some(stored) = stored_aggregates(&self.store, root.short)? else {
                continue;
            };
            if visible_aggregates(&self.store, &root, stored, &mut check)?
                .thread
                .is_none()
            {
                continue;
            }
            if participated && !self.participated(&root, viewer.user_id)? {
                continue;
            }
            chunk.push(client_event(
                &self.store,
                &root,
                room_id,
                Some(viewer),
                Some(&mut check),
            )?);
        }
        Ok(RelationsPage { chunk, next_batch })
    }

    fn participated(&self, root: &StoredEvent, user_id: &str) -> ServiceResult<bool> {
        if root.sender() == user_id {
            return Ok(true);
        }
        let prefix = root.short.to_be_bytes();
        for entry in self.store.db.scan_prefix(Table::RelatesPosChild, &prefix) {
            let (key, value) = entry?;
            let record: RelationRecord = decode(Table::RelatesPosChild, &value)?;
            if record.rel_type != "m.thread" {
                continue;
            }
            if let Some(child) = key.get(16..24).and_then(keys::read_u64) {
                if self.store.event(child)?.sender() == user_id {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}
