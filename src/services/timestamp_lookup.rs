//! A client's `/timestamp_to_event`: the closest event we hold, or, in a room whose start
//! we do not hold, one another server knows of, fetched first.
//!
//! Spec: client-server API, `GET /rooms/{roomId}/timestamp_to_event` (see
//! [`crate::services::federation::timestamps`]). Other servers are asked only when the
//! room's history here is incomplete at its start (it has backfill points) and the answer
//! may lie in the part we lack: forwards, from a time before the earliest event we hold;
//! backwards, when we hold nothing at or before the time. Their answer is taken only when
//! it is closer to the time than ours; what is answered is then looked up here again,
//! with the history fetched and the asking user's visibility applied.

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
        let may_lack = match dir {
            Direction::Forward => rooms.earliest_held(room_id)?.is_none_or(|first| ts < first),
            Direction::Backward => ours.is_none(),
        };
        if !may_lack {
            return ours.ok_or_else(not_found);
        }
        let Some((theirs, at)) = self
            .federation
            .closest_event_elsewhere(rooms, room_id, ts, dir)
            .await?
        else {
            return ours.ok_or_else(not_found);
        };
        let closer = match (&ours, dir) {
            (None, _) => true,
            (Some((_, held)), Direction::Forward) => at < *held,
            (Some((_, held)), Direction::Backward) => at > *held,
        };
        if !closer || !self.federation.backfill_to(rooms, room_id, &theirs).await? {
            return ours.ok_or_else(not_found);
        }
        local(rooms)?.ok_or_else(not_found)
    }
}

fn not_found() -> super::error::ServiceError {
    super::error::ServiceError::not_found("No event found in that direction")
}
