//! Spec: server-server API, "Retrieving events" (`GET /event/{eventId}`, `GET
//! /state/{roomId}`, `GET /state_ids/{roomId}`), "Backfilling and retrieving missing
//! events" (`GET /backfill/{roomId}`, `POST /get_missing_events/{roomId}`) and
//! "Authentication" (`GET /event_auth/{roomId}/{eventId}`), "Timestamp to event" (`GET
//! /timestamp_to_event/{roomId}`): what the asking server may
//! see (see `services/rooms/server_reads.rs`).

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Signed;
use crate::core::url;
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{PathParams, QueryParams};
use crate::http::AppState;
use crate::services::now_ms;
use crate::services::rooms::history::Direction;

fn transaction(services: &AppState, pdus: Vec<Value>) -> Json<Value> {
    Json(json!({
        "origin": services.config.server_name.as_str(),
        "origin_server_ts": now_ms(),
        "pdus": pdus,
    }))
}

/// One event, as a transaction.
pub async fn event(
    State(services): State<AppState>,
    PathParams(event_id): PathParams<String>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let pdu = services
        .rooms
        .event_for_server(signed.origin.as_str(), &event_id)?;
    Ok(transaction(&services, vec![pdu]))
}

/// Events before `v` (repeated), up to `limit`.
pub async fn backfill(
    State(services): State<AppState>,
    PathParams(room_id): PathParams<String>,
    RawQuery(query): RawQuery,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let query = query.unwrap_or_default();
    let from = url::query_values(&query, "v");
    if from.is_empty() {
        return Err(MatrixError::missing_param("v is required"));
    }
    let limit = url::query_values(&query, "limit")
        .first()
        .map(|l| l.parse::<usize>())
        .transpose()
        .map_err(|_| MatrixError::invalid_param("limit is not a number"))?
        .ok_or_else(|| MatrixError::missing_param("limit is required"))?;
    let pdus =
        services
            .rooms
            .backfill_for_server(signed.origin.as_str(), &room_id, &from, limit)?;
    Ok(transaction(&services, pdus))
}

/// The body of `get_missing_events`.
#[derive(Deserialize)]
pub struct MissingBody {
    #[serde(default = "ten")]
    limit: usize,
    #[serde(default)]
    min_depth: u64,
    earliest_events: Vec<String>,
    latest_events: Vec<String>,
}

fn ten() -> usize {
    10
}

/// Events between what the asking server has and what it was sent.
pub async fn get_missing_events(
    State(services): State<AppState>,
    PathParams(room_id): PathParams<String>,
    signed: Signed<MissingBody>,
) -> MatrixResult<Json<Value>> {
    let body = signed.body;
    let events = services.rooms.missing_events_for_server(
        signed.origin.as_str(),
        &room_id,
        (&body.earliest_events, &body.latest_events),
        (body.limit, body.min_depth),
    )?;
    Ok(Json(json!({ "events": events })))
}

/// `?event_id=`.
#[derive(Deserialize)]
pub struct AtEvent {
    event_id: String,
}

/// The state before an event, and the auth chain, as PDUs.
pub async fn state(
    State(services): State<AppState>,
    PathParams(room_id): PathParams<String>,
    QueryParams(at): QueryParams<AtEvent>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let found =
        services
            .rooms
            .state_for_server(signed.origin.as_str(), &room_id, (&at.event_id, false))?;
    let pdus = |list: &[crate::services::rooms::stored_event::StoredEvent]| -> Vec<Value> {
        list.iter().map(|e| e.pdu().clone()).collect()
    };
    Ok(Json(json!({
        "pdus": pdus(&found.state),
        "auth_chain": pdus(&found.auth_chain),
    })))
}

/// The same as ids.
pub async fn state_ids(
    State(services): State<AppState>,
    PathParams(room_id): PathParams<String>,
    QueryParams(at): QueryParams<AtEvent>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let found =
        services
            .rooms
            .state_for_server(signed.origin.as_str(), &room_id, (&at.event_id, true))?;
    let ids = |list: &[crate::services::rooms::stored_event::StoredEvent]| -> Vec<String> {
        list.iter().map(|e| e.event_id.clone()).collect()
    };
    Ok(Json(json!({
        "pdu_ids": ids(&found.state),
        "auth_chain_ids": ids(&found.auth_chain),
    })))
}

/// The auth chain of one event.
pub async fn event_auth(
    State(services): State<AppState>,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let chain =
        services
            .rooms
            .event_auth_for_server(signed.origin.as_str(), &room_id, &event_id)?;
    Ok(Json(json!({ "auth_chain": chain })))
}

/// `/timestamp_to_event` query.
#[derive(Deserialize)]
pub struct TimestampQuery {
    ts: Option<String>,
    dir: Option<String>,
}

/// The event closest to `ts` in direction `dir` (spec: "Timestamp to event").
pub async fn timestamp_to_event(
    State(services): State<AppState>,
    PathParams(room_id): PathParams<String>,
    QueryParams(query): QueryParams<TimestampQuery>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let ts: u64 = query
        .ts
        .as_deref()
        .ok_or_else(|| MatrixError::missing_param("ts is required"))?
        .parse()
        .map_err(|_| MatrixError::invalid_param("ts must be a timestamp in milliseconds"))?;
    let dir = match query.dir.as_deref() {
        Some("f") => Direction::Forward,
        Some("b") => Direction::Backward,
        Some(other) => {
            return Err(MatrixError::invalid_param(format!(
                "dir must be b or f, not {other:?}"
            )))
        }
        None => return Err(MatrixError::missing_param("dir is required")),
    };
    let (event_id, origin_server_ts) =
        services
            .rooms
            .timestamp_to_event_for_server(signed.origin.as_str(), &room_id, ts, dir)?;
    Ok(Json(
        json!({ "event_id": event_id, "origin_server_ts": origin_server_ts }),
    ))
}
