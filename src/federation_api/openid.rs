//! Spec: server-server API, "OpenID": `GET /_matrix/federation/v1/openid/userinfo`.
//! Called by third parties (widgets, integration managers), not by servers: no request
//! signature, only the OpenID token.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ErrorCode, MatrixError, MatrixResult};
use crate::http::extract::QueryParams;
use crate::http::AppState;

/// `?access_token=`.
#[derive(Deserialize)]
pub struct UserInfoParams {
    access_token: Option<String>,
}

/// Whose OpenID token this is: `{"sub": user_id}`; 401 `M_UNKNOWN_TOKEN` for an unknown
/// or expired token, 401 `M_MISSING_TOKEN` without one.
pub async fn userinfo(
    State(services): State<AppState>,
    QueryParams(params): QueryParams<UserInfoParams>,
) -> MatrixResult<Json<Value>> {
    let Some(token) = params.access_token else {
        return Err(MatrixError::new(
            401,
            ErrorCode::MissingToken,
            "An OpenID access_token is required",
        ));
    };
    let user_id = services.accounts.openid_user(&token)?;
    Ok(Json(json!({ "sub": user_id })))
}
