//! Spec: client-server API, "Server Administration": `GET /admin/whois/{userId}`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};

use crate::core::UserId;
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, PathParams};
use crate::http::AppState;

/// A user's devices with their last connection (IP and time; user agents are not kept).
/// The spec lets the server restrict it to the user themself and server admins: others
/// get 403 `M_FORBIDDEN`. A user of another server: 400 `M_INVALID_PARAM`; unknown here
/// or deactivated: 404 `M_NOT_FOUND`.
pub async fn whois(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(user_id): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    let target =
        UserId::parse(&user_id).map_err(|_| MatrixError::invalid_param("Not a valid user id"))?;
    let accounts = &services.accounts;
    if target != session.user_id && !accounts.is_admin(&session.user_id)? {
        return Err(MatrixError::forbidden(
            "Only server administrators may look up other users",
        ));
    }
    if target.server_name() != services.config.server_name.as_str() {
        return Err(MatrixError::invalid_param(
            "Only local users can be looked up",
        ));
    }
    if !accounts.is_active_user(&target)? {
        return Err(MatrixError::not_found("No such user"));
    }
    let mut devices = Map::new();
    for device in accounts.devices(&target)? {
        let mut connection = Map::new();
        if let Some(ip) = device.last_seen_ip {
            connection.insert("ip".into(), json!(ip));
        }
        if let Some(ts) = device.last_seen_ts {
            connection.insert("last_seen".into(), json!(ts));
        }
        let connections = if connection.is_empty() {
            Vec::new()
        } else {
            vec![Value::Object(connection)]
        };
        devices.insert(
            device.device_id,
            json!({ "sessions": [{ "connections": connections }] }),
        );
    }
    Ok(Json(
        json!({ "user_id": target.as_str(), "devices": devices }),
    ))
}
