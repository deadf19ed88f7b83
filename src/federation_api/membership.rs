//! Spec: server-server API, "Joining Rooms", "Leaving Rooms (Rejecting Invites)",
//! "Knocking": `GET /make_{join,leave,knock}/{roomId}/{userId}` and `PUT
//! /v2/send_join`, `/v2/send_leave` (and their deprecated v1 forms, the same answer
//! wrapped as `[200, {...}]`), `/v1/send_knock`. The rooms service does the work (see
//! `services/rooms/resident_join.rs`).

use axum::extract::{RawQuery, State};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Signed;
use crate::core::{url, UserId};
use crate::error::{MatrixError, MatrixResult};
use crate::http::extract::PathParams;
use crate::http::AppState;
use crate::services::federation::source::FromOrigin;

/// A member event template for a user of the requesting server.
async fn template(
    services: &AppState,
    (room_id, user_id): (&str, &str),
    membership: &str,
    query: Option<&str>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let user = UserId::parse(user_id)
        .map_err(|e| MatrixError::invalid_param(format!("{user_id:?} is not a user id: {e}")))?;
    let supported = query.map(|q| url::query_values(q, "ver"));
    let (version, event) = services.rooms.member_template(
        signed.origin.as_str(),
        room_id,
        (&user, membership),
        supported.as_deref(),
    )?;
    Ok(Json(
        json!({ "room_version": version.as_str(), "event": event }),
    ))
}

/// `make_join`.
pub async fn make_join(
    State(services): State<AppState>,
    PathParams((room_id, user_id)): PathParams<(String, String)>,
    RawQuery(query): RawQuery,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let query = query.unwrap_or_default();
    template(
        &services,
        (&room_id, &user_id),
        "join",
        Some(&query),
        signed,
    )
    .await
}

/// `make_leave` (no room version to agree on: the server is in the room or invited).
pub async fn make_leave(
    State(services): State<AppState>,
    PathParams((room_id, user_id)): PathParams<(String, String)>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    template(&services, (&room_id, &user_id), "leave", None, signed).await
}

/// `make_knock`.
pub async fn make_knock(
    State(services): State<AppState>,
    PathParams((room_id, user_id)): PathParams<(String, String)>,
    RawQuery(query): RawQuery,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let query = query.unwrap_or_default();
    template(
        &services,
        (&room_id, &user_id),
        "knock",
        Some(&query),
        signed,
    )
    .await
}

fn source_of<'a, T>(services: &'a AppState, signed: &Signed<T>) -> FromOrigin<'a> {
    FromOrigin {
        federation: &services.federation,
        origin: signed.origin.clone(),
    }
}

/// The signed join, received; answers the state before it and the auth chain, without
/// most member events when the query says `omit_members=true`.
pub async fn send_join_v2(
    State(services): State<AppState>,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    RawQuery(query): RawQuery,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let omit = url::query_values(query.as_deref().unwrap_or(""), "omit_members");
    let omit_members = match omit.last().map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "omit_members must be true or false",
            ))
        }
    };
    let answer = send_join(&services, (&room_id, &event_id), omit_members, signed).await?;
    Ok(Json(answer))
}

/// v1: the same, as `[200, answer]`.
pub async fn send_join_v1(
    State(services): State<AppState>,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let answer = send_join(&services, (&room_id, &event_id), false, signed).await?;
    Ok(Json(json!([200, answer])))
}

async fn send_join(
    services: &AppState,
    (room_id, event_id): (&str, &str),
    omit_members: bool,
    signed: Signed<Value>,
) -> MatrixResult<Value> {
    let source = source_of(services, &signed);
    let answer = services
        .rooms
        .accept_remote_join(
            signed.origin.as_str(),
            (room_id, event_id),
            signed.body,
            omit_members,
            &source,
        )
        .await?;
    Ok(answer.to_json())
}

/// The signed leave, received; answers `{}`.
pub async fn send_leave_v2(
    State(services): State<AppState>,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    send_leave(&services, &room_id, &event_id, signed).await?;
    Ok(Json(json!({})))
}

/// v1: the same, as `[200, {}]`.
pub async fn send_leave_v1(
    State(services): State<AppState>,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    send_leave(&services, &room_id, &event_id, signed).await?;
    Ok(Json(json!([200, {}])))
}

async fn send_leave(
    services: &AppState,
    room_id: &str,
    event_id: &str,
    signed: Signed<Value>,
) -> MatrixResult<()> {
    let source = source_of(services, &signed);
    services
        .rooms
        .accept_remote_leave(
            signed.origin.as_str(),
            (room_id, event_id),
            signed.body,
            &source,
        )
        .await?;
    Ok(())
}

/// The signed knock, received; answers the room's state for the knocking user.
pub async fn send_knock(
    State(services): State<AppState>,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let source = source_of(&services, &signed);
    let state = services
        .rooms
        .accept_remote_knock(
            signed.origin.as_str(),
            (&room_id, &event_id),
            signed.body,
            &source,
        )
        .await?;
    Ok(Json(json!({ "knock_room_state": state })))
}
