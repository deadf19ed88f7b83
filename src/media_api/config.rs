//! Spec: `GET /_matrix/client/v1/media/config` (and the deprecated `/_matrix/media/v3/config`).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::http::extract::Authed;
use crate::http::AppState;

/// The upload size limit.
pub async fn get_config(State(services): State<AppState>, _auth: Authed) -> Json<Value> {
    Json(json!({ "m.upload.size": services.media.limits().max_upload_size }))
}
