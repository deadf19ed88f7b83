//! Spec: client-server API, "Room membership" (listing): `GET /joined_rooms`, `GET
//! /rooms/{roomId}/members`, `GET /rooms/{roomId}/joined_members`.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::MatrixResult;
use crate::http::extract::{Authed, AuthedAllowGuest, PathParams, QueryParams};
use crate::http::AppState;
use crate::services::rooms::members::MembersQuery;

/// The rooms the user is joined to.
pub async fn joined_rooms(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
) -> MatrixResult<Json<Value>> {
    let rooms = services.rooms.joined_rooms(session.user_id.as_str())?;
    Ok(Json(json!({ "joined_rooms": rooms })))
}

/// `/members` query.
#[derive(Deserialize)]
pub struct MembersParams {
    at: Option<String>,
    membership: Option<String>,
    not_membership: Option<String>,
}

/// The room's member events, filtered.
pub async fn members(
    State(services): State<AppState>,
    AuthedAllowGuest(session): AuthedAllowGuest,
    PathParams(room_id): PathParams<String>,
    QueryParams(params): QueryParams<MembersParams>,
) -> MatrixResult<Json<Value>> {
    wait_for_members(&services, session.user_id.as_str(), &room_id).await?;
    let chunk = services.rooms.members_for(
        session.user_id.as_str(),
        &room_id,
        &MembersQuery {
            at: params.at.as_deref(),
            membership: params.membership.as_deref(),
            not_membership: params.not_membership.as_deref(),
        },
    )?;
    Ok(Json(json!({ "chunk": chunk })))
}

/// Joined members with their profiles.
pub async fn joined_members(
    State(services): State<AppState>,
    Authed(session): Authed,
    PathParams(room_id): PathParams<String>,
) -> MatrixResult<Json<Value>> {
    wait_for_members(&services, session.user_id.as_str(), &room_id).await?;
    Ok(Json(
        services
            .rooms
            .joined_members_for(session.user_id.as_str(), &room_id)?,
    ))
}

/// How long a member list waits for a room joined with a partial state to be whole.
const MEMBERS_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A room joined with a partial state answers its member list once the list is in (as
/// Synapse does; the resync takes seconds), or after [`MEMBERS_WAIT`] with the members
/// known so far.
async fn wait_for_members(services: &AppState, user_id: &str, room_id: &str) -> MatrixResult<()> {
    // Only a member waits (the others are answered, or refused, at once).
    let joined = services
        .rooms
        .store()
        .membership(user_id, room_id)?
        .is_some_and(|m| m.membership == "join");
    if joined
        && !services
            .rooms
            .wait_full_state(room_id, MEMBERS_WAIT)
            .await?
    {
        tracing::info!(room = %room_id, "a member list is answered before the room's partial state is whole");
    }
    Ok(())
}
