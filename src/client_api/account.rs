//! Spec: client-server API, "Account management": `GET /account/whoami`,
//! `POST /account/password`, `POST /account/deactivate`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::MatrixResult;
use crate::http::extract::{Authed, AuthedAllowGuest, JsonBody};
use crate::http::AppState;
use crate::services::accounts::uia::{body_subject, stages, UiaRequest};

/// Who the access token belongs to.
pub async fn whoami(AuthedAllowGuest(session): AuthedAllowGuest) -> Json<Value> {
    Json(json!({
        "user_id": session.user_id,
        "device_id": session.device_id,
        "is_guest": session.is_guest,
    }))
}

/// `POST /account/password` body.
#[derive(Deserialize)]
pub struct PasswordBody {
    new_password: String,
    #[serde(default = "default_true")]
    logout_devices: bool,
    auth: Option<Value>,
}

fn default_true() -> bool {
    true
}

/// Changes the password after the current one is confirmed (`m.login.password`); by
/// default every other device is logged out.
pub async fn change_password(
    State(services): State<AppState>,
    Authed(session): Authed,
    JsonBody(body): JsonBody<PasswordBody>,
) -> MatrixResult<Json<Value>> {
    let uia = UiaRequest {
        operation: "change_password",
        user: Some(session.user_id.as_str()),
        subject: body_subject(&[&json!(body.new_password), &json!(body.logout_devices)]),
        flows: vec![vec![stages::PASSWORD]],
    };
    let passed = services
        .accounts
        .user_interactive_auth(body.auth.as_ref(), &uia)
        .await?;
    services
        .accounts
        .change_password(
            &session.user_id,
            &body.new_password,
            body.logout_devices,
            Some(&session.device_id),
        )
        .await?;
    services.accounts.finish_uia(passed);
    Ok(Json(json!({})))
}

/// `POST /account/deactivate` body.
#[derive(Deserialize)]
pub struct DeactivateBody {
    auth: Option<Value>,
    /// Identity servers are not supported; accepted and ignored.
    #[allow(dead_code)]
    id_server: Option<String>,
    /// Serve the user's events redacted to whoever joins their rooms afterwards.
    #[serde(default)]
    erase: bool,
}

/// Deactivates the account after the password is confirmed.
pub async fn deactivate(
    State(services): State<AppState>,
    Authed(session): Authed,
    JsonBody(body): JsonBody<DeactivateBody>,
) -> MatrixResult<Json<Value>> {
    let uia = UiaRequest {
        operation: "deactivate",
        user: Some(session.user_id.as_str()),
        subject: body_subject(&[&json!(body.erase)]),
        flows: vec![vec![stages::PASSWORD]],
    };
    let passed = services
        .accounts
        .user_interactive_auth(body.auth.as_ref(), &uia)
        .await?;
    services
        .accounts
        .deactivate(&session.user_id, body.erase)
        .await?;
    services.accounts.finish_uia(passed);
    services.start_leaving_rooms_of_deactivated(session.user_id.clone());
    // Spec: "success" when the homeserver has no identifiers to unbind (we keep none).
    Ok(Json(json!({ "id_server_unbind_result": "success" })))
}
