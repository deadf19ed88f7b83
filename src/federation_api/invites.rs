//! Spec: server-server API, "Inviting to a room": `PUT
//! /_matrix/federation/v2/invite/{roomId}/{eventId}`. The checks and signing are the
//! rooms service's (`services/rooms/remote_invite.rs`). The v1 endpoint is for room
//! versions 1 and 2, which this server does not support: it answers 404 `M_UNRECOGNIZED`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Signed;
use crate::core::UserId;
use crate::error::MatrixResult;
use crate::http::extract::PathParams;
use crate::http::AppState;
use crate::services::federation::source::FromOrigin;
use crate::services::rate_limit::{invite_bucket, RateAction};
use crate::services::rooms::remote_invite::InviteOffer;

/// An invite of one of our users, signed by us in the answer.
pub async fn invite_v2(
    State(services): State<AppState>,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    signed: Signed<InviteOffer>,
) -> MatrixResult<Json<Value>> {
    // Invites our users receive are rate-limited per invitee and inviting server; an
    // invite counts once it proves valid (a malformed one takes nobody's allowance).
    let invitee = signed.body.event.get("state_key").and_then(Value::as_str);
    let bucket = invitee
        .and_then(|i| UserId::parse(i).ok())
        .filter(|i| i.server_name() == services.config.server_name.as_str())
        .map(|i| invite_bucket(i.as_str(), signed.origin.as_str()));
    if let Some(bucket) = &bucket {
        services
            .rate_limiter
            .peek(RateAction::InviteReceived, bucket)?;
    }
    let source = FromOrigin {
        federation: &services.federation,
        origin: signed.origin.clone(),
    };
    let accounts = &services.accounts;
    let exists = |user: &UserId| accounts.is_active_user(user).unwrap_or(false);
    let event = services
        .rooms
        .accept_remote_invite(
            signed.origin.as_str(),
            (&room_id, &event_id),
            signed.body,
            &exists,
            &source,
        )
        .await?;
    if let Some(bucket) = &bucket {
        services
            .rate_limiter
            .count(RateAction::InviteReceived, bucket);
    }
    Ok(Json(json!({ "event": event })))
}
