//! What other servers read of our rooms, event by event, under
//! [`server_visibility`](super::server_visibility).
//!
//! Spec: server-server API, "Retrieving events" (`GET /_matrix/federation/v1/event/{eventId}`).

use super::graph::{self, EventStatus};
use super::server_visibility::server_may_see;
use super::Rooms;
use crate::error::{MatrixError, MatrixResult};
use serde_json::Value;

impl Rooms {
    /// The PDU of `event_id` for `server`: 404 when we do not have it, it was rejected,
    /// or the server may not see it (the same answer, so as not to tell which).
    pub fn event_for_server(&self, server: &str, event_id: &str) -> MatrixResult<Value> {
        let not_found = || MatrixError::not_found("Event not found");
        let short = self
            .store
            .state
            .find_event(event_id)?
            .ok_or_else(not_found)?;
        if let Some(record) = graph::record(&self.store, short)? {
            if matches!(record.status, EventStatus::Rejected { .. }) {
                return Err(not_found());
            }
        }
        let event = self.store.event(short)?;
        let Ok(room) = self.store.room_by_short(event.meta.room) else {
            return Err(not_found());
        };
        if !server_may_see(
            &self.store,
            server,
            event.meta.state_before,
            room.record.state,
        )? {
            return Err(not_found());
        }
        Ok(event.pdu().clone())
    }
}
