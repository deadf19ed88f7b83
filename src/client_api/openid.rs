//! Spec: client-server API, "OpenID": `POST /user/{userId}/openid/request_token`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, JsonBody, PathParams};
use crate::http::AppState;

/// A token the user can hand to a third party, which asks our federation API
/// (`/openid/userinfo`) whose it is. Only for oneself: 403 `M_FORBIDDEN` otherwise.
pub async fn request_token(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(user_id): PathParams<String>,
    JsonBody(body): JsonBody<Value>,
) -> MatrixResult<Json<Value>> {
    // Spec: the body is an empty object.
    if !body.is_object() {
        return Err(MatrixError::bad_json("The body must be a JSON object"));
    }
    if session.user_id.as_str() != user_id {
        return Err(MatrixError::forbidden(
            "You may only request OpenID tokens for yourself",
        ));
    }
    let issued = services
        .accounts
        .issue_openid_token(&session.user_id)
        .await?;
    Ok(Json(json!({
        "access_token": issued.token,
        "token_type": "Bearer",
        "matrix_server_name": services.config.server_name,
        "expires_in": issued.expires_in,
    })))
}
