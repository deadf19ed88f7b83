//! Spec: client-server API, "Account registration": `POST /register`,
//! `GET /register/available`, and `GET /v1/register/m.login.registration_token/validity`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{ClientIp, JsonBody, QueryParams};
use crate::http::AppState;
use crate::services::accounts::Registration;
use crate::services::rate_limit::RateAction;

/// `POST /register` query string.
#[derive(Deserialize)]
pub struct RegisterQuery {
    kind: Option<String>,
}

/// `POST /register` body.
#[derive(Deserialize)]
pub struct RegisterBody {
    username: Option<String>,
    password: Option<String>,
    device_id: Option<String>,
    initial_device_display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    auth: Option<Value>,
    /// A guest upgrading its account (spec: "Guest Access").
    guest_access_token: Option<String>,
    /// Refresh tokens are optional for servers; we issue none (the spec allows ignoring it).
    #[serde(default)]
    #[allow(dead_code)]
    refresh_token: bool,
}

/// Registers an account, through user-interactive auth (`m.login.dummy`, or
/// `m.login.registration_token` when a token is configured).
pub async fn register(
    State(services): State<AppState>,
    ip: ClientIp,
    QueryParams(query): QueryParams<RegisterQuery>,
    JsonBody(body): JsonBody<RegisterBody>,
) -> MatrixResult<Json<Value>> {
    let guest = match query.kind.as_deref() {
        None | Some("user") => false,
        Some("guest") => true,
        Some(other) => {
            return Err(MatrixError::invalid_param(format!(
                "kind must be \"user\" or \"guest\", not {other:?}"
            )))
        }
    };
    // Only requests that can create an account spend the budget: the first round of
    // user-interactive auth just asks for the flows.
    if guest || body.auth.is_some() {
        services
            .rate_limiter
            .check(RateAction::Register, &ip.key())?;
    }
    let (user_id, login) = services
        .accounts
        .register(Registration {
            username: body.username,
            password: body.password,
            device_id: body.device_id,
            initial_device_display_name: body.initial_device_display_name,
            inhibit_login: body.inhibit_login,
            guest,
            guest_access_token: body.guest_access_token,
            auth: body.auth,
        })
        .await?;
    let home_server = services.config.server_name.as_str();
    Ok(Json(match login {
        Some(login) => json!({
            "user_id": user_id,
            "access_token": login.access_token,
            "device_id": login.device_id,
            "home_server": home_server,
        }),
        None => json!({ "user_id": user_id, "home_server": home_server }),
    }))
}

/// `GET /register/available` query string.
#[derive(Deserialize)]
pub struct AvailableQuery {
    username: Option<String>,
}

/// Whether a username can be registered: 200 `{"available": true}` or the error saying why not.
pub async fn available(
    State(services): State<AppState>,
    ip: ClientIp,
    QueryParams(query): QueryParams<AvailableQuery>,
) -> MatrixResult<Json<Value>> {
    services
        .rate_limiter
        .check(RateAction::Register, &ip.key())?;
    let username = query
        .username
        .ok_or_else(|| MatrixError::missing_param("Missing `username`"))?;
    services.accounts.check_username_available(&username)?;
    Ok(Json(json!({ "available": true })))
}

/// `GET …/registration_token/validity` query string.
#[derive(Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// Whether a registration token is valid (without spending it).
pub async fn token_validity(
    State(services): State<AppState>,
    ip: ClientIp,
    QueryParams(query): QueryParams<TokenQuery>,
) -> MatrixResult<Json<Value>> {
    services
        .rate_limiter
        .check(RateAction::Register, &ip.key())?;
    let token = query
        .token
        .ok_or_else(|| MatrixError::missing_param("Missing `token`"))?;
    let valid = services.accounts.registration_token_valid(&token)?;
    Ok(Json(json!({ "valid": valid })))
}
