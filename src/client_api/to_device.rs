//! Spec: client-server API, "Send-to-Device messaging": `PUT
//! /sendToDevice/{eventType}/{txnId}`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::MatrixResult;
use crate::http::extract::{AuthedAllowGuest, JsonBody, PathParams};
use crate::http::AppState;
use crate::services::accounts::to_device::Messages;

/// The request body.
#[derive(Deserialize)]
pub struct SendToDeviceBody {
    messages: Messages,
}

/// Queues a message for each named device; a repeated transaction id is a no-op.
pub async fn send_to_device(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams((kind, txn_id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<SendToDeviceBody>,
) -> MatrixResult<Json<Value>> {
    services
        .accounts
        .send_to_device(
            &session.user_id,
            &session.device_id,
            &kind,
            &txn_id,
            &body.messages,
        )
        .await?;
    Ok(Json(json!({})))
}
