//! Spec: client-server API, "Sending events to a room" and "Redactions": `PUT
//! /rooms/{roomId}/send/{eventType}/{txnId}`, `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::MatrixResult;
use crate::http::extract::{Authed, AuthedAllowGuest, JsonBody, MaybeJsonBody, PathParams};
use crate::http::AppState;
use crate::services::rate_limit::RateAction;
use crate::services::rooms::sending::Txn;

/// Sends a message-like event; the same txn id from the same device answers the same id.
pub async fn send(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams((room_id, kind, txn_id)): PathParams<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> MatrixResult<Json<Value>> {
    let txn = Txn {
        device_id: &session.device_id,
        txn_id: &txn_id,
    };
    if let Some(event_id) = services
        .rooms
        .sent_before(&session.user_id, &room_id, "send", txn)?
    {
        return Ok(Json(json!({ "event_id": event_id })));
    }
    services
        .rate_limiter
        .check(RateAction::Message, session.user_id.as_str())?;
    let event_id = services
        .rooms
        .send_message(&session.user_id, &room_id, &kind, content, txn)
        .await?;
    // Spec ("Last active ago"): sending a message is a pro-active event.
    services
        .presence
        .bump_active(session.user_id.as_str())
        .await?;
    Ok(Json(json!({ "event_id": event_id })))
}

/// `PUT /redact` body.
#[derive(Deserialize)]
pub struct RedactBody {
    reason: Option<String>,
}

/// Redacts an event.
pub async fn redact(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((room_id, event_id, txn_id)): PathParams<(String, String, String)>,
    MaybeJsonBody(body): MaybeJsonBody<RedactBody>,
) -> MatrixResult<Json<Value>> {
    let txn = Txn {
        device_id: &session.device_id,
        txn_id: &txn_id,
    };
    if let Some(redaction) =
        services
            .rooms
            .sent_before(&session.user_id, &room_id, "redact", txn)?
    {
        return Ok(Json(json!({ "event_id": redaction })));
    }
    services
        .rate_limiter
        .check(RateAction::Message, session.user_id.as_str())?;
    let redaction = services
        .rooms
        .redact(
            &session.user_id,
            &room_id,
            &event_id,
            body.and_then(|b| b.reason),
            txn,
        )
        .await?;
    Ok(Json(json!({ "event_id": redaction })))
}
