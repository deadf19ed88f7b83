//! Spec: client-server API, "Room Upgrades": `POST /rooms/{roomId}/upgrade`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::MatrixResult;
use crate::http::extract::{Authed, JsonBody, PathParams};
use crate::http::AppState;
use crate::services::rate_limit::RateAction;

/// `POST /upgrade` body.
#[derive(Deserialize)]
pub struct UpgradeBody {
    new_version: String,
    #[serde(default)]
    additional_creators: Vec<String>,
}

/// Replaces the room with a new one of `new_version`.
pub async fn upgrade(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
    JsonBody(body): JsonBody<UpgradeBody>,
) -> MatrixResult<Json<Value>> {
    // An upgrade creates a room.
    services
        .rate_limiter
        .check(RateAction::RoomCreate, session.user_id.as_str())?;
    let profile = services.accounts.member_profile(&session.user_id)?;
    let replacement = services
        .rooms
        .upgrade(
            &session.user_id,
            &room_id,
            &body.new_version,
            body.additional_creators,
            &profile,
        )
        .await?;
    Ok(Json(json!({ "replacement_room": replacement })))
}
