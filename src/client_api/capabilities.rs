//! Spec: client-server API, "Capabilities negotiation", `GET /_matrix/client/v3/capabilities`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};

use crate::core::RoomVersion;
use crate::http::extract::AuthedAllowGuest;
use crate::http::AppState;

/// What this server lets clients do.
pub async fn get_capabilities(
    State(services): State<AppState>,
    _auth: AuthedAllowGuest,
) -> Json<Value> {
    let available: Map<String, Value> = RoomVersion::ALL
        .iter()
        .map(|v| {
            let stability = if v.is_stable() { "stable" } else { "unstable" };
            (v.as_str().to_owned(), json!(stability))
        })
        .collect();
    Json(json!({
        "capabilities": {
            "m.change_password": { "enabled": true },
            "m.room_versions": {
                "default": services.config.rooms.default_version.as_str(),
                "available": available,
            },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.profile_fields": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": false },
        }
    }))
}
