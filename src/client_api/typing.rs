//! Spec: client-server API, "Typing Notifications": `PUT /rooms/{roomId}/typing/{userId}`.

use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, JsonBody, PathParams};
use crate::http::AppState;

/// How long a typing notice without a `timeout` lasts, in ms.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// The request body.
#[derive(Deserialize)]
pub struct TypingBody {
    typing: bool,
    timeout: Option<u64>,
}

/// Starts or stops the user's typing in a room they are joined to.
pub async fn put_typing(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((room_id, user_id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<TypingBody>,
) -> MatrixResult<Json<Value>> {
    if session.user_id.as_str() != user_id {
        return Err(MatrixError::forbidden("Cannot set typing for other users"));
    }
    let room = services.rooms.known_room(&room_id)?;
    if services.rooms.membership_of(&user_id, &room_id)?.as_deref() != Some("join") {
        return Err(MatrixError::forbidden("You aren't joined to the room"));
    }
    // Spec: only `typing` is required; without `timeout` the notice lasts what
    // Synapse gives it, 30 s.
    let typing = body
        .typing
        .then(|| Duration::from_millis(body.timeout.unwrap_or(DEFAULT_TIMEOUT_MS)));
    services
        .ephemeral
        .set_typing(room.short, &user_id, typing)?;
    let edu = json!({
        "edu_type": "m.typing",
        "content": {"room_id": room_id, "user_id": user_id, "typing": body.typing},
    });
    services
        .ephemeral
        .send_room_edu(&services.rooms, &room_id, edu)
        .await?;
    Ok(Json(json!({})))
}
