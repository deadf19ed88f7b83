//! Fetching a room's past from the other servers in it, for a client paging back past the
//! oldest event we hold.
//!
//! Spec: server-server API, "Backfilling and retrieving missing events" (`GET
//! /_matrix/federation/v1/backfill/{roomId}?v=…&limit=…`). The servers in the room are
//! asked in turn until one answers events we can place; what the answer holds is checked
//! and placed by the rooms service ([`crate::services::rooms::backfill`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use super::source::FromOrigin;
use super::Federation;
use crate::core::ServerName;
use crate::services::error::ServiceResult;
use crate::services::rooms::backfill::MAX_BACKFILL_EVENTS;
use crate::services::rooms::Rooms;

/// Servers asked per backfill at most.
const SERVERS_ASKED: usize = 3;
/// The wait after a backfill of a room that placed nothing, doubled each time since its
/// last success, up to [`MAX_BACKOFF`] (as Synapse backs off per backward extremity).
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Rooms whose failed backfills are remembered at most (the map is emptied past this).
const BACKOFF_ROOMS: usize = 10_000;

/// Rooms whose last backfill placed nothing: `(failures in a row, not before)`.
#[derive(Default)]
pub struct BackfillBackoff(Mutex<HashMap<String, (u32, Instant)>>);

impl BackfillBackoff {
    fn waiting(&self, room_id: &str) -> bool {
        let rooms = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        rooms
            .get(room_id)
            .is_some_and(|(_, until)| Instant::now() < *until)
    }

    fn record(&self, room_id: &str, placed: bool) {
        let mut rooms = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if placed {
            rooms.remove(room_id);
            return;
        }
        if rooms.len() >= BACKOFF_ROOMS {
            rooms.clear();
        }
        let failures = rooms.get(room_id).map_or(0, |(n, _)| *n);
        let wait = FIRST_BACKOFF
            .saturating_mul(1 << failures.min(12))
            .min(MAX_BACKOFF);
        rooms.insert(room_id.to_owned(), (failures + 1, Instant::now() + wait));
    }
}

impl Federation {
    /// At most `limit` of the other servers of `room_id` to ask about its past: those in
    /// the room longest first, servers our sender is backing off from (they failed
    /// lately) after all the others.
    pub(super) fn servers_to_ask(
        &self,
        rooms: &Rooms,
        room_id: &str,
        limit: usize,
    ) -> ServiceResult<Vec<ServerName>> {
        let mut servers: Vec<(bool, ServerName)> = rooms
            .servers_by_seniority(room_id)?
            .iter()
            .filter_map(|s| ServerName::parse(s).ok())
            .map(|s| (self.backing_off(&s), s))
            .collect();
        servers.sort_by_key(|(backing_off, _)| *backing_off);
        Ok(servers.into_iter().take(limit).map(|(_, s)| s).collect())
    }

    /// `GET path` of `destination` about `room_id`'s past; a refusal or failure is logged
    /// (as `what`) and answers `None`, so the caller asks the next server.
    pub(super) async fn ask_about_past(
        &self,
        destination: &ServerName,
        path: &str,
        (room_id, what): (&str, &str),
    ) -> Option<Value> {
        match self
            .client
            .request(destination, Method::GET, path, None)
            .await
        {
            Ok(answer) => Some(answer),
            Err(e) => {
                tracing::info!(room = %room_id, server = %destination.as_str(), error = %e, "{what} refused or failed");
                None
            }
        }
    }

    /// Whether our sender is backing off from `destination` (its last attempts failed).
    fn backing_off(&self, destination: &ServerName) -> bool {
        super::sender::load_record(&self.db, destination.as_str()).retry_at
            > crate::services::now_ms()
    }

    /// Fetches up to `limit` events of `room_id`'s past, before the oldest we hold, from
    /// the other servers in the room; answers how many got a place. Nothing is asked
    /// when the room's history is whole here. After a backfill that placed nothing (no
    /// server answered usable history), the room is not asked for again for a while.
    ///
    /// One backfill of a room at a time: two at once would fetch the same events and
    /// place them in two position blocks, a parent after its child. A call that waited
    /// for another one that moved the room's oldest events asks for nothing more and
    /// answers 1 (the caller reads again what the other one placed).
    pub async fn backfill(
        &self,
        rooms: &Rooms,
        room_id: &str,
        limit: usize,
    ) -> ServiceResult<usize> {
        if self.backfill_backoff.waiting(room_id) {
            return Ok(0);
        }
        let before = rooms.backfill_points(room_id)?;
        if before.is_empty() {
            return Ok(0);
        }
        let _one_at_a_time = self.backfill_locks.lock(room_id.as_bytes()).await;
        let points = rooms.backfill_points(room_id)?;
        if points != before {
            return Ok(1);
        }
        if self.backfill_backoff.waiting(room_id) {
            return Ok(0);
        }
        let placed = self.backfill_from(rooms, room_id, &points, limit).await;
        self.backfill_backoff
            .record(room_id, matches!(placed, Ok(n) if n > 0));
        placed
    }

    async fn backfill_from(
        &self,
        rooms: &Rooms,
        room_id: &str,
        points: &[String],
        limit: usize,
    ) -> ServiceResult<usize> {
        let limit = limit.clamp(1, MAX_BACKFILL_EVENTS);
        let mut query = format!("limit={limit}");
        for point in points {
            query.push_str("&v=");
            query.push_str(&crate::core::url::encode(point));
        }
        let path = format!(
            "/_matrix/federation/v1/backfill/{}?{query}",
            crate::core::url::encode(room_id)
        );
        for destination in self.servers_to_ask(rooms, room_id, SERVERS_ASKED)? {
            let server = destination.as_str().to_owned();
            let Some(answer) = self
                .ask_about_past(&destination, &path, (room_id, "backfill"))
                .await
            else {
                continue;
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
                .receive_history(&server, (room_id, points), pdus, &source)
                .await?;
            tracing::debug!(room = %room_id, %server, placed, "backfilled");
            if placed > 0 {
                return Ok(placed);
            }
        }
        Ok(0)
    }
}
