//! Reading a room's history: one event, a page of events, an event's context.
//!
//! Spec: client-server API, `GET /rooms/{roomId}/event/{eventId}`, `GET
//! /rooms/{roomId}/messages`, `GET /rooms/{roomId}/context/{eventId}`. Every event passes the
//! history visibility rules for the reader; one they may not see is left out of a page,
//! and answered 404 `M_NOT_FOUND` when asked for by id.

use std::collections::BTreeSet;

use serde_json::Value;

use super::client_event::{client_event, Viewer};
use super::event_store::{Room, StoredEvent};
use super::filter::RoomEventFilter;
use super::tokens;
use super::visibility::VisibilityCheck;
use super::{ReadAccess, Rooms};
use crate::services::error::{ErrorKind, ServiceError, ServiceResult};

/// Events scanned per page at most, however many the filter drops (then `end` lets the
/// client go on).
const MAX_SCANNED: usize = 2000;
/// The most events a page holds.
pub const MAX_LIMIT: usize = 1000;

/// A page of `/messages`.
#[derive(Debug)]
pub struct MessagesPage {
    /// The token the page starts at.
    pub start: String,
    /// Where the next page starts; `None` when there are no more events.
    pub end: Option<String>,
    /// The events, in the order of the request's direction.
    pub chunk: Vec<Value>,
    /// Member events for lazy-loading clients.
    pub state: Vec<Value>,
}

/// `/context` of an event.
#[derive(Debug)]
pub struct EventContext {
    /// Token before `events_before`.
    pub start: String,
    /// Token after `events_after`.
    pub end: String,
    /// Earlier events, newest first.
    pub events_before: Vec<Value>,
    /// The event.
    pub event: Value,
    /// Later events, oldest first.
    pub events_after: Vec<Value>,
    /// The state at the last event returned.
    pub state: Vec<Value>,
}

/// How `/messages` walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Towards older events (`dir=b`).
    Backward,
    /// Towards newer events (`dir=f`).
    Forward,
}

/// Events found by [`Rooms::scan_timeline`].
pub struct Scan {
    /// The events kept, in the scan's direction.
    pub events: Vec<StoredEvent>,
    /// Position of the last event scanned (returned or not), if the range was not used up.
    pub more_after: Option<u64>,
}

impl Rooms {
    /// An event of the room that `check`'s viewer may see; 404 `M_NOT_FOUND` otherwise.
    pub fn visible_event_for(
        &self,
        access: &ReadAccess,
        check: &mut VisibilityCheck<'_>,
        event_id: &str,
    ) -> ServiceResult<StoredEvent> {
        let not_found = || ServiceError::not_found("Event not found");
        let event = self
            .store
            .event_by_id(event_id)?
            .filter(|e| e.meta.room == access.room.short && e.has_timeline_place())
            .ok_or_else(not_found)?;
        if !check.can_see(&event)? {
            return Err(not_found());
        }
        Ok(event)
    }

    /// One event the viewer may see. Spec: `GET /rooms/{roomId}/event/{eventId}`: 404
    /// `M_NOT_FOUND` alike for an unknown event and one the user may not see, also in a
    /// room they may not read (no 403 that would tell the event exists).
    pub fn event_for(
        &self,
        viewer: Viewer<'_>,
        room_id: &str,
        event_id: &str,
    ) -> ServiceResult<Value> {
        let access = match self.read_access(viewer.user_id, room_id) {
            Err(e) if e.kind == ErrorKind::Forbidden => {
                return Err(ServiceError::not_found("Event not found"))
            }
            other => other?,
        };
        let mut check = self.visibility_check(viewer.user_id, &access);
        let event = self.visible_event_for(&access, &mut check, event_id)?;
        client_event(&self.store, &event, room_id, Some(viewer), Some(&mut check))
    }

    /// The viewer's pending invite to `room_id`, if `event_id` is it: an invited user may
    /// read nothing of the room yet (as Synapse), but their invite is theirs to see (it
    /// is what `/sync` shows them, and what `/notifications` lists, as Synapse).
    pub fn pending_invite_for(
        &self,
        viewer: Viewer<'_>,
        room_id: &str,
        event_id: &str,
    ) -> ServiceResult<Option<Value>> {
        let pending = self
            .store
            .membership(viewer.user_id, room_id)?
            .is_some_and(|m| m.membership == "invite" && m.event_id == event_id);
        if !pending {
            return Ok(None);
        }
        let Some(event) = self.store.event_by_id(event_id)? else {
            return Ok(None);
        };
        let in_room = self
            .store
            .room(room_id)?
            .is_some_and(|room| room.short == event.meta.room);
        let theirs = event.kind() == "m.room.member" && event.state_key() == Some(viewer.user_id);
        if !in_room || !theirs {
            return Ok(None);
        }
        client_event(&self.store, &event, room_id, Some(viewer), None).map(Some)
    }

