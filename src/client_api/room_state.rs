//! Spec: client-server API, "Getting events for a room" and "Sending events to a room"
//! (state): `GET /rooms/{roomId}/state`, `GET` and `PUT
//! /rooms/{roomId}/state/{eventType}/{stateKey}` (the state key may be empty).

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ErrorCode, MatrixError, MatrixResult};
use crate::http::extract::{AuthedAllowGuest, JsonBody, PathParams, QueryParams};
use crate::http::AppState;
use crate::services::accounts::Session;

/// The whole state the user may see.
pub async fn get_state(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams(room_id): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    Ok(Json(Value::Array(
        services
            .rooms
            .state_for(session.user_id.as_str(), &room_id)?,
    )))
}

/// `format=content` (default) or `format=event`.
#[derive(Deserialize)]
pub struct FormatParams {
    format: Option<String>,
}

async fn get_one(
    services: AppState,
    user: &str,
    room_id: &str,
    kind: &str,
    state_key: &str,
    format: Option<&str>,
) -> MatrixResult<Json<Value>> {
    match format {
        Some("event") => Ok(Json(
            services
                .rooms
                .state_event_json_for(user, room_id, kind, state_key)?,
        )),
        None | Some("content") => Ok(Json(
            services
                .rooms
                .state_event_for(user, room_id, kind, state_key)?
                .content()
                .clone(),
        )),
        Some(other) => Err(crate::error::MatrixError::invalid_param(format!(
            "format must be content or event, not {other:?}"
        ))),
    }
}

/// One state event's content (or the event with `format=event`).
pub async fn get_state_event(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams((room_id, kind, state_key)): PathParams<(String, String, String)>,
    QueryParams(params): QueryParams<FormatParams>,
) -> MatrixResult<Json<Value>> {
    let user = session.user_id.as_str();
    get_one(
        services.clone(),
        user,
        &room_id,
        &kind,
        &state_key,
        params.format.as_deref(),
    )
    .await
}

/// The same with an empty state key.
pub async fn get_state_event_empty_key(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams((room_id, kind)): PathParams<(String, String)>,
    QueryParams(params): QueryParams<FormatParams>,
) -> MatrixResult<Json<Value>> {
    let user = session.user_id.as_str();
    get_one(
        services.clone(),
        user,
        &room_id,
        &kind,
        "",
        params.format.as_deref(),
    )
    .await
}

/// Sets a state event; answers its id.
pub async fn put_state_event(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams((room_id, kind, state_key)): PathParams<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> MatrixResult<Json<Value>> {
    put_one(&services, &session, &room_id, &kind, &state_key, content).await
}

/// Sends a state event. A guest's membership changes only through `/join` and `/leave`,
/// which apply the guest rules (spec: "Guest Access"); its other state events go through.
async fn put_one(
    services: &AppState,
    session: &Session,
    room_id: &str,
    kind: &str,
    state_key: &str,
    content: Value,
) -> MatrixResult<Json<Value>> {
    if session.is_guest && kind == "m.room.member" {
        return Err(MatrixError::new(
            403,
            ErrorCode::GuestAccessForbidden,
            "Guests change their membership with /join and /leave",
        ));
    }
    let event_id = services
        .rooms
        .send_state(&session.user_id, room_id, kind, state_key, content)
        .await?;
    Ok(Json(json!({ "event_id": event_id })))
}

/// The same with an empty state key.
pub async fn put_state_event_empty_key(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams((room_id, kind)): PathParams<(String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> MatrixResult<Json<Value>> {
    put_one(&services, &session, &room_id, &kind, "", content).await
}
