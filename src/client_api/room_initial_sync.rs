//! Spec: client-server API, `GET /rooms/{roomId}/initialSync` (deprecated but for
//! peeking; see [`crate::services::rooms::room_snapshot`]) and the deprecated
//! `GET /initialSync` (see [`crate::services::sync::initial_sync`]).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, AuthedAllowGuest, PathParams, QueryParams};
use crate::http::AppState;
use crate::services::rooms::client_event::Viewer;
use crate::services::rooms::room_snapshot::SNAPSHOT_MESSAGES;

/// The room's state, latest messages, the user's membership and room account data.
pub async fn room_initial_sync(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams(room_id): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    let user_id = session.user_id.as_str();
    let viewer = Viewer {
        user_id,
        device_id: &session.device_id,
    };
    let snapshot = services
        .rooms
        .room_snapshot(viewer, &room_id, SNAPSHOT_MESSAGES)?;
    let account_data: Vec<Value> = services
        .accounts
        .all_account_data(user_id)?
        .into_iter()
        .filter(|d| d.room_id.as_deref() == Some(room_id.as_str()))
        .map(|d| json!({ "type": d.kind, "content": d.content }))
        .collect();
    let out = snapshot.into_room_info(&room_id, account_data);
    Ok(Json(out))
}

/// `/initialSync` query.
#[derive(Deserialize)]
pub struct InitialSyncParams {
    limit: Option<String>,
    archived: Option<String>,
}

/// Every room of the user, with `limit` messages each (default 10, at most 1,000).
pub async fn initial_sync(
    State(services): State<AppState>,
    Authed(session): Authed,
    QueryParams(params): QueryParams<InitialSyncParams>,
) -> MatrixResult<Json<Value>> {
    let limit = match params.limit.as_deref() {
        None => crate::services::sync::initial_sync::DEFAULT_MESSAGES,
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| MatrixError::invalid_param("limit must be a whole number"))?,
    };
    let archived = match params.archived.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(MatrixError::invalid_param("archived must be true or false")),
    };
    let task_services = services.clone();
    let answer = tokio::task::spawn_blocking(move || {
        let viewer = Viewer {
            user_id: session.user_id.as_str(),
            device_id: &session.device_id,
        };
        crate::services::sync::initial_sync::initial_sync(&task_services, viewer, limit, archived)
    })
    .await
    .map_err(|e| MatrixError::internal(format!("initialSync task failed: {e}")))??;
    Ok(Json(answer))
}
