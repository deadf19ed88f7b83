//! A client's `/timestamp_to_event`: the closest event we hold, or, in a room whose start
//! we do not hold, one another server knows of, fetched first.
//!
//! Spec: client-server API, `GET /rooms/{roomId}/timestamp_to_event` (see
//! [`crate::services::federation::timestamps`]). Other servers are asked only when the
//! room's history here is incomplete at its start (it has backfill points) and the time is
//! before the earliest event we hold (what we lack lies before it). Their answer is taken
//! only when it is closer to the time than ours; what is answered is then looked up here
//! again, with the history fetched and the asking user's visibility applied. A failure
//! on the way leaves our own answer.

use super::error::{ErrorKind, ServiceResult};
use super::rooms::history::Direction;
use super::Services;

impl Services {
    /// The id and time of the event of `room_id` closest to `ts` in direction `dir` that
    /// `user_id` may see.
    pub async fn event_for_timestamp(
        &self,
        user_id: &str,
        room_id: &str,
        ts: u64,
        dir: Direction,
    ) -> ServiceResult<(String, u64)> {
        let local = |rooms: &super::rooms::Rooms| match rooms
            .timestamp_to_event(user_id, room_id, ts, dir)
        {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        let rooms = &*self.rooms;
        let ours = local(rooms)?;
        if rooms.backfill_points(room_id)?.is_empty() {
            return ours.ok_or_else(not_found);
        }
        // What we lack lies before the earliest event we hold (whatever this user may
        // see of what we hold: their visibility is no reason to ask).
        let earliest = rooms.earliest_held(room_id)?;
        if earliest.is_some_and(|first| first <= ts) {
            return ours.ok_or_else(not_found);
        }
        match self.fetch_closer(room_id, ts, dir, ours.as_ref()).await {
            Ok(true) => local(rooms)?.ok_or_else(not_found),
            Ok(false) => ours.ok_or_else(not_found),
            Err(e) => {
                // Our own answer stands.
                tracing::info!(room = %room_id, error = %e.message, "timestamp_to_event through other servers failed");
                ours.ok_or_else(not_found)
            }
        }
    }

    /// Asks the room's servers for the event closest to `ts`; when one names an event
    /// closer than `ours`, backfills until it is held. Answers whether it is.
    async fn fetch_closer(
        &self,
        room_id: &str,
        ts: u64,
        dir: Direction,
        ours: Option<&(String, u64)>,
    ) -> ServiceResult<bool> {
        let rooms = &*self.rooms;
        let Some((theirs, at)) = self
            .federation
            .closest_event_elsewhere(rooms, room_id, ts, dir)
            .await?
        else {
            return Ok(false);
        };
        let closer = match (ours, dir) {
            (None, _) => true,
            (Some((_, held)), Direction::Forward) => at < *held,
            (Some((_, held)), Direction::Backward) => at > *held,
        };
        if !closer {
            return Ok(false);
        }
        self.federation.backfill_to(rooms, room_id, &theirs).await
    }
}

fn not_found() -> super::error::ServiceError {
    super::error::ServiceError::not_found("No event found in that direction")
}
