//! Spec: client-server API, "Creation": `POST /createRoom`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::error::MatrixResult;
use crate::http::extract::{Authed, JsonBody};
use crate::http::AppState;
use crate::services::rate_limit::RateAction;
use crate::services::rooms::create::CreateRoomRequest;

/// Creates a room; answers `{"room_id": …}`.
pub async fn create_room(
    State(services): State<AppState>,
    Authed(session): Authed,
    JsonBody(request): JsonBody<CreateRoomRequest>,
) -> MatrixResult<Json<Value>> {
    services
        .rate_limiter
        .check(RateAction::RoomCreate, session.user_id.as_str())?;
    let profile = services.accounts.member_profile(&session.user_id)?;
    let invitee_profile = |user: &crate::core::UserId| services.accounts.member_profile(user).ok();
    let room_id = services
        .rooms
        .create_room(&session.user_id, request, &profile, &invitee_profile)
        .await?;
    Ok(Json(json!({ "room_id": room_id })))
}
