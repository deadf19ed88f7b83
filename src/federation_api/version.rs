//! Spec: server-server API, "Server implementation", `GET /_matrix/federation/v1/version`.

use axum::Json;
use serde_json::{json, Value};

/// Our implementation's name and version.
pub async fn get_version() -> Json<Value> {
    Json(json!({
        "server": { "name": "ourwhats", "version": env!("CARGO_PKG_VERSION") }
    }))
}
