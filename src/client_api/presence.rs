//! Spec: client-server API, "Presence": `GET/PUT /presence/{userId}/status`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::core::UserId;
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, JsonBody, PathParams};
use crate::http::AppState;
use crate::services::ephemeral::presence::State as PresenceState;

/// The request body.
#[derive(Deserialize)]
pub struct PresenceBody {
    presence: String,
    status_msg: Option<String>,
}

/// Sets the user's own presence.
pub async fn put_status(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(user_id): PathParams<String>,
    JsonBody(body): JsonBody<PresenceBody>,
) -> MatrixResult<Json<Value>> {
    if session.user_id.as_str() != user_id {
        return Err(MatrixError::forbidden(
            "Cannot set the presence of other users",
        ));
    }
    let state = PresenceState::parse(&body.presence).ok_or_else(|| {
        MatrixError::invalid_param("presence must be online, unavailable or offline")
    })?;
    services
        .presence
        .set(&user_id, state, body.status_msg)
        .await?;
    Ok(Json(json!({})))
}

/// A user's presence, for themselves and for users who share a room with them.
pub async fn get_status(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(user_id): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    UserId::parse(&user_id)
        .map_err(|_| MatrixError::invalid_param(format!("Invalid user id {user_id:?}")))?;
    let me = session.user_id.as_str();
    if me != user_id && !services.rooms.share_a_room(me, &user_id)? {
        return Err(MatrixError::forbidden(
            "You are not allowed to see their presence",
        ));
    }
    let content = match services.presence.get(&user_id) {
        Some(record) => record.content(crate::services::now_ms()),
        None => json!({ "presence": "offline" }),
    };
    Ok(Json(content))
}
