//! Spec: client-server API, "Receipts": `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, MaybeJsonBody, PathParams};
use crate::http::AppState;
use crate::services::ephemeral::receipts::ReceiptType;

/// Sets a receipt (or, for `m.fully_read`, the read marker).
pub async fn post_receipt(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((room_id, receipt_type, event_id)): PathParams<(String, String, String)>,
    MaybeJsonBody(body): MaybeJsonBody<Value>,
) -> MatrixResult<Json<Value>> {
    let user_id = session.user_id.as_str();
    let thread_id = match body.as_ref().and_then(|b| b.get("thread_id")) {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "thread_id field must be a non-empty string",
            ))
        }
    };
    if receipt_type == "m.fully_read" {
        if thread_id.is_some() {
            return Err(MatrixError::invalid_param(
                "thread_id is not allowed on m.fully_read",
            ));
        }
        services
            .ephemeral
            .set_read_markers(
                &services.rooms,
                &services.accounts,
                user_id,
                &room_id,
                Some(&event_id),
                None,
                None,
            )
            .await?;
        return Ok(Json(json!({})));
    }
    let kind = ReceiptType::parse(&receipt_type).ok_or_else(|| {
        MatrixError::invalid_param(format!("Unknown receipt type {receipt_type:?}"))
    })?;
    services
        .ephemeral
        .set_receipt(
            &services.rooms,
            user_id,
            &room_id,
            kind,
            &event_id,
            (thread_id, None),
        )
        .await?;
    services.push.read_moved(user_id);
    Ok(Json(json!({})))
}
