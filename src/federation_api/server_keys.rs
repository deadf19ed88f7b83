//! Spec: server-server API, "Publishing Keys", `GET /_matrix/key/v2/server`.

use axum::extract::State;
use axum::Json;
use serde_json::Value;

use crate::error::MatrixResult;
use crate::http::AppState;
use crate::services::now_ms;
use crate::services::server_keys::key_document;

/// Our current signing key, signed by itself, valid for `federation.key_valid_hours`, and
/// the keys it replaced as `old_verify_keys`.
pub async fn get_server_key(State(services): State<AppState>) -> MatrixResult<Json<Value>> {
    let valid_for_ms = services.config.federation.key_valid_hours * 3_600_000;
    let document = key_document(
        &services.config.server_name,
        &services.signing_key,
        &services.old_signing_keys,
        now_ms() + valid_for_ms,
    )?;
    Ok(Json(document))
}
