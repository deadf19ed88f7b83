//! Spec: client-server API, "Login" and "Logout": `GET/POST /login`, `POST /logout`,
//! `POST /logout/all`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ErrorCode, MatrixError, MatrixResult};
use crate::http::extract::{typed, Authed, AuthedAllowGuest, ClientIp, JsonBody};
use crate::http::AppState;
use crate::services::rate_limit::RateAction;

/// The login types we accept.
pub async fn login_flows() -> Json<Value> {
    Json(json!({ "flows": [ { "type": "m.login.password" } ] }))
}

/// The typed view of a login body (the identifier itself is read by the accounts service).
#[derive(Deserialize)]
struct LoginBody {
    #[serde(rename = "type")]
    kind: String,
    #[allow(dead_code)]
    identifier: Option<Identifier>,
    #[allow(dead_code)]
    user: Option<String>,
    #[allow(dead_code)]
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
}

#[derive(Deserialize)]
struct Identifier {
    #[serde(rename = "type")]
    #[allow(dead_code)]
    kind: String,
    #[allow(dead_code)]
    user: Option<String>,
}

/// Password login: a new device (or the named one) and access token.
pub async fn login(
    State(services): State<AppState>,
    ip: ClientIp,
    JsonBody(body): JsonBody<Value>,
) -> MatrixResult<Json<Value>> {
    let request: LoginBody = typed(&body)?;
    services.rate_limiter.check(RateAction::Login, &ip.key())?;
    if request.kind != "m.login.password" {
        return Err(MatrixError::new(
            400,
            ErrorCode::Unknown,
            format!("Login type {:?} is not supported", request.kind),
        ));
    }
    let login = services
        .accounts
        .login_with_password(
            &body,
            request.device_id,
            request.initial_device_display_name,
            ip.0.map(|ip| ip.to_string()),
        )
        .await?;
    Ok(Json(json!({
        "user_id": login.user_id,
        "access_token": login.access_token,
        "device_id": login.device_id,
        "home_server": services.config.server_name.as_str(),
    })))
}

/// Ends this session: the token and its device are deleted.
pub async fn logout(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
) -> MatrixResult<Json<Value>> {
    services
        .accounts
        .delete_devices(&session.user_id, std::slice::from_ref(&session.device_id))
        .await?;
    Ok(Json(json!({})))
}

/// Ends every session of the user.
pub async fn logout_all(
    State(services): State<AppState>,
    Authed(session): Authed,
) -> MatrixResult<Json<Value>> {
    services
        .accounts
        .delete_all_devices(&session.user_id, None)
        .await?;
    Ok(Json(json!({})))
}