    /// An event by its id alone, as `event_for` shows it in its room. Spec: the
    /// deprecated `GET /events/{eventId}`. 404 `M_NOT_FOUND` for an unknown event and,
    /// like `/rooms/{roomId}/event/{eventId}`, for one the user may not see.
    pub fn event_anywhere_for(&self, viewer: Viewer<'_>, event_id: &str) -> ServiceResult<Value> {
        let event = self
            .store
            .event_by_id(event_id)?
            .ok_or_else(|| ServiceError::not_found("Event not found"))?;
        let room = self.store.room_by_short(event.meta.room)?;
        self.event_for(viewer, &room.record.room_id, event_id)
    }

    /// The visibility check of `user_id` in the room of `access`.
    pub fn visibility_check<'a>(
        &'a self,
        user_id: &'a str,
        access: &ReadAccess,
    ) -> VisibilityCheck<'a> {
        VisibilityCheck::new(&self.store, user_id, access.membership.as_ref())
            .in_room(&access.room.record)
    }

    /// Scans the timeline positions `lower <= pos < upper` in direction `dir`, keeping
    /// events that are visible and pass the filter, up to `limit`.
    #[allow(clippy::too_many_arguments)]
    pub fn scan_timeline(
        &self,
        room: &Room,
        check: &mut VisibilityCheck<'_>,
        filter: &RoomEventFilter,
        lower: u64,
        upper: u64,
        dir: Direction,
        limit: usize,
    ) -> ServiceResult<Scan> {
        let backwards = dir == Direction::Backward;
        let (mut lower, mut upper) = (lower, upper);
        let mut events = Vec::new();
        let mut scanned = 0;
        loop {
            if lower >= upper || events.len() >= limit || scanned >= MAX_SCANNED {
                let more = lower < upper;
                let last = if backwards { upper } else { lower };
                return Ok(Scan {
                    events,
                    more_after: more.then_some(last),
                });
            }
            // The first page asks for just what is missing (most events pass); pages after
            // it, where the filter or visibility dropped some, ask for more at a time.
            let missing = limit - events.len();
            let want = match scanned {
                0 => missing.min(256),
                _ => missing.clamp(16, 256),
            };
            let page = self
                .store
                .timeline_events(room.short, (lower, upper), backwards, want)?;
            if page.is_empty() {
                return Ok(Scan {
                    events,
                    more_after: None,
                });
            }
            for (pos, event) in page {
                scanned += 1;
                if backwards {
                    upper = pos;
                } else {
                    lower = pos + 1;
                }
                if filter.matches(&event) && check.can_see(&event)? {
                    events.push(event);
                    if events.len() >= limit {
                        break;
                    }
                }
            }
        }
    }

    /// The token just before the oldest event the room holds (its history may go on on
    /// other servers); `None` for a room with no event.
    pub fn token_before_oldest(&self, room_id: &str) -> ServiceResult<Option<String>> {
        let Some(room) = self.store.room(room_id)? else {
            return Ok(None);
        };
        let oldest = self.store.timeline(room.short, 0, u64::MAX, false, 1)?;
        Ok(oldest
            .first()
            .map(|(pos, _)| tokens::token(pos.saturating_sub(1))))
    }

    /// `/messages`: a page of the room's events in one direction.
    #[allow(clippy::too_many_arguments)]
    pub fn messages(
        &self,
        viewer: Viewer<'_>,
        room_id: &str,
        from: Option<&str>,
        to: Option<&str>,
        dir: Direction,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> ServiceResult<MessagesPage> {
        let access = self.read_access(viewer.user_id, room_id)?;
        let room = &access.room;
        let limit = limit.clamp(1, MAX_LIMIT);
        let from = from.map(tokens::parse).transpose()?;
        let to = to.map(tokens::parse).transpose()?;
        // Token n is the point after position n: backwards covers positions <= n, forwards > n.
        let (start, lower, upper) = match dir {
            Direction::Backward => {
                let from = from.unwrap_or(room.record.last_pos);
                (
                    from,
                    to.map_or(0, |t| t.saturating_add(1)),
                    from.saturating_add(1),
                )
            }
            Direction::Forward => {
                let from = from.unwrap_or(0);
                (
                    from,
                    from.saturating_add(1),
                    to.map_or(u64::MAX, |t| t.saturating_add(1)),
                )
            }
        };
        let mut check = self.visibility_check(viewer.user_id, &access);
        let scan = self.scan_timeline(room, &mut check, filter, lower, upper, dir, limit)?;
        let end = match (dir, scan.more_after) {
            (_, None) => None,
            (Direction::Backward, Some(upper)) => Some(tokens::token(upper.saturating_sub(1))),
            (Direction::Forward, Some(lower)) => Some(tokens::token(lower.saturating_sub(1))),
        };
        let state = if filter.lazy_load_members {
            self.member_events_of_senders(&scan.events, room_id)?
        } else {
            Vec::new()
        };
        let chunk = scan
            .events
            .iter()
            .map(|e| client_event(&self.store, e, room_id, Some(viewer), Some(&mut check)))
            .collect::<ServiceResult<_>>()?;
        Ok(MessagesPage {
            start: tokens::token(start),
            end,
            chunk,
            state,
        })
    }

    /// The member event of each sender as it was when they sent (their display name then),
    /// for lazy-loading clients.
    fn member_events_of_senders(
        &self,
        events: &[StoredEvent],
        room_id: &str,
    ) -> ServiceResult<Vec<Value>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for event in events {
            let sender = event.sender();
            if !seen.insert(sender) {
                continue;
            }
            if let Some(member) =
                self.store
                    .state_event(event.meta.state_after, "m.room.member", sender)?
            {
                out.push(client_event(&self.store, &member, room_id, None, None)?);
            }
        }
        Ok(out)
    }

    /// `/context/{eventId}`: the event, up to `limit` events around it, and the state.
    pub fn context(
        &self,
        viewer: Viewer<'_>,
        room_id: &str,
        event_id: &str,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> ServiceResult<EventContext> {
        let access = self.read_access(viewer.user_id, room_id)?;
        let mut check = self.visibility_check(viewer.user_id, &access);
        let event = self.visible_event_for(&access, &mut check, event_id)?;
        let limit = limit.min(MAX_LIMIT);
        let before_limit = limit / 2;
        let after_limit = limit - before_limit;
        let pos = event.meta.pos;
        let before = self.scan_timeline(
            &access.room,
            &mut check,
            filter,
            0,
            pos,
            Direction::Backward,
            before_limit,
        )?;
        let after = self.scan_timeline(
            &access.room,
            &mut check,
            filter,
            pos + 1,
            u64::MAX,
            Direction::Forward,
            after_limit,
        )?;
        let start = before
            .events
            .last()
            .map_or(pos, |e| e.meta.pos)
            .saturating_sub(1);
        let end = after.events.last().map_or(pos, |e| e.meta.pos);
        let last = after.events.last().unwrap_or(&event);
        let state = if filter.lazy_load_members {
            let mut all: Vec<StoredEvent> = before.events.clone();
            all.push(event.clone());
            all.extend(after.events.iter().cloned());
            self.member_events_of_senders(&all, room_id)?
        } else {
            self.store
                .state_events(last.meta.state_after, None)?
                .iter()
                .map(|e| client_event(&self.store, e, room_id, None, Some(&mut check)))
                .collect::<ServiceResult<_>>()?
        };
        let event = client_event(&self.store, &event, room_id, Some(viewer), Some(&mut check))?;
        let mut render = |events: &[StoredEvent]| -> ServiceResult<Vec<Value>> {
            events
                .iter()
                .map(|e| client_event(&self.store, e, room_id, Some(viewer), Some(&mut check)))
                .collect()
        };
        Ok(EventContext {
            start: tokens::token(start),
            end: tokens::token(end),
            events_before: render(&before.events)?,
            event,
            events_after: render(&after.events)?,
            state,
        })
    }
}

