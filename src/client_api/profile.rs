//! Spec: client-server API, "Profiles": `GET /profile/{userId}`, `GET/PUT/DELETE
//! /profile/{userId}/{keyName}`. A new display name or avatar is also sent to every room the
//! user is joined to.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};

use crate::core::UserId;
use crate::error::{ErrorCode, MatrixError, MatrixResult};
use crate::http::extract::{AuthedAllowGuest, JsonBody, PathParams};
use crate::http::AppState;
use crate::services::accounts::Session;
use crate::services::rooms::membership::MemberProfile;

fn parse_user(user_id: &str) -> MatrixResult<UserId> {
    UserId::parse(user_id)
        .map_err(|e| MatrixError::invalid_param(format!("{user_id:?} is not a user id: {e}")))
}

fn is_local(services: &AppState, user: &UserId) -> bool {
    user.server_name() == services.config.server_name.as_str()
}

fn local_user(services: &AppState, user_id: &str) -> MatrixResult<UserId> {
    let user = parse_user(user_id)?;
    if !is_local(services, &user) {
        return Err(MatrixError::forbidden(
            "You may only change your own profile",
        ));
    }
    Ok(user)
}

fn own_user(services: &AppState, session: &Session, user_id: &str) -> MatrixResult<UserId> {
    let user = local_user(services, user_id)?;
    if user != session.user_id {
        return Err(MatrixError::forbidden(
            "You may only change your own profile",
        ));
    }
    Ok(user)
}

/// Every field of a user's profile (no token needed); a user of another server's from
/// that server (server-server `GET /query/profile`).
pub async fn get_profile(
    State(services): State<AppState>,
    PathParams(user_id): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    let user = parse_user(&user_id)?;
    if !is_local(&services, &user) {
        let profile = services
            .federation
            .profile(&user, None)
            .await
            .map_err(|e| e.for_client("Profile"))?;
        return Ok(Json(Value::Object(profile)));
    }
    Ok(Json(Value::Object(
        services.accounts.profile_fields(&user)?,
    )))
}

/// One field (no token needed), from the user's server for a remote user.
pub async fn get_field(
    State(services): State<AppState>,
    PathParams((user_id, key)): PathParams<(String, String)>,
) -> MatrixResult<Json<Value>> {
    let user = parse_user(&user_id)?;
    if !is_local(&services, &user) {
        let mut profile = services
            .federation
            .profile(&user, Some(&key))
            .await
            .map_err(|e| e.for_client("Profile field"))?;
        let value = profile
            .remove(&key)
            .ok_or_else(|| MatrixError::not_found(format!("No {key} in this profile")))?;
        return Ok(Json(json!({ key: value })));
    }
    let value = services.accounts.profile_field(&user, &key)?;
    Ok(Json(json!({ key: value })))
}

async fn store_field(
    services: &AppState,
    user: &UserId,
    key: &str,
    value: Option<Value>,
) -> MatrixResult<Json<Value>> {
    let profile = services
        .accounts
        .set_profile_field(user, key, value)
        .await?;
    if matches!(key, "displayname" | "avatar_url") {
        let member = MemberProfile {
            displayname: profile.displayname,
            avatar_url: profile.avatar_url,
        };
        services.rooms.update_member_profile(user, &member).await?;
    }
    Ok(Json(json!({})))
}

/// Sets a field of the user's own profile.
pub async fn put_field(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams((user_id, key)): PathParams<(String, String)>,
    JsonBody(mut body): JsonBody<Map<String, Value>>,
) -> MatrixResult<Json<Value>> {
    let user = own_user(&services, &session, &user_id)?;
    guest_may_change(&session, &key)?;
    let value = body
        .remove(&key)
        .ok_or_else(|| MatrixError::missing_param(format!("The body has no {key:?}")))?;
    store_field(&services, &user, &key, Some(value)).await
}

/// Removes a field of the user's own profile.
pub async fn delete_field(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams((user_id, key)): PathParams<(String, String)>,
) -> MatrixResult<Json<Value>> {
    let user = own_user(&services, &session, &user_id)?;
    guest_may_change(&session, &key)?;
    store_field(&services, &user, &key, None).await
}

/// Spec: "Guest Access": "Guest users may only modify their display name; other profile
/// fields may not be changed."
fn guest_may_change(session: &Session, key: &str) -> MatrixResult<()> {
    if session.is_guest && key != "displayname" {
        return Err(MatrixError::new(
            403,
            ErrorCode::GuestAccessForbidden,
            "Guests may change only their display name",
        ));
    }
    Ok(())
}
