//! Spec: client-server API, "Creation": `POST /createRoom`. Invitees of other servers are
//! invited once the room is made; one whose server refuses or cannot be reached is
//! logged and left out: the room exists by then, so the answer is its id (Synapse answers
//! the invite's error instead, for a room that was made all the same).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::error::MatrixResult;
use crate::http::extract::{Authed, JsonBody};
use crate::http::AppState;
use crate::services::rate_limit::{invite_bucket, RateAction};
use crate::services::rooms::create::CreateRoomRequest;

/// Creates a room; answers `{"room_id": …}`.
pub async fn create_room(
    State(services): State<AppState>,
    Authed(session): Authed,
    JsonBody(request): JsonBody<CreateRoomRequest>,
) -> MatrixResult<Json<Value>> {
    let limiter = &services.rate_limiter;
    limiter.check(RateAction::RoomCreate, session.user_id.as_str())?;
    // The invitees count as invites (per inviter, and per invitee of ours), as `/invite`
    // does: over either limit the room is not made.
    let ours = services.config.server_name.as_str();
    for invitee in &request.invite {
        // A malformed id is refused by the room service (400 `M_INVALID_PARAM`).
        let Ok(invitee) = crate::core::UserId::parse(invitee) else {
            continue;
        };
        limiter.check(RateAction::InviteSent, session.user_id.as_str())?;
        if invitee.server_name() == ours {
            limiter.check(
                RateAction::InviteReceived,
                &invite_bucket(invitee.as_str(), ours),
            )?;
        }
    }
    let profile = services.accounts.member_profile(&session.user_id)?;
    let invitee_profile = |user: &crate::core::UserId| services.accounts.member_profile(user).ok();
    let created = services
        .rooms
        .create_room(&session.user_id, request, &profile, &invitee_profile)
        .await?;
    let room_id = created.room_id.clone();
    services
        .federation
        .invite_all(&services.rooms, &session.user_id, created)
        .await;
    Ok(Json(json!({ "room_id": room_id })))
}
