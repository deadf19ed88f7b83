//! Spec: client-server API, "Relationships": `GET
//! /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`, and "Threading": `GET
//! /rooms/{roomId}/threads`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::room_events::{direction, limit};
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, AuthedAllowGuest, PathParams, QueryParams};
use crate::http::AppState;
use crate::services::accounts::Session;
use crate::services::rooms::client_event::Viewer;
use crate::services::rooms::history::Direction;
use crate::services::rooms::relations::{RelationsPage, RelationsQuery};

/// `/relations` query.
#[derive(Deserialize)]
pub struct RelationsParams {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    dir: Option<String>,
}

fn page_json(page: RelationsPage) -> Json<Value> {
    let mut out = json!({ "chunk": page.chunk });
    if let Some(next) = page.next_batch {
        out["next_batch"] = json!(next);
    }
    Json(out)
}

fn relations_of(
    services: &AppState,
    session: &Session,
    room_id: &str,
    event_id: &str,
    rel_type: Option<&str>,
    event_type: Option<&str>,
    params: &RelationsParams,
) -> MatrixResult<Json<Value>> {
    let viewer = Viewer {
        user_id: session.user_id.as_str(),
        device_id: &session.device_id,
    };
    let query = RelationsQuery {
        rel_type,
        event_type,
        from: params.from.as_deref(),
        to: params.to.as_deref(),
        limit: limit(params.limit.as_deref(), 50)?,
        dir: Some(direction(params.dir.as_deref(), Direction::Backward)?),
    };
    Ok(page_json(
        services
            .rooms
            .relations(viewer, room_id, event_id, &query)?,
    ))
}

/// Every child of an event.
pub async fn all(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<RelationsParams>,
) -> MatrixResult<Json<Value>> {
    relations_of(
        &services, &session, &room_id, &event_id, None, None, &params,
    )
}

/// Children of one relation type.
pub async fn by_rel_type(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams((room_id, event_id, rel_type)): PathParams<(String, String, String)>,
    QueryParams(params): QueryParams<RelationsParams>,
) -> MatrixResult<Json<Value>> {
    relations_of(
        &services,
        &session,
        &room_id,
        &event_id,
        Some(&rel_type),
        None,
        &params,
    )
}

/// Children of one relation type and event type.
pub async fn by_rel_and_event_type(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams((room_id, event_id, rel_type, event_type)): PathParams<(
        String,
        String,
        String,
        String,
    )>,
    QueryParams(params): QueryParams<RelationsParams>,
) -> MatrixResult<Json<Value>> {
    relations_of(
        &services,
        &session,
        &room_id,
        &event_id,
        Some(&rel_type),
        Some(&event_type),
        &params,
    )
}

/// `/threads` query.
#[derive(Deserialize)]
pub struct ThreadsParams {
    include: Option<String>,
    from: Option<String>,
    limit: Option<String>,
}

/// The room's thread roots, latest activity first.
pub async fn threads(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
    QueryParams(params): QueryParams<ThreadsParams>,
) -> MatrixResult<Json<Value>> {
    let participated = match params.include.as_deref() {
        None | Some("all") => false,
        Some("participated") => true,
        Some(other) => {
            return Err(MatrixError::invalid_param(format!(
                "include must be all or participated, not {other:?}"
            )))
        }
    };
    let viewer = Viewer {
        user_id: session.user_id.as_str(),
        device_id: &session.device_id,
    };
    let page = services.rooms.threads(
        viewer,
        &room_id,
        participated,
        params.from.as_deref(),
        limit(params.limit.as_deref(), 50)?,
    )?;
    Ok(page_json(page))
}
