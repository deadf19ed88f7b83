//! Spec: client-server API, "Server Discovery" (`/.well-known/matrix/client`) and
//! server-server API, "Resolving server names" (`/.well-known/matrix/server`).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::error::{MatrixError, MatrixResult};
use crate::http::AppState;

/// `{"m.homeserver": {"base_url": …}}` from `well_known.client`; 404 when unset.
pub async fn client(State(services): State<AppState>) -> MatrixResult<Json<Value>> {
    let base_url = services
        .config
        .well_known
        .client
        .as_deref()
        .ok_or_else(|| MatrixError::not_found("No client discovery information is configured"))?;
    Ok(Json(json!({ "m.homeserver": { "base_url": base_url } })))
}

/// `{"m.server": …}` from `well_known.server`; 404 when unset.
pub async fn server(State(services): State<AppState>) -> MatrixResult<Json<Value>> {
    let server = services
        .config
        .well_known
        .server
        .as_deref()
        .ok_or_else(|| MatrixError::not_found("No server delegation is configured"))?;
    Ok(Json(json!({ "m.server": server })))
}