impl Rooms {
    /// Spec: `GET /rooms/{roomId}/timestamp_to_event`: the visible event closest to `ts`
    /// in direction `dir` (at or after it forwards, at or before it backwards).
    pub fn timestamp_to_event(
        &self,
        user_id: &str,
        room_id: &str,
        ts: u64,
        dir: Direction,
    ) -> ServiceResult<(String, u64)> {
        let access = self.read_access(user_id, room_id)?;
        let mut check = self.visibility_check(user_id, &access);
        self.closest_event(access.room.short, ts, dir, |event| check.can_see(event))
    }

    /// The time of the earliest event of `room_id` we hold in its timeline (`None`: none).
    pub fn earliest_held(&self, room_id: &str) -> ServiceResult<Option<u64>> {
        let Some(room) = self.store.room(room_id)? else {
            return Ok(None);
        };
        match self.closest_event(room.short, 0, Direction::Forward, |_| Ok(true)) {
            Ok((_, ts)) => Ok(Some(ts)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The event of room `room` closest to `ts` in direction `dir` that `visible` lets
    /// through (at most [`MAX_SCANNED`] looked at).
    pub(super) fn closest_event(
        &self,
        room: u64,
        ts: u64,
        dir: Direction,
        mut visible: impl FnMut(&StoredEvent) -> ServiceResult<bool>,
    ) -> ServiceResult<(String, u64)> {
        let at = super::writer::thread_key(room, ts, 0);
        let (lower, upper, backwards) = match dir {
            Direction::Forward => (
                at,
                super::writer::thread_key(room, u64::MAX, u64::MAX),
                false,
            ),
            Direction::Backward => (
                super::writer::thread_key(room, 0, 0),
                super::writer::thread_key(room, ts, u64::MAX),
                true,
            ),
        };
        for entry in self
            .store
            .db
            .scan_range(
                crate::storage::Table::ShortroomidTsShorteventid,
                &lower,
                &upper,
                backwards,
            )
            .take(MAX_SCANNED)
        {
            let (key, _) = entry?;
            let (Some(event_ts), Some(short)) = (
                key.get(8..16).and_then(crate::storage::keys::read_u64),
                key.get(16..24).and_then(crate::storage::keys::read_u64),
            ) else {
                continue;
            };
            let event = self.store.event(short)?;
            if visible(&event)? {
                return Ok((event.event_id, event_ts));
            }
        }
        Err(ServiceError::not_found("No event found in that direction"))
    }
}
