//! Reading a room's state and members.
//!
//! Spec: client-server API, `GET /rooms/{roomId}/state`, `GET
//! /rooms/{roomId}/state/{eventType}/{stateKey}`, `GET /rooms/{roomId}/members`, `GET
//! /rooms/{roomId}/joined_members`. A member sees the current state; someone who left sees
//! the state at their leave.

use serde_json::{json, Map, Value};

use super::client_event::client_event;
use super::event_store::StoredEvent;
use super::tokens;
use super::Rooms;
use crate::services::error::{ServiceError, ServiceResult};

/// `/members` filters.
#[derive(Debug, Default)]
pub struct MembersQuery<'a> {
    /// A stream token: the members as they were at that point.
    pub at: Option<&'a str>,
    /// Only this membership.
    pub membership: Option<&'a str>,
    /// Every membership but this.
    pub not_membership: Option<&'a str>,
}

impl Rooms {
    /// Every state event the user may see, in client format.
    pub fn state_for(&self, user_id: &str, room_id: &str) -> ServiceResult<Vec<Value>> {
        let access = self.read_access(user_id, room_id)?;
        let mut check = self.visibility_check(user_id, &access);
        self.store
            .state_events(access.snapshot, None)?
            .iter()
            .map(|e| client_event(&self.store, e, room_id, None, Some(&mut check)))
            .collect()
    }

    /// One state event the user may see, in client format (`format=event`).
    pub fn state_event_json_for(
        &self,
        user_id: &str,
        room_id: &str,
        event_type: &str,
        state_key: &str,
    ) -> ServiceResult<Value> {
        let access = self.read_access(user_id, room_id)?;
        let event = self
            .store
            .state_event(access.snapshot, event_type, state_key)?
            .ok_or_else(|| ServiceError::not_found("Event not found"))?;
        let mut check = self.visibility_check(user_id, &access);
        client_event(&self.store, &event, room_id, None, Some(&mut check))
    }

    /// One state event the user may see; 404 `M_NOT_FOUND` if the room has none.
    pub fn state_event_for(
        &self,
        user_id: &str,
        room_id: &str,
        event_type: &str,
        state_key: &str,
    ) -> ServiceResult<StoredEvent> {
        let access = self.read_access(user_id, room_id)?;
        self.store
            .state_event(access.snapshot, event_type, state_key)?
            .ok_or_else(|| ServiceError::not_found("Event not found"))
    }

    /// The member events the user may see, filtered.
    pub fn members_for(
        &self,
        user_id: &str,
        room_id: &str,
        query: &MembersQuery<'_>,
    ) -> ServiceResult<Vec<Value>> {
        let access = self.read_access(user_id, room_id)?;
        let mut snapshot = access.snapshot;
        if let Some(at) = query.at {
            let at = tokens::parse(at)?;
            // The state after the room's last event at or before `at`, if the reader saw it.
            let last = self
                .store
                .timeline(access.room.short, 0, at.saturating_add(1), true, 1)?;
            if let Some((pos, short)) = last.first() {
                let visible_limit = access.membership.as_ref().map_or(u64::MAX, |m| {
                    if m.membership == "join" {
                        u64::MAX
                    } else {
                        m.pos
                    }
                });
                if *pos <= visible_limit {
                    snapshot = self.store.meta(*short)?.state_after;
                }
            }
        }
        let mut check = self.visibility_check(user_id, &access);
        let mut out = Vec::new();
        for event in self.store.state_events(snapshot, Some("m.room.member"))? {
            let membership = event
                .content()
                .get("membership")
                .and_then(Value::as_str)
                .unwrap_or("");
            if query.membership.is_some_and(|m| m != membership) {
                continue;
            }
            if query.not_membership.is_some_and(|m| m == membership) {
                continue;
            }
            out.push(client_event(
                &self.store,
                &event,
                room_id,
                None,
                Some(&mut check),
            )?);
        }
        Ok(out)
    }

    /// `/joined_members`: joined users with their display name and avatar. Spec: "The
    /// current user must be in the room for it to work": 403 `M_FORBIDDEN` for anyone
    /// else (a member who left, a reader of a world-readable room), as in Synapse.
    pub fn joined_members_for(&self, user_id: &str, room_id: &str) -> ServiceResult<Value> {
        let access = self.read_access(user_id, room_id)?;
        if access
            .membership
            .as_ref()
            .is_none_or(|m| m.membership != "join")
        {
            return Err(ServiceError::forbidden(
                "Only the room's members may list who is joined",
            ));
        }
        let mut joined = Map::new();
        for event in self
            .store
            .state_events(access.snapshot, Some("m.room.member"))?
        {
            let content = event.content();
            if content.get("membership").and_then(Value::as_str) != Some("join") {
                continue;
            }
            let Some(member) = event.state_key() else {
                continue;
            };
            let mut profile = Map::new();
            // Spec: `RoomMember` says `display_name`, where member events say `displayname`.
            for (from, to) in [
                ("displayname", "display_name"),
                ("avatar_url", "avatar_url"),
            ] {
                if let Some(v) = content.get(from).filter(|v| v.is_string()) {
                    profile.insert(to.into(), v.clone());
                }
            }
            joined.insert(member.to_owned(), Value::Object(profile));
        }
        Ok(json!({ "joined": joined }))
    }
}
