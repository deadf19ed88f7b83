//! Spec: client-server API, "Client Config": `GET/PUT /user/{userId}/account_data/{type}`,
//! `GET/PUT /user/{userId}/rooms/{roomId}/account_data/{type}`.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::core::RoomId;
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::{Authed, JsonBody, PathParams};
use crate::http::AppState;
use crate::services::accounts::{Accounts, Session};

/// Only the owner may read or write account data.
pub fn own(session: &Session, user_id: &str) -> MatrixResult<()> {
    if session.user_id.as_str() != user_id {
        return Err(MatrixError::forbidden(
            "Cannot access account data of other users",
        ));
    }
    Ok(())
}

/// A syntactically valid room id (400 `M_INVALID_PARAM` otherwise).
pub fn room_id(room_id: &str) -> MatrixResult<()> {
    RoomId::parse(room_id)
        .map(|_| ())
        .map_err(|_| MatrixError::invalid_param(format!("{room_id:?} is not a room id")))
}

/// Sets global account data.
pub async fn put_global(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((user_id, kind)): PathParams<(String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> MatrixResult<Json<Value>> {
    own(&session, &user_id)?;
    Accounts::check_client_account_data(&kind, &content)?;
    services
        .accounts
        .set_account_data(&user_id, None, &kind, Some(content))
        .await?;
    Ok(Json(json!({})))
}

/// Reads global account data.
pub async fn get_global(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((user_id, kind)): PathParams<(String, String)>,
) -> MatrixResult<Json<Value>> {
    own(&session, &user_id)?;
    services
        .accounts
        .account_data(&user_id, None, &kind)?
        .map(Json)
        .ok_or_else(|| MatrixError::not_found("Account data not found"))
}

/// Sets a room's account data.
pub async fn put_room(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((user_id, room, kind)): PathParams<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> MatrixResult<Json<Value>> {
    own(&session, &user_id)?;
    room_id(&room)?;
    Accounts::check_client_account_data(&kind, &content)?;
    services
        .accounts
        .set_account_data(&user_id, Some(&room), &kind, Some(content))
        .await?;
    Ok(Json(json!({})))
}

/// Reads a room's account data.
pub async fn get_room(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams((user_id, room, kind)): PathParams<(String, String, String)>,
) -> MatrixResult<Json<Value>> {
    own(&session, &user_id)?;
    room_id(&room)?;
    services
        .accounts
        .account_data(&user_id, Some(&room), &kind)?
        .map(Json)
        .ok_or_else(|| MatrixError::not_found("Account data not found"))
}
