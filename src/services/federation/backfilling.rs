//! Fetching a room's past from the other servers in it, for a client paging back past the
//! oldest event we hold.
//!
//! Spec: server-server API, "Backfilling and retrieving missing events" (`GET
//! /_matrix/federation/v1/backfill/{roomId}?v=…&limit=…`). The servers in the room are
//! asked in turn until one answers events we can place; what the answer holds is checked
//! and placed by the rooms service ([`crate::services::rooms::backfill`]).

use reqwest::Method;
use serde_json::Value;

use super::source::FromOrigin;
use super::Federation;
use crate::core::ServerName;
use crate::error::MatrixResult;
use crate::services::rooms::backfill::MAX_BACKFILL_EVENTS;
use crate::services::rooms::Rooms;

/// Servers asked per backfill at most.
const SERVERS_ASKED: usize = 3;

impl Federation {
    /// Fetches up to `limit` events of `room_id`'s past, before the oldest we hold, from
    /// the other servers in the room; answers how many got a place. Nothing is asked
    /// when the room's history is whole here.
    pub async fn backfill(
        &self,
        rooms: &Rooms,
        room_id: &str,
        limit: usize,
    ) -> MatrixResult<usize> {
        let points = rooms.backfill_points(room_id)?;
        if points.is_empty() {
            return Ok(0);
        }
        let limit = limit.clamp(1, MAX_BACKFILL_EVENTS);
        let mut query = format!("limit={limit}");
        for point in &points {
            query.push_str("&v=");
            query.push_str(&crate::core::url::encode(point));
        }
        let path = format!(
            "/_matrix/federation/v1/backfill/{}?{query}",
            crate::core::url::encode(room_id)
        );
        let servers = rooms.remote_servers(room_id)?;
        for server in servers.iter().take(SERVERS_ASKED) {
            let Ok(destination) = ServerName::parse(server) else {
                continue;
            };
            let answer = match self
                .client
                .request(&destination, Method::GET, &path, None)
                .await
            {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::info!(room = %room_id, %server, error = %e, "backfill refused or failed");
                    continue;
                }
            };
            let pdus: Vec<Value> = answer
                .get("pdus")
                .and_then(Value::as_array)
                .map(|p| p.iter().take(MAX_BACKFILL_EVENTS).cloned().collect())
                .unwrap_or_default();
            if pdus.is_empty() {
                continue;
            }
            let source = FromOrigin {
                federation: self,
                origin: destination,
            };
            let placed = rooms
                .receive_history(server, room_id, pdus, &source)
                .await?;
            tracing::debug!(room = %room_id, %server, placed, "backfilled");
            if placed > 0 {
                return Ok(placed);
            }
        }
        Ok(0)
    }
}
