//! Spec: server-server API, "Querying for information": `GET
//! /_matrix/federation/v1/query/profile` and `GET /_matrix/federation/v1/query/directory`.
//! Both are signed requests and answer only for our own users and aliases.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Signed;
use crate::core::{RoomAliasId, UserId};
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::QueryParams;
use crate::http::AppState;

/// `?user_id=&field=`.
#[derive(Deserialize)]
pub struct ProfileParams {
    user_id: String,
    field: Option<String>,
}

/// A user's profile, or one field of it; 404 `M_NOT_FOUND` for unknown users and unset
/// fields.
pub async fn profile(
    State(services): State<AppState>,
    QueryParams(params): QueryParams<ProfileParams>,
    _signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let user = UserId::parse(&params.user_id).map_err(|e| {
        MatrixError::invalid_param(format!("{:?} is not a user id: {e}", params.user_id))
    })?;
    if user.server_name() != services.config.server_name.as_str() {
        return Err(MatrixError::invalid_param(
            "The user is not one of this server's",
        ));
    }
    match params.field {
        Some(field) => {
            let value = services.accounts.profile_field(&user, &field)?;
            Ok(Json(json!({ field: value })))
        }
        None => Ok(Json(Value::Object(
            services.accounts.profile_fields(&user)?,
        ))),
    }
}

/// `?room_alias=`.
#[derive(Deserialize)]
pub struct DirectoryParams {
    room_alias: String,
}

/// The room an alias of ours names, and the servers in it (us first).
pub async fn directory(
    State(services): State<AppState>,
    QueryParams(params): QueryParams<DirectoryParams>,
    _signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let alias = RoomAliasId::parse(&params.room_alias).map_err(|e| {
        MatrixError::invalid_param(format!("{:?} is not a room alias: {e}", params.room_alias))
    })?;
    if alias.server_name() != services.config.server_name.as_str() {
        return Err(MatrixError::invalid_param(
            "The alias is not one of this server's",
        ));
    }
    let (room_id, servers) = services.rooms.resolve_alias(alias.as_str())?;
    Ok(Json(json!({ "room_id": room_id, "servers": servers })))
}
