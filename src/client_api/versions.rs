//! Spec: client-server API, "API Versions", `GET /_matrix/client/versions`.

use axum::Json;
use serde_json::{json, Value};

/// Spec versions whose features clients may use against us.
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11",
    "v1.12",
];

/// The versions and unstable features we support.
pub async fn get_versions() -> Json<Value> {
    Json(json!({
        "versions": SUPPORTED_VERSIONS,
        "unstable_features": {},
    }))
}
