//! A room's current state and latest messages in one answer: the deprecated
//! `GET /rooms/{roomId}/initialSync`, which the spec keeps for peeking into rooms one may
//! read without being a member (world-readable history).
//!
//! Spec: client-server API, "Room Previews" and `room_initial_sync.yaml`. The reads go
//! through the same access and history visibility rules as `/state` and `/messages`.

use serde_json::{json, Value};

use super::client_event::client_event;
use super::client_event::Viewer;
use super::filter::RoomEventFilter;
use super::history::Direction;
use super::Rooms;
use crate::services::error::{ServiceError, ServiceResult};

/// Messages `/rooms/{roomId}/initialSync` carries.
pub const SNAPSHOT_MESSAGES: usize = 20;

/// What `/rooms/{roomId}/initialSync` answers, but the user's account data.
#[derive(Debug)]
pub struct RoomSnapshot {
    /// The user's membership, if they have one.
    pub membership: Option<String>,
    /// The latest messages they may see, oldest first.
    pub chunk: Vec<Value>,
    /// A token before `chunk` for `/messages` backwards; `None` when nothing is earlier.
    pub start: Option<String>,
    /// A token after `chunk`.
    pub end: String,
    /// The state as `/state` shows it to the user (at their leave, if they left).
    pub state: Vec<Value>,
    /// Whether the room is published in the room directory.
    pub published: bool,
}

impl Rooms {
    /// The snapshot of `room_id` for `viewer` with its latest `messages` ("at most
    /// `limit` elements": none for 0); 403 `M_FORBIDDEN` when they may not read the room
    /// (never a member and history not world-readable).
    pub fn room_snapshot(
        &self,
        viewer: Viewer<'_>,
        room_id: &str,
        messages: usize,
    ) -> ServiceResult<RoomSnapshot> {
        let state = self.state_for(viewer.user_id, room_id)?;
        let page = self.messages(
            viewer,
            room_id,
            None,
            None,
            Direction::Backward,
            messages,
            &RoomEventFilter::default(),
        )?;
        let mut chunk = page.chunk;
        chunk.reverse();
        // Without messages, both tokens are now: paging back from `start` misses none.
        let start = match messages {
            0 => {
                chunk.clear();
                Some(page.start.clone())
            }
            _ => page.end,
        };
        let membership = self
            .store
            .membership(viewer.user_id, room_id)?
            .map(|record| record.membership);
        Ok(RoomSnapshot {
            membership,
            chunk,
            start,
            end: page.start,
            state,
            published: self.is_published(room_id)?,
        })
    }
}

impl RoomSnapshot {
    /// The spec's `RoomInfo` for `room_id` with the user's room `account_data` events.
    pub fn into_room_info(self, room_id: &str, account_data: Vec<Value>) -> Value {
        let mut messages = json!({ "chunk": self.chunk, "end": self.end });
        if let Some(start) = self.start {
            messages["start"] = json!(start);
        }
        let mut info = json!({
            "room_id": room_id,
            "messages": messages,
            "state": self.state,
            "visibility": if self.published { "public" } else { "private" },
            "account_data": account_data,
        });
        if let Some(membership) = self.membership {
            info["membership"] = json!(membership);
        }
        info
    }
}

impl Rooms {
    /// The invite event of a user invited to `room_id`, in client format (an invitee may
    /// not read the room, but may see their invite).
    pub fn invite_event_for(&self, viewer: Viewer<'_>, room_id: &str) -> ServiceResult<Value> {
        let record = self
            .store
            .membership(viewer.user_id, room_id)?
            .filter(|r| r.membership == "invite")
            .ok_or_else(|| ServiceError::not_found("No invite to this room"))?;
        let event = self
            .store
            .event_by_id(&record.event_id)?
            .ok_or_else(|| ServiceError::internal("the invite event is not stored"))?;
        client_event(&self.store, &event, room_id, Some(viewer), None)
    }
}
