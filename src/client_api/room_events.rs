//! Spec: client-server API, "Getting events for a room": `GET
//! /rooms/{roomId}/event/{eventId}`, `GET /rooms/{roomId}/messages`, and "Event context":
//! `GET /rooms/{roomId}/context/{eventId}`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, AuthedAllowGuest, PathParams, QueryParams};
use crate::http::AppState;
use crate::services::rooms::client_event::Viewer;
use crate::services::rooms::filter::RoomEventFilter;
use crate::services::rooms::history::Direction;

/// One event the user may see. Spec: 404 `M_NOT_FOUND` "if the event was not found or
/// the user does not have permission to read this event": a room the user may not read
/// answers the same as an unknown event, so the answer tells nothing of either.
pub async fn get_event(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
) -> MatrixResult<Json<Value>> {
    let viewer = Viewer {
        user_id: session.user_id.as_str(),
        device_id: &session.device_id,
    };
    Ok(Json(services.rooms.event_for(viewer, &room_id, &event_id)?))
}

/// Spec: deprecated `GET /events/{eventId}` ("clients should instead call
/// `/rooms/{roomId}/event/{eventId}`"), still called by older clients.
pub async fn get_event_anywhere(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams(event_id): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    let viewer = Viewer {
        user_id: session.user_id.as_str(),
        device_id: &session.device_id,
    };
    Ok(Json(services.rooms.event_anywhere_for(viewer, &event_id)?))
}

/// `/messages` query.
#[derive(Deserialize)]
pub struct MessagesParams {
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<String>,
    filter: Option<String>,
}

/// Parses `dir` (`b` or `f`).
pub fn direction(dir: Option<&str>, default: Direction) -> MatrixResult<Direction> {
    match dir {
        None => Ok(default),
        Some("b") => Ok(Direction::Backward),
        Some("f") => Ok(Direction::Forward),
        Some(other) => Err(MatrixError::invalid_param(format!(
            "dir must be b or f, not {other:?}"
        ))),
    }
}

/// Parses `limit` (a non-negative integer).
pub fn limit(limit: Option<&str>, default: usize) -> MatrixResult<usize> {
    match limit {
        None => Ok(default),
        Some(text) => text
            .parse()
            .map_err(|_| MatrixError::invalid_param("limit must be a non-negative integer")),
    }
}

/// A page of the room's events.
pub async fn messages(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams(room_id): PathParams<String>,
    QueryParams(params): QueryParams<MessagesParams>,
) -> MatrixResult<Json<Value>> {
    let dir = match params.dir.as_deref() {
        None => return Err(MatrixError::missing_param("dir is required")),
        dir => direction(dir, Direction::Backward)?,
    };
    let filter = RoomEventFilter::parse(params.filter.as_deref())?;
    let default_limit = filter.limit.map_or(10, |l| l as usize);
    let limit = limit(params.limit.as_deref(), default_limit)?;
    let viewer = Viewer {
        user_id: session.user_id.as_str(),
        device_id: &session.device_id,
    };
    let read = || {
        services.rooms.messages(
            viewer,
            &room_id,
            params.from.as_deref(),
            params.to.as_deref(),
            dir,
            limit,
            &filter,
        )
    };
    let mut page = read()?;
    if dir == Direction::Backward && page.end.is_none() && params.to.is_none() {
        // The start of what we hold: the room's past may be on other servers.
        match services
            .federation
            .backfill(
                &services.rooms,
                &room_id,
                limit.saturating_sub(page.chunk.len()).max(10),
            )
            .await
        {
            Ok(0) => {}
            Ok(_) => {
                page = read()?;
                if page.end.is_none() {
                    // More may be had from the other servers: the client asks again.
                    page.end = services.rooms.token_before_oldest(&room_id)?;
                }
            }
            Err(e) => tracing::info!(room = %room_id, error = %e.message, "backfill failed"),
        }
    }
    let mut out = json!({ "start": page.start, "chunk": page.chunk });
    if let Some(end) = page.end {
        out["end"] = json!(end);
    }
    if !page.state.is_empty() {
        out["state"] = json!(page.state);
    }
    Ok(Json(out))
}

/// `/context` query.
#[derive(Deserialize)]
pub struct ContextParams {
    limit: Option<String>,
    filter: Option<String>,
}

/// An event with the events around it and the state.
pub async fn context(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<ContextParams>,
) -> MatrixResult<Json<Value>> {
    let filter = RoomEventFilter::parse(params.filter.as_deref())?;
    let limit = limit(params.limit.as_deref(), 10)?;
    let viewer = Viewer {
        user_id: session.user_id.as_str(),
        device_id: &session.device_id,
    };
    let context = services
        .rooms
        .context(viewer, &room_id, &event_id, limit, &filter)?;
    Ok(Json(json!({
        "start": context.start,
        "end": context.end,
        "events_before": context.events_before,
        "event": context.event,
        "events_after": context.events_after,
        "state": context.state,
    })))
}

/// `/timestamp_to_event` query.
#[derive(Deserialize)]
pub struct TimestampParams {
    ts: Option<String>,
    dir: Option<String>,
}

/// The event closest to a timestamp (asking other servers in a room whose start we lack:
/// see [`crate::services::timestamp_lookup`]).
pub async fn timestamp_to_event(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
    QueryParams(params): QueryParams<TimestampParams>,
) -> MatrixResult<Json<Value>> {
    let ts: u64 = params
        .ts
        .as_deref()
        .ok_or_else(|| MatrixError::missing_param("ts is required"))?
        .parse()
        .map_err(|_| MatrixError::invalid_param("ts must be a timestamp in milliseconds"))?;
    let dir = match params.dir.as_deref() {
        None => return Err(MatrixError::missing_param("dir is required")),
        dir => direction(dir, Direction::Forward)?,
    };
    let (event_id, origin_server_ts) = services
        .event_for_timestamp(session.user_id.as_str(), &room_id, ts, dir)
        .await?;
    Ok(Json(json!({
        "event_id": event_id,
        "origin_server_ts": origin_server_ts,
    })))
}
