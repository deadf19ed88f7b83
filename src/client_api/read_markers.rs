//! Spec: client-server API, "Fully read markers": `POST /rooms/{roomId}/read_markers`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::MatrixResult;
use crate::http::extract::{Authed, JsonBody, PathParams};
use crate::http::AppState;

/// The request body.
#[derive(Deserialize)]
pub struct ReadMarkersBody {
    #[serde(rename = "m.fully_read")]
    fully_read: Option<String>,
    #[serde(rename = "m.read")]
    read: Option<String>,
    #[serde(rename = "m.read.private")]
    read_private: Option<String>,
}

/// Moves the fully read marker and the read receipts.
pub async fn post_read_markers(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
    JsonBody(body): JsonBody<ReadMarkersBody>,
) -> MatrixResult<Json<Value>> {
    services
        .ephemeral
        .set_read_markers(
            &services.rooms,
            &services.accounts,
            session.user_id.as_str(),
            &room_id,
            body.fully_read.as_deref(),
            body.read.as_deref(),
            body.read_private.as_deref(),
        )
        .await?;
    if body.read.is_some() || body.read_private.is_some() {
        services.push.read_moved(session.user_id.as_str());
    }
    Ok(Json(json!({})))
}
