//! Spec: client-server API, "Push Notifications", "Client behaviour": `GET /pushers` and
//! `POST /pushers/set`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::error::MatrixResult;
use crate::http::extract::{Authed, JsonBody};
use crate::http::AppState;
use crate::services::now_ms;
use crate::services::push::pushers;

/// The caller's pushers.
pub async fn get_pushers(
    State(services): State<AppState>,
    Authed(session): Authed,
) -> MatrixResult<Json<Value>> {
    Ok(Json(
        json!({ "pushers": services.push.pushers(session.user_id.as_str()) }),
    ))
}

/// Creates, replaces (same app id and pushkey) or, with `kind: null`, deletes a pusher of
/// the caller's; it belongs to the calling device.
pub async fn set_pusher(
    State(services): State<AppState>,
    Authed(session): Authed,
    JsonBody(body): JsonBody<Value>,
) -> MatrixResult<Json<Value>> {
    let user_id = session.user_id.as_str();
    let change = pushers::parse_change(&body, user_id, &session.device_id, now_ms())?;
    services.push.change_pusher(user_id, change).await?;
    Ok(Json(json!({})))
}
