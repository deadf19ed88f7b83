//! Asking other servers which event of a room is closest to a time, and fetching the
//! history that holds it, for a client's `/timestamp_to_event` in a room whose start we
//! do not hold.
//!
//! Spec: client-server API, `GET /rooms/{roomId}/timestamp_to_event`: "If the server does
//! not have all of the room history and does not have an event suitably close to the
//! requested timestamp, it can use the corresponding federation endpoint to ask other
//! servers for a suitable event"; server-server API, `GET
//! /_matrix/federation/v1/timestamp_to_event/{roomId}`. The client then asks for the
//! event's `/context`, so the answer must be an event we hold in the timeline: the room's
//! past is backfilled towards it, a few backfills per request (Synapse fetches the one
//! event it is told of and places it alone; our history is placed in order from what we
//! hold, so it is reached by backfilling, bounded here and by the backfill's back-off).

use serde_json::Value;

use super::Federation;
use crate::core::url::encode;
use crate::core::EventId;
use crate::services::error::ServiceResult;
use crate::services::rooms::backfill::MAX_BACKFILL_EVENTS;
use crate::services::rooms::history::Direction;
use crate::services::rooms::Rooms;

/// Servers asked at most (those in the room longest first).
const SERVERS_ASKED: usize = 3;
/// Backfills made at most per request to reach the event another server named (of up
/// to [`MAX_BACKFILL_EVENTS`] events each; a later request goes on from there).
const BACKFILLS_AT_MOST: usize = 3;

impl Federation {
    /// The event of `room_id` another server says is closest to `ts` in direction `dir`,
    /// with its timestamp: the first usable answer of the room's servers. An answer whose
    /// timestamp lies on the wrong side of `ts` is not taken.
    pub async fn closest_event_elsewhere(
        &self,
        rooms: &Rooms,
        room_id: &str,
        ts: u64,
        dir: Direction,
    ) -> ServiceResult<Option<(String, u64)>> {
        let dir_param = match dir {
            Direction::Forward => "f",
            Direction::Backward => "b",
        };
        let path = format!(
            "/_matrix/federation/v1/timestamp_to_event/{}?ts={ts}&dir={dir_param}",
            encode(room_id)
        );
        for destination in self.servers_to_ask(rooms, room_id, SERVERS_ASKED)? {
            let server = destination.as_str();
            let Some(answer) = self
                .ask_about_past(&destination, &path, (room_id, "timestamp_to_event"))
                .await
            else {
                continue;
            };
            let event_id = answer
                .get("event_id")
                .and_then(Value::as_str)
                .filter(|id| EventId::parse(id).is_ok());
            let at = answer.get("origin_server_ts").and_then(Value::as_u64);
            let (Some(event_id), Some(at)) = (event_id, at) else {
                tracing::info!(room = %room_id, %server, "an unusable timestamp_to_event answer");
                continue;
            };
            let on_its_side = match dir {
                Direction::Forward => at >= ts,
                Direction::Backward => at <= ts,
            };
            if on_its_side {
                return Ok(Some((event_id.to_owned(), at)));
            }
        }
        Ok(None)
    }

    /// Backfills `room_id` until `event_id` has its place in the timeline (at most
    /// [`BACKFILLS_AT_MOST`] times); answers whether it has.
    pub async fn backfill_to(
        &self,
        rooms: &Rooms,
        room_id: &str,
        event_id: &str,
    ) -> ServiceResult<bool> {
        for _ in 0..BACKFILLS_AT_MOST {
            if rooms.holds_in_timeline(room_id, event_id)? {
                return Ok(true);
            }
            if self.backfill(rooms, room_id, MAX_BACKFILL_EVENTS).await? == 0 {
                break;
            }
        }
        rooms.holds_in_timeline(room_id, event_id)
    }
}
