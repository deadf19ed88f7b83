//! Spec: server-server API, "Joining Rooms": `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`,
//! `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}` and its deprecated v1 form
//! (the same answer wrapped as `[200, {...}]`). The rooms service does the work (see
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

/// A join event template for a user of the requesting server.
pub async fn make_join(
    State(services): State<AppState>,
    PathParams((room_id, user_id)): PathParams<(String, String)>,
    RawQuery(query): RawQuery,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let user = UserId::parse(&user_id)
        .map_err(|e| MatrixError::invalid_param(format!("{user_id:?} is not a user id: {e}")))?;
    let supported = url::query_values(query.as_deref().unwrap_or(""), "ver");
    let (version, event) =
        services
            .rooms
            .join_template(signed.origin.as_str(), &room_id, &user, &supported)?;
    Ok(Json(
        json!({ "room_version": version.as_str(), "event": event }),
    ))
}

/// The signed join, received; answers the state before it and the auth chain.
pub async fn send_join_v2(
    State(services): State<AppState>,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let answer = send_join(&services, &room_id, &event_id, signed).await?;
    Ok(Json(answer))
}

/// v1: the same, as `[200, answer]`.
pub async fn send_join_v1(
    State(services): State<AppState>,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    signed: Signed<Value>,
) -> MatrixResult<Json<Value>> {
    let answer = send_join(&services, &room_id, &event_id, signed).await?;
    Ok(Json(json!([200, answer])))
}

async fn send_join(
    services: &AppState,
    room_id: &str,
    event_id: &str,
    signed: Signed<Value>,
) -> MatrixResult<Value> {
    let source = FromOrigin {
        federation: &services.federation,
        origin: signed.origin.clone(),
    };
    let answer = services
        .rooms
        .accept_remote_join(
            signed.origin.as_str(),
            (room_id, event_id),
            signed.body,
            &source,
        )
        .await?;
    Ok(answer.to_json())
}
